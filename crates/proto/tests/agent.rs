//! Golden snapshot of the daemon ↔ agent frame headers. A failure means the
//! agent protocol changed: review it, and bump `AGENT_PROTOCOL_VERSION` if
//! an agent baked into an existing image would misread it.

#![allow(clippy::unwrap_used)] // test code

use banger_proto::agent::{
    AgentErrorCode, CpuTimes, DiskUsage, Frame, FrameDecoder, GuestNet, GuestStats, HostKeyPair,
    ListeningPort, Message, capability, encode,
};

/// A key pair shaped as `ssh-keygen -t ed25519 -N '' -C ''` writes it
/// (not a real key).
fn key_pair() -> HostKeyPair {
    HostKeyPair {
        private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\n\
            b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n\
            QyNTUxOQAAACBXkXq1==\n\
            -----END OPENSSH PRIVATE KEY-----\n"
            .into(),
        public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFeRerU".into(),
    }
}

/// One message of every kind.
fn messages() -> Vec<Message> {
    vec![
        Message::Hello {
            protocol: 1,
            version: "0.1.0".into(),
            capabilities: Vec::new(),
        },
        Message::Hello {
            protocol: 1,
            version: "0.2.0".into(),
            capabilities: capability::ALL.iter().map(|c| (*c).to_owned()).collect(),
        },
        Message::Health { id: 1 },
        Message::Stats { id: 2 },
        Message::Ports { id: 3 },
        Message::Exec {
            id: 4,
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            env: vec![("TERM".into(), "xterm".into())],
            cwd: Some("/root".into()),
            tty: true,
            rows: 24,
            cols: 80,
        },
        Message::Stdin { id: 4 },
        Message::Signal {
            id: 4,
            signal: "INT".into(),
        },
        Message::Resize {
            id: 4,
            rows: 50,
            cols: 120,
        },
        Message::WriteFile {
            id: 5,
            path: "/root/f".into(),
            mode: 0o644,
        },
        Message::ReadFile {
            id: 6,
            path: "/root/f".into(),
        },
        Message::WriteTree {
            id: 11,
            path: "/root".into(),
            name: "src".into(),
        },
        Message::ReadTree {
            id: 12,
            path: "/root/src".into(),
        },
        Message::SetTime {
            id: 7,
            unix_ns: 1_700_000_000_123_456_789,
        },
        Message::Freeze {
            id: 8,
            timeout_ms: 30_000,
        },
        Message::Thaw { id: 9 },
        Message::Identity {
            id: 10,
            hostname: "fork-1".into(),
            unix_ns: 1_700_000_000_000_000_000,
            net: Some(GuestNet {
                mac: "52:54:00:12:34:56".into(),
                address_cidr: "10.0.2.15/24".into(),
                gateway: "10.0.2.2".into(),
                dns: vec!["10.0.2.3".into()],
            }),
            new_host_key: true,
            host_key: None,
        },
        Message::Identity {
            id: 11,
            hostname: "fork-2".into(),
            unix_ns: 1_700_000_000_000_000_000,
            net: None,
            new_host_key: false,
            host_key: None,
        },
        Message::Identity {
            id: 13,
            hostname: "fork-3".into(),
            unix_ns: 1_700_000_000_000_000_000,
            net: None,
            new_host_key: true,
            host_key: Some(key_pair()),
        },
        Message::FileData { id: 5 },
        Message::FileEnd { id: 5 },
        Message::HealthOk {
            id: 1,
            uptime_s: 12.5,
        },
        Message::StatsReply {
            id: 2,
            stats: GuestStats {
                uptime_s: 12.5,
                load: [0.1, 0.2, 0.3],
                cpu: CpuTimes {
                    busy: 100,
                    idle: 900,
                },
                memory_total_bytes: 1 << 30,
                memory_available_bytes: 1 << 29,
                disks: vec![DiskUsage {
                    mount: "/".into(),
                    device: "/dev/vda".into(),
                    total_bytes: 1 << 30,
                    used_bytes: 1 << 28,
                }],
            },
        },
        Message::PortsReply {
            id: 3,
            ports: vec![ListeningPort {
                proto: "tcp".into(),
                address: "0.0.0.0".into(),
                port: 8080,
                pid: Some(321),
                process: Some("python3".into()),
            }],
        },
        Message::Started { id: 4, pid: 321 },
        Message::StdinRead {
            id: 4,
            bytes: 65536,
        },
        Message::Stdout { id: 4 },
        Message::Stderr { id: 4 },
        Message::Exited {
            id: 4,
            code: Some(3),
            signal: None,
        },
        Message::FileInfo {
            id: 6,
            mode: 0o644,
            size: 42,
        },
        Message::Done { id: 5 },
        Message::TreeDone {
            id: 11,
            root: "/root/src".into(),
            entries: 3,
            bytes: 42,
        },
        Message::IdentityDone {
            id: 10,
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE root@fork-1".into(),
        },
        Message::Error {
            id: Some(4),
            code: AgentErrorCode::NotFound,
            message: "no such file".into(),
        },
        Message::Error {
            id: Some(12),
            code: AgentErrorCode::Unsupported,
            message: "unknown request type \"teleport\"".into(),
        },
    ]
}

#[test]
fn messages_are_pinned() {
    let messages = messages();
    let lines: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .collect();
    insta::assert_snapshot!("agent_messages", lines.join("\n"));
    let frame = encode(&Frame::with_body(Message::Stdout { id: 4 }, b"hi".to_vec()));
    insta::assert_snapshot!("agent_frame_bytes", format!("{frame:?}"));
}

#[test]
fn every_kind_is_listed_and_is_the_wire_type() {
    let messages = messages();
    let mut seen: Vec<&str> = Vec::new();
    for m in &messages {
        let json: serde_json::Value = serde_json::to_value(m).unwrap();
        assert_eq!(json["type"], m.kind(), "{m:?}");
        assert!(Message::KINDS.contains(&m.kind()), "{m:?}");
        if !seen.contains(&m.kind()) {
            seen.push(m.kind());
        }
    }
    let mut kinds = Message::KINDS.to_vec();
    kinds.sort_unstable();
    seen.sort_unstable();
    assert_eq!(seen, kinds, "messages() has one message of every kind");
}

#[test]
fn an_identity_with_a_key_pair_round_trips_and_one_without_reads_as_none() {
    let msg = Message::Identity {
        id: 3,
        hostname: "fork-1".into(),
        unix_ns: 1_700_000_000_000_000_000,
        net: None,
        new_host_key: true,
        host_key: Some(key_pair()),
    };
    key_pair().check().unwrap();
    let mut d = FrameDecoder::new();
    d.push(&encode(&Frame::with_body(msg.clone(), vec![7; 64])));
    let frame = d.next_frame().unwrap().unwrap();
    assert_eq!(frame.msg, msg);
    assert_eq!(frame.body, vec![7; 64]);
    // What an older daemon sends: no key pair.
    let m: Message = serde_json::from_str(
        r#"{"type":"identity","id":4,"hostname":"a","unix_ns":1,"new_host_key":true}"#,
    )
    .unwrap();
    assert!(
        matches!(
            m,
            Message::Identity {
                new_host_key: true,
                host_key: None,
                ..
            }
        ),
        "{m:?}"
    );
    // The private key stays out of logs of the request.
    let shown = format!("{msg:?}");
    assert!(!shown.contains("b3BlbnNzaC1rZXkt"), "{shown}");
}

#[test]
fn an_old_daemons_hello_reads_as_no_capabilities() {
    let m: Message =
        serde_json::from_str(r#"{"type":"hello","protocol":1,"version":"0.1.0"}"#).unwrap();
    assert_eq!(
        m,
        Message::Hello {
            protocol: 1,
            version: "0.1.0".into(),
            capabilities: Vec::new()
        }
    );
    // An error code a peer does not know reads as `unknown`.
    let m: Message =
        serde_json::from_str(r#"{"type":"error","code":"brand_new","message":"x"}"#).unwrap();
    assert!(
        matches!(
            m,
            Message::Error {
                code: AgentErrorCode::Unknown,
                ..
            }
        ),
        "{m:?}"
    );
}
