//! A minimal synchronous client of the helper protocol: one request line
//! out, one reply line back, with any descriptor that came with it. The
//! daemon has its own; this one serves the integration tests and tools.

use std::io::{self, IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use banger_proto::helper::{HELPER_PROTOCOL_VERSION, HelperCall, HelperRequest, HelperResponse};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// One connection to the helper.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// A reply line and the descriptors that arrived with it.
#[derive(Debug)]
pub struct Reply {
    pub response: HelperResponse,
    pub fds: Vec<OwnedFd>,
}

impl Client {
    pub fn connect(socket: &Path, timeout: Duration) -> io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
        })
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one request line.
    pub fn send(&mut self, op_id: &str, call: HelperCall) -> io::Result<()> {
        let request = HelperRequest {
            version: HELPER_PROTOCOL_VERSION,
            op_id: op_id.to_owned(),
            call,
        };
        let mut line = serde_json::to_vec(&request).map_err(io::Error::other)?;
        line.push(b'\n');
        self.send_raw(&line)
    }

    /// The next line as text, with the descriptors received so far;
    /// `None` when the helper closed the connection first.
    pub fn read_line(&mut self) -> io::Result<Option<(String, Vec<OwnedFd>)>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                let text = String::from_utf8(line).map_err(io::Error::other)?;
                return Ok(Some((text, std::mem::take(&mut self.fds))));
            }
            let mut chunk = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = msg {
                    self.fds.extend(fds);
                }
            }
            if got.bytes == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..got.bytes]);
        }
    }

    /// The next reply, parsed.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let (line, fds) = self
            .read_line()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "helper closed"))?;
        let response = serde_json::from_str(&line)
            .map_err(|e| io::Error::other(format!("unreadable reply {line:?}: {e}")))?;
        Ok(Reply { response, fds })
    }

    /// Sends a call and reads its reply.
    pub fn call(&mut self, op_id: &str, call: HelperCall) -> io::Result<Reply> {
        self.send(op_id, call)?;
        self.read_reply()
    }
}
