//! Registry credentials: given explicitly (`--username`/`--password-stdin`),
//! else from Docker's `config.json` (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`): its `credHelpers` and `credsStore` through the
//! `docker-credential-NAME get` program when it is installed, its `auths`
//! entries, and anonymous access otherwise.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::reference::DOCKER_HUB;

/// The key Docker writes for Docker Hub in `auths` and hands credential helpers.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    /// Username and password (or a token a registry accepts as a password).
    Basic { username: String, password: String },
    /// A bearer token used as is (`registrytoken` in config.json).
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Self::Anonymous)
    }

    /// The user name, for messages.
    pub fn username(&self) -> Option<&str> {
        match self {
            Self::Basic { username, .. } => Some(username),
            _ => None,
        }
    }

    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// Where Docker's configuration and credential helpers are found.
#[derive(Debug, Clone, Default)]
pub struct AuthSources {
    /// The directory holding `config.json`; `None`: none is read.
    pub config_dir: Option<PathBuf>,
    /// The directories searched for `docker-credential-NAME` (like `PATH`).
    pub helper_path: Option<OsString>,
}

impl AuthSources {
    /// Docker's own: `$DOCKER_CONFIG`, else `$HOME/.docker`; helpers on `$PATH`.
    pub fn from_env() -> Self {
        let config_dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| PathBuf::from(home).join(".docker"))
            });
        Self {
            config_dir,
            helper_path: std::env::var_os("PATH"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid Docker config.json")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the `auth` entry for {key:?} in {path} is not base64 of USER:PASSWORD")]
    BadAuthEntry { path: PathBuf, key: String },
    #[error("cannot run the credential helper {program}")]
    HelperSpawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("credential helper {program} failed for {server}: {message}")]
    HelperFailed {
        program: PathBuf,
        server: String,
        message: String,
    },
    #[error("credential helper {program} answered with invalid JSON")]
    HelperOutput {
        program: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Default, serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The credentials to use for `registry` (as in an [`ImageReference`]:
/// `docker.io` for Docker Hub): `explicit` when given, else Docker's
/// configuration in `sources`, else anonymous. Blocking (it may run a
/// credential helper): call it off the async runtime.
///
/// [`ImageReference`]: crate::ImageReference
pub fn resolve_credentials(
    registry: &str,
    explicit: Option<Credentials>,
    sources: &AuthSources,
) -> Result<Credentials, AuthError> {
    if let Some(creds) = explicit {
        return Ok(creds);
    }
    let Some(config_dir) = &sources.config_dir else {
        return Ok(Credentials::Anonymous);
    };
    let path = config_dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Credentials::Anonymous),
        Err(source) => return Err(AuthError::ReadConfig { path, source }),
    };
    let config: DockerConfig =
        serde_json::from_str(&text).map_err(|source| AuthError::ParseConfig {
            path: path.clone(),
            source,
        })?;

    let server = if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY
    } else {
        registry
    };
    let helper = config
        .cred_helpers
        .iter()
        .find(|(key, _)| same_registry(key, registry))
        .map(|(_, helper)| helper)
        .or(config.creds_store.as_ref())
        .filter(|helper| !helper.is_empty());
    if let Some(helper) = helper {
        match find_helper(helper, sources.helper_path.as_deref()) {
            Some(program) => {
                if let Some(creds) = run_helper(&program, server)? {
                    return Ok(creds);
                }
            }
            None => tracing::warn!(
                helper = %format!("docker-credential-{helper}"),
                registry,
                "credential helper named in config.json is not installed; trying its `auths`"
            ),
        }
    }

    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(key, _)| same_registry(key, registry))
    else {
        return Ok(Credentials::Anonymous);
    };
    if let Some(token) = entry.registrytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Credentials::Bearer(token.clone()));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let bad = || AuthError::BadAuthEntry {
            path: path.clone(),
            key: key.clone(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => Ok(Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        }),
        _ => Ok(Credentials::Anonymous),
    }
}

/// Whether a config.json key (`host`, `https://host/v1/`, ...) names `registry`.
fn same_registry(key: &str, registry: &str) -> bool {
    let host = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = host.split('/').next().unwrap_or(host);
    if registry == DOCKER_HUB {
        matches!(
            host,
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        )
    } else {
        host == registry
    }
}

fn find_helper(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = format!("docker-credential-{name}");
    std::env::split_paths(path?)
        .map(|dir| dir.join(&file))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `PROGRAM get` with the server on stdin; `None` when it has no
/// credentials for it.
fn run_helper(program: &Path, server: &str) -> Result<Option<Credentials>, AuthError> {
    let spawn_err = |source| AuthError::HelperSpawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its answer.
        match stdin.write_all(server.as_bytes()) {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(spawn_err(e)),
            _ => {}
        }
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        let mut message = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if message.is_empty() {
            message = stderr;
        }
        // The helpers' protocol: this message means "nothing stored".
        if message.contains("credentials not found") {
            return Ok(None);
        }
        if message.is_empty() {
            message = out.status.to_string();
        }
        return Err(AuthError::HelperFailed {
            program: program.to_owned(),
            server: server.to_owned(),
            message,
        });
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&out.stdout).map_err(|source| AuthError::HelperOutput {
            program: program.to_owned(),
            source,
        })?;
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::Basic {
        username: answer.username,
        password: answer.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    struct Env {
        dir: tempfile::TempDir,
    }

    impl Env {
        fn new(config: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("docker")).unwrap();
            std::fs::create_dir(dir.path().join("bin")).unwrap();
            std::fs::write(dir.path().join("docker/config.json"), config).unwrap();
            Self { dir }
        }

        fn sources(&self) -> AuthSources {
            AuthSources {
                config_dir: Some(self.dir.path().join("docker")),
                helper_path: Some(self.dir.path().join("bin").into_os_string()),
            }
        }

        /// A fake `docker-credential-NAME` that answers for `server` only
        /// and records what it was asked.
        fn helper(&self, name: &str, server: &str, user: &str, secret: &str) {
            let log = self.dir.path().join(format!("{name}.log"));
            let script = format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" >> '{}'\n\
                 if [ \"$server\" = '{server}' ]; then\n\
                 printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$server\"\n\
                 else echo 'credentials not found in native keychain'; exit 1; fi\n",
                log.display()
            );
            let path = self
                .dir
                .path()
                .join("bin")
                .join(format!("docker-credential-{name}"));
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn asked(&self, name: &str) -> String {
            std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn explicit_credentials_win() {
        let env = Env::new(&format!(
            r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#,
            b64("file:pw")
        ));
        let got = resolve_credentials("r.io", Some(basic("me", "secret")), &env.sources()).unwrap();
        assert_eq!(got, basic("me", "secret"));
    }

    #[test]
    fn auths_entries_base64_and_plain() {
        let env = Env::new(&format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "127.0.0.1:5000":{{"username":"u","password":"p:with:colons"}},
                "https://ghcr.io":{{"auth":"{}"}},
                "tok.io":{{"registrytoken":"abc"}}
            }}}}"#,
            b64("hub:hubpw"),
            b64("gh:ghpw:x")
        ));
        let s = env.sources();
        assert_eq!(
            resolve_credentials("docker.io", None, &s).unwrap(),
            basic("hub", "hubpw")
        );
        assert_eq!(
            resolve_credentials("127.0.0.1:5000", None, &s).unwrap(),
            basic("u", "p:with:colons")
        );
        assert_eq!(
            resolve_credentials("ghcr.io", None, &s).unwrap(),
            basic("gh", "ghpw:x")
        );
        assert_eq!(
            resolve_credentials("tok.io", None, &s).unwrap(),
            Credentials::Bearer("abc".into())
        );
        assert_eq!(
            resolve_credentials("other.io", None, &s).unwrap(),
            Credentials::Anonymous
        );
    }

    #[test]
    fn missing_config_is_anonymous_and_bad_ones_are_errors() {
        let none = AuthSources {
            config_dir: Some(PathBuf::from("/nonexistent/banger-oci-test")),
            helper_path: None,
        };
        assert!(
            resolve_credentials("r.io", None, &none)
                .unwrap()
                .is_anonymous()
        );
        assert!(
            resolve_credentials("r.io", None, &AuthSources::default())
                .unwrap()
                .is_anonymous()
        );

        let env = Env::new("{not json");
        let err = resolve_credentials("r.io", None, &env.sources()).unwrap_err();
        assert!(matches!(err, AuthError::ParseConfig { .. }), "{err}");

        let env = Env::new(r#"{"auths":{"r.io":{"auth":"!!!"}}}"#);
        let err = resolve_credentials("r.io", None, &env.sources()).unwrap_err();
        assert!(matches!(err, AuthError::BadAuthEntry { .. }), "{err}");
        assert!(err.to_string().contains("r.io"));
    }

    #[test]
    fn cred_helpers_per_registry_and_creds_store() {
        let env = Env::new(&format!(
            r#"{{"credHelpers":{{"r.io":"one"}},"credsStore":"store",
                 "auths":{{"plain.io":{{"auth":"{}"}}}}}}"#,
            b64("fileuser:filepw")
        ));
        env.helper("one", "r.io", "helperuser", "helperpw");
        env.helper("store", DOCKER_HUB_AUTH_KEY, "hubuser", "hubpw");
        let s = env.sources();
        assert_eq!(
            resolve_credentials("r.io", None, &s).unwrap(),
            basic("helperuser", "helperpw")
        );
        assert_eq!(env.asked("one"), "r.io\n");
        assert_eq!(
            resolve_credentials("docker.io", None, &s).unwrap(),
            basic("hubuser", "hubpw")
        );
        // The store knows nothing of plain.io: the `auths` entry is used.
        assert_eq!(
            resolve_credentials("plain.io", None, &s).unwrap(),
            basic("fileuser", "filepw")
        );
        assert_eq!(
            resolve_credentials("none.io", None, &s).unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(
            env.asked("store"),
            format!("{DOCKER_HUB_AUTH_KEY}\nplain.io\nnone.io\n")
        );
    }

    #[test]
    fn missing_helper_falls_back_to_auths() {
        let env = Env::new(&format!(
            r#"{{"credsStore":"absent","auths":{{"r.io":{{"auth":"{}"}}}}}}"#,
            b64("a:b")
        ));
        assert_eq!(
            resolve_credentials("r.io", None, &env.sources()).unwrap(),
            basic("a", "b")
        );
    }

    #[test]
    fn failing_helper_is_an_error() {
        let env = Env::new(r#"{"credsStore":"broken"}"#);
        let path = env.dir.path().join("bin/docker-credential-broken");
        std::fs::write(&path, "#!/bin/sh\necho 'keychain locked' >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = resolve_credentials("r.io", None, &env.sources()).unwrap_err();
        assert!(err.to_string().contains("keychain locked"), "{err}");
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", basic("me", "hunter2"));
        assert!(shown.contains("me") && !shown.contains("hunter2"));
    }
}
