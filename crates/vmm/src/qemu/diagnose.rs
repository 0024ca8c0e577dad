//! Explaining a QEMU that exited during start: the tail of what it wrote
//! to `vmm.log`, and a refused host port forward mapped back to the
//! forward, with the reason found by binding it ourselves.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;

use super::args::hostfwd_rule;
use crate::error::VmmError;
use crate::spec::{NetBackend, PortForward, VmSpec};

/// The last lines QEMU wrote to `vmm.log` since `start`, joined with `; `
/// (at most 8 lines and about 1000 bytes, keeping the end).
pub(crate) fn log_tail(log: &Path, start: u64) -> String {
    let mut buf = Vec::new();
    let read = File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(start))?;
        f.take(256 * 1024).read_to_end(&mut buf)
    });
    if read.is_err() {
        return String::new();
    }
    tail_lines(&String::from_utf8_lossy(&buf), 8, 1000)
}

pub(crate) fn tail_lines(text: &str, max_lines: usize, max_bytes: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(max_lines)..].join("; ");
    if joined.len() <= max_bytes {
        return joined;
    }
    let mut cut = joined.len() - max_bytes;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &joined[cut..])
}

/// Turns slirp's "Could not set up host forwarding rule 'RULE'" into an
/// error naming the forward, with the reason found by binding it ourselves.
pub(super) fn host_forward_error(spec: &VmSpec, tail: &str, log: &Path) -> Option<VmmError> {
    const MARK: &str = "Could not set up host forwarding rule '";
    let start = tail.find(MARK)? + MARK.len();
    let rule = &tail[start..start + tail[start..].find('\'')?];
    let forward = spec
        .net
        .iter()
        .filter_map(|nic| match &nic.backend {
            NetBackend::User { forwards, .. } => Some(forwards),
            NetBackend::Tap { .. } | NetBackend::Detached => None,
        })
        .flatten()
        .find(|f| hostfwd_rule(f) == rule)?;
    Some(VmmError::HostForward {
        proto: forward.proto,
        host_addr: forward.host_addr,
        host_port: forward.host_port,
        guest_port: forward.guest_port,
        reason: bind_diagnosis(forward),
        log: log.to_path_buf(),
    })
}

fn bind_diagnosis(forward: &PortForward) -> String {
    let addr = (forward.host_addr, forward.host_port);
    let result = match forward.proto {
        crate::spec::Proto::Tcp => TcpListener::bind(addr).map(drop),
        crate::spec::Proto::Udp => UdpSocket::bind(addr).map(drop),
    };
    match result {
        Ok(()) => "qemu could not bind it (it is free now, so it was probably in use)".into(),
        Err(e) => match e.kind() {
            io::ErrorKind::AddrInUse => "address already in use".into(),
            io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need privileges)".into()
            }
            io::ErrorKind::AddrNotAvailable => "address not available on this host".into(),
            _ => e.to_string().to_lowercase(),
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::qemu::test_spec::sample;
    use crate::spec::Proto;

    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_bytes() {
        let text = "a\n\nb\nc\n  d  \n";
        assert_eq!(tail_lines(text, 2, 100), "c; d");
        assert_eq!(tail_lines(text, 10, 100), "a; b; c; d");
        assert_eq!(tail_lines("0123456789", 1, 4), "...6789");
        assert_eq!(tail_lines("", 3, 10), "");
    }

    #[test]
    fn hostfwd_failure_is_mapped_to_the_forward() {
        let spec = sample();
        let tail = "qemu-system-x86_64: -netdev user,id=net0,hostfwd=...: Could not set up host forwarding rule 'udp:127.0.0.1:5353-:53'";
        let err = host_forward_error(&spec, tail, Path::new("/x/vmm.log")).unwrap();
        match err {
            VmmError::HostForward {
                proto, host_port, ..
            } => {
                assert_eq!(proto, Proto::Udp);
                assert_eq!(host_port, 5353);
            }
            other => panic!("{other}"),
        }
        assert!(host_forward_error(&spec, "something else", Path::new("/x")).is_none());
    }
}
