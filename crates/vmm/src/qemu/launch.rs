//! Starting QEMU: spawned directly in a session of its own, its output
//! appended to `vmm.log` after a header line, then polled until QMP
//! answers or it exits; killed and reaped on any failure, and reaped by a
//! thread of its own once it runs (see the module documentation of
//! `crate::qemu`).

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::check::check_files;
use super::diagnose::{host_forward_error, log_tail};
use super::{QemuVmm, VmFiles, qemu_args};
use crate::error::VmmError;
use crate::qmp::{ConnectError, QmpClient};
use crate::spec::{BackendKind, VmHandle, VmSpec};

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
        crate::spawn::write_launch_header(&mut log, &self.binary, spec, &args)
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
        crate::spawn::in_own_session(&mut command);
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
        crate::spawn::spawn_reaper(pid, "qemu");
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
