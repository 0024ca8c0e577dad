//! `doctor` (docs/capabilities.md, "Doctor"): what works on this host and what to do about it.

use std::path::Path;

use banger_proto::CheckStatus::{self, Fail, Ok as Pass, Warn};
use banger_proto::vm::{DoctorCheck, DoctorReport};
use banger_proto::{Backend, PlannedAccel};
use banger_store::StoreError;

use crate::accel::AccelChooser;
use crate::config::AccelChoice;
use crate::db::Db;
use crate::helper_client::HelperClient;
use crate::op::OpId;

/// What `doctor` looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub db: &'a Db,
    pub accel: &'a AccelChooser,
    pub helper: &'a HelperClient,
    /// The VMM backends (QEMU; Firecracker when installed).
    pub vmms: &'a crate::vmms::Vmms,
    /// The kernel `vm create` uses unless told otherwise.
    pub default_kernel: &'a str,
    pub data_dir: &'a Path,
    /// The request's op id, for the helper call.
    pub op: &'a OpId,
}

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
pub async fn run(inputs: Inputs<'_>, probe: bool) -> Result<DoctorReport, StoreError> {
    let mut checks = Vec::new();
    match banger_vmm::probe_qemu() {
        Ok(q) => checks.push(check(
            "qemu",
            Pass,
            format!("{} {}", q.binary.display(), q.version),
            None,
        )),
        Err(e) => checks.push(check(
            "qemu",
            Fail,
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
            checks.push(check(tool, Pass, format!("found ({why})"), None));
        } else {
            checks.push(check(
                tool,
                Fail,
                format!("not found; needed for {why}"),
                Some(&format!("apt-get install {package}")),
            ));
        }
    }

    // User mode's default egress (`internet`) runs the guest's network in
    // a namespace of its own (docs/security.md, "Egress").
    let usernet = match (
        banger_vmm::usernet::missing_tool(),
        banger_vmm::usernet::userns_disabled(),
        banger_vmm::usernet::tun_unusable(),
    ) {
        (Some(tool), _, _) => check(
            "user-mode isolation",
            Warn,
            format!(
                "{tool} not found: user-mode vms with egress internet (the default) cannot start; \
                 --egress open (no isolation) or bridged mode still work"
            ),
            Some("apt-get install passt nftables util-linux iproute2"),
        ),
        (None, Some(why), _) => check(
            "user-mode isolation",
            Warn,
            format!(
                "unprivileged user namespaces are off ({why}): user-mode vms with egress \
                 internet (the default) cannot start"
            ),
            Some("sysctl kernel.unprivileged_userns_clone=1 (or use bridged mode)"),
        ),
        (None, None, Some(why)) => check(
            "user-mode isolation",
            Warn,
            format!(
                "/dev/net/tun cannot be opened by this user ({why}): user-mode vms with egress \
                 internet (the default) cannot start"
            ),
            Some("chmod 0666 /dev/net/tun (Debian's default), or use bridged mode"),
        ),
        (None, None, None) => check(
            "user-mode isolation",
            Pass,
            "pasta, unshare, nft, mount and ip found; user namespaces on; /dev/net/tun usable",
            None,
        ),
    };
    checks.push(usernet);

    let kvm_present = Path::new("/dev/kvm").exists();
    checks.push(check(
        "/dev/kvm",
        if kvm_present { Pass } else { Warn },
        if kvm_present {
            "present"
        } else {
            "absent: guests run under TCG (slower)"
        },
        None,
    ));

    let database = database_check(inputs.db).await;
    let sound = database.status == Pass;
    checks.push(database);
    let (kernels, images) = match (
        inputs.db.call(|s| s.kernels()).await,
        inputs.db.call(|s| s.images()).await,
    ) {
        (Ok(k), Ok(i)) => (k, i),
        // The database check already says what is wrong: report the rest.
        _ if !sound => (Vec::new(), Vec::new()),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let default_kernel = kernels.iter().find(|k| k.name == inputs.default_kernel);
    if kvm_present && probe {
        match default_kernel {
            Some(k) => {
                inputs.accel.run_probe(k).await;
            }
            None => checks.push(check(
                "kvm probe",
                Warn,
                "skipped: no kernel pulled yet",
                Some("banger kernel pull"),
            )),
        }
    }
    let (accel_name, accel_reason) = match inputs.accel.choice() {
        AccelChoice::Kvm => (PlannedAccel::Kvm, "forced by BANGER_ACCEL=kvm".to_owned()),
        AccelChoice::Tcg => (PlannedAccel::Tcg, "forced by BANGER_ACCEL=tcg".to_owned()),
        AccelChoice::Auto if !kvm_present => (PlannedAccel::Tcg, "no /dev/kvm".to_owned()),
        AccelChoice::Auto => match inputs.accel.recorded() {
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
    // Firecracker: the binary, its version, and with --probe whether KVM
    // boots the default kernel under it.
    let mut firecracker_boots = None;
    match inputs.vmms.firecracker_bin() {
        None => checks.push(check(
            "firecracker",
            Warn,
            "not installed: vms run on qemu",
            Some(
                "set BANGER_FIRECRACKER_BIN (or bangerd --firecracker) or put firecracker on PATH",
            ),
        )),
        Some(bin) => {
            let fc = banger_vmm::firecracker::FirecrackerVmm::new(bin);
            let version = tokio::task::spawn_blocking(move || fc.version()).await;
            checks.push(match version {
                Ok(Ok(v)) => check("firecracker", Pass, format!("{} {v}", bin.display()), None),
                Ok(Err(e)) => check("firecracker", Fail, crate::error::chain(&e), None),
                Err(e) => check("firecracker", Fail, e.to_string(), None),
            });
            match (probe, default_kernel) {
                (true, Some(k)) => {
                    let (vmms, path, initrd) = (
                        inputs.vmms.clone(),
                        k.kernel_path.clone(),
                        k.initrd_path.clone(),
                    );
                    let verdict = tokio::task::spawn_blocking(move || {
                        vmms.probe_firecracker(
                            &path,
                            initrd.as_deref(),
                            std::time::Duration::from_secs(10),
                        )
                    })
                    .await
                    .unwrap_or_else(|e| banger_vmm::KvmProbe::Failed(e.to_string()));
                    let usable = verdict == banger_vmm::KvmProbe::Usable;
                    firecracker_boots = Some(usable);
                    checks.push(check(
                        "firecracker kvm probe",
                        if usable { Pass } else { Warn },
                        match &verdict {
                            banger_vmm::KvmProbe::Usable => format!("kernel {} boots under firecracker", k.name),
                            banger_vmm::KvmProbe::Absent => "no /dev/kvm".to_owned(),
                            banger_vmm::KvmProbe::Hangs => format!(
                                "kernel {} printed no boot milestone under firecracker within 10 s (a nested hypervisor that hangs linux?)",
                                k.name
                            ),
                            banger_vmm::KvmProbe::Failed(why) => why.clone(),
                        },
                        (!usable).then_some("vms run on qemu; --vmm firecracker still runs guests that boot (e.g. a kernel of your own: banger kernel import)"),
                    ));
                }
                (true, None) => checks.push(check(
                    "firecracker kvm probe",
                    Warn,
                    "skipped: no kernel pulled yet",
                    Some("banger kernel pull"),
                )),
                (false, _) => {}
            }
        }
    }
    if let Some(r) = inputs.accel.recorded() {
        checks.push(check(
            "kvm probe",
            if r.usable { Pass } else { Warn },
            r.detail.clone(),
            (!r.usable).then_some("guests run under TCG with one vcpu"),
        ));
    }

    checks.push(match default_kernel {
        Some(k) => check(
            "kernel",
            Pass,
            format!("{} {}", k.name, k.version.clone().unwrap_or_default()),
            None,
        ),
        None => check(
            "kernel",
            Warn,
            "no kernel pulled; the first vm create pulls the default",
            Some("banger kernel pull"),
        ),
    });
    checks.push(if images.is_empty() {
        check(
            "image",
            Warn,
            "no image built; the first vm create builds the default",
            Some("banger image build"),
        )
    } else {
        let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
        check("image", Pass, names.join(", "), None)
    });

    let data = inputs.data_dir;
    checks.push(match rustix::fs::statvfs(data) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let gib = free as f64 / (1u64 << 30) as f64;
            let status = if gib < 2.0 {
                Fail
            } else if gib < 10.0 {
                Warn
            } else {
                Pass
            };
            check(
                "disk space",
                status,
                format!("{gib:.1} GiB free in {}", data.display()),
                (status != Pass).then_some("free space: images take ~1 GiB, VMs grow with use"),
            )
        }
        Err(e) => check(
            "disk space",
            Warn,
            format!("statvfs {}: {e}", data.display()),
            None,
        ),
    });
    checks.push(if crate::disks::reflink_supported(data) {
        check("reflink", Pass, "supported in the data dir", None)
    } else {
        check(
            "reflink",
            Pass,
            "not supported in the data dir; qcow2 overlays are used",
            None,
        )
    });
    checks.push(check(
        "device-mapper",
        if Path::new("/dev/mapper/control").exists() {
            Pass
        } else {
            Warn
        },
        if Path::new("/dev/mapper/control").exists() {
            "present (snapshots through banger-helper)"
        } else {
            "absent: qcow2 overlays or reflinks instead"
        },
        None,
    ));
    checks.push(helper_check(inputs.helper, inputs.op).await);
    Ok(DoctorReport {
        checks,
        // Bridged vms with the default kernel; user-mode ones run on qemu.
        backend: if firecracker_boots == Some(true) {
            Backend::Firecracker
        } else {
            Backend::Qemu
        },
        accel: accel_name,
        accel_reason,
    })
}

/// Whether banger-helper answers, and the bridge it enforces.
async fn helper_check(helper: &HelperClient, op: &OpId) -> DoctorCheck {
    let socket = helper.socket().display().to_string();
    match helper.ping(op).await {
        Ok(info) => check(
            "helper",
            Pass,
            format!(
                "banger-helper {} (pid {}) answers at {socket}: bridged networking on {} ({}, gateway {})",
                info.version, info.pid, info.bridge, info.subnet, info.gateway
            ),
            None,
        ),
        Err(e) => check(
            "helper",
            Warn,
            // The error names the socket itself.
            format!(
                "{}: rootless mode, user-mode networking only",
                crate::error::chain(&e)
            ),
            Some("sudo banger system install"),
        ),
    }
}

/// SQLite's `PRAGMA integrity_check` of banger's database.
async fn database_check(db: &Db) -> DoctorCheck {
    let checked = db
        .call(|s| Ok((s.path().to_owned(), s.integrity_problems()?)))
        .await;
    match checked {
        Ok((path, problems)) if problems.is_empty() => check(
            "database",
            Pass,
            format!("{}: integrity check ok", path.display()),
            None,
        ),
        Ok((path, problems)) => check(
            "database",
            Fail,
            format!(
                "{}: integrity check failed: {}",
                path.display(),
                problems.join("; ")
            ),
            Some(DAMAGED_HINT),
        ),
        Err(e) => check(
            "database",
            Fail,
            crate::error::chain(&e),
            (!matches!(e, StoreError::Locked { .. })).then_some(DAMAGED_HINT),
        ),
    }
}

/// What to do about a damaged database.
const DAMAGED_HINT: &str = "stop the daemon (banger daemon stop), move banger.db aside and start again (a new, empty database is made: VMs, images and kernels must be added again), or restore it from a backup";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test_state;

    #[tokio::test]
    async fn reports_missing_artifacts_and_the_forced_accelerator() {
        let tmp = tempfile::tempdir().unwrap();
        let state = test_state(tmp.path()); // BANGER_ACCEL=tcg
        let inputs = Inputs {
            db: &state.db,
            accel: &state.accel,
            helper: state.network.helper(),
            vmms: &state.vmms,
            default_kernel: &state.config.defaults.kernel,
            data_dir: &state.config.layout.data_dir,
            op: &crate::op::mint(),
        };
        let report = run(inputs, false).await.unwrap();
        assert_eq!(report.backend, "qemu");
        assert_eq!(
            (report.accel.as_str(), report.accel_reason.as_str()),
            ("tcg", "forced by BANGER_ACCEL=tcg")
        );
        let status = |name: &str| {
            let c = report.checks.iter().find(|c| c.name == name).unwrap();
            c.status
        };
        assert_eq!(status("kernel"), Warn);
        assert_eq!(status("image"), Warn);
    }
}
