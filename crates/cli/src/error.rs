use std::io;
use std::path::PathBuf;

use banger_proto::ErrorBody;

use crate::Exit;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon answered with an error; its text ends with the op id.
    #[error("{0}")]
    Daemon(ErrorBody),
    #[error(transparent)]
    Paths(#[from] banger_paths::PathsError),
    #[error("permission denied connecting to {socket}: it belongs to another user")]
    SocketPermission {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("connect to {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("connection to bangerd lost")]
    Io(#[source] io::Error),
    #[error("bangerd closed the connection without answering")]
    Closed,
    #[error("unreadable answer from bangerd: {0}")]
    BadResponse(String),
    #[error("cannot find the bangerd binary (looked next to {beside} and on PATH)")]
    DaemonBinaryMissing { beside: PathBuf },
    #[error("start {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bangerd did not start within {waited_s} s; see {log_file}{tail}")]
    StartTimeout {
        waited_s: u64,
        log_file: PathBuf,
        tail: String,
    },
    #[error("bangerd exited during start ({status}); see {log_file}{tail}")]
    StartExited {
        status: String,
        log_file: PathBuf,
        tail: String,
    },
    #[error("bangerd (pid {pid}) did not stop")]
    StopTimeout { pid: u32 },
    #[error("read {path}")]
    ReadLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid params: {0}")]
    BadParams(String),
    #[error(transparent)]
    Config(#[from] banger_config::ConfigError),
    /// A command on several objects failed for some of them (each was
    /// reported already); banger exits as for the first failure.
    #[error("could not {what} {failed} of {total}")]
    SomeFailed {
        what: &'static str,
        failed: usize,
        total: usize,
        exit: Exit,
    },
    #[error("write {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "bangerd.service failed to start; see `journalctl --user -u bangerd.service` and {log_file}"
    )]
    UnitFailed { log_file: PathBuf },
    /// `systemctl --user` failed; `context` says what that leaves.
    #[error("{context}")]
    Systemd {
        context: String,
        #[source]
        source: crate::daemon_unit::SystemctlError,
    },
    /// A command run in the guest (or a check) exited with this status;
    /// banger exits with it too and prints nothing more.
    #[error("exit status {0}")]
    ChildExit(i32),
    /// The daemon ended an event stream for this subscriber.
    #[error("bangerd ended the event stream ({reason}): {message}")]
    StreamEnded {
        reason: banger_proto::EndReason,
        message: String,
    },
    /// The event stream's connection closed without an end frame.
    #[error(
        "the event stream was cut after #{last_seq} (bangerd went away or dropped this subscriber); resume with --since {last_seq} --epoch {epoch}"
    )]
    StreamCut { last_seq: u64, epoch: String },
    /// The MCP session (`banger mcp`) could not start or broke.
    #[error("mcp: {0}")]
    Mcp(String),
    /// `banger update` refused or failed (its exit code is its own).
    #[error(transparent)]
    Update(#[from] crate::commands::UpdateError),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Daemon(body) => Exit::for_code(body.code),
            Self::SocketPermission { .. } => Exit::PermissionDenied,
            Self::Connect { .. }
            | Self::Closed
            | Self::Io(_)
            | Self::DaemonBinaryMissing { .. }
            | Self::Spawn { .. }
            | Self::StartTimeout { .. }
            | Self::StartExited { .. }
            | Self::StopTimeout { .. }
            | Self::UnitFailed { .. } => Exit::DaemonUnavailable,
            Self::BadParams(_) | Self::Config(_) => Exit::BadInput,
            Self::SomeFailed { exit, .. } => *exit,
            Self::ChildExit(_) | Self::StreamEnded { .. } => Exit::Failed,
            Self::StreamCut { .. } => Exit::DaemonUnavailable,
            Self::Paths(_) | Self::BadResponse(_) | Self::ReadLog { .. } => Exit::Failed,
            Self::WriteFile { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Exit::PermissionDenied
            }
            Self::WriteFile { .. } | Self::Systemd { .. } | Self::Mcp(_) => Exit::Failed,
            Self::Update(e) => e.exit(),
        }
    }

    /// The error and its sources, printed once: `outer: inner`.
    pub fn display_chain(&self) -> String {
        banger_proto::error_chain(self)
    }
}
