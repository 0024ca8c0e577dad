//! Leftovers of killed runs.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A staging dir this old belongs to a process that is gone: no build or
/// pull takes anywhere near as long.
pub(crate) const STALE_STAGING_AGE: Duration = Duration::from_secs(6 * 3600);

/// Removes `dir/PREFIX*` directories older than [`STALE_STAGING_AGE`]
/// (temp dirs of a process that was killed before it could clean up).
/// Best effort: what cannot be removed now is tried again next time.
pub(crate) fn remove_stale_staging(dir: &Path, prefix: &str) {
    remove_staging_older_than(dir, prefix, STALE_STAGING_AGE);
}

fn remove_staging_older_than(dir: &Path, prefix: &str, age: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|a| a >= age);
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if old && is_dir {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_old_prefixed_dirs() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(".kernel-abc/pkg")).unwrap();
        fs::create_dir(dir.path().join("modules")).unwrap();
        fs::write(dir.path().join(".kernel-file"), b"x").unwrap();
        // Fresh: kept.
        remove_stale_staging(dir.path(), ".kernel-");
        assert!(dir.path().join(".kernel-abc").exists());
        // Old enough: removed; other names and plain files untouched.
        remove_staging_older_than(dir.path(), ".kernel-", Duration::ZERO);
        assert!(!dir.path().join(".kernel-abc").exists());
        assert!(dir.path().join("modules").exists());
        assert!(dir.path().join(".kernel-file").exists());
    }
}
