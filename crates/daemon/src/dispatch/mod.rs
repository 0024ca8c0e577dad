//! Request dispatch: parse one request line, give it an op id, find its
//! handler in [`METHODS`] and turn the outcome into a response line.
//!
//! [`METHODS`] is the single source of truth for what the daemon answers;
//! a test pins it to the method list in `docs/rpc.md`.

use std::sync::Arc;
use std::time::Instant;

use banger_proto::{ErrorBody, ErrorCode, OpId, PROTOCOL_VERSION, Response, methods};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use crate::DaemonState;
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

pub use crate::error::chain as error_chain;

/// What a handler gets besides its params.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub op_id: OpId,
    pub state: Arc<DaemonState>,
}

pub type HandlerResult = Result<Value, RpcError>;
pub type Handler = fn(RequestCtx, Value) -> BoxFuture<'static, HandlerResult>;

/// One entry of the method table.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    pub name: &'static str,
    pub handler: Handler,
}

/// Every method the daemon answers, in the order `docs/rpc.md` lists them.
pub static METHODS: &[Method] = &[
    Method {
        name: methods::PING,
        handler: |ctx, p| Box::pin(handlers::ping(ctx, p)),
    },
    Method {
        name: methods::DAEMON_STATUS,
        handler: |ctx, p| Box::pin(handlers::daemon_status(ctx, p)),
    },
    Method {
        name: methods::DAEMON_SHUTDOWN,
        handler: |ctx, p| Box::pin(handlers::daemon_shutdown(ctx, p)),
    },
    Method {
        name: methods::VM_CREATE_BEGIN,
        handler: |ctx, p| Box::pin(handlers::vm::create_begin(ctx, p)),
    },
    Method {
        name: methods::VM_START,
        handler: |ctx, p| Box::pin(handlers::vm::start(ctx, p)),
    },
    Method {
        name: methods::VM_STOP,
        handler: |ctx, p| Box::pin(handlers::vm::stop(ctx, p)),
    },
    Method {
        name: methods::VM_KILL,
        handler: |ctx, p| Box::pin(handlers::vm::kill(ctx, p)),
    },
    Method {
        name: methods::VM_RESTART,
        handler: |ctx, p| Box::pin(handlers::vm::restart(ctx, p)),
    },
    Method {
        name: methods::VM_DELETE,
        handler: |ctx, p| Box::pin(handlers::vm::delete(ctx, p)),
    },
    Method {
        name: methods::VM_SHOW,
        handler: |ctx, p| Box::pin(handlers::vm::show(ctx, p)),
    },
    Method {
        name: methods::VM_LIST,
        handler: |ctx, p| Box::pin(handlers::vm::list(ctx, p)),
    },
    Method {
        name: methods::VM_EDIT,
        handler: |ctx, p| Box::pin(handlers::vm::edit(ctx, p)),
    },
    Method {
        name: methods::VM_SSH_INFO,
        handler: |ctx, p| Box::pin(handlers::vm::ssh_info(ctx, p)),
    },
    Method {
        name: methods::VM_STATS,
        handler: |ctx, p| Box::pin(handlers::vm::stats(ctx, p)),
    },
    Method {
        name: methods::VM_PORTS,
        handler: |ctx, p| Box::pin(handlers::vm::ports(ctx, p)),
    },
    Method {
        name: methods::VM_EXEC_BEGIN,
        handler: |ctx, p| Box::pin(handlers::vm::exec_begin(ctx, p)),
    },
    Method {
        name: methods::VM_EXEC_IO,
        handler: |ctx, p| Box::pin(handlers::vm::exec_io(ctx, p)),
    },
    Method {
        name: methods::VM_CP,
        handler: |ctx, p| Box::pin(handlers::vm::cp(ctx, p)),
    },
    Method {
        name: methods::IMAGE_BUILD_BEGIN,
        handler: |ctx, p| Box::pin(handlers::image_build_begin(ctx, p)),
    },
    Method {
        name: methods::IMAGE_LIST,
        handler: |ctx, p| Box::pin(handlers::image_list(ctx, p)),
    },
    Method {
        name: methods::IMAGE_SHOW,
        handler: |ctx, p| Box::pin(handlers::image_show(ctx, p)),
    },
    Method {
        name: methods::IMAGE_DELETE,
        handler: |ctx, p| Box::pin(handlers::image_delete(ctx, p)),
    },
    Method {
        name: methods::KERNEL_PULL_BEGIN,
        handler: |ctx, p| Box::pin(handlers::kernel_pull_begin(ctx, p)),
    },
    Method {
        name: methods::KERNEL_LIST,
        handler: |ctx, p| Box::pin(handlers::kernel_list(ctx, p)),
    },
    Method {
        name: methods::KERNEL_SHOW,
        handler: |ctx, p| Box::pin(handlers::kernel_show(ctx, p)),
    },
    Method {
        name: methods::KERNEL_DELETE,
        handler: |ctx, p| Box::pin(handlers::kernel_delete(ctx, p)),
    },
    Method {
        name: methods::OP_STATUS,
        handler: |ctx, p| Box::pin(handlers::op_status(ctx, p)),
    },
    Method {
        name: methods::OP_CANCEL,
        handler: |ctx, p| Box::pin(handlers::op_cancel(ctx, p)),
    },
    Method {
        name: methods::OP_LIST,
        handler: |ctx, p| Box::pin(handlers::op_list(ctx, p)),
    },
    Method {
        name: methods::DOCTOR,
        handler: |ctx, p| Box::pin(handlers::doctor(ctx, p)),
    },
    Method {
        name: methods::NETWORK_STATUS,
        handler: |ctx, p| Box::pin(handlers::network_status(ctx, p)),
    },
];

fn lookup(name: &str) -> Option<&'static Method> {
    let found = METHODS.iter().find(|m| m.name == name);
    #[cfg(test)]
    let found = found.or_else(|| {
        handlers::test_methods::METHODS
            .iter()
            .find(|m| m.name == name)
    });
    found
}

tokio::task_local! {
    /// The op id of the request (or async operation) a task works for, so
    /// calls to banger-helper deep in the lifecycle can forward it.
    static CURRENT_OP: String;
}

/// Runs `fut` with `op_id` as the current op id.
pub async fn with_op_id<F: Future>(op_id: String, fut: F) -> F::Output {
    CURRENT_OP.scope(op_id, fut).await
}

/// The op id of the request this task serves; a fresh one for background
/// work that serves none (logged by the caller).
pub fn current_op_id() -> String {
    CURRENT_OP
        .try_with(Clone::clone)
        .unwrap_or_else(|_| mint_op_id().as_str().to_owned())
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
    serde_json::from_value(params)
        .map_err(|e| RpcError::bad_params(format!("bad params for {method}: {e}")))
}

/// Handles one request line and returns the response to send.
pub async fn dispatch(state: &Arc<DaemonState>, line: &[u8]) -> Response {
    let started = Instant::now();
    let parsed = match parse_envelope(line) {
        Ok(parsed) => parsed,
        Err((op_id, err)) => {
            let span = tracing::warn_span!("rpc", op_id = %op_id);
            span.in_scope(|| tracing::warn!(code = %err.code, error = %err.message, "rpc refused"));
            return error_response(&op_id, err);
        }
    };
    let Envelope {
        op_id,
        method,
        params,
    } = parsed;
    let span = tracing::info_span!("rpc", op_id = %op_id, method = %method.name);
    let ctx = RequestCtx {
        op_id: op_id.clone(),
        state: Arc::clone(state),
    };
    let outcome = async {
        tracing::debug!("rpc started");
        let outcome = with_op_id(op_id.as_str().to_owned(), (method.handler)(ctx, params)).await;
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
        Ok(result) => Response::Ok { result },
        Err(err) => error_response(&op_id, err),
    }
}

fn error_response(op_id: &OpId, err: RpcError) -> Response {
    Response::Err {
        error: ErrorBody::new(err.code, err.message).with_op_id(op_id.as_str()),
    }
}

struct Envelope {
    op_id: OpId,
    method: &'static Method,
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

mod errors;
#[cfg(test)]
pub(crate) mod tests;
