//! What each key means, apart from what it then does: one table that the
//! key handling, the help overlay (`?`) and docs/tui.md share, so the
//! help cannot drift from the code.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Something the user asked for in the main view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Quit,
    Help,
    NextPane,
    PreviousPane,
    Up,
    Down,
    PreviousTab,
    NextTab,
    Start,
    Stop,
    Restart,
    PauseResume,
    Delete,
    Snapshot,
    Fork,
    Logs,
    Ssh,
    Create,
    CancelOp,
}

/// The keys of the main view and what they do, as the help shows them.
pub(crate) const HELP: &[(&str, &str)] = &[
    ("Tab / Shift-Tab", "next / previous pane"),
    ("↑ ↓  (k j)", "move the selection"),
    ("← →  ([ ])", "images / kernels / snapshots tab"),
    ("s", "start the selected VM"),
    ("t", "stop it"),
    ("r", "restart it"),
    ("p", "pause it, or resume it when paused"),
    ("d", "delete it (asks y/n; a running VM is killed)"),
    ("n", "snapshot it"),
    ("f", "fork it (asks for the new name)"),
    ("l", "follow its console log (Esc closes)"),
    ("Enter", "ssh into it (the TUI steps aside until ssh ends)"),
    ("c", "create a VM: image, name, vCPUs, memory"),
    ("x", "cancel the selected running operation (asks y/n)"),
    (
        "Operations pane",
        "the selected operation's stages, live, on the right",
    ),
    ("?", "this help (any key closes it)"),
    ("q / Ctrl-C", "quit"),
];

/// The command a key gives in the main view, if any.
pub(crate) fn command(key: KeyEvent) -> Option<Command> {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return matches!(key.code, KeyCode::Char('c')).then_some(Command::Quit);
    }
    Some(match key.code {
        KeyCode::Char('q') => Command::Quit,
        KeyCode::Char('?') => Command::Help,
        KeyCode::Tab => Command::NextPane,
        KeyCode::BackTab => Command::PreviousPane,
        KeyCode::Up | KeyCode::Char('k') => Command::Up,
        KeyCode::Down | KeyCode::Char('j') => Command::Down,
        KeyCode::Left | KeyCode::Char('[') => Command::PreviousTab,
        KeyCode::Right | KeyCode::Char(']') => Command::NextTab,
        KeyCode::Char('s') => Command::Start,
        KeyCode::Char('t') => Command::Stop,
        KeyCode::Char('r') => Command::Restart,
        KeyCode::Char('p') => Command::PauseResume,
        KeyCode::Char('d') => Command::Delete,
        KeyCode::Char('n') => Command::Snapshot,
        KeyCode::Char('f') => Command::Fork,
        KeyCode::Char('l') => Command::Logs,
        KeyCode::Enter => Command::Ssh,
        KeyCode::Char('c') => Command::Create,
        KeyCode::Char('x') => Command::CancelOp,
        _ => return None,
    })
}

/// True for Ctrl-C, which quits from anywhere (raw mode turns it into a
/// key instead of SIGINT).
pub(crate) fn is_interrupt(key: KeyEvent) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_commands() {
        let k = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert_eq!(command(k(KeyCode::Char('q'))), Some(Command::Quit));
        assert_eq!(command(k(KeyCode::Char('x'))), Some(Command::CancelOp));
        assert_eq!(command(k(KeyCode::Char('z'))), None);
        assert_eq!(command(k(KeyCode::BackTab)), Some(Command::PreviousPane));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(command(ctrl_c), Some(Command::Quit));
        assert!(is_interrupt(ctrl_c));
        assert!(!is_interrupt(k(KeyCode::Char('c'))));
    }
}
