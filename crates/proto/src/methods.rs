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
