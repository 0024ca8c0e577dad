//! Network namespaces and a real `banger-helper` for bridged tests and
//! benchmarks: a "machine" namespace where banger runs and an "outside"
//! one, joined by a veth pair, with an HTTP server outside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::World;

pub const HELPER: &str = env!("CARGO_BIN_EXE_banger-helper");
pub const OUTSIDE_ADDR: &str = "198.18.0.2";
pub const HOST_VETH_ADDR: &str = "198.18.0.1";

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

pub fn must(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two network namespaces joined by a veth pair, an HTTP server in the
/// "outside" one, and a resolv.conf that `ip netns exec` mounts in the
/// banger one. Torn down on drop.
pub struct TestNet {
    pub ns: String,
    pub outside: String,
    netns_etc: PathBuf,
    server: Child,
    pub server_log: PathBuf,
}

impl TestNet {
    pub fn new(dir: &Path) -> Self {
        let tag = std::process::id() % 100_000;
        let ns = format!("bgt{tag}h");
        let outside = format!("bgt{tag}o");
        let (veth_h, veth_o) = (format!("bgv{tag}h"), format!("bgv{tag}o"));
        must("ip", &["netns", "add", &ns]);
        must("ip", &["netns", "add", &outside]);
        let in_ns = |ns: &str, args: &[&str]| {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        must(
            "ip",
            &[
                "link", "add", &veth_h, "netns", &ns, "type", "veth", "peer", "name", &veth_o,
                "netns", &outside,
            ],
        );
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
        in_ns(&outside, &["ip", "link", "set", "lo", "up"]);
        in_ns(
            &ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{HOST_VETH_ADDR}/24"),
                "dev",
                &veth_h,
            ],
        );
        in_ns(&ns, &["ip", "link", "set", &veth_h, "up"]);
        in_ns(
            &outside,
            &[
                "ip",
                "addr",
                "add",
                &format!("{OUTSIDE_ADDR}/24"),
                "dev",
                &veth_o,
            ],
        );
        in_ns(&outside, &["ip", "link", "set", &veth_o, "up"]);
        // `ip netns exec NS` bind-mounts /etc/netns/NS/resolv.conf over
        // /etc/resolv.conf: the host side of this "machine" asks banger's DNS.
        let netns_etc = PathBuf::from("/etc/netns").join(&ns);
        std::fs::create_dir_all(&netns_etc).unwrap();
        std::fs::write(netns_etc.join("resolv.conf"), "nameserver 10.77.0.1\n").unwrap();
        // The outside world: an HTTP server that logs who connects. It has
        // no route to the guests' subnet, so only NAT gets answers back.
        let server_log = dir.join("outside-http.log");
        let root = dir.join("www");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("hello"), "hello from outside\n").unwrap();
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &outside,
                "python3",
                "-m",
                "http.server",
                "8080",
            ])
            .args(["--bind", OUTSIDE_ADDR, "--directory"])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&server_log).unwrap())
            .spawn()
            .unwrap();
        Self {
            ns,
            outside,
            netns_etc,
            server,
            server_log,
        }
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Names of the banger TAP devices in the banger namespace.
    pub fn taps(&self) -> Vec<String> {
        let out = self.exec(&["ip", "-j", "link", "show"]);
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut taps: Vec<String> = links
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("bgtap"))
            .map(str::to_owned)
            .collect();
        taps.sort();
        taps
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.netns_etc);
        let _ = run("ip", &["netns", "del", &self.ns]);
        let _ = run("ip", &["netns", "del", &self.outside]);
    }
}

/// The real helper, in the banger namespace.
pub struct Helper {
    config: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    ns: String,
    child: Option<Child>,
}

impl Helper {
    pub fn new(dir: &Path, world: &World, ns: &str) -> Self {
        let hdir = dir.join("helper");
        std::fs::create_dir_all(&hdir).unwrap();
        let socket = hdir.join("helper.sock");
        let log = hdir.join("helper.log");
        let config = hdir.join("helper.json");
        let cfg = json!({
            "allowed_uids": [0],
            "socket": socket,
            "data_dirs": [world.root().join("data/banger")],
            "runtime_dirs": [world.root().join("run/banger")],
            "log_file": log,
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut h = Self {
            config,
            socket,
            log,
            ns: ns.to_owned(),
            child: None,
        };
        h.start();
        h
    }

    pub fn start(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, HELPER, "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Up when it accepts a connection, not when its socket file exists:
        // the file appears at bind(), a moment before listen().
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("banger-helper exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "banger-helper did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The helper's own pid (`ip netns exec` execs it, so it is the child).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn network(w: &World) -> Value {
    w.banger_json(&["network"])
}

/// Waits until the warm pool is back to `pool` TAPs (refills run in the
/// background after a VM takes a TAP); returns `banger network` then.
pub fn wait_pool_full(w: &World, pool: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = network(w);
        if n["idle_taps"].as_array().unwrap().len() >= pool || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A JSON array of strings, sorted.
pub fn strings(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    s.sort();
    s
}

/// Every banger TAP in the namespace is either held by a VM or idle in the
/// pool, and no address is leased twice; returns `banger network`.
pub fn assert_no_orphans(w: &World, net: &TestNet) -> Value {
    let n = network(w);
    let mut known = strings(&n["idle_taps"]);
    known.extend(strings(&n["taps_in_use"]));
    known.sort();
    assert_eq!(net.taps(), known, "tap devices vs the daemon's view: {n}");
    let mut addrs: Vec<&str> = n["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["address"].as_str().unwrap())
        .collect();
    let count = addrs.len();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), count, "an address is leased twice: {n}");
    n
}
