use std::path::PathBuf;

use crate::disks::DiskError;
use crate::network::NetworkError;
use crate::op::Cancelled;
use crate::ssh::SshError;
use crate::validate::Invalid;

/// What can go wrong creating, starting, stopping, editing or deleting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    BadPublish(#[from] banger_proto::types::BadPublish),
    #[error(transparent)]
    BadNetwork(#[from] banger_proto::UnknownValue),
    #[error("create cancelled; nothing was kept")]
    CreateCancelled,
    #[error("host port {0} is published twice")]
    PublishedTwice(u16),
    #[error("nothing to change: give vcpus, memory or disk size")]
    NothingToChange,
    #[error("disk size {requested} is smaller than the current {current} bytes; disks only grow")]
    Shrink { requested: u64, current: u64 },
    #[error(transparent)]
    UnknownSignal(#[from] banger_vmm::UnknownSignal),
    #[error("a vm named {0:?} already exists")]
    NameTaken(String),
    #[error("vm {0} is running; stop it before editing")]
    Running(String),
    #[error("vm {name} is not running (start it with: banger vm start {name})")]
    NotRunning { name: String },
    #[error("{what} file {} is missing", path.display())]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("vm {0} has no usable root disk strategy")]
    NoRootStrategy(String),
    #[error("image {0} has no work seed")]
    NoWorkSeed(String),
    #[error("the vmm exited during boot")]
    VmmExited,
    #[error("ssh did not answer within {0} s")]
    SshTimeout(u64),
    #[error("bad ssh host {0:?}")]
    BadSshHost(String),
    #[error("vmm pid {0} did not exit after SIGKILL")]
    KillFailed(u32),
    #[error("vmm pid {pid} is still running after {signal}")]
    StillRunning {
        pid: u32,
        signal: banger_vmm::Signal,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} task failed")]
    Task(&'static str, #[source] tokio::task::JoinError),
    /// A start that failed and left the VM in `error`: the cause, and the
    /// console log when the VMM got far enough to write one. The cause is
    /// printed inside this message (and not as a source), once.
    #[error("{}{}", crate::error::chain(cause), console_note(console_log))]
    StartFailed {
        cause: Box<VmError>,
        console_log: Option<PathBuf>,
    },
    #[error(transparent)]
    Vmm(#[from] banger_vmm::VmmError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Guest(#[from] super::guest::GuestError),
    #[error(transparent)]
    Artifact(#[from] crate::artifacts::ArtifactError),
    #[error(transparent)]
    Store(#[from] banger_store::StoreError),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

fn console_note(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" (console log: {})", p.display()),
        None => String::new(),
    }
}

impl VmError {
    /// True when the work stopped because it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        match self {
            Self::Cancelled(_) | Self::CreateCancelled => true,
            Self::StartFailed { cause, .. } => cause.is_cancelled(),
            _ => false,
        }
    }
}
