//! The `banger.*` parameters of the kernel command line
//! (docs/guest-contract.md, "Kernel command line") that the init applies.

use std::net::{IpAddr, Ipv4Addr};

use crate::guest_ops::check_hostname;

/// What the init takes from `/proc/cmdline`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `banger.hostname=`.
    pub hostname: Option<String>,
    /// `banger.ip=ADDR/PREFIX` (and `banger.gw=`).
    pub net: Option<NetParams>,
    /// `banger.dns=`: comma-separated, at most [`MAX_DNS`].
    pub dns: Vec<IpAddr>,
}

/// The NIC's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetParams {
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// Default route's gateway (none: no default route).
    pub gateway: Option<Ipv4Addr>,
}

impl NetParams {
    /// The netmask of [`NetParams::prefix`].
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// Whether the gateway lies inside the address's prefix (if not, it
    /// needs a route of its own first: see `net.rs`).
    pub fn gateway_on_link(&self) -> bool {
        let mask = u32::from(self.netmask());
        self.gateway
            .is_none_or(|g| u32::from(g) & mask == u32::from(self.address) & mask)
    }
}

/// Most name servers `/etc/resolv.conf` lists (glibc reads three).
pub const MAX_DNS: usize = 3;

/// Parses a kernel command line. Bad values are skipped; each is named
/// in the returned warnings (logged by the init, which boots anyway).
pub fn parse(cmdline: &str) -> (BootParams, Vec<String>) {
    let mut p = BootParams::default();
    let mut warnings = Vec::new();
    let mut ip: Option<(Ipv4Addr, u8)> = None;
    let mut gw: Option<Ipv4Addr> = None;
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "banger.hostname" => match check_hostname(value) {
                Ok(()) => p.hostname = Some(value.to_owned()),
                Err(e) => warnings.push(e),
            },
            "banger.ip" => match parse_cidr(value) {
                Some(a) => ip = Some(a),
                None => warnings.push(format!(
                    "bad banger.ip={value:?}: want an IPv4 ADDRESS/PREFIX (1-32)"
                )),
            },
            "banger.gw" => match value.parse::<Ipv4Addr>() {
                Ok(g) if !g.is_unspecified() && !g.is_broadcast() && !g.is_multicast() => {
                    gw = Some(g);
                }
                _ => warnings.push(format!(
                    "bad banger.gw={value:?}: want a unicast IPv4 address"
                )),
            },
            "banger.dns" => {
                p.dns.clear();
                for s in value.split(',').filter(|s| !s.is_empty()) {
                    match s.parse::<IpAddr>() {
                        Ok(a) if p.dns.len() < MAX_DNS => p.dns.push(a),
                        Ok(_) => warnings.push(format!(
                            "banger.dns: more than {MAX_DNS} servers; {s} left out"
                        )),
                        Err(_) => warnings.push(format!("bad name server {s:?} in banger.dns")),
                    }
                }
            }
            _ => {}
        }
    }
    match (ip, gw) {
        (Some((address, prefix)), gateway) => {
            let gateway = gateway.filter(|g| {
                let same = *g == address;
                if same {
                    warnings.push(format!(
                        "banger.gw={g} is the guest's own address; no default route"
                    ));
                }
                !same
            });
            p.net = Some(NetParams {
                address,
                prefix,
                gateway,
            });
        }
        (None, Some(g)) => warnings.push(format!("banger.gw={g} without banger.ip: ignored")),
        (None, None) => {}
    }
    (p, warnings)
}

/// `10.0.2.15/24` → (address, 24); not loopback, multicast, broadcast or
/// unspecified; prefix 1..=32.
fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    let usable = !a.is_loopback() && !a.is_multicast() && !a.is_broadcast() && !a.is_unspecified();
    (usable && (1..=32).contains(&p)).then_some((a, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_line() {
        let (p, w) = parse(
            "console=ttyS0 root=/dev/vda rw panic=-1 quiet lpj=10000000 \
             banger.hostname=box-1 banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 \
             banger.dns=10.0.2.3,1.1.1.1 init=/.banger/init tsc=reliable\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(p.hostname.as_deref(), Some("box-1"));
        let net = p.net.unwrap();
        assert_eq!(net.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(net.prefix, 24);
        assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(net.gateway_on_link());
        assert_eq!(
            p.dns,
            vec![
                "10.0.2.3".parse::<IpAddr>().unwrap(),
                "1.1.1.1".parse::<IpAddr>().unwrap()
            ]
        );
    }

    #[test]
    fn nothing_given() {
        let (p, w) = parse("console=ttyS0 root=/dev/vda");
        assert_eq!(p, BootParams::default());
        assert!(w.is_empty());
    }

    #[test]
    fn bad_values_are_skipped_and_named() {
        let (p, w) = parse(
            "banger.hostname=-bad banger.ip=10.0.2.15 banger.gw=nope banger.dns=x,1.2.3.4,::1,8.8.8.8,9.9.9.9",
        );
        assert_eq!(p.hostname, None);
        assert_eq!(p.net, None);
        assert_eq!(p.dns.len(), 3);
        assert_eq!(w.len(), 5, "{w:?}");
        for bad in [
            "banger.ip=127.0.0.1/8",
            "banger.ip=10.0.0.1/0",
            "banger.ip=10.0.0.1/33",
            "banger.ip=224.0.0.1/4",
        ] {
            assert_eq!(parse(bad).0.net, None, "{bad}");
        }
        // A gateway without an address, and a gateway that is the address.
        assert_eq!(parse("banger.gw=10.0.0.1").1.len(), 1);
        let (p, w) = parse("banger.ip=10.0.0.5/24 banger.gw=10.0.0.5");
        assert_eq!(p.net.unwrap().gateway, None);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn masks_and_off_link_gateways() {
        let n = |cidr: &str, gw: &str| {
            parse(&format!("banger.ip={cidr} banger.gw={gw}"))
                .0
                .net
                .unwrap()
        };
        assert_eq!(
            n("10.1.2.3/32", "10.0.0.1").netmask(),
            Ipv4Addr::new(255, 255, 255, 255)
        );
        assert_eq!(
            n("10.1.2.3/1", "10.0.0.1").netmask(),
            Ipv4Addr::new(128, 0, 0, 0)
        );
        assert!(!n("172.16.0.10/32", "172.16.0.1").gateway_on_link());
        assert!(n("172.16.0.10/16", "172.16.0.1").gateway_on_link());
        assert!(!n("192.168.1.10/24", "192.168.2.1").gateway_on_link());
    }
}
