//! Readiness: the wait, during boot, for the guest agent's first answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_store::VmRecord;

use super::super::Handles;
use super::{Guest, GuestError};
use crate::agent::AgentError;
use crate::op::{Cancelled, OpCtx};

impl Guest {
    /// Waits until the agent says hello and answers a health check, the
    /// VMM dies, the boot timeout passes, or the work is cancelled; then
    /// keeps the connection for the VM.
    ///
    /// One connection, kept: QEMU serves one client of the chardev socket
    /// at a time, and a client that connects while another is attached
    /// waits in the listen backlog with its connect already "done". Short
    /// attempts that time out and reconnect pile up dead connections QEMU
    /// then serves one by one, so the agent's answers went to closed
    /// sockets. The connection repeats its Hello every second until the
    /// agent (still booting) answers.
    pub async fn wait_for_agent(
        &self,
        vm: &VmRecord,
        handles: &Handles,
        ctx: &OpCtx,
    ) -> Result<(), GuestError> {
        let deadline = Instant::now() + self.boot_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(GuestError::BootTimeout {
                    secs: self.boot_timeout.as_secs(),
                });
            }
            let attempt = async {
                let _connecting = self.vms.connecting.lock(&vm.id).await;
                // The agent's Hello, which connect waits for, is the
                // answer: no further round trip (a restored guest's
                // first ones are slow under TCG).
                let conn = self.connect_agent(&vm.id, remaining).await?;
                self.vms.set_agent(&vm.id, Arc::clone(&conn));
                Ok::<_, AgentError>(conn)
            };
            tokio::pin!(attempt);
            let outcome = loop {
                tokio::select! {
                    _ = ctx.cancel_token().cancelled() => return Err(Cancelled.into()),
                    r = &mut attempt => break r,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if !self.vmm_running(&handles.vmm, &vm.id).await {
                            return Err(GuestError::VmmExited);
                        }
                    }
                }
            };
            match outcome {
                Ok(conn) => {
                    tracing::info!(vm = %vm.name, agent = %conn.agent_version, "guest agent ready");
                    return Ok(());
                }
                Err(e @ (AgentError::Version { .. } | AgentError::Timeout(_))) => {
                    return Err(GuestError::agent(&vm.name, e));
                }
                // Not listening yet, or the connection dropped: connect again.
                Err(e) => tracing::debug!(vm = %vm.name, error = %e, "agent not ready yet"),
            }
            if !self.vmm_running(&handles.vmm, &vm.id).await {
                return Err(GuestError::VmmExited);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until a TCP socket listens on `port` in the guest (as its
    /// agent lists them), the VMM dies, `timeout` passes, or the work is
    /// cancelled: the guest service `service` is ready.
    pub async fn wait_for_port(
        &self,
        vm: &VmRecord,
        handles: &Handles,
        service: &str,
        port: u16,
        timeout: Duration,
        ctx: &OpCtx,
    ) -> Result<(), GuestError> {
        let deadline = Instant::now() + timeout;
        loop {
            ctx.check_cancelled()?;
            match self.ports(&vm.id).await {
                Ok(ports)
                    if ports
                        .iter()
                        .any(|p| p.port == port && p.proto.starts_with("tcp")) =>
                {
                    tracing::info!(vm = %vm.name, service, port, "guest service ready");
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(vm = %vm.name, error = %e, "ports not read yet"),
            }
            if !self.vmm_running(&handles.vmm, &vm.id).await {
                return Err(GuestError::VmmExited);
            }
            if Instant::now() >= deadline {
                return Err(GuestError::ServiceTimeout {
                    vm: vm.name.clone(),
                    service: service.to_owned(),
                    port,
                    secs: timeout.as_secs(),
                });
            }
            tokio::select! {
                _ = ctx.cancel_token().cancelled() => return Err(Cancelled.into()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Whether the VMM behind `handle` still runs (asked off the runtime).
    async fn vmm_running(&self, handle: &banger_vmm::VmHandle, vm_id: &str) -> bool {
        let vmm = self.vmms.of(handle);
        let (handle, vm_id) = (handle.clone(), vm_id.to_owned());
        tokio::task::spawn_blocking(move || vmm.is_running(&handle, &vm_id))
            .await
            .unwrap_or(false)
    }
}
