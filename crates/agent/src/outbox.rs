//! The one writer of the port: frames go through a bounded queue to a
//! thread that owns the writing, so a host that stops reading never
//! wedges request processing.
//!
//! A virtio-serial write blocks while no host is connected. Senders wait
//! for room in the queue for at most [`STALL`]; once the writer has been
//! stuck (or failing) that long, frames that do not fit are dropped at
//! once and the count is logged when writing works again.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use banger_proto::agent::{Frame, encode};

use crate::log;

/// Where the agent's replies and events go.
pub trait Sink: Send + Sync {
    /// Queues one frame. Never blocks for long and never fails: a frame
    /// that cannot be delivered is dropped (and logged).
    fn send(&self, frame: Frame);
}

/// How long a sender waits for room, and how long the writer may be stuck
/// before frames are dropped without waiting.
pub const STALL: Duration = Duration::from_secs(5);

/// Bytes queued before senders wait (one frame is always accepted into
/// an empty queue, whatever its size).
pub const QUEUE_BYTES: usize = 1024 * 1024;

/// Pause after a failed write, so a port that is gone is not spun on.
const RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    /// A write in progress started at.
    writing_since: Option<Instant>,
    /// Writes fail since.
    failing_since: Option<Instant>,
    dropped: u64,
    closed: bool,
}

impl State {
    fn stalled(&self, now: Instant) -> bool {
        let long = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) >= STALL);
        long(self.writing_since) || long(self.failing_since)
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when the queue shrinks.
    room: Condvar,
    /// Signalled when the queue grows or closes.
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent
        // in a way that matters more than stopping output would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `wait` for the queue to shrink.
    fn wait_for_room<'a>(
        &self,
        st: MutexGuard<'a, State>,
        wait: Duration,
    ) -> MutexGuard<'a, State> {
        self.room
            .wait_timeout(st, wait)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }
}

/// The queue in front of the writer thread.
#[derive(Debug, Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Starts the writer thread; `write` writes one whole frame to the
    /// port (and is called from that thread only).
    pub fn start<W>(mut write: W) -> io::Result<Self>
    where
        W: FnMut(&[u8]) -> io::Result<()> + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        crate::spawn("writer", move || {
            let mut warned = false;
            loop {
                let bytes = {
                    let mut st = s.lock();
                    while st.queue.is_empty() && !st.closed {
                        st = s.work.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    let Some(bytes) = st.queue.pop_front() else {
                        return; // closed and drained
                    };
                    st.bytes -= bytes.len();
                    st.writing_since = Some(Instant::now());
                    s.room.notify_all();
                    bytes
                };
                let result = write(&bytes);
                drop(bytes);
                let mut st = s.lock();
                st.writing_since = None;
                match result {
                    Ok(()) => {
                        st.failing_since = None;
                        if warned || st.dropped > 0 {
                            log!("port writable again; {} frames were dropped", st.dropped);
                            st.dropped = 0;
                            warned = false;
                        }
                    }
                    Err(e) => {
                        if st.failing_since.is_none() {
                            st.failing_since = Some(Instant::now());
                        }
                        if !warned {
                            log!("write to port failed: {e}; a frame was lost, retrying");
                            warned = true;
                        }
                        drop(st);
                        std::thread::sleep(RETRY);
                    }
                }
            }
        })?;
        Ok(Self { shared })
    }

    /// Waits until everything queued is written, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.queue.is_empty() && st.writing_since.is_none() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            st = self.shared.wait_for_room(st, wait);
        }
    }

    /// Stops the writer once the queue is drained; later frames are dropped.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }
}

impl Sink for Outbox {
    fn send(&self, frame: Frame) {
        let bytes = encode(&frame);
        let deadline = Instant::now() + STALL;
        let mut st = self.shared.lock();
        loop {
            if st.closed {
                return;
            }
            if st.queue.is_empty() || st.bytes + bytes.len() <= QUEUE_BYTES {
                st.bytes += bytes.len();
                st.queue.push_back(bytes);
                self.shared.work.notify_one();
                return;
            }
            let now = Instant::now();
            if st.stalled(now) || now >= deadline {
                if st.dropped == 0 {
                    log!("host is not reading: dropping output until it does");
                }
                st.dropped += 1;
                return;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            st = self.shared.wait_for_room(st, wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::agent::{FrameDecoder, Message};
    use std::sync::mpsc;

    #[test]
    fn frames_are_written_in_order() {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let out = Outbox::start(move |b| tx.send(b.to_vec()).map_err(io::Error::other)).unwrap();
        for id in 0..100 {
            out.send(Frame::new(Message::Health { id }));
        }
        assert!(out.flush(Duration::from_secs(5)));
        let mut d = FrameDecoder::new();
        for b in rx.try_iter() {
            d.push(&b);
        }
        let ids: Vec<u64> = std::iter::from_fn(|| d.next_frame())
            .map(|f| f.unwrap().msg.id().unwrap())
            .collect();
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
        out.close();
    }

    #[test]
    fn a_stuck_writer_does_not_block_senders_forever() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let out = Outbox::start(move |_| {
            // Stuck until the test ends.
            let _ = release_rx.recv();
            Ok(())
        })
        .unwrap();
        let big = vec![0u8; 1024 * 1024];
        let start = Instant::now();
        // One frame in the writer, then the queue fills, then senders wait
        // at most STALL once and drop at once afterwards.
        for _ in 0..8 {
            out.send(Frame::with_body(Message::Stdout { id: 1 }, big.clone()));
        }
        let took = start.elapsed();
        assert!(took < STALL * 2, "{took:?}");
        let t = Instant::now();
        out.send(Frame::with_body(Message::Stdout { id: 1 }, big));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(out.shared.lock().dropped > 0);
        drop(release_tx);
        out.close();
    }
}
