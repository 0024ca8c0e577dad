//! The microVM configuration the fake keeps: the fields it acts on typed,
//! the rest kept as sent so `GET /vm/config` echoes it.
//!
//! Bodies reach these types only after the API description accepted them,
//! so the types do not repeat its checks.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `InstanceInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `MachineConfiguration`, with Firecracker's defaults (1 vCPU, 128 MiB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub vcpu_count: u64,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default = "no_huge_pages")]
    pub huge_pages: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

fn no_huge_pages() -> String {
    "None".to_owned()
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: no_huge_pages(),
            cpu_template: None,
        }
    }
}

/// `BootSource`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `Drive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drive {
    pub drive_id: String,
    pub is_root_device: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `NetworkInterface`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `Vsock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vsock {
    pub guest_cid: u64,
    pub uds_path: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `FullVmConfiguration`: what `GET /vm/config` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VmConfig {
    #[serde(rename = "machine-config")]
    pub machine: MachineConfig,
    #[serde(rename = "boot-source", skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<BootSource>,
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logger: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    /// Devices the fake accepts without acting on them (balloon, entropy,
    /// ...), under their `FullVmConfiguration` key.
    #[serde(flatten)]
    pub others: Map<String, Value>,
}
