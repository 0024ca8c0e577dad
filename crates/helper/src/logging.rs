//! JSON log lines, one object per line, like the daemon's: to the config's
//! `log_file` (appended, 0640) or to stderr (where systemd's journal picks
//! them up). Every call logs one `helper rpc completed` / `helper rpc
//! failed` line (see [`crate::server`]); `grep op-XXXXXX` finds the call a
//! daemon request made.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::Error;

/// Default filter when neither `--log-level` nor `BANGER_HELPER_LOG` is given.
pub const DEFAULT_LEVEL: &str = "info";

/// A level (`debug`) or filter directives (`info,banger_helper=debug`); a
/// bare word must be a level name.
pub fn filter(level: &str) -> Result<EnvFilter, Error> {
    let err = || Error::BadRequest(format!("invalid log level {level:?}"));
    let bare_word = !level.contains(['=', ',', '[']);
    if level.trim().is_empty() || (bare_word && level.trim().parse::<LevelFilter>().is_err()) {
        return Err(err());
    }
    EnvFilter::try_new(level).map_err(|_| err())
}

/// Installs the global JSON subscriber.
pub fn init(log_file: Option<&Path>, filter: EnvFilter) -> Result<(), Error> {
    let builder = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false);
    match log_file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)
                .map_err(|e| Error::io(format!("open log file {}", path.display()), e))?;
            builder.with_writer(Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_typos_do_not() {
        for ok in ["info", "debug", "warn,banger_helper=debug"] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "loud", "infoo"] {
            assert!(filter(bad).is_err(), "{bad}");
        }
    }
}
