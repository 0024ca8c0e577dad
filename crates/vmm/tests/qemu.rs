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
    NetInterface, PortForward, Proto, QemuVmm, Signal, VmFiles, VmHandle, VmRunState, VmSpec, Vmm,
    VmmError, qemu_pids_with_arg, session_id, testkit,
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
