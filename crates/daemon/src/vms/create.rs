//! `vm.create`: everything that can be checked up front is checked before
//! anything is made; then an asynchronous operation (begun by the RPC edge)
//! whose stages the CLI prints live.
//!
//! Two creates must never both take one name or one host port: both are
//! reserved (in memory, atomically) before the store is consulted, and the
//! reservation lasts until the create ends, by which time the VM's row
//! says the same thing durably.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use banger_proto::vm::{VmCreateParams, VmView};
use banger_proto::{Egress, NetworkMode, PortProto, PublishSpec, WaitFor};
use banger_store::{ImageRecord, KernelRecord, SnapshotRecord, VmRecord, VmState};
use rand::Rng;

use super::Vms;
use super::lifecycle::{delete_locked, start_locked};
use super::snapshot::template::TemplateShape;
use super::snapshot::{TemplateKey, template_key};
use super::{VmError, view, vm_dir, work_disk};
use crate::network::{NetworkError, ensure_port_free};
use crate::op::{OpCtx, OpId};
use crate::ops::now_ms;
use crate::{disks, validate};

/// Names and host ports of VMs being created, reserved before their row
/// exists.
#[derive(Debug, Default)]
pub struct Reservations(Mutex<Reserved>);

#[derive(Debug, Default)]
struct Reserved {
    names: HashSet<String>,
    ports: HashSet<(u16, PortProto)>,
}

impl Reservations {
    fn lock(&self) -> MutexGuard<'_, Reserved> {
        // Two sets updated together under the lock; nothing panics inside.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes every name (and nothing else), or none of them.
    pub(crate) fn take_names(this: &Arc<Self>, names: &[String]) -> Result<Reservation, VmError> {
        let mut r = this.lock();
        if let Some(taken) = names.iter().find(|n| r.names.contains(*n)) {
            return Err(VmError::NameTaken(taken.clone()));
        }
        r.names.extend(names.iter().cloned());
        Ok(Reservation {
            reservations: Arc::clone(this),
            names: names.to_vec(),
            ports: Vec::new(),
        })
    }

    /// Takes the name and every host port, or nothing.
    fn take(&self, name: &str, ports: &[PublishSpec]) -> Result<(), VmError> {
        let mut r = self.lock();
        if r.names.contains(name) {
            return Err(VmError::NameTaken(name.to_owned()));
        }
        if let Some(p) = ports.iter().find(|p| r.ports.contains(&(p.host, p.proto))) {
            return Err(NetworkError::PortReserved {
                port: p.host,
                proto: p.proto,
            }
            .into());
        }
        r.names.insert(name.to_owned());
        r.ports.extend(ports.iter().map(|p| (p.host, p.proto)));
        Ok(())
    }

    /// Fails when a create in flight holds one of `ports` (takes nothing).
    pub(crate) fn check_ports(&self, ports: &[PublishSpec]) -> Result<(), VmError> {
        let r = self.lock();
        match ports.iter().find(|p| r.ports.contains(&(p.host, p.proto))) {
            Some(p) => Err(NetworkError::PortReserved {
                port: p.host,
                proto: p.proto,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// True when no create holds anything.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        let r = self.lock();
        r.names.is_empty() && r.ports.is_empty()
    }

    fn release(&self, names: &[String], ports: &[PublishSpec]) {
        let mut r = self.lock();
        for name in names {
            r.names.remove(name);
        }
        for p in ports {
            r.ports.remove(&(p.host, p.proto));
        }
    }
}

/// Releases what a create reserved when it ends, however it ends.
#[derive(Debug)]
pub(crate) struct Reservation {
    reservations: Arc<Reservations>,
    names: Vec<String>,
    ports: Vec<PublishSpec>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reservations.release(&self.names, &self.ports);
    }
}

/// Where a create's VM comes from.
#[derive(Debug)]
enum Source {
    /// The image's warm template when one fits, else a cold boot.
    Image { cold: bool },
    /// `--from-snapshot`.
    Snapshot(Box<SnapshotRecord>),
}

/// A template to make in the background after a cold create.
#[derive(Debug)]
pub struct WarmJob {
    pub image: ImageRecord,
    kernel: KernelRecord,
    shape: TemplateShape,
    key: TemplateKey,
}

/// A create whose input passed every check, holding its reservations.
#[derive(Debug)]
pub struct CreatePlan {
    id: String,
    pub name: String,
    image: String,
    kernel: String,
    vcpus: u32,
    memory_mib: u32,
    disk_size_bytes: u64,
    publish: Vec<PublishSpec>,
    network: NetworkMode,
    egress: Egress,
    start: bool,
    /// `--wait`; `None`: the image's default (known once it is there).
    wait_for: Option<WaitFor>,
    /// `--vmm`; `None`: chosen once the kernel is there (`choose_vmm`).
    vmm: Option<banger_vmm::BackendKind>,
    /// The defaults' vcpus, memory and disk size when planned: the shape
    /// warm templates are made in.
    default_shape: (u32, u32, u64),
    source: Source,
    _reservation: Reservation,
}

/// Validates everything that can be checked up front, so bad input and
/// conflicts known now create nothing, and reserves the name and ports.
pub async fn plan_create(
    vms: &Vms,
    op: &OpId,
    mut p: VmCreateParams,
) -> Result<CreatePlan, VmError> {
    validate::name("vm", &p.name)?;
    let snapshot = match &p.from_snapshot {
        // A restored guest is ready, but it waits for its agent to take
        // its new identity; `none` keeps the snapshot's (user mode only).
        Some(_) if p.wait_for.is_some_and(|w| w != WaitFor::None) => {
            return Err(VmError::WaitFromSnapshot);
        }
        Some(name) => {
            let n = name.clone();
            let s = vms.db.call(move |st| st.snapshot(&n)).await?;
            fix_shape_to(&mut p, &s, vms).await?;
            Some(s)
        }
        None => None,
    };
    let defaults = vms.defaults().await?;
    let vcpus = p.vcpus.unwrap_or(defaults.vcpus);
    let memory_mib = p.memory_mib.unwrap_or(defaults.memory_mib);
    let disk_size_bytes = p.disk_size_bytes.unwrap_or(defaults.disk_size_bytes);
    validate::vcpus(vcpus)?;
    validate::memory_mib(memory_mib)?;
    validate::disk_size(disk_size_bytes)?;
    let publish = p.publish.clone();
    check_publish_twice(&publish)?;
    if let Some(image) = &p.image {
        validate::name("image", image)?;
    }
    if let Some(kernel) = &p.kernel {
        validate::name("kernel", kernel)?;
    }
    let vmm = p.vmm.map(|b| crate::vmms::from_proto(Some(b)));
    if vmm == Some(banger_vmm::BackendKind::Firecracker) {
        check_firecracker_usable(vms)?;
    }
    let network = choose_network(vms, op, p.network.or(defaults.network)).await?;
    check_publish_network(&publish, network)?;
    let egress = p.egress.clone().unwrap_or_else(|| defaults.egress.clone());
    check_egress_network(&egress, network)?;
    let image_name = p.image.clone().unwrap_or_else(|| defaults.image.clone());
    let kernel_name = p.kernel.clone().unwrap_or_else(|| defaults.kernel.clone());
    // A named image must exist; the managed default one is built on demand.
    if image_name != vms.artifacts.default_image() {
        validate::name("image", &image_name)?;
        let name = image_name.clone();
        vms.db.call(move |s| s.image(&name)).await?;
    }
    if p.kernel.is_some() || kernel_name != vms.artifacts.default_kernel() {
        validate::name("kernel", &kernel_name)?;
        vms.artifacts.check_kernel_known(&kernel_name).await?;
    }
    // Reserve first, then look at the store: a create that ends between
    // the two has its row in the store by then.
    vms.reservations.take(&p.name, &publish)?;
    let reservation = Reservation {
        reservations: Arc::clone(&vms.reservations),
        names: vec![p.name.clone()],
        ports: publish.clone(),
    };
    if super::vm_exists(vms, &p.name).await? {
        return Err(VmError::NameTaken(p.name));
    }
    Ok(CreatePlan {
        id: new_id(),
        name: p.name,
        image: image_name,
        kernel: kernel_name,
        vcpus,
        memory_mib,
        disk_size_bytes,
        publish,
        network,
        egress,
        start: p.start.unwrap_or(true),
        wait_for: p.wait_for,
        vmm,
        default_shape: (
            defaults.vcpus,
            defaults.memory_mib,
            defaults.disk_size_bytes,
        ),
        source: match snapshot {
            Some(s) => Source::Snapshot(Box::new(s)),
            None => Source::Image { cold: p.cold },
        },
        _reservation: reservation,
    })
}

/// A VM made from a snapshot has the snapshot's image, kernel, shape and
/// network: anything else asked for is refused, the rest filled in.
async fn fix_shape_to(
    p: &mut VmCreateParams,
    s: &SnapshotRecord,
    vms: &Vms,
) -> Result<(), VmError> {
    let fixed = |what: &'static str, recorded: String| VmError::ShapeFixed {
        what,
        snapshot: s.name.clone(),
        recorded,
    };
    let (image_id, kernel_id) = (s.image_id.clone(), s.kernel_id.clone());
    let (image, kernel) = vms
        .db
        .call(move |st| Ok((st.image(&image_id)?.name, st.kernel(&kernel_id)?.name)))
        .await?;
    if p.image.as_ref().is_some_and(|i| *i != image) {
        return Err(fixed("image", image));
    }
    if p.kernel.as_ref().is_some_and(|k| *k != kernel) {
        return Err(fixed("kernel", kernel));
    }
    if p.vcpus.is_some_and(|v| v != s.vcpus) {
        return Err(fixed("vcpus", s.vcpus.to_string()));
    }
    if p.memory_mib.is_some_and(|m| m != s.memory_mib) {
        return Err(fixed("memory", format!("{} MiB", s.memory_mib)));
    }
    if p.disk_size_bytes.is_some_and(|d| d != s.disk_size_bytes) {
        return Err(fixed("disk size", format!("{} bytes", s.disk_size_bytes)));
    }
    if p.network.is_some_and(|n| n != s.network_mode) {
        return Err(fixed("network", s.network_mode.to_string()));
    }
    if p.start == Some(false) {
        return Err(fixed("start", "a restored vm starts".into()));
    }
    p.image = Some(image);
    p.kernel = Some(kernel);
    p.vcpus = Some(s.vcpus);
    p.memory_mib = Some(s.memory_mib);
    p.disk_size_bytes = Some(s.disk_size_bytes);
    p.network = Some(s.network_mode);
    Ok(())
}

/// `bridged` when asked or, by default, when banger-helper answers;
/// `user` when asked or when there is no helper (rootless).
async fn choose_network(
    vms: &Vms,
    op: &OpId,
    asked: Option<NetworkMode>,
) -> Result<NetworkMode, VmError> {
    let network = &vms.network;
    match asked {
        Some(NetworkMode::User) => Ok(NetworkMode::User),
        Some(NetworkMode::Bridged) if network.helper_answers(op).await => Ok(NetworkMode::Bridged),
        Some(NetworkMode::Bridged) => Err(NetworkError::NoHelper {
            socket: network.helper().socket().to_owned(),
        }
        .into()),
        None if network.helper_answers(op).await => Ok(NetworkMode::Bridged),
        None => Ok(NetworkMode::User),
    }
}

pub(crate) fn new_id() -> String {
    let n: u64 = rand::rng().random();
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

/// A host port published twice (per protocol) is refused.
pub(crate) fn check_publish_twice(publish: &[PublishSpec]) -> Result<(), VmError> {
    let mut host_ports = HashSet::new();
    for spec in publish {
        if !host_ports.insert((spec.host, spec.proto)) {
            return Err(VmError::PublishedTwice(spec.host));
        }
    }
    Ok(())
}

/// A network mode enforces only some egress policies; the others are
/// refused up front, naming the mode that can (docs/security.md).
///
/// Bridged mode enforces every policy in nftables. User mode enforces
/// `internet` (slirp in a namespace of its own, `banger_vmm::usernet`),
/// `none` (QEMU's restricted slirp) and `open` (slirp as is); an `allow=`
/// list would need a DNS server and per-answer firewall sets that user
/// mode does not have, so it is refused.
pub(crate) fn check_egress_network(egress: &Egress, network: NetworkMode) -> Result<(), VmError> {
    match (network, egress) {
        (NetworkMode::User, Egress::Allow { .. }) => Err(VmError::EgressNeedsBridged {
            egress: egress.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A bridged VM publishes TCP ports only.
pub(crate) fn check_publish_network(
    publish: &[PublishSpec],
    network: NetworkMode,
) -> Result<(), VmError> {
    if network == NetworkMode::Bridged {
        if let Some(udp) = publish.iter().find(|s| s.is_udp()) {
            return Err(NetworkError::UdpNeedsUserMode { port: udp.host }.into());
        }
    }
    Ok(())
}

/// Host ports the plan publishes that are taken right now: by a VM that
/// runs (or is being created) with the same port, or by anything else
/// listening on this host.
async fn check_ports(vms: &Vms, plan: &CreatePlan) -> Result<(), VmError> {
    check_host_ports(vms, &plan.publish, None).await
}

/// `publish`'s host ports that are taken right now: by a VM other than
/// `except` (an id) that runs or is being created with the same port, or
/// by anything else listening on this host.
pub(crate) async fn check_host_ports(
    vms: &Vms,
    publish: &[PublishSpec],
    except: Option<&str>,
) -> Result<(), VmError> {
    if publish.is_empty() {
        return Ok(());
    }
    let others = vms.db.call(|s| s.vms()).await?;
    for spec in publish {
        let holder = others.iter().find(|vm| {
            Some(vm.id.as_str()) != except
                && matches!(vm.state, VmState::Running | VmState::Creating)
                && vm
                    .published_ports
                    .iter()
                    .any(|p| p.host == spec.host && p.proto == spec.proto)
        });
        if let Some(vm) = holder {
            return Err(NetworkError::PortPublished {
                port: spec.host,
                proto: spec.proto,
                vm: vm.name.clone(),
            }
            .into());
        }
        ensure_port_free(*spec)?;
    }
    Ok(())
}

/// The create operation: conflicts first (nothing is made before they are
/// ruled out), then kernel and image; then either a restore from a
/// snapshot or the image's warm template, or disks, the record and a cold
/// boot (after which the image's template is worth making: returned as a
/// [`WarmJob`] for the caller to run in the background).
pub async fn create(
    vms: &Vms,
    ctx: &OpCtx,
    plan: CreatePlan,
) -> Result<(VmView, Option<WarmJob>), VmError> {
    check_ports(vms, &plan).await?;
    let cold = match &plan.source {
        Source::Snapshot(s) => {
            let vm = super::snapshot::restore::create_from(
                vms,
                ctx,
                s,
                super::snapshot::restore::OwnPart {
                    name: &plan.name,
                    publish: &plan.publish,
                    egress: &plan.egress,
                    wait_for: plan.wait_for,
                },
                "restore from snapshot",
                super::ram::RestoredRam::Own,
            )
            .await?;
            return Ok((view(vms, &vm).await?, None));
        }
        Source::Image { cold } => *cold,
    };
    let kernel = vms.artifacts.ensure_kernel(&plan.kernel, ctx).await?;
    ctx.check_cancelled()?;
    let image = vms.artifacts.ensure_image(&plan.image, ctx).await?;
    // A rebuild of a stale image may have left the old one unused.
    super::snapshot::template::prune_replaced_images(vms).await;
    ctx.check_cancelled()?;
    let wait = check_wait(plan.wait_for, &image)?;
    let publish = with_service_ports(vms, &plan, &image)?;
    let (backend, why) = choose_vmm(vms, &plan, &kernel).await;
    ctx.stage(&format!("vmm {backend} ({why})"));
    let firecracker = backend == banger_vmm::BackendKind::Firecracker;
    if firecracker && plan.network == NetworkMode::User && wait == WaitFor::Ssh {
        return Err(VmError::FirecrackerNoSsh {
            image: image.name.clone(),
        });
    }
    let shape = TemplateShape {
        vcpus: plan.vcpus,
        memory_mib: plan.memory_mib,
        disk_size_bytes: plan.disk_size_bytes,
        network: plan.network,
    };
    let mut warm_job = None;
    // A VM that does not wait for its guest boots cold: a template is
    // restored through the guest's agent.
    if wait != WaitFor::None
        && !firecracker
        && templates_fit(vms, &image, shape, plan.default_shape, plan.start)
    {
        let key = template_key(vms, &image, &kernel, shape, ctx).await?;
        let k = key.0.clone();
        match vms.db.call(move |s| s.template(&k)).await? {
            Some(template) if !cold => {
                let vm = super::snapshot::restore::create_from(
                    vms,
                    ctx,
                    &template,
                    super::snapshot::restore::OwnPart {
                        name: &plan.name,
                        publish: &publish,
                        egress: &plan.egress,
                        wait_for: Some(wait),
                    },
                    "restore from template",
                    super::ram::RestoredRam::MapSnapshot,
                )
                .await?;
                return Ok((view(vms, &vm).await?, None));
            }
            Some(_) => {}
            None => {
                warm_job = Some(WarmJob {
                    image: image.clone(),
                    kernel: kernel.clone(),
                    shape,
                    key,
                })
            }
        }
    }

    let dir = vm_dir(vms, &plan.id);
    let lock = vms.table.lock_for(&plan.id);
    let _guard = lock.lock().await;
    // Firecracker takes raw disks only: without reflinks, a device-mapper
    // snapshot where the helper can make one beats a full copy.
    let dm_available = firecracker && vms.root_devices.available(ctx.id()).await;
    let prepared = {
        let (dir, image, ctx) = (dir.clone(), image.clone(), ctx.clone());
        let size = plan.disk_size_bytes;
        tokio::task::spawn_blocking(move || -> Result<disks::RootStrategy, VmError> {
            std::fs::create_dir_all(&dir).map_err(|source| VmError::Io {
                what: "create",
                path: dir.clone(),
                source,
            })?;
            let strategy = if firecracker {
                disks::choose_raw_root_strategy(&dir, dm_available)
            } else {
                disks::choose_root_strategy(&dir)
            };
            ctx.stage(&format!("prepare root disk ({})", strategy.as_str()));
            disks::make_root_disk(strategy, &image.rootfs_path, &dir)?;
            ctx.stage("prepare work disk");
            let seed = image
                .work_seed_path
                .clone()
                .ok_or_else(|| VmError::NoWorkSeed(image.name.clone()))?;
            disks::make_work_disk(&seed, &work_disk(&dir), size)?;
            Ok(strategy)
        })
        .await
        .map_err(|e| VmError::Task("disk", e))
        .and_then(|r| r)
    };
    let strategy =
        match prepared.and_then(|s| ctx.check_cancelled().map(|()| s).map_err(Into::into)) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(explain_no_space(e, &dir));
            }
        };

    let now = now_ms();
    let vm = VmRecord {
        id: plan.id.clone(),
        name: plan.name.clone(),
        image_id: image.id.clone(),
        kernel_id: kernel.id.clone(),
        vcpus: plan.vcpus,
        memory_mib: plan.memory_mib,
        disk_size_bytes: plan.disk_size_bytes,
        network_mode: plan.network,
        egress: plan.egress.clone(),
        backend: Some(crate::vmms::to_proto(backend)),
        disk_strategy: Some(strategy.disk_strategy()),
        published_ports: publish,
        state: if plan.start {
            VmState::Creating
        } else {
            VmState::Stopped
        },
        last_error: None,
        created_at_ms: now,
        updated_at_ms: now,
        base_snapshot_id: None,
        wait_for: Some(wait),
        backend_reason: Some(why),
    };
    crate::vms::insert_new_vm(vms, &vm, &dir).await?;
    tracing::info!(vm = %vm.name, id = %vm.id, "vm created");
    if !plan.start {
        return Ok((view(vms, &vm).await?, None));
    }
    match start_locked(vms, vm.clone(), ctx).await {
        Ok(vm) => Ok((view(vms, &vm).await?, warm_job)),
        Err(e) if e.is_cancelled() || ctx.is_cancelled() => {
            // Cancelled: leave nothing behind, not even the record.
            ctx.stage("roll back");
            let current = super::find(vms, &vm.id).await.unwrap_or(vm);
            delete_locked(vms, ctx, current).await?;
            Err(VmError::CreateCancelled)
        }
        Err(e) => Err(e),
    }
}

/// The ports a user-mode VM publishes: those asked for, plus a free
/// loopback port for each service of its image whose port is not among
/// them (so `vm show` can say where the service answers). Bridged VMs are
/// reached at their own address.
fn with_service_ports(
    vms: &Vms,
    plan: &CreatePlan,
    image: &banger_store::ImageRecord,
) -> Result<Vec<PublishSpec>, VmError> {
    let mut publish = plan.publish.clone();
    if plan.network != NetworkMode::User {
        return Ok(publish);
    }
    for s in crate::artifacts::image_services(image) {
        if publish.iter().any(|p| p.guest == s.port && !p.is_udp()) {
            continue;
        }
        // The kernel's pick of a free port, released for QEMU to bind.
        let host = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|source| VmError::Io {
                what: "find a free loopback port for",
                path: std::path::PathBuf::from(format!("service {}", s.name)),
                source,
            })?
            .port();
        let spec = PublishSpec {
            host,
            guest: s.port,
            proto: banger_proto::PortProto::Tcp,
        };
        vms.reservations.check_ports(std::slice::from_ref(&spec))?;
        publish.push(spec);
    }
    Ok(publish)
}

/// What a VM made from `image` waits for: `asked`, if the image has what
/// it waits for (an agent; an SSH server, which an image booting banger's
/// init lacks), else the image's default.
pub(crate) fn check_wait(asked: Option<WaitFor>, image: &ImageRecord) -> Result<WaitFor, VmError> {
    match asked {
        None => Ok(super::default_wait(image)),
        Some(WaitFor::Agent) if !image.has_agent => Err(VmError::WaitNoAgent {
            image: image.name.clone(),
        }),
        Some(WaitFor::Ssh) if image.boots_banger_init() => Err(VmError::WaitNoSsh {
            image: image.name.clone(),
        }),
        Some(w) => Ok(w),
    }
}

/// `--vmm firecracker` needs the binary and KVM (it runs nothing else).
fn check_firecracker_usable(vms: &Vms) -> Result<(), VmError> {
    if vms.vmms.firecracker_bin().is_none() {
        return Err(VmError::NoFirecracker);
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(VmError::FirecrackerNeedsKvm(format!(
            "/dev/kvm cannot be opened: {e}"
        )));
    }
    Ok(())
}

/// The VMM of a new VM, and why: as asked; else Firecracker when it is
/// installed, the VM is bridged (Firecracker has no user-mode network) and
/// its KVM probe boots `kernel` (a nested hypervisor can expose /dev/kvm
/// and hang Linux); else QEMU.
async fn choose_vmm(
    vms: &Vms,
    plan: &CreatePlan,
    kernel: &KernelRecord,
) -> (banger_vmm::BackendKind, String) {
    use banger_vmm::BackendKind::{Firecracker, Qemu};
    match plan.vmm {
        Some(kind) => return (kind, format!("--vmm {kind}")),
        None if vms.vmms.firecracker_bin().is_none() => {
            return (Qemu, "firecracker is not installed".into());
        }
        None if plan.network != NetworkMode::Bridged => {
            return (
                Qemu,
                "user-mode network, which firecracker does not have".into(),
            );
        }
        None => {}
    }
    match vms.firecracker_probe(kernel).await {
        banger_vmm::KvmProbe::Usable => (
            Firecracker,
            "installed, and kvm boots this kernel under it".into(),
        ),
        other => (
            Qemu,
            format!(
                "firecracker's kvm probe of kernel {}: {}",
                kernel.name,
                probe_words(&other)
            ),
        ),
    }
}

fn probe_words(probe: &banger_vmm::KvmProbe) -> String {
    match probe {
        banger_vmm::KvmProbe::Usable => "boots".into(),
        banger_vmm::KvmProbe::Absent => "no /dev/kvm".into(),
        banger_vmm::KvmProbe::Hangs => "the kernel hangs".into(),
        banger_vmm::KvmProbe::Failed(why) => why.clone(),
    }
}

/// Templates are made and used for images with the agent (it gives a
/// restored VM its identity), the default shape, and VMs that start.
fn templates_fit(
    vms: &Vms,
    image: &ImageRecord,
    shape: TemplateShape,
    default_shape: (u32, u32, u64),
    start: bool,
) -> bool {
    vms.settings.templates
        && start
        && image.has_agent
        && (shape.vcpus, shape.memory_mib, shape.disk_size_bytes) == default_shape
}

/// Runs a [`WarmJob`] (the background template build after a cold create).
pub async fn run_warm_job(vms: &Vms, ctx: &OpCtx, job: WarmJob) -> Result<SnapshotRecord, VmError> {
    super::snapshot::warm(vms, ctx, &job.image, &job.kernel, job.shape, job.key).await
}

/// `image warm NAME`: the image's default-shape template, made if missing.
pub async fn warm_image(vms: &Vms, ctx: &OpCtx, name: &str) -> Result<SnapshotRecord, VmError> {
    validate::name("image", name)?;
    let d = vms.defaults().await?;
    let kernel = vms.artifacts.ensure_kernel(&d.kernel, ctx).await?;
    let image = vms.artifacts.ensure_image(name, ctx).await?;
    if !image.has_agent {
        return Err(VmError::NoAgentForTemplate(image.name));
    }
    let network = choose_network(vms, ctx.id(), d.network).await?;
    let shape = TemplateShape {
        vcpus: d.vcpus,
        memory_mib: d.memory_mib,
        disk_size_bytes: d.disk_size_bytes,
        network,
    };
    let key = template_key(vms, &image, &kernel, shape, ctx).await?;
    super::snapshot::warm(vms, ctx, &image, &kernel, shape, key).await
}

/// A disk preparation that failed for want of space says so, with where
/// and how much is left (after its files were removed).
pub(crate) fn explain_no_space(e: VmError, dir: &std::path::Path) -> VmError {
    let Some(detail) = disks::no_space(&e) else {
        return e;
    };
    tracing::warn!(error = %crate::error::chain(&e), "disk preparation ran out of space");
    let parent = dir.parent().unwrap_or(dir);
    VmError::NoSpace {
        dir: parent.to_owned(),
        free: disks::free_space(parent),
        detail,
    }
}
