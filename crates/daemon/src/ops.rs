//! The registry of asynchronous operations (`vm.create`, `image.build`,
//! `kernel.pull`): begin, status, cancel, list, prune (docs/capabilities.md, "Async operations").
//!
//! An operation's id is the op id dispatch gave its `*.begin` request, so
//! the id a user sees while polling is the one on every log line of the
//! work. The work runs as a spawned task (it must outlive the begin
//! request) inside that request's tracing span. Cancelling fires a token
//! the work watches at its waits and between stages; the work then rolls
//! back and ends as `cancelled`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use banger_proto::vm::{OpView, StageProgress, StageView};
use banger_proto::{ErrorBody, ErrorCode, OpKind, OpState};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::events::EventBus;
use crate::op::{OpCtx, OpId};
use banger_proto::events::EventKind;

/// Finished operations are forgotten after this long.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Stage {
    name: String,
    /// 0 for the operation's own stages, 1 for those of a group inside
    /// it (an image build within a create), and so on.
    depth: u32,
    started: Instant,
    took: Option<Duration>,
    progress: Option<StageProgress>,
}

#[derive(Debug)]
struct Inner {
    state: OpState,
    stages: Vec<Stage>,
    /// The depth new stages get: one per group open.
    depth: u32,
    error: Option<ErrorBody>,
    result: Option<Value>,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    ended: Option<Instant>,
}

/// One asynchronous operation, shared by its work and its pollers.
#[derive(Debug)]
pub struct Operation {
    pub id: OpId,
    pub kind: OpKind,
    pub target: String,
    cancel: CancellationToken,
    inner: Mutex<Inner>,
    done: tokio::sync::Notify,
    /// Fired when a stage starts and when the operation ends.
    changed: tokio::sync::Notify,
    /// Where its start, stages and end are published (none in tests that
    /// make a registry of their own).
    events: Option<Arc<EventBus>>,
}

impl Inner {
    /// Ends the running stages at `depth` or deeper: the tail of the list
    /// down to the first stage of a shallower depth.
    fn end_stages_from(&mut self, depth: u32) {
        for stage in self.stages.iter_mut().rev() {
            if stage.depth < depth {
                break;
            }
            if stage.took.is_none() {
                let took = stage.started.elapsed();
                stage.took = Some(took);
                tracing::info!(
                    stage = %stage.name,
                    duration_ms = took.as_millis() as u64,
                    "stage done"
                );
            }
        }
    }
}

impl Operation {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock; recover the data if so.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the current stage (recording its duration) and starts `name`.
    pub fn stage(&self, name: &str) {
        let mut inner = self.lock();
        let depth = inner.depth;
        inner.end_stages_from(depth);
        inner.stages.push(Stage {
            name: name.to_owned(),
            depth,
            started: Instant::now(),
            took: None,
            progress: None,
        });
        drop(inner);
        self.changed.notify_waiters();
        self.publish(|op_id| EventKind::OpStage {
            op_id,
            stage: name.to_owned(),
            depth,
        });
        tracing::info!(stage = name, depth, "stage started");
    }

    /// Records how many bytes the running stage has moved (of `total`).
    /// Not a change that wakes waiting pollers: they look again within
    /// their bound (a quarter of a second for the CLI).
    pub fn progress(&self, done_bytes: u64, total_bytes: Option<u64>) {
        let mut inner = self.lock();
        if let Some(stage) = inner.stages.last_mut().filter(|s| s.took.is_none()) {
            stage.progress = Some(StageProgress {
                done_bytes,
                total_bytes,
            });
        }
    }

    /// Starts the stage `name` as a group: the stages that follow, until
    /// [`end_group`](Self::end_group), are its parts, and its duration
    /// covers them all.
    pub fn begin_group(&self, name: &str) {
        self.stage(name);
        self.lock().depth += 1;
    }

    /// Ends the group begun last: its last part and the group's stage.
    pub fn end_group(&self) {
        let mut inner = self.lock();
        let depth = inner.depth;
        inner.end_stages_from(depth);
        inner.depth = depth.saturating_sub(1);
        let depth = inner.depth;
        inner.end_stages_from(depth);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// The operation's view once it changes (a stage starts, or it ends)
    /// or `limit` passes; at once when it has ended.
    pub async fn view_after_change(&self, limit: Duration) -> OpView {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        // Registered before the state is read: a change in between is
        // not missed.
        changed.as_mut().enable();
        if self.state() == OpState::Running {
            let _ = tokio::time::timeout(limit, changed).await;
        }
        self.view()
    }

    /// The token the work watches; fired by `op.cancel`.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Records how the work ended. The error body is the one the dispatch
    /// edge made of the work's error, so `op.status` carries its code.
    fn finish(&self, outcome: Result<Value, ErrorBody>) {
        let mut inner = self.lock();
        inner.end_stages_from(0);
        inner.depth = 0;
        match outcome {
            Ok(v) => {
                inner.state = OpState::Succeeded;
                inner.result = Some(v);
            }
            Err(e) => {
                inner.state = if e.code == ErrorCode::Cancelled || self.cancel.is_cancelled() {
                    OpState::Cancelled
                } else {
                    OpState::Failed
                };
                inner.error = Some(e.with_op_id(self.id.as_str()));
            }
        }
        inner.ended_at_ms = Some(now_ms());
        inner.ended = Some(Instant::now());
        let (state, error) = (inner.state, inner.error.clone());
        drop(inner);
        self.publish(|op_id| EventKind::OpEnded {
            op_id,
            state,
            error,
        });
        self.done.notify_waiters();
        self.changed.notify_waiters();
    }

    fn publish(&self, event: impl FnOnce(String) -> EventKind) {
        if let Some(events) = &self.events {
            events.publish(event(self.id.to_string()));
        }
    }

    pub fn state(&self) -> OpState {
        self.lock().state
    }

    /// Waits until the operation has ended.
    pub async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            if self.state() != OpState::Running {
                return;
            }
            notified.await;
        }
    }

    pub fn view(&self) -> OpView {
        let inner = self.lock();
        OpView {
            op_id: self.id.to_string(),
            kind: self.kind,
            target: self.target.clone(),
            state: inner.state,
            stages: inner
                .stages
                .iter()
                .map(|s| StageView {
                    name: s.name.clone(),
                    duration_ms: s.took.map(|d| d.as_millis() as u64),
                    depth: s.depth,
                    progress: s.progress,
                })
                .collect(),
            error: inner.error.clone(),
            result: inner.result.clone(),
            started_at_ms: inner.started_at_ms,
            ended_at_ms: inner.ended_at_ms,
        }
    }
}

/// All operations of this daemon's lifetime (minus pruned ones).
#[derive(Debug, Default)]
pub struct OpRegistry {
    ops: Mutex<HashMap<OpId, Arc<Operation>>>,
    events: Option<Arc<EventBus>>,
    /// Lock order: `gate` before `ops` ([`OpRegistry::close_if_idle`]).
    gate: Arc<Mutex<Gate>>,
}

/// Whether new operations may begin, and how many `*.begin` requests are
/// between being admitted and registering theirs. Counting those closes
/// the window in which a begin has passed the gate but its operation is
/// not yet in the registry.
#[derive(Debug, Default)]
struct Gate {
    closed: bool,
    starting: usize,
}

/// A `*.begin` request admitted through the gate; dropped when its
/// handler returns (its operation, if any, is registered by then).
#[derive(Debug)]
pub struct Admission(Arc<Mutex<Gate>>);

impl Drop for Admission {
    fn drop(&mut self) {
        let mut gate = self.0.lock().unwrap_or_else(|p| p.into_inner());
        gate.starting = gate.starting.saturating_sub(1);
    }
}

/// The daemon is shutting down and begins no new operation.
#[derive(Debug, thiserror::Error)]
#[error("bangerd is shutting down: it begins no new operation")]
pub struct ShuttingDown;

/// `daemon.shutdown` with `if_idle` found work in flight.
#[derive(Debug, thiserror::Error)]
#[error("{} in flight: {}", describe_count(.running.len() + .starting), describe_busy(.running, *.starting))]
pub struct Busy {
    /// "KIND TARGET (OP_ID)" of each running operation.
    pub running: Vec<String>,
    /// Begin requests admitted whose operations are not registered yet.
    pub starting: usize,
}

fn describe_count(n: usize) -> String {
    if n == 1 {
        "1 operation".to_owned()
    } else {
        format!("{n} operations")
    }
}

fn describe_busy(running: &[String], starting: usize) -> String {
    let mut parts = running.to_vec();
    if starting > 0 {
        parts.push(format!("{starting} being started"));
    }
    parts.join(", ")
}

/// No operation has this id (or it ended long ago and was pruned).
#[derive(Debug, thiserror::Error)]
#[error("no operation {0:?}")]
pub struct UnknownOp(pub String);

impl OpRegistry {
    /// A registry whose operations publish their start, stages and end.
    pub fn new(events: Arc<EventBus>) -> Self {
        Self {
            ops: Mutex::default(),
            events: Some(events),
            gate: Arc::default(),
        }
    }

    fn lock_gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a `*.begin` request through unless the daemon is shutting
    /// down; hold the admission until the operation is registered.
    pub fn admit(&self) -> Result<Admission, ShuttingDown> {
        let mut gate = self.lock_gate();
        if gate.closed {
            return Err(ShuttingDown);
        }
        gate.starting += 1;
        Ok(Admission(Arc::clone(&self.gate)))
    }

    /// Refuses new operations from now on.
    pub fn close(&self) {
        self.lock_gate().closed = true;
    }

    /// Refuses new operations from now on, but only if none is running or
    /// being started; otherwise changes nothing and names them. One step,
    /// so no operation can begin between the check and the closing.
    pub fn close_if_idle(&self) -> Result<(), Busy> {
        let mut gate = self.lock_gate();
        let running: Vec<String> = self
            .list()
            .into_iter()
            .filter(|o| o.state == OpState::Running)
            .map(|o| format!("{} {} ({})", o.kind, o.target, o.op_id))
            .collect();
        if running.is_empty() && gate.starting == 0 {
            gate.closed = true;
            return Ok(());
        }
        Err(Busy {
            running,
            starting: gate.starting,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<OpId, Arc<Operation>>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an operation under `op_id` and spawns `work` for it,
    /// with a context that carries the id, the cancel token and the
    /// operation to report stages on.
    pub fn begin<F, Fut>(&self, op_id: &OpId, kind: OpKind, target: &str, work: F) -> Arc<Operation>
    where
        F: FnOnce(OpCtx) -> Fut,
        Fut: Future<Output = Result<Value, ErrorBody>> + Send + 'static,
    {
        self.prune();
        let op = Arc::new(Operation {
            id: op_id.clone(),
            kind,
            target: target.to_owned(),
            cancel: CancellationToken::new(),
            inner: Mutex::new(Inner {
                state: OpState::Running,
                stages: Vec::new(),
                depth: 0,
                error: None,
                result: None,
                started_at_ms: now_ms(),
                ended_at_ms: None,
                ended: None,
            }),
            done: tokio::sync::Notify::new(),
            changed: tokio::sync::Notify::new(),
            events: self.events.clone(),
        });
        self.lock().insert(op_id.clone(), Arc::clone(&op));
        op.publish(|op_id| EventKind::OpStarted {
            op_id,
            kind,
            target: target.to_owned(),
        });
        let fut = work(OpCtx::for_operation(Arc::clone(&op)));
        let for_task = Arc::clone(&op);
        tokio::spawn(
            async move {
                let outcome = fut.await;
                let kind = kind.as_str();
                match &outcome {
                    Ok(_) => tracing::info!(kind = %kind, "operation succeeded"),
                    Err(e) if e.code == ErrorCode::Cancelled => {
                        tracing::info!(kind = %kind, "operation cancelled")
                    }
                    Err(e) => {
                        tracing::error!(kind, code = %e.code, error = %e.message, "operation failed")
                    }
                }
                for_task.finish(outcome);
            }
            .in_current_span(),
        );
        op
    }

    pub fn get(&self, op_id: &str) -> Result<Arc<Operation>, UnknownOp> {
        let unknown = || UnknownOp(op_id.chars().take(70).collect());
        let id = OpId::parse(op_id).ok_or_else(unknown)?;
        self.lock().get(&id).cloned().ok_or_else(unknown)
    }

    /// The error of a finished operation, with its code.
    #[cfg(test)]
    pub fn error_of(&self, op_id: &OpId) -> Option<ErrorBody> {
        self.lock().get(op_id)?.lock().error.clone()
    }

    pub fn list(&self) -> Vec<OpView> {
        self.prune();
        let mut views: Vec<OpView> = self.lock().values().map(|o| o.view()).collect();
        views.sort_by_key(|v| v.started_at_ms);
        views
    }

    /// Operations still running.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|o| o.state() == OpState::Running)
            .count()
    }

    fn prune(&self) {
        self.lock().retain(|_, op| {
            let inner = op.lock();
            inner.ended.is_none_or(|t| t.elapsed() < KEEP_FINISHED)
        });
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_status_wait_ends_at_the_next_change() {
        let reg = OpRegistry::default();
        let id = OpId::parse("op-dddddd").unwrap();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let op = reg.begin(&id, OpKind::VmCreate, "w", |op| async move {
            op.stage("one");
            let _ = go_rx.await;
            op.stage("two");
            let _ = end_rx.await;
            Ok(Value::Null)
        });
        // Nothing changes: the wait ends at its limit, still at "one".
        let t = Instant::now();
        let v = loop {
            let v = op.view_after_change(Duration::from_millis(50)).await;
            if !v.stages.is_empty() {
                break v;
            }
        };
        assert_eq!(v.stages.len(), 1);
        let v = op.view_after_change(Duration::from_millis(100)).await;
        assert_eq!(v.stages.len(), 1);
        assert!(t.elapsed() >= Duration::from_millis(100));
        // A stage starts: the wait ends with it, long before its limit.
        let waiter = {
            let op = Arc::clone(&op);
            tokio::spawn(async move { op.view_after_change(Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        go_tx.send(()).unwrap();
        let v = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the wait ended with the stage")
            .unwrap();
        assert!(v.stages.len() >= 2 || v.state != "running", "{v:?}");
        // The end too; and a finished operation is answered at once.
        end_tx.send(()).unwrap();
        op.wait().await;
        let t = Instant::now();
        let v = op.view_after_change(Duration::from_secs(30)).await;
        assert_eq!(v.state, "succeeded");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn stages_results_and_cancellation() {
        let reg = OpRegistry::default();
        let id = |s: &str| OpId::parse(s).unwrap();
        let op = reg.begin(&id("op-aaaaaa"), OpKind::VmCreate, "x", |op| async move {
            op.stage("one");
            op.stage("two");
            Ok(serde_json::json!({"ok": true}))
        });
        op.wait().await;
        let v = op.view();
        assert_eq!(v.state, "succeeded");
        assert_eq!(v.stages.len(), 2);
        assert!(v.stages.iter().all(|s| s.duration_ms.is_some()));
        assert_eq!(v.result.unwrap()["ok"], true);

        let slow = reg.begin(&id("op-bbbbbb"), OpKind::ImageBuild, "y", |op| async move {
            op.stage("waiting");
            op.cancel_token().cancelled().await;
            op.stage("rolling back");
            op.check_cancelled()
                .map_err(|e| ErrorBody::new(ErrorCode::Cancelled, e.to_string()))?;
            Ok(Value::Null)
        });
        assert_eq!(reg.running(), 1);
        reg.get("op-bbbbbb").unwrap().cancel_token().cancel();
        slow.wait().await;
        assert_eq!(slow.view().state, "cancelled");
        assert_eq!(reg.list().len(), 2);
        assert!(reg.get("op-zzzzzz").is_err());

        let failing = reg.begin(&id("op-cccccc"), OpKind::VmCreate, "z", |_| async move {
            Err(ErrorBody::new(
                ErrorCode::Conflict,
                "host port 1/tcp is taken",
            ))
        });
        failing.wait().await;
        let kept = reg.error_of(&id("op-cccccc")).unwrap();
        assert_eq!(kept.code, ErrorCode::Conflict, "the code is kept");
        assert_eq!(kept.op_id.as_deref(), Some("op-cccccc"));
    }

    /// A group's stage lasts until its parts are done: a create's "build
    /// image" covers the build's own stages instead of ending as the first
    /// one starts (it showed 0.0 s).
    #[tokio::test]
    async fn a_group_stage_lasts_as_long_as_its_parts() {
        let reg = OpRegistry::default();
        let id = OpId::parse("op-gggggg").unwrap();
        let op = reg.begin(&id, OpKind::VmCreate, "dev", |op| async move {
            op.stage("check artifacts");
            {
                let _group = op.stage_group("build image default");
                op.stage("debootstrap");
                tokio::time::sleep(Duration::from_millis(30)).await;
                op.stage("install agent");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            op.stage("launch vmm");
            Ok(Value::Null)
        });
        op.wait().await;
        let v = op.view();
        let shape: Vec<(&str, u32)> = v
            .stages
            .iter()
            .map(|s| (s.name.as_str(), s.depth))
            .collect();
        assert_eq!(
            shape,
            [
                ("check artifacts", 0),
                ("build image default", 0),
                ("debootstrap", 1),
                ("install agent", 1),
                ("launch vmm", 0)
            ]
        );
        let ms = |i: usize| v.stages[i].duration_ms.unwrap();
        assert!(ms(1) >= 60, "the group covers its parts: {v:?}");
        assert!(ms(1) >= ms(2) + ms(3), "{v:?}");
        assert!(ms(2) >= 30 && ms(3) >= 30, "{v:?}");
    }

    /// Progress belongs to the running stage and stays with it once done.
    #[tokio::test]
    async fn progress_is_the_running_stages() {
        let reg = OpRegistry::default();
        let id = OpId::parse("op-pppppp").unwrap();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let op = reg.begin(&id, OpKind::KernelPull, "k", |op| async move {
            op.stage("download kernel package");
            op.progress(10, Some(100));
            op.progress(40, Some(100));
            let _ = go_rx.await;
            op.stage("extract");
            Ok(Value::Null)
        });
        let v = loop {
            let v = op.view_after_change(Duration::from_millis(50)).await;
            if v.stages
                .first()
                .is_some_and(|s| s.progress.map(|p| p.done_bytes) == Some(40))
            {
                break v;
            }
        };
        assert_eq!(
            v.stages[0].progress,
            Some(StageProgress {
                done_bytes: 40,
                total_bytes: Some(100)
            })
        );
        go_tx.send(()).unwrap();
        op.wait().await;
        let v = op.view();
        assert_eq!(v.stages[1].progress, None, "a new stage starts without");
        op.progress(99, None);
        assert_eq!(op.view().stages[1].progress, None, "nothing runs: ignored");
    }

    /// A failed operation keeps the error's code, not only its message, so
    /// `op.status` tells a conflict from any other failure.
    #[tokio::test]
    async fn a_failed_operation_keeps_its_error_code() {
        let reg = OpRegistry::default();
        let id = OpId::parse("op-dddddd").unwrap();
        let op = reg.begin(&id, OpKind::VmCreate, "dev", |_| async move {
            Err(ErrorBody::new(
                ErrorCode::Conflict,
                "host port 8080 is taken",
            ))
        });
        op.wait().await;
        let v = op.view();
        assert_eq!(v.state, OpState::Failed);
        assert_eq!(
            v.error,
            Some(
                ErrorBody::new(ErrorCode::Conflict, "host port 8080 is taken")
                    .with_op_id("op-dddddd")
            )
        );
    }
}
