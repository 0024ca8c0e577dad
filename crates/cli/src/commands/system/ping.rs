//! Asking the helper `ping`: is it there, and does it serve us?

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banger_helper::client::{Client, ClientError};
use banger_proto::OpId;
use banger_proto::helper::{HelperError, HelperInfo};

/// Bound on connecting, sending and reading one `ping`.
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

/// A fresh op id for one call from this command: `op-sys`, the pid and
/// the clock's nanoseconds, in hex.
fn op_id() -> OpId {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tail = format!("sys{:x}{:08x}", std::process::id(), nanos);
    // "sys", 1 to 8 and then 8 hex digits: 12 to 19 characters of [a-z0-9],
    // which OpId always accepts.
    OpId::from_tail(&tail).unwrap_or_else(|| unreachable!("op id tail {tail:?} is invalid"))
}

pub(super) fn ping(socket: &Path) -> Ping {
    let client = Client::new(socket).with_timeout(PING_TIMEOUT);
    match client.ping(&op_id()) {
        Ok(info) => Ping::Pong(info),
        Err(ClientError::Refused(e)) => Ping::Refused(e),
        Err(ClientError::Unreachable { source, .. }) => Ping::Absent(source),
        // The callers name the socket themselves.
        Err(ClientError::Io { source, .. }) => Ping::Broken(format!("ping: {source}")),
        Err(ClientError::Closed { .. }) => Ping::Broken("closed without answering".into()),
        Err(e) => Ping::Broken(e.display_chain()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_are_valid() {
        assert!(OpId::parse(op_id().as_str()).is_some());
    }
}
