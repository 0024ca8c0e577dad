//! `Exec`: runs a program (no shell) on pipes or a pseudo-terminal and
//! streams its output.
//!
//! Threads per process: one reader per output (stdout and stderr, or the
//! pty), one stdin writer, one waiter. The waiter sends `Exited` only
//! after the readers are done, so it is always the last frame of the id.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use banger_proto::agent::{AgentErrorCode, Frame, Message};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use rustix::termios::Winsize;

use crate::dispatch::{Out, Session, Sessions, id_in_use, send_error};
use crate::image_config::{self, ImageConfig, read_db, resolve_user};
use crate::log;

/// `PATH` when neither the request nor the agent has one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Largest chunk of output in one frame.
const OUTPUT_CHUNK: usize = 64 * 1024;

/// Stdin bytes accepted but not yet taken by the process; more is refused.
const STDIN_BACKLOG: usize = 2 * 1024 * 1024;

/// After the process exits, how long its output pipes may stay open (held
/// by a background child) before the readers give up on them.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// What readers still take after being told to stop (output already in
/// the pipe), at most.
const DRAIN_AFTER_STOP: usize = 1024 * 1024;

/// Variables of the agent's own environment that describe the agent's
/// service, not the command.
const NOT_INHERITED: &[&str] = &[
    "JOURNAL_STREAM",
    "INVOCATION_ID",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
];

/// An `Exec` request.
#[derive(Debug)]
pub(crate) struct Request {
    pub id: u64,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
}

/// What the dispatcher holds of a running process.
pub(crate) struct Control {
    pid: Pid,
    /// The pty master, for `Resize` and the foreground process group.
    master: Option<Arc<OwnedFd>>,
    /// Chunks for the stdin writer; `None` once stdin is closed.
    stdin: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    backlog: Arc<AtomicUsize>,
    /// Set (under the lock) before the process is reaped, so a signal is
    /// never sent to a pid that may have been reused.
    exited: Mutex<bool>,
}

impl Control {
    /// Queues stdin bytes; an empty body closes stdin (on a pty: sends
    /// the end-of-file character, ^D).
    pub(crate) fn stdin(&self, body: Vec<u8>) -> Result<(), String> {
        let mut tx = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = tx.as_ref() else {
            // Closing twice is no error: the host's end-of-file can cross
            // the process's own end.
            if body.is_empty() {
                return Ok(());
            }
            return Err("stdin is closed".into());
        };
        if body.is_empty() {
            if self.master.is_some() {
                let _ = sender.send(vec![0x04]);
            } else {
                *tx = None;
            }
            return Ok(());
        }
        let len = body.len();
        if self.backlog.load(Ordering::Acquire) + len > STDIN_BACKLOG {
            return Err(format!(
                "stdin backlog full ({STDIN_BACKLOG} bytes not yet read by the process): {len} bytes dropped"
            ));
        }
        self.backlog.fetch_add(len, Ordering::AcqRel);
        if sender.send(body).is_err() {
            self.backlog.fetch_sub(len, Ordering::AcqRel);
            return Err("stdin is closed".into());
        }
        Ok(())
    }

    /// Sends `sig` to the process (on a pty: to the terminal's foreground
    /// process group, as a typed ^C would). Nothing once it has exited.
    pub(crate) fn signal(&self, sig: Signal) {
        let exited = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        if *exited {
            return;
        }
        let result = match &self.master {
            Some(master) => {
                let pgrp = rustix::termios::tcgetpgrp(master.as_fd()).unwrap_or(self.pid);
                rustix::process::kill_process_group(pgrp, sig)
            }
            None => rustix::process::kill_process(self.pid, sig),
        };
        if let Err(e) = result {
            log!("signal {sig:?} to pid {}: {e}", self.pid.as_raw_nonzero());
        }
    }

    /// New terminal size (pty only).
    pub(crate) fn resize(&self, rows: u16, cols: u16) -> Result<(), (AgentErrorCode, String)> {
        let Some(master) = &self.master else {
            return Err((
                AgentErrorCode::BadRequest,
                "the process has no terminal".into(),
            ));
        };
        if rows == 0 || cols == 0 {
            return Err((
                AgentErrorCode::BadRequest,
                format!("bad terminal size {rows}x{cols}"),
            ));
        }
        rustix::termios::tcsetwinsize(master.as_fd(), winsize(rows, cols))
            .map_err(|e| (AgentErrorCode::Failed, format!("set terminal size: {e}")))
    }
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// `INT`, `SIGINT`, `int`… → the signal (only those the protocol names).
pub(crate) fn parse_signal(name: &str) -> Option<Signal> {
    let up = name.to_ascii_uppercase();
    let bare = up.strip_prefix("SIG").unwrap_or(&up);
    Some(match bare {
        "INT" => Signal::INT,
        "TERM" => Signal::TERM,
        "KILL" => Signal::KILL,
        "HUP" => Signal::HUP,
        "QUIT" => Signal::QUIT,
        _ => return None,
    })
}

/// The name of signal number `n` as `Exited` reports it (`INT`, `KILL`…).
pub(crate) fn signal_name(n: i32) -> String {
    let name = match n {
        1 => "HUP",
        2 => "INT",
        3 => "QUIT",
        4 => "ILL",
        5 => "TRAP",
        6 => "ABRT",
        7 => "BUS",
        8 => "FPE",
        9 => "KILL",
        10 => "USR1",
        11 => "SEGV",
        12 => "USR2",
        13 => "PIPE",
        14 => "ALRM",
        15 => "TERM",
        16 => "STKFLT",
        17 => "CHLD",
        18 => "CONT",
        19 => "STOP",
        20 => "TSTP",
        21 => "TTIN",
        22 => "TTOU",
        23 => "URG",
        24 => "XCPU",
        25 => "XFSZ",
        26 => "VTALRM",
        27 => "PROF",
        28 => "WINCH",
        29 => "IO",
        30 => "PWR",
        31 => "SYS",
        _ => return n.to_string(),
    };
    name.to_owned()
}

type Refusal = (AgentErrorCode, String);

fn bad(msg: String) -> Refusal {
    (AgentErrorCode::BadRequest, msg)
}

/// Starts the process and its threads, or replies an error (and nothing
/// else).
pub(crate) fn start(req: Request, out: &Out, sessions: &Arc<Sessions>) {
    let id = req.id;
    if sessions.lock().contains_key(&id) {
        id_in_use(out, id);
        return;
    }
    let prepared = match prepare(&req, image_config::installed()) {
        Ok(p) => p,
        Err((code, msg)) => {
            log!("exec {id}: {msg}");
            send_error(out, Some(id), code, msg);
            return;
        }
    };
    let Prepared {
        mut cmd,
        master,
        argv0,
    } = prepared;
    let argv0 = argv0.as_str();
    let child = cmd.spawn();
    // The command holds the pty slave (or nothing): close it now, so the
    // master sees end of file when the process and its children are gone.
    drop(cmd);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound {
                AgentErrorCode::NotFound
            } else {
                AgentErrorCode::Failed
            };
            let msg = format!("run {argv0}: {e}");
            log!("exec {id}: {msg}");
            send_error(out, Some(id), code, msg);
            return;
        }
    };
    let raw_pid = child.id();
    let Some(pid) = i32::try_from(raw_pid).ok().and_then(Pid::from_raw) else {
        // A pid is always positive; this cannot happen.
        let _ = child.kill();
        let _ = child.wait();
        send_error(out, Some(id), AgentErrorCode::Failed, "bad pid".into());
        return;
    };
    // The arguments are not logged: they may hold secrets.
    log!(
        "exec {id}: pid {raw_pid}: {argv0} ({} arguments{}{})",
        req.argv.len().saturating_sub(1),
        if req.argv.is_empty() {
            ", the image's command"
        } else {
            ""
        },
        if req.tty { ", tty" } else { "" }
    );

    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>();
    let master = master.map(Arc::new);
    let ctl = Arc::new(Control {
        pid,
        master: master.clone(),
        stdin: Mutex::new(Some(stdin_tx)),
        backlog: Arc::new(AtomicUsize::new(0)),
        exited: Mutex::new(false),
    });
    sessions.lock().insert(id, Session::Exec(Arc::clone(&ctl)));
    out.send(Frame::new(Message::Started { id, pid: raw_pid }));

    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut failed: Option<io::Error> = None;

    // Output readers and the stdin writer.
    let mut outputs: Vec<(OwnedFd, bool)> = Vec::new();
    let mut stdin_sink: Option<File> = None;
    match &master {
        Some(m) => match (m.try_clone(), m.try_clone()) {
            (Ok(r), Ok(w)) => {
                outputs.push((r, true));
                stdin_sink = Some(File::from(w));
            }
            (Err(e), _) | (_, Err(e)) => failed = Some(e),
        },
        None => {
            if let Some(o) = child.stdout.take() {
                outputs.push((OwnedFd::from(o), true));
            }
            if let Some(e) = child.stderr.take() {
                outputs.push((OwnedFd::from(e), false));
            }
            stdin_sink = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
        }
    }
    for (fd, is_stdout) in outputs {
        if failed.is_some() {
            break;
        }
        let (out, stop, done) = (Arc::clone(out), Arc::clone(&stop), done_tx.clone());
        match crate::spawn("exec-output", move || {
            pump(fd, id, is_stdout, &out, &stop);
            let _ = done.send(());
        }) {
            Ok(h) => readers.push(h),
            Err(e) => failed = Some(e),
        }
    }
    drop(done_tx);
    if let (None, Some(sink)) = (&failed, stdin_sink) {
        let ctl = Arc::clone(&ctl);
        let out = Arc::clone(out);
        if let Err(e) = crate::spawn("exec-stdin", move || {
            feed_stdin(id, sink, stdin_rx, &ctl, &out)
        }) {
            failed = Some(e);
        }
    }

    let finish = Finish {
        id,
        child,
        ctl,
        readers,
        done: done_rx,
        stop,
        out: Arc::clone(out),
        sessions: Arc::clone(sessions),
    };
    if let Some(e) = failed {
        // Cannot watch the process: stop it, and still end with Exited.
        log!("exec {id}: cannot start its threads ({e}); killing pid {raw_pid}");
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        finish.run();
        return;
    }
    // The waiter owns `finish`; if it cannot start, run it here (the
    // process is killed first so this does not block for long).
    let slot = Arc::new(Mutex::new(Some(finish)));
    let s2 = Arc::clone(&slot);
    let spawned = crate::spawn("exec-wait", move || {
        if let Some(f) = s2.lock().unwrap_or_else(|p| p.into_inner()).take() {
            f.run();
        }
    });
    if let Err(e) = spawned {
        log!("exec {id}: cannot start its waiter ({e}); killing pid {raw_pid}");
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        if let Some(f) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            f.run();
        }
    }
}

struct Prepared {
    cmd: Command,
    master: Option<OwnedFd>,
    /// The program as asked for (the request's, or the image's default).
    argv0: String,
}

/// Validates the request and builds the command (and the pty), with the
/// image's exec defaults (`image`: see [`crate::image_config`]) under
/// the request's own choices.
fn prepare(req: &Request, image: &ImageConfig) -> Result<Prepared, Refusal> {
    let image_argv;
    let argv: &[String] = if req.argv.is_empty() {
        image_argv = image.default_argv();
        if image_argv.is_empty() {
            return Err(bad(
                "argv is empty (and the image names no Entrypoint or Cmd)".into(),
            ));
        }
        &image_argv
    } else {
        &req.argv
    };
    let argv0 = &argv[0];
    if argv0.is_empty() {
        return Err(bad("argv[0] is empty".into()));
    }
    if let Some(a) = argv.iter().find(|a| a.contains('\0')) {
        return Err(bad(format!("argument {a:?} contains a NUL byte")));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(bad(format!("bad environment variable {k:?}")));
        }
    }

    // Environment: the agent's (minus its service's own variables), a
    // default PATH and HOME, then the request's additions.
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !NOT_INHERITED.iter().any(|n| OsStr::new(n) == k))
        .collect();
    let mut set = |k: &str, v: &str, only_if_missing: bool| {
        if let Some(slot) = env.iter_mut().find(|(ek, _)| ek == k) {
            if !only_if_missing {
                slot.1 = v.into();
            }
        } else {
            env.push((k.into(), v.into()));
        }
    };
    let creds = match image.user() {
        Some(spec) => Some(
            resolve_user(
                spec,
                &read_db(Path::new("/etc/passwd")),
                &read_db(Path::new("/etc/group")),
            )
            .map_err(|e| (AgentErrorCode::Failed, format!("the image's User: {e}")))?,
        ),
        None => None,
    };
    let image_env = image.env_pairs();
    set("PATH", DEFAULT_PATH, true);
    match creds.as_ref().and_then(|c| c.home.as_deref()) {
        // The image's user's home, unless the image sets HOME itself.
        Some(home) if !image_env.iter().any(|(k, _)| k == "HOME") => set("HOME", home, false),
        _ => set("HOME", "/root", true),
    }
    if req.tty {
        set("TERM", "xterm-256color", true);
    }
    for (k, v) in image_env.iter().chain(&req.env) {
        set(k, v, false);
    }

    let cwd = match &req.cwd {
        Some(c) => {
            if c.contains('\0') || !c.starts_with('/') {
                return Err(bad(format!("cwd {c:?} is not an absolute path")));
            }
            let p = PathBuf::from(c);
            if !p.is_dir() {
                return Err((
                    AgentErrorCode::NotFound,
                    format!("cwd {c}: no such directory"),
                ));
            }
            p
        }
        None => match image.working_dir() {
            // Container runtimes create a missing WorkingDir.
            Some(dir) => {
                let p = PathBuf::from(dir);
                if let Err(e) = std::fs::create_dir_all(&p) {
                    return Err((
                        AgentErrorCode::Failed,
                        format!("create the image's WorkingDir {dir}: {e}"),
                    ));
                }
                p
            }
            None if Path::new("/root").is_dir() => PathBuf::from("/root"),
            None => PathBuf::from("/"),
        },
    };

    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let program = resolve(argv0, &path_var, &cwd).ok_or_else(|| {
        (
            AgentErrorCode::NotFound,
            format!("{argv0}: command not found"),
        )
    })?;

    let mut cmd = Command::new(&program);
    cmd.arg0(argv0)
        .args(&argv[1..])
        .current_dir(&cwd)
        .env_clear()
        .envs(env);
    if let Some(c) = &creds {
        // std drops the supplementary groups too (setgroups(0)) when a
        // root parent changes the uid.
        cmd.uid(c.uid).gid(c.gid);
    }
    let argv0 = argv0.clone();

    if !req.tty {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        return Ok(Prepared {
            cmd,
            master: None,
            argv0,
        });
    }

    let (master, slave) = open_pty(req.rows, req.cols).map_err(|e| {
        (
            AgentErrorCode::Failed,
            format!("open a pseudo-terminal: {e}"),
        )
    })?;
    if let Some(c) = &creds {
        // The terminal belongs to the user the process runs as (as login
        // and sshd do), so it can reopen /dev/tty and change its modes.
        let uid = rustix::process::Uid::from_raw(c.uid);
        let gid = rustix::process::Gid::from_raw(c.gid);
        if let Err(e) = rustix::fs::fchown(&slave, Some(uid), Some(gid)) {
            log!("chown the terminal to {}:{}: {e}", c.uid, c.gid);
        }
    }
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| (AgentErrorCode::Failed, format!("dup the terminal: {e}")))
    };
    cmd.stdin(Stdio::from(dup(&slave)?))
        .stdout(Stdio::from(dup(&slave)?))
        .stderr(Stdio::from(slave));
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes two system calls (no allocation, no locks): a new session,
    // and the terminal on fd 0 (already the pty slave) as its controlling
    // terminal.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            // SAFETY: fd 0 is open (the slave, set up before this runs)
            // for the whole call.
            let stdin = BorrowedFd::borrow_raw(0);
            rustix::process::ioctl_tiocsctty(stdin)?;
            Ok(())
        });
    }
    Ok(Prepared {
        cmd,
        master: Some(master),
        argv0,
    })
}

/// A pty pair of `rows` x `cols` (24x80 when either is zero).
fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let (rows, cols) = if rows == 0 || cols == 0 {
        (24, 80)
    } else {
        (rows, cols)
    };
    rustix::termios::tcsetwinsize(&master, winsize(rows, cols))?;
    Ok((master, slave))
}

/// `name` looked up like a shell does: as a path when it holds a `/`
/// (relative to `cwd`), else in each directory of `path`.
fn resolve(name: &str, path: &OsStr, cwd: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = cwd.join(name);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// Copies one output of the process into `Stdout`/`Stderr` frames until
/// end of file, or until told to stop (the process exited and something
/// else holds the pipe open).
fn pump(fd: OwnedFd, id: u64, is_stdout: bool, out: &Out, stop: &AtomicBool) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut after_stop = 0usize;
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(if stopping { &now } else { &tick })) {
            Ok(0) if stopping => break,
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let body = buf[..n].to_vec();
                let msg = if is_stdout {
                    Message::Stdout { id }
                } else {
                    Message::Stderr { id }
                };
                out.send(Frame::with_body(msg, body));
                if stopping {
                    after_stop += n;
                    if after_stop >= DRAIN_AFTER_STOP {
                        break;
                    }
                }
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            // EIO: a pty master whose slave is closed everywhere.
            Err(_) => break,
        }
    }
}

/// Writes stdin chunks to the process until the channel closes (stdin
/// closed, or the process ended); a process that stopped reading makes
/// the rest be dropped. After each chunk, says how much the process took
/// in all (`StdinRead`), which the host's flow control waits for; never
/// once the process has exited, so nothing about it follows `Exited`.
fn feed_stdin(id: u64, mut sink: File, rx: mpsc::Receiver<Vec<u8>>, ctl: &Control, out: &Out) {
    let mut broken = false;
    let mut taken = 0u64;
    for chunk in rx {
        if !broken {
            if let Err(e) = sink.write_all(&chunk) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    log!("write to a process's stdin: {e}");
                }
                broken = true;
            }
        }
        ctl.backlog.fetch_sub(chunk.len(), Ordering::AcqRel);
        taken += chunk.len() as u64;
        // Sent under the lock the waiter marks the exit with, before it
        // sends `Exited`: this frame is queued first or not at all.
        let exited = ctl.exited.lock().unwrap_or_else(|p| p.into_inner());
        if !*exited {
            out.send(Frame::new(Message::StdinRead { id, bytes: taken }));
        }
    }
}

/// What the waiter needs to end a process's story.
struct Finish {
    id: u64,
    child: Child,
    ctl: Arc<Control>,
    readers: Vec<JoinHandle<()>>,
    done: mpsc::Receiver<()>,
    stop: Arc<AtomicBool>,
    out: Out,
    sessions: Arc<Sessions>,
}

impl Finish {
    fn run(mut self) {
        // Wait without reaping, mark exited, then reap: `signal` checks
        // the mark under the same lock, so it never hits a reused pid.
        while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(
            WaitId::Pid(self.ctl.pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {}
        let status = {
            let mut exited = self.ctl.exited.lock().unwrap_or_else(|p| p.into_inner());
            *exited = true;
            self.child.wait()
        };
        // Output still in the pipes is read to the end; a background
        // process holding them open is given a grace period, no more.
        let deadline = Instant::now() + OUTPUT_GRACE;
        let mut left = self.readers.len();
        while left > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.done.recv_timeout(deadline - now) {
                Ok(()) => left -= 1,
                Err(_) => break,
            }
        }
        self.stop.store(true, Ordering::Release);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let (code, signal) = match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => (Some(c), None),
                (None, Some(sig)) => (None, Some(signal_name(sig))),
                (None, None) => (None, None),
            },
            Err(e) => {
                log!("exec {}: wait: {e}", self.id);
                (None, None)
            }
        };
        log!(
            "exec {}: pid {} ended ({})",
            self.id,
            self.ctl.pid.as_raw_nonzero(),
            match (&code, &signal) {
                (Some(c), _) => format!("code {c}"),
                (_, Some(s)) => format!("signal {s}"),
                _ => "unknown status".into(),
            }
        );
        self.out.send(Frame::new(Message::Exited {
            id: self.id,
            code,
            signal,
        }));
        // Closes stdin (ends the writer thread once it is done), after
        // `Exited`: input the host sent while the process was ending is
        // dropped by the writer, not answered with an error ahead of it.
        *self.ctl.stdin.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // Only now: input (a stdin EOF, a signal) the host sent while the
        // process was ending still finds the session, so no "no process"
        // error reaches the host ahead of `Exited`.
        let mut sessions = self.sessions.lock();
        if matches!(sessions.get(&self.id), Some(Session::Exec(c)) if Arc::ptr_eq(c, &self.ctl)) {
            sessions.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name() {
        assert_eq!(parse_signal("INT"), Some(Signal::INT));
        assert_eq!(parse_signal("sigterm"), Some(Signal::TERM));
        assert_eq!(parse_signal("KILL"), Some(Signal::KILL));
        assert_eq!(parse_signal("USR1"), None);
        assert_eq!(parse_signal(""), None);
        assert_eq!(signal_name(2), "INT");
        assert_eq!(signal_name(9), "KILL");
        assert_eq!(signal_name(64), "64");
    }

    #[test]
    fn commands_are_found_in_path() {
        let p = resolve("sh", OsStr::new(DEFAULT_PATH), Path::new("/")).unwrap();
        assert!(p.ends_with("sh"));
        assert_eq!(
            resolve(
                "no-such-command-banger",
                OsStr::new(DEFAULT_PATH),
                Path::new("/")
            ),
            None
        );
        assert_eq!(
            resolve("/bin/sh", OsStr::new(""), Path::new("/")),
            Some(PathBuf::from("/bin/sh"))
        );
        // Relative PATH entries are not searched.
        assert_eq!(resolve("sh", OsStr::new("bin"), Path::new("/")), None);
    }
}
