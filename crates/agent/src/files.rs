//! `WriteFile` and `ReadFile`: file copy into and out of the guest,
//! streamed in chunks (never a whole file in memory).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use banger_proto::agent::{AgentErrorCode, Frame, MAX_BODY_BYTES, Message};

use crate::dispatch::{Out, send_error};
use crate::log;

/// Size of the `FileData` chunks the agent sends (at most
/// [`MAX_BODY_BYTES`]; smaller keeps the agent's memory small).
pub const READ_CHUNK: usize = 256 * 1024;

const _: () = assert!(READ_CHUNK <= MAX_BODY_BYTES);

/// Makes temporary names unique within the agent.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) enum Chunk {
    Data(Vec<u8>),
    End,
}

/// An upload in progress: the dispatcher's handle on its writer thread.
/// Dropping every handle without [`Upload::end`] abandons it (the
/// temporary file is removed).
#[derive(Clone)]
pub(crate) struct Upload {
    tx: mpsc::SyncSender<Chunk>,
}

impl Upload {
    /// The handle of a writer thread that receives from `tx`'s channel
    /// (`WriteTree`'s unpacker, `crates/agent/src/tree.rs`).
    pub(crate) fn new(tx: mpsc::SyncSender<Chunk>) -> Self {
        Self { tx }
    }

    /// Hands a chunk to the writer thread (waits while it writes the
    /// previous one: the disk paces the host).
    pub(crate) fn data(&self, body: Vec<u8>) {
        if body.is_empty() {
            return;
        }
        let _ = self.tx.send(Chunk::Data(body));
    }

    /// No more data: the writer completes the file and replies.
    pub(crate) fn end(self) {
        let _ = self.tx.send(Chunk::End);
    }
}

pub(crate) type Refusal = (AgentErrorCode, String);

/// An absolute path without NUL bytes.
pub(crate) fn check_path(path: &str) -> Result<PathBuf, Refusal> {
    if path.is_empty() || !path.starts_with('/') {
        return Err((
            AgentErrorCode::BadRequest,
            format!("{path:?} is not an absolute path"),
        ));
    }
    if path.contains('\0') {
        return Err((
            AgentErrorCode::BadRequest,
            format!("{path:?} contains a NUL byte"),
        ));
    }
    Ok(PathBuf::from(path))
}

pub(crate) fn io_refusal(what: &str, path: &Path, e: &io::Error) -> Refusal {
    let code = match e.kind() {
        io::ErrorKind::NotFound => AgentErrorCode::NotFound,
        _ => AgentErrorCode::Failed,
    };
    (code, format!("{what} {}: {e}", path.display()))
}

/// Starts `WriteFile`: checks the path, creates the temporary file next
/// to it and starts the writer thread. Replies an error (and returns
/// `None`) when it cannot.
pub(crate) fn start_upload(id: u64, path: &str, mode: u32, out: &Out) -> Option<Upload> {
    let started = (|| -> Result<Upload, Refusal> {
        let path = check_path(path)?;
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p.to_owned(), n.to_owned()),
            _ => {
                return Err((
                    AgentErrorCode::BadRequest,
                    format!("{} names no file", path.display()),
                ));
            }
        };
        match fs::metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err((
                    AgentErrorCode::BadRequest,
                    format!("{} is not a directory", parent.display()),
                ));
            }
            Err(e) => return Err(io_refusal("directory", &parent, &e)),
        }
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err((
                AgentErrorCode::BadRequest,
                format!("{} is a directory", path.display()),
            ));
        }
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(&name);
        temp_name.push(format!(".banger-{}-{seq}.tmp", std::process::id()));
        let temp = parent.join(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_refusal("create", &temp, &e))?;
        // A rendezvous: at most the chunk being written and the one
        // handed over exist at once.
        let (tx, rx) = mpsc::sync_channel::<Chunk>(0);
        let job = Writing {
            id,
            path: path.clone(),
            temp: temp.clone(),
            mode: mode & 0o7777,
            parent,
            out: out.clone(),
        };
        if let Err(e) = crate::spawn("write-file", move || job.run(file, rx)) {
            let _ = fs::remove_file(&temp);
            return Err((AgentErrorCode::Failed, format!("start a thread: {e}")));
        }
        Ok(Upload { tx })
    })();
    match started {
        Ok(u) => Some(u),
        Err((code, msg)) => {
            log!("write file {id}: {msg}");
            send_error(out, Some(id), code, msg);
            None
        }
    }
}

struct Writing {
    id: u64,
    path: PathBuf,
    temp: PathBuf,
    mode: u32,
    parent: PathBuf,
    out: Out,
}

impl Writing {
    fn run(self, file: File, rx: mpsc::Receiver<Chunk>) {
        let mut file = Some(file);
        let mut written: u64 = 0;
        loop {
            match rx.recv() {
                Ok(Chunk::Data(bytes)) => {
                    let Some(f) = file.as_mut() else {
                        continue; // failed already: the rest is dropped
                    };
                    match f.write_all(&bytes) {
                        Ok(()) => written += bytes.len() as u64,
                        Err(e) => {
                            file = None;
                            self.fail(&io_refusal("write", &self.temp, &e));
                        }
                    }
                }
                Ok(Chunk::End) => {
                    let Some(f) = file.take() else {
                        return;
                    };
                    match self.complete(f) {
                        Ok(()) => {
                            log!(
                                "write file {}: {} ({written} bytes, mode {:o})",
                                self.id,
                                self.path.display(),
                                self.mode
                            );
                            self.out.send(Frame::new(Message::Done { id: self.id }));
                        }
                        Err(r) => self.fail(&r),
                    }
                    return;
                }
                Err(_) => {
                    if file.is_some() {
                        log!(
                            "write file {}: {} abandoned after {written} bytes",
                            self.id,
                            self.path.display()
                        );
                        let _ = fs::remove_file(&self.temp);
                    }
                    return;
                }
            }
        }
    }

    fn complete(&self, f: File) -> Result<(), Refusal> {
        f.sync_all()
            .map_err(|e| io_refusal("sync", &self.temp, &e))?;
        f.set_permissions(Permissions::from_mode(self.mode))
            .map_err(|e| io_refusal("chmod", &self.temp, &e))?;
        drop(f);
        fs::rename(&self.temp, &self.path).map_err(|e| io_refusal("rename to", &self.path, &e))?;
        // The rename is durable once the directory is synced (best effort:
        // some filesystems refuse fsync on directories).
        if let Ok(d) = File::open(&self.parent) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn fail(&self, (code, msg): &Refusal) {
        log!("write file {}: {msg}", self.id);
        let _ = fs::remove_file(&self.temp);
        send_error(&self.out, Some(self.id), *code, msg.clone());
    }
}

/// Starts `ReadFile` in a thread of its own: `FileInfo`, `FileData`
/// chunks, `FileEnd` (or one `Error`).
pub(crate) fn start_download(id: u64, path: String, out: &Out) {
    let out2 = out.clone();
    let started = crate::spawn("read-file", move || {
        if let Err((code, msg)) = download(id, &path, &out2) {
            log!("read file {id}: {msg}");
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

fn download(id: u64, path: &str, out: &Out) -> Result<(), Refusal> {
    let path = check_path(path)?;
    // Follows a final symlink (fine inside the guest) but only to a
    // regular file: a FIFO or device would block or never end.
    let meta = fs::metadata(&path).map_err(|e| io_refusal("stat", &path, &e))?;
    if meta.is_dir() {
        return Err((
            AgentErrorCode::IsDirectory,
            format!("{} is a directory", path.display()),
        ));
    }
    if !meta.is_file() {
        return Err((
            AgentErrorCode::BadRequest,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut file = OpenOptions::new()
        .read(true)
        // Never blocks in open, should the path change to a FIFO meanwhile.
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(&path)
        .map_err(|e| io_refusal("open", &path, &e))?;
    let meta = file.metadata().map_err(|e| io_refusal("stat", &path, &e))?;
    if !meta.is_file() {
        return Err((
            AgentErrorCode::BadRequest,
            format!("{} is not a regular file", path.display()),
        ));
    }
    out.send(Frame::new(Message::FileInfo {
        id,
        mode: meta.mode() & 0o7777,
        size: meta.len(),
    }));
    let mut buf = vec![0u8; READ_CHUNK];
    let mut sent: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_refusal("read", &path, &e)),
        };
        sent += n as u64;
        out.send(Frame::with_body(
            Message::FileData { id },
            buf[..n].to_vec(),
        ));
    }
    out.send(Frame::new(Message::FileEnd { id }));
    log!("read file {id}: {} ({sent} bytes)", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute() {
        assert!(check_path("/etc/hostname").is_ok());
        assert_eq!(check_path("etc").unwrap_err().0, AgentErrorCode::BadRequest);
        assert_eq!(check_path("").unwrap_err().0, AgentErrorCode::BadRequest);
        assert_eq!(
            check_path("/a\0b").unwrap_err().0,
            AgentErrorCode::BadRequest
        );
    }
}
