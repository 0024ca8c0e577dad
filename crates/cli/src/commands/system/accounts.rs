//! The user the helper serves: passwd lookups and that user's banger
//! layout.

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use banger_paths::Layout;
use serde::Serialize;

use super::io_fail;
use crate::CliError;

/// A user from the passwd database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Account {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) home: PathBuf,
}

/// Parses one `name:pw:uid:gid:gecos:home:shell` line.
pub(super) fn parse_passwd_line(line: &str) -> Option<Account> {
    let fields: Vec<&str> = line.trim_end_matches('\n').split(':').collect();
    if fields.len() < 7 {
        return None;
    }
    Some(Account {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: PathBuf::from(fields[5]),
    })
}

/// Finds a user by name or uid: `getent passwd` (which sees NSS users too),
/// else `/etc/passwd`.
pub(super) fn lookup_account(spec: &str) -> Result<Account, CliError> {
    let by_getent = Command::new("getent")
        .args(["passwd", spec])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(parse_passwd_line)
        });
    if let Some(a) = by_getent {
        return Ok(a);
    }
    let text = fs::read_to_string("/etc/passwd").map_err(|e| io_fail("read /etc/passwd", &e))?;
    let accounts: Vec<Account> = text.lines().filter_map(parse_passwd_line).collect();
    let found = accounts.iter().find(|a| a.name == spec).or_else(|| {
        spec.parse::<u32>()
            .ok()
            .and_then(|uid| accounts.iter().find(|a| a.uid == uid))
    });
    found
        .cloned()
        .ok_or_else(|| CliError::BadParams(format!("--user {spec}: no such user")))
}

/// The user the helper will serve: `--user`, else the sudo caller, else us.
pub(super) fn allowed_account(user: Option<&str>) -> Result<Account, CliError> {
    if let Some(spec) = user {
        return lookup_account(spec);
    }
    let sudo_uid = std::env::var("SUDO_UID")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let uid = sudo_uid.unwrap_or_else(|| rustix::process::getuid().as_raw());
    lookup_account(&uid.to_string())
}

/// That user's banger layout: the current environment's when it is us,
/// else their passwd home and `/run/user/UID` when that exists.
pub(super) fn layout_for(account: &Account) -> Result<Layout, CliError> {
    if account.uid == rustix::process::getuid().as_raw() {
        return Ok(Layout::from_env()?);
    }
    let home = account.home.clone().into_os_string();
    let run_user = PathBuf::from(format!("/run/user/{}", account.uid));
    let runtime = run_user.is_dir().then(|| run_user.into_os_string());
    let var = |name: &str| -> Option<OsString> {
        match name {
            "HOME" => Some(home.clone()),
            "XDG_RUNTIME_DIR" => runtime.clone(),
            _ => None,
        }
    };
    Ok(Layout::from_vars(var, account.uid)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn passwd_lines_parse() {
        let a = parse_passwd_line("alice:x:1000:1001:Alice,,,:/home/alice:/bin/bash").unwrap();
        assert_eq!(a.name, "alice");
        assert_eq!(a.uid, 1000);
        assert_eq!(a.gid, 1001);
        assert_eq!(a.home, Path::new("/home/alice"));
        assert!(parse_passwd_line("broken:x:abc:1::/:/bin/sh").is_none());
        assert!(parse_passwd_line("short:x:1").is_none());
    }
}
