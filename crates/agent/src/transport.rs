//! The byte stream the agent talks on: the virtio-serial port named
//! [`AGENT_PORT_NAME`] (found in sysfs: the guest has no udev, so there
//! are no `/dev/virtio-ports/` links), a device path, stdin/stdout, or
//! connections to a vsock port (Firecracker's vsock device, QEMU's
//! vhost-vsock).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_proto::agent::AGENT_PORT_NAME;

use crate::host::RealHost;
use crate::log;
use crate::{Agent, Outbox};

/// Where virtio-serial ports appear (`vport0p1/name` holds the port's name).
pub const SYSFS_PORTS: &str = "/sys/class/virtio-ports";

/// Pause between looks for the port, and after a read finds no host.
const RETRY: Duration = Duration::from_millis(200);

/// Consecutive read errors (not end of file) before the device is reopened.
const REOPEN_AFTER_ERRORS: u32 = 5;

/// Size of the read buffer.
const READ_BUF: usize = 64 * 1024;

/// How the agent reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The virtio-serial port named [`AGENT_PORT_NAME`], waited for.
    Discover,
    /// A device or any file that reads and writes a byte stream.
    Device(PathBuf),
    /// Frames on stdin, replies on stdout; ends at end of input.
    Stdio,
    /// Connections to this `AF_VSOCK` port of the guest, one at a time
    /// (the host keeps one per VM; a new one replaces a lost one).
    Vsock(u32),
}

/// The entry of `sysfs` (a directory like [`SYSFS_PORTS`]) whose `name`
/// file says `name`, and its `dev` number (`MAJOR:MINOR`) if readable.
pub fn find_port(sysfs: &Path, name: &str) -> Option<(String, Option<(u32, u32)>)> {
    let entries = fs::read_dir(sysfs).ok()?;
    let mut found: Vec<(String, Option<(u32, u32)>)> = entries
        .flatten()
        .filter(|e| fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim_end() == name))
        .filter_map(|e| {
            let entry = e.file_name().into_string().ok()?;
            let dev = fs::read_to_string(e.path().join("dev"))
                .ok()
                .and_then(|d| parse_dev(&d));
            Some((entry, dev))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// `252:1\n` → (252, 1).
fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The device of the agent's port, created in `/dev` from its number if
/// devtmpfs did not make it.
fn locate_port() -> Option<PathBuf> {
    let (entry, dev) = find_port(Path::new(SYSFS_PORTS), AGENT_PORT_NAME)?;
    let path = Path::new("/dev").join(&entry);
    if !path.exists() {
        if let Some((major, minor)) = dev {
            let made = rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(major, minor),
            );
            match made {
                Ok(()) => log!("created {} ({major}:{minor})", path.display()),
                Err(e) => log!("create {} ({major}:{minor}): {e}", path.display()),
            }
        }
    }
    Some(path)
}

/// Opens `path` for reading and writing; a terminal is put in raw mode
/// (so a serial console could carry frames too).
fn open_rw(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(path)?;
    if rustix::termios::isatty(f.as_fd()) {
        let mut t = rustix::termios::tcgetattr(f.as_fd())?;
        t.make_raw();
        rustix::termios::tcsetattr(f.as_fd(), rustix::termios::OptionalActions::Now, &t)?;
    }
    Ok(f)
}

/// Opens the transport's device, retrying until it works.
fn open_port(t: &Transport) -> File {
    let started = Instant::now();
    let mut said: Option<String> = None;
    loop {
        let attempt = match t {
            Transport::Device(p) => Some(p.clone()),
            _ => locate_port(),
        };
        let problem = match attempt {
            Some(path) => match open_rw(&path) {
                Ok(f) => {
                    log!(
                        "talking on {} (after {:.1} s)",
                        path.display(),
                        started.elapsed().as_secs_f64()
                    );
                    return f;
                }
                Err(e) => format!("open {}: {e}", path.display()),
            },
            None => {
                format!("waiting for the virtio-serial port {AGENT_PORT_NAME} (in {SYSFS_PORTS})")
            }
        };
        if said.as_deref() != Some(problem.as_str()) {
            log!("{problem}; retrying");
            said = Some(problem);
        }
        std::thread::sleep(RETRY);
    }
}

/// Serves the transport. Returns only for [`Transport::Stdio`] (at end
/// of input) or when the agent cannot start its writer.
pub fn run(t: Transport) -> io::Result<()> {
    match t {
        Transport::Stdio => serve_stdio(),
        Transport::Vsock(port) => serve_vsock(port),
        Transport::Discover => match vsock_port_asked() {
            Some(port) => serve_vsock(port),
            None => serve_port(&Transport::Discover),
        },
        t => serve_port(&t),
    }
}

/// The vsock port the kernel command line asks for
/// (`banger.agent=vsock:PORT`, what the host sets for guests without
/// virtio-serial, such as Firecracker's), if any.
fn vsock_port_asked() -> Option<u32> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    banger_proto::agent::agent_vsock_from_cmdline(&cmdline)
}

/// A listening `AF_VSOCK` stream socket on `port` of any of the guest's
/// addresses (`VMADDR_CID_ANY`). rustix names the family but has no vsock
/// address, so the bind is libc's.
pub fn vsock_listener(port: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::VSOCK,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: sockaddr_vm is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes, alive for the
    // call; `sock` is an open socket of the same family.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::net::listen(&sock, 1)?;
    Ok(sock)
}

/// Serves connections to vsock `port`, one at a time: frames from the
/// current one, replies to it; when it ends, the next.
fn serve_vsock(port: u32) -> io::Result<()> {
    let listener = vsock_listener(port)?;
    log!("listening on vsock port {port}");
    let current: Arc<Current> = Arc::new(Mutex::new(None));
    let w = Arc::clone(&current);
    let outbox = Outbox::start(move |bytes| match current_file(&w) {
        Some(f) => (&*f).write_all(bytes),
        None => Err(io::Error::other("no host connected")),
    })?;
    let mut agent = Agent::new(Arc::new(outbox), Arc::new(RealHost));
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let conn = match rustix::net::accept_with(&listener, rustix::net::SocketFlags::CLOEXEC) {
            Ok(c) => Arc::new(File::from(c)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                log!("accept on vsock port {port}: {e}");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&conn));
        agent.reset_stream();
        agent.hello();
        loop {
            match (&*conn).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => agent.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log!("read from vsock: {e}");
                    break;
                }
            }
        }
        log!("host disconnected; waiting for the next connection");
        *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The port as the reader and the writer share it: `None` while it is
/// being reopened (a virtio-serial port opens only once at a time, so the
/// old one must be closed first).
type Current = Mutex<Option<Arc<File>>>;

fn current_file(c: &Current) -> Option<Arc<File>> {
    c.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn serve_port(t: &Transport) -> io::Result<()> {
    let current: Arc<Current> = Arc::new(Mutex::new(Some(Arc::new(open_port(t)))));
    let w = Arc::clone(&current);
    let outbox = Outbox::start(move |bytes| match current_file(&w) {
        Some(f) => (&*f).write_all(bytes),
        None => Err(io::Error::other("the port is being reopened")),
    })?;
    let mut agent = Agent::new(Arc::new(outbox), Arc::new(RealHost));
    agent.hello();
    let mut buf = vec![0u8; READ_BUF];
    let mut connected = false;
    let mut errors = 0u32;
    let is_tty = |c: &Current| current_file(c).is_some_and(|f| rustix::termios::isatty(f.as_fd()));
    let mut tty = is_tty(&current);
    loop {
        let result = match current_file(&current) {
            Some(f) => (&*f).read(&mut buf),
            None => Err(io::Error::other("the port is closed")),
        };
        // A raw terminal reads 0 bytes only once hung up: for good.
        let result = match result {
            Ok(0) if tty => Err(io::Error::other("the terminal hung up")),
            r => r,
        };
        match result {
            Ok(0) => {
                // virtio-serial: no host on the other end (now).
                if connected {
                    log!("host disconnected; waiting for it");
                    connected = false;
                }
                agent.reset_stream();
                std::thread::sleep(RETRY);
            }
            Ok(n) => {
                connected = true;
                errors = 0;
                agent.feed(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    log!("read from port: {e}");
                }
                connected = false;
                agent.reset_stream();
                std::thread::sleep(RETRY);
                if errors >= REOPEN_AFTER_ERRORS {
                    log!("reopening the port after {errors} read errors ({e})");
                    // Closed first (the writer drops its reference once
                    // its write fails, as writes do on a port that is gone).
                    *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    let new = Arc::new(open_port(t));
                    *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
                    tty = is_tty(&current);
                    errors = 0;
                    agent.hello();
                }
            }
        }
    }
}

fn serve_stdio() -> io::Result<()> {
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let outbox = Outbox::start(move |bytes| (&stdout).write_all(bytes))?;
    let mut agent = Agent::new(Arc::new(outbox.clone()), Arc::new(RealHost));
    agent.hello();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => agent.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log!("read stdin: {e}");
                break;
            }
        }
    }
    log!("end of input");
    outbox.flush(Duration::from_secs(5));
    outbox.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binding is what a host without vsock loopback can check (a local
    /// connect needs a hypervisor's transport): the port is taken, and a
    /// second listener on it is refused. Skipped where the kernel has no
    /// `AF_VSOCK`.
    #[test]
    fn a_vsock_port_is_listened_on_once() {
        let port = 40_000 + std::process::id() % 20_000;
        let first = match vsock_listener(port) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("skipping: no AF_VSOCK here ({e})");
                return;
            }
        };
        let again = vsock_listener(port).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse, "{again}");
        drop(first);
        vsock_listener(port).unwrap();
    }

    #[test]
    fn the_port_is_found_by_name() {
        let dir = std::env::temp_dir().join(format!("banger-agent-sysfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (entry, name, dev) in [
            ("vport0p0", "other\n", "252:0\n"),
            ("vport0p1", "banger.agent\n", "252:1\n"),
            ("vport0p2", "", "junk"),
        ] {
            fs::create_dir_all(dir.join(entry)).unwrap();
            fs::write(dir.join(entry).join("name"), name).unwrap();
            fs::write(dir.join(entry).join("dev"), dev).unwrap();
        }
        assert_eq!(
            find_port(&dir, AGENT_PORT_NAME),
            Some(("vport0p1".to_owned(), Some((252, 1))))
        );
        assert_eq!(find_port(&dir, "nope"), None);
        assert_eq!(find_port(&dir.join("missing"), AGENT_PORT_NAME), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dev_numbers() {
        assert_eq!(parse_dev("252:1\n"), Some((252, 1)));
        assert_eq!(parse_dev("252"), None);
        assert_eq!(parse_dev("a:b"), None);
    }
}
