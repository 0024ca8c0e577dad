//! Bridged create benchmark (issue 4): `cargo bench -p banger --bench bridged`.
//!
//! Create time of a bridged VM with a warm TAP pool (`BANGER_TAP_POOL=2`)
//! vs an empty one (`BANGER_TAP_POOL=0`: every start makes its TAP through
//! banger-helper), in one run, interleaved (warm, empty, warm, ...), on
//! the same kernel and image, inside a network namespace with the real
//! helper (as in `tests/bridged_e2e.rs`). The daemon is restarted with the
//! other pool size before each create; a warm create starts once the pool
//! is full again.
//!
//! Printed per series (median of `BANGER_BENCH_BRIDGED_RUNS`, default 3):
//! the "attach network" stage (lease + TAP), create to the end of "launch
//! vmm" (everything before the guest boots), and the whole `vm create`
//! (to SSH answering and the host key pinned). Needs root. Results:
//! docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::netns::{Helper, TestNet};
use common::{World, cache_home, median};
use serde_json::Value;

fn set_env(w: &mut World, key: &'static str, value: PathBuf) {
    w.extra_env.retain(|(k, _)| *k != key);
    w.extra_env.push((key, value));
}

/// Milliseconds of `stage` in the operation that created `vm`, and the sum
/// of every stage up to and including it.
fn stage_ms(w: &World, vm: &str, stage: &str) -> (f64, f64) {
    let ops = w.banger_json(&["ops"]);
    let op = ops
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|o| o["target"] == vm && o["kind"] == "vm.create")
        .unwrap_or_else(|| panic!("no create op for {vm}: {ops}"));
    let mut upto = 0.0;
    for s in op["stages"].as_array().unwrap() {
        let ms = s["duration_ms"].as_f64().unwrap_or(0.0);
        upto += ms;
        if s["name"] == stage {
            return (ms, upto);
        }
    }
    panic!("no stage {stage:?} in {op}");
}

#[derive(Default)]
struct Series {
    attach_ms: Vec<f64>,
    to_launch_ms: Vec<f64>,
    total_s: Vec<f64>,
}

fn wait_pool(w: &World, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n: Value = w.banger_json(&["network"]);
        if n["idle_taps"].as_array().unwrap().len() >= want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the tap pool did not fill up to {want}");
}

fn main() {
    if !common::is_root() {
        println!("bridged benchmark skipped: needs root (namespaces, TAP devices)");
        return;
    }
    let runs: usize = std::env::var("BANGER_BENCH_BRIDGED_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let scratch = tempfile::tempdir().unwrap();
    let net = TestNet::new(scratch.path());
    let mut w = World::new();
    let helper = Helper::new(scratch.path(), &w, &net.ns);
    set_env(&mut w, "XDG_CACHE_HOME", cache_home());
    set_env(&mut w, "BANGER_ACCEL", PathBuf::from("tcg"));
    // Images are never built without the guest agent.
    set_env(&mut w, "BANGER_AGENT_BIN", common::static_agent());
    set_env(
        &mut w,
        "BANGER_HELPER_SOCKET",
        scratch.path().join("none.sock"),
    );
    println!("preparing the kernel and image (outside the namespace)...");
    w.banger_ok(&["vm", "create", "--name", "warmup", "--no-start"]);
    w.banger_ok(&["vm", "delete", "--force", "warmup"]);
    w.banger_ok(&["daemon", "stop"]);
    set_env(&mut w, "BANGER_HELPER_SOCKET", helper.socket.clone());
    w.wrapper = ["ip", "netns", "exec", net.ns.as_str()]
        .map(str::to_owned)
        .to_vec();

    let mut warm = Series::default();
    let mut empty = Series::default();
    for i in 0..runs {
        for (pool, series) in [(2usize, &mut warm), (0, &mut empty)] {
            let _ = w.banger(&["daemon", "stop"]);
            set_env(&mut w, "BANGER_TAP_POOL", PathBuf::from(pool.to_string()));
            wait_pool(&w, pool);
            let name = format!("p{pool}r{i}");
            let started = Instant::now();
            w.banger_ok(&["vm", "create", "--name", &name]);
            let total = started.elapsed().as_secs_f64();
            let (attach, _) = stage_ms(&w, &name, "attach network");
            let (_, to_launch) = stage_ms(&w, &name, "launch vmm");
            println!(
                "pool {pool}: {name}: attach network {attach:.0} ms, to launch {to_launch:.0} ms, create {total:.2} s"
            );
            series.attach_ms.push(attach);
            series.to_launch_ms.push(to_launch);
            series.total_s.push(total);
            w.banger_ok(&["vm", "delete", "--force", &name]);
        }
    }
    println!();
    println!("median of {runs} | attach network | create to launch | whole create");
    for (label, s) in [("warm pool (2)", &mut warm), ("empty pool (0)", &mut empty)] {
        println!(
            "{label:<15} | {:>9.1} ms | {:>11.1} ms | {:>8.2} s",
            median(&mut s.attach_ms),
            median(&mut s.to_launch_ms),
            median(&mut s.total_s)
        );
    }
    let _ = w.banger(&["daemon", "stop"]);
    drop(w);
    drop(helper);
    drop(net);
}
