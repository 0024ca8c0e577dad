use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ErrorBody, PROTOCOL_VERSION};

/// One request line: `{version, method, params, op_id?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub method: String,
    /// Method parameters; `null` (or absent) for methods that take none.
    #[serde(default)]
    pub params: Value,
    /// The caller's op id to adopt; the daemon mints one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

impl Request {
    /// A request at the current protocol version with no op id.
    pub fn new(method: impl Into<String>, params: Value) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            method: method.into(),
            params,
            op_id: None,
        }
    }
}

/// One response line: `{result}` or `{error}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Ok { result: Value },
    Err { error: ErrorBody },
}

impl Response {
    pub fn into_result(self) -> Result<Value, ErrorBody> {
        match self {
            Self::Ok { result } => Ok(result),
            Self::Err { error } => Err(error),
        }
    }
}

/// An operation id: `op-` followed by 6 to 64 characters from
/// `[A-Za-z0-9_-]`. One id ties together the CLI's error text, every daemon
/// log line of a request and, later, the helper's log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OpId(String);

impl OpId {
    pub const PREFIX: &'static str = "op-";

    /// Parses a caller-supplied id, refusing anything that could break a
    /// log line or a terminal (spaces, newlines, escapes, huge strings).
    pub fn parse(s: &str) -> Option<Self> {
        let tail = s.strip_prefix(Self::PREFIX)?;
        let ok_len = (6..=64).contains(&tail.len());
        let ok_chars = tail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (ok_len && ok_chars).then(|| Self(s.to_owned()))
    }

    /// Builds an id from a random tail the caller generated. Returns `None`
    /// when the tail does not satisfy [`OpId::parse`].
    pub fn from_tail(tail: &str) -> Option<Self> {
        Self::parse(&format!("{}{tail}", Self::PREFIX))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for OpId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for OpId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value).ok_or_else(|| format!("invalid op id {value:?}"))
    }
}

impl From<OpId> for String {
    fn from(value: OpId) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_id_accepts_the_documented_shape() {
        assert!(OpId::parse("op-abc123").is_some());
        assert!(OpId::parse("op-a_b-c-1234567890").is_some());
    }

    #[test]
    fn op_id_refuses_short_long_and_unsafe_values() {
        for bad in [
            "op-abc",
            "abc123456",
            "op-abc 123",
            "op-abc\n123",
            "op-\u{1b}[31mred",
            &format!("op-{}", "a".repeat(65)),
        ] {
            assert!(OpId::parse(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn response_reads_both_shapes() {
        let ok: Response = serde_json::from_str(r#"{"result":{"a":1}}"#).unwrap();
        assert_eq!(ok.into_result().unwrap()["a"], 1);
        let err: Response = serde_json::from_str(
            r#"{"error":{"code":"not_found","message":"no vm named x","op_id":"op-123456"}}"#,
        )
        .unwrap();
        let body = err.into_result().unwrap_err();
        assert_eq!(body.code, crate::ErrorCode::NotFound);
        assert_eq!(body.to_string(), "no vm named x (op-123456)");
    }

    #[test]
    fn unknown_error_codes_from_newer_peers_still_parse() {
        let err: Response =
            serde_json::from_str(r#"{"error":{"code":"brand_new","message":"m"}}"#).unwrap();
        assert_eq!(
            err.into_result().unwrap_err().code,
            crate::ErrorCode::Unknown
        );
    }
}
