//! banger's Firecracker backend (`banger_vmm::firecracker`) against the
//! fake: the same flow `crates/vmm/tests/firecracker.rs` runs against a real
//! Firecracker where one is installed, here in CI. The fake checks every
//! request body against the API description and says so on its stderr
//! (the VM's `vmm.log`); no such line may appear.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

#[path = "../../vmm/tests/support/firecracker_flow.rs"]
mod flow;

use std::path::Path;

#[test]
fn the_backend_drives_the_fake_firecracker() {
    let description = banger_fc_fake::ApiDescription::default_path();
    if !description.exists() {
        eprintln!(
            "skipped: no Firecracker API description at {} (set {})",
            description.display(),
            banger_fc_fake::DESCRIPTION_ENV
        );
        return;
    }
    let dir = flow::whole_backend(Path::new(env!("CARGO_BIN_EXE_fake-firecracker")));
    // Every VM's vmm.log holds the fake's stderr: no request of the
    // backend broke the description.
    let mut logs = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let log = entry.path().join("vmm.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            logs += 1;
            assert!(
                !text.contains("schema violation"),
                "{}: {text}",
                log.display()
            );
        }
    }
    assert!(logs >= 4, "the flow's vms left their logs");
    flow::nic_on_a_tap(Path::new(env!("CARGO_BIN_EXE_fake-firecracker")));
}
