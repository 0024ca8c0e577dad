use banger_proto::methods::{
    self, DaemonStatus, IpLease, NetworkStatus, PingResult, ShutdownResult, StoreStatus,
};
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
        .db
        .call(|s| {
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

pub(crate) async fn network_status(ctx: RequestCtx, p: Value) -> HandlerResult {
    no_params(methods::NETWORK_STATUS, &p)?;
    let state = &ctx.state;
    let network = &state.network;
    let helper = network.helper_answers(&ctx.op_id).await;
    if helper {
        // Sets the bridge up if the helper appeared after the daemon started.
        if let Err(e) = network.ready(&ctx.op_id, &state.vms.held_taps()).await {
            tracing::warn!(error = %crate::error::chain(&e), "bridged networking unavailable");
        }
    }
    let bridge = network.bridge();
    let (idle_taps, taps_in_use) = network.taps();
    let leases = state
        .db
        .call(|s| {
            let names: std::collections::HashMap<String, String> =
                s.vms()?.into_iter().map(|v| (v.id, v.name)).collect();
            Ok(s.leases()?
                .into_iter()
                .map(|(vm_id, address)| IpLease {
                    vm: names.get(&vm_id).cloned().unwrap_or(vm_id),
                    address,
                })
                .collect::<Vec<_>>())
        })
        .await?;
    to_value(NetworkStatus {
        helper_socket: network.helper().socket().display().to_string(),
        helper,
        bridge: bridge.as_ref().map(|b| b.name.clone()),
        subnet: bridge.as_ref().map(|b| b.subnet.to_string()),
        gateway: bridge.as_ref().map(|b| b.gateway.to_string()),
        tap_pool_size: network.pool_target(),
        idle_taps,
        taps_in_use,
        leases,
    })
}
