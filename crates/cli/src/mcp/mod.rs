//! `banger mcp`: a Model Context Protocol server over stdio, so a coding
//! agent drives banger with typed tools rather than by parsing CLI text
//! (docs/agents.md, "MCP").
//!
//! Built on the official Rust SDK (`rmcp`). Each tool is one daemon
//! method (or a few, for `vm_run`) called with the daemon's own wire types
//! (`banger_proto`), whose JSON schemas are the tools' input schemas;
//! results are the daemon's results as structured content. A failure is a
//! tool error whose structured content is the daemon's error body: `code`,
//! `message` and `op_id` (every request carries an op id minted here, so
//! even a call that never reached the daemon has one). Long calls (create,
//! run, snapshot, fork) report each stage of their operation as an MCP
//! progress notification when the client asked for progress, following
//! it on the daemon's event stream (`events.subscribe`).
//!
//! The daemon client is the CLI's blocking one (`crate::client`), run on
//! tokio's blocking threads, one connection per call.

mod tools;

use banger_proto::ErrorBody;
use banger_proto::Request;
use banger_proto::methods::Method;
use banger_proto::vm::{OpStatusParams, OpView};
use rmcp::model::{CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServiceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CliError;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};

pub use tools::BangerTools;

/// Serves MCP on stdin/stdout until the client closes it.
pub fn serve(target: DaemonTarget) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Io)?;
    runtime.block_on(async move {
        let service = BangerTools::new(target)
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| CliError::Mcp(e.to_string()))?;
        service
            .waiting()
            .await
            .map_err(|e| CliError::Mcp(e.to_string()))?;
        Ok(())
    })
}

/// A tool call that failed: the daemon's error body, with an op id.
#[derive(Debug, Clone, Serialize)]
pub struct ToolError(pub ErrorBody);

impl ToolError {
    fn into_result(self) -> CallToolResult {
        CallToolResult::structured_error(serde_json::to_value(&self.0).unwrap_or_default())
    }

    fn local(code: banger_proto::ErrorCode, message: impl Into<String>, op_id: &str) -> Self {
        let mut body = ErrorBody::new(code, message);
        body.op_id = Some(op_id.to_owned());
        ToolError(body)
    }
}

/// The outcome of a tool as MCP wants it.
pub(crate) fn finish<T: Serialize>(outcome: Result<T, ToolError>) -> CallToolResult {
    match outcome {
        Ok(value) => match serde_json::to_value(value) {
            Ok(value) => CallToolResult::structured(value),
            Err(e) => ToolError::local(
                banger_proto::ErrorCode::OperationFailed,
                format!("encode result: {e}"),
                "op-mcp-encode",
            )
            .into_result(),
        },
        Err(e) => e.into_result(),
    }
}

/// A fresh op id for a request of ours (`op-m` and 12 hex digits).
pub(crate) fn mint_op_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "op-m{:012x}",
        (u64::from(nanos) ^ (u64::from(std::process::id()) << 32) ^ n) & 0xffff_ffff_ffff
    )
}

/// Calls method `M` with `params` under `op_id` on a connection of its own.
pub(crate) async fn call<M>(
    target: &DaemonTarget,
    params: &M::Params,
    op_id: &str,
) -> Result<M::Result, ToolError>
where
    M: Method,
    M::Params: Serialize,
    M::Result: DeserializeOwned + Send + 'static,
{
    let fail = |message: String| {
        ToolError::local(banger_proto::ErrorCode::OperationFailed, message, op_id)
    };
    let params = serde_json::to_value(params).map_err(|e| fail(format!("encode params: {e}")))?;
    let (target, op) = (target.clone(), op_id.to_owned());
    let raw = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, CliError> {
        let mut client = ensure_daemon(&target)?.client;
        let mut request = Request::new(M::NAME, params);
        request.op_id = Some(op);
        client.call_raw(request)
    })
    .await
    .map_err(|e| fail(format!("daemon call: {e}")))?;
    match raw {
        Ok(value) => {
            serde_json::from_value(value).map_err(|e| fail(format!("{} result: {e}", M::NAME)))
        }
        Err(CliError::Daemon(mut body)) => {
            body.op_id.get_or_insert_with(|| op_id.to_owned());
            Err(ToolError(body))
        }
        Err(e) => Err(fail(e.display_chain())),
    }
}

/// Follows the operation `op_id` through the daemon's event stream,
/// subscribed before the operation begins (`begin` runs once the
/// subscription is in place, so none of its events is missed): each stage
/// as it starts is sent as a progress notification when the client gave a
/// progress token; once it ends, its result or error. Should the stream
/// end first (the daemon dropped a subscriber that lagged), the rest is
/// followed by polling `op.status`.
pub(crate) async fn follow_op<T: DeserializeOwned>(
    target: &DaemonTarget,
    op_id: &str,
    ctx: &RequestContext<RoleServer>,
    begin: impl Future<Output = Result<(), ToolError>>,
) -> Result<T, ToolError> {
    let token = ctx.meta.get_progress_token();
    let (mut stages, guard) = op_stages(target, op_id).await?;
    begin.await?;
    let mut seen = 0usize;
    let mut ended = false;
    while let Some(step) = stages.recv().await {
        match step {
            OpStep::Stage(name) => {
                seen += 1;
                if let Some(token) = &token {
                    let note = ProgressNotificationParam::new(token.clone(), seen as f64)
                        .with_message(name);
                    // A client that went away learns nothing; the work goes on.
                    let _ = ctx.peer.notify_progress(note).await;
                }
            }
            OpStep::Ended => {
                ended = true;
                break;
            }
        }
    }
    drop(guard);
    use banger_proto::methods::OpStatus;
    let mut view: OpView;
    loop {
        let params = OpStatusParams {
            op_id: op_id.to_owned(),
            wait_ms: (!ended).then_some(1000),
        };
        view = call::<OpStatus>(target, &params, &mint_op_id()).await?;
        if let Some(token) = &token {
            for stage in view.stages.iter().skip(seen) {
                seen += 1;
                let note = ProgressNotificationParam::new(token.clone(), seen as f64)
                    .with_message(stage.name.clone());
                let _ = ctx.peer.notify_progress(note).await;
            }
        }
        if view.state.is_done() {
            break;
        }
    }
    match view.state {
        banger_proto::OpState::Succeeded => {
            let value = view.result.unwrap_or(serde_json::Value::Null);
            serde_json::from_value(value).map_err(|e| {
                ToolError::local(
                    banger_proto::ErrorCode::OperationFailed,
                    format!("operation result: {e}"),
                    op_id,
                )
            })
        }
        _ => {
            let mut body = view.error.unwrap_or_else(|| {
                ErrorBody::new(banger_proto::ErrorCode::OperationFailed, "operation ended")
            });
            body.op_id.get_or_insert_with(|| op_id.to_owned());
            Err(ToolError(body))
        }
    }
}

/// What the stream says of one operation.
enum OpStep {
    Stage(String),
    Ended,
}

/// Shuts the subscription's connection down when dropped, which ends the
/// thread reading it (it may be blocked waiting for the next event).
struct StreamGuard(Option<std::os::unix::net::UnixStream>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(socket) = &self.0 {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Subscribes to the daemon's events and passes on those of `op_id`, from
/// a blocking thread reading the stream, until it ends.
async fn op_stages(
    target: &DaemonTarget,
    op_id: &str,
) -> Result<(tokio::sync::mpsc::Receiver<OpStep>, StreamGuard), ToolError> {
    use banger_proto::events::{EventFrame, EventKind, EventsSubscribeParams};
    let fail = |message: String| {
        ToolError::local(banger_proto::ErrorCode::OperationFailed, message, op_id)
    };
    let target = target.clone();
    let stream = tokio::task::spawn_blocking(move || {
        ensure_daemon(&target)?
            .client
            .subscribe(&EventsSubscribeParams::default())
            .map(|(_, stream)| stream)
    })
    .await
    .map_err(|e| fail(format!("daemon call: {e}")))?
    .map_err(|e| fail(e.display_chain()))?;
    let guard = StreamGuard(stream.try_clone_socket().ok());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let op_id = op_id.to_owned();
    tokio::task::spawn_blocking(move || {
        for frame in stream {
            let Ok(EventFrame::Event(event)) = frame else {
                return;
            };
            let step = match event.kind {
                EventKind::OpStage {
                    op_id: id, stage, ..
                } if id == op_id => OpStep::Stage(stage),
                EventKind::OpEnded { op_id: id, .. } if id == op_id => OpStep::Ended,
                _ => continue,
            };
            let last = matches!(step, OpStep::Ended);
            if tx.blocking_send(step).is_err() || last {
                return;
            }
        }
    });
    Ok((rx, guard))
}
