//! Request dispatch: parse one request line, give it an op id, find its
//! handler in [`METHODS`] and turn the outcome into a response line.
//!
//! [`METHODS`] is built from the method list in `banger_proto::methods`,
//! one [`Entry`] per method, each served by that method's [`Handler`]; a
//! test pins the list to `docs/rpc.md`, and `tests/compile_fail/` shows
//! that a method without a handler, or a handler without a method, does
//! not compile.

use std::any::TypeId;
use std::sync::Arc;
use std::time::Instant;

use banger_proto::methods::{self, Method, NoParams};
use banger_proto::{ErrorBody, ErrorCode, OpId, PROTOCOL_VERSION, Response};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use crate::DaemonState;
use crate::events::Subscription;
#[cfg(test)]
use crate::handlers;

/// A handler's failure: a wire error code and a short lowercase message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_params(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadParams, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OperationFailed, message)
    }
}

/// What a handler gets besides its params.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub op_id: OpId,
    pub state: Arc<DaemonState>,
    /// Where `events.subscribe` leaves the stream that follows its answer.
    pub follow: Follow,
}

/// A stream that follows a request's answer on its connection: set by the
/// one handler that has one (`events.subscribe`), taken by the connection
/// (`server.rs`) once the answer is written.
#[derive(Debug, Clone, Default)]
pub struct Follow(Arc<std::sync::Mutex<Option<Subscription>>>);

impl Follow {
    pub fn set(&self, sub: Subscription) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(sub);
    }

    fn take(&self) -> Option<Subscription> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A request's outcome: the response line, and the stream to send after
/// it, if the method has one and succeeded.
#[derive(Debug)]
pub struct Dispatched {
    pub response: Response,
    pub follow: Option<Subscription>,
}

/// What a method does: implemented once for each marker type of the
/// method list (`banger_proto::methods`), in `crate::handlers`. The table
/// below takes an entry for every listed method and each entry requires
/// this trait, so a listed method without a handler does not compile; a
/// handler for a method that is not listed does not either (only the list
/// makes [`Method`] types).
pub trait Handler: Method {
    /// Serves one request with its decoded params.
    fn handle(
        ctx: RequestCtx,
        params: Self::Params,
    ) -> impl Future<Output = Result<Self::Result, RpcError>> + Send;
}

pub type HandlerResult = Result<Value, RpcError>;
/// A table entry's handler: raw params in, raw result out.
pub type RawHandler = fn(RequestCtx, Value) -> BoxFuture<'static, HandlerResult>;

/// One entry of the method table.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub handler: RawHandler,
}

impl Entry {
    /// The entry of method `M`, served by its [`Handler`].
    pub const fn of<M: Served>() -> Self {
        M::ENTRY
    }
}

/// A method the table can serve: one with a [`Handler`]. (Its own trait
/// only so that a missing handler is reported in these words, without a
/// list of every method that has one.)
#[diagnostic::on_unimplemented(
    message = "method `{Self}` is in the method list but has no handler",
    label = "no `impl Handler for {Self}`",
    note = "implement `banger_daemon::dispatch::Handler` for it in `crates/daemon/src/handlers/`"
)]
pub trait Served: Method {
    const ENTRY: Entry;
}

#[diagnostic::do_not_recommend]
impl<M: Handler> Served for M {
    const ENTRY: Entry = Entry {
        name: M::NAME,
        handler: serve::<M>,
    };
}

/// Decodes `M`'s params once, runs its handler, encodes its result once.
fn serve<M: Handler>(ctx: RequestCtx, params: Value) -> BoxFuture<'static, HandlerResult> {
    Box::pin(async move {
        let params = decode::<M>(params)?;
        // A `*.begin` holds an admission until its operation is registered,
        // so `daemon.shutdown` with `if_idle` sees it (crates/daemon/src/ops.rs).
        let _admitted = if M::NAME.ends_with(".begin") {
            Some(
                ctx.state
                    .ops
                    .admit()
                    .map_err(|e| RpcError::new(ErrorCode::Conflict, e.to_string()))?,
            )
        } else {
            None
        };
        let result = M::handle(ctx, params).await?;
        serde_json::to_value(result).map_err(|e| RpcError::internal(format!("encode result: {e}")))
    })
}

/// `M`'s params: `METHOD takes no params` for a method without any that
/// got some, `bad params for METHOD: ...` for anything else that does not
/// decode.
fn decode<M: Method>(value: Value) -> Result<M::Params, RpcError> {
    if TypeId::of::<M::Params>() == TypeId::of::<NoParams>() {
        match &value {
            Value::Null => {}
            Value::Object(o) if o.is_empty() => {}
            _ => {
                return Err(RpcError::bad_params(format!("{} takes no params", M::NAME)));
            }
        }
    }
    params(M::NAME, value)
}

/// Builds the method table from a method list: one [`Entry`] per method,
/// each requiring that method's [`Handler`]. `METHODS` is this over
/// `banger_proto::for_each_method!`; exported only for the compile-fail
/// tests (`tests/compile_fail/`), which build it over a list with a method
/// that has no handler. `methods` names the module of the list's marker
/// types at the call site.
#[doc(hidden)]
#[macro_export]
macro_rules! handler_table {
    ($($(#[$meta:meta])* $ty:ident = $name:literal: $params:ty => $result:ty,)*) => {
        /// Every method the daemon answers, in the order of the method list
        /// (and of `docs/rpc.md`).
        pub static METHODS: &[$crate::dispatch::Entry] =
            &[$($crate::dispatch::Entry::of::<methods::$ty>()),*];
    };
}

banger_proto::for_each_method!(handler_table);

fn lookup(name: &str) -> Option<&'static Entry> {
    let found = METHODS.iter().find(|m| m.name == name);
    #[cfg(test)]
    let found = found.or_else(|| {
        handlers::test_methods::METHODS
            .iter()
            .find(|m| m.name == name)
    });
    found
}

pub use crate::op::mint as mint_op_id;

/// Decodes a method's params. `null` stands for "no params" and is read as
/// an empty object, so methods with all-optional params accept both.
pub fn params<T: DeserializeOwned>(method: &str, params: Value) -> Result<T, RpcError> {
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params
    };
    serde_path_to_error::deserialize(params).map_err(|e| {
        // serde's own message for a wrong type ("invalid type: string, expected
        // u64") does not say which field; the path does ("resources.vcpus").
        let path = e.path().to_string();
        let cause = e.inner();
        if path == "." {
            RpcError::bad_params(format!("bad params for {method}: {cause}"))
        } else {
            RpcError::bad_params(format!("bad params for {method}: `{path}`: {cause}"))
        }
    })
}

/// Handles one request line and returns the response to send.
pub async fn dispatch(state: &Arc<DaemonState>, line: &[u8]) -> Response {
    dispatch_streaming(state, line).await.response
}

/// Handles one request line: the response to send, and the stream to
/// send after it (`events.subscribe`).
pub async fn dispatch_streaming(state: &Arc<DaemonState>, line: &[u8]) -> Dispatched {
    let started = Instant::now();
    let parsed = match parse_envelope(line) {
        Ok(parsed) => parsed,
        Err((op_id, err)) => {
            let span = tracing::warn_span!("rpc", op_id = %op_id);
            span.in_scope(|| tracing::warn!(code = %err.code, error = %err.message, "rpc refused"));
            return Dispatched {
                response: error_response(&op_id, err),
                follow: None,
            };
        }
    };
    let Envelope {
        op_id,
        method,
        params,
    } = parsed;
    let span = tracing::info_span!("rpc", op_id = %op_id, method = %method.name);
    let follow = Follow::default();
    let ctx = RequestCtx {
        op_id: op_id.clone(),
        state: Arc::clone(state),
        follow: follow.clone(),
    };
    let outcome = async {
        tracing::debug!("rpc started");
        let outcome = (method.handler)(ctx, params).await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &outcome {
            Ok(_) => tracing::debug!(duration_ms, "rpc completed"),
            Err(e) if e.code == ErrorCode::OperationFailed => {
                tracing::error!(duration_ms, code = %e.code, error = %e.message, "rpc failed")
            }
            Err(e) => {
                tracing::warn!(duration_ms, code = %e.code, error = %e.message, "rpc failed")
            }
        }
        outcome
    }
    .instrument(span)
    .await;
    match outcome {
        Ok(result) => Dispatched {
            response: Response::Ok { result },
            follow: follow.take(),
        },
        Err(err) => Dispatched {
            response: error_response(&op_id, err),
            follow: None,
        },
    }
}

fn error_response(op_id: &OpId, err: RpcError) -> Response {
    Response::Err {
        error: ErrorBody::new(err.code, err.message).with_op_id(op_id.as_str()),
    }
}

struct Envelope {
    op_id: OpId,
    method: &'static Entry,
    params: Value,
}

/// Validates the envelope field by field, so that every refusal can carry
/// the caller's op id whenever the envelope got far enough to name one.
fn parse_envelope(line: &[u8]) -> Result<Envelope, (OpId, RpcError)> {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Err((
                mint_op_id(),
                RpcError::new(
                    ErrorCode::BadRequest,
                    format!("request is not valid json: {e}"),
                ),
            ));
        }
    };
    let Value::Object(mut obj) = value else {
        return Err((
            mint_op_id(),
            RpcError::new(ErrorCode::BadRequest, "request must be a json object"),
        ));
    };
    let op_id = match obj.remove("op_id") {
        None | Some(Value::Null) => mint_op_id(),
        Some(Value::String(s)) => match OpId::parse(&s) {
            Some(id) => id,
            None => {
                return Err((
                    mint_op_id(),
                    bad_request("op_id must match op-[A-Za-z0-9_-]{6,64}"),
                ));
            }
        },
        Some(_) => return Err((mint_op_id(), bad_request("op_id must be a string"))),
    };
    let version = match obj.get("version") {
        Some(Value::Number(n)) => n.as_u64(),
        None => return Err((op_id, bad_request("request has no version"))),
        Some(_) => None,
    };
    match version {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        _ => {
            let shown = obj.get("version").map(Value::to_string).unwrap_or_default();
            return Err((
                op_id,
                RpcError::new(
                    ErrorCode::BadVersion,
                    format!(
                        "unsupported protocol version {shown} (this daemon speaks {PROTOCOL_VERSION})"
                    ),
                ),
            ));
        }
    }
    let name = match obj.get("method") {
        Some(Value::String(m)) => m.as_str(),
        None => return Err((op_id, bad_request("request has no method"))),
        Some(_) => return Err((op_id, bad_request("method must be a string"))),
    };
    let Some(method) = lookup(name) else {
        let shown: String = name.chars().take(64).collect();
        return Err((
            op_id,
            RpcError::new(
                ErrorCode::UnknownMethod,
                format!("unknown method {shown:?}"),
            ),
        ));
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    Ok(Envelope {
        op_id,
        method,
        params,
    })
}

fn bad_request(message: &str) -> RpcError {
    RpcError::new(ErrorCode::BadRequest, message)
}

pub(crate) mod errors;
pub mod server;
#[cfg(test)]
pub(crate) mod tests;
