//! End to end: an image with no init, no systemd and no SSH server (busybox
//! from Debian's `busybox-static`, as one OCI layer made here with the
//! `tar` crate) becomes a root disk through `build_root_disk`, with
//! banger's agent as `/.banger/init` and an OCI config as
//! `/.banger/image-config.json`; it boots under QEMU (microvm, TCG) with
//! banger's kernel and initramfs and `init=/.banger/init`
//! (docs/guest-contract.md, "Images without an init"). Through the
//! agent's virtio-serial port the test checks exec with the image's
//! defaults (env, working directory, user, default command), the
//! hostname, the NIC, a pty with a controlling terminal, that an orphan
//! is reaped, and that the ACPI power button powers the guest off.
//!
//! Needs qemu-system-x86_64, mkfs.ext4 and debugfs, the debian-cloud
//! kernel in the test artifacts (`tests/boot.rs` pulls it) or apt to pull
//! it, and the busybox-static package there too. Without them the test
//! says why and passes, unless `BANGER_REQUIRE_BOOT_TEST=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_image::{
    ExtraFile, ExtraSource, Layer, LayerCompression, RootDiskOptions, build_root_disk, kernel,
    pull_debian_kernel,
};
use banger_proto::agent::{AGENT_PROTOCOL_VERSION, Frame, FrameDecoder, Message, encode};

const HOSTNAME: &str = "oci-init-test";
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

const IMAGE_CONFIG: &str = r#"{
  "Env": ["PATH=/usr/local/bin:/bin", "FOO=from the image"],
  "WorkingDir": "/srv/app",
  "User": "app",
  "Cmd": ["sh", "-c", "echo default command; id -un"],
  "ExposedPorts": {"8080/tcp": {}}
}"#;

fn artifacts_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    base.join("banger").join("test-artifacts")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip(reason: &str) {
    if std::env::var_os("BANGER_REQUIRE_BOOT_TEST").is_some_and(|v| v == "1") {
        panic!("OCI boot test cannot run: {reason}");
    }
    eprintln!("SKIPPED OCI boot test: {reason}");
}

/// `bin/busybox` out of the cached busybox-static package.
fn busybox(cache: &Path) -> Option<Vec<u8>> {
    let deb = fs::read_dir(cache.join("debs"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("busybox-static_") && n.ends_with(".deb"))
        })?;
    let out = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .output()
        .ok()?;
    let mut ar = tar::Archive::new(&out.stdout[..]);
    for e in ar.entries().ok()? {
        let mut e = e.ok()?;
        if e.path().ok()?.to_str()? == "./bin/busybox" {
            let mut data = Vec::new();
            e.read_to_end(&mut data).ok()?;
            return Some(data);
        }
    }
    None
}

/// The static agent: `BANGER_AGENT_BIN`, else built into this build's
/// target directory (`--target` keeps the static flags off build scripts).
fn static_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("BANGER_AGENT_BIN").map(PathBuf::from) {
        if p.is_file() {
            return p;
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args(["build", "-q", "-p", "banger-agent", "--release"])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .env("CARGO_TARGET_DIR", &target)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .status()
        .expect("run cargo to build banger-agent");
    assert!(status.success(), "building the static banger-agent failed");
    target.join("x86_64-unknown-linux-gnu/release/banger-agent")
}

/// One uncompressed layer: busybox with its applet links, a passwd with
/// a user `app`, and the directories an image usually has.
fn busybox_layer(busybox: &[u8], applets: &[String], out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    let header = |kind: tar::EntryType, mode: u32, uid: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(0);
        h.set_size(0);
        h
    };
    let dir = |b: &mut tar::Builder<fs::File>, name: &str, mode: u32, uid: u64| {
        let mut h = header(tar::EntryType::Directory, mode, uid);
        b.append_data(&mut h, name, &[][..]).unwrap();
    };
    let file = |b: &mut tar::Builder<fs::File>, name: &str, mode: u32, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, mode, 0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    for d in ["bin/", "etc/", "home/", "root/", "tmp/", "var/"] {
        dir(&mut b, d, if d == "tmp/" { 0o1777 } else { 0o755 }, 0);
    }
    dir(&mut b, "home/app/", 0o755, 1000);
    file(&mut b, "bin/busybox", 0o755, busybox);
    for a in applets.iter().filter(|a| a.as_str() != "busybox") {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    );
    file(&mut b, "etc/group", 0o644, b"root:x:0:\napp:x:1000:\n");
    b.finish().unwrap();
}

/// A connection to the agent's port.
struct Agent {
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
}

/// What an exec produced.
#[derive(Debug)]
struct Ran {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

impl Agent {
    fn send(&mut self, msg: Message) {
        self.stream.write_all(&encode(&Frame::new(msg))).unwrap();
    }

    fn frame(&mut self) -> Frame {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return f.unwrap();
            }
            let n = self.stream.read(&mut buf).expect("read from agent.sock");
            assert!(n > 0, "agent.sock closed");
            self.decoder.push(&buf[..n]);
        }
    }

    /// Connects, says hello and waits for a health answer.
    fn connect(socket: &Path, vm: &mut Vm) -> Self {
        let started = Instant::now();
        let stream = loop {
            if let Some(s) = vm.child.try_wait().unwrap() {
                panic!("qemu exited early ({s})");
            }
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(started.elapsed() < AGENT_TIMEOUT, "no agent.sock: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut a = Self {
            stream,
            decoder: FrameDecoder::new(),
            next_id: 1,
        };
        a.send(Message::Hello {
            protocol: AGENT_PROTOCOL_VERSION,
            version: "oci-boot-test".into(),
            capabilities: Vec::new(),
        });
        // Health every half second until one is answered.
        let mut buf = [0u8; 65536];
        loop {
            if let Some(s) = vm.child.try_wait().unwrap() {
                panic!("qemu exited early ({s})");
            }
            assert!(
                started.elapsed() < AGENT_TIMEOUT,
                "the agent did not answer within {AGENT_TIMEOUT:?}"
            );
            let id = a.next_id;
            a.next_id += 1;
            a.send(Message::Health { id });
            match a.stream.read(&mut buf) {
                Ok(n) if n > 0 => a.decoder.push(&buf[..n]),
                _ => continue,
            }
            while let Some(f) = a.decoder.next_frame() {
                if let Ok(Frame {
                    msg: Message::HealthOk { .. },
                    ..
                }) = f
                {
                    a.stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    eprintln!("agent answers: {:.1} s", started.elapsed().as_secs_f64());
                    return a;
                }
            }
        }
    }

    fn exec_with(&mut self, argv: &[&str], tty: bool) -> Ran {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Message::Exec {
            id,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            cwd: None,
            tty,
            rows: 0,
            cols: 0,
        });
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let f = self.frame();
            match f.msg {
                Message::Stdout { id: i } if i == id => stdout.extend(f.body),
                Message::Stderr { id: i } if i == id => stderr.extend(f.body),
                Message::Exited { id: i, code, .. } if i == id => {
                    return Ran {
                        stdout: String::from_utf8_lossy(&stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&stderr).into_owned(),
                        code,
                    };
                }
                Message::Error {
                    id: Some(i),
                    message,
                    ..
                } if i == id => {
                    panic!("exec {argv:?}: {message}")
                }
                _ => {}
            }
        }
    }

    fn exec(&mut self, argv: &[&str]) -> Ran {
        self.exec_with(argv, false)
    }

    /// Runs a shell line; its stdout, trimmed, after asserting success.
    fn sh(&mut self, line: &str) -> String {
        let r = self.exec(&["sh", "-c", line]);
        assert_eq!(r.code, Some(0), "{line}: {r:?} (stderr: {})", r.stderr);
        r.stdout.trim().to_owned()
    }
}

struct Vm {
    child: Child,
    console: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let text = fs::read_to_string(&self.console).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- console.log (tail) ----\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

fn qmp(socket: &Path, command: &str) {
    let stream = UnixStream::connect(socket).unwrap();
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
fn boots_an_image_without_init_through_the_agent() {
    let missing: Vec<&str> = ["qemu-system-x86_64", "mkfs.ext4", "debugfs", "dpkg-deb"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        return skip(&format!("missing tools: {}", missing.join(", ")));
    }
    let artifacts = artifacts_dir();
    let cache = artifacts.join("cache");
    let kdir = artifacts.join("kernel-debian-cloud");
    let (vmlinuz, initrd) = (kdir.join("vmlinuz"), kdir.join("initrd.img"));
    if !vmlinuz.is_file() || !initrd.is_file() {
        let entry = kernel::catalog_entry("debian-cloud").unwrap();
        if let Err(e) = pull_debian_kernel(entry.package, &cache, &kdir, &|_| {}, &|_, _| {}) {
            return skip(&format!(
                "no kernel in {} and none pulled: {e}",
                kdir.display()
            ));
        }
    }
    let Some(busybox) = busybox(&cache) else {
        return skip(&format!(
            "no busybox-static package in {}",
            cache.join("debs").display()
        ));
    };
    let agent = static_agent();

    let dir = tempfile::Builder::new()
        .prefix("oci-run-")
        .tempdir_in(&artifacts)
        .unwrap();
    let bb = dir.path().join("busybox");
    fs::write(&bb, &busybox).unwrap();
    fs::set_permissions(&bb, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let applets: Vec<String> =
        String::from_utf8(Command::new(&bb).arg("--list").output().unwrap().stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
    assert!(applets.iter().any(|a| a == "sh"), "busybox has no sh");
    let layer = dir.path().join("layer.tar");
    busybox_layer(&busybox, &applets, &layer);

    let rootfs = dir.path().join("rootfs.ext4");
    let t = Instant::now();
    let opts = RootDiskOptions {
        extra_files: vec![
            ExtraFile {
                guest_path: "/.banger/init".into(),
                source: ExtraSource::Path(agent),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            ExtraFile {
                guest_path: "/.banger/image-config.json".into(),
                source: ExtraSource::Bytes(IMAGE_CONFIG.as_bytes().to_vec()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        ],
        ..RootDiskOptions::default()
    };
    build_root_disk(
        &[Layer {
            path: layer,
            compression: LayerCompression::None,
        }],
        dir.path(),
        &rootfs,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    eprintln!("root disk: {:.1} s", t.elapsed().as_secs_f64());

    let console = dir.path().join("console.log");
    let qmp_socket = dir.path().join("qmp.sock");
    let agent_socket = dir.path().join("agent.sock");
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda rw panic=-1 quiet init=/.banger/init \
         banger.hostname={HOSTNAME} banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 \
         banger.dns=10.0.2.3 {}",
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
    .args(["-smp", "1", "-m", "512", "-nodefaults", "-no-user-config"])
    .arg("-nographic")
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
    .arg("-kernel")
    .arg(&vmlinuz)
    .arg("-initrd")
    .arg(&initrd)
    .arg("-append")
    .arg(&cmdline)
    .arg("-drive")
    .arg(format!(
        "id=root,file={},format=raw,if=none",
        rootfs.display()
    ))
    .args(["-device", "virtio-blk-device,drive=root"])
    .args(["-netdev", "user,id=n0"])
    .args(["-device", "virtio-net-device,netdev=n0"])
    .args(["-device", "virtio-serial-device", "-chardev"])
    .arg(format!(
        "socket,id=agent,server=on,wait=off,path={}",
        agent_socket.display()
    ))
    .args(["-device", "virtserialport,chardev=agent,name=banger.agent"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let launched = Instant::now();
    let child = qemu.spawn().expect("qemu-system-x86_64 starts");
    let mut vm = Vm {
        child,
        console: console.clone(),
        _dir: dir,
    };
    let mut a = Agent::connect(&agent_socket, &mut vm);
    eprintln!("launch -> agent: {:.1} s", launched.elapsed().as_secs_f64());

    // The image's Env, WorkingDir and User; the exit code comes back.
    let r = a.exec(&[
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; echo $HOME; exit 4",
    ]);
    assert_eq!(r.code, Some(4), "{r:?}");
    assert_eq!(
        r.stdout, "from the image\n/srv/app\n1000\n1000\n/home/app\n",
        "{r:?}"
    );
    // No argv: the image's Entrypoint + Cmd.
    let r = a.exec(&[]);
    assert_eq!(r.stdout, "default command\napp\n", "{r:?}");

    // PID 1 is banger's init, the agent its child.
    assert_eq!(a.sh("cat /proc/1/comm"), "init");
    assert_eq!(a.sh("hostname"), HOSTNAME);
    let addr = a.sh("ip -4 addr show dev eth0");
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
    let route = a.sh("ip route");
    assert!(route.contains("default via 10.0.2.2 dev eth0"), "{route}");
    assert!(a.sh("ip addr show dev lo").contains("127.0.0.1/8"));
    assert_eq!(a.sh("cat /etc/resolv.conf"), "nameserver 10.0.2.3");
    assert!(a.sh("cat /etc/hosts").contains(HOSTNAME));
    let mounts = a.sh("cut -d' ' -f2,3 /proc/mounts");
    for m in [
        "/proc proc",
        "/sys sysfs",
        "/dev devtmpfs",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/run tmpfs",
    ] {
        assert!(mounts.lines().any(|l| l == m), "{m} not in {mounts}");
    }

    // A pty: the shell has a controlling terminal and its own session.
    let r = a.exec_with(
        &[
            "sh",
            "-c",
            "tty; [ $$ = $(cut -d' ' -f6 /proc/$$/stat) ] && echo leader",
        ],
        true,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("/dev/pts/"), "{r:?}");
    assert!(r.stdout.contains("leader"), "{r:?}");

    // An orphan: the shell leaves a background process and exits; once it
    // ends, PID 1 must reap it (a zombie would stay in /proc).
    let pid = a.sh("sleep 1 >/dev/null 2>&1 & echo $!");
    let ppid_seen = a.exec(&["sh", "-c", &format!("cut -d' ' -f4 /proc/{pid}/stat")]);
    eprintln!("orphan {pid}: parent {:?}", ppid_seen.stdout.trim());
    let t = Instant::now();
    loop {
        let r = a.exec(&["sh", "-c", &format!("cat /proc/{pid}/stat")]);
        if r.code != Some(0) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "orphan {pid} not reaped: {}",
            r.stdout
        );
    }
    eprintln!("orphan reaped after {:.1} s", t.elapsed().as_secs_f64());
    let zombies = a.sh("grep -l '^[0-9]* ([^)]*) Z' /proc/[0-9]*/stat 2>/dev/null; true");
    assert_eq!(zombies, "", "zombies left");

    // PID 1 blocks SIGTERM and SIGINT for itself; the agent (the exec'd
    // shell's parent) and what it runs must not inherit that.
    assert_eq!(
        a.sh("grep SigBlk /proc/$PPID/status /proc/$$/status | cut -f2"),
        "0000000000000000\n0000000000000000"
    );
    // The power button powers off.
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
            "no power-off within {POWEROFF_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let console_text = fs::read_to_string(&console).unwrap_or_default();
    assert!(
        console_text.contains("init: powering off (the power button)"),
        "{console_text}"
    );
}
