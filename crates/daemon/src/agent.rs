//! The daemon's side of the guest agent protocol (`proto::agent`, docs/agent.md).
//!
//! One [`AgentConn`] per running VM with an agent: a Unix-socket
//! connection to the host end of the VM's virtio-serial port (QEMU listens
//! on `agent.sock`), a reader task that decodes frames and routes each to
//! the request with its id, and a writer task. Requests choose their ids;
//! a request's receiver gets every frame about it until it is dropped.
//!
//! The first frame each side sends is `Hello`: the daemon repeats its own
//! every second until the agent's arrives (the agent may still be booting,
//! or may have been running since before this daemon started); an agent of
//! another protocol version is refused with a clear error. The agent's
//! `Hello` lists the requests it answers beyond protocol 1's first set
//! (`capabilities`); [`AgentConn::require`] refuses, with
//! [`AgentError::TooOld`], to ask an agent for one it did not list.
//!
//! Bounded end to end: nothing a guest sends is buffered without limit.
//! Each request's channel holds at most [`REQUEST_FRAMES`] frames (each
//! at most `proto::agent::MAX_BODY_BYTES`; the agent sends file data in
//! 256 KiB chunks), and the reader task *awaits* room in it. While it
//! waits it reads nothing more from the socket, so the socket's buffer
//! fills, QEMU stops taking data from the virtio-serial port and the
//! guest's writes block: a guest streaming faster than the host consumes
//! is slowed down to the host's pace instead of growing the daemon.
//! Frames without a request id (only `Hello` and id-less errors) go to a
//! small channel and are dropped when it is full.
//!
//! The trade-off: one connection carries every request of the VM, so
//! while the reader waits on one request's full channel, frames for the
//! other requests wait behind it (a `vm stats` during a `vm cp` from the
//! guest to a slow disk answers late, or times out). That is safe, not a
//! deadlock, because every consumer keeps draining its receiver without
//! waiting on another request of the same connection: copies to the host
//! hand each frame to a writer thread that only waits on the disk, exec
//! sessions copy output into their own capped buffers and never block
//! (output past that cap is dropped and reported as truncated), and
//! one-frame calls wait for one frame. A request whose consumer gives up
//! drops its receiver (after [`AgentConn::finish`]), which ends a wait
//! on it at once. The agent itself drops frames after the host has not
//! read for 5 s (crates/agent/src/outbox.rs), so a consumer must never
//! stop draining for that long.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_proto::agent::{
    AGENT_PROTOCOL_VERSION, AgentErrorCode, Frame, FrameDecoder, Message, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connect to the guest agent at {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent did not answer within {0} s")]
    Timeout(u64),
    #[error("reach guest vsock port {port} through {socket}")]
    Vsock {
        socket: PathBuf,
        port: u32,
        #[source]
        source: VsockError,
    },
    #[error("the guest agent speaks protocol {theirs}, this daemon {ours}: rebuild the image")]
    Version { theirs: u32, ours: u32 },
    #[error("the connection to the guest agent was lost")]
    Lost,
    #[error("the guest agent refused: {message} ({code:?})")]
    Refused {
        code: AgentErrorCode,
        message: String,
    },
    #[error("the guest agent answered {0}")]
    Unexpected(String),
    /// The agent (built into the VM's image) predates the request.
    #[error(
        "the guest agent (banger-agent {version}) is too old for {request} requests: rebuild the image"
    )]
    TooOld {
        version: String,
        request: &'static str,
    },
}

/// Why Firecracker's hybrid vsock did not connect to a guest port.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("write the CONNECT request")]
    Write(#[source] std::io::Error),
    #[error("read the answer")]
    Read(#[source] std::io::Error),
    /// Firecracker closes the connection when nothing in the guest
    /// listens on the port (yet: the agent may still be starting).
    #[error("closed without an answer: nothing listens on the port in the guest")]
    Refused,
    #[error("answered {0:?}, not OK")]
    Answer(String),
}

/// Longest answer line read: `OK ` and a host-side port number.
const VSOCK_ANSWER_MAX: usize = 32;

/// Firecracker's host-initiated hybrid vsock connection
/// (`../shared/reference/firecracker-api.yaml`, `Vsock`): on a stream
/// connected to the device's `uds_path`, `CONNECT PORT\n`, answered
/// `OK HOST_PORT\n`; after that the stream is the guest's connection.
/// The answer is read a byte at a time so nothing past its newline (the
/// guest's first bytes) is consumed; a line longer than
/// [`VSOCK_ANSWER_MAX`] is refused. Hand-written: it is one line each way.
pub async fn hybrid_vsock_handshake(stream: &mut UnixStream, port: u32) -> Result<(), VsockError> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(VsockError::Write)?;
    let mut line = Vec::with_capacity(VSOCK_ANSWER_MAX);
    loop {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(0) if line.is_empty() => return Err(VsockError::Refused),
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            // Firecracker resets the connection when the port is closed.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(VsockError::Refused);
            }
            Err(e) => return Err(VsockError::Read(e)),
        }
        if line.len() > VSOCK_ANSWER_MAX {
            break;
        }
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    let ok = text
        .strip_prefix("OK ")
        .is_some_and(|p| p.parse::<u32>().is_ok());
    if ok && line.len() <= VSOCK_ANSWER_MAX {
        Ok(())
    } else {
        Err(VsockError::Answer(text))
    }
}

/// Frames queued per request before the reader waits (see the module
/// doc): at 256 KiB of file data per frame, 4 MiB per request.
pub const REQUEST_FRAMES: usize = 16;

/// Frames without a request id kept until `connect` reads them.
const UNROUTED_FRAMES: usize = 8;

type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Frame>>>>;

/// A live connection to one VM's agent.
#[derive(Debug)]
pub struct AgentConn {
    writer: mpsc::Sender<Vec<u8>>,
    routes: Routes,
    next_id: AtomicU64,
    closed: CancellationToken,
    /// The agent's software version, from its `Hello`.
    pub agent_version: String,
    /// The `capabilities` of its `Hello` (`proto::agent::capability`).
    pub capabilities: Vec<String>,
}

impl Drop for AgentConn {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

fn routes_lock(
    r: &Mutex<HashMap<u64, mpsc::Sender<Frame>>>,
) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Frame>>> {
    // A plain routing map; a panicked holder leaves it consistent.
    r.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentConn {
    /// Connects and waits (up to `timeout`) for the agent's `Hello`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Arc<Self>, AgentError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| AgentError::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        Self::establish(stream, timeout).await
    }

    /// [`AgentConn::connect`] through Firecracker's hybrid vsock: its Unix
    /// socket, then `CONNECT PORT` to the guest port the agent listens on
    /// (see [`hybrid_vsock_handshake`]).
    pub async fn connect_vsock(
        socket: &Path,
        port: u32,
        timeout: Duration,
    ) -> Result<Arc<Self>, AgentError> {
        let mut stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| AgentError::Connect {
                    socket: socket.to_owned(),
                    source,
                })?;
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::timeout_at(deadline, hybrid_vsock_handshake(&mut stream, port))
            .await
            .map_err(|_| AgentError::Timeout(timeout.as_secs()))?
            .map_err(|source| AgentError::Vsock {
                socket: socket.to_owned(),
                port,
                source,
            })?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        Self::establish(stream, left).await
    }

    /// The frame reader and writer on a connected stream, then the
    /// `Hello` exchange (up to `timeout`).
    async fn establish(stream: UnixStream, timeout: Duration) -> Result<Arc<Self>, AgentError> {
        let (mut read, mut write) = stream.into_split();
        let closed = CancellationToken::new();
        let routes: Routes = Arc::default();

        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(64);
        let wclosed = closed.clone();
        tokio::spawn(async move {
            loop {
                let bytes = tokio::select! {
                    _ = wclosed.cancelled() => return,
                    b = wrx.recv() => match b { Some(b) => b, None => return },
                };
                if write.write_all(&bytes).await.is_err() {
                    wclosed.cancel();
                    return;
                }
            }
        });

        let (hello_tx, mut hello_rx) = mpsc::channel::<Message>(UNROUTED_FRAMES);
        let rroutes = Arc::clone(&routes);
        let rclosed = closed.clone();
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tokio::select! {
                    _ = rclosed.cancelled() => break,
                    r = read.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
                };
                decoder.push(&buf[..n]);
                while let Some(next) = decoder.next_frame() {
                    match next {
                        Ok(frame) => {
                            // Waits while the request's channel is full:
                            // backpressure to the guest (module doc).
                            tokio::select! {
                                _ = rclosed.cancelled() => break,
                                () = route(&rroutes, &hello_tx, frame) => {}
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "bad frame from the guest agent"),
                    }
                }
                if rclosed.is_cancelled() {
                    break;
                }
            }
            rclosed.cancel();
            // Dropping the senders ends every request's receiver.
            routes_lock(&rroutes).clear();
        });

        let hello = encode(&Frame::new(Message::Hello {
            protocol: AGENT_PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Vec::new(),
        }));
        let deadline = tokio::time::Instant::now() + timeout;
        let (agent_version, capabilities) = loop {
            if wtx.send(hello.clone()).await.is_err() {
                return Err(AgentError::Lost);
            }
            let got = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    closed.cancel();
                    return Err(AgentError::Timeout(timeout.as_secs()));
                }
                _ = closed.cancelled() => return Err(AgentError::Lost),
                m = tokio::time::timeout(Duration::from_secs(1), hello_rx.recv()) => m,
            };
            match got {
                Ok(Some(Message::Hello {
                    protocol,
                    version,
                    capabilities,
                })) => {
                    if protocol != AGENT_PROTOCOL_VERSION {
                        closed.cancel();
                        return Err(AgentError::Version {
                            theirs: protocol,
                            ours: AGENT_PROTOCOL_VERSION,
                        });
                    }
                    break (version, capabilities);
                }
                Ok(Some(Message::Error { code, message, .. })) => {
                    closed.cancel();
                    return Err(AgentError::Refused { code, message });
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(AgentError::Lost),
                Err(_) => {} // no Hello yet: say ours again
            }
        };
        Ok(Arc::new(Self {
            writer: wtx,
            routes,
            next_id: AtomicU64::new(1),
            closed,
            agent_version,
            capabilities,
        }))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Whether the agent listed `capability` in its `Hello`.
    pub fn supports(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// `Ok` if the agent listed `capability`; else [`AgentError::TooOld`]
    /// naming `request`.
    pub fn require(&self, capability: &str, request: &'static str) -> Result<(), AgentError> {
        if self.supports(capability) {
            Ok(())
        } else {
            Err(AgentError::TooOld {
                version: self.agent_version.clone(),
                request,
            })
        }
    }

    /// Sends the request `make(id)` and returns its id and the receiver of
    /// every frame about it.
    pub async fn start(
        &self,
        make: impl FnOnce(u64) -> Message,
        body: Vec<u8>,
    ) -> Result<(u64, mpsc::Receiver<Frame>), AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(REQUEST_FRAMES);
        routes_lock(&self.routes).insert(id, tx);
        self.send(Frame::with_body(make(id), body)).await?;
        Ok((id, rx))
    }

    /// Sends a frame about a request already started (stdin, signals,
    /// file data).
    pub async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        if self.is_closed() {
            return Err(AgentError::Lost);
        }
        self.writer
            .send(encode(&frame))
            .await
            .map_err(|_| AgentError::Lost)
    }

    /// Forgets a finished request's route. Later frames about it are
    /// dropped; drop its receiver too, so a reader waiting for room in it
    /// goes on.
    pub fn finish(&self, id: u64) {
        routes_lock(&self.routes).remove(&id);
    }

    /// A request answered by exactly one frame (health, stats, ports).
    pub async fn call(
        &self,
        make: impl FnOnce(u64) -> Message,
        timeout: Duration,
    ) -> Result<Frame, AgentError> {
        self.call_with_body(make, Vec::new(), timeout).await
    }

    /// [`AgentConn::call`] for a request with a body. An `unsupported`
    /// answer (an agent that does not know the request) is
    /// [`AgentError::TooOld`].
    pub async fn call_with_body(
        &self,
        make: impl FnOnce(u64) -> Message,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Frame, AgentError> {
        let mut kind = "";
        let make = |id| {
            let msg = make(id);
            kind = msg.kind();
            msg
        };
        let (id, mut rx) = self.start(make, body).await?;
        let got = tokio::time::timeout(timeout, rx.recv()).await;
        self.finish(id);
        match got {
            Err(_) => Err(AgentError::Timeout(timeout.as_secs())),
            Ok(None) => Err(AgentError::Lost),
            Ok(Some(Frame {
                msg:
                    Message::Error {
                        code: AgentErrorCode::Unsupported,
                        ..
                    },
                ..
            })) => Err(AgentError::TooOld {
                version: self.agent_version.clone(),
                request: kind,
            }),
            Ok(Some(Frame {
                msg: Message::Error { code, message, .. },
                ..
            })) => Err(AgentError::Refused { code, message }),
            Ok(Some(frame)) => Ok(frame),
        }
    }
}

/// Hands `frame` to its request, waiting for room in its channel; a
/// frame for a request nobody waits for any more is dropped.
async fn route(routes: &Routes, hello: &mpsc::Sender<Message>, frame: Frame) {
    match frame.msg.id() {
        Some(id) => {
            // Cloned out: the routing map's std lock is never held across
            // the wait.
            let Some(tx) = routes_lock(routes).get(&id).cloned() else {
                return;
            };
            if tx.send(frame).await.is_err() {
                let mut map = routes_lock(routes);
                if map.get(&id).is_some_and(|t| t.same_channel(&tx)) {
                    map.remove(&id);
                }
            }
        }
        None => {
            if let Message::Error { message, .. } = &frame.msg {
                tracing::warn!(error = %message, "the guest agent reported an error");
            }
            // Only `connect` reads these; more than it reads are dropped.
            let _ = hello.try_send(frame.msg);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake agent: answers Hello with `protocol`, Health with HealthOk,
    /// and refuses Ports (not found).
    pub(crate) async fn fake_agent(listener: UnixListener, protocol: u32) {
        fake_agent_with(listener, protocol, Vec::new(), Arc::default()).await;
    }

    /// [`fake_agent`] that lists `capabilities` in its Hello and keeps
    /// every request it gets in `seen`. It answers SetTime, Freeze and
    /// Thaw with Done and Identity with IdentityDone (the key names the
    /// body's length, or is the public key sent), each only if the
    /// capability is listed, else `unsupported` (as an agent newer than
    /// capabilities but older than the request does). Identity with
    /// hostname `refuse-me` is refused; with `swap-key` it answers
    /// another key than the one sent.
    pub(crate) async fn fake_agent_with(
        listener: UnixListener,
        protocol: u32,
        capabilities: Vec<String>,
        seen: Arc<Mutex<Vec<Frame>>>,
    ) {
        let (s, _) = listener.accept().await.unwrap();
        fake_agent_on(s, protocol, capabilities, seen).await;
    }

    /// [`fake_agent_with`] on a connected stream.
    pub(crate) async fn fake_agent_on(
        mut s: UnixStream,
        protocol: u32,
        capabilities: Vec<String>,
        seen: Arc<Mutex<Vec<Frame>>>,
    ) {
        use banger_proto::agent::capability;
        let mut d = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        let has = |c: &str| capabilities.iter().any(|x| x == c);
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            d.push(&buf[..n]);
            while let Some(Ok(f)) = d.next_frame() {
                seen.lock().unwrap().push(f.clone());
                let unsupported = |id| Message::Error {
                    id: Some(id),
                    code: AgentErrorCode::Unsupported,
                    message: "unknown request".into(),
                };
                // ReadFile announces 10 bytes and sends 4: a stream that
                // lost frames on the way.
                if let Message::ReadFile { id, .. } = f.msg {
                    let mut data = Frame::new(Message::FileData { id });
                    data.body = b"shor".to_vec();
                    for frame in [
                        Frame::new(Message::FileInfo {
                            id,
                            mode: 0o644,
                            size: 10,
                        }),
                        data,
                        Frame::new(Message::FileEnd { id }),
                    ] {
                        s.write_all(&encode(&frame)).await.unwrap();
                    }
                    continue;
                }
                let reply = match f.msg {
                    Message::Hello { .. } => Message::Hello {
                        protocol,
                        version: "test".into(),
                        capabilities: capabilities.clone(),
                    },
                    Message::Health { id } => Message::HealthOk { id, uptime_s: 1.0 },
                    Message::Ports { id } => Message::Error {
                        id: Some(id),
                        code: AgentErrorCode::NotFound,
                        message: "nope".into(),
                    },
                    Message::SetTime { id, .. } if has(capability::SET_TIME) => {
                        Message::Done { id }
                    }
                    Message::Freeze { id, .. } | Message::Thaw { id }
                        if has(capability::FREEZE) =>
                    {
                        Message::Done { id }
                    }
                    Message::Identity {
                        id,
                        hostname,
                        host_key,
                        ..
                    } if has(capability::IDENTITY) => {
                        if hostname == "refuse-me" {
                            Message::Error {
                                id: Some(id),
                                code: AgentErrorCode::BadRequest,
                                message: format!("bad hostname {hostname:?}"),
                            }
                        } else {
                            Message::IdentityDone {
                                id,
                                host_key: match host_key {
                                    Some(_) if hostname == "swap-key" => {
                                        "ssh-ed25519 AAAAswapped".into()
                                    }
                                    Some(pair) => pair.public,
                                    None => format!("ssh-ed25519 AAAA{}", f.body.len()),
                                },
                            }
                        }
                    }
                    Message::SetTime { id, .. }
                    | Message::Freeze { id, .. }
                    | Message::Thaw { id }
                    | Message::Identity { id, .. } => unsupported(id),
                    _ => continue,
                };
                // Garbage between frames is skipped by the daemon's decoder.
                s.write_all(b"junk").await.unwrap();
                s.write_all(&encode(&Frame::new(reply))).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn hello_then_calls_are_routed_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_agent(listener, AGENT_PROTOCOL_VERSION));
        let conn = AgentConn::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(conn.agent_version, "test");
        let f = conn
            .call(|id| Message::Health { id }, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(f.msg, Message::HealthOk { .. }), "{f:?}");
        let err = conn
            .call(|id| Message::Ports { id }, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AgentError::Refused {
                    code: AgentErrorCode::NotFound,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn capabilities_are_kept_and_an_unsupported_answer_is_too_old() {
        use banger_proto::agent::capability;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_agent_with(
            listener,
            AGENT_PROTOCOL_VERSION,
            vec![capability::SET_TIME.into()],
            Arc::default(),
        ));
        let conn = AgentConn::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(conn.supports(capability::SET_TIME));
        assert!(!conn.supports(capability::FREEZE));
        conn.require(capability::SET_TIME, "set_time").unwrap();
        let e = conn.require(capability::FREEZE, "freeze").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest agent (banger-agent test) is too old for freeze requests: rebuild the image"
        );
        // Asked anyway, it answers unsupported: too old, naming the request.
        let e = conn
            .call(|id| Message::Thaw { id }, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                AgentError::TooOld {
                    request: "thaw",
                    ..
                }
            ),
            "{e:?}"
        );
        let f = conn
            .call(
                |id| Message::SetTime { id, unix_ns: 1 },
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(matches!(f.msg, Message::Done { .. }), "{f:?}");
    }

    /// A guest streaming faster than the daemon consumes is held back:
    /// the reader stops reading once the request's channel is full, so
    /// the guest's writes block instead of the daemon buffering them.
    #[tokio::test]
    async fn a_fast_guest_is_held_back_by_a_slow_consumer() {
        use std::sync::atomic::AtomicUsize;
        const FRAMES: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let sent2 = Arc::clone(&sent);
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            let mut d = FrameDecoder::new();
            let mut buf = vec![0u8; 4096];
            // Hello, then wait for the download request.
            let id = loop {
                let n = r.read(&mut buf).await.unwrap();
                d.push(&buf[..n]);
                let mut id = None;
                while let Some(Ok(f)) = d.next_frame() {
                    match f.msg {
                        Message::Hello { .. } => {
                            let hello = Frame::new(Message::Hello {
                                protocol: AGENT_PROTOCOL_VERSION,
                                version: "test".into(),
                                capabilities: Vec::new(),
                            });
                            w.write_all(&encode(&hello)).await.unwrap();
                        }
                        Message::ReadFile { id: i, .. } => id = Some(i),
                        _ => {}
                    }
                }
                if let Some(id) = id {
                    break id;
                }
            };
            for _ in 0..FRAMES {
                let f = Frame::with_body(Message::FileData { id }, vec![7u8; 256 * 1024]);
                w.write_all(&encode(&f)).await.unwrap();
                sent2.fetch_add(1, Ordering::SeqCst);
            }
            // Kept open: the daemon's reader must not see the end.
            std::future::pending::<()>().await;
        });
        let conn = AgentConn::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let (_id, mut rx) = conn
            .start(
                |id| Message::ReadFile {
                    id,
                    path: "/big".into(),
                },
                Vec::new(),
            )
            .await
            .unwrap();
        // Wait until the guest's writes are blocked: no progress over
        // several looks.
        let mut last = usize::MAX;
        let mut still = 0;
        while still < 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = sent.load(Ordering::SeqCst);
            if now == last {
                still += 1;
            } else {
                (last, still) = (now, 0);
            }
        }
        // The channel, the frame the reader holds and the socket buffers.
        assert!(
            last < REQUEST_FRAMES + 8,
            "{last} frames taken from a guest nobody reads"
        );
        // Reading again lets everything through, in order.
        let mut got = 0;
        while got < FRAMES {
            let f = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(f.body.len(), 256 * 1024);
            got += 1;
        }
        assert_eq!(sent.load(Ordering::SeqCst), FRAMES);
    }

    #[tokio::test]
    async fn another_protocol_version_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_agent(listener, AGENT_PROTOCOL_VERSION + 1));
        let err = AgentConn::connect(&path, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("protocol 2"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err = AgentConn::connect(&path, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Timeout(1)), "{err}");
    }

    /// Firecracker's side of a hybrid vsock socket: reads the `CONNECT`
    /// line, checks it, then answers `answer` (none: closes).
    async fn vsock_peer(listener: UnixListener, answer: Option<&'static [u8]>) -> UnixStream {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        assert_eq!(line, b"CONNECT 1024");
        if let Some(a) = answer {
            s.write_all(a).await.unwrap();
        }
        s
    }

    #[tokio::test]
    async fn vsock_connects_with_firecrackers_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            // The answer and the guest's first frame in one write: the
            // handshake must not read past its line.
            let mut first = b"OK 1073741824\n".to_vec();
            first.extend(encode(&Frame::new(Message::Hello {
                protocol: AGENT_PROTOCOL_VERSION,
                version: "0.1.0".into(),
                capabilities: Vec::new(),
            })));
            let s = vsock_peer(listener, Some(Box::leak(first.into_boxed_slice()))).await;
            fake_agent_on(s, AGENT_PROTOCOL_VERSION, Vec::new(), Arc::default()).await;
        });
        let conn = AgentConn::connect_vsock(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(conn.agent_version, "0.1.0");
    }

    #[tokio::test]
    async fn vsock_refusals_are_named() {
        for (answer, wanted) in [
            (None, "nothing listens on the port in the guest"),
            (Some(&b"NOPE\n"[..]), "answered \"NOPE\", not OK"),
            (Some(&b"OK port\n"[..]), "answered \"OK port\", not OK"),
            (Some(&[b'A'; 100][..]), "not OK"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let peer = tokio::spawn(async move {
                let s = vsock_peer(listener, answer).await;
                drop(s);
            });
            let err = AgentConn::connect_vsock(&path, 1024, Duration::from_secs(5))
                .await
                .unwrap_err();
            let text = crate::error::chain(&err);
            assert!(
                text.starts_with("reach guest vsock port 1024 through "),
                "{text}"
            );
            assert!(text.contains(wanted), "{wanted} not in {text}");
            peer.await.unwrap();
        }
    }
}
