//! End to end, snapshots (docs/snapshots.md): real guests under QEMU (TCG,
//! one vCPU) with the agent, driven through the real CLI. One world, run
//! serially: a warm template, `vm run --rm` restored from it, snapshot,
//! fork, restore, pause and resume, then crash tests that kill the daemon
//! at a named stage (`BANGER_FAULT_STALL_STAGE`).
//!
//! Needs root for the image build (mmdebstrap), like `vm_e2e`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{World, is_root, qemu_pids_with, signal, step, text, wait_gone};
use serde_json::Value;

/// The image every VM here uses (the agent_e2e image: cached after one build).
const IMAGE: &str = "agentpy";

fn world() -> World {
    common::template_world()
}

fn exec(w: &World, vm: &str, script: &str) -> Output {
    w.banger(&["vm", "exec", vm, "--", "sh", "-c", script])
}

/// Runs `script` in `vm` and returns its trimmed stdout, asserting success.
fn sh(w: &World, vm: &str, script: &str) -> String {
    let out = exec(w, vm, script);
    assert!(out.status.success(), "{vm}: {script}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ops(w: &World) -> Vec<Value> {
    w.banger_json(&["ops"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits (bounded) until an operation of `kind` on `target` has ended and
/// returns it.
fn wait_op_done(w: &World, kind: &str, target: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let found = ops(w)
            .into_iter()
            .find(|o| o["kind"] == kind && o["target"] == target && o["state"] != "running");
        if let Some(op) = found {
            return op;
        }
        assert!(
            Instant::now() < deadline,
            "no finished {kind} of {target}: {:?}",
            ops(w)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (bounded) until a running operation of `kind` reports `stage`.
fn wait_stage(w: &World, kind: &str, stage: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let at = ops(w).into_iter().any(|o| {
            o["kind"] == kind
                && o["state"] == "running"
                && o["stages"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|st| st["name"] == stage))
        });
        if at {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} never reached {stage:?}: {:?}",
            ops(w)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn snapshot_dirs(w: &World) -> Vec<String> {
    std::fs::read_dir(w.root().join("data/banger/snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn vm_dirs(w: &World) -> usize {
    std::fs::read_dir(w.root().join("data/banger/vms"))
        .map(|d| d.flatten().count())
        .unwrap_or(0)
}

fn host_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Restarts the daemon after a `kill -9`, with the fault injection off.
fn kill_daemon(w: &mut World, stalled: Child) {
    let pid = w.daemon_pid().expect("a daemon runs");
    signal(pid, "KILL");
    assert!(wait_gone(pid), "the daemon did not die");
    let mut stalled = stalled;
    let _ = stalled.kill();
    let _ = stalled.wait();
    w.extra_env
        .retain(|(k, _)| *k != "BANGER_FAULT_STALL_STAGE");
}

/// Starts a daemon that stalls at `stage`, and `banger ARGS` in the
/// background (it follows the operation until the daemon dies).
fn start_stalling(w: &mut World, stage: &str, args: &[&str]) -> Child {
    w.banger_ok(&["daemon", "stop"]);
    w.extra_env
        .push(("BANGER_FAULT_STALL_STAGE", PathBuf::from(stage)));
    w.banger_ok(&["ping"]);
    w.command(common::BANGER)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn snapshots_end_to_end() {
    if !is_root() {
        eprintln!("skipped: the image build needs root (mmdebstrap)");
        return;
    }
    let mut w = world();

    let t = step("the image with the agent; a cold create makes its template in the background");
    w.banger_ok(&["image", "build", "--name", IMAGE, "--packages", "python3"]);
    let out = w.banger(&["vm", "create", "--name", "src", "--image", IMAGE]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("launch vmm"),
        "the first create boots cold: {}",
        text(&out)
    );
    let warm = wait_op_done(&w, "image.warm", IMAGE, Duration::from_secs(300));
    assert_eq!(warm["state"], "succeeded", "{warm}");
    let templates: Vec<Value> = w
        .banger_json(&["snapshot", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "template")
        .cloned()
        .collect();
    assert_eq!(templates.len(), 1, "{templates:?}");
    assert_eq!(
        w.names(&["vm", "list"]),
        ["src"],
        "the template's vm is gone and hidden"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("vm run --rm restored from the template: prints hi, exits 3, leaves nothing");
    let started = Instant::now();
    let out = w.banger(&[
        "vm",
        "run",
        "--rm",
        "--image",
        IMAGE,
        "--",
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hi",
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restore from template"),
        "{}",
        text(&out)
    );
    assert_eq!(w.names(&["vm", "list"]), ["src"]);
    assert_eq!(vm_dirs(&w), 1, "only src's directory is left");
    eprintln!("    run from template took {took:?}");

    let t2 = step("state in src: a file on each disk and a running process");
    sh(
        &w,
        "src",
        "echo from-src > /root/marker; echo root-disk > /etc/marker; sync",
    );
    sh(
        &w,
        "src",
        "setsid sleep 4242 </dev/null >/dev/null 2>&1 & echo started",
    );
    let src_key = sh(&w, "src", "cat /etc/ssh/ssh_host_ed25519_key.pub");
    eprintln!("    {:?} {:?}", t.elapsed(), t2.elapsed());

    let t = step(
        "snapshot src (it keeps running), then fork 3 VMs from it (src keeps running in its QEMU)",
    );
    let src_pid = w.banger_json(&["vm", "show", "src"])["pid"]
        .as_i64()
        .unwrap();
    let snap = w.banger_json(&["vm", "snapshot", "src", "--name", "s1"]);
    assert_eq!(snap["name"], "s1", "{snap}");
    let src = w.banger_json(&["vm", "show", "src"]);
    assert_eq!(src["state"], "running");
    assert_eq!(src["pid"].as_i64().unwrap(), src_pid, "same qemu process");
    assert_eq!(sh(&w, "src", "cat /root/marker"), "from-src");
    let forked = w.banger_json(&["vm", "fork", "src", "--name", "f", "--count", "3"]);
    let forks: Vec<String> = forked["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(forks, ["f-1", "f-2", "f-3"], "{forked}");
    // src booted cold, so its RAM is a file of its own: the fork saved
    // device state only and src ran on, with its files, processes and
    // host key.
    let src = w.banger_json(&["vm", "show", "src"]);
    assert_eq!(src["state"], "running", "{src}");
    assert_eq!(
        src["pid"].as_i64().unwrap(),
        src_pid,
        "the same qemu process"
    );
    assert_eq!(sh(&w, "src", "cat /root/marker"), "from-src");
    assert!(
        sh(&w, "src", "pgrep -f 'sleep 4242' || true")
            .lines()
            .count()
            >= 1,
        "src keeps its process"
    );
    assert_eq!(
        sh(&w, "src", "cat /etc/ssh/ssh_host_ed25519_key.pub"),
        src_key
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("each fork: the file and the process, its own hostname, ssh port and host key");
    let mut keys = vec![src_key.clone()];
    let mut ports = vec![w.banger_json(&["vm", "show", "src"])["ssh_port"].clone()];
    for f in &forks {
        assert_eq!(
            sh(&w, f, "cat /root/marker /etc/marker"),
            "from-src\nroot-disk"
        );
        assert!(
            sh(&w, f, "pgrep -f 'sleep 4242' || true").lines().count() >= 1,
            "{f} has the process"
        );
        assert_eq!(sh(&w, f, "hostname"), *f);
        keys.push(sh(&w, f, "cat /etc/ssh/ssh_host_ed25519_key.pub"));
        ports.push(w.banger_json(&["vm", "show", f])["ssh_port"].clone());
        // Reached over ssh, with its own pin.
        let out = w.banger(&["vm", "ssh", f, "--", "hostname"]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), *f);
    }
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), keys.len(), "host keys differ: {keys:?}");
    let mut p = ports.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    p.sort();
    p.dedup();
    assert_eq!(p.len(), ports.len(), "ssh ports differ: {ports:?}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("a write in one fork is not seen by the others or the source");
    sh(&w, "f-1", "echo only-f1 > /root/f1-file; sync");
    for other in ["f-2", "f-3", "src"] {
        assert_eq!(
            sh(&w, other, "test -e /root/f1-file && echo yes || echo no"),
            "no"
        );
    }
    eprintln!("    {:?}", t.elapsed());

    let t = step("vm restore brings src back to s1's files");
    sh(&w, "src", "echo changed > /root/marker; sync");
    let restored = w.banger_json(&["vm", "restore", "src", "s1"]);
    assert_eq!(restored["state"], "running", "{restored}");
    assert_eq!(sh(&w, "src", "cat /root/marker"), "from-src");
    assert_eq!(
        sh(&w, "src", "cat /etc/ssh/ssh_host_ed25519_key.pub"),
        src_key,
        "the same vm keeps its host key"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("pause 5 s, resume: the guest clock is within 1 s of the host's");
    let paused = w.banger_json(&["vm", "pause", "src"]);
    assert_eq!(paused["state"], "paused");
    // The pause itself is what is tested: the guest's clock stands still
    // for these 5 s and must be stepped on resume.
    std::thread::sleep(Duration::from_secs(5));
    let resumed = w.banger_json(&["vm", "resume", "src"]);
    assert_eq!(resumed["state"], "running");
    let before = host_now();
    let guest: f64 = sh(&w, "src", "date +%s.%N").parse().unwrap();
    let after = host_now();
    assert!(
        guest > before - 1.0 && guest < after + 1.0,
        "guest clock {guest} vs host {before}..{after}"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("src (booted cold) has a RAM file of its own: a fork keeps it in its QEMU");
    let src_id = w.banger_json(&["vm", "show", "src"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ram_files_of(&w, &src_id).len(), 1, "src's RAM file");
    let src_pid = w.banger_json(&["vm", "show", "src"])["pid"]
        .as_i64()
        .unwrap();
    sh(&w, "src", "echo second > /root/marker2; sync");
    let forked = w.banger_json(&["vm", "fork", "src", "--name", "h"]);
    assert_eq!(forked["vms"][0]["name"], "h", "{forked}");
    let src = w.banger_json(&["vm", "show", "src"]);
    assert_eq!(src["state"], "running", "{src}");
    assert_eq!(
        src["pid"].as_i64().unwrap(),
        src_pid,
        "the same qemu process"
    );
    assert_eq!(sh(&w, "h", "cat /root/marker2; hostname"), "second\nh");
    assert!(
        sh(&w, "h", "pgrep -f 'sleep 4242' || true").lines().count() >= 1,
        "h has the process"
    );
    assert_eq!(sh(&w, "src", "cat /root/marker2"), "second");
    w.banger_ok(&["vm", "delete", "--force", "h"]);
    assert!(
        !w.names(&["snapshot", "list"])
            .contains(&"h-base".to_owned())
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("a snapshot in use cannot be deleted; deleting the forks drops their base");
    let out = w.banger(&["snapshot", "delete", "s1"]);
    assert!(
        !out.status.success(),
        "s1 is src's base now: {}",
        text(&out)
    );
    assert!(
        w.names(&["snapshot", "list"])
            .contains(&"f-base".to_owned())
    );
    for f in &forks {
        w.banger_ok(&["vm", "delete", "--force", f]);
    }
    assert!(
        !w.names(&["snapshot", "list"])
            .contains(&"f-base".to_owned()),
        "{:?}",
        w.names(&["snapshot", "list"])
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("crash: kill -9 while a snapshot has src paused; the next start resumes it");
    let child = start_stalling(
        &mut w,
        "copy disks",
        &["vm", "snapshot", "src", "--name", "crash1"],
    );
    wait_stage(&w, "vm.snapshot", "copy disks", Duration::from_secs(60));
    kill_daemon(&mut w, child);
    let src = w.banger_json(&["vm", "show", "src"]);
    assert_eq!(src["state"], "running", "{src}");
    assert!(
        !w.names(&["snapshot", "list"])
            .contains(&"crash1".to_owned())
    );
    assert!(
        snapshot_dirs(&w).iter().all(|d| !d.starts_with(".tmp-")),
        "{:?}",
        snapshot_dirs(&w)
    );
    // The guest runs again (and its filesystems thaw within the agent's
    // freeze timeout): a write completes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = exec(&w, "src", "touch /root/after-crash && echo ok");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "src never ran again: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("    {:?}", t.elapsed());

    let t =
        step("crash: kill -9 while a fork has src paused; src runs again, no fork or base is left");
    let child = start_stalling(&mut w, "save memory", &["vm", "fork", "src", "--name", "g"]);
    wait_stage(&w, "vm.fork", "save memory", Duration::from_secs(60));
    kill_daemon(&mut w, child);
    w.banger_ok(&["ping"]);
    assert_eq!(w.banger_json(&["vm", "show", "src"])["state"], "running");
    assert_eq!(w.names(&["vm", "list"]), ["src"]);
    assert!(
        !w.names(&["snapshot", "list"])
            .contains(&"g-base".to_owned())
    );
    assert!(
        snapshot_dirs(&w).iter().all(|d| !d.starts_with(".tmp-")),
        "{:?}",
        snapshot_dirs(&w)
    );
    let out = exec(&w, "src", "touch /root/after-fork-crash && echo ok");
    assert!(out.status.success(), "src runs: {}", text(&out));
    eprintln!("    {:?}", t.elapsed());

    let t = step(
        "crash: kill -9 while a snapshot streams the RAM of a vm restored from the template; no builder is left",
    );
    w.banger_ok(&["vm", "create", "--name", "t2", "--image", IMAGE]);
    let t2_id = w.banger_json(&["vm", "show", "t2"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        ram_files_of(&w, &t2_id).is_empty(),
        "t2 maps the template's RAM"
    );
    let child = start_stalling(
        &mut w,
        "prepare fast restore",
        &["vm", "snapshot", "t2", "--name", "g"],
    );
    wait_stage(
        &w,
        "vm.snapshot",
        "prepare fast restore",
        Duration::from_secs(60),
    );
    kill_daemon(&mut w, child);
    w.banger_ok(&["ping"]);
    assert!(
        qemu_pids_with("banger-snap-").is_empty(),
        "a snapshot builder is left"
    );
    assert!(!w.names(&["snapshot", "list"]).contains(&"g".to_owned()));
    assert_eq!(w.names(&["vm", "list"]), ["src", "t2"]);
    assert!(
        snapshot_dirs(&w).iter().all(|d| !d.starts_with(".tmp-")),
        "{:?}",
        snapshot_dirs(&w)
    );
    assert_eq!(w.banger_json(&["vm", "show", "src"])["state"], "running");
    assert_eq!(w.banger_json(&["vm", "show", "t2"])["state"], "running");
    eprintln!("    {:?}", t.elapsed());

    let t = step(
        "a fork of t2 streams its RAM, and t2 continues from the fork's snapshot on a RAM file of its own",
    );
    let t2_pid = w.banger_json(&["vm", "show", "t2"])["pid"]
        .as_i64()
        .unwrap();
    sh(&w, "t2", "echo in-t2 > /root/t2-marker; sync");
    let forked = w.banger_json(&["vm", "fork", "t2", "--name", "t2f"]);
    assert_eq!(forked["vms"][0]["name"], "t2f", "{forked}");
    let t2 = w.banger_json(&["vm", "show", "t2"]);
    assert_eq!(t2["state"], "running", "{t2}");
    assert_ne!(t2["pid"].as_i64().unwrap(), t2_pid, "a new qemu process");
    assert_eq!(ram_files_of(&w, &t2_id).len(), 1, "t2's own RAM file");
    assert_eq!(sh(&w, "t2", "cat /root/t2-marker"), "in-t2");
    assert_eq!(sh(&w, "t2f", "cat /root/t2-marker; hostname"), "in-t2\nt2f");
    w.banger_ok(&["vm", "delete", "--force", "t2f"]);
    w.banger_ok(&["vm", "delete", "--force", "t2"]);
    assert!(ram_files_of(&w, &t2_id).is_empty(), "t2's RAM file is gone");
    eprintln!("    {:?}", t.elapsed());

    let t = step("crash: kill -9 during a template build; its hidden vm is removed on start");
    let template = w
        .banger_json(&["snapshot", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "template")
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .unwrap();
    w.banger_ok(&["snapshot", "delete", &template]);
    let dirs_before = vm_dirs(&w);
    let child = start_stalling(&mut w, "wait for ssh", &["image", "warm", IMAGE]);
    wait_stage(&w, "image.warm", "wait for ssh", Duration::from_secs(120));
    assert_eq!(
        vm_dirs(&w),
        dirs_before + 1,
        "the hidden vm exists while it builds"
    );
    kill_daemon(&mut w, child);
    w.banger_ok(&["ping"]);
    assert_eq!(
        vm_dirs(&w),
        dirs_before,
        "the hidden vm's directory is gone"
    );
    assert_eq!(w.names(&["vm", "list"]), ["src"]);
    // src's QEMU, and its user-mode network's processes (supervisor,
    // pasta): nothing of the hidden vm's.
    let vms = w.root().join("data/banger/vms");
    assert_eq!(
        common::qemu_pids_with(&vms.to_string_lossy()).len(),
        1,
        "only src's qemu runs"
    );
    let src_dir = vms.join(
        w.banger_json(&["vm", "show", "src"])["id"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        common::processes_mentioning(&vms),
        common::processes_mentioning(&src_dir),
        "only src's processes run"
    );
    assert!(
        w.names(&["snapshot", "list"])
            .iter()
            .all(|n| !n.starts_with("template-"))
    );
    eprintln!("    {:?}", t.elapsed());

    w.banger_ok(&["vm", "delete", "--force", "src"]);
    assert_eq!(vm_dirs(&w), 0);
    assert!(
        ram_files_of(&w, &src_id).is_empty(),
        "src's RAM file is gone"
    );
    w.banger_ok(&["daemon", "stop"]);
    assert!(
        !w.ram_dir().exists(),
        "the daemon removes its empty RAM directory when it exits"
    );
}

/// VM `id`'s own RAM file in the world's RAM directory, if it has one
/// (crates/daemon/src/vms/ram.rs).
fn ram_files_of(w: &World, id: &str) -> Vec<PathBuf> {
    let p = w.ram_dir().join(format!("{id}.mem"));
    if p.exists() { vec![p] } else { Vec::new() }
}
