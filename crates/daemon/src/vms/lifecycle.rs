//! start, stop, kill, restart, delete and edit of existing VMs.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_proto::vm::VmEditParams;
use banger_proto::{Egress, NetworkMode, PortProto, PublishSpec, WaitFor};
use banger_store::SnapshotRecord;
use banger_store::{VmRecord, VmState};
use banger_vmm::{
    BootSource, DiskFormat, MachineConfig, MemoryBacking, NetBackend, NetInterface, PortForward,
    Proto, VmSpec,
};

use super::Vms;
use super::ram::RestoredRam;
use super::rollback::Rollback;
use super::snapshot::{self, Identity};
use super::{
    BridgedHandles, Handles, VmError, console_log, remove_handles, save_handles, vm_dir, work_drive,
};
use crate::network::{ensure_port_free, free_loopback_port};
use crate::op::{Cancelled, OpCtx, OpId};
use crate::ops::now_ms;
use crate::{disks, validate};

/// Kernel command line per docs/guest-contract.md; `net` carries the
/// guest's `banger.ip`, `banger.gw` and `banger.dns`.
///
/// `lpj=` presets loops-per-jiffy so the kernel skips delay-loop
/// calibration, one of the places a TCG guest whose TSC calibration failed
/// waited forever for a timer tick; the TSC rate added under TCG
/// (`banger_vmm::tcg_clock_args`) removes the cause. The value only scales
/// `udelay`; too high merely makes short busy-waits longer.
///
/// `banger_init`: the image has no init of its own (pulled images):
/// banger's initramfs hands over to the agent baked in at `BANGER_INIT`.
pub(super) fn cmdline(vm_name: &str, net: &str, banger_init: bool) -> String {
    let init = if banger_init {
        format!(" init={BANGER_INIT}")
    } else {
        String::new()
    };
    format!(
        "console=ttyS0 root=/dev/vda rw panic=-1 quiet lpj={LOOPS_PER_JIFFY} \
         banger.hostname={vm_name} {net}{init}"
    )
}

/// Where a pulled image's root disk has banger's agent, run as PID 1
/// (crates/daemon/src/artifacts/oci.rs puts it there).
const BANGER_INIT: &str = "/.banger/init";

/// The guest's side of QEMU's user-mode network.
const USER_NET_ARGS: &str = "banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3";

/// About a 5000-BogoMIPS host at HZ=250, Debian's cloud kernel's.
const LOOPS_PER_JIFFY: u64 = 10_000_000;

/// How long a start waits for each of the image's services to listen (at
/// least the boot timeout): a coding-agent server's first start under TCG
/// takes a while.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(300);

/// Resolves `name_or_id` to the VM's id, takes the lock of that id, then
/// reads the record again by id (it may have changed, or gone, while
/// waiting): `vm stop ID` and `vm start NAME` of one VM take one lock.
pub(crate) async fn locked(
    vms: &Vms,
    name_or_id: &str,
) -> Result<(tokio::sync::OwnedMutexGuard<()>, VmRecord), VmError> {
    let id = super::find(vms, name_or_id).await?.id;
    let guard = vms.table.lock_for(&id).lock_owned().await;
    Ok((guard, super::find(vms, &id).await?))
}

fn task_failed(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> VmError {
    move |e| VmError::Task(what, e)
}

/// Starts a VM (idempotent: a running VM is left alone).
pub async fn start(vms: &Vms, name: &str, ctx: &OpCtx) -> Result<VmRecord, VmError> {
    let (_guard, vm) = locked(vms, name).await?;
    if is_alive(vms, &vm).await {
        return Ok(vm);
    }
    start_locked(vms, vm, ctx).await
}

/// How a VM's VMM comes up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Boot<'a> {
    /// The kernel boots.
    Cold,
    /// The VM continues from a snapshot's memory and devices (its disks
    /// are already layers over the snapshot's).
    Restore {
        snapshot: &'a SnapshotRecord,
        /// What the guest agent changes before the VM is reported ready.
        identity: Identity,
        /// The stage's name: "restore from snapshot" or "restore from template".
        stage: &'static str,
        /// A RAM file of the VM's own, or the snapshot's mapped privately.
        ram: RestoredRam,
    },
}

/// Boots `vm`; the caller holds its lock. On failure every step done is
/// rolled back in reverse, and the VM is left in `error` with `last_error`
/// naming the cause and, when the VMM wrote one, the console log.
pub(crate) async fn start_locked(
    vms: &Vms,
    vm: VmRecord,
    ctx: &OpCtx,
) -> Result<VmRecord, VmError> {
    start_locked_from(vms, vm, ctx, Boot::Cold).await
}

/// [`start_locked`], cold or from a snapshot.
pub(crate) async fn start_locked_from(
    vms: &Vms,
    mut vm: VmRecord,
    ctx: &OpCtx,
    from: Boot<'_>,
) -> Result<VmRecord, VmError> {
    let dir = vm_dir(vms, &vm.id);
    let mut rollback = Rollback::default();
    match boot(vms, &vm, ctx, &mut rollback, from).await {
        Ok(handles) => {
            rollback.disarm();
            vm.state = VmState::Running;
            vm.last_error = None;
            vm.backend = Some(match handles.vmm.backend {
                banger_vmm::BackendKind::Qemu => banger_proto::Backend::Qemu,
                banger_vmm::BackendKind::Firecracker => banger_proto::Backend::Firecracker,
            });
            vm.updated_at_ms = now_ms();
            let record = vm.clone();
            vms.db.call(move |s| s.update_vm(&record)).await?;
            tracing::info!(vm = %vm.name, pid = handles.vmm.pid, "vm running");
            Ok(vm)
        }
        Err(err) => {
            tokio::task::spawn_blocking(move || rollback.run())
                .await
                .map_err(task_failed("rollback"))?;
            vms.table.clear_handles(&vm.id);
            let err = if err.is_cancelled() {
                vm.state = VmState::Stopped;
                vm.last_error = None;
                err
            } else {
                // Name the console log only if the VMM got to write one.
                let log = console_log(&dir);
                let err = VmError::StartFailed {
                    cause: Box::new(err),
                    console_log: log.exists().then_some(log),
                };
                vm.state = VmState::Error;
                vm.last_error = Some(err.to_string());
                err
            };
            vm.updated_at_ms = now_ms();
            let record = vm.clone();
            let _ = vms.db.call(move |s| s.update_vm(&record)).await;
            Err(err)
        }
    }
}

async fn boot(
    vms: &Vms,
    vm: &VmRecord,
    ctx: &OpCtx,
    rollback: &mut Rollback,
    from: Boot<'_>,
) -> Result<Handles, VmError> {
    let dir = vm_dir(vms, &vm.id);
    ctx.stage("check artifacts");
    let (kernel_id, image_id) = (vm.kernel_id.clone(), vm.image_id.clone());
    let (kernel, image) = vms
        .db
        .call(move |s| Ok((s.kernel(&kernel_id)?, s.image(&image_id)?)))
        .await?;
    let banger_init = image.boots_banger_init();
    let backend = crate::vmms::from_proto(vm.backend);
    let firecracker = backend == banger_vmm::BackendKind::Firecracker;
    let strategy = vm
        .disk_strategy
        .and_then(disks::RootStrategy::from_disk_strategy)
        .ok_or_else(|| VmError::NoRootStrategy(vm.name.clone()))?;
    let root = dir.join(strategy.file_name());
    let (work, work_format) = work_drive(&dir);
    let mut required = vec![
        ("kernel", kernel.kernel_path.clone()),
        ("image root disk", image.rootfs_path.clone()),
        ("vm root disk", root.clone()),
        ("vm work disk", work.clone()),
    ];
    if let Some(initrd) = &kernel.initrd_path {
        required.push(("initramfs", initrd.clone()));
    }
    if let Boot::Restore { snapshot, .. } = from {
        required.push(("snapshot state", snapshot::state_file(&snapshot.dir)));
        required.push(("snapshot memory", snapshot::memory_file(&snapshot.dir)));
    }
    for (what, path) in required {
        if !path.exists() {
            return Err(VmError::MissingFile { what, path });
        }
    }

    let net = match vm.network_mode {
        NetworkMode::Bridged => {
            ctx.stage("attach network");
            attach_bridged(vms, vm, ctx, rollback).await?
        }
        // Firecracker has no user-mode network: the VM runs without a
        // NIC (its agent works over vsock).
        NetworkMode::User if firecracker => {
            ctx.stage(
                "no network (firecracker has no user-mode network; bridged needs banger-helper)",
            );
            NetPlan::none()
        }
        NetworkMode::User => {
            ctx.stage("allocate ports");
            user_network(&vm.published_ports, &vm.egress, &vm.id, &dir)?
        }
    };
    let usernet = match &net.usernet {
        Some(spec) => {
            ctx.stage("start user network");
            let (spec, vmm) = (spec.clone(), vms.vmms.get(banger_vmm::BackendKind::Qemu));
            let handle = tokio::task::spawn_blocking(move || vmm.launch_usernet(&spec))
                .await
                .map_err(task_failed("user network"))??;
            let (h, id, vmm) = (
                handle.clone(),
                vm.id.clone(),
                vms.vmms.get(banger_vmm::BackendKind::Qemu),
            );
            rollback.push("start user network", move || vmm.kill_usernet(&h, &id));
            Some(handle)
        }
        None => None,
    };
    // Firecracker runs guests under KVM only; whether KVM boots them was
    // asked when the backend was chosen (`vms/create.rs`).
    let (accel, reason) = if firecracker {
        (
            banger_vmm::Accel::Kvm,
            "firecracker runs under kvm".to_owned(),
        )
    } else {
        vms.accel.choose(&kernel, ctx).await
    };
    tracing::info!(vm = %vm.name, vmm = %backend, accel = accel.as_str(), reason = %reason, "accelerator chosen");
    if let Boot::Restore { snapshot, .. } = from {
        snapshot::check_compatible(vms, snapshot, accel).await?;
    }
    let mut kernel_args = cmdline(&vm.name, &net.cmdline, banger_init);
    let agent_channel = image.has_agent.then_some(if firecracker {
        banger_vmm::AgentChannel::HybridVsock {
            port: banger_proto::agent::AGENT_VSOCK_PORT,
        }
    } else {
        banger_vmm::AgentChannel::VirtioSerial
    });
    if let Some(banger_vmm::AgentChannel::HybridVsock { port }) = &agent_channel {
        kernel_args.push(' ');
        kernel_args.push_str(&banger_proto::agent::agent_vsock_cmdline(*port));
    }
    if accel == banger_vmm::Accel::Tcg {
        // The TSC rate (measured once per host boot): without it a TCG
        // guest can hang calibrating its timers (see banger_vmm::clock).
        let clock = banger_vmm::clock_args(vms.accel.host_tsc_khz().await);
        if !clock.is_empty() {
            kernel_args.push(' ');
            kernel_args.push_str(&clock);
        }
    }
    // A device-mapper root disk: the image under the VM's copy-on-write
    // store, made anew at each start (`disks/dm.rs`).
    let dm = if strategy == disks::RootStrategy::DmSnapshot {
        ctx.stage("attach root disk (device-mapper snapshot)");
        let attachment = vms
            .root_devices
            .attach(ctx.id(), &vm.id, &image.rootfs_path, &root)
            .await?;
        let (devices, op, undo) = (
            Arc::clone(&vms.root_devices),
            ctx.id().clone(),
            attachment.clone(),
        );
        let runtime = tokio::runtime::Handle::current();
        // Rollback runs on a blocking thread (`rollback.rs`).
        rollback.push("attach root disk", move || {
            if let Err(e) = runtime.block_on(devices.detach(&op, &undo)) {
                tracing::warn!(device = %undo.name, error = %crate::error::chain(&e), "rollback: root disk snapshot left attached");
            }
        });
        Some(attachment)
    } else {
        None
    };
    let root_drive = dm
        .as_ref()
        .map_or_else(|| root.clone(), |a| a.device.clone());
    let spec = VmSpec {
        vm_id: vm.id.clone(),
        name: vm.name.clone(),
        vm_dir: dir.clone(),
        boot: BootSource {
            kernel: kernel.kernel_path.clone(),
            initrd: kernel.initrd_path.clone(),
            cmdline: kernel_args,
        },
        machine: MachineConfig {
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
        },
        drives: snapshot::drives(
            (
                root_drive,
                if strategy == disks::RootStrategy::Qcow2 {
                    DiskFormat::Qcow2
                } else {
                    DiskFormat::Raw
                },
            ),
            (work, work_format),
        ),
        net: net.nic.clone().into_iter().collect(),
        agent: agent_channel.clone(),
        accel,
        console_log: console_log(&dir),
        memory: MemoryBacking::Anonymous,
        join_namespaces_of: usernet.as_ref().map(|h| h.namespace_pid),
    };
    ctx.check_cancelled()?;

    // The RAM file of the VM's own, if it gets one: removed again if the
    // boot fails (and by `mark_stopped` once the VMM is gone).
    let ram_file = match from {
        // Firecracker's guest memory is anonymous; a restore maps the
        // snapshot's memory file privately.
        _ if firecracker => None,
        Boot::Cold
        | Boot::Restore {
            ram: RestoredRam::Own,
            ..
        } => vms.ram.prepare(&vm.id),
        Boot::Restore {
            ram: RestoredRam::MapSnapshot,
            ..
        } => None,
    };
    if let Some(path) = &ram_file {
        let (ram, path) = (vms.ram.clone(), path.clone());
        rollback.push("ram file", move || ram.remove(&path));
    }
    let vmm = vms.vmms.get(backend);
    let handle = match from {
        Boot::Cold => {
            ctx.stage("launch vmm");
            let mut spec = spec;
            if let Some(path) = &ram_file {
                spec.memory = MemoryBacking::File {
                    path: path.clone(),
                    shared: true,
                };
            }
            tokio::task::spawn_blocking(move || vmm.launch(&spec))
                .await
                .map_err(task_failed("launch"))??
        }
        Boot::Restore {
            snapshot, stage, ..
        } => {
            let frozen = snapshot::memory_file(&snapshot.dir);
            let mut spec = spec;
            spec.memory = match &ram_file {
                Some(path) => {
                    ctx.stage("copy memory");
                    let (from, to) = (frozen, path.clone());
                    tokio::task::spawn_blocking(move || disks::copy_layer(&from, &to))
                        .await
                        .map_err(task_failed("copy memory"))??;
                    MemoryBacking::File {
                        path: path.clone(),
                        shared: true,
                    }
                }
                None => MemoryBacking::File {
                    path: frozen,
                    shared: false,
                },
            };
            ctx.stage(stage);
            let state = snapshot::state_file(&snapshot.dir);
            let saved = if firecracker {
                banger_vmm::RamSave::IntoState
            } else {
                banger_vmm::RamSave::KeptInSharedFile
            };
            tokio::task::spawn_blocking(move || vmm.restore(&spec, &state, saved, true))
                .await
                .map_err(task_failed("restore"))??
        }
    };
    {
        let vmm = vms.vmms.get(backend);
        let handle = handle.clone();
        rollback.push("launch vmm", move || {
            let _ = vmm.kill(&handle, banger_vmm::Signal::Kill);
            let _ = vmm.wait_exit(&handle, Duration::from_secs(10));
        });
    }
    let handles = Handles {
        vmm: handle,
        ssh_host: net.ssh_host.clone(),
        ssh_port: net.ssh_port,
        accel: match accel {
            banger_vmm::Accel::Kvm => banger_proto::Accel::Kvm,
            banger_vmm::Accel::Tcg => banger_proto::Accel::Tcg,
        },
        bridged: net.bridged,
        agent: agent_channel.as_ref().map(|c| c.as_str().to_owned()),
        ram_file,
        usernet,
        dm,
    };
    save_handles(&dir, &handles).map_err(|source| VmError::Io {
        what: "write",
        path: dir.join("handles.json"),
        source,
    })?;
    vms.table.set_handles(&vm.id, handles.clone());
    super::watch::watch(vms, &vm.id, &handles.vmm);
    {
        let dir = dir.clone();
        rollback.push("record handles", move || remove_handles(&dir));
    }

    let wait = match from {
        Boot::Cold => super::wait_for(vm, &image),
        // Asked not to wait (`--wait none`, user mode only): the guest
        // keeps the snapshot's identity.
        Boot::Restore { .. } if vm.wait_for == Some(WaitFor::None) => WaitFor::None,
        // A restored guest was ready when its snapshot was taken; its agent
        // gives it its identity (below), whatever its cold starts wait for.
        Boot::Restore { .. } => WaitFor::Ssh,
    };
    if wait == WaitFor::None {
        tracing::info!(vm = %vm.name, "not waiting for the guest (wait none)");
        return Ok(handles);
    }
    if handles.agent.is_some() {
        ctx.stage("wait for agent");
        vms.guest.wait_for_agent(vm, &handles, ctx).await?;
        // The image's services (a restored guest's were up when its
        // snapshot was taken).
        if matches!(from, Boot::Cold) {
            let timeout = SERVICE_TIMEOUT.max(vms.settings.boot_timeout);
            for s in crate::artifacts::image_services(&image) {
                ctx.stage(&format!("wait for service {} (port {})", s.name, s.port));
                vms.guest
                    .wait_for_port(vm, &handles, &s.name, s.port, timeout, ctx)
                    .await?;
            }
        }
    }
    let mut host_key = None;
    match from {
        Boot::Restore { identity, .. } if handles.agent.is_some() => {
            // No wait for SSH: the snapshot was taken of a VM whose sshd
            // answered, and it runs on in the restored guest (the agent
            // just answered from it). Probing costs a third of a second
            // of the guest's one CPU under TCG (sshd re-executes itself
            // for every connection) and, done alongside, slowed the
            // identity by more than that.
            ctx.stage("set identity");
            host_key = snapshot::apply_identity(
                vms,
                vm,
                &handles,
                identity,
                net.guest_net.as_ref(),
                !banger_init,
            )
            .await?;
        }
        Boot::Restore { .. } => {
            tracing::warn!(vm = %vm.name, "restored without an agent: hostname, clock and host key are the snapshot's");
            ctx.stage("wait for ssh");
            wait_for_ssh(vms, vm, &handles, ctx).await?;
        }
        // banger's init runs no sshd: the agent answering is the guest
        // being ready.
        Boot::Cold if banger_init => {}
        // Its agent only: neither sshd nor its host key (`vm ssh` pins
        // that on first use).
        Boot::Cold if wait == WaitFor::Agent => return Ok(handles),
        Boot::Cold => {
            ctx.stage("wait for ssh");
            wait_for_ssh(vms, vm, &handles, ctx).await?;
        }
    }
    if banger_init {
        return Ok(handles);
    }

    ctx.stage("pin host key");
    let ssh = vms.ssh.clone();
    let name = vm.name.clone();
    let (host, port) = (handles.ssh_host.clone(), handles.ssh_port);
    tokio::task::spawn_blocking(move || match host_key {
        // The agent reported the key over its own channel: no connection.
        Some(key) => ssh.pin_known_key(&name, &key),
        None => ssh.pin_host_key(&name, &host, port),
    })
    .await
    .map_err(task_failed("ssh"))??;
    Ok(handles)
}

/// Waits until the guest's sshd sends its banner, the VMM dies, the boot
/// timeout passes, or the work is cancelled.
async fn wait_for_ssh(
    vms: &Vms,
    vm: &VmRecord,
    handles: &Handles,
    ctx: &OpCtx,
) -> Result<(), VmError> {
    let deadline = Instant::now() + vms.settings.boot_timeout;
    let ip: std::net::IpAddr = handles
        .ssh_host
        .parse()
        .map_err(|_| VmError::BadSshHost(handles.ssh_host.clone()))?;
    let addr = SocketAddr::from((ip, handles.ssh_port));
    loop {
        ctx.check_cancelled()?;
        // A probe waits 5 s for the banner: sshd re-executes itself for
        // each connection, which takes seconds of a loaded TCG guest; probes
        // given up sooner pile up as unfinished startups until sshd's
        // MaxStartups drops them all, and ssh never answers.
        let ready = tokio::task::spawn_blocking(move || {
            crate::ssh::banner_ready(addr, Duration::from_secs(5))
        })
        .await
        .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if !vmm_running(vms, &handles.vmm, &vm.id).await {
            return Err(VmError::VmmExited);
        }
        if Instant::now() >= deadline {
            return Err(VmError::SshTimeout(vms.settings.boot_timeout.as_secs()));
        }
        tokio::select! {
            _ = ctx.cancel_token().cancelled() => return Err(Cancelled.into()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

pub(crate) async fn vmm_running(vms: &Vms, handle: &banger_vmm::VmHandle, vm_id: &str) -> bool {
    let vmm = vms.vmms.of(handle);
    let (handle, vm_id) = (handle.clone(), vm_id.to_owned());
    tokio::task::spawn_blocking(move || vmm.is_running(&handle, &vm_id))
        .await
        .unwrap_or(false)
}

/// True when the VM has handles and its VMM really runs.
async fn is_alive(vms: &Vms, vm: &VmRecord) -> bool {
    match vms.table.handles(&vm.id) {
        Some(h) => vmm_running(vms, &h.vmm, &vm.id).await,
        None => false,
    }
}

/// Forgets a VM's runtime leftovers and records it stopped.
async fn mark_stopped(vms: &Vms, ctx: &OpCtx, mut vm: VmRecord) -> Result<VmRecord, VmError> {
    let dir = vm_dir(vms, &vm.id);
    let handles = vms.table.handles(&vm.id);
    release_runtime(vms, ctx, &vm.id, handles.as_ref()).await;
    remove_handles(&dir);
    vm.state = VmState::Stopped;
    vm.updated_at_ms = now_ms();
    let record = vm.clone();
    vms.db.call(move |s| s.update_vm(&record)).await?;
    Ok(vm)
}

/// What a VM whose VMM is gone held: its network, its RAM file, its
/// handles in memory.
pub(super) async fn release_runtime(
    vms: &Vms,
    ctx: &OpCtx,
    vm_id: &str,
    handles: Option<&Handles>,
) {
    detach_network(vms, ctx, vm_id, handles).await;
    if let Some(h) = handles.and_then(|h| h.usernet.clone()) {
        let (id, vmm) = (
            vm_id.to_owned(),
            vms.vmms.get(banger_vmm::BackendKind::Qemu),
        );
        let _ = tokio::task::spawn_blocking(move || vmm.kill_usernet(&h, &id)).await;
    }
    if let Some(path) = handles.and_then(|h| h.ram_file.as_ref()) {
        vms.ram.remove(path);
    }
    if let Some(h) = handles {
        let (vmm, handle) = (vms.vmms.of(&h.vmm), h.vmm.clone());
        let _ = tokio::task::spawn_blocking(move || vmm.cleanup(&handle)).await;
    }
    if let Some(dm) = handles.and_then(|h| h.dm.as_ref()) {
        detach_root_device(vms, ctx.id(), dm).await;
    }
    vms.table.clear_handles(vm_id);
}

/// Removes a device-mapper root disk once its VMM is gone; a failure is
/// logged (the next start of the VM makes its own, under the same name,
/// and fails clearly if this one is still there).
pub(super) async fn detach_root_device(
    vms: &Vms,
    op: &banger_proto::OpId,
    dm: &crate::disks::dm::DmAttachment,
) {
    match vms.root_devices.detach(op, dm).await {
        Ok(()) => tracing::info!(device = %dm.name, "root disk snapshot detached"),
        Err(e) => {
            tracing::warn!(device = %dm.name, error = %crate::error::chain(&e), "could not detach the root disk snapshot")
        }
    }
}

/// Graceful stop: ACPI powerdown, a bounded wait, then SIGKILL.
pub async fn stop(vms: &Vms, name: &str, ctx: &OpCtx) -> Result<VmRecord, VmError> {
    let (_guard, vm) = locked(vms, name).await?;
    stop_locked(vms, ctx, vm).await
}

pub(super) async fn stop_locked(vms: &Vms, ctx: &OpCtx, vm: VmRecord) -> Result<VmRecord, VmError> {
    let Some(handles) = vms.table.handles(&vm.id) else {
        return mark_stopped(vms, ctx, vm).await;
    };
    if !vmm_running(vms, &handles.vmm, &vm.id).await {
        return mark_stopped(vms, ctx, vm).await;
    }
    let vmm = vms.vmms.of(&handles.vmm);
    let timeout = vms.settings.stop_timeout;
    let handle = handles.vmm.clone();
    let paused = vm.state == VmState::Paused;
    let graceful = tokio::task::spawn_blocking(move || {
        if paused {
            // A paused guest cannot act on the power button.
            if let Err(e) = vmm.resume(&handle) {
                tracing::warn!(error = %e, "could not resume the paused vm to power it off");
            }
        }
        let asked = vmm.request_shutdown(&handle);
        if let Err(e) = &asked {
            tracing::warn!(error = %e, "powerdown request failed; killing");
        }
        let exited = asked.is_ok() && vmm.wait_exit(&handle, timeout).unwrap_or(false);
        if !exited {
            tracing::warn!(pid = handle.pid, "guest did not power off in time; killing");
            let _ = vmm.kill(&handle, banger_vmm::Signal::Kill);
            return vmm
                .wait_exit(&handle, Duration::from_secs(10))
                .unwrap_or(false);
        }
        true
    })
    .await
    .map_err(task_failed("stop"))?;
    if !graceful {
        return Err(VmError::KillFailed(handles.vmm.pid));
    }
    tracing::info!(vm = %vm.name, "vm stopped");
    mark_stopped(vms, ctx, vm).await
}

/// Sends `signal` to the VMM (default KILL) and waits for it to exit.
pub async fn kill(
    vms: &Vms,
    name: &str,
    signal: Option<&str>,
    ctx: &OpCtx,
) -> Result<VmRecord, VmError> {
    let signal: banger_vmm::Signal = signal.unwrap_or("KILL").parse()?;
    let (_guard, vm) = locked(vms, name).await?;
    let Some(handles) = vms.table.handles(&vm.id) else {
        return Err(VmError::NotRunning { name: vm.name });
    };
    let vmm = vms.vmms.of(&handles.vmm);
    let handle = handles.vmm.clone();
    let vm_id = vm.id.clone();
    let exited = tokio::task::spawn_blocking(move || {
        if !vmm.is_running(&handle, &vm_id) {
            return Ok(true);
        }
        vmm.kill(&handle, signal)?;
        vmm.wait_exit(&handle, Duration::from_secs(30))
    })
    .await
    .map_err(task_failed("kill"))??;
    if !exited {
        return Err(VmError::StillRunning {
            pid: handles.vmm.pid,
            signal,
        });
    }
    mark_stopped(vms, ctx, vm).await
}

/// Kills the VMM if it runs (no graceful shutdown: what the VM had is
/// being discarded) and records the VM stopped; the caller holds its lock.
pub(crate) async fn kill_locked(vms: &Vms, ctx: &OpCtx, vm: VmRecord) -> Result<VmRecord, VmError> {
    if let Some(handles) = vms.table.handles(&vm.id) {
        let vmm = vms.vmms.of(&handles.vmm);
        let vm_id = vm.id.clone();
        let handle = handles.vmm.clone();
        let exited = tokio::task::spawn_blocking(move || {
            if !vmm.is_running(&handle, &vm_id) {
                return true;
            }
            let _ = vmm.kill(&handle, banger_vmm::Signal::Kill);
            vmm.wait_exit(&handle, Duration::from_secs(10))
                .unwrap_or(false)
        })
        .await
        .map_err(task_failed("kill"))?;
        if !exited {
            return Err(VmError::KillFailed(handles.vmm.pid));
        }
    }
    mark_stopped(vms, ctx, vm).await
}

/// Stops a running VM's vCPUs (idempotent). Memory, processes and open
/// connections stay; the guest's clock stops with it.
pub async fn pause(vms: &Vms, name: &str) -> Result<VmRecord, VmError> {
    let (_guard, mut vm) = locked(vms, name).await?;
    let handles = match vms.table.handles(&vm.id) {
        Some(h) if vmm_running(vms, &h.vmm, &vm.id).await => h,
        _ => return Err(VmError::NotRunning { name: vm.name }),
    };
    if vm.state == VmState::Paused {
        return Ok(vm);
    }
    let vmm = vms.vmms.of(&handles.vmm);
    let handle = handles.vmm.clone();
    tokio::task::spawn_blocking(move || vmm.pause(&handle))
        .await
        .map_err(task_failed("pause"))??;
    vm.state = VmState::Paused;
    vm.updated_at_ms = now_ms();
    let record = vm.clone();
    vms.db.call(move |s| s.update_vm(&record)).await?;
    tracing::info!(vm = %vm.name, "vm paused");
    Ok(vm)
}

/// Continues a paused VM (idempotent) and has its agent step the guest
/// clock to the host's, which stood still while paused.
pub async fn resume(vms: &Vms, name: &str) -> Result<VmRecord, VmError> {
    let (_guard, mut vm) = locked(vms, name).await?;
    let handles = match vms.table.handles(&vm.id) {
        Some(h) if vmm_running(vms, &h.vmm, &vm.id).await => h,
        _ => return Err(VmError::NotRunning { name: vm.name }),
    };
    let vmm = vms.vmms.of(&handles.vmm);
    let handle = handles.vmm.clone();
    tokio::task::spawn_blocking(move || vmm.resume(&handle))
        .await
        .map_err(task_failed("resume"))??;
    if handles.agent.is_some() {
        if let Err(e) = vms.guest.set_time(&vm, &handles).await {
            tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "could not set the guest clock after resume");
        }
    }
    if vm.state != VmState::Running {
        vm.state = VmState::Running;
        vm.updated_at_ms = now_ms();
        let record = vm.clone();
        vms.db.call(move |s| s.update_vm(&record)).await?;
    }
    tracing::info!(vm = %vm.name, "vm resumed");
    Ok(vm)
}

pub async fn restart(vms: &Vms, name: &str, ctx: &OpCtx) -> Result<VmRecord, VmError> {
    let (_guard, vm) = locked(vms, name).await?;
    ctx.stage("stop vm");
    let vm = stop_locked(vms, ctx, vm).await?;
    start_locked(vms, vm, ctx).await
}

/// Deletes a VM: removes its files, its record and its host-key pin. A
/// running (or paused) VM is refused unless `force`, which kills it first.
pub async fn delete(vms: &Vms, name: &str, force: bool, ctx: &OpCtx) -> Result<VmRecord, VmError> {
    let (_guard, vm) = locked(vms, name).await?;
    if !force && is_alive(vms, &vm).await {
        return Err(VmError::DeleteRunning(vm.name));
    }
    delete_locked(vms, ctx, vm).await
}

pub(crate) async fn delete_locked(
    vms: &Vms,
    ctx: &OpCtx,
    vm: VmRecord,
) -> Result<VmRecord, VmError> {
    let handles = vms.table.handles(&vm.id);
    if let Some(handles) = handles.clone() {
        let vmm = vms.vmms.of(&handles.vmm);
        let vm_id = vm.id.clone();
        tokio::task::spawn_blocking(move || {
            if vmm.is_running(&handles.vmm, &vm_id) {
                let _ = vmm.kill(&handles.vmm, banger_vmm::Signal::Kill);
                let _ = vmm.wait_exit(&handles.vmm, Duration::from_secs(10));
            }
        })
        .await
        .map_err(task_failed("delete"))?;
    }
    release_runtime(vms, ctx, &vm.id, handles.as_ref()).await;
    // The directory is first renamed to its deleting name, the durable
    // mark a crash leaves for reconcile to finish the delete with (see
    // reconcile.rs), then the row goes, then the files.
    let dir = vm_dir(vms, &vm.id);
    let doomed = super::deleting_dir(vms, &vm.id);
    let marked = match std::fs::rename(&dir, &doomed) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(VmError::Io {
                what: "rename",
                path: dir.clone(),
                source,
            });
        }
    };
    // Crash tests stop here: marked, the record still there.
    crate::op::stall_point("delete: directory marked");
    let id = vm.id.clone();
    // Deleting the row frees its address lease too (ON DELETE CASCADE).
    if let Err(e) = vms.db.call(move |s| s.delete_vm(&id)).await {
        if marked {
            let _ = std::fs::rename(&doomed, &dir);
        }
        return Err(e.into());
    }
    if marked {
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&doomed))
            .await
            .map_err(task_failed("delete"))?;
        if let Err(e) = removed {
            // The VM is gone; reconcile removes what is left at the next start.
            tracing::warn!(vm = %vm.name, error = %e, "could not remove all of the vm's files");
        }
    }
    vms.network.refresh_names().await;
    let ssh = vms.ssh.clone();
    let name = vm.name.clone();
    let _ = tokio::task::spawn_blocking(move || ssh.forget(&name)).await;
    vms.table.forget_lock(&vm.id);
    tracing::info!(vm = %vm.name, "vm deleted");
    if let Some(base) = &vm.base_snapshot_id {
        super::snapshot::drop_if_unused_fork_base(vms, base).await;
    }
    super::snapshot::template::prune_replaced_images(vms).await;
    Ok(vm)
}

/// Changes vcpus, memory, disk size, published ports or egress policy of a
/// stopped VM, or only the egress policy of a running bridged one (applied
/// at once: the helper replaces its rules and forgets what its DNS
/// answers had allowed). New ports are checked as a create's are (twice,
/// UDP on a bridged VM, held by another VM or a create in flight, or by
/// anything listening).
pub async fn edit(vms: &Vms, p: &VmEditParams, op: &OpId) -> Result<VmRecord, VmError> {
    if let Some(v) = p.vcpus {
        validate::vcpus(v)?;
    }
    if let Some(m) = p.memory_mib {
        validate::memory_mib(m)?;
    }
    if let Some(d) = p.disk_size_bytes {
        validate::disk_size(d)?;
    }
    if let Some(publish) = &p.publish {
        super::create::check_publish_twice(publish)?;
    }
    if p.vcpus.is_none()
        && p.memory_mib.is_none()
        && p.disk_size_bytes.is_none()
        && p.publish.is_none()
        && p.egress.is_none()
    {
        return Err(VmError::NothingToChange);
    }
    let (_guard, mut vm) = locked(vms, &p.name).await?;
    let egress_only = p.vcpus.is_none()
        && p.memory_mib.is_none()
        && p.disk_size_bytes.is_none()
        && p.publish.is_none();
    let mut running_bridged = None;
    if is_alive(vms, &vm).await {
        let bridged = vms
            .table
            .handles(&vm.id)
            .and_then(|h| h.bridged)
            .filter(|_| egress_only && vm.network_mode == NetworkMode::Bridged);
        match bridged {
            Some(b) => running_bridged = Some(b),
            None => return Err(VmError::Running(vm.name)),
        }
    }
    if let Some(publish) = &p.publish {
        super::create::check_publish_network(publish, vm.network_mode)?;
        vms.reservations.check_ports(publish)?;
        super::create::check_host_ports(vms, publish, Some(&vm.id)).await?;
    }
    if let Some(egress) = &p.egress {
        super::create::check_egress_network(egress, vm.network_mode)?;
    }
    if let Some(size) = p.disk_size_bytes {
        if size < vm.disk_size_bytes {
            return Err(VmError::Shrink {
                requested: size,
                current: vm.disk_size_bytes,
            });
        }
        let (work, format) = work_drive(&vm_dir(vms, &vm.id));
        if format != DiskFormat::Raw {
            return Err(VmError::LayeredWorkDisk(vm.name));
        }
        tokio::task::spawn_blocking(move || disks::grow_work_disk(&work, size))
            .await
            .map_err(task_failed("resize"))??;
        vm.disk_size_bytes = size;
    }
    if let Some(v) = p.vcpus {
        vm.vcpus = v;
    }
    if let Some(m) = p.memory_mib {
        vm.memory_mib = m;
    }
    if let Some(publish) = &p.publish {
        vm.published_ports = publish.clone();
    }
    if let Some(egress) = &p.egress {
        if let Some(b) = &running_bridged {
            vms.network
                .apply_egress(op, &b.tap, b.ip, egress, true)
                .await?;
        }
        vm.egress = egress.clone();
    }
    vm.updated_at_ms = now_ms();
    let record = vm.clone();
    vms.db.call(move |s| s.update_vm(&record)).await?;
    Ok(vm)
}

/// How a VM about to boot is wired.
struct NetPlan {
    /// None: a VM without a network (Firecracker in user mode).
    nic: Option<NetInterface>,
    /// `banger.ip=... banger.gw=... banger.dns=...`
    cmdline: String,
    ssh_host: String,
    ssh_port: u16,
    bridged: Option<BridgedHandles>,
    /// What a restored bridged guest is told to switch its NIC to.
    guest_net: Option<snapshot::GuestNetPlan>,
    /// The isolated user-mode network to start before the VMM.
    usernet: Option<banger_vmm::usernet::UsernetSpec>,
}

impl NetPlan {
    /// No NIC at all.
    fn none() -> Self {
        NetPlan {
            nic: None,
            cmdline: String::new(),
            ssh_host: String::new(),
            ssh_port: 0,
            bridged: None,
            guest_net: None,
            usernet: None,
        }
    }
}

/// User mode: SSH and published ports forwarded from loopback by QEMU's
/// slirp: run in an isolated namespace of its own for egress `internet`
/// (`banger_vmm::usernet`), restricted for `none`, as is for `open`
/// (docs/security.md, "User mode").
fn user_network(
    publish: &[PublishSpec],
    egress: &Egress,
    vm_id: &str,
    dir: &std::path::Path,
) -> Result<NetPlan, VmError> {
    let ssh_port = free_loopback_port()?;
    let mut forwards = vec![PortForward {
        proto: Proto::Tcp,
        host_addr: Ipv4Addr::LOCALHOST.into(),
        host_port: ssh_port,
        guest_port: 22,
    }];
    for p in publish {
        ensure_port_free(*p)?;
        forwards.push(PortForward {
            proto: match p.proto {
                PortProto::Udp => Proto::Udp,
                PortProto::Tcp => Proto::Tcp,
            },
            host_addr: Ipv4Addr::LOCALHOST.into(),
            host_port: p.host,
            guest_port: p.guest,
        });
    }
    let (backend, usernet) = match egress {
        Egress::Internet => (
            NetBackend::User {
                forwards: forwards.clone(),
                restrict: false,
            },
            Some(banger_vmm::usernet::UsernetSpec {
                vm_id: vm_id.to_owned(),
                vm_dir: dir.to_path_buf(),
                forwards,
            }),
        ),
        Egress::None => (
            NetBackend::User {
                forwards,
                restrict: true,
            },
            None,
        ),
        Egress::Open => (
            NetBackend::User {
                forwards,
                restrict: false,
            },
            None,
        ),
        Egress::Allow { .. } => {
            return Err(VmError::EgressNeedsBridged {
                egress: egress.to_string(),
            });
        }
    };
    Ok(NetPlan {
        nic: Some(NetInterface {
            id: "net0".into(),
            mac: None,
            backend,
        }),
        cmdline: USER_NET_ARGS.to_owned(),
        ssh_host: Ipv4Addr::LOCALHOST.to_string(),
        ssh_port,
        bridged: None,
        guest_net: None,
        usernet,
    })
}

/// Bridged: the VM's leased address, a TAP from the warm pool, and
/// loopback proxies for published ports. Each is rolled back on failure.
async fn attach_bridged(
    vms: &Vms,
    vm: &VmRecord,
    ctx: &OpCtx,
    rollback: &mut Rollback,
) -> Result<NetPlan, VmError> {
    let network = Arc::clone(&vms.network);
    let bridge = network.ready(ctx.id(), &vms.table.held_taps()).await?;
    let ip = network.lease(&vm.id, &bridge).await?;
    network.refresh_names().await;
    let tap = network.acquire_tap(ctx.id(), &bridge).await?;
    {
        let network = Arc::clone(&network);
        let (tap, op) = (tap.clone(), ctx.id().clone());
        rollback.push("attach network", move || {
            network.release_tap_blocking(&tap, &op)
        });
    }
    network
        .apply_egress(ctx.id(), &tap, ip, &vm.egress, true)
        .await?;
    network.start_proxies(&vm.id, ip, &vm.published_ports)?;
    {
        let network = Arc::clone(&network);
        let vm_id = vm.id.clone();
        rollback.push("publish ports", move || network.stop_proxies(&vm_id));
    }
    tracing::info!(vm = %vm.name, tap = %tap, ip = %ip, "network attached");
    Ok(NetPlan {
        nic: Some(NetInterface {
            id: "net0".into(),
            mac: Some(crate::network::mac_for(ip)),
            backend: NetBackend::Tap {
                tap_name: tap.clone(),
            },
        }),
        cmdline: format!(
            "banger.ip={ip}/{} banger.gw={gw} banger.dns={gw}",
            bridge.subnet.prefix(),
            gw = bridge.gateway
        ),
        ssh_host: ip.to_string(),
        ssh_port: 22,
        bridged: Some(BridgedHandles { tap, ip }),
        usernet: None,
        guest_net: Some(snapshot::GuestNetPlan {
            mac: crate::network::mac_for(ip),
            address_cidr: format!("{ip}/{}", bridge.subnet.prefix()),
            gateway: bridge.gateway.to_string(),
        }),
    })
}

/// Gives a stopped VM's network back: its TAP to the pool, its proxies
/// closed. (Its address stays leased until the VM is deleted.)
pub(super) async fn detach_network(vms: &Vms, ctx: &OpCtx, vm_id: &str, handles: Option<&Handles>) {
    vms.network.stop_proxies(vm_id);
    if let Some(b) = handles.and_then(|h| h.bridged.as_ref()) {
        vms.network.release_tap(ctx.id(), &b.tap).await;
    }
}

/// `image.promote`: the stopped VM `p.vm`'s root disk (and with
/// `with_work` its work disk, else its image's work seed) becomes the
/// image `p.name`, origin `promoted`. The VM's lock is held throughout,
/// so it cannot start while its disks are copied.
pub async fn promote(
    vms: &Vms,
    p: &banger_proto::vm::ImagePromoteParams,
    ctx: &OpCtx,
) -> Result<banger_store::ImageRecord, VmError> {
    validate::name("image", &p.name)?;
    let (_guard, vm) = locked(vms, &p.vm).await?;
    if vm.state != VmState::Stopped || is_alive(vms, &vm).await {
        return Err(VmError::PromoteNotStopped(vm.name));
    }
    let dir = vm_dir(vms, &vm.id);
    let strategy = vm
        .disk_strategy
        .and_then(disks::RootStrategy::from_disk_strategy)
        .ok_or_else(|| VmError::NoRootStrategy(vm.name.clone()))?;
    if strategy == disks::RootStrategy::DmSnapshot {
        return Err(VmError::PromoteDmSnapshot(vm.name));
    }
    let root = dir.join(strategy.file_name());
    let image_id = vm.image_id.clone();
    let image = vms.db.call(move |s| s.image(&image_id)).await?;
    let (seed, seed_qcow2) = if p.with_work {
        let (work, format) = work_drive(&dir);
        (work, format == DiskFormat::Qcow2)
    } else {
        let seed = image
            .work_seed_path
            .clone()
            .ok_or_else(|| VmError::NoWorkSeed(image.name.clone()))?;
        (seed, false)
    };
    for (what, path) in [("vm root disk", &root), ("work disk", &seed)] {
        if !path.exists() {
            return Err(VmError::MissingFile {
                what,
                path: path.clone(),
            });
        }
    }
    let from = crate::artifacts::PromoteFrom {
        vm: vm.name.clone(),
        root,
        root_qcow2: strategy == disks::RootStrategy::Qcow2,
        seed,
        seed_qcow2,
        has_agent: image.has_agent,
        config: image.config.clone(),
    };
    Ok(vms.artifacts.promote_image(&p.name, &from, ctx).await?)
}
