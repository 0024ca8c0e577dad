use std::time::Duration;

use banger_paths::Layout;

/// Everything the daemon needs to know at start; built by `bangerd`'s
/// `main` from flags and the environment.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub layout: Layout,
    /// The crate version, reported by `ping` and `daemon.status`.
    pub version: String,
    /// Identifies the exact sources the binary was built from; the CLI
    /// replaces a daemon whose build id differs from its own.
    pub build_id: String,
    /// How long a request line may take to arrive once it has started.
    pub read_timeout: Duration,
    /// How long a connection may sit with no request before it is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace: Duration,
    /// KVM, TCG, or decide by probing (`BANGER_ACCEL`).
    pub accel: AccelChoice,
    /// How long a booting VM may take to answer SSH.
    pub boot_timeout: Duration,
    /// How long `vm stop` waits for the guest to power off before SIGKILL.
    pub stop_timeout: Duration,
    /// The VM defaults when `config_file` is `None` or missing.
    pub defaults: VmDefaults,
    /// The user's config.toml, read again at each create so an edit
    /// applies to the next one (see crates/config/src/lib.rs).
    pub config_file: Option<std::path::PathBuf>,
    /// Where banger-helper listens (`BANGER_HELPER_SOCKET`).
    pub helper_socket: std::path::PathBuf,
    /// Idle TAP devices kept ready for bridged VMs (`BANGER_TAP_POOL`).
    pub tap_pool: usize,
    /// A running VM's console.log is rotated past this many bytes
    /// (`console_log_max`; see `vms/console.rs`).
    pub console_log_max: u64,
    /// Free space copies from a guest leave on the host's filesystem
    /// (`cp_reserve`; 0: none; see `vms/guest/reserve.rs`).
    pub cp_reserve: u64,
    /// The static guest agent baked into images (`BANGER_AGENT_BIN`);
    /// `None`: looked for next to the daemon (see `artifacts::agent_binary`).
    pub agent_bin: Option<std::path::PathBuf>,
    /// The Firecracker binary (`BANGER_FIRECRACKER_BIN`, `--firecracker`);
    /// `None`: `firecracker` on `PATH`, if any (see `vmms.rs`).
    pub firecracker_bin: Option<std::path::PathBuf>,
    /// How often running VMs' agents are asked for stats.
    pub stats_interval: Duration,
    /// Make warm templates and restore creates from them (`BANGER_TEMPLATES`).
    pub templates: bool,
    /// Where VMs' own RAM files go (`BANGER_RAM_DIR`); `None`: a directory
    /// of this data directory's in `/dev/shm` (see `vms/ram.rs`).
    pub ram_dir: Option<std::path::PathBuf>,
    /// Events held for subscribers that resume, and how far a live one
    /// may fall behind (see `events.rs`).
    pub event_capacity: usize,
    /// How long an event subscriber may leave a line unread before it is
    /// dropped (`BANGER_EVENT_STALL_MS`; see `dispatch/server.rs`).
    pub event_stall: Duration,
}

/// How the accelerator is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" | "" => Self::Auto,
            "kvm" => Self::Kvm,
            "tcg" => Self::Tcg,
            _ => return None,
        })
    }
}

/// What `vm create` uses when the user does not say: built-in, or from
/// the configuration file (`config_file`).
pub use banger_config::VmDefaults;

impl DaemonConfig {
    pub fn new(layout: Layout, version: impl Into<String>, build_id: impl Into<String>) -> Self {
        Self {
            layout,
            version: version.into(),
            build_id: build_id.into(),
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
            accel: AccelChoice::Auto,
            boot_timeout: Duration::from_secs(180),
            stop_timeout: Duration::from_secs(30),
            defaults: VmDefaults::built_in(),
            config_file: None,
            helper_socket: std::path::PathBuf::from(banger_proto::helper::DEFAULT_HELPER_SOCKET),
            tap_pool: banger_config::DEFAULT_TAP_POOL,
            console_log_max: banger_config::DEFAULT_CONSOLE_LOG_MAX,
            cp_reserve: banger_config::DEFAULT_CP_RESERVE,
            agent_bin: None,
            firecracker_bin: None,
            stats_interval: Duration::from_secs(10),
            templates: true,
            ram_dir: None,
            event_capacity: crate::events::DEFAULT_CAPACITY,
            event_stall: Duration::from_secs(5),
        }
    }
}
