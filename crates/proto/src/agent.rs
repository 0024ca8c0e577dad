//! The daemon ↔ `banger-agent` protocol (docs/agent.md): framed, versioned, over
//! one byte stream (a virtio-serial port, or vsock where the host has it).
//!
//! A frame is `MAGIC | header_len (u32 BE) | body_len (u32 BE) | header |
//! body`: the header is one JSON [`Message`], the body raw bytes (stdout,
//! stdin, file contents) so bulk data is not base64-inflated. The magic
//! lets a reader that joined mid-stream (a daemon restart, a truncated
//! frame) skip to the next frame instead of misreading lengths.
//!
//! Requests carry an `id` the daemon chooses; every reply and event about
//! that request carries the same id. The first frame each side sends is a
//! [`Message::Hello`]; a peer of another `protocol` is refused with a clear
//! error. [`FrameDecoder`] never panics on any input (fuzzed in tests).
//!
//! Requests added within one protocol version are announced as
//! [`capability`] names in the agent's `Hello`: a daemon asks only for what
//! the agent announced, so an agent baked into an older image keeps
//! working for everything else and its VMs get a clear "agent too old"
//! error instead of a silent timeout. (An agent that predates a request
//! could not answer it with its id: it sees a header it cannot read.
//! Agents since capabilities answer an unknown request `type` that has an
//! `id` with [`AgentErrorCode::Unsupported`] and that id.)

use serde::{Deserialize, Serialize};

/// Protocol version in every [`Message::Hello`].
pub const AGENT_PROTOCOL_VERSION: u32 = 1;

/// Start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"BGA1";

/// Bytes before the header: magic and the two lengths.
pub const FRAME_PREFIX: usize = 12;

/// Largest header (JSON) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Largest body accepted; writers split data into chunks of at most this.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Name of the virtio-serial port the agent talks on.
pub const AGENT_PORT_NAME: &str = "banger.agent";

/// The kernel command line parameter that tells an agent started without
/// options to listen on vsock instead of waiting for its virtio-serial
/// port: `banger.agent=vsock:PORT` (Firecracker guests, which have no
/// virtio-serial).
pub const AGENT_CMDLINE_KEY: &str = "banger.agent";

/// The guest vsock port the agent listens on when told to by
/// [`AGENT_CMDLINE_KEY`].
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// `banger.agent=vsock:PORT`, for the kernel command line.
pub fn agent_vsock_cmdline(port: u32) -> String {
    format!("{AGENT_CMDLINE_KEY}=vsock:{port}")
}

/// The vsock port a kernel command line asks the agent to listen on
/// (see [`AGENT_CMDLINE_KEY`]); the last such parameter counts.
pub fn agent_vsock_from_cmdline(cmdline: &str) -> Option<u32> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| {
            word.strip_prefix(AGENT_CMDLINE_KEY)?
                .strip_prefix("=vsock:")
        })
        .next_back()?
        .parse()
        .ok()
}

/// Fewest bytes of host randomness an [`Message::Identity`] body carries.
pub const IDENTITY_RANDOM_MIN: usize = 32;

/// Most bytes of host randomness an [`Message::Identity`] body carries.
pub const IDENTITY_RANDOM_MAX: usize = 512;

/// Longest private key file a [`HostKeyPair`] may carry (an ed25519 one
/// made with `ssh-keygen -C ''` is 387 bytes; a long comment adds to it).
pub const HOST_KEY_PRIVATE_MAX: usize = 1024;

/// Longest public key line a [`HostKeyPair`] may carry (81 bytes without
/// a comment).
pub const HOST_KEY_PUBLIC_MAX: usize = 512;

/// The names an agent lists in its `Hello` (`capabilities`) for the
/// requests added since protocol 1 first shipped. An agent without a name
/// does not know the request: do not send it.
pub mod capability {
    /// [`super::Message::SetTime`].
    pub const SET_TIME: &str = "set_time";
    /// [`super::Message::Freeze`] and [`super::Message::Thaw`].
    pub const FREEZE: &str = "freeze";
    /// [`super::Message::Identity`].
    pub const IDENTITY: &str = "identity";
    /// The `host_key` of [`super::Message::Identity`]: the agent installs
    /// the key pair the daemon made. An agent without it would ignore the
    /// field (and make a key of its own): do not send it one.
    pub const IDENTITY_HOST_KEY: &str = "identity_host_key";
    /// [`super::Message::WriteTree`] and [`super::Message::ReadTree`]:
    /// directory copies as tar streams.
    pub const TREE: &str = "tree";
    /// [`super::Message::StdinRead`]: the agent says how much of an
    /// exec's stdin the process took, so the host sends no more than a
    /// window ahead (flow control for `tar c | banger vm exec ...`).
    pub const STDIN_ACK: &str = "stdin_ack";

    /// Everything this crate's agent does.
    pub const ALL: &[&str] = &[
        SET_TIME,
        FREEZE,
        IDENTITY,
        IDENTITY_HOST_KEY,
        TREE,
        STDIN_ACK,
    ];
}

/// One frame: a message and its raw body (empty for most messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub msg: Message,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(msg: Message) -> Self {
        Self {
            msg,
            body: Vec::new(),
        }
    }

    pub fn with_body(msg: Message, body: Vec<u8>) -> Self {
        Self { msg, body }
    }
}

/// Everything either side says. Requests go daemon → agent; replies and
/// events agent → daemon; `Hello` and `Error` both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// First frame from each side.
    Hello {
        protocol: u32,
        /// The sender's software version (for logs and errors).
        version: String,
        /// The [`capability`] names of the requests the sender answers
        /// beyond protocol 1's first set (the agent's; the daemon sends
        /// none). Absent from older agents: they answer none of them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        capabilities: Vec<String>,
    },

    // ---- requests (daemon → agent) ----
    /// Liveness: answered with [`Message::HealthOk`].
    Health {
        id: u64,
    },
    /// Answered with [`Message::StatsReply`].
    Stats {
        id: u64,
    },
    /// Answered with [`Message::PortsReply`].
    Ports {
        id: u64,
    },
    /// Runs `argv[0]` with `argv[1..]` (no shell). Answered with
    /// [`Message::Started`], then [`Message::Stdout`]/[`Message::Stderr`]
    /// events and one [`Message::Exited`].
    Exec {
        id: u64,
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env: Vec<(String, String)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// Run on a pseudo-terminal of `rows` x `cols` (stdout and stderr
        /// then arrive merged as stdout).
        #[serde(default)]
        tty: bool,
        #[serde(default)]
        rows: u16,
        #[serde(default)]
        cols: u16,
    },
    /// Bytes for the process's stdin (the body); an empty body closes it.
    Stdin {
        id: u64,
    },
    /// A signal for the process (`INT`, `TERM`, `KILL`, `HUP`, `QUIT`).
    Signal {
        id: u64,
        signal: String,
    },
    /// New terminal size for a `tty` exec.
    Resize {
        id: u64,
        rows: u16,
        cols: u16,
    },
    /// Creates or replaces `path` with `mode`; the contents follow as
    /// [`Message::FileData`] frames, then [`Message::FileEnd`]. Answered
    /// with [`Message::Done`] once the file is complete (written to a
    /// temporary name and renamed).
    WriteFile {
        id: u64,
        path: String,
        mode: u32,
    },
    /// Sends `path`: answered with [`Message::FileInfo`], then
    /// [`Message::FileData`] frames and [`Message::FileEnd`].
    ReadFile {
        id: u64,
        path: String,
    },
    /// Unpacks a directory tree into the guest: the contents follow as a
    /// tar stream (ustar/GNU: directories, regular files and symlinks,
    /// names relative to the tree's top, `.` being the top itself) in
    /// [`Message::FileData`] frames, then [`Message::FileEnd`]. The top is
    /// `path/name` when `path` is an existing directory (as `cp -r`
    /// does), else `path` itself, made new (its parent must exist) or
    /// merged into. Names with `..` or a leading `/` are refused, and
    /// nothing is written through a symlink. Answered with
    /// [`Message::TreeDone`]. Capability [`capability::TREE`].
    WriteTree {
        id: u64,
        path: String,
        name: String,
    },
    /// Sends the directory `path` as a tar stream (as for
    /// [`Message::WriteTree`]; symlinks are sent as symlinks, never
    /// followed; FIFOs and devices as headers alone, which the daemon
    /// counts as left out; sockets are left out) in
    /// [`Message::FileData`] frames, then [`Message::FileEnd`] (or an
    /// error). Capability [`capability::TREE`].
    ReadTree {
        id: u64,
        path: String,
    },
    /// Steps the guest's clock (`CLOCK_REALTIME`) to `unix_ns`
    /// (nanoseconds since the epoch), as after a resume: a paused guest's
    /// clock is behind. Answered with [`Message::Done`]. Capability
    /// [`capability::SET_TIME`].
    SetTime {
        id: u64,
        unix_ns: u64,
    },
    /// `sync()`, then freezes (`FIFREEZE`) every mounted filesystem on a
    /// block device, innermost mount first, so a snapshot of the disks is
    /// consistent. Answered with [`Message::Done`] once all are frozen (or
    /// an error, with none left frozen). If no [`Message::Thaw`] arrives
    /// within `timeout_ms` (1..=600000) the agent thaws them by itself: a
    /// daemon that dies mid-snapshot never leaves the guest frozen. A
    /// `Freeze` while frozen only sets the new deadline. Capability
    /// [`capability::FREEZE`].
    Freeze {
        id: u64,
        timeout_ms: u32,
    },
    /// Thaws (`FITHAW`) every filesystem on a block device (one that is not
    /// frozen is fine). Answered with [`Message::Done`]. Capability
    /// [`capability::FREEZE`].
    Thaw {
        id: u64,
    },
    /// Makes a guest restored from a snapshot its own: thaws all
    /// filesystems, steps the clock to `unix_ns`, mixes the body
    /// ([`IDENTITY_RANDOM_MIN`]..=[`IDENTITY_RANDOM_MAX`] bytes of host
    /// randomness) into the kernel's random pool and reseeds it, sets the
    /// hostname (`/etc/hostname`, and the `127.0.1.1` line of `/etc/hosts`
    /// if there is one), with `net` gives `eth0` a new MAC and address,
    /// default route and `/etc/resolv.conf`, and with `new_host_key`
    /// replaces the SSH host keys by a new ed25519 key (the running sshd
    /// re-reads it; open sessions stay): `host_key` when given (capability
    /// [`capability::IDENTITY_HOST_KEY`]; only with `new_host_key`), else
    /// one the guest makes with `ssh-keygen`. Answered with
    /// [`Message::IdentityDone`], or an error naming the step that failed
    /// (bad input is refused before anything changes). Capability
    /// [`capability::IDENTITY`].
    Identity {
        id: u64,
        hostname: String,
        unix_ns: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        net: Option<GuestNet>,
        #[serde(default)]
        new_host_key: bool,
        /// The new host key pair, made by the daemon (saves the guest an
        /// `ssh-keygen` and a `sync()`: slow under an emulated CPU).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_key: Option<HostKeyPair>,
    },

    // ---- both ways: file contents ----
    /// A chunk of file contents (the body).
    FileData {
        id: u64,
    },
    /// No more file contents.
    FileEnd {
        id: u64,
    },

    // ---- replies and events (agent → daemon) ----
    HealthOk {
        id: u64,
        uptime_s: f64,
    },
    StatsReply {
        id: u64,
        stats: GuestStats,
    },
    PortsReply {
        id: u64,
        ports: Vec<ListeningPort>,
    },
    Started {
        id: u64,
        pid: u32,
    },
    /// How many bytes of the exec's stdin (in all) the process has taken
    /// so far (or were dropped because it stopped reading): what the host
    /// sent beyond that still waits in the agent.
    StdinRead {
        id: u64,
        bytes: u64,
    },
    /// Output of the process (the body).
    Stdout {
        id: u64,
    },
    Stderr {
        id: u64,
    },
    /// The process ended: `code` if it exited, `signal` if it was killed.
    Exited {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    FileInfo {
        id: u64,
        mode: u32,
        size: u64,
    },
    Done {
        id: u64,
    },
    /// [`Message::WriteTree`] is complete: where the tree's top is, how
    /// many entries were written and how many bytes of file contents.
    TreeDone {
        id: u64,
        root: String,
        entries: u64,
        bytes: u64,
    },
    /// [`Message::Identity`] is applied; `host_key` is the guest's SSH
    /// host public key line (`ssh-ed25519 AAAA… comment`): the new one, or
    /// the one it had.
    IdentityDone {
        id: u64,
        host_key: String,
    },
    /// A request failed (`id` set) or a frame could not be read (`id`
    /// absent).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: AgentErrorCode,
        message: String,
    },
}

impl Message {
    /// The request id the message is about, if any.
    pub fn id(&self) -> Option<u64> {
        use Message as M;
        match self {
            M::Hello { .. } => None,
            M::Error { id, .. } => *id,
            M::Health { id }
            | M::Stats { id }
            | M::Ports { id }
            | M::Exec { id, .. }
            | M::Stdin { id }
            | M::Signal { id, .. }
            | M::Resize { id, .. }
            | M::WriteFile { id, .. }
            | M::ReadFile { id, .. }
            | M::WriteTree { id, .. }
            | M::ReadTree { id, .. }
            | M::SetTime { id, .. }
            | M::Freeze { id, .. }
            | M::Thaw { id }
            | M::Identity { id, .. }
            | M::FileData { id }
            | M::FileEnd { id }
            | M::HealthOk { id, .. }
            | M::StatsReply { id, .. }
            | M::PortsReply { id, .. }
            | M::Started { id, .. }
            | M::StdinRead { id, .. }
            | M::Stdout { id }
            | M::Stderr { id }
            | M::Exited { id, .. }
            | M::FileInfo { id, .. }
            | M::Done { id }
            | M::TreeDone { id, .. }
            | M::IdentityDone { id, .. } => Some(*id),
        }
    }

    /// The message's `type` as on the wire.
    pub fn kind(&self) -> &'static str {
        use Message as M;
        match self {
            M::Hello { .. } => "hello",
            M::Health { .. } => "health",
            M::Stats { .. } => "stats",
            M::Ports { .. } => "ports",
            M::Exec { .. } => "exec",
            M::Stdin { .. } => "stdin",
            M::Signal { .. } => "signal",
            M::Resize { .. } => "resize",
            M::WriteFile { .. } => "write_file",
            M::ReadFile { .. } => "read_file",
            M::WriteTree { .. } => "write_tree",
            M::ReadTree { .. } => "read_tree",
            M::SetTime { .. } => "set_time",
            M::Freeze { .. } => "freeze",
            M::Thaw { .. } => "thaw",
            M::Identity { .. } => "identity",
            M::FileData { .. } => "file_data",
            M::FileEnd { .. } => "file_end",
            M::HealthOk { .. } => "health_ok",
            M::StatsReply { .. } => "stats_reply",
            M::PortsReply { .. } => "ports_reply",
            M::Started { .. } => "started",
            M::StdinRead { .. } => "stdin_read",
            M::Stdout { .. } => "stdout",
            M::Stderr { .. } => "stderr",
            M::Exited { .. } => "exited",
            M::FileInfo { .. } => "file_info",
            M::Done { .. } => "done",
            M::TreeDone { .. } => "tree_done",
            M::IdentityDone { .. } => "identity_done",
            M::Error { .. } => "error",
        }
    }

    /// Every [`Message::kind`] (tests check the two agree).
    pub const KINDS: &'static [&'static str] = &[
        "hello",
        "health",
        "stats",
        "ports",
        "exec",
        "stdin",
        "signal",
        "resize",
        "write_file",
        "read_file",
        "write_tree",
        "read_tree",
        "set_time",
        "freeze",
        "thaw",
        "identity",
        "file_data",
        "file_end",
        "health_ok",
        "stats_reply",
        "ports_reply",
        "started",
        "stdin_read",
        "stdout",
        "stderr",
        "exited",
        "file_info",
        "done",
        "tree_done",
        "identity_done",
        "error",
    ];
}

/// How a restored guest's `eth0` is set up ([`Message::Identity`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    /// `aa:bb:cc:dd:ee:ff`, a unicast address.
    pub mac: String,
    /// IPv4 address and prefix length, `10.0.2.15/24`.
    pub address_cidr: String,
    /// IPv4 address of the default route.
    pub gateway: String,
    /// Name servers (IPv4 or IPv6) for `/etc/resolv.conf`; none leaves it
    /// as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// An SSH host key pair for a restored guest ([`Message::Identity`]),
/// as `ssh-keygen -t ed25519 -N ''` writes it. Its `Debug` leaves the
/// private key out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeyPair {
    /// The private key file, unencrypted: `-----BEGIN OPENSSH PRIVATE
    /// KEY-----` to `-----END OPENSSH PRIVATE KEY-----`, at most
    /// [`HOST_KEY_PRIVATE_MAX`] bytes.
    pub private_openssh: String,
    /// The public key line, `ssh-ed25519 AAAA…[ comment]` (no newline),
    /// at most [`HOST_KEY_PUBLIC_MAX`] bytes.
    pub public: String,
}

/// First line of an OpenSSH private key file.
pub const OPENSSH_PRIVATE_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
/// Last line of an OpenSSH private key file.
pub const OPENSSH_PRIVATE_END: &str = "-----END OPENSSH PRIVATE KEY-----";

impl HostKeyPair {
    /// Whether the pair is shaped as it must be (the agent refuses it
    /// otherwise): sizes within the limits, an ed25519 public line of
    /// printable ASCII, a private key file of base64 lines between the
    /// OpenSSH markers. It does not check that the two halves belong
    /// together.
    pub fn check(&self) -> Result<(), String> {
        let public = &self.public;
        if public.len() > HOST_KEY_PUBLIC_MAX {
            return Err(format!(
                "host public key of {} bytes: at most {HOST_KEY_PUBLIC_MAX}",
                public.len()
            ));
        }
        let mut fields = public.split(' ');
        let key_ok = fields.next() == Some("ssh-ed25519")
            && fields.next().is_some_and(|k| {
                k.starts_with("AAAA") && k.bytes().all(|b| is_base64(b) || b == b'=')
            });
        if !key_ok || !public.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err("host public key is not one line `ssh-ed25519 AAAA…`".into());
        }
        let private = &self.private_openssh;
        if private.len() > HOST_KEY_PRIVATE_MAX {
            return Err(format!(
                "host private key of {} bytes: at most {HOST_KEY_PRIVATE_MAX}",
                private.len()
            ));
        }
        let lines: Vec<&str> = private
            .strip_suffix('\n')
            .unwrap_or(private)
            .split('\n')
            .collect();
        let shaped = lines.len() >= 3
            && lines.first() == Some(&OPENSSH_PRIVATE_BEGIN)
            && lines.last() == Some(&OPENSSH_PRIVATE_END)
            && lines[1..lines.len() - 1]
                .iter()
                .all(|l| !l.is_empty() && l.bytes().all(|b| is_base64(b) || b == b'='));
        if !shaped {
            return Err(format!(
                "host private key is not an OpenSSH private key file ({OPENSSH_PRIVATE_BEGIN} …)"
            ));
        }
        Ok(())
    }
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

impl std::fmt::Debug for HostKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeyPair")
            .field(
                "private_openssh",
                &format_args!("<{} bytes>", self.private_openssh.len()),
            )
            .field("public", &self.public)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorCode {
    /// The frame or its header could not be read.
    BadFrame,
    BadVersion,
    /// A well-formed request the agent refuses (bad path, unknown signal).
    BadRequest,
    NotFound,
    /// A file was asked for and the path is a directory (`ReadFile`).
    IsDirectory,
    /// A directory was asked for and the path is something else
    /// (`ReadTree`).
    NotDirectory,
    /// The request ran and failed (spawn, I/O); the message says why.
    Failed,
    /// A request `type` this agent does not know: it is older than the
    /// daemon (the daemon checks `capabilities` first; this is the answer
    /// when it did not).
    Unsupported,
    #[serde(other)]
    Unknown,
}

/// A snapshot of the guest. CPU times are cumulative (USER_HZ ticks since
/// boot, from `/proc/stat`); the daemon turns two snapshots into a usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestStats {
    pub uptime_s: f64,
    pub load: [f64; 3],
    pub cpu: CpuTimes,
    /// The RAM the guest has (pages present in its memory zones); the
    /// kernel's `MemTotal` is smaller by what it reserved at boot.
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub disks: Vec<DiskUsage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuTimes {
    /// Time spent doing something (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// Time idle (idle, iowait).
    pub idle: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DiskUsage {
    pub mount: String,
    pub device: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListeningPort {
    /// `tcp` or `udp`.
    pub proto: String,
    pub address: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

/// Why a frame could not be read. The decoder has already skipped past
/// it; reading goes on with the next frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Bytes that do not start a frame were skipped.
    Garbage { skipped: usize },
    /// A header or body longer than the limits.
    TooLarge { header: usize, body: usize },
    /// The header is not a message this side knows.
    BadHeader(String),
    /// The header is a request of a `type` this side does not know (the
    /// peer is newer), with an `id` to answer.
    UnknownRequest { id: u64, kind: String },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Garbage { skipped } => write!(f, "skipped {skipped} bytes that are not a frame"),
            Self::TooLarge { header, body } => write!(
                f,
                "frame too large (header {header} bytes, body {body} bytes; limits {MAX_HEADER_BYTES} and {MAX_BODY_BYTES})"
            ),
            Self::BadHeader(e) => write!(f, "unreadable frame header: {e}"),
            Self::UnknownRequest { id, kind } => {
                write!(f, "unknown request type {kind:?} (id {id})")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The bytes of one frame.
///
/// # Panics
/// Never for messages this crate defines; a body over [`MAX_BODY_BYTES`]
/// is the caller's bug and is truncated rather than sent (use
/// [`chunks`] to split data).
pub fn encode(frame: &Frame) -> Vec<u8> {
    // Messages hold only strings, numbers and vectors: always serialisable.
    let header = serde_json::to_vec(&frame.msg).unwrap_or_default();
    let body = &frame.body[..frame.body.len().min(MAX_BODY_BYTES)];
    let mut out = Vec::with_capacity(FRAME_PREFIX + header.len() + body.len());
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out
}

/// `data` in pieces of at most [`MAX_BODY_BYTES`] (none for empty data).
pub fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.chunks(MAX_BODY_BYTES)
}

/// Turns a byte stream back into frames, whatever arrives.
///
/// Bytes are appended to one buffer; a complete frame's body is copied out
/// once and the consumed prefix dropped, so a 1 MiB frame costs one copy,
/// not two.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame, an error about bytes just skipped, or `None` when
    /// more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        if self.buf.is_empty() {
            return None;
        }
        // Skip to the next magic (or keep a possible partial one at the end).
        let start = find_magic(&self.buf);
        if start > 0 {
            self.buf.drain(..start);
            return Some(Err(FrameError::Garbage { skipped: start }));
        }
        if self.buf.len() < FRAME_PREFIX {
            return None;
        }
        let header_len = read_u32(&self.buf, 4) as usize;
        let body_len = read_u32(&self.buf, 8) as usize;
        if header_len > MAX_HEADER_BYTES || body_len > MAX_BODY_BYTES || header_len == 0 {
            // Drop the magic so the search moves on to the next frame.
            self.buf.drain(..FRAME_MAGIC.len());
            return Some(Err(FrameError::TooLarge {
                header: header_len,
                body: body_len,
            }));
        }
        let total = FRAME_PREFIX + header_len + body_len;
        if self.buf.len() < total {
            return None;
        }
        let header = &self.buf[FRAME_PREFIX..FRAME_PREFIX + header_len];
        let parsed = serde_json::from_slice::<Message>(header);
        let result = match parsed {
            Ok(msg) => Ok(Frame {
                msg,
                body: self.buf[FRAME_PREFIX + header_len..total].to_vec(),
            }),
            Err(e) => Err(unknown_request(header).unwrap_or(FrameError::BadHeader(e.to_string()))),
        };
        self.buf.drain(..total);
        Some(result)
    }
}

/// A header that is a JSON object with a string `type` no [`Message`] has
/// and a numeric `id`: a newer peer's request, answerable by id.
fn unknown_request(header: &[u8]) -> Option<FrameError> {
    #[derive(Deserialize)]
    struct Tagged {
        #[serde(rename = "type")]
        kind: String,
        id: u64,
    }
    let t: Tagged = serde_json::from_slice(header).ok()?;
    if Message::KINDS.contains(&t.kind.as_str()) {
        return None;
    }
    Some(FrameError::UnknownRequest {
        id: t.id,
        kind: t.kind,
    })
}

/// Index of the first byte that may start a frame: a whole magic, or a
/// prefix of one at the very end.
fn find_magic(buf: &[u8]) -> usize {
    if let Some(i) = buf
        .windows(FRAME_MAGIC.len())
        .position(|w| w == FRAME_MAGIC)
    {
        return i;
    }
    // No whole magic: keep the longest tail that starts one.
    let n = buf.len();
    (n.saturating_sub(FRAME_MAGIC.len() - 1)..n)
        .find(|&i| FRAME_MAGIC.starts_with(&buf[i..]))
        .unwrap_or(n)
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vsock_port_is_read_off_the_kernel_command_line() {
        let line = format!("console=ttyS0 {} quiet", agent_vsock_cmdline(1024));
        assert_eq!(agent_vsock_from_cmdline(&line), Some(1024));
        assert_eq!(agent_vsock_from_cmdline("console=ttyS0"), None);
        assert_eq!(agent_vsock_from_cmdline("banger.agent=vsock:x"), None);
        assert_eq!(agent_vsock_from_cmdline("banger.agentx=vsock:5"), None);
        assert_eq!(
            agent_vsock_from_cmdline("banger.agent=vsock:5 banger.agent=vsock:6"),
            Some(6)
        );
    }

    fn all(d: &mut FrameDecoder) -> Vec<Result<Frame, FrameError>> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn frames_round_trip_split_anywhere() {
        let frames = vec![
            Frame::new(Message::Hello {
                protocol: AGENT_PROTOCOL_VERSION,
                version: "0.1.0".into(),
                capabilities: vec![capability::FREEZE.into()],
            }),
            Frame::with_body(Message::Stdout { id: 7 }, b"hello\n".to_vec()),
            Frame::new(Message::Exited {
                id: 7,
                code: Some(3),
                signal: None,
            }),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
        for split in 0..bytes.len() {
            let mut d = FrameDecoder::new();
            d.push(&bytes[..split]);
            let mut got: Vec<Frame> = all(&mut d).into_iter().map(Result::unwrap).collect();
            d.push(&bytes[split..]);
            got.extend(all(&mut d).into_iter().map(Result::unwrap));
            assert_eq!(got, frames, "split at {split}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn garbage_and_oversize_frames_are_skipped_and_reading_goes_on() {
        let good = encode(&Frame::new(Message::Health { id: 1 }));
        let mut bytes = b"noise BGA".to_vec();
        bytes.extend_from_slice(&FRAME_MAGIC);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        let mut bad_json = FRAME_MAGIC.to_vec();
        bad_json.extend_from_slice(&5u32.to_be_bytes());
        bad_json.extend_from_slice(&0u32.to_be_bytes());
        bad_json.extend_from_slice(b"{nope");
        bytes.extend_from_slice(&bad_json);
        bytes.extend_from_slice(&good);
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        let out = all(&mut d);
        assert!(matches!(out[0], Err(FrameError::Garbage { .. })), "{out:?}");
        assert!(
            out.iter()
                .any(|r| matches!(r, Err(FrameError::TooLarge { .. })))
        );
        assert!(
            out.iter()
                .any(|r| matches!(r, Err(FrameError::BadHeader(_))))
        );
        assert_eq!(
            out.last().unwrap().as_ref().unwrap().msg,
            Message::Health { id: 1 }
        );
    }

    #[test]
    fn random_bytes_never_panic_and_a_good_frame_after_them_is_read() {
        // A small deterministic fuzz loop (xorshift); the bounded-time
        // fuzz test in tests/agent_fuzz.rs runs longer.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let good = encode(&Frame::new(Message::Ports { id: 9 }));
        for round in 0..2000 {
            let mut d = FrameDecoder::new();
            let len = (round % 97) + 1;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push((x & 0xff) as u8);
            }
            if round % 5 == 0 {
                bytes.splice(0..0, FRAME_MAGIC);
            }
            d.push(&bytes);
            let _ = all(&mut d);
            // Appending a good frame never panics either (it may be taken
            // as the body of a frame the garbage started).
            let mut d2 = FrameDecoder::new();
            d2.push(&bytes);
            let _ = all(&mut d2);
            d2.push(&good);
            let _ = all(&mut d2);
        }
    }

    #[test]
    fn an_unknown_request_type_is_answerable_by_id() {
        let mut bytes = Vec::new();
        for header in [
            &br#"{"type":"teleport","id":12,"to":"mars"}"#[..],
            br#"{"type":"teleport"}"#,
            br#"{"type":"health","id":"x"}"#,
            br#"{"type":"health","id":3}"#,
        ] {
            bytes.extend_from_slice(&FRAME_MAGIC);
            bytes.extend_from_slice(&u32::try_from(header.len()).unwrap().to_be_bytes());
            bytes.extend_from_slice(&0u32.to_be_bytes());
            bytes.extend_from_slice(header);
        }
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        let out = all(&mut d);
        assert_eq!(
            out[0],
            Err(FrameError::UnknownRequest {
                id: 12,
                kind: "teleport".into()
            })
        );
        // No id, or a known type with bad fields: a plain bad header.
        assert!(matches!(out[1], Err(FrameError::BadHeader(_))), "{out:?}");
        assert!(matches!(out[2], Err(FrameError::BadHeader(_))), "{out:?}");
        assert_eq!(
            out[3].as_ref().unwrap().msg,
            Message::Health { id: 3 },
            "reading goes on"
        );
        assert_eq!(
            out[0].as_ref().unwrap_err().to_string(),
            "unknown request type \"teleport\" (id 12)"
        );
    }

    /// A key pair as `ssh-keygen -t ed25519 -N '' -C ''` writes it.
    fn key_pair() -> HostKeyPair {
        HostKeyPair {
            private_openssh: format!(
                "{OPENSSH_PRIVATE_BEGIN}\n{}\n{}==\n{OPENSSH_PRIVATE_END}\n",
                "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
                "QyNTUxOQAAACBXkXq1"
            ),
            public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFeRerU".into(),
        }
    }

    #[test]
    fn host_key_pairs_are_checked_and_debug_hides_the_private_key() {
        let good = key_pair();
        good.check().unwrap();
        let mut with_comment = good.clone();
        with_comment.public.push_str(" root@fork-1");
        with_comment.check().unwrap();
        let mut trailing_space = good.clone();
        trailing_space.public.push(' ');
        trailing_space.check().unwrap();

        let bad_public = [
            "ssh-rsa AAAAB3NzaC1yc2E",
            "ssh-ed25519",
            "ssh-ed25519 ",
            "ssh-ed25519 BBBB",
            "ssh-ed25519 AAAA!",
            "ssh-ed25519 AAAAC3Nz\nssh-ed25519 AAAAC3Nz",
            " ssh-ed25519 AAAAC3Nz",
            "ssh-ed25519 AAAAC3Nz \u{7f}",
        ];
        for public in bad_public {
            let pair = HostKeyPair {
                public: public.into(),
                ..good.clone()
            };
            let e = pair.check().unwrap_err();
            assert!(e.contains("ssh-ed25519 AAAA"), "{public:?}: {e}");
        }
        let huge = HostKeyPair {
            public: format!("ssh-ed25519 AAAA{}", "A".repeat(HOST_KEY_PUBLIC_MAX)),
            ..good.clone()
        };
        assert!(huge.check().unwrap_err().contains("at most 512"));

        let body = good
            .private_openssh
            .strip_prefix(OPENSSH_PRIVATE_BEGIN)
            .unwrap()
            .to_owned();
        let bad_private = [
            String::new(),
            body.clone(),
            format!("{OPENSSH_PRIVATE_BEGIN}\n{OPENSSH_PRIVATE_END}\n"),
            format!("-----BEGIN RSA PRIVATE KEY-----{body}"),
            format!("{OPENSSH_PRIVATE_BEGIN}\nAAAA\n\n{OPENSSH_PRIVATE_END}\n"),
            format!("{OPENSSH_PRIVATE_BEGIN}\nAA AA\n{OPENSSH_PRIVATE_END}\n"),
            format!("{OPENSSH_PRIVATE_BEGIN}\nAAAA\n{OPENSSH_PRIVATE_END}\nextra\n"),
            format!("{OPENSSH_PRIVATE_BEGIN}\r\nAAAA\r\n{OPENSSH_PRIVATE_END}\r\n"),
        ];
        for private in bad_private {
            let pair = HostKeyPair {
                private_openssh: private.clone(),
                ..good.clone()
            };
            let e = pair.check().unwrap_err();
            assert!(e.contains("not an OpenSSH private key"), "{private:?}: {e}");
        }
        let huge = HostKeyPair {
            private_openssh: format!(
                "{OPENSSH_PRIVATE_BEGIN}\n{}\n{OPENSSH_PRIVATE_END}\n",
                "A".repeat(HOST_KEY_PRIVATE_MAX)
            ),
            ..good.clone()
        };
        assert!(huge.check().unwrap_err().contains("at most 1024"));

        let shown = format!("{good:?}");
        assert!(!shown.contains("b3BlbnNzaC1rZXkt"), "{shown}");
        assert!(shown.contains("private_openssh: <"), "{shown}");
        assert!(shown.contains(&good.public), "{shown}");
    }

    #[test]
    fn ids_are_found() {
        assert_eq!(Message::Stdin { id: 4 }.id(), Some(4));
        assert_eq!(
            Message::Hello {
                protocol: 1,
                version: String::new(),
                capabilities: Vec::new(),
            }
            .id(),
            None
        );
    }
}
