//! A blocking client for bangerd's line protocol.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use banger_proto::events::{EventFrame, EventsSubscribeParams, EventsSubscribed};
use banger_proto::methods::{self, Method};
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
    pub fn call_raw(&mut self, mut request: Request) -> Result<Value, CliError> {
        if !crate::output::verbose() {
            return self.exchange(&request);
        }
        // -v: our own op id on each request, so the line printed here
        // finds the daemon's log lines of that request.
        let op_id = request.op_id.get_or_insert_with(mint_op_id).clone();
        let started = Instant::now();
        let result = self.exchange(&request);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(CliError::Daemon(e)) => e.code.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        eprintln!(
            "banger: {} {op_id}: {outcome} in {ms:.1} ms",
            request.method
        );
        result
    }

    fn exchange(&mut self, request: &Request) -> Result<Value, CliError> {
        let mut line = serde_json::to_vec(request)
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

impl Client {
    /// Subscribes to the daemon's events (`events.subscribe`): the answer,
    /// and the connection turned into the stream of frames after it.
    pub fn subscribe(
        mut self,
        params: &EventsSubscribeParams,
    ) -> Result<(EventsSubscribed, EventStream), CliError> {
        let answer = self.call::<methods::EventsSubscribe>(params)?;
        let last_seq = answer.last_seq;
        Ok((
            answer,
            EventStream {
                reader: self.reader,
                _writer: self.writer,
                last_seq: params.since.unwrap_or(last_seq),
                ended: false,
            },
        ))
    }
}

/// The frames of an event stream, in order; ends after the daemon's
/// [`EventFrame::End`] or when the connection closes (a daemon that went
/// away, or dropped this subscriber before it could say why).
#[derive(Debug)]
pub struct EventStream {
    reader: BufReader<UnixStream>,
    /// Kept open: closing it would end the subscription.
    _writer: UnixStream,
    last_seq: u64,
    ended: bool,
}

impl EventStream {
    /// The sequence number of the last event read (resume after it).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// A duplicate of the connection, to wake a blocked reader by
    /// shutting it down from another thread.
    pub fn try_clone_socket(&self) -> io::Result<UnixStream> {
        self.reader.get_ref().try_clone()
    }
}

impl Iterator for EventStream {
    type Item = Result<EventFrame, CliError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => {
                self.ended = true;
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                self.ended = true;
                return Some(Err(CliError::Io(e)));
            }
        }
        if !line.ends_with('\n') {
            // Cut short: the daemon dropped the connection mid-line.
            self.ended = true;
            return None;
        }
        let frame: EventFrame = match serde_json::from_str(&line) {
            Ok(f) => f,
            Err(e) => {
                self.ended = true;
                return Some(Err(CliError::BadResponse(format!("event line: {e}"))));
            }
        };
        match &frame {
            EventFrame::Event(e) => self.last_seq = e.seq,
            EventFrame::End(_) => self.ended = true,
        }
        Some(Ok(frame))
    }
}

/// A fresh op id for a request of `-v`: `op-c` and 12 hex digits from the
/// clock, the process id and a counter (unique enough to grep a log by).
fn mint_op_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = (u64::from(nanos) << 16) ^ (u64::from(std::process::id()) << 4) ^ u64::from(n);
    format!("op-c{:012x}", mixed & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_op_ids_are_valid_and_differ() {
        let a = mint_op_id();
        let b = mint_op_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert!(banger_proto::OpId::parse(&id).is_some(), "{id}");
        }
    }
}
