//! Results of the `ping`, `daemon.*` and `network.status` methods.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PingResult {
    pub version: String,
    pub build_id: String,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreStatus {
    pub path: String,
    pub schema_version: u32,
    pub vms: u64,
    pub images: u64,
    pub kernels: u64,
}

/// Params of `daemon.shutdown`; none are needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownParams {
    /// Shut down only if no operation is running or starting, and refuse
    /// new ones from then on, in one step (`conflict` naming them
    /// otherwise): `banger update` stops the daemon this way, so nothing
    /// begun after its check is cut short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_idle: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShutdownResult {
    pub pid: u32,
}

/// Bridged networking as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpLease {
    pub vm: String,
    pub address: String,
}
