//! End to end, user-mode egress (docs/security.md, "Egress"): one real
//! guest under QEMU (TCG), booted three times, driven through the real
//! CLI. As root inside the guest it tries TCP connections to a server on
//! the host's `127.0.0.1` (via `10.0.2.2`, slirp's alias for it) and to a
//! server on every address of the host:
//!
//! - egress `internet` (the default): none answers; the outside does
//!   (when the host itself reaches it), and so does DNS (when the host
//!   resolves); `kill -9` of its QEMU takes the network's processes along;
//! - `none`: nothing answers, the outside neither, while `vm ssh`,
//!   `vm exec` and a published port still work;
//! - `open`: the host-loopback server answers (so the test can fail);
//! - `allow=` is refused in user mode, naming bridged mode.
//!
//! Needs root for the default image build (mmdebstrap), like `vm_e2e`,
//! and pasta (`scripts/deps.sh` installs passt, which has it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{World, is_root, step, text};

/// A listener that counts the connections it accepts.
struct Server {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

fn serve(addr: Ipv4Addr) -> Server {
    let listener = TcpListener::bind((addr, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = std::io::Write::write_all(&mut c, b"host\n");
        }
    });
    Server { port, accepted }
}

/// The host's IPv4 addresses but loopback ones (`LOCAL` entries of the fib trie).
fn host_addresses() -> Vec<Ipv4Addr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap();
    let mut out = Vec::new();
    let mut last = None;
    for line in trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(a) = t.parse::<Ipv4Addr>() {
            last = Some(a);
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = last.filter(|a: &Ipv4Addr| !a.is_loopback()) {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// Which of `targets` (`IP:PORT`) the guest connects to, as root, each
/// within 5 s.
fn reachable_from_guest(w: &World, vm: &str, targets: &[String]) -> Vec<String> {
    let mut script = String::new();
    for t in targets {
        let (ip, port) = t.split_once(':').unwrap();
        script.push_str(&format!(
            "if timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null; then echo 'open {t}'; fi\n"
        ));
    }
    let out = w.banger(&["vm", "exec", vm, "--", "bash", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("open ").map(str::to_owned))
        .collect()
}

/// A public address the host reaches, if any (this test then checks the
/// guest does, or does not).
fn outside() -> Option<String> {
    ["1.1.1.1:80", "8.8.8.8:53", "9.9.9.9:53"]
        .into_iter()
        .find(|a| TcpStream::connect_timeout(&a.parse().unwrap(), Duration::from_secs(3)).is_ok())
        .map(str::to_owned)
}

/// A DNS query for `example.com` (id 0x1234, recursion desired).
const DNS_QUERY: &[u8] =
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";

/// Whether the host's first resolver answers [`DNS_QUERY`] (any answer,
/// NXDOMAIN too: some hosts resolve no public name).
fn host_resolver_answers() -> bool {
    let Some(ns) = std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("nameserver").map(|a| a.trim().to_owned()))
        })
    else {
        return false;
    };
    let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 512];
    sock.send_to(DNS_QUERY, (ns.as_str(), 53)).is_ok()
        && sock
            .recv(&mut buf)
            .is_ok_and(|n| n >= 4 && buf[..2] == [0x12, 0x34] && buf[2] & 0x80 != 0)
}

/// The guest sends [`DNS_QUERY`] to its resolver (`10.0.2.3`) with bash's
/// `/dev/udp` and prints the answer's first four bytes; true if an answer
/// to it came.
fn guest_resolver_answers(w: &World, vm: &str) -> bool {
    let printf: String = DNS_QUERY.iter().map(|b| format!("\\x{b:02x}")).collect();
    let script = format!(
        "exec 3<>/dev/udp/10.0.2.3/53; printf '{printf}' >&3; timeout 5 head -c 4 <&3 | od -An -tx1"
    );
    let out = w.banger(&["vm", "exec", vm, "--", "bash", "-c", &script]);
    let bytes: Vec<u8> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes.len() == 4 && bytes[..2] == [0x12, 0x34] && bytes[2] & 0x80 != 0
}

fn ssh_banner(port: u16) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut banner = [0u8; 4];
    conn.read_exact(&mut banner).unwrap();
    banner.to_vec()
}

/// The usernet processes (pasta and the supervisor) of `w`.
fn usernet_processes(w: &World) -> Vec<i32> {
    let vms = w.root().join("data/banger/vms");
    let qemus = common::qemu_pids_with(&vms.to_string_lossy());
    common::processes_mentioning(&vms)
        .into_iter()
        .filter(|pid| !qemus.contains(pid))
        .collect()
}

/// Waits up to 10 s for [`usernet_processes`] to be gone; true if they are.
fn usernet_gone(w: &World) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !usernet_processes(w).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    usernet_processes(w).is_empty()
}

#[test]
fn user_mode_egress_end_to_end() {
    if !is_root() {
        eprintln!("skipped: the default image build needs root (mmdebstrap)");
        return;
    }
    if let Some(tool) = banger_vmm::usernet::missing_tool() {
        eprintln!("skipped: {tool} is not installed (scripts/deps.sh installs it)");
        return;
    }
    let w = common::vm_world();

    let loopback = serve(Ipv4Addr::LOCALHOST);
    let everywhere = serve(Ipv4Addr::UNSPECIFIED);
    let addrs = host_addresses();
    let mut targets = vec![
        format!("10.0.2.2:{}", loopback.port),
        format!("10.0.2.2:{}", everywhere.port),
    ];
    targets.extend(addrs.iter().map(|a| format!("{a}:{}", everywhere.port)));
    let outside = outside();
    if outside.is_none() {
        eprintln!("    note: the host reaches no public address; the outside is not checked");
    }
    let published = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let t =
        step("egress internet (the default): the host's loopback and addresses are unreachable");
    w.banger_ok(&[
        "vm",
        "create",
        "--name",
        "un",
        "-p",
        &format!("{published}:22"),
    ]);
    let shown = w.banger_json(&["vm", "show", "un"]);
    assert_eq!(shown["egress"]["mode"], "internet", "{shown}");
    let mut all = targets.clone();
    all.extend(outside.clone());
    let open = reachable_from_guest(&w, "un", &all);
    assert!(
        !usernet_processes(&w).is_empty(),
        "pasta and its supervisor run"
    );
    assert!(
        targets.iter().all(|t| !open.contains(t)),
        "reachable from the guest: {open:?} (tried {targets:?})"
    );
    if let Some(o) = &outside {
        assert!(open.contains(o), "the outside {o} is unreachable: {open:?}");
    }
    let (lo_before, all_before) = (
        loopback.accepted.load(Ordering::SeqCst),
        everywhere.accepted.load(Ordering::SeqCst),
    );
    assert_eq!((lo_before, all_before), (0, 0));
    assert_eq!(ssh_banner(published), b"SSH-", "published port");
    // DNS goes through the host's resolver, from the host.
    if host_resolver_answers() {
        assert!(
            guest_resolver_answers(&w, "un"),
            "the guest's resolver does not answer"
        );
    } else {
        eprintln!("    note: the host's resolver does not answer; DNS is not checked");
    }
    eprintln!("    {:?}", t.elapsed());

    let t = step("allow= is refused in user mode, naming bridged mode");
    w.banger_ok(&["vm", "stop", "un"]);
    assert!(usernet_gone(&w), "stop leaves no pasta");
    let out = w.banger(&["vm", "edit", "un", "--egress", "allow=example.com"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("bridged"), "{}", text(&out));
    eprintln!("    {:?}", t.elapsed());

    let t = step("egress none: nothing is reachable; ssh, exec and the published port work");
    w.banger_ok(&["vm", "edit", "un", "--egress", "none"]);
    w.banger_ok(&["vm", "start", "un"]);
    let open = reachable_from_guest(&w, "un", &all);
    assert!(open.is_empty(), "reachable from the guest: {open:?}");
    assert!(
        !guest_resolver_answers(&w, "un"),
        "the guest's resolver answers under egress none"
    );
    assert_eq!(
        w.banger_ok(&["vm", "ssh", "un", "--", "echo", "hello"])
            .trim(),
        "hello"
    );
    assert_eq!(ssh_banner(published), b"SSH-", "published port");
    assert_eq!(loopback.accepted.load(Ordering::SeqCst), lo_before);
    assert_eq!(everywhere.accepted.load(Ordering::SeqCst), all_before);
    eprintln!("    {:?}", t.elapsed());

    let t = step("egress open: the host-loopback server answers via 10.0.2.2");
    w.banger_ok(&["vm", "stop", "un"]);
    w.banger_ok(&["vm", "edit", "un", "--egress", "open"]);
    w.banger_ok(&["vm", "start", "un"]);
    let open = reachable_from_guest(&w, "un", &targets[..1]);
    assert_eq!(open, targets[..1], "the loopback server via 10.0.2.2");
    assert!(loopback.accepted.load(Ordering::SeqCst) > lo_before);
    eprintln!("    {:?}", t.elapsed());

    let t = step("back to internet; kill -9 of its qemu takes pasta along; delete");
    w.banger_ok(&["vm", "stop", "un"]);
    w.banger_ok(&["vm", "edit", "un", "--egress", "internet"]);
    w.banger_ok(&["vm", "start", "un"]);
    assert!(
        !usernet_processes(&w).is_empty(),
        "pasta and its supervisor run"
    );
    let open = reachable_from_guest(&w, "un", &targets[..1]);
    assert!(open.is_empty(), "a restart is isolated too: {open:?}");
    let pid = i32::try_from(
        w.banger_json(&["vm", "show", "un"])["pid"]
            .as_u64()
            .unwrap(),
    )
    .unwrap();
    common::signal(pid, "KILL");
    assert!(usernet_gone(&w), "pasta outlives its qemu");
    w.banger_ok(&["vm", "delete", "--force", "un"]);
    assert!(usernet_gone(&w), "delete leaves no pasta");
    eprintln!("    {:?}", t.elapsed());
}
