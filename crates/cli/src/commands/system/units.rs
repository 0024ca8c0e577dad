//! The helper under systemd: the `banger-helper.socket` and
//! `banger-helper.service` units and `systemctl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_proto::ErrorCode;
use banger_proto::helper::HelperConfig;

use super::files::{create_dir_0755, write_atomic};
use super::paths::unit_dir;
use super::ping::{Ping, ping};
use super::{Out, SERVICE_UNIT, SOCKET_UNIT, START_TIMEOUT, fail, io_fail};
use crate::CliError;
use crate::args::SystemInstallArgs;

pub(super) fn systemctl(args: &[&str]) -> Result<(), CliError> {
    let output = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_fail("run systemctl", &e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(fail(
        ErrorCode::OperationFailed,
        format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}

pub(super) fn systemctl_is_active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub(super) fn unit_files() -> [PathBuf; 2] {
    let dir = unit_dir();
    [dir.join(SOCKET_UNIT), dir.join(SERVICE_UNIT)]
}

/// systemd's unit syntax treats spaces, quotes, `%` and `\` specially;
/// paths with those are refused rather than escaped.
pub(super) fn unit_safe(flag: &str, path: &Path) -> Result<(), CliError> {
    let ok = path.to_str().is_some_and(|s| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+@:".contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(CliError::BadParams(format!(
            "{flag} {}: use a path of letters, digits and / . _ - + @ : for a systemd unit",
            path.display()
        )))
    }
}

pub(super) fn service_unit(helper_bin: &Path, config: &Path) -> String {
    format!(
        "# Written by `banger system install`; removed by `banger system uninstall`.
[Unit]
Description=banger root helper (TAP devices, bridge, NAT, loop and dm devices for bangerd)
Requires={SOCKET_UNIT}
After={SOCKET_UNIT} network.target

[Service]
Type=simple
ExecStart={bin} --config {config}
Restart=on-failure
RestartSec=1s
# Hardening that leaves the helper's job possible (see docs/system.md):
# it needs /dev/net/tun, /dev/loop*, /dev/mapper, writes to /proc/sys/net,
# /run and the users' data dirs, so no PrivateDevices, ProtectKernelTunables,
# ProtectHome or PrivateTmp.
NoNewPrivileges=yes
ProtectSystem=full
ProtectControlGroups=yes
ProtectHostname=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_KILL CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH

[Install]
WantedBy=multi-user.target
",
        bin = helper_bin.display(),
        config = config.display(),
    )
}

pub(super) fn socket_unit(socket: &Path) -> String {
    format!(
        "# Written by `banger system install`; removed by `banger system uninstall`.
[Unit]
Description=banger root helper socket

[Socket]
ListenStream={socket}
SocketMode=0666
DirectoryMode=0755
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
",
        socket = socket.display(),
    )
}

pub(super) fn start_systemd(
    args: &SystemInstallArgs,
    helper_bin: &Path,
    config: &HelperConfig,
    out: Out,
) -> Result<(), CliError> {
    let dir = unit_dir();
    create_dir_0755(&dir)?;
    let service = dir.join(SERVICE_UNIT);
    let socket = dir.join(SOCKET_UNIT);
    write_atomic(
        &service,
        service_unit(helper_bin, &args.config).as_bytes(),
        0o644,
    )?;
    write_atomic(&socket, socket_unit(&config.socket).as_bytes(), 0o644)?;
    out.step(format!(
        "wrote {} and {}",
        socket.display(),
        service.display()
    ));
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "--now", SOCKET_UNIT])?;
    // Enabled with the socket so it also starts at boot, not only on the
    // first connection.
    systemctl(&["enable", "--now", SERVICE_UNIT])?;
    out.step(format!(
        "enabled and started {SOCKET_UNIT} and {SERVICE_UNIT}"
    ));
    Ok(())
}

/// Waits up to [`START_TIMEOUT`] for a helper started by systemd to answer
/// (a `Pong` or a refusal: both prove it is up).
pub(super) fn wait_for_answer(socket: &Path) -> Result<Ping, CliError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match ping(socket) {
            p @ (Ping::Pong(_) | Ping::Refused(_)) => return Ok(p),
            Ping::Absent(e) => e.to_string(),
            Ping::Broken(s) => s,
        };
        if Instant::now() >= deadline {
            return Err(fail(
                ErrorCode::OperationFailed,
                format!(
                    "banger-helper did not answer on {} within {} s ({last}); \
                     see `systemctl status {SERVICE_UNIT}` and `journalctl -u banger-helper`",
                    socket.display(),
                    START_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn units_name_the_binary_config_and_socket() {
        let s = service_unit(
            Path::new("/usr/local/bin/banger-helper"),
            Path::new("/etc/banger/helper.json"),
        );
        assert!(
            s.contains("ExecStart=/usr/local/bin/banger-helper --config /etc/banger/helper.json\n")
        );
        assert!(s.contains("Type=simple\n"));
        // Settings that would hide /dev/net/tun, loop or dm devices.
        for setting in [
            "PrivateDevices=",
            "DeviceAllow=",
            "ProtectClock=",
            "PrivateTmp=",
        ] {
            assert!(!s.lines().any(|l| l.starts_with(setting)), "{setting}");
        }
        let k = socket_unit(Path::new("/run/banger-helper/helper.sock"));
        assert!(k.contains("ListenStream=/run/banger-helper/helper.sock\n"));
        assert!(k.contains("SocketMode=0666\n"));
    }

    #[test]
    fn unit_paths_refuse_specials() {
        assert!(unit_safe("--prefix", Path::new("/usr/local")).is_ok());
        for bad in ["/opt/my dir", "/opt/%h", "/opt/a\"b", "/opt/a\\b"] {
            assert!(unit_safe("--prefix", Path::new(bad)).is_err(), "{bad}");
        }
    }
}
