//! Pause, resume, save and restore: QMP `stop` and `cont`, and QEMU's
//! migration to and from a file (see the module documentation of
//! `crate::qemu`).

use std::fs;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use qapi::qmp;

use super::args::MEMORY_BACKEND_ID;
use super::{QemuVmm, VmFiles, run_state};
use crate::error::VmmError;
use crate::proc;
use crate::qmp::QmpClient;
use crate::spec::{RamSave, SaveReport, VmHandle, VmRunState, VmSpec};

/// How often `query-migrate` is asked while a save or load runs.
const POLL: Duration = Duration::from_millis(5);

/// The migration bandwidth limit while saving, in bytes per second: in
/// effect none. QEMU's default (128 MiB/s) would make a 1 GiB guest's save
/// take seconds instead of a third of one.
const MAX_BANDWIDTH: u64 = 1 << 40;

impl QemuVmm {
    /// [`crate::Vmm::pause`] for QEMU.
    pub(super) fn pause_qemu(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.require_ours(handle)?;
        QmpClient::open(&handle.control_socket, self.qmp_timeout, "stop")?
            .execute(&qmp::stop {})?;
        Ok(())
    }

    /// [`crate::Vmm::resume`] for QEMU.
    pub(super) fn resume_qemu(&self, handle: &VmHandle) -> Result<(), VmmError> {
        self.require_ours(handle)?;
        QmpClient::open(&handle.control_socket, self.qmp_timeout, "cont")?
            .execute(&qmp::cont {})?;
        Ok(())
    }

    /// [`crate::Vmm::save_state`] for QEMU.
    pub(super) fn save_qemu(
        &self,
        handle: &VmHandle,
        dest: &Path,
        ram: RamSave,
    ) -> Result<SaveReport, VmmError> {
        self.require_ours(handle)?;
        let uri = format!("exec:cat > {}", quoted_state_path(dest)?);
        if let Some(dir) = dest.parent() {
            if !proc::exists(dir).unwrap_or(false) {
                return Err(VmmError::MissingFile {
                    what: "directory of the state file".into(),
                    path: dir.to_path_buf(),
                });
            }
        }
        let mut qmp = QmpClient::open(&handle.control_socket, self.qmp_timeout, "query-status")?;
        let status = qmp.execute(&qmp::query_status {})?.status;
        if status == qmp::RunState::postmigrate {
            return Err(VmmError::SavedAlready);
        }
        let state = run_state(status);
        if state != VmRunState::Paused {
            return Err(VmmError::NotPaused { state });
        }
        if ram == RamSave::KeptInSharedFile {
            let shared = qmp
                .execute(&qmp::query_memdev {})?
                .iter()
                .any(|m| m.id.as_deref() == Some(MEMORY_BACKEND_ID) && m.share);
            if !shared {
                return Err(VmmError::InvalidSpec(
                    "keeping the ram in its file needs a vm whose memory is a shared file".into(),
                ));
            }
        }
        qmp.execute(&ignore_shared(ram))?;
        qmp.execute(&qmp::migrate_set_parameters(qmp::MigrateSetParameters {
            max_bandwidth: Some(MAX_BANDWIDTH),
            ..Default::default()
        }))?;

        let started = Instant::now();
        let deadline = started + self.migrate_timeout;
        let what = || format!("save vm state to {}", dest.display());
        let log = vmm_log(handle);
        let failed = |message: String| {
            // What cat wrote so far is no state; a missing file is fine.
            let _ = fs::remove_file(dest);
            VmmError::Migration {
                what: what(),
                message,
                log: log.clone(),
            }
        };
        qmp.execute(&qmp::migrate {
            uri: Some(uri),
            channels: None,
            detach: None,
            resume: None,
        })?;
        match poll_migration(&mut qmp, deadline, || None) {
            Ok(()) => {}
            Err(Failure::Qmp(e)) => {
                let _ = fs::remove_file(dest);
                return Err(e);
            }
            Err(failure) => {
                if matches!(failure, Failure::TimedOut(_)) {
                    let _ = qmp.execute(&qmp::migrate_cancel {});
                }
                return Err(failed(failure.reason(self.migrate_timeout)));
            }
        }
        // QEMU sets `completed` before the cleanup that closes the pipe
        // and reaps `cat` (it runs later, on QEMU's main loop), so the file
        // is surely whole only once no child is left. Not seen here (the
        // cleanup won every time), but nothing orders the two.
        while !proc::live_children(handle.pid).is_empty() {
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "the writer of the state file did not finish within {:.1}s",
                    self.migrate_timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(POLL);
        }
        let bytes = fs::metadata(dest)
            .map_err(|source| VmmError::Io {
                action: "stat",
                path: dest.to_path_buf(),
                source,
            })?
            .len();
        let report = SaveReport {
            bytes,
            elapsed: started.elapsed(),
        };
        tracing::debug!(
            pid = handle.pid,
            dest = %dest.display(),
            ?ram,
            bytes,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "vm state saved"
        );
        Ok(report)
    }

    /// [`crate::Vmm::restore`] for QEMU.
    pub(super) fn restore_qemu(
        &self,
        spec: &VmSpec,
        state: &Path,
        ram: RamSave,
        resume: bool,
    ) -> Result<VmHandle, VmmError> {
        if ram == RamSave::KeptInSharedFile && !spec.memory.is_file() {
            return Err(VmmError::InvalidSpec(
                "a state saved without its ram restores only into a vm whose memory is a file"
                    .into(),
            ));
        }
        let uri = format!("exec:cat {}", quoted_state_path(state)?);
        match proc::exists(state) {
            Ok(true) => {}
            Ok(false) => {
                return Err(VmmError::MissingFile {
                    what: "vm state".into(),
                    path: state.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(VmmError::Io {
                    action: "stat",
                    path: state.to_path_buf(),
                    source,
                });
            }
        }
        let begun = Instant::now();
        // -S: stay paused after the load whatever the state says, so that
        // only `resume` decides.
        let mut vm = self.start_qemu(spec, &["-S", "-incoming", "defer"])?;
        let loading = Instant::now();
        let deadline = loading + self.migrate_timeout;
        let result = (|| {
            let mut qmp = QmpClient::open(
                &vm.files.control_socket,
                self.qmp_timeout,
                "migrate-incoming",
            )
            .map_err(Failure::Qmp)?;
            qmp.execute(&ignore_shared(ram)).map_err(Failure::Qmp)?;
            qmp.execute(&qmp::migrate_incoming {
                uri: Some(uri),
                channels: None,
                exit_on_error: None,
            })
            .map_err(Failure::Qmp)?;
            poll_migration(&mut qmp, deadline, || vm.exited())?;
            if resume {
                qmp.execute(&qmp::cont {}).map_err(Failure::Qmp)?;
            }
            Ok(())
        })();
        if let Err(failure) = result {
            // QEMU 7.2 exits when a load fails, which the QMP connection
            // sees first: give it a moment to be seen exiting.
            let failure = match failure {
                Failure::Qmp(e) => match vm.exits_within(Duration::from_millis(500)) {
                    Some(status) => Failure::Exited(status),
                    None => Failure::Qmp(e),
                },
                other => other,
            };
            let log = vm.files.vmm_log.clone();
            let tail = vm.kill_for_tail();
            let reason = failure.reason(self.migrate_timeout);
            return Err(VmmError::Migration {
                what: format!("restore vm state from {}", state.display()),
                message: if tail.is_empty() {
                    reason
                } else {
                    format!("{reason}: {tail}")
                },
                log,
            });
        }
        let handle = vm.into_handle();
        tracing::debug!(
            vm_id = %spec.vm_id,
            pid = handle.pid,
            state = %state.display(),
            ?ram,
            resume,
            load_ms = loading.elapsed().as_millis() as u64,
            elapsed_ms = begun.elapsed().as_millis() as u64,
            "vm state restored"
        );
        Ok(handle)
    }
}

/// Why a migration did not complete.
#[derive(Debug)]
enum Failure {
    /// `query-migrate` said `failed` (or `cancelled`), with QEMU's reason.
    Failed {
        status: qmp::MigrationStatus,
        desc: Option<String>,
    },
    /// Not done by the deadline; the last status seen.
    TimedOut(Option<qmp::MigrationStatus>),
    /// QEMU exited (loading only).
    Exited(ExitStatus),
    /// Talking to QEMU failed.
    Qmp(VmmError),
}

impl Failure {
    fn reason(&self, timeout: Duration) -> String {
        match self {
            Failure::Failed { status, desc } => {
                let status = status_name(*status);
                match desc {
                    Some(desc) => format!("qemu says {status}: {desc}"),
                    None => format!("qemu says {status}"),
                }
            }
            Failure::TimedOut(status) => format!(
                "not complete within {:.1}s (last status {}), cancelled",
                timeout.as_secs_f64(),
                status.map_or("none", status_name)
            ),
            Failure::Exited(status) => format!("qemu exited ({status})"),
            Failure::Qmp(e) => e.to_string(),
        }
    }
}

fn status_name(status: qmp::MigrationStatus) -> &'static str {
    use qapi::Enum;
    status.name()
}

/// Polls `query-migrate` every [`POLL`] until it says `completed`, or it
/// fails, the deadline passes or `exited` reports QEMU gone.
fn poll_migration(
    qmp: &mut QmpClient,
    deadline: Instant,
    mut exited: impl FnMut() -> Option<ExitStatus>,
) -> Result<(), Failure> {
    let mut last = None;
    loop {
        if let Some(status) = exited() {
            return Err(Failure::Exited(status));
        }
        let info = qmp.execute(&qmp::query_migrate {}).map_err(Failure::Qmp)?;
        use qmp::MigrationStatus as S;
        match info.status {
            Some(S::completed) => return Ok(()),
            Some(status @ (S::failed | S::cancelled)) => {
                return Err(Failure::Failed {
                    status,
                    desc: info.error_desc,
                });
            }
            status => last = status.or(last),
        }
        if Instant::now() >= deadline {
            return Err(Failure::TimedOut(last));
        }
        std::thread::sleep(POLL);
    }
}

/// `migrate-set-capabilities` with `x-ignore-shared` set as `ram` says,
/// every time: the capability outlives the migration in QEMU, and a load
/// must use what the save used.
fn ignore_shared(ram: RamSave) -> qmp::migrate_set_capabilities {
    qmp::migrate_set_capabilities {
        capabilities: vec![qmp::MigrationCapabilityStatus {
            capability: qmp::MigrationCapability::x_ignore_shared,
            state: ram == RamSave::KeptInSharedFile,
        }],
    }
}

/// `vmm.log` next to the handle's QMP socket.
fn vmm_log(handle: &VmHandle) -> std::path::PathBuf {
    let dir = handle.control_socket.parent().unwrap_or(Path::new("."));
    VmFiles::in_dir(dir).vmm_log
}

/// `path` single-quoted for the `/bin/sh -c` QEMU runs an `exec:` URI
/// with (a `'` becomes `'\''`). Absolute, since the shell runs in QEMU's
/// working directory, and UTF-8, since QMP is JSON.
fn quoted_state_path(path: &Path) -> Result<String, VmmError> {
    let refuse = |reason| VmmError::StatePath {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_absolute() {
        return Err(refuse("must be an absolute path"));
    }
    let text = path.to_str().ok_or_else(|| refuse("must be valid utf-8"))?;
    Ok(format!("'{}'", text.replace('\'', r"'\''")))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn state_paths_are_quoted_for_the_shell() {
        assert_eq!(
            quoted_state_path(Path::new("/d/vm state")).unwrap(),
            "'/d/vm state'"
        );
        assert_eq!(
            quoted_state_path(Path::new("/d/it's $(x)")).unwrap(),
            r"'/d/it'\''s $(x)'"
        );
        assert!(matches!(
            quoted_state_path(Path::new("state")),
            Err(VmmError::StatePath { .. })
        ));
        let bad = Path::new(OsStr::from_bytes(b"/d/\xff"));
        assert!(matches!(
            quoted_state_path(bad),
            Err(VmmError::StatePath { .. })
        ));
    }

    /// What `sh -c` makes of the quoted path is the path itself.
    #[test]
    fn the_shell_gets_the_path_back() {
        let path = r#"/tmp/a b/it's "q" $HOME `x` \n"#;
        let quoted = quoted_state_path(Path::new(path)).unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf '%s' {quoted}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), path);
    }
}
