//! What can go wrong reaching a guest; the wire codes are given at the
//! RPC edge (`dispatch/errors.rs`).

use std::path::PathBuf;

use banger_store::VmRecord;

use super::identity::GuestStep;
use super::reserve::Bytes;
use crate::agent::AgentError;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Store(#[from] banger_store::StoreError),
    #[error(transparent)]
    Cancelled(#[from] crate::op::Cancelled),
    #[error("vm {vm} is not running (start it with: banger vm start {vm})")]
    NotRunning { vm: String },
    #[error("vm {vm} has no guest agent: its image was built without one (rebuild the image)")]
    NoAgent { vm: String },
    /// A call to the VM's agent failed (or the agent refused it).
    #[error("vm {vm}")]
    Agent {
        vm: String,
        #[source]
        source: AgentError,
    },
    /// A step around a pause, snapshot or restore failed in the guest
    /// (or its agent is too old for it).
    #[error("vm {vm}: {step}")]
    Step {
        vm: String,
        step: GuestStep,
        #[source]
        source: AgentError,
    },
    /// A restored guest's new SSH host key could not be made on the
    /// host, or the guest installed another.
    #[error("vm {vm}: new SSH host key")]
    HostKey {
        vm: String,
        #[source]
        source: super::identity::HostKeyError,
    },
    /// A VM created with `--wait none` whose agent never answered: its
    /// guest may run none (an imported kernel, a stub) or still boot.
    #[error(
        "vm {vm}: the guest agent did not answer within {secs} s; the vm was created with --wait none, \
         so nothing checked that its guest runs banger's agent (it may have none, or still be booting: see banger vm logs {vm})"
    )]
    AgentNotWaitedFor { vm: String, secs: u64 },
    #[error("the guest agent did not answer within {secs} s")]
    BootTimeout { secs: u64 },
    #[error("the vmm exited during boot")]
    VmmExited,
    #[error(
        "vm {vm}: service {service} did not listen on port {port} within {secs} s \
         (see its log: banger vm exec {vm} -- journalctl -u banger-service-{service})"
    )]
    ServiceTimeout {
        vm: String,
        service: String,
        port: u16,
        secs: u64,
    },
    #[error("{0} is not a directory in the guest")]
    GuestNotDirectory(String),
    /// A command the daemon ran in the guest for itself failed.
    #[error("vm {vm}: {program} failed ({status}): {stderr}")]
    CommandFailed {
        vm: String,
        program: String,
        status: String,
        stderr: String,
    },
    #[error("vm {vm}: {program} did not finish within {secs} s")]
    CommandTimeout {
        vm: String,
        program: String,
        secs: u64,
    },

    // Bad input.
    #[error("nothing to run: give a command after --")]
    NothingToRun,
    #[error("bad environment variable name {0:?}: it must be non-empty, without '=' or NUL")]
    BadEnvName(String),
    #[error("environment variable {0}: its value contains a NUL byte")]
    BadEnvValue(String),
    #[error("stdin is not base64")]
    Stdin(#[source] base64::DecodeError),
    /// `side` is `guest` or `host`.
    #[error("{side} path {path:?} must be absolute")]
    NotAbsolute { side: &'static str, path: String },
    #[error("guest path {0:?} names no file")]
    GuestNamesNoFile(String),
    #[error("{} names no file", .0.display())]
    HostNamesNoFile(PathBuf),
    #[error("refusing to write through the symlink {}", .0.display())]
    Symlink(PathBuf),
    #[error("bad destination name {0:?}")]
    BadDestination(String),
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// A directory to copy without `recursive`; `side` is `host` or
    /// `guest`.
    #[error("{side} path {path} is a directory: copy it with -r (banger vm cp -r)")]
    IsDirectory { side: &'static str, path: String },
    #[error("{} exists and is not a directory", .0.display())]
    HostNotDirectory(PathBuf),
    #[error("refusing to replace the directory {} by a file", .0.display())]
    HostIsDirectory(PathBuf),
    /// A name in a guest's directory stream that would leave the
    /// destination (absolute, or with `..`).
    #[error("refusing the guest's entry {0:?}: it names a place outside the destination")]
    TreeName(String),
    #[error("reading the guest's directory stream")]
    TreeStream(#[source] std::io::Error),

    #[error("no exec session {0:?}")]
    NoExecSession(String),
    /// The exec's stream ended without an exit status.
    #[error("vm {vm}: exec: {reason}")]
    ExecLost { vm: String, reason: String },
    /// The host file to copy into the guest cannot be looked at.
    #[error("{}", path.display())]
    NoHostFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a host file failed; `action` is `read`,
    /// `create`, `write`, `sync`, `chmod` or `rename`.
    #[error("{action} {}", path.display())]
    HostFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the host file failed")]
    HostWriterGone,
    /// The guest's stream ended short of the size it announced: data was
    /// lost on the way (the agent drops frames the host has not taken for
    /// a while) or the file shrank while it was read. Nothing is kept.
    #[error(
        "{vm}:{path} arrived incomplete ({received} of {announced} bytes): nothing was kept; copy it again"
    )]
    Incomplete {
        vm: String,
        path: String,
        announced: u64,
        received: u64,
    },
    /// A copy from the guest whose size is known would leave less than
    /// the reserve free (`vms/guest/reserve.rs`).
    #[error(
        "refusing to copy {} into {}: it has {} free and copies leave {} free (cp_reserve in config.toml)",
        Bytes(*size), dir.display(), Bytes(*free), Bytes(*reserve)
    )]
    NoRoom {
        dir: PathBuf,
        size: u64,
        free: u64,
        reserve: u64,
    },
    /// A copy from the guest stopped (and removed what it wrote) at the
    /// reserve.
    #[error(
        "stopped copying into {}: its free space is down to the {} copies leave free (cp_reserve in config.toml)",
        dir.display(), Bytes(*reserve)
    )]
    ReserveReached { dir: PathBuf, reserve: u64 },
    #[error("{0} task failed")]
    Task(&'static str, #[source] tokio::task::JoinError),
}

impl GuestError {
    pub(crate) fn agent(vm: &str, source: AgentError) -> Self {
        Self::Agent {
            vm: vm.to_owned(),
            source,
        }
    }

    pub(super) fn step(vm: &VmRecord, step: GuestStep, source: AgentError) -> Self {
        Self::Step {
            vm: vm.name.clone(),
            step,
            source,
        }
    }

    pub(super) fn host_file(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::HostFile {
            action,
            path,
            source,
        }
    }
}
