use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::spec::{Proto, Signal};

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
}
