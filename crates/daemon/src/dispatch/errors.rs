//! The one place where domain errors become wire errors: each domain
//! error type maps to an [`ErrorCode`] here (looking through the errors it
//! wraps), and its message is its chain of causes, each printed once.

use banger_proto::{ErrorBody, ErrorCode};

use super::RpcError;
use crate::error::chain;

impl RpcError {
    /// A domain error as a wire error: `code` and its whole cause chain.
    pub(crate) fn from_domain(code: ErrorCode, e: &dyn std::error::Error) -> Self {
        Self::new(code, chain(e))
    }

    /// The body an asynchronous operation keeps, so `op.status` carries
    /// the code of what failed.
    pub(crate) fn into_body(self) -> ErrorBody {
        ErrorBody::new(self.code, self.message)
    }
}

impl From<banger_store::StoreError> for RpcError {
    fn from(e: banger_store::StoreError) -> Self {
        Self::from_domain(store_code(&e), &e)
    }
}

pub(crate) fn store_code(e: &banger_store::StoreError) -> ErrorCode {
    use banger_store::StoreError as E;
    match e {
        E::NotFound { .. } | E::MissingReference { .. } => ErrorCode::NotFound,
        E::AlreadyExists { .. } | E::InUse { .. } => ErrorCode::Conflict,
        _ => ErrorCode::OperationFailed,
    }
}

impl From<crate::ops::UnknownOp> for RpcError {
    fn from(e: crate::ops::UnknownOp) -> Self {
        Self::from_domain(ErrorCode::NotFound, &e)
    }
}

impl From<crate::op::Cancelled> for RpcError {
    fn from(e: crate::op::Cancelled) -> Self {
        Self::from_domain(ErrorCode::Cancelled, &e)
    }
}
