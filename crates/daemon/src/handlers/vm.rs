//! `vm.*` handlers.

use std::future::Future;
use std::sync::Arc;

use banger_proto::vm::{
    CpParams, ExecBeginParams, ExecIoParams, VmCreateParams, VmEditParams, VmKillParams, VmRef,
};
use banger_proto::{OpKind, methods};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{no_params, to_value};
use crate::dispatch::{HandlerResult, RequestCtx, RpcError, params};
use crate::op::OpCtx;
use crate::vms;

/// Runs lifecycle work in its own task so that it always finishes its
/// rollback; if this request's future is dropped (the client went away),
/// the work's cancel token fires and it stops at its next wait. The work
/// gets the request's op context with that token.
async fn detached<T, F, Fut>(ctx: &RequestCtx, f: F) -> Result<T, RpcError>
where
    F: FnOnce(OpCtx) -> Fut,
    Fut: Future<Output = Result<T, vms::VmError>> + Send + 'static,
    T: Send + 'static,
{
    let token = CancellationToken::new();
    let _cancel_on_drop = token.clone().drop_guard();
    let op = OpCtx::new(ctx.op_id.clone(), token);
    tokio::spawn(f(op).in_current_span())
        .await
        .map_err(|e| RpcError::internal(format!("vm task failed: {e}")))?
        .map_err(RpcError::from)
}

pub(crate) async fn create_begin(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: VmCreateParams = params(methods::VM_CREATE_BEGIN, p)?;
    let plan = ctx.state.vms.plan_create(&ctx.op_id, p).await?;
    let vms = Arc::clone(&ctx.state.vms);
    let target = plan.name.clone();
    let op = ctx.state.ops.begin(
        &ctx.op_id,
        OpKind::VmCreate,
        &target,
        move |op| async move {
            match vms.create(&op, plan).await {
                Ok(view) => to_value(view).map_err(RpcError::into_body),
                Err(e) => Err(RpcError::from(e).into_body()),
            }
        },
    );
    to_value(op.view())
}

pub(crate) async fn start(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_START, p)?;
    let vms = Arc::clone(&ctx.state.vms);
    let vm = detached(&ctx, move |op| async move { vms.start(&name, &op).await }).await?;
    to_value(ctx.state.vms.view(&vm).await?)
}

pub(crate) async fn stop(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_STOP, p)?;
    let vms = Arc::clone(&ctx.state.vms);
    let vm = detached(&ctx, move |op| async move { vms.stop(&name, &op).await }).await?;
    to_value(ctx.state.vms.view(&vm).await?)
}

pub(crate) async fn kill(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmKillParams { name, signal } = params(methods::VM_KILL, p)?;
    let vms = Arc::clone(&ctx.state.vms);
    let vm = detached(&ctx, move |op| async move {
        vms.kill(&name, signal.as_deref(), &op).await
    })
    .await?;
    to_value(ctx.state.vms.view(&vm).await?)
}

pub(crate) async fn restart(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_RESTART, p)?;
    let vms = Arc::clone(&ctx.state.vms);
    let vm = detached(&ctx, move |op| async move { vms.restart(&name, &op).await }).await?;
    to_value(ctx.state.vms.view(&vm).await?)
}

pub(crate) async fn delete(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_DELETE, p)?;
    let vms = Arc::clone(&ctx.state.vms);
    let vm = detached(&ctx, move |op| async move { vms.delete(&name, &op).await }).await?;
    to_value(serde_json::json!({ "deleted": vm.name, "id": vm.id }))
}

pub(crate) async fn show(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_SHOW, p)?;
    let vm = ctx.state.vms.find(&name).await?;
    to_value(ctx.state.vms.view(&vm).await?)
}

pub(crate) async fn list(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::VM_LIST, &p)?;
    to_value(ctx.state.vms.views().await?)
}

pub(crate) async fn edit(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: VmEditParams = params(methods::VM_EDIT, p)?;
    let vms = Arc::clone(&ctx.state.vms);
    let vm = detached(&ctx, move |_| async move { vms.edit(&p).await }).await?;
    to_value(ctx.state.vms.view(&vm).await?)
}

pub(crate) async fn ssh_info(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_SSH_INFO, p)?;
    let vm = ctx.state.vms.find(&name).await?;
    let Some(h) = ctx.state.vms.handles(&vm.id) else {
        return Err(vms::VmError::NotRunning { name: vm.name }.into());
    };
    to_value(ctx.state.ssh.info(&vm.name, &h.ssh_host, h.ssh_port))
}

pub(crate) async fn stats(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_STATS, p)?;
    to_value(ctx.state.guest.stats(&name).await?)
}

pub(crate) async fn ports(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_PORTS, p)?;
    to_value(ctx.state.guest.ports(&name).await?)
}

pub(crate) async fn exec_begin(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: ExecBeginParams = params(methods::VM_EXEC_BEGIN, p)?;
    to_value(ctx.state.guest.exec_begin(p).await?)
}

pub(crate) async fn exec_io(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: ExecIoParams = params(methods::VM_EXEC_IO, p)?;
    to_value(ctx.state.guest.exec_io(p).await?)
}

/// A copy stops (and leaves nothing half-written on the host) when the
/// client goes away: the request's future, and the copy with it, is dropped.
pub(crate) async fn cp(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: CpParams = params(methods::VM_CP, p)?;
    to_value(ctx.state.guest.cp(p).await?)
}
