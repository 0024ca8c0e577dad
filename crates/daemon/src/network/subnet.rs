//! IPv4 subnets: parsing `A.B.C.D/N`, the gateway, and the host addresses
//! the allocator hands out.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network with its host bits zero, e.g. `10.77.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subnet {text:?} {reason}")]
pub struct SubnetError {
    text: String,
    reason: &'static str,
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| SubnetError {
            text: text.to_owned(),
            reason,
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(|| err("needs /PREFIX"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| err("is not an IPv4 network"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("has a bad prefix length"))?;
        if !(16..=30).contains(&prefix) {
            return Err(err("prefix must be 16 to 30"));
        }
        let subnet = Self { network, prefix };
        if u32::from(network) & !subnet.mask() != 0 {
            return Err(err("has host bits set"));
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The first host address: the bridge's own, the guests' gateway and
    /// DNS server.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    /// Addresses for guests, in order: every host address but the gateway
    /// (the network and broadcast addresses are never hosts).
    pub fn guest_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | !self.mask();
        (first..broadcast).map(Ipv4Addr::from)
    }
}

/// A stable, locally administered MAC for a guest address: `52:54` and the
/// four octets, so two guests on one subnet never share one.
pub fn mac_for(addr: Ipv4Addr) -> String {
    let [a, b, c, d] = addr.octets();
    format!("52:54:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_computes_hosts() {
        let s: Subnet = "10.77.0.0/24".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 77, 0, 1));
        let hosts: Vec<_> = s.guest_addresses().collect();
        assert_eq!(hosts.len(), 253);
        assert_eq!(hosts[0], Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(hosts[252], Ipv4Addr::new(10, 77, 0, 254));
        assert!(s.contains(Ipv4Addr::new(10, 77, 0, 200)));
        assert!(!s.contains(Ipv4Addr::new(10, 77, 1, 2)));
        assert_eq!(s.to_string(), "10.77.0.0/24");
        let small: Subnet = "192.168.5.8/30".parse().unwrap();
        assert_eq!(small.guest_addresses().count(), 1);
    }

    #[test]
    fn bad_subnets_are_refused() {
        for bad in [
            "",
            "10.77.0.0",
            "10.77.0.1/24",
            "10.77.0.0/8",
            "10.77.0.0/31",
            "::1/64",
            "x/24",
            "10.77.0.0/24/1",
            "10.77.0.0/-1",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 77, 0, 2)), "52:54:0a:4d:00:02");
    }
}
