//! Golden snapshots of the daemon ↔ helper protocol. A failure means the
//! protocol changed: review the new snapshot and bump
//! `HELPER_PROTOCOL_VERSION` if an old helper would misread it.

#![allow(clippy::unwrap_used)] // test code

use std::path::PathBuf;

use banger_proto::helper::{
    DmSupport, EgressEntry, EgressNet, EgressPort, EgressRuleMode, EgressRules,
    HELPER_PROTOCOL_VERSION, HelperCall, HelperConfig, HelperError, HelperErrorCode, HelperInfo,
    HelperReply, HelperRequest, HelperResponse, TapInfo,
};

fn request(call: HelperCall) -> HelperRequest {
    HelperRequest {
        version: HELPER_PROTOCOL_VERSION,
        op_id: "op-a1b2c3".into(),
        call,
    }
}

#[test]
fn every_call_round_trips_and_is_pinned() {
    let calls = vec![
        HelperCall::Ping,
        HelperCall::BridgeEnsure {
            name: "banger0".into(),
        },
        HelperCall::BridgeDelete {
            name: "banger0".into(),
        },
        HelperCall::TapCreate {
            name: "bgtap0".into(),
            owner_uid: 1000,
            bridge: "banger0".into(),
        },
        HelperCall::TapDelete {
            name: "bgtap0".into(),
        },
        HelperCall::TapList,
        HelperCall::NatEnsure {
            subnet: "10.77.0.0/24".into(),
        },
        HelperCall::NatRemove {
            subnet: "10.77.0.0/24".into(),
        },
        HelperCall::LoopAttach {
            path: PathBuf::from("/home/u/.local/share/banger/vms/x/root.ext4"),
            read_only: true,
        },
        HelperCall::LoopDetach {
            device: "/dev/loop3".into(),
        },
        HelperCall::DmSnapshotCreate {
            name: "banger-x".into(),
            origin: "/dev/loop3".into(),
            cow: "/dev/loop4".into(),
        },
        HelperCall::DmRemove {
            name: "banger-x".into(),
        },
        HelperCall::SignalVmm {
            pid: 4242,
            signal: "TERM".into(),
        },
        HelperCall::ChownSocket {
            path: PathBuf::from("/run/user/1000/banger/vms/x/vsock.sock"),
        },
        HelperCall::DnsSocket,
        HelperCall::EgressApply {
            tap: "bgtap0".into(),
            addr: "10.77.0.2".parse().unwrap(),
            rules: EgressRules {
                mode: EgressRuleMode::Allow,
                nets: vec![EgressNet {
                    addr: "203.0.113.0".parse().unwrap(),
                    prefix: 24,
                }],
                ports: vec![EgressPort {
                    addr: "198.51.100.7".parse().unwrap(),
                    port: 443,
                }],
            },
        },
        HelperCall::EgressApply {
            tap: "bgtap0".into(),
            addr: "10.77.0.2".parse().unwrap(),
            rules: EgressRules {
                mode: EgressRuleMode::Internet,
                nets: vec![],
                ports: vec![],
            },
        },
        HelperCall::EgressResolved {
            tap: "bgtap0".into(),
            addr: "10.77.0.2".parse().unwrap(),
            entries: vec![
                EgressEntry {
                    addr: "198.51.100.9".parse().unwrap(),
                    port: None,
                },
                EgressEntry {
                    addr: "198.51.100.10".parse().unwrap(),
                    port: Some(443),
                },
            ],
            ttl_secs: 300,
        },
        HelperCall::EgressClear {
            tap: "bgtap0".into(),
            addr: "10.77.0.2".parse().unwrap(),
        },
    ];
    let mut lines = Vec::new();
    for call in calls {
        let req = request(call);
        let line = serde_json::to_string(&req).unwrap();
        let back: HelperRequest = serde_json::from_str(&line).unwrap();
        assert_eq!(back, req);
        lines.push(line);
    }
    insta::assert_snapshot!("helper_requests", lines.join("\n"));
}

#[test]
fn replies_and_errors_are_pinned() {
    let replies = [
        HelperResponse::Result(HelperReply::Pong(HelperInfo {
            version: "0.1.0".into(),
            protocol: 1,
            pid: 77,
            bridge: "banger0".into(),
            subnet: "10.77.0.0/24".into(),
            gateway: "10.77.0.1".into(),
            device_mapper: Some(DmSupport::Missing),
        })),
        HelperResponse::Result(HelperReply::Done),
        HelperResponse::Result(HelperReply::Taps {
            taps: vec![TapInfo {
                name: "bgtap0".into(),
                master: Some("banger0".into()),
                owner_uid: Some(1000),
            }],
        }),
        HelperResponse::Result(HelperReply::Device {
            path: "/dev/loop3".into(),
        }),
        HelperResponse::Result(HelperReply::Socket),
        HelperResponse::Error(HelperError {
            code: HelperErrorCode::InvalidName,
            message: "tap name \"eth0\" must be bgtap plus digits".into(),
            op_id: Some("op-a1b2c3".into()),
        }),
        HelperResponse::Error(HelperError {
            code: HelperErrorCode::Unsupported,
            message: "device-mapper is not available on this host".into(),
            op_id: Some("op-a1b2c3".into()),
        }),
    ];
    let lines: Vec<String> = replies
        .iter()
        .map(|r| {
            let line = serde_json::to_string(r).unwrap();
            assert_eq!(&serde_json::from_str::<HelperResponse>(&line).unwrap(), r);
            line
        })
        .collect();
    insta::assert_snapshot!("helper_responses", lines.join("\n"));
}

#[test]
fn a_pong_from_an_older_helper_says_nothing_of_device_mapper() {
    let line = r#"{"result":{"kind":"pong","version":"0.1.0","protocol":1,"pid":7,"bridge":"banger0","subnet":"10.77.0.0/24","gateway":"10.77.0.1"}}"#;
    match serde_json::from_str::<HelperResponse>(line).unwrap() {
        HelperResponse::Result(HelperReply::Pong(info)) => assert_eq!(info.device_mapper, None),
        other => panic!("{other:?}"),
    }
    let later = r#"{"result":{"kind":"pong","version":"9","protocol":1,"pid":7,"bridge":"b","subnet":"s","gateway":"g","device_mapper":"from_the_future"}}"#;
    match serde_json::from_str::<HelperResponse>(later).unwrap() {
        HelperResponse::Result(HelperReply::Pong(info)) => {
            assert_eq!(info.device_mapper, Some(DmSupport::Unknown))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_error_codes_and_calls() {
    let r: HelperResponse =
        serde_json::from_str(r#"{"error":{"code":"from_the_future","message":"x"}}"#).unwrap();
    assert!(matches!(r, HelperResponse::Error(e) if e.code == HelperErrorCode::Unknown));
    assert!(
        serde_json::from_str::<HelperRequest>(
            r#"{"version":1,"op_id":"op-x","call":"format_disk","args":{}}"#
        )
        .is_err()
    );
}

#[test]
fn config_defaults_and_strictness() {
    let c: HelperConfig = serde_json::from_str(r#"{"allowed_uids":[1000]}"#).unwrap();
    assert_eq!(c, HelperConfig::for_uids(vec![1000]));
    insta::assert_snapshot!(
        "helper_config_default",
        serde_json::to_string_pretty(&c).unwrap()
    );
    assert!(serde_json::from_str::<HelperConfig>(r#"{"allowed_uids":[1],"typo":1}"#).is_err());
}
