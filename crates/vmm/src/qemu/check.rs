//! What is refused before QEMU starts: a spec of the wrong shape (ids,
//! MAC, ports, socket path length) and missing kernel, initrd or drives.

use std::path::Path;

use super::VmFiles;
use crate::error::VmmError;
use crate::proc;
use crate::spec::{MemoryBacking, NetBackend, VmSpec};

/// `sun_path` holds 108 bytes including the terminating NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// Kernel, initrd and drives must exist before QEMU is started, so that
/// the error names the file rather than QEMU's phrasing of it; so must a
/// memory file mapped copy-on-write (it holds the RAM a restore starts
/// from), and a shared one's directory (QEMU creates the file).
pub(super) fn check_files(spec: &VmSpec) -> Result<(), VmmError> {
    let mut wanted: Vec<(String, &Path)> = vec![("kernel".into(), &spec.boot.kernel)];
    if let Some(initrd) = &spec.boot.initrd {
        wanted.push(("initrd".into(), initrd));
    }
    for drive in &spec.drives {
        wanted.push((format!("drive {}", drive.id), &drive.path));
    }
    match &spec.memory {
        MemoryBacking::Anonymous => {}
        MemoryBacking::File {
            path,
            shared: false,
        } => wanted.push(("memory file".into(), path)),
        MemoryBacking::File { path, shared: true } => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            wanted.push((
                "directory of the memory file".into(),
                dir.unwrap_or(Path::new(".")),
            ));
        }
    }
    for (what, path) in wanted {
        match proc::exists(path) {
            Ok(true) => {}
            Ok(false) => {
                return Err(VmmError::MissingFile {
                    what,
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(VmmError::Io {
                    action: "stat",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn check_id(what: &str, id: &str) -> Result<(), VmmError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(VmmError::InvalidSpec(format!(
            "{what} {id:?} must be 1 to 64 of [A-Za-z0-9._-]"
        )))
    }
}

/// QEMU ids must also start with a letter.
fn check_qemu_id(what: &str, id: &str) -> Result<(), VmmError> {
    check_id(what, id)?;
    if id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Ok(())
    } else {
        Err(VmmError::InvalidSpec(format!(
            "{what} {id:?} must start with a letter"
        )))
    }
}

fn check_mac(mac: &str) -> Result<(), VmmError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(VmmError::InvalidSpec(format!(
            "mac {mac:?} must look like 52:54:00:12:34:56"
        )))
    }
}

pub(crate) fn check_spec(spec: &VmSpec) -> Result<(), VmmError> {
    let invalid = |m: String| Err(VmmError::InvalidSpec(m));
    check_id("vm id", &spec.vm_id)?;
    if spec.machine.vcpus == 0 || spec.machine.vcpus > 64 {
        return invalid(format!("vcpus must be 1 to 64, got {}", spec.machine.vcpus));
    }
    if spec.machine.memory_mib < 16 {
        return invalid(format!(
            "memory must be at least 16 MiB, got {}",
            spec.machine.memory_mib
        ));
    }
    if let Some(crate::AgentChannel::HybridVsock { .. }) = &spec.agent {
        return invalid(
            "hybrid vsock is firecracker's; qemu reaches the agent over virtio-serial".into(),
        );
    }
    let socket = VmFiles::in_dir(&spec.vm_dir).control_socket;
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return invalid(format!(
            "vm dir {} is too long for a unix socket path ({} bytes, at most {MAX_SOCKET_PATH})",
            spec.vm_dir.display(),
            socket.as_os_str().len()
        ));
    }
    let mut ids = Vec::new();
    for drive in &spec.drives {
        check_qemu_id("drive id", &drive.id)?;
        if ids.contains(&drive.id.as_str()) {
            return invalid(format!("drive id {:?} is used twice", drive.id));
        }
        ids.push(&drive.id);
    }
    if spec.drives.iter().filter(|d| d.is_root).count() > 1 {
        return invalid("more than one root drive".into());
    }
    let mut ids = Vec::new();
    for nic in &spec.net {
        check_qemu_id("network interface id", &nic.id)?;
        if ids.contains(&nic.id.as_str()) {
            return invalid(format!("network interface id {:?} is used twice", nic.id));
        }
        ids.push(&nic.id);
        if let Some(mac) = &nic.mac {
            check_mac(mac)?;
        }
        match &nic.backend {
            NetBackend::User { forwards, .. } => {
                for f in forwards {
                    if !f.host_addr.is_ipv4() {
                        return invalid(format!(
                            "host address {} for port {}: qemu forwards only ipv4 host addresses",
                            f.host_addr, f.host_port
                        ));
                    }
                    if f.host_port == 0 || f.guest_port == 0 {
                        return invalid(format!(
                            "port forward {}:{}->{}: ports must not be 0",
                            f.host_addr, f.host_port, f.guest_port
                        ));
                    }
                }
            }
            NetBackend::Tap { tap_name } => {
                let ok = !tap_name.is_empty()
                    && tap_name.len() <= 15
                    && tap_name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b':'));
                if !ok {
                    return invalid(format!(
                        "tap name {tap_name:?} is not a valid interface name"
                    ));
                }
            }
            NetBackend::Detached => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::qemu::qemu_args;
    use crate::qemu::test_spec::sample;
    use crate::spec::{NetBackend, PortForward, Proto};

    use super::*;

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        type Mutation = fn(&mut VmSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.vm_id = "a,b".into(), "vm id"),
            (|s| s.vm_id = String::new(), "vm id"),
            (|s| s.machine.vcpus = 0, "vcpus"),
            (|s| s.machine.memory_mib = 8, "memory"),
            (|s| s.drives[0].id = "1st".into(), "start with a letter"),
            (|s| s.drives[0].id = "root".into(), "used twice"),
            (|s| s.drives[0].is_root = true, "more than one root"),
            (|s| s.net[0].mac = Some("52:54:00:12:34".into()), "mac"),
            (
                |s| {
                    s.net[0].backend = NetBackend::User {
                        restrict: false,
                        forwards: vec![PortForward {
                            proto: Proto::Tcp,
                            host_addr: "::1".parse().unwrap(),
                            host_port: 2222,
                            guest_port: 22,
                        }],
                    }
                },
                "ipv4",
            ),
            (
                |s| {
                    s.net[0].backend = NetBackend::Tap {
                        tap_name: "much-too-long-tap-name".into(),
                    }
                },
                "tap name",
            ),
            (
                |s| s.vm_dir = PathBuf::from("/").join("x".repeat(100)),
                "too long",
            ),
        ];
        for (mutate, needle) in cases {
            let mut spec = sample();
            mutate(&mut spec);
            let err = qemu_args(&spec).unwrap_err();
            assert!(
                matches!(err, VmmError::InvalidSpec(_)) && err.to_string().contains(needle),
                "{needle}: {err}"
            );
        }
    }
}
