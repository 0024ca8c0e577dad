//! Guest RAM files of a VM's own (docs/snapshots.md, "Guest RAM").
//!
//! A VM that boots cold, or continues from a snapshot as a VM of its own
//! (`vm create --from-snapshot`, `vm restore`, a fork's source), runs with
//! its RAM in a file of its own in shared memory (`/dev/shm`), mapped
//! shared. A snapshot of it then saves the device state alone (QEMU skips
//! shared RAM with `x-ignore-shared`) and copies the file's pages: no RAM
//! stream, no helper VMM, and the VM runs on in its QEMU.
//!
//! VMs restored from a template or forked map the frozen RAM file of the
//! snapshot privately instead (copy-on-write, its pages shared with every
//! other VM made from it); a snapshot of one of those must stream all of
//! its RAM (`take.rs`), and a fork converts it to a file of its own.
//!
//! The files live in `/dev/shm/banger-UID-ram-HASH/VM_ID.mem`, HASH naming
//! the daemon's data directory, so that daemons of different data
//! directories (tests, a second instance) never collect each other's;
//! `BANGER_RAM_DIR` puts them elsewhere. The directory goes when the
//! daemon exits with no VM running.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// How a VM restored from a snapshot holds its RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoredRam {
    /// A copy of the snapshot's RAM file of its own, mapped shared (one
    /// sparse copy, ~60 ms per 130 MB here): later snapshots and forks of
    /// it save device state only.
    Own,
    /// The snapshot's RAM file mapped privately (copy-on-write, pages
    /// shared with every VM made from it): the cheapest start.
    MapSnapshot,
}

/// Where a daemon keeps its VMs' RAM files, if the host has `/dev/shm`.
#[derive(Debug, Clone)]
pub struct RamFiles {
    root: Option<PathBuf>,
}

impl RamFiles {
    /// `/dev/shm/banger-UID-ram-HASH` for `data_dir`, or none without
    /// `/dev/shm` (VMs then run on anonymous memory, and every snapshot
    /// streams RAM).
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Self::under(Path::new("/dev/shm"), data_dir)
    }

    /// RAM files in `dir` (made when first needed), which should be on a
    /// memory-backed filesystem (tmpfs, hugetlbfs): guest writes land in
    /// it.
    pub fn at(dir: &Path) -> Self {
        Self {
            root: Some(dir.to_path_buf()),
        }
    }

    /// Removes the directory if no RAM file is left in it (daemon exit).
    pub fn remove_dir_if_empty(&self) {
        if let Some(root) = &self.root {
            // Fails, as it should, while a file is there.
            let _ = std::fs::remove_dir(root);
        }
    }

    fn under(shm: &Path, data_dir: &Path) -> Self {
        if !shm.is_dir() {
            return Self { root: None };
        }
        let uid = rustix::process::getuid().as_raw();
        let name = format!("banger-{uid}-ram-{:016x}", fnv1a(data_dir));
        Self {
            root: Some(shm.join(name)),
        }
    }

    /// A fresh path for `vm_id`'s RAM file (its directory made, whatever
    /// an earlier run of the VM left there removed); `None` when there is
    /// no shared memory to put it in.
    pub fn prepare(&self, vm_id: &str) -> Option<PathBuf> {
        let root = self.root.as_ref()?;
        if let Err(e) = make_private_dir(root) {
            tracing::warn!(dir = %root.display(), error = %e, "no RAM files: the vm runs on anonymous memory");
            return None;
        }
        let path = root.join(format!("{vm_id}.mem"));
        remove_file(&path);
        Some(path)
    }

    /// Removes a RAM file this service handed out (the VM's VMM is gone).
    pub fn remove(&self, path: &Path) {
        if self.owns(path) {
            remove_file(path);
        }
    }

    /// Removes every RAM file whose VM is not in `running` (ids): what a
    /// crash left behind.
    pub fn remove_unused(&self, running: &HashSet<String>) {
        let Some(root) = &self.root else { return };
        let Ok(entries) = std::fs::read_dir(root) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".mem").unwrap_or(&name);
            if !running.contains(id) {
                tracing::warn!(file = %e.path().display(), "removing the RAM file of a vm that does not run");
                remove_file(&e.path());
            }
        }
    }

    fn owns(&self, path: &Path) -> bool {
        self.root
            .as_ref()
            .is_some_and(|root| path.parent() == Some(root.as_path()))
    }
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::symlink_metadata(dir)?;
            // /dev/shm is world-writable: only a directory of ours, not
            // one (or a link) another user put there first.
            if !meta.is_dir() || meta.uid() != rustix::process::getuid().as_raw() {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory of this user",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), error = %e, "could not remove");
        }
    }
}

/// FNV-1a over the path's bytes: a directory name that must stay the same
/// across builds of banger (std's hasher makes no such promise), for two
/// lines of code.
fn fnv1a(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_per_data_dir_and_collected_when_unused() {
        let shm = tempfile::tempdir().unwrap();
        let a = RamFiles::under(shm.path(), Path::new("/data/a"));
        let b = RamFiles::under(shm.path(), Path::new("/data/b"));
        let pa = a.prepare("vm1").unwrap();
        let pa2 = a.prepare("vm2").unwrap();
        let pb = b.prepare("vm1").unwrap();
        assert_ne!(pa.parent(), pb.parent());
        for p in [&pa, &pa2, &pb] {
            std::fs::write(p, b"ram").unwrap();
        }
        a.remove_unused(&HashSet::from(["vm2".to_owned()]));
        assert!(!pa.exists() && pa2.exists() && pb.exists());
        // Not a file of a's: left alone.
        a.remove(&pb);
        assert!(pb.exists());
        b.remove(&pb);
        assert!(!pb.exists());
        // prepare() gives a fresh path: an old file is gone.
        let again = a.prepare("vm2").unwrap();
        assert_eq!(again, pa2);
        assert!(!pa2.exists());
    }

    #[test]
    fn no_shared_memory_means_no_files() {
        let r = RamFiles::under(Path::new("/nonexistent-shm"), Path::new("/data"));
        assert!(r.prepare("vm").is_none());
    }

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(fnv1a(Path::new("")), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(Path::new("a")), 0xaf63_dc4c_8601_ec8c);
    }
}
