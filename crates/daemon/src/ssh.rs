//! banger's SSH identity and host-key pins (docs/vms.md, "SSH").
//!
//! One ed25519 key pair per user, made with `ssh-keygen` on first use. Host
//! keys are pinned on first connect (trust on first use) in banger's own
//! `known_hosts`, under the alias `NAME.vm` rather than `[127.0.0.1]:PORT`
//! (ports are reused across VMs). A changed key is refused by OpenSSH's
//! `StrictHostKeyChecking=accept-new`; the pin is removed on `vm delete`.
//! The real `ssh` client does the talking: it is what users run anyway.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use banger_paths::Layout;
use banger_proto::vm::SshInfo;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("run {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ssh-keygen failed: {stderr}")]
    Keygen { stderr: String },
    #[error(
        "the host key of {alias} changed since it was pinned; refusing to connect (remove the pin with: ssh-keygen -R {alias} -f {known_hosts})"
    )]
    HostKeyChanged { alias: String, known_hosts: String },
    #[error("ssh to {alias} failed (exit {code}): {stderr}")]
    Failed {
        alias: String,
        code: i32,
        stderr: String,
    },
    #[error("the guest reported a malformed ssh host key: \"{0}\"")]
    BadHostKey(String),
    #[error("write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the key and the pins live.
#[derive(Debug, Clone)]
pub struct SshPaths {
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
}

impl SshPaths {
    pub fn new(layout: &Layout) -> Self {
        let dir = layout.data_dir.join("ssh");
        Self {
            identity: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
        }
    }

    /// Makes the key pair if it does not exist yet.
    pub fn ensure_key(&self) -> Result<(), SshError> {
        if self.identity.exists() && self.public_key_path().exists() {
            return Ok(());
        }
        if let Some(dir) = self.identity.parent() {
            banger_paths::ensure_private_dir(dir).map_err(|e| SshError::Spawn {
                program: "mkdir",
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f"])
            .arg(&self.identity)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SshError::Spawn {
                program: "ssh-keygen",
                source,
            })?;
        if !out.status.success() {
            return Err(SshError::Keygen {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    pub fn public_key_path(&self) -> PathBuf {
        self.identity.with_extension("pub")
    }

    pub fn public_key(&self) -> Result<String, SshError> {
        self.ensure_key()?;
        std::fs::read_to_string(self.public_key_path())
            .map(|s| s.trim().to_owned())
            .map_err(|source| SshError::Spawn {
                program: "read public key",
                source,
            })
    }

    pub fn info(&self, vm_name: &str, host: &str, port: u16) -> SshInfo {
        SshInfo {
            host: host.to_owned(),
            port,
            user: "root".into(),
            identity_file: self.identity.display().to_string(),
            known_hosts_file: self.known_hosts.display().to_string(),
            host_key_alias: host_key_alias(vm_name),
        }
    }

    /// Connects once with `ssh ... true`, pinning the host key on first use
    /// and refusing a changed one.
    pub fn pin_host_key(&self, vm_name: &str, host: &str, port: u16) -> Result<(), SshError> {
        let info = self.info(vm_name, host, port);
        let out = Command::new("ssh")
            .args(info.client_args())
            .args(["-o", "ConnectTimeout=10", "-o", "BatchMode=yes"])
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SshError::Spawn {
                program: "ssh",
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed")
        {
            return Err(SshError::HostKeyChanged {
                alias: info.host_key_alias,
                known_hosts: info.known_hosts_file,
            });
        }
        Err(SshError::Failed {
            alias: info.host_key_alias,
            code: out.status.code().unwrap_or(-1),
            stderr: last_lines(&stderr, 3),
        })
    }

    /// Pins `public_key` (`ssh-ed25519 BASE64 [comment]`, as the guest's
    /// agent reported it over its own channel) for the VM, replacing any
    /// earlier pin: no SSH connection needed. The line comes from the
    /// guest, so only a known key type and base64 are accepted.
    pub fn pin_known_key(&self, vm_name: &str, public_key: &str) -> Result<(), SshError> {
        if public_key.trim_end().chars().any(char::is_control) {
            return Err(SshError::BadHostKey(shown(public_key)));
        }
        let mut fields = public_key.split_ascii_whitespace();
        let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
            return Err(SshError::BadHostKey(shown(public_key)));
        };
        let kind_ok = matches!(
            kind,
            "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ssh-rsa"
        );
        let key_ok = !key.is_empty()
            && key.len() <= 4096
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        if !kind_ok || !key_ok {
            return Err(SshError::BadHostKey(shown(public_key)));
        }
        static PINS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        // Pins are rewritten by ssh-keygen -R: one writer at a time.
        let _guard = PINS.lock().unwrap_or_else(|p| p.into_inner());
        self.forget(vm_name);
        let line = format!("{} {kind} {key}\n", host_key_alias(vm_name));
        let io = |source| SshError::Io {
            path: self.known_hosts.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.known_hosts)
            .map_err(io)?;
        std::io::Write::write_all(&mut file, line.as_bytes()).map_err(io)
    }

    /// Removes the pins of a VM (on delete). Missing pins are fine.
    pub fn forget(&self, vm_name: &str) {
        if !self.known_hosts.exists() {
            return;
        }
        let alias = host_key_alias(vm_name);
        let result = Command::new("ssh-keygen")
            .args(["-R", &alias, "-f"])
            .arg(&self.known_hosts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = result {
            tracing::warn!(error = %e, alias, "could not remove host key pin");
        }
        let _ = std::fs::remove_file(self.known_hosts.with_extension("old"));
    }
}

/// The alias a VM's host key is pinned under.
pub fn host_key_alias(vm_name: &str) -> String {
    format!("{vm_name}.vm")
}

/// True once something on `addr` speaks SSH: the guest's sshd sent its
/// `SSH-2.0-` banner. (With user-mode networking QEMU accepts the TCP
/// connection long before the guest listens, so connecting proves nothing.)
pub fn banner_ready(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"SSH-")
}

/// At most 80 characters of untrusted text, escaped for a terminal.
fn shown(text: &str) -> String {
    text.chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_host_key_is_pinned_once_and_bad_ones_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = SshPaths {
            identity: tmp.path().join("id_ed25519"),
            known_hosts: tmp.path().join("known_hosts"),
        };
        std::fs::write(&paths.known_hosts, "other.vm ssh-ed25519 AAAAother\n").unwrap();
        paths
            .pin_known_key("dev", "ssh-ed25519 AAAAC3Nza1 root@old")
            .unwrap();
        paths
            .pin_known_key("dev", "ssh-ed25519 AAAAC3Nza2 root@new")
            .unwrap();
        let text = std::fs::read_to_string(&paths.known_hosts).unwrap();
        assert!(text.contains("other.vm ssh-ed25519 AAAAother"), "{text}");
        assert!(text.contains("dev.vm ssh-ed25519 AAAAC3Nza2\n"), "{text}");
        assert!(!text.contains("AAAAC3Nza1"), "{text}");
        for bad in [
            "",
            "ssh-ed25519",
            "evil AAAA",
            "ssh-ed25519 AA\u{1b}[2J",
            "ssh-ed25519 a\nb",
        ] {
            let err = paths.pin_known_key("dev", bad).unwrap_err();
            assert!(matches!(err, SshError::BadHostKey(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn client_args_use_the_alias_and_banger_files() {
        let info = SshInfo {
            host: "127.0.0.1".into(),
            port: 2222,
            user: "root".into(),
            identity_file: "/k".into(),
            known_hosts_file: "/kh".into(),
            host_key_alias: host_key_alias("dev"),
        };
        let args = info.client_args().join(" ");
        assert!(args.contains("-p 2222"));
        assert!(args.contains("HostKeyAlias=dev.vm"));
        assert!(args.contains("UserKnownHostsFile=/kh"));
        assert!(args.contains("HashKnownHosts=no"));
        assert!(args.ends_with("root@127.0.0.1"));
    }

    #[test]
    fn banner_probe_tells_ssh_from_silence() {
        use std::io::Write;
        use std::net::TcpListener;
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        assert!(!banner_ready(addr, Duration::from_millis(200)));
        let speaking = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = speaking.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = speaking.accept().unwrap();
            s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
        });
        assert!(banner_ready(addr, Duration::from_secs(2)));
        t.join().unwrap();
    }

    #[test]
    fn key_is_made_once() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = SshPaths {
            identity: tmp.path().join("ssh/id_ed25519"),
            known_hosts: tmp.path().join("ssh/known_hosts"),
        };
        let first = paths.public_key().unwrap();
        assert!(first.starts_with("ssh-ed25519 "));
        assert_eq!(paths.public_key().unwrap(), first);
    }
}
