//! The real `banger-agent` binary on the host, driven over `--stdio` (and
//! `--device` on a pty) with protocol frames: no VM needed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use banger_proto::agent::{
    AGENT_PROTOCOL_VERSION, AgentErrorCode, FRAME_MAGIC, Frame, FrameDecoder, MAX_BODY_BYTES,
    Message, encode,
};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(20);

/// One agent process and the frames it sent that no one took yet.
struct Agent {
    child: Child,
    input: Box<dyn Write + Send>,
    frames: mpsc::Receiver<Frame>,
    backlog: VecDeque<Frame>,
    /// Keeps the pty of the `--device` agent open (both ends: a master
    /// reads EIO while no slave is open).
    _pty: Vec<OwnedFd>,
}

fn stderr() -> Stdio {
    if std::env::var_os("BANGER_AGENT_TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Reads frames from `r` into a channel until end of file, or until
/// `stop` is set (then `r` is closed).
fn read_frames(
    mut r: impl Read + AsFd + Send + 'static,
    stop: Arc<AtomicBool>,
) -> mpsc::Receiver<Frame> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut d = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let tick = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let mut fds = [rustix::event::PollFd::new(&r, rustix::event::PollFlags::IN)];
            if rustix::event::poll(&mut fds, Some(&tick)).unwrap_or(1) == 0 {
                continue;
            }
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            d.push(&buf[..n]);
            while let Some(f) = d.next_frame() {
                let f = f.expect("the agent sends only good frames");
                if tx.send(f).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

impl Agent {
    fn stdio() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
            .arg("--stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr())
            .spawn()
            .unwrap();
        let input = Box::new(child.stdin.take().unwrap());
        let frames = read_frames(child.stdout.take().unwrap(), Arc::default());
        let mut a = Agent {
            child,
            input,
            frames,
            backlog: VecDeque::new(),
            _pty: Vec::new(),
        };
        a.expect_hello();
        a
    }

    fn expect_hello(&mut self) {
        let f = self.take(|f| matches!(f.msg, Message::Hello { .. }));
        assert_eq!(
            f.msg,
            Message::Hello {
                protocol: AGENT_PROTOCOL_VERSION,
                version: env!("CARGO_PKG_VERSION").into(),
                capabilities: vec![
                    "set_time".into(),
                    "freeze".into(),
                    "identity".into(),
                    "identity_host_key".into(),
                    "tree".into(),
                    "stdin_ack".into()
                ],
            }
        );
    }

    fn send(&mut self, frame: Frame) {
        self.raw(&encode(&frame));
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.input.write_all(bytes).unwrap();
        self.input.flush().unwrap();
    }

    /// The first frame (kept or arriving within `timeout`) that `want`
    /// accepts; the others are kept.
    fn try_take(&mut self, timeout: Duration, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
        if let Some(i) = self.backlog.iter().position(&want) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(f) if want(&f) => return Some(f),
                Ok(f) => self.backlog.push_back(f),
                Err(_) => return None,
            }
        }
    }

    fn take(&mut self, want: impl Fn(&Frame) -> bool) -> Frame {
        match self.try_take(WAIT, want) {
            Some(f) => f,
            None => panic!("no such frame within {WAIT:?}; got {:?}", self.backlog),
        }
    }

    /// The next frame about request `id`.
    fn next_for(&mut self, id: u64) -> Frame {
        self.take(|f| f.msg.id() == Some(id))
    }

    fn health(&mut self, id: u64) {
        self.send(Frame::new(Message::Health { id }));
        let f = self.next_for(id);
        assert!(
            matches!(f.msg, Message::HealthOk { uptime_s, .. } if uptime_s > 0.0),
            "{f:?}"
        );
    }

    /// Runs a command; returns (stdout, stderr, code, signal).
    fn exec(
        &mut self,
        msg: Message,
        stdin: &[&[u8]],
    ) -> (Vec<u8>, Vec<u8>, Option<i32>, Option<String>) {
        let id = msg.id().unwrap();
        self.send(Frame::new(msg));
        let started = self.next_for(id);
        assert!(
            matches!(started.msg, Message::Started { .. }),
            "{started:?}"
        );
        for chunk in stdin {
            self.send(Frame::with_body(Message::Stdin { id }, chunk.to_vec()));
        }
        self.collect_exec(id)
    }

    fn collect_exec(&mut self, id: u64) -> (Vec<u8>, Vec<u8>, Option<i32>, Option<String>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let f = self.next_for(id);
            match f.msg {
                Message::Stdout { .. } => out.extend_from_slice(&f.body),
                Message::Stderr { .. } => err.extend_from_slice(&f.body),
                // Flow control: how much stdin the process took so far.
                Message::StdinRead { .. } => {}
                Message::Exited { code, signal, .. } => {
                    // Nothing about this id after Exited.
                    self.health(id + 1_000_000);
                    assert!(
                        self.backlog.iter().all(|f| f.msg.id() != Some(id)),
                        "frames after Exited: {:?}",
                        self.backlog
                    );
                    return (out, err, code, signal);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn error_for(&mut self, id: u64) -> (AgentErrorCode, String) {
        match self.next_for(id).msg {
            Message::Error { code, message, .. } => (code, message),
            other => panic!("expected an error for {id}, got {other:?}"),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exec(id: u64, argv: &[&str]) -> Message {
    Message::Exec {
        id,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        cwd: None,
        tty: false,
        rows: 0,
        cols: 0,
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("banger-agent-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn hello_and_a_peer_of_another_protocol() {
    let mut a = Agent::stdio();
    a.send(Frame::new(Message::Hello {
        protocol: AGENT_PROTOCOL_VERSION + 98,
        version: "9.9.9".into(),
        capabilities: Vec::new(),
    }));
    let f = a.take(|f| matches!(f.msg, Message::Error { .. }));
    assert_eq!(
        f.msg,
        Message::Error {
            id: None,
            code: AgentErrorCode::BadVersion,
            message: format!(
                "agent speaks protocol {AGENT_PROTOCOL_VERSION}, peer {}",
                AGENT_PROTOCOL_VERSION + 98
            ),
        }
    );
    // Its requests are ignored…
    a.send(Frame::new(Message::Health { id: 1 }));
    assert!(
        a.try_take(Duration::from_millis(500), |f| f.msg.id() == Some(1))
            .is_none()
    );
    // …until a matching hello, which is answered with one.
    a.send(Frame::new(Message::Hello {
        protocol: AGENT_PROTOCOL_VERSION,
        version: "test".into(),
        capabilities: Vec::new(),
    }));
    a.expect_hello();
    a.health(2);
}

#[test]
fn stats_match_the_host() {
    let mut a = Agent::stdio();
    a.send(Frame::new(Message::Stats { id: 5 }));
    let Message::StatsReply { id, stats } = a.next_for(5).msg else {
        panic!("no stats");
    };
    assert_eq!(id, 5);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    // Present pages: at least MemTotal, and within 10% of it (the kernel's
    // boot reservations).
    let mem_total = total_kib * 1024;
    assert!(
        stats.memory_total_bytes >= mem_total
            && (stats.memory_total_bytes - mem_total) as f64 / (mem_total as f64) < 0.10,
        "{} vs MemTotal {mem_total}",
        stats.memory_total_bytes
    );
    assert!(stats.memory_available_bytes <= stats.memory_total_bytes);
    assert!(stats.uptime_s > 0.0);
    assert!(stats.cpu.busy + stats.cpu.idle > 0);
    for d in &stats.disks {
        assert!(d.used_bytes <= d.total_bytes, "{d:?}");
        assert!(d.mount.starts_with('/'), "{d:?}");
    }
}

#[test]
fn ports_name_the_listening_process() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tport, uport) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let mut a = Agent::stdio();
    a.send(Frame::new(Message::Ports { id: 3 }));
    let Message::PortsReply { ports, .. } = a.next_for(3).msg else {
        panic!("no ports");
    };
    for (proto, port) in [("tcp", tport), ("udp", uport)] {
        let p = ports
            .iter()
            .find(|p| p.proto == proto && p.port == port)
            .unwrap_or_else(|| panic!("{proto} {port} not in {ports:?}"));
        assert_eq!(p.address, "127.0.0.1");
        assert_eq!(p.pid, Some(std::process::id()), "{p:?}");
        assert_eq!(p.process.as_deref(), Some(me.trim_end()), "{p:?}");
    }
}

#[test]
fn stdin_read_says_how_much_the_process_took() {
    let mut a = Agent::stdio();
    // A reader that waits first: what it takes is said as it takes it.
    a.send(Frame::new(exec(
        40,
        &["sh", "-c", "sleep 0.3; wc -c; sleep 0.2"],
    )));
    assert!(matches!(a.next_for(40).msg, Message::Started { .. }));
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..3 {
        a.send(Frame::with_body(Message::Stdin { id: 40 }, chunk.clone()));
    }
    let mut read = Vec::new();
    while read.last() != Some(&(3 * 64 * 1024)) {
        match a.next_for(40).msg {
            Message::StdinRead { bytes, .. } => read.push(bytes),
            other => panic!("expected stdin_read, got {other:?}"),
        }
    }
    assert_eq!(read, [64 * 1024, 2 * 64 * 1024, 3 * 64 * 1024]);
    a.send(Frame::new(Message::Stdin { id: 40 }));
    let (out, _, code, _) = a.collect_exec(40);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "196608");
    assert_eq!(code, Some(0));
}

#[test]
fn exec_codes_outputs_stdin_and_env() {
    let mut a = Agent::stdio();
    let (_, _, code, signal) = a.exec(exec(1, &["sh", "-c", "exit 7"]), &[]);
    assert_eq!((code, signal), (Some(7), None));

    let (out, err, code, _) = a.exec(
        exec(2, &["sh", "-c", "echo out; echo err >&2; echo more"]),
        &[],
    );
    assert_eq!(out, b"out\nmore\n");
    assert_eq!(err, b"err\n");
    assert_eq!(code, Some(0));

    let (out, _, code, _) = a.exec(exec(3, &["cat"]), &[b"hello ", b"agent\n", b""]);
    assert_eq!(out, b"hello agent\n");
    assert_eq!(code, Some(0));

    let msg = Message::Exec {
        id: 4,
        argv: vec!["sh".into(), "-c".into(), "echo $FOO; pwd; echo $0".into()],
        env: vec![("FOO".into(), "bar baz".into())],
        cwd: Some("/tmp".into()),
        tty: false,
        rows: 0,
        cols: 0,
    };
    let (out, _, code, _) = a.exec(msg, &[]);
    assert_eq!(String::from_utf8_lossy(&out), "bar baz\n/tmp\nsh\n");
    assert_eq!(code, Some(0));

    // Large output arrives whole and in order.
    let (out, _, code, _) = a.exec(exec(5, &["seq", "1", "200000"]), &[]);
    let want: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.len(), want.len());
    assert!(out == want.as_bytes());
    assert_eq!(code, Some(0));

    // A background child holding stdout open does not hold Exited back
    // for long.
    let t = Instant::now();
    let (out, _, code, _) = a.exec(exec(6, &["sh", "-c", "sleep 5 & echo bg"]), &[]);
    assert_eq!(out, b"bg\n");
    assert_eq!(code, Some(0));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[test]
fn exec_signals_and_errors() {
    let mut a = Agent::stdio();
    a.send(Frame::new(exec(10, &["sleep", "30"])));
    assert!(matches!(a.next_for(10).msg, Message::Started { .. }));
    a.send(Frame::new(Message::Signal {
        id: 10,
        signal: "INT".into(),
    }));
    let (_, _, code, signal) = a.collect_exec(10);
    assert_eq!((code, signal.as_deref()), (None, Some("INT")));

    // No such command: one error and nothing else.
    a.send(Frame::new(exec(11, &["no-such-command-for-banger"])));
    let (code, message) = a.error_for(11);
    assert_eq!(code, AgentErrorCode::NotFound, "{message}");
    assert!(message.contains("no-such-command-for-banger"), "{message}");
    a.health(12);
    assert!(
        a.backlog.iter().all(|f| f.msg.id() != Some(11)),
        "{:?}",
        a.backlog
    );

    // Requests about processes that do not exist.
    a.send(Frame::with_body(Message::Stdin { id: 99 }, b"x".to_vec()));
    assert_eq!(a.error_for(99).0, AgentErrorCode::NotFound);
    a.send(Frame::new(Message::Signal {
        id: 98,
        signal: "TERM".into(),
    }));
    assert_eq!(a.error_for(98).0, AgentErrorCode::NotFound);
    a.send(Frame::new(Message::Resize {
        id: 97,
        rows: 1,
        cols: 1,
    }));
    assert_eq!(a.error_for(97).0, AgentErrorCode::NotFound);
    a.send(Frame::new(Message::Signal {
        id: 96,
        signal: "USR1".into(),
    }));
    assert_eq!(a.error_for(96).0, AgentErrorCode::BadRequest);
    a.send(Frame::new(exec(95, &[])));
    assert_eq!(a.error_for(95).0, AgentErrorCode::BadRequest);
    let mut bad_cwd = exec(94, &["true"]);
    if let Message::Exec { cwd, .. } = &mut bad_cwd {
        *cwd = Some("/no/such/dir".into());
    }
    a.send(Frame::new(bad_cwd));
    assert_eq!(a.error_for(94).0, AgentErrorCode::NotFound);
    // An id in use is refused.
    a.send(Frame::new(exec(93, &["sleep", "30"])));
    assert!(matches!(a.next_for(93).msg, Message::Started { .. }));
    a.send(Frame::new(exec(93, &["true"])));
    assert_eq!(a.error_for(93).0, AgentErrorCode::BadRequest);
    a.send(Frame::new(Message::Signal {
        id: 93,
        signal: "KILL".into(),
    }));
    let (_, _, _, signal) = a.collect_exec(93);
    assert_eq!(signal.as_deref(), Some("KILL"));
    // A reply from the host is not a request.
    a.send(Frame::new(Message::Done { id: 92 }));
    assert_eq!(a.error_for(92).0, AgentErrorCode::BadRequest);
}

#[test]
fn exec_on_a_tty() {
    let mut a = Agent::stdio();
    let msg = Message::Exec {
        id: 20,
        argv: vec!["tty".into()],
        env: Vec::new(),
        cwd: None,
        tty: true,
        rows: 30,
        cols: 100,
    };
    let (out, err, code, _) = a.exec(msg, &[]);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(err.is_empty());
    assert_eq!(code, Some(0));

    // Size, resize, and ^C as the terminal's interrupt.
    let msg = Message::Exec {
        id: 21,
        argv: vec![
            "sh".into(),
            "-c".into(),
            "stty size; read x; stty size; read y; echo never".into(),
        ],
        env: Vec::new(),
        cwd: None,
        tty: true,
        rows: 30,
        cols: 100,
    };
    a.send(Frame::new(msg));
    assert!(matches!(a.next_for(21).msg, Message::Started { .. }));
    let mut out = Vec::new();
    let mut wait_for = |a: &mut Agent, text: &str| {
        while !String::from_utf8_lossy(&out).contains(text) {
            let f = a.next_for(21);
            if matches!(f.msg, Message::StdinRead { .. }) {
                continue;
            }
            assert!(matches!(f.msg, Message::Stdout { .. }), "{f:?}");
            out.extend_from_slice(&f.body);
        }
    };
    wait_for(&mut a, "30 100");
    a.send(Frame::new(Message::Resize {
        id: 21,
        rows: 40,
        cols: 120,
    }));
    a.send(Frame::with_body(Message::Stdin { id: 21 }, b"\n".to_vec()));
    wait_for(&mut a, "40 120");
    a.send(Frame::new(Message::Signal {
        id: 21,
        signal: "INT".into(),
    }));
    let (rest, _, code, signal) = a.collect_exec(21);
    assert!(!String::from_utf8_lossy(&rest).contains("never"));
    assert_eq!((code, signal.as_deref()), (None, Some("INT")));
}

fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn files_round_trip() {
    let dir = tmpdir("files");
    let path = dir.join("blob.bin");
    let data = random_bytes(5 * 1024 * 1024 + 123, 0x1234_5678_9abc_def1);
    let mut a = Agent::stdio();
    a.send(Frame::new(Message::WriteFile {
        id: 30,
        path: path.display().to_string(),
        mode: 0o100640,
    }));
    for chunk in data.chunks(MAX_BODY_BYTES) {
        a.send(Frame::with_body(
            Message::FileData { id: 30 },
            chunk.to_vec(),
        ));
    }
    a.send(Frame::new(Message::FileEnd { id: 30 }));
    assert_eq!(a.next_for(30).msg, Message::Done { id: 30 });
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        Sha256::digest(std::fs::read(&path).unwrap()),
        Sha256::digest(&data)
    );
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    a.send(Frame::new(Message::ReadFile {
        id: 31,
        path: path.display().to_string(),
    }));
    assert_eq!(
        a.next_for(31).msg,
        Message::FileInfo {
            id: 31,
            mode: 0o640,
            size: data.len() as u64
        }
    );
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    loop {
        let f = a.next_for(31);
        match f.msg {
            Message::FileData { .. } => {
                assert!(f.body.len() <= MAX_BODY_BYTES);
                got += f.body.len();
                hasher.update(&f.body);
            }
            Message::FileEnd { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, data.len());
    assert_eq!(hasher.finalize(), Sha256::digest(&data));

    // Replacing keeps one file; an empty upload makes an empty file.
    a.send(Frame::new(Message::WriteFile {
        id: 32,
        path: path.display().to_string(),
        mode: 0o600,
    }));
    a.send(Frame::new(Message::FileEnd { id: 32 }));
    assert_eq!(a.next_for(32).msg, Message::Done { id: 32 });
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o600
    );

    // Errors.
    let missing_parent = dir.join("no/such/file");
    a.send(Frame::new(Message::WriteFile {
        id: 33,
        path: missing_parent.display().to_string(),
        mode: 0o644,
    }));
    assert_eq!(a.error_for(33).0, AgentErrorCode::NotFound);
    a.send(Frame::new(Message::WriteFile {
        id: 34,
        path: "relative/file".into(),
        mode: 0o644,
    }));
    assert_eq!(a.error_for(34).0, AgentErrorCode::BadRequest);
    a.send(Frame::new(Message::WriteFile {
        id: 35,
        path: dir.display().to_string(),
        mode: 0o644,
    }));
    assert_eq!(a.error_for(35).0, AgentErrorCode::BadRequest);
    a.send(Frame::new(Message::ReadFile {
        id: 36,
        path: dir.join("absent").display().to_string(),
    }));
    assert_eq!(a.error_for(36).0, AgentErrorCode::NotFound);
    a.send(Frame::new(Message::ReadFile {
        id: 37,
        path: dir.display().to_string(),
    }));
    assert_eq!(a.error_for(37).0, AgentErrorCode::IsDirectory);
    // A symlink to a FIFO is refused (reading it would block).
    let fifo = dir.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink(&fifo, dir.join("link")).unwrap();
    a.send(Frame::new(Message::ReadFile {
        id: 38,
        path: dir.join("link").display().to_string(),
    }));
    assert_eq!(a.error_for(38).0, AgentErrorCode::BadRequest);
    a.send(Frame::with_body(
        Message::FileData { id: 39 },
        b"x".to_vec(),
    ));
    assert_eq!(a.error_for(39).0, AgentErrorCode::NotFound);
    a.send(Frame::new(Message::FileEnd { id: 40 }));
    assert_eq!(a.error_for(40).0, AgentErrorCode::NotFound);

    // An upload abandoned by a reconnecting host leaves no temporary file.
    a.send(Frame::new(Message::WriteFile {
        id: 41,
        path: dir.join("half").display().to_string(),
        mode: 0o644,
    }));
    a.send(Frame::with_body(
        Message::FileData { id: 41 },
        b"half".to_vec(),
    ));
    a.send(Frame::new(Message::Hello {
        protocol: AGENT_PROTOCOL_VERSION,
        version: "test".into(),
        capabilities: Vec::new(),
    }));
    a.expect_hello();
    a.send(Frame::with_body(
        Message::FileData { id: 41 },
        b"x".to_vec(),
    ));
    assert_eq!(a.error_for(41).0, AgentErrorCode::NotFound);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if !names.iter().any(|n| n.contains("half")) {
            break;
        }
        assert!(Instant::now() < deadline, "{names:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends Health frames until one is answered: after a frame cut short the
/// next bytes are taken as its rest, so the first may be swallowed.
/// Collects a `read_tree` answer: the tar stream, or the error.
fn read_tree(a: &mut Agent, id: u64, path: &std::path::Path) -> Result<Vec<u8>, AgentErrorCode> {
    a.send(Frame::new(Message::ReadTree {
        id,
        path: path.display().to_string(),
    }));
    let mut stream = Vec::new();
    loop {
        let f = a.next_for(id);
        match f.msg {
            Message::FileData { .. } => stream.extend_from_slice(&f.body),
            Message::FileEnd { .. } => return Ok(stream),
            Message::Error { code, .. } => return Err(code),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn trees_round_trip() {
    let dir = tmpdir("trees");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    let big = random_bytes(3 * 1024 * 1024 + 7, 0x0bad_cafe_dead_beef);
    std::fs::write(src.join("sub/big.bin"), &big).unwrap();
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink("sub/big.bin", src.join("link")).unwrap();
    let long = "n".repeat(150);
    std::fs::write(src.join("sub/deeper").join(&long), b"long name").unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(src.join("fifo"))
            .status()
            .unwrap()
            .success()
    );

    let mut a = Agent::stdio();
    let stream = read_tree(&mut a, 50, &src).unwrap();
    let entries: Vec<(String, tar::EntryType)> = tar::Archive::new(stream.as_slice())
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            (name, e.header().entry_type())
        })
        .collect();
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], ".", "{names:?}");
    // A FIFO travels as a header alone (the host counts it as left out).
    assert!(
        entries.contains(&("fifo".into(), tar::EntryType::Fifo)),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.ends_with(&long)), "{names:?}");

    // Back in under another name (the path does not exist: it is the top).
    let copy = dir.join("copy");
    a.send(Frame::new(Message::WriteTree {
        id: 51,
        path: copy.display().to_string(),
        name: "src".into(),
    }));
    for chunk in stream.chunks(MAX_BODY_BYTES / 3) {
        a.send(Frame::with_body(
            Message::FileData { id: 51 },
            chunk.to_vec(),
        ));
    }
    a.send(Frame::new(Message::FileEnd { id: 51 }));
    let Message::TreeDone {
        root,
        entries,
        bytes,
        ..
    } = a.next_for(51).msg
    else {
        panic!("no tree_done");
    };
    assert_eq!(root, copy.display().to_string());
    assert_eq!(
        entries, 7,
        "., link, run.sh, sub, sub/big.bin, sub/deeper, its file"
    );
    assert_eq!(bytes, big.len() as u64 + 18 + 9);
    assert_eq!(std::fs::read(copy.join("sub/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::metadata(copy.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o751
    );
    assert_eq!(
        std::fs::read_link(copy.join("link")).unwrap(),
        std::path::Path::new("sub/big.bin")
    );
    assert_eq!(
        std::fs::read(copy.join("sub/deeper").join(&long)).unwrap(),
        b"long name"
    );

    // Into an existing directory: it lands inside, under its name.
    a.send(Frame::new(Message::WriteTree {
        id: 52,
        path: copy.display().to_string(),
        name: "again".into(),
    }));
    for chunk in stream.chunks(MAX_BODY_BYTES) {
        a.send(Frame::with_body(
            Message::FileData { id: 52 },
            chunk.to_vec(),
        ));
    }
    a.send(Frame::new(Message::FileEnd { id: 52 }));
    assert!(matches!(a.next_for(52).msg, Message::TreeDone { .. }));
    assert_eq!(
        std::fs::read(copy.join("again/sub/big.bin")).unwrap().len(),
        big.len()
    );

    // Errors: not a directory, absent, a missing parent, a bad name.
    assert_eq!(
        read_tree(&mut a, 53, &src.join("run.sh")),
        Err(AgentErrorCode::NotDirectory)
    );
    assert_eq!(
        read_tree(&mut a, 54, &src.join("absent")),
        Err(AgentErrorCode::NotFound)
    );
    a.send(Frame::new(Message::WriteTree {
        id: 55,
        path: dir.join("no/such").display().to_string(),
        name: "x".into(),
    }));
    assert_eq!(a.error_for(55).0, AgentErrorCode::NotFound);
    a.send(Frame::new(Message::WriteTree {
        id: 56,
        path: dir.display().to_string(),
        name: "../up".into(),
    }));
    assert_eq!(a.error_for(56).0, AgentErrorCode::BadRequest);
    let _ = std::fs::remove_dir_all(&dir);
}

fn health_eventually(a: &mut Agent, base: u64) {
    for k in 0..8 {
        a.send(Frame::new(Message::Health { id: base + k }));
        if a.try_take(
            Duration::from_millis(500),
            |f| matches!(f.msg, Message::HealthOk { id, .. } if id >= base && id < base + 8),
        )
        .is_some()
        {
            return;
        }
    }
    panic!("no health answer after bad input; got {:?}", a.backlog);
}

fn bad_frames(a: &mut Agent) -> u64 {
    let count_errors = |a: &mut Agent| {
        let mut n = 0;
        while a
            .try_take(Duration::from_millis(300), |f| {
                matches!(
                    f.msg,
                    Message::Error {
                        id: None,
                        code: AgentErrorCode::BadFrame,
                        ..
                    }
                )
            })
            .is_some()
        {
            n += 1;
        }
        n
    };
    let mut base = 1000;
    let mut errors = 0;
    // Garbage.
    a.raw(b"this is not a frame at all \x00\xff\x13\x37");
    health_eventually(a, base);
    errors += count_errors(a);
    base += 10;
    // A header that is not JSON, then one that is JSON but no message.
    for header in [
        &b"{not json"[..],
        br#"{"type":"launch_missiles"}"#,
        br#"{"type":"health"}"#,
    ] {
        let mut f = FRAME_MAGIC.to_vec();
        f.extend_from_slice(&(header.len() as u32).to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(header);
        a.raw(&f);
        health_eventually(a, base);
        base += 10;
    }
    errors += count_errors(a);
    // Oversize lengths.
    for (h, b) in [(u32::MAX, 0u32), (10, u32::MAX), (0, 0), (70_000, 5)] {
        let mut f = FRAME_MAGIC.to_vec();
        f.extend_from_slice(&h.to_be_bytes());
        f.extend_from_slice(&b.to_be_bytes());
        a.raw(&f);
        health_eventually(a, base);
        base += 10;
    }
    errors += count_errors(a);
    // A frame cut short (its header claims more than follows).
    let good = encode(&Frame::new(Message::Stats { id: 7 }));
    a.raw(&good[..good.len() - 4]);
    health_eventually(a, base);
    errors += count_errors(a);
    errors
}

#[test]
fn bad_frames_never_kill_the_agent() {
    let mut a = Agent::stdio();
    let errors = bad_frames(&mut a);
    assert!(errors >= 5, "only {errors} BadFrame errors");
    assert!(a.child.try_wait().unwrap().is_none(), "the agent exited");
    a.health(1);
}

#[test]
fn device_transport_on_a_pty() {
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .unwrap();
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let slave = PathBuf::from(name.to_str().unwrap());
    // Raw before the agent starts, so nothing it sends is echoed.
    let s = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave)
        .unwrap();
    let mut t = rustix::termios::tcgetattr(s.as_fd()).unwrap();
    t.make_raw();
    rustix::termios::tcsetattr(s.as_fd(), rustix::termios::OptionalActions::Now, &t).unwrap();
    // The agent opens the pty through a link, removed before the pty
    // closes: reopening then fails instead of finding another process's
    // new pty under the same number.
    let dir = tmpdir("device");
    let link = dir.join("port");
    std::os::unix::fs::symlink(&slave, &link).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
        .arg("--device")
        .arg(&link)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr())
        .spawn()
        .unwrap();
    let reader = std::fs::File::from(master.try_clone().unwrap());
    let writer = std::fs::File::from(master.try_clone().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut a = Agent {
        child,
        input: Box::new(writer),
        frames: read_frames(reader, Arc::clone(&stop)),
        backlog: VecDeque::new(),
        _pty: vec![master, OwnedFd::from(s)],
    };
    a.expect_hello();
    a.send(Frame::new(Message::Hello {
        protocol: AGENT_PROTOCOL_VERSION,
        version: "test".into(),
        capabilities: Vec::new(),
    }));
    a.expect_hello();
    a.health(1);
    let (out, _, code, _) = a.exec(exec(2, &["echo", "over a pty"]), &[]);
    assert_eq!((out.as_slice(), code), (&b"over a pty\n"[..], Some(0)));
    std::fs::remove_dir_all(&dir).unwrap();
    // The other end goes away for good: reads fail, the agent tries to
    // reopen the device (which is gone) and keeps trying; it never exits.
    a._pty.clear();
    a.input = Box::new(std::io::sink());
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.child.try_wait().unwrap().is_none(), "the agent exited");
}
