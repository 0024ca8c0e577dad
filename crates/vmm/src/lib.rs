//! The VMM seam: what the daemon asks of a virtual machine monitor, and the
//! QEMU implementation of it.
//!
//! - [`VmSpec`] describes a VM the way Firecracker's API configures one
//!   (boot source, machine config, drives, network interfaces), plus the
//!   accelerator and the console log. [`VmHandle`] (pid, control socket,
//!   backend) is what the daemon persists in a VM's `handles.json` to find
//!   the process again after a restart.
//! - [`Vmm`] is the trait: launch, graceful shutdown request, signals,
//!   liveness and ownership, bounded wait for exit, run state; and for
//!   snapshots, forks and warm templates: pause, resume, save the device
//!   state (with or without the RAM, [`RamSave`]) to a file, restore a VM
//!   from one, and the VMM build a state belongs to ([`VmmBuild`]). Guest
//!   RAM can live in a file ([`MemoryBacking::File`]): shared, so a save
//!   leaves it there, or mapped copy-on-write, so many restored VMs start
//!   from one file. It is synchronous and blocking; the daemon calls it
//!   from `spawn_blocking`.
//! - [`QemuVmm`] runs `qemu-system-x86_64 -M microvm` (virtio-mmio, ACPI)
//!   under TCG or KVM and speaks QMP on a Unix socket in the VM's
//!   directory through the `qapi` crate. See [`qemu`] for launch, reaping
//!   and ownership, and [`probe`] for `probe_qemu` and the KVM probe.
//! - [`testkit`] has a tiny boot-protocol stub kernel so tests can launch
//!   real QEMU processes without a real kernel.
//!
//! VMM processes outlive the daemon: each runs in its own session, and
//! nothing here kills a VM unless asked to.

pub mod clock;
mod error;
pub mod firecracker;
pub mod probe;
mod proc;
pub mod qemu;
mod qmp;
mod spawn;
mod spec;
pub mod testkit;
pub mod usernet;

use std::path::Path;
use std::time::Duration;

pub use clock::{clock_args, host_tsc_khz, measure_host_tsc_khz, tcg_clock_args};
pub use error::VmmError;
pub use probe::{KvmProbe, QemuInfo, probe_kvm_boot, probe_qemu, probe_qemu_at};
pub use proc::{qemu_pids_with_arg, session_id};
pub use qemu::{QemuVmm, VmFiles, qemu_args};
pub use spec::{
    Accel, AgentChannel, BackendKind, BootSource, DiskFormat, Drive, MachineConfig, MemoryBacking,
    NetBackend, NetInterface, PortForward, Proto, RamSave, SaveReport, Signal, UnknownSignal,
    VmHandle, VmRunState, VmSpec, VmmBuild, VmmExit,
};

/// A virtual machine monitor backend. Every method blocks; none takes
/// long except [`Vmm::launch`] (bounded, about 10 s at worst) and
/// [`Vmm::wait_exit`] (bounded by its timeout). `Debug` so that state
/// holding an `Arc<dyn Vmm>` can derive it.
pub trait Vmm: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Starts the VMM for `spec` in a session of its own and returns once
    /// its control socket answers. On failure nothing is left running.
    fn launch(&self, spec: &VmSpec) -> Result<VmHandle, VmmError>;

    /// Asks the guest to power off (ACPI power button). Returns once the
    /// VMM accepted the request; the guest may still ignore it, so follow
    /// with [`Vmm::wait_exit`] and then [`Vmm::kill`].
    fn request_shutdown(&self, handle: &VmHandle) -> Result<(), VmmError>;

    /// Sends `signal` to the VMM process, after checking it is still ours.
    fn kill(&self, handle: &VmHandle, signal: Signal) -> Result<(), VmmError>;

    /// The pid is alive and really is this backend's VMM for `vm_id` (not
    /// a process that reused the pid).
    fn is_running(&self, handle: &VmHandle, vm_id: &str) -> bool;

    /// Waits up to `timeout` for the VMM to be gone; `Ok(true)` if it is.
    /// Polls the pid, so it works whether or not the caller is the parent.
    fn wait_exit(&self, handle: &VmHandle, timeout: Duration) -> Result<bool, VmmError>;

    /// The VMM's run state, asked over its control socket.
    fn status(&self, handle: &VmHandle) -> Result<VmRunState, VmmError>;

    /// How the VMM of `handle` ended, once it has, if this process saw it
    /// end (it launched it and reaped it); `None` for a VMM adopted after
    /// a daemon restart (not our child: its status went to init) or one
    /// still running. Each exit is told once.
    fn take_exit(&self, handle: &VmHandle) -> Option<VmmExit> {
        let _ = handle;
        None
    }

    // Snapshots. Each call below has a default that returns
    // `VmmError::NotSupported`, so a backend (or a test double) without
    // them still compiles; the QEMU backend implements them all.

    /// Stops the guest's vCPUs; the VMM keeps running. Fine when already
    /// paused. QEMU: QMP `stop` (which also flushes the disks).
    /// Firecracker: `PATCH /vm {"state": "Paused"}`.
    fn pause(&self, handle: &VmHandle) -> Result<(), VmmError> {
        let _ = handle;
        Err(not_supported(self.kind(), "pause"))
    }

    /// Runs a paused guest again, also after a completed
    /// [`Vmm::save_state`] and after a [`Vmm::restore`] that did not
    /// resume. QEMU: QMP `cont`. Firecracker: `PATCH /vm {"state":
    /// "Resumed"}`.
    fn resume(&self, handle: &VmHandle) -> Result<(), VmmError> {
        let _ = handle;
        Err(not_supported(self.kind(), "resume"))
    }

    /// Writes the paused VM's state to `dest` (absolute; its directory must
    /// exist; replaced if it exists), with its RAM as `ram` says, and
    /// leaves the VM paused. Refuses a running VM ([`VmmError::NotPaused`]),
    /// and (QEMU) one paused by a save that has not run since
    /// ([`VmmError::SavedAlready`]). On failure `dest` is removed. The
    /// disks are not part of the state: copy them while the VM stays
    /// paused, or they move on when it runs.
    ///
    /// QEMU: a migration to a file (see [`qemu`]). Firecracker:
    /// `PUT /snapshot/create {"snapshot_type": "Full", "snapshot_path":
    /// dest, "mem_file_path": ...}`, which always writes the RAM to a file
    /// of its own, i.e. [`RamSave::IntoState`] split in two files;
    /// [`RamSave::KeptInSharedFile`] has no Firecracker counterpart (its
    /// guest memory is anonymous).
    fn save_state(
        &self,
        handle: &VmHandle,
        dest: &Path,
        ram: RamSave,
    ) -> Result<SaveReport, VmmError> {
        let _ = (handle, dest, ram);
        Err(not_supported(self.kind(), "save a vm's state"))
    }

    /// Starts a VMM for `spec` and loads `state` into it, which `ram` says
    /// how it was saved. `spec` must describe the VM the state was saved
    /// from (memory size, vCPUs, devices and their ids, accelerator;
    /// vm id, directory, disk paths, TAP names and forwarded ports may
    /// differ), and for [`RamSave::KeptInSharedFile`] its memory must map
    /// the RAM file ([`MemoryBacking::File`], usually `shared: false`).
    /// With `resume` the guest runs on; without, it stays paused (to be
    /// saved again, for instance after loading a state into a shared RAM
    /// file). On failure nothing is left running, and the error carries
    /// the VMM's reason from its log.
    ///
    /// QEMU: `launch` with `-incoming defer`, then `migrate-incoming`.
    /// Firecracker: a fresh process, then `PUT /snapshot/load
    /// {"snapshot_path": state, "mem_backend": {"backend_type": "File",
    /// "backend_path": ...}, "resume_vm": resume}` (it maps the memory
    /// file privately: `MemoryBacking::File { shared: false }`).
    fn restore(
        &self,
        spec: &VmSpec,
        state: &Path,
        ram: RamSave,
        resume: bool,
    ) -> Result<VmHandle, VmmError> {
        let _ = (spec, state, ram, resume);
        Err(not_supported(self.kind(), "restore a vm's state"))
    }

    /// Starts the isolated user-mode network a VMM then joins
    /// ([`usernet`]: a namespace holder and pasta, processes of their own
    /// that outlive the daemon and leave with the VMM). Blocks until it
    /// is set up and listens on the forwarded ports.
    fn launch_usernet(
        &self,
        spec: &usernet::UsernetSpec,
    ) -> Result<usernet::UsernetHandle, usernet::UsernetError> {
        usernet::launch(spec, Duration::from_secs(10))
    }

    /// Kills what [`Vmm::launch_usernet`] started for `vm_id`, if it
    /// still runs.
    fn kill_usernet(&self, handle: &usernet::UsernetHandle, vm_id: &str) {
        usernet::kill(handle, vm_id)
    }

    /// Removes what the VMM left in the VM directory once it is gone (a
    /// killed Firecracker leaves its sockets). Nothing by default.
    fn cleanup(&self, handle: &VmHandle) {
        let _ = handle;
    }

    /// The VMM build states are saved by; the daemon records it with each
    /// snapshot and refuses to restore one under another build.
    fn build(&self) -> Result<VmmBuild, VmmError> {
        Err(not_supported(self.kind(), "report its build"))
    }
}

/// The error the snapshot calls' defaults return.
fn not_supported(backend: BackendKind, call: &'static str) -> VmmError {
    VmmError::NotSupported { backend, call }
}
