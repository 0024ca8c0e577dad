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

/// `outer: inner: innermost`: an error and its sources, each printed once
/// (for log lines and wire messages; every variant's own text leaves its
/// source out, so nothing repeats).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
