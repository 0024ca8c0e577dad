//! Loading and checking the helper's config file ([`HelperConfig`], written
//! by `banger system install`) into [`Settings`], the validated form every
//! call is checked against.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use banger_proto::helper::{HELPER_PROTOCOL_VERSION, HelperConfig, HelperFeature, HelperInfo};

use crate::Error;
use crate::validate;

/// Shortest and longest prefix accepted for banger's subnet: a /16 holds
/// plenty of VMs, a /30 is the smallest with a gateway and one guest.
pub const SUBNET_PREFIX_RANGE: std::ops::RangeInclusive<u8> = 16..=30;

/// The file under [`Settings::runtime_dir`] recording that the helper
/// turned `net.ipv4.ip_forward` on.
pub const IP_FORWARD_MARKER: &str = "ip_forward.was";

/// An IPv4 network with its host bits zero, `10.77.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Parses `A.B.C.D/P`: IPv4 only, prefix within
    /// [`SUBNET_PREFIX_RANGE`], host bits zero, nothing else in the string.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| "not an ipv4 subnet (A.B.C.D/P)".to_owned())?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| "not an ipv4 subnet (A.B.C.D/P)".to_owned())?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the prefix length must be a number".to_owned());
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| "the prefix length must be a number".to_owned())?;
        if !SUBNET_PREFIX_RANGE.contains(&prefix) {
            return Err(format!(
                "the prefix length must be {} to {}",
                SUBNET_PREFIX_RANGE.start(),
                SUBNET_PREFIX_RANGE.end()
            ));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(network) & !mask != 0 {
            return Err("host bits are set".to_owned());
        }
        Ok(Self { network, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first host address: the bridge's own address, the guests'
    /// gateway and DNS server.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// `10.77.0.1/24`, as given to `ip addr`.
    pub fn gateway_cidr(&self) -> String {
        format!("{}/{}", self.gateway(), self.prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A checked config: what the helper enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub allowed_uids: Vec<u32>,
    pub socket: PathBuf,
    pub bridge: String,
    pub subnet: Subnet,
    pub data_dirs: Vec<PathBuf>,
    pub runtime_dirs: Vec<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// The groups of calls turned on (sorted, each once); every other
    /// gated call is refused.
    pub features: Vec<HelperFeature>,
}

impl Settings {
    /// Checks a parsed config: at least one allowed uid, a bridge name that
    /// is a valid interface name outside the TAP prefix, an IPv4 subnet
    /// (see [`Subnet::parse`]), absolute normalized paths.
    pub fn from_config(config: HelperConfig) -> Result<Self, String> {
        if config.allowed_uids.is_empty() {
            return Err("allowed_uids must name at least one uid".to_owned());
        }
        validate::bridge_name_syntax(&config.bridge).map_err(|e| format!("bridge: {e}"))?;
        let subnet = Subnet::parse(&config.subnet).map_err(|e| format!("subnet: {e}"))?;
        check_abs("socket", &config.socket)?;
        for dir in &config.data_dirs {
            check_abs("data_dirs", dir)?;
        }
        for dir in &config.runtime_dirs {
            check_abs("runtime_dirs", dir)?;
        }
        if let Some(log) = &config.log_file {
            check_abs("log_file", log)?;
        }
        let mut features = config.features;
        features.sort_unstable();
        features.dedup();
        Ok(Self {
            features,
            allowed_uids: config.allowed_uids,
            socket: config.socket,
            bridge: config.bridge,
            subnet,
            data_dirs: config.data_dirs,
            runtime_dirs: config.runtime_dirs,
            log_file: config.log_file,
        })
    }

    pub fn allows_uid(&self, uid: u32) -> bool {
        self.allowed_uids.contains(&uid)
    }

    pub fn enables(&self, feature: HelperFeature) -> bool {
        self.features.contains(&feature)
    }

    /// Where the helper keeps what it must remember between a call and
    /// `teardown`: the socket's directory (`/run/banger-helper`), root's
    /// and cleared at reboot with everything recorded there.
    pub fn runtime_dir(&self) -> &Path {
        self.socket.parent().unwrap_or(Path::new("/"))
    }

    /// Present while IPv4 forwarding is on because the helper turned it
    /// on (see `nat_ensure` in docs/helper.md); `teardown` turns it back
    /// off and removes the file.
    pub fn ip_forward_marker(&self) -> PathBuf {
        self.runtime_dir().join(IP_FORWARD_MARKER)
    }

    /// What `ping` answers.
    pub fn info(&self) -> HelperInfo {
        HelperInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: HELPER_PROTOCOL_VERSION,
            pid: std::process::id(),
            bridge: self.bridge.clone(),
            subnet: self.subnet.to_string(),
            gateway: self.subnet.gateway().to_string(),
            // Only the dispatcher, which sees the host, can tell.
            device_mapper: None,
        }
    }
}

fn check_abs(field: &str, path: &Path) -> Result<(), String> {
    validate::normalized_absolute(path).map_err(|e| format!("{field}: {} {e}", path.display()))?;
    if path == Path::new("/") {
        return Err(format!("{field}: / is not allowed"));
    }
    Ok(())
}

/// Reads, parses and checks the config file at `path`.
pub fn load(path: &Path) -> Result<Settings, Error> {
    let err = |reason: String| Error::Config {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let config: HelperConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    Settings::from_config(config).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HelperConfig {
        let mut c = HelperConfig::for_uids(vec![1000]);
        c.data_dirs = vec![PathBuf::from("/home/u/.local/share/banger")];
        c.runtime_dirs = vec![PathBuf::from("/run/user/1000/banger")];
        c
    }

    #[test]
    fn defaults_are_valid_and_gateway_is_first_host() {
        let s = Settings::from_config(config()).unwrap();
        assert_eq!(s.bridge, "banger0");
        assert_eq!(s.subnet.to_string(), "10.77.0.0/24");
        assert_eq!(s.subnet.gateway(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(s.subnet.gateway_cidr(), "10.77.0.1/24");
        let info = s.info();
        assert_eq!(info.gateway, "10.77.0.1");
        assert_eq!(info.protocol, HELPER_PROTOCOL_VERSION);
    }

    #[test]
    fn subnets() {
        for ok in [
            "10.77.0.0/24",
            "192.168.0.0/16",
            "10.231.5.4/30",
            "172.16.3.0/24",
        ] {
            assert!(Subnet::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.77.0.0",
            "10.77.0.0/",
            "10.77.0.0/0",
            "0.0.0.0/0",
            "10.77.0.0/8",
            "10.77.0.0/31",
            "10.77.0.0/32",
            "10.77.0.1/24",
            "10.77.0.0/+24",
            "10.77.0.0/024",
            "10.77.0.0/24 ",
            " 10.77.0.0/24",
            "10.77.0/24",
            "010.77.0.0/24",
            "fd00::/64",
            "::ffff:10.77.0.0/120",
            "ten.seven.0.0/24",
            "10.77.0.0/24/24",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = config();
        c.allowed_uids.clear();
        assert!(
            Settings::from_config(c)
                .unwrap_err()
                .contains("allowed_uids")
        );

        for bridge in [
            "",
            "bgtap0",
            "eth0 x",
            "a/b",
            "waytoolongbridgename",
            "Banger0",
            "-x",
        ] {
            let mut c = config();
            c.bridge = bridge.to_owned();
            assert!(Settings::from_config(c).is_err(), "bridge {bridge:?}");
        }
        let mut c = config();
        c.subnet = "10.77.0.1/24".into();
        assert!(Settings::from_config(c).unwrap_err().contains("host bits"));

        for dir in ["relative/dir", "/a/../b", "/", "/a/./b", "/a/"] {
            let mut c = config();
            c.data_dirs = vec![PathBuf::from(dir)];
            assert!(Settings::from_config(c).is_err(), "data dir {dir:?}");
            let mut c = config();
            c.runtime_dirs = vec![PathBuf::from(dir)];
            assert!(Settings::from_config(c).is_err(), "runtime dir {dir:?}");
        }
        let mut c = config();
        c.socket = PathBuf::from("helper.sock");
        assert!(Settings::from_config(c).is_err());
        let mut c = config();
        c.log_file = Some(PathBuf::from("log"));
        assert!(Settings::from_config(c).is_err());
    }

    #[test]
    fn load_reports_missing_invalid_and_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let e = load(&missing).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
        assert!(e.to_string().contains("nope.json"), "{e}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        assert!(matches!(load(&bad), Err(Error::Config { .. })));

        let extra = dir.path().join("extra.json");
        std::fs::write(&extra, r#"{"allowed_uids":[1],"surprise":1}"#).unwrap();
        assert!(load(&extra).unwrap_err().to_string().contains("surprise"));

        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"allowed_uids":[1000],"bridge":"bgtest7","subnet":"10.231.7.0/24"}"#,
        )
        .unwrap();
        let s = load(&good).unwrap();
        assert!(s.features.is_empty());
        assert_eq!(
            s.ip_forward_marker(),
            Path::new("/run/banger-helper/ip_forward.was")
        );
        assert_eq!(s.bridge, "bgtest7");
        assert_eq!(s.subnet.gateway().to_string(), "10.231.7.1");
        assert!(s.allows_uid(1000) && !s.allows_uid(0));

        let featured = dir.path().join("featured.json");
        std::fs::write(
            &featured,
            r#"{"allowed_uids":[1000],"features":["signals","devices","signals"]}"#,
        )
        .unwrap();
        let s = load(&featured).unwrap();
        assert_eq!(s.features, [HelperFeature::Devices, HelperFeature::Signals]);
        assert!(s.enables(HelperFeature::Devices) && !s.enables(HelperFeature::SocketChown));

        let unknown = dir.path().join("unknown.json");
        std::fs::write(
            &unknown,
            r#"{"allowed_uids":[1000],"features":["everything"]}"#,
        )
        .unwrap();
        assert!(
            load(&unknown)
                .unwrap_err()
                .to_string()
                .contains("everything")
        );
    }
}
