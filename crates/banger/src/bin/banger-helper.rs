//! `banger-helper`, the root helper. Parses arguments, loads the config,
//! sets up JSON logging and serves the helper socket until SIGTERM or
//! SIGINT (`banger_helper::run_until_signalled`). `teardown` removes every
//! TAP, the bridge, the NAT table and iptables chain it made and turns
//! IPv4 forwarding back off when the helper turned it on (for `banger
//! system uninstall`); `check-config` only validates the config file.
//! Installed and started by `banger system install`; see docs/helper.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use banger_helper::host::SystemHost;
use banger_helper::{DEFAULT_HELPER_CONFIG, ServeOptions, logging};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
// `--version` names the build id too, as `banger` and `bangerd` do
// (`banger update` checks that the three are of one build).
#[command(
    name = "banger-helper",
    version = concat!(env!("CARGO_PKG_VERSION"), " (build ", env!("BANGER_BUILD_ID"), ")"),
    about = "banger's root helper"
)]
struct Args {
    /// The helper's config file.
    #[arg(long, global = true, env = "BANGER_HELPER_CONFIG", default_value = DEFAULT_HELPER_CONFIG)]
    config: PathBuf,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "BANGER_HELPER_LOG", default_value = logging::DEFAULT_LEVEL)]
    log_level: String,
    /// Seconds a started request line may take to arrive in full.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    read_timeout: f64,
    /// Seconds a connection may wait between requests.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    idle_timeout: f64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Delete every bgtap* device, banger's bridge, its nftables table and
    /// iptables chain; turn IPv4 forwarding back off if the helper turned
    /// it on.
    Teardown,
    /// Check the config file and print what it enforces.
    CheckConfig,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "helper failed");
            eprintln!("banger-helper: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // First, before any file is opened: fd 3 may be systemd's socket.
    let inherited = banger_helper::server::take_systemd_listener()?;
    let check_only = matches!(args.command, Some(Command::CheckConfig));
    if !check_only && !banger_helper::running_as_root() {
        anyhow::bail!(
            "banger-helper must run as root (it manages TAP devices, NAT, loop devices); \
             install it with `sudo banger system install`"
        );
    }
    let filter = logging::filter(&args.log_level)?;
    let settings = banger_helper::load(&args.config)?;
    if check_only {
        let info = settings.info();
        let features: Vec<&str> = settings.features.iter().map(|f| f.as_str()).collect();
        println!(
            "config {} is valid: bridge {}, subnet {}, gateway {}, allowed uids {:?}, socket {}, features {:?}",
            args.config.display(),
            info.bridge,
            info.subnet,
            info.gateway,
            settings.allowed_uids,
            settings.socket.display(),
            features
        );
        return Ok(());
    }
    logging::init(settings.log_file.as_deref(), filter)?;
    match args.command {
        Some(Command::Teardown) => {
            let removed = banger_helper::teardown(&settings, &SystemHost::new())?;
            tracing::info!(removed = ?removed, "helper teardown completed");
            for item in removed {
                println!("removed {item}");
            }
            Ok(())
        }
        Some(Command::CheckConfig) | None => {
            let options = ServeOptions {
                read_timeout: seconds(args.read_timeout, "--read-timeout")?,
                idle_timeout: seconds(args.idle_timeout, "--idle-timeout")?,
                ..ServeOptions::default()
            };
            banger_helper::run_until_signalled(settings, options, inherited)?;
            Ok(())
        }
    }
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, got {value}"))
}
