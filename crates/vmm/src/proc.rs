//! Looking at other processes through `kill(pid, 0)` and `/proc`, never
//! `waitpid`: after a daemon restart the VMMs are not our children.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::process::{Pid, Signal};

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// The process exists and has a thread that is not a zombie. A zombie has
/// exited and only waits to be reaped; but after a kill the main thread can
/// be a zombie while other threads still tear down and hold the process's
/// files (disks, a TAP), so "exited" means every thread is.
pub(crate) fn is_alive(pid: u32) -> bool {
    let Some(p) = to_pid(pid) else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => {}
        // It exists, but belongs to someone else.
        Err(e) if e == rustix::io::Errno::PERM => {}
        Err(_) => return false,
    }
    let running = |state: Option<char>| !matches!(state, Some('Z') | Some('X') | None);
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.flatten().any(|t| {
            let tid = t.file_name().to_string_lossy().parse::<u32>().ok();
            tid.is_some_and(|tid| running(task_state(pid, tid)))
        }),
        Err(_) => running(state(pid)),
    }
}

/// The one-letter state of thread `tid` of `pid`.
fn task_state(pid: u32, tid: u32) -> Option<char> {
    let stat = fs::read(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).map(|&b| char::from(b))
}

/// The fields of `/proc/PID/stat` after `PID (COMM)`: state, ppid, pgrp,
/// session, ... COMM may itself contain ") ", so split at the last one.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = String::from_utf8_lossy(stat.get(close + 1..)?).into_owned();
    Some(rest.split_ascii_whitespace().map(str::to_owned).collect())
}

/// The one-letter state from `/proc/PID/stat` (`R`, `S`, `Z`, ...).
pub(crate) fn state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// `/proc/PID/exe` names a `qemu-system-*` binary (also when the binary was
/// replaced on disk since, which the kernel shows as `... (deleted)`).
pub(crate) fn exe_is_qemu(pid: u32) -> bool {
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe
            .file_name()
            .is_some_and(|name| name.as_bytes().starts_with(b"qemu-system-")),
        Err(_) => false,
    }
}

/// `/proc/PID/exe`'s file name contains `needle` (Firecracker's release
/// binaries are named `firecracker-vX.Y.Z-ARCH`).
pub(crate) fn exe_name_contains(pid: u32, needle: &str) -> bool {
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains(needle)),
        Err(_) => false,
    }
}

/// Sends `signal` to the VMM `pid` (already checked to be ours).
pub(crate) fn signal_vmm(pid: u32, signal: crate::Signal) -> Result<(), crate::VmmError> {
    use crate::VmmError;
    self::signal(pid, signal.to_rustix()).map_err(|source| {
        if source.raw_os_error() == Some(esrch()) {
            VmmError::NotRunning { pid }
        } else {
            VmmError::Signal {
                pid,
                signal,
                source,
            }
        }
    })
}

/// Waits up to `timeout` for the VMM `pid` to be gone; `owned` says
/// whether it was recognisably ours when asked. Ownership is checked once,
/// up front: a dying VMM stops looking like one (its `/proc/PID/exe` goes
/// away when its memory is released) before it has closed its files, so the
/// loop then waits for the pid itself to be gone or a zombie, which happens
/// only after every file (disk locks, sockets) is closed. Pids are handed
/// out cyclically, so the pid cannot be reused within one 25 ms poll.
pub(crate) fn wait_gone(pid: u32, owned: bool, timeout: std::time::Duration) -> bool {
    use std::time::{Duration, Instant};
    // Called right after a kill, the VMM may already be dying (no exe any
    // more, so not recognisably ours) with its disks still locked: wait
    // for it too.
    if !owned && !is_exiting(pid) {
        return true;
    }
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(25)));
    }
}

/// The process is alive but its `/proc/PID/exe` is gone: it was killed
/// and is releasing its memory, its files (disk locks) still open. A pid
/// seen this way right after a kill is still the process killed (pids are
/// handed out cyclically).
pub(crate) fn is_exiting(pid: u32) -> bool {
    is_alive(pid)
        && matches!(
            fs::read_link(format!("/proc/{pid}/exe")),
            Err(e) if e.kind() == io::ErrorKind::NotFound
        )
}

/// The process's argv, from `/proc/PID/cmdline`.
pub(crate) fn cmdline(pid: u32) -> Option<Vec<Vec<u8>>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let raw = raw.strip_suffix(b"\0").unwrap_or(&raw);
    Some(raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect())
}

/// `argv` holds `flag` immediately followed by `value`.
pub(crate) fn has_option(argv: &[Vec<u8>], flag: &str, value: &OsStr) -> bool {
    argv.windows(2)
        .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
}

pub(crate) fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let p = to_pid(pid).ok_or_else(|| io::Error::from_raw_os_error(esrch()))?;
    rustix::process::kill_process(p, sig).map_err(io::Error::from)
}

fn esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
}

/// The session id of `pid` (for tests and diagnostics), as seen from our
/// pid namespace: 0 when the session leader lives outside it (as in CI
/// containers), which `getsid(2)` also returns but rustix refuses.
pub fn session_id(pid: u32) -> io::Result<u32> {
    stat_fields(pid)
        .and_then(|fields| fields.get(3)?.parse().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(esrch()))
}

/// Pids of live `qemu-system-*` processes whose argv contains `needle` as a
/// whole argument or inside one: used to prove nothing was left behind.
pub fn qemu_pids_with_arg(needle: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| is_alive(pid) && exe_is_qemu(pid))
        .filter(|&pid| {
            cmdline(pid).is_some_and(|argv| argv.iter().any(|arg| contains(arg, needle.as_bytes())))
        })
        .collect()
}

/// Pids of the live (not zombie) children of `pid`, from every
/// `/proc/*/stat` (a child forked by any of its threads names the process
/// as its parent).
pub(crate) fn live_children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent = pid.to_string();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            stat_fields(child).is_some_and(|f| {
                f.get(1) == Some(&parent)
                    && !matches!(f.first().map(String::as_str), Some("Z" | "X"))
            })
        })
        .collect()
}

/// Pids of the live processes (see [`is_alive`]) in process group `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let group = pgid.to_string();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.get(2) == Some(&group)))
        .filter(|&pid| is_alive(pid))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `path` exists (following symlinks), distinguishing "no" from
/// "cannot tell".
pub(crate) fn exists(path: &Path) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_leader_has_its_own_session() {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("5");
        // SAFETY: setsid is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()
                    .map(|_| ())
                    .map_err(io::Error::from)
            });
        }
        let mut child = cmd.spawn().unwrap();
        assert_eq!(session_id(child.id()).unwrap(), child.id());
        assert_ne!(
            session_id(child.id()).unwrap(),
            session_id(std::process::id()).unwrap()
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(session_id(u32::MAX).is_err());
    }

    #[test]
    fn own_process_is_alive_and_not_qemu() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(matches!(state(me), Some('R' | 'S')), "{:?}", state(me));
        assert!(!exe_is_qemu(me));
        let argv = cmdline(me).unwrap();
        assert!(!argv.is_empty());
    }

    #[test]
    fn live_children_lists_a_running_child_only() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(live_children(std::process::id()).contains(&child.id()));
        child.kill().unwrap();
        // Killed but not reaped: a zombie, which no longer counts.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while live_children(std::process::id()).contains(&child.id()) {
            assert!(std::time::Instant::now() < deadline, "still listed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(live_children(u32::MAX).is_empty());
    }

    #[test]
    fn impossible_pids_are_dead() {
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
        // Above the kernel's pid_max limit (4194304).
        assert!(!is_alive(4_194_305));
    }

    #[test]
    fn option_pairs_must_be_adjacent() {
        let argv: Vec<Vec<u8>> = ["qemu", "-name", "x", "-qmp", "y"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert!(has_option(&argv, "-name", OsStr::new("x")));
        assert!(!has_option(&argv, "-name", OsStr::new("y")));
    }
}
