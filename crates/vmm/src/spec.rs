//! What a VMM is asked to run, and what it hands back.
//!
//! The shapes follow what Firecracker's API configures (`boot-source`,
//! `machine-config`, `drives/{id}`, `network-interfaces/{id}`), so that a
//! Firecracker backend can take the same [`VmSpec`] later. Things only QEMU
//! can do (qcow2 disks, user-mode networking, TCG) are plain variants that a
//! Firecracker backend will refuse.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The daemon's id for the VM. Part of the ownership marker on the VMM's
    /// command line, so only `[A-Za-z0-9._-]` is accepted.
    pub vm_id: String,
    /// The human name (only used in log lines; the marker uses `vm_id`).
    pub name: String,
    /// Where the QMP socket, pidfile and `vmm.log` go (created if missing).
    pub vm_dir: PathBuf,
    pub boot: BootSource,
    pub machine: MachineConfig,
    /// Where guest RAM lives (anonymous memory unless a snapshot needs a
    /// file). Absent in older records, which means anonymous.
    #[serde(default)]
    pub memory: MemoryBacking,
    /// Attached in this order, except that the root drive (if any) always
    /// comes first so the guest sees it as `/dev/vda`.
    pub drives: Vec<Drive>,
    pub net: Vec<NetInterface>,
    /// The guest agent's channel, if the guest has an agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentChannel>,
    pub accel: Accel,
    /// The guest's serial console (ttyS0) is appended to this file.
    pub console_log: PathBuf,
    /// The VMM joins this process's user, network and mount namespaces
    /// before it runs: the isolated user-mode network's holder
    /// ([`crate::usernet::UsernetHandle::namespace_pid`]), so that a
    /// [`NetBackend::User`] NIC opens the guest's connections from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_namespaces_of: Option<u32>,
}

/// Firecracker's `boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Passed to the kernel as is (nothing is added, not even `root=`).
    pub cmdline: String,
}

/// Firecracker's `machine-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Use 1 under TCG: with 2 the guest marks the TSC unstable and boots far slower.
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// Where the guest's RAM lives. QEMU always gets a memory backend object
/// named `mem`, because a saved state names its RAM blocks: a VM started
/// without one has the block `microvm.ram`, which a VM with a file-backed
/// RAM could not load.
///
/// Firecracker's guest memory is anonymous; its snapshot load maps the
/// memory file privately, which is [`MemoryBacking::File`] with
/// `shared: false`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MemoryBacking {
    /// Private anonymous memory (`memory-backend-ram`).
    #[default]
    Anonymous,
    /// Memory mapped from `path` (`memory-backend-file`), which must be
    /// exactly the VM's memory size if it exists.
    ///
    /// `shared: true` (`share=on`): the file *is* the RAM; guest writes land
    /// in it (created if missing; its directory must exist). Only such a VM
    /// can save its state without its RAM ([`crate::RamSave::KeptInSharedFile`]).
    ///
    /// `shared: false` (`share=off`): the file is mapped copy-on-write;
    /// the guest reads it, its writes stay in the process, and the file is
    /// never written, so many VMs can start from one file. It must exist:
    /// it is how a restore maps the RAM a state was saved with.
    File { path: PathBuf, shared: bool },
}

impl MemoryBacking {
    pub fn is_file(&self) -> bool {
        matches!(self, MemoryBacking::File { .. })
    }
}

/// Firecracker's `drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// `[A-Za-z][A-Za-z0-9._-]*`, unique among the drives.
    pub id: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
    /// At most one drive; it is attached first (`/dev/vda`).
    pub is_root: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    /// QEMU only.
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Firecracker's `network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// `[A-Za-z][A-Za-z0-9._-]*`, unique among the interfaces.
    pub id: String,
    /// `xx:xx:xx:xx:xx:xx`; QEMU picks one when `None`.
    pub mac: Option<String>,
    pub backend: NetBackend,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NetBackend {
    /// The VMM's own user-mode network (QEMU slirp: guest 10.0.2.15/24,
    /// gateway 10.0.2.2, DNS 10.0.2.3), with host ports forwarded to the guest.
    /// Slirp connects from the namespace the VMM runs in: from the host's,
    /// the guest reaches whatever the host reaches, the host's loopback
    /// included (10.0.2.2 is mapped to it); from the isolated network's
    /// ([`VmSpec::join_namespaces_of`], [`crate::usernet`]) only what its
    /// filter lets through. With `restrict` (QEMU's `restrict=on`) the
    /// guest reaches nothing, and only the forwards reach it.
    User {
        forwards: Vec<PortForward>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        restrict: bool,
    },
    /// An existing TAP device (made by the helper).
    Tap { tap_name: String },
    /// A NIC with nothing behind it (QEMU: a port on a hub of its own):
    /// the guest sees its link, and nothing it sends goes anywhere. For
    /// loading a bridged VM's saved state without a TAP (for instance to
    /// move its RAM into a file and save it again).
    ///
    /// A saved state holds the state of the network backends that have
    /// any, and QEMU's user-mode network (slirp, [`NetBackend::User`]) has
    /// its own section (`Tap` and `Detached` have none): a state saved from
    /// a VM with a `User` NIC loads only into a VM with a `User` NIC (QEMU:
    /// "Unknown savevm section or instance 'slirp'"), while a state saved
    /// with a `Tap` or `Detached` NIC loads into any of the three (a `User`
    /// NIC then starts with no connections). Measured with QEMU 7.2.
    /// QEMU warns in `vmm.log` that the hub "is not connected to host
    /// network"; that is the point.
    Detached,
}

/// How the daemon reaches the guest agent (docs/agent.md, "Transport"). Firecracker's
/// counterpart is its `vsock` device with a Unix socket on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentChannel {
    /// A virtio-serial port named `banger.agent`, its host end a Unix
    /// socket QEMU listens on (`agent.sock` in the VM directory). Works
    /// where the host has no `/dev/vhost-vsock`.
    VirtioSerial,
    /// Firecracker's vsock device, its host end a Unix socket Firecracker
    /// listens on (`vsock.sock` in the VM directory): the host connects,
    /// sends `CONNECT PORT\n` and reads `OK ...`, then talks to the agent
    /// listening on vsock port `port` in the guest.
    HybridVsock { port: u32 },
}

impl AgentChannel {
    /// The name recorded for the VM (`virtio-serial`, `hybrid-vsock`).
    pub fn as_str(&self) -> &'static str {
        match self {
            AgentChannel::VirtioSerial => "virtio-serial",
            AgentChannel::HybridVsock { .. } => "hybrid-vsock",
        }
    }
}

/// A host port forwarded to a guest port (user-mode networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub proto: Proto,
    /// IPv4 only: QEMU 7.2's slirp refuses IPv6 host addresses.
    pub host_addr: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's emulator (`-accel tcg -cpu max`): slower, works everywhere.
    #[default]
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Which backend a [`VmHandle`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Qemu,
    Firecracker,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where [`crate::Vmm::save_state`] puts the guest's RAM; a restore must be
/// told the same (QEMU refuses a state saved the other way: "Capability
/// x-ignore-shared is on, but received capability is off").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RamSave {
    /// The RAM is written into the state (as big as the guest's non-zero
    /// RAM: zero pages take a few bytes each).
    IntoState,
    /// The RAM stays in the VM's shared memory file
    /// ([`MemoryBacking::File`] with `shared: true`) and only device state
    /// is written (tens of KiB). The file is part of the snapshot: restore
    /// into a VM whose memory maps that file (or a copy of it).
    KeptInSharedFile,
}

/// What a completed [`crate::Vmm::save_state`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveReport {
    /// The size of the state file.
    pub bytes: u64,
    /// From the start of the save to the state file being complete.
    pub elapsed: Duration,
}

/// Which VMM build a state was saved by ([`crate::Vmm::build`]). A state
/// loads only into the same build (device state layouts change between
/// versions) and the same VM shape (spec: memory size, vCPUs, devices,
/// accelerator), which the daemon records next to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmmBuild {
    pub backend: BackendKind,
    /// The VMM's version (`7.2.22` for QEMU).
    pub version: String,
    /// The machine type (`microvm`).
    pub machine: String,
}

/// What the daemon keeps about a running VMM (in its `handles.json`) to find
/// it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHandle {
    pub pid: u32,
    /// The QMP socket (QEMU) or the API socket (Firecracker).
    pub control_socket: PathBuf,
    pub backend: BackendKind,
}

/// A signal the daemon may send to a VMM process (`vm kill --signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    Term,
    Kill,
    Int,
    Hup,
    Quit,
    Usr1,
    Usr2,
}

impl Signal {
    const ALL: [Signal; 7] = [
        Signal::Term,
        Signal::Kill,
        Signal::Int,
        Signal::Hup,
        Signal::Quit,
        Signal::Usr1,
        Signal::Usr2,
    ];

    /// `"TERM"`, `"KILL"`, ...
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Quit => "QUIT",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
        }
    }

    /// The Linux signal number.
    pub fn number(self) -> i32 {
        self.to_rustix().as_raw()
    }

    pub(crate) fn to_rustix(self) -> rustix::process::Signal {
        use rustix::process::Signal as S;
        match self {
            Signal::Term => S::TERM,
            Signal::Kill => S::KILL,
            Signal::Int => S::INT,
            Signal::Hup => S::HUP,
            Signal::Quit => S::QUIT,
            Signal::Usr1 => S::USR1,
            Signal::Usr2 => S::USR2,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// The signal name was not one of [`Signal`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?} (use TERM, KILL, INT, HUP, QUIT, USR1, USR2 or their numbers)")]
pub struct UnknownSignal(pub String);

impl FromStr for Signal {
    type Err = UnknownSignal;

    /// Accepts `KILL`, `SIGKILL`, `kill` and `9`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        let by_number = name.parse::<i32>().ok();
        Signal::ALL
            .into_iter()
            .find(|sig| sig.name() == name || Some(sig.number()) == by_number)
            .ok_or_else(|| UnknownSignal(s.to_owned()))
    }
}

/// How a VMM process ended, when the backend saw it end (it was its
/// child): the daemon tells a guest's poweroff (status 0) from a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    /// Exited with this status (0: the guest powered off or rebooted).
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmmExit::Code(c) => write!(f, "exit status {c}"),
            VmmExit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// The VMM's run state (QMP `query-status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmRunState {
    Running,
    /// Not running, and [`crate::Vmm::resume`] runs it again: paused
    /// ([`crate::Vmm::pause`], QMP `stop`), restored and not resumed yet,
    /// or paused after a completed [`crate::Vmm::save_state`] (QEMU's
    /// `postmigrate`: QEMU let go of its disk images until it runs again,
    /// and refuses to save it again before that:
    /// [`crate::VmmError::SavedAlready`]).
    Paused,
    /// Not started yet.
    Prelaunch,
    /// The guest shut down and QEMU has not exited (yet).
    Shutdown,
    GuestPanicked,
    InternalError,
    IoError,
    /// Any other QMP run state, by its QMP name.
    Other(String),
}

impl fmt::Display for VmRunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmRunState::Running => "running",
            VmRunState::Paused => "paused",
            VmRunState::Prelaunch => "prelaunch",
            VmRunState::Shutdown => "shutdown",
            VmRunState::GuestPanicked => "guest-panicked",
            VmRunState::InternalError => "internal-error",
            VmRunState::IoError => "io-error",
            VmRunState::Other(name) => name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_prefix_case_and_number() {
        assert_eq!("KILL".parse::<Signal>(), Ok(Signal::Kill));
        assert_eq!("sigterm".parse::<Signal>(), Ok(Signal::Term));
        assert_eq!("9".parse::<Signal>(), Ok(Signal::Kill));
        assert_eq!(" hup ".parse::<Signal>(), Ok(Signal::Hup));
        assert!("STOP".parse::<Signal>().is_err());
        assert!("0".parse::<Signal>().is_err());
        assert_eq!(Signal::Usr1.to_string(), "SIGUSR1");
        assert_eq!(Signal::Term.number(), 15);
    }

    #[test]
    fn handle_round_trips_through_json() {
        let handle = VmHandle {
            pid: 4242,
            control_socket: PathBuf::from("/run/banger/vms/abc/qmp.sock"),
            backend: BackendKind::Qemu,
        };
        let json = serde_json::to_string(&handle).unwrap();
        assert_eq!(
            json,
            r#"{"pid":4242,"control_socket":"/run/banger/vms/abc/qmp.sock","backend":"qemu"}"#
        );
        assert_eq!(serde_json::from_str::<VmHandle>(&json).unwrap(), handle);
    }

    #[test]
    fn memory_backing_is_tagged_and_defaults_to_anonymous() {
        let file = MemoryBacking::File {
            path: PathBuf::from("/d/ram"),
            shared: true,
        };
        assert_eq!(
            serde_json::to_string(&file).unwrap(),
            r#"{"type":"file","path":"/d/ram","shared":true}"#
        );
        assert_eq!(
            serde_json::to_string(&MemoryBacking::Anonymous).unwrap(),
            r#"{"type":"anonymous"}"#
        );
        // A spec written before the field existed reads as anonymous.
        let mut spec = serde_json::to_value(crate::qemu::test_spec_sample()).unwrap();
        spec.as_object_mut().unwrap().remove("memory");
        let spec: VmSpec = serde_json::from_value(spec).unwrap();
        assert_eq!(spec.memory, MemoryBacking::Anonymous);
        assert_eq!(
            serde_json::to_string(&RamSave::KeptInSharedFile).unwrap(),
            r#""kept_in_shared_file""#
        );
    }

    #[test]
    fn net_backend_serialises_tagged() {
        let nic = NetBackend::User {
            restrict: false,
            forwards: vec![PortForward {
                proto: Proto::Tcp,
                host_addr: "127.0.0.1".parse().unwrap(),
                host_port: 2222,
                guest_port: 22,
            }],
        };
        assert_eq!(
            serde_json::to_string(&nic).unwrap(),
            r#"{"type":"user","forwards":[{"proto":"tcp","host_addr":"127.0.0.1","host_port":2222,"guest_port":22}]}"#
        );
    }
}
