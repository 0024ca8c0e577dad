//! What the daemon does through a VM's guest agent (docs/vms.md, "Guest agent"): readiness,
//! stats, listening ports, exec sessions and file copy.
//!
//! Exec is a session the CLI drives with `vm.exec.io` calls (input in,
//! output since the last call out, long-polled), so it fits the daemon's
//! one-request-one-answer protocol. A session whose client stops polling
//! for [`EXEC_IDLE`] is signalled KILL and forgotten.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_proto::ErrorCode;
use banger_proto::agent::{self, CpuTimes, Frame, GuestStats, ListeningPort, Message};
use banger_proto::vm::{
    CpParams, CpResult, ExecBeginParams, ExecBegun, ExecIoParams, ExecIoResult, VmStats,
};
use banger_store::VmRecord;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::lifecycle::vmm_running;

fn cancelled() -> RpcError {
    RpcError::from(crate::op::Cancelled)
}
use super::{Handles, find, vm_dir};
use crate::DaemonState;
use crate::agent::{AgentConn, AgentError, rpc_error};
use crate::dispatch::RpcError;
use crate::ops::now_ms;

/// How long one agent request may take (exec and copies excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// An exec session nobody polled for this long is killed and dropped.
const EXEC_IDLE: Duration = Duration::from_secs(120);
/// Output held for a client that polls slowly, per stream.
const EXEC_BUFFER_LIMIT: usize = 16 << 20;

/// Waits until the agent says hello and answers a health check, the VMM
/// dies, the boot timeout passes, or the work is cancelled.
///
/// One connection, kept: QEMU serves one client of the chardev socket at a
/// time, and a client that connects while another is attached waits in the
/// listen backlog with its connect already "done". Short attempts that
/// time out and reconnect pile up dead connections QEMU then serves one
/// by one, so the agent's answers went to closed sockets. The connection
/// repeats its Hello every second until the agent (still booting) answers.
pub(super) async fn wait_for_agent(
    state: &Arc<DaemonState>,
    vm: &VmRecord,
    handles: &Handles,
    cancel: &CancellationToken,
) -> Result<(), RpcError> {
    let deadline = Instant::now() + state.config.boot_timeout;
    let socket = banger_vmm::VmFiles::in_dir(&vm_dir(state, &vm.id)).agent_socket;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RpcError::internal(format!(
                "the guest agent did not answer within {} s",
                state.config.boot_timeout.as_secs()
            )));
        }
        let attempt = async {
            let conn = AgentConn::connect(&socket, remaining).await?;
            conn.call(|id| Message::Health { id }, CALL_TIMEOUT).await?;
            Ok::<_, AgentError>(conn)
        };
        tokio::pin!(attempt);
        let outcome = loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(cancelled()),
                r = &mut attempt => break r,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !vmm_running(state, &handles.vmm, &vm.id).await {
                        return Err(RpcError::internal("the vmm exited during boot"));
                    }
                }
            }
        };
        match outcome {
            Ok(conn) => {
                tracing::info!(vm = %vm.name, agent = %conn.agent_version, "guest agent ready");
                state.vms.set_agent(&vm.id, conn);
                return Ok(());
            }
            Err(e @ (AgentError::Version { .. } | AgentError::Timeout(_))) => {
                return Err(rpc_error(&vm.name, &e));
            }
            // Not listening yet, or the connection dropped: connect again.
            Err(e) => tracing::debug!(vm = %vm.name, error = %e, "agent not ready yet"),
        }
        if !vmm_running(state, &handles.vmm, &vm.id).await {
            return Err(RpcError::internal("the vmm exited during boot"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The agent of a running VM: the open connection, or a new one (after a
/// daemon restart).
pub async fn agent_for(
    state: &Arc<DaemonState>,
    name: &str,
) -> Result<(VmRecord, Arc<AgentConn>), RpcError> {
    let vm = find(state, name).await?;
    let Some(handles) = state.vms.handles(&vm.id) else {
        return Err(RpcError::new(
            ErrorCode::NotRunning,
            format!(
                "vm {} is not running (start it with: banger vm start {})",
                vm.name, vm.name
            ),
        ));
    };
    if handles.agent.is_none() {
        return Err(RpcError::new(
            ErrorCode::OperationFailed,
            format!(
                "vm {} has no guest agent: its image was built without one (rebuild the image)",
                vm.name
            ),
        ));
    }
    if let Some(conn) = state.vms.agent(&vm.id) {
        return Ok((vm, conn));
    }
    let socket = banger_vmm::VmFiles::in_dir(&vm_dir(state, &vm.id)).agent_socket;
    let conn = AgentConn::connect(&socket, Duration::from_secs(10))
        .await
        .map_err(|e| rpc_error(&vm.name, &e))?;
    state.vms.set_agent(&vm.id, Arc::clone(&conn));
    Ok((vm, conn))
}

/// Latest stats sample per VM, for CPU usage between samples.
/// Per VM, the baseline CPU usage is measured against.
#[derive(Debug, Default)]
pub struct StatsCache(Mutex<HashMap<String, CpuWindow>>);

/// The guest's CPU counters tick 100 times a second per CPU, so two
/// samples taken a few milliseconds apart (two quick `vm stats` calls)
/// often show no tick at all, and a handful of ticks is mostly noise. The
/// baseline only moves on once a window of [`MIN_CPU_WINDOW_TICKS`] has
/// passed; in between, the last full-window figure is reported.
const MIN_CPU_WINDOW_TICKS: u64 = 50;
/// With no baseline yet (the first sample of a VM), `vm stats` waits this
/// long and samples again, so every answer carries CPU usage.
const FIRST_CPU_WINDOW: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    baseline: CpuTimes,
    last_percent: Option<f64>,
}

impl CpuWindow {
    fn new(baseline: CpuTimes) -> Self {
        Self {
            baseline,
            last_percent: None,
        }
    }

    /// Usage since the baseline, or the last full-window figure when too
    /// little time has passed; `None` only when nothing can be said yet.
    fn observe(&mut self, now: CpuTimes) -> Option<f64> {
        let (Some(busy), Some(idle)) = (
            now.busy.checked_sub(self.baseline.busy),
            now.idle.checked_sub(self.baseline.idle),
        ) else {
            // The counters went back: the guest rebooted.
            *self = Self::new(now);
            return None;
        };
        let total = busy + idle;
        let percent = (total > 0).then(|| busy as f64 * 100.0 / total as f64);
        if total >= MIN_CPU_WINDOW_TICKS {
            *self = Self {
                baseline: now,
                last_percent: percent,
            };
            return percent;
        }
        self.last_percent.or(percent)
    }
}

/// A fresh sample, with CPU usage over the last window.
pub async fn stats(state: &Arc<DaemonState>, name: &str) -> Result<VmStats, RpcError> {
    let (vm, conn) = agent_for(state, name).await?;
    let mut stats = sample(&conn, &vm.name).await?;
    let mut cpu_percent = observe_cpu(state, &vm.id, stats.cpu);
    if cpu_percent.is_none() {
        tokio::time::sleep(FIRST_CPU_WINDOW).await;
        stats = sample(&conn, &vm.name).await?;
        cpu_percent = observe_cpu(state, &vm.id, stats.cpu);
    }
    Ok(VmStats {
        name: vm.name.clone(),
        uptime_s: stats.uptime_s,
        load: stats.load,
        cpu_percent,
        memory_total_bytes: stats.memory_total_bytes,
        memory_used_bytes: stats
            .memory_total_bytes
            .saturating_sub(stats.memory_available_bytes),
        disks: stats.disks,
        sampled_at_ms: now_ms(),
    })
}

fn observe_cpu(state: &DaemonState, vm_id: &str, now: CpuTimes) -> Option<f64> {
    let mut cache = state
        .guest_stats
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match cache.get_mut(vm_id) {
        Some(window) => window.observe(now),
        None => {
            cache.insert(vm_id.to_owned(), CpuWindow::new(now));
            None
        }
    }
}

async fn sample(conn: &AgentConn, vm: &str) -> Result<GuestStats, RpcError> {
    match conn.call(|id| Message::Stats { id }, CALL_TIMEOUT).await {
        Ok(Frame {
            msg: Message::StatsReply { stats, .. },
            ..
        }) => Ok(stats),
        Ok(other) => Err(rpc_error(
            vm,
            &AgentError::Unexpected(format!("{:?}", other.msg)),
        )),
        Err(e) => Err(rpc_error(vm, &e)),
    }
}

/// Samples every running VM with an agent every `interval`, so `vm stats`
/// always has a previous sample to compute CPU usage from. One small
/// request per VM per interval: cheap for the guest and the daemon.
pub fn spawn_sampler(state: Arc<DaemonState>, interval: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let Ok(vms) = state.with_store(|s| s.vms()).await else {
                continue;
            };
            for vm in vms {
                let has_agent = state.vms.handles(&vm.id).is_some_and(|h| h.agent.is_some());
                if has_agent {
                    if let Err(e) = stats(&state, &vm.id).await {
                        tracing::debug!(vm = %vm.name, error = %e.message, "stats sample failed");
                    }
                }
            }
        }
    });
}

pub async fn ports(state: &Arc<DaemonState>, name: &str) -> Result<Vec<ListeningPort>, RpcError> {
    let (vm, conn) = agent_for(state, name).await?;
    match conn.call(|id| Message::Ports { id }, CALL_TIMEOUT).await {
        Ok(Frame {
            msg: Message::PortsReply { ports, .. },
            ..
        }) => Ok(ports),
        Ok(other) => Err(rpc_error(
            &vm.name,
            &AgentError::Unexpected(format!("{:?}", other.msg)),
        )),
        Err(e) => Err(rpc_error(&vm.name, &e)),
    }
}

// ---- exec -----------------------------------------------------------

#[derive(Debug, Default)]
struct ExecOutput {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exited: Option<(Option<i32>, Option<String>)>,
    lost: Option<String>,
}

#[derive(Debug)]
pub struct ExecSession {
    vm: String,
    conn: Arc<AgentConn>,
    id: u64,
    out: Mutex<ExecOutput>,
    changed: Notify,
    last_poll: Mutex<Instant>,
}

/// Running exec sessions by id.
#[derive(Debug, Default)]
pub struct ExecTable(Mutex<HashMap<String, Arc<ExecSession>>>);

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

pub async fn exec_begin(
    state: &Arc<DaemonState>,
    p: ExecBeginParams,
) -> Result<ExecBegun, RpcError> {
    if p.argv.is_empty() || p.argv[0].is_empty() {
        return Err(RpcError::bad_params(
            "nothing to run: give a command after --",
        ));
    }
    reap_idle_execs(state);
    let (vm, conn) = agent_for(state, &p.name).await?;
    let (id, mut rx) = conn
        .start(
            |id| Message::Exec {
                id,
                argv: p.argv.clone(),
                env: p.env.clone(),
                cwd: None,
                tty: p.tty,
                rows: p.rows.unwrap_or(24),
                cols: p.cols.unwrap_or(80),
            },
            Vec::new(),
        )
        .await
        .map_err(|e| rpc_error(&vm.name, &e))?;
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
            return Err(rpc_error(&vm.name, &AgentError::Refused { code, message }));
        }
        Ok(Some(other)) => {
            conn.finish(id);
            return Err(rpc_error(
                &vm.name,
                &AgentError::Unexpected(format!("{:?}", other.msg)),
            ));
        }
        Ok(None) => return Err(rpc_error(&vm.name, &AgentError::Lost)),
        Err(_) => {
            conn.finish(id);
            return Err(rpc_error(
                &vm.name,
                &AgentError::Timeout(CALL_TIMEOUT.as_secs()),
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
    });
    tokio::spawn(pump_exec(Arc::clone(&session), rx));
    let exec_id = format!("ex-{}", Alphanumeric.sample_string(&mut rand::rng(), 10));
    state.execs.lock().insert(exec_id.clone(), session);
    tracing::info!(vm = %vm.name, exec_id, pid, argv = ?p.argv, "exec started");
    Ok(ExecBegun { exec_id, pid })
}

/// Moves the agent's events for one exec into its buffers.
async fn pump_exec(s: Arc<ExecSession>, mut rx: mpsc::UnboundedReceiver<Frame>) {
    loop {
        let Some(frame) = rx.recv().await else {
            s.output().lost = Some("the connection to the guest agent was lost".into());
            s.changed.notify_waiters();
            return;
        };
        {
            let mut out = s.output();
            match frame.msg {
                Message::Stdout { .. } if out.stdout.len() < EXEC_BUFFER_LIMIT => {
                    out.stdout.extend_from_slice(&frame.body)
                }
                Message::Stderr { .. } if out.stderr.len() < EXEC_BUFFER_LIMIT => {
                    out.stderr.extend_from_slice(&frame.body)
                }
                Message::Exited { code, signal, .. } => out.exited = Some((code, signal)),
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

pub async fn exec_io(state: &Arc<DaemonState>, p: ExecIoParams) -> Result<ExecIoResult, RpcError> {
    let session = state.execs.lock().get(&p.exec_id).cloned().ok_or_else(|| {
        RpcError::new(
            ErrorCode::NotFound,
            format!("no exec session {:?}", p.exec_id),
        )
    })?;
    *session.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    let send = |frame: Frame| {
        let session = Arc::clone(&session);
        async move {
            session
                .conn
                .send(frame)
                .await
                .map_err(|e| rpc_error(&session.vm, &e))
        }
    };
    if let Some(data) = &p.stdin {
        let bytes = B64
            .decode(data)
            .map_err(|e| RpcError::bad_params(format!("stdin is not base64: {e}")))?;
        for chunk in agent::chunks(&bytes) {
            send(Frame::with_body(
                Message::Stdin { id: session.id },
                chunk.to_vec(),
            ))
            .await?;
        }
    }
    if p.stdin_eof {
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
                || out.exited.is_some()
                || out.lost.is_some();
            if ready || tokio::time::Instant::now() >= deadline {
                let mut result = ExecIoResult {
                    stdout: B64.encode(std::mem::take(&mut out.stdout)),
                    stderr: B64.encode(std::mem::take(&mut out.stderr)),
                    ..Default::default()
                };
                if let Some(lost) = out.lost.clone() {
                    drop(out);
                    state.execs.lock().remove(&p.exec_id);
                    return Err(RpcError::internal(format!(
                        "vm {}: exec: {lost}",
                        session.vm
                    )));
                }
                if let Some((code, signal)) = out.exited.clone() {
                    result.done = true;
                    result.exit_code = code;
                    result.signal = signal;
                    drop(out);
                    state.execs.lock().remove(&p.exec_id);
                }
                return Ok(result);
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// Kills and forgets sessions whose client went away without finishing.
fn reap_idle_execs(state: &Arc<DaemonState>) {
    let idle: Vec<Arc<ExecSession>> = {
        let mut table = state.execs.lock();
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

// ---- cp ---------------------------------------------------------------

/// Copies one file between the host and the guest, streaming.
pub async fn cp(state: &Arc<DaemonState>, p: CpParams) -> Result<CpResult, RpcError> {
    if !p.guest_path.starts_with('/') {
        return Err(RpcError::bad_params(format!(
            "guest path {:?} must be absolute",
            p.guest_path
        )));
    }
    let host = PathBuf::from(&p.host_path);
    if !host.is_absolute() {
        return Err(RpcError::bad_params(format!(
            "host path {:?} must be absolute",
            p.host_path
        )));
    }
    let (vm, conn) = agent_for(state, &p.name).await?;
    if p.to_guest {
        to_guest(&vm.name, &conn, &host, &p.guest_path).await
    } else {
        from_guest(&vm.name, &conn, &p.guest_path, &host).await
    }
}

async fn to_guest(
    vm: &str,
    conn: &AgentConn,
    host: &Path,
    guest: &str,
) -> Result<CpResult, RpcError> {
    let meta = std::fs::metadata(host)
        .map_err(|e| RpcError::new(ErrorCode::NotFound, format!("{}: {e}", host.display())))?;
    if !meta.is_file() {
        return Err(RpcError::bad_params(format!(
            "{} is not a regular file",
            host.display()
        )));
    }
    let guest = if guest.ends_with('/') {
        let base = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{guest}{base}")
    } else {
        guest.to_owned()
    };
    let mode = meta.mode() & 0o7777;
    let (id, mut rx) = conn
        .start(
            |id| Message::WriteFile {
                id,
                path: guest.clone(),
                mode,
            },
            Vec::new(),
        )
        .await
        .map_err(|e| rpc_error(vm, &e))?;
    // Read on a blocking thread, send chunk by chunk (bounded channel).
    let (tx, mut chunks) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let path = host.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; agent::MAX_BODY_BYTES];
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.recv().await {
        let chunk =
            chunk.map_err(|e| RpcError::internal(format!("read {}: {e}", host.display())))?;
        bytes += chunk.len() as u64;
        if let Ok(Some(Frame {
            msg: Message::Error { code, message, .. },
            ..
        })) = tokio::time::timeout(Duration::ZERO, rx.recv()).await
        {
            conn.finish(id);
            return Err(rpc_error(vm, &AgentError::Refused { code, message }));
        }
        conn.send(Frame::with_body(Message::FileData { id }, chunk))
            .await
            .map_err(|e| rpc_error(vm, &e))?;
    }
    conn.send(Frame::new(Message::FileEnd { id }))
        .await
        .map_err(|e| rpc_error(vm, &e))?;
    let reply = tokio::time::timeout(Duration::from_secs(120), rx.recv()).await;
    conn.finish(id);
    match reply {
        Ok(Some(Frame {
            msg: Message::Done { .. },
            ..
        })) => Ok(CpResult {
            bytes,
            mode,
            destination: guest,
        }),
        Ok(Some(Frame {
            msg: Message::Error { code, message, .. },
            ..
        })) => Err(rpc_error(vm, &AgentError::Refused { code, message })),
        Ok(Some(other)) => Err(rpc_error(
            vm,
            &AgentError::Unexpected(format!("{:?}", other.msg)),
        )),
        Ok(None) => Err(rpc_error(vm, &AgentError::Lost)),
        Err(_) => Err(rpc_error(vm, &AgentError::Timeout(120))),
    }
}

async fn from_guest(
    vm: &str,
    conn: &AgentConn,
    guest: &str,
    host: &Path,
) -> Result<CpResult, RpcError> {
    let (dir, name) = host_destination(host, guest)?;
    let (id, mut rx) = conn
        .start(
            |id| Message::ReadFile {
                id,
                path: guest.to_owned(),
            },
            Vec::new(),
        )
        .await
        .map_err(|e| rpc_error(vm, &e))?;
    let first = tokio::time::timeout(CALL_TIMEOUT, rx.recv()).await;
    let mode = match first {
        Ok(Some(Frame {
            msg: Message::FileInfo { mode, .. },
            ..
        })) => mode & 0o7777,
        Ok(Some(Frame {
            msg: Message::Error { code, message, .. },
            ..
        })) => {
            conn.finish(id);
            return Err(rpc_error(vm, &AgentError::Refused { code, message }));
        }
        Ok(Some(other)) => {
            conn.finish(id);
            return Err(rpc_error(
                vm,
                &AgentError::Unexpected(format!("{:?}", other.msg)),
            ));
        }
        Ok(None) => return Err(rpc_error(vm, &AgentError::Lost)),
        Err(_) => {
            conn.finish(id);
            return Err(rpc_error(vm, &AgentError::Timeout(CALL_TIMEOUT.as_secs())));
        }
    };
    let writer = HostFile::create(&dir, &name, mode)?;
    let dest_name = name.clone();
    let (tx, wrx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let write_task = tokio::task::spawn_blocking(move || -> Result<(u64, HostFile), RpcError> {
        let mut writer = writer;
        let mut total = 0u64;
        for chunk in wrx {
            writer.write(&chunk)?;
            total += chunk.len() as u64;
        }
        Ok((total, writer))
    });
    let mut failure = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Frame {
                msg: Message::FileData { .. },
                body,
            })) => {
                let tx = tx.clone();
                // A full channel means the disk is slower: wait off the runtime.
                if tokio::task::spawn_blocking(move || tx.send(body))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_none()
                {
                    failure = Some(RpcError::internal("writing the host file failed"));
                    break;
                }
            }
            Ok(Some(Frame {
                msg: Message::FileEnd { .. },
                ..
            })) => break,
            Ok(Some(Frame {
                msg: Message::Error { code, message, .. },
                ..
            })) => {
                failure = Some(rpc_error(vm, &AgentError::Refused { code, message }));
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                failure = Some(rpc_error(vm, &AgentError::Lost));
                break;
            }
            Err(_) => {
                failure = Some(rpc_error(vm, &AgentError::Timeout(60)));
                break;
            }
        }
    }
    conn.finish(id);
    drop(tx);
    let written = write_task
        .await
        .map_err(|e| RpcError::internal(format!("write task failed: {e}")))?;
    if let Some(e) = failure {
        // The temporary file is removed by HostFile's drop.
        return Err(e);
    }
    let (bytes, file) = written?;
    tokio::task::spawn_blocking(move || file.finish(&name))
        .await
        .map_err(|e| RpcError::internal(format!("rename task failed: {e}")))??;
    Ok(CpResult {
        bytes,
        mode,
        destination: dir.join(&dest_name).display().to_string(),
    })
}

/// The directory and file name a guest file lands at: into `host` if it is
/// a directory (keeping the guest file's name), else `host` itself. The
/// final name is never a symlink (it is replaced by rename, never
/// followed), so nothing is written outside the destination directory.
fn host_destination(host: &Path, guest: &str) -> Result<(PathBuf, String), RpcError> {
    let guest_name = Path::new(guest)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| RpcError::bad_params(format!("guest path {guest:?} names no file")))?;
    let (dir, name) = match std::fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => (host.to_owned(), guest_name),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(RpcError::bad_params(format!(
                "refusing to write through the symlink {}",
                host.display()
            )));
        }
        _ => {
            let name = host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| RpcError::bad_params(format!("{} names no file", host.display())))?;
            let dir = host
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("/"));
            (dir, name)
        }
    };
    if name == "." || name == ".." || name.contains('/') {
        return Err(RpcError::bad_params(format!(
            "bad destination name {name:?}"
        )));
    }
    if let Ok(m) = std::fs::symlink_metadata(dir.join(&name)) {
        if m.file_type().is_symlink() {
            return Err(RpcError::bad_params(format!(
                "refusing to write through the symlink {}",
                dir.join(&name).display()
            )));
        }
    }
    Ok((dir, name))
}

fn temp_name(name: &str) -> String {
    format!(".{name}.banger-cp")
}

/// A temporary file beside the destination, created without following
/// symlinks; removed on drop unless [`HostFile::finish`] renamed it.
#[derive(Debug)]
struct HostFile {
    path: PathBuf,
    file: std::fs::File,
    mode: u32,
    done: bool,
}

impl HostFile {
    fn create(dir: &Path, name: &str, mode: u32) -> Result<Self, RpcError> {
        let path = dir.join(temp_name(name));
        let _ = std::fs::remove_file(&path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| RpcError::internal(format!("create {}: {e}", path.display())))?;
        Ok(Self {
            path,
            file,
            mode,
            done: false,
        })
    }

    /// Flushes, sets the guest file's mode (the umask may have cut bits)
    /// and renames over `name` in the same directory.
    fn finish(mut self, name: &str) -> Result<(), RpcError> {
        let fail = |what: &str, e: std::io::Error| {
            RpcError::internal(format!("{what} {}: {e}", self.path.display()))
        };
        self.file.sync_all().map_err(|e| fail("sync", e))?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| fail("chmod", e))?;
        let dest = self.path.with_file_name(name);
        std::fs::rename(&self.path, &dest).map_err(|e| fail("rename", e))?;
        self.done = true;
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), RpcError> {
        self.file
            .write_all(data)
            .map_err(|e| RpcError::internal(format!("write {}: {e}", self.path.display())))
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        if !self.done {
            // The copy did not finish: leave nothing half-written behind.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_usage_over_a_window() {
        let t = |busy, idle| CpuTimes { busy, idle };
        let mut w = CpuWindow::new(t(100, 900));
        assert_eq!(w.observe(t(100, 900)), None, "no tick yet says nothing");
        assert_eq!(
            w.observe(t(110, 910)),
            Some(50.0),
            "a short window still counts"
        );
        assert_eq!(w.observe(t(150, 950)), Some(50.0), "a full window");
        assert_eq!(
            w.observe(t(150, 950)),
            Some(50.0),
            "a back-to-back sample repeats the last figure"
        );
        assert_eq!(w.observe(t(155, 951)), Some(50.0), "too short: last figure");
        assert_eq!(w.observe(t(160, 990)), Some(20.0), "next full window");
        assert_eq!(w.observe(t(50, 950)), None, "a reboot resets counters");
        assert_eq!(
            w.observe(t(80, 970)),
            Some(60.0),
            "new baseline after reboot"
        );
    }

    #[test]
    fn host_destinations_never_go_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (into, name) = host_destination(d, "/root/data.bin").unwrap();
        assert_eq!((into.as_path(), name.as_str()), (d, "data.bin"));
        let (_, renamed) = host_destination(&d.join("copy.bin"), "/root/data.bin").unwrap();
        assert_eq!(renamed, "copy.bin");
        std::os::unix::fs::symlink("/etc/passwd", d.join("evil")).unwrap();
        assert!(host_destination(&d.join("evil"), "/root/x").is_err());
        std::os::unix::fs::symlink("/etc", d.join("evil-dir")).unwrap();
        assert!(host_destination(&d.join("evil-dir"), "/root/x").is_err());
        std::os::unix::fs::symlink("/etc/shadow", d.join("x")).unwrap();
        assert!(
            host_destination(d, "/root/x").is_err(),
            "a symlink named like the file"
        );
    }
}
