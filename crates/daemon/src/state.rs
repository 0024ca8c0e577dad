use std::sync::Arc;
use std::time::Instant;

use banger_store::Store;
use tokio_util::sync::CancellationToken;

use crate::DaemonConfig;

/// What every request handler can reach.
///
/// Lock order: a VM's lock (`vms`), then an artifact lock (in `artifacts`),
/// then the leaf std mutexes (handles map, operation registry, `store`),
/// which are never held across an `.await`; `store` is only taken inside
/// `spawn_blocking`.
#[derive(Debug)]
pub struct DaemonState {
    pub config: DaemonConfig,
    pub started: Instant,
    pub db: crate::db::Db,
    /// Fired by `daemon.shutdown` or a signal; the accept loop and every
    /// idle connection watch it.
    pub shutdown: CancellationToken,
    pub ops: crate::ops::OpRegistry,
    pub vms: Arc<crate::vms::VmTable>,
    pub reservations: crate::vms::Reservations,
    /// Kernels and images, pulled or built on demand.
    pub artifacts: Arc<crate::artifacts::Artifacts>,
    /// KVM or TCG for each boot.
    pub accel: Arc<crate::accel::AccelChooser>,
    pub vmm: Arc<dyn banger_vmm::Vmm>,
    pub ssh: crate::ssh::SshPaths,
    pub network: Arc<crate::network::Network>,
    /// Guest access: readiness, stats, ports, exec, cp.
    pub guest: Arc<crate::vms::guest::Guest>,
    #[cfg(test)]
    pub probe: crate::handlers::test_methods::Probe,
}

impl DaemonState {
    pub fn new(
        config: DaemonConfig,
        store: Store,
        vmm: Arc<dyn banger_vmm::Vmm>,
        shutdown: CancellationToken,
    ) -> Self {
        let db = crate::db::Db::new(store);
        let vms: Arc<crate::vms::VmTable> = Arc::default();
        let guest = Arc::new(crate::vms::guest::Guest::new(
            db.clone(),
            Arc::clone(&vms),
            Arc::clone(&vmm),
            &config.layout.data_dir,
            config.boot_timeout,
        ));
        let ssh = crate::ssh::SshPaths::new(&config.layout);
        Self {
            artifacts: Arc::new(crate::artifacts::Artifacts::new(
                db.clone(),
                &config,
                ssh.clone(),
            )),
            accel: Arc::new(crate::accel::AccelChooser::new(
                config.accel,
                config.layout.cache_dir.clone(),
            )),
            ssh,
            network: Arc::new(crate::network::Network::new(
                crate::helper_client::HelperClient::new(&config.helper_socket),
                db.clone(),
                config.tap_pool,
                shutdown.clone(),
            )),
            guest,
            config,
            started: Instant::now(),
            db,
            shutdown,
            ops: Default::default(),
            vms,
            reservations: Default::default(),
            vmm,
            #[cfg(test)]
            probe: Default::default(),
        }
    }

    /// Runs `f` with the store on a blocking thread.
    pub async fn with_store<T, F>(self: &Arc<Self>, f: F) -> Result<T, crate::dispatch::RpcError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, banger_store::StoreError> + Send + 'static,
    {
        self.db.call(f).await.map_err(Into::into)
    }

    #[cfg(test)]
    pub(crate) fn lock_store_for_tests(&self) -> std::sync::MutexGuard<'_, Store> {
        self.db.lock_for_tests()
    }
}
