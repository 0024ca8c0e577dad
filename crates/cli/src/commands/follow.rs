//! Following an asynchronous operation: poll `op.status`, print each stage
//! with its duration as it completes, and turn Ctrl-C into `op.cancel`
//! (the daemon rolls back and the command exits 130).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use banger_proto::methods;
use banger_proto::vm::{OpRef, OpView};
use banger_proto::{ErrorBody, ErrorCode};

use crate::CliError;
use crate::client::Client;

/// Polls until the operation ends; prints stages to stderr unless `quiet`.
/// Returns the final view of a succeeded operation, or its error.
pub(crate) fn follow(client: &mut Client, start: OpView, quiet: bool) -> Result<OpView, CliError> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let sig = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(CliError::Io)?;
    let result = poll(client, start, quiet, &interrupted);
    signal_hook::low_level::unregister(sig);
    result
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
        if view.state != "running" {
            break;
        }
        if interrupted.load(Ordering::SeqCst) && !cancel_sent {
            if !quiet {
                eprintln!("\ninterrupted: cancelling {op_id} and rolling back...");
            }
            let _: OpView = client.call(
                methods::OP_CANCEL,
                OpRef {
                    op_id: op_id.clone(),
                },
            )?;
            cancel_sent = true;
        }
        std::thread::sleep(Duration::from_millis(150));
        view = client.call(
            methods::OP_STATUS,
            OpRef {
                op_id: op_id.clone(),
            },
        )?;
    }
    if tty && showing.is_some() && !quiet {
        eprintln!();
    }
    match view.state.as_str() {
        "succeeded" => Ok(view),
        "cancelled" => Err(CliError::Daemon(
            ErrorBody::new(
                ErrorCode::Cancelled,
                view.error.clone().unwrap_or_else(|| "cancelled".into()),
            )
            .with_op_id(op_id),
        )),
        _ => Err(CliError::Daemon(
            ErrorBody::new(
                ErrorCode::OperationFailed,
                view.error
                    .clone()
                    .unwrap_or_else(|| "operation failed".into()),
            )
            .with_op_id(op_id),
        )),
    }
}
