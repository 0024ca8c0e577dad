//! Distribution kernels, fetched with the host's own apt.
//!
//! A catalog entry names a Debian kernel metapackage; pulling it resolves
//! the versioned `linux-image-VERSION` package apt would install, downloads
//! its `.deb` into the cache (`cache_dir/debs/`, reused while apt's
//! candidate stays the same), extracts it and writes into `dest_dir`:
//!
//! ```text
//! dest_dir/vmlinuz              the kernel (bzImage)
//! dest_dir/initrd.img           banger's initramfs (see crate::initramfs)
//! dest_dir/modules/VERSION/     all of the kernel's modules, with a modules.dep
//! dest_dir/config               the kernel's build config (for doctor-style checks)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::apt;
use crate::error::{ImageError, Result};
use crate::initramfs;
use crate::modules::{self, ModuleSet};

/// A kernel banger knows how to get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// What users type: `banger kernel pull debian-cloud`.
    pub name: &'static str,
    /// The Debian (meta)package that provides it.
    pub package: &'static str,
    pub description: &'static str,
    /// Pulled when nothing else is asked for.
    pub default: bool,
}

const CATALOG: &[CatalogEntry] = &[CatalogEntry {
    name: "debian-cloud",
    package: "linux-image-cloud-amd64",
    description: "Debian's cloud kernel for x86-64 (small, virtio drivers as modules), from the host's apt sources",
    default: true,
}];

/// The embedded kernel catalog.
pub fn catalog() -> &'static [CatalogEntry] {
    CATALOG
}

/// The catalog entry called `name`.
pub fn catalog_entry(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// The catalog's default entry.
pub fn default_catalog_entry() -> &'static CatalogEntry {
    CATALOG.iter().find(|e| e.default).unwrap_or(&CATALOG[0])
}

/// What [`pull_debian_kernel`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArtifacts {
    /// `dest_dir/vmlinuz`
    pub kernel: PathBuf,
    /// `dest_dir/initrd.img`
    pub initrd: PathBuf,
    /// `dest_dir/modules/VERSION`
    pub modules_dir: PathBuf,
    /// The kernel release, as `uname -r` prints it in the guest: `6.1.0-48-cloud-amd64`.
    pub version: String,
}

/// Fetches a Debian kernel package and lays it out in `dest_dir` (see the
/// module docs). `package` is a metapackage such as
/// `linux-image-cloud-amd64` (resolved to the versioned package it depends
/// on) or a versioned `linux-image-*` package itself.
///
/// Everything is staged in a temp dir inside `dest_dir` and renamed into
/// place at the end, `vmlinuz` last: a failure before the "install" stage
/// leaves `dest_dir` as it was, and the temp dir is removed either way
/// (one left by a killed process is removed by a later pull).
/// Stages reported: "resolve package", "download kernel package",
/// "extract", "build initramfs", "install"; `bytes` hears how the
/// download goes.
pub fn pull_debian_kernel(
    package: &str,
    cache_dir: &Path,
    dest_dir: &Path,
    progress: &dyn Fn(&str),
    bytes: apt::BytesProgress<'_>,
) -> Result<KernelArtifacts> {
    progress("resolve package");
    let image = resolve_image_package(package)?;

    progress("download kernel package");
    let deb = apt::fetch(&image, &cache_dir.join("debs"), bytes)?;

    progress("extract");
    fs::create_dir_all(dest_dir).map_err(|e| ImageError::io("create", dest_dir, e))?;
    crate::fsutil::remove_stale_staging(dest_dir, ".kernel-");
    let staging = tempfile::Builder::new()
        .prefix(".kernel-")
        .tempdir_in(dest_dir)
        .map_err(|e| ImageError::io("create temp dir in", dest_dir, e))?;
    let pkg = staging.path().join("pkg");
    apt::extract(&deb, &pkg)?;
    let layout = find_layout(&pkg)?;
    let version = layout.version.clone();

    let out = staging.path().join("out");
    let out_modules = out.join("modules");
    fs::create_dir_all(&out_modules).map_err(|e| ImageError::io("create", &out_modules, e))?;
    let staged_modules = out_modules.join(&version);
    rename(&layout.modules, &staged_modules)?;
    if !staged_modules.join("modules.dep").is_file() {
        // Debian generates it at install time (depmod in postinst); do the same.
        let set = ModuleSet::load(&staged_modules)?;
        let dep_file = staged_modules.join("modules.dep");
        fs::write(&dep_file, modules::render_modules_dep(&set.nodes))
            .map_err(|e| ImageError::io("write", &dep_file, e))?;
    }
    rename(&layout.vmlinuz, &out.join("vmlinuz"))?;
    if let Some(config) = &layout.config {
        rename(config, &out.join("config"))?;
    }

    progress("build initramfs");
    initramfs::build_initramfs(&out_modules, &version, cache_dir, &out.join("initrd.img"))?;

    progress("install");
    let dest_modules = dest_dir.join("modules");
    fs::create_dir_all(&dest_modules).map_err(|e| ImageError::io("create", &dest_modules, e))?;
    // Old module trees (this version or another) move into the staging
    // dir, which is deleted when it drops.
    let trash = staging.path().join("trash");
    fs::create_dir_all(&trash).map_err(|e| ImageError::io("create", &trash, e))?;
    let entries =
        fs::read_dir(&dest_modules).map_err(|e| ImageError::io("read dir", &dest_modules, e))?;
    for (i, entry) in entries.enumerate() {
        let entry = entry.map_err(|e| ImageError::io("read dir", &dest_modules, e))?;
        rename(&entry.path(), &trash.join(i.to_string()))?;
    }
    let modules_dir = dest_modules.join(&version);
    rename(&staged_modules, &modules_dir)?;
    if out.join("config").is_file() {
        rename(&out.join("config"), &dest_dir.join("config"))?;
    }
    let initrd = dest_dir.join("initrd.img");
    rename(&out.join("initrd.img"), &initrd)?;
    let kernel = dest_dir.join("vmlinuz");
    rename(&out.join("vmlinuz"), &kernel)?;
    drop(staging);

    Ok(KernelArtifacts {
        kernel,
        initrd,
        modules_dir,
        version,
    })
}

/// Follows a metapackage's `linux-image-*` dependency (a few levels at
/// most) to the package that ships the kernel.
fn resolve_image_package(package: &str) -> Result<apt::Candidate> {
    let mut current = apt::candidate(package)?;
    for _ in 0..4 {
        let next = current
            .depends
            .iter()
            .find(|d| d.starts_with("linux-image-") && **d != current.name)
            .cloned();
        match next {
            Some(name) => current = apt::candidate(&name)?,
            None if current.name.starts_with("linux-image-") => return Ok(current),
            None => break,
        }
    }
    Err(ImageError::NoImagePackage {
        package: package.to_owned(),
    })
}

/// Where things are in an extracted kernel package.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    version: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
    config: Option<PathBuf>,
}

/// `boot/vmlinuz-VERSION` and `lib/modules/VERSION` (or `usr/lib/modules`
/// on merged-/usr releases).
fn find_layout(pkg: &Path) -> Result<Layout> {
    let boot = pkg.join("boot");
    let bad = |reason: String| ImageError::KernelLayout {
        path: pkg.to_owned(),
        reason,
    };
    let entries = fs::read_dir(&boot).map_err(|_| bad("no boot/ directory".into()))?;
    let mut versions = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("read dir", &boot, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(v) = name.strip_prefix("vmlinuz-") {
            versions.push(v.to_owned());
        }
    }
    let version = match versions.as_slice() {
        [one] => one.clone(),
        [] => return Err(bad("no boot/vmlinuz-*".into())),
        many => return Err(bad(format!("several kernels: {}", many.join(", ")))),
    };
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| pkg.join(d).join(&version))
        .find(|p| p.is_dir())
        .ok_or_else(|| bad(format!("no lib/modules/{version}")))?;
    let config = boot.join(format!("config-{version}"));
    Ok(Layout {
        vmlinuz: boot.join(format!("vmlinuz-{version}")),
        modules,
        config: config.is_file().then_some(config),
        version,
    })
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| ImageError::io("rename", from, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_debian_cloud_as_default() {
        let entries = catalog();
        let defaults: Vec<_> = entries.iter().filter(|e| e.default).collect();
        assert_eq!(defaults.len(), 1, "exactly one default");
        let cloud = catalog_entry("debian-cloud").unwrap();
        assert_eq!(cloud.package, "linux-image-cloud-amd64");
        assert!(cloud.default);
        assert!(!cloud.description.is_empty());
        assert_eq!(default_catalog_entry(), cloud);
        assert!(catalog_entry("nope").is_none());
        // Names are unique.
        let mut names: Vec<_> = entries.iter().map(|e| e.name).collect();
        names.dedup();
        assert_eq!(names.len(), entries.len());
    }

    #[test]
    fn finds_layout() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path();
        fs::create_dir_all(pkg.join("boot")).unwrap();
        fs::write(pkg.join("boot/vmlinuz-6.1.0-9-cloud-amd64"), b"k").unwrap();
        fs::write(pkg.join("boot/System.map-6.1.0-9-cloud-amd64"), b"m").unwrap();
        let err = find_layout(pkg).unwrap_err();
        assert!(
            err.to_string()
                .contains("no lib/modules/6.1.0-9-cloud-amd64"),
            "{err}"
        );
        fs::create_dir_all(pkg.join("usr/lib/modules/6.1.0-9-cloud-amd64")).unwrap();
        let layout = find_layout(pkg).unwrap();
        assert_eq!(layout.version, "6.1.0-9-cloud-amd64");
        assert_eq!(
            layout.modules,
            pkg.join("usr/lib/modules/6.1.0-9-cloud-amd64")
        );
        assert_eq!(layout.config, None);
        fs::write(pkg.join("boot/vmlinuz-6.2"), b"k").unwrap();
        assert!(
            find_layout(pkg)
                .unwrap_err()
                .to_string()
                .contains("several kernels")
        );
    }
}
