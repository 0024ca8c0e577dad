use std::io::Write;
use std::path::{Path, PathBuf};

use banger_paths::Layout;
use banger_proto::methods::{self, NoParams};
use serde_json::{Value, json};

use super::format::{key_values, terminal_safe};
use super::print_json;
use crate::args::LogsArgs;
use crate::daemon_ctl::{self, DaemonTarget, ensure_daemon};
use crate::daemon_unit::{self, UNIT_NAME};
use crate::{BuildInfo, CliError, Exit};

pub(crate) fn ping(target: &DaemonTarget, json: bool) -> Result<(), CliError> {
    let conn = ensure_daemon(target)?;
    if json {
        return print_json(&conn.daemon);
    }
    println!(
        "pong from bangerd {} (pid {}, build {})",
        conn.daemon.version, conn.daemon.pid, conn.daemon.build_id
    );
    Ok(())
}

/// `daemon status`: asks the running daemon, never starts one. With
/// none running it says so (`{"running": false}` with `--json`) and
/// exits with [`Exit::NoDaemon`].
pub(crate) fn status(layout: &Layout, build: BuildInfo, json: bool) -> Result<(), CliError> {
    let Some((mut client, _)) = daemon_ctl::connect_running(layout)? else {
        let socket = layout.socket_path();
        if json {
            print_json(&json!({ "running": false, "socket": socket }))?;
        } else {
            println!(
                "no bangerd running (socket {}); the next command that needs it starts it",
                socket.display()
            );
        }
        return Err(CliError::ChildExit(i32::from(Exit::NoDaemon.code())));
    };
    let s = client.call::<methods::DaemonStatus>(&NoParams)?;
    let other_build = s.build_id != build.build_id;
    if json {
        let mut value = serde_json::to_value(&s)
            .map_err(|e| CliError::BadResponse(format!("encode output: {e}")))?;
        if let Value::Object(fields) = &mut value {
            fields.insert("running".into(), Value::Bool(true));
        }
        return print_json(&value);
    }
    let build_note = if other_build {
        format!(
            "{} (another build than this banger's {}: the next command replaces it)",
            s.build_id, build.build_id
        )
    } else {
        s.build_id
    };
    let rows = [
        ("version", s.version),
        ("build", build_note),
        ("pid", s.pid.to_string()),
        ("uptime", format!("{} s", s.uptime_s)),
        ("socket", s.socket),
        ("log file", s.log_file),
        ("database", s.store.path),
        ("schema", s.store.schema_version.to_string()),
        (
            "objects",
            format!(
                "{} vms, {} images, {} kernels",
                s.store.vms, s.store.images, s.store.kernels
            ),
        ),
    ];
    key_values(&rows);
    Ok(())
}

pub(crate) fn stop(layout: &Layout, json: bool) -> Result<(), CliError> {
    let stopped = match daemon_ctl::connect_running(layout)? {
        Some((client, ping)) => {
            daemon_ctl::stop(client, ping.pid)?;
            Some(ping.pid)
        }
        None => None,
    };
    if json {
        return print_json(&json!({ "stopped": stopped.is_some(), "pid": stopped }));
    }
    match stopped {
        Some(pid) => println!("stopped bangerd (pid {pid})"),
        None => println!("no bangerd running"),
    }
    Ok(())
}

/// `banger man --dir DIR`.
pub(crate) fn man(dir: &Path) -> Result<(), CliError> {
    let written = crate::reference::write_man_pages(dir).map_err(|source| CliError::WriteFile {
        path: dir.to_path_buf(),
        source,
    })?;
    println!("wrote {} man pages to {}", written.len(), dir.display());
    Ok(())
}

/// `banger daemon install --user`: writes the unit, hands the daemon over
/// to systemd and waits for it to answer.
pub(crate) fn install_unit(target: &DaemonTarget, json: bool) -> Result<(), CliError> {
    let layout = &target.layout;
    let bangerd = std::fs::canonicalize(&target.bangerd)
        .map_err(|e| CliError::BadParams(format!("{}: {e}", target.bangerd.display())))?;
    let env = |name: &str| std::env::var_os(name);
    let mut checked = vec![bangerd.clone(), layout.log_file()];
    for name in [
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "XDG_CACHE_HOME",
        "XDG_RUNTIME_DIR",
    ] {
        checked.extend(env(name).filter(|v| !v.is_empty()).map(PathBuf::from));
    }
    if let Some(why) = checked.iter().find_map(|p| daemon_unit::unit_unsafe(p)) {
        return Err(CliError::BadParams(why));
    }
    layout.ensure_dirs()?;
    let text = daemon_unit::render_unit(&bangerd, layout, env);
    let path = daemon_unit::unit_path(layout);
    let write = |p: &Path| -> std::io::Result<()> {
        std::fs::create_dir_all(daemon_unit::unit_dir(layout))?;
        let tmp = p.with_extension("service.tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, p)
    };
    write(&path).map_err(|source| CliError::WriteFile {
        path: path.clone(),
        source,
    })?;
    if !json {
        println!("wrote {}", path.display());
    }
    // A daemon banger started itself holds the lock the unit's would need.
    let mut replaced = None;
    if let Some((client, ping)) = daemon_ctl::connect_running(layout)? {
        daemon_ctl::stop(client, ping.pid)?;
        replaced = Some(ping.pid);
        if !json {
            println!(
                "stopped bangerd (pid {}) so that systemd runs it; VMs keep running",
                ping.pid
            );
        }
    }
    let left = format!(
        "{} is written, but the user's systemd did not take it; until it does, banger          starts bangerd itself",
        path.display()
    );
    let log_start = std::fs::metadata(layout.log_file())
        .map(|m| m.len())
        .unwrap_or(0);
    for args in [&["daemon-reload"][..], &["enable", "--now", UNIT_NAME]] {
        daemon_unit::systemctl_user(args).map_err(|source| CliError::Systemd {
            context: left.clone(),
            source,
        })?;
    }
    let Some((_, ping)) = daemon_ctl::wait_for_unit(layout, log_start)? else {
        return Err(CliError::UnitFailed {
            log_file: layout.log_file(),
        });
    };
    if json {
        return print_json(&json!({
            "unit": path,
            "bangerd": bangerd,
            "pid": ping.pid,
            "replaced_pid": replaced,
        }));
    }
    println!(
        "enabled {UNIT_NAME}: bangerd (pid {}) runs under systemd --user and starts with your session",
        ping.pid
    );
    Ok(())
}

/// `banger daemon uninstall --user`: stops and disables the unit, then
/// removes it. A daemon still running is stopped by systemd; the next
/// command starts one the usual way.
pub(crate) fn uninstall_unit(layout: &Layout, json: bool) -> Result<(), CliError> {
    let path = daemon_unit::unit_path(layout);
    if !path.exists() {
        if json {
            return print_json(&json!({ "unit": path, "removed": false }));
        }
        println!("no unit at {}: nothing to do", path.display());
        return Ok(());
    }
    let disabled = daemon_unit::systemctl_user(&["disable", "--now", UNIT_NAME]);
    if let Err(e) = &disabled {
        eprintln!(
            "warning: {}; removing the unit anyway",
            banger_proto::error_chain(e)
        );
    }
    std::fs::remove_file(&path).map_err(|source| CliError::WriteFile {
        path: path.clone(),
        source,
    })?;
    if disabled.is_ok() {
        let _ = daemon_unit::systemctl_user(&["daemon-reload"]);
    }
    if json {
        return print_json(&json!({ "unit": path, "removed": true, "disabled": disabled.is_ok() }));
    }
    if disabled.is_ok() {
        println!("stopped and disabled {UNIT_NAME}");
    }
    println!("removed {}", path.display());
    Ok(())
}

pub(crate) fn logs(layout: &Layout, args: &LogsArgs) -> Result<(), CliError> {
    let raw = args.json;
    super::tail::tail(
        &layout.log_file(),
        None,
        args.lines,
        args.follow,
        &|out, line| print_log_line(out, &String::from_utf8_lossy(line), raw),
    )
}

/// Renders one JSON log line as `TIME LEVEL [op-id method] message k=v`;
/// anything that is not a JSON object (a panic message) is printed as is.
/// On a terminal, control characters are escaped. `raw` (`--json`) prints
/// JSON lines: the log's own, and `{"text": LINE}` for any other line.
fn print_log_line(out: &mut dyn Write, line: &str, raw: bool) {
    if raw {
        // Each line a JSON value: the log's own lines as they are, anything
        // else (a panic message) as a string in one.
        if serde_json::from_str::<Value>(line).is_ok() {
            let _ = writeln!(out, "{line}");
        } else {
            let _ = writeln!(out, "{}", json!({ "text": line }));
        }
        return;
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        let _ = writeln!(out, "{}", terminal_safe(line));
        return;
    };
    let s = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let mut text = format!("{} {:<5}", s(obj.get("timestamp")), s(obj.get("level")));
    if let Some(Value::Object(span)) = obj.get("span") {
        for key in ["op_id", "method"] {
            if let Some(v) = span.get(key) {
                text.push(' ');
                text.push_str(&s(Some(v)));
            }
        }
    }
    if let Some(Value::Object(fields)) = obj.get("fields") {
        text.push(' ');
        text.push_str(&s(fields.get("message")));
        for (k, v) in fields.iter().filter(|(k, _)| *k != "message") {
            text.push_str(&format!(" {k}={}", s(Some(v))));
        }
    }
    // Field values are the daemon's, but some of them quote a guest.
    let _ = writeln!(out, "{}", terminal_safe(&text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_render_with_their_op_id() {
        let line = r#"{"timestamp":"2026-11-22T19:00:00Z","level":"WARN","fields":{"message":"rpc failed","code":"unknown_method"},"span":{"op_id":"op-abc12345","method":"vm.fly","name":"rpc"}}"#;
        let mut out = Vec::new();
        print_log_line(&mut out, line, false);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "2026-11-22T19:00:00Z WARN  op-abc12345 vm.fly rpc failed code=unknown_method\n"
        );
        let mut raw = Vec::new();
        print_log_line(&mut raw, "thread 'main' panicked", false);
        assert_eq!(raw, b"thread 'main' panicked\n");
        let mut json_lines = Vec::new();
        print_log_line(&mut json_lines, line, true);
        print_log_line(&mut json_lines, "thread 'main' panicked\x1b[2J", true);
        let text = String::from_utf8(json_lines).unwrap();
        let parsed: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            parsed[1],
            json!({"text": "thread 'main' panicked\u{1b}[2J"})
        );
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}
