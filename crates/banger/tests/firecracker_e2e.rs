//! End to end: a Firecracker VM through the real CLI and daemon. The
//! Firecracker is a real one when `BANGER_FIRECRACKER_BIN` names it, else
//! the fake of `crates/fc-fake` (Firecracker's API and state machine, every
//! request checked against its API description), so this runs in CI.
//!
//! The guest is `banger_vmm::testkit`'s stub ELF (64-bit code at 16 MiB
//! that writes a banner to COM1 and halts), imported with `kernel import`;
//! `--wait none` since it has no agent. The VM is in user mode (no
//! helper), so it has no NIC: Firecracker has no user-mode network.
//!
//! Covered: create and the stage naming the VMM, the banner in `vm logs`,
//! pause and resume, stop through Ctrl-Alt-Del then the bounded wait,
//! adoption after `kill -9` of the daemon (same pid), `kill -9` of
//! Firecracker noticed and cleaned up (a crash under a running daemon:
//! `error`, saying so; while the daemon is down: `stopped` at its
//! restart, as for QEMU), a kernel Firecracker refuses
//! (its `fault_message`, nothing left running), and what Firecracker VMs
//! do not do yet (snapshots) refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_vmm::testkit::{STUB_ELF_BANNER, write_stub_elf_guest};
use common::registry::have_tools;
use common::{World, step, text};

/// The Firecracker to drive, and whether it is the fake.
fn firecracker() -> Option<(PathBuf, bool)> {
    if let Some(real) = std::env::var_os("BANGER_FIRECRACKER_BIN").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(real), false));
    }
    if !banger_fc_fake::ApiDescription::default_path().exists() {
        eprintln!(
            "skipping firecracker_e2e: no Firecracker API description at {} for the fake",
            banger_fc_fake::ApiDescription::default_path().display()
        );
        return None;
    }
    match banger_fc_fake::fake_binary() {
        Some(fake) => Some((fake, true)),
        None => {
            eprintln!(
                "skipping firecracker_e2e: the fake-firecracker binary is not built (cargo test --workspace builds it)"
            );
            None
        }
    }
}

fn kvm_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipping firecracker_e2e: /dev/kvm cannot be opened (firecracker needs it)");
    }
    ok
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn show(w: &World, name: &str) -> serde_json::Value {
    w.banger_json(&["vm", "show", name])
}

/// The fake's stderr (in the VM's vmm.log) says "schema violation" for
/// any request that broke the API description.
fn no_violation(vm_dir: &Path) {
    let log = std::fs::read_to_string(vm_dir.join("vmm.log")).unwrap_or_default();
    assert!(!log.contains("schema violation"), "{log}");
}

/// Processes whose command line mentions `path` (the VM's API socket).
fn running_with(path: &Path) -> Vec<i32> {
    common::processes_mentioning(path)
}

#[test]
fn a_firecracker_vm_boots_pauses_stops_and_survives_a_daemon_restart() {
    let Some((binary, fake)) = firecracker() else {
        return;
    };
    if !kvm_usable()
        || !have_tools("a_firecracker_vm_boots_pauses_stops_and_survives_a_daemon_restart")
    {
        return;
    }
    eprintln!(
        "firecracker_e2e: driving {} ({})",
        binary.display(),
        if fake {
            "the fake"
        } else {
            "a real firecracker"
        }
    );
    let mut w = common::vm_world();
    w.extra_env.push(("BANGER_FIRECRACKER_BIN", binary.clone()));
    let _registry = common::pull_tiny_image(&w);
    let stub = w.root().join("stub.elf");
    write_stub_elf_guest(&stub).unwrap();

    step("kernel import of the stub ELF guest");
    w.banger_ok(&[
        "kernel",
        "import",
        "stub",
        "--kernel",
        stub.to_str().unwrap(),
    ]);

    step("doctor names the firecracker binary and its version");
    let doctor = w.banger_json(&["doctor"]);
    let check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "firecracker")
        .unwrap_or_else(|| panic!("no firecracker check: {doctor}"));
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains(binary.to_str().unwrap()),
        "{check}"
    );

    step("vm create --vmm firecracker --kernel stub --wait none");
    let created = std::time::Instant::now();
    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "fc",
        "--image",
        "tiny",
        "--kernel",
        "stub",
        "--vmm",
        "firecracker",
        "--wait",
        "none",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("created in {:?}", created.elapsed());
    assert!(
        progress.contains("vmm firecracker (--vmm firecracker)"),
        "{progress}"
    );
    assert!(progress.contains("no network"), "{progress}");
    let vm = show(&w, "fc");
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["backend"], "firecracker", "{vm}");
    assert_eq!(vm["backend_reason"], "--vmm firecracker", "{vm}");
    let shown = w.banger_ok(&["vm", "show", "fc"]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("backend") && l.contains("firecracker (--vmm firecracker)")),
        "{shown}"
    );
    let pid = vm["pid"].as_i64().unwrap() as i32;
    let vm_dir = w
        .root()
        .join("data/banger/vms")
        .join(vm["id"].as_str().unwrap());
    let api_socket = vm_dir.join("firecracker.sock");
    assert!(api_socket.exists());

    step("the guest's banner in vm logs");
    wait_until(Duration::from_secs(20), "the banner in vm logs", || {
        w.banger_ok(&["vm", "logs", "fc"]).contains(STUB_ELF_BANNER)
    });

    step("vm pause and vm resume through the api");
    w.banger_ok(&["vm", "pause", "fc"]);
    assert_eq!(show(&w, "fc")["state"], "paused");
    w.banger_ok(&["vm", "resume", "fc"]);
    assert_eq!(show(&w, "fc")["state"], "running");

    step("vm snapshot through the api; vm create --from-snapshot loads it");
    let snap = w.banger_json(&["vm", "snapshot", "fc", "--name", "s1"]);
    assert_eq!(
        snap["vmm"].as_str().map(|v| v.starts_with("firecracker")),
        Some(true),
        "{snap}"
    );
    assert_eq!(show(&w, "fc")["state"], "running", "the source runs on");
    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "fc2",
        "--from-snapshot",
        "s1",
        "--wait",
        "none",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let fc2 = show(&w, "fc2");
    assert_eq!(fc2["state"], "running", "{fc2}");
    assert_eq!(fc2["backend"], "firecracker", "{fc2}");
    let fc2_pid = fc2["pid"].as_i64().unwrap() as i32;
    assert_ne!(i64::from(fc2_pid), vm["pid"].as_i64().unwrap());
    w.banger_ok(&["vm", "pause", "fc2"]);
    assert_eq!(show(&w, "fc2")["state"], "paused");
    w.banger_ok(&["vm", "resume", "fc2"]);
    let fc2_dir = w
        .root()
        .join("data/banger/vms")
        .join(fc2["id"].as_str().unwrap());
    if fake {
        no_violation(&fc2_dir);
    }
    w.banger_ok(&["vm", "delete", "--force", "fc2"]);
    assert!(common::wait_gone(fc2_pid));
    w.banger_ok(&["snapshot", "delete", "s1"]);

    step("kill -9 of the daemon: the vm is adopted with the same pid");
    let daemon = w.daemon_pid().expect("a daemon runs");
    common::signal(daemon, "KILL");
    assert!(common::wait_gone(daemon));
    assert!(common::alive(pid), "the vm died with the daemon");
    let vm = show(&w, "fc"); // starts a new daemon
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["pid"].as_i64(), Some(i64::from(pid)), "{vm}");
    w.banger_ok(&["vm", "pause", "fc"]);
    w.banger_ok(&["vm", "resume", "fc"]);

    step("vm stop: ctrl-alt-del, the bounded wait, then a kill");
    w.banger_ok(&["vm", "stop", "fc"]);
    assert_eq!(show(&w, "fc")["state"], "stopped");
    assert!(common::wait_gone(pid));
    assert!(!api_socket.exists(), "the api socket outlived the vm");

    step("kill -9 of firecracker: noticed, the vm no longer runs, cleaned up");
    w.banger_ok(&["vm", "start", "fc"]);
    let vm = show(&w, "fc");
    assert_eq!(vm["state"], "running", "{vm}");
    let pid = vm["pid"].as_i64().unwrap() as i32;
    common::signal(pid, "KILL");
    // A vmm killed under the guest is a crash: `error`, saying so (a
    // guest that powers off leaves it `stopped`, as the stop above did).
    wait_until(Duration::from_secs(20), "the vm marked not running", || {
        show(&w, "fc")["state"] == "error"
    });
    let vm = show(&w, "fc");
    assert!(
        vm["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("firecracker exited on its own (signal 9)")),
        "{vm}"
    );
    assert!(running_with(&api_socket).is_empty());
    assert!(!api_socket.exists(), "the api socket outlived the vm");

    step(
        "kill -9 of firecracker while the daemon is down: the restart marks it stopped, cleaned up",
    );
    w.banger_ok(&["vm", "start", "fc"]);
    let pid = show(&w, "fc")["pid"].as_i64().unwrap() as i32;
    let daemon = w.daemon_pid().expect("a daemon runs");
    common::signal(daemon, "KILL");
    assert!(common::wait_gone(daemon));
    common::signal(pid, "KILL");
    assert!(common::wait_gone(pid));
    let vm = show(&w, "fc"); // a new daemon, whose reconcile finds it gone
    assert_eq!(vm["state"], "stopped", "{vm}");
    assert!(vm["pid"].is_null(), "{vm}");
    assert!(!api_socket.exists(), "the api socket outlived the vm");
    assert!(
        !vm_dir.join("vsock.sock").exists(),
        "the vsock socket outlived the vm"
    );
    assert!(!vm_dir.join("handles.json").exists());
    if fake {
        no_violation(&vm_dir);
    }
    w.banger_ok(&["vm", "delete", "fc"]);

    step("a kernel firecracker refuses: its fault_message, nothing left running");
    let bad = w.root().join("bad32.elf");
    let mut bytes = b"\x7fELF\x01\x01\x01".to_vec();
    bytes.resize(4096, 0);
    std::fs::write(&bad, bytes).unwrap();
    w.banger_ok(&["kernel", "import", "bad", "--kernel", bad.to_str().unwrap()]);
    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "bad",
        "--image",
        "tiny",
        "--kernel",
        "bad",
        "--vmm",
        "firecracker",
        "--wait",
        "none",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("PUT /actions") && err.contains("firecracker answered 400"),
        "{err}"
    );
    let vm = show(&w, "bad");
    assert_eq!(vm["state"], "error", "{vm}");
    let bad_dir = w
        .root()
        .join("data/banger/vms")
        .join(vm["id"].as_str().unwrap());
    assert!(running_with(&bad_dir.join("firecracker.sock")).is_empty());
    assert!(!bad_dir.join("firecracker.sock").exists());
    if fake {
        no_violation(&bad_dir);
    }
    w.banger_ok(&["vm", "delete", "bad"]);
    w.banger_ok(&["kernel", "delete", "stub"]);
    w.banger_ok(&["kernel", "delete", "bad"]);
}

/// Bad input: an unknown `--vmm`, `--vmm firecracker` where there is no
/// Firecracker, `--wait agent` with `--from-snapshot`: each refused by
/// name before anything is made.
#[test]
fn firecracker_bad_input_is_refused_and_makes_nothing() {
    let mut w = World::new();
    w.extra_env.push((
        "BANGER_FIRECRACKER_BIN",
        w.root().join("no-such-firecracker"),
    ));
    w.extra_env
        .push(("BANGER_HELPER_SOCKET", w.root().join("no-helper.sock")));

    let out = w.banger(&["vm", "create", "--name", "a", "--vmm", "cloud-hypervisor"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cloud-hypervisor"),
        "{}",
        text(&out)
    );

    let out = w.banger(&["vm", "create", "--name", "b", "--vmm", "firecracker"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no firecracker binary") && err.contains("BANGER_FIRECRACKER_BIN"),
        "{err}"
    );

    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "c",
        "--from-snapshot",
        "s",
        "--wait",
        "agent",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--wait agent or ssh does not apply"),
        "{}",
        text(&out)
    );

    assert!(w.names(&["vm", "list"]).is_empty(), "nothing was made");
    let vms = w.root().join("data/banger/vms");
    assert!(
        std::fs::read_dir(&vms).map_or(true, |mut d| d.next().is_none()),
        "no vm directory was left"
    );
}
