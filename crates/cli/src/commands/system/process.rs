//! The helper as a background process (no systemd): finding it by its pid
//! file, starting it in its own session, stopping it.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_proto::ErrorCode;
use rustix::process::{Pid, Signal, kill_process};

use super::files::{create_dir_0755, remove_if_present, write_atomic};
use super::paths::{log_file, pid_file, socket_dir};
use super::ping::{Ping, ping};
use super::{HELPER_BIN, HELPER_PATH, Out, START_TIMEOUT, fail, io_fail};
use crate::CliError;

/// How long a helper gets after SIGTERM before SIGKILL.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// Exists and is not a zombie (a zombie has exited; only its parent's
/// wait is missing).
pub(super) fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE ...`: COMM may hold spaces and parens; the state
    // follows the last `)`.
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    !matches!(stat.get(close + 2), Some(b'Z' | b'X') | None)
}

/// A live process whose executable is a `banger-helper` (the name still
/// matches after the file was replaced: ` (deleted)` is stripped). Without
/// the right to read `/proc/PID/exe` (another user's process), its `comm`.
pub(super) fn is_helper_process(pid: u32) -> bool {
    if pid == 0 || !alive(pid) {
        return false;
    }
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => {
            let text = exe.to_string_lossy();
            let text = text.strip_suffix(" (deleted)").unwrap_or(&text);
            Path::new(text).file_name().and_then(|n| n.to_str()) == Some(HELPER_BIN)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end() == HELPER_BIN)
                .unwrap_or(false)
        }
        Err(_) => false,
    }
}

pub(super) fn read_pid_file(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(super) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, a bounded wait, then SIGKILL. Only for a pid that
/// [`is_helper_process`] accepted.
pub(super) fn stop_pid(pid: u32) -> Result<(), CliError> {
    let Some(p) = to_pid(pid) else {
        return Ok(());
    };
    let _ = kill_process(p, Signal::TERM);
    if wait_gone(pid, STOP_TIMEOUT) {
        return Ok(());
    }
    let _ = kill_process(p, Signal::KILL);
    if wait_gone(pid, Duration::from_secs(2)) {
        return Ok(());
    }
    Err(fail(
        ErrorCode::OperationFailed,
        format!("banger-helper (pid {pid}) did not stop after SIGTERM and SIGKILL"),
    ))
}

/// Stops the background helper named by the pid file beside `socket`, and
/// removes the pid file. Returns the pid stopped.
pub(super) fn stop_background(socket: &Path, out: Out) -> Result<Option<u32>, CliError> {
    let path = pid_file(socket);
    let pid = read_pid_file(&path);
    let stopped = match pid {
        Some(pid) if is_helper_process(pid) => {
            stop_pid(pid)?;
            out.step(format!("stopped banger-helper (pid {pid})"));
            Some(pid)
        }
        _ => None,
    };
    if remove_if_present(&path)? {
        if stopped.is_some() {
            out.step(format!("removed {}", path.display()));
        } else {
            out.step(format!("removed stale pid file {}", path.display()));
        }
    }
    Ok(stopped)
}

/// Starts the helper in its own session, output appended to `helper.log`
/// beside the socket, writes its pid file and waits up to
/// [`START_TIMEOUT`] for its first answer (a `Pong` or a refusal).
pub(super) fn start_background(
    helper_bin: &Path,
    config_path: &Path,
    socket: &Path,
    out: Out,
) -> Result<(u32, PathBuf, Ping), CliError> {
    let dir = socket_dir(socket);
    create_dir_0755(&dir)?;
    // A socket file nothing listens on any more (the helper we stopped, or
    // one that crashed) would be in the new helper's way.
    if let Ok(meta) = fs::symlink_metadata(socket) {
        let refused = matches!(
            UnixStream::connect(socket),
            Err(ref e) if e.kind() == io::ErrorKind::ConnectionRefused
        );
        if meta.file_type().is_socket() && refused {
            let _ = fs::remove_file(socket);
        }
    }
    let log_path = log_file(socket);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&log_path)
        .map_err(|e| io_fail(format_args!("open {}", log_path.display()), &e))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .map_err(|e| io_fail(format_args!("open {}", log_path.display()), &e))?;
    let mut command = Command::new(helper_bin);
    command
        .arg("--config")
        .arg(config_path)
        .env_clear()
        .env("PATH", HELPER_PATH)
        .envs(std::env::var_os("BANGER_HELPER_LOG").map(|v| ("BANGER_HELPER_LOG", v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .current_dir("/");
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid(2), which is async-signal-safe and does not allocate.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| io_fail(format_args!("start {}", helper_bin.display()), &e))?;
    let pid = child.id();
    write_atomic(&pid_file(socket), format!("{pid}\n").as_bytes(), 0o644)?;
    out.step(format!(
        "wrote {} (log: {})",
        pid_file(socket).display(),
        log_path.display()
    ));
    // Catch an early exit (a refused config, a socket in use) here, while
    // the child is still ours to wait for.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match ping(socket) {
            Ping::Absent(e) => e.to_string(),
            Ping::Broken(s) => s,
            answer => return Ok((pid, log_path, answer)),
        };
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(pid_file(socket));
            return Err(fail(
                ErrorCode::OperationFailed,
                format!(
                    "banger-helper exited during start ({status}); see {}{}",
                    log_path.display(),
                    crate::daemon_ctl::log_tail(&log_path, log_start)
                ),
            ));
        }
        if Instant::now() >= deadline {
            // Ours and useless: do not leave it holding the socket.
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(pid_file(socket));
            return Err(fail(
                ErrorCode::OperationFailed,
                format!(
                    "banger-helper (pid {pid}) did not answer on {} within {} s ({last}), \
                     so it was stopped; see {}{}",
                    socket.display(),
                    START_TIMEOUT.as_secs(),
                    log_path.display(),
                    crate::daemon_ctl::log_tail(&log_path, log_start)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_and_strangers_are_not_helpers() {
        assert!(!is_helper_process(0));
        assert!(!is_helper_process(std::process::id()));
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
