//! End to end: a kernel the user has (`kernel import`) booted by a VM that
//! waits for nothing (`vm create --wait none`), driven through the real
//! CLI, daemon and QEMU (TCG).
//!
//! The kernel is `banger_vmm::testkit`'s stub: a 4 KiB boot-protocol image
//! that prints its banner on the serial console and halts (no agent, no
//! sshd, and it ignores the power button). The image is a one-layer OCI
//! image pulled from a registry on loopback (tests/common/registry.rs):
//! the stub never reads it, and a pull takes seconds where building the
//! default image takes minutes.
//!
//! Needs QEMU and the registry tools; skipped (saying why) without them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_vmm::testkit::{STUB_KERNEL_BANNER, write_stub_kernel};
use common::registry::have_tools;
use common::{World, step, text};

fn have_qemu() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| d.join("qemu-system-x86_64").is_file());
    if !found {
        eprintln!("skipping kernel_import_e2e: qemu-system-x86_64 not installed");
    }
    found
}

/// Runs `banger ARGS`, asserting it fails with exit `code` and an error
/// containing each of `needles`.
fn refused(w: &World, args: &[&str], code: i32, needles: &[&str]) {
    let out = w.banger(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "banger {args:?}:\n{}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(
            err.contains(needle),
            "banger {args:?}: {needle:?} not in:\n{err}"
        );
    }
}

/// What is in the kernel store, by name (staging directories included).
fn kernel_dirs(w: &World) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(w.root().join("data/banger/kernels"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_imported_stub_kernel_boots_a_vm_that_waits_for_nothing() {
    if !have_qemu() || !have_tools("an_imported_stub_kernel_boots_a_vm_that_waits_for_nothing") {
        return;
    }
    let w = common::vm_world();
    let src_dir = w.root().join("src");
    std::fs::create_dir(&src_dir).unwrap();
    let stub = src_dir.join("stub-vmlinuz");
    write_stub_kernel(&stub).unwrap();

    step("import the stub kernel, by a path relative to the CLI's directory");
    let out = w
        .command(common::BANGER)
        .current_dir(&src_dir)
        .args([
            "kernel",
            "import",
            "stub",
            "--kernel",
            "stub-vmlinuz",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let k: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let abs = stub.display().to_string();
    assert_eq!(k["origin"]["kind"], "imported", "{k}");
    assert_eq!(k["origin"]["path"], abs.as_str(), "{k}");
    assert_eq!(k["present"], true, "{k}");
    let stored = PathBuf::from(k["kernel"].as_str().unwrap());
    assert_eq!(stored, w.root().join("data/banger/kernels/stub/vmlinuz"));
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&stub).unwrap()
    );
    // A copy: the original may go.
    std::fs::remove_file(&stub).unwrap();

    step("kernel list and show say where it came from");
    let listed = w.banger_json(&["kernel", "list"]);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "stub")
        .unwrap_or_else(|| panic!("stub not listed: {listed}"));
    assert_eq!(row["origin"]["path"], abs.as_str());
    let catalog = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "debian-cloud")
        .unwrap();
    assert_eq!(catalog["origin"]["kind"], "catalog", "{catalog}");
    let table = w.banger_ok(&["kernel", "list"]);
    assert!(table.contains("SOURCE"), "{table}");
    let line = table.lines().find(|l| l.starts_with("stub")).unwrap();
    assert!(
        line.contains("imported") && line.contains(&format!("imported from {abs}")),
        "{table}"
    );
    assert!(
        table.contains("catalog (linux-image-cloud-amd64)"),
        "{table}"
    );
    let show = w.banger_ok(&["kernel", "show", "stub"]);
    assert!(show.contains(&format!("imported from {abs}")), "{show}");

    step("bad imports are refused by name and leave nothing");
    let before = kernel_dirs(&w);
    assert_eq!(before, ["stub"]);
    let missing = src_dir.join("no-such-kernel");
    refused(
        &w,
        &[
            "kernel",
            "import",
            "gone",
            "--kernel",
            missing.to_str().unwrap(),
        ],
        4,
        &["import kernel gone", "no-such-kernel", "no such file"],
    );
    let notes = src_dir.join("notes.txt");
    std::fs::write(&notes, "not a kernel\n".repeat(100)).unwrap();
    refused(
        &w,
        &[
            "kernel",
            "import",
            "notes",
            "--kernel",
            notes.to_str().unwrap(),
        ],
        2,
        &["notes.txt", "does not look like a kernel"],
    );
    let stub2 = src_dir.join("stub2");
    write_stub_kernel(&stub2).unwrap();
    refused(
        &w,
        &[
            "kernel",
            "import",
            "stub",
            "--kernel",
            stub2.to_str().unwrap(),
        ],
        5,
        &["kernel \"stub\" already exists"],
    );
    refused(
        &w,
        &[
            "kernel",
            "import",
            "debian-cloud",
            "--kernel",
            stub2.to_str().unwrap(),
        ],
        5,
        &["catalog entry"],
    );
    refused(
        &w,
        &[
            "kernel",
            "import",
            "withinitrd",
            "--kernel",
            stub2.to_str().unwrap(),
            "--initrd",
            src_dir.join("no-initrd").to_str().unwrap(),
        ],
        4,
        &["initrd", "no-initrd"],
    );
    refused(
        &w,
        &[
            "kernel",
            "import",
            "Bad/Name",
            "--kernel",
            stub2.to_str().unwrap(),
        ],
        2,
        &["invalid kernel name"],
    );
    // Nothing to pull for an imported kernel.
    refused(
        &w,
        &["kernel", "pull", "stub"],
        2,
        &["was imported, not pulled"],
    );
    assert_eq!(kernel_dirs(&w), before, "a refused import left files");
    assert_eq!(
        w.names(&["kernel", "list"]),
        ["debian-cloud", "stub"],
        "a refused import was recorded"
    );

    step("pull a tiny image to boot with it");
    let _registry = common::pull_tiny_image(&w);

    step("waits the image cannot give, and vm run --wait none, are refused");
    refused(
        &w,
        &[
            "vm", "create", "--name", "nossh", "--kernel", "stub", "--image", "tiny", "--wait",
            "ssh",
        ],
        2,
        &["runs no SSH server", "--wait agent or --wait none"],
    );
    refused(
        &w,
        &["vm", "run", "--wait", "none", "--", "true"],
        2,
        &["vm run needs the guest's agent or SSH"],
    );
    refused(
        &w,
        &["vm", "create", "--name", "x", "--wait", "forever"],
        2,
        &["unknown wait \"forever\""],
    );
    assert!(
        w.names(&["vm", "list"]).is_empty(),
        "a refused create left a vm"
    );

    step("vm create --kernel stub --wait none: running once the vmm is");
    let t = Instant::now();
    let out = w.banger(&[
        "vm", "create", "--name", "s", "--kernel", "stub", "--image", "tiny", "--wait", "none",
        "--egress", "open",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let took = t.elapsed();
    eprintln!("create took {took:?}");
    let stages = String::from_utf8_lossy(&out.stderr);
    assert!(stages.contains("launch vmm"), "{stages}");
    assert!(
        !stages.contains("wait for agent") && !stages.contains("wait for ssh"),
        "a create that waits for nothing waited:\n{stages}"
    );
    let vm = w.banger_json(&["vm", "show", "s"]);
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["kernel"], "stub");
    assert_eq!(vm["wait_for"], "none", "{vm}");
    assert!(vm["agent"].is_null() || vm["agent"] == false, "{vm}");
    let shown = w.banger_ok(&["vm", "show", "s"]);
    let wait_line = shown.lines().find(|l| l.trim_start().starts_with("wait"));
    assert!(
        wait_line.is_some_and(|l| l.trim_end().ends_with("none")),
        "{shown}"
    );

    step("the stub's banner reaches the console log");
    wait_until(
        Duration::from_secs(60),
        "the stub's banner in vm logs",
        || {
            w.banger_ok(&["vm", "logs", "s"])
                .contains(STUB_KERNEL_BANNER)
        },
    );

    step("the agent's calls say why they fail, in bounded time");
    let t = Instant::now();
    refused(
        &w,
        &["vm", "exec", "s", "--", "true"],
        1,
        &["did not answer", "--wait none", "banger vm logs s"],
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "vm exec took {:?}",
        t.elapsed()
    );
    refused(&w, &["vm", "stats", "s"], 1, &["--wait none"]);

    step("a kernel in use is not deleted");
    refused(&w, &["kernel", "delete", "stub"], 5, &["in use by vm s"]);

    step("vm stop ends it within the bounded wait (the stub ignores the power button)");
    let t = Instant::now();
    let stopped = w.banger_json(&["vm", "stop", "s"]);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "stop took {:?}",
        t.elapsed()
    );
    let id = vm["id"].as_str().unwrap();
    assert!(common::qemu_pids_with(id).is_empty(), "qemu still runs");

    step("vm start honours the recorded wait");
    let started = w.banger_json(&["vm", "start", "s"]);
    assert_eq!(started["state"], "running", "{started}");
    assert_eq!(started["wait_for"], "none");
    w.banger_ok(&["vm", "delete", "--force", "s"]);

    step("kernel delete removes it, files and all");
    w.banger_ok(&["kernel", "delete", "stub"]);
    assert_eq!(w.names(&["kernel", "list"]), ["debian-cloud"]);
    assert!(kernel_dirs(&w).is_empty(), "{:?}", kernel_dirs(&w));
    assert!(!Path::new(&stored).exists());
}
