//! `ping`, `daemon.*`, `events.subscribe` and `network.status` handlers.

use banger_proto::ErrorCode;
use banger_proto::daemon::{
    DaemonStatus, IpLease, NetworkStatus, PingResult, ShutdownParams, ShutdownResult, StoreStatus,
};
use banger_proto::events::{EventsSubscribeParams, EventsSubscribed};
use banger_proto::methods::{self, NoParams};

use crate::dispatch::{Handler, RequestCtx, RpcError};

/// Answers with where the stream starts and hands the subscription to the
/// connection, which sends the events after the answer
/// (`dispatch/server.rs`).
impl Handler for methods::EventsSubscribe {
    async fn handle(
        ctx: RequestCtx,
        p: EventsSubscribeParams,
    ) -> Result<EventsSubscribed, RpcError> {
        let sub = ctx.state.events.subscribe(p.since, p.epoch.as_deref());
        let answer = sub.answer.clone();
        ctx.follow.set(sub);
        Ok(answer)
    }
}

impl Handler for methods::Ping {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<PingResult, RpcError> {
        let config = &ctx.state.config;
        Ok(PingResult {
            version: config.version.clone(),
            build_id: config.build_id.clone(),
            pid: std::process::id(),
        })
    }
}

impl Handler for methods::DaemonStatus {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<DaemonStatus, RpcError> {
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
        Ok(DaemonStatus {
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
}

impl Handler for methods::DaemonShutdown {
    async fn handle(ctx: RequestCtx, p: ShutdownParams) -> Result<ShutdownResult, RpcError> {
        if p.if_idle {
            ctx.state
                .ops
                .close_if_idle()
                .map_err(|busy| RpcError::new(ErrorCode::Conflict, busy.to_string()))?;
        } else {
            ctx.state.ops.close();
        }
        tracing::info!(if_idle = p.if_idle, "shutdown requested");
        ctx.state.shutdown.cancel();
        Ok(ShutdownResult {
            pid: std::process::id(),
        })
    }
}

impl Handler for methods::NetworkStatus {
    async fn handle(ctx: RequestCtx, _: NoParams) -> Result<NetworkStatus, RpcError> {
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
        Ok(NetworkStatus {
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
}
