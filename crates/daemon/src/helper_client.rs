//! The daemon's side of the banger-helper protocol: a thin async wrapper
//! around the helper library's client (`banger_helper::client`), which is
//! the one place that speaks the wire.
//!
//! Calls are synchronous (one JSON line out, one back on a fresh
//! connection), so each async call runs on a blocking thread. Every call
//! names the op id of the request it serves, so the helper's log lines
//! share the daemon's id; this wrapper never picks one itself.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use banger_helper::client::{Client, ClientError};
use banger_proto::OpId;
use banger_proto::helper::{HelperCall, HelperInfo, HelperReply};

#[derive(Debug, thiserror::Error)]
pub enum HelperClientError {
    /// The call reached the wire and failed there (or the helper refused).
    #[error(transparent)]
    Helper(#[from] ClientError),
    /// The blocking thread that made the call panicked or was cancelled.
    #[error("the helper call's task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Where the helper listens and how to call it.
#[derive(Debug, Clone)]
pub struct HelperClient {
    client: Client,
}

impl HelperClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            client: Client::new(socket),
        }
    }

    pub fn socket(&self) -> &Path {
        self.client.socket()
    }

    /// One call, on a blocking thread, under `op_id`.
    pub async fn call(
        &self,
        op_id: &OpId,
        call: HelperCall,
    ) -> Result<HelperReply, HelperClientError> {
        let (client, op_id) = (self.client.clone(), op_id.clone());
        blocking(move || client.call(&op_id, &call).map(|(reply, _)| reply)).await
    }

    /// `ping`, answered with the helper's identity and network.
    pub async fn ping(&self, op_id: &OpId) -> Result<HelperInfo, HelperClientError> {
        let (client, op_id) = (self.client.clone(), op_id.clone());
        blocking(move || client.ping(&op_id)).await
    }

    /// The DNS socket (UDP, port 53 on the bridge's gateway address).
    pub async fn dns_socket(&self, op_id: &OpId) -> Result<OwnedFd, HelperClientError> {
        let (client, op_id) = (self.client.clone(), op_id.clone());
        blocking(move || client.dns_socket(&op_id)).await
    }

    /// Sends one request and reads its reply, with any descriptor passed
    /// beside it, on the calling thread (for rollbacks, which block).
    pub fn call_blocking(
        &self,
        op_id: &OpId,
        call: &HelperCall,
    ) -> Result<(HelperReply, Option<OwnedFd>), HelperClientError> {
        Ok(self.client.call(op_id, call)?)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, HelperClientError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(HelperClientError::Task)?
        .map_err(HelperClientError::Helper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::os::unix::net::UnixListener;

    use banger_proto::helper::{HelperErrorCode, HelperRequest};

    fn op() -> OpId {
        OpId::parse("op-abc123").unwrap()
    }

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

    #[tokio::test]
    async fn a_call_carries_the_given_op_id_and_reads_the_reply() {
        let (_dir, client, server) = serve_once("{\"result\":{\"kind\":\"done\"}}\n");
        let call = HelperCall::TapDelete {
            name: "bgtap3".into(),
        };
        let reply = client.call(&op(), call.clone()).await.unwrap();
        assert_eq!(reply, HelperReply::Done);
        let sent: HelperRequest = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(sent.op_id, "op-abc123");
        assert_eq!(sent.call, call);
    }

    #[tokio::test]
    async fn refusals_are_typed_and_missing_helpers_say_how_to_install() {
        let (_dir, client, _server) = serve_once(
            "{\"error\":{\"code\":\"invalid_name\",\"message\":\"no\",\"op_id\":\"op-abc123\"}}\n",
        );
        let err = client.call(&op(), HelperCall::TapList).await.unwrap_err();
        assert!(
            matches!(&err, HelperClientError::Helper(ClientError::Refused(e)) if e.code == HelperErrorCode::InvalidName),
            "{err:?}"
        );
        let gone = HelperClient::new("/nonexistent/helper.sock");
        let err = gone.ping(&op()).await.unwrap_err();
        let printed = crate::error::chain(&err);
        assert!(printed.contains("banger system install"), "{printed}");
        assert_eq!(
            printed.matches("No such file or directory").count(),
            1,
            "{printed}"
        );
    }

    #[test]
    fn garbage_replies_are_errors() {
        let (_dir, client, _server) = serve_once("not json\n");
        let err = client.call_blocking(&op(), &HelperCall::Ping).unwrap_err();
        assert!(
            matches!(
                err,
                HelperClientError::Helper(ClientError::Unreadable { .. })
            ),
            "{err:?}"
        );
    }
}
