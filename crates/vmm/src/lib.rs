//! The VMM seam: what the daemon asks of a virtual machine monitor, and the
//! QEMU implementation of it.
//!
//! - [`VmSpec`] describes a VM the way Firecracker's API configures one
//!   (boot source, machine config, drives, network interfaces), plus the
//!   accelerator and the console log. [`VmHandle`] (pid, control socket,
//!   backend) is what the daemon persists in a VM's `handles.json` to find
//!   the process again after a restart.
//! - [`Vmm`] is the trait: launch, graceful shutdown request, signals,
//!   liveness and ownership, bounded wait for exit, run state. It is
//!   synchronous and blocking; the daemon calls it from `spawn_blocking`.
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
pub mod probe;
mod proc;
pub mod qemu;
mod qmp;
mod spec;
pub mod testkit;

use std::time::Duration;

pub use clock::{clock_args, host_tsc_khz, measure_host_tsc_khz, tcg_clock_args};
pub use error::VmmError;
pub use probe::{KvmProbe, QemuInfo, probe_kvm_boot, probe_qemu, probe_qemu_at};
pub use proc::{qemu_pids_with_arg, session_id};
pub use qemu::{QemuVmm, VmFiles, qemu_args};
pub use spec::{
    Accel, AgentChannel, BackendKind, BootSource, DiskFormat, Drive, MachineConfig, MemoryBacking,
    NetBackend, NetInterface, PortForward, Proto, Signal, UnknownSignal, VmHandle, VmRunState,
    VmSpec,
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
}
