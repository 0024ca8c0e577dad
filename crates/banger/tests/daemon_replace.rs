//! A daemon built from other sources is stopped and replaced. Kept alone in
//! its own test binary because it sets environment variables.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use banger_cli::BuildInfo;
use banger_cli::daemon_ctl::{DaemonTarget, ensure_daemon};
use banger_paths::Layout;
use common::{World, alive};

#[test]
fn a_daemon_from_another_build_is_replaced() {
    let world = World::new();
    let old = world.banger_json(&["ping"]);
    let old_pid = old["pid"].as_i64().unwrap() as u32;

    // A CLI whose build id differs from the running daemon's, as after a
    // rebuild. The real bangerd it then starts has the real build id, so
    // the replacement is also flagged as a mismatch (and used anyway).
    let envs = world.envs();
    let var = |name: &str| {
        envs.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone().into_os_string())
    };
    let target = DaemonTarget {
        layout: Layout::from_vars(var, 0).unwrap(),
        bangerd: common::BANGERD.into(),
        build: BuildInfo {
            version: "0.0.0",
            build_id: "another-build",
        },
    };
    // The spawned daemon must see this world's directories.
    let connected = with_world_env(&world, || ensure_daemon(&target)).unwrap();
    assert_eq!(connected.replaced_pid, Some(old_pid));
    assert!(connected.started);
    assert_ne!(connected.daemon.pid, old_pid, "a new daemon must serve");
    assert!(!alive(old_pid as i32), "the old daemon must be gone");

    // And the real CLI, whose build matches the new daemon, keeps it.
    let now = world.banger_json(&["ping"]);
    assert_eq!(now["pid"].as_i64(), Some(i64::from(connected.daemon.pid)));
}

/// Runs `f` with this world's environment, which the daemon that
/// `ensure_daemon` spawns inherits.
fn with_world_env<T>(world: &World, f: impl FnOnce() -> T) -> T {
    for (k, v) in world.envs() {
        // SAFETY: set_var is unsound only when another thread reads the
        // environment at the same time. This is the only test in this
        // binary (kept alone for that reason), so no other thread runs.
        unsafe { std::env::set_var(k, v) };
    }
    f()
}
