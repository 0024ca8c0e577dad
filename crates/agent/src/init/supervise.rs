//! What PID 1 does with each child it reaps: the agent's exit means a
//! restart (after a back-off that grows while it keeps failing fast),
//! anything else is an orphan whose status nobody wants.
//!
//! Only the agent and orphans ever reach PID 1: the agent's exec
//! children are its own (the agent is not PID 1), so their statuses are
//! the agent's to collect and PID 1's `wait()` can take whatever comes.

use std::time::{Duration, Instant};

/// First wait before restarting an agent that exited.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// An agent that ran this long counts as healthy: its next restart is
/// quick again.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What to do about a reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not the agent: reaped, nothing else.
    Orphan,
    /// The agent ended: start it again after this long.
    Restart { after: Duration },
}

/// The agent's pid and how its restarts are going.
#[derive(Debug, Default)]
pub struct Supervisor {
    agent: Option<(i32, Instant)>,
    backoff: Option<Duration>,
}

impl Supervisor {
    /// The agent was started as `pid` at `now`.
    pub fn started(&mut self, pid: i32, now: Instant) {
        self.agent = Some((pid, now));
    }

    /// The agent's pid, while it runs.
    pub fn agent(&self) -> Option<i32> {
        self.agent.map(|(p, _)| p)
    }

    /// Child `pid` was reaped at `now`.
    pub fn on_exit(&mut self, pid: i32, now: Instant) -> Action {
        match self.agent {
            Some((p, since)) if p == pid => {
                self.agent = None;
                let after = if now.saturating_duration_since(since) >= HEALTHY_AFTER {
                    MIN_BACKOFF
                } else {
                    self.backoff
                        .map_or(MIN_BACKOFF, |b| (b * 2).min(MAX_BACKOFF))
                };
                self.backoff = Some(after);
                Action::Restart { after }
            }
            _ => Action::Orphan,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_and_the_agent() {
        let t0 = Instant::now();
        let mut s = Supervisor::default();
        // Before the agent exists, everything is an orphan.
        assert_eq!(s.on_exit(7, t0), Action::Orphan);
        s.started(42, t0);
        assert_eq!(s.agent(), Some(42));
        assert_eq!(s.on_exit(43, t0), Action::Orphan);
        assert_eq!(s.agent(), Some(42));
        assert_eq!(
            s.on_exit(42, t0 + Duration::from_secs(1)),
            Action::Restart { after: MIN_BACKOFF }
        );
        assert_eq!(s.agent(), None);
        // The same pid again (reused by an orphan) is no longer the agent.
        assert_eq!(s.on_exit(42, t0), Action::Orphan);
    }

    #[test]
    fn fast_failures_back_off_and_health_resets() {
        let mut t = Instant::now();
        let mut s = Supervisor::default();
        let mut waits = Vec::new();
        for pid in 100..106 {
            s.started(pid, t);
            t += Duration::from_millis(10);
            match s.on_exit(pid, t) {
                Action::Restart { after } => waits.push(after),
                Action::Orphan => panic!("the agent is no orphan"),
            }
        }
        assert_eq!(waits[0], MIN_BACKOFF);
        assert_eq!(waits[1], MIN_BACKOFF * 2);
        assert_eq!(waits[2], MIN_BACKOFF * 4);
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        // One that ran long enough restarts quickly again.
        s.started(200, t);
        assert_eq!(
            s.on_exit(200, t + HEALTHY_AFTER),
            Action::Restart { after: MIN_BACKOFF }
        );
    }
}
