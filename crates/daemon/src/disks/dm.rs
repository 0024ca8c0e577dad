//! Device-mapper snapshot root disks (docs/vms.md, "Disks"), for a VMM
//! that takes only raw disks (Firecracker) on a filesystem without
//! reflinks.
//!
//! The image is attached read-only to one loop device (the origin), the
//! VM's copy-on-write store `root.cow` (a sparse file in its directory,
//! [`make_cow_file`]) read-write to another, and the kernel's `snapshot`
//! target joins them into `/dev/mapper/banger-ID`, which the helper gives
//! to the caller so the VMM can open it. All three are made through
//! banger-helper (its `devices` feature) at each start ([`attach`]) and
//! removed at each stop ([`detach`]); only `root.cow` lasts. The snapshot
//! is persistent (the helper's table says `P`), so the VM's writes
//! survive a restart. What a running VM holds is a [`DmAttachment`], kept
//! in its `handles.json`.

use std::path::{Path, PathBuf};

use banger_helper::client::ClientError;
use banger_proto::OpId;
use banger_proto::helper::{DM_PREFIX, DmSupport, HelperCall, HelperErrorCode, HelperReply};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::DiskError;
use crate::helper_client::{HelperClient, HelperClientError};

/// The copy-on-write store's name in the VM dir.
pub const COW_FILE: &str = "root.cow";

/// The snapshot's chunk size: the helper's table asks for 8 sectors.
const CHUNK_BYTES: u64 = 8 * 512;

/// One exception (a remapped chunk) in the store's metadata: two
/// little-endian u64s (the kernel's persistent snapshot format).
const EXCEPTION_BYTES: u64 = 16;

/// The step of [`attach`] or [`detach`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmStep {
    AttachImage,
    AttachCow,
    CreateSnapshot,
    RemoveSnapshot,
    DetachLoop,
}

impl std::fmt::Display for DmStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AttachImage => "attach the image to a loop device (read-only)",
            Self::AttachCow => "attach the copy-on-write store to a loop device",
            Self::CreateSnapshot => "create the device-mapper snapshot",
            Self::RemoveSnapshot => "remove the device-mapper snapshot",
            Self::DetachLoop => "detach a loop device",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    /// The helper says the host has no device-mapper.
    #[error(
        "this root disk is a device-mapper snapshot, which needs the kernel modules dm_mod and dm_snapshot (as root: `modprobe dm_snapshot`); VMs created without them get a reflink clone or a copy of their image instead"
    )]
    Unavailable {
        #[source]
        source: HelperClientError,
    },
    #[error("{step}")]
    Helper {
        step: DmStep,
        #[source]
        source: HelperClientError,
    },
    #[error("{step}: banger-helper answered {reply:?}, not a device")]
    UnexpectedReply { step: DmStep, reply: HelperReply },
    /// The VM id does not make a device-mapper name banger's helper takes.
    #[error("VM id {vm_id:?} does not make a device-mapper name ({DM_PREFIX}ID)")]
    Name {
        vm_id: String,
        #[source]
        source: banger_helper::Error,
    },
}

/// A loop device and the file it was attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub device: String,
    /// The file as given to the helper.
    pub file: PathBuf,
}

/// A running VM's device-mapper snapshot: what [`detach`] removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmAttachment {
    /// The device-mapper name (`banger-ID`).
    pub name: String,
    /// What the VMM opens: `/dev/mapper/NAME`.
    pub device: PathBuf,
    /// The image, read-only.
    pub origin: LoopDevice,
    /// The VM's copy-on-write store.
    pub cow: LoopDevice,
}

/// What a VM's life asks of device-mapper root disks, behind a seam so
/// the daemon's start, stop and crash paths are testable on hosts without
/// device-mapper (`vms/dm_tests.rs`); [`HelperRootDevices`] is the real
/// one, tested through the real helper in `crates/banger/tests/dm_root_disk.rs`.
pub trait RootDevices: Send + Sync + std::fmt::Debug {
    /// Whether new VMs can get a device-mapper root disk ([`available`]).
    fn available<'a>(&'a self, op: &'a OpId) -> BoxFuture<'a, bool>;
    /// Makes the snapshot device of VM `vm_id` ([`attach`]).
    fn attach<'a>(
        &'a self,
        op: &'a OpId,
        vm_id: &'a str,
        image_rootfs: &'a Path,
        cow_file: &'a Path,
    ) -> BoxFuture<'a, Result<DmAttachment, DmError>>;
    /// Removes what [`RootDevices::attach`] made ([`detach`]).
    fn detach<'a>(
        &'a self,
        op: &'a OpId,
        attachment: &'a DmAttachment,
    ) -> BoxFuture<'a, Result<(), DmError>>;
}

/// [`RootDevices`] through banger-helper.
#[derive(Debug, Clone)]
pub struct HelperRootDevices(pub HelperClient);

impl RootDevices for HelperRootDevices {
    fn available<'a>(&'a self, op: &'a OpId) -> BoxFuture<'a, bool> {
        Box::pin(available(&self.0, op))
    }
    fn attach<'a>(
        &'a self,
        op: &'a OpId,
        vm_id: &'a str,
        image_rootfs: &'a Path,
        cow_file: &'a Path,
    ) -> BoxFuture<'a, Result<DmAttachment, DmError>> {
        Box::pin(attach(&self.0, op, vm_id, image_rootfs, cow_file))
    }
    fn detach<'a>(
        &'a self,
        op: &'a OpId,
        attachment: &'a DmAttachment,
    ) -> BoxFuture<'a, Result<(), DmError>> {
        Box::pin(detach(&self.0, op, attachment))
    }
}

/// The size of a copy-on-write store that holds a rewrite of every chunk
/// of an image of `image_bytes`: a header chunk, the data chunks, one
/// metadata chunk per `CHUNK_BYTES / EXCEPTION_BYTES` of them, and two to
/// spare (the kernel wants one free chunk past the next one it hands out).
pub fn cow_size(image_bytes: u64) -> u64 {
    let chunks = image_bytes.div_ceil(CHUNK_BYTES);
    let metadata = chunks.div_ceil(CHUNK_BYTES / EXCEPTION_BYTES);
    (1 + metadata + chunks + 2) * CHUNK_BYTES
}

/// Makes the empty copy-on-write store `VM_DIR/root.cow` for an image of
/// `image_bytes`: sparse, so it costs nothing until the guest writes, and
/// zeroed, which the kernel reads as a new snapshot. Never replaces one.
pub fn make_cow_file(vm_dir: &Path, image_bytes: u64) -> Result<PathBuf, DiskError> {
    let path = vm_dir.join(COW_FILE);
    let io = |source| DiskError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    file.set_len(cow_size(image_bytes)).map_err(io)?;
    Ok(path)
}

/// Whether the helper answers and can make device-mapper snapshots now
/// (its `ping`: the `devices` feature on, and device-mapper in the
/// kernel). A helper too old to say counts as no.
pub async fn available(helper: &HelperClient, op: &OpId) -> bool {
    match helper.ping(op).await {
        Ok(info) => info.device_mapper == Some(DmSupport::Available),
        Err(e) => {
            tracing::debug!(error = %crate::error::chain(&e), "banger-helper does not answer; no device-mapper snapshots");
            false
        }
    }
}

/// The device-mapper name of VM `vm_id`'s root disk: `banger-ID`.
pub fn device_name(vm_id: &str) -> Result<String, DmError> {
    let name = format!("{DM_PREFIX}{vm_id}");
    banger_helper::validate::dm_name(&name).map_err(|source| DmError::Name {
        vm_id: vm_id.to_owned(),
        source,
    })?;
    Ok(name)
}

/// Makes VM `vm_id`'s root device: `image_rootfs` read-only on a loop
/// device, `cow_file` read-write on another, and a persistent snapshot of
/// the one into the other. On failure what was made is undone (the loop
/// devices detached) and the first error returned.
pub async fn attach(
    helper: &HelperClient,
    op: &OpId,
    vm_id: &str,
    image_rootfs: &Path,
    cow_file: &Path,
) -> Result<DmAttachment, DmError> {
    let name = device_name(vm_id)?;
    let origin = attach_loop(helper, op, image_rootfs, true).await?;
    let cow = match attach_loop(helper, op, cow_file, false).await {
        Ok(cow) => cow,
        Err(e) => {
            undo_loops(helper, op, &[&origin]).await;
            return Err(e);
        }
    };
    let call = HelperCall::DmSnapshotCreate {
        name: name.clone(),
        origin: origin.device.clone(),
        cow: cow.device.clone(),
    };
    let device = match device_reply(DmStep::CreateSnapshot, helper.call(op, call).await) {
        Ok(device) => device,
        Err(e) => {
            undo_loops(helper, op, &[&cow, &origin]).await;
            return Err(e);
        }
    };
    Ok(DmAttachment {
        name,
        device: PathBuf::from(device),
        origin,
        cow,
    })
}

/// Removes what [`attach`] made: the snapshot, then both loop devices.
/// What is gone already is fine, and a loop device now attached to
/// another file (after a reboot) is left alone. Goes on past a failure;
/// returns the first.
pub async fn detach(
    helper: &HelperClient,
    op: &OpId,
    attachment: &DmAttachment,
) -> Result<(), DmError> {
    let mut first = None;
    let remove = HelperCall::DmRemove {
        name: attachment.name.clone(),
    };
    match helper.call(op, remove).await {
        Ok(_) => {}
        // Gone already; without device-mapper there is none to remove.
        Err(e)
            if refused_with(
                &e,
                &[HelperErrorCode::NotFound, HelperErrorCode::Unsupported],
            ) => {}
        Err(source) => {
            first = Some(DmError::Helper {
                step: DmStep::RemoveSnapshot,
                source,
            })
        }
    }
    for lo in [&attachment.cow, &attachment.origin] {
        if let Err(e) = detach_loop(helper, op, lo).await {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

async fn attach_loop(
    helper: &HelperClient,
    op: &OpId,
    file: &Path,
    read_only: bool,
) -> Result<LoopDevice, DmError> {
    let step = if read_only {
        DmStep::AttachImage
    } else {
        DmStep::AttachCow
    };
    let call = HelperCall::LoopAttach {
        path: file.to_owned(),
        read_only,
    };
    let device = device_reply(step, helper.call(op, call).await)?;
    Ok(LoopDevice {
        device,
        file: file.to_owned(),
    })
}

/// Detaches `lo` if it is still attached to its file.
async fn detach_loop(helper: &HelperClient, op: &OpId, lo: &LoopDevice) -> Result<(), DmError> {
    if !still_attached(lo).await {
        return Ok(());
    }
    let call = HelperCall::LoopDetach {
        device: lo.device.clone(),
    };
    match helper.call(op, call).await {
        Ok(_) => Ok(()),
        Err(e) if refused_with(&e, &[HelperErrorCode::NotFound]) => Ok(()),
        Err(source) => Err(DmError::Helper {
            step: DmStep::DetachLoop,
            source,
        }),
    }
}

/// Rollback of a failed [`attach`]: detaches, logging what fails.
async fn undo_loops(helper: &HelperClient, op: &OpId, loops: &[&LoopDevice]) {
    for lo in loops {
        if let Err(e) = detach_loop(helper, op, lo).await {
            tracing::warn!(
                device = %lo.device,
                error = %crate::error::chain(&e),
                "rollback: loop device left attached"
            );
        }
    }
}

/// Whether the kernel still has `lo.device` attached to `lo.file`
/// (`/sys/block/loopN/loop/backing_file` holds the file's real path, with
/// ` (deleted)` after it once removed).
async fn still_attached(lo: &LoopDevice) -> bool {
    let Some(kernel_name) = lo.device.strip_prefix("/dev/") else {
        return false;
    };
    let sys = format!("/sys/block/{kernel_name}/loop/backing_file");
    let Ok(text) = tokio::fs::read_to_string(&sys).await else {
        return false;
    };
    let text = text.trim_end_matches('\n');
    let backing = Path::new(text.strip_suffix(" (deleted)").unwrap_or(text));
    let real = tokio::fs::canonicalize(&lo.file)
        .await
        .unwrap_or_else(|_| lo.file.clone());
    backing == real || backing == lo.file
}

fn device_reply(
    step: DmStep,
    reply: Result<HelperReply, HelperClientError>,
) -> Result<String, DmError> {
    match reply {
        Ok(HelperReply::Device { path }) => Ok(path),
        Ok(reply) => Err(DmError::UnexpectedReply { step, reply }),
        Err(source) if refused_with(&source, &[HelperErrorCode::Unsupported]) => {
            if step == DmStep::CreateSnapshot {
                Err(DmError::Unavailable { source })
            } else {
                Err(DmError::Helper { step, source })
            }
        }
        Err(source) => Err(DmError::Helper { step, source }),
    }
}

fn refused_with(e: &HelperClientError, codes: &[HelperErrorCode]) -> bool {
    matches!(e, HelperClientError::Helper(ClientError::Refused(r)) if codes.contains(&r.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cow_store_holds_a_full_rewrite_and_is_sparse() {
        // 1 GiB: 262144 data chunks, 1024 metadata chunks, a header, 2 spare.
        assert_eq!(cow_size(1 << 30), (262_144 + 1024 + 1 + 2) * 4096);
        // A partial chunk is a chunk.
        assert_eq!(cow_size(1), (1 + 1 + 1 + 2) * 4096);
        let tmp = tempfile::tempdir().unwrap();
        let path = make_cow_file(tmp.path(), 16 << 30).unwrap();
        assert_eq!(path, tmp.path().join(COW_FILE));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), cow_size(16 << 30));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.blocks(), 0, "sparse");
        let again = make_cow_file(tmp.path(), 1 << 20).unwrap_err();
        assert!(matches!(again, DiskError::Io { .. }), "never replaced");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), cow_size(16 << 30));
    }

    #[test]
    fn device_names_are_banger_names() {
        assert_eq!(device_name("0a1b2c3d4e5f").unwrap(), "banger-0a1b2c3d4e5f");
        for bad in ["", "A", "a/b", &"a".repeat(60)] {
            assert!(
                matches!(device_name(bad), Err(DmError::Name { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn attachments_round_trip_through_json() {
        let a = DmAttachment {
            name: "banger-0a1b".into(),
            device: "/dev/mapper/banger-0a1b".into(),
            origin: LoopDevice {
                device: "/dev/loop3".into(),
                file: "/d/images/x/rootfs.ext4".into(),
            },
            cow: LoopDevice {
                device: "/dev/loop4".into(),
                file: "/d/vms/0a1b/root.cow".into(),
            },
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<DmAttachment>(&text).unwrap(), a);
    }
}
