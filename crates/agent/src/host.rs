//! The seam between the agent and the privileged, machine-wide changes it
//! makes for snapshots and restores (clock, filesystem freezing, the
//! kernel's random pool, hostname, network, SSH host key, files in
//! `/etc`): the [`Host`] trait, in the manner of youki's `Syscall`.
//!
//! [`RealHost`] does them; [`crate::fake::FakeHost`] records them, so the
//! tests (run as root in CI) drive the same code without touching the
//! machine they run on. The decisions (what to freeze, in which order,
//! what to validate, which files to write) stay in `guest_ops` and are
//! tested; only the system calls and programs live behind the trait.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::init::cmdline::NetParams;

/// `PATH` for the programs the agent runs (`ip`, `ssh-keygen`).
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the agent does to the machine beyond its own process for
/// `SetTime`, `Freeze`, `Thaw` and `Identity`, and the reads those
/// decisions are made from.
pub trait Host: Send + Sync + fmt::Debug {
    /// Steps `CLOCK_REALTIME` to `unix_ns` nanoseconds after the epoch.
    fn set_clock(&self, unix_ns: u64) -> io::Result<()>;
    /// `sync()`: dirty data to the disks (all of them: slow when much is
    /// dirty; see [`Host::fsync`]).
    fn sync(&self);
    /// `fsync()` of one file or directory: its data and metadata (a
    /// directory's: the names created, renamed or removed in it) on the
    /// disk.
    fn fsync(&self, path: &Path) -> io::Result<()>;
    /// `FIFREEZE` on the filesystem mounted at `mount` (`EBUSY` if it is
    /// frozen already).
    fn freeze(&self, mount: &Path) -> io::Result<()>;
    /// `FITHAW` on the filesystem mounted at `mount` (`EINVAL` if it is
    /// not frozen).
    fn thaw(&self, mount: &Path) -> io::Result<()>;
    /// Mixes `bytes` into the kernel's random pool and has the kernel's
    /// random generator reseed from it at once.
    fn add_randomness(&self, bytes: &[u8]) -> io::Result<()>;
    /// `sethostname()`.
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// Runs `argv[0]` (found in a standard `PATH`) with `argv[1..]`, no
    /// shell and no stdin; an error carries its exit status and stderr.
    fn run(&self, argv: &[&str]) -> io::Result<()>;
    /// `SIGHUP` to process `pid`.
    fn hangup(&self, pid: u32) -> io::Result<()>;
    /// Gives the configured NIC `dev` a new MAC, address and default
    /// route, in-process (crates/agent/src/init/net.rs: images pulled from
    /// a registry may have no `ip`).
    fn set_nic(&self, dev: &str, mac: [u8; 6], net: &NetParams) -> io::Result<()>;
    /// A file's contents (files the decisions are made from: mount
    /// table, `/etc/hosts`, pid files, public keys).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Replaces `path` with `data` (mode `mode`): written to a temporary
    /// file beside it and renamed over it. Not synced: see [`Host::fsync`].
    fn write(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()>;
    /// Creates `path` holding `data`, mode `mode` from the start (no
    /// moment with a wider one); `AlreadyExists` if anything (a symlink
    /// too) is there. Not synced: see [`Host::fsync`].
    fn create(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()>;
    /// `rename()`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (`NotFound` if there is none).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// The machine the agent runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

/// `FIFREEZE`: `_IOWR('X', 119, int)`; the argument is not used.
const FIFREEZE: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<i32>(b'X', 119);
/// `FITHAW`: `_IOWR('X', 120, int)`; the argument is not used.
const FITHAW: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<i32>(b'X', 120);
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`, no argument (Linux 4.17+).
const RNDRESEEDCRNG: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(b'R', 0x07);

/// The directory `mount` opened for an ioctl on its filesystem.
fn open_dir(mount: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(mount)
}

impl Host for RealHost {
    fn set_clock(&self, unix_ns: u64) -> io::Result<()> {
        let ts = rustix::time::Timespec {
            tv_sec: i64::try_from(unix_ns / 1_000_000_000).map_err(io::Error::other)?,
            // Below 10^9: always fits.
            tv_nsec: (unix_ns % 1_000_000_000) as _,
        };
        Ok(rustix::time::clock_settime(
            rustix::time::ClockId::Realtime,
            ts,
        )?)
    }

    fn sync(&self) {
        rustix::fs::sync();
    }

    fn fsync(&self, path: &Path) -> io::Result<()> {
        // Read-only works for directories too; fsync() needs no write access.
        File::open(path)?.sync_all()
    }

    fn freeze(&self, mount: &Path) -> io::Result<()> {
        let dir = open_dir(mount)?;
        // SAFETY: FIFREEZE takes no argument the kernel reads or writes
        // (it acts on the file's superblock), so the null pointer NoArg
        // passes is valid; the opcode is the kernel's (include/uapi/linux/fs.h).
        unsafe {
            rustix::ioctl::ioctl(&dir, rustix::ioctl::NoArg::<FIFREEZE>::new())?;
        }
        Ok(())
    }

    fn thaw(&self, mount: &Path) -> io::Result<()> {
        let dir = open_dir(mount)?;
        // SAFETY: as for FIFREEZE: FITHAW reads and writes no argument.
        unsafe {
            rustix::ioctl::ioctl(&dir, rustix::ioctl::NoArg::<FITHAW>::new())?;
        }
        Ok(())
    }

    fn add_randomness(&self, bytes: &[u8]) -> io::Result<()> {
        // Writing mixes the bytes into the input pool without crediting
        // entropy (no RNDADDENTROPY: the guest's generator was seeded
        // before the snapshot; what forks lack is divergence, not entropy).
        let mut f = OpenOptions::new().write(true).open("/dev/urandom")?;
        f.write_all(bytes)?;
        // The generator would take the new input at its next periodic
        // reseed (up to a minute); forks of one snapshot must differ now.
        // SAFETY: RNDRESEEDCRNG takes no argument (drivers/char/random.c),
        // so the null pointer NoArg passes is never dereferenced.
        let reseeded =
            unsafe { rustix::ioctl::ioctl(&f, rustix::ioctl::NoArg::<RNDRESEEDCRNG>::new()) };
        match reseeded {
            Ok(()) => Ok(()),
            // Older kernels (no such ioctl), or a generator not yet
            // seeded (it will seed from the pool, bytes included).
            Err(e)
                if e == rustix::io::Errno::NOTTY
                    || e == rustix::io::Errno::INVAL
                    || e == rustix::io::Errno::NODATA =>
            {
                Ok(())
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        Ok(rustix::system::sethostname(name.as_bytes())?)
    }

    fn run(&self, argv: &[&str]) -> io::Result<()> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::other("nothing to run"))?;
        let out = Command::new(prog)
            .args(args)
            .env("PATH", SYSTEM_PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        Err(io::Error::other(if stderr.is_empty() {
            format!("{}", out.status)
        } else {
            format!("{}: {stderr}", out.status)
        }))
    }

    fn set_nic(&self, dev: &str, mac: [u8; 6], net: &NetParams) -> io::Result<()> {
        crate::init::net::reconfigure(dev, mac, net).map_err(io::Error::other)
    }

    fn hangup(&self, pid: u32) -> io::Result<()> {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::other(format!("bad pid {pid}")))?;
        Ok(rustix::process::kill_process(
            pid,
            rustix::process::Signal::HUP,
        )?)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn write(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::other(format!(
                "{} names no file",
                path.display()
            )));
        };
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(".banger-agent.tmp");
        let temp = dir.join(temp_name);
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&temp)?;
            f.write_all(data)?;
            f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
            fs::rename(&temp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    fn create(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        let mode = mode & 0o7777;
        // O_EXCL: never through a symlink, never over another file.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        let written = (|| {
            f.write_all(data)?;
            // The umask may have narrowed the mode.
            f.set_permissions(fs::Permissions::from_mode(mode))
        })();
        if written.is_err() {
            let _ = fs::remove_file(path);
        }
        written
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(dir)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    //! Only what cannot change the machine: the ioctl numbers, and files
    //! and programs in a temporary directory.

    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // include/uapi/linux/fs.h and include/uapi/linux/random.h.
        assert_eq!(u64::from(FIFREEZE), 0xC004_5877);
        assert_eq!(u64::from(FITHAW), 0xC004_5878);
        assert_eq!(u64::from(RNDRESEEDCRNG), 0x5207);
    }

    #[test]
    fn files_and_programs() {
        let dir = std::env::temp_dir().join(format!("banger-agent-host-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let h = RealHost;
        let f = dir.join("hostname");
        h.write(&f, b"one\n", 0o644).unwrap();
        h.write(&f, b"two\n", 0o640).unwrap();
        assert_eq!(h.read(&f).unwrap(), b"two\n");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(h.list(&dir).unwrap(), vec!["hostname"], "no temporary left");
        h.fsync(&f).unwrap();
        h.fsync(&dir).unwrap();
        assert_eq!(
            h.fsync(&dir.join("none")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let key = dir.join("key");
        h.create(&key, b"secret\n", 0o600).unwrap();
        assert_eq!(h.read(&key).unwrap(), b"secret\n");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert_eq!(
            h.create(&key, b"again\n", 0o600).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists,
            "never over a file"
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("target"), &link).unwrap();
        assert_eq!(
            h.create(&link, b"x", 0o644).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists,
            "never through a symlink"
        );
        assert!(!dir.join("target").exists());
        h.remove(&link).unwrap();
        h.remove(&key).unwrap();
        h.rename(&f, &dir.join("moved")).unwrap();
        h.remove(&dir.join("moved")).unwrap();
        assert_eq!(
            h.remove(&dir.join("moved")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        h.run(&["true"]).unwrap();
        let e = h
            .run(&["sh", "-c", "echo oops >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "exit status: 3: oops");
        assert!(h.run(&[]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
