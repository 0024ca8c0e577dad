//! The allow-list rules, as pure functions: names within banger's
//! prefixes, the configured bridge and subnet, loop device paths, signal
//! names, pids, path shapes, and what makes a process a banger VMM. None
//! of these touches the host; [`crate::safepath`] does the file system
//! side of path checks.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use banger_proto::helper::{DM_PREFIX, TAP_PREFIX};

use crate::config::{Settings, Subnet};
use crate::error::{Error, quote};
use crate::host::{ProcInfo, VmmSignal};

/// Linux's `IFNAMSIZ` less the terminating NUL.
pub const IFNAME_MAX: usize = 15;

/// Longest device-mapper name banger makes (the kernel allows 127).
pub const DM_NAME_MAX: usize = 64;

/// Longest op id adopted from a request (after `op-`).
pub const OP_ID_MAX: usize = 64;

/// `PATH_MAX` less the terminating NUL.
pub const PATH_MAX: usize = 4095;

/// Digits after [`TAP_PREFIX`].
const TAP_DIGITS_MAX: usize = 5;

/// `op-` and 1 to 64 of `[A-Za-z0-9_-]`.
pub fn op_id(id: &str) -> bool {
    id.strip_prefix("op-").is_some_and(|rest| {
        (1..=OP_ID_MAX).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// [`TAP_PREFIX`] and 1 to 5 ASCII digits, nothing else.
pub fn tap_name(name: &str) -> Result<(), Error> {
    let ok = name.strip_prefix(TAP_PREFIX).is_some_and(|digits| {
        (1..=TAP_DIGITS_MAX).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(format!(
            "invalid tap name {}: must be {TAP_PREFIX} followed by 1 to {TAP_DIGITS_MAX} digits",
            quote(name)
        )))
    }
}

/// Whether `name` is a banger TAP name (for listings).
pub fn is_tap_name(name: &str) -> bool {
    tap_name(name).is_ok()
}

/// A bridge name the config may set: 1 to 15 of `[a-z0-9_-]`, starting
/// with a letter, not in the TAP namespace.
pub fn bridge_name_syntax(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!("must be 1 to {IFNAME_MAX} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter".to_owned());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err("may only hold a-z, 0-9, _ and -".to_owned());
    }
    if name.starts_with(TAP_PREFIX) {
        return Err(format!("must not start with {TAP_PREFIX}"));
    }
    Ok(())
}

/// A bridge argument must be the configured bridge.
pub fn bridge_arg(name: &str, settings: &Settings) -> Result<(), Error> {
    if name == settings.bridge {
        Ok(())
    } else {
        Err(Error::InvalidName(format!(
            "{} is not banger's bridge ({})",
            quote(name),
            settings.bridge
        )))
    }
}

/// [`DM_PREFIX`] and 1 or more of `[a-z0-9-]`, at most 64 in all.
pub fn dm_name(name: &str) -> Result<(), Error> {
    let ok = name.len() <= DM_NAME_MAX
        && name.strip_prefix(DM_PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(format!(
            "invalid device-mapper name {}: must be {DM_PREFIX} followed by a-z, 0-9 or -, at most {DM_NAME_MAX} characters",
            quote(name)
        )))
    }
}

/// `/dev/loopN` (no leading zeros); returns the kernel name `loopN`.
pub fn loop_device(device: &str) -> Result<String, Error> {
    let ok = device.strip_prefix("/dev/loop").is_some_and(|n| {
        (1..=7).contains(&n.len())
            && n.bytes().all(|b| b.is_ascii_digit())
            && (n == "0" || !n.starts_with('0'))
    });
    if ok {
        Ok(device.trim_start_matches("/dev/").to_owned())
    } else {
        Err(Error::InvalidName(format!(
            "invalid loop device {}: must be /dev/loopN",
            quote(device)
        )))
    }
}

/// A subnet argument must parse and be the configured subnet.
pub fn subnet_arg(text: &str, configured: &Subnet) -> Result<(), Error> {
    let subnet = Subnet::parse(text)
        .map_err(|e| Error::InvalidArgument(format!("invalid subnet {}: {e}", quote(text))))?;
    if &subnet == configured {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "subnet {subnet} is not banger's subnet ({configured})"
        )))
    }
}

/// A TAP owner must be an allowed uid.
pub fn owner_uid(uid: u32, settings: &Settings) -> Result<(), Error> {
    if settings.allows_uid(uid) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "uid {uid} is not an allowed uid"
        )))
    }
}

/// One of the signal names the contract lists, exactly as spelled there.
pub fn signal(name: &str) -> Result<VmmSignal, Error> {
    VmmSignal::ALL
        .iter()
        .copied()
        .find(|s| s.name() == name)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "invalid signal {}: must be one of TERM, KILL, INT, HUP, QUIT, USR1, USR2",
                quote(name)
            ))
        })
}

/// A pid that may be signalled at all: above 1 (never init, never a
/// process group) and within `pid_t`.
pub fn pid(pid: u32) -> Result<i32, Error> {
    match i32::try_from(pid) {
        Ok(p) if p > 1 => Ok(p),
        _ => Err(Error::InvalidArgument(format!(
            "pid {pid} is out of range (must be above 1)"
        ))),
    }
}

/// Absolute, and already in normal form: no `.` or `..` component, no
/// empty component (`//`, trailing `/`), no NUL, at most [`PATH_MAX`]
/// bytes. `/` itself passes.
pub fn normalized_absolute(path: &Path) -> Result<(), String> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err("must be absolute".to_owned());
    }
    if bytes.len() > PATH_MAX {
        return Err("is too long".to_owned());
    }
    if bytes.contains(&0) {
        return Err("must not contain NUL".to_owned());
    }
    if bytes == b"/" {
        return Ok(());
    }
    for part in bytes[1..].split(|&b| b == b'/') {
        match part {
            b"" => return Err("must not have empty components (// or a trailing /)".to_owned()),
            b"." | b".." => return Err("must not have . or .. components".to_owned()),
            _ => {}
        }
    }
    Ok(())
}

/// A path argument: normalized, absolute and strictly under one of
/// `dirs` (component-wise: `/data-evil/x` is not under `/data`). Returns
/// the dir it is under.
pub fn path_arg<'a>(path: &Path, dirs: &'a [PathBuf], kind: &str) -> Result<&'a Path, Error> {
    let shown = quote(&path.to_string_lossy());
    normalized_absolute(path).map_err(|e| Error::InvalidPath(format!("path {shown} {e}")))?;
    dirs.iter()
        .map(PathBuf::as_path)
        .find(|dir| path != *dir && path.starts_with(dir))
        .ok_or_else(|| Error::InvalidPath(format!("path {shown} is not under an allowed {kind}")))
}

/// Whether `path` is under one of `dirs` (for a loop device's backing
/// file, as the kernel reports it).
pub fn is_under(path: &Path, dirs: &[PathBuf]) -> bool {
    normalized_absolute(path).is_ok()
        && dirs
            .iter()
            .any(|dir| path != dir.as_path() && path.starts_with(dir))
}

/// Whether `info` is a VMM banger launched: a `qemu-system-*` executable
/// whose argv has `-name guest=banger-...`, or `firecracker` with
/// `--id banger-...`, running (real uid) as the caller: a caller signals
/// only its own VMMs.
pub fn vmm_process(pid: i32, info: &ProcInfo, caller_uid: u32) -> Result<(), Error> {
    let refuse = |why: &str| Error::NotAllowed(format!("pid {pid} is not a banger vmm: {why}"));
    let exe = info
        .exe
        .as_deref()
        .ok_or_else(|| refuse("its executable cannot be read"))?;
    let base = exe
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = base.strip_suffix(" (deleted)").unwrap_or(&base);
    let marked = |flag: &str, prefix: &str| {
        info.argv
            .windows(2)
            .any(|w| w[0] == flag && w[1].len() > prefix.len() && w[1].starts_with(prefix))
    };
    if base.starts_with("qemu-system-") {
        if !marked("-name", "guest=banger-") {
            return Err(refuse("no -name guest=banger-... marker"));
        }
    } else if base == "firecracker" {
        if !marked("--id", "banger-") {
            return Err(refuse("no --id banger-... marker"));
        }
    } else {
        return Err(refuse("not qemu-system-* or firecracker"));
    }
    if info.ruid != caller_uid {
        return Err(refuse(&format!(
            "it runs as uid {}, not the caller's",
            info.ruid
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use banger_proto::helper::HelperConfig;

    use super::*;

    fn settings() -> Settings {
        let mut c = HelperConfig::for_uids(vec![1000]);
        c.data_dirs = vec![PathBuf::from("/data"), PathBuf::from("/home/u/banger")];
        Settings::from_config(c).unwrap()
    }

    #[test]
    fn op_ids() {
        for ok in ["op-1", "op-abcDEF_12-x", &format!("op-{}", "a".repeat(64))] {
            assert!(op_id(ok), "{ok}");
        }
        for bad in [
            "",
            "op-",
            "op",
            "OP-1",
            "op-a b",
            "op-a\n",
            "op-é",
            "op-a/b",
            "xop-1",
            &format!("op-{}", "a".repeat(65)),
        ] {
            assert!(!op_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn tap_names() {
        for ok in ["bgtap0", "bgtap1", "bgtap12345", "bgtap007"] {
            assert!(tap_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "bgtap",
            "bgtapx",
            "bgtap123456",
            "bgtap-1",
            "bgtap1 ",
            " bgtap1",
            "bgtap1\n",
            "bgtap1\0",
            "bgtap1/../eth0",
            "bgtap１",
            "BGTAP1",
            "eth0",
            "lo",
            "docker0",
            "banger0",
            "tap0",
            "bgtap1\t",
        ] {
            let e = tap_name(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidName(_)), "{bad:?}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert!(is_tap_name("bgtap3") && !is_tap_name("banger0"));
    }

    #[test]
    fn bridge_names() {
        for ok in ["banger0", "bgtest42", "br-x_1", "b"] {
            assert!(bridge_name_syntax(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "0banger",
            "Banger",
            "bgtap1",
            "a.b",
            "a b",
            "a/b",
            "sixteen-chars-xx",
            "é",
        ] {
            assert!(bridge_name_syntax(bad).is_err(), "{bad:?}");
        }
        let s = settings();
        assert!(bridge_arg("banger0", &s).is_ok());
        for bad in ["banger1", "eth0", "docker0", "banger0 ", ""] {
            assert!(
                matches!(bridge_arg(bad, &s), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dm_names() {
        for ok in [
            "banger-x",
            "banger-0a1b-root",
            &format!("banger-{}", "a".repeat(57)),
        ] {
            assert!(dm_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "banger-",
            "banger",
            "dm-0",
            "banger-X",
            "banger-a_b",
            "banger-a/b",
            "banger-a b",
            "banger-a\n",
            "../banger-a",
            &format!("banger-{}", "a".repeat(58)),
        ] {
            assert!(
                matches!(dm_name(bad), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn loop_devices() {
        assert_eq!(loop_device("/dev/loop0").unwrap(), "loop0");
        assert_eq!(loop_device("/dev/loop17").unwrap(), "loop17");
        for bad in [
            "/dev/loop",
            "/dev/loop01",
            "/dev/sda",
            "/dev/loop1/../sda",
            "/dev/loop-control",
            "loop1",
            "/dev//loop1",
            "/dev/loop1 ",
            "/dev/loop12345678",
            "/dev/mapper/x",
        ] {
            assert!(
                matches!(loop_device(bad), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn subnet_args() {
        let s = settings();
        assert!(subnet_arg("10.77.0.0/24", &s.subnet).is_ok());
        for bad in [
            "10.78.0.0/24",
            "10.77.0.0/25",
            "0.0.0.0/0",
            "10.77.0.1/24",
            "garbage",
            "fd00::/64",
            "",
        ] {
            assert!(
                matches!(subnet_arg(bad, &s.subnet), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn uids_signals_pids() {
        let s = settings();
        assert!(owner_uid(1000, &s).is_ok());
        assert!(matches!(owner_uid(0, &s), Err(Error::InvalidArgument(_))));
        for name in ["TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2"] {
            assert_eq!(signal(name).unwrap().name(), name);
        }
        for bad in ["", "term", "SIGTERM", "STOP", "9", "SEGV", "TERM\n"] {
            assert!(
                matches!(signal(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert_eq!(pid(2).unwrap(), 2);
        for bad in [0, 1, u32::MAX, 1 << 31] {
            assert!(matches!(pid(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn path_shapes() {
        for ok in ["/", "/data/x", "/a b/c"] {
            assert!(normalized_absolute(Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "data/x",
            "./x",
            "/data/../etc",
            "/data/./x",
            "/data//x",
            "/data/x/",
            "/a\0b",
        ] {
            assert!(normalized_absolute(Path::new(bad)).is_err(), "{bad:?}");
        }
        assert!(normalized_absolute(Path::new(&format!("/{}", "a".repeat(5000)))).is_err());
    }

    #[test]
    fn path_args_stay_under_their_dirs() {
        let s = settings();
        assert_eq!(
            path_arg(Path::new("/data/vms/x/root.img"), &s.data_dirs, "data dir").unwrap(),
            Path::new("/data")
        );
        assert!(path_arg(Path::new("/home/u/banger/a"), &s.data_dirs, "data dir").is_ok());
        for bad in [
            "/data",
            "/data-evil/x",
            "/dat",
            "/datax/y",
            "/etc/shadow",
            "data/x",
            "/data/../etc/shadow",
            "/data/x/../../etc",
            "/home/u/bangerx/a",
            "/home/u",
        ] {
            assert!(
                matches!(
                    path_arg(Path::new(bad), &s.data_dirs, "data dir"),
                    Err(Error::InvalidPath(_))
                ),
                "{bad:?}"
            );
        }
        assert!(is_under(Path::new("/data/a"), &s.data_dirs));
        assert!(!is_under(Path::new("/data"), &s.data_dirs));
        assert!(!is_under(Path::new("/data/../x"), &s.data_dirs));
    }

    fn proc_info(exe: &str, argv: &[&str], ruid: u32) -> ProcInfo {
        ProcInfo {
            exe: Some(PathBuf::from(exe)),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ruid,
        }
    }

    #[test]
    fn vmm_processes() {
        let allowed = 1000;
        let qemu = [
            "qemu-system-x86_64",
            "-M",
            "microvm",
            "-name",
            "guest=banger-abc,process=banger-abc",
        ];
        assert!(
            vmm_process(
                9,
                &proc_info("/usr/bin/qemu-system-x86_64", &qemu, 1000),
                allowed
            )
            .is_ok()
        );
        assert!(
            vmm_process(
                9,
                &proc_info("/usr/bin/qemu-system-x86_64 (deleted)", &qemu, 1000),
                allowed
            )
            .is_ok()
        );
        assert!(
            vmm_process(
                9,
                &proc_info(
                    "/usr/bin/firecracker",
                    &["firecracker", "--id", "banger-abc"],
                    1000
                ),
                allowed
            )
            .is_ok()
        );
        let refused = [
            proc_info("/usr/bin/qemu-system-x86_64", &qemu, 0),
            proc_info(
                "/usr/bin/qemu-system-x86_64",
                &["qemu-system-x86_64", "-M", "microvm"],
                1000,
            ),
            proc_info(
                "/usr/bin/qemu-system-x86_64",
                &["q", "-name", "guest=other"],
                1000,
            ),
            proc_info(
                "/usr/bin/qemu-system-x86_64",
                &["q", "-name", "guest=banger-"],
                1000,
            ),
            proc_info(
                "/usr/bin/qemu-system-x86_64",
                &["q", "guest=banger-x", "-name"],
                1000,
            ),
            proc_info("/usr/bin/sleep", &qemu, 1000),
            proc_info("/usr/bin/bash", &qemu, 1000),
            proc_info(
                "/usr/bin/firecracker",
                &["firecracker", "--id", "other"],
                1000,
            ),
            proc_info("/usr/bin/firecracker", &qemu, 1000),
            ProcInfo {
                exe: None,
                argv: vec![],
                ruid: 1000,
            },
        ];
        for info in refused {
            assert!(
                matches!(vmm_process(9, &info, allowed), Err(Error::NotAllowed(_))),
                "{info:?}"
            );
        }
    }
}
