//! Starting a VMM process and reaping it, for both backends: a session of
//! its own (so neither the daemon's death nor its terminal's signals reach
//! it), a header line in its log naming the command, and a small thread per
//! VMM that blocks in `waitpid(pid)` so an exited VMM never lingers as a zombie,
//! and keeps how it ended until the daemon asks ([`crate::Vmm::take_exit`]).
//! See `crate::qemu`'s module docs for why a thread rather than a double
//! fork.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::spec::{VmSpec, VmmExit};

/// Makes `command`'s child the leader of a new session before it runs.
pub(crate) fn in_own_session(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes one raw `setsid` system
    // call (rustix, no libc wrapper state, no allocation) and maps its
    // error with `io::Error::from_raw_os_error`, which does not allocate.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()
                .map(drop)
                .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
        });
    }
}

/// Reaps our child `pid` when it exits, from a thread of its own (the std
/// `Child` is dropped, which neither waits nor kills).
pub(crate) fn spawn_reaper(pid: u32, what: &'static str) {
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    exits::launched(pid);
    let spawned = std::thread::Builder::new()
        .name(format!("{what}-reaper-{pid}"))
        .spawn(move || {
            loop {
                match rustix::process::waitpid(Some(target), rustix::process::WaitOptions::empty())
                {
                    Err(rustix::io::Errno::INTR) => continue,
                    result => {
                        tracing::debug!(pid, vmm = what, ?result, "vmm exited and was reaped");
                        let exit = match &result {
                            Ok(Some((_, status))) => exit_of(*status),
                            _ => None,
                        };
                        exits::reaped(pid, exit);
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // Unreaped, it stays a zombie after exiting until this process
        // exits; wait_exit and is_running treat a zombie as gone.
        tracing::warn!(pid, vmm = what, error = %e, "cannot start the vmm reaper thread");
        exits::reaped(pid, None);
    }
}

fn exit_of(status: rustix::process::WaitStatus) -> Option<VmmExit> {
    if let Some(code) = status.exit_status() {
        Some(VmmExit::Code(code))
    } else {
        status.terminating_signal().map(VmmExit::Signal)
    }
}

/// The exit statuses the reaper threads saw, by pid, until the daemon asks
/// ([`crate::Vmm::take_exit`]). Bounded: a status nobody asks for (the
/// daemon stopped the VM itself) is dropped once many are kept.
pub(crate) mod exits {
    use std::collections::HashMap;
    use std::sync::{Condvar, Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use crate::spec::VmmExit;

    /// pid -> `None` while its reaper waits, then how it ended (`None`
    /// inside when unknown).
    type Table = HashMap<u32, Option<Option<VmmExit>>>;

    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    static CHANGED: Condvar = Condvar::new();
    const MAX_KEPT: usize = 4096;

    fn table() -> MutexGuard<'static, Option<Table>> {
        // The map stays consistent even if a holder panicked.
        TABLE.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn launched(pid: u32) {
        let mut t = table();
        let t = t.get_or_insert_with(HashMap::new);
        if t.len() >= MAX_KEPT {
            t.retain(|_, v| v.is_none());
        }
        t.insert(pid, None);
    }

    pub(crate) fn reaped(pid: u32, exit: Option<VmmExit>) {
        if let Some(slot) = table().as_mut().and_then(|t| t.get_mut(&pid)) {
            *slot = Some(exit);
        }
        CHANGED.notify_all();
    }

    /// How our child `pid` ended; waits up to `wait` for its reaper when
    /// it has not reported yet (the caller saw the process gone, the
    /// reaper may be a moment behind). `None` if `pid` is not a child
    /// this process launched, or its status is unknown.
    pub(crate) fn take(pid: u32, wait: Duration) -> Option<VmmExit> {
        let deadline = Instant::now() + wait;
        let mut guard = table();
        loop {
            let t = guard.as_mut()?;
            match t.get(&pid)? {
                Some(exit) => {
                    let exit = *exit;
                    t.remove(&pid);
                    return exit;
                }
                None => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    guard = CHANGED
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

pub(crate) fn write_launch_header(
    log: &mut File,
    binary: &Path,
    spec: &VmSpec,
    args: &[OsString],
) -> io::Result<()> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut line = format!(
        "--- banger: launching vm {} ({}) at unix time {secs}:\n--- {}",
        spec.vm_id,
        spec.name,
        binary.display()
    );
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    line.push('\n');
    log.write_all(line.as_bytes())
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.,:/@%+[]".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn shell_quoting_for_the_log_header() {
        assert_eq!(shell_quote("-m"), "-m");
        assert_eq!(shell_quote("console=ttyS0 quiet"), "'console=ttyS0 quiet'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_reaper_records_how_a_child_ended() {
        let spawn = |script: &str| {
            let child = Command::new("sh").args(["-c", script]).spawn().unwrap();
            let pid = child.id();
            // Dropped, not waited: the reaper thread reaps it.
            drop(child);
            spawn_reaper(pid, "test");
            pid
        };
        let code = spawn("exit 3");
        let killed = spawn("kill -9 $$");
        let wait = Duration::from_secs(10);
        assert_eq!(exits::take(code, wait), Some(VmmExit::Code(3)));
        assert_eq!(exits::take(killed, wait), Some(VmmExit::Signal(9)));
        assert_eq!(exits::take(code, wait), None, "told once");
        assert_eq!(exits::take(u32::MAX, wait), None, "not our child");
    }
}
