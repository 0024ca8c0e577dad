//! Bad input on the raw socket: every case gets its typed error (or, for an
//! oversize request, a closed connection), and `ping` keeps answering on
//! another connection throughout and after. Clients that half-close after
//! their request (as `socat` and `nc -N` do) get their answers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{RawConn, World, error_code};

const PING: &str = r#"{"version":1,"method":"ping"}"#;

/// Starts a daemon with a 1 s read timeout so stalls are seen quickly.
fn world() -> World {
    let mut w = World::new();
    w.start_daemon(&["--read-timeout", "1"]);
    w
}

fn assert_ping(world: &World, within: Duration) {
    let started = Instant::now();
    let mut c = RawConn::connect(&world.socket()).unwrap();
    let answer = c.request(PING).expect("ping answered");
    assert!(answer["result"]["pid"].is_u64(), "{answer}");
    let took = started.elapsed();
    assert!(took < within, "ping took {took:?}");
}

#[test]
fn typed_errors_for_bad_requests_on_one_connection() {
    let world = world();
    let mut c = RawConn::connect(&world.socket()).unwrap();
    let cases = [
        ("{not json", "bad_request"),
        ("[1,2,3]", "bad_request"),
        (r#"{"version":1}"#, "bad_request"),
        (r#"{"version":7,"method":"ping"}"#, "bad_version"),
        (r#"{"version":1,"method":"vm.fly"}"#, "unknown_method"),
        (
            r#"{"version":1,"method":"ping","params":"abc"}"#,
            "bad_params",
        ),
        (
            r#"{"version":1,"method":"daemon.status","params":[1]}"#,
            "bad_params",
        ),
        (
            r#"{"version":1,"method":"ping","op_id":"op-bad id"}"#,
            "bad_request",
        ),
    ];
    for (line, code) in cases {
        let answer = c
            .request(line)
            .unwrap_or_else(|| panic!("no answer to {line}"));
        assert_eq!(error_code(&answer), code, "{line} -> {answer}");
        let op_id = answer["error"]["op_id"].as_str().unwrap();
        assert!(op_id.starts_with("op-") && op_id.len() >= 9, "{answer}");
        assert_ping(&world, Duration::from_secs(1));
    }
    // Invalid UTF-8 is a bad request too, not a dropped connection.
    c.writer.write_all(b"\xff\xfe{}\n").unwrap();
    assert_eq!(error_code(&c.read_answer().unwrap()), "bad_request");
    // The connection still serves valid requests after all that.
    assert!(c.request(PING).unwrap()["result"].is_object());
    // Errors carry the caller's op id when it gave one.
    let answer = c
        .request(r#"{"version":9,"method":"ping","op_id":"op-mine123"}"#)
        .unwrap();
    assert_eq!(answer["error"]["op_id"], "op-mine123");
}

#[test]
fn an_oversize_request_is_refused_and_the_connection_closed() {
    let world = world();
    let mut c = RawConn::connect(&world.socket()).unwrap();
    let big = format!(
        r#"{{"version":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    // The daemon may close before we finish writing: that is fine.
    let _ = c.writer.write_all(big.as_bytes());
    let _ = c.writer.write_all(b"\n");
    // Closed without an answer is also allowed.
    if let Some(answer) = c.read_answer() {
        assert_eq!(error_code(&answer), "bad_request", "{answer}");
        assert!(c.read_answer().is_none(), "connection must be closed");
    }
    assert_ping(&world, Duration::from_secs(1));
}

#[test]
fn a_stalled_half_request_is_dropped_without_delaying_others() {
    let world = world();
    let mut stalled = RawConn::connect(&world.socket()).unwrap();
    stalled.writer.write_all(br#"{"version":1,"meth"#).unwrap();
    // Others are served at once while it stalls.
    for _ in 0..5 {
        assert_ping(&world, Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(100));
    }
    // With a 1 s read timeout it is dropped within 1-2 s.
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = stalled.reader.get_mut().read(&mut buf).unwrap();
    assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        world
            .log_text()
            .contains("request incomplete after read timeout")
    );
    assert_ping(&world, Duration::from_secs(1));
}

#[test]
fn two_hundred_concurrent_clients() {
    let world = world();
    let socket = world.socket();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = RawConn::connect(&socket).unwrap();
                let ok = c.request(PING).unwrap();
                assert!(ok["result"]["pid"].is_u64(), "client {i}: {ok}");
                let bad = c.request(r#"{"version":1,"method":"nope"}"#).unwrap();
                assert_eq!(error_code(&bad), "unknown_method", "client {i}");
                let status = c
                    .request(r#"{"version":1,"method":"daemon.status"}"#)
                    .unwrap();
                assert_eq!(status["result"]["store"]["schema_version"], 9);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_ping(&world, Duration::from_secs(1));
    assert!(!world.log_text().contains("panicked"));
}

/// One connection per ping, each shutting down its write side right after
/// the request: every ping is answered, then the daemon closes. Four
/// clients run side by side, 250 pings each.
#[test]
fn a_thousand_half_closing_clients_each_get_their_ping_answered() {
    const CLIENTS: usize = 4;
    const PINGS: usize = 250;
    let world = world();
    let socket = world.socket();
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for i in 0..PINGS {
                    let mut s = UnixStream::connect(&socket).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.write_all(format!("{PING}\n").as_bytes()).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                    // Everything up to the daemon's close: one answer line.
                    let mut all = String::new();
                    s.read_to_string(&mut all)
                        .unwrap_or_else(|e| panic!("client {client}, ping {i}: {e}"));
                    let lines: Vec<&str> = all.lines().collect();
                    assert_eq!(lines.len(), 1, "client {client}, ping {i}: {all:?}");
                    let answer: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
                    assert!(
                        answer["result"]["pid"].is_u64(),
                        "client {client}, ping {i}: {answer}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = started.elapsed();
    eprintln!("{} half-closed pings answered in {took:?}", CLIENTS * PINGS);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        !world.log_text().contains("cancelling its request"),
        "a ping was cancelled"
    );
    assert_ping(&world, Duration::from_secs(1));
}
