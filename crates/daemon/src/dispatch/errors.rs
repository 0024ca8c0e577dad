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

impl From<crate::vms::guest::GuestError> for RpcError {
    fn from(e: crate::vms::guest::GuestError) -> Self {
        Self::from_domain(guest_code(&e), &e)
    }
}

pub(crate) fn guest_code(e: &crate::vms::guest::GuestError) -> ErrorCode {
    use crate::vms::guest::GuestError as E;
    match e {
        E::Store(e) => store_code(e),
        E::Cancelled(_) => ErrorCode::Cancelled,
        E::NotRunning { .. } => ErrorCode::NotRunning,
        E::Agent { source, .. } => agent_code(source),
        E::NothingToRun
        | E::Stdin(_)
        | E::NotAbsolute { .. }
        | E::GuestNamesNoFile(_)
        | E::HostNamesNoFile(_)
        | E::Symlink(_)
        | E::BadDestination(_)
        | E::NotAFile(_) => ErrorCode::BadParams,
        E::NoExecSession(_) | E::NoHostFile { .. } => ErrorCode::NotFound,
        E::NoAgent { .. }
        | E::BootTimeout { .. }
        | E::VmmExited
        | E::ExecLost { .. }
        | E::HostFile { .. }
        | E::HostWriterGone
        | E::Task(..) => ErrorCode::OperationFailed,
    }
}

/// What the guest agent refused maps to the caller's mistake (not found,
/// bad params); anything else about the agent is a failed operation.
pub(crate) fn agent_code(e: &crate::agent::AgentError) -> ErrorCode {
    use crate::agent::AgentError as E;
    use banger_proto::agent::AgentErrorCode;
    match e {
        E::Refused {
            code: AgentErrorCode::NotFound,
            ..
        } => ErrorCode::NotFound,
        E::Refused {
            code: AgentErrorCode::BadRequest,
            ..
        } => ErrorCode::BadParams,
        _ => ErrorCode::OperationFailed,
    }
}
