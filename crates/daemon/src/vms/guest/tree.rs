//! Directory copies (`vm cp -r`) between the host and the guest.
//!
//! Design: one agent request per tree (`WriteTree`/`ReadTree`,
//! capability `tree`, docs/agent.md) whose contents are a tar stream in
//! the usual `FileData` frames. Per-file calls over the existing
//! `WriteFile`/`ReadFile` would need new requests anyway (to list a guest
//! directory, make directories and symlinks) and a round trip per file,
//! slow under an emulated CPU; tar already carries what a copy keeps
//! (directories, modes, symlinks as symlinks, long names) and the `tar`
//! crate reads and writes it streaming. An agent without the capability
//! gets a clear "too old" error; one-file copies are unchanged.
//!
//! A guest is untrusted, so what comes from it is unpacked here by hand,
//! not by `tar::Archive::unpack`: every name must be relative, without
//! `..`; every directory on the way to an entry must be a real directory
//! inside the destination (never a symlink: a guest's symlink is created
//! as a symlink and never followed); files are written to a temporary
//! name created with `O_EXCL | O_NOFOLLOW` and renamed over the entry;
//! modes keep their permission bits only (no setuid, setgid or sticky bit
//! from a guest: the entries that had one are counted and the first
//! [`MAX_STRIPPED_LISTED`] named in the result); hard links, devices,
//! FIFOs and the like are left out and counted. The free space reserve
//! (`reserve.rs`) is checked before and while writing. A copy that fails
//! midway removes the top directory if it made it; into a directory
//! that already existed, it leaves what it wrote so far.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::agent::{self, AgentErrorCode, Frame, Message, capability};
use banger_proto::vm::CpResult;
use tokio::sync::mpsc;

use super::cp::HostFile;
use super::reserve::{Reserve, ReserveGuard};
use super::{CALL_TIMEOUT, GuestError};

/// Entries that lost a setuid, setgid or sticky bit named in a result
/// (all are counted).
pub(super) const MAX_STRIPPED_LISTED: usize = 16;
use crate::agent::{AgentConn, AgentError};

impl super::Guest {
    /// Sends `files` of the host directory `host` (relative paths) into
    /// the guest directory `guest_dir` of the running VM `name`, made
    /// (with its parents) when missing, overwriting files already there.
    pub(crate) async fn push_files(
        &self,
        name: &str,
        host: &Path,
        files: Vec<PathBuf>,
        guest_dir: &str,
    ) -> Result<CpResult, GuestError> {
        let (vm, conn) = self.agent_for(name).await?;
        let guest = Path::new(guest_dir);
        let (Some(parent), Some(top)) = (guest.parent(), guest.file_name()) else {
            return Err(GuestError::GuestNamesNoFile(guest_dir.to_owned()));
        };
        if parent != Path::new("/") {
            self.run_checked(
                &vm.id,
                vec![
                    "mkdir".into(),
                    "-p".into(),
                    "--".into(),
                    parent.display().to_string(),
                ],
                Duration::from_secs(60),
            )
            .await?;
        }
        send_tree(
            &vm.name,
            &conn,
            host,
            Some(files),
            &parent.display().to_string(),
            top.to_string_lossy().into_owned(),
        )
        .await
    }

    /// Fetches the guest directory `guest_dir` of the running VM `name`
    /// into the host path `dest` (which must not exist), unpacked as
    /// untrusted (`unpack_untrusted`), within the free space reserve.
    pub(crate) async fn pull_dir(
        &self,
        name: &str,
        guest_dir: &str,
        dest: &Path,
    ) -> Result<CpResult, GuestError> {
        let (vm, conn) = self.agent_for(name).await?;
        from_guest(&vm.name, &conn, guest_dir, dest, self.cp_reserve)
            .await?
            .ok_or_else(|| GuestError::GuestNotDirectory(guest_dir.to_owned()))
    }
}

/// Copies the host directory `host` into the guest: to `guest/NAME` when
/// `guest` is a directory there, else to `guest` itself.
pub(super) async fn to_guest(
    vm: &str,
    conn: &AgentConn,
    host: &Path,
    guest: &str,
) -> Result<CpResult, GuestError> {
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| GuestError::HostNamesNoFile(host.to_owned()))?;
    send_tree(vm, conn, host, None, guest, name).await
}

/// Sends the host directory `host` (or only `files` of it, relative
/// paths, with the directories on their way) as the guest tree named
/// `name` in the guest directory `guest` (or `guest` itself when it is
/// not a directory there), overwriting what is there.
pub(super) async fn send_tree(
    vm: &str,
    conn: &AgentConn,
    host: &Path,
    files: Option<Vec<PathBuf>>,
    guest: &str,
    name: String,
) -> Result<CpResult, GuestError> {
    conn.require(capability::TREE, "directory copy")
        .map_err(|e| GuestError::agent(vm, e))?;
    let mode = fs::metadata(host)
        .map_err(|source| GuestError::NoHostFile {
            path: host.to_owned(),
            source,
        })?
        .mode()
        & 0o7777;
    let guest_path = match guest.trim_end_matches('/') {
        "" => "/".to_owned(),
        g => g.to_owned(),
    };
    let (id, mut rx) = conn
        .start(
            |id| Message::WriteTree {
                id,
                path: guest_path.clone(),
                name: name.clone(),
            },
            Vec::new(),
        )
        .await
        .map_err(|e| GuestError::agent(vm, e))?;
    let (tx, mut chunks) = mpsc::channel::<Vec<u8>>(4);
    let top = host.to_owned();
    let packing = tokio::task::spawn_blocking(move || match files {
        None => pack(&top, ChannelWriter::new(tx)),
        Some(files) => pack_files(&top, &files, ChannelWriter::new(tx)),
    });
    let mut refused = None;
    while let Some(chunk) = chunks.recv().await {
        if let Ok(Some(Frame {
            msg: Message::Error { code, message, .. },
            ..
        })) = tokio::time::timeout(Duration::ZERO, rx.recv()).await
        {
            refused = Some(AgentError::Refused { code, message });
            break;
        }
        conn.send(Frame::with_body(Message::FileData { id }, chunk))
            .await
            .map_err(|e| GuestError::agent(vm, e))?;
    }
    drop(chunks);
    let packed = packing.await.map_err(|e| GuestError::Task("pack", e))?;
    if let Some(source) = refused {
        conn.finish(id);
        return Err(GuestError::agent(vm, source));
    }
    // Ended either way, so the agent's session ends too; a failed pack
    // is reported whatever the agent answers.
    conn.send(Frame::new(Message::FileEnd { id }))
        .await
        .map_err(|e| GuestError::agent(vm, e))?;
    let reply = tokio::time::timeout(Duration::from_secs(120), rx.recv()).await;
    conn.finish(id);
    let skipped = packed?;
    match reply {
        Ok(Some(Frame {
            msg:
                Message::TreeDone {
                    root,
                    entries,
                    bytes,
                    ..
                },
            ..
        })) => Ok(CpResult {
            bytes,
            mode,
            destination: root,
            entries: Some(entries),
            skipped: Some(skipped),
            stripped: None,
            stripped_paths: Vec::new(),
        }),
        Ok(Some(Frame {
            msg: Message::Error { code, message, .. },
            ..
        })) => Err(GuestError::agent(vm, AgentError::Refused { code, message })),
        Ok(Some(other)) => Err(GuestError::agent(
            vm,
            AgentError::Unexpected(format!("{:?}", other.msg)),
        )),
        Ok(None) => Err(GuestError::agent(vm, AgentError::Lost)),
        Err(_) => Err(GuestError::agent(vm, AgentError::Timeout(120))),
    }
}

/// Copies the guest directory `guest` to the host: into `host/NAME` when
/// `host` is a directory, else to `host` itself. `Ok(None)` when `guest`
/// is not a directory (the caller copies it as a file).
pub(super) async fn from_guest(
    vm: &str,
    conn: &AgentConn,
    guest: &str,
    host: &Path,
    reserve: Reserve,
) -> Result<Option<CpResult>, GuestError> {
    conn.require(capability::TREE, "directory copy")
        .map_err(|e| GuestError::agent(vm, e))?;
    let name = Path::new(guest)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| GuestError::GuestNamesNoFile(guest.to_owned()))?;
    let root = host_root(host, &name)?;
    let (id, mut rx) = conn
        .start(
            |id| Message::ReadTree {
                id,
                path: guest.to_owned(),
            },
            Vec::new(),
        )
        .await
        .map_err(|e| GuestError::agent(vm, e))?;
    // Nothing is made on the host before the guest said yes.
    let first = match tokio::time::timeout(CALL_TIMEOUT, rx.recv()).await {
        Ok(Some(Frame {
            msg: Message::FileData { .. },
            body,
        })) => body,
        Ok(Some(Frame {
            msg:
                Message::Error {
                    code: AgentErrorCode::NotDirectory,
                    ..
                },
            ..
        })) => {
            conn.finish(id);
            return Ok(None);
        }
        Ok(Some(Frame {
            msg: Message::Error { code, message, .. },
            ..
        })) => {
            conn.finish(id);
            return Err(GuestError::agent(vm, AgentError::Refused { code, message }));
        }
        Ok(Some(other)) => {
            conn.finish(id);
            return Err(GuestError::agent(
                vm,
                AgentError::Unexpected(format!("{:?}", other.msg)),
            ));
        }
        Ok(None) => return Err(GuestError::agent(vm, AgentError::Lost)),
        Err(_) => {
            conn.finish(id);
            return Err(GuestError::agent(
                vm,
                AgentError::Timeout(CALL_TIMEOUT.as_secs()),
            ));
        }
    };
    // The size of a tree is not known: only a filesystem already at its
    // reserve is refused here; the unpacker checks as it writes.
    let parent = root
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let made = reserve
        .check_before(&parent, 0)
        .and_then(|()| make_root(&root));
    let made = match made {
        Ok(made) => made,
        Err(e) => {
            conn.finish(id);
            return Err(e);
        }
    };
    let (tx, wrx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let into = root.clone();
    let guard = reserve.guard(&parent);
    let unpacking =
        tokio::task::spawn_blocking(move || unpack_untrusted(ChunkReader::new(wrx), &into, guard));
    let failure = super::cp::forward_file_data(vm, &mut rx, &tx, Some(first))
        .await
        .err();
    conn.finish(id);
    // Nothing more is read for this request (crate::agent).
    drop(rx);
    drop(tx);
    let unpacked = unpacking.await.map_err(|e| GuestError::Task("unpack", e))?;
    let unpacked = match (failure, unpacked) {
        // The unpacker stopped first: its reason, not "writer gone".
        (Some(GuestError::HostWriterGone), Err(e)) | (None, Err(e)) => Err(e),
        (Some(e), _) => Err(e),
        (None, Ok(u)) => Ok(u),
    };
    let unpacked = match unpacked {
        Ok(u) => u,
        Err(e) => {
            if made {
                // Nothing half-made is left behind (never follows symlinks).
                let root = root.clone();
                let _ = tokio::task::spawn_blocking(move || fs::remove_dir_all(root)).await;
            }
            return Err(e);
        }
    };
    Ok(Some(CpResult {
        bytes: unpacked.bytes,
        mode: unpacked.root_mode.unwrap_or(0o755),
        destination: root.display().to_string(),
        entries: Some(unpacked.entries),
        skipped: Some(unpacked.skipped),
        stripped: (unpacked.stripped > 0).then_some(unpacked.stripped),
        stripped_paths: unpacked
            .stripped_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    }))
}

/// Where a guest directory named `name` lands: in `host` if it is a
/// directory, else `host` itself (which must not be a symlink or a file;
/// its parent must exist). Nothing is created yet.
fn host_root(host: &Path, name: &str) -> Result<PathBuf, GuestError> {
    if name == "." || name == ".." || name.contains('/') {
        return Err(GuestError::BadDestination(name.to_owned()));
    }
    let root = match fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => host.join(name),
        Ok(m) if m.file_type().is_symlink() => return Err(GuestError::Symlink(host.to_owned())),
        Ok(_) => return Err(GuestError::HostNotDirectory(host.to_owned())),
        Err(_) => host.to_owned(),
    };
    match fs::symlink_metadata(&root) {
        Ok(m) if m.is_dir() => Ok(root),
        Ok(m) if m.file_type().is_symlink() => Err(GuestError::Symlink(root)),
        Ok(_) => Err(GuestError::HostNotDirectory(root)),
        Err(_) => Ok(root),
    }
}

/// Makes the top directory (private until its mode is set at the end), or
/// takes an existing real one; `true` if it made it.
fn make_root(root: &Path) -> Result<bool, GuestError> {
    match DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => Ok(false),
            Ok(m) if m.file_type().is_symlink() => Err(GuestError::Symlink(root.to_owned())),
            _ => Err(GuestError::HostNotDirectory(root.to_owned())),
        },
        Err(e) => Err(GuestError::host_file("create", root)(e)),
    }
}

/// What [`unpack_untrusted`] wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// The top directory's mode, as sent.
    pub root_mode: Option<u32>,
    /// Entries that lost a setuid, setgid or sticky bit...
    pub stripped: u64,
    /// ...and the first [`MAX_STRIPPED_LISTED`] of them.
    pub stripped_paths: Vec<PathBuf>,
}

/// Unpacks a tar stream from a guest into the existing directory `root`
/// without ever writing outside it (see the module doc).
pub(super) fn unpack_untrusted(
    reader: impl Read,
    root: &Path,
    mut reserve: ReserveGuard,
) -> Result<Unpacked, GuestError> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Unpacked::default();
    // Modes of the directories made, set at the end (a read-only one
    // would refuse its own contents).
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(GuestError::TreeStream)? {
        let mut entry = entry.map_err(GuestError::TreeStream)?;
        let raw = entry.path_bytes().into_owned();
        let rel = relative_name(&raw)?;
        let kind = entry.header().entry_type();
        let raw_mode = entry.header().mode().map_err(GuestError::TreeStream)?;
        let mode = super::cp::host_mode(raw_mode);
        if raw_mode & 0o7000 != 0 && (kind.is_dir() || kind.is_file()) {
            out.stripped += 1;
            if out.stripped_paths.len() < MAX_STRIPPED_LISTED {
                out.stripped_paths.push(if rel.as_os_str().is_empty() {
                    root.to_owned()
                } else {
                    root.join(&rel)
                });
            }
        }
        if rel.as_os_str().is_empty() {
            if !kind.is_dir() {
                return Err(GuestError::TreeName(format!(
                    "{} (the top is not a directory)",
                    String::from_utf8_lossy(&raw)
                )));
            }
            out.root_mode = Some(mode);
            dirs.push((root.to_owned(), mode));
            out.entries += 1;
            continue;
        }
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            out.skipped += 1;
            continue;
        }
        check_parents(root, &rel)?;
        let dest = root.join(&rel);
        if kind.is_dir() {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(GuestError::HostNotDirectory(dest)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                    .mode(0o700)
                    .create(&dest)
                    .map_err(GuestError::host_file("create", &dest))?,
                Err(e) => return Err(GuestError::host_file("stat", &dest)(e)),
            }
            dirs.push((dest, mode));
        } else if kind.is_file() {
            refuse_directory(&dest)?;
            let (dir, name) = split(&dest)?;
            let mut file = HostFile::create(&dir, &name, mode)?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = entry.read(&mut buf).map_err(GuestError::TreeStream)?;
                if n == 0 {
                    break;
                }
                reserve.before_write(n)?;
                file.write(&buf[..n])?;
                out.bytes += n as u64;
            }
            file.finish(&name, false)?;
        } else {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| GuestError::TreeName(String::from_utf8_lossy(&raw).into_owned()))?
                .into_owned();
            refuse_directory(&dest)?;
            match fs::remove_file(&dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(GuestError::host_file("replace", &dest)(e)),
            }
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest)
                .map_err(GuestError::host_file("symlink", &dest))?;
        }
        out.entries += 1;
    }
    for (dir, mode) in dirs.iter().rev() {
        // Only what is still a real directory (never through a symlink).
        if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            fs::set_permissions(dir, Permissions::from_mode(*mode))
                .map_err(GuestError::host_file("chmod", dir))?;
        }
    }
    Ok(out)
}

/// A guest's entry name as a relative path of plain components (empty:
/// the top itself); absolute names and `..` are refused.
fn relative_name(raw: &[u8]) -> Result<PathBuf, GuestError> {
    let refuse = || GuestError::TreeName(String::from_utf8_lossy(raw).into_owned());
    if raw.first() == Some(&b'/') || raw.contains(&0) {
        return Err(refuse());
    }
    let mut rel = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(refuse()),
            p => rel.push(OsStr::from_bytes(p)),
        }
    }
    Ok(rel)
}

/// Every directory between `root` and the entry `rel` is a real
/// directory (not a symlink, not a file).
fn check_parents(root: &Path, rel: &Path) -> Result<(), GuestError> {
    let mut at = root.to_owned();
    let parents: Vec<_> = rel.components().collect();
    for part in &parents[..parents.len().saturating_sub(1)] {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => return Err(GuestError::Symlink(at)),
            Ok(_) => return Err(GuestError::HostNotDirectory(at)),
            Err(e) => return Err(GuestError::host_file("stat", &at)(e)),
        }
    }
    Ok(())
}

/// A file or symlink never replaces a directory.
fn refuse_directory(dest: &Path) -> Result<(), GuestError> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(GuestError::HostIsDirectory(dest.to_owned())),
        _ => Ok(()),
    }
}

fn split(dest: &Path) -> Result<(PathBuf, String), GuestError> {
    match (dest.parent(), dest.file_name()) {
        (Some(d), Some(n)) => Ok((d.to_owned(), n.to_string_lossy().into_owned())),
        _ => Err(GuestError::HostNamesNoFile(dest.to_owned())),
    }
}

/// Feeds the blocking unpacker the chunks the async side receives; a
/// closed channel is the end of the stream.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Packs the host directory `top` as a tar stream: `.` for the top, then
/// everything under it, names sorted; symlinks as symlinks; sockets,
/// devices and FIFOs left out (their count is returned).
pub(super) fn pack(top: &Path, writer: impl Write) -> Result<u64, GuestError> {
    let mut b = begin_tar(top, writer)?;
    let mut skipped = 0;
    walk(&mut b, top, Path::new(""), &mut skipped)?;
    end_tar(b, top)?;
    Ok(skipped)
}

/// A tar stream over `writer` that keeps symlinks as symlinks, begun
/// with `.`: the directory `top` itself (its mode and times).
fn begin_tar<W: Write>(top: &Path, writer: W) -> Result<tar::Builder<W>, GuestError> {
    let meta = fs::metadata(top).map_err(GuestError::host_file("read", top))?;
    let mut b = tar::Builder::new(writer);
    b.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_metadata(&meta);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    b.append_data(&mut header, ".", io::empty())
        .map_err(GuestError::host_file("read", top))?;
    Ok(b)
}

/// Ends the tar stream and flushes what is left of it.
fn end_tar<W: Write>(b: tar::Builder<W>, top: &Path) -> Result<(), GuestError> {
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(GuestError::host_file("read", top))
}

/// Packs `files` (relative to `top`, as a workspace's file set lists
/// them) as a tar stream: `.` for the top, each directory on the way to
/// a file once, before it; symlinks as symlinks; a listed file gone since
/// the listing, or not a file or symlink, is left out and counted.
pub(super) fn pack_files(
    top: &Path,
    files: &[PathBuf],
    writer: impl Write,
) -> Result<u64, GuestError> {
    let mut b = begin_tar(top, writer)?;
    let mut skipped = 0;
    let mut dirs = std::collections::HashSet::new();
    for rel in files {
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            skipped += 1;
            continue;
        }
        let abs = top.join(rel);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_file() || m.file_type().is_symlink() => {}
            Ok(_) => {
                skipped += 1;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                skipped += 1;
                continue;
            }
            Err(e) => return Err(GuestError::host_file("stat", &abs)(e)),
        }
        let mut parents: Vec<&Path> = rel.ancestors().skip(1).collect();
        parents.retain(|p| !p.as_os_str().is_empty());
        for dir in parents.into_iter().rev() {
            if dirs.insert(dir.to_owned()) {
                let d = top.join(dir);
                b.append_path_with_name(&d, dir)
                    .map_err(GuestError::host_file("read", &d))?;
            }
        }
        b.append_path_with_name(&abs, rel)
            .map_err(GuestError::host_file("read", &abs))?;
    }
    end_tar(b, top)?;
    Ok(skipped)
}

fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    skipped: &mut u64,
) -> Result<(), GuestError> {
    let list = |e| GuestError::host_file("list", dir)(e);
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(list)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(list)?;
    names.sort();
    for name in names {
        let abs = dir.join(&name);
        let name_in = rel.join(&name);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(GuestError::host_file("stat", &abs)(e)),
        };
        let ft = meta.file_type();
        if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
            *skipped += 1;
            continue;
        }
        b.append_path_with_name(&abs, &name_in)
            .map_err(GuestError::host_file("read", &abs))?;
        if ft.is_dir() {
            walk(b, &abs, &name_in, skipped)?;
        }
    }
    Ok(())
}

/// Hands what the tar builder writes to the async side in chunks of at
/// most one frame body.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(agent::MAX_BODY_BYTES),
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(agent::MAX_BODY_BYTES));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the copy stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(agent::MAX_BODY_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == agent::MAX_BODY_BYTES {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// (name, type, mode, contents or link target).
    type RawEntry<'a> = (&'a str, tar::EntryType, u32, &'a [u8]);

    /// A tar stream of raw entries, names written as given (the builder
    /// would refuse some).
    fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, mode, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            if kind.is_symlink() {
                h.set_size(0);
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
            } else {
                h.set_size(data.len() as u64);
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            if !kind.is_symlink() {
                out.extend_from_slice(data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    use tar::EntryType as T;

    fn no_reserve() -> ReserveGuard {
        Reserve(0).guard(Path::new("/"))
    }

    #[test]
    fn a_tree_round_trips_with_modes_and_symlinks() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("a/b")).unwrap();
        fs::write(s.join("a/b/f.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(s.join("a/b/f.sh"), Permissions::from_mode(0o750)).unwrap();
        fs::write(s.join("top.txt"), vec![7u8; 300_000]).unwrap();
        symlink("a/b/f.sh", s.join("link")).unwrap();
        symlink("/etc/passwd", s.join("abs-link")).unwrap();
        fs::set_permissions(s.join("a"), Permissions::from_mode(0o711)).unwrap();
        let mut stream = Vec::new();
        assert_eq!(pack(s, &mut stream).unwrap(), 0);

        let dst = tempfile::tempdir().unwrap();
        let root = dst.path().join("copy");
        make_root(&root).unwrap();
        let u = unpack_untrusted(stream.as_slice(), &root, no_reserve()).unwrap();
        assert_eq!(u.bytes, 300_000 + 10);
        assert_eq!(u.entries, 7, "., a, a/b, a/b/f.sh, abs-link, link, top.txt");
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("a/b/f.sh"), 0o750);
        assert_eq!(mode("a"), 0o711);
        assert_eq!(
            fs::read_link(root.join("link")).unwrap(),
            Path::new("a/b/f.sh")
        );
        assert_eq!(
            fs::read_link(root.join("abs-link")).unwrap(),
            Path::new("/etc/passwd"),
            "kept as a symlink, not followed"
        );
        assert_eq!(fs::read(root.join("top.txt")).unwrap(), vec![7u8; 300_000]);
    }

    #[test]
    fn a_guest_cannot_write_outside_the_destination() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let t = |entries: &[RawEntry]| {
            let dst = tempfile::tempdir().unwrap();
            let r = unpack_untrusted(raw_tar(entries).as_slice(), dst.path(), no_reserve());
            (dst, r)
        };
        let target = outside.path().to_str().unwrap().as_bytes();
        let cases: Vec<Vec<RawEntry>> = vec![
            vec![("../victim", T::Regular, 0o644, b"evil")],
            vec![("a/../../victim", T::Regular, 0o644, b"evil")],
            vec![("/tmp/victim", T::Regular, 0o644, b"evil")],
            // A symlink to a directory outside, then a file through it.
            vec![
                ("out", T::Symlink, 0o777, target),
                ("out/victim", T::Regular, 0o644, b"evil"),
            ],
            // A symlink, then a directory through it.
            vec![
                ("out", T::Symlink, 0o777, target),
                ("out/sub", T::Directory, 0o755, b""),
            ],
        ];
        for entries in cases {
            let (_dst, r) = t(&entries);
            assert!(r.is_err(), "{entries:?} was accepted");
        }
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);

        // A file over an existing symlink replaces the symlink, not its
        // target.
        let dst = tempfile::tempdir().unwrap();
        symlink(&victim, dst.path().join("f")).unwrap();
        unpack_untrusted(
            raw_tar(&[("f", T::Regular, 0o644, b"new")]).as_slice(),
            dst.path(),
            no_reserve(),
        )
        .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(dst.path().join("f")).unwrap(), b"new");
    }

    #[test]
    fn special_bits_and_special_files_from_a_guest_are_dropped() {
        let dst = tempfile::tempdir().unwrap();
        let u = unpack_untrusted(
            raw_tar(&[
                (".", T::Directory, 0o1777, b""),
                ("suid", T::Regular, 0o4755, b"x"),
                ("dir", T::Directory, 0o2775, b""),
                ("dev", T::Char, 0o666, b""),
                ("fifo", T::Fifo, 0o666, b""),
                ("hard", T::Link, 0o644, b""),
            ])
            .as_slice(),
            dst.path(),
            no_reserve(),
        )
        .unwrap();
        assert_eq!((u.entries, u.skipped), (3, 3));
        assert_eq!(u.stripped, 3, "., suid and dir");
        assert_eq!(
            u.stripped_paths,
            vec![
                dst.path().to_owned(),
                dst.path().join("suid"),
                dst.path().join("dir")
            ]
        );
        assert_eq!(u.root_mode, Some(0o777));
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dst.path().join("suid")), 0o755);
        assert_eq!(mode(&dst.path().join("dir")), 0o775);
        assert_eq!(mode(dst.path()), 0o777);
        assert!(!dst.path().join("dev").exists());
    }

    #[test]
    fn an_unpack_stops_at_the_reserve_and_leaves_no_partial_file() {
        fn low(_: &Path) -> io::Result<u64> {
            Ok(1 << 20)
        }
        let dst = tempfile::tempdir().unwrap();
        let big = vec![1u8; 3 << 20];
        let e = unpack_untrusted(
            raw_tar(&[("big", T::Regular, 0o644, &big)]).as_slice(),
            dst.path(),
            ReserveGuard::with_free(1 << 30, low),
        )
        .unwrap_err();
        assert!(matches!(e, GuestError::ReserveReached { .. }), "{e:?}");
        assert_eq!(
            fs::read_dir(dst.path()).unwrap().count(),
            0,
            "neither the file nor its temporary name is left"
        );
    }

    #[test]
    fn host_roots() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        assert_eq!(host_root(p, "src").unwrap(), p.join("src"));
        assert_eq!(host_root(&p.join("new"), "src").unwrap(), p.join("new"));
        fs::write(p.join("file"), b"").unwrap();
        assert!(matches!(
            host_root(&p.join("file"), "src"),
            Err(GuestError::HostNotDirectory(_))
        ));
        symlink("/etc", p.join("link")).unwrap();
        assert!(matches!(
            host_root(&p.join("link"), "src"),
            Err(GuestError::Symlink(_))
        ));
        assert!(host_root(p, "..").is_err());
    }
}
