//! Reconcile and start rollback against a fake VMM (the `Vmm` seam), with
//! a real store and real files. The real QEMU path is covered end to end
//! by `crates/banger/tests/vm_e2e.rs`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_store::{ImageRecord, KernelRecord, VmRecord, VmState};
use banger_vmm::{BackendKind, Signal, VmHandle, VmRunState, VmSpec, Vmm, VmmError};

use super::*;
use crate::DaemonState;
use crate::dispatch::tests::test_state_with;
use crate::op::OpCtx;

/// Launch fails or succeeds on demand; "running" is a set of pids.
#[derive(Debug, Default)]
struct FakeVmm {
    alive: Mutex<HashSet<u32>>,
    fail_launch: bool,
    launched: Mutex<Vec<String>>,
    /// A powerdown takes this long (the guest shutting down).
    shutdown_takes: Duration,
    /// Notified when a powerdown request arrives.
    shutdown_asked: tokio::sync::Notify,
}

impl Vmm for FakeVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }
    fn launch(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        self.launched.lock().unwrap().push(spec.vm_id.clone());
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
}

/// A kernel, an image and a VM whose files exist, in `state`.
fn seed(state: &Arc<DaemonState>, name: &str, vm_state: VmState) -> VmRecord {
    let root = state.config.layout.data_dir.clone();
    let file = |p: PathBuf| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
        p
    };
    let kernel = KernelRecord {
        id: "k1".into(),
        name: "debian-cloud".into(),
        source: "test".into(),
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
        backend: Some(banger_proto::Backend::Qemu),
        disk_strategy: Some(banger_proto::DiskStrategy::Qcow2),
        published_ports: vec![],
        state: vm_state,
        last_error: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    store.insert_vm(&vm).unwrap();
    let dir = vm_dir(&state.vms, &vm.id);
    file(dir.join("root.qcow2"));
    file(work_disk(&dir));
    vm
}

fn handles(pid: u32, dir: &std::path::Path) -> Handles {
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
    }
}

#[test]
fn handles_written_before_bridged_networking_still_load() {
    let old = r#"{"vmm":{"pid":7,"control_socket":"/x/qmp.sock","backend":"qemu"},"ssh_port":2222,"accel":"tcg"}"#;
    let h: Handles = serde_json::from_str(old).unwrap();
    assert_eq!(h, handles(7, std::path::Path::new("/x")));
    let bridged = Handles {
        ssh_port: 22,
        ssh_host: "10.77.0.2".into(),
        bridged: Some(super::BridgedHandles {
            tap: "bgtap0".into(),
            ip: "10.77.0.2".parse().unwrap(),
        }),
        ..h
    };
    let text = serde_json::to_string(&bridged).unwrap();
    assert_eq!(serde_json::from_str::<Handles>(&text).unwrap(), bridged);
}

#[tokio::test]
async fn reconcile_adopts_live_vmms_and_demotes_dead_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let live = seed(&state, "live", VmState::Running);
    let dead = seed(&state, "dead", VmState::Running);
    seed(&state, "half", VmState::Creating);
    let live_dir = vm_dir(&state.vms, &live.id);
    let dead_dir = vm_dir(&state.vms, &dead.id);
    save_handles(&live_dir, &handles(111, &live_dir)).unwrap();
    save_handles(&dead_dir, &handles(222, &dead_dir)).unwrap();
    fake.alive.lock().unwrap().insert(111);

    state.vms.reconcile().await.unwrap();

    assert_eq!(
        state.vms.find("live").await.unwrap().state,
        VmState::Running
    );
    assert_eq!(state.vms.handles(&live.id).unwrap().vmm.pid, 111);
    let dead = state.vms.find("dead").await.unwrap();
    assert_eq!(dead.state, VmState::Stopped);
    assert!(state.vms.handles(&dead.id).is_none());
    assert!(!dead_dir.join("handles.json").exists(), "leftovers removed");
    let half = state.vms.find("half").await.unwrap();
    assert_eq!(half.state, VmState::Error);
    assert!(half.last_error.unwrap().contains("daemon stopped"));
}

#[tokio::test]
async fn a_failed_launch_rolls_back_and_records_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm {
        fail_launch: true,
        ..Default::default()
    });
    let state = test_state_with(tmp.path(), fake.clone());
    let vm = seed(&state, "boom", VmState::Stopped);
    let err = state
        .vms
        .start("boom", &OpCtx::background())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("fake launch failure"), "{}", err);
    assert!(err.contains("console.log"), "names the console log");
    let after = state.vms.find("boom").await.unwrap();
    assert_eq!(after.state, VmState::Error);
    assert!(after.last_error.unwrap().contains("fake launch failure"));
    assert!(!vm_dir(&state.vms, &vm.id).join("handles.json").exists());
    assert!(state.vms.handles(&vm.id).is_none());
    assert_eq!(*fake.launched.lock().unwrap(), vec![vm.id.clone()]);
}

#[tokio::test]
async fn a_missing_kernel_file_fails_before_launch() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    seed(&state, "nokernel", VmState::Stopped);
    std::fs::remove_file(state.config.layout.data_dir.join("kernels/k/vmlinuz")).unwrap();
    let err = state
        .vms
        .start("nokernel", &OpCtx::background())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kernel file"), "{}", err);
    assert!(
        !err.contains("console.log"),
        "names no console log the vmm never wrote: {err}"
    );
    assert!(fake.launched.lock().unwrap().is_empty(), "nothing launched");
}

/// Makes the seeded image's work seed a real (tiny) ext4, so creates can
/// clone and grow it.
fn real_work_seed(state: &Arc<DaemonState>) {
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
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn vm_dirs(state: &Arc<DaemonState>) -> Vec<String> {
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

async fn request(state: &Arc<DaemonState>, line: String) -> banger_proto::Response {
    crate::dispatch::dispatch(state, line.as_bytes()).await
}

/// Waits for the operation `op_id` to end; its error, if it failed.
async fn op_outcome(state: &Arc<DaemonState>, op_id: &str) -> Option<banger_proto::ErrorBody> {
    let op = state.ops.get(op_id).unwrap();
    op.wait().await;
    state.ops.error_of(&op.id)
}

#[tokio::test]
async fn stop_by_id_and_start_by_name_take_one_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm {
        fail_launch: true,
        shutdown_takes: Duration::from_millis(300),
        ..Default::default()
    });
    let state = test_state_with(tmp.path(), fake.clone());
    let vm = seed(&state, "one", VmState::Running);
    let dir = vm_dir(&state.vms, &vm.id);
    state.vms.table.set_handles(&vm.id, handles(77, &dir));
    fake.alive.lock().unwrap().insert(77);

    let stopping = tokio::spawn({
        let (state, id) = (Arc::clone(&state), vm.id.clone());
        async move { state.vms.stop(&id, &OpCtx::background()).await }
    });
    // The stop holds the VM's lock from here until the guest is down.
    fake.shutdown_asked.notified().await;
    let started = state.vms.start("one", &OpCtx::background()).await;
    let stopped = stopping.await.unwrap().unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    // The start waited for the stop and saw its result (a stopped VM), so
    // it launched a new VMM (which fails here) instead of finding the old
    // one still running.
    let err = started
        .expect_err("the start ran after the stop")
        .to_string();
    assert!(err.contains("fake launch failure"), "{err}");
    assert_eq!(*fake.launched.lock().unwrap(), vec![vm.id.clone()]);
}

#[tokio::test]
async fn two_creates_of_one_name_at_once_one_wins_and_the_loser_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(FakeVmm::default()));
    seed(&state, "other", VmState::Stopped);
    real_work_seed(&state);
    let before = vm_dirs(&state);
    let port = free_port();
    let create = |op: &str| {
        format!(
            r#"{{"version":1,"method":"vm.create.begin","op_id":"{op}","params":{{"name":"same","network":"user","start":false,"publish":["{port}:80"]}}}}"#
        )
    };
    let (a, b) = tokio::join!(
        request(&state, create("op-create-a")),
        request(&state, create("op-create-b"))
    );
    let (won, lost) = match (a.into_result(), b.into_result()) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected one winner and one conflict, got {other:?}"),
    };
    assert_eq!(lost.code, banger_proto::ErrorCode::Conflict, "{lost:?}");
    assert!(lost.message.contains("already exists"), "{lost:?}");
    let op_id = won["op_id"].as_str().unwrap();
    assert_eq!(op_outcome(&state, op_id).await, None, "the winner succeeds");
    let vms = state.db.call(|s| s.vms()).await.unwrap();
    assert_eq!(vms.iter().filter(|v| v.name == "same").count(), 1);
    let winner = vms.iter().find(|v| v.name == "same").unwrap();
    let mut expected = before.clone();
    expected.push(winner.id.clone());
    expected.sort();
    assert_eq!(vm_dirs(&state), expected, "no directory of the loser");
    // Its reservations ended with it: the name is now taken by the store,
    // the port is free for a VM of another name.
    let again = request(&state, create("op-create-c")).await.into_result();
    assert!(again.unwrap_err().message.contains("already exists"));
    assert!(state.vms.reservations.is_empty(), "nothing stays reserved");
}

#[tokio::test]
async fn a_port_another_vm_publishes_fails_the_create_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(FakeVmm::default()));
    let holder = seed(&state, "holder", VmState::Running);
    let port = free_port();
    {
        let mut record = holder.clone();
        record.published_ports = vec![format!("{port}:80").parse().unwrap()];
        state.lock_store_for_tests().update_vm(&record).unwrap();
    }
    real_work_seed(&state);
    let before = vm_dirs(&state);
    let begun = request(
        &state,
        format!(
            r#"{{"version":1,"method":"vm.create.begin","params":{{"name":"second","network":"user","publish":["{port}:8080"]}}}}"#
        ),
    )
    .await
    .into_result()
    .unwrap();
    let failed = op_outcome(&state, begun["op_id"].as_str().unwrap())
        .await
        .expect("the create fails");
    assert_eq!(failed.code, banger_proto::ErrorCode::Conflict, "{failed:?}");
    assert!(
        failed.message.contains(&format!(
            "host port {port}/tcp is already published by vm holder"
        )),
        "{failed:?}"
    );
    assert_eq!(vm_dirs(&state), before, "no disk or directory was made");
    let names: Vec<String> = state
        .db
        .call(|s| s.vms())
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["holder".to_owned()]);
}

#[tokio::test]
async fn a_port_something_else_listens_on_fails_the_create_with_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(FakeVmm::default()));
    seed(&state, "other", VmState::Stopped);
    real_work_seed(&state);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let before = vm_dirs(&state);
    let begun = request(
        &state,
        format!(
            r#"{{"version":1,"method":"vm.create.begin","params":{{"name":"third","network":"user","publish":["{port}:80"]}}}}"#
        ),
    )
    .await
    .into_result()
    .unwrap();
    let failed = op_outcome(&state, begun["op_id"].as_str().unwrap())
        .await
        .expect("the create fails");
    assert_eq!(failed.code, banger_proto::ErrorCode::Conflict, "{failed:?}");
    assert!(
        failed
            .message
            .contains(&format!("host port {port}/tcp is already in use")),
        "{failed:?}"
    );
    assert_eq!(vm_dirs(&state), before, "nothing was made");
}
