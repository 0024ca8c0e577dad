use banger_proto::methods::{self, DaemonStatus, PingResult, ShutdownResult, StoreStatus};
use serde_json::Value;

use super::{no_params, to_value};
use crate::dispatch::{HandlerResult, RequestCtx};

pub(crate) async fn ping(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::PING, &p)?;
    let config = &ctx.state.config;
    to_value(PingResult {
        version: config.version.clone(),
        build_id: config.build_id.clone(),
        pid: std::process::id(),
    })
}

pub(crate) async fn daemon_status(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::DAEMON_STATUS, &p)?;
    let store = ctx
        .state
        .with_store(|s| {
            let (vms, images, kernels) = s.counts()?;
            Ok(StoreStatus {
                path: s.path().display().to_string(),
                schema_version: s.schema_version()?,
                vms,
                images,
                kernels,
            })
        })
        .await?;
    let config = &ctx.state.config;
    to_value(DaemonStatus {
        version: config.version.clone(),
        build_id: config.build_id.clone(),
        protocol_version: banger_proto::PROTOCOL_VERSION,
        pid: std::process::id(),
        uptime_s: ctx.state.started.elapsed().as_secs(),
        socket: config.layout.socket_path().display().to_string(),
        log_file: config.layout.log_file().display().to_string(),
        store,
    })
}

pub(crate) async fn daemon_shutdown(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::DAEMON_SHUTDOWN, &p)?;
    tracing::info!("shutdown requested");
    ctx.state.shutdown.cancel();
    to_value(ShutdownResult {
        pid: std::process::id(),
    })
}
