//! `bangerd`, the unprivileged daemon that owns banger's state.
//!
//! Shape (after mini-redis's `server.rs`): [`start`] does the synchronous
//! set-up that can fail with a clear message (directories, the single-
//! instance lock, the socket, the database, logging), then [`server::run`]
//! accepts connections until a shutdown future fires. Each connection is a
//! task; each request on it is dispatched through the one method table in
//! [`dispatch`] under a tracing span that carries its op id.

mod accel;
pub mod agent;
mod artifacts;
pub mod config;
mod db;
pub mod disks;
pub mod dispatch;
pub mod dns;
mod doctor;
mod error;
pub mod events;
mod handlers;
pub mod helper_client;
mod instance;
pub mod logging;
mod network;
mod op;
mod ops;
mod ssh;
mod state;
#[cfg(test)]
mod testing;
mod validate;
mod vmms;
mod vms;
mod workspaces;

pub use config::DaemonConfig;
pub use dispatch::server;
pub use error::DaemonError;
pub use instance::Instance;
pub use network::DEFAULT_TAP_POOL;
pub use state::DaemonState;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Runs the daemon until SIGTERM, SIGINT or `daemon.shutdown`.
///
/// Logging must already be initialised (see [`logging::init`]).
pub fn run_until_signalled(config: DaemonConfig) -> Result<(), DaemonError> {
    let (instance, std_listener) = Instance::acquire(&config.layout)?;
    let store = banger_store::Store::open(&config.layout.database_path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bangerd")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener).map_err(|source| {
            DaemonError::Bind {
                path: config.layout.socket_path(),
                source,
            }
        })?;
        let shutdown = CancellationToken::new();
        let qemu: Arc<dyn banger_vmm::Vmm> = Arc::new(
            banger_vmm::QemuVmm::detect()
                .unwrap_or_else(|_| banger_vmm::QemuVmm::new("qemu-system-x86_64")),
        );
        let vmms = vmms::Vmms::detect(qemu, config.firecracker_bin.as_deref());
        let state = Arc::new(DaemonState::new(config, store, vmms, shutdown.clone()));
        // Adopt VMs that survived a daemon restart, clean up after dead ones.
        if let Err(e) = state.vms.reconcile().await {
            tracing::error!(error = %e, "reconcile failed; continuing");
        }
        // What a crash left of snapshots: unfinished directories, helpers.
        if let Err(e) = state.vms.collect_garbage().await {
            tracing::error!(error = %crate::error::chain(&e), "snapshot cleanup failed; continuing");
        }
        // Stats samples of running VMs, so `vm stats` can tell CPU usage.
        vms::guest::spawn_sampler(
            Arc::clone(&state.guest),
            state.config.stats_interval,
            state.shutdown.clone(),
        );
        // Cap running VMs' console logs (adopted ones included).
        state
            .vms
            .spawn_console_watcher(state.config.console_log_max, state.shutdown.clone());
        // Measure the host's TSC rate for TCG guests now, off the path of
        // the first boot (cached per host boot, so usually a file read).
        tokio::spawn({
            let accel = Arc::clone(&state.accel);
            async move { accel.host_tsc_khz().await }
        });
        // Bridged networking when the helper answers: bridge, NAT, DNS and
        // the TAPs left by the previous daemon (held, idle or surplus).
        // The set-up has an op id of its own, on its log lines and on the
        // helper calls it makes.
        let op = op::mint();
        let span = tracing::info_span!("network_setup", op_id = %op);
        let _entered = span.enter();
        drop(_entered);
        if state.network.helper_answers(&op).await {
            let ready = state
                .network
                .ready(&op, &state.vms.held_taps())
                .instrument(span)
                .await;
            if let Err(e) = ready {
                tracing::warn!(op_id = %op, error = %error::chain(&e), "bridged networking unavailable");
            }
        } else {
            tracing::info!(
                socket = %state.network.helper().socket().display(),
                "banger-helper does not answer; bridged networking off (user mode only)"
            );
        }
        tracing::info!(
            pid = std::process::id(),
            socket = %state.config.layout.socket_path().display(),
            version = %state.config.version,
            build_id = %state.config.build_id,
            "daemon started"
        );
        let signals = server::signals(shutdown.clone())?;
        server::run(listener, Arc::clone(&state), shutdown).await;
        signals.abort();
        state.vms.remove_ram_dir_if_empty();
        // Remove the socket while still holding the lock, so a daemon that
        // starts next never sees our socket as its own.
        instance.release();
        tracing::info!(pid = std::process::id(), "daemon stopped");
        Ok(())
    })
}
