use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Machine-readable error class of a failed request.
///
/// Clients branch on this, never on the message text. A code added by a
/// newer daemon reads as [`ErrorCode::Unknown`] in an older client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request line was not a JSON request envelope, or was too large.
    BadRequest,
    /// The envelope's `version` is not one this daemon speaks.
    BadVersion,
    /// No handler is registered under the requested method name.
    UnknownMethod,
    /// The method exists but its `params` do not fit it.
    BadParams,
    /// A named object (VM, image, kernel, operation) does not exist.
    NotFound,
    /// The VM exists but is not running.
    NotRunning,
    /// The request clashes with current state (duplicate name, busy VM).
    Conflict,
    /// The caller is not allowed to talk to this daemon, or a registry
    /// refused access to an image (the message says how to log in).
    PermissionDenied,
    /// The method ran and failed; the message says why.
    OperationFailed,
    /// The work was cancelled (client went away, or `*.cancel` was called).
    Cancelled,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BadVersion => "bad_version",
            Self::UnknownMethod => "unknown_method",
            Self::BadParams => "bad_params",
            Self::NotFound => "not_found",
            Self::NotRunning => "not_running",
            Self::Conflict => "conflict",
            Self::PermissionDenied => "permission_denied",
            Self::OperationFailed => "operation_failed",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of a failed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The id of the request that failed, so a user can find its log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            op_id: None,
        }
    }

    pub fn with_op_id(mut self, op_id: impl Into<String>) -> Self {
        self.op_id = Some(op_id.into());
        self
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(op_id) = &self.op_id {
            write!(f, " ({op_id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorBody {}

/// `outer: inner: innermost`: an error's message and each of its sources,
/// once. Every banger process prints errors this way, and every error
/// type's own message leaves its source out, so no cause repeats.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
