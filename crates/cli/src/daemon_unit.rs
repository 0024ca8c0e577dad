//! bangerd as a systemd user service (README.md, "The daemon as a systemd
//! user service"): the unit `banger daemon install --user` writes, and how
//! [`daemon_ctl`](crate::daemon_ctl) starts the daemon through
//! `systemctl --user` when that unit runs the `bangerd` it would spawn.
//!
//! `BANGER_SYSTEMCTL` (hidden, for tests) names the `systemctl` program.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_paths::Layout;

/// The unit's name in the user's systemd instance.
pub const UNIT_NAME: &str = "bangerd.service";

/// The XDG variables the unit pins, so the daemon systemd starts uses the
/// directories (and so the socket) of the CLI that installed it.
const PINNED_VARS: [&str; 4] = [
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
];

/// `~/.config/systemd/user` (under `XDG_CONFIG_HOME` when set).
pub fn unit_dir(layout: &Layout) -> PathBuf {
    layout
        .config_dir
        .parent()
        .unwrap_or(&layout.config_dir)
        .join("systemd/user")
}

pub fn unit_path(layout: &Layout) -> PathBuf {
    unit_dir(layout).join(UNIT_NAME)
}

/// Why a path cannot go into a unit file as is (systemd would split or
/// expand it), if it cannot.
pub fn unit_unsafe(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    if !path.is_absolute() {
        return Some(format!("{text} is not an absolute path"));
    }
    text.chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '%' | '\\' | '"' | '\'' | '$'))
        .map(|c| format!("{text} contains {c:?}, which a unit file cannot hold as is"))
}

/// The unit's text. `var` reads the installing CLI's environment: the XDG
/// variables it sets are pinned; without `XDG_RUNTIME_DIR` the CLI uses a
/// directory under /tmp, so the unit unsets the one systemd would give.
pub fn render_unit(
    bangerd: &Path,
    layout: &Layout,
    var: impl Fn(&str) -> Option<OsString>,
) -> String {
    let log = layout.log_file();
    let mut text = format!(
        "# Written by `banger daemon install --user`; removed by `banger daemon uninstall --user`.\n\
         [Unit]\n\
         Description=banger daemon (bangerd): local microVMs\n\
         Documentation=man:banger(1)\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={bangerd}\n",
        bangerd = bangerd.display()
    );
    for name in PINNED_VARS {
        if let Some(v) = var(name).filter(|v| !v.is_empty()) {
            let _ = writeln!(text, "Environment=\"{name}={}\"", v.to_string_lossy());
        }
    }
    match var("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(v) => {
            let _ = writeln!(
                text,
                "Environment=\"XDG_RUNTIME_DIR={}\"",
                v.to_string_lossy()
            );
        }
        None => text.push_str("UnsetEnvironment=XDG_RUNTIME_DIR\n"),
    }
    let _ = write!(
        text,
        "# The log file banger reads (`banger daemon logs`), as when it spawns bangerd.\n\
         StandardOutput=append:{log}\n\
         StandardError=append:{log}\n\
         # VMs run in their own sessions and outlive the daemon: stopping the\n\
         # service ends bangerd only, never the VMs' qemu processes.\n\
         KillMode=process\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        log = log.display()
    );
    text
}

/// The program the unit's `ExecStart=` runs.
pub fn exec_start(unit_text: &str) -> Option<PathBuf> {
    unit_text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("ExecStart=")?;
        let program = rest.trim_start_matches(['-', '@', '+', '!', ':']);
        program.split_whitespace().next().map(PathBuf::from)
    })
}

/// Whether banger should start its daemon through systemd: the unit is
/// installed and runs `bangerd` (the binary banger would spawn itself).
pub fn installed_for(layout: &Layout, bangerd: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(unit_path(layout)) else {
        return false;
    };
    let ours = std::fs::canonicalize(bangerd).unwrap_or_else(|_| bangerd.to_path_buf());
    exec_start(&text)
        .is_some_and(|p| p == bangerd || std::fs::canonicalize(&p).is_ok_and(|p| p == ours))
}

/// Why `systemctl --user` failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemctlError {
    #[error("run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`systemctl --user {args}` failed ({status}): {said}")]
    Failed {
        args: String,
        status: String,
        said: String,
    },
}

fn systemctl_program() -> OsString {
    std::env::var_os("BANGER_SYSTEMCTL")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from("systemctl"))
}

/// Runs `systemctl --user ARGS`, its output captured.
pub fn systemctl_user(args: &[&str]) -> Result<(), SystemctlError> {
    let program = systemctl_program();
    let output = Command::new(&program)
        .arg("--user")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SystemctlError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if said.is_empty() {
        said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(SystemctlError::Failed {
        args: args.join(" "),
        status: output.status.to_string(),
        said,
    })
}

/// Whether systemd reports the unit as failed (it exited and will not
/// come back), as opposed to starting or running.
pub fn unit_failed() -> bool {
    Command::new(systemctl_program())
        .args(["--user", "is-failed", "--quiet", UNIT_NAME])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(vars: &[(&str, &str)]) -> Layout {
        Layout::from_vars(
            |n| {
                vars.iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| OsString::from(v))
            },
            1000,
        )
        .unwrap()
    }

    #[test]
    fn the_unit_runs_bangerd_with_the_clis_directories() {
        let vars = [
            ("HOME", "/home/u"),
            ("XDG_DATA_HOME", "/data"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        let l = layout(&vars);
        assert_eq!(
            unit_path(&l),
            Path::new("/home/u/.config/systemd/user/bangerd.service")
        );
        let get = |n: &str| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| OsString::from(v))
        };
        let text = render_unit(Path::new("/usr/local/bin/bangerd"), &l, get);
        assert!(
            text.contains("\nExecStart=/usr/local/bin/bangerd\n"),
            "{text}"
        );
        assert!(
            text.contains("\nEnvironment=\"XDG_DATA_HOME=/data\"\n"),
            "{text}"
        );
        assert!(text.contains("\nEnvironment=\"XDG_RUNTIME_DIR=/run/user/1000\"\n"));
        assert!(
            !text.contains("XDG_CACHE_HOME"),
            "only what is set is pinned"
        );
        assert!(
            text.contains("\nKillMode=process\n"),
            "VMs outlive the service"
        );
        assert!(text.contains("\nStandardOutput=append:/home/u/.local/state/banger/bangerd.log\n"));
        assert!(text.contains("\nWantedBy=default.target\n"));
        assert_eq!(
            exec_start(&text),
            Some(PathBuf::from("/usr/local/bin/bangerd"))
        );
    }

    #[test]
    fn without_a_runtime_dir_the_unit_unsets_systemds() {
        let l = layout(&[("HOME", "/home/u")]);
        let text = render_unit(Path::new("/b/bangerd"), &l, |_| None);
        assert!(
            text.contains("\nUnsetEnvironment=XDG_RUNTIME_DIR\n"),
            "{text}"
        );
    }

    #[test]
    fn paths_a_unit_cannot_hold() {
        assert!(unit_unsafe(Path::new("/usr/local/bin/bangerd")).is_none());
        assert!(unit_unsafe(Path::new("/my dir/bangerd")).is_some());
        assert!(unit_unsafe(Path::new("/x/100%/bangerd")).is_some());
        assert!(unit_unsafe(Path::new("bangerd")).is_some());
    }

    #[test]
    fn the_unit_is_used_only_for_the_same_bangerd() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        let l = layout(&[("HOME", home)]);
        let bangerd = dir.path().join("bangerd");
        std::fs::write(&bangerd, "").unwrap();
        assert!(!installed_for(&l, &bangerd), "no unit");
        std::fs::create_dir_all(unit_dir(&l)).unwrap();
        std::fs::write(unit_path(&l), render_unit(&bangerd, &l, |_| None)).unwrap();
        assert!(installed_for(&l, &bangerd));
        assert!(!installed_for(&l, Path::new("/elsewhere/bangerd")));
    }
}
