//! One daemon per user: an exclusive `flock` on `bangerd.lock` in the
//! private runtime dir decides who serves. The lock dies with its process,
//! so a crashed daemon never blocks the next one, and a socket file left by
//! a crash can be removed safely by whoever holds the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use banger_paths::Layout;
use rustix::fs::{FlockOperation, flock};

use crate::DaemonError;

/// Proof that this process is the one daemon for its runtime dir.
#[derive(Debug)]
pub struct Instance {
    lock: File,
    socket: PathBuf,
}

impl Instance {
    /// Takes the instance lock and binds the socket (mode 0600).
    pub fn acquire(layout: &Layout) -> Result<(Self, UnixListener), DaemonError> {
        layout.ensure_dirs()?;
        let lock_path = layout.lock_path();
        let socket = layout.socket_path();
        let lock_err = |source| DaemonError::Lock {
            path: lock_path.clone(),
            source,
        };
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&lock_path)
            .map_err(lock_err)?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                return Err(DaemonError::AlreadyRunning {
                    pid: pid.trim().parse().ok(),
                    socket,
                });
            }
            Err(e) => return Err(lock_err(e.into())),
        }
        lock.set_len(0).map_err(lock_err)?;
        lock.rewind().map_err(lock_err)?;
        writeln!(lock, "{}", std::process::id()).map_err(lock_err)?;

        // Holding the lock, any socket file is a leftover, unless some
        // process outside our locking answers on it: then refuse.
        if socket.exists() {
            if UnixStream::connect(&socket).is_ok() {
                return Err(DaemonError::AlreadyRunning { pid: None, socket });
            }
            tracing::warn!(socket = %socket.display(), "removing stale socket");
            remove_if_exists(&socket).map_err(|source| DaemonError::Bind {
                path: socket.clone(),
                source,
            })?;
        }
        let bind_err = |source| DaemonError::Bind {
            path: socket.clone(),
            source,
        };
        let listener = UnixListener::bind(&socket).map_err(bind_err)?;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok((Self { lock, socket }, listener))
    }

    /// Removes the socket, then lets go of the lock.
    pub fn release(self) {
        if let Err(e) = remove_if_exists(&self.socket) {
            tracing::warn!(socket = %self.socket.display(), error = %e, "could not remove socket");
        }
        drop(self.lock);
    }
}

fn remove_if_exists(path: &std::path::Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(root: &std::path::Path) -> Layout {
        Layout {
            config_dir: root.join("config"),
            data_dir: root.join("data"),
            state_dir: root.join("state"),
            cache_dir: root.join("cache"),
            runtime_dir: root.join("run"),
        }
    }

    #[test]
    fn second_instance_is_refused_and_names_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout(tmp.path());
        let (first, _listener) = Instance::acquire(&l).unwrap();
        let err = Instance::acquire(&l).unwrap_err();
        match err {
            DaemonError::AlreadyRunning { pid, .. } => assert_eq!(pid, Some(std::process::id())),
            other => panic!("unexpected {other:?}"),
        }
        first.release();
        assert!(!l.socket_path().exists());
        // Other tests of this process fork children (qemu-img, mkfs): one
        // between its fork and its exec still shares the lock's open file
        // for a moment, so wait for the lock to be free, boundedly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (again, _l2) = loop {
            match Instance::acquire(&l) {
                Ok(acquired) => break acquired,
                Err(DaemonError::AlreadyRunning { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("lock not free again: {e:?}"),
            }
        };
        again.release();
    }

    #[test]
    fn a_stale_socket_file_is_taken_over_and_the_new_one_is_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout(tmp.path());
        l.ensure_dirs().unwrap();
        // A socket nobody listens on, as a crashed daemon leaves it.
        drop(UnixListener::bind(l.socket_path()).unwrap());
        assert!(l.socket_path().exists());
        let (inst, _listener) = Instance::acquire(&l).unwrap();
        let mode = fs::metadata(l.socket_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(UnixStream::connect(l.socket_path()).is_ok());
        inst.release();
    }
}
