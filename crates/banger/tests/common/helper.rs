//! A real `banger-helper` in a throwaway network namespace, for the helper
//! integration tests (included with `#[path]`, not through `common/mod.rs`).
//!
//! The helper runs under `unshare --net --mount` with a fresh sysfs, so
//! every bridge, TAP and nftables rule it makes lives in a namespace that
//! disappears when the helper exits; `setpriv --pdeathsig KILL` ends it
//! if the test process dies first, and [`HelperEnv`]'s `Drop` stops it
//! otherwise. Its config, socket, log and data/runtime dirs live in a temp
//! dir (mode 0755, so a client running as another uid can reach the
//! socket).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use banger_helper::client::{Connection, Reply};
use banger_proto::OpId;
use banger_proto::helper::{HelperCall, HelperConfig, HelperFeature, HelperResponse};
use serde_json::Value;

pub const HELPER: &str = env!("CARGO_BIN_EXE_banger-helper");

/// The uid used for "somebody else": `nobody` on Debian.
pub const NOBODY: u32 = 65534;

/// True (after printing why) when the test cannot run here: the helper
/// and its namespaces need root and a few tools.
pub fn skip(test: &str) -> bool {
    if !banger_helper::running_as_root() {
        eprintln!("skipping {test}: needs root (network namespaces, TAP devices, nft)");
        return true;
    }
    for tool in ["unshare", "nsenter", "setpriv", "ip", "nft"] {
        if !tool_exists(tool) {
            eprintln!("skipping {test}: `{tool}` is not installed");
            return true;
        }
    }
    false
}

pub fn tool_exists(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub struct HelperEnv {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub data: PathBuf,
    pub run: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub bridge: String,
    pub subnet: String,
    pub gateway: String,
    pub child: Option<Child>,
    pub pid: u32,
    next_op: std::cell::Cell<u32>,
}

impl HelperEnv {
    /// Starts a helper allowing `allowed_uids`, with a bridge and subnet
    /// derived from `tag` and this process's pid, and every feature on (so
    /// each call's own checks are reached).
    pub fn start(tag: u8, allowed_uids: Vec<u32>) -> Self {
        Self::start_with(tag, allowed_uids, HelperFeature::ALL.to_vec())
    }

    /// Like [`start`](Self::start), with only `features` on.
    pub fn start_with(tag: u8, allowed_uids: Vec<u32>, features: Vec<HelperFeature>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("banger-helper-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = root.join("data");
        let run = root.join("run");
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&run).unwrap();
        let bridge = format!("bgt{}x{tag}", std::process::id() % 100_000);
        let subnet = format!("10.231.{tag}.0/24");
        let gateway = format!("10.231.{tag}.1");
        let mut config = HelperConfig::for_uids(allowed_uids);
        config.socket = root.join("sock/helper.sock");
        config.bridge = bridge.clone();
        config.subnet = subnet.clone();
        config.data_dirs = vec![data.clone()];
        config.runtime_dirs = vec![run.clone()];
        config.log_file = Some(root.join("helper.log"));
        config.features = features;
        let config_path = root.join("helper.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut env = Self {
            socket: config.socket.clone(),
            log: root.join("helper.log"),
            config: config_path,
            dir,
            root,
            data,
            run,
            bridge,
            subnet,
            gateway,
            child: None,
            pid: 0,
            next_op: std::cell::Cell::new(0),
        };
        env.spawn(&["--read-timeout", "2"]);
        env
    }

    fn spawn(&mut self, extra: &[&str]) {
        let child = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "--"])
            .args(["setpriv", "--pdeathsig", "KILL", "--"])
            .args([
                "sh",
                "-c",
                "mount -t sysfs sysfs /sys && exec \"$0\" \"$@\"",
                HELPER,
                "--config",
            ])
            .arg(&self.config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("banger-helper exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "banger-helper did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A fresh op id, unique in this env: `op-WHAT-NNNN`.
    pub fn op(&self, what: &str) -> OpId {
        let n = self.next_op.get() + 1;
        self.next_op.set(n);
        let id = format!("op-{what}-{n:04}");
        OpId::parse(&id).unwrap_or_else(|| panic!("{id} is not a valid op id"))
    }

    /// A fresh connection (the library's client; raw sends allowed).
    pub fn client(&self) -> Connection {
        Connection::open(&self.socket, Duration::from_secs(10)).unwrap()
    }

    /// One call on a fresh connection: its reply line, result or error.
    pub fn call_full(&self, op_id: &OpId, call: HelperCall) -> Reply {
        self.client().request(op_id, &call).unwrap()
    }

    pub fn call(&self, op_id: &OpId, call: HelperCall) -> HelperResponse {
        self.call_full(op_id, call).response
    }

    /// Asserts `ping` answers, with the env's network; returns its op id.
    pub fn ping_ok(&self) -> OpId {
        let op = self.op("ping");
        match self.call(&op, HelperCall::Ping) {
            HelperResponse::Result(banger_proto::helper::HelperReply::Pong(info)) => {
                assert_eq!(info.bridge, self.bridge);
                assert_eq!(info.subnet, self.subnet);
            }
            other => panic!("ping failed: {other:?}"),
        }
        op
    }

    /// Runs a command in the helper's network namespace.
    pub fn netns(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid))
            .arg(program)
            .args(args)
            .output()
            .unwrap()
    }

    /// Like [`netns`](Self::netns), asserting success; returns stdout.
    pub fn netns_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.netns(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `ip -d -j link show` in the namespace, parsed.
    pub fn links(&self) -> Vec<Value> {
        let out = self.netns_ok("ip", &["-d", "-j", "link", "show"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.links()
            .into_iter()
            .find(|l| l["ifname"].as_str() == Some(name))
    }

    /// The helper's JSON log lines.
    pub fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The `helper rpc completed|failed` lines carrying `op_id`.
    pub fn rpc_lines(&self, op_id: &OpId) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| {
                let f = &l["fields"];
                f["op_id"].as_str() == Some(op_id.as_str())
                    && matches!(
                        f["message"].as_str(),
                        Some("helper rpc completed" | "helper rpc failed")
                    )
            })
            .collect()
    }

    /// How many connections the helper is serving: its threads named
    /// `helper-conn` (one per connection, holding the connection's slot
    /// until it ends).
    pub fn connection_threads(&self) -> usize {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "helper-conn")
            })
            .count()
    }

    /// Waits up to 10 s until the helper serves exactly `n` connections.
    pub fn wait_connection_threads(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.connection_threads();
            if now == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the helper serves {now} connections, not {n}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for the helper to exit; returns its status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HelperEnv {
    fn drop(&mut self) {
        // The namespace (and everything the helper made in it) goes with
        // the helper.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A process the test started, killed and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies `tail` to `DIR/qemu-system-x86_64` (so `/proc/PID/exe` names a
/// QEMU) and runs it with `args` after `-f -- /dev/null`: tail follows
/// /dev/null forever and only complains about the other "files", so argv
/// can carry `-name guest=banger-...` like a real banger VMM.
pub fn fake_qemu(dir: &Path, args: &[&str], as_uid: Option<u32>) -> Proc {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = bin_dir.join("qemu-system-x86_64");
    if !exe.exists() {
        let tail = which("tail");
        // Through `install`, a child process: no descriptor of it open
        // for writing here that a forking test thread could carry into
        // its child (ETXTBSY; `install_executable` in common/mod.rs).
        let ok = Command::new("install")
            .args(["-m", "755"])
            .arg(&tail)
            .arg(&exe)
            .status()
            .unwrap()
            .success();
        assert!(ok, "install {} {}", tail.display(), exe.display());
    }
    let mut cmd = match as_uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let mut argv: Vec<String> = vec![exe.display().to_string()];
    argv.extend(["-f", "--", "/dev/null"].map(str::to_owned));
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let proc = Proc(cmd.spawn().unwrap());
    // Wait for what the helper reads: `/proc/PID/exe` naming the copy and
    // `/proc/PID/cmdline` holding its argv. The kernel sets the exe first
    // and the new argv a moment later, and before the exec (setpriv's, or
    // the fork/exec gap) both still describe the old program.
    let pid = proc.pid();
    let real_exe = std::fs::canonicalize(&exe).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exe_now = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let argv_now: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if exe_now.as_deref() == Some(real_exe.as_path()) && argv_now == argv {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fake qemu did not start: exe {exe_now:?}, argv {argv_now:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    proc
}

pub fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
