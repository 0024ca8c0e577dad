//! Guest agent benchmark (issue 5): `cargo bench -p banger --bench agent`.
//!
//! In one run, on one TCG guest whose image has the agent: the round trip
//! of `banger vm exec NAME -- true` vs `banger vm ssh NAME -- true`
//! (interleaved, median of `BANGER_BENCH_AGENT_RUNS`, default 20), and the
//! agent's resident memory in the guest (`VmRSS` of `banger-agent`).
//! Needs root for the image build. Results: docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{World, median};

fn main() {
    if !common::is_root() {
        println!("agent benchmark skipped: the image build needs root");
        return;
    }
    let runs: usize = std::env::var("BANGER_BENCH_AGENT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut w = World::new();
    w.extra_env.push(("XDG_CACHE_HOME", common::cache_home()));
    w.extra_env.push(("BANGER_ACCEL", PathBuf::from("tcg")));
    w.extra_env
        .push(("BANGER_HELPER_SOCKET", w.root().join("no-helper.sock")));
    w.extra_env
        .push(("BANGER_AGENT_BIN", common::static_agent()));
    println!("building an image with the agent and booting it...");
    w.banger_ok(&["vm", "create", "--name", "bench"]);
    // Warm both paths once (host-key pin, agent connection).
    w.banger_ok(&["vm", "exec", "bench", "--", "true"]);
    w.banger_ok(&["vm", "ssh", "bench", "--", "true"]);
    let (mut exec, mut ssh) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        w.banger_ok(&["vm", "exec", "bench", "--", "true"]);
        exec.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        w.banger_ok(&["vm", "ssh", "bench", "--", "true"]);
        ssh.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let rss = w.banger_ok(&[
        "vm",
        "exec",
        "bench",
        "--",
        "sh",
        "-c",
        "grep VmRSS /proc/$(pidof banger-agent)/status",
    ]);
    let (e, s) = (median(&mut exec), median(&mut ssh));
    println!();
    println!("round trip of `true`, median of {runs} (interleaved):");
    println!(
        "  vm exec  {e:>8.1} ms   (min {:.1}, max {:.1})",
        exec[0],
        exec[runs - 1]
    );
    println!(
        "  vm ssh   {s:>8.1} ms   (min {:.1}, max {:.1})",
        ssh[0],
        ssh[runs - 1]
    );
    println!("  ssh/exec {:>8.2}x", s / e);
    println!("agent in the guest: {}", rss.trim());
    w.banger_ok(&["vm", "delete", "--force", "bench"]);
}
