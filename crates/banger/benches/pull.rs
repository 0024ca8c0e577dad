//! Image pull benchmark (issue 12): `cargo bench -p banger --bench pull`.
//!
//! A Debian bookworm minbase image (one gzip layer, made with mmdebstrap
//! and umoci: crates/oci/tests/support/registry.rs, `debian_rootfs`) is
//! pushed to a loopback registry (Debian's `docker-registry`), then three
//! series run interleaved:
//!
//! 1. cold: `banger image pull 127.0.0.1:PORT/debian:bench --name X`
//!    with an empty blob cache (`image cache prune` and `image delete X`
//!    before each, outside the clock), the whole CLI command (it returns
//!    when the operation is done);
//! 2. warm: the same with the blobs cached (`image delete X` before each);
//! 3. raw tools doing the same work, as root, in a fresh temp dir:
//!    `skopeo copy` to an OCI layout, `umoci raw unpack` to a tree,
//!    `mkfs.ext4 -d` of that tree into an image file of the size banger
//!    chose (`image show --json`, `size_bytes`), with banger's mkfs flags.
//!
//! Prints the medians, cold ÷ raw (target <= 1.0) and warm ÷ raw, and the
//! median of each stage of banger's operation (`banger ops --json`).
//! `BANGER_BENCH_PULL_RUNS` (default 3) sets the runs per series. Needs
//! root (mmdebstrap, umoci unpack), docker-registry, skopeo, umoci and
//! e2fsprogs. Results: docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::registry::{Layout, Registry, debian_rootfs, have_tools, run};
use common::{World, is_root, median};
use serde_json::Value;

const NAME: &str = "debpull";
/// banger's root disk label (crates/image/src/ext4.rs, `RootDiskOptions`).
const LABEL: &str = "banger-root";

fn main() {
    let runs: usize = std::env::var("BANGER_BENCH_PULL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    if !have_tools("the pull benchmark") {
        return;
    }
    if !is_root() {
        eprintln!("skipping the pull benchmark: needs root (umoci unpack, mmdebstrap)");
        return;
    }

    eprintln!("--- preparing: the Debian image, the registry, a banger world");
    let layout = Layout::new();
    if let Err(why) = debian_rootfs(&layout, "bench") {
        eprintln!("skipping the pull benchmark: {why}");
        return;
    }
    let registry = Registry::start(None);
    registry.push(&layout, "bench", "debian:bench", None, false);
    let reference = format!("{}/debian:bench", registry.host());
    let layer_bytes: u64 = layer_sizes(&layout, "bench").iter().sum();
    drop(layout);

    let mut w = World::new();
    w.extra_env
        .push(("BANGER_AGENT_BIN", common::static_agent()));

    // One untimed pull: the size banger picks for the root disk, and
    // everything (binaries, the registry's files) in the page cache.
    let t = Instant::now();
    let image = w.banger_json(&["image", "pull", &reference, "--name", NAME]);
    eprintln!("--- warm-up pull: {:.3} s", t.elapsed().as_secs_f64());
    let size_bytes = image["size_bytes"].as_u64().unwrap();

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut raw = Vec::new();
    let mut cold_stages = Vec::new();
    let mut warm_stages = Vec::new();
    for i in 1..=runs {
        eprintln!("--- run {i}/{runs}");
        w.banger_ok(&["image", "delete", NAME]);
        w.banger_json(&["image", "cache", "prune"]);
        cold.push(timed_pull(&w, &reference));
        cold_stages.push(last_pull_stages(&w));

        w.banger_ok(&["image", "delete", NAME]);
        warm.push(timed_pull(&w, &reference));
        warm_stages.push(last_pull_stages(&w));

        raw.push(raw_tools(&reference, size_bytes));
        let r = &raw[i - 1];
        eprintln!(
            "    cold {:.3} s, warm {:.3} s, raw {:.3} s (skopeo {:.3}, umoci unpack {:.3}, mkfs {:.3})",
            s(cold[i - 1]),
            s(warm[i - 1]),
            s(r.total),
            s(r.copy),
            s(r.unpack),
            s(r.mkfs)
        );
    }
    w.banger_ok(&["image", "delete", NAME]);
    w.banger_json(&["image", "cache", "prune"]);
    drop(w);
    drop(registry);

    let (mc, mw) = (med(&cold), med(&warm));
    let mr = med(&raw.iter().map(|r| r.total).collect::<Vec<_>>());
    println!(
        "banger image pull benchmark (Debian bookworm minbase, 1 gzip layer of {:.1} MiB, root disk {:.0} MiB; {runs} interleaved runs per series; medians)",
        layer_bytes as f64 / 1048576.0,
        size_bytes as f64 / 1048576.0
    );
    let raw_part = |f: fn(&RawSample) -> Duration| raw.iter().map(f).collect::<Vec<_>>();
    println!("  {:<40}{}   median", "", runs_header(runs));
    line("banger image pull, cold blob cache", &cold);
    line("banger image pull, warm blob cache", &warm);
    line(
        "raw: skopeo copy + umoci unpack + mkfs",
        &raw_part(|r| r.total),
    );
    line(
        "  skopeo copy (registry -> OCI layout)",
        &raw_part(|r| r.copy),
    );
    line("  umoci raw unpack", &raw_part(|r| r.unpack));
    line("  mkfs.ext4 -d", &raw_part(|r| r.mkfs));
    println!(
        "  cold / raw  {:>6.3}   target <= 1.0   {}",
        mc / mr,
        if mc / mr <= 1.0 { "met" } else { "MISSED" }
    );
    println!("  warm / raw  {:>6.3}", mw / mr);
    println!(
        "  load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("  banger's stages (the operation's own, ms), median over the runs:");
    println!("    {:<40} {:>8} {:>8}", "stage", "cold", "warm");
    let (cs, ws) = (stage_medians(&cold_stages), stage_medians(&warm_stages));
    for (name, c) in &cs {
        let w = ws
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| format!("{v:>8}"))
            .unwrap_or_else(|| format!("{:>8}", "-"));
        println!("    {name:<40} {c:>8} {w}");
    }
}

/// `image pull REF --name NAME`, the whole command.
fn timed_pull(w: &World, reference: &str) -> Duration {
    let t = Instant::now();
    w.banger_json(&["image", "pull", reference, "--name", NAME]);
    t.elapsed()
}

struct RawSample {
    total: Duration,
    copy: Duration,
    unpack: Duration,
    mkfs: Duration,
}

/// skopeo copy + umoci raw unpack + mkfs.ext4 -d, in a fresh temp dir
/// (removed afterwards, outside the clock).
fn raw_tools(reference: &str, size_bytes: u64) -> RawSample {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    let tree = dir.path().join("rootfs");
    let image = dir.path().join("rootfs.ext4");
    let started = Instant::now();
    run(Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:bench", layout.display())));
    let copy = started.elapsed();
    let t = Instant::now();
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:bench", layout.display()))
        .arg(&tree));
    let unpack = t.elapsed();
    let t = Instant::now();
    run(Command::new(mkfs_ext4())
        .args(["-F", "-q", "-T", "default", "-L", LABEL, "-d"])
        .arg(&tree)
        .arg(&image)
        .arg(format!("{}k", size_bytes / 1024)));
    let mkfs = t.elapsed();
    RawSample {
        total: started.elapsed(),
        copy,
        unpack,
        mkfs,
    }
}

fn mkfs_ext4() -> &'static str {
    ["/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("mkfs.ext4")
}

/// The compressed sizes of the layers of `layout:tag`.
fn layer_sizes(layout: &Layout, tag: &str) -> Vec<u64> {
    let digest = layout.manifest_digest(tag);
    let hex = digest.strip_prefix("sha256:").unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(layout.path().join("blobs/sha256").join(hex)).unwrap(),
    )
    .unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect()
}

/// The stages of the newest `image.pull` operation: `(name, ms)`, parts
/// of a stage indented by their depth.
fn last_pull_stages(w: &World) -> Vec<(String, u64)> {
    let ops = w.banger_json(&["ops"]);
    let op = ops
        .as_array()
        .and_then(|a| a.iter().rev().find(|o| o["kind"] == "image.pull"))
        .unwrap_or_else(|| panic!("no image.pull operation in {ops}"));
    let mut stages: Vec<(String, u64)> = op["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            let depth = st["depth"].as_u64().unwrap_or(0) as usize;
            (
                format!("{}{}", "  ".repeat(depth), st["name"].as_str().unwrap()),
                st["duration_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    if let (Some(start), Some(end)) = (op["started_at_ms"].as_i64(), op["ended_at_ms"].as_i64()) {
        stages.push(("(whole operation)".into(), (end - start) as u64));
    }
    stages
}

/// Per stage name, in the first run's order, the median over the runs.
fn stage_medians(runs: &[Vec<(String, u64)>]) -> Vec<(String, u64)> {
    let mut by_name: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (name, ms) in run {
            by_name.entry(name).or_default().push(*ms as f64);
        }
    }
    runs.first()
        .map(|first| {
            first
                .iter()
                .map(|(name, _)| {
                    let v = by_name.get_mut(name.as_str()).unwrap();
                    (name.clone(), median(v) as u64)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn s(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn med(v: &[Duration]) -> f64 {
    let mut secs: Vec<f64> = v.iter().map(|d| d.as_secs_f64()).collect();
    median(&mut secs)
}

fn runs_header(runs: usize) -> String {
    (1..=runs)
        .map(|i| format!("{:>8}", format!("run {i}")))
        .collect::<Vec<_>>()
        .join("")
}

/// One series: each run, then the median.
fn line(label: &str, v: &[Duration]) {
    let each: String = v.iter().map(|d| format!("{:>8.3}", s(*d))).collect();
    println!("  {label:<40}{each} {:>8.3} s", med(v));
}
