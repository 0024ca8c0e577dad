use super::*;
pub(crate) use crate::testing::test_state;
use serde_json::json;

async fn call(state: &Arc<DaemonState>, line: &str) -> Response {
    dispatch(state, line.as_bytes()).await
}

fn error_of(r: Response) -> ErrorBody {
    match r {
        Response::Err { error } => error,
        Response::Ok { result } => panic!("expected an error, got {result}"),
    }
}

#[tokio::test]
async fn ping_answers_with_build_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    let r = call(&state, r#"{"version":1,"method":"ping"}"#).await;
    let result = r.into_result().unwrap();
    assert_eq!(result["build_id"], "test-build");
    assert_eq!(result["pid"], std::process::id());
}

#[tokio::test]
async fn malformed_json_is_bad_request_with_a_minted_op_id() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    for line in ["{not json", "[1,2]", "\"ping\"", "\u{1}\u{2}"] {
        let e = error_of(call(&state, line).await);
        assert_eq!(e.code, ErrorCode::BadRequest, "{line:?}");
        let id = e.op_id.expect("op id on bad_request");
        assert!(OpId::parse(&id).is_some(), "{id}");
    }
}

#[tokio::test]
async fn envelope_errors_keep_the_callers_op_id() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    let cases = [
        (
            r#"{"version":2,"method":"ping","op_id":"op-caller1"}"#,
            ErrorCode::BadVersion,
        ),
        (
            r#"{"version":"1","method":"ping","op_id":"op-caller1"}"#,
            ErrorCode::BadVersion,
        ),
        (
            r#"{"method":"ping","op_id":"op-caller1"}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"version":1,"op_id":"op-caller1"}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"version":1,"method":"vm.fly","op_id":"op-caller1"}"#,
            ErrorCode::UnknownMethod,
        ),
        (
            r#"{"version":1,"method":"ping","params":"abc","op_id":"op-caller1"}"#,
            ErrorCode::BadParams,
        ),
        (
            r#"{"version":1,"method":"daemon.status","params":{"x":1},"op_id":"op-caller1"}"#,
            ErrorCode::BadParams,
        ),
    ];
    for (line, code) in cases {
        let e = error_of(call(&state, line).await);
        assert_eq!(e.code, code, "{line}");
        assert_eq!(e.op_id.as_deref(), Some("op-caller1"), "{line}");
    }
}

#[tokio::test]
async fn an_unsafe_op_id_is_refused_not_adopted() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    let e = error_of(
        call(
            &state,
            r#"{"version":1,"method":"ping","op_id":"op-a\nb c"}"#,
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_ne!(e.op_id.as_deref(), Some("op-a\nb c"));
}

#[tokio::test]
async fn unknown_method_names_are_truncated_in_the_message() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    let long = "x".repeat(10_000);
    let e = error_of(call(&state, &format!(r#"{{"version":1,"method":"{long}"}}"#)).await);
    assert_eq!(e.code, ErrorCode::UnknownMethod);
    assert!(e.message.len() < 120, "{}", e.message);
}

#[tokio::test]
async fn status_reports_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    let r = call(
        &state,
        r#"{"version":1,"method":"daemon.status","params":{}}"#,
    )
    .await;
    let s: banger_proto::daemon::DaemonStatus =
        serde_json::from_value(r.into_result().unwrap()).unwrap();
    assert_eq!(s.store.schema_version, 9);
    assert_eq!((s.store.vms, s.store.images, s.store.kernels), (0, 0, 0));
    assert!(s.socket.ends_with("bangerd.sock"));
}

#[tokio::test]
async fn shutdown_fires_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    assert!(!state.shutdown.is_cancelled());
    let r = call(&state, r#"{"version":1,"method":"daemon.shutdown"}"#).await;
    assert!(r.into_result().is_ok());
    assert!(state.shutdown.is_cancelled());
}

#[test]
fn params_decode_null_as_empty() {
    #[derive(serde::Deserialize, Debug)]
    struct P {
        #[serde(default)]
        n: u32,
    }
    let p: P = params("m", Value::Null).unwrap();
    assert_eq!(p.n, 0);
    let e = params::<P>("m", json!({"n": "x"})).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadParams);
    assert!(
        e.message.starts_with("bad params for m: `n`: invalid type"),
        "{}",
        e.message
    );
}

/// A wrong type deep in the params names the path to it; an error about
/// the object itself (a missing field) names no path, once.
#[test]
fn params_errors_name_the_field_path() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)] // only decoded
    struct Shape {
        vcpus: u32,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)] // only decoded
    struct P {
        name: String,
        shape: Shape,
    }
    let e = params::<P>("vm.x", json!({"name": "a", "shape": {"vcpus": "two"}})).unwrap_err();
    assert_eq!(
        e.message,
        "bad params for vm.x: `shape.vcpus`: invalid type: string \"two\", expected u32"
    );
    let e = params::<P>("vm.x", json!({"shape": {"vcpus": 1}})).unwrap_err();
    assert_eq!(e.message, "bad params for vm.x: missing field `name`");
}

/// `if_idle` refuses while an operation runs, naming it, and changes
/// nothing; once it has ended the daemon closes to new operations and
/// shuts down in the same step.
#[tokio::test]
async fn shutdown_if_idle_refuses_while_an_operation_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    let release = Arc::new(tokio::sync::Notify::new());
    let id = OpId::parse("op-holding").unwrap();
    let held = Arc::clone(&release);
    let op = state
        .ops
        .begin(&id, banger_proto::OpKind::VmCreate, "dev", |_| async move {
            held.notified().await;
            Ok(Value::Null)
        });
    let if_idle = r#"{"version":1,"method":"daemon.shutdown","params":{"if_idle":true}}"#;
    let e = error_of(call(&state, if_idle).await);
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(
        e.message,
        "1 operation in flight: vm.create dev (op-holding)"
    );
    assert!(!state.shutdown.is_cancelled());
    // Still open: a begin is admitted (and refused for its own reasons).
    let begin = r#"{"version":1,"method":"vm.start.begin","params":{"name":"ghost"}}"#;
    let e = error_of(call(&state, begin).await);
    assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message);

    release.notify_one();
    op.wait().await;
    assert!(call(&state, if_idle).await.into_result().is_ok());
    assert!(state.shutdown.is_cancelled());
    let e = error_of(call(&state, begin).await);
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(
        e.message,
        "bangerd is shutting down: it begins no new operation"
    );
}

/// A begin request past the gate whose operation is not registered yet
/// counts as in flight; a plain shutdown closes the gate too.
#[tokio::test]
async fn shutdown_if_idle_counts_a_begin_being_started() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    let admitted = state.ops.admit().unwrap();
    let if_idle = r#"{"version":1,"method":"daemon.shutdown","params":{"if_idle":true}}"#;
    let e = error_of(call(&state, if_idle).await);
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(e.message, "1 operation in flight: 1 being started");
    drop(admitted);
    let bad = r#"{"version":1,"method":"daemon.shutdown","params":{"if_idle":"yes"}}"#;
    let e = error_of(call(&state, bad).await);
    assert_eq!(e.code, ErrorCode::BadParams);
    assert!(!state.shutdown.is_cancelled());

    let plain = r#"{"version":1,"method":"daemon.shutdown"}"#;
    assert!(call(&state, plain).await.into_result().is_ok());
    assert!(state.shutdown.is_cancelled());
    assert!(state.ops.admit().is_err());
}

#[test]
fn minted_op_ids_are_valid_and_distinct() {
    let a = mint_op_id();
    let b = mint_op_id();
    assert_ne!(a, b);
    assert!(a.as_str().starts_with("op-") && a.as_str().len() == 11);
}

/// The method list is the single source of truth: `docs/rpc.md` must list
/// exactly its methods, in the same order, and the table serves exactly
/// those.
#[test]
fn method_table_matches_docs_rpc_md() {
    let doc = include_str!("../../../../docs/rpc.md");
    let section = doc
        .split("\n## Methods")
        .nth(1)
        .expect("docs/rpc.md has a '## Methods' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert_eq!(documented, methods::ALL);
    let table: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
    assert_eq!(table, methods::ALL);
}

/// Methods without params refuse any, naming the method; the others
/// decode theirs once, naming the method and the field's problem.
#[tokio::test]
async fn params_are_decoded_once_with_the_methods_name() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    for ok in [
        r#"{"version":1,"method":"vm.list"}"#,
        r#"{"version":1,"method":"vm.list","params":null}"#,
        r#"{"version":1,"method":"vm.list","params":{}}"#,
    ] {
        assert!(call(&state, ok).await.into_result().is_ok(), "{ok}");
    }
    let cases = [
        (
            r#"{"version":1,"method":"vm.list","params":{"x":1}}"#,
            "vm.list takes no params",
        ),
        (
            r#"{"version":1,"method":"ping","params":[]}"#,
            "ping takes no params",
        ),
        (
            r#"{"version":1,"method":"vm.create.begin","params":{"name":"dev","publish":["80"]}}"#,
            "bad params for vm.create.begin: `publish[0]`: invalid publish \"80\": use HOST:GUEST",
        ),
        (
            r#"{"version":1,"method":"doctor","params":{"probe":"yes"}}"#,
            "bad params for doctor: `probe`: invalid type",
        ),
    ];
    for (line, needle) in cases {
        let e = error_of(call(&state, line).await);
        assert_eq!(e.code, ErrorCode::BadParams, "{line}: {}", e.message);
        assert!(e.message.starts_with(needle), "{line}: {}", e.message);
    }
}

#[tokio::test]
async fn guest_and_network_methods_refuse_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    let cases = [
        (
            r#"{"version":1,"method":"vm.stats","params":{}}"#,
            ErrorCode::BadParams,
            "name",
        ),
        (
            r#"{"version":1,"method":"vm.stats","params":{"name":"ghost"}}"#,
            ErrorCode::NotFound,
            "ghost",
        ),
        (
            r#"{"version":1,"method":"vm.ports","params":{"name":"ghost","x":1}}"#,
            ErrorCode::BadParams,
            "unknown field",
        ),
        (
            r#"{"version":1,"method":"vm.ports","params":{"name":"ghost"}}"#,
            ErrorCode::NotFound,
            "ghost",
        ),
        (
            r#"{"version":1,"method":"vm.exec.begin","params":{"name":"ghost","argv":[""]}}"#,
            ErrorCode::BadParams,
            "nothing to run",
        ),
        (
            r#"{"version":1,"method":"vm.exec.begin","params":{"name":"ghost","argv":["true"]}}"#,
            ErrorCode::NotFound,
            "ghost",
        ),
        (
            r#"{"version":1,"method":"vm.exec.begin","params":{"name":"ghost","argv":"true"}}"#,
            ErrorCode::BadParams,
            "expected a sequence",
        ),
        (
            r#"{"version":1,"method":"vm.exec.io","params":{"exec_id":"ex-nope"}}"#,
            ErrorCode::NotFound,
            "ex-nope",
        ),
        (
            r#"{"version":1,"method":"vm.exec.io","params":{"exec_id":"ex-nope","wait_ms":-1}}"#,
            ErrorCode::BadParams,
            "expected u32",
        ),
        (
            r#"{"version":1,"method":"vm.cp","params":{"name":"ghost","to_guest":true,"host_path":"/tmp/x","guest_path":"root/x"}}"#,
            ErrorCode::BadParams,
            "absolute",
        ),
        (
            r#"{"version":1,"method":"vm.cp","params":{"name":"ghost","to_guest":true,"host_path":"x","guest_path":"/root/x"}}"#,
            ErrorCode::BadParams,
            "absolute",
        ),
        (
            r#"{"version":1,"method":"vm.cp","params":{"name":"ghost","to_guest":false,"host_path":"/tmp/x","guest_path":"/root/x"}}"#,
            ErrorCode::NotFound,
            "ghost",
        ),
        (
            r#"{"version":1,"method":"network.status","params":{"x":1}}"#,
            ErrorCode::BadParams,
            "network.status",
        ),
        (
            r#"{"version":1,"method":"vm.create.begin","params":{"name":"dev","network":"wifi"}}"#,
            ErrorCode::BadParams,
            "unknown network",
        ),
    ];
    for (line, code, needle) in cases {
        let e = error_of(call(&state, line).await);
        assert_eq!(e.code, code, "{line}: {}", e.message);
        assert!(e.message.contains(needle), "{line}: {}", e.message);
        assert!(e.op_id.is_some(), "{line}");
    }
    // Nothing was created, and the daemon still serves.
    let vms = state.db.call(|s| s.vms()).await.unwrap();
    assert!(vms.is_empty());
    assert!(
        call(&state, r#"{"version":1,"method":"ping"}"#)
            .await
            .into_result()
            .is_ok()
    );
}

/// Bad params to `events.subscribe` are refused by name, with no stream
/// after the answer; good ones hand the connection a subscription.
#[tokio::test]
async fn events_subscribe_refuses_bad_params_and_starts_no_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let state = test_state(tmp.path());
    for (line, needle) in [
        (
            r#"{"version":1,"method":"events.subscribe","params":{"since":"ten"}}"#,
            "expected u64",
        ),
        (
            r#"{"version":1,"method":"events.subscribe","params":{"since":-1}}"#,
            "expected u64",
        ),
        (
            r#"{"version":1,"method":"events.subscribe","params":{"from":3}}"#,
            "unknown field `from`",
        ),
    ] {
        let d = dispatch_streaming(&state, line.as_bytes()).await;
        assert!(d.follow.is_none(), "{line}");
        let e = error_of(d.response);
        assert_eq!(e.code, ErrorCode::BadParams, "{line}: {}", e.message);
        assert!(e.message.contains(needle), "{line}: {}", e.message);
    }
    let d = dispatch_streaming(
        &state,
        br#"{"version":1,"method":"events.subscribe","params":{"since":0}}"#,
    )
    .await;
    assert!(d.follow.is_some());
    assert_eq!(d.response.into_result().unwrap()["complete"], true);
}
