//! Asking the helper `ping`: is it there, and does it serve us?

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banger_proto::helper::{
    HELPER_PROTOCOL_VERSION, HelperCall, HelperError, HelperInfo, HelperReply, HelperRequest,
    HelperResponse,
};

/// Read/write timeout of one `ping`.
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What a `ping` on the helper's socket found.
#[derive(Debug)]
pub(super) enum Ping {
    Pong(HelperInfo),
    /// The helper answered with an error (`permission_denied` for a uid it
    /// does not serve).
    Refused(HelperError),
    /// No socket, or nothing listening on it.
    Absent(io::Error),
    /// Something answered, but not like a helper.
    Broken(String),
}

pub(super) fn op_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("op-sys{:x}{:08x}", std::process::id(), nanos)
}

pub(super) fn ping(socket: &Path) -> Ping {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return Ping::Absent(e),
    };
    let _ = stream.set_read_timeout(Some(PING_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PING_TIMEOUT));
    let request = HelperRequest {
        version: HELPER_PROTOCOL_VERSION,
        op_id: op_id(),
        call: HelperCall::Ping,
    };
    let mut line = match serde_json::to_vec(&request) {
        Ok(l) => l,
        Err(e) => return Ping::Broken(format!("encode ping: {e}")),
    };
    line.push(b'\n');
    // A helper that refuses our uid may answer and close before reading:
    // read its answer even when the write failed.
    let written = (&stream).write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    match (written, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) | (Ok(()), Err(e)) => return Ping::Broken(format!("ping: {e}")),
        (Ok(()), Ok(_)) => return Ping::Broken("closed without answering".into()),
    }
    match serde_json::from_str::<HelperResponse>(&answer) {
        Ok(HelperResponse::Result(HelperReply::Pong(info))) => Ping::Pong(info),
        Ok(HelperResponse::Result(other)) => Ping::Broken(format!("unexpected reply {other:?}")),
        Ok(HelperResponse::Error(e)) => Ping::Refused(e),
        Err(e) => Ping::Broken(format!("unreadable answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_are_valid() {
        assert!(banger_proto::OpId::parse(&op_id()).is_some());
    }
}
