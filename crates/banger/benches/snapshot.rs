//! Snapshot benchmark (issue 9): `cargo bench -p banger --bench snapshot`.
//!
//! Prints, in one run, on one image with the agent (QEMU TCG, 1 vCPU,
//! 1 GiB):
//!
//! 1. `banger vm run --rm -- true` restored from the image's warm template
//!    vs the same with `--cold`, interleaved; medians and their ratio
//!    (target <= 0.1) and the template run's median (target <= 1.0 s);
//!    and the template run with `--egress open` (slirp in the host's
//!    namespace), to show what the isolated user-mode network of the
//!    default egress costs (crates/vmm/src/usernet.rs).
//! 2. `banger vm fork SRC --name N` until the fork runs a command through
//!    its agent (`vm exec N -- true` right after): median (target <= 1.0 s).
//! 3. Memory: total PSS of a template-restored VM and 4 forks of it,
//!    divided by one cold-booted VM's RSS (target <= 2.5), from
//!    `/proc/PID/smaps_rollup` and `/proc/PID/status` of their QEMUs.
//! 4. `vm pause` + `vm resume` round trip: median.
//!
//! `BANGER_BENCH_SNAP_RUNS` (default 5) sets the runs per series. Needs
//! root for the image build, like the end-to-end tests. Results:
//! docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{World, median};
use serde_json::Value;

const IMAGE: &str = "agentpy";

fn main() {
    let runs: usize = std::env::var("BANGER_BENCH_SNAP_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let w = common::template_world();

    eprintln!("--- preparing: kernel, image with the agent, its template");
    w.banger_json(&["kernel", "pull"]);
    w.banger_json(&["image", "build", "--name", IMAGE, "--packages", "python3"]);
    w.banger_json(&["image", "warm", IMAGE]);

    // 1. run --rm from the template vs --cold, interleaved.
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    let mut open = Vec::new();
    for i in 1..=runs {
        eprintln!("--- run {i}/{runs}");
        warm.push(timed_ok(
            &w,
            &["vm", "run", "--rm", "--image", IMAGE, "--", "true"],
        ));
        cold.push(timed_ok(
            &w,
            &[
                "vm", "run", "--rm", "--cold", "--image", IMAGE, "--", "true",
            ],
        ));
        open.push(timed_ok(
            &w,
            &[
                "vm", "run", "--rm", "--egress", "open", "--image", IMAGE, "--", "true",
            ],
        ));
        eprintln!(
            "    template {:?}, cold {:?}, template with --egress open {:?}",
            warm[i - 1],
            cold[i - 1],
            open[i - 1]
        );
    }

    // 2. fork to exec-ready.
    w.banger_json(&["vm", "create", "--name", "src", "--image", IMAGE]);
    let mut forks = Vec::new();
    for i in 1..=runs {
        let name = format!("fk-{i}");
        let t = Instant::now();
        w.banger_json(&["vm", "fork", "src", "--name", &name]);
        let forked = t.elapsed();
        w.banger_ok(&["vm", "exec", &name, "--", "true"]);
        forks.push(t.elapsed());
        eprintln!(
            "--- fork {i}/{runs}: {:?} (fork {forked:?}); stages: {}",
            forks[i - 1],
            last_op_stages(&w, "vm.fork")
        );
        w.banger_ok(&["vm", "delete", "--force", &name]);
    }

    // 3. memory: src (template-restored) + 4 forks vs one cold VM.
    w.banger_json(&["vm", "fork", "src", "--name", "mem", "--count", "4"]);
    w.banger_json(&[
        "vm", "create", "--name", "coldvm", "--cold", "--image", IMAGE,
    ]);
    // Let the guests settle after their start (the measured state is the idle one).
    std::thread::sleep(Duration::from_secs(5));
    let mut pss_total = 0u64;
    let mut rss_total = 0u64;
    let mut per_vm = Vec::new();
    for name in ["src", "mem-1", "mem-2", "mem-3", "mem-4"] {
        let pid = pid_of(&w, name);
        let (pss, rss) = (rollup(pid, "Pss:"), rollup(pid, "Rss:"));
        pss_total += pss;
        rss_total += rss;
        per_vm.push(format!("{name} {:.0}/{:.0}", mib(pss), mib(rss)));
    }
    let cold_rss = rollup(pid_of(&w, "coldvm"), "Rss:");

    // 4. pause + resume round trip.
    let mut rounds = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        w.banger_json(&["vm", "pause", "src"]);
        w.banger_json(&["vm", "resume", "src"]);
        rounds.push(t.elapsed());
    }
    for name in ["src", "mem-1", "mem-2", "mem-3", "mem-4", "coldvm"] {
        w.banger_ok(&["vm", "delete", "--force", name]);
    }

    let s = |d: Duration| d.as_secs_f64();
    let (mw, mc) = (s(median_of(&warm)), s(median_of(&cold)));
    println!(
        "banger snapshot benchmark (QEMU TCG, 1 vCPU, 1024 MiB, image {IMAGE}; {runs} runs per series; medians)"
    );
    println!("1. `vm run --rm -- true`");
    println!(
        "   from the template        {mw:>7.3} s   target <= 1.0 s   {}",
        ok(mw <= 1.0)
    );
    println!("   --cold                   {mc:>7.3} s");
    let mo = s(median_of(&open));
    println!(
        "   template, --egress open  {mo:>7.3} s   (no namespace: the default's isolation costs {:.3} s)",
        mw - mo
    );
    println!(
        "   template / cold          {:>7.3}     target <= 0.1     {}",
        mw / mc,
        ok(mw / mc <= 0.1)
    );
    let mf = s(median_of(&forks));
    println!("2. `vm fork SRC --name N` + `vm exec N -- true`");
    println!(
        "   fork to exec-ready       {mf:>7.3} s   target <= 1.0 s   {}",
        ok(mf <= 1.0)
    );
    println!(
        "   first fork               {:>7.3} s   (src maps the template's RAM: it is streamed, and src moves to a RAM file of its own)",
        s(forks[0])
    );
    println!(
        "   all                      {}",
        forks
            .iter()
            .map(|d| format!("{:.3}", s(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ratio = pss_total as f64 / cold_rss as f64;
    println!("3. memory, template-restored VM + 4 forks vs one cold VM");
    println!(
        "   total PSS of the five    {:>7.1} MiB (total RSS {:.1} MiB)",
        mib(pss_total),
        mib(rss_total)
    );
    println!("   per VM, PSS/RSS MiB      {}", per_vm.join(", "));
    println!("   RSS of one cold VM       {:>7.1} MiB", mib(cold_rss));
    println!(
        "   PSS total / cold RSS     {ratio:>7.3}     target <= 2.5     {}",
        ok(ratio <= 2.5)
    );
    println!("4. `vm pause` + `vm resume`");
    println!(
        "   round trip               {:>7.3} s",
        s(median_of(&rounds))
    );
}

/// The stages of the newest operation of `kind`, `name ms` each.
fn last_op_stages(w: &World, kind: &str) -> String {
    let ops = w.banger_json(&["ops"]);
    let Some(op) = ops
        .as_array()
        .and_then(|a| a.iter().rev().find(|o| o["kind"] == kind))
    else {
        return "?".into();
    };
    op["stages"]
        .as_array()
        .map(|st| {
            st.iter()
                .map(|x| format!("{} {}", x["name"].as_str().unwrap_or("?"), x["duration_ms"]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn ok(b: bool) -> &'static str {
    if b { "met" } else { "MISSED" }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median_of(v: &[Duration]) -> Duration {
    let mut secs: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    Duration::from_secs_f64(median(&mut secs))
}

fn timed_ok(w: &World, args: &[&str]) -> Duration {
    let t = Instant::now();
    w.banger_ok(args);
    t.elapsed()
}

fn pid_of(w: &World, name: &str) -> u32 {
    let v: Value = w.banger_json(&["vm", "show", name]);
    v["pid"].as_u64().unwrap() as u32
}

/// A `kB` field of `/proc/PID/smaps_rollup`, in KiB.
fn rollup(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}
