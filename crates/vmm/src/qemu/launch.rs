//! Starting QEMU: spawned directly in a session of its own, its output
//! appended to `vmm.log` after a header line, then polled until QMP
//! answers or it exits; killed and reaped on any failure, and reaped by a
//! thread of its own once it runs (see the module documentation of
//! `crate::qemu`).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::check::check_files;
use super::diagnose::{host_forward_error, log_tail};
use super::{QemuVmm, VmFiles, qemu_args};
use crate::error::VmmError;
use crate::qmp::{ConnectError, QmpClient};
use crate::spec::{BackendKind, VmHandle, VmSpec, VmmExit};

impl QemuVmm {
    /// [`crate::Vmm::launch`] for QEMU.
    pub(super) fn launch_qemu(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        let started = Instant::now();
        let handle = self.start_qemu(spec, &[])?.into_handle();
        tracing::debug!(
            vm_id = %spec.vm_id,
            name = %spec.name,
            pid = handle.pid,
            accel = spec.accel.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "qemu answered on qmp"
        );
        Ok(handle)
    }

    /// Starts QEMU for `spec` with `extra` arguments appended and waits
    /// for QMP to answer. The QEMU stays our child and is killed and
    /// reaped when the returned [`Started`] is dropped, unless
    /// [`Started::into_handle`] lets it go.
    pub(super) fn start_qemu(&self, spec: &VmSpec, extra: &[&str]) -> Result<Started, VmmError> {
        let mut args = qemu_args(spec)?;
        args.extend(extra.iter().map(OsString::from));
        check_files(spec)?;
        let files = VmFiles::in_dir(&spec.vm_dir);
        prepare_dirs(spec, &files)?;

        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.vmm_log)
            .map_err(io_err("open", &files.vmm_log))?;
        write_launch_header(&mut log, &self.binary, spec, &args)
            .map_err(io_err("write", &files.vmm_log))?;
        let log_start = log
            .metadata()
            .map_err(io_err("stat", &files.vmm_log))?
            .len();
        let log_err = log.try_clone().map_err(io_err("open", &files.vmm_log))?;

        let mut command = Command::new(&self.binary);
        command
            .args(&args)
            .current_dir(&spec.vm_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
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
        if let Some(holder) = spec.join_namespaces_of {
            crate::usernet::join_namespaces(&mut command, holder, &spec.vm_dir).map_err(
                |source| VmmError::JoinNamespaces {
                    vm_id: spec.vm_id.clone(),
                    holder,
                    source,
                },
            )?;
        }
        let child = command.spawn().map_err(|source| VmmError::Exec {
            binary: self.binary.clone(),
            source,
        })?;
        let mut started = Started {
            child,
            armed: true,
            files,
            log_start,
        };
        self.wait_ready(spec, &started.files, &mut started.child, log_start)?;
        Ok(started)
    }

    fn wait_ready(
        &self,
        spec: &VmSpec,
        files: &VmFiles,
        child: &mut Child,
        log_start: u64,
    ) -> Result<(), VmmError> {
        let started = Instant::now();
        let deadline = started + self.start_timeout;
        let mut last_error = String::from("the qmp socket never appeared");
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(self.startup_exit(spec, files, log_start, status));
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(VmmError::Exec {
                        binary: self.binary.clone(),
                        source,
                    });
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = remaining.clamp(Duration::from_millis(100), Duration::from_secs(2));
            match QmpClient::connect(&files.control_socket, attempt) {
                Ok(_client) => return Ok(()),
                Err(ConnectError::NotListening(_)) => {}
                Err(e @ ConnectError::Handshake(_)) => last_error = e.message(),
            }
            if Instant::now() >= deadline {
                // Kill and reap before reading the log, so the tail is final.
                let _ = child.kill();
                let _ = child.wait();
                let tail = log_tail(&files.vmm_log, log_start);
                return Err(VmmError::StartupTimeout {
                    binary: self.binary.clone(),
                    secs: started.elapsed().as_secs_f64(),
                    tail: if tail.is_empty() { last_error } else { tail },
                    log: files.vmm_log.clone(),
                    console: spec.console_log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn startup_exit(
        &self,
        spec: &VmSpec,
        files: &VmFiles,
        log_start: u64,
        status: ExitStatus,
    ) -> VmmError {
        let tail = log_tail(&files.vmm_log, log_start);
        if let Some(err) = host_forward_error(spec, &tail, &files.vmm_log) {
            return err;
        }
        VmmError::StartupExit {
            binary: self.binary.clone(),
            status: status.to_string(),
            tail: if tail.is_empty() {
                "it printed nothing".into()
            } else {
                tail
            },
            log: files.vmm_log.clone(),
            console: spec.console_log.clone(),
        }
    }
}

/// A QEMU we started that answers on QMP. Killed and reaped on drop while
/// armed (every early return and panic of `launch` and `restore`).
pub(super) struct Started {
    child: Child,
    armed: bool,
    pub(super) files: VmFiles,
    /// Where this launch's output starts in `vmm.log`.
    log_start: u64,
}

impl Started {
    /// Whether QEMU has exited, and how.
    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for QEMU to exit on its own.
    pub(super) fn exits_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills and reaps QEMU now, then returns the tail of what it wrote to
    /// `vmm.log` (final, since it is gone).
    pub(super) fn kill_for_tail(mut self) -> String {
        self.armed = false;
        let _ = self.child.kill();
        let _ = self.child.wait();
        log_tail(&self.files.vmm_log, self.log_start)
    }

    /// Lets QEMU run on, reaped by a thread of its own, and returns its
    /// handle.
    pub(super) fn into_handle(mut self) -> VmHandle {
        self.armed = false;
        let pid = self.child.id();
        spawn_reaper(pid);
        VmHandle {
            pid,
            control_socket: self.files.control_socket.clone(),
            backend: BackendKind::Qemu,
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reaps our child `pid` when it exits, from a thread of its own (the std
/// `Child` is dropped, which neither waits nor kills).
fn spawn_reaper(pid: u32) {
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    exits::launched(pid);
    let spawned = std::thread::Builder::new()
        .name(format!("qemu-reaper-{pid}"))
        .spawn(move || {
            loop {
                match rustix::process::waitpid(Some(target), rustix::process::WaitOptions::empty())
                {
                    Err(rustix::io::Errno::INTR) => continue,
                    result => {
                        tracing::debug!(pid, ?result, "qemu exited and was reaped");
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
        tracing::warn!(pid, error = %e, "cannot start the qemu reaper thread");
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
pub(super) mod exits {
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

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VmmError + use<> {
    let path = path.to_path_buf();
    move |source| VmmError::Io {
        action,
        path,
        source,
    }
}

fn prepare_dirs(spec: &VmSpec, files: &VmFiles) -> Result<(), VmmError> {
    fs::create_dir_all(&spec.vm_dir).map_err(io_err("create directory", &spec.vm_dir))?;
    if let Some(parent) = spec.console_log.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
    }
    // A stale socket would only be refused, but a stale pidfile misleads.
    for stale in [&files.control_socket, &files.pidfile] {
        match fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale", stale)(e)),
        }
    }
    Ok(())
}

fn write_launch_header(
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
            spawn_reaper(pid);
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
