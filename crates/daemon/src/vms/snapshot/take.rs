//! Taking a snapshot of a running VM, which keeps running.
//!
//! With the guest's filesystems synced and frozen by its agent: pause,
//! save device state and RAM as one stream (about 0.3 s for a 1 GiB TCG
//! guest once QEMU's migration bandwidth limit is lifted), copy the disk
//! layers (reflinked where the filesystem can), resume and thaw. The VM
//! is paused only for the save and the copies.
//!
//! Then, with the VM running again, "prepare fast restore": a helper QEMU
//! (marked `banger-snap-ID` on its command line) loads the stream into a
//! shared RAM file and saves only its device state, so restores map that
//! file instead of reading a stream (0.1 s instead of 1 s, and restored
//! VMs share its pages). The RAM file is staged in `/dev/shm` when it
//! exists: loading into a disk-backed shared mapping was four times
//! slower here.

use std::path::{Path, PathBuf};

use banger_proto::SnapshotKind;
use banger_proto::snapshot::VmSnapshotParams;
use banger_store::{SnapshotRecord, VmRecord, VmState};
use banger_vmm::{
    AgentChannel, BootSource, MachineConfig, MemoryBacking, NetBackend, NetInterface, RamSave,
    VmSpec, Vmm,
};

use super::{
    FREEZE_TIMEOUT, drives, layer, memory_file, snapshots_dir, state_file, to_proto_backend,
};
use crate::op::OpCtx;
use crate::ops::now_ms;
use crate::validate;
use crate::vms::{Handles, VmError, Vms, vm_dir, work_drive};

/// On the command line of a helper QEMU that builds a snapshot's RAM file.
pub(super) const BUILDER_MARKER: &str = "process=banger-snap-";

/// A snapshot request that passed its checks.
#[derive(Debug)]
pub struct SnapshotPlan {
    pub vm: String,
    pub name: String,
}

/// Checks the snapshot's name (defaulting it) and that the VM exists.
pub async fn plan_snapshot(vms: &Vms, p: VmSnapshotParams) -> Result<SnapshotPlan, VmError> {
    let vm = crate::vms::find(vms, &p.name).await?;
    if !matches!(vm.state, VmState::Running | VmState::Paused) {
        return Err(VmError::NotRunning { name: vm.name });
    }
    let name = match p.snapshot {
        Some(n) => n,
        None => default_name(&vm.name),
    };
    validate::name("snapshot", &name)?;
    check_name_free(vms, &name).await?;
    Ok(SnapshotPlan { vm: vm.name, name })
}

/// `VM-YYYYMMDD-HHMMSS` (UTC), cut to a valid name's length.
fn default_name(vm: &str) -> String {
    let t = banger_proto::time::UtcTime::from_unix_ms(now_ms());
    let stamp = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
    let keep = 63 - stamp.len() - 1;
    let prefix: String = vm.chars().take(keep).collect();
    format!("{}-{stamp}", prefix.trim_end_matches('-'))
}

pub(super) async fn check_name_free(vms: &Vms, name: &str) -> Result<(), VmError> {
    let n = name.to_owned();
    let exists = vms
        .db
        .call(move |s| match s.snapshot(&n) {
            Ok(_) => Ok(true),
            Err(banger_store::StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        })
        .await?;
    if exists {
        return Err(VmError::SnapshotNameTaken(name.to_owned()));
    }
    Ok(())
}

/// The `vm.snapshot` operation.
pub(crate) async fn snapshot(
    vms: &Vms,
    ctx: &OpCtx,
    plan: SnapshotPlan,
) -> Result<SnapshotRecord, VmError> {
    let (_guard, vm) = crate::vms::lifecycle::locked(vms, &plan.vm).await?;
    take_locked(
        vms,
        ctx,
        &vm,
        &plan.name,
        SnapshotKind::User,
        None,
        AfterSave::Resume,
    )
    .await
}

/// What a running VM does once its state is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterSave {
    /// Runs on in its QEMU (snapshot, template).
    Resume,
    /// Stays paused, its filesystems frozen, for the caller to replace
    /// (a fork's source continues from the fork's snapshot); if taking
    /// the snapshot fails it may be left paused: see [`resume_best_effort`].
    StayPaused,
}

/// Takes a snapshot of `vm` (running or paused; the caller holds its
/// lock). With [`AfterSave::Resume`] the VM is left as it was found.
pub(crate) async fn take_locked(
    vms: &Vms,
    ctx: &OpCtx,
    vm: &VmRecord,
    name: &str,
    kind: SnapshotKind,
    template_key: Option<String>,
    after: AfterSave,
) -> Result<SnapshotRecord, VmError> {
    check_name_free(vms, name).await?;
    let firecracker = crate::vmms::from_proto(vm.backend) == banger_vmm::BackendKind::Firecracker;
    if firecracker && template_key.is_some() {
        return Err(VmError::FirecrackerCannot("be warm templates"));
    }
    let handles = match vms.table.handles(&vm.id) {
        Some(h) if crate::vms::lifecycle::vmm_running(vms, &h.vmm, &vm.id).await => h,
        _ => {
            return Err(VmError::NotRunning {
                name: vm.name.clone(),
            });
        }
    };
    // QEMU VMs made from a snapshot sit on qcow2 layers over its disks;
    // Firecracker ones get raw copies (reflinked where the filesystem can).
    if !firecracker && !crate::disks::has_qemu_img() {
        return Err(VmError::NoLayeredDisks(vm.name.clone()));
    }
    let id = crate::vms::create::new_id();
    let root = snapshots_dir(vms);
    let tmp = root.join(format!(".tmp-{id}"));
    let dest = root.join(&id);
    mkdir(&tmp)?;
    // Forks and templates pair memory with disks and every VM made from
    // them continues from both, so they need no freeze. A user's
    // snapshot is made clean on disk too (its disks may be read alone).
    // The freeze costs 0.1 s, and every VM restored from a frozen
    // snapshot as much again for its thaw (a superblock write through a
    // new disk layer) before it is ready.
    let how = SaveHow {
        after,
        freeze: kind == SnapshotKind::User,
    };
    let result = build(vms, ctx, vm, &handles, &id, &tmp, how).await;
    let record = match result {
        Ok(()) => {
            let build = {
                let vmm = vms.vmms.of(&handles.vmm);
                tokio::task::spawn_blocking(move || vmm.build())
                    .await
                    .map_err(|e| VmError::Task("vmm build", e))??
            };
            let has_agent = handles.agent.is_some();
            SnapshotRecord {
                id: id.clone(),
                name: name.to_owned(),
                kind,
                vm_id: vm.id.clone(),
                vm_name: vm.name.clone(),
                parent_id: vm.base_snapshot_id.clone(),
                image_id: vm.image_id.clone(),
                kernel_id: vm.kernel_id.clone(),
                vcpus: vm.vcpus,
                memory_mib: vm.memory_mib,
                disk_size_bytes: vm.disk_size_bytes,
                network_mode: vm.network_mode,
                has_agent,
                dir: dest.clone(),
                vmm_backend: to_proto_backend(build.backend),
                vmm_version: build.version,
                machine: build.machine,
                accel: handles.accel,
                template_key,
                size_bytes: 0,
                created_at_ms: now_ms(),
            }
        }
        Err(e) => {
            super::remove_dir(&tmp);
            return Err(e);
        }
    };
    ctx.stage("record snapshot");
    let finished = {
        let (tmp, dest) = (tmp.clone(), dest.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            sync_dir_files(&tmp)?;
            std::fs::rename(&tmp, &dest)?;
            if let Some(parent) = dest.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(super::disk_usage(&dest))
        })
        .await
        .map_err(|e| VmError::Task("snapshot files", e))?
    };
    let size = match finished {
        Ok(size) => size,
        Err(source) => {
            super::remove_dir(&tmp);
            return Err(VmError::Io {
                what: "finish snapshot",
                path: tmp,
                source,
            });
        }
    };
    let mut record = record;
    record.size_bytes = size;
    let row = record.clone();
    if let Err(e) = vms.db.call(move |s| s.insert_snapshot(&row)).await {
        super::remove_dir(&dest);
        return Err(e.into());
    }
    tracing::info!(vm = %vm.name, snapshot = %record.name, kind = record.kind.as_str(), size, "snapshot taken");
    Ok(record)
}

/// What a save does around the VM.
#[derive(Debug, Clone, Copy)]
struct SaveHow {
    after: AfterSave,
    /// Sync and freeze the guest's filesystems first.
    freeze: bool,
}

/// Everything that writes the snapshot's files into `tmp`.
async fn build(
    vms: &Vms,
    ctx: &OpCtx,
    vm: &VmRecord,
    handles: &Handles,
    id: &str,
    tmp: &Path,
    SaveHow { after, freeze }: SaveHow,
) -> Result<(), VmError> {
    let stream = tmp.join("ram.stream");
    let was_paused = vm.state == VmState::Paused;
    if let (Some(base), None) = (&vm.base_snapshot_id, &handles.ram_file) {
        ctx.stage("read base memory ahead");
        warm_base_memory(vms, base).await;
    }
    if freeze && handles.agent.is_some() && !was_paused {
        ctx.stage("sync guest filesystems");
        if let Err(e) = vms.guest.freeze(vm, handles, FREEZE_TIMEOUT).await {
            // The snapshot pairs memory with disks, so it is consistent
            // without the freeze; only a disk-only reader would notice.
            tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "could not freeze the guest's filesystems");
        }
    }
    let saved = save_and_copy(vms, ctx, vm, handles, &stream, tmp, was_paused).await;
    if !was_paused && (after == AfterSave::Resume || saved.is_err()) {
        ctx.stage("resume vm");
        resume_best_effort(vms, vm, handles).await?;
    }
    saved?;
    if handles.ram_file.is_some() || handles.vmm.backend == banger_vmm::BackendKind::Firecracker {
        // The device state and the RAM file are in `tmp` already
        // (Firecracker maps its memory file privately at load: no
        // separate fast-restore form is needed).
        return Ok(());
    }
    ctx.check_cancelled()?;

    ctx.stage("prepare fast restore");
    let (vm2, kernel_id) = (vm.clone(), vm.kernel_id.clone());
    let kernel = vms.db.call(move |s| s.kernel(&kernel_id)).await?;
    let vmm = vms.vmms.of(&handles.vmm);
    let (tmp, id) = (tmp.to_path_buf(), id.to_owned());
    let agent = handles.agent.is_some();
    let accel = handles.accel;
    tokio::task::spawn_blocking(move || {
        let spec = builder_spec(&vm2, &kernel, &tmp, &id, agent, accel);
        make_ram_file(vmm.as_ref(), spec, &stream, &tmp, &id)
    })
    .await
    .map_err(|e| VmError::Task("prepare fast restore", e))?
}

/// Reads the RAM file a VM made from a snapshot maps, so that the save
/// (which reads every page of guest RAM) finds it in the page cache:
/// otherwise each untouched page, holes included, faults in one at a time
/// while the VM is paused (measured: save 1.8-3.7 s instead of 0.4 s; the
/// sequential read took 0.17 s for 1 GiB, before the pause). The pages
/// are clean page cache, reclaimable.
async fn warm_base_memory(vms: &Vms, base_id: &str) {
    let id = base_id.to_owned();
    let Ok(base) = vms.db.call(move |s| s.snapshot(&id)).await else {
        return;
    };
    let file = memory_file(&base.dir);
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        use std::io::Read;
        let mut f = std::fs::File::open(&file)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match f.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    })
    .await;
    if let Ok(Err(e)) = read {
        tracing::debug!(snapshot = %base.name, error = %e, "could not read the base's ram file ahead");
    }
}

/// Resumes a VM a snapshot paused, thaws its filesystems and steps its
/// clock (the last two only logged when they fail: the agent thaws by
/// itself). The resume's own failure is returned.
pub(crate) async fn resume_best_effort(
    vms: &Vms,
    vm: &VmRecord,
    handles: &Handles,
) -> Result<(), VmError> {
    let vmm = vms.vmms.of(&handles.vmm);
    let handle = handles.vmm.clone();
    let resumed = tokio::task::spawn_blocking(move || vmm.resume(&handle))
        .await
        .map_err(|e| VmError::Task("resume", e))
        .and_then(|r| r.map_err(VmError::from));
    if handles.agent.is_some() {
        if let Err(e) = vms.guest.thaw(vm, handles).await {
            tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "could not thaw the guest's filesystems (its agent thaws them by itself)");
        }
        if let Err(e) = vms.guest.set_time(vm, handles).await {
            tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "could not set the guest clock");
        }
    }
    resumed
}

/// Pauses (unless already paused), saves the VM's state and copies the
/// disk layers. A VM with a RAM file of its own saves its device state
/// alone (`state`) and its RAM file is copied (`mem`, holes kept); any
/// other streams device state and RAM to `stream`. Leaves the VM paused;
/// the caller resumes it.
async fn save_and_copy(
    vms: &Vms,
    ctx: &OpCtx,
    vm: &VmRecord,
    handles: &Handles,
    stream: &Path,
    tmp: &Path,
    was_paused: bool,
) -> Result<(), VmError> {
    if !was_paused {
        ctx.stage("pause vm");
    }
    let vmm = vms.vmms.of(&handles.vmm);
    let handle = handles.vmm.clone();
    let ram_file = handles.ram_file.clone();
    let (stream, tmp) = (stream.to_path_buf(), tmp.to_path_buf());
    let dir = vm_dir(vms, &vm.id);
    let strategy = vm
        .disk_strategy
        .and_then(crate::disks::RootStrategy::from_disk_strategy)
        .ok_or_else(|| VmError::NoRootStrategy(vm.name.clone()))?;
    // A device-mapper root disk is read through its device (the image
    // with the VM's writes over it): the store alone is not a disk.
    let root = match &handles.dm {
        Some(dm) if strategy == crate::disks::RootStrategy::DmSnapshot => dm.device.clone(),
        _ => dir.join(strategy.file_name()),
    };
    let ctx2 = ctx.clone();
    tokio::task::spawn_blocking(move || -> Result<(), VmError> {
        vmm.pause(&handle)?;
        ctx2.stage("save memory");
        let report = match &ram_file {
            Some(ram) => {
                let report =
                    vmm.save_state(&handle, &state_file(&tmp), RamSave::KeptInSharedFile)?;
                crate::disks::copy_layer(ram, &memory_file(&tmp))?;
                report
            }
            // Firecracker writes the memory beside the state; it is the
            // snapshot's memory file.
            None if handle.backend == banger_vmm::BackendKind::Firecracker => {
                let state = state_file(&tmp);
                let report = vmm.save_state(&handle, &state, RamSave::IntoState)?;
                let written = banger_vmm::firecracker::memory_file_of(&state);
                std::fs::rename(&written, memory_file(&tmp)).map_err(|source| VmError::Io {
                    what: "rename",
                    path: written,
                    source,
                })?;
                report
            }
            None => vmm.save_state(&handle, &stream, RamSave::IntoState)?,
        };
        tracing::debug!(
            bytes = report.bytes,
            elapsed_ms = report.elapsed.as_millis() as u64,
            own_ram_file = ram_file.is_some(),
            "vm state saved"
        );
        ctx2.stage("copy disks");
        let root_dest = if root.extension().is_some_and(|e| e == "qcow2") {
            tmp.join("root.qcow2")
        } else {
            tmp.join("root.img")
        };
        crate::disks::copy_layer(&root, &root_dest)?;
        let (work, format) = work_drive(&dir);
        let work_dest = match format {
            banger_vmm::DiskFormat::Qcow2 => tmp.join("work.qcow2"),
            banger_vmm::DiskFormat::Raw => tmp.join("work.img"),
        };
        crate::disks::copy_layer(&work, &work_dest)?;
        Ok(())
    })
    .await
    .map_err(|e| VmError::Task("save", e))?
}

/// The helper QEMU's spec: the VM's devices, over throwaway layers of the
/// snapshot's disks, with nothing behind its NIC but what the saved state
/// expects (QEMU's user network has state of its own; a TAP has none).
fn builder_spec(
    vm: &VmRecord,
    kernel: &banger_store::KernelRecord,
    tmp: &Path,
    id: &str,
    agent: bool,
    accel: banger_proto::Accel,
) -> VmSpec {
    let work_dir = tmp.join("build");
    VmSpec {
        vm_id: format!("snap-{id}"),
        name: format!("snapshot {id}"),
        vm_dir: work_dir.clone(),
        boot: BootSource {
            kernel: kernel.kernel_path.clone(),
            initrd: kernel.initrd_path.clone(),
            cmdline: "console=ttyS0".into(),
        },
        machine: MachineConfig {
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
        },
        drives: drives(
            (work_dir.join("root.qcow2"), banger_vmm::DiskFormat::Qcow2),
            (work_dir.join("work.qcow2"), banger_vmm::DiskFormat::Qcow2),
        ),
        net: vec![NetInterface {
            id: "net0".into(),
            mac: None,
            // The state must load: a state saved under slirp (user mode,
            // whatever the egress) has a section of slirp's and loads only
            // into a slirp NIC; one saved from a TAP has none and loads
            // into a NIC with nothing behind.
            backend: match vm.network_mode {
                banger_proto::NetworkMode::Bridged => NetBackend::Detached,
                banger_proto::NetworkMode::User => NetBackend::User {
                    forwards: Vec::new(),
                    restrict: true,
                },
            },
        }],
        agent: agent.then_some(AgentChannel::VirtioSerial),
        accel: match accel {
            banger_proto::Accel::Kvm => banger_vmm::Accel::Kvm,
            banger_proto::Accel::Tcg => banger_vmm::Accel::Tcg,
        },
        console_log: work_dir.join("console.log"),
        join_namespaces_of: None,
        memory: MemoryBacking::Anonymous,
    }
}

/// Where RAM files are staged while a stream is loaded into them.
fn staging_root() -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    shm.is_dir().then(|| shm.to_path_buf())
}

fn staging_prefix() -> String {
    format!("banger-{}-snap-", rustix::process::getuid().as_raw())
}

/// Removes staging directories a crash left in `/dev/shm`.
pub(super) fn remove_stale_staging() {
    let Some(root) = staging_root() else { return };
    let prefix = staging_prefix();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                super::remove_dir(&e.path());
            }
        }
    }
}

/// Loads `stream` into a shared RAM file with a helper QEMU, saves the
/// device state alone, and moves the RAM file next to it. The helper is
/// killed whatever happens.
fn make_ram_file(
    vmm: &dyn Vmm,
    mut spec: VmSpec,
    stream: &Path,
    tmp: &Path,
    id: &str,
) -> Result<(), VmError> {
    let work_dir = spec.vm_dir.clone();
    mkdir(&work_dir)?;
    for disk in ["root", "work"] {
        let (backing, format) = layer(tmp, disk);
        crate::disks::make_overlay(&backing, format, &work_dir.join(format!("{disk}.qcow2")))?;
    }
    let staging = match staging_root() {
        Some(root) => {
            let d = root.join(format!("{}{id}", staging_prefix()));
            mkdir(&d)?;
            d
        }
        None => work_dir.clone(),
    };
    let staged = staging.join("mem");
    spec.memory = MemoryBacking::File {
        path: staged.clone(),
        shared: true,
    };
    let result = (|| -> Result<(), VmError> {
        let handle = vmm.restore(&spec, stream, RamSave::IntoState, false)?;
        let saved = vmm.save_state(&handle, &state_file(tmp), RamSave::KeptInSharedFile);
        let _ = vmm.kill(&handle, banger_vmm::Signal::Kill);
        let _ = vmm.wait_exit(&handle, std::time::Duration::from_secs(10));
        saved?;
        crate::disks::copy_layer(&staged, &memory_file(tmp))?;
        Ok(())
    })();
    if staging != work_dir {
        super::remove_dir(&staging);
    }
    super::remove_dir(&work_dir);
    let _ = std::fs::remove_file(stream);
    result
}

fn mkdir(dir: &Path) -> Result<(), VmError> {
    std::fs::create_dir_all(dir).map_err(|source| VmError::Io {
        what: "create",
        path: dir.to_path_buf(),
        source,
    })
}

/// fsyncs every file in `dir`: a snapshot survives a host crash.
fn sync_dir_files(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::File::open(e.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_and_dated() {
        let n = default_name("dev");
        assert!(validate::name("snapshot", &n).is_ok(), "{n}");
        assert!(n.starts_with("dev-20"), "{n}");
        let long = default_name(&"a".repeat(63));
        assert!(validate::name("snapshot", &long).is_ok(), "{long}");
    }
}
