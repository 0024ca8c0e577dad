//! `doctor` (SPEC C16): what works on this host and what to do about it.

use std::path::Path;
use std::sync::Arc;

use banger_proto::vm::{DoctorCheck, DoctorReport};
use banger_proto::{Backend, CheckStatus, PlannedAccel};

use crate::DaemonState;
use crate::accel;
use crate::config::AccelChoice;
use crate::dispatch::RpcError;

fn check(
    name: &str,
    status: CheckStatus,
    detail: impl Into<String>,
    fix: Option<&str>,
) -> DoctorCheck {
    DoctorCheck {
        name: name.to_owned(),
        status,
        detail: detail.into(),
        fix: fix.map(str::to_owned),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Runs every check; with `probe`, boots the default kernel under KVM to
/// tell a usable KVM from one that hangs guests, and records the verdict.
pub async fn run(state: &Arc<DaemonState>, probe: bool) -> Result<DoctorReport, RpcError> {
    let mut checks = Vec::new();
    match banger_vmm::probe_qemu() {
        Ok(q) => checks.push(check(
            "qemu",
            CheckStatus::Ok,
            format!("{} {}", q.binary.display(), q.version),
            None,
        )),
        Err(e) => checks.push(check(
            "qemu",
            CheckStatus::Fail,
            e.to_string(),
            Some("install qemu-system-x86 (apt-get install qemu-system-x86)"),
        )),
    }
    for (tool, package, why) in [
        ("qemu-img", "qemu-utils", "copy-on-write root disks"),
        ("mmdebstrap", "mmdebstrap", "image build"),
        ("ssh", "openssh-client", "vm ssh and readiness"),
        ("ssh-keygen", "openssh-client", "banger's key pair"),
        ("mkfs.ext4", "e2fsprogs", "image build"),
        ("resize2fs", "e2fsprogs", "work disks"),
        ("apt-get", "apt", "kernel pull"),
    ] {
        if on_path(tool) {
            checks.push(check(tool, CheckStatus::Ok, format!("found ({why})"), None));
        } else {
            checks.push(check(
                tool,
                CheckStatus::Fail,
                format!("not found; needed for {why}"),
                Some(&format!("apt-get install {package}")),
            ));
        }
    }

    let kvm_present = Path::new("/dev/kvm").exists();
    checks.push(check(
        "/dev/kvm",
        if kvm_present {
            CheckStatus::Ok
        } else {
            CheckStatus::Warn
        },
        if kvm_present {
            "present"
        } else {
            "absent: guests run under TCG (slower)"
        },
        None,
    ));

    let kernels = state.with_store(|s| s.kernels()).await?;
    let images = state.with_store(|s| s.images()).await?;
    let default_kernel = kernels
        .iter()
        .find(|k| k.name == state.config.defaults.kernel);
    if kvm_present && probe {
        match default_kernel {
            Some(k) => {
                accel::run_probe(state, k).await;
            }
            None => checks.push(check(
                "kvm probe",
                CheckStatus::Warn,
                "skipped: no kernel pulled yet",
                Some("banger kernel pull"),
            )),
        }
    }
    let (accel_name, accel_reason) = match state.config.accel {
        AccelChoice::Kvm => (PlannedAccel::Kvm, "forced by BANGER_ACCEL=kvm".to_owned()),
        AccelChoice::Tcg => (PlannedAccel::Tcg, "forced by BANGER_ACCEL=tcg".to_owned()),
        AccelChoice::Auto if !kvm_present => (PlannedAccel::Tcg, "no /dev/kvm".to_owned()),
        AccelChoice::Auto => match accel::recorded(state) {
            Some(r) => (
                if r.usable {
                    PlannedAccel::Kvm
                } else {
                    PlannedAccel::Tcg
                },
                format!("kvm probe: {}", r.detail),
            ),
            None => (
                PlannedAccel::Undecided,
                "the first vm start probes kvm (or run: banger doctor --probe)".to_owned(),
            ),
        },
    };
    if let Some(r) = accel::recorded(state) {
        checks.push(check(
            "kvm probe",
            if r.usable {
                CheckStatus::Ok
            } else {
                CheckStatus::Warn
            },
            r.detail.clone(),
            (!r.usable).then_some("guests run under TCG with one vcpu"),
        ));
    }

    checks.push(match default_kernel {
        Some(k) => check(
            "kernel",
            CheckStatus::Ok,
            format!("{} {}", k.name, k.version.clone().unwrap_or_default()),
            None,
        ),
        None => check(
            "kernel",
            CheckStatus::Warn,
            "no kernel pulled; the first vm create pulls the default",
            Some("banger kernel pull"),
        ),
    });
    checks.push(if images.is_empty() {
        check(
            "image",
            CheckStatus::Warn,
            "no image built; the first vm create builds the default",
            Some("banger image build"),
        )
    } else {
        let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
        check("image", CheckStatus::Ok, names.join(", "), None)
    });

    let data = state.config.layout.data_dir.clone();
    checks.push(match rustix::fs::statvfs(&data) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let gib = free as f64 / (1u64 << 30) as f64;
            let status = if gib < 2.0 {
                CheckStatus::Fail
            } else if gib < 10.0 {
                CheckStatus::Warn
            } else {
                CheckStatus::Ok
            };
            check(
                "disk space",
                status,
                format!("{gib:.1} GiB free in {}", data.display()),
                (status != CheckStatus::Ok)
                    .then_some("free space: images take ~1 GiB, VMs grow with use"),
            )
        }
        Err(e) => check(
            "disk space",
            CheckStatus::Warn,
            format!("statvfs {}: {e}", data.display()),
            None,
        ),
    });
    checks.push(if crate::disks::reflink_supported(&data) {
        check(
            "reflink",
            CheckStatus::Ok,
            "supported in the data dir",
            None,
        )
    } else {
        check(
            "reflink",
            CheckStatus::Ok,
            "not supported in the data dir; qcow2 overlays are used",
            None,
        )
    });
    checks.push(check(
        "device-mapper",
        if Path::new("/dev/mapper/control").exists() {
            CheckStatus::Ok
        } else {
            CheckStatus::Warn
        },
        if Path::new("/dev/mapper/control").exists() {
            "present (snapshots through banger-helper)"
        } else {
            "absent: qcow2 overlays or reflinks instead"
        },
        None,
    ));
    checks.push(helper_check(state).await);
    Ok(DoctorReport {
        checks,
        backend: match state.vmm.kind() {
            banger_vmm::BackendKind::Qemu => Backend::Qemu,
            banger_vmm::BackendKind::Firecracker => Backend::Firecracker,
        },
        accel: accel_name,
        accel_reason,
    })
}

/// Whether banger-helper answers, and the bridge it enforces.
async fn helper_check(state: &Arc<DaemonState>) -> DoctorCheck {
    let socket = state.network.helper().socket().display().to_string();
    match state.network.helper().ping().await {
        Ok(info) => check(
            "helper",
            CheckStatus::Ok,
            format!(
                "banger-helper {} (pid {}) answers at {socket}: bridged networking on {} ({}, gateway {})",
                info.version, info.pid, info.bridge, info.subnet, info.gateway
            ),
            None,
        ),
        Err(e) => check(
            "helper",
            CheckStatus::Warn,
            format!(
                "banger-helper does not answer at {socket} ({}): rootless mode, user-mode networking only",
                crate::dispatch::error_chain(&e)
            ),
            Some("sudo banger system install"),
        ),
    }
}
