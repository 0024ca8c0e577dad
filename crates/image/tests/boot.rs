//! End to end: pull the debian-cloud kernel, build a bookworm image, boot
//! both under QEMU (microvm, TCG, one vCPU) exactly as
//! docs/guest-contract.md says, log in over SSH, check the contract, and
//! power off through QMP.
//!
//! Artifacts are kept in `$XDG_CACHE_HOME/banger/test-artifacts` (else
//! `~/.cache/banger/test-artifacts`): the `.deb`s and the mmdebstrap base,
//! the kernel, an SSH key made once, and the image keyed by its recipe
//! fingerprint, so reruns skip the slow parts.
//!
//! Needs root and qemu-system-x86_64, qemu-img, mmdebstrap, e2fsprogs,
//! openssh-client. Without them the test says why and passes, unless
//! `BANGER_REQUIRE_BOOT_TEST=1` makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_image::{ImageRecipe, build_rootfs, kernel, pull_debian_kernel};

const HOSTNAME: &str = "banger-boot-test";
const SSH_TIMEOUT: Duration = Duration::from_secs(120);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

fn skip_reason() -> Option<String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        return Some("not running as root (image builds need root)".into());
    }
    let tools = [
        "qemu-system-x86_64",
        "qemu-img",
        "mmdebstrap",
        "mkfs.ext4",
        "resize2fs",
        "ssh",
        "ssh-keygen",
        "apt-get",
        "dpkg-deb",
    ];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    (!missing.is_empty()).then(|| format!("missing tools: {}", missing.join(", ")))
}

fn artifacts_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    base.join("banger").join("test-artifacts")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills QEMU (if still running) and shows the console on failure; the
/// run dir (overlay, work disk, sockets) goes with the TempDir.
struct Vm {
    child: Child,
    console: PathBuf,
    qemu_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- console.log (tail) ----\n{}",
                console_tail(&self.console)
            );
            eprintln!("---- qemu stderr ----\n{}", console_tail(&self.qemu_log));
        }
    }
}

fn console_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Ssh {
    key: PathBuf,
    known_hosts: PathBuf,
    port: u16,
}

impl Ssh {
    fn command(&self, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(&self.key)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "ConnectTimeout=5",
            ])
            .args(["-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("root@127.0.0.1")
            .arg(remote)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, remote: &str) -> String {
        run(&mut self.command(remote)).trim().to_owned()
    }
}

/// Speaks just enough QMP: greeting, capabilities, one command.
fn qmp(socket: &Path, command: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot connect to QMP at {}: {e}", socket.display()),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""), "not a QMP greeting: {line}");
    for cmd in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\": \"{cmd}\"}}").unwrap();
        loop {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "QMP closed");
            if line.contains("\"return\"") {
                break;
            }
            assert!(!line.contains("\"error\""), "QMP {cmd}: {line}");
        }
    }
}

#[test]
fn boots_debian_cloud_kernel_with_bookworm_image() {
    if let Some(reason) = skip_reason() {
        if std::env::var_os("BANGER_REQUIRE_BOOT_TEST").is_some_and(|v| v == "1") {
            panic!("boot test cannot run: {reason}");
        }
        eprintln!("SKIPPED boot test: {reason}");
        return;
    }
    let artifacts = artifacts_dir();
    fs::create_dir_all(&artifacts).unwrap();
    let cache = artifacts.join("cache");
    let progress = |stage: &str| eprintln!("  .. {stage}");

    // Kernel (the .deb is cached; extraction and the initramfs are redone).
    let entry = kernel::catalog_entry("debian-cloud").unwrap();
    let t = Instant::now();
    let k = pull_debian_kernel(
        entry.package,
        &cache,
        &artifacts.join("kernel-debian-cloud"),
        &progress,
        &|_, _| {},
    )
    .unwrap_or_else(|e| panic!("kernel pull: {e:?}"));
    eprintln!(
        "kernel pull: {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        k.version
    );

    // A test key, made once so the image (keyed by fingerprint) is reused.
    let key = artifacts.join("id_ed25519");
    if !key.exists() || !artifacts.join("id_ed25519.pub").exists() {
        let _ = fs::remove_file(&key);
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "banger-boot-test",
                "-f",
            ])
            .arg(&key));
    }
    let pubkey = fs::read_to_string(artifacts.join("id_ed25519.pub")).unwrap();

    // Image, rebuilt only when its fingerprint changes.
    let recipe = ImageRecipe::new("bookworm", pubkey);
    let fp = recipe.fingerprint();
    let images = artifacts.join("images");
    let image_dir = images.join(&fp[..16]);
    if image_dir.join("rootfs.ext4").is_file() && image_dir.join("work-seed.ext4").is_file() {
        eprintln!("image: reusing {}", image_dir.display());
    } else {
        if let Ok(old) = fs::read_dir(&images) {
            for dir in old.flatten() {
                let _ = fs::remove_dir_all(dir.path());
            }
        }
        let t = Instant::now();
        let built = build_rootfs(&recipe, &cache, &image_dir, &progress)
            .unwrap_or_else(|e| panic!("image build: {e:?}"));
        eprintln!(
            "image build: {:.1} s ({} MiB image)",
            t.elapsed().as_secs_f64(),
            built.size_bytes >> 20
        );
    }
    let rootfs = image_dir.join("rootfs.ext4");
    let seed = image_dir.join("work-seed.ext4");

    // Per-run disks: a qcow2 overlay over the image, a grown copy of the seed.
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&artifacts)
        .unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&rootfs)
        .arg(&overlay));
    let work = dir.path().join("work.ext4");
    fs::copy(&seed, &work).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&work)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    run(Command::new("resize2fs").arg("-f").arg(&work));

    let port = free_port();
    let console = dir.path().join("console.log");
    let qmp_socket = dir.path().join("qmp.sock");
    let qemu_log = dir.path().join("qemu.log");
    // The TSC rate: without it a TCG guest can hang calibrating its
    // timers (banger_vmm::clock).
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda rw panic=-1 quiet banger.hostname={HOSTNAME} \
         banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3 {}",
        banger_vmm::tcg_clock_args()
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
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
        "1024",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
    .arg("-kernel")
    .arg(&k.kernel)
    .arg("-initrd")
    .arg(&k.initrd)
    .arg("-append")
    .arg(&cmdline)
    .arg("-drive")
    .arg(format!(
        "id=root,file={},format=qcow2,if=none",
        overlay.display()
    ))
    .args(["-device", "virtio-blk-device,drive=root"])
    .arg("-drive")
    .arg(format!(
        "id=work,file={},format=raw,if=none",
        work.display()
    ))
    .args(["-device", "virtio-blk-device,drive=work"])
    .arg("-netdev")
    .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"))
    .args(["-device", "virtio-net-device,netdev=n0"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(&qemu_log).unwrap());
    let launched = Instant::now();
    let child = qemu.spawn().expect("qemu-system-x86_64 starts");
    let mut vm = Vm {
        child,
        console: console.clone(),
        qemu_log,
        _dir: dir,
    };

    let ssh = Ssh {
        key: key.clone(),
        known_hosts: vm._dir.path().join("known_hosts"),
        port,
    };
    loop {
        if let Some(status) = vm.child.try_wait().unwrap() {
            panic!("qemu exited early ({status})");
        }
        let out = ssh.command("true").output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            launched.elapsed() < SSH_TIMEOUT,
            "no SSH within {SSH_TIMEOUT:?} ({} bytes of console output): {}",
            fs::metadata(&console).map_or(0, |m| m.len()),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let to_ssh = launched.elapsed();
    eprintln!("launch -> SSH: {:.1} s", to_ssh.as_secs_f64());

    assert_eq!(ssh.run("hostname"), HOSTNAME);
    assert_eq!(ssh.run("uname -r"), k.version);
    assert_eq!(
        ssh.run("awk '$2 == \"/root\" { print $1 }' /proc/mounts"),
        "/dev/vdb"
    );
    // The work disk is the grown seed, writable, with the image's skeleton.
    ssh.run("test -f /root/.bashrc && touch /root/banger-write-test");
    assert_eq!(ssh.run("stat -c %a /root"), "700");
    let root_size: u64 = ssh
        .run("df -B1 --output=size /root | tail -n 1")
        .parse()
        .unwrap();
    assert!(root_size > 900 << 20, "/root is {root_size} bytes");
    // Contract details: key-only root login, one ed25519 host key, eth0 up.
    assert_eq!(
        ssh.run("ls /etc/ssh/ | grep '^ssh_host_' | sort | tr '\\n' ' '"),
        "ssh_host_ed25519_key ssh_host_ed25519_key.pub"
    );
    assert!(ssh.run("ip -4 addr show dev eth0").contains("10.0.2.15/24"));
    assert_eq!(ssh.run("cat /etc/resolv.conf"), "nameserver 10.0.2.3");
    assert_eq!(ssh.run("grep -c '^button ' /proc/modules"), "1");
    eprintln!(
        "input devices: {:?}",
        ssh.run("cat /sys/class/input/event*/device/name | tr '\\n' ','")
    );
    eprintln!(
        "failed units: {:?}",
        ssh.run("systemctl --failed --no-legend --plain | cut -d' ' -f1 | tr '\\n' ' '")
    );

    // ACPI powerdown must really power the guest off (button.ko loaded).
    qmp(&qmp_socket, "system_powerdown");
    let asked = Instant::now();
    loop {
        if let Some(status) = vm.child.try_wait().unwrap() {
            eprintln!(
                "powerdown -> QEMU exit: {:.1} s ({status})",
                asked.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            asked.elapsed() < POWEROFF_TIMEOUT,
            "guest did not power off within {POWEROFF_TIMEOUT:?} of system_powerdown"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(vm);
    eprintln!(
        "boot test done: launch -> SSH {:.1} s",
        to_ssh.as_secs_f64()
    );
}
