//! Golden snapshots of the wire envelope. A failure here means the protocol
//! changed: if that was deliberate, review the new snapshot (`cargo insta
//! review`, or `INSTA_UPDATE=always cargo test`) and say so in the commit.

#![allow(clippy::unwrap_used)] // test code

use banger_proto::daemon::{DaemonStatus, PingResult, StoreStatus};
use banger_proto::{ErrorBody, ErrorCode, Request, Response};
use serde_json::json;

fn wire<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

#[test]
fn request_envelope() {
    let plain = Request::new("ping", serde_json::Value::Null);
    let mut with_id = Request::new("vm.create.begin", json!({"name": "dev"}));
    with_id.op_id = Some("op-a1b2c3".into());
    insta::assert_snapshot!("request_plain", wire(&plain));
    insta::assert_snapshot!("request_with_op_id", wire(&with_id));
}

#[test]
fn response_envelope() {
    let ok = Response::Ok {
        result: json!({"pong": true}),
    };
    let err = Response::Err {
        error: ErrorBody::new(ErrorCode::UnknownMethod, "unknown method \"vm.fly\"")
            .with_op_id("op-a1b2c3"),
    };
    let err_no_id = Response::Err {
        error: ErrorBody::new(ErrorCode::BadRequest, "request is not valid json"),
    };
    insta::assert_snapshot!("response_ok", wire(&ok));
    insta::assert_snapshot!("response_error", wire(&err));
    insta::assert_snapshot!("response_error_without_op_id", wire(&err_no_id));
}

#[test]
fn error_codes() {
    let codes = [
        ErrorCode::BadRequest,
        ErrorCode::BadVersion,
        ErrorCode::UnknownMethod,
        ErrorCode::BadParams,
        ErrorCode::NotFound,
        ErrorCode::NotRunning,
        ErrorCode::Conflict,
        ErrorCode::PermissionDenied,
        ErrorCode::OperationFailed,
        ErrorCode::Cancelled,
    ];
    for code in codes {
        assert_eq!(wire(&code), format!("\"{}\"", code.as_str()));
    }
    insta::assert_snapshot!("error_codes", wire(&codes));
}

#[test]
fn method_results() {
    let ping = PingResult {
        version: "0.1.0".into(),
        build_id: "b1d".into(),
        pid: 42,
    };
    let status = DaemonStatus {
        version: "0.1.0".into(),
        build_id: "b1d".into(),
        protocol_version: 1,
        pid: 42,
        uptime_s: 7,
        socket: "/run/user/1000/banger/bangerd.sock".into(),
        log_file: "/home/u/.local/state/banger/bangerd.log".into(),
        store: StoreStatus {
            path: "/home/u/.local/share/banger/banger.db".into(),
            schema_version: 1,
            vms: 0,
            images: 0,
            kernels: 0,
        },
    };
    insta::assert_snapshot!("ping_result", wire(&ping));
    insta::assert_snapshot!("daemon_status", wire(&status));
}
