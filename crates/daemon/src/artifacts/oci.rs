//! OCI images (docs/images.md): `image.pull` fetches an image's blobs into
//! the blob cache (`CACHE/oci/`, `banger_oci`) and flattens its layers
//! into an ext4 root disk without root (`banger_image::build_root_disk`);
//! `image.cache.prune` empties that cache; `image.promote` records a
//! stopped VM's disks as an image (the VM side is `vms/promote.rs`).
//!
//! A pulled image's files are `DATA/images/NAME/{rootfs.ext4,
//! work-seed.ext4}`, as a built image's. banger adds its own files under
//! `/.banger/` (see [`BANGER_DIR`]): the image's init and SSH set-up are
//! the image's business, and the boot path of images without init
//! decides what to run (docs/images.md, "What banger adds").
//!
//! Pulls and prunes keep apart: a pull holds the cache for reading from
//! its download to the end of its flatten (the layer files must stay
//! until they are applied), a prune holds it for writing.

use std::path::{Path, PathBuf};

use banger_image::{
    DiskSize, ExtraFile, ExtraSource, LayerCompression, RootDiskOptions, RootDiskStage,
};
use banger_oci::{
    AuthSources, BlobCache, Compression, Credentials, ImageReference, Platform, PruneReport,
    PullOptions, PulledImage,
};
use banger_proto::vm::{ImageConfig, ImageOrigin, ImagePort};
use banger_store::ImageRecord;

use super::{ArtifactError, Artifacts, new_id, remove_dir};
use crate::disks::{self, DiskError};
use crate::op::{Cancelled, OpCtx};
use crate::ops::now_ms;

/// Where banger's own files go in a pulled image's root disk.
pub const BANGER_DIR: &str = "/.banger";

/// The work seed of a pulled image: an empty ext4 volume, grown per VM.
const WORK_SEED_BYTES: u64 = 64 << 20;

/// What to pull, checked by the handler.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub reference: ImageReference,
    /// The image's name (validated).
    pub name: String,
    pub platform: Option<Platform>,
    pub insecure: bool,
    /// Given with the request; `None`: Docker's config.json, else anonymous.
    pub credentials: Option<Credentials>,
    /// An image of this name pulled from this reference is the answer.
    pub if_missing: bool,
}

/// The image name a reference gives when none is asked for: the last
/// part of its repository and its tag (or the start of its digest), in
/// the characters image names allow (`python:3.12-slim` →
/// `python-3-12-slim`).
pub fn derived_name(reference: &ImageReference) -> String {
    let repo = reference.repository();
    let last = repo.rsplit('/').next().unwrap_or(repo);
    let suffix = match (reference.tag(), reference.digest()) {
        (Some(tag), _) => tag.to_owned(),
        (None, Some(digest)) => digest.hex().chars().take(12).collect(),
        (None, None) => "latest".to_owned(),
    };
    let mut name = String::new();
    for c in format!("{last}-{suffix}").chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    name.truncate(63);
    let name = name.trim_end_matches('-').to_owned();
    if name.is_empty() {
        "image".to_owned()
    } else {
        name
    }
}

/// The wire form of the config a pull found.
fn config_view(c: &banger_oci::ImageConfig) -> ImageConfig {
    ImageConfig {
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        env: c.env.clone(),
        working_dir: c.working_dir.clone(),
        user: c.user.clone(),
        exposed_ports: c
            .exposed_ports
            .iter()
            .map(|p| ImagePort {
                port: p.port,
                protocol: p.protocol.clone(),
            })
            .collect(),
    }
}

fn layer_compression(c: Compression) -> LayerCompression {
    match c {
        Compression::None => LayerCompression::None,
        Compression::Gzip => LayerCompression::Gzip,
        Compression::Zstd => LayerCompression::Zstd,
    }
}

/// The image config as the agent reads it (docs/guest-contract.md,
/// "Images without an init"): the OCI `config` object's own keys.
fn oci_config_json(config: &ImageConfig) -> serde_json::Value {
    let ports: serde_json::Map<String, serde_json::Value> = config
        .exposed_ports
        .iter()
        .map(|p| (format!("{}/{}", p.port, p.protocol), serde_json::json!({})))
        .collect();
    serde_json::json!({
        "Entrypoint": config.entrypoint,
        "Cmd": config.cmd,
        "Env": config.env,
        "WorkingDir": config.working_dir,
        "User": config.user,
        "ExposedPorts": ports,
    })
}

/// The files banger adds to a pulled image: its agent as the image's init
/// (`/.banger/init`), the public key that may log in as root, and the
/// image config the agent takes exec defaults from.
fn banger_files(agent: &Path, ssh_public_key: &str, config: &ImageConfig) -> Vec<ExtraFile> {
    let file = |name: &str, source: ExtraSource, mode: u32| ExtraFile {
        guest_path: format!("{BANGER_DIR}/{name}"),
        source,
        mode,
        uid: 0,
        gid: 0,
    };
    // A JSON value: serialising cannot fail.
    let config = serde_json::to_vec_pretty(&oci_config_json(config)).unwrap_or_default();
    vec![
        file("init", ExtraSource::Path(agent.to_owned()), 0o755),
        file(
            "authorized_keys",
            ExtraSource::Bytes(format!("{}\n", ssh_public_key.trim()).into_bytes()),
            0o600,
        ),
        file("image-config.json", ExtraSource::Bytes(config), 0o644),
    ]
}

/// A short stage name for where a root disk build is.
fn flatten_stage(stage: &RootDiskStage<'_>) -> Option<String> {
    Some(match stage {
        RootDiskStage::Layer { index, count, .. } => format!("apply layer {}/{count}", index + 1),
        RootDiskStage::LayerDone { .. } => return None,
        RootDiskStage::ExtraFiles => "add banger's files".to_owned(),
        RootDiskStage::Mkfs { .. } => "mkfs".to_owned(),
        RootDiskStage::Metadata { commands } => format!("owners, modes, devices ({commands})"),
    })
}

impl Artifacts {
    /// The blob cache of pulls.
    pub fn blob_cache(&self) -> BlobCache {
        BlobCache::new(self.cache_dir.join("oci"))
    }

    /// A directory for a new image's files: `DATA/images/NAME`, or
    /// `NAME.ID` when that is taken (not a valid name: no other image's).
    fn new_image_dir(&self, name: &str, id: &str) -> PathBuf {
        let dest = self.image_dir(name);
        if dest.exists() {
            self.data_dir.join("images").join(format!("{name}.{id}"))
        } else {
            dest
        }
    }

    async fn refuse_existing(&self, name: &str) -> Result<(), ArtifactError> {
        if self.stored_image(name).await?.is_some() {
            return Err(ArtifactError::ImageExists {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// `image.pull`: stages `resolve`, `download` (a part per layer, with
    /// bytes), `flatten` (a part per step), `record`. Anything that fails
    /// leaves no row and no files (blobs already verified stay cached).
    pub async fn pull_image(
        &self,
        req: PullRequest,
        ctx: &OpCtx,
    ) -> Result<ImageRecord, ArtifactError> {
        let lock = self.locks.get(format!("image:{}", req.name));
        let _guard = lock.lock().await;
        if let Some(existing) = self.stored_image(&req.name).await? {
            let same = matches!(&existing.origin,
                ImageOrigin::Pulled { reference, .. } if *reference == req.reference.to_string());
            if req.if_missing && same {
                ctx.stage("already pulled");
                return Ok(existing);
            }
            return Err(ArtifactError::ImageExists { name: req.name });
        }
        let agent = self.agent_binary().await?;
        let ssh = self.ssh.clone();
        let key = tokio::task::spawn_blocking(move || ssh.public_key())
            .await
            .map_err(|source| ArtifactError::Task {
                what: "read ssh public key".into(),
                source,
            })??;

        ctx.stage("resolve");
        let registry = req.reference.registry().to_owned();
        let explicit = req.credentials.clone();
        let reg = registry.clone();
        let credentials = tokio::task::spawn_blocking(move || {
            banger_oci::resolve_credentials(&reg, explicit, &AuthSources::from_env())
        })
        .await
        .map_err(|source| ArtifactError::Task {
            what: "resolve registry credentials".into(),
            source,
        })?
        .map_err(|source| ArtifactError::Credentials { registry, source })?;
        ctx.check_cancelled()?;

        // Held to the end of the flatten: no prune removes the layers.
        let _cache = self.cache_use.read().await;
        let options = PullOptions {
            credentials,
            platform: req.platform.clone(),
            insecure: req.insecure,
        };
        let pulled = self.download(&req.reference, &options, ctx).await?;
        tracing::info!(
            reference = %req.reference,
            digest = %pulled.manifest_digest,
            downloaded = pulled.stats.blobs_downloaded,
            cached = pulled.stats.blobs_cached,
            bytes = pulled.stats.bytes_downloaded,
            "image pulled into the blob cache"
        );
        ctx.check_cancelled()?;

        let id = new_id("i-");
        let dest = self.new_image_dir(&req.name, &id);
        let config = config_view(&pulled.config);
        let files = banger_files(&agent.path, &key, &config);
        let flattened = self.flatten(&pulled, &dest, files, ctx).await;
        let (rootfs, work_seed, size_bytes) = match flattened {
            Ok(f) => f,
            Err(e) => {
                remove_dir(dest).await;
                return Err(e);
            }
        };
        if let Err(c) = ctx.check_cancelled() {
            remove_dir(dest).await;
            return Err(c.into());
        }

        ctx.stage("record");
        let record = ImageRecord {
            id,
            name: req.name.clone(),
            source: req.reference.to_string(),
            rootfs_path: rootfs,
            work_seed_path: Some(work_seed),
            fingerprint: None,
            size_bytes,
            managed: false,
            created_at_ms: now_ms(),
            has_agent: true,
            recipe: None,
            replaced_by: None,
            origin: ImageOrigin::Pulled {
                reference: req.reference.to_string(),
                digest: pulled.manifest_digest.to_string(),
            },
            config: Some(config),
        };
        let r = record.clone();
        if let Err(e) = self.db.call(move |s| s.insert_image(&r)).await {
            remove_dir(dest).await;
            return Err(e.into());
        }
        tracing::info!(image = %req.name, reference = %req.reference, "image pulled");
        Ok(record)
    }

    /// The download stage: a part per layer, with the pull's bytes.
    async fn download(
        &self,
        reference: &ImageReference,
        options: &PullOptions,
        ctx: &OpCtx,
    ) -> Result<PulledImage, ArtifactError> {
        let _group = ctx.stage_group("download");
        let cache = self.blob_cache();
        let mut shown = None;
        let mut progress = |p: &banger_oci::Progress| {
            if p.layers_done < p.layers_total && shown != Some(p.layers_done) {
                shown = Some(p.layers_done);
                ctx.stage(&format!("layer {}/{}", p.layers_done + 1, p.layers_total));
            }
            ctx.progress(p.bytes_done, Some(p.bytes_total));
        };
        tokio::select! {
            pulled = banger_oci::pull(reference, &cache, options, &mut progress) => Ok(pulled?),
            _ = ctx.cancel_token().cancelled() => Err(Cancelled.into()),
        }
    }

    /// The flatten stage: the root disk from the layers plus `files`, and
    /// an empty work seed, in `dest` (created); `(rootfs, seed, size)`.
    async fn flatten(
        &self,
        pulled: &PulledImage,
        dest: &Path,
        files: Vec<ExtraFile>,
        ctx: &OpCtx,
    ) -> Result<(PathBuf, PathBuf, u64), ArtifactError> {
        let _group = ctx.stage_group("flatten");
        let layers: Vec<banger_image::Layer> = pulled
            .layers
            .iter()
            .map(|l| banger_image::Layer {
                path: l.path.clone(),
                compression: layer_compression(l.compression),
            })
            .collect();
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (dest, ctx2) = (dest.to_owned(), ctx.clone());
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let flatten_err = |source| ArtifactError::Flatten {
                name: name.clone(),
                source,
            };
            // build_root_disk creates `dest` (its staging dir) first.
            let rootfs = dest.join("rootfs.ext4");
            let opts = RootDiskOptions {
                extra_files: files,
                ..RootDiskOptions::default()
            };
            let mut progress = |s: RootDiskStage<'_>| {
                if let Some(stage) = flatten_stage(&s) {
                    ctx2.stage(&stage);
                }
            };
            let report =
                banger_image::build_root_disk(&layers, &dest, &rootfs, &opts, &mut progress)
                    .map_err(flatten_err)?;
            ctx2.stage("work seed");
            let seed = dest.join("work-seed.ext4");
            let seed_opts = RootDiskOptions {
                size: DiskSize::Auto {
                    min_bytes: WORK_SEED_BYTES,
                    headroom_bytes: 0,
                },
                label: "banger-work".into(),
                extra_files: Vec::new(),
            };
            banger_image::build_root_disk(&[], &dest, &seed, &seed_opts, &mut |_| {})
                .map_err(flatten_err)?;
            Ok((rootfs, seed, report.size_bytes))
        })
        .await
        .map_err(|source| ArtifactError::Task {
            what: "flatten".into(),
            source,
        })?
    }

    /// `image.cache.prune`: waits for pulls in flight, then empties the
    /// blob cache (or, `dry_run`, counts what that would free).
    pub async fn prune_cache(&self, dry_run: bool) -> Result<PruneReport, ArtifactError> {
        let _alone = self.cache_use.write().await;
        let cache = self.blob_cache();
        tokio::task::spawn_blocking(move || cache.prune(dry_run))
            .await
            .map_err(|source| ArtifactError::Task {
                what: "prune the blob cache".into(),
                source,
            })?
            .map_err(ArtifactError::CachePrune)
    }

    /// `image.promote`'s files and row: `root` (qcow2 or raw) becomes the
    /// new image's root disk and `seed` (qcow2 or raw) its work seed, in a
    /// directory of their own. The caller holds the VM's lock (the disks
    /// do not change meanwhile). Failing, it leaves no row and no files.
    pub async fn promote_image(
        &self,
        name: &str,
        from: &PromoteFrom,
        ctx: &OpCtx,
    ) -> Result<ImageRecord, ArtifactError> {
        let lock = self.locks.get(format!("image:{name}"));
        let _guard = lock.lock().await;
        self.refuse_existing(name).await?;
        let id = new_id("i-");
        let dest = self.new_image_dir(name, &id);
        let (d, f, c) = (dest.clone(), from.clone(), ctx.clone());
        let copied = tokio::task::spawn_blocking(move || -> Result<u64, DiskError> {
            std::fs::create_dir_all(&d).map_err(|source| DiskError::Io {
                path: d.clone(),
                source,
            })?;
            c.stage("copy root disk");
            disks::flatten_disk(&f.root, f.root_qcow2, &d.join("rootfs.ext4"))?;
            c.stage("copy work seed");
            disks::flatten_disk(&f.seed, f.seed_qcow2, &d.join("work-seed.ext4"))?;
            let rootfs = d.join("rootfs.ext4");
            std::fs::metadata(&rootfs)
                .map(|m| m.len())
                .map_err(|source| DiskError::Io {
                    path: rootfs,
                    source,
                })
        })
        .await
        .map_err(|source| ArtifactError::Task {
            what: "promote".into(),
            source,
        })?;
        let size_bytes = match copied {
            Ok(s) => s,
            Err(source) => {
                remove_dir(dest).await;
                return Err(ArtifactError::Promote {
                    name: name.to_owned(),
                    source,
                });
            }
        };
        ctx.stage("record");
        let record = ImageRecord {
            id,
            name: name.to_owned(),
            source: format!("vm:{}", from.vm),
            rootfs_path: dest.join("rootfs.ext4"),
            work_seed_path: Some(dest.join("work-seed.ext4")),
            fingerprint: None,
            size_bytes,
            managed: false,
            created_at_ms: now_ms(),
            has_agent: from.has_agent,
            recipe: None,
            replaced_by: None,
            origin: ImageOrigin::Promoted {
                vm: from.vm.clone(),
            },
            config: from.config.clone(),
        };
        let r = record.clone();
        if let Err(e) = self.db.call(move |s| s.insert_image(&r)).await {
            remove_dir(dest).await;
            return Err(e.into());
        }
        tracing::info!(image = name, vm = %from.vm, "vm promoted to an image");
        Ok(record)
    }
}

/// What a promote copies, found by the VM side under the VM's lock.
#[derive(Debug, Clone)]
pub struct PromoteFrom {
    pub vm: String,
    pub root: PathBuf,
    pub root_qcow2: bool,
    pub seed: PathBuf,
    pub seed_qcow2: bool,
    /// The VM's image's: the disk carries what that image carried.
    pub has_agent: bool,
    pub config: Option<ImageConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derived_from_references() {
        let name = |r: &str| derived_name(&r.parse().unwrap());
        assert_eq!(name("python:3.12-slim"), "python-3-12-slim");
        assert_eq!(name("busybox"), "busybox-latest");
        assert_eq!(name("127.0.0.1:5000/team/tool_x:V1.0"), "tool-x-v1-0");
        let digest = format!("alpine@sha256:{}", "ab".repeat(32));
        assert_eq!(name(&digest), "alpine-abababababab");
        let long = format!("{}:{}", "a".repeat(60), "b".repeat(60));
        let n = name(&long);
        assert!(n.len() <= 63 && !n.ends_with('-'), "{n}");
        for r in ["python:3.12-slim", "127.0.0.1:5000/x/y:z", &long, &digest] {
            crate::validate::name("image", &name(r)).unwrap();
        }
    }
}
