//! MCP benchmark (issue 14): `cargo bench -p banger --bench mcp`.
//!
//! One command in a fresh, disposable VM, end to end, two ways, in one
//! run, interleaved (`benches/mcp_run.py`, with the `mcp` package from
//! PyPI in the venv scripts/deps.sh makes): `banger vm run --rm -- echo
//! hi` from a shell (the CLI spawned, the daemon already up) and the MCP
//! tool call `vm_run {"argv": ["echo", "hi"]}` over one `banger mcp`
//! session (the call alone; the session's start and handshake are
//! printed once). Both create the VM from the default image under QEMU
//! (TCG here), run the command through the agent and delete the VM.
//!
//! Needs root (the default image is built with mmdebstrap) and the MCP
//! client's venv; says why and exits otherwise. `BANGER_BENCH_MCP_RUNS`
//! (default 3) sets the runs per series. Results: docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::{BANGER, cache_home, is_root};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn series(name: &str, values: &serde_json::Value) -> f64 {
    let mut v: Vec<f64> = values
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let (min, max) = (
        v.iter().copied().fold(f64::MAX, f64::min),
        v.iter().copied().fold(0.0, f64::max),
    );
    let m = median(&mut v);
    println!("  {name:<62} {m:>7.3}  (min {min:.3}, max {max:.3})");
    m
}

fn main() {
    if !is_root() {
        println!(
            "mcp bench: skipped (the default image is built with mmdebstrap, which needs root)"
        );
        return;
    }
    let python = cache_home().join("banger/mcp-venv/bin/python");
    if !python.is_file() {
        println!(
            "mcp bench: skipped (no MCP client at {}; scripts/deps.sh makes it)",
            python.display()
        );
        return;
    }
    let runs = std::env::var("BANGER_BENCH_MCP_RUNS").unwrap_or_else(|_| "3".into());
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/mcp_run.py");
    let mut w = common::vm_world();
    w.extra_env.push(("BANGER_BIN", PathBuf::from(BANGER)));
    w.banger_ok(&["vm", "create", "--name", "warmup", "--no-start"]);
    w.banger_ok(&["vm", "delete", "warmup"]);

    let out = w
        .command(python.to_str().unwrap())
        .arg(&driver)
        .arg(&runs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let times: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("one command in a fresh VM, end to end ({runs} runs each, median, s)");
    let cli = series(
        "banger vm run --rm -- echo hi (from a shell)",
        &times["cli"],
    );
    let mcp = series(
        "MCP tools/call vm_run {argv: [echo, hi]}",
        &times["mcp_call"],
    );
    println!(
        "  {:<62} {:>7.3}",
        "banger mcp start + initialize + tools/list (once)",
        times["mcp_session"].as_f64().unwrap()
    );
    println!("  MCP vs CLI: {:+.3} s ({:.2}x)", mcp - cli, mcp / cli);
}
