//! Faults the user did not cause (issue 11, "Faults"), end to end through
//! the real `banger` CLI and `bangerd`: a VMM killed under the daemon, the
//! daemon killed in the middle of a create's disk preparation and of a
//! delete, a data filesystem too full for a create or an image build, a
//! database locked by another process, damaged, or not a database at all.
//!
//! Two guest boots (QEMU, TCG) serve every VM fault, run serially (the
//! second after the guest powered itself off); the database tests need
//! no guest. The daemon is stopped at an exact point
//! with `BANGER_FAULT_STALL_STAGE` (op.rs), never raced.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{World, is_root, signal, step, text, wait_gone};
use serde_json::Value;

/// The store's busy timeout (crates/store/src/lib.rs, BUSY_TIMEOUT).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn data_dir(w: &World) -> PathBuf {
    w.root().join("data/banger")
}

fn db_path(w: &World) -> PathBuf {
    data_dir(w).join("banger.db")
}

fn vm_dirs(w: &World) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir(w).join("vms"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn show(w: &World, name: &str) -> Value {
    w.banger_json(&["vm", "show", name])
}

/// A tmpfs of `size` mounted on `dir` while it lives.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount a tmpfs: {}", text(&out));
        Self(dir.to_owned())
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Starts a daemon that stalls for good at `stage`, and `banger ARGS` in
/// the background; returns once the daemon has stalled there.
fn stall_at(w: &mut World, stage: &str, args: &[&str]) -> Child {
    w.banger_ok(&["daemon", "stop"]);
    w.extra_env
        .push(("BANGER_FAULT_STALL_STAGE", PathBuf::from(stage)));
    w.banger_ok(&["ping"]);
    let child = w
        .command(common::BANGER)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let needle = format!("\"{stage}\"");
    while !w
        .log_text()
        .lines()
        .any(|l| l.contains("stalling here") && l.contains(&needle))
    {
        assert!(Instant::now() < deadline, "never stalled at {stage:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// `kill -9` of the (stalled) daemon, then a fresh one without the stall.
fn kill_daemon(w: &mut World, mut stalled: Child) {
    let pid = w.daemon_pid().expect("a daemon runs");
    signal(pid, "KILL");
    // A killed process is gone once its last thread is; on a loaded
    // machine that has taken longer than wait_gone's 10 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wait_gone(pid) {
        assert!(Instant::now() < deadline, "the daemon did not die");
    }
    let _ = stalled.kill();
    let _ = stalled.wait();
    w.extra_env
        .retain(|(k, _)| *k != "BANGER_FAULT_STALL_STAGE");
    w.banger_ok(&["ping"]);
}

#[test]
fn vm_faults_end_to_end() {
    if !is_root() {
        eprintln!(
            "skipping faults_e2e: the image build (mmdebstrap) and the tmpfs mounts need root"
        );
        return;
    }
    let mut w = common::vm_world();

    let t = step("a running vm with a published port (builds the image on first use)");
    let publish = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = publish.local_addr().unwrap().port();
    drop(publish);
    let out = w.banger(&["vm", "create", "--name", "f1", "-p", &format!("{port}:22")]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("    {:?}", t.elapsed());
    assert_eq!(show(&w, "f1")["state"], "running");

    let t = step("the guest powers itself off: the vm is stopped, and says why");
    // The command may not return before the guest goes down.
    let _ = w.banger(&["vm", "exec", "f1", "--", "systemctl", "poweroff"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let f1 = loop {
        let v = show(&w, "f1");
        if v["state"] != "running" {
            break v;
        }
        assert!(Instant::now() < deadline, "never stopped: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(f1["state"], "stopped", "{f1}");
    let last_error = f1["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("the guest powered off or rebooted (exit status 0)"),
        "{last_error}"
    );
    assert!(f1["pid"].is_null(), "{f1}");
    eprintln!("    {:?}", t.elapsed());
    w.banger_ok(&["vm", "start", "f1"]);
    let f1 = show(&w, "f1");
    assert_eq!(f1["state"], "running", "{f1}");
    assert!(f1["last_error"].is_null(), "a start clears it: {f1}");
    let id = f1["id"].as_str().unwrap().to_owned();
    let pid = i32::try_from(f1["pid"].as_u64().unwrap()).unwrap();

    step("kill -9 of its qemu: within 2 s the daemon says so and its port is free");
    let killed = Instant::now();
    signal(pid, "KILL");
    let f1 = loop {
        let v = show(&w, "f1");
        if v["state"] != "running" {
            break v;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "still running 2 s after the kill: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "    noticed after {:?}: {}",
        killed.elapsed(),
        f1["last_error"]
    );
    assert_eq!(f1["state"], "stopped", "{f1}");
    let last_error = f1["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("qemu exited on its own (signal 9)"),
        "{last_error}"
    );
    assert!(
        last_error.contains(f1["console_log"].as_str().unwrap()),
        "names the console log: {last_error}"
    );
    assert!(f1["pid"].is_null() && f1["ssh_port"].is_null(), "{f1}");
    TcpListener::bind(("127.0.0.1", port)).expect("the published port is free");
    assert!(
        !data_dir(&w)
            .join("vms")
            .join(&id)
            .join("handles.json")
            .exists()
    );

    step("another process holds a write lock: a write fails clearly after the busy timeout");
    {
        let other = rusqlite::Connection::open(db_path(&w)).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let asked = Instant::now();
        let out = w.banger(&["vm", "edit", "f1", "--vcpus", "2"]);
        let took = asked.elapsed();
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("    after {took:?}: {}", err.trim());
        assert!(err.contains("is locked by another process"), "{err}");
        assert!(
            err.contains(&db_path(&w).display().to_string()),
            "names the file: {err}"
        );
        assert!(
            took >= BUSY_TIMEOUT && took < BUSY_TIMEOUT + Duration::from_secs(5),
            "failed after {took:?}"
        );
        // Reads go on meanwhile (WAL).
        assert_eq!(w.names(&["vm", "list"]), ["f1"]);
        other.execute_batch("ROLLBACK").unwrap();
    }
    w.banger_ok(&["vm", "edit", "f1", "--vcpus", "2"]);

    step("kill -9 of the daemon in the middle of a delete: the restart finishes it");
    let child = stall_at(&mut w, "delete: directory marked", &["vm", "delete", "f1"]);
    assert_eq!(vm_dirs(&w), [format!(".deleting-{id}")]);
    kill_daemon(&mut w, child);
    assert!(
        w.names(&["vm", "list"]).is_empty(),
        "{:?}",
        w.names(&["vm", "list"])
    );
    assert!(vm_dirs(&w).is_empty(), "{:?}", vm_dirs(&w));

    step("kill -9 of the daemon during a create's disk preparation: nothing is left");
    let child = stall_at(
        &mut w,
        "prepare work disk",
        &["vm", "create", "--name", "f2", "--no-start"],
    );
    assert_eq!(vm_dirs(&w).len(), 1, "the create's directory exists");
    kill_daemon(&mut w, child);
    assert!(
        w.names(&["vm", "list"]).is_empty(),
        "{:?}",
        w.names(&["vm", "list"])
    );
    assert!(vm_dirs(&w).is_empty(), "{:?}", vm_dirs(&w));

    step("a create whose disks do not fit: a clear error, nothing listed or left");
    {
        let _full = TinyFs::mount(&data_dir(&w).join("vms"), "256k");
        let out = w.banger(&["vm", "create", "--name", "f3", "--no-start"]);
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("    {}", err.trim());
        assert!(
            err.contains("not enough free space for the vm's disks"),
            "{err}"
        );
        assert!(err.contains("No space left on device"), "{err}");
        assert!(
            w.names(&["vm", "list"]).is_empty(),
            "{:?}",
            w.names(&["vm", "list"])
        );
        assert!(vm_dirs(&w).is_empty(), "{:?}", vm_dirs(&w));
    }

    step("an image build that does not fit: a clear error, nothing listed or left");
    {
        let images = data_dir(&w).join("images");
        let _full = TinyFs::mount(&images, "16m");
        let out = w.banger(&["image", "build", "--name", "tiny"]);
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("    {}", err.trim());
        assert!(
            err.contains("build image tiny: not enough free space"),
            "{err}"
        );
        assert!(!w.names(&["image", "list"]).contains(&"tiny".to_owned()));
        let left: Vec<_> = std::fs::read_dir(&images).unwrap().flatten().collect();
        assert!(left.is_empty(), "left in the images directory: {left:?}");
    }
    assert!(
        common::qemu_pids_with(w.root().to_str().unwrap()).is_empty(),
        "no qemu left"
    );
}

#[test]
fn a_file_of_garbage_as_the_database_makes_start_fail_with_a_hint() {
    let w = World::new();
    std::fs::create_dir_all(data_dir(&w)).unwrap();
    let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(db_path(&w), &garbage).unwrap();
    let out = w.banger(&["ping"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bangerd exited during start"), "{err}");
    assert!(
        err.contains(&format!(
            "database {} is damaged (file is not a database); move it aside",
            db_path(&w).display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(db_path(&w)).unwrap(), garbage, "untouched");
}

#[test]
fn doctor_finds_a_damaged_page_with_integrity_check() {
    let w = World::new();
    w.banger_ok(&["ping"]);
    let (_, report) = w.banger_json_status(&["doctor"]);
    let database = |report: &Value| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "database")
            .cloned()
            .unwrap_or_else(|| panic!("no database check: {report}"))
    };
    assert_eq!(database(&report)["status"], "ok", "{report}");
    w.banger_ok(&["daemon", "stop"]);

    // Overwrite the vms table's root page.
    let (page, page_size) = {
        let c = rusqlite::Connection::open(db_path(&w)).unwrap();
        let page: u64 = c
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'vms'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let size: u64 = c
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        (page, size)
    };
    let mut bytes = std::fs::read(db_path(&w)).unwrap();
    let start = usize::try_from((page - 1) * page_size).unwrap();
    let end = start + usize::try_from(page_size).unwrap();
    for b in &mut bytes[start..end] {
        *b = 0xff;
    }
    std::fs::write(db_path(&w), bytes).unwrap();

    let (_, report) = w.banger_json_status(&["doctor"]);
    let check = database(&report);
    assert_eq!(check["status"], "fail", "{check}");
    // SQLite either lists the damage or refuses the damaged page outright.
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("integrity check failed") || detail.contains("is damaged"),
        "{check}"
    );
    assert!(
        detail.contains(&db_path(&w).display().to_string()),
        "{check}"
    );
    assert!(
        detail.matches("malformed").count() <= 1,
        "each cause once: {detail}"
    );
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("move banger.db aside"),
        "{check}"
    );
}
