//! The VM lifecycle on Firecracker with Debian's kernel and banger's
//! default image: runs only where a Firecracker is installed
//! (`BANGER_FIRECRACKER_BIN`) and its KVM probe boots that kernel, i.e. on
//! a host with real KVM. Elsewhere it prints why it did not run. On the
//! machines banger is built on, KVM is a nested PVM hypervisor that hangs
//! stock kernels: with a Firecracker there, the probe says so and this is
//! what the test prints.
//!
//! Flow: create (the agent over vsock; user mode, so no NIC), `vm exec`,
//! `vm stats`, pause and resume, stop (Ctrl-Alt-Del: the guest reboots and
//! Firecracker exits), start, snapshot and a VM from it, delete.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::PathBuf;

use common::{step, text};

#[test]
fn the_vm_lifecycle_on_firecracker_with_debian() {
    let Some(binary) = std::env::var_os("BANGER_FIRECRACKER_BIN").map(PathBuf::from) else {
        eprintln!(
            "not run: no Firecracker here (BANGER_FIRECRACKER_BIN is unset; no package source ships it)"
        );
        return;
    };
    let mut w = common::vm_world();
    w.extra_env.push(("BANGER_FIRECRACKER_BIN", binary));

    step("the default kernel, and whether KVM boots it under firecracker");
    w.banger_json(&["kernel", "pull"]);
    let doctor = w.banger_json(&["doctor", "--probe"]);
    let probe = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "firecracker kvm probe")
        .cloned()
        .unwrap_or_else(|| panic!("no firecracker kvm probe in {doctor}"));
    if probe["status"] != "ok" {
        eprintln!(
            "not run: firecracker's kvm probe did not boot the default kernel here: {}",
            probe["detail"]
        );
        return;
    }

    step("vm create --vmm firecracker (default image, the agent over vsock)");
    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "fk",
        "--vmm",
        "firecracker",
        "--wait",
        "agent",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let vm = w.banger_json(&["vm", "show", "fk"]);
    assert_eq!(vm["backend"], "firecracker", "{vm}");
    let exec = w.banger_ok(&["vm", "exec", "fk", "--", "cat", "/proc/version"]);
    assert!(exec.contains("Linux version"), "{exec}");
    w.banger_json(&["vm", "stats", "fk"]);

    step("pause, resume, stop, start");
    w.banger_ok(&["vm", "pause", "fk"]);
    w.banger_ok(&["vm", "resume", "fk"]);
    w.banger_ok(&["vm", "exec", "fk", "--", "true"]);
    w.banger_ok(&["vm", "stop", "fk"]);
    w.banger_ok(&["vm", "start", "fk"]);
    w.banger_ok(&["vm", "exec", "fk", "--", "true"]);

    step("snapshot, and a vm from it that answers through its agent");
    w.banger_ok(&["vm", "snapshot", "fk", "--name", "fks"]);
    w.banger_ok(&["vm", "create", "--name", "fk2", "--from-snapshot", "fks"]);
    let hostname = w.banger_ok(&["vm", "exec", "fk2", "--", "hostname"]);
    assert_eq!(hostname.trim(), "fk2");

    w.banger_ok(&["vm", "delete", "--force", "fk2", "fk"]);
    w.banger_ok(&["snapshot", "delete", "fks"]);
}
