//! `banger events`: the daemon's event stream (`events.subscribe`), one
//! line per event, until the daemon ends it or the user stops it.

use std::io::Write;

use banger_proto::EndReason;
use banger_proto::events::{Event, EventFrame, EventKind, EventsSubscribeParams};

use super::format::escape_control;
use crate::CliError;
use crate::args::EventsArgs;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};

pub(crate) fn run(target: &DaemonTarget, args: &EventsArgs) -> Result<(), CliError> {
    let conn = ensure_daemon(target)?;
    let params = EventsSubscribeParams {
        since: args.since,
        epoch: args.epoch.clone(),
    };
    let (answer, stream) = conn.client.subscribe(&params)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let line = serde_json::json!({ "subscribed": answer });
        let _ = writeln!(out, "{line}");
    } else {
        eprintln!(
            "events of bangerd run {} after #{} ({} held ones first)",
            answer.epoch,
            args.since.unwrap_or(answer.last_seq),
            answer.replayed
        );
    }
    if !answer.complete {
        eprintln!(
            "warning: some events after #{} are no longer held (or were another run's); \
             read the lists again (vm list, ops)",
            args.since.unwrap_or(0)
        );
    }
    let mut seen = 0u64;
    let mut last_seq = args.since.unwrap_or(answer.last_seq);
    for frame in stream {
        let frame = frame?;
        let written = if args.json {
            match serde_json::to_string(&frame) {
                Ok(line) => writeln!(out, "{line}"),
                Err(e) => return Err(CliError::BadResponse(format!("event: {e}"))),
            }
        } else {
            match &frame {
                EventFrame::Event(e) => writeln!(out, "{}", describe(e)),
                EventFrame::End(_) => Ok(()),
            }
        };
        // stdout closed (`banger events | head`): done.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        match frame {
            EventFrame::Event(e) => {
                last_seq = e.seq;
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    return Ok(());
                }
            }
            EventFrame::End(end) => {
                return match end.reason {
                    EndReason::Shutdown => {
                        eprintln!("bangerd stopped; the stream ended after #{}", end.last_seq);
                        Ok(())
                    }
                    reason => Err(CliError::StreamEnded {
                        reason,
                        message: end.message,
                    }),
                };
            }
        }
    }
    Err(CliError::StreamCut {
        last_seq,
        epoch: answer.epoch,
    })
}

/// One event as a line: `#SEQ HH:MM:SS what`. Names and messages are the
/// daemon's, but may carry a guest's text (an error's): escaped.
pub(crate) fn describe(e: &Event) -> String {
    let t = banger_proto::time::UtcTime::from_unix_ms(e.at_ms);
    let what = match &e.kind {
        EventKind::Object(c) => {
            let state = c.vm_state.map(|s| format!(" ({s})")).unwrap_or_default();
            format!("{} {} {}{state}", c.object, c.name, c.action)
        }
        EventKind::OpStarted {
            op_id,
            kind,
            target,
        } => format!("{op_id} {kind} {target}: started"),
        EventKind::OpStage {
            op_id,
            stage,
            depth,
        } => format!("{op_id} {}{stage}", "  ".repeat(*depth as usize)),
        EventKind::OpEnded {
            op_id,
            state,
            error,
        } => match error {
            Some(e) => format!("{op_id} {state}: {}", e.message),
            None => format!("{op_id} {state}"),
        },
    };
    format!(
        "#{} {:02}:{:02}:{:02} {}",
        e.seq,
        t.hour,
        t.minute,
        t.second,
        escape_control(&what, false)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::events::ObjectChange;
    use banger_proto::{ObjectAction, ObjectKind, VmState};

    #[test]
    fn events_read_as_one_escaped_line() {
        let e = Event {
            seq: 7,
            at_ms: 0,
            kind: EventKind::Object(ObjectChange {
                object: ObjectKind::Vm,
                action: ObjectAction::Updated,
                id: "abc".into(),
                name: "dev".into(),
                vm_state: Some(VmState::Running),
            }),
        };
        assert_eq!(describe(&e), "#7 00:00:00 vm dev updated (running)");
        let e = Event {
            seq: 8,
            at_ms: 0,
            kind: EventKind::OpStage {
                op_id: "op-abcdef".into(),
                stage: "boot\x1b[2J".into(),
                depth: 1,
            },
        };
        assert_eq!(describe(&e), "#8 00:00:00 op-abcdef   boot\\x1b[2J");
    }
}
