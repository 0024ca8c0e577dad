//! Faults against a fake VMM (the `Vmm` seam): a VMM that exits on its
//! own, deletes and creates cut short by a crash. The real QEMU path is
//! covered end to end by `crates/banger/tests/faults_e2e.rs`.

use std::sync::Arc;
use std::time::Duration;

use banger_store::VmState;

use super::*;
use crate::op::OpCtx;
use crate::testing::{FakeVmm, handles, seed, test_state_with};

/// Waits (bounded) until the VM's record satisfies `done`. The bound is
/// generous: how fast an exit is noticed is measured against real QEMU in
/// crates/banger/tests/faults_e2e.rs, not on a loaded test machine here.
async fn wait_for_record(
    state: &Arc<crate::DaemonState>,
    name: &str,
    limit: Duration,
    done: impl Fn(&banger_store::VmRecord) -> bool,
) -> banger_store::VmRecord {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let vm = state.vms.find(name).await.unwrap();
        if done(&vm) {
            return vm;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within {limit:?}: {vm:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An adopted VM (reconcile starts its watcher) whose VMM is seen alive.
async fn adopted(
    state: &Arc<crate::DaemonState>,
    fake: &FakeVmm,
    name: &str,
    pid: u32,
) -> banger_store::VmRecord {
    let vm = seed(state, name, VmState::Running);
    let dir = vm_dir(&state.vms, &vm.id);
    save_handles(&dir, &handles(pid, &dir)).unwrap();
    fake.alive.lock().unwrap().insert(pid);
    state.vms.reconcile().await.unwrap();
    assert!(state.vms.handles(&vm.id).is_some(), "adopted");
    vm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_dies_on_its_own_is_noticed_and_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let vm = adopted(&state, &fake, "crashy", 311).await;
    let dir = vm_dir(&state.vms, &vm.id);

    fake.exits
        .lock()
        .unwrap()
        .insert(311, banger_vmm::VmmExit::Signal(9));
    fake.alive.lock().unwrap().remove(&311);
    let after = wait_for_record(&state, "crashy", Duration::from_secs(10), |v| {
        v.state != VmState::Running
    })
    .await;
    // Stopped, as reconcile leaves a VMM found dead; the crash is named.
    assert_eq!(after.state, VmState::Stopped);
    let err = after.last_error.unwrap();
    assert!(err.contains("qemu exited on its own (signal 9)"), "{err}");
    assert!(
        err.contains(&console_log(&dir).display().to_string()),
        "{err}"
    );
    assert!(state.vms.handles(&vm.id).is_none(), "handles dropped");
    assert!(!dir.join("handles.json").exists(), "handles file removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_poweroff_leaves_the_vm_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let vm = adopted(&state, &fake, "polite", 312).await;
    fake.exits
        .lock()
        .unwrap()
        .insert(312, banger_vmm::VmmExit::Code(0));
    fake.alive.lock().unwrap().remove(&312);
    let after = wait_for_record(&state, "polite", Duration::from_secs(10), |v| {
        v.state != VmState::Running
    })
    .await;
    assert_eq!(after.state, VmState::Stopped);
    assert!(after.last_error.unwrap().contains("powered off"));
    assert!(state.vms.handles(&vm.id).is_none());

    // Adopted after a restart, the status is not known: the console's
    // last line tells a power-off from a crash.
    let vm = adopted(&state, &fake, "unknown", 313).await;
    std::fs::write(
        console_log(&vm_dir(&state.vms, &vm.id)),
        "[  9.1] reboot: Power down\n",
    )
    .unwrap();
    fake.alive.lock().unwrap().remove(&313);
    let after = wait_for_record(&state, "unknown", Duration::from_secs(10), |v| {
        v.state != VmState::Running
    })
    .await;
    assert_eq!(after.state, VmState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_process_exit_is_seen_through_its_pidfd() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id();
    let vm = adopted(&state, &fake, "real", pid).await;
    // The fake still calls it running: only the pidfd can tell.
    child.kill().unwrap();
    child.wait().unwrap();
    let after = wait_for_record(&state, "real", Duration::from_secs(10), |v| {
        v.state != VmState::Running
    })
    .await;
    assert_eq!(after.state, VmState::Stopped);
    let err = after.last_error.unwrap();
    assert!(err.contains("exit status unknown"), "{err}");
    assert!(state.vms.handles(&vm.id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_the_daemon_asked_for_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let vm = adopted(&state, &fake, "asked", 314).await;
    let handle = state.vms.handles(&vm.id).unwrap().vmm;
    let stopped = state.vms.stop("asked", &OpCtx::background()).await.unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    // What the watcher does once it gets the lock after the stop.
    watch::exited(&state.vms, &vm.id, &handle).await;
    let after = state.vms.find("asked").await.unwrap();
    assert_eq!(after.state, VmState::Stopped);
    assert_eq!(after.last_error, None, "a requested stop is no error");
}

#[tokio::test]
async fn reconcile_finishes_deletes_and_removes_orphan_vm_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let kept = seed(&state, "kept", VmState::Stopped);
    let doomed = seed(&state, "doomed", VmState::Stopped);
    let vms_dir = state.config.layout.data_dir.join("vms");
    // A delete cut after its rename: the row is still there.
    std::fs::rename(
        vm_dir(&state.vms, &doomed.id),
        deleting_dir(&state.vms, &doomed.id),
    )
    .unwrap();
    // A delete cut after its row went.
    std::fs::create_dir_all(deleting_dir(&state.vms, "0123456789ab").join("x")).unwrap();
    // A create cut between its disks and its row.
    std::fs::create_dir_all(vms_dir.join("abcdef012345")).unwrap();
    std::fs::write(vms_dir.join("abcdef012345/work.ext4"), b"x").unwrap();
    // Not a VM directory's name: left alone.
    std::fs::create_dir_all(vms_dir.join("notes")).unwrap();

    state.vms.reconcile().await.unwrap();

    assert!(matches!(
        state.vms.find("doomed").await,
        Err(banger_store::StoreError::NotFound { .. })
    ));
    assert_eq!(state.vms.find("kept").await.unwrap().id, kept.id);
    assert_eq!(
        crate::testing::vm_dirs(&state),
        vec![kept.id.clone(), "notes".to_owned()]
    );
}

#[tokio::test]
async fn a_delete_marks_the_directory_then_removes_row_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let vm = seed(&state, "gone", VmState::Stopped);
    state
        .vms
        .delete("gone", false, &OpCtx::background())
        .await
        .unwrap();
    assert!(!vm_dir(&state.vms, &vm.id).exists());
    assert!(!deleting_dir(&state.vms, &vm.id).exists());
    assert!(crate::testing::vm_dirs(&state).is_empty());
    assert!(state.vms.find("gone").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_vm_whose_vmm_dies_gives_back_its_tap_and_published_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let port = crate::testing::free_port();
    let mut vm = seed(&state, "bridged", VmState::Running);
    vm.network_mode = banger_proto::NetworkMode::Bridged;
    vm.published_ports = vec![format!("{port}:80").parse().unwrap()];
    state.lock_store_for_tests().update_vm(&vm).unwrap();
    let dir = vm_dir(&state.vms, &vm.id);
    let mut h = handles(315, &dir);
    h.bridged = Some(BridgedHandles {
        tap: "bgtap9".into(),
        ip: "10.77.0.9".parse().unwrap(),
    });
    save_handles(&dir, &h).unwrap();
    fake.alive.lock().unwrap().insert(315);
    // Adopted: its proxy listens again, its TAP is held.
    state.vms.reconcile().await.unwrap();
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    let held: Vec<String> = state.vms.held_taps().into_iter().map(|h| h.tap).collect();
    assert_eq!(held, vec!["bgtap9".to_owned()]);

    fake.alive.lock().unwrap().remove(&315);
    let after = wait_for_record(&state, "bridged", Duration::from_secs(10), |v| {
        v.state != VmState::Running
    })
    .await;
    assert_eq!(after.state, VmState::Stopped);
    assert!(
        state.vms.held_taps().is_empty(),
        "the TAP is no longer held"
    );
    let (idle, in_use) = state.network.taps();
    assert!(
        idle.contains(&"bgtap9".to_owned()) && !in_use.contains(&"bgtap9".to_owned()),
        "back in the pool: idle {idle:?}, in use {in_use:?}"
    );
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the published port is free");
}
