//! The Firecracker backend against a real Firecracker, where
//! `BANGER_FIRECRACKER_BIN` names one (no package source here ships it);
//! the same flow runs in CI against the fake of `crates/fc-fake`
//! (`crates/fc-fake/tests/backend.rs`), which shares this file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

#[path = "support/firecracker_flow.rs"]
mod flow;

use std::path::PathBuf;

#[test]
fn the_backend_drives_a_real_firecracker() {
    let Some(binary) = std::env::var_os("BANGER_FIRECRACKER_BIN").map(PathBuf::from) else {
        eprintln!(
            "skipped: BANGER_FIRECRACKER_BIN does not name a firecracker binary (no package source here ships one)"
        );
        return;
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipped: /dev/kvm cannot be opened, and firecracker needs it");
        return;
    }
    let _vms = flow::whole_backend(&binary);
    flow::nic_on_a_tap(&binary);
}

/// On these machines KVM is a nested PVM hypervisor: tiny guests run, Linux
/// does not. The probe must tell which: a stub ELF guest never reaches a
/// Linux boot milestone, so it is reported as hanging, not usable.
#[test]
fn the_kvm_probe_does_not_take_a_stub_for_linux() {
    let Some(binary) = std::env::var_os("BANGER_FIRECRACKER_BIN").map(PathBuf::from) else {
        eprintln!("skipped: BANGER_FIRECRACKER_BIN does not name a firecracker binary");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("stub.elf");
    banger_vmm::testkit::write_stub_elf_guest(&kernel).unwrap();
    let vmm = banger_vmm::firecracker::FirecrackerVmm::new(binary);
    let verdict = vmm.probe_kvm_boot(&kernel, None, std::time::Duration::from_secs(2));
    assert!(
        matches!(
            verdict,
            banger_vmm::KvmProbe::Hangs | banger_vmm::KvmProbe::Absent
        ),
        "{verdict:?}"
    );
}
