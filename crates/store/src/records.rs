use std::path::PathBuf;

use rusqlite::Row;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A kernel the user pulled: the image file plus, for distribution kernels,
/// an initramfs and a modules tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRecord {
    pub id: String,
    pub name: String,
    /// Where it came from: a catalog entry name or a URL.
    pub source: String,
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
}

/// The lifecycle state last recorded for a VM. Whether its VMM really runs
/// is checked against the OS on daemon start, never trusted from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Stopped,
    Running,
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Stopped => "stopped",
            Self::Running => "running",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "stopped" => Self::Stopped,
            "running" => Self::Running,
            "error" => Self::Error,
            _ => return None,
        })
    }
}

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
    /// `user` or `bridged`.
    pub network_mode: String,
    /// `qemu` or `firecracker`, once chosen.
    pub backend: Option<String>,
    /// `qcow2`, `reflink`, `dm-snapshot` or `copy`, once chosen at create.
    pub disk_strategy: Option<String>,
    /// Published ports as the user wrote them (`HOST:GUEST`).
    pub published_ports: Vec<String>,
    pub state: VmState,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl KernelRecord {
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            name: r.get(1)?,
            source: r.get(2)?,
            kernel_path: r.get::<_, String>(3)?.into(),
            initrd_path: r.get::<_, Option<String>>(4)?.map(Into::into),
            modules_dir: r.get::<_, Option<String>>(5)?.map(Into::into),
            version: r.get(6)?,
            sha256: r.get(7)?,
            created_at_ms: r.get(8)?,
        })
    }
}

impl ImageRecord {
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            name: r.get(1)?,
            source: r.get(2)?,
            rootfs_path: r.get::<_, String>(3)?.into(),
            work_seed_path: r.get::<_, Option<String>>(4)?.map(Into::into),
            fingerprint: r.get(5)?,
            size_bytes: r.get(6)?,
            managed: r.get(7)?,
            created_at_ms: r.get(8)?,
            has_agent: r.get(9)?,
        })
    }
}

impl VmRecord {
    /// Reads a row; a state string this binary does not know is reported as
    /// [`StoreError::Corrupt`] rather than guessed at.
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let name: String = r.get(1)?;
        let state: String = r.get(11)?;
        let Some(state) = VmState::parse(&state) else {
            return Ok(Err(StoreError::Corrupt {
                kind: "vm",
                name,
                field: "state",
                value: state,
            }));
        };
        let ports: String = r.get(10)?;
        Ok(Ok(Self {
            id: r.get(0)?,
            name,
            image_id: r.get(2)?,
            kernel_id: r.get(3)?,
            vcpus: r.get(4)?,
            memory_mib: r.get(5)?,
            disk_size_bytes: r.get(6)?,
            network_mode: r.get(7)?,
            backend: r.get(8)?,
            disk_strategy: r.get(9)?,
            published_ports: ports
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            state,
            last_error: r.get(12)?,
            created_at_ms: r.get(13)?,
            updated_at_ms: r.get(14)?,
        }))
    }
}
