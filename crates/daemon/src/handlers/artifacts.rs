//! `image.*`, `kernel.*`, `op.*` and `doctor` handlers.

use std::sync::Arc;

use banger_proto::OpKind;
use banger_proto::methods::{self, NoParams};
use banger_proto::vm::{
    Deleted, DoctorParams, DoctorReport, ImageBuildParams, ImageCachePruneParams,
    ImageCachePruneResult, ImagePromoteParams, ImagePullParams, ImageView, KernelImportParams,
    KernelPullParams, KernelView, NameParams, OpRef, OpStatusParams, OpView,
};
use tracing::Instrument;

use super::to_value;
use crate::artifacts;
use crate::dispatch::{Handler, RequestCtx, RpcError};
use crate::validate;

impl Handler for methods::ImageBuildBegin {
    async fn handle(ctx: RequestCtx, p: ImageBuildParams) -> Result<OpView, RpcError> {
        let artifacts = Arc::clone(&ctx.state.artifacts);
        let name = p
            .name
            .unwrap_or_else(|| artifacts.default_image().to_owned());
        validate::name("image", &name)?;
        artifacts::validate_packages(&p.packages)?;
        let spec = artifacts::BuildSpec {
            packages: p.packages,
            size_bytes: p.size_bytes,
            preset: p.preset.map(|banger_proto::vm::ImagePreset::Opencode| {
                banger_image::services::Preset::Opencode
            }),
            services: p
                .services
                .into_iter()
                .map(|s| banger_image::services::Service {
                    name: s.name,
                    command: s.command,
                    port: s.port,
                    workdir: s.workdir,
                    env: Vec::new(),
                })
                .collect(),
        };
        artifacts::validate_services(&spec.services)?;
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
                    let image = artifacts.build_image(&name, spec, &op).await?;
                    to_value(artifacts.image_view(&image).await?)
                };
                built.await.map_err(RpcError::into_body)
            },
        );
        Ok(op.view())
    }
}

impl Handler for methods::ImagePullBegin {
    async fn handle(ctx: RequestCtx, p: ImagePullParams) -> Result<OpView, RpcError> {
        let req = pull_request(p)?;
        let artifacts = Arc::clone(&ctx.state.artifacts);
        let target = req.name.clone();
        let op = ctx.state.ops.begin(
            &ctx.op_id,
            OpKind::ImagePull,
            &target,
            move |op| async move {
                let pulled = async {
                    let image = artifacts.pull_image(req, &op).await?;
                    to_value(artifacts.image_view(&image).await?)
                };
                pulled.await.map_err(RpcError::into_body)
            },
        );
        Ok(op.view())
    }
}

/// Checks `image.pull.begin`'s params: the reference, the platform, the
/// name (given, or derived from the reference), the credentials.
fn pull_request(p: ImagePullParams) -> Result<artifacts::PullRequest, RpcError> {
    let reference = validate::image_reference(&p.reference)?;
    let platform = p.platform.as_deref().map(validate::platform).transpose()?;
    let name = p
        .name
        .unwrap_or_else(|| artifacts::derived_name(&reference));
    validate::name("image", &name)?;
    Ok(artifacts::PullRequest {
        reference,
        name,
        platform,
        insecure: p.insecure,
        credentials: validate::credentials(p.username, p.password)?,
        if_missing: p.if_missing,
    })
}

impl Handler for methods::ImageCachePrune {
    async fn handle(
        ctx: RequestCtx,
        ImageCachePruneParams { dry_run }: ImageCachePruneParams,
    ) -> Result<ImageCachePruneResult, RpcError> {
        let report = ctx.state.artifacts.prune_cache(dry_run).await?;
        Ok(ImageCachePruneResult {
            dir: report.dir.display().to_string(),
            blobs: report.blobs,
            bytes: report.bytes,
            dry_run: report.dry_run,
        })
    }
}

impl Handler for methods::ImagePromote {
    async fn handle(ctx: RequestCtx, p: ImagePromoteParams) -> Result<ImageView, RpcError> {
        let op = crate::op::OpCtx::new(ctx.op_id.clone(), Default::default());
        let image = ctx.state.vms.promote(&p, &op).await?;
        Ok(ctx.state.artifacts.image_view(&image).await?)
    }
}

impl Handler for methods::ImageList {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<Vec<ImageView>, RpcError> {
        Ok(ctx.state.artifacts.images().await?)
    }
}

impl Handler for methods::ImageShow {
    async fn handle(
        ctx: RequestCtx,
        NameParams { name }: NameParams,
    ) -> Result<ImageView, RpcError> {
        Ok(ctx.state.artifacts.image(&name).await?)
    }
}

impl Handler for methods::ImageDelete {
    async fn handle(ctx: RequestCtx, NameParams { name }: NameParams) -> Result<Deleted, RpcError> {
        let image = ctx.state.artifacts.delete_image(&name).await?;
        Ok(Deleted {
            deleted: image.name,
        })
    }
}

impl Handler for methods::KernelPullBegin {
    async fn handle(ctx: RequestCtx, p: KernelPullParams) -> Result<OpView, RpcError> {
        let artifacts = Arc::clone(&ctx.state.artifacts);
        let name = p
            .name
            .unwrap_or_else(|| artifacts.default_kernel().to_owned());
        validate::name("kernel", &name)?;
        artifacts.check_kernel_pullable(&name).await?;
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
        Ok(op.view())
    }
}

impl Handler for methods::KernelImport {
    async fn handle(ctx: RequestCtx, p: KernelImportParams) -> Result<KernelView, RpcError> {
        validate::name("kernel", &p.name)?;
        let artifacts = Arc::clone(&ctx.state.artifacts);
        let files = artifacts::ImportFiles {
            kernel: p.kernel.into(),
            initrd: p.initrd.map(Into::into),
            modules: p.modules.map(Into::into),
        };
        // A task of its own: a client that hangs up mid-copy does not cut
        // the import short between its files and its row (it completes,
        // or fails leaving nothing).
        let name = p.name;
        let import = tokio::spawn(
            async move {
                let k = artifacts.import_kernel(&name, files).await?;
                Ok::<_, artifacts::ArtifactError>(artifacts.pulled_kernel_view(&k))
            }
            .instrument(tracing::Span::current()),
        );
        match import.await {
            Ok(view) => Ok(view?),
            Err(source) => Err(artifacts::ArtifactError::Task {
                what: "import kernel".into(),
                source,
            }
            .into()),
        }
    }
}

impl Handler for methods::KernelList {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<Vec<KernelView>, RpcError> {
        Ok(ctx.state.artifacts.kernel_views().await?)
    }
}

impl Handler for methods::KernelShow {
    async fn handle(
        ctx: RequestCtx,
        NameParams { name }: NameParams,
    ) -> Result<KernelView, RpcError> {
        Ok(ctx.state.artifacts.kernel_view_named(&name).await?)
    }
}

impl Handler for methods::KernelDelete {
    async fn handle(ctx: RequestCtx, NameParams { name }: NameParams) -> Result<Deleted, RpcError> {
        let k = ctx.state.artifacts.delete_kernel(&name).await?;
        Ok(Deleted { deleted: k.name })
    }
}

impl Handler for methods::OpStatus {
    async fn handle(
        ctx: RequestCtx,
        OpStatusParams { op_id, wait_ms }: OpStatusParams,
    ) -> Result<OpView, RpcError> {
        let op = ctx.state.ops.get(&op_id)?;
        Ok(match wait_ms {
            Some(ms) => {
                let ms = ms.min(banger_proto::vm::OP_STATUS_MAX_WAIT_MS);
                op.view_after_change(std::time::Duration::from_millis(u64::from(ms)))
                    .await
            }
            None => op.view(),
        })
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
        let state = &ctx.state;
        let inputs = crate::doctor::Inputs {
            db: &state.db,
            accel: &state.accel,
            helper: state.network.helper(),
            vmms: &state.vmms,
            default_kernel: &state.config.defaults.kernel,
            data_dir: &state.config.layout.data_dir,
            op: &ctx.op_id,
        };
        Ok(crate::doctor::run(inputs, probe).await?)
    }
}
