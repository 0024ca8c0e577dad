//! `banger daemon install --user`: the systemd user unit, and the CLI
//! starting the daemon through `systemctl --user` when that unit is
//! installed, falling back to spawning it when systemctl fails.
//!
//! A fake `systemctl` (`BANGER_SYSTEMCTL`) records its arguments and, in
//! its working variant, does what systemd would: start the unit's
//! `ExecStart=` detached. The test against the real user instance runs
//! only where `systemctl --user` answers, and says why it does not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BANGERD, World, alive, text};

fn unit_file(world: &World) -> PathBuf {
    world.root().join("config/systemd/user/bangerd.service")
}

fn calls(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn install_writes_the_unit_and_falls_back_without_systemd() {
    let mut world = World::new();
    let (script, log) = common::fake_systemctl(&world, false);
    world.extra_env.push(("BANGER_SYSTEMCTL", script));

    // No user instance: the unit is written, the command fails saying so.
    let out = world.banger(&["daemon", "install", "--user"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not take it") && stderr.contains("Failed to connect to bus"),
        "{stderr}"
    );
    let unit = std::fs::read_to_string(unit_file(&world)).unwrap();
    let bangerd = std::fs::canonicalize(BANGERD).unwrap();
    assert!(
        unit.contains(&format!("\nExecStart={}\n", bangerd.display())),
        "{unit}"
    );
    let root = world.root().display().to_string();
    for line in [
        format!("Environment=\"XDG_DATA_HOME={root}/data\""),
        format!("Environment=\"XDG_STATE_HOME={root}/state\""),
        format!("Environment=\"XDG_RUNTIME_DIR={root}/run\""),
        format!("StandardOutput=append:{root}/state/banger/bangerd.log"),
        "KillMode=process".to_owned(),
        "WantedBy=default.target".to_owned(),
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line} in:\n{unit}");
    }
    assert_eq!(calls(&log), ["--user daemon-reload"]);

    // The unit is there, systemctl is not usable: ping spawns bangerd.
    let ping = world.banger_json(&["ping"]);
    assert!(alive(ping["pid"].as_i64().unwrap() as i32));
    assert_eq!(
        calls(&log).last().map(String::as_str),
        Some("--user start bangerd.service"),
        "the CLI tries systemd first"
    );

    // Uninstall removes the unit even though systemctl fails.
    let out = world.banger(&["daemon", "uninstall", "--user"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!unit_file(&world).exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("removing the unit anyway"));
    let again = world.banger_ok(&["daemon", "uninstall", "--user"]);
    assert!(again.contains("nothing to do"), "{again}");
    world.banger_ok(&["daemon", "stop"]);
}

#[test]
fn with_a_working_systemctl_the_cli_starts_the_unit() {
    let mut world = World::new();
    // A daemon banger started itself is handed over to systemd.
    let first = world.banger_json(&["ping"])["pid"].as_i64().unwrap();
    let (script, log) = common::fake_systemctl(&world, true);
    world.extra_env.push(("BANGER_SYSTEMCTL", script));
    let report = world.banger_json(&["daemon", "install", "--user"]);
    assert_eq!(report["replaced_pid"].as_i64(), Some(first), "{report}");
    assert!(!alive(first as i32));
    let second = report["pid"].as_i64().unwrap();
    assert_ne!(second, first);
    assert_eq!(
        calls(&log),
        [
            "--user daemon-reload",
            "--user enable --now bangerd.service"
        ]
    );

    // Stopped, the next command starts it through systemctl.
    world.banger_ok(&["daemon", "stop"]);
    let third = world.banger_json(&["ping"])["pid"].as_i64().unwrap();
    assert!(alive(third as i32));
    assert_eq!(
        calls(&log).last().map(String::as_str),
        Some("--user start bangerd.service")
    );

    // A unit for another bangerd is not used.
    world.banger_ok(&["daemon", "stop"]);
    let unit = std::fs::read_to_string(unit_file(&world)).unwrap();
    let other = unit
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                "ExecStart=/nonexistent/bangerd".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(unit_file(&world), other).unwrap();
    let before = calls(&log).len();
    world.banger_json(&["ping"]);
    assert_eq!(calls(&log).len(), before, "systemctl not called");
    world.banger_ok(&["daemon", "stop"]);

    let out = world.banger_json(&["daemon", "uninstall", "--user"]);
    assert_eq!(out["removed"], true);
    assert_eq!(
        calls(&log).last().map(String::as_str),
        Some("--user daemon-reload")
    );
}

/// The real thing, where the user's systemd instance answers.
#[test]
fn real_systemd_user_instance() {
    let usable = Command::new("systemctl")
        .args(["--user", "is-system-running"])
        .output()
        .map(|o| {
            let state = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            (state == "running" || state == "degraded", state)
        });
    match usable {
        Ok((true, _)) => {}
        Ok((false, state)) => {
            eprintln!(
                "skipped: no usable systemd user instance here (systemctl --user \
                 is-system-running said {state:?}); the fake-systemctl tests cover the CLI"
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: cannot run systemctl ({e})");
            return;
        }
    }
    // The user instance does not see this world's directories as its
    // own; installing would replace the real user's unit. Only the
    // unit's syntax is checked, with systemd-analyze.
    let mut world = World::new();
    let (script, _) = common::fake_systemctl(&world, false);
    world.extra_env.push(("BANGER_SYSTEMCTL", script));
    let _ = world.banger(&["daemon", "install", "--user"]);
    let verify = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(unit_file(&world))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
}
