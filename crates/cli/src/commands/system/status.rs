//! `banger system status`: what is installed, how the helper was started,
//! whether it answers and whether it serves this uid.

use std::fmt::Display;
use std::path::PathBuf;

use banger_proto::helper::{DEFAULT_HELPER_SOCKET, HelperErrorCode, HelperInfo};
use serde::Serialize;

use super::files::read_config;
use super::paths::{bin_dir, pid_file};
use super::ping::{Ping, ping};
use super::process::{is_helper_process, read_pid_file};
use super::units::{systemctl_is_active, unit_files};
use super::{BINARIES, SERVICE_UNIT, SOCKET_UNIT, print_json};
use crate::args::SystemStatusArgs;
use crate::{CliError, Exit};

#[derive(Debug, Serialize)]
pub(super) struct StatusReport {
    installed: bool,
    config: PathBuf,
    config_present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_error: Option<String>,
    binaries: Vec<BinaryState>,
    /// `systemd` (unit files present), `background` (a live pid file) or
    /// `none`.
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid_file_pid: Option<u32>,
    socket: PathBuf,
    running: bool,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    helper: Option<HelperInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_uids: Option<Vec<u32>>,
    uid: u32,
    /// Whether this uid may call the helper (from its answer, else from
    /// the config).
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed: Option<bool>,
}

#[derive(Debug, Serialize)]
pub(super) struct BinaryState {
    path: PathBuf,
    present: bool,
}

pub(super) fn status(args: &SystemStatusArgs) -> Result<(), CliError> {
    let uid = rustix::process::getuid().as_raw();
    let (config, config_error) = match read_config(&args.config) {
        Ok(c) => (c, None),
        Err(e) => (None, Some(e.display_chain())),
    };
    let config_present = config.is_some() || args.config.exists();
    let socket = args
        .socket
        .clone()
        .or_else(|| config.as_ref().map(|c| c.socket.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HELPER_SOCKET));
    let binaries: Vec<BinaryState> = BINARIES
        .iter()
        .map(|name| {
            let path = bin_dir(&args.prefix).join(name);
            BinaryState {
                present: path.is_file(),
                path,
            }
        })
        .collect();
    let pid_file_pid = read_pid_file(&pid_file(&socket)).filter(|&p| is_helper_process(p));
    let mode = if unit_files().iter().any(|p| p.exists()) {
        "systemd"
    } else if pid_file_pid.is_some() {
        "background"
    } else {
        "none"
    };
    let allowed_uids = config.as_ref().map(|c| c.allowed_uids.clone());
    let mut report = StatusReport {
        installed: config_present,
        config: args.config.clone(),
        config_present,
        config_error,
        binaries,
        mode,
        pid_file_pid,
        socket: socket.clone(),
        running: false,
        reachable: false,
        helper: None,
        error: None,
        allowed: allowed_uids.as_ref().map(|u| u.contains(&uid)),
        allowed_uids,
        uid,
    };
    match ping(&socket) {
        Ping::Pong(info) => {
            report.running = true;
            report.reachable = true;
            report.allowed = Some(true);
            report.helper = Some(info);
        }
        Ping::Refused(e) => {
            report.running = true;
            if e.code == HelperErrorCode::PermissionDenied {
                report.allowed = Some(false);
            }
            report.error = Some(e.to_string());
        }
        Ping::Absent(e) => {
            report.error = Some(format!("{}: {e}", socket.display()));
            if mode == "systemd" && systemctl_is_active(SERVICE_UNIT) {
                report.running = true;
            }
        }
        Ping::Broken(s) => {
            report.running = pid_file_pid.is_some();
            report.error = Some(format!("{}: {s}", socket.display()));
        }
    }
    let exit = if report.reachable {
        None
    } else if report.allowed == Some(false) && report.running {
        Some(Exit::PermissionDenied)
    } else if report.installed {
        Some(Exit::DaemonUnavailable)
    } else {
        Some(Exit::NotFound)
    };
    if args.json {
        print_json(&report)?;
    } else {
        print_status(&report);
    }
    match exit {
        None => Ok(()),
        Some(e) => Err(CliError::ChildExit(i32::from(e.code()))),
    }
}

pub(super) fn print_status(r: &StatusReport) {
    let installed = if r.config_present {
        match &r.config_error {
            Some(e) => format!("yes, but the config is unreadable: {e}"),
            None => "yes".to_owned(),
        }
    } else {
        "no".to_owned()
    };
    let row = |k: &str, v: &dyn Display| println!("{k:<10} {v}");
    row("installed", &installed);
    row("config", &r.config.display());
    for b in &r.binaries {
        let state = if b.present { "" } else { " (missing)" };
        row("binary", &format!("{}{state}", b.path.display()));
    }
    let mode = match (r.mode, r.pid_file_pid) {
        ("systemd", _) => format!("systemd ({SOCKET_UNIT}, {SERVICE_UNIT})"),
        (_, Some(pid)) => format!("background process (pid {pid}; does not survive a reboot)"),
        _ => "none".to_owned(),
    };
    row("started by", &mode);
    row("socket", &r.socket.display());
    let running = match (&r.helper, r.running, r.allowed) {
        (Some(h), _, _) => format!("running: banger-helper {} (pid {})", h.version, h.pid),
        (None, true, Some(false)) => {
            format!("running, but uid {} is not allowed", r.uid)
        }
        (None, true, _) => format!(
            "running, but not answering: {}",
            r.error.as_deref().unwrap_or("?")
        ),
        (None, false, _) => format!(
            "not running ({})",
            r.error.as_deref().unwrap_or("no answer")
        ),
    };
    row("helper", &running);
    if let Some(h) = &r.helper {
        row("protocol", &h.protocol);
        row("bridge", &h.bridge);
        row("subnet", &h.subnet);
        row("gateway", &h.gateway);
    }
    if let Some(uids) = &r.allowed_uids {
        let list: Vec<String> = uids.iter().map(u32::to_string).collect();
        row("allowed", &format!("uids {}", list.join(", ")));
    }
    let you = match r.allowed {
        Some(true) => format!("uid {}: allowed", r.uid),
        Some(false) => format!("uid {}: not allowed", r.uid),
        None => format!("uid {}: unknown (no config)", r.uid),
    };
    row("you", &you);
}
