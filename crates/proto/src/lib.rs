//! Wire types shared by `banger`, `bangerd` and `banger-helper`.
//!
//! This crate holds data only: no sockets, no files. The transport is one
//! JSON object per line over a Unix socket; a connection carries any number
//! of requests, each answered in turn. See `docs/rpc.md` for the method list
//! and the error codes, and `tests/envelope.rs` for the pinned JSON shape.

pub mod agent;
pub mod daemon;
pub mod egress;
mod envelope;
mod error;
pub mod events;
pub mod helper;
pub mod methods;
pub mod schema;
pub mod snapshot;
pub mod time;
pub mod types;
pub mod vm;
pub mod workspace;

pub use egress::{BadEgress, Egress, EgressHost, EgressTarget};
pub use envelope::{OpId, Request, Response};
pub use error::{ErrorBody, ErrorCode, error_chain};
pub use types::{
    Accel, Backend, CheckStatus, DiskStrategy, EndReason, NetworkMode, ObjectAction, ObjectKind,
    OpKind, OpState, PlannedAccel, PortProto, PublishSpec, SnapshotKind, UnknownValue, VmState,
    WaitFor,
};

/// Protocol version carried in every request. A daemon answers any other
/// value with [`ErrorCode::BadVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request line the daemon reads, newline excluded. A longer one
/// is refused with [`ErrorCode::BadRequest`] and the connection is closed.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
