//! The helper's socket: listening (its own or one passed by systemd), the
//! accept loop, one thread per connection, framing, the caller check, the
//! request envelope and one log line per call.
//!
//! - Each connection's peer uid (`SO_PEERCRED`) must be an allowed uid;
//!   anyone else gets one `permission_denied` line and is disconnected.
//! - At most [`ServeOptions::max_connections`] connections are served at
//!   once; extras get one `operation_failed` line and are disconnected.
//! - Requests are lines of at most [`MAX_HELPER_REQUEST_BYTES`]; a longer
//!   one is answered `bad_request` and the connection closed. A started
//!   line must complete within [`ServeOptions::read_timeout`]; an idle
//!   connection is closed after [`ServeOptions::idle_timeout`].
//! - Anything that is not a well-formed request (not JSON, an unknown call
//!   or field, a bad op id) is answered `bad_request`, a wrong protocol
//!   version `bad_version`, and the connection keeps being served.
//! - Every request line logs exactly one `helper rpc completed` or
//!   `helper rpc failed` line with `op_id` (when the request had a valid
//!   one), `call`, `uid`, `duration_ms`, and `code` and `error` on failure.

use std::io::{self, IoSlice, Read as _, Write as _};
use std::os::fd::{AsFd, FromRawFd as _, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use banger_proto::helper::{
    HELPER_PROTOCOL_VERSION, HelperCall, HelperError, HelperReply, HelperRequest, HelperResponse,
    MAX_HELPER_REQUEST_BYTES,
};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde_json::{Map, Value};

use crate::Error;
use crate::config::Settings;
use crate::dispatch::{Caller, Dispatcher, Outcome};
use crate::error::quote;
use crate::host::{Host, SystemHost};
use crate::validate;

/// Timeouts and limits of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long a started request line may take to arrive in full.
    pub read_timeout: Duration,
    /// How long a connection may wait between requests.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long shutdown waits for calls in flight.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 32,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Longest error message sent back (serde's messages can quote input).
const MESSAGE_MAX: usize = 300;

/// How often the accept loop looks at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A listening socket and whether the helper owns its file.
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    /// The socket file to remove at shutdown; `None` when systemd owns it.
    path: Option<PathBuf>,
}

impl Listener {
    /// The socket systemd passed (see [`take_systemd_listener`]), else a
    /// socket bound at `settings.socket`.
    pub fn open(settings: &Settings, inherited: Option<UnixListener>) -> Result<Self, Error> {
        if let Some(listener) = inherited {
            return Ok(Self {
                listener,
                path: None,
            });
        }
        Ok(Self {
            listener: bind(&settings.socket)?,
            path: Some(settings.socket.clone()),
        })
    }

    /// Binds `path` (for tests and embedding).
    pub fn bind(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            listener: bind(path)?,
            path: Some(path.to_owned()),
        })
    }

    /// Whether the listener came from systemd.
    pub fn from_systemd(&self) -> bool {
        self.path.is_none()
    }
}

/// The listening socket systemd passed, when `LISTEN_PID` is this process
/// and `LISTEN_FDS=1` (fd 3, `SD_LISTEN_FDS_START`). Call it first thing
/// in `main`, before anything opens a file: fd 3 is only systemd's until
/// something else is given that number.
pub fn take_systemd_listener() -> Result<Option<UnixListener>, Error> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !ours {
        return Ok(None);
    }
    let fail = |msg: String| Error::io("systemd socket activation", io::Error::other(msg));
    let fds = std::env::var("LISTEN_FDS").unwrap_or_default();
    if fds != "1" {
        return Err(fail(format!("expected LISTEN_FDS=1, got {fds:?}")));
    }
    let target = std::fs::read_link("/proc/self/fd/3")
        .map_err(|e| fail(format!("fd 3 is not open: {e}")))?;
    if !target.to_string_lossy().starts_with("socket:") {
        return Err(fail(format!("fd 3 is not a socket ({})", target.display())));
    }
    // SAFETY: LISTEN_PID names this process and fd 3 is open and a socket
    // (checked above), so it is the descriptor systemd passed; this runs
    // before the helper opens anything, and nothing else in the process
    // owns fd 3, so taking ownership is sound.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let check = |e: rustix::io::Errno| Error::io("systemd socket (fd 3)", e.into());
    if rustix::net::sockopt::socket_type(&fd).map_err(check)? != rustix::net::SocketType::STREAM
        || !rustix::net::sockopt::socket_acceptconn(&fd).map_err(check)?
    {
        return Err(fail("fd 3 is not a listening stream socket".to_owned()));
    }
    // systemd passes it inheritable; the tools the helper runs must not
    // get it.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).map_err(check)?;
    Ok(Some(UnixListener::from(fd)))
}

fn bind(path: &Path) -> Result<UnixListener, Error> {
    let shown = path.display().to_string();
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::io(
                format!("listen on {shown}"),
                io::Error::other("the path exists and is not a socket"),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::io(
                format!("listen on {shown}"),
                io::Error::other("another helper is listening there"),
            ));
        }
        std::fs::remove_file(path).map_err(|e| Error::io(format!("remove stale {shown}"), e))?;
    }
    let listener =
        UnixListener::bind(path).map_err(|e| Error::io(format!("listen on {shown}"), e))?;
    // Anyone may connect; SO_PEERCRED decides who is served.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| Error::io(format!("chmod {shown}"), e))?;
    Ok(listener)
}

/// Runs the helper on the real host until SIGTERM or SIGINT: stops
/// accepting, removes its socket (not a systemd one), waits briefly for
/// calls in flight and returns.
///
/// `inherited` is the socket [`take_systemd_listener`] found, if any.
pub fn run_until_signalled(
    settings: Settings,
    options: ServeOptions,
    inherited: Option<UnixListener>,
) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Error::io("install signal handlers", e))?;
    }
    let listener = Listener::open(&settings, inherited)?;
    tracing::info!(
        socket = %settings.socket.display(),
        systemd = listener.from_systemd(),
        bridge = %settings.bridge,
        subnet = %settings.subnet,
        allowed_uids = ?settings.allowed_uids,
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        "helper listening"
    );
    let dispatcher = Arc::new(Dispatcher::new(settings, SystemHost::new()));
    serve(dispatcher, listener, options, stop)?;
    tracing::info!("helper stopped");
    Ok(())
}

/// Counts something for as long as the guard lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(counter))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Shared<H> {
    dispatcher: Arc<Dispatcher<H>>,
    options: ServeOptions,
    /// Calls being carried out right now.
    busy: Arc<AtomicUsize>,
}

/// The accept loop, until `stop` is set.
pub fn serve<H: Host + 'static>(
    dispatcher: Arc<Dispatcher<H>>,
    listener: Listener,
    options: ServeOptions,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    listener
        .listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("listener", e))?;
    let connections = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Shared {
        dispatcher,
        options,
        busy: Arc::new(AtomicUsize::new(0)),
    });
    let interval = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(POLL_INTERVAL.subsec_nanos()),
    };
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [rustix::event::PollFd::new(
            &listener.listener,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&interval)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("poll the listener", e.into())),
        }
        let stream = match listener.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        if connections.load(Ordering::SeqCst) >= shared.options.max_connections {
            refuse_busy(stream, shared.options.max_connections);
            continue;
        }
        let slot = Counted::new(&connections);
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("helper-conn".into())
            .spawn(move || {
                let _slot = slot;
                connection(&shared, stream);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a connection thread");
        }
    }
    if let Some(path) = &listener.path {
        let _ = std::fs::remove_file(path);
    }
    let deadline = Instant::now() + shared.options.shutdown_grace;
    while shared.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn refuse_busy(stream: UnixStream, max: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let err = Error::OperationFailed(format!(
        "banger-helper is busy: {max} connections already open"
    ));
    let _ = write_line(&stream, &error_response(&err, None));
    tracing::warn!(
        max_connections = max,
        "helper connection refused: too many connections"
    );
}

enum LineError {
    TooLong,
    Timeout,
    /// The peer closed its side in the middle of a line.
    Truncated,
    Io,
}

/// Reads newline-terminated lines, keeping bytes past a newline for the
/// next request.
struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// The next line (without its newline); `None` at a clean end of input
    /// or after an idle timeout.
    fn next(
        &mut self,
        mut stream: &UnixStream,
        opts: &ServeOptions,
    ) -> Result<Option<Vec<u8>>, LineError> {
        let mut deadline = (!self.buf.is_empty()).then(|| Instant::now() + opts.read_timeout);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                if pos > MAX_HELPER_REQUEST_BYTES {
                    return Err(LineError::TooLong);
                }
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_HELPER_REQUEST_BYTES {
                return Err(LineError::TooLong);
            }
            let wait = match deadline {
                None => opts.idle_timeout,
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            if wait.is_zero() {
                return Err(LineError::Timeout);
            }
            if stream.set_read_timeout(Some(wait)).is_err() {
                return Err(LineError::Io);
            }
            match stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(LineError::Truncated),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + opts.read_timeout);
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    if deadline.is_none() {
                        return Ok(None);
                    }
                    return Err(LineError::Timeout);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(LineError::Io),
            }
        }
    }
}

fn connection<H: Host>(shared: &Shared<H>, stream: UnixStream) {
    let opts = &shared.options;
    let _ = stream.set_write_timeout(Some(opts.read_timeout));
    let cred = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the caller's credentials");
            return;
        }
    };
    let caller = Caller {
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    };
    if !shared.dispatcher.settings().allows_uid(caller.uid) {
        let err = Error::PermissionDenied { uid: caller.uid };
        let _ = write_line(&stream, &error_response(&err, None));
        tracing::warn!(
            uid = caller.uid,
            pid = cred.pid.as_raw_nonzero().get(),
            "helper connection refused: uid not allowed"
        );
        return;
    }
    let mut reader = LineReader { buf: Vec::new() };
    loop {
        let started = Instant::now();
        let framing_error = match reader.next(&stream, opts) {
            Ok(Some(line)) => {
                if !serve_line(shared, &stream, caller, &line) {
                    return;
                }
                continue;
            }
            Ok(None) | Err(LineError::Io) => return,
            Err(LineError::TooLong) => {
                format!("request line exceeds {MAX_HELPER_REQUEST_BYTES} bytes")
            }
            Err(LineError::Timeout) => format!(
                "request line not completed within {} s",
                opts.read_timeout.as_secs_f64()
            ),
            Err(LineError::Truncated) => "request line ended without a newline".to_owned(),
        };
        let err = Error::BadRequest(framing_error);
        let _ = write_line(&stream, &error_response(&err, None));
        log_call(None, "-", caller.uid, started, Err(&err));
        return;
    }
}

/// Parses and serves one request line; false when the connection should
/// close.
fn serve_line<H: Host>(
    shared: &Shared<H>,
    stream: &UnixStream,
    caller: Caller,
    line: &[u8],
) -> bool {
    let started = Instant::now();
    let (op_id, call) = match parse_request(line) {
        Ok(req) => (req.op_id, req.call),
        Err(refused) => {
            let ok = write_line(
                stream,
                &error_response(&refused.error, refused.op_id.clone()),
            )
            .is_ok();
            log_call(
                refused.op_id.as_deref(),
                &refused.call,
                caller.uid,
                started,
                Err(&refused.error),
            );
            return ok;
        }
    };
    let outcome = {
        let _busy = Counted::new(&shared.busy);
        // Lines logged while the call runs carry its op id and name.
        let span = tracing::info_span!("rpc", op_id = %op_id, call = call.name());
        let _entered = span.enter();
        shared.dispatcher.call(caller, &call)
    };
    let sent = match outcome {
        Ok(Outcome::Reply(reply)) => write_line(stream, &HelperResponse::Result(reply)),
        Ok(Outcome::Socket(fd)) => send_with_fd(stream, fd),
        Err(e) => {
            let sent = write_line(stream, &error_response(&e, Some(op_id.clone())));
            log_call(Some(&op_id), call.name(), caller.uid, started, Err(&e));
            return sent.is_ok();
        }
    };
    match sent {
        Ok(()) => {
            log_call(Some(&op_id), call.name(), caller.uid, started, Ok(()));
            true
        }
        Err(e) => {
            let err = Error::OperationFailed(format!("send the reply: {e}"));
            log_call(Some(&op_id), call.name(), caller.uid, started, Err(&err));
            false
        }
    }
}

/// A request refused before dispatch, with what could be read of it.
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    /// The request's op id, when it had a well-formed one.
    pub op_id: Option<String>,
    /// The call name, when it looked like one; `-` otherwise.
    pub call: String,
}

const ENVELOPE_FIELDS: [&str; 4] = ["version", "op_id", "call", "args"];

/// Checks a request line field by field: a JSON object; a `version` equal
/// to [`HELPER_PROTOCOL_VERSION`]; an `op_id` of the form `op-...`; a known
/// `call`; its `args` with exactly the fields the call has (unknown fields
/// anywhere are refused rather than ignored, so an argument a newer daemon
/// adds can never be silently dropped).
pub fn parse_request(line: &[u8]) -> Result<HelperRequest, Refused> {
    let mut refused = Refused {
        error: Error::BadRequest(String::new()),
        op_id: None,
        call: "-".to_owned(),
    };
    let bad = |mut r: Refused, msg: String| {
        r.error = Error::BadRequest(msg);
        Err(r)
    };
    let Ok(text) = std::str::from_utf8(line) else {
        return bad(refused, "request is not utf-8".to_owned());
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return bad(refused, format!("request is not json: {e}")),
    };
    let Value::Object(obj) = &value else {
        return bad(refused, "request must be a json object".to_owned());
    };
    if let Some(Value::String(id)) = obj.get("op_id") {
        if validate::op_id(id) {
            refused.op_id = Some(id.clone());
        }
    }
    if let Some(Value::String(name)) = obj.get("call") {
        if !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            refused.call = name.clone();
        }
    }
    match obj.get("version") {
        None => return bad(refused, "version is missing".to_owned()),
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(HELPER_PROTOCOL_VERSION)) => {}
        Some(Value::Number(n)) => {
            refused.error = Error::BadVersion {
                got: n.to_string(),
                supported: HELPER_PROTOCOL_VERSION,
            };
            return Err(refused);
        }
        Some(_) => return bad(refused, "version must be a number".to_owned()),
    }
    match obj.get("op_id") {
        None => return bad(refused, "op_id is missing".to_owned()),
        Some(Value::String(id)) if validate::op_id(id) => {}
        Some(_) => {
            return bad(
                refused,
                "op_id must be op- followed by 1 to 64 of A-Z, a-z, 0-9, _ and -".to_owned(),
            );
        }
    }
    if let Some(key) = obj.keys().find(|k| !ENVELOPE_FIELDS.contains(&k.as_str())) {
        return bad(refused, format!("unknown field {}", quote(key)));
    }
    if !matches!(obj.get("call"), Some(Value::String(_))) {
        return bad(refused, "call must be a string naming the call".to_owned());
    }
    let request: HelperRequest = match serde_json::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => return bad(refused, bounded(&format!("bad request: {e}"))),
    };
    if let Err(msg) = check_args(obj, &request.call) {
        return bad(refused, msg);
    }
    Ok(request)
}

/// Refuses `args` fields the call does not have.
fn check_args(obj: &Map<String, Value>, call: &HelperCall) -> Result<(), String> {
    let canonical = serde_json::to_value(call).map_err(|e| e.to_string())?;
    let known = canonical.get("args").and_then(Value::as_object);
    match (obj.get("args"), known) {
        (None | Some(Value::Null), _) => Ok(()),
        (Some(Value::Object(given)), Some(known)) => {
            match given.keys().find(|k| !known.contains_key(k.as_str())) {
                Some(k) => Err(format!(
                    "unknown field {} in args of {}",
                    quote(k),
                    call.name()
                )),
                None => Ok(()),
            }
        }
        (Some(_), None) => Err(format!("{} takes no args", call.name())),
        (Some(_), Some(_)) => Err(format!("args of {} must be an object", call.name())),
    }
}

fn bounded(msg: &str) -> String {
    if msg.chars().count() <= MESSAGE_MAX {
        return msg.to_owned();
    }
    let mut s: String = msg.chars().take(MESSAGE_MAX).collect();
    s.push_str("...");
    s
}

fn error_response(err: &Error, op_id: Option<String>) -> HelperResponse {
    HelperResponse::Error(HelperError {
        code: err.code(),
        message: bounded(&err.message()),
        op_id,
    })
}

fn response_line(response: &HelperResponse) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

fn write_line(mut stream: &UnixStream, response: &HelperResponse) -> io::Result<()> {
    stream.write_all(&response_line(response)?)
}

/// Sends `{"result":{"kind":"socket"}}` with `fd` attached in one
/// `sendmsg`, then drops the helper's copy.
fn send_with_fd(stream: &UnixStream, fd: OwnedFd) -> io::Result<()> {
    let line = response_line(&HelperResponse::Result(HelperReply::Socket))?;
    let fds = [fd.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&line)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent < line.len() {
        // The descriptor went with the first byte; the rest is plain data.
        (&*stream).write_all(&line[sent..])?;
    }
    drop(fd);
    Ok(())
}

fn log_call(
    op_id: Option<&str>,
    call: &str,
    uid: u32,
    started: Instant,
    result: Result<(), &Error>,
) {
    let duration_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    match result {
        Ok(()) => tracing::info!(op_id, call, uid, duration_ms, "helper rpc completed"),
        Err(e) => tracing::warn!(
            op_id,
            call,
            uid,
            duration_ms,
            code = e.code().as_str(),
            error = %bounded(&e.message()),
            "helper rpc failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use banger_proto::helper::HelperErrorCode;

    use super::*;

    fn code(line: &str) -> HelperErrorCode {
        parse_request(line.as_bytes()).unwrap_err().error.code()
    }

    #[test]
    fn well_formed_requests_parse() {
        let r = parse_request(br#"{"version":1,"op_id":"op-abc","call":"ping"}"#).unwrap();
        assert_eq!(r.call, HelperCall::Ping);
        let r =
            parse_request(br#"{"version":1,"op_id":"op-abc","call":"ping","args":null}"#).unwrap();
        assert_eq!(r.call, HelperCall::Ping);
        let r = parse_request(
            br#"{"version":1,"op_id":"op-1","call":"tap_create","args":{"name":"bgtap1","owner_uid":1000,"bridge":"banger0"}}"#,
        )
        .unwrap();
        assert_eq!(r.call.name(), "tap_create");
    }

    #[test]
    fn malformed_requests_are_bad_request_and_keep_the_op_id() {
        use HelperErrorCode::*;
        for (line, want) in [
            ("", BadRequest),
            ("nope", BadRequest),
            ("[1]", BadRequest),
            (r#"{"version":1,"op_id":"op-1","call":"ping""#, BadRequest),
            (r#"{"op_id":"op-1","call":"ping"}"#, BadRequest),
            (
                r#"{"version":"1","op_id":"op-1","call":"ping"}"#,
                BadRequest,
            ),
            (r#"{"version":2,"op_id":"op-1","call":"ping"}"#, BadVersion),
            (r#"{"version":0,"op_id":"op-1","call":"ping"}"#, BadVersion),
            (
                r#"{"version":1.5,"op_id":"op-1","call":"ping"}"#,
                BadVersion,
            ),
            (r#"{"version":1,"call":"ping"}"#, BadRequest),
            (r#"{"version":1,"op_id":"bad","call":"ping"}"#, BadRequest),
            (
                r#"{"version":1,"op_id":"op-1","call":"format_disk"}"#,
                BadRequest,
            ),
            (r#"{"version":1,"op_id":"op-1","call":7}"#, BadRequest),
            (r#"{"version":1,"op_id":"op-1"}"#, BadRequest),
            (
                r#"{"version":1,"op_id":"op-1","call":"tap_delete"}"#,
                BadRequest,
            ),
            (
                r#"{"version":1,"op_id":"op-1","call":"tap_delete","args":{}}"#,
                BadRequest,
            ),
            (
                r#"{"version":1,"op_id":"op-1","call":"tap_delete","args":{"name":"bgtap1","force":true}}"#,
                BadRequest,
            ),
            (
                r#"{"version":1,"op_id":"op-1","call":"ping","args":{"x":1}}"#,
                BadRequest,
            ),
            (
                r#"{"version":1,"op_id":"op-1","call":"ping","extra":1}"#,
                BadRequest,
            ),
            (
                r#"{"version":1,"op_id":"op-1","call":"signal_vmm","args":{"pid":-5,"signal":"TERM"}}"#,
                BadRequest,
            ),
        ] {
            assert_eq!(code(line), want, "{line}");
        }
        let r = parse_request(br#"{"version":9,"op_id":"op-keep","call":"ping"}"#).unwrap_err();
        assert_eq!(r.op_id.as_deref(), Some("op-keep"));
        assert_eq!(r.call, "ping");
        let r = parse_request(br#"{"version":1,"op_id":"op-x y","call":"ping"}"#).unwrap_err();
        assert_eq!(r.op_id, None);
        let r = parse_request(b"\xff\xfe").unwrap_err();
        assert_eq!(r.error.code(), HelperErrorCode::BadRequest);
    }

    #[test]
    fn long_messages_are_bounded() {
        let name = "x".repeat(10_000);
        let line = format!(r#"{{"version":1,"op_id":"op-1","call":"{name}"}}"#);
        let r = parse_request(line.as_bytes()).unwrap_err();
        let resp = error_response(&r.error, r.op_id);
        let text = String::from_utf8(response_line(&resp).unwrap()).unwrap();
        assert!(text.len() < 500, "{}", text.len());
    }
}
