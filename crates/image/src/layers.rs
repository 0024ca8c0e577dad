//! OCI image layers (tar, tar+gzip, tar+zstd) applied in order onto a
//! staging tree, without root.
//!
//! The staging tree holds what an unprivileged user can write: directories,
//! regular files (with their content), symlinks, FIFOs and hard links, all
//! owned by whoever runs the build and kept user-writable. What the user
//! cannot write (owners, the exact modes, device nodes, xattrs) lives in
//! [`Tree`], the in-memory model of the image; `crate::ext4` turns the
//! staging tree into ext4 with `mkfs.ext4 -d` and then puts the model's
//! metadata into the image with one `debugfs` script.
//!
//! Layers are untrusted input:
//!
//! - Entry names are cleaned lexically: a leading `/` is dropped (the path
//!   is taken relative to the image root, as container runtimes do), `.`
//!   is ignored, and a `..` that would leave the root is refused.
//! - Parent directories are resolved in the model, never on the host: a
//!   symlink met on the way is followed *inside the image* (an absolute
//!   target starts again at the image root, `..` stops at the root), so
//!   every host path touched is the staging dir plus real directories the
//!   build created itself. The last component is never followed: an
//!   existing entry there is removed first, and new files are created with
//!   `O_EXCL`.
//! - Nothing is sized by trusting the tar headers: file data is streamed,
//!   and long names and PAX headers are read only up to
//!   [`MAX_META_BYTES`] (the tar crate is used in raw mode for this; a PAX
//!   `size` that differs from the header's, i.e. a file over 8 GiB, is
//!   refused).
//!
//! Whiteouts follow the OCI image spec: `.wh.NAME` removes `NAME` and
//! `.wh..wh..opq` drops everything below its directory that this layer did
//! not write itself (the layer's own entries stay, whatever their order in
//! the tar). Other `.wh..wh.*` names (aufs bookkeeping) are ignored.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How a layer blob is compressed (from its media type: `...tar`,
/// `...tar+gzip`, `...tar+zstd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    /// The compression an OCI or Docker layer media type names; `None`
    /// for a media type that is not a tar layer.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// One layer blob on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub path: PathBuf,
    pub compression: LayerCompression,
}

/// Longest GNU long name or PAX header block read (real ones are a few
/// hundred bytes; xattrs such as ACLs a few KiB).
pub const MAX_META_BYTES: u64 = 1 << 20;

/// Symlinks followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// What went wrong while building a root disk from layers. Errors about an
/// entry name the layer (index in the list, path of the blob) and the
/// entry as it appears in the tar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootDiskError {
    /// A layer blob could not be opened.
    #[error("open layer {index} ({})", path.display())]
    OpenLayer {
        index: usize,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A layer could not be read: corrupt compression or tar structure.
    #[error("read layer {index} ({})", path.display())]
    ReadLayer {
        index: usize,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An entry the build refuses (unsafe or malformed); nothing outside
    /// the staging dir was touched.
    #[error("layer {index} ({}): entry {entry:?}: {reason}", path.display())]
    BadEntry {
        index: usize,
        path: PathBuf,
        /// The entry's name as in the tar (lossy UTF-8).
        entry: String,
        reason: String,
    },

    /// Writing an entry into the staging tree failed.
    #[error("layer {index} ({}): entry {entry:?}", path.display())]
    Staging {
        index: usize,
        path: PathBuf,
        entry: String,
        #[source]
        source: io::Error,
    },

    /// An extra file of [`RootDiskOptions`](crate::RootDiskOptions) cannot be placed.
    #[error("extra file {guest_path}: {reason}")]
    BadExtraFile { guest_path: String, reason: String },

    /// Reading or writing an extra file failed.
    #[error("extra file {guest_path}")]
    ExtraFile {
        guest_path: String,
        #[source]
        source: io::Error,
    },

    /// A file system operation outside the entries failed.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A path that needs fixing in the image cannot be written in a
    /// debugfs script (a newline or carriage return in a name, or a
    /// command line over debugfs's limit).
    #[error("image path {path:?} cannot be expressed in a debugfs script: {reason}")]
    NotScriptable { path: String, reason: &'static str },

    /// debugfs ran but reported errors for some commands.
    #[error("debugfs could not apply the image metadata: {errors}")]
    Debugfs { errors: String },

    /// The requested size is smaller than what the files need.
    #[error("image size {requested} bytes is too small: the files need at least {needed} bytes")]
    SizeTooSmall { requested: u64, needed: u64 },

    /// mkfs.ext4 or debugfs could not be run or failed.
    #[error(transparent)]
    Tool(#[from] crate::ImageError),
}

impl RootDiskError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
}

impl Kind {
    /// The `S_IFMT` bits.
    pub(crate) fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir => 0o040000,
            Kind::File => 0o100000,
            Kind::Symlink => 0o120000,
            Kind::Fifo => 0o010000,
            Kind::Char { .. } => 0o020000,
            Kind::Block { .. } => 0o060000,
        }
    }

    /// Whether the staging tree has no file for it (device nodes: the
    /// user cannot create them; debugfs does).
    pub(crate) fn is_device(&self) -> bool {
        matches!(self, Kind::Char { .. } | Kind::Block { .. })
    }
}

/// The metadata the image wants for an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub(crate) perm: u32,
    pub(crate) mtime: i64,
    /// Extended attributes, in the order given.
    pub(crate) xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// A directory created implicitly (a parent no entry described).
    fn implicit_dir() -> Self {
        Self {
            uid: 0,
            gid: 0,
            perm: 0o755,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Inode {
    pub(crate) kind: Kind,
    pub(crate) meta: Meta,
    /// How many paths of the tree name it.
    pub(crate) links: u32,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    ino: u64,
    /// The last layer that wrote or walked through this path (for opaque
    /// whiteouts).
    layer: usize,
}

/// The image being built: the staging tree on disk plus the metadata it
/// cannot hold. Paths are image paths without the leading `/`, components
/// joined by `/`; the root is the empty path.
#[derive(Debug)]
pub(crate) struct Tree {
    root: PathBuf,
    nodes: BTreeMap<Vec<u8>, Node>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
}

/// Why an entry was refused (becomes [`RootDiskError::BadEntry`] or
/// [`RootDiskError::Staging`] with the layer and entry around it).
#[derive(Debug)]
pub(crate) enum Refusal {
    Bad(String),
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

fn bad<T>(reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::Bad(reason.into()))
}

/// The kind of entry to write at a path.
pub(crate) enum NewEntry<'a> {
    Dir,
    File(&'a mut dyn Read),
    Symlink(Vec<u8>),
    Fifo,
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    /// A hard link to this (cleaned) image path.
    HardLink(Vec<Vec<u8>>),
}

/// Splits `raw` into clean components: empty and `.` components dropped,
/// a leading `/` ignored, `..` applied lexically and refused when it would
/// leave the root.
pub(crate) fn clean_path(raw: &[u8]) -> Result<Vec<Vec<u8>>, Refusal> {
    if raw.contains(&0) {
        return bad("name contains a NUL byte");
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return bad("path leaves the image root");
                }
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

fn child(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Tree {
    /// An empty image (just its root directory) staged in `root`, which
    /// must exist and be empty.
    pub(crate) fn new(root: &Path) -> Self {
        let mut tree = Self {
            root: root.to_path_buf(),
            nodes: BTreeMap::new(),
            inodes: HashMap::new(),
            next_ino: 1,
        };
        let ino = tree.new_inode(Kind::Dir, Meta::implicit_dir());
        tree.nodes.insert(Vec::new(), Node { ino, layer: 0 });
        tree
    }

    fn new_inode(&mut self, kind: Kind, meta: Meta) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                kind,
                meta,
                links: 1,
            },
        );
        ino
    }

    /// The host path of image path `p` in the staging tree.
    pub(crate) fn host(&self, p: &[u8]) -> PathBuf {
        if p.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(p))
        }
    }

    /// Every image path (root first, parents before children) with its
    /// inode number.
    pub(crate) fn paths(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.nodes.iter().map(|(p, n)| (p.as_slice(), n.ino))
    }

    pub(crate) fn inode(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// How many inodes the image has.
    pub(crate) fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    fn kind_at(&self, p: &[u8]) -> Option<&Kind> {
        let node = self.nodes.get(p)?;
        self.inodes.get(&node.ino).map(|i| &i.kind)
    }

    /// Keys strictly below directory `p`.
    fn descendants(&self, p: &[u8]) -> Vec<Vec<u8>> {
        if p.is_empty() {
            return self
                .nodes
                .keys()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect();
        }
        let start = child(p, b"");
        self.nodes
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The real directory `comps` leads to, following symlinks inside the
    /// image. Missing directories are created (as layer `layer`) when
    /// `create`, else `Ok(None)`. Every directory walked through is marked
    /// as touched by `layer`.
    fn resolve_dir(
        &mut self,
        comps: &[Vec<u8>],
        layer: usize,
        create: bool,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let mut todo: std::collections::VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut cur: Vec<Vec<u8>> = Vec::new();
        let mut links = 0usize;
        while let Some(c) = todo.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            let mut next = cur.clone();
            next.push(c);
            let key = join(&next);
            let Some(node) = self.nodes.get(&key).copied() else {
                if !create {
                    return Ok(None);
                }
                fs::create_dir(self.host(&key))?;
                set_perm(&self.host(&key), 0o700)?;
                let ino = self.new_inode(Kind::Dir, Meta::implicit_dir());
                self.nodes.insert(key, Node { ino, layer });
                cur = next;
                continue;
            };
            let kind = self.inodes.get(&node.ino).map(|i| i.kind.clone());
            match kind {
                Some(Kind::Dir) => {
                    if let Some(n) = self.nodes.get_mut(&key) {
                        n.layer = layer;
                    }
                    cur = next;
                }
                Some(Kind::Symlink) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return bad("too many levels of symbolic links");
                    }
                    let target = fs::read_link(self.host(&key))?;
                    let target = target.as_os_str().as_bytes();
                    if target.starts_with(b"/") {
                        cur.clear();
                    }
                    for t in target.split(|b| *b == b'/').rev() {
                        todo.push_front(t.to_vec());
                    }
                }
                _ => {
                    return bad(format!(
                        "{} is not a directory",
                        String::from_utf8_lossy(&key)
                    ));
                }
            }
        }
        Ok(Some(join(&cur)))
    }

    /// Removes `p` and everything below it, from the model and the staging tree.
    fn remove(&mut self, p: &[u8]) -> io::Result<()> {
        let Some(node) = self.nodes.get(p).copied() else {
            return Ok(());
        };
        let kind = self.inodes.get(&node.ino).map(|i| i.kind.clone());
        match kind {
            Some(Kind::Dir) => {
                for d in self.descendants(p) {
                    self.forget(&d);
                }
                fs::remove_dir_all(self.host(p))?;
            }
            Some(k) if k.is_device() => {}
            _ => fs::remove_file(self.host(p))?,
        }
        self.forget(p);
        Ok(())
    }

    /// Drops path `p` from the model (not the disk).
    fn forget(&mut self, p: &[u8]) {
        if let Some(node) = self.nodes.remove(p) {
            let gone = match self.inodes.get_mut(&node.ino) {
                Some(inode) => {
                    inode.links = inode.links.saturating_sub(1);
                    inode.links == 0
                }
                None => false,
            };
            if gone {
                self.inodes.remove(&node.ino);
            }
        }
    }

    /// Opaque whiteout of directory `dir` in `layer`: everything below it
    /// that `layer` did not write or walk through goes.
    fn make_opaque(&mut self, dir: &[u8], layer: usize) -> io::Result<()> {
        for d in self.descendants(dir) {
            let lower = self.nodes.get(&d).is_some_and(|n| n.layer != layer);
            if lower {
                // May already be gone with a removed parent.
                self.remove(&d)?;
            }
        }
        Ok(())
    }

    /// Applies one entry: `comps` is its cleaned path, `meta` its
    /// metadata (ignored for hard links, which share their target's).
    pub(crate) fn apply(
        &mut self,
        comps: &[Vec<u8>],
        entry: NewEntry<'_>,
        meta: Meta,
        layer: usize,
    ) -> Result<(), Refusal> {
        let Some((name, parent)) = comps.split_last() else {
            // The root itself: only a directory can describe it.
            return match entry {
                NewEntry::Dir => {
                    let ino = self.nodes.get(&Vec::new()).map(|n| n.ino);
                    if let Some(inode) = ino.and_then(|i| self.inodes.get_mut(&i)) {
                        inode.meta = meta;
                    }
                    Ok(())
                }
                _ => bad("the image root can only be a directory"),
            };
        };

        // Whiteouts.
        if let Some(target) = name.strip_prefix(b".wh.") {
            let Some(dir) = self.resolve_dir(parent, layer, false)? else {
                return Ok(());
            };
            if target == b".wh..opq" {
                self.make_opaque(&dir, layer)?;
            } else if !target.starts_with(b".wh.") && !target.is_empty() {
                self.remove(&child(&dir, target))?;
            }
            return Ok(());
        }

        let Some(dir) = self.resolve_dir(parent, layer, true)? else {
            return bad("parent directory missing");
        };
        let path = child(&dir, name);
        let host = self.host(&path);

        // A directory over an existing directory keeps its contents.
        if let NewEntry::Dir = entry {
            if let Some(node) = self.nodes.get(&path).copied() {
                if self.kind_at(&path) == Some(&Kind::Dir) {
                    if let Some(inode) = self.inodes.get_mut(&node.ino) {
                        inode.meta = meta;
                    }
                    if let Some(n) = self.nodes.get_mut(&path) {
                        n.layer = layer;
                    }
                    return Ok(());
                }
            }
        }

        // Hard links: find the target before anything is removed.
        let link_target = match &entry {
            NewEntry::HardLink(target) => {
                let Some((tname, tparent)) = target.split_last() else {
                    return bad("hard link to the image root");
                };
                let Some(tdir) = self.resolve_dir(tparent, layer, false)? else {
                    return bad("hard link target does not exist");
                };
                let tpath = child(&tdir, tname);
                let Some(tnode) = self.nodes.get(&tpath).copied() else {
                    return bad("hard link target does not exist");
                };
                if self.kind_at(&tpath) == Some(&Kind::Dir) {
                    return bad("hard link to a directory");
                }
                if tpath == path {
                    return Ok(());
                }
                Some((tpath, tnode.ino))
            }
            _ => None,
        };

        self.remove(&path)?;

        let (kind, meta) = match entry {
            NewEntry::Dir => {
                fs::create_dir(&host)?;
                set_perm(&host, 0o700)?;
                (Kind::Dir, meta)
            }
            NewEntry::File(data) => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&host)?;
                io::copy(data, &mut f)?;
                (Kind::File, meta)
            }
            NewEntry::Symlink(target) => {
                if target.is_empty() || target.contains(&0) {
                    return bad("empty symlink target or NUL byte in it");
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &host)?;
                (Kind::Symlink, meta)
            }
            NewEntry::Fifo => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &host,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(io::Error::from)?;
                (Kind::Fifo, meta)
            }
            NewEntry::Char { major, minor } => (Kind::Char { major, minor }, meta),
            NewEntry::Block { major, minor } => (Kind::Block { major, minor }, meta),
            NewEntry::HardLink(_) => {
                let Some((tpath, ino)) = link_target else {
                    return bad("hard link target does not exist");
                };
                let Some(inode) = self.inodes.get(&ino).cloned() else {
                    return bad("hard link target does not exist");
                };
                if inode.kind == Kind::Symlink {
                    // mkfs.ext4 -d gives every symlink its own inode: a
                    // copy is what the image would get anyway.
                    let target = fs::read_link(self.host(&tpath))?;
                    std::os::unix::fs::symlink(target, &host)?;
                    (Kind::Symlink, inode.meta)
                } else {
                    if !inode.kind.is_device() {
                        fs::hard_link(self.host(&tpath), &host)?;
                    }
                    if let Some(i) = self.inodes.get_mut(&ino) {
                        i.links += 1;
                    }
                    self.nodes.insert(path, Node { ino, layer });
                    return Ok(());
                }
            }
        };
        let ino = self.new_inode(kind, meta);
        self.nodes.insert(path, Node { ino, layer });
        Ok(())
    }
}

/// `chmod` on a host path (never a symlink: callers only pass what they
/// just created as a directory or file).
pub(crate) fn set_perm(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Counts what was applied, for progress and the report.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    pub(crate) entries: u64,
}

/// The decompressed tar stream of a layer.
fn open_layer(layer: &Layer) -> io::Result<Box<dyn Read>> {
    let file = BufReader::with_capacity(256 << 10, fs::File::open(&layer.path)?);
    Ok(match layer.compression {
        LayerCompression::None => Box::new(file),
        LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        LayerCompression::Zstd => Box::new(crate::zstd::MultiFrame::new(file)),
    })
}

/// Extension headers waiting for the entry they describe.
#[derive(Debug, Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// Applies layer number `index` onto `tree`.
pub(crate) fn apply_layer(
    tree: &mut Tree,
    index: usize,
    layer: &Layer,
) -> Result<Applied, RootDiskError> {
    let read_err = |source: io::Error| RootDiskError::ReadLayer {
        index,
        path: layer.path.clone(),
        source,
    };
    let stream = open_layer(layer).map_err(|source| RootDiskError::OpenLayer {
        index,
        path: layer.path.clone(),
        source,
    })?;
    let mut archive = tar::Archive::new(stream);
    let mut applied = Applied::default();
    let mut pending = Pending::default();
    for raw in archive.entries().map_err(read_err)?.raw(true) {
        let mut e = raw.map_err(read_err)?;
        let ty = e.header().entry_type();
        let header_name = e.header().path_bytes().into_owned();
        let refuse = |entry: &[u8], r: Refusal| match r {
            Refusal::Bad(reason) => RootDiskError::BadEntry {
                index,
                path: layer.path.clone(),
                entry: String::from_utf8_lossy(entry).into_owned(),
                reason,
            },
            Refusal::Io(source) => RootDiskError::Staging {
                index,
                path: layer.path.clone(),
                entry: String::from_utf8_lossy(entry).into_owned(),
                source,
            },
        };

        if ty.is_gnu_longname() || ty.is_gnu_longlink() || ty.is_pax_local_extensions() {
            let size = e.header().entry_size().map_err(read_err)?;
            if size > MAX_META_BYTES {
                return Err(refuse(
                    &header_name,
                    Refusal::Bad(format!(
                        "extension header of {size} bytes (at most {MAX_META_BYTES})"
                    )),
                ));
            }
            let mut data = Vec::new();
            (&mut e)
                .take(MAX_META_BYTES)
                .read_to_end(&mut data)
                .map_err(read_err)?;
            let slot = if ty.is_gnu_longname() {
                &mut pending.long_name
            } else if ty.is_gnu_longlink() {
                &mut pending.long_link
            } else {
                &mut pending.pax
            };
            if slot.is_some() {
                return Err(refuse(
                    &header_name,
                    Refusal::Bad("two extension headers of one kind for one entry".into()),
                ));
            }
            *slot = Some(data);
            continue;
        }
        if ty.is_pax_global_extensions() {
            continue;
        }

        let ext = std::mem::take(&mut pending);
        let fields = EntryFields::read(&e, &ext).map_err(read_err)?;
        let name = fields.name.clone();
        if let Some(size) = fields.pax_size {
            if Some(size) != e.header().entry_size().ok() {
                return Err(refuse(
                    &name,
                    Refusal::Bad(
                        "PAX size differs from the header's (files over 8 GiB are not supported)"
                            .into(),
                    ),
                ));
            }
        }
        let comps = clean_path(&name).map_err(|r| refuse(&name, r))?;
        let meta = fields.meta;
        let dev = || -> Result<(u32, u32), Refusal> {
            let major = e.header().device_major().ok().flatten();
            let minor = e.header().device_minor().ok().flatten();
            match (major, minor) {
                (Some(a), Some(b)) => Ok((a, b)),
                _ => bad("device node without device numbers"),
            }
        };
        let result = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                tree.apply(&comps, NewEntry::File(&mut e), meta, index)
            }
            tar::EntryType::Directory => tree.apply(&comps, NewEntry::Dir, meta, index),
            tar::EntryType::Symlink => match fields.link {
                Some(target) => tree.apply(&comps, NewEntry::Symlink(target), meta, index),
                None => bad("symlink without a target"),
            },
            tar::EntryType::Link => match fields.link.as_deref().map(clean_path) {
                Some(Ok(target)) => tree.apply(&comps, NewEntry::HardLink(target), meta, index),
                Some(Err(r)) => Err(r),
                None => bad("hard link without a target"),
            },
            tar::EntryType::Char => dev().and_then(|(major, minor)| {
                tree.apply(&comps, NewEntry::Char { major, minor }, meta, index)
            }),
            tar::EntryType::Block => dev().and_then(|(major, minor)| {
                tree.apply(&comps, NewEntry::Block { major, minor }, meta, index)
            }),
            tar::EntryType::Fifo => tree.apply(&comps, NewEntry::Fifo, meta, index),
            other => bad(format!(
                "unsupported entry type {:?}",
                other.as_byte() as char
            )),
        };
        result.map_err(|r| refuse(&name, r))?;
        applied.entries += 1;
    }
    Ok(applied)
}

/// An entry's name, link target and metadata, with GNU long names and PAX
/// records applied.
#[derive(Debug)]
struct EntryFields {
    name: Vec<u8>,
    link: Option<Vec<u8>>,
    meta: Meta,
    pax_size: Option<u64>,
}

impl EntryFields {
    fn read<R: Read>(e: &tar::Entry<'_, R>, ext: &Pending) -> io::Result<Self> {
        let h = e.header();
        let strip_nul = |v: &[u8]| -> Vec<u8> {
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            v[..end].to_vec()
        };
        let mut name = match &ext.long_name {
            Some(n) => strip_nul(n),
            None => h.path_bytes().into_owned(),
        };
        let mut link = match &ext.long_link {
            Some(n) => Some(strip_nul(n)),
            None => h.link_name_bytes().map(|l| l.into_owned()),
        };
        let too_big = |what: &str| io::Error::other(format!("{what} out of range"));
        let mut uid = h.uid()?;
        let mut gid = h.gid()?;
        let mut mtime = i64::try_from(h.mtime()?).map_err(|_| too_big("mtime"))?;
        let mut xattrs = Vec::new();
        let mut pax_size = None;
        if let Some(pax) = &ext.pax {
            for record in tar::PaxExtensions::new(pax) {
                let record = record?;
                let key = record.key_bytes();
                let value = record.value_bytes();
                let number = || -> io::Result<u64> {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| io::Error::other("bad number in PAX header"))
                };
                match key {
                    b"path" => name = value.to_vec(),
                    b"linkpath" => link = Some(value.to_vec()),
                    b"uid" => uid = number()?,
                    b"gid" => gid = number()?,
                    b"size" => pax_size = Some(number()?),
                    b"mtime" => {
                        // Seconds, maybe with a fraction.
                        let s = std::str::from_utf8(value).unwrap_or("");
                        let whole = s.split('.').next().unwrap_or("");
                        if let Ok(t) = whole.parse::<i64>() {
                            mtime = t;
                        }
                    }
                    _ => {
                        if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                            if let Ok(attr) = std::str::from_utf8(attr) {
                                xattrs.push((attr.to_owned(), value.to_vec()));
                            }
                        }
                    }
                }
            }
        }
        let meta = Meta {
            uid: u32::try_from(uid).map_err(|_| too_big("uid"))?,
            gid: u32::try_from(gid).map_err(|_| too_big("gid"))?,
            perm: h.mode()? & 0o7777,
            mtime,
            xattrs,
        };
        Ok(Self {
            name,
            link,
            meta,
            pax_size,
        })
    }
}

/// Where an extra file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraSource {
    /// A file on the host, copied (symlinks on the host are followed).
    Path(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// A file banger adds on top of the layers (its agent, config files). It
/// replaces whatever the layers put at `guest_path`; missing parent
/// directories are created `0755 root:root`; symlinks among the parents
/// are followed inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    /// Absolute path in the guest: `/usr/local/bin/banger-agent`.
    pub guest_path: String,
    pub source: ExtraSource,
    /// Permission bits (`0o755`), setuid and friends allowed.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Applies the extra files as a layer of their own, number `layer`.
pub(crate) fn apply_extra(
    tree: &mut Tree,
    layer: usize,
    file: &ExtraFile,
) -> Result<(), RootDiskError> {
    let bad_extra = |reason: String| RootDiskError::BadExtraFile {
        guest_path: file.guest_path.clone(),
        reason,
    };
    if !file.guest_path.starts_with('/') {
        return Err(bad_extra("not an absolute path".into()));
    }
    let comps = match clean_path(file.guest_path.as_bytes()) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => return Err(bad_extra("is the image root".into())),
        Err(Refusal::Bad(r)) => return Err(bad_extra(r)),
        Err(Refusal::Io(source)) => {
            return Err(RootDiskError::ExtraFile {
                guest_path: file.guest_path.clone(),
                source,
            });
        }
    };
    if comps.last().is_some_and(|n| n.starts_with(b".wh.")) {
        return Err(bad_extra("whiteout names are reserved".into()));
    }
    let meta = Meta {
        uid: file.uid,
        gid: file.gid,
        perm: file.mode & 0o7777,
        mtime: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0)),
        xattrs: Vec::new(),
    };
    let io_err = |source| RootDiskError::ExtraFile {
        guest_path: file.guest_path.clone(),
        source,
    };
    let result = match &file.source {
        ExtraSource::Bytes(b) => tree.apply(&comps, NewEntry::File(&mut b.as_slice()), meta, layer),
        ExtraSource::Path(p) => {
            let mut f = fs::File::open(p).map_err(io_err)?;
            tree.apply(&comps, NewEntry::File(&mut f), meta, layer)
        }
    };
    result.map_err(|r| match r {
        Refusal::Bad(reason) => bad_extra(reason),
        Refusal::Io(source) => io_err(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(p: &str) -> Result<Vec<String>, String> {
        match clean_path(p.as_bytes()) {
            Ok(c) => Ok(c
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()),
            Err(Refusal::Bad(r)) => Err(r),
            Err(Refusal::Io(e)) => Err(e.to_string()),
        }
    }

    #[test]
    fn paths_are_cleaned_and_kept_inside() {
        assert_eq!(clean("./etc//passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(clean("/abs/x").unwrap(), ["abs", "x"]);
        assert_eq!(clean("a/../b").unwrap(), ["b"]);
        assert!(clean("./").unwrap().is_empty());
        assert!(clean("../x").unwrap_err().contains("leaves the image root"));
        assert!(clean("a/../../x").is_err());
        assert!(clean("a\0b").unwrap_err().contains("NUL"));
    }

    #[test]
    fn media_types() {
        use LayerCompression as C;
        let m = LayerCompression::from_media_type;
        assert_eq!(m("application/vnd.oci.image.layer.v1.tar"), Some(C::None));
        assert_eq!(
            m("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(C::Gzip)
        );
        assert_eq!(
            m("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(C::Gzip)
        );
        assert_eq!(
            m("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(C::Zstd)
        );
        assert_eq!(m("application/vnd.oci.image.config.v1+json"), None);
    }

    #[test]
    fn symlinks_in_parents_are_followed_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(dir.path());
        let comps = |p: &str| clean_path(p.as_bytes()).unwrap();
        let meta = Meta::implicit_dir();
        tree.apply(&comps("usr/lib"), NewEntry::Dir, meta.clone(), 0)
            .unwrap();
        tree.apply(
            &comps("lib"),
            NewEntry::Symlink(b"/usr/lib".to_vec()),
            meta.clone(),
            0,
        )
        .unwrap();
        tree.apply(
            &comps("up"),
            NewEntry::Symlink(b"../../../../usr".to_vec()),
            meta.clone(),
            0,
        )
        .unwrap();
        let mut data: &[u8] = b"so";
        tree.apply(
            &comps("lib/x.so"),
            NewEntry::File(&mut data),
            meta.clone(),
            1,
        )
        .unwrap();
        let mut data: &[u8] = b"up";
        tree.apply(&comps("up/y"), NewEntry::File(&mut data), meta.clone(), 1)
            .unwrap();
        assert_eq!(fs::read(dir.path().join("usr/lib/x.so")).unwrap(), b"so");
        assert_eq!(fs::read(dir.path().join("usr/y")).unwrap(), b"up");
        // The symlinks themselves are untouched, and a whiteout through
        // one removes the target's entry.
        assert!(
            fs::symlink_metadata(dir.path().join("lib"))
                .unwrap()
                .is_symlink()
        );
        tree.apply(&comps("lib/.wh.x.so"), NewEntry::Fifo, meta, 2)
            .unwrap();
        assert!(!dir.path().join("usr/lib/x.so").exists());
    }
}
