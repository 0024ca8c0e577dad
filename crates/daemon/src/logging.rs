//! JSON log lines for the daemon, one object per line, appended to the log
//! file in the state dir. Every line written inside a request carries that
//! request's span, so `grep op-XXXXXX bangerd.log` finds all of it.
//!
//! Levels (after Cloud Hypervisor's `docs/logging.md`): error = a user
//! action failed; warn = abnormal but handled; info = state changes;
//! debug = per-request detail.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::DaemonError;

/// Default filter when neither `--log-level` nor `BANGER_LOG` is given.
pub const DEFAULT_LEVEL: &str = "info";

/// Parses a level or filter directive (`debug`, `banger_daemon=trace`).
pub fn filter(level: &str) -> Result<EnvFilter, DaemonError> {
    EnvFilter::try_new(level).map_err(|_| DaemonError::LogLevel {
        value: level.to_owned(),
    })
}

/// Installs the global subscriber writing JSON lines to `log_file`.
pub fn init(log_file: &Path, filter: EnvFilter) -> Result<(), DaemonError> {
    let log_err = |source| DaemonError::LogFile {
        path: log_file.to_owned(),
        source,
    };
    if let Some(dir) = log_file.parent() {
        std::fs::create_dir_all(dir).map_err(log_err)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_file)
        .map_err(log_err)?;
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_writer(Mutex::new(file))
        .init();
    Ok(())
}
