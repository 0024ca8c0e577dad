//! Choosing KVM or TCG (docs/vms.md, "Accelerator").
//!
//! `/dev/kvm` existing is not enough: a nested hypervisor can expose it
//! and still hang a stock kernel. In `auto` mode the first boot runs a probe
//! (a short KVM boot of the VM's kernel, with a timeout) and records the
//! verdict in the cache, keyed by QEMU and kernel version, so later boots
//! decide at once. `BANGER_ACCEL=kvm|tcg` forces either.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use banger_store::KernelRecord;
use banger_vmm::{Accel, KvmProbe};
use serde::{Deserialize, Serialize};

use crate::DaemonState;
use crate::config::AccelChoice;
use crate::ops::Operation;

const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub qemu_version: String,
    pub kernel: String,
    pub usable: bool,
    pub detail: String,
}

pub fn probe_file(state: &DaemonState) -> PathBuf {
    state.config.layout.cache_dir.join("kvm-probe.json")
}

pub fn recorded(state: &DaemonState) -> Option<ProbeRecord> {
    let text = std::fs::read(probe_file(state)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The accelerator for a boot of `kernel`, and why.
pub async fn choose(
    state: &Arc<DaemonState>,
    kernel: &KernelRecord,
    op: Option<&Operation>,
) -> (Accel, String) {
    match state.config.accel {
        AccelChoice::Kvm => return (Accel::Kvm, "forced by BANGER_ACCEL=kvm".into()),
        AccelChoice::Tcg => return (Accel::Tcg, "forced by BANGER_ACCEL=tcg".into()),
        AccelChoice::Auto => {}
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm".into());
    }
    let kernel_key = kernel.kernel_path.display().to_string();
    if let Some(r) = recorded(state) {
        if r.kernel == kernel_key {
            return verdict(&r);
        }
    }
    if let Some(op) = op {
        op.stage("probe kvm");
    }
    let record = run_probe(state, kernel).await;
    verdict(&record)
}

fn verdict(r: &ProbeRecord) -> (Accel, String) {
    if r.usable {
        (Accel::Kvm, format!("kvm probe: {}", r.detail))
    } else {
        (Accel::Tcg, format!("kvm probe: {}", r.detail))
    }
}

/// Boots `kernel` under KVM with a timeout and records the verdict.
pub async fn run_probe(state: &Arc<DaemonState>, kernel: &KernelRecord) -> ProbeRecord {
    let path = kernel.kernel_path.clone();
    let initrd = kernel.initrd_path.clone();
    let probe = tokio::task::spawn_blocking(move || {
        banger_vmm::probe_kvm_boot(&path, initrd.as_deref(), PROBE_TIMEOUT)
    })
    .await
    .unwrap_or_else(|e| KvmProbe::Failed(format!("probe task failed: {e}")));
    let qemu_version = banger_vmm::probe_qemu()
        .map(|q| q.version)
        .unwrap_or_default();
    let (usable, detail) = match probe {
        KvmProbe::Usable => (true, "kvm boots guests".to_owned()),
        KvmProbe::Absent => (false, "no /dev/kvm".to_owned()),
        KvmProbe::Hangs => (
            false,
            "/dev/kvm is present but hangs guests (nested hypervisor?)".to_owned(),
        ),
        KvmProbe::Failed(why) => (false, format!("kvm failed: {why}")),
    };
    let record = ProbeRecord {
        qemu_version,
        kernel: kernel.kernel_path.display().to_string(),
        usable,
        detail,
    };
    tracing::info!(usable, detail = %record.detail, "kvm probe done");
    if let Ok(text) = serde_json::to_vec_pretty(&record) {
        let _ = std::fs::create_dir_all(&state.config.layout.cache_dir);
        let _ = std::fs::write(probe_file(state), text);
    }
    record
}

/// The host's TSC rate as measured in this host boot: from the cache when
/// a daemon of this boot already measured it, else measured now (200 ms)
/// and recorded. Keyed by the kernel's boot id, since the rate is a fact
/// of the running host.
pub async fn host_tsc_khz(state: &Arc<DaemonState>) -> Option<u64> {
    #[derive(Serialize, Deserialize)]
    struct Record {
        boot_id: String,
        tsc_khz: Option<u64>,
    }
    let path = state.config.layout.cache_dir.join("host-clock.json");
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
