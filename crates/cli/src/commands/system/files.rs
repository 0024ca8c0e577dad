//! Files install writes and uninstall removes: directories, atomic
//! writes, binaries copied beside a running copy, the helper's config.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use banger_proto::ErrorCode;
use banger_proto::helper::HelperConfig;

use super::{fail, io_fail};
use crate::CliError;

pub(super) fn create_dir_0755(dir: &Path) -> Result<(), CliError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io_fail(format_args!("create {}", dir.display()), &e))
}

/// A temporary name beside `path`, for write-then-rename.
pub(super) fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `contents` to `path` atomically with `mode`.
pub(super) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CliError> {
    let tmp = temp_beside(path);
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_fail(format_args!("write {}", path.display()), &e)
    })
}

/// Same inode on the same device (both exist).
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Copies `src` to `dst` (0755) through a temporary name and a rename, so a
/// running copy of `dst` is never overwritten in place. Returns false when
/// they are already the same file.
pub(super) fn copy_binary(src: &Path, dst: &Path) -> Result<bool, CliError> {
    if same_file(src, dst) {
        return Ok(false);
    }
    let tmp = temp_beside(dst);
    let result = (|| -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        fs::copy(src, &tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dst)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_fail(
            format_args!("copy {} to {}", src.display(), dst.display()),
            &e,
        )
    })?;
    Ok(true)
}

/// Removes a file; false when it was not there.
pub(super) fn remove_if_present(path: &Path) -> Result<bool, CliError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_fail(format_args!("remove {}", path.display()), &e)),
    }
}

pub(super) fn read_config(path: &Path) -> Result<Option<HelperConfig>, CliError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_fail(format_args!("read {}", path.display()), &e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        fail(
            ErrorCode::OperationFailed,
            format!("{} is not a helper config: {e}", path.display()),
        )
    })
}
