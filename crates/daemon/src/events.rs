//! The daemon's event stream (`events.subscribe`, docs/rpc.md "Events"):
//! every change to a VM, image, kernel or snapshot record (the store tells
//! us of each write: [`EventBus::store_observer`]) and every operation's
//! start, stages and end ([`crate::ops`]), numbered in order.
//!
//! The bus holds the last `capacity` events (for subscribers that resume
//! with `since`) and hands new ones to live subscribers through a tokio
//! broadcast channel of the same capacity: memory is bounded by the
//! capacity whatever the subscribers do. A subscriber that falls further
//! behind than that is told it lagged (`crate::dispatch::server` ends its
//! stream); one that stops reading is dropped after the stall limit.
//!
//! Publishing takes one std mutex (a leaf: nothing else is locked under
//! it) and never waits, so the store's writers can publish from their
//! blocking threads.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use banger_proto::ObjectKind;
use banger_proto::events::{Event, EventKind, EventsSubscribed, ObjectChange};
use tokio::sync::broadcast;

use crate::ops::now_ms;

/// Events held for resuming subscribers, and the live channel's depth.
pub const DEFAULT_CAPACITY: usize = 4096;

#[derive(Debug)]
struct Held {
    last_seq: u64,
    events: VecDeque<Arc<Event>>,
}

/// Where events are published and subscribed to.
#[derive(Debug)]
pub struct EventBus {
    /// This daemon run's id: sequence numbers start again at 1 each run.
    epoch: String,
    capacity: usize,
    held: Mutex<Held>,
    live: broadcast::Sender<Arc<Event>>,
}

/// A new subscriber's start: the answer to send, the held events to send
/// first, and the live feed after them.
#[derive(Debug)]
pub struct Subscription {
    pub answer: EventsSubscribed,
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (live, _) = broadcast::channel(capacity);
        // The op id generator's randomness, without its prefix: an epoch
        // only needs to differ between runs.
        let epoch = crate::op::mint().as_str().replacen("op-", "e-", 1);
        Self {
            epoch,
            capacity,
            held: Mutex::new(Held {
                last_seq: 0,
                events: VecDeque::with_capacity(capacity),
            }),
            live,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Nothing panics while holding this lock; recover the data if so.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many events are held.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.lock().events.len()
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Numbers `kind`, holds it and sends it to the live subscribers.
    pub fn publish(&self, kind: EventKind) {
        let mut held = self.lock();
        held.last_seq += 1;
        let event = Arc::new(Event {
            seq: held.last_seq,
            at_ms: now_ms(),
            kind,
        });
        if held.events.len() == self.capacity {
            held.events.pop_front();
        }
        held.events.push_back(Arc::clone(&event));
        // Sent under the lock, so a subscriber's replay (taken under it)
        // and its live feed neither overlap nor leave a gap. No receiver
        // is not an error.
        let _ = self.live.send(event);
    }

    /// A subscription resuming after `since` (of `epoch`), or from now.
    pub fn subscribe(&self, since: Option<u64>, epoch: Option<&str>) -> Subscription {
        let held = self.lock();
        let live = self.live.subscribe();
        let oldest = held.events.front().map_or(held.last_seq + 1, |e| e.seq);
        let same_run = epoch.is_none_or(|e| e == self.epoch);
        let (replay, complete) = match since {
            None => (Vec::new(), true),
            Some(_) if !same_run => (Vec::new(), false),
            Some(since) => {
                let replay: Vec<_> = held
                    .events
                    .iter()
                    .filter(|e| e.seq > since)
                    .cloned()
                    .collect();
                // Complete when the event right after `since` is held (or
                // none came since); `since` past the last is taken as now.
                (replay, since.saturating_add(1) >= oldest)
            }
        };
        Subscription {
            answer: EventsSubscribed {
                epoch: self.epoch.clone(),
                last_seq: held.last_seq,
                replayed: replay.len() as u64,
                complete,
            },
            replay,
            live,
        }
    }

    /// The store's observer: each record written becomes an event. The
    /// hidden VMs warm templates are built in (`_template-ID`) are left
    /// out, as `vm.list` leaves them out.
    pub fn store_observer(self: &Arc<Self>) -> banger_store::Observer {
        let bus = Arc::clone(self);
        Box::new(move |change: ObjectChange| {
            if change.object == ObjectKind::Vm && change.name.starts_with('_') {
                return;
            }
            bus.publish(EventKind::Object(change));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::OpKind;

    fn op_started(n: u32) -> EventKind {
        EventKind::OpStarted {
            op_id: format!("op-test{n:04}"),
            kind: OpKind::VmCreate,
            target: format!("vm{n}"),
        }
    }

    fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn resuming_replays_exactly_what_came_after() {
        let bus = EventBus::new(8);
        for n in 0..5 {
            bus.publish(op_started(n));
        }
        let s = bus.subscribe(Some(2), Some(bus.epoch()));
        assert_eq!(seqs(&s.replay), vec![3, 4, 5]);
        assert_eq!(s.answer.last_seq, 5);
        assert_eq!(s.answer.replayed, 3);
        assert!(s.answer.complete);
        // Nothing new yet: a resume at the last one replays nothing.
        let s = bus.subscribe(Some(5), None);
        assert!(s.replay.is_empty() && s.answer.complete);
        // From now: nothing replayed.
        let s = bus.subscribe(None, None);
        assert!(s.replay.is_empty() && s.answer.complete);
    }

    #[tokio::test]
    async fn live_events_follow_the_replay_without_gap_or_repeat() {
        let bus = EventBus::new(8);
        bus.publish(op_started(0));
        let mut s = bus.subscribe(Some(0), None);
        bus.publish(op_started(1));
        assert_eq!(seqs(&s.replay), vec![1]);
        assert_eq!(s.live.recv().await.unwrap().seq, 2);
    }

    #[test]
    fn events_no_longer_held_make_the_resume_incomplete() {
        let bus = EventBus::new(4);
        for n in 0..10 {
            bus.publish(op_started(n));
        }
        let s = bus.subscribe(Some(3), None);
        assert_eq!(seqs(&s.replay), vec![7, 8, 9, 10]);
        assert!(!s.answer.complete, "4, 5 and 6 are gone");
        let s = bus.subscribe(Some(6), None);
        assert!(s.answer.complete);
        let s = bus.subscribe(Some(6), Some("e-another-run"));
        assert!(s.replay.is_empty() && !s.answer.complete);
    }

    #[tokio::test]
    async fn a_subscriber_too_far_behind_is_told_it_lagged() {
        let bus = EventBus::new(4);
        let mut s = bus.subscribe(None, None);
        for n in 0..10 {
            bus.publish(op_started(n));
        }
        assert!(matches!(
            s.live.recv().await,
            Err(broadcast::error::RecvError::Lagged(6))
        ));
    }

    #[test]
    fn template_vms_are_not_published() {
        let bus = Arc::new(EventBus::new(4));
        let observe = bus.store_observer();
        for name in ["_template-abc", "dev"] {
            observe(ObjectChange {
                object: ObjectKind::Vm,
                action: banger_proto::ObjectAction::Created,
                id: "id".into(),
                name: name.into(),
                vm_state: None,
            });
        }
        let s = bus.subscribe(Some(0), None);
        assert_eq!(s.replay.len(), 1);
        assert!(
            matches!(&s.replay[0].kind, EventKind::Object(c) if c.name == "dev"),
            "{:?}",
            s.replay
        );
    }
}
