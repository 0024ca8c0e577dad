//! Workspaces end to end, with a real git repository on the host and a
//! real guest under QEMU (TCG): `vm create --workspace` puts the project
//! in (tracked, untracked and binary files; not the ignored ones); the
//! guest edits, adds and deletes; `workspace diff` shows exactly that;
//! `workspace apply` refuses, changing nothing, while the host changed a
//! file the patch touches, then reproduces the guest's changes on the
//! host (`git status` agrees); `workspace sync` pushes the host's changes
//! in and refuses a file the guest changed too; `vm run --workspace`
//! runs in the workspace.
//!
//! Needs root (the default image is built with mmdebstrap); prints why
//! and passes vacuously without.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::Path;
use std::process::Command;

use common::{is_root, step, text};

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn guest(w: &common::World, script: &str) -> String {
    let out = w.banger(&["vm", "exec", "ws", "--", "sh", "-c", script]);
    assert!(out.status.success(), "guest {script}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Every file of the project (outside .git) with its sha256.
fn tree_hashes(dir: &Path) -> String {
    sh(
        dir,
        "find . -path ./.git -prune -o -type f -print | sort | xargs sha256sum",
    )
}

#[test]
fn a_project_in_and_its_changes_back() {
    if !is_root() {
        eprintln!("skipped: the default image is built with mmdebstrap, which needs root");
        return;
    }
    let w = common::vm_world();
    let proj = w.root().join("proj");
    std::fs::create_dir(&proj).unwrap();
    sh(
        &proj,
        "git init -q . && printf 'build/\\n*.log\\n' > .gitignore \
         && printf 'one\\ntwo\\n' > tracked.txt && printf 'bye\\n' > del.txt \
         && mkdir -p src && echo 'fn main() {}' > src/main.rs \
         && head -c 50000 /dev/urandom > blob.bin \
         && git add -A && git commit -q -m init \
         && echo untracked > untracked.txt \
         && mkdir -p build && echo out > build/out.o && echo noise > debug.log",
    );
    let blob_sum = sh(&proj, "sha256sum blob.bin | cut -d' ' -f1");

    let t = step("vm create --workspace: a stage; tracked, untracked and binary in; ignored out");
    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "ws",
        "--workspace",
        proj.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stages = String::from_utf8_lossy(&out.stderr);
    assert!(stages.contains("workspace"), "{stages}");
    let listed = guest(&w, "cd /root/work && find . -type f | sort");
    assert_eq!(
        listed,
        "./.gitignore\n./blob.bin\n./del.txt\n./src/main.rs\n./tracked.txt\n./untracked.txt\n",
        "the project's files and nothing else"
    );
    assert_eq!(
        guest(&w, "sha256sum /root/work/blob.bin | cut -d' ' -f1"),
        blob_sum
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("by hand, for comparison: tar c | vm exec tar x; 20 MiB into a slow reader");
    // Flow control: stdin goes no faster than the guest process reads
    // (before it, a reader that waited made the agent drop input).
    let out = w
        .command("sh")
        .arg("-c")
        .arg(format!(
            "git ls-files -z | tar c --null -T - | {} vm exec ws -- sh -c 'mkdir -p /root/hand && tar x -C /root/hand && find /root/hand -type f | sort'",
            common::BANGER
        ))
        .current_dir(&proj)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/root/hand/.gitignore\n/root/hand/blob.bin\n/root/hand/del.txt\n/root/hand/src/main.rs\n/root/hand/tracked.txt\n"
    );
    let random = w.root().join("random.bin");
    sh(
        w.root(),
        &format!("head -c 20971520 /dev/urandom > {}", random.display()),
    );
    let want = sh(w.root(), "sha256sum random.bin | cut -d' ' -f1");
    let out = w
        .command("sh")
        .arg("-c")
        .arg(format!(
            "{} vm exec ws -- sh -c 'sleep 3; sha256sum | cut -d\" \" -f1' < {}",
            common::BANGER,
            random.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    guest(&w, "rm -rf /root/hand");
    eprintln!("    {:?}", t.elapsed());

    let t = step("the guest edits, adds and deletes; diff shows exactly that");
    guest(
        &w,
        "cd /root/work && printf 'one\\nTWO\\n' > tracked.txt && echo added > added.txt \
         && rm del.txt && mkdir -p build && echo o > build/new.o && echo n > more.log",
    );
    assert_eq!(
        w.banger_ok(&["workspace", "diff", "ws", "--stat"]),
        "A added.txt\nD del.txt\nM tracked.txt\n"
    );
    let patch = w.banger_ok(&["workspace", "diff", "ws"]);
    let headers: Vec<&str> = patch
        .lines()
        .filter(|l| l.starts_with("diff --git"))
        .collect();
    assert_eq!(
        headers,
        [
            "diff --git a/added.txt b/added.txt",
            "diff --git a/del.txt b/del.txt",
            "diff --git a/tracked.txt b/tracked.txt",
        ],
        "{patch}"
    );
    assert!(patch.contains("+TWO"), "{patch}");
    // The patch applies as git's own (into a copy of the project).
    let copy = w.root().join("copy");
    sh(
        w.root(),
        &format!("cp -a {} {}", proj.display(), copy.display()),
    );
    std::fs::write(w.root().join("p.diff"), &patch).unwrap();
    sh(&copy, "git apply --check ../p.diff");
    eprintln!("    {:?}", t.elapsed());

    let t = step("a host edit to tracked.txt: apply refuses, naming it, and changes nothing");
    std::fs::write(proj.join("tracked.txt"), "one\ntwo\nthree\n").unwrap();
    let before = tree_hashes(&proj);
    let out = w.banger(&["workspace", "apply", "ws"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tracked.txt") && err.contains("changed on the host"),
        "{err}"
    );
    assert!(err.contains("(op-"), "{err}");
    assert_eq!(
        tree_hashes(&proj),
        before,
        "a refused apply changes nothing"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("host edit undone: apply reproduces the guest's changes; git status agrees");
    sh(&proj, "git checkout -q -- tracked.txt");
    let applied = w.banger_json(&["workspace", "apply", "ws"]);
    let changes: Vec<(String, String)> = applied["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("added.txt".to_owned(), "added".to_owned()),
            ("del.txt".to_owned(), "deleted".to_owned()),
            ("tracked.txt".to_owned(), "modified".to_owned()),
        ]
    );
    assert_eq!(
        sh(&proj, "git status --porcelain"),
        " D del.txt\n M tracked.txt\n?? added.txt\n?? untracked.txt\n"
    );
    assert_eq!(
        std::fs::read_to_string(proj.join("tracked.txt")).unwrap(),
        "one\nTWO\n"
    );
    assert!(!proj.join("more.log").exists() && !proj.join("build/new.o").exists());
    assert_eq!(
        w.banger_ok(&["workspace", "diff", "ws", "--stat"]),
        "",
        "nothing left to apply"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("sync: the host's edit, new file and deletion pushed in");
    sh(
        &proj,
        "echo 'fn main() { println!(\"hi\"); }' > src/main.rs && echo fresh > fresh.txt && rm untracked.txt",
    );
    assert_eq!(
        w.banger_ok(&["workspace", "sync", "ws"]),
        "A fresh.txt\nM src/main.rs\nD untracked.txt\n"
    );
    assert_eq!(
        guest(
            &w,
            "cd /root/work && cat src/main.rs fresh.txt && test ! -e untracked.txt && echo gone"
        ),
        "fn main() { println!(\"hi\"); }\nfresh\ngone\n"
    );
    assert_eq!(w.banger_ok(&["workspace", "diff", "ws", "--stat"]), "");
    eprintln!("    {:?}", t.elapsed());

    let t = step("vm run --workspace on the same vm: the command runs in /root/work");
    let out = w.banger(&[
        "vm",
        "run",
        "--name",
        "ws",
        "--workspace",
        proj.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "pwd && cat fresh.txt",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/root/work\nfresh\n");
    eprintln!("    {:?}", t.elapsed());

    let t = step("sync refuses a file both sides changed, and pushes nothing");
    guest(&w, "echo guest > /root/work/fresh.txt");
    std::fs::write(proj.join("fresh.txt"), "host\n").unwrap();
    std::fs::write(proj.join("other.txt"), "other\n").unwrap();
    let out = w.banger(&["workspace", "sync", "ws"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fresh.txt") && err.contains("changed in the guest too"),
        "{err}"
    );
    assert_eq!(
        guest(
            &w,
            "cat /root/work/fresh.txt; test ! -e /root/work/other.txt && echo none"
        ),
        "guest\nnone\n"
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("bad input: no workspace, a missing directory, a second push");
    w.banger_ok(&["vm", "create", "--name", "bare", "--no-start"]);
    let out = w.banger(&["workspace", "diff", "bare"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no workspace"),
        "{}",
        text(&out)
    );
    let out = w.banger(&["workspace", "push", "ws", "/no/such/dir"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such directory"),
        "{}",
        text(&out)
    );
    let out = w.banger(&["workspace", "push", "ws", proj.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has a workspace"),
        "{}",
        text(&out)
    );
    eprintln!("    {:?}", t.elapsed());

    let t = step("delete: the workspace record goes with the vm");
    let id = w.banger_json(&["vm", "show", "ws"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let vm_dir = w.root().join("data/banger/vms").join(&id);
    assert!(vm_dir.join("workspace.git").is_dir());
    w.banger_ok(&["vm", "delete", "--force", "ws", "bare"]);
    assert!(!vm_dir.exists());
    assert!(w.names(&["vm", "list"]).is_empty());
    eprintln!("    {:?}", t.elapsed());
}
