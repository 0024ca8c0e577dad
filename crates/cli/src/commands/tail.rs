//! Printing the end of a log file and following it (`-f`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use crate::CliError;

/// Files larger than this are read from their tail only.
const MAX_READ: u64 = 8 * 1024 * 1024;

/// Renders one line of a file (its bytes, without the `\n`) to the output.
pub(crate) type Render<'a> = &'a dyn Fn(&mut dyn Write, &[u8]);

/// Reads up to `max` bytes from the end of `file`; returns them and
/// whether the file had more before them.
fn read_tail(file: &mut File, max: u64) -> io::Result<(Vec<u8>, bool)> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok((bytes, start > 0))
}

/// The lines of `bytes` (a last line without `\n` included).
fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// Prints the last `lines` lines of `path` (0: all) through `render`, then,
/// with `follow`, keeps printing what is appended (starting over if the
/// file is truncated or replaced) until interrupted. `previous` is the
/// older generation of a rotated log (`console.log.1`): lines come from
/// it first when `path` alone has fewer than asked for, and a follower
/// that sees `path` truncated (rotated) reads what it missed from it.
pub(crate) fn tail(
    path: &Path,
    previous: Option<&Path>,
    lines: usize,
    follow: bool,
    render: Render<'_>,
) -> Result<(), CliError> {
    let read_err = |source| CliError::ReadLog {
        path: path.to_owned(),
        source,
    };
    let mut previous_file = previous.and_then(|p| File::open(p).ok());
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !follow && previous_file.is_none() => {
            crate::output::note!("no log yet at {}", path.display());
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Wait for it to appear (printing the older generation first).
            if let Some(mut prev) = previous_file.take() {
                let (bytes, cut) = read_tail(&mut prev, MAX_READ).map_err(read_err)?;
                print_last(&bytes, cut, lines, render);
            }
            if !follow {
                return Ok(());
            }
            loop {
                if let Ok(f) = File::open(path) {
                    break f;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Err(e) => return Err(read_err(e)),
    };
    let (mut bytes, mut cut) = read_tail(&mut file, MAX_READ).map_err(read_err)?;
    let pos = file.stream_position().map_err(read_err)?;
    if let Some(mut prev) = previous_file {
        let enough = lines != 0 && split_lines(&bytes).len() > lines;
        if !cut && !enough {
            let room = MAX_READ.saturating_sub(bytes.len() as u64);
            let (mut older, older_cut) = read_tail(&mut prev, room).map_err(read_err)?;
            older.extend_from_slice(&bytes);
            bytes = older;
            cut = older_cut;
        }
    }
    print_last(&bytes, cut, lines, render);
    if !follow {
        return Ok(());
    }
    let mut pos = pos;
    let mut partial = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(_) => continue,
        };
        if len < pos {
            // Rotated: the older generation holds what came after `pos`
            // (a copy of the whole file when it was rotated).
            if let Some(prev) = previous.and_then(|p| File::open(p).ok()) {
                let mut prev = prev;
                let plen = prev.metadata().map(|m| m.len()).unwrap_or(0);
                if plen > pos && prev.seek(SeekFrom::Start(pos)).is_ok() {
                    let mut missed = Vec::new();
                    if prev.take(plen - pos).read_to_end(&mut missed).is_ok() {
                        partial.extend_from_slice(&missed);
                    }
                }
            } else {
                partial.clear();
            }
            file = File::open(path).map_err(read_err)?;
            pos = 0;
        }
        if len > pos {
            file.seek(SeekFrom::Start(pos)).map_err(read_err)?;
            let n = (&mut file)
                .take(len - pos)
                .read_to_end(&mut partial)
                .map_err(read_err)?;
            pos += n as u64;
        }
        if partial.is_empty() {
            continue;
        }
        let mut out = io::stdout().lock();
        while let Some(i) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            render(&mut out, &line[..line.len() - 1]);
        }
        if out.flush().is_err() {
            return Ok(()); // stdout closed (piped into head)
        }
    }
}

/// Prints the last `lines` lines of `bytes` (0: all); `cut`: the first
/// line is probably cut in the middle, so it is left out.
fn print_last(bytes: &[u8], cut: bool, lines: usize, render: Render<'_>) {
    let mut all = split_lines(bytes);
    if cut && !all.is_empty() {
        all.remove(0);
    }
    let skip = if lines == 0 {
        0
    } else {
        all.len().saturating_sub(lines)
    };
    let mut out = io::stdout().lock();
    for line in &all[skip..] {
        render(&mut out, line);
    }
    let _ = out.flush();
}

/// A line as text (invalid UTF-8 replaced), without a trailing `\r`
/// (serial consoles end lines with `\r\n`).
pub(crate) fn text(line: &[u8]) -> std::borrow::Cow<'_, str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line)
}

/// Renders a line as it is, control characters escaped when stdout is a
/// terminal (a console log is the guest's text).
pub(crate) fn terminal_safe(out: &mut dyn Write, line: &[u8]) {
    let _ = writeln!(out, "{}", super::format::terminal_safe(&text(line)));
}

/// Renders a line's bytes exactly as they are (`--raw`).
pub(crate) fn raw_line(out: &mut dyn Write, line: &[u8]) {
    let _ = out.write_all(line);
    let _ = out.write_all(b"\n");
}

/// Renders a line as a JSON object `{"line": TEXT}` (JSON lines).
pub(crate) fn json_line(out: &mut dyn Write, line: &[u8]) {
    let _ = writeln!(out, "{}", serde_json::json!({ "line": text(line) }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_bytes() {
        assert_eq!(split_lines(b"a\nb\n"), vec![&b"a"[..], b"b"]);
        assert_eq!(split_lines(b"a\nb"), vec![&b"a"[..], b"b"]);
        assert!(split_lines(b"").is_empty());
        assert_eq!(text(b"up\r"), "up");
        let mut out = Vec::new();
        raw_line(&mut out, b"\x1b]0;pwned\x07\r");
        assert_eq!(out, b"\x1b]0;pwned\x07\r\n");
    }
}
