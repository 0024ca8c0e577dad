//! Where `banger system` finds things: systemd's directories, the files
//! beside the helper's socket, the install prefix.

use std::path::{Path, PathBuf};

use crate::CliError;

/// Beside the socket, for a helper started without systemd.
pub(super) const PID_FILE: &str = "helper.pid";
pub(super) const LOG_FILE: &str = "helper.log";

pub(super) fn systemd_running() -> bool {
    let dir = std::env::var_os("BANGER_SYSTEMD_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/systemd/system"));
    dir.is_dir()
}

pub(super) fn unit_dir() -> PathBuf {
    std::env::var_os("BANGER_SYSTEMD_UNIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"))
}

pub(super) fn socket_dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

pub(super) fn pid_file(socket: &Path) -> PathBuf {
    socket_dir(socket).join(PID_FILE)
}

pub(super) fn log_file(socket: &Path) -> PathBuf {
    socket_dir(socket).join(LOG_FILE)
}

pub(super) fn bin_dir(prefix: &Path) -> PathBuf {
    prefix.join("bin")
}

pub(super) fn absolute(flag: &str, path: &Path) -> Result<(), CliError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(CliError::BadParams(format!(
            "{flag} {} must be an absolute path",
            path.display()
        )))
    }
}
