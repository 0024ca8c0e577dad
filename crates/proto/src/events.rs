//! The daemon's event stream (`events.subscribe`, docs/rpc.md "Events").
//!
//! After its `events.subscribe` request is answered with
//! [`EventsSubscribed`], a connection carries only [`EventFrame`] lines,
//! one JSON object each, until the daemon ends the stream (an
//! [`EventFrame::End`] naming why) or the client closes it. Each
//! [`Event`] has a sequence number, one more than the one before it on
//! that daemon's run (its `epoch`); a client that reconnects passes the
//! epoch and the last number it saw and gets every event after it that
//! the daemon still holds, without repeats.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{EndReason, ErrorBody, ObjectAction, ObjectKind, OpKind, OpState, VmState};

/// `events.subscribe`'s params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsSubscribeParams {
    /// Resume after this sequence number: the events the daemon still
    /// holds with a larger one are sent first. Absent: only new events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The epoch `since` was seen in. Another epoch (the daemon restarted)
    /// replays nothing and answers `complete: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// `events.subscribe`'s answer, sent before the first event line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventsSubscribed {
    /// This daemon run's id; sequence numbers count within it.
    pub epoch: String,
    /// The sequence number of the last event published before this
    /// subscription (0: none yet); replayed events are at most this.
    pub last_seq: u64,
    /// How many held events follow first (those after `since`).
    pub replayed: u64,
    /// False when events after `since` are no longer held (or `epoch` is
    /// another run's): the client missed some and should read the lists
    /// (`vm.list`, `op.list`...) again.
    pub complete: bool,
}

/// One line of the stream after the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventFrame {
    Event(Event),
    /// The last line: why the daemon ended the stream.
    End(StreamEnd),
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StreamEnd {
    pub reason: EndReason,
    pub message: String,
    /// The last sequence number sent on this stream (resume after it).
    pub last_seq: u64,
}

/// One change the daemon made or saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub seq: u64,
    /// When it was published, milliseconds since the Unix epoch.
    pub at_ms: i64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A VM, image, kernel or snapshot record was made, changed or removed
    /// (a VM's state is in `vm_state`). Read it again (`vm.show`...) for
    /// the rest.
    Object(ObjectChange),
    /// An asynchronous operation began.
    OpStarted {
        op_id: String,
        kind: OpKind,
        target: String,
    },
    /// An operation's stage began (depth as in `StageView`).
    OpStage {
        op_id: String,
        stage: String,
        #[serde(default)]
        depth: u32,
    },
    /// An operation ended.
    OpEnded {
        op_id: String,
        state: OpState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
}

/// A record that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectChange {
    pub object: ObjectKind,
    pub action: ObjectAction,
    pub id: String,
    pub name: String,
    /// A VM's state after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_state: Option<VmState>,
}
