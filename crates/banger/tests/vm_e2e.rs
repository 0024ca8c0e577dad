//! End to end: real guests under QEMU (TCG, one vCPU), driven through the
//! real `banger` CLI. One world and one scenario, run serially, so a booted
//! guest serves several assertions (a boot costs ~15 s under TCG).
//!
//! Needs root-free QEMU, mmdebstrap (run as root) and the host's apt
//! sources; the kernel and base image are cached in the user's cache dir
//! (`~/.cache/banger`) so a second run is fast.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{World, alive, is_root, signal, step, text, wait_gone};
use serde_json::Value;

fn show(w: &World, name: &str) -> Value {
    w.banger_json(&["vm", "show", name])
}

fn vms_dir(w: &World) -> PathBuf {
    w.root().join("data/banger/vms")
}

fn known_hosts(w: &World) -> String {
    std::fs::read_to_string(w.root().join("data/banger/ssh/known_hosts")).unwrap_or_default()
}

/// ssh straight to a port with banger's key and pins, without the daemon.
fn raw_ssh(w: &World, port: u64, alias: &str, cmd: &str) -> Output {
    Command::new("ssh")
        .args(["-i"])
        .arg(w.root().join("data/banger/ssh/id_ed25519"))
        .args([
            "-p",
            &port.to_string(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
        ])
        .arg(format!(
            "-oUserKnownHostsFile={}",
            w.root().join("data/banger/ssh/known_hosts").display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("HostKeyAlias={alias}"),
        ])
        .arg("root@127.0.0.1")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_bad_input(w: &World, args: &[&str], code: i32, needle: &str) {
    let out = w.banger(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "banger {args:?}:\n{}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "banger {args:?}: expected {needle:?} in:\n{err}"
    );
}

#[test]
fn vm_lifecycle_end_to_end() {
    if !is_root() {
        eprintln!(
            "skipping vm_e2e: building the default image with mmdebstrap needs root (CI runs as root)"
        );
        return;
    }
    let w = common::vm_world();
    let t = step("create a (pulls the kernel and builds the image on first use)");
    let out = w.banger(&["vm", "create", "--name", "e2e-a"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for stage in [
        "prepare root disk (qcow2)",
        "prepare work disk",
        "launch vmm",
        "wait for ssh",
    ] {
        assert!(
            stderr.contains(stage),
            "stage {stage:?} not printed:\n{stderr}"
        );
    }
    assert!(stderr.contains(" s\n"), "stages carry durations:\n{stderr}");
    eprintln!("create took {:?}", t.elapsed());
    let a = show(&w, "e2e-a");
    assert_eq!(a["state"], "running");
    assert_eq!(a["disk_strategy"], "qcow2");
    assert_eq!(a["accel"], "tcg");
    let a_id = a["id"].as_str().unwrap().to_owned();
    let a_pid = a["pid"].as_i64().unwrap() as i32;
    assert_eq!(
        common::qemu_pids_with(&a_id),
        [a_pid],
        "the process finder sees the running vmm"
    );

    step("ssh runs commands, hostname is the vm name");
    assert_eq!(
        w.banger_ok(&["vm", "ssh", "e2e-a", "--", "echo", "hello"])
            .trim(),
        "hello"
    );
    assert_eq!(
        w.banger_ok(&["vm", "ssh", "e2e-a", "--", "hostname"])
            .trim(),
        "e2e-a"
    );
    // As with ssh, the words after `--` are one command line for the
    // guest's shell.
    w.banger_ok(&[
        "vm",
        "ssh",
        "e2e-a",
        "--",
        "echo persisted > /root/marker && sync",
    ]);
    let out = w.banger(&["vm", "ssh", "e2e-a", "--", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let out = w.banger(&[
        "vm", "ssh", "e2e-a", "--", "echo", "two", "words;", "exit", "3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two words\n");
    assert!(known_hosts(&w).contains("e2e-a.vm"), "host key pinned");

    step("logs, ops, kernel and image listings, in-use conflicts, doctor");
    let logs = w.banger_ok(&["vm", "logs", "e2e-a", "-n", "200"]);
    assert!(
        logs.contains("e2e-a login:") || logs.contains("Debian"),
        "console log: {logs}"
    );
    let logs = w.banger_json_lines(&["vm", "logs", "e2e-a", "-n", "5"]);
    assert_eq!(logs.len(), 5, "{logs:?}");
    assert!(logs.iter().all(|l| l["line"].is_string()), "{logs:?}");
    let ops = w.banger_json(&["ops"]);
    let create_op = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "vm.create" && o["target"] == "e2e-a")
        .expect("vm.create op listed");
    assert_eq!(create_op["state"], "succeeded");
    assert!(
        create_op["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["duration_ms"].is_u64())
    );
    let kernels = w.banger_json(&["kernel", "list"]);
    assert!(
        kernels
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "debian-cloud" && k["present"] == true)
    );
    let images = w.banger_json(&["image", "list"]);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "default" && i["stale"] == false)
    );
    assert_bad_input(&w, &["image", "delete", "default"], 5, "in use by vm e2e-a");
    assert_bad_input(
        &w,
        &["kernel", "delete", "debian-cloud"],
        5,
        "in use by vm e2e-a",
    );
    // A FAIL exits 1, with --json as without.
    let (code, doctor) = w.banger_json_status(&["doctor", "--probe"]);
    let checks = doctor["checks"].as_array().unwrap();
    let failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(code, Some(i32::from(failed)), "{doctor}");
    let status_of = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status_of("qemu").as_deref(), Some("ok"), "{doctor}");
    assert_eq!(status_of("kernel").as_deref(), Some("ok"), "{doctor}");
    assert_eq!(doctor["accel"], "tcg");
    assert!(
        doctor["accel_reason"]
            .as_str()
            .unwrap()
            .contains("BANGER_ACCEL"),
        "{doctor}"
    );
    if Path::new("/dev/kvm").exists() {
        assert!(
            status_of("kvm probe").is_some(),
            "the probe ran and was recorded: {doctor}"
        );
    }

    step("ssh-config lets plain ssh reach NAME.vm");
    let config = w.banger_ok(&["ssh-config"]);
    assert!(
        config.contains("Host *.vm") && config.contains("ProxyCommand"),
        "{config}"
    );
    let config_file = w.root().join("ssh_config");
    std::fs::write(&config_file, &config).unwrap();
    let out = w
        .command("ssh")
        .arg("-F")
        .arg(&config_file)
        .args(["-o", "BatchMode=yes", "e2e-a.vm", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "e2e-a",
        "{}",
        text(&out)
    );

    step("stop, start: the work disk keeps its files");
    let stopped = w.banger_json(&["vm", "stop", "e2e-a"]);
    assert_eq!(stopped["state"], "stopped");
    assert!(!alive(a_pid), "qemu exits on stop");
    assert!(stopped["pid"].is_null());
    step("edit a stopped vm: memory, disk size; editing a running vm is refused");
    let edited = w.banger_json(&[
        "vm",
        "edit",
        "e2e-a",
        "--memory",
        "768M",
        "--disk-size",
        "9G",
    ]);
    assert_eq!(edited["memory_mib"], 768);
    assert_eq!(edited["disk_size_bytes"], 9u64 << 30);
    assert_bad_input(
        &w,
        &["vm", "edit", "e2e-a", "--disk-size", "1G"],
        2,
        "disks only grow",
    );
    assert_bad_input(
        &w,
        &["vm", "edit", "e2e-a", "--vcpus", "0"],
        2,
        "invalid vcpus",
    );
    let started = w.banger_json(&["vm", "start", "e2e-a"]);
    assert_eq!(started["state"], "running");
    assert_eq!(
        w.banger_ok(&["vm", "ssh", "e2e-a", "--", "cat", "/root/marker"])
            .trim(),
        "persisted"
    );
    let mem_kib: u64 = w
        .banger_ok(&[
            "vm",
            "ssh",
            "e2e-a",
            "--",
            "awk '/MemTotal/{print $2}' /proc/meminfo",
        ])
        .trim()
        .parse()
        .unwrap();
    assert!(
        (600_000..=786_432).contains(&mem_kib),
        "MemTotal {mem_kib} KiB for 768 MiB"
    );
    let root_bytes: u64 = w
        .banger_ok(&[
            "vm",
            "ssh",
            "e2e-a",
            "--",
            "df",
            "-B1",
            "--output=size",
            "/root",
        ])
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        root_bytes > 8u64 << 30,
        "/root is {root_bytes} bytes after growing to 9G"
    );
    assert_bad_input(
        &w,
        &["vm", "edit", "e2e-a", "--memory", "1G"],
        5,
        "stop it before editing",
    );

    step("restart");
    let before = show(&w, "e2e-a")["pid"].as_i64().unwrap();
    let out = w.banger(&["vm", "restart", "e2e-a"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for stage in ["restarting vm e2e-a", "stop vm", "launch vmm"] {
        assert!(stderr.contains(stage), "{stage:?} not printed:\n{stderr}");
    }
    let restarted = show(&w, "e2e-a");
    assert_eq!(restarted["state"], "running");
    assert_ne!(restarted["pid"].as_i64().unwrap(), before);
    assert_eq!(
        w.banger_ok(&["vm", "ssh", "e2e-a", "--", "cat", "/root/marker"])
            .trim(),
        "persisted"
    );

    step("user-mode egress internet: the outside is reached, the host's loopback is not");
    let host_only = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_only.local_addr().unwrap().port();
    let out = w.banger(&[
        "vm",
        "ssh",
        "e2e-a",
        "--",
        &format!("bash -c 'echo from-guest > /dev/tcp/10.0.2.2/{host_port}'"),
    ]);
    assert!(
        !out.status.success(),
        "the host's loopback answered: {}",
        text(&out)
    );
    host_only.set_nonblocking(true).unwrap();
    assert!(host_only.accept().is_err(), "a connection reached the host");
    // A public address, when the host itself reaches one.
    match ["1.1.1.1:80", "8.8.8.8:53"].into_iter().find(|a| {
        std::net::TcpStream::connect_timeout(&a.parse().unwrap(), Duration::from_secs(3)).is_ok()
    }) {
        Some(addr) => {
            let (ip, port) = addr.split_once(':').unwrap();
            w.banger_ok(&[
                "vm",
                "ssh",
                "e2e-a",
                "--",
                &format!("timeout 10 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'"),
            ]);
        }
        None => {
            eprintln!("    note: the host reaches no public address; the outside is not checked")
        }
    }

    step("a second vm runs beside the first, on its own port, with a published port");
    let publish = TcpListener::bind("127.0.0.1:0").unwrap();
    let published = publish.local_addr().unwrap().port();
    drop(publish);
    w.banger_ok(&[
        "vm",
        "create",
        "--name",
        "e2e-b",
        "--memory",
        "512M",
        "-p",
        &format!("{published}:22"),
    ]);
    let mut banner = [0u8; 4];
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", published)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Read::read_exact(&mut conn, &mut banner).unwrap();
    assert_eq!(&banner, b"SSH-", "published port forwards to the guest");
    drop(conn);
    let a = show(&w, "e2e-a");
    let b = show(&w, "e2e-b");
    assert_ne!(a["ssh_port"], b["ssh_port"]);
    assert_eq!(
        w.banger_ok(&["vm", "ssh", "e2e-a", "--", "hostname"])
            .trim(),
        "e2e-a"
    );
    assert_eq!(
        w.banger_ok(&["vm", "ssh", "e2e-b", "--", "hostname"])
            .trim(),
        "e2e-b"
    );
    let listed = w.banger_json(&["vm", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);

    step("a changed host key is refused loudly");
    let pins_path = w.root().join("data/banger/ssh/known_hosts");
    let pins = known_hosts(&w);
    let key_of = |alias: &str| {
        pins.lines()
            .find(|l| l.starts_with(alias))
            .map(|l| l.split_once(' ').unwrap().1.to_owned())
            .unwrap()
    };
    let forged = pins.replace(&key_of("e2e-a.vm"), &key_of("e2e-b.vm"));
    std::fs::write(&pins_path, forged).unwrap();
    let out = w.banger(&["vm", "ssh", "e2e-a", "--", "true"]);
    std::fs::write(&pins_path, &pins).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IDENTIFICATION HAS CHANGED") || err.contains("Host key verification failed"),
        "{err}"
    );

    step("vm run --rm exits with the command's status and leaves no vm");
    let out = w.banger(&["vm", "run", "--rm", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let names: Vec<String> = w
        .banger_json(&["vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["e2e-a", "e2e-b"], "vm run --rm left a vm behind");

    step("kill -9 of the daemon leaves vms running; the next call adopts them");
    let a = show(&w, "e2e-a");
    let (a_pid, a_port) = (
        a["pid"].as_i64().unwrap() as i32,
        a["ssh_port"].as_u64().unwrap(),
    );
    let daemon = w.daemon_pid().unwrap();
    signal(daemon, "KILL");
    assert!(wait_gone(daemon));
    let out = raw_ssh(&w, a_port, "e2e-a.vm", "echo still-here");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "still-here",
        "{}",
        text(&out)
    );
    let a = show(&w, "e2e-a");
    assert_eq!(a["state"], "running");
    assert_eq!(a["pid"].as_i64().unwrap() as i32, a_pid, "same vmm adopted");
    assert_ne!(w.daemon_pid().unwrap(), daemon);

    step("a vmm killed while the daemon is down is found stopped and cleaned");
    let b = show(&w, "e2e-b");
    let b_pid = b["pid"].as_i64().unwrap() as i32;
    let b_id = b["id"].as_str().unwrap().to_owned();
    let daemon = w.daemon_pid().unwrap();
    signal(daemon, "KILL");
    assert!(wait_gone(daemon));
    signal(b_pid, "KILL");
    assert!(wait_gone(b_pid));
    let b = show(&w, "e2e-b");
    assert_eq!(b["state"], "stopped");
    assert!(b["pid"].is_null());
    assert!(!vms_dir(&w).join(&b_id).join("handles.json").exists());
    assert!(common::qemu_pids_with(&b_id).is_empty());
    assert_eq!(show(&w, "e2e-a")["state"], "running");

    step("bad input: clear errors naming the field, nothing created");
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "e2e-a"],
        5,
        "already exists",
    );
    assert_bad_input(&w, &["vm", "create", "--name", "a/b"], 2, "invalid vm name");
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "has space"],
        2,
        "invalid vm name",
    );
    let long = "x".repeat(100);
    assert_bad_input(&w, &["vm", "create", "--name", &long], 2, "invalid vm name");
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "--vcpus", "0"],
        2,
        "invalid vcpus",
    );
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "--vcpus", "5000"],
        2,
        "invalid vcpus",
    );
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "--memory", "0"],
        2,
        "invalid memory",
    );
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "--memory", "99999G"],
        2,
        "invalid memory",
    );
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "--disk-size", "1M"],
        2,
        "invalid disk size",
    );
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "--disk-size", "100000T"],
        2,
        "disk size",
    );
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "--image", "nope"],
        4,
        "image \"nope\" not found",
    );
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "--kernel", "nope"],
        4,
        "kernel \"nope\" not found",
    );
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "c1", "-p", "80"],
        2,
        "invalid publish",
    );
    assert_bad_input(&w, &["vm", "show", "nope"], 4, "not found");
    assert_eq!(
        w.banger_json(&["vm", "list"]).as_array().unwrap().len(),
        2,
        "nothing created"
    );

    step(
        "config.toml: defaults for creates, explained by config show; a flag wins; a bad line is named",
    );
    let config = w.root().join("config/banger/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "# my defaults\nmemory = \"2G\"\n").unwrap();
    w.banger_ok(&["vm", "create", "--name", "e2e-cfg", "--no-start"]);
    assert_eq!(show(&w, "e2e-cfg")["memory_mib"], 2048, "the file's memory");
    w.banger_ok(&[
        "vm",
        "create",
        "--name",
        "e2e-flag",
        "--no-start",
        "--memory",
        "512M",
    ]);
    assert_eq!(show(&w, "e2e-flag")["memory_mib"], 512, "the flag wins");
    let shown = w.banger_json(&["config", "show"]);
    let setting = |key: &str| {
        shown["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in {shown}"))
    };
    let memory = setting("memory");
    assert_eq!(memory["value"], "2G", "{shown}");
    assert_eq!(memory["source"], "file", "{shown}");
    assert_eq!(memory["line"], 2, "{shown}");
    assert!(
        memory["overridden_by"]
            .as_str()
            .unwrap()
            .contains("--memory"),
        "{shown}"
    );
    assert_eq!(setting("vcpus")["source"], "default", "{shown}");
    let table = w.banger_ok(&["config", "show"]);
    assert!(table.contains("file, line 2"), "{table}");
    std::fs::write(&config, "memory = \"2G\"\nvcpus = \"many\"\n").unwrap();
    assert_bad_input(
        &w,
        &["vm", "create", "--name", "e2e-bad", "--no-start"],
        2,
        "line 2",
    );
    assert_bad_input(&w, &["config", "show"], 2, "config.toml, line 2");
    std::fs::remove_file(&config).unwrap();
    w.banger_ok(&["vm", "delete", "e2e-cfg"]);
    w.banger_ok(&["vm", "delete", "e2e-flag"]);

    step(
        "fault: a published port already taken fails the create with a conflict before anything is made",
    );
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dirs_before = std::fs::read_dir(vms_dir(&w)).unwrap().count();
    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "e2e-port",
        "-p",
        &format!("{port}:80"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "conflict exit code: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("host port {port}/tcp is already in use")),
        "{}",
        text(&out)
    );
    assert_bad_input(&w, &["vm", "show", "e2e-port"], 4, "not found");
    assert_eq!(
        std::fs::read_dir(vms_dir(&w)).unwrap().count(),
        dirs_before,
        "no vm directory was made"
    );
    let ops = w.banger_json(&["ops"]);
    let op = ops
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|o| o["target"] == "e2e-port")
        .expect("the create is listed")
        .clone();
    assert_eq!(op["state"], "failed", "{op}");
    assert_eq!(
        op["error"]["code"], "conflict",
        "op.status keeps the code: {op}"
    );
    drop(taken);

    step("fault: the kernel file removed underneath fails the start with its name");
    let kernel_path = PathBuf::from(
        w.banger_json(&["kernel", "show", "debian-cloud"])["kernel"]
            .as_str()
            .unwrap(),
    );
    let aside = kernel_path.with_extension("aside");
    std::fs::rename(&kernel_path, &aside).unwrap();
    let out = w.banger(&["vm", "start", "e2e-b"]);
    std::fs::rename(&aside, &kernel_path).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kernel file"),
        "{}",
        text(&out)
    );
    let b = show(&w, "e2e-b");
    assert_eq!(b["state"], "error");
    assert!(
        b["last_error"]
            .as_str()
            .unwrap()
            .contains(&kernel_path.display().to_string())
    );
    assert!(common::qemu_pids_with(&b_id).is_empty());

    step("fault: the image's root disk deleted underneath");
    let image_rootfs = PathBuf::from(
        w.banger_json(&["image", "show", "default"])["rootfs"]
            .as_str()
            .unwrap(),
    );
    let aside = image_rootfs.with_extension("aside");
    std::fs::rename(&image_rootfs, &aside).unwrap();
    let out = w.banger(&["vm", "create", "--name", "e2e-noimg"]);
    let out_start = w.banger(&["vm", "start", "e2e-b"]);
    std::fs::rename(&aside, &image_rootfs).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root disk file"),
        "{}",
        text(&out)
    );
    assert!(
        w.banger(&["vm", "show", "e2e-noimg"]).status.code() == Some(4),
        "no record left"
    );
    assert!(!out_start.status.success());
    assert!(
        String::from_utf8_lossy(&out_start.stderr).contains("image root disk file"),
        "{}",
        text(&out_start)
    );

    step("a vm whose vmm was killed hard starts again with the same host key");
    let b = w.banger_json(&["vm", "start", "e2e-b"]);
    assert_eq!(b["state"], "running");
    assert_eq!(
        w.banger_ok(&["vm", "ssh", "e2e-b", "--", "hostname"])
            .trim(),
        "e2e-b"
    );

    step("ctrl-c during create cancels it and leaves nothing behind");
    let child = w
        .command(common::BANGER)
        .args(["vm", "create", "--name", "e2e-cancel"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = None;
    while Instant::now() < deadline {
        if let Ok(v) = serde_json::from_slice::<Value>(
            &w.banger(&["vm", "show", "e2e-cancel", "--json"]).stdout,
        ) {
            if !common::qemu_pids_with(v["id"].as_str().unwrap()).is_empty() {
                id = Some(v["id"].as_str().unwrap().to_owned());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = id.expect("the cancelled vm's qemu never started");
    signal(child.id() as i32, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert_eq!(
        w.banger(&["vm", "show", "e2e-cancel"]).status.code(),
        Some(4)
    );
    assert!(
        common::qemu_pids_with(&id).is_empty(),
        "cancelled create left qemu running"
    );
    assert!(
        !vms_dir(&w).join(&id).exists(),
        "cancelled create left its dir"
    );
    assert!(!known_hosts(&w).contains("e2e-cancel.vm"));

    step("kill sends a signal to the vmm");
    let killed = w.banger_json(&["vm", "kill", "e2e-a", "--signal", "TERM"]);
    assert_eq!(killed["state"], "stopped");
    assert!(common::qemu_pids_with(&a_id).is_empty());
    assert_bad_input(&w, &["vm", "kill", "e2e-a"], 5, "not running");
    assert_bad_input(
        &w,
        &["vm", "kill", "e2e-b", "--signal", "BOGUS"],
        2,
        "unknown signal",
    );

    step("delete everything: no files, processes or pins are left");
    w.banger_ok(&["vm", "delete", "--force", "e2e-a"]);
    w.banger_ok(&["vm", "delete", "--force", "e2e-b"]);
    assert!(common::qemu_pids_with(&a_id).is_empty());
    let left: Vec<_> = std::fs::read_dir(vms_dir(&w)).unwrap().flatten().collect();
    assert!(left.is_empty(), "vm dirs left: {left:?}");
    let pins = known_hosts(&w);
    assert!(
        !pins.contains("e2e-a.vm") && !pins.contains("e2e-b.vm"),
        "pins left: {pins}"
    );
    assert!(
        w.banger_json(&["vm", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}
