//! Where banger keeps things, following the XDG base-directory spec.
//!
//! | dir | default | holds |
//! |---|---|---|
//! | config | `~/.config/banger` | user configuration |
//! | data | `~/.local/share/banger` | the SQLite database, images, kernels, VM disks |
//! | state | `~/.local/state/banger` | the daemon's log file |
//! | cache | `~/.cache/banger` | downloads that can be fetched again |
//! | runtime | `$XDG_RUNTIME_DIR/banger`, else `/tmp/banger-UID` | the socket and lock file |
//!
//! The runtime dir holds the daemon's socket, so it must be private: it is
//! created 0700, and a pre-existing one that is a symlink or belongs to
//! another user is refused rather than used.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot find the home directory: HOME is unset and no XDG_{var}_HOME is set")]
    NoHome { var: &'static str },
    #[error("{var} must be an absolute path, got {value:?}")]
    NotAbsolute { var: &'static str, value: PathBuf },
    #[error("create directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "refusing to use {path}: it is a symlink or not a directory (remove it or set XDG_RUNTIME_DIR)"
    )]
    NotADirectory { path: PathBuf },
    #[error("refusing to use {path}: it belongs to uid {owner}, not to uid {uid}")]
    ForeignOwner { path: PathBuf, owner: u32, uid: u32 },
}

/// The directories banger uses for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Layout {
    /// The layout for the current process's environment and uid.
    pub fn from_env() -> Result<Self, PathsError> {
        let uid = rustix::process::getuid().as_raw();
        Self::from_vars(|name| std::env::var_os(name), uid)
    }

    /// The layout for the given environment lookup and uid (pure; no I/O).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>, uid: u32) -> Result<Self, PathsError> {
        let home = var("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let base = |xdg: &'static str, short: &'static str, fallback: &str| match var(xdg)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
        {
            Some(p) if p.is_absolute() => Ok(p.join("banger")),
            Some(p) => Err(PathsError::NotAbsolute { var: xdg, value: p }),
            None => home
                .as_ref()
                .map(|h| h.join(fallback).join("banger"))
                .ok_or(PathsError::NoHome { var: short }),
        };
        let runtime_dir = match var("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(p) if Path::new(&p).is_absolute() => PathBuf::from(p).join("banger"),
            Some(p) => {
                return Err(PathsError::NotAbsolute {
                    var: "XDG_RUNTIME_DIR",
                    value: p.into(),
                });
            }
            None => std::env::temp_dir().join(format!("banger-{uid}")),
        };
        Ok(Self {
            config_dir: base("XDG_CONFIG_HOME", "CONFIG", ".config")?,
            data_dir: base("XDG_DATA_HOME", "DATA", ".local/share")?,
            state_dir: base("XDG_STATE_HOME", "STATE", ".local/state")?,
            cache_dir: base("XDG_CACHE_HOME", "CACHE", ".cache")?,
            runtime_dir,
        })
    }

    /// The daemon's Unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }

    /// The file a live daemon holds an exclusive lock on.
    pub fn lock_path(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.lock")
    }

    /// The daemon's JSON log.
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("bangerd.log")
    }

    /// The SQLite database of durable state.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("banger.db")
    }

    /// Creates the data, state and cache dirs (0700) and the private
    /// runtime dir, checking ownership of the latter.
    pub fn ensure_dirs(&self) -> Result<(), PathsError> {
        for dir in [&self.data_dir, &self.state_dir, &self.cache_dir] {
            create_dir_0700(dir)?;
        }
        ensure_private_dir(&self.runtime_dir)
    }
}

fn create_dir_0700(path: &Path) -> Result<(), PathsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| PathsError::Create {
            path: path.to_owned(),
            source,
        })
}

/// Creates `path` as a 0700 directory, or checks an existing one: it must be
/// a real directory (not a symlink) owned by the current uid. A directory of
/// ours with looser permissions is tightened.
pub fn ensure_private_dir(path: &Path) -> Result<(), PathsError> {
    create_dir_0700(path)?;
    let meta = fs::symlink_metadata(path).map_err(|source| PathsError::Create {
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_dir() {
        return Err(PathsError::NotADirectory {
            path: path.to_owned(),
        });
    }
    let uid = rustix::process::getuid().as_raw();
    if meta.uid() != uid {
        return Err(PathsError::ForeignOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|source| {
            PathsError::Create {
                path: path.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn layout(vars: &[(&str, &str)]) -> Result<Layout, PathsError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Layout::from_vars(|k| map.get(k).cloned(), 1000)
    }

    #[test]
    fn defaults_follow_home() {
        let l = layout(&[("HOME", "/home/u")]).unwrap();
        assert_eq!(l.config_dir, Path::new("/home/u/.config/banger"));
        assert_eq!(l.data_dir, Path::new("/home/u/.local/share/banger"));
        assert_eq!(l.state_dir, Path::new("/home/u/.local/state/banger"));
        assert_eq!(l.cache_dir, Path::new("/home/u/.cache/banger"));
        assert_eq!(l.runtime_dir, std::env::temp_dir().join("banger-1000"));
        assert_eq!(l.socket_path(), l.runtime_dir.join("bangerd.sock"));
    }

    #[test]
    fn xdg_vars_win_over_home() {
        let l = layout(&[
            ("HOME", "/home/u"),
            ("XDG_DATA_HOME", "/d"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ])
        .unwrap();
        assert_eq!(l.data_dir, Path::new("/d/banger"));
        assert_eq!(l.runtime_dir, Path::new("/run/user/1000/banger"));
        assert_eq!(l.config_dir, Path::new("/home/u/.config/banger"));
    }

    #[test]
    fn relative_xdg_and_missing_home_are_errors() {
        let err = layout(&[("HOME", "/h"), ("XDG_STATE_HOME", "rel")]).unwrap_err();
        assert!(err.to_string().contains("XDG_STATE_HOME"), "{err}");
        assert!(matches!(layout(&[]), Err(PathsError::NoHome { .. })));
    }

    #[test]
    fn private_dir_is_created_0700_and_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rt");
        ensure_private_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn private_dir_refuses_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        let link = tmp.path().join("rt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            ensure_private_dir(&link),
            Err(PathsError::NotADirectory { .. })
        ));
    }
}
