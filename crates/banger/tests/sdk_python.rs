//! The Python SDK (`sdk/python`) with pytest, against the real daemon and
//! real guests under QEMU (TCG): this test gives the SDK's tests a banger
//! world of their own (its own daemon, started by the SDK itself as the
//! CLI would; the default kernel and image made first), then runs
//! `pytest-3` on `sdk/python/tests` and passes when they do. The SDK's
//! schema test runs there too and needs no daemon.
//!
//! Needs root (the default image is built with mmdebstrap) and pytest
//! (Debian's python3-pytest, installed by scripts/deps.sh); prints why
//! and passes vacuously without.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};

use common::{BANGER, is_root, step, text};

fn pytest() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pytest-3"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("skipped: no pytest-3 (apt-get install python3-pytest)");
    }
    found
}

#[test]
fn the_python_sdk_against_a_real_daemon() {
    if !is_root() {
        eprintln!("skipped: the default image is built with mmdebstrap, which needs root");
        return;
    }
    let Some(pytest) = pytest() else {
        return;
    };
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python");
    let mut w = common::vm_world();
    w.extra_env.push(("BANGER_BIN", PathBuf::from(BANGER)));
    w.extra_env.push(("BANGER_SDK_E2E", PathBuf::from("1")));
    w.extra_env.push(("PYTHONPATH", sdk.join("src")));
    w.extra_env
        .push(("PYTHONDONTWRITEBYTECODE", PathBuf::from("1")));

    let t = step("the default kernel and image, then no daemon (the SDK starts one)");
    w.banger_ok(&["vm", "create", "--name", "warmup", "--no-start"]);
    w.banger_ok(&["vm", "delete", "warmup"]);
    w.banger_ok(&["daemon", "stop"]);
    assert!(w.daemon_pid().is_none(), "the daemon stopped");
    eprintln!("    {:?}", t.elapsed());

    let t = step("pytest-3 sdk/python/tests");
    let out = w
        .command(pytest.to_str().unwrap())
        .current_dir(&sdk)
        .args(["-v", "-p", "no:cacheprovider", "-rs", "tests"])
        .output()
        .unwrap();
    eprintln!("{}", text(&out));
    assert!(out.status.success(), "the SDK's tests failed");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        !report.contains("SKIPPED"),
        "an SDK test was skipped in its world"
    );
    assert!(
        w.daemon_pid().is_some(),
        "the SDK started the daemon it needed"
    );
    assert!(
        w.names(&["vm", "list"]).is_empty(),
        "the SDK's sandboxes are gone"
    );
    eprintln!("    {:?}", t.elapsed());
}
