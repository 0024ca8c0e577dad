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

impl From<crate::artifacts::ArtifactError> for RpcError {
    fn from(e: crate::artifacts::ArtifactError) -> Self {
        Self::from_domain(artifact_code(&e), &e)
    }
}

pub(crate) fn artifact_code(e: &crate::artifacts::ArtifactError) -> ErrorCode {
    use crate::artifacts::ArtifactError as E;
    match e {
        E::NotFound { .. } | E::UnknownKernel { .. } | E::Broken { .. } => ErrorCode::NotFound,
        E::ImageExists { .. } => ErrorCode::Conflict,
        E::InvalidPackage { .. } => ErrorCode::BadParams,
        E::Pull { .. } | E::Build { .. } | E::Task { .. } | E::Ssh(_) => ErrorCode::OperationFailed,
        E::Cancelled(_) => ErrorCode::Cancelled,
        E::Store(e) => store_code(e),
    }
}

#[cfg(test)]
mod tests {
    use banger_proto::{ErrorCode, Response};
    use banger_store::ImageRecord;

    use super::RpcError;
    use crate::artifacts::ArtifactError;
    use crate::dispatch::tests::test_state;
    use crate::op::{Cancelled, OpCtx};

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
            })
            .unwrap();
        let dup = state
            .artifacts
            .build_image("mine", Vec::new(), None, &ctx)
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
}
