//! Guest errors' chains, and the service
//! against a fake agent on the VM's agent socket: no VM needed.

use std::sync::Arc;
use std::time::Duration;

use banger_proto::agent::{AGENT_PROTOCOL_VERSION, AgentErrorCode};
use banger_store::{VmRecord, VmState};
use banger_vmm::{BackendKind, Signal, VmHandle, VmRunState, VmSpec, Vmm, VmmError};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::super::Handles;
use super::GuestError;
use crate::DaemonState;
use crate::agent::AgentError;
use crate::error::chain;
use crate::op::OpCtx;
use crate::testing::test_state_with;

#[test]
fn an_agent_error_chain_prints_each_cause_once() {
    let e = GuestError::agent(
        "dev",
        AgentError::Connect {
            socket: "/run/banger/vms/id-dev/agent.sock".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such socket"),
        },
    );
    let text = chain(&e);
    assert_eq!(
        text,
        "vm dev: connect to the guest agent at /run/banger/vms/id-dev/agent.sock: no such socket"
    );
    for part in ["vm dev", "connect to the guest agent", "no such socket"] {
        assert_eq!(text.matches(part).count(), 1, "{part:?} in {text:?}");
    }
    let e = GuestError::host_file("write", std::path::Path::new("/tmp/.x.banger-cp"))(
        std::io::Error::other("disk full"),
    );
    assert_eq!(chain(&e), "write /tmp/.x.banger-cp: disk full");
}

/// A VMM that always runs (the wait for the agent asks).
#[derive(Debug)]
struct Running;

impl Vmm for Running {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }
    fn launch(&self, _: &VmSpec) -> Result<VmHandle, VmmError> {
        Err(VmmError::InvalidSpec("no launches here".into()))
    }
    fn request_shutdown(&self, _: &VmHandle) -> Result<(), VmmError> {
        Ok(())
    }
    fn kill(&self, _: &VmHandle, _: Signal) -> Result<(), VmmError> {
        Ok(())
    }
    fn is_running(&self, _: &VmHandle, _: &str) -> bool {
        true
    }
    fn wait_exit(&self, _: &VmHandle, _: Duration) -> Result<bool, VmmError> {
        Ok(false)
    }
    fn status(&self, _: &VmHandle) -> Result<VmRunState, VmmError> {
        Ok(VmRunState::Running)
    }
}

/// A stopped VM `dev` (id `id-dev`).
fn seed(state: &Arc<DaemonState>) -> VmRecord {
    crate::testing::seed(state, "dev", VmState::Stopped)
}

/// The seeded VM with a fake agent serving its agent socket (its
/// directory returned). Like QEMU's agent socket, the fake serves its
/// first client only: a second connection would never be answered.
fn seed_with_fake_agent(state: &Arc<DaemonState>) -> (VmRecord, std::path::PathBuf) {
    let vm = seed(state);
    let dir = super::super::vm_dir(&state.vms, &vm.id);
    std::fs::create_dir_all(&dir).unwrap();
    let listener = UnixListener::bind(state.guest.agent_socket(&vm.id)).unwrap();
    tokio::spawn(crate::agent::tests::fake_agent(
        listener,
        AGENT_PROTOCOL_VERSION,
    ));
    (vm, dir)
}

fn handles(dir: &std::path::Path) -> Handles {
    Handles {
        vmm: VmHandle {
            pid: 4_000_001,
            control_socket: dir.join("qmp.sock"),
            backend: BackendKind::Qemu,
        },
        ssh_host: "127.0.0.1".into(),
        ssh_port: 2222,
        accel: banger_proto::Accel::Tcg,
        bridged: None,
        agent: Some("virtio-serial".into()),
        ram_file: None,
        usernet: None,
        dm: None,
    }
}

#[tokio::test]
async fn a_stopped_vm_is_not_running_and_an_agent_refusal_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(Running));
    let vm = seed(&state);

    let e = state.guest.ports("dev").await.unwrap_err();
    assert!(matches!(e, GuestError::NotRunning { .. }), "{e}");
    assert_eq!(
        chain(&e),
        "vm dev is not running (start it with: banger vm start dev)"
    );

    // "Running": handles, and a fake agent on the VM's agent socket.
    let dir = super::super::vm_dir(&state.vms, &vm.id);
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(
        state.guest.agent_socket(&vm.id),
        banger_vmm::VmFiles::in_dir(&dir).agent_socket,
        "the service finds the VM's directory where the lifecycle puts it"
    );
    let listener = UnixListener::bind(state.guest.agent_socket(&vm.id)).unwrap();
    tokio::spawn(crate::agent::tests::fake_agent(
        listener,
        AGENT_PROTOCOL_VERSION,
    ));
    let h = handles(&dir);
    state.vms.table.set_handles(&vm.id, h.clone());
    let ctx = OpCtx::new(crate::op::mint(), CancellationToken::new());
    state.guest.wait_for_agent(&vm, &h, &ctx).await.unwrap();

    // The fake agent refuses Ports as not found; by id or name alike.
    let e = state.guest.ports("id-dev").await.unwrap_err();
    assert!(
        matches!(
            &e,
            GuestError::Agent {
                source: AgentError::Refused {
                    code: AgentErrorCode::NotFound,
                    ..
                },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        chain(&e),
        "vm dev: the guest agent refused: nope (NotFound)"
    );
}

#[tokio::test]
async fn waiting_for_an_agent_stops_when_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(Running));
    let vm = seed(&state);
    let dir = super::super::vm_dir(&state.vms, &vm.id);
    // Nothing listens on the agent socket: the wait goes on until cancelled.
    let cancel = CancellationToken::new();
    cancel.cancel();
    let ctx = OpCtx::new(crate::op::mint(), cancel);
    let e = state
        .guest
        .wait_for_agent(&vm, &handles(&dir), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, GuestError::Cancelled(_)), "{e}");
}

#[tokio::test]
async fn concurrent_callers_share_one_agent_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(Running));
    let (vm, _) = seed_with_fake_agent(&state);
    let t = Duration::from_secs(3);
    let (a, b, c) = tokio::join!(
        state.guest.open_agent(&vm.id, t),
        state.guest.open_agent(&vm.id, t),
        state.guest.open_agent(&vm.id, t),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &c));
}

#[tokio::test]
async fn bad_environment_variables_are_refused_before_the_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(Running));
    seed(&state);
    let begin = |k: &str, v: &str| banger_proto::vm::ExecBeginParams {
        name: "dev".into(),
        argv: vec!["env".into()],
        tty: false,
        rows: None,
        cols: None,
        env: vec![(k.into(), v.into())],
        cwd: None,
    };
    for key in ["", "A=B", "A\0B"] {
        let e = state.guest.exec_begin(begin(key, "x")).await.unwrap_err();
        assert!(matches!(e, GuestError::BadEnvName(_)), "{key:?}: {e}");
        assert!(e.to_string().contains("'='"), "{e}");
        assert_eq!(
            crate::dispatch::errors::guest_code(&e),
            banger_proto::ErrorCode::BadParams
        );
    }
    let e = state
        .guest
        .exec_begin(begin("K", "a\0b"))
        .await
        .unwrap_err();
    assert!(matches!(e, GuestError::BadEnvValue(_)), "{e}");
    // A good one gets as far as the VM (which is stopped).
    let e = state.guest.exec_begin(begin("K", "a=b")).await.unwrap_err();
    assert!(matches!(e, GuestError::NotRunning { .. }), "{e}");
}

#[tokio::test]
async fn a_copy_that_arrives_short_of_its_announced_size_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state_with(tmp.path(), Arc::new(Running));
    let (vm, dir) = seed_with_fake_agent(&state);
    state.vms.table.set_handles(&vm.id, handles(&dir));
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let e = state
        .guest
        .cp(banger_proto::vm::CpParams {
            name: vm.name.clone(),
            to_guest: false,
            host_path: out.join("short").display().to_string(),
            guest_path: "/etc/short".into(),
            recursive: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            GuestError::Incomplete {
                announced: 10,
                received: 4,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "something was kept"
    );
}
