//! VM, image, kernel and operation types of the `vm.*`, `image.*`,
//! `kernel.*` and `op.*` methods.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Accel, Backend, CheckStatus, DiskStrategy, Egress, ErrorBody, NetworkMode, OpKind, OpState,
    PlannedAccel, PublishSpec, VmState, WaitFor,
};

/// `vm.create.begin` params. Absent fields take the daemon's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreateParams {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_bytes: Option<u64>,
    /// `HOST:GUEST` or `HOST:GUEST/udp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PublishSpec>,
    /// Default bridged when banger-helper answers, user mode otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    /// What the guest may reach (docs/security.md); default from the
    /// daemon's config (`internet` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    /// Start the VM once created (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
    /// Continue from this snapshot (memory, processes, disks) instead of
    /// booting; image, kernel and shape are the snapshot's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Boot cold even when the image has a warm template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cold: bool,
    /// What this start and every later one waits for (docs/vms.md);
    /// default: what the image supports (its agent for an image that
    /// boots banger's init, else the agent if any and SSH). `none` boots
    /// cold (no warm template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<WaitFor>,
    /// The VMM (`--vmm`); default: Firecracker when it is installed, the
    /// network is bridged and its KVM probe boots the VM's kernel, else
    /// QEMU. The create's stages say which and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<Backend>,
    /// A host project to put into the guest once it is up (a stage of the
    /// create; a failure deletes the VM). Needs `start` and the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::workspace::WorkspaceSpec>,
}

/// Params naming one VM (by name or id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRef {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmKillParams {
    pub name: String,
    /// Signal name (`TERM`, `KILL`, `SIGINT`...); default `KILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// `vm.delete` params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDeleteParams {
    pub name: String,
    /// Delete a running (or paused) VM too, killing it first; without it
    /// such a VM is refused with a `conflict` error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmEditParams {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_bytes: Option<u64>,
    /// The new set of published ports (`HOST:GUEST` or `HOST:GUEST/udp`),
    /// replacing the old one; an empty list publishes none. Absent: kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<PublishSpec>>,
    /// A new egress policy; applied at once to a running bridged VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
}

/// What `vm.delete` answers: the deleted VM's name and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmDeleted {
    pub deleted: String,
    pub id: String,
}

/// What `image.delete` and `kernel.delete` answer: the deleted name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// What `vm.show` and `vm.list` report about a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmView {
    pub id: String,
    pub name: String,
    pub state: VmState,
    pub image: String,
    pub kernel: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_size_bytes: u64,
    pub network: NetworkMode,
    pub egress: Egress,
    /// What its starts wait for once the VMM runs.
    pub wait_for: WaitFor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Why that backend: `--vmm firecracker`, `firecracker is not
    /// installed`, ... (absent for VMs made before banger recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_reason: Option<String>,
    /// Only while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<Accel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_strategy: Option<DiskStrategy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PublishSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Only while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Loopback port forwarded to the guest's SSH, only while running in
    /// user mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// The guest's address on banger's bridge (bridged VMs; kept while
    /// stopped, so `NAME.vm` does not move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The TAP device of a running bridged VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    pub vm_dir: String,
    pub console_log: String,
    pub created_at_ms: i64,
    /// A running VM whose guest agent is reachable (`vm exec`, `vm cp`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
    /// The guest runs no SSH server (its image, pulled from a registry,
    /// boots with banger's init): `vm ssh` opens its shell through the
    /// agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent_shell: bool,
    /// The image's services (`image build --preset`) and where each is
    /// reached from the host: a published loopback port in user mode,
    /// `NAME.vm:PORT` when bridged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<VmService>,
}

/// A guest service of a VM and where the host reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmService {
    pub name: String,
    /// Its port in the guest.
    pub port: u16,
    /// `HOST:PORT` to reach it from the host (none while nothing forwards
    /// it: a user-mode VM that does not publish the port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A service an image declares: a program listening on `port`, started
/// at boot and waited for by every start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageService {
    pub name: String,
    pub port: u16,
    pub command: String,
    pub workdir: String,
}

/// A named image recipe with its own packages, setup and services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImagePreset {
    /// opencode, a coding-agent server, on guest port 4096 in /root/work.
    Opencode,
}

/// How to reach a VM over SSH; the CLI runs the `ssh` client with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SshInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: String,
    pub known_hosts_file: String,
    /// Pins are kept under this alias, not under `[host]:port`, so a port
    /// reused by another VM never trips over an old pin.
    pub host_key_alias: String,
}

impl SshInfo {
    /// The `ssh` options that use banger's key, pins and port, ending with
    /// `user@host`; append `--` and a command to run one. Pins are not
    /// hashed, so `ssh-keygen -R NAME.vm` and humans can find them.
    pub fn client_args(&self) -> Vec<String> {
        let opt = |o: String| ["-o".to_owned(), o];
        let mut args = vec![
            "-i".to_owned(),
            self.identity_file.clone(),
            "-p".to_owned(),
            self.port.to_string(),
        ];
        for o in [
            "IdentitiesOnly=yes".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts_file),
            "StrictHostKeyChecking=accept-new".to_owned(),
            "HashKnownHosts=no".to_owned(),
            format!("HostKeyAlias={}", self.host_key_alias),
            "LogLevel=ERROR".to_owned(),
        ] {
            args.extend(opt(o));
        }
        args.push(format!("{}@{}", self.user, self.host));
        args
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageView {
    pub id: String,
    pub name: String,
    pub source: String,
    pub rootfs: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_seed: Option<String>,
    pub size_bytes: u64,
    pub managed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A managed image built from an older recipe.
    pub stale: bool,
    /// Why it is stale: what differs from how banger would build it now
    /// ("package set changed, new agent"), or that a rebuild replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
    /// The id of the rebuild that replaced this image (then named
    /// `NAME@ID`, kept while VMs or snapshots use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    pub created_at_ms: i64,
    /// Where the image came from (built, pulled, promoted).
    #[serde(default)]
    pub origin: ImageOrigin,
    /// A pulled image's config: how its image says to run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ImageConfig>,
    /// The services it declares (a preset's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ImageService>,
}

/// Where an image came from. On the wire an object tagged by `kind`:
/// `{"kind":"built"}`, `{"kind":"pulled","reference":"...","digest":"sha256:..."}`,
/// `{"kind":"promoted","vm":"dev"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageOrigin {
    /// Built by banger (`image build`, or the default image on first use).
    #[default]
    Built,
    /// Pulled from a registry (`image pull`).
    Pulled {
        /// The reference as normalised (`docker.io/library/python:3.12-slim`).
        reference: String,
        /// The digest of the platform's image manifest (`sha256:...`).
        digest: String,
    },
    /// Made from a stopped VM's disks (`image promote`).
    Promoted {
        /// The VM's name at the time.
        vm: String,
    },
}

impl ImageOrigin {
    /// `built`, `pulled` or `promoted`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Built => "built",
            Self::Pulled { .. } => "pulled",
            Self::Promoted { .. } => "promoted",
        }
    }
}

/// What a pulled image's config says about running it (the OCI image
/// config's `Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`,
/// `ExposedPorts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `USER`, `UID`, `USER:GROUP` or `UID:GID`, as the image says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<ImagePort>,
}

/// A port an image exposes (`8080/tcp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePort {
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// `image.pull.begin` params.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePullParams {
    /// As Docker writes it: `python:3.12-slim`, `host:port/repo:tag`,
    /// `repo@sha256:HEX`.
    pub reference: String,
    /// The image's name; default: one derived from the reference
    /// (`python-3-12-slim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `OS/ARCH[/VARIANT]` to pick from an image index; default: the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Plain HTTP to a registry that is not on loopback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// With `password`: these credentials instead of Docker's config.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Pull only if no image of this name was pulled from this reference;
    /// if one was, the operation ends at once with it (`vm run --image
    /// REF`). An image of the name from elsewhere is still a conflict.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_missing: bool,
}

impl std::fmt::Debug for ImagePullParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePullParams")
            .field("reference", &self.reference)
            .field("name", &self.name)
            .field("platform", &self.platform)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("if_missing", &self.if_missing)
            .finish()
    }
}

/// `image.cache.prune` params.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCachePruneParams {
    /// Only report what a prune would free.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// What `image.cache.prune` freed (or, with `dry_run`, would free).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageCachePruneResult {
    /// The blob cache directory.
    pub dir: String,
    /// Complete blobs.
    pub blobs: u64,
    /// Bytes of every file (blobs and leftovers of interrupted downloads).
    pub bytes: u64,
    pub dry_run: bool,
}

/// `image.promote` params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePromoteParams {
    /// The stopped VM whose root disk becomes the image.
    pub vm: String,
    /// The new image's name.
    pub name: String,
    /// The VM's work disk becomes the image's work seed (default: the
    /// VM's image's seed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_work: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Root filesystem size; default: what the files need plus headroom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// A preset: its packages, setup and services go in too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ImagePreset>,
    /// Services of its own, baked in as units (after the preset's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ImageService>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KernelView {
    pub name: String,
    pub description: String,
    /// Pulled (or imported) and its kernel file is there.
    pub present: bool,
    pub default: bool,
    /// Where it comes from: the catalog (pulled, or to be pulled) or an
    /// import.
    pub origin: KernelOrigin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// The kernel's modules tree, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<String>,
}

/// Where a kernel came from. On the wire an object tagged by `kind`:
/// `{"kind":"catalog","package":"linux-image-cloud-amd64"}`,
/// `{"kind":"imported","path":"/home/u/vmlinux"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelOrigin {
    /// banger's catalog (`kernel pull`, or the default kernel on first
    /// use): the Debian package it is pulled from.
    Catalog { package: String },
    /// Copied into banger's kernel store by `kernel import`; catalog
    /// pulls never touch it.
    Imported {
        /// The kernel file it was copied from (absolute).
        path: String,
    },
}

impl KernelOrigin {
    /// `catalog` or `imported`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Catalog { .. } => "catalog",
            Self::Imported { .. } => "imported",
        }
    }
}

impl std::fmt::Display for KernelOrigin {
    /// `catalog (linux-image-cloud-amd64)`, `imported from /home/u/vmlinux`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Catalog { package } => write!(f, "catalog ({package})"),
            Self::Imported { path } => write!(f, "imported from {path}"),
        }
    }
}

/// `kernel.import` params: files on the daemon's host, as absolute paths
/// (the CLI makes relative ones absolute). They are copied, so the
/// originals may go afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelImportParams {
    /// The new kernel's name (as other kernel names: `[a-z0-9-]`, 1 to 63).
    pub name: String,
    /// The kernel: a bzImage, or an uncompressed ELF `vmlinux`.
    pub kernel: String,
    /// An initramfs to boot it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// A directory of its modules (`/lib/modules/VERSION`), kept beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<String>,
}

/// Params naming one kernel or image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    pub name: String,
}

/// Params of `kernel.pull.begin`; the default catalog entry when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelPullParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Params naming one asynchronous operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpRef {
    pub op_id: String,
}

/// `op.status` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpStatusParams {
    pub op_id: String,
    /// Answer when the operation changes (a stage starts, or it ends), or
    /// after this many milliseconds (at most [`OP_STATUS_MAX_WAIT_MS`]),
    /// instead of at once: a client follows an operation without polling
    /// at a fixed rate. A finished operation is answered at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u32>,
}

/// The longest `op.status` wait.
pub const OP_STATUS_MAX_WAIT_MS: u32 = 10_000;

/// An asynchronous operation (`vm.create`, `image.build`, `kernel.pull`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpView {
    pub op_id: String,
    pub kind: OpKind,
    /// What it works on (a VM, image or kernel name).
    pub target: String,
    pub state: OpState,
    pub stages: Vec<StageView>,
    /// Why it failed or was cancelled: the error code and message a
    /// synchronous request would have answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Once succeeded: a VM for `vm.create` and `vm.restore`, a snapshot
    /// for `vm.snapshot` and `image.warm`, the forks (`VmForked`) for
    /// `vm.fork`, an image for `image.build` and `image.pull`, a kernel for
    /// `kernel.pull`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    pub started_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
}

/// One stage of an operation; `duration_ms` is set once it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageView {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// 0 for the operation's own stages; a stage of depth N+1 is a part
    /// of the closest stage of depth N before it (an image build's steps
    /// within a create), whose duration covers its parts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
    /// How far a running stage that moves bytes (a download, a copy) has
    /// got, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<StageProgress>,
}

/// Bytes a stage has moved so far, and how many it will move when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageProgress {
    pub done_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `doctor` params.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DoctorParams {
    /// Boot the default kernel under KVM to test it.
    #[serde(default)]
    pub probe: bool,
}

/// `doctor`'s report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DoctorReport {
    pub checks: Vec<DoctorCheck>,
    /// The backend and accelerator `vm create` will use, and why.
    pub backend: Backend,
    pub accel: PlannedAccel,
    pub accel_reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DoctorCheck {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// `vm.stats`: a fresh sample from the guest agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VmStats {
    pub name: String,
    pub uptime_s: f64,
    pub load: [f64; 3],
    /// Share of one vCPU-second busy per second since the previous sample
    /// (0..=100 per vCPU); absent for the first sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub disks: Vec<crate::agent::DiskUsage>,
    pub sampled_at_ms: i64,
}

/// `vm.exec.begin` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBeginParams {
    pub name: String,
    /// The program and its arguments; empty: the image's entrypoint and
    /// cmd (images pulled from a registry only).
    pub argv: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// The working directory (absolute; default: the agent's, `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecBegun {
    pub exec_id: String,
    pub pid: u32,
}

/// `vm.exec.io` params: input for the process, then a wait (up to
/// `wait_ms`, default 500) for output or its exit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecIoParams {
    pub exec_id: String,
    /// Base64 bytes for stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default)]
    pub stdin_eof: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u32>,
}

/// Output since the previous `vm.exec.io` (base64), and the exit once the
/// process ended and all its output was delivered (`done`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecIoResult {
    /// With `stdin` in the call: how many of its bytes were taken. Less
    /// than all when the process had not read what came before within
    /// about 2 s (flow control): send the rest again, and `stdin_eof`
    /// only with the last of it (it was ignored here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_accepted: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    #[serde(default)]
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Bytes of stdout dropped since the previous call: the daemon holds
    /// at most 16 MiB of a stream for a client that reads more slowly
    /// than the command writes; what comes beyond is dropped, and said.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub stdout_dropped: u64,
    /// The same for stderr.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub stderr_dropped: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// `vm.cp` params: one side is the VM's `guest_path`, the other a host
/// path (absolute; the CLI resolves it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpParams {
    pub name: String,
    /// `true`: host → guest; `false`: guest → host.
    pub to_guest: bool,
    pub host_path: String,
    pub guest_path: String,
    /// Copy a directory and everything in it (like `cp -r`); without it a
    /// directory source is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CpResult {
    /// File contents copied (for a directory: of all its files).
    pub bytes: u64,
    /// The file's mode (for a directory: the top directory's).
    pub mode: u32,
    /// Where the file ended up (a directory destination gets the source's name).
    pub destination: String,
    /// A directory copy: how many entries (directories, files, symlinks)
    /// were copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// A directory copy: entries left out (devices, FIFOs; sockets too
    /// when copying from the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    /// A copy from the guest: how many files and directories arrived
    /// without the setuid, setgid or sticky bit they had in the guest (a
    /// guest never sets those on the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripped: Option<u64>,
    /// The first of them (at most 16), as host paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stripped_paths: Vec<String>,
}
