//! Whether Firecracker really boots a Linux guest here: `/dev/kvm` can be
//! present and still hang every stock kernel (a nested PVM hypervisor, as
//! on the machines banger is built on, where tiny non-Linux guests run but
//! Linux prints nothing). The probe boots `kernel` with the QEMU probe's
//! command line ([`crate::probe::PROBE_CMDLINE`]) and watches the serial
//! console for the same late milestones, then kills Firecracker.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::FirecrackerVmm;
use crate::Vmm;
use crate::probe::{KvmProbe, PROBE_CMDLINE, kvm_unopenable, late_milestone};
use crate::qemu::tail_lines;
use crate::spec::{Accel, BootSource, MachineConfig, MemoryBacking, Signal, VmSpec};

impl FirecrackerVmm {
    /// Boots `kernel` (and `initrd`) for at most `timeout` and says
    /// whether Firecracker runs Linux guests here (see the module docs).
    pub fn probe_kvm_boot(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        timeout: Duration,
    ) -> KvmProbe {
        if let Some(unusable) = kvm_unopenable() {
            return unusable;
        }
        let dir = match tempfile::Builder::new()
            .prefix("banger-fc-probe-")
            .tempdir()
        {
            Ok(d) => d,
            Err(e) => return KvmProbe::Failed(format!("create a temporary directory: {e}")),
        };
        let spec = VmSpec {
            vm_id: "kvm-probe".into(),
            name: "kvm-probe".into(),
            vm_dir: dir.path().to_path_buf(),
            boot: BootSource {
                kernel: kernel.to_path_buf(),
                initrd: initrd.map(Path::to_path_buf),
                cmdline: PROBE_CMDLINE.into(),
            },
            machine: MachineConfig {
                vcpus: 1,
                memory_mib: 256,
            },
            memory: MemoryBacking::Anonymous,
            drives: Vec::new(),
            net: Vec::new(),
            agent: None,
            accel: Accel::Kvm,
            console_log: dir.path().join("console.log"),
            join_namespaces_of: None,
        };
        let handle = match self.launch(&spec) {
            Ok(h) => h,
            Err(e) => return KvmProbe::Failed(crate::error::chain(&e)),
        };
        let deadline = Instant::now() + timeout;
        let verdict = loop {
            let output = fs::read(&spec.console_log).unwrap_or_default();
            let output = String::from_utf8_lossy(&output);
            if late_milestone(&output).is_some() {
                break KvmProbe::Usable;
            }
            if !self.is_running(&handle, &spec.vm_id) {
                let last = tail_lines(&output, 1, 200);
                break KvmProbe::Failed(if last.is_empty() {
                    "firecracker exited without console output".into()
                } else {
                    format!("firecracker exited after the console showed {last:?}")
                });
            }
            if Instant::now() >= deadline {
                break KvmProbe::Hangs;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if self.is_running(&handle, &spec.vm_id) {
            let _ = self.kill(&handle, Signal::Kill);
            let _ = self.wait_exit(&handle, Duration::from_secs(5));
        }
        let _ = self.take_exit(&handle);
        verdict
    }
}
