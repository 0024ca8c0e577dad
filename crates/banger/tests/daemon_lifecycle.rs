//! The CLI starts, reuses, replaces and stops the real daemon.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use common::{World, alive, signal, wait_gone};

#[test]
fn ping_starts_the_daemon_once_and_reuses_it() {
    let world = World::new();
    assert!(!world.socket().exists());

    let first = world.banger_json(&["ping"]);
    let pid = first["pid"].as_i64().unwrap();
    assert!(alive(pid as i32), "daemon {pid} not running");

    let second = world.banger_json(&["ping"]);
    assert_eq!(
        second["pid"].as_i64(),
        Some(pid),
        "second ping must reuse the daemon"
    );
    assert_eq!(first["build_id"], second["build_id"]);

    let status = world.banger_json(&["daemon", "status"]);
    for field in [
        "version", "build_id", "pid", "uptime_s", "socket", "log_file",
    ] {
        assert!(
            !status[field].is_null(),
            "daemon status lacks {field}: {status}"
        );
    }
    assert_eq!(status["pid"].as_i64(), Some(pid));
    assert_eq!(status["socket"], world.socket().display().to_string());
    assert_eq!(status["log_file"], world.log_file().display().to_string());
    assert_eq!(status["store"]["schema_version"], 9);

    // The daemon survives the CLI, in its own session.
    let sid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = sid.rsplit(')').next().unwrap().split_whitespace().collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "bangerd should lead its own session"
    );

    let stopped = world.banger_json(&["daemon", "stop"]);
    assert_eq!(stopped["stopped"], true);
    assert!(!alive(pid as i32));
    assert!(!world.socket().exists(), "socket removed on shutdown");
    let again = world.banger_json(&["daemon", "stop"]);
    assert_eq!(again["stopped"], false);
}

#[test]
fn logs_are_readable_through_the_cli() {
    let world = World::new();
    world.banger_json(&["ping"]);
    let out = world.banger(&["daemon", "logs", "-n", "0"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("daemon started"), "{text}");
    let raw = world.banger(&["daemon", "logs", "--json"]);
    let first = String::from_utf8(raw.stdout).unwrap();
    let line = first
        .lines()
        .find(|l| l.contains("daemon started"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "INFO");
}

#[test]
fn a_missing_daemon_binary_is_a_clear_error() {
    let world = World::new();
    let out = world
        .command(common::BANGER)
        .env("BANGER_DAEMON_BIN", world.root().join("no-such-bangerd"))
        .arg("ping")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: start "), "{err}");
    assert!(err.contains("no-such-bangerd"), "{err}");
}

#[test]
fn a_daemon_that_cannot_start_is_reported_with_its_log() {
    let world = World::new();
    // A database from the future makes bangerd refuse to start.
    let db_dir = world.root().join("data/banger");
    std::fs::create_dir_all(&db_dir).unwrap();
    let status = std::process::Command::new("sqlite3")
        .arg(db_dir.join("banger.db"))
        .arg("PRAGMA user_version = 42;")
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("skipping: sqlite3 is not installed (scripts/test.sh installs it)");
        return;
    }
    let out = world.banger(&["ping"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bangerd exited during start"), "{err}");
    assert!(err.contains("schema version 42"), "{err}");
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let mut world = World::new();
    world.start_daemon(&[]);
    let pid = world.daemon_pid().unwrap();
    signal(pid, "TERM");
    assert!(wait_gone(pid), "bangerd ignored SIGTERM");
    assert!(!world.socket().exists(), "socket removed on SIGTERM");
    assert!(world.log_text().contains("\"signal\":\"SIGTERM\""));
}

#[test]
fn a_second_daemon_refuses_to_start() {
    let mut world = World::new();
    world.start_daemon(&[]);
    let pid = world.daemon_pid().unwrap();
    let out = world.command(common::BANGERD).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("another bangerd (pid {pid}) is already serving")),
        "{err}"
    );
    // The first one is unharmed.
    assert_eq!(
        world.banger_json(&["ping"])["pid"].as_i64(),
        Some(i64::from(pid))
    );
}

#[test]
fn after_a_crash_the_next_call_starts_a_new_daemon_over_the_stale_socket() {
    let world = World::new();
    let pid = world.banger_json(&["ping"])["pid"].as_i64().unwrap() as i32;
    signal(pid, "KILL");
    assert!(wait_gone(pid));
    assert!(
        world.socket().exists(),
        "kill -9 leaves the socket file behind"
    );
    let new = world.banger_json(&["ping"])["pid"].as_i64().unwrap() as i32;
    assert_ne!(new, pid);
    assert!(world.log_text().contains("removing stale socket"));
}

#[test]
fn bad_daemon_flags_are_clear_errors() {
    let world = World::new();
    let out = world
        .command(common::BANGERD)
        .args(["--log-level", "debgu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid log level \"debgu\""), "{err}");

    let out = world
        .command(common::BANGERD)
        .args(["--read-timeout", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--read-timeout must be a positive number"),
        "{err}"
    );
    assert!(!world.socket().exists());
}

/// An error with a source prints each cause once, end to end through the
/// CLI: with no helper listening, `banger doctor`'s helper line names the
/// OS error once and says how to install the helper (text and `--json`).
#[test]
fn doctor_prints_each_cause_of_a_missing_helper_once() {
    let mut world = World::new();
    let socket = world.root().join("no-helper.sock");
    world
        .extra_env
        .push(("BANGER_HELPER_SOCKET", socket.clone()));
    // ENOENT, as the OS words it: "No such file or directory (os error 2)".
    let os_error = std::io::Error::from_raw_os_error(2).to_string();
    let hint = "install it with `sudo banger system install`";

    // Text: other checks may fail on this host (no KVM, no kernel), so the
    // exit status is not the point; the helper's line is.
    let out = world.banger(&["doctor"]);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("[warn] helper "))
        .unwrap_or_else(|| panic!("no helper warning:\n{}", common::text(&out)));
    assert_eq!(line.matches(&os_error).count(), 1, "{line}");
    assert!(line.contains(hint), "{line}");
    assert!(line.contains(&socket.display().to_string()), "{line}");

    // Exits 1 if another check fails here, as the text does.
    let (_, report) = world.banger_json_status(&["doctor"]);
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "helper")
        .unwrap_or_else(|| panic!("no helper check: {report}"));
    let detail = check["detail"].as_str().unwrap();
    assert_eq!(check["status"], "warn", "{check}");
    assert_eq!(detail.matches(&os_error).count(), 1, "{detail}");
    assert!(detail.contains(hint), "{detail}");
    assert_eq!(check["fix"], "sudo banger system install", "{check}");
}
