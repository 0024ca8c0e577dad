//! RPC benchmark: `cargo bench -p banger --bench rpc`.
//!
//! Prints, in one run against a private daemon: ping round-trip p50/p99
//! over 10,000 requests on one connection and over 10,000 new connections,
//! the daemon's idle RSS, and the whole-process wall time of `banger ping`
//! against the warm daemon. Targets (issue 2): p99 < 1 ms on one
//! connection, idle RSS < 15 MiB, `banger ping` < 10 ms.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{RawConn, World};

const PING: &str = r#"{"version":1,"method":"ping"}"#;

fn main() {
    let requests: usize = std::env::var("BANGER_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let cli_runs: usize = std::env::var("BANGER_BENCH_CLI_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);

    let world = World::new();
    let started = Instant::now();
    let first = world.banger_json(&["ping"]);
    let cold_start = started.elapsed();
    let pid = first["pid"].as_i64().unwrap();

    // Warm up, then one connection.
    let mut conn = RawConn::connect(&world.socket()).unwrap();
    for _ in 0..1000 {
        conn.request(PING).unwrap();
    }
    let mut one_conn = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        conn.request(PING).unwrap();
        one_conn.push(t.elapsed());
    }
    drop(conn);

    // A new connection per request (connect + request + answer).
    let mut new_conn = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let mut c = RawConn::connect(&world.socket()).unwrap();
        c.request(PING).unwrap();
        new_conn.push(t.elapsed());
    }

    // Idle RSS after the load, once the daemon has settled.
    std::thread::sleep(Duration::from_secs(2));
    let rss_kib = rss_kib(pid).unwrap();

    // Whole-process `banger ping` (fork, exec, handshake, exit).
    let mut cli = Vec::with_capacity(cli_runs);
    for _ in 0..cli_runs {
        let t = Instant::now();
        let out = world.banger(&["ping"]);
        cli.push(t.elapsed());
        assert!(out.status.success());
    }

    let p99_one = pct(&mut one_conn, 99.0);
    let cli_p50 = pct(&mut cli, 50.0);
    println!("banger rpc benchmark (daemon pid {pid}, {requests} requests per series)");
    println!(
        "  first `banger ping` incl. daemon start: {:>8.2} ms",
        ms(cold_start)
    );
    println!(
        "  ping rtt, one connection:   p50 {:>7.1} us  p99 {:>7.1} us   target p99 < 1000 us  {}",
        us(pct(&mut one_conn, 50.0)),
        us(p99_one),
        verdict(p99_one < Duration::from_millis(1))
    );
    println!(
        "  ping rtt, new connections:  p50 {:>7.1} us  p99 {:>7.1} us",
        us(pct(&mut new_conn, 50.0)),
        us(pct(&mut new_conn, 99.0))
    );
    println!(
        "  daemon idle rss:            {:>7.1} MiB                target < 15 MiB      {}",
        rss_kib as f64 / 1024.0,
        verdict(rss_kib < 15 * 1024)
    );
    println!(
        "  `banger ping` process:      p50 {:>7.2} ms  p99 {:>7.2} ms   target p50 < 10 ms   {}",
        ms(cli_p50),
        ms(pct(&mut cli, 99.0)),
        verdict(cli_p50 < Duration::from_millis(10))
    );
}

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let idx = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[idx]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn rss_kib(pid: i64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
