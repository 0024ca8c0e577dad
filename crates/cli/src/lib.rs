//! The `banger` command line as a library: argument types ([`Cli`]), the
//! daemon client ([`client`]), starting and replacing the daemon
//! ([`daemon_ctl`]) and one module per command group.
//!
//! The CLI is synchronous on purpose: it sends a request and prints the
//! answer, and a blocking `UnixStream` keeps `banger ping` to a few
//! milliseconds of process time. Ctrl-C ends the process with the default
//! signal disposition, which closes the connection, and the daemon cancels
//! the request it was serving.

mod args;
pub mod client;
mod commands;
pub mod daemon_ctl;
pub mod daemon_unit;
mod error;
mod exit;
mod mcp;
mod output;
pub mod reference;
mod tui;

use std::process::ExitCode;

pub use args::Cli;
pub use commands::UpdateError;
pub use error::CliError;
pub use exit::Exit;

/// Identity of this build, compiled into both binaries.
#[derive(Debug, Clone, Copy)]
pub struct BuildInfo {
    pub version: &'static str,
    pub build_id: &'static str,
}

/// Lets a write to a closed pipe end the CLI quietly, killed by SIGPIPE
/// (status 141 in a shell), as `seq 1 100000 | head -1` ends `seq`.
/// Rust ignores SIGPIPE by default, and then `println!` panics ("failed
/// printing to stdout: Broken pipe"). `vm exec` ignores it again for its
/// own loop, to stop the remote command first (`commands/guest.rs`).
pub fn die_on_closed_pipe() {
    set_sigpipe(libc::SIG_DFL);
}

pub(crate) fn set_sigpipe(action: libc::sighandler_t) {
    // SAFETY: SIG_DFL and SIG_IGN are dispositions, not handlers: no code
    // of ours runs in signal context, and changing a disposition is
    // async-signal-safe and thread-safe.
    unsafe {
        libc::signal(libc::SIGPIPE, action);
    }
}

/// Runs one parsed command line and prints errors as
/// `error: MESSAGE (op-XXXXXX)`, returning the documented exit code.
pub fn run(cli: Cli, build: BuildInfo) -> ExitCode {
    output::set(cli.quiet, cli.verbose);
    match commands::run(cli, build) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::ChildExit(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // A message may quote a guest (a path, a process's words):
            // no control character of it reaches the terminal.
            let chain = e.display_chain();
            eprintln!("error: {}", commands::format::escape_control(&chain, true));
            ExitCode::from(e.exit().code())
        }
    }
}
