//! Opening a caller's path without following symlinks, race-free.
//!
//! After [`validate::path_arg`](crate::validate::path_arg) has checked the
//! path's shape and that it lies under an allowed dir, [`open_nofollow`]
//! walks it from `/` one component at a time with
//! `openat(dir, component, O_PATH | O_NOFOLLOW)` and `fstat`s each step: a
//! symlink anywhere (the final component, an intermediate dir, or a
//! component of the allowed dir itself) is refused, and because each step
//! is opened relative to the descriptor of the previous one, swapping a
//! directory for a symlink after it was checked changes nothing. The
//! result is an `O_PATH` descriptor of the final file and its `stat`; the
//! caller checks type and owner on that and then either reopens it
//! through `/proc/self/fd` ([`reopen`]) or acts on the descriptor itself.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::Error;
use crate::error::quote;

/// An `O_PATH` descriptor of a file reached without following symlinks.
#[derive(Debug)]
pub struct Opened {
    pub fd: OwnedFd,
    pub stat: Stat,
}

impl Opened {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    pub fn owner(&self) -> u32 {
        self.stat.st_uid
    }
}

fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Walks `path` (absolute and normalized) refusing symlinks; see the module
/// doc. A missing component is [`Error::NotFound`]; a symlink or a
/// non-directory in the middle is [`Error::InvalidPath`].
pub fn open_nofollow(path: &Path) -> Result<Opened, Error> {
    let shown = || quote(&path.to_string_lossy());
    let bytes = path.as_os_str().as_bytes();
    let Some(rest) = bytes.strip_prefix(b"/") else {
        return Err(Error::InvalidPath(format!(
            "path {} must be absolute",
            shown()
        )));
    };
    let fail = |at: &Path, e: Errno| -> Error {
        let at = quote(&at.to_string_lossy());
        match e {
            Errno::NOENT => Error::NotFound(format!("{at} does not exist")),
            Errno::NOTDIR => Error::InvalidPath(format!("{at} is not a directory")),
            Errno::LOOP => Error::InvalidPath(format!("{at} is a symlink")),
            Errno::NAMETOOLONG => Error::InvalidPath(format!("{at} is too long")),
            other => Error::OperationFailed(format!("open {at}: {other}")),
        }
    };
    let root = Path::new("/");
    let mut fd = rustix::fs::open(root, path_flags() | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| fail(root, e))?;
    let mut stat = rustix::fs::fstat(&fd).map_err(|e| fail(root, e))?;
    if rest.is_empty() {
        return Ok(Opened { fd, stat });
    }
    let parts: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let mut walked = std::path::PathBuf::from("/");
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || *part == b"." || *part == b".." {
            return Err(Error::InvalidPath(format!(
                "path {} must not have empty, . or .. components",
                shown()
            )));
        }
        walked.push(std::ffi::OsStr::from_bytes(part));
        let next = rustix::fs::openat(
            fd.as_fd(),
            std::ffi::OsStr::from_bytes(part),
            path_flags(),
            Mode::empty(),
        )
        .map_err(|e| fail(&walked, e))?;
        stat = rustix::fs::fstat(&next).map_err(|e| fail(&walked, e))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::Symlink {
            return Err(Error::InvalidPath(format!(
                "path {} crosses a symlink at {}",
                shown(),
                quote(&walked.to_string_lossy())
            )));
        }
        let last = i + 1 == parts.len();
        if !last && kind != FileType::Directory {
            return Err(Error::InvalidPath(format!(
                "{} is not a directory",
                quote(&walked.to_string_lossy())
            )));
        }
        fd = next;
    }
    Ok(Opened { fd, stat })
}

/// Opens the file behind an `O_PATH` descriptor for real I/O
/// (`/proc/self/fd/N`), then checks it is still the same inode.
pub fn reopen(opened: &Opened, flags: OFlags) -> Result<OwnedFd, Error> {
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", opened.fd.as_raw_fd());
    let fd = rustix::fs::open(
        proc_path.as_str(),
        flags | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| Error::OperationFailed(format!("reopen checked file: {e}")))?;
    let now = rustix::fs::fstat(&fd)
        .map_err(|e| Error::OperationFailed(format!("stat checked file: {e}")))?;
    if now.st_dev != opened.stat.st_dev || now.st_ino != opened.stat.st_ino {
        return Err(Error::OperationFailed(
            "the file changed while it was opened".to_owned(),
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn walks_plain_paths_and_refuses_symlinks_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("data/vms")).unwrap();
        std::fs::write(d.join("data/vms/root.img"), b"x").unwrap();
        std::fs::write(d.join("outside"), b"secret").unwrap();
        symlink(d.join("outside"), d.join("data/vms/link.img")).unwrap();
        symlink(d.join("data/vms"), d.join("data/linkdir")).unwrap();

        let ok = open_nofollow(&d.join("data/vms/root.img")).unwrap();
        assert_eq!(ok.file_type(), FileType::RegularFile);
        let dir_ok = open_nofollow(&d.join("data/vms")).unwrap();
        assert_eq!(dir_ok.file_type(), FileType::Directory);

        let e = open_nofollow(&d.join("data/vms/link.img")).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidPath(m) if m.contains("symlink")),
            "{e}"
        );
        let e = open_nofollow(&d.join("data/linkdir/root.img")).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidPath(m) if m.contains("symlink")),
            "{e}"
        );
        let e = open_nofollow(&d.join("data/vms/missing.img")).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        let e = open_nofollow(&d.join("data/vms/root.img/x")).unwrap_err();
        assert!(matches!(e, Error::InvalidPath(_)), "{e}");
        let e = open_nofollow(Path::new("relative")).unwrap_err();
        assert!(matches!(e, Error::InvalidPath(_)), "{e}");
        let e = open_nofollow(&d.join("data/../outside")).unwrap_err();
        assert!(matches!(e, Error::InvalidPath(_)), "{e}");
    }

    #[test]
    fn reopen_gives_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        let opened = open_nofollow(&f).unwrap();
        let fd = reopen(&opened, OFlags::RDONLY).unwrap();
        let mut text = String::new();
        use std::io::Read as _;
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
    }
}
