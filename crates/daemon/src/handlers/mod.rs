//! Method handlers: one [`Handler`](crate::dispatch::Handler) impl per
//! method of the list, taking the request context and the method's
//! decoded params and answering its typed result.

mod artifacts;
mod daemon;
mod snapshot;
#[cfg(test)]
pub(crate) mod test_methods;
#[cfg(test)]
mod tests;
mod vm;

use crate::dispatch::RpcError;

/// Encodes the result of an asynchronous operation (kept as JSON in its
/// view).
pub(crate) fn to_value<T: serde::Serialize>(v: T) -> crate::dispatch::HandlerResult {
    serde_json::to_value(v).map_err(|e| RpcError::internal(format!("encode result: {e}")))
}
