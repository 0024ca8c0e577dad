//! Putting the new binaries in place so that the old ones can come back
//! byte for byte. Each new binary is first copied to a temporary name in
//! the install directory and fsynced ([`Staged::prepare`], while the old
//! daemon still runs); then, with the daemon stopped, each installed file
//! gets a hard link `NAME.old` (the backup: the same inode, so a restore
//! is exact) and the staged copy is renamed over `NAME`
//! ([`Staged::commit`]). A rename never writes into a running binary.
//! [`Swapped::restore`] renames the backups back; [`Swapped::finish`]
//! removes them once the new daemon answers.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::UpdateError;

/// One binary to replace: the new file and where it goes.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    pub new: PathBuf,
    pub installed: PathBuf,
}

/// New binaries copied beside their installed names, not yet in place.
#[derive(Debug)]
pub(super) struct Staged {
    files: Vec<(Planned, PathBuf)>,
}

/// What [`Staged::commit`] replaced; the backups are still there.
#[derive(Debug)]
pub(super) struct Swapped {
    /// Each replaced file and whether there was one before (a backup).
    files: Vec<(Planned, bool)>,
}

/// The backup of an installed binary while an update runs.
pub(super) fn backup_path(installed: &Path) -> PathBuf {
    let mut name = installed.file_name().unwrap_or_default().to_os_string();
    name.push(".old");
    installed.with_file_name(name)
}

/// The temporary name a new binary is staged under.
fn staged_path(installed: &Path) -> PathBuf {
    let name = installed
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    installed.with_file_name(format!(".{name}.update-{}", std::process::id()))
}

impl Staged {
    /// Copies each new binary to a temporary name in its install
    /// directory (mode 0755, fsynced). On failure what was staged is
    /// removed and nothing installed changed.
    pub fn prepare(plan: Vec<Planned>) -> Result<Self, UpdateError> {
        let mut staged = Self { files: Vec::new() };
        for p in plan {
            let tmp = staged_path(&p.installed);
            let copied = (|| -> io::Result<()> {
                let _ = fs::remove_file(&tmp);
                fs::copy(&p.new, &tmp)?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
                fs::File::open(&tmp)?.sync_all()
            })();
            if let Err(source) = copied {
                let _ = fs::remove_file(&tmp);
                staged.discard();
                return Err(UpdateError::Stage {
                    from: p.new,
                    to: tmp,
                    source,
                });
            }
            staged.files.push((p, tmp));
        }
        Ok(staged)
    }

    /// Removes the staged copies (the update stops before any swap).
    pub fn discard(self) {
        for (_, tmp) in &self.files {
            let _ = fs::remove_file(tmp);
        }
    }

    /// Backs up each installed binary as `NAME.old` and renames its new
    /// copy over it. A failure part way puts back what was swapped and
    /// removes the rest of the staged copies.
    pub fn commit(self) -> Result<Swapped, UpdateError> {
        let mut swapped = Swapped { files: Vec::new() };
        let mut rest = self.files.into_iter();
        while let Some((p, tmp)) = rest.next() {
            match swap_one(&p.installed, &tmp) {
                Ok(had_old) => swapped.files.push((p, had_old)),
                Err(source) => {
                    let _ = fs::remove_file(&tmp);
                    for (_, tmp) in rest {
                        let _ = fs::remove_file(tmp);
                    }
                    // What the error reports; the restore's own failure,
                    // if any, is the worse news and wins.
                    let failed = UpdateError::Swap {
                        path: p.installed.clone(),
                        source,
                    };
                    swapped.restore()?;
                    return Err(failed);
                }
            }
        }
        sync_dirs(swapped.files.iter().map(|(p, _)| p.installed.as_path()));
        Ok(swapped)
    }
}

/// Links `installed` to its backup (when it exists) and renames `staged`
/// over it; true when there was an installed file.
fn swap_one(installed: &Path, staged: &Path) -> io::Result<bool> {
    let backup = backup_path(installed);
    // A backup left by an update that was interrupted: the installed
    // file is what counts now.
    match fs::remove_file(&backup) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let had_old = match fs::hard_link(installed, &backup) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if let Err(e) = fs::rename(staged, installed) {
        if had_old {
            let _ = fs::remove_file(&backup);
        }
        return Err(e);
    }
    Ok(had_old)
}

impl Swapped {
    /// The files that were replaced (or added, when none was there).
    pub fn files(&self) -> impl Iterator<Item = (&Planned, bool)> {
        self.files.iter().map(|(p, had)| (p, *had))
    }

    /// Renames each backup back over its new binary (one added where
    /// none was is removed): the installed files are the old ones again,
    /// the very same inodes.
    pub fn restore(self) -> Result<(), UpdateError> {
        let mut first_error = None;
        // The reverse order of the swap.
        for (p, had_old) in self.files.iter().rev() {
            let restored = if *had_old {
                fs::rename(backup_path(&p.installed), &p.installed)
            } else {
                fs::remove_file(&p.installed)
            };
            if let Err(source) = restored {
                tracing::error!(path = %p.installed.display(), error = %source, "restore failed");
                first_error.get_or_insert(UpdateError::Restore {
                    path: p.installed.clone(),
                    backup: backup_path(&p.installed),
                    source,
                });
            }
        }
        sync_dirs(self.files.iter().map(|(p, _)| p.installed.as_path()));
        first_error.map_or(Ok(()), Err)
    }

    /// The new binaries stay: the backups go. One that cannot be removed
    /// is reported and left (it does no harm).
    pub fn finish(self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for (p, had_old) in &self.files {
            if !had_old {
                continue;
            }
            let backup = backup_path(&p.installed);
            if let Err(e) = fs::remove_file(&backup) {
                tracing::warn!(path = %backup.display(), error = %e, "cannot remove a backup");
                left.push(backup);
            }
        }
        left
    }
}

/// Makes the renames in these files' directories durable (best effort:
/// a directory that cannot be synced is logged).
fn sync_dirs<'a>(files: impl Iterator<Item = &'a Path>) {
    let mut dirs: Vec<&Path> = files.filter_map(Path::parent).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path, new_dir: &Path, names: &[&str]) -> Vec<Planned> {
        names
            .iter()
            .map(|n| Planned {
                new: new_dir.join(n),
                installed: dir.join(n),
            })
            .collect()
    }

    #[test]
    fn commit_then_restore_gives_the_old_files_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (bin, new) = (tmp.path().join("bin"), tmp.path().join("new"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&new).unwrap();
        fs::write(bin.join("a"), "old a").unwrap();
        fs::write(new.join("a"), "new a").unwrap();
        fs::write(new.join("b"), "new b").unwrap();
        let staged = Staged::prepare(plan(&bin, &new, &["a", "b"])).unwrap();
        assert_eq!(fs::read_to_string(bin.join("a")).unwrap(), "old a");
        let swapped = staged.commit().unwrap();
        assert_eq!(fs::read_to_string(bin.join("a")).unwrap(), "new a");
        assert_eq!(fs::read_to_string(bin.join("b")).unwrap(), "new b");
        assert_eq!(fs::read_to_string(bin.join("a.old")).unwrap(), "old a");
        swapped.restore().unwrap();
        assert_eq!(fs::read_to_string(bin.join("a")).unwrap(), "old a");
        assert!(!bin.join("b").exists(), "added, so removed again");
        let mut left: Vec<_> = fs::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["a"], "no backup or staged copy left");
    }

    #[test]
    fn finish_keeps_the_new_files_and_drops_the_backups() {
        let tmp = tempfile::tempdir().unwrap();
        let (bin, new) = (tmp.path().join("bin"), tmp.path().join("new"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&new).unwrap();
        fs::write(bin.join("a"), "old a").unwrap();
        fs::write(bin.join("a.old"), "from an interrupted update").unwrap();
        fs::write(new.join("a"), "new a").unwrap();
        let swapped = Staged::prepare(plan(&bin, &new, &["a"]))
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(fs::read_to_string(bin.join("a.old")).unwrap(), "old a");
        assert!(swapped.finish().is_empty());
        assert_eq!(fs::read_to_string(bin.join("a")).unwrap(), "new a");
        assert!(!bin.join("a.old").exists());
        let mode = fs::metadata(bin.join("a")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn a_failed_stage_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (bin, new) = (tmp.path().join("bin"), tmp.path().join("new"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&new).unwrap();
        fs::write(new.join("a"), "new a").unwrap();
        // "b" is missing from the new build.
        let err = Staged::prepare(plan(&bin, &new, &["a", "b"])).unwrap_err();
        assert!(matches!(err, UpdateError::Stage { .. }), "{err:?}");
        assert_eq!(fs::read_dir(&bin).unwrap().count(), 0);
    }
}
