//! `banger-agent`: the agent inside every banger guest (see docs/agent.md).
//!
//! ```text
//! banger-agent                 the virtio-serial port named banger.agent
//! banger-agent --device PATH   any read-write byte stream (tests, serial)
//! banger-agent --stdio         frames on stdin, replies on stdout
//! banger-agent --vsock PORT    connections to vsock PORT
//! banger-agent --init          PID 1 of an image without an init
//! ```
//!
//! Run as PID 1 (the kernel's `init=`), it is the init whatever its
//! arguments: see `banger_agent::init`.

use std::path::PathBuf;
use std::process::ExitCode;

use banger_agent::log;
use banger_agent::transport::{self, Transport};

const USAGE: &str = "\
usage: banger-agent [--device PATH | --stdio | --vsock PORT]

The banger guest agent. Without options it talks on the virtio-serial
port named banger.agent (found in /sys/class/virtio-ports), waiting for
it to appear and never exiting; or, when the kernel command line has
banger.agent=vsock:PORT (Firecracker guests), serves vsock PORT.

  --device PATH   talk on PATH (a device or a file that reads and writes
                  a byte stream) instead
  --stdio         read frames from stdin, write to stdout; exit at end
                  of input
  --vsock PORT    serve connections to vsock PORT of the guest (one at a
                  time), for hosts that reach the agent over vsock
  --init          be the guest's init (PID 1 of an image without one):
                  mount, hostname, network, reaping, power-off, and the
                  agent as a child; implied when running as PID 1, and
                  refused otherwise
  --version       print the version
  --help          print this help
";

/// A vsock port: a number the guest can listen on (not `VMADDR_PORT_ANY`).
fn vsock_port(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|p| *p != u32::MAX)
        .ok_or_else(|| format!("bad vsock port {text:?}: want a number below 4294967295"))
}

fn parse(args: &[String]) -> Result<Option<Transport>, String> {
    let mut transport = Transport::Discover;
    let mut chosen = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let next = match a.as_str() {
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--version" | "-V" => {
                println!("banger-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--stdio" => Transport::Stdio,
            "--device" => {
                let p = it.next().ok_or("--device needs a path")?;
                Transport::Device(PathBuf::from(p))
            }
            s if s.starts_with("--device=") => {
                Transport::Device(PathBuf::from(&s["--device=".len()..]))
            }
            "--vsock" => {
                let p = it.next().ok_or("--vsock needs a port")?;
                Transport::Vsock(vsock_port(p)?)
            }
            s if s.starts_with("--vsock=") => Transport::Vsock(vsock_port(&s["--vsock=".len()..])?),
            other => return Err(format!("unknown argument {other:?}")),
        };
        if chosen {
            return Err("give at most one of --device, --stdio and --vsock".into());
        }
        chosen = true;
        transport = next;
    }
    Ok(Some(transport))
}

/// Makes glibc's malloc give large blocks back to the system: by default
/// it raises its mmap threshold to the size of each large block freed, so
/// after one 1 MiB file chunk every later one comes from the heap and the
/// agent keeps megabytes it no longer uses. A fixed threshold keeps the
/// resident size near 2 MiB after transfers instead of 4-9 MiB.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if rustix::process::getpid().is_init() {
        banger_agent::init::run();
    }
    if args.iter().any(|a| a == "--init") {
        // The init mounts, reconfigures the network and powers the
        // machine off: never on a machine it is not the init of.
        eprintln!("banger-agent: --init: not running as PID 1; refusing");
        return ExitCode::from(2);
    }
    let transport = match parse(&args) {
        Ok(Some(t)) => t,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprint!("banger-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    log!(
        "banger-agent {} (protocol {}) starting",
        env!("CARGO_PKG_VERSION"),
        banger_proto::agent::AGENT_PROTOCOL_VERSION
    );
    banger_agent::image_config::load();
    match transport::run(transport) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("banger-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn transports_parse() {
        assert_eq!(parse(&args(&[])), Ok(Some(Transport::Discover)));
        assert_eq!(
            parse(&args(&["--vsock", "1024"])),
            Ok(Some(Transport::Vsock(1024)))
        );
        assert_eq!(
            parse(&args(&["--vsock=52"])),
            Ok(Some(Transport::Vsock(52)))
        );
        for bad in [
            &["--vsock"][..],
            &["--vsock", "x"],
            &["--vsock", "4294967295"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
        let both = parse(&args(&["--stdio", "--vsock", "1"])).unwrap_err();
        assert!(both.contains("at most one"), "{both}");
    }
}
