//! `banger`, the command line. Parses arguments, sets up tracing and hands
//! over to `banger_cli`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    banger_cli::die_on_closed_pipe();
    // `banger --version` names the build id, which only this crate's
    // build script knows; `banger update` reads it from a new `banger`.
    let matches = banger_cli::Cli::command()
        .version(concat!(
            env!("CARGO_PKG_VERSION"),
            " (build ",
            env!("BANGER_BUILD_ID"),
            ")"
        ))
        .get_matches();
    let cli = banger_cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Quiet by default: the CLI's own diagnostics show with -v or
    // BANGER_CLI_LOG=debug (which wins); -q leaves errors only.
    let level = match (cli.verbose, cli.quiet) {
        (true, _) => "debug",
        (false, true) => "error",
        (false, false) => "warn",
    };
    let filter =
        EnvFilter::try_from_env("BANGER_CLI_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    banger_cli::run(
        cli,
        banger_cli::BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            build_id: env!("BANGER_BUILD_ID"),
        },
    )
}
