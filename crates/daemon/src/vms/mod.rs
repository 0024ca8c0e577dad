//! The VM lifecycle (SPEC C3) and what is momentarily true about running
//! VMs (SPEC C2).
//!
//! Durable intent (name, image, kernel, resources, last state) is in the
//! store. A running VM's handles (VMM pid and control socket, the SSH port,
//! the accelerator) live in memory and in `VM_DIR/handles.json`, never in
//! SQLite; on daemon start [`reconcile`] rebuilds them from those files and
//! the OS. Operations on one VM are serialised by its lock in [`VmLocks`];
//! different VMs proceed in parallel.
//!
//! Lock order: a VM lock (tokio mutex, may be held across awaits), then the
//! handles map (std mutex, leaf, never across an await), then the store
//! (std mutex, leaf, inside spawn_blocking only).

mod create;
pub mod guest;
mod lifecycle;
mod reconcile;
mod rollback;
#[cfg(test)]
mod tests;

pub use create::{Reservations, begin_create};
pub use lifecycle::{delete, edit, kill, restart, start, stop};
pub use reconcile::reconcile;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use banger_proto::vm::VmView;
use banger_store::VmRecord;
use banger_vmm::VmHandle;
use serde::{Deserialize, Serialize};

use crate::DaemonState;
use crate::dispatch::RpcError;

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
    pub accel: String,
    /// The TAP device and address of a bridged VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridged: Option<BridgedHandles>,
    /// How the guest agent is reached (`virtio-serial`), if the guest has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
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
}

impl VmTable {
    /// The lock of the VM called `name` (created on first use).
    pub fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.locks);
        Arc::clone(locks.entry(name.to_owned()).or_default())
    }

    /// Drops the lock entry of a deleted VM.
    pub fn forget_lock(&self, name: &str) {
        lock(&self.locks).remove(name);
    }

    pub fn handles(&self, vm_id: &str) -> Option<Handles> {
        lock(&self.handles).get(vm_id).cloned()
    }

    /// TAP devices held by running VMs.
    pub fn held_taps(&self) -> Vec<String> {
        lock(&self.handles)
            .values()
            .filter_map(|h| Some(h.bridged.as_ref()?.tap.clone()))
            .collect()
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
pub fn vm_dir(state: &DaemonState, vm_id: &str) -> PathBuf {
    state.config.layout.data_dir.join("vms").join(vm_id)
}

pub fn console_log(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

pub fn work_disk(dir: &Path) -> PathBuf {
    dir.join("work.ext4")
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

/// Looks a VM up by name or id.
pub async fn find(state: &Arc<DaemonState>, name: &str) -> Result<VmRecord, RpcError> {
    let name = name.to_owned();
    state.with_store(move |s| s.vm(&name)).await
}

/// A wire value the store (or a VM's handles) keeps as its string, read
/// back into its type.
fn stored<T>(vm: &VmRecord, value: &str) -> Result<T, RpcError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| RpcError::internal(format!("vm {}: stored value: {e}", vm.name)))
}

/// The view `vm.show` and `vm.list` return.
pub async fn view(state: &Arc<DaemonState>, vm: &VmRecord) -> Result<VmView, RpcError> {
    let (image_id, kernel_id) = (vm.image_id.clone(), vm.kernel_id.clone());
    let vm_id = vm.id.clone();
    let (image, kernel, ip) = state
        .with_store(move |s| {
            Ok((
                s.image(&image_id)?.name,
                s.kernel(&kernel_id)?.name,
                s.lease_of(&vm_id)?,
            ))
        })
        .await?;
    let dir = vm_dir(state, &vm.id);
    let handles = state.vms.handles(&vm.id);
    Ok(VmView {
        id: vm.id.clone(),
        name: vm.name.clone(),
        state: stored(vm, vm.state.as_str())?,
        image,
        kernel,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disk_size_bytes: vm.disk_size_bytes,
        network: stored(vm, &vm.network_mode)?,
        backend: vm.backend.as_deref().map(|b| stored(vm, b)).transpose()?,
        accel: handles.as_ref().map(|h| stored(vm, &h.accel)).transpose()?,
        disk_strategy: vm
            .disk_strategy
            .as_deref()
            .map(|d| stored(vm, d))
            .transpose()?,
        publish: vm
            .published_ports
            .iter()
            .map(|p| stored(vm, p))
            .collect::<Result<_, _>>()?,
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
    })
}
