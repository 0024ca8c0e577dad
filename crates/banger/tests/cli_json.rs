//! The CLI's conventions (issue 10), read from its clap tree: every leaf
//! command that prints state takes `--json`, and the ones that need no VM
//! print valid JSON against a real daemon in a temp home; `daemon status`
//! never starts a daemon; `doctor --json` exits as `doctor` does; `-q`
//! and `-v`. Needs a daemon, no VM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::BTreeMap;

use banger_cli::Cli;
use clap::CommandFactory;
use common::{World, text};
use serde_json::Value;

/// Leaf commands without `--json`, and why: they print no state.
const NO_STATE: &[(&str, &str)] = &[
    (
        "vm ssh",
        "a shell or a command's own output, its exit status",
    ),
    ("vm run", "the command's own output, its exit status"),
    ("vm exec", "the command's own output, its exit status"),
    ("vm ssh-proxy", "relays bytes for ssh's ProxyCommand"),
    ("rpc", "prints the raw JSON result always"),
    ("completions", "a shell script"),
    ("man", "writes man pages into a directory"),
    ("mcp", "speaks the MCP protocol (JSON-RPC) on stdin/stdout"),
    ("tui", "a terminal UI"),
];

/// Leaf commands that take no argument but change the host or take long:
/// not run here (their `--json` is covered by the VM and system tests).
const NOT_RUN: &[&str] = &[
    "kernel pull",
    "image build",
    "system install",
    "system uninstall",
    "daemon stop",
    // Streams until the daemon ends it; tests/events.rs runs it with --count.
    "events",
    // Replaces the installed binaries (tests/update.rs runs it).
    "update",
    // Needs a terminal (tests/tui_e2e.rs runs it in tmux).
    "tui",
];

/// Every leaf command: its path (`vm list`) and whether it needs an
/// argument.
fn leaves() -> BTreeMap<String, (clap::Command, bool)> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut BTreeMap<String, (clap::Command, bool)>) {
        let subs: Vec<_> = cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subs.is_empty() {
            let needs_args = cmd
                .get_arguments()
                .any(|a| a.is_required_set() && !a.is_global_set());
            out.insert(path.to_owned(), (cmd.clone(), needs_args));
        }
        for sub in subs {
            let p = format!("{path} {}", sub.get_name()).trim().to_owned();
            walk(sub, &p, out);
        }
    }
    let mut cli = Cli::command();
    cli.build();
    let mut out = BTreeMap::new();
    walk(&cli, "", &mut out);
    out
}

/// Output of a `--json` command: one JSON document, or JSON lines.
fn parse_json(path: &str, stdout: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stdout);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return vec![v];
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("`banger {path} --json`: not JSON ({e}):\n{text}"))
        })
        .collect()
}

#[test]
fn every_command_that_prints_state_takes_json() {
    let leaves = leaves();
    assert!(leaves.contains_key("vm list") && leaves.contains_key("ssh-config"));
    let mut missing = Vec::new();
    for (path, (cmd, _)) in &leaves {
        let has_json = cmd.get_arguments().any(|a| a.get_long() == Some("json"));
        let no_state = NO_STATE.iter().any(|(p, _)| p == path);
        if has_json == no_state {
            missing.push(if has_json {
                format!("{path}: has --json but is listed as printing no state")
            } else {
                format!("{path}: no --json (or list it in NO_STATE, saying why)")
            });
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn commands_that_need_no_vm_print_valid_json() {
    let w = World::new();

    // No daemon yet: `daemon status` says so, exits 7 and starts none.
    let out = w.banger(&["daemon", "status", "--json"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let v = parse_json("daemon status", &out.stdout);
    assert_eq!(v[0]["running"], false, "{v:?}");
    let out = w.banger(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no bangerd running"),
        "{}",
        text(&out)
    );
    assert_eq!(w.daemon_pid(), None, "daemon status started a daemon");

    // -q drops notes: `daemon logs` before any log exists.
    let out = w.banger(&["daemon", "logs"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no log yet"),
        "{}",
        text(&out)
    );
    let out = w.banger(&["-q", "daemon", "logs"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );

    w.banger_ok(&["ping"]);
    let mut ran = Vec::new();
    for (path, (_, needs_args)) in leaves() {
        let no_state = NO_STATE.iter().any(|(p, _)| *p == path);
        if needs_args || no_state || NOT_RUN.contains(&path.as_str()) {
            continue;
        }
        let mut args: Vec<&str> = path.split(' ').collect();
        args.push("--json");
        let out = w.banger(&args);
        let code = out.status.code();
        match path.as_str() {
            // A FAIL exits 1, with --json as without.
            "doctor" => {
                let plain = w.banger(&["doctor"]);
                assert_eq!(code, plain.status.code(), "{}", text(&out));
                let v = parse_json(&path, &out.stdout);
                let failed = v[0]["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["status"] == "fail");
                assert_eq!(code, Some(i32::from(failed)), "{}", text(&out));
            }
            // The helper may or may not be installed here.
            "system status" => {
                assert!(matches!(code, Some(0 | 3 | 4 | 6)), "{}", text(&out));
            }
            _ => assert_eq!(code, Some(0), "banger {args:?}:\n{}", text(&out)),
        }
        let values = parse_json(&path, &out.stdout);
        assert!(!values.is_empty(), "banger {args:?} printed nothing");
        ran.push(path);
    }
    for expected in [
        "ping",
        "daemon status",
        "daemon logs",
        "vm list",
        "image list",
        "kernel list",
        "snapshot list",
        "ops",
        "doctor",
        "ssh-config",
        "network",
    ] {
        assert!(
            ran.iter().any(|p| p == expected),
            "{expected} not run: {ran:?}"
        );
    }
    let status = parse_json(
        "daemon status",
        &w.banger_ok(&["daemon", "status", "--json"]).into_bytes(),
    );
    assert_eq!(status[0]["running"], true);

    // -v: each request with the op id the CLI gave it (the daemon adopts
    // it: its error names the same one) and its time.
    let out = w.banger(&["-v", "vm", "show", "no-such-vm"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let op_id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("banger: vm.show "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no op id printed for vm.show:\n{stderr}"))
        .to_owned();
    assert!(
        op_id.starts_with("op-") && stderr.contains(" ms"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("error: no vm named no-such-vm ({op_id})"))
            || stderr.contains(&format!("({op_id})\n")),
        "{stderr}"
    );
    let out = w.banger(&["vm", "list"]);
    assert!(out.stderr.is_empty(), "{}", text(&out));

    // daemon stop, then status says none runs again.
    let v = w.banger_json(&["daemon", "stop"]);
    assert_eq!(v["stopped"], true);
    let out = w.banger(&["daemon", "status", "--json"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
}
