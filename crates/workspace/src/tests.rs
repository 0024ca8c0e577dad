//! Against real git repositories in temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn sh(dir: &Path, script: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script}");
}

/// A repository with a tracked file, an untracked one, an ignored one,
/// a binary file and a tracked file deleted from the work tree.
fn project(dir: &Path) {
    sh(
        dir,
        "git init -q . && printf 'build/\\n*.log\\n' > .gitignore \
         && printf 'one\\ntwo\\n' > tracked.txt && mkdir -p src && echo 'fn main() {}' > src/main.rs \
         && printf 'gone\\n' > deleted.txt \
         && head -c 3000 /dev/urandom > blob.bin \
         && git add -A && git commit -q -m init && rm deleted.txt \
         && echo new > untracked.txt && mkdir -p build && echo out > build/out.o && echo x > debug.log",
    );
}

fn names(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|p| p.display().to_string()).collect()
}

/// Copies `files` of `from` into `to` (the guest's copy, as pulled).
fn copy_files(from: &Path, to: &Path, files: &[PathBuf]) {
    for f in files {
        let dest = to.join(f);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from.join(f), dest).unwrap();
    }
}

/// The paths a patch touches, from its `diff --git a/X b/X` headers.
fn patched(patch: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(patch)
        .lines()
        .filter_map(|l| l.strip_prefix("diff --git a/"))
        .map(|l| l.split(" b/").next().unwrap().to_owned())
        .collect()
}

#[test]
fn a_git_project_is_its_tracked_and_unignored_untracked_files() {
    let tmp = tempfile::tempdir().unwrap();
    project(tmp.path());
    let files = file_set(tmp.path()).unwrap();
    assert_eq!(
        names(&files),
        [
            ".gitignore",
            "blob.bin",
            "src/main.rs",
            "tracked.txt",
            "untracked.txt"
        ]
    );
    // A subdirectory of the repository is a project of its own.
    let sub = file_set(&tmp.path().join("src")).unwrap();
    assert_eq!(names(&sub), ["main.rs"]);
}

#[test]
fn outside_git_a_bangerignore_excludes() {
    let tmp = tempfile::tempdir().unwrap();
    sh(
        tmp.path(),
        "printf 'node_modules/\\n*.tmp\\n' > .bangerignore && mkdir -p node_modules/x src \
         && echo a > node_modules/x/i.js && echo b > src/a.txt && echo c > scratch.tmp && echo d > .hidden",
    );
    let files = file_set(tmp.path()).unwrap();
    assert_eq!(names(&files), [".bangerignore", ".hidden", "src/a.txt"]);
    assert!(matches!(
        file_set(&tmp.path().join("src/a.txt")),
        Err(WorkspaceError::NotADirectory(_))
    ));
}

#[test]
fn the_guests_changes_come_back_as_a_patch_that_applies_only_over_unchanged_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (host, guest, record) = (
        tmp.path().join("host"),
        tmp.path().join("guest"),
        tmp.path().join("base.git"),
    );
    std::fs::create_dir_all(&host).unwrap();
    std::fs::create_dir_all(&guest).unwrap();
    project(&host);
    let files = file_set(&host).unwrap();
    let (base, commit) = Base::record(&record, &host, &files).unwrap();
    assert_eq!(commit.len(), 40, "{commit}");

    let patch_file = tmp.path().join("guest.patch");
    let diff_text = |base: &Base| {
        base.diff(&guest, &patch_file).unwrap();
        std::fs::read(&patch_file).unwrap()
    };
    // Nothing changed in the guest: an empty patch.
    copy_files(&host, &guest, &files);
    assert!(diff_text(&base).is_empty());

    // The guest edits a file, adds one, deletes one, rewrites the binary
    // file and makes a build output its .gitignore excludes.
    sh(
        &guest,
        "printf 'one\\nTWO\\n' > tracked.txt && echo added > added.txt && rm untracked.txt \
         && head -c 2000 /dev/urandom > blob.bin && mkdir -p build && echo o > build/new.o",
    );
    let diff = base.diff(&guest, &patch_file).unwrap();
    let patch = std::fs::read(&patch_file).unwrap();
    assert_eq!(diff.patch_bytes, patch.len() as u64);
    let kinds: Vec<(&str, ChangeKind)> = diff
        .changes
        .iter()
        .map(|c| (c.path.as_str(), c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("added.txt", ChangeKind::Added),
            ("blob.bin", ChangeKind::Modified),
            ("tracked.txt", ChangeKind::Modified),
            ("untracked.txt", ChangeKind::Deleted),
        ]
    );
    assert_eq!(
        patched(&patch),
        ["added.txt", "blob.bin", "tracked.txt", "untracked.txt"],
        "{}",
        String::from_utf8_lossy(&patch)
    );
    assert!(String::from_utf8_lossy(&patch).contains("GIT binary patch"));
    // The same again: the diff leaves the record as it was.
    assert_eq!(diff_text(&base), patch);

    // An edit on the host to a file the patch touches: refused, nothing
    // changed.
    std::fs::write(host.join("tracked.txt"), "one\ntwo\nthree\n").unwrap();
    let before: Vec<Vec<u8>> = ["tracked.txt", "untracked.txt", "blob.bin"]
        .iter()
        .map(|f| std::fs::read(host.join(f)).unwrap())
        .collect();
    match base.apply(&host, &patch_file) {
        Err(WorkspaceError::HostChanged(paths)) => assert_eq!(paths, ["tracked.txt"]),
        other => panic!("{other:?}"),
    }
    let after: Vec<Vec<u8>> = ["tracked.txt", "untracked.txt", "blob.bin"]
        .iter()
        .map(|f| std::fs::read(host.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "a refused apply changes nothing");
    assert!(!host.join("added.txt").exists());

    // Put back as it was: the patch applies and the host has the guest's
    // files.
    std::fs::write(host.join("tracked.txt"), "one\ntwo\n").unwrap();
    let applied = base.apply(&host, &patch_file).unwrap();
    assert_eq!(
        applied,
        ["added.txt", "blob.bin", "tracked.txt", "untracked.txt"]
    );
    for f in ["tracked.txt", "added.txt", "blob.bin"] {
        assert_eq!(
            std::fs::read(host.join(f)).unwrap(),
            std::fs::read(guest.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(!host.join("untracked.txt").exists());
    // The base moved on: the guest now differs from it in nothing.
    assert!(diff_text(&base).is_empty());
}

#[test]
fn host_changes_pushed_in_move_the_base_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (host, record) = (tmp.path().join("host"), tmp.path().join("base.git"));
    std::fs::create_dir_all(&host).unwrap();
    project(&host);
    let files = file_set(&host).unwrap();
    let (base, first) = Base::record(&record, &host, &files).unwrap();
    assert!(base.changes(&host).unwrap().is_empty());
    sh(
        &host,
        "echo more >> tracked.txt && echo n > new.txt && rm untracked.txt && echo y > more.log",
    );
    let changes = base.changes(&host).unwrap();
    let paths: Vec<String> = changes.iter().map(|c| c.path.clone()).collect();
    assert_eq!(paths, ["new.txt", "tracked.txt", "untracked.txt"]);
    let second = base.advance(&host, &paths).unwrap();
    assert_ne!(first, second);
    assert!(base.changes(&host).unwrap().is_empty());
}
