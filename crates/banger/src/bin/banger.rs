//! `banger`, the command line. Parses arguments, sets up tracing and hands
//! over to `banger_cli`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    banger_cli::die_on_closed_pipe();
    let cli = banger_cli::Cli::parse();
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
