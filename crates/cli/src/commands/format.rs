//! Small helpers for text output and size arguments.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use comfy_table::{Cell, ContentArrangement, Table, presets};

use crate::CliError;

/// Parses `1024`, `512M`, `2G`, `1T` (binary units) into bytes; a plain
/// number means MiB.
pub(crate) fn parse_size(flag: &str, text: &str) -> Result<u64, CliError> {
    banger_config::parse_size(text).ok_or_else(|| {
        CliError::BadParams(format!(
            "{flag} {text:?}: use a number of MiB or a size like 512M, 2G"
        ))
    })
}

pub(crate) fn mib(flag: &str, text: &str) -> Result<u32, CliError> {
    let bytes = parse_size(flag, text)?;
    u32::try_from(bytes >> 20)
        .map_err(|_| CliError::BadParams(format!("{flag} {text:?} is too large")))
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Milliseconds since the Unix epoch, by the host's clock (0 if it is
/// set before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long before `now_ms` the time `ms` was, roughly: `12 s ago`,
/// `5 min ago`, `3 h ago`, `2 d ago` (`just now` for a time ahead of the
/// clock).
pub(crate) fn ago(ms: i64, now_ms: i64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        i64::MIN..=0 => "just now".into(),
        1..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(ms: i64) -> String {
    let t = banger_proto::time::UtcTime::from_unix_ms(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `text` with every control character (ESC, CR, BEL, DEL, C1 controls...)
/// written as a visible escape (`\x1b`, `\u{9b}`), so text a guest chose
/// (a process name, a disk label, a console line) cannot move the cursor,
/// recolour or retitle the user's terminal. `keep_lines` keeps `\n` and
/// `\t` as they are (logs); a table cell escapes them too.
pub(crate) fn escape_control(text: &str, keep_lines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && !(keep_lines && (c == '\n' || c == '\t'));
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if c.is_ascii() {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        }
    }
    Cow::Owned(out)
}

/// [`escape_control`] of a log line when stdout is a terminal; the line
/// as it is when the output goes to a file or a pipe (which keeps the
/// bytes; `--json` escapes anyway).
pub(crate) fn terminal_safe(line: &str) -> Cow<'_, str> {
    if std::io::stdout().is_terminal() {
        escape_control(line, true)
    } else {
        Cow::Borrowed(line)
    }
}

/// The terminal's width when stdout is one, for [`render_table`].
fn terminal_width() -> Option<u16> {
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    rustix::termios::tcgetwinsize(&out)
        .ok()
        .map(|w| w.ws_col)
        .filter(|&c| c > 0)
}

/// Rows as left-aligned columns under a header, two spaces apart; cells'
/// control characters escaped; fitted to `width` columns (long cells
/// wrap) when given, else as wide as the content (a pipe gets one line
/// per row).
pub(crate) fn render_table(header: &[&str], rows: &[Vec<String>], width: Option<u16>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    match width {
        Some(w) => {
            t.set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(w);
        }
        None => {
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    let cell = |s: &str| Cell::new(escape_control(s, false));
    t.set_header(header.iter().map(|h| cell(h)).collect::<Vec<_>>());
    for row in rows {
        t.add_row(row.iter().map(|c| cell(c)).collect::<Vec<_>>());
    }
    let last = t.column_count().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    t.trim_fmt()
}

/// Prints rows as a table (see [`render_table`]) fitted to the terminal.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("{}", render_table(header, rows, terminal_width()));
}

/// Prints `key value` lines, keys in a column, values' control
/// characters escaped.
pub(crate) fn key_values<K: AsRef<str>, V: AsRef<str>>(rows: &[(K, V)]) {
    let mut out = std::io::stdout().lock();
    for (k, v) in rows {
        let _ = writeln!(
            out,
            "{:<10} {}",
            k.as_ref(),
            escape_control(v.as_ref(), false)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("--m", "1024").unwrap(), 1024 << 20);
        assert_eq!(parse_size("--m", "2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("--m", "512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("--m", "1t").unwrap(), 1 << 40);
        for bad in ["", "G", "1X", "-1", "99999999999999999999T"] {
            assert!(parse_size("--m", bad).is_err(), "{bad}");
        }
        assert_eq!(mib("--m", "1G").unwrap(), 1024);
    }

    #[test]
    fn times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_143_705_999), "2026-12-01 16:48:25 UTC");
        assert_eq!(utc(-1000), "1969-12-31 23:59:59 UTC");
        let now = 1_796_143_705_000;
        assert_eq!(ago(now + 5000, now), "just now");
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - 12_000, now), "12 s ago");
        assert_eq!(ago(now - 5 * 60_000 - 1, now), "5 min ago");
        assert_eq!(ago(now - 3 * 3_600_000, now), "3 h ago");
        assert_eq!(ago(now - 2 * 86_400_000, now), "2 d ago");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("plain text", false), "plain text");
        assert!(matches!(escape_control("plain", false), Cow::Borrowed(_)));
        assert_eq!(escape_control("\x1b[31mred", false), "\\x1b[31mred");
        assert_eq!(escape_control("a\tb\nc\r", true), "a\tb\nc\\x0d");
        assert_eq!(escape_control("a\tb\n", false), "a\\x09b\\x0a");
        assert_eq!(escape_control("\u{9b}2J\u{7f}", false), "\\u{9b}2J\\x7f");
        assert_eq!(escape_control("été ✓", false), "été ✓");
    }

    #[test]
    fn table_cells_never_carry_control_characters() {
        let rows = vec![vec!["tcp".to_owned(), "\x1b[31mevil\x07".to_owned()]];
        let text = render_table(&["PROTO", "PROCESS"], &rows, None);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("\\x1b[31mevil\\x07"), "{text}");
    }

    #[test]
    fn tables_line_up_like_before() {
        let rows = vec![
            vec!["dev".to_owned(), "running".to_owned(), String::new()],
            vec![
                "a-longer-name".to_owned(),
                "stopped".to_owned(),
                "x".to_owned(),
            ],
        ];
        let text = render_table(&["NAME", "STATE", "SSH"], &rows, None);
        assert_eq!(
            text,
            "NAME           STATE    SSH\n\
             dev            running\n\
             a-longer-name  stopped  x"
        );
    }

    #[test]
    fn a_narrow_terminal_wraps_without_panicking() {
        let long = "a-process-name-much-longer-than-the-terminal-is-wide ".repeat(3);
        let rows = vec![vec!["udp".to_owned(), long.clone(), "1234".to_owned()]];
        for width in [0, 1, 5, 20, 40, 80, u16::MAX] {
            // However narrow, every character is still there, wrapped.
            let text = render_table(&["PROTO", "PROCESS", "PID"], &rows, Some(width));
            let letters = |t: &str| t.chars().filter(|c| !c.is_whitespace()).count();
            assert_eq!(
                letters(&text),
                letters("PROTO PROCESS PID udp 1234") + letters(&long),
                "{width}: {text}"
            );
        }
        let text = render_table(&["PROTO", "PROCESS", "PID"], &rows, Some(40));
        assert!(text.lines().count() > 2, "wrapped:\n{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 40), "{text}");
    }
}
