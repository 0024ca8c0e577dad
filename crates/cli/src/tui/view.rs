//! Drawing the [`App`]: the VM table on top, images / kernels / snapshots
//! as tabs of one pane, the operations with the selected one's stages at
//! the bottom, then a status line and a key hint line; windows (help,
//! questions, the create form, a console log) over that. Every pane's
//! title fits on an 80×24 terminal. Every string that could come from a
//! guest (and, cheaply, every other one) is escaped before it is drawn.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};

use super::app::{App, Field, Modal, Pane, Tab};
use super::keys::HELP;
use crate::commands::format::{ago, escape_control, human_bytes, now_ms};

/// `text` safe for the terminal: control characters as visible escapes.
fn esc(text: &str) -> String {
    escape_control(text, false).into_owned()
}

/// Where each part of the main view goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Areas {
    pub vms: Rect,
    pub artifacts: Rect,
    pub ops: Rect,
    pub stages: Rect,
    pub status: Rect,
    pub hints: Rect,
}

pub(crate) fn areas(area: Rect) -> Areas {
    let artifacts_height = (area.height / 5).max(6);
    let ops_height = (area.height / 4).max(7);
    let [vms, artifacts, ops_row, status, hints] = Layout::vertical([
        Constraint::Min(4),
        Constraint::Length(artifacts_height),
        Constraint::Length(ops_height),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let [ops, stages] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(ops_row);
    Areas {
        vms,
        artifacts,
        ops,
        stages,
        status,
        hints,
    }
}

fn pane_block(title: Line<'static>, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default()
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(style)
        .title(title)
}

fn title(text: &str, focused: bool) -> Line<'static> {
    let style = if focused {
        Style::default().add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    Line::from(Span::styled(format!(" {text} "), style))
}

fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().map(|c| Cell::from(*c)))
        .style(Style::default().add_modifier(Modifier::BOLD))
}

fn highlight() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

pub(crate) fn draw(frame: &mut Frame<'_>, app: &App) {
    let a = areas(frame.area());
    draw_vms(frame, app, a.vms);
    draw_artifacts(frame, app, a.artifacts);
    draw_ops(frame, app, a.ops);
    draw_stages(frame, app, a.stages);
    draw_status(frame, app, a.status);
    draw_hints(frame, app, a.hints);
    if let Some(modal) = &app.modal {
        draw_modal(frame, app, modal);
    }
}

fn draw_vms(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let rows = app.vms.iter().map(|v| {
        let address = match (&v.ip, v.ssh_port) {
            (Some(ip), _) => ip.clone(),
            (None, Some(port)) => format!("127.0.0.1:{port}"),
            (None, None) => String::new(),
        };
        let ports: Vec<String> = v.publish.iter().map(ToString::to_string).collect();
        let address = if ports.is_empty() {
            address
        } else {
            format!("{address} {}", ports.join(","))
        };
        let (cpu, mem) = match app.stats.get(&v.name) {
            Some(s) => (
                s.cpu_percent
                    .map(|c| format!("{c:.0}%"))
                    .unwrap_or_default(),
                format!(
                    "{}/{} MiB",
                    s.memory_used_bytes >> 20,
                    s.memory_total_bytes >> 20
                ),
            ),
            None => (String::new(), format!("{} MiB", v.memory_mib)),
        };
        Row::new([
            esc(&v.name),
            v.state.to_string(),
            v.backend.map(|b| b.to_string()).unwrap_or_default(),
            esc(&address),
            cpu,
            mem,
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Fill(2),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Fill(3),
            Constraint::Length(5),
            Constraint::Length(14),
        ],
    )
    .header(header(&[
        "NAME",
        "STATE",
        "VMM",
        "ADDRESS/PORTS",
        "CPU",
        "MEMORY",
    ]))
    .block(pane_block(
        title(&format!("VMs ({})", app.vms.len()), app.focus == Pane::Vms),
        app.focus == Pane::Vms,
    ))
    .row_highlight_style(highlight());
    let mut state = TableState::default();
    if !app.vms.is_empty() {
        state.select(Some(app.vm_selected));
    }
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_artifacts(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let focused = app.focus == Pane::Artifacts;
    let mut spans = vec![Span::raw(" ")];
    for (i, tab) in Tab::ALL.iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(" | "));
        }
        let style = if *tab == app.tab {
            Style::default()
                .add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
                .fg(Color::Yellow)
        } else {
            Style::default()
        };
        spans.push(Span::styled(tab.title(), style));
    }
    spans.push(Span::raw(" "));
    let block = pane_block(Line::from(spans), focused);
    let now = now_ms();
    let (head, widths, rows): (&[&'static str], Vec<Constraint>, Vec<Row<'static>>) = match app.tab
    {
        Tab::Images => (
            &["NAME", "ORIGIN", "SIZE", "NOTE"],
            vec![
                Constraint::Fill(2),
                Constraint::Length(9),
                Constraint::Length(10),
                Constraint::Fill(2),
            ],
            app.images
                .iter()
                .map(|i| {
                    let note = if i.stale { "stale" } else { "" };
                    Row::new([
                        esc(&i.name),
                        i.origin.kind().to_owned(),
                        human_bytes(i.size_bytes),
                        note.to_owned(),
                    ])
                })
                .collect(),
        ),
        Tab::Kernels => (
            &["NAME", "PRESENT", "DEFAULT", "VERSION"],
            vec![
                Constraint::Fill(2),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Fill(2),
            ],
            app.kernels
                .iter()
                .map(|k| {
                    Row::new([
                        esc(&k.name),
                        if k.present { "yes" } else { "no" }.to_owned(),
                        if k.default { "yes" } else { "" }.to_owned(),
                        esc(k.version.as_deref().unwrap_or("")),
                    ])
                })
                .collect(),
        ),
        Tab::Snapshots => (
            &["NAME", "KIND", "VM", "SIZE", "MADE"],
            vec![
                Constraint::Fill(2),
                Constraint::Length(9),
                Constraint::Fill(1),
                Constraint::Length(10),
                Constraint::Length(11),
            ],
            app.snapshots
                .iter()
                .map(|s| {
                    Row::new([
                        esc(&s.name),
                        s.kind.to_string(),
                        esc(&s.vm),
                        human_bytes(s.size_bytes),
                        ago(s.created_at_ms, now),
                    ])
                })
                .collect(),
        ),
    };
    let table = Table::new(rows, widths)
        .header(header(head))
        .block(block)
        .row_highlight_style(highlight());
    let mut state = TableState::default();
    if focused && app.artifact_count() > 0 {
        state.select(Some(app.artifact_selected));
    }
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_ops(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let rows = app.ops.iter().map(|o| {
        let now = if o.state.is_done() {
            match &o.error {
                Some(e) => e.clone(),
                None => String::new(),
            }
        } else {
            o.stages.last().map(|s| s.0.clone()).unwrap_or_default()
        };
        Row::new([
            o.kind.to_string(),
            esc(&o.target),
            o.state.to_string(),
            esc(&now),
        ])
    });
    let focused = app.focus == Pane::Ops;
    let table = Table::new(
        rows,
        [
            Constraint::Length(11),
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Fill(1),
        ],
    )
    .header(header(&["KIND", "TARGET", "STATE", "STAGE"]))
    .block(pane_block(title("Operations", focused), focused))
    .row_highlight_style(highlight());
    let mut state = TableState::default();
    state.select(
        app.op_selected
            .as_deref()
            .and_then(|id| app.ops.iter().position(|o| o.op_id == id)),
    );
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_stages(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let op = app.selected_op();
    let name = match op {
        Some(o) => format!("Stages {} {}", o.kind, esc(&o.target)),
        None => "Stages".to_owned(),
    };
    let block = pane_block(title(&name, false), false);
    let mut lines: Vec<Line<'static>> = Vec::new();
    if let Some(op) = op {
        let last = op.stages.len().saturating_sub(1);
        for (i, (stage, depth)) in op.stages.iter().enumerate() {
            let running = i == last && !op.state.is_done();
            let mark = if running { "▸ " } else { "✓ " };
            let text = format!("{}{mark}{}", "  ".repeat(*depth as usize), esc(stage));
            let style = if running {
                Style::default().fg(Color::Yellow)
            } else {
                Style::default()
            };
            lines.push(Line::styled(text, style));
        }
        if op.state.is_done() {
            let end = match &op.error {
                Some(e) => format!("{}: {}", op.state, esc(e)),
                None => op.state.to_string(),
            };
            lines.push(Line::styled(
                end,
                Style::default().add_modifier(Modifier::BOLD),
            ));
        }
    }
    // The newest stages: the end of the list.
    let inner = area.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(inner);
    let shown: Vec<Line<'static>> = lines.into_iter().skip(skip).collect();
    frame.render_widget(Paragraph::new(shown).block(block), area);
}

fn draw_status(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let line = match &app.status {
        Some((text, true)) => Line::styled(
            format!("error: {}", esc(text)),
            Style::default().fg(Color::Red),
        ),
        Some((text, false)) => Line::raw(esc(text)),
        None => Line::raw(""),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_hints(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let hints = match &app.modal {
        None => "q quit ? help Tab pane s/t/r start/stop/restart Enter ssh l logs c create",
        Some(Modal::Help) => "any key closes the help",
        Some(Modal::Confirm { .. }) => "y yes  n no",
        Some(Modal::ForkName { .. }) => "Enter fork  Esc cancel",
        Some(Modal::Create(_)) => "Tab/↑↓ field  ←→ image  Enter create  Esc cancel",
        Some(Modal::Log(_)) => "Esc closes the log",
    };
    let live = if app.live {
        Span::styled("● live", Style::default().fg(Color::Green))
    } else {
        Span::styled("○ connecting", Style::default().fg(Color::Red))
    };
    let [left, right] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(13)]).areas(area);
    frame.render_widget(
        Paragraph::new(Line::styled(hints, Style::default().fg(Color::DarkGray))),
        left,
    );
    frame.render_widget(Paragraph::new(Line::from(live)).right_aligned(), right);
}

/// A rectangle of `width` × `height` in the middle of `area` (clipped).
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn draw_modal(frame: &mut Frame<'_>, app: &App, modal: &Modal) {
    let area = frame.area();
    match modal {
        Modal::Help => {
            let lines: Vec<Line<'static>> = HELP
                .iter()
                .map(|(k, what)| Line::raw(format!("{k:<16} {what}")))
                .collect();
            let r = centered(area, 76, HELP.len() as u16 + 2);
            frame.render_widget(Clear, r);
            frame.render_widget(
                Paragraph::new(lines).block(Block::bordered().title(" Keys ")),
                r,
            );
        }
        Modal::Confirm { question, .. } => {
            let r = centered(area, 64, 3);
            frame.render_widget(Clear, r);
            frame.render_widget(
                Paragraph::new(esc(question))
                    .wrap(Wrap { trim: true })
                    .block(Block::bordered().title(" Confirm ")),
                r,
            );
        }
        Modal::ForkName { vm, input } => {
            let r = centered(area, 50, 3);
            frame.render_widget(Clear, r);
            frame.render_widget(
                Paragraph::new(format!("new name: {}_", esc(input)))
                    .block(Block::bordered().title(format!(" Fork {} ", esc(vm)))),
                r,
            );
        }
        Modal::Create(form) => {
            let value = |f: Field| match f {
                Field::Image => format!("< {} >", esc(&form.image_label())),
                Field::Name => esc(&form.name),
                Field::Vcpus => {
                    if form.vcpus.is_empty() && form.field != Field::Vcpus {
                        "(default)".into()
                    } else {
                        esc(&form.vcpus)
                    }
                }
                Field::Memory => {
                    if form.memory.is_empty() && form.field != Field::Memory {
                        "(default; MiB or 2G)".into()
                    } else {
                        esc(&form.memory)
                    }
                }
            };
            let lines: Vec<Line<'static>> = Field::ALL
                .iter()
                .map(|f| {
                    let current = *f == form.field;
                    let cursor = if current && *f != Field::Image {
                        "_"
                    } else {
                        ""
                    };
                    let text = format!("{:>7}: {}{cursor}", f.label(), value(*f));
                    if current {
                        Line::styled(text, Style::default().fg(Color::Yellow))
                    } else {
                        Line::raw(text)
                    }
                })
                .collect();
            let r = centered(area, 54, Field::ALL.len() as u16 + 2);
            frame.render_widget(Clear, r);
            frame.render_widget(
                Paragraph::new(lines).block(Block::bordered().title(" Create a VM ")),
                r,
            );
        }
        Modal::Log(log) => {
            let a = areas(area);
            let r = Rect {
                height: area.height.saturating_sub(a.status.height + a.hints.height),
                ..area
            };
            let inner = r.height.saturating_sub(2) as usize;
            let skip = log.lines.len().saturating_sub(inner);
            let lines: Vec<Line<'static>> = log
                .lines
                .iter()
                .skip(skip)
                .map(|l| Line::raw(esc(l)))
                .collect();
            frame.render_widget(Clear, r);
            frame.render_widget(
                Paragraph::new(lines)
                    .block(Block::bordered().title(format!(" Console log: {} ", esc(&log.vm)))),
                r,
            );
        }
    }
    let _ = app;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::{Msg, tests::vm};
    use banger_proto::VmState;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    fn screen(app: &App, width: u16, height: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buffer = t.backend().buffer();
        let mut text = String::new();
        for y in 0..height {
            for x in 0..width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn every_pane_title_shows_at_80_by_24() {
        let mut app = App::new();
        app.apply(Msg::Vms(Ok(vec![
            vm("dev", VmState::Running),
            vm("evil\x1b[2J", VmState::Stopped),
        ])));
        let text = screen(&app, 80, 24);
        for title in [
            "VMs",
            "Images",
            "Kernels",
            "Snapshots",
            "Operations",
            "Stages",
            "q quit",
        ] {
            assert!(text.contains(title), "{title} missing:\n{text}");
        }
        assert!(text.contains("dev"), "{text}");
        assert!(text.contains("127.0.0.1:2222"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("evil\\x1b[2J"), "{text}");
    }

    #[test]
    fn small_terminals_do_not_panic() {
        let mut app = App::new();
        app.apply(Msg::Vms(Ok(vec![vm("dev", VmState::Running)])));
        for (w, h) in [(1, 1), (10, 5), (40, 10), (80, 24), (200, 60)] {
            screen(&app, w, h);
            app.on_key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE));
            screen(&app, w, h);
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE));
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE));
            screen(&app, w, h);
            app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
        }
    }

    #[test]
    fn the_help_lists_every_key() {
        let mut app = App::new();
        app.on_key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE));
        let text = screen(&app, 80, 24);
        for (key, _) in HELP {
            assert!(text.contains(key), "{key}:\n{text}");
        }
    }
}
