//! How much the CLI says besides its results: `-q` (results and errors
//! only) and `-v` (also each request's op id and time). Set once from the
//! command line before a command runs; read wherever a progress line, a
//! stage or a note is printed.

use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Records `-q` and `-v` for this process.
pub(crate) fn set(quiet: bool, verbose: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    VERBOSE.store(verbose, Ordering::Relaxed);
}

/// `-q`: no stage lines, progress or notes.
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// `-v`: each request to bangerd with its op id and time.
pub(crate) fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Prints a progress line or a note to stderr, unless `-q`.
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::output::quiet() {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use note;
