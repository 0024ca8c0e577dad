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

/// Samples every running VM with an agent every `interval`, so `vm stats`
/// always has a previous sample to compute CPU usage from. One small
/// request per VM per interval: cheap for the guest and the daemon. Stops
/// when `shutdown` fires.
pub fn spawn_sampler(guest: Arc<Guest>, interval: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let Ok(vms) = guest.db.call(|s| s.vms()).await else {
                continue;
            };
            for vm in vms {
                let has_agent = guest.vms.handles(&vm.id).is_some_and(|h| h.agent.is_some());
                if has_agent {
                    if let Err(e) = guest.stats(&vm.id).await {
                        tracing::debug!(vm = %vm.name, error = %chain(&e), "stats sample failed");
                    }
                }
            }
        }
    });
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
}
