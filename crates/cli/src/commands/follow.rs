//! Following an asynchronous operation: poll `op.status`, print each stage
//! with its duration as it completes (on a terminal the running one shows
//! as a spinner, or a bar with bytes and rate when it reports progress), and turn Ctrl-C into `op.cancel`
//! (the daemon rolls back and the command exits 130). A failed operation
//! ends the command with the operation's error, code included, so it exits
//! as the same failure answered synchronously would (5 for a conflict).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use banger_proto::methods;
use banger_proto::vm::{OpRef, OpStatusParams, OpView, StageView};
use banger_proto::{ErrorBody, ErrorCode, OpState};
use indicatif::{ProgressBar, ProgressStyle};
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
    let mut printer = StagePrinter::new(std::io::stderr().is_terminal());
    let mut cancel_sent = false;
    let op_id = view.op_id.clone();
    loop {
        if !quiet {
            let mut err = std::io::stderr().lock();
            printer.render(&view.stages, &mut err);
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
    if !quiet {
        printer.finish(&mut std::io::stderr().lock());
    }
    if view.state == OpState::Succeeded {
        return Ok(view);
    }
    Err(CliError::Daemon(failure(view.state, view.error, op_id)))
}

/// Prints an operation's stages as they complete, each with its duration:
/// a group's parts indented under a `▸ NAME` heading, then the group's own
/// line with the time it took in all. On a terminal the running stage
/// shows on a line that is rewritten.
#[derive(Debug)]
struct StagePrinter {
    tty: bool,
    /// Per stage: its heading (groups) and its completion line printed.
    headed: Vec<bool>,
    done: Vec<bool>,
    /// The running stage shown on a terminal, and its spinner or bar.
    showing: Option<(usize, ProgressBar)>,
}

/// The width of a top-level stage's name column, so durations line up.
const NAME_WIDTH: usize = 38;

impl StagePrinter {
    fn new(tty: bool) -> Self {
        Self {
            tty,
            headed: Vec::new(),
            done: Vec::new(),
            showing: None,
        }
    }

    fn render(&mut self, stages: &[StageView], out: &mut dyn Write) {
        self.headed.resize(stages.len(), false);
        self.done.resize(stages.len(), false);
        let mut open_groups: Vec<usize> = Vec::new();
        for (i, stage) in stages.iter().enumerate() {
            while let Some(&g) = open_groups.last() {
                if stages[g].depth < stage.depth {
                    break;
                }
                open_groups.pop();
                if !self.complete(stages, g, out) {
                    return;
                }
            }
            let is_group = stages
                .get(i + 1)
                .is_some_and(|next| next.depth > stage.depth);
            if is_group {
                if !self.headed[i] {
                    self.clear_running(out);
                    let _ = writeln!(out, "{}▸ {}", indent(stage.depth), stage.name);
                    self.headed[i] = true;
                }
                open_groups.push(i);
                continue;
            }
            if !self.complete(stages, i, out) {
                if self.tty {
                    self.show_running(i, stage);
                }
                return;
            }
        }
        while let Some(g) = open_groups.pop() {
            if !self.complete(stages, g, out) {
                return;
            }
        }
    }

    /// Prints stage `i`'s completion line once it has a duration; false
    /// while it runs.
    fn complete(&mut self, stages: &[StageView], i: usize, out: &mut dyn Write) -> bool {
        let stage = &stages[i];
        let Some(ms) = stage.duration_ms else {
            return false;
        };
        if !self.done[i] {
            self.clear_running(out);
            let width = NAME_WIDTH.saturating_sub(2 * stage.depth as usize);
            let _ = writeln!(
                out,
                "{}✓ {:<width$} {:>7.1} s",
                indent(stage.depth),
                stage.name,
                ms as f64 / 1000.0
            );
            self.done[i] = true;
        }
        true
    }

    /// Shows running stage `i` on the terminal: a spinner with the time
    /// it has taken, or a bar with bytes, rate and time left once the
    /// stage reports progress.
    fn show_running(&mut self, i: usize, stage: &StageView) {
        if self.showing.as_ref().is_some_and(|(shown, _)| *shown != i) {
            self.clear_running(&mut std::io::sink());
        }
        let (_, bar) = self.showing.get_or_insert_with(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(running_style(stage.depth, None));
            bar.set_message(stage.name.clone());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            (i, bar)
        });
        if let Some(p) = stage.progress {
            if bar.length() != p.total_bytes || bar.position() == 0 {
                bar.set_style(running_style(stage.depth, Some(p.total_bytes)));
                if let Some(total) = p.total_bytes {
                    bar.set_length(total);
                }
            }
            bar.set_position(p.done_bytes);
        }
    }

    fn clear_running(&mut self, _out: &mut dyn Write) {
        if let Some((_, bar)) = self.showing.take() {
            bar.finish_and_clear();
        }
    }

    /// Clears a running line left on the terminal.
    fn finish(&mut self, out: &mut dyn Write) {
        self.clear_running(out);
    }
}

/// The look of a running stage: a spinner and its time so far; with
/// progress, bytes and rate (`Some(None)`: total unknown), and a bar and
/// time left when the total is known.
fn running_style(depth: u32, progress: Option<Option<u64>>) -> ProgressStyle {
    // The templates are fixed; a bad one is a bug caught by the tests,
    // and the default style is a fine fallback anyway.
    ProgressStyle::with_template(&running_template(depth, progress))
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ")
}

fn running_template(depth: u32, progress: Option<Option<u64>>) -> String {
    let indent = indent(depth);
    match progress {
        None => format!("{indent}{{spinner}} {{msg}} {{elapsed}}"),
        Some(None) => format!("{indent}{{spinner}} {{msg}} {{bytes}} {{bytes_per_sec}}"),
        Some(Some(_)) => format!(
            "{indent}{{spinner}} {{msg}} [{{bar:12}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{eta}}"
        ),
    }
}

fn indent(depth: u32) -> String {
    " ".repeat(2 + 2 * depth as usize)
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

    fn stage(name: &str, depth: u32, ms: Option<u64>) -> StageView {
        StageView {
            name: name.into(),
            duration_ms: ms,
            depth,
            progress: None,
        }
    }

    /// A group's parts print indented under its heading as they end, and
    /// the group's own line comes after them with its whole duration.
    #[test]
    fn running_styles_parse() {
        for progress in [None, Some(None), Some(Some(10))] {
            let template = running_template(1, progress);
            assert!(
                ProgressStyle::with_template(&template).is_ok(),
                "{template}"
            );
        }
    }

    #[test]
    fn nested_stages_print_under_their_group() {
        let mut printer = StagePrinter::new(false);
        let mut out = Vec::new();
        let mut stages = vec![
            stage("check artifacts", 0, Some(5)),
            stage("build image default", 0, None),
            stage("debootstrap", 1, Some(23_000)),
            stage("install agent", 1, None),
        ];
        printer.render(&stages, &mut out);
        stages[3].duration_ms = Some(200);
        stages[1].duration_ms = Some(23_300);
        stages.push(stage("launch vmm", 0, None));
        printer.render(&stages, &mut out);
        stages[4].duration_ms = Some(100);
        printer.render(&stages, &mut out);
        printer.render(&stages, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "  ✓ check artifacts                            0.0 s",
                "  ▸ build image default",
                "    ✓ debootstrap                             23.0 s",
                "    ✓ install agent                            0.2 s",
                "  ✓ build image default                       23.3 s",
                "  ✓ launch vmm                                 0.1 s",
            ]
        );
    }

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
