//! The op context: which request or asynchronous operation a piece of work
//! serves, carried one way — as an explicit [`OpCtx`] argument — from the
//! dispatch edge (or the operation registry) down to helper calls,
//! rollback steps and agent calls. Log lines get the id from the tracing
//! span the edge opens; calls to banger-helper take it from the context
//! they are given, so a call without an op id does not compile.

use std::sync::Arc;

use rand::distr::{Alphanumeric, SampleString};
use tokio_util::sync::CancellationToken;

pub use banger_proto::OpId;

use crate::ops::Operation;

/// Mints a fresh op id: `op-` and 8 random alphanumerics.
pub fn mint() -> OpId {
    let tail = Alphanumeric.sample_string(&mut rand::rng(), 8);
    // 8 alphanumerics always satisfy OpId's rules.
    OpId::from_tail(&tail).unwrap_or_else(|| unreachable!("minted op id {tail:?} is invalid"))
}

/// Work was cancelled: the client went away or `op.cancel` was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// What work needs to know about the request or operation it serves.
#[derive(Debug, Clone)]
pub struct OpCtx {
    id: OpId,
    cancel: CancellationToken,
    /// The asynchronous operation whose stages this work reports, if any.
    operation: Option<Arc<Operation>>,
}

impl OpCtx {
    /// A context for a request (no operation to report stages on).
    pub fn new(id: OpId, cancel: CancellationToken) -> Self {
        Self {
            id,
            cancel,
            operation: None,
        }
    }

    /// A context for tests: a fresh id, never cancelled.
    #[cfg(test)]
    pub fn background() -> Self {
        Self::new(mint(), CancellationToken::new())
    }

    /// A context for an asynchronous operation: its id and cancel token,
    /// and stages reported on it.
    pub fn for_operation(operation: Arc<Operation>) -> Self {
        Self {
            id: operation.id.clone(),
            cancel: operation.cancel_token().clone(),
            operation: Some(operation),
        }
    }

    pub fn id(&self) -> &OpId {
        &self.id
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(Cancelled)` once cancellation was asked for.
    pub fn check_cancelled(&self) -> Result<(), Cancelled> {
        if self.cancel.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Reports a stage on the operation, or just logs it.
    ///
    /// Fault injection for crash tests: when `BANGER_FAULT_STALL_STAGE`
    /// names this stage, the work stops here for good (after reporting
    /// it), so a test can kill the daemon at exactly that point.
    pub fn stage(&self, name: &str) {
        match &self.operation {
            Some(op) => op.stage(name),
            None => tracing::info!(stage = name, "stage started"),
        }
        stall_point(name);
    }
}

/// Fault injection for crash tests: when `BANGER_FAULT_STALL_STAGE` names
/// `name` (a stage, or a point between two that is not reported as one),
/// the work stops here for good, so a test can kill the daemon at exactly
/// that point.
pub fn stall_point(name: &str) {
    if stall_stage().is_some_and(|s| s == name) {
        tracing::warn!(stage = name, "stalling here (BANGER_FAULT_STALL_STAGE)");
        let park = || loop {
            std::thread::park();
        };
        match tokio::runtime::Handle::try_current() {
            // On a runtime worker: hand its other tasks to another
            // worker first, so the daemon keeps serving.
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(park)
            }
            _ => park(),
        }
    }
}

impl OpCtx {
    /// Reports the bytes the running stage has moved, of `total` if known.
    pub fn progress(&self, done_bytes: u64, total_bytes: Option<u64>) {
        if let Some(op) = &self.operation {
            op.progress(done_bytes, total_bytes);
        }
    }

    /// Starts the stage `name` as a group whose parts are the stages
    /// reported until the returned guard is dropped; the group's duration
    /// covers them (an image build inside a create). Without an operation
    /// it only logs.
    pub fn stage_group(&self, name: &str) -> StageGroup {
        match &self.operation {
            Some(op) => op.begin_group(name),
            None => tracing::info!(stage = name, "stage started"),
        }
        StageGroup {
            operation: self.operation.clone(),
        }
    }
}

/// An open stage group (see [`OpCtx::stage_group`]); dropping it ends the
/// group, also when the work fails or is cancelled part-way.
#[derive(Debug)]
#[must_use = "the group ends when this is dropped"]
pub struct StageGroup {
    operation: Option<Arc<Operation>>,
}

impl Drop for StageGroup {
    fn drop(&mut self) {
        if let Some(op) = &self.operation {
            op.end_group();
        }
    }
}

/// `BANGER_FAULT_STALL_STAGE`, read once.
fn stall_stage() -> Option<&'static str> {
    static STAGE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    STAGE
        .get_or_init(|| std::env::var("BANGER_FAULT_STALL_STAGE").ok())
        .as_deref()
}
