//! Per-VM disks (docs/vms.md, "Disks"): a copy-on-write view of the image's root disk
//! and a work disk cloned from the image's seed.
//!
//! Root disk strategies for QEMU, best first: a qcow2 overlay backed by the
//! image (constant cost whatever the image size), a reflink clone (btrfs,
//! XFS), and a sparse copy as the last resort, with a warning. A VMM that
//! takes only raw disks (Firecracker) gets a reflink clone, else a
//! device-mapper snapshot made through the helper at each start ([`dm`]),
//! else the copy. The work disk is a reflink-or-sparse copy of the small
//! seed, grown with `resize2fs`.

pub mod dm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What `e` (or one of its causes) says about a full filesystem
/// (`ENOSPC`, also as a tool's words on its stderr): the first line that
/// says so, for an error message that should not carry all of a tool's
/// output (`tar` says it once per file).
pub fn no_space(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    const WORDS: &str = "No space left on device";
    let enospc = rustix::io::Errno::NOSPC.raw_os_error();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let io_full = err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(enospc));
        let text = err.to_string();
        if let Some(line) = text.lines().find(|l| l.contains(WORDS)) {
            // "COMMAND failed (exit status 2): tool: file: No space left
            // on device": the tool's own words, without the command.
            let line = line
                .find(" failed")
                .and_then(|at| line[at..].split_once(": "))
                .map_or(line, |(_, rest)| rest);
            return Some(line.trim().to_owned());
        }
        if io_full {
            return Some(text);
        }
        cur = err.source();
    }
    None
}

/// What is free to the user on the filesystem holding `path` (or its
/// nearest existing ancestor), for error messages: "12 MiB", "256 KiB".
pub fn free_space(path: &Path) -> String {
    let free = path
        .ancestors()
        .find(|p| p.exists())
        .and_then(|p| rustix::fs::statvfs(p).ok())
        .map(|st| st.f_bavail.saturating_mul(st.f_frsize));
    match free {
        Some(b) if b >= 1 << 20 => format!("{} MiB", b >> 20),
        Some(b) => format!("{} KiB", b >> 10),
        None => "unknown".to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what} failed: {stderr}")]
    Command { what: String, stderr: String },
    #[error("run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "disk size {requested} is smaller than the work disk's current {current} bytes; disks only grow"
    )]
    Shrink { requested: u64, current: u64 },
}

/// How a VM's root disk was made; recorded on the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootStrategy {
    Qcow2,
    Reflink,
    /// A device-mapper snapshot of the image over loop devices, made at
    /// each start ([`dm::attach`]); the VM dir keeps only its
    /// copy-on-write store.
    DmSnapshot,
    Copy,
}

impl RootStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Reflink => "reflink",
            Self::DmSnapshot => "dm-snapshot",
            Self::Copy => "copy",
        }
    }

    /// The strategy a VM record names, if this backend makes it.
    pub fn from_disk_strategy(s: banger_proto::DiskStrategy) -> Option<Self> {
        use banger_proto::DiskStrategy as D;
        match s {
            D::Qcow2 => Some(Self::Qcow2),
            D::Reflink => Some(Self::Reflink),
            D::Copy => Some(Self::Copy),
            D::DmSnapshot => Some(Self::DmSnapshot),
        }
    }

    /// What the VM record stores.
    pub fn disk_strategy(self) -> banger_proto::DiskStrategy {
        use banger_proto::DiskStrategy as D;
        match self {
            Self::Qcow2 => D::Qcow2,
            Self::Reflink => D::Reflink,
            Self::DmSnapshot => D::DmSnapshot,
            Self::Copy => D::Copy,
        }
    }

    /// The root disk's file name in the VM dir; for a device-mapper
    /// snapshot, its copy-on-write store (the device itself is made at
    /// each start).
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Qcow2 => "root.qcow2",
            Self::Reflink | Self::Copy => "root.ext4",
            Self::DmSnapshot => dm::COW_FILE,
        }
    }
}

/// Picks the root strategy for a QEMU VM: qcow2 when `qemu-img` exists,
/// else reflink when `dir`'s filesystem supports it, else a copy.
pub fn choose_root_strategy(dir: &Path) -> RootStrategy {
    if which("qemu-img") {
        RootStrategy::Qcow2
    } else if reflink_supported(dir) {
        RootStrategy::Reflink
    } else {
        RootStrategy::Copy
    }
}

/// Picks the root strategy for a VMM that takes only raw disks
/// (Firecracker): reflink when `dir`'s filesystem supports it, else a
/// device-mapper snapshot when the caller found it usable through the
/// helper ([`dm::available`]), else a copy (which warns).
pub fn choose_raw_root_strategy(dir: &Path, dm_available: bool) -> RootStrategy {
    if reflink_supported(dir) {
        RootStrategy::Reflink
    } else if dm_available {
        RootStrategy::DmSnapshot
    } else {
        RootStrategy::Copy
    }
}

/// Makes the VM's root disk from the image's rootfs; returns its path.
/// For [`RootStrategy::DmSnapshot`] that is the empty copy-on-write store
/// ([`dm::make_cow_file`]); the device comes at start ([`dm::attach`]).
pub fn make_root_disk(
    strategy: RootStrategy,
    image_rootfs: &Path,
    vm_dir: &Path,
) -> Result<PathBuf, DiskError> {
    let dest = vm_dir.join(strategy.file_name());
    match strategy {
        RootStrategy::Qcow2 => {
            let backing = image_rootfs
                .canonicalize()
                .map_err(|source| DiskError::Io {
                    path: image_rootfs.to_owned(),
                    source,
                })?;
            run(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                    .arg(&backing)
                    .arg(&dest),
                "qemu-img create",
            )?;
        }
        RootStrategy::Reflink => {
            run(
                Command::new("cp")
                    .arg("--reflink=always")
                    .arg(image_rootfs)
                    .arg(&dest),
                "reflink copy",
            )?;
        }
        RootStrategy::DmSnapshot => {
            let image_bytes = std::fs::metadata(image_rootfs)
                .map_err(|source| DiskError::Io {
                    path: image_rootfs.to_owned(),
                    source,
                })?
                .len();
            return dm::make_cow_file(vm_dir, image_bytes);
        }
        RootStrategy::Copy => {
            tracing::warn!(
                image = %image_rootfs.display(),
                "no copy-on-write strategy available: making a full sparse copy of the root disk"
            );
            run(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(image_rootfs)
                    .arg(&dest),
                "sparse copy",
            )?;
        }
    }
    Ok(dest)
}

/// Clones the image's work seed into `dest` and grows it to `size_bytes`.
pub fn make_work_disk(seed: &Path, dest: &Path, size_bytes: u64) -> Result<(), DiskError> {
    run(
        Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(seed)
            .arg(dest),
        "copy work seed",
    )?;
    grow_work_disk(dest, size_bytes)
}

/// Grows an ext4 work disk file to `size_bytes` (never shrinks).
pub fn grow_work_disk(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let current = std::fs::metadata(path)
        .map_err(|source| DiskError::Io {
            path: path.to_owned(),
            source,
        })?
        .len();
    if size_bytes < current {
        return Err(DiskError::Shrink {
            requested: size_bytes,
            current,
        });
    }
    if size_bytes == current {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| DiskError::Io {
            path: path.to_owned(),
            source,
        })?;
    file.set_len(size_bytes).map_err(|source| DiskError::Io {
        path: path.to_owned(),
        source,
    })?;
    drop(file);
    // resize2fs insists on a freshly checked filesystem.
    let fsck = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DiskError::Spawn {
            program: "e2fsck".into(),
            source,
        })?;
    // Exit codes 0 and 1 mean clean, or fixed.
    if fsck.status.code().is_none_or(|c| c > 1) {
        return Err(DiskError::Command {
            what: "e2fsck".into(),
            stderr: String::from_utf8_lossy(&fsck.stderr).trim().to_owned(),
        });
    }
    run(Command::new("resize2fs").arg("-f").arg(path), "resize2fs")
}

/// True when `qemu-img` is on `PATH`: qcow2 layers (and so snapshots) need it.
pub fn has_qemu_img() -> bool {
    which("qemu-img")
}

/// Copies a disk layer (or a RAM file) to `dest`, sharing blocks where
/// the filesystem can (reflink) and keeping holes.
pub fn copy_layer(src: &Path, dest: &Path) -> Result<(), DiskError> {
    run(
        Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(src)
            .arg(dest),
        "copy disk layer",
    )
}

/// Writes the disk `src` (a qcow2 chain when `qcow2`, else raw) to `dest`
/// as one raw, sparse file: `qemu-img convert` for a chain, a copy
/// (reflinked where the filesystem can) for a raw disk.
pub fn flatten_disk(src: &Path, qcow2: bool, dest: &Path) -> Result<(), DiskError> {
    if !qcow2 {
        return copy_layer(src, dest);
    }
    run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(src)
            .arg(dest),
        "qemu-img convert",
    )
}

/// Makes `dest` a qcow2 layer over `backing` (by absolute path).
pub fn make_overlay(
    backing: &Path,
    backing_format: banger_vmm::DiskFormat,
    dest: &Path,
) -> Result<(), DiskError> {
    let backing = backing.canonicalize().map_err(|source| DiskError::Io {
        path: backing.to_owned(),
        source,
    })?;
    run(
        Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                backing_format.as_str(),
                "-b",
            ])
            .arg(&backing)
            .arg(dest),
        "qemu-img create",
    )
}

/// True when `cp --reflink=always` works inside `dir`.
pub fn reflink_supported(dir: &Path) -> bool {
    let probe = dir.join(".reflink-probe");
    let copy = dir.join(".reflink-probe-copy");
    let ok = std::fs::write(&probe, b"banger").is_ok()
        && Command::new("cp")
            .arg("--reflink=always")
            .arg(&probe)
            .arg(&copy)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&probe);
    let _ = std::fs::remove_file(&copy);
    ok
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), DiskError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DiskError::Spawn {
            program: what.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiskError::Command {
            what: what.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod raw_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_filesystem_is_told_by_one_line() {
        let tar = DiskError::Command {
            what: "tar -xpf base.tar failed (exit status 2)".into(),
            stderr: "tar: ./a: Cannot write: No space left on device\ntar: ./b: Cannot write: No space left on device".into(),
        };
        assert_eq!(
            no_space(&tar).as_deref(),
            Some("tar: ./a: Cannot write: No space left on device")
        );
        let resize = DiskError::Command {
            what: "resize2fs".into(),
            stderr: "resize2fs 1.47.0 (5-Feb-2023)\nresize2fs: No space left on device while trying to resize w.ext4\nPlease run e2fsck".into(),
        };
        assert_eq!(
            no_space(&resize).as_deref(),
            Some("resize2fs: No space left on device while trying to resize w.ext4")
        );
        let io = DiskError::Io {
            path: "/d/work.ext4".into(),
            source: std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
        };
        assert!(no_space(&io).unwrap().contains("No space left on device"));
        let other = DiskError::Command {
            what: "cp".into(),
            stderr: "cp: permission denied".into(),
        };
        assert_eq!(no_space(&other), None);
    }

    fn mkfs(path: &Path, size: &str) {
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(path)
            .arg(size)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    #[test]
    fn qcow2_overlay_is_small_and_backed_by_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("rootfs.ext4");
        mkfs(&image, "64M");
        let disk = make_root_disk(RootStrategy::Qcow2, &image, tmp.path()).unwrap();
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&disk)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(
            v["backing-filename"],
            image.canonicalize().unwrap().display().to_string()
        );
        assert!(std::fs::metadata(&disk).unwrap().len() < 1024 * 1024);
    }

    #[test]
    fn work_disk_grows_and_refuses_to_shrink() {
        let tmp = tempfile::tempdir().unwrap();
        let seed = tmp.path().join("seed.ext4");
        mkfs(&seed, "16M");
        let work = tmp.path().join("work.ext4");
        make_work_disk(&seed, &work, 256 * 1024 * 1024).unwrap();
        assert_eq!(std::fs::metadata(&work).unwrap().len(), 256 * 1024 * 1024);
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&work)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        assert_eq!(
            field("Block count:") * field("Block size:"),
            256 * 1024 * 1024,
            "filesystem fills the disk"
        );
        let err = grow_work_disk(&work, 1024).unwrap_err();
        assert!(matches!(err, DiskError::Shrink { .. }));
    }
}
