//! Printing the end of a log file and following it (`-f`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use crate::CliError;

/// Files larger than this are read from their tail only.
const MAX_READ: u64 = 8 * 1024 * 1024;

/// Renders one line of a file to the output.
pub(crate) type Render<'a> = &'a dyn Fn(&mut dyn Write, &str);

/// Prints the last `lines` lines of `path` (0: all) through `render`, then,
/// with `follow`, keeps printing what is appended (starting over if the
/// file is truncated or replaced) until interrupted.
pub(crate) fn tail(
    path: &Path,
    lines: usize,
    follow: bool,
    render: Render<'_>,
) -> Result<(), CliError> {
    let read_err = |source| CliError::ReadLog {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !follow => {
            crate::output::note!("no log yet at {}", path.display());
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Wait for it to appear.
            loop {
                std::thread::sleep(Duration::from_millis(200));
                if let Ok(f) = File::open(path) {
                    break f;
                }
            }
        }
        Err(e) => return Err(read_err(e)),
    };
    let len = file.metadata().map_err(read_err)?.len();
    let start = len.saturating_sub(MAX_READ);
    file.seek(SeekFrom::Start(start)).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0); // probably cut in the middle
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
    drop(out);
    if !follow {
        return Ok(());
    }
    let mut pos = start + bytes.len() as u64;
    let mut partial = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(_) => continue,
        };
        if len < pos {
            file = File::open(path).map_err(read_err)?;
            pos = 0;
            partial.clear();
        }
        if len == pos {
            continue;
        }
        file.seek(SeekFrom::Start(pos)).map_err(read_err)?;
        let mut chunk = Vec::new();
        let n = (&mut file)
            .take(len - pos)
            .read_to_end(&mut chunk)
            .map_err(read_err)?;
        pos += n as u64;
        partial.extend_from_slice(&chunk);
        let mut out = io::stdout().lock();
        while let Some(i) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            render(
                &mut out,
                String::from_utf8_lossy(&line).trim_end_matches('\n'),
            );
        }
        if out.flush().is_err() {
            return Ok(()); // stdout closed (piped into head)
        }
    }
}

/// Renders a line as it is, control characters escaped when stdout is a
/// terminal (a console log is the guest's text).
pub(crate) fn terminal_safe(out: &mut dyn Write, line: &str) {
    let _ = writeln!(out, "{}", super::format::terminal_safe(line));
}

/// Renders a line as a JSON object `{"line": TEXT}` (JSON lines).
pub(crate) fn json_line(out: &mut dyn Write, line: &str) {
    let _ = writeln!(out, "{}", serde_json::json!({ "line": line }));
}
