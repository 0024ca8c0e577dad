use std::path::PathBuf;

use banger_proto::vm::{ImageConfig, ImageOrigin, KernelOrigin};
use banger_proto::{
    Accel, Backend, DiskStrategy, Egress, NetworkMode, PublishSpec, SnapshotKind, WaitFor,
};
use rusqlite::Row;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A kernel the user pulled or imported: the image file plus, for
/// distribution kernels, an initramfs and a modules tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRecord {
    pub id: String,
    pub name: String,
    /// Where it came from; stored in the `source` column as
    /// `catalog:PACKAGE` or `imported:PATH`.
    pub origin: KernelOrigin,
    pub kernel_path: PathBuf,
    pub initrd_path: Option<PathBuf>,
    pub modules_dir: Option<PathBuf>,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub created_at_ms: i64,
}

/// A root filesystem image and its work-disk seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    /// How it was made: `debian:bookworm`, an OCI reference, `vm:NAME`.
    pub source: String,
    pub rootfs_path: PathBuf,
    pub work_seed_path: Option<PathBuf>,
    /// Hash of the recipe that built a managed image; a mismatch means stale.
    pub fingerprint: Option<String>,
    pub size_bytes: u64,
    /// Built by banger from a recipe (and so rebuildable), not imported.
    pub managed: bool,
    pub created_at_ms: i64,
    /// The guest agent is baked in (`banger-agent`, started at boot).
    pub has_agent: bool,
    /// What a managed image was built from, as the daemon records it (JSON:
    /// extra packages, size, a digest per recipe part), so it can be rebuilt
    /// and its staleness explained; `None` for images of older banger
    /// versions and imported ones.
    #[serde(default)]
    pub recipe: Option<String>,
    /// The id of the image that replaced this one when it was rebuilt (its
    /// name then ends in `@ID`); kept only while VMs or snapshots use it.
    #[serde(default)]
    pub replaced_by: Option<String>,
    /// Where it came from: built, pulled (reference and digest), promoted
    /// from a VM.
    #[serde(default)]
    pub origin: ImageOrigin,
    /// A pulled image's config (entrypoint, cmd, env, workdir, user,
    /// exposed ports).
    #[serde(default)]
    pub config: Option<ImageConfig>,
}

/// The lifecycle state last recorded for a VM (the wire enum, stored as
/// its string). Whether its VMM really runs is checked against the OS on
/// daemon start, never trusted from here.
pub use banger_proto::VmState;

/// A VM spec: what to boot and with what resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub kernel_id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_size_bytes: u64,
    pub network_mode: NetworkMode,
    /// What the guest may reach; stored in its text form.
    pub egress: Egress,
    /// Once chosen.
    pub backend: Option<Backend>,
    /// Once chosen at create.
    pub disk_strategy: Option<DiskStrategy>,
    /// Stored as `HOST:GUEST[/udp]`, comma-separated.
    pub published_ports: Vec<PublishSpec>,
    pub state: VmState,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The snapshot whose disk layers this VM's sit on (restored, forked
    /// or started from a template), which cannot be deleted before it.
    pub base_snapshot_id: Option<String>,
    /// What its starts wait for; `None` (VMs made before it was
    /// recorded): what the image supports.
    #[serde(default)]
    pub wait_for: Option<WaitFor>,
    /// Why `backend` was chosen (for `vm show`); `None` before migration 9.
    pub backend_reason: Option<String>,
}

/// A snapshot: device state, memory and frozen disk layers in `dir`
/// (docs/snapshots.md, "Model"), and what it can be restored under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub kind: SnapshotKind,
    /// The VM it was taken from; it may be gone since.
    pub vm_id: String,
    pub vm_name: String,
    /// The snapshot whose disk layers this one's sit on.
    pub parent_id: Option<String>,
    pub image_id: String,
    pub kernel_id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_size_bytes: u64,
    pub network_mode: NetworkMode,
    pub has_agent: bool,
    pub dir: PathBuf,
    pub vmm_backend: Backend,
    /// The VMM build (`7.2.22`): a state loads only into the same build.
    pub vmm_version: String,
    /// The machine type (`microvm`).
    pub machine: String,
    pub accel: Accel,
    /// Templates: the fingerprint of everything the template was made from.
    pub template_key: Option<String>,
    pub size_bytes: u64,
    pub created_at_ms: i64,
}

/// A kernel's origin in its `source` column's text form.
pub(crate) fn kernel_source(origin: &KernelOrigin) -> String {
    match origin {
        KernelOrigin::Catalog { package } => format!("catalog:{package}"),
        KernelOrigin::Imported { path } => format!("imported:{path}"),
    }
}

/// The origin a `source` column says, if it is one this binary writes.
fn parse_kernel_source(text: &str) -> Option<KernelOrigin> {
    if let Some(package) = text.strip_prefix("catalog:") {
        return Some(KernelOrigin::Catalog {
            package: package.to_owned(),
        });
    }
    text.strip_prefix("imported:")
        .map(|path| KernelOrigin::Imported {
            path: path.to_owned(),
        })
}

impl KernelRecord {
    /// Reads a row; a `source` this binary does not write is reported as
    /// [`StoreError::Corrupt`].
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let name: String = r.get(1)?;
        let source: String = r.get(2)?;
        let Some(origin) = parse_kernel_source(&source) else {
            return Ok(Err(StoreError::Corrupt {
                kind: "kernel",
                name,
                field: "source",
                value: source,
            }));
        };
        Ok(Ok(Self {
            id: r.get(0)?,
            name,
            origin,
            kernel_path: r.get::<_, String>(3)?.into(),
            initrd_path: r.get::<_, Option<String>>(4)?.map(Into::into),
            modules_dir: r.get::<_, Option<String>>(5)?.map(Into::into),
            version: r.get(6)?,
            sha256: r.get(7)?,
            created_at_ms: r.get(8)?,
        }))
    }
}

impl ImageRecord {
    /// Whether the image boots with banger's agent as its init
    /// (docs/guest-contract.md, "Images without an init"): images pulled
    /// from a registry, and those promoted from their VMs, which carry the
    /// image's config. Their guests run no SSH server.
    pub fn boots_banger_init(&self) -> bool {
        self.config.is_some()
    }

    /// Reads a row; an origin or config that is not the JSON this binary
    /// writes is reported as [`StoreError::Corrupt`].
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let name: String = r.get(1)?;
        let corrupt = |field: &'static str, value: String| StoreError::Corrupt {
            kind: "image",
            name: name.clone(),
            field,
            value,
        };
        let origin = match r.get::<_, Option<String>>(12)? {
            None => ImageOrigin::Built,
            Some(text) => match serde_json::from_str(&text) {
                Ok(o) => o,
                Err(_) => return Ok(Err(corrupt("origin", text))),
            },
        };
        let config = match r.get::<_, Option<String>>(13)? {
            None => None,
            Some(text) => match serde_json::from_str(&text) {
                Ok(c) => Some(c),
                Err(_) => return Ok(Err(corrupt("config", text))),
            },
        };
        Ok(Ok(Self {
            id: r.get(0)?,
            name: name.clone(),
            source: r.get(2)?,
            rootfs_path: r.get::<_, String>(3)?.into(),
            work_seed_path: r.get::<_, Option<String>>(4)?.map(Into::into),
            fingerprint: r.get(5)?,
            size_bytes: r.get(6)?,
            managed: r.get(7)?,
            created_at_ms: r.get(8)?,
            has_agent: r.get(9)?,
            recipe: r.get(10)?,
            replaced_by: r.get(11)?,
            origin,
            config,
        }))
    }
}

impl VmRecord {
    /// Reads a row; a value this binary does not know (state, network,
    /// backend, disk strategy, publish spec) is reported as
    /// [`StoreError::Corrupt`] rather than guessed at.
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let name: String = r.get(1)?;
        let corrupt = |field: &'static str, value: String| StoreError::Corrupt {
            kind: "vm",
            name: name.clone(),
            field,
            value,
        };
        let state: String = r.get(11)?;
        let Ok(state) = state.parse::<VmState>() else {
            return Ok(Err(corrupt("state", state)));
        };
        let network_mode: String = r.get(7)?;
        let Ok(network_mode) = network_mode.parse::<NetworkMode>() else {
            return Ok(Err(corrupt("network_mode", network_mode)));
        };
        let backend: Option<String> = r.get(8)?;
        let backend = match backend
            .map(|b| b.parse::<Backend>().map_err(|_| b))
            .transpose()
        {
            Ok(b) => b,
            Err(b) => return Ok(Err(corrupt("backend", b))),
        };
        let egress: String = r.get(16)?;
        let Ok(egress) = egress.parse::<Egress>() else {
            return Ok(Err(corrupt("egress", egress)));
        };
        let wait_for: Option<String> = r.get(17)?;
        let wait_for = match wait_for
            .map(|w| w.parse::<WaitFor>().map_err(|_| w))
            .transpose()
        {
            Ok(w) => w,
            Err(w) => return Ok(Err(corrupt("wait_for", w))),
        };
        let strategy: Option<String> = r.get(9)?;
        let disk_strategy = match strategy
            .map(|d| d.parse::<DiskStrategy>().map_err(|_| d))
            .transpose()
        {
            Ok(d) => d,
            Err(d) => return Ok(Err(corrupt("disk_strategy", d))),
        };
        let ports: String = r.get(10)?;
        let published_ports = match ports
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<PublishSpec>, _>>()
        {
            Ok(v) => v,
            Err(_) => return Ok(Err(corrupt("published_ports", ports))),
        };
        Ok(Ok(Self {
            id: r.get(0)?,
            name,
            image_id: r.get(2)?,
            kernel_id: r.get(3)?,
            vcpus: r.get(4)?,
            memory_mib: r.get(5)?,
            disk_size_bytes: r.get(6)?,
            network_mode,
            egress,
            backend,
            disk_strategy,
            published_ports,
            state,
            last_error: r.get(12)?,
            created_at_ms: r.get(13)?,
            updated_at_ms: r.get(14)?,
            base_snapshot_id: r.get(15)?,
            wait_for,
            backend_reason: r.get(18)?,
        }))
    }
}

impl SnapshotRecord {
    /// Reads a row; an enum value this binary does not know is reported as
    /// [`StoreError::Corrupt`].
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let name: String = r.get(1)?;
        let corrupt = |field: &'static str, value: String| StoreError::Corrupt {
            kind: "snapshot",
            name: name.clone(),
            field,
            value,
        };
        let kind: String = r.get(2)?;
        let Ok(kind) = kind.parse::<SnapshotKind>() else {
            return Ok(Err(corrupt("kind", kind)));
        };
        let network_mode: String = r.get(11)?;
        let Ok(network_mode) = network_mode.parse::<NetworkMode>() else {
            return Ok(Err(corrupt("network_mode", network_mode)));
        };
        let backend: String = r.get(14)?;
        let Ok(vmm_backend) = backend.parse::<Backend>() else {
            return Ok(Err(corrupt("vmm_backend", backend)));
        };
        let accel: String = r.get(17)?;
        let Ok(accel) = accel.parse::<Accel>() else {
            return Ok(Err(corrupt("accel", accel)));
        };
        Ok(Ok(Self {
            id: r.get(0)?,
            name,
            kind,
            vm_id: r.get(3)?,
            vm_name: r.get(4)?,
            parent_id: r.get(5)?,
            image_id: r.get(6)?,
            kernel_id: r.get(7)?,
            vcpus: r.get(8)?,
            memory_mib: r.get(9)?,
            disk_size_bytes: r.get(10)?,
            network_mode,
            has_agent: r.get(12)?,
            dir: r.get::<_, String>(13)?.into(),
            vmm_backend,
            vmm_version: r.get(15)?,
            machine: r.get(16)?,
            accel,
            template_key: r.get(18)?,
            size_bytes: r.get(19)?,
            created_at_ms: r.get(20)?,
        }))
    }
}
