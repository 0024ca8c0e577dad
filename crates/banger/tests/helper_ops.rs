//! The real `banger-helper`'s positive paths, in a throwaway network
//! namespace: bridge, TAPs, NAT, the DNS socket, loop devices,
//! device-mapper (refused here: the kernel has none), signalling a VMM,
//! chown of a socket, teardown, SIGTERM, and systemd socket activation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

#[path = "common/helper.rs"]
mod helper_env;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_proto::OpId;
use banger_proto::helper::{HelperCall, HelperErrorCode, HelperReply, HelperResponse};
use helper_env::{HELPER, HelperEnv, fake_qemu};

const OWNER: u32 = 4242;

fn done(env: &HelperEnv, what: &str, call: HelperCall) -> OpId {
    let op = env.op(what);
    match env.call(&op, call) {
        HelperResponse::Result(HelperReply::Done) => op,
        other => panic!("{what}: {other:?}"),
    }
}

fn device(env: &HelperEnv, what: &str, call: HelperCall) -> String {
    match env.call(&env.op(what), call) {
        HelperResponse::Result(HelperReply::Device { path }) => path,
        other => panic!("{what}: {other:?}"),
    }
}

/// Detaches the loop devices it holds (if still attached) on drop, so a
/// failed assertion leaves no loop device behind.
struct Loops(Vec<String>);

impl Drop for Loops {
    fn drop(&mut self) {
        for dev in &self.0 {
            let name = dev.trim_start_matches("/dev/");
            if Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists() {
                let _ = Command::new("losetup").args(["-d", dev]).status();
            }
        }
    }
}

fn backing_file(dev: &str) -> Option<String> {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

fn loops_usable() -> Result<(), String> {
    if !Path::new("/dev/loop-control").exists() {
        return Err("no /dev/loop-control on this host".into());
    }
    if !helper_env::tool_exists("losetup") {
        return Err("losetup is not installed".into());
    }
    Ok(())
}

#[test]
fn helper_operations_work_in_a_namespace() {
    if helper_env::skip("helper_operations_work_in_a_namespace") {
        return;
    }
    let started = Instant::now();
    let mut env = HelperEnv::start(42, vec![0, OWNER]);
    let br = env.bridge.clone();
    let mut ops = Vec::new();

    // Bridge: created, up, with the gateway address; ensuring again fixes
    // a lost address and a downed link.
    ops.push(done(
        &env,
        "bridge",
        HelperCall::BridgeEnsure { name: br.clone() },
    ));
    let check_bridge = |env: &HelperEnv| {
        let link = env.link(&br).expect("bridge exists");
        assert_eq!(link["linkinfo"]["info_kind"], "bridge");
        assert!(
            link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{link}"
        );
        let addrs = env.netns_ok("ip", &["-4", "-o", "addr", "show", "dev", &br]);
        assert_eq!(addrs.lines().count(), 1, "{addrs}");
        assert!(
            addrs.contains(&format!("inet {}/24", env.gateway)),
            "{addrs}"
        );
    };
    check_bridge(&env);
    env.netns_ok("ip", &["addr", "flush", "dev", &br]);
    env.netns_ok("ip", &["link", "set", "dev", &br, "down"]);
    ops.push(done(
        &env,
        "bridge-again",
        HelperCall::BridgeEnsure { name: br.clone() },
    ));
    check_bridge(&env);

    // Two TAPs on the bridge, owned by the caller (a tap for another
    // allowed uid is refused: see helper_bad_input.rs).
    for (name, owner) in [("bgtap1", 0), ("bgtap2", 0)] {
        ops.push(done(
            &env,
            "tap",
            HelperCall::TapCreate {
                name: name.into(),
                owner_uid: owner,
                bridge: br.clone(),
            },
        ));
        let link = env.link(name).expect("tap exists");
        assert_eq!(link["master"], br.as_str(), "{link}");
        assert_eq!(link["linkinfo"]["info_data"]["type"], "tap", "{link}");
        assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    }
    let taps = match env.call(&env.op("taps"), HelperCall::TapList) {
        HelperResponse::Result(HelperReply::Taps { taps }) => taps,
        other => panic!("{other:?}"),
    };
    let mut seen: Vec<(String, Option<String>, Option<u32>)> = taps
        .into_iter()
        .map(|t| (t.name, t.master, t.owner_uid))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("bgtap1".to_owned(), Some(br.clone()), Some(0)),
            ("bgtap2".to_owned(), Some(br.clone()), Some(0)),
        ]
    );
    // Creating an existing TAP again is fine.
    ops.push(done(
        &env,
        "tap-again",
        HelperCall::TapCreate {
            name: "bgtap1".into(),
            owner_uid: 0,
            bridge: br.clone(),
        },
    ));

    // NAT twice: one table, one masquerade rule, forwarding on. A new
    // namespace may inherit forwarding from the host (on once anything
    // turned it on there): start from off, as on a fresh host.
    env.netns_ok("sysctl", &["-qw", "net.ipv4.ip_forward=0"]);
    for _ in 0..2 {
        ops.push(done(
            &env,
            "nat",
            HelperCall::NatEnsure {
                subnet: env.subnet.clone(),
            },
        ));
    }
    let table = env.netns_ok("nft", &["list", "table", "ip", "banger"]);
    assert_eq!(table.matches("masquerade").count(), 1, "{table}");
    assert!(
        table.contains(&format!(
            "ip saddr {} oifname != \"{br}\" masquerade",
            env.subnet
        )),
        "{table}"
    );
    // Guests' traffic goes through their own egress chains (no blanket
    // accept from the bridge), and nothing else from the bridge is accepted.
    assert!(
        table.contains(&format!("iifname \"{br}\" ip saddr vmap @vms")),
        "{table}"
    );
    assert!(table.contains(&format!("iifname \"{br}\" drop")), "{table}");
    let tables = env.netns_ok("nft", &["list", "tables"]);
    assert_eq!(tables.matches("table ip banger").count(), 1, "{tables}");
    assert_eq!(
        env.netns_ok("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );
    let marker = env.socket.with_file_name("ip_forward.was");
    assert!(
        marker.exists(),
        "no record that the helper turned forwarding on"
    );

    // The DNS socket: a descriptor bound to GATEWAY:53.
    let op = env.op("dns");
    let reply = env.call_full(&op, HelperCall::DnsSocket);
    assert_eq!(reply.response, HelperResponse::Result(HelperReply::Socket));
    assert_eq!(reply.fds.len(), 1, "one descriptor");
    let udp = UdpSocket::from(reply.fds.into_iter().next().unwrap());
    let want: SocketAddr = format!("{}:53", env.gateway).parse().unwrap();
    assert_eq!(udp.local_addr().unwrap(), want);
    ops.push(op);
    drop(udp);

    // Signalling a (fake) banger VMM.
    let mut vmm = fake_qemu(
        &env.root,
        &["-name", "guest=banger-test,process=banger-test"],
        None,
    );
    ops.push(done(
        &env,
        "signal",
        HelperCall::SignalVmm {
            pid: vmm.pid(),
            signal: "TERM".into(),
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = vmm.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "fake vmm not terminated");
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");

    // Chown of the caller's socket in the runtime dir to the caller's uid
    // and gid (here root's own: only a socket of the caller is chowned).
    let sock = env.run.join("vm.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    std::os::unix::fs::chown(&sock, Some(0), Some(OWNER)).unwrap();
    ops.push(done(
        &env,
        "chown",
        HelperCall::ChownSocket { path: sock.clone() },
    ));
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    // Loop devices and device-mapper.
    match loops_usable() {
        Err(why) => eprintln!("helper_ops: loop device part skipped: {why}"),
        Ok(()) => loop_and_dm(&env, &mut ops),
    }

    // Deleting a TAP, twice.
    for _ in 0..2 {
        ops.push(done(
            &env,
            "tap-del",
            HelperCall::TapDelete {
                name: "bgtap2".into(),
            },
        ));
    }
    assert!(env.link("bgtap2").is_none());
    assert!(env.link("bgtap1").is_some());

    // One completed line per call.
    for op in &ops {
        let lines = env.rpc_lines(op);
        assert_eq!(lines.len(), 1, "{op}: {lines:?}");
        assert_eq!(
            lines[0]["fields"]["message"], "helper rpc completed",
            "{op}"
        );
    }
    let forwarding = env
        .log_lines()
        .into_iter()
        .filter(|l| l["fields"]["message"] == "enabled ipv4 forwarding for banger's nat")
        .count();
    assert_eq!(forwarding, 1, "ip_forward change logged once");

    // Teardown, run like `banger system uninstall` does, in the namespace.
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", env.pid))
        .arg(format!("--mount=/proc/{}/ns/mnt", env.pid))
        .arg(HELPER)
        .arg("teardown")
        .arg("--config")
        .arg(&env.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "teardown failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("removed bgtap1"), "{printed}");
    assert!(printed.contains(&format!("removed {br}")), "{printed}");
    let left: Vec<String> = env
        .links()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .filter(|n| n.starts_with("bgtap") || *n == br)
        .collect();
    assert!(left.is_empty(), "left after teardown: {left:?}");
    let tables = env.netns_ok("nft", &["list", "tables"]);
    assert!(!tables.contains("banger"), "{tables}");
    // Forwarding was off before nat_ensure turned it on: off again.
    assert!(printed.contains("net.ipv4.ip_forward"), "{printed}");
    assert_eq!(
        env.netns_ok("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "0"
    );
    assert!(!marker.exists());

    // SIGTERM: exit 0, socket removed.
    let status = env.stop().unwrap();
    assert!(status.success(), "helper exit: {status:?}");
    assert!(!env.socket.exists(), "socket left behind");
    eprintln!(
        "helper_ops: {} calls completed, teardown and SIGTERM checked, in {:?}",
        ops.len(),
        started.elapsed()
    );
}

fn loop_and_dm(env: &HelperEnv, ops: &mut Vec<OpId>) {
    let origin_file = env.data.join("origin.img");
    let cow_file = env.data.join("cow.img");
    for f in [&origin_file, &cow_file] {
        let file = std::fs::File::create(f).unwrap();
        file.set_len(4 << 20).unwrap();
    }
    let mut loops = Loops(Vec::new());
    let origin = device(
        env,
        "loop-ro",
        HelperCall::LoopAttach {
            path: origin_file.clone(),
            read_only: true,
        },
    );
    loops.0.push(origin.clone());
    let cow = device(
        env,
        "loop-rw",
        HelperCall::LoopAttach {
            path: cow_file.clone(),
            read_only: false,
        },
    );
    loops.0.push(cow.clone());
    assert_eq!(
        backing_file(&origin).map(PathBuf::from),
        Some(origin_file.clone())
    );
    assert_eq!(
        backing_file(&cow).map(PathBuf::from),
        Some(cow_file.clone())
    );
    let ro = |dev: &str| {
        std::fs::read_to_string(format!("/sys/block/{}/ro", dev.trim_start_matches("/dev/")))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(ro(&origin), "1");
    assert_eq!(ro(&cow), "0");

    let snapshot = HelperCall::DmSnapshotCreate {
        name: "banger-test-snap".into(),
        origin: origin.clone(),
        cow: cow.clone(),
    };
    if Path::new("/dev/mapper/control").exists() {
        let dev = device(env, "dm", snapshot);
        assert_eq!(dev, "/dev/mapper/banger-test-snap");
        assert!(Path::new(&dev).exists());
        ops.push(done(
            env,
            "dm-remove",
            HelperCall::DmRemove {
                name: "banger-test-snap".into(),
            },
        ));
    } else {
        eprintln!(
            "helper_ops: device-mapper positive path cannot run: this kernel has no device-mapper (no /dev/mapper/control); checking the refusal instead"
        );
        match env.call(&env.op("dm"), snapshot) {
            HelperResponse::Error(e) => {
                assert_eq!(e.code, HelperErrorCode::Unsupported);
                for word in ["device-mapper", "/dev/mapper/control", "dm_mod"] {
                    assert!(e.message.contains(word), "{}", e.message);
                }
            }
            other => panic!("dm_snapshot_create: {other:?}"),
        }
    }

    for dev in [&origin, &cow] {
        ops.push(done(
            env,
            "loop-detach",
            HelperCall::LoopDetach {
                device: dev.clone(),
            },
        ));
        assert_eq!(backing_file(dev), None, "{dev} still attached");
    }
}

/// systemd socket activation: the helper serves the socket passed as fd 3
/// and leaves its file alone at exit.
#[test]
fn helper_serves_a_systemd_socket() {
    if helper_env::skip("helper_serves_a_systemd_socket") {
        return;
    }
    let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipping helper_serves_a_systemd_socket: no python3 to pass a listening socket");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let mut config = banger_proto::helper::HelperConfig::for_uids(vec![0]);
    // The config names another path: the passed socket must win.
    config.socket = dir.path().join("unused/helper.sock");
    config.bridge = "bgsd0".into();
    config.subnet = "10.231.43.0/24".into();
    config.log_file = Some(dir.path().join("helper.log"));
    let config_path = dir.path().join("helper.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    // Binds and listens like systemd, then execs the helper (same pid)
    // with the socket as fd 3 and LISTEN_PID/LISTEN_FDS set.
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(16)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.argv[2], sys.argv[2:])
"#;
    let child = Command::new("unshare")
        .args(["--net", "--", "setpriv", "--pdeathsig", "KILL", "--"])
        .arg(python)
        .args(["-c", script])
        .arg(&socket)
        .arg(HELPER)
        .arg("--config")
        .arg(&config_path)
        .spawn()
        .unwrap();
    let mut child = helper_env::Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = banger_helper::client::Client::new(&socket).with_timeout(Duration::from_secs(5));
    let mut connection = loop {
        if let Ok(c) = client.connect() {
            break c;
        }
        assert!(Instant::now() < deadline, "activated helper did not answer");
        std::thread::sleep(Duration::from_millis(20));
    };
    let op = OpId::parse("op-sd-0001").unwrap();
    match connection.request(&op, &HelperCall::Ping).unwrap().response {
        HelperResponse::Result(HelperReply::Pong(info)) => {
            assert_eq!(info.pid, child.pid());
            assert_eq!(info.bridge, "bgsd0");
        }
        other => panic!("{other:?}"),
    }
    assert!(!config.socket.exists(), "bound its own socket too");
    Command::new("kill")
        .args(["-TERM", &child.pid().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(socket.exists(), "removed systemd's socket file");
}
