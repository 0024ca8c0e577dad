//! The QEMU backend: `qemu-system-x86_64 -M microvm` with virtio-mmio
//! devices, controlled over QMP.
//!
//! **Launch.** The argv is built from the [`VmSpec`] by [`qemu_args`] (pure,
//! unit-tested). QEMU is spawned directly (no shell) in a session of its own
//! (`setsid` before `exec`), with stdin on `/dev/null` and stdout/stderr
//! appended to `VM_DIR/vmm.log`, so neither the daemon's death nor its
//! terminal's signals reach it. `launch` then polls, every 20 ms and for at
//! most [`QemuVmm::start_timeout`] (10 s), for either QEMU's exit (reported
//! with the tail of `vmm.log`; a refused host port forward and a missing
//! kernel get their own errors) or the QMP socket accepting a connection,
//! sending its greeting and accepting `qmp_capabilities`. On exit, timeout
//! or any other failure the child is killed and reaped before returning.
//!
//! **Reaping.** While the launching process is QEMU's parent, a small
//! thread per VM blocks in `waitpid(pid)` so the exited QEMU never lingers
//! as a zombie. This was chosen over a double fork because `launch` needs
//! QEMU as its own child anyway (to see an early exit and its status with
//! `try_wait`, with no pidfile race), and std's `Command` has no safe
//! double fork. After a daemon restart QEMU is re-parented to init (or a
//! subreaper), which reaps it; the new daemon only ever polls (`kill(pid,
//! 0)` and `/proc`), and a zombie counts as exited.
//!
//! **Ownership.** A pid from `handles.json` may have been reused. A process
//! is taken as ours only if `/proc/PID/exe` is a `qemu-system-*` binary and
//! `/proc/PID/cmdline` carries `-qmp unix:CONTROL_SOCKET,...` (unique per
//! VM directory) and, for [`Vmm::is_running`], `-name guest=banger-VMID,...`.
//! `kill`, `request_shutdown` and `status` check this first; `wait_exit`
//! checks it once, then waits for the pid to be gone or a zombie.
//!
//! **Guest reboot.** `-no-reboot` makes a guest reboot (or a panic with
//! `panic=-1`) end the QEMU process, as Firecracker does; the daemon sees a
//! stopped VM and restarts it itself if asked.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qapi::qmp;

use crate::error::VmmError;
use crate::proc;
use crate::qmp::{ConnectError, QmpClient};
use crate::spec::{
    Accel, AgentChannel, BackendKind, Drive, NetBackend, PortForward, Signal, VmHandle, VmRunState,
    VmSpec,
};
use crate::{Vmm, probe};

/// The QEMU system emulator banger runs.
pub const QEMU_BINARY_NAME: &str = "qemu-system-x86_64";

/// The chardev id of the serial console.
const CONSOLE_CHARDEV: &str = "console";

/// The virtio-serial port name the guest agent looks for (kept in step
/// with `banger_proto::agent::AGENT_PORT_NAME`; this crate does not depend
/// on the wire types).
fn banger_agent_port_name() -> &'static str {
    "banger.agent"
}

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The files QEMU keeps in a VM's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    /// QMP socket (`qmp.sock`): the handle's `control_socket`.
    pub control_socket: PathBuf,
    /// `vmm.pid`, written by QEMU itself.
    pub pidfile: PathBuf,
    /// `vmm.log`: QEMU's stdout and stderr, appended, one header per launch.
    pub vmm_log: PathBuf,
    /// `agent.sock`: the host end of the agent's virtio-serial port.
    pub agent_socket: PathBuf,
}

impl VmFiles {
    pub fn in_dir(vm_dir: &Path) -> Self {
        VmFiles {
            control_socket: vm_dir.join("qmp.sock"),
            pidfile: vm_dir.join("vmm.pid"),
            vmm_log: vm_dir.join("vmm.log"),
            agent_socket: vm_dir.join("agent.sock"),
        }
    }
}

/// The QEMU implementation of [`Vmm`].
#[derive(Debug, Clone)]
pub struct QemuVmm {
    /// `qemu-system-x86_64`, as found by [`crate::probe_qemu`] or configured.
    pub binary: PathBuf,
    /// How long `launch` waits for QMP to answer before killing QEMU.
    pub start_timeout: Duration,
    /// Bounds each QMP read and write.
    pub qmp_timeout: Duration,
}

impl QemuVmm {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        QemuVmm {
            binary: binary.into(),
            start_timeout: Duration::from_secs(10),
            qmp_timeout: Duration::from_secs(5),
        }
    }

    /// Finds `qemu-system-x86_64` on `PATH` (see [`crate::probe_qemu`]).
    pub fn detect() -> Result<Self, VmmError> {
        Ok(QemuVmm::new(crate::probe_qemu()?.binary))
    }

    /// [`crate::probe_kvm_boot`] with this QEMU binary.
    pub fn probe_kvm_boot(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        timeout: Duration,
    ) -> crate::KvmProbe {
        probe::probe_kvm_boot_with(&self.binary, kernel, initrd, timeout)
    }

    /// The process is alive, is a QEMU, and its argv carries this handle's
    /// QMP socket (and, given `vm_id`, that VM's `-name` marker).
    fn owns(&self, handle: &VmHandle, vm_id: Option<&str>) -> bool {
        if handle.backend != BackendKind::Qemu {
            return false;
        }
        if vm_id.is_some_and(|id| check_id("vm id", id).is_err()) {
            return false;
        }
        let pid = handle.pid;
        if !proc::is_alive(pid) || !proc::exe_is_qemu(pid) {
            return false;
        }
        let Some(argv) = proc::cmdline(pid) else {
            return false;
        };
        proc::has_option(&argv, "-qmp", &qmp_arg(&handle.control_socket))
            && vm_id.is_none_or(|id| proc::has_option(&argv, "-name", OsStr::new(&name_arg(id))))
    }

    fn require_ours(&self, handle: &VmHandle) -> Result<(), VmmError> {
        if self.owns(handle, None) {
            Ok(())
        } else {
            Err(VmmError::NotRunning { pid: handle.pid })
        }
    }

    fn wait_ready(
        &self,
        spec: &VmSpec,
        files: &VmFiles,
        child: &mut Child,
        log_start: u64,
    ) -> Result<(), VmmError> {
        let started = Instant::now();
        let deadline = started + self.start_timeout;
        let mut last_error = String::from("the qmp socket never appeared");
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(self.startup_exit(spec, files, log_start, status));
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(VmmError::Exec {
                        binary: self.binary.clone(),
                        source,
                    });
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = remaining.clamp(Duration::from_millis(100), Duration::from_secs(2));
            match QmpClient::connect(&files.control_socket, attempt) {
                Ok(_client) => return Ok(()),
                Err(ConnectError::NotListening(_)) => {}
                Err(e @ ConnectError::Handshake(_)) => last_error = e.message(),
            }
            if Instant::now() >= deadline {
                // Kill and reap before reading the log, so the tail is final.
                let _ = child.kill();
                let _ = child.wait();
                let tail = log_tail(&files.vmm_log, log_start);
                return Err(VmmError::StartupTimeout {
                    binary: self.binary.clone(),
                    secs: started.elapsed().as_secs_f64(),
                    tail: if tail.is_empty() { last_error } else { tail },
                    log: files.vmm_log.clone(),
                    console: spec.console_log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn startup_exit(
        &self,
        spec: &VmSpec,
        files: &VmFiles,
        log_start: u64,
        status: ExitStatus,
    ) -> VmmError {
        let tail = log_tail(&files.vmm_log, log_start);
        if let Some(err) = host_forward_error(spec, &tail, &files.vmm_log) {
            return err;
        }
        VmmError::StartupExit {
            binary: self.binary.clone(),
            status: status.to_string(),
            tail: if tail.is_empty() {
                "it printed nothing".into()
            } else {
                tail
            },
            log: files.vmm_log.clone(),
            console: spec.console_log.clone(),
        }
    }
}

impl Vmm for QemuVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn launch(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        let started = Instant::now();
        let args = qemu_args(spec)?;
        check_files(spec)?;
        let files = VmFiles::in_dir(&spec.vm_dir);
        prepare_dirs(spec, &files)?;

        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.vmm_log)
            .map_err(io_err("open", &files.vmm_log))?;
        write_launch_header(&mut log, &self.binary, spec, &args)
            .map_err(io_err("write", &files.vmm_log))?;
        let log_start = log
            .metadata()
            .map_err(io_err("stat", &files.vmm_log))?
            .len();
        let log_err = log.try_clone().map_err(io_err("open", &files.vmm_log))?;

        let mut command = Command::new(&self.binary);
        command
            .args(&args)
            .current_dir(&spec.vm_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe work is allowed. It makes one raw `setsid` system
        // call (rustix, no libc wrapper state, no allocation) and maps its
        // error with `io::Error::from_raw_os_error`, which does not allocate.
        unsafe {
            command.pre_exec(|| {
                rustix::process::setsid()
                    .map(drop)
                    .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
            });
        }
        let child = command.spawn().map_err(|source| VmmError::Exec {
            binary: self.binary.clone(),
            source,
        })?;
        let mut guard = ChildGuard { child, armed: true };
        self.wait_ready(spec, &files, &mut guard.child, log_start)?;
        guard.armed = false;
        let pid = guard.child.id();
        spawn_reaper(pid);
        tracing::debug!(
            vm_id = %spec.vm_id,
            name = %spec.name,
            pid,
            accel = spec.accel.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "qemu answered on qmp"
        );
        Ok(VmHandle {
            pid,
            control_socket: files.control_socket,
            backend: BackendKind::Qemu,
        })
    }

    fn request_shutdown(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.require_ours(handle)?;
        QmpClient::open(&handle.control_socket, self.qmp_timeout, "system_powerdown")?
            .execute(&qmp::system_powerdown {})?;
        Ok(())
    }

    fn kill(&self, handle: &VmHandle, signal: Signal) -> Result<(), VmmError> {
        self.require_ours(handle)?;
        proc::signal(handle.pid, signal.to_rustix()).map_err(|source| {
            if source.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) {
                VmmError::NotRunning { pid: handle.pid }
            } else {
                VmmError::Signal {
                    pid: handle.pid,
                    signal,
                    source,
                }
            }
        })
    }

    fn is_running(&self, handle: &VmHandle, vm_id: &str) -> bool {
        self.owns(handle, Some(vm_id))
    }

    /// Ownership is checked once, up front: a dying QEMU stops looking like
    /// one (its `/proc/PID/exe` goes away when its memory is released) before
    /// it has closed its files, so the loop then waits for the pid itself to
    /// be gone or a zombie, which happens only after every file (disk
    /// locks, sockets) is closed. Pids are handed out cyclically, so the pid
    /// cannot be reused within one 25 ms poll.
    fn wait_exit(&self, handle: &VmHandle, timeout: Duration) -> Result<bool, VmmError> {
        if !self.owns(handle, None) {
            return Ok(true);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if !proc::is_alive(handle.pid) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(25)));
        }
    }

    fn status(&self, handle: &VmHandle) -> Result<VmRunState, VmmError> {
        self.require_ours(handle)?;
        let info = QmpClient::open(&handle.control_socket, self.qmp_timeout, "query-status")?
            .execute(&qmp::query_status {})?;
        Ok(run_state(info.status))
    }
}

fn run_state(state: qmp::RunState) -> VmRunState {
    use qmp::RunState as R;
    match state {
        R::running => VmRunState::Running,
        R::paused => VmRunState::Paused,
        R::prelaunch => VmRunState::Prelaunch,
        R::shutdown => VmRunState::Shutdown,
        R::guest_panicked => VmRunState::GuestPanicked,
        R::internal_error => VmRunState::InternalError,
        R::io_error => VmRunState::IoError,
        other => VmRunState::Other(
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{other:?}")),
        ),
    }
}

/// Kills and reaps the child on drop while armed (every early return and
/// panic of `launch`).
struct ChildGuard {
    child: Child,
    armed: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reaps our child `pid` when it exits, from a thread of its own (the std
/// `Child` is dropped, which neither waits nor kills).
fn spawn_reaper(pid: u32) {
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name(format!("qemu-reaper-{pid}"))
        .spawn(move || {
            loop {
                match rustix::process::waitpid(Some(target), rustix::process::WaitOptions::empty())
                {
                    Err(rustix::io::Errno::INTR) => continue,
                    result => {
                        tracing::debug!(pid, ?result, "qemu exited and was reaped");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // Unreaped, it stays a zombie after exiting until this process
        // exits; wait_exit and is_running treat a zombie as gone.
        tracing::warn!(pid, error = %e, "cannot start the qemu reaper thread");
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

fn prepare_dirs(spec: &VmSpec, files: &VmFiles) -> Result<(), VmmError> {
    fs::create_dir_all(&spec.vm_dir).map_err(io_err("create directory", &spec.vm_dir))?;
    if let Some(parent) = spec.console_log.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
    }
    // A stale socket would only be refused, but a stale pidfile misleads.
    for stale in [&files.control_socket, &files.pidfile] {
        match fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale", stale)(e)),
        }
    }
    Ok(())
}

fn write_launch_header(
    log: &mut File,
    binary: &Path,
    spec: &VmSpec,
    args: &[OsString],
) -> io::Result<()> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut line = format!(
        "--- banger: launching vm {} ({}) at unix time {secs}:\n--- {}",
        spec.vm_id,
        spec.name,
        binary.display()
    );
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    line.push('\n');
    log.write_all(line.as_bytes())
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.,:/@%+[]".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last lines QEMU wrote to `vmm.log` since `start`, joined with `; `
/// (at most 8 lines and about 1000 bytes, keeping the end).
pub(crate) fn log_tail(log: &Path, start: u64) -> String {
    let mut buf = Vec::new();
    let read = File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(start))?;
        f.take(256 * 1024).read_to_end(&mut buf)
    });
    if read.is_err() {
        return String::new();
    }
    tail_lines(&String::from_utf8_lossy(&buf), 8, 1000)
}

pub(crate) fn tail_lines(text: &str, max_lines: usize, max_bytes: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(max_lines)..].join("; ");
    if joined.len() <= max_bytes {
        return joined;
    }
    let mut cut = joined.len() - max_bytes;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &joined[cut..])
}

/// Turns slirp's "Could not set up host forwarding rule 'RULE'" into an
/// error naming the forward, with the reason found by binding it ourselves.
fn host_forward_error(spec: &VmSpec, tail: &str, log: &Path) -> Option<VmmError> {
    const MARK: &str = "Could not set up host forwarding rule '";
    let start = tail.find(MARK)? + MARK.len();
    let rule = &tail[start..start + tail[start..].find('\'')?];
    let forward = spec
        .net
        .iter()
        .filter_map(|nic| match &nic.backend {
            NetBackend::User { forwards } => Some(forwards),
            NetBackend::Tap { .. } => None,
        })
        .flatten()
        .find(|f| hostfwd_rule(f) == rule)?;
    Some(VmmError::HostForward {
        proto: forward.proto,
        host_addr: forward.host_addr,
        host_port: forward.host_port,
        guest_port: forward.guest_port,
        reason: bind_diagnosis(forward),
        log: log.to_path_buf(),
    })
}

fn bind_diagnosis(forward: &PortForward) -> String {
    let addr = (forward.host_addr, forward.host_port);
    let result = match forward.proto {
        crate::spec::Proto::Tcp => TcpListener::bind(addr).map(drop),
        crate::spec::Proto::Udp => UdpSocket::bind(addr).map(drop),
    };
    match result {
        Ok(()) => "qemu could not bind it (it is free now, so it was probably in use)".into(),
        Err(e) => match e.kind() {
            io::ErrorKind::AddrInUse => "address already in use".into(),
            io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need privileges)".into()
            }
            io::ErrorKind::AddrNotAvailable => "address not available on this host".into(),
            _ => e.to_string().to_lowercase(),
        },
    }
}

/// Kernel, initrd and drives must exist before QEMU is started, so that
/// the error names the file rather than QEMU's phrasing of it.
fn check_files(spec: &VmSpec) -> Result<(), VmmError> {
    let mut wanted: Vec<(String, &Path)> = vec![("kernel".into(), &spec.boot.kernel)];
    if let Some(initrd) = &spec.boot.initrd {
        wanted.push(("initrd".into(), initrd));
    }
    for drive in &spec.drives {
        wanted.push((format!("drive {}", drive.id), &drive.path));
    }
    for (what, path) in wanted {
        match proc::exists(path) {
            Ok(true) => {}
            Ok(false) => {
                return Err(VmmError::MissingFile {
                    what,
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(VmmError::Io {
                    action: "stat",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn check_id(what: &str, id: &str) -> Result<(), VmmError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(VmmError::InvalidSpec(format!(
            "{what} {id:?} must be 1 to 64 of [A-Za-z0-9._-]"
        )))
    }
}

/// QEMU ids must also start with a letter.
fn check_qemu_id(what: &str, id: &str) -> Result<(), VmmError> {
    check_id(what, id)?;
    if id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Ok(())
    } else {
        Err(VmmError::InvalidSpec(format!(
            "{what} {id:?} must start with a letter"
        )))
    }
}

fn check_mac(mac: &str) -> Result<(), VmmError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(VmmError::InvalidSpec(format!(
            "mac {mac:?} must look like 52:54:00:12:34:56"
        )))
    }
}

fn check_spec(spec: &VmSpec) -> Result<(), VmmError> {
    let invalid = |m: String| Err(VmmError::InvalidSpec(m));
    check_id("vm id", &spec.vm_id)?;
    if spec.machine.vcpus == 0 || spec.machine.vcpus > 64 {
        return invalid(format!("vcpus must be 1 to 64, got {}", spec.machine.vcpus));
    }
    if spec.machine.memory_mib < 16 {
        return invalid(format!(
            "memory must be at least 16 MiB, got {}",
            spec.machine.memory_mib
        ));
    }
    let socket = VmFiles::in_dir(&spec.vm_dir).control_socket;
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return invalid(format!(
            "vm dir {} is too long for a unix socket path ({} bytes, at most {MAX_SOCKET_PATH})",
            spec.vm_dir.display(),
            socket.as_os_str().len()
        ));
    }
    let mut ids = Vec::new();
    for drive in &spec.drives {
        check_qemu_id("drive id", &drive.id)?;
        if ids.contains(&drive.id.as_str()) {
            return invalid(format!("drive id {:?} is used twice", drive.id));
        }
        ids.push(&drive.id);
    }
    if spec.drives.iter().filter(|d| d.is_root).count() > 1 {
        return invalid("more than one root drive".into());
    }
    let mut ids = Vec::new();
    for nic in &spec.net {
        check_qemu_id("network interface id", &nic.id)?;
        if ids.contains(&nic.id.as_str()) {
            return invalid(format!("network interface id {:?} is used twice", nic.id));
        }
        ids.push(&nic.id);
        if let Some(mac) = &nic.mac {
            check_mac(mac)?;
        }
        match &nic.backend {
            NetBackend::User { forwards } => {
                for f in forwards {
                    if !f.host_addr.is_ipv4() {
                        return invalid(format!(
                            "host address {} for port {}: qemu forwards only ipv4 host addresses",
                            f.host_addr, f.host_port
                        ));
                    }
                    if f.host_port == 0 || f.guest_port == 0 {
                        return invalid(format!(
                            "port forward {}:{}->{}: ports must not be 0",
                            f.host_addr, f.host_port, f.guest_port
                        ));
                    }
                }
            }
            NetBackend::Tap { tap_name } => {
                let ok = !tap_name.is_empty()
                    && tap_name.len() <= 15
                    && tap_name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b':'));
                if !ok {
                    return invalid(format!(
                        "tap name {tap_name:?} is not a valid interface name"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Doubles commas, QEMU's escape inside `key=value,...` option strings.
fn escape_opt(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn opt_with_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(escape_opt(path.as_os_str()));
    s.push(suffix);
    s
}

/// `guest=banger-VMID,process=banger-VMID`: the `-name` value, which is the
/// ownership marker `is_running` looks for.
pub fn name_arg(vm_id: &str) -> String {
    format!("guest=banger-{vm_id},process=banger-{vm_id}")
}

fn qmp_arg(socket: &Path) -> OsString {
    opt_with_path("unix:", socket, ",server=on,wait=off")
}

/// `tcp:127.0.0.1:2222-:22`, as in `hostfwd=` and in slirp's error message.
fn hostfwd_rule(f: &PortForward) -> String {
    let addr = match f.host_addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    format!(
        "{}:{addr}:{}-:{}",
        f.proto.as_str(),
        f.host_port,
        f.guest_port
    )
}

/// The machine, CPU and console part shared by VMs and the KVM probe.
pub(crate) fn machine_args(
    accel: Accel,
    vcpus: u32,
    memory_mib: u32,
    console_log: &Path,
) -> Vec<OsString> {
    let cpu = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("-M");
    push("microvm,acpi=on,rtc=on");
    push("-accel");
    push(accel.as_str());
    push("-cpu");
    push(cpu);
    push("-smp");
    push(&vcpus.to_string());
    push("-m");
    push(&format!("{memory_mib}M"));
    for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
        push(flag);
    }
    a.push("-chardev".into());
    a.push(opt_with_path(
        &format!("file,id={CONSOLE_CHARDEV},path="),
        console_log,
        ",append=on",
    ));
    a.push("-serial".into());
    a.push(format!("chardev:{CONSOLE_CHARDEV}").into());
    a
}

pub(crate) fn boot_args(kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-kernel".into(), kernel.into()];
    if let Some(initrd) = initrd {
        a.push("-initrd".into());
        a.push(initrd.into());
    }
    a.push("-append".into());
    a.push(cmdline.into());
    a
}

fn drive_args(drive: &Drive) -> [OsString; 4] {
    let mut opts = opt_with_path(&format!("if=none,id={},file=", drive.id), &drive.path, "");
    opts.push(format!(",format={}", drive.format.as_str()));
    if drive.read_only {
        opts.push(",readonly=on");
    }
    [
        "-drive".into(),
        opts,
        "-device".into(),
        format!("virtio-blk-device,drive={}", drive.id).into(),
    ]
}

/// The full QEMU argv (without the binary) for `spec`, after checking the
/// spec's shape (ids, MAC, ports, socket path length; not that files exist).
pub fn qemu_args(spec: &VmSpec) -> Result<Vec<OsString>, VmmError> {
    check_spec(spec)?;
    let files = VmFiles::in_dir(&spec.vm_dir);
    let mut a: Vec<OsString> = vec!["-name".into(), name_arg(&spec.vm_id).into()];
    a.extend(machine_args(
        spec.accel,
        spec.machine.vcpus,
        spec.machine.memory_mib,
        &spec.console_log,
    ));
    a.extend(boot_args(
        &spec.boot.kernel,
        spec.boot.initrd.as_deref(),
        &spec.boot.cmdline,
    ));
    let roots = spec.drives.iter().filter(|d| d.is_root);
    let others = spec.drives.iter().filter(|d| !d.is_root);
    for drive in roots.chain(others) {
        a.extend(drive_args(drive));
    }
    for nic in &spec.net {
        let netdev = match &nic.backend {
            NetBackend::User { forwards } => {
                let mut s = format!("user,id={}", nic.id);
                for f in forwards {
                    s.push_str(",hostfwd=");
                    s.push_str(&hostfwd_rule(f));
                }
                s
            }
            NetBackend::Tap { tap_name } => {
                format!(
                    "tap,id={},ifname={tap_name},script=no,downscript=no",
                    nic.id
                )
            }
        };
        let mut device = format!("virtio-net-device,netdev={}", nic.id);
        if let Some(mac) = &nic.mac {
            device.push_str(",mac=");
            device.push_str(mac);
        }
        a.extend([
            "-netdev".into(),
            netdev.into(),
            "-device".into(),
            device.into(),
        ]);
    }
    if let Some(AgentChannel::VirtioSerial) = &spec.agent {
        // QEMU listens; the daemon connects (and reconnects after a
        // restart). The port's name is how the agent finds it.
        let mut chardev = OsString::from("socket,id=agent,server=on,wait=off,path=");
        chardev.push(&files.agent_socket);
        a.extend([
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            chardev,
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                banger_agent_port_name()
            )
            .into(),
        ]);
    }
    a.push("-qmp".into());
    a.push(qmp_arg(&files.control_socket));
    a.push("-pidfile".into());
    a.push(files.pidfile.into_os_string());
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BootSource, DiskFormat, MachineConfig, NetInterface, Proto};

    fn sample() -> VmSpec {
        VmSpec {
            vm_id: "0f3a9c".into(),
            name: "dev".into(),
            vm_dir: "/run/banger/vms/0f3a9c".into(),
            boot: BootSource {
                kernel: "/var/lib/banger/kernels/k1/vmlinuz".into(),
                initrd: Some("/var/lib/banger/kernels/k1/initrd.img".into()),
                cmdline: "console=ttyS0 root=/dev/vda rw panic=-1 quiet".into(),
            },
            machine: MachineConfig {
                vcpus: 1,
                memory_mib: 1024,
            },
            drives: vec![
                Drive {
                    id: "work".into(),
                    path: "/var/lib/banger/vms/0f3a9c/work.ext4".into(),
                    format: DiskFormat::Raw,
                    read_only: false,
                    is_root: false,
                },
                Drive {
                    id: "root".into(),
                    path: "/var/lib/banger/vms/0f3a9c/root.qcow2".into(),
                    format: DiskFormat::Qcow2,
                    read_only: false,
                    is_root: true,
                },
            ],
            net: vec![NetInterface {
                id: "net0".into(),
                mac: Some("52:54:00:12:34:56".into()),
                backend: NetBackend::User {
                    forwards: vec![
                        PortForward {
                            proto: Proto::Tcp,
                            host_addr: "127.0.0.1".parse().unwrap(),
                            host_port: 2222,
                            guest_port: 22,
                        },
                        PortForward {
                            proto: Proto::Udp,
                            host_addr: "127.0.0.1".parse().unwrap(),
                            host_port: 5353,
                            guest_port: 53,
                        },
                    ],
                },
            }],
            agent: None,
            accel: Accel::Tcg,
            console_log: "/run/banger/vms/0f3a9c/console.log".into(),
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn sample_spec_gives_exact_argv() {
        let args = strings(&qemu_args(&sample()).unwrap());
        let expected = [
            "-name",
            "guest=banger-0f3a9c,process=banger-0f3a9c",
            "-M",
            "microvm,acpi=on,rtc=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "1024M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-chardev",
            "file,id=console,path=/run/banger/vms/0f3a9c/console.log,append=on",
            "-serial",
            "chardev:console",
            "-kernel",
            "/var/lib/banger/kernels/k1/vmlinuz",
            "-initrd",
            "/var/lib/banger/kernels/k1/initrd.img",
            "-append",
            "console=ttyS0 root=/dev/vda rw panic=-1 quiet",
            "-drive",
            "if=none,id=root,file=/var/lib/banger/vms/0f3a9c/root.qcow2,format=qcow2",
            "-device",
            "virtio-blk-device,drive=root",
            "-drive",
            "if=none,id=work,file=/var/lib/banger/vms/0f3a9c/work.ext4,format=raw",
            "-device",
            "virtio-blk-device,drive=work",
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:127.0.0.1:5353-:53",
            "-device",
            "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56",
            "-qmp",
            "unix:/run/banger/vms/0f3a9c/qmp.sock,server=on,wait=off",
            "-pidfile",
            "/run/banger/vms/0f3a9c/vmm.pid",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn kvm_tap_readonly_and_no_initrd() {
        let mut spec = sample();
        spec.accel = Accel::Kvm;
        spec.machine.vcpus = 2;
        spec.boot.initrd = None;
        spec.drives.truncate(1);
        spec.drives[0].read_only = true;
        spec.net[0].mac = None;
        spec.net[0].backend = NetBackend::Tap {
            tap_name: "bgr-tap0".into(),
        };
        let args = strings(&qemu_args(&spec).unwrap());
        let joined = args.join(" ");
        assert!(joined.contains("-accel kvm -cpu host -smp 2 "), "{joined}");
        assert!(!joined.contains("-initrd"));
        assert!(joined.contains(
            "-drive if=none,id=work,file=/var/lib/banger/vms/0f3a9c/work.ext4,format=raw,readonly=on -device virtio-blk-device,drive=work"
        ));
        assert!(joined.contains(
            "-netdev tap,id=net0,ifname=bgr-tap0,script=no,downscript=no -device virtio-net-device,netdev=net0 -qmp"
        ));
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let mut spec = sample();
        spec.vm_dir = "/tmp/a,b".into();
        spec.console_log = "/tmp/a,b/console.log".into();
        spec.drives[1].path = "/tmp/a,b/root.qcow2".into();
        let args = strings(&qemu_args(&spec).unwrap());
        assert!(args.contains(&"file,id=console,path=/tmp/a,,b/console.log,append=on".into()));
        assert!(args.contains(&"if=none,id=root,file=/tmp/a,,b/root.qcow2,format=qcow2".into()));
        assert!(args.contains(&"unix:/tmp/a,,b/qmp.sock,server=on,wait=off".into()));
        // Not QemuOpts: passed verbatim.
        assert!(args.contains(&"/tmp/a,b/vmm.pid".into()));
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        type Mutation = fn(&mut VmSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.vm_id = "a,b".into(), "vm id"),
            (|s| s.vm_id = String::new(), "vm id"),
            (|s| s.machine.vcpus = 0, "vcpus"),
            (|s| s.machine.memory_mib = 8, "memory"),
            (|s| s.drives[0].id = "1st".into(), "start with a letter"),
            (|s| s.drives[0].id = "root".into(), "used twice"),
            (|s| s.drives[0].is_root = true, "more than one root"),
            (|s| s.net[0].mac = Some("52:54:00:12:34".into()), "mac"),
            (
                |s| {
                    s.net[0].backend = NetBackend::User {
                        forwards: vec![PortForward {
                            proto: Proto::Tcp,
                            host_addr: "::1".parse().unwrap(),
                            host_port: 2222,
                            guest_port: 22,
                        }],
                    }
                },
                "ipv4",
            ),
            (
                |s| {
                    s.net[0].backend = NetBackend::Tap {
                        tap_name: "much-too-long-tap-name".into(),
                    }
                },
                "tap name",
            ),
            (
                |s| s.vm_dir = PathBuf::from("/").join("x".repeat(100)),
                "too long",
            ),
        ];
        for (mutate, needle) in cases {
            let mut spec = sample();
            mutate(&mut spec);
            let err = qemu_args(&spec).unwrap_err();
            assert!(
                matches!(err, VmmError::InvalidSpec(_)) && err.to_string().contains(needle),
                "{needle}: {err}"
            );
        }
    }

    #[test]
    fn tail_keeps_the_last_lines_and_bytes() {
        let text = "a\n\nb\nc\n  d  \n";
        assert_eq!(tail_lines(text, 2, 100), "c; d");
        assert_eq!(tail_lines(text, 10, 100), "a; b; c; d");
        assert_eq!(tail_lines("0123456789", 1, 4), "...6789");
        assert_eq!(tail_lines("", 3, 10), "");
    }

    #[test]
    fn hostfwd_failure_is_mapped_to_the_forward() {
        let spec = sample();
        let tail = "qemu-system-x86_64: -netdev user,id=net0,hostfwd=...: Could not set up host forwarding rule 'udp:127.0.0.1:5353-:53'";
        let err = host_forward_error(&spec, tail, Path::new("/x/vmm.log")).unwrap();
        match err {
            VmmError::HostForward {
                proto, host_port, ..
            } => {
                assert_eq!(proto, Proto::Udp);
                assert_eq!(host_port, 5353);
            }
            other => panic!("{other}"),
        }
        assert!(host_forward_error(&spec, "something else", Path::new("/x")).is_none());
    }

    #[test]
    fn shell_quoting_for_the_log_header() {
        assert_eq!(shell_quote("-m"), "-m");
        assert_eq!(shell_quote("console=ttyS0 quiet"), "'console=ttyS0 quiet'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
