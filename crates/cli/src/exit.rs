use banger_proto::ErrorCode;

/// banger's exit codes; `banger --help` and the README list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: the operation failed.
    Failed,
    /// 2: a usage error or input the daemon refused.
    BadInput,
    /// 3: no daemon could be reached or started.
    DaemonUnavailable,
    /// 4: the named object does not exist.
    NotFound,
    /// 5: the request clashes with current state.
    Conflict,
    /// 6: permission denied.
    PermissionDenied,
    /// 130: cancelled or interrupted.
    Cancelled,
    /// 7: `daemon status` found no daemon running (and started none).
    NoDaemon,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Self::Failed => 1,
            Self::BadInput => 2,
            Self::DaemonUnavailable => 3,
            Self::NotFound => 4,
            Self::Conflict => 5,
            Self::PermissionDenied => 6,
            Self::Cancelled => 130,
            Self::NoDaemon => 7,
        }
    }

    pub fn for_code(code: ErrorCode) -> Self {
        match code {
            ErrorCode::BadRequest
            | ErrorCode::BadVersion
            | ErrorCode::UnknownMethod
            | ErrorCode::BadParams => Self::BadInput,
            ErrorCode::NotFound => Self::NotFound,
            ErrorCode::Conflict | ErrorCode::NotRunning => Self::Conflict,
            ErrorCode::PermissionDenied => Self::PermissionDenied,
            ErrorCode::Cancelled => Self::Cancelled,
            ErrorCode::OperationFailed | ErrorCode::Unknown => Self::Failed,
        }
    }
}

/// The table printed under `banger --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    the operation failed
  2    usage error, or input the daemon refused (bad params, unknown method)
  3    no daemon could be reached or started
  4    the named object does not exist
  5    the request clashes with current state (conflict, not running)
  6    permission denied
  7    `daemon status`: no daemon runs (it starts none)
  130  cancelled or interrupted";
