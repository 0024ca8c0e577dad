//! Snapshots, forks and warm templates on the wire (docs/snapshots.md).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Accel, NetworkMode, SnapshotKind};

/// Params of `vm.snapshot.begin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshotParams {
    /// The VM (name or id); it keeps running.
    pub name: String,
    /// The snapshot's name; `VM-YYYYMMDD-HHMMSS` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// Params of `vm.restore.begin`: roll a VM back to one of its snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRestoreParams {
    pub name: String,
    pub snapshot: String,
}

/// Params of `vm.fork.begin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmForkParams {
    /// The running VM to fork; it keeps running.
    pub name: String,
    /// The new VM's name; with `count` above 1, `NAME-1` ... `NAME-N`.
    pub new_name: String,
    /// How many forks (default 1, at most 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// What `vm.fork` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmForked {
    /// The snapshot the forks continue from.
    pub snapshot: String,
    pub vms: Vec<crate::vm::VmView>,
}

/// What `snapshot.show` and `snapshot.list` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotView {
    pub id: String,
    pub name: String,
    pub kind: SnapshotKind,
    /// The VM it was taken from (which may be gone since).
    pub vm: String,
    pub image: String,
    pub kernel: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_size_bytes: u64,
    pub network: NetworkMode,
    /// What it can be restored under: the VMM build and machine...
    pub vmm: String,
    /// ...and the accelerator.
    pub accel: Accel,
    /// The snapshot whose disks this one's layers sit on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// VMs and snapshots that need it (it cannot be deleted before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    /// Bytes its files take on disk.
    pub size_bytes: u64,
    pub dir: String,
    pub created_at_ms: i64,
}
