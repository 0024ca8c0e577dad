//! Pulling an image: its manifest (an index resolved to one platform), its
//! config and its layers into the [`BlobCache`], each blob verified.
//!
//! The registry protocol (bearer token flow, basic auth, manifests and
//! blobs) is `oci-client`'s.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciManifest};

use crate::auth::Credentials;
use crate::cache::{BlobCache, CacheError, VerifiedBlob};
use crate::reference::{Digest, ImageReference, ReferenceError};

/// How many times a pull fetches its blobs again when a concurrent prune
/// removed some after they were written.
const PRUNE_RETRIES: usize = 3;

/// An OS/ARCH[/VARIANT] platform, as in `--platform linux/arm64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform {given:?} is not OS/ARCH or OS/ARCH/VARIANT (e.g. linux/amd64, linux/arm/v7)")]
pub struct PlatformParseError {
    pub given: String,
}

impl Platform {
    /// The platform of this host, as Go (and so image indexes) names it.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Self {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry for `other` serves this platform: same OS and
    /// architecture, and the same variant when this one names one (arm64's
    /// implicit variant is v8).
    fn accepts(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        let Some(want) = &self.variant else {
            return true;
        };
        let implicit = (self.architecture == "arm64").then_some("v8");
        other.variant.as_deref().or(implicit) == Some(want.as_str())
    }
}

impl FromStr for Platform {
    type Err = PlatformParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(PlatformParseError {
                given: s.to_owned(),
            });
        }
        Ok(Self {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials for the reference's registry (see [`crate::resolve_credentials`]).
    pub credentials: Credentials,
    /// The platform to pick from an image index; `None`: this host's.
    pub platform: Option<Platform>,
    /// Plain HTTP even to a registry that is not on loopback.
    pub insecure: bool,
}

/// Where a pull stands, reported after each chunk of a layer and each layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Layer bytes in the cache so far (cached layers count at once).
    pub bytes_done: u64,
    /// All layers' bytes.
    pub bytes_total: u64,
    pub layers_done: usize,
    pub layers_total: usize,
}

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer of a pulled image, in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
    /// The blob in the cache.
    pub path: PathBuf,
}

/// An exposed port of the image config (`"8080/tcp"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExposedPort {
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// What the image config says about running the image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` strings, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<ExposedPort>,
    pub os: Option<String>,
    pub architecture: Option<String>,
}

/// Blobs a pull fetched and found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullStats {
    /// Blobs (config and layers) downloaded.
    pub blobs_downloaded: usize,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Blobs already in the cache.
    pub blobs_cached: usize,
}

/// A pulled image: every blob it needs is in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    pub reference: ImageReference,
    /// The digest of the platform's image manifest.
    pub manifest_digest: Digest,
    /// The digest of the image index, when the reference named one.
    pub index_digest: Option<Digest>,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    pub stats: PullStats,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "registry {registry} refused access to {repository} (401 Unauthorized) without credentials; \
         the image may be private or not exist: log in with `docker login {registry}` \
         (credentials in ~/.docker/config.json) or pass --username and --password-stdin"
    )]
    AuthRequired {
        registry: String,
        repository: String,
    },
    #[error(
        "registry {registry} refused the credentials of {user:?} for {repository} (401 Unauthorized): \
         check them (in ~/.docker/config.json or --username/--password-stdin)"
    )]
    AuthRejected {
        registry: String,
        repository: String,
        user: String,
    },
    #[error("{reference} not found in its registry")]
    NotFound { reference: String },
    #[error("registry {registry} failed")]
    Registry {
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{reference} offers no image for {wanted}; it offers: {}", offered.join(", "))]
    NoMatchingPlatform {
        reference: String,
        wanted: Platform,
        offered: Vec<String>,
    },
    #[error("{reference}: the registry sent an image index where an image manifest was expected")]
    NestedIndex { reference: String },
    #[error("{reference}: invalid digest in the manifest")]
    BadDigest {
        reference: String,
        #[source]
        source: ReferenceError,
    },
    #[error("{reference}: descriptor of {digest} has a negative size")]
    BadSize { reference: String, digest: String },
    #[error(
        "{reference}: layer {digest} has media type {media_type:?}, which is not a (compressed) tar"
    )]
    UnsupportedLayer {
        reference: String,
        digest: Digest,
        media_type: String,
    },
    #[error("{reference}: the image config {digest} is not valid JSON")]
    BadConfig {
        reference: String,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read the image config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("download of blob {digest} from {registry} failed")]
    Download {
        registry: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(
        "blobs of {reference} kept vanishing from the cache (pruned during the pull {PRUNE_RETRIES} times)"
    )]
    CacheKeptVanishing { reference: String },
}

/// Pulls `reference` into `cache`, calling `progress` as layers arrive.
pub async fn pull(
    reference: &ImageReference,
    cache: &BlobCache,
    options: &PullOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<PulledImage, PullError> {
    let puller = Puller::new(reference, options);
    let (manifest, manifest_digest, index_digest) = puller.manifest(options).await?;
    let config_desc = puller.descriptor(&manifest.config)?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for desc in &manifest.layers {
        let (digest, size) = puller.descriptor(desc)?;
        let compression =
            compression(&desc.media_type).ok_or_else(|| PullError::UnsupportedLayer {
                reference: reference.to_string(),
                digest: digest.clone(),
                media_type: desc.media_type.clone(),
            })?;
        layers.push((desc, digest, size, compression));
    }

    let mut stats = PullStats::default();
    let mut attempt = 0;
    loop {
        // Blobs are downloaded and verified into temporary files first and
        // put in the cache only once all of them are: a failed pull adds
        // nothing to the cache.
        let config = puller
            .fetch(
                cache,
                &manifest.config,
                &config_desc,
                &mut stats,
                &mut |_| {},
            )
            .await?;
        let mut state = Progress {
            bytes_done: 0,
            bytes_total: layers.iter().map(|(_, _, size, _)| size).sum(),
            layers_done: 0,
            layers_total: layers.len(),
        };
        progress(&state);
        let mut fetched = Vec::with_capacity(layers.len());
        for (desc, digest, size, _) in &layers {
            let base = state.bytes_done;
            let blob = puller
                .fetch(
                    cache,
                    desc,
                    &(digest.clone(), *size),
                    &mut stats,
                    &mut |n| {
                        state.bytes_done = base + n;
                        progress(&state);
                    },
                )
                .await?;
            state.bytes_done = base + size;
            state.layers_done += 1;
            progress(&state);
            fetched.push(blob);
        }
        let config_path = config.commit().await?;
        let mut pulled = Vec::with_capacity(layers.len());
        for ((desc, digest, size, compression), blob) in layers.iter().zip(fetched) {
            pulled.push(Layer {
                digest: digest.clone(),
                size: *size,
                media_type: desc.media_type.clone(),
                compression: *compression,
                path: blob.commit().await?,
            });
        }
        let config_bytes = match tokio::fs::read(&config_path).await {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(PullError::ReadConfig {
                    path: config_path,
                    source,
                });
            }
        };
        // A prune may have run since a blob was found in the cache or put
        // there: all of them must still be there when the pull returns.
        let all_there = config_bytes.is_some()
            && pulled
                .iter()
                .all(|l| cache.get(&l.digest, l.size).is_some());
        match config_bytes {
            Some(bytes) if all_there => {
                let config = parse_config(&bytes).map_err(|source| PullError::BadConfig {
                    reference: reference.to_string(),
                    digest: config_desc.0.clone(),
                    source,
                })?;
                if index_digest.is_none() {
                    check_single_platform(reference, options, &config)?;
                }
                return Ok(PulledImage {
                    reference: reference.clone(),
                    manifest_digest,
                    index_digest,
                    config_digest: config_desc.0,
                    config,
                    layers: pulled,
                    stats,
                });
            }
            _ if attempt < PRUNE_RETRIES => {
                attempt += 1;
                tracing::debug!(%reference, "blobs pruned during the pull; fetching them again");
            }
            _ => {
                return Err(PullError::CacheKeptVanishing {
                    reference: reference.to_string(),
                });
            }
        }
    }
}

/// A blob found in the cache, or downloaded and verified but not yet in it.
enum Fetched {
    Cached(PathBuf),
    New(VerifiedBlob),
}

impl Fetched {
    async fn commit(self) -> Result<PathBuf, CacheError> {
        match self {
            Self::Cached(path) => Ok(path),
            Self::New(blob) => blob.commit().await,
        }
    }
}

struct Puller<'a> {
    reference: &'a ImageReference,
    oci_ref: oci_client::Reference,
    client: oci_client::Client,
    auth: oci_client::secrets::RegistryAuth,
    credentials: &'a Credentials,
}

impl<'a> Puller<'a> {
    fn new(reference: &'a ImageReference, options: &'a PullOptions) -> Self {
        let oci_ref = reference.to_oci();
        let protocol = if plain_http(reference, options.insecure) {
            ClientProtocol::HttpsExcept(vec![oci_ref.resolve_registry().to_owned()])
        } else {
            ClientProtocol::Https
        };
        let client = oci_client::Client::new(ClientConfig {
            protocol,
            // Platforms are chosen here (see `select`), to name the offered ones.
            platform_resolver: None,
            ..ClientConfig::default()
        });
        Self {
            reference,
            oci_ref,
            client,
            auth: options.credentials.to_oci(),
            credentials: &options.credentials,
        }
    }

    fn err(&self, e: OciDistributionError) -> PullError {
        let registry = self.reference.registry().to_owned();
        let repository = self.reference.repository().to_owned();
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => match self.credentials.username() {
                Some(user) => PullError::AuthRejected {
                    registry,
                    repository,
                    user: user.to_owned(),
                },
                None if self.credentials.is_anonymous() => PullError::AuthRequired {
                    registry,
                    repository,
                },
                None => PullError::AuthRejected {
                    registry,
                    repository,
                    user: "(token)".to_owned(),
                },
            },
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                    )
                }) =>
            {
                PullError::NotFound {
                    reference: self.reference.to_string(),
                }
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)
                }) =>
            {
                self.err(OciDistributionError::UnauthorizedError { url: String::new() })
            }
            source => PullError::Registry { registry, source },
        }
    }

    fn digest(&self, digest: &str) -> Result<Digest, PullError> {
        digest.parse().map_err(|source| PullError::BadDigest {
            reference: self.reference.to_string(),
            source,
        })
    }

    fn descriptor(&self, desc: &OciDescriptor) -> Result<(Digest, u64), PullError> {
        let digest = self.digest(&desc.digest)?;
        let size = u64::try_from(desc.size).map_err(|_| PullError::BadSize {
            reference: self.reference.to_string(),
            digest: desc.digest.clone(),
        })?;
        Ok((digest, size))
    }

    /// The image manifest for the wanted platform, its digest and the
    /// index's digest when there was one.
    async fn manifest(
        &self,
        options: &PullOptions,
    ) -> Result<
        (
            oci_client::manifest::OciImageManifest,
            Digest,
            Option<Digest>,
        ),
        PullError,
    > {
        let (manifest, digest) = self
            .client
            .pull_manifest(&self.oci_ref, &self.auth)
            .await
            .map_err(|e| self.err(e))?;
        let digest = self.digest(&digest)?;
        let index = match manifest {
            OciManifest::Image(image) => return Ok((image, digest, None)),
            OciManifest::ImageIndex(index) => index,
        };
        let wanted = options.platform.clone().unwrap_or_else(Platform::host);
        let entry =
            select(&index.manifests, &wanted).ok_or_else(|| PullError::NoMatchingPlatform {
                reference: self.reference.to_string(),
                wanted: wanted.clone(),
                offered: offered(&index.manifests),
            })?;
        let entry_ref = self.oci_ref.clone_with_digest(entry.digest.clone());
        let (manifest, image_digest) = self
            .client
            .pull_manifest(&entry_ref, &self.auth)
            .await
            .map_err(|e| self.err(e))?;
        match manifest {
            OciManifest::Image(image) => Ok((image, self.digest(&image_digest)?, Some(digest))),
            OciManifest::ImageIndex(_) => Err(PullError::NestedIndex {
                reference: self.reference.to_string(),
            }),
        }
    }

    /// The blob in the cache: found there, or downloaded and verified;
    /// `on_bytes` hears the bytes written so far.
    async fn fetch(
        &self,
        cache: &BlobCache,
        desc: &OciDescriptor,
        (digest, size): &(Digest, u64),
        stats: &mut PullStats,
        on_bytes: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Fetched, PullError> {
        if let Some(path) = cache.get(digest, *size) {
            stats.blobs_cached += 1;
            return Ok(Fetched::Cached(path));
        }
        tracing::debug!(%digest, size, "downloading blob");
        let mut stream = self
            .client
            .pull_blob_stream(&self.oci_ref, desc)
            .await
            .map_err(|e| self.err(e))?;
        let mut writer = cache.writer(digest, *size).await?;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    writer.write(&bytes).await?;
                    on_bytes(writer.written());
                }
                Err(e) => {
                    // oci-client checks the digest too, and reports a
                    // mismatch as a stream error at the end: say it our way.
                    let digest_err = e
                        .get_ref()
                        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>());
                    if digest_err && writer.written() == *size {
                        break;
                    }
                    return Err(PullError::Download {
                        registry: self.reference.registry().to_owned(),
                        digest: digest.clone(),
                        source: e,
                    });
                }
            }
        }
        stats.bytes_downloaded += writer.written();
        let blob = writer.finish().await?;
        stats.blobs_downloaded += 1;
        Ok(Fetched::New(blob))
    }
}

/// An image without an index serves the platform its config names: one
/// that is not the wanted platform (`--platform`, else the host's: an
/// image of another architecture cannot boot here) is refused, naming
/// the one it has. A config that names none is taken.
fn check_single_platform(
    reference: &ImageReference,
    options: &PullOptions,
    config: &ImageConfig,
) -> Result<(), PullError> {
    let (Some(os), Some(architecture)) = (&config.os, &config.architecture) else {
        return Ok(());
    };
    let wanted = &options.platform.clone().unwrap_or_else(Platform::host);
    let has = Platform {
        os: os.clone(),
        architecture: architecture.clone(),
        variant: None,
    };
    if wanted.accepts(&has) {
        return Ok(());
    }
    Err(PullError::NoMatchingPlatform {
        reference: reference.to_string(),
        wanted: wanted.clone(),
        offered: vec![has.to_string()],
    })
}

/// Docker's rule: plain HTTP for loopback registries (`localhost`,
/// 127.0.0.0/8, ::1) or when asked; TLS otherwise.
fn plain_http(reference: &ImageReference, insecure: bool) -> bool {
    insecure || reference.is_loopback_registry()
}

fn entry_platform(entry: &ImageIndexEntry) -> Option<Platform> {
    let p = entry.platform.as_ref()?;
    Some(Platform {
        os: p.os.to_string(),
        architecture: p.architecture.to_string(),
        variant: p.variant.clone().filter(|v| !v.is_empty()),
    })
}

/// The first entry serving `wanted`: with no variant asked, one without a
/// variant or arm64's v8 is preferred to others.
fn select<'e>(entries: &'e [ImageIndexEntry], wanted: &Platform) -> Option<&'e ImageIndexEntry> {
    let matching: Vec<(&ImageIndexEntry, Platform)> = entries
        .iter()
        .filter_map(|e| entry_platform(e).map(|p| (e, p)))
        .filter(|(_, p)| wanted.accepts(p))
        .collect();
    matching
        .iter()
        .find(|(_, p)| p.variant.is_none() || p.variant.as_deref() == Some("v8"))
        .or_else(|| matching.first())
        .map(|(e, _)| *e)
}

/// The platforms an index offers, without attestation entries (`unknown/unknown`).
fn offered(entries: &[ImageIndexEntry]) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .filter_map(entry_platform)
        .filter(|p| p.os != "unknown")
        .map(|p| p.to_string())
        .collect();
    out.dedup();
    out
}

fn compression(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        _ => return None,
    })
}

#[derive(Debug, Default, serde::Deserialize)]
struct RawImageConfig {
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

fn parse_config(bytes: &[u8]) -> Result<ImageConfig, serde_json::Error> {
    let raw: RawImageConfig = serde_json::from_slice(bytes)?;
    let run = raw.config.unwrap_or_default();
    let mut exposed_ports: Vec<ExposedPort> = run
        .exposed_ports
        .unwrap_or_default()
        .keys()
        .filter_map(|key| {
            let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
            match port.parse() {
                Ok(port) => Some(ExposedPort {
                    port,
                    protocol: protocol.to_ascii_lowercase(),
                }),
                Err(_) => {
                    tracing::warn!(
                        port = key,
                        "ignoring an exposed port that is not PORT[/PROTO]"
                    );
                    None
                }
            }
        })
        .collect();
    exposed_ports.sort();
    Ok(ImageConfig {
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        exposed_ports,
        os: raw.os,
        architecture: raw.architecture,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: &str, digest: &str) -> ImageIndexEntry {
        let p: Platform = platform.parse().unwrap();
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 1,
            "platform": {"os": p.os, "architecture": p.architecture, "variant": p.variant},
        }))
        .unwrap()
    }

    #[test]
    fn platforms_parse_and_print() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn selects_the_wanted_platform() {
        let entries = vec![
            entry("unknown/unknown", "att"),
            entry("linux/arm/v7", "armv7"),
            entry("linux/arm64/v8", "arm64"),
            entry("linux/amd64", "amd64"),
        ];
        let pick = |p: &str| select(&entries, &p.parse().unwrap()).map(|e| e.digest.clone());
        assert_eq!(pick("linux/amd64").as_deref(), Some("amd64"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("arm64"));
        assert_eq!(pick("linux/arm64/v8").as_deref(), Some("arm64"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("armv7"));
        assert_eq!(pick("linux/arm/v6"), None);
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(
            offered(&entries),
            vec!["linux/arm/v7", "linux/arm64/v8", "linux/amd64"]
        );
    }

    #[test]
    fn a_single_platform_image_must_be_the_wanted_platform() {
        let r: ImageReference = "127.0.0.1:5000/app:1".parse().unwrap();
        let config = |os: Option<&str>, arch: Option<&str>| ImageConfig {
            os: os.map(Into::into),
            architecture: arch.map(Into::into),
            ..Default::default()
        };
        let host = Platform::host();
        let any = PullOptions::default();
        let native = config(Some(&host.os), Some(&host.architecture));
        assert!(check_single_platform(&r, &any, &native).is_ok());
        assert!(check_single_platform(&r, &any, &config(None, None)).is_ok());
        let foreign = config(Some("linux"), Some("s390x"));
        let err = check_single_platform(&r, &any, &foreign)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/s390x") && err.contains(&host.to_string()),
            "{err}"
        );
        let asked = PullOptions {
            platform: Some("linux/s390x".parse().unwrap()),
            ..Default::default()
        };
        assert!(check_single_platform(&r, &asked, &foreign).is_ok());
    }

    #[test]
    fn parses_the_run_config() {
        let config = parse_config(
            br#"{"architecture":"amd64","os":"linux","config":{
                "Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["A=1","PATH=/bin"],
                "WorkingDir":"/srv","User":"1000:1000",
                "ExposedPorts":{"8080/tcp":{},"53/udp":{},"9000":{}}}}"#,
        )
        .unwrap();
        assert_eq!(config.entrypoint, Some(vec!["/bin/app".to_owned()]));
        assert_eq!(config.cmd, Some(vec!["--serve".to_owned()]));
        assert_eq!(config.env, vec!["A=1", "PATH=/bin"]);
        assert_eq!(config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(config.user.as_deref(), Some("1000:1000"));
        let ports: Vec<(u16, &str)> = config
            .exposed_ports
            .iter()
            .map(|p| (p.port, p.protocol.as_str()))
            .collect();
        assert_eq!(ports, vec![(53, "udp"), (8080, "tcp"), (9000, "tcp")]);
        assert_eq!(config.architecture.as_deref(), Some("amd64"));

        let empty = parse_config(br#"{"config":{"Entrypoint":null,"WorkingDir":""}}"#).unwrap();
        assert_eq!(empty, ImageConfig::default());
        assert_eq!(parse_config(b"{}").unwrap(), ImageConfig::default());
    }

    #[test]
    fn plain_http_only_for_loopback_or_insecure() {
        let r = |s: &str| s.parse::<ImageReference>().unwrap();
        assert!(plain_http(&r("localhost:5000/a"), false));
        assert!(plain_http(&r("127.0.0.2:5000/a"), false));
        assert!(!plain_http(&r("registry.example:5000/a"), false));
        assert!(!plain_http(&r("python"), false));
        assert!(plain_http(&r("registry.example:5000/a"), true));
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            compression("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            compression("application/vnd.wasm.content.layer.v1+wasm"),
            None
        );
    }
}
