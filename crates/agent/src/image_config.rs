//! Exec defaults of an image pulled from an OCI registry: its `Env`,
//! `WorkingDir`, `User`, `Entrypoint` and `Cmd` (docs/guest-contract.md,
//! "Images without an init").
//!
//! The daemon writes the `config` object of the image's OCI configuration
//! as is to [`IMAGE_CONFIG_PATH`] when it makes the root disk; the agent
//! reads it once at start ([`load`]) and applies it to every `exec`:
//!
//! - `Env` under the request's `env` (the request wins);
//! - `WorkingDir` when the request has no `cwd`;
//! - `User` (`uid`, `uid:gid`, `name`, `name:group`, names looked up in
//!   the guest's `/etc/passwd` and `/etc/group` at each exec);
//! - `Entrypoint` + `Cmd` when the request's `argv` is empty.
//!
//! Images with no such file (Debian images) keep the agent's defaults:
//! root, `/root`, the agent's environment, and an empty `argv` refused.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

/// Where the daemon puts the image's configuration.
pub const IMAGE_CONFIG_PATH: &str = "/.banger/image-config.json";

/// Largest configuration read (an OCI config's `config` object is a few
/// KiB; the rest of the file is not ours to read).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Largest `/etc/passwd` or `/etc/group` read.
const MAX_DB_BYTES: u64 = 4 * 1024 * 1024;

/// The fields of an OCI image configuration's `config` object the agent
/// uses (others, such as `ExposedPorts` or `Labels`, are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `KEY=VALUE` strings.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("parse {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl ImageConfig {
    /// Reads `path`; `Ok(None)` when there is no such file.
    pub fn read(path: &Path) -> Result<Option<Self>, ConfigError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::parse(&bytes)
            .map(Some)
            .map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })
    }

    /// Parses the JSON of an OCI `config` object.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// `Env` as pairs; entries without `=` or with an empty or NUL-holding
    /// name are left out (an exec refuses them).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .flatten()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (!k.is_empty() && !k.contains('\0') && !v.contains('\0'))
                    .then(|| (k.to_owned(), v.to_owned()))
            })
            .collect()
    }

    /// `WorkingDir` when set and absolute.
    pub fn working_dir(&self) -> Option<&str> {
        self.working_dir
            .as_deref()
            .filter(|d| d.starts_with('/') && !d.contains('\0'))
    }

    /// `User` when set and not empty.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref().filter(|u| !u.is_empty())
    }

    /// `Entrypoint` followed by `Cmd`: what the image runs by default
    /// (empty when it names nothing).
    pub fn default_argv(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .flatten()
            .chain(self.cmd.iter().flatten())
            .cloned()
            .collect()
    }
}

static INSTALLED: OnceLock<ImageConfig> = OnceLock::new();

/// Reads [`IMAGE_CONFIG_PATH`] and makes it the exec defaults of this
/// process. A missing file means none; an unreadable one is logged and
/// ignored (the agent must serve anyway).
pub fn load() {
    match ImageConfig::read(Path::new(IMAGE_CONFIG_PATH)) {
        Ok(Some(c)) => {
            crate::log!(
                "exec defaults from {IMAGE_CONFIG_PATH}: {} variables, working directory {:?}, user {:?}, default command of {} words",
                c.env_pairs().len(),
                c.working_dir().unwrap_or("(none)"),
                c.user().unwrap_or("(none)"),
                c.default_argv().len()
            );
            let _ = INSTALLED.set(c);
        }
        Ok(None) => {}
        Err(e) => crate::log!("ignoring the exec defaults: {}", crate::error_chain(&e)),
    }
}

/// The exec defaults [`load`] installed (empty ones if none).
pub(crate) fn installed() -> &'static ImageConfig {
    static EMPTY: ImageConfig = ImageConfig {
        env: None,
        working_dir: None,
        user: None,
        entrypoint: None,
        cmd: None,
    };
    INSTALLED.get().unwrap_or(&EMPTY)
}

/// A user to run a process as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// The home directory from `/etc/passwd`, when the user is listed.
    pub home: Option<String>,
}

/// Why a `User` could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("no user {0:?} in /etc/passwd")]
    NoUser(String),
    #[error("no group {0:?} in /etc/group")]
    NoGroup(String),
}

/// One line of `/etc/passwd`: name, uid, gid, home.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32, &str)> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?, f[5]))
    })
}

/// One line of `/etc/group`: name, gid.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?))
    })
}

/// Resolves an OCI `User` the way container runtimes do: `uid` or `name`
/// (the group then being the user's own from `passwd`, else 0), or
/// `USER:GROUP` with either half a number or a name. Numbers need no
/// entry in the files; names do.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<Credentials, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.1 == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.0 == user)
                .ok_or_else(|| UserError::NoUser(user.to_owned()))?,
        ),
    };
    let uid = match (user.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(e)) => e.1,
        // A name not found returned above.
        (Err(_), None) => return Err(UserError::NoUser(user.to_owned())),
    };
    let gid = match grp {
        None | Some("") => entry.map_or(0, |e| e.2),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                group_entries(group)
                    .find(|e| e.0 == g)
                    .ok_or_else(|| UserError::NoGroup(g.to_owned()))?
                    .1
            }
        },
    };
    Ok(Credentials {
        uid,
        gid,
        home: entry.map(|e| e.3.to_owned()).filter(|h| h.starts_with('/')),
    })
}

/// Reads a small file of the user database (`/etc/passwd`, `/etc/group`);
/// a missing or unreadable one reads as empty.
pub(crate) fn read_db(path: &Path) -> String {
    let Ok(f) = File::open(path) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    if f.take(MAX_DB_BYTES).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1001:App:/home/app:/bin/sh
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
    const GROUP: &str = "\
root:x:0:
app:x:1001:
staff:x:50:app
";

    #[test]
    fn users_by_number_and_name() {
        let r = |s| resolve_user(s, PASSWD, GROUP);
        assert_eq!(
            r("app").unwrap(),
            Credentials {
                uid: 1000,
                gid: 1001,
                home: Some("/home/app".into())
            }
        );
        assert_eq!(r("1000").unwrap().gid, 1001);
        assert_eq!(r("1000").unwrap().home.as_deref(), Some("/home/app"));
        // A uid with no entry: group 0, no home.
        assert_eq!(
            r("4242").unwrap(),
            Credentials {
                uid: 4242,
                gid: 0,
                home: None
            }
        );
        assert_eq!(r("4242:7").unwrap().gid, 7);
        assert_eq!(r("app:staff").unwrap().gid, 50);
        assert_eq!(r("app:0").unwrap().gid, 0);
        assert_eq!(r("1000:staff").unwrap(), {
            Credentials {
                uid: 1000,
                gid: 50,
                home: Some("/home/app".into()),
            }
        });
        assert_eq!(r("app:").unwrap().gid, 1001);
        assert_eq!(r("ghost"), Err(UserError::NoUser("ghost".into())));
        assert_eq!(r("app:wheel"), Err(UserError::NoGroup("wheel".into())));
        // Without any files (an image with no /etc/passwd).
        assert_eq!(resolve_user("0", "", "").unwrap().uid, 0);
        assert!(resolve_user("root", "", "").is_err());
    }

    #[test]
    fn oci_config_fields() {
        let c = ImageConfig::parse(
            br#"{"Env":["PATH=/usr/local/bin:/bin","FOO=a=b","bad","=x"],
                 "WorkingDir":"/srv","User":"app","Entrypoint":["/bin/ep"],
                 "Cmd":["serve","--port","80"],"ExposedPorts":{"80/tcp":{}},
                 "Labels":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.env_pairs(),
            vec![
                ("PATH".to_owned(), "/usr/local/bin:/bin".to_owned()),
                ("FOO".to_owned(), "a=b".to_owned()),
            ]
        );
        assert_eq!(c.working_dir(), Some("/srv"));
        assert_eq!(c.user(), Some("app"));
        assert_eq!(c.default_argv(), ["/bin/ep", "serve", "--port", "80"]);

        let empty = ImageConfig::parse(b"{}").unwrap();
        assert_eq!(empty, ImageConfig::default());
        assert!(empty.default_argv().is_empty());
        let nulls =
            ImageConfig::parse(br#"{"Env":null,"Cmd":null,"WorkingDir":"","User":""}"#).unwrap();
        assert_eq!(nulls.working_dir(), None);
        assert_eq!(nulls.user(), None);
        assert!(ImageConfig::parse(b"\"nope\"").is_err());
        assert!(ImageConfig::parse(br#"{"Env":"FOO=1"}"#).is_err());
    }

    #[test]
    fn missing_and_oversized_files() {
        let dir = std::env::temp_dir().join(format!("banger-agent-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(ImageConfig::read(&dir.join("none.json")).unwrap().is_none());
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            ImageConfig::read(&big),
            Err(ConfigError::TooLarge { .. })
        ));
        let ok = dir.join("ok.json");
        std::fs::write(&ok, br#"{"Cmd":["sh"]}"#).unwrap();
        assert_eq!(
            ImageConfig::read(&ok).unwrap().unwrap().default_argv(),
            ["sh"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
