//! The opencode preset end to end, under QEMU (TCG): `image build
//! --preset opencode` makes an image with Debian's Node.js and the
//! `opencode-ai` npm package (installed inside the image while it is
//! made) and opencode's unit; `vm create` from it waits for port 4096 as
//! a stage; `vm show` says where the host reaches it (a published
//! loopback port in user mode), and an HTTP request from the host gets
//! an HTTP answer (no model provider key is needed for the server).
//!
//! Needs root (mmdebstrap) and the network (Debian's packages and npm's
//! registry, through the host's own configuration); prints why and passes
//! vacuously without root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{is_root, step, text};

#[test]
fn the_opencode_preset_serves_http_on_4096() {
    if !is_root() {
        eprintln!("skipped: the image build needs root (mmdebstrap)");
        return;
    }
    let w = common::vm_world();

    let t = step("image build --preset opencode");
    let out = w.banger(&["image", "build", "--name", "oc", "--preset", "opencode"]);
    assert!(out.status.success(), "{}", text(&out));
    let image = w.banger_json(&["image", "show", "oc"]);
    assert_eq!(image["services"][0]["name"], "opencode", "{image}");
    assert_eq!(image["services"][0]["port"], 4096, "{image}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("vm create waits for port 4096 as a stage and says where it answers");
    let out = w.banger(&["vm", "create", "--name", "oc", "--image", "oc"]);
    assert!(out.status.success(), "{}", text(&out));
    let stages = String::from_utf8_lossy(&out.stderr);
    assert!(
        stages.contains("wait for service opencode (port 4096)"),
        "{stages}"
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("opencode (guest port 4096): http://127.0.0.1:"),
        "{shown}"
    );
    let vm = w.banger_json(&["vm", "show", "oc"]);
    let address = vm["services"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {vm}"))
        .to_owned();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("an HTTP request from the host gets an HTTP answer");
    // opencode may hold its first requests while it starts up in a guest
    // without the internet (here, minutes under TCG; later ones answer
    // in about a second): each request waits 30 s, and requests are made
    // until one is answered or 5 minutes pass.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let answer = loop {
        let mut conn = TcpStream::connect(&address).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.write_all(b"GET /config HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = conn.take(64 * 1024).read_to_end(&mut answer);
        if !answer.is_empty() || std::time::Instant::now() > deadline {
            break String::from_utf8_lossy(&answer).into_owned();
        }
        eprintln!("    no answer within 30 s; asking again");
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eprintln!("    {}", answer.lines().next().unwrap_or_default());
    eprintln!("    {:?}", t.elapsed());

    let t = step("the service runs in the workspace directory");
    let out = w.banger_ok(&[
        "vm",
        "exec",
        "oc",
        "--",
        "sh",
        "-c",
        "readlink /proc/$(systemctl show -p MainPID --value banger-service-opencode)/cwd",
    ]);
    assert_eq!(out.trim(), "/root/work");
    w.banger_ok(&["vm", "delete", "--force", "oc"]);
    eprintln!("    {:?}", t.elapsed());
}
