//! The free space a copy from a guest leaves on the host (`cp_reserve`
//! in config.toml, crates/config): a copy whose size is known is refused
//! up front when it would eat into the reserve, and every copy checks the
//! destination's filesystem (`statvfs`) as it writes and stops once its
//! free space is down to the reserve. A guest's data never fills the
//! host's disk, whatever the guest claims about sizes.

use std::path::{Path, PathBuf};

use super::GuestError;

/// How often (in bytes written) a running copy looks at the free space.
const CHECK_EVERY: u64 = 1 << 20;

/// A size for people: `512 B`, `3.0 GiB`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bytes(pub u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut u = 0;
        while v >= 1024.0 && u < UNITS.len() - 1 {
            v /= 1024.0;
            u += 1;
        }
        write!(f, "{v:.1} {}", UNITS[u])
    }
}

/// The reserve, in bytes (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reserve(pub u64);

/// Bytes available to this user on the filesystem holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Reserve {
    /// Refuses a copy of `size` bytes into `dir` that would leave less
    /// than the reserve free (`size` 0: the size is not known yet, so only
    /// a filesystem already at its reserve is refused).
    pub(super) fn check_before(self, dir: &Path, size: u64) -> Result<(), GuestError> {
        self.check_before_with(dir, size, free_bytes)
    }

    fn check_before_with(
        self,
        dir: &Path,
        size: u64,
        free: impl Fn(&Path) -> std::io::Result<u64>,
    ) -> Result<(), GuestError> {
        if self.0 == 0 {
            return Ok(());
        }
        let free = free(dir).map_err(GuestError::host_file("statvfs", dir))?;
        if free < size.saturating_add(self.0) {
            return Err(GuestError::NoRoom {
                dir: dir.to_owned(),
                size,
                free,
                reserve: self.0,
            });
        }
        Ok(())
    }

    /// A watch over a copy writing into `dir`.
    pub(super) fn guard(self, dir: &Path) -> ReserveGuard {
        ReserveGuard {
            dir: dir.to_owned(),
            reserve: self.0,
            unchecked: 0,
            free: free_bytes,
        }
    }
}

#[cfg(test)]
impl ReserveGuard {
    /// A guard that sees `free` instead of the real filesystem.
    pub(super) fn with_free(reserve: u64, free: fn(&Path) -> std::io::Result<u64>) -> Self {
        Self {
            dir: "/d".into(),
            reserve,
            unchecked: 0,
            free,
        }
    }
}

/// Counts what a copy writes and checks the free space every
/// [`CHECK_EVERY`] bytes.
#[derive(Debug)]
pub(super) struct ReserveGuard {
    dir: PathBuf,
    reserve: u64,
    unchecked: u64,
    free: fn(&Path) -> std::io::Result<u64>,
}

impl ReserveGuard {
    /// Call before writing `n` more bytes; an error stops the copy.
    pub(super) fn before_write(&mut self, n: usize) -> Result<(), GuestError> {
        if self.reserve == 0 {
            return Ok(());
        }
        self.unchecked += n as u64;
        if self.unchecked < CHECK_EVERY {
            return Ok(());
        }
        self.unchecked = 0;
        let free = (self.free)(&self.dir).map_err(GuestError::host_file("statvfs", &self.dir))?;
        if free < self.reserve.saturating_add(CHECK_EVERY) {
            return Err(GuestError::ReserveReached {
                dir: self.dir.clone(),
                reserve: self.reserve,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_size_is_refused_when_it_would_eat_the_reserve() {
        let r = Reserve(1 << 30);
        let free = |_: &Path| Ok(3 << 30);
        r.check_before_with(Path::new("/d"), 1 << 30, free).unwrap();
        let e = r
            .check_before_with(Path::new("/d"), (2 << 30) + 1, free)
            .unwrap_err();
        assert!(matches!(e, GuestError::NoRoom { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "refusing to copy 2.0 GiB into /d: it has 3.0 GiB free and copies leave \
             1.0 GiB free (cp_reserve in config.toml)"
        );
        // No reserve: nothing refused.
        Reserve(0)
            .check_before_with(Path::new("/d"), u64::MAX, free)
            .unwrap();
    }

    #[test]
    fn a_running_copy_stops_at_the_reserve() {
        fn low(_: &Path) -> std::io::Result<u64> {
            Ok(1 << 30)
        }
        let mut g = ReserveGuard {
            dir: "/d".into(),
            reserve: 1 << 30,
            unchecked: 0,
            free: low,
        };
        // Checked only once a megabyte was written.
        g.before_write(1000).unwrap();
        let e = g.before_write(1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stopped copying into /d: its free space is down to the 1.0 GiB copies leave \
             free (cp_reserve in config.toml)"
        );
    }

    #[test]
    fn statvfs_answers_for_a_real_directory() {
        let d = tempfile::tempdir().unwrap();
        assert!(free_bytes(d.path()).unwrap() > 0);
    }
}
