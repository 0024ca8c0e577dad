//! `vm.*` handlers.

use std::future::Future;

use banger_proto::agent::ListeningPort;
use banger_proto::methods::{self, NoParams};
use banger_proto::vm::{
    CpParams, CpResult, ExecBeginParams, ExecBegun, ExecIoParams, ExecIoResult, OpView, SshInfo,
    VmCreateParams, VmDeleted, VmEditParams, VmKillParams, VmRef, VmStats, VmView,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dispatch::{Handler, RequestCtx, RpcError};
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

impl Handler for methods::VmCreateBegin {
    async fn handle(ctx: RequestCtx, p: VmCreateParams) -> Result<OpView, RpcError> {
        vms::begin_create(&ctx.state, ctx.op_id.as_str(), p).await
    }
}

impl Handler for methods::VmStart {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let state = ctx.state.clone();
        let vm =
            detached(move |cancel| async move { vms::start(&state, &name, &cancel).await }).await?;
        vms::view(&ctx.state, &vm).await
    }
}

impl Handler for methods::VmStop {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let state = ctx.state.clone();
        let vm = detached(move |_| async move { vms::stop(&state, &name).await }).await?;
        vms::view(&ctx.state, &vm).await
    }
}

impl Handler for methods::VmKill {
    async fn handle(
        ctx: RequestCtx,
        VmKillParams { name, signal }: VmKillParams,
    ) -> Result<VmView, RpcError> {
        let state = ctx.state.clone();
        let vm =
            detached(move |_| async move { vms::kill(&state, &name, signal.as_deref()).await })
                .await?;
        vms::view(&ctx.state, &vm).await
    }
}

impl Handler for methods::VmRestart {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let state = ctx.state.clone();
        let vm = detached(move |cancel| async move { vms::restart(&state, &name, &cancel).await })
            .await?;
        vms::view(&ctx.state, &vm).await
    }
}

impl Handler for methods::VmDelete {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmDeleted, RpcError> {
        let state = ctx.state.clone();
        let vm = detached(move |_| async move { vms::delete(&state, &name).await }).await?;
        Ok(VmDeleted {
            deleted: vm.name,
            id: vm.id,
        })
    }
}

impl Handler for methods::VmShow {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let vm = vms::find(&ctx.state, &name).await?;
        vms::view(&ctx.state, &vm).await
    }
}

impl Handler for methods::VmList {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<Vec<VmView>, RpcError> {
        let all = ctx.state.with_store(|s| s.vms()).await?;
        let mut views = Vec::with_capacity(all.len());
        for vm in &all {
            views.push(vms::view(&ctx.state, vm).await?);
        }
        Ok(views)
    }
}

impl Handler for methods::VmEdit {
    async fn handle(ctx: RequestCtx, p: VmEditParams) -> Result<VmView, RpcError> {
        let state = ctx.state.clone();
        let vm = detached(move |_| async move { vms::edit(&state, &p).await }).await?;
        vms::view(&ctx.state, &vm).await
    }
}

impl Handler for methods::VmSshInfo {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<SshInfo, RpcError> {
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
        Ok(ctx.state.ssh.info(&vm.name, &h.ssh_host, h.ssh_port))
    }
}

impl Handler for methods::VmStats {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmStats, RpcError> {
        vms::guest::stats(&ctx.state, &name).await
    }
}

impl Handler for methods::VmPorts {
    async fn handle(
        ctx: RequestCtx,
        VmRef { name }: VmRef,
    ) -> Result<Vec<ListeningPort>, RpcError> {
        vms::guest::ports(&ctx.state, &name).await
    }
}

impl Handler for methods::VmExecBegin {
    async fn handle(ctx: RequestCtx, p: ExecBeginParams) -> Result<ExecBegun, RpcError> {
        vms::guest::exec_begin(&ctx.state, p).await
    }
}

impl Handler for methods::VmExecIo {
    async fn handle(ctx: RequestCtx, p: ExecIoParams) -> Result<ExecIoResult, RpcError> {
        vms::guest::exec_io(&ctx.state, p).await
    }
}

/// A copy stops (and leaves nothing half-written on the host) when the
/// client goes away: the request's future, and the copy with it, is dropped.
impl Handler for methods::VmCp {
    async fn handle(ctx: RequestCtx, p: CpParams) -> Result<CpResult, RpcError> {
        vms::guest::cp(&ctx.state, p).await
    }
}
