//! What a VM may reach beyond banger's own services (docs/security.md).
//!
//! On the wire an [`Egress`] is an object tagged by `mode`
//! (`{"mode":"internet"}`, `{"mode":"allow","allow":["example.com","10.1.0.0/16","host.example:443"]}`);
//! on the command line, in config.toml and in the store it is one string:
//! `internet`, `none`, `open` or `allow=LIST` with LIST comma-separated.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// What a VM may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Egress {
    /// Public addresses only: no host address, loopback, private range
    /// (10/8, 172.16/12, 192.168/16, 100.64/10) or link-local (169.254/16,
    /// the metadata address) is reachable.
    #[default]
    Internet,
    /// Nothing beyond banger's own services (its DNS server).
    None,
    /// Only the listed domains, networks and `host:port`s.
    Allow { allow: Vec<EgressTarget> },
    /// Everything the host reaches, host services included: chosen on purpose.
    Open,
}

/// One entry of an `allow=` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EgressTarget {
    /// A name resolved through banger's DNS server; `*.example.com` allows
    /// every name under `example.com` (not the name itself).
    Domain(String),
    /// An IPv4 network (`10.1.0.0/16`) or address (`/32` implied).
    Net { addr: Ipv4Addr, prefix: u8 },
    /// One TCP or UDP port of a name or an address (`example.com:443`,
    /// `203.0.113.7:22`).
    HostPort { host: EgressHost, port: u16 },
}

/// The host part of a `host:port` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EgressHost {
    Domain(String),
    Addr(Ipv4Addr),
}

impl fmt::Display for EgressHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(d) => f.write_str(d),
            Self::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// An egress mode or target that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEgress {
    pub input: String,
    pub reason: &'static str,
}

impl fmt::Display for BadEgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid egress {:?}: {}; use internet, none, open or allow=LIST \
             (LIST: domains, IPv4 networks and host:port, comma-separated)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for BadEgress {}

/// How many entries one `allow=` list may have (each becomes firewall
/// state; a list this long is a mistake).
pub const MAX_ALLOW: usize = 256;

fn bad(input: &str, reason: &'static str) -> BadEgress {
    BadEgress {
        input: input.chars().take(80).collect(),
        reason,
    }
}

impl Egress {
    /// The mode's name, as the CLI and `vm show` print it.
    pub fn mode_name(&self) -> &'static str {
        match self {
            Self::Internet => "internet",
            Self::None => "none",
            Self::Allow { .. } => "allow",
            Self::Open => "open",
        }
    }

    /// The domains of an `allow=` list (plain and `*.` ones, and the host
    /// parts of `host:port` entries that are names): what banger's DNS
    /// server may answer for this VM.
    pub fn allowed_domains(&self) -> Vec<&str> {
        let Self::Allow { allow } = self else {
            return Vec::new();
        };
        allow
            .iter()
            .filter_map(|t| match t {
                EgressTarget::Domain(d) => Some(d.as_str()),
                EgressTarget::HostPort {
                    host: EgressHost::Domain(d),
                    ..
                } => Some(d.as_str()),
                _ => None,
            })
            .collect()
    }
}

impl FromStr for Egress {
    type Err = BadEgress;
    fn from_str(s: &str) -> Result<Self, BadEgress> {
        match s {
            "internet" => return Ok(Self::Internet),
            "none" => return Ok(Self::None),
            "open" => return Ok(Self::Open),
            _ => {}
        }
        let Some(list) = s.strip_prefix("allow=") else {
            return Err(bad(s, "unknown mode"));
        };
        let allow = list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(EgressTarget::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if allow.is_empty() {
            return Err(bad(
                s,
                "the allow list is empty (use none to allow nothing)",
            ));
        }
        if allow.len() > MAX_ALLOW {
            return Err(bad(s, "more than 256 entries"));
        }
        Ok(Self::Allow { allow })
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow { allow } => {
                f.write_str("allow=")?;
                for (i, t) in allow.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{t}")?;
                }
                Ok(())
            }
            other => f.write_str(other.mode_name()),
        }
    }
}

/// A DNS name as `allow=` takes it: letters, digits, `-` and `.`, labels
/// of 1–63 characters, 253 at most, at least two labels, lower-cased; an
/// optional leading `*.`.
fn domain(input: &str, s: &str) -> Result<String, BadEgress> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let body = name.strip_prefix("*.").unwrap_or(&name);
    let labels: Vec<&str> = body.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad(input, "not a domain name"));
    }
    if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad(input, "not an IPv4 address or a domain name"));
    }
    Ok(name)
}

impl FromStr for EgressTarget {
    type Err = BadEgress;
    fn from_str(s: &str) -> Result<Self, BadEgress> {
        if s.contains(':') && s.matches(':').count() > 1 {
            return Err(bad(s, "IPv6 is not supported"));
        }
        if let Some((addr, prefix)) = s.split_once('/') {
            let addr: Ipv4Addr = addr.parse().map_err(|_| bad(s, "not an IPv4 network"))?;
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| bad(s, "the prefix length must be 0-32"))?;
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            if u32::from(addr) & !mask != 0 {
                return Err(bad(s, "host bits are set after the prefix length"));
            }
            return Ok(Self::Net { addr, prefix });
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(s, "the port must be 1-65535"))?;
            let host = match host.parse::<Ipv4Addr>() {
                Ok(a) => EgressHost::Addr(a),
                Err(_) => EgressHost::Domain(domain(s, host)?),
            };
            return Ok(Self::HostPort { host, port });
        }
        if let Ok(addr) = s.parse::<Ipv4Addr>() {
            return Ok(Self::Net { addr, prefix: 32 });
        }
        Ok(Self::Domain(domain(s, s)?))
    }
}

impl fmt::Display for EgressTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(d) => f.write_str(d),
            Self::Net { addr, prefix: 32 } => write!(f, "{addr}"),
            Self::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
            Self::HostPort { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl TryFrom<String> for EgressTarget {
    type Error = BadEgress;
    fn try_from(value: String) -> Result<Self, BadEgress> {
        value.parse()
    }
}

impl From<EgressTarget> for String {
    fn from(value: EgressTarget) -> Self {
        value.to_string()
    }
}

impl JsonSchema for EgressTarget {
    fn schema_name() -> Cow<'static, str> {
        "EgressTarget".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A domain (example.com, *.example.com), an IPv4 network or address (10.1.0.0/16, 203.0.113.7) or HOST:PORT.",
            "type": "string",
            "minLength": 1,
            "maxLength": 260,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_as_text() {
        for s in [
            "internet",
            "none",
            "open",
            "allow=example.com",
            "allow=*.example.com,10.1.0.0/16,203.0.113.7,api.example.com:443,198.51.100.1:22",
        ] {
            let e: Egress = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
    }

    #[test]
    fn wire_form_is_tagged_by_mode() {
        let e: Egress = "allow=example.com,10.0.0.0/8".parse().unwrap();
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"mode": "allow", "allow": ["example.com", "10.0.0.0/8"]})
        );
        assert_eq!(serde_json::from_value::<Egress>(j).unwrap(), e);
        assert_eq!(
            serde_json::to_value(Egress::Internet).unwrap(),
            serde_json::json!({"mode": "internet"})
        );
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        for (s, why) in [
            ("wifi", "unknown mode"),
            ("allow=", "empty"),
            ("allow=10.0.0.1/8", "host bits"),
            ("allow=10.0.0.0/33", "prefix"),
            ("allow=example.com:0", "port"),
            ("allow=exa_mple.com", "domain"),
            ("allow=localhost", "domain"),
            ("allow=::1", "IPv6"),
            ("allow=1.2.3", "IPv4"),
        ] {
            let e = s.parse::<Egress>().unwrap_err();
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
        let long = format!("allow={}", vec!["a.example"; 300].join(","));
        assert!(long.parse::<Egress>().is_err());
        assert!(
            serde_json::from_value::<Egress>(serde_json::json!({"mode": "allow", "allow": ["no"]}))
                .is_err()
        );
    }

    #[test]
    fn allowed_domains_include_host_port_names() {
        let e: Egress = "allow=a.example,1.2.3.4,b.example:443,5.6.7.8:22,*.c.example"
            .parse()
            .unwrap();
        assert_eq!(
            e.allowed_domains(),
            ["a.example", "b.example", "*.c.example"]
        );
    }
}
