//! Firecracker benchmark (issue 13):
//! `BANGER_FIRECRACKER_BIN=PATH cargo bench -p banger --bench firecracker`.
//!
//! With the stub guests of `banger_vmm::testkit` (an ELF for Firecracker,
//! a bzImage for QEMU: both print a banner and halt, so nothing but the
//! VMM's own work is timed), in one run, interleaved:
//!
//! 1. Pre-boot overhead. banger: `banger vm create --vmm firecracker
//!    --kernel stub --wait none` from spawning the CLI to its exit, which
//!    comes right after Firecracker answered `InstanceStart` (disk
//!    preparation, the RPC and the API calls included); and the same with
//!    `--vmm qemu` (to QMP answering). Raw: `firecracker --api-sock` spawned
//!    by hand and configured with `curl --unix-socket` (machine config, boot
//!    source, root drive, `InstanceStart`); `qemu-system-x86_64 -M microvm`
//!    spawned by hand until its QMP greeting. The raw runs get their disk
//!    ready before the clock starts.
//! 2. Snapshot load. banger: `vm create --from-snapshot S --wait none`
//!    (its "restore from snapshot" stage: spawn, the API calls, the
//!    handles; and the whole command, disk copies and the RPC included);
//!    raw: a Firecracker spawned by hand and `PUT /snapshot/load` (with
//!    `resume_vm`) by curl on the same state and memory files, the disks
//!    copied before the clock, timed from the spawn and for the call alone.
//!
//! Needs a real Firecracker (no package ships one; says so and exits
//! otherwise), /dev/kvm, QEMU, curl, and the registry tools for the tiny
//! image. `BANGER_BENCH_FC_RUNS` (default 7) sets the runs per series.
//! Results: docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::World;

fn main() {
    let Some(fc) = std::env::var_os("BANGER_FIRECRACKER_BIN").map(PathBuf::from) else {
        eprintln!(
            "skipped: BANGER_FIRECRACKER_BIN does not name a firecracker binary (no package source ships one)"
        );
        return;
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return;
    }
    if !common::registry::have_tools("firecracker bench") {
        return;
    }
    let runs: usize = std::env::var("BANGER_BENCH_FC_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);

    let mut w = common::vm_world();
    w.extra_env.push(("BANGER_FIRECRACKER_BIN", fc.clone()));
    let _registry = common::pull_tiny_image(&w);
    let elf = w.root().join("stub.elf");
    banger_vmm::testkit::write_stub_elf_guest(&elf).unwrap();
    let bz = w.root().join("stub.bz");
    banger_vmm::testkit::write_stub_kernel(&bz).unwrap();
    w.banger_ok(&[
        "kernel",
        "import",
        "stub",
        "--kernel",
        elf.to_str().unwrap(),
    ]);
    w.banger_ok(&[
        "kernel",
        "import",
        "stubq",
        "--kernel",
        bz.to_str().unwrap(),
    ]);
    let image = w.banger_json(&["image", "show", "tiny"]);
    let rootfs = PathBuf::from(image["rootfs"].as_str().unwrap());

    println!("Firecracker {}", version(&fc));
    println!("{runs} runs per series, interleaved, stub guests");
    let (mut fc_banger, mut fc_raw, mut q_banger, mut q_raw) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        fc_banger.push(create(
            &w,
            &format!("f{i}"),
            &["--vmm", "firecracker", "--kernel", "stub"],
        ));
        fc_raw.push(raw_firecracker(&w, &fc, &elf, &rootfs, i));
        q_banger.push(create(
            &w,
            &format!("q{i}"),
            &["--vmm", "qemu", "--kernel", "stubq"],
        ));
        q_raw.push(raw_qemu(&w, &bz, &rootfs, i));
    }
    println!("\n1. pre-boot overhead (median, s)");
    row(
        "banger vm create --vmm firecracker (CLI spawn to InstanceStart answered)",
        &fc_banger,
    );
    row(
        "raw firecracker spawn + curl config + InstanceStart",
        &fc_raw,
    );
    row(
        "banger vm create --vmm qemu (CLI spawn to QMP answered)",
        &q_banger,
    );
    row("raw qemu-system-x86_64 spawn to QMP greeting", &q_raw);
    println!(
        "  banger's own overhead: firecracker {:+.3} s, qemu {:+.3} s",
        secs(median(&fc_banger)) - secs(median(&fc_raw)),
        secs(median(&q_banger)) - secs(median(&q_raw))
    );

    // A snapshot of a running stub VM, loaded again and again.
    w.banger_ok(&[
        "vm",
        "create",
        "--name",
        "src",
        "--vmm",
        "firecracker",
        "--kernel",
        "stub",
        "--wait",
        "none",
    ]);
    let snap = w.banger_json(&["vm", "snapshot", "src", "--name", "s"]);
    let sdir = PathBuf::from(snap["dir"].as_str().unwrap());
    let (mut load_banger, mut load_stage, mut load_raw, mut load_call) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let name = format!("r{i}");
        let t = Instant::now();
        w.banger_ok(&[
            "vm",
            "create",
            "--name",
            &name,
            "--from-snapshot",
            "s",
            "--wait",
            "none",
        ]);
        load_banger.push(t.elapsed());
        load_stage.push(stage(&w, &name, "restore from snapshot"));
        w.banger_ok(&["vm", "delete", "--force", &name]);
        let (whole, call) = raw_load(&w, &fc, &sdir, i);
        load_raw.push(whole);
        load_call.push(call);
    }
    println!("\n2. snapshot load (median, s)");
    row(
        "banger vm create --from-snapshot --wait none (whole command)",
        &load_banger,
    );
    row(
        "  its \"restore from snapshot\" stage (spawn + PUT /snapshot/load)",
        &load_stage,
    );
    row("raw firecracker spawn + PUT /snapshot/load", &load_raw);
    row("  PUT /snapshot/load alone (curl time_total)", &load_call);
    w.banger_ok(&["vm", "delete", "--force", "src"]);
    w.banger_ok(&["snapshot", "delete", "s"]);
}

fn version(fc: &Path) -> String {
    let out = Command::new(fc).arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// `banger vm create --name NAME EXTRA --wait none`: the command's time;
/// the VM is deleted after.
fn create(w: &World, name: &str, extra: &[&str]) -> Duration {
    let mut args = vec![
        "vm", "create", "--name", name, "--image", "tiny", "--wait", "none",
    ];
    args.extend_from_slice(extra);
    let t = Instant::now();
    w.banger_ok(&args);
    let took = t.elapsed();
    w.banger_ok(&["vm", "delete", "--force", name]);
    took
}

/// The duration of stage `name` of the last `vm.create` of `vm`.
fn stage(w: &World, vm: &str, name: &str) -> Duration {
    let ops = w.banger_json(&["ops"]);
    let op = ops
        .as_array()
        .unwrap()
        .iter()
        .rfind(|o| o["kind"] == "vm.create" && o["target"] == vm)
        .unwrap();
    let ms = op["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["duration_ms"].as_u64())
        .unwrap_or_else(|| panic!("no stage {name:?} in {op}"));
    Duration::from_millis(ms)
}

/// A Firecracker spawned in `dir` on `dir/api.sock`, killed on drop.
struct Fc(Child);

impl Drop for Fc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_fc(fc: &Path, dir: &Path) -> Fc {
    let child = Command::new(fc)
        .args(["--api-sock", "api.sock", "--log-path", "fc.log"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.join("api.sock");
    while UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(1));
    }
    Fc(child)
}

/// `curl --unix-socket SOCK -X METHOD http://localhost/PATH -d BODY`;
/// the call's own time (`time_total`).
fn curl(dir: &Path, method: &str, path: &str, body: &str) -> Duration {
    let out = Command::new("curl")
        .current_dir(dir)
        .args([
            "-sS",
            "--fail-with-body",
            "--unix-socket",
            "api.sock",
            "-X",
            method,
        ])
        .arg(format!("http://localhost{path}"))
        .args(["-H", "Content-Type: application/json", "-d", body])
        .args(["-o", "/dev/null", "-w", "%{time_total}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Duration::from_secs_f64(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

fn raw_firecracker(w: &World, fc: &Path, kernel: &Path, rootfs: &Path, i: usize) -> Duration {
    let dir = w.root().join(format!("raw-fc-{i}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(rootfs, dir.join("root.ext4")).unwrap();
    let t = Instant::now();
    let _fc = spawn_fc(fc, &dir);
    curl(
        &dir,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":1024}"#,
    );
    curl(
        &dir,
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#,
            kernel.display()
        ),
    );
    curl(
        &dir,
        "PUT",
        "/drives/root",
        r#"{"drive_id":"root","path_on_host":"root.ext4","is_root_device":true,"is_read_only":false}"#,
    );
    curl(
        &dir,
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    );
    t.elapsed()
}

fn raw_qemu(w: &World, kernel: &Path, rootfs: &Path, i: usize) -> Duration {
    let dir = w.root().join(format!("raw-q-{i}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(rootfs, dir.join("root.ext4")).unwrap();
    let qmp = dir.join("qmp.sock");
    let t = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=on,rtc=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
        ])
        .args([
            "-smp",
            "1",
            "-m",
            "1024M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0"])
        .args(["-drive", "if=none,id=root,file=root.ext4,format=raw"])
        .args(["-device", "virtio-blk-device,drive=root"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _kill = Fc(child);
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&qmp) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut greeting = String::new();
    BufReader::new(stream).read_line(&mut greeting).unwrap();
    assert!(greeting.contains("QMP"), "{greeting}");
    t.elapsed()
}

/// A raw load of the snapshot in `sdir`, in a directory with its disks
/// copied (before the clock) under the names its state records: (spawn
/// to loaded, the call).
fn raw_load(w: &World, fc: &Path, sdir: &Path, i: usize) -> (Duration, Duration) {
    let dir = w.root().join(format!("raw-load-{i}"));
    std::fs::create_dir(&dir).unwrap();
    // The disks first, outside the clock (banger's stage does not cover
    // them either: they are the create's disk preparation).
    for (from, to) in [("root.img", "root.ext4"), ("work.img", "work.ext4")] {
        let ok = Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(sdir.join(from))
            .arg(dir.join(to))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let t = Instant::now();
    let _fc = spawn_fc(fc, &dir);
    let call = curl(
        &dir,
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":true}}"#,
            sdir.join("state").display(),
            sdir.join("mem").display()
        ),
    );
    (t.elapsed(), call)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn row(label: &str, samples: &[Duration]) {
    let (min, max) = (
        samples.iter().min().copied().unwrap_or_default(),
        samples.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "  {label:<76} {:>7.3}  (min {:.3}, max {:.3})",
        secs(median(samples)),
        secs(min),
        secs(max)
    );
}
