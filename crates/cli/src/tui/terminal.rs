//! The terminal as `banger tui` borrows it: raw mode and the alternate
//! screen while it runs, and the terminal given back as it was found on
//! every way out: a return, an error, a panic (the hook restores before
//! the message prints, so the message is readable) and around `ssh`,
//! which gets the ordinary terminal for as long as it runs.

use std::io::{self, Stdout};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::Show;
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};

/// Whether the terminal is ours (raw, alternate screen) right now: the
/// panic hook restores only then.
static BORROWED: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// The terminal, borrowed; given back when dropped.
pub(crate) struct Screen {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Screen")
    }
}

impl Screen {
    pub(crate) fn enter() -> io::Result<Self> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                give_back();
                previous(info);
            }));
        });
        take()?;
        let terminal = match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(t) => t,
            Err(e) => {
                give_back();
                return Err(e);
            }
        };
        let mut screen = Self { terminal };
        screen.terminal.hide_cursor()?;
        screen.terminal.clear()?;
        Ok(screen)
    }

    /// Gives the terminal back for a while (to `ssh`).
    pub(crate) fn suspend(&mut self) {
        give_back();
    }

    /// Takes it again after [`Screen::suspend`], and redraws everything.
    pub(crate) fn resume(&mut self) -> io::Result<()> {
        take()?;
        self.terminal.hide_cursor()?;
        self.terminal.clear()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        give_back();
    }
}

fn take() -> io::Result<()> {
    enable_raw_mode()?;
    BORROWED.store(true, Ordering::SeqCst);
    execute!(io::stdout(), EnterAlternateScreen).inspect_err(|_| give_back())
}

/// Leaves the alternate screen, shows the cursor and restores the
/// terminal modes saved when raw mode began (crossterm keeps them), once.
fn give_back() {
    if BORROWED.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
        let _ = disable_raw_mode();
    }
}
