//! The daemon's side of the banger-helper protocol (`proto::helper`).
//!
//! Calls are synchronous (one JSON line out, one back on a fresh
//! connection), so the async wrapper runs them on a blocking thread. Every
//! call carries the op id of the request it serves, taken from the task
//! that makes it, so the helper's log lines share the daemon's id.

use std::io::{self, BufRead, BufReader, IoSliceMut, Read as _, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::OpId;
use banger_proto::helper::{
    HELPER_PROTOCOL_VERSION, HelperCall, HelperError, HelperInfo, HelperReply, HelperRequest,
    HelperResponse,
};

/// Longest wait for one helper call (TAP and nft changes take milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest reply line read back.
const MAX_REPLY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HelperClientError {
    #[error(
        "banger-helper is not reachable at {socket}: {source} (install it with `sudo banger system install`)"
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talk to banger-helper at {socket}")]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Refused(HelperError),
    #[error("banger-helper sent a reply this daemon cannot read: {0}")]
    BadReply(String),
    #[error("helper task failed: {0}")]
    Task(String),
}

/// Where the helper listens and how to call it.
#[derive(Debug, Clone)]
pub struct HelperClient {
    socket: PathBuf,
}

impl HelperClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One call, on a blocking thread, under `op_id`.
    pub async fn call(
        &self,
        op_id: &OpId,
        call: HelperCall,
    ) -> Result<HelperReply, HelperClientError> {
        let (this, op_id) = (self.clone(), op_id.clone());
        tokio::task::spawn_blocking(move || this.call_blocking(&op_id, &call).map(|(r, _)| r))
            .await
            .map_err(|e| HelperClientError::Task(e.to_string()))?
    }

    /// `ping`, answered with the helper's identity and network.
    pub async fn ping(&self, op_id: &OpId) -> Result<HelperInfo, HelperClientError> {
        match self.call(op_id, HelperCall::Ping).await? {
            HelperReply::Pong(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// The DNS socket (UDP, port 53 on the bridge's gateway address).
    pub async fn dns_socket(&self, op_id: &OpId) -> Result<OwnedFd, HelperClientError> {
        let (this, op_id) = (self.clone(), op_id.clone());
        let (reply, fd) =
            tokio::task::spawn_blocking(move || this.call_blocking(&op_id, &HelperCall::DnsSocket))
                .await
                .map_err(|e| HelperClientError::Task(e.to_string()))??;
        match (reply, fd) {
            (HelperReply::Socket, Some(fd)) => Ok(fd),
            (HelperReply::Socket, None) => Err(HelperClientError::BadReply(
                "dns_socket reply came without a descriptor".into(),
            )),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Sends one request and reads its reply, with any descriptor passed
    /// beside it.
    pub fn call_blocking(
        &self,
        op_id: &OpId,
        call: &HelperCall,
    ) -> Result<(HelperReply, Option<OwnedFd>), HelperClientError> {
        let io_err = |source| HelperClientError::Io {
            socket: self.socket.clone(),
            source,
        };
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| HelperClientError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        stream
            .set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(CALL_TIMEOUT))
            .map_err(io_err)?;
        let request = HelperRequest {
            version: HELPER_PROTOCOL_VERSION,
            op_id: op_id.to_string(),
            call: call.clone(),
        };
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| HelperClientError::BadReply(format!("encode request: {e}")))?;
        line.push(b'\n');
        stream.write_all(&line).map_err(io_err)?;

        let (first, fd) = recv_with_fd(&stream).map_err(io_err)?;
        let mut reply = first;
        if !reply.contains(&b'\n') {
            let mut reader = BufReader::new(&stream).take(MAX_REPLY_BYTES as u64);
            reader.read_until(b'\n', &mut reply).map_err(io_err)?;
        }
        if reply.is_empty() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "banger-helper closed the connection without answering",
            )));
        }
        let response: HelperResponse = serde_json::from_slice(reply.trim_ascii_end())
            .map_err(|e| HelperClientError::BadReply(e.to_string()))?;
        match response {
            HelperResponse::Result(r) => Ok((r, fd)),
            HelperResponse::Error(e) => Err(HelperClientError::Refused(e)),
        }
    }
}

fn unexpected(reply: &HelperReply) -> HelperClientError {
    HelperClientError::BadReply(format!("unexpected reply {reply:?}"))
}

/// One `recvmsg`: the first bytes of the reply and, when the helper passed
/// one, the descriptor that travels with them (`SCM_RIGHTS` arrives with
/// the first byte of its range).
fn recv_with_fd(stream: &UnixStream) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for received in fds {
                // Keep the first; any extra is closed on drop.
                if fd.is_none() {
                    fd = Some(received);
                }
            }
        }
    }
    buf.truncate(got.bytes);
    Ok((buf, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(
        reply: &'static str,
    ) -> (
        tempfile::TempDir,
        HelperClient,
        std::thread::JoinHandle<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream).write_all(reply.as_bytes()).unwrap();
            line
        });
        (dir, HelperClient::new(path), server)
    }

    #[test]
    fn a_call_carries_the_op_id_and_reads_the_reply() {
        let (_dir, client, server) = serve_once("{\"result\":{\"kind\":\"done\"}}\n");
        let (reply, fd) = client
            .call_blocking(
                &OpId::parse("op-abc123").unwrap(),
                &HelperCall::TapDelete {
                    name: "bgtap3".into(),
                },
            )
            .unwrap();
        assert_eq!(reply, HelperReply::Done);
        assert!(fd.is_none());
        let sent: HelperRequest = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(sent.op_id, "op-abc123");
        assert_eq!(
            sent.call,
            HelperCall::TapDelete {
                name: "bgtap3".into()
            }
        );
    }

    #[test]
    fn refusals_are_typed_and_missing_helpers_say_how_to_install() {
        let (_dir, client, _server) = serve_once(
            "{\"error\":{\"code\":\"invalid_name\",\"message\":\"no\",\"op_id\":\"op-abc123\"}}\n",
        );
        let err = client
            .call_blocking(&OpId::parse("op-abc123").unwrap(), &HelperCall::TapList)
            .unwrap_err();
        assert!(
            matches!(&err, HelperClientError::Refused(e) if e.code == banger_proto::helper::HelperErrorCode::InvalidName),
            "{err:?}"
        );
        let gone = HelperClient::new("/nonexistent/helper.sock");
        let err = gone
            .call_blocking(&OpId::parse("op-abc123").unwrap(), &HelperCall::Ping)
            .unwrap_err();
        assert!(err.to_string().contains("banger system install"), "{err}");
    }

    #[test]
    fn garbage_replies_are_errors() {
        let (_dir, client, _server) = serve_once("not json\n");
        let err = client
            .call_blocking(&OpId::parse("op-abc123").unwrap(), &HelperCall::Ping)
            .unwrap_err();
        assert!(matches!(err, HelperClientError::BadReply(_)), "{err:?}");
    }
}
