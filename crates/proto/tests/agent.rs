//! Golden snapshot of the daemon ↔ agent frame headers. A failure means the
//! agent protocol changed: review it, and bump `AGENT_PROTOCOL_VERSION` if
//! an agent baked into an existing image would misread it.

#![allow(clippy::unwrap_used)] // test code

use banger_proto::agent::{
    AgentErrorCode, CpuTimes, DiskUsage, Frame, GuestStats, ListeningPort, Message, encode,
};

#[test]
fn messages_are_pinned() {
    let messages = vec![
        Message::Hello {
            protocol: 1,
            version: "0.1.0".into(),
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
        Message::Error {
            id: Some(4),
            code: AgentErrorCode::NotFound,
            message: "no such file".into(),
        },
    ];
    let lines: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .collect();
    insta::assert_snapshot!("agent_messages", lines.join("\n"));
    let frame = encode(&Frame::with_body(Message::Stdout { id: 4 }, b"hi".to_vec()));
    insta::assert_snapshot!("agent_frame_bytes", format!("{frame:?}"));
}
