//! End to end, bridged networking: real guests under QEMU (TCG) on
//! banger's bridge, with the real `banger-helper` making the bridge, TAPs,
//! NAT and the DNS socket, all inside a network namespace this test makes
//! (so nothing touches the host's network). A second namespace, joined by
//! a veth pair, stands in for the outside world and runs an HTTP server.
//!
//! ```text
//!   [outside ns] 198.18.0.2 ── veth ── 198.18.0.1 [banger ns] banger0 10.77.0.1/24
//!                                                     ├─ bgtapN ─ guest a 10.77.0.x
//!                                                     └─ bgtapM ─ guest b 10.77.0.y
//! ```
//!
//! Needs root (namespaces, TAPs); prints why and passes vacuously without.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::netns::{
    HOST_VETH_ADDR, Helper, OUTSIDE_ADDR, TestNet, assert_no_orphans, strings, wait_pool_full,
};
use common::{World, alive, cache_home, is_root, step, text, wait_gone};

const POOL: usize = 2;

/// Runs the shell command line `cmd` in a guest over banger's SSH (as
/// with ssh, the words after `--` are one command line for its shell).
fn in_guest(w: &World, vm: &str, cmd: &str) -> Output {
    w.banger(&["vm", "ssh", vm, "--", cmd])
}

fn guest_ok(w: &World, vm: &str, cmd: &str) -> String {
    let out = in_guest(w, vm, cmd);
    assert!(out.status.success(), "in {vm}: {cmd}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Plain `ssh root@NAME.vm` from the banger namespace: the name resolves
/// through banger's DNS (the namespace's resolv.conf).
/// Host keys are pinned under `NAME.vm`, so an address needs the alias.
fn host_ssh(w: &World, net: &TestNet, host: &str, alias: &str, cmd: &str) -> Output {
    let key = w.root().join("data/banger/ssh/id_ed25519");
    let known = w.root().join("data/banger/ssh/known_hosts");
    net.exec(&[
        "ssh",
        "-i",
        key.to_str().unwrap(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        &format!("UserKnownHostsFile={}", known.display()),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        &format!("HostKeyAlias={alias}"),
        &format!("root@{host}"),
        cmd,
    ])
}

fn vm_pid(w: &World, name: &str) -> i64 {
    w.banger_json(&["vm", "show", name])["pid"]
        .as_i64()
        .unwrap()
}

fn op_id_of(stderr: &str) -> String {
    let start = stderr.find("(op-").expect("create prints its op id") + 1;
    let end = stderr[start..].find(')').unwrap() + start;
    stderr[start..end].to_owned()
}

#[test]
fn bridged_networking_end_to_end() {
    if !is_root() {
        eprintln!("skipped: bridged networking needs root (namespaces, TAP devices)");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let net = TestNet::new(scratch.path());
    let mut w = World::new();
    let mut helper = Helper::new(scratch.path(), &w, &net.ns);
    w.extra_env.push(("XDG_CACHE_HOME", cache_home()));
    w.extra_env.push(("BANGER_ACCEL", PathBuf::from("tcg")));
    // Images are never built without the guest agent.
    w.extra_env
        .push(("BANGER_AGENT_BIN", common::static_agent()));
    // Debug logs name every request's op id ("rpc started"), even of
    // requests that succeed quietly (doctor, network): the last step checks
    // every helper call's op id against them.
    w.extra_env.push(("BANGER_LOG", PathBuf::from("debug")));

    let t =
        step("kernel and image, outside the namespace (they come from the host's package sources)");
    w.extra_env
        .push(("BANGER_HELPER_SOCKET", scratch.path().join("none.sock")));
    w.banger_ok(&["vm", "create", "--name", "warmup", "--no-start"]);
    w.banger_ok(&["vm", "delete", "--force", "warmup"]);
    w.banger_ok(&["daemon", "stop"]);
    w.extra_env.pop();
    eprintln!("    {:?}", t.elapsed());

    w.extra_env
        .push(("BANGER_HELPER_SOCKET", helper.socket.clone()));
    w.extra_env
        .push(("BANGER_TAP_POOL", PathBuf::from(POOL.to_string())));
    w.wrapper = ["ip", "netns", "exec", net.ns.as_str()]
        .map(str::to_owned)
        .to_vec();

    let t = step("the helper answers: bridged is the default; the pool warms up");
    let n = wait_pool_full(&w, POOL);
    assert_eq!(n["helper"], true, "{n}");
    assert_eq!(n["bridge"], "banger0", "{n}");
    assert_eq!(n["gateway"], "10.77.0.1", "{n}");
    assert_eq!(strings(&n["idle_taps"]).len(), POOL, "{n}");
    // Exits 1 if another check fails on this host (the helper's is the point).
    let (_, doctor) = w.banger_json_status(&["doctor"]);
    let check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "helper")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "ok", "{check}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("create a and b (bridged); each takes a warm tap and leases an address");
    let idle_before = strings(&n["idle_taps"]);
    let out = w.banger(&["vm", "create", "--name", "a"]);
    assert!(out.status.success(), "{}", text(&out));
    let create_op = op_id_of(&String::from_utf8_lossy(&out.stderr));
    w.banger_ok(&["vm", "create", "--name", "b"]);
    let a = w.banger_json(&["vm", "show", "a"]);
    let b = w.banger_json(&["vm", "show", "b"]);
    assert_eq!(a["network"], "bridged", "{a}");
    assert_eq!(b["network"], "bridged", "{b}");
    let (ip_a, ip_b) = (
        a["ip"].as_str().unwrap().to_owned(),
        b["ip"].as_str().unwrap().to_owned(),
    );
    assert_ne!(ip_a, ip_b);
    assert!(ip_a.starts_with("10.77.0.") && ip_b.starts_with("10.77.0."));
    let tap_a = a["tap"].as_str().unwrap().to_owned();
    assert!(
        idle_before.contains(&tap_a),
        "a took {tap_a}, not one of {idle_before:?}"
    );
    assert!(
        a["ssh_port"].is_null(),
        "bridged vms have no loopback ssh port: {a}"
    );
    let n = wait_pool_full(&w, POOL);
    assert_eq!(strings(&n["taps_in_use"]).len(), 2, "{n}");
    assert_no_orphans(&w, &net);
    eprintln!("    {:?}", t.elapsed());

    let t = step("the op id of a create is in the daemon's and the helper's logs");
    assert!(
        w.log_text().contains(&create_op),
        "daemon log lacks {create_op}"
    );
    let helper_lines: Vec<String> = helper
        .log_text()
        .lines()
        .filter(|l| l.contains(&create_op))
        .map(str::to_owned)
        .collect();
    assert!(
        helper_lines
            .iter()
            .any(|l| l.contains("helper rpc completed")),
        "helper log has no completed call for {create_op}:\n{}",
        helper.log_text()
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("guests reach each other by address and by NAME.vm");
    assert_eq!(guest_ok(&w, "a", "hostname").trim(), "a");
    let resolved = guest_ok(&w, "a", "getent hosts b.vm");
    assert!(
        resolved.starts_with(&ip_b),
        "a resolved b.vm to {resolved:?}"
    );
    let banner = |from: &str, to: &str| {
        guest_ok(
            &w,
            from,
            &format!("timeout 10 bash -c 'exec 3<>/dev/tcp/{to}/22; head -c 7 <&3'"),
        )
    };
    assert_eq!(banner("a", &ip_b), "SSH-2.0");
    assert_eq!(banner("a", "b.vm"), "SSH-2.0");
    assert_eq!(banner("b", "a.vm"), "SSH-2.0");
    eprintln!("    {:?}", t.elapsed());

    let t = step("the host reaches ssh NAME.vm");
    let out = host_ssh(&w, &net, "a.vm", "a.vm", "hostname");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a");
    let dig = net.exec(&["getent", "hosts", "b.vm"]);
    assert!(
        String::from_utf8_lossy(&dig.stdout).starts_with(&ip_b),
        "{}",
        text(&dig)
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("a guest reaches a server outside the bridge through NAT");
    let reply = guest_ok(
        &w,
        "b",
        &format!(
            "timeout 10 bash -c 'exec 3<>/dev/tcp/{OUTSIDE_ADDR}/8080; \
             printf \"GET /hello HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3'"
        ),
    );
    assert!(reply.contains("hello from outside"), "{reply}");
    let server_log = std::fs::read_to_string(&net.server_log).unwrap();
    assert!(
        server_log.contains(HOST_VETH_ADDR) && server_log.contains("GET /hello"),
        "the outside saw no masqueraded request:\n{server_log}"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("kill -9 of the daemon and the helper; restart: vms keep their network");
    let (pid_a, pid_b) = (vm_pid(&w, "a"), vm_pid(&w, "b"));
    let daemon = w.daemon_pid().unwrap();
    common::signal(daemon, "KILL");
    assert!(wait_gone(daemon));
    let helper_pid = helper.pid();
    common::signal(helper_pid, "KILL");
    assert!(wait_gone(helper_pid));
    // Guests talk to each other with both down.
    let direct = host_ssh(&w, &net, &ip_b, "b.vm", "hostname");
    assert!(direct.status.success(), "{}", text(&direct));
    helper.start();
    assert_eq!(vm_pid(&w, "a"), pid_a);
    assert_eq!(vm_pid(&w, "b"), pid_b);
    assert!(alive(pid_a as i32) && alive(pid_b as i32));
    let n = wait_pool_full(&w, POOL);
    assert_eq!(strings(&n["taps_in_use"]).len(), 2, "{n}");
    assert!(strings(&n["taps_in_use"]).contains(&tap_a), "{n}");
    assert_no_orphans(&w, &net);
    let out = host_ssh(&w, &net, "b.vm", "b.vm", "getent hosts a.vm");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&ip_a));
    eprintln!("    {:?}", t.elapsed());

    let t = step("delete b: its tap goes back to the pool and its address is freed");
    let tap_b = w.banger_json(&["vm", "show", "b"])["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    w.banger_ok(&["vm", "delete", "--force", "b"]);
    let n = assert_no_orphans(&w, &net);
    assert!(strings(&n["idle_taps"]).contains(&tap_b), "{n}");
    let leased: Vec<&str> = n["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["vm"].as_str().unwrap())
        .collect();
    assert_eq!(leased, vec!["a"], "{n}");
    let gone = net.exec(&["getent", "hosts", "b.vm"]);
    assert!(
        !gone.status.success(),
        "b.vm still resolves: {}",
        text(&gone)
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("stop a keeps its address; start gives it the same one");
    w.banger_ok(&["vm", "stop", "a"]);
    let stopped = w.banger_json(&["vm", "show", "a"]);
    assert_eq!(stopped["ip"], ip_a.as_str(), "{stopped}");
    assert!(stopped["tap"].is_null(), "{stopped}");
    w.banger_ok(&["vm", "start", "a"]);
    assert_eq!(w.banger_json(&["vm", "show", "a"])["ip"], ip_a.as_str());
    w.banger_ok(&["vm", "delete", "--force", "a"]);
    let n = assert_no_orphans(&w, &net);
    assert!(n["leases"].as_array().unwrap().is_empty(), "{n}");
    assert!(n["taps_in_use"].as_array().unwrap().is_empty(), "{n}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("every helper call carries the op id of a request or task the daemon logged");
    let daemon_log = w.log_text();
    let mut calls = 0;
    for line in helper.log_text().lines() {
        if !line.contains("helper rpc completed") && !line.contains("helper rpc failed") {
            continue;
        }
        calls += 1;
        let op = json_field(line, "op_id").unwrap_or_else(|| panic!("no op id: {line}"));
        assert!(
            daemon_log.contains(&format!("\"op_id\":\"{op}\"")),
            "helper call under {op}, an op id the daemon never logged: {line}"
        );
    }
    assert!(calls > 10, "only {calls} helper calls logged");
    eprintln!("    {calls} helper calls, {:?}", t.elapsed());
    drop(w);
    drop(helper);
}

/// The string value of `"key":"..."` anywhere in a JSON log line.
fn json_field(line: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":\"");
    let start = line.find(&needle)? + needle.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}
