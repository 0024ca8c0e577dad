//! Rebuilding what is true about VMs when the daemon starts (docs/capabilities.md, "State").
//!
//! A VM recorded running (or mid-create) whose VMM is alive and really ours
//! keeps running: its handles come back from `handles.json`. One whose VMM
//! is gone is demoted to stopped (or error, if it died mid-create) and its
//! leftovers are removed. Killing the daemon never kills VMs.

use std::collections::HashSet;
use std::sync::Arc;

use banger_store::VmState;

use super::Vms;
use super::{DELETING_PREFIX, load_handles, remove_handles, vm_dir};
use crate::error::chain;
use crate::ops::now_ms;

/// A running bridged VM's published ports were served by the old daemon.
fn restart_proxies(vms: &Vms, vm: &banger_store::VmRecord, ip: std::net::Ipv4Addr) {
    if let Err(e) = vms.network.start_proxies(&vm.id, ip, &vm.published_ports) {
        tracing::warn!(vm = %vm.name, error = %chain(&e), "could not publish ports again");
    }
}

pub async fn reconcile(vms: &Vms) -> Result<(), banger_store::StoreError> {
    finish_interrupted(vms).await?;
    let records = vms.db.call(|s| s.vms()).await?;
    for mut vm in records {
        let dir = vm_dir(vms, &vm.id);
        let handles = load_handles(&dir);
        let alive = match &handles {
            Some(h) => {
                let vmm = vms.vmms.of(&h.vmm);
                let (h, id) = (h.vmm.clone(), vm.id.clone());
                tokio::task::spawn_blocking(move || vmm.is_running(&h, &id))
                    .await
                    .unwrap_or(false)
            }
            None => false,
        };
        if alive {
            if let Some(h) = handles {
                tracing::info!(vm = %vm.name, pid = h.vmm.pid, "vm still running");
                if let Some(b) = &h.bridged {
                    restart_proxies(vms, &vm, b.ip);
                }
                super::watch::watch(vms, &vm.id, &h.vmm);
                vms.table.set_handles(&vm.id, h);
            }
            let now = if vm.state == VmState::Paused {
                VmState::Paused
            } else {
                resume_if_left_paused(vms, &vm).await;
                VmState::Running
            };
            if vm.state != now {
                vm.state = now;
                vm.updated_at_ms = now_ms();
                let record = vm.clone();
                vms.db.call(move |s| s.update_vm(&record)).await?;
            }
            continue;
        }
        if handles.is_some()
            || matches!(
                vm.state,
                VmState::Running | VmState::Creating | VmState::Paused
            )
        {
            remove_handles(&dir);
            if let Some(h) = &handles {
                let _ = std::fs::remove_file(&h.vmm.control_socket);
                vms.vmms.of(&h.vmm).cleanup(&h.vmm);
                if let Some(ram) = &h.ram_file {
                    vms.ram.remove(ram);
                }
                if let Some(dm) = &h.dm {
                    // Work with no request behind it: an op id of its own.
                    let op = crate::op::mint();
                    super::lifecycle::detach_root_device(vms, &op, dm).await;
                }
                if let Some(net) = h.usernet.clone() {
                    let (id, vmm) = (vm.id.clone(), vms.vmms.get(banger_vmm::BackendKind::Qemu));
                    let _ = tokio::task::spawn_blocking(move || vmm.kill_usernet(&net, &id)).await;
                }
            }
            let was = vm.state;
            if was == VmState::Creating {
                vm.state = VmState::Error;
                vm.last_error = Some("the daemon stopped while the vm was being created".into());
            } else if matches!(was, VmState::Running | VmState::Paused) {
                // As the watcher does for an exit it sees (`watch.rs`).
                vm.state = VmState::Stopped;
                let backend = handles
                    .as_ref()
                    .map_or("the vmm", |h| h.vmm.backend.as_str());
                vm.last_error = Some(format!(
                    "{backend} exited while no daemon was running; see {}",
                    super::console_log(&dir).display()
                ));
            }
            vm.updated_at_ms = now_ms();
            tracing::warn!(vm = %vm.name, was = was.as_str(), now = vm.state.as_str(), "vmm is gone; cleaned up");
            let record = vm.clone();
            vms.db.call(move |s| s.update_vm(&record)).await?;
        }
    }
    Ok(())
}

/// What a daemon killed in the middle of a create or a delete left in
/// `DATA/vms`: a delete's renamed directory (`.deleting-ID`; its row may
/// still be there) is finished, and a VM directory without a row (a
/// create's disks made before its row was written) is removed. Only
/// names a VM directory can have are touched. Runs before any request is
/// served, so no create is in flight.
async fn finish_interrupted(vms: &Vms) -> Result<(), banger_store::StoreError> {
    let root = vms.settings.data_dir.join("vms");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    let known: HashSet<String> = vms
        .db
        .call(|s| s.vms())
        .await?
        .into_iter()
        .map(|vm| vm.id)
        .collect();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if let Some(id) = name.strip_prefix(DELETING_PREFIX) {
            if known.contains(id) {
                let vm_id = id.to_owned();
                let vm = vms.db.call(move |s| s.vm(&vm_id)).await?;
                tracing::warn!(vm = %vm.name, "finishing a delete cut short by a crash");
                let vm_id = vm.id.clone();
                vms.db.call(move |s| s.delete_vm(&vm_id)).await?;
                let (ssh, name) = (vms.ssh.clone(), vm.name.clone());
                let _ = tokio::task::spawn_blocking(move || ssh.forget(&name)).await;
                if let Some(base) = &vm.base_snapshot_id {
                    super::snapshot::drop_if_unused_fork_base(vms, base).await;
                }
            }
            remove_dir(path).await;
        } else if is_vm_id(&name) && !known.contains(&name) {
            tracing::warn!(dir = %path.display(), "removing a vm directory without a record (a create cut short by a crash)");
            remove_dir(path).await;
        }
    }
    Ok(())
}

async fn remove_dir(path: std::path::PathBuf) {
    let shown = path.display().to_string();
    match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(dir = %shown, error = %e, "could not remove"),
        Err(e) => tracing::warn!(dir = %shown, error = %e, "could not remove"),
    }
}

/// The shape of the ids `create::new_id` makes: 12 lowercase hex digits.
fn is_vm_id(name: &str) -> bool {
    name.len() == 12 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A VM the user did not pause but whose VMM is paused was being
/// snapshotted when the daemon died: let it run again. (Its agent thaws
/// the guest's filesystems by itself once the freeze times out.)
async fn resume_if_left_paused(vms: &Vms, vm: &banger_store::VmRecord) {
    let Some(h) = vms.table.handles(&vm.id) else {
        return;
    };
    let vmm = vms.vmms.of(&h.vmm);
    let handle = h.vmm.clone();
    let name = vm.name.clone();
    let resumed = tokio::task::spawn_blocking(move || match vmm.status(&handle) {
        Ok(banger_vmm::VmRunState::Running) => false,
        Ok(state) => {
            tracing::warn!(vm = %name, ?state, "vmm left paused by a crash; resuming it");
            if let Err(e) = vmm.resume(&handle) {
                tracing::warn!(vm = %name, error = %e, "could not resume");
            }
            true
        }
        Err(e) => {
            tracing::warn!(vm = %name, error = %e, "could not ask the vmm its state");
            false
        }
    })
    .await
    .unwrap_or(false);
    if resumed && h.agent.is_some() {
        // The snapshot may have frozen its filesystems: thaw them now
        // rather than at the agent's own deadline. In the background, so
        // the daemon starts serving meanwhile.
        let guest = Arc::clone(&vms.guest);
        let vm = vm.clone();
        tokio::spawn(async move {
            if let Err(e) = guest.thaw(&vm, &h).await {
                tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "could not thaw after the crash (the agent thaws by itself)");
            }
        });
    }
}
