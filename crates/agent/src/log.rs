//! Plain short lines on stderr (the unit's journal adds time and name).
//!
//! While the guest's filesystems are frozen (`Freeze`, for a snapshot)
//! lines are held in memory instead: stderr is a stream to journald,
//! which writes to the (frozen) root disk, so once its buffers fill a
//! write to stderr would block the agent until the thaw. [`hold`] starts
//! holding, [`release`] writes what was held.

use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Lines held while frozen; `None` when lines go to stderr.
static HELD: Mutex<Option<Held>> = Mutex::new(None);

/// Most lines held; later ones are counted, not kept.
const MAX_HELD: usize = 200;

#[derive(Default)]
struct Held {
    lines: Vec<String>,
    dropped: usize,
}

fn held() -> std::sync::MutexGuard<'static, Option<Held>> {
    // A list of strings: consistent even if a holder panicked.
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// Silences (or restores) logging: for in-process tests that feed the
/// agent hundreds of thousands of bad frames.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// From now on, keeps lines in memory (at most a few hundred) instead of
/// writing them: the filesystems are about to be frozen.
pub fn hold() {
    let mut h = held();
    if h.is_none() {
        *h = Some(Held::default());
    }
}

/// Writes the lines held since [`hold`] and goes back to writing each
/// line at once.
pub fn release() {
    let mut h = held();
    let Some(Held { lines, dropped }) = h.take() else {
        return;
    };
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    // Still holding the lock: lines logged meanwhile come after these.
    let mut err = std::io::stderr().lock();
    for l in lines {
        let _ = writeln!(err, "{l}");
    }
    if dropped > 0 {
        let _ = writeln!(err, "({dropped} more lines dropped while frozen)");
    }
}

/// Whether lines are being held (tests).
pub fn is_holding() -> bool {
    held().is_some()
}

/// Writes one line to stderr (or holds it, see [`hold`]), ignoring
/// failures (logging never stops the agent).
pub fn line(args: fmt::Arguments<'_>) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    {
        let mut h = held();
        if let Some(h) = h.as_mut() {
            if h.lines.len() < MAX_HELD {
                h.lines.push(args.to_string());
            } else {
                h.dropped += 1;
            }
            return;
        }
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
