//! The real `banger-helper`, in a throwaway network namespace, fed a table
//! of bad inputs: path tricks, symlinks, other users' files, names outside
//! banger's prefixes, wrong bridge and subnet, foreign pids, malformed
//! envelopes, oversize and stalled lines, a caller with a foreign uid, a
//! connection flood. Each case must get its exact error code, the helper
//! must answer `ping` after every case, and at the end nothing on the host
//! may have changed (links and nftables in the namespace, the root
//! namespace's links, loop devices, the test tree's owners and modes, the
//! signalled processes). The log must hold one rpc line per call.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

#[path = "common/helper.rs"]
mod helper_env;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_proto::OpId;
use banger_proto::helper::{
    EgressEntry, EgressNet, EgressPort, EgressRuleMode, EgressRules, HelperCall, HelperErrorCode,
    HelperResponse,
};
use helper_env::{HelperEnv, NOBODY, Proc, fake_qemu};
use serde_json::{Value, json};

use HelperErrorCode::*;

enum Input {
    /// A typed call, sent with the case's op id.
    Call(HelperCall),
    /// A raw line; `OPID` in it is replaced by the case's op id, which the
    /// error must then echo.
    Line(String),
    /// Raw bytes (a newline is appended).
    Bytes(Vec<u8>),
}

struct Case {
    label: &'static str,
    input: Input,
    want: HelperErrorCode,
}

fn case(label: &'static str, call: HelperCall, want: HelperErrorCode) -> Case {
    Case {
        label,
        input: Input::Call(call),
        want,
    }
}

fn line(label: &'static str, text: impl Into<String>, want: HelperErrorCode) -> Case {
    Case {
        label,
        input: Input::Line(text.into()),
        want,
    }
}

fn attach(path: impl Into<PathBuf>) -> HelperCall {
    HelperCall::LoopAttach {
        path: path.into(),
        read_only: false,
    }
}

fn chown(path: impl Into<PathBuf>) -> HelperCall {
    HelperCall::ChownSocket { path: path.into() }
}

fn tap(name: &str, bridge: &str) -> HelperCall {
    HelperCall::TapCreate {
        name: name.into(),
        owner_uid: 0,
        bridge: bridge.into(),
    }
}

fn signal(pid: u32, sig: &str) -> HelperCall {
    HelperCall::SignalVmm {
        pid,
        signal: sig.into(),
    }
}

fn nat(subnet: &str) -> HelperCall {
    HelperCall::NatEnsure {
        subnet: subnet.into(),
    }
}

/// Every file under `root` (but the helper's own socket dir and log):
/// type, owner, group and mode.
fn tree(root: &Path) -> BTreeMap<String, (u32, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "sock" || rel == "helper.log" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            out.insert(rel, (meta.uid(), meta.gid(), meta.mode()));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn root_ns_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

fn losetup_lines_under(root: &Path) -> Vec<String> {
    let out = Command::new("losetup").arg("-a").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*root.to_string_lossy()))
        .map(str::to_owned)
        .collect()
}

/// (ifname, master, flags) of every link in the namespace.
fn ns_links(env: &HelperEnv) -> Vec<String> {
    env.links()
        .iter()
        .map(|l| format!("{} {} {}", l["ifname"], l["master"], l["flags"]))
        .collect()
}

fn expect_error(label: &str, reply: Option<String>, want: HelperErrorCode) -> HelperResponse {
    let text = reply.unwrap_or_else(|| panic!("[{label}] no reply"));
    let resp: HelperResponse =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("[{label}] bad reply {text}: {e}"));
    match &resp {
        HelperResponse::Error(e) => {
            assert_eq!(e.code, want, "[{label}] wrong code: {}", e.message)
        }
        other => panic!("[{label}] expected {want}, got {other:?}"),
    }
    resp
}

/// Reads one line from a raw stream (or None at EOF).
fn read_line(stream: &mut UnixStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => return Some(String::from_utf8(buf).unwrap()),
            Ok(_) => buf.push(byte[0]),
            // A reset after the reply (unread bytes at close) ends the line.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    (!buf.is_empty()).then(|| String::from_utf8(buf).unwrap())
}

fn at_eof(stream: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    match stream.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn helper_refuses_bad_input_and_changes_nothing() {
    if helper_env::skip("helper_refuses_bad_input_and_changes_nothing") {
        return;
    }
    let started = Instant::now();
    let env = HelperEnv::start(41, vec![0]);
    let root = env.root.clone();
    let data = env.data.clone();
    let run = env.run.clone();
    let outside = root.join("outside");
    let evil = root.join("data-evil");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(&evil).unwrap();

    // Files the cases aim at.
    std::fs::write(data.join("disk.img"), vec![0u8; 4096]).unwrap();
    std::fs::write(outside.join("secret.img"), b"secret").unwrap();
    std::fs::write(evil.join("disk.img"), vec![0u8; 4096]).unwrap();
    let victim = data.join("victim.img");
    std::fs::write(&victim, vec![0u8; 4096]).unwrap();
    std::os::unix::fs::chown(&victim, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink(outside.join("secret.img"), data.join("link.img")).unwrap();
    symlink(&outside, data.join("linkdir")).unwrap();
    symlink(data.join("disk.img"), data.join("inner-link.img")).unwrap();
    std::fs::create_dir(data.join("vmdir")).unwrap();
    let mknod = Command::new("mknod")
        .arg(data.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(mknod.success());
    let mkfifo = Command::new("mkfifo")
        .arg(data.join("fifo"))
        .status()
        .unwrap();
    assert!(mkfifo.success());
    let _vm_sock = UnixListener::bind(run.join("vm.sock")).unwrap();
    let _nobody_sock = UnixListener::bind(run.join("nobody.sock")).unwrap();
    std::os::unix::fs::chown(run.join("nobody.sock"), Some(NOBODY), Some(NOBODY)).unwrap();
    let _outside_sock = UnixListener::bind(outside.join("x.sock")).unwrap();
    std::fs::write(run.join("plain"), b"not a socket").unwrap();
    symlink(run.join("vm.sock"), run.join("link.sock")).unwrap();

    // Processes the signal cases aim at; none may be signalled.
    let mut sleeper = Proc(
        Command::new("sleep")
            .arg("300")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut unmarked_qemu = fake_qemu(&root, &["-M", "microvm"], None);
    let mut foreign_qemu = fake_qemu(
        &root,
        &["-name", "guest=banger-x,process=banger-x"],
        Some(NOBODY),
    );
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // A TAP of another user: egress calls on it are not the caller's to make.
    let nobody = NOBODY.to_string();
    env.netns_ok(
        "ip",
        &[
            "tuntap", "add", "dev", "bgtap7", "mode", "tap", "user", &nobody,
        ],
    );

    // Snapshots before.
    let tree_before = tree(&root);
    let ns_links_before = ns_links(&env);
    let nft_before = env.netns_ok("nft", &["list", "ruleset"]);
    let root_links_before = root_ns_links();
    let loops_before = losetup_lines_under(&root);
    let shadow_before = std::fs::metadata("/etc/shadow")
        .map(|m| (m.uid(), m.mode()))
        .ok();

    let br = env.bridge.clone();
    let long_path = format!("{}/{}", data.display(), "a/".repeat(2600));
    let gateway: std::net::Ipv4Addr = env.gateway.parse().unwrap();
    let guest = std::net::Ipv4Addr::from(u32::from(gateway) + 6);
    let internet = EgressRules {
        mode: EgressRuleMode::Internet,
        nets: vec![],
        ports: vec![],
    };
    let apply = |tap: &str, addr: std::net::Ipv4Addr, rules: EgressRules| HelperCall::EgressApply {
        tap: tap.into(),
        addr,
        rules,
    };
    let resolved = |entries: Vec<EgressEntry>, ttl_secs: u32| HelperCall::EgressResolved {
        tap: "bgtap7".into(),
        addr: guest,
        entries,
        ttl_secs,
    };
    let public = EgressEntry {
        addr: "198.51.100.9".parse().unwrap(),
        port: None,
    };
    let mut cases = vec![
        // Egress rules.
        case(
            "egress on a non-tap name",
            apply("eth0", guest, internet.clone()),
            InvalidName,
        ),
        case(
            "egress on another user's tap",
            apply("bgtap7", guest, internet.clone()),
            NotAllowed,
        ),
        case(
            "egress on a missing tap",
            apply("bgtap99", guest, internet.clone()),
            NotFound,
        ),
        case(
            "egress for the gateway address",
            apply("bgtap7", env.gateway.parse().unwrap(), internet.clone()),
            InvalidArgument,
        ),
        case(
            "egress for an address outside the subnet",
            apply("bgtap7", "192.168.1.7".parse().unwrap(), internet.clone()),
            InvalidArgument,
        ),
        case(
            "egress networks outside mode allow",
            apply(
                "bgtap7",
                guest,
                EgressRules {
                    nets: vec![EgressNet {
                        addr: "0.0.0.0".parse().unwrap(),
                        prefix: 0,
                    }],
                    ..internet.clone()
                },
            ),
            InvalidArgument,
        ),
        case(
            "egress network with host bits",
            apply(
                "bgtap7",
                guest,
                EgressRules {
                    mode: EgressRuleMode::Allow,
                    nets: vec![EgressNet {
                        addr: "10.1.2.3".parse().unwrap(),
                        prefix: 8,
                    }],
                    ports: vec![],
                },
            ),
            InvalidArgument,
        ),
        case(
            "egress with 257 rules",
            apply(
                "bgtap7",
                guest,
                EgressRules {
                    mode: EgressRuleMode::Allow,
                    nets: vec![],
                    ports: vec![
                        EgressPort {
                            addr: "198.51.100.9".parse().unwrap(),
                            port: 443,
                        };
                        257
                    ],
                },
            ),
            InvalidArgument,
        ),
        case(
            "resolved with no entries",
            resolved(vec![], 60),
            InvalidArgument,
        ),
        case(
            "resolved metadata address",
            resolved(
                vec![EgressEntry {
                    addr: "169.254.169.254".parse().unwrap(),
                    port: None,
                }],
                60,
            ),
            InvalidArgument,
        ),
        case(
            "resolved loopback address",
            resolved(
                vec![EgressEntry {
                    addr: "127.0.0.1".parse().unwrap(),
                    port: Some(22),
                }],
                60,
            ),
            InvalidArgument,
        ),
        case(
            "resolved port 0",
            resolved(
                vec![EgressEntry {
                    port: Some(0),
                    ..public
                }],
                60,
            ),
            InvalidArgument,
        ),
        case(
            "resolved 257 entries",
            resolved(vec![public; 257], 60),
            InvalidArgument,
        ),
        case(
            "resolved on another user's tap",
            resolved(vec![public], 60),
            NotAllowed,
        ),
        case(
            "egress clear of another user's tap",
            HelperCall::EgressClear {
                tap: "bgtap7".into(),
                addr: guest,
            },
            NotAllowed,
        ),
        case(
            "egress clear of a bad tap name",
            HelperCall::EgressClear {
                tap: "bgtap1;nft flush ruleset".into(),
                addr: guest,
            },
            InvalidName,
        ),
        line(
            "egress address not ipv4",
            r#"{"version":1,"op_id":"OPID","call":"egress_clear","args":{"tap":"bgtap1","addr":"10.231.41.300"}}"#,
            BadRequest,
        ),
        line(
            "egress unknown mode",
            r#"{"version":1,"op_id":"OPID","call":"egress_apply","args":{"tap":"bgtap1","addr":"10.231.41.7","rules":{"mode":"everything"}}}"#,
            BadRequest,
        ),
        line(
            "egress rules with an unknown field",
            r#"{"version":1,"op_id":"OPID","call":"egress_apply","args":{"tap":"bgtap1","addr":"10.231.41.7","rules":{"mode":"internet","raw":"flush ruleset"}}}"#,
            BadRequest,
        ),
        // Paths for loop devices.
        case("relative path", attach("data/disk.img"), InvalidPath),
        case(
            "dot-dot inside the data dir",
            attach(format!("{}/../outside/secret.img", data.display())),
            InvalidPath,
        ),
        case(
            "dot-dot to /etc/shadow",
            attach(format!("{}/../../../../etc/shadow", data.display())),
            InvalidPath,
        ),
        case(
            "absolute path outside data dirs",
            attach("/etc/passwd"),
            InvalidPath,
        ),
        case(
            "prefix trick /data-evil vs /data",
            attach(evil.join("disk.img")),
            InvalidPath,
        ),
        case("the data dir itself", attach(&data), InvalidPath),
        case(
            "dot component",
            attach(format!("{}/./disk.img", data.display())),
            InvalidPath,
        ),
        case(
            "double slash",
            attach(format!("{}//disk.img", data.display())),
            InvalidPath,
        ),
        case(
            "trailing slash",
            attach(format!("{}/disk.img/", data.display())),
            InvalidPath,
        ),
        case(
            "NUL in path",
            attach(format!("{}/disk\0.img", data.display())),
            InvalidPath,
        ),
        case("overlong path", attach(long_path), InvalidPath),
        case(
            "symlink as final component",
            attach(data.join("link.img")),
            InvalidPath,
        ),
        case(
            "symlink as intermediate dir",
            attach(data.join("linkdir/secret.img")),
            InvalidPath,
        ),
        case(
            "symlink to a file inside the data dir",
            attach(data.join("inner-link.img")),
            InvalidPath,
        ),
        case("file owned by another uid", attach(&victim), NotAllowed),
        case(
            "directory instead of a file",
            attach(data.join("vmdir")),
            InvalidPath,
        ),
        case(
            "character device instead of a file",
            attach(data.join("null")),
            InvalidPath,
        ),
        case(
            "fifo instead of a file",
            attach(data.join("fifo")),
            InvalidPath,
        ),
        case("block device path", attach("/dev/sda"), InvalidPath),
        case("missing file", attach(data.join("missing.img")), NotFound),
        // Sockets to chown.
        case(
            "chown socket outside runtime dirs",
            chown(outside.join("x.sock")),
            InvalidPath,
        ),
        case(
            "chown a regular file",
            chown(run.join("plain")),
            InvalidPath,
        ),
        case(
            "chown through a symlink",
            chown(run.join("link.sock")),
            InvalidPath,
        ),
        case(
            "chown another user's socket",
            chown(run.join("nobody.sock")),
            NotAllowed,
        ),
        case("chown /etc/shadow", chown("/etc/shadow"), InvalidPath),
        case("chown the runtime dir itself", chown(&run), InvalidPath),
        case(
            "chown with dot-dot",
            chown(format!("{}/../outside/x.sock", run.display())),
            InvalidPath,
        ),
        // Interface names.
        case("tap named eth0", tap("eth0", &br), InvalidName),
        case("tap named lo", tap("lo", &br), InvalidName),
        case("tap named docker0", tap("docker0", &br), InvalidName),
        case("tap named banger0", tap("banger0", &br), InvalidName),
        case("tap named bgtap", tap("bgtap", &br), InvalidName),
        case("tap named bgtapx", tap("bgtapx", &br), InvalidName),
        case("tap name with a path", tap("bgtap1/../", &br), InvalidName),
        case("tap name with newline", tap("bgtap1\n", &br), InvalidName),
        case("tap name with space", tap("bgtap 1", &br), InvalidName),
        case("tap name with tab", tap("bgtap1\t", &br), InvalidName),
        case("tap name with NUL", tap("bgtap1\0", &br), InvalidName),
        case(
            "tap name with unicode digit",
            tap("bgtap\u{ff11}", &br),
            InvalidName,
        ),
        case(
            "overlong tap name",
            tap("bgtap1234567890123", &br),
            InvalidName,
        ),
        case(
            "tap owned by a uid not allowed",
            HelperCall::TapCreate {
                name: "bgtap1".into(),
                owner_uid: NOBODY,
                bridge: br.clone(),
            },
            InvalidArgument,
        ),
        case(
            "tap on another bridge",
            tap("bgtap1", "docker0"),
            InvalidName,
        ),
        case(
            "delete tap eth0",
            HelperCall::TapDelete {
                name: "eth0".into(),
            },
            InvalidName,
        ),
        case(
            "delete tap lo",
            HelperCall::TapDelete { name: "lo".into() },
            InvalidName,
        ),
        // Bridges.
        case(
            "ensure bridge eth0",
            HelperCall::BridgeEnsure {
                name: "eth0".into(),
            },
            InvalidName,
        ),
        case(
            "ensure default bridge name not configured",
            HelperCall::BridgeEnsure {
                name: "banger0".into(),
            },
            InvalidName,
        ),
        case(
            "delete bridge lo",
            HelperCall::BridgeDelete { name: "lo".into() },
            InvalidName,
        ),
        // Subnets.
        case(
            "nat for another subnet",
            nat("10.231.99.0/24"),
            InvalidArgument,
        ),
        case("nat for 0.0.0.0/0", nat("0.0.0.0/0"), InvalidArgument),
        case(
            "nat subnet with host bits",
            nat("10.231.41.1/24"),
            InvalidArgument,
        ),
        case("nat subnet garbage", nat("lol"), InvalidArgument),
        case("nat subnet ipv6", nat("fd00::/64"), InvalidArgument),
        case(
            "nat remove for 0.0.0.0/0",
            HelperCall::NatRemove {
                subnet: "0.0.0.0/0".into(),
            },
            InvalidArgument,
        ),
        // Device-mapper and loop devices.
        case(
            "dm name outside the prefix",
            HelperCall::DmSnapshotCreate {
                name: "root".into(),
                origin: "/dev/loop0".into(),
                cow: "/dev/loop1".into(),
            },
            InvalidName,
        ),
        case(
            "dm name with a path",
            HelperCall::DmSnapshotCreate {
                name: "banger-../x".into(),
                origin: "/dev/loop0".into(),
                cow: "/dev/loop1".into(),
            },
            InvalidName,
        ),
        case(
            "dm origin not a loop device",
            HelperCall::DmSnapshotCreate {
                name: "banger-x".into(),
                origin: "/dev/sda".into(),
                cow: "/dev/loop1".into(),
            },
            InvalidName,
        ),
        case(
            "dm remove dm-0",
            HelperCall::DmRemove {
                name: "dm-0".into(),
            },
            InvalidName,
        ),
        case(
            "detach /dev/sda",
            HelperCall::LoopDetach {
                device: "/dev/sda".into(),
            },
            InvalidName,
        ),
        case(
            "detach /dev/loop",
            HelperCall::LoopDetach {
                device: "/dev/loop".into(),
            },
            InvalidName,
        ),
        case(
            "detach /dev/loop1/../sda",
            HelperCall::LoopDetach {
                device: "/dev/loop1/../sda".into(),
            },
            InvalidName,
        ),
        case(
            "detach a loop device that does not exist",
            HelperCall::LoopDetach {
                device: "/dev/loop987654".into(),
            },
            NotFound,
        ),
        // Signals.
        case("signal pid 1", signal(1, "KILL"), InvalidArgument),
        case("signal pid 0", signal(0, "KILL"), InvalidArgument),
        case(
            "signal a negative pid",
            signal(u32::MAX, "KILL"),
            InvalidArgument,
        ),
        case(
            "signal the test itself",
            signal(std::process::id(), "KILL"),
            NotAllowed,
        ),
        case(
            "signal the helper itself",
            signal(env.pid, "KILL"),
            NotAllowed,
        ),
        case(
            "signal a non-qemu process",
            signal(sleeper.pid(), "KILL"),
            NotAllowed,
        ),
        case(
            "signal a qemu without banger's marker",
            signal(unmarked_qemu.pid(), "KILL"),
            NotAllowed,
        ),
        case(
            "signal a marked qemu of a uid not allowed",
            signal(foreign_qemu.pid(), "KILL"),
            NotAllowed,
        ),
        case(
            "signal a pid that does not exist",
            signal(pid_max + 1, "KILL"),
            NotFound,
        ),
        case(
            "signal STOP",
            signal(sleeper.pid(), "STOP"),
            InvalidArgument,
        ),
        case(
            "signal SIGTERM spelling",
            signal(sleeper.pid(), "SIGTERM"),
            InvalidArgument,
        ),
        case(
            "signal by number",
            signal(sleeper.pid(), "9"),
            InvalidArgument,
        ),
        case(
            "signal lowercase",
            signal(sleeper.pid(), "term"),
            InvalidArgument,
        ),
        // Envelopes.
        line(
            "wrong version",
            r#"{"version":2,"op_id":"OPID","call":"ping"}"#,
            BadVersion,
        ),
        line(
            "version 0",
            r#"{"version":0,"op_id":"OPID","call":"ping"}"#,
            BadVersion,
        ),
        line(
            "version as a string",
            r#"{"version":"1","op_id":"OPID","call":"ping"}"#,
            BadRequest,
        ),
        line(
            "missing version",
            r#"{"op_id":"OPID","call":"ping"}"#,
            BadRequest,
        ),
        line(
            "unknown call",
            r#"{"version":1,"op_id":"OPID","call":"format_disk","args":{"dev":"/dev/sda"}}"#,
            BadRequest,
        ),
        line(
            "call not a string",
            r#"{"version":1,"op_id":"OPID","call":["ping"]}"#,
            BadRequest,
        ),
        line(
            "missing args",
            r#"{"version":1,"op_id":"OPID","call":"tap_delete"}"#,
            BadRequest,
        ),
        line(
            "args missing a field",
            r#"{"version":1,"op_id":"OPID","call":"tap_create","args":{"name":"bgtap1","bridge":"x"}}"#,
            BadRequest,
        ),
        line(
            "extra field in args",
            r#"{"version":1,"op_id":"OPID","call":"tap_delete","args":{"name":"bgtap1","force":true}}"#,
            BadRequest,
        ),
        line(
            "extra top-level field",
            r#"{"version":1,"op_id":"OPID","call":"ping","sudo":true}"#,
            BadRequest,
        ),
        line(
            "args on a call without args",
            r#"{"version":1,"op_id":"OPID","call":"ping","args":{"x":1}}"#,
            BadRequest,
        ),
        line(
            "pid as a string",
            r#"{"version":1,"op_id":"OPID","call":"signal_vmm","args":{"pid":"1","signal":"KILL"}}"#,
            BadRequest,
        ),
        line(
            "negative owner uid",
            r#"{"version":1,"op_id":"OPID","call":"tap_create","args":{"name":"bgtap1","owner_uid":-1,"bridge":"x"}}"#,
            BadRequest,
        ),
        line(
            "read_only not a bool",
            r#"{"version":1,"op_id":"OPID","call":"loop_attach","args":{"path":"/x","read_only":"yes"}}"#,
            BadRequest,
        ),
        line("non-JSON", "hello helper", BadRequest),
        line(
            "truncated JSON",
            r#"{"version":1,"op_id":"op-trunc","call":"pi"#,
            BadRequest,
        ),
        line("JSON array", "[1,2,3]", BadRequest),
        line("empty line", "", BadRequest),
        line(
            "missing op id",
            r#"{"version":1,"call":"ping"}"#,
            BadRequest,
        ),
        line(
            "empty op id",
            r#"{"version":1,"op_id":"op-","call":"ping"}"#,
            BadRequest,
        ),
        line(
            "op id with a space",
            r#"{"version":1,"op_id":"op-a b","call":"ping"}"#,
            BadRequest,
        ),
        line(
            "op id without prefix",
            r#"{"version":1,"op_id":"12345","call":"ping"}"#,
            BadRequest,
        ),
        line(
            "op id too long",
            format!(
                r#"{{"version":1,"op_id":"op-{}","call":"ping"}}"#,
                "a".repeat(65)
            ),
            BadRequest,
        ),
        line(
            "op id as a number",
            r#"{"version":1,"op_id":7,"call":"ping"}"#,
            BadRequest,
        ),
        Case {
            label: "non-UTF-8 bytes",
            input: Input::Bytes(
                b"{\"version\":1,\"op_id\":\"op-x\",\"call\":\"\xff\xfe\"}".to_vec(),
            ),
            want: BadRequest,
        },
    ];

    // op ids that must appear exactly once in the log, with their code.
    let mut logged: Vec<(OpId, Option<HelperErrorCode>)> = Vec::new();
    // rpc lines expected without an op id (requests with none valid).
    let mut anonymous_failures = 0usize;
    let mut labels = std::collections::BTreeSet::new();
    let case_count = cases.len();

    for (i, c) in cases.drain(..).enumerate() {
        assert!(labels.insert(c.label), "duplicate label {}", c.label);
        let op = OpId::parse(&format!("op-case-{i:03}")).unwrap();
        let mut client = env.client();
        let echo = match &c.input {
            Input::Call(call) => {
                client.send(&op, call).unwrap();
                true
            }
            Input::Line(text) => {
                let echo = text.contains("OPID");
                client
                    .send_raw(text.replace("OPID", op.as_str()).as_bytes())
                    .unwrap();
                client.send_raw(b"\n").unwrap();
                echo
            }
            Input::Bytes(bytes) => {
                client.send_raw(bytes).unwrap();
                client.send_raw(b"\n").unwrap();
                false
            }
        };
        let reply = client.read_line().unwrap().map(|line| {
            assert!(line.fds.is_empty(), "[{}] got a descriptor", c.label);
            line.text
        });
        let resp = expect_error(c.label, reply, c.want);
        if let HelperResponse::Error(e) = &resp {
            if echo {
                assert_eq!(
                    e.op_id.as_deref(),
                    Some(op.as_str()),
                    "[{}] op id not echoed",
                    c.label
                );
                logged.push((op.clone(), Some(c.want)));
            } else {
                assert_eq!(
                    e.op_id, None,
                    "[{}] echoed an op id it should not have",
                    c.label
                );
                anonymous_failures += 1;
            }
            assert!(
                !e.message.is_empty() && e.message.len() < 400,
                "[{}] {}",
                c.label,
                e.message
            );
        }
        logged.push((env.ping_ok(), None));
    }

    // Connection-level cases.
    let mut special = 0;

    // Oversize line: bad_request, connection closed, helper still serves.
    {
        let label = "oversize line (70 KiB)";
        let mut s = UnixStream::connect(&env.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let big = format!(
            r#"{{"version":1,"op_id":"op-big","call":"tap_delete","args":{{"name":"{}"}}}}"#,
            "a".repeat(70 * 1024)
        );
        let _ = s.write_all(big.as_bytes());
        let _ = s.write_all(b"\n");
        let resp = expect_error(label, read_line(&mut s), BadRequest);
        if let HelperResponse::Error(e) = resp {
            assert!(e.message.contains("exceeds"), "{}", e.message);
        }
        assert!(at_eof(&mut s), "[{label}] connection not closed");
        anonymous_failures += 1;
        special += 1;
        logged.push((env.ping_ok(), None));
    }

    // Half a line, then the client shuts its side.
    {
        let label = "line cut by end of input";
        let mut s = UnixStream::connect(&env.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(br#"{"version":1,"op_id":"op-cut","#).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        expect_error(label, read_line(&mut s), BadRequest);
        anonymous_failures += 1;
        special += 1;
        logged.push((env.ping_ok(), None));
    }

    // A staller does not hold up anyone else, and is cut off.
    {
        let label = "stalled half line while another client is served";
        let mut staller = UnixStream::connect(&env.socket).unwrap();
        staller
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        staller
            .write_all(br#"{"version":1,"op_id":"op-stall","ca"#)
            .unwrap();
        let t = Instant::now();
        logged.push((env.ping_ok(), None));
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "[{label}] ping waited {:?}",
            t.elapsed()
        );
        let resp = expect_error(label, read_line(&mut staller), BadRequest);
        if let HelperResponse::Error(e) = resp {
            assert!(e.message.contains("not completed"), "{}", e.message);
        }
        assert!(at_eof(&mut staller));
        anonymous_failures += 1;
        special += 1;
        logged.push((env.ping_ok(), None));
    }

    // A caller whose uid is not allowed.
    {
        let label = "caller with a foreign uid";
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        match python {
            None => eprintln!("[{label}] skipped: no system python3 to run as uid {NOBODY}"),
            Some(python) => {
                let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"version":1,"op_id":"op-foreign","call":"tap_list"}\n')
except (BrokenPipeError, ConnectionResetError):
    pass  # the helper may already have refused and closed
data = b""
while not data.endswith(b"\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
try:
    rest = s.recv(4096)
except ConnectionResetError:
    rest = b""
sys.stdout.write("EOF" if rest == b"" else "MORE")
"#;
                let out = Command::new("setpriv")
                    .arg(format!("--reuid={NOBODY}"))
                    .arg(format!("--regid={NOBODY}"))
                    .arg("--clear-groups")
                    .arg(python)
                    .args(["-c", script])
                    .arg(&env.socket)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "[{label}] client failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let (reply, tail) = text.split_once('\n').unwrap();
                expect_error(label, Some(reply.to_owned()), PermissionDenied);
                assert_eq!(tail, "EOF", "[{label}] connection not closed");
                special += 1;
            }
        }
        logged.push((env.ping_ok(), None));
    }

    // More connections than the cap: the extra one is refused, the
    // helper recovers once they close.
    {
        let label = "connection flood beyond the cap";
        // Earlier connections are over (each holds a slot until its
        // thread ends).
        env.wait_connection_threads(0);
        let idle: Vec<UnixStream> = (0..32)
            .map(|_| UnixStream::connect(&env.socket).unwrap())
            .collect();
        // The helper took them all in: the cap is reached.
        env.wait_connection_threads(32);
        let mut extra = UnixStream::connect(&env.socket).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let resp = expect_error(label, read_line(&mut extra), OperationFailed);
        if let HelperResponse::Error(e) = resp {
            assert!(e.message.contains("busy"), "{}", e.message);
        }
        drop(idle);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let op = env.op("flood");
            let mut c = env.client();
            c.send(&op, &HelperCall::Ping).unwrap();
            match c.read_reply().map(|r| r.response) {
                Ok(HelperResponse::Result(_)) => {
                    logged.push((op, None));
                    break;
                }
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "[{label}] helper did not recover"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        special += 1;
    }

    // Nothing changed.
    assert_eq!(tree(&root), tree_before, "the test tree changed");
    let victim_meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        (victim_meta.uid(), victim_meta.mode() & 0o7777),
        (NOBODY, 0o600)
    );
    assert_eq!(
        ns_links(&env),
        ns_links_before,
        "links in the namespace changed"
    );
    assert_eq!(
        env.netns_ok("nft", &["list", "ruleset"]),
        nft_before,
        "nftables changed"
    );
    let root_links_after = root_ns_links();
    let appeared: Vec<&String> = root_links_after
        .iter()
        .filter(|l| !root_links_before.contains(l))
        .filter(|l| l.starts_with("bgtap") || **l == env.bridge)
        .collect();
    assert!(
        appeared.is_empty(),
        "links appeared in the root namespace: {appeared:?}"
    );
    assert_eq!(
        losetup_lines_under(&root),
        loops_before,
        "loop devices changed"
    );
    assert_eq!(
        std::fs::metadata("/etc/shadow")
            .map(|m| (m.uid(), m.mode()))
            .ok(),
        shadow_before
    );
    for (what, p) in [
        ("sleep", &mut sleeper),
        ("unmarked qemu", &mut unmarked_qemu),
        ("foreign qemu", &mut foreign_qemu),
    ] {
        assert!(p.0.try_wait().unwrap().is_none(), "{what} was signalled");
    }
    assert!(env.link(&env.bridge).is_none(), "the bridge was created");

    // One rpc line per call, carrying its op id.
    for (op, code) in &logged {
        let lines = env.rpc_lines(op);
        assert_eq!(lines.len(), 1, "{op}: {lines:?}");
        let f = &lines[0]["fields"];
        match code {
            None => assert_eq!(f["message"], "helper rpc completed", "{op}"),
            Some(code) => {
                assert_eq!(f["message"], "helper rpc failed", "{op}");
                assert_eq!(f["code"], json!(code.as_str()), "{op}");
            }
        }
        assert_eq!(f["uid"], 0, "{op}");
        assert!(f["duration_ms"].is_number(), "{op}");
        assert!(f["call"].is_string(), "{op}");
    }
    let all = env.log_lines();
    let anonymous = all
        .iter()
        .filter(|l| l["fields"]["message"] == "helper rpc failed" && l["fields"]["op_id"].is_null())
        .count();
    assert_eq!(anonymous, anonymous_failures, "rpc lines without an op id");
    let rpc_total = all
        .iter()
        .filter(|l| {
            matches!(
                l["fields"]["message"].as_str(),
                Some("helper rpc completed" | "helper rpc failed")
            )
        })
        .count();
    assert_eq!(
        rpc_total,
        logged.len() + anonymous_failures,
        "rpc lines in all"
    );

    eprintln!(
        "helper_bad_input: {case_count} table cases + {special} connection cases refused with the expected codes, {} pings, in {:?}",
        logged.iter().filter(|(_, c)| c.is_none()).count(),
        started.elapsed()
    );
    assert!(case_count + special >= 50);
}

/// Sends one raw request line to the helper as `uid` (through a system
/// python3 run with `setpriv`, so `SO_PEERCRED` sees that uid); returns
/// the reply line, or None (after printing why) when there is no python3.
fn call_as(uid: u32, socket: &Path, request: &str) -> Option<String> {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(python) = python else {
        eprintln!("no system python3 to call the helper as uid {uid}: those cases skipped");
        return None;
    };
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
data = b""
while not data.endswith(b"\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"#;
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(python)
        .args(["-c", script])
        .arg(socket)
        .arg(request)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client as uid {uid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim_end().to_owned())
}

/// Least privilege: a call touches only the caller's own objects (even
/// those of another allowed uid are refused), a socket is chowned only
/// with one link, and the calls the daemon does not make are off unless
/// the config enables their feature. Nothing may change.
#[test]
fn helper_refuses_other_uids_objects_and_disabled_calls() {
    use banger_proto::helper::HelperFeature;

    if helper_env::skip("helper_refuses_other_uids_objects_and_disabled_calls") {
        return;
    }
    const OTHER: u32 = 4242;
    // Chown and signals on; devices and network removal off.
    let env = HelperEnv::start_with(
        43,
        vec![0, OTHER],
        vec![HelperFeature::SocketChown, HelperFeature::Signals],
    );
    let root = env.root.clone();
    let run = env.run.clone();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let br = env.bridge.clone();

    let _other = UnixListener::bind(run.join("other.sock")).unwrap();
    std::os::unix::fs::chown(run.join("other.sock"), Some(OTHER), Some(OTHER)).unwrap();
    let _linked = UnixListener::bind(run.join("linked.sock")).unwrap();
    std::fs::hard_link(run.join("linked.sock"), run.join("linked2.sock")).unwrap();
    let _root_sock = UnixListener::bind(run.join("root.sock")).unwrap();
    let _mine = UnixListener::bind(run.join("mine.sock")).unwrap();
    std::os::unix::fs::chown(run.join("mine.sock"), Some(OTHER), Some(0)).unwrap();
    std::fs::write(env.data.join("disk.img"), vec![0u8; 4096]).unwrap();
    let mut others_qemu = fake_qemu(
        &root,
        &["-name", "guest=banger-y,process=banger-y"],
        Some(OTHER),
    );
    // The bridge, and a TAP of the other allowed uid on it.
    match env.call(
        &env.op("bridge"),
        HelperCall::BridgeEnsure { name: br.clone() },
    ) {
        HelperResponse::Result(_) => {}
        other => panic!("bridge_ensure: {other:?}"),
    }
    let uid = OTHER.to_string();
    env.netns_ok(
        "ip",
        &[
            "tuntap", "add", "dev", "bgtap9", "mode", "tap", "user", &uid,
        ],
    );
    env.netns_ok("ip", &["link", "set", "dev", "bgtap9", "master", &br]);

    let tree_before = tree(&root);
    let links_before = ns_links(&env);
    let nft_before = env.netns_ok("nft", &["list", "ruleset"]);

    let disabled = |call: HelperCall| (call, NotAllowed, true);
    let refused = |call: HelperCall| (call, NotAllowed, false);
    let cases: Vec<(&str, (HelperCall, HelperErrorCode, bool))> = vec![
        (
            "chown a socket of another allowed uid",
            refused(chown(run.join("other.sock"))),
        ),
        (
            "chown the caller's socket with two hard links",
            refused(chown(run.join("linked.sock"))),
        ),
        (
            "chown the second name of that socket",
            refused(chown(run.join("linked2.sock"))),
        ),
        (
            "delete the tap of another allowed uid",
            refused(HelperCall::TapDelete {
                name: "bgtap9".into(),
            }),
        ),
        (
            "create a tap for another allowed uid",
            refused(HelperCall::TapCreate {
                name: "bgtap8".into(),
                owner_uid: OTHER,
                bridge: br.clone(),
            }),
        ),
        (
            "signal a banger vmm of another allowed uid",
            refused(signal(others_qemu.pid(), "KILL")),
        ),
        (
            "loop_attach while devices are off",
            disabled(HelperCall::LoopAttach {
                path: env.data.join("disk.img"),
                read_only: true,
            }),
        ),
        (
            "loop_detach while devices are off",
            disabled(HelperCall::LoopDetach {
                device: "/dev/loop0".into(),
            }),
        ),
        (
            "dm_snapshot_create while devices are off",
            disabled(HelperCall::DmSnapshotCreate {
                name: "banger-x".into(),
                origin: "/dev/loop0".into(),
                cow: "/dev/loop1".into(),
            }),
        ),
        (
            "dm_remove while devices are off",
            disabled(HelperCall::DmRemove {
                name: "banger-x".into(),
            }),
        ),
        (
            "bridge_delete while network removal is off",
            disabled(HelperCall::BridgeDelete { name: br.clone() }),
        ),
        (
            "nat_remove while network removal is off",
            disabled(HelperCall::NatRemove {
                subnet: env.subnet.clone(),
            }),
        ),
    ];
    let mut logged: Vec<(OpId, Option<HelperErrorCode>)> = Vec::new();
    for (label, (call, want, off)) in cases {
        let op = env.op("priv");
        let resp = env.call(&op, call);
        match &resp {
            HelperResponse::Error(e) => {
                assert_eq!(e.code, want, "[{label}] {}", e.message);
                assert_eq!(
                    e.message.contains("is disabled; enable it with"),
                    off,
                    "[{label}] {}",
                    e.message
                );
            }
            other => panic!("[{label}] expected {want}, got {other:?}"),
        }
        logged.push((op, Some(want)));
        logged.push((env.ping_ok(), None));
    }
    // The caller sees only its own taps.
    match env.call(&env.op("list"), HelperCall::TapList) {
        HelperResponse::Result(banger_proto::helper::HelperReply::Taps { taps }) => {
            assert!(taps.is_empty(), "root sees another uid's taps: {taps:?}")
        }
        other => panic!("tap_list: {other:?}"),
    }

    // As the other allowed uid: a root-owned socket is refused, its own
    // is given to its uid and gid.
    let request = |op: &str, path: &Path| {
        format!(
            r#"{{"version":1,"op_id":"{op}","call":"chown_socket","args":{{"path":"{}"}}}}"#,
            path.display()
        )
    };
    let mut tree_expected = tree_before.clone();
    if let Some(reply) = call_as(
        OTHER,
        &env.socket,
        &request("op-asuid-1", &run.join("root.sock")),
    ) {
        let resp = expect_error(
            "chown a root-owned socket as uid 4242",
            Some(reply),
            NotAllowed,
        );
        if let HelperResponse::Error(e) = resp {
            assert!(e.message.contains("belongs to uid 0"), "{}", e.message);
        }
        let reply = call_as(
            OTHER,
            &env.socket,
            &request("op-asuid-2", &run.join("mine.sock")),
        )
        .unwrap();
        assert_eq!(reply, r#"{"result":{"kind":"done"}}"#);
        let meta = std::fs::symlink_metadata(run.join("mine.sock")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (OTHER, OTHER));
        let entry = tree_expected.get_mut("run/mine.sock").unwrap();
        entry.1 = OTHER;
    }

    // Nothing else changed.
    assert_eq!(tree(&root), tree_expected, "the test tree changed");
    assert_eq!(ns_links(&env), links_before, "links changed");
    let tap = env
        .link("bgtap9")
        .expect("the other uid's tap is still there");
    assert_eq!(tap["master"], br.as_str());
    assert!(
        env.link("bgtap8").is_none(),
        "a tap was made for another uid"
    );
    assert_eq!(
        env.netns_ok("nft", &["list", "ruleset"]),
        nft_before,
        "nftables changed"
    );
    assert!(
        others_qemu.0.try_wait().unwrap().is_none(),
        "another uid's vmm was signalled"
    );
    for (op, code) in &logged {
        let lines = env.rpc_lines(op);
        assert_eq!(lines.len(), 1, "{op}: {lines:?}");
        if let Some(code) = code {
            assert_eq!(lines[0]["fields"]["code"], json!(code.as_str()), "{op}");
        }
    }
}
