//! Device-mapper root disks in a VM's life, against doubles of the VMM
//! and of the helper's device-mapper calls (the `RootDevices` seam): made
//! at each start and given to the VMM as its root drive, removed when the
//! VMM is gone (stop, a crash, a daemon restart that finds it dead) and
//! when a start fails after them. The real calls go through the real
//! helper in `crates/banger/tests/dm_root_disk.rs`, which makes a
//! snapshot where the kernel has device-mapper.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_proto::OpId;
use banger_store::{VmRecord, VmState};
use futures::future::BoxFuture;

use super::*;
use crate::disks::dm::{DmAttachment, DmError, DmStep, LoopDevice, RootDevices};
use crate::op::OpCtx;
use crate::testing::{FakeVmm, seed, test_state_full};

/// Records what it is asked; an attach "makes" `DIR/mapper-NAME`.
#[derive(Debug)]
struct FakeDevices {
    dir: PathBuf,
    fail_attach: bool,
    attached: Mutex<Vec<DmAttachment>>,
    detached: Mutex<Vec<String>>,
}

impl FakeDevices {
    fn new(dir: &Path, fail_attach: bool) -> Arc<Self> {
        Arc::new(Self {
            dir: dir.to_owned(),
            fail_attach,
            attached: Mutex::default(),
            detached: Mutex::default(),
        })
    }

    fn detached(&self) -> Vec<String> {
        self.detached.lock().unwrap().clone()
    }
}

impl RootDevices for FakeDevices {
    fn available<'a>(&'a self, _: &'a OpId) -> BoxFuture<'a, bool> {
        Box::pin(async { true })
    }
    fn attach<'a>(
        &'a self,
        _: &'a OpId,
        vm_id: &'a str,
        image_rootfs: &'a Path,
        cow_file: &'a Path,
    ) -> BoxFuture<'a, Result<DmAttachment, DmError>> {
        Box::pin(async move {
            if self.fail_attach {
                return Err(DmError::UnexpectedReply {
                    step: DmStep::CreateSnapshot,
                    reply: banger_proto::helper::HelperReply::Done,
                });
            }
            let name = crate::disks::dm::device_name(vm_id)?;
            let device = self.dir.join(format!("mapper-{name}"));
            std::fs::write(&device, b"").unwrap();
            let attachment = DmAttachment {
                name,
                device,
                origin: LoopDevice {
                    device: "/dev/loop7".into(),
                    file: image_rootfs.to_owned(),
                },
                cow: LoopDevice {
                    device: "/dev/loop8".into(),
                    file: cow_file.to_owned(),
                },
            };
            self.attached.lock().unwrap().push(attachment.clone());
            Ok(attachment)
        })
    }
    fn detach<'a>(
        &'a self,
        _: &'a OpId,
        attachment: &'a DmAttachment,
    ) -> BoxFuture<'a, Result<(), DmError>> {
        Box::pin(async move {
            self.detached.lock().unwrap().push(attachment.name.clone());
            Ok(())
        })
    }
}

/// A Firecracker VM whose root disk is a device-mapper snapshot.
fn dm_vm(state: &Arc<crate::state::DaemonState>, name: &str) -> VmRecord {
    let mut vm = seed(state, name, VmState::Stopped);
    vm.backend = Some(banger_proto::Backend::Firecracker);
    vm.disk_strategy = Some(banger_proto::DiskStrategy::DmSnapshot);
    // In user mode a Firecracker VM has no network, so nothing to wait on.
    vm.wait_for = Some(banger_proto::WaitFor::None);
    let dir = vm_dir(&state.vms, &vm.id);
    std::fs::write(dir.join(crate::disks::dm::COW_FILE), b"").unwrap();
    let record = vm.clone();
    state.lock_store_for_tests().update_vm(&record).unwrap();
    vm
}

fn world(
    tmp: &Path,
    fake: &Arc<FakeVmm>,
    devices: &Arc<FakeDevices>,
) -> Arc<crate::state::DaemonState> {
    let vmms = crate::vmms::Vmms::new(
        fake.clone(),
        fake.clone(),
        Some(PathBuf::from("/nonexistent/firecracker")),
    );
    test_state_full(tmp, vmms, devices.clone())
}

/// A VM id that makes a device-mapper name (`banger-` + hex).
fn dm_name_of(vm: &VmRecord) -> String {
    crate::disks::dm::device_name(&vm.id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_root_disk_is_made_at_start_and_removed_at_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let devices = FakeDevices::new(tmp.path(), false);
    let state = world(tmp.path(), &fake, &devices);
    let vm = dm_vm(&state, "dm");

    state.vms.start("dm", &OpCtx::background()).await.unwrap();
    let attached = devices.attached.lock().unwrap().clone();
    assert_eq!(attached.len(), 1);
    let dm = &attached[0];
    assert_eq!(dm.name, dm_name_of(&vm));
    assert_eq!(
        dm.cow.file,
        vm_dir(&state.vms, &vm.id).join(crate::disks::dm::COW_FILE)
    );
    assert_eq!(
        dm.origin.file,
        state.config.layout.data_dir.join("images/i/rootfs.ext4")
    );
    // The VMM's root drive is the snapshot device, not the store.
    assert_eq!(
        *fake.launched_roots.lock().unwrap(),
        vec![dm.device.clone()]
    );
    let handles = state.vms.handles(&vm.id).unwrap();
    assert_eq!(handles.dm.as_ref(), Some(dm), "kept in the handles");
    let on_disk = load_handles(&vm_dir(&state.vms, &vm.id)).unwrap();
    assert_eq!(on_disk.dm.as_ref(), Some(dm), "and in handles.json");
    assert!(devices.detached().is_empty());

    state.vms.stop("dm", &OpCtx::background()).await.unwrap();
    assert_eq!(devices.detached(), vec![dm.name.clone()]);
    assert_eq!(state.vms.find("dm").await.unwrap().state, VmState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_after_the_dm_root_disk_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm {
        fail_launch: true,
        ..Default::default()
    });
    let devices = FakeDevices::new(tmp.path(), false);
    let state = world(tmp.path(), &fake, &devices);
    let vm = dm_vm(&state, "dm");
    let err = state
        .vms
        .start("dm", &OpCtx::background())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fake launch failure"), "{err}");
    assert_eq!(devices.detached(), vec![dm_name_of(&vm)], "rolled back");
    assert_eq!(state.vms.find("dm").await.unwrap().state, VmState::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_root_disk_that_cannot_be_made_fails_the_start_before_launch() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let devices = FakeDevices::new(tmp.path(), true);
    let state = world(tmp.path(), &fake, &devices);
    dm_vm(&state, "dm");
    let err = state
        .vms
        .start("dm", &OpCtx::background())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("create the device-mapper snapshot"), "{err}");
    assert!(fake.launched.lock().unwrap().is_empty(), "never launched");
    assert!(devices.detached().is_empty(), "nothing was made");
    assert_eq!(state.vms.find("dm").await.unwrap().state, VmState::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_dies_gives_back_its_dm_root_disk_with_or_without_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let devices = FakeDevices::new(tmp.path(), false);
    let state = world(tmp.path(), &fake, &devices);

    // Under the daemon: its watcher sees the exit.
    let vm = dm_vm(&state, "crashy");
    let crashy = vm.clone();
    state
        .vms
        .start("crashy", &OpCtx::background())
        .await
        .unwrap();
    let pid = state.vms.handles(&vm.id).unwrap().vmm.pid;
    fake.exits
        .lock()
        .unwrap()
        .insert(pid, banger_vmm::VmmExit::Signal(9));
    fake.alive.lock().unwrap().remove(&pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while devices.detached().is_empty() {
        assert!(std::time::Instant::now() < deadline, "not detached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(devices.detached(), vec![dm_name_of(&vm)]);
    let after = state.vms.find("crashy").await.unwrap();
    assert_eq!(after.state, VmState::Stopped);
    assert!(after.last_error.unwrap().contains("signal 9"));

    // While no daemon ran: the next one's reconcile finds it dead.
    let mut vm = dm_vm(&state, "orphan");
    let dir = vm_dir(&state.vms, &vm.id);
    let attachment = devices.attached.lock().unwrap()[0].clone();
    let dm = DmAttachment {
        name: dm_name_of(&vm),
        ..attachment
    };
    let mut left = crate::testing::handles(4_242, &dir);
    left.dm = Some(dm.clone());
    save_handles(&dir, &left).unwrap();
    vm.state = VmState::Running;
    state.lock_store_for_tests().update_vm(&vm).unwrap();
    state.vms.reconcile().await.unwrap();
    assert_eq!(
        devices.detached(),
        vec![dm_name_of(&crashy), dm.name.clone()]
    );
    let after = state.vms.find("orphan").await.unwrap();
    assert_eq!(after.state, VmState::Stopped);
    assert!(
        after
            .last_error
            .unwrap()
            .contains("exited while no daemon was running")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_of_a_dm_root_disk_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let devices = FakeDevices::new(tmp.path(), false);
    let state = world(tmp.path(), &fake, &devices);
    dm_vm(&state, "dm");
    let err = state
        .vms
        .promote(
            &banger_proto::vm::ImagePromoteParams {
                vm: "dm".into(),
                name: "mine".into(),
                with_work: false,
            },
            &OpCtx::background(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, VmError::PromoteDmSnapshot(ref n) if n == "dm"),
        "{err}"
    );
    assert!(err.to_string().contains("device-mapper snapshot"), "{err}");
}
