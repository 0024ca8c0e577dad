//! Bridged networking on the daemon's side (docs/networking.md): the bridge and NAT
//! (made by banger-helper), a warm pool of idle TAP devices, durable IP
//! leases, the DNS server for `NAME.vm`, and loopback proxies for ports a
//! bridged VM publishes.
//!
//! The daemon never touches the host's network itself: every change is a
//! typed call to the helper, which owns the bridge name and subnet (its
//! `ping` tells us both, so the two never disagree). What is only true
//! while a VM runs (its TAP) is a handle (docs/capabilities.md, "State"); its address is a lease
//! in SQLite for the VM's whole life, so `NAME.vm` stays put across
//! restarts. On daemon start [`Network::ready`] lists the TAPs that exist
//! and sorts them into "held by a running VM", "idle" and "delete".
//!
//! Locks: `setup` (tokio mutex, held across helper calls while the bridge
//! is being set up) comes before the std mutexes, which are leaves and are
//! never held across an await.

mod egress;
mod error;
mod pool;
mod proxy;
pub mod subnet;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use banger_proto::helper::{HelperCall, HelperReply};
use banger_proto::{Egress, PortProto, PublishSpec};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::db::Db;
use crate::error::chain;
use crate::helper_client::{HelperClient, HelperClientError};
use crate::op::OpId;
pub use egress::{EgressTable, HeldTap, rules_for};
pub use error::NetworkError;
pub use pool::TapPool;
pub use subnet::{Subnet, mac_for};

/// Idle TAPs kept ready unless `BANGER_TAP_POOL` says otherwise.
pub const DEFAULT_TAP_POOL: usize = banger_config::DEFAULT_TAP_POOL;

/// How long "is the helper there?" may take when choosing a VM's network.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The bridge as the helper set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
}

/// `NAME` → address, for the DNS server (read on every query).
#[derive(Debug, Default)]
pub struct NameTable(RwLock<HashMap<String, Ipv4Addr>>);

impl NameTable {
    fn replace(&self, names: HashMap<String, Ipv4Addr>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = names;
    }
}

impl crate::dns::VmResolver for NameTable {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }
}

#[derive(Debug)]
pub struct Network {
    helper: HelperClient,
    db: Db,
    pool_target: usize,
    setup: tokio::sync::Mutex<()>,
    bridge: Mutex<Option<Bridge>>,
    pool: Mutex<TapPool>,
    names: Arc<NameTable>,
    egress: Arc<EgressTable>,
    proxies: proxy::Proxies,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain bookkeeping; a panicked holder leaves nothing half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn helper_err(what: impl Into<String>) -> impl FnOnce(HelperClientError) -> NetworkError {
    move |source| NetworkError::Helper {
        what: what.into(),
        source,
    }
}

impl Network {
    pub fn new(
        helper: HelperClient,
        db: Db,
        pool_target: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            helper,
            db,
            pool_target,
            setup: tokio::sync::Mutex::new(()),
            bridge: Mutex::new(None),
            pool: Mutex::new(TapPool::default()),
            names: Arc::default(),
            egress: Arc::default(),
            proxies: proxy::Proxies::default(),
            shutdown,
        }
    }

    pub fn helper(&self) -> &HelperClient {
        &self.helper
    }

    /// The bridge, if it has been set up.
    pub fn bridge(&self) -> Option<Bridge> {
        lock(&self.bridge).clone()
    }

    pub fn pool_target(&self) -> usize {
        self.pool_target
    }

    /// Idle TAPs kept when VMs give theirs back: up to twice the pool's
    /// size, so stopping and starting VMs recycles devices instead of
    /// deleting and recreating them; refills only top up to the size.
    fn max_idle(&self) -> usize {
        self.pool_target * 2
    }

    /// `(idle, in use)` TAP names.
    pub fn taps(&self) -> (Vec<String>, Vec<String>) {
        let pool = lock(&self.pool);
        (pool.idle(), pool.in_use())
    }

    /// True when the helper answers (briefly), i.e. bridged mode is possible.
    pub async fn helper_answers(&self, op: &OpId) -> bool {
        if self.bridge().is_some() {
            return true;
        }
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.helper.ping(op)).await,
            Ok(Ok(_))
        )
    }

    /// Sets up the bridge, NAT and DNS through the helper (once), sorts the
    /// TAPs that exist into held (`held`: those running VMs hold), idle and
    /// surplus, and fills the pool.
    pub async fn ready(
        self: &Arc<Self>,
        op: &OpId,
        held: &[HeldTap],
    ) -> Result<Bridge, NetworkError> {
        if let Some(b) = self.bridge() {
            return Ok(b);
        }
        let _setup = self.setup.lock().await;
        if let Some(b) = self.bridge() {
            return Ok(b);
        }
        let info = self
            .helper
            .ping(op)
            .await
            .map_err(helper_err("bridged networking needs banger-helper"))?;
        let subnet: Subnet = info.subnet.parse().map_err(NetworkError::BadSubnet)?;
        let bridge = Bridge {
            name: info.bridge.clone(),
            gateway: subnet.gateway(),
            subnet,
        };
        self.helper
            .call(
                op,
                HelperCall::BridgeEnsure {
                    name: bridge.name.clone(),
                },
            )
            .await
            .map_err(helper_err("set up the bridge"))?;
        self.helper
            .call(
                op,
                HelperCall::NatEnsure {
                    subnet: subnet.to_string(),
                },
            )
            .await
            .map_err(helper_err("set up NAT"))?;
        let held_names: Vec<String> = held.iter().map(|h| h.tap.clone()).collect();
        self.reconcile_taps(op, &bridge, &held_names).await?;
        self.reapply_egress(op, held).await;
        self.start_dns(op, &bridge).await;
        self.refresh_names().await;
        tracing::info!(bridge = %bridge.name, subnet = %bridge.subnet, gateway = %bridge.gateway, "bridged networking ready");
        *lock(&self.bridge) = Some(bridge.clone());
        self.refill(op);
        Ok(bridge)
    }

    /// Sorts existing banger TAPs: those running VMs hold stay held, the
    /// rest become idle up to the pool's size, and the surplus is deleted.
    async fn reconcile_taps(
        self: &Arc<Self>,
        op: &OpId,
        bridge: &Bridge,
        held: &[String],
    ) -> Result<(), NetworkError> {
        let listed = match self.helper.call(op, HelperCall::TapList).await {
            Ok(HelperReply::Taps { taps }) => taps,
            Ok(other) => {
                return Err(NetworkError::UnexpectedReply {
                    call: "tap_list",
                    reply: format!("{other:?}"),
                });
            }
            Err(e) => return Err(helper_err("list tap devices")(e)),
        };
        let mut surplus = Vec::new();
        {
            let mut pool = lock(&self.pool);
            pool.clear();
            for name in held {
                pool.adopt_in_use(name);
            }
            for tap in &listed {
                let on_our_bridge = tap.master.as_deref() == Some(bridge.name.as_str());
                if held.contains(&tap.name) {
                    continue;
                }
                if !(on_our_bridge && pool.adopt_idle(&tap.name, self.max_idle())) {
                    surplus.push(tap.name.clone());
                }
            }
        }
        for name in held {
            if !listed.iter().any(|t| &t.name == name) {
                tracing::warn!(tap = %name, "a running vm's tap device is gone; its network is down until restarted");
            }
        }
        for name in surplus {
            tracing::info!(tap = %name, "deleting surplus tap device");
            if let Err(e) = self
                .helper
                .call(op, HelperCall::TapDelete { name: name.clone() })
                .await
            {
                tracing::warn!(tap = %name, error = %chain(&e), "could not delete tap device");
            }
        }
        let (idle, in_use) = self.taps();
        tracing::info!(
            idle = idle.len(),
            in_use = in_use.len(),
            "tap devices reconciled"
        );
        Ok(())
    }

    /// A TAP for a VM: an idle one from the pool, or a new one.
    pub async fn acquire_tap(
        self: &Arc<Self>,
        op: &OpId,
        bridge: &Bridge,
    ) -> Result<String, NetworkError> {
        let taken = lock(&self.pool).take();
        let name = match taken {
            Some(name) => {
                tracing::info!(tap = %name, "took tap from the warm pool");
                name
            }
            None => {
                let name = self.create_tap(op, bridge, true).await?;
                tracing::info!(tap = %name, "pool empty; created tap");
                name
            }
        };
        self.refill(op);
        Ok(name)
    }

    async fn create_tap(
        &self,
        op: &OpId,
        bridge: &Bridge,
        for_vm: bool,
    ) -> Result<String, NetworkError> {
        let name = lock(&self.pool)
            .reserve_name()
            .ok_or(NetworkError::NoTapName)?;
        let call = HelperCall::TapCreate {
            name: name.clone(),
            owner_uid: rustix::process::geteuid().as_raw(),
            bridge: bridge.name.clone(),
        };
        match self.helper.call(op, call).await {
            Ok(_) => {
                lock(&self.pool).created(&name, for_vm);
                Ok(name)
            }
            Err(e) => {
                lock(&self.pool).abandon(&name);
                Err(helper_err(format!("create tap device {name}"))(e))
            }
        }
    }

    /// Tops the pool up to its size in the background, under the op id of
    /// the request that emptied it, so its helper calls trace back to it.
    pub fn refill(self: &Arc<Self>, op: &OpId) {
        let Some(bridge) = self.bridge() else {
            return;
        };
        if lock(&self.pool).missing(self.pool_target) == 0 {
            return;
        }
        let (this, op) = (Arc::clone(self), op.clone());
        let span = tracing::info_span!("tap_pool", op_id = %op);
        let work = async move {
            while lock(&this.pool).missing(this.pool_target) > 0 {
                if this.shutdown.is_cancelled() {
                    return;
                }
                match this.create_tap(&op, &bridge, false).await {
                    Ok(name) => tracing::info!(tap = %name, "tap pool refilled"),
                    Err(e) => {
                        tracing::warn!(error = %chain(&e), "tap pool refill failed");
                        return;
                    }
                }
            }
        };
        tokio::spawn(work.instrument(span));
    }

    /// Enforces `egress` for the VM at `ip` on `tap` (docs/networking.md,
    /// "Egress"). `fresh` (a VM starting) first clears whatever an earlier
    /// holder of that address or TAP left, DNS-learned addresses included.
    pub async fn apply_egress(
        &self,
        op: &OpId,
        tap: &str,
        ip: Ipv4Addr,
        egress: &Egress,
        fresh: bool,
    ) -> Result<(), NetworkError> {
        if fresh {
            let clear = HelperCall::EgressClear {
                tap: tap.to_owned(),
                addr: ip,
            };
            self.helper
                .call(op, clear)
                .await
                .map_err(helper_err(format!("clear the egress rules of {ip}")))?;
        }
        let call = HelperCall::EgressApply {
            tap: tap.to_owned(),
            addr: ip,
            rules: rules_for(egress),
        };
        self.helper
            .call(op, call)
            .await
            .map_err(helper_err(format!(
                "apply egress {} to {ip}",
                egress.mode_name()
            )))?;
        self.egress.set(ip, tap, egress);
        tracing::info!(tap = %tap, ip = %ip, egress = %egress, "egress rules applied");
        Ok(())
    }

    /// After a daemon restart: the running VMs' rules again (the helper's
    /// tables kept them; this repairs any that were lost) and the table
    /// the DNS server reads.
    async fn reapply_egress(&self, op: &OpId, held: &[HeldTap]) {
        if held.is_empty() {
            return;
        }
        let vms = match self.db.call(|s| s.vms()).await {
            Ok(vms) => vms,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "could not load vms to re-apply their egress rules");
                return;
            }
        };
        for h in held {
            let Some(vm) = vms.iter().find(|v| v.id == h.vm_id) else {
                continue;
            };
            if let Err(e) = self.apply_egress(op, &h.tap, h.ip, &vm.egress, false).await {
                tracing::warn!(vm = %vm.name, tap = %h.tap, error = %chain(&e), "could not re-apply egress rules");
            }
        }
    }

    /// Removes the egress rules of whatever VM `tap` carried. Blocking.
    fn clear_egress_blocking(&self, tap: &str, op: &OpId) {
        let Some(ip) = self.egress.remove_tap(tap) else {
            return;
        };
        let call = HelperCall::EgressClear {
            tap: tap.to_owned(),
            addr: ip,
        };
        match self.helper.call_blocking(op, &call) {
            Ok(_) => tracing::info!(tap = %tap, ip = %ip, "egress rules cleared"),
            Err(e) => {
                tracing::warn!(tap = %tap, ip = %ip, error = %chain(&e), "could not clear egress rules")
            }
        }
    }

    /// A VM let its TAP go: its egress rules cleared, then back to the
    /// pool, or deleted when the pool is full. Blocking (it runs in
    /// rollbacks too).
    pub fn release_tap_blocking(&self, name: &str, op: &OpId) {
        self.clear_egress_blocking(name, op);
        let keep = lock(&self.pool).give_back(name, self.max_idle());
        if keep {
            tracing::info!(tap = %name, "tap returned to the pool");
            return;
        }
        let call = HelperCall::TapDelete {
            name: name.to_owned(),
        };
        if let Err(e) = self.helper.call_blocking(op, &call) {
            tracing::warn!(tap = %name, error = %chain(&e), "could not delete tap device");
        } else {
            tracing::info!(tap = %name, "tap deleted (pool full)");
        }
        lock(&self.pool).abandon(name);
    }

    pub async fn release_tap(self: &Arc<Self>, op: &OpId, name: &str) {
        let (this, op) = (Arc::clone(self), op.clone());
        let name = name.to_owned();
        let _ = tokio::task::spawn_blocking(move || this.release_tap_blocking(&name, &op)).await;
    }

    /// The VM's address: its existing lease, or the first free one.
    pub async fn lease(&self, vm_id: &str, bridge: &Bridge) -> Result<Ipv4Addr, NetworkError> {
        let subnet = bridge.subnet;
        let vm_id = vm_id.to_owned();
        let leased = self
            .db
            .call(move |s| {
                s.lease_address(
                    &vm_id,
                    &subnet.to_string(),
                    subnet.guest_addresses().map(|a| a.to_string()),
                    crate::ops::now_ms(),
                )
            })
            .await?;
        let text = leased.ok_or_else(|| NetworkError::AddressesExhausted {
            subnet: subnet.to_string(),
        })?;
        text.parse().map_err(|_| NetworkError::BadLease(text))
    }

    /// Rebuilds the DNS names from the leases in the store.
    pub async fn refresh_names(&self) {
        let loaded = self.db.call(|s| Ok((s.leases()?, s.vms()?))).await;
        let (leases, vms) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "could not load dns names");
                return;
            }
        };
        let by_id: HashMap<&str, &str> = vms
            .iter()
            .map(|v| (v.id.as_str(), v.name.as_str()))
            .collect();
        let names = leases
            .iter()
            .filter_map(|(vm_id, addr)| {
                Some((
                    by_id.get(vm_id.as_str())?.to_ascii_lowercase(),
                    addr.parse().ok()?,
                ))
            })
            .collect();
        self.names.replace(names);
    }

    async fn start_dns(&self, op: &OpId, bridge: &Bridge) {
        let fd = match self.helper.dns_socket(op).await {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "no dns socket from banger-helper; NAME.vm will not resolve");
                return;
            }
        };
        let socket = match crate::dns::socket_from_fd(fd) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the dns socket");
                return;
            }
        };
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstreams =
            crate::dns::upstreams_from_resolv_conf(&resolv, &[IpAddr::V4(bridge.gateway)]);
        tracing::info!(listen = %SocketAddr::from((bridge.gateway, 53)), upstreams = ?upstreams, "dns server started");
        let resolver: Arc<dyn crate::dns::VmResolver> = Arc::new(egress::DnsView {
            names: Arc::clone(&self.names),
            egress: Arc::clone(&self.egress),
            helper: self.helper.clone(),
            op: op.clone(),
        });
        let config = crate::dns::DnsConfig {
            clients: Some(bridge.subnet),
            ..crate::dns::DnsConfig::new(upstreams)
        };
        tokio::spawn(crate::dns::serve_with(
            socket,
            resolver,
            config,
            self.shutdown.clone(),
        ));
    }

    /// Starts loopback proxies for a bridged VM's published TCP ports.
    pub fn start_proxies(
        &self,
        vm_id: &str,
        guest: Ipv4Addr,
        publish: &[PublishSpec],
    ) -> Result<(), NetworkError> {
        self.proxies.start(vm_id, guest, publish, &self.shutdown)
    }

    pub fn stop_proxies(&self, vm_id: &str) {
        self.proxies.stop(vm_id);
    }
}

/// A loopback TCP port nobody listens on right now.
pub fn free_loopback_port() -> Result<u16, NetworkError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(NetworkError::NoFreePort)
}

/// Fails when something on this host listens on the spec's host port.
pub fn ensure_port_free(spec: PublishSpec) -> Result<(), NetworkError> {
    let free = match spec.proto {
        PortProto::Udp => UdpSocket::bind((Ipv4Addr::LOCALHOST, spec.host)).is_ok(),
        PortProto::Tcp => TcpListener::bind((Ipv4Addr::LOCALHOST, spec.host)).is_ok(),
    };
    if free {
        Ok(())
    } else {
        Err(NetworkError::PortInUse {
            port: spec.host,
            proto: spec.proto,
        })
    }
}
