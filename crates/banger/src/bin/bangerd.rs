//! `bangerd`, the daemon. Parses arguments, sets up JSON logging to the
//! log file and runs `banger_daemon` until a signal or `daemon.shutdown`.
//! Usually started by `banger` itself; running it by hand works too.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use banger_daemon::config::AccelChoice;
use banger_daemon::{DaemonConfig, logging};
use banger_paths::Layout;
use clap::Parser;

#[derive(Debug, Parser)]
// `bangerd --version`: the version and the build id (crates/banger/build.rs),
// which `banger update` reads to know which daemon it is installing.
#[command(
    name = "bangerd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (build ", env!("BANGER_BUILD_ID"), ")"),
    about = "The banger daemon"
)]
struct Args {
    /// Log level or filter (error, warn, info, debug, trace; default: the
    /// config file's log_level, else info).
    #[arg(long, env = "BANGER_LOG")]
    log_level: Option<String>,
    /// Seconds a started request line may take to arrive in full.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    read_timeout: f64,
    /// Seconds a connection may stay idle before it is closed.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    idle_timeout: f64,
    /// Accelerator for guests: auto (probe KVM once), kvm or tcg (default:
    /// the config file's accel, else auto).
    #[arg(long, env = "BANGER_ACCEL")]
    accel: Option<String>,
    /// Where banger-helper listens (bridged networking needs it).
    #[arg(long, env = "BANGER_HELPER_SOCKET", value_name = "PATH")]
    helper_socket: Option<std::path::PathBuf>,
    /// Idle TAP devices kept ready for bridged VMs (0: make one per start;
    /// default: the config file's tap_pool, else 4).
    #[arg(long, env = "BANGER_TAP_POOL")]
    tap_pool: Option<usize>,
    /// The statically linked guest agent to bake into images
    /// (default: found next to bangerd, or in cargo's static build dir).
    #[arg(long, env = "BANGER_AGENT_BIN", value_name = "PATH")]
    agent_bin: Option<std::path::PathBuf>,
    /// The Firecracker binary (default: `firecracker` on PATH, if any).
    #[arg(long, env = "BANGER_FIRECRACKER_BIN", value_name = "PATH")]
    firecracker: Option<std::path::PathBuf>,
    /// Seconds between stats samples of running VMs' guest agents.
    #[arg(
        long,
        env = "BANGER_STATS_INTERVAL",
        default_value_t = 10.0,
        value_name = "SECONDS"
    )]
    stats_interval: f64,
    /// Warm templates: `auto` makes an image's template after its first
    /// cold create and restores from it; `off` always boots cold.
    #[arg(long, env = "BANGER_TEMPLATES", default_value = "auto", value_parser = ["auto", "off"])]
    templates: String,
    /// Where VMs keep guest RAM files of their own, on a memory-backed
    /// filesystem (default: a directory of this data directory's in
    /// /dev/shm).
    #[arg(long, env = "BANGER_RAM_DIR", value_name = "DIR")]
    ram_dir: Option<std::path::PathBuf>,
    /// Size past which a running VM's console.log is rotated into
    /// console.log.1, like 8M (default: the config file's
    /// console_log_max, else 8M).
    #[arg(long, env = "BANGER_CONSOLE_LOG_MAX", value_name = "SIZE")]
    console_log_max: Option<String>,
    /// Free space a copy from a guest leaves on the host, like 1G; 0: none
    /// (default: the config file's cp_reserve, else 1G).
    #[arg(long, env = "BANGER_CP_RESERVE", value_name = "SIZE")]
    cp_reserve: Option<String>,
    /// Seconds an event subscriber (`events.subscribe`) may leave a line
    /// unread before its stream is ended.
    #[arg(
        long,
        env = "BANGER_EVENT_STALL",
        default_value_t = 5.0,
        value_name = "SECONDS"
    )]
    event_stall: f64,
    /// Events kept for subscribers that resume, and how far behind a live
    /// subscriber may fall before its stream ends as lagged.
    #[arg(
        long,
        env = "BANGER_EVENT_CAPACITY",
        default_value_t = banger_daemon::events::DEFAULT_CAPACITY,
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000)
    )]
    event_capacity: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "daemon failed");
            eprintln!("bangerd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let layout = Layout::from_env()?;
    // The user's config.toml: a flag or environment variable wins over it
    // (crates/config/src/lib.rs).
    let config_file = banger_config::config_path(&layout.config_dir);
    let file = banger_config::ConfigFile::load(&config_file)?;
    let log_level = args
        .log_level
        .or_else(|| file.log_level.as_ref().map(|l| l.value.clone()))
        .unwrap_or_else(|| logging::DEFAULT_LEVEL.to_owned());
    let filter = logging::filter(&log_level)?;
    logging::init(&layout.log_file(), filter)?;
    let mut config = DaemonConfig::new(layout, env!("CARGO_PKG_VERSION"), env!("BANGER_BUILD_ID"));
    config.read_timeout = seconds(args.read_timeout, "--read-timeout")?;
    config.idle_timeout = seconds(args.idle_timeout, "--idle-timeout")?;
    let accel = args
        .accel
        .or_else(|| file.accel.as_ref().map(|a| a.value.as_str().to_owned()))
        .unwrap_or_else(|| banger_config::DEFAULT_ACCEL.to_owned());
    config.accel = AccelChoice::parse(&accel)
        .with_context(|| format!("--accel must be auto, kvm or tcg, got {accel:?}"))?;
    if let Some(socket) = args.helper_socket {
        config.helper_socket = socket;
    }
    config.tap_pool = args
        .tap_pool
        .or_else(|| file.tap_pool.as_ref().map(|t| t.value))
        .unwrap_or(banger_config::DEFAULT_TAP_POOL);
    config.console_log_max = match args.console_log_max {
        Some(text) => banger_config::parse_daemon_size(&text)
            .filter(|n| *n >= banger_config::MIN_CONSOLE_LOG_MAX)
            .with_context(|| {
                format!("--console-log-max must be a size of at least 64K, got {text:?}")
            })?,
        None => file
            .console_log_max
            .as_ref()
            .map_or(banger_config::DEFAULT_CONSOLE_LOG_MAX, |v| v.value.0),
    };
    config.cp_reserve = match args.cp_reserve {
        Some(text) => banger_config::parse_daemon_size(&text)
            .with_context(|| format!("--cp-reserve must be a size like 1G, or 0, got {text:?}"))?,
        None => file
            .cp_reserve
            .as_ref()
            .map_or(banger_config::DEFAULT_CP_RESERVE, |v| v.value.0),
    };
    config.config_file = Some(config_file);
    config.agent_bin = args.agent_bin;
    config.firecracker_bin = args.firecracker;
    config.stats_interval = seconds(args.stats_interval, "--stats-interval")?;
    config.templates = args.templates == "auto";
    config.ram_dir = args.ram_dir;
    config.event_stall = seconds(args.event_stall, "--event-stall")?;
    config.event_capacity = args.event_capacity;
    banger_daemon::run_until_signalled(config)?;
    Ok(())
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, got {value}"))
}
