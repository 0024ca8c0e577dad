//! `SetTime`, `Freeze`, `Thaw` and `Identity`: what the guest does around
//! pause/resume, snapshots and restores (docs/agent.md, "Snapshots and
//! restores"). Everything here decides and validates; the changes
//! themselves go through [`Host`], so tests run it against a fake.
//!
//! The requests run one at a time, in order, on one worker thread
//! ([`Worker`]): a `Thaw` never overtakes the `Freeze` before it, and a
//! slow `sync()` or `ssh-keygen` never holds up the frame reader.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use banger_proto::agent::{
    AgentErrorCode, Frame, GuestNet, HostKeyPair, IDENTITY_RANDOM_MAX, IDENTITY_RANDOM_MIN, Message,
};

use crate::dispatch::Out;
use crate::host::Host;
use crate::log;
use crate::procfs::{self, MountInfo};

/// Longest `Freeze` timeout accepted (10 minutes).
pub const MAX_FREEZE_TIMEOUT_MS: u32 = 600_000;

/// Earliest clock accepted: 2020-01-01T00:00:00Z. Anything before is a
/// bug on the host's side, not a time to set.
const MIN_UNIX_S: u64 = 1_577_836_800;
/// Latest clock accepted: 2100-01-01T00:00:00Z.
const MAX_UNIX_S: u64 = 4_102_444_800;

/// Requests waiting for the worker; more are refused as busy.
const QUEUE: usize = 16;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const SSH_DIR: &str = "/etc/ssh";
const HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
const HOST_KEY_PUB: &str = "/etc/ssh/ssh_host_ed25519_key.pub";
/// Where the new key is made (by `ssh-keygen`, or from the daemon's pair)
/// before it replaces the old one.
const NEW_KEY: &str = "/etc/ssh/.banger-new-host-key";
const NEW_KEY_PUB: &str = "/etc/ssh/.banger-new-host-key.pub";
const SSHD_PID: &str = "/run/sshd.pid";
/// The NIC (no udev: the kernel's name, docs/guest-contract.md).
const NIC: &str = "eth0";

/// One request for the worker.
#[derive(Debug)]
pub(crate) enum Job {
    SetTime {
        id: u64,
        unix_ns: u64,
    },
    Freeze {
        id: u64,
        timeout_ms: u32,
    },
    Thaw {
        id: u64,
    },
    Identity {
        id: u64,
        req: IdentityRequest,
        random: Vec<u8>,
    },
}

/// The fields of `Message::Identity`.
#[derive(Debug, Clone)]
pub(crate) struct IdentityRequest {
    pub hostname: String,
    pub unix_ns: u64,
    pub net: Option<GuestNet>,
    pub new_host_key: bool,
    /// The new key pair the daemon made (with `new_host_key` only).
    pub host_key: Option<HostKeyPair>,
}

/// A refusal or failure: the error code and message of the reply.
type Failure = (AgentErrorCode, String);

fn bad(message: String) -> Failure {
    (AgentErrorCode::BadRequest, message)
}

/// A failed step: `STEP: ERROR`.
fn failed(step: &str, e: impl std::fmt::Display) -> Failure {
    (AgentErrorCode::Failed, format!("{step}: {e}"))
}

/// A request's reply, and the files it changed that are to be fsynced
/// once the reply is sent.
///
/// A restored guest answers its identity before making it durable: under
/// an emulated CPU each fsync is a journal commit and a flush through the
/// VMM, about 50 ms each here, and they were most of a fork's identity
/// step. The files are replaced by rename, so a crash in between leaves
/// the old or the new contents (ext4 writes a file's data before a rename
/// over another commits). The worker runs the fsyncs before its next
/// request, so a `Freeze` for a snapshot finds them done.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) msg: Message,
    pub(crate) then_fsync: Vec<PathBuf>,
}

/// `paths` once each, files before directories (a file's directory entry
/// is durable only with its directory).
fn durable_order(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut unique: Vec<PathBuf> = Vec::with_capacity(paths.len());
    for p in paths {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    let holds_another = |d: &PathBuf| unique.iter().any(|p| p.parent() == Some(d.as_path()));
    let (dirs, mut files): (Vec<PathBuf>, Vec<PathBuf>) =
        unique.iter().cloned().partition(|p| holds_another(p));
    files.extend(dirs);
    files
}

/// The agent's side of the requests: the host seam and the freeze state.
#[derive(Debug)]
pub(crate) struct GuestOps {
    host: Arc<dyn Host>,
    freezer: Arc<Freezer>,
}

impl GuestOps {
    pub(crate) fn new(host: Arc<dyn Host>) -> Self {
        Self {
            freezer: Arc::new(Freezer::new(Arc::clone(&host))),
            host,
        }
    }

    /// Whether filesystems are frozen now (writes would block).
    pub(crate) fn is_frozen(&self) -> bool {
        self.freezer.is_frozen()
    }

    /// Does one request and returns its reply, with what is to be made
    /// durable once the reply is sent (see [`Reply::then_fsync`]).
    pub(crate) fn run(&self, job: Job) -> Reply {
        let mut then_fsync = Vec::new();
        let (id, result) = match job {
            Job::SetTime { id, unix_ns } => (id, self.set_time(unix_ns).map(|()| None)),
            Job::Freeze { id, timeout_ms } => (id, self.freeze(timeout_ms).map(|()| None)),
            Job::Thaw { id } => (
                id,
                self.freezer
                    .thaw_all()
                    .map(|_| None)
                    .map_err(|e| (AgentErrorCode::Failed, e)),
            ),
            Job::Identity { id, req, random } => {
                (id, self.identity(&req, &random, &mut then_fsync).map(Some))
            }
        };
        let msg = match result {
            Ok(None) => Message::Done { id },
            Ok(Some(host_key)) => Message::IdentityDone { id, host_key },
            Err((code, message)) => Message::Error {
                id: Some(id),
                code,
                message,
            },
        };
        Reply {
            msg,
            then_fsync: durable_order(then_fsync),
        }
    }

    /// fsyncs `paths` (files, then the directories that name them),
    /// logging what fails: the reply has gone already.
    pub(crate) fn make_durable(&self, paths: &[PathBuf]) {
        for p in paths {
            if let Err(e) = self.host.fsync(p) {
                log!("fsync {}: {e}", p.display());
            }
        }
    }

    fn set_time(&self, unix_ns: u64) -> Result<(), Failure> {
        check_time(unix_ns)?;
        self.host
            .set_clock(unix_ns)
            .map_err(|e| failed("set the clock", e))?;
        log!("clock set to {} s after the epoch", unix_ns / 1_000_000_000);
        Ok(())
    }

    fn freeze(&self, timeout_ms: u32) -> Result<(), Failure> {
        if !(1..=MAX_FREEZE_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(bad(format!(
                "freeze timeout {timeout_ms} ms is not within 1..={MAX_FREEZE_TIMEOUT_MS}"
            )));
        }
        Freezer::freeze(&self.freezer, Duration::from_millis(u64::from(timeout_ms)))
            .map_err(|e| (AgentErrorCode::Failed, e))
    }

    /// Validates everything, then applies it step by step; the host key
    /// line on success.
    fn identity(
        &self,
        req: &IdentityRequest,
        random: &[u8],
        then_fsync: &mut Vec<PathBuf>,
    ) -> Result<String, Failure> {
        // Nothing changes unless all of it is valid.
        if !(IDENTITY_RANDOM_MIN..=IDENTITY_RANDOM_MAX).contains(&random.len()) {
            return Err(bad(format!(
                "identity carries {} bytes of randomness, not {IDENTITY_RANDOM_MIN}..={IDENTITY_RANDOM_MAX}",
                random.len()
            )));
        }
        check_time(req.unix_ns)?;
        check_hostname(&req.hostname).map_err(bad)?;
        let net = req.net.as_ref().map(check_net).transpose().map_err(bad)?;
        if let Some(pair) = &req.host_key {
            if !req.new_host_key {
                return Err(bad("a host key pair without new_host_key".into()));
            }
            pair.check().map_err(bad)?;
        }

        let host = &*self.host;
        let started = Instant::now();
        // The snapshot may have been taken frozen, by this agent (its
        // state came back with the guest's memory). Not frozen: no walk of
        // the mounts, whose ioctls cost a restored guest ~30 ms under TCG.
        if self.freezer.is_frozen() {
            self.freezer
                .thaw_all()
                .map_err(|e| failed("thaw the filesystems", e))?;
        }
        let thawed = started.elapsed();
        host.set_clock(req.unix_ns)
            .map_err(|e| failed("set the clock", e))?;
        host.add_randomness(random)
            .map_err(|e| failed("mix in randomness", e))?;
        set_hostname(host, &req.hostname, then_fsync)?;
        if let Some(net) = &net {
            set_net(host, net, then_fsync)?;
        }
        if req.new_host_key {
            new_host_key(host, req.host_key.as_ref(), then_fsync)?;
        }
        let key = kept_host_key(host, req.new_host_key)?;
        log!(
            "identity applied in {} ms (thaw {} ms): hostname {}{}{}",
            started.elapsed().as_millis(),
            thawed.as_millis(),
            req.hostname,
            net.as_ref()
                .map(|n| format!(", {} on {NIC} ({})", n.address, n.mac))
                .unwrap_or_default(),
            match (req.new_host_key, &req.host_key) {
                (true, Some(_)) => ", new SSH host key (the host's)",
                (true, None) => ", new SSH host key (made here)",
                (false, _) => "",
            }
        );
        Ok(key)
    }
}

/// The filesystems frozen, and the watchdog that thaws them when no
/// `Thaw` comes.
#[derive(Debug)]
pub(crate) struct Freezer {
    host: Arc<dyn Host>,
    state: Mutex<FreezeState>,
    /// Wakes the watchdog: a thaw, or a new deadline.
    wake: Condvar,
    frozen: AtomicBool,
}

#[derive(Debug, Default)]
struct FreezeState {
    /// Mount points this agent froze, innermost first.
    mounts: Vec<PathBuf>,
    /// Bumped by every freeze and thaw: the watchdog of an older one ends.
    generation: u64,
    deadline: Option<Instant>,
}

impl Freezer {
    fn new(host: Arc<dyn Host>) -> Self {
        Self {
            host,
            state: Mutex::default(),
            wake: Condvar::new(),
            frozen: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FreezeState> {
        // A list and two numbers: consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// `sync()`, then freezes every filesystem on a block device,
    /// innermost first, and starts the watchdog that thaws them after
    /// `timeout`. Frozen already: only the deadline moves. On failure
    /// nothing is left frozen.
    fn freeze(this: &Arc<Self>, timeout: Duration) -> Result<(), String> {
        let mut st = this.lock();
        if !st.mounts.is_empty() {
            st.generation += 1;
            st.deadline = Some(Instant::now() + timeout);
            let generation = st.generation;
            drop(st);
            this.wake.notify_all();
            log!("frozen already: thaw deadline moved to {timeout:?} from now");
            return Self::watch(this, generation);
        }
        let mounts = block_mounts(&*this.host)?;
        if mounts.is_empty() {
            return Err(format!("no filesystem on a block device in {MOUNTINFO}"));
        }
        this.host.sync();
        // From the first freeze on, writing to stderr (journald, on the
        // root disk) could block the agent.
        log::hold();
        let mut done: Vec<PathBuf> = Vec::with_capacity(mounts.len());
        for m in &mounts {
            match this.host.freeze(m) {
                Ok(()) => done.push(m.clone()),
                // Frozen already (by an agent that restarted since, or by
                // hand): ours to thaw from now on.
                Err(e) if is_errno(&e, rustix::io::Errno::BUSY) => {
                    log!("{} was frozen already", m.display());
                    done.push(m.clone());
                }
                Err(e) => {
                    for d in done.iter().rev() {
                        if let Err(e) = this.host.thaw(d) {
                            log!("thaw {} after a failed freeze: {e}", d.display());
                        }
                    }
                    log::release();
                    return Err(format!("freeze {}: {e}", m.display()));
                }
            }
        }
        let n = done.len();
        st.mounts = done;
        st.generation += 1;
        st.deadline = Some(Instant::now() + timeout);
        let generation = st.generation;
        this.frozen.store(true, Ordering::Release);
        drop(st);
        log!("froze {n} filesystems (thawed by myself after {timeout:?} without a thaw)");
        Self::watch(this, generation)
    }

    /// Starts the watchdog of `generation`; without one nothing may stay
    /// frozen, so a failure to start it thaws.
    fn watch(this: &Arc<Self>, generation: u64) -> Result<(), String> {
        let me = Arc::clone(this);
        match crate::spawn("auto-thaw", move || me.watchdog(generation)) {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = this.thaw_all();
                Err(format!("start the auto-thaw thread: {e}"))
            }
        }
    }

    /// Waits for the deadline of `generation`, then thaws, unless a thaw
    /// or a newer freeze came first.
    fn watchdog(&self, generation: u64) {
        let mut st = self.lock();
        loop {
            if st.generation != generation || st.mounts.is_empty() {
                return;
            }
            let Some(deadline) = st.deadline else { return };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let n = st.mounts.len();
                let result = self.thaw_locked(&mut st);
                log!("no thaw came in time: thawed {n} filesystems by myself");
                if let Err(e) = result {
                    log!("{e}");
                }
                return;
            }
            st = self
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Thaws every filesystem on a block device (and any this agent froze
    /// that is no longer listed), outermost first; one that is not frozen
    /// is fine. The number thawed.
    fn thaw_all(&self) -> Result<usize, String> {
        let mut st = self.lock();
        self.thaw_locked(&mut st)
    }

    fn thaw_locked(&self, st: &mut FreezeState) -> Result<usize, String> {
        let mut targets: Vec<PathBuf> = st.mounts.clone();
        let mut first_error = None;
        match block_mounts(&*self.host) {
            Ok(ms) => {
                for m in ms {
                    if !targets.contains(&m) {
                        targets.push(m);
                    }
                }
            }
            // Nothing known to thaw: say so.
            Err(e) if targets.is_empty() => first_error = Some(e),
            Err(e) => log!("{e}; thawing what I froze"),
        }
        sort_by_depth(&mut targets);
        targets.reverse();
        let mut thawed = 0;
        for m in &targets {
            match self.host.thaw(m) {
                Ok(()) => thawed += 1,
                Err(e) if is_errno(&e, rustix::io::Errno::INVAL) => {}
                Err(e) => {
                    first_error.get_or_insert(format!("thaw {}: {e}", m.display()));
                }
            }
        }
        let was_frozen = !st.mounts.is_empty();
        st.mounts.clear();
        st.generation += 1;
        st.deadline = None;
        self.frozen.store(false, Ordering::Release);
        self.wake.notify_all();
        log::release();
        if was_frozen || thawed > 0 {
            log!("thawed {thawed} filesystems");
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(thawed),
        }
    }
}

fn is_errno(e: &io::Error, errno: rustix::io::Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

/// The mount points to freeze, innermost first, read through `host`.
fn block_mounts(host: &dyn Host) -> Result<Vec<PathBuf>, String> {
    let text = host
        .read(Path::new(MOUNTINFO))
        .map_err(|e| format!("read {MOUNTINFO}: {e}"))?;
    Ok(freezable(&procfs::parse_mountinfo(
        &String::from_utf8_lossy(&text),
    )))
}

/// Of the mount table, the filesystems on a block device (major number
/// not 0, a disk filesystem type): each device once, only the mount on
/// top at its mount point (the one a path reaches), innermost first.
pub(crate) fn freezable(mounts: &[MountInfo]) -> Vec<PathBuf> {
    let mut top: Vec<&MountInfo> = Vec::new();
    for m in mounts {
        top.retain(|t| t.mount_point != m.mount_point);
        top.push(m);
    }
    let mut devices: Vec<(u32, u32)> = Vec::new();
    let mut out: Vec<PathBuf> = Vec::new();
    for m in top {
        if m.dev.0 == 0
            || !procfs::is_disk_fstype(&m.fstype)
            || !m.mount_point.starts_with('/')
            || devices.contains(&m.dev)
        {
            continue;
        }
        devices.push(m.dev);
        out.push(PathBuf::from(&m.mount_point));
    }
    sort_by_depth(&mut out);
    out
}

/// Deepest paths first (`/root` before `/`), ties by name.
fn sort_by_depth(paths: &mut [PathBuf]) {
    paths.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then_with(|| a.cmp(b))
    });
}

fn check_time(unix_ns: u64) -> Result<(), Failure> {
    let s = unix_ns / 1_000_000_000;
    if (MIN_UNIX_S..MAX_UNIX_S).contains(&s) {
        Ok(())
    } else {
        Err(bad(format!(
            "time {unix_ns} ns after the epoch is not between 2020 and 2100"
        )))
    }
}

/// A hostname: dot-separated labels of letters, digits and `-` (not
/// first or last in a label), 1 to 63 characters in all.
pub(crate) fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad hostname {name:?}: use 1-63 letters, digits, '-' and '.', labels not starting or ending with '-'"
        ))
    }
}

/// A validated [`GuestNet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Net {
    /// Lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<IpAddr>,
}

impl Net {
    /// [`Net::mac`]'s six octets (checked by [`check_mac`]).
    fn mac_octets(&self) -> [u8; 6] {
        let mut out = [0u8; 6];
        for (o, hex) in out.iter_mut().zip(self.mac.split(':')) {
            *o = u8::from_str_radix(hex, 16).unwrap_or(0);
        }
        out
    }
}

pub(crate) fn check_net(n: &GuestNet) -> Result<Net, String> {
    let mac = check_mac(&n.mac)?;
    let (address, prefix) = n
        .address_cidr
        .split_once('/')
        .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
        .filter(|(a, p)| (1..=32).contains(p) && is_unicast(*a))
        .ok_or_else(|| {
            format!(
                "bad address {:?}: want a unicast IPv4 address and prefix, like 10.0.2.15/24",
                n.address_cidr
            )
        })?;
    let gateway = n
        .gateway
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|g| is_unicast(*g) && *g != address)
        .ok_or_else(|| format!("bad gateway {:?}: want a unicast IPv4 address", n.gateway))?;
    if n.dns.len() > 3 {
        return Err(format!(
            "{} name servers: resolv.conf takes at most 3",
            n.dns.len()
        ));
    }
    let dns = n
        .dns
        .iter()
        .map(|d| {
            d.parse::<IpAddr>()
                .ok()
                .filter(|a| !a.is_unspecified() && !a.is_multicast())
                .ok_or_else(|| format!("bad name server {d:?}: want an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Net {
        mac,
        address,
        prefix,
        gateway,
        dns,
    })
}

fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// `aa:bb:cc:dd:ee:ff` (either case), unicast and not all zeros;
/// returned in lowercase.
pub(crate) fn check_mac(mac: &str) -> Result<String, String> {
    let octets: Vec<u8> = mac
        .split(':')
        .map(|o| {
            if o.len() == 2 {
                u8::from_str_radix(o, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_default();
    if octets.len() != 6 || octets.iter().all(|o| *o == 0) || octets[0] & 1 == 1 {
        return Err(format!(
            "bad MAC address {mac:?}: want six hex octets like 52:54:00:12:34:56, unicast"
        ));
    }
    Ok(mac.to_ascii_lowercase())
}

/// `sethostname`, `/etc/hostname`, and the `127.0.1.1` line of
/// `/etc/hosts` when it has one.
fn set_hostname(host: &dyn Host, name: &str, then_fsync: &mut Vec<PathBuf>) -> Result<(), Failure> {
    host.set_hostname(name)
        .map_err(|e| failed("set the hostname", e))?;
    host.write(
        Path::new("/etc/hostname"),
        format!("{name}\n").as_bytes(),
        0o644,
    )
    .map_err(|e| failed("write /etc/hostname", e))?;
    then_fsync.push("/etc/hostname".into());
    let hosts = match host.read(Path::new("/etc/hosts")) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            then_fsync.push("/etc".into());
            return Ok(());
        }
        Err(e) => return Err(failed("read /etc/hosts", e)),
    };
    if let Some(new) = hosts_with_name(&hosts, name) {
        host.write(Path::new("/etc/hosts"), new.as_bytes(), 0o644)
            .map_err(|e| failed("write /etc/hosts", e))?;
        then_fsync.push("/etc/hosts".into());
    }
    then_fsync.push("/etc".into());
    Ok(())
}

/// `/etc/hosts` with its `127.0.1.1` lines naming `name`; `None` when it
/// has no such line (left as it is).
pub(crate) fn hosts_with_name(hosts: &str, name: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(hosts.len() + name.len());
    for line in hosts.split_inclusive('\n') {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            found = true;
            out.push_str("127.0.1.1\t");
            out.push_str(name);
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

/// `eth0`: down, the new MAC, the new address (replacing the old), up,
/// the default route (on-link, as banger-guest-setup does: the gateway
/// need not be inside the prefix); then `/etc/resolv.conf`.
fn set_net(host: &dyn Host, net: &Net, then_fsync: &mut Vec<PathBuf>) -> Result<(), Failure> {
    let params = crate::init::cmdline::NetParams {
        address: net.address,
        prefix: net.prefix,
        gateway: Some(net.gateway),
    };
    host.set_nic(NIC, net.mac_octets(), &params)
        .map_err(|e| failed(&format!("configure {NIC}"), e))?;
    if !net.dns.is_empty() {
        let text: String = net
            .dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect();
        host.write(Path::new("/etc/resolv.conf"), text.as_bytes(), 0o644)
            .map_err(|e| failed("write /etc/resolv.conf", e))?;
        then_fsync.extend(["/etc/resolv.conf".into(), "/etc".into()]);
    }
    Ok(())
}

/// A new ed25519 host key (`pair`, checked already; else one made with
/// `ssh-keygen`) replaces every `ssh_host_*` key, and the running sshd
/// is told to re-read it.
fn new_host_key(
    host: &dyn Host,
    pair: Option<&HostKeyPair>,
    then_fsync: &mut Vec<PathBuf>,
) -> Result<(), Failure> {
    let step = "new host key";
    for p in [NEW_KEY, NEW_KEY_PUB] {
        match host.remove(Path::new(p)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(step, format!("remove {p}: {e}"))),
        }
    }
    match pair {
        Some(pair) => {
            // Modes as ssh-keygen makes them; the private key is never
            // readable by others, not even for a moment.
            let public = format!("{}\n", pair.public.trim_end());
            for (path, data, mode) in [
                (NEW_KEY, pair.private_openssh.as_bytes(), 0o600),
                (NEW_KEY_PUB, public.as_bytes(), 0o644),
            ] {
                host.create(Path::new(path), data, mode)
                    .map_err(|e| failed(step, format!("create {path}: {e}")))?;
            }
        }
        None => {
            // `-C ""`: as the image's first-boot key (banger-ssh-hostkey.service).
            host.run(&[
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "",
                "-f",
                NEW_KEY,
            ])
            .map_err(|e| failed(step, format!("ssh-keygen: {e}")))?;
        }
    }
    read_host_key(host, NEW_KEY_PUB).map_err(|e| failed(step, e))?;
    // Forks of one snapshot must share no key: the image makes only
    // ed25519, but whatever else is there goes too.
    let names = host
        .list(Path::new(SSH_DIR))
        .map_err(|e| failed(step, format!("list {SSH_DIR}: {e}")))?;
    for name in names {
        if name.starts_with("ssh_host_")
            && name != "ssh_host_ed25519_key"
            && name != "ssh_host_ed25519_key.pub"
        {
            let p = Path::new(SSH_DIR).join(&name);
            host.remove(&p)
                .map_err(|e| failed(step, format!("remove {}: {e}", p.display())))?;
        }
    }
    for (from, to) in [(NEW_KEY, HOST_KEY), (NEW_KEY_PUB, HOST_KEY_PUB)] {
        host.rename(Path::new(from), Path::new(to))
            .map_err(|e| failed(step, format!("rename {from} to {to}: {e}")))?;
    }
    // The pair, the renames and the removals reach the disk once the
    // reply is sent (see `Reply`), or a VM killed after that would come
    // back with a key banger does not know. Only these files and
    // /etc/ssh, not a global `sync()`: that writes back all that is dirty
    // (slow under an emulated CPU).
    then_fsync.extend([HOST_KEY.into(), HOST_KEY_PUB.into(), SSH_DIR.into()]);
    reload_sshd(host).map_err(|e| failed("signal sshd", e))
}

/// Where OpenSSH 9.8 and later keep the per-connection binary; their
/// listener loads the host keys once, so it must be told.
const SSHD_SESSION_DIR: &str = "/usr/lib/openssh";

/// Makes the running sshd use the new key. OpenSSH before 9.8 (Debian
/// bookworm's 9.2) re-executes itself for every connection and reads the
/// host keys then: nothing to do, and no restart gap in which connections
/// are refused (measured: 0.8 s under TCG). A newer sshd (it has
/// `sshd-session`) gets SIGHUP: it re-executes itself and loads the keys
/// again; open sessions are other processes and stay. No sshd running, or
/// a stale pid file: nothing to do.
fn reload_sshd(host: &dyn Host) -> Result<(), String> {
    let splits_sessions = host
        .list(Path::new(SSHD_SESSION_DIR))
        .is_ok_and(|names| names.iter().any(|n| n == "sshd-session"));
    if !splits_sessions {
        return Ok(());
    }
    let text = match host.read(Path::new(SSHD_PID)) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log!("no {SSHD_PID}: sshd is not running; it reads the new key when it starts");
            return Ok(());
        }
        Err(e) => return Err(format!("read {SSHD_PID}: {e}")),
    };
    let pid: u32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("{SSHD_PID} holds {:?}, not a pid", text.trim()))?;
    let comm = host
        .read(Path::new(&format!("/proc/{pid}/comm")))
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    if comm != "sshd" {
        log!("{SSHD_PID} names pid {pid}, which is not sshd ({comm:?}): not signalling it");
        return Ok(());
    }
    host.hangup(pid).map_err(|e| format!("SIGHUP {pid}: {e}"))
}

/// The guest's SSH host public key line; empty when it has none and was
/// not asked for a new one (an image without an SSH server).
fn kept_host_key(host: &dyn Host, new_host_key: bool) -> Result<String, Failure> {
    if !new_host_key {
        if let Err(e) = host.read(Path::new(HOST_KEY_PUB)) {
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(String::new());
            }
        }
    }
    read_host_key(host, HOST_KEY_PUB).map_err(|e| failed("read the host key", e))
}

/// The public key line in `path`: `ssh-ed25519 BASE64[ COMMENT]`.
fn read_host_key(host: &dyn Host, path: &str) -> Result<String, String> {
    let b = host
        .read(Path::new(path))
        .map_err(|e| format!("read {path}: {e}"))?;
    let line = String::from_utf8_lossy(&b).trim().to_owned();
    if line.starts_with("ssh-ed25519 ") && !line.contains('\n') {
        Ok(line)
    } else {
        Err(format!("{path} is not an ed25519 public key"))
    }
}

/// The thread that runs [`Job`]s in order, started at the first one.
#[derive(Debug)]
pub(crate) struct Worker {
    ops: Arc<GuestOps>,
    tx: Option<SyncSender<Job>>,
}

impl Worker {
    pub(crate) fn new(host: Arc<dyn Host>) -> Self {
        Self {
            ops: Arc::new(GuestOps::new(host)),
            tx: None,
        }
    }

    pub(crate) fn is_frozen(&self) -> bool {
        self.ops.is_frozen()
    }

    /// Thaws at once (tests: whatever one left frozen).
    #[cfg(test)]
    pub(crate) fn thaw_now(&self) -> Result<usize, String> {
        self.ops.freezer.thaw_all()
    }

    /// Queues `job`; its reply goes to `out`. A full queue or a worker
    /// that cannot start is answered with an error at once.
    pub(crate) fn submit(&mut self, job: Job, out: &Out) {
        let id = job_id(&job);
        let tx = match &self.tx {
            Some(tx) => tx.clone(),
            None => match self.start(out) {
                Ok(tx) => tx,
                Err(e) => {
                    reply_error(out, id, format!("start the worker thread: {e}"));
                    return;
                }
            },
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                reply_error(out, id, format!("busy: {QUEUE} requests are waiting"));
            }
            Err(TrySendError::Disconnected(job)) => {
                // The worker died (it does not, short of a panic): a new one.
                self.tx = None;
                match self.start(out) {
                    Ok(tx) => {
                        let _ = tx.try_send(job);
                    }
                    Err(e) => reply_error(out, id, format!("start the worker thread: {e}")),
                }
            }
        }
    }

    fn start(&mut self, out: &Out) -> io::Result<SyncSender<Job>> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let ops = Arc::clone(&self.ops);
        let out = Arc::clone(out);
        crate::spawn("guest-ops", move || {
            for job in rx {
                let reply = ops.run(job);
                out.send(Frame::new(reply.msg));
                ops.make_durable(&reply.then_fsync);
            }
        })?;
        self.tx = Some(tx.clone());
        Ok(tx)
    }
}

fn job_id(job: &Job) -> u64 {
    match job {
        Job::SetTime { id, .. }
        | Job::Freeze { id, .. }
        | Job::Thaw { id }
        | Job::Identity { id, .. } => *id,
    }
}

fn reply_error(out: &Out, id: u64, message: String) {
    crate::dispatch::send_error(out, Some(id), AgentErrorCode::Failed, message);
}

#[cfg(test)]
mod tests;
