//! User-mode networking that keeps the guest off the host: passt in a
//! network namespace of its own, behind pasta (docs/security.md, "Egress").
//!
//! **Status:** opt-in (`BANGER_USERNET=passt`, read by the daemon). The
//! guest's own connections are filtered as designed, but with Debian 12's
//! passt (0.0~git20230309) connections forwarded into the guest (SSH,
//! published ports) stall: passt never acknowledges the guest's SYN-ACK.
//! Tried by hand and working: QEMU with slirp started inside the filtered
//! namespace, pasta attached to it (docs/security.md, "User mode").
//!
//! QEMU's own user-mode network (slirp) opens the guest's connections from
//! the host: `10.0.2.2` is the host's `127.0.0.1`, and every address the
//! host reaches (its own addresses, its LAN, `169.254.169.254`) is the
//! guest's too. Here the guest's network stack is a `passt` process in a
//! user and network namespace made for the VM (`unshare --user
//! --map-root-user --net`, rootless), and that namespace reaches the
//! outside through `pasta`, which opens its connections from the host:
//!
//! ```text
//!  QEMU ──net.sock──▶ passt ─(namespace: nft output filter)─▶ pasta ──▶ the host's sockets
//!  (host)             (guest 10.0.2.15, gw 10.0.2.2, dns 10.0.2.3)        (host)
//! ```
//!
//! - The namespace has its own loopback: passt maps the guest's `10.0.2.2`
//!   to *that* loopback, where nothing but passt's own forwards listen.
//!   pasta runs with `--no-map-gw`, so nothing in the namespace maps to the
//!   host's loopback; the namespace's copy of the host's address is local
//!   to the namespace.
//! - An nftables table inside the namespace (root there, not on the host)
//!   rejects, before pasta sees them, connections to loopback, private
//!   (10/8, 172.16/12, 192.168/16, 100.64/10), link-local (169.254/16,
//!   the metadata address), multicast and reserved ranges, the host's own
//!   addresses, its directly connected networks and its gateways, all read
//!   from the host when the VM starts. It is loaded before the namespace
//!   gets its interface. IPv4 only: both processes run with `-4`, and the
//!   namespace drops all IPv6 but loopback.
//! - DNS: the guest asks `10.0.2.3`; passt sends that to [`DNS_ALIAS`],
//!   the one link-local address the filter lets through (port 53 only),
//!   and pasta sends that to the host's resolver, from the host (so a
//!   resolver on the host's loopback works, and no other of its ports is
//!   reachable).
//! - Forwards (SSH and published ports): pasta listens on the host's
//!   `127.0.0.1:PORT` and hands each connection to the namespace's
//!   loopback, where passt listens on the same port and forwards it to
//!   the guest's port; the guest sees it come from `10.0.2.2`, as with slirp.
//!
//! One supervisor (`sh`, the leader of a session of its own, so it
//! outlives the daemon like QEMU does) starts both, waits for passt and
//! then stops pasta. passt runs with `--one-off`: it exits when QEMU, its
//! only client, goes. The supervisor's pid and its argument
//! `banger-usernet-VMID` are the ownership marker [`UsernetHandle`]
//! records; [`kill`] kills its whole process group.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::proc;
use crate::spec::{PortForward, Proto};

/// The address inside the namespace that passt sends the guest's DNS
/// queries to and pasta forwards to the host's resolver.
pub const DNS_ALIAS: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);

/// The guest's side, as with QEMU's slirp (docs/guest-contract.md).
const GUEST_ADDR: &str = "10.0.2.15";
const GATEWAY: &str = "10.0.2.2";
const GUEST_DNS: &str = "10.0.2.3";
/// slirp's gateway MAC: a guest restored from a state saved under slirp
/// keeps its ARP entry for the gateway.
const GATEWAY_MAC: &str = "52:55:0a:00:02:02";

/// The programs the design needs, as looked up on `PATH`.
pub const TOOLS: [&str; 4] = ["passt", "pasta", "unshare", "nft"];

/// What an isolated user-mode network is asked to do.
#[derive(Debug, Clone)]
pub struct UsernetSpec {
    /// The VM's id: part of the ownership marker (`[A-Za-z0-9._-]`).
    pub vm_id: String,
    /// The VM's directory: the socket, rules and logs go there.
    pub vm_dir: PathBuf,
    /// Host ports (on `127.0.0.1`) forwarded to guest ports.
    pub forwards: Vec<PortForward>,
}

/// A running isolated network, as kept in the VM's `handles.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernetHandle {
    /// The supervisor: leader of the session and process group of all
    /// three processes.
    pub pid: u32,
    /// Where passt listens for QEMU.
    pub socket: PathBuf,
}

/// The files in the VM's directory.
#[derive(Debug, Clone)]
pub struct UsernetFiles {
    pub socket: PathBuf,
    pub rules: PathBuf,
    pub ready: PathBuf,
    /// The supervisor's and the namespace shell's output.
    pub log: PathBuf,
    pub passt_log: PathBuf,
    pub pasta_log: PathBuf,
}

impl UsernetFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            socket: dir.join("net.sock"),
            rules: dir.join("egress.nft"),
            ready: dir.join("net.ready"),
            log: dir.join("usernet.log"),
            passt_log: dir.join("passt.log"),
            pasta_log: dir.join("pasta.log"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsernetError {
    #[error(
        "user-mode networking with egress `internet` needs {tool}, which is not installed \
         (Debian: apt-get install passt nftables util-linux); or choose --egress open \
         (no isolation from the host) or --network bridged; see docs/security.md"
    )]
    Missing { tool: &'static str },
    #[error(
        "user-mode networking with egress `internet` needs unprivileged user namespaces, \
         which are off ({why}); turn them on, or choose --egress open (no isolation from \
         the host) or --network bridged; see docs/security.md"
    )]
    NoUserNamespaces { why: &'static str },
    #[error("could not {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not start the isolated user-mode network (log: {}): {tail}", log.display())]
    Exited { log: PathBuf, tail: String },
    #[error("the isolated user-mode network did not come up within {secs} s (log: {}): {tail}", log.display())]
    Timeout {
        secs: u64,
        log: PathBuf,
        tail: String,
    },
}

/// The first of [`TOOLS`] missing, if any.
pub fn missing_tool() -> Option<&'static str> {
    TOOLS.into_iter().find(|t| find_tool(t).is_none())
}

/// `name` on `PATH`, or in the sbin directories (`nft` lives there, and
/// a user's `PATH` may not have them).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why unprivileged user namespaces are off, if they are (Debian's
/// `kernel.unprivileged_userns_clone`, or `user.max_user_namespaces` 0).
pub fn userns_disabled() -> Option<&'static str> {
    let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some("kernel.unprivileged_userns_clone is 0");
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user.max_user_namespaces is 0");
    }
    None
}

/// IPv4 networks the guest must not reach, besides what
/// [`host_networks`] adds.
pub const DENIED: [(Ipv4Addr, u8); 12] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
    (Ipv4Addr::new(255, 255, 255, 255), 32),
];

/// The host's own IPv4 addresses (every `LOCAL` entry of
/// `/proc/net/fib_trie`), its directly connected networks and its
/// gateways (`/proc/net/route`), as `(address, prefix)`.
pub fn host_networks() -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    if let Ok(trie) = fs::read_to_string("/proc/net/fib_trie") {
        out.extend(local_addresses(&trie).into_iter().map(|a| (a, 32)));
    }
    if let Ok(routes) = fs::read_to_string("/proc/net/route") {
        out.extend(route_networks(&routes));
    }
    out.sort();
    out.dedup();
    out
}

/// `LOCAL` addresses in the text of `/proc/net/fib_trie`: a leaf line
/// `|-- ADDR` followed by `/32 host LOCAL`.
fn local_addresses(trie: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(addr) = t.parse::<Ipv4Addr>() {
            last = Some(addr);
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = last {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// From `/proc/net/route`: each route without a gateway that is not a
/// default route (a connected network), and each gateway.
fn route_networks(routes: &str) -> Vec<(Ipv4Addr, u8)> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.swap_bytes()))
    };
    let mut out = Vec::new();
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(gw), Some(mask)) = (
            f.get(1).and_then(|s| hex(s)),
            f.get(2).and_then(|s| hex(s)),
            f.get(7).and_then(|s| hex(s)),
        ) else {
            continue;
        };
        if !gw.is_unspecified() {
            out.push((gw, 32));
        } else if !dest.is_unspecified() {
            out.push((dest, u32::from(mask).count_ones() as u8));
        }
    }
    out
}

/// The nftables ruleset loaded in the namespace: passt's connections to
/// anything in `denied` (or, without `allow_public`, anywhere) are
/// rejected; DNS to [`DNS_ALIAS`] passes; IPv6 is dropped.
pub fn rules(denied: &[(Ipv4Addr, u8)]) -> String {
    let mut r = String::from(
        "table ip banger_egress {\n  chain output {\n    type filter hook output priority 0; policy accept;\n    oif \"lo\" accept\n",
    );
    let _ = writeln!(
        r,
        "    ip daddr {DNS_ALIAS} meta l4proto {{ tcp, udp }} th dport 53 accept"
    );
    for (addr, prefix) in denied {
        let _ = writeln!(r, "    ip daddr {addr}/{prefix} reject");
    }
    r.push_str("  }\n}\n");
    r.push_str(
        "table ip6 banger_egress6 {\n  chain output {\n    type filter hook output priority 0; policy drop;\n    oif \"lo\" accept\n  }\n}\n",
    );
    r
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// pasta: `-t 127.0.0.1/PORT:GUEST` for each forward of `proto` (the
/// host's port to the same port number as the guest's in the namespace);
/// passt: `-t 127.0.0.1/GUEST` once per guest port (passt 2023-03 loses
/// the guest's data on a connection it forwards to another port number);
/// or `-t none`.
fn forward_args(forwards: &[PortForward], proto: Proto, in_namespace: bool) -> Vec<String> {
    let flag = match proto {
        Proto::Tcp => "-t",
        Proto::Udp => "-u",
    };
    let mut out: Vec<String> = Vec::new();
    for f in forwards.iter().filter(|f| f.proto == proto) {
        let spec = if in_namespace {
            format!("127.0.0.1/{}", f.guest_port)
        } else {
            format!("127.0.0.1/{}:{}", f.host_port, f.guest_port)
        };
        if !out.contains(&spec) {
            out.push(flag.to_owned());
            out.push(spec);
        }
    }
    if out.is_empty() {
        out = vec![flag.to_owned(), "none".to_owned()];
    }
    out
}

/// The supervisor's `sh` script; `tool` maps a name of [`TOOLS`] to its
/// path.
fn supervisor_script(
    spec: &UsernetSpec,
    files: &UsernetFiles,
    uid: u32,
    tool: &dyn Fn(&str) -> String,
) -> String {
    let q = |p: &Path| sh_quote(&path_str(p));
    let mut passt: Vec<String> = [
        &tool("passt"),
        "--runas",
        "0",
        "-f",
        "-1",
        "-4",
        "-q",
        "-l",
        &path_str(&files.passt_log),
        "-s",
        &path_str(&files.socket),
        "-a",
        GUEST_ADDR,
        "-n",
        "24",
        "-g",
        GATEWAY,
        "-M",
        GATEWAY_MAC,
        "-D",
        &DNS_ALIAS.to_string(),
        "--dns-forward",
        GUEST_DNS,
        "--no-dhcpv6",
        "--no-ndp",
        "--no-ra",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    passt.extend(forward_args(&spec.forwards, Proto::Tcp, true));
    passt.extend(forward_args(&spec.forwards, Proto::Udp, true));
    let mut pasta: Vec<String> = [
        &tool("pasta"),
        "--runas",
        &uid.to_string(),
        "-f",
        "-4",
        "-q",
        "-l",
        &path_str(&files.pasta_log),
        "--config-net",
        "--no-map-gw",
        "-T",
        "none",
        "-U",
        "none",
        "--dns-forward",
        &DNS_ALIAS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    pasta.extend(forward_args(&spec.forwards, Proto::Tcp, false));
    pasta.extend(forward_args(&spec.forwards, Proto::Udp, false));
    let join = |v: &[String]| v.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" ");

    // Inside the namespace: the filter first, then the marker, then wait
    // for pasta's default route (passt reads the namespace's routes when
    // it starts), then passt.
    let inner = format!(
        "{nft} -f {rules} || exit 1\n\
         : > {ready}\n\
         i=0\n\
         until awk '$2 == \"00000000\" {{ f = 1 }} END {{ exit !f }}' /proc/net/route; do\n\
         \x20 i=$((i + 1)); [ $i -gt 500 ] && {{ echo 'no default route in the namespace' >&2; exit 1; }}\n\
         \x20 sleep 0.02\n\
         done\n\
         exec {passt}\n",
        nft = sh_quote(&tool("nft")),
        rules = q(&files.rules),
        ready = q(&files.ready),
        passt = join(&passt),
    );
    // On the host: the namespace, then pasta once the filter is loaded
    // (before that, its pid may still name the host's namespace); then
    // wait for passt and stop pasta.
    format!(
        "{unshare} --user --map-root-user --net -- sh -c {inner} banger-usernet-ns &\n\
         ns=$!\n\
         i=0\n\
         while [ ! -e {ready} ]; do\n\
         \x20 case $(cut -d' ' -f3 /proc/$ns/stat 2>/dev/null) in Z|X|'') exit 1;; esac\n\
         \x20 i=$((i + 1)); [ $i -gt 500 ] && {{ echo 'the namespace did not come up' >&2; kill $ns; exit 1; }}\n\
         \x20 sleep 0.02\n\
         done\n\
         {pasta} $ns &\n\
         pa=$!\n\
         wait $ns\n\
         kill $pa 2>/dev/null\n\
         wait $pa\n",
        unshare = sh_quote(&tool("unshare")),
        inner = sh_quote(&inner),
        ready = q(&files.ready),
        pasta = join(&pasta),
    )
}

fn marker(vm_id: &str) -> String {
    format!("banger-usernet-{vm_id}")
}

/// Starts the isolated network for `spec` and returns once passt listens
/// on its socket and pasta on every forwarded host port. On failure
/// nothing is left running.
pub fn launch(spec: &UsernetSpec, timeout: Duration) -> Result<UsernetHandle, UsernetError> {
    if let Some(tool) = missing_tool() {
        return Err(UsernetError::Missing { tool });
    }
    if let Some(why) = userns_disabled() {
        return Err(UsernetError::NoUserNamespaces { why });
    }
    let files = UsernetFiles::in_dir(&spec.vm_dir);
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| UsernetError::Io { what, path, source }
    };
    for stale in [&files.socket, &files.ready] {
        match fs::remove_file(stale) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", stale)(e));
            }
            _ => {}
        }
    }
    let mut denied: Vec<(Ipv4Addr, u8)> = DENIED.to_vec();
    denied.extend(host_networks());
    fs::write(&files.rules, rules(&denied)).map_err(io_err("write", &files.rules))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .map_err(io_err("open", &files.log))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log.try_clone().map_err(io_err("open", &files.log))?;
    let uid = rustix::process::getuid().as_raw();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(supervisor_script(spec, &files, uid, &|name| {
            find_tool(name).map_or_else(|| name.to_owned(), |p| path_str(&p))
        }))
        .arg(marker(&spec.vm_id))
        .current_dir(&spec.vm_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: as in `qemu::launch`: one raw `setsid` call between fork and
    // exec, async-signal-safe, no allocation.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()
                .map(drop)
                .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
        });
    }
    let mut child = command.spawn().map_err(io_err("run sh for", &files.log))?;
    let handle = UsernetHandle {
        pid: child.id(),
        socket: files.socket.clone(),
    };
    let tail = |files: &UsernetFiles| {
        let mut t = crate::qemu::log_tail_of(&files.log, log_start);
        for extra in [&files.pasta_log, &files.passt_log] {
            let more = crate::qemu::log_tail_of(extra, 0);
            if !more.is_empty() {
                t.push_str("; ");
                t.push_str(&more);
            }
        }
        t
    };
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(UsernetError::Exited {
                log: files.log.clone(),
                tail: tail(&files),
            });
        }
        if ready(handle.pid, &files.socket, &spec.forwards) {
            break;
        }
        if started.elapsed() >= timeout {
            kill_group(handle.pid);
            let _ = child.wait();
            return Err(UsernetError::Timeout {
                secs: timeout.as_secs(),
                log: files.log.clone(),
                tail: tail(&files),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reap the supervisor when it exits (it is our child until the daemon
    // exits; after that, init's).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    tracing::debug!(vm_id = %spec.vm_id, pid = handle.pid, elapsed_ms = started.elapsed().as_millis() as u64, "isolated user-mode network up");
    Ok(handle)
}

/// passt listens on `socket` (in its namespace's `/proc/PID/net/unix`,
/// flag `__SO_ACCEPTCON`) and every forwarded host port is bound on the
/// host.
fn ready(supervisor: u32, socket: &Path, forwards: &[PortForward]) -> bool {
    let socket = path_str(socket);
    let listening = proc::live_children(supervisor).into_iter().any(|pid| {
        fs::read_to_string(format!("/proc/{pid}/net/unix")).is_ok_and(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(3) == Some(&"00010000") && f.get(7) == Some(&socket.as_str())
            })
        })
    });
    listening
        && forwards.iter().all(|f| {
            let (file, state) = match f.proto {
                Proto::Tcp => ("/proc/net/tcp", Some("0A")),
                Proto::Udp => ("/proc/net/udp", None),
            };
            let want = format!("0100007F:{:04X}", f.host_port);
            fs::read_to_string(file).is_ok_and(|t| {
                t.lines().skip(1).any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(1) == Some(&want.as_str()) && state.is_none_or(|s| f.get(3) == Some(&s))
                })
            })
        })
}

/// The supervisor is alive and is the one started for `vm_id`.
pub fn is_running(handle: &UsernetHandle, vm_id: &str) -> bool {
    let marker = marker(vm_id);
    proc::is_alive(handle.pid)
        && proc::cmdline(handle.pid)
            .is_some_and(|argv| argv.iter().any(|a| a.as_slice() == marker.as_bytes()))
}

/// Kills the network's processes (SIGKILL to the supervisor's process
/// group) if the supervisor is still the one started for `vm_id`, and
/// removes its socket. Fine when it is gone already (passt leaves with
/// QEMU, and the supervisor with passt).
pub fn kill(handle: &UsernetHandle, vm_id: &str) {
    if is_running(handle, vm_id) {
        kill_group(handle.pid);
    }
    let _ = fs::remove_file(&handle.socket);
}

fn kill_group(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_come_from_the_fib_trie() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n     |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\nLocal:\n     |-- 192.0.2.2\n        /32 host LOCAL\n";
        assert_eq!(
            local_addresses(trie),
            [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(192, 0, 2, 2)]
        );
    }

    #[test]
    fn routes_give_connected_networks_and_gateways() {
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                      eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                      eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            route_networks(routes),
            [
                (Ipv4Addr::new(192, 0, 2, 1), 32),
                (Ipv4Addr::new(192, 0, 2, 0), 24)
            ]
        );
    }

    #[test]
    fn rules_reject_what_is_denied_and_let_dns_through_first() {
        let r = rules(&[(Ipv4Addr::new(10, 0, 0, 0), 8)]);
        let dns = r.find("169.254.53.53 meta l4proto").unwrap();
        let deny = r.find("ip daddr 10.0.0.0/8 reject").unwrap();
        assert!(dns < deny, "{r}");
        assert!(r.contains("table ip6 banger_egress6"), "{r}");
    }

    #[test]
    fn forwards_become_passt_and_pasta_options() {
        let fwd = |proto, host_port, guest_port| PortForward {
            proto,
            host_addr: Ipv4Addr::LOCALHOST.into(),
            host_port,
            guest_port,
        };
        let f = [fwd(Proto::Tcp, 2222, 22), fwd(Proto::Tcp, 8080, 80)];
        assert_eq!(
            forward_args(&f, Proto::Tcp, false),
            ["-t", "127.0.0.1/2222:22", "-t", "127.0.0.1/8080:80"]
        );
        assert_eq!(forward_args(&f, Proto::Tcp, true)[1], "127.0.0.1/22");
        assert_eq!(forward_args(&f, Proto::Udp, true), ["-u", "none"]);
    }

    /// Starts the real processes (passt, pasta, unshare and nft needed),
    /// leaves when QEMU's stand-in client leaves, and is killed by
    /// [`kill`] otherwise.
    #[test]
    fn launches_and_exits_with_its_client() {
        if let Some(tool) = missing_tool() {
            eprintln!("skipped: {tool} is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = UsernetSpec {
            vm_id: "t1".into(),
            vm_dir: dir.path().to_path_buf(),
            forwards: vec![PortForward {
                proto: Proto::Tcp,
                host_addr: Ipv4Addr::LOCALHOST.into(),
                host_port: port,
                guest_port: 22,
            }],
        };
        let handle = launch(&spec, Duration::from_secs(10)).unwrap();
        assert!(is_running(&handle, "t1"));
        assert!(!is_running(&handle, "t2"));
        // The client comes and goes: passt leaves, then the supervisor.
        drop(std::os::unix::net::UnixStream::connect(&handle.socket).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_running(&handle, "t1") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !is_running(&handle, "t1"),
            "still running after its client left"
        );
        // A second one is killed.
        let handle = launch(&spec, Duration::from_secs(10)).unwrap();
        kill(&handle, "t1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_running(&handle, "t1") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_running(&handle, "t1"));
        assert!(!handle.socket.exists());
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
