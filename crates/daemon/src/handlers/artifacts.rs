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
            return Err(crate::dispatch::RpcError::bad_params(format!(
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
        &ctx.op_id,
        OpKind::ImageBuild,
        &target,
        move |op| async move {
            let built = async {
                let image =
                    artifacts::build_image(&state, &name, p.packages, p.size_bytes, op.operation())
                        .await?;
                to_value(artifacts::image_view(&state, &image).await?)
            };
            built.await.map_err(RpcError::into_body)
        },
    );
    to_value(op.view())
}

pub(crate) async fn image_list(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::IMAGE_LIST, &p)?;
    let images = ctx.state.with_store(|s| s.images()).await?;
    let mut views = Vec::new();
    for i in &images {
        views.push(artifacts::image_view(&ctx.state, i).await?);
    }
    to_value(views)
}

pub(crate) async fn image_show(ctx: RequestCtx, p: Value) -> HandlerResult {
    let NameParams { name } = params(methods::IMAGE_SHOW, p)?;
    let image = ctx.state.with_store(move |s| s.image(&name)).await?;
    to_value(artifacts::image_view(&ctx.state, &image).await?)
}

pub(crate) async fn image_delete(ctx: RequestCtx, p: Value) -> HandlerResult {
    let NameParams { name } = params(methods::IMAGE_DELETE, p)?;
    let image = artifacts::delete_image(&ctx.state, &name).await?;
    to_value(serde_json::json!({ "deleted": image.name }))
}

pub(crate) async fn kernel_pull_begin(ctx: RequestCtx, p: Value) -> HandlerResult {
    let p: KernelPullParams = params(methods::KERNEL_PULL_BEGIN, p)?;
    let name = p
        .name
        .unwrap_or_else(|| ctx.state.config.defaults.kernel.clone());
    validate::name("kernel", &name)?;
    artifacts::check_kernel_known(&ctx.state, &name).await?;
    let state = Arc::clone(&ctx.state);
    let target = name.clone();
    let op = ctx.state.ops.begin(
        &ctx.op_id,
        OpKind::KernelPull,
        &target,
        move |op| async move {
            let pulled = async {
                let k = artifacts::ensure_kernel(&state, &name, op.operation()).await?;
                to_value(artifacts::kernel_view(
                    &k.name,
                    "",
                    k.name == state.config.defaults.kernel,
                    Some(&k),
                ))
            };
            pulled.await.map_err(RpcError::into_body)
        },
    );
    to_value(op.view())
}

pub(crate) async fn kernel_list(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::KERNEL_LIST, &p)?;
    let records = ctx.state.with_store(|s| s.kernels()).await?;
    to_value(artifacts::kernel_views(&records))
}

pub(crate) async fn kernel_show(ctx: RequestCtx, p: Value) -> HandlerResult {
    let NameParams { name } = params(methods::KERNEL_SHOW, p)?;
    let records = ctx.state.with_store(|s| s.kernels()).await?;
    artifacts::kernel_views(&records)
        .into_iter()
        .find(|k| k.name == name)
        .map(to_value)
        .unwrap_or_else(|| {
            Err(crate::dispatch::RpcError::new(
                banger_proto::ErrorCode::NotFound,
                format!("kernel {name:?} not found"),
            ))
        })
}

pub(crate) async fn kernel_delete(ctx: RequestCtx, p: Value) -> HandlerResult {
    let NameParams { name } = params(methods::KERNEL_DELETE, p)?;
    let k = artifacts::delete_kernel(&ctx.state, &name).await?;
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
    };
    to_value(crate::doctor::run(inputs, probe).await?)
}
