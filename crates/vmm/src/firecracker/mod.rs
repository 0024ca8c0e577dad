//! The Firecracker backend: one `firecracker` process per VM, configured
//! and controlled over its REST API on a Unix socket in the VM directory
//! ([`api`] types every request, [`client`] sends them with hyper).
//!
//! **Launch.** `firecracker --api-sock VM_DIR/firecracker.sock --id
//! banger-VMID` is spawned directly in a session of its own (it outlives the
//! daemon, like QEMU), in the VM directory, with stdin on `/dev/null`, its
//! stdout (the guest's serial console) appended to the console log and its
//! stderr to `vmm.log` after a header line naming the command. Once `GET /`
//! answers, the VM is configured pre-boot (machine config, boot source, drives with the root drive first, TAP network interfaces, the
//! vsock device for the agent) and started with `InstanceStart`. Any
//! refusal carries Firecracker's `fault_message`; on every failure the
//! process is killed and reaped and its sockets removed.
//!
//! **Logs.** Firecracker's logger writes its file from the start rather
//! than appending (it would overwrite `vmm.log`'s header lines), so its own
//! log goes to `firecracker.log` in the VM directory (`--log-path`, so that
//! its first lines do not land on stdout, the console), recreated per
//! launch; errors quote both files' tails. Killed, Firecracker leaves its
//! sockets behind: [`Vmm::cleanup`] removes them.
//!
//! **Paths.** Drives, the vsock socket and the log inside the VM directory
//! are given relative to it (Firecracker's working directory). A snapshot
//! records them as given, so a VM restored in another directory opens its
//! own disk files of the same names. Firecracker has no option to move a
//! drive at restore; relative paths are how this backend does it.
//!
//! **Snapshots.** `pause`/`resume` are `PATCH /vm`. `save_state` is `PUT
//! /snapshot/create` (Full) on a paused VM, the memory going to
//! [`memory_file_of`] the state file; `restore` is a fresh process and `PUT
//! /snapshot/load` with that memory file (mapped privately, so many VMs can
//! start from it), new TAP names as `network_overrides` and the vsock
//! socket as `vsock_override`. Firecracker's guest memory is anonymous:
//! [`RamSave::KeptInSharedFile`] is not supported.
//!
//! **Ownership.** A pid is taken as ours only if `/proc/PID/exe` names a
//! Firecracker binary (its file name contains `firecracker`) and its argv
//! carries `--api-sock CONTROL_SOCKET` (and, for [`Vmm::is_running`], `--id
//! banger-VMID`).
//!
//! **Limits.** KVM only (no emulation), raw disks only, TAP networking only
//! (no user-mode network), no jailer yet.

pub mod api;
pub mod client;
mod probe;

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use self::api::{
    ActionType, BootSource, Drive, InstanceActionInfo, InstanceInfo, InstanceState,
    MachineConfiguration, MemoryBackend, MemoryBackendType, NetworkInterface, NetworkOverride,
    Request, SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmState, VmStateValue, Vsock,
    VsockOverride,
};
use self::client::ApiClient;
use crate::error::VmmError;
use crate::proc;
use crate::qemu::{MAX_SOCKET_PATH, check_id, log_tail};
use crate::spec::{
    Accel, AgentChannel, BackendKind, DiskFormat, MemoryBacking, NetBackend, RamSave, SaveReport,
    Signal, VmHandle, VmRunState, VmSpec, VmmBuild, VmmExit,
};
use crate::{Vmm, spawn};

/// The binary's usual name (on `PATH`).
pub const FIRECRACKER_BINARY_NAME: &str = "firecracker";

/// The guest's vsock context id. Hybrid vsock is private to one VM's
/// socket, so every VM can have the same.
pub const GUEST_CID: u32 = 3;

/// The files Firecracker keeps in a VM's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerFiles {
    /// `firecracker.sock`: the API socket, the handle's `control_socket`.
    pub api_socket: PathBuf,
    /// `vmm.log`: launch headers and Firecracker's stderr, appended.
    pub vmm_log: PathBuf,
    /// `firecracker.log`: Firecracker's own log of the current launch.
    pub firecracker_log: PathBuf,
    /// `vsock.sock`: the host end of the guest's vsock (hybrid vsock).
    pub vsock_socket: PathBuf,
}

impl FirecrackerFiles {
    pub fn in_dir(vm_dir: &Path) -> Self {
        FirecrackerFiles {
            api_socket: vm_dir.join("firecracker.sock"),
            vmm_log: vm_dir.join("vmm.log"),
            firecracker_log: vm_dir.join("firecracker.log"),
            vsock_socket: vm_dir.join("vsock.sock"),
        }
    }
}

/// Where [`Vmm::save_state`] puts the guest memory of the state file
/// `state` (`STATE.mem`), and where [`Vmm::restore`] finds it unless the
/// spec's memory names another file.
pub fn memory_file_of(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".mem");
    PathBuf::from(name)
}

/// The Firecracker implementation of [`Vmm`].
#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    pub binary: PathBuf,
    /// How long `launch` and `restore` wait for the API to answer.
    pub start_timeout: Duration,
    /// Bounds each configuration and control call.
    pub api_timeout: Duration,
    /// Bounds one snapshot create or load (the memory is written or mapped).
    pub snapshot_timeout: Duration,
}

impl FirecrackerVmm {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        FirecrackerVmm {
            binary: binary.into(),
            start_timeout: Duration::from_secs(10),
            api_timeout: Duration::from_secs(5),
            snapshot_timeout: Duration::from_secs(120),
        }
    }

    /// The Firecracker binary to use: `BANGER_FIRECRACKER_BIN`, else
    /// `configured`, else `firecracker` on `PATH`; `None` when there is none.
    pub fn find(configured: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("BANGER_FIRECRACKER_BIN").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        if let Some(path) = configured {
            return Some(path.to_path_buf());
        }
        crate::probe::find_on_path(FIRECRACKER_BINARY_NAME)
    }

    /// `firecracker --version`'s version (`1.17.0-dev` of `Firecracker
    /// v1.17.0-dev`).
    pub fn version(&self) -> Result<String, VmmError> {
        let out = Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| VmmError::Exec {
                binary: self.binary.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or_default().trim();
        match first.strip_prefix("Firecracker v") {
            Some(version) if out.status.success() && !version.is_empty() => Ok(version.to_owned()),
            _ => Err(VmmError::BadVersion {
                binary: self.binary.clone(),
                output: text.into_owned(),
            }),
        }
    }

    fn api(&self, handle: &VmHandle) -> Result<ApiClient, VmmError> {
        ApiClient::new(&handle.control_socket).map_err(|source| VmmError::FirecrackerApi {
            log: vm_log(handle),
            source,
        })
    }

    /// Sends one control call to a running VM of ours.
    fn control(&self, handle: &VmHandle, request: &Request) -> Result<(), VmmError> {
        self.require_ours(handle)?;
        self.api(handle)?
            .send(request, self.api_timeout)
            .map(drop)
            .map_err(|source| VmmError::FirecrackerApi {
                log: vm_log(handle),
                source,
            })
    }

    fn describe(&self, handle: &VmHandle) -> Result<InstanceInfo, VmmError> {
        self.require_ours(handle)?;
        self.api(handle)?
            .get(&Request::DescribeInstance, self.api_timeout)
            .map_err(|source| VmmError::FirecrackerApi {
                log: vm_log(handle),
                source,
            })
    }

    /// The process is alive, is a Firecracker, and its argv carries this
    /// handle's API socket (and, given `vm_id`, that VM's `--id`).
    fn owns(&self, handle: &VmHandle, vm_id: Option<&str>) -> bool {
        if handle.backend != BackendKind::Firecracker {
            return false;
        }
        let pid = handle.pid;
        if !proc::is_alive(pid) || !proc::exe_name_contains(pid, "firecracker") {
            return false;
        }
        let Some(argv) = proc::cmdline(pid) else {
            return false;
        };
        proc::has_option(&argv, "--api-sock", handle.control_socket.as_os_str())
            && vm_id.is_none_or(|id| proc::has_option(&argv, "--id", instance_id(id).as_ref()))
    }

    fn require_ours(&self, handle: &VmHandle) -> Result<(), VmmError> {
        if self.owns(handle, None) {
            Ok(())
        } else {
            Err(VmmError::NotRunning { pid: handle.pid })
        }
    }

    /// Spawns Firecracker for `spec` and waits for its API to answer.
    fn start(&self, spec: &VmSpec) -> Result<Started, VmmError> {
        let files = FirecrackerFiles::in_dir(&spec.vm_dir);
        fs::create_dir_all(&spec.vm_dir).map_err(io_err("create directory", &spec.vm_dir))?;
        if let Some(parent) = spec
            .console_log
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
        for stale in [
            &files.api_socket,
            &files.vsock_socket,
            &files.firecracker_log,
        ] {
            remove_if_there(stale)?;
        }
        // The log from the first line on (a `PUT /logger` would leave the
        // lines before it on stdout, the console).
        let args: Vec<OsString> = vec![
            "--api-sock".into(),
            files.api_socket.clone().into(),
            "--id".into(),
            instance_id(&spec.vm_id).into(),
            "--log-path".into(),
            "firecracker.log".into(),
            "--level".into(),
            "Info".into(),
            "--show-level".into(),
        ];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.vmm_log)
            .map_err(io_err("open", &files.vmm_log))?;
        spawn::write_launch_header(&mut log, &self.binary, spec, &args)
            .map_err(io_err("write", &files.vmm_log))?;
        let log_start = log
            .metadata()
            .map_err(io_err("stat", &files.vmm_log))?
            .len();
        let console = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.console_log)
            .map_err(io_err("open", &spec.console_log))?;
        let mut command = Command::new(&self.binary);
        command
            .args(&args)
            .current_dir(&spec.vm_dir)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(log);
        spawn::in_own_session(&mut command);
        let child = command.spawn().map_err(|source| VmmError::Exec {
            binary: self.binary.clone(),
            source,
        })?;
        let mut started = Started {
            child,
            armed: true,
            files,
            log_start,
            console: spec.console_log.clone(),
        };
        self.wait_api(&mut started)?;
        Ok(started)
    }

    /// Polls until `GET /` answers, Firecracker exits, or the start
    /// timeout passes (then it is killed).
    fn wait_api(&self, started: &mut Started) -> Result<(), VmmError> {
        let begun = Instant::now();
        let deadline = begun + self.start_timeout;
        let client = ApiClient::new(&started.files.api_socket).map_err(|source| {
            VmmError::FirecrackerApi {
                log: started.files.vmm_log.clone(),
                source,
            }
        })?;
        let mut last = String::from("the api socket never appeared");
        loop {
            if let Ok(Some(status)) = started.child.try_wait() {
                let tail = started.tail();
                return Err(VmmError::StartupExit {
                    binary: self.binary.clone(),
                    status: status.to_string(),
                    tail: if tail.is_empty() {
                        "it printed nothing".into()
                    } else {
                        tail
                    },
                    log: started.files.vmm_log.clone(),
                    console: started.console.clone(),
                });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = remaining.clamp(Duration::from_millis(100), Duration::from_secs(2));
            match client.get::<InstanceInfo>(&Request::DescribeInstance, attempt) {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_listening() => {}
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                let tail = started.kill_for_tail();
                return Err(VmmError::StartupTimeout {
                    binary: self.binary.clone(),
                    secs: begun.elapsed().as_secs_f64(),
                    tail: if tail.is_empty() { last } else { tail },
                    log: started.files.vmm_log.clone(),
                    console: started.console.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `requests` in order to the Firecracker of `started`; the first
    /// refusal ends it, with Firecracker's reason and its log's tail.
    fn configure(
        &self,
        started: &mut Started,
        requests: &[(Request, Duration)],
    ) -> Result<(), VmmError> {
        let client = ApiClient::new(&started.files.api_socket).map_err(|source| {
            VmmError::FirecrackerApi {
                log: started.files.vmm_log.clone(),
                source,
            }
        })?;
        for (request, timeout) in requests {
            if let Err(source) = client.send(request, *timeout) {
                tracing::debug!(request = %request.describe(), error = %source, "firecracker refused");
                started.disarm_and_kill();
                return Err(VmmError::FirecrackerApi {
                    log: started.files.vmm_log.clone(),
                    source,
                });
            }
        }
        Ok(())
    }
}

impl Vmm for FirecrackerVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn launch(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        let begun = Instant::now();
        check_spec(spec)?;
        if spec.memory != MemoryBacking::Anonymous {
            return Err(VmmError::InvalidSpec(
                "firecracker's guest memory is anonymous: a memory file is only for a restore"
                    .into(),
            ));
        }
        check_files(spec)?;
        let mut started = self.start(spec)?;
        let mut requests = config_requests(spec);
        requests.push(Request::Action(InstanceActionInfo {
            action_type: ActionType::InstanceStart,
        }));
        let timed: Vec<_> = requests
            .into_iter()
            .map(|r| (r, self.api_timeout))
            .collect();
        self.configure(&mut started, &timed)?;
        let handle = started.into_handle();
        tracing::debug!(
            vm_id = %spec.vm_id,
            name = %spec.name,
            pid = handle.pid,
            elapsed_ms = begun.elapsed().as_millis() as u64,
            "firecracker started the guest"
        );
        Ok(handle)
    }

    fn request_shutdown(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.control(
            handle,
            &Request::Action(InstanceActionInfo {
                action_type: ActionType::SendCtrlAltDel,
            }),
        )
    }

    fn kill(&self, handle: &VmHandle, signal: Signal) -> Result<(), VmmError> {
        self.require_ours(handle)?;
        proc::signal_vmm(handle.pid, signal)
    }

    fn is_running(&self, handle: &VmHandle, vm_id: &str) -> bool {
        self.owns(handle, Some(vm_id))
    }

    fn wait_exit(&self, handle: &VmHandle, timeout: Duration) -> Result<bool, VmmError> {
        Ok(proc::wait_gone(
            handle.pid,
            self.owns(handle, None),
            timeout,
        ))
    }

    fn take_exit(&self, handle: &VmHandle) -> Option<VmmExit> {
        if proc::is_alive(handle.pid) && self.owns(handle, None) {
            return None;
        }
        spawn::exits::take(handle.pid, Duration::from_secs(1))
    }

    fn status(&self, handle: &VmHandle) -> Result<VmRunState, VmmError> {
        Ok(match self.describe(handle)?.state {
            InstanceState::NotStarted => VmRunState::Prelaunch,
            InstanceState::Running => VmRunState::Running,
            InstanceState::Paused => VmRunState::Paused,
        })
    }

    fn pause(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.control(
            handle,
            &Request::PatchVm(VmState {
                state: VmStateValue::Paused,
            }),
        )
    }

    fn resume(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.control(
            handle,
            &Request::PatchVm(VmState {
                state: VmStateValue::Resumed,
            }),
        )
    }

    fn save_state(
        &self,
        handle: &VmHandle,
        dest: &Path,
        ram: RamSave,
    ) -> Result<SaveReport, VmmError> {
        if ram == RamSave::KeptInSharedFile {
            return Err(VmmError::NotSupported {
                backend: BackendKind::Firecracker,
                call: "keep the ram in a shared file (its guest memory is anonymous)",
            });
        }
        if !dest.is_absolute() {
            return Err(VmmError::StatePath {
                path: dest.to_path_buf(),
                reason: "not an absolute path",
            });
        }
        let state = self.status(handle)?;
        if state != VmRunState::Paused {
            return Err(VmmError::NotPaused { state });
        }
        let mem = memory_file_of(dest);
        remove_if_there(dest)?;
        remove_if_there(&mem)?;
        let begun = Instant::now();
        let sent = self.api(handle)?.send(
            &Request::CreateSnapshot(SnapshotCreateParams {
                snapshot_type: Some(SnapshotType::Full),
                snapshot_path: dest.to_path_buf(),
                mem_file_path: mem.clone(),
            }),
            self.snapshot_timeout,
        );
        if let Err(source) = sent {
            let _ = fs::remove_file(dest);
            let _ = fs::remove_file(&mem);
            return Err(VmmError::FirecrackerApi {
                log: vm_log(handle),
                source,
            });
        }
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).map_err(io_err("stat", p));
        Ok(SaveReport {
            bytes: size(dest)? + size(&mem)?,
            elapsed: begun.elapsed(),
        })
    }

    fn restore(
        &self,
        spec: &VmSpec,
        state: &Path,
        ram: RamSave,
        resume: bool,
    ) -> Result<VmHandle, VmmError> {
        if ram == RamSave::KeptInSharedFile {
            return Err(VmmError::NotSupported {
                backend: BackendKind::Firecracker,
                call: "restore a state whose ram was kept in a shared file",
            });
        }
        check_spec(spec)?;
        let mem = match &spec.memory {
            MemoryBacking::Anonymous => memory_file_of(state),
            MemoryBacking::File {
                path,
                shared: false,
            } => path.clone(),
            MemoryBacking::File { shared: true, .. } => {
                return Err(VmmError::InvalidSpec(
                    "firecracker maps a restored vm's memory file privately (shared: false)".into(),
                ));
            }
        };
        check_files(spec)?;
        for (what, path) in [("state file", state), ("memory file", mem.as_path())] {
            if !path.is_file() {
                return Err(VmmError::MissingFile {
                    what: what.into(),
                    path: path.to_path_buf(),
                });
            }
        }
        let begun = Instant::now();
        let mut started = self.start(spec)?;
        let load = Request::LoadSnapshot(SnapshotLoadParams {
            snapshot_path: absolute(state),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: absolute(&mem),
            },
            resume_vm: Some(resume),
            network_overrides: spec
                .net
                .iter()
                .filter_map(|nic| match &nic.backend {
                    NetBackend::Tap { tap_name } => Some(NetworkOverride {
                        iface_id: nic.id.clone(),
                        host_dev_name: tap_name.clone(),
                    }),
                    _ => None,
                })
                .collect(),
            vsock_override: spec.agent.as_ref().map(|_| VsockOverride {
                uds_path: relative_to(&spec.vm_dir, &started.files.vsock_socket),
            }),
        });
        self.configure(&mut started, &[(load, self.snapshot_timeout)])?;
        let handle = started.into_handle();
        tracing::debug!(
            vm_id = %spec.vm_id,
            pid = handle.pid,
            resume,
            elapsed_ms = begun.elapsed().as_millis() as u64,
            "firecracker loaded the snapshot"
        );
        Ok(handle)
    }

    /// Firecracker removes neither socket when it is killed.
    fn cleanup(&self, handle: &VmHandle) {
        if let Some(dir) = handle.control_socket.parent() {
            let files = FirecrackerFiles::in_dir(dir);
            let _ = fs::remove_file(&files.api_socket);
            let _ = fs::remove_file(&files.vsock_socket);
        }
    }

    fn build(&self) -> Result<VmmBuild, VmmError> {
        Ok(VmmBuild {
            backend: BackendKind::Firecracker,
            version: self.version()?,
            machine: "firecracker".into(),
        })
    }
}

/// The `--id` of a VM's Firecracker (alphanumerics and `-`, at most 64).
fn instance_id(vm_id: &str) -> String {
    let id: String = vm_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64 - "banger-".len())
        .collect();
    format!("banger-{id}")
}

/// `path` relative to `dir` when it is inside it (see the module docs).
fn relative_to(dir: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What this backend cannot run.
fn check_spec(spec: &VmSpec) -> Result<(), VmmError> {
    check_id("vm id", &spec.vm_id)?;
    if spec.accel != Accel::Kvm {
        return Err(VmmError::InvalidSpec(
            "firecracker runs guests only under kvm; use the qemu backend for tcg".into(),
        ));
    }
    if spec.join_namespaces_of.is_some() {
        return Err(VmmError::InvalidSpec(
            "firecracker has no user-mode network to join".into(),
        ));
    }
    if spec.machine.vcpus == 0 || spec.machine.memory_mib == 0 {
        return Err(VmmError::InvalidSpec(
            "vcpus and memory must be positive".into(),
        ));
    }
    let socket = FirecrackerFiles::in_dir(&spec.vm_dir).api_socket;
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(VmmError::InvalidSpec(format!(
            "vm dir {} is too long for a unix socket path ({} bytes, at most {MAX_SOCKET_PATH})",
            spec.vm_dir.display(),
            socket.as_os_str().len()
        )));
    }
    if spec.drives.iter().filter(|d| d.is_root).count() > 1 {
        return Err(VmmError::InvalidSpec("more than one root drive".into()));
    }
    for drive in &spec.drives {
        check_id("drive id", &drive.id)?;
        if drive.format != DiskFormat::Raw {
            return Err(VmmError::InvalidSpec(format!(
                "drive {}: firecracker takes raw disks only, not {}",
                drive.id,
                drive.format.as_str()
            )));
        }
    }
    for nic in &spec.net {
        check_id("network interface id", &nic.id)?;
        match &nic.backend {
            NetBackend::Tap { .. } => {}
            NetBackend::User { .. } => {
                return Err(VmmError::InvalidSpec(
                    "firecracker has no user-mode network: use bridged networking (the root helper) or the qemu backend".into(),
                ));
            }
            NetBackend::Detached => {
                return Err(VmmError::InvalidSpec(format!(
                    "network interface {}: firecracker needs a tap device behind every nic",
                    nic.id
                )));
            }
        }
    }
    Ok(())
}

fn check_files(spec: &VmSpec) -> Result<(), VmmError> {
    let mut files = vec![("kernel", &spec.boot.kernel)];
    files.extend(spec.boot.initrd.iter().map(|p| ("initrd", p)));
    files.extend(spec.drives.iter().map(|d| ("drive", &d.path)));
    for (what, path) in files {
        if fs::metadata(path).is_err() {
            return Err(VmmError::MissingFile {
                what: what.into(),
                path: path.clone(),
            });
        }
    }
    Ok(())
}

/// The pre-boot configuration of `spec`, after the logger and before
/// `InstanceStart`.
fn config_requests(spec: &VmSpec) -> Vec<Request> {
    let mut requests = vec![
        Request::PutMachineConfig(MachineConfiguration {
            vcpu_count: spec.machine.vcpus,
            mem_size_mib: spec.machine.memory_mib,
            smt: None,
            track_dirty_pages: None,
        }),
        Request::PutBootSource(BootSource {
            kernel_image_path: absolute(&spec.boot.kernel),
            initrd_path: spec.boot.initrd.as_deref().map(absolute),
            boot_args: Some(spec.boot.cmdline.clone()),
        }),
    ];
    // The root drive first, so the guest sees it as /dev/vda.
    let mut drives: Vec<_> = spec.drives.iter().collect();
    drives.sort_by_key(|d| !d.is_root);
    requests.extend(drives.into_iter().map(|d| {
        Request::PutDrive(Drive {
            drive_id: d.id.clone(),
            path_on_host: relative_to(&spec.vm_dir, &d.path),
            is_root_device: d.is_root,
            is_read_only: d.read_only,
        })
    }));
    requests.extend(spec.net.iter().filter_map(|nic| match &nic.backend {
        NetBackend::Tap { tap_name } => Some(Request::PutNetworkInterface(NetworkInterface {
            iface_id: nic.id.clone(),
            host_dev_name: tap_name.clone(),
            guest_mac: nic.mac.clone(),
        })),
        _ => None,
    }));
    if let Some(AgentChannel::HybridVsock { .. }) = &spec.agent {
        requests.push(Request::PutVsock(Vsock {
            guest_cid: GUEST_CID,
            uds_path: "vsock.sock".into(),
        }));
    }
    requests
}

/// The `vmm.log` of the VM whose API socket the handle names.
fn vm_log(handle: &VmHandle) -> PathBuf {
    handle
        .control_socket
        .parent()
        .map(|dir| dir.join("vmm.log"))
        .unwrap_or_else(|| PathBuf::from("vmm.log"))
}

fn remove_if_there(path: &Path) -> Result<(), VmmError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove stale", path)(e)),
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VmmError + use<> {
    let path = path.to_path_buf();
    move |source| VmmError::Io {
        action,
        path,
        source,
    }
}

/// A Firecracker we started. Killed and reaped on drop while armed, with
/// its sockets removed (every early return of `launch` and `restore`).
struct Started {
    child: Child,
    armed: bool,
    files: FirecrackerFiles,
    /// Where this launch's output starts in `vmm.log`.
    log_start: u64,
    console: PathBuf,
}

impl Started {
    /// The tail of this launch's `vmm.log` and of `firecracker.log`.
    fn tail(&self) -> String {
        let stderr = log_tail(&self.files.vmm_log, self.log_start);
        let own = log_tail(&self.files.firecracker_log, 0);
        match (stderr.is_empty(), own.is_empty()) {
            (_, true) => stderr,
            (true, false) => own,
            (false, false) => format!("{stderr}; {own}"),
        }
    }

    /// Kills and reaps Firecracker now, then returns the tail of its logs.
    fn kill_for_tail(&mut self) -> String {
        self.disarm_and_kill();
        self.tail()
    }

    fn disarm_and_kill(&mut self) {
        if self.armed {
            self.armed = false;
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = fs::remove_file(&self.files.api_socket);
            let _ = fs::remove_file(&self.files.vsock_socket);
        }
    }

    /// Lets Firecracker run on, reaped by a thread of its own.
    fn into_handle(mut self) -> VmHandle {
        self.armed = false;
        let pid = self.child.id();
        spawn::spawn_reaper(pid, "firecracker");
        VmHandle {
            pid,
            control_socket: self.files.api_socket.clone(),
            backend: BackendKind::Firecracker,
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.disarm_and_kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_what_firecracker_accepts() {
        assert_eq!(instance_id("vm-1a2b"), "banger-vm-1a2b");
        assert_eq!(instance_id("a.b_c"), "banger-a-b-c");
        assert!(instance_id(&"x".repeat(100)).len() <= 64);
    }

    #[test]
    fn the_memory_file_sits_beside_the_state() {
        assert_eq!(
            memory_file_of(Path::new("/s/vmstate")),
            PathBuf::from("/s/vmstate.mem")
        );
    }

    #[test]
    fn drives_inside_the_vm_directory_are_relative() {
        let dir = Path::new("/d/vms/x");
        assert_eq!(
            relative_to(dir, Path::new("/d/vms/x/root.raw")),
            PathBuf::from("root.raw")
        );
        assert_eq!(
            relative_to(dir, Path::new("/dev/mapper/banger-x")),
            PathBuf::from("/dev/mapper/banger-x")
        );
    }
}
