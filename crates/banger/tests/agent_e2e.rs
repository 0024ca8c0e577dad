//! End to end, the guest agent (docs/agent.md): a real guest under QEMU (TCG)
//! with `banger-agent` baked into its image, reached over virtio-serial
//! (these hosts have no vhost-vsock), driven through the real CLI: create
//! waits for the agent, stats, ports, exec and cp.
//!
//! Needs root for the image build (mmdebstrap), like `vm_e2e`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{World, cache_home, is_root, step, text};
use serde_json::Value;

fn exec(w: &World, args: &[&str]) -> Output {
    let mut all = vec!["vm", "exec", "ag", "--"];
    all.extend_from_slice(args);
    w.banger(&all)
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn guest_agent_end_to_end() {
    if !is_root() {
        eprintln!("skipped: the image build needs root (mmdebstrap)");
        return;
    }
    let mut w = World::new();
    w.extra_env.push(("XDG_CACHE_HOME", cache_home()));
    w.extra_env.push(("BANGER_ACCEL", PathBuf::from("tcg")));
    w.extra_env
        .push(("BANGER_HELPER_SOCKET", w.root().join("no-helper.sock")));
    let agent = common::static_agent();
    w.extra_env.push(("BANGER_AGENT_BIN", agent));

    let t = step("an image with the agent (and python3); create waits for the agent, then ssh");
    w.banger_ok(&[
        "image",
        "build",
        "--name",
        "agentpy",
        "--packages",
        "python3",
    ]);
    let out = w.banger(&["vm", "create", "--name", "ag", "--image", "agentpy"]);
    assert!(out.status.success(), "{}", text(&out));
    let stages = String::from_utf8_lossy(&out.stderr);
    let agent_at = stages
        .find("wait for agent")
        .expect("a wait for agent stage");
    let ssh_at = stages.find("wait for ssh").expect("a wait for ssh stage");
    assert!(agent_at < ssh_at, "{stages}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("stats: memory total within 5% of the configured 1024 MiB");
    let s: Value = w.banger_json(&["vm", "stats", "ag"]);
    let total = s["memory_total_bytes"].as_f64().unwrap();
    let configured = 1024.0 * 1024.0 * 1024.0;
    assert!(
        (total - configured).abs() / configured < 0.05,
        "memory total {total} vs {configured}: {s}"
    );
    assert!(s["memory_used_bytes"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["uptime_s"].as_f64().unwrap() > 0.0, "{s}");
    let disks = s["disks"].as_array().unwrap();
    assert!(disks.iter().any(|d| d["mount"] == "/"), "{s}");
    assert!(disks.iter().any(|d| d["mount"] == "/root"), "{s}");
    assert!(s["cpu_percent"].is_number(), "cpu usage: {s}");
    // Back to back, well inside one CPU tick: still a figure, not a gap.
    let again: Value = w.banger_json(&["vm", "stats", "ag"]);
    assert!(
        again["cpu_percent"].is_number(),
        "a second sample has cpu usage: {again}"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("exec: exit codes, stdout and stderr apart, stdin passed");
    let out = exec(&w, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let out = exec(&w, &["sh", "-c", "echo to-out; echo to-err >&2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n");
    let mut child = w
        .command(common::BANGER)
        .args(["vm", "exec", "ag", "--", "sh", "-c", "tr a-z A-Z; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello agent\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO AGENT\n");
    let missing = exec(&w, &["no-such-command"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no-such-command"),
        "{}",
        text(&missing)
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("ports: a python3 http.server shows within 2 s of listening");
    let out = exec(
        &w,
        &[
            "sh",
            "-c",
            "cd /tmp && nohup python3 -m http.server 8080 >/dev/null 2>&1 &",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // When it listens, as the guest itself sees it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = exec(&w, &["sh", "-c", "ss -Hltn 'sport = :8080'"]);
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "http.server never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    let listening = Instant::now();
    let found = loop {
        let ports = w.banger_json(&["vm", "ports", "ag"]);
        let hit = ports
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == 8080)
            .cloned();
        if let Some(hit) = hit {
            break hit;
        }
        assert!(
            listening.elapsed() < Duration::from_secs(2),
            "8080 not in vm ports: {ports}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listening.elapsed() < Duration::from_secs(2));
    assert_eq!(found["proto"], "tcp", "{found}");
    assert!(
        found["process"]
            .as_str()
            .unwrap_or_default()
            .starts_with("python3"),
        "{found}"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("ports: a process name with control characters reaches no terminal raw");
    // A listener whose name (comm) the guest chose: ESC [31m would turn a
    // terminal red; the table shows it escaped.
    let out = exec(
        &w,
        &[
            "sh",
            "-c",
            r#"cd /tmp && nohup python3 -c "import ctypes, socket, time; ctypes.CDLL(None).prctl(15, b'ev\x1b[31mil', 0, 0, 0); s = socket.socket(); s.bind(('0.0.0.0', 8081)); s.listen(); time.sleep(600)" >/dev/null 2>&1 &"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    let found = loop {
        let ports = w.banger_json(&["vm", "ports", "ag"]);
        let hit = ports
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == 8081)
            .cloned();
        if let Some(hit) = hit {
            break hit;
        }
        assert!(Instant::now() < deadline, "8081 not in vm ports: {ports}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(found["process"], "ev\u{1b}[31mil", "{found}");
    let table = w.banger_ok(&["vm", "ports", "ag"]);
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(table.contains(r"ev\x1b[31mil"), "{table}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("cp: 100 MiB both ways keeps its sha256 and mode");
    let host = tempfile::tempdir().unwrap();
    let big = host.path().join("big.bin");
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=100", "status=none"])
        .arg(format!("of={}", big.display()))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).unwrap();
    let sum = sha256(&big);
    let started = Instant::now();
    w.banger_ok(&["vm", "cp", big.to_str().unwrap(), "ag:/root/big.bin"]);
    eprintln!("    to the guest: {:?}", started.elapsed());
    let out = exec(
        &w,
        &[
            "sh",
            "-c",
            "sha256sum /root/big.bin; stat -c %a /root/big.bin",
        ],
    );
    let guest = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(guest.starts_with(&sum), "guest sha256: {guest}");
    assert!(guest.trim_end().ends_with("640"), "guest mode: {guest}");
    let back_dir = host.path().join("back");
    std::fs::create_dir(&back_dir).unwrap();
    let started = Instant::now();
    w.banger_ok(&["vm", "cp", "ag:/root/big.bin", back_dir.to_str().unwrap()]);
    eprintln!("    from the guest: {:?}", started.elapsed());
    let back = back_dir.join("big.bin");
    assert_eq!(sha256(&back), sum);
    assert_eq!(
        std::fs::metadata(&back).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // A symlink at the destination is refused, and nothing is written
    // through it.
    let victim = host.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, back_dir.join("evil")).unwrap();
    let out = w.banger(&[
        "vm",
        "cp",
        "ag:/root/big.bin",
        back_dir.join("evil").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    let leftovers: Vec<_> = std::fs::read_dir(&back_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "only big.bin and evil: {leftovers:?}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("after a daemon restart the agent is reached again");
    let pid = w.daemon_pid().unwrap();
    common::signal(pid, "KILL");
    assert!(common::wait_gone(pid));
    let out = exec(&w, &["true"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("    {:?}", t.elapsed());

    w.banger_ok(&["vm", "delete", "ag"]);
}
