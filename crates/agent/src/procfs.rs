//! Parsers for the `/proc` files the agent reads. Pure functions over
//! text, so they are tested on fixtures; [`crate::sysinfo`] does the I/O.
//!
//! Every parser tolerates malformed input: it skips what it cannot read
//! and never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use banger_proto::agent::CpuTimes;

/// Seconds since boot: the first field of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    let a = it.next()??;
    let b = it.next()??;
    let c = it.next()??;
    Some([a, b, c])
}

/// Cumulative CPU times from the first `cpu` line of `/proc/stat`:
/// busy = user + nice + system + irq + softirq + steal, idle = idle +
/// iowait (guest time is already counted in user).
pub fn parse_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some("cpu")
    })?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|s| s.parse::<u64>().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .fold(0u64, |acc, &i| acc.saturating_add(at(i)));
    let idle = at(3).saturating_add(at(4));
    Some(CpuTimes { busy, idle })
}

/// Pages present in every memory zone (`/proc/zoneinfo`): the RAM the
/// guest was given, which `MemTotal` understates by what the kernel
/// reserved for itself at boot.
pub fn parse_zoneinfo_present(text: &str) -> Option<u64> {
    let mut pages = 0u64;
    let mut seen = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("present") {
            pages = pages.checked_add(words.next()?.parse::<u64>().ok()?)?;
            seen = true;
        }
    }
    seen.then_some(pages)
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
/// `MemAvailable` falls back to `MemFree` on kernels without it.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut available = None;
    let mut free = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let Some(n) = f.next().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = match f.next() {
            Some("kB") => n.saturating_mul(1024),
            _ => n,
        };
        match key.trim() {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "MemFree" => free = Some(bytes),
            _ => {}
        }
    }
    Some((total?, available.or(free).unwrap_or(0)))
}

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
}

/// Filesystems that are not storage (or whose `statvfs` could hang on a
/// network): left out of the disk usage.
const NOT_DISKS: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "ramfs",
    "rootfs",
    "securityfs",
    "pstore",
    "debugfs",
    "tracefs",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "bpf",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "rpc_pipefs",
    "nsfs",
    "selinuxfs",
    "nfsd",
    "squashfs",
    "iso9660",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "virtiofs",
    "ceph",
    "glusterfs",
];

/// Whether a filesystem type holds data on a disk of the guest.
pub fn is_disk_fstype(fstype: &str) -> bool {
    !(NOT_DISKS.contains(&fstype) || fstype.starts_with("cgroup") || fstype.starts_with("fuse"))
}

/// The mounts of `/proc/mounts` whose filesystem is a disk (see
/// [`is_disk_fstype`]); a device mounted twice (bind mounts) is listed
/// once, at its first mount point.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(mp), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !is_disk_fstype(fstype) {
            continue;
        }
        let device = unescape_mount(dev);
        if device.starts_with('/') && out.iter().any(|m| m.device == device) {
            continue;
        }
        out.push(Mount {
            device,
            mount_point: unescape_mount(mp),
            fstype: fstype.to_owned(),
        });
    }
    out
}

/// One line of `/proc/self/mountinfo` (what `Freeze` needs of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The filesystem's device number: major 0 for filesystems on no
    /// block device (proc, tmpfs, overlay…).
    pub dev: (u32, u32),
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// The lines of `/proc/self/mountinfo`, in order (parents before their
/// children). A line reads `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT
/// OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER_OPTIONS`; unreadable lines
/// are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_id, _parent, dev, _root, mp) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (major, minor) = dev.split_once(':')?;
            let dev = (major.parse().ok()?, minor.parse().ok()?);
            // Skip the options and optional fields up to the separator.
            f.by_ref().find(|x| *x == "-")?;
            let fstype = f.next()?.to_owned();
            let source = unescape_mount(f.next().unwrap_or(""));
            Some(MountInfo {
                dev,
                mount_point: unescape_mount(mp),
                fstype,
                source,
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes in `/proc/mounts` (`\040` is a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A socket from `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub address: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// TCP sockets in LISTEN (`0A`) or, for UDP, unconnected sockets (`07`,
/// remote address and port zero), from the text of one `/proc/net` table.
pub fn parse_net_sockets(text: &str, udp: bool) -> Vec<Socket> {
    text.lines()
        .filter_map(|l| parse_net_line(l, udp))
        .collect()
}

/// One line of a `/proc/net` table, if it is a socket [`parse_net_sockets`]
/// keeps (the header line is not).
pub fn parse_net_line(line: &str, udp: bool) -> Option<Socket> {
    let mut f = line.split_whitespace();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    let _sl = f.next()?;
    let local = f.next()?;
    let remote = f.next()?;
    let state = f.next()?;
    let wanted = if udp {
        state == "07" && is_zero_endpoint(remote)
    } else {
        state == "0A"
    };
    if !wanted {
        return None;
    }
    let inode = f.nth(5)?.parse::<u64>().ok()?;
    let (address, port) = parse_endpoint(local)?;
    Some(Socket {
        address,
        port,
        inode,
    })
}

fn is_zero_endpoint(s: &str) -> bool {
    s.bytes().all(|c| c == b'0' || c == b':')
}

/// `0100007F:1F90` → 127.0.0.1 port 8080. The address is the kernel's
/// 32-bit words printed as hex in host byte order (one word for IPv4,
/// four for IPv6); the port is plain hex.
pub fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |w: &str| u32::from_str_radix(w, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// The inode of a `/proc/PID/fd/N` link target `socket:[INODE]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:0016 0202000A:C8F2 01 00000000:00000000 02:0009E6A8 00000000     0        0 34567 4 0000000000000000 20 4 29 10 -1
   3: garbage
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13579 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 24680 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 11111 1 0000000000000000 100 0 0 10 0
   3: 000080FE00000000FF0DE0AB6F4410FE:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 22222 1 0000000000000000 100 0 0 10 0
";

    const UDP4: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 4444 2 0000000000000000 0
  101: 0F02000A:A1B2 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 5555 2 0000000000000000 0
  102: 0F02000A:A1B3 08080808:0035 07 00000000:00000000 00:00000000 00000000     0        0 6666 2 0000000000000000 0
";

    #[test]
    fn tcp4_listeners_are_decoded() {
        let s = parse_net_sockets(TCP4, false);
        assert_eq!(
            s,
            vec![
                Socket {
                    address: "127.0.0.1".parse().unwrap(),
                    port: 631,
                    inode: 23456
                },
                Socket {
                    address: "0.0.0.0".parse().unwrap(),
                    port: 22,
                    inode: 12345
                },
            ]
        );
    }

    #[test]
    fn tcp6_listeners_are_decoded() {
        let s = parse_net_sockets(TCP6, false);
        let got: Vec<(String, u16, u64)> = s
            .iter()
            .map(|s| (s.address.to_string(), s.port, s.inode))
            .collect();
        assert_eq!(
            got,
            vec![
                ("::".into(), 22, 13579),
                ("::1".into(), 8080, 24680),
                ("::ffff:127.0.0.1".into(), 80, 11111),
                ("fe80::abe0:dff:fe10:446f".into(), 53, 22222),
            ]
        );
    }

    #[test]
    fn udp_keeps_only_unconnected_sockets() {
        let s = parse_net_sockets(UDP4, true);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].address.to_string(), "127.0.0.53");
        assert_eq!(s[0].port, 53);
        assert_eq!(s[0].inode, 4444);
    }

    #[test]
    fn endpoints_and_inodes() {
        assert_eq!(parse_endpoint("nonsense"), None);
        assert_eq!(parse_endpoint("0100007F:ZZZZ"), None);
        assert_eq!(parse_endpoint("0100007:0050"), None);
        assert_eq!(socket_inode("socket:[42]"), Some(42));
        assert_eq!(socket_inode("pipe:[42]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn stat_first_cpu_line() {
        let text = "cpu  100 20 30 400 50 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2 3\n";
        assert_eq!(
            parse_stat(text),
            Some(CpuTimes {
                busy: 100 + 20 + 30 + 6 + 7 + 8,
                idle: 400 + 50
            })
        );
        assert_eq!(parse_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_stat(""), None);
        // Old kernels print fewer columns.
        assert_eq!(
            parse_stat("cpu 1 2 3 4\n"),
            Some(CpuTimes { busy: 6, idle: 4 })
        );
    }

    #[test]
    fn zoneinfo_present_pages_add_up() {
        let text = "Node 0, zone      DMA\n  pages free     3977\n        min      0\n        present  3998\n        managed  3977\nNode 0, zone    DMA32\n  pages free     200000\n        present  258048\n        managed  245000\n";
        assert_eq!(parse_zoneinfo_present(text), Some(3998 + 258_048));
        assert_eq!(parse_zoneinfo_present("Node 0, zone DMA\n"), None);
        assert_eq!(parse_zoneinfo_present("        present  x\n"), None);
    }

    #[test]
    fn meminfo_in_bytes() {
        let text = "MemTotal:       16318076 kB\nMemFree:          512000 kB\nMemAvailable:   12000000 kB\nBuffers: x\n";
        assert_eq!(
            parse_meminfo(text),
            Some((16_318_076 * 1024, 12_000_000 * 1024))
        );
        assert_eq!(
            parse_meminfo("MemTotal: 100 kB\nMemFree: 10 kB\n"),
            Some((102_400, 10_240))
        );
        assert_eq!(parse_meminfo("MemFree: 10 kB\n"), None);
    }

    #[test]
    fn uptime_and_loadavg() {
        assert_eq!(parse_uptime("12345.67 23456.78\n"), Some(12345.67));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("NaN 1"), None);
        assert_eq!(
            parse_loadavg("0.50 0.25 0.10 1/123 4567\n"),
            Some([0.5, 0.25, 0.1])
        );
        assert_eq!(parse_loadavg("0.50 x"), None);
    }

    #[test]
    fn mounts_keep_disks_only() {
        let text = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
udev /dev devtmpfs rw,nosuid,relatime,size=4096k 0 0
/dev/vda / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=100k 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/vdb /root ext4 rw,relatime 0 0
/dev/vdb /srv/bind ext4 rw,relatime 0 0
/dev/vdc /mnt/with\\040space xfs rw 0 0
host0 /mnt/share 9p rw 0 0
gvfsd-fuse /run/user/1000/gvfs fuse.gvfsd-fuse rw 0 0
overlay /var/lib/docker/x overlay rw 0 0
short line
";
        let m = parse_mounts(text);
        let got: Vec<(&str, &str, &str)> = m
            .iter()
            .map(|m| (m.device.as_str(), m.mount_point.as_str(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/dev/vda", "/", "ext4"),
                ("/dev/vdb", "/root", "ext4"),
                ("/dev/vdc", "/mnt/with space", "xfs"),
                ("overlay", "/var/lib/docker/x", "overlay"),
            ]
        );
    }

    #[test]
    fn mountinfo_lines() {
        let text = "\
21 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 21 0:23 / /run rw,nosuid,nodev shared:5 master:2 - tmpfs tmpfs rw,size=100k
40 21 254:16 / /mnt/with\\040space rw,relatime shared:9 - ext4 /dev/vdb rw
41 21 254:16 / /short
42 21 x:1 / /bad rw - ext4 /dev/vdc rw
";
        let m = parse_mountinfo(text);
        let got: Vec<((u32, u32), &str, &str, &str)> = m
            .iter()
            .map(|m| {
                (
                    m.dev,
                    m.mount_point.as_str(),
                    m.fstype.as_str(),
                    m.source.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ((254, 0), "/", "ext4", "/dev/vda"),
                ((0, 23), "/run", "tmpfs", "tmpfs"),
                ((254, 16), "/mnt/with space", "ext4", "/dev/vdb"),
            ]
        );
    }

    #[test]
    fn escapes_are_undone_and_bad_ones_kept() {
        assert_eq!(unescape_mount("a\\040b"), "a b");
        assert_eq!(unescape_mount("a\\134b"), "a\\b");
        assert_eq!(unescape_mount("a\\04"), "a\\04");
        assert_eq!(unescape_mount("a\\999"), "a\\999");
        assert_eq!(unescape_mount("\\"), "\\");
    }
}
