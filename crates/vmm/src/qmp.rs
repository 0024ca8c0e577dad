//! A QMP connection over the VM's Unix socket, through the `qapi` crate
//! (typed commands generated from QEMU's schema, sync over std I/O).
//!
//! One short-lived connection per call: QEMU serves one QMP client per
//! socket at a time, so nothing may hold it open.
//!
//! The greeting is read here rather than with `qapi::Qmp::handshake`,
//! because `qapi` 0.15 panics (`expect("unexpected eof")`) when the socket
//! closes before the greeting, which is exactly what a VMM dying during
//! startup does. Everything after the greeting goes through `Qmp::execute`.

use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::{Command, ExecuteError, Qmp, Stream, qmp};

use crate::error::VmmError;

type QmpStream = Qmp<Stream<BufReader<UnixStream>, UnixStream>>;

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Nobody listens (yet): no socket file, or connection refused.
    NotListening(io::Error),
    /// Connected, but the greeting or `qmp_capabilities` failed.
    Handshake(String),
}

impl ConnectError {
    pub(crate) fn message(&self) -> String {
        match self {
            ConnectError::NotListening(e) => e.to_string(),
            ConnectError::Handshake(m) => m.clone(),
        }
    }
}

pub(crate) struct QmpClient {
    qmp: QmpStream,
    socket: PathBuf,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects, reads the greeting and leaves capabilities negotiation
    /// mode. `timeout` bounds every read and write.
    pub(crate) fn connect(socket: &Path, timeout: Duration) -> Result<Self, ConnectError> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ConnectError::NotListening(e)
            }
            _ => ConnectError::Handshake(format!("connect: {e}")),
        })?;
        let handshake = |e: io::Error| ConnectError::Handshake(e.to_string());
        stream.set_read_timeout(Some(timeout)).map_err(handshake)?;
        stream.set_write_timeout(Some(timeout)).map_err(handshake)?;
        let reader = BufReader::new(stream.try_clone().map_err(handshake)?);
        let mut qmp = Qmp::new(Stream::new(reader, stream));

        let mut greeting = String::new();
        let n = qmp
            .inner_mut()
            .read_line(&mut greeting)
            .map_err(|e| ConnectError::Handshake(format!("read greeting: {e}")))?;
        if n == 0 {
            return Err(ConnectError::Handshake(
                "connection closed before the greeting".into(),
            ));
        }
        serde_json::from_str::<qmp::QapiCapabilities>(&greeting).map_err(|e| {
            ConnectError::Handshake(format!("bad greeting {:?}: {e}", greeting.trim_end()))
        })?;
        qmp.execute(&qmp::qmp_capabilities { enable: None })
            .map_err(|e| ConnectError::Handshake(format!("qmp_capabilities: {e}")))?;
        Ok(QmpClient {
            qmp,
            socket: socket.to_path_buf(),
        })
    }

    /// Connects and maps failures to [`VmmError::Qmp`] naming `command`.
    pub(crate) fn open(
        socket: &Path,
        timeout: Duration,
        command: &'static str,
    ) -> Result<Self, VmmError> {
        Self::connect(socket, timeout).map_err(|e| VmmError::Qmp {
            command,
            socket: socket.to_path_buf(),
            message: e.message(),
        })
    }

    pub(crate) fn execute<C: Command>(&mut self, command: &C) -> Result<C::Ok, VmmError> {
        self.qmp.execute(command).map_err(|e| VmmError::Qmp {
            command: C::NAME,
            socket: self.socket.clone(),
            message: match e {
                ExecuteError::Qapi(e) => format!("qemu refused: {e}"),
                ExecuteError::Io(e) => e.to_string(),
            },
        })
    }
}
