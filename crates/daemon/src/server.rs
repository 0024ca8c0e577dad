//! The accept loop and the per-connection request loop.
//!
//! A connection carries newline-delimited JSON requests, answered in order.
//! While a handler runs, the connection keeps reading: end-of-file there
//! means the client went away, and the handler's future is dropped (its
//! work cancelled, with whatever rollback its drop guards do). A request
//! line that arrives meanwhile is kept and served next.

use std::sync::Arc;
use std::time::Duration;

use banger_proto::{ErrorBody, ErrorCode, MAX_REQUEST_BYTES, Response};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::Semaphore;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::{dispatch, mint_op_id};
use crate::{DaemonError, DaemonState};

type Frames = FramedRead<OwnedReadHalf, AnyDelimiterCodec>;
type Frame = Result<Bytes, AnyDelimiterCodecError>;

/// Accepts connections until `shutdown` fires, then waits (up to the
/// configured grace) for open connections to finish their current request.
pub async fn run(listener: UnixListener, state: Arc<DaemonState>, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(state.config.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            serve_connection(stream, state, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    let grace = state.config.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            "shutdown grace elapsed with requests still running"
        );
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub fn signals(shutdown: CancellationToken) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        shutdown.cancel();
    }))
}

/// Why the read loop stopped waiting for a request.
enum Next {
    Frame(Frame),
    Closed,
    Stalled,
    Idle,
    Shutdown,
}

async fn serve_connection(
    stream: UnixStream,
    state: Arc<DaemonState>,
    shutdown: CancellationToken,
) {
    let own_uid = rustix::process::getuid().as_raw();
    let peer_uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    if peer_uid != Some(own_uid) {
        let op_id = mint_op_id();
        tracing::warn!(op_id = %op_id, ?peer_uid, "refused connection from another user");
        let err = Response::Err {
            error: ErrorBody::new(
                ErrorCode::PermissionDenied,
                "this daemon serves only its own user",
            )
            .with_op_id(op_id.as_str()),
        };
        let _ = write.write_all(&encode(&err)).await;
        return;
    }
    let mut frames = FramedRead::new(
        read,
        AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_REQUEST_BYTES),
    );
    let mut pending: Option<Frame> = None;
    loop {
        let frame = match pending.take() {
            Some(f) => f,
            None => match next_frame(&mut frames, &state, &shutdown).await {
                Next::Frame(f) => f,
                Next::Closed | Next::Shutdown => return,
                Next::Stalled => {
                    tracing::warn!("dropping connection: request incomplete after read timeout");
                    return;
                }
                Next::Idle => {
                    tracing::debug!("closing idle connection");
                    return;
                }
            },
        };
        let line = match frame {
            Ok(line) => line,
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                let op_id = mint_op_id();
                tracing::warn!(op_id = %op_id, limit = MAX_REQUEST_BYTES, "request too large, closing connection");
                let err = Response::Err {
                    error: ErrorBody::new(
                        ErrorCode::BadRequest,
                        format!("request larger than {MAX_REQUEST_BYTES} bytes"),
                    )
                    .with_op_id(op_id.as_str()),
                };
                let _ = write.write_all(&encode(&err)).await;
                return;
            }
            Err(AnyDelimiterCodecError::Io(e)) => {
                tracing::debug!(error = %e, "connection read failed");
                return;
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }

        // Serve the request while watching the connection: a closed read
        // side cancels the handler by dropping its future.
        let handler = dispatch(&state, line);
        tokio::pin!(handler);
        let response = tokio::select! {
            r = &mut handler => r,
            next = frames.next() => match next {
                None | Some(Err(AnyDelimiterCodecError::Io(_))) => {
                    tracing::info!("client went away; cancelling its request");
                    return; // drops `handler`
                }
                Some(frame) => {
                    pending = Some(frame);
                    handler.await
                }
            },
        };
        if let Err(e) = write.write_all(&encode(&response)).await {
            tracing::debug!(error = %e, "client went away before the response");
            return;
        }
    }
}

/// Waits for the next request line, telling apart a client that is merely
/// idle from one that started a request and stalled. A partial line gets
/// between one and two read timeouts to complete.
async fn next_frame(
    frames: &mut Frames,
    state: &DaemonState,
    shutdown: &CancellationToken,
) -> Next {
    let read_timeout = state.config.read_timeout;
    let mut idle = Duration::ZERO;
    let mut partial_seen = false;
    loop {
        let idle_now = frames.read_buffer().is_empty();
        tokio::select! {
            _ = shutdown.cancelled(), if idle_now => return Next::Shutdown,
            r = tokio::time::timeout(read_timeout, frames.next()) => match r {
                Ok(Some(f)) => return Next::Frame(f),
                Ok(None) => return Next::Closed,
                Err(_) if !frames.read_buffer().is_empty() => {
                    if partial_seen {
                        return Next::Stalled;
                    }
                    partial_seen = true;
                }
                Err(_) => {
                    partial_seen = false;
                    idle += read_timeout;
                    if idle >= state.config.idle_timeout {
                        return Next::Idle;
                    }
                }
            },
        }
    }
}

fn encode(response: &Response) -> Vec<u8> {
    // A Response holds only strings and JSON values: it always serialises.
    let mut line = serde_json::to_vec(response).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::tests::test_state;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, BufReader};

    struct Harness {
        _tmp: tempfile::TempDir,
        state: Arc<DaemonState>,
        socket: std::path::PathBuf,
        server: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let state = test_state(tmp.path());
        let socket = tmp.path().join("run/test.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(run(listener, Arc::clone(&state), state.shutdown.clone()));
        Harness {
            _tmp: tmp,
            state,
            socket,
            server,
        }
    }

    async fn wait_for(state: &DaemonState, what: impl Fn(&DaemonState) -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let changed = state.probe.changed.notified();
                if what(state) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
        })
        .await
        .expect("condition not reached within 5 s");
    }

    #[tokio::test]
    async fn a_disconnecting_client_cancels_its_handler() {
        let h = start().await;
        let mut conn = UnixStream::connect(&h.socket).await.unwrap();
        conn.write_all(b"{\"version\":1,\"method\":\"test.sleep\",\"params\":{\"ms\":60000}}\n")
            .await
            .unwrap();
        wait_for(&h.state, |s| s.probe.started.load(Ordering::SeqCst) == 1).await;
        drop(conn);
        wait_for(&h.state, |s| s.probe.cancelled.load(Ordering::SeqCst) == 1).await;
        assert_eq!(h.state.probe.completed.load(Ordering::SeqCst), 0);
        h.state.shutdown.cancel();
        h.server.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_sent_while_one_runs_is_served_next_not_lost() {
        let h = start().await;
        let conn = UnixStream::connect(&h.socket).await.unwrap();
        let (r, mut w) = conn.into_split();
        w.write_all(
            b"{\"version\":1,\"method\":\"test.sleep\",\"params\":{\"ms\":200}}\n{\"version\":1,\"method\":\"ping\"}\n",
        )
        .await
        .unwrap();
        let mut lines = BufReader::new(r).lines();
        let first: Response =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        let second: Response =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(first.into_result().unwrap()["slept_ms"], 200);
        assert_eq!(second.into_result().unwrap()["build_id"], "test-build");
        assert_eq!(h.state.probe.completed.load(Ordering::SeqCst), 1);
        h.state.shutdown.cancel();
        h.server.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_lets_the_running_request_finish() {
        let h = start().await;
        let conn = UnixStream::connect(&h.socket).await.unwrap();
        let (r, mut w) = conn.into_split();
        w.write_all(b"{\"version\":1,\"method\":\"test.sleep\",\"params\":{\"ms\":300}}\n")
            .await
            .unwrap();
        wait_for(&h.state, |s| s.probe.started.load(Ordering::SeqCst) == 1).await;
        h.state.shutdown.cancel();
        let mut lines = BufReader::new(r).lines();
        let reply = lines.next_line().await.unwrap().unwrap();
        assert!(reply.contains("slept_ms"), "{reply}");
        assert!(
            lines.next_line().await.unwrap().is_none(),
            "connection closed after"
        );
        h.server.await.unwrap();
        assert!(
            UnixStream::connect(&h.socket).await.is_err(),
            "listener closed"
        );
    }
}
