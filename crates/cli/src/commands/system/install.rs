//! `banger system install`: binaries, config, then the helper, started by
//! systemd or as a background process, until it answers.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_proto::ErrorCode;
use banger_proto::helper::{HelperConfig, HelperInfo};
use serde::Serialize;

use super::accounts::{Account, allowed_account, layout_for};
use super::files::{copy_binary, create_dir_0755, read_config, write_atomic};
use super::paths::{absolute, bin_dir, socket_dir, systemd_running};
use super::ping::{Ping, ping};
use super::process::{is_helper_process, start_background, stop_background, stop_pid};
use super::units::{start_systemd, systemctl, unit_files, unit_safe, wait_for_answer};
use super::{
    AGENT_BIN, BINARIES, HELPER_BIN, HELPER_PATH, Out, SERVICE_UNIT, SOCKET_UNIT, fail, io_fail,
    print_json, require_root,
};
use crate::CliError;
use crate::args::SystemInstallArgs;

#[derive(Debug, Serialize)]
pub(super) struct InstallReport {
    user: Account,
    prefix: PathBuf,
    binaries: Vec<PathBuf>,
    config: PathBuf,
    socket: PathBuf,
    /// `systemd` or `background`.
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    helper: Option<HelperInfo>,
    /// Set when the helper answered but refused root's ping.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

pub(super) fn install(args: &SystemInstallArgs) -> Result<(), CliError> {
    require_root("install")?;
    let out = Out { json: args.json };
    absolute("--prefix", &args.prefix)?;
    absolute("--config", &args.config)?;
    if let Some(s) = &args.socket {
        absolute("--socket", s)?;
    }

    let account = allowed_account(args.user.as_deref())?;
    let layout = layout_for(&account)?;
    let existing = read_config(&args.config).ok().flatten();
    let mut config = HelperConfig::for_uids(vec![account.uid]);
    if let Some(old) = &existing {
        config.socket = old.socket.clone();
        config.bridge = old.bridge.clone();
        config.subnet = old.subnet.clone();
        config.log_file = old.log_file.clone();
        // Features are turned on by hand in the config (docs/helper.md);
        // a reinstall keeps them.
        config.features = old.features.clone();
    }
    if let Some(s) = &args.socket {
        config.socket = s.clone();
    }
    if let Some(b) = &args.bridge {
        config.bridge = b.clone();
    }
    if let Some(s) = &args.subnet {
        config.subnet = s.clone();
    }
    config.data_dirs = vec![layout.data_dir.clone()];
    config.runtime_dirs = vec![layout.runtime_dir.clone()];
    let systemd = systemd_running();
    if systemd {
        for (flag, path) in [
            ("--prefix", &args.prefix),
            ("--config", &args.config),
            ("--socket", &config.socket),
        ] {
            unit_safe(flag, path)?;
        }
    }

    // 1. Binaries.
    let exe = std::env::current_exe().map_err(|e| io_fail("locate the running banger", &e))?;
    let src_dir = socket_dir(&exe);
    let dst_dir = bin_dir(&args.prefix);
    for name in BINARIES {
        let src = src_dir.join(name);
        if !src.is_file() {
            return Err(fail(
                ErrorCode::NotFound,
                format!(
                    "{} is missing: install needs banger, bangerd and banger-helper side by side",
                    src.display()
                ),
            ));
        }
    }
    create_dir_0755(&dst_dir)?;
    let mut binaries = Vec::new();
    for name in BINARIES {
        let (src, dst) = (src_dir.join(name), dst_dir.join(name));
        if copy_binary(&src, &dst)? {
            out.step(format!("installed {}", dst.display()));
        } else {
            out.step(format!("{} is already in place", dst.display()));
        }
        binaries.push(dst);
    }
    let agent = src_dir.join(AGENT_BIN);
    if agent.is_file() {
        let dst = dst_dir.join(AGENT_BIN);
        if copy_binary(&agent, &dst)? {
            out.step(format!("installed {}", dst.display()));
        }
        binaries.push(dst);
    }
    let helper_bin = dst_dir.join(HELPER_BIN);
    let share = args.prefix.join("share");
    let docs = crate::reference::install_share(&share).map_err(|e| {
        io_fail(
            format_args!(
                "install man pages and completions under {}",
                share.display()
            ),
            &e,
        )
    })?;
    out.step(format!(
        "installed {} man pages and the bash, zsh and fish completions under {}",
        docs.iter()
            .filter(|p| p.extension().is_some_and(|e| e == "1"))
            .count(),
        share.display()
    ));

    // 2. Config, checked by the helper itself before it replaces the old one.
    let config_dir = socket_dir(&args.config);
    create_dir_0755(&config_dir)?;
    let mut text = serde_json::to_vec_pretty(&config)
        .map_err(|e| fail(ErrorCode::OperationFailed, format!("encode config: {e}")))?;
    text.push(b'\n');
    let staged = config_dir.join(format!(".helper-check-{}.json", std::process::id()));
    write_atomic(&staged, &text, 0o644)?;
    let checked = check_config(&helper_bin, &staged);
    let _ = fs::remove_file(&staged);
    checked?;
    write_atomic(&args.config, &text, 0o644)?;
    out.step(format!(
        "wrote {} (allowed uid {} ({}), bridge {}, subnet {}, socket {})",
        args.config.display(),
        account.uid,
        account.name,
        config.bridge,
        config.subnet,
        config.socket.display()
    ));

    // 3. Stop whatever helper runs now (so re-install replaces it).
    let mut replaced_pid = None;
    let mut sockets = vec![config.socket.clone()];
    if let Some(old) = &existing {
        if old.socket != config.socket {
            sockets.push(old.socket.clone());
        }
    }
    if systemd && unit_files().iter().any(|p| p.exists()) {
        if let Ping::Pong(info) = ping(&config.socket) {
            replaced_pid = Some(info.pid);
        }
        let _ = systemctl(&["stop", SERVICE_UNIT, SOCKET_UNIT]);
        out.step("stopped the banger-helper units");
    }
    for socket in &sockets {
        if let Some(pid) = stop_background(socket, out)? {
            replaced_pid = Some(pid);
        }
    }
    // A helper started some other way that still answers and is ours.
    if let Ping::Pong(info) = ping(&config.socket) {
        if is_helper_process(info.pid) {
            stop_pid(info.pid)?;
            out.step(format!("stopped banger-helper (pid {})", info.pid));
            replaced_pid = Some(info.pid);
        }
    }

    // 4. Start.
    let mode;
    let mut log = None;
    let first_answer = if systemd {
        mode = "systemd";
        start_systemd(args, &helper_bin, &config, out)?;
        wait_for_answer(&config.socket)?
    } else {
        mode = "background";
        let (pid, log_path, answer) =
            start_background(&helper_bin, &args.config, &config.socket, out)?;
        out.step(format!(
            "no systemd here: started banger-helper as a background process (pid {pid}); \
             it will not survive a reboot; run `banger system install` again after one"
        ));
        log = Some(log_path);
        answer
    };

    // 5. Report what answers.
    let answer = match first_answer {
        Ping::Pong(info) => {
            out.step(format!(
                "banger-helper {} answers on {} (protocol {}, pid {}): bridge {}, subnet {}, gateway {}",
                info.version,
                config.socket.display(),
                info.protocol,
                info.pid,
                info.bridge,
                info.subnet,
                info.gateway
            ));
            (Some(info), None)
        }
        // Root is not an allowed uid: ask again as the user it serves,
        // which also shows that user can reach the socket.
        Ping::Refused(e) => match ping_as(&account, &dst_dir, &args.config, &config.socket) {
            Ok(info) => {
                out.step(format!(
                    "banger-helper {} answers {} (uid {}) on {} (protocol {}, pid {}): \
                     bridge {}, subnet {}, gateway {}",
                    info.version,
                    account.name,
                    account.uid,
                    config.socket.display(),
                    info.protocol,
                    info.pid,
                    info.bridge,
                    info.subnet,
                    info.gateway
                ));
                (Some(info), None)
            }
            Err(why) => {
                out.step(format!(
                    "banger-helper answers on {} but refuses root ({e}); asking it as {} \
                     failed: {why}",
                    config.socket.display(),
                    account.name
                ));
                (None, Some(format!("{e}; as {}: {why}", account.name)))
            }
        },
        // Both starts return only answers.
        other => (None, Some(format!("{other:?}"))),
    };
    let report = InstallReport {
        user: account,
        prefix: args.prefix.clone(),
        binaries,
        config: args.config.clone(),
        socket: config.socket.clone(),
        mode,
        replaced_pid,
        log_file: log,
        helper: answer.0,
        refused: answer.1,
    };
    if args.json {
        print_json(&report)?;
    }
    Ok(())
}

/// Pings the helper as `account` by running the installed `banger system
/// status --json` with that user's uid and gid.
pub(super) fn ping_as(
    account: &Account,
    bin_dir: &Path,
    config: &Path,
    socket: &Path,
) -> Result<HelperInfo, String> {
    let output = Command::new(bin_dir.join("banger"))
        .args(["system", "status", "--json", "--config"])
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .env_clear()
        .env("PATH", HELPER_PATH)
        .env("HOME", &account.home)
        .uid(account.uid)
        .gid(account.gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run banger as uid {}: {e}", account.uid))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|_| {
        format!(
            "banger system status said: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    match report.get("helper") {
        Some(h) => serde_json::from_value(h.clone()).map_err(|e| e.to_string()),
        None => Err(report
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no answer")
            .to_owned()),
    }
}

pub(super) fn check_config(helper_bin: &Path, config: &Path) -> Result<(), CliError> {
    let output = Command::new(helper_bin)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_fail(format_args!("run {}", helper_bin.display()), &e))?;
    if output.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if said.is_empty() {
        said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(CliError::BadParams(format!(
        "banger-helper refused the config: {said}"
    )))
}
