//! Reads frames and answers them: the agent's one entry point for input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use banger_proto::agent::{
    AGENT_PROTOCOL_VERSION, AgentErrorCode, Frame, FrameDecoder, FrameError, Message, capability,
};

use crate::guest_ops::{IdentityRequest, Job, Worker};
use crate::host::Host;
use crate::outbox::Sink;
use crate::{exec, files, log, sysinfo, tree};

/// Stats and Ports requests running at once (each in a thread of its own,
/// as `statvfs` or a `/proc` scan may be slow); more are refused.
const MAX_QUERIES: usize = 8;

/// A request that takes more frames from the host.
pub(crate) enum Session {
    Exec(Arc<exec::Control>),
    Upload(files::Upload),
}

/// Requests in progress by id.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<u64, Session>>);

impl Sessions {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<u64, Session>> {
        // The map stays consistent even if a holder panicked.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sink as the rest of the crate holds it.
pub(crate) type Out = Arc<dyn Sink>;

/// Sends `Error{id, code, message}`.
pub(crate) fn send_error(out: &Out, id: Option<u64>, code: AgentErrorCode, message: String) {
    out.send(Frame::new(Message::Error { id, code, message }));
}

/// The agent's state: the decoder, whether the peer's protocol matches,
/// the requests in progress, and the worker for the requests that change
/// the machine (clock, freezing, identity) through its [`Host`].
pub struct Agent {
    decoder: FrameDecoder,
    out: Out,
    peer_ok: bool,
    sessions: Arc<Sessions>,
    queries: Arc<AtomicUsize>,
    guest_ops: Worker,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("peer_ok", &self.peer_ok)
            .field("buffered", &self.decoder.buffered())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent whose replies and events go to `out` and whose clock,
    /// freeze and identity requests act on `host`: the machine
    /// ([`crate::host::RealHost`]) or, in tests, [`crate::fake::FakeHost`].
    pub fn new(out: Arc<dyn Sink>, host: Arc<dyn Host>) -> Self {
        Self {
            decoder: FrameDecoder::new(),
            out,
            peer_ok: true,
            sessions: Arc::new(Sessions::default()),
            queries: Arc::new(AtomicUsize::new(0)),
            guest_ops: Worker::new(host),
        }
    }

    /// Sends the agent's `Hello`, with the requests it answers beyond
    /// protocol 1's first set.
    pub fn hello(&self) {
        self.out.send(Frame::new(Message::Hello {
            protocol: AGENT_PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: capability::ALL.iter().map(|c| (*c).to_owned()).collect(),
        }));
    }

    /// Takes bytes read from the port and handles every frame they
    /// complete. Never panics, whatever the bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
        while let Some(next) = self.decoder.next_frame() {
            match next {
                Ok(frame) => self.handle(frame),
                Err(e @ FrameError::UnknownRequest { .. }) if !self.peer_ok => {
                    log!("ignoring {e} from a peer of another protocol");
                }
                Err(FrameError::UnknownRequest { id, kind }) => {
                    log!("unknown request type {kind:?} (id {id}): the host is newer");
                    send_error(
                        &self.out,
                        Some(id),
                        AgentErrorCode::Unsupported,
                        format!(
                            "banger-agent {} does not know the request {kind:?} (rebuild the image)",
                            env!("CARGO_PKG_VERSION")
                        ),
                    );
                }
                Err(e) => {
                    log!("bad frame: {e}");
                    send_error(&self.out, None, AgentErrorCode::BadFrame, e.to_string());
                }
            }
        }
        if self.decoder.buffered() == 0 {
            // Gives back the buffer a large frame grew (it never shrinks).
            self.decoder = FrameDecoder::new();
        }
    }

    /// Forgets a partly received frame: the peer went away, and what it
    /// sends after reconnecting starts a new frame.
    pub fn reset_stream(&mut self) {
        if self.decoder.buffered() > 0 {
            log!(
                "dropping {} bytes of an unfinished frame",
                self.decoder.buffered()
            );
        }
        self.decoder = FrameDecoder::new();
    }

    /// Handles one frame.
    pub fn handle(&mut self, frame: Frame) {
        let Frame { msg, body } = frame;
        if let Message::Hello {
            protocol, version, ..
        } = &msg
        {
            self.on_hello(*protocol, version);
            return;
        }
        if !self.peer_ok {
            log!("ignoring {} from a peer of another protocol", msg.kind());
            return;
        }
        let out = &self.out;
        match msg {
            Message::Health { id } => match sysinfo::uptime() {
                Ok(uptime_s) => out.send(Frame::new(Message::HealthOk { id, uptime_s })),
                Err(e) => send_error(
                    out,
                    Some(id),
                    AgentErrorCode::Failed,
                    format!("read /proc/uptime: {e}"),
                ),
            },
            Message::Stats { id } => self.query(id, "stats", |id| match sysinfo::stats() {
                Ok(stats) => Message::StatsReply { id, stats },
                Err(e) => Message::Error {
                    id: Some(id),
                    code: AgentErrorCode::Failed,
                    message: format!("read stats: {e}"),
                },
            }),
            Message::Ports { id } => self.query(id, "ports", |id| Message::PortsReply {
                id,
                ports: sysinfo::ports(),
            }),
            Message::Exec {
                id,
                argv,
                env,
                cwd,
                tty,
                rows,
                cols,
            } => {
                let req = exec::Request {
                    id,
                    argv,
                    env,
                    cwd,
                    tty,
                    rows,
                    cols,
                };
                exec::start(req, out, &self.sessions);
            }
            Message::Stdin { id } => match self.exec_session(id) {
                Some(ctl) => {
                    if let Err(e) = ctl.stdin(body) {
                        send_error(out, Some(id), AgentErrorCode::BadRequest, e);
                    }
                }
                None => not_found(out, id, "process"),
            },
            Message::Signal { id, signal } => {
                let Some(sig) = exec::parse_signal(&signal) else {
                    send_error(
                        out,
                        Some(id),
                        AgentErrorCode::BadRequest,
                        format!("unknown signal {signal:?} (INT, TERM, KILL, HUP or QUIT)"),
                    );
                    return;
                };
                match self.exec_session(id) {
                    Some(ctl) => ctl.signal(sig),
                    None => not_found(out, id, "process"),
                }
            }
            Message::Resize { id, rows, cols } => match self.exec_session(id) {
                Some(ctl) => {
                    if let Err((code, e)) = ctl.resize(rows, cols) {
                        send_error(out, Some(id), code, e);
                    }
                }
                None => not_found(out, id, "process"),
            },
            Message::WriteFile { id, path, mode } => {
                if self.sessions.lock().contains_key(&id) {
                    id_in_use(out, id);
                    return;
                }
                if self.guest_ops.is_frozen() {
                    // Creating the temporary file would block this thread
                    // until the thaw.
                    send_error(
                        out,
                        Some(id),
                        AgentErrorCode::Failed,
                        "the filesystems are frozen (a snapshot is being taken): write after the thaw".into(),
                    );
                    return;
                }
                if let Some(upload) = files::start_upload(id, &path, mode, out) {
                    self.sessions.lock().insert(id, Session::Upload(upload));
                }
            }
            Message::WriteTree { id, path, name } => {
                if self.sessions.lock().contains_key(&id) {
                    id_in_use(out, id);
                    return;
                }
                if self.guest_ops.is_frozen() {
                    send_error(
                        out,
                        Some(id),
                        AgentErrorCode::Failed,
                        "the filesystems are frozen (a snapshot is being taken): write after the thaw".into(),
                    );
                    return;
                }
                if let Some(upload) = tree::start_unpack(id, &path, &name, out) {
                    self.sessions.lock().insert(id, Session::Upload(upload));
                }
            }
            Message::ReadTree { id, path } => tree::start_pack(id, path, out),
            Message::FileData { id } => {
                let sessions = self.sessions.lock();
                match sessions.get(&id) {
                    Some(Session::Upload(u)) => {
                        let u = u.clone();
                        // Not holding the map while the writer thread
                        // takes the chunk (it may be busy on the disk).
                        drop(sessions);
                        u.data(body);
                    }
                    _ => {
                        drop(sessions);
                        not_found(out, id, "file transfer");
                    }
                }
            }
            Message::FileEnd { id } => {
                let mut sessions = self.sessions.lock();
                match sessions.get(&id) {
                    Some(Session::Upload(_)) => {
                        if let Some(Session::Upload(u)) = sessions.remove(&id) {
                            drop(sessions);
                            u.end();
                        }
                    }
                    _ => {
                        drop(sessions);
                        not_found(out, id, "file transfer");
                    }
                }
            }
            Message::ReadFile { id, path } => files::start_download(id, path, out),
            Message::SetTime { id, unix_ns } => {
                self.guest_ops.submit(Job::SetTime { id, unix_ns }, out);
            }
            Message::Freeze { id, timeout_ms } => {
                self.guest_ops.submit(Job::Freeze { id, timeout_ms }, out);
            }
            Message::Thaw { id } => self.guest_ops.submit(Job::Thaw { id }, out),
            Message::Identity {
                id,
                hostname,
                unix_ns,
                net,
                new_host_key,
                host_key,
            } => {
                let req = IdentityRequest {
                    hostname,
                    unix_ns,
                    net,
                    new_host_key,
                    host_key,
                };
                self.guest_ops.submit(
                    Job::Identity {
                        id,
                        req,
                        random: body,
                    },
                    out,
                );
            }
            Message::Error { id, code, message } => {
                log!("host reports an error (id {id:?}, {code:?}): {message}");
            }
            Message::Hello { .. } => {}
            other @ (Message::HealthOk { .. }
            | Message::StatsReply { .. }
            | Message::PortsReply { .. }
            | Message::Started { .. }
            | Message::StdinRead { .. }
            | Message::Stdout { .. }
            | Message::Stderr { .. }
            | Message::Exited { .. }
            | Message::FileInfo { .. }
            | Message::Done { .. }
            | Message::TreeDone { .. }
            | Message::IdentityDone { .. }) => {
                send_error(
                    out,
                    other.id(),
                    AgentErrorCode::BadRequest,
                    format!("{} is not a request", other.kind()),
                );
            }
        }
    }

    fn on_hello(&mut self, protocol: u32, version: &str) {
        // The host (re)connected: uploads it had begun will never end.
        let abandoned: Vec<u64> = {
            let mut sessions = self.sessions.lock();
            let ids: Vec<u64> = sessions
                .iter()
                .filter(|(_, s)| matches!(s, Session::Upload(_)))
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                sessions.remove(id);
            }
            ids
        };
        if !abandoned.is_empty() {
            log!("abandoning unfinished uploads {abandoned:?}");
        }
        if protocol == AGENT_PROTOCOL_VERSION {
            log!("host says hello (banger {version}, protocol {protocol})");
            self.peer_ok = true;
            self.hello();
        } else {
            log!(
                "host speaks protocol {protocol} (banger {version}), not {AGENT_PROTOCOL_VERSION}: ignoring its requests until it says hello again"
            );
            self.peer_ok = false;
            send_error(
                &self.out,
                None,
                AgentErrorCode::BadVersion,
                format!("agent speaks protocol {AGENT_PROTOCOL_VERSION}, peer {protocol}"),
            );
        }
    }

    /// Thaws at once (tests: whatever one left frozen).
    #[cfg(test)]
    pub(crate) fn guest_ops_thaw_for_tests(&self) -> Result<usize, String> {
        self.guest_ops.thaw_now()
    }

    fn exec_session(&self, id: u64) -> Option<Arc<exec::Control>> {
        match self.sessions.lock().get(&id) {
            Some(Session::Exec(ctl)) => Some(Arc::clone(ctl)),
            _ => None,
        }
    }

    /// Runs a read-only query in a thread of its own.
    fn query<F>(&self, id: u64, what: &'static str, f: F)
    where
        F: FnOnce(u64) -> Message + Send + 'static,
    {
        if self.queries.fetch_add(1, Ordering::AcqRel) >= MAX_QUERIES {
            self.queries.fetch_sub(1, Ordering::AcqRel);
            send_error(
                &self.out,
                Some(id),
                AgentErrorCode::Failed,
                format!("busy: {MAX_QUERIES} stats/ports requests are running"),
            );
            return;
        }
        let out = Arc::clone(&self.out);
        let queries = Arc::clone(&self.queries);
        let started = crate::spawn(what, move || {
            let msg = f(id);
            queries.fetch_sub(1, Ordering::AcqRel);
            out.send(Frame::new(msg));
        });
        if let Err(e) = started {
            self.queries.fetch_sub(1, Ordering::AcqRel);
            send_error(
                &self.out,
                Some(id),
                AgentErrorCode::Failed,
                format!("start a thread: {e}"),
            );
        }
    }
}

fn not_found(out: &Out, id: u64, what: &str) {
    send_error(
        out,
        Some(id),
        AgentErrorCode::NotFound,
        format!("no {what} with id {id}"),
    );
}

pub(crate) fn id_in_use(out: &Out, id: u64) {
    send_error(
        out,
        Some(id),
        AgentErrorCode::BadRequest,
        format!("id {id} is in use by a request in progress"),
    );
}
