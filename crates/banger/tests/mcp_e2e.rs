//! `banger mcp` driven by a real MCP client over stdio: the `mcp` package
//! from PyPI, in a virtual environment scripts/deps.sh makes in the cache
//! (`tests/mcp/client.py` does the talking). Against the real daemon and
//! real guests under QEMU (TCG): the tool list and a tool's input schema;
//! `vm_run` of `echo hi; exit 3` in a fresh VM (hi, 3, its stages as
//! progress, the VM gone after); create, write a file, exec `cat` on it,
//! read it back, ports, fork, delete both; a missing VM and a bad argument
//! as structured errors with op ids.
//!
//! Needs root (the default image is built with mmdebstrap) and the
//! client's environment; prints why and passes vacuously without.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};

use common::{BANGER, cache_home, is_root, step, text};

/// The Python of the virtual environment with the `mcp` package.
fn mcp_python() -> Option<PathBuf> {
    let python = std::env::var_os("BANGER_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_home().join("banger/mcp-venv/bin/python"));
    if !python.is_file() {
        eprintln!(
            "skipped: no MCP client at {} (scripts/deps.sh makes it: ensure_mcp_client)",
            python.display()
        );
        return None;
    }
    Some(python)
}

#[test]
fn an_mcp_client_drives_banger_mcp() {
    if !is_root() {
        eprintln!("skipped: the default image is built with mmdebstrap, which needs root");
        return;
    }
    let Some(python) = mcp_python() else {
        return;
    };
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let mut w = common::vm_world();
    w.extra_env.push(("BANGER_BIN", PathBuf::from(BANGER)));
    w.extra_env
        .push(("PYTHONDONTWRITEBYTECODE", PathBuf::from("1")));

    let t = step("the default kernel and image");
    w.banger_ok(&["vm", "create", "--name", "warmup", "--no-start"]);
    w.banger_ok(&["vm", "delete", "warmup"]);
    eprintln!("    {:?}", t.elapsed());

    let t = step("tests/mcp/client.py against banger mcp");
    let out = w
        .command(python.to_str().unwrap())
        .arg(&client)
        .output()
        .unwrap();
    eprintln!("{}", text(&out));
    assert!(out.status.success(), "the MCP client's checks failed");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("all mcp checks passed"),
        "the client did not finish"
    );
    assert!(w.names(&["vm", "list"]).is_empty(), "nothing was left");
    eprintln!("    {:?}", t.elapsed());
}
