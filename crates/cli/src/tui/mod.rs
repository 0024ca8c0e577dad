//! `banger tui`: a terminal UI over the daemon (docs/tui.md).
//!
//! Why threads and not the async runtime: the CLI's client is blocking,
//! and the UI must never wait on the daemon, so each daemon conversation
//! (the event stream, a list fetch, an action, the stats poller, a log
//! tail) runs on a thread of its own and reports over one channel
//! ([`feed`]); the UI loop here only polls the keyboard briefly, applies
//! what arrived to the state ([`app`], pure and unit-tested) and redraws
//! ([`view`]). The terminal is borrowed through [`terminal::Screen`],
//! which gives it back on every way out.

mod app;
mod feed;
mod keys;
mod terminal;
mod view;

use std::io::IsTerminal;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::CliError;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};
use app::{App, Effect};

/// How long one look at the keyboard waits before the loop applies the
/// daemon's news: the latency of the screen to them.
const INPUT_POLL: Duration = Duration::from_millis(50);

pub(crate) fn run(target: &DaemonTarget) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(CliError::BadParams(
            "banger tui needs a terminal on stdin and stdout".into(),
        ));
    }
    // The daemon is up (started or replaced) before the screen changes,
    // so its messages, if any, are readable.
    let socket = ensure_daemon(target)?.client.socket().to_owned();
    // SIGTERM, SIGHUP and SIGINT (outside raw mode: while ssh runs) end
    // the loop instead of the process, so the terminal is given back.
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&signalled)).map_err(CliError::Io)?;
    }
    let mut screen = terminal::Screen::enter().map_err(CliError::Io)?;
    ui_loop(&mut screen, &socket, &signalled)
}

fn ui_loop(
    screen: &mut terminal::Screen,
    socket: &Path,
    signalled: &AtomicBool,
) -> Result<(), CliError> {
    let (tx, rx) = mpsc::channel();
    let running = Arc::new(Mutex::new(Vec::new()));
    feed::spawn_events(socket.to_owned(), tx.clone());
    feed::spawn_stats(socket.to_owned(), Arc::clone(&running), tx.clone());
    let mut app = App::new();
    let mut log_tail: Option<feed::LogTail> = None;
    let mut dirty = true;
    loop {
        if signalled.load(Ordering::SeqCst) {
            return Ok(());
        }
        if dirty {
            screen
                .terminal
                .draw(|f| view::draw(f, &app))
                .map_err(CliError::Io)?;
            dirty = false;
        }
        let mut effects = Vec::new();
        if event::poll(INPUT_POLL).map_err(CliError::Io)? {
            match event::read().map_err(CliError::Io)? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    effects.extend(app.on_key(key));
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        while let Ok(msg) = rx.try_recv() {
            effects.extend(app.apply(msg));
            dirty = true;
        }
        for effect in effects {
            match effect {
                Effect::Quit => return Ok(()),
                Effect::Fetch(kind) => feed::fetch(socket.to_owned(), kind, tx.clone()),
                Effect::Call(action) => feed::call(socket.to_owned(), action, tx.clone()),
                Effect::FollowLog { path, generation } => {
                    log_tail = Some(feed::tail_log(path.into(), generation, tx.clone()));
                }
                Effect::StopLog => log_tail = None,
                Effect::Ssh(name) => {
                    ssh(screen, &mut app, &name)?;
                    // A Ctrl-C while ssh ran was the remote shell's.
                    signalled.store(false, Ordering::SeqCst);
                    dirty = true;
                }
            }
        }
        if let Ok(mut names) = running.lock() {
            *names = app.running_vm_names();
        }
        let _ = &log_tail;
    }
}

/// Runs `banger vm ssh NAME` on the ordinary terminal, then takes the
/// terminal back; how ssh went lands in the status line.
fn ssh(screen: &mut terminal::Screen, app: &mut App, name: &str) -> Result<(), CliError> {
    screen.suspend();
    let exe = std::env::current_exe().unwrap_or_else(|_| "banger".into());
    let outcome = Command::new(exe).args(["vm", "ssh", name]).status();
    screen.resume().map_err(CliError::Io)?;
    app.status = Some(match outcome {
        Ok(s) if s.success() => (format!("ssh {name}: ended"), false),
        Ok(s) => (format!("ssh {name}: {s}"), true),
        Err(e) => (format!("ssh {name}: {e}"), true),
    });
    Ok(())
}
