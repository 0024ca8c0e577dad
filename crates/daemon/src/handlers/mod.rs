//! Method handlers, one async fn per method. Each takes the request context
//! and its raw params, and decodes the params itself with
//! [`dispatch::params`](crate::dispatch::params).

mod artifacts;
mod daemon;
#[cfg(test)]
pub(crate) mod test_methods;
pub(crate) mod vm;

pub(crate) use artifacts::*;
pub(crate) use daemon::{daemon_shutdown, daemon_status, network_status, ping};

use serde_json::Value;

use crate::dispatch::RpcError;

/// Checks the params of a method that takes none: `null`, absent or `{}`.
pub(crate) fn no_params(method: &str, params: &Value) -> Result<(), RpcError> {
    match params {
        Value::Null => Ok(()),
        Value::Object(o) if o.is_empty() => Ok(()),
        _ => Err(RpcError::bad_params(format!("{method} takes no params"))),
    }
}

/// Encodes a handler's result.
pub(crate) fn to_value<T: serde::Serialize>(v: T) -> crate::dispatch::HandlerResult {
    serde_json::to_value(v).map_err(|e| RpcError::internal(format!("encode result: {e}")))
}
