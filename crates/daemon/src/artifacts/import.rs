//! `kernel import`: a kernel the user has (a Firecracker build, a PVM guest
//! kernel, a test's stub) is checked, then copied into banger's kernel
//! store in the layout of pulled ones, so the user may delete the
//! originals:
//!
//! ```text
//! DATA/kernels/NAME/vmlinuz              the kernel (bzImage or ELF vmlinux)
//! DATA/kernels/NAME/initrd.img           --initrd
//! DATA/kernels/NAME/modules/DIRNAME/     --modules DIR (files, directories, symlinks)
//! ```
//!
//! Every input is checked before anything is written. The copies go into a
//! staging directory `DATA/kernels/.import-NAME-XXXXXX`, renamed to
//! `DATA/kernels/NAME` once complete: a failure leaves nothing (the staging
//! directory is removed; one left by a killed daemon is removed by the
//! next import of the name). The tree copy of a modules directory is a few
//! lines over `std::fs` (no crate of the workspace copies a tree with its
//! symlinks kept as links).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The files to import, as absolute host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub modules: Option<PathBuf>,
}

/// Where an import put the files, under `DATA/kernels/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub modules_dir: Option<PathBuf>,
    /// The release a bzImage's header names (`6.1.0-28-cloud-amd64`); an
    /// ELF vmlinux does not say without a scan of the whole file.
    pub version: Option<String>,
}

/// What a kernel file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// The x86 boot protocol's image (`HdrS` at 0x202): what distributions
    /// ship as `vmlinuz`.
    BzImage,
    /// An ELF `vmlinux`: what Firecracker boots (uncompressed).
    Elf,
}

/// Why an import was refused or failed. `what` is `kernel`, `initrd` or
/// `modules` (the option that named the path).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{what} path {} must be absolute", path.display())]
    NotAbsolute { what: &'static str, path: PathBuf },
    #[error("{what} {}: no such file or directory", path.display())]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} {}", path.display())]
    Inspect {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {} is not a regular file", path.display())]
    NotAFile { what: &'static str, path: PathBuf },
    #[error("kernel {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error(
        "kernel {} does not look like a kernel: neither a bzImage (\"HdrS\" at offset 0x202) nor an ELF vmlinux",
        path.display()
    )]
    NotAKernel { path: PathBuf },
    #[error("modules {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// Copying into the store failed; nothing was kept.
    #[error("copy {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Work on the store's own directories failed; nothing was kept.
    #[error("{op} {}", path.display())]
    Store {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImportError {
    /// The user named something that is not there.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing { .. })
    }

    /// The user named something that cannot be imported.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::NotAbsolute { .. }
                | Self::NotAFile { .. }
                | Self::Empty { .. }
                | Self::NotAKernel { .. }
                | Self::NotADirectory { .. }
        )
    }
}

/// How much of a kernel is read to tell its format and version: a
/// bzImage's setup code (where the version string sits) is a few sectors.
const HEAD_BYTES: u64 = 64 * 1024;

/// The format of a kernel file whose first bytes are `head`, if it is one.
pub fn kernel_format(head: &[u8]) -> Option<KernelFormat> {
    if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else if head.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else {
        None
    }
}

/// The kernel release a bzImage's header points at (boot protocol 2.00+:
/// `kernel_version` at 0x20e, an offset from 0x200 to a NUL-terminated
/// string such as `6.1.0-28-cloud-amd64 (debian-kernel@...) #1 SMP ...`),
/// its first word; `None` when `head` does not reach it or it is no
/// printable text.
pub fn bzimage_version(head: &[u8]) -> Option<String> {
    let u16_at = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    if kernel_format(head) != Some(KernelFormat::BzImage) || u16_at(0x206)? < 0x0200 {
        return None;
    }
    let offset = usize::from(u16_at(0x20e)?);
    if offset == 0 {
        return None;
    }
    let text = head.get(0x200 + offset..)?;
    let end = text.iter().take(256).position(|b| *b == 0)?;
    let text = std::str::from_utf8(&text[..end]).ok()?;
    let release = text.split_whitespace().next()?;
    release
        .bytes()
        .all(|b| b.is_ascii_graphic())
        .then(|| release.to_owned())
}

/// `path`'s metadata, following symlinks; a missing path is
/// [`ImportError::Missing`].
fn metadata(what: &'static str, path: &Path) -> Result<fs::Metadata, ImportError> {
    if !path.is_absolute() {
        return Err(ImportError::NotAbsolute {
            what,
            path: path.to_owned(),
        });
    }
    fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImportError::Missing {
                what,
                path: path.to_owned(),
            }
        } else {
            ImportError::Inspect {
                what,
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Checks every input (see the module docs) before anything is copied;
/// returns the kernel's format and, for a bzImage, its release.
pub fn check(files: &ImportFiles) -> Result<(KernelFormat, Option<String>), ImportError> {
    let path = &files.kernel;
    let meta = metadata("kernel", path)?;
    if !meta.is_file() {
        return Err(ImportError::NotAFile {
            what: "kernel",
            path: path.clone(),
        });
    }
    if meta.len() == 0 {
        return Err(ImportError::Empty { path: path.clone() });
    }
    let inspect = |source| ImportError::Inspect {
        what: "kernel",
        path: path.clone(),
        source,
    };
    let mut head = Vec::new();
    fs::File::open(path)
        .map_err(inspect)?
        .take(HEAD_BYTES)
        .read_to_end(&mut head)
        .map_err(inspect)?;
    let format =
        kernel_format(&head).ok_or_else(|| ImportError::NotAKernel { path: path.clone() })?;
    if let Some(initrd) = &files.initrd {
        if !metadata("initrd", initrd)?.is_file() {
            return Err(ImportError::NotAFile {
                what: "initrd",
                path: initrd.clone(),
            });
        }
    }
    if let Some(modules) = &files.modules {
        if !metadata("modules", modules)?.is_dir() {
            return Err(ImportError::NotADirectory {
                path: modules.clone(),
            });
        }
    }
    Ok((format, bzimage_version(&head)))
}

/// Checks `files`, then copies them into `kernels_dir/name` (see the
/// module docs). The caller holds the name's lock and knows no kernel of
/// that name is recorded: a directory already there is a leftover of an
/// import or pull that never got its row, and is replaced.
pub fn import(
    kernels_dir: &Path,
    name: &str,
    files: &ImportFiles,
) -> Result<Imported, ImportError> {
    let (_format, version) = check(files)?;
    let store_err = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| ImportError::Store { op, path, source }
    };
    fs::create_dir_all(kernels_dir).map_err(store_err("create", kernels_dir))?;
    let prefix = format!(".import-{name}-");
    remove_stale_staging(kernels_dir, &prefix);
    let staging = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(kernels_dir)
        .map_err(store_err("create a staging directory in", kernels_dir))?;
    let copy = |from: &Path, to: &Path| {
        fs::copy(from, to)
            .map(|_| ())
            .map_err(|source| ImportError::Copy {
                from: from.to_owned(),
                to: to.to_owned(),
                source,
            })
    };
    copy(&files.kernel, &staging.path().join("vmlinuz"))?;
    if let Some(initrd) = &files.initrd {
        copy(initrd, &staging.path().join("initrd.img"))?;
    }
    // modules/DIRNAME, as a pull keeps modules/VERSION.
    let modules_name = files.modules.as_ref().map(|dir| {
        dir.file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "modules".into())
    });
    if let (Some(dir), Some(dir_name)) = (&files.modules, &modules_name) {
        let into = staging.path().join("modules");
        fs::create_dir(&into).map_err(store_err("create", &into))?;
        copy_tree(dir, &into.join(dir_name))?;
    }

    let dest = kernels_dir.join(name);
    if fs::symlink_metadata(&dest).is_ok() {
        tracing::warn!(dir = %dest.display(), "replacing a kernel directory no kernel is recorded for");
        fs::remove_dir_all(&dest).map_err(store_err("remove", &dest))?;
    }
    fs::rename(staging.path(), &dest).map_err(store_err("create", &dest))?;
    // Renamed away: nothing left for the guard to remove.
    let _ = staging.keep();
    Ok(Imported {
        kernel: dest.join("vmlinuz"),
        initrd: files.initrd.as_ref().map(|_| dest.join("initrd.img")),
        modules_dir: modules_name.map(|n| dest.join("modules").join(n)),
        version,
    })
}

/// Copies the directory `from` to `to` (which must not exist): directories,
/// regular files (with their permissions) and symlinks (as symlinks, not
/// followed); sockets, FIFOs and devices are left out.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ImportError> {
    let copy_err = |from: &Path, to: &Path| {
        let (from, to) = (from.to_owned(), to.to_owned());
        move |source| ImportError::Copy { from, to, source }
    };
    fs::create_dir(to).map_err(copy_err(from, to))?;
    for entry in fs::read_dir(from).map_err(copy_err(from, to))? {
        let entry = entry.map_err(copy_err(from, to))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(copy_err(&src, &dst))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst).map_err(copy_err(&src, &dst))?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(copy_err(&src, &dst))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(copy_err(&src, &dst))?;
        }
    }
    Ok(())
}

/// Removes staging directories named `prefix*` in `dir` (left by a daemon
/// killed during an import of that name). Best effort.
fn remove_stale_staging(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;

    fn files(kernel: &Path) -> ImportFiles {
        ImportFiles {
            kernel: kernel.to_owned(),
            initrd: None,
            modules: None,
        }
    }

    /// A bzImage header naming `release` as its version.
    fn bzimage_with_version(release: &str) -> Vec<u8> {
        let mut image = banger_vmm::testkit::stub_kernel();
        let text = format!("{release} (builder@host) #1 SMP\0");
        let at = 0x400;
        image[at..at + text.len()].copy_from_slice(text.as_bytes());
        image[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
        image
    }

    #[test]
    fn formats_and_versions_are_read_from_the_header() {
        let stub = banger_vmm::testkit::stub_kernel();
        assert_eq!(kernel_format(&stub), Some(KernelFormat::BzImage));
        assert_eq!(bzimage_version(&stub), None, "the stub names no version");
        let named = bzimage_with_version("6.1.0-28-cloud-amd64");
        assert_eq!(
            bzimage_version(&named).as_deref(),
            Some("6.1.0-28-cloud-amd64")
        );
        assert_eq!(
            kernel_format(b"\x7fELF\x02\x01\x01\0"),
            Some(KernelFormat::Elf)
        );
        assert_eq!(kernel_format(b"#!/bin/sh\n"), None);
        assert_eq!(kernel_format(&[]), None);
        // An offset past the end reads as no version, not a panic.
        let mut past = stub.clone();
        past[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert_eq!(bzimage_version(&past), None);
        if let Some(host) = banger_vmm::testkit::host_kernel() {
            if let Ok(bytes) = fs::read(&host) {
                assert_eq!(
                    kernel_format(&bytes),
                    Some(KernelFormat::BzImage),
                    "{host:?}"
                );
                let v = bzimage_version(&bytes).unwrap_or_default();
                eprintln!("{}: version {v:?}", host.display());
                assert!(
                    v.chars().next().is_some_and(|c| c.is_ascii_digit()),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn bad_inputs_are_refused_naming_what_was_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let kernel = root.join("vmlinuz");
        banger_vmm::testkit::write_stub_kernel(&kernel).unwrap();
        let not_kernel = root.join("notes.txt");
        fs::write(&not_kernel, vec![b'x'; 4096]).unwrap();
        let empty = root.join("empty");
        fs::write(&empty, b"").unwrap();
        let dir = root.join("dir");
        fs::create_dir(&dir).unwrap();

        let refused = |f: ImportFiles| check(&f).unwrap_err();
        let e = refused(files(&root.join("gone")));
        assert!(e.is_missing(), "{e:?}");
        assert_eq!(
            chain(&e),
            format!("kernel {}/gone: no such file or directory", root.display())
        );
        let e = refused(files(Path::new("vmlinuz")));
        assert!(e.is_bad_input());
        assert_eq!(chain(&e), "kernel path vmlinuz must be absolute");
        let e = refused(files(&dir));
        assert!(
            matches!(e, ImportError::NotAFile { what: "kernel", .. }),
            "{e:?}"
        );
        let e = refused(files(&empty));
        assert_eq!(chain(&e), format!("kernel {} is empty", empty.display()));
        let e = refused(files(&not_kernel));
        assert!(matches!(e, ImportError::NotAKernel { .. }), "{e:?}");
        assert!(chain(&e).contains("does not look like a kernel"), "{e}");
        let e = refused(ImportFiles {
            initrd: Some(root.join("no-initrd")),
            ..files(&kernel)
        });
        assert!(
            matches!(e, ImportError::Missing { what: "initrd", .. }),
            "{e:?}"
        );
        let e = refused(ImportFiles {
            initrd: Some(dir.clone()),
            ..files(&kernel)
        });
        assert!(
            matches!(e, ImportError::NotAFile { what: "initrd", .. }),
            "{e:?}"
        );
        let e = refused(ImportFiles {
            modules: Some(kernel.clone()),
            ..files(&kernel)
        });
        assert_eq!(
            chain(&e),
            format!("modules {} is not a directory", kernel.display())
        );
        let e = refused(ImportFiles {
            modules: Some(root.join("no-modules")),
            ..files(&kernel)
        });
        assert!(
            matches!(
                e,
                ImportError::Missing {
                    what: "modules",
                    ..
                }
            ),
            "{e:?}"
        );
        // An ELF vmlinux is a kernel (what Firecracker boots).
        let elf = root.join("vmlinux");
        let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
        bytes.resize(8192, 0);
        fs::write(&elf, bytes).unwrap();
        assert_eq!(check(&files(&elf)).unwrap(), (KernelFormat::Elf, None));

        // Nothing was written anywhere by a refused import.
        let store = root.join("kernels");
        for f in [files(&not_kernel), files(&root.join("gone"))] {
            import(&store, "bad", &f).unwrap_err();
        }
        assert!(!store.exists(), "a refused import made the store directory");
    }

    #[test]
    fn an_import_copies_everything_into_the_store_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let kernel = root.join("bzImage");
        fs::write(&kernel, bzimage_with_version("6.6.1-pvm")).unwrap();
        let initrd = root.join("initrd.img");
        fs::write(&initrd, b"initramfs").unwrap();
        let modules = root.join("lib/modules/6.6.1-pvm");
        fs::create_dir_all(modules.join("kernel/drivers")).unwrap();
        fs::write(modules.join("modules.dep"), b"").unwrap();
        fs::write(modules.join("kernel/drivers/virtio.ko"), b"ko").unwrap();
        std::os::unix::fs::symlink("/usr/src/linux-6.6.1", modules.join("build")).unwrap();

        let store = root.join("data/kernels");
        // A leftover of an import killed halfway, and a directory of the
        // name that never got its row: both go.
        fs::create_dir_all(store.join(".import-pvm-abc123")).unwrap();
        fs::create_dir_all(store.join("pvm/junk")).unwrap();
        let got = import(
            &store,
            "pvm",
            &ImportFiles {
                kernel: kernel.clone(),
                initrd: Some(initrd.clone()),
                modules: Some(modules.clone()),
            },
        )
        .unwrap();
        let dest = store.join("pvm");
        assert_eq!(
            got,
            Imported {
                kernel: dest.join("vmlinuz"),
                initrd: Some(dest.join("initrd.img")),
                modules_dir: Some(dest.join("modules/6.6.1-pvm")),
                version: Some("6.6.1-pvm".into()),
            }
        );
        assert_eq!(fs::read(&got.kernel).unwrap(), fs::read(&kernel).unwrap());
        assert_eq!(fs::read(dest.join("initrd.img")).unwrap(), b"initramfs");
        let m = dest.join("modules/6.6.1-pvm");
        assert_eq!(fs::read(m.join("kernel/drivers/virtio.ko")).unwrap(), b"ko");
        assert_eq!(
            fs::read_link(m.join("build")).unwrap(),
            Path::new("/usr/src/linux-6.6.1")
        );
        assert!(!dest.join("junk").exists());
        let names: Vec<String> = fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["pvm"], "no staging directory left");
        // The originals may go: the store has its own copies.
        fs::remove_file(&kernel).unwrap();
        fs::remove_dir_all(root.join("lib")).unwrap();
        assert!(got.kernel.is_file() && m.join("modules.dep").is_file());
    }

    #[test]
    fn a_failed_copy_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let kernel = root.join("vmlinuz");
        banger_vmm::testkit::write_stub_kernel(&kernel).unwrap();
        // A regular file whose read fails (address 0 of this process's
        // memory is not mapped: EIO), even for root: the copy fails after
        // the kernel's went through.
        let unreadable = Path::new("/proc/self/mem");
        if !unreadable.is_file() {
            eprintln!("skipping a_failed_copy_leaves_nothing: no /proc/self/mem");
            return;
        }
        let store = root.join("kernels");
        let e = import(
            &store,
            "k",
            &ImportFiles {
                initrd: Some(unreadable.to_owned()),
                ..files(&kernel)
            },
        )
        .unwrap_err();
        assert!(matches!(e, ImportError::Copy { .. }), "{e:?}");
        assert!(chain(&e).starts_with("copy /proc/self/mem to "), "{e}");
        assert_eq!(
            fs::read_dir(&store).unwrap().count(),
            0,
            "files left behind"
        );
    }
}
