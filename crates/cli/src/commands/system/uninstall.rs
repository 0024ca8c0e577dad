//! `banger system uninstall`: stop the helper, remove banger's network
//! objects with `banger-helper teardown` (TAPs, bridge, nftables table,
//! iptables chain, and IPv4 forwarding when the helper turned it on: the
//! host's firewall and sysctls end as they were before install), then the
//! files install wrote.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_proto::ErrorCode;
use banger_proto::helper::DEFAULT_HELPER_SOCKET;
use serde::Serialize;

use super::files::{read_config, remove_if_present};
use super::paths::{absolute, bin_dir, log_file, pid_file, socket_dir, systemd_running};
use super::ping::{Ping, ping};
use super::process::{is_helper_process, stop_background, stop_pid};
use super::units::{systemctl, unit_files};
use super::{
    AGENT_BIN, BINARIES, HELPER_BIN, HELPER_PATH, Out, SERVICE_UNIT, SOCKET_UNIT, fail, io_fail,
    print_json, require_root,
};
use crate::CliError;
use crate::args::SystemUninstallArgs;

#[derive(Debug, Serialize)]
pub(super) struct UninstallReport {
    installed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_pid: Option<u32>,
    removed: Vec<PathBuf>,
}

pub(super) fn uninstall(args: &SystemUninstallArgs) -> Result<(), CliError> {
    require_root("uninstall")?;
    let out = Out { json: args.json };
    absolute("--prefix", &args.prefix)?;
    absolute("--config", &args.config)?;
    let config = read_config(&args.config)?;
    let socket = config
        .as_ref()
        .map(|c| c.socket.clone())
        .or_else(|| args.socket.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HELPER_SOCKET));
    let mut found = config.is_some();
    let mut removed = Vec::new();
    let mut stopped_pid = None;

    // 1. Stop the helper first, so nothing recreates a device the teardown
    //    removes.
    let units = unit_files();
    let have_units = units.iter().any(|p| p.exists());
    if have_units {
        found = true;
        if let Ping::Pong(info) = ping(&socket) {
            stopped_pid = Some(info.pid);
        }
        if systemd_running() {
            systemctl(&["disable", "--now", SOCKET_UNIT, SERVICE_UNIT])?;
            out.step(format!(
                "stopped and disabled {SOCKET_UNIT} and {SERVICE_UNIT}"
            ));
        }
    }
    let had_pid_file = pid_file(&socket).exists();
    found |= had_pid_file;
    if let Some(pid) = stop_background(&socket, out)? {
        stopped_pid = Some(pid);
    }
    if had_pid_file {
        removed.push(pid_file(&socket));
    }
    if let Ping::Pong(info) = ping(&socket) {
        if is_helper_process(info.pid) {
            found = true;
            stop_pid(info.pid)?;
            out.step(format!("stopped banger-helper (pid {})", info.pid));
            stopped_pid = Some(info.pid);
        }
    }

    // 2. banger's network objects. A failure keeps the config and the
    //    binaries, so running uninstall again retries.
    if config.is_some() {
        let installed = bin_dir(&args.prefix).join(HELPER_BIN);
        let beside = std::env::current_exe()
            .ok()
            .map(|e| socket_dir(&e).join(HELPER_BIN));
        let helper_bin = if installed.is_file() {
            Some(installed)
        } else {
            beside.filter(|b| b.is_file())
        };
        match helper_bin {
            Some(bin) => {
                let removed_objects = teardown(&bin, &args.config)?;
                if removed_objects.is_empty() {
                    out.step(
                        "teardown: no TAP devices, bridge, nftables table, iptables chain \
                         or forwarding of banger's left",
                    );
                }
                for line in removed_objects {
                    out.step(format!("teardown: {line}"));
                }
            }
            None => out.step(format!(
                "warning: no banger-helper binary to run the teardown with; \
                 banger's TAPs ({}N), bridge {}, nftables table, iptables chain and \
                 the ipv4 forwarding it turned on may remain",
                banger_proto::helper::TAP_PREFIX,
                config
                    .as_ref()
                    .map(|c| c.bridge.as_str())
                    .unwrap_or("banger0")
            )),
        }
    }

    // 3. Files.
    if have_units {
        for unit in &units {
            if remove_if_present(unit)? {
                removed.push(unit.clone());
            }
        }
        if systemd_running() {
            systemctl(&["daemon-reload"])?;
        }
    }
    let leftover_socket = fs::symlink_metadata(&socket)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if leftover_socket && remove_if_present(&socket)? {
        removed.push(socket.clone());
    }
    if remove_if_present(&args.config)? {
        removed.push(args.config.clone());
    }
    // The config's directory when it is install's default and now empty.
    if let Some(dir) = args.config.parent() {
        if dir == Path::new("/etc/banger") {
            let _ = fs::remove_dir(dir);
        }
    }
    if !args.keep_binaries {
        for name in BINARIES.iter().chain([&AGENT_BIN]) {
            let path = bin_dir(&args.prefix).join(name);
            if remove_if_present(&path)? {
                removed.push(path);
            }
        }
        let share = args.prefix.join("share");
        let docs = crate::reference::remove_share(&share).map_err(|e| {
            io_fail(
                format_args!("remove man pages and completions under {}", share.display()),
                &e,
            )
        })?;
        if !docs.is_empty() {
            out.step(format!(
                "removed banger's man pages and completions under {}",
                share.display()
            ));
        }
    }
    found |= !removed.is_empty();
    for path in removed.iter().filter(|p| **p != pid_file(&socket)) {
        out.step(format!("removed {}", path.display()));
    }
    if !found {
        out.step("banger-helper is not installed: nothing to do");
    } else if log_file(&socket).exists() {
        out.step(format!(
            "kept the helper's log {}",
            log_file(&socket).display()
        ));
    }
    if args.json {
        print_json(&UninstallReport {
            installed: found,
            stopped_pid,
            removed,
        })?;
    }
    Ok(())
}

/// Runs `banger-helper teardown`; returns the lines it printed (one per
/// object removed).
pub(super) fn teardown(helper_bin: &Path, config: &Path) -> Result<Vec<String>, CliError> {
    let output = Command::new(helper_bin)
        .arg("teardown")
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", HELPER_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_fail(format_args!("run {}", helper_bin.display()), &e))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect());
    }
    Err(fail(
        ErrorCode::OperationFailed,
        format!(
            "`{} teardown` failed ({}): {}; the config and binaries were kept, so \
             `banger system uninstall` can be run again",
            helper_bin.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}
