//! `vm.snapshot`, `vm.restore`, `vm.fork`, `image.warm` and `snapshot.*`
//! handlers (docs/snapshots.md).

use std::sync::Arc;

use banger_proto::OpKind;
use banger_proto::methods::{self, NoParams};
use banger_proto::snapshot::{SnapshotView, VmForkParams, VmRestoreParams, VmSnapshotParams};
use banger_proto::vm::{Deleted, NameParams, OpView};

use super::to_value;
use crate::dispatch::{Handler, RequestCtx, RpcError};

impl Handler for methods::VmSnapshotBegin {
    async fn handle(ctx: RequestCtx, p: VmSnapshotParams) -> Result<OpView, RpcError> {
        let plan = ctx.state.vms.plan_snapshot(p).await?;
        let vms = Arc::clone(&ctx.state.vms);
        let target = plan.vm.clone();
        let op = ctx.state.ops.begin(
            &ctx.op_id,
            OpKind::VmSnapshot,
            &target,
            move |op| async move {
                match vms.snapshot(&op, plan).await {
                    Ok(view) => to_value(view).map_err(RpcError::into_body),
                    Err(e) => Err(RpcError::from(e).into_body()),
                }
            },
        );
        Ok(op.view())
    }
}

impl Handler for methods::VmRestoreBegin {
    async fn handle(ctx: RequestCtx, p: VmRestoreParams) -> Result<OpView, RpcError> {
        let plan = ctx.state.vms.plan_restore(p).await?;
        let vms = Arc::clone(&ctx.state.vms);
        let target = plan.vm.clone();
        let op = ctx.state.ops.begin(
            &ctx.op_id,
            OpKind::VmRestore,
            &target,
            move |op| async move {
                match vms.restore(&op, plan).await {
                    Ok(view) => to_value(view).map_err(RpcError::into_body),
                    Err(e) => Err(RpcError::from(e).into_body()),
                }
            },
        );
        Ok(op.view())
    }
}

impl Handler for methods::VmForkBegin {
    async fn handle(ctx: RequestCtx, p: VmForkParams) -> Result<OpView, RpcError> {
        let plan = ctx.state.vms.plan_fork(p).await?;
        let vms = Arc::clone(&ctx.state.vms);
        let target = plan.source.clone();
        let op = ctx
            .state
            .ops
            .begin(&ctx.op_id, OpKind::VmFork, &target, move |op| async move {
                match vms.fork(&op, plan).await {
                    Ok(forked) => to_value(forked).map_err(RpcError::into_body),
                    Err(e) => Err(RpcError::from(e).into_body()),
                }
            });
        Ok(op.view())
    }
}

impl Handler for methods::ImageWarmBegin {
    async fn handle(ctx: RequestCtx, NameParams { name }: NameParams) -> Result<OpView, RpcError> {
        crate::validate::name("image", &name)?;
        let vms = Arc::clone(&ctx.state.vms);
        let target = name.clone();
        let op = ctx.state.ops.begin(
            &ctx.op_id,
            OpKind::ImageWarm,
            &target,
            move |op| async move {
                match vms.warm(&op, &name).await {
                    Ok(view) => to_value(view).map_err(RpcError::into_body),
                    Err(e) => Err(RpcError::from(e).into_body()),
                }
            },
        );
        Ok(op.view())
    }
}

impl Handler for methods::SnapshotList {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<Vec<SnapshotView>, RpcError> {
        Ok(ctx.state.vms.snapshots().await?)
    }
}

impl Handler for methods::SnapshotShow {
    async fn handle(
        ctx: RequestCtx,
        NameParams { name }: NameParams,
    ) -> Result<SnapshotView, RpcError> {
        Ok(ctx.state.vms.snapshot_view(&name).await?)
    }
}

impl Handler for methods::SnapshotDelete {
    async fn handle(ctx: RequestCtx, NameParams { name }: NameParams) -> Result<Deleted, RpcError> {
        let deleted = ctx.state.vms.delete_snapshot(&name).await?;
        Ok(Deleted { deleted })
    }
}
