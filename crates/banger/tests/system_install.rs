//! `banger system install|status|uninstall` against the real binaries, as
//! root, with every path (prefix, config, socket, systemd dirs) in a temp
//! dir: nothing is written to /usr/local, /etc or /etc/systemd, and systemd
//! is never asked (the test points its "is systemd running" check at a
//! directory that does not exist, so the helper runs as a background
//! process).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use banger_helper::client::Client;
use banger_proto::OpId;
use banger_proto::helper::{HelperCall, HelperConfig, HelperReply, HelperResponse};
use serde_json::Value;

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

/// Some of the man pages and completions install puts under PREFIX/share.
const SHARE_FILES: [&str; 4] = [
    "man/man1/banger.1",
    "man/man1/banger-vm-create.1",
    "bash-completion/completions/banger",
    "zsh/site-functions/_banger",
];

fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// banger network objects that exist now: any `bgtap*` device
/// or banger's nftables table. `banger system uninstall` runs
/// the helper's teardown, which removes all of them host-wide (that is its
/// job), so the test must not run while another test or a real banger
/// uses them.
fn foreign_banger_network() -> Option<String> {
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&links.stdout);
    let mut found: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with("bgtap"))
        .collect();
    let table = Command::new("nft")
        .args(["list", "table", "ip", "banger"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if table {
        found.push("nftables table ip banger".into());
    }
    (!found.is_empty()).then(|| found.join(", "))
}

/// A name `PREFIX<n>` no interface has now.
fn free_link_name(prefix: &str) -> String {
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    (0..1000u32)
        .map(|i| format!("{prefix}{}", (seed.wrapping_add(i * 7919)) % 9000 + 1000))
        .find(|n| !link_exists(n))
        .unwrap()
}

/// Live, non-zombie processes running `exe`.
fn processes_of(exe: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        let link = link.to_string_lossy().replace(" (deleted)", "");
        if Path::new(&link) == exe && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `ping` through the helper library's client; the reply line, result or
/// error.
fn ping(socket: &Path) -> HelperResponse {
    let client = Client::new(socket).with_timeout(Duration::from_secs(5));
    let op = OpId::parse("op-systest1").unwrap();
    let mut connection = client.connect().unwrap();
    connection.request(&op, &HelperCall::Ping).unwrap().response
}

/// Everything one install uses, in a temp dir.
struct Setup {
    dir: tempfile::TempDir,
    bridge: String,
    subnet: String,
    /// The TAP this test made, if any.
    tap: Option<String>,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("banger-system-")
            .tempdir()
            .unwrap();
        // Reachable by other users, so `nobody` can run status against it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["home", "xdg-run", "units"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let bridge = free_link_name("bgsys");
        let subnet = format!("10.232.{}.0/24", std::process::id() % 250);
        Self {
            dir,
            bridge,
            subnet,
            tap: None,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn prefix(&self) -> PathBuf {
        self.path("prefix")
    }

    fn config(&self) -> PathBuf {
        self.path("etc/banger/helper.json")
    }

    fn socket(&self) -> PathBuf {
        self.path("run/banger-helper/helper.sock")
    }

    fn pid_file(&self) -> PathBuf {
        self.path("run/banger-helper/helper.pid")
    }

    fn helper_bin(&self) -> PathBuf {
        self.prefix().join("bin/banger-helper")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BANGER);
        c.arg("system").args(args);
        self.env(&mut c);
        c
    }

    fn env(&self, c: &mut Command) {
        c.env_remove("SUDO_UID")
            .env_remove("BANGER_HELPER_SOCKET")
            .env_remove("XDG_DATA_HOME")
            .env("HOME", self.path("home"))
            .env("XDG_RUNTIME_DIR", self.path("xdg-run"))
            .env("BANGER_SYSTEMD_RUNTIME_DIR", self.path("no-systemd"))
            .env("BANGER_SYSTEMD_UNIT_DIR", self.path("units"));
    }

    fn paths_args(&self) -> Vec<String> {
        vec![
            "--prefix".into(),
            self.prefix().display().to_string(),
            "--config".into(),
            self.config().display().to_string(),
        ]
    }

    fn install(&self) -> Output {
        let mut args = vec!["install".to_owned(), "--json".to_owned()];
        args.extend(self.paths_args());
        args.extend([
            "--socket".into(),
            self.socket().display().to_string(),
            "--bridge".into(),
            self.bridge.clone(),
            "--subnet".into(),
            self.subnet.clone(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&args).output().unwrap()
    }

    fn uninstall(&self) -> Output {
        let mut args = vec!["uninstall".to_owned()];
        args.extend(self.paths_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&args).output().unwrap()
    }

    fn status(&self) -> Output {
        let mut args = vec!["status".to_owned(), "--json".to_owned()];
        args.extend(self.paths_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&args).output().unwrap()
    }
}

impl Drop for Setup {
    /// Leaves nothing running if the test failed or stopped midway: kills
    /// this setup's helper (found by its executable, which lives in the temp
    /// dir) and deletes this setup's bridge and TAP. Never a host-wide
    /// teardown. Every file is in the temp dir.
    fn drop(&mut self) {
        for pid in processes_of(&self.helper_bin()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for link in [Some(&self.bridge), self.tap.as_ref()]
            .into_iter()
            .flatten()
        {
            if link_exists(link) {
                let _ = Command::new("ip").args(["link", "del", link]).status();
            }
        }
    }
}

fn ok(what: &str, o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn json(what: &str, o: &Output) -> Value {
    let stdout = ok(what, o);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
}

/// Set when the scenario runs inside its private network namespace.
const IN_NETNS: &str = "BANGER_TEST_SYSTEM_IN_NETNS";

/// Runs the test `name` again in a network namespace of its own and
/// returns false (the caller then returns: the run in the namespace did
/// the work), or returns true when already inside it. Uninstall's teardown
/// removes every banger TAP and banger's nft table in its network
/// namespace: these scenarios run in a namespace of their own (`ip netns
/// exec` also mounts a matching /sys), never on the host's.
fn in_own_netns(name: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        return true;
    }
    let ns = format!("bgsys{}-{name}", std::process::id());
    let added = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(added.success(), "ip netns add {ns}");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .unwrap();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "in netns {ns}:\n{stdout}\n{stderr}"
    );
    eprint!("{stderr}");
    false
}

#[test]
fn install_status_reinstall_uninstall_as_root() {
    if euid() != 0 {
        eprintln!("skipped: system install needs root (creating TAPs, running the helper)");
        return;
    }
    if !in_own_netns("install_status_reinstall_uninstall_as_root") {
        return;
    }
    if let Some(found) = foreign_banger_network() {
        panic!("a fresh network namespace already has banger objects: {found}");
    }
    let started = Instant::now();
    let mut s = Setup::new();
    let helper = s.helper_bin();

    // Install.
    let report = json("install", &s.install());
    assert_eq!(report["mode"], "background", "{report}");
    assert_eq!(report["helper"]["bridge"], s.bridge.as_str(), "{report}");
    assert_eq!(report["helper"]["subnet"], s.subnet.as_str(), "{report}");
    let first_pid = report["helper"]["pid"].as_u64().unwrap() as u32;
    assert!(alive(first_pid));
    for file in SHARE_FILES {
        let path = s.prefix().join("share").join(file);
        assert!(path.is_file(), "{} not installed", path.display());
    }
    for name in ["banger", "bangerd", "banger-helper"] {
        let path = s.prefix().join("bin").join(name);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{name}");
        let source = Path::new(BANGER).with_file_name(name);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&source).unwrap(),
            "{name} is not a copy of {}",
            source.display()
        );
    }
    let config_meta = std::fs::metadata(s.config()).unwrap();
    assert_eq!(config_meta.permissions().mode() & 0o777, 0o644);
    let config: HelperConfig =
        serde_json::from_str(&std::fs::read_to_string(s.config()).unwrap()).unwrap();
    assert_eq!(config.allowed_uids, vec![0]);
    assert_eq!(config.bridge, s.bridge);
    assert_eq!(config.subnet, s.subnet);
    assert_eq!(config.socket, s.socket());
    assert_eq!(
        config.data_dirs,
        vec![s.path("home/.local/share/banger")],
        "data dir of the invoking user"
    );
    assert_eq!(config.runtime_dirs, vec![s.path("xdg-run/banger")]);
    assert_eq!(
        std::fs::read_to_string(s.pid_file()).unwrap().trim(),
        first_pid.to_string()
    );

    // The helper itself answers on the socket.
    match ping(&s.socket()) {
        HelperResponse::Result(HelperReply::Pong(info)) => {
            assert_eq!(info.pid, first_pid);
            assert_eq!(info.bridge, s.bridge);
            assert_eq!(info.subnet, s.subnet);
        }
        other => panic!("ping answered {other:?}"),
    }
    let status = json("status", &s.status());
    assert_eq!(status["installed"], true, "{status}");
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["reachable"], true, "{status}");
    assert_eq!(status["allowed"], true, "{status}");
    assert_eq!(status["mode"], "background", "{status}");
    assert_eq!(status["helper"]["pid"], first_pid, "{status}");

    // Another user sees it running but is refused.
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BANGER,
        "system",
        "status",
    ])
    .args(s.paths_args());
    s.env(&mut c);
    let nobody = c.output().unwrap();
    let text = String::from_utf8_lossy(&nobody.stdout);
    if nobody.status.code() == Some(126) || nobody.status.code() == Some(127) {
        eprintln!("note: uid 65534 cannot execute {BANGER}; skipped its status check");
    } else {
        assert_eq!(nobody.status.code(), Some(6), "{text}");
        assert!(
            text.contains("running, but uid 65534 is not allowed"),
            "{text}"
        );
    }

    // Install again: the helper is replaced, and only one runs.
    let report = json("second install", &s.install());
    let second_pid = report["helper"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(second_pid, first_pid);
    assert_eq!(report["replaced_pid"], first_pid, "{report}");
    assert!(wait_gone(first_pid), "the first helper still runs");
    assert_eq!(processes_of(&helper), vec![second_pid]);

    // A TAP of banger's, so we can see the teardown run; unless someone
    // else started using banger's network meanwhile (Drop then stops our
    // helper without a teardown).
    if let Some(found) = foreign_banger_network() {
        eprintln!("stopped before uninstall: banger network objects appeared ({found})");
        return;
    }
    let tap = free_link_name("bgtap");
    let made = Command::new("ip")
        .args(["tuntap", "add", "dev", &tap, "mode", "tap"])
        .status()
        .unwrap();
    assert!(made.success(), "ip tuntap add {tap}");
    s.tap = Some(tap.clone());

    // Uninstall.
    let text = ok("uninstall", &s.uninstall());
    assert!(wait_gone(second_pid), "the helper still runs:\n{text}");
    assert!(processes_of(&helper).is_empty());
    for gone in [s.socket(), s.config(), s.pid_file()] {
        assert!(!gone.exists(), "{} is still there:\n{text}", gone.display());
    }
    for name in ["banger", "bangerd", "banger-helper"] {
        assert!(!s.prefix().join("bin").join(name).exists(), "{name}");
    }
    for page in SHARE_FILES {
        assert!(!s.prefix().join("share").join(page).exists(), "{page}");
    }
    assert!(!link_exists(&tap), "teardown left {tap}:\n{text}");
    assert!(!link_exists(&s.bridge), "teardown left {}", s.bridge);

    // Again: nothing to do, and status says not installed.
    let text = ok("second uninstall", &s.uninstall());
    assert!(text.contains("not installed"), "{text}");
    let status = s.status();
    assert_eq!(
        status.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["installed"], false);
    assert_eq!(report["running"], false);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn install_as_another_user_is_refused_and_writes_nothing() {
    if euid() != 0 {
        eprintln!("skipped: needs root to switch to uid 65534");
        return;
    }
    let s = Setup::new();
    // A place uid 65534 could write to, so "nothing written" means something,
    // and a copy of banger it can execute.
    let open = s.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let banger = s.path("banger");
    // Through `install`, a child process: no descriptor of it open for
    // writing here that a forking test thread could carry into its child
    // (ETXTBSY; as `install_executable` in common/mod.rs).
    let ok = Command::new("install")
        .args(["-m", "755", BANGER])
        .arg(&banger)
        .status()
        .unwrap()
        .success();
    assert!(ok, "install {BANGER}");

    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&banger)
        .args(["system", "install", "--prefix"])
        .arg(open.join("prefix"))
        .arg("--config")
        .arg(open.join("etc/helper.json"))
        .arg("--socket")
        .arg(open.join("run/helper.sock"));
    s.env(&mut c);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("must run as root"), "{stderr}");
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        0,
        "something was written"
    );

    // Uninstall is refused the same way.
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&banger)
        .args(["system", "uninstall", "--prefix"])
        .arg(open.join("prefix"));
    s.env(&mut c);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(6));
}

/// What the helper may change on the host's firewall and sysctls, as
/// text: nftables (every family, without counters), iptables (when
/// installed; without its dated comment lines) and IPv4 forwarding.
#[derive(Debug, PartialEq, Eq)]
struct Firewall {
    nft: String,
    iptables: Option<String>,
    ip_forward: String,
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn have_iptables() -> bool {
    Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn firewall() -> Firewall {
    let iptables = have_iptables().then(|| {
        run_ok("iptables-save", &[])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Firewall {
        nft: run_ok("nft", &["-s", "list", "ruleset"]),
        iptables,
        ip_forward: std::fs::read_to_string(IP_FORWARD)
            .unwrap()
            .trim()
            .to_owned(),
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// One call to the installed helper, as root; it must succeed.
fn helper_done(socket: &Path, what: &str, call: HelperCall) {
    let client = Client::new(socket).with_timeout(Duration::from_secs(10));
    let op = OpId::parse(&format!("op-fw-{what}")).unwrap();
    let mut connection = client.connect().unwrap();
    match connection.request(&op, &call).unwrap().response {
        HelperResponse::Result(HelperReply::Done) => {}
        other => panic!("{what}: {other:?}"),
    }
}

/// `banger system uninstall` leaves the firewall rules and IPv4
/// forwarding exactly as they were before `banger system install`, after
/// the helper made its bridge, a TAP and NAT: with forwarding off and no
/// iptables rules at all; with forwarding off and iptables' FORWARD policy
/// DROP (so the helper adds its iptables chain) behind an administrator's
/// rule; and with forwarding already on (it stays on).
#[test]
fn uninstall_leaves_firewall_and_forwarding_as_before_install() {
    if euid() != 0 {
        eprintln!("skipped: system install needs root (nftables, TAPs, the helper)");
        return;
    }
    if !in_own_netns("uninstall_leaves_firewall_and_forwarding_as_before_install") {
        return;
    }
    if let Some(found) = foreign_banger_network() {
        panic!("a fresh network namespace already has banger objects: {found}");
    }
    let iptables = have_iptables();
    if !iptables {
        eprintln!(
            "note: iptables is not installed (scripts/deps.sh installs it): \
             the FORWARD DROP rounds are skipped"
        );
    }
    // (label, ip_forward before, set iptables' FORWARD policy to DROP
    // behind an administrator's rule)
    let rounds = [
        ("pristine, forwarding off", "0", false),
        ("forward policy drop, forwarding off", "0", true),
        ("forward policy drop, forwarding already on", "1", true),
    ];
    for (label, forward, drop) in rounds {
        if drop && !iptables {
            continue;
        }
        std::fs::write(IP_FORWARD, format!("{forward}\n")).unwrap();
        if drop {
            run_ok("iptables", &["-P", "FORWARD", "DROP"]);
            let admin = ["FORWARD", "-s", "192.0.2.0/24", "-j", "DROP"];
            if !Command::new("iptables")
                .arg("-C")
                .args(admin)
                .output()
                .unwrap()
                .status
                .success()
            {
                run_ok("iptables", &[&["-A"][..], &admin[..]].concat());
            }
        }
        let before = firewall();
        assert_eq!(before.ip_forward, forward, "[{label}]");

        let s = Setup::new();
        let report = json("install", &s.install());
        assert_eq!(report["mode"], "background", "[{label}] {report}");
        helper_done(
            &s.socket(),
            "bridge",
            HelperCall::BridgeEnsure {
                name: s.bridge.clone(),
            },
        );
        helper_done(
            &s.socket(),
            "tap",
            HelperCall::TapCreate {
                name: "bgtap7".into(),
                owner_uid: 0,
                bridge: s.bridge.clone(),
            },
        );
        helper_done(
            &s.socket(),
            "nat",
            HelperCall::NatEnsure {
                subnet: s.subnet.clone(),
            },
        );
        // The helper did change the firewall, as documented.
        let during = firewall();
        assert_eq!(during.ip_forward, "1", "[{label}]");
        assert!(
            during.nft.contains("table ip banger"),
            "[{label}] {}",
            during.nft
        );
        let marker = s.socket().with_file_name("ip_forward.was");
        assert_eq!(marker.exists(), forward == "0", "[{label}] marker");
        if drop {
            let rules = run_ok("iptables", &["-S", "FORWARD"]);
            let appended: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A")).collect();
            assert_eq!(
                appended,
                [
                    "-A FORWARD -s 192.0.2.0/24 -j DROP",
                    "-A FORWARD -j BANGER-FORWARD"
                ],
                "[{label}] banger's jump must come after the administrator's rules"
            );
            let chain = run_ok("iptables", &["-S", "BANGER-FORWARD"]);
            assert!(
                chain.contains(&format!("-s {} -i {} -j ACCEPT", s.subnet, s.bridge)),
                "[{label}] {chain}"
            );
            assert!(
                chain.contains(&format!(
                    "-d {} -o {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                    s.subnet, s.bridge
                )),
                "[{label}] {chain}"
            );
        } else if let Some(rules) = &during.iptables {
            assert!(!rules.contains("BANGER"), "[{label}] {rules}");
        }

        let text = ok("uninstall", &s.uninstall());
        assert_eq!(
            firewall(),
            before,
            "[{label}] uninstall did not restore the firewall:\n{text}"
        );
        assert!(!marker.exists(), "[{label}] marker left");
        assert!(
            !link_exists("bgtap7") && !link_exists(&s.bridge),
            "[{label}]"
        );
        eprintln!("[{label}] uninstall restored the firewall and ip_forward={forward}");
    }
}
