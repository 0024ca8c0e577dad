//! End to end: a Firecracker VM through the real CLI and daemon. The
//! Firecracker is a real one when `BANGER_FIRECRACKER_BIN` names it, else
//! the fake of `crates/fc-fake` (Firecracker's API and state machine, every
//! request checked against its API description), so this runs in CI.
//!
//! The guest is `banger_vmm::testkit`'s stub ELF (64-bit code at 16 MiB
//! that writes a banner to COM1 and halts), imported with `kernel import`;
//! `--wait none` since it has no agent. In the first test the VM is in
//! user mode (no helper), so it has no NIC: Firecracker has no user-mode
//! network.
//!
//! Covered: create and the stage naming the VMM, the banner in `vm logs`,
//! pause and resume, stop through Ctrl-Alt-Del then the bounded wait,
//! adoption after `kill -9` of the daemon (same pid), `kill -9` of
//! Firecracker noticed and cleaned up (`stopped`, the signal in
//! `last_error`, whether the daemon was up or down), snapshots and a VM
//! made from one, and a kernel Firecracker refuses (its `fault_message`,
//! nothing left running). As root, a second test puts Firecracker VMs on
//! TAPs from the warm pool of the real helper, in a network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_vmm::testkit::{STUB_ELF_BANNER, write_stub_elf_guest};
use common::netns::{Helper, TestNet, assert_no_orphans, strings, wait_pool_full};
use common::registry::have_tools;
use common::{World, is_root, step, text};

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

/// `kill -9` of the Firecracker of `vm` (as `vm show` printed it): waits
/// until the daemon has it `stopped`, saying why; returns `vm show` then.
fn kill_firecracker(w: &World, vm: &serde_json::Value) -> serde_json::Value {
    let name = vm["name"].as_str().unwrap();
    common::signal(vm["pid"].as_i64().unwrap() as i32, "KILL");
    wait_until(Duration::from_secs(20), "the vm marked stopped", || {
        show(w, name)["state"] == "stopped"
    });
    let after = show(w, name);
    assert!(
        after["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("firecracker exited on its own (signal 9)")),
        "{after}"
    );
    after
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
    // `stopped`, as a daemon restart finds it (below), the crash named.
    kill_firecracker(&w, &vm);
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
    assert!(
        vm["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("exited while no daemon was running")),
        "{vm}"
    );
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
    eprintln!("    refused: {}", err.trim());
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

/// The TAP `tap` in the banger namespace: on banger's bridge and, when
/// `attached` (a real Firecracker opened it), with carrier (a queue open).
fn assert_tap_in_use(net: &TestNet, tap: &str, attached: bool) {
    let out = net.exec(&["ip", "-j", "link", "show", tap]);
    assert!(out.status.success(), "{tap}: {}", text(&out));
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(link[0]["master"], "banger0", "{link}");
    if attached {
        let carrier = net.exec(&["cat", &format!("/sys/class/net/{tap}/carrier")]);
        assert_eq!(
            String::from_utf8_lossy(&carrier.stdout).trim(),
            "1",
            "{tap} has no queue open: {}",
            text(&carrier)
        );
    }
}

/// As root, with the real helper in a network namespace of the test's own
/// (as in `bridged_e2e.rs`): Firecracker VMs take TAPs from the warm pool,
/// one each; a restore from a snapshot loads it onto the VM's own TAP (a
/// new VM from the snapshot of an agentless guest is refused: it would
/// keep the source's address); each TAP goes back to the pool when its VM
/// ends: by delete, by `kill -9` of Firecracker, by stop.
#[test]
fn a_firecracker_vm_on_a_tap_from_the_pool() {
    if !is_root() {
        eprintln!("skipped: a firecracker vm on a tap needs root (namespaces, TAP devices)");
        return;
    }
    let Some((binary, fake)) = firecracker() else {
        return;
    };
    if !kvm_usable() || !have_tools("a_firecracker_vm_on_a_tap_from_the_pool") {
        return;
    }
    const POOL: usize = 2;
    let scratch = tempfile::tempdir().unwrap();
    let net = TestNet::new(scratch.path());
    let mut w = common::vm_world();
    let helper = Helper::new(scratch.path(), &w, &net.ns);
    w.extra_env.push(("BANGER_FIRECRACKER_BIN", binary));

    step("image and stub kernel, outside the namespace (the registry is on the host's loopback)");
    let _registry = common::pull_tiny_image(&w);
    let stub = w.root().join("stub.elf");
    write_stub_elf_guest(&stub).unwrap();
    w.banger_ok(&[
        "kernel",
        "import",
        "stub",
        "--kernel",
        stub.to_str().unwrap(),
    ]);
    w.banger_ok(&["daemon", "stop"]);

    for (key, value) in &mut w.extra_env {
        if *key == "BANGER_HELPER_SOCKET" {
            value.clone_from(&helper.socket);
        }
    }
    w.extra_env
        .push(("BANGER_TAP_POOL", PathBuf::from(POOL.to_string())));
    w.wrapper = ["ip", "netns", "exec", net.ns.as_str()]
        .map(str::to_owned)
        .to_vec();

    step("vm create --vmm firecracker in bridged mode takes a warm tap");
    let n = wait_pool_full(&w, POOL);
    assert_eq!(n["helper"], true, "{n}");
    let idle_before = strings(&n["idle_taps"]);
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec!["vm", "create", "--name", name, "--wait", "none"];
        args.extend_from_slice(extra);
        let out = w.banger(&args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let progress = create(
        "fc",
        &[
            "--image",
            "tiny",
            "--kernel",
            "stub",
            "--vmm",
            "firecracker",
        ],
    );
    assert!(progress.contains("attach network"), "{progress}");
    assert!(!progress.contains("no network"), "{progress}");
    let vm = show(&w, "fc");
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["backend"], "firecracker", "{vm}");
    assert_eq!(vm["network"], "bridged", "{vm}");
    assert!(
        vm["ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.77.0.")),
        "{vm}"
    );
    let tap = vm["tap"].as_str().unwrap().to_owned();
    assert!(
        idle_before.contains(&tap),
        "took {tap}, not one of {idle_before:?}"
    );
    assert_tap_in_use(&net, &tap, !fake);
    wait_until(Duration::from_secs(20), "the banner in vm logs", || {
        w.banger_ok(&["vm", "logs", "fc"]).contains(STUB_ELF_BANNER)
    });
    let n = wait_pool_full(&w, POOL);
    assert_eq!(strings(&n["taps_in_use"]), vec![tap.clone()], "{n}");
    assert_no_orphans(&w, &net);

    step("a second firecracker vm takes a tap of its own");
    create(
        "fc2",
        &[
            "--image",
            "tiny",
            "--kernel",
            "stub",
            "--vmm",
            "firecracker",
        ],
    );
    let fc2 = show(&w, "fc2");
    assert_eq!(fc2["state"], "running", "{fc2}");
    assert_eq!(fc2["network"], "bridged", "{fc2}");
    let tap2 = fc2["tap"].as_str().unwrap().to_owned();
    assert_ne!(tap2, tap, "two vms on one tap");
    assert_ne!(fc2["ip"], vm["ip"], "{fc2}");
    assert_tap_in_use(&net, &tap2, !fake);
    let n = wait_pool_full(&w, POOL);
    assert_eq!(strings(&n["taps_in_use"]).len(), 2, "{n}");
    assert_no_orphans(&w, &net);

    step("delete gives its tap back");
    w.banger_ok(&["vm", "delete", "--force", "fc2"]);
    let n = assert_no_orphans(&w, &net);
    assert_eq!(strings(&n["taps_in_use"]), vec![tap.clone()], "{n}");

    step(
        "snapshot; a new vm from it is refused (it would keep the address); restore keeps the tap",
    );
    w.banger_ok(&["vm", "snapshot", "fc", "--name", "s1"]);
    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "fc3",
        "--from-snapshot",
        "s1",
        "--wait",
        "none",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would keep the source's address"),
        "{}",
        text(&out)
    );
    assert_eq!(w.names(&["vm", "list"]), vec!["fc".to_owned()]);
    let old_pid = vm["pid"].as_i64().unwrap();
    w.banger_ok(&["vm", "restore", "fc", "s1"]);
    let vm = show(&w, "fc");
    assert_eq!(vm["state"], "running", "{vm}");
    assert_ne!(
        vm["pid"].as_i64().unwrap(),
        old_pid,
        "a new firecracker loaded it"
    );
    assert_eq!(vm["tap"].as_str(), Some(tap.as_str()), "{vm}");
    assert_tap_in_use(&net, &tap, !fake);
    let n = assert_no_orphans(&w, &net);
    assert_eq!(strings(&n["taps_in_use"]), vec![tap.clone()], "{n}");
    if fake {
        no_violation(
            &w.root()
                .join("data/banger/vms")
                .join(vm["id"].as_str().unwrap()),
        );
    }

    step("kill -9 of firecracker: stopped, its tap back in the pool");
    let after = kill_firecracker(&w, &vm);
    assert!(after["tap"].is_null(), "{after}");
    let n = assert_no_orphans(&w, &net);
    assert!(strings(&n["taps_in_use"]).is_empty(), "{n}");
    assert!(strings(&n["idle_taps"]).contains(&tap), "{n}");

    step("start takes a tap again, stop gives it back, delete leaves the pool whole");
    w.banger_ok(&["vm", "start", "fc"]);
    let vm = show(&w, "fc");
    assert_eq!(vm["state"], "running", "{vm}");
    let tap = vm["tap"].as_str().unwrap().to_owned();
    assert_tap_in_use(&net, &tap, !fake);
    w.banger_ok(&["vm", "stop", "fc"]);
    assert_eq!(show(&w, "fc")["state"], "stopped");
    let n = assert_no_orphans(&w, &net);
    assert!(strings(&n["taps_in_use"]).is_empty(), "{n}");
    w.banger_ok(&["vm", "delete", "fc"]);
    w.banger_ok(&["snapshot", "delete", "s1"]);
    assert_no_orphans(&w, &net);
    w.banger_ok(&["daemon", "stop"]);
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
