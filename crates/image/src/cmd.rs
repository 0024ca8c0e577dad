//! Running external programs: stdout and stderr captured, failures turned
//! into [`ImageError::Command`] with the tail of what the program said.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use crate::error::{ImageError, Result};

/// How much of a failed command's output ends up in the error.
const TAIL_LINES: usize = 15;
const TAIL_BYTES: usize = 2000;

/// A command with the environment banger wants for every tool it runs:
/// C locale (output is parsed) and no interactive prompts.
pub(crate) fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion; non-zero exit is an error carrying stderr's tail.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd.output().map_err(|source| ImageError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let status = match (output.status.code(), signal_of(&output.status)) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "unknown status".to_owned(),
    };
    let said = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &output.stderr
    } else {
        &output.stdout
    };
    Err(ImageError::Command {
        command: display(cmd),
        status,
        stderr: tail(&String::from_utf8_lossy(said)),
    })
}

fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

/// The command line, shell-like, for messages.
pub(crate) fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// The last few non-empty lines of `text`, at most [`TAIL_BYTES`] long.
pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let joined = lines[start..].join("\n");
    if joined.len() <= TAIL_BYTES {
        return joined;
    }
    let mut cut = joined.len() - TAIL_BYTES;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &joined[cut..])
}

/// Whether this process runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid and gid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text);
        assert!(t.starts_with("line 25"));
        assert!(t.ends_with("line 39"));
    }

    #[test]
    fn tail_caps_bytes() {
        let text = "é".repeat(5000);
        let t = tail(&text);
        assert!(t.len() <= TAIL_BYTES + 4);
        assert!(t.starts_with("..."));
    }

    #[test]
    fn failure_carries_stderr_tail() {
        let mut cmd = command("sh");
        cmd.args(["-c", "echo out; echo oops >&2; exit 3"]);
        match run(&mut cmd) {
            Err(ImageError::Command {
                command,
                status,
                stderr,
            }) => {
                assert_eq!(command, "sh -c echo out; echo oops >&2; exit 3");
                assert_eq!(status, "exit status 3");
                assert_eq!(stderr, "oops");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_program_is_spawn_error() {
        let err = run(&mut command("/nonexistent/banger-tool")).unwrap_err();
        assert!(matches!(err, ImageError::Spawn { .. }), "{err}");
    }
}
