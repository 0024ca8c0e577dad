//! `banger system install|uninstall|status`: putting `banger-helper`, the
//! root helper, in place, taking it away again, and saying how it is.
//!
//! Install copies `banger`, `bangerd` and `banger-helper` (and
//! `banger-agent` when it is there) from the running binary's directory
//! into `PREFIX/bin`, the man pages and shell completions into
//! `PREFIX/share` (crates/cli/src/reference.rs), writes the helper's config
//! ([`HelperConfig`](banger_proto::helper::HelperConfig)) and starts the helper: with systemd, through a
//! `banger-helper.socket` + `banger-helper.service` pair; without, as a
//! background process in its own session whose pid is kept next to the
//! socket. Either way it waits until the helper answers `ping`.
//!
//! Two hidden environment variables exist for tests:
//! `BANGER_SYSTEMD_RUNTIME_DIR` (default `/run/systemd/system`, whose
//! existence means "systemd runs") and `BANGER_SYSTEMD_UNIT_DIR` (default
//! `/etc/systemd/system`).

mod accounts;
mod files;
mod install;
mod paths;
mod ping;
mod process;
mod status;
mod uninstall;
mod units;

use std::fmt::Display;
use std::io;
use std::time::Duration;

use banger_proto::{ErrorBody, ErrorCode};

use super::print_json;
use crate::CliError;
use crate::args::SystemCommand;

/// The binaries install copies, in this order.
const BINARIES: [&str; 3] = ["banger", "bangerd", "banger-helper"];
const HELPER_BIN: &str = "banger-helper";
/// The static guest agent bangerd bakes into images; copied with the
/// binaries when it is beside them (scripts/quickstart.sh puts it there).
const AGENT_BIN: &str = "banger-agent";
const SERVICE_UNIT: &str = "banger-helper.service";
const SOCKET_UNIT: &str = "banger-helper.socket";
/// How long a freshly started helper gets to answer `ping`.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// The PATH a helper started without systemd gets (its environment is
/// cleared, as systemd would).
const HELPER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn run(cmd: &SystemCommand) -> Result<(), CliError> {
    match cmd {
        SystemCommand::Install(a) => install::install(a),
        SystemCommand::Uninstall(a) => uninstall::uninstall(a),
        SystemCommand::Status(a) => status::status(a),
    }
}

fn fail(code: ErrorCode, message: impl Into<String>) -> CliError {
    CliError::Daemon(ErrorBody::new(code, message))
}

/// An I/O failure on `what`; permission problems keep their exit code.
fn io_fail(what: impl Display, e: &io::Error) -> CliError {
    let code = match e.kind() {
        io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        _ => ErrorCode::OperationFailed,
    };
    fail(code, format!("{what}: {e}"))
}

fn require_root(what: &str) -> Result<(), CliError> {
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 {
        return Ok(());
    }
    Err(fail(
        ErrorCode::PermissionDenied,
        format!(
            "`banger system {what}` must run as root (you are uid {euid}); try `sudo banger system {what}`"
        ),
    ))
}

/// Progress lines: stdout, or stderr when stdout carries JSON; none with
/// `-q`.
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn step(self, text: impl Display) {
        if crate::output::quiet() {
            return;
        }
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}
