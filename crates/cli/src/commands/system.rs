//! `banger system install|uninstall|status`: putting `banger-helper`, the
//! root helper, in place, taking it away again, and saying how it is.
//!
//! Install copies `banger`, `bangerd` and `banger-helper` from the running
//! binary's directory into `PREFIX/bin`, writes the helper's config
//! ([`HelperConfig`]) and starts the helper: with systemd, through a
//! `banger-helper.socket` + `banger-helper.service` pair; without, as a
//! background process in its own session whose pid is kept next to the
//! socket. Either way it waits until the helper answers `ping`.
//!
//! Two hidden environment variables exist for tests:
//! `BANGER_SYSTEMD_RUNTIME_DIR` (default `/run/systemd/system`, whose
//! existence means "systemd runs") and `BANGER_SYSTEMD_UNIT_DIR` (default
//! `/etc/systemd/system`).

use std::ffi::OsString;
use std::fmt::Display;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use banger_paths::Layout;
use banger_proto::helper::{
    DEFAULT_HELPER_SOCKET, HELPER_PROTOCOL_VERSION, HelperCall, HelperConfig, HelperError,
    HelperErrorCode, HelperInfo, HelperReply, HelperRequest, HelperResponse,
};
use banger_proto::{ErrorBody, ErrorCode};
use rustix::process::{Pid, Signal, kill_process};
use serde::Serialize;

use super::print_json;
use crate::args::{SystemCommand, SystemInstallArgs, SystemStatusArgs, SystemUninstallArgs};
use crate::{CliError, Exit};

/// The binaries install copies, in this order.
const BINARIES: [&str; 3] = ["banger", "bangerd", "banger-helper"];
const HELPER_BIN: &str = "banger-helper";
const SERVICE_UNIT: &str = "banger-helper.service";
const SOCKET_UNIT: &str = "banger-helper.socket";
/// Beside the socket, for a helper started without systemd.
const PID_FILE: &str = "helper.pid";
const LOG_FILE: &str = "helper.log";
/// How long a freshly started helper gets to answer `ping`.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a helper gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Read/write timeout of one `ping`.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The PATH a helper started without systemd gets (its environment is
/// cleared, as systemd would).
const HELPER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn run(cmd: &SystemCommand) -> Result<(), CliError> {
    match cmd {
        SystemCommand::Install(a) => install(a),
        SystemCommand::Uninstall(a) => uninstall(a),
        SystemCommand::Status(a) => status(a),
    }
}

// ---------------------------------------------------------------- errors

fn fail(code: ErrorCode, message: impl Into<String>) -> CliError {
    CliError::Daemon(ErrorBody::new(code, message))
}

/// An I/O failure on `what`; permission problems keep their exit code.
fn io_fail(what: impl Display, e: &io::Error) -> CliError {
    let code = match e.kind() {
        io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        _ => ErrorCode::OperationFailed,
    };
    fail(code, format!("{what}: {e}"))
}

fn require_root(what: &str) -> Result<(), CliError> {
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 {
        return Ok(());
    }
    Err(fail(
        ErrorCode::PermissionDenied,
        format!(
            "`banger system {what}` must run as root (you are uid {euid}); try `sudo banger system {what}`"
        ),
    ))
}

/// Progress lines: stdout, or stderr when stdout carries JSON.
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn step(self, text: impl Display) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

// ---------------------------------------------------------------- paths

fn systemd_running() -> bool {
    let dir = std::env::var_os("BANGER_SYSTEMD_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/systemd/system"));
    dir.is_dir()
}

fn unit_dir() -> PathBuf {
    std::env::var_os("BANGER_SYSTEMD_UNIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"))
}

fn socket_dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn pid_file(socket: &Path) -> PathBuf {
    socket_dir(socket).join(PID_FILE)
}

fn log_file(socket: &Path) -> PathBuf {
    socket_dir(socket).join(LOG_FILE)
}

fn bin_dir(prefix: &Path) -> PathBuf {
    prefix.join("bin")
}

fn absolute(flag: &str, path: &Path) -> Result<(), CliError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(CliError::BadParams(format!(
            "{flag} {} must be an absolute path",
            path.display()
        )))
    }
}

// ---------------------------------------------------------------- users

/// A user from the passwd database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// Parses one `name:pw:uid:gid:gecos:home:shell` line.
fn parse_passwd_line(line: &str) -> Option<Account> {
    let fields: Vec<&str> = line.trim_end_matches('\n').split(':').collect();
    if fields.len() < 7 {
        return None;
    }
    Some(Account {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: PathBuf::from(fields[5]),
    })
}

/// Finds a user by name or uid: `getent passwd` (which sees NSS users too),
/// else `/etc/passwd`.
fn lookup_account(spec: &str) -> Result<Account, CliError> {
    let by_getent = Command::new("getent")
        .args(["passwd", spec])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(parse_passwd_line)
        });
    if let Some(a) = by_getent {
        return Ok(a);
    }
    let text = fs::read_to_string("/etc/passwd").map_err(|e| io_fail("read /etc/passwd", &e))?;
    let accounts: Vec<Account> = text.lines().filter_map(parse_passwd_line).collect();
    let found = accounts.iter().find(|a| a.name == spec).or_else(|| {
        spec.parse::<u32>()
            .ok()
            .and_then(|uid| accounts.iter().find(|a| a.uid == uid))
    });
    found
        .cloned()
        .ok_or_else(|| CliError::BadParams(format!("--user {spec}: no such user")))
}

/// The user the helper will serve: `--user`, else the sudo caller, else us.
fn allowed_account(user: Option<&str>) -> Result<Account, CliError> {
    if let Some(spec) = user {
        return lookup_account(spec);
    }
    let sudo_uid = std::env::var("SUDO_UID")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let uid = sudo_uid.unwrap_or_else(|| rustix::process::getuid().as_raw());
    lookup_account(&uid.to_string())
}

/// That user's banger layout: the current environment's when it is us,
/// else their passwd home and `/run/user/UID` when that exists.
fn layout_for(account: &Account) -> Result<Layout, CliError> {
    if account.uid == rustix::process::getuid().as_raw() {
        return Ok(Layout::from_env()?);
    }
    let home = account.home.clone().into_os_string();
    let run_user = PathBuf::from(format!("/run/user/{}", account.uid));
    let runtime = run_user.is_dir().then(|| run_user.into_os_string());
    let var = |name: &str| -> Option<OsString> {
        match name {
            "HOME" => Some(home.clone()),
            "XDG_RUNTIME_DIR" => runtime.clone(),
            _ => None,
        }
    };
    Ok(Layout::from_vars(var, account.uid)?)
}

// ---------------------------------------------------------------- files

fn create_dir_0755(dir: &Path) -> Result<(), CliError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io_fail(format_args!("create {}", dir.display()), &e))
}

/// A temporary name beside `path`, for write-then-rename.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `contents` to `path` atomically with `mode`.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CliError> {
    let tmp = temp_beside(path);
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_fail(format_args!("write {}", path.display()), &e)
    })
}

/// Same inode on the same device (both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Copies `src` to `dst` (0755) through a temporary name and a rename, so a
/// running copy of `dst` is never overwritten in place. Returns false when
/// they are already the same file.
fn copy_binary(src: &Path, dst: &Path) -> Result<bool, CliError> {
    if same_file(src, dst) {
        return Ok(false);
    }
    let tmp = temp_beside(dst);
    let result = (|| -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        fs::copy(src, &tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dst)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_fail(
            format_args!("copy {} to {}", src.display(), dst.display()),
            &e,
        )
    })?;
    Ok(true)
}

/// Removes a file; false when it was not there.
fn remove_if_present(path: &Path) -> Result<bool, CliError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_fail(format_args!("remove {}", path.display()), &e)),
    }
}

fn read_config(path: &Path) -> Result<Option<HelperConfig>, CliError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_fail(format_args!("read {}", path.display()), &e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        fail(
            ErrorCode::OperationFailed,
            format!("{} is not a helper config: {e}", path.display()),
        )
    })
}

// ---------------------------------------------------------------- processes

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// Exists and is not a zombie (a zombie has exited; only its parent's
/// wait is missing).
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE ...`: COMM may hold spaces and parens; the state
    // follows the last `)`.
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    !matches!(stat.get(close + 2), Some(b'Z' | b'X') | None)
}

/// A live process whose executable is a `banger-helper` (the name still
/// matches after the file was replaced: ` (deleted)` is stripped). Without
/// the right to read `/proc/PID/exe` (another user's process), its `comm`.
fn is_helper_process(pid: u32) -> bool {
    if pid == 0 || !alive(pid) {
        return false;
    }
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => {
            let text = exe.to_string_lossy();
            let text = text.strip_suffix(" (deleted)").unwrap_or(&text);
            Path::new(text).file_name().and_then(|n| n.to_str()) == Some(HELPER_BIN)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end() == HELPER_BIN)
                .unwrap_or(false)
        }
        Err(_) => false,
    }
}

fn read_pid_file(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, a bounded wait, then SIGKILL. Only for a pid that
/// [`is_helper_process`] accepted.
fn stop_pid(pid: u32) -> Result<(), CliError> {
    let Some(p) = to_pid(pid) else {
        return Ok(());
    };
    let _ = kill_process(p, Signal::TERM);
    if wait_gone(pid, STOP_TIMEOUT) {
        return Ok(());
    }
    let _ = kill_process(p, Signal::KILL);
    if wait_gone(pid, Duration::from_secs(2)) {
        return Ok(());
    }
    Err(fail(
        ErrorCode::OperationFailed,
        format!("banger-helper (pid {pid}) did not stop after SIGTERM and SIGKILL"),
    ))
}

/// Stops the background helper named by the pid file beside `socket`, and
/// removes the pid file. Returns the pid stopped.
fn stop_background(socket: &Path, out: Out) -> Result<Option<u32>, CliError> {
    let path = pid_file(socket);
    let pid = read_pid_file(&path);
    let stopped = match pid {
        Some(pid) if is_helper_process(pid) => {
            stop_pid(pid)?;
            out.step(format!("stopped banger-helper (pid {pid})"));
            Some(pid)
        }
        _ => None,
    };
    if remove_if_present(&path)? {
        if stopped.is_some() {
            out.step(format!("removed {}", path.display()));
        } else {
            out.step(format!("removed stale pid file {}", path.display()));
        }
    }
    Ok(stopped)
}

fn systemctl(args: &[&str]) -> Result<(), CliError> {
    let output = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_fail("run systemctl", &e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(fail(
        ErrorCode::OperationFailed,
        format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}

fn systemctl_is_active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn unit_files() -> [PathBuf; 2] {
    let dir = unit_dir();
    [dir.join(SOCKET_UNIT), dir.join(SERVICE_UNIT)]
}

// ---------------------------------------------------------------- ping

/// What a `ping` on the helper's socket found.
#[derive(Debug)]
enum Ping {
    Pong(HelperInfo),
    /// The helper answered with an error (`permission_denied` for a uid it
    /// does not serve).
    Refused(HelperError),
    /// No socket, or nothing listening on it.
    Absent(io::Error),
    /// Something answered, but not like a helper.
    Broken(String),
}

fn op_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("op-sys{:x}{:08x}", std::process::id(), nanos)
}

fn ping(socket: &Path) -> Ping {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return Ping::Absent(e),
    };
    let _ = stream.set_read_timeout(Some(PING_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PING_TIMEOUT));
    let request = HelperRequest {
        version: HELPER_PROTOCOL_VERSION,
        op_id: op_id(),
        call: HelperCall::Ping,
    };
    let mut line = match serde_json::to_vec(&request) {
        Ok(l) => l,
        Err(e) => return Ping::Broken(format!("encode ping: {e}")),
    };
    line.push(b'\n');
    // A helper that refuses our uid may answer and close before reading:
    // read its answer even when the write failed.
    let written = (&stream).write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    match (written, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) | (Ok(()), Err(e)) => return Ping::Broken(format!("ping: {e}")),
        (Ok(()), Ok(_)) => return Ping::Broken("closed without answering".into()),
    }
    match serde_json::from_str::<HelperResponse>(&answer) {
        Ok(HelperResponse::Result(HelperReply::Pong(info))) => Ping::Pong(info),
        Ok(HelperResponse::Result(other)) => Ping::Broken(format!("unexpected reply {other:?}")),
        Ok(HelperResponse::Error(e)) => Ping::Refused(e),
        Err(e) => Ping::Broken(format!("unreadable answer: {e}")),
    }
}

// ---------------------------------------------------------------- install

#[derive(Debug, Serialize)]
struct InstallReport {
    user: Account,
    prefix: PathBuf,
    binaries: Vec<PathBuf>,
    config: PathBuf,
    socket: PathBuf,
    /// `systemd` or `background`.
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    helper: Option<HelperInfo>,
    /// Set when the helper answered but refused root's ping.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

fn install(args: &SystemInstallArgs) -> Result<(), CliError> {
    require_root("install")?;
    let out = Out { json: args.json };
    absolute("--prefix", &args.prefix)?;
    absolute("--config", &args.config)?;
    if let Some(s) = &args.socket {
        absolute("--socket", s)?;
    }

    let account = allowed_account(args.user.as_deref())?;
    let layout = layout_for(&account)?;
    let existing = read_config(&args.config).ok().flatten();
    let mut config = HelperConfig::for_uids(vec![account.uid]);
    if let Some(old) = &existing {
        config.socket = old.socket.clone();
        config.bridge = old.bridge.clone();
        config.subnet = old.subnet.clone();
        config.log_file = old.log_file.clone();
    }
    if let Some(s) = &args.socket {
        config.socket = s.clone();
    }
    if let Some(b) = &args.bridge {
        config.bridge = b.clone();
    }
    if let Some(s) = &args.subnet {
        config.subnet = s.clone();
    }
    config.data_dirs = vec![layout.data_dir.clone()];
    config.runtime_dirs = vec![layout.runtime_dir.clone()];
    let systemd = systemd_running();
    if systemd {
        for (flag, path) in [
            ("--prefix", &args.prefix),
            ("--config", &args.config),
            ("--socket", &config.socket),
        ] {
            unit_safe(flag, path)?;
        }
    }

    // 1. Binaries.
    let exe = std::env::current_exe().map_err(|e| io_fail("locate the running banger", &e))?;
    let src_dir = socket_dir(&exe);
    let dst_dir = bin_dir(&args.prefix);
    for name in BINARIES {
        let src = src_dir.join(name);
        if !src.is_file() {
            return Err(fail(
                ErrorCode::NotFound,
                format!(
                    "{} is missing: install needs banger, bangerd and banger-helper side by side",
                    src.display()
                ),
            ));
        }
    }
    create_dir_0755(&dst_dir)?;
    let mut binaries = Vec::new();
    for name in BINARIES {
        let (src, dst) = (src_dir.join(name), dst_dir.join(name));
        if copy_binary(&src, &dst)? {
            out.step(format!("installed {}", dst.display()));
        } else {
            out.step(format!("{} is already in place", dst.display()));
        }
        binaries.push(dst);
    }
    let helper_bin = dst_dir.join(HELPER_BIN);

    // 2. Config, checked by the helper itself before it replaces the old one.
    let config_dir = socket_dir(&args.config);
    create_dir_0755(&config_dir)?;
    let mut text = serde_json::to_vec_pretty(&config)
        .map_err(|e| fail(ErrorCode::OperationFailed, format!("encode config: {e}")))?;
    text.push(b'\n');
    let staged = config_dir.join(format!(".helper-check-{}.json", std::process::id()));
    write_atomic(&staged, &text, 0o644)?;
    let checked = check_config(&helper_bin, &staged);
    let _ = fs::remove_file(&staged);
    checked?;
    write_atomic(&args.config, &text, 0o644)?;
    out.step(format!(
        "wrote {} (allowed uid {} ({}), bridge {}, subnet {}, socket {})",
        args.config.display(),
        account.uid,
        account.name,
        config.bridge,
        config.subnet,
        config.socket.display()
    ));

    // 3. Stop whatever helper runs now (so re-install replaces it).
    let mut replaced_pid = None;
    let mut sockets = vec![config.socket.clone()];
    if let Some(old) = &existing {
        if old.socket != config.socket {
            sockets.push(old.socket.clone());
        }
    }
    if systemd && unit_files().iter().any(|p| p.exists()) {
        if let Ping::Pong(info) = ping(&config.socket) {
            replaced_pid = Some(info.pid);
        }
        let _ = systemctl(&["stop", SERVICE_UNIT, SOCKET_UNIT]);
        out.step("stopped the banger-helper units");
    }
    for socket in &sockets {
        if let Some(pid) = stop_background(socket, out)? {
            replaced_pid = Some(pid);
        }
    }
    // A helper started some other way that still answers and is ours.
    if let Ping::Pong(info) = ping(&config.socket) {
        if is_helper_process(info.pid) {
            stop_pid(info.pid)?;
            out.step(format!("stopped banger-helper (pid {})", info.pid));
            replaced_pid = Some(info.pid);
        }
    }

    // 4. Start.
    let mode;
    let mut log = None;
    let first_answer = if systemd {
        mode = "systemd";
        start_systemd(args, &helper_bin, &config, out)?;
        wait_for_answer(&config.socket)?
    } else {
        mode = "background";
        let (pid, log_path, answer) =
            start_background(&helper_bin, &args.config, &config.socket, out)?;
        out.step(format!(
            "no systemd here: started banger-helper as a background process (pid {pid}); \
             it will not survive a reboot; run `banger system install` again after one"
        ));
        log = Some(log_path);
        answer
    };

    // 5. Report what answers.
    let answer = match first_answer {
        Ping::Pong(info) => {
            out.step(format!(
                "banger-helper {} answers on {} (protocol {}, pid {}): bridge {}, subnet {}, gateway {}",
                info.version,
                config.socket.display(),
                info.protocol,
                info.pid,
                info.bridge,
                info.subnet,
                info.gateway
            ));
            (Some(info), None)
        }
        // Root is not an allowed uid: ask again as the user it serves,
        // which also shows that user can reach the socket.
        Ping::Refused(e) => match ping_as(&account, &dst_dir, &args.config, &config.socket) {
            Ok(info) => {
                out.step(format!(
                    "banger-helper {} answers {} (uid {}) on {} (protocol {}, pid {}): \
                     bridge {}, subnet {}, gateway {}",
                    info.version,
                    account.name,
                    account.uid,
                    config.socket.display(),
                    info.protocol,
                    info.pid,
                    info.bridge,
                    info.subnet,
                    info.gateway
                ));
                (Some(info), None)
            }
            Err(why) => {
                out.step(format!(
                    "banger-helper answers on {} but refuses root ({e}); asking it as {} \
                     failed: {why}",
                    config.socket.display(),
                    account.name
                ));
                (None, Some(format!("{e}; as {}: {why}", account.name)))
            }
        },
        // Both starts return only answers.
        other => (None, Some(format!("{other:?}"))),
    };
    let report = InstallReport {
        user: account,
        prefix: args.prefix.clone(),
        binaries,
        config: args.config.clone(),
        socket: config.socket.clone(),
        mode,
        replaced_pid,
        log_file: log,
        helper: answer.0,
        refused: answer.1,
    };
    if args.json {
        print_json(&report)?;
    }
    Ok(())
}

/// Pings the helper as `account` by running the installed `banger system
/// status --json` with that user's uid and gid.
fn ping_as(
    account: &Account,
    bin_dir: &Path,
    config: &Path,
    socket: &Path,
) -> Result<HelperInfo, String> {
    let output = Command::new(bin_dir.join("banger"))
        .args(["system", "status", "--json", "--config"])
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .env_clear()
        .env("PATH", HELPER_PATH)
        .env("HOME", &account.home)
        .uid(account.uid)
        .gid(account.gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run banger as uid {}: {e}", account.uid))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|_| {
        format!(
            "banger system status said: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    match report.get("helper") {
        Some(h) => serde_json::from_value(h.clone()).map_err(|e| e.to_string()),
        None => Err(report
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no answer")
            .to_owned()),
    }
}

/// systemd's unit syntax treats spaces, quotes, `%` and `\` specially;
/// paths with those are refused rather than escaped.
fn unit_safe(flag: &str, path: &Path) -> Result<(), CliError> {
    let ok = path.to_str().is_some_and(|s| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+@:".contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(CliError::BadParams(format!(
            "{flag} {}: use a path of letters, digits and / . _ - + @ : for a systemd unit",
            path.display()
        )))
    }
}

fn check_config(helper_bin: &Path, config: &Path) -> Result<(), CliError> {
    let output = Command::new(helper_bin)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_fail(format_args!("run {}", helper_bin.display()), &e))?;
    if output.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if said.is_empty() {
        said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(CliError::BadParams(format!(
        "banger-helper refused the config: {said}"
    )))
}

fn service_unit(helper_bin: &Path, config: &Path) -> String {
    format!(
        "# Written by `banger system install`; removed by `banger system uninstall`.
[Unit]
Description=banger root helper (TAP devices, bridge, NAT, loop and dm devices for bangerd)
Requires={SOCKET_UNIT}
After={SOCKET_UNIT} network.target

[Service]
Type=simple
ExecStart={bin} --config {config}
Restart=on-failure
RestartSec=1s
# Hardening that leaves the helper's job possible (see docs/system.md):
# it needs /dev/net/tun, /dev/loop*, /dev/mapper, writes to /proc/sys/net,
# /run and the users' data dirs, so no PrivateDevices, ProtectKernelTunables,
# ProtectHome or PrivateTmp.
NoNewPrivileges=yes
ProtectSystem=full
ProtectControlGroups=yes
ProtectHostname=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_KILL CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH

[Install]
WantedBy=multi-user.target
",
        bin = helper_bin.display(),
        config = config.display(),
    )
}

fn socket_unit(socket: &Path) -> String {
    format!(
        "# Written by `banger system install`; removed by `banger system uninstall`.
[Unit]
Description=banger root helper socket

[Socket]
ListenStream={socket}
SocketMode=0666
DirectoryMode=0755
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
",
        socket = socket.display(),
    )
}

fn start_systemd(
    args: &SystemInstallArgs,
    helper_bin: &Path,
    config: &HelperConfig,
    out: Out,
) -> Result<(), CliError> {
    let dir = unit_dir();
    create_dir_0755(&dir)?;
    let service = dir.join(SERVICE_UNIT);
    let socket = dir.join(SOCKET_UNIT);
    write_atomic(
        &service,
        service_unit(helper_bin, &args.config).as_bytes(),
        0o644,
    )?;
    write_atomic(&socket, socket_unit(&config.socket).as_bytes(), 0o644)?;
    out.step(format!(
        "wrote {} and {}",
        socket.display(),
        service.display()
    ));
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "--now", SOCKET_UNIT])?;
    // Enabled with the socket so it also starts at boot, not only on the
    // first connection.
    systemctl(&["enable", "--now", SERVICE_UNIT])?;
    out.step(format!(
        "enabled and started {SOCKET_UNIT} and {SERVICE_UNIT}"
    ));
    Ok(())
}

/// Starts the helper in its own session, output appended to `helper.log`
/// beside the socket, writes its pid file and waits up to
/// [`START_TIMEOUT`] for its first answer (a `Pong` or a refusal).
fn start_background(
    helper_bin: &Path,
    config_path: &Path,
    socket: &Path,
    out: Out,
) -> Result<(u32, PathBuf, Ping), CliError> {
    let dir = socket_dir(socket);
    create_dir_0755(&dir)?;
    // A socket file nothing listens on any more (the helper we stopped, or
    // one that crashed) would be in the new helper's way.
    if let Ok(meta) = fs::symlink_metadata(socket) {
        let refused = matches!(
            UnixStream::connect(socket),
            Err(ref e) if e.kind() == io::ErrorKind::ConnectionRefused
        );
        if meta.file_type().is_socket() && refused {
            let _ = fs::remove_file(socket);
        }
    }
    let log_path = log_file(socket);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&log_path)
        .map_err(|e| io_fail(format_args!("open {}", log_path.display()), &e))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .map_err(|e| io_fail(format_args!("open {}", log_path.display()), &e))?;
    let mut command = Command::new(helper_bin);
    command
        .arg("--config")
        .arg(config_path)
        .env_clear()
        .env("PATH", HELPER_PATH)
        .envs(std::env::var_os("BANGER_HELPER_LOG").map(|v| ("BANGER_HELPER_LOG", v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .current_dir("/");
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid(2), which is async-signal-safe and does not allocate.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| io_fail(format_args!("start {}", helper_bin.display()), &e))?;
    let pid = child.id();
    write_atomic(&pid_file(socket), format!("{pid}\n").as_bytes(), 0o644)?;
    out.step(format!(
        "wrote {} (log: {})",
        pid_file(socket).display(),
        log_path.display()
    ));
    // Catch an early exit (a refused config, a socket in use) here, while
    // the child is still ours to wait for.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match ping(socket) {
            Ping::Absent(e) => e.to_string(),
            Ping::Broken(s) => s,
            answer => return Ok((pid, log_path, answer)),
        };
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(pid_file(socket));
            return Err(fail(
                ErrorCode::OperationFailed,
                format!(
                    "banger-helper exited during start ({status}); see {}{}",
                    log_path.display(),
                    crate::daemon_ctl::log_tail(&log_path, log_start)
                ),
            ));
        }
        if Instant::now() >= deadline {
            // Ours and useless: do not leave it holding the socket.
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(pid_file(socket));
            return Err(fail(
                ErrorCode::OperationFailed,
                format!(
                    "banger-helper (pid {pid}) did not answer on {} within {} s ({last}), \
                     so it was stopped; see {}{}",
                    socket.display(),
                    START_TIMEOUT.as_secs(),
                    log_path.display(),
                    crate::daemon_ctl::log_tail(&log_path, log_start)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to [`START_TIMEOUT`] for a helper started by systemd to answer
/// (a `Pong` or a refusal: both prove it is up).
fn wait_for_answer(socket: &Path) -> Result<Ping, CliError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match ping(socket) {
            p @ (Ping::Pong(_) | Ping::Refused(_)) => return Ok(p),
            Ping::Absent(e) => e.to_string(),
            Ping::Broken(s) => s,
        };
        if Instant::now() >= deadline {
            return Err(fail(
                ErrorCode::OperationFailed,
                format!(
                    "banger-helper did not answer on {} within {} s ({last}); \
                     see `systemctl status {SERVICE_UNIT}` and `journalctl -u banger-helper`",
                    socket.display(),
                    START_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- uninstall

#[derive(Debug, Serialize)]
struct UninstallReport {
    installed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_pid: Option<u32>,
    removed: Vec<PathBuf>,
}

fn uninstall(args: &SystemUninstallArgs) -> Result<(), CliError> {
    require_root("uninstall")?;
    let out = Out { json: args.json };
    absolute("--prefix", &args.prefix)?;
    absolute("--config", &args.config)?;
    let config = read_config(&args.config)?;
    let socket = config
        .as_ref()
        .map(|c| c.socket.clone())
        .or_else(|| args.socket.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HELPER_SOCKET));
    let mut found = config.is_some();
    let mut removed = Vec::new();
    let mut stopped_pid = None;

    // 1. Stop the helper first, so nothing recreates a device the teardown
    //    removes.
    let units = unit_files();
    let have_units = units.iter().any(|p| p.exists());
    if have_units {
        found = true;
        if let Ping::Pong(info) = ping(&socket) {
            stopped_pid = Some(info.pid);
        }
        if systemd_running() {
            systemctl(&["disable", "--now", SOCKET_UNIT, SERVICE_UNIT])?;
            out.step(format!(
                "stopped and disabled {SOCKET_UNIT} and {SERVICE_UNIT}"
            ));
        }
    }
    let had_pid_file = pid_file(&socket).exists();
    found |= had_pid_file;
    if let Some(pid) = stop_background(&socket, out)? {
        stopped_pid = Some(pid);
    }
    if had_pid_file {
        removed.push(pid_file(&socket));
    }
    if let Ping::Pong(info) = ping(&socket) {
        if is_helper_process(info.pid) {
            found = true;
            stop_pid(info.pid)?;
            out.step(format!("stopped banger-helper (pid {})", info.pid));
            stopped_pid = Some(info.pid);
        }
    }

    // 2. banger's network objects. A failure keeps the config and the
    //    binaries, so running uninstall again retries.
    if config.is_some() {
        let installed = bin_dir(&args.prefix).join(HELPER_BIN);
        let beside = std::env::current_exe()
            .ok()
            .map(|e| socket_dir(&e).join(HELPER_BIN));
        let helper_bin = if installed.is_file() {
            Some(installed)
        } else {
            beside.filter(|b| b.is_file())
        };
        match helper_bin {
            Some(bin) => {
                let removed_objects = teardown(&bin, &args.config)?;
                if removed_objects.is_empty() {
                    out.step("teardown: no TAP devices, bridge or nftables table of banger's left");
                }
                for line in removed_objects {
                    out.step(format!("teardown: {line}"));
                }
            }
            None => out.step(format!(
                "warning: no banger-helper binary to run the teardown with; \
                 banger's TAPs ({}N), bridge {} and nftables table may remain",
                banger_proto::helper::TAP_PREFIX,
                config
                    .as_ref()
                    .map(|c| c.bridge.as_str())
                    .unwrap_or("banger0")
            )),
        }
    }

    // 3. Files.
    if have_units {
        for unit in &units {
            if remove_if_present(unit)? {
                removed.push(unit.clone());
            }
        }
        if systemd_running() {
            systemctl(&["daemon-reload"])?;
        }
    }
    let leftover_socket = fs::symlink_metadata(&socket)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if leftover_socket && remove_if_present(&socket)? {
        removed.push(socket.clone());
    }
    if remove_if_present(&args.config)? {
        removed.push(args.config.clone());
    }
    // The config's directory when it is install's default and now empty.
    if let Some(dir) = args.config.parent() {
        if dir == Path::new("/etc/banger") {
            let _ = fs::remove_dir(dir);
        }
    }
    if !args.keep_binaries {
        for name in BINARIES {
            let path = bin_dir(&args.prefix).join(name);
            if remove_if_present(&path)? {
                removed.push(path);
            }
        }
    }
    found |= !removed.is_empty();
    for path in removed.iter().filter(|p| **p != pid_file(&socket)) {
        out.step(format!("removed {}", path.display()));
    }
    if !found {
        out.step("banger-helper is not installed: nothing to do");
    } else if log_file(&socket).exists() {
        out.step(format!(
            "kept the helper's log {}",
            log_file(&socket).display()
        ));
    }
    if args.json {
        print_json(&UninstallReport {
            installed: found,
            stopped_pid,
            removed,
        })?;
    }
    Ok(())
}

/// Runs `banger-helper teardown`; returns the lines it printed (one per
/// object removed).
fn teardown(helper_bin: &Path, config: &Path) -> Result<Vec<String>, CliError> {
    let output = Command::new(helper_bin)
        .arg("teardown")
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", HELPER_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_fail(format_args!("run {}", helper_bin.display()), &e))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect());
    }
    Err(fail(
        ErrorCode::OperationFailed,
        format!(
            "`{} teardown` failed ({}): {}; the config and binaries were kept, so \
             `banger system uninstall` can be run again",
            helper_bin.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}

// ---------------------------------------------------------------- status

#[derive(Debug, Serialize)]
struct StatusReport {
    installed: bool,
    config: PathBuf,
    config_present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_error: Option<String>,
    binaries: Vec<BinaryState>,
    /// `systemd` (unit files present), `background` (a live pid file) or
    /// `none`.
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid_file_pid: Option<u32>,
    socket: PathBuf,
    running: bool,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    helper: Option<HelperInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_uids: Option<Vec<u32>>,
    uid: u32,
    /// Whether this uid may call the helper (from its answer, else from
    /// the config).
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed: Option<bool>,
}

#[derive(Debug, Serialize)]
struct BinaryState {
    path: PathBuf,
    present: bool,
}

fn status(args: &SystemStatusArgs) -> Result<(), CliError> {
    let uid = rustix::process::getuid().as_raw();
    let (config, config_error) = match read_config(&args.config) {
        Ok(c) => (c, None),
        Err(e) => (None, Some(e.display_chain())),
    };
    let config_present = config.is_some() || args.config.exists();
    let socket = args
        .socket
        .clone()
        .or_else(|| config.as_ref().map(|c| c.socket.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HELPER_SOCKET));
    let binaries: Vec<BinaryState> = BINARIES
        .iter()
        .map(|name| {
            let path = bin_dir(&args.prefix).join(name);
            BinaryState {
                present: path.is_file(),
                path,
            }
        })
        .collect();
    let pid_file_pid = read_pid_file(&pid_file(&socket)).filter(|&p| is_helper_process(p));
    let mode = if unit_files().iter().any(|p| p.exists()) {
        "systemd"
    } else if pid_file_pid.is_some() {
        "background"
    } else {
        "none"
    };
    let allowed_uids = config.as_ref().map(|c| c.allowed_uids.clone());
    let mut report = StatusReport {
        installed: config_present,
        config: args.config.clone(),
        config_present,
        config_error,
        binaries,
        mode,
        pid_file_pid,
        socket: socket.clone(),
        running: false,
        reachable: false,
        helper: None,
        error: None,
        allowed: allowed_uids.as_ref().map(|u| u.contains(&uid)),
        allowed_uids,
        uid,
    };
    match ping(&socket) {
        Ping::Pong(info) => {
            report.running = true;
            report.reachable = true;
            report.allowed = Some(true);
            report.helper = Some(info);
        }
        Ping::Refused(e) => {
            report.running = true;
            if e.code == HelperErrorCode::PermissionDenied {
                report.allowed = Some(false);
            }
            report.error = Some(e.to_string());
        }
        Ping::Absent(e) => {
            report.error = Some(format!("{}: {e}", socket.display()));
            if mode == "systemd" && systemctl_is_active(SERVICE_UNIT) {
                report.running = true;
            }
        }
        Ping::Broken(s) => {
            report.running = pid_file_pid.is_some();
            report.error = Some(format!("{}: {s}", socket.display()));
        }
    }
    let exit = if report.reachable {
        None
    } else if report.allowed == Some(false) && report.running {
        Some(Exit::PermissionDenied)
    } else if report.installed {
        Some(Exit::DaemonUnavailable)
    } else {
        Some(Exit::NotFound)
    };
    if args.json {
        print_json(&report)?;
    } else {
        print_status(&report);
    }
    match exit {
        None => Ok(()),
        Some(e) => Err(CliError::ChildExit(i32::from(e.code()))),
    }
}

fn print_status(r: &StatusReport) {
    let installed = if r.config_present {
        match &r.config_error {
            Some(e) => format!("yes, but the config is unreadable: {e}"),
            None => "yes".to_owned(),
        }
    } else {
        "no".to_owned()
    };
    let row = |k: &str, v: &dyn Display| println!("{k:<10} {v}");
    row("installed", &installed);
    row("config", &r.config.display());
    for b in &r.binaries {
        let state = if b.present { "" } else { " (missing)" };
        row("binary", &format!("{}{state}", b.path.display()));
    }
    let mode = match (r.mode, r.pid_file_pid) {
        ("systemd", _) => format!("systemd ({SOCKET_UNIT}, {SERVICE_UNIT})"),
        (_, Some(pid)) => format!("background process (pid {pid}; does not survive a reboot)"),
        _ => "none".to_owned(),
    };
    row("started by", &mode);
    row("socket", &r.socket.display());
    let running = match (&r.helper, r.running, r.allowed) {
        (Some(h), _, _) => format!("running: banger-helper {} (pid {})", h.version, h.pid),
        (None, true, Some(false)) => {
            format!("running, but uid {} is not allowed", r.uid)
        }
        (None, true, _) => format!(
            "running, but not answering: {}",
            r.error.as_deref().unwrap_or("?")
        ),
        (None, false, _) => format!(
            "not running ({})",
            r.error.as_deref().unwrap_or("no answer")
        ),
    };
    row("helper", &running);
    if let Some(h) = &r.helper {
        row("protocol", &h.protocol);
        row("bridge", &h.bridge);
        row("subnet", &h.subnet);
        row("gateway", &h.gateway);
    }
    if let Some(uids) = &r.allowed_uids {
        let list: Vec<String> = uids.iter().map(u32::to_string).collect();
        row("allowed", &format!("uids {}", list.join(", ")));
    }
    let you = match r.allowed {
        Some(true) => format!("uid {}: allowed", r.uid),
        Some(false) => format!("uid {}: not allowed", r.uid),
        None => format!("uid {}: unknown (no config)", r.uid),
    };
    row("you", &you);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_parse() {
        let a = parse_passwd_line("alice:x:1000:1001:Alice,,,:/home/alice:/bin/bash").unwrap();
        assert_eq!(a.name, "alice");
        assert_eq!(a.uid, 1000);
        assert_eq!(a.gid, 1001);
        assert_eq!(a.home, Path::new("/home/alice"));
        assert!(parse_passwd_line("broken:x:abc:1::/:/bin/sh").is_none());
        assert!(parse_passwd_line("short:x:1").is_none());
    }

    #[test]
    fn units_name_the_binary_config_and_socket() {
        let s = service_unit(
            Path::new("/usr/local/bin/banger-helper"),
            Path::new("/etc/banger/helper.json"),
        );
        assert!(
            s.contains("ExecStart=/usr/local/bin/banger-helper --config /etc/banger/helper.json\n")
        );
        assert!(s.contains("Type=simple\n"));
        // Settings that would hide /dev/net/tun, loop or dm devices.
        for setting in [
            "PrivateDevices=",
            "DeviceAllow=",
            "ProtectClock=",
            "PrivateTmp=",
        ] {
            assert!(!s.lines().any(|l| l.starts_with(setting)), "{setting}");
        }
        let k = socket_unit(Path::new("/run/banger-helper/helper.sock"));
        assert!(k.contains("ListenStream=/run/banger-helper/helper.sock\n"));
        assert!(k.contains("SocketMode=0666\n"));
    }

    #[test]
    fn unit_paths_refuse_specials() {
        assert!(unit_safe("--prefix", Path::new("/usr/local")).is_ok());
        for bad in ["/opt/my dir", "/opt/%h", "/opt/a\"b", "/opt/a\\b"] {
            assert!(unit_safe("--prefix", Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn zombies_and_strangers_are_not_helpers() {
        assert!(!is_helper_process(0));
        assert!(!is_helper_process(std::process::id()));
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }

    #[test]
    fn op_ids_are_valid() {
        assert!(banger_proto::OpId::parse(&op_id()).is_some());
    }
}
