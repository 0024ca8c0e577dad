//! Workspaces (docs/agents.md, "Workspaces"): a host project put into a
//! running guest, the guest's changes against it as a git patch, that
//! patch applied to the host only over files unchanged there, and the
//! host's later changes pushed in only over files unchanged in the guest.
//!
//! Which files make a project, the base and the patches are
//! `banger_workspace`'s (git's own diff and apply); this service keeps a
//! VM's workspace beside the VM (`DATA/vms/ID/workspace.json` and the
//! private git directory `workspace.git`, both gone with the VM) and
//! moves files through the guest agent: one tar stream of the file set
//! in (`Guest::push_files`), the guest's whole copy pulled back, unpacked
//! as untrusted, to diff it (`Guest::pull_dir`).
//!
//! One workspace operation per VM at a time (a lock per VM id, taken
//! before anything else and held across the guest calls).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use banger_proto::workspace::{
    ChangeKind, DEFAULT_GUEST_PATH, WorkspaceApplied, WorkspaceChange, WorkspaceDiff,
    WorkspacePushParams, WorkspaceSpec, WorkspaceSynced, WorkspaceView,
};
use banger_store::VmRecord;
use banger_workspace::Base;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::vms::KeyedLocks;
use crate::vms::guest::{Guest, GuestError};

/// Files removed in the guest per `rm` command (a sync's deletions).
const RM_BATCH: usize = 200;

/// The largest patch `vm.workspace.diff` returns: a guest chooses how
/// large its changes are, and an answer is held whole. `apply` takes any
/// size (git reads the patch from a file).
pub const MAX_PATCH_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Store(#[from] banger_store::StoreError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("workspace directory {0:?} must be an absolute host path")]
    HostNotAbsolute(String),
    #[error("workspace guest path {0:?} must be absolute, below /, without . or ..")]
    BadGuestPath(String),
    #[error("workspace {0} is not a directory on the host")]
    HostNotDirectory(PathBuf),
    #[error("a workspace needs the vm started (it goes in through the guest agent)")]
    NeedsStart,
    #[error(
        "vm {vm} already has a workspace (from {host_dir}); push the host's changes with: banger workspace sync {vm}"
    )]
    AlreadyHas { vm: String, host_dir: String },
    #[error("vm {vm} has no workspace (give one with: banger vm create --workspace DIR)")]
    NoWorkspace { vm: String },
    /// The guest's patch touches files that changed on the host.
    #[error("vm {vm}: workspace {host_dir}")]
    HostChanged {
        vm: String,
        host_dir: String,
        #[source]
        source: Box<banger_workspace::WorkspaceError>,
    },
    #[error(
        "vm {vm}: changed in the guest too since they were put in (nothing pushed; apply or discard the guest's changes first): {}",
        .paths.join(", ")
    )]
    GuestChanged { vm: String, paths: Vec<String> },
    #[error("vm {vm}: workspace {host_dir}")]
    Project {
        vm: String,
        host_dir: String,
        #[source]
        source: Box<banger_workspace::WorkspaceError>,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {vm}: the workspace record {path} is unreadable")]
    BadRecord {
        vm: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("workspace task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error(
        "vm {vm}: the guest's changes make a patch of {bytes} bytes, more than the {max} a diff returns \
         (see them with banger vm exec {vm} -- git -C GUESTPATH status, or apply them with banger workspace apply {vm})",
        max = MAX_PATCH_BYTES
    )]
    PatchTooLarge { vm: String, bytes: u64 },
}

/// What `workspace.json` keeps of a VM's workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    host_dir: PathBuf,
    guest_path: String,
    files: u64,
    bytes: u64,
    base: String,
}

/// A checked workspace spec: an absolute host directory and a clean
/// absolute guest path.
#[derive(Debug, Clone)]
pub struct Checked {
    host_dir: PathBuf,
    guest_path: String,
}

impl Checked {
    /// `HOST → GUEST`, for a stage's name.
    pub fn describe(&self) -> String {
        format!("{} → {}", self.host_dir.display(), self.guest_path)
    }
}

/// Checks what a create or push was given; the host directory must
/// exist. Nothing is made.
pub fn check(spec: &WorkspaceSpec) -> Result<Checked, WorkspaceError> {
    let host_dir = PathBuf::from(&spec.host_dir);
    if !host_dir.is_absolute() {
        return Err(WorkspaceError::HostNotAbsolute(spec.host_dir.clone()));
    }
    if !host_dir.is_dir() {
        return Err(WorkspaceError::HostNotDirectory(host_dir));
    }
    let guest_path = spec
        .guest_path
        .clone()
        .unwrap_or_else(|| DEFAULT_GUEST_PATH.to_owned());
    // Written out in full: `/a/b`, no empty, `.` or `..` part.
    let clean = guest_path.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'))
    });
    if !clean {
        return Err(WorkspaceError::BadGuestPath(guest_path));
    }
    Ok(Checked {
        host_dir,
        guest_path,
    })
}

#[derive(Debug)]
pub struct Workspaces {
    db: Db,
    guest: Arc<Guest>,
    /// `DATA/vms`, as in `vms::vm_dir`.
    vm_root: PathBuf,
    locks: KeyedLocks,
}

fn change(c: &banger_workspace::Change) -> WorkspaceChange {
    WorkspaceChange {
        path: c.path.clone(),
        change: match c.kind {
            banger_workspace::ChangeKind::Added => ChangeKind::Added,
            banger_workspace::ChangeKind::Modified => ChangeKind::Modified,
            banger_workspace::ChangeKind::Deleted => ChangeKind::Deleted,
        },
    }
}

/// Runs blocking work (git, the file walk) off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, WorkspaceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(WorkspaceError::Task)?
}

/// Removes a directory tree, as nothing else may hold it; gone is fine.
fn remove_tree(path: &Path) -> Result<(), WorkspaceError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(WorkspaceError::Io {
            what: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

impl Workspaces {
    pub fn new(db: Db, guest: Arc<Guest>, data_dir: &Path) -> Self {
        Self {
            db,
            guest,
            vm_root: data_dir.join("vms"),
            locks: KeyedLocks::default(),
        }
    }

    fn dir(&self, vm: &VmRecord) -> PathBuf {
        self.vm_root.join(&vm.id)
    }

    fn record_path(&self, vm: &VmRecord) -> PathBuf {
        self.dir(vm).join("workspace.json")
    }

    fn git_dir(&self, vm: &VmRecord) -> PathBuf {
        self.dir(vm).join("workspace.git")
    }

    /// Where a diff's patch is written while it is read or applied.
    fn patch_file(&self, vm: &VmRecord) -> PathBuf {
        self.dir(vm).join("workspace.patch")
    }

    async fn find(&self, name: &str) -> Result<VmRecord, WorkspaceError> {
        let name = name.to_owned();
        Ok(self.db.call(move |s| s.vm(&name)).await?)
    }

    fn load(&self, vm: &VmRecord) -> Result<Option<Record>, WorkspaceError> {
        let path = self.record_path(vm);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                WorkspaceError::BadRecord {
                    vm: vm.name.clone(),
                    path,
                    source,
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(WorkspaceError::Io {
                what: "read",
                path,
                source,
            }),
        }
    }

    fn need(&self, vm: &VmRecord) -> Result<Record, WorkspaceError> {
        self.load(vm)?.ok_or_else(|| WorkspaceError::NoWorkspace {
            vm: vm.name.clone(),
        })
    }

    /// Writes the record whole or not at all (a temporary file renamed).
    fn save(&self, vm: &VmRecord, record: &Record) -> Result<(), WorkspaceError> {
        let path = self.record_path(vm);
        let tmp = path.with_extension("json.tmp");
        let io = |what, source| WorkspaceError::Io {
            what,
            path: path.clone(),
            source,
        };
        // Serialising a struct of strings and numbers cannot fail.
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        std::fs::write(&tmp, bytes).map_err(|e| io("write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))
    }

    fn view(vm: &VmRecord, r: &Record) -> WorkspaceView {
        WorkspaceView {
            vm: vm.name.clone(),
            host_dir: r.host_dir.display().to_string(),
            guest_path: r.guest_path.clone(),
            files: r.files,
            bytes: r.bytes,
            base: r.base.clone(),
        }
    }

    /// Names the VM and project on an error of `banger_workspace`.
    fn project_error(
        vm: &VmRecord,
        host_dir: &Path,
    ) -> impl Fn(banger_workspace::WorkspaceError) -> WorkspaceError + Clone + Send + Sync + use<>
    {
        let (vm, host_dir) = (vm.name.clone(), host_dir.display().to_string());
        move |source| match source {
            banger_workspace::WorkspaceError::HostChanged(_) => WorkspaceError::HostChanged {
                vm: vm.clone(),
                host_dir: host_dir.clone(),
                source: Box::new(source),
            },
            banger_workspace::WorkspaceError::NotADirectory(p) => {
                WorkspaceError::HostNotDirectory(p)
            }
            source => WorkspaceError::Project {
                vm: vm.clone(),
                host_dir: host_dir.clone(),
                source: Box::new(source),
            },
        }
    }

    /// `vm.workspace.push`: the project into a running VM without one.
    pub async fn push_params(
        &self,
        p: WorkspacePushParams,
    ) -> Result<WorkspaceView, WorkspaceError> {
        let checked = check(&WorkspaceSpec {
            host_dir: p.host_dir,
            guest_path: p.guest_path,
        })?;
        self.push(&p.name, checked).await
    }

    /// Puts the project `ws` into the running VM `name` (name or id),
    /// which has no workspace yet, and records what was put in.
    pub async fn push(&self, name: &str, ws: Checked) -> Result<WorkspaceView, WorkspaceError> {
        let vm = self.find(name).await?;
        let _lock = self.locks.lock(&vm.id).await;
        if let Some(r) = self.load(&vm)? {
            return Err(WorkspaceError::AlreadyHas {
                vm: vm.name,
                host_dir: r.host_dir.display().to_string(),
            });
        }
        let git_dir = self.git_dir(&vm);
        let host = ws.host_dir.clone();
        let on_project = Self::project_error(&vm, &ws.host_dir);
        let on = on_project.clone();
        let (files, bytes) = blocking(move || {
            let files = banger_workspace::file_set(&host).map_err(&on)?;
            let bytes = files
                .iter()
                .filter_map(|f| std::fs::symlink_metadata(host.join(f)).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum::<u64>();
            Ok((files, bytes))
        })
        .await?;
        let count = files.len() as u64;
        tracing::info!(vm = %vm.name, files = count, bytes, guest = %ws.guest_path, "workspace push");
        // The base is recorded while the files stream into the guest:
        // git hashes and stores them on another core as the guest unpacks.
        let (host, dir, listed) = (ws.host_dir.clone(), git_dir.clone(), files.clone());
        let recording = blocking(move || {
            // A push that failed before its record was saved may have
            // left a git directory: start again.
            remove_tree(&dir)?;
            let (_, commit) = Base::record(&dir, &host, &listed).map_err(&on_project)?;
            Ok(commit)
        });
        let sending = self
            .guest
            .push_files(&vm.id, &ws.host_dir, files, &ws.guest_path);
        let (recorded, sent) = tokio::join!(recording, sending);
        let base = match sent.map_err(WorkspaceError::from).and(recorded) {
            Ok(base) => base,
            Err(e) => {
                let _ = blocking(move || remove_tree(&git_dir)).await;
                return Err(e);
            }
        };
        let record = Record {
            host_dir: ws.host_dir,
            guest_path: ws.guest_path,
            files: count,
            bytes,
            base,
        };
        self.save(&vm, &record)?;
        Ok(Self::view(&vm, &record))
    }

    /// Pulls the guest's copy of the workspace into a scratch directory
    /// beside the VM and hands it to `then` (blocking work); the copy is
    /// removed afterwards whatever happened.
    async fn with_guest_copy<T: Send + 'static>(
        &self,
        vm: &VmRecord,
        record: &Record,
        then: impl FnOnce(&Path) -> Result<T, WorkspaceError> + Send + 'static,
    ) -> Result<T, WorkspaceError> {
        let scratch = self.dir(vm).join("workspace-pull");
        let s = scratch.clone();
        blocking(move || remove_tree(&s)).await?;
        let pulled = self
            .guest
            .pull_dir(&vm.id, &record.guest_path, &scratch)
            .await;
        let s = scratch.clone();
        let done = match pulled {
            Ok(_) => blocking(move || then(&s)).await,
            Err(e) => Err(e.into()),
        };
        blocking(move || remove_tree(&scratch)).await?;
        done
    }

    /// `vm.workspace.diff`: the guest's changes against the base.
    pub async fn diff(&self, name: &str) -> Result<WorkspaceDiff, WorkspaceError> {
        let vm = self.find(name).await?;
        let _lock = self.locks.lock(&vm.id).await;
        let record = self.need(&vm)?;
        let base = Base::at(&self.git_dir(&vm));
        let on_project = Self::project_error(&vm, &record.host_dir);
        let patch_file = self.patch_file(&vm);
        let vm_name = vm.name.clone();
        let (diff, patch) = self
            .with_guest_copy(&vm, &record, move |pulled| {
                let diff = base.diff(pulled, &patch_file).map_err(on_project);
                let patch = diff.as_ref().ok().map(|d| {
                    if d.patch_bytes > MAX_PATCH_BYTES {
                        return Err(WorkspaceError::PatchTooLarge {
                            vm: vm_name,
                            bytes: d.patch_bytes,
                        });
                    }
                    std::fs::read(&patch_file).map_err(|source| WorkspaceError::Io {
                        what: "read",
                        path: patch_file.clone(),
                        source,
                    })
                });
                let _ = std::fs::remove_file(&patch_file);
                Ok((diff?, patch.transpose()?.unwrap_or_default()))
            })
            .await?;
        let (patch, patch_base64) = match String::from_utf8(patch) {
            Ok(p) if p.is_empty() => (None, None),
            Ok(p) => (Some(p), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
            ),
        };
        Ok(WorkspaceDiff {
            vm: vm.name,
            host_dir: record.host_dir.display().to_string(),
            changes: diff.changes.iter().map(change).collect(),
            patch,
            patch_base64,
        })
    }

    /// `vm.workspace.apply`: the guest's changes onto the host project,
    /// refused (nothing changed) when a file they touch changed there.
    pub async fn apply(&self, name: &str) -> Result<WorkspaceApplied, WorkspaceError> {
        let vm = self.find(name).await?;
        let _lock = self.locks.lock(&vm.id).await;
        let record = self.need(&vm)?;
        let base = Base::at(&self.git_dir(&vm));
        let on_project = Self::project_error(&vm, &record.host_dir);
        let host = record.host_dir.clone();
        let patch_file = self.patch_file(&vm);
        let (changes, head) = self
            .with_guest_copy(&vm, &record, move |pulled| {
                let applied = base
                    .diff(pulled, &patch_file)
                    .and_then(|diff| {
                        base.apply(&host, &patch_file)?;
                        Ok((diff.changes, base.head()?))
                    })
                    .map_err(&on_project);
                let _ = std::fs::remove_file(&patch_file);
                applied
            })
            .await?;
        let mut record = record;
        record.base = head;
        self.save(&vm, &record)?;
        tracing::info!(vm = %vm.name, files = changes.len(), "workspace applied on the host");
        Ok(WorkspaceApplied {
            vm: vm.name,
            host_dir: record.host_dir.display().to_string(),
            changes: changes.iter().map(change).collect(),
        })
    }

    /// `vm.workspace.sync`: the host's changes since the base into the
    /// guest, refused (nothing pushed) when the guest changed one of the
    /// same files.
    pub async fn sync(&self, name: &str) -> Result<WorkspaceSynced, WorkspaceError> {
        let vm = self.find(name).await?;
        let _lock = self.locks.lock(&vm.id).await;
        let mut record = self.need(&vm)?;
        let base = Base::at(&self.git_dir(&vm));
        let on_project = Self::project_error(&vm, &record.host_dir);
        let (b, host, on) = (base.clone(), record.host_dir.clone(), on_project.clone());
        let host_changes = blocking(move || b.changes(&host).map_err(on)).await?;
        if host_changes.is_empty() {
            return Ok(WorkspaceSynced {
                vm: vm.name,
                guest_path: record.guest_path,
                changes: Vec::new(),
            });
        }
        let b = base.clone();
        let on = on_project.clone();
        let guest_changes = self
            .with_guest_copy(&vm, &record, move |pulled| b.changes(pulled).map_err(on))
            .await?;
        let both: Vec<String> = host_changes
            .iter()
            .filter(|h| guest_changes.iter().any(|g| g.path == h.path))
            .map(|h| h.path.clone())
            .collect();
        if !both.is_empty() {
            return Err(WorkspaceError::GuestChanged {
                vm: vm.name,
                paths: both,
            });
        }
        let (removed, sent): (Vec<_>, Vec<_>) = host_changes
            .iter()
            .partition(|c| c.kind == banger_workspace::ChangeKind::Deleted);
        if !sent.is_empty() {
            let files = sent.iter().map(|c| PathBuf::from(&c.path)).collect();
            self.guest
                .push_files(&vm.id, &record.host_dir, files, &record.guest_path)
                .await?;
        }
        for batch in removed.chunks(RM_BATCH) {
            let mut argv = vec!["rm".to_owned(), "-f".to_owned(), "--".to_owned()];
            argv.extend(
                batch
                    .iter()
                    .map(|c| format!("{}/{}", record.guest_path, c.path)),
            );
            self.guest
                .run_checked(&vm.id, argv, Duration::from_secs(60))
                .await?;
        }
        let paths: Vec<String> = host_changes.iter().map(|c| c.path.clone()).collect();
        let host = record.host_dir.clone();
        record.base = blocking(move || base.advance(&host, &paths).map_err(on_project)).await?;
        self.save(&vm, &record)?;
        tracing::info!(vm = %vm.name, files = host_changes.len(), "workspace synced into the guest");
        Ok(WorkspaceSynced {
            vm: vm.name,
            guest_path: record.guest_path,
            changes: host_changes.iter().map(change).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn spec(host: &str, guest: Option<&str>) -> WorkspaceSpec {
        WorkspaceSpec {
            host_dir: host.to_owned(),
            guest_path: guest.map(str::to_owned),
        }
    }

    #[test]
    fn a_spec_is_an_absolute_host_directory_and_a_clean_guest_path() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().to_str().unwrap();
        let ok = check(&spec(host, None)).unwrap();
        assert_eq!(ok.guest_path, DEFAULT_GUEST_PATH);
        assert_eq!(
            check(&spec(host, Some("/srv/app"))).unwrap().guest_path,
            "/srv/app"
        );
        assert!(matches!(
            check(&spec("relative/dir", None)),
            Err(WorkspaceError::HostNotAbsolute(_))
        ));
        assert!(matches!(
            check(&spec("/no/such/dir", None)),
            Err(WorkspaceError::HostNotDirectory(_))
        ));
        for bad in ["/", "work", "/root/../etc", "/root/./work", "/root/work/"] {
            assert!(
                matches!(
                    check(&spec(host, Some(bad))),
                    Err(WorkspaceError::BadGuestPath(_))
                ),
                "{bad}"
            );
        }
    }
}
