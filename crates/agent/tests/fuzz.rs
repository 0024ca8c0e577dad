//! Bounded-time fuzzing of the agent's input handling, in process: random
//! bytes and mutated valid frames go to [`Agent::feed`] with a sink that
//! only counts. Nothing may panic (in the dispatcher or any thread it
//! starts), and a valid Health is answered afterwards. The clock, freeze
//! and identity requests act on a [`FakeHost`]: mutated input never
//! touches the machine running the test.
//!
//! `BANGER_FUZZ_SECS` sets the duration (default 3), `BANGER_FUZZ_SEED`
//! replays a run (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_agent::fake::FakeHost;
use banger_agent::{Agent, Sink};
use banger_proto::agent::{
    AGENT_PROTOCOL_VERSION, FRAME_MAGIC, FRAME_PREFIX, Frame, MAX_BODY_BYTES, MAX_HEADER_BYTES,
    Message, encode,
};

static PANICKED: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Recorder {
    frames: AtomicU64,
    health: Mutex<HashSet<u64>>,
}

impl Sink for Recorder {
    fn send(&self, frame: Frame) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        if let Message::HealthOk { id, .. } = frame.msg {
            self.health.lock().unwrap().insert(id);
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Valid frames the mutations start from. Exec runs only `true`. Paths
/// are five directories deep in the test's own directory: a mutation that
/// turns a `/` into another byte joins two names, so escaping into the
/// temporary directory would take more mutations than one input gets
/// (at most 3); a mutated path names a missing directory at worst.
fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let f = |m: Message| encode(&Frame::new(m));
    let fb = |m: Message, b: &[u8]| encode(&Frame::with_body(m, b.to_vec()));
    vec![
        f(Message::Hello {
            protocol: AGENT_PROTOCOL_VERSION,
            version: "fuzz".into(),
            capabilities: Vec::new(),
        }),
        f(Message::Hello {
            protocol: AGENT_PROTOCOL_VERSION + 1,
            version: "fuzz".into(),
            capabilities: Vec::new(),
        }),
        f(Message::Health { id: 1 }),
        f(Message::Stats { id: 2 }),
        f(Message::Ports { id: 3 }),
        f(Message::Exec {
            id: 4,
            argv: vec!["true".into()],
            env: Vec::new(),
            cwd: None,
            tty: false,
            rows: 0,
            cols: 0,
        }),
        fb(Message::Stdin { id: 4 }, b"input"),
        f(Message::Signal {
            id: 4,
            signal: "TERM".into(),
        }),
        f(Message::Resize {
            id: 4,
            rows: 24,
            cols: 80,
        }),
        f(Message::WriteFile {
            id: 5,
            path: format!("{dir}/upload"),
            mode: 0o644,
        }),
        fb(Message::FileData { id: 5 }, b"file contents"),
        f(Message::FileEnd { id: 5 }),
        f(Message::ReadFile {
            id: 6,
            path: format!("{dir}/small"),
        }),
        f(Message::SetTime {
            id: 8,
            unix_ns: 1_700_000_000_000_000_000,
        }),
        f(Message::Freeze {
            id: 9,
            timeout_ms: 50,
        }),
        f(Message::Thaw { id: 10 }),
        fb(
            Message::Identity {
                id: 11,
                hostname: "fuzzed".into(),
                unix_ns: 1_700_000_000_000_000_000,
                net: Some(banger_proto::agent::GuestNet {
                    mac: "52:54:00:12:34:56".into(),
                    address_cidr: "10.0.2.15/24".into(),
                    gateway: "10.0.2.2".into(),
                    dns: vec!["10.0.2.3".into()],
                }),
                new_host_key: true,
                host_key: None,
            },
            &[7u8; 64],
        ),
        f(Message::Exited {
            id: 7,
            code: Some(1),
            signal: None,
        }),
        f(Message::Error {
            id: None,
            code: banger_proto::agent::AgentErrorCode::Failed,
            message: "host error".into(),
        }),
    ]
}

fn mutate(rng: &mut Rng, frame: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(6) {
            // Bit flip.
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            // A random byte.
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            // Truncation.
            2 => v.truncate(rng.below(v.len() + 1)),
            // A length field changed (header or body).
            3 if v.len() >= FRAME_PREFIX => {
                let at = if rng.below(2) == 0 { 4 } else { 8 };
                let n: u32 = match rng.below(5) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => (MAX_HEADER_BYTES + 1) as u32,
                    3 => (MAX_BODY_BYTES + 1) as u32,
                    _ => rng.below(200) as u32,
                };
                v[at..at + 4].copy_from_slice(&n.to_be_bytes());
            }
            // Garbage before or after.
            4 => {
                let n = rng.below(40);
                let g = rng.bytes(n);
                if rng.below(2) == 0 {
                    v.splice(0..0, g);
                } else {
                    v.extend_from_slice(&g);
                }
            }
            // A stray magic somewhere.
            _ => {
                let i = rng.below(v.len() + 1);
                v.splice(i..i, FRAME_MAGIC);
            }
        }
    }
    v
}

#[test]
fn random_input_never_panics_and_health_is_answered_after() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        prev(info);
    }));

    let secs: f64 = std::env::var("BANGER_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = std::env::var("BANGER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("fuzz seed {seed} for {secs} s (replay: BANGER_FUZZ_SEED={seed})");
    eprintln!("fuzz seed {seed} for {secs} s (replay: BANGER_FUZZ_SEED={seed})");

    let prefix = format!("banger-agent-fuzz-{}", std::process::id());
    let root = std::env::temp_dir().join(&prefix);
    let dir = root.join("1/2/3/4/5");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("small"), b"small file").unwrap();
    let corpus = corpus(&dir.display().to_string());

    // Set BANGER_FUZZ_LOG to see the agent's log lines (very many).
    banger_agent::log::set_quiet(std::env::var_os("BANGER_FUZZ_LOG").is_none());
    let sink = Arc::new(Recorder::default());
    let mut agent = Agent::new(sink.clone(), Arc::new(FakeHost::guest()));
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut rounds = 0u64;
    let mut fed = 0usize;
    while Instant::now() < deadline {
        let input = match rng.below(10) {
            0..=2 => {
                let n = rng.below(300);
                rng.bytes(n)
            }
            3 => corpus[rng.below(corpus.len())].clone(),
            _ => {
                let base = rng.below(corpus.len());
                mutate(&mut rng, &corpus[base])
            }
        };
        fed += input.len();
        // Fed in pieces, as reads from the port would return it.
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len());
            agent.feed(&rest[..n]);
            rest = &rest[n..];
        }
        rounds += 1;
    }
    println!(
        "{rounds} inputs, {fed} bytes, {} frames out",
        sink.frames.load(Ordering::Relaxed)
    );

    // Whatever state the input left (a frame waiting for its body, a
    // peer of another protocol), hello + health gets through: at the
    // latest once a pending frame's largest possible rest is consumed.
    let hello = encode(&Frame::new(Message::Hello {
        protocol: AGENT_PROTOCOL_VERSION,
        version: "fuzz".into(),
        capabilities: Vec::new(),
    }));
    let limit = FRAME_PREFIX + MAX_HEADER_BYTES + MAX_BODY_BYTES + 2 * 1024;
    let mut sent = 0usize;
    let mut answered = false;
    let mut id = u64::MAX / 2;
    while sent <= limit {
        let health = encode(&Frame::new(Message::Health { id }));
        agent.feed(&hello);
        agent.feed(&health);
        sent += hello.len() + health.len();
        if sink.health.lock().unwrap().contains(&id) {
            answered = true;
            break;
        }
        id += 1;
    }
    assert!(
        answered,
        "no health answer after {sent} bytes (seed {seed})"
    );

    // Let threads started by the input (exec of `true`, file transfers)
    // finish before looking for their panics.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !PANICKED.load(Ordering::SeqCst),
        "a thread panicked (seed {seed})"
    );
    let _ = std::fs::remove_dir_all(&root);
    // Nothing was written outside the test's directory.
    let strays: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(&prefix))
        })
        .collect();
    for p in &strays {
        let _ = std::fs::remove_file(p);
    }
    assert!(
        strays.is_empty(),
        "files written outside the test's directory: {strays:?} (seed {seed})"
    );
}
