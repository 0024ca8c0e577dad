//! The VM lifecycle (docs/vms.md, "Lifecycle") and what is momentarily true about running
//! VMs (docs/capabilities.md, "State").
//!
//! Durable intent (name, image, kernel, resources, last vms) is in the
//! store. A running VM's handles (VMM pid and control socket, the SSH port,
//! the accelerator) live in memory and in `VM_DIR/handles.json`, never in
//! SQLite; on daemon start [`reconcile`] rebuilds them from those files and
//! the OS. Operations on one VM are serialised by its lock in [`VmTable`],
//! keyed by the VM's id (a request naming the VM resolves the name first);
//! different VMs proceed in parallel.
//!
//! Lock order: a VM lock (tokio mutex, may be held across awaits), then a
//! VM's agent-connect lock (tokio mutex, held across the connect), then
//! the handles map (std mutex, leaf, never across an await), then the
//! store (std mutex, leaf, inside spawn_blocking only).

pub mod console;
pub(crate) mod create;
#[cfg(test)]
mod dm_tests;
mod error;
#[cfg(test)]
mod fault_tests;
pub mod guest;
pub(crate) mod lifecycle;
mod ram;
mod reconcile;
mod rollback;
pub(crate) mod snapshot;
#[cfg(test)]
mod tests;
mod watch;

pub use create::{CreatePlan, Reservations, WarmJob};
pub use error::VmError;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use banger_proto::WaitFor;
use banger_proto::vm::VmView;
use banger_store::VmRecord;
use banger_vmm::VmHandle;
use serde::{Deserialize, Serialize};

use std::time::Duration;

use banger_proto::vm::VmEditParams;

use crate::accel::AccelChooser;
use crate::artifacts::Artifacts;
use crate::config::{DaemonConfig, VmDefaults};
use crate::db::Db;
use crate::network::Network;
use crate::op::{OpCtx, OpId};
use crate::ssh::SshPaths;
use guest::Guest;

/// The VM service: creates, starts, stops, edits and deletes VMs, and
/// knows which run. It holds the services a VM's life needs and nothing
/// else.
#[derive(Debug)]
pub struct Vms {
    db: Db,
    vmms: crate::vmms::Vmms,
    network: Arc<Network>,
    artifacts: Arc<Artifacts>,
    accel: Arc<AccelChooser>,
    guest: Arc<Guest>,
    ssh: SshPaths,
    /// Per-VM locks, handles and agent connections (shared with [`Guest`]).
    table: Arc<VmTable>,
    reservations: Arc<Reservations>,
    /// One template build per key at a time.
    templates: KeyedLocks,
    /// VMs' own guest RAM files (see `ram.rs`).
    ram: ram::RamFiles,
    settings: VmSettings,
    /// Device-mapper snapshot root disks, attached at each start and
    /// detached when the VMM is gone (`disks/dm.rs`).
    root_devices: Arc<dyn crate::disks::dm::RootDevices>,
    /// Firecracker's KVM probe verdicts, by kernel (see `create::choose_vmm`).
    firecracker_probes: Mutex<HashMap<String, banger_vmm::KvmProbe>>,
    /// This service itself, for the tasks that watch VMMs exit (see
    /// `watch.rs`): they outlive the call that started them.
    me: Weak<Vms>,
}

/// Async locks by string key, made on first use.
#[derive(Debug, Default)]
pub struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = Arc::clone(lock(&self.0).entry(key.to_owned()).or_default());
        m.lock_owned().await
    }

    fn forget(&self, key: &str) {
        lock(&self.0).remove(key);
    }
}

/// The configuration a VM's life reads.
#[derive(Debug, Clone)]
struct VmSettings {
    data_dir: PathBuf,
    defaults: VmDefaults,
    config_file: Option<PathBuf>,
    boot_timeout: Duration,
    stop_timeout: Duration,
    /// banger's version: part of a template's key.
    version: String,
    /// Make and use warm templates.
    templates: bool,
}

/// The services [`Vms`] works with.
#[derive(Debug)]
pub struct VmDeps {
    pub db: Db,
    pub vmms: crate::vmms::Vmms,
    pub network: Arc<Network>,
    pub artifacts: Arc<Artifacts>,
    pub accel: Arc<AccelChooser>,
    pub guest: Arc<Guest>,
    pub ssh: SshPaths,
    pub table: Arc<VmTable>,
    /// Device-mapper root disks (`disks/dm.rs`).
    pub root_devices: Arc<dyn crate::disks::dm::RootDevices>,
}

impl Vms {
    /// What a create uses when the request does not say: the config file
    /// as it is now (an edit applies to the next create), else the
    /// built-in defaults.
    pub(crate) async fn defaults(&self) -> Result<VmDefaults, VmError> {
        let Some(path) = &self.settings.config_file else {
            return Ok(self.settings.defaults.clone());
        };
        let path = path.clone();
        let file = tokio::task::spawn_blocking(move || banger_config::ConfigFile::load(&path))
            .await
            .map_err(|e| VmError::Task("read the config file", e))??;
        Ok(file.vm_defaults())
    }

    /// Whether Firecracker's KVM boots `kernel` (probed once per kernel
    /// and daemon: up to 10 s when it hangs).
    pub(crate) async fn firecracker_probe(
        &self,
        kernel: &banger_store::KernelRecord,
    ) -> banger_vmm::KvmProbe {
        let key = format!("{}:{}", kernel.id, kernel.kernel_path.display());
        if let Some(known) = lock(&self.firecracker_probes).get(&key) {
            return known.clone();
        }
        let (vmms, path, initrd) = (
            self.vmms.clone(),
            kernel.kernel_path.clone(),
            kernel.initrd_path.clone(),
        );
        let verdict = tokio::task::spawn_blocking(move || {
            vmms.probe_firecracker(&path, initrd.as_deref(), Duration::from_secs(10))
        })
        .await
        .unwrap_or_else(|e| banger_vmm::KvmProbe::Failed(format!("probe task: {e}")));
        tracing::info!(kernel = %kernel.name, ?verdict, "firecracker kvm probe");
        lock(&self.firecracker_probes).insert(key, verdict.clone());
        verdict
    }

    /// The service, shared: VMM watchers hold it weakly.
    pub fn new_shared(deps: VmDeps, config: &DaemonConfig) -> Arc<Self> {
        Arc::new_cyclic(|me| {
            let mut vms = Self::new(deps, config);
            vms.me = me.clone();
            vms
        })
    }

    fn new(deps: VmDeps, config: &DaemonConfig) -> Self {
        let VmDeps {
            db,
            vmms,
            network,
            artifacts,
            accel,
            guest,
            ssh,
            table,
            root_devices,
        } = deps;
        Self {
            db,
            vmms,
            network,
            artifacts,
            accel,
            guest,
            ssh,
            table,
            root_devices,
            reservations: Arc::default(),
            templates: KeyedLocks::default(),
            firecracker_probes: Mutex::default(),
            ram: match &config.ram_dir {
                Some(dir) => ram::RamFiles::at(dir),
                None => ram::RamFiles::for_data_dir(&config.layout.data_dir),
            },
            settings: VmSettings {
                data_dir: config.layout.data_dir.clone(),
                defaults: config.defaults.clone(),
                config_file: config.config_file.clone(),
                boot_timeout: config.boot_timeout,
                stop_timeout: config.stop_timeout,
                version: config.version.clone(),
                templates: config.templates,
            },
            me: Weak::new(),
        }
    }

    /// Starts a VM (idempotent: a running VM is left alone).
    pub async fn start(&self, name: &str, ctx: &OpCtx) -> Result<VmRecord, VmError> {
        lifecycle::start(self, name, ctx).await
    }

    /// Graceful stop: ACPI powerdown, a bounded wait, then SIGKILL.
    pub async fn stop(&self, name: &str, ctx: &OpCtx) -> Result<VmRecord, VmError> {
        lifecycle::stop(self, name, ctx).await
    }

    /// Sends `signal` to the VMM (default KILL) and waits for it to exit.
    pub async fn kill(
        &self,
        name: &str,
        signal: Option<&str>,
        ctx: &OpCtx,
    ) -> Result<VmRecord, VmError> {
        lifecycle::kill(self, name, signal, ctx).await
    }

    pub async fn restart(&self, name: &str, ctx: &OpCtx) -> Result<VmRecord, VmError> {
        lifecycle::restart(self, name, ctx).await
    }

    /// Deletes a VM: its files, record and host-key pin; a running one
    /// only with `force` (its VMM is killed first).
    pub async fn delete(&self, name: &str, force: bool, ctx: &OpCtx) -> Result<VmRecord, VmError> {
        lifecycle::delete(self, name, force, ctx).await
    }

    /// Stops a running VM's vCPUs.
    pub async fn pause(&self, name: &str) -> Result<VmRecord, VmError> {
        lifecycle::pause(self, name).await
    }

    /// Continues a paused VM and steps its clock to the host's.
    pub async fn resume(&self, name: &str) -> Result<VmRecord, VmError> {
        lifecycle::resume(self, name).await
    }

    /// Checks a snapshot request.
    pub async fn plan_snapshot(
        &self,
        p: banger_proto::snapshot::VmSnapshotParams,
    ) -> Result<snapshot::SnapshotPlan, VmError> {
        snapshot::plan_snapshot(self, p).await
    }

    /// Takes a snapshot; the VM keeps running.
    pub async fn snapshot(
        &self,
        ctx: &OpCtx,
        plan: snapshot::SnapshotPlan,
    ) -> Result<banger_proto::snapshot::SnapshotView, VmError> {
        let s = snapshot::snapshot(self, ctx, plan).await?;
        snapshot::view(self, &s).await
    }

    /// Checks a `vm restore` request.
    pub async fn plan_restore(
        &self,
        p: banger_proto::snapshot::VmRestoreParams,
    ) -> Result<snapshot::RestorePlan, VmError> {
        snapshot::plan_restore(self, p).await
    }

    /// Rolls a VM back to one of its snapshots.
    pub async fn restore(
        &self,
        ctx: &OpCtx,
        plan: snapshot::RestorePlan,
    ) -> Result<VmView, VmError> {
        let vm = snapshot::restore_vm(self, ctx, plan).await?;
        Ok(view(self, &vm).await?)
    }

    /// Checks a `vm fork` request and reserves the new names.
    pub async fn plan_fork(
        &self,
        p: banger_proto::snapshot::VmForkParams,
    ) -> Result<snapshot::ForkPlan, VmError> {
        snapshot::plan_fork(self, p).await
    }

    /// Forks a running VM.
    pub async fn fork(
        &self,
        ctx: &OpCtx,
        plan: snapshot::ForkPlan,
    ) -> Result<banger_proto::snapshot::VmForked, VmError> {
        snapshot::fork(self, ctx, plan).await
    }

    /// Every snapshot.
    pub async fn snapshots(&self) -> Result<Vec<banger_proto::snapshot::SnapshotView>, VmError> {
        snapshot::views(self).await
    }

    /// One snapshot.
    pub async fn snapshot_view(
        &self,
        name: &str,
    ) -> Result<banger_proto::snapshot::SnapshotView, VmError> {
        let n = name.to_owned();
        let s = self.db.call(move |st| st.snapshot(&n)).await?;
        snapshot::view(self, &s).await
    }

    /// Deletes a snapshot nothing needs.
    pub async fn delete_snapshot(&self, name: &str) -> Result<String, VmError> {
        Ok(snapshot::delete_requested(self, name).await?.name)
    }

    /// Makes (or finds) the default-shape template of image `name`.
    pub async fn warm(
        &self,
        ctx: &OpCtx,
        name: &str,
    ) -> Result<banger_proto::snapshot::SnapshotView, VmError> {
        let s = create::warm_image(self, ctx, name).await?;
        snapshot::view(self, &s).await
    }

    /// Removes the RAM files' directory if no VM uses it (daemon exit).
    pub fn remove_ram_dir_if_empty(&self) {
        self.ram.remove_dir_if_empty();
    }

    /// Removes what a crash left of snapshots; run once at start.
    pub async fn collect_garbage(&self) -> Result<(), VmError> {
        snapshot::collect_garbage(self).await
    }

    /// Changes vcpus, memory, disk size or published ports of a stopped VM.
    pub async fn edit(&self, p: &VmEditParams) -> Result<VmRecord, VmError> {
        lifecycle::edit(self, p, &crate::op::mint()).await
    }

    /// [`Self::edit`] under the op id of the request (its helper calls,
    /// when a running VM's egress changes, carry it).
    pub async fn edit_as(
        &self,
        p: &VmEditParams,
        op: &crate::op::OpId,
    ) -> Result<VmRecord, VmError> {
        lifecycle::edit(self, p, op).await
    }

    /// `image.promote`: a stopped VM's disks become a new image.
    pub async fn promote(
        &self,
        p: &banger_proto::vm::ImagePromoteParams,
        ctx: &crate::op::OpCtx,
    ) -> Result<banger_store::ImageRecord, VmError> {
        lifecycle::promote(self, p, ctx).await
    }

    /// Checks a create's input and conflicts, and reserves its name and
    /// ports; nothing is made yet.
    pub async fn plan_create(
        &self,
        op: &OpId,
        p: banger_proto::vm::VmCreateParams,
    ) -> Result<CreatePlan, VmError> {
        create::plan_create(self, op, p).await
    }

    /// Makes and (unless asked not to) starts the VM a plan describes.
    /// The [`WarmJob`] is the image's template to make in the background
    /// (a cold create of a shape that templates serve, with none yet).
    pub async fn create(
        &self,
        ctx: &OpCtx,
        plan: CreatePlan,
    ) -> Result<(VmView, Option<WarmJob>), VmError> {
        create::create(self, ctx, plan).await
    }

    /// Makes the template a cold create asked for.
    pub async fn run_warm_job(
        &self,
        ctx: &OpCtx,
        job: WarmJob,
    ) -> Result<banger_proto::snapshot::SnapshotView, VmError> {
        let s = create::run_warm_job(self, ctx, job).await?;
        snapshot::view(self, &s).await
    }

    /// Adopts VMs whose VMM survived a daemon restart, cleans up the rest.
    pub async fn reconcile(&self) -> Result<(), banger_store::StoreError> {
        reconcile::reconcile(self).await
    }

    /// Looks a VM up by name or id.
    pub async fn find(&self, name: &str) -> Result<VmRecord, banger_store::StoreError> {
        find(self, name).await
    }

    /// The view `vm.show` and `vm.list` return.
    pub async fn view(&self, vm: &VmRecord) -> Result<VmView, banger_store::StoreError> {
        view(self, vm).await
    }

    /// Every VM's view, except the hidden VMs templates are built in
    /// (named `_template-ID`, a name no user can give).
    pub async fn views(&self) -> Result<Vec<VmView>, banger_store::StoreError> {
        let all = self.db.call(|s| s.vms()).await?;
        let mut views = Vec::with_capacity(all.len());
        for vm in all.iter().filter(|vm| !vm.name.starts_with('_')) {
            views.push(view(self, vm).await?);
        }
        Ok(views)
    }

    /// What is true about a running VM right now.
    pub fn handles(&self, vm_id: &str) -> Option<Handles> {
        self.table.handles(vm_id)
    }

    /// TAP devices held by running VMs.
    pub fn held_taps(&self) -> Vec<crate::network::HeldTap> {
        self.table.held_taps()
    }

    /// True when no create holds a name or port.
    #[cfg(test)]
    pub(crate) fn reserves_nothing(&self) -> bool {
        self.reservations.is_empty()
    }
}

/// What is true about a running VM right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handles {
    pub vmm: VmHandle,
    /// Where the guest's sshd answers: a loopback forward in user mode,
    /// the guest's own address (port 22) when bridged.
    #[serde(default = "loopback")]
    pub ssh_host: String,
    pub ssh_port: u16,
    /// `kvm` or `tcg`.
    pub accel: banger_proto::Accel,
    /// The TAP device and address of a bridged VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridged: Option<BridgedHandles>,
    /// How the guest agent is reached (`virtio-serial`), if the guest has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The guest RAM file of the VM's own, mapped shared (see `ram.rs`);
    /// none when its RAM is anonymous or a snapshot's file mapped
    /// privately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_file: Option<PathBuf>,
    /// The isolated user-mode network's processes (namespace holder, pasta), for a
    /// user-mode VM with egress `internet` (`banger_vmm::usernet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usernet: Option<banger_vmm::usernet::UsernetHandle>,
    /// The device-mapper snapshot of a root disk made that way
    /// (`disks/dm.rs`), detached once the VMM is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<crate::disks::dm::DmAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgedHandles {
    pub tap: String,
    pub ip: std::net::Ipv4Addr,
}

fn loopback() -> String {
    "127.0.0.1".into()
}

/// Per-VM locks and the in-memory handles of running VMs.
#[derive(Debug, Default)]
pub struct VmTable {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    handles: Mutex<HashMap<String, Handles>>,
    agents: Mutex<HashMap<String, Arc<crate::agent::AgentConn>>>,
    /// One agent connect at a time per VM: the VMM's agent socket serves
    /// one client, and a second connect would wait unanswered.
    connecting: KeyedLocks,
}

impl VmTable {
    /// The lock of the VM with id `vm_id` (created on first use). Always
    /// an id, never a name: one VM, one lock, however a request named it.
    pub fn lock_for(&self, vm_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.locks);
        Arc::clone(locks.entry(vm_id.to_owned()).or_default())
    }

    /// Drops the lock entries of a deleted VM.
    pub fn forget_lock(&self, vm_id: &str) {
        lock(&self.locks).remove(vm_id);
        self.connecting.forget(vm_id);
    }

    pub fn handles(&self, vm_id: &str) -> Option<Handles> {
        lock(&self.handles).get(vm_id).cloned()
    }

    /// TAP devices held by running VMs.
    pub fn held_taps(&self) -> Vec<crate::network::HeldTap> {
        lock(&self.handles)
            .iter()
            .filter_map(|(id, h)| {
                let b = h.bridged.as_ref()?;
                Some(crate::network::HeldTap {
                    vm_id: id.clone(),
                    tap: b.tap.clone(),
                    ip: b.ip,
                })
            })
            .collect()
    }

    /// Ids of the VMs with handles (running or paused).
    pub fn running_ids(&self) -> std::collections::HashSet<String> {
        lock(&self.handles).keys().cloned().collect()
    }

    fn set_handles(&self, vm_id: &str, h: Handles) {
        lock(&self.handles).insert(vm_id.to_owned(), h);
    }

    fn clear_handles(&self, vm_id: &str) {
        lock(&self.handles).remove(vm_id);
        lock(&self.agents).remove(vm_id);
    }

    /// The live agent connection of a running VM, if one is open.
    fn agent(&self, vm_id: &str) -> Option<Arc<crate::agent::AgentConn>> {
        lock(&self.agents)
            .get(vm_id)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    fn set_agent(&self, vm_id: &str, conn: Arc<crate::agent::AgentConn>) {
        lock(&self.agents).insert(vm_id.to_owned(), conn);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked mid-update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The VM's own directory: disks, logs, sockets and handles.json.
pub(crate) fn vm_dir(vms: &Vms, vm_id: &str) -> PathBuf {
    vms.settings.data_dir.join("vms").join(vm_id)
}

/// What a VM's directory is renamed to while the VM is deleted: a crash
/// between the rename and the end of the delete leaves this name for
/// reconcile to finish with.
pub(crate) fn deleting_dir(vms: &Vms, vm_id: &str) -> PathBuf {
    vms.settings
        .data_dir
        .join("vms")
        .join(format!("{DELETING_PREFIX}{vm_id}"))
}

const DELETING_PREFIX: &str = ".deleting-";

pub fn console_log(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// The raw work disk a cold-created VM has.
pub fn work_disk(dir: &Path) -> PathBuf {
    dir.join("work.ext4")
}

/// The copy-on-write work disk of a VM made from a snapshot.
pub fn layered_work_disk(dir: &Path) -> PathBuf {
    dir.join("work.qcow2")
}

/// The VM's work disk and its format: a qcow2 layer over a snapshot's
/// when the VM was made from one, else the raw disk.
pub fn work_drive(dir: &Path) -> (PathBuf, banger_vmm::DiskFormat) {
    let layered = layered_work_disk(dir);
    if layered.exists() {
        (layered, banger_vmm::DiskFormat::Qcow2)
    } else {
        (work_disk(dir), banger_vmm::DiskFormat::Raw)
    }
}

fn handles_file(dir: &Path) -> PathBuf {
    dir.join("handles.json")
}

/// Writes handles.json atomically (temp file + rename).
fn save_handles(dir: &Path, h: &Handles) -> std::io::Result<()> {
    let tmp = dir.join("handles.json.tmp");
    let text = serde_json::to_vec_pretty(h).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, handles_file(dir))
}

fn load_handles(dir: &Path) -> Option<Handles> {
    let text = std::fs::read(handles_file(dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn remove_handles(dir: &Path) {
    let _ = std::fs::remove_file(handles_file(dir));
}

/// Makes a new VM's directory and, in a blocking task, its disks with
/// `make`; if anything fails the directory is removed.
pub(crate) async fn prepare_vm_dir<F, T>(dir: &Path, make: F) -> Result<T, VmError>
where
    F: FnOnce(&Path) -> Result<T, VmError> + Send + 'static,
    T: Send + 'static,
{
    let d = dir.to_path_buf();
    let made = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&d).map_err(|source| VmError::Io {
            what: "create",
            path: d.clone(),
            source,
        })?;
        make(&d)
    })
    .await
    .map_err(|e| VmError::Task("disk", e))
    .and_then(|r| r);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    made
}

/// Writes a new VM's row; if that fails, its directory (made just
/// before) is removed, so a failed create leaves nothing.
pub(crate) async fn insert_new_vm(vms: &Vms, vm: &VmRecord, dir: &Path) -> Result<(), VmError> {
    let record = vm.clone();
    if let Err(e) = vms.db.call(move |s| s.insert_vm(&record)).await {
        let _ = std::fs::remove_dir_all(dir);
        return Err(e.into());
    }
    Ok(())
}

/// True when a VM of this name (or id) exists.
pub(crate) async fn vm_exists(vms: &Vms, name: &str) -> Result<bool, banger_store::StoreError> {
    match find(vms, name).await {
        Ok(_) => Ok(true),
        Err(banger_store::StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Looks a VM up by name or id.
async fn find(vms: &Vms, name: &str) -> Result<VmRecord, banger_store::StoreError> {
    let name = name.to_owned();
    vms.db.call(move |s| s.vm(&name)).await
}

/// What a VM made from `image` waits for unless told: its agent when it
/// boots banger's init (no sshd), else its agent (if any) and SSH.
pub(crate) fn default_wait(image: &banger_store::ImageRecord) -> WaitFor {
    if image.boots_banger_init() {
        WaitFor::Agent
    } else {
        WaitFor::Ssh
    }
}

/// What a cold start of `vm` (made from `image`) waits for: what its
/// create recorded, else (VMs made before that was recorded) the image's
/// default.
pub(crate) fn wait_for(vm: &VmRecord, image: &banger_store::ImageRecord) -> WaitFor {
    vm.wait_for.unwrap_or_else(|| default_wait(image))
}

/// The view `vm.show` and `vm.list` return.
async fn view(vms: &Vms, vm: &VmRecord) -> Result<VmView, banger_store::StoreError> {
    let (image_id, kernel_id) = (vm.image_id.clone(), vm.kernel_id.clone());
    let vm_id = vm.id.clone();
    let (image, kernel, ip) = vms
        .db
        .call(move |s| {
            Ok((
                s.image(&image_id)?,
                s.kernel(&kernel_id)?.name,
                s.lease_of(&vm_id)?,
            ))
        })
        .await?;
    let agent_shell = image.boots_banger_init();
    let wait = wait_for(vm, &image);
    let services = crate::artifacts::image_services(&image)
        .into_iter()
        .map(|s| banger_proto::vm::VmService {
            address: service_address(vm, s.port),
            name: s.name,
            port: s.port,
        })
        .collect();
    let image = image.name;
    let dir = vm_dir(vms, &vm.id);
    let handles = vms.table.handles(&vm.id);
    Ok(VmView {
        id: vm.id.clone(),
        name: vm.name.clone(),
        state: vm.state,
        image,
        kernel,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disk_size_bytes: vm.disk_size_bytes,
        network: vm.network_mode,
        egress: vm.egress.clone(),
        wait_for: wait,
        backend: vm.backend,
        backend_reason: vm.backend_reason.clone(),
        accel: handles.as_ref().map(|h| h.accel),
        disk_strategy: vm.disk_strategy,
        publish: vm.published_ports.clone(),
        last_error: vm.last_error.clone(),
        pid: handles.as_ref().map(|h| h.vmm.pid),
        ssh_port: handles
            .as_ref()
            .filter(|h| h.bridged.is_none())
            .map(|h| h.ssh_port),
        ip,
        tap: handles
            .as_ref()
            .and_then(|h| Some(h.bridged.as_ref()?.tap.clone())),
        vm_dir: dir.display().to_string(),
        console_log: console_log(&dir).display().to_string(),
        created_at_ms: vm.created_at_ms,
        // A guest not waited for may run no agent: only one that answered.
        agent: handles.as_ref().is_some_and(|h| h.agent.is_some())
            && (wait != WaitFor::None || vms.table.agent(&vm.id).is_some()),
        agent_shell,
        services,
    })
}

/// Where the host reaches a VM's guest port: its published loopback port
/// in user mode, `NAME.vm:PORT` when bridged.
fn service_address(vm: &VmRecord, port: u16) -> Option<String> {
    match vm.network_mode {
        banger_proto::NetworkMode::Bridged => Some(format!("{}.vm:{port}", vm.name)),
        banger_proto::NetworkMode::User => vm
            .published_ports
            .iter()
            .find(|p| p.guest == port && !p.is_udp())
            .map(|p| format!("127.0.0.1:{}", p.host)),
    }
}
