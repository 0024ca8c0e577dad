//! `banger workspace ...` and `--workspace DIR[:GUESTPATH]`.

use std::io::Write as _;

use banger_proto::methods;
use banger_proto::vm::VmRef;
use banger_proto::workspace::{
    ChangeKind, WorkspaceChange, WorkspacePushParams, WorkspaceSpec, WorkspaceView,
};
use base64::Engine as _;

use super::format::{escape_control, human_bytes, terminal_safe};
use super::print_json;
use crate::CliError;
use crate::args::WorkspaceCommand;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};
use crate::output::note;

/// `DIR[:GUESTPATH]` as a spec the daemon takes: DIR made absolute
/// (symlinks resolved; it must be a directory), GUESTPATH as given.
pub(crate) fn parse_spec(arg: &str) -> Result<WorkspaceSpec, CliError> {
    let (dir, guest_path) = match arg.rsplit_once(":/") {
        Some((dir, rest)) if !dir.is_empty() => (dir, Some(format!("/{rest}"))),
        _ => (arg, None),
    };
    let host_dir = std::fs::canonicalize(dir)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| {
            CliError::BadParams(format!("--workspace {dir}: no such directory on the host"))
        })?;
    Ok(WorkspaceSpec {
        host_dir: host_dir.display().to_string(),
        guest_path,
    })
}

fn letter(c: ChangeKind) -> char {
    match c {
        ChangeKind::Added => 'A',
        ChangeKind::Modified => 'M',
        ChangeKind::Deleted => 'D',
    }
}

/// One line per change, `M path`; paths a guest chose are escaped.
fn print_changes(changes: &[WorkspaceChange]) {
    for c in changes {
        println!("{} {}", letter(c.change), escape_control(&c.path, false));
    }
}

pub(crate) fn print_view(w: &WorkspaceView) {
    note!(
        "workspace {} → {}:{} ({} files, {})",
        w.host_dir,
        w.vm,
        w.guest_path,
        w.files,
        human_bytes(w.bytes)
    );
}

pub(crate) fn run(target: &DaemonTarget, cmd: &WorkspaceCommand) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    match cmd {
        WorkspaceCommand::Diff { name, stat, json } => {
            let diff = client.call::<methods::VmWorkspaceDiff>(&VmRef { name: name.clone() })?;
            if *json {
                return print_json(&diff);
            }
            if *stat {
                print_changes(&diff.changes);
                return Ok(());
            }
            let patch = match (&diff.patch, &diff.patch_base64) {
                (Some(p), _) => p.clone().into_bytes(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| CliError::BadResponse(format!("patch_base64: {e}")))?,
                (None, None) => Vec::new(),
            };
            if patch.is_empty() {
                note!("no changes in vm {name}'s workspace");
                return Ok(());
            }
            // The patch as it is into a file or a pipe (`| git apply`);
            // escaped, line by line, on a terminal.
            let mut out = std::io::stdout().lock();
            let text = String::from_utf8_lossy(&patch);
            let written = if std::io::IsTerminal::is_terminal(&out) {
                text.split_inclusive('\n')
                    .try_for_each(|l| out.write_all(terminal_safe(l).as_bytes()))
            } else {
                out.write_all(&patch)
            };
            written.and_then(|()| out.flush()).map_err(CliError::Io)
        }
        WorkspaceCommand::Apply(a) => {
            let applied = client.call::<methods::VmWorkspaceApply>(&VmRef {
                name: a.name.clone(),
            })?;
            if a.json {
                return print_json(&applied);
            }
            if applied.changes.is_empty() {
                note!("no changes in vm {}'s workspace", a.name);
                return Ok(());
            }
            note!(
                "applied {} change(s) from vm {} to {}",
                applied.changes.len(),
                a.name,
                applied.host_dir
            );
            print_changes(&applied.changes);
            Ok(())
        }
        WorkspaceCommand::Sync(a) => {
            let synced = client.call::<methods::VmWorkspaceSync>(&VmRef {
                name: a.name.clone(),
            })?;
            if a.json {
                return print_json(&synced);
            }
            if synced.changes.is_empty() {
                note!("nothing changed on the host since the workspace was put in");
                return Ok(());
            }
            note!(
                "pushed {} change(s) into vm {}:{}",
                synced.changes.len(),
                a.name,
                synced.guest_path
            );
            print_changes(&synced.changes);
            Ok(())
        }
        WorkspaceCommand::Push { name, dir, json } => {
            let spec = parse_spec(dir)?;
            let view = client.call::<methods::VmWorkspacePush>(&WorkspacePushParams {
                name: name.clone(),
                host_dir: spec.host_dir,
                guest_path: spec.guest_path,
            })?;
            if *json {
                return print_json(&view);
            }
            print_view(&view);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    #[test]
    fn a_spec_is_a_directory_and_an_optional_guest_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let s = parse_spec(tmp.path().to_str().unwrap()).unwrap();
        assert_eq!(s.host_dir, dir.display().to_string());
        assert_eq!(s.guest_path, None);
        let s = parse_spec(&format!("{}:/srv/app", tmp.path().display())).unwrap();
        assert_eq!(s.host_dir, dir.display().to_string());
        assert_eq!(s.guest_path.as_deref(), Some("/srv/app"));
        let e = parse_spec("/no/such/dir").unwrap_err().to_string();
        assert!(e.contains("no such directory"), "{e}");
    }
}
