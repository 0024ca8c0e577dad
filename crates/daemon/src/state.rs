use std::sync::Arc;
use std::time::Instant;

use banger_store::Store;
use tokio_util::sync::CancellationToken;

use crate::DaemonConfig;
use crate::accel::AccelChooser;
use crate::artifacts::Artifacts;
use crate::db::Db;
use crate::events::EventBus;
use crate::helper_client::HelperClient;
use crate::network::Network;
use crate::ops::OpRegistry;
use crate::ssh::SshPaths;
use crate::vms::guest::Guest;
use crate::vms::{VmDeps, VmTable, Vms};

/// Where the daemon's services are assembled; the RPC edge reaches them
/// through it. Each service holds only the others it needs (see `new`),
/// never this struct.
///
/// Lock order: a VM's lock (in `vms`), then an artifact lock (in
/// `artifacts`), then the leaf std mutexes (handles map, operation
/// registry, the store's, then the event bus's), which are never held
/// across an `.await`; the store's is only taken inside `spawn_blocking`. A VM's workspace lock
/// (in `workspaces`) is never held with a VM's lock.
#[derive(Debug)]
pub struct DaemonState {
    pub config: DaemonConfig,
    pub started: Instant,
    pub db: Db,
    /// Fired by `daemon.shutdown` or a signal; the accept loop and every
    /// idle connection watch it.
    pub shutdown: CancellationToken,
    pub ops: OpRegistry,
    /// State changes and operation stages, for `events.subscribe`.
    pub events: Arc<EventBus>,
    /// VMs: create, start, stop, edit, delete, reconcile.
    pub vms: Arc<Vms>,
    /// Kernels and images, pulled or built on demand.
    pub artifacts: Arc<Artifacts>,
    /// KVM or TCG for each boot.
    pub accel: Arc<AccelChooser>,
    pub vmms: crate::vmms::Vmms,
    pub ssh: SshPaths,
    pub network: Arc<Network>,
    /// Guest access: readiness, stats, ports, exec, cp.
    pub guest: Arc<Guest>,
    /// Host projects put into guests, and their changes back.
    pub workspaces: Arc<crate::workspaces::Workspaces>,
    #[cfg(test)]
    pub probe: crate::testing::Probe,
}

impl DaemonState {
    pub fn new(
        config: DaemonConfig,
        store: Store,
        vmms: impl Into<crate::vmms::Vmms>,
        shutdown: CancellationToken,
    ) -> Self {
        let root_devices = Arc::new(crate::disks::dm::HelperRootDevices(HelperClient::new(
            &config.helper_socket,
        )));
        Self::with_root_devices(config, store, vmms, shutdown, root_devices)
    }

    /// As [`Self::new`], with device-mapper root disks made by
    /// `root_devices` (tests' doubles).
    pub(crate) fn with_root_devices(
        config: DaemonConfig,
        mut store: Store,
        vmms: impl Into<crate::vmms::Vmms>,
        shutdown: CancellationToken,
        root_devices: Arc<dyn crate::disks::dm::RootDevices>,
    ) -> Self {
        let vmms: crate::vmms::Vmms = vmms.into();
        let events = Arc::new(EventBus::new(config.event_capacity));
        store.observe(events.store_observer());
        let db = Db::new(store);
        let table: Arc<VmTable> = Arc::default();
        let ssh = SshPaths::new(&config.layout);
        let guest = Arc::new(Guest::new(
            db.clone(),
            Arc::clone(&table),
            vmms.clone(),
            &config.layout.data_dir,
            config.boot_timeout,
            config.cp_reserve,
        ));
        let workspaces = Arc::new(crate::workspaces::Workspaces::new(
            db.clone(),
            Arc::clone(&guest),
            &config.layout.data_dir,
        ));
        let artifacts = Arc::new(Artifacts::new(db.clone(), &config, ssh.clone()));
        let accel = Arc::new(AccelChooser::new(
            config.accel,
            config.layout.cache_dir.clone(),
        ));
        let network = Arc::new(Network::new(
            HelperClient::new(&config.helper_socket),
            db.clone(),
            config.tap_pool,
            shutdown.clone(),
        ));
        let vms = Vms::new_shared(
            VmDeps {
                db: db.clone(),
                vmms: vmms.clone(),
                network: Arc::clone(&network),
                artifacts: Arc::clone(&artifacts),
                accel: Arc::clone(&accel),
                guest: Arc::clone(&guest),
                ssh: ssh.clone(),
                table,
                root_devices,
            },
            &config,
        );
        Self {
            config,
            started: Instant::now(),
            db,
            shutdown,
            ops: OpRegistry::new(Arc::clone(&events)),
            events,
            vms,
            artifacts,
            accel,
            vmms,
            ssh,
            network,
            guest,
            workspaces,
            #[cfg(test)]
            probe: Default::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn lock_store_for_tests(&self) -> std::sync::MutexGuard<'_, Store> {
        self.db.lock_for_tests()
    }
}
