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
    flow::whole_backend(&binary);
}
