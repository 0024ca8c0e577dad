//! Kernels and images: pulled or built on demand through `banger-image`,
//! recorded in the store, files under the data dir.
//!
//! | what | files |
//! |---|---|
//! | kernel NAME | `DATA/kernels/NAME/{vmlinuz, initrd.img, modules/}` (pulled, or imported: `import.rs`) |
//! | image NAME | `DATA/images/NAME/{rootfs.ext4, work-seed.ext4}` (a rebuild: `DATA/images/NAME.ID/`) |
//!
//! One build or pull per name at a time: concurrent creates that both need
//! the default image wait for the one build.
//!
//! A managed image records what it was built from (extra packages, size,
//! a digest per part of the recipe: `banger_image::RECIPE_PARTS`). When
//! banger would now build it differently (new package set, agent, guest
//! setup...) it is stale, and the next create from it rebuilds it in the
//! foreground, with a stage naming why. The rebuild goes into a new
//! directory and a new row; the old row is renamed `NAME@ID` and kept,
//! files and all, while VMs or snapshots use it (their qcow2 root disks
//! name its `rootfs.ext4` as their backing file), then pruned
//! ([`Artifacts::prune_replaced`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use banger_image::kernel::catalog_entry;
use banger_image::services::{Preset, Service};
use banger_image::{ImageError, ImageRecipe, catalog};
use banger_proto::vm::{ImageView, KernelOrigin, KernelView};
use banger_store::{ImageRecord, KernelRecord, StoreError};
use rand::Rng;

use crate::DaemonConfig;
use crate::db::Db;
use crate::error::chain;
use crate::op::{Cancelled, OpCtx};
use crate::ops::now_ms;
use crate::ssh::{SshError, SshPaths};

mod import;
mod oci;
pub use import::{ImportError, ImportFiles};
pub use oci::{PromoteFrom, PullRequest, derived_name};

/// Why a kernel or image could not be found, pulled, built or deleted.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("kernel {name:?} not found (the catalog has: {catalog})")]
    UnknownKernel { name: String, catalog: String },
    #[error("image {name:?} is broken: its {what} file {} is missing", path.display())]
    Broken {
        name: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("image {name:?} already exists; delete it first")]
    ImageExists { name: String },
    #[error("kernel {name:?} already exists; delete it first or import under another name")]
    KernelExists { name: String },
    #[error(
        "kernel {name:?} is a catalog entry's name (banger kernel pull {name}); import under another name"
    )]
    CatalogName { name: String },
    /// An imported kernel's files went missing: catalog pulls never
    /// replace an imported kernel.
    #[error(
        "kernel {name:?} was imported from {from}; its file {} is missing: delete it and import it again", path.display()
    )]
    ImportedMissing {
        name: String,
        from: String,
        path: PathBuf,
    },
    #[error(
        "kernel {name:?} was imported, not pulled: there is nothing to pull (the catalog has: {catalog})"
    )]
    NotPullable { name: String, catalog: String },
    #[error("import kernel {name}")]
    Import {
        name: String,
        #[source]
        source: ImportError,
    },
    #[error("invalid package name {package:?}")]
    InvalidPackage { package: String },
    #[error("bad service: {reason}")]
    InvalidService { reason: String },
    /// No static guest agent to bake in: an image without one would boot
    /// VMs on which exec, cp, stats and ports never work.
    #[error(
        "no static banger-agent to bake into the image ({tried}); build one with scripts/build-agent.sh, or set BANGER_AGENT_BIN to a static banger-agent"
    )]
    NoAgent { tried: String },
    #[error("pull kernel {name}")]
    Pull {
        name: String,
        #[source]
        source: ImageError,
    },
    #[error("build image {name}")]
    Build {
        name: String,
        #[source]
        source: ImageError,
    },
    /// The build ran out of space; what it had made was removed.
    /// `detail` is the line that said so (`tar` says it for every file).
    #[error(
        "build image {name}: not enough free space in {} ({free} left); nothing was kept. Free some space and build again ({detail})", dir.display()
    )]
    NoSpace {
        name: String,
        dir: PathBuf,
        free: String,
        detail: String,
    },
    /// A blocking task did not complete (the runtime is shutting down).
    #[error("{what}: task failed")]
    Task {
        what: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// An OCI pull failed (its message names the reference or registry).
    #[error(transparent)]
    Oci(#[from] banger_oci::PullError),
    #[error("find credentials for registry {registry}")]
    Credentials {
        registry: String,
        #[source]
        source: banger_oci::AuthError,
    },
    #[error("flatten image {name}")]
    Flatten {
        name: String,
        #[source]
        source: banger_image::RootDiskError,
    },
    #[error("prune the blob cache")]
    CachePrune(#[source] banger_oci::CacheError),
    #[error("promote to image {name}")]
    Promote {
        name: String,
        #[source]
        source: crate::disks::DiskError,
    },
    /// banger's SSH key, baked into managed images.
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// What a managed image was built from, as recorded in its row (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct BuiltFrom {
    /// The recipe's extra packages.
    packages: Vec<String>,
    size_bytes: Option<u64>,
    /// A digest per part of the recipe (`ImageRecipe::parts`).
    parts: BTreeMap<String, String>,
    /// The preset it was built with (`image build --preset`): its
    /// packages, setup and services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preset: Option<Preset>,
    /// Services declared with `image build --service`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    services: Vec<Service>,
}

impl BuiltFrom {
    /// What to build again (a rebuild of a stale image, or the recipe
    /// to compare with).
    fn spec(&self) -> BuildSpec {
        BuildSpec {
            packages: self.packages.clone(),
            size_bytes: self.size_bytes,
            preset: self.preset,
            services: self.services.clone(),
        }
    }
}

/// What `image build` asks for: extra packages, a size, a preset and
/// services of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildSpec {
    pub packages: Vec<String>,
    pub size_bytes: Option<u64>,
    pub preset: Option<Preset>,
    pub services: Vec<Service>,
}

impl BuildSpec {
    /// Every service: the preset's, then the declared ones.
    fn all_services(&self) -> Vec<Service> {
        let mut all = self.preset.map(Preset::services).unwrap_or_default();
        all.extend(self.services.iter().cloned());
        all
    }
}

/// Checks services to declare: each bakes into a unit (a name, a port,
/// a working directory, one command line), names and ports used once.
pub fn validate_services(services: &[Service]) -> Result<(), ArtifactError> {
    for (i, s) in services.iter().enumerate() {
        banger_image::services::validate(s)
            .map_err(|reason| ArtifactError::InvalidService { reason })?;
        if services[..i]
            .iter()
            .any(|o| o.name == s.name || o.port == s.port)
        {
            return Err(ArtifactError::InvalidService {
                reason: format!("service {} or port {} given twice", s.name, s.port),
            });
        }
    }
    Ok(())
}

/// The services an image declares (a managed image built with a preset
/// or `--service`); none for others.
pub fn image_services(i: &ImageRecord) -> Vec<Service> {
    i.recipe
        .as_deref()
        .and_then(|r| serde_json::from_str::<BuiltFrom>(r).ok())
        .map(|b| b.spec().all_services())
        .unwrap_or_default()
}

/// Why a legacy default image (built before images recorded their
/// recipe) is stale: every such image lacks the everyday tools that
/// `banger_image::rootfs::BASE_PACKAGES` added with the recipe record.
const LEGACY_REASON: &str = "package set changed";

/// Locks that serialise work on one kernel or image name.
#[derive(Debug, Default)]
pub struct ArtifactLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl ArtifactLocks {
    fn get(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(key).or_default())
    }
}

/// The kernels and images service.
#[derive(Debug)]
pub struct Artifacts {
    db: Db,
    data_dir: PathBuf,
    cache_dir: PathBuf,
    default_image: String,
    default_kernel: String,
    /// Its public key goes into managed images.
    ssh: SshPaths,
    /// `BANGER_AGENT_BIN`; `None`: looked for next to the daemon.
    agent_bin: Option<PathBuf>,
    locks: ArtifactLocks,
    /// Pulls hold it shared (download to flatten), a cache prune alone.
    cache_use: tokio::sync::RwLock<()>,
}

fn new_id(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}{:010x}", n & 0xff_ffff_ffff)
}

/// `Ok(None)` for a missing record, so callers can pull or build it.
fn optional<T>(found: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match found {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks the extra packages of an image build: Debian package names
/// (with an optional `=version` or `:arch`), nothing a shell or apt could
/// read as an option.
pub fn validate_packages(packages: &[String]) -> Result<(), ArtifactError> {
    for pkg in packages {
        let ok = pkg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.:=~".contains(&b))
            && pkg
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(ArtifactError::InvalidPackage {
                package: pkg.clone(),
            });
        }
    }
    Ok(())
}

/// Runs blocking `banger-image` work in the stage group `title`,
/// reporting the stages it names on `ctx` as its parts, as they happen.
async fn with_stages<T, F>(
    ctx: &OpCtx,
    title: &str,
    work: F,
) -> Result<Result<T, ImageError>, ArtifactError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Fn(&str)) -> Result<T, ImageError> + Send + 'static,
{
    let _group = ctx.stage_group(title);
    let ctx = ctx.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        work(&|s: &str| ctx.stage(s))
    })
    .await
    .map_err(|source| ArtifactError::Task {
        what: title.to_owned(),
        source,
    })
}

impl Artifacts {
    pub fn new(db: Db, config: &DaemonConfig, ssh: SshPaths) -> Self {
        Self {
            db,
            data_dir: config.layout.data_dir.clone(),
            cache_dir: config.layout.cache_dir.clone(),
            default_image: config.defaults.image.clone(),
            default_kernel: config.defaults.kernel.clone(),
            ssh,
            agent_bin: config.agent_bin.clone(),
            locks: ArtifactLocks::default(),
            cache_use: tokio::sync::RwLock::new(()),
        }
    }

    pub fn default_image(&self) -> &str {
        &self.default_image
    }

    pub fn default_kernel(&self) -> &str {
        &self.default_kernel
    }

    fn kernel_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("kernels").join(name)
    }

    fn image_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("images").join(name)
    }

    async fn stored_kernel(&self, name: &str) -> Result<Option<KernelRecord>, StoreError> {
        let name = name.to_owned();
        self.db.call(move |s| optional(s.kernel(&name))).await
    }

    async fn stored_image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let name = name.to_owned();
        self.db.call(move |s| optional(s.image(&name))).await
    }

    /// Ok when `name` is pulled or can be pulled from the catalog.
    pub async fn check_kernel_known(&self, name: &str) -> Result<(), ArtifactError> {
        if self.stored_kernel(name).await?.is_some() || catalog_entry(name).is_some() {
            return Ok(());
        }
        let known: Vec<&str> = catalog().iter().map(|e| e.name).collect();
        Err(ArtifactError::UnknownKernel {
            name: name.to_owned(),
            catalog: known.join(", "),
        })
    }

    /// Ok when `name` is a catalog entry (`kernel pull`); an imported
    /// kernel has nothing to pull.
    pub async fn check_kernel_pullable(&self, name: &str) -> Result<(), ArtifactError> {
        if catalog_entry(name).is_some() {
            return Ok(());
        }
        let known: Vec<&str> = catalog().iter().map(|e| e.name).collect();
        match self.stored_kernel(name).await? {
            Some(_) => Err(ArtifactError::NotPullable {
                name: name.to_owned(),
                catalog: known.join(", "),
            }),
            None => Err(ArtifactError::UnknownKernel {
                name: name.to_owned(),
                catalog: known.join(", "),
            }),
        }
    }

    /// The kernel `name`, pulled first if it is a catalog entry not pulled
    /// yet (or whose files went missing).
    pub async fn ensure_kernel(
        &self,
        name: &str,
        ctx: &OpCtx,
    ) -> Result<KernelRecord, ArtifactError> {
        let lock = self.locks.get(format!("kernel:{name}"));
        let _guard = lock.lock().await;
        let existing = self.stored_kernel(name).await?;
        if let Some(k) = &existing {
            let missing = std::iter::once(&k.kernel_path)
                .chain(&k.initrd_path)
                .find(|p| !p.exists());
            let Some(missing) = missing else {
                return Ok(k.clone());
            };
            // Never pulled over: the catalog does not have what was imported.
            if let KernelOrigin::Imported { path } = &k.origin {
                return Err(ArtifactError::ImportedMissing {
                    name: name.to_owned(),
                    from: path.clone(),
                    path: missing.clone(),
                });
            }
            tracing::warn!(kernel = name, "kernel files are missing; pulling again");
        }
        let entry = catalog_entry(name).ok_or_else(|| ArtifactError::NotFound {
            kind: "kernel",
            name: name.to_owned(),
        })?;
        ctx.check_cancelled()?;
        let dest = self.kernel_dir(name);
        let cache = self.cache_dir.clone();
        let package = entry.package.to_owned();
        let for_bytes = ctx.clone();
        let pulled = with_stages(ctx, &format!("pull kernel {name}"), move |progress| {
            let bytes = |done, total| for_bytes.progress(done, total);
            banger_image::pull_debian_kernel(&package, &cache, &dest, progress, &bytes)
        })
        .await?
        .map_err(|source| ArtifactError::Pull {
            name: name.to_owned(),
            source,
        })?;
        if let Some(k) = existing {
            return Ok(k); // same paths, files now back
        }
        let record = KernelRecord {
            id: new_id("k-"),
            name: name.to_owned(),
            origin: KernelOrigin::Catalog {
                package: entry.package.to_owned(),
            },
            kernel_path: pulled.kernel,
            initrd_path: Some(pulled.initrd),
            modules_dir: Some(pulled.modules_dir),
            version: Some(pulled.version),
            sha256: None,
            created_at_ms: now_ms(),
        };
        let r = record.clone();
        self.db.call(move |s| s.insert_kernel(&r)).await?;
        tracing::info!(kernel = name, "kernel pulled");
        Ok(record)
    }

    /// The recipe of a managed image. Without a static agent it is an
    /// error when `need_agent`, else a recipe without one (only good to
    /// compare with, never to build).
    async fn recipe(
        &self,
        spec: &BuildSpec,
        need_agent: bool,
    ) -> Result<ImageRecipe, ArtifactError> {
        let agent = match self.agent_binary().await {
            Ok(a) => Some(a),
            Err(e) if need_agent => return Err(e),
            Err(_) => None,
        };
        let ssh = self.ssh.clone();
        let key = tokio::task::spawn_blocking(move || ssh.public_key())
            .await
            .map_err(|source| ArtifactError::Task {
                what: "read ssh public key".into(),
                source,
            })??;
        let mut packages = spec.packages.clone();
        packages.extend(spec.preset.map(Preset::packages).unwrap_or_default());
        Ok(ImageRecipe {
            suite: "bookworm".into(),
            packages,
            ssh_public_key: key,
            size_bytes: spec.size_bytes,
            agent,
            setup: spec.preset.map(Preset::setup).unwrap_or_default(),
            services: spec.all_services(),
        })
    }

    /// The static guest agent to bake into images (see [`find_agent`]).
    pub async fn agent_binary(&self) -> Result<banger_image::AgentBinary, ArtifactError> {
        let configured = self.agent_bin.clone();
        tokio::task::spawn_blocking(move || {
            let exe_dir = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(PathBuf::from));
            find_agent(configured, exe_dir)
        })
        .await
        .map_err(|source| ArtifactError::Task {
            what: "find banger-agent".into(),
            source,
        })?
    }

    /// The image `name`; the default image is built on first use.
    pub async fn ensure_image(
        &self,
        name: &str,
        ctx: &OpCtx,
    ) -> Result<ImageRecord, ArtifactError> {
        let lock = self.locks.get(format!("image:{name}"));
        let _guard = lock.lock().await;
        if let Some(i) = self.stored_image(name).await? {
            for (what, path) in [
                ("root disk", Some(&i.rootfs_path)),
                ("work seed", i.work_seed_path.as_ref()),
            ] {
                if let Some(path) = path {
                    if !path.exists() {
                        return Err(ArtifactError::Broken {
                            name: name.to_owned(),
                            what,
                            path: path.clone(),
                        });
                    }
                }
            }
            return match self.staleness(&i).await? {
                Some(reason) => self.rebuild_locked(i, &reason, ctx).await,
                None => Ok(i),
            };
        }
        if name != self.default_image {
            return Err(ArtifactError::NotFound {
                kind: "image",
                name: name.to_owned(),
            });
        }
        let record = self
            .build_new(
                name,
                BuildSpec::default(),
                &format!("build image {name}"),
                ctx,
            )
            .await?;
        let r = record.clone();
        self.db.call(move |s| s.insert_image(&r)).await?;
        tracing::info!(image = name, "image built");
        Ok(record)
    }

    /// Rebuilds the stale image `old` under its name; its row and files
    /// stay (renamed `NAME@ID`) for the VMs that use them. A rebuild that
    /// fails for another reason than a cancel leaves `old` in use, saying
    /// so in a stage and the log: a stale image still boots.
    async fn rebuild_locked(
        &self,
        old: ImageRecord,
        reason: &str,
        ctx: &OpCtx,
    ) -> Result<ImageRecord, ArtifactError> {
        let name = old.name.clone();
        let spec = match old.recipe.as_deref().map(serde_json::from_str::<BuiltFrom>) {
            Some(Ok(b)) => b.spec(),
            _ => BuildSpec::default(),
        };
        let title = format!("rebuild image {name} (stale: {reason})");
        let built = match self.build_new(&name, spec, &title, ctx).await {
            Ok(b) => b,
            Err(ArtifactError::Cancelled(c)) => return Err(c.into()),
            Err(e) => {
                let why = chain(&e);
                tracing::warn!(image = %name, error = %why, "rebuild of a stale image failed; using the stale one");
                ctx.stage(&format!("use stale image {name}: rebuild failed: {why}"));
                return Ok(old);
            }
        };
        let (old_id, r) = (old.id.clone(), built.clone());
        self.db.call(move |s| s.replace_image(&old_id, &r)).await?;
        tracing::info!(image = %name, old = %old.id, new = %built.id, reason, "stale image rebuilt");
        Ok(built)
    }

    /// `image.build`: builds a new managed image (check `packages` with
    /// [`validate_packages`] first).
    pub async fn build_image(
        &self,
        name: &str,
        spec: BuildSpec,
        ctx: &OpCtx,
    ) -> Result<ImageRecord, ArtifactError> {
        let lock = self.locks.get(format!("image:{name}"));
        let _guard = lock.lock().await;
        if self.stored_image(name).await?.is_some() {
            return Err(ArtifactError::ImageExists {
                name: name.to_owned(),
            });
        }
        let record = self
            .build_new(name, spec, &format!("build image {name}"), ctx)
            .await?;
        let r = record.clone();
        self.db.call(move |s| s.insert_image(&r)).await?;
        tracing::info!(image = name, "image built");
        Ok(record)
    }

    /// Builds the files of a new version of image `name` into a directory
    /// of its own (`DATA/images/NAME/`, or `NAME.ID/` when that is taken by
    /// an older version), under the stage `title`; returns its record, not
    /// stored yet. Refuses before any work without a static agent.
    async fn build_new(
        &self,
        name: &str,
        spec: BuildSpec,
        title: &str,
        ctx: &OpCtx,
    ) -> Result<ImageRecord, ArtifactError> {
        let recipe = self.recipe(&spec, true).await?;
        ctx.check_cancelled()?;
        let id = new_id("i-");
        let mut dest = self.image_dir(name);
        if dest.exists() {
            // Not a valid image name: no other image's directory.
            dest = self.data_dir.join("images").join(format!("{name}.{id}"));
        }
        let cache = self.cache_dir.clone();
        let (r, d) = (recipe.clone(), dest.clone());
        let built = with_stages(ctx, title, move |progress| {
            banger_image::build_rootfs(&r, &cache, &d, progress)
        })
        .await?
        .map_err(|source| ArtifactError::Build {
            name: name.to_owned(),
            source,
        });
        let built = match built {
            Ok(b) => b,
            Err(ArtifactError::Build { name, source }) => {
                let parent = dest.parent().unwrap_or(&dest).to_owned();
                remove_dir(dest).await;
                return Err(match crate::disks::no_space(&source) {
                    Some(detail) => {
                        tracing::warn!(error = %chain(&source), "image build ran out of space");
                        ArtifactError::NoSpace {
                            name,
                            free: crate::disks::free_space(&parent),
                            dir: parent,
                            detail,
                        }
                    }
                    None => ArtifactError::Build { name, source },
                });
            }
            Err(e) => {
                remove_dir(dest).await;
                return Err(e);
            }
        };
        let from = BuiltFrom {
            packages: spec.packages,
            size_bytes: recipe.size_bytes,
            parts: recipe.parts(),
            preset: spec.preset,
            services: spec.services,
        };
        Ok(ImageRecord {
            id,
            name: name.to_owned(),
            source: format!("debian:{}", recipe.suite),
            rootfs_path: built.rootfs,
            work_seed_path: Some(built.work_seed),
            fingerprint: Some(recipe.fingerprint()),
            size_bytes: built.size_bytes,
            managed: true,
            created_at_ms: now_ms(),
            has_agent: recipe.agent.is_some(),
            // Plain data of strings and numbers: serialising cannot fail.
            recipe: serde_json::to_string(&from).ok(),
            replaced_by: None,
            origin: banger_proto::vm::ImageOrigin::Built,
            config: None,
        })
    }

    /// Why the managed image `i` is stale, if it is (for people: "package
    /// set changed, new agent"): the recipe parts that differ from how
    /// banger would build it now (the agent not compared when there is no
    /// static one to hash). A stale image can be rebuilt: of the images
    /// built before images recorded their recipe, only the default image
    /// (whose recipe is known) is judged.
    async fn staleness(&self, i: &ImageRecord) -> Result<Option<String>, ArtifactError> {
        if !i.managed || i.replaced_by.is_some() {
            return Ok(None);
        }
        let Some(Ok(from)) = i.recipe.as_deref().map(serde_json::from_str::<BuiltFrom>) else {
            let legacy_default = i.name == self.default_image && i.source == "debian:bookworm";
            return Ok(legacy_default.then(|| LEGACY_REASON.to_owned()));
        };
        let recipe = self.recipe(&from.spec(), false).await?;
        let mut now = recipe.parts();
        if recipe.agent.is_none() {
            now.remove("agent");
        }
        let reasons = banger_image::stale_reasons(&from.parts, &now);
        Ok((!reasons.is_empty()).then(|| reasons.join(", ")))
    }

    /// Deletes the images replaced by a rebuild that nothing uses any more
    /// (the store refuses while a VM or snapshot refers to one), files and
    /// all. Best effort: what fails is logged and tried again next time.
    pub async fn prune_replaced(&self) {
        let Ok(images) = self.db.call(|s| s.images()).await else {
            return;
        };
        for i in images.into_iter().filter(|i| i.replaced_by.is_some()) {
            let lock = self.locks.get(format!("image:{}", i.name));
            let _guard = lock.lock().await;
            let id = i.id.clone();
            match self.db.call(move |s| s.delete_image(&id)).await {
                Ok(record) => {
                    remove_dir(self.files_dir(&record)).await;
                    tracing::info!(image = %record.name, "replaced image pruned: nothing uses it");
                }
                Err(StoreError::InUse { .. }) => {}
                Err(e) => {
                    tracing::warn!(image = %i.name, error = %chain(&e), "could not prune a replaced image")
                }
            }
        }
    }

    /// The directory of an image's own files: the one its root disk is in
    /// when that is an image directory of ours, else `DATA/images/NAME`.
    fn files_dir(&self, i: &ImageRecord) -> PathBuf {
        let images = self.data_dir.join("images");
        match i.rootfs_path.parent() {
            Some(dir) if dir.parent() == Some(images.as_path()) => dir.to_owned(),
            _ => self.image_dir(&i.name),
        }
    }

    /// The image `name` as shown to users.
    pub async fn image(&self, name: &str) -> Result<ImageView, ArtifactError> {
        let name = name.to_owned();
        let image = self.db.call(move |s| s.image(&name)).await?;
        self.image_view(&image).await
    }

    /// Every image as shown to users.
    pub async fn images(&self) -> Result<Vec<ImageView>, ArtifactError> {
        let images = self.db.call(|s| s.images()).await?;
        let mut views = Vec::with_capacity(images.len());
        for i in &images {
            views.push(self.image_view(i).await?);
        }
        Ok(views)
    }

    pub async fn image_view(&self, i: &ImageRecord) -> Result<ImageView, ArtifactError> {
        let stale_reason = if i.replaced_by.is_some() {
            Some("replaced by a rebuild; kept while VMs or snapshots use it".to_owned())
        } else {
            self.staleness(i).await?
        };
        Ok(ImageView {
            id: i.id.clone(),
            name: i.name.clone(),
            source: i.source.clone(),
            rootfs: i.rootfs_path.display().to_string(),
            work_seed: i.work_seed_path.as_ref().map(|p| p.display().to_string()),
            size_bytes: i.size_bytes,
            managed: i.managed,
            fingerprint: i.fingerprint.clone(),
            stale: stale_reason.is_some(),
            stale_reason,
            replaced_by: i.replaced_by.clone(),
            created_at_ms: i.created_at_ms,
            origin: i.origin.clone(),
            config: i.config.clone(),
            services: image_services(i)
                .into_iter()
                .map(|s| banger_proto::vm::ImageService {
                    name: s.name,
                    port: s.port,
                    command: s.command,
                    workdir: s.workdir,
                })
                .collect(),
        })
    }

    pub async fn delete_image(&self, name: &str) -> Result<ImageRecord, ArtifactError> {
        let lock = self.locks.get(format!("image:{name}"));
        let _guard = lock.lock().await;
        let n = name.to_owned();
        let record = self.db.call(move |s| s.delete_image(&n)).await?;
        remove_dir(self.files_dir(&record)).await;
        Ok(record)
    }

    /// `kernel.import`: checks `files` and copies them into the kernel
    /// store under `name` (validated by the caller), then records it.
    /// Refused for a catalog entry's name (a pull must never meet an
    /// imported kernel) and a name taken; a failure leaves no row and no
    /// files (`import.rs`).
    pub async fn import_kernel(
        &self,
        name: &str,
        files: ImportFiles,
    ) -> Result<KernelRecord, ArtifactError> {
        if catalog_entry(name).is_some() {
            return Err(ArtifactError::CatalogName {
                name: name.to_owned(),
            });
        }
        let lock = self.locks.get(format!("kernel:{name}"));
        let _guard = lock.lock().await;
        if self.stored_kernel(name).await?.is_some() {
            return Err(ArtifactError::KernelExists {
                name: name.to_owned(),
            });
        }
        let kernels = self.data_dir.join("kernels");
        let (n, f) = (name.to_owned(), files.clone());
        let imported = tokio::task::spawn_blocking(move || import::import(&kernels, &n, &f))
            .await
            .map_err(|source| ArtifactError::Task {
                what: format!("import kernel {name}"),
                source,
            })?
            .map_err(|source| ArtifactError::Import {
                name: name.to_owned(),
                source,
            })?;
        let record = KernelRecord {
            id: new_id("k-"),
            name: name.to_owned(),
            origin: KernelOrigin::Imported {
                path: files.kernel.display().to_string(),
            },
            kernel_path: imported.kernel,
            initrd_path: imported.initrd,
            modules_dir: imported.modules_dir,
            version: imported.version,
            sha256: None,
            created_at_ms: now_ms(),
        };
        let r = record.clone();
        if let Err(e) = self.db.call(move |s| s.insert_kernel(&r)).await {
            remove_dir(self.kernel_dir(name)).await;
            return Err(e.into());
        }
        tracing::info!(kernel = name, from = %files.kernel.display(), "kernel imported");
        Ok(record)
    }

    /// The catalog's kernels (pulled or not) and every other pulled or
    /// imported one.
    pub async fn kernel_views(&self) -> Result<Vec<KernelView>, ArtifactError> {
        let records = self.db.call(|s| s.kernels()).await?;
        Ok(kernel_views(&records, &self.default_kernel))
    }

    /// The kernel `name` as `kernel_views` shows it.
    pub async fn kernel_view_named(&self, name: &str) -> Result<KernelView, ArtifactError> {
        self.kernel_views()
            .await?
            .into_iter()
            .find(|k| k.name == name)
            .ok_or_else(|| ArtifactError::NotFound {
                kind: "kernel",
                name: name.to_owned(),
            })
    }

    /// A kernel just pulled or imported, as shown to users.
    pub fn pulled_kernel_view(&self, k: &KernelRecord) -> KernelView {
        let description = catalog_entry(&k.name).map_or("", |e| e.description);
        kernel_view(
            &k.name,
            description,
            k.name == self.default_kernel,
            k.origin.clone(),
            Some(k),
        )
    }

    pub async fn delete_kernel(&self, name: &str) -> Result<KernelRecord, ArtifactError> {
        let lock = self.locks.get(format!("kernel:{name}"));
        let _guard = lock.lock().await;
        let n = name.to_owned();
        let record = self.db.call(move |s| s.delete_kernel(&n)).await?;
        remove_dir(self.kernel_dir(&record.name)).await;
        Ok(record)
    }
}

/// The static guest agent to bake into images: `configured`
/// (`BANGER_AGENT_BIN`) alone when set, else `banger-agent` in `exe_dir`
/// (bangerd's) if it is static, else cargo's static build beside bangerd's
/// build dir (`target/x86_64-unknown-linux-gnu/release/`, what
/// scripts/build-agent.sh makes). None static: [`ArtifactError::NoAgent`],
/// naming what was tried and why each was refused, and how to fix it.
pub fn find_agent(
    configured: Option<PathBuf>,
    exe_dir: Option<PathBuf>,
) -> Result<banger_image::AgentBinary, ArtifactError> {
    let mut candidates = Vec::new();
    if let Some(p) = configured {
        candidates.push(p);
    } else if let Some(dir) = exe_dir {
        candidates.push(dir.join("banger-agent"));
        if let Some(target) = dir.parent() {
            candidates.push(target.join("x86_64-unknown-linux-gnu/release/banger-agent"));
        }
    }
    let mut why = Vec::new();
    for c in &candidates {
        match banger_image::AgentBinary::load(c) {
            Ok(a) => return Ok(a),
            Err(e) => why.push(chain(&e)),
        }
    }
    if why.is_empty() {
        why.push("no place to look".to_owned());
    }
    Err(ArtifactError::NoAgent {
        tried: why.join("; "),
    })
}

/// Removes a deleted artifact's files; what cannot be removed is logged
/// and left (the record is gone already).
async fn remove_dir(dir: PathBuf) {
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err((dir, e)),
        _ => Ok(()),
    })
    .await;
    if let Ok(Err((dir, e))) = removed {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove artifact files");
    }
}

/// The catalog first (pulled or not; the catalog's own default marked),
/// then the other kernels (imported ones; `default_kernel`, the configured
/// default, marked).
fn kernel_views(records: &[KernelRecord], default_kernel: &str) -> Vec<KernelView> {
    let mut views: Vec<KernelView> = catalog()
        .iter()
        .map(|e| {
            let pulled = records.iter().find(|k| k.name == e.name);
            let origin = pulled.map_or_else(
                || KernelOrigin::Catalog {
                    package: e.package.to_owned(),
                },
                |k| k.origin.clone(),
            );
            kernel_view(e.name, e.description, e.default, origin, pulled)
        })
        .collect();
    for k in records {
        if catalog_entry(&k.name).is_none() {
            let default = k.name == default_kernel;
            views.push(kernel_view(&k.name, "", default, k.origin.clone(), Some(k)));
        }
    }
    views
}

fn kernel_view(
    name: &str,
    description: &str,
    default: bool,
    origin: KernelOrigin,
    k: Option<&KernelRecord>,
) -> KernelView {
    let shown = |p: &PathBuf| p.display().to_string();
    KernelView {
        name: name.to_owned(),
        description: description.to_owned(),
        present: k.is_some_and(|k| k.kernel_path.exists()),
        default,
        origin,
        version: k.and_then(|k| k.version.clone()),
        kernel: k.map(|k| shown(&k.kernel_path)),
        initrd: k.and_then(|k| k.initrd_path.as_ref().map(shown)),
        modules: k.and_then(|k| k.modules_dir.as_ref().map(shown)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;

    /// The artifacts service of a test state over `root`.
    fn service(root: &std::path::Path) -> Arc<Artifacts> {
        Arc::clone(&crate::testing::test_state(root).artifacts)
    }

    fn image_record(root: &std::path::Path, name: &str) -> ImageRecord {
        let dir = root.join("data/images").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["rootfs.ext4", "work-seed.ext4"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        ImageRecord {
            id: format!("i-{name}"),
            name: name.into(),
            source: "test".into(),
            rootfs_path: dir.join("rootfs.ext4"),
            work_seed_path: Some(dir.join("work-seed.ext4")),
            fingerprint: None,
            size_bytes: 1,
            managed: false,
            created_at_ms: 0,
            has_agent: false,
            recipe: None,
            replaced_by: None,
            origin: Default::default(),
            config: None,
        }
    }

    /// Every `: `-separated part of `text` appears once.
    fn assert_each_cause_once(text: &str) {
        let parts: Vec<&str> = text.split(": ").collect();
        for p in &parts {
            let n = parts.iter().filter(|q| *q == p).count();
            assert_eq!(n, 1, "{p:?} repeats in {text:?}");
        }
    }

    #[test]
    fn a_failed_image_command_prints_each_cause_once() {
        let failed = ArtifactError::Build {
            name: "default".into(),
            source: ImageError::Command {
                command: "mmdebstrap --variant=apt bookworm".into(),
                status: "exit status 1".into(),
                stderr: "E: boom".into(),
            },
        };
        let text = chain(&failed);
        assert_eq!(
            text,
            "build image default: mmdebstrap --variant=apt bookworm failed (exit status 1): E: boom"
        );
        assert_each_cause_once(&text);

        let missing = ArtifactError::Pull {
            name: "debian-cloud".into(),
            source: ImageError::Spawn {
                program: "apt-get".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        };
        let text = chain(&missing);
        assert!(
            text.starts_with("pull kernel debian-cloud: cannot run apt-get: "),
            "{text}"
        );
        assert_each_cause_once(&text);

        let io = ArtifactError::Build {
            name: "default".into(),
            source: ImageError::Io {
                op: "create",
                path: "/data/images/default".into(),
                source: std::io::Error::other("disk full"),
            },
        };
        assert_eq!(
            chain(&io),
            "build image default: create /data/images/default: disk full"
        );
    }

    #[test]
    fn package_names_are_checked() {
        let ok =
            |p: &[&str]| validate_packages(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&["curl", "libc6:amd64", "g++", "python3=3.11.2-1+b1"]).is_ok());
        for bad in ["", "-oAPT::Get=x", "a b", "a;b", "a/b"] {
            let err = ok(&["curl", bad]).unwrap_err();
            assert!(
                matches!(&err, ArtifactError::InvalidPackage { package } if package == bad),
                "{err:?}"
            );
            assert_eq!(err.to_string(), format!("invalid package name {bad:?}"));
        }
    }

    #[tokio::test]
    async fn a_missing_named_image_is_not_found_and_a_duplicate_build_conflicts() {
        let tmp = tempfile::tempdir().unwrap();
        let artifacts = service(tmp.path());
        let ctx = OpCtx::background();

        let err = artifacts.ensure_image("nope", &ctx).await.unwrap_err();
        assert!(
            matches!(err, ArtifactError::NotFound { kind: "image", .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "image \"nope\" not found");

        let record = image_record(tmp.path(), "mine");
        let r = record.clone();
        artifacts
            .db
            .call(move |s| s.insert_image(&r))
            .await
            .unwrap();
        assert_eq!(artifacts.ensure_image("mine", &ctx).await.unwrap(), record);
        let err = artifacts
            .build_image("mine", BuildSpec::default(), &ctx)
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::ImageExists { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "image \"mine\" already exists; delete it first"
        );

        // A record whose files went missing is broken, not rebuilt.
        std::fs::remove_file(&record.rootfs_path).unwrap();
        let err = artifacts.ensure_image("mine", &ctx).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("image \"mine\" is broken: its root disk file "),
            "{err}"
        );
        assert!(err.to_string().ends_with(" is missing"), "{err}");
    }

    /// `a` with another agent setting (`BANGER_AGENT_BIN`).
    fn with_agent(a: &Artifacts, agent_bin: Option<PathBuf>) -> Artifacts {
        Artifacts {
            db: a.db.clone(),
            data_dir: a.data_dir.clone(),
            cache_dir: a.cache_dir.clone(),
            default_image: a.default_image.clone(),
            default_kernel: a.default_kernel.clone(),
            ssh: a.ssh.clone(),
            agent_bin,
            locks: ArtifactLocks::default(),
            cache_use: tokio::sync::RwLock::new(()),
        }
    }

    /// A managed image as an earlier banger recorded it: no recipe.
    fn legacy_default(root: &std::path::Path) -> ImageRecord {
        ImageRecord {
            source: "debian:bookworm".into(),
            managed: true,
            fingerprint: Some("built-before-recipes-were-recorded".into()),
            ..image_record(root, "default")
        }
    }

    #[test]
    fn an_images_services_are_its_presets_then_its_own() {
        let web = Service {
            name: "web".into(),
            command: "python3 -m http.server 8000".into(),
            port: 8000,
            workdir: "/root".into(),
            env: Vec::new(),
        };
        let from = BuiltFrom {
            packages: Vec::new(),
            size_bytes: None,
            parts: BTreeMap::new(),
            preset: Some(Preset::Opencode),
            services: vec![web.clone()],
        };
        let tmp = tempfile::tempdir().unwrap();
        let image = ImageRecord {
            recipe: Some(serde_json::to_string(&from).unwrap()),
            ..image_record(tmp.path(), "oc")
        };
        let names: Vec<(String, u16)> = image_services(&image)
            .into_iter()
            .map(|s| (s.name, s.port))
            .collect();
        assert_eq!(names, [("opencode".into(), 4096), ("web".into(), 8000)]);
        // An image without a recipe (pulled, older) declares none.
        assert!(image_services(&image_record(tmp.path(), "plain")).is_empty());

        assert!(validate_services(std::slice::from_ref(&web)).is_ok());
        let twice = validate_services(&[web.clone(), web.clone()]).unwrap_err();
        assert!(chain(&twice).contains("given twice"), "{}", chain(&twice));
        let bad = Service {
            command: "a\nb".into(),
            ..web
        };
        assert!(matches!(
            validate_services(&[bad]),
            Err(ArtifactError::InvalidService { .. })
        ));
    }

    #[test]
    fn without_a_static_agent_the_error_says_how_to_get_one() {
        let tmp = tempfile::tempdir().unwrap();
        // /bin/sh is dynamically linked on Debian.
        let err = find_agent(Some("/bin/sh".into()), None).unwrap_err();
        assert!(matches!(err, ArtifactError::NoAgent { .. }), "{err:?}");
        let text = chain(&err);
        assert!(text.contains("/bin/sh"), "{text}");
        assert!(text.contains("dynamically linked"), "{text}");
        assert!(text.contains("scripts/build-agent.sh"), "{text}");
        assert!(text.contains("BANGER_AGENT_BIN"), "{text}");
        // Next to bangerd: both places named.
        let err = find_agent(None, Some(tmp.path().join("debug"))).unwrap_err();
        let text = chain(&err);
        assert!(text.contains("debug/banger-agent"), "{text}");
        assert!(
            text.contains("x86_64-unknown-linux-gnu/release/banger-agent"),
            "{text}"
        );
        let err = find_agent(None, None).unwrap_err();
        assert!(chain(&err).contains("no place to look"), "{err}");
    }

    #[tokio::test]
    async fn an_image_is_never_built_without_the_agent() {
        let tmp = tempfile::tempdir().unwrap();
        let artifacts = with_agent(&service(tmp.path()), Some("/bin/sh".into()));
        let ctx = OpCtx::background();
        let err = artifacts.ensure_image("default", &ctx).await.unwrap_err();
        assert!(matches!(err, ArtifactError::NoAgent { .. }), "{err:?}");
        let err = artifacts
            .build_image("mine", BuildSpec::default(), &ctx)
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::NoAgent { .. }), "{err:?}");
        // Refused before any work: no record, no files.
        assert!(artifacts.db.call(|s| s.images()).await.unwrap().is_empty());
        assert!(!tmp.path().join("data/images/default").exists());
        assert!(!tmp.path().join("data/images/mine").exists());
    }

    #[tokio::test]
    async fn stale_images_say_why_and_a_failed_rebuild_keeps_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let artifacts = with_agent(&service(tmp.path()), Some("/bin/sh".into()));
        let legacy = legacy_default(tmp.path());
        let r = legacy.clone();
        artifacts
            .db
            .call(move |s| s.insert_image(&r))
            .await
            .unwrap();
        let view = artifacts.image("default").await.unwrap();
        assert!(view.stale);
        assert_eq!(view.stale_reason.as_deref(), Some("package set changed"));

        // The rebuild cannot happen (no static agent): the stale image is
        // still what the create gets, untouched.
        let got = artifacts
            .ensure_image("default", &OpCtx::background())
            .await
            .unwrap();
        assert_eq!(got, legacy);
        assert_eq!(
            artifacts.db.call(|s| s.images()).await.unwrap(),
            vec![legacy]
        );

        // A recorded recipe: the parts that differ are named.
        let key = artifacts.ssh.public_key().unwrap();
        let mut old_recipe = ImageRecipe::new("bookworm", key);
        old_recipe.packages = vec!["jq".into()];
        let from = BuiltFrom {
            packages: Vec::new(),
            size_bytes: None,
            parts: old_recipe.parts(),
            preset: None,
            services: Vec::new(),
        };
        let mine = ImageRecord {
            recipe: Some(serde_json::to_string(&from).unwrap()),
            ..legacy_default(tmp.path())
        };
        let mine = ImageRecord {
            id: "i-mine".into(),
            name: "mine".into(),
            ..mine
        };
        let r = mine.clone();
        artifacts
            .db
            .call(move |s| s.insert_image(&r))
            .await
            .unwrap();
        let view = artifacts.image("mine").await.unwrap();
        assert_eq!(view.stale_reason.as_deref(), Some("package set changed"));
        // The same recipe as now: not stale (the agent, unknown here, is
        // not compared).
        let current = BuiltFrom {
            preset: None,
            services: Vec::new(),
            packages: Vec::new(),
            size_bytes: None,
            parts: artifacts
                .recipe(&BuildSpec::default(), false)
                .await
                .unwrap()
                .parts(),
        };
        let fresh = ImageRecord {
            id: "i-fresh".into(),
            name: "fresh".into(),
            recipe: Some(serde_json::to_string(&current).unwrap()),
            ..mine
        };
        let r = fresh.clone();
        artifacts
            .db
            .call(move |s| s.insert_image(&r))
            .await
            .unwrap();
        let view = artifacts.image("fresh").await.unwrap();
        assert!(!view.stale && view.stale_reason.is_none(), "{view:?}");
    }

    #[tokio::test]
    async fn a_replaced_image_stays_while_a_vm_uses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::testing::test_state(tmp.path());
        let artifacts = &state.artifacts;
        let old = legacy_default(tmp.path());
        let r = old.clone();
        artifacts
            .db
            .call(move |s| s.insert_image(&r))
            .await
            .unwrap();
        let kernel = KernelRecord {
            id: "k-1".into(),
            name: "k".into(),
            origin: KernelOrigin::Imported {
                path: "/test/vmlinuz".into(),
            },
            kernel_path: tmp.path().join("vmlinuz"),
            initrd_path: None,
            modules_dir: None,
            version: None,
            sha256: None,
            created_at_ms: 0,
        };
        let vm = banger_store::VmRecord {
            id: "v-old".into(),
            name: "old".into(),
            image_id: old.id.clone(),
            kernel_id: kernel.id.clone(),
            vcpus: 1,
            memory_mib: 256,
            disk_size_bytes: 1 << 30,
            network_mode: banger_proto::NetworkMode::User,
            egress: banger_proto::Egress::default(),
            backend: None,
            disk_strategy: None,
            published_ports: vec![],
            state: banger_store::VmState::Stopped,
            last_error: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            base_snapshot_id: None,
            wait_for: None,
            backend_reason: None,
        };
        artifacts
            .db
            .call(move |s| {
                s.insert_kernel(&kernel)?;
                s.insert_vm(&vm)
            })
            .await
            .unwrap();
        // The rebuild's files go into a directory of their own.
        let new_dir = tmp.path().join("data/images/default.i-new");
        std::fs::create_dir_all(&new_dir).unwrap();
        std::fs::write(new_dir.join("rootfs.ext4"), b"y").unwrap();
        let new = ImageRecord {
            id: "i-new".into(),
            rootfs_path: new_dir.join("rootfs.ext4"),
            work_seed_path: None,
            ..old.clone()
        };
        let (id, r) = (old.id.clone(), new.clone());
        artifacts
            .db
            .call(move |s| s.replace_image(&id, &r))
            .await
            .unwrap();
        let view = artifacts.image(&old.id).await.unwrap();
        assert_eq!(view.name, "default@i-default");
        assert!(view.stale);
        assert_eq!(view.replaced_by.as_deref(), Some("i-new"));
        assert!(
            view.stale_reason
                .unwrap()
                .starts_with("replaced by a rebuild")
        );

        artifacts.prune_replaced().await;
        assert!(old.rootfs_path.exists(), "a VM's backing file was removed");
        assert_eq!(artifacts.db.call(|s| s.images()).await.unwrap().len(), 2);

        artifacts.db.call(|s| s.delete_vm("old")).await.unwrap();
        artifacts.prune_replaced().await;
        assert!(!old.rootfs_path.parent().unwrap().exists());
        assert!(new.rootfs_path.exists());
        assert_eq!(
            artifacts.db.call(|s| s.images()).await.unwrap(),
            vec![new.clone()]
        );
        // Deleting the rebuilt image removes its own directory.
        artifacts.delete_image("default").await.unwrap();
        assert!(!new_dir.exists());
    }

    #[tokio::test]
    async fn unknown_kernels_name_the_catalog() {
        let tmp = tempfile::tempdir().unwrap();
        let artifacts = service(tmp.path());
        artifacts.check_kernel_known("debian-cloud").await.unwrap();
        let err = artifacts.check_kernel_known("nope").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel \"nope\" not found (the catalog has: debian-cloud)"
        );
        let err = artifacts
            .ensure_kernel("nope", &OpCtx::background())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "kernel \"nope\" not found");
        let err = artifacts.kernel_view_named("nope").await.unwrap_err();
        assert_eq!(err.to_string(), "kernel \"nope\" not found");
        let views = artifacts.kernel_views().await.unwrap();
        assert!(views.iter().any(|k| k.name == "debian-cloud" && !k.present));
    }

    #[tokio::test]
    async fn an_imported_kernel_is_listed_never_pulled_over_and_deleted() {
        use crate::dispatch::errors::artifact_code;
        use banger_proto::ErrorCode;
        let tmp = tempfile::tempdir().unwrap();
        let artifacts = service(tmp.path());
        let src = tmp.path().join("build/vmlinuz");
        std::fs::create_dir_all(src.parent().unwrap()).unwrap();
        banger_vmm::testkit::write_stub_kernel(&src).unwrap();
        let files = |kernel: &std::path::Path| ImportFiles {
            kernel: kernel.to_owned(),
            initrd: None,
            modules: None,
        };
        let kernels_dir = tmp.path().join("data/kernels");

        let k = artifacts.import_kernel("stub", files(&src)).await.unwrap();
        let origin = KernelOrigin::Imported {
            path: src.display().to_string(),
        };
        assert_eq!(k.origin, origin);
        assert_eq!(k.kernel_path, kernels_dir.join("stub/vmlinuz"));
        assert_eq!(
            std::fs::read(&k.kernel_path).unwrap(),
            banger_vmm::testkit::stub_kernel()
        );
        let view = artifacts.kernel_view_named("stub").await.unwrap();
        assert_eq!(view.origin, origin);
        assert!(view.present && !view.default, "{view:?}");
        assert_eq!(
            view.origin.to_string(),
            format!("imported from {}", src.display())
        );
        let listed = artifacts.kernel_views().await.unwrap();
        assert!(
            listed
                .iter()
                .any(|k| k.name == "debian-cloud" && k.origin.kind() == "catalog"),
            "{listed:?}"
        );
        // The user's file may go: the store has its own copy.
        std::fs::remove_file(&src).unwrap();
        assert_eq!(
            artifacts
                .ensure_kernel("stub", &OpCtx::background())
                .await
                .unwrap(),
            k
        );

        // Refused, leaving the store as it was: a name taken, a catalog
        // entry's name, files that are not there or no kernel.
        banger_vmm::testkit::write_stub_kernel(&src).unwrap();
        let err = artifacts
            .import_kernel("stub", files(&src))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::KernelExists { .. }), "{err:?}");
        assert_eq!(artifact_code(&err), ErrorCode::Conflict);
        let err = artifacts
            .import_kernel("debian-cloud", files(&src))
            .await
            .unwrap_err();
        assert_eq!(artifact_code(&err), ErrorCode::Conflict);
        assert!(chain(&err).contains("catalog entry"), "{err}");
        let err = artifacts
            .import_kernel("gone", files(&tmp.path().join("nope")))
            .await
            .unwrap_err();
        assert_eq!(artifact_code(&err), ErrorCode::NotFound);
        assert!(
            chain(&err).starts_with("import kernel gone: kernel ") && chain(&err).contains("nope"),
            "{err}"
        );
        let text = tmp.path().join("notes.txt");
        std::fs::write(&text, b"not a kernel at all").unwrap();
        let err = artifacts
            .import_kernel("text", files(&text))
            .await
            .unwrap_err();
        assert_eq!(artifact_code(&err), ErrorCode::BadParams);
        assert_each_cause_once(&chain(&err));
        let names: Vec<String> = std::fs::read_dir(&kernels_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["stub"], "refused imports left files");
        let rows = artifacts.db.call(|s| s.kernels()).await.unwrap();
        assert_eq!(rows, vec![k.clone()]);

        let err = artifacts.check_kernel_pullable("stub").await.unwrap_err();
        assert!(chain(&err).contains("was imported, not pulled"), "{err}");
        assert_eq!(artifact_code(&err), ErrorCode::BadParams);
        artifacts
            .check_kernel_pullable("debian-cloud")
            .await
            .unwrap();

        // Its files gone: an error saying so, never a catalog pull.
        std::fs::remove_file(&k.kernel_path).unwrap();
        let err = artifacts
            .ensure_kernel("stub", &OpCtx::background())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ArtifactError::ImportedMissing { .. }),
            "{err:?}"
        );
        assert!(chain(&err).contains("import it again"), "{err}");

        artifacts.delete_kernel("stub").await.unwrap();
        assert!(!kernels_dir.join("stub").exists());
        assert!(artifacts.db.call(|s| s.kernels()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_operation_does_not_start_a_pull() {
        let tmp = tempfile::tempdir().unwrap();
        let artifacts = service(tmp.path());
        let ctx = OpCtx::background();
        ctx.cancel_token().cancel();
        let err = artifacts
            .ensure_kernel("debian-cloud", &ctx)
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::Cancelled(_)), "{err:?}");
    }
}
