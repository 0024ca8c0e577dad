//! Kernels and images: pulled or built on demand through `banger-image`,
//! recorded in the store, files under the data dir.
//!
//! | what | files |
//! |---|---|
//! | kernel NAME | `DATA/kernels/NAME/{vmlinuz, initrd.img, modules/}` |
//! | image NAME | `DATA/images/NAME/{rootfs.ext4, work-seed.ext4}` |
//!
//! One build or pull per name at a time: concurrent creates that both need
//! the default image wait for the one build.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use banger_image::{ImageRecipe, catalog};
use banger_proto::ErrorCode;
use banger_proto::vm::{ImageView, KernelView};
use banger_store::{ImageRecord, KernelRecord, StoreError};
use rand::Rng;

use crate::DaemonState;
use crate::dispatch::{RpcError, error_chain};
use crate::ops::{Operation, now_ms};

/// Locks that serialise work on one kernel or image name.
#[derive(Debug, Default)]
pub struct ArtifactLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl ArtifactLocks {
    fn get(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(key).or_default())
    }
}

fn kernel_dir(state: &DaemonState, name: &str) -> PathBuf {
    state.config.layout.data_dir.join("kernels").join(name)
}

fn image_dir(state: &DaemonState, name: &str) -> PathBuf {
    state.config.layout.data_dir.join("images").join(name)
}

fn new_id(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}{:010x}", n & 0xff_ffff_ffff)
}

fn not_found(kind: &str, name: &str) -> RpcError {
    RpcError::new(ErrorCode::NotFound, format!("{kind} {name:?} not found"))
}

/// Runs blocking `banger-image` work after starting the stage `title`,
/// reporting the stages it names on the operation as they happen.
async fn with_stages<T, F>(op: Option<&Arc<Operation>>, title: &str, work: F) -> Result<T, RpcError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Fn(&str)) -> Result<T, banger_image::ImageError> + Send + 'static,
{
    if let Some(op) = op {
        op.stage(title);
    }
    let op = op.cloned();
    tokio::task::spawn_blocking(move || {
        let progress = |s: &str| {
            if let Some(op) = &op {
                op.stage(s);
            }
        };
        work(&progress)
    })
    .await
    .map_err(|e| RpcError::internal(format!("{title}: task failed: {e}")))?
    .map_err(|e| RpcError::internal(error_chain(&e)))
}

/// `Ok(None)` for a missing record, so callers can pull or build it.
fn optional<T>(found: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match found {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn stored_kernel(
    state: &Arc<DaemonState>,
    name: &str,
) -> Result<Option<KernelRecord>, RpcError> {
    let name = name.to_owned();
    state.with_store(move |s| optional(s.kernel(&name))).await
}

async fn stored_image(
    state: &Arc<DaemonState>,
    name: &str,
) -> Result<Option<ImageRecord>, RpcError> {
    let name = name.to_owned();
    state.with_store(move |s| optional(s.image(&name))).await
}

/// Ok when `name` is pulled or can be pulled from the catalog.
pub async fn check_kernel_known(state: &Arc<DaemonState>, name: &str) -> Result<(), RpcError> {
    if stored_kernel(state, name).await?.is_some() || catalog().iter().any(|e| e.name == name) {
        return Ok(());
    }
    let known: Vec<&str> = catalog().iter().map(|e| e.name).collect();
    Err(RpcError::new(
        ErrorCode::NotFound,
        format!(
            "kernel {name:?} not found (the catalog has: {})",
            known.join(", ")
        ),
    ))
}

/// The kernel `name`, pulled first if it is a catalog entry not pulled yet
/// (or whose files went missing).
pub async fn ensure_kernel(
    state: &Arc<DaemonState>,
    name: &str,
    op: Option<&Arc<Operation>>,
) -> Result<KernelRecord, RpcError> {
    let lock = state.artifact_locks.get(format!("kernel:{name}"));
    let _guard = lock.lock().await;
    let existing = stored_kernel(state, name).await?;
    if let Some(k) = &existing {
        let files_ok = k.kernel_path.exists() && k.initrd_path.as_ref().is_none_or(|p| p.exists());
        if files_ok {
            return Ok(k.clone());
        }
        tracing::warn!(kernel = name, "kernel files are missing; pulling again");
    }
    let entry = catalog()
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| not_found("kernel", name))?;
    let dest = kernel_dir(state, name);
    let cache = state.config.layout.cache_dir.clone();
    let package = entry.package.to_owned();
    let pulled = with_stages(op, &format!("pull kernel {name}"), move |progress| {
        banger_image::pull_debian_kernel(&package, &cache, &dest, progress)
    })
    .await?;
    if let Some(k) = existing {
        return Ok(k); // same paths, files now back
    }
    let record = KernelRecord {
        id: new_id("k-"),
        name: name.to_owned(),
        source: format!("catalog:{}", entry.package),
        kernel_path: pulled.kernel,
        initrd_path: Some(pulled.initrd),
        modules_dir: Some(pulled.modules_dir),
        version: Some(pulled.version),
        sha256: None,
        created_at_ms: now_ms(),
    };
    let r = record.clone();
    state.with_store(move |s| s.insert_kernel(&r)).await?;
    tracing::info!(kernel = name, "kernel pulled");
    Ok(record)
}

/// The recipe of a managed image.
async fn recipe(
    state: &Arc<DaemonState>,
    packages: Vec<String>,
    size_bytes: Option<u64>,
) -> Result<ImageRecipe, RpcError> {
    let ssh = state.ssh.clone();
    let key = tokio::task::spawn_blocking(move || ssh.public_key())
        .await
        .map_err(|e| RpcError::internal(format!("ssh task failed: {e}")))?
        .map_err(|e| RpcError::internal(error_chain(&e)))?;
    let agent = agent_binary(state).await;
    Ok(ImageRecipe {
        suite: "bookworm".into(),
        packages,
        ssh_public_key: key,
        size_bytes,
        agent,
    })
}

/// The static guest agent to bake into images: `BANGER_AGENT_BIN`, else
/// `banger-agent` next to bangerd if it is static, else cargo's static
/// build (`target/x86_64-unknown-linux-gnu/release/`, what
/// scripts/build-agent.sh makes) beside bangerd's build dir. `None` (with
/// a warning) builds images without an agent; their VMs boot without
/// waiting for one.
pub async fn agent_binary(state: &Arc<DaemonState>) -> Option<banger_image::AgentBinary> {
    let configured = state.config.agent_bin.clone();
    tokio::task::spawn_blocking(move || {
        let mut candidates = Vec::new();
        if let Some(p) = configured {
            candidates.push(p);
        } else if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Into::into)) {
            let dir: std::path::PathBuf = dir;
            candidates.push(dir.join("banger-agent"));
            if let Some(target) = dir.parent() {
                candidates.push(target.join("x86_64-unknown-linux-gnu/release/banger-agent"));
            }
        }
        let mut why = Vec::new();
        for c in &candidates {
            match banger_image::AgentBinary::load(c) {
                Ok(a) => return Some(a),
                Err(e) => why.push(error_chain(&e)),
            }
        }
        tracing::warn!(tried = ?why, "no static banger-agent found; images are built without the guest agent");
        None
    })
    .await
    .ok()
    .flatten()
}

/// The image `name`; the default image is built on first use.
pub async fn ensure_image(
    state: &Arc<DaemonState>,
    name: &str,
    op: Option<&Arc<Operation>>,
) -> Result<ImageRecord, RpcError> {
    let lock = state.artifact_locks.get(format!("image:{name}"));
    let _guard = lock.lock().await;
    if let Some(i) = stored_image(state, name).await? {
        for (what, path) in [
            ("root disk", Some(&i.rootfs_path)),
            ("work seed", i.work_seed_path.as_ref()),
        ] {
            if let Some(path) = path {
                if !path.exists() {
                    return Err(RpcError::new(
                        ErrorCode::NotFound,
                        format!(
                            "image {name:?} is broken: its {what} file {} is missing",
                            path.display()
                        ),
                    ));
                }
            }
        }
        return Ok(i);
    }
    if name != state.config.defaults.image {
        return Err(not_found("image", name));
    }
    build_locked(state, name, Vec::new(), None, op).await
}

/// `image.build`: builds a new managed image.
pub async fn build_image(
    state: &Arc<DaemonState>,
    name: &str,
    packages: Vec<String>,
    size_bytes: Option<u64>,
    op: Option<&Arc<Operation>>,
) -> Result<ImageRecord, RpcError> {
    let lock = state.artifact_locks.get(format!("image:{name}"));
    let _guard = lock.lock().await;
    if stored_image(state, name).await?.is_some() {
        return Err(RpcError::new(
            ErrorCode::Conflict,
            format!("image {name:?} already exists; delete it first"),
        ));
    }
    build_locked(state, name, packages, size_bytes, op).await
}

async fn build_locked(
    state: &Arc<DaemonState>,
    name: &str,
    packages: Vec<String>,
    size_bytes: Option<u64>,
    op: Option<&Arc<Operation>>,
) -> Result<ImageRecord, RpcError> {
    let recipe = recipe(state, packages, size_bytes).await?;
    let dest = image_dir(state, name);
    let cache = state.config.layout.cache_dir.clone();
    let r = recipe.clone();
    let built = with_stages(op, &format!("build image {name}"), move |progress| {
        banger_image::build_rootfs(&r, &cache, &dest, progress)
    })
    .await?;
    let record = ImageRecord {
        id: new_id("i-"),
        name: name.to_owned(),
        source: format!("debian:{}", recipe.suite),
        rootfs_path: built.rootfs,
        work_seed_path: Some(built.work_seed),
        fingerprint: Some(recipe.fingerprint()),
        size_bytes: built.size_bytes,
        managed: true,
        created_at_ms: now_ms(),
        has_agent: recipe.agent.is_some(),
    };
    let r = record.clone();
    state.with_store(move |s| s.insert_image(&r)).await?;
    tracing::info!(image = name, "image built");
    Ok(record)
}

pub async fn image_view(state: &Arc<DaemonState>, i: &ImageRecord) -> Result<ImageView, RpcError> {
    let current = if i.managed {
        Some(recipe(state, Vec::new(), None).await?.fingerprint())
    } else {
        None
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
        // Only images built without extra packages share the default recipe.
        stale: i.managed
            && i.source == "debian:bookworm"
            && current.is_some()
            && i.fingerprint != current
            && i.name == state.config.defaults.image,
        created_at_ms: i.created_at_ms,
    })
}

pub async fn delete_image(state: &Arc<DaemonState>, name: &str) -> Result<ImageRecord, RpcError> {
    let lock = state.artifact_locks.get(format!("image:{name}"));
    let _guard = lock.lock().await;
    let n = name.to_owned();
    let record = state.with_store(move |s| s.delete_image(&n)).await?;
    let dir = image_dir(state, &record.name);
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(record)
}

pub fn kernel_views(records: &[KernelRecord]) -> Vec<KernelView> {
    let mut views: Vec<KernelView> = catalog()
        .iter()
        .map(|e| {
            let pulled = records.iter().find(|k| k.name == e.name);
            kernel_view(e.name, e.description, e.default, pulled)
        })
        .collect();
    for k in records {
        if !catalog().iter().any(|e| e.name == k.name) {
            views.push(kernel_view(&k.name, "", false, Some(k)));
        }
    }
    views
}

pub fn kernel_view(
    name: &str,
    description: &str,
    default: bool,
    k: Option<&KernelRecord>,
) -> KernelView {
    KernelView {
        name: name.to_owned(),
        description: description.to_owned(),
        present: k.is_some_and(|k| k.kernel_path.exists()),
        default,
        version: k.and_then(|k| k.version.clone()),
        kernel: k.map(|k| k.kernel_path.display().to_string()),
        initrd: k.and_then(|k| k.initrd_path.as_ref().map(|p| p.display().to_string())),
    }
}

pub async fn delete_kernel(state: &Arc<DaemonState>, name: &str) -> Result<KernelRecord, RpcError> {
    let lock = state.artifact_locks.get(format!("kernel:{name}"));
    let _guard = lock.lock().await;
    let n = name.to_owned();
    let record = state.with_store(move |s| s.delete_kernel(&n)).await?;
    let dir = kernel_dir(state, &record.name);
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(record)
}
