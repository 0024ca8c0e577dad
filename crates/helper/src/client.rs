//! The one client of the helper protocol (`proto::helper`, docs/helper.md),
//! used by the daemon (wrapped in `spawn_blocking` in
//! `crates/daemon/src/helper_client.rs`), by `banger system
//! install|status|uninstall` and by the integration tests.
//!
//! A call is one request line out and one reply line back, with any
//! descriptor the helper passes beside it (`SCM_RIGHTS`). [`Client`] knows
//! where the helper listens and opens a fresh connection per call;
//! [`Connection`] is one open connection, with the raw abilities the tests
//! need (send bytes as they are, read a line as text).
//!
//! The caller names the op id of every call: this client never mints one,
//! so the helper's log lines carry the id of the request they serve.

use std::io::{self, IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::OpId;
use banger_proto::helper::{
    HELPER_PROTOCOL_VERSION, HelperCall, HelperError, HelperInfo, HelperReply, HelperRequest,
    HelperResponse,
};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

/// Longest wait for connecting, sending and reading one reply (TAP and nft
/// changes take milliseconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest reply line read back; a longer one is an error.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Descriptors taken from one `recvmsg` (the helper passes at most one).
const MAX_FDS: usize = 4;

/// How much of an unreadable reply an error quotes.
const EXCERPT_CHARS: usize = 200;

/// Why a call to the helper failed. Each variant's message says what went
/// wrong at its level only; the cause is its [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the socket: no helper installed, or not running.
    #[error(
        "banger-helper is not reachable at {} (install it with `sudo banger system install`)",
        socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed once connected (including timeouts).
    #[error("talk to banger-helper at {}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("banger-helper at {} closed the connection without answering", socket.display())]
    Closed { socket: PathBuf },
    #[error("banger-helper's reply is longer than {max} bytes")]
    ReplyTooLong { max: usize },
    #[error("encode the request")]
    Encode(#[source] serde_json::Error),
    /// The reply is not UTF-8 or not a helper response.
    #[error("banger-helper sent a reply that cannot be read: {excerpt}")]
    Unreadable {
        /// The start of the reply, escaped.
        excerpt: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The helper answered with an error line.
    #[error(transparent)]
    Refused(HelperError),
    /// A result of another kind than the call asks for.
    #[error("banger-helper answered {call} with {reply}")]
    Unexpected { call: &'static str, reply: String },
    #[error("banger-helper's {call} reply came without a descriptor")]
    MissingDescriptor { call: &'static str },
}

impl ClientError {
    /// The message and every cause after it, each once:
    /// `outer: inner: innermost`.
    pub fn display_chain(&self) -> String {
        banger_proto::error_chain(self)
    }

    /// The helper's error line, when it refused the call.
    pub fn refusal(&self) -> Option<&HelperError> {
        match self {
            Self::Refused(e) => Some(e),
            _ => None,
        }
    }

    fn unreadable(
        line: &[u8],
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let text = String::from_utf8_lossy(line);
        let mut chars = text.chars();
        let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
        let more = if chars.next().is_some() { "..." } else { "" };
        Self::Unreadable {
            excerpt: format!("{head:?}{more}"),
            source: source.into(),
        }
    }

    fn unexpected(call: &HelperCall, reply: &HelperReply) -> Self {
        Self::Unexpected {
            call: call.name(),
            reply: format!("{reply:?}"),
        }
    }
}

/// Where the helper listens and how long a call may take. Each call opens
/// its own connection, so a `Client` is cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the helper at `socket`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another bound on connect, send and receive.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A fresh connection, for callers that send more than one call on it
    /// or speak raw bytes.
    pub fn connect(&self) -> Result<Connection, ClientError> {
        Connection::open(&self.socket, self.timeout)
    }

    /// One call on a fresh connection: its result and the first descriptor
    /// that came with it (any others are closed). An error line is
    /// [`ClientError::Refused`].
    pub fn call(
        &self,
        op_id: &OpId,
        call: &HelperCall,
    ) -> Result<(HelperReply, Option<OwnedFd>), ClientError> {
        let reply = self.connect()?.request(op_id, call)?;
        let fd = reply.fds.into_iter().next();
        match reply.response {
            HelperResponse::Result(r) => Ok((r, fd)),
            HelperResponse::Error(e) => Err(ClientError::Refused(e)),
        }
    }

    /// `ping`: the helper's identity and the network it enforces.
    pub fn ping(&self, op_id: &OpId) -> Result<HelperInfo, ClientError> {
        let call = HelperCall::Ping;
        match self.call(op_id, &call)?.0 {
            HelperReply::Pong(info) => Ok(info),
            other => Err(ClientError::unexpected(&call, &other)),
        }
    }

    /// The DNS socket (UDP, port 53 on the bridge's gateway address).
    pub fn dns_socket(&self, op_id: &OpId) -> Result<OwnedFd, ClientError> {
        let call = HelperCall::DnsSocket;
        match self.call(op_id, &call)? {
            (HelperReply::Socket, Some(fd)) => Ok(fd),
            (HelperReply::Socket, None) => {
                Err(ClientError::MissingDescriptor { call: call.name() })
            }
            (other, _) => Err(ClientError::unexpected(&call, &other)),
        }
    }
}

/// A reply line, parsed, and the descriptors that arrived with it.
#[derive(Debug)]
pub struct Reply {
    pub response: HelperResponse,
    pub fds: Vec<OwnedFd>,
}

/// One line as text (without its newline) and the descriptors received
/// with it.
#[derive(Debug)]
pub struct Line {
    pub text: String,
    pub fds: Vec<OwnedFd>,
}

/// A line's bytes and its descriptors, before they are parsed.
type RawLine = (Vec<u8>, Vec<OwnedFd>);

/// One open connection to the helper.
#[derive(Debug)]
pub struct Connection {
    socket: PathBuf,
    stream: UnixStream,
    /// Received bytes not yet returned as a line.
    buf: Vec<u8>,
    /// Descriptors received with them.
    fds: Vec<OwnedFd>,
}

impl Connection {
    /// Connects to `socket`; `timeout` bounds the connect (a helper whose
    /// backlog is full makes it wait) and every later send and receive.
    pub fn open(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream =
            connect_stream(socket, timeout).map_err(|source| ClientError::Unreachable {
                socket: socket.to_path_buf(),
                source,
            })?;
        Ok(Self {
            socket: socket.to_path_buf(),
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
        })
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    /// Sends bytes as they are (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).map_err(|e| self.io_error(e))
    }

    /// Sends one request line.
    pub fn send(&mut self, op_id: &OpId, call: &HelperCall) -> Result<(), ClientError> {
        let line = request_line(op_id, call)?;
        self.send_raw(&line)
    }

    /// Sends one request and reads its reply, which may be an error line.
    /// A helper that refuses the caller's uid answers and closes before it
    /// reads the request, so the answer is read even when the send failed
    /// because the helper had closed.
    pub fn request(&mut self, op_id: &OpId, call: &HelperCall) -> Result<Reply, ClientError> {
        let line = request_line(op_id, call)?;
        match self.stream.write_all(&line) {
            Ok(()) => self.read_reply(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.read_reply().map_err(|_| self.io_error(e))
            }
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// The next reply, parsed, with its descriptors.
    pub fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let (line, fds) = self.read_line_bytes()?.ok_or_else(|| ClientError::Closed {
            socket: self.socket.clone(),
        })?;
        let response = serde_json::from_slice(line.trim_ascii_end())
            .map_err(|e| ClientError::unreadable(&line, e))?;
        Ok(Reply { response, fds })
    }

    /// The next line as text, with the descriptors received so far; `None` when the helper closed the connection before
    /// sending anything more. A last line without a newline is returned as
    /// it is.
    pub fn read_line(&mut self) -> Result<Option<Line>, ClientError> {
        let Some((line, fds)) = self.read_line_bytes()? else {
            return Ok(None);
        };
        match String::from_utf8(line) {
            Ok(text) => Ok(Some(Line { text, fds })),
            Err(e) => Err(ClientError::unreadable(e.as_bytes(), e.utf8_error())),
        }
    }

    fn read_line_bytes(&mut self) -> Result<Option<RawLine>, ClientError> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=scanned + pos).collect();
                line.pop();
                return Ok(Some((line, std::mem::take(&mut self.fds))));
            }
            scanned = self.buf.len();
            if scanned > MAX_REPLY_BYTES {
                return Err(ClientError::ReplyTooLong {
                    max: MAX_REPLY_BYTES,
                });
            }
            let got = self.receive().map_err(|e| self.io_error(e))?;
            if got == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                return Ok(Some((line, std::mem::take(&mut self.fds))));
            }
        }
    }

    /// One `recvmsg` into the buffer, keeping the descriptors that came
    /// with it (`SCM_RIGHTS` arrives with the first byte of its range).
    /// Returns the number of bytes received; 0 at end of file.
    fn receive(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other?,
            }
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                self.fds.extend(fds);
            }
        }
        self.buf.extend_from_slice(&chunk[..got.bytes]);
        Ok(got.bytes)
    }
}

/// A request line: the envelope at this protocol version, and a newline.
fn request_line(op_id: &OpId, call: &HelperCall) -> Result<Vec<u8>, ClientError> {
    let request = HelperRequest {
        version: HELPER_PROTOCOL_VERSION,
        op_id: op_id.as_str().to_owned(),
        call: call.clone(),
    };
    let mut line = serde_json::to_vec(&request).map_err(ClientError::Encode)?;
    line.push(b'\n');
    Ok(line)
}

/// A connected, close-on-exec stream socket with `timeout` as its send and
/// receive timeout. The send timeout is set before `connect(2)`, which
/// honours it on a Unix socket.
fn connect_stream(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    // A zero timeout would mean "wait forever" to the kernel.
    let timeout = timeout.max(Duration::from_millis(1));
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    set_socket_timeout(&fd, Timeout::Send, Some(timeout))?;
    set_socket_timeout(&fd, Timeout::Recv, Some(timeout))?;
    let address = SocketAddrUnix::new(socket)?;
    loop {
        match rustix::net::connect(&fd, &address) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::net::UnixListener;

    fn op() -> OpId {
        OpId::parse("op-abc123").unwrap()
    }

    /// Serves one connection: reads a line, answers `reply`, passing `fd`
    /// when given; returns the line it read.
    fn serve_once(
        reply: &'static [u8],
        fd: Option<OwnedFd>,
    ) -> (tempfile::TempDir, Client, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            match fd {
                Some(fd) => {
                    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
                    let fds = [std::os::fd::AsFd::as_fd(&fd)];
                    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
                    rustix::net::sendmsg(
                        &stream,
                        &[io::IoSlice::new(reply)],
                        &mut control,
                        SendFlags::empty(),
                    )
                    .unwrap();
                }
                None => (&stream).write_all(reply).unwrap(),
            }
            line
        });
        (
            dir,
            Client::new(path).with_timeout(Duration::from_secs(5)),
            server,
        )
    }

    #[test]
    fn a_call_carries_the_op_id_and_reads_the_reply() {
        let (_dir, client, server) = serve_once(b"{\"result\":{\"kind\":\"done\"}}\n", None);
        let call = HelperCall::TapDelete {
            name: "bgtap3".into(),
        };
        let (reply, fd) = client.call(&op(), &call).unwrap();
        assert_eq!(reply, HelperReply::Done);
        assert!(fd.is_none());
        let sent: HelperRequest = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(sent.op_id, "op-abc123");
        assert_eq!(sent.version, HELPER_PROTOCOL_VERSION);
        assert_eq!(sent.call, call);
    }

    #[test]
    fn a_descriptor_travels_with_the_reply() {
        let passed = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let (_dir, client, _server) =
            serve_once(b"{\"result\":{\"kind\":\"socket\"}}\n", Some(passed));
        let fd = client.dns_socket(&op()).unwrap();
        assert!(rustix::fs::fstat(&fd).is_ok());
        let (_dir, client, _server) = serve_once(b"{\"result\":{\"kind\":\"socket\"}}\n", None);
        let err = client.dns_socket(&op()).unwrap_err();
        assert!(
            matches!(err, ClientError::MissingDescriptor { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn refusals_are_typed() {
        let (_dir, client, _server) = serve_once(
            b"{\"error\":{\"code\":\"invalid_name\",\"message\":\"no\",\"op_id\":\"op-abc123\"}}\n",
            None,
        );
        let err = client.call(&op(), &HelperCall::TapList).unwrap_err();
        let refusal = err.refusal().unwrap();
        assert_eq!(
            refusal.code,
            banger_proto::helper::HelperErrorCode::InvalidName
        );
        assert_eq!(err.to_string(), refusal.to_string());
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn garbage_and_wrong_replies_are_errors() {
        let (_dir, client, _server) = serve_once(b"not json\n", None);
        let err = client.ping(&op()).unwrap_err();
        assert!(matches!(err, ClientError::Unreadable { .. }), "{err:?}");
        assert!(err.to_string().contains("\"not json\""), "{err}");
        let (_dir, client, _server) = serve_once(b"{\"result\":{\"kind\":\"done\"}}\n", None);
        let err = client.ping(&op()).unwrap_err();
        assert!(
            matches!(err, ClientError::Unexpected { call: "ping", .. }),
            "{err:?}"
        );
        let (_dir, client, _server) = serve_once(b"", None);
        let err = client.ping(&op()).unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err:?}");
    }

    #[test]
    fn overlong_replies_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            // Stops when the client hangs up.
            while (&stream).write_all(&chunk).is_ok() {}
        });
        let mut conn = Client::new(&path).connect().unwrap();
        let err = conn.read_line().unwrap_err();
        assert!(matches!(err, ClientError::ReplyTooLong { .. }), "{err:?}");
        drop(conn);
        server.join().unwrap();
    }

    #[test]
    fn a_missing_helper_prints_each_cause_once_and_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(dir.path().join("helper.sock"));
        let err = client.ping(&op()).unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        let os_error = io::Error::from(io::ErrorKind::NotFound).to_string();
        let printed = err.display_chain();
        assert!(printed.contains("sudo banger system install"), "{printed}");
        assert_eq!(
            printed.matches("No such file or directory").count(),
            1,
            "{printed} ({os_error})"
        );
        assert!(!err.to_string().contains("os error"), "{err}");
    }

    #[test]
    fn every_wrapping_variant_leaves_its_cause_to_the_chain() {
        let cause = io::Error::other("the innermost cause");
        let errors = [
            ClientError::Unreachable {
                socket: "/x".into(),
                source: io::Error::other("the innermost cause"),
            },
            ClientError::Io {
                socket: "/x".into(),
                source: cause,
            },
            ClientError::unreadable(b"x", io::Error::other("the innermost cause")),
        ];
        for err in errors {
            let printed = err.display_chain();
            assert_eq!(
                printed.matches("the innermost cause").count(),
                1,
                "{printed}"
            );
        }
    }
}
