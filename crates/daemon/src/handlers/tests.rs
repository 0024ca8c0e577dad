//! VM creates through the RPC edge, against a fake VMM: conflicts known up
//! front fail before anything is made, with the conflict code kept on the
//! operation.

use std::sync::Arc;

use banger_store::VmState;

use crate::DaemonState;
use crate::testing::{FakeVmm, free_port, real_work_seed, seed, test_state_with, vm_dirs};

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
    assert!(state.vms.reserves_nothing(), "nothing stays reserved");
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

/// `vm.start.begin` runs the start as an operation whose stages a client
/// can follow (here up to a launch that fails, which the operation keeps);
/// an unknown VM is `not_found` at once, with no operation.
#[tokio::test]
async fn a_start_is_an_operation_with_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm {
        fail_launch: true,
        ..Default::default()
    });
    let state = test_state_with(tmp.path(), fake);
    seed(&state, "dev", VmState::Stopped);
    let begin = |name: &str, op: &str| {
        format!(
            r#"{{"version":1,"method":"vm.start.begin","op_id":"{op}","params":{{"name":"{name}"}}}}"#
        )
    };
    let missing = request(&state, begin("nope", "op-start-a"))
        .await
        .into_result();
    assert_eq!(missing.unwrap_err().code, banger_proto::ErrorCode::NotFound);
    assert!(state.ops.get("op-start-a").is_err(), "no operation for it");

    let begun = request(&state, begin("dev", "op-start-b"))
        .await
        .into_result()
        .unwrap();
    assert_eq!(begun["kind"], "vm.start");
    assert_eq!(begun["target"], "dev");
    let op = state.ops.get("op-start-b").unwrap();
    op.wait().await;
    let view = op.view();
    let stages: Vec<&str> = view.stages.iter().map(|s| s.name.as_str()).collect();
    assert!(stages.contains(&"check artifacts"), "{view:?}");
    assert!(
        view.stages.iter().all(|s| s.duration_ms.is_some()),
        "{view:?}"
    );
}

/// A tmpfs of `size` mounted on `dir` for as long as it lives; `None`
/// where mounting is not allowed (not root).
struct TinyFs(std::path::PathBuf);

impl TinyFs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_owned()))
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_create_whose_disks_do_not_fit_says_so_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(FakeVmm::default()));
    seed(&state, "other", VmState::Stopped);
    real_work_seed(&state);
    let vms_dir = state.config.layout.data_dir.join("vms");
    let Some(_fs) = TinyFs::mount(&vms_dir, "128k") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let begun = request(
        &state,
        r#"{"version":1,"method":"vm.create.begin","params":{"name":"big","network":"user","start":false}}"#
            .to_owned(),
    )
    .await
    .into_result()
    .unwrap();
    let failed = op_outcome(&state, begun["op_id"].as_str().unwrap())
        .await
        .expect("the create fails");
    assert_eq!(failed.code, banger_proto::ErrorCode::OperationFailed);
    assert!(
        failed
            .message
            .contains("not enough free space for the vm's disks in"),
        "{failed:?}"
    );
    assert!(failed.message.contains("nothing was kept"), "{failed:?}");
    assert!(vm_dirs(&state).is_empty(), "no directory left");
    let names: Vec<String> = state
        .db
        .call(|s| s.vms())
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["other".to_owned()], "no row for it");
    assert!(state.vms.reserves_nothing());
}
