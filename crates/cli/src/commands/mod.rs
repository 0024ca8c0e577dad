//! One function per command; each connects, calls and prints.

mod artifacts;
mod config;
mod daemon;
mod events;
mod follow;
pub(crate) mod format;
mod guest;
mod rpc;
mod snapshot;
mod system;
mod tail;
mod update;
mod vm;
mod workspace;

use banger_paths::Layout;

pub use update::UpdateError;

use crate::args::{Command, DaemonCommand};
use crate::daemon_ctl::{DaemonTarget, find_bangerd};
use crate::{BuildInfo, Cli, CliError};

pub(crate) fn run(cli: Cli, build: BuildInfo) -> Result<(), CliError> {
    // Before the layout: `system` runs as root, whose HOME may be unset.
    if let Command::System(c) = &cli.command {
        return system::run(c);
    }
    // Generated from the arguments alone: no home, no daemon.
    if let Command::Completions(a) = &cli.command {
        crate::reference::completions(a.shell, &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Man(a) = &cli.command {
        return daemon::man(&a.dir);
    }
    let layout = Layout::from_env()?;
    // Resolved lazily: `daemon status`, `daemon logs`, `daemon stop` and
    // `ssh-config` never start bangerd.
    let target = || -> Result<DaemonTarget, CliError> {
        Ok(DaemonTarget {
            layout: layout.clone(),
            bangerd: find_bangerd(cli.bangerd.clone())?,
            build,
        })
    };
    match &cli.command {
        Command::Ping(a) => daemon::ping(&target()?, a.json),
        Command::Daemon(DaemonCommand::Status(a)) => daemon::status(&layout, build, a.json),
        Command::Daemon(DaemonCommand::Stop(a)) => daemon::stop(&layout, a.json),
        Command::Daemon(DaemonCommand::Logs(a)) => daemon::logs(&layout, a),
        Command::Daemon(DaemonCommand::Install(a)) => daemon::install_unit(&target()?, a.json),
        Command::Daemon(DaemonCommand::Uninstall(a)) => daemon::uninstall_unit(&layout, a.json),
        Command::Rpc(a) => rpc::run(&target()?, a),
        Command::Mcp => crate::mcp::serve(target()?),
        Command::Workspace(c) => workspace::run(&target()?, c),
        Command::Vm(c) => vm::run(&target()?, c),
        Command::Image(c) => artifacts::image(&target()?, c),
        Command::Kernel(c) => artifacts::kernel(&target()?, c),
        Command::Snapshot(c) => snapshot::run(&target()?, c),
        Command::Ops(a) => artifacts::ops(&target()?, a.json),
        Command::Events(a) => events::run(&target()?, a),
        Command::Tui => crate::tui::run(&target()?),
        Command::Doctor(a) => artifacts::doctor(&target()?, a),
        Command::SshConfig(a) => artifacts::ssh_config(&layout, a.json),
        Command::Network(a) => artifacts::network(&target()?, a.json),
        Command::System(c) => system::run(c),
        Command::Update(a) => update::update(&layout, a, build, cli.bangerd.as_deref()),
        Command::Config(crate::args::ConfigCommand::Show(a)) => config::show(&layout, a.json),
        // Answered above, before the layout.
        Command::Completions(_) | Command::Man(_) => Ok(()),
    }
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::BadResponse(format!("encode output: {e}")))?;
    println!("{text}");
    Ok(())
}
