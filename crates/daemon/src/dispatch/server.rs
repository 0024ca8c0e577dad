//! The accept loop and the per-connection request loop.
//!
//! A connection carries newline-delimited JSON requests, answered in order.
//! While a handler runs, the connection keeps reading, and a request line
//! that arrives meanwhile is kept and served next.
//!
//! End-of-file on the read side is not the same as a client gone: a client
//! may shut down only its write side after sending (as `socat` and `nc -N`
//! do) and still wait for the answers. So after end-of-file the connection
//! answers the requests it already read, in order, and then closes; only a
//! real hang-up (the peer closed its socket, or shut down both directions:
//! `POLLHUP` on a Unix stream socket, which a half-close never raises)
//! drops the running handler's future, cancelling its work with whatever
//! rollback its drop guards do. [`HangUpWatch`] waits for that hang-up
//! whenever the connection is not being read (after end-of-file, or while
//! a read-ahead request is pending).

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use banger_proto::{ErrorBody, ErrorCode, MAX_REQUEST_BYTES, Response};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::Semaphore;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Dispatched, dispatch_streaming};
use crate::events::Subscription;
use crate::op::mint as mint_op_id;
use crate::{DaemonError, DaemonState};
use banger_proto::EndReason;
use banger_proto::events::{Event, EventFrame, StreamEnd};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::broadcast::error::RecvError;

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
    // A request line read ahead while the previous one ran.
    let mut pending: Option<Frame> = None;
    // The client shut down its write side (or closed): no more requests.
    let mut read_closed = false;
    // Made the first time the connection stops being read.
    let mut hang_up: Option<HangUpWatch> = None;
    loop {
        let frame = match pending.take() {
            Some(f) => f,
            None if read_closed => return, // every request read was answered
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

        // Serve the request while watching the connection: reading it while
        // nothing is pending, else waiting for a hang-up. A hang-up cancels
        // the handler by dropping its future; end-of-file alone does not.
        let handler = dispatch_streaming(&state, line);
        tokio::pin!(handler);
        let response = loop {
            let reading = pending.is_none() && !read_closed;
            if !reading && hang_up.is_none() {
                hang_up = Some(HangUpWatch::new(frames.get_ref().as_ref()));
            }
            tokio::select! {
                biased;
                r = &mut handler => break r,
                next = frames.next(), if reading => match next {
                    Some(Err(AnyDelimiterCodecError::Io(e))) => {
                        tracing::info!(error = %e, "client went away; cancelling its request");
                        return; // drops `handler`
                    }
                    Some(frame) => pending = Some(frame),
                    None => {
                        // A half-close or a close: the hang-up watch tells.
                        read_closed = true;
                        #[cfg(test)]
                        state.probe.note_read_closed();
                    }
                },
                () = wait_hang_up(hang_up.as_ref()), if !reading => {
                    tracing::info!("client hung up; cancelling its request");
                    return; // drops `handler`
                }
            }
        };
        let Dispatched { response, follow } = response;
        if let Err(e) = write.write_all(&encode(&response)).await {
            tracing::debug!(error = %e, "client went away before the response");
            return;
        }
        if let Some(sub) = follow {
            // From here on the connection carries only the stream; a
            // request read ahead is dropped with it.
            let hang_up = hang_up.unwrap_or_else(|| HangUpWatch::new(frames.get_ref().as_ref()));
            drop(frames);
            stream_events(&mut write, sub, &hang_up, &state).await;
            #[cfg(test)]
            state.probe.changed.notify_waiters();
            return;
        }
    }
}

/// Sends a subscription's events until the client hangs up or the stream
/// ends: the daemon stops (`shutdown`), the subscriber fell further behind
/// than the bus holds (`lagged`), or it left a line unread for `stall`
/// (`stalled`). The last two are how a subscriber that does not read is
/// dropped: what is queued for it is the bus's bounded ring, never more.
/// After a stall the line cut short and the end frame are given twice
/// `stall` more to go out, so a client that was only slow still reads why.
async fn stream_events(
    write: &mut OwnedWriteHalf,
    sub: Subscription,
    hang_up: &HangUpWatch,
    state: &DaemonState,
) {
    let (shutdown, stall) = (&state.shutdown, state.config.event_stall);
    let Subscription {
        answer,
        replay,
        mut live,
    } = sub;
    let mut last_seq = replay.first().map_or(answer.last_seq, |e| e.seq - 1);
    let mut replay = replay.into_iter();
    let end = loop {
        let event = match replay.next() {
            Some(e) => e,
            None => tokio::select! {
                biased;
                () = shutdown.cancelled() => break (EndReason::Shutdown, "the daemon is stopping".to_owned()),
                () = wait_hang_up(Some(hang_up)) => return,
                r = live.recv() => match r {
                    Ok(e) => e,
                    Err(RecvError::Lagged(n)) => break (
                        EndReason::Lagged,
                        format!("the subscriber fell {n} events behind; resume with since={last_seq}"),
                    ),
                    Err(RecvError::Closed) => break (EndReason::Shutdown, "the daemon is stopping".to_owned()),
                },
            },
        };
        if event.seq <= last_seq {
            continue;
        }
        let line = encode(&EventFrame::Event(Event::clone(&event)));
        match send_within(write, &line, stall).await {
            Sent::All => last_seq = event.seq,
            Sent::Gone => return,
            Sent::Part(written) => {
                // The rest of this line goes out before the end: the end
                // counts it as sent, so a resume does not repeat it.
                last_seq = event.seq;
                tracing::warn!(
                    last_seq,
                    stall_ms = stall.as_millis() as u64,
                    "dropping an event subscriber that stopped reading"
                );
                let end = EventFrame::End(StreamEnd {
                    reason: EndReason::Stalled,
                    message: format!(
                        "the subscriber read nothing for {} ms; resume with since={last_seq}",
                        stall.as_millis()
                    ),
                    last_seq,
                });
                let mut rest = line[written..].to_vec();
                rest.extend_from_slice(&encode(&end));
                #[cfg(test)]
                state.probe.note_stalled_stream();
                let _ = tokio::time::timeout(2 * stall, write.write_all(&rest)).await;
                return;
            }
        }
    };
    let (reason, message) = end;
    tracing::info!(%reason, last_seq, "ending an event stream");
    let end = EventFrame::End(StreamEnd {
        reason,
        message,
        last_seq,
    });
    let _ = tokio::time::timeout(stall, write.write_all(&encode(&end))).await;
}

/// How far a write within its time limit got.
enum Sent {
    All,
    /// The limit passed with this many bytes written.
    Part(usize),
    /// The client went away.
    Gone,
}

/// Writes `line`, giving up after `limit` while remembering how much went
/// out (a plain `write_all` under a timeout would not say).
async fn send_within(write: &mut OwnedWriteHalf, line: &[u8], limit: Duration) -> Sent {
    let mut written = 0;
    let writing = async {
        while written < line.len() {
            match write.write(&line[written..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => written += n,
            }
        }
        true
    };
    match tokio::time::timeout(limit, writing).await {
        Ok(true) => Sent::All,
        Ok(false) => Sent::Gone,
        Err(_) => Sent::Part(written),
    }
}

/// Notices when the peer of a connection hangs up (closes its socket, or
/// shuts down both directions), as opposed to a half-close.
///
/// It watches a duplicate of the connection's descriptor, registered with
/// the runtime on its own for write readiness: epoll reports `EPOLLHUP`
/// with it, which tokio shows as write-closed. A half-close only raises
/// `EPOLLRDHUP` (read-closed), which read readiness keeps reporting once
/// end-of-file was seen, so read readiness cannot tell the two apart.
/// Plain write readiness is cleared after each wake-up so the wait sleeps
/// until the socket's state changes again; doing that on a registration of
/// its own leaves the connection's writer undisturbed. Dropping the watch
/// closes only the duplicate (no shutdown), so the connection stays open.
#[derive(Debug)]
struct HangUpWatch {
    /// `None` if the descriptor could not be duplicated or registered:
    /// then no hang-up is noticed and running requests finish.
    dup: Option<UnixStream>,
}

impl HangUpWatch {
    fn new(stream: &UnixStream) -> Self {
        let dup = stream
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)));
        match dup {
            Ok(dup) => Self { dup: Some(dup) },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the connection for a hang-up");
                Self { dup: None }
            }
        }
    }

    /// Resolves once the peer has hung up; never, if it does not.
    async fn hung_up(&self) {
        let Some(dup) = &self.dup else {
            return std::future::pending().await;
        };
        loop {
            match dup.ready(Interest::WRITABLE).await {
                Ok(ready) if ready.is_write_closed() => return,
                Ok(_) => {
                    // Consume this wake-up; the next comes with a change.
                    let _ = dup.try_io(Interest::WRITABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "hang-up watch failed");
                    return std::future::pending().await;
                }
            }
        }
    }
}

async fn wait_hang_up(watch: Option<&HangUpWatch>) {
    match watch {
        Some(w) => w.hung_up().await,
        None => std::future::pending().await,
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

fn encode<T: serde::Serialize>(line: &T) -> Vec<u8> {
    // Responses and event frames hold only strings, numbers and JSON
    // values, and maps with string keys: they always serialise.
    let mut line = serde_json::to_vec(line).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Probe;
    use serde_json::Value;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncBufReadExt, BufReader, Lines};

    struct Harness {
        _tmp: tempfile::TempDir,
        state: Arc<DaemonState>,
        socket: std::path::PathBuf,
        server: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Harness {
        start_tuned(|_| {}).await
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

    fn count(state: &DaemonState, what: fn(&Probe) -> &AtomicU32) -> u32 {
        what(&state.probe).load(Ordering::SeqCst)
    }

    /// The next answer's result; panics on an error or a closed connection.
    async fn result(lines: &mut Lines<BufReader<OwnedReadHalf>>) -> Value {
        let line = lines.next_line().await.unwrap().expect("an answer");
        serde_json::from_str::<Response>(&line)
            .unwrap()
            .into_result()
            .unwrap()
    }

    const HOLD: &[u8] = b"{\"version\":1,\"method\":\"test.hold\"}\n";

    /// A client that shuts down its write side after sending (`socat`,
    /// `nc -N`) still gets its answer: end-of-file is not a hang-up.
    #[tokio::test]
    async fn a_half_closed_client_gets_its_answer_and_the_handler_is_not_cancelled() {
        let h = start().await;
        let conn = UnixStream::connect(&h.socket).await.unwrap();
        let (r, mut w) = conn.into_split();
        w.write_all(HOLD).await.unwrap();
        wait_for(&h.state, |s| count(s, |p| &p.started) == 1).await;
        w.shutdown().await.unwrap();
        // The server has seen the end-of-file while the handler runs.
        wait_for(&h.state, |s| count(s, |p| &p.read_closed) == 1).await;
        h.state.probe.release();
        let mut lines = BufReader::new(r).lines();
        let reply: Response =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(reply.into_result().unwrap()["held"], true);
        assert!(
            lines.next_line().await.unwrap().is_none(),
            "connection closed after the last answer"
        );
        assert_eq!(count(&h.state, |p| &p.completed), 1);
        assert_eq!(count(&h.state, |p| &p.cancelled), 0);
        h.state.shutdown.cancel();
        h.server.await.unwrap();
    }

    /// After a half-close, every request already sent is answered, in
    /// order, and then the connection is closed.
    #[tokio::test]
    async fn a_half_closed_client_gets_every_request_it_sent_answered_in_order() {
        let h = start().await;
        let conn = UnixStream::connect(&h.socket).await.unwrap();
        let (r, mut w) = conn.into_split();
        w.write_all(
            b"{\"version\":1,\"method\":\"test.sleep\",\"params\":{\"ms\":100}}\n\
              {\"version\":1,\"method\":\"ping\"}\n\
              {\"version\":1,\"method\":\"test.sleep\",\"params\":{\"ms\":1}}\n",
        )
        .await
        .unwrap();
        w.shutdown().await.unwrap();
        let mut lines = BufReader::new(r).lines();
        assert_eq!(result(&mut lines).await["slept_ms"], 100);
        assert_eq!(result(&mut lines).await["build_id"], "test-build");
        assert_eq!(result(&mut lines).await["slept_ms"], 1);
        assert!(lines.next_line().await.unwrap().is_none(), "then closed");
        assert_eq!(count(&h.state, |p| &p.cancelled), 0);
        h.state.shutdown.cancel();
        h.server.await.unwrap();
    }

    /// A half-closed client that then closes its socket (as `socat` does
    /// after its timeout) has hung up: its request is cancelled.
    #[tokio::test]
    async fn a_half_closed_client_that_then_closes_cancels_its_handler() {
        let h = start().await;
        let conn = UnixStream::connect(&h.socket).await.unwrap();
        let (r, mut w) = conn.into_split();
        w.write_all(HOLD).await.unwrap();
        wait_for(&h.state, |s| count(s, |p| &p.started) == 1).await;
        w.shutdown().await.unwrap();
        // The server now waits for the handler or a hang-up.
        wait_for(&h.state, |s| count(s, |p| &p.read_closed) == 1).await;
        drop((r, w));
        wait_for(&h.state, |s| count(s, |p| &p.cancelled) == 1).await;
        assert_eq!(count(&h.state, |p| &p.completed), 0);
        h.state.shutdown.cancel();
        h.server.await.unwrap();
    }

    /// While a request line read ahead waits, the connection is not read;
    /// a client closing then still cancels the running request.
    #[tokio::test]
    async fn a_client_closing_with_a_request_pending_cancels_the_running_one() {
        let h = start().await;
        let mut conn = UnixStream::connect(&h.socket).await.unwrap();
        conn.write_all(HOLD).await.unwrap();
        wait_for(&h.state, |s| count(s, |p| &p.started) == 1).await;
        conn.write_all(b"{\"version\":1,\"method\":\"ping\"}\n")
            .await
            .unwrap();
        drop(conn);
        wait_for(&h.state, |s| count(s, |p| &p.cancelled) == 1).await;
        assert_eq!(count(&h.state, |p| &p.completed), 0);
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

    /// A server over a test state (as `test_state` makes it) whose config
    /// `tune` changes first.
    async fn start_tuned(tune: impl FnOnce(&mut crate::DaemonConfig)) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let devices = Arc::new(crate::disks::dm::HelperRootDevices(
            crate::helper_client::HelperClient::new(tmp.path().join("no-helper.sock")),
        ));
        let vmm: Arc<dyn banger_vmm::Vmm> =
            Arc::new(banger_vmm::QemuVmm::new("qemu-system-x86_64"));
        let state = crate::testing::test_state_tuned(tmp.path(), vmm.into(), devices, tune);
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

    type EventLines = Lines<BufReader<OwnedReadHalf>>;

    /// Subscribes; the answer and the connection's lines after it.
    async fn subscribe(
        socket: &std::path::Path,
        params: Value,
    ) -> (
        banger_proto::events::EventsSubscribed,
        EventLines,
        tokio::net::unix::OwnedWriteHalf,
    ) {
        let conn = UnixStream::connect(socket).await.unwrap();
        let (r, mut w) = conn.into_split();
        let request =
            serde_json::json!({"version": 1, "method": "events.subscribe", "params": params});
        w.write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        let mut lines = BufReader::new(r).lines();
        let answer = serde_json::from_value(result(&mut lines).await).unwrap();
        (answer, lines, w)
    }

    async fn next_frame(lines: &mut EventLines) -> Option<EventFrame> {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a frame within 10 s")
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap())
    }

    async fn next_event(lines: &mut EventLines) -> Event {
        match next_frame(lines).await {
            Some(EventFrame::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// An operation's start, stages and end, and record changes, arrive
    /// in order with consecutive numbers; a subscriber that comes back
    /// with its last number gets exactly what it missed.
    #[tokio::test]
    async fn events_arrive_in_order_and_a_resume_misses_and_repeats_nothing() {
        use banger_proto::events::EventKind;
        let h = start().await;
        let (answer, mut lines, w) = subscribe(&h.socket, serde_json::json!({})).await;
        assert!(answer.complete);
        let first = answer.last_seq + 1;
        let id = crate::op::mint();
        let op = h.state.ops.begin(
            &id,
            banger_proto::OpKind::VmCreate,
            "dev",
            |op| async move {
                op.stage("one");
                op.stage("two");
                Ok(Value::Null)
            },
        );
        op.wait().await;
        let kinds: Vec<(u64, EventKind)> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                let e = next_event(&mut lines).await;
                v.push((e.seq, e.kind));
            }
            v
        };
        let seqs: Vec<u64> = kinds.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (first..first + 4).collect::<Vec<_>>());
        assert!(matches!(&kinds[0].1, EventKind::OpStarted { target, .. } if target == "dev"));
        assert!(matches!(&kinds[1].1, EventKind::OpStage { stage, .. } if stage == "one"));
        assert!(matches!(&kinds[2].1, EventKind::OpStage { stage, .. } if stage == "two"));
        assert!(matches!(
            &kinds[3].1,
            EventKind::OpEnded {
                state: banger_proto::OpState::Succeeded,
                ..
            }
        ));
        let last_seen = first + 3;
        // Gone, while three more happen.
        drop((lines, w));
        for n in 0..3 {
            h.state.events.publish(EventKind::OpStage {
                op_id: id.to_string(),
                stage: format!("missed {n}"),
                depth: 0,
            });
        }
        let (again, mut lines, _w) = subscribe(
            &h.socket,
            serde_json::json!({"since": last_seen, "epoch": answer.epoch}),
        )
        .await;
        assert_eq!((again.replayed, again.complete), (3, true));
        h.state.events.publish(EventKind::OpStage {
            op_id: id.to_string(),
            stage: "live".into(),
            depth: 0,
        });
        let mut seqs = Vec::new();
        for _ in 0..4 {
            seqs.push(next_event(&mut lines).await.seq);
        }
        assert_eq!(seqs, (last_seen + 1..last_seen + 5).collect::<Vec<_>>());
        h.state.shutdown.cancel();
        match next_frame(&mut lines).await {
            Some(EventFrame::End(end)) => {
                assert_eq!(end.reason, EndReason::Shutdown);
                assert_eq!(end.last_seq, last_seen + 4);
            }
            other => panic!("expected the end, got {other:?}"),
        }
        h.server.await.unwrap();
    }

    /// A subscriber that never reads is dropped once a line waits for it
    /// longer than the stall limit; what the daemon keeps for it is the
    /// bus's bounded ring. Read late, the stream ends with the reason.
    /// (bangerd's RSS under this is measured by crates/banger/tests/events.rs,
    /// in a process of its own.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_does_not_read_is_dropped_and_memory_stays_flat() {
        use banger_proto::events::EventKind;
        let h = start_tuned(|c| {
            c.event_stall = Duration::from_millis(500);
            c.event_capacity = 256;
        })
        .await;
        let (_, mut lines, _w) = subscribe(&h.socket, serde_json::json!({})).await;
        // A reader next to it keeps up throughout.
        let (_, mut keeping_up, _w2) = subscribe(&h.socket, serde_json::json!({})).await;
        let reader = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(Ok(line)) = keeping_up.next_line().await.transpose() {
                if line.contains("\"end\"") {
                    return (n, line);
                }
                n += 1;
            }
            (n, String::new())
        });
        let stage = "x".repeat(200);
        let publish = |n: usize| {
            for _ in 0..n {
                h.state.events.publish(EventKind::OpStage {
                    op_id: "op-flood01".into(),
                    stage: stage.clone(),
                    depth: 0,
                });
            }
        };
        // Paced so that a subscriber that reads keeps up (this one is to
        // be dropped for not reading, not for lagging), until the socket's
        // buffers are full and its line has waited past the limit.
        tokio::time::timeout(Duration::from_secs(60), async {
            while count(&h.state, |p| &p.stalled_streams) == 0 {
                publish(50);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the subscriber that does not read is dropped");
        // Publishing on is not queued for it: the bus holds its ring only.
        publish(5000);
        assert_eq!(h.state.events.held(), 256);
        // Read now: buffered lines, then the end naming the stall and the
        // last event it sent (the one cut short, completed before it).
        let (mut last, mut last_event) = (None, 0);
        while let Some(frame) = next_frame(&mut lines).await {
            if let EventFrame::Event(e) = &frame {
                last_event = e.seq;
            }
            last = Some(frame);
        }
        match last {
            Some(EventFrame::End(end)) => {
                assert_eq!(end.reason, EndReason::Stalled, "{end:?}");
                assert_eq!(end.last_seq, last_event, "resume right after what was read");
            }
            other => panic!("expected the end frame last, got {other:?}"),
        }
        h.state.shutdown.cancel();
        let (seen, end) = reader.await.unwrap();
        assert!(end.contains("shutdown") || end.contains("lagged"), "{end}");
        assert!(seen > 0);
        h.server.await.unwrap();
    }
}
