//! The host's own package tools: resolve a package to apt's candidate
//! version, download its `.deb` into banger's cache (kept for reuse) and
//! extract it. Mirrors come from the host's apt configuration, never from
//! banger.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cmd;
use crate::error::{ImageError, Result};

/// One package version as apt sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The names in `Depends:`, first alternative of each, in order.
    pub depends: Vec<String>,
    /// The `.deb`'s size in bytes (`Size:`), when apt says.
    pub size: Option<u64>,
}

/// Called with the bytes downloaded so far and the total when known.
pub type BytesProgress<'a> = &'a dyn Fn(u64, Option<u64>);

/// How often a download's size on disk is looked at.
const DOWNLOAD_POLL: std::time::Duration = std::time::Duration::from_millis(200);

impl Candidate {
    /// The file name `apt-get download` gives this version
    /// (`NAME_VERSION_ARCH.deb`, with the epoch's `:` written `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.architecture
        )
    }
}

/// Parses the first record of `apt-cache show --no-all-versions`.
pub(crate) fn parse_show(text: &str) -> Option<Candidate> {
    let mut name = None;
    let mut version = None;
    let mut architecture = None;
    let mut depends = Vec::new();
    let mut size = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if name.is_some() {
                break; // end of the first record
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue; // continuation of a multi-line field
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Package" => name = Some(value.to_owned()),
            "Version" => version = Some(value.to_owned()),
            "Architecture" => architecture = Some(value.to_owned()),
            "Depends" | "Pre-Depends" => depends.extend(parse_depends(value)),
            "Size" => size = value.parse().ok(),
            _ => {}
        }
    }
    Some(Candidate {
        name: name?,
        version: version?,
        architecture: architecture?,
        depends,
        size,
    })
}

/// `a (>= 1), b | c, d:any` -> `[a, b, d]`.
fn parse_depends(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// apt's candidate for `package`. Runs `apt-get update` once (as root) when
/// apt does not know the package, which is what a host with empty lists
/// looks like.
pub(crate) fn candidate(package: &str) -> Result<Candidate> {
    match show(package) {
        Ok(found) => Ok(found),
        Err(first) if cmd::is_root() => {
            update()?;
            show(package).map_err(|_| first)
        }
        Err(first) => Err(first),
    }
}

fn show(package: &str) -> Result<Candidate> {
    let text = cmd::command("apt-cache")
        .args(["show", "--no-all-versions", package])
        .output()
        .map_err(|source| ImageError::Spawn {
            program: "apt-cache".into(),
            source,
        })?;
    // apt-cache exits 0 for a purely virtual package and prints nothing useful.
    parse_show(&String::from_utf8_lossy(&text.stdout)).ok_or_else(|| ImageError::PackageNotFound {
        package: package.to_owned(),
    })
}

pub(crate) fn update() -> Result<()> {
    cmd::run(cmd::command("apt-get").args(["update", "-q"]))?;
    Ok(())
}

/// The `.deb` of `candidate` in `debs_dir`, downloaded unless a file of the
/// same name is already there. Downloads go to a temp dir inside `debs_dir`
/// and are renamed into place, so a cached file is always complete.
/// A failed download is retried once after `apt-get update` (as root):
/// stale lists name versions the mirror no longer has.
pub(crate) fn fetch(
    candidate: &Candidate,
    debs_dir: &Path,
    bytes: BytesProgress<'_>,
) -> Result<PathBuf> {
    let target = debs_dir.join(candidate.deb_file_name());
    if target.is_file() {
        return Ok(target);
    }
    fs::create_dir_all(debs_dir).map_err(|e| ImageError::io("create", debs_dir, e))?;
    match download(candidate, debs_dir, &target, bytes) {
        Ok(()) => Ok(target),
        Err(first) if cmd::is_root() => {
            update()?;
            let fresh = self::candidate(&candidate.name)?;
            let target = debs_dir.join(fresh.deb_file_name());
            if target.is_file() {
                return Ok(target);
            }
            download(&fresh, debs_dir, &target, bytes).map_err(|_| first)?;
            Ok(target)
        }
        Err(first) => Err(first),
    }
}

/// Runs `apt-get download` in a temp dir, reporting the bytes it has
/// written so far (apt has no machine-readable progress; the files it
/// writes do) against the size apt announced.
fn download(
    candidate: &Candidate,
    debs_dir: &Path,
    target: &Path,
    bytes: BytesProgress<'_>,
) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(debs_dir)
        .map_err(|e| ImageError::io("create temp dir in", debs_dir, e))?;
    let spec = format!("{}={}", candidate.name, candidate.version);
    let mut command = cmd::command("apt-get");
    command
        .args(["download", "-q", &spec])
        .current_dir(tmp.path());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let apt = scope.spawn(move || {
            let result = cmd::run(&mut command);
            let _ = done_tx.send(());
            result
        });
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            done_rx.recv_timeout(DOWNLOAD_POLL)
        {
            bytes(dir_bytes(tmp.path()), candidate.size);
        }
        apt.join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    bytes(dir_bytes(tmp.path()), candidate.size);
    let got = tmp.path().join(candidate.deb_file_name());
    if !got.is_file() {
        return Err(ImageError::Command {
            command: format!("apt-get download {spec}"),
            status: "exit status 0".into(),
            stderr: format!("expected {} was not written", got.display()),
        });
    }
    fs::rename(&got, target).map_err(|e| ImageError::io("rename", &got, e))
}

/// The bytes in the regular files of `dir` and its directories (apt keeps
/// a partial download under `partial/`).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// `dpkg-deb -x DEB DIR`.
pub(crate) fn extract(deb: &Path, dir: &Path) -> Result<()> {
    cmd::run(cmd::command("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.172+1)
Version: 6.1.172-1
Installed-Size: 13
Size: 1480
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Provides: linux-latest-modules-6.1.0-48-cloud-amd64
Depends: linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)
Description: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel and modules for use on
 cloud platforms.

Package: linux-image-cloud-amd64
Version: 6.1.170-3
Architecture: amd64
Depends: linux-image-6.1.0-47-cloud-amd64 (= 6.1.170-3)
";

    #[test]
    fn parses_first_record() {
        let c = parse_show(SHOW).unwrap();
        assert_eq!(c.name, "linux-image-cloud-amd64");
        assert_eq!(c.version, "6.1.172-1");
        assert_eq!(c.architecture, "amd64");
        assert_eq!(c.depends, ["linux-image-6.1.0-48-cloud-amd64"]);
        assert_eq!(c.size, Some(1480));
    }

    #[test]
    fn a_download_dir_counts_partial_files() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.deb"), [0u8; 100]).unwrap();
        fs::create_dir(tmp.path().join("partial")).unwrap();
        fs::write(tmp.path().join("partial/b.deb"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(tmp.path()), 123);
        assert_eq!(dir_bytes(&tmp.path().join("missing")), 0);
    }

    #[test]
    fn parses_alternatives_and_arch_qualifiers() {
        assert_eq!(
            parse_depends(
                "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, python3:any"
            ),
            ["kmod", "linux-base", "initramfs-tools", "python3"]
        );
    }

    #[test]
    fn deb_file_name_escapes_epoch() {
        let c = Candidate {
            name: "busybox-static".into(),
            version: "1:1.35.0-4+deb12u1+b1".into(),
            architecture: "amd64".into(),
            depends: vec![],
            size: None,
        };
        assert_eq!(
            c.deb_file_name(),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
    }

    #[test]
    fn empty_output_is_no_candidate() {
        assert_eq!(parse_show(""), None);
        assert_eq!(
            parse_show("N: Can't select versions from package 'x' as it is purely virtual\n"),
            None
        );
    }
}
