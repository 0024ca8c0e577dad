//! The TUI's threads that talk to the daemon, so the UI thread never
//! waits on it: the event subscriber (resubscribing after each end), a
//! thread per list fetch or action, the stats poller, and the console
//! log tail. Each sends its news as [`Msg`]s down one channel and ends
//! when the UI is gone (a send fails) or told to stop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_proto::events::{EventFrame, EventsSubscribeParams};
use banger_proto::methods::{self, NoParams};
use banger_proto::snapshot::{VmForkParams, VmSnapshotParams};
use banger_proto::vm::{OpRef, VmDeleteParams, VmRef};

use super::app::{Action, ListKind, Msg};
use crate::CliError;
use crate::client::Client;

/// How often the stats of running VMs are asked for.
const STATS_PERIOD: Duration = Duration::from_secs(3);
/// How long the subscriber waits before it tries again after an end or
/// a failed connect (a daemon restarting).
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(300);
/// How often a log tail looks for new lines.
const LOG_POLL: Duration = Duration::from_millis(250);
/// How much of a console log a tail starts with.
const LOG_START_BYTES: u64 = 64 * 1024;

fn text(e: &CliError) -> String {
    e.display_chain()
}

/// Subscribes to the daemon's events and forwards them; after the stream
/// ends (lagged, stalled, a cut, a daemon restart) subscribes again with
/// the last sequence number and epoch seen, so the UI reads the lists
/// again only when the daemon says events were missed.
pub(crate) fn spawn_events(socket: PathBuf, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let mut resume: Option<(u64, String)> = None;
        let mut said_down = false;
        loop {
            let params = EventsSubscribeParams {
                since: resume.as_ref().map(|(seq, _)| *seq),
                epoch: resume.as_ref().map(|(_, epoch)| epoch.clone()),
            };
            let subscribed = Client::connect(&socket).and_then(|c| c.subscribe(&params));
            let (answer, mut stream) = match subscribed {
                Ok(s) => s,
                Err(e) => {
                    if !said_down && tx.send(Msg::StreamEnded(text(&e))).is_err() {
                        return;
                    }
                    said_down = true;
                    std::thread::sleep(RESUBSCRIBE_PAUSE);
                    continue;
                }
            };
            said_down = false;
            let complete = resume.is_some() && answer.complete;
            if tx.send(Msg::Subscribed { complete }).is_err() {
                return;
            }
            let mut why = "the connection closed".to_owned();
            for frame in &mut stream {
                let sent = match frame {
                    Ok(EventFrame::Event(e)) => tx.send(Msg::Event(Box::new(e))),
                    Ok(EventFrame::End(end)) => {
                        why = format!("{}: {}", end.reason, end.message);
                        Ok(())
                    }
                    Err(e) => {
                        why = text(&e);
                        Ok(())
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            resume = Some((stream.last_seq(), answer.epoch));
            if tx.send(Msg::StreamEnded(why)).is_err() {
                return;
            }
            std::thread::sleep(RESUBSCRIBE_PAUSE);
        }
    });
}

/// Reads one list on a thread of its own.
pub(crate) fn fetch(socket: PathBuf, kind: ListKind, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let client = Client::connect(&socket);
        let msg = match kind {
            ListKind::Vms => Msg::Vms(list::<methods::VmList>(client)),
            ListKind::Images => Msg::Images(list::<methods::ImageList>(client)),
            ListKind::Kernels => Msg::Kernels(list::<methods::KernelList>(client)),
            ListKind::Snapshots => Msg::Snapshots(list::<methods::SnapshotList>(client)),
            ListKind::Ops => Msg::Ops(list::<methods::OpList>(client)),
        };
        let _ = tx.send(msg);
    });
}

fn list<M: methods::Method<Params = NoParams>>(
    client: Result<Client, CliError>,
) -> Result<M::Result, String> {
    client
        .and_then(|mut c| c.call::<M>(&NoParams))
        .map_err(|e| text(&e))
}

/// Makes one call on a thread of its own; its end comes back as
/// [`Msg::ActionDone`] (with the op id of a call that began one).
pub(crate) fn call(socket: PathBuf, action: Action, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let outcome = Client::connect(&socket)
            .and_then(|mut c| perform(&mut c, &action))
            .map_err(|e| text(&e));
        let _ = tx.send(Msg::ActionDone {
            action: Box::new(action),
            outcome,
        });
    });
}

fn perform(c: &mut Client, action: &Action) -> Result<Option<String>, CliError> {
    let vm = |name: &str| VmRef {
        name: name.to_owned(),
    };
    Ok(match action {
        Action::Start(n) => Some(c.call::<methods::VmStartBegin>(&vm(n))?.op_id),
        Action::Restart(n) => Some(c.call::<methods::VmRestartBegin>(&vm(n))?.op_id),
        Action::Stop(n) => {
            c.call::<methods::VmStop>(&vm(n))?;
            None
        }
        Action::Pause(n) => {
            c.call::<methods::VmPause>(&vm(n))?;
            None
        }
        Action::Resume(n) => {
            c.call::<methods::VmResume>(&vm(n))?;
            None
        }
        Action::Delete { name, force } => {
            c.call::<methods::VmDelete>(&VmDeleteParams {
                name: name.clone(),
                force: *force,
            })?;
            None
        }
        Action::Snapshot(n) => Some(
            c.call::<methods::VmSnapshotBegin>(&VmSnapshotParams {
                name: n.clone(),
                snapshot: None,
            })?
            .op_id,
        ),
        Action::Fork { name, new_name } => Some(
            c.call::<methods::VmForkBegin>(&VmForkParams {
                name: name.clone(),
                new_name: new_name.clone(),
                count: None,
            })?
            .op_id,
        ),
        Action::Create(p) => Some(c.call::<methods::VmCreateBegin>(p)?.op_id),
        Action::CancelOp { op_id, .. } => {
            c.call::<methods::OpCancel>(&OpRef {
                op_id: op_id.clone(),
            })?;
            None
        }
    })
}

/// Asks each running VM (as the UI last listed them in `running`) for
/// its stats every few seconds, on one connection.
pub(crate) fn spawn_stats(socket: PathBuf, running: Arc<Mutex<Vec<String>>>, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let mut client: Option<Client> = None;
        loop {
            std::thread::sleep(STATS_PERIOD);
            // A poisoned lock: the UI thread panicked, and is gone.
            let Ok(names) = running.lock().map(|n| n.clone()) else {
                return;
            };
            for name in names {
                let c = match client.take() {
                    Some(c) => c,
                    None => match Client::connect(&socket) {
                        Ok(c) => c,
                        Err(_) => break,
                    },
                };
                let mut c = c;
                match c.call::<methods::VmStats>(&VmRef { name }) {
                    Ok(stats) => {
                        if tx.send(Msg::Stats(Box::new(stats))).is_err() {
                            return;
                        }
                        client = Some(c);
                    }
                    // A VM that stopped meanwhile, or no agent: no numbers.
                    Err(CliError::Daemon(_)) => client = Some(c),
                    Err(_) => {}
                }
            }
        }
    });
}

/// A console log followed on a thread; stops when dropped.
#[derive(Debug)]
pub(crate) struct LogTail {
    stop: Arc<AtomicBool>,
}

impl Drop for LogTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Follows `path` from its last lines on, as `vm logs -f` does: a log
/// that shrinks (rotated by the daemon) is read again from its start.
pub(crate) fn tail_log(path: PathBuf, generation: u64, tx: Sender<Msg>) -> LogTail {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut tail = Tail::default();
        while !stopped.load(Ordering::Relaxed) {
            let lines = match tail.read_more(&path) {
                Ok(lines) => lines,
                Err(e) if !tail.said_error => {
                    tail.said_error = true;
                    vec![format!("[cannot read {}: {e}]", path.display())]
                }
                Err(_) => Vec::new(),
            };
            if !lines.is_empty() && tx.send(Msg::LogLines { generation, lines }).is_err() {
                return;
            }
            std::thread::sleep(LOG_POLL);
        }
    });
    LogTail { stop }
}

/// Where a tail is in its file.
#[derive(Debug, Default)]
struct Tail {
    /// Bytes read so far; `None` before the first read.
    offset: Option<u64>,
    /// The start of a line not ended yet.
    partial: Vec<u8>,
    /// Begun mid-file: the first (cut) line is dropped.
    skip_to_newline: bool,
    said_error: bool,
}

impl Tail {
    /// The complete lines added to `path` since the last call (the last
    /// [`LOG_START_BYTES`] of it the first time).
    fn read_more(&mut self, path: &Path) -> std::io::Result<Vec<String>> {
        let mut file = File::open(path)?;
        self.said_error = false;
        let len = file.metadata()?.len();
        let start = match self.offset {
            None => {
                let start = len.saturating_sub(LOG_START_BYTES);
                self.skip_to_newline = start > 0;
                start
            }
            // Shorter than what we read: rotated, a new file.
            Some(at) if at > len => {
                self.partial.clear();
                0
            }
            Some(at) => at,
        };
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.take(len - start).read_to_end(&mut buf)?;
        self.offset = Some(start + buf.len() as u64);
        self.partial.extend_from_slice(&buf);
        if self.skip_to_newline {
            match self.partial.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.partial.drain(..=end);
                    self.skip_to_newline = false;
                }
                None => self.partial.clear(),
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_tail_reads_complete_lines_and_starts_over_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "one\ntwo\npar").unwrap();
        let mut tail = Tail::default();
        let lines = tail.read_more(&path).unwrap();
        assert_eq!(lines, ["one", "two"]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"tial\n\x1b[2Jnext\n").unwrap();
        let lines = tail.read_more(&path).unwrap();
        assert_eq!(lines, ["partial", "\x1b[2Jnext"]);
        std::fs::write(&path, "fresh\n").unwrap();
        let lines = tail.read_more(&path).unwrap();
        assert_eq!(lines, ["fresh"]);
    }

    #[test]
    fn a_long_log_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let body: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &body).unwrap();
        let mut tail = Tail::default();
        let lines = tail.read_more(&path).unwrap();
        assert_eq!(lines.last().unwrap(), "line 19999");
        assert!(lines[0].starts_with("line "), "{}", lines[0]);
        assert!(body.contains(&format!("\n{}\n", lines[0])));
    }
}
