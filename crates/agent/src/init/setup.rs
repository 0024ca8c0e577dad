//! The machine as PID 1 finds it, made ready: filesystems, hostname,
//! network, work disk. Every step logs its failure and the boot goes on
//! (a guest without a network is still better reached through the agent
//! than powered off).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::mount::MountFlags;

use super::cmdline::{self, BootParams};
use super::{NIC, net};
use crate::guest_ops::hosts_with_name;
use crate::log;
use crate::procfs::{MountInfo, parse_mountinfo};

/// A filesystem PID 1 mounts when nothing is mounted there yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MountSpec {
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: u32,
    pub data: &'static str,
    /// Mode of the directory when it must be created.
    pub dir_mode: u32,
}

const NOSUID: u32 = MountFlags::NOSUID.bits();
const NODEV: u32 = MountFlags::NODEV.bits();
const NOEXEC: u32 = MountFlags::NOEXEC.bits();

/// In order: each one's mount point may lie on one before it.
pub(crate) const MOUNTS: &[MountSpec] = &[
    MountSpec {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        dir_mode: 0o555,
    },
    MountSpec {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        dir_mode: 0o555,
    },
    MountSpec {
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID,
        data: "mode=0755",
        dir_mode: 0o755,
    },
    MountSpec {
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: "gid=5,mode=0620,ptmxmode=0666",
        dir_mode: 0o755,
    },
    MountSpec {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=1777",
        dir_mode: 0o1777,
    },
    MountSpec {
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=0755",
        dir_mode: 0o755,
    },
];

/// The mounts of [`MOUNTS`] with nothing mounted at their target yet.
pub(crate) fn missing(mounted: &[MountInfo]) -> Vec<&'static MountSpec> {
    MOUNTS
        .iter()
        .filter(|m| !mounted.iter().any(|i| i.mount_point == m.target))
        .collect()
}

fn mounted() -> Vec<MountInfo> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

fn mount(m: &MountSpec) -> io::Result<()> {
    if !Path::new(m.target).is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(m.dir_mode)
            .create(m.target)?;
    }
    let data = std::ffi::CString::new(m.data).map_err(io::Error::other)?;
    rustix::mount::mount(
        m.fstype,
        m.target,
        m.fstype,
        MountFlags::from_bits_retain(m.flags),
        Some(data.as_c_str()),
    )?;
    Ok(())
}

/// Everything before the agent starts.
pub(super) fn system() {
    mounts();
    links();
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (params, warnings) = cmdline::parse(&cmdline);
    for w in warnings {
        log!("init: {w}");
    }
    hostname(&params);
    network(&params);
    work_disk();
}

fn mounts() {
    // /proc first: the others are found mounted or not through it.
    let mut table = mounted();
    if table.is_empty() {
        if let Err(e) = mount(&MOUNTS[0]) {
            log!("init: mount /proc: {e}");
        }
        table = mounted();
    }
    for m in missing(&table) {
        if let Err(e) = mount(m) {
            log!("init: mount {} ({}): {e}", m.target, m.fstype);
        }
    }
    // /tmp stays on the disk, as in a container, but must exist.
    let tmp = Path::new("/tmp");
    if !tmp.is_dir() {
        let made = fs::create_dir(tmp)
            .and_then(|()| fs::set_permissions(tmp, fs::Permissions::from_mode(0o1777)));
        if let Err(e) = made {
            log!("init: create /tmp: {e}");
        }
    }
}

/// `/dev/fd`, `/dev/stdin`… as a shell's redirections expect them
/// (devtmpfs has none of them).
fn links() {
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if fs::symlink_metadata(link).is_err() {
            if let Err(e) = std::os::unix::fs::symlink(target, link) {
                log!("init: link {link}: {e}");
            }
        }
    }
}

/// Replaces `path` with `text` (a temporary file renamed over it, so a
/// symlink there is replaced, not followed).
fn write_file(path: &str, text: &str) -> io::Result<()> {
    let p = Path::new(path);
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = format!("{path}.banger-init.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.set_permissions(fs::Permissions::from_mode(0o644))?;
    drop(f);
    fs::rename(&tmp, p)
}

/// `/etc/hosts` naming `name`: the image's with its `127.0.1.1` line
/// replaced (or one added), or a fresh one.
pub(crate) fn hosts_for(existing: Option<&str>, name: &str) -> String {
    match existing {
        Some(h) => hosts_with_name(h, name).unwrap_or_else(|| {
            let mut h = h.to_owned();
            if !h.is_empty() && !h.ends_with('\n') {
                h.push('\n');
            }
            h.push_str(&format!("127.0.1.1\t{name}\n"));
            h
        }),
        None => format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{name}\n"
        ),
    }
}

fn hostname(p: &BootParams) {
    let Some(name) = &p.hostname else {
        return;
    };
    if let Err(e) = rustix::system::sethostname(name.as_bytes()) {
        log!("init: set the hostname {name}: {e}");
    }
    if let Err(e) = write_file("/etc/hostname", &format!("{name}\n")) {
        log!("init: write /etc/hostname: {e}");
    }
    let existing = fs::read_to_string("/etc/hosts").ok();
    if let Err(e) = write_file("/etc/hosts", &hosts_for(existing.as_deref(), name)) {
        log!("init: write /etc/hosts: {e}");
    }
}

/// Waits up to `limit` for `path` to exist.
fn wait_for(path: &Path, limit: Duration) -> bool {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn network(p: &BootParams) {
    if let Err(e) = net::loopback_up() {
        log!("init: bring lo up: {e}");
    }
    if let Some(n) = &p.net {
        // virtio_net probes asynchronously (docs/guest-contract.md).
        if !wait_for(
            &Path::new("/sys/class/net").join(NIC),
            Duration::from_secs(5),
        ) {
            log!("init: {NIC} did not appear within 5 s; no network");
        } else {
            match net::configure(NIC, n) {
                Ok(()) => log!(
                    "init: {NIC} {}/{}{}",
                    n.address,
                    n.prefix,
                    n.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
                ),
                Err(e) => log!("init: {e}"),
            }
        }
    }
    if !p.dns.is_empty() {
        let text: String = p.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        if let Err(e) = write_file("/etc/resolv.conf", &text) {
            log!("init: write /etc/resolv.conf: {e}");
        }
    }
}

/// The work disk (second virtio disk) on `/root`, as Debian images'
/// `banger-guest-setup` mounts it. The initramfs waited for `/dev/vda`
/// after loading virtio_blk, so a second disk is there already or never:
/// a short wait.
fn work_disk() {
    let dev = Path::new("/dev/vdb");
    if !wait_for(dev, Duration::from_secs(1)) {
        return;
    }
    if mounted().iter().any(|m| m.mount_point == "/root") {
        return;
    }
    if let Err(e) = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create("/root")
    {
        log!("init: create /root: {e}");
        return;
    }
    match rustix::mount::mount(dev, "/root", "ext4", MountFlags::empty(), None) {
        Ok(()) => log!("init: work disk /dev/vdb on /root"),
        Err(e) => log!("init: mount /dev/vdb on /root: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(mp: &str) -> MountInfo {
        MountInfo {
            dev: (0, 1),
            mount_point: mp.into(),
            fstype: "x".into(),
            source: "x".into(),
        }
    }

    #[test]
    fn only_missing_mounts_are_made() {
        let all: Vec<&str> = missing(&[]).iter().map(|m| m.target).collect();
        assert_eq!(
            all,
            ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run"]
        );
        // What the initramfs moved over.
        let left: Vec<&str> = missing(&[info("/"), info("/proc"), info("/sys"), info("/dev")])
            .iter()
            .map(|m| m.target)
            .collect();
        assert_eq!(left, ["/dev/pts", "/dev/shm", "/run"]);
    }

    #[test]
    fn hosts_files() {
        assert_eq!(
            hosts_for(None, "vm1"),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tvm1\n"
        );
        assert_eq!(
            hosts_for(Some("127.0.0.1 localhost\n127.0.1.1 old\n"), "vm1"),
            "127.0.0.1 localhost\n127.0.1.1\tvm1\n"
        );
        assert_eq!(
            hosts_for(Some("127.0.0.1 localhost"), "vm1"),
            "127.0.0.1 localhost\n127.0.1.1\tvm1\n"
        );
        assert_eq!(hosts_for(Some(""), "vm1"), "127.0.1.1\tvm1\n");
    }
}
