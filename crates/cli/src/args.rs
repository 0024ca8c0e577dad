use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::EXIT_CODES_HELP;

/// banger: disposable Linux microVMs for developers and coding agents.
#[derive(Debug, Parser)]
#[command(name = "banger", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// The bangerd binary to start when no daemon runs
    /// (default: beside this banger, then PATH).
    #[arg(long, global = true, env = "BANGER_DAEMON_BIN", value_name = "PATH")]
    pub bangerd: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the daemon answers (starting it if needed).
    Ping(JsonFlag),
    /// Manage the bangerd daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Send one raw RPC request and print its result (for debugging).
    Rpc(RpcArgs),
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show what the daemon is and where its files are.
    Status(JsonFlag),
    /// Stop the daemon (running VMs keep running).
    Stop(JsonFlag),
    /// Print the daemon's log.
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last lines to print first (0: all).
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// Print the raw JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RpcArgs {
    /// Method name, e.g. daemon.status.
    pub method: String,
    /// Params as a JSON value (default: none).
    pub params: Option<String>,
    /// Use this op id instead of letting the daemon mint one.
    #[arg(long, value_name = "op-ID")]
    pub op_id: Option<String>,
}
