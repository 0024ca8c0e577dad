//! End to end, images pulled from a registry (docs/images.md, "Pulling
//! images"): a real registry on loopback (tests/common/registry.rs) serves
//! images this test makes from Debian's busybox-static, and real guests
//! boot them under QEMU (TCG) with banger's agent as init, driven through
//! the real CLI:
//!
//! - `vm run --image REF` pulls and runs the image's cmd; with a command,
//!   runs it with the image's env, working directory and user, and exits
//!   with its status;
//! - in the guest, the layers were applied as the image says: a deleted
//!   file is gone, an opaque directory has only its new contents, owners,
//!   modes, hard and symbolic links and a device node are kept;
//! - `vm ssh` (no SSH server) runs through the agent and says so once;
//!   `vm exec`, `vm cp`, `vm stats`, `vm ports` and `vm fork` work;
//! - `image promote` of the stopped VM: a new VM from it has the file
//!   written in the first;
//! - a Debian root filesystem image (mmdebstrap minbase, no init) boots
//!   the same way.
//!
//! Needs root (device nodes and owners in the layer), QEMU, the registry
//! tools and busybox-static (`scripts/deps.sh`, `ensure_test_deps`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::registry::{Layout, Registry, have_tools, run};
use common::{World, is_root, step, text};
use serde_json::Value;

/// The host's busybox (Debian's busybox-static: one static binary).
const BUSYBOX: &str = "/bin/busybox";

fn write(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// Two layers. The first: busybox and its applet links, users, the
/// directories an image has, `/data/old.txt`, `/dir/{a,b}`. The second
/// deletes `/data/old.txt`, replaces `/dir` (opaque) with `/dir/new`, and
/// adds links, a device node, a setuid file and files of other owners.
fn layered_busybox(layout: &Layout, tag: &str) {
    layout.new_image(tag);
    let base = tempfile::tempdir().unwrap();
    let b = base.path();
    write(
        &b.join("bin/busybox"),
        &std::fs::read(BUSYBOX).unwrap(),
        0o755,
        None,
    );
    let applets = run(Command::new(BUSYBOX).arg("--list"));
    for a in applets.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", b.join("bin").join(a)).unwrap();
    }
    write(
        &b.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
        0o644,
        None,
    );
    write(
        &b.join("etc/group"),
        b"root:x:0:\napp:x:1000:\n",
        0o644,
        None,
    );
    for d in ["root", "tmp", "home/app", "srv/work"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    std::fs::set_permissions(b.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(b.join("srv/work"), Some(1000), Some(1000)).unwrap();
    write(&b.join("data/old.txt"), b"old\n", 0o644, None);
    write(&b.join("data/keep.txt"), b"keep\n", 0o644, None);
    write(&b.join("dir/a"), b"a\n", 0o644, None);
    write(&b.join("dir/b"), b"b\n", 0o644, None);
    layout.add_layer_dir(tag, b);

    let top = tempfile::tempdir().unwrap();
    let t = top.path();
    write(&t.join("data/.wh.old.txt"), b"", 0o644, None);
    write(&t.join("dir/.wh..wh..opq"), b"", 0o644, None);
    write(&t.join("dir/new"), b"new\n", 0o644, None);
    write(&t.join("srv/hard1"), b"linked\n", 0o644, None);
    std::fs::hard_link(t.join("srv/hard1"), t.join("srv/hard2")).unwrap();
    std::os::unix::fs::symlink("hard1", t.join("srv/link")).unwrap();
    run(Command::new("mknod")
        .arg(t.join("srv/null"))
        .args(["c", "1", "3"]));
    write(&t.join("srv/suid"), b"#!/bin/sh\n", 0o4755, None);
    write(&t.join("srv/owned"), b"theirs\n", 0o640, Some((1234, 5678)));
    layout.add_layer_dir(tag, t);

    layout.umoci(&[
        "config",
        "--image",
        &layout.image(tag),
        "--config.env",
        "FOO=from-image",
        "--config.workingdir",
        "/srv/work",
        "--config.user",
        "app",
        "--config.cmd",
        "sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo entrypoint ran as $(id -u) in $(pwd)",
    ]);
}

fn lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs `script` in the VM through `vm exec` and returns its stdout.
fn exec(w: &World, vm: &str, script: &str) -> String {
    let out = w.banger(&["vm", "exec", vm, "--", "sh", "-c", script]);
    assert!(out.status.success(), "{script}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pulled_images_boot_with_banger_init() {
    if !is_root() {
        eprintln!(
            "skipping oci_e2e: the test image holds a device node and files of other owners, which need root to make (CI runs as root)"
        );
        return;
    }
    if !have_tools("oci_e2e") {
        return;
    }
    if !Path::new(BUSYBOX).is_file() {
        eprintln!("skipping oci_e2e: no {BUSYBOX} (apt-get install busybox-static)");
        return;
    }
    let registry = Registry::start(None);
    let layout = Layout::new();
    layered_busybox(&layout, "layered");
    registry.push(&layout, "layered", "test/busybox:layered", None, false);
    let reference = format!("{}/test/busybox:layered", registry.host());
    let w = common::template_world();

    let t = step("vm run --name bb --image REF: pulled, its cmd runs");
    let out = w.banger(&["vm", "run", "--name", "bb", "--image", &reference]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        lines(&out),
        ["entrypoint ran as 1000 in /srv/work"],
        "{}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is image busybox-layered"),
        "the pull is said: {stderr}"
    );
    eprintln!("    {:.1} s", t.elapsed().as_secs_f64());

    step("vm run with a command: the image's env, workdir and user, its exit code");
    let out = w.banger(&[
        "vm",
        "run",
        "--name",
        "bb",
        "--image",
        &reference,
        "--",
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(lines(&out), ["from-image", "/srv/work", "1000"]);
    // A new VM of the same reference: the image is not pulled again.
    let out = w.banger(&[
        "vm",
        "create",
        "--name",
        "bb2",
        "--image",
        &reference,
        "--no-start",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already pulled"),
        "{}",
        text(&out)
    );
    let out = w.banger(&["vm", "delete", "bb2"]);
    assert!(out.status.success(), "{}", text(&out));
    let ops = w.banger_json(&["ops"]);
    let pulls = ops
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "image.pull")
        .count();
    assert_eq!(pulls, 2, "{ops}");
    let image = w.banger_json(&["image", "show", "busybox-layered"]);
    assert_eq!(image["origin"]["kind"], "pulled", "{image}");
    let view = w.banger_json(&["vm", "show", "bb"]);
    assert_eq!(view["agent_shell"], true, "{view}");

    step("the layers as the image says");
    let out = exec(
        &w,
        "bb",
        "test -e /data/old.txt && echo old-still-there; cat /data/keep.txt; ls -A /dir; \
         stat -c '%n %a %u:%g %h %F %t:%T' /srv/hard1 /srv/hard2 /srv/null /srv/suid /srv/owned /srv/work; \
         readlink /srv/link; cat /srv/link; \
         test \"$(stat -c %i /srv/hard1)\" = \"$(stat -c %i /srv/hard2)\" && echo same-inode",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "keep",
            "new",
            "/srv/hard1 644 0:0 2 regular file 0:0",
            "/srv/hard2 644 0:0 2 regular file 0:0",
            "/srv/null 644 0:0 1 character special file 1:3",
            "/srv/suid 4755 0:0 1 regular file 0:0",
            "/srv/owned 640 1234:5678 1 regular file 0:0",
            "/srv/work 755 1000:1000 2 directory 0:0",
            "hard1",
            "linked",
            "same-inode",
        ],
        "{out}"
    );

    step("vm ssh without an SSH server: through the agent, said once");
    let out = w.banger(&["vm", "ssh", "bb", "--", "echo", "via", "$FOO"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lines(&out), ["via from-image"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("runs no SSH server").count(),
        1,
        "said once: {stderr}"
    );
    let out = w.banger(&["vm", "ssh", "bb", "--", "exit", "3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = w.banger(&["ssh-config"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = w.banger(&["vm", "ssh-proxy", "bb"]);
    assert!(!out.status.success(), "no sshd to proxy to: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("runs no SSH server"),
        "{}",
        text(&out)
    );

    step("vm cp, vm stats, vm ports");
    let host_file = w.root().join("in.txt");
    std::fs::write(&host_file, "copied in\n").unwrap();
    let out = w.banger(&[
        "vm",
        "cp",
        host_file.to_str().unwrap(),
        "bb:/srv/work/in.txt",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(exec(&w, "bb", "cat /srv/work/in.txt"), "copied in\n");
    let back = w.root().join("back.txt");
    let out = w.banger(&["vm", "cp", "bb:/srv/work/in.txt", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");
    let stats = w.banger_json(&["vm", "stats", "bb"]);
    assert!(
        stats["memory_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    let out = w.banger(&["vm", "ports", "bb", "--json"]);
    assert!(out.status.success(), "{}", text(&out));

    let t = step("vm fork: the fork has its own name and the source's files");
    let out = w.banger(&["vm", "fork", "bb", "--name", "bbf"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(exec(&w, "bbf", "hostname"), "bbf\n");
    assert_eq!(exec(&w, "bbf", "cat /srv/work/in.txt"), "copied in\n");
    let out = w.banger(&["vm", "delete", "--force", "bbf"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("    {:.1} s", t.elapsed().as_secs_f64());

    let t = step("a warm template of the pulled image: restored, its own name");
    w.banger_json(&["image", "warm", "busybox-layered"]);
    let out = w.banger(&[
        "vm",
        "run",
        "--rm",
        "--name",
        "warm1",
        "--image",
        "busybox-layered",
        "--",
        "sh",
        "-c",
        "hostname; echo $FOO",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lines(&out), ["warm1", "from-image"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restore from template"),
        "{}",
        text(&out)
    );
    eprintln!("    {:.1} s", t.elapsed().as_secs_f64());

    step("image promote: a new VM from it has the file written in the first");
    exec(&w, "bb", "echo kept > /srv/work/promoted.txt");
    let out = w.banger(&["image", "promote", "bb", "--name", "bbp"]);
    assert_eq!(out.status.code(), Some(5), "running: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bb"),
        "{}",
        text(&out)
    );
    let out = w.banger(&["vm", "stop", "bb"]);
    assert!(out.status.success(), "{}", text(&out));
    let promoted = w.banger_json(&["image", "promote", "bb", "--name", "bbp"]);
    assert_eq!(promoted["origin"]["kind"], "promoted", "{promoted}");
    let out = w.banger(&["image", "promote", "bb", "--name", "bbp"]);
    assert_eq!(out.status.code(), Some(5), "name taken: {}", text(&out));
    let out = w.banger(&[
        "vm",
        "run",
        "--rm",
        "--image",
        "bbp",
        "--",
        "cat",
        "promoted.txt",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lines(&out), ["kept"]);

    let t = step("a Debian root filesystem image: booted, its config applied");
    let debian = Layout::new();
    match common::registry::debian_rootfs(&debian, "bookworm") {
        Err(why) => eprintln!("    skipped: {why}"),
        Ok(()) => {
            registry.push(&debian, "bookworm", "test/debian:bookworm", None, false);
            let reference = format!("{}/test/debian:bookworm", registry.host());
            let out = w.banger(&[
                "vm",
                "run",
                "--rm",
                "--image",
                &reference,
                "--",
                "sh",
                "-c",
                "cat /etc/debian_version; echo $FOO; pwd; test -x /sbin/init || echo no-init",
            ]);
            assert!(out.status.success(), "{}", text(&out));
            let got = lines(&out);
            assert!(got[0].starts_with("12."), "{}", text(&out));
            assert_eq!(got[1..], ["debian", "/root", "no-init"], "{}", text(&out));
        }
    }
    eprintln!("    {:.1} s", t.elapsed().as_secs_f64());

    step("clean up");
    let out = w.banger(&["vm", "delete", "bb"]);
    assert!(out.status.success(), "{}", text(&out));
    // Cold creates made templates in the background (image.warm
    // operations): each must end, and well.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let ops = loop {
        let ops = w.banger_json(&["ops"]);
        let running = ops
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["state"] == "running");
        if !running || std::time::Instant::now() > deadline {
            break ops;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    for op in ops.as_array().unwrap() {
        assert_eq!(op["state"], "succeeded", "{op}");
    }
    let vms: Value = w.banger_json(&["vm", "list"]);
    assert_eq!(vms.as_array().unwrap().len(), 0, "{vms}");
    assert!(
        common::qemu_pids_with(w.root().to_str().unwrap()).is_empty(),
        "no QEMU left"
    );
}
