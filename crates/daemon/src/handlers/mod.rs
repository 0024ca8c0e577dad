//! Method handlers, one async fn per method. Each takes the request context
//! and its raw params, and decodes the params itself with
//! [`dispatch::params`](crate::dispatch::params).

mod daemon;
#[cfg(test)]
pub(crate) mod test_methods;

pub(crate) use daemon::{daemon_shutdown, daemon_status, ping};

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
