//! `banger update`: replaces the installed binaries with a new build and
//! restarts the daemon, so that upgrading is one command that either
//! finishes or leaves the old installation running (docs/update.md).
//!
//! "Installed" means the four binaries beside the running `banger`
//! (where scripts/quickstart.sh puts them and where the CLI finds
//! `bangerd`). The steps, in order:
//!
//! 1. the new binaries run and say their version; banger, bangerd and
//!    banger-helper are of one build ([`binaries`]);
//! 2. no operation is in flight (the daemon's `op.list`);
//! 3. the new files are staged beside the old ones, the daemon is
//!    stopped (`daemon.shutdown` with `if_idle`: it refuses if an
//!    operation began since step 2, and begins none after), each old
//!    file is kept as `NAME.old` and the new one is renamed over it
//!    ([`swap`]); the new daemon is started and must answer `ping` with
//!    the new build id;
//! 4. if it does not, the backups are renamed back and the old daemon
//!    started again, and update fails saying so;
//! 5. an installed root helper is updated through `banger system
//!    install` (run here when root, else printed);
//! 6. images the new build would make differently (a new agent) are
//!    listed: they are stale, and rebuilt at their next create.
//!
//! Running VMs are not touched: their VMM processes live in sessions of
//! their own, and the new daemon adopts them as any daemon start does.

mod binaries;
mod swap;

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_paths::Layout;
use banger_proto::helper::HelperConfig;
use banger_proto::methods::{self, NoParams};
use banger_proto::{ErrorCode, OpState};
use serde::Serialize;

use self::swap::{Planned, Staged};
use super::print_json;
use crate::args::UpdateArgs;
use crate::client::Client;
use crate::daemon_ctl::{self, DaemonTarget, IdleStop};
use crate::daemon_unit::{self, UNIT_NAME};
use crate::output::note;
use crate::{BuildInfo, CliError, Exit};

/// How to get past operations in flight.
const OPS_IN_FLIGHT_HINT: &str = "wait for them (banger ops) or cancel them \
     (banger rpc op.cancel '{\"op_id\":\"ID\"}'), then update again";

/// Why `banger update` stopped; each message names its cause once (the
/// source, if any, is printed after it by the caller's chain).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot locate the running banger")]
    CurrentExe(#[source] io::Error),
    #[error("{dir} is where banger is installed already; give the directory of another build")]
    SameDir { dir: PathBuf },
    #[error("{dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("{dir} is not a banger checkout (no {missing})")]
    NotACheckout { dir: PathBuf, missing: &'static str },
    #[error("building {dir} failed: {why}")]
    Build { dir: PathBuf, why: String },
    #[error("the new build has no {name} (looked at {looked})")]
    Missing { name: &'static str, looked: String },
    #[error("the new {binary} does not run: `--version` failed: {why}")]
    VersionFailed { binary: PathBuf, why: String },
    #[error("the new {binary} is not {name}: its `--version` said {said:?}")]
    NotVersion {
        binary: PathBuf,
        name: &'static str,
        said: String,
    },
    #[error(
        "the new {binary} does not say its build id (it said {said:?}); it is too old for update"
    )]
    NoBuildId { binary: PathBuf, said: String },
    #[error("the binaries in {dir} are of different builds: banger {banger}, {other} {theirs}")]
    MixedBuilds {
        dir: PathBuf,
        banger: String,
        other: &'static str,
        theirs: String,
    },
    #[error("{count} operation(s) in flight: {list}; {OPS_IN_FLIGHT_HINT}")]
    OpsInFlight { count: usize, list: String },
    /// The daemon refused to stop: operations began after the check.
    #[error("bangerd did not stop: {0}; {OPS_IN_FLIGHT_HINT}")]
    BusyAtStop(String),
    #[error("copy {from} to {to}")]
    Stage {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("replace {path} (the files replaced before it were put back)")]
    Swap {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("put the old {path} back from {backup}")]
    Restore {
        path: PathBuf,
        backup: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the new bangerd answered as build {got}, not {expected}")]
    WrongBuild { expected: String, got: String },
    #[error(
        "update rolled back: the old binaries are back in {dir} and the old bangerd \
         answers (pid {pid}, build {build_id}); the new one failed"
    )]
    RolledBack {
        dir: PathBuf,
        pid: u32,
        build_id: String,
        #[source]
        cause: Box<CliError>,
    },
    #[error(
        "update rolled back: the old binaries are back in {dir}, but the old bangerd did \
         not start either ({old}); the new one failed"
    )]
    OldDaemonFailed {
        dir: PathBuf,
        old: String,
        #[source]
        cause: Box<CliError>,
    },
    #[error(
        "the new bangerd failed, and putting the old binaries back failed too; \
         the backups are NAME.old in {dir}: {restore}"
    )]
    RestoreFailed {
        dir: PathBuf,
        restore: String,
        #[source]
        cause: Box<CliError>,
    },
    #[error(
        "banger and bangerd are updated, but `banger system install` for the new \
         banger-helper failed ({status}); run `{command}`"
    )]
    HelperInstall { status: String, command: String },
}

impl UpdateError {
    pub(crate) fn exit(&self) -> Exit {
        match self {
            Self::SameDir { .. }
            | Self::NotADirectory { .. }
            | Self::NotACheckout { .. }
            | Self::Missing { .. }
            | Self::VersionFailed { .. }
            | Self::NotVersion { .. }
            | Self::NoBuildId { .. }
            | Self::MixedBuilds { .. } => Exit::BadInput,
            Self::OpsInFlight { .. } | Self::BusyAtStop(_) => Exit::Conflict,
            Self::Stage { source, .. }
            | Self::Swap { source, .. }
            | Self::Restore { source, .. }
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                Exit::PermissionDenied
            }
            _ => Exit::Failed,
        }
    }
}

/// `--json`: what update did.
#[derive(Debug, Serialize)]
struct UpdateSummary {
    /// Where the binaries were replaced: the running banger's directory.
    install_dir: PathBuf,
    /// Where the new binaries came from.
    from: PathBuf,
    dry_run: bool,
    /// Nothing to do: the installed files are the new ones.
    up_to_date: bool,
    /// This banger's build, the one replaced.
    old_build_id: String,
    new_build_id: String,
    new_version: String,
    files: Vec<FileUpdate>,
    /// The daemon restart; none in a dry run or when up to date.
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon: Option<DaemonRestart>,
    /// Images the new build would make differently (rebuilt at their
    /// next create).
    stale_images: Vec<StaleImage>,
    helper: HelperUpdate,
}

#[derive(Debug, Serialize)]
struct FileUpdate {
    name: &'static str,
    path: PathBuf,
    from: PathBuf,
    /// The new file differs from the installed one (or there was none).
    replaced: bool,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    build_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct DaemonRestart {
    /// The daemon stopped for the swap, if one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    old_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_build_id: Option<String>,
    pid: u32,
    build_id: String,
}

#[derive(Debug, Serialize)]
struct StaleImage {
    name: String,
    reason: String,
}

/// What became of the root helper.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum HelperUpdate {
    /// No helper config: no root helper to update.
    NotInstalled { config: PathBuf },
    /// Root ran update: `banger system install` ran for the new helper.
    Reinstalled { command: String },
    /// Someone must run this as root.
    InstallNeeded { command: String },
    /// A dry run: nothing done.
    Unchanged,
}

pub(crate) fn update(
    layout: &Layout,
    args: &UpdateArgs,
    build: BuildInfo,
    explicit_bangerd: Option<&Path>,
) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(UpdateError::CurrentExe)?;
    let install_dir = exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let installed_bangerd = install_dir.join("bangerd");
    if let Some(explicit) = explicit_bangerd {
        if !same_path(explicit, &installed_bangerd) {
            note!(
                "warning: BANGER_DAEMON_BIN (or --bangerd) names {}, but update replaces {}; \
                 the next command that starts a daemon starts {0}",
                explicit.display(),
                installed_bangerd.display()
            );
        }
    }

    // 1. The new build, checked.
    let (from_dir, agent) = match (&args.from, &args.source) {
        (Some(dir), _) => (dir.clone(), None),
        (None, Some(checkout)) => {
            note!("building {} (release) ...", checkout.display());
            let (release, agent) = binaries::build_source(checkout)?;
            (release, Some(agent))
        }
        // clap requires one of the two.
        (None, None) => {
            return Err(CliError::BadParams(
                "give --from DIR or --source DIR".into(),
            ));
        }
    };
    if !from_dir.is_dir() {
        return Err(UpdateError::NotADirectory { dir: from_dir }.into());
    }
    if same_path(&from_dir, &install_dir) {
        return Err(UpdateError::SameDir { dir: install_dir }.into());
    }
    let found = binaries::locate(&from_dir, agent)?;
    let new = binaries::check(&from_dir, found)?;
    for b in &new.binaries {
        note!(
            "checked {}: {} {}{}",
            b.path.display(),
            b.name,
            b.reported.version,
            b.reported
                .build_id
                .as_ref()
                .map(|id| format!(" (build {id})"))
                .unwrap_or_default()
        );
    }
    let mut summary = UpdateSummary {
        install_dir: install_dir.clone(),
        from: from_dir.clone(),
        dry_run: args.dry_run,
        up_to_date: false,
        old_build_id: build.build_id.to_owned(),
        new_build_id: new.build_id.clone(),
        new_version: new.version.clone(),
        files: Vec::new(),
        daemon: None,
        stale_images: Vec::new(),
        helper: HelperUpdate::Unchanged,
    };
    let mut plan = Vec::new();
    for b in &new.binaries {
        let installed = install_dir.join(b.name);
        let replaced = !same_contents(&b.path, &installed);
        summary.files.push(FileUpdate {
            name: b.name,
            path: installed.clone(),
            from: b.path.clone(),
            replaced,
            version: b.reported.version.clone(),
            build_id: b.reported.build_id.clone(),
        });
        if replaced {
            plan.push(Planned {
                new: b.path.clone(),
                installed,
            });
        }
    }
    if plan.is_empty() {
        summary.up_to_date = true;
        note!(
            "{} already holds build {}: nothing to do",
            install_dir.display(),
            new.build_id
        );
        return finish(args, summary);
    }

    // 2. Nothing in flight.
    let mut running = daemon_ctl::connect_running(layout)?;
    if let Some((client, _)) = &mut running {
        refuse_ops_in_flight(client)?;
    }
    if args.dry_run {
        for p in &plan {
            note!(
                "would replace {} with {}",
                p.installed.display(),
                p.new.display()
            );
        }
        match &running {
            Some((_, ping)) => note!(
                "would restart bangerd (pid {}, build {}) as build {}",
                ping.pid,
                ping.build_id,
                new.build_id
            ),
            None => note!("would start bangerd of build {}", new.build_id),
        }
        return finish(args, summary);
    }

    // 3. Stage, stop, swap, start.
    let staged = Staged::prepare(plan)?;
    let old_daemon = running.as_ref().map(|(_, ping)| ping.clone());
    if let Some((client, ping)) = running {
        // An operation begun since the check above would be cut short:
        // the daemon stops only if idle, refusing new operations from then.
        if let Err(e) = stop_if_idle(client, ping.pid) {
            staged.discard();
            return Err(e);
        }
        note!(
            "stopped bangerd (pid {}, build {}); VMs keep running",
            ping.pid,
            ping.build_id
        );
    }
    let swapped = match staged.commit() {
        Ok(s) => s,
        Err(e) => {
            // Nothing replaced is left: the old daemon comes back.
            if old_daemon.is_some() {
                if let Err(restart) = start_daemon(layout, &installed_bangerd, build) {
                    note!(
                        "warning: the old bangerd did not start again: {}",
                        restart.display_chain()
                    );
                }
            }
            return Err(e.into());
        }
    };
    for (p, had_old) in swapped.files() {
        let kept = if had_old {
            format!(
                " (the old one kept as {} until the new daemon answers)",
                swap::backup_path(&p.installed).display()
            )
        } else {
            String::new()
        };
        note!("replaced {}{kept}", p.installed.display());
    }
    let target = DaemonTarget {
        layout: layout.clone(),
        bangerd: installed_bangerd.clone(),
        build,
    };
    let started = daemon_ctl::start(&target).and_then(|(client, ping)| {
        if ping.build_id == new.build_id {
            return Ok((client, ping));
        }
        let wrong = UpdateError::WrongBuild {
            expected: new.build_id.clone(),
            got: ping.build_id.clone(),
        };
        let _ = daemon_ctl::stop(client, ping.pid);
        Err(wrong.into())
    });
    let (mut client, ping) = match started {
        Ok(connected) => connected,
        Err(cause) => return Err(roll_back(&target, swapped, cause, build).into()),
    };
    note!(
        "bangerd of build {} answers (pid {})",
        ping.build_id,
        ping.pid
    );
    for left in swapped.finish() {
        note!("warning: could not remove the backup {}", left.display());
    }
    summary.daemon = Some(DaemonRestart {
        old_pid: old_daemon.as_ref().map(|p| p.pid),
        old_build_id: old_daemon.map(|p| p.build_id),
        pid: ping.pid,
        build_id: ping.build_id,
    });

    // 6 (before 5, whose failure is an error): stale images.
    match client.call::<methods::ImageList>(&NoParams) {
        Ok(images) => {
            for i in images
                .into_iter()
                .filter(|i| i.stale && i.replaced_by.is_none())
            {
                let reason = i.stale_reason.unwrap_or_default();
                note!(
                    "image {} is stale ({reason}): the next `vm create --image {0}` rebuilds it; \
                     to rebuild it now: banger image delete {0} && banger image build --name {0} \
                     (with its --packages, --preset or --service)",
                    i.name
                );
                summary.stale_images.push(StaleImage {
                    name: i.name,
                    reason,
                });
            }
        }
        Err(e) => note!(
            "warning: cannot list images for staleness: {}",
            e.display_chain()
        ),
    }

    // 5. The root helper.
    summary.helper = update_helper(&args.helper_config, &install_dir)?;
    note!(
        "updated {} to banger {} (build {}, was {})",
        install_dir.display(),
        new.version,
        new.build_id,
        build.build_id
    );
    finish(args, summary)
}

/// Prints the summary with `--json` (progress went to stderr).
fn finish(args: &UpdateArgs, summary: UpdateSummary) -> Result<(), CliError> {
    if args.json {
        print_json(&summary)?;
    }
    Ok(())
}

/// Fails naming each running operation (kind, target, op id).
fn refuse_ops_in_flight(client: &mut Client) -> Result<(), CliError> {
    let ops = client.call::<methods::OpList>(&NoParams)?;
    let running: Vec<String> = ops
        .iter()
        .filter(|o| o.state == OpState::Running)
        .map(|o| format!("{} {} ({})", o.kind, o.target, o.op_id))
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    Err(UpdateError::OpsInFlight {
        count: running.len(),
        list: running.join(", "),
    }
    .into())
}

/// Stops the daemon only if no operation is running or starting (one
/// step in the daemon); a daemon of a build before that is checked with
/// `op.list` and stopped, which leaves a short window.
fn stop_if_idle(client: Client, pid: u32) -> Result<(), CliError> {
    match daemon_ctl::stop_if_idle(client, pid) {
        Ok(IdleStop::Stopped) => Ok(()),
        Ok(IdleStop::Unsupported(mut client)) => {
            refuse_ops_in_flight(&mut client)?;
            daemon_ctl::stop(client, pid)
        }
        Err(CliError::Daemon(body)) if body.code == ErrorCode::Conflict => {
            Err(UpdateError::BusyAtStop(body.message).into())
        }
        Err(e) => Err(e),
    }
}

fn start_daemon(
    layout: &Layout,
    bangerd: &Path,
    build: BuildInfo,
) -> Result<(Client, banger_proto::daemon::PingResult), CliError> {
    daemon_ctl::start(&DaemonTarget {
        layout: layout.clone(),
        bangerd: bangerd.to_path_buf(),
        build,
    })
}

/// The new daemon failed (`cause`): stop whatever answers now, put the
/// old binaries back and start the old daemon.
fn roll_back(
    target: &DaemonTarget,
    swapped: swap::Swapped,
    cause: CliError,
    build: BuildInfo,
) -> UpdateError {
    let dir = target
        .bangerd
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    note!(
        "the new bangerd failed: {}; putting the old binaries back",
        cause.display_chain()
    );
    // A unit systemd restarts on failure would keep starting the new
    // binary until the old one is back: stop it first.
    if daemon_unit::installed_for(&target.layout, &target.bangerd) {
        if let Err(e) = daemon_unit::systemctl_user(&["stop", UNIT_NAME]) {
            tracing::warn!(error = %banger_proto::error_chain(&e), "cannot stop {UNIT_NAME}");
        }
    }
    if let Ok(Some((client, ping))) = daemon_ctl::connect_running(&target.layout) {
        let _ = daemon_ctl::stop(client, ping.pid);
    }
    let cause = Box::new(cause);
    if let Err(e) = swapped.restore() {
        return UpdateError::RestoreFailed {
            dir,
            restore: banger_proto::error_chain(&e),
            cause,
        };
    }
    match start_daemon(&target.layout, &target.bangerd, build) {
        Ok((_, ping)) => {
            note!(
                "restored the old binaries; the old bangerd answers (pid {}, build {})",
                ping.pid,
                ping.build_id
            );
            UpdateError::RolledBack {
                dir,
                pid: ping.pid,
                build_id: ping.build_id,
                cause,
            }
        }
        Err(old) => UpdateError::OldDaemonFailed {
            dir,
            old: old.display_chain(),
            cause,
        },
    }
}

/// Step 5: with a helper config, the root helper runs an old
/// banger-helper until `banger system install` replaces it. As root that
/// is run here (the new banger, into this install's prefix, for the
/// user the config allows); otherwise it is printed.
fn update_helper(config: &Path, install_dir: &Path) -> Result<HelperUpdate, CliError> {
    if !config.exists() {
        return Ok(HelperUpdate::NotInstalled {
            config: config.to_path_buf(),
        });
    }
    let banger = install_dir.join("banger");
    let prefix = install_dir
        .file_name()
        .is_some_and(|n| n == "bin")
        .then(|| install_dir.parent().map(Path::to_path_buf))
        .flatten();
    let mut command_line = format!("sudo {} system install", banger.display());
    let mut args: Vec<String> = vec!["system".into(), "install".into()];
    if let Some(prefix) = &prefix {
        args.extend(["--prefix".into(), prefix.display().to_string()]);
        command_line.push_str(&format!(" --prefix {}", prefix.display()));
    }
    args.extend(["--config".into(), config.display().to_string()]);
    command_line.push_str(&format!(" --config {}", config.display()));
    // The user the helper serves now, unless sudo says who (install's
    // own default).
    let allowed = helper_user(config);
    if let Some(uid) = allowed {
        args.extend(["--user".into(), uid.to_string()]);
        command_line.push_str(&format!(" --user {uid}"));
    }
    let is_root = rustix::process::geteuid().is_root();
    if !is_root || prefix.is_none() {
        note!(
            "banger-helper, the root helper, still runs the old binary; update it with:\n  {command_line}"
        );
        return Ok(HelperUpdate::InstallNeeded {
            command: command_line,
        });
    }
    note!("running {}", command_line.trim_start_matches("sudo "));
    // Its progress goes where ours does: stderr (stdout may carry JSON).
    let stderr = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(CliError::Io)?;
    let status = Command::new(&banger)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status();
    match status {
        Ok(s) if s.success() => Ok(HelperUpdate::Reinstalled {
            command: command_line.trim_start_matches("sudo ").to_owned(),
        }),
        Ok(s) => Err(UpdateError::HelperInstall {
            status: s.to_string(),
            command: command_line,
        }
        .into()),
        Err(e) => Err(UpdateError::HelperInstall {
            status: format!("cannot run it: {e}"),
            command: command_line,
        }
        .into()),
    }
}

/// The one uid a helper config allows, if it allows exactly one.
fn helper_user(config: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(config).ok()?;
    let parsed: HelperConfig = serde_json::from_str(&text).ok()?;
    match parsed.allowed_uids.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// The same file, after resolving symlinks (false when either is missing).
fn same_path(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The two files have the same bytes (false when either cannot be read).
fn same_contents(a: &Path, b: &Path) -> bool {
    let (Ok(mut x), Ok(mut y)) = (File::open(a), File::open(b)) else {
        return false;
    };
    match (x.metadata(), y.metadata()) {
        (Ok(mx), Ok(my)) if mx.len() == my.len() => {}
        _ => return false,
    }
    let mut bx = vec![0u8; 1 << 16];
    let mut by = vec![0u8; 1 << 16];
    loop {
        let n = match x.read(&mut bx) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return true;
        }
        if y.read_exact(&mut by[..n]).is_err() || bx[..n] != by[..n] {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_contents_compares_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, vec![7u8; 200_000]).unwrap();
        std::fs::write(&b, vec![7u8; 200_000]).unwrap();
        let mut other = vec![7u8; 200_000];
        other[150_000] = 8;
        std::fs::write(&c, other).unwrap();
        assert!(same_contents(&a, &b));
        assert!(!same_contents(&a, &c));
        assert!(!same_contents(&a, &dir.path().join("missing")));
    }
}
