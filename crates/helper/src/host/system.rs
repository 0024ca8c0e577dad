//! The real [`Host`]: every command the helper runs is in this module.
//!
//! Network changes shell out to iproute2 (`ip`) and nftables (`nft -f -`)
//! rather than speaking netlink through a crate: the helper is small and
//! synchronous, each call is a handful of commands that take milliseconds,
//! the tools are on every host banger supports, and the exact commands are
//! what an administrator reads and types when checking what the helper did.
//! Loop devices go through `losetup` and device-mapper through `dmsetup`
//! for the same reasons. Signals use `pidfd_open` + `pidfd_send_signal` so
//! the process checked is the process signalled.
//!
//! Commands run with a fixed `PATH` (`/usr/sbin:/usr/bin:/sbin:/bin`), an
//! empty environment but `LC_ALL=C`, no stdin unless a script is piped in,
//! and arguments passed as separate argv entries (never through a shell).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Pid, PidfdFlags, Signal, Uid};
use serde_json::Value;

use crate::Error;
use crate::host::{Host, Link, LinkKind, ProcInfo, ProcessCheck, VmmSignal};

/// The only `PATH` the helper's commands see.
const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// banger's iptables chain, used only when the host's FORWARD policy is DROP.
pub const IPTABLES_CHAIN: &str = "BANGER-FORWARD";

/// The IPv4 forwarding switch of the helper's network namespace.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Longest piece of a tool's stderr carried in an error message.
const STDERR_MAX: usize = 400;

/// The machine the helper runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemHost;

impl SystemHost {
    pub fn new() -> Self {
        Self
    }
}

/// Whether `program` is installed in [`SAFE_PATH`].
fn installed(program: &str) -> bool {
    SAFE_PATH
        .split(':')
        .any(|dir| Path::new(dir).join(program).is_file())
}

/// Runs `program args...`, feeding `stdin` if given; returns stdout.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let shown = || {
        let mut s = program.to_owned();
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::OperationFailed(format!("{program} is not installed"))
        } else {
            Error::OperationFailed(format!("{}: {e}", shown()))
        }
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the tool's own failure below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::OperationFailed(format!("{}: {e}", shown())))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut detail: String = stderr.trim().chars().take(STDERR_MAX).collect();
    if detail.is_empty() {
        detail = out.status.to_string();
    }
    Err(Error::OperationFailed(format!("{}: {detail}", shown())))
}

fn ip(args: &[&str]) -> Result<(), Error> {
    run("ip", args, None).map(drop)
}

fn iptables(args: &[&str]) -> Result<String, Error> {
    run("iptables", args, None)
}

/// Whether the rules of `iptables -S FORWARD` end with banger's jump and
/// hold no other.
fn jump_is_last_and_only(rules: &str) -> bool {
    let jump = format!("-A FORWARD -j {IPTABLES_CHAIN}");
    let appended: Vec<&str> = rules
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-A FORWARD "))
        .collect();
    appended.last() == Some(&jump.as_str()) && appended.iter().filter(|l| **l == jump).count() == 1
}

fn write_sys(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{value}\n").as_bytes()))
}

/// Creates the ip_forward marker (root's, 0644): its content is the value
/// forwarding had before, for whoever reads it.
fn write_marker(marker: &Path) -> std::io::Result<()> {
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(marker, b"0\n")
}

fn read_sys(path: impl AsRef<Path>) -> std::io::Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim_end_matches('\n').to_owned())
}

/// A TAP's owner from sysfs (`-1` means none). sysfs shows the network
/// namespace it was mounted in, so `ip -d`'s `user` (a number when the
/// uid has no passwd entry) is the fallback.
fn tap_owner(name: &str, info_data: Option<&Value>) -> Option<u32> {
    if let Ok(text) = read_sys(format!("/sys/class/net/{name}/owner")) {
        return text.trim().parse::<u32>().ok();
    }
    match info_data.and_then(|d| d.get("user")) {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
}

fn parse_links(json: &str) -> Result<Vec<Link>, Error> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        Error::OperationFailed(format!("ip -d -j link show: unreadable output: {e}"))
    })?;
    let Some(items) = value.as_array() else {
        return Err(Error::OperationFailed(
            "ip -d -j link show: output is not a list".to_owned(),
        ));
    };
    let mut links = Vec::new();
    for item in items {
        let Some(name) = item.get("ifname").and_then(Value::as_str) else {
            continue;
        };
        let linkinfo = item.get("linkinfo");
        let kind = match linkinfo
            .and_then(|l| l.get("info_kind"))
            .and_then(Value::as_str)
        {
            Some("bridge") => LinkKind::Bridge,
            Some("tun") => LinkKind::Tap,
            _ => LinkKind::Other,
        };
        let owner_uid = if kind == LinkKind::Tap {
            tap_owner(name, linkinfo.and_then(|l| l.get("info_data")))
        } else {
            None
        };
        links.push(Link {
            name: name.to_owned(),
            kind,
            master: item
                .get("master")
                .and_then(Value::as_str)
                .map(str::to_owned),
            owner_uid,
        });
    }
    Ok(links)
}

fn signal_of(signal: VmmSignal) -> Signal {
    match signal {
        VmmSignal::Term => Signal::TERM,
        VmmSignal::Kill => Signal::KILL,
        VmmSignal::Int => Signal::INT,
        VmmSignal::Hup => Signal::HUP,
        VmmSignal::Quit => Signal::QUIT,
        VmmSignal::Usr1 => Signal::USR1,
        VmmSignal::Usr2 => Signal::USR2,
    }
}

/// Reads what the policy needs about `pid` from `/proc`.
fn proc_info(pid: i32) -> Result<ProcInfo, Error> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let gone = || Error::NotFound(format!("no process with pid {pid}"));
    let status = std::fs::read_to_string(dir.join("status")).map_err(|_| gone())?;
    let ruid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse::<u32>().ok())
        .ok_or_else(gone)?;
    let mut cmdline = Vec::new();
    std::fs::File::open(dir.join("cmdline"))
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut cmdline))
        .map_err(|_| gone())?;
    let argv = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = std::fs::read_link(dir.join("exe")).ok();
    Ok(ProcInfo { exe, argv, ruid })
}

impl Host for SystemHost {
    fn links(&self) -> Result<Vec<Link>, Error> {
        parse_links(&run("ip", &["-d", "-j", "link", "show"], None)?)
    }

    fn link(&self, name: &str) -> Result<Option<Link>, Error> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    fn bridge_add(&self, name: &str) -> Result<(), Error> {
        ip(&["link", "add", "name", name, "type", "bridge"])
    }

    fn addr_replace(&self, dev: &str, cidr: &str) -> Result<(), Error> {
        ip(&["addr", "replace", cidr, "dev", dev])
    }

    fn link_up(&self, name: &str) -> Result<(), Error> {
        ip(&["link", "set", "dev", name, "up"])
    }

    fn tap_add(&self, name: &str, owner_uid: u32) -> Result<(), Error> {
        let uid = owner_uid.to_string();
        ip(&["tuntap", "add", "dev", name, "mode", "tap", "user", &uid])
    }

    fn link_attach_up(&self, name: &str, master: &str) -> Result<(), Error> {
        ip(&["link", "set", "dev", name, "master", master, "up"])
    }

    fn link_delete(&self, name: &str) -> Result<(), Error> {
        ip(&["link", "del", "dev", name])
    }

    fn nft_apply(&self, script: &str) -> Result<(), Error> {
        run("nft", &["-f", "-"], Some(script)).map(drop)
    }

    fn ip_forward_enable(&self, marker: &Path) -> Result<bool, Error> {
        let fail = |e: std::io::Error| Error::OperationFailed(format!("{IP_FORWARD}: {e}"));
        if read_sys(IP_FORWARD).map_err(fail)?.trim() == "1" {
            return Ok(true);
        }
        // The record first: forwarding never stays on without it.
        write_marker(marker).map_err(|e| {
            Error::OperationFailed(format!("record ip_forward in {}: {e}", marker.display()))
        })?;
        if let Err(e) = write_sys(IP_FORWARD, "1") {
            let _ = std::fs::remove_file(marker);
            return Err(fail(e));
        }
        Ok(false)
    }

    fn ip_forward_restore(&self, marker: &Path) -> Result<bool, Error> {
        match std::fs::symlink_metadata(marker) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(Error::OperationFailed(format!("{}: {e}", marker.display())));
            }
        }
        let fail = |e: std::io::Error| Error::OperationFailed(format!("{IP_FORWARD}: {e}"));
        if read_sys(IP_FORWARD).map_err(fail)?.trim() != "0" {
            write_sys(IP_FORWARD, "0").map_err(fail)?;
        }
        std::fs::remove_file(marker)
            .map_err(|e| Error::OperationFailed(format!("remove {}: {e}", marker.display())))?;
        Ok(true)
    }

    fn iptables_forward_drops(&self) -> Result<bool, Error> {
        if !installed("iptables") {
            return Ok(false);
        }
        let rules = iptables(&["-S", "FORWARD"])?;
        Ok(rules.lines().any(|l| l.trim() == "-P FORWARD DROP"))
    }

    fn iptables_accept_bridge(&self, bridge: &str, subnet: &str) -> Result<(), Error> {
        if iptables(&["-S", IPTABLES_CHAIN]).is_err() {
            iptables(&["-N", IPTABLES_CHAIN])?;
        }
        iptables(&["-F", IPTABLES_CHAIN])?;
        iptables(&[
            "-A",
            IPTABLES_CHAIN,
            "-i",
            bridge,
            "-s",
            subnet,
            "-j",
            "ACCEPT",
        ])?;
        iptables(&[
            "-A",
            IPTABLES_CHAIN,
            "-o",
            bridge,
            "-d",
            subnet,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ])?;
        // One jump, the last rule of FORWARD: every rule of the
        // administrator's (DOCKER-USER included) is seen first, and banger
        // only accepts what would otherwise fall to the DROP policy. A jump
        // that is no longer last (rules appended since, or an older
        // helper's jump at the top) is moved to the end.
        if !jump_is_last_and_only(&iptables(&["-S", "FORWARD"])?) {
            while iptables(&["-C", "FORWARD", "-j", IPTABLES_CHAIN]).is_ok() {
                iptables(&["-D", "FORWARD", "-j", IPTABLES_CHAIN])?;
            }
            iptables(&["-A", "FORWARD", "-j", IPTABLES_CHAIN])?;
        }
        Ok(())
    }

    fn iptables_remove(&self) -> Result<(), Error> {
        if !installed("iptables") || iptables(&["-S", IPTABLES_CHAIN]).is_err() {
            return Ok(());
        }
        while iptables(&["-C", "FORWARD", "-j", IPTABLES_CHAIN]).is_ok() {
            iptables(&["-D", "FORWARD", "-j", IPTABLES_CHAIN])?;
        }
        iptables(&["-F", IPTABLES_CHAIN])?;
        iptables(&["-X", IPTABLES_CHAIN])?;
        Ok(())
    }

    /// `losetup --find --show /proc/HELPER_PID/fd/N`: losetup opens the
    /// file the helper already opened (with `O_NOFOLLOW`, after checking
    /// it), so a path swapped after the check cannot change what is
    /// attached; the kernel records the file's real path as the backing
    /// file.
    fn loop_attach(&self, file: BorrowedFd<'_>, read_only: bool) -> Result<String, Error> {
        if !Path::new("/dev/loop-control").exists() {
            return Err(Error::Unsupported(
                "loop devices are not available on this host: no /dev/loop-control (the kernel module loop is not loaded or not built; load it as root with `modprobe loop`)".to_owned(),
            ));
        }
        let fd_path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        let mut args = vec!["--find", "--show"];
        if read_only {
            args.push("--read-only");
        }
        args.push(&fd_path);
        let out = run("losetup", &args, None)?;
        let device = out.trim().to_owned();
        if crate::validate::loop_device(&device).is_err() {
            return Err(Error::OperationFailed(format!(
                "losetup printed an unexpected device {}",
                crate::error::quote(&device)
            )));
        }
        Ok(device)
    }

    fn loop_backing_file(&self, loop_name: &str) -> Result<Option<PathBuf>, Error> {
        let dir = PathBuf::from(format!("/sys/block/{loop_name}"));
        if !dir.exists() {
            return Err(Error::NotFound(format!("no loop device /dev/{loop_name}")));
        }
        match read_sys(dir.join("loop/backing_file")) {
            Ok(path) => Ok(Some(PathBuf::from(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::OperationFailed(format!(
                "{}: {e}",
                dir.join("loop/backing_file").display()
            ))),
        }
    }

    fn loop_detach(&self, device: &str) -> Result<(), Error> {
        run("losetup", &["--detach", device], None).map(drop)
    }

    fn block_sectors(&self, kernel_name: &str) -> Result<u64, Error> {
        let path = format!("/sys/block/{kernel_name}/size");
        read_sys(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::OperationFailed(format!("cannot read {path}")))
    }

    fn dm_available(&self) -> bool {
        Path::new("/dev/mapper/control").exists()
    }

    fn dm_exists(&self, name: &str) -> Result<bool, Error> {
        match run("dmsetup", &["info", name], None) {
            Ok(_) => Ok(true),
            Err(Error::OperationFailed(m)) if m.contains("No such device") => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn dm_table(&self, name: &str) -> Result<String, Error> {
        run("dmsetup", &["table", name], None)
    }

    fn block_name(&self, major: u32, minor: u32) -> Result<String, Error> {
        let link = format!("/sys/dev/block/{major}:{minor}");
        std::fs::read_link(&link)
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| Error::NotFound(format!("no block device {major}:{minor}")))
    }

    fn dm_create(&self, name: &str, table: &str) -> Result<(), Error> {
        run("dmsetup", &["create", name, "--table", table], None).map(drop)
    }

    fn dm_remove(&self, name: &str) -> Result<(), Error> {
        run("dmsetup", &["remove", name], None).map(drop)
    }

    /// `/dev/mapper/NAME` is udev's symlink to `../dm-N` (or the node
    /// itself without udev); only root writes there, so it is followed.
    fn dm_chown(&self, name: &str, uid: u32, gid: u32) -> Result<(), Error> {
        let path = format!("/dev/mapper/{name}");
        let fd = rustix::fs::open(path.as_str(), OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::OperationFailed(format!("open {path}: {e}")))?;
        let stat = rustix::fs::fstat(&fd)
            .map_err(|e| Error::OperationFailed(format!("stat {path}: {e}")))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::BlockDevice {
            return Err(Error::OperationFailed(format!(
                "{path} is not a block device"
            )));
        }
        self.chown_fd(fd.as_fd(), uid, gid)
    }

    fn signal_process(
        &self,
        pid: i32,
        signal: VmmSignal,
        check: ProcessCheck<'_>,
    ) -> Result<(), Error> {
        let not_found = || Error::NotFound(format!("no process with pid {pid}"));
        let raw = Pid::from_raw(pid).ok_or_else(not_found)?;
        // The pidfd pins the process: if it exits and the pid is reused
        // while /proc is read, the signal below fails with ESRCH instead of
        // reaching the newcomer.
        let pidfd = rustix::process::pidfd_open(raw, PidfdFlags::empty()).map_err(|e| {
            if e == Errno::SRCH {
                not_found()
            } else {
                Error::OperationFailed(format!("pidfd_open {pid}: {e}"))
            }
        })?;
        let info = proc_info(pid)?;
        check(&info)?;
        rustix::process::pidfd_send_signal(&pidfd, signal_of(signal)).map_err(|e| {
            if e == Errno::SRCH {
                Error::NotFound(format!("pid {pid} exited"))
            } else {
                Error::OperationFailed(format!("signal {pid}: {e}"))
            }
        })
    }

    fn chown_fd(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Error> {
        rustix::fs::chownat(
            fd,
            "",
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(|e| Error::OperationFailed(format!("chown: {e}")))
    }

    fn bind_udp(&self, addr: SocketAddrV4) -> Result<OwnedFd, Error> {
        let socket = UdpSocket::bind(addr).map_err(|e| {
            Error::OperationFailed(format!(
                "bind udp {addr}: {e} (is the bridge up with its address? call bridge_ensure)"
            ))
        })?;
        Ok(OwnedFd::from(socket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_link_json() {
        let json = r#"[
          {"ifindex":1,"ifname":"lo","flags":["LOOPBACK"]},
          {"ifindex":2,"ifname":"bgtest1","linkinfo":{"info_kind":"bridge"}},
          {"ifindex":3,"ifname":"bgtap-no-sysfs-1","master":"bgtest1",
           "linkinfo":{"info_kind":"tun","info_data":{"type":"tap","user":4242}}},
          {"ifindex":4,"ifname":"bgtap-no-sysfs-2",
           "linkinfo":{"info_kind":"tun","info_data":{"type":"tap","user":"somebody"}}},
          {"ifindex":5}
        ]"#;
        let links = parse_links(json).unwrap();
        assert_eq!(links.len(), 4);
        assert_eq!(links[0].kind, LinkKind::Other);
        assert_eq!(links[1].kind, LinkKind::Bridge);
        assert_eq!(links[2].kind, LinkKind::Tap);
        assert_eq!(links[2].master.as_deref(), Some("bgtest1"));
        assert_eq!(links[2].owner_uid, Some(4242));
        assert_eq!(links[3].owner_uid, None);
        assert!(parse_links("{}").is_err());
        assert!(parse_links("nope").is_err());
    }

    #[test]
    fn missing_tools_and_failures_are_operation_failed() {
        let e = run("banger-no-such-tool", &[], None).unwrap_err();
        assert!(
            matches!(&e, Error::OperationFailed(m) if m.contains("not installed")),
            "{e}"
        );
        let e = run("sh", &["-c", "echo boom >&2; exit 3"], None).unwrap_err();
        assert!(
            matches!(&e, Error::OperationFailed(m) if m.contains("boom")),
            "{e}"
        );
        assert_eq!(run("cat", &[], Some("hi")).unwrap(), "hi");
    }

    #[test]
    fn the_jump_must_be_the_last_forward_rule() {
        let last = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j BANGER-FORWARD\n";
        assert!(jump_is_last_and_only(last));
        let first = "-P FORWARD DROP\n-A FORWARD -j BANGER-FORWARD\n-A FORWARD -j DOCKER-USER\n";
        assert!(!jump_is_last_and_only(first));
        let twice = "-P FORWARD DROP\n-A FORWARD -j BANGER-FORWARD\n-A FORWARD -j BANGER-FORWARD\n";
        assert!(!jump_is_last_and_only(twice));
        assert!(!jump_is_last_and_only("-P FORWARD DROP\n"));
    }

    #[test]
    fn reads_own_process() {
        let info = proc_info(std::process::id() as i32).unwrap();
        assert!(info.exe.is_some());
        assert!(!info.argv.is_empty());
        assert!(matches!(proc_info(i32::MAX), Err(Error::NotFound(_))));
    }
}
