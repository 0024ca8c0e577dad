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
use tracing_subscriber::filter::LevelFilter;

use crate::DaemonError;

/// Default filter when neither `--log-level` nor `BANGER_LOG` is given.
pub const DEFAULT_LEVEL: &str = "info";

/// Parses a level (`debug`) or a list of filter directives
/// (`info,banger_daemon=trace`). A bare word must be a level name:
/// `EnvFilter` would read a typo like `debgu` as a target name and
/// silently log nothing.
pub fn filter(level: &str) -> Result<EnvFilter, DaemonError> {
    let err = || DaemonError::LogLevel {
        value: level.to_owned(),
    };
    let bare_word = !level.contains(['=', ',', '[']);
    if level.trim().is_empty() || (bare_word && level.trim().parse::<LevelFilter>().is_err()) {
        return Err(err());
    }
    EnvFilter::try_new(level).map_err(|_| err())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_parse_and_typos_do_not() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,banger_daemon=trace",
            "warn,hyper=off",
        ] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        for bad in ["debgu", "", "loud", "info,=[["] {
            assert!(filter(bad).is_err(), "{bad:?} accepted");
        }
    }
}
