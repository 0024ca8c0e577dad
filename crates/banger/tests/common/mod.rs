//! A private banger world per test: HOME and XDG dirs in a temp dir, the
//! real `banger` and `bangerd` binaries, and cleanup of any daemon the test
//! started when the world is dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code

pub mod netns;
#[path = "../../../oci/tests/support/registry.rs"]
pub mod registry;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BANGER: &str = env!("CARGO_BIN_EXE_banger");
pub const BANGERD: &str = env!("CARGO_BIN_EXE_bangerd");

pub struct World {
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
    /// Extra environment for every process of this world.
    pub extra_env: Vec<(&'static str, PathBuf)>,
    /// Runs every process of this world through this prefix, e.g.
    /// `ip netns exec NS` to put the CLI, and the daemon it starts, in a
    /// network namespace.
    pub wrapper: Vec<String>,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        Self {
            dir,
            daemon: None,
            extra_env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Where this world's VMs keep their own RAM files: in /dev/shm as
    /// the daemon's default is, named after the world.
    pub fn ram_dir(&self) -> PathBuf {
        let name = self.root().file_name().unwrap_or_default();
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.join(name)
        } else {
            self.root().join("ram")
        }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.root().join("run/banger")
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir().join("bangerd.sock")
    }

    pub fn log_file(&self) -> PathBuf {
        self.root().join("state/banger/bangerd.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The environment every process of this world runs with.
    pub fn envs(&self) -> Vec<(&'static str, PathBuf)> {
        let r = self.root();
        vec![
            ("HOME", r.to_path_buf()),
            ("XDG_CONFIG_HOME", r.join("config")),
            ("XDG_DATA_HOME", r.join("data")),
            ("XDG_STATE_HOME", r.join("state")),
            ("XDG_CACHE_HOME", r.join("cache")),
            ("XDG_RUNTIME_DIR", r.join("run")),
            ("BANGER_DAEMON_BIN", PathBuf::from(BANGERD)),
            // No background template builds competing with a test's own
            // guests for the CPU; snapshot_e2e turns them on.
            ("BANGER_TEMPLATES", PathBuf::from("off")),
            // VMs' own RAM files: removed with the world, whatever its
            // daemon managed to do.
            ("BANGER_RAM_DIR", self.ram_dir()),
        ]
        .into_iter()
        .filter(|(k, _)| !self.extra_env.iter().any(|(e, _)| e == k))
        .chain(self.extra_env.iter().cloned())
        .collect()
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.envs())
            .stdin(Stdio::null());
        c
    }

    /// Runs `banger ARGS` to completion.
    pub fn banger(&self, args: &[&str]) -> Output {
        self.command(BANGER).args(args).output().unwrap()
    }

    /// Runs `banger ARGS`, asserts success and returns stdout.
    pub fn banger_ok(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        assert!(
            out.status.success(),
            "banger {args:?} failed:\n{}",
            text(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `banger ARGS --json` and parses stdout, asserting success.
    pub fn banger_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.banger(&all);
        assert!(
            out.status.success(),
            "banger {all:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The sorted `name`s of what `banger ARGS --json` lists
    /// (`["vm", "list"]`, `["image", "list"]`...).
    pub fn names(&self, args: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = self
            .banger_json(args)
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    /// Runs `banger ARGS --json` and parses stdout whatever the exit
    /// status (`doctor --json` exits 1 on a FAIL), returning both.
    pub fn banger_json_status(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.banger(&all);
        let value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("banger {all:?}: not JSON ({e}):\n{}", text(&out)));
        (out.status.code(), value)
    }

    /// Runs `banger ARGS --json` for a command printing JSON lines (one
    /// value per line), asserting success, and parses each line.
    pub fn banger_json_lines(&self, args: &[&str]) -> Vec<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.banger(&all);
        assert!(
            out.status.success(),
            "banger {all:?} failed: {}",
            text(&out)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("banger {all:?}: {e}: a line is not JSON: {l:?}"))
            })
            .collect()
    }

    /// Starts `bangerd ARGS` directly (not through the CLI) and waits for
    /// its socket to answer.
    pub fn start_daemon(&mut self, args: &[&str]) {
        let child = self
            .command(BANGERD)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = RawConn::connect(&self.socket()) {
                if c.request(r#"{"version":1,"method":"ping"}"#).is_some() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("bangerd did not come up; log:\n{}", self.log_text());
    }

    /// The pid of whatever daemon holds this world's lock, if alive.
    pub fn daemon_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.runtime_dir().join("bangerd.lock")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }
}

impl World {
    /// The end of every VM's console log: why a guest did not come up.
    fn print_console_tails(&self) {
        let Ok(vms) = std::fs::read_dir(self.root().join("data/banger/vms")) else {
            return;
        };
        for vm in vms.flatten() {
            let path = vm.path().join("console.log");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            eprintln!("--- last lines of {}:", path.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}:", self.log_file().display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
            self.print_console_tails();
        }
        // Stop any daemon of this world, however it was started.
        if let Some(pid) = self.daemon_pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            if !wait_gone(pid) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // VMMs outlive the daemon by design: kill any this world started.
        for pid in processes_mentioning(self.root()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            wait_gone(pid);
        }
        let _ = std::fs::remove_dir_all(self.ram_dir());
    }
}

/// Pids of live processes whose command line mentions `path`.
pub fn processes_mentioning(path: &Path) -> Vec<i32> {
    let needle = path.display().to_string();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(&needle) && alive(pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Waits up to 10 s for `pid` to exit; true when it did.
pub fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1).
pub fn signal(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Live QEMU processes whose command line contains `needle` (a VM id,
/// or a test world's root for all of its VMs).
pub fn qemu_pids_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            let argv0 = cmd.split('\0').next().unwrap_or_default();
            let is_qemu = Path::new(argv0)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"));
            if is_qemu && cmd.contains(needle) && alive(pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// True while `pid` exists and any of its threads is not a zombie: after
/// SIGKILL the main thread can be a zombie while other threads still tear
/// down and hold the process's files (its listening socket).
pub fn alive(pid: i32) -> bool {
    let not_zombie = |stat: &str| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    };
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| not_zombie(&s))),
        Err(_) => {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| not_zombie(&s))
        }
    }
}

/// A raw connection to the socket, for speaking the protocol by hand.
pub struct RawConn {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl RawConn {
    pub fn connect(socket: &Path) -> std::io::Result<Self> {
        let s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// Sends one line (a newline is added) and reads one answer line;
    /// `None` when the daemon closed the connection instead.
    pub fn request(&mut self, line: &str) -> Option<Value> {
        self.writer.write_all(line.as_bytes()).ok()?;
        self.writer.write_all(b"\n").ok()?;
        self.read_answer()
    }

    pub fn read_answer(&mut self) -> Option<Value> {
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&answer).unwrap()),
        }
    }
}

/// The `error.code` of an answer, or panics with the answer.
pub fn error_code(answer: &Value) -> &str {
    answer["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {answer}"))
}

/// The user's cache home (`XDG_CACHE_HOME`, else `~/.cache`): tests share
/// downloaded kernels, image bases and the built agent through it.
pub fn cache_home() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp/banger-test-cache"))
}

/// Puts an executable at `dest` (a copy of `source`, mode 0755) through a
/// child process (`install`), so this process never holds a descriptor of
/// it open for writing: another test thread forking meanwhile would carry
/// one into its child until that child's exec, and running the file then
/// fails with "Text file busy" (ETXTBSY).
pub fn install_executable(source: &Path, dest: &Path) {
    let status = Command::new("install")
        .arg("-m")
        .arg("755")
        .arg(source)
        .arg(dest)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "install {} {}",
        source.display(),
        dest.display()
    );
}

/// A script at `dest` with `contents`, made as [`install_executable`]
/// makes a copy (the text is written beside it first, never run).
pub fn install_script(dest: &Path, contents: &str) {
    let text = dest.with_extension("src");
    std::fs::write(&text, contents).unwrap();
    install_executable(&text, dest);
}

/// A fake `systemctl` (for `BANGER_SYSTEMCTL`): appends its arguments to
/// the returned calls file, and either acts as systemd would for
/// bangerd.service (`start` runs the unit's `ExecStart=` detached) or,
/// not `works`, fails as systemctl does without a user instance.
pub fn fake_systemctl(w: &World, works: bool) -> (PathBuf, PathBuf) {
    let script = w.root().join(if works {
        "systemctl-ok"
    } else {
        "systemctl-no-bus"
    });
    let calls = w.root().join("systemctl.calls");
    let body = if works {
        r#"
unit="$XDG_CONFIG_HOME/systemd/user/bangerd.service"
case "$*" in
  "--user start bangerd.service" | "--user enable --now bangerd.service")
    bin=$(sed -n 's/^ExecStart=//p' "$unit")
    setsid "$bin" >>"$XDG_STATE_HOME/banger/bangerd.log" 2>&1 </dev/null &
    ;;
  "--user is-failed --quiet bangerd.service") exit 1 ;;
esac
exit 0
"#
    } else {
        "echo 'Failed to connect to bus: No medium found' >&2\nexit 1\n"
    };
    install_script(
        &script,
        &format!("#!/bin/sh\necho \"$*\" >>'{}'\n{body}", calls.display()),
    );
    (script, calls)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Prints a scenario step's name; the returned instant times it.
pub fn step(name: &str) -> Instant {
    eprintln!("--- {name}");
    Instant::now()
}

/// The middle value (the upper one of an even count); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A finished command's status and output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A world for snapshot tests and benchmarks: TCG, user-mode networking
/// even where a banger-helper is installed, warm templates on, and the
/// static agent baked into the images it builds.
pub fn template_world() -> World {
    let mut w = vm_world();
    w.extra_env
        .push(("BANGER_TEMPLATES", PathBuf::from("auto")));
    w
}

/// A world for tests that boot VMs: TCG, the shared cache (kernels, image
/// bases), user-mode networking even where a banger-helper is installed,
/// and the static agent baked into the images it builds.
pub fn vm_world() -> World {
    let mut w = World::new();
    w.extra_env.push(("XDG_CACHE_HOME", cache_home()));
    w.extra_env.push(("BANGER_ACCEL", PathBuf::from("tcg")));
    w.extra_env
        .push(("BANGER_HELPER_SOCKET", w.root().join("no-helper.sock")));
    w.extra_env.push(("BANGER_AGENT_BIN", static_agent()));
    w
}

/// The statically linked guest agent, built once into the user's cache
/// (`BANGER_AGENT_BIN` wins when set): images built by tests bake it in.
pub fn static_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("BANGER_AGENT_BIN").map(PathBuf::from) {
        if p.is_file() {
            return p;
        }
    }
    let target = cache_home().join("banger/agent-target");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "-q",
            "-p",
            "banger-agent",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .status()
        .expect("run cargo to build banger-agent");
    assert!(status.success(), "building the static banger-agent failed");
    target.join("x86_64-unknown-linux-gnu/release/banger-agent")
}

/// A one-layer image whose config runs `sh`, pulled as `tiny` from a
/// registry on loopback (kept running while the result lives): an image
/// for VMs whose kernel never reads it (stub kernels), in seconds.
pub fn pull_tiny_image(w: &World) -> registry::Registry {
    let registry = registry::Registry::start(None);
    let layout = registry::Layout::new();
    layout.new_image("1");
    layout.add_layer("1", &[("hello", b"tiny\n")]);
    layout.umoci(&[
        "config",
        "--image",
        &layout.image("1"),
        "--config.cmd",
        "sh",
    ]);
    registry.push(&layout, "1", "tiny:1", None, false);
    let reference = format!("{}/tiny:1", registry.host());
    let image = w.banger_json(&["image", "pull", &reference, "--name", "tiny"]);
    assert_eq!(image["name"], "tiny", "{image}");
    registry
}
