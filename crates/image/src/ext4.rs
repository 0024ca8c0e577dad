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
    // Children before parents would not matter for chmod; mtimes of
    // directories are set after everything in them exists.
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
