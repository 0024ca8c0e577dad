//! The one place where domain errors become wire errors: each domain
//! error type maps to an [`ErrorCode`] here (looking through the errors it
//! wraps), and its message is its chain of causes, each printed once.

use banger_proto::{ErrorBody, ErrorCode};

use super::RpcError;
use crate::error::chain;

impl RpcError {
    /// A domain error as a wire error: `code` and its whole cause chain.
    pub(crate) fn from_domain(code: ErrorCode, e: &dyn std::error::Error) -> Self {
        Self::new(code, chain(e))
    }

    /// The body an asynchronous operation keeps, so `op.status` carries
    /// the code of what failed.
    pub(crate) fn into_body(self) -> ErrorBody {
        ErrorBody::new(self.code, self.message)
    }
}

impl From<banger_store::StoreError> for RpcError {
    fn from(e: banger_store::StoreError) -> Self {
        Self::from_domain(store_code(&e), &e)
    }
}

pub(crate) fn store_code(e: &banger_store::StoreError) -> ErrorCode {
    use banger_store::StoreError as E;
    match e {
        E::NotFound { .. } | E::MissingReference { .. } => ErrorCode::NotFound,
        E::AlreadyExists { .. } | E::InUse { .. } => ErrorCode::Conflict,
        _ => ErrorCode::OperationFailed,
    }
}

impl From<crate::ops::UnknownOp> for RpcError {
    fn from(e: crate::ops::UnknownOp) -> Self {
        Self::from_domain(ErrorCode::NotFound, &e)
    }
}

impl From<crate::op::Cancelled> for RpcError {
    fn from(e: crate::op::Cancelled) -> Self {
        Self::from_domain(ErrorCode::Cancelled, &e)
    }
}

impl From<crate::validate::Invalid> for RpcError {
    fn from(e: crate::validate::Invalid) -> Self {
        Self::from_domain(ErrorCode::BadParams, &e)
    }
}

impl From<crate::network::NetworkError> for RpcError {
    fn from(e: crate::network::NetworkError) -> Self {
        Self::from_domain(network_code(&e), &e)
    }
}

pub(crate) fn network_code(e: &crate::network::NetworkError) -> ErrorCode {
    use crate::network::NetworkError as E;
    match e {
        E::AddressesExhausted { .. }
        | E::PortInUse { .. }
        | E::PortPublished { .. }
        | E::PortReserved { .. } => ErrorCode::Conflict,
        E::UdpNeedsUserMode { .. } => ErrorCode::BadParams,
        E::Store(e) => store_code(e),
        E::NoHelper { .. }
        | E::Helper { .. }
        | E::UnexpectedReply { .. }
        | E::BadSubnet(_)
        | E::BadLease(_)
        | E::NoTapName
        | E::NoFreePort(_)
        | E::Listen { .. } => ErrorCode::OperationFailed,
    }
}

impl From<crate::vms::VmError> for RpcError {
    fn from(e: crate::vms::VmError) -> Self {
        Self::from_domain(vm_code(&e), &e)
    }
}

pub(crate) fn vm_code(e: &crate::vms::VmError) -> ErrorCode {
    use crate::vms::VmError as E;
    match e {
        E::Invalid(_)
        | E::BadPublish(_)
        | E::BadNetwork(_)
        | E::PublishedTwice(_)
        | E::NothingToChange
        | E::Shrink { .. }
        | E::UnknownSignal(_)
        | E::ForkCount(_)
        | E::ShapeFixed { .. }
        | E::EgressNeedsBridged { .. }
        | E::WaitNoAgent { .. }
        | E::WaitNoSsh { .. }
        | E::WaitFromSnapshot
        | E::Usernet(
            banger_vmm::usernet::UsernetError::Missing { .. }
            | banger_vmm::usernet::UsernetError::NoUserNamespaces { .. }
            | banger_vmm::usernet::UsernetError::NoTun { .. },
        )
        | E::Config(_) => ErrorCode::BadParams,
        E::NameTaken(_)
        | E::Running(_)
        | E::DeleteRunning(_)
        | E::SnapshotNameTaken(_)
        | E::Incompatible { .. }
        | E::SnapshotOfOtherVm { .. }
        | E::Paused(_)
        | E::NoAgentForTemplate(_)
        | E::NoSshServer { .. }
        | E::NoAgentForIdentity(_)
        | E::PromoteNotStopped(_)
        | E::LayeredWorkDisk(_)
        | E::PromoteDmSnapshot(_) => ErrorCode::Conflict,
        E::NotRunning { .. } => ErrorCode::NotRunning,
        E::MissingFile { .. } => ErrorCode::NotFound,
        E::FirecrackerCannot(_)
        | E::NoFirecracker
        | E::FirecrackerNeedsKvm(_)
        | E::FirecrackerNoSsh { .. } => ErrorCode::Conflict,
        E::Cancelled(_) | E::CreateCancelled => ErrorCode::Cancelled,
        E::StartFailed { cause, .. } => vm_code(cause),
        E::Network(e) => network_code(e),
        E::Guest(e) => guest_code(e),
        E::Artifact(e) => artifact_code(e),
        E::Store(e) => store_code(e),
        E::NoRootStrategy(_)
        | E::NoWorkSeed(_)
        | E::VmmExited
        | E::SshTimeout(_)
        | E::BadSshHost(_)
        | E::KillFailed(_)
        | E::StillRunning { .. }
        | E::Io { .. }
        | E::Task(..)
        | E::NoSpace { .. }
        | E::NoLayeredDisks(_)
        | E::Vmm(_)
        | E::Usernet(_)
        | E::Disk(_)
        | E::RootDevice(_)
        | E::Ssh(_) => ErrorCode::OperationFailed,
    }
}

impl From<crate::vms::guest::GuestError> for RpcError {
    fn from(e: crate::vms::guest::GuestError) -> Self {
        Self::from_domain(guest_code(&e), &e)
    }
}

pub(crate) fn guest_code(e: &crate::vms::guest::GuestError) -> ErrorCode {
    use crate::vms::guest::GuestError as E;
    match e {
        E::Store(e) => store_code(e),
        E::Cancelled(_) => ErrorCode::Cancelled,
        E::NotRunning { .. } => ErrorCode::NotRunning,
        E::Agent { source, .. } | E::Step { source, .. } => agent_code(source),
        E::NothingToRun
        | E::BadEnvName(_)
        | E::BadEnvValue(_)
        | E::Stdin(_)
        | E::NotAbsolute { .. }
        | E::GuestNamesNoFile(_)
        | E::HostNamesNoFile(_)
        | E::Symlink(_)
        | E::BadDestination(_)
        | E::NotAFile(_)
        | E::IsDirectory { .. }
        | E::HostNotDirectory(_)
        | E::HostIsDirectory(_) => ErrorCode::BadParams,
        E::NoExecSession(_) | E::NoHostFile { .. } => ErrorCode::NotFound,
        E::NoAgent { .. }
        | E::AgentNotWaitedFor { .. }
        | E::BootTimeout { .. }
        | E::VmmExited
        | E::GuestNotDirectory(_)
        | E::ServiceTimeout { .. }
        | E::CommandFailed { .. }
        | E::CommandTimeout { .. }
        | E::ExecLost { .. }
        | E::HostFile { .. }
        | E::HostWriterGone
        | E::Incomplete { .. }
        | E::NoRoom { .. }
        | E::ReserveReached { .. }
        | E::HostKey { .. }
        | E::TreeName(_)
        | E::TreeStream(_)
        | E::Task(..) => ErrorCode::OperationFailed,
    }
}

impl From<crate::workspaces::WorkspaceError> for RpcError {
    fn from(e: crate::workspaces::WorkspaceError) -> Self {
        use crate::workspaces::WorkspaceError as E;
        let code = match &e {
            E::Store(e) => store_code(e),
            E::Guest(e) => guest_code(e),
            E::HostNotAbsolute(_) | E::BadGuestPath(_) | E::NeedsStart => ErrorCode::BadParams,
            E::HostNotDirectory(_) => ErrorCode::NotFound,
            E::AlreadyHas { .. } | E::HostChanged { .. } | E::GuestChanged { .. } => {
                ErrorCode::Conflict
            }
            E::NoWorkspace { .. } => ErrorCode::NotFound,
            E::Project { .. }
            | E::Io { .. }
            | E::BadRecord { .. }
            | E::Task(_)
            | E::PatchTooLarge { .. } => ErrorCode::OperationFailed,
        };
        Self::from_domain(code, &e)
    }
}

/// What the guest agent refused maps to the caller's mistake (not found,
/// bad params); anything else about the agent is a failed operation.
pub(crate) fn agent_code(e: &crate::agent::AgentError) -> ErrorCode {
    use crate::agent::AgentError as E;
    use banger_proto::agent::AgentErrorCode;
    match e {
        E::Refused {
            code: AgentErrorCode::NotFound,
            ..
        } => ErrorCode::NotFound,
        E::Refused {
            code: AgentErrorCode::BadRequest,
            ..
        } => ErrorCode::BadParams,
        _ => ErrorCode::OperationFailed,
    }
}

impl From<crate::artifacts::ArtifactError> for RpcError {
    fn from(e: crate::artifacts::ArtifactError) -> Self {
        Self::from_domain(artifact_code(&e), &e)
    }
}

pub(crate) fn artifact_code(e: &crate::artifacts::ArtifactError) -> ErrorCode {
    use crate::artifacts::ArtifactError as E;
    match e {
        E::NotFound { .. }
        | E::UnknownKernel { .. }
        | E::Broken { .. }
        | E::ImportedMissing { .. } => ErrorCode::NotFound,
        E::ImageExists { .. } | E::KernelExists { .. } | E::CatalogName { .. } => {
            ErrorCode::Conflict
        }
        E::Import { source, .. } if source.is_missing() => ErrorCode::NotFound,
        E::Import { source, .. } if source.is_bad_input() => ErrorCode::BadParams,
        E::Import { .. } => ErrorCode::OperationFailed,
        E::InvalidPackage { .. } | E::InvalidService { .. } | E::NotPullable { .. } => {
            ErrorCode::BadParams
        }
        E::NoAgent { .. } => ErrorCode::OperationFailed,
        E::Pull { .. } | E::Build { .. } | E::NoSpace { .. } | E::Task { .. } | E::Ssh(_) => {
            ErrorCode::OperationFailed
        }
        E::Cancelled(_) => ErrorCode::Cancelled,
        E::Store(e) => store_code(e),
        E::Oci(e) => pull_code(e),
        E::Credentials { .. } | E::Flatten { .. } | E::CachePrune(_) | E::Promote { .. } => {
            ErrorCode::OperationFailed
        }
    }
}

/// A registry that refuses access is `permission_denied` (the message
/// says how to log in); an image or platform it does not have is
/// `not_found`; a blob that does not match its digest, and the rest,
/// a failed operation.
pub(crate) fn pull_code(e: &banger_oci::PullError) -> ErrorCode {
    use banger_oci::PullError as E;
    match e {
        E::AuthRequired { .. } | E::AuthRejected { .. } => ErrorCode::PermissionDenied,
        E::NotFound { .. } | E::NoMatchingPlatform { .. } => ErrorCode::NotFound,
        E::Registry { .. }
        | E::NestedIndex { .. }
        | E::BadDigest { .. }
        | E::BadSize { .. }
        | E::UnsupportedLayer { .. }
        | E::BadConfig { .. }
        | E::ReadConfig { .. }
        | E::Download { .. }
        | E::Cache(_)
        | E::CacheKeptVanishing { .. } => ErrorCode::OperationFailed,
    }
}

#[cfg(test)]
mod tests {
    use banger_proto::{ErrorCode, Response};
    use banger_store::ImageRecord;

    use super::RpcError;
    use crate::agent::AgentError;
    use crate::artifacts::ArtifactError;
    use crate::dispatch::tests::test_state;
    use crate::error::chain;
    use crate::op::{Cancelled, OpCtx};
    use crate::vms::guest::GuestError;
    use banger_proto::agent::AgentErrorCode;

    #[tokio::test]
    async fn artifact_errors_map_to_wire_codes() {
        let tmp = tempfile::tempdir().unwrap();
        let state = test_state(tmp.path());
        let ctx = OpCtx::background();

        let missing = state
            .artifacts
            .ensure_image("nope", &ctx)
            .await
            .unwrap_err();
        let e = RpcError::from(missing);
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message, "image \"nope\" not found");

        let dir = tmp.path().join("data/images/mine");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rootfs.ext4"), b"x").unwrap();
        state
            .lock_store_for_tests()
            .insert_image(&ImageRecord {
                id: "i-mine".into(),
                name: "mine".into(),
                source: "test".into(),
                rootfs_path: dir.join("rootfs.ext4"),
                work_seed_path: None,
                fingerprint: None,
                size_bytes: 1,
                managed: false,
                created_at_ms: 0,
                has_agent: false,
                recipe: None,
                replaced_by: None,
                origin: Default::default(),
                config: None,
            })
            .unwrap();
        let dup = state
            .artifacts
            .build_image("mine", crate::artifacts::BuildSpec::default(), &ctx)
            .await
            .unwrap_err();
        let e = RpcError::from(dup);
        assert_eq!(e.code, ErrorCode::Conflict);
        assert_eq!(e.message, "image \"mine\" already exists; delete it first");

        let unknown = state
            .artifacts
            .check_kernel_known("nope")
            .await
            .unwrap_err();
        assert_eq!(RpcError::from(unknown).code, ErrorCode::NotFound);
        let gone = state.artifacts.delete_kernel("nope").await.unwrap_err();
        assert_eq!(RpcError::from(gone).code, ErrorCode::NotFound);
        let bad = crate::artifacts::validate_packages(&["-x".into()]).unwrap_err();
        assert_eq!(RpcError::from(bad).code, ErrorCode::BadParams);
        let cancelled = RpcError::from(ArtifactError::from(Cancelled));
        assert_eq!(
            (cancelled.code, cancelled.message.as_str()),
            (ErrorCode::Cancelled, "cancelled")
        );
        let failed = RpcError::from(ArtifactError::Build {
            name: "mine".into(),
            source: banger_image::ImageError::NotRoot,
        });
        assert_eq!(failed.code, ErrorCode::OperationFailed);
        assert_eq!(
            failed.message,
            "build image mine: image builds need root: rootless image builds are not supported yet"
        );
    }

    #[tokio::test]
    async fn artifact_methods_answer_not_found_and_bad_params() {
        let tmp = tempfile::tempdir().unwrap();
        let state = test_state(tmp.path());
        let call = |line: &'static str| {
            let state = std::sync::Arc::clone(&state);
            async move {
                match crate::dispatch::dispatch(&state, line.as_bytes()).await {
                    Response::Err { error } => error,
                    Response::Ok { result } => panic!("expected an error, got {result}"),
                }
            }
        };
        let e = call(r#"{"version":1,"method":"kernel.show","params":{"name":"nope"}}"#).await;
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NotFound, "kernel \"nope\" not found")
        );
        let e = call(r#"{"version":1,"method":"image.show","params":{"name":"nope"}}"#).await;
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NotFound, "image \"nope\" not found")
        );
        let e =
            call(r#"{"version":1,"method":"kernel.pull.begin","params":{"name":"nope"}}"#).await;
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(
            e.message.contains("the catalog has: debian-cloud"),
            "{}",
            e.message
        );
        let e = call(
            r#"{"version":1,"method":"image.build.begin","params":{"name":"x","packages":["curl","-oX"]}}"#,
        )
        .await;
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::BadParams, "invalid package name \"-oX\"")
        );
    }

    #[test]
    fn guest_errors_map_to_their_codes() {
        let refused = |code| {
            GuestError::agent(
                "dev",
                AgentError::Refused {
                    code,
                    message: "nope".into(),
                },
            )
        };
        let cases = [
            (refused(AgentErrorCode::NotFound), ErrorCode::NotFound),
            (refused(AgentErrorCode::BadRequest), ErrorCode::BadParams),
            (
                GuestError::agent("dev", AgentError::Lost),
                ErrorCode::OperationFailed,
            ),
            (
                GuestError::NotRunning { vm: "dev".into() },
                ErrorCode::NotRunning,
            ),
            (
                GuestError::NoAgent { vm: "dev".into() },
                ErrorCode::OperationFailed,
            ),
            (crate::op::Cancelled.into(), ErrorCode::Cancelled),
            (GuestError::NothingToRun, ErrorCode::BadParams),
            (
                GuestError::NoExecSession("ex-x".into()),
                ErrorCode::NotFound,
            ),
            (
                banger_store::StoreError::NotFound {
                    kind: "vm",
                    name: "ghost".into(),
                }
                .into(),
                ErrorCode::NotFound,
            ),
        ];
        for (e, code) in cases {
            let text = chain(&e);
            assert_eq!(RpcError::from(e).code, code, "{text}");
        }
    }
}
