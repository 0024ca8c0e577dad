//! Stats (with CPU usage over a window), the background sampler, and
//! listening ports: one-frame agent calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_proto::agent::{CpuTimes, Frame, GuestStats, ListeningPort, Message};
use banger_proto::vm::VmStats;
use tokio_util::sync::CancellationToken;

use super::{CALL_TIMEOUT, Guest, GuestError};
use crate::agent::{AgentConn, AgentError};
use crate::error::chain;
use crate::ops::now_ms;

/// Latest stats sample per VM, for CPU usage between samples.
/// Per VM, the baseline CPU usage is measured against.
#[derive(Debug, Default)]
pub(super) struct StatsCache(Mutex<HashMap<String, CpuWindow>>);

/// The guest's CPU counters tick 100 times a second per CPU, so two
/// samples taken a few milliseconds apart (two quick `vm stats` calls)
/// often show no tick at all, and a handful of ticks is mostly noise. The
/// baseline only moves on once a window of [`MIN_CPU_WINDOW_TICKS`] has
/// passed; in between, the last full-window figure is reported.
const MIN_CPU_WINDOW_TICKS: u64 = 50;
/// With no baseline yet (the first sample of a VM), `vm stats` waits this
/// long and samples again, so every answer carries CPU usage.
const FIRST_CPU_WINDOW: Duration = Duration::from_millis(250);

/// [`Guest::wait_until_idle`]: the window, the ticks it must count, and
/// the busy share below which the guest is idle (the agent's own
/// sampling included).
const IDLE_WINDOW: Duration = Duration::from_millis(500);
const IDLE_WINDOW_MIN_TICKS: u64 = 25;
const IDLE_BUSY_PERCENT: u64 = 10;

#[derive(Debug, Clone, Copy)]
struct CpuWindow {
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

impl Guest {
    /// A fresh sample of the VM (by name or id), with CPU usage over the
    /// last window.
    pub async fn stats(&self, name: &str) -> Result<VmStats, GuestError> {
        let (vm, conn) = self.agent_for(name).await?;
        let mut stats = sample(&conn, &vm.name).await?;
        let mut cpu_percent = self.observe_cpu(&vm.id, stats.cpu);
        if cpu_percent.is_none() {
            tokio::time::sleep(FIRST_CPU_WINDOW).await;
            stats = sample(&conn, &vm.name).await?;
            cpu_percent = self.observe_cpu(&vm.id, stats.cpu);
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

    fn observe_cpu(&self, vm_id: &str, now: CpuTimes) -> Option<f64> {
        let mut cache = self.stats.0.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get_mut(vm_id) {
            Some(window) => window.observe(now),
            None => {
                cache.insert(vm_id.to_owned(), CpuWindow::new(now));
                None
            }
        }
    }

    /// Waits until the guest's CPU is mostly idle over a short window
    /// (what a boot started has finished: a template taken then does not
    /// hand that work to every VM restored from it), at most `limit`.
    /// True when it settled, false when `limit` passed first.
    pub async fn wait_until_idle(&self, name: &str, limit: Duration) -> Result<bool, GuestError> {
        let (vm, conn) = self.agent_for(name).await?;
        let deadline = tokio::time::Instant::now() + limit;
        let mut before = sample(&conn, &vm.name).await?.cpu;
        loop {
            tokio::time::sleep(IDLE_WINDOW).await;
            let now = sample(&conn, &vm.name).await?.cpu;
            let busy = now.busy.saturating_sub(before.busy);
            let total = busy + now.idle.saturating_sub(before.idle);
            // Enough ticks to judge (USER_HZ is 100): a guest the host
            // starves of CPU has barely counted any.
            if total >= IDLE_WINDOW_MIN_TICKS && busy * 100 <= total * IDLE_BUSY_PERCENT {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            before = now;
        }
    }

    /// The ports listening in the VM (by name or id).
    pub async fn ports(&self, name: &str) -> Result<Vec<ListeningPort>, GuestError> {
        let (vm, conn) = self.agent_for(name).await?;
        match conn.call(|id| Message::Ports { id }, CALL_TIMEOUT).await {
            Ok(Frame {
                msg: Message::PortsReply { ports, .. },
                ..
            }) => Ok(ports),
            Ok(other) => Err(GuestError::agent(
                &vm.name,
                AgentError::Unexpected(format!("{:?}", other.msg)),
            )),
            Err(e) => Err(GuestError::agent(&vm.name, e)),
        }
    }
}

async fn sample(conn: &AgentConn, vm: &str) -> Result<GuestStats, GuestError> {
    match conn.call(|id| Message::Stats { id }, CALL_TIMEOUT).await {
        Ok(Frame {
            msg: Message::StatsReply { stats, .. },
            ..
        }) => Ok(stats),
        Ok(other) => Err(GuestError::agent(
            vm,
            AgentError::Unexpected(format!("{:?}", other.msg)),
        )),
        Err(e) => Err(GuestError::agent(vm, e)),
    }
}

/// How long the sampler waits for one VM's sample (a second sample
/// included, for a VM without a baseline yet).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Samples every running VM with an agent every `interval`, so `vm stats`
/// always has a previous sample to compute CPU usage from. One small
/// request per VM per interval: cheap for the guest and the daemon. VMs
/// are asked at once, each bounded by its own timeout, so one hung agent
/// delays no other VM's sample. Stops when `shutdown` fires.
pub fn spawn_sampler(guest: Arc<Guest>, interval: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sample_all(&guest, SAMPLE_TIMEOUT) => {}
            }
        }
    });
}

/// Samples every running VM with an agent concurrently, each within
/// `per_vm`; returns how many answered.
pub(crate) async fn sample_all(guest: &Arc<Guest>, per_vm: Duration) -> usize {
    let Ok(vms) = guest.db.call(|s| s.vms()).await else {
        return 0;
    };
    let mut samples = tokio::task::JoinSet::new();
    for vm in vms {
        let has_agent = guest.vms.handles(&vm.id).is_some_and(|h| h.agent.is_some());
        // A VM not waited for whose agent never answered may run none:
        // trying every interval would hold its agent-connect lock (and
        // a user's `vm exec`) for the whole timeout. `vm stats` samples it
        // itself once it answers.
        let unproven =
            vm.wait_for == Some(banger_proto::WaitFor::None) && guest.vms.agent(&vm.id).is_none();
        if !has_agent || unproven {
            continue;
        }
        let guest = Arc::clone(guest);
        samples.spawn(async move {
            match tokio::time::timeout(per_vm, guest.stats(&vm.id)).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    tracing::debug!(vm = %vm.name, error = %chain(&e), "stats sample failed");
                    false
                }
                Err(_) => {
                    tracing::debug!(vm = %vm.name, timeout_s = per_vm.as_secs_f64(), "stats sample timed out");
                    false
                }
            }
        });
    }
    let mut answered = 0;
    while let Some(done) = samples.join_next().await {
        answered += usize::from(done.unwrap_or(false));
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::agent::{AGENT_PROTOCOL_VERSION, FrameDecoder, encode};
    use banger_store::VmState;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A fake agent that says Hello, then answers Stats after `delay`
    /// (`None`: never).
    async fn agent(listener: UnixListener, delay: Option<Duration>) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut d = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            d.push(&buf[..n]);
            while let Some(Ok(f)) = d.next_frame() {
                let reply = match f.msg {
                    Message::Hello { .. } => Message::Hello {
                        protocol: AGENT_PROTOCOL_VERSION,
                        version: "test".into(),
                        capabilities: Vec::new(),
                    },
                    Message::Stats { id } => {
                        let Some(delay) = delay else { continue };
                        tokio::time::sleep(delay).await;
                        Message::StatsReply {
                            id,
                            stats: GuestStats {
                                uptime_s: 1.0,
                                load: [0.0; 3],
                                cpu: CpuTimes { busy: 1, idle: 99 },
                                memory_total_bytes: 1 << 30,
                                memory_available_bytes: 1 << 29,
                                disks: Vec::new(),
                            },
                        }
                    }
                    _ => continue,
                };
                s.write_all(&encode(&Frame::new(reply))).await.unwrap();
            }
        }
    }

    /// A VMM that always runs.
    #[derive(Debug)]
    struct Running;

    impl banger_vmm::Vmm for Running {
        fn kind(&self) -> banger_vmm::BackendKind {
            banger_vmm::BackendKind::Qemu
        }
        fn launch(
            &self,
            _: &banger_vmm::VmSpec,
        ) -> Result<banger_vmm::VmHandle, banger_vmm::VmmError> {
            Err(banger_vmm::VmmError::InvalidSpec("no launches".into()))
        }
        fn request_shutdown(&self, _: &banger_vmm::VmHandle) -> Result<(), banger_vmm::VmmError> {
            Ok(())
        }
        fn kill(
            &self,
            _: &banger_vmm::VmHandle,
            _: banger_vmm::Signal,
        ) -> Result<(), banger_vmm::VmmError> {
            Ok(())
        }
        fn is_running(&self, _: &banger_vmm::VmHandle, _: &str) -> bool {
            true
        }
        fn wait_exit(
            &self,
            _: &banger_vmm::VmHandle,
            _: Duration,
        ) -> Result<bool, banger_vmm::VmmError> {
            Ok(false)
        }
        fn status(
            &self,
            _: &banger_vmm::VmHandle,
        ) -> Result<banger_vmm::VmRunState, banger_vmm::VmmError> {
            Ok(banger_vmm::VmRunState::Running)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_agents_do_not_stall_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::testing::test_state_with(tmp.path(), Arc::new(Running));
        // Three agents that never answer stats, two that answer.
        let fakes = [
            ("hung-a", None),
            ("ok-a", Some(Duration::from_millis(10))),
            ("hung-b", None),
            ("hung-c", None),
            ("ok-b", Some(Duration::from_millis(10))),
        ];
        for (name, delay) in fakes {
            let vm = crate::testing::seed(&state, name, VmState::Running);
            let dir = crate::vms::vm_dir(&state.vms, &vm.id);
            let listener = UnixListener::bind(state.guest.agent_socket(&vm.id)).unwrap();
            tokio::spawn(agent(listener, delay));
            let mut h = crate::testing::handles(4_000_001, &dir);
            h.agent = Some("virtio-serial".into());
            state.vms.table.set_handles(&vm.id, h);
        }
        let per_vm = Duration::from_secs(1);
        let started = tokio::time::Instant::now();
        let answered = sample_all(&state.guest, per_vm).await;
        let took = started.elapsed();
        assert_eq!(answered, 2, "both answering agents were sampled");
        // One after another, the three hung agents alone took 3 s.
        assert!(took < per_vm * 2, "took {took:?}");
        let cache = state.guest.stats.0.lock().unwrap();
        assert!(cache.contains_key("id-ok-a") && cache.contains_key("id-ok-b"));
        assert!(!cache.contains_key("id-hung-a"));
    }

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
}
