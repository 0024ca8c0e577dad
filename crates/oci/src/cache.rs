//! The content-addressed blob cache: `DIR/blobs/sha256/HEX`.
//!
//! A blob enters the cache only whole and verified: it is written to a
//! temporary file beside its final place (`.tmp-*`, same filesystem), its
//! size and digest are checked, then it is renamed into place.
//!
//! [`BlobCache::prune`] renames the whole directory aside before deleting it,
//! so a concurrent pull never sees a half-deleted cache: it sees either the
//! old directory or none. A blob write that loses its directory this way
//! creates the directories again and moves its data over (the open file
//! still holds it); a pull checks its blobs are still there at its end.

use std::fs;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::reference::Digest;

/// Prefix of the temporary files of blobs being written.
const TMP_PREFIX: &str = ".tmp-";

/// How many times a blob write starts again when its directory vanishes
/// under it (each time, a prune ran in between).
const DIR_RETRIES: usize = 5;

/// A blob cache rooted at a directory the caller chooses.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

/// What a prune freed (or would free, for a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// The cache directory.
    pub dir: PathBuf,
    /// Complete blobs removed.
    pub blobs: u64,
    /// Bytes of all files removed (blobs and leftover temporary files).
    pub bytes: u64,
    /// Nothing was removed: the figures say what a prune would free.
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the blob cache directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write blob {digest} into the cache at {path}")]
    Write {
        digest: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {expected} has the content of {actual}: it was corrupted or tampered with")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("cannot move the cache {path} aside to prune it")]
    PruneRename {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the cache at {path}")]
    PruneScan {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path}")]
    PruneRemove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BlobCache {
    /// A cache in `dir` (created on the first write; a missing one is empty).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_dir(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// The blob's path if the cache holds it with the expected size.
    pub fn get(&self, digest: &Digest, size: u64) -> Option<PathBuf> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == size => Some(path),
            _ => None,
        }
    }

    /// Starts writing the blob `digest` of `size` bytes.
    pub async fn writer(&self, digest: &Digest, size: u64) -> Result<BlobWriter, CacheError> {
        let cache = self.clone();
        let digest2 = digest.clone();
        let tmp = tokio::task::spawn_blocking(move || cache.new_temp(&digest2))
            .await
            .map_err(|e| CacheError::Write {
                digest: digest.clone(),
                path: self.blob_dir(),
                source: io::Error::other(e),
            })??;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|source| CacheError::Write {
                digest: digest.clone(),
                path: tmp.path().to_owned(),
                source,
            })?;
        Ok(BlobWriter {
            cache: self.clone(),
            digest: digest.clone(),
            size,
            written: 0,
            hasher: sha2::Sha256::new(),
            file: tokio::fs::File::from_std(file),
            tmp,
        })
    }

    /// A temporary file in the blob directory, creating the directory
    /// (again, if a prune moved it away in between).
    fn new_temp(&self, digest: &Digest) -> Result<tempfile::NamedTempFile, CacheError> {
        let dir = self.blob_dir();
        let mut attempt = 0;
        loop {
            fs::create_dir_all(&dir).map_err(|source| CacheError::CreateDir {
                path: dir.clone(),
                source,
            })?;
            match tempfile::Builder::new()
                .prefix(&format!("{TMP_PREFIX}{}-", digest.hex()))
                .tempfile_in(&dir)
            {
                Ok(tmp) => return Ok(tmp),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < DIR_RETRIES => {
                    attempt += 1;
                }
                Err(source) => {
                    return Err(CacheError::Write {
                        digest: digest.clone(),
                        path: dir,
                        source,
                    });
                }
            }
        }
    }

    /// Removes the whole cache, or with `dry_run` only says what that would free.
    ///
    /// The directory is renamed aside (`DIR.prune-PID-N`) first and deleted
    /// there; leftovers of an earlier interrupted prune are deleted too. A
    /// missing cache is an empty one. Blocking: call it off the async runtime.
    pub fn prune(&self, dry_run: bool) -> Result<PruneReport, CacheError> {
        let mut report = PruneReport {
            dir: self.dir.clone(),
            blobs: 0,
            bytes: 0,
            dry_run,
        };
        let mut targets = self.leftover_prunes();
        if dry_run {
            targets.push(self.dir.clone());
            for target in &targets {
                tally(target, &mut report)?;
            }
            return Ok(report);
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let aside = aside_path(
            &self.dir,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        );
        match fs::rename(&self.dir, &aside) {
            Ok(()) => targets.push(aside),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CacheError::PruneRename {
                    path: self.dir.clone(),
                    source,
                });
            }
        }
        for target in &targets {
            tally(target, &mut report)?;
            match fs::remove_dir_all(target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CacheError::PruneRemove {
                        path: target.clone(),
                        source,
                    });
                }
            }
        }
        Ok(report)
    }

    /// `DIR.prune-*` siblings an interrupted prune left behind.
    fn leftover_prunes(&self) -> Vec<PathBuf> {
        let (Some(parent), Some(name)) = (self.dir.parent(), self.dir.file_name()) else {
            return Vec::new();
        };
        let prefix = format!("{}.prune-", name.to_string_lossy());
        let Ok(entries) = fs::read_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        }) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| parent.join(e.file_name()))
            .collect()
    }
}

fn aside_path(dir: &Path, pid: u32, n: u64) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".prune-{pid}-{n}"));
    PathBuf::from(name)
}

/// Adds the files under `path` to the report (a missing path adds nothing).
fn tally(path: &Path, report: &mut PruneReport) -> Result<(), CacheError> {
    let scan_err = |source| CacheError::PruneScan {
        path: path.to_owned(),
        source,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(scan_err(e)),
    };
    if meta.is_dir() {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(scan_err(e)),
        };
        for entry in entries {
            let entry = entry.map_err(scan_err)?;
            tally(&entry.path(), report)?;
        }
    } else {
        report.bytes += meta.len();
        let is_blob = path
            .parent()
            .is_some_and(|p| p.ends_with(Path::new("blobs").join("sha256")))
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(TMP_PREFIX));
        if is_blob {
            report.blobs += 1;
        }
    }
    Ok(())
}

/// A blob being written: bytes go to a temporary file and into a hash;
/// [`BlobWriter::commit`] checks size and digest and moves it into place.
/// Dropped without a commit, it leaves nothing behind.
#[derive(Debug)]
pub struct BlobWriter {
    cache: BlobCache,
    digest: Digest,
    size: u64,
    written: u64,
    hasher: sha2::Sha256,
    file: tokio::fs::File,
    tmp: tempfile::NamedTempFile,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data`; fails as soon as the blob outgrows its size.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), CacheError> {
        let written = self.written + data.len() as u64;
        if written > self.size {
            return Err(CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: written,
            });
        }
        self.file
            .write_all(data)
            .await
            .map_err(|source| CacheError::Write {
                digest: self.digest.clone(),
                path: self.tmp.path().to_owned(),
                source,
            })?;
        self.hasher.update(data);
        self.written = written;
        Ok(())
    }

    /// The digest of what was written so far.
    pub fn actual_digest(&self) -> Digest {
        Digest::from_sha256(self.hasher.clone().finalize().as_slice())
    }

    /// Checks the size and digest, then renames the blob into place.
    pub async fn commit(self) -> Result<PathBuf, CacheError> {
        self.finish().await?.commit().await
    }

    /// Checks the size and digest and flushes the data to disk, without
    /// putting the blob in place yet (see [`VerifiedBlob::commit`]).
    pub async fn finish(mut self) -> Result<VerifiedBlob, CacheError> {
        if self.written != self.size {
            return Err(CacheError::SizeMismatch {
                digest: self.digest,
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = self.actual_digest();
        if actual != self.digest {
            return Err(CacheError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let synced = match self.file.flush().await {
            Ok(()) => self.file.sync_all().await,
            Err(e) => Err(e),
        };
        synced.map_err(|source| CacheError::Write {
            digest: self.digest.clone(),
            path: self.tmp.path().to_owned(),
            source,
        })?;
        Ok(VerifiedBlob {
            cache: self.cache,
            digest: self.digest,
            tmp: self.tmp,
        })
    }
}

/// A blob whose size and digest were checked, waiting in its temporary
/// file. Dropped without a commit, it leaves nothing behind.
#[derive(Debug)]
pub struct VerifiedBlob {
    cache: BlobCache,
    digest: Digest,
    tmp: tempfile::NamedTempFile,
}

impl VerifiedBlob {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Renames the blob into place; returns its path in the cache.
    pub async fn commit(self) -> Result<PathBuf, CacheError> {
        let Self { cache, digest, tmp } = self;
        let dest = cache.blob_path(&digest);
        let digest2 = digest.clone();
        tokio::task::spawn_blocking(move || persist(&cache, &digest2, tmp))
            .await
            .map_err(|e| CacheError::Write {
                digest,
                path: dest,
                source: io::Error::other(e),
            })?
    }
}

/// Renames `tmp` to the blob's place. When a prune moved the directory
/// away meanwhile, the data is copied from the still-open file into a new
/// temporary file in a recreated directory, and renamed from there.
fn persist(
    cache: &BlobCache,
    digest: &Digest,
    mut tmp: tempfile::NamedTempFile,
) -> Result<PathBuf, CacheError> {
    let dest = cache.blob_path(digest);
    let mut attempt = 0;
    loop {
        match tmp.persist(&dest) {
            Ok(_) => return Ok(dest),
            Err(e) if e.error.kind() == io::ErrorKind::NotFound && attempt < DIR_RETRIES => {
                attempt += 1;
                tracing::debug!(%digest, "blob cache directory moved away during the write; writing again");
                let mut old = e.file;
                let mut fresh = cache.new_temp(digest)?;
                old.as_file_mut()
                    .seek(SeekFrom::Start(0))
                    .and_then(|_| io::copy(old.as_file_mut(), fresh.as_file_mut()))
                    .and_then(|_| fresh.as_file().sync_all())
                    .map_err(|source| CacheError::Write {
                        digest: digest.clone(),
                        path: fresh.path().to_owned(),
                        source,
                    })?;
                tmp = fresh;
            }
            Err(e) => {
                return Err(CacheError::Write {
                    digest: digest.clone(),
                    path: dest,
                    source: e.error,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn put(cache: &BlobCache, data: &[u8]) -> PathBuf {
        let digest = Digest::of(data);
        let mut w = cache.writer(&digest, data.len() as u64).await.unwrap();
        w.write(data).await.unwrap();
        w.commit().await.unwrap()
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    out.extend(files_under(&e.path()));
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn writes_verified_blobs_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(tmp.path().join("oci"));
        let path = put(&cache, b"hello").await;
        let digest = Digest::of(b"hello");
        assert_eq!(path, tmp.path().join("oci/blobs/sha256").join(digest.hex()));
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(cache.get(&digest, 5), Some(path));
        assert_eq!(cache.get(&digest, 6), None);
        assert_eq!(files_under(cache.dir()).len(), 1);
    }

    #[tokio::test]
    async fn refuses_wrong_digest_or_size_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(tmp.path().join("oci"));
        let digest = Digest::of(b"hello");

        let mut w = cache.writer(&digest, 5).await.unwrap();
        w.write(b"jello").await.unwrap();
        let err = w.commit().await.unwrap_err();
        assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");

        let mut w = cache.writer(&digest, 5).await.unwrap();
        let err = w.write(b"hello!").await.unwrap_err();
        assert!(
            matches!(err, CacheError::SizeMismatch { actual: 6, .. }),
            "{err}"
        );
        drop(w);

        let mut w = cache.writer(&digest, 5).await.unwrap();
        w.write(b"hell").await.unwrap();
        let err = w.commit().await.unwrap_err();
        assert!(
            matches!(err, CacheError::SizeMismatch { actual: 4, .. }),
            "{err}"
        );

        assert_eq!(files_under(cache.dir()), Vec::<PathBuf>::new());
        assert_eq!(cache.get(&digest, 5), None);
    }

    #[tokio::test]
    async fn prune_reports_then_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(tmp.path().join("oci"));
        put(&cache, b"one").await;
        put(&cache, b"three").await;
        // A leftover temporary file counts in bytes, not in blobs.
        fs::write(cache.blob_dir().join(".tmp-x"), b"12").unwrap();

        let dry = cache.prune(true).unwrap();
        assert_eq!(
            dry,
            PruneReport {
                dir: cache.dir().to_owned(),
                blobs: 2,
                bytes: 10,
                dry_run: true
            }
        );
        assert!(cache.get(&Digest::of(b"one"), 3).is_some());

        let done = cache.prune(false).unwrap();
        assert_eq!((done.blobs, done.bytes, done.dry_run), (2, 10, false));
        assert!(!cache.dir().exists());
        // Nothing is left aside either.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);

        // A missing cache is an empty one.
        let again = cache.prune(false).unwrap();
        assert_eq!((again.blobs, again.bytes), (0, 0));
        assert_eq!(cache.prune(true).unwrap().blobs, 0);
    }

    #[tokio::test]
    async fn prune_removes_leftovers_of_an_interrupted_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(tmp.path().join("oci"));
        let left = aside_path(cache.dir(), 1, 7);
        fs::create_dir_all(left.join("blobs/sha256")).unwrap();
        fs::write(left.join("blobs/sha256").join(Digest::of(b"x").hex()), b"x").unwrap();
        assert_eq!(cache.prune(true).unwrap().blobs, 1);
        let report = cache.prune(false).unwrap();
        assert_eq!((report.blobs, report.bytes), (1, 1));
        assert!(!left.exists());
    }

    #[tokio::test]
    async fn a_write_survives_its_directory_being_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(tmp.path().join("oci"));
        put(&cache, b"old").await;
        let data = b"survivor";
        let digest = Digest::of(data);
        let mut w = cache.writer(&digest, data.len() as u64).await.unwrap();
        w.write(&data[..3]).await.unwrap();
        // The prune removes the directory holding the temporary file.
        let report = cache.prune(false).unwrap();
        assert_eq!(report.blobs, 1);
        w.write(&data[3..]).await.unwrap();
        let path = w.commit().await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(cache.get(&digest, data.len() as u64), Some(path));
        assert_eq!(cache.get(&Digest::of(b"old"), 3), None);
        assert_eq!(files_under(cache.dir()).len(), 1);
    }
}
