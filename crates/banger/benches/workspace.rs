//! Workspace benchmark (issue 14): `cargo bench -p banger --bench workspace`.
//!
//! A git repository of 10,000 files and about 200 MB (9,900 files of 2 KiB
//! and 100 of 1.8 MiB, random bytes: nothing compresses) put into a
//! running guest two ways, interleaved in the same VM: by hand, `tar c |
//! banger vm exec NAME -- tar x` (the raw tool through banger's agent),
//! and `banger workspace push NAME DIR` (git's file set, the base
//! recorded in a private git directory, one tar stream through the
//! agent). Then `banger workspace diff` with nothing changed (the guest's
//! copy pulled back whole and compared). Each run uses a fresh VM (a VM
//! has one workspace); the VM's boot is not timed.
//!
//! Needs root (the default image is built with mmdebstrap); says why and
//! exits otherwise. `BANGER_BENCH_WS_RUNS` (default 2) sets the runs.
//! Results: docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{BANGER, is_root, text};

const SMALL_FILES: usize = 9_900;
const SMALL_BYTES: usize = 2 << 10;
const LARGE_FILES: usize = 100;
const LARGE_BYTES: usize = 1_800 << 10;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(name: &str, v: &mut [f64]) -> f64 {
    let (min, max) = (
        v.iter().copied().fold(f64::MAX, f64::min),
        v.iter().copied().fold(0.0, f64::max),
    );
    let m = median(v);
    println!("  {name:<58} {m:>8.2}  (min {min:.2}, max {max:.2})");
    m
}

/// The project: a git repository with every file committed.
fn make_project(dir: &Path) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; LARGE_BYTES];
    let mut total = 0u64;
    for i in 0..SMALL_FILES {
        let sub = dir.join(format!("src/m{:03}", i / 100));
        std::fs::create_dir_all(&sub).unwrap();
        random.read_exact(&mut buf[..SMALL_BYTES]).unwrap();
        std::fs::write(sub.join(format!("f{i:05}.txt")), &buf[..SMALL_BYTES]).unwrap();
        total += SMALL_BYTES as u64;
    }
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    for i in 0..LARGE_FILES {
        random.read_exact(&mut buf).unwrap();
        std::fs::write(dir.join(format!("assets/a{i:03}.bin")), &buf).unwrap();
        total += LARGE_BYTES as u64;
    }
    let ok = Command::new("sh")
        .arg("-c")
        .arg(
            "git init -q . && git add -A && git -c user.name=b -c user.email=b@b commit -q -m init",
        )
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git commit of the project");
    total
}

fn main() {
    if !is_root() {
        println!(
            "workspace bench: skipped (the default image is built with mmdebstrap, which needs root)"
        );
        return;
    }
    let runs: usize = std::env::var("BANGER_BENCH_WS_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let w = common::vm_world();
    let proj = w.root().join("proj");
    let t = Instant::now();
    let bytes = make_project(&proj);
    eprintln!(
        "project: {} files, {} MB, committed in {:.1} s",
        SMALL_FILES + LARGE_FILES,
        bytes / 1_000_000,
        t.elapsed().as_secs_f64()
    );

    let (mut by_hand, mut push, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let name = format!("ws{run}");
        w.banger_ok(&["vm", "create", "--name", &name]);

        let t = Instant::now();
        // git's file set, as a user would pick it by hand, tarred into
        // the agent's stdin.
        let script = format!(
            "git ls-files -z | tar c --null -T - | {BANGER} vm exec {name} -- sh -c 'mkdir -p /root/hand && tar x -C /root/hand'"
        );
        let out = w
            .command("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(&proj)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success(), "by hand: {}", text(&out));
        by_hand.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        w.banger_ok(&["workspace", "push", &name, proj.to_str().unwrap()]);
        push.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let stat = w.banger_ok(&["workspace", "diff", &name, "--stat"]);
        diff.push(t.elapsed().as_secs_f64());
        assert_eq!(stat, "", "nothing changed in the guest");

        let count = w.banger_ok(&[
            "vm",
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "find /root/work -type f | wc -l; find /root/hand -type f | wc -l",
        ]);
        let want = SMALL_FILES + LARGE_FILES;
        assert_eq!(
            count,
            format!("{want}\n{want}\n"),
            "every file in, both ways"
        );
        w.banger_ok(&["vm", "delete", "--force", &name]);
    }
    println!(
        "a repository of {} files, {} MB, into a running guest ({runs} runs, median, s)",
        SMALL_FILES + LARGE_FILES,
        bytes / 1_000_000
    );
    let hand = report(
        "git ls-files | tar c | banger vm exec -- tar x (by hand)",
        &mut by_hand,
    );
    let ws = report("banger workspace push NAME DIR", &mut push);
    report("banger workspace diff NAME (nothing changed)", &mut diff);
    println!("  push vs by hand: {:+.2} s ({:.2}x)", ws - hand, ws / hand);
}
