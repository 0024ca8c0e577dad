//! The Firecracker backend's whole flow, against whichever binary the
//! caller names: configure and start a stub ELF guest, pause, resume,
//! snapshot, load, stop, and the refusals with their rollback. Shared by
//! `crates/vmm/tests/firecracker.rs` (a real Firecracker) and
//! `crates/fc-fake/tests/backend.rs` (the fake, in CI).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_vmm::firecracker::{FirecrackerFiles, FirecrackerVmm, memory_file_of};
use banger_vmm::testkit::{STUB_ELF_BANNER, write_stub_elf_guest};
use banger_vmm::{
    Accel, AgentChannel, BootSource, DiskFormat, Drive, MachineConfig, MemoryBacking, RamSave,
    Signal, VmRunState, VmSpec, Vmm, VmmError,
};

fn spec(dir: &Path, kernel: &Path, id: &str) -> VmSpec {
    let vm_dir = dir.join(id);
    fs::create_dir_all(&vm_dir).unwrap();
    let root = vm_dir.join("root.raw");
    if !root.exists() {
        let f = fs::File::create(&root).unwrap();
        f.set_len(8 << 20).unwrap();
    }
    VmSpec {
        vm_id: id.into(),
        name: id.into(),
        vm_dir: vm_dir.clone(),
        boot: BootSource {
            kernel: kernel.to_path_buf(),
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
            path: root,
            format: DiskFormat::Raw,
            read_only: false,
            is_root: true,
        }],
        net: Vec::new(),
        agent: Some(AgentChannel::HybridVsock { port: 1024 }),
        accel: Accel::Kvm,
        console_log: vm_dir.join("console.log"),
        join_namespaces_of: None,
    }
}

fn wait_for_console(spec: &VmSpec, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(&spec.console_log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared in {}: {text:?}",
            spec.console_log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// No process still has the VM's API socket on its command line.
fn nothing_left(spec: &VmSpec) {
    let files = FirecrackerFiles::in_dir(&spec.vm_dir);
    let sock = files.api_socket.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
            .any(|argv| String::from_utf8_lossy(&argv).contains(&sock));
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a firecracker of {sock} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!files.api_socket.exists(), "the api socket was left behind");
}

/// Returns the directory the VMs were made in (their logs are there).
pub fn whole_backend(binary: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let kernel = dir.join("stub.elf");
    write_stub_elf_guest(&kernel).unwrap();
    let vmm = FirecrackerVmm::new(binary);

    // The version, as snapshots record it.
    let build = vmm.build().unwrap();
    assert!(!build.version.is_empty(), "{build:?}");

    // Configure and start.
    let a = spec(dir, &kernel, "fca");
    let handle = vmm.launch(&a).unwrap();
    wait_for_console(&a, STUB_ELF_BANNER);
    assert!(vmm.is_running(&handle, "fca"));
    assert!(!vmm.is_running(&handle, "other"));
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Running);
    assert!(FirecrackerFiles::in_dir(&a.vm_dir).vsock_socket.exists());

    // Refused while running: a save needs a paused VM.
    let state = dir.join("snap").join("vmstate");
    fs::create_dir_all(state.parent().unwrap()).unwrap();
    match vmm.save_state(&handle, &state, RamSave::IntoState) {
        Err(VmmError::NotPaused { state }) => assert_eq!(state, VmRunState::Running),
        other => panic!("save of a running vm: {other:?}"),
    }

    // Pause, snapshot, resume.
    vmm.pause(&handle).unwrap();
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Paused);
    let report = vmm.save_state(&handle, &state, RamSave::IntoState).unwrap();
    assert!(state.is_file() && memory_file_of(&state).is_file());
    assert!(report.bytes >= 64 << 20, "{report:?}");
    vmm.resume(&handle).unwrap();
    assert_eq!(vmm.status(&handle).unwrap(), VmRunState::Running);

    // Load it into a new process in another directory, with its own disk
    // of the same name.
    let b = spec(dir, &kernel, "fcb");
    let restored = vmm.restore(&b, &state, RamSave::IntoState, true).unwrap();
    assert_eq!(vmm.status(&restored).unwrap(), VmRunState::Running);
    assert!(vmm.is_running(&restored, "fcb"));
    let paused = {
        let c = spec(dir, &kernel, "fcc");
        let h = vmm.restore(&c, &state, RamSave::IntoState, false).unwrap();
        assert_eq!(vmm.status(&h).unwrap(), VmRunState::Paused);
        vmm.resume(&h).unwrap();
        assert_eq!(vmm.status(&h).unwrap(), VmRunState::Running);
        (c, h)
    };

    // Stop: Ctrl-Alt-Del is accepted; the stub ignores it (the fake powers
    // off), then the bounded wait and a kill.
    for (s, h) in [(&a, &handle), (&b, &restored), (&paused.0, &paused.1)] {
        vmm.request_shutdown(h).unwrap();
        if !vmm.wait_exit(h, Duration::from_millis(500)).unwrap() {
            vmm.kill(h, Signal::Kill).unwrap();
            assert!(vmm.wait_exit(h, Duration::from_secs(10)).unwrap());
        }
        assert!(!vmm.is_running(h, &s.vm_id));
        assert!(vmm.take_exit(h).is_some(), "the reaper saw it end");
        assert!(matches!(vmm.status(h), Err(VmmError::NotRunning { .. })));
    }

    // A bad kernel: Firecracker's own words, and nothing left.
    let bad_kernel = dir.join("not-a-kernel");
    fs::write(&bad_kernel, vec![0x42u8; 8192]).unwrap();
    let d = spec(dir, &bad_kernel, "fcd");
    let err = vmm.launch(&d).unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(err, VmmError::FirecrackerApi { .. }) && text.contains("PUT /actions"),
        "{text}"
    );
    assert!(text.contains("answered 400"), "{text}");
    nothing_left(&d);

    // A restore of a state that is not one: refused, nothing left.
    let e = spec(dir, &kernel, "fce");
    let junk = dir.join("junk.state");
    fs::write(&junk, b"junk").unwrap();
    fs::write(memory_file_of(&junk), b"").unwrap();
    let err = vmm
        .restore(&e, &junk, RamSave::IntoState, true)
        .unwrap_err();
    assert!(chain(&err).contains("/snapshot/load"), "{}", chain(&err));
    nothing_left(&e);

    // What this backend cannot run, refused before anything starts.
    let mut tcg = spec(dir, &kernel, "fcf");
    tcg.accel = Accel::Tcg;
    assert!(matches!(vmm.launch(&tcg), Err(VmmError::InvalidSpec(_))));
    let mut qcow = spec(dir, &kernel, "fcg");
    qcow.drives[0].format = DiskFormat::Qcow2;
    assert!(matches!(vmm.launch(&qcow), Err(VmmError::InvalidSpec(_))));
    let mut missing = spec(dir, &kernel, "fch");
    missing.boot.kernel = PathBuf::from("/nonexistent/vmlinux");
    assert!(matches!(
        vmm.launch(&missing),
        Err(VmmError::MissingFile { .. })
    ));
    assert!(matches!(
        vmm.save_state(&handle, &state, RamSave::KeptInSharedFile),
        Err(VmmError::NotSupported { .. })
    ));
    tmp
}

/// As root: two TAP devices in a network namespace of a thread of its own,
/// a VM with a NIC on the first, saved and loaded onto the second
/// (`network_overrides`). Firecracker, spawned from that thread, lives in
/// that namespace; the namespace and its TAPs go when both VMs and the
/// thread are gone. Prints why when not root.
pub fn nic_on_a_tap(binary: &Path) {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: tap devices need root");
        return;
    }
    let binary = binary.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: CLONE_NEWNET changes only this thread's network
        // namespace; no file descriptor table or filesystem state is
        // unshared, and nothing else runs on this thread.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .expect("unshare the network namespace");
        for tap in ["fctap0", "fctap1"] {
            let ok = std::process::Command::new("ip")
                .args(["tuntap", "add", "dev", tap, "mode", "tap"])
                .status()
                .expect("run ip");
            assert!(ok.success(), "ip tuntap add {tap}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let kernel = tmp.path().join("stub.elf");
        write_stub_elf_guest(&kernel).unwrap();
        let vmm = FirecrackerVmm::new(&binary);
        let with_nic = |id: &str, tap: &str| {
            let mut s = spec(tmp.path(), &kernel, id);
            s.net = vec![banger_vmm::NetInterface {
                id: "eth0".into(),
                mac: Some("02:fc:00:00:00:01".into()),
                backend: banger_vmm::NetBackend::Tap {
                    tap_name: tap.into(),
                },
            }];
            s
        };
        let a = with_nic("neta", "fctap0");
        let handle = vmm.launch(&a).unwrap();
        wait_for_console(&a, STUB_ELF_BANNER);
        vmm.pause(&handle).unwrap();
        let state = tmp.path().join("netstate");
        vmm.save_state(&handle, &state, RamSave::IntoState).unwrap();
        let b = with_nic("netb", "fctap1");
        let restored = vmm.restore(&b, &state, RamSave::IntoState, true).unwrap();
        assert_eq!(vmm.status(&restored).unwrap(), VmRunState::Running);
        for h in [&handle, &restored] {
            vmm.kill(h, Signal::Kill).unwrap();
            assert!(vmm.wait_exit(h, Duration::from_secs(10)).unwrap());
            vmm.cleanup(h);
        }
    })
    .join()
    .expect("the tap test thread");
}
