//! Debian root filesystem images, built with mmdebstrap and `mkfs.ext4 -d`.
//!
//! 1. **debootstrap**: `mmdebstrap --variant=minbase --include=...` writes a
//!    tarball of the base system, cached in `cache_dir/rootfs-base/` keyed
//!    by suite, package set and the host's apt sources, and reused for
//!    [`BASE_MAX_AGE`] (then rebuilt to pick up security updates). Delete the
//!    directory to force a fresh one.
//! 2. **extract**: the tarball is unpacked into a staging dir in `dest_dir`.
//! 3. **customize**: the edits of docs/guest-contract.md (SSH key and
//!    config, host-key and guest-setup units, console getty, masks, fstab),
//!    done on the tree from the host: no chroot, nothing runs in the image.
//! 4. **mkfs**: `mkfs.ext4 -d` turns the tree into `rootfs.ext4` (used
//!    space plus headroom, at least 1 GiB) and its `/root` into the 64 MiB
//!    `work-seed.ext4`. Both are renamed into `dest_dir` at the end; the
//!    staging dir is removed on success and failure alike.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::cmd;
use crate::error::{ImageError, Result};
use crate::guest::{self, CUSTOMIZE_VERSION};
use crate::sources;

/// Packages every image has, besides minbase and the recipe's extras:
/// what banger's guest contract needs (SSH, systemd, `ip`), then the
/// everyday tools of a development machine, so the first command a
/// developer types in a new VM works.
pub const BASE_PACKAGES: &[&str] = &[
    "openssh-server",
    "systemd-sysv",
    "iproute2",
    "ca-certificates",
    "curl",
    "git",
    "python3",
    "iputils-ping",
    "procps",
    "less",
];

/// How long a cached base tarball is reused.
pub const BASE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Smallest root image built when the recipe gives no size.
pub const MIN_ROOTFS_BYTES: u64 = 1 << 30;

/// Free space left in the root image beyond what its files use (at least).
pub const ROOTFS_HEADROOM_BYTES: u64 = 512 << 20;

/// Size of the work seed (each VM's copy is grown to its disk size).
pub const WORK_SEED_BYTES: u64 = 64 << 20;

const MIB: u64 = 1 << 20;

/// How to build an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecipe {
    /// Debian suite: "bookworm".
    pub suite: String,
    /// Extra packages, on top of [`BASE_PACKAGES`].
    pub packages: Vec<String>,
    /// The key (one or more `authorized_keys` lines) root logs in with.
    pub ssh_public_key: String,
    /// Size of `rootfs.ext4`; `None`: used space plus headroom, at least 1 GiB.
    pub size_bytes: Option<u64>,
    /// The guest agent to bake in (docs/agent.md); `None` builds an image
    /// without one.
    pub agent: Option<crate::agent::AgentBinary>,
    /// Shell commands run inside the image (chroot, with the network)
    /// once its packages are in, as part of the cached base (a preset's
    /// install: `services.rs`).
    pub setup: Vec<String>,
    /// Services baked in as units (`services.rs`).
    pub services: Vec<crate::services::Service>,
}

/// What [`build_rootfs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsArtifacts {
    /// `dest_dir/rootfs.ext4`
    pub rootfs: PathBuf,
    /// `dest_dir/work-seed.ext4`
    pub work_seed: PathBuf,
    /// Size of `rootfs.ext4` in bytes.
    pub size_bytes: u64,
}

impl ImageRecipe {
    /// A recipe for `suite` with no extras and the default size.
    pub fn new(suite: impl Into<String>, ssh_public_key: impl Into<String>) -> Self {
        Self {
            suite: suite.into(),
            packages: Vec::new(),
            ssh_public_key: ssh_public_key.into(),
            size_bytes: None,
            agent: None,
            setup: Vec::new(),
            services: Vec::new(),
        }
    }

    /// Every change to the bootstrapped tree: the guest contract's, then
    /// the services' units.
    pub(crate) fn changes(&self) -> Vec<guest::Change> {
        let mut all = guest::changes(&self.ssh_public_key, self.agent.as_ref());
        all.extend(crate::services::changes(&self.services));
        all
    }

    /// What the setup and services add to a recipe's identity; empty for
    /// a recipe without them, so images made before they existed keep
    /// their fingerprint.
    fn services_text(&self) -> Option<String> {
        if self.setup.is_empty() && self.services.is_empty() {
            return None;
        }
        let mut text = String::new();
        for s in &self.setup {
            text.push_str(&format!("setup {}\n{s}\n", s.len()));
        }
        for s in &self.services {
            text.push_str(&format!(
                "service {} port {} in {} env {:?}: {}\n",
                s.name, s.port, s.workdir, s.env, s.command
            ));
        }
        Some(text)
    }

    /// Every package on `--include`, sorted and deduplicated.
    pub fn all_packages(&self) -> Vec<String> {
        let set: BTreeSet<String> = BASE_PACKAGES
            .iter()
            .map(|p| (*p).to_owned())
            .chain(self.packages.iter().map(|p| p.trim().to_owned()))
            .filter(|p| !p.is_empty())
            .collect();
        set.into_iter().collect()
    }

    /// sha256 (hex) over everything that shapes the image: suite, packages
    /// (order-insensitive), key, size, [`CUSTOMIZE_VERSION`] and the exact
    /// customisation applied. A managed image whose recorded fingerprint
    /// differs is stale.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |label: &str, value: &str| {
            h.update(label.as_bytes());
            h.update((value.len() as u64).to_le_bytes());
            h.update(value.as_bytes());
        };
        put("banger-image rootfs", "1");
        put("customize-version", &CUSTOMIZE_VERSION.to_string());
        put("variant", "minbase");
        put(
            "mkfs",
            &format!("ext4 -T default, seed {WORK_SEED_BYTES} bytes with root 0700"),
        );
        put("suite", &self.suite);
        for p in self.all_packages() {
            put("package", &p);
        }
        put("ssh-key", self.ssh_public_key.trim());
        put(
            "size",
            &self
                .size_bytes
                .map_or_else(|| "auto".to_owned(), |s| s.to_string()),
        );
        for change in guest::changes(&self.ssh_public_key, self.agent.as_ref()) {
            put("change", &change.describe());
        }
        if let Some(text) = self.services_text() {
            put("services", &text);
        }
        hex(&h.finalize())
    }

    /// A digest per part of the recipe that can make an image stale (see
    /// [`RECIPE_PARTS`]): recorded with an image, compared with the
    /// current recipe's by [`stale_reasons`] to say why it is stale.
    pub fn parts(&self) -> BTreeMap<String, String> {
        let mut parts: BTreeMap<&'static str, Sha256> = RECIPE_PARTS
            .iter()
            .map(|(name, _)| (*name, Sha256::new()))
            .collect();
        let mut put = |part: &'static str, value: &str| {
            if let Some(h) = parts.get_mut(part) {
                h.update((value.len() as u64).to_le_bytes());
                h.update(value.as_bytes());
            }
        };
        put("format", "banger-image rootfs 1, minbase");
        put(
            "format",
            &format!("ext4 -T default, seed {WORK_SEED_BYTES} bytes with root 0700"),
        );
        put("suite", &self.suite);
        for p in self.all_packages() {
            put("packages", &p);
        }
        put("ssh-key", self.ssh_public_key.trim());
        put(
            "size",
            &self
                .size_bytes
                .map_or_else(|| "auto".to_owned(), |s| s.to_string()),
        );
        put("customize", &CUSTOMIZE_VERSION.to_string());
        for change in guest::changes(&self.ssh_public_key, self.agent.as_ref()) {
            put(change.part(), &change.describe());
        }
        match self.services_text() {
            Some(text) => put("services", &text),
            // Not a part of recipes without services, so images recorded
            // before the part existed are not stale for it.
            None => {
                parts.remove("services");
            }
        }
        parts
            .into_iter()
            .map(|(name, h)| (name.to_owned(), hex(&h.finalize())[..16].to_owned()))
            .collect()
    }

    /// Checks what would otherwise fail late, or be passed to a shell or apt unchecked.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(ImageError::InvalidRecipe { reason });
        let suite_ok = !self.suite.is_empty()
            && self
                .suite
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !suite_ok {
            return bad(format!("bad suite {:?}", self.suite));
        }
        for p in &self.packages {
            let p = p.trim();
            let ok = p.len() >= 2
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && p.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')
                });
            if !ok {
                return bad(format!("bad package name {p:?}"));
            }
        }
        let key_lines: Vec<&str> = self
            .ssh_public_key
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if key_lines.is_empty() {
            return bad("no ssh public key".into());
        }
        if key_lines.iter().any(|l| l.split_whitespace().count() < 2) {
            return bad("ssh public key is not in authorized_keys format".into());
        }
        for s in &self.services {
            crate::services::validate(s).or_else(bad)?;
        }
        Ok(())
    }
}

/// The parts of [`ImageRecipe::parts`], each with why an image is stale
/// when its recorded digest differs from the current recipe's.
pub const RECIPE_PARTS: &[(&str, &str)] = &[
    ("format", "new image format"),
    ("suite", "Debian suite changed"),
    ("packages", "package set changed"),
    ("ssh-key", "new SSH key"),
    ("size", "size changed"),
    ("agent", "new agent"),
    ("nic", "new guest setup (NIC, hostname, work disk)"),
    ("customize", "guest customisation changed"),
    ("services", "services or their setup changed"),
];

/// Why an image built with the `recorded` parts is stale against the
/// `current` ones, in [`RECIPE_PARTS`] order; empty: it is not. A part
/// missing from `current` (not known now, e.g. no agent to hash) is not
/// compared; one missing from `recorded` differs.
pub fn stale_reasons(
    recorded: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Vec<&'static str> {
    RECIPE_PARTS
        .iter()
        .filter(|(name, _)| {
            current
                .get(*name)
                .is_some_and(|now| recorded.get(*name) != Some(now))
        })
        .map(|(_, reason)| *reason)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Builds `dest_dir/rootfs.ext4` and `dest_dir/work-seed.ext4` from `recipe`
/// (see the module docs). Needs root. Stages reported: "debootstrap",
/// "extract", "customize", "mkfs".
pub fn build_rootfs(
    recipe: &ImageRecipe,
    cache_dir: &Path,
    dest_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<RootfsArtifacts> {
    recipe.validate()?;
    if !cmd::is_root() {
        return Err(ImageError::NotRoot);
    }

    progress("debootstrap");
    let base = base_tarball(recipe, cache_dir)?;

    progress("extract");
    fs::create_dir_all(dest_dir).map_err(|e| ImageError::io("create", dest_dir, e))?;
    crate::fsutil::remove_stale_staging(dest_dir, ".rootfs-");
    let staging = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempdir_in(dest_dir)
        .map_err(|e| ImageError::io("create temp dir in", dest_dir, e))?;
    let tree = staging.path().join("tree");
    fs::create_dir(&tree).map_err(|e| ImageError::io("create", &tree, e))?;
    cmd::run(
        cmd::command("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&base)
            .arg("-C")
            .arg(&tree),
    )?;

    progress("customize");
    guest::apply(&tree, &recipe.changes())?;

    progress("mkfs");
    let used = tree_usage(&tree)?;
    let needed = min_image_bytes(used);
    let size = match recipe.size_bytes {
        Some(requested) if requested < needed => {
            return Err(ImageError::SizeTooSmall { requested, needed });
        }
        Some(requested) => requested,
        None => default_image_bytes(used),
    };
    let rootfs_tmp = staging.path().join("rootfs.ext4");
    mkfs(&rootfs_tmp, size, "banger-root", &tree)?;
    let seed_tmp = staging.path().join("work-seed.ext4");
    mkfs(
        &seed_tmp,
        WORK_SEED_BYTES,
        "banger-work",
        &tree.join("root"),
    )?;
    // mke2fs -d leaves the file system's root 0755; it becomes /root.
    cmd::run(
        cmd::command("debugfs")
            .args(["-w", "-R", "set_inode_field / mode 040700"])
            .arg(&seed_tmp),
    )?;

    let work_seed = dest_dir.join("work-seed.ext4");
    fs::rename(&seed_tmp, &work_seed).map_err(|e| ImageError::io("rename", &seed_tmp, e))?;
    let rootfs = dest_dir.join("rootfs.ext4");
    fs::rename(&rootfs_tmp, &rootfs).map_err(|e| ImageError::io("rename", &rootfs_tmp, e))?;
    drop(staging);
    Ok(RootfsArtifacts {
        rootfs,
        work_seed,
        size_bytes: size,
    })
}

/// The cached (or freshly made) mmdebstrap tarball for the recipe's base.
fn base_tarball(recipe: &ImageRecipe, cache_dir: &Path) -> Result<PathBuf> {
    let sources = sources::host_sources_for(&recipe.suite);
    let packages = recipe.all_packages();
    let mut h = Sha256::new();
    h.update(b"banger base v1\0minbase\0");
    h.update(recipe.suite.as_bytes());
    for p in &packages {
        h.update(b"\0");
        h.update(p.as_bytes());
    }
    h.update(b"\0sources\0");
    h.update(sources.as_deref().unwrap_or("").as_bytes());
    for s in &recipe.setup {
        h.update(b"\0setup\0");
        h.update(s.as_bytes());
    }
    let key = hex(&h.finalize());
    let dir = cache_dir.join("rootfs-base");
    let path = dir.join(format!("{}-{}.tar", recipe.suite, &key[..16]));
    let fresh = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < BASE_MAX_AGE);
    if fresh {
        return Ok(path);
    }

    fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
    crate::fsutil::remove_stale_staging(&dir, ".base-");
    let tmp = tempfile::Builder::new()
        .prefix(".base-")
        .tempdir_in(&dir)
        .map_err(|e| ImageError::io("create temp dir in", &dir, e))?;
    let out = tmp.path().join("base.tar");
    let mut mm = cmd::command("mmdebstrap");
    mm.args(["--variant=minbase", "--mode=root", "--format=tar"])
        .arg(format!("--include={}", packages.join(",")));
    for setup in &recipe.setup {
        mm.arg(format!("--customize-hook={}", setup_hook(setup)));
    }
    mm.arg(&recipe.suite).arg(&out);
    if let Some(text) = &sources {
        // mmdebstrap pastes an existing file given as MIRROR into the
        // image's sources; the .sources name marks it deb822.
        let file = tmp.path().join("host.sources");
        fs::write(&file, text).map_err(|e| ImageError::io("write", &file, e))?;
        mm.arg(&file);
    }
    cmd::run(&mut mm)?;
    fs::rename(&out, &path).map_err(|e| ImageError::io("rename", &out, e))?;
    prune_old_bases(&dir);
    Ok(path)
}

/// Where the set-up inside the image finds the host's CA bundle (copied
/// in for the set-up only, removed after).
const SETUP_CA: &str = "/tmp/banger-host-ca.crt";

/// The host's CA bundle, as its own tools use it: `SSL_CERT_FILE`, else
/// Debian's system bundle. A host whose HTTPS goes through a proxy with
/// its own CA trusts it there; the image's fresh CA store does not.
fn host_ca_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/etc/ssl/certs/ca-certificates.crt")])
        .find(|p| p.is_file())
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The mmdebstrap hook that runs `setup` inside the image (chroot), with
/// the network, once its packages are in; a failure fails the build. It
/// runs as the host's own tools would: the host's CA bundle (for npm,
/// curl, pip) and proxy settings, never left in the image.
fn setup_hook(setup: &str) -> String {
    let mut env = vec![
        "HOME=/root".to_owned(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    ];
    for var in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
        "https_proxy",
        "http_proxy",
        "no_proxy",
    ] {
        if let Some(value) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
            env.push(format!("{var}={value}"));
        }
    }
    let copy_ca = match host_ca_bundle() {
        Some(ca) => {
            for var in ["NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "CURL_CA_BUNDLE"] {
                env.push(format!("{var}={SETUP_CA}"));
            }
            format!(
                "cp -- {} \"$1{SETUP_CA}\" && ",
                sh_quote(&ca.display().to_string())
            )
        }
        None => String::new(),
    };
    let env: Vec<String> = env.iter().map(|e| sh_quote(e)).collect();
    format!(
        "{copy_ca}chroot \"$1\" /usr/bin/env -i {} /bin/sh -ec {}; status=$?; rm -f \"$1{SETUP_CA}\"; exit $status",
        env.join(" "),
        sh_quote(setup)
    )
}

/// Removes base tarballs too old to be reused anyway (other package sets,
/// changed sources). Best effort.
fn prune_old_bases(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let expired = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= BASE_MAX_AGE);
        if expired && path.extension().is_some_and(|e| e == "tar") {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Bytes the tree will take in ext4: data in 4 KiB blocks, one inode each
/// (hard links counted once), directories at least a block.
pub(crate) fn tree_usage(root: &Path) -> Result<u64> {
    let mut total = 0u64;
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        total += 4096 + 256;
        let entries = fs::read_dir(&dir).map_err(|e| ImageError::io("read dir", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("read dir", &dir, e))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(|e| ImageError::io("stat", &path, e))?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += 256;
            if meta.is_file() || (meta.file_type().is_symlink() && meta.len() >= 60) {
                total += meta.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(total)
}

/// The least an image of `used` bytes of files can be: the files, ext4's
/// metadata and journal (about 10% + 64 MiB), rounded to a MiB.
pub(crate) fn min_image_bytes(used: u64) -> u64 {
    (used + used / 10 + 64 * MIB).div_ceil(MIB) * MIB
}

/// The default image size: the minimum plus headroom, at least 1 GiB,
/// rounded up to 64 MiB.
pub(crate) fn default_image_bytes(used: u64) -> u64 {
    let headroom = (used / 2).max(ROOTFS_HEADROOM_BYTES);
    let size = (min_image_bytes(used) + headroom).div_ceil(64 * MIB) * 64 * MIB;
    size.max(MIN_ROOTFS_BYTES)
}

/// `mkfs.ext4 -d DIR` into a new sparse file of `size` bytes. Always the
/// `default` usage type (4 KiB blocks), also for the small work seed,
/// which is grown per VM and should not keep 1 KiB blocks.
fn mkfs(file: &Path, size: u64, label: &str, dir: &Path) -> Result<()> {
    let f = fs::File::create(file).map_err(|e| ImageError::io("create", file, e))?;
    f.set_len(size)
        .map_err(|e| ImageError::io("resize", file, e))?;
    drop(f);
    cmd::run(
        cmd::command("mkfs.ext4")
            .args(["-F", "-q", "-T", "default", "-L", label, "-d"])
            .arg(dir)
            .arg(file),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBanger test@banger";

    fn recipe() -> ImageRecipe {
        ImageRecipe {
            suite: "bookworm".into(),
            packages: vec!["jq".into(), "make".into()],
            ssh_public_key: KEY.into(),
            size_bytes: None,
            agent: None,
            setup: Vec::new(),
            services: Vec::new(),
        }
    }

    #[test]
    fn services_change_a_recipe_only_when_it_has_some() {
        let plain = recipe();
        assert!(!plain.parts().contains_key("services"));
        let mut oc = recipe();
        let preset = crate::services::Preset::Opencode;
        oc.setup = preset.setup();
        oc.services = preset.services();
        assert!(oc.parts().contains_key("services"));
        assert_ne!(plain.fingerprint(), oc.fingerprint());
        let units: Vec<String> = oc.changes().iter().map(|c| c.describe()).collect();
        assert!(
            units
                .iter()
                .any(|u| u.contains("multi-user.target.wants/banger-service-opencode.service")),
            "{units:?}"
        );
    }

    #[test]
    fn fingerprint_is_stable() {
        let a = recipe().fingerprint();
        assert_eq!(a, recipe().fingerprint());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        // Package order, duplicates, base packages named again and
        // surrounding whitespace on the key do not matter.
        let mut r = recipe();
        r.packages = vec!["make".into(), "jq".into(), "make".into(), "curl".into()];
        r.ssh_public_key = format!("  {KEY}\n");
        assert_eq!(r.fingerprint(), a);
    }

    #[test]
    fn fingerprint_is_sensitive() {
        let base = recipe().fingerprint();
        let variants: Vec<ImageRecipe> = vec![
            ImageRecipe {
                suite: "trixie".into(),
                ..recipe()
            },
            ImageRecipe {
                packages: vec!["jq".into()],
                ..recipe()
            },
            ImageRecipe {
                ssh_public_key: KEY.replace("test@", "other@"),
                ..recipe()
            },
            ImageRecipe {
                size_bytes: Some(2 << 30),
                ..recipe()
            },
        ];
        let mut all = BTreeSet::new();
        all.insert(base);
        for v in variants {
            assert!(all.insert(v.fingerprint()), "{v:?} collides");
        }
    }

    #[test]
    fn the_everyday_tools_are_in_every_image() {
        let all = ImageRecipe::new("bookworm", KEY).all_packages();
        for tool in [
            "curl",
            "ca-certificates",
            "git",
            "python3",
            "iputils-ping",
            "procps",
            "less",
        ] {
            assert!(all.iter().any(|p| p == tool), "{tool} missing from {all:?}");
        }
    }

    #[test]
    fn stale_reasons_name_the_parts_that_changed() {
        let base = recipe().parts();
        // Every part but `services`, which only recipes with some have.
        assert_eq!(base.keys().map(String::as_str).collect::<Vec<_>>(), {
            let mut names: Vec<&str> = RECIPE_PARTS
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| *n != "services")
                .collect();
            names.sort_unstable();
            names
        });
        assert!(stale_reasons(&base, &base).is_empty());
        let more = ImageRecipe {
            packages: vec!["jq".into()],
            ..recipe()
        };
        assert_eq!(stale_reasons(&base, &more.parts()), ["package set changed"]);
        let agent = crate::agent::AgentBinary {
            path: "/x/banger-agent".into(),
            sha256: "ab".repeat(32),
        };
        let with_agent = ImageRecipe {
            agent: Some(agent.clone()),
            ..recipe()
        };
        assert_eq!(stale_reasons(&base, &with_agent.parts()), ["new agent"]);
        let newer_agent = ImageRecipe {
            agent: Some(crate::agent::AgentBinary {
                sha256: "cd".repeat(32),
                ..agent
            }),
            ..recipe()
        };
        assert_eq!(
            stale_reasons(&with_agent.parts(), &newer_agent.parts()),
            ["new agent"]
        );
        // A changed key changes only the key part (its file included).
        let key = ImageRecipe {
            ssh_public_key: KEY.replace("test@", "other@"),
            ..recipe()
        };
        assert_eq!(stale_reasons(&base, &key.parts()), ["new SSH key"]);
        // What is not known now is not compared; what was not recorded differs.
        let mut unknown = more.parts();
        unknown.remove("packages");
        assert!(stale_reasons(&base, &unknown).is_empty());
        let mut old = base.clone();
        old.remove("nic");
        assert_eq!(
            stale_reasons(&old, &base),
            ["new guest setup (NIC, hostname, work disk)"]
        );
    }

    #[test]
    fn validation() {
        assert!(recipe().validate().is_ok());
        let bad = |r: ImageRecipe| r.validate().unwrap_err().to_string();
        assert!(
            bad(ImageRecipe {
                suite: "Bookworm;rm".into(),
                ..recipe()
            })
            .contains("bad suite")
        );
        assert!(
            bad(ImageRecipe {
                packages: vec!["a,b".into()],
                ..recipe()
            })
            .contains("bad package")
        );
        assert!(
            bad(ImageRecipe {
                packages: vec!["--foo".into()],
                ..recipe()
            })
            .contains("bad package")
        );
        assert!(
            bad(ImageRecipe {
                ssh_public_key: " \n".into(),
                ..recipe()
            })
            .contains("no ssh public key")
        );
        assert!(
            bad(ImageRecipe {
                ssh_public_key: "garbage".into(),
                ..recipe()
            })
            .contains("authorized_keys")
        );
        assert!(
            ImageRecipe {
                packages: vec!["g++".into(), "libc6.1".into()],
                ..recipe()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn all_packages_include_base() {
        let all = recipe().all_packages();
        for p in BASE_PACKAGES.iter().chain(["jq", "make"].iter()) {
            assert!(all.iter().any(|a| a == p), "{p}");
        }
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
    }

    #[test]
    fn sizes() {
        // 258 MiB used (what the measured base image needed): 1 GiB.
        assert_eq!(default_image_bytes(258 * MIB), 1 << 30);
        // Large trees get at least half again as headroom.
        let big = 3u64 << 30;
        let d = default_image_bytes(big);
        assert!(d >= big + big / 2 && d % (64 * MIB) == 0, "{d}");
        assert!(min_image_bytes(258 * MIB) < default_image_bytes(258 * MIB));
        assert_eq!(min_image_bytes(0), 64 * MIB);
    }

    #[test]
    fn tree_usage_counts_blocks_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![0u8; 5000]).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("l")).unwrap();
        let used = tree_usage(dir.path()).unwrap();
        // 2 dirs (block + inode), file (2 blocks + inode), short symlink (inode).
        assert_eq!(used, 2 * (4096 + 256) + (8192 + 256) + 256);
    }

    #[test]
    fn not_root_or_bad_recipe_fails_before_doing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let bad = ImageRecipe {
            ssh_public_key: String::new(),
            ..recipe()
        };
        let err = build_rootfs(&bad, dir.path(), &dir.path().join("dest"), &|_| {}).unwrap_err();
        assert!(matches!(err, ImageError::InvalidRecipe { .. }), "{err}");
        assert!(!dir.path().join("dest").exists());
    }
}
