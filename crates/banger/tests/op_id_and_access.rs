//! The op id a failing CLI call prints is on the daemon's log lines of that
//! request; and only the daemon's own user can reach its socket.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{BANGER, World, is_root};

/// `op-` and the id characters that follow it at the end of `text`.
fn trailing_op_id(text: &str) -> String {
    let text = text.trim_end().trim_end_matches(')');
    let start = text.rfind("(op-").expect("error text ends with (op-...)") + 1;
    text[start..].to_owned()
}

#[test]
fn a_failing_cli_call_prints_the_op_id_found_in_the_daemon_log() {
    let world = World::new();
    let out = world.banger(&["rpc", "vm.teleport", r#"{"to":"mars"}"#]);
    assert_eq!(out.status.code(), Some(2), "unknown method exits 2");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: unknown method \"vm.teleport\" (op-"),
        "{stderr}"
    );
    let op_id = trailing_op_id(&stderr);

    let log = world.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&op_id)).collect();
    assert!(!lines.is_empty(), "{op_id} not in the daemon log:\n{log}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["span"]["op_id"], op_id.as_str(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("unknown_method")));

    // A handler error, with the caller's own op id, every line tagged.
    let out = world.banger(&["rpc", "daemon.status", "[1]", "--op-id", "op-fromcli1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.trim_end().ends_with("(op-fromcli1)"), "{stderr}");
    let log = world.log_text();
    let tagged: Vec<&str> = log.lines().filter(|l| l.contains("op-fromcli1")).collect();
    assert!(
        tagged
            .iter()
            .any(|l| l.contains("\"method\":\"daemon.status\"") && l.contains("bad_params")),
        "{log}"
    );
}

/// Runs the `banger` binary as `nobody` with this world's environment. The
/// binary is copied into the world first, since the build dir may not be
/// reachable for `nobody`.
fn banger_as_nobody(world: &World, args: &[&str]) -> std::process::Output {
    let bin = world.root().join("banger-copy");
    if !bin.exists() {
        common::install_executable(Path::new(BANGER), &bin);
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(&bin)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(world.envs())
        .env("BANGER_DAEMON_BIN", "/nonexistent/bangerd");
    cmd.output().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

#[test]
fn only_the_daemons_user_can_connect() {
    let world = World::new();
    world.banger_json(&["ping"]);
    assert_eq!(mode(&world.socket()), 0o600, "socket mode");
    assert_eq!(mode(&world.runtime_dir()), 0o700, "runtime dir mode");
    let owner = std::fs::metadata(world.socket()).unwrap().uid();
    assert_eq!(Some(owner), current_uid());

    if !is_root() {
        eprintln!(
            "skipping the cross-user half: it needs root to run a client as nobody (CI runs as root)"
        );
        return;
    }
    // Let `nobody` walk every directory down to banger's own, so only
    // banger's modes stand in the way.
    for dir in [world.root().to_path_buf(), world.root().join("run")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = banger_as_nobody(&world, &["ping"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");

    // Second layer: even with the modes opened up, the daemon checks the
    // peer's uid and refuses.
    std::fs::set_permissions(world.runtime_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(world.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = banger_as_nobody(&world, &["ping"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serves only its own user (op-"), "{stderr}");
    assert!(
        world
            .log_text()
            .contains("refused connection from another user")
    );

    // The owner is still served.
    world.banger_json(&["ping"]);
}

fn current_uid() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}
