//! Methods that exist only in unit-test builds, to observe behaviour that
//! real methods make hard to time (cancellation of a slow handler).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::dispatch::{Entry, HandlerResult, RequestCtx, params};

/// Not in the method list (it exists only here), so a raw table entry.
pub(crate) static METHODS: &[Entry] = &[Entry {
    name: "test.sleep",
    handler: |ctx, p| Box::pin(sleep(ctx, p)),
}];

/// Counts what happened to `test.sleep` calls.
#[derive(Debug, Default)]
pub struct Probe {
    pub started: AtomicU32,
    pub completed: AtomicU32,
    pub cancelled: AtomicU32,
    pub changed: Notify,
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

async fn sleep(ctx: RequestCtx, p: Value) -> HandlerResult {
    let SleepParams { ms } = params("test.sleep", p)?;
    let probe = &ctx.state.probe;
    probe.started.fetch_add(1, Ordering::SeqCst);
    probe.changed.notify_waiters();
    let mut guard = CancelGuard { probe, done: false };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    guard.done = true;
    probe.completed.fetch_add(1, Ordering::SeqCst);
    probe.changed.notify_waiters();
    Ok(json!({ "slept_ms": ms }))
}
