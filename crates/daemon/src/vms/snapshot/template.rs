//! Warm templates: an image's VM booted to agent-ready with the default
//! shape and snapshotted, so `vm create` and `vm run` restore it instead
//! of booting (docs/snapshots.md, "Templates").
//!
//! A template is found by its key, a readable string of everything it was
//! made from: image and kernel (by id and creation time, so a rebuilt
//! image or re-pulled kernel gets a new key), the VMM build and machine,
//! the accelerator, the shape, the network mode and banger's version (the
//! agent inside and the identity protocol). Nothing else is compared: a
//! key that matches is a template that fits.

use banger_proto::{NetworkMode, SnapshotKind};
use banger_store::{ImageRecord, KernelRecord, SnapshotRecord, VmRecord, VmState};

use crate::op::OpCtx;
use crate::ops::now_ms;
use crate::vms::lifecycle::{delete_locked, start_locked};
use crate::vms::{VmError, Vms, vm_dir};

/// The key a template is found by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateKey(pub String);

/// The shape and network a template is made with and matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateShape {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_size_bytes: u64,
    pub network: NetworkMode,
}

/// The key of the template for `image` booted with `kernel` in `shape`
/// on this host's VMM and accelerator.
pub(crate) async fn template_key(
    vms: &Vms,
    image: &ImageRecord,
    kernel: &KernelRecord,
    shape: TemplateShape,
    ctx: &OpCtx,
) -> Result<TemplateKey, VmError> {
    let (accel, _) = vms.accel.choose(kernel, ctx).await;
    // Templates are QEMU VMs (see `templates_fit` in vms/create.rs).
    let vmm = vms.vmms.get(banger_vmm::BackendKind::Qemu);
    let build = tokio::task::spawn_blocking(move || vmm.build())
        .await
        .map_err(|e| VmError::Task("vmm build", e))??;
    Ok(TemplateKey(format!(
        "image={}@{} kernel={}@{} vmm={}-{}-{} accel={} shape={}x{}x{} net={} banger={}",
        image.id,
        image.created_at_ms,
        kernel.id,
        kernel.created_at_ms,
        build.backend.as_str(),
        build.version,
        build.machine,
        accel.as_str(),
        shape.vcpus,
        shape.memory_mib,
        shape.disk_size_bytes,
        shape.network.as_str(),
        vms.settings.version,
    )))
}

/// Makes the template for `key`: a hidden VM booted cold, snapshotted once
/// ready, then deleted. Older templates of the image that nothing uses
/// are deleted after. Only one build per key runs at a time; a second
/// caller gets the first's result by looking again afterwards.
/// How long a template build waits for its guest to go idle.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

pub(crate) async fn warm(
    vms: &Vms,
    ctx: &OpCtx,
    image: &ImageRecord,
    kernel: &KernelRecord,
    shape: TemplateShape,
    key: TemplateKey,
) -> Result<SnapshotRecord, VmError> {
    let _building = vms.templates.lock(&key.0).await;
    let k = key.0.clone();
    if let Some(existing) = vms.db.call(move |s| s.template(&k)).await? {
        return Ok(existing);
    }
    let id = crate::vms::create::new_id();
    // Underscore: no user-chosen name can collide, and listings hide it.
    let name = format!("_template-{id}");
    let dir = vm_dir(vms, &id);
    let lock = vms.table.lock_for(&id);
    let _guard = lock.lock().await;
    ctx.stage("prepare disks");
    {
        let rootfs = image.rootfs_path.clone();
        let seed = image
            .work_seed_path
            .clone()
            .ok_or_else(|| VmError::NoWorkSeed(image.name.clone()))?;
        let size = shape.disk_size_bytes;
        crate::vms::prepare_vm_dir(&dir, move |d| {
            crate::disks::make_root_disk(crate::disks::RootStrategy::Qcow2, &rootfs, d)?;
            crate::disks::make_work_disk(&seed, &crate::vms::work_disk(d), size)?;
            Ok(())
        })
        .await?;
    }
    let now = now_ms();
    let vm = VmRecord {
        id: id.clone(),
        name: name.clone(),
        image_id: image.id.clone(),
        kernel_id: kernel.id.clone(),
        vcpus: shape.vcpus,
        memory_mib: shape.memory_mib,
        disk_size_bytes: shape.disk_size_bytes,
        network_mode: shape.network,
        // The template's VM is never used as itself: VMs made from it get
        // their own policy.
        egress: banger_proto::Egress::default(),
        backend: Some(banger_proto::Backend::Qemu),
        disk_strategy: Some(banger_proto::DiskStrategy::Qcow2),
        published_ports: Vec::new(),
        state: VmState::Creating,
        last_error: None,
        created_at_ms: now,
        updated_at_ms: now,
        base_snapshot_id: None,
        // The image's default: a template is taken of a ready guest.
        wait_for: None,
        backend_reason: Some("warm templates are qemu vms".into()),
    };
    crate::vms::insert_new_vm(vms, &vm, &dir).await?;
    let made = async {
        let vm = start_locked(vms, vm.clone(), ctx).await?;
        // Taken in the middle of the boot's last work (units finishing,
        // the SSH session that pinned the host key closing), the template
        // would hand it to every VM restored from it, on their one vCPU
        // and while they are made ready.
        ctx.stage("wait for the guest to settle");
        match vms.guest.wait_until_idle(&vm.id, SETTLE_LIMIT).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(vm = %vm.name, "the guest is still busy; taking the template anyway"),
            Err(e) => tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "could not watch the guest's CPU"),
        }
        let snap_name = format!("template-{}-{id}", image.name);
        let snap_name: String = snap_name.chars().take(63).collect();
        super::take_locked(
            vms,
            ctx,
            &vm,
            snap_name.trim_end_matches('-'),
            SnapshotKind::Template,
            Some(key.0.clone()),
            super::take::AfterSave::Resume,
        )
        .await
    }
    .await;
    ctx.stage("remove template vm");
    let current = crate::vms::find(vms, &id).await.unwrap_or(vm);
    if let Err(e) = delete_locked(vms, ctx, current).await {
        tracing::warn!(vm = %name, error = %crate::error::chain(&e), "could not delete the template's vm");
    }
    let template = made?;
    drop_older_templates(vms, &template).await;
    tracing::info!(image = %image.name, template = %template.name, "template ready");
    Ok(template)
}

/// Deletes the image's other templates that no VM uses.
async fn drop_older_templates(vms: &Vms, keep: &SnapshotRecord) {
    let Ok(all) = vms.db.call(|s| s.snapshots()).await else {
        return;
    };
    for s in all {
        if s.kind == SnapshotKind::Template && s.image_id == keep.image_id && s.id != keep.id {
            let id = s.id.clone();
            let unused = vms
                .db
                .call(move |st| st.snapshot_users(&id))
                .await
                .is_ok_and(|u| u.is_empty());
            if unused {
                let _ = super::delete(vms, &s.id).await;
            }
        }
    }
}

/// Deletes the images a rebuild replaced once nothing uses them: first
/// their warm templates that no VM uses (a template of an old version is
/// never used for the new one: its key names the image id), then the
/// images themselves ([`crate::artifacts::Artifacts::prune_replaced`]).
pub(crate) async fn prune_replaced_images(vms: &Vms) {
    let Ok(images) = vms.db.call(|s| s.images()).await else {
        return;
    };
    let replaced: Vec<String> = images
        .into_iter()
        .filter(|i| i.replaced_by.is_some())
        .map(|i| i.id)
        .collect();
    if replaced.is_empty() {
        return;
    }
    if let Ok(all) = vms.db.call(|s| s.snapshots()).await {
        for s in all {
            if s.kind == SnapshotKind::Template && replaced.contains(&s.image_id) {
                let id = s.id.clone();
                let unused = vms
                    .db
                    .call(move |st| st.snapshot_users(&id))
                    .await
                    .is_ok_and(|u| u.is_empty());
                if unused {
                    let _ = super::delete(vms, &s.id).await;
                }
            }
        }
    }
    vms.artifacts.prune_replaced().await;
}
