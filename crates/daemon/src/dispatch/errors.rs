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

impl From<crate::validate::Invalid> for RpcError {
    fn from(e: crate::validate::Invalid) -> Self {
        Self::from_domain(ErrorCode::BadParams, &e)
    }
}

impl From<crate::network::NetworkError> for RpcError {
    fn from(e: crate::network::NetworkError) -> Self {
        Self::from_domain(network_code(&e), &e)
    }
}

pub(crate) fn network_code(e: &crate::network::NetworkError) -> ErrorCode {
    use crate::network::NetworkError as E;
    match e {
        E::AddressesExhausted { .. }
        | E::PortInUse { .. }
        | E::PortPublished { .. }
        | E::PortReserved { .. } => ErrorCode::Conflict,
        E::UdpNeedsUserMode { .. } => ErrorCode::BadParams,
        E::Store(e) => store_code(e),
        E::NoHelper { .. }
        | E::Helper { .. }
        | E::UnexpectedReply { .. }
        | E::BadSubnet(_)
        | E::BadLease(_)
        | E::NoTapName
        | E::NoFreePort(_)
        | E::Listen { .. } => ErrorCode::OperationFailed,
    }
}

impl From<crate::vms::VmError> for RpcError {
    fn from(e: crate::vms::VmError) -> Self {
        Self::from_domain(vm_code(&e), &e)
    }
}

pub(crate) fn vm_code(e: &crate::vms::VmError) -> ErrorCode {
    use crate::vms::VmError as E;
    match e {
        E::Invalid(_)
        | E::BadPublish(_)
        | E::BadNetwork(_)
        | E::PublishedTwice(_)
        | E::NothingToChange
        | E::Shrink { .. }
        | E::UnknownSignal(_) => ErrorCode::BadParams,
        E::NameTaken(_) | E::Running(_) => ErrorCode::Conflict,
        E::NotRunning { .. } => ErrorCode::NotRunning,
        E::MissingFile { .. } => ErrorCode::NotFound,
        E::Cancelled(_) | E::CreateCancelled => ErrorCode::Cancelled,
        E::StartFailed { cause, .. } => vm_code(cause),
        E::Network(e) => network_code(e),
        E::Guest(e) => guest_code(e),
        E::Store(e) => store_code(e),
        E::Legacy(e) => e.code,
        E::NoRootStrategy(_)
        | E::NoWorkSeed(_)
        | E::VmmExited
        | E::SshTimeout(_)
        | E::BadSshHost(_)
        | E::KillFailed(_)
        | E::StillRunning { .. }
        | E::Io { .. }
        | E::Task(..)
        | E::Vmm(_)
        | E::Disk(_)
        | E::Ssh(_) => ErrorCode::OperationFailed,
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
