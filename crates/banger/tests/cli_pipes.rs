//! The CLI and a closed output pipe (issue 10): a command whose reader has
//! gone (`banger vm list | true`, `… | head -1`) ends as Unix tools do,
//! killed by SIGPIPE, without a panic message. Needs a daemon, no VM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::{BANGER, World};

/// SIGPIPE's number on Linux.
const SIGPIPE: i32 = 13;

#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let w = World::new();
    w.banger_ok(&["ping"]);
    for args in [&["ops", "--json"][..], &["vm", "list"], &["kernel", "list"]] {
        // A pipe whose read end is closed before the CLI starts: its
        // first write to stdout finds no reader.
        let (read, write) = rustix::pipe::pipe().unwrap();
        drop(read);
        let out = w
            .command(BANGER)
            .args(args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(SIGPIPE),
            "{args:?}: {:?}, stderr: {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "{args:?}: {stderr}");
    }
}
