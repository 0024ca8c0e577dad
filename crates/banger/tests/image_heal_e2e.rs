//! End to end: a home whose default image was built before the everyday
//! tools (curl, git, python3...) joined the recipe. The next create
//! rebuilds it (a stage says so and why), the new VM has curl, and a VM
//! made from the old image keeps working: its qcow2 root disk names the
//! old image's file as its backing file, which stays until no VM uses it.
//!
//! "Built before" is made honestly and cheaply: the image this banger
//! builds gets its `curl` removed (before any VM has booted from it) and
//! its row made what an earlier banger left after migration 5 (a
//! fingerprint of another recipe, no recorded recipe). Real guests under
//! QEMU (TCG), run serially; the kernel and image base are cached in the
//! user's cache dir.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{World, is_root, step, text};
use serde_json::Value;

fn images(w: &World) -> Vec<Value> {
    w.banger_json(&["image", "list"])
        .as_array()
        .unwrap()
        .clone()
}

fn image_named<'a>(all: &'a [Value], name: &str) -> Option<&'a Value> {
    all.iter().find(|i| i["name"] == name)
}

/// `vm exec NAME -- sh -c SCRIPT`: (exit code, stdout).
fn exec(w: &World, vm: &str, script: &str) -> (Option<i32>, String) {
    let out = w.banger(&["vm", "exec", vm, "--", "sh", "-c", script]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_stale_default_image_heals_on_the_next_create() {
    if !is_root() {
        eprintln!(
            "skipping image_heal_e2e: building the default image with mmdebstrap needs root (CI runs as root)"
        );
        return;
    }
    let w = common::vm_world();

    let t = step("an old VM, on a default image built before the everyday tools");
    w.banger_ok(&["vm", "create", "--name", "old", "--no-start"]);
    let before = images(&w);
    let old_image = image_named(&before, "default").unwrap().clone();
    let old_id = old_image["id"].as_str().unwrap().to_owned();
    let old_rootfs = PathBuf::from(old_image["rootfs"].as_str().unwrap());
    assert_eq!(old_image["stale"], false, "{old_image}");
    // Nothing has booted from it yet: its files may still be edited.
    w.banger_ok(&["daemon", "stop"]);
    let rm = Command::new("debugfs")
        .args(["-w", "-R", "rm /usr/bin/curl"])
        .arg(&old_rootfs)
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", text(&rm));
    let db = rusqlite::Connection::open(w.root().join("data/banger/banger.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE images SET recipe = NULL, fingerprint = 'an-earlier-recipe' WHERE id = ?1",
            [&old_id],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    let stale = image_named(&images(&w), "default").unwrap().clone();
    assert_eq!(stale["stale"], true, "{stale}");
    assert_eq!(stale["stale_reason"], "package set changed", "{stale}");
    let listed = w.banger_ok(&["image", "list"]);
    assert!(listed.contains("stale: package set changed"), "{listed}");
    w.banger_ok(&["vm", "start", "old"]);
    let (code, out) = exec(&w, "old", "command -v curl || echo no-curl");
    assert_eq!(
        (code, out.trim()),
        (Some(0), "no-curl"),
        "the old image has no curl"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("the next create rebuilds the image, saying why; the new VM has curl");
    let out = w.banger(&["vm", "create", "--name", "new"]);
    assert!(out.status.success(), "{}", text(&out));
    let stages = String::from_utf8_lossy(&out.stderr);
    assert!(
        stages.contains("rebuild image default (stale: package set changed)"),
        "no rebuild stage:\n{stages}"
    );
    let (code, version) = exec(
        &w,
        "new",
        "curl --version && python3 --version && git --version",
    );
    assert_eq!(code, Some(0), "{version}");
    assert!(version.starts_with("curl "), "{version}");
    let after = images(&w);
    let new_image = image_named(&after, "default").unwrap();
    let new_id = new_image["id"].as_str().unwrap();
    assert_ne!(new_id, old_id);
    assert_eq!(new_image["stale"], false, "{new_image}");
    let kept = image_named(&after, &format!("default@{old_id}")).expect("old image kept");
    assert_eq!(kept["replaced_by"], new_id, "{kept}");
    assert!(
        kept["stale_reason"]
            .as_str()
            .unwrap()
            .starts_with("replaced by a rebuild"),
        "{kept}"
    );
    assert!(old_rootfs.exists(), "the old VM's backing file is kept");
    assert_ne!(
        new_image["rootfs"].as_str().unwrap(),
        old_rootfs.to_str().unwrap()
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("the old VM still answers, and boots again from the old image");
    let (code, host) = exec(&w, "old", "hostname");
    assert_eq!((code, host.trim()), (Some(0), "old"));
    w.banger_ok(&["vm", "restart", "old"]);
    let (code, out) = exec(&w, "old", "hostname; command -v curl || echo no-curl");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["old", "no-curl"]
    );
    eprintln!("    {:?}", t.elapsed());

    step("once no VM uses the old image, it is removed");
    w.banger_ok(&["vm", "stop", "old"]);
    w.banger_ok(&["vm", "delete", "old"]);
    let left = images(&w);
    assert!(
        image_named(&left, &format!("default@{old_id}")).is_none(),
        "{left:?}"
    );
    assert!(!old_rootfs.exists(), "the old image's files are removed");
    w.banger_ok(&["vm", "stop", "new"]);
    w.banger_ok(&["vm", "delete", "new"]);
}
