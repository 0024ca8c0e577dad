//! File copy between the host and the guest, streamed; a host file is
//! written to a temporary file beside its destination (created with
//! `O_NOFOLLOW`) and renamed over it once complete; it never gets the
//! guest's setuid, setgid or sticky bit (the result lists what lost
//! one), and a copy stops before it eats into the free space reserve
//! (`reserve.rs`). Directories (`recursive`): `tree.rs`.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::agent::{self, Frame, Message};
use banger_proto::vm::{CpParams, CpResult};
use tokio::sync::mpsc;

use super::reserve::Reserve;
use super::{CALL_TIMEOUT, Guest, GuestError};
use crate::agent::{AgentConn, AgentError};

impl Guest {
    /// Copies one file between the host and the VM `p.name` (name or id),
    /// streaming.
    pub async fn cp(&self, p: CpParams) -> Result<CpResult, GuestError> {
        if !p.guest_path.starts_with('/') {
            return Err(GuestError::NotAbsolute {
                side: "guest",
                path: p.guest_path,
            });
        }
        let host = PathBuf::from(&p.host_path);
        if !host.is_absolute() {
            return Err(GuestError::NotAbsolute {
                side: "host",
                path: p.host_path,
            });
        }
        if p.to_guest {
            let meta = std::fs::metadata(&host).map_err(|source| GuestError::NoHostFile {
                path: host.clone(),
                source,
            })?;
            if meta.is_dir() && !p.recursive {
                return Err(GuestError::IsDirectory {
                    side: "host",
                    path: p.host_path,
                });
            }
            let (vm, conn) = self.agent_for(&p.name).await?;
            if meta.is_dir() {
                super::tree::to_guest(&vm.name, &conn, &host, &p.guest_path).await
            } else {
                to_guest(&vm.name, &conn, &host, &p.guest_path).await
            }
        } else {
            let (vm, conn) = self.agent_for(&p.name).await?;
            if p.recursive {
                if let Some(r) =
                    super::tree::from_guest(&vm.name, &conn, &p.guest_path, &host, self.cp_reserve)
                        .await?
                {
                    return Ok(r);
                }
            }
            from_guest(&vm.name, &conn, &p.guest_path, &host, self.cp_reserve)
                .await
                .map_err(|e| match e {
                    GuestError::Agent {
                        source:
                            AgentError::Refused {
                                code: agent::AgentErrorCode::IsDirectory,
                                ..
                            },
                        ..
                    } => GuestError::IsDirectory {
                        side: "guest",
                        path: p.guest_path.clone(),
                    },
                    e => e,
                })
        }
    }
}

async fn to_guest(
    vm: &str,
    conn: &AgentConn,
    host: &Path,
    guest: &str,
) -> Result<CpResult, GuestError> {
    let meta = std::fs::metadata(host).map_err(|source| GuestError::NoHostFile {
        path: host.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(GuestError::NotAFile(host.to_owned()));
    }
    let guest = if guest.ends_with('/') {
        let base = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{guest}{base}")
    } else {
        guest.to_owned()
    };
    let mode = meta.mode() & 0o7777;
    let (id, mut rx) = conn
        .start(
            |id| Message::WriteFile {
                id,
                path: guest.clone(),
                mode,
            },
            Vec::new(),
        )
        .await
        .map_err(|e| GuestError::agent(vm, e))?;
    // Read on a blocking thread, send chunk by chunk (bounded channel).
    let (tx, mut chunks) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let path = host.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; agent::MAX_BODY_BYTES];
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(GuestError::host_file("read", host))?;
        bytes += chunk.len() as u64;
        if let Ok(Some(Frame {
            msg: Message::Error { code, message, .. },
            ..
        })) = tokio::time::timeout(Duration::ZERO, rx.recv()).await
        {
            conn.finish(id);
            return Err(GuestError::agent(vm, AgentError::Refused { code, message }));
        }
        conn.send(Frame::with_body(Message::FileData { id }, chunk))
            .await
            .map_err(|e| GuestError::agent(vm, e))?;
    }
    conn.send(Frame::new(Message::FileEnd { id }))
        .await
        .map_err(|e| GuestError::agent(vm, e))?;
    let reply = tokio::time::timeout(Duration::from_secs(120), rx.recv()).await;
    conn.finish(id);
    match reply {
        Ok(Some(Frame {
            msg: Message::Done { .. },
            ..
        })) => Ok(CpResult {
            bytes,
            mode,
            destination: guest,
            entries: None,
            skipped: None,
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

async fn from_guest(
    vm: &str,
    conn: &AgentConn,
    guest: &str,
    host: &Path,
    reserve: Reserve,
) -> Result<CpResult, GuestError> {
    let (dir, name) = host_destination(host, guest)?;
    let (id, mut rx) = conn
        .start(
            |id| Message::ReadFile {
                id,
                path: guest.to_owned(),
            },
            Vec::new(),
        )
        .await
        .map_err(|e| GuestError::agent(vm, e))?;
    let first = tokio::time::timeout(CALL_TIMEOUT, rx.recv()).await;
    let (guest_mode, size) = match first {
        Ok(Some(Frame {
            msg: Message::FileInfo { mode, size, .. },
            ..
        })) => (mode, size),
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
    let mode = host_mode(guest_mode);
    // The size the guest announced is checked before anything is made;
    // the writer checks again as it goes (the guest may send more).
    let prepared = reserve
        .check_before(&dir, size)
        .and_then(|()| HostFile::create(&dir, &name, mode));
    let writer = match prepared {
        Ok(w) => w,
        Err(e) => {
            conn.finish(id);
            return Err(e);
        }
    };
    let mut guard = reserve.guard(&dir);
    let dest_name = name.clone();
    let (tx, wrx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let write_task = tokio::task::spawn_blocking(move || -> Result<(u64, HostFile), GuestError> {
        let mut writer = writer;
        let mut total = 0u64;
        let delay = slow_writes();
        for chunk in wrx {
            guard.before_write(chunk.len())?;
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            writer.write(&chunk)?;
            total += chunk.len() as u64;
        }
        Ok((total, writer))
    });
    let failure = forward_file_data(vm, &mut rx, &tx, None).await.err();
    conn.finish(id);
    // Nothing more is read for this request: the agent connection's
    // reader must not wait on its channel (crate::agent).
    drop(rx);
    drop(tx);
    let written = write_task.await.map_err(|e| GuestError::Task("write", e))?;
    // The temporary file is removed by HostFile's drop on failure.
    let (bytes, file) = match (failure, written) {
        // The writer stopped first: its reason, not "writer gone".
        (Some(GuestError::HostWriterGone), Err(e)) => return Err(e),
        (Some(e), _) => return Err(e),
        (None, w) => w?,
    };
    if bytes < size {
        // `file` is dropped unfinished: its temporary file goes with it.
        return Err(GuestError::Incomplete {
            vm: vm.to_owned(),
            path: guest.to_owned(),
            announced: size,
            received: bytes,
        });
    }
    tokio::task::spawn_blocking(move || file.finish(&name, true))
        .await
        .map_err(|e| GuestError::Task("rename", e))??;
    let destination = dir.join(&dest_name).display().to_string();
    let special = guest_mode & 0o7000 != 0;
    Ok(CpResult {
        bytes,
        mode,
        destination: destination.clone(),
        entries: None,
        skipped: None,
        stripped: special.then_some(1),
        stripped_paths: if special {
            vec![destination]
        } else {
            Vec::new()
        },
    })
}

/// Fault injection for the backpressure test (crates/banger/tests/agent_e2e.rs):
/// `BANGER_FAULT_CP_WRITE_DELAY_MS` makes the writer of a file copied
/// from a guest wait that long before each chunk, as a slow disk would.
/// Read once.
fn slow_writes() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        let ms = std::env::var("BANGER_FAULT_CP_WRITE_DELAY_MS").ok()?;
        let ms: u64 = ms.parse().ok().filter(|ms| *ms > 0)?;
        tracing::warn!(
            ms,
            "copies from guests write slowly (BANGER_FAULT_CP_WRITE_DELAY_MS)"
        );
        Some(Duration::from_millis(ms))
    })
}

/// Forwards the `FileData` bodies of a guest's file stream (`next`, then
/// what `rx` brings) to the host writer behind `tx` until `FileEnd`. Fails
/// on the agent's refusal, a lost connection, a minute without data, or a
/// host writer that stopped (its own error tells why).
pub(super) async fn forward_file_data(
    vm: &str,
    rx: &mut mpsc::Receiver<Frame>,
    tx: &std::sync::mpsc::SyncSender<Vec<u8>>,
    mut next: Option<Vec<u8>>,
) -> Result<(), GuestError> {
    loop {
        if let Some(body) = next.take() {
            let tx = tx.clone();
            // A full channel means the disk is slower: wait off the runtime.
            if tokio::task::spawn_blocking(move || tx.send(body))
                .await
                .ok()
                .and_then(Result::ok)
                .is_none()
            {
                return Err(GuestError::HostWriterGone);
            }
        }
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Frame {
                msg: Message::FileData { .. },
                body,
            })) => next = Some(body),
            Ok(Some(Frame {
                msg: Message::FileEnd { .. },
                ..
            })) => return Ok(()),
            Ok(Some(Frame {
                msg: Message::Error { code, message, .. },
                ..
            })) => return Err(GuestError::agent(vm, AgentError::Refused { code, message })),
            Ok(Some(_)) => {}
            Ok(None) => return Err(GuestError::agent(vm, AgentError::Lost)),
            Err(_) => return Err(GuestError::agent(vm, AgentError::Timeout(60))),
        }
    }
}

/// The directory and file name a guest file lands at: into `host` if it is
/// a directory (keeping the guest file's name), else `host` itself. The
/// final name is never a symlink (it is replaced by rename, never
/// followed), so nothing is written outside the destination directory.
fn host_destination(host: &Path, guest: &str) -> Result<(PathBuf, String), GuestError> {
    let guest_name = Path::new(guest)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| GuestError::GuestNamesNoFile(guest.to_owned()))?;
    let (dir, name) = match std::fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => (host.to_owned(), guest_name),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(GuestError::Symlink(host.to_owned()));
        }
        _ => {
            let name = host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| GuestError::HostNamesNoFile(host.to_owned()))?;
            let dir = host
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("/"));
            (dir, name)
        }
    };
    if name == "." || name == ".." || name.contains('/') {
        return Err(GuestError::BadDestination(name));
    }
    if let Ok(m) = std::fs::symlink_metadata(dir.join(&name)) {
        if m.file_type().is_symlink() {
            return Err(GuestError::Symlink(dir.join(&name)));
        }
    }
    Ok((dir, name))
}

fn temp_name(name: &str) -> String {
    format!(".{name}.banger-cp")
}

/// A temporary file beside the destination, created without following
/// symlinks; removed on drop unless [`HostFile::finish`] renamed it.
#[derive(Debug)]
pub(super) struct HostFile {
    path: PathBuf,
    file: std::fs::File,
    mode: u32,
    done: bool,
}

impl HostFile {
    pub(super) fn create(dir: &Path, name: &str, mode: u32) -> Result<Self, GuestError> {
        let path = dir.join(temp_name(name));
        let _ = std::fs::remove_file(&path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(GuestError::host_file("create", &path))?;
        Ok(Self {
            path,
            file,
            mode,
            done: false,
        })
    }

    /// Flushes (with `sync`, to the disk), sets the guest file's mode
    /// (the umask may have cut bits) and renames over `name` in the same
    /// directory. A tree's files are not synced one by one.
    pub(super) fn finish(mut self, name: &str, sync: bool) -> Result<(), GuestError> {
        if sync {
            self.file
                .sync_all()
                .map_err(GuestError::host_file("sync", &self.path))?;
        }
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(self.mode))
            .map_err(GuestError::host_file("chmod", &self.path))?;
        let dest = self.path.with_file_name(name);
        std::fs::rename(&self.path, &dest).map_err(GuestError::host_file("rename", &self.path))?;
        self.done = true;
        Ok(())
    }

    pub(super) fn write(&mut self, data: &[u8]) -> Result<(), GuestError> {
        self.file
            .write_all(data)
            .map_err(GuestError::host_file("write", &self.path))
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        if !self.done {
            // The copy did not finish: leave nothing half-written behind.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The mode a file from a guest gets on the host: its permission bits
/// only. A guest never chooses setuid, setgid or sticky bits on a host
/// file (a setuid root file copied out by root would be a way in).
pub(super) fn host_mode(guest_mode: u32) -> u32 {
    guest_mode & 0o777
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_never_sets_special_bits_on_a_host_file() {
        assert_eq!(host_mode(0o104_755), 0o755);
        assert_eq!(host_mode(0o2750), 0o750);
        assert_eq!(host_mode(0o1777), 0o777);
        assert_eq!(host_mode(0o640), 0o640);
    }

    #[test]
    fn host_destinations_never_go_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (into, name) = host_destination(d, "/root/data.bin").unwrap();
        assert_eq!((into.as_path(), name.as_str()), (d, "data.bin"));
        let (_, renamed) = host_destination(&d.join("copy.bin"), "/root/data.bin").unwrap();
        assert_eq!(renamed, "copy.bin");
        std::os::unix::fs::symlink("/etc/passwd", d.join("evil")).unwrap();
        assert!(host_destination(&d.join("evil"), "/root/x").is_err());
        std::os::unix::fs::symlink("/etc", d.join("evil-dir")).unwrap();
        assert!(host_destination(&d.join("evil-dir"), "/root/x").is_err());
        std::os::unix::fs::symlink("/etc/shadow", d.join("x")).unwrap();
        assert!(
            host_destination(d, "/root/x").is_err(),
            "a symlink named like the file"
        );
    }
}
