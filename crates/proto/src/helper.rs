//! The daemon ↔ `banger-helper` protocol and the helper's config file.
//!
//! Same transport as the daemon's RPC: one JSON object per line over a Unix
//! socket, each request answered in turn. Requests are typed calls, one
//! variant per allow-listed privileged operation; the helper validates every
//! argument before it touches the host and answers anything else with a
//! typed [`HelperErrorCode`]. The daemon forwards the op id of the request
//! that caused the call, so one id ties CLI, daemon and helper log lines.
//!
//! One call, [`HelperCall::DnsSocket`], answers with a file descriptor: the
//! reply line is sent with the descriptor attached (`SCM_RIGHTS`) in a
//! single `sendmsg`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Protocol version carried in every helper request.
pub const HELPER_PROTOCOL_VERSION: u32 = 1;

/// Largest request line the helper reads, newline excluded.
pub const MAX_HELPER_REQUEST_BYTES: usize = 64 * 1024;

/// Where the helper listens unless its config says otherwise. The directory
/// is root-owned; the socket is world-connectable and every caller's uid is
/// checked with `SO_PEERCRED`.
pub const DEFAULT_HELPER_SOCKET: &str = "/run/banger-helper/helper.sock";

/// Where `banger system install` writes the helper's config.
pub const DEFAULT_HELPER_CONFIG: &str = "/etc/banger/helper.json";

/// Every TAP device banger makes is called this plus a number.
pub const TAP_PREFIX: &str = "bgtap";

/// Every device-mapper device banger makes starts with this.
pub const DM_PREFIX: &str = "banger-";

/// banger's own nftables table (family `ip`); NAT rules live only there.
pub const NFT_TABLE: &str = "banger";

/// One call to the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperRequest {
    pub version: u32,
    /// The op id of the daemon request this call serves.
    pub op_id: String,
    #[serde(flatten)]
    pub call: HelperCall,
}

/// The allow-listed operations. Names, paths and numbers are checked by the
/// helper against its config; see each variant for what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", content = "args", rename_all = "snake_case")]
pub enum HelperCall {
    /// Liveness and the network settings the helper enforces.
    Ping,
    /// Creates banger's bridge if missing, gives it the gateway address of
    /// the configured subnet and brings it up (idempotent). `name` must be
    /// the configured bridge.
    BridgeEnsure { name: String },
    /// Deletes banger's bridge (idempotent).
    BridgeDelete { name: String },
    /// Creates a persistent TAP device owned by `owner_uid` (an allowed
    /// uid), attaches it to `bridge` and brings it up. `name` is
    /// [`TAP_PREFIX`] plus digits.
    TapCreate {
        name: String,
        owner_uid: u32,
        bridge: String,
    },
    /// Deletes a banger TAP device (idempotent).
    TapDelete { name: String },
    /// The banger TAP devices that exist now.
    TapList,
    /// Masquerade for `subnet` (the configured one) leaving through any
    /// interface but the bridge, and forwarding to and from it, in banger's
    /// own nftables table (idempotent).
    NatEnsure { subnet: String },
    /// Removes banger's nftables table (idempotent).
    NatRemove { subnet: String },
    /// Attaches a regular file under an allowed data dir, owned by the
    /// caller, to a free loop device.
    LoopAttach { path: PathBuf, read_only: bool },
    /// Detaches a loop device whose backing file is under an allowed data dir.
    LoopDetach { device: String },
    /// A device-mapper snapshot `name` ([`DM_PREFIX`]...) of `origin` with
    /// copy-on-write store `cow` (both loop devices attached by banger).
    DmSnapshotCreate {
        name: String,
        origin: String,
        cow: String,
    },
    /// Removes a banger device-mapper device.
    DmRemove { name: String },
    /// Sends `signal` (`TERM`, `KILL`, `INT`, `HUP`, `QUIT`, `USR1`, `USR2`)
    /// to `pid`, only if it is a VMM banger launched: a `qemu-system-*` or
    /// `firecracker` executable carrying banger's `-name guest=banger-...`
    /// marker, running as an allowed uid.
    SignalVmm { pid: u32, signal: String },
    /// Gives a socket under an allowed runtime dir to the caller's uid.
    ChownSocket { path: PathBuf },
    /// A UDP socket bound to port 53 on the bridge's gateway address, passed
    /// back as a file descriptor, for the daemon's DNS server.
    DnsSocket,
    /// Replaces the egress rules of the VM at `addr` (a guest address of
    /// the subnet) on TAP `tap` (a banger TAP of the caller): its per-VM
    /// chain and sets in banger's nftables tables, and the TAP's
    /// anti-spoofing rules. Addresses learned through DNS are kept.
    EgressApply {
        tap: String,
        addr: Ipv4Addr,
        rules: EgressRules,
    },
    /// Adds addresses (and `addr:port` pairs) the daemon's DNS server
    /// resolved for an `allow` VM to its sets, expiring after `ttl_secs`
    /// (clamped to [`EGRESS_TTL_SECS`]).
    EgressResolved {
        tap: String,
        addr: Ipv4Addr,
        entries: Vec<EgressEntry>,
        ttl_secs: u32,
    },
    /// Removes every egress rule, set and map element of the VM at `addr`
    /// and of TAP `tap` (idempotent; the TAP may be gone already).
    EgressClear { tap: String, addr: Ipv4Addr },
}

/// Most entries (networks plus `addr:port` pairs) one [`EgressRules`] may
/// carry: the size of an `allow=` list.
pub const MAX_EGRESS_RULES: usize = 256;

/// Most entries one [`HelperCall::EgressResolved`] may carry.
pub const MAX_EGRESS_RESOLVED_PER_CALL: usize = 256;

/// Most DNS-learned elements a VM's sets hold at once (each set's `size`):
/// past it, adding more fails until some expire.
pub const MAX_EGRESS_RESOLVED: usize = 4096;

/// How long a DNS-learned address stays allowed: the answer's TTL, within
/// these bounds (seconds).
pub const EGRESS_TTL_SECS: std::ops::RangeInclusive<u32> = 30..=86_400;

/// A VM's egress policy as the helper enforces it: names already resolved
/// away, only addresses left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRules {
    pub mode: EgressRuleMode,
    /// `allow` only: networks reachable on every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<EgressNet>,
    /// `allow` only: single TCP/UDP ports of single addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EgressPort>,
}

/// The egress modes (see `banger_proto::Egress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressRuleMode {
    /// Public addresses only.
    Internet,
    /// Nothing but banger's DNS.
    None,
    /// Only the listed networks and ports, and what DNS answered.
    Allow,
    /// Everything, the host included.
    Open,
}

/// An IPv4 network, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressNet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// One port of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPort {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// A DNS-learned address: every port, or only `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressEntry {
    pub addr: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl HelperCall {
    /// The snake_case name used on the wire and in log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::BridgeEnsure { .. } => "bridge_ensure",
            Self::BridgeDelete { .. } => "bridge_delete",
            Self::TapCreate { .. } => "tap_create",
            Self::TapDelete { .. } => "tap_delete",
            Self::TapList => "tap_list",
            Self::NatEnsure { .. } => "nat_ensure",
            Self::NatRemove { .. } => "nat_remove",
            Self::LoopAttach { .. } => "loop_attach",
            Self::LoopDetach { .. } => "loop_detach",
            Self::DmSnapshotCreate { .. } => "dm_snapshot_create",
            Self::DmRemove { .. } => "dm_remove",
            Self::SignalVmm { .. } => "signal_vmm",
            Self::ChownSocket { .. } => "chown_socket",
            Self::DnsSocket => "dns_socket",
            Self::EgressApply { .. } => "egress_apply",
            Self::EgressResolved { .. } => "egress_resolved",
            Self::EgressClear { .. } => "egress_clear",
        }
    }
}

/// What a successful call returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HelperReply {
    Pong(HelperInfo),
    /// The call did what it was asked (or it was already so).
    Done,
    Taps {
        taps: Vec<TapInfo>,
    },
    /// A device made by the call (`/dev/loopN`, `/dev/mapper/NAME`).
    Device {
        path: String,
    },
    /// The descriptor travels beside this line (`SCM_RIGHTS`).
    Socket,
}

/// The helper's identity and the network it enforces: the daemon takes its
/// bridge and subnet from here, so the two never disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperInfo {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub bridge: String,
    /// `10.77.0.0/24`
    pub subnet: String,
    /// The bridge's own address in the subnet (`10.77.0.1`): the guests'
    /// gateway and DNS server.
    pub gateway: String,
    /// Whether `dm_snapshot_create` can work now; absent from a helper
    /// too old to tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_mapper: Option<DmSupport>,
}

/// Whether the helper can make device-mapper snapshots (root disks of a
/// raw-only VMM; docs/vms.md, "Disks").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmSupport {
    /// The `devices` feature is on and the kernel has device-mapper.
    Available,
    /// The helper's config does not turn on the `devices` feature.
    Disabled,
    /// The kernel has no device-mapper (no `/dev/mapper/control`: the
    /// `dm_mod` module is not loaded, or not built).
    Missing,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapInfo {
    pub name: String,
    /// The bridge it is attached to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

/// A helper response line: `{"result": ...}` or `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperResponse {
    Result(HelperReply),
    Error(HelperError),
}

/// Machine-readable class of a refused or failed helper call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperErrorCode {
    /// Not a JSON request, unknown call, or too large.
    BadRequest,
    BadVersion,
    /// The caller's uid is not an allowed one.
    PermissionDenied,
    /// A device, bridge or table name outside banger's prefixes or charset.
    InvalidName,
    /// A path that is relative, escapes the allowed dirs, or crosses a symlink.
    InvalidPath,
    /// A number or address out of range (subnet, pid, signal, uid).
    InvalidArgument,
    /// Well-formed but refused by policy: a file of another user, a pid
    /// that is not a banger VMM.
    NotAllowed,
    NotFound,
    /// The host refused the change; the message carries the tool's error.
    OperationFailed,
    /// The host lacks what the call needs: device-mapper or loop devices
    /// (a kernel module not loaded or not built); the message names it.
    Unsupported,
    #[serde(other)]
    Unknown,
}

impl HelperErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BadVersion => "bad_version",
            Self::PermissionDenied => "permission_denied",
            Self::InvalidName => "invalid_name",
            Self::InvalidPath => "invalid_path",
            Self::InvalidArgument => "invalid_argument",
            Self::NotAllowed => "not_allowed",
            Self::NotFound => "not_found",
            Self::OperationFailed => "operation_failed",
            Self::Unsupported => "unsupported",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for HelperErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperError {
    pub code: HelperErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

impl fmt::Display for HelperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "helper refused ({}): {}", self.code, self.message)?;
        if let Some(op_id) = &self.op_id {
            write!(f, " ({op_id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for HelperError {}

/// `/etc/banger/helper.json`, written by `banger system install` and read
/// by the helper at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperConfig {
    /// Uids allowed to call the helper (checked with `SO_PEERCRED`).
    pub allowed_uids: Vec<u32>,
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default = "default_subnet")]
    pub subnet: String,
    /// banger data dirs of the allowed users: loop devices are only made
    /// for files under these.
    #[serde(default)]
    pub data_dirs: Vec<PathBuf>,
    /// banger runtime dirs of the allowed users: only sockets under these
    /// are chowned.
    #[serde(default)]
    pub runtime_dirs: Vec<PathBuf>,
    /// JSON log lines go here (stderr when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// Groups of calls the daemon does not make today, off unless listed
    /// here (least privilege: see [`HelperFeature`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<HelperFeature>,
}

/// A group of helper calls that is refused (`not_allowed`) unless the
/// helper's config lists it in `features`. The calls the daemon makes
/// (`ping`, bridge, TAP, NAT set-up and the DNS socket) need none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperFeature {
    /// `loop_attach`, `loop_detach`, `dm_snapshot_create`, `dm_remove`.
    Devices,
    /// `signal_vmm`.
    Signals,
    /// `chown_socket`.
    SocketChown,
    /// `bridge_delete`, `nat_remove`.
    NetworkRemove,
}

impl HelperFeature {
    pub const ALL: [Self; 4] = [
        Self::Devices,
        Self::Signals,
        Self::SocketChown,
        Self::NetworkRemove,
    ];

    /// The name in the config file (`devices`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Devices => "devices",
            Self::Signals => "signals",
            Self::SocketChown => "socket_chown",
            Self::NetworkRemove => "network_remove",
        }
    }
}

impl fmt::Display for HelperFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_HELPER_SOCKET)
}

fn default_bridge() -> String {
    "banger0".into()
}

fn default_subnet() -> String {
    "10.77.0.0/24".into()
}

impl HelperConfig {
    /// A config with defaults for everything but the allowed uids.
    pub fn for_uids(allowed_uids: Vec<u32>) -> Self {
        Self {
            allowed_uids,
            socket: default_socket(),
            bridge: default_bridge(),
            subnet: default_subnet(),
            data_dirs: Vec::new(),
            runtime_dirs: Vec::new(),
            log_file: None,
            features: Vec::new(),
        }
    }
}
