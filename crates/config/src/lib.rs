//! banger's user configuration: `config.toml` in the XDG config directory
//! (`~/.config/banger/config.toml`, or `BANGER_CONFIG`), the built-in
//! defaults, and where each effective value came from.
//!
//! Precedence, lowest first: built-in default, the file, the environment,
//! a flag. The VM defaults (`vcpus`, `memory`, `disk_size`, `image`,
//! `kernel`, `vmm`, `network`) are read by the daemon at each create, so
//! an edit applies to the next `vm create` (a flag of `vm create` wins);
//! the daemon's own settings (`tap_pool`, `log_level`, `accel`,
//! `console_log_max`, `cp_reserve`) when the
//! daemon starts (a flag or environment variable of `bangerd` wins).
//! Both the CLI (`banger config show`) and the daemon use this crate, so
//! they agree on the file's meaning; it is a library, not a wire type.

use std::path::{Path, PathBuf};

use banger_proto::{Egress, NetworkMode};
use serde::Deserialize;

/// Built-in VM defaults: one vCPU, because under TCG a second one makes
/// the guest clock unstable and boot far slower (docs/vms.md,
/// "Accelerator").
pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 1024;
pub const DEFAULT_DISK_SIZE_BYTES: u64 = 8 << 30;
/// The managed image, built on first use.
pub const DEFAULT_IMAGE: &str = "default";
pub const DEFAULT_KERNEL: &str = "debian-cloud";
/// Idle TAP devices kept ready for bridged VMs.
pub const DEFAULT_TAP_POOL: usize = 4;
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_ACCEL: &str = "auto";
/// A running VM's console.log is rotated into console.log.1 past this.
pub const DEFAULT_CONSOLE_LOG_MAX: u64 = 8 << 20;
/// The smallest `console_log_max` accepted.
pub const MIN_CONSOLE_LOG_MAX: u64 = 64 << 10;
/// Free space a copy from a guest (`vm cp`) leaves on the host.
pub const DEFAULT_CP_RESERVE: u64 = 1 << 30;

/// The environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "BANGER_CONFIG";

/// The configuration file to read: `BANGER_CONFIG`, else `config.toml` in
/// `config_dir`.
pub fn config_path(config_dir: &Path) -> PathBuf {
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => config_dir.join("config.toml"),
    }
}

/// Which VMM runs VMs. Only QEMU exists so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    Qemu,
}

impl VmmChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
        }
    }
}

/// A size: a number of MiB, or a string like `512M`, `2G`, `1T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Mib(u64),
            Text(String),
        }
        let bytes = match Raw::deserialize(d)? {
            Raw::Mib(n) => n.checked_mul(1 << 20),
            Raw::Text(t) => parse_size(&t),
        };
        bytes.map(Size).ok_or_else(|| {
            serde::de::Error::custom("a size is a number of MiB or a string like \"512M\", \"2G\"")
        })
    }
}

/// Parses `1024`, `512M`, `2G`, `1T`, `512MiB` (binary units) into bytes;
/// a plain number means MiB. `None` for anything else or an overflow.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "M"),
    };
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "K" => 1 << 10,
        "M" | "" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// One key of the file with the line it is on.
#[derive(Debug, Clone, PartialEq)]
pub struct FromFile<T> {
    pub value: T,
    pub line: usize,
}

/// `config.toml` as written: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub vcpus: Option<FromFile<u32>>,
    pub memory: Option<FromFile<Size>>,
    pub disk_size: Option<FromFile<Size>>,
    pub image: Option<FromFile<String>>,
    pub kernel: Option<FromFile<String>>,
    pub vmm: Option<FromFile<VmmChoice>>,
    pub network: Option<FromFile<NetworkMode>>,
    pub egress: Option<FromFile<Egress>>,
    pub tap_pool: Option<FromFile<usize>>,
    pub log_level: Option<FromFile<String>>,
    pub accel: Option<FromFile<Accel>>,
    pub console_log_max: Option<FromFile<Size>>,
    pub cp_reserve: Option<FromFile<Size>>,
}

/// How the daemon picks the accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// The file as TOML sees it; spans give each key's line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    vcpus: Option<toml::Spanned<u32>>,
    memory: Option<toml::Spanned<Size>>,
    disk_size: Option<toml::Spanned<Size>>,
    image: Option<toml::Spanned<String>>,
    kernel: Option<toml::Spanned<String>>,
    vmm: Option<toml::Spanned<VmmChoice>>,
    network: Option<toml::Spanned<NetworkMode>>,
    egress: Option<toml::Spanned<String>>,
    tap_pool: Option<toml::Spanned<usize>>,
    log_level: Option<toml::Spanned<String>>,
    accel: Option<toml::Spanned<Accel>>,
    console_log_max: Option<toml::Spanned<Size>>,
    cp_reserve: Option<toml::Spanned<Size>>,
}

/// Reading or understanding the configuration file failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `line` is 1-based; 0 when TOML could not tell.
    #[error("{path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl ConfigFile {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                path: path.to_owned(),
                ..Self::default()
            }),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e.span().map_or(0, |s| line_of(s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        fn keep<T>(
            v: Option<toml::Spanned<T>>,
            line_of: &dyn Fn(usize) -> usize,
        ) -> Option<FromFile<T>> {
            v.map(|s| FromFile {
                line: line_of(s.span().start),
                value: s.into_inner(),
            })
        }
        let egress = match raw.egress {
            None => None,
            Some(e) => {
                let line = line_of(e.span().start);
                let value = e
                    .into_inner()
                    .parse::<Egress>()
                    .map_err(|err| ConfigError::Parse {
                        path: path.to_owned(),
                        line,
                        message: err.to_string(),
                    })?;
                Some(FromFile { value, line })
            }
        };
        let file = Self {
            path: path.to_owned(),
            egress,
            vcpus: keep(raw.vcpus, &line_of),
            memory: keep(raw.memory, &line_of),
            disk_size: keep(raw.disk_size, &line_of),
            image: keep(raw.image, &line_of),
            kernel: keep(raw.kernel, &line_of),
            vmm: keep(raw.vmm, &line_of),
            network: keep(raw.network, &line_of),
            tap_pool: keep(raw.tap_pool, &line_of),
            log_level: keep(raw.log_level, &line_of),
            accel: keep(raw.accel, &line_of),
            console_log_max: keep(raw.console_log_max, &line_of),
            cp_reserve: keep(raw.cp_reserve, &line_of),
        };
        file.check()?;
        Ok(file)
    }

    /// Values TOML accepts but banger does not.
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |line: usize, message: String| ConfigError::Parse {
            path: self.path.clone(),
            line,
            message,
        };
        if let Some(v) = &self.vcpus {
            if v.value == 0 {
                return Err(bad(v.line, "vcpus must be at least 1".into()));
            }
        }
        if let Some(m) = &self.memory {
            if m.value.0 < 64 << 20 || m.value.0 >> 20 > u64::from(u32::MAX) {
                return Err(bad(m.line, "memory must be between 64M and 4096T".into()));
            }
        }
        if let Some(d) = &self.disk_size {
            if d.value.0 == 0 {
                return Err(bad(d.line, "disk_size must be above 0".into()));
            }
        }
        for (key, v) in [("image", &self.image), ("kernel", &self.kernel)] {
            if let Some(v) = v {
                if v.value.trim().is_empty() {
                    return Err(bad(v.line, format!("{key} must not be empty")));
                }
            }
        }
        if let Some(c) = &self.console_log_max {
            if c.value.0 < MIN_CONSOLE_LOG_MAX {
                return Err(bad(c.line, "console_log_max must be at least 64K".into()));
            }
        }
        if let Some(l) = &self.log_level {
            if l.value.trim().is_empty() {
                return Err(bad(l.line, "log_level must not be empty".into()));
            }
        }
        Ok(())
    }

    /// The VM defaults: the file's values over the built-in ones.
    pub fn vm_defaults(&self) -> VmDefaults {
        let b = VmDefaults::built_in();
        VmDefaults {
            vcpus: self.vcpus.as_ref().map_or(b.vcpus, |v| v.value),
            // `check` bounds memory to what fits in u32 MiB.
            memory_mib: self.memory.as_ref().map_or(b.memory_mib, |m| {
                u32::try_from(m.value.0 >> 20).unwrap_or(u32::MAX)
            }),
            disk_size_bytes: self
                .disk_size
                .as_ref()
                .map_or(b.disk_size_bytes, |d| d.value.0),
            image: self.image.as_ref().map_or(b.image, |v| v.value.clone()),
            kernel: self.kernel.as_ref().map_or(b.kernel, |v| v.value.clone()),
            network: self.network.as_ref().map(|n| n.value),
            egress: self.egress.as_ref().map_or(b.egress, |e| e.value.clone()),
            vmm: self.vmm.as_ref().map_or(b.vmm, |v| v.value),
        }
    }
}

/// `bytes` as the largest binary unit that divides it: `8M`, `1G`, `64K`
/// (what [`parse_size`] reads back).
pub fn size_text(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => format!("{}K", b >> 10),
    }
}

/// Parses a size given to the daemon by flag or environment (like the
/// file's sizes, but `0` is zero, not a missing unit of MiB).
pub fn parse_daemon_size(text: &str) -> Option<u64> {
    if text.trim() == "0" {
        return Some(0);
    }
    parse_size(text)
}

/// What `vm create` uses when the request does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDefaults {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_size_bytes: u64,
    pub image: String,
    pub kernel: String,
    /// `None`: bridged when banger-helper answers, else user mode.
    pub network: Option<NetworkMode>,
    /// What a new VM may reach (`internet` unless set).
    pub egress: Egress,
    pub vmm: VmmChoice,
}

impl VmDefaults {
    pub fn built_in() -> Self {
        Self {
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            disk_size_bytes: DEFAULT_DISK_SIZE_BYTES,
            image: DEFAULT_IMAGE.into(),
            kernel: DEFAULT_KERNEL.into(),
            network: None,
            egress: Egress::Internet,
            vmm: VmmChoice::Qemu,
        }
    }
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    /// The configuration file, at this line.
    File {
        line: usize,
    },
    /// This environment variable.
    Env(&'static str),
    /// This command-line flag.
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File { line } => write!(f, "file, line {line}"),
            Self::Env(var) => write!(f, "environment {var}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One effective setting, for `banger config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub value: String,
    pub source: Source,
    /// What overrides the file for this key (a flag, an environment
    /// variable), and when it takes effect.
    pub overridden_by: &'static str,
}

/// Every setting with its effective value and source. `env` looks up an
/// environment variable (the process's, or a test's).
pub fn effective(file: &ConfigFile, env: &dyn Fn(&str) -> Option<String>) -> Vec<Setting> {
    let mib = |bytes: u64| {
        if bytes % (1 << 30) == 0 {
            format!("{}G", bytes >> 30)
        } else {
            format!("{}M", bytes >> 20)
        }
    };
    let b = VmDefaults::built_in();
    let from_file =
        |line: Option<usize>| line.map_or(Source::Default, |line| Source::File { line });
    let mut out = vec![
        Setting {
            key: "vcpus",
            value: file.vcpus.as_ref().map_or(b.vcpus, |v| v.value).to_string(),
            source: from_file(file.vcpus.as_ref().map(|v| v.line)),
            overridden_by: "vm create/run --vcpus",
        },
        Setting {
            key: "memory",
            value: mib(file
                .memory
                .as_ref()
                .map_or(u64::from(b.memory_mib) << 20, |v| v.value.0)),
            source: from_file(file.memory.as_ref().map(|v| v.line)),
            overridden_by: "vm create/run --memory",
        },
        Setting {
            key: "disk_size",
            value: mib(file
                .disk_size
                .as_ref()
                .map_or(b.disk_size_bytes, |v| v.value.0)),
            source: from_file(file.disk_size.as_ref().map(|v| v.line)),
            overridden_by: "vm create/run --disk-size",
        },
        Setting {
            key: "image",
            value: file.image.as_ref().map_or(b.image, |v| v.value.clone()),
            source: from_file(file.image.as_ref().map(|v| v.line)),
            overridden_by: "vm create/run --image",
        },
        Setting {
            key: "kernel",
            value: file.kernel.as_ref().map_or(b.kernel, |v| v.value.clone()),
            source: from_file(file.kernel.as_ref().map(|v| v.line)),
            overridden_by: "vm create/run --kernel",
        },
        Setting {
            key: "vmm",
            value: file.vmm.as_ref().map_or(b.vmm, |v| v.value).as_str().into(),
            source: from_file(file.vmm.as_ref().map(|v| v.line)),
            overridden_by: "-",
        },
        Setting {
            key: "network",
            value: file.network.as_ref().map_or_else(
                || "auto (bridged when banger-helper answers, else user)".to_owned(),
                |v| v.value.to_string(),
            ),
            source: from_file(file.network.as_ref().map(|v| v.line)),
            overridden_by: "vm create/run --network",
        },
        Setting {
            key: "egress",
            value: file
                .egress
                .as_ref()
                .map_or(b.egress, |v| v.value.clone())
                .to_string(),
            source: from_file(file.egress.as_ref().map(|v| v.line)),
            overridden_by: "vm create/run/edit --egress",
        },
    ];
    // The daemon's settings: a flag or environment variable of bangerd
    // wins over the file; the CLI passes its environment to the daemon it
    // starts, so the environment here is the one that daemon sees.
    let daemon_setting = |key: &'static str,
                          var: &'static str,
                          file_value: Option<(String, usize)>,
                          default: String,
                          overridden_by: &'static str| {
        match (env(var).filter(|v| !v.is_empty()), file_value) {
            (Some(v), _) => Setting {
                key,
                value: v,
                source: Source::Env(var),
                overridden_by,
            },
            (None, Some((v, line))) => Setting {
                key,
                value: v,
                source: Source::File { line },
                overridden_by,
            },
            (None, None) => Setting {
                key,
                value: default,
                source: Source::Default,
                overridden_by,
            },
        }
    };
    out.push(daemon_setting(
        "tap_pool",
        "BANGER_TAP_POOL",
        file.tap_pool
            .as_ref()
            .map(|v| (v.value.to_string(), v.line)),
        DEFAULT_TAP_POOL.to_string(),
        "bangerd --tap-pool, BANGER_TAP_POOL (at daemon start)",
    ));
    out.push(daemon_setting(
        "log_level",
        "BANGER_LOG",
        file.log_level.as_ref().map(|v| (v.value.clone(), v.line)),
        DEFAULT_LOG_LEVEL.to_owned(),
        "bangerd --log-level, BANGER_LOG (at daemon start)",
    ));
    out.push(daemon_setting(
        "console_log_max",
        "BANGER_CONSOLE_LOG_MAX",
        file.console_log_max
            .as_ref()
            .map(|v| (size_text(v.value.0), v.line)),
        size_text(DEFAULT_CONSOLE_LOG_MAX),
        "bangerd --console-log-max, BANGER_CONSOLE_LOG_MAX (at daemon start)",
    ));
    out.push(daemon_setting(
        "cp_reserve",
        "BANGER_CP_RESERVE",
        file.cp_reserve
            .as_ref()
            .map(|v| (size_text(v.value.0), v.line)),
        size_text(DEFAULT_CP_RESERVE),
        "bangerd --cp-reserve, BANGER_CP_RESERVE (at daemon start)",
    ));
    out.push(daemon_setting(
        "accel",
        "BANGER_ACCEL",
        file.accel
            .as_ref()
            .map(|v| (v.value.as_str().to_owned(), v.line)),
        DEFAULT_ACCEL.to_owned(),
        "bangerd --accel, BANGER_ACCEL (at daemon start)",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(Path::new("/home/u/.config/banger/config.toml"), text)
    }

    #[test]
    fn a_missing_file_is_the_built_in_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let f = ConfigFile::load(&tmp.path().join("config.toml")).unwrap();
        assert_eq!(f.vm_defaults(), VmDefaults::built_in());
        assert!(
            effective(&f, &|_| None)
                .iter()
                .all(|s| s.source == Source::Default)
        );
    }

    #[test]
    fn values_from_the_file_with_their_lines() {
        let f = parse("# mine\nmemory = \"2G\"\nvcpus = 2\ndisk_size = 20480\nnetwork = \"user\"\ntap_pool = 0\n")
            .unwrap();
        let d = f.vm_defaults();
        assert_eq!(d.memory_mib, 2048);
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.disk_size_bytes, 20 << 30);
        assert_eq!(d.network, Some(NetworkMode::User));
        assert_eq!(d.egress, Egress::Internet);
        let allow = parse("egress = \"allow=example.com\"\n").unwrap();
        assert_eq!(allow.vm_defaults().egress.to_string(), "allow=example.com");
        assert_eq!(d.image, "default");
        let shown = effective(&f, &|_| None);
        let memory = shown.iter().find(|s| s.key == "memory").unwrap();
        assert_eq!(memory.value, "2G");
        assert_eq!(memory.source, Source::File { line: 2 });
        assert_eq!(memory.source.to_string(), "file, line 2");
        let tap = shown.iter().find(|s| s.key == "tap_pool").unwrap();
        assert_eq!(
            (tap.value.as_str(), &tap.source),
            ("0", &Source::File { line: 6 })
        );
    }

    #[test]
    fn the_environment_wins_over_the_file_for_daemon_settings() {
        let f = parse("log_level = \"debug\"\n").unwrap();
        let env = |k: &str| (k == "BANGER_LOG").then(|| "trace".to_owned());
        let shown = effective(&f, &env);
        let log = shown.iter().find(|s| s.key == "log_level").unwrap();
        assert_eq!(log.value, "trace");
        assert_eq!(log.source, Source::Env("BANGER_LOG"));
    }

    #[test]
    fn a_bad_file_is_an_error_naming_its_line() {
        let cases = [
            ("vcpus = 1\nmemory = \"lots\"\n", 2, "size"),
            (
                "vcpus = 1\n\nmemroy = \"2G\"\n",
                3,
                "unknown field `memroy`",
            ),
            ("vcpus = 0\n", 1, "at least 1"),
            ("network = \"wifi\"\n", 1, "wifi"),
            ("vcpus = 1\negress = \"allow=\"\n", 2, "allow list is empty"),
            ("vmm = \"firecracker\"\n", 1, "firecracker"),
            ("vcpus = \n", 1, ""),
            ("image = \"\"\n", 1, "image must not be empty"),
            ("console_log_max = \"4K\"\n", 1, "at least 64K"),
        ];
        for (text, line, words) in cases {
            let err = parse(text).unwrap_err();
            let ConfigError::Parse {
                line: got, message, ..
            } = &err
            else {
                panic!("{err:?}");
            };
            assert_eq!(*got, line, "{text:?}: {err}");
            assert!(message.contains(words), "{text:?}: {message}");
            assert!(
                err.to_string().starts_with(&format!(
                    "/home/u/.config/banger/config.toml, line {line}: "
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn host_protection_settings() {
        let f = parse("console_log_max = \"1M\"\ncp_reserve = 0\n").unwrap();
        assert_eq!(f.console_log_max.as_ref().unwrap().value, Size(1 << 20));
        assert_eq!(f.cp_reserve.as_ref().unwrap().value, Size(0));
        let shown = effective(&f, &|_| None);
        let get = |k: &str| shown.iter().find(|s| s.key == k).unwrap().clone();
        assert_eq!(get("console_log_max").value, "1M");
        assert_eq!(get("cp_reserve").value, "0");
        let shown = effective(&ConfigFile::default(), &|_| None);
        let get = |k: &str| shown.iter().find(|s| s.key == k).unwrap().clone();
        assert_eq!(get("console_log_max").value, "8M");
        assert_eq!(get("cp_reserve").value, "1G");
        assert_eq!(parse_daemon_size("0"), Some(0));
        assert_eq!(parse_daemon_size("256K"), Some(256 << 10));
        assert_eq!(size_text(64 << 10), "64K");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1t"), Some(1 << 40));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999999999T"), None);
    }
}
