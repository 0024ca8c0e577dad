//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while pulling a kernel, building an
/// initramfs or building a root filesystem image.
///
/// Messages are short and lowercase; the fields say which command, which
/// package or which path was involved so the daemon can log them as is. A
/// message never repeats its source: print the chain (`outer: cause`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A program could not be started at all (usually: not installed);
    /// why is the source.
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// A program ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line, shell-like, for the log.
        command: String,
        /// How it ended: `exit status 1`, `signal 9`.
        status: String,
        /// The last lines of its standard error (or output, if stderr was empty).
        stderr: String,
    },

    /// A file system operation failed; why is the source.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done: "create", "read", "rename", ...
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// apt knows no installable version of the package (even after `apt-get update`).
    #[error("no installable package {package} in apt's lists")]
    PackageNotFound { package: String },

    /// The kernel metapackage depends on no `linux-image-*` package.
    #[error("{package} depends on no linux-image package")]
    NoImagePackage { package: String },

    /// The extracted kernel package does not look like a Debian kernel.
    #[error("unexpected kernel package layout in {}: {reason}", path.display())]
    KernelLayout { path: PathBuf, reason: String },

    /// A kernel module file could not be read or decompressed.
    #[error("bad kernel module {}: {reason}", path.display())]
    Module { path: PathBuf, reason: String },

    /// The modules directory given to the initramfs builder is missing.
    #[error("no modules for kernel {version} in {}", path.display())]
    ModulesMissing { version: String, path: PathBuf },

    /// Image builds run mmdebstrap in root mode.
    #[error("image builds need root: rootless image builds are not supported yet")]
    NotRoot,

    /// The recipe cannot be built as given.
    #[error("invalid image recipe: {reason}")]
    InvalidRecipe { reason: String },

    /// `size_bytes` is smaller than what the image's files need.
    #[error("image size {requested} bytes is too small: the files need at least {needed} bytes")]
    SizeTooSmall { requested: u64, needed: u64 },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for `Result<T, ImageError>`.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    use banger_proto::error_chain as chain;

    #[test]
    fn each_cause_prints_once() {
        let cause = || std::io::Error::other("the cause");
        let spawn = ImageError::Spawn {
            program: "mmdebstrap".into(),
            source: cause(),
        };
        assert_eq!(chain(&spawn), "cannot run mmdebstrap: the cause");
        let io = ImageError::io("rename", "/x/y", cause());
        assert_eq!(chain(&io), "rename /x/y: the cause");
    }
}
