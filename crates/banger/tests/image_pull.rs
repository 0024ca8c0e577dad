//! `banger image pull`, `image cache prune` and the errors of pulls,
//! against a real registry on loopback (tests/common/registry.rs). No VM
//! boots here: the images are checked on their ext4 root disks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::registry::{Layout, Registry, debugfs, files_under, have_tools};
use common::{World, text};

/// A world whose daemon bakes the static agent into images.
fn world() -> World {
    let mut w = World::new();
    w.extra_env
        .push(("BANGER_AGENT_BIN", common::static_agent()));
    w
}

/// A 2-layer image: `/hello`, then `/srv/app/data`, with a run config.
fn demo_image(layout: &Layout, tag: &str) {
    layout.new_image(tag);
    layout.add_layer(tag, &[("hello", b"hello from layer one\n")]);
    layout.add_layer(tag, &[("srv/app/data", b"layer two\n")]);
    layout.umoci(&[
        "config",
        "--image",
        &layout.image(tag),
        "--config.cmd",
        "sh",
        "--config.env",
        "FOO=bar",
        "--config.workingdir",
        "/srv",
        "--config.exposedports",
        "8080/tcp",
    ]);
}

#[test]
fn a_pulled_image_is_listed_with_its_origin_and_has_the_images_files() {
    if !have_tools("a_pulled_image_is_listed_with_its_origin_and_has_the_images_files") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    demo_image(&layout, "1");
    registry.push(&layout, "1", "demo:1", None, false);
    let digest = layout.manifest_digest("1");
    let reference = format!("{}/demo:1", registry.host());
    let w = world();

    let image = w.banger_json(&["image", "pull", &reference]);
    assert_eq!(image["name"], "demo-1", "{image}");
    assert_eq!(image["origin"]["kind"], "pulled");
    assert_eq!(image["origin"]["reference"], reference.as_str());
    assert_eq!(image["origin"]["digest"], digest.as_str());
    assert_eq!(image["config"]["env"][0], "FOO=bar");
    assert_eq!(image["config"]["working_dir"], "/srv");
    assert_eq!(image["config"]["cmd"][0], "sh");
    assert_eq!(image["config"]["exposed_ports"][0]["port"], 8080);

    let listed = w.banger_json(&["image", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["origin"]["digest"], digest.as_str());
    let list = w.banger_ok(&["image", "list"]);
    assert!(
        list.contains("ORIGIN") && list.contains("pulled @"),
        "{list}"
    );
    let show = w.banger_ok(&["image", "show", "demo-1"]);
    for want in ["pulled", digest.as_str(), "FOO=bar", "/srv", "8080/tcp"] {
        assert!(show.contains(want), "{want} not in:\n{show}");
    }

    // The root disk has the layers' files and banger's own.
    let rootfs = PathBuf::from(image["rootfs"].as_str().unwrap());
    let root = debugfs(&rootfs, "ls -l /");
    assert!(root.contains("hello"), "{root}");
    assert_eq!(debugfs(&rootfs, "cat /hello"), "hello from layer one\n");
    assert_eq!(debugfs(&rootfs, "cat /srv/app/data"), "layer two\n");
    let banger = debugfs(&rootfs, "ls -l /.banger");
    for f in ["init", "authorized_keys", "image-config.json"] {
        assert!(banger.contains(f), "{f} not in /.banger:\n{banger}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&debugfs(&rootfs, "cat /.banger/image-config.json")).unwrap();
    assert_eq!(config["WorkingDir"], "/srv", "{config}");
    assert!(Path::new(image["work_seed"].as_str().unwrap()).is_file());

    // The operation's stages, as `op list` keeps them.
    let ops = w.banger_json(&["ops"]);
    let op = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "image.pull")
        .expect("the pull operation");
    let stages: Vec<&str> = op["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in [
        "resolve",
        "download",
        "layer 1/2",
        "layer 2/2",
        "flatten",
        "record",
    ] {
        assert!(stages.contains(&want), "{want} not in {stages:?}");
    }

    // The same name again is a conflict (exit 5).
    let again = w.banger(&["image", "pull", &reference]);
    assert_eq!(again.status.code(), Some(5), "{}", text(&again));
}

#[test]
fn a_tampered_blob_fails_the_pull_and_leaves_nothing() {
    if !have_tools("a_tampered_blob_fails_the_pull_and_leaves_nothing") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    demo_image(&layout, "1");
    registry.push(&layout, "1", "demo:1", None, false);
    // The second layer's stored bytes change, its size does not.
    let layer = layout.layer_digests("1")[1].clone();
    let data = registry.blob_data(&layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let w = world();
    let out = w.banger(&["image", "pull", &format!("{}/demo:1", registry.host())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupted or tampered"), "{err}");
    assert!(err.contains(&layer), "{err}");
    assert_eq!(w.banger_json(&["image", "list"]), serde_json::json!([]));
    let images = files_under(&w.root().join("data/banger/images"));
    assert!(images.is_empty(), "files left: {images:?}");
    let hex = layer.strip_prefix("sha256:").unwrap();
    let cached = files_under(&w.root().join("cache/banger/oci"));
    assert!(
        !cached.iter().any(|p| p.to_string_lossy().contains(hex)),
        "the bad blob was cached: {cached:?}"
    );
}

#[test]
fn prune_reports_then_frees_the_blob_cache() {
    if !have_tools("prune_reports_then_frees_the_blob_cache") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    demo_image(&layout, "1");
    registry.push(&layout, "1", "demo:1", None, false);
    let w = world();
    // A missing cache counts as empty.
    let empty = w.banger_json(&["image", "cache", "prune", "--dry-run"]);
    assert_eq!(
        (empty["blobs"].as_u64(), empty["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    w.banger_json(&["image", "pull", &format!("{}/demo:1", registry.host())]);
    let cache = w.root().join("cache/banger/oci");
    let before = files_under(&cache);
    // Config and two layers.
    assert_eq!(before.len(), 3, "{before:?}");
    let bytes: u64 = before
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    let dry = w.banger_json(&["image", "cache", "prune", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["blobs"], 3, "{dry}");
    assert_eq!(dry["bytes"].as_u64(), Some(bytes), "{dry}");
    assert_eq!(dry["dir"], cache.display().to_string());
    assert_eq!(files_under(&cache), before, "a dry run deletes nothing");

    let text_out = w.banger_ok(&["image", "cache", "prune"]);
    assert!(
        text_out.starts_with("freed ") && text_out.contains("in 3 blobs"),
        "{text_out}"
    );
    assert!(files_under(&cache).is_empty());
    let after = w.banger_json(&["image", "cache", "prune", "--dry-run"]);
    assert_eq!(
        (after["blobs"].as_u64(), after["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    // The pulled image does not need the cache.
    assert_eq!(w.names(&["image", "list"]), ["demo-1"]);
}

#[test]
fn a_registry_that_wants_a_password_says_how_to_log_in() {
    if !have_tools("a_registry_that_wants_a_password_says_how_to_log_in") {
        return;
    }
    let registry = Registry::start(Some(("ci", "s3cret")));
    let layout = Layout::new();
    demo_image(&layout, "1");
    registry.push(&layout, "1", "private/demo:1", Some("ci:s3cret"), false);
    let reference = format!("{}/private/demo:1", registry.host());
    let w = world();

    let out = w.banger(&["image", "pull", &reference]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["401", "docker login", "--password-stdin"] {
        assert!(err.contains(want), "{want} not in {err}");
    }
    assert_eq!(w.banger_json(&["image", "list"]), serde_json::json!([]));

    // --username with the password on stdin.
    let mut child = w
        .command(common::BANGER)
        .args([
            "image",
            "pull",
            &reference,
            "--json",
            "--username",
            "ci",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Docker's config.json (the daemon's HOME), under another name.
    let docker = w.root().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"Y2k6czNjcmV0"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let image = w.banger_json(&["image", "pull", &reference, "--name", "from-config"]);
    assert_eq!(image["origin"]["kind"], "pulled");
    assert_eq!(w.names(&["image", "list"]), ["demo-1", "from-config"]);
}

#[test]
fn bad_input_to_pull_and_promote_is_refused_by_name() {
    if !have_tools("bad_input_to_pull_and_promote_is_refused_by_name") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    demo_image(&layout, "1");
    registry.push(&layout, "1", "demo:1", None, false);
    let reference = format!("{}/demo:1", registry.host());
    let w = world();
    let refused = |args: &[&str], code: i32, wants: &[&str]| {
        let out = w.banger(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        for want in wants {
            assert!(err.contains(want), "{args:?}: {want} not in {err}");
        }
        assert!(err.contains("(op-"), "{args:?}: no op id in {err}");
    };
    refused(
        &["image", "pull", "Not A/Reference"],
        2,
        &["Not A/Reference"],
    );
    refused(&["image", "pull", "demo@sha256:abc"], 2, &["sha256:abc"]);
    refused(
        &["image", "pull", &reference, "--platform", "linux"],
        2,
        &["linux"],
    );
    refused(
        &["image", "pull", &reference, "--platform", "windows/amd64"],
        4,
        &["windows/amd64", "linux/amd64"],
    );
    refused(
        &["image", "pull", &reference, "--name", "Bad_Name"],
        2,
        &["Bad_Name"],
    );
    refused(
        &["image", "promote", "ghost", "--name", "new"],
        4,
        &["ghost"],
    );
    w.banger_json(&["image", "pull", &reference, "--name", "taken"]);
    refused(
        &["image", "pull", &reference, "--name", "taken"],
        5,
        &["taken"],
    );
    // Nothing half-made is left by any of them.
    assert_eq!(w.names(&["image", "list"]), ["taken"]);
}

#[test]
fn a_second_pull_downloads_only_the_new_layer_and_survives_a_prune() {
    if !have_tools("a_second_pull_downloads_only_the_new_layer_and_survives_a_prune") {
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    demo_image(&layout, "1");
    layout.umoci(&["tag", "--image", &layout.image("1"), "2"]);
    layout.add_layer("2", &[("srv/app/extra", b"only in two\n")]);
    registry.push(&layout, "1", "demo:1", None, false);
    registry.push(&layout, "2", "demo:2", None, false);
    let w = world();
    let gets = |digest: &str| {
        registry
            .log()
            .lines()
            .filter(|l| l.contains("method=GET") && l.contains(&format!("/blobs/{digest}")))
            .count()
    };

    w.banger_json(&["image", "pull", &format!("{}/demo:1", registry.host())]);
    w.banger_json(&["image", "pull", &format!("{}/demo:2", registry.host())]);
    let layers = layout.layer_digests("2");
    assert_eq!(layers.len(), 3);
    for shared in &layers[..2] {
        assert_eq!(
            gets(shared),
            1,
            "{shared} fetched once:\n{}",
            registry.log()
        );
    }
    assert_eq!(gets(&layers[2]), 1, "the new layer fetched");

    // A pull while prunes run: it succeeds (a prune waits for it, or the
    // pull fetches again what a prune took), and its image is whole.
    let reference = format!("{}/demo:2", registry.host());
    let pull = w
        .command(common::BANGER)
        .args(["image", "pull", &reference, "--name", "during", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..3 {
        w.banger_json(&["image", "cache", "prune"]);
    }
    let out = pull.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let image: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rootfs = PathBuf::from(image["rootfs"].as_str().unwrap());
    assert_eq!(debugfs(&rootfs, "cat /srv/app/extra"), "only in two\n");
    assert_eq!(debugfs(&rootfs, "cat /hello"), "hello from layer one\n");
}
