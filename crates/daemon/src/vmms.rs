//! The VMM backends the daemon drives, by kind: QEMU always, Firecracker
//! when its binary is found (`BANGER_FIRECRACKER_BIN`, the configured
//! path, or `firecracker` on `PATH`). A running VM's handle names its
//! backend, so a Firecracker VM adopted after a restart is still controlled
//! (API socket and signals need no binary) even if the binary went away.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_vmm::firecracker::FirecrackerVmm;
use banger_vmm::{BackendKind, VmHandle, Vmm};

#[derive(Debug, Clone)]
pub struct Vmms {
    qemu: Arc<dyn Vmm>,
    firecracker: Arc<dyn Vmm>,
    /// The Firecracker binary new VMs can use, if there is one.
    firecracker_bin: Option<PathBuf>,
}

impl Vmms {
    pub fn new(
        qemu: Arc<dyn Vmm>,
        firecracker: Arc<dyn Vmm>,
        firecracker_bin: Option<PathBuf>,
    ) -> Self {
        Vmms {
            qemu,
            firecracker,
            firecracker_bin,
        }
    }

    /// QEMU, and Firecracker from `BANGER_FIRECRACKER_BIN`, `configured` or
    /// `PATH`.
    pub fn detect(qemu: Arc<dyn Vmm>, configured: Option<&Path>) -> Self {
        let bin = FirecrackerVmm::find(configured).filter(|p| is_executable(p));
        let firecracker =
            FirecrackerVmm::new(bin.clone().unwrap_or_else(|| {
                PathBuf::from(banger_vmm::firecracker::FIRECRACKER_BINARY_NAME)
            }));
        Vmms::new(qemu, Arc::new(firecracker), bin)
    }

    pub fn get(&self, kind: BackendKind) -> Arc<dyn Vmm> {
        match kind {
            BackendKind::Qemu => Arc::clone(&self.qemu),
            BackendKind::Firecracker => Arc::clone(&self.firecracker),
        }
    }

    /// The backend of a running VM.
    pub fn of(&self, handle: &VmHandle) -> Arc<dyn Vmm> {
        self.get(handle.backend)
    }

    /// Boots `kernel` under Firecracker to tell whether KVM really runs
    /// Linux guests with it (see `banger_vmm::firecracker` probe); blocks
    /// up to `timeout`.
    pub fn probe_firecracker(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        timeout: std::time::Duration,
    ) -> banger_vmm::KvmProbe {
        match &self.firecracker_bin {
            Some(bin) => FirecrackerVmm::new(bin).probe_kvm_boot(kernel, initrd, timeout),
            None => banger_vmm::KvmProbe::Failed("firecracker is not installed".into()),
        }
    }

    /// The Firecracker binary, when one was found.
    pub fn firecracker_bin(&self) -> Option<&Path> {
        self.firecracker_bin.as_deref()
    }
}

impl From<Arc<dyn Vmm>> for Vmms {
    /// One backend for QEMU VMs (tests' doubles), Firecracker as found.
    fn from(qemu: Arc<dyn Vmm>) -> Self {
        Vmms::detect(qemu, None)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The wire name of a backend.
pub fn to_proto(kind: BackendKind) -> banger_proto::Backend {
    match kind {
        BackendKind::Qemu => banger_proto::Backend::Qemu,
        BackendKind::Firecracker => banger_proto::Backend::Firecracker,
    }
}

/// The backend a VM record names (older records: QEMU).
pub fn from_proto(backend: Option<banger_proto::Backend>) -> BackendKind {
    match backend {
        Some(banger_proto::Backend::Firecracker) => BackendKind::Firecracker,
        _ => BackendKind::Qemu,
    }
}
