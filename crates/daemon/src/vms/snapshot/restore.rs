//! VMs continuing from a snapshot: `vm restore` rolls a VM back to one of
//! its own, `vm fork` makes new VMs from a running one, and a create from
//! a snapshot or template lays the new VM's disks over the snapshot's.

use std::path::Path;

use banger_proto::snapshot::{VmForkParams, VmForked, VmRestoreParams};
use banger_proto::{DiskStrategy, SnapshotKind};
use banger_store::{SnapshotRecord, VmRecord, VmState};

use super::take::AfterSave;
use super::{Identity, MAX_FORKS, layer};
use crate::op::OpCtx;
use crate::ops::now_ms;
use crate::validate;
use crate::vms::lifecycle::{Boot, delete_locked, kill_locked, locked, start_locked_from};
use crate::vms::ram::RestoredRam;
use crate::vms::{Reservations, VmError, Vms, layered_work_disk, view, vm_dir, work_disk};

/// Gives `vm_dir` raw copies of the snapshot's disks (reflinked where the
/// filesystem can), under the names a Firecracker VM's disks have: its
/// saved state names them relative to the VM directory
/// (`banger_vmm::firecracker`, "Paths"). Returns the root strategy.
pub fn copy_raw_disks(
    snapshot_dir: &Path,
    vm_dir: &Path,
) -> Result<crate::disks::RootStrategy, VmError> {
    let strategy = crate::disks::choose_raw_root_strategy(vm_dir, false);
    let (root, root_format) = layer(snapshot_dir, "root");
    let (work, work_format) = layer(snapshot_dir, "work");
    if root_format != banger_vmm::DiskFormat::Raw || work_format != banger_vmm::DiskFormat::Raw {
        return Err(VmError::FirecrackerCannot(
            "restore a snapshot with qcow2 disks",
        ));
    }
    crate::disks::copy_layer(&root, &vm_dir.join(strategy.file_name()))?;
    crate::disks::copy_layer(&work, &work_disk(vm_dir))?;
    // A VM rolled back from a device-mapper root disk has a raw one now.
    let cow = vm_dir.join(crate::disks::dm::COW_FILE);
    match std::fs::remove_file(&cow) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(VmError::Io {
                what: "remove",
                path: cow,
                source,
            });
        }
    }
    Ok(strategy)
}

/// Makes `vm_dir`'s root and work disks qcow2 layers over the snapshot's
/// frozen ones (removing whatever disks were there).
pub fn layer_over(snapshot_dir: &Path, vm_dir: &Path) -> Result<(), VmError> {
    for old in ["root.qcow2", "root.ext4", "work.ext4", "work.qcow2"] {
        let path = vm_dir.join(old);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(VmError::Io {
                    what: "remove",
                    path,
                    source,
                });
            }
        }
    }
    let (root, root_format) = layer(snapshot_dir, "root");
    crate::disks::make_overlay(&root, root_format, &vm_dir.join("root.qcow2"))?;
    let (work, work_format) = layer(snapshot_dir, "work");
    crate::disks::make_overlay(&work, work_format, &layered_work_disk(vm_dir))?;
    debug_assert!(!work_disk(vm_dir).exists());
    Ok(())
}

/// A `vm restore` that passed its checks.
#[derive(Debug)]
pub struct RestorePlan {
    pub vm: String,
    snapshot: SnapshotRecord,
}

/// The VM exists, the snapshot exists and is of that VM.
pub async fn plan_restore(vms: &Vms, p: VmRestoreParams) -> Result<RestorePlan, VmError> {
    let vm = crate::vms::find(vms, &p.name).await?;
    let name = p.snapshot.clone();
    let snapshot = vms.db.call(move |s| s.snapshot(&name)).await?;
    if snapshot.vm_id != vm.id {
        return Err(VmError::SnapshotOfOtherVm {
            snapshot: snapshot.name,
            of: snapshot.vm_name,
            vm: vm.name,
        });
    }
    Ok(RestorePlan {
        vm: vm.name,
        snapshot,
    })
}

/// The `vm.restore` operation: the VM's VMM is killed (what it had since
/// the snapshot is discarded), its disks become layers over the
/// snapshot's, and it continues from the snapshot's memory.
pub(crate) async fn restore_vm(
    vms: &Vms,
    ctx: &OpCtx,
    plan: RestorePlan,
) -> Result<VmRecord, VmError> {
    let (_guard, vm) = locked(vms, &plan.vm).await?;
    continue_from(vms, ctx, vm, &plan.snapshot, "restore from snapshot").await
}

/// Replaces `vm`'s VMM (the caller holds its lock): the old one is killed,
/// the disks become layers over the snapshot's, and the VM continues from
/// the snapshot's memory with its own identity kept.
async fn continue_from(
    vms: &Vms,
    ctx: &OpCtx,
    vm: VmRecord,
    snapshot: &SnapshotRecord,
    stage: &'static str,
) -> Result<VmRecord, VmError> {
    ctx.stage("stop vm");
    let mut vm = kill_locked(vms, ctx, vm).await?;
    let firecracker = snapshot.vmm_backend == banger_proto::Backend::Firecracker;
    ctx.stage(if firecracker {
        "copy the snapshot's disks"
    } else {
        "lay disks over the snapshot"
    });
    let dir = vm_dir(vms, &vm.id);
    let strategy = {
        let (sdir, dir) = (snapshot.dir.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            if firecracker {
                Ok(copy_raw_disks(&sdir, &dir)?.disk_strategy())
            } else {
                layer_over(&sdir, &dir).map(|()| DiskStrategy::Qcow2)
            }
        })
        .await
        .map_err(|e| VmError::Task("disk", e))??
    };
    let old_base = vm.base_snapshot_id.replace(snapshot.id.clone());
    vm.disk_strategy = Some(strategy);
    vm.updated_at_ms = now_ms();
    let record = vm.clone();
    vms.db.call(move |s| s.update_vm(&record)).await?;
    if let Some(old) = old_base.filter(|o| *o != snapshot.id) {
        super::drop_if_unused_fork_base(vms, &old).await;
    }
    start_locked_from(
        vms,
        vm,
        ctx,
        Boot::Restore {
            snapshot,
            identity: Identity::Same,
            stage,
            ram: RestoredRam::Own,
        },
    )
    .await
}

/// A `vm fork` that passed its checks, holding its names.
#[derive(Debug)]
pub struct ForkPlan {
    pub source: String,
    names: Vec<String>,
    base_name: String,
    _reservation: crate::vms::create::Reservation,
}

/// Names (`NEW`, or `NEW-1`...`NEW-N`) valid, free and reserved; the
/// source exists.
pub async fn plan_fork(vms: &Vms, p: VmForkParams) -> Result<ForkPlan, VmError> {
    let count = p.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(VmError::ForkCount(count));
    }
    validate::name("vm", &p.new_name)?;
    let source = crate::vms::find(vms, &p.name).await?;
    match source.state {
        VmState::Running => {}
        VmState::Paused => return Err(VmError::Paused(source.name)),
        _ => return Err(VmError::NotRunning { name: source.name }),
    }
    let names: Vec<String> = if count == 1 {
        vec![p.new_name.clone()]
    } else {
        (1..=count).map(|i| format!("{}-{i}", p.new_name)).collect()
    };
    for n in &names {
        validate::name("vm", n)?;
    }
    let base_name = format!("{}-base", p.new_name);
    validate::name("snapshot", &base_name)?;
    super::take::check_name_free(vms, &base_name).await?;
    let reservation = Reservations::take_names(&vms.reservations, &names)?;
    for n in &names {
        if crate::vms::vm_exists(vms, n).await? {
            return Err(VmError::NameTaken(n.clone()));
        }
    }
    Ok(ForkPlan {
        source: source.name,
        names,
        base_name,
        _reservation: reservation,
    })
}

/// The `vm.fork` operation: a snapshot of the source, which then
/// continues from that snapshot itself in a new VMM process (so it maps
/// the same frozen RAM file as the forks and shares its pages with them:
/// a source that ran on after its save would have faulted in every page
/// of its own RAM mapping, see docs/benchmarks.md), then each fork
/// restored from it with an identity of its own. The source keeps its
/// processes, files and identity; its user-mode connections are reset.
/// A failure deletes every fork made and the snapshot, and leaves the
/// source running.
pub(crate) async fn fork(vms: &Vms, ctx: &OpCtx, plan: ForkPlan) -> Result<VmForked, VmError> {
    // Forks may reach what their source may reach, no more.
    let egress;
    // And their later cold starts wait for what its do.
    let wait_for;
    let base = {
        let (_guard, source) = locked(vms, &plan.source).await?;
        egress = source.egress.clone();
        wait_for = source.wait_for;
        if source.state == VmState::Paused {
            return Err(VmError::Paused(source.name));
        }
        // A source with a RAM file of its own is paused only while its
        // device state is saved and the file copied, and runs on in its
        // QEMU, connections and all. One that maps a snapshot's RAM
        // privately must stream all of its RAM, and then continues from
        // the fork's snapshot on a RAM file of its own: its next fork is
        // the quick kind.
        let owns_ram = vms
            .table
            .handles(&source.id)
            .is_some_and(|h| h.ram_file.is_some());
        let after = if owns_ram {
            AfterSave::Resume
        } else {
            AfterSave::StayPaused
        };
        let taken = super::take_locked(
            vms,
            ctx,
            &source,
            &plan.base_name,
            SnapshotKind::Fork,
            None,
            after,
        )
        .await;
        let base = match taken {
            Ok(base) => base,
            Err(e) => {
                if let Some(h) = vms.table.handles(&source.id) {
                    let _ = super::take::resume_best_effort(vms, &source, &h).await;
                }
                return Err(e);
            }
        };
        if !owns_ram {
            continue_from(vms, ctx, source, &base, "continue source from the snapshot").await?;
        }
        base
    };
    let mut made: Vec<VmRecord> = Vec::new();
    let mut result = Ok(());
    for name in &plan.names {
        ctx.check_cancelled()?;
        let made_one = create_from(
            vms,
            ctx,
            &base,
            OwnPart {
                name,
                publish: &[],
                egress: &egress,
                wait_for,
            },
            "restore from snapshot",
            RestoredRam::MapSnapshot,
        )
        .await;
        match made_one {
            Ok(vm) => made.push(vm),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let Err(e) = result {
        ctx.stage("roll back");
        for vm in made {
            let lock = vms.table.lock_for(&vm.id);
            let _g = lock.lock().await;
            let current = crate::vms::find(vms, &vm.id).await.unwrap_or(vm);
            let _ = delete_locked(vms, ctx, current).await;
        }
        super::drop_if_unused_fork_base(vms, &base.id).await;
        return Err(e);
    }
    let mut views = Vec::with_capacity(made.len());
    for vm in &made {
        views.push(view(vms, vm).await?);
    }
    Ok(VmForked {
        snapshot: base.name,
        vms: views,
    })
}

/// What a VM made from a snapshot has of its own, besides a new identity.
pub(crate) struct OwnPart<'a> {
    pub name: &'a str,
    pub publish: &'a [banger_proto::PublishSpec],
    pub egress: &'a banger_proto::Egress,
    /// What its cold starts wait for (its own restore waits for the
    /// agent to give it its identity, whatever this says).
    pub wait_for: Option<banger_proto::WaitFor>,
}

/// Makes VM `own.name` from `snapshot` and starts it from the snapshot's
/// memory with a new identity; rolled back entirely on failure.
pub(crate) async fn create_from(
    vms: &Vms,
    ctx: &OpCtx,
    snapshot: &SnapshotRecord,
    own: OwnPart<'_>,
    stage: &'static str,
    ram: RestoredRam,
) -> Result<VmRecord, VmError> {
    let bridged = snapshot.network_mode == banger_proto::NetworkMode::Bridged;
    if bridged && (!snapshot.has_agent || own.wait_for == Some(banger_proto::WaitFor::None)) {
        // Without an agent the new VM would keep the source's MAC and
        // address on the bridge.
        return Err(VmError::NoAgentForIdentity(snapshot.name.clone()));
    }
    let id = crate::vms::create::new_id();
    let dir = vm_dir(vms, &id);
    let lock = vms.table.lock_for(&id);
    let _guard = lock.lock().await;
    let sdir = snapshot.dir.clone();
    let firecracker = snapshot.vmm_backend == banger_proto::Backend::Firecracker;
    let disk_strategy = crate::vms::prepare_vm_dir(&dir, move |d| {
        if firecracker {
            Ok(copy_raw_disks(&sdir, d)?.disk_strategy())
        } else {
            layer_over(&sdir, d).map(|()| DiskStrategy::Qcow2)
        }
    })
    .await?;
    let now = now_ms();
    let vm = VmRecord {
        id: id.clone(),
        name: own.name.to_owned(),
        image_id: snapshot.image_id.clone(),
        kernel_id: snapshot.kernel_id.clone(),
        vcpus: snapshot.vcpus,
        memory_mib: snapshot.memory_mib,
        disk_size_bytes: snapshot.disk_size_bytes,
        network_mode: snapshot.network_mode,
        egress: own.egress.clone(),
        backend: Some(snapshot.vmm_backend),
        disk_strategy: Some(disk_strategy),
        published_ports: own.publish.to_vec(),
        state: VmState::Creating,
        last_error: None,
        created_at_ms: now,
        updated_at_ms: now,
        base_snapshot_id: Some(snapshot.id.clone()),
        wait_for: own.wait_for,
        backend_reason: Some(format!(
            "continues snapshot {} made under {}",
            snapshot.name, snapshot.vmm_backend
        )),
    };
    crate::vms::insert_new_vm(vms, &vm, &dir).await?;
    tracing::info!(vm = %vm.name, id = %vm.id, snapshot = %snapshot.name, "vm created from a snapshot");
    let started = start_locked_from(
        vms,
        vm.clone(),
        ctx,
        Boot::Restore {
            snapshot,
            identity: Identity::New,
            stage,
            ram,
        },
    )
    .await;
    match started {
        Ok(vm) => Ok(vm),
        Err(e) => {
            // A VM that never ran is not kept: remove it entirely.
            let current = crate::vms::find(vms, &vm.id).await.unwrap_or(vm);
            let _ = delete_locked(vms, ctx, current).await;
            Err(e)
        }
    }
}
