//! What the daemon does through a VM's guest agent (docs/agent.md): readiness,
//! stats, listening ports, exec sessions and file copy.
//!
//! Exec is a session the CLI drives with `vm.exec.io` calls (input in,
//! output since the last call out, long-polled), so it fits the daemon's
//! one-request-one-answer protocol. A session whose client stops polling
//! for [`exec::EXEC_IDLE`] is signalled KILL and forgotten.

mod cp;
mod exec;
mod ready;
mod stats;

pub use cp::cp;
pub use exec::{ExecTable, exec_begin, exec_io};
pub(super) use ready::wait_for_agent;
pub use stats::{StatsCache, ports, spawn_sampler, stats};

use std::sync::Arc;
use std::time::Duration;

use banger_proto::ErrorCode;
use banger_store::VmRecord;

use super::{find, vm_dir};
use crate::DaemonState;
use crate::agent::{AgentConn, rpc_error};
use crate::dispatch::RpcError;

/// How long one agent request may take (exec and copies excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent of a running VM: the open connection, or a new one (after a
/// daemon restart).
pub async fn agent_for(
    state: &Arc<DaemonState>,
    name: &str,
) -> Result<(VmRecord, Arc<AgentConn>), RpcError> {
    let vm = find(state, name).await?;
    let Some(handles) = state.vms.handles(&vm.id) else {
        return Err(RpcError::new(
            ErrorCode::NotRunning,
            format!(
                "vm {} is not running (start it with: banger vm start {})",
                vm.name, vm.name
            ),
        ));
    };
    if handles.agent.is_none() {
        return Err(RpcError::new(
            ErrorCode::OperationFailed,
            format!(
                "vm {} has no guest agent: its image was built without one (rebuild the image)",
                vm.name
            ),
        ));
    }
    if let Some(conn) = state.vms.agent(&vm.id) {
        return Ok((vm, conn));
    }
    let socket = banger_vmm::VmFiles::in_dir(&vm_dir(state, &vm.id)).agent_socket;
    let conn = AgentConn::connect(&socket, Duration::from_secs(10))
        .await
        .map_err(|e| rpc_error(&vm.name, &e))?;
    state.vms.set_agent(&vm.id, Arc::clone(&conn));
    Ok((vm, conn))
}
