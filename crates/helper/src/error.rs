//! The one error type of the helper library. Every variant maps to a
//! [`HelperErrorCode`]; its text is the `message` of the error line the
//! caller receives, so messages are short, lowercase and never echo more
//! than a bounded, escaped piece of what the caller sent.

use std::io;
use std::path::PathBuf;

use banger_proto::helper::HelperErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a JSON request, an unknown call, a bad field, too large, too slow.
    #[error("{0}")]
    BadRequest(String),
    #[error("protocol version {got} is not supported (this helper speaks {supported})")]
    BadVersion { got: String, supported: u32 },
    #[error("uid {uid} may not use banger-helper")]
    PermissionDenied { uid: u32 },
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidPath(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    NotFound(String),
    /// The host refused the change; carries the tool's own error text.
    #[error("{0}")]
    OperationFailed(String),
    /// The host lacks what the call needs (a kernel module); the message
    /// names it and how to get it.
    #[error("{0}")]
    Unsupported(String),
    /// The helper's config file is missing, unreadable or invalid.
    #[error("config {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    /// Setting the helper itself up failed (socket, log file, signals);
    /// the cause is the source, so a chain prints it once.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn code(&self) -> HelperErrorCode {
        match self {
            Self::BadRequest(_) => HelperErrorCode::BadRequest,
            Self::BadVersion { .. } => HelperErrorCode::BadVersion,
            Self::PermissionDenied { .. } => HelperErrorCode::PermissionDenied,
            Self::InvalidName(_) => HelperErrorCode::InvalidName,
            Self::InvalidPath(_) => HelperErrorCode::InvalidPath,
            Self::InvalidArgument(_) => HelperErrorCode::InvalidArgument,
            Self::NotAllowed(_) => HelperErrorCode::NotAllowed,
            Self::NotFound(_) => HelperErrorCode::NotFound,
            Self::Unsupported(_) => HelperErrorCode::Unsupported,
            Self::OperationFailed(_) | Self::Config { .. } | Self::Io { .. } => {
                HelperErrorCode::OperationFailed
            }
        }
    }

    /// The message with every cause after it (`what: cause: ...`), each
    /// once: the text of the error line a caller receives.
    pub fn message(&self) -> String {
        banger_proto::error_chain(self)
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// How much of a caller's value an error message quotes.
const QUOTE_MAX_CHARS: usize = 64;

/// `value` as a quoted, escaped string of bounded length, for messages and
/// log lines: a newline or a NUL in a name shows as `\n` or `\0`, and a
/// 60 KiB name shows as its first 64 characters and `...`.
pub(crate) fn quote(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(QUOTE_MAX_CHARS).collect();
    let more = chars.next().is_some();
    let mut out = format!("{head:?}");
    if more {
        out.insert_str(out.len() - 1, "...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_and_bounds() {
        assert_eq!(quote("bgtap1"), "\"bgtap1\"");
        assert_eq!(quote("a\nb\0"), "\"a\\nb\\0\"");
        let long = "x".repeat(1000);
        let q = quote(&long);
        assert!(q.len() < 80, "{q}");
        assert!(q.ends_with("...\""), "{q}");
    }

    #[test]
    fn io_errors_print_their_cause_once() {
        let e = Error::io("listen on /x", io::Error::other("address in use"));
        assert_eq!(e.to_string(), "listen on /x");
        assert_eq!(e.message(), "listen on /x: address in use");
        assert_eq!(Error::NotFound("no".into()).message(), "no");
    }

    #[test]
    fn every_variant_has_its_code() {
        assert_eq!(
            Error::BadRequest(String::new()).code(),
            HelperErrorCode::BadRequest
        );
        assert_eq!(
            Error::Config {
                path: PathBuf::from("/x"),
                reason: String::new()
            }
            .code(),
            HelperErrorCode::OperationFailed
        );
        assert_eq!(
            Error::NotAllowed(String::new()).code().as_str(),
            "not_allowed"
        );
    }
}
