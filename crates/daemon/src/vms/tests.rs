//! Reconcile and start rollback against a fake VMM (the `Vmm` seam), with
//! a real store and real files. The real QEMU path is covered end to end
//! by `crates/banger/tests/vm_e2e.rs`.

use std::sync::Arc;
use std::time::Duration;

use banger_store::VmState;

use super::*;
use crate::op::OpCtx;
use crate::testing::{FakeVmm, handles, seed, test_state_with};

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
        ram_file: Some("/dev/shm/banger-0-ram-0/x.mem".into()),
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

#[tokio::test]
async fn a_start_waits_for_what_the_vm_recorded() {
    use banger_proto::WaitFor;
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    // The seeded image has no agent and boots its own init: by default a
    // start waits for SSH (which never answers here, up to the boot
    // timeout). A VM that waits for nothing, or for an agent it lacks,
    // is running as soon as its VMM is.
    for (name, wait) in [("quiet", WaitFor::None), ("agentless", WaitFor::Agent)] {
        let mut vm = seed(&state, name, VmState::Stopped);
        vm.wait_for = Some(wait);
        let record = vm.clone();
        state.lock_store_for_tests().update_vm(&record).unwrap();
        let started = tokio::time::timeout(
            Duration::from_secs(20),
            state.vms.start(name, &OpCtx::background()),
        )
        .await
        .expect("the start waited for the guest")
        .unwrap();
        assert_eq!(started.state, VmState::Running);
        let view = state.vms.view(&started).await.unwrap();
        assert_eq!(view.wait_for, wait);
        assert!(!view.agent, "no agent to reach");
        assert!(view.pid.is_some());
    }
    assert_eq!(fake.launched.lock().unwrap().len(), 2);
    // A VM made before waits were recorded shows its image's default.
    let old = seed(&state, "old", VmState::Stopped);
    assert_eq!(old.wait_for, None);
    let view = state.vms.view(&old).await.unwrap();
    assert_eq!(view.wait_for, WaitFor::Ssh);
}

#[test]
fn a_wait_the_image_cannot_give_is_refused() {
    use banger_proto::WaitFor;
    let image = |has_agent: bool, pulled: bool| banger_store::ImageRecord {
        id: "i".into(),
        name: "img".into(),
        source: "test".into(),
        rootfs_path: "/r".into(),
        work_seed_path: None,
        fingerprint: None,
        size_bytes: 1,
        managed: false,
        created_at_ms: 0,
        has_agent,
        recipe: None,
        replaced_by: None,
        origin: Default::default(),
        config: pulled.then(Default::default),
    };
    let check = create::check_wait;
    // Defaults: the agent for an image booting banger's init, else SSH.
    assert_eq!(check(None, &image(true, true)).unwrap(), WaitFor::Agent);
    assert_eq!(check(None, &image(true, false)).unwrap(), WaitFor::Ssh);
    assert_eq!(check(None, &image(false, false)).unwrap(), WaitFor::Ssh);
    for img in [image(true, true), image(true, false), image(false, false)] {
        assert_eq!(check(Some(WaitFor::None), &img).unwrap(), WaitFor::None);
    }
    let e = check(Some(WaitFor::Agent), &image(false, false)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "image img has no guest agent to wait for: use --wait ssh or --wait none"
    );
    assert_eq!(
        crate::dispatch::errors::vm_code(&e),
        banger_proto::ErrorCode::BadParams
    );
    let e = check(Some(WaitFor::Ssh), &image(true, true)).unwrap_err();
    assert!(e.to_string().contains("runs no SSH server"), "{e}");
    assert_eq!(
        check(Some(WaitFor::Agent), &image(true, false)).unwrap(),
        WaitFor::Agent
    );
}

#[test]
fn images_without_an_init_boot_with_the_agent_as_init() {
    let own = lifecycle::cmdline("dev", "banger.ip=10.0.2.15/24", false);
    assert!(!own.contains("init="), "{own}");
    let pulled = lifecycle::cmdline("dev", "banger.ip=10.0.2.15/24", true);
    assert!(pulled.ends_with(" init=/.banger/init"), "{pulled}");
    assert!(pulled.contains("banger.hostname=dev banger.ip=10.0.2.15/24"));
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
async fn a_running_vm_is_deleted_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let vm = seed(&state, "busy", VmState::Running);
    let dir = vm_dir(&state.vms, &vm.id);
    state.vms.table.set_handles(&vm.id, handles(88, &dir));
    fake.alive.lock().unwrap().insert(88);

    let e = state
        .vms
        .delete("busy", false, &OpCtx::background())
        .await
        .unwrap_err();
    assert!(
        matches!(e, VmError::DeleteRunning(ref n) if n == "busy"),
        "{e}"
    );
    assert_eq!(
        crate::dispatch::errors::vm_code(&e),
        banger_proto::ErrorCode::Conflict
    );
    let text = e.to_string();
    assert!(text.contains("busy") && text.contains("--force"), "{text}");
    assert!(fake.alive.lock().unwrap().contains(&88), "not killed");
    assert!(dir.exists(), "nothing removed");
    state.vms.find("busy").await.unwrap();

    let deleted = state
        .vms
        .delete("busy", true, &OpCtx::background())
        .await
        .unwrap();
    assert_eq!(deleted.id, vm.id);
    assert!(!fake.alive.lock().unwrap().contains(&88), "killed");
    assert!(!dir.exists());
    assert!(state.vms.find("busy").await.is_err());

    // A stopped VM needs no force.
    seed(&state, "idle", VmState::Stopped);
    state
        .vms
        .delete("idle", false, &OpCtx::background())
        .await
        .unwrap();
}

#[tokio::test]
async fn edit_replaces_and_clears_published_ports_with_creates_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    seed(&state, "web", VmState::Stopped);
    let edit = |publish: &[&str]| banger_proto::vm::VmEditParams {
        name: "web".into(),
        publish: Some(publish.iter().map(|p| p.parse().unwrap()).collect()),
        ..Default::default()
    };
    // A free port: bound, then released, so nothing listens on it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let free_udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = format!("{free}:80");
    let udp_spec = format!("{free_udp}:53/udp");
    let vm = state.vms.edit(&edit(&[&spec, &udp_spec])).await.unwrap();
    assert_eq!(
        vm.published_ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![spec.clone(), udp_spec.clone()]
    );
    assert_eq!(
        state.vms.find("web").await.unwrap().published_ports,
        vm.published_ports,
        "stored"
    );

    // Twice: refused as bad params, nothing changed.
    let e = state.vms.edit(&edit(&[&spec, &spec])).await.unwrap_err();
    assert!(matches!(e, VmError::PublishedTwice(p) if p == free), "{e}");

    // Held by another running VM: a conflict.
    let other = seed(&state, "other", VmState::Running);
    let mut o = other.clone();
    o.published_ports = vec!["8181:80".parse().unwrap()];
    state.lock_store_for_tests().update_vm(&o).unwrap();
    let e = state.vms.edit(&edit(&["8181:80"])).await.unwrap_err();
    assert_eq!(
        crate::dispatch::errors::vm_code(&e),
        banger_proto::ErrorCode::Conflict,
        "{e}"
    );
    assert!(e.to_string().contains("other"), "names the holder: {e}");

    // Something listening on the host: a conflict too.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("{}:80", busy.local_addr().unwrap().port());
    let e = state.vms.edit(&edit(&[&taken])).await.unwrap_err();
    assert_eq!(
        crate::dispatch::errors::vm_code(&e),
        banger_proto::ErrorCode::Conflict,
        "{e}"
    );

    // Not while running.
    let dir = vm_dir(&state.vms, "id-web");
    state.vms.table.set_handles("id-web", handles(99, &dir));
    fake.alive.lock().unwrap().insert(99);
    let e = state.vms.edit(&edit(&[])).await.unwrap_err();
    assert!(matches!(e, VmError::Running(_)), "{e}");
    fake.alive.lock().unwrap().remove(&99);

    // An empty set clears them.
    let vm = state.vms.edit(&edit(&[])).await.unwrap();
    assert!(vm.published_ports.is_empty());
    assert!(
        state
            .vms
            .find("web")
            .await
            .unwrap()
            .published_ports
            .is_empty()
    );
}

#[tokio::test]
async fn edit_changes_the_egress_policy_and_show_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(FakeVmm::default()));
    let vm = seed(&state, "quiet", VmState::Stopped);
    assert_eq!(vm.egress, banger_proto::Egress::Internet);
    // A user-mode vm: an allow list needs bridged mode, and says so.
    let allow: banger_proto::Egress = "allow=example.com,10.1.0.0/16".parse().unwrap();
    let err = state
        .vms
        .edit(&banger_proto::vm::VmEditParams {
            name: "quiet".into(),
            egress: Some(allow),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::EgressNeedsBridged { .. }), "{err}");
    assert!(err.to_string().contains("--network bridged"), "{err}");
    let policy = banger_proto::Egress::None;
    let edited = state
        .vms
        .edit(&banger_proto::vm::VmEditParams {
            name: "quiet".into(),
            egress: Some(policy.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(edited.egress, policy);
    let found = state.vms.find("quiet").await.unwrap();
    assert_eq!(state.vms.view(&found).await.unwrap().egress, policy);
}

/// `image.promote`: a stopped VM's qcow2 root disk becomes a raw root
/// disk of a new image (origin promoted), its work disk the seed with
/// `with_work`; a running VM, a taken name and a failed copy are refused
/// and leave nothing.
#[tokio::test]
async fn promote_copies_a_stopped_vms_disks_into_a_new_image() {
    if !crate::disks::has_qemu_img() {
        eprintln!("skipping: qemu-img is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeVmm::default());
    let state = test_state_with(tmp.path(), fake.clone());
    let vm = seed(&state, "dev", VmState::Stopped);
    let dir = vm_dir(&state.vms, &vm.id);
    // A real qcow2 over a raw base holding a marker; a work disk with another.
    let base = tmp.path().join("base.raw");
    let mut raw = vec![0u8; 1 << 20];
    raw[..12].copy_from_slice(b"root-marker\n");
    std::fs::write(&base, &raw).unwrap();
    let root = dir.join("root.qcow2");
    std::fs::remove_file(&root).unwrap();
    crate::disks::make_overlay(&base, banger_vmm::DiskFormat::Raw, &root).unwrap();
    std::fs::write(work_disk(&dir), b"work-marker\n").unwrap();

    let ctx = OpCtx::background();
    let params = |name: &str, with_work: bool| banger_proto::vm::ImagePromoteParams {
        vm: "dev".into(),
        name: name.into(),
        with_work,
    };
    let image = state
        .vms
        .promote(&params("dev-base", true), &ctx)
        .await
        .unwrap();
    assert_eq!(
        image.origin,
        banger_proto::vm::ImageOrigin::Promoted { vm: "dev".into() }
    );
    assert_eq!(image.source, "vm:dev");
    assert_eq!(std::fs::read(&image.rootfs_path).unwrap(), raw);
    assert_eq!(
        std::fs::read(image.work_seed_path.as_ref().unwrap()).unwrap(),
        b"work-marker\n"
    );
    let view = state.artifacts.image("dev-base").await.unwrap();
    assert_eq!(view.origin.kind(), "promoted");

    // Without --with-work: the VM's image's seed (the seeded "x").
    let plain = state
        .vms
        .promote(&params("plain", false), &ctx)
        .await
        .unwrap();
    assert_eq!(std::fs::read(plain.work_seed_path.unwrap()).unwrap(), b"x");

    // A taken name: a conflict, nothing new.
    let err = state
        .vms
        .promote(&params("dev-base", false), &ctx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    // A VM that is not stopped is refused.
    seed(&state, "busy", VmState::Running);
    let busy = banger_proto::vm::ImagePromoteParams {
        vm: "busy".into(),
        name: "nope".into(),
        with_work: false,
    };
    let err = state.vms.promote(&busy, &ctx).await.unwrap_err();
    assert!(matches!(err, VmError::PromoteNotStopped(_)), "{err:?}");

    // A copy that fails leaves no row and no directory.
    std::fs::remove_file(&base).unwrap();
    let err = state
        .vms
        .promote(&params("broken", false), &ctx)
        .await
        .unwrap_err();
    let text = crate::error::chain(&err);
    assert!(
        text.starts_with("promote to image broken: qemu-img convert failed: "),
        "{text}"
    );
    assert!(state.artifacts.image("broken").await.is_err());
    let images = state.config.layout.data_dir.join("images");
    assert!(!images.join("broken").exists());
}
