//! Root disks from OCI layers, without root: the layers are applied onto a
//! staging tree ([`crate::layers`]), `mkfs.ext4 -d` copies the tree (file
//! contents, hard links, symlinks, FIFOs, mtimes) into a new image, then
//! one `debugfs -w -f SCRIPT` run writes what an unprivileged user could
//! not put in the tree: owners, exact modes (setuid/setgid bits the
//! kernel would strip, modes the build had to widen to read the tree),
//! device nodes and xattrs. Only what differs from what mkfs copied is in
//! the script, so a build run as root fixes little beyond devices.
//!
//! debugfs parses each script line with the ss library: arguments are
//! split at blanks, a `"`-quoted argument may hold anything but a NUL, a
//! newline or a carriage return (a `"` inside is written `""`), and lines
//! are read with an 8 KiB buffer. A path that cannot be written that way
//! is refused ([`RootDiskError::NotScriptable`]). debugfs exits 0 even
//! when commands fail, so its standard error is checked instead.

use std::collections::HashSet;
use std::fmt::Write;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::layers::{self, ExtraFile, Kind, Layer, RootDiskError, Tree};
use crate::rootfs::{MIN_ROOTFS_BYTES, ROOTFS_HEADROOM_BYTES};

const MIB: u64 = 1 << 20;

/// Bytes per inode of `mkfs.ext4 -T default` (mke2fs.conf's inode_ratio).
const DEFAULT_INODE_RATIO: u64 = 16384;

/// The longest script line written: debugfs reads lines into a BUFSIZ
/// (8192 bytes) buffer and would split a longer one into two commands.
const MAX_SCRIPT_LINE: usize = 8000;

/// How big the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSize {
    /// What the files need plus `headroom_bytes`, at least `min_bytes`,
    /// rounded up to 64 MiB.
    Auto { min_bytes: u64, headroom_bytes: u64 },
    /// Exactly this many bytes; an error if the files need more.
    Exact(u64),
}

impl Default for DiskSize {
    /// Like Debian images: at least 1 GiB, 512 MiB or half the files free.
    fn default() -> Self {
        Self::Auto {
            min_bytes: MIN_ROOTFS_BYTES,
            headroom_bytes: ROOTFS_HEADROOM_BYTES,
        }
    }
}

/// How to build a root disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDiskOptions {
    pub size: DiskSize,
    /// The ext4 volume label.
    pub label: String,
    /// Files added after the last layer, in order.
    pub extra_files: Vec<ExtraFile>,
}

impl Default for RootDiskOptions {
    fn default() -> Self {
        Self {
            size: DiskSize::default(),
            label: "banger-root".into(),
            extra_files: Vec::new(),
        }
    }
}

/// Where a build is, for the daemon's progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootDiskStage<'a> {
    /// Layer `index` (of `count`) is being applied.
    Layer {
        index: usize,
        count: usize,
        path: &'a Path,
    },
    /// Layer `index` is done: it had `entries` entries.
    LayerDone {
        index: usize,
        count: usize,
        entries: u64,
    },
    /// The extra files are being added.
    ExtraFiles,
    /// `mkfs.ext4 -d` is writing an image of `size_bytes`.
    Mkfs { size_bytes: u64 },
    /// debugfs is running `commands` commands.
    Metadata { commands: usize },
}

/// What [`build_root_disk`] built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDiskReport {
    /// Size of the image file.
    pub size_bytes: u64,
    /// Inodes in the image (files, directories, links, devices; hard links once).
    pub inodes: usize,
    /// Tar entries applied, over all layers.
    pub entries: u64,
    /// debugfs commands run.
    pub debugfs_commands: usize,
    /// Time spent applying layers and extra files.
    pub apply: Duration,
    /// Time `mkfs.ext4 -d` took.
    pub mkfs: Duration,
    /// Time the debugfs pass took.
    pub metadata: Duration,
}

/// Builds the ext4 image `out` from `layers` (bottom first) plus
/// `opts.extra_files`, staging the tree in a temp dir inside `staging`
/// (created if missing; the temp dir is removed on success and failure).
/// The image is written next to `out` and renamed over it at the end.
/// Needs no privileges; runs `mkfs.ext4` and `debugfs` (e2fsprogs 1.47).
pub fn build_root_disk(
    layers: &[Layer],
    staging: &Path,
    out: &Path,
    opts: &RootDiskOptions,
    progress: &mut dyn FnMut(RootDiskStage<'_>),
) -> Result<RootDiskReport, RootDiskError> {
    fs::create_dir_all(staging).map_err(|e| RootDiskError::io("create", staging, e))?;
    crate::fsutil::remove_stale_staging(staging, ".rootdisk-");
    let work = tempfile::Builder::new()
        .prefix(".rootdisk-")
        .tempdir_in(staging)
        .map_err(|e| RootDiskError::io("create temp dir in", staging, e))?;
    let tree_dir = work.path().join("tree");
    fs::create_dir(&tree_dir).map_err(|e| RootDiskError::io("create", &tree_dir, e))?;
    layers::set_perm(&tree_dir, 0o700).map_err(|e| RootDiskError::io("chmod", &tree_dir, e))?;

    let started = Instant::now();
    let mut tree = Tree::new(&tree_dir);
    let mut entries = 0;
    for (index, layer) in layers.iter().enumerate() {
        progress(RootDiskStage::Layer {
            index,
            count: layers.len(),
            path: &layer.path,
        });
        let applied = layers::apply_layer(&mut tree, index, layer)?;
        entries += applied.entries;
        progress(RootDiskStage::LayerDone {
            index,
            count: layers.len(),
            entries: applied.entries,
        });
    }
    if !opts.extra_files.is_empty() {
        progress(RootDiskStage::ExtraFiles);
        for file in &opts.extra_files {
            layers::apply_extra(&mut tree, layers.len(), file)?;
        }
    }
    finish_staging(&tree)?;
    let apply = started.elapsed();

    let used = crate::rootfs::tree_usage(&tree_dir).map_err(RootDiskError::Tool)?;
    let needed = crate::rootfs::min_image_bytes(used);
    let size = match opts.size {
        DiskSize::Exact(requested) if requested < needed => {
            return Err(RootDiskError::SizeTooSmall { requested, needed });
        }
        DiskSize::Exact(requested) => requested,
        DiskSize::Auto {
            min_bytes,
            headroom_bytes,
        } => {
            let s = (needed + headroom_bytes).div_ceil(64 * MIB) * 64 * MIB;
            s.max(min_bytes)
        }
    };

    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let image = tempfile::Builder::new()
        .prefix(".rootdisk-")
        .suffix(".ext4")
        .tempfile_in(&out_dir)
        .map_err(|e| RootDiskError::io("create temp file in", &out_dir, e))?;
    image
        .as_file()
        .set_len(size)
        .map_err(|e| RootDiskError::io("resize", image.path(), e))?;

    progress(RootDiskStage::Mkfs { size_bytes: size });
    let started = Instant::now();
    let inodes_wanted = (tree.inode_count() as u64) * 3 / 2 + 1024;
    let mut mkfs = cmd::command("mkfs.ext4");
    mkfs.args(["-F", "-q", "-T", "default", "-L", &opts.label]);
    if inodes_wanted > size / DEFAULT_INODE_RATIO {
        mkfs.arg("-N").arg(inodes_wanted.to_string());
    }
    mkfs.arg("-d").arg(&tree_dir).arg(image.path());
    cmd::run(&mut mkfs)?;
    let mkfs_time = started.elapsed();

    let started = Instant::now();
    let script = metadata_script(&tree, work.path())?;
    progress(RootDiskStage::Metadata {
        commands: script.commands,
    });
    let script_path = work.path().join("metadata.debugfs");
    fs::write(&script_path, &script.text)
        .map_err(|e| RootDiskError::io("write", &script_path, e))?;
    run_debugfs(&script_path, image.path())?;
    let metadata = started.elapsed();

    image
        .persist(out)
        .map_err(|e| RootDiskError::io("rename into place", out, e.error))?;
    drop(work);
    Ok(RootDiskReport {
        size_bytes: size,
        inodes: tree.inode_count(),
        entries,
        debugfs_commands: script.commands,
        apply,
        mkfs: mkfs_time,
        metadata,
    })
}

/// The mode the staging tree keeps for an inode: its own, plus what the
/// build needs to read the tree and remove it afterwards.
fn staged_perm(kind: &Kind, perm: u32) -> u32 {
    match kind {
        Kind::Dir => perm | 0o700,
        _ => perm | 0o600,
    }
}

/// Gives every staged file its (widened) mode and its mtime, now that no
/// layer writes any more: mkfs copies both.
fn finish_staging(tree: &Tree) -> Result<(), RootDiskError> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let mut seen = HashSet::new();
    // Runs after the last write: neither chmod nor utimensat on an entry
    // changes its directory's mtime, so the order does not matter.
    for (p, ino) in tree.paths() {
        let Some(inode) = tree.inode(ino) else {
            continue;
        };
        if inode.kind.is_device() || inode.kind == Kind::Symlink || !seen.insert(ino) {
            continue;
        }
        let host = tree.host(p);
        layers::set_perm(&host, staged_perm(&inode.kind, inode.meta.perm))
            .map_err(|e| RootDiskError::io("chmod", &host, e))?;
    }
    for (p, ino) in tree.paths() {
        let Some(inode) = tree.inode(ino) else {
            continue;
        };
        if inode.kind.is_device() {
            continue;
        }
        let t = Timespec {
            tv_sec: inode.meta.mtime,
            tv_nsec: 0,
        };
        let host = tree.host(p);
        utimensat(
            CWD,
            &host,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| RootDiskError::io("set times of", &host, e.into()))?;
    }
    Ok(())
}

/// A debugfs script and how many commands it has.
#[derive(Debug)]
struct Script {
    text: Vec<u8>,
    commands: usize,
}

impl Script {
    fn line(&mut self, parts: &[&[u8]]) -> Result<(), RootDiskError> {
        let line = parts.join(&b' ');
        if line.len() > MAX_SCRIPT_LINE {
            return Err(RootDiskError::NotScriptable {
                path: String::from_utf8_lossy(&line).into_owned(),
                reason: "the command line would be too long",
            });
        }
        self.text.extend_from_slice(&line);
        self.text.push(b'\n');
        self.commands += 1;
        Ok(())
    }
}

/// `p` (an image path without the leading `/`) as one quoted debugfs argument.
fn quote(p: &[u8]) -> Result<Vec<u8>, RootDiskError> {
    if p.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(RootDiskError::NotScriptable {
            path: String::from_utf8_lossy(p).into_owned(),
            reason: "a name holds a newline or carriage return",
        });
    }
    let mut q = Vec::with_capacity(p.len() + 3);
    q.extend_from_slice(b"\"/");
    for &b in p {
        if b == b'"' {
            q.push(b'"');
        }
        q.push(b);
    }
    q.push(b'"');
    Ok(q)
}

/// The commands that give the image the tree's metadata, skipping what
/// mkfs already copied from the staging tree.
fn metadata_script(tree: &Tree, work: &Path) -> Result<Script, RootDiskError> {
    let mut s = Script {
        text: Vec::new(),
        commands: 0,
    };
    // First path of every inode, and the other paths of device nodes.
    let mut first: std::collections::HashMap<u64, &[u8]> = std::collections::HashMap::new();
    let mut xattr_files = 0usize;
    for (p, ino) in tree.paths() {
        let Some(inode) = tree.inode(ino) else {
            continue;
        };
        let q = quote(p)?;
        if let Some(firstp) = first.get(&ino) {
            // A further link: mkfs linked it already unless it is a device.
            if inode.kind.is_device() {
                s.line(&[b"ln", &quote(firstp)?, &q])?;
            }
            continue;
        }
        first.insert(ino, p);
        let meta = &inode.meta;
        let want_mode = inode.kind.type_bits() | meta.perm;
        let (uid, gid, mode) = match &inode.kind {
            Kind::Char { major, minor } | Kind::Block { major, minor } => {
                let (dir, name) = match p.iter().rposition(|b| *b == b'/') {
                    Some(i) => (&p[..i], &p[i + 1..]),
                    None => (&p[..0], p),
                };
                let t: &[u8] = if matches!(inode.kind, Kind::Char { .. }) {
                    b"c"
                } else {
                    b"b"
                };
                let mut qname = quote(name)?;
                // quote() adds a leading '/' for image paths; mknod takes a bare name.
                qname.remove(1);
                s.line(&[b"cd", &quote(dir)?])?;
                s.line(&[
                    b"mknod",
                    &qname,
                    t,
                    major.to_string().as_bytes(),
                    minor.to_string().as_bytes(),
                ])?;
                s.line(&[b"sif", &q, b"mtime", format!("@{}", meta.mtime).as_bytes()])?;
                (None, None, None)
            }
            _ => {
                let host = tree.host(p);
                let st =
                    fs::symlink_metadata(&host).map_err(|e| RootDiskError::io("stat", &host, e))?;
                (Some(st.uid()), Some(st.gid()), Some(st.mode()))
            }
        };
        // mkfs gives the root directory 0755 root:root and the time of
        // the build, whatever the staging dir has: always set it.
        let root = p.is_empty();
        if root {
            s.line(&[b"sif", &q, b"mtime", format!("@{}", meta.mtime).as_bytes()])?;
        }
        if root || mode != Some(want_mode) {
            s.line(&[b"sif", &q, b"mode", format!("0{want_mode:o}").as_bytes()])?;
        }
        if root || uid != Some(meta.uid) {
            s.line(&[b"sif", &q, b"uid", meta.uid.to_string().as_bytes()])?;
        }
        if root || gid != Some(meta.gid) {
            s.line(&[b"sif", &q, b"gid", meta.gid.to_string().as_bytes()])?;
        }
        for (name, value) in &meta.xattrs {
            let file = work.join(format!("xattr-{xattr_files}"));
            xattr_files += 1;
            fs::write(&file, value).map_err(|e| RootDiskError::io("write", &file, e))?;
            let file_q = quote_host(&file)?;
            s.line(&[b"ea_set", b"-f", &file_q, &q, &quote_bare(name.as_bytes())?])?;
        }
    }
    // Link counts of device nodes with several names (debugfs's ln does
    // not count).
    let mut counted = HashSet::new();
    for (_, ino) in tree.paths() {
        if let Some(inode) = tree.inode(ino) {
            if inode.kind.is_device() && inode.links > 1 && counted.insert(ino) {
                if let Some(p) = first.get(&ino) {
                    s.line(&[
                        b"sif",
                        &quote(p)?,
                        b"links_count",
                        inode.links.to_string().as_bytes(),
                    ])?;
                }
            }
        }
    }
    Ok(s)
}

/// A quoted argument that is not an image path (xattr name).
fn quote_bare(b: &[u8]) -> Result<Vec<u8>, RootDiskError> {
    let mut q = quote(b)?;
    q.remove(1);
    Ok(q)
}

/// A host path (a file in the work dir) as a quoted argument.
fn quote_host(p: &Path) -> Result<Vec<u8>, RootDiskError> {
    use std::os::unix::ffi::OsStrExt;
    quote_bare(p.as_os_str().as_bytes())
}

/// Runs the script; any line debugfs wrote to stderr besides its banner is
/// a failed command.
fn run_debugfs(script: &Path, image: &Path) -> Result<(), RootDiskError> {
    let output = cmd::run(
        cmd::command("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(script)
            .arg(image),
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let mut shown = errors
        .iter()
        .take(5)
        .copied()
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > 5 {
        let _ = write!(shown, " (and {} more)", errors.len() - 5);
    }
    Err(RootDiskError::Debugfs { errors: shown })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{ExtraSource, LayerCompression};
    use std::io::Write as _;
    use std::process::Command;

    /// A layer tar built entry by entry; names and link targets are
    /// written into the header as given (the tar crate's own setters
    /// refuse `..`, which the tests need).
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn entry(
            &mut self,
            ty: tar::EntryType,
            name: &[u8],
            link: &[u8],
            mode: u32,
            owner: (u64, u64),
            data: &[u8],
        ) -> &mut Self {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(ty);
            h.set_mode(mode);
            h.set_uid(owner.0);
            h.set_gid(owner.1);
            h.set_mtime(1_600_000_000);
            h.set_size(data.len() as u64);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(&mut self, name: &str, data: &str, mode: u32, owner: (u64, u64)) -> &mut Self {
            let e = tar::EntryType::Regular;
            self.entry(e, name.as_bytes(), b"", mode, owner, data.as_bytes())
        }

        fn dir(&mut self, name: &str, mode: u32, owner: (u64, u64)) -> &mut Self {
            let e = tar::EntryType::Directory;
            self.entry(e, name.as_bytes(), b"", mode, owner, b"")
        }

        fn link(&mut self, ty: tar::EntryType, name: &str, target: &str) -> &mut Self {
            self.entry(ty, name.as_bytes(), target.as_bytes(), 0o777, (0, 0), b"")
        }

        fn dev(&mut self, ty: tar::EntryType, name: &str, mode: u32, gid: u64, dev: (u32, u32)) {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(ty);
            h.set_path(name).unwrap();
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(gid);
            h.set_size(0);
            h.set_device_major(dev.0).unwrap();
            h.set_device_minor(dev.1).unwrap();
            h.set_cksum();
            self.0.append(&h, &b""[..]).unwrap();
        }

        fn pax_file(&mut self, name: &str, data: &str, pax: &[(&str, &[u8])]) -> &mut Self {
            self.0.append_pax_extensions(pax.iter().copied()).unwrap();
            self.file(name, data, 0o755, (0, 0))
        }

        fn finish(&mut self) -> Vec<u8> {
            let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
            b.into_inner().unwrap()
        }
    }

    fn write_layer(dir: &Path, name: &str, tar: Vec<u8>, c: LayerCompression) -> Layer {
        let path = dir.join(name);
        let bytes = match c {
            LayerCompression::None => tar,
            LayerCompression::Gzip => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&tar).unwrap();
                gz.finish().unwrap()
            }
            LayerCompression::Zstd => {
                let mut child = Command::new("zstd")
                    .args(["-q", "-c"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(&tar).unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success());
                out.stdout
            }
        };
        fs::write(&path, bytes).unwrap();
        Layer {
            path,
            compression: c,
        }
    }

    fn have_zstd() -> bool {
        Command::new("zstd").arg("--version").output().is_ok()
    }

    /// `debugfs -R REQUEST image` output (stdout).
    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// uid, gid, mode (octal string as debugfs prints it), links, type.
    fn stat(image: &Path, path: &str) -> (u32, u32, String, u32, String) {
        let s = debugfs(image, &format!("stat \"{}\"", path.replace('"', "\"\"")));
        let field = |key: &str| -> String {
            let i = s
                .find(key)
                .unwrap_or_else(|| panic!("{path}: no {key} in {s}"));
            s[i + key.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned()
        };
        (
            field("User:").parse().unwrap(),
            field("Group:").parse().unwrap(),
            field("Mode:"),
            field("Links:").parse().unwrap(),
            field("Type:"),
        )
    }

    fn inode_number(image: &Path, path: &str) -> String {
        let s = debugfs(image, &format!("stat \"{path}\""));
        s.split_whitespace().nth(1).unwrap().to_owned()
    }

    fn opts() -> RootDiskOptions {
        RootDiskOptions {
            size: DiskSize::Auto {
                min_bytes: 64 * MIB,
                headroom_bytes: 16 * MIB,
            },
            ..RootDiskOptions::default()
        }
    }

    /// Runs `f` on a thread that dropped root to nobody (65534) when the
    /// test runs as root, so the build proves it needs no privilege.
    /// Linux credentials are per thread at the syscall level, and the
    /// programs the build starts inherit the thread's.
    fn as_nobody<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                if crate::cmd::is_root() {
                    use rustix::thread::{
                        set_thread_groups, set_thread_res_gid, set_thread_res_uid,
                    };
                    let nobody_g = rustix::process::Gid::from_raw(65534);
                    let nobody_u = rustix::process::Uid::from_raw(65534);
                    set_thread_groups(&[]).unwrap();
                    set_thread_res_gid(nobody_g, nobody_g, nobody_g).unwrap();
                    set_thread_res_uid(nobody_u, nobody_u, nobody_u).unwrap();
                }
                if crate::cmd::is_root() {
                    assert_eq!(rustix::process::geteuid().as_raw(), 65534);
                }
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// A temp dir nobody can write to (the test may drop root).
    fn open_tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        layers::set_perm(dir.path(), 0o777).unwrap();
        dir
    }

    fn base_layers(dir: &Path, canary: &Path) -> Vec<Layer> {
        use tar::EntryType as E;
        let root = (0, 0);
        let user = (1000, 1000);
        let mut l0 = Tar::new();
        l0.dir("./", 0o755, root)
            .dir("etc/", 0o755, root)
            .file("etc/passwd", "root:x:0:0\n", 0o644, root)
            .file("etc/gone", "bye", 0o644, root)
            .dir("opq/", 0o755, root)
            .file("opq/old1", "old", 0o644, root)
            .file("opq/sub/old2", "old", 0o644, root)
            .file("usr/bin/tool", "suid", 0o4755, root)
            .file("usr/bin/sgid", "sgid", 0o2755, (0, 42))
            .dir("home/u/", 0o700, user)
            .file("home/u/f", "mine", 0o640, user)
            .file("home/u/we\"ird name\t$x", "odd", 0o600, user)
            .file("data/a", "shared", 0o644, root)
            .link(E::Link, "data/b", "data/a")
            .link(E::Link, "other/c", "./data/a")
            .file("replaced/x", "v1", 0o644, root)
            .link(E::Link, "replaced/y", "replaced/x")
            .link(E::Symlink, "lnk", "/etc/passwd")
            .link(E::Symlink, "evil", "../../../../tmp")
            .link(E::Symlink, "hostlink", canary.to_str().unwrap())
            .dir("tmp/", 0o1777, root)
            .file("noperm", "locked", 0o000, (5, 5))
            .pax_file(
                "usr/bin/ping",
                "ping",
                &[("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")],
            );
        l0.dev(E::Char, "dev/null", 0o666, 0, (1, 3));
        l0.dev(E::Block, "dev/sda", 0o660, 6, (8, 0));
        l0.dev(E::Block, "dev/big", 0o600, 0, (259, 300));
        l0.link(E::Link, "dev/null2", "dev/null");
        l0.dev(E::Fifo, "run/fifo", 0o620, 0, (0, 0));
        let l0 = write_layer(dir, "l0.tar.gz", l0.finish(), LayerCompression::Gzip);

        let mut l1 = Tar::new();
        l1.file("etc/.wh.gone", "", 0o644, root)
            .file("opq/new", "new", 0o644, root)
            .file("opq/.wh..wh..opq", "", 0o644, root)
            .file("replaced/x", "v2", 0o644, root)
            .file("evil/pwned", "inside", 0o644, root)
            .file("hostlink/pwned2", "inside", 0o644, root)
            .file("/abs", "abs", 0o644, root);
        let c = if have_zstd() {
            LayerCompression::Zstd
        } else {
            eprintln!("zstd not installed: second layer left uncompressed");
            LayerCompression::None
        };
        let l1 = write_layer(dir, "l1.tar.zst", l1.finish(), c);
        vec![l0, l1]
    }

    fn build(
        layers: &[Layer],
        dir: &Path,
        o: &RootDiskOptions,
    ) -> Result<(RootDiskReport, PathBuf), RootDiskError> {
        let out = dir.join("root.ext4");
        let mut stages = Vec::new();
        let report = build_root_disk(layers, &dir.join("staging"), &out, o, &mut |s| {
            stages.push(format!("{s:?}"));
        })?;
        assert!(stages.iter().any(|s| s.starts_with("Mkfs")), "{stages:?}");
        Ok((report, out))
    }

    fn check_image(img: &Path) {
        // Root.
        let (uid, _, mode, _, _) = stat(img, "/");
        assert_eq!((uid, mode.as_str()), (0, "0755"));
        // Whiteout and opaque directory.
        let passwd = stat(img, "/etc/passwd");
        assert_eq!((passwd.0, passwd.1, passwd.2.as_str()), (0, 0, "0644"));
        assert!(!debugfs(img, "ls /etc").contains("gone"));
        let opq = debugfs(img, "ls /opq");
        assert!(
            opq.contains("new") && !opq.contains("old1") && !opq.contains("sub"),
            "{opq}"
        );
        // Modes and owners.
        assert_eq!(stat(img, "/usr/bin/tool").2, "04755");
        let sgid = stat(img, "/usr/bin/sgid");
        assert_eq!((sgid.1, sgid.2.as_str()), (42, "02755"));
        assert_eq!(stat(img, "/tmp").2, "01777");
        let home = stat(img, "/home/u");
        assert_eq!((home.0, home.1, home.2.as_str()), (1000, 1000, "0700"));
        let f = stat(img, "/home/u/f");
        assert_eq!((f.0, f.1, f.2.as_str()), (1000, 1000, "0640"));
        let odd = stat(img, "/home/u/we\"ird name\t$x");
        assert_eq!((odd.0, odd.2.as_str()), (1000, "0600"));
        let locked = stat(img, "/noperm");
        assert_eq!((locked.0, locked.1, locked.2.as_str()), (5, 5, "0000"));
        // Hard links, across directories, and one broken by a later layer.
        let a = stat(img, "/data/a");
        assert_eq!(a.3, 3);
        assert_eq!(inode_number(img, "/data/a"), inode_number(img, "/other/c"));
        assert_eq!(inode_number(img, "/data/a"), inode_number(img, "/data/b"));
        assert_eq!(debugfs(img, "cat /replaced/x"), "v2");
        assert_eq!(debugfs(img, "cat /replaced/y"), "v1");
        assert_eq!(stat(img, "/replaced/y").3, 1);
        // Symlinks kept as they are.
        assert_eq!(stat(img, "/lnk").4, "symlink");
        assert!(debugfs(img, "stat /lnk").contains("Fast link dest: \"/etc/passwd\""));
        // Device nodes and FIFOs.
        let null = stat(img, "/dev/null");
        assert_eq!(
            (null.2.as_str(), null.3, null.4.as_str()),
            ("0666", 2, "character")
        );
        assert!(debugfs(img, "stat /dev/null").contains("Device major/minor number: 01:03"));
        assert_eq!(
            inode_number(img, "/dev/null"),
            inode_number(img, "/dev/null2")
        );
        let sda = stat(img, "/dev/sda");
        assert_eq!(
            (sda.1, sda.2.as_str(), sda.4.as_str()),
            (6, "0660", "block")
        );
        assert!(debugfs(img, "stat /dev/big").contains("Device major/minor number: 259:300"));
        let fifo = stat(img, "/run/fifo");
        assert_eq!((fifo.2.as_str(), fifo.4.as_str()), ("0620", "FIFO"));
        // xattr from a PAX header.
        assert!(debugfs(img, "ea_list /usr/bin/ping").contains("security.capability"));
        // Writes through symlinks stayed in the image.
        assert_eq!(debugfs(img, "cat /tmp/pwned"), "inside");
        assert_eq!(debugfs(img, "cat /abs"), "abs");
        // mtimes from the headers.
        assert!(debugfs(img, "stat /etc/passwd").contains("mtime: 0x5f5e1000"));
    }

    #[test]
    fn layers_become_an_ext4_image() {
        for _ in 0..3 {
            let dir = open_tempdir();
            let canary = open_tempdir();
            let layers = base_layers(dir.path(), canary.path());
            let (report, img) = as_nobody(|| build(&layers, dir.path(), &opts())).unwrap();
            eprintln!("{report:?}");
            check_image(&img);
            let hostlink = debugfs(&img, &format!("cat \"{}/pwned2\"", canary.path().display()));
            assert_eq!(hostlink, "inside");
            assert_eq!(
                fs::read_dir(canary.path()).unwrap().count(),
                0,
                "wrote outside"
            );
            // The staging dir is gone.
            assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
        }
    }

    #[test]
    fn build_as_current_user_too() {
        let dir = open_tempdir();
        let canary = open_tempdir();
        let layers = base_layers(dir.path(), canary.path());
        let (_, img) = build(&layers, dir.path(), &opts()).unwrap();
        check_image(&img);
    }

    fn one_layer(dir: &Path, t: &mut Tar) -> Vec<Layer> {
        vec![write_layer(
            dir,
            "bad.tar",
            t.finish(),
            LayerCompression::None,
        )]
    }

    #[test]
    fn escapes_are_refused() {
        use tar::EntryType as E;
        type MakeLayer = Box<dyn Fn(&mut Tar)>;
        let cases: Vec<(&str, MakeLayer)> = vec![
            (
                "../x",
                Box::new(|t: &mut Tar| {
                    t.file("a/../../x", "x", 0o644, (0, 0));
                }),
            ),
            (
                "hard link out",
                Box::new(|t: &mut Tar| {
                    t.link(E::Link, "h", "../../etc/passwd");
                }),
            ),
            (
                "hard link to a dir",
                Box::new(|t: &mut Tar| {
                    t.dir("d/", 0o755, (0, 0)).link(E::Link, "h", "d");
                }),
            ),
            (
                "symlink loop",
                Box::new(|t: &mut Tar| {
                    t.link(E::Symlink, "l", "l").file("l/x", "x", 0o644, (0, 0));
                }),
            ),
            (
                "file as a parent",
                Box::new(|t: &mut Tar| {
                    t.file("f", "x", 0o644, (0, 0))
                        .file("f/x", "x", 0o644, (0, 0));
                }),
            ),
        ];
        for (what, make) in cases {
            for _ in 0..2 {
                let dir = open_tempdir();
                let mut t = Tar::new();
                make(&mut t);
                let layers = one_layer(dir.path(), &mut t);
                let err = as_nobody(|| build(&layers, dir.path(), &opts())).unwrap_err();
                assert!(
                    matches!(err, RootDiskError::BadEntry { index: 0, .. }),
                    "{what}: {err}"
                );
                let msg = err.to_string();
                assert!(msg.starts_with("layer 0 ("), "{msg}");
                assert!(!dir.path().join("x").exists() && !dir.path().join("root.ext4").exists());
                assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
            }
        }
    }

    #[test]
    fn unscriptable_names_are_refused() {
        let dir = open_tempdir();
        let mut t = Tar::new();
        t.file("bad\nname", "x", 0o644, (1000, 1000));
        let layers = one_layer(dir.path(), &mut t);
        let err = as_nobody(|| build(&layers, dir.path(), &opts())).unwrap_err();
        assert!(matches!(err, RootDiskError::NotScriptable { .. }), "{err}");
    }

    #[test]
    fn oversized_extension_headers_are_refused() {
        let dir = open_tempdir();
        let mut t = Tar::new();
        let long = vec![b'a'; (MAX_META_BYTES_TEST) as usize];
        t.0.append_pax_extensions([("path", &long[..])]).unwrap();
        t.file("x", "x", 0o644, (0, 0));
        let layers = one_layer(dir.path(), &mut t);
        let err = build(&layers, dir.path(), &opts()).unwrap_err();
        assert!(err.to_string().contains("extension header"), "{err}");
    }

    const MAX_META_BYTES_TEST: u64 = crate::layers::MAX_META_BYTES + 1;

    #[test]
    fn extra_files_and_sizes() {
        let dir = open_tempdir();
        let mut t = Tar::new();
        t.dir("usr/local/bin/", 0o755, (0, 0)).link(
            tar::EntryType::Symlink,
            "bin",
            "usr/local/bin",
        );
        let layers = one_layer(dir.path(), &mut t);
        let src = dir.path().join("agent");
        fs::write(&src, b"#!agent").unwrap();
        let o = RootDiskOptions {
            extra_files: vec![
                ExtraFile {
                    guest_path: "/bin/banger-agent".into(),
                    source: ExtraSource::Path(src),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
                ExtraFile {
                    guest_path: "/etc/banger/config.toml".into(),
                    source: ExtraSource::Bytes(b"x = 1\n".to_vec()),
                    mode: 0o600,
                    uid: 1000,
                    gid: 1000,
                },
            ],
            size: DiskSize::Exact(80 * MIB),
            ..RootDiskOptions::default()
        };
        let (report, img) = as_nobody(|| build(&layers, dir.path(), &o)).unwrap();
        assert_eq!(report.size_bytes, 80 * MIB);
        assert_eq!(fs::metadata(&img).unwrap().len(), 80 * MIB);
        assert_eq!(debugfs(&img, "cat /usr/local/bin/banger-agent"), "#!agent");
        let c = stat(&img, "/etc/banger/config.toml");
        assert_eq!((c.0, c.1, c.2.as_str()), (1000, 1000, "0600"));
        let tiny = RootDiskOptions {
            size: DiskSize::Exact(MIB),
            ..o
        };
        let err = build(&layers, dir.path(), &tiny).unwrap_err();
        assert!(matches!(err, RootDiskError::SizeTooSmall { .. }), "{err}");
    }

    /// Timing of a Debian-sized image: 10k files in 100 directories.
    #[test]
    fn ten_thousand_files() {
        let dir = open_tempdir();
        let mut t = Tar::new();
        for d in 0..100 {
            t.dir(&format!("d{d}/"), 0o755, (0, 0));
            for f in 0..100 {
                t.file(&format!("d{d}/f{f}"), "some content\n", 0o644, (0, 0));
            }
        }
        let layers = vec![write_layer(
            dir.path(),
            "big.tar.gz",
            t.finish(),
            LayerCompression::Gzip,
        )];
        let started = Instant::now();
        let (report, img) = as_nobody(|| build(&layers, dir.path(), &opts())).unwrap();
        eprintln!("10100 entries: {:?} total, {report:?}", started.elapsed());
        assert_eq!(report.entries, 10_100);
        let s = stat(&img, "/d99/f99");
        assert_eq!((s.0, s.2.as_str()), (0, "0644"));
    }
}
