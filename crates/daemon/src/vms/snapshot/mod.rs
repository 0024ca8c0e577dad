//! Snapshots, restores, forks and warm templates (docs/snapshots.md).
//!
//! A snapshot is a directory `DATA/snapshots/ID/` and a store row: the
//! VM's device state (`state`), its RAM as a file (`mem`), and frozen
//! copies of its disk layers (`root.qcow2` or `root.img`, `work.img` or
//! `work.qcow2`). A VM restored from it gets qcow2 layers over those disks
//! and maps `mem` privately (copy-on-write), so every VM restored from one
//! snapshot shares its unchanged pages.
//!
//! - [`take`]: pause, save, copy the disk layers, resume; then turn the
//!   saved RAM stream into a RAM file ("prepare fast restore").
//! - [`restore`]: `vm restore`, `vm fork` and the disk layers of a VM made
//!   from a snapshot.
//! - [`template`]: warm templates, keyed by everything they are made from.
//!
//! A snapshot is built in `DATA/snapshots/.tmp-ID/` and renamed into place
//! before its row is written, so a crash never lists a half-written one;
//! [`collect_garbage`] removes what a crash left on the next start.

pub(crate) mod restore;
mod take;
pub(crate) mod template;

pub use restore::{ForkPlan, RestorePlan, plan_fork, plan_restore};
pub(crate) use restore::{fork, restore_vm};
pub use take::{SnapshotPlan, plan_snapshot};
pub(crate) use take::{snapshot, take_locked};
pub(crate) use template::{TemplateKey, template_key, warm};

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::SnapshotKind;
use banger_proto::snapshot::SnapshotView;
use banger_store::{SnapshotRecord, VmRecord};
use banger_vmm::{DiskFormat, Drive};

use super::{Handles, VmError, Vms};
use crate::op::OpCtx;

/// Most forks one `vm fork` makes.
pub const MAX_FORKS: u32 = 16;

/// How long the guest's filesystems may stay frozen if the daemon never
/// thaws them (it died mid-snapshot): the agent thaws by itself then.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(30);

/// The snapshots' directory.
pub fn snapshots_dir(vms: &Vms) -> PathBuf {
    vms.settings.data_dir.join("snapshots")
}

/// Device state, with the RAM left in [`memory_file`].
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// The guest's RAM, mapped privately by every VM restored from it.
pub fn memory_file(dir: &Path) -> PathBuf {
    dir.join("mem")
}

/// The frozen layer of one disk (`root` or `work`) in a snapshot dir, and
/// its format: a qcow2 layer when the VM's disk was one, else raw.
pub fn layer(dir: &Path, disk: &str) -> (PathBuf, DiskFormat) {
    let qcow2 = dir.join(format!("{disk}.qcow2"));
    if qcow2.exists() {
        (qcow2, DiskFormat::Qcow2)
    } else {
        (dir.join(format!("{disk}.img")), DiskFormat::Raw)
    }
}

/// The two drives every VM has, root first.
pub fn drives(root: (PathBuf, DiskFormat), work: (PathBuf, DiskFormat)) -> Vec<Drive> {
    vec![
        Drive {
            id: "root".into(),
            path: root.0,
            format: root.1,
            read_only: false,
            is_root: true,
        },
        Drive {
            id: "work".into(),
            path: work.0,
            format: work.1,
            read_only: false,
            is_root: false,
        },
    ]
}

/// What the agent changes in a restored guest before it is reported ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A new VM (fork, template, `--from-snapshot`): its own hostname,
    /// host key and, when bridged, MAC and address.
    New,
    /// The same VM rolled back (`vm restore`): only clock and RNG.
    Same,
}

/// The NIC settings a restored bridged guest switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetPlan {
    pub mac: String,
    pub address_cidr: String,
    pub gateway: String,
}

/// Refuses a restore under another VMM build, machine or accelerator
/// than the snapshot was made under: QEMU loads a state only into the
/// same build and device layout.
pub async fn check_compatible(
    vms: &Vms,
    snapshot: &SnapshotRecord,
    accel: banger_vmm::Accel,
) -> Result<(), VmError> {
    let vmm = vms.vmms.get(match snapshot.vmm_backend {
        banger_proto::Backend::Firecracker => banger_vmm::BackendKind::Firecracker,
        banger_proto::Backend::Qemu => banger_vmm::BackendKind::Qemu,
    });
    let build = tokio::task::spawn_blocking(move || vmm.build())
        .await
        .map_err(|e| VmError::Task("vmm build", e))??;
    let incompatible = |what: &'static str, recorded: String, here: String| VmError::Incompatible {
        snapshot: snapshot.name.clone(),
        what,
        recorded,
        here,
    };
    let backend = to_proto_backend(build.backend);
    if backend != snapshot.vmm_backend {
        return Err(incompatible(
            "vmm",
            snapshot.vmm_backend.to_string(),
            backend.to_string(),
        ));
    }
    if build.version != snapshot.vmm_version {
        return Err(incompatible(
            "vmm build",
            snapshot.vmm_version.clone(),
            build.version,
        ));
    }
    if build.machine != snapshot.machine {
        return Err(incompatible(
            "machine",
            snapshot.machine.clone(),
            build.machine,
        ));
    }
    let accel = to_proto_accel(accel);
    if accel != snapshot.accel {
        return Err(incompatible(
            "accelerator",
            snapshot.accel.to_string(),
            accel.to_string(),
        ));
    }
    Ok(())
}

pub(crate) fn to_proto_accel(a: banger_vmm::Accel) -> banger_proto::Accel {
    match a {
        banger_vmm::Accel::Kvm => banger_proto::Accel::Kvm,
        banger_vmm::Accel::Tcg => banger_proto::Accel::Tcg,
    }
}

pub(crate) fn to_proto_backend(b: banger_vmm::BackendKind) -> banger_proto::Backend {
    match b {
        banger_vmm::BackendKind::Qemu => banger_proto::Backend::Qemu,
        banger_vmm::BackendKind::Firecracker => banger_proto::Backend::Firecracker,
    }
}

/// Gives a restored guest its identity (see [`Identity`]) through its
/// agent; returns its SSH host public key line (`None` when `ssh` is
/// false: a guest without an SSH server gets no new key and may have
/// none).
pub(super) async fn apply_identity(
    vms: &Vms,
    vm: &VmRecord,
    handles: &Handles,
    identity: Identity,
    net: Option<&GuestNetPlan>,
    ssh: bool,
) -> Result<Option<String>, VmError> {
    let request = super::guest::identity::Identity {
        hostname: vm.name.clone(),
        net: match identity {
            Identity::New => net.map(|n| banger_proto::agent::GuestNet {
                mac: n.mac.clone(),
                address_cidr: n.address_cidr.clone(),
                gateway: n.gateway.clone(),
                dns: vec![n.gateway.clone()],
            }),
            Identity::Same => None,
        },
        new_host_key: ssh && identity == Identity::New,
    };
    let key = vms.guest.apply_identity(vm, handles, &request).await?;
    Ok(ssh.then_some(key))
}

/// Bytes the files under `dir` take on disk.
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| if m.is_dir() { 0 } else { m.blocks() * 512 })
        .sum()
}

/// The view `snapshot.show` and `snapshot.list` return.
pub async fn view(vms: &Vms, s: &SnapshotRecord) -> Result<SnapshotView, VmError> {
    let (image_id, kernel_id, id, parent_id) = (
        s.image_id.clone(),
        s.kernel_id.clone(),
        s.id.clone(),
        s.parent_id.clone(),
    );
    let (image, kernel, used_by, parent) = vms
        .db
        .call(move |st| {
            let parent = match parent_id {
                Some(p) => Some(st.snapshot(&p)?.name),
                None => None,
            };
            Ok((
                st.image(&image_id)?.name,
                st.kernel(&kernel_id)?.name,
                st.snapshot_users(&id)?,
                parent,
            ))
        })
        .await?;
    Ok(SnapshotView {
        id: s.id.clone(),
        name: s.name.clone(),
        kind: s.kind,
        vm: s.vm_name.clone(),
        image,
        kernel,
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        disk_size_bytes: s.disk_size_bytes,
        network: s.network_mode,
        vmm: format!("{} {} {}", s.vmm_backend, s.vmm_version, s.machine),
        accel: s.accel,
        parent,
        used_by,
        size_bytes: s.size_bytes,
        dir: s.dir.display().to_string(),
        created_at_ms: s.created_at_ms,
    })
}

/// Every snapshot's view, oldest first.
pub async fn views(vms: &Vms) -> Result<Vec<SnapshotView>, VmError> {
    let all = vms.db.call(|s| s.snapshots()).await?;
    let mut out = Vec::with_capacity(all.len());
    for s in &all {
        out.push(view(vms, s).await?);
    }
    Ok(out)
}

/// Deletes a snapshot no VM or snapshot needs: its row first (the store
/// refuses while something needs it), then its files.
pub async fn delete(vms: &Vms, name: &str) -> Result<SnapshotRecord, VmError> {
    let name = name.to_owned();
    let s = vms.db.call(move |st| st.delete_snapshot(&name)).await?;
    remove_dir(&s.dir);
    tracing::info!(snapshot = %s.name, "snapshot deleted");
    Ok(s)
}

/// `snapshot delete`: [`delete`], then the fork base it sat on if that is
/// now unused.
pub async fn delete_requested(vms: &Vms, name: &str) -> Result<SnapshotRecord, VmError> {
    let s = delete(vms, name).await?;
    if let Some(parent) = &s.parent_id {
        drop_if_unused_fork_base(vms, parent).await;
    }
    template::prune_replaced_images(vms).await;
    Ok(s)
}

/// Deletes snapshot `id` if it is a fork base nothing needs any more
/// (called after the VMs that used it are deleted or rolled back).
pub(crate) async fn drop_if_unused_fork_base(vms: &Vms, id: &str) {
    // A fork base's layers may sit on an older fork base (its parent),
    // which its deletion can leave unused in turn: walk up the chain.
    let mut next = Some(id.to_owned());
    while let Some(id) = next.take() {
        let found = vms
            .db
            .call(move |st| {
                let s = st.snapshot(&id)?;
                let users = st.snapshot_users(&id)?;
                Ok((s, users))
            })
            .await;
        let Ok((s, users)) = found else { return };
        if s.kind != SnapshotKind::Fork || !users.is_empty() {
            return;
        }
        match delete(vms, &s.id).await {
            Ok(_) => next = s.parent_id,
            Err(e) => {
                tracing::warn!(snapshot = %s.name, error = %crate::error::chain(&e), "could not delete an unused fork base");
            }
        }
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove");
        }
    }
}

/// What a crash can leave behind, removed on daemon start: unfinished
/// snapshot directories, directories without a row, RAM files staged in
/// shared memory, RAM files of VMs that no longer run, helper VMMs that were turning a RAM stream into a RAM
/// file, and fork bases nothing uses.
pub async fn collect_garbage(vms: &Vms) -> Result<(), VmError> {
    let dir = snapshots_dir(vms);
    let known: std::collections::HashSet<String> = vms
        .db
        .call(|st| st.snapshots())
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    // Called at start, after reconcile and before any request: a VM
    // without handles has no VMM that could map its RAM file.
    let running = vms.table.running_ids();
    let ram = vms.ram.clone();
    tokio::task::spawn_blocking(move || {
        ram.remove_unused(&running);
        for pid in banger_vmm::qemu_pids_with_arg(take::BUILDER_MARKER) {
            let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            tracing::warn!(
                pid = pid.as_raw_nonzero().get(),
                "killing a snapshot builder left by a crash"
            );
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") || !known.contains(&name) {
                    tracing::warn!(dir = %e.path().display(), "removing an unfinished snapshot");
                    remove_dir(&e.path());
                }
            }
        }
        take::remove_stale_staging();
    })
    .await
    .map_err(|e| VmError::Task("snapshot cleanup", e))?;
    // A template build the daemon died in: its hidden VM is not kept.
    let hidden: Vec<VmRecord> = vms
        .db
        .call(|st| st.vms())
        .await?
        .into_iter()
        .filter(|vm| vm.name.starts_with("_template-"))
        .collect();
    for vm in hidden {
        tracing::warn!(vm = %vm.name, "removing the vm of an unfinished template build");
        let ctx = OpCtx::new(
            crate::op::mint(),
            tokio_util::sync::CancellationToken::new(),
        );
        let lock = vms.table.lock_for(&vm.id);
        let _guard = lock.lock().await;
        if let Err(e) = super::lifecycle::delete_locked(vms, &ctx, vm).await {
            tracing::warn!(error = %crate::error::chain(&e), "could not remove it");
        }
    }
    let forks: Vec<String> = vms
        .db
        .call(|st| st.snapshots())
        .await?
        .into_iter()
        .filter(|s| s.kind == SnapshotKind::Fork)
        .map(|s| s.id)
        .collect();
    for id in forks {
        drop_if_unused_fork_base(vms, &id).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeVmm, test_state_with};
    use std::sync::Arc;

    fn state(root: &Path) -> Arc<crate::state::DaemonState> {
        test_state_with(root, Arc::new(FakeVmm::default()))
    }

    /// A snapshot as one made on this host under TCG would be recorded.
    fn recorded() -> SnapshotRecord {
        SnapshotRecord {
            id: "s1id".into(),
            name: "s1".into(),
            kind: SnapshotKind::User,
            vm_id: "id-dev".into(),
            vm_name: "dev".into(),
            parent_id: None,
            image_id: "i".into(),
            kernel_id: "k".into(),
            vcpus: 1,
            memory_mib: 1024,
            disk_size_bytes: 1 << 30,
            network_mode: banger_proto::NetworkMode::User,
            has_agent: true,
            dir: "/nowhere".into(),
            vmm_backend: banger_proto::Backend::Qemu,
            vmm_version: "7.2.22".into(),
            machine: "microvm".into(),
            accel: banger_proto::Accel::Tcg,
            template_key: None,
            size_bytes: 0,
            created_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn restores_are_refused_under_another_build_machine_or_accelerator() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state(tmp.path());
        let vms = &state.vms;
        check_compatible(vms, &recorded(), banger_vmm::Accel::Tcg)
            .await
            .unwrap();

        let mut other_build = recorded();
        other_build.vmm_version = "8.0.0".into();
        let err = check_compatible(vms, &other_build, banger_vmm::Accel::Tcg)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot s1 was made under vmm build 8.0.0, but this host would restore it under vmm build 7.2.22"
        );
        assert_eq!(
            crate::dispatch::RpcError::from(err).code,
            banger_proto::ErrorCode::Conflict
        );

        let err = check_compatible(vms, &recorded(), banger_vmm::Accel::Kvm)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot s1 was made under accelerator tcg, but this host would restore it under accelerator kvm"
        );

        let mut other_machine = recorded();
        other_machine.machine = "q35".into();
        let err = check_compatible(vms, &other_machine, banger_vmm::Accel::Tcg)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("machine q35"), "{err}");
    }

    #[tokio::test]
    async fn a_restart_removes_what_a_crashed_snapshot_left() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state(tmp.path());
        let vms = &state.vms;
        let dir = snapshots_dir(vms);
        std::fs::create_dir_all(dir.join(".tmp-abc")).unwrap();
        std::fs::write(dir.join(".tmp-abc/ram.stream"), b"x").unwrap();
        std::fs::create_dir_all(dir.join("norow")).unwrap();
        collect_garbage(vms).await.unwrap();
        assert!(!dir.join(".tmp-abc").exists());
        assert!(!dir.join("norow").exists());
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_anything_is_made() {
        use banger_proto::snapshot::{VmForkParams, VmRestoreParams, VmSnapshotParams};
        let tmp = tempfile::tempdir().unwrap();
        let state = state(tmp.path());
        let vms = &state.vms;
        crate::testing::seed(&state, "dev", banger_store::VmState::Running);
        crate::testing::seed(&state, "off", banger_store::VmState::Stopped);
        let mut s1 = recorded();
        s1.image_id = "i1".into();
        s1.kernel_id = "k1".into();
        s1.vm_id = "id-dev".into();
        let row = s1.clone();
        state.lock_store_for_tests().insert_snapshot(&row).unwrap();
        let snap = |vm: &str, name: Option<&str>| VmSnapshotParams {
            name: vm.into(),
            snapshot: name.map(Into::into),
        };
        let code = |e: VmError| crate::dispatch::RpcError::from(e).code;
        use banger_proto::ErrorCode as C;

        let e = take::plan_snapshot(vms, snap("off", None))
            .await
            .unwrap_err();
        assert!(matches!(e, VmError::NotRunning { .. }), "{e}");
        let e = take::plan_snapshot(vms, snap("dev", Some("Bad Name")))
            .await
            .unwrap_err();
        assert_eq!(code(e), C::BadParams);
        let e = take::plan_snapshot(vms, snap("dev", Some("s1")))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "a snapshot named \"s1\" already exists");
        let e = take::plan_snapshot(vms, snap("ghost", None))
            .await
            .unwrap_err();
        assert_eq!(code(e), C::NotFound);
        let plan = take::plan_snapshot(vms, snap("dev", None)).await.unwrap();
        assert!(plan.name.starts_with("dev-"), "{}", plan.name);

        let fork = |count: Option<u32>, new: &str, src: &str| VmForkParams {
            name: src.into(),
            new_name: new.into(),
            count,
        };
        for bad in [0, MAX_FORKS + 1] {
            let e = plan_fork(vms, fork(Some(bad), "x", "dev"))
                .await
                .unwrap_err();
            assert!(matches!(e, VmError::ForkCount(_)), "{e}");
        }
        let e = plan_fork(vms, fork(None, "x", "off")).await.unwrap_err();
        assert!(matches!(e, VmError::NotRunning { .. }), "{e}");
        let e = plan_fork(vms, fork(None, "off", "dev")).await.unwrap_err();
        assert_eq!(code(e), C::Conflict);
        // Names are held while a fork's plan lives.
        let held = plan_fork(vms, fork(Some(2), "try", "dev")).await.unwrap();
        let e = plan_fork(vms, fork(None, "try-2", "dev"))
            .await
            .unwrap_err();
        assert!(matches!(e, VmError::NameTaken(_)), "{e}");
        drop(held);
        assert!(vms.reserves_nothing());

        let e = plan_restore(
            vms,
            VmRestoreParams {
                name: "off".into(),
                snapshot: "s1".into(),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "snapshot s1 is of vm dev, not of off");
        assert_eq!(code(e), C::Conflict);
    }

    #[tokio::test]
    async fn an_unused_fork_base_goes_with_the_unused_bases_below_it() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state(tmp.path());
        let vms = &state.vms;
        crate::testing::seed(&state, "dev", banger_store::VmState::Running);
        let fork_base = |id: &str, parent: Option<&str>, kind: SnapshotKind| {
            let mut s = recorded();
            s.id = id.into();
            s.name = format!("{id}-base");
            s.kind = kind;
            s.image_id = "i1".into();
            s.kernel_id = "k1".into();
            s.parent_id = parent.map(Into::into);
            s.dir = snapshots_dir(vms).join(id);
            std::fs::create_dir_all(&s.dir).unwrap();
            state.lock_store_for_tests().insert_snapshot(&s).unwrap();
            s
        };
        fork_base("t", None, SnapshotKind::Template);
        let a = fork_base("a", Some("t"), SnapshotKind::Fork);
        let b = fork_base("b", Some("a"), SnapshotKind::Fork);
        // A user snapshot on b keeps it (and so a).
        let mut user = recorded();
        user.id = "u".into();
        user.image_id = "i1".into();
        user.kernel_id = "k1".into();
        user.parent_id = Some("b".into());
        state.lock_store_for_tests().insert_snapshot(&user).unwrap();
        drop_if_unused_fork_base(vms, "b").await;
        assert!(b.dir.exists());
        delete_requested(vms, "s1").await.unwrap();
        assert!(!b.dir.exists(), "b went with the user snapshot");
        assert!(!a.dir.exists(), "and a, which only b needed");
        let left: Vec<String> = views(vms)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(left, ["t-base"], "a template is never dropped this way");
    }
}
