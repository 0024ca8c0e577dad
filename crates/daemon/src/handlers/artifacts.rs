//! `image.*`, `kernel.*`, `op.*` and `doctor` handlers.

use std::sync::Arc;

use banger_proto::methods::{self, NoParams};
use banger_proto::vm::{
    Deleted, DoctorParams, DoctorReport, ImageBuildParams, ImageView, KernelPullParams, KernelView,
    NameParams, OpRef, OpView,
};
use banger_proto::{ErrorCode, OpKind};

use super::to_value;
use crate::artifacts;
use crate::dispatch::{Handler, RequestCtx, RpcError};
use crate::validate;

impl Handler for methods::ImageBuildBegin {
    async fn handle(ctx: RequestCtx, p: ImageBuildParams) -> Result<OpView, RpcError> {
        let name = p
            .name
            .unwrap_or_else(|| ctx.state.config.defaults.image.clone());
        validate::name("image", &name)?;
        for pkg in &p.packages {
            let ok = !pkg.is_empty()
                && pkg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.:=~".contains(&b))
                && pkg.as_bytes()[0].is_ascii_alphanumeric();
            if !ok {
                return Err(RpcError::bad_params(format!(
                    "invalid package name {pkg:?}"
                )));
            }
        }
        if let Some(size) = p.size_bytes {
            validate::image_size(size)?;
        }
        let state = Arc::clone(&ctx.state);
        let target = name.clone();
        let op = ctx.state.ops.begin(
            ctx.op_id.as_str(),
            OpKind::ImageBuild,
            &target,
            move |op| async move {
                let image =
                    artifacts::build_image(&state, &name, p.packages, p.size_bytes, Some(&op))
                        .await?;
                to_value(artifacts::image_view(&state, &image).await?)
            },
        );
        Ok(op.view())
    }
}

impl Handler for methods::ImageList {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<Vec<ImageView>, RpcError> {
        let images = ctx.state.with_store(|s| s.images()).await?;
        let mut views = Vec::new();
        for i in &images {
            views.push(artifacts::image_view(&ctx.state, i).await?);
        }
        Ok(views)
    }
}

impl Handler for methods::ImageShow {
    async fn handle(
        ctx: RequestCtx,
        NameParams { name }: NameParams,
    ) -> Result<ImageView, RpcError> {
        let image = ctx.state.with_store(move |s| s.image(&name)).await?;
        artifacts::image_view(&ctx.state, &image).await
    }
}

impl Handler for methods::ImageDelete {
    async fn handle(ctx: RequestCtx, NameParams { name }: NameParams) -> Result<Deleted, RpcError> {
        let image = artifacts::delete_image(&ctx.state, &name).await?;
        Ok(Deleted {
            deleted: image.name,
        })
    }
}

impl Handler for methods::KernelPullBegin {
    async fn handle(ctx: RequestCtx, p: KernelPullParams) -> Result<OpView, RpcError> {
        let name = p
            .name
            .unwrap_or_else(|| ctx.state.config.defaults.kernel.clone());
        validate::name("kernel", &name)?;
        artifacts::check_kernel_known(&ctx.state, &name).await?;
        let state = Arc::clone(&ctx.state);
        let target = name.clone();
        let op = ctx.state.ops.begin(
            ctx.op_id.as_str(),
            OpKind::KernelPull,
            &target,
            move |op| async move {
                let k = artifacts::ensure_kernel(&state, &name, Some(&op)).await?;
                to_value(artifacts::kernel_view(
                    &k.name,
                    "",
                    k.name == state.config.defaults.kernel,
                    Some(&k),
                ))
            },
        );
        Ok(op.view())
    }
}

impl Handler for methods::KernelList {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<Vec<KernelView>, RpcError> {
        let records = ctx.state.with_store(|s| s.kernels()).await?;
        Ok(artifacts::kernel_views(&records))
    }
}

impl Handler for methods::KernelShow {
    async fn handle(
        ctx: RequestCtx,
        NameParams { name }: NameParams,
    ) -> Result<KernelView, RpcError> {
        let records = ctx.state.with_store(|s| s.kernels()).await?;
        artifacts::kernel_views(&records)
            .into_iter()
            .find(|k| k.name == name)
            .ok_or_else(|| RpcError::new(ErrorCode::NotFound, format!("kernel {name:?} not found")))
    }
}

impl Handler for methods::KernelDelete {
    async fn handle(ctx: RequestCtx, NameParams { name }: NameParams) -> Result<Deleted, RpcError> {
        let k = artifacts::delete_kernel(&ctx.state, &name).await?;
        Ok(Deleted { deleted: k.name })
    }
}

impl Handler for methods::OpStatus {
    async fn handle(ctx: RequestCtx, OpRef { op_id }: OpRef) -> Result<OpView, RpcError> {
        Ok(ctx.state.ops.get(&op_id)?.view())
    }
}

impl Handler for methods::OpCancel {
    async fn handle(ctx: RequestCtx, OpRef { op_id }: OpRef) -> Result<OpView, RpcError> {
        let op = ctx.state.ops.get(&op_id)?;
        tracing::info!(target_op = %op_id, "cancel requested");
        op.cancel_token().cancel();
        Ok(op.view())
    }
}

impl Handler for methods::OpList {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<Vec<OpView>, RpcError> {
        Ok(ctx.state.ops.list())
    }
}

impl Handler for methods::Doctor {
    async fn handle(
        ctx: RequestCtx,
        DoctorParams { probe }: DoctorParams,
    ) -> Result<DoctorReport, RpcError> {
        crate::doctor::run(&ctx.state, probe).await
    }
}
