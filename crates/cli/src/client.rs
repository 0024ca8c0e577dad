//! A blocking client for bangerd's line protocol.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use banger_proto::methods::Method;
use banger_proto::{Request, Response};
use serde_json::Value;

use crate::CliError;

/// One connection to the daemon; requests on it are answered in turn.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    socket: PathBuf,
}

impl Client {
    /// Connects without starting anything. `NotFound`/`ConnectionRefused`
    /// mean "no daemon"; permission errors get their own variant.
    pub fn connect(socket: &Path) -> Result<Self, CliError> {
        let stream = UnixStream::connect(socket).map_err(|source| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                CliError::SocketPermission {
                    socket: socket.to_owned(),
                    source,
                }
            } else {
                CliError::Connect {
                    socket: socket.to_owned(),
                    source,
                }
            }
        })?;
        let writer = stream.try_clone().map_err(CliError::Io)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            socket: socket.to_owned(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Calls method `M` (`client.call::<methods::VmShow>(&VmRef {..})`)
    /// and decodes its result.
    pub fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, CliError> {
        let params = serde_json::to_value(params)
            .map_err(|e| CliError::BadParams(format!("encode params: {e}")))?;
        let result = self.call_raw(Request::new(M::NAME, params))?;
        serde_json::from_value(result)
            .map_err(|e| CliError::BadResponse(format!("{} result: {e}", M::NAME)))
    }

    /// Sends a prepared request and returns the raw result value (for
    /// `banger rpc`, which sends any method).
    pub fn call_raw(&mut self, request: Request) -> Result<Value, CliError> {
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| CliError::BadParams(format!("encode request: {e}")))?;
        line.push(b'\n');
        // The daemon may answer and close before reading our request (it
        // refuses a foreign uid on connect): a failed write still reads the
        // answer waiting in the socket, if there is one.
        let written = self.writer.write_all(&line);
        let mut answer = String::new();
        let read = self.reader.read_line(&mut answer);
        match (written, read) {
            (_, Ok(n)) if n > 0 => {}
            (Err(e), _) => return Err(CliError::Io(e)),
            (Ok(()), Ok(_)) => return Err(CliError::Closed),
            (Ok(()), Err(e)) => return Err(CliError::Io(e)),
        }
        let response: Response =
            serde_json::from_str(&answer).map_err(|e| CliError::BadResponse(e.to_string()))?;
        response.into_result().map_err(CliError::Daemon)
    }
}
