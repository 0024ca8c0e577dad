//! Methods that exist only in unit-test builds, to observe behaviour that
//! real methods make hard to time (cancellation of a slow handler).
//! `test.sleep` runs for a given time; `test.hold` runs until the test
//! calls [`Probe::release`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::dispatch::{Entry, HandlerResult, RequestCtx, params};
use crate::testing::Probe;

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
