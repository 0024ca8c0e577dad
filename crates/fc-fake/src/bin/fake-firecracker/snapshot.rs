//! The fake's snapshot files: the "microVM state" is a JSON document of its
//! own (nothing else can read it, nothing else should), the guest memory a
//! sparse file of the guest's size, like the one Firecracker writes.

use std::fs::OpenOptions;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Drive, MachineConfig, NetworkInterface, Phase, Vsock};

/// Marks a state file as the fake's.
pub const MAGIC: &str = "banger-fc-fake snapshot v1";
const MIB: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub magic: String,
    pub vmm_version: String,
    pub state: Phase,
    pub machine_config: MachineConfig,
    pub drives: Vec<Drive>,
    pub network_interfaces: Vec<NetworkInterface>,
    pub vsock: Option<Vsock>,
}

/// Writes the state file (replacing it) and sizes the memory file to the
/// guest's memory. Like Firecracker, an existing memory file of the right
/// size is kept (a diff snapshot merges into it), another size is truncated
/// first.
pub fn write(state: &State, snapshot_path: &Path, mem_file_path: &Path) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(state)
        .map_err(|e| format!("Cannot serialize the microVM state: {e}"))?;
    std::fs::write(snapshot_path, text)
        .map_err(|e| format!("Cannot write the microVM state file: {e}"))?;
    let expected = state.machine_config.mem_size_mib * MIB;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(mem_file_path)
        .map_err(|e| format!("Cannot perform open on the memory backing file: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("Cannot perform get_metadata on the memory backing file: {e}"))?
        .len();
    if len != expected {
        file.set_len(0)
            .map_err(|e| format!("Cannot perform truncate on the memory backing file: {e}"))?;
    }
    file.set_len(expected)
        .map_err(|e| format!("Cannot perform set_length on the memory backing file: {e}"))?;
    file.sync_all()
        .map_err(|e| format!("Cannot perform sync_all on the memory backing file: {e}"))
}

/// Reads a state file and checks the memory file against it.
pub fn read(snapshot_path: &Path, mem_path: &Path) -> Result<State, String> {
    let text = std::fs::read(snapshot_path).map_err(|e| {
        format!("Failed to get snapshot state from file: Failed to open snapshot file: {e}")
    })?;
    let state: State = serde_json::from_slice(&text).map_err(|e| {
        format!("Failed to get snapshot state from file: not a fake-firecracker snapshot: {e}")
    })?;
    if state.magic != MAGIC {
        return Err(format!(
            "Invalid snapshot state: magic {:?}, expected {MAGIC:?}",
            state.magic
        ));
    }
    let len = std::fs::metadata(mem_path)
        .map_err(|e| format!("Failed to load guest memory: {}: {e}", mem_path.display()))?
        .len();
    let expected = state.machine_config.mem_size_mib * MIB;
    if len != expected {
        return Err(format!(
            "Failed to load guest memory: {} holds {len} bytes, the snapshot's guest has {expected}",
            mem_path.display()
        ));
    }
    Ok(state)
}
