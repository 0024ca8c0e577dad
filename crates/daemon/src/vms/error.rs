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
    #[error("the configuration file is not usable")]
    Config(#[from] banger_config::ConfigError),
    #[error("create cancelled; nothing was kept")]
    CreateCancelled,
    #[error("host port {0} is published twice")]
    PublishedTwice(u16),
    #[error("nothing to change: give vcpus, memory, disk size or published ports")]
    NothingToChange,
    #[error("disk size {requested} is smaller than the current {current} bytes; disks only grow")]
    Shrink { requested: u64, current: u64 },
    #[error(transparent)]
    UnknownSignal(#[from] banger_vmm::UnknownSignal),
    #[error("a vm named {0:?} already exists")]
    NameTaken(String),
    #[error(
        "vm {0} is running; stop it before editing (only --egress of a bridged vm changes while it runs)"
    )]
    Running(String),
    #[error(
        "vm {0} is running; stop it first (banger vm stop {0}) or delete it anyway with --force"
    )]
    DeleteRunning(String),
    #[error("vm {name} is not running (start it with: banger vm start {name})")]
    NotRunning { name: String },
    #[error("{what} file {} is missing", path.display())]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("vm {0} is not stopped; stop it before promoting its disks to an image")]
    PromoteNotStopped(String),
    #[error("vm {0} has no usable root disk strategy")]
    NoRootStrategy(String),
    #[error("image {0} has no work seed")]
    NoWorkSeed(String),
    #[error("the vmm exited during boot")]
    VmmExited,
    /// What the Firecracker backend does not do yet.
    #[error("firecracker vms cannot {0} yet; use --vmm qemu for that")]
    FirecrackerCannot(&'static str),
    /// `--vmm firecracker` where there is no Firecracker binary.
    #[error(
        "no firecracker binary: set BANGER_FIRECRACKER_BIN (or bangerd --firecracker), put firecracker on PATH, or use --vmm qemu"
    )]
    NoFirecracker,
    /// `--vmm firecracker` where KVM cannot be opened.
    #[error("firecracker needs kvm, and {0}; use --vmm qemu")]
    FirecrackerNeedsKvm(String),
    /// A Firecracker VM without network cannot be reached over SSH.
    #[error(
        "image {image} is reached over ssh, and a firecracker vm in user mode has no network (firecracker has no user-mode network): use bridged networking (sudo banger system install), --vmm qemu, or an image with banger's agent"
    )]
    FirecrackerNoSsh { image: String },
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
    /// Disk preparation ran out of space; nothing of the VM was kept.
    /// `detail` is the line that said so (the whole cause can be long).
    #[error(
        "not enough free space for the vm's disks in {} ({free} left); nothing was kept. Free some space and create again ({detail})", dir.display()
    )]
    NoSpace {
        dir: PathBuf,
        free: String,
        detail: String,
    },
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
    /// Attaching a device-mapper snapshot root disk (`disks/dm.rs`).
    #[error(transparent)]
    RootDevice(#[from] crate::disks::dm::DmError),
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
    #[error("a snapshot named {0:?} already exists")]
    SnapshotNameTaken(String),
    /// A snapshot restores only under the VMM build, machine and
    /// accelerator it was made under (docs/snapshots.md, "Compatibility").
    #[error(
        "snapshot {snapshot} was made under {what} {recorded}, but this host would restore it under {what} {here}"
    )]
    Incompatible {
        snapshot: String,
        what: &'static str,
        recorded: String,
        here: String,
    },
    #[error("snapshot {snapshot} is of vm {of}, not of {vm}")]
    SnapshotOfOtherVm {
        snapshot: String,
        of: String,
        vm: String,
    },
    #[error(
        "snapshots need qemu-img for their copy-on-write disk layers (install qemu-utils), but vm {0} has full-copy disks"
    )]
    NoLayeredDisks(String),
    #[error(
        "image {0} has no guest agent, which a template needs to give restored vms their identity; rebuild it"
    )]
    NoAgentForTemplate(String),
    #[error(
        "vm {vm} runs no SSH server: image {image} boots with banger's init; \
         `banger vm ssh {vm}` and `banger vm exec {vm}` reach it through its agent"
    )]
    NoSshServer { vm: String, image: String },
    #[error(
        "snapshot {0} is of a bridged vm without a guest agent: a new vm from it would keep the source's address"
    )]
    NoAgentForIdentity(String),
    #[error("vm {0} is paused; resume it first (banger vm resume {0})")]
    Paused(String),
    #[error("fork count {0} is out of range: use 1 to {max}", max = super::snapshot::MAX_FORKS)]
    ForkCount(u32),
    /// Promote reads a root disk file; a device-mapper snapshot's is
    /// only its copy-on-write store.
    #[error(
        "vm {0}'s root disk is a device-mapper snapshot, which promote cannot read yet: \
         snapshot the running vm and create from that, or create it on a filesystem with \
         reflinks (btrfs, XFS)"
    )]
    PromoteDmSnapshot(String),
    #[error("vm {0}'s work disk is a copy-on-write layer over a snapshot and cannot grow yet")]
    LayeredWorkDisk(String),
    /// An egress policy the VM's network mode cannot enforce
    /// (docs/security.md, "Egress").
    #[error(
        "egress {egress} cannot be enforced in user-mode networking: use --network bridged \
         (needs banger-helper: sudo banger system install), or --egress internet, none or open; \
         see docs/security.md"
    )]
    EgressNeedsBridged { egress: String },
    #[error(transparent)]
    Usernet(#[from] banger_vmm::usernet::UsernetError),
    #[error("image {image} has no guest agent to wait for: use --wait ssh or --wait none")]
    WaitNoAgent { image: String },
    #[error(
        "image {image} boots with banger's init and runs no SSH server to wait for: use --wait agent or --wait none"
    )]
    WaitNoSsh { image: String },
    #[error(
        "--wait agent or ssh does not apply to a vm made from a snapshot: it continues a guest that was ready when the snapshot was taken (--wait none skips its new identity, in user mode)"
    )]
    WaitFromSnapshot,
    #[error("{what} differs from the snapshot's ({snapshot}: {recorded}); a restored vm keeps it")]
    ShapeFixed {
        what: &'static str,
        snapshot: String,
        recorded: String,
    },
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
