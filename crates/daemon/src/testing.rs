//! Shared pieces of the daemon's unit tests: a state over a temp dir,
//! with a real store and the VMM of the test's choice (a fake, at the
//! `Vmm` seam).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_store::{ImageRecord, KernelRecord, VmRecord, VmState};
use banger_vmm::{BackendKind, Signal, VmHandle, VmRunState, VmSpec, Vmm, VmmError};

use banger_paths::Layout;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::vms::{Handles, vm_dir, work_disk};
use crate::{DaemonConfig, DaemonState};

pub(crate) fn test_state(root: &std::path::Path) -> Arc<DaemonState> {
    test_state_with(
        root,
        Arc::new(banger_vmm::QemuVmm::new("qemu-system-x86_64")),
    )
}

/// A state over a temp dir with the given VMM (a fake, at the seam).
pub(crate) fn test_state_with(
    root: &std::path::Path,
    vmm: Arc<dyn banger_vmm::Vmm>,
) -> Arc<DaemonState> {
    let devices = Arc::new(crate::disks::dm::HelperRootDevices(
        crate::helper_client::HelperClient::new(root.join("no-helper.sock")),
    ));
    test_state_full(root, vmm.into(), devices)
}

/// A state whose VMs of both backends run on `vmms`' doubles and whose
/// device-mapper root disks `devices` makes.
pub(crate) fn test_state_full(
    root: &std::path::Path,
    vmms: crate::vmms::Vmms,
    devices: Arc<dyn crate::disks::dm::RootDevices>,
) -> Arc<DaemonState> {
    test_state_tuned(root, vmms, devices, |_| {})
}

/// As [`test_state_full`], with `tune` changing the config first.
pub(crate) fn test_state_tuned(
    root: &std::path::Path,
    vmms: crate::vmms::Vmms,
    devices: Arc<dyn crate::disks::dm::RootDevices>,
    tune: impl FnOnce(&mut DaemonConfig),
) -> Arc<DaemonState> {
    let layout = Layout {
        config_dir: root.join("config"),
        data_dir: root.join("data"),
        state_dir: root.join("state"),
        cache_dir: root.join("cache"),
        runtime_dir: root.join("run"),
    };
    layout.ensure_dirs().unwrap();
    let store = banger_store::Store::open(&layout.database_path()).unwrap();
    let mut config = DaemonConfig::new(layout, "0.0.0-test", "test-build");
    config.accel = crate::config::AccelChoice::Tcg;
    // VMs' RAM files with the test's other files, not in /dev/shm.
    config.ram_dir = Some(root.join("ram"));
    tune(&mut config);
    Arc::new(DaemonState::with_root_devices(
        config,
        store,
        vmms,
        CancellationToken::new(),
        devices,
    ))
}

/// Launch fails or succeeds on demand; "running" is a set of pids.
#[derive(Debug, Default)]
pub(crate) struct FakeVmm {
    pub(crate) alive: Mutex<HashSet<u32>>,
    pub(crate) fail_launch: bool,
    pub(crate) launched: Mutex<Vec<String>>,
    /// The root drive of each launch, in order.
    pub(crate) launched_roots: Mutex<Vec<PathBuf>>,
    /// A powerdown takes this long (the guest shutting down).
    pub(crate) shutdown_takes: Duration,
    /// Notified when a powerdown request arrives.
    pub(crate) shutdown_asked: tokio::sync::Notify,
    /// How VMMs ended, by pid, for `take_exit`.
    pub(crate) exits: Mutex<std::collections::HashMap<u32, banger_vmm::VmmExit>>,
}

impl Vmm for FakeVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }
    fn build(&self) -> Result<banger_vmm::VmmBuild, VmmError> {
        Ok(banger_vmm::VmmBuild {
            backend: BackendKind::Qemu,
            version: "7.2.22".into(),
            machine: "microvm".into(),
        })
    }
    fn launch_usernet(
        &self,
        _: &banger_vmm::usernet::UsernetSpec,
    ) -> Result<banger_vmm::usernet::UsernetHandle, banger_vmm::usernet::UsernetError> {
        Ok(banger_vmm::usernet::UsernetHandle {
            pid: 0,
            namespace_pid: 0,
        })
    }
    fn kill_usernet(&self, _: &banger_vmm::usernet::UsernetHandle, _: &str) {}
    fn launch(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        self.launched.lock().unwrap().push(spec.vm_id.clone());
        if let Some(root) = spec.drives.iter().find(|d| d.is_root) {
            self.launched_roots.lock().unwrap().push(root.path.clone());
        }
        // A real VMM opens its console log first thing.
        std::fs::write(&spec.console_log, b"").unwrap();
        if self.fail_launch {
            return Err(VmmError::InvalidSpec("fake launch failure".into()));
        }
        let pid = 4_000_000 + self.launched.lock().unwrap().len() as u32;
        self.alive.lock().unwrap().insert(pid);
        Ok(VmHandle {
            pid,
            control_socket: spec.vm_dir.join("qmp.sock"),
            backend: BackendKind::Qemu,
        })
    }
    fn request_shutdown(&self, h: &VmHandle) -> Result<(), VmmError> {
        self.shutdown_asked.notify_one();
        std::thread::sleep(self.shutdown_takes);
        self.alive.lock().unwrap().remove(&h.pid);
        Ok(())
    }
    fn kill(&self, h: &VmHandle, _: Signal) -> Result<(), VmmError> {
        self.alive.lock().unwrap().remove(&h.pid);
        Ok(())
    }
    fn is_running(&self, h: &VmHandle, _: &str) -> bool {
        self.alive.lock().unwrap().contains(&h.pid)
    }
    fn wait_exit(&self, h: &VmHandle, _: Duration) -> Result<bool, VmmError> {
        Ok(!self.alive.lock().unwrap().contains(&h.pid))
    }
    fn status(&self, _: &VmHandle) -> Result<VmRunState, VmmError> {
        Ok(VmRunState::Running)
    }
    fn take_exit(&self, h: &VmHandle) -> Option<banger_vmm::VmmExit> {
        self.exits.lock().unwrap().remove(&h.pid)
    }
}

/// A kernel, an image and a VM whose files exist, in `state`.
pub(crate) fn seed(state: &Arc<DaemonState>, name: &str, vm_state: VmState) -> VmRecord {
    let root = state.config.layout.data_dir.clone();
    let file = |p: PathBuf| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
        p
    };
    let kernel = KernelRecord {
        id: "k1".into(),
        name: "debian-cloud".into(),
        origin: banger_proto::vm::KernelOrigin::Catalog {
            package: "linux-image-cloud-amd64".into(),
        },
        kernel_path: file(root.join("kernels/k/vmlinuz")),
        initrd_path: Some(file(root.join("kernels/k/initrd.img"))),
        modules_dir: None,
        version: None,
        sha256: None,
        created_at_ms: 0,
    };
    let image = ImageRecord {
        id: "i1".into(),
        name: "default".into(),
        source: "test".into(),
        rootfs_path: file(root.join("images/i/rootfs.ext4")),
        work_seed_path: Some(file(root.join("images/i/work-seed.ext4"))),
        fingerprint: None,
        size_bytes: 1,
        managed: false,
        created_at_ms: 0,
        has_agent: false,
        recipe: None,
        replaced_by: None,
        origin: Default::default(),
        config: None,
    };
    let store = state.lock_store_for_tests();
    let _ = store.insert_kernel(&kernel);
    let _ = store.insert_image(&image);
    let vm = VmRecord {
        id: format!("id-{name}"),
        name: name.into(),
        image_id: "i1".into(),
        kernel_id: "k1".into(),
        vcpus: 1,
        memory_mib: 256,
        disk_size_bytes: 1 << 30,
        network_mode: banger_proto::NetworkMode::User,
        egress: banger_proto::Egress::default(),
        backend: Some(banger_proto::Backend::Qemu),
        disk_strategy: Some(banger_proto::DiskStrategy::Qcow2),
        published_ports: vec![],
        state: vm_state,
        last_error: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        base_snapshot_id: None,
        wait_for: None,
        backend_reason: None,
    };
    store.insert_vm(&vm).unwrap();
    let dir = vm_dir(&state.vms, &vm.id);
    file(dir.join("root.qcow2"));
    file(work_disk(&dir));
    vm
}

pub(crate) fn handles(pid: u32, dir: &std::path::Path) -> Handles {
    Handles {
        vmm: VmHandle {
            pid,
            control_socket: dir.join("qmp.sock"),
            backend: BackendKind::Qemu,
        },
        ssh_host: "127.0.0.1".into(),
        ssh_port: 2222,
        accel: banger_proto::Accel::Tcg,
        bridged: None,
        agent: None,
        ram_file: None,
        usernet: None,
        dm: None,
    }
}

/// Makes the seeded image's work seed a real (tiny) ext4, so creates can
/// clone and grow it.
pub(crate) fn real_work_seed(state: &Arc<DaemonState>) {
    let seed = state.config.layout.data_dir.join("images/i/work-seed.ext4");
    let _ = std::fs::remove_file(&seed);
    let ok = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&seed)
        .arg("8M")
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4 failed");
}

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub(crate) fn vm_dirs(state: &Arc<DaemonState>) -> Vec<String> {
    let dir = state.config.layout.data_dir.join("vms");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Counts what happened to `test.sleep` and `test.hold` calls, and what
/// the connection loop saw meanwhile.
#[derive(Debug, Default)]
pub struct Probe {
    pub started: AtomicU32,
    pub completed: AtomicU32,
    pub cancelled: AtomicU32,
    /// End-of-file seen on a connection while its handler ran.
    pub read_closed: AtomicU32,
    /// Event subscribers dropped for not reading.
    pub stalled_streams: AtomicU32,
    pub changed: Notify,
    pub(crate) release: Notify,
}

impl Probe {
    /// Lets one running (or the next) `test.hold` finish.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// Called by the connection loop (`dispatch/server.rs`).
    pub fn note_read_closed(&self) {
        self.read_closed.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Called by the event stream (`dispatch/server.rs`).
    pub fn note_stalled_stream(&self) {
        self.stalled_streams.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}
