//! Plain short lines on stderr (the unit's journal adds time and name).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences (or restores) logging: for in-process tests that feed the
/// agent hundreds of thousands of bad frames.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Writes one line to stderr, ignoring failures (logging never stops
/// the agent).
pub fn line(args: fmt::Arguments<'_>) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{args}");
}

/// `log!("format", args…)`: one line on stderr.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => {
        $crate::log::line(format_args!($($t)*))
    };
}
