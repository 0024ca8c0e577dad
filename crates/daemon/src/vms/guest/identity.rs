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

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banger_proto::agent::{GuestNet, Message, capability};
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
/// How long `Identity` may take: `ip` and `ssh-keygen` run, under TCG too.
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
    /// `identity.new_host_key` makes a new SSH host key that the running
    /// sshd uses from then on (open sessions stay).
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
        let frame = conn
            .call_with_body(
                |id| Message::Identity {
                    id,
                    hostname,
                    unix_ns,
                    net,
                    new_host_key,
                    host_key: None,
                },
                random,
                IDENTITY_TIMEOUT,
            )
            .await
            .map_err(|e| GuestError::step(vm, step, e))?;
        match frame.msg {
            Message::IdentityDone { host_key, .. } => {
                tracing::info!(vm = %vm.name, new_host_key = identity.new_host_key, "guest identity applied");
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
        let conn = match self.vms.agent(&vm.id) {
            Some(conn) => conn,
            None => {
                let conn = AgentConn::connect(&self.agent_socket(&vm.id), CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| GuestError::step(vm, step, e))?;
                self.vms.set_agent(&vm.id, Arc::clone(&conn));
                conn
            }
        };
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
        assert_eq!(key, "ssh-ed25519 AAAA64", "64 bytes of randomness went");

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
                ..
            } => {
                assert_eq!(hostname, "fork-1");
                assert_eq!(n, &net);
                assert!(*unix_ns >= before);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(got[3].body.len(), 64);
        assert!(got[3].body.iter().any(|b| *b != 0), "random, not zeros");
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
