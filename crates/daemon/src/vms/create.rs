//! `vm.create`: an asynchronous operation whose stages the CLI prints live.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use banger_proto::vm::{OpView, VmCreateParams};
use banger_proto::{ErrorCode, NetworkMode, OpKind};
use banger_store::{VmRecord, VmState};
use rand::Rng;
use serde_json::Value;

use super::lifecycle::{NETWORK_BRIDGED, NETWORK_USER, delete_locked, stage, start_locked};
use super::{view, vm_dir, work_disk};
use crate::dispatch::{RpcError, error_chain};
use crate::ops::{Operation, now_ms};
use crate::{DaemonState, artifacts, disks, validate};

/// Names of VMs being created, reserved before their row exists.
#[derive(Debug, Default)]
pub struct Reservations(Mutex<HashSet<String>>);

impl Reservations {
    fn take(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned())
    }

    fn release(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

/// Releases a reserved name when the create ends, however it ends.
struct Reserved {
    state: Arc<DaemonState>,
    name: String,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.state.reservations.release(&self.name);
    }
}

/// Validates everything that can be checked up front (so bad input creates
/// nothing), then starts the create operation under the request's op id.
pub async fn begin_create(
    state: &Arc<DaemonState>,
    op_id: &str,
    p: VmCreateParams,
) -> Result<OpView, RpcError> {
    validate::name("vm", &p.name)?;
    let defaults = &state.config.defaults;
    let vcpus = p.vcpus.unwrap_or(defaults.vcpus);
    let memory_mib = p.memory_mib.unwrap_or(defaults.memory_mib);
    let disk_size_bytes = p.disk_size_bytes.unwrap_or(defaults.disk_size_bytes);
    validate::vcpus(vcpus)?;
    validate::memory_mib(memory_mib)?;
    validate::disk_size(disk_size_bytes)?;
    let mut host_ports = HashSet::new();
    for spec in &p.publish {
        if !host_ports.insert((spec.host, spec.is_udp())) {
            return Err(RpcError::bad_params(format!(
                "host port {} is published twice",
                spec.host
            )));
        }
    }
    if let Some(image) = &p.image {
        validate::name("image", image)?;
    }
    if let Some(kernel) = &p.kernel {
        validate::name("kernel", kernel)?;
    }
    let network = choose_network(state, p.network.map(NetworkMode::as_str)).await?;
    if network == NETWORK_BRIDGED {
        if let Some(udp) = p.publish.iter().find(|s| s.is_udp()) {
            return Err(RpcError::bad_params(format!(
                "publishing {udp} (udp) needs user-mode networking: add --network user"
            )));
        }
    }
    let image_name = p.image.clone().unwrap_or_else(|| defaults.image.clone());
    let kernel_name = p.kernel.clone().unwrap_or_else(|| defaults.kernel.clone());
    // A named image must exist; the default one is built on demand.
    if p.image.is_some() {
        let name = image_name.clone();
        state.with_store(move |s| s.image(&name)).await?;
    }
    if p.kernel.is_some() {
        artifacts::check_kernel_known(state, &kernel_name).await?;
    }
    let name = p.name.clone();
    let exists = {
        let name = name.clone();
        state
            .with_store(move |s| match s.vm(&name) {
                Ok(_) => Ok(true),
                Err(banger_store::StoreError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            })
            .await?
    };
    if exists || !state.reservations.take(&name) {
        return Err(RpcError::new(
            ErrorCode::Conflict,
            format!("a vm named {name:?} already exists"),
        ));
    }
    let reserved = Reserved {
        state: Arc::clone(state),
        name: name.clone(),
    };
    let plan = Plan {
        id: new_id(),
        name: name.clone(),
        image: image_name,
        kernel: kernel_name,
        vcpus,
        memory_mib,
        disk_size_bytes,
        publish: p.publish.iter().map(ToString::to_string).collect(),
        network,
        start: p.start.unwrap_or(true),
    };
    let state2 = Arc::clone(state);
    let op = state
        .ops
        .begin(op_id, OpKind::VmCreate, &name, move |op| async move {
            let _reserved = reserved;
            create(&state2, &op, plan).await
        });
    Ok(op.view())
}

#[derive(Debug)]
struct Plan {
    id: String,
    name: String,
    image: String,
    kernel: String,
    vcpus: u32,
    memory_mib: u32,
    disk_size_bytes: u64,
    publish: Vec<String>,
    network: &'static str,
    start: bool,
}

/// `bridged` when asked or, by default, when banger-helper answers;
/// `user` when asked or when there is no helper (rootless).
async fn choose_network(
    state: &Arc<DaemonState>,
    asked: Option<&str>,
) -> Result<&'static str, RpcError> {
    match asked {
        Some(NETWORK_USER) => Ok(NETWORK_USER),
        Some(NETWORK_BRIDGED) => {
            if state.network.helper_answers().await {
                Ok(NETWORK_BRIDGED)
            } else {
                Err(RpcError::internal(format!(
                    "bridged networking needs banger-helper, which does not answer at {} \
                     (install it with `sudo banger system install`, or use --network user)",
                    state.network.helper().socket().display()
                )))
            }
        }
        Some(other) => Err(RpcError::bad_params(format!(
            "unknown network {other:?}: use bridged or user"
        ))),
        None if state.network.helper_answers().await => Ok(NETWORK_BRIDGED),
        None => Ok(NETWORK_USER),
    }
}

fn new_id() -> String {
    let n: u64 = rand::rng().random();
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

async fn create(
    state: &Arc<DaemonState>,
    op: &Arc<Operation>,
    plan: Plan,
) -> Result<Value, RpcError> {
    let kernel = artifacts::ensure_kernel(state, &plan.kernel, Some(op)).await?;
    op.check_cancelled()?;
    let image = artifacts::ensure_image(state, &plan.image, Some(op)).await?;
    op.check_cancelled()?;

    let dir = vm_dir(state, &plan.id);
    let lock = state.vms.lock_for(&plan.name);
    let _guard = lock.lock().await;
    let prepared = {
        let dir = dir.clone();
        let image = image.clone();
        let op2 = Arc::clone(op);
        let size = plan.disk_size_bytes;
        tokio::task::spawn_blocking(move || -> Result<disks::RootStrategy, RpcError> {
            std::fs::create_dir_all(&dir)
                .map_err(|e| RpcError::internal(format!("create {}: {e}", dir.display())))?;
            let strategy = disks::choose_root_strategy(&dir);
            op2.stage(&format!("prepare root disk ({})", strategy.as_str()));
            disks::make_root_disk(strategy, &image.rootfs_path, &dir)
                .map_err(|e| RpcError::internal(error_chain(&e)))?;
            op2.stage("prepare work disk");
            let seed = image.work_seed_path.clone().ok_or_else(|| {
                RpcError::internal(format!("image {} has no work seed", image.name))
            })?;
            disks::make_work_disk(&seed, &work_disk(&dir), size)
                .map_err(|e| RpcError::internal(error_chain(&e)))?;
            Ok(strategy)
        })
        .await
        .map_err(|e| RpcError::internal(format!("disk task failed: {e}")))?
    };
    let strategy = match prepared.and_then(|s| op.check_cancelled().map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };

    let now = now_ms();
    let vm = VmRecord {
        id: plan.id.clone(),
        name: plan.name.clone(),
        image_id: image.id.clone(),
        kernel_id: kernel.id.clone(),
        vcpus: plan.vcpus,
        memory_mib: plan.memory_mib,
        disk_size_bytes: plan.disk_size_bytes,
        network_mode: plan.network.to_owned(),
        backend: Some(state.vmm.kind().to_string()),
        disk_strategy: Some(strategy.as_str().to_owned()),
        published_ports: plan.publish.clone(),
        state: if plan.start {
            VmState::Creating
        } else {
            VmState::Stopped
        },
        last_error: None,
        created_at_ms: now,
        updated_at_ms: now,
    };
    {
        let record = vm.clone();
        if let Err(e) = state.with_store(move |s| s.insert_vm(&record)).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    }
    tracing::info!(vm = %vm.name, id = %vm.id, "vm created");
    if !plan.start {
        return to_value(view(state, &vm).await?);
    }
    match start_locked(state, vm.clone(), Some(op), op.cancel_token()).await {
        Ok(vm) => to_value(view(state, &vm).await?),
        Err(e) if e.code == ErrorCode::Cancelled || op.is_cancelled() => {
            // Cancelled: leave nothing behind, not even the record.
            stage(Some(op), "roll back");
            let current = super::find(state, &vm.id).await.unwrap_or(vm);
            delete_locked(state, current).await?;
            Err(RpcError::new(
                ErrorCode::Cancelled,
                "create cancelled; nothing was kept",
            ))
        }
        Err(e) => Err(e),
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::internal(format!("encode result: {e}")))
}
