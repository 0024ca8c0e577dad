//! The QEMU backend: `qemu-system-x86_64 -M microvm` with virtio-mmio
//! devices, controlled over QMP.
//!
//! **Launch.** The argv is built from the [`VmSpec`] by [`qemu_args`] (pure,
//! unit-tested). QEMU is spawned directly (no shell) in a session of its own
//! (`setsid` before `exec`), with stdin on `/dev/null` and stdout/stderr
//! appended to `VM_DIR/vmm.log`, so neither the daemon's death nor its
//! terminal's signals reach it. `launch` then polls, every 20 ms and for at
//! most [`QemuVmm::start_timeout`] (10 s), for either QEMU's exit (reported
//! with the tail of `vmm.log`; a refused host port forward and a missing
//! kernel get their own errors) or the QMP socket accepting a connection,
//! sending its greeting and accepting `qmp_capabilities`. On exit, timeout
//! or any other failure the child is killed and reaped before returning.
//!
//! **Reaping.** While the launching process is QEMU's parent, a small
//! thread per VM blocks in `waitpid(pid)` so the exited QEMU never lingers
//! as a zombie. This was chosen over a double fork because `launch` needs
//! QEMU as its own child anyway (to see an early exit and its status with
//! `try_wait`, with no pidfile race), and std's `Command` has no safe
//! double fork. After a daemon restart QEMU is re-parented to init (or a
//! subreaper), which reaps it; the new daemon only ever polls (`kill(pid,
//! 0)` and `/proc`), and a zombie counts as exited.
//!
//! **Ownership.** A pid from `handles.json` may have been reused. A process
//! is taken as ours only if `/proc/PID/exe` is a `qemu-system-*` binary and
//! `/proc/PID/cmdline` carries `-qmp unix:CONTROL_SOCKET,...` (unique per
//! VM directory) and, for [`Vmm::is_running`], `-name guest=banger-VMID,...`.
//! `kill`, `request_shutdown` and `status` check this first; `wait_exit`
//! checks it once, then waits for the pid to be gone or a zombie.
//!
//! **Guest reboot.** `-no-reboot` makes a guest reboot (or a panic with
//! `panic=-1`) end the QEMU process, as Firecracker does; the daemon sees a
//! stopped VM and restarts it itself if asked.
//!
//! **Snapshots.** Guest RAM is always a memory backend object named `mem`
//! (`memory-backend-ram`, or `memory-backend-file` for
//! [`MemoryBacking::File`](crate::MemoryBacking)), because a saved state
//! names its RAM blocks. `pause`/`resume` are QMP `stop`/`cont`.
//! `save_state` is a migration to a file: on a paused VM it sets the
//! `x-ignore-shared` capability (on: the RAM of a `share=on` backend is
//! left out, it stays in its file), lifts the 128 MiB/s default bandwidth
//! limit, runs `migrate` to `exec:cat > 'DEST'`, polls `query-migrate`
//! every 5 ms until `completed` or `failed` (bounded by
//! [`QemuVmm::migrate_timeout`]), then waits for the `cat` to exit: QEMU
//! sets `completed` before the cleanup that closes the pipe and reaps
//! `cat`, and nothing keeps a poll from landing in between. The VM
//! stays paused (QEMU's `postmigrate`, reported as paused; it lets go of
//! its disk images until `cont`). `restore` is `launch` with `-S
//! -incoming defer`, the same capability, `migrate-incoming` from `exec:cat
//! 'STATE'` and the same polling; QEMU 7.2 exits when a load fails, so
//! the error is the tail of `vmm.log` (where it says why: a RAM size or
//! device mismatch), and any failure kills and reaps it. `build` is the
//! binary's version (probed once per binary file) and machine `microvm`.
//!
//! **Files.** `args` builds the argv (pure), `check` refuses bad specs
//! and missing files up front, `launch` starts QEMU and waits for QMP,
//! `snapshot` pauses, resumes, saves and restores, `diagnose` explains a
//! failed start from `vmm.log`, and `ownership` tells our QEMU from a
//! process that reused its pid.

mod args;
mod check;
mod diagnose;
mod launch;
pub(crate) use diagnose::log_tail as log_tail_of;
mod ownership;
mod snapshot;
#[cfg(test)]
mod test_spec;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qapi::qmp;

use crate::error::VmmError;
use crate::proc;
use crate::qmp::QmpClient;
use crate::spec::{
    BackendKind, RamSave, SaveReport, Signal, VmHandle, VmRunState, VmSpec, VmmBuild, VmmExit,
};
use crate::{Vmm, probe};

pub(crate) use args::{boot_args, machine_args};
pub use args::{name_arg, qemu_args};
pub(crate) use check::{MAX_SOCKET_PATH, check_id};
pub(crate) use diagnose::{log_tail, tail_lines};
#[cfg(test)]
pub(crate) use test_spec::sample as test_spec_sample;

/// The QEMU system emulator banger runs.
pub const QEMU_BINARY_NAME: &str = "qemu-system-x86_64";

/// The files QEMU keeps in a VM's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    /// QMP socket (`qmp.sock`): the handle's `control_socket`.
    pub control_socket: PathBuf,
    /// `vmm.pid`, written by QEMU itself.
    pub pidfile: PathBuf,
    /// `vmm.log`: QEMU's stdout and stderr, appended, one header per launch.
    pub vmm_log: PathBuf,
    /// `agent.sock`: the host end of the agent's virtio-serial port.
    pub agent_socket: PathBuf,
}

impl VmFiles {
    pub fn in_dir(vm_dir: &Path) -> Self {
        VmFiles {
            control_socket: vm_dir.join("qmp.sock"),
            pidfile: vm_dir.join("vmm.pid"),
            vmm_log: vm_dir.join("vmm.log"),
            agent_socket: vm_dir.join("agent.sock"),
        }
    }
}

/// The QEMU implementation of [`Vmm`].
#[derive(Debug, Clone)]
pub struct QemuVmm {
    /// `qemu-system-x86_64`, as found by [`crate::probe_qemu`] or configured.
    pub binary: PathBuf,
    /// How long `launch` waits for QMP to answer before killing QEMU.
    pub start_timeout: Duration,
    /// Bounds each QMP read and write.
    pub qmp_timeout: Duration,
    /// Bounds one `save_state` or the loading part of one `restore`
    /// (a 1 GiB guest's state saves in well under a second).
    pub migrate_timeout: Duration,
    /// The binary's version, with the file it was asked of (shared by
    /// clones).
    version: Arc<Mutex<Option<(BinaryStamp, String)>>>,
}

/// Identifies one version of the binary file: a package upgrade replaces
/// the file, which changes these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BinaryStamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl QemuVmm {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        QemuVmm {
            binary: binary.into(),
            start_timeout: Duration::from_secs(10),
            qmp_timeout: Duration::from_secs(5),
            migrate_timeout: Duration::from_secs(120),
            version: Arc::default(),
        }
    }

    /// Finds `qemu-system-x86_64` on `PATH` (see [`crate::probe_qemu`]).
    pub fn detect() -> Result<Self, VmmError> {
        Ok(QemuVmm::new(crate::probe_qemu()?.binary))
    }

    /// [`crate::probe_kvm_boot`] with this QEMU binary.
    pub fn probe_kvm_boot(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        timeout: Duration,
    ) -> crate::KvmProbe {
        probe::probe_kvm_boot_with(&self.binary, kernel, initrd, timeout)
    }
}

impl Vmm for QemuVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn launch(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        self.launch_qemu(spec)
    }

    fn request_shutdown(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.require_ours(handle)?;
        QmpClient::open(&handle.control_socket, self.qmp_timeout, "system_powerdown")?
            .execute(&qmp::system_powerdown {})?;
        Ok(())
    }

    fn kill(&self, handle: &VmHandle, signal: Signal) -> Result<(), VmmError> {
        self.require_ours(handle)?;
        proc::signal_vmm(handle.pid, signal)
    }

    fn is_running(&self, handle: &VmHandle, vm_id: &str) -> bool {
        self.owns(handle, Some(vm_id))
    }

    /// See [`proc::wait_gone`].
    fn wait_exit(&self, handle: &VmHandle, timeout: Duration) -> Result<bool, VmmError> {
        Ok(proc::wait_gone(
            handle.pid,
            self.owns(handle, None),
            timeout,
        ))
    }

    /// The reaper thread of a QEMU this process launched recorded its
    /// status; waits a moment for it when the process is gone but the
    /// reaper has not reported yet.
    fn take_exit(&self, handle: &VmHandle) -> Option<VmmExit> {
        if proc::is_alive(handle.pid) && self.owns(handle, None) {
            return None;
        }
        crate::spawn::exits::take(handle.pid, Duration::from_secs(1))
    }

    fn status(&self, handle: &VmHandle) -> Result<VmRunState, VmmError> {
        self.require_ours(handle)?;
        let info = QmpClient::open(&handle.control_socket, self.qmp_timeout, "query-status")?
            .execute(&qmp::query_status {})?;
        Ok(run_state(info.status))
    }

    fn pause(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.pause_qemu(handle)
    }

    fn resume(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.resume_qemu(handle)
    }

    fn save_state(
        &self,
        handle: &VmHandle,
        dest: &Path,
        ram: RamSave,
    ) -> Result<SaveReport, VmmError> {
        self.save_qemu(handle, dest, ram)
    }

    fn restore(
        &self,
        spec: &VmSpec,
        state: &Path,
        ram: RamSave,
        resume: bool,
    ) -> Result<VmHandle, VmmError> {
        self.restore_qemu(spec, state, ram, resume)
    }

    /// The version is asked of the binary once per binary file (about
    /// 10 ms), and again after the file was replaced.
    fn build(&self) -> Result<VmmBuild, VmmError> {
        Ok(VmmBuild {
            backend: BackendKind::Qemu,
            version: self.version()?,
            machine: "microvm".into(),
        })
    }
}

impl QemuVmm {
    fn version(&self) -> Result<String, VmmError> {
        let stamp = self.binary_stamp();
        let cached = |cache: &Option<(BinaryStamp, String)>| match (cache, stamp) {
            (Some((seen, version)), Some(now)) if *seen == now => Some(version.clone()),
            _ => None,
        };
        // A poisoned lock only means a panic elsewhere while it was held;
        // the cache is a plain value, still usable.
        let mut cache = self.version.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(version) = cached(&cache) {
            return Ok(version);
        }
        let version = probe::probe_qemu_at(&self.binary)?.version;
        *cache = stamp.map(|stamp| (stamp, version.clone()));
        Ok(version)
    }

    /// The binary file's identity, or `None` when it cannot be looked at
    /// (then the version is asked every time).
    fn binary_stamp(&self) -> Option<BinaryStamp> {
        use std::os::unix::fs::MetadataExt;
        let path = if self.binary.components().count() > 1 {
            self.binary.clone()
        } else {
            probe::find_on_path(self.binary.to_str()?)?
        };
        let meta = std::fs::metadata(path).ok()?;
        Some(BinaryStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }
}

fn run_state(state: qmp::RunState) -> VmRunState {
    use qmp::RunState as R;
    match state {
        R::running => VmRunState::Running,
        // After a completed save; `cont` runs it again (see VmRunState::Paused).
        R::paused | R::postmigrate => VmRunState::Paused,
        R::prelaunch => VmRunState::Prelaunch,
        R::shutdown => VmRunState::Shutdown,
        R::guest_panicked => VmRunState::GuestPanicked,
        R::internal_error => VmRunState::InternalError,
        R::io_error => VmRunState::IoError,
        other => VmRunState::Other(
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{other:?}")),
        ),
    }
}
