//! Method names and their parameter and result types.
//!
//! The daemon's dispatch table (`banger_daemon::dispatch::METHODS`) maps each
//! name here to a handler; a test there pins that table to `docs/rpc.md`.

use serde::{Deserialize, Serialize};

/// `ping`: no params; answers [`PingResult`]. The CLI sends it first on every
/// connection as the version/build handshake.
pub const PING: &str = "ping";
/// `daemon.status`: no params; answers [`DaemonStatus`].
pub const DAEMON_STATUS: &str = "daemon.status";
/// `daemon.shutdown`: no params; answers [`ShutdownResult`], then the daemon
/// stops accepting, lets in-flight requests finish and exits.
pub const DAEMON_SHUTDOWN: &str = "daemon.shutdown";

/// `vm.create.begin`: [`VmCreateParams`](crate::vm::VmCreateParams); answers
/// an [`OpView`](crate::vm::OpView) whose `op_id` is this request's op id.
pub const VM_CREATE_BEGIN: &str = "vm.create.begin";
pub const VM_START: &str = "vm.start";
pub const VM_STOP: &str = "vm.stop";
pub const VM_KILL: &str = "vm.kill";
pub const VM_RESTART: &str = "vm.restart";
pub const VM_DELETE: &str = "vm.delete";
pub const VM_SHOW: &str = "vm.show";
pub const VM_LIST: &str = "vm.list";
pub const VM_EDIT: &str = "vm.edit";
pub const VM_SSH_INFO: &str = "vm.ssh_info";
/// `vm.stats`: [`VmRef`](crate::vm::VmRef); answers [`VmStats`](crate::vm::VmStats).
pub const VM_STATS: &str = "vm.stats";
/// `vm.ports`: [`VmRef`](crate::vm::VmRef); answers `[ListeningPort]`.
pub const VM_PORTS: &str = "vm.ports";
pub const VM_EXEC_BEGIN: &str = "vm.exec.begin";
pub const VM_EXEC_IO: &str = "vm.exec.io";
pub const VM_CP: &str = "vm.cp";
pub const IMAGE_BUILD_BEGIN: &str = "image.build.begin";
pub const IMAGE_LIST: &str = "image.list";
pub const IMAGE_SHOW: &str = "image.show";
pub const IMAGE_DELETE: &str = "image.delete";
pub const KERNEL_PULL_BEGIN: &str = "kernel.pull.begin";
pub const KERNEL_LIST: &str = "kernel.list";
pub const KERNEL_SHOW: &str = "kernel.show";
pub const KERNEL_DELETE: &str = "kernel.delete";
pub const OP_STATUS: &str = "op.status";
pub const OP_CANCEL: &str = "op.cancel";
pub const OP_LIST: &str = "op.list";
pub const DOCTOR: &str = "doctor";
/// `network.status`: no params; answers [`NetworkStatus`].
pub const NETWORK_STATUS: &str = "network.status";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    pub version: String,
    pub build_id: String,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub build_id: String,
    pub protocol_version: u32,
    pub pid: u32,
    pub uptime_s: u64,
    pub socket: String,
    pub log_file: String,
    pub store: StoreStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub path: String,
    pub schema_version: u32,
    pub vms: u64,
    pub images: u64,
    pub kernels: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownResult {
    pub pid: u32,
}

/// Bridged networking as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub helper_socket: String,
    /// Whether banger-helper answered just now.
    pub helper: bool,
    /// Set once the bridge is up (the helper answered at least once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub tap_pool_size: usize,
    pub idle_taps: Vec<String>,
    pub taps_in_use: Vec<String>,
    pub leases: Vec<IpLease>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpLease {
    pub vm: String,
    pub address: String,
}
