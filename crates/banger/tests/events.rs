//! The daemon's event stream end to end, with the real bangerd and a real
//! guest under QEMU (TCG): a subscriber sees a create's start, stages and
//! end and the VM's state changes, in order, numbered one by one; after
//! reconnecting with its last number it gets exactly what it missed (a
//! stop and a start) and nothing twice; `banger events` prints the same
//! stream; a subscriber that never reads is dropped (the daemon's log
//! says so and the stream ends `stalled`) while bangerd's RSS stays flat
//! under thousands more events.
//!
//! Needs root (the default image is built with mmdebstrap); prints why
//! and passes vacuously without.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{RawConn, is_root, step, text};
use serde_json::Value;

/// Subscribes on a fresh connection; the answer and the connection.
fn subscribe(w: &common::World, params: Value) -> (Value, RawConn) {
    let mut conn = RawConn::connect(&w.socket()).unwrap();
    let request = serde_json::json!({"version": 1, "method": "events.subscribe", "params": params});
    let answer = conn.request(&request.to_string()).expect("an answer");
    let result = answer["result"].clone();
    assert!(result.is_object(), "{answer}");
    (result, conn)
}

/// The next line of a stream: an event (`{"event": ...}`) or the end.
fn next_frame(conn: &mut RawConn) -> Option<Value> {
    let mut line = String::new();
    match conn.reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(serde_json::from_str(&line).unwrap()),
    }
}

/// Events until (and with) the first for which `last` holds.
fn events_until(conn: &mut RawConn, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let frame = next_frame(conn).unwrap_or_else(|| panic!("stream ended after {seen:#?}"));
        let event = frame["event"].clone();
        assert!(event.is_object(), "not an event: {frame}");
        let done = last(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn consecutive(events: &[Value]) {
    let s = seqs(events);
    let first = s[0];
    assert_eq!(
        s,
        (first..first + s.len() as u64).collect::<Vec<_>>(),
        "numbered one by one"
    );
}

/// The VM states `events` show for `vm`, in order.
fn vm_states(events: &[Value], vm: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "object" && e["object"] == "vm" && e["name"] == vm)
        .filter_map(|e| Some(e["vm_state"].as_str()?.to_owned()))
        .collect()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_subscriber_sees_a_create_resumes_without_gaps_and_a_stalled_one_is_dropped() {
    if !is_root() {
        eprintln!("skipped: the default image is built with mmdebstrap, which needs root");
        return;
    }
    let mut w = common::vm_world();
    w.extra_env.push(("BANGER_EVENT_STALL", PathBuf::from("1")));
    w.banger_ok(&["ping"]);

    let t = step("a create: its start, stages and end, and the VM's states, in order");
    let (answer, mut conn) = subscribe(&w, serde_json::json!({}));
    let epoch = answer["epoch"].as_str().unwrap().to_owned();
    assert_eq!(answer["complete"], true);
    let out = w.banger(&["vm", "create", "--name", "ev"]);
    assert!(out.status.success(), "{}", text(&out));
    let events = events_until(&mut conn, |e| e["type"] == "op_ended");
    consecutive(&events);
    let op_id = events
        .iter()
        .find(|e| e["type"] == "op_started" && e["kind"] == "vm.create" && e["target"] == "ev")
        .expect("the create's start")["op_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let of_op: Vec<&Value> = events.iter().filter(|e| e["op_id"] == op_id).collect();
    assert_eq!(of_op.first().unwrap()["type"], "op_started");
    assert_eq!(of_op.last().unwrap()["type"], "op_ended");
    assert_eq!(of_op.last().unwrap()["state"], "succeeded");
    // The stages the stream showed are the operation's, in its order.
    let streamed: Vec<&str> = of_op
        .iter()
        .filter(|e| e["type"] == "op_stage")
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    let status: Value = serde_json::from_str(&w.banger_ok(&[
        "rpc",
        "op.status",
        &format!("{{\"op_id\":\"{op_id}\"}}"),
    ]))
    .unwrap();
    let recorded: Vec<&str> = status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, recorded);
    assert!(streamed.len() >= 3, "{streamed:?}");
    let states = vm_states(&events, "ev");
    assert_eq!(
        states.first().map(String::as_str),
        Some("creating"),
        "{states:?}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("running"),
        "{states:?}"
    );
    // The VM was running before the operation said it had ended.
    let running_at = events
        .iter()
        .position(|e| e["name"] == "ev" && e["vm_state"] == "running")
        .unwrap();
    let ended_at = events.iter().position(|e| e["type"] == "op_ended").unwrap();
    assert!(running_at < ended_at);
    let last_seen = *seqs(&events).last().unwrap();
    eprintln!("    {} events, {:?}", events.len(), t.elapsed());

    let t = step("gone while the VM stops and starts; back with since: exactly what it missed");
    drop(conn);
    w.banger_ok(&["vm", "stop", "ev"]);
    w.banger_ok(&["vm", "start", "ev"]);
    let (again, mut conn) = subscribe(&w, serde_json::json!({"since": last_seen, "epoch": epoch}));
    assert_eq!(again["complete"], true, "{again}");
    let replayed = again["replayed"].as_u64().unwrap();
    assert!(replayed >= 2, "{again}");
    let missed: Vec<Value> = (0..replayed)
        .map(|_| next_frame(&mut conn).unwrap()["event"].clone())
        .collect();
    assert_eq!(seqs(&missed)[0], last_seen + 1, "nothing missed");
    consecutive(&missed);
    assert_eq!(
        again["last_seq"].as_u64().unwrap(),
        last_seen + replayed,
        "nothing repeated"
    );
    let states = vm_states(&missed, "ev");
    assert!(
        states.contains(&"stopped".to_owned()) && states.last().unwrap() == "running",
        "{states:?}"
    );
    // Live events follow the replay with the next number.
    w.banger_ok(&["vm", "stop", "ev"]);
    let live = events_until(&mut conn, |e| e["vm_state"] == "stopped");
    assert_eq!(seqs(&live)[0], last_seen + replayed + 1);
    drop(conn);
    eprintln!("    {:?}", t.elapsed());

    let t = step("banger events --json --since: the same events");
    let lines = w.banger_json_lines(&[
        "events",
        "--since",
        &last_seen.to_string(),
        "--epoch",
        &epoch,
        "--count",
        "2",
    ]);
    assert_eq!(lines[0]["subscribed"]["epoch"], epoch);
    assert_eq!(lines[1]["event"], missed[0]);
    assert_eq!(lines[2]["event"], missed[1]);
    let out = w.banger(&["events", "--since", &last_seen.to_string(), "--count", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let first_line = String::from_utf8_lossy(&out.stdout);
    assert!(
        first_line.starts_with(&format!("#{} ", last_seen + 1)),
        "{first_line}"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("a subscriber that never reads is dropped; bangerd's RSS stays flat");
    let pid = w.daemon_pid().unwrap();
    let (_, mut stalled) = subscribe(&w, serde_json::json!({}));
    let mut editor = RawConn::connect(&w.socket()).unwrap();
    let mut edit = |n: u32| {
        let memory = if n % 2 == 0 { 512 } else { 768 };
        let answer = editor
            .request(&format!(
                r#"{{"version":1,"method":"vm.edit","params":{{"name":"ev","memory_mib":{memory}}}}}"#
            ))
            .unwrap();
        assert!(answer["result"].is_object(), "{answer}");
    };
    // Warm-up (the store's caches), then the baseline.
    for n in 0..300 {
        edit(n);
    }
    let before = rss_kib(pid);
    let dropped = "dropping an event subscriber that stopped reading";
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut n = 300;
    while !w.log_text().contains(dropped) {
        assert!(Instant::now() < deadline, "not dropped after {n} events");
        for _ in 0..100 {
            edit(n);
            n += 1;
        }
    }
    // Read now (within the grace the daemon gives the end frame): what
    // was buffered, then the end, naming the stall.
    let (mut last, mut last_event) = (None, 0);
    while let Some(frame) = next_frame(&mut stalled) {
        if let Some(seq) = frame["event"]["seq"].as_u64() {
            last_event = seq;
        }
        last = Some(frame);
    }
    let last = last.unwrap();
    assert_eq!(last["end"]["reason"], "stalled", "{last}");
    assert_eq!(last["end"]["last_seq"], last_event, "{last}");
    for _ in 0..5000 {
        edit(n);
        n += 1;
    }
    let after = rss_kib(pid);
    eprintln!(
        "    dropped after about {n} events; RSS {before} KiB -> {after} KiB after 5000 more"
    );
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // The daemon still serves.
    w.banger_ok(&["vm", "list"]);
    eprintln!("    {:?}", t.elapsed());

    w.banger_ok(&["vm", "delete", "ev"]);
}
