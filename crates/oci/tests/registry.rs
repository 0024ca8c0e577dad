//! Pulls from a real registry (Debian's `docker-registry`) on loopback,
//! with images built by `umoci` and pushed by `skopeo`: nothing comes from
//! the internet. Each test prints why and returns when a tool is missing.

#![allow(clippy::unwrap_used)] // test code

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use banger_oci::{
    AuthSources, BlobCache, CacheError, Compression, Credentials, Digest, ImageReference, Platform,
    Progress, PullError, PullOptions, PulledImage, pull, resolve_credentials,
};

#[path = "support/registry.rs"]
mod support;

use support::{Layout, Registry, files_under, have_tools};

/// `127.0.0.1:PORT/name` as a reference.
fn reference_in(registry: &Registry, name: &str) -> ImageReference {
    format!("{}/{name}", registry.host()).parse().unwrap()
}

/// Runs a pull, recording its progress reports.
async fn pull_recorded(
    reference: &ImageReference,
    cache: &BlobCache,
    options: &PullOptions,
) -> (Result<PulledImage, PullError>, Vec<Progress>) {
    let mut seen = Vec::new();
    let result = pull(reference, cache, options, &mut |p: &Progress| seen.push(*p)).await;
    (result, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn sha256_file(path: &Path) -> Digest {
    Digest::of(&std::fs::read(path).unwrap())
}

/// A 2-layer image with a full run config, tagged `tag`.
fn two_layer_image(layout: &Layout, tag: &str) {
    layout.new_image(tag);
    layout.insert(tag, "a", b"first layer\n");
    layout.insert(tag, "b", b"second layer\n");
    layout.umoci(&[
        "config",
        "--image",
        &layout.image(tag),
        "--config.entrypoint",
        "/bin/app",
        "--config.cmd",
        "serve",
        "--config.env",
        "GREETING=hi",
        "--config.workingdir",
        "/srv",
        "--config.user",
        "1000:1000",
        "--config.exposedports",
        "8080/tcp",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_a_two_layer_image() {
    if !have_tools("pulls_a_two_layer_image") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    two_layer_image(&layout, "v1");
    registry.push(&layout, "v1", "team/app:v1", None, false);

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path().join("oci"));
    let reference = reference_in(&registry, "team/app:v1");
    let (result, progress) = pull_recorded(&reference, &cache, &PullOptions::default()).await;
    let image = result.unwrap();

    assert_eq!(
        image.manifest_digest,
        layout.manifest_digest("v1").parse().unwrap()
    );
    assert_eq!(image.index_digest, None);
    assert_eq!(image.layers.len(), 2);
    for layer in &image.layers {
        assert_eq!(layer.compression, Compression::Gzip);
        assert_eq!(
            layer.media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(layer.path, cache.blob_path(&layer.digest));
        assert_eq!(sha256_file(&layer.path), layer.digest);
        assert_eq!(std::fs::metadata(&layer.path).unwrap().len(), layer.size);
    }
    assert_eq!(
        sha256_file(&cache.blob_path(&image.config_digest)),
        image.config_digest
    );
    let config = &image.config;
    assert_eq!(config.entrypoint, Some(vec!["/bin/app".to_owned()]));
    assert_eq!(config.cmd, Some(vec!["serve".to_owned()]));
    assert!(
        config.env.contains(&"GREETING=hi".to_owned()),
        "{:?}",
        config.env
    );
    assert_eq!(config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.exposed_ports.len(), 1);
    assert_eq!(
        (
            config.exposed_ports[0].port,
            config.exposed_ports[0].protocol.as_str()
        ),
        (8080, "tcp")
    );
    assert_eq!(image.stats.blobs_downloaded, 3);
    assert_eq!(image.stats.blobs_cached, 0);

    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    let last = progress.last().unwrap();
    assert_eq!((last.layers_done, last.layers_total), (2, 2));
    assert_eq!((last.bytes_done, last.bytes_total), (total, total));
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done)
    );

    // The same pull again finds everything in the cache.
    let again = pull(&reference, &cache, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.stats.blobs_downloaded, 0);
    assert_eq!(again.stats.blobs_cached, 3);
    assert_eq!(again.layers, image.layers);

    // By digest, too.
    let by_digest = reference_in(&registry, &format!("team/app@{}", image.manifest_digest));
    let pinned = pull(&by_digest, &cache, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(pinned.layers, image.layers);

    // A tag the registry does not have.
    let missing = reference_in(&registry, "team/app:nope");
    let err = pull(&missing, &cache, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_base_layer_is_downloaded_once() {
    if !have_tools("a_shared_base_layer_is_downloaded_once") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    layout.new_image("base");
    layout.insert("base", "base", b"the shared base\n");
    layout.umoci(&["tag", "--image", &layout.image("base"), "one"]);
    layout.umoci(&["tag", "--image", &layout.image("base"), "two"]);
    layout.insert("one", "one", b"only in one\n");
    layout.insert("two", "two", b"only in two\n");
    registry.push(&layout, "one", "app:one", None, false);
    registry.push(&layout, "two", "app:two", None, false);

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path().join("oci"));
    let (one, _) = pull_recorded(
        &reference_in(&registry, "app:one"),
        &cache,
        &PullOptions::default(),
    )
    .await;
    let one = one.unwrap();
    assert_eq!(one.stats.blobs_downloaded, 3);

    let (two, progress) = pull_recorded(
        &reference_in(&registry, "app:two"),
        &cache,
        &PullOptions::default(),
    )
    .await;
    let two = two.unwrap();
    assert_eq!(two.layers[0].digest, one.layers[0].digest);
    assert_ne!(two.layers[1].digest, one.layers[1].digest);
    // Only the config and the new layer came over the wire.
    assert_eq!(two.stats.blobs_downloaded, 2);
    assert_eq!(two.stats.blobs_cached, 1);
    let config_size = std::fs::metadata(cache.blob_path(&two.config_digest))
        .unwrap()
        .len();
    assert_eq!(two.stats.bytes_downloaded, config_size + two.layers[1].size);
    // The cached base layer counted as done at once.
    let after_base = progress.iter().find(|p| p.layers_done == 1).unwrap();
    assert_eq!(after_base.bytes_done, two.layers[0].size);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_platform_index_resolves_to_the_wanted_platform() {
    if !have_tools("a_multi_platform_index_resolves_to_the_wanted_platform") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    for arch in ["amd64", "arm64"] {
        layout.new_image(arch);
        layout.insert(arch, "arch", format!("built for {arch}\n").as_bytes());
        layout.umoci(&[
            "config",
            "--image",
            &layout.image(arch),
            "--os",
            "linux",
            "--architecture",
            arch,
        ]);
    }
    // The index, written by hand as a blob and tagged `multi`.
    let entries: Vec<serde_json::Value> = ["amd64", "arm64"]
        .iter()
        .map(|arch| {
            let desc = layout.manifest_desc(arch);
            serde_json::json!({
                "mediaType": desc["mediaType"],
                "digest": desc["digest"],
                "size": desc["size"],
                "platform": {"os": "linux", "architecture": arch},
            })
        })
        .collect();
    let index_blob = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let index_digest = Digest::of(&index_blob);
    std::fs::write(
        layout.path().join("blobs/sha256").join(index_digest.hex()),
        &index_blob,
    )
    .unwrap();
    let mut index = layout.index();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest.to_string(),
            "size": index_blob.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(
        layout.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    registry.push(&layout, "multi", "multi:latest", None, true);

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path().join("oci"));
    let reference = reference_in(&registry, "multi");
    let content = |image: &PulledImage| -> Vec<u8> {
        // The layer is a gzipped tar holding `/arch`: its text is in the tar.
        let gz = std::fs::read(&image.layers[0].path).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg("gzip -dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(&gz)?;
                child.wait_with_output()
            })
            .unwrap();
        out.stdout
    };

    let host = pull(&reference, &cache, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap();
    if Platform::host().architecture == "amd64" {
        assert_eq!(
            host.manifest_digest,
            layout.manifest_digest("amd64").parse().unwrap()
        );
        assert!(contains(&content(&host), b"built for amd64\n"));
        assert_eq!(host.config.architecture.as_deref(), Some("amd64"));
    }
    assert_eq!(host.index_digest.as_ref(), Some(&index_digest));

    let arm_options = PullOptions {
        platform: Some("linux/arm64".parse().unwrap()),
        ..PullOptions::default()
    };
    let arm = pull(&reference, &cache, &arm_options, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        arm.manifest_digest,
        layout.manifest_digest("arm64").parse().unwrap()
    );
    assert!(contains(&content(&arm), b"built for arm64\n"));
    assert_eq!(arm.config.architecture.as_deref(), Some("arm64"));

    let s390x = PullOptions {
        platform: Some("linux/s390x".parse().unwrap()),
        ..PullOptions::default()
    };
    let err = pull(&reference, &cache, &s390x, &mut |_| {})
        .await
        .unwrap_err();
    match &err {
        PullError::NoMatchingPlatform { offered, .. } => {
            assert_eq!(
                offered,
                &vec!["linux/amd64".to_owned(), "linux/arm64".to_owned()]
            );
        }
        other => panic!("{other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("linux/s390x") && message.contains("linux/amd64, linux/arm64"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_with_passwords_wants_credentials() {
    if !have_tools("a_registry_with_passwords_wants_credentials") {
        return;
    }
    let registry = Registry::start(Some(("user", "pass")));
    let layout = Layout::new();
    two_layer_image(&layout, "v1");
    registry.push(&layout, "v1", "private/app:v1", Some("user:pass"), false);
    let reference = reference_in(&registry, "private/app:v1");
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path().join("oci"));

    // Anonymous: a clear 401 naming the registry and how to log in.
    let err = pull(&reference, &cache, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::AuthRequired { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&registry.host()) && message.contains("--username"),
        "{message}"
    );

    // Credentials from a config.json, as `docker login` writes it.
    let home = tempfile::tempdir().unwrap();
    let docker = home.path().join(".docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"dXNlcjpwYXNz"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let sources = AuthSources {
        config_dir: Some(docker),
        helper_path: None,
    };
    let credentials = resolve_credentials(reference.registry(), None, &sources).unwrap();
    assert_eq!(credentials.username(), Some("user"));
    let options = PullOptions {
        credentials,
        ..PullOptions::default()
    };
    let image = pull(&reference, &cache, &options, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(image.layers.len(), 2);

    // Wrong password: rejected, naming the user.
    let wrong = PullOptions {
        credentials: Credentials::Basic {
            username: "user".into(),
            password: "nope".into(),
        },
        ..PullOptions::default()
    };
    let other_cache = BlobCache::new(cache_dir.path().join("other"));
    let err = pull(&reference, &other_cache, &wrong, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::AuthRejected { .. }), "{err}");
    assert!(err.to_string().contains("\"user\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_blob_is_refused_and_leaves_nothing() {
    if !have_tools("a_corrupted_blob_is_refused_and_leaves_nothing") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    two_layer_image(&layout, "v1");
    registry.push(&layout, "v1", "app:v1", None, false);
    let reference = reference_in(&registry, "app:v1");

    // Find the second layer through a first pull, elsewhere.
    let scratch = tempfile::tempdir().unwrap();
    let good = pull(
        &reference,
        &BlobCache::new(scratch.path()),
        &PullOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap();
    let target = &good.layers[1].digest;

    // Flip one byte of the stored blob: same size, other content.
    let data = registry.blob_data(&target.to_string());
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path().join("oci"));
    let err = pull(&reference, &cache, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    match &err {
        PullError::Cache(CacheError::DigestMismatch { expected, .. }) => {
            assert_eq!(expected, target)
        }
        other => panic!("expected a digest mismatch, got: {other}"),
    }
    assert_eq!(files_under(cache.dir()), Vec::<PathBuf>::new());

    // Shorter content: refused on its size.
    std::fs::write(&data, &bytes[..middle]).unwrap();
    let err = pull(&reference, &cache, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Cache(CacheError::SizeMismatch { .. }) | PullError::Download { .. }
        ),
        "{err}"
    );
    assert_eq!(files_under(cache.dir()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_and_pulls_during_a_prune() {
    if !have_tools("prune_and_pulls_during_a_prune") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    layout.new_image("one");
    layout.insert("one", "base", b"base layer\n");
    layout.umoci(&["tag", "--image", &layout.image("one"), "two"]);
    // A bigger layer, so a download reports progress more than once.
    let big: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    layout.insert("one", "big", &big);
    layout.insert("two", "other", &big[..3_000_000]);
    registry.push(&layout, "one", "app:one", None, false);
    registry.push(&layout, "two", "app:two", None, false);

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path().join("oci"));
    let one = reference_in(&registry, "app:one");
    let image = pull(&one, &cache, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap();
    let config_size = std::fs::metadata(cache.blob_path(&image.config_digest))
        .unwrap()
        .len();
    let total: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + config_size;

    let dry = cache.prune(true).unwrap();
    assert_eq!((dry.blobs, dry.bytes, dry.dry_run), (3, total, true));
    assert_eq!(dry.dir, cache.dir());
    assert!(image.layers.iter().all(|l| l.path.exists()));
    let done = cache.prune(false).unwrap();
    assert_eq!((done.blobs, done.bytes, done.dry_run), (3, total, false));
    assert!(!cache.dir().exists());
    assert_eq!(std::fs::read_dir(cache_dir.path()).unwrap().count(), 0);

    // A prune in the middle of a layer's download: the pull still succeeds.
    let pruned: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (cache2, pruned2) = (cache.clone(), pruned.clone());
    let base_size = image.layers[0].size;
    let mut on_progress = move |p: &Progress| {
        let mut pruned = pruned2.lock().unwrap();
        if pruned.is_empty() && p.layers_done == 1 && p.bytes_done > base_size {
            pruned.push(cache2.prune(false).unwrap().blobs);
        }
    };
    let again = pull(&one, &cache, &PullOptions::default(), &mut on_progress)
        .await
        .unwrap();
    assert_eq!(
        pruned.lock().unwrap().len(),
        1,
        "no prune happened mid-download"
    );
    for layer in &again.layers {
        assert_eq!(sha256_file(&layer.path), layer.digest);
    }
    assert!(cache.blob_path(&again.config_digest).exists());

    // A prune that removes a layer found in the cache before the pull ends:
    // the pull fetches it again.
    let two = reference_in(&registry, "app:two");
    let cache3 = cache.clone();
    let mut pruned_once = false;
    let image_two = pull(
        &two,
        &cache,
        &PullOptions::default(),
        &mut move |p: &Progress| {
            if !pruned_once && p.layers_done == 1 && p.bytes_done > p.bytes_total / 2 {
                pruned_once = true;
                cache3.prune(false).unwrap();
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(image_two.layers[0].digest, again.layers[0].digest);
    assert!(image_two.stats.blobs_cached >= 1, "{:?}", image_two.stats);
    for layer in &image_two.layers {
        assert_eq!(sha256_file(&layer.path), layer.digest);
    }
    assert!(cache.blob_path(&image_two.config_digest).exists());
}
