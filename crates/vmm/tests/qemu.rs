//! Real QEMU processes on this machine, booting the crate's stub kernel
//! under TCG. Every QEMU a test starts carries `banger-<vm id>` on its
//! command line, and a drop guard SIGKILLs whatever still carries it, so
//! nothing outlives a test, even one that panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use banger_vmm::{
    Accel, BackendKind, BootSource, DiskFormat, Drive, MachineConfig, MemoryBacking, NetBackend,
    NetInterface, PortForward, Proto, QemuVmm, RamSave, Signal, VmFiles, VmHandle, VmRunState,
    VmSpec, Vmm, VmmError, qemu_pids_with_arg, session_id, testkit,
};

const HELPER_ENV: &str = "BANGER_VMM_TEST_LAUNCH_SPEC";

/// Kills every QEMU whose argv names this VM, on drop.
struct Cleanup {
    vm_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in qemu_pids_with_arg(&format!("banger-{}", self.vm_id)) {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}

struct TestVm {
    dir: tempfile::TempDir,
    spec: VmSpec,
    cleanup: Cleanup,
}

fn unique_id(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A VM with the stub kernel, a 1 MiB raw root drive and user networking
/// with one forward from a free loopback port.
fn test_vm(tag: &str) -> TestVm {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("stub-kernel");
    testkit::write_stub_kernel(&kernel).unwrap();
    let disk = dir.path().join("root.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vm_id = unique_id(tag);
    let spec = VmSpec {
        vm_id: vm_id.clone(),
        name: format!("test-{tag}"),
        vm_dir: dir.path().join("vm"),
        boot: BootSource {
            kernel,
            initrd: None,
            cmdline: "console=ttyS0".into(),
        },
        machine: MachineConfig {
            vcpus: 1,
            memory_mib: 64,
        },
        memory: MemoryBacking::Anonymous,
        drives: vec![Drive {
            id: "root".into(),
            path: disk,
            format: DiskFormat::Raw,
            read_only: false,
            is_root: true,
        }],
        net: vec![NetInterface {
            id: "net0".into(),
            mac: Some("52:54:00:12:34:56".into()),
            backend: NetBackend::User {
                restrict: false,
                forwards: vec![PortForward {
                    proto: Proto::Tcp,
                    host_addr: "127.0.0.1".parse().unwrap(),
                    host_port: free_port(),
                    guest_port: 22,
                }],
            },
        }],
        agent: None,
        accel: Accel::Tcg,
        console_log: dir.path().join("vm").join("console.log"),
        join_namespaces_of: None,
    };
    TestVm {
        dir,
        spec,
        cleanup: Cleanup { vm_id },
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn vmm() -> QemuVmm {
    QemuVmm::detect().expect("qemu-system-x86_64 on PATH")
}

fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_for_console(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pid that certainly belonged to a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn launch_inspect_shutdown_kill_and_relaunch() {
    let vm = test_vm("life");
    let qemu = vmm();
    let vmm: &dyn Vmm = &qemu;
    assert_eq!(vmm.kind(), BackendKind::Qemu);

    let started = Instant::now();
    let handle = vmm.launch(&vm.spec).unwrap();
    eprintln!("launch to qmp ready: {:?}", started.elapsed());

    // A live qemu, in a session of its own.
    assert!(pid_exists(handle.pid));
    let exe = exe_of(handle.pid);
    assert!(
        exe.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("qemu-system-"),
        "{}",
        exe.display()
    );
    assert_eq!(handle.backend, BackendKind::Qemu);
    assert_eq!(
        handle.control_socket,
        VmFiles::in_dir(&vm.spec.vm_dir).control_socket
    );
    assert_eq!(session_id(handle.pid).unwrap(), handle.pid);
    assert_ne!(
        session_id(handle.pid).unwrap(),
        session_id(std::process::id()).unwrap()
    );
    let pidfile = std::fs::read_to_string(VmFiles::in_dir(&vm.spec.vm_dir).pidfile).unwrap();
    assert_eq!(pidfile.trim(), handle.pid.to_string());

    // Ownership: right id yes; another id, a dead pid, another socket no.
    assert!(vmm.is_running(&handle, &vm.spec.vm_id));
    assert!(!vmm.is_running(&handle, "some-other-vm"));
    assert!(!vmm.is_running(&handle, "bad,id"));
    let dead = VmHandle {
        pid: dead_pid(),
        ..handle.clone()
    };
    assert!(!vmm.is_running(&dead, &vm.spec.vm_id));
    let not_qemu = VmHandle {
        pid: std::process::id(),
        ..handle.clone()
    };
    assert!(!vmm.is_running(&not_qemu, &vm.spec.vm_id));
    let other_socket = VmHandle {
        control_socket: vm.dir.path().join("elsewhere.sock"),
        ..handle.clone()
    };
    assert!(!vmm.is_running(&other_socket, &vm.spec.vm_id));
    assert!(matches!(
        vmm.kill(&not_qemu, Signal::Kill),
        Err(VmmError::NotRunning { .. })
    ));

    // QMP answers; the stub kernel reached the console log.
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Running);
    let console = wait_for_console(&vm.spec.console_log, testkit::STUB_KERNEL_BANNER);
    assert!(
        console.contains(testkit::STUB_KERNEL_BANNER),
        "console: {console:?}"
    );

    // Powerdown is accepted (the stub ignores it), so the VM keeps running.
    vmm.request_shutdown(&handle).unwrap();
    assert!(!vmm.wait_exit(&handle, Duration::from_millis(300)).unwrap());
    assert!(vmm.is_running(&handle, &vm.spec.vm_id));

    // SIGKILL: gone within seconds, and reaped (no zombie left).
    vmm.kill(&handle, Signal::Kill).unwrap();
    let killed = Instant::now();
    assert!(vmm.wait_exit(&handle, Duration::from_secs(5)).unwrap());
    eprintln!("kill to exit observed: {:?}", killed.elapsed());
    assert!(!vmm.is_running(&handle, &vm.spec.vm_id));
    let deadline = Instant::now() + Duration::from_secs(2);
    while pid_exists(handle.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!pid_exists(handle.pid), "pid {} still exists", handle.pid);
    assert!(matches!(
        vmm.kill(&handle, Signal::Term),
        Err(VmmError::NotRunning { .. })
    ));
    assert!(matches!(
        vmm.status(&handle),
        Err(VmmError::NotRunning { .. })
    ));
    assert!(matches!(
        vmm.request_shutdown(&handle),
        Err(VmmError::NotRunning { .. })
    ));

    // The same VM starts again over the stale socket, and SIGTERM ends it.
    let again = vmm.launch(&vm.spec).unwrap();
    assert_ne!(again.pid, handle.pid);
    assert!(vmm.is_running(&again, &vm.spec.vm_id));
    vmm.kill(&again, Signal::Term).unwrap();
    assert!(vmm.wait_exit(&again, Duration::from_secs(5)).unwrap());
    let log = std::fs::read_to_string(VmFiles::in_dir(&vm.spec.vm_dir).vmm_log).unwrap();
    assert_eq!(log.matches("--- banger: launching vm").count(), 2, "{log}");
    assert!(log.contains("terminating on signal 15"), "{log}");
    drop(vm.cleanup);
}

#[test]
fn missing_kernel_is_named_and_nothing_is_left() {
    let mut vm = test_vm("nokernel");
    vm.spec.boot.kernel = vm.dir.path().join("no-such-vmlinuz");
    let err = vmm().launch(&vm.spec).unwrap_err();
    eprintln!("missing kernel: {err}");
    assert!(matches!(err, VmmError::MissingFile { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "kernel not found: {}",
            vm.dir.path().join("no-such-vmlinuz").display()
        )
    );
    assert!(qemu_pids_with_arg(&format!("banger-{}", vm.spec.vm_id)).is_empty());
}

#[test]
fn kernel_qemu_refuses_fails_with_the_log_tail() {
    let vm = test_vm("badkernel");
    std::fs::write(&vm.spec.boot.kernel, b"junk").unwrap();
    let err = vmm().launch(&vm.spec).unwrap_err();
    let message = err.to_string();
    eprintln!("bad kernel: {message}");
    assert!(matches!(err, VmmError::StartupExit { .. }), "{err:?}");
    assert!(message.contains("invalid kernel header"), "{message}");
    assert!(message.contains("exited during startup"), "{message}");
    assert!(
        message.contains(&vm.spec.console_log.display().to_string()),
        "{message}"
    );
    assert!(qemu_pids_with_arg(&format!("banger-{}", vm.spec.vm_id)).is_empty());
}

#[test]
fn busy_host_port_is_named_and_nothing_is_left() {
    let mut vm = test_vm("busyport");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    vm.spec.net[0].backend = NetBackend::User {
        restrict: false,
        forwards: vec![PortForward {
            proto: Proto::Tcp,
            host_addr: "127.0.0.1".parse().unwrap(),
            host_port: port,
            guest_port: 22,
        }],
    };
    let err = vmm().launch(&vm.spec).unwrap_err();
    let message = err.to_string();
    eprintln!("busy port: {message}");
    assert!(
        matches!(err, VmmError::HostForward { host_port, .. } if host_port == port),
        "{err:?}"
    );
    assert!(
        message.starts_with(&format!(
            "cannot forward host port 127.0.0.1:{port}/tcp to guest port 22: address already in use"
        )),
        "{message}"
    );
    assert!(qemu_pids_with_arg(&format!("banger-{}", vm.spec.vm_id)).is_empty());
    drop(listener);
}

#[test]
fn startup_timeout_kills_qemu() {
    let vm = test_vm("timeout");
    let mut qemu = vmm();
    qemu.start_timeout = Duration::ZERO;
    let err = qemu.launch(&vm.spec).unwrap_err();
    eprintln!("timeout: {err}");
    assert!(matches!(err, VmmError::StartupTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(qemu_pids_with_arg(&format!("banger-{}", vm.spec.vm_id)).is_empty());
}

/// Not a test on its own: the body of `vm_survives_its_launcher`'s child
/// process, which launches a VM, prints its handle and exits.
#[test]
fn launcher_helper() {
    let Some(spec_path) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let spec: VmSpec = serde_json::from_slice(&std::fs::read(spec_path).unwrap()).unwrap();
    let handle = vmm().launch(&spec).unwrap();
    println!("HANDLE:{}", serde_json::to_string(&handle).unwrap());
}

#[test]
fn vm_survives_its_launcher() {
    let vm = test_vm("orphan");
    let spec_path = vm.dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&vm.spec).unwrap()).unwrap();

    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "launcher_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &spec_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let handle: VmHandle = stdout
        .lines()
        .find_map(|l| l.split_once("HANDLE:").map(|(_, json)| json))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| panic!("no handle in {stdout}"));

    // The launcher has exited; its VM has not, and is still ours.
    let vmm = vmm();
    assert!(vmm.is_running(&handle, &vm.spec.vm_id));
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Running);
    assert_ne!(
        session_id(handle.pid).unwrap(),
        session_id(std::process::id()).unwrap()
    );

    // Not our child: wait_exit must poll.
    vmm.kill(&handle, Signal::Kill).unwrap();
    assert!(vmm.wait_exit(&handle, Duration::from_secs(5)).unwrap());
    assert!(!vmm.is_running(&handle, &vm.spec.vm_id));
    drop(vm.cleanup);
}

/// With a real kernel (`BANGER_TEST_KERNEL` or `/boot/vmlinuz-*`; skipped
/// when there is none): the full argv boots it under TCG, its console
/// reaches the log, and a guest panic with `panic=-1` ends QEMU
/// (`-no-reboot`), which `wait_exit` sees.
#[test]
fn real_kernel_boots_panics_and_qemu_exits() {
    let Some(kernel) = testkit::host_kernel() else {
        eprintln!("skipped: no BANGER_TEST_KERNEL and no /boot/vmlinuz-*");
        return;
    };
    let mut vm = test_vm("realkernel");
    vm.spec.boot.kernel = kernel;
    vm.spec.boot.cmdline = "console=ttyS0 panic=-1 root=/dev/banger-none".into();
    vm.spec.machine.memory_mib = 256;
    let vmm = vmm();
    let started = Instant::now();
    let handle = vmm.launch(&vm.spec).unwrap();
    eprintln!("real kernel: qmp ready after {:?}", started.elapsed());
    assert!(vmm.wait_exit(&handle, Duration::from_secs(30)).unwrap());
    eprintln!("real kernel: qemu gone after {:?}", started.elapsed());
    let console = std::fs::read_to_string(&vm.spec.console_log).unwrap();
    assert!(console.contains("Linux version"), "{console}");
    assert!(console.contains("Kernel panic"), "{console}");
    assert!(!vmm.is_running(&handle, &vm.spec.vm_id));
    drop(vm.cleanup);
}

// Snapshots: pause, resume, save and restore with the stub kernel.

/// Kills a VM at the end of a test and waits until it is gone.
fn stop(vmm: &QemuVmm, handle: &VmHandle) {
    vmm.kill(handle, Signal::Kill).unwrap();
    assert!(vmm.wait_exit(handle, Duration::from_secs(5)).unwrap());
}

/// Guest physical memory `[at, at + len)`, dumped by QEMU (QMP `pmemsave`).
fn guest_memory(handle: &VmHandle, at: u64, len: u64, into: &Path) -> Vec<u8> {
    let stream = std::os::unix::net::UnixStream::connect(&handle.control_socket).unwrap();
    let reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut qmp = qapi::Qmp::new(qapi::Stream::new(reader, stream));
    qmp.handshake().unwrap();
    qmp.execute(&qapi::qmp::pmemsave {
        val: at,
        size: len,
        filename: into.to_str().unwrap().into(),
    })
    .unwrap();
    std::fs::read(into).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The same VM shape in a directory of its own (its own disk copy and
/// forwarded port), for restoring a state saved from `of`.
fn twin_of(of: &TestVm, tag: &str) -> TestVm {
    let mut twin = test_vm(tag);
    twin.spec.machine = of.spec.machine;
    twin.spec.memory = of.spec.memory.clone();
    if of.spec.net[0].backend == NetBackend::Detached {
        twin.spec.net[0].backend = NetBackend::Detached;
    }
    twin
}

#[test]
fn snapshot_pause_save_resume_and_restore() {
    let vm = test_vm("snap");
    let qemu = vmm();
    let vmm: &dyn Vmm = &qemu;
    let build = vmm.build().unwrap();
    assert_eq!(build.backend, BackendKind::Qemu);
    assert_eq!(build.machine, "microvm");
    assert_eq!(
        build.version,
        banger_vmm::probe_qemu_at(&qemu.binary).unwrap().version
    );
    assert_eq!(vmm.build().unwrap(), build);

    let handle = vmm.launch(&vm.spec).unwrap();
    let state = vm.dir.path().join("state");
    let err = vmm
        .save_state(&handle, &state, RamSave::IntoState)
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmmError::NotPaused {
                state: VmRunState::Running
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the vm is running, not paused: pause it before saving its state"
    );

    // Saved after the stub printed its banner, so a restored copy, which
    // carries on from there, never prints it.
    let console = wait_for_console(&vm.spec.console_log, testkit::STUB_KERNEL_BANNER);
    assert!(console.contains(testkit::STUB_KERNEL_BANNER), "{console}");
    let t = Instant::now();
    vmm.pause(&handle).unwrap();
    vmm.pause(&handle).unwrap(); // already paused: fine
    eprintln!("pause: {:?}", t.elapsed());
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Paused);

    let report = vmm.save_state(&handle, &state, RamSave::IntoState).unwrap();
    eprintln!("save into state: {report:?}");
    assert!(report.bytes > 0);
    assert_eq!(report.bytes, std::fs::metadata(&state).unwrap().len());
    // Saved and left paused (QEMU's postmigrate), which QEMU does not
    // save again before it ran.
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Paused);
    let err = vmm
        .save_state(&handle, &vm.dir.path().join("twice"), RamSave::IntoState)
        .unwrap_err();
    assert!(matches!(err, VmmError::SavedAlready), "{err:?}");

    let t = Instant::now();
    vmm.resume(&handle).unwrap();
    eprintln!("resume after save: {:?}", t.elapsed());
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Running);

    // Again, into a path the shell would misread unquoted.
    vmm.pause(&handle).unwrap();
    let again = vm.dir.path().join("it's a $(state)");
    let report = vmm.save_state(&handle, &again, RamSave::IntoState).unwrap();
    eprintln!("second save: {report:?}");
    assert_eq!(report.bytes, std::fs::metadata(&again).unwrap().len());
    vmm.resume(&handle).unwrap();
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Running);

    // Restored into another VM directory, it runs, and is that VM's.
    let twin = twin_of(&vm, "snaptwin");
    let t = Instant::now();
    let restored = vmm
        .restore(&twin.spec, &state, RamSave::IntoState, true)
        .unwrap();
    eprintln!("restore (launch and load): {:?}", t.elapsed());
    assert_eq!(vmm.status(&restored).unwrap(), VmRunState::Running);
    assert!(vmm.is_running(&restored, &twin.spec.vm_id));
    assert_ne!(restored.pid, handle.pid);
    // Its RAM is the saved guest's: the stub kernel's banner is in it,
    // though this VM never booted.
    let ram = guest_memory(&restored, 0, 1 << 20, &twin.dir.path().join("low-ram"));
    assert!(contains(&ram, testkit::STUB_KERNEL_BANNER.as_bytes()));
    let twin_console = std::fs::read_to_string(&twin.spec.console_log).unwrap_or_default();
    assert!(
        !twin_console.contains(testkit::STUB_KERNEL_BANNER),
        "{twin_console}"
    );

    // Restored without resume, it stays paused until resumed.
    let paused_twin = twin_of(&vm, "snappaused");
    let held = vmm
        .restore(&paused_twin.spec, &state, RamSave::IntoState, false)
        .unwrap();
    assert_eq!(vmm.status(&held).unwrap(), VmRunState::Paused);
    vmm.resume(&held).unwrap();
    assert_eq!(vmm.status(&held).unwrap(), VmRunState::Running);

    for h in [&handle, &restored, &held] {
        stop(&qemu, h);
    }
    drop((vm.cleanup, twin.cleanup, paused_twin.cleanup));
}

/// `len` bytes that no page-level compression shrinks (xorshift64).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn snapshot_ram_kept_in_a_shared_file_restores_copy_on_write() {
    const MIB: usize = 1 << 20;
    let mut vm = test_vm("snapfile");
    // The RAM file exists already, full of noise: QEMU maps it as it is
    // (loading the kernel over its first pages), so the guest's RAM is
    // mostly incompressible and a save with the RAM is large.
    let ram_file = vm.dir.path().join("ram");
    std::fs::write(&ram_file, noise(64 * MIB)).unwrap();
    vm.spec.memory = MemoryBacking::File {
        path: ram_file.clone(),
        shared: true,
    };
    // No host network behind the NIC (and no slirp state in the save).
    vm.spec.net[0].backend = NetBackend::Detached;
    let qemu = vmm();
    let vmm: &dyn Vmm = &qemu;
    let handle = vmm.launch(&vm.spec).unwrap();
    let console = wait_for_console(&vm.spec.console_log, testkit::STUB_KERNEL_BANNER);
    assert!(console.contains(testkit::STUB_KERNEL_BANNER), "{console}");

    // With the RAM: the whole 64 MiB, and the file is complete when the
    // call returns (the report's size is the file's).
    vmm.pause(&handle).unwrap();
    let full_state = vm.dir.path().join("full");
    let full = vmm
        .save_state(&handle, &full_state, RamSave::IntoState)
        .unwrap();
    assert!(full.bytes > 64 * MIB as u64, "{full:?}");
    assert_eq!(full.bytes, std::fs::metadata(&full_state).unwrap().len());
    vmm.resume(&handle).unwrap();

    // Without: device state only.
    vmm.pause(&handle).unwrap();
    let state = vm.dir.path().join("state");
    let kept = vmm
        .save_state(&handle, &state, RamSave::KeptInSharedFile)
        .unwrap();
    eprintln!("shared-file vm: ram into the state {full:?}, ram kept in the file {kept:?}");
    assert!(kept.bytes < 128 * 1024, "{kept:?}");
    stop(&qemu, &handle);
    let ram_before = std::fs::read(&ram_file).unwrap();
    assert_eq!(ram_before.len(), 64 * MIB);
    let probe_at = 32 * MIB; // above the kernel: still the noise
    let expected = &ram_before[probe_at..probe_at + MIB];

    // Restored over the same file mapped copy-on-write: the guest sees
    // the file's bytes, and the stub's banner where it left it.
    let mut twin = twin_of(&vm, "snapfiletwin");
    twin.spec.memory = MemoryBacking::File {
        path: ram_file.clone(),
        shared: false,
    };
    let t = Instant::now();
    let restored = vmm
        .restore(&twin.spec, &state, RamSave::KeptInSharedFile, true)
        .unwrap();
    eprintln!("restore over the ram file: {:?}", t.elapsed());
    assert_eq!(vmm.status(&restored).unwrap(), VmRunState::Running);
    let dump = twin.dir.path().join("dump");
    let low = guest_memory(&restored, 0, MIB as u64, &dump);
    assert!(contains(&low, testkit::STUB_KERNEL_BANNER.as_bytes()));
    assert!(guest_memory(&restored, probe_at as u64, MIB as u64, &dump) == expected);
    // It ran, and paused and ran again; share=off never wrote the file.
    vmm.pause(&restored).unwrap();
    vmm.resume(&restored).unwrap();
    stop(&qemu, &restored);
    assert!(
        std::fs::read(&ram_file).unwrap() == ram_before,
        "the ram file changed"
    );

    // The state with the RAM restores into anonymous memory, the same bytes.
    let mut anonymous = twin_of(&vm, "snapanon");
    anonymous.spec.memory = MemoryBacking::Anonymous;
    let t = Instant::now();
    let loaded = vmm
        .restore(&anonymous.spec, &full_state, RamSave::IntoState, true)
        .unwrap();
    eprintln!("restore 64 MiB of ram from the state: {:?}", t.elapsed());
    let dump = anonymous.dir.path().join("dump");
    assert!(guest_memory(&loaded, probe_at as u64, MIB as u64, &dump) == expected);
    stop(&qemu, &loaded);

    // A state without RAM needs a file to map; a private file must exist.
    let err = vmm
        .restore(&anonymous.spec, &state, RamSave::KeptInSharedFile, true)
        .unwrap_err();
    assert!(matches!(err, VmmError::InvalidSpec(_)), "{err:?}");
    anonymous.spec.memory = MemoryBacking::File {
        path: vm.dir.path().join("no-such-ram"),
        shared: false,
    };
    let err = vmm
        .restore(&anonymous.spec, &state, RamSave::KeptInSharedFile, true)
        .unwrap_err();
    assert!(
        matches!(&err, VmmError::MissingFile { what, .. } if what == "memory file"),
        "{err:?}"
    );
    assert!(qemu_pids_with_arg(&format!("banger-{}", anonymous.spec.vm_id)).is_empty());
    drop((vm.cleanup, twin.cleanup, anonymous.cleanup));
}

#[test]
fn snapshot_restore_into_another_shape_fails_and_leaves_nothing() {
    let vm = test_vm("snapshape");
    let qemu = vmm();
    let vmm: &dyn Vmm = &qemu;
    let handle = vmm.launch(&vm.spec).unwrap();
    vmm.pause(&handle).unwrap();
    let state = vm.dir.path().join("state");
    vmm.save_state(&handle, &state, RamSave::IntoState).unwrap();
    stop(&qemu, &handle);

    let mut bigger = twin_of(&vm, "snapbigger");
    bigger.spec.machine.memory_mib = 128;
    let t = Instant::now();
    let err = vmm
        .restore(&bigger.spec, &state, RamSave::IntoState, true)
        .unwrap_err();
    let message = err.to_string();
    eprintln!("restore into 128 MiB: {message} (after {:?})", t.elapsed());
    assert!(matches!(err, VmmError::Migration { .. }), "{err:?}");
    assert!(message.contains("mismatch: mem: 0x4000000"), "{message}");
    assert!(qemu_pids_with_arg(&format!("banger-{}", bigger.spec.vm_id)).is_empty());

    // Told the RAM was kept out when it was not: QEMU names the capability.
    let mut filed = twin_of(&vm, "snapcap");
    let ram = filed.dir.path().join("ram");
    std::fs::write(&ram, vec![0u8; 64 << 20]).unwrap();
    filed.spec.memory = MemoryBacking::File {
        path: ram,
        shared: false,
    };
    let err = vmm
        .restore(&filed.spec, &state, RamSave::KeptInSharedFile, true)
        .unwrap_err();
    eprintln!("restore with the wrong ram mode: {err}");
    assert!(err.to_string().contains("x-ignore-shared"), "{err}");
    assert!(qemu_pids_with_arg(&format!("banger-{}", filed.spec.vm_id)).is_empty());

    // A missing state is named before anything starts.
    let err = vmm
        .restore(
            &bigger.spec,
            &vm.dir.path().join("nothing"),
            RamSave::IntoState,
            true,
        )
        .unwrap_err();
    assert!(matches!(err, VmmError::MissingFile { .. }), "{err:?}");
    drop((vm.cleanup, bigger.cleanup, filed.cleanup));
}
