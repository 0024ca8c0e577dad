//! A cap on what a guest writes to its serial console.
//!
//! QEMU writes the console to `DATA/vms/ID/console.log`, opened in append
//! mode (`-chardev file,...,append=on`, crates/vmm/src/qemu/args.rs), so
//! the file can be truncated under it and QEMU's next write lands at the
//! new end. One watcher task looks at every running VM's console log
//! every [`CHECK_INTERVAL`]; once one is past the cap (`console_log_max`
//! in config.toml, 8 MiB by default) it is copied to `console.log.1`
//! (replacing the older generation: one is kept) and truncated
//! ("copy-truncate"). So the two files hold about twice the cap: at most
//! that plus what the guest writes in two intervals (the emulated serial
//! port is slow: a few MB/s at most). `vm logs` reads `console.log.1`
//! before `console.log`. A log found far past the cap (written while no
//! daemon ran) keeps only its last cap bytes in `console.log.1`.
//!
//! One task for all VMs, not one per VM: it needs no start or stop hook.
//! The VMs it watches are the ones with handles (`VmTable::running_ids`),
//! so a VM started by this daemon is watched from its launch, and one
//! adopted by `reconcile` after a daemon restart as soon as it is
//! adopted. While no daemon runs, nothing enforces the cap (QEMU keeps
//! appending); the next daemon rotates the file on its first look.
//!
//! Limits of copy-truncate: what the guest writes between the end of the
//! copy and the truncation (microseconds) is lost, and a reader following
//! the file sees it shrink (`vm logs -f` then reads the rest from
//! `console.log.1`).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{VmTable, console_log};

/// How often running VMs' console logs are looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The previous generation of a console log: `console.log.1` beside it.
pub fn rotated(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    log.with_file_name(name)
}

/// Starts the watcher of running VMs' console logs under `vm_root`
/// (`DATA/vms`), capping each at `cap` bytes; it ends with `shutdown`.
pub(crate) fn spawn_watcher(
    table: Arc<VmTable>,
    vm_root: PathBuf,
    cap: u64,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        // VMs whose rotation failed, warned about once (not 4 times a
        // second).
        let mut warned = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            let ids = table.running_ids();
            if ids.is_empty() {
                continue;
            }
            let root = vm_root.clone();
            let checked = tokio::task::spawn_blocking(move || {
                ids.into_iter()
                    .map(|id| {
                        let log = console_log(&root.join(&id));
                        let r = rotate_if_over(&log, cap);
                        (id, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let Ok(checked) = checked else { continue };
            for (id, result) in checked {
                match result {
                    Ok(Some(bytes)) => {
                        warned.remove(&id);
                        tracing::info!(vm_id = %id, bytes, cap, "console log rotated");
                    }
                    Ok(None) => {
                        warned.remove(&id);
                    }
                    Err(e) => {
                        if warned.insert(id.clone()) {
                            tracing::warn!(vm_id = %id, error = %e, "console log rotation failed");
                        }
                    }
                }
            }
        }
    });
}

impl super::Vms {
    /// Starts the console log watcher ([`spawn_watcher`]) over this
    /// daemon's VMs.
    pub fn spawn_console_watcher(&self, cap: u64, shutdown: CancellationToken) {
        spawn_watcher(
            Arc::clone(&self.table),
            self.settings.data_dir.join("vms"),
            cap,
            shutdown,
        );
    }
}

/// Copies `log` to its `.1` and truncates it when it is larger than
/// `cap`. The `.1` is the whole file (so a reader following `log` finds
/// what it missed at the same offset), unless the file is past twice the
/// cap: then only its last `cap` bytes. Returns the size rotated, or
/// `None` when the file is within the cap or absent.
pub fn rotate_if_over(log: &Path, cap: u64) -> io::Result<Option<u64>> {
    let len = match fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len <= cap {
        return Ok(None);
    }
    let mut src = File::open(log)?;
    let old = rotated(log);
    let mut tmp_name = old.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = old.with_file_name(tmp_name);
    let copied = (|| {
        let mut dst = File::create(&tmp)?;
        // Up to the end as it is now (the guest may still be writing).
        let end = src.seek(SeekFrom::End(0))?;
        let keep = if end > 2 * cap { cap } else { end };
        src.seek(SeekFrom::Start(end - keep))?;
        let n = io::copy(&mut (&mut src).take(keep), &mut dst)?;
        // Truncated right after the copy, so little is lost between.
        fs::OpenOptions::new().write(true).open(log)?.set_len(0)?;
        dst.flush()?;
        fs::rename(&tmp, &old)?;
        Ok(n)
    })();
    if copied.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    copied.map(|_| Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_the_cap_is_copied_to_dot_1_and_truncated() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        assert_eq!(rotate_if_over(&log, 100).unwrap(), None, "no log yet");
        fs::write(&log, vec![b'a'; 100]).unwrap();
        assert_eq!(rotate_if_over(&log, 100).unwrap(), None, "at the cap");
        // A writer in append mode, like QEMU's.
        let mut qemu = fs::OpenOptions::new().append(true).open(&log).unwrap();
        qemu.write_all(&[b'b'; 50]).unwrap();
        assert_eq!(rotate_if_over(&log, 100).unwrap(), Some(150));
        let old = fs::read(rotated(&log)).unwrap();
        assert_eq!(old.len(), 150, "all of it: offsets stay the same");
        assert!(old.ends_with(&[b'b'; 50]));
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        // The writer goes on at the new end (no hole of zeros).
        qemu.write_all(b"next").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"next");
        // A second rotation replaces the old generation.
        // Far past the cap (no daemon watched): only the last cap bytes.
        qemu.write_all(&[b'c'; 300]).unwrap();
        rotate_if_over(&log, 100).unwrap();
        assert_eq!(fs::read(rotated(&log)).unwrap(), vec![b'c'; 100]);
        assert!(!d.path().join("console.log.1.tmp").exists());
        assert_eq!(rotated(&log), d.path().join("console.log.1"));
    }
}
