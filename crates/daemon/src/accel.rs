//! Choosing KVM or TCG (docs/vms.md, "Accelerator").
//!
//! `/dev/kvm` existing is not enough: a nested hypervisor can expose it
//! and still hang a stock kernel. In `auto` mode the first boot runs a probe
//! (a short KVM boot of the VM's kernel, with a timeout) and records the
//! verdict in the cache, keyed by QEMU and kernel version, so later boots
//! decide at once. `BANGER_ACCEL=kvm|tcg` forces either.

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_store::KernelRecord;
use banger_vmm::{Accel, KvmProbe};
use serde::{Deserialize, Serialize};

use crate::config::AccelChoice;
use crate::op::OpCtx;

const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub qemu_version: String,
    pub kernel: String,
    pub usable: bool,
    pub detail: String,
}

/// Chooses the accelerator of each boot; keeps the probe's verdict and the
/// host's TSC rate in the cache dir.
#[derive(Debug)]
pub struct AccelChooser {
    choice: AccelChoice,
    cache_dir: PathBuf,
}

impl AccelChooser {
    pub fn new(choice: AccelChoice, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            choice,
            cache_dir: cache_dir.into(),
        }
    }

    /// What `BANGER_ACCEL` asked for.
    pub fn choice(&self) -> AccelChoice {
        self.choice
    }

    pub fn probe_file(&self) -> PathBuf {
        self.cache_dir.join("kvm-probe.json")
    }

    /// The last probe's verdict, if one was recorded.
    pub fn recorded(&self) -> Option<ProbeRecord> {
        let text = std::fs::read(self.probe_file()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The accelerator for a boot of `kernel`, and why.
    pub async fn choose(&self, kernel: &KernelRecord, ctx: &OpCtx) -> (Accel, String) {
        match self.choice {
            AccelChoice::Kvm => return (Accel::Kvm, "forced by BANGER_ACCEL=kvm".into()),
            AccelChoice::Tcg => return (Accel::Tcg, "forced by BANGER_ACCEL=tcg".into()),
            AccelChoice::Auto => {}
        }
        if !Path::new("/dev/kvm").exists() {
            return (Accel::Tcg, "no /dev/kvm".into());
        }
        let kernel_key = kernel.kernel_path.display().to_string();
        if let Some(r) = self.recorded() {
            if r.kernel == kernel_key {
                return verdict(&r);
            }
        }
        ctx.stage("probe kvm");
        let record = self.run_probe(kernel).await;
        verdict(&record)
    }

    /// Boots `kernel` under KVM with a timeout and records the verdict.
    pub async fn run_probe(&self, kernel: &KernelRecord) -> ProbeRecord {
        let path = kernel.kernel_path.clone();
        let initrd = kernel.initrd_path.clone();
        let file = self.probe_file();
        let probed = tokio::task::spawn_blocking(move || {
            let probe = banger_vmm::probe_kvm_boot(&path, initrd.as_deref(), PROBE_TIMEOUT);
            let qemu_version = banger_vmm::probe_qemu()
                .map(|q| q.version)
                .unwrap_or_default();
            let record = probe_record(probe, qemu_version, &path);
            if let Ok(text) = serde_json::to_vec_pretty(&record) {
                let _ = file.parent().map(std::fs::create_dir_all);
                let _ = std::fs::write(&file, text);
            }
            record
        })
        .await;
        let record = probed.unwrap_or_else(|e| {
            probe_record(
                KvmProbe::Failed(format!("probe task failed: {e}")),
                String::new(),
                &kernel.kernel_path,
            )
        });
        tracing::info!(usable = record.usable, detail = %record.detail, "kvm probe done");
        record
    }

    /// The host's TSC rate as measured in this host boot: from the cache
    /// when a daemon of this boot already measured it, else measured now
    /// (200 ms) and recorded. Keyed by the kernel's boot id, since the rate
    /// is a fact of the running host.
    pub async fn host_tsc_khz(&self) -> Option<u64> {
        #[derive(Serialize, Deserialize)]
        struct Record {
            boot_id: String,
            tsc_khz: Option<u64>,
        }
        let path = self.cache_dir.join("host-clock.json");
        tokio::task::spawn_blocking(move || {
            let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            let cached = std::fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<Record>(&t).ok())
                .filter(|r| !boot_id.is_empty() && r.boot_id == boot_id);
            if let Some(r) = cached {
                return r.tsc_khz;
            }
            let tsc_khz = banger_vmm::host_tsc_khz();
            let record = Record { boot_id, tsc_khz };
            if let Ok(text) = serde_json::to_vec_pretty(&record) {
                let _ = path.parent().map(std::fs::create_dir_all);
                let _ = std::fs::write(&path, text);
            }
            tsc_khz
        })
        .await
        .ok()
        .flatten()
    }
}

fn probe_record(probe: KvmProbe, qemu_version: String, kernel: &Path) -> ProbeRecord {
    let (usable, detail) = match probe {
        KvmProbe::Usable => (true, "kvm boots guests".to_owned()),
        KvmProbe::Absent => (false, "no /dev/kvm".to_owned()),
        KvmProbe::Hangs => (
            false,
            "/dev/kvm is present but hangs guests (nested hypervisor?)".to_owned(),
        ),
        KvmProbe::Failed(why) => (false, format!("kvm failed: {why}")),
    };
    ProbeRecord {
        qemu_version,
        kernel: kernel.display().to_string(),
        usable,
        detail,
    }
}

fn verdict(r: &ProbeRecord) -> (Accel, String) {
    if r.usable {
        (Accel::Kvm, format!("kvm probe: {}", r.detail))
    } else {
        (Accel::Tcg, format!("kvm probe: {}", r.detail))
    }
}
