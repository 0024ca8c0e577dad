//! `WriteTree` and `ReadTree`: directory copies (`vm cp -r`) as tar
//! streams, carried in the same `FileData`/`FileEnd` frames as one file.
//!
//! Why tar and not one `WriteFile`/`ReadFile` per file: a tree is one
//! request and one stream whatever its size (no round trip per file under
//! an emulated CPU), and the format already carries what a copy keeps:
//! directories, modes, symlinks as symlinks, long names. The `tar` crate
//! reads and writes it streaming, never a whole tree in memory.
//!
//! The host is trusted here (the daemon checks what it unpacks from a
//! guest much more strictly: `crates/daemon/src/vms/guest/tree.rs`);
//! still, names with `..` are refused and nothing is written through a
//! symlink that leaves the tree (`tar::Entry::unpack_in`).

use std::fs::{self, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;

use banger_proto::agent::{AgentErrorCode, Frame, Message};

use crate::dispatch::{Out, send_error};
use crate::files::{Chunk, READ_CHUNK, Refusal, Upload, check_path, io_refusal};
use crate::log;

/// Starts `WriteTree`: checks the paths, makes the tree's top and starts
/// the unpacking thread. Replies an error (and returns `None`) when it
/// cannot.
pub(crate) fn start_unpack(id: u64, path: &str, name: &str, out: &Out) -> Option<Upload> {
    let started = (|| -> Result<Upload, Refusal> {
        let root = tree_root(&check_path(path)?, name)?;
        match fs::symlink_metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err((
                    AgentErrorCode::BadRequest,
                    format!("{} exists and is not a directory", root.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&root).map_err(|e| io_refusal("create", &root, &e))?;
            }
            Err(e) => return Err(io_refusal("stat", &root, &e)),
        }
        let (tx, rx) = mpsc::sync_channel::<Chunk>(0);
        let out2 = out.clone();
        let root2 = root.clone();
        crate::spawn("write-tree", move || run_unpack(id, &root2, rx, &out2))
            .map_err(|e| (AgentErrorCode::Failed, format!("start a thread: {e}")))?;
        Ok(Upload::new(tx))
    })();
    match started {
        Ok(u) => Some(u),
        Err((code, msg)) => {
            log!("write tree {id}: {msg}");
            send_error(out, Some(id), code, msg);
            None
        }
    }
}

/// The tree's top: `path/name` when `path` is a directory, else `path`
/// (whose parent must be one).
fn tree_root(path: &Path, name: &str) -> Result<PathBuf, Refusal> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err((
            AgentErrorCode::BadRequest,
            format!("bad directory name {name:?}"),
        ));
    }
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(path.join(name)),
        Ok(_) => Err((
            AgentErrorCode::BadRequest,
            format!("{} exists and is not a directory", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            match fs::metadata(parent) {
                Ok(m) if m.is_dir() => Ok(path.to_owned()),
                Ok(_) => Err((
                    AgentErrorCode::BadRequest,
                    format!("{} is not a directory", parent.display()),
                )),
                Err(e) => Err(io_refusal("directory", parent, &e)),
            }
        }
        Err(e) => Err(io_refusal("stat", path, &e)),
    }
}

fn run_unpack(id: u64, root: &Path, rx: mpsc::Receiver<Chunk>, out: &Out) {
    let mut reader = ChunkReader::new(rx);
    match unpack(root, &mut reader) {
        Ok((entries, bytes)) => {
            // What follows the archive's end (padding) up to FileEnd.
            if reader.drain().is_err() {
                log!("write tree {id}: {} abandoned", root.display());
                return;
            }
            log!(
                "write tree {id}: {} ({entries} entries, {bytes} bytes)",
                root.display()
            );
            out.send(Frame::new(Message::TreeDone {
                id,
                root: root.display().to_string(),
                entries,
                bytes,
            }));
        }
        Err((code, msg)) => {
            log!("write tree {id}: {msg}");
            send_error(out, Some(id), code, msg);
            // Dropping the reader drops the channel: the rest of the
            // stream is discarded by the dispatcher.
        }
    }
}

/// Unpacks the stream into `root`: (entries, bytes of file contents).
fn unpack(root: &Path, reader: &mut ChunkReader) -> Result<(u64, u64), Refusal> {
    let bad = |e: io::Error| (AgentErrorCode::Failed, format!("read the tar stream: {e}"));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut root_mode = None;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err((
                AgentErrorCode::BadRequest,
                format!("refusing the name {} in the tree", path.display()),
            ));
        }
        let kind = entry.header().entry_type();
        if path.components().all(|c| c == Component::CurDir) {
            if kind.is_dir() {
                root_mode = entry.header().mode().ok();
                entries += 1;
            }
            continue;
        }
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        entry
            .unpack_in(root)
            .map_err(|e| io_refusal("write", &root.join(&path), &e))?;
        entries += 1;
        if kind.is_file() {
            bytes += size;
        }
    }
    if let Some(mode) = root_mode {
        fs::set_permissions(root, Permissions::from_mode(mode & 0o7777))
            .map_err(|e| io_refusal("chmod", root, &e))?;
    }
    Ok((entries, bytes))
}

/// Reads the chunks the dispatcher hands over; `End` is the end of the
/// stream, a dropped sender an abandoned one (an error).
struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        Self {
            rx,
            chunk: Vec::new(),
            at: 0,
            ended: false,
        }
    }

    /// Reads (and drops) the rest of the stream up to its end.
    fn drain(&mut self) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(d)) => {
                    self.chunk = d;
                    self.at = 0;
                }
                Ok(Chunk::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the copy was abandoned",
                    ));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Starts `ReadTree` in a thread of its own: `FileData` chunks of a tar
/// stream, then `FileEnd` (or one `Error`).
pub(crate) fn start_pack(id: u64, path: String, out: &Out) {
    let out2 = out.clone();
    let started = crate::spawn("read-tree", move || {
        if let Err((code, msg)) = pack(id, &path, &out2) {
            log!("read tree {id}: {msg}");
            send_error(&out2, Some(id), code, msg);
        }
    });
    if let Err(e) = started {
        send_error(
            out,
            Some(id),
            AgentErrorCode::Failed,
            format!("start a thread: {e}"),
        );
    }
}

fn pack(id: u64, path: &str, out: &Out) -> Result<(), Refusal> {
    let top = check_path(path)?;
    // The top may be a symlink to a directory (followed, as `cp -r`
    // follows the source named on its command line); nothing below it.
    let meta = fs::metadata(&top).map_err(|e| io_refusal("stat", &top, &e))?;
    if !meta.is_dir() {
        return Err((
            AgentErrorCode::NotDirectory,
            format!("{} is not a directory", top.display()),
        ));
    }
    let mut builder = tar::Builder::new(FrameWriter {
        id,
        out: out.clone(),
        buf: Vec::with_capacity(READ_CHUNK),
        sent: 0,
    });
    builder.follow_symlinks(false);
    let mut skipped = 0u64;
    let failed = |e: io::Error| io_refusal("read", &top, &e);
    let mut header = tar::Header::new_gnu();
    header.set_metadata(&meta);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    builder
        .append_data(&mut header, ".", io::empty())
        .map_err(failed)?;
    walk(&mut builder, &top, Path::new(""), &mut skipped)?;
    let mut w = builder.into_inner().map_err(failed)?;
    w.flush().map_err(failed)?;
    out.send(Frame::new(Message::FileEnd { id }));
    log!(
        "read tree {id}: {} ({} bytes of tar, {skipped} left out)",
        top.display(),
        w.sent
    );
    Ok(())
}

/// Appends what `dir` holds, names sorted, directories recursively;
/// symlinks as symlinks; FIFOs and devices as headers alone; sockets are
/// left out.
fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    skipped: &mut u64,
) -> Result<(), Refusal> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io_refusal("list", dir, &e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| io_refusal("list", dir, &e))?;
    names.sort();
    for name in names {
        let abs = dir.join(&name);
        let name_in = rel.join(&name);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            // Gone since the listing: as if it had never been there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_refusal("stat", &abs, &e)),
        };
        let ft = meta.file_type();
        if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
            // FIFOs and devices as a header alone, for the host to count
            // as left out; a socket has no tar type.
            let kind = if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                *skipped += 1;
                continue;
            };
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&meta);
            header.set_entry_type(kind);
            header.set_size(0);
            b.append_data(&mut header, &name_in, io::empty())
                .map_err(|e| io_refusal("read", &abs, &e))?;
            continue;
        }
        b.append_path_with_name(&abs, &name_in)
            .map_err(|e| io_refusal("read", &abs, &e))?;
        if ft.is_dir() {
            walk(b, &abs, &name_in, skipped)?;
        }
    }
    Ok(())
}

/// Sends what the tar builder writes as `FileData` frames of at most
/// [`READ_CHUNK`] bytes.
struct FrameWriter {
    id: u64,
    out: Out,
    buf: Vec<u8>,
    sent: u64,
}

impl FrameWriter {
    fn send_buf(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(READ_CHUNK));
        self.sent += body.len() as u64;
        self.out
            .send(Frame::with_body(Message::FileData { id: self.id }, body));
    }
}

impl Write for FrameWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(READ_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == READ_CHUNK {
            self.send_buf();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_is_inside_an_existing_directory_or_the_path_itself() {
        let d = tempfile_dir();
        assert_eq!(tree_root(&d, "src").unwrap(), d.join("src"));
        assert_eq!(tree_root(&d.join("new"), "src").unwrap(), d.join("new"));
        assert_eq!(
            tree_root(&d.join("no/such"), "src").unwrap_err().0,
            AgentErrorCode::NotFound
        );
        for bad in ["", ".", "..", "a/b"] {
            assert_eq!(
                tree_root(&d, bad).unwrap_err().0,
                AgentErrorCode::BadRequest
            );
        }
        fs::write(d.join("file"), b"x").unwrap();
        assert_eq!(
            tree_root(&d.join("file"), "src").unwrap_err().0,
            AgentErrorCode::BadRequest
        );
        let _ = fs::remove_dir_all(&d);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "banger-agent-tree-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }
}
