//! Finding, starting, replacing and stopping the daemon.
//!
//! Every command that needs the daemon goes through [`ensure_daemon`]: it
//! connects and sends `ping`; when nothing answers it starts `bangerd`
//! detached (its own session, output appended to the log file) and waits a
//! bounded time for it; when the daemon answers with another `build_id`
//! (the binaries were rebuilt) it stops that daemon and starts ours.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_paths::Layout;
use banger_proto::ErrorCode;
use banger_proto::daemon::{PingResult, ShutdownParams};
use banger_proto::methods::{self, NoParams};
use rustix::process::{Pid, Signal, kill_process, test_kill_process};

use crate::client::Client;
use crate::daemon_unit::{self, UNIT_NAME};
use crate::{BuildInfo, CliError};

/// How long a freshly started daemon gets to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a daemon asked to shut down gets before SIGTERM, then SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to find things when talking to the daemon.
#[derive(Debug, Clone)]
pub struct DaemonTarget {
    pub layout: Layout,
    /// The `bangerd` binary to start when none runs.
    pub bangerd: PathBuf,
    pub build: BuildInfo,
}

/// The outcome of [`ensure_daemon`].
#[derive(Debug)]
pub struct Connected {
    pub client: Client,
    pub daemon: PingResult,
    /// The daemon this call replaced, if its build differed.
    pub replaced_pid: Option<u32>,
    /// The daemon this call started (fresh or as a replacement).
    pub started: bool,
}

/// Locates `bangerd`: `BANGER_DAEMON_BIN`, then beside the running
/// `banger`, then on `PATH`.
pub fn find_bangerd(explicit: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("banger"));
    let beside = exe.with_file_name("bangerd");
    if beside.is_file() {
        return Ok(beside);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bangerd"))
            .find(|p| p.is_file())
    });
    on_path.ok_or(CliError::DaemonBinaryMissing { beside })
}

/// Connects to a running daemon of this build, starting or replacing it
/// as needed.
pub fn ensure_daemon(target: &DaemonTarget) -> Result<Connected, CliError> {
    // A daemon killed a moment ago can still hold its socket while its
    // threads tear down: a connect lands in the dying listener and is
    // reset. Such a daemon is gone for our purposes; ask again shortly,
    // and start a new one once the socket refuses.
    let mut attempt = 0;
    loop {
        match ensure_daemon_once(target) {
            Err(CliError::Io(e) | CliError::Connect { source: e, .. })
                if attempt < 20
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::UnexpectedEof
                    ) =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(CliError::Closed) if attempt < 20 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn ensure_daemon_once(target: &DaemonTarget) -> Result<Connected, CliError> {
    let socket = target.layout.socket_path();
    let mut replaced_pid = None;
    match Client::connect(&socket) {
        Ok(mut client) => match client.call::<methods::Ping>(&NoParams) {
            Ok(daemon) if daemon.build_id == target.build.build_id => {
                return Ok(Connected {
                    client,
                    daemon,
                    replaced_pid: None,
                    started: false,
                });
            }
            Ok(daemon) => {
                tracing::info!(
                    pid = daemon.pid,
                    theirs = %daemon.build_id,
                    ours = %target.build.build_id,
                    "replacing bangerd built from other sources"
                );
                stop(client, daemon.pid)?;
                replaced_pid = Some(daemon.pid);
            }
            // A socket that accepts but does not answer ping is not a usable
            // daemon; a new one takes the lock only once that one is gone.
            Err(e) => return Err(e),
        },
        Err(CliError::Connect { source, .. })
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) => {}
        Err(e) => return Err(e),
    }
    let (client, daemon) = start(target)?;
    if daemon.build_id != target.build.build_id {
        eprintln!(
            "warning: {} is from another build ({}, this banger is {}); using it anyway",
            target.bangerd.display(),
            daemon.build_id,
            target.build.build_id
        );
    } else if let Some(old) = replaced_pid {
        crate::output::note!(
            "note: restarted bangerd built from other sources (pid {old} -> {})",
            daemon.pid
        );
    }
    Ok(Connected {
        client,
        daemon,
        replaced_pid,
        started: true,
    })
}

/// Connects to a running daemon without starting one.
pub fn connect_running(layout: &Layout) -> Result<Option<(Client, PingResult)>, CliError> {
    match Client::connect(&layout.socket_path()) {
        Ok(mut client) => {
            let ping = client.call::<methods::Ping>(&NoParams)?;
            Ok(Some((client, ping)))
        }
        Err(CliError::Connect { source, .. })
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Asks the daemon to shut down and waits for its process to exit,
/// escalating to SIGTERM and then SIGKILL if it does not.
pub fn stop(mut client: Client, pid: u32) -> Result<(), CliError> {
    // The daemon may exit before answering; either way we wait on the pid.
    let _ = client.call::<methods::DaemonShutdown>(&ShutdownParams::default());
    drop(client);
    wait_stopped(pid)
}

/// What [`stop_if_idle`] did.
#[derive(Debug)]
pub enum IdleStop {
    /// The daemon was idle, refused new operations and exited.
    Stopped,
    /// The daemon is of a build before `if_idle` (it refused the param);
    /// nothing was done and its connection is handed back.
    Unsupported(Client),
}

/// Asks the daemon to shut down only if no operation is running or being
/// started (one step in the daemon, so none can begin in between), and
/// waits for it to exit. A busy daemon's refusal, naming the operations,
/// is returned as its error and the daemon keeps running.
pub fn stop_if_idle(mut client: Client, pid: u32) -> Result<IdleStop, CliError> {
    match client.call::<methods::DaemonShutdown>(&ShutdownParams { if_idle: true }) {
        Err(CliError::Daemon(body)) if body.code == ErrorCode::Conflict => {
            return Err(CliError::Daemon(body));
        }
        Err(CliError::Daemon(body)) if body.code == ErrorCode::BadParams => {
            return Ok(IdleStop::Unsupported(client));
        }
        // Answered, or exited before answering: either way we wait on the pid.
        _ => {}
    }
    drop(client);
    wait_stopped(pid).map(|()| IdleStop::Stopped)
}

/// Waits for a daemon asked to stop to exit, escalating to SIGTERM and
/// then SIGKILL if it does not.
fn wait_stopped(pid: u32) -> Result<(), CliError> {
    let Some(pid_t) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(());
    };
    if wait_exit(pid_t, STOP_TIMEOUT) {
        return Ok(());
    }
    tracing::warn!(pid, "bangerd ignored shutdown; sending SIGTERM");
    let _ = kill_process(pid_t, Signal::TERM);
    if wait_exit(pid_t, Duration::from_secs(3)) {
        return Ok(());
    }
    let _ = kill_process(pid_t, Signal::KILL);
    if wait_exit(pid_t, Duration::from_secs(2)) {
        return Ok(());
    }
    Err(CliError::StopTimeout { pid })
}

fn wait_exit(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if test_kill_process(pid).is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `bangerd` and waits until it answers `ping`: through its
/// systemd user unit when one is installed for this `bangerd`
/// ([`daemon_unit`]), else (or when systemd cannot) detached in its own
/// session.
pub(crate) fn start(target: &DaemonTarget) -> Result<(Client, PingResult), CliError> {
    let layout = &target.layout;
    // A config file the daemon would refuse is reported here, with its
    // line, rather than as a daemon that exited during start.
    banger_config::ConfigFile::load(&banger_config::config_path(&layout.config_dir))?;
    layout.ensure_dirs()?;
    if daemon_unit::installed_for(layout, &target.bangerd) {
        if let Some(connected) = start_with_systemd(layout)? {
            return Ok(connected);
        }
    }
    let log_file = layout.log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(|source| CliError::ReadLog {
            path: log_file.clone(),
            source,
        })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let stderr = log.try_clone().map_err(CliError::Io)?;
    let mut command = Command::new(&target.bangerd);
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .current_dir("/");
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid(2), which is async-signal-safe and does not allocate.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| CliError::Spawn {
        binary: target.bangerd.clone(),
        source,
    })?;
    tracing::debug!(pid = child.id(), "started bangerd");

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut client) = Client::connect(&layout.socket_path()) {
            if let Ok(ping) = client.call::<methods::Ping>(&NoParams) {
                return Ok((client, ping));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            // It may have lost a start race to another daemon that now
            // answers; give that one a last chance before failing.
            if let Some((client, ping)) = connect_running(layout)? {
                return Ok((client, ping));
            }
            return Err(CliError::StartExited {
                status: status.to_string(),
                tail: log_tail(&log_file, log_start),
                log_file,
            });
        }
        if Instant::now() >= deadline {
            return Err(CliError::StartTimeout {
                waited_s: START_TIMEOUT.as_secs(),
                tail: log_tail(&log_file, log_start),
                log_file,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `systemctl --user start bangerd.service`, then waits for the daemon to
/// answer. `None` when systemd cannot start it (no user instance, no
/// systemctl, the unit failed): the caller spawns bangerd itself.
fn start_with_systemd(layout: &Layout) -> Result<Option<(Client, PingResult)>, CliError> {
    let log_file = layout.log_file();
    let log_start = std::fs::metadata(&log_file).map(|m| m.len()).unwrap_or(0);
    if let Err(e) = daemon_unit::systemctl_user(&["start", UNIT_NAME]) {
        tracing::warn!(
            error = %banger_proto::error_chain(&e),
            "cannot start bangerd through systemd; starting it directly"
        );
        return Ok(None);
    }
    tracing::debug!("started {UNIT_NAME} through systemctl --user");
    wait_for_unit(layout, log_start)
}

/// Waits for the daemon systemd starts to answer `ping`; `None` when the
/// unit fails first. `log_start` is where the log file ended before.
pub fn wait_for_unit(
    layout: &Layout,
    log_start: u64,
) -> Result<Option<(Client, PingResult)>, CliError> {
    let log_file = layout.log_file();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut next_check = Instant::now() + Duration::from_millis(500);
    loop {
        if let Ok(mut client) = Client::connect(&layout.socket_path()) {
            if let Ok(ping) = client.call::<methods::Ping>(&NoParams) {
                return Ok(Some((client, ping)));
            }
        }
        let now = Instant::now();
        if now >= next_check {
            if daemon_unit::unit_failed() {
                tracing::warn!("{UNIT_NAME} failed; starting bangerd directly");
                return Ok(None);
            }
            next_check = now + Duration::from_millis(500);
        }
        if now >= deadline {
            return Err(CliError::StartTimeout {
                waited_s: START_TIMEOUT.as_secs(),
                tail: log_tail(&log_file, log_start),
                log_file,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last few lines a process wrote to its log since `from`, to put in
/// an error (bangerd here, banger-helper in `system install`).
pub(crate) fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.take(64 * 1024).read_to_string(&mut text)
    });
    if read.is_err() {
        return String::new();
    }
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("; it said:");
    for line in lines.into_iter().rev() {
        out.push_str("\n  ");
        out.push_str(line);
    }
    out
}
