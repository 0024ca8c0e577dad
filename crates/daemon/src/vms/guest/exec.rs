//! Exec sessions: started by `vm.exec.begin`, driven by `vm.exec.io`.
//!
//! A session's pump task always drains the agent's frames at once (the
//! agent connection is shared and bounded, crate::agent): output goes
//! into a buffer per stream of at most [`EXEC_BUFFER_LIMIT`] until the
//! client's next `vm.exec.io`; what comes while a buffer is full is
//! dropped and counted, and the next answer says how many bytes
//! (`stdout_dropped`, `stderr_dropped`), so a client that reads too
//! slowly learns its output is incomplete. An answer carries at most
//! [`EXEC_IO_CHUNK`] of each stream, and says `done` only once all of it
//! was delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_proto::agent::{self, Frame, Message};
use banger_proto::vm::{ExecBeginParams, ExecBegun, ExecIoParams, ExecIoResult};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::{Notify, mpsc};

use super::{CALL_TIMEOUT, Guest, GuestError};
use crate::agent::{AgentConn, AgentError};

/// An exec session nobody polled for this long is killed and dropped.
pub(super) const EXEC_IDLE: Duration = Duration::from_secs(120);
/// Output held for a client that polls slowly, per stream.
const EXEC_BUFFER_LIMIT: usize = 16 << 20;
/// At most this much of a stream per `vm.exec.io` answer, so an answer
/// (and a client reading it) stays small whatever the command prints.
const EXEC_IO_CHUNK: usize = 1 << 20;
/// Stdin sent to an agent ahead of what the process took (the agent
/// holds up to 2 MiB: `crates/agent/src/exec.rs`).
const STDIN_WINDOW: u64 = 1 << 20;
/// How long one `vm.exec.io` waits for the window to open before it
/// answers with part of its stdin taken (`stdin_accepted`), so a client
/// stays free to send a signal to a process that stopped reading.
const STDIN_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct ExecOutput {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Bytes dropped since the last `vm.exec.io`, per stream.
    stdout_dropped: u64,
    stderr_dropped: u64,
    exited: Option<(Option<i32>, Option<String>)>,
    lost: Option<String>,
    /// Stdin bytes the process has taken, as the agent last said.
    stdin_read: u64,
}

#[derive(Debug)]
struct ExecSession {
    vm: String,
    conn: Arc<AgentConn>,
    id: u64,
    out: Mutex<ExecOutput>,
    changed: Notify,
    last_poll: Mutex<Instant>,
    /// Stdin bytes sent to the agent; held while a call sends, so two
    /// calls' input never interleaves.
    stdin_sent: tokio::sync::Mutex<u64>,
    /// The agent says how much stdin the process took (flow control).
    stdin_acked: bool,
}

/// Running exec sessions by id.
#[derive(Debug, Default)]
pub(super) struct ExecTable(Mutex<HashMap<String, Arc<ExecSession>>>);

impl ExecTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ExecSession>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ExecSession {
    fn output(&self) -> std::sync::MutexGuard<'_, ExecOutput> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An environment variable the guest can take: a name that is not empty
/// and has no `=` or NUL, a value without NUL.
pub(super) fn check_env(key: &str, value: &str) -> Result<(), GuestError> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return Err(GuestError::BadEnvName(key.to_owned()));
    }
    if value.contains('\0') {
        return Err(GuestError::BadEnvValue(key.to_owned()));
    }
    Ok(())
}

impl Guest {
    /// Starts `p.argv` in the VM `p.name` (name or id): a session the
    /// client then drives with [`Guest::exec_io`].
    pub async fn exec_begin(&self, p: ExecBeginParams) -> Result<ExecBegun, GuestError> {
        if p.argv.first().is_some_and(String::is_empty) {
            return Err(GuestError::NothingToRun);
        }
        for (key, value) in &p.env {
            check_env(key, value)?;
        }
        if let Some(cwd) = p.cwd.as_ref().filter(|c| !c.starts_with('/')) {
            return Err(GuestError::NotAbsolute {
                side: "working directory",
                path: cwd.clone(),
            });
        }
        self.reap_idle_execs();
        let (vm, conn) = self.agent_for(&p.name).await?;
        if p.argv.is_empty() {
            // No argv: the image's entrypoint and cmd, which only images
            // with banger's init have (the agent applies them).
            let image_id = vm.image_id.clone();
            let image = self.db.call(move |s| s.image(&image_id)).await?;
            if !image.boots_banger_init() {
                return Err(GuestError::NothingToRun);
            }
        }
        let (id, mut rx) = conn
            .start(
                |id| Message::Exec {
                    id,
                    argv: p.argv.clone(),
                    env: p.env.clone(),
                    cwd: p.cwd.clone(),
                    tty: p.tty,
                    rows: p.rows.unwrap_or(24),
                    cols: p.cols.unwrap_or(80),
                },
                Vec::new(),
            )
            .await
            .map_err(|e| GuestError::agent(&vm.name, e))?;
        let pid = match tokio::time::timeout(CALL_TIMEOUT, rx.recv()).await {
            Ok(Some(Frame {
                msg: Message::Started { pid, .. },
                ..
            })) => pid,
            Ok(Some(Frame {
                msg: Message::Error { code, message, .. },
                ..
            })) => {
                conn.finish(id);
                return Err(GuestError::agent(
                    &vm.name,
                    AgentError::Refused { code, message },
                ));
            }
            Ok(Some(other)) => {
                conn.finish(id);
                return Err(GuestError::agent(
                    &vm.name,
                    AgentError::Unexpected(format!("{:?}", other.msg)),
                ));
            }
            Ok(None) => return Err(GuestError::agent(&vm.name, AgentError::Lost)),
            Err(_) => {
                conn.finish(id);
                return Err(GuestError::agent(
                    &vm.name,
                    AgentError::Timeout(CALL_TIMEOUT.as_secs()),
                ));
            }
        };
        let session = Arc::new(ExecSession {
            vm: vm.name.clone(),
            conn: Arc::clone(&conn),
            id,
            out: Mutex::default(),
            changed: Notify::new(),
            last_poll: Mutex::new(Instant::now()),
            stdin_sent: tokio::sync::Mutex::new(0),
            stdin_acked: conn.supports(agent::capability::STDIN_ACK),
        });
        tokio::spawn(pump_exec(Arc::clone(&session), rx));
        let exec_id = format!("ex-{}", Alphanumeric.sample_string(&mut rand::rng(), 10));
        self.execs.lock().insert(exec_id.clone(), session);
        tracing::info!(vm = %vm.name, exec_id, pid, argv = ?p.argv, "exec started");
        Ok(ExecBegun { exec_id, pid })
    }
}

/// Moves the agent's events for one exec into its buffers.
async fn pump_exec(s: Arc<ExecSession>, mut rx: mpsc::Receiver<Frame>) {
    loop {
        let Some(frame) = rx.recv().await else {
            s.output().lost = Some("the connection to the guest agent was lost".into());
            s.changed.notify_waiters();
            return;
        };
        {
            let mut out = s.output();
            let out = &mut *out;
            match frame.msg {
                Message::Stdout { .. } => {
                    keep_output(&mut out.stdout, &mut out.stdout_dropped, &frame.body)
                }
                Message::Stderr { .. } => {
                    keep_output(&mut out.stderr, &mut out.stderr_dropped, &frame.body)
                }
                Message::Exited { code, signal, .. } => out.exited = Some((code, signal)),
                Message::StdinRead { bytes, .. } => out.stdin_read = bytes,
                // Input sent while the process was ending, answered by an
                // agent that had already let go of it: its `Exited` is
                // sent regardless (older agents send it just after).
                Message::Error {
                    code: banger_proto::agent::AgentErrorCode::NotFound,
                    ..
                } => {}
                Message::Error { message, .. } => out.lost = Some(message),
                _ => {}
            }
        }
        s.changed.notify_waiters();
        let done = {
            let out = s.output();
            out.exited.is_some() || out.lost.is_some()
        };
        if done {
            s.conn.finish(s.id);
            return;
        }
    }
}

/// Waits until `len` more bytes of stdin fit in the window past what the
/// process took (`sent` so far), or it ended; `false` when `deadline`
/// passed first.
async fn wait_for_window(
    session: &ExecSession,
    sent: u64,
    len: usize,
    deadline: tokio::time::Instant,
) -> bool {
    loop {
        let notified = session.changed.notified();
        {
            let out = session.output();
            if out.exited.is_some()
                || out.lost.is_some()
                || sent.saturating_sub(out.stdin_read) + len as u64 <= STDIN_WINDOW
            {
                return true;
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return false;
        }
    }
}

/// Appends `data` to `buf` up to [`EXEC_BUFFER_LIMIT`]; counts the rest
/// in `dropped`.
fn keep_output(buf: &mut Vec<u8>, dropped: &mut u64, data: &[u8]) {
    let room = EXEC_BUFFER_LIMIT.saturating_sub(buf.len());
    let kept = data.len().min(room);
    buf.extend_from_slice(&data[..kept]);
    *dropped += (data.len() - kept) as u64;
}

/// The first [`EXEC_IO_CHUNK`] bytes of `buf`, taken out of it.
fn take_chunk(buf: &mut Vec<u8>) -> Vec<u8> {
    if buf.len() <= EXEC_IO_CHUNK {
        return std::mem::take(buf);
    }
    let rest = buf.split_off(EXEC_IO_CHUNK);
    std::mem::replace(buf, rest)
}

impl Guest {
    /// Feeds a session its input (stdin, resize, signal) and returns its
    /// output since the last call, waiting up to `p.wait_ms` for some.
    pub async fn exec_io(&self, p: ExecIoParams) -> Result<ExecIoResult, GuestError> {
        let session = self
            .execs
            .lock()
            .get(&p.exec_id)
            .cloned()
            .ok_or_else(|| GuestError::NoExecSession(p.exec_id.clone()))?;
        *session.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let send = |frame: Frame| {
            let session = Arc::clone(&session);
            async move {
                session
                    .conn
                    .send(frame)
                    .await
                    .map_err(|e| GuestError::agent(&session.vm, e))
            }
        };
        let input = match &p.stdin {
            Some(data) => Some(B64.decode(data).map_err(GuestError::Stdin)?),
            None => None,
        };
        let mut stdin_accepted = None;
        if let Some(bytes) = &input {
            let mut sent = session.stdin_sent.lock().await;
            let deadline = tokio::time::Instant::now() + STDIN_WAIT;
            let mut accepted = 0u64;
            for chunk in agent::chunks(bytes) {
                if session.stdin_acked
                    && !wait_for_window(&session, *sent, chunk.len(), deadline).await
                {
                    break;
                }
                send(Frame::with_body(
                    Message::Stdin { id: session.id },
                    chunk.to_vec(),
                ))
                .await?;
                *sent += chunk.len() as u64;
                accepted += chunk.len() as u64;
            }
            stdin_accepted = Some(accepted);
        }
        // The end of stdin only once all of this call's input was taken.
        let all_taken = match (&input, stdin_accepted) {
            (Some(bytes), Some(accepted)) => accepted == bytes.len() as u64,
            _ => true,
        };
        if p.stdin_eof && all_taken {
            send(Frame::new(Message::Stdin { id: session.id })).await?;
        }
        if let (Some(rows), Some(cols)) = (p.rows, p.cols) {
            send(Frame::new(Message::Resize {
                id: session.id,
                rows,
                cols,
            }))
            .await?;
        }
        if let Some(signal) = &p.signal {
            send(Frame::new(Message::Signal {
                id: session.id,
                signal: signal.clone(),
            }))
            .await?;
        }
        let wait = Duration::from_millis(u64::from(p.wait_ms.unwrap_or(500).min(30_000)));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = session.changed.notified();
            {
                let mut out = session.output();
                let ready = !out.stdout.is_empty()
                    || !out.stderr.is_empty()
                    || out.stdout_dropped > 0
                    || out.stderr_dropped > 0
                    || out.exited.is_some()
                    || out.lost.is_some();
                if ready || tokio::time::Instant::now() >= deadline {
                    let mut result = ExecIoResult {
                        stdin_accepted,
                        stdout: B64.encode(take_chunk(&mut out.stdout)),
                        stderr: B64.encode(take_chunk(&mut out.stderr)),
                        stdout_dropped: std::mem::take(&mut out.stdout_dropped),
                        stderr_dropped: std::mem::take(&mut out.stderr_dropped),
                        ..Default::default()
                    };
                    if let Some(lost) = out.lost.clone() {
                        drop(out);
                        self.execs.lock().remove(&p.exec_id);
                        return Err(GuestError::ExecLost {
                            vm: session.vm.clone(),
                            reason: lost,
                        });
                    }
                    let delivered = out.stdout.is_empty() && out.stderr.is_empty();
                    if let Some((code, signal)) = out.exited.clone().filter(|_| delivered) {
                        result.done = true;
                        result.exit_code = code;
                        result.signal = signal;
                        drop(out);
                        self.execs.lock().remove(&p.exec_id);
                    }
                    return Ok(result);
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Runs `argv` in the VM `name` to its end (at most `timeout`) for
    /// the daemon's own needs (make a directory, remove files); a
    /// non-zero exit is an error carrying the start of its stderr.
    pub(crate) async fn run_checked(
        &self,
        name: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<(), GuestError> {
        /// What of a failed command's stderr goes into the error.
        const STDERR_KEPT: usize = 2048;
        let program = argv.first().cloned().unwrap_or_default();
        let begun = self
            .exec_begin(ExecBeginParams {
                name: name.to_owned(),
                argv,
                tty: false,
                rows: None,
                cols: None,
                env: Vec::new(),
                cwd: None,
            })
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stderr = Vec::new();
        loop {
            let io = self
                .exec_io(ExecIoParams {
                    exec_id: begun.exec_id.clone(),
                    stdin_eof: true,
                    wait_ms: Some(5_000),
                    ..Default::default()
                })
                .await?;
            if stderr.len() < STDERR_KEPT {
                if let Ok(bytes) = B64.decode(&io.stderr) {
                    stderr.extend_from_slice(&bytes);
                    stderr.truncate(STDERR_KEPT);
                }
            }
            if io.done {
                if io.exit_code == Some(0) {
                    return Ok(());
                }
                return Err(GuestError::CommandFailed {
                    vm: name.to_owned(),
                    program,
                    status: match (io.exit_code, io.signal) {
                        (Some(code), _) => format!("exit code {code}"),
                        (None, Some(signal)) => format!("signal {signal}"),
                        (None, None) => "no exit status".to_owned(),
                    },
                    stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self
                    .exec_io(ExecIoParams {
                        exec_id: begun.exec_id.clone(),
                        signal: Some("KILL".to_owned()),
                        wait_ms: Some(0),
                        ..Default::default()
                    })
                    .await;
                return Err(GuestError::CommandTimeout {
                    vm: name.to_owned(),
                    program,
                    secs: timeout.as_secs(),
                });
            }
        }
    }

    /// Kills and forgets sessions whose client went away without finishing.
    fn reap_idle_execs(&self) {
        let idle: Vec<Arc<ExecSession>> = {
            let mut table = self.execs.lock();
            let ids: Vec<String> = table
                .iter()
                .filter(|(_, s)| {
                    s.last_poll
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .elapsed()
                        > EXEC_IDLE
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| table.remove(id)).collect()
        };
        for s in idle {
            tracing::warn!(vm = %s.vm, "exec session abandoned by its client; killing it");
            tokio::spawn(async move {
                let _ = s
                    .conn
                    .send(Frame::new(Message::Signal {
                        id: s.id,
                        signal: "KILL".into(),
                    }))
                    .await;
                s.conn.finish(s.id);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_buffer_limit_is_counted_not_kept() {
        let mut buf = vec![0u8; EXEC_BUFFER_LIMIT - 10];
        let mut dropped = 0;
        keep_output(&mut buf, &mut dropped, &[1u8; 25]);
        assert_eq!(buf.len(), EXEC_BUFFER_LIMIT);
        assert_eq!(dropped, 15);
        keep_output(&mut buf, &mut dropped, &[1u8; 5]);
        assert_eq!((buf.len(), dropped), (EXEC_BUFFER_LIMIT, 20));
        let mut empty = Vec::new();
        keep_output(&mut empty, &mut dropped, b"abc");
        assert_eq!((empty.as_slice(), dropped), (&b"abc"[..], 20));
    }

    #[test]
    fn an_answer_carries_at_most_a_chunk_of_a_stream() {
        let mut buf: Vec<u8> = (0..EXEC_IO_CHUNK + 3).map(|i| i as u8).collect();
        let first = take_chunk(&mut buf);
        assert_eq!(first.len(), EXEC_IO_CHUNK);
        assert_eq!(buf.len(), 3, "the rest waits for the next answer");
        assert_eq!(buf[0], (EXEC_IO_CHUNK % 256) as u8, "in order");
        assert_eq!(take_chunk(&mut buf).len(), 3);
        assert!(buf.is_empty());
    }
}
