//! Noticing a VMM that exits on its own (docs/vms.md, "Lifecycle"): a
//! guest that powers off or reboots (`-no-reboot`), a QEMU that crashes or
//! is killed (the OOM killer, `kill -9`).
//!
//! Every VMM the daemon launches or adopts gets a watcher task: it waits
//! on a pidfd of the process (`pidfd_open` works for processes that are
//! not our children, as an adopted VMM is not after a daemon restart),
//! or, where a pidfd cannot be had, polls every [`POLL`]. When the process
//! is gone the watcher takes the VM's lock and looks again: a stop, kill,
//! restart or delete holds that lock while it ends the VMM and clears the
//! handles, so a watcher that finds the handles gone (or another VMM's)
//! knows the daemon asked for the exit and does nothing. Otherwise it
//! records why the VM ended in `last_error` (naming its console log),
//! gives back what it held (TAP, proxies, RAM file, agent connection,
//! handles) and sets it `stopped`, whatever the cause, as a daemon
//! restart does for a VMM it finds dead (`reconcile.rs`;
//! docs/capabilities.md, "State"), so a VM reads the same whether the
//! daemon was up when its VMM died or not.
//! `error` stays what a failed operation leaves; the cause of an unasked
//! exit (a power-off, or the signal or status of a crash) is kept in
//! `last_error`.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use banger_store::VmState;
use banger_vmm::{VmHandle, Vmm, VmmExit};

use super::{Vms, console_log, remove_handles, vm_dir};
use crate::op::{OpCtx, mint};
use crate::ops::now_ms;

/// How often a VMM without a pidfd is looked at.
const POLL: Duration = Duration::from_millis(250);

/// Starts the watcher of the VMM `handle` of VM `vm_id`.
pub(super) fn watch(vms: &Vms, vm_id: &str, handle: &VmHandle) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let me = vms.me.clone();
    let vmm = vms.vmms.of(handle);
    let (vm_id, handle) = (vm_id.to_owned(), handle.clone());
    runtime.spawn(async move {
        wait_gone(&vmm, &handle, &vm_id).await;
        let Some(vms) = Weak::upgrade(&me) else {
            return;
        };
        exited(&vms, &vm_id, &handle).await;
    });
}

/// Returns once the VMM process has exited.
async fn wait_gone(vmm: &Arc<dyn Vmm>, handle: &VmHandle, vm_id: &str) {
    if let Some(fd) = pidfd(handle.pid) {
        // Opened first, checked second: the pidfd names the process that
        // the check found to be this VM's VMM, even if the pid is reused
        // later.
        if running(vmm, handle, vm_id).await {
            let interest = tokio::io::Interest::READABLE;
            // SAFETY: an OwnedFd keeps its descriptor open, and returns
            // that same descriptor from as_raw_fd, until it is dropped,
            // which happens only with the AsyncFd that owns it.
            match unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) } {
                Ok(fd) => {
                    // Readable once the process has exited.
                    let _ = fd.readable().await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(vm_id, error = %e, "cannot poll the vmm's pidfd");
                }
            }
        } else {
            return;
        }
    }
    while running(vmm, handle, vm_id).await {
        tokio::time::sleep(POLL).await;
    }
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).ok()
}

async fn running(vmm: &Arc<dyn Vmm>, handle: &VmHandle, vm_id: &str) -> bool {
    let (vmm, handle, vm_id) = (Arc::clone(vmm), handle.clone(), vm_id.to_owned());
    tokio::task::spawn_blocking(move || vmm.is_running(&handle, &vm_id))
        .await
        .unwrap_or(false)
}

/// The VMM `handle` of VM `vm_id` is gone: unless the daemon ended it
/// itself, record why and give back what it held.
pub(super) async fn exited(vms: &Vms, vm_id: &str, handle: &VmHandle) {
    let lock = vms.table.lock_for(vm_id);
    let _guard = lock.lock().await;
    let Some(handles) = vms.table.handles(vm_id) else {
        return; // stopped, killed or deleted by the daemon meanwhile
    };
    if handles.vmm != *handle {
        return; // restarted: another VMM runs now
    }
    // Every thread gone, so its TAP and disks are free to reuse.
    let status = {
        let (vmm, handle) = (vms.vmms.of(handle), handle.clone());
        tokio::task::spawn_blocking(move || {
            let _ = vmm.wait_exit(&handle, Duration::from_secs(10));
            vmm.take_exit(&handle)
        })
        .await
        .unwrap_or(None)
    };
    let Ok(mut vm) = super::find(vms, vm_id).await else {
        return;
    };
    let dir = vm_dir(vms, vm_id);
    let log = console_log(&dir);
    let cause = match status {
        Some(VmmExit::Code(0)) => "the guest powered off or rebooted (exit status 0)".to_owned(),
        Some(exit) => format!("{exit}"),
        None if powered_off(&log) => "the guest powered off (exit status unknown)".to_owned(),
        None => "exit status unknown".to_owned(),
    };
    let message = format!(
        "{} exited on its own ({cause}); see {}",
        handle.backend,
        log.display()
    );
    tracing::warn!(vm = %vm.name, pid = handle.pid, "{message}");
    // Work with no request behind it gets an op id of its own.
    let ctx = OpCtx::new(mint(), tokio_util::sync::CancellationToken::new());
    super::lifecycle::release_runtime(vms, &ctx, vm_id, Some(&handles)).await;
    remove_handles(&dir);
    let _ = std::fs::remove_file(&handle.control_socket);
    vm.state = VmState::Stopped;
    vm.last_error = Some(message);
    vm.updated_at_ms = now_ms();
    let record = vm.clone();
    if let Err(e) = vms.db.call(move |s| s.update_vm(&record)).await {
        tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "could not record the vmm's exit");
    }
}

/// The guest kernel's last words on its console were a power-off (an
/// adopted VMM's exit status is not ours to read).
fn powered_off(console: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read(console) else {
        return false;
    };
    let tail = &text[text.len().saturating_sub(4096)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.contains("reboot: Power down"))
}
