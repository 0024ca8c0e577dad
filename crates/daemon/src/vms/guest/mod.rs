//! What the daemon does through a VM's guest agent (docs/agent.md):
//! readiness, stats, listening ports, exec sessions and file and
//! directory copy, and
//! the guest's side of pause/resume, snapshots and restores (clock,
//! freeze/thaw, identity: `identity.rs`), behind one service, [`Guest`].
//!
//! Exec is a session the CLI drives with `vm.exec.io` calls (input in,
//! output since the last call out, long-polled), so it fits the daemon's
//! one-request-one-answer protocol. A session whose client stops polling
//! for [`exec::EXEC_IDLE`] is signalled KILL and forgotten.

mod cp;
mod error;
mod exec;
/// Clock, freeze/thaw and identity: `Guest::set_time`, `Guest::freeze`,
/// `Guest::thaw`, `Guest::apply_identity`.
pub mod identity;
mod ready;
mod reserve;
mod stats;
#[cfg(test)]
mod tests;
mod tree;

pub use error::GuestError;
pub use stats::spawn_sampler;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use banger_store::VmRecord;

use super::VmTable;
use crate::agent::AgentConn;
use crate::db::Db;

/// How long one agent request may take (exec and copies excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for a running VM's agent to say hello when
/// no connection is open (after a daemon restart, or a VM not waited for).
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Guest access: everything done through a running VM's agent.
#[derive(Debug)]
pub struct Guest {
    db: Db,
    /// The handles and agent connections of running VMs (shared with the
    /// VM lifecycle).
    vms: Arc<VmTable>,
    /// To tell, while waiting for the agent, whether the VMM still runs.
    vmms: crate::vmms::Vmms,
    /// `DATA/vms`: each VM's directory (agent socket) is `vm_root/ID`, as
    /// in `vms::vm_dir`.
    vm_root: PathBuf,
    /// How long a booting VM's agent may take to answer.
    boot_timeout: Duration,
    /// Running `vm exec` sessions.
    execs: exec::ExecTable,
    /// The latest stats sample per VM (CPU usage needs two).
    stats: stats::StatsCache,
    /// Free space copies from a guest leave on the host (`reserve.rs`).
    cp_reserve: reserve::Reserve,
}

impl Guest {
    pub fn new(
        db: Db,
        vms: Arc<VmTable>,
        vmms: crate::vmms::Vmms,
        data_dir: &Path,
        boot_timeout: Duration,
        cp_reserve: u64,
    ) -> Self {
        Self {
            db,
            vms,
            vmms,
            vm_root: data_dir.join("vms"),
            boot_timeout,
            execs: Default::default(),
            stats: Default::default(),
            cp_reserve: reserve::Reserve(cp_reserve),
        }
    }

    /// The host end of the VM's agent channel over virtio-serial.
    fn agent_socket(&self, vm_id: &str) -> PathBuf {
        banger_vmm::VmFiles::in_dir(&self.vm_root.join(vm_id)).agent_socket
    }

    /// Connects to the agent of a running VM the way its handles say:
    /// Firecracker's hybrid vsock (its Unix socket, then `CONNECT PORT`),
    /// or QEMU's virtio-serial socket.
    pub(crate) async fn connect_agent(
        &self,
        vm_id: &str,
        timeout: Duration,
    ) -> Result<Arc<AgentConn>, crate::agent::AgentError> {
        let channel = self.vms.handles(vm_id).and_then(|h| h.agent);
        let hybrid = banger_vmm::AgentChannel::HybridVsock { port: 0 }.as_str();
        if channel.as_deref() == Some(hybrid) {
            let socket =
                banger_vmm::firecracker::FirecrackerFiles::in_dir(&self.vm_root.join(vm_id))
                    .vsock_socket;
            AgentConn::connect_vsock(&socket, banger_proto::agent::AGENT_VSOCK_PORT, timeout).await
        } else {
            AgentConn::connect(&self.agent_socket(vm_id), timeout).await
        }
    }

    /// Looks a VM up by name or id.
    async fn find(&self, name: &str) -> Result<VmRecord, GuestError> {
        let name = name.to_owned();
        Ok(self.db.call(move |s| s.vm(&name)).await?)
    }

    /// The agent of a running VM (by name or id): the open connection, or
    /// a new one (after a daemon restart).
    pub async fn agent_for(&self, name: &str) -> Result<(VmRecord, Arc<AgentConn>), GuestError> {
        let vm = self.find(name).await?;
        let Some(handles) = self.vms.handles(&vm.id) else {
            return Err(GuestError::NotRunning { vm: vm.name });
        };
        if handles.agent.is_none() {
            return Err(GuestError::NoAgent { vm: vm.name });
        }
        let conn = self
            .open_agent(&vm.id, AGENT_CONNECT_TIMEOUT)
            .await
            .map_err(|e| match e {
                crate::agent::AgentError::Timeout(secs)
                    if vm.wait_for == Some(banger_proto::WaitFor::None) =>
                {
                    GuestError::AgentNotWaitedFor {
                        vm: vm.name.clone(),
                        secs,
                    }
                }
                e => GuestError::agent(&vm.name, e),
            })?;
        Ok((vm, conn))
    }

    /// The VM's open agent connection, or a new one; concurrent callers
    /// share one (see `VmTable::connecting`).
    pub(crate) async fn open_agent(
        &self,
        vm_id: &str,
        timeout: Duration,
    ) -> Result<Arc<AgentConn>, crate::agent::AgentError> {
        if let Some(conn) = self.vms.agent(vm_id) {
            return Ok(conn);
        }
        let _connecting = self.vms.connecting.lock(vm_id).await;
        if let Some(conn) = self.vms.agent(vm_id) {
            return Ok(conn);
        }
        let conn = self.connect_agent(vm_id, timeout).await?;
        self.vms.set_agent(vm_id, Arc::clone(&conn));
        Ok(conn)
    }
}
