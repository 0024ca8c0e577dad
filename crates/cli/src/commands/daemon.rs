use std::io::Write;

use banger_paths::Layout;
use banger_proto::methods::{self, NoParams};
use serde_json::{Value, json};

use super::print_json;
use crate::CliError;
use crate::args::LogsArgs;
use crate::daemon_ctl::{self, DaemonTarget, ensure_daemon};

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

pub(crate) fn status(target: &DaemonTarget, json: bool) -> Result<(), CliError> {
    let mut conn = ensure_daemon(target)?;
    let s = conn.client.call::<methods::DaemonStatus>(&NoParams)?;
    if json {
        return print_json(&s);
    }
    let rows = [
        ("version", s.version),
        ("build", s.build_id),
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
    for (k, v) in rows {
        println!("{k:<10} {v}");
    }
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

pub(crate) fn logs(layout: &Layout, args: &LogsArgs) -> Result<(), CliError> {
    let raw = args.json;
    super::tail::tail(&layout.log_file(), args.lines, args.follow, &|out, line| {
        print_log_line(out, line, raw)
    })
}

/// Renders one JSON log line as `TIME LEVEL [op-id method] message k=v`;
/// anything that is not a JSON object (a panic message) is printed as is.
fn print_log_line(out: &mut dyn Write, line: &str, raw: bool) {
    if raw {
        let _ = writeln!(out, "{line}");
        return;
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        let _ = writeln!(out, "{line}");
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
    let _ = writeln!(out, "{text}");
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
    }
}
