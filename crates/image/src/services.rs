//! Guest services: long-running programs an image declares (a command, a
//! port, a working directory), baked in as systemd units that start at
//! boot. The daemon waits for each port to listen as a stage of every
//! start (`crates/daemon/src/vms/lifecycle.rs`), and publishes it.
//!
//! Presets are named recipes that bring their own packages, a setup run
//! inside the image while it is made, and services: `opencode`, a
//! coding-agent server (the `opencode-ai` npm package, installed with the
//! guest's own Node.js from Debian) on port 4096 in the workspace.

use serde::{Deserialize, Serialize};

use crate::guest::Change;

/// One service of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Lowercase letters, digits and `-`: names the unit
    /// (`banger-service-NAME.service`).
    pub name: String,
    /// A shell command line, run by `/bin/sh -c` as root.
    pub command: String,
    /// The TCP port it listens on once ready.
    pub port: u16,
    /// Its working directory (made at start when missing).
    pub workdir: String,
    /// Environment variables it runs with (besides `HOME=/root`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}

/// The opencode release the preset installs (pinned, so a preset image is
/// the same whenever it is built, and its base is cached).
pub const OPENCODE_VERSION: &str = "1.18.33";

/// A named recipe: packages, setup and services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Opencode,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Self::Opencode => "opencode",
        }
    }

    /// Debian packages it adds.
    pub fn packages(self) -> Vec<String> {
        match self {
            Self::Opencode => vec!["nodejs".into(), "npm".into()],
        }
    }

    /// Shell commands run inside the image (chroot, with the network)
    /// once its packages are in.
    pub fn setup(self) -> Vec<String> {
        match self {
            Self::Opencode => vec![format!(
                "npm install --global --cache /tmp/npm-cache --no-fund --no-audit --loglevel=error \
                 opencode-ai@{OPENCODE_VERSION} && rm -rf /tmp/npm-cache /root/.npm && opencode --version"
            )],
        }
    }

    pub fn services(self) -> Vec<Service> {
        match self {
            Self::Opencode => vec![Service {
                name: "opencode".into(),
                command: "exec opencode serve --hostname 0.0.0.0 --port 4096".into(),
                port: 4096,
                workdir: "/root/work".into(),
                // The release is pinned with the image; its update check
                // also holds the server's first request until the network
                // answers, for minutes where it never does.
                env: vec![("OPENCODE_DISABLE_AUTOUPDATE".into(), "1".into())],
            }],
        }
    }
}

/// A service's unit: started once the network and the work disk are up,
/// restarted when it fails.
fn unit(s: &Service) -> String {
    format!(
        "\
# banger: a guest service of this image (crates/image/src/services.rs).
[Unit]
Description=banger service {name} (port {port})
After=network-online.target banger-guest-setup.service
Wants=network-online.target
RequiresMountsFor=/root

[Service]
Environment=HOME=/root
{env}# The working directory may be on the work disk, made at first use: made
# here (WorkingDirectory= would fail before anything runs).
ExecStart=/bin/sh -c 'mkdir -p {workdir} && cd {workdir} && {command}'
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
",
        name = s.name,
        port = s.port,
        workdir = s.workdir,
        command = s.command.replace('\'', "'\\''"),
        env = s
            .env
            .iter()
            .map(|(k, v)| format!("Environment={k}={v}\n"))
            .collect::<String>(),
    )
}

/// The units of `services`, enabled.
pub(crate) fn changes(services: &[Service]) -> Vec<Change> {
    services
        .iter()
        .flat_map(|s| {
            let name = format!("banger-service-{}.service", s.name);
            [
                Change::File {
                    path: format!("etc/systemd/system/{name}"),
                    mode: 0o644,
                    contents: unit(s),
                },
                Change::Symlink {
                    path: format!("etc/systemd/system/multi-user.target.wants/{name}"),
                    target: format!("/etc/systemd/system/{name}"),
                },
            ]
        })
        .collect()
}

/// Checks a service before it is baked in: a unit name, a port, an
/// absolute working directory, a command on one line.
pub fn validate(s: &Service) -> std::result::Result<(), String> {
    let name_ok = !s.name.is_empty()
        && s.name.len() <= 32
        && s.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(format!("bad service name {:?}", s.name));
    }
    if s.port == 0 {
        return Err(format!("service {}: port 0", s.name));
    }
    if !s.workdir.starts_with('/') || s.workdir.contains(['\n', ' ', '\'']) {
        return Err(format!("service {}: bad working directory", s.name));
    }
    for (key, value) in &s.env {
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        let value_ok = value
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '%'));
        if !key_ok || !value_ok {
            return Err(format!("service {}: bad environment {key:?}", s.name));
        }
    }
    if s.command.trim().is_empty() || s.command.contains(['\n', '\r', '%']) {
        return Err(format!(
            "service {}: the command must be one line without %",
            s.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opencode_preset_serves_port_4096_in_the_workspace() {
        let services = Preset::Opencode.services();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].port, 4096);
        assert!(validate(&services[0]).is_ok());
        let unit = unit(&services[0]);
        assert!(
            unit.contains("mkdir -p /root/work && cd /root/work && exec opencode serve"),
            "{unit}"
        );
        assert!(unit.contains("opencode serve --hostname 0.0.0.0 --port 4096"));
        assert!(Preset::Opencode.setup()[0].contains(OPENCODE_VERSION));
        assert!(
            unit.contains("Environment=OPENCODE_DISABLE_AUTOUPDATE=1\n"),
            "{unit}"
        );
    }

    #[test]
    fn a_service_that_could_break_its_unit_is_refused() {
        let ok = Service {
            name: "web".into(),
            command: "python3 -m http.server 8000".into(),
            port: 8000,
            workdir: "/srv".into(),
            env: Vec::new(),
        };
        assert!(validate(&ok).is_ok());
        for bad in [
            Service {
                name: "Web".into(),
                ..ok.clone()
            },
            Service {
                command: "a\nExecStartPost=evil".into(),
                ..ok.clone()
            },
            Service {
                workdir: "relative".into(),
                ..ok.clone()
            },
            Service {
                env: vec![("A".into(), "x\nExecStart=evil".into())],
                ..ok.clone()
            },
            Service { port: 0, ..ok },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
    }
}
