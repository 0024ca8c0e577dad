//! Readiness: the wait, during boot, for the guest agent's first answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_proto::agent::Message;
use banger_store::VmRecord;
use tokio_util::sync::CancellationToken;

use super::super::lifecycle::{cancelled, vmm_running};
use super::super::{Handles, vm_dir};
use super::CALL_TIMEOUT;
use crate::DaemonState;
use crate::agent::{AgentConn, AgentError, rpc_error};
use crate::dispatch::RpcError;
/// Waits until the agent says hello and answers a health check, the VMM
/// dies, the boot timeout passes, or the work is cancelled.
///
/// One connection, kept: QEMU serves one client of the chardev socket at a
/// time, and a client that connects while another is attached waits in the
/// listen backlog with its connect already "done". Short attempts that
/// time out and reconnect pile up dead connections QEMU then serves one
/// by one, so the agent's answers went to closed sockets. The connection
/// repeats its Hello every second until the agent (still booting) answers.
pub(in crate::vms) async fn wait_for_agent(
    state: &Arc<DaemonState>,
    vm: &VmRecord,
    handles: &Handles,
    cancel: &CancellationToken,
) -> Result<(), RpcError> {
    let deadline = Instant::now() + state.config.boot_timeout;
    let socket = banger_vmm::VmFiles::in_dir(&vm_dir(state, &vm.id)).agent_socket;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RpcError::internal(format!(
                "the guest agent did not answer within {} s",
                state.config.boot_timeout.as_secs()
            )));
        }
        let attempt = async {
            let conn = AgentConn::connect(&socket, remaining).await?;
            conn.call(|id| Message::Health { id }, CALL_TIMEOUT).await?;
            Ok::<_, AgentError>(conn)
        };
        tokio::pin!(attempt);
        let outcome = loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(cancelled()),
                r = &mut attempt => break r,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !vmm_running(state, &handles.vmm, &vm.id).await {
                        return Err(RpcError::internal("the vmm exited during boot"));
                    }
                }
            }
        };
        match outcome {
            Ok(conn) => {
                tracing::info!(vm = %vm.name, agent = %conn.agent_version, "guest agent ready");
                state.vms.set_agent(&vm.id, conn);
                return Ok(());
            }
            Err(e @ (AgentError::Version { .. } | AgentError::Timeout(_))) => {
                return Err(rpc_error(&vm.name, &e));
            }
            // Not listening yet, or the connection dropped: connect again.
            Err(e) => tracing::debug!(vm = %vm.name, error = %e, "agent not ready yet"),
        }
        if !vmm_running(state, &handles.vmm, &vm.id).await {
            return Err(RpcError::internal("the vmm exited during boot"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
