//! Following an asynchronous operation: poll `op.status`, print each stage
//! with its duration as it completes, and turn Ctrl-C into `op.cancel`
//! (the daemon rolls back and the command exits 130). A failed operation
//! ends the command with the operation's error, code included, so it exits
//! as the same failure answered synchronously would (5 for a conflict).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use banger_proto::methods;
use banger_proto::vm::{OpRef, OpStatusParams, OpView};
use banger_proto::{ErrorBody, ErrorCode, OpState};
use serde::de::DeserializeOwned;

use crate::CliError;
use crate::client::Client;

/// Polls until the operation ends; prints stages to stderr unless `quiet`.
/// Returns the final view of a succeeded operation, or its error body.
pub(crate) fn follow(client: &mut Client, start: OpView, quiet: bool) -> Result<OpView, CliError> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let sig = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(CliError::Io)?;
    let quiet = quiet || crate::output::quiet();
    let result = poll(client, start, quiet, &interrupted);
    signal_hook::low_level::unregister(sig);
    result
}

/// Follows an operation to the end like [`follow`] and decodes its
/// result (a VM, snapshot, image... depending on its kind) as `T`.
pub(crate) fn follow_result<T: DeserializeOwned>(
    client: &mut Client,
    start: OpView,
    quiet: bool,
) -> Result<T, CliError> {
    let kind = start.kind;
    let done = follow(client, start, quiet)?;
    serde_json::from_value(done.result.unwrap_or_default())
        .map_err(|e| CliError::BadResponse(format!("{kind} result: {e}")))
}

fn poll(
    client: &mut Client,
    mut view: OpView,
    quiet: bool,
    interrupted: &AtomicBool,
) -> Result<OpView, CliError> {
    let tty = std::io::stderr().is_terminal();
    let mut printed = 0; // stages whose completion was printed
    let mut showing: Option<String> = None; // running stage shown on a tty
    let mut cancel_sent = false;
    let op_id = view.op_id.clone();
    loop {
        if !quiet {
            let mut err = std::io::stderr().lock();
            while printed < view.stages.len() {
                let stage = &view.stages[printed];
                match stage.duration_ms {
                    Some(ms) => {
                        if tty && showing.is_some() {
                            let _ = write!(err, "\r\x1b[2K");
                        }
                        let _ =
                            writeln!(err, "  ✓ {:<38} {:>7.1} s", stage.name, ms as f64 / 1000.0);
                        showing = None;
                        printed += 1;
                    }
                    None => {
                        if tty && showing.as_deref() != Some(&stage.name) {
                            let _ = write!(err, "\r\x1b[2K  … {}", stage.name);
                            showing = Some(stage.name.clone());
                        }
                        break;
                    }
                }
            }
            let _ = err.flush();
        }
        if view.state.is_done() {
            break;
        }
        if interrupted.load(Ordering::SeqCst) && !cancel_sent {
            if !quiet {
                eprintln!("\ninterrupted: cancelling {op_id} and rolling back...");
            }
            client.call::<methods::OpCancel>(&OpRef {
                op_id: op_id.clone(),
            })?;
            cancel_sent = true;
        }
        // Answered as soon as a stage starts or the operation ends; the
        // bound keeps a Ctrl-C noticed within a quarter of a second.
        view = client.call::<methods::OpStatus>(&OpStatusParams {
            op_id: op_id.clone(),
            wait_ms: Some(250),
        })?;
    }
    if tty && showing.is_some() && !quiet {
        eprintln!();
    }
    if view.state == OpState::Succeeded {
        return Ok(view);
    }
    Err(CliError::Daemon(failure(view.state, view.error, op_id)))
}

/// The error of an operation that ended in `state` (not succeeded): its
/// own error body, so the code of what failed decides the exit code; a
/// cancelled one always reads as cancelled (it may have failed while
/// rolling back).
fn failure(state: OpState, error: Option<ErrorBody>, op_id: String) -> ErrorBody {
    let mut body = match (state, error) {
        (OpState::Cancelled, Some(e)) => ErrorBody {
            code: ErrorCode::Cancelled,
            ..e
        },
        (OpState::Cancelled, None) => ErrorBody::new(ErrorCode::Cancelled, "cancelled"),
        (_, Some(e)) => e,
        (_, None) => ErrorBody::new(ErrorCode::OperationFailed, "operation failed"),
    };
    if body.op_id.is_none() {
        body.op_id = Some(op_id);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Exit;

    #[test]
    fn a_failed_operation_keeps_its_code() {
        let conflict =
            ErrorBody::new(ErrorCode::Conflict, "host port 8080 is taken").with_op_id("op-create1");
        let body = failure(OpState::Failed, Some(conflict.clone()), "op-create1".into());
        assert_eq!(body, conflict);
        assert_eq!(CliError::Daemon(body).exit(), Exit::Conflict);
        assert_eq!(Exit::Conflict.code(), 5);

        let body = failure(OpState::Failed, None, "op-create1".into());
        assert_eq!(body.code, ErrorCode::OperationFailed);
        assert_eq!(body.op_id.as_deref(), Some("op-create1"));

        let failed_in_rollback = ErrorBody::new(ErrorCode::OperationFailed, "rollback failed");
        let body = failure(
            OpState::Cancelled,
            Some(failed_in_rollback),
            "op-create1".into(),
        );
        assert_eq!(body.code, ErrorCode::Cancelled);
        assert_eq!(body.message, "rollback failed");
        assert_eq!(body.to_string(), "rollback failed (op-create1)");
    }
}
