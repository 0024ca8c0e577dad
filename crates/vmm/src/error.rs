use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::spec::{BackendKind, Proto, Signal, VmRunState};

/// Everything that can go wrong in this crate. Messages are short and
/// lowercase; launch failures carry the tail of the VMM's own log and name
/// both log files so the daemon can pass them on as they are.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("qemu not found: no {name} on PATH (install qemu-system-x86)")]
    QemuNotFound { name: String },

    #[error("run {binary}")]
    Exec {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "could not join the isolated network's namespaces (holder pid {holder}) for vm {vm_id}"
    )]
    JoinNamespaces {
        vm_id: String,
        holder: u32,
        #[source]
        source: io::Error,
    },

    #[error("{binary} --version printed something unexpected: {output:?}")]
    BadVersion { binary: PathBuf, output: String },

    #[error("invalid vm spec: {0}")]
    InvalidSpec(String),

    /// A file the spec names (kernel, initrd, drive) does not exist.
    #[error("{what} not found: {path}")]
    MissingFile { what: String, path: PathBuf },

    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// QEMU refused a host port forward (slirp's "could not set up host
    /// forwarding rule"); `reason` is what binding the port ourselves said
    /// right after.
    #[error(
        "cannot forward host port {host_addr}:{host_port}/{proto} to guest port {guest_port}: {reason} (vmm log: {log})"
    )]
    HostForward {
        proto: Proto,
        host_addr: IpAddr,
        host_port: u16,
        guest_port: u16,
        reason: String,
        log: PathBuf,
    },

    /// The VMM exited before its control socket answered.
    #[error(
        "{binary} exited during startup ({status}): {tail} (vmm log: {log}, console log: {console})"
    )]
    StartupExit {
        binary: PathBuf,
        status: String,
        tail: String,
        log: PathBuf,
        console: PathBuf,
    },

    /// The VMM did not answer on its control socket in time; it was killed.
    #[error(
        "{binary} did not answer on its qmp socket within {secs:.1}s and was killed: {tail} (vmm log: {log}, console log: {console})"
    )]
    StartupTimeout {
        binary: PathBuf,
        secs: f64,
        tail: String,
        log: PathBuf,
        console: PathBuf,
    },

    #[error("qmp {command} on {socket}: {message}")]
    Qmp {
        command: &'static str,
        socket: PathBuf,
        message: String,
    },

    /// A call on Firecracker's API failed or was refused (the source has
    /// its `fault_message`).
    #[error("firecracker api (vmm log: {log})")]
    FirecrackerApi {
        log: PathBuf,
        #[source]
        source: crate::firecracker::client::ApiError,
    },

    /// The pid is gone, or is no longer the VMM the handle describes.
    #[error("pid {pid} is not a running vmm of this vm")]
    NotRunning { pid: u32 },

    #[error("send {signal} to pid {pid}")]
    Signal {
        pid: u32,
        signal: Signal,
        #[source]
        source: io::Error,
    },

    #[error("the {0} backend is not implemented")]
    Unsupported(&'static str),

    /// This backend has no such call (the trait's default).
    #[error("the {backend} backend cannot {call}")]
    NotSupported {
        backend: BackendKind,
        call: &'static str,
    },

    /// A state file path QEMU cannot be handed (not absolute, not UTF-8).
    #[error("state file {path}: {reason}")]
    StatePath { path: PathBuf, reason: &'static str },

    /// [`crate::Vmm::save_state`] needs a paused VM, so that the state is
    /// one instant and the guest's disks are not written meanwhile.
    #[error("the vm is {state}, not paused: pause it before saving its state")]
    NotPaused { state: VmRunState },

    /// QEMU keeps a VM that a save paused (its `postmigrate`) from being
    /// saved again until it ran: the save let go of its disk images.
    #[error(
        "the vm was paused by a save and cannot be saved again before it runs: resume it first"
    )]
    SavedAlready,

    /// Saving or loading a VM's state failed or took too long. `message`
    /// is QEMU's reason: its `error-desc`, or what it wrote to `vmm.log`
    /// before it exited (a restore into a VM of another shape fails with,
    /// for instance, "Size mismatch: mem: 0x4000000 != 0x8000000").
    #[error("{what}: {message} (vmm log: {log})")]
    Migration {
        what: String,
        message: String,
        log: PathBuf,
    },
}

/// `e` and each of its causes, once each, joined by `: `.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        cur = cause.source();
    }
    text
}
