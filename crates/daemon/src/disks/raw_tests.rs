//! Root disks for a raw-only VMM on real filesystems: reflink clones on a
//! btrfs and an XFS made in a sparse file and loop-mounted (as root), the
//! sparse copy on the temp dir's filesystem and on tmpfs.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Bytes written at the start and at the end of each test image.
const DATA_PER_END: u64 = 16 * MIB;

/// `tool`'s path on PATH or in the sbin directories (mkfs.* live there).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A filesystem made in a sparse file, on a loop device, mounted; all of
/// it undone on drop, so a failed assertion leaves no mount or loop device.
struct LoopMount {
    _dir: tempfile::TempDir,
    mountpoint: PathBuf,
    device: Option<String>,
    mounted: bool,
}

impl LoopMount {
    /// `None` (after printing why) when the test cannot run here.
    fn make(test: &str, mkfs: &str, mkfs_args: &[&str]) -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping {test}: needs root (losetup, mount)");
            return None;
        }
        let Some(mkfs) = find_tool(mkfs) else {
            eprintln!("skipping {test}: {mkfs} is not installed (scripts/deps.sh installs it)");
            return None;
        };
        if !Path::new("/dev/loop-control").exists() || find_tool("losetup").is_none() {
            eprintln!("skipping {test}: no loop devices (/dev/loop-control, losetup)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("banger-rawdisk-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(512 * MIB)
            .unwrap();
        run_ok(Command::new(mkfs).args(mkfs_args).arg(&image));
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let mut me = Self {
            _dir: dir,
            mountpoint,
            device: None,
            mounted: false,
        };
        let device = run_ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&image),
        );
        me.device = Some(device.trim().to_owned());
        run_ok(Command::new("mount").arg(device.trim()).arg(&me.mountpoint));
        me.mounted = true;
        Some(me)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mountpoint)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount")
                    .arg("--lazy")
                    .arg(&self.mountpoint)
                    .status();
            }
        }
        if let Some(device) = &self.device {
            let _ = Command::new("losetup").args(["--detach", device]).status();
        }
    }
}

/// Pseudo-random bytes (xorshift), so no filesystem can compress or
/// deduplicate them away.
fn noise(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sparse image of `size` bytes with [`DATA_PER_END`] of data at its
/// start and at its end.
fn sparse_image(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    f.write_all(&noise(DATA_PER_END, size)).unwrap();
    f.seek(SeekFrom::Start(size - DATA_PER_END)).unwrap();
    f.write_all(&noise(DATA_PER_END, size + 1)).unwrap();
    f.sync_all().unwrap();
}

fn same_data(a: &Path, b: &Path, size: u64) {
    for at in [0, size - DATA_PER_END] {
        let read = |p: &Path| {
            let mut f = std::fs::File::open(p).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            let mut buf = vec![0; DATA_PER_END as usize];
            f.read_exact(&mut buf).unwrap();
            buf
        };
        assert!(read(a) == read(b), "{} differs at {at}", b.display());
    }
    assert_eq!(std::fs::metadata(b).unwrap().len(), size);
}

/// Used bytes of the filesystem holding `dir`, after committing it.
fn used(dir: &Path) -> u64 {
    run_ok(Command::new("sync").arg("-f").arg(dir));
    let st = rustix::fs::statvfs(dir).unwrap();
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// Every extent of `file` (FIEMAP, through `filefrag -v`), with its flags.
fn extents(file: &Path) -> Vec<String> {
    let Some(filefrag) = find_tool("filefrag") else {
        return Vec::new();
    };
    let out = run_ok(Command::new(filefrag).arg("-v").arg(file));
    // Extent lines start with their index: "   0:  0.. 4095: ...".
    out.lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
        .collect()
}

/// The chooser picks reflink on `fs`, and a reflink root disk of a 1 GiB
/// and of a 16 GiB image costs the same: a few blocks of metadata, its
/// extents shared with the image.
fn reflink_costs_the_same_whatever_the_size(fs: &LoopMount, what: &str) {
    let root = &fs.mountpoint;
    assert_eq!(
        choose_raw_root_strategy(root, false),
        RootStrategy::Reflink,
        "{what}"
    );
    assert_eq!(
        choose_raw_root_strategy(root, true),
        RootStrategy::Reflink,
        "{what}: reflink before dm"
    );
    for size in [GIB, 16 * GIB] {
        let image = root.join(format!("rootfs-{}g.ext4", size / GIB));
        sparse_image(&image, size);
        let vm_dir = root.join(format!("vm-{}g", size / GIB));
        std::fs::create_dir(&vm_dir).unwrap();
        let before = used(root);
        let started = Instant::now();
        let disk = make_root_disk(RootStrategy::Reflink, &image, &vm_dir).unwrap();
        let took = started.elapsed();
        let grew = used(root).saturating_sub(before);
        eprintln!(
            "{what}: reflink root disk of a {} GiB image: {took:?}, filesystem grew by {} KiB",
            size / GIB,
            grew >> 10
        );
        assert_eq!(disk, vm_dir.join("root.ext4"));
        same_data(&image, &disk, size);
        // A copy would take 32 MiB; the clone only its extent records.
        assert!(
            grew < 2 * MIB,
            "{what}: a reflink of a {} GiB image used {grew} bytes",
            size / GIB
        );
        assert!(
            std::fs::metadata(&disk).unwrap().blocks() * 512 >= 2 * DATA_PER_END,
            "the clone maps the image's data"
        );
        let ext = extents(&disk);
        if ext.is_empty() {
            eprintln!("{what}: filefrag missing; shared extents not checked");
        }
        for line in &ext {
            assert!(line.contains("shared"), "{what}: not shared: {line}");
        }
        eprintln!("{what}: all {} extents of the clone are shared", ext.len());
    }
    // The measure itself: a real copy of the same image shows its data.
    let before = used(root);
    let copy = root.join("control-copy.ext4");
    run_ok(
        Command::new("cp")
            .args(["--reflink=never", "--sparse=always"])
            .arg(root.join("rootfs-1g.ext4"))
            .arg(&copy),
    );
    let grew = used(root).saturating_sub(before);
    assert!(
        grew >= 2 * DATA_PER_END - MIB,
        "{what}: a full copy grew the filesystem by only {grew} bytes"
    );
    assert!(extents(&copy).iter().all(|l| !l.contains("shared")));
}

#[test]
fn reflink_on_btrfs() {
    let Some(fs) = LoopMount::make("reflink_on_btrfs", "mkfs.btrfs", &["-q", "-f"]) else {
        return;
    };
    reflink_costs_the_same_whatever_the_size(&fs, "btrfs");
}

#[test]
fn reflink_on_xfs() {
    let Some(fs) = LoopMount::make(
        "reflink_on_xfs",
        "mkfs.xfs",
        &["-q", "-f", "-m", "reflink=1"],
    ) else {
        return;
    };
    reflink_costs_the_same_whatever_the_size(&fs, "xfs");
}

/// Without reflinks the chooser picks dm when the caller says it is
/// usable, else the copy, which keeps the image's holes.
fn copy_fallback_in(dir: &Path, what: &str) {
    if reflink_supported(dir) {
        eprintln!(
            "copy fallback on {what}: skipped, {} has reflinks",
            dir.display()
        );
        return;
    }
    assert_eq!(
        choose_raw_root_strategy(dir, false),
        RootStrategy::Copy,
        "{what}"
    );
    assert_eq!(
        choose_raw_root_strategy(dir, true),
        RootStrategy::DmSnapshot,
        "{what}"
    );
    let image = dir.join("rootfs.ext4");
    sparse_image(&image, GIB);
    let vm_dir = dir.join("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    let disk = make_root_disk(RootStrategy::Copy, &image, &vm_dir).unwrap();
    assert_eq!(disk, vm_dir.join("root.ext4"));
    same_data(&image, &disk, GIB);
    let allocated = std::fs::metadata(&disk).unwrap().blocks() * 512;
    assert!(
        allocated < 2 * DATA_PER_END + 4 * MIB,
        "{what}: the copy is not sparse: {allocated} bytes allocated for {} of data",
        2 * DATA_PER_END
    );
}

#[test]
fn the_copy_fallback_is_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fallback_in(tmp.path(), "the temp dir's filesystem");
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let on_tmpfs = tempfile::tempdir_in(shm).unwrap();
        copy_fallback_in(on_tmpfs.path(), "tmpfs");
    } else {
        eprintln!("copy fallback on tmpfs: skipped, no /dev/shm");
    }
}

#[test]
fn a_dm_snapshot_root_disk_is_an_empty_sparse_store() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("rootfs.ext4");
    sparse_image(&image, GIB);
    let vm_dir = tmp.path().join("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    let cow = make_root_disk(RootStrategy::DmSnapshot, &image, &vm_dir).unwrap();
    assert_eq!(cow, vm_dir.join(RootStrategy::DmSnapshot.file_name()));
    let meta = std::fs::metadata(&cow).unwrap();
    assert_eq!(meta.len(), dm::cow_size(GIB));
    assert!(meta.len() > GIB, "room for a full rewrite and its metadata");
    assert_eq!(meta.blocks(), 0);
}

#[test]
fn strategies_map_to_and_from_the_record() {
    use banger_proto::DiskStrategy as D;
    for s in [
        RootStrategy::Qcow2,
        RootStrategy::Reflink,
        RootStrategy::DmSnapshot,
        RootStrategy::Copy,
    ] {
        assert_eq!(RootStrategy::from_disk_strategy(s.disk_strategy()), Some(s));
        assert_eq!(s.as_str(), s.disk_strategy().as_str());
    }
    assert_eq!(
        RootStrategy::from_disk_strategy(D::DmSnapshot),
        Some(RootStrategy::DmSnapshot)
    );
    assert_eq!(RootStrategy::DmSnapshot.file_name(), "root.cow");
}
