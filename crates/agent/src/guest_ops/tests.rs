//! `SetTime`, `Freeze`, `Thaw` and `Identity` through the agent's real
//! frame dispatch ([`Agent::feed`]) against [`FakeHost`]: nothing here
//! changes the machine running the tests (CI runs them as root).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use banger_proto::agent::{
    AgentErrorCode, FRAME_MAGIC, Frame, GuestNet, HOST_KEY_PRIVATE_MAX, HostKeyPair, Message,
    capability, encode,
};

use super::{check_hostname, check_mac, freezable, hosts_with_name};
use crate::fake::{Call, FakeHost};
use crate::procfs::parse_mountinfo;
use crate::{Agent, Sink};

/// Tests that freeze share the log's hold (one per process): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the agent sends, waited for by id.
#[derive(Default)]
struct Replies {
    frames: Mutex<Vec<Frame>>,
    arrived: Condvar,
}

impl Sink for Replies {
    fn send(&self, frame: Frame) {
        self.frames.lock().unwrap().push(frame);
        self.arrived.notify_all();
    }
}

impl Replies {
    /// The first frame about request `id` (waits up to 10 s for it).
    fn take(&self, id: u64) -> Message {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut frames = self.frames.lock().unwrap();
        loop {
            if let Some(i) = frames.iter().position(|f| f.msg.id() == Some(id)) {
                return frames.remove(i).msg;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no reply to request {id}");
            frames = self.arrived.wait_timeout(frames, left).unwrap().0;
        }
    }
}

struct Harness {
    agent: Agent,
    replies: Arc<Replies>,
    host: Arc<FakeHost>,
    _serial: MutexGuard<'static, ()>,
}

impl Harness {
    fn new() -> Self {
        let serial = serial();
        crate::log::set_quiet(std::env::var_os("BANGER_AGENT_TEST_LOG").is_none());
        let replies = Arc::new(Replies::default());
        let host = Arc::new(FakeHost::guest());
        let agent = Agent::new(replies.clone(), host.clone());
        Self {
            agent,
            replies,
            host,
            _serial: serial,
        }
    }

    /// Sends `msg` (with `body`) through the frame decoder and dispatch,
    /// and waits for the reply about `id`.
    fn ask_with(&mut self, msg: Message, body: Vec<u8>) -> Message {
        let id = msg.id().unwrap();
        self.agent.feed(&encode(&Frame::with_body(msg, body)));
        self.replies.take(id)
    }

    fn ask(&mut self, msg: Message) -> Message {
        self.ask_with(msg, Vec::new())
    }

    /// Waits until the guest-ops worker has done all it was given, the
    /// fsyncs after a reply included (it does one request at a time): a
    /// `Freeze` it refuses before making any call.
    fn settle(&mut self) {
        let r = self.ask(Message::Freeze {
            id: 999,
            timeout_ms: 0,
        });
        refused(&r, AgentErrorCode::BadRequest);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Whatever a failed test left frozen, the next one starts thawed.
        let _ = self.agent.guest_ops_thaw_for_tests();
    }
}

const NOW_NS: u64 = 1_700_000_000_123_456_789;

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn refused(msg: &Message, code: AgentErrorCode) -> &str {
    match msg {
        Message::Error {
            code: c, message, ..
        } if *c == code => message,
        other => panic!("wanted an {code:?} error, got {other:?}"),
    }
}

fn guest_net() -> GuestNet {
    GuestNet {
        mac: "52:54:00:AB:cd:01".into(),
        address_cidr: "10.0.3.7/24".into(),
        gateway: "10.0.3.1".into(),
        dns: vec!["10.0.3.1".into(), "2001:db8::53".into()],
    }
}

fn identity(id: u64, net: Option<GuestNet>, new_host_key: bool) -> Message {
    Message::Identity {
        id,
        hostname: "fork-2".into(),
        unix_ns: NOW_NS,
        net,
        new_host_key,
        host_key: None,
    }
}

/// A key pair shaped as `ssh-keygen -t ed25519 -N '' -C ''` writes it
/// (not a real key: the agent checks the shape only).
fn key_pair() -> HostKeyPair {
    HostKeyPair {
        private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\n\
            b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n\
            QyNTUxOQAAACBXkXq1==\n\
            -----END OPENSSH PRIVATE KEY-----\n"
            .into(),
        // As ssh-keygen writes it with `-C ''`: a space at the end.
        public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFeRerU ".into(),
    }
}

/// An identity carrying the host's key pair `pair`.
fn identity_with_key(id: u64, pair: HostKeyPair) -> Message {
    Message::Identity {
        id,
        hostname: "fork-2".into(),
        unix_ns: NOW_NS,
        net: None,
        new_host_key: true,
        host_key: Some(pair),
    }
}

fn run(argv: &[&str]) -> Call {
    Call::Run(argv.iter().map(|a| (*a).to_owned()).collect())
}

#[test]
fn hello_lists_the_capabilities() {
    let h = Harness::new();
    h.agent.hello();
    let frames = h.replies.frames.lock().unwrap();
    let Message::Hello { capabilities, .. } = &frames[0].msg else {
        panic!("{frames:?}");
    };
    assert_eq!(capabilities, capability::ALL);
}

#[test]
fn set_time_steps_the_clock_and_refuses_absurd_times() {
    let mut h = Harness::new();
    let r = h.ask(Message::SetTime {
        id: 1,
        unix_ns: NOW_NS,
    });
    assert_eq!(r, Message::Done { id: 1 });
    assert_eq!(h.host.calls(), vec![Call::SetClock(NOW_NS)]);

    h.host.clear_calls();
    for (id, unix_ns) in [(2, 0), (3, 4_200_000_000 * 1_000_000_000), (4, u64::MAX)] {
        let r = h.ask(Message::SetTime { id, unix_ns });
        let m = refused(&r, AgentErrorCode::BadRequest);
        assert!(m.contains("not between 2020 and 2100"), "{m}");
    }
    assert_eq!(h.host.calls(), vec![], "nothing set");

    h.host.fail("set_clock", "Operation not permitted");
    let r = h.ask(Message::SetTime {
        id: 5,
        unix_ns: NOW_NS,
    });
    assert_eq!(
        refused(&r, AgentErrorCode::Failed),
        "set the clock: Operation not permitted"
    );
}

#[test]
fn freeze_syncs_then_freezes_innermost_first_and_thaw_undoes_it() {
    let mut h = Harness::new();
    let r = h.ask(Message::Freeze {
        id: 1,
        timeout_ms: 600_000,
    });
    assert_eq!(r, Message::Done { id: 1 });
    assert_eq!(
        h.host.calls(),
        vec![Call::Sync, Call::Freeze(p("/root")), Call::Freeze(p("/"))]
    );
    assert_eq!(h.host.frozen(), vec![p("/"), p("/root")]);
    assert!(crate::log::is_holding(), "no logging to a frozen journal");

    // An upload would block the dispatcher on the frozen disk: refused.
    let r = h.ask(Message::WriteFile {
        id: 2,
        path: "/root/f".into(),
        mode: 0o644,
    });
    assert!(
        refused(&r, AgentErrorCode::Failed).contains("frozen"),
        "{r:?}"
    );

    // Freezing again only moves the deadline.
    h.host.clear_calls();
    let r = h.ask(Message::Freeze {
        id: 3,
        timeout_ms: 600_000,
    });
    assert_eq!(r, Message::Done { id: 3 });
    assert_eq!(h.host.calls(), vec![]);

    let r = h.ask(Message::Thaw { id: 4 });
    assert_eq!(r, Message::Done { id: 4 });
    assert_eq!(
        h.host.calls(),
        vec![Call::Thaw(p("/")), Call::Thaw(p("/root"))],
        "outermost first"
    );
    assert_eq!(h.host.frozen(), Vec::<PathBuf>::new());
    assert!(!crate::log::is_holding());

    // Thawing what is not frozen (EINVAL) is fine.
    h.host.clear_calls();
    let r = h.ask(Message::Thaw { id: 5 });
    assert_eq!(r, Message::Done { id: 5 });
    assert_eq!(
        h.host.calls(),
        vec![Call::Thaw(p("/")), Call::Thaw(p("/root"))]
    );
}

#[test]
fn a_freeze_without_a_thaw_thaws_by_itself() {
    let mut h = Harness::new();
    let r = h.ask(Message::Freeze {
        id: 1,
        timeout_ms: 50,
    });
    assert_eq!(r, Message::Done { id: 1 });
    let thawed = h.host.wait_for(Duration::from_secs(10), |calls| {
        calls.contains(&Call::Thaw(p("/"))) && calls.contains(&Call::Thaw(p("/root")))
    });
    assert!(thawed, "no auto-thaw: {:?}", h.host.calls());
    assert_eq!(h.host.frozen(), Vec::<PathBuf>::new());

    // The agent knows: a new freeze freezes again.
    h.host.clear_calls();
    let r = h.ask(Message::Freeze {
        id: 2,
        timeout_ms: 600_000,
    });
    assert_eq!(r, Message::Done { id: 2 });
    assert_eq!(
        h.host.calls(),
        vec![Call::Sync, Call::Freeze(p("/root")), Call::Freeze(p("/"))]
    );
    assert_eq!(h.ask(Message::Thaw { id: 3 }), Message::Done { id: 3 });
}

#[test]
fn a_failed_freeze_leaves_nothing_frozen() {
    let mut h = Harness::new();
    h.host.fail("freeze:/", "Input/output error");
    let r = h.ask(Message::Freeze {
        id: 1,
        timeout_ms: 1000,
    });
    assert_eq!(
        refused(&r, AgentErrorCode::Failed),
        "freeze /: Input/output error"
    );
    assert_eq!(
        h.host.calls(),
        vec![
            Call::Sync,
            Call::Freeze(p("/root")),
            Call::Freeze(p("/")),
            Call::Thaw(p("/root"))
        ]
    );
    assert_eq!(h.host.frozen(), Vec::<PathBuf>::new());
    assert!(!crate::log::is_holding());
}

#[test]
fn a_filesystem_frozen_already_is_adopted() {
    let mut h = Harness::new();
    // As if an agent that froze it had restarted since.
    crate::host::Host::freeze(&*h.host, &p("/root")).unwrap();
    h.host.clear_calls();
    let r = h.ask(Message::Freeze {
        id: 1,
        timeout_ms: 600_000,
    });
    assert_eq!(r, Message::Done { id: 1 });
    assert_eq!(h.host.frozen(), vec![p("/"), p("/root")]);
    assert_eq!(h.ask(Message::Thaw { id: 2 }), Message::Done { id: 2 });
    assert_eq!(h.host.frozen(), Vec::<PathBuf>::new());
}

#[test]
fn freeze_timeouts_out_of_range_are_refused() {
    let mut h = Harness::new();
    for (id, timeout_ms) in [(1, 0), (2, 600_001), (3, u32::MAX)] {
        let r = h.ask(Message::Freeze { id, timeout_ms });
        refused(&r, AgentErrorCode::BadRequest);
    }
    assert_eq!(h.host.calls(), vec![]);
}

#[test]
fn freezable_filesystems_are_block_backed_once_each_innermost_first() {
    let mountinfo = "\
21 1 254:0 / / rw,relatime - ext4 /dev/vda rw
22 21 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw
25 21 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw
40 21 254:16 / /root rw,relatime shared:9 - ext4 /dev/vdb rw
41 40 254:32 / /root/data\\040disk rw - xfs /dev/vdc rw
42 21 254:16 /srv /srv rw - ext4 /dev/vdb rw
43 21 254:48 / /mnt rw - ext4 /dev/vdd rw
44 21 0:40 / /mnt rw - tmpfs tmpfs rw
45 21 0:41 / /vol rw - btrfs /dev/vde rw
46 21 7:0 / /iso ro - iso9660 /dev/loop0 ro
";
    assert_eq!(
        freezable(&parse_mountinfo(mountinfo)),
        vec![p("/root/data disk"), p("/root"), p("/")],
        "/srv is /dev/vdb again, /mnt's disk is under a tmpfs, btrfs has no \
         block major (not frozen), an iso cannot be"
    );
}

#[test]
fn identity_applies_everything_in_order() {
    let mut h = Harness::new();
    h.host.put("/etc/ssh/ssh_host_rsa_key", "PRIVATE rsa\n");
    h.host
        .put("/etc/ssh/ssh_host_rsa_key.pub", "ssh-rsa AAAA\n");
    let random: Vec<u8> = (0..64).collect();
    let r = h.ask_with(identity(1, Some(guest_net()), true), random.clone());
    assert_eq!(
        r,
        Message::IdentityDone {
            id: 1,
            host_key: "ssh-ed25519 AAAAnew1".into()
        }
    );
    let hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\tfork-2\n";
    let write = |path: &str, data: &str| Call::Write {
        path: p(path),
        data: data.as_bytes().to_vec(),
        mode: 0o644,
    };
    h.settle();
    assert_eq!(
        h.host.calls(),
        vec![
            // Nothing frozen: no thaw.
            Call::SetClock(NOW_NS),
            Call::AddRandomness(random),
            Call::SetHostname("fork-2".into()),
            write("/etc/hostname", "fork-2\n"),
            write("/etc/hosts", hosts),
            Call::SetNic(
                "eth0".into(),
                "52:54:00:ab:cd:01".into(),
                "10.0.3.7/24".into(),
                Some("10.0.3.1".parse().unwrap())
            ),
            write(
                "/etc/resolv.conf",
                "nameserver 10.0.3.1\nnameserver 2001:db8::53\n"
            ),
            Call::Remove(p("/etc/ssh/.banger-new-host-key")),
            Call::Remove(p("/etc/ssh/.banger-new-host-key.pub")),
            run(&[
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "",
                "-f",
                "/etc/ssh/.banger-new-host-key"
            ]),
            Call::Remove(p("/etc/ssh/ssh_host_rsa_key")),
            Call::Remove(p("/etc/ssh/ssh_host_rsa_key.pub")),
            Call::Rename(
                p("/etc/ssh/.banger-new-host-key"),
                p("/etc/ssh/ssh_host_ed25519_key")
            ),
            Call::Rename(
                p("/etc/ssh/.banger-new-host-key.pub"),
                p("/etc/ssh/ssh_host_ed25519_key.pub")
            ),
            // Only what changed reaches the disk, no global sync().
            Call::Hangup(321),
            // After the reply, once each.
            Call::Fsync(p("/etc/hostname")),
            Call::Fsync(p("/etc/hosts")),
            Call::Fsync(p("/etc/resolv.conf")),
            Call::Fsync(p("/etc/ssh/ssh_host_ed25519_key")),
            Call::Fsync(p("/etc/ssh/ssh_host_ed25519_key.pub")),
            Call::Fsync(p("/etc")),
            Call::Fsync(p("/etc/ssh")),
        ]
    );
    assert_eq!(h.host.file("/etc/hosts").unwrap(), hosts);
    assert_eq!(
        h.host.file("/etc/ssh/ssh_host_ed25519_key").unwrap(),
        "PRIVATE 1\n"
    );
    assert_eq!(h.host.file("/etc/ssh/ssh_host_rsa_key"), None);
    assert_eq!(h.host.file("/etc/ssh/.banger-new-host-key.pub"), None);
}

#[test]
fn identity_without_net_or_key_keeps_them_and_a_frozen_guest_is_thawed() {
    let mut h = Harness::new();
    // The snapshot was taken frozen.
    assert_eq!(
        h.ask(Message::Freeze {
            id: 1,
            timeout_ms: 600_000
        }),
        Message::Done { id: 1 }
    );
    // An image without a 127.0.1.1 line keeps its hosts file.
    h.host.put("/etc/hosts", "127.0.0.1 localhost\n");
    h.host.clear_calls();
    let r = h.ask_with(identity(2, None, false), vec![1; 32]);
    assert_eq!(
        r,
        Message::IdentityDone {
            id: 2,
            host_key: "ssh-ed25519 AAAAold".into()
        }
    );
    h.settle();
    assert_eq!(h.host.frozen(), Vec::<PathBuf>::new());
    assert!(!crate::log::is_holding());
    assert_eq!(
        h.host.calls(),
        vec![
            Call::Thaw(p("/")),
            Call::Thaw(p("/root")),
            Call::SetClock(NOW_NS),
            Call::AddRandomness(vec![1; 32]),
            Call::SetHostname("fork-2".into()),
            Call::Write {
                path: p("/etc/hostname"),
                data: b"fork-2\n".to_vec(),
                mode: 0o644
            },
            Call::Fsync(p("/etc/hostname")),
            Call::Fsync(p("/etc")),
        ]
    );
}

#[test]
fn the_hosts_key_pair_is_installed_with_its_modes_and_fsynced_not_synced() {
    let mut h = Harness::new();
    h.host.put("/etc/ssh/ssh_host_rsa_key", "PRIVATE rsa\n");
    h.host
        .put("/etc/ssh/ssh_host_rsa_key.pub", "ssh-rsa AAAA\n");
    // Left over by an identity that died half-way.
    h.host
        .put("/etc/ssh/.banger-new-host-key", "PRIVATE stale\n");
    let pair = key_pair();
    let r = h.ask_with(identity_with_key(1, pair.clone()), vec![0; 32]);
    assert_eq!(
        r,
        Message::IdentityDone {
            id: 1,
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFeRerU".into()
        }
    );
    h.settle();
    let calls = h.host.calls();
    let from = calls
        .iter()
        .position(|c| *c == Call::Remove(p("/etc/ssh/.banger-new-host-key")))
        .unwrap();
    assert_eq!(
        calls[from..],
        [
            Call::Remove(p("/etc/ssh/.banger-new-host-key")),
            Call::Remove(p("/etc/ssh/.banger-new-host-key.pub")),
            Call::Create {
                path: p("/etc/ssh/.banger-new-host-key"),
                data: pair.private_openssh.clone().into_bytes(),
                mode: 0o600,
            },
            Call::Create {
                path: p("/etc/ssh/.banger-new-host-key.pub"),
                data: b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFeRerU\n".to_vec(),
                mode: 0o644,
            },
            Call::Remove(p("/etc/ssh/ssh_host_rsa_key")),
            Call::Remove(p("/etc/ssh/ssh_host_rsa_key.pub")),
            Call::Rename(
                p("/etc/ssh/.banger-new-host-key"),
                p("/etc/ssh/ssh_host_ed25519_key")
            ),
            Call::Rename(
                p("/etc/ssh/.banger-new-host-key.pub"),
                p("/etc/ssh/ssh_host_ed25519_key.pub")
            ),
            Call::Hangup(321),
            // After the reply.
            Call::Fsync(p("/etc/hostname")),
            Call::Fsync(p("/etc/hosts")),
            Call::Fsync(p("/etc/ssh/ssh_host_ed25519_key")),
            Call::Fsync(p("/etc/ssh/ssh_host_ed25519_key.pub")),
            Call::Fsync(p("/etc")),
            Call::Fsync(p("/etc/ssh")),
        ]
    );
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Run(_)) || *c == Call::Sync),
        "no ssh-keygen and no global sync: {calls:?}"
    );
    assert_eq!(
        h.host.file("/etc/ssh/ssh_host_ed25519_key").unwrap(),
        pair.private_openssh
    );
    assert_eq!(
        h.host.file("/etc/ssh/ssh_host_ed25519_key.pub").unwrap(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFeRerU\n"
    );
    assert_eq!(h.host.file("/etc/ssh/ssh_host_rsa_key"), None);
    assert_eq!(h.host.file("/etc/ssh/.banger-new-host-key"), None);
    assert_eq!(h.host.file("/etc/ssh/.banger-new-host-key.pub"), None);
}

#[test]
fn a_bad_key_pair_is_refused_before_anything_changes() {
    let mut h = Harness::new();
    let good = key_pair();
    let with = |f: &dyn Fn(&mut HostKeyPair)| {
        let mut pair = good.clone();
        f(&mut pair);
        identity_with_key(1, pair)
    };
    let mut without_new_key = identity_with_key(1, good.clone());
    if let Message::Identity { new_host_key, .. } = &mut without_new_key {
        *new_host_key = false;
    }
    let cases: Vec<(Message, &str)> = vec![
        (without_new_key, "without new_host_key"),
        (
            with(&|k| {
                k.private_openssh = format!(
                    "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
                    "A".repeat(HOST_KEY_PRIVATE_MAX)
                );
            }),
            "at most 1024",
        ),
        (
            with(&|k| k.private_openssh = "PRIVATE\n".into()),
            "not an OpenSSH private key",
        ),
        (
            with(&|k| {
                k.private_openssh = k.private_openssh.replace("OPENSSH PRIVATE", "RSA PRIVATE");
            }),
            "not an OpenSSH private key",
        ),
        (
            with(&|k| k.public = "ssh-rsa AAAAB3NzaC1yc2E".into()),
            "ssh-ed25519 AAAA",
        ),
        (
            with(&|k| k.public = "ssh-ed25519 AAAAC3Nz\nssh-ed25519 AAAAC3Nz".into()),
            "ssh-ed25519 AAAA",
        ),
        (
            with(&|k| k.public = format!("ssh-ed25519 AAAA{}", "A".repeat(600))),
            "at most 512",
        ),
    ];
    for (msg, wanted) in cases {
        let r = h.ask_with(msg, vec![0; 32]);
        let m = refused(&r, AgentErrorCode::BadRequest);
        assert!(m.contains(wanted), "{wanted}: {m}");
    }
    assert_eq!(h.host.calls(), vec![], "bad input changes nothing");
    assert_eq!(
        h.host.file("/etc/ssh/ssh_host_ed25519_key").unwrap(),
        "PRIVATE old\n"
    );
}

#[test]
fn a_failed_key_pair_write_is_named_and_replaces_nothing() {
    let mut h = Harness::new();
    h.host
        .fail("create:/etc/ssh/.banger-new-host-key.pub", "No space left");
    let r = h.ask_with(identity_with_key(1, key_pair()), vec![0; 32]);
    assert_eq!(
        refused(&r, AgentErrorCode::Failed),
        "new host key: create /etc/ssh/.banger-new-host-key.pub: No space left"
    );
    assert_eq!(
        h.host.file("/etc/ssh/ssh_host_ed25519_key.pub").unwrap(),
        "ssh-ed25519 AAAAold \n",
        "the old key stays"
    );
    assert!(!h.host.calls().iter().any(|c| matches!(c, Call::Rename(..))));
}

#[test]
fn sshd_is_signalled_only_when_it_runs_under_its_pid() {
    let mut h = Harness::new();
    // A stale pid file naming another process: left alone.
    h.host.put("/proc/321/comm", "bash\n");
    let r = h.ask_with(identity(1, None, true), vec![0; 32]);
    assert!(matches!(r, Message::IdentityDone { .. }), "{r:?}");
    assert!(!h.host.calls().iter().any(|c| matches!(c, Call::Hangup(_))));
    // No sshd running: nothing to signal either.
    h.host.unput("/run/sshd.pid");
    let r = h.ask_with(identity(2, None, true), vec![0; 32]);
    assert_eq!(
        r,
        Message::IdentityDone {
            id: 2,
            host_key: "ssh-ed25519 AAAAnew2".into()
        }
    );
    assert!(!h.host.calls().iter().any(|c| matches!(c, Call::Hangup(_))));
}

#[test]
fn an_sshd_that_reads_keys_per_connection_is_not_restarted() {
    // OpenSSH before 9.8 (no sshd-session) reads the host keys for every
    // connection: a SIGHUP would only open a gap with no listener.
    let mut h = Harness::new();
    h.host.unput("/usr/lib/openssh/sshd-session");
    let r = h.ask_with(identity(1, None, true), vec![0; 32]);
    assert!(matches!(r, Message::IdentityDone { .. }), "{r:?}");
    assert!(!h.host.calls().iter().any(|c| matches!(c, Call::Hangup(_))));
    assert!(h.host.calls().iter().any(|c| matches!(c, Call::Rename(..))));
}

#[test]
fn bad_identity_input_is_refused_before_anything_changes() {
    let mut h = Harness::new();
    let with_net = |f: &dyn Fn(&mut GuestNet)| {
        let mut n = guest_net();
        f(&mut n);
        identity(1, Some(n), true)
    };
    let with_name = |name: &str| Message::Identity {
        id: 1,
        hostname: name.into(),
        unix_ns: NOW_NS,
        net: None,
        new_host_key: false,
        host_key: None,
    };
    let long = "a".repeat(64);
    let mut cases: Vec<(Message, Vec<u8>, &str)> = vec![
        (identity(1, None, false), vec![0; 31], "bytes of randomness"),
        (
            identity(1, None, false),
            vec![0; 513],
            "bytes of randomness",
        ),
        (identity(1, None, false), Vec::new(), "bytes of randomness"),
        (
            Message::Identity {
                id: 1,
                hostname: "ok".into(),
                unix_ns: 5,
                net: None,
                new_host_key: false,
                host_key: None,
            },
            vec![0; 32],
            "not between 2020 and 2100",
        ),
    ];
    for name in [
        "",
        "-a",
        "a-",
        "a_b",
        "a..b",
        ".a",
        "a b",
        "x;rm -rf /",
        "a\nb",
        long.as_str(),
        "ünï",
    ] {
        cases.push((with_name(name), vec![0; 32], "bad hostname"));
    }
    for mac in [
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "zz:54:00:12:34:56",
        "52-54-00-12-34-56",
        "5:54:00:12:34:56",
        "",
    ] {
        cases.push((
            with_net(&|n| n.mac = mac.into()),
            vec![0; 32],
            "bad MAC address",
        ));
    }
    for cidr in [
        "10.0.2.15",
        "10.0.2.15/33",
        "10.0.2.15/0",
        "fd00::1/64",
        "255.255.255.255/24",
        "127.0.0.1/8",
        "10.0.2.15/24 dev lo",
    ] {
        cases.push((
            with_net(&|n| n.address_cidr = cidr.into()),
            vec![0; 32],
            "bad address",
        ));
    }
    for gw in ["x", "0.0.0.0", "10.0.3.7", "224.0.0.1", ""] {
        cases.push((
            with_net(&|n| n.gateway = gw.into()),
            vec![0; 32],
            "bad gateway",
        ));
    }
    cases.push((
        with_net(&|n| n.dns = vec!["1.1.1.1".into(); 4]),
        vec![0; 32],
        "at most 3",
    ));
    cases.push((
        with_net(&|n| n.dns = vec!["dns.example".into()]),
        vec![0; 32],
        "bad name server",
    ));
    for (msg, body, wanted) in cases {
        let shown = format!("{msg:?}");
        let r = h.ask_with(msg, body);
        let m = refused(&r, AgentErrorCode::BadRequest);
        assert!(m.contains(wanted), "{shown}: {m}");
    }
    assert_eq!(h.host.calls(), vec![], "bad input changes nothing");
}

#[test]
fn a_failed_identity_step_is_named() {
    for (key, wanted) in [
        ("set_clock", "set the clock: boom"),
        ("add_randomness", "mix in randomness: boom"),
        ("set_hostname", "set the hostname: boom"),
        ("write:/etc/hosts", "write /etc/hosts: boom"),
        ("set_nic:eth0", "configure eth0: boom"),
        ("write:/etc/resolv.conf", "write /etc/resolv.conf: boom"),
        ("run:ssh-keygen", "new host key: ssh-keygen: boom"),
        ("hangup", "signal sshd: SIGHUP 321: boom"),
    ] {
        let mut h = Harness::new();
        h.host.fail(key, "boom");
        let r = h.ask_with(identity(1, Some(guest_net()), true), vec![0; 32]);
        assert_eq!(refused(&r, AgentErrorCode::Failed), wanted);
    }
    // An fsync fails after the reply: the identity stands, the rest is
    // still made durable.
    let mut h = Harness::new();
    h.host.fail("fsync:/etc/hostname", "boom");
    let r = h.ask_with(identity(1, None, false), vec![0; 32]);
    assert!(matches!(r, Message::IdentityDone { .. }), "{r:?}");
    h.settle();
    assert!(h.host.calls().contains(&Call::Fsync(p("/etc"))));
}

#[test]
fn a_guest_without_an_ssh_server_keeps_no_host_key() {
    let mut h = Harness::new();
    h.host.unput("/etc/ssh/ssh_host_ed25519_key.pub");
    let r = h.ask_with(identity(1, Some(guest_net()), false), vec![0; 32]);
    assert_eq!(
        r,
        Message::IdentityDone {
            id: 1,
            host_key: String::new()
        }
    );
    // Asked for a new key it still needs one (or ssh-keygen) to answer.
    drop(h);
    let mut h = Harness::new();
    h.host.unput("/etc/ssh/ssh_host_ed25519_key.pub");
    h.host.fail("run:ssh-keygen", "not found");
    let r = h.ask_with(identity(2, None, true), vec![0; 32]);
    assert!(matches!(r, Message::Error { .. }), "{r:?}");
}

#[test]
fn an_unknown_request_type_is_answered_unsupported_by_id() {
    let mut h = Harness::new();
    let header = br#"{"type":"teleport","id":77,"to":"mars"}"#;
    let mut frame = FRAME_MAGIC.to_vec();
    frame.extend_from_slice(&u32::try_from(header.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&0u32.to_be_bytes());
    frame.extend_from_slice(header);
    h.agent.feed(&frame);
    let r = h.replies.take(77);
    let m = refused(&r, AgentErrorCode::Unsupported);
    assert!(m.contains("\"teleport\""), "{m}");
    // A reply sent to the agent is not a request.
    let r = h.ask(Message::IdentityDone {
        id: 78,
        host_key: String::new(),
    });
    assert_eq!(
        refused(&r, AgentErrorCode::BadRequest),
        "identity_done is not a request"
    );
}

#[test]
fn hostnames_macs_and_hosts_files() {
    for ok in ["a", "fork-1", "web.internal", "A1-b2", &"a".repeat(63)] {
        assert!(check_hostname(ok).is_ok(), "{ok}");
    }
    assert_eq!(check_mac("52:54:00:AB:CD:EF").unwrap(), "52:54:00:ab:cd:ef");
    assert!(check_mac("53:54:00:ab:cd:ef").is_err(), "multicast bit");
    assert_eq!(
        hosts_with_name("127.0.0.1 localhost\n127.0.1.1 old old.local\n# end", "new"),
        Some("127.0.0.1 localhost\n127.0.1.1\tnew\n# end".into())
    );
    assert_eq!(hosts_with_name("127.0.0.1 localhost\n", "new"), None);
    assert_eq!(hosts_with_name("127.0.1.10 x\n", "new"), None);
}
