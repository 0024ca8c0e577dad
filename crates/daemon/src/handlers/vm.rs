//! `vm.*` handlers.

use std::future::Future;
use std::sync::Arc;

use banger_proto::OpKind;
use banger_proto::agent::ListeningPort;
use banger_proto::methods::{self, NoParams};
use banger_proto::vm::{
    CpParams, CpResult, ExecBeginParams, ExecBegun, ExecIoParams, ExecIoResult, OpView, SshInfo,
    VmCreateParams, VmDeleteParams, VmDeleted, VmEditParams, VmKillParams, VmRef, VmStats, VmView,
};
use banger_proto::workspace::{
    WorkspaceApplied, WorkspaceDiff, WorkspacePushParams, WorkspaceSynced, WorkspaceView,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::to_value;
use crate::dispatch::{Handler, RequestCtx, RpcError};
use crate::op::OpCtx;
use crate::vms::{VmError, Vms};

/// Runs lifecycle work in its own task so that it always finishes its
/// rollback; if this request's future is dropped (the client went away),
/// the work's cancel token fires and it stops at its next wait. The work
/// gets the VM service and the request's op context with that token.
async fn detached<T, F, Fut>(ctx: &RequestCtx, f: F) -> Result<T, RpcError>
where
    F: FnOnce(Arc<Vms>, OpCtx) -> Fut,
    Fut: Future<Output = Result<T, VmError>> + Send + 'static,
    T: Send + 'static,
{
    let token = CancellationToken::new();
    let _cancel_on_drop = token.clone().drop_guard();
    let op = OpCtx::new(ctx.op_id.clone(), token);
    tokio::spawn(f(Arc::clone(&ctx.state.vms), op).in_current_span())
        .await
        .map_err(|e| RpcError::internal(format!("vm task failed: {e}")))?
        .map_err(RpcError::from)
}

/// Begins lifecycle work on VM `name` as an asynchronous operation of
/// `kind` whose stages the client follows; an unknown VM fails at once.
async fn lifecycle_op<F, Fut>(
    ctx: &RequestCtx,
    kind: OpKind,
    name: String,
    work: F,
) -> Result<OpView, RpcError>
where
    F: FnOnce(Arc<Vms>, String, OpCtx) -> Fut + Send + 'static,
    Fut: Future<Output = Result<banger_store::VmRecord, VmError>> + Send + 'static,
{
    let target = ctx.state.vms.find(&name).await?.name;
    let vms = Arc::clone(&ctx.state.vms);
    let op = ctx
        .state
        .ops
        .begin(&ctx.op_id, kind, &target.clone(), move |op| async move {
            let done = work(Arc::clone(&vms), target, op).await;
            match done {
                Ok(vm) => match vms.view(&vm).await {
                    Ok(view) => to_value(view).map_err(RpcError::into_body),
                    Err(e) => Err(RpcError::from(e).into_body()),
                },
                Err(e) => Err(RpcError::from(e).into_body()),
            }
        });
    Ok(op.view())
}

impl Handler for methods::VmCreateBegin {
    async fn handle(ctx: RequestCtx, mut p: VmCreateParams) -> Result<OpView, RpcError> {
        let workspace = match p.workspace.take() {
            Some(_) if p.start == Some(false) => {
                return Err(crate::workspaces::WorkspaceError::NeedsStart.into());
            }
            Some(spec) => Some(crate::workspaces::check(&spec)?),
            None => None,
        };
        let plan = ctx.state.vms.plan_create(&ctx.op_id, p).await?;
        let vms = Arc::clone(&ctx.state.vms);
        let target = plan.name.clone();
        let state = Arc::clone(&ctx.state);
        let op = ctx.state.ops.begin(
            &ctx.op_id,
            OpKind::VmCreate,
            &target,
            move |op| async move {
                match vms.create(&op, plan).await {
                    Ok((view, warm)) => {
                        if let Some(job) = warm {
                            begin_warm(&state.ops, &vms, job);
                        }
                        if let Some(ws) = workspace {
                            put_workspace(&state, &op, &view.name, ws)
                                .await
                                .map_err(RpcError::into_body)?;
                        }
                        to_value(view).map_err(RpcError::into_body)
                    }
                    Err(e) => Err(RpcError::from(e).into_body()),
                }
            },
        );
        Ok(op.view())
    }
}

/// A create's last stage: the project into the new VM; a failure (or a
/// cancel) deletes the VM, so a create with a workspace leaves a VM with
/// its workspace or nothing.
async fn put_workspace(
    state: &crate::state::DaemonState,
    op: &OpCtx,
    vm: &str,
    ws: crate::workspaces::Checked,
) -> Result<(), RpcError> {
    op.stage(&format!("workspace {}", ws.describe()));
    let pushed = tokio::select! {
        pushed = state.workspaces.push(vm, ws) => pushed.map_err(RpcError::from),
        () = op.cancel_token().cancelled() => Err(RpcError::from(crate::op::Cancelled)),
    };
    match pushed {
        Ok(view) => {
            tracing::info!(
                vm,
                files = view.files,
                bytes = view.bytes,
                "workspace in the guest"
            );
            Ok(())
        }
        Err(e) => {
            op.stage("roll back");
            let rollback = OpCtx::new(op.id().clone(), CancellationToken::new());
            if let Err(d) = state.vms.delete(vm, true, &rollback).await {
                tracing::warn!(vm, error = %crate::error::chain(&d), "rollback: delete failed");
            }
            Err(e)
        }
    }
}

/// Makes an image's template in the background, as an operation of its
/// own (`image.warm`, visible in `banger ops`), after a cold create.
fn begin_warm(ops: &crate::ops::OpRegistry, vms: &Arc<Vms>, job: crate::vms::WarmJob) {
    let vms = Arc::clone(vms);
    let target = job.image.name.clone();
    ops.begin(
        &crate::op::mint(),
        OpKind::ImageWarm,
        &target,
        move |op| async move {
            match vms.run_warm_job(&op, job).await {
                Ok(view) => to_value(view).map_err(RpcError::into_body),
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "template build failed");
                    Err(RpcError::from(e).into_body())
                }
            }
        },
    );
}

impl Handler for methods::VmPause {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let vm = detached(&ctx, |vms, _| async move { vms.pause(&name).await }).await?;
        Ok(ctx.state.vms.view(&vm).await?)
    }
}

impl Handler for methods::VmResume {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let vm = detached(&ctx, |vms, _| async move { vms.resume(&name).await }).await?;
        Ok(ctx.state.vms.view(&vm).await?)
    }
}

impl Handler for methods::VmStart {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let vm = detached(&ctx, |vms, op| async move { vms.start(&name, &op).await }).await?;
        Ok(ctx.state.vms.view(&vm).await?)
    }
}

impl Handler for methods::VmStartBegin {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<OpView, RpcError> {
        lifecycle_op(&ctx, OpKind::VmStart, name, |vms, name, op| async move {
            vms.start(&name, &op).await
        })
        .await
    }
}

impl Handler for methods::VmStop {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let vm = detached(&ctx, |vms, op| async move { vms.stop(&name, &op).await }).await?;
        Ok(ctx.state.vms.view(&vm).await?)
    }
}

impl Handler for methods::VmKill {
    async fn handle(
        ctx: RequestCtx,
        VmKillParams { name, signal }: VmKillParams,
    ) -> Result<VmView, RpcError> {
        let vm = detached(&ctx, |vms, op| async move {
            vms.kill(&name, signal.as_deref(), &op).await
        })
        .await?;
        Ok(ctx.state.vms.view(&vm).await?)
    }
}

impl Handler for methods::VmRestart {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let vm = detached(&ctx, |vms, op| async move { vms.restart(&name, &op).await }).await?;
        Ok(ctx.state.vms.view(&vm).await?)
    }
}

impl Handler for methods::VmRestartBegin {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<OpView, RpcError> {
        lifecycle_op(&ctx, OpKind::VmRestart, name, |vms, name, op| async move {
            vms.restart(&name, &op).await
        })
        .await
    }
}

impl Handler for methods::VmDelete {
    async fn handle(
        ctx: RequestCtx,
        VmDeleteParams { name, force }: VmDeleteParams,
    ) -> Result<VmDeleted, RpcError> {
        let vm = detached(&ctx, |vms, op| async move {
            vms.delete(&name, force, &op).await
        })
        .await?;
        Ok(VmDeleted {
            deleted: vm.name,
            id: vm.id,
        })
    }
}

impl Handler for methods::VmShow {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmView, RpcError> {
        let vm = ctx.state.vms.find(&name).await?;
        Ok(ctx.state.vms.view(&vm).await?)
    }
}

impl Handler for methods::VmList {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<Vec<VmView>, RpcError> {
        Ok(ctx.state.vms.views().await?)
    }
}

impl Handler for methods::VmEdit {
    async fn handle(ctx: RequestCtx, p: VmEditParams) -> Result<VmView, RpcError> {
        let vm = detached(
            &ctx,
            |vms, op| async move { vms.edit_as(&p, op.id()).await },
        )
        .await?;
        Ok(ctx.state.vms.view(&vm).await?)
    }
}

impl Handler for methods::VmSshInfo {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<SshInfo, RpcError> {
        let vm = ctx.state.vms.find(&name).await?;
        let view = ctx.state.vms.view(&vm).await?;
        if view.agent_shell {
            return Err(VmError::NoSshServer {
                vm: vm.name,
                image: view.image,
            }
            .into());
        }
        let Some(h) = ctx.state.vms.handles(&vm.id) else {
            return Err(VmError::NotRunning { name: vm.name }.into());
        };
        Ok(ctx.state.ssh.info(&vm.name, &h.ssh_host, h.ssh_port))
    }
}

impl Handler for methods::VmStats {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<VmStats, RpcError> {
        Ok(ctx.state.guest.stats(&name).await?)
    }
}

impl Handler for methods::VmPorts {
    async fn handle(
        ctx: RequestCtx,
        VmRef { name }: VmRef,
    ) -> Result<Vec<ListeningPort>, RpcError> {
        Ok(ctx.state.guest.ports(&name).await?)
    }
}

impl Handler for methods::VmExecBegin {
    async fn handle(ctx: RequestCtx, p: ExecBeginParams) -> Result<ExecBegun, RpcError> {
        Ok(ctx.state.guest.exec_begin(p).await?)
    }
}

impl Handler for methods::VmExecIo {
    async fn handle(ctx: RequestCtx, p: ExecIoParams) -> Result<ExecIoResult, RpcError> {
        Ok(ctx.state.guest.exec_io(p).await?)
    }
}

/// A copy stops (and leaves nothing half-written on the host) when the
/// client goes away: the request's future, and the copy with it, is dropped.
impl Handler for methods::VmCp {
    async fn handle(ctx: RequestCtx, p: CpParams) -> Result<CpResult, RpcError> {
        Ok(ctx.state.guest.cp(p).await?)
    }
}

impl Handler for methods::VmWorkspacePush {
    async fn handle(ctx: RequestCtx, p: WorkspacePushParams) -> Result<WorkspaceView, RpcError> {
        Ok(ctx.state.workspaces.push_params(p).await?)
    }
}

impl Handler for methods::VmWorkspaceDiff {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<WorkspaceDiff, RpcError> {
        Ok(ctx.state.workspaces.diff(&name).await?)
    }
}

impl Handler for methods::VmWorkspaceApply {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<WorkspaceApplied, RpcError> {
        Ok(ctx.state.workspaces.apply(&name).await?)
    }
}

impl Handler for methods::VmWorkspaceSync {
    async fn handle(ctx: RequestCtx, VmRef { name }: VmRef) -> Result<WorkspaceSynced, RpcError> {
        Ok(ctx.state.workspaces.sync(&name).await?)
    }
}
