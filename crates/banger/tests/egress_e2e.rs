//! End to end, egress policy in bridged mode: real guests under QEMU
//! (TCG) on banger's bridge, the real `banger-helper`, in network
//! namespaces this test makes (nothing touches the host's network). A
//! guest probes, as root, what it can reach under each policy, switched
//! with `vm edit --egress` while it runs.
//!
//! ```text
//!  [outside ns] 198.18.0.2 (http 8080, tcp 9000, DNS 53), 198.18.0.3 and
//!               169.254.169.254 (tcp 9000, on lo)
//!       │ veth
//!  [banger ns]  198.18.0.1, 192.168.77.1, banger0 10.77.0.1; a host
//!               service on 0.0.0.0:9100 (loopback included);
//!               route 169.254.169.254 via 198.18.0.2
//!       │ veth                                  │ bgtapN, bgtapM
//!  [lan ns]     192.168.77.2 (tcp 9000)          guests a and b (10.77.0.x)
//! ```
//!
//! Guest a changes policy; guest b keeps the default and checks that a
//! `none` or `allow` guest and the other guests cannot reach each other.
//!
//! banger's DNS forwards to the outside's DNS server (the banger ns's
//! resolv.conf names it after the gateway), which answers
//! `svc.egress.test` with 198.18.0.2 and `other.egress.test` with
//! 198.18.0.3.
//!
//! Needs root (namespaces, TAPs); prints why and passes vacuously without.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Helper, OUTSIDE_ADDR, TestNet, must};
use common::{World, cache_home, is_root, step, text};

const GATEWAY: &str = "10.77.0.1";
const HOST_ADDR: &str = "198.18.0.1";
const OTHER_OUTSIDE: &str = "198.18.0.3";
const METADATA: &str = "169.254.169.254";
const LAN_SERVER: &str = "192.168.77.2";

/// A TCP server that greets every connection with `hi` (threads, so a
/// probe never waits for another).
const GREETER: &str = "import socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b'hi')
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
";

/// A DNS server for two names (A records, TTL 60; NOERROR without
/// answers for other types; NXDOMAIN for other names); logs each name.
const DNS_SERVER: &str = "import socket, struct, sys
names = {'svc.egress.test': '198.18.0.2', 'other.egress.test': '198.18.0.3'}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
log = open(sys.argv[2], 'a', buffering=1)
while True:
    data, peer = s.recvfrom(4096)
    if len(data) < 17:
        continue
    i, labels = 12, []
    while i < len(data) and data[i] != 0:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode('ascii', 'replace').lower())
        i += 1 + n
    qtype = struct.unpack('>H', data[i + 1:i + 3])[0]
    name = '.'.join(labels)
    log.write(name + '\\n')
    addr = names.get(name)
    answer = b''
    if addr and qtype == 1:
        answer = struct.pack('>HHHIH', 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr)
    flags = 0x8180 | (0 if addr else 3)
    header = data[:2] + struct.pack('>HHHHH', flags, 1, 1 if answer else 0, 0, 0)
    s.sendto(header + data[12:i + 5] + answer, peer)
";

/// Processes this test started (servers in namespaces), killed on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_in(ns: &str, args: &[&str], log: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    must("ip", &all)
}

/// Waits until `addr:port` accepts a connection from inside `ns`.
fn wait_listening(ns: &str, addr: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = format!("exec 3<>/dev/tcp/{addr}/{port}");
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", &probe])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{addr}:{port} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The LAN namespace, joined to the banger one by a veth pair; removed
/// on drop.
struct Lan(String);

impl Lan {
    fn new(banger_ns: &str) -> Self {
        let tag = std::process::id() % 100_000;
        let ns = format!("bgt{tag}l");
        let (near, far) = (format!("bgv{tag}lh"), format!("bgv{tag}lo"));
        must("ip", &["netns", "add", &ns]);
        must(
            "ip",
            &[
                "link", "add", &near, "netns", banger_ns, "type", "veth", "peer", "name", &far,
                "netns", &ns,
            ],
        );
        in_ns(
            banger_ns,
            &["ip", "addr", "add", "192.168.77.1/24", "dev", &near],
        );
        in_ns(banger_ns, &["ip", "link", "set", &near, "up"]);
        in_ns(&ns, &["ip", "addr", "add", "192.168.77.2/24", "dev", &far]);
        in_ns(&ns, &["ip", "link", "set", &far, "up"]);
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
        Self(ns)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Tries every `addr:port` at once from inside the guest (as root, over
/// banger's SSH): true where a greeting (`hi`, or an SSH banner) arrived
/// within 5 s.
fn probe(w: &World, vm: &str, targets: &[&str]) -> BTreeMap<String, bool> {
    let mut script = String::new();
    for t in targets {
        let (addr, port) = t.split_once(':').unwrap();
        script.push_str(&format!(
            "(timeout 5 bash -c 'exec 3<>/dev/tcp/{addr}/{port} && head -c 2 <&3' 2>/dev/null \
             | grep -q . && echo '{t} open' || echo '{t} closed') & "
        ));
    }
    script.push_str("wait");
    let out = w.banger(&["vm", "ssh", vm, "--", &script]);
    assert!(out.status.success(), "probe from {vm}:\n{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut seen = BTreeMap::new();
    for line in stdout.lines() {
        if let Some((t, state)) = line.split_once(' ') {
            seen.insert(t.to_owned(), state == "open");
        }
    }
    assert_eq!(seen.len(), targets.len(), "probe output: {stdout}");
    seen
}

/// Asserts what `probe` found: `open` reachable, `closed` not.
fn expect(w: &World, vm: &str, open: &[&str], closed: &[&str]) {
    let all: Vec<&str> = open.iter().chain(closed).copied().collect();
    let seen = probe(w, vm, &all);
    let wrong: Vec<String> = seen
        .iter()
        .filter(|&(t, &reached)| reached != open.contains(&t.as_str()))
        .map(|(t, &reached)| format!("{t} {}", if reached { "reached" } else { "unreachable" }))
        .collect();
    assert!(wrong.is_empty(), "{vm}: {wrong:?} (all: {seen:?})");
}

/// `getent hosts NAME` in the guest: the first address, if it resolved.
fn resolve(w: &World, vm: &str, name: &str) -> Option<String> {
    let out = w.banger(&["vm", "ssh", vm, "--", &format!("getent hosts {name}")]);
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

#[test]
fn egress_policies_hold_in_bridged_mode() {
    if !is_root() {
        eprintln!("skipped: bridged networking needs root (namespaces, TAP devices)");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let net = TestNet::new(scratch.path());
    let lan = Lan::new(&net.ns);
    let s = scratch.path();
    let mut procs = Procs(Vec::new());
    let greeter = s.join("greeter.py");
    std::fs::write(&greeter, GREETER).unwrap();
    let dns = s.join("dns.py");
    std::fs::write(&dns, DNS_SERVER).unwrap();
    let dns_log = s.join("dns-queries.log");
    let g = greeter.to_str().unwrap();
    // The outside: more addresses on its loopback, a greeter on all of them.
    for addr in [OTHER_OUTSIDE, METADATA] {
        in_ns(
            &net.outside,
            &["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"],
        );
    }
    procs.0.push(spawn_in(
        &net.outside,
        &["python3", g, "0.0.0.0", "9000"],
        &s.join("outside-greeter.log"),
    ));
    procs.0.push(spawn_in(
        &net.outside,
        &[
            "python3",
            dns.to_str().unwrap(),
            OUTSIDE_ADDR,
            dns_log.to_str().unwrap(),
        ],
        &s.join("outside-dns.log"),
    ));
    // The "machine": the metadata address routed to the outside, a host
    // service listening on every address, loopback included.
    in_ns(
        &net.ns,
        &[
            "ip",
            "route",
            "add",
            &format!("{METADATA}/32"),
            "via",
            OUTSIDE_ADDR,
        ],
    );
    procs.0.push(spawn_in(
        &net.ns,
        &["python3", g, "0.0.0.0", "9100"],
        &s.join("host-greeter.log"),
    ));
    procs.0.push(spawn_in(
        &lan.0,
        &["python3", g, "0.0.0.0", "9000"],
        &s.join("lan-greeter.log"),
    ));
    wait_listening(&net.ns, OUTSIDE_ADDR, 9000);
    wait_listening(&net.ns, METADATA, 9000);
    wait_listening(&net.ns, LAN_SERVER, 9000);
    wait_listening(&net.ns, "127.0.0.1", 9100);
    // banger's DNS forwards to the outside's server (it skips its own
    // gateway address in resolv.conf).
    std::fs::write(
        PathBuf::from("/etc/netns")
            .join(&net.ns)
            .join("resolv.conf"),
        format!("nameserver {GATEWAY}\nnameserver {OUTSIDE_ADDR}\n"),
    )
    .unwrap();

    let mut w = World::new();
    let helper = Helper::new(s, &w, &net.ns);
    w.extra_env.push(("XDG_CACHE_HOME", cache_home()));
    w.extra_env.push(("BANGER_ACCEL", PathBuf::from("tcg")));
    w.extra_env
        .push(("BANGER_AGENT_BIN", common::static_agent()));
    w.extra_env.push(("BANGER_LOG", PathBuf::from("debug")));

    let t = step("kernel and image, outside the namespace");
    w.extra_env
        .push(("BANGER_HELPER_SOCKET", s.join("none.sock")));
    w.banger_ok(&["vm", "create", "--name", "warmup", "--no-start"]);
    w.banger_ok(&["vm", "delete", "--force", "warmup"]);
    w.banger_ok(&["daemon", "stop"]);
    w.extra_env.pop();
    eprintln!("    {:?}", t.elapsed());

    w.extra_env
        .push(("BANGER_HELPER_SOCKET", helper.socket.clone()));
    w.extra_env.push(("BANGER_TAP_POOL", PathBuf::from("1")));
    w.wrapper = ["ip", "netns", "exec", net.ns.as_str()]
        .map(str::to_owned)
        .to_vec();

    let outside = format!("{OUTSIDE_ADDR}:9000");
    let other = format!("{OTHER_OUTSIDE}:9000");
    let host_gw = format!("{GATEWAY}:9100");
    let host_addr = format!("{HOST_ADDR}:9100");
    let lan_srv = format!("{LAN_SERVER}:9000");
    let metadata = format!("{METADATA}:9000");

    let t = step("default egress (internet): public yes; host, LAN, metadata no");
    w.banger_ok(&["vm", "create", "--name", "a"]);
    let a = w.banger_json(&["vm", "show", "a"]);
    assert_eq!(a["network"], "bridged", "{a}");
    assert_eq!(a["egress"]["mode"], "internet", "{a}");
    let ip_a = a["ip"].as_str().unwrap().to_owned();
    expect(
        &w,
        "a",
        &[&outside, &other],
        &[&host_gw, &host_addr, &lan_srv, &metadata],
    );
    assert_eq!(
        resolve(&w, "a", "other.egress.test").as_deref(),
        Some(OTHER_OUTSIDE),
        "internet forwards every name"
    );
    // The host asks banger's DNS from its own addresses: answered.
    let host = net.exec(&["getent", "hosts", "a.vm"]);
    assert!(
        String::from_utf8_lossy(&host.stdout).starts_with(&ip_a),
        "{}",
        text(&host)
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("guest b (internet): internet guests reach each other");
    w.banger_ok(&["vm", "create", "--name", "b"]);
    let ip_b = w.banger_json(&["vm", "show", "b"])["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let ssh_a = format!("{ip_a}:22");
    let ssh_b = format!("{ip_b}:22");
    expect(&w, "a", &[&ssh_b], &[]);
    expect(&w, "b", &[&ssh_a, &outside], &[&host_gw]);
    eprintln!("    {:?}", t.elapsed());

    let t = step("edit a running vm to open: everything the host reaches (the probes work)");
    w.banger_ok(&["vm", "edit", "a", "--egress", "open"]);
    expect(
        &w,
        "a",
        &[&outside, &host_gw, &host_addr, &lan_srv, &metadata, &ssh_b],
        &[],
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("none: only banger's DNS, and only NAME.vm");
    w.banger_ok(&["vm", "edit", "a", "--egress", "none"]);
    assert_eq!(
        w.banger_json(&["vm", "show", "a"])["egress"]["mode"],
        "none"
    );
    expect(
        &w,
        "a",
        &[],
        &[
            &outside, &other, &host_gw, &host_addr, &lan_srv, &metadata, &ssh_b,
        ],
    );
    // Taking b's address does not give a b's policy: its TAP drops
    // frames from any address but its own (and ARP claiming another).
    // Without that, b's rules would forward a datagram from a with b's
    // address: the outside's DNS server must not see the query.
    let spoof = w.banger(&[
        "vm",
        "ssh",
        "a",
        "--",
        &format!(
            "ip addr add {ip_b}/32 dev eth0 && python3 -c \"import socket
q = bytes.fromhex('12340100000100000000000007') + b'spoofed' + bytes([6]) + b'egress' \\
    + bytes([4]) + b'test' + bytes.fromhex('0000010001')
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('{ip_b}', 0))
for _ in range(3): s.sendto(q, ('{OUTSIDE_ADDR}', 53))
print('sent')\"; ip addr del {ip_b}/32 dev eth0"
        ),
    ]);
    assert!(
        String::from_utf8_lossy(&spoof.stdout).contains("sent"),
        "{}",
        text(&spoof)
    );
    // Its own address, then b's, ask something the outside answers: once
    // b's query is logged, a's (sent before) would have been too.
    let marker = w.banger(&["vm", "ssh", "b", "--", "getent hosts svc.egress.test"]);
    assert!(marker.status.success(), "{}", text(&marker));
    let queries = std::fs::read_to_string(&dns_log).unwrap_or_default();
    assert!(queries.contains("svc.egress.test"), "{queries}");
    assert!(
        !queries.contains("spoofed.egress.test"),
        "a's datagram with b's address got out: {queries}"
    );
    expect(&w, "b", &[&outside], &[&ssh_a]);
    assert_eq!(resolve(&w, "a", "a.vm").as_deref(), Some(ip_a.as_str()));
    assert_eq!(resolve(&w, "a", "svc.egress.test"), None);
    eprintln!("    {:?}", t.elapsed());

    let t = step("allow=svc.egress.test: reachable once resolved through banger, nothing else");
    w.banger_ok(&["vm", "edit", "a", "--egress", "allow=svc.egress.test"]);
    expect(&w, "a", &[], &[&outside]);
    let queries_before = std::fs::read_to_string(&dns_log).unwrap_or_default();
    assert_eq!(
        resolve(&w, "a", "svc.egress.test").as_deref(),
        Some(OUTSIDE_ADDR)
    );
    expect(
        &w,
        "a",
        &[&outside],
        &[&other, &host_gw, &host_addr, &lan_srv, &metadata, &ssh_b],
    );
    expect(&w, "b", &[], &[&ssh_a]);
    assert_eq!(resolve(&w, "a", "other.egress.test"), None);
    let queries: String = std::fs::read_to_string(&dns_log)
        .unwrap_or_default()
        .chars()
        .skip(queries_before.chars().count())
        .collect();
    assert!(
        !queries.contains("other.egress.test"),
        "a refused name reached the upstream: {queries}"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("a restarted daemon keeps the policy; delete leaves no rules behind");
    let daemon = w.daemon_pid().unwrap();
    common::signal(daemon, "KILL");
    assert!(common::wait_gone(daemon));
    assert_eq!(
        w.banger_json(&["vm", "show", "a"])["egress"],
        serde_json::json!({"mode": "allow", "allow": ["svc.egress.test"]})
    );
    expect(&w, "a", &[&outside], &[&other, &host_gw]);
    let chain = format!("vm_{}", ip_a.replace('.', "_"));
    let rules = net.exec(&["nft", "list", "ruleset"]);
    assert!(String::from_utf8_lossy(&rules.stdout).contains(&chain));
    w.banger_ok(&["vm", "delete", "--force", "a"]);
    w.banger_ok(&["vm", "delete", "--force", "b"]);
    let rules = String::from_utf8_lossy(&net.exec(&["nft", "list", "ruleset"]).stdout).into_owned();
    assert!(!rules.contains(&chain), "{chain} left behind:\n{rules}");
    assert!(
        !rules.contains("tap_bgtap"),
        "a tap chain left behind:\n{rules}"
    );
    eprintln!("    {:?}", t.elapsed());

    drop(w);
    drop(helper);
    drop(procs);
}
