//! `banger update`: the installed binaries (copies of this build's in a
//! private bin dir, never /usr/local) are replaced by a "new build" and
//! the daemon restarted; a broken new build is refused or rolled back
//! (the old files byte-identical, the old daemon answering); an
//! operation in flight refuses the update; a running VM keeps running.
//!
//! The "new build" is this build's binaries with their build id (12 hex
//! digits compiled in by crates/banger/build.rs) rewritten in place to
//! another id of the same length: the CLI and the daemon then are a
//! build of their own, as after a rebuild, without a second cargo build.
//!
//! The VM scenario needs root (the default image is built with
//! mmdebstrap) and QEMU; it prints why and passes vacuously without.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    BANGER, BANGERD, World, alive, install_executable, install_script, is_root, step, text,
};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_banger-helper");
const NAMES: [&str; 4] = ["banger", "bangerd", "banger-helper", "banger-agent"];

/// This build's id, as `banger --version` says it.
fn build_id_of(binary: &Path) -> String {
    let out = Command::new(binary).arg("--version").output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    line.trim()
        .rsplit_once("(build ")
        .and_then(|(_, id)| id.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no build id in {line:?}"))
        .to_owned()
}

/// Another id of the same length: every hex digit moved on by one.
fn other_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            let d = c.to_digit(16).unwrap();
            std::char::from_digit((d + 1) % 16, 16).unwrap()
        })
        .collect()
}

/// A copy of `source` at `dest` with every occurrence of `old` (the build
/// id) replaced by `new`.
fn install_rebuilt(source: &Path, dest: &Path, old: &str, new: &str) {
    assert_eq!(old.len(), new.len());
    let mut bytes = std::fs::read(source).unwrap();
    let mut found = 0;
    let mut i = 0;
    while i + old.len() <= bytes.len() {
        if &bytes[i..i + old.len()] == old.as_bytes() {
            bytes[i..i + old.len()].copy_from_slice(new.as_bytes());
            found += 1;
            i += old.len();
        } else {
            i += 1;
        }
    }
    assert!(found > 0, "no build id {old} in {}", source.display());
    let staged = dest.with_extension("bytes");
    std::fs::write(&staged, bytes).unwrap();
    install_executable(&staged, dest);
    std::fs::remove_file(staged).unwrap();
}

/// This build's four binaries in `dir`, as scripts/quickstart.sh
/// installs them.
fn install_current(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, source) in [
        ("banger", PathBuf::from(BANGER)),
        ("bangerd", PathBuf::from(BANGERD)),
        ("banger-helper", PathBuf::from(HELPER)),
        ("banger-agent", common::static_agent()),
    ] {
        install_executable(&source, &dir.join(name));
    }
}

/// A "new build" in `dir`: this build's binaries under the id `new`
/// (the agent as it is: it carries no build id).
fn install_new_build(dir: &Path, old: &str, new: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, source) in [
        ("banger", BANGER),
        ("bangerd", BANGERD),
        ("banger-helper", HELPER),
    ] {
        install_rebuilt(Path::new(source), &dir.join(name), old, new);
    }
    install_executable(&common::static_agent(), &dir.join("banger-agent"));
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn hashes(dir: &Path) -> Vec<String> {
    NAMES.iter().map(|n| sha256(&dir.join(n))).collect()
}

/// The installation a test world updates: its private bin dir, and the
/// world set up to start the daemon from there.
struct Installed {
    bin: PathBuf,
}

impl Installed {
    fn new(w: &mut World) -> Self {
        let bin = w.root().join("bin");
        install_current(&bin);
        w.extra_env.push(("BANGER_DAEMON_BIN", bin.join("bangerd")));
        Self { bin }
    }

    /// Runs the installed `banger ARGS`.
    fn banger(&self, w: &World, args: &[&str]) -> Output {
        w.command(self.bin.join("banger").to_str().unwrap())
            .args(args)
            .output()
            .unwrap()
    }

    fn banger_json(&self, w: &World, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.banger(w, &all);
        assert!(out.status.success(), "banger {all:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `banger update --from DIR ARGS`, with a helper config that does not
    /// exist (this host's root helper is not the test's to reinstall).
    fn update(&self, w: &World, from: &Path, more: &[&str]) -> Output {
        let config = w.root().join("no-helper.json");
        let mut args = vec![
            "update",
            "--from",
            from.to_str().unwrap(),
            "--helper-config",
            config.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        self.banger(w, &args)
    }

    /// No NAME.old or staged copy left beside the binaries.
    fn assert_no_leftovers(&self) {
        let mut names: Vec<String> = std::fs::read_dir(&self.bin)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
        expected.sort();
        assert_eq!(
            names,
            expected,
            "only the four binaries in {}",
            self.bin.display()
        );
    }
}

fn daemon_build(inst: &Installed, w: &World) -> (String, i64) {
    let status = inst.banger_json(w, &["daemon", "status"]);
    (
        status["build_id"].as_str().unwrap().to_owned(),
        status["pid"].as_i64().unwrap(),
    )
}

#[test]
fn broken_builds_are_refused_or_rolled_back_and_a_good_one_goes_in() {
    let mut w = World::new();
    let inst = Installed::new(&mut w);
    let old_id = build_id_of(&inst.bin.join("banger"));
    let new_id = other_id(&old_id);
    let ping = inst.banger_json(&w, &["ping"]);
    assert_eq!(ping["build_id"], old_id.as_str());
    let old_pid = ping["pid"].as_i64().unwrap();
    let before = hashes(&inst.bin);

    step("a new banger-helper that does not run: refused, naming it, nothing changed");
    let broken = w.root().join("broken-helper");
    install_new_build(&broken, &old_id, &new_id);
    install_script(
        &broken.join("banger-helper"),
        "#!/bin/sh\necho 'segfault' >&2\nexit 139\n",
    );
    let out = inst.update(&w, &broken, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}/banger-helper does not run", broken.display()))
            && stderr.contains("segfault"),
        "{stderr}"
    );
    assert_eq!(hashes(&inst.bin), before);
    assert_eq!(daemon_build(&inst, &w), (old_id.clone(), old_pid));

    step("binaries of two builds: refused");
    let mixed = w.root().join("mixed");
    install_new_build(&mixed, &old_id, &new_id);
    install_executable(Path::new(BANGERD), &mixed.join("bangerd"));
    let out = inst.update(&w, &mixed, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("of different builds"),
        "{}",
        text(&out)
    );

    step("a new bangerd that exits at once: the old binaries come back, the old daemon answers");
    let dying = w.root().join("dying");
    install_new_build(&dying, &old_id, &new_id);
    install_script(
        &dying.join("bangerd"),
        &format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'bangerd 0.1.0 (build {new_id})'; exit 0; fi\n\
             echo 'bangerd: cannot start' >&2\nexit 1\n"
        ),
    );
    let out = inst.update(&w, &dying, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("update rolled back") && stderr.contains("bangerd exited during start"),
        "{stderr}"
    );
    assert_eq!(hashes(&inst.bin), before, "byte-identical old binaries");
    inst.assert_no_leftovers();
    let (id, pid) = daemon_build(&inst, &w);
    assert_eq!(id, old_id, "the old daemon answers");
    assert_ne!(pid, old_pid, "it was restarted");
    assert!(alive(pid as i32));
    let old_pid = pid;

    step("--dry-run: says what it would do, changes nothing");
    let new = w.root().join("new");
    install_new_build(&new, &old_id, &new_id);
    let out = inst.update(&w, &new, &["--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["new_build_id"], new_id.as_str());
    assert_eq!(hashes(&inst.bin), before);
    assert_eq!(daemon_build(&inst, &w), (old_id.clone(), old_pid));

    step("a good new build: swapped, the new daemon answers with its build id");
    let t = Instant::now();
    let out = inst.update(&w, &new, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("    update took {:?}", t.elapsed());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["old_build_id"], old_id.as_str(), "{summary}");
    assert_eq!(summary["new_build_id"], new_id.as_str(), "{summary}");
    assert_eq!(summary["daemon"]["old_pid"], old_pid, "{summary}");
    assert_eq!(summary["daemon"]["build_id"], new_id.as_str(), "{summary}");
    assert_eq!(summary["helper"]["state"], "not_installed", "{summary}");
    let replaced: Vec<&str> = summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["replaced"] == true)
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        replaced,
        ["banger-helper", "bangerd", "banger"],
        "the agent is the same"
    );
    assert_eq!(hashes(&inst.bin), hashes(&new));
    inst.assert_no_leftovers();
    assert!(!alive(old_pid as i32), "the old daemon is gone");
    let (id, pid) = daemon_build(&inst, &w);
    assert_eq!(id, new_id);
    assert_eq!(
        build_id_of(&inst.bin.join("banger")),
        new_id,
        "the installed banger is the new one"
    );

    step("again: nothing to do");
    let again = inst.update(&w, &new, &["--json"]);
    assert!(again.status.success(), "{}", text(&again));
    let summary: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["up_to_date"], true, "{summary}");
    assert_eq!(daemon_build(&inst, &w), (new_id.clone(), pid));
    inst.banger(&w, &["daemon", "stop"]);
}

/// Waits for the operation to end; its final view.
fn wait_op(inst: &Installed, w: &World, op_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let params = format!(r#"{{"op_id":"{op_id}","wait_ms":5000}}"#);
        let op = inst.banger_json_plain(w, &["rpc", "op.status", &params]);
        if op["state"] != "running" {
            return op;
        }
        assert!(Instant::now() < deadline, "{op_id} still runs: {op}");
    }
}

impl Installed {
    /// `banger ARGS` printing JSON without a `--json` flag (`rpc`).
    fn banger_json_plain(&self, w: &World, args: &[&str]) -> Value {
        let out = self.banger(w, args);
        assert!(out.status.success(), "banger {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn have_qemu() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_running_vm_keeps_running_and_a_create_in_flight_refuses() {
    if !is_root() {
        eprintln!("skipped: the default image is built with mmdebstrap, which needs root");
        return;
    }
    if !have_qemu() {
        eprintln!("skipped: no qemu-system-x86_64 (scripts/deps.sh installs it)");
        return;
    }
    let mut w = common::vm_world();
    let inst = Installed::new(&mut w);
    let old_id = build_id_of(&inst.bin.join("banger"));
    let new_id = other_id(&old_id);
    let new = w.root().join("new");
    install_new_build(&new, &old_id, &new_id);

    let t = step("vm create keep (a real guest under TCG)");
    let out = inst.banger(&w, &["vm", "create", "--name", "keep"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("    {:?}", t.elapsed());
    let vm_id = inst.banger_json(&w, &["vm", "show", "keep"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let qemu = common::qemu_pids_with(&vm_id);
    assert_eq!(qemu.len(), 1, "one QEMU for keep: {qemu:?}");

    step("a create in flight: update refuses, naming it");
    let begun = inst.banger_json_plain(&w, &["rpc", "vm.create.begin", r#"{"name":"second"}"#]);
    let op_id = begun["op_id"].as_str().unwrap().to_owned();
    let before = hashes(&inst.bin);
    let out = inst.update(&w, &new, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in flight") && stderr.contains(&format!("vm.create second ({op_id})")),
        "{stderr}"
    );
    assert_eq!(hashes(&inst.bin), before);
    // The stop update makes: refused by the daemon itself while the
    // create runs (what closes the window after update's own check).
    let (_, pid) = daemon_build(&inst, &w);
    let out = inst.banger(&w, &["rpc", "daemon.shutdown", r#"{"if_idle":true}"#]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("in flight: vm.create second ({op_id})")),
        "{stderr}"
    );
    assert_eq!(daemon_build(&inst, &w).1, pid, "the daemon still serves");
    inst.banger_json_plain(
        &w,
        &["rpc", "op.cancel", &format!(r#"{{"op_id":"{op_id}"}}"#)],
    );
    let op = wait_op(&inst, &w, &op_id);
    assert_eq!(op["state"], "cancelled", "{op}");

    step("a new daemon that cannot start: rolled back, keep still runs");
    let dying = w.root().join("dying");
    install_new_build(&dying, &old_id, &new_id);
    install_script(
        &dying.join("bangerd"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && echo 'bangerd 0.1.0 (build {new_id})' && exit 0\nexit 1\n"
        ),
    );
    let out = inst.update(&w, &dying, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(hashes(&inst.bin), before, "byte-identical old binaries");
    assert_eq!(daemon_build(&inst, &w).0, old_id);

    let t = step("update --from a new build with keep running");
    let out = inst.update(&w, &new, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("    {:?}", t.elapsed());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["new_build_id"], new_id.as_str(), "{summary}");
    assert_eq!(daemon_build(&inst, &w).0, new_id);
    assert_eq!(
        common::qemu_pids_with(&vm_id),
        qemu,
        "the same QEMU process serves keep"
    );
    let out = inst.banger(&w, &["vm", "exec", "keep", "--", "true"]);
    assert!(out.status.success(), "the guest answers: {}", text(&out));
    let vm = inst.banger_json(&w, &["vm", "show", "keep"]);
    assert_eq!(vm["state"], "running", "{vm}");

    inst.banger(&w, &["vm", "delete", "--force", "keep"]);
    inst.banger(&w, &["daemon", "stop"]);
}

#[test]
fn a_daemon_run_by_its_systemd_user_unit_is_restarted_through_it() {
    let mut w = World::new();
    let inst = Installed::new(&mut w);
    let (script, calls) = common::fake_systemctl(&w, true);
    w.extra_env.push(("BANGER_SYSTEMCTL", script));
    let old_id = build_id_of(&inst.bin.join("banger"));
    let new_id = other_id(&old_id);
    let report = inst.banger_json(&w, &["daemon", "install", "--user"]);
    let old_pid = report["pid"].as_i64().unwrap();
    let new = w.root().join("new");
    install_new_build(&new, &old_id, &new_id);

    let out = inst.update(&w, &new, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["daemon"]["old_pid"], old_pid, "{summary}");
    let log = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        log.lines().last(),
        Some("--user start bangerd.service"),
        "the new daemon is started through the unit: {log}"
    );
    let (id, pid) = daemon_build(&inst, &w);
    assert_eq!(id, new_id);
    assert_eq!(summary["daemon"]["pid"], pid, "{summary}");
    inst.banger(&w, &["daemon", "stop"]);
    inst.banger(&w, &["daemon", "uninstall", "--user"]);
}
