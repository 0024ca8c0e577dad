//! Finding QEMU, and finding out whether KVM really runs guests.
//!
//! `/dev/kvm` existing is not enough: on the machines this project is built
//! on it is a nested PVM hypervisor under which a stock kernel prints its
//! first lines and then hangs (and `-cpu host` makes QEMU abort on an MSR
//! it cannot set). So [`probe_kvm_boot`] boots the given kernel under KVM
//! exactly as `launch` would (`-accel kvm -cpu host`, microvm, serial
//! console to a file, `-no-reboot`) with a command line that makes it fail
//! fast and loudly:
//!
//! ```text
//! console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 rdinit=/banger-kvm-probe root=/dev/banger-kvm-probe
//! ```
//!
//! There is no such init and no such root device, so a working kernel runs
//! through its whole boot, panics ("VFS: Unable to mount root fs"), reboots
//! at once (`panic=-1`) and QEMU exits (`-no-reboot`): about 2 s under TCG,
//! well under 1 s under KVM. No user space runs.
//!
//! **The heuristic.** KVM is [`KvmProbe::Usable`] when the console shows a
//! *late* boot milestone before the timeout: `Run /`, `Failed to execute`,
//! `VFS: Cannot open root`, `VFS: Unable to mount root`, `Kernel panic` or
//! `Freeing unused kernel`. Reaching those means
//! the kernel got through CPU, timer, interrupt and memory setup under KVM.
//! An early line alone (the decompressor's, `Linux version`, the boot
//! stub's `Probing EDD`) does not count: that is exactly how far the broken
//! nested hypervisor gets. When the timeout passes without a late milestone
//! the result is [`KvmProbe::Hangs`]; when QEMU exits without one it is
//! [`KvmProbe::Failed`] with QEMU's own last words. [`KvmProbe::Absent`]
//! means `/dev/kvm` does not exist (or is no device).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::VmmError;
use crate::qemu::{QEMU_BINARY_NAME, boot_args, log_tail, machine_args, tail_lines};
use crate::spec::Accel;

/// The QEMU found by [`probe_qemu`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuInfo {
    pub binary: PathBuf,
    /// `7.2.22` from `QEMU emulator version 7.2.22 (Debian ...)`.
    pub version: String,
}

/// Looks for `qemu-system-x86_64` on `PATH` and asks it its version.
pub fn probe_qemu() -> Result<QemuInfo, VmmError> {
    let binary = find_on_path(QEMU_BINARY_NAME).ok_or_else(|| VmmError::QemuNotFound {
        name: QEMU_BINARY_NAME.into(),
    })?;
    probe_qemu_at(&binary)
}

/// Asks the given QEMU binary its version.
pub fn probe_qemu_at(binary: &Path) -> Result<QemuInfo, VmmError> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VmmError::Exec {
            binary: binary.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("QEMU emulator version "))
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|_| output.status.success());
    match version {
        Some(v) => Ok(QemuInfo {
            binary: binary.to_path_buf(),
            version: v.to_owned(),
        }),
        None => Err(VmmError::BadVersion {
            binary: binary.to_path_buf(),
            output: tail_lines(
                &format!("{text}\n{}", String::from_utf8_lossy(&output.stderr)),
                3,
                300,
            ),
        }),
    }
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What booting a kernel under KVM showed (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmProbe {
    /// The kernel booted far enough under KVM: use it.
    Usable,
    /// No `/dev/kvm`.
    Absent,
    /// `/dev/kvm` is there, but the kernel did not get through its boot in
    /// time (a nested hypervisor that hangs guests).
    Hangs,
    /// Something else stopped the probe (permissions, QEMU refusing or
    /// crashing under KVM, missing kernel); the reason, for `doctor`.
    Failed(String),
}

/// Late boot lines: the kernel got this far only if the CPU, timers and
/// interrupts work.
const LATE_MILESTONES: [&str; 6] = [
    "Run /",
    "Failed to execute",
    "VFS: Cannot open root",
    "VFS: Unable to mount root",
    "Kernel panic",
    "Freeing unused kernel",
];

/// The probe's kernel command line (see the module docs).
pub const PROBE_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 \
     rdinit=/banger-kvm-probe root=/dev/banger-kvm-probe";

/// Boots `kernel` (and `initrd`) under `-accel kvm` for at most `timeout`
/// with the first `qemu-system-x86_64` on `PATH`, and says whether KVM runs
/// guests here. A 10 s timeout is plenty: a working KVM takes well under 1 s.
pub fn probe_kvm_boot(kernel: &Path, initrd: Option<&Path>, timeout: Duration) -> KvmProbe {
    match probe_qemu() {
        Ok(info) => probe_kvm_boot_with(&info.binary, kernel, initrd, timeout),
        Err(e) => KvmProbe::Failed(e.to_string()),
    }
}

pub(crate) fn probe_kvm_boot_with(
    binary: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    timeout: Duration,
) -> KvmProbe {
    if let Some(unusable) = kvm_unopenable() {
        return unusable;
    }
    match probe_boot(binary, Accel::Kvm, kernel, initrd, timeout) {
        BootOutcome::Reached(_) => KvmProbe::Usable,
        BootOutcome::Silent(_) => KvmProbe::Hangs,
        BootOutcome::Exited(why) => KvmProbe::Failed(format!("under kvm, {why}")),
        BootOutcome::Error(why) => KvmProbe::Failed(why),
    }
}

/// Why `/dev/kvm` cannot be used, if it cannot be opened read-write.
pub(crate) fn kvm_unopenable() -> Option<KvmProbe> {
    let e = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .err()?;
    Some(
        match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
            Some(rustix::io::Errno::NOENT | rustix::io::Errno::NODEV | rustix::io::Errno::NXIO) => {
                KvmProbe::Absent
            }
            Some(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
                KvmProbe::Failed("no permission to open /dev/kvm (join the kvm group)".into())
            }
            _ => KvmProbe::Failed(format!("open /dev/kvm: {e}")),
        },
    )
}

/// The first console line that shows a late boot milestone.
pub(crate) fn late_milestone(console: &str) -> Option<String> {
    console
        .lines()
        .find(|line| LATE_MILESTONES.iter().any(|m| line.contains(m)))
        .map(|line| line.trim().to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BootOutcome {
    /// A late milestone showed up; the line that had it.
    Reached(String),
    /// The timeout passed without one; the console's last line, if any.
    Silent(String),
    /// QEMU exited without one.
    Exited(String),
    /// The probe could not run.
    Error(String),
}

/// Boots `kernel` with [`PROBE_CMDLINE`] under `accel` and watches the
/// console for a late milestone. QEMU is always killed before returning.
pub(crate) fn probe_boot(
    binary: &Path,
    accel: Accel,
    kernel: &Path,
    initrd: Option<&Path>,
    timeout: Duration,
) -> BootOutcome {
    for (what, path) in [("kernel", Some(kernel)), ("initrd", initrd)] {
        if let Some(path) = path {
            if !path.is_file() {
                return BootOutcome::Error(format!("{what} not found: {}", path.display()));
            }
        }
    }
    let dir = match tempfile::Builder::new().prefix("banger-probe-").tempdir() {
        Ok(d) => d,
        Err(e) => return BootOutcome::Error(format!("create a temporary directory: {e}")),
    };
    let console = dir.path().join("console.log");
    let qemu_log = dir.path().join("qemu.log");
    let mut args = machine_args(accel, 1, 512, None, &console);
    args.extend(boot_args(kernel, initrd, PROBE_CMDLINE));
    let log = match fs::File::create(&qemu_log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(pair) => pair,
        Err(e) => return BootOutcome::Error(format!("create {}: {e}", qemu_log.display())),
    };
    let child = Command::new(binary)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.0)
        .stderr(log.1)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return BootOutcome::Error(format!("run {}: {e}", binary.display())),
    };
    let mut guard = KillOnDrop(child);
    let deadline = Instant::now() + timeout;
    loop {
        let exited = match guard.0.try_wait() {
            Ok(status) => status,
            Err(e) => return BootOutcome::Error(format!("wait for qemu: {e}")),
        };
        let output = fs::read(&console).unwrap_or_default();
        let output = String::from_utf8_lossy(&output);
        if let Some(line) = late_milestone(&output) {
            return BootOutcome::Reached(line);
        }
        if let Some(status) = exited {
            let why = log_tail(&qemu_log, 0);
            let last = tail_lines(&output, 1, 200);
            return BootOutcome::Exited(match (why.is_empty(), last.is_empty()) {
                (false, _) => format!("qemu exited ({status}): {why}"),
                (true, false) => {
                    format!("qemu exited ({status}) after the console showed {last:?}")
                }
                (true, true) => format!("qemu exited ({status}) without output"),
            });
        }
        if Instant::now() >= deadline {
            return BootOutcome::Silent(tail_lines(&output, 1, 200));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu() -> PathBuf {
        probe_qemu().expect("qemu-system-x86_64 on PATH").binary
    }

    #[test]
    fn finds_qemu_and_its_version() {
        let info = probe_qemu().unwrap();
        assert!(info.binary.ends_with(QEMU_BINARY_NAME));
        assert!(
            info.version.split('.').count() >= 2,
            "version {:?}",
            info.version
        );
    }

    #[test]
    fn a_binary_that_is_not_qemu_is_refused() {
        let err = probe_qemu_at(Path::new("/bin/true")).unwrap_err();
        assert!(matches!(err, VmmError::BadVersion { .. }), "{err}");
        let err = probe_qemu_at(Path::new("/nonexistent/qemu")).unwrap_err();
        assert!(matches!(err, VmmError::Exec { .. }), "{err}");
    }

    /// The stub kernel prints one line and halts: no late milestone, so the
    /// heuristic must call it a hang, not a working boot.
    #[test]
    fn a_kernel_that_stops_early_counts_as_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("stub");
        crate::testkit::write_stub_kernel(&kernel).unwrap();
        let outcome = probe_boot(
            &qemu(),
            Accel::Tcg,
            &kernel,
            None,
            Duration::from_millis(1500),
        );
        assert_eq!(
            outcome,
            BootOutcome::Silent(crate::testkit::STUB_KERNEL_BANNER.into())
        );
    }

    #[test]
    fn a_missing_kernel_is_an_error_not_a_hang() {
        let outcome = probe_boot(
            &qemu(),
            Accel::Tcg,
            Path::new("/nonexistent/vmlinuz"),
            None,
            Duration::from_secs(1),
        );
        assert_eq!(
            outcome,
            BootOutcome::Error("kernel not found: /nonexistent/vmlinuz".into())
        );
    }

    /// A real kernel under TCG reaches the panic: the heuristic's positive
    /// case. Needs a bootable x86 kernel: `BANGER_TEST_KERNEL`, else the
    /// host's `/boot/vmlinuz-*`; skipped (passes) when there is none.
    #[test]
    fn a_real_kernel_under_tcg_reaches_a_late_milestone() {
        let Some(kernel) = crate::testkit::host_kernel() else {
            eprintln!("skipped: no BANGER_TEST_KERNEL and no /boot/vmlinuz-*");
            return;
        };
        let started = Instant::now();
        let outcome = probe_boot(&qemu(), Accel::Tcg, &kernel, None, Duration::from_secs(30));
        assert!(
            matches!(outcome, BootOutcome::Reached(_)),
            "{}: {outcome:?}",
            kernel.display()
        );
        eprintln!(
            "{} reached {outcome:?} under tcg in {:?}",
            kernel.display(),
            started.elapsed()
        );
    }
}

#[cfg(test)]
mod kvm_tests {
    use super::*;

    /// Whatever this host's KVM does, the probe answers within its timeout
    /// (plus QEMU's start and kill) and agrees with `/dev/kvm`'s presence.
    #[test]
    fn kvm_probe_answers_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = match crate::testkit::host_kernel() {
            Some(k) => k,
            None => {
                let stub = dir.path().join("stub");
                crate::testkit::write_stub_kernel(&stub).unwrap();
                stub
            }
        };
        let started = Instant::now();
        let result = probe_kvm_boot(&kernel, None, Duration::from_secs(3));
        let took = started.elapsed();
        eprintln!(
            "kvm probe with {}: {result:?} in {took:?}",
            kernel.display()
        );
        assert!(took < Duration::from_secs(6), "{took:?}");
        assert_eq!(
            result == KvmProbe::Absent,
            !Path::new("/dev/kvm").exists(),
            "{result:?}"
        );
    }
}
