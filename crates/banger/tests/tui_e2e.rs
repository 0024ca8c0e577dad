//! `banger tui` end to end, in tmux, over the real bangerd with real
//! guests under QEMU (TCG): it shows a VM created outside it within 2 s,
//! stops and starts it by keys (the screen and `vm list --json` agree),
//! creates a VM from its form with the stages live on screen, steps aside
//! for an ssh session into a VM (Enter) and comes back after it, cancels a
//! running create (`x`, then `y`) that then leaves no VM, keeps every
//! pane's title readable at 80×24, and `q` leaves the terminal's modes
//! as they were (`stty -a` before and after are equal).
//!
//! With BANGER_UPDATE_DOCS=1 the 80×24 screen goes into docs/tui.md.
//!
//! Needs root (the default image is built with mmdebstrap) and tmux;
//! prints why and passes vacuously without.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BANGER, World, is_root, step, text};

/// A tmux server of this test's own (`tmux -L NAME`), killed when dropped
/// (also when the test panics).
struct Tmux {
    socket_name: String,
    env: Vec<(&'static str, PathBuf)>,
}

const SESSION: &str = "tui";

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new("tmux");
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "xterm-256color")
            .envs(self.env.iter().cloned())
            .arg("-L")
            .arg(&self.socket_name)
            .args(args);
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn capture(&self) -> String {
        self.ok(&["capture-pane", "-p", "-t", SESSION])
    }

    /// Keys as tmux names them (`Enter`, `Escape`) or literal text.
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend_from_slice(keys);
        self.ok(&args);
    }

    fn literal(&self, text: &str) {
        self.ok(&["send-keys", "-t", SESSION, "-l", text]);
    }

    /// Polls the pane until `ok` holds for its text; panics with the last
    /// screen after `bound`. Returns that screen and when it was seen.
    fn wait_for(&self, what: &str, bound: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + bound;
        loop {
            let screen = self.capture();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {bound:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The line of the VM table naming `vm`, if any.
fn vm_line<'a>(screen: &'a str, vm: &str) -> Option<&'a str> {
    let start = format!("│{vm} ");
    screen.lines().find(|l| l.starts_with(&start))
}

fn vm_state_on_screen(screen: &str, vm: &str) -> Option<String> {
    let line = vm_line(screen, vm)?;
    let rest = line.trim_start_matches('│').trim_start();
    let mut words = rest.split_whitespace();
    // NAME STATE ...
    words.next()?;
    words.next().map(str::to_owned)
}

fn state_in_list(w: &World, vm: &str) -> String {
    let list = w.banger_json(&["vm", "list"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm)
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// True when the TUI has drawn `screen` for a terminal of `width` ×
/// `height` (its top border spans the width): tmux shows a resized
/// window at once but tells the program a moment later.
fn drawn_at(screen: &str, width: usize, height: usize) -> bool {
    let top = screen.lines().next().unwrap_or_default();
    screen.lines().count() == height
        && screen.lines().all(|l| l.chars().count() <= width)
        && top.starts_with("┌ VMs")
        && top.ends_with('┐')
        && top.chars().count() == width
}

const TITLES: [&str; 6] = [
    "VMs",
    "Images",
    "Kernels",
    "Snapshots",
    "Operations",
    "Stages",
];

#[test]
fn the_tui_shows_live_state_drives_vms_and_gives_the_terminal_back() {
    if !is_root() {
        eprintln!("skipped: the default image is built with mmdebstrap, which needs root");
        return;
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: no tmux (scripts/deps.sh installs it)");
        return;
    }
    let w = common::vm_world();
    w.banger_ok(&["ping"]);
    let root = w.root().to_path_buf();
    let script = root.join("tui.sh");
    common::install_script(
        &script,
        &format!(
            "#!/bin/sh\ncd '{}'\nstty -a > before\n'{BANGER}' tui 2> tui.err\necho $? > exited\nstty -a > after\n",
            root.display()
        ),
    );
    let tmux = Tmux {
        socket_name: format!("banger-tui-test-{}", std::process::id()),
        env: w.envs(),
    };

    let t = step("banger tui starts, subscribed");
    tmux.ok(&[
        "new-session",
        "-d",
        "-s",
        SESSION,
        "-x",
        "120",
        "-y",
        "40",
        &script.display().to_string(),
    ]);
    tmux.wait_for("live TUI", Duration::from_secs(30), |s| {
        s.contains("● live") && s.contains("Operations")
    });
    eprintln!("    {:?}", t.elapsed());

    let t = step("a VM created outside shows within 2 s");
    let out = w.banger(&["vm", "create", "--name", "outside"]);
    assert!(out.status.success(), "{}", text(&out));
    let created = Instant::now();
    tmux.wait_for("the VM outside, running", Duration::from_secs(2), |s| {
        vm_state_on_screen(s, "outside").as_deref() == Some("running")
    });
    eprintln!(
        "    on screen {:?} after the create returned ({:?} in all)",
        created.elapsed(),
        t.elapsed()
    );

    let t = step("t stops it, s starts it: on screen and in vm list");
    tmux.keys(&["t"]);
    tmux.wait_for("outside stopped", Duration::from_secs(120), |s| {
        vm_state_on_screen(s, "outside").as_deref() == Some("stopped")
    });
    assert_eq!(state_in_list(&w, "outside"), "stopped");
    tmux.keys(&["s"]);
    tmux.wait_for("outside running again", Duration::from_secs(300), |s| {
        vm_state_on_screen(s, "outside").as_deref() == Some("running")
    });
    assert_eq!(state_in_list(&w, "outside"), "running");
    eprintln!("    {:?}", t.elapsed());

    let t = step("the create form: stages live, then the VM running");
    tmux.keys(&["c"]);
    tmux.wait_for("the create form", Duration::from_secs(5), |s| {
        s.contains("Create a VM")
    });
    tmux.literal("inside");
    tmux.wait_for("the name typed", Duration::from_secs(5), |s| {
        s.contains("name: inside")
    });
    tmux.keys(&["Enter"]);
    let stages = ["launch vmm", "wait for agent", "wait for ssh"];
    let during = tmux.wait_for("a stage of the create", Duration::from_secs(120), |s| {
        s.contains("Stages vm.create inside")
            && stages.iter().any(|st| s.contains(&format!("▸ {st}")))
    });
    let seen = stages
        .iter()
        .find(|st| during.contains(&format!("▸ {st}")))
        .unwrap();
    eprintln!("    saw the running stage {seen:?}");
    tmux.wait_for("inside running", Duration::from_secs(300), |s| {
        vm_state_on_screen(s, "inside").as_deref() == Some("running") && s.contains("succeeded")
    });
    assert_eq!(state_in_list(&w, "inside"), "running");
    eprintln!("    {:?}", t.elapsed());

    let t = step("Enter: ssh into the selected VM, the TUI steps aside, then comes back");
    tmux.keys(&["Enter"]);
    tmux.wait_for("a shell in the guest", Duration::from_secs(60), |s| {
        s.contains("root@") && !s.contains("● live")
    });
    tmux.literal("echo ssh-$((6*7)) from $(hostname)");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the command's output", Duration::from_secs(30), |s| {
        s.contains("ssh-42 from inside") || s.contains("ssh-42 from outside")
    });
    tmux.literal("exit");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the TUI again", Duration::from_secs(30), |s| {
        s.contains("● live") && vm_line(s, "inside").is_some()
    });
    eprintln!("    {:?}", t.elapsed());

    let t = step("x cancels a running create (after y): it ends cancelled, no VM is left");
    // Begun outside and cold, so it runs for seconds (a warm restore may
    // end before a key could reach it).
    w.banger_ok(&["rpc", "vm.create.begin", r#"{"name":"doomed","cold":true}"#]);
    tmux.wait_for("the create in the ops pane", Duration::from_secs(10), |s| {
        s.lines()
            .any(|l| l.contains("vm.create") && l.contains("doomed") && l.contains("running"))
    });
    // The ops pane has the focus since the form's create; Up selects the
    // newest operation, Down walks on if another began since.
    tmux.keys(&["Up"]);
    let mut selected = false;
    for _ in 0..5 {
        // Drawn once the key is read; a selection that is not it moves on.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !selected && Instant::now() < deadline {
            selected = tmux.capture().contains("Stages vm.create doomed");
            std::thread::sleep(Duration::from_millis(50));
        }
        if selected {
            break;
        }
        tmux.keys(&["Down"]);
    }
    assert!(
        selected,
        "never selected doomed's create:\n{}",
        tmux.capture()
    );
    tmux.keys(&["x"]);
    tmux.wait_for("the question", Duration::from_secs(5), |s| {
        s.contains("cancel vm.create doomed")
    });
    tmux.keys(&["y"]);
    tmux.wait_for("the create cancelled", Duration::from_secs(120), |s| {
        s.lines()
            .any(|l| l.contains("vm.create") && l.contains("doomed") && l.contains("cancelled"))
    });
    let names = w.names(&["vm", "list"]);
    assert!(!names.iter().any(|n| n == "doomed"), "{names:?}");
    eprintln!("    {:?}", t.elapsed());

    let t = step("at 80x24 every pane's title is readable");
    tmux.ok(&["resize-window", "-t", SESSION, "-x", "80", "-y", "24"]);
    let small = tmux.wait_for("the 80x24 screen", Duration::from_secs(10), |s| {
        drawn_at(s, 80, 24)
            && TITLES.iter().all(|title| s.contains(title))
            && vm_line(s, "inside").is_some()
    });
    eprintln!("{small}");
    if std::env::var_os("BANGER_UPDATE_DOCS").is_some_and(|v| v == "1") {
        update_doc_screen(&small);
    }
    eprintln!("    {:?}", t.elapsed());

    let t = step("q leaves the terminal as it was");
    // The size `stty -a` prints too: back to what it was at the start.
    tmux.ok(&["resize-window", "-t", SESSION, "-x", "120", "-y", "40"]);
    tmux.wait_for("the 120x40 screen", Duration::from_secs(10), |s| {
        drawn_at(s, 120, 40)
    });
    tmux.keys(&["q"]);
    let exited = root.join("exited");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.join("after").exists() || std::fs::read_to_string(&exited).is_err() {
        assert!(Instant::now() < deadline, "banger tui did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    // `after` is written by the shell after `exited`: wait for its end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(root.join("after"))
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "stty -a wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = std::fs::read_to_string(&exited).unwrap();
    let stderr = std::fs::read_to_string(root.join("tui.err")).unwrap_or_default();
    assert_eq!(code.trim(), "0", "banger tui exited {code}: {stderr}");
    let before = std::fs::read_to_string(root.join("before")).unwrap();
    let after = std::fs::read_to_string(root.join("after")).unwrap();
    assert!(!before.is_empty());
    assert_eq!(before, after, "the terminal's modes changed");
    eprintln!("    {:?}", t.elapsed());

    w.banger_ok(&["vm", "delete", "--force", "outside", "inside"]);
}

/// Puts `screen` into docs/tui.md, between its screen markers.
fn update_doc_screen(screen: &str) {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/tui.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let (start, end) = ("<!-- screen: start -->\n", "<!-- screen: end -->");
    let a = text
        .find(start)
        .expect("docs/tui.md has a screen start marker")
        + start.len();
    let b = text.find(end).expect("docs/tui.md has a screen end marker");
    let body: String = screen
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    let new = format!("{}```text\n{body}```\n{}", &text[..a], &text[b..]);
    std::fs::write(&doc, new).unwrap();
}
