//! `vm stats`, `vm ports`, `vm exec` and `vm cp`: the guest agent's
//! features, through the daemon.
//!
//! `vm exec` drives an exec session with `vm.exec.io` calls: stdin read by
//! a thread is sent with each call, and each answer carries the output
//! since the previous one (long-polled). Ctrl-C sends SIGINT to the guest
//! process (with `-t` it is a byte on the terminal, as in `ssh -t`).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use banger_proto::agent::ListeningPort;
use banger_proto::methods;
use banger_proto::vm::{
    CpParams, CpResult, ExecBeginParams, ExecBegun, ExecIoParams, ExecIoResult, VmRef, VmStats,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::format::{escape_control, human_bytes, table};
use super::print_json;
use crate::CliError;
use crate::client::Client;

pub(crate) fn stats(
    client: &mut Client,
    name: &str,
    watch: bool,
    json: bool,
) -> Result<(), CliError> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let sig = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(CliError::Io)?;
    let result = loop {
        let s: VmStats = match client.call::<methods::VmStats>(&VmRef {
            name: name.to_owned(),
        }) {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        if json {
            // One JSON object per line while watching.
            let line =
                serde_json::to_string(&s).map_err(|e| CliError::BadResponse(e.to_string()))?;
            println!("{line}");
        } else {
            print_stats(&s);
        }
        if !watch {
            break Ok(());
        }
        for _ in 0..20 {
            if interrupted.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if interrupted.load(Ordering::Relaxed) {
            break Ok(());
        }
    };
    signal_hook::low_level::unregister(sig);
    result
}

fn print_stats(s: &VmStats) {
    let cpu = s
        .cpu_percent
        .map(|c| format!("{c:.1}%"))
        .unwrap_or_else(|| "-".into());
    println!(
        "{}: cpu {cpu}, memory {} / {}, load {:.2} {:.2} {:.2}, up {:.0} s",
        s.name,
        human_bytes(s.memory_used_bytes),
        human_bytes(s.memory_total_bytes),
        s.load[0],
        s.load[1],
        s.load[2],
        s.uptime_s
    );
    let rows: Vec<Vec<String>> = s
        .disks
        .iter()
        .map(|d| {
            vec![
                d.mount.clone(),
                d.device.clone(),
                human_bytes(d.used_bytes),
                human_bytes(d.total_bytes),
            ]
        })
        .collect();
    table(&["MOUNT", "DEVICE", "USED", "SIZE"], &rows);
}

pub(crate) fn ports(
    client: &mut Client,
    name: &str,
    json: bool,
    raw: bool,
) -> Result<(), CliError> {
    let ports: Vec<ListeningPort> = client.call::<methods::VmPorts>(&VmRef {
        name: name.to_owned(),
    })?;
    if json {
        return print_json(&ports);
    }
    let (header, rows) = port_rows(&ports);
    if raw {
        // The guest's names as they are: tab-separated, no escaping.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", header.join("\t"));
        for row in rows {
            let _ = writeln!(out, "{}", row.join("\t"));
        }
        return Ok(());
    }
    // Table cells have their control characters escaped.
    table(&header, &rows);
    Ok(())
}

/// The header and rows of `vm ports`.
fn port_rows(ports: &[ListeningPort]) -> ([&'static str; 5], Vec<Vec<String>>) {
    let rows = ports
        .iter()
        .map(|p| {
            vec![
                p.proto.clone(),
                p.address.clone(),
                p.port.to_string(),
                p.pid.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                p.process.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    (["PROTO", "ADDRESS", "PORT", "PID", "PROCESS"], rows)
}

/// Restores the terminal's mode when dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Runs `command` in the VM, in working directory `cwd` (the agent's
/// default, `/root`, when `None`) with `env` added.
pub(crate) fn exec_in(
    client: &mut Client,
    name: &str,
    tty: bool,
    command: &[String],
    cwd: Option<String>,
    mut env: Vec<(String, String)>,
) -> Result<(), CliError> {
    let size = if tty {
        rustix::termios::tcgetwinsize(std::io::stdout()).ok()
    } else {
        None
    };
    let begun: ExecBegun = client.call::<methods::VmExecBegin>(&ExecBeginParams {
        name: name.to_owned(),
        argv: command.to_vec(),
        tty,
        rows: size.map(|s| s.ws_row),
        cols: size.map(|s| s.ws_col),
        env: {
            if tty {
                env.push((
                    "TERM".into(),
                    std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
                ));
            }
            env
        },
        cwd,
    })?;
    let _raw = if tty && std::io::stdin().is_terminal() {
        RawMode::enter()
    } else {
        None
    };
    // Ctrl-C: forwarded as SIGINT (without a terminal; with one it is a byte).
    let interrupted = Arc::new(AtomicBool::new(false));
    let sig = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(CliError::Io)?;
    let stdin = spawn_stdin_reader();
    let mut eof_sent = false;
    let mut stdin_ended = false;
    let mut pending: Vec<u8> = Vec::new();
    // A closed stdout is an error to handle here, not a SIGPIPE death:
    // the remote command is told to end first.
    crate::set_sigpipe(libc::SIG_IGN);
    let mut dropped = [Dropped::new("stdout"), Dropped::new("stderr")];
    let result = loop {
        let mut p = ExecIoParams {
            exec_id: begun.exec_id.clone(),
            wait_ms: Some(200),
            ..Default::default()
        };
        // Input not yet taken stays in `pending` (the daemon takes what
        // the guest's window allows: `stdin_accepted`); more is read
        // from our stdin only while little is pending.
        while pending.len() <= 256 * 1024 && !stdin_ended {
            match stdin.try_recv() {
                Ok(Some(chunk)) => pending.extend_from_slice(&chunk),
                Ok(None) => stdin_ended = true,
                Err(_) => break,
            }
        }
        if !pending.is_empty() {
            p.stdin = Some(B64.encode(&pending));
            p.wait_ms = Some(0);
        }
        if stdin_ended && !eof_sent {
            p.stdin_eof = true;
        }
        if interrupted.swap(false, Ordering::Relaxed) {
            p.signal = Some("INT".into());
        }
        let r: ExecIoResult = match client.call::<methods::VmExecIo>(&p) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        if p.stdin.is_some() {
            // A daemon without flow control takes everything.
            let taken = r
                .stdin_accepted
                .map_or(pending.len(), |n| usize::try_from(n).unwrap_or(usize::MAX));
            pending.drain(..taken.min(pending.len()));
        }
        if p.stdin_eof && pending.is_empty() {
            eof_sent = true;
        }
        if let Err(e) = write_out(&mut std::io::stdout(), &r.stdout) {
            if matches!(&e, CliError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe) {
                // What reads our output has gone, as `| head -1` does: the
                // remote command ends as a local one would (SIGPIPE is not
                // a signal the agent sends; TERM is), and so do we,
                // quietly, with the status a shell shows for SIGPIPE.
                let _ = client.call::<methods::VmExecIo>(&ExecIoParams {
                    exec_id: begun.exec_id.clone(),
                    signal: Some("TERM".into()),
                    wait_ms: Some(0),
                    ..Default::default()
                });
                break Err(CliError::ChildExit(128 + signal_number("PIPE")));
            }
            break Err(e);
        }
        dropped[0].after(&r.stdout, r.stdout_dropped);
        write_out(&mut std::io::stderr(), &r.stderr)?;
        dropped[1].after(&r.stderr, r.stderr_dropped);
        if r.done {
            for d in &dropped {
                d.finish();
            }
            break match (r.exit_code, r.signal) {
                (Some(0), _) => Ok(()),
                (Some(code), _) => Err(CliError::ChildExit(code)),
                (None, Some(signal)) => {
                    eprintln!("banger: the command was killed by SIG{signal}");
                    Err(CliError::ChildExit(128 + signal_number(&signal)))
                }
                (None, None) => Err(CliError::ChildExit(255)),
            };
        }
    };
    signal_hook::low_level::unregister(sig);
    result
}

/// What the daemon dropped of one stream of an exec (it holds 16 MiB of
/// each for a client that reads slowly): said on stderr when it first
/// happens, and the total at the end when it happened again.
struct Dropped {
    stream: &'static str,
    delivered: u64,
    dropped: u64,
    said: u64,
}

impl Dropped {
    fn new(stream: &'static str) -> Self {
        Self {
            stream,
            delivered: 0,
            dropped: 0,
            said: 0,
        }
    }

    /// After writing an answer's `b64` output of this stream; `dropped`:
    /// the bytes the daemon dropped after it.
    fn after(&mut self, b64: &str, dropped: u64) {
        // base64: 3 bytes per 4 characters, less the padding.
        let padding = b64.bytes().rev().take_while(|b| *b == b'=').count();
        self.delivered += (b64.len() / 4 * 3).saturating_sub(padding) as u64;
        if dropped == 0 {
            return;
        }
        if self.dropped == 0 {
            eprintln!("{}", self.message(dropped));
            self.said = dropped;
        }
        self.dropped += dropped;
    }

    fn message(&self, dropped: u64) -> String {
        format!(
            "banger: output truncated after {} bytes of {}: {} bytes dropped \
             (it was read more slowly than the command wrote it)",
            self.delivered, self.stream, dropped
        )
    }

    fn finish(&self) {
        if self.dropped > self.said {
            eprintln!(
                "banger: {} bytes of {} dropped in all",
                self.dropped, self.stream
            );
        }
    }
}

fn write_out(w: &mut impl Write, b64: &str) -> Result<(), CliError> {
    if b64.is_empty() {
        return Ok(());
    }
    let bytes = B64
        .decode(b64)
        .map_err(|e| CliError::BadResponse(format!("exec output is not base64: {e}")))?;
    w.write_all(&bytes).map_err(CliError::Io)?;
    w.flush().map_err(CliError::Io)
}

fn signal_number(name: &str) -> i32 {
    match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "PIPE" => 13,
        "TERM" => 15,
        _ => 0,
    }
}

/// Reads stdin on a thread: `Some(bytes)` per read, `None` at its end.
fn spawn_stdin_reader() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// `NAME:/path` → `(NAME, /path)`; a host path otherwise.
fn split_remote(arg: &str) -> Option<(&str, &str)> {
    let (name, path) = arg.split_once(':')?;
    (!name.is_empty() && !name.contains('/') && path.starts_with('/')).then_some((name, path))
}

/// A host path made absolute against the current directory (the daemon
/// has another one).
fn absolute(path: &str) -> Result<PathBuf, CliError> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    Ok(std::env::current_dir().map_err(CliError::Io)?.join(p))
}

pub(crate) fn cp(
    client: &mut Client,
    src: &str,
    dst: &str,
    recursive: bool,
    json: bool,
) -> Result<(), CliError> {
    let params = match (split_remote(src), split_remote(dst)) {
        (None, Some((name, guest))) => CpParams {
            name: name.to_owned(),
            to_guest: true,
            host_path: absolute(src)?.display().to_string(),
            guest_path: guest.to_owned(),
            recursive,
        },
        (Some((name, guest)), None) => CpParams {
            name: name.to_owned(),
            to_guest: false,
            host_path: absolute(dst)?.display().to_string(),
            guest_path: guest.to_owned(),
            recursive,
        },
        _ => {
            return Err(CliError::BadParams(
                "give one side as NAME:/absolute/path and the other as a host path".into(),
            ));
        }
    };
    let r: CpResult = client.call::<methods::VmCp>(&params)?;
    if json {
        return print_json(&r);
    }
    match r.entries {
        Some(entries) => crate::output::note!(
            "copied {entries} entries ({}) to {}{}",
            human_bytes(r.bytes),
            escape_control(&r.destination, false),
            match r.skipped {
                Some(n) if n > 0 => format!("; left out {n} sockets, devices or FIFOs"),
                _ => String::new(),
            }
        ),
        None => crate::output::note!(
            "copied {} to {} (mode {:o})",
            human_bytes(r.bytes),
            escape_control(&r.destination, false),
            r.mode
        ),
    }
    if let Some(note) = stripped_note(&r) {
        crate::output::note!("{note}");
    }
    Ok(())
}

/// The note saying which files arrived without the setuid, setgid or
/// sticky bit they had in the guest.
fn stripped_note(r: &CpResult) -> Option<String> {
    let n = r.stripped.filter(|n| *n > 0)?;
    let listed: Vec<String> = r
        .stripped_paths
        .iter()
        .map(|p| escape_control(p, false).into_owned())
        .collect();
    let more = n.saturating_sub(listed.len() as u64);
    Some(format!(
        "note: removed setuid/setgid/sticky bits from {n} file(s): {}{}",
        listed.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped_bits_are_said() {
        let mut r = CpResult {
            bytes: 1,
            mode: 0o755,
            destination: "/h/passwd".into(),
            entries: None,
            skipped: None,
            stripped: None,
            stripped_paths: Vec::new(),
        };
        assert_eq!(stripped_note(&r), None);
        r.stripped = Some(20);
        r.stripped_paths = vec!["/h/a".into(), "/h/\x1b[2Jb".into()];
        assert_eq!(
            stripped_note(&r).unwrap(),
            "note: removed setuid/setgid/sticky bits from 20 file(s): /h/a, /h/\\x1b[2Jb and 18 more"
        );
    }

    #[test]
    fn dropped_exec_output_is_said_with_what_came_before() {
        let mut d = Dropped::new("stdout");
        d.after(&B64.encode(b"hello"), 0);
        d.after(&B64.encode(b"abcdef"), 0);
        assert_eq!(d.delivered, 11);
        d.after("", 100);
        assert_eq!(
            d.message(100),
            "banger: output truncated after 11 bytes of stdout: 100 bytes dropped \
             (it was read more slowly than the command wrote it)"
        );
        assert_eq!((d.dropped, d.said), (100, 100));
        d.after("", 5);
        assert_eq!(d.dropped, 105);
    }

    #[test]
    fn port_names_from_a_guest_are_escaped_in_the_table() {
        let ports = vec![ListeningPort {
            proto: "tcp".into(),
            address: "0.0.0.0".into(),
            port: 8000,
            pid: Some(42),
            process: Some("\x1b]0;pwned\x07".into()),
        }];
        let (header, rows) = port_rows(&ports);
        let text = super::super::format::render_table(&header, &rows, None);
        assert!(text.contains("\\x1b]0;pwned\\x07"), "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    }

    #[test]
    fn remote_paths_need_a_name_and_an_absolute_path() {
        assert_eq!(split_remote("dev:/root/x"), Some(("dev", "/root/x")));
        assert_eq!(split_remote("./dev:/x"), None);
        assert_eq!(split_remote("dev:relative"), None);
        assert_eq!(split_remote("/tmp/file"), None);
        assert_eq!(split_remote(":/x"), None);
    }
}
