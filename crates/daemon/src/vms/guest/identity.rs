//! The guest's side of pause/resume, snapshots and restores, through its
//! agent (docs/agent.md, "Snapshots and restores"): set the clock after
//! a resume, freeze and thaw the filesystems around a snapshot, and give
//! a VM restored from a snapshot its own identity (so forks of one
//! snapshot differ: hostname, network, random state, SSH host key).
//!
//! Each call is bounded by its own timeout and needs the agent to have
//! announced the request (`capabilities` in its `Hello`): a VM whose
//! image has an older agent gets [`AgentError::TooOld`], naming the VM
//! and the step, at once. None takes an `OpCtx`: each is short and
//! bounded, and [`Guest::thaw`] must work in a rollback whose cancel
//! token has already fired.
//!
//! A new SSH host key is made here, with the host's `ssh-keygen`, and
//! sent in the request when the agent takes one
//! ([`capability::IDENTITY_HOST_KEY`]): under an emulated CPU the guest's
//! own `ssh-keygen` costs most of a fork's time.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banger_proto::agent::{GuestNet, HostKeyPair, Message, capability};
use banger_store::VmRecord;
use rand::RngCore;

use super::super::Handles;
use super::{Guest, GuestError};
use crate::agent::{AgentConn, AgentError};

/// How long connecting to the agent may take (a resumed or restored
/// guest answers at once: it is not booting).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `SetTime` and `Thaw` may take.
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Freeze` may take: `sync()` first writes back what is dirty.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Identity` may take: `ip` (and, in an older agent,
/// `ssh-keygen`) run, under TCG too.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of host randomness an identity carries (the agent takes
/// `IDENTITY_RANDOM_MIN..=IDENTITY_RANDOM_MAX`).
const IDENTITY_RANDOM_BYTES: usize = 64;
/// The agent's bounds on a freeze's self-thaw deadline.
const MIN_THAW_AFTER: Duration = Duration::from_millis(1);
const MAX_THAW_AFTER: Duration = Duration::from_millis(600_000);

/// What a VM restored from a snapshot becomes (see [`Guest::apply_identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The guest's new hostname (the agent accepts letters, digits, `-`
    /// and `.`, 1-63 characters: a VM name fits).
    pub hostname: String,
    /// `eth0`'s new MAC, address, gateway and name servers; `None` keeps
    /// the network as the snapshot had it.
    pub net: Option<GuestNet>,
    /// Whether to replace the SSH host key by a new one (forks of one
    /// snapshot should not share it).
    pub new_host_key: bool,
}

/// Why a new host key could not be made on the host, or was not the one
/// the guest installed.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("make a private directory in {}", .0.display())]
    TempDir(PathBuf, #[source] io::Error),
    #[error("run ssh-keygen")]
    Spawn(#[source] io::Error),
    #[error("ssh-keygen failed ({status}): {stderr}")]
    Keygen { status: String, stderr: String },
    #[error("read {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
    #[error("ssh-keygen made a key pair the agent would refuse: {0}")]
    Malformed(String),
    #[error("the key generation task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("the guest reports the host key {got:?}, not the one sent ({sent:?})")]
    Mismatch { sent: String, got: String },
}

/// A step of the work around snapshots, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStep {
    SetTime,
    Freeze,
    Thaw,
    Identity,
}

impl std::fmt::Display for GuestStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SetTime => "set the guest clock",
            Self::Freeze => "freeze the guest filesystems",
            Self::Thaw => "thaw the guest filesystems",
            Self::Identity => "apply the new identity",
        })
    }
}

/// Nanoseconds since the epoch, now.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        // A host clock before 1970: the agent refuses the time.
        .unwrap_or(0)
}

impl Guest {
    /// Steps the guest's clock to the host's (after `vm resume`: a
    /// paused guest's clock is behind by the pause).
    pub async fn set_time(&self, vm: &VmRecord, handles: &Handles) -> Result<(), GuestError> {
        let step = GuestStep::SetTime;
        let conn = self
            .step_conn(vm, handles, step, capability::SET_TIME)
            .await?;
        let unix_ns = now_ns();
        expect_done(&conn, |id| Message::SetTime { id, unix_ns }, QUICK_TIMEOUT)
            .await
            .map_err(|e| GuestError::step(vm, step, e))
    }

    /// `sync()`s the guest and freezes its filesystems (root and work
    /// disk) so a snapshot of the disks is consistent. The agent thaws
    /// them by itself after `thaw_after` (clamped to 1 ms..=10 min) if
    /// no [`Guest::thaw`] comes: a daemon that dies mid-snapshot never
    /// leaves the guest frozen. Freezing a frozen guest only moves that
    /// deadline.
    ///
    /// On an error (a timeout in particular) the guest may still end up
    /// frozen: call [`Guest::thaw`], which is harmless when nothing is.
    pub async fn freeze(
        &self,
        vm: &VmRecord,
        handles: &Handles,
        thaw_after: Duration,
    ) -> Result<(), GuestError> {
        let step = GuestStep::Freeze;
        let conn = self
            .step_conn(vm, handles, step, capability::FREEZE)
            .await?;
        let timeout_ms =
            u32::try_from(thaw_after.clamp(MIN_THAW_AFTER, MAX_THAW_AFTER).as_millis())
                .unwrap_or(u32::MAX);
        expect_done(
            &conn,
            |id| Message::Freeze { id, timeout_ms },
            FREEZE_TIMEOUT,
        )
        .await
        .map_err(|e| GuestError::step(vm, step, e))
    }

    /// Thaws the guest's filesystems (any that is not frozen is fine).
    pub async fn thaw(&self, vm: &VmRecord, handles: &Handles) -> Result<(), GuestError> {
        let step = GuestStep::Thaw;
        let conn = self
            .step_conn(vm, handles, step, capability::FREEZE)
            .await?;
        expect_done(&conn, |id| Message::Thaw { id }, QUICK_TIMEOUT)
            .await
            .map_err(|e| GuestError::step(vm, step, e))
    }

    /// Makes a VM just restored from a snapshot its own: the agent thaws
    /// its filesystems (the snapshot may have been taken frozen), steps
    /// its clock to the host's, mixes fresh host randomness into its
    /// kernel's random pool (and reseeds it), sets the hostname, with
    /// `identity.net` gives `eth0` the new MAC and address, and with
    /// `identity.new_host_key` installs a new SSH host key that the
    /// running sshd uses from then on (open sessions stay): one made here
    /// when the agent takes it (the guest must then report that very
    /// key), else one the guest makes.
    ///
    /// Returns the guest's SSH host public key line (`ssh-ed25519 …`):
    /// the new one, or the one it kept. Bad input (hostname, MAC,
    /// address) is refused by the agent before it changes anything; a
    /// failed step is named in the error.
    pub async fn apply_identity(
        &self,
        vm: &VmRecord,
        handles: &Handles,
        identity: &Identity,
    ) -> Result<String, GuestError> {
        let step = GuestStep::Identity;
        let conn = self
            .step_conn(vm, handles, step, capability::IDENTITY)
            .await?;
        let mut random = vec![0u8; IDENTITY_RANDOM_BYTES];
        // ThreadRng: a CSPRNG seeded from the operating system.
        rand::rng().fill_bytes(&mut random);
        let unix_ns = now_ns();
        let Identity {
            hostname,
            net,
            new_host_key,
        } = identity.clone();
        // An agent without the capability would ignore the pair and make
        // a key of its own: it gets `new_host_key` alone.
        let host_key = if new_host_key && conn.supports(capability::IDENTITY_HOST_KEY) {
            let pair = tokio::task::spawn_blocking(make_host_key)
                .await
                .map_err(HostKeyError::Task)
                .and_then(|made| made)
                .map_err(|source| GuestError::HostKey {
                    vm: vm.name.clone(),
                    source,
                })?;
            Some(pair)
        } else {
            None
        };
        let sent = host_key.as_ref().map(|p| p.public.clone());
        let frame = conn
            .call_with_body(
                |id| Message::Identity {
                    id,
                    hostname,
                    unix_ns,
                    net,
                    new_host_key,
                    host_key,
                },
                random,
                IDENTITY_TIMEOUT,
            )
            .await
            .map_err(|e| GuestError::step(vm, step, e))?;
        match frame.msg {
            Message::IdentityDone { host_key, .. } => {
                if let Some(sent) = sent.as_ref().filter(|s| host_key.trim() != s.as_str()) {
                    return Err(GuestError::HostKey {
                        vm: vm.name.clone(),
                        source: HostKeyError::Mismatch {
                            sent: sent.clone(),
                            got: host_key,
                        },
                    });
                }
                tracing::info!(
                    vm = %vm.name,
                    new_host_key = identity.new_host_key,
                    host_made_key = sent.is_some(),
                    "guest identity applied"
                );
                Ok(host_key)
            }
            other => Err(GuestError::step(
                vm,
                step,
                AgentError::Unexpected(format!("{other:?}")),
            )),
        }
    }

    /// The VM's agent connection (the open one, or a new one: a restored
    /// VM runs in a new VMM process), if the agent does `capability`.
    async fn step_conn(
        &self,
        vm: &VmRecord,
        handles: &Handles,
        step: GuestStep,
        capability: &str,
    ) -> Result<Arc<AgentConn>, GuestError> {
        if handles.agent.is_none() {
            return Err(GuestError::NoAgent {
                vm: vm.name.clone(),
            });
        }
        let conn = self
            .open_agent(&vm.id, CONNECT_TIMEOUT)
            .await
            .map_err(|e| GuestError::step(vm, step, e))?;
        let request = match step {
            GuestStep::SetTime => "set_time",
            GuestStep::Freeze => "freeze",
            GuestStep::Thaw => "thaw",
            GuestStep::Identity => "identity",
        };
        conn.require(capability, request)
            .map_err(|e| GuestError::step(vm, step, e))?;
        Ok(conn)
    }
}

/// A new ed25519 SSH host key pair, made by the host's `ssh-keygen` (as
/// the image's first-boot unit makes one: no passphrase, no comment) in a
/// private directory under the temporary directory, removed right after.
/// Blocking: run it off the runtime.
fn make_host_key() -> Result<HostKeyPair, HostKeyError> {
    make_host_key_in(&std::env::temp_dir())
}

fn make_host_key_in(parent: &Path) -> Result<HostKeyPair, HostKeyError> {
    let dir = PrivateDir::new(parent)?;
    let key = dir.path.join("key");
    let public_path = dir.path.join("key.pub");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(HostKeyError::Spawn)?;
    if !out.status.success() {
        return Err(HostKeyError::Keygen {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| HostKeyError::Read(p.into(), e));
    let pair = HostKeyPair {
        private_openssh: read(&key)?,
        public: read(&public_path)?.trim().to_owned(),
    };
    drop(dir);
    pair.check().map_err(HostKeyError::Malformed)?;
    Ok(pair)
}

/// A directory only this user can enter, removed with what it holds
/// when dropped.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn new(parent: &Path) -> Result<Self, HostKeyError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut attempts = 0;
        loop {
            let path = parent.join(format!("banger-hostkey-{:016x}", rand::rng().next_u64()));
            // mkdir() makes it or fails: never one someone else made.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(e) => return Err(HostKeyError::TempDir(parent.to_owned(), e)),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the host key's temporary directory");
        }
    }
}

/// A request answered with `Done`.
async fn expect_done(
    conn: &AgentConn,
    make: impl FnOnce(u64) -> Message,
    timeout: Duration,
) -> Result<(), AgentError> {
    let frame = conn.call(make, timeout).await?;
    match frame.msg {
        Message::Done { .. } => Ok(()),
        other => Err(AgentError::Unexpected(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use banger_proto::agent::{
        AGENT_PROTOCOL_VERSION, AgentErrorCode, Frame, GuestNet, Message, capability,
    };
    use banger_store::VmState;
    use tokio::net::UnixListener;

    use super::{GuestStep, Identity};
    use crate::agent::AgentError;
    use crate::error::chain;
    use crate::testing::{FakeVmm, handles, seed, test_state_with};
    use crate::vms::guest::GuestError;
    use crate::vms::{Handles, vm_dir};

    /// A "running" VM `dev` whose agent socket has a fake agent listing
    /// `caps`; the frames it got.
    async fn running(
        tmp: &std::path::Path,
        caps: &[&str],
    ) -> (
        Arc<crate::DaemonState>,
        banger_store::VmRecord,
        Handles,
        Arc<Mutex<Vec<Frame>>>,
    ) {
        let state = test_state_with(tmp, Arc::new(FakeVmm::default()));
        let vm = seed(&state, "dev", VmState::Running);
        let dir = vm_dir(&state.vms, &vm.id);
        let listener = UnixListener::bind(state.guest.agent_socket(&vm.id)).unwrap();
        let seen: Arc<Mutex<Vec<Frame>>> = Arc::default();
        tokio::spawn(crate::agent::tests::fake_agent_with(
            listener,
            AGENT_PROTOCOL_VERSION,
            caps.iter().map(|c| (*c).to_owned()).collect(),
            Arc::clone(&seen),
        ));
        let mut h = handles(4_000_002, &dir);
        h.agent = Some("virtio-serial".into());
        (state, vm, h, seen)
    }

    fn requests(seen: &Mutex<Vec<Frame>>) -> Vec<Frame> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|f| !matches!(f.msg, Message::Hello { .. }))
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn clock_freeze_thaw_and_identity_reach_the_agent() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, vm, h, seen) = running(tmp.path(), capability::ALL).await;
        let before = super::now_ns();
        state.guest.set_time(&vm, &h).await.unwrap();
        state
            .guest
            .freeze(&vm, &h, Duration::from_secs(3600))
            .await
            .unwrap();
        state.guest.thaw(&vm, &h).await.unwrap();
        let net = GuestNet {
            mac: "52:54:00:00:00:02".into(),
            address_cidr: "10.0.2.15/24".into(),
            gateway: "10.0.2.2".into(),
            dns: vec!["10.0.2.3".into()],
        };
        let key = state
            .guest
            .apply_identity(
                &vm,
                &h,
                &Identity {
                    hostname: "fork-1".into(),
                    net: Some(net.clone()),
                    new_host_key: true,
                },
            )
            .await
            .unwrap();

        let got = requests(&seen);
        assert_eq!(got.len(), 4, "{got:?}");
        match &got[0].msg {
            Message::SetTime { unix_ns, .. } => assert!(*unix_ns >= before, "{unix_ns}"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(
                got[1].msg,
                Message::Freeze {
                    timeout_ms: 600_000,
                    ..
                }
            ),
            "clamped to the agent's limit: {:?}",
            got[1].msg
        );
        assert!(matches!(got[2].msg, Message::Thaw { .. }));
        match &got[3].msg {
            Message::Identity {
                hostname,
                net: Some(n),
                new_host_key: true,
                unix_ns,
                host_key: Some(pair),
                ..
            } => {
                assert_eq!(hostname, "fork-1");
                assert_eq!(n, &net);
                assert!(*unix_ns >= before);
                // The host made the key; the guest's answer is its line.
                pair.check().unwrap();
                assert_eq!(key, pair.public);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(got[3].body.len(), 64);
        assert!(got[3].body.iter().any(|b| *b != 0), "random, not zeros");
    }

    fn new_key(hostname: &str) -> Identity {
        Identity {
            hostname: hostname.into(),
            net: None,
            new_host_key: true,
        }
    }

    fn sent_key_pair(seen: &Mutex<Vec<Frame>>) -> Option<banger_proto::agent::HostKeyPair> {
        match requests(seen).pop().map(|f| f.msg) {
            Some(Message::Identity { host_key, .. }) => host_key,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_agent_without_the_host_key_capability_makes_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let caps = [
            capability::SET_TIME,
            capability::FREEZE,
            capability::IDENTITY,
        ];
        let (state, vm, h, seen) = running(tmp.path(), &caps).await;
        let key = state
            .guest
            .apply_identity(&vm, &h, &new_key("fork-1"))
            .await
            .unwrap();
        assert_eq!(key, "ssh-ed25519 AAAA64", "the agent's own key");
        assert!(
            matches!(
                requests(&seen)[0].msg,
                Message::Identity {
                    new_host_key: true,
                    host_key: None,
                    ..
                }
            ),
            "{:?}",
            requests(&seen)
        );
    }

    #[tokio::test]
    async fn no_key_pair_is_made_when_the_key_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, vm, h, seen) = running(tmp.path(), capability::ALL).await;
        let same = Identity {
            new_host_key: false,
            ..new_key("fork-1")
        };
        state.guest.apply_identity(&vm, &h, &same).await.unwrap();
        assert_eq!(sent_key_pair(&seen), None);
    }

    #[tokio::test]
    async fn a_guest_that_installs_another_key_fails_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, vm, h, seen) = running(tmp.path(), capability::ALL).await;
        let e = state
            .guest
            .apply_identity(&vm, &h, &new_key("swap-key"))
            .await
            .unwrap_err();
        let sent = sent_key_pair(&seen).unwrap().public;
        assert!(
            matches!(
                &e,
                GuestError::HostKey {
                    source: super::HostKeyError::Mismatch { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            chain(&e),
            format!(
                "vm dev: new SSH host key: the guest reports the host key \"ssh-ed25519 AAAAswapped\", not the one sent ({sent:?})"
            )
        );
    }

    #[test]
    fn the_host_makes_a_valid_pair_and_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let a = super::make_host_key_in(tmp.path()).unwrap();
        a.check().unwrap();
        assert!(a.public.starts_with("ssh-ed25519 AAAA"), "{a:?}");
        assert_eq!(a.public, a.public.trim(), "one line, trimmed");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "the key files are gone"
        );
        // The public line is the private key's.
        let key = tmp.path().join("check");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key)
                .unwrap();
            f.write_all(a.private_openssh.as_bytes()).unwrap();
        }
        let out = std::process::Command::new("ssh-keygen")
            .args(["-y", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), a.public);
        // Each call a new pair.
        let b = super::make_host_key_in(tmp.path()).unwrap();
        assert_ne!(a.public, b.public);
        assert_ne!(a.private_openssh, b.private_openssh);
    }

    #[test]
    fn a_host_key_that_cannot_be_made_says_where() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("none");
        let e = super::make_host_key_in(&missing).unwrap_err();
        assert!(matches!(e, super::HostKeyError::TempDir(..)), "{e:?}");
        assert_eq!(
            chain(&e),
            format!(
                "make a private directory in {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[tokio::test]
    async fn an_old_agent_is_too_old_and_nothing_is_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, vm, h, seen) = running(tmp.path(), &[]).await;
        let e = state.guest.thaw(&vm, &h).await.unwrap_err();
        assert!(
            matches!(
                &e,
                GuestError::Step {
                    step: GuestStep::Thaw,
                    source: AgentError::TooOld { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            chain(&e),
            "vm dev: thaw the guest filesystems: the guest agent (banger-agent test) is too old for thaw requests: rebuild the image"
        );
        let e = state
            .guest
            .freeze(&vm, &h, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(chain(&e).contains("too old for freeze requests"), "{e}");
        assert!(requests(&seen).is_empty(), "{:?}", requests(&seen));
    }

    #[tokio::test]
    async fn a_refused_identity_names_the_vm_and_the_step() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, vm, h, _) = running(tmp.path(), capability::ALL).await;
        let e = state
            .guest
            .apply_identity(
                &vm,
                &h,
                &Identity {
                    hostname: "refuse-me".into(),
                    net: None,
                    new_host_key: false,
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                GuestError::Step {
                    step: GuestStep::Identity,
                    source: AgentError::Refused {
                        code: AgentErrorCode::BadRequest,
                        ..
                    },
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            chain(&e),
            "vm dev: apply the new identity: the guest agent refused: bad hostname \"refuse-me\" (BadRequest)"
        );
    }

    #[tokio::test]
    async fn a_vm_without_an_agent_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, vm, mut h, _) = running(tmp.path(), capability::ALL).await;
        h.agent = None;
        let e = state.guest.set_time(&vm, &h).await.unwrap_err();
        assert!(matches!(e, GuestError::NoAgent { .. }), "{e}");
    }
}
