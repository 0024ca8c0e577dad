//! User-mode networking that keeps the guest off the host: QEMU's slirp
//! run inside a user, network and mount namespace made for the VM, which
//! reaches the outside through pasta and a filter (docs/security.md,
//! "User mode").
//!
//! QEMU's slirp opens the guest's connections from the namespace QEMU runs
//! in. In the host's, `10.0.2.2` is the host's `127.0.0.1` and every
//! address the host reaches (its own addresses, its LAN,
//! `169.254.169.254`) is the guest's too. So for egress `internet` QEMU
//! joins a namespace of the VM's own (rootless: `unshare --user
//! --map-root-user --net --mount`), and that namespace reaches the outside
//! through `pasta`, which opens its connections from the host:
//!
//! ```text
//!  guest ─▶ QEMU slirp ─(namespace: nft output filter)─▶ pasta ──▶ the host's sockets
//!          (10.0.2.15, gw 10.0.2.2, dns 10.0.2.3)            (host)
//! ```
//!
//! - The namespace has its own loopback: slirp maps the guest's `10.0.2.2`
//!   to *that* loopback, where nothing but slirp's own forwards listen.
//!   pasta runs with `--no-map-gw`, so nothing in the namespace maps to the
//!   host's loopback; the namespace's copy of the host's address is local
//!   to the namespace.
//! - An nftables table inside the namespace (root there, not on the host)
//!   rejects, before pasta sees them, connections to loopback, private
//!   (10/8, 172.16/12, 192.168/16, 100.64/10), link-local (169.254/16,
//!   the metadata address), multicast and reserved ranges, the host's own
//!   addresses, its directly connected networks and its gateways, all read
//!   from the host when the VM starts. It is loaded before the namespace
//!   gets its interface. IPv4 only: pasta runs with `-4`, and the
//!   namespace drops all IPv6 but loopback.
//! - DNS: slirp sends the guest's queries to the resolver in
//!   `/etc/resolv.conf`; in the namespace's mount namespace that file is a
//!   bind mount naming [`DNS_ALIAS`], the one link-local address the filter
//!   lets through (port 53 only), and pasta sends that to the host's
//!   resolver, from the host (so a resolver on the host's loopback works,
//!   and no other of its ports is reachable).
//! - Forwards (SSH and published ports): pasta listens on the host's
//!   `127.0.0.1:PORT` and hands each connection to the namespace's
//!   loopback, where slirp listens on the same port (its `hostfwd`) and
//!   forwards it to the guest's port, as without the namespace.
//!
//! QEMU itself is started by `crate::qemu` as always (its pid, session,
//! pidfile and identity unchanged); only, between fork and exec, it joins
//! the namespaces of the holder process this module starts
//! ([`UsernetHandle::namespace_pid`]). One supervisor (`sh`, the leader of
//! a session of its own, so it outlives the daemon like QEMU does) starts
//! the holder and pasta, waits for QEMU to join and to leave, then stops
//! both. The supervisor's pid and its argument `banger-usernet-VMID` are
//! the ownership marker [`UsernetHandle`] records; [`kill`] kills its whole
//! process group.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::proc;
use crate::spec::{PortForward, Proto};

/// The address inside the namespace that slirp sends the guest's DNS
/// queries to (the namespace's `/etc/resolv.conf`) and pasta forwards to
/// the host's resolver.
pub const DNS_ALIAS: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);

/// The programs the design needs, as looked up on `PATH`.
pub const TOOLS: [&str; 5] = ["pasta", "unshare", "nft", "mount", "ip"];

/// How long the supervisor waits for QEMU to join the namespace before it
/// gives up and stops pasta (the daemon kills it sooner on a failed start).
const JOIN_WAIT_SECS: u32 = 120;

/// What an isolated user-mode network is asked to do.
#[derive(Debug, Clone)]
pub struct UsernetSpec {
    /// The VM's id: part of the ownership marker (`[A-Za-z0-9._-]`).
    pub vm_id: String,
    /// The VM's directory: rules, logs and QEMU's pidfile are there.
    pub vm_dir: PathBuf,
    /// Host ports (on `127.0.0.1`) forwarded to the same port in the
    /// namespace, where slirp forwards them to the guest.
    pub forwards: Vec<PortForward>,
}

/// A running isolated network, as kept in the VM's `handles.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernetHandle {
    /// The supervisor: leader of the session and process group of the
    /// holder and pasta.
    pub pid: u32,
    /// The holder: the process whose user, network and mount namespaces
    /// QEMU joins (`crate::spec::VmSpec::join_namespaces_of`).
    #[serde(default)]
    pub namespace_pid: u32,
}

/// The files in the VM's directory.
#[derive(Debug, Clone)]
pub struct UsernetFiles {
    pub rules: PathBuf,
    /// Bind-mounted over `/etc/resolv.conf` in the namespace.
    pub resolv: PathBuf,
    /// Written by the holder, with its pid, once the namespace is set up.
    pub ready: PathBuf,
    /// QEMU's pidfile (`crate::qemu::VmFiles::pidfile`): the supervisor
    /// watches the process it names.
    pub vmm_pidfile: PathBuf,
    /// The supervisor's and the namespace shell's output.
    pub log: PathBuf,
    pub pasta_log: PathBuf,
}

impl UsernetFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            rules: dir.join("egress.nft"),
            resolv: dir.join("resolv.conf"),
            ready: dir.join("net.ready"),
            vmm_pidfile: dir.join("vmm.pid"),
            log: dir.join("usernet.log"),
            pasta_log: dir.join("pasta.log"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsernetError {
    #[error(
        "user-mode networking with egress `internet` needs {tool}, which is not installed \
         (Debian: apt-get install passt nftables util-linux iproute2); or choose --egress open \
         (no isolation from the host) or --network bridged; see docs/security.md"
    )]
    Missing { tool: &'static str },
    #[error(
        "user-mode networking with egress `internet` needs unprivileged user namespaces, \
         which are off ({why}); turn them on, or choose --egress open (no isolation from \
         the host) or --network bridged; see docs/security.md"
    )]
    NoUserNamespaces { why: &'static str },
    #[error(
        "user-mode networking with egress `internet` needs /dev/net/tun, which this user \
         cannot open ({why}); pasta makes the namespace's interface with it (Debian's \
         default is mode 0666); or choose --egress open (no isolation from the host) or \
         --network bridged; see docs/security.md"
    )]
    NoTun { why: String },
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

/// Why this user cannot open `/dev/net/tun` (pasta opens it inside the
/// namespace, with this user's credentials on the device file), if it
/// cannot.
pub fn tun_unusable() -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(
        "/dev/net/tun",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(_) => None,
        Err(e) => Some(io::Error::from(e).to_string()),
    }
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

/// The nftables ruleset loaded in the namespace: connections from it to
/// anything in `denied` are rejected; DNS to [`DNS_ALIAS`] passes; IPv6 is dropped.
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

/// pasta's `-t 127.0.0.1/PORT` (and `-u`) for each forward of `proto`:
/// the host's loopback port to the same port in the namespace, where
/// slirp listens; or `-t none`.
fn forward_args(forwards: &[PortForward], proto: Proto) -> Vec<String> {
    let flag = match proto {
        Proto::Tcp => "-t",
        Proto::Udp => "-u",
    };
    let mut out: Vec<String> = Vec::new();
    for f in forwards.iter().filter(|f| f.proto == proto) {
        let spec = format!("127.0.0.1/{}", f.host_port);
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
    pasta.extend(forward_args(&spec.forwards, Proto::Tcp));
    pasta.extend(forward_args(&spec.forwards, Proto::Udp));
    let join = |v: &[String]| v.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" ");

    // Inside the namespace: loopback up (slirp's forwards listen there),
    // the resolver file, the filter, then the marker with the holder's pid,
    // written whole; then hold the namespaces until killed.
    let inner = format!(
        "{ip} link set lo up || exit 1\n\
         if [ -e /etc/resolv.conf ]; then {mount} --bind {resolv} /etc/resolv.conf || exit 1; fi\n\
         {nft} -f {rules} || exit 1\n\
         echo $$ > {ready}.tmp && mv {ready}.tmp {ready} || exit 1\n\
         exec sleep infinity\n",
        ip = sh_quote(&tool("ip")),
        mount = sh_quote(&tool("mount")),
        resolv = q(&files.resolv),
        nft = sh_quote(&tool("nft")),
        rules = q(&files.rules),
        ready = q(&files.ready),
    );
    // On the host: the namespace, then pasta once the filter is loaded
    // (before that, the holder's pid may still name the host's namespace);
    // then wait for QEMU (named by its pidfile, and in the namespace) to
    // join and to leave, and stop both.
    format!(
        "{unshare} --user --map-root-user --net --mount -- sh -c {inner} banger-usernet-ns &\n\
         ns=$!\n\
         i=0\n\
         while [ ! -e {ready} ]; do\n\
         \x20 case $(cut -d' ' -f3 /proc/$ns/stat 2>/dev/null) in Z|X|'') exit 1;; esac\n\
         \x20 i=$((i + 1)); [ $i -gt 2000 ] && {{ echo 'the namespace did not come up' >&2; kill $ns; exit 1; }}\n\
         \x20 sleep 0.005\n\
         done\n\
         {pasta} $ns &\n\
         pa=$!\n\
         net=$(readlink /proc/$ns/ns/net)\n\
         joined() {{ [ -n \"$q\" ] && [ \"$(readlink /proc/$q/ns/net 2>/dev/null)\" = \"$net\" ]; }}\n\
         q=; i=0\n\
         until joined; do\n\
         \x20 i=$((i + 1)); [ $i -gt {join_polls} ] && break\n\
         \x20 sleep 0.1\n\
         \x20 q=$(cat {pidfile} 2>/dev/null)\n\
         done\n\
         while joined; do sleep 1; done\n\
         kill $pa $ns 2>/dev/null\n\
         wait\n",
        unshare = sh_quote(&tool("unshare")),
        inner = sh_quote(&inner),
        ready = q(&files.ready),
        pasta = join(&pasta),
        join_polls = JOIN_WAIT_SECS * 10,
        pidfile = q(&files.vmm_pidfile),
    )
}

fn marker(vm_id: &str) -> String {
    format!("banger-usernet-{vm_id}")
}

/// Starts the isolated network for `spec` and returns once the namespace
/// is set up and pasta has configured it and listens on every forwarded
/// host port. On failure nothing is left running.
pub fn launch(spec: &UsernetSpec, timeout: Duration) -> Result<UsernetHandle, UsernetError> {
    if let Some(tool) = missing_tool() {
        return Err(UsernetError::Missing { tool });
    }
    if let Some(why) = userns_disabled() {
        return Err(UsernetError::NoUserNamespaces { why });
    }
    if let Some(why) = tun_unusable() {
        return Err(UsernetError::NoTun { why });
    }
    let files = UsernetFiles::in_dir(&spec.vm_dir);
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| UsernetError::Io { what, path, source }
    };
    for stale in [&files.ready, &files.vmm_pidfile] {
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
    fs::write(&files.resolv, format!("nameserver {DNS_ALIAS}\n"))
        .map_err(io_err("write", &files.resolv))?;
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
    let supervisor = child.id();
    let tail = |files: &UsernetFiles| {
        let mut t = crate::qemu::log_tail_of(&files.log, log_start);
        let more = crate::qemu::log_tail_of(&files.pasta_log, 0);
        if !more.is_empty() {
            t.push_str("; ");
            t.push_str(&more);
        }
        t
    };
    let started = Instant::now();
    let namespace_pid = loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(UsernetError::Exited {
                log: files.log.clone(),
                tail: tail(&files),
            });
        }
        if let Some(holder) = ready(&files.ready, &spec.forwards) {
            break holder;
        }
        if started.elapsed() >= timeout {
            kill_group(supervisor);
            let _ = child.wait();
            return Err(UsernetError::Timeout {
                secs: timeout.as_secs(),
                log: files.log.clone(),
                tail: tail(&files),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Reap the supervisor when it exits (it is our child until the daemon
    // exits; after that, init's).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    tracing::debug!(vm_id = %spec.vm_id, pid = supervisor, namespace_pid, elapsed_ms = started.elapsed().as_millis() as u64, "isolated user-mode network up");
    Ok(UsernetHandle {
        pid: supervisor,
        namespace_pid,
    })
}

/// The holder's pid once the namespace is set up (the marker names it),
/// pasta has given it a default route, and every forwarded host port is
/// bound on the host.
fn ready(marker: &Path, forwards: &[PortForward]) -> Option<u32> {
    let holder: u32 = fs::read_to_string(marker).ok()?.trim().parse().ok()?;
    let routed = fs::read_to_string(format!("/proc/{holder}/net/route")).is_ok_and(|t| {
        t.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    });
    let bound = forwards.iter().all(|f| {
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
    });
    (routed && bound).then_some(holder)
}

/// Makes `command` join `holder`'s user, network and mount namespaces
/// between fork and exec ([`UsernetHandle::namespace_pid`]), then change
/// to `cwd` (joining a mount namespace moves the process to its root).
/// The namespace files are opened now, so a holder that is gone fails
/// here and not in the child.
pub fn join_namespaces(command: &mut Command, holder: u32, cwd: &Path) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    let open = |ns: &str| {
        rustix::fs::open(
            format!("/proc/{holder}/ns/{ns}"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
    };
    let (user, net, mnt) = (open("user")?, open("net")?, open("mnt")?);
    let dir = rustix::fs::open(
        cwd,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: three `setns` and one `fchdir`
    // system calls through rustix (no allocation, no lock), on descriptors
    // opened above; its error is mapped with `from_raw_os_error`, which does
    // not allocate. The child is single-threaded, as `setns` into a user
    // namespace requires.
    unsafe {
        command.pre_exec(move || {
            let raw = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
            move_into_link_name_space(user.as_fd(), Some(LinkNameSpaceType::User)).map_err(raw)?;
            move_into_link_name_space(net.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(raw)?;
            move_into_link_name_space(mnt.as_fd(), Some(LinkNameSpaceType::Mount)).map_err(raw)?;
            rustix::process::fchdir(&dir).map_err(raw)
        });
    }
    Ok(())
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
/// waits (up to 5 s) until every one has exited, so that pasta's ports
/// are free when this returns (a `vm start` right after a stop binds
/// them again). Fine when it is gone already: the supervisor leaves after
/// QEMU, once it has reaped pasta.
pub fn kill(handle: &UsernetHandle, vm_id: &str) {
    if !is_running(handle, vm_id) {
        return;
    }
    kill_group(handle.pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc::group_members(handle.pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
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
    fn forwards_become_pasta_options() {
        let fwd = |proto, host_port, guest_port| PortForward {
            proto,
            host_addr: Ipv4Addr::LOCALHOST.into(),
            host_port,
            guest_port,
        };
        let f = [
            fwd(Proto::Tcp, 2222, 22),
            fwd(Proto::Tcp, 8080, 80),
            fwd(Proto::Tcp, 8080, 80),
        ];
        assert_eq!(
            forward_args(&f, Proto::Tcp),
            ["-t", "127.0.0.1/2222", "-t", "127.0.0.1/8080"]
        );
        assert_eq!(forward_args(&f, Proto::Udp), ["-u", "none"]);
    }

    /// A process started by [`join_namespaces`] in the namespace: its
    /// output.
    fn run_joined(handle: &UsernetHandle, dir: &Path, script: &str) -> std::process::Output {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        join_namespaces(&mut c, handle.namespace_pid, dir).unwrap();
        c.output().unwrap()
    }

    fn net_ns(pid: u32) -> PathBuf {
        fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
    }

    /// Starts the real processes (pasta, unshare, nft, mount, ip needed):
    /// a process joined to the namespace sees banger's resolver, its own
    /// loopback, and no host loopback; the network leaves when the process
    /// named by the pidfile leaves, and is killed by [`kill`] otherwise.
    #[test]
    fn launches_joins_and_leaves_with_its_vmm() {
        if let Some(tool) = missing_tool() {
            eprintln!("skipped: {tool} is not installed");
            return;
        }
        if let Some(why) = userns_disabled() {
            eprintln!("skipped: {why}");
            return;
        }
        if let Some(why) = tun_unusable() {
            eprintln!("skipped: /dev/net/tun cannot be opened: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let host_service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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
        assert_ne!(net_ns(handle.namespace_pid), net_ns(std::process::id()));

        // Inside: the resolver is banger's alias, the working directory
        // is kept, and the host's loopback service is not there.
        let out = run_joined(
            &handle,
            dir.path(),
            &format!(
                "cat /etc/resolv.conf; pwd; cat /proc/net/tcp | grep -ci ':{:04X} ' || true",
                host_service.local_addr().unwrap().port()
            ),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("nameserver {DNS_ALIAS}")), "{text}");
        assert!(text.contains(&path_str(dir.path())), "{text}");
        assert!(text.trim_end().ends_with('0'), "host socket seen: {text}");

        // The VMM's stand-in joins, names itself in the pidfile, leaves:
        // the network leaves too.
        let mut vmm = Command::new("sleep");
        vmm.arg("30");
        join_namespaces(&mut vmm, handle.namespace_pid, dir.path()).unwrap();
        let mut vmm = vmm.spawn().unwrap();
        assert_eq!(net_ns(vmm.id()), net_ns(handle.namespace_pid));
        fs::write(dir.path().join("vmm.pid"), vmm.id().to_string()).unwrap();
        // Give the supervisor time to see it (it polls every 0.1 s): it
        // must still be running while the VMM is.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            assert!(is_running(&handle, "t1"), "left while its VMM runs");
            std::thread::sleep(Duration::from_millis(50));
        }
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_running(&handle, "t1") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !is_running(&handle, "t1"),
            "still running after its VMM left"
        );

        // A second one is killed: when `kill` returns, every process of
        // it is gone and the forwarded port is free again.
        let handle = launch(&spec, Duration::from_secs(10)).unwrap();
        kill(&handle, "t1");
        assert!(!is_running(&handle, "t1"));
        assert_eq!(proc::group_members(handle.pid), Vec::<u32>::new());
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the forwarded port is free");
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
