//! `image.*`, `kernel.*`, `op.*` and `doctor` handlers.

use std::sync::Arc;

use banger_proto::vm::{ImageBuildParams, KernelPullParams, NameParams, OpRef};
use banger_proto::{OpKind, methods};
use serde::Deserialize;
use serde_json::Value;

use super::{no_params, to_value};
use crate::artifacts;
use crate::dispatch::{HandlerResult, RequestCtx, RpcError, params};
use crate::validate;

pub(crate) async fn image_build_begin(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: ImageBuildParams = params(methods::IMAGE_BUILD_BEGIN, p)?;
    let artifacts = Arc::clone(&ctx.state.artifacts);
    let name = p
        .name
        .unwrap_or_else(|| artifacts.default_image().to_owned());
    validate::name("image", &name)?;
    artifacts::validate_packages(&p.packages)?;
    if let Some(size) = p.size_bytes {
        validate::image_size(size)?;
    }
    let target = name.clone();
    let op = ctx.state.ops.begin(
        &ctx.op_id,
        OpKind::ImageBuild,
        &target,
        move |op| async move {
            let built = async {
                let image = artifacts
                    .build_image(&name, p.packages, p.size_bytes, &op)
                    .await?;
                to_value(artifacts.image_view(&image).await?)
            };
            built.await.map_err(RpcError::into_body)
        },
    );
    to_value(op.view())
}

pub(crate) async fn image_list(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::IMAGE_LIST, &p)?;
    to_value(ctx.state.artifacts.images().await?)
}

pub(crate) async fn image_show(ctx: RequestCtx, p: Value) -> HandlerResult {
    let NameParams { name } = params(methods::IMAGE_SHOW, p)?;
    to_value(ctx.state.artifacts.image(&name).await?)
}

pub(crate) async fn image_delete(ctx: RequestCtx, p: Value) -> HandlerResult {
    let NameParams { name } = params(methods::IMAGE_DELETE, p)?;
    let image = ctx.state.artifacts.delete_image(&name).await?;
    to_value(serde_json::json!({ "deleted": image.name }))
}

pub(crate) async fn kernel_pull_begin(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: KernelPullParams = params(methods::KERNEL_PULL_BEGIN, p)?;
    let artifacts = Arc::clone(&ctx.state.artifacts);
    let name = p
        .name
        .unwrap_or_else(|| artifacts.default_kernel().to_owned());
    validate::name("kernel", &name)?;
    artifacts.check_kernel_known(&name).await?;
    let target = name.clone();
    let op = ctx.state.ops.begin(
        &ctx.op_id,
        OpKind::KernelPull,
        &target,
        move |op| async move {
            let pulled = async {
                let k = artifacts.ensure_kernel(&name, &op).await?;
                to_value(artifacts.pulled_kernel_view(&k))
            };
            pulled.await.map_err(RpcError::into_body)
        },
    );
    to_value(op.view())
}

pub(crate) async fn kernel_list(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::KERNEL_LIST, &p)?;
    to_value(ctx.state.artifacts.kernel_views().await?)
}

pub(crate) async fn kernel_show(ctx: RequestCtx, p: Value) -> HandlerResult {
    let NameParams { name } = params(methods::KERNEL_SHOW, p)?;
    to_value(ctx.state.artifacts.kernel_view_named(&name).await?)
}

pub(crate) async fn kernel_delete(ctx: RequestCtx, p: Value) -> HandlerResult {
    let NameParams { name } = params(methods::KERNEL_DELETE, p)?;
    let k = ctx.state.artifacts.delete_kernel(&name).await?;
    to_value(serde_json::json!({ "deleted": k.name }))
}

pub(crate) async fn op_status(ctx: RequestCtx, p: Value) -> HandlerResult {
    let OpRef { op_id } = params(methods::OP_STATUS, p)?;
    to_value(ctx.state.ops.get(&op_id)?.view())
}

pub(crate) async fn op_cancel(ctx: RequestCtx, p: Value) -> HandlerResult {
    let OpRef { op_id } = params(methods::OP_CANCEL, p)?;
    let op = ctx.state.ops.get(&op_id)?;
    tracing::info!(target_op = %op_id, "cancel requested");
    op.cancel_token().cancel();
    to_value(op.view())
}

pub(crate) async fn op_list(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::OP_LIST, &p)?;
    to_value(ctx.state.ops.list())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DoctorParams {
    #[serde(default)]
    probe: bool,
}

pub(crate) async fn doctor(ctx: RequestCtx, p: Value) -> HandlerResult {
    let DoctorParams { probe } = params(methods::DOCTOR, p)?;
    let state = &ctx.state;
    let inputs = crate::doctor::Inputs {
        db: &state.db,
        accel: &state.accel,
        helper: state.network.helper(),
        backend: state.vmm.kind(),
        default_kernel: &state.config.defaults.kernel,
        data_dir: &state.config.layout.data_dir,
        op: &ctx.op_id,
    };
    to_value(crate::doctor::run(inputs, probe).await?)
}
