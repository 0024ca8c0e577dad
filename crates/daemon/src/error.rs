use std::io;
use std::path::PathBuf;

/// Why the daemon could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Paths(#[from] banger_paths::PathsError),
    #[error("another bangerd{} is already serving {socket}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning { pid: Option<u32>, socket: PathBuf },
    #[error("lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] banger_store::StoreError),
    #[error("open log file {path}")]
    LogFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid log level {value:?} (try error, warn, info, debug or trace)")]
    LogLevel { value: String },
    #[error("start async runtime")]
    Runtime(#[source] io::Error),
    #[error("install signal handlers")]
    Signals(#[source] io::Error),
}

pub use banger_proto::error_chain as chain;
