//! `vm.*` handlers.

use std::future::Future;

use banger_proto::methods;
use banger_proto::vm::{
    CpParams, ExecBeginParams, ExecIoParams, VmCreateParams, VmEditParams, VmKillParams, VmRef,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{no_params, to_value};
use crate::dispatch::{HandlerResult, RequestCtx, RpcError, params};
use crate::vms;

/// Runs lifecycle work in its own task so that it always finishes its
/// rollback; if this request's future is dropped (the client went away),
/// the token is cancelled and the work stops at its next wait.
async fn detached<T, F, Fut>(f: F) -> Result<T, RpcError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<T, RpcError>> + Send + 'static,
    T: Send + 'static,
{
    let token = CancellationToken::new();
    let _cancel_on_drop = token.clone().drop_guard();
    tokio::spawn(f(token).in_current_span())
        .await
        .map_err(|e| RpcError::internal(format!("vm task failed: {e}")))?
}

pub(crate) async fn create_begin(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: VmCreateParams = params(methods::VM_CREATE_BEGIN, p)?;
    to_value(vms::begin_create(&ctx.state, &ctx.op_id, p).await?)
}

pub(crate) async fn start(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_START, p)?;
    let state = ctx.state.clone();
    let vm =
        detached(move |cancel| async move { vms::start(&state, &name, &cancel).await }).await?;
    to_value(vms::view(&ctx.state, &vm).await?)
}

pub(crate) async fn stop(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_STOP, p)?;
    let state = ctx.state.clone();
    let vm = detached(move |_| async move { vms::stop(&state, &name).await }).await?;
    to_value(vms::view(&ctx.state, &vm).await?)
}

pub(crate) async fn kill(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmKillParams { name, signal } = params(methods::VM_KILL, p)?;
    let state = ctx.state.clone();
    let vm =
        detached(move |_| async move { vms::kill(&state, &name, signal.as_deref()).await }).await?;
    to_value(vms::view(&ctx.state, &vm).await?)
}

pub(crate) async fn restart(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_RESTART, p)?;
    let state = ctx.state.clone();
    let vm =
        detached(move |cancel| async move { vms::restart(&state, &name, &cancel).await }).await?;
    to_value(vms::view(&ctx.state, &vm).await?)
}

pub(crate) async fn delete(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_DELETE, p)?;
    let state = ctx.state.clone();
    let vm = detached(move |_| async move { vms::delete(&state, &name).await }).await?;
    to_value(serde_json::json!({ "deleted": vm.name, "id": vm.id }))
}

pub(crate) async fn show(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_SHOW, p)?;
    let vm = vms::find(&ctx.state, &name).await?;
    to_value(vms::view(&ctx.state, &vm).await?)
}

pub(crate) async fn list(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::VM_LIST, &p)?;
    let all = ctx.state.with_store(|s| s.vms()).await?;
    let mut views = Vec::with_capacity(all.len());
    for vm in &all {
        views.push(vms::view(&ctx.state, vm).await?);
    }
    to_value(views)
}

pub(crate) async fn edit(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: VmEditParams = params(methods::VM_EDIT, p)?;
    let state = ctx.state.clone();
    let vm = detached(move |_| async move { vms::edit(&state, &p).await }).await?;
    to_value(vms::view(&ctx.state, &vm).await?)
}

pub(crate) async fn ssh_info(ctx: RequestCtx, p: Value) -> HandlerResult {
    let VmRef { name } = params(methods::VM_SSH_INFO, p)?;
    let vm = vms::find(&ctx.state, &name).await?;
    let Some(h) = ctx.state.vms.handles(&vm.id) else {
        return Err(RpcError::new(
            banger_proto::ErrorCode::NotRunning,
            format!(
                "vm {} is not running (start it with: banger vm start {})",
                vm.name, vm.name
            ),
        ));
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
