//! Methods that exist only in unit-test builds, to observe behaviour that
//! real methods make hard to time (cancellation of a slow handler).
//! `test.sleep` runs for a given time; `test.hold` runs until the test
//! calls [`Probe::release`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::dispatch::{Entry, HandlerResult, RequestCtx, params};

/// Not in the method list (they exist only here), so raw table entries.
pub(crate) static METHODS: &[Entry] = &[
    Entry {
        name: "test.sleep",
        handler: |ctx, p| Box::pin(sleep(ctx, p)),
    },
    Entry {
        name: "test.hold",
        handler: |ctx, p| Box::pin(hold(ctx, p)),
    },
];

/// Counts what happened to `test.sleep` and `test.hold` calls, and what
/// the connection loop saw meanwhile.
#[derive(Debug, Default)]
pub struct Probe {
    pub started: AtomicU32,
    pub completed: AtomicU32,
    pub cancelled: AtomicU32,
    /// End-of-file seen on a connection while its handler ran.
    pub read_closed: AtomicU32,
    pub changed: Notify,
    release: Notify,
}

impl Probe {
    /// Lets one running (or the next) `test.hold` finish.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// Called by the connection loop (`crate::server`).
    pub fn note_read_closed(&self) {
        self.read_closed.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepParams {
    ms: u64,
}

/// Sets `cancelled` if the handler's future is dropped before it finishes.
struct CancelGuard<'a> {
    probe: &'a Probe,
    done: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.probe.cancelled.fetch_add(1, Ordering::SeqCst);
            self.probe.changed.notify_waiters();
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldParams {}

async fn sleep(ctx: RequestCtx, p: Value) -> HandlerResult {
    let SleepParams { ms } = params("test.sleep", p)?;
    observed(
        &ctx.state.probe,
        tokio::time::sleep(Duration::from_millis(ms)),
    )
    .await;
    Ok(json!({ "slept_ms": ms }))
}

async fn hold(ctx: RequestCtx, p: Value) -> HandlerResult {
    let HoldParams {} = params("test.hold", p)?;
    let probe = &ctx.state.probe;
    observed(probe, probe.release.notified()).await;
    Ok(json!({ "held": true }))
}

/// Runs `work`, counting its start and its completion or cancellation.
async fn observed(probe: &Probe, work: impl Future<Output = ()>) {
    probe.started.fetch_add(1, Ordering::SeqCst);
    probe.changed.notify_waiters();
    let mut guard = CancelGuard { probe, done: false };
    work.await;
    guard.done = true;
    probe.completed.fetch_add(1, Ordering::SeqCst);
    probe.changed.notify_waiters();
}
