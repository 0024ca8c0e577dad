//! Per-VM egress rules in banger's own nftables tables (docs/networking.md,
//! "Egress"): the scripts [`HelperCall::EgressApply`],
//! [`HelperCall::EgressResolved`] and [`HelperCall::EgressClear`] apply,
//! and the checks on their arguments.
//!
//! The helper keeps no state: everything lives in nftables, named after
//! the VM's address (`vm_10_77_0_3`, its chain and sets) and its TAP
//! (`tap_bgtap3`, the anti-spoofing chain). Each map element's verdict is
//! a function of its key, so "add, then delete" removes an element whether
//! or not it exists, inside one atomic `nft -f` transaction.
//!
//! [`HelperCall::EgressApply`]: banger_proto::helper::HelperCall::EgressApply
//! [`HelperCall::EgressResolved`]: banger_proto::helper::HelperCall::EgressResolved
//! [`HelperCall::EgressClear`]: banger_proto::helper::HelperCall::EgressClear

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use banger_proto::helper::{
    EGRESS_TTL_SECS, EgressEntry, EgressRuleMode, EgressRules, MAX_EGRESS_RESOLVED,
    MAX_EGRESS_RESOLVED_PER_CALL, MAX_EGRESS_RULES, NFT_TABLE,
};

use crate::Error;
use crate::config::Subnet;

/// Destinations an `internet` VM may not reach through the host: "this"
/// network, private ranges (RFC 1918), shared address space (CGNAT),
/// loopback, link-local (the cloud metadata address), multicast and
/// reserved. The host's own addresses are refused in the input chain.
pub const NON_PUBLIC: [&str; 9] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Whether `addr` is outside every [`NON_PUBLIC`] range.
pub fn is_public(addr: Ipv4Addr) -> bool {
    let a = u32::from(addr);
    NON_PUBLIC.iter().all(|net| {
        let (base, prefix) = net.split_once('/').unwrap_or((net, "32"));
        let base: Ipv4Addr = base.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let prefix: u32 = prefix.parse().unwrap_or(32);
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        a & mask != u32::from(base)
    })
}

/// The verdict for what a VM's policy refuses: the guest learns at once
/// (no hanging connects).
const REFUSE: &str = "reject with icmp type admin-prohibited";

/// The base of both tables, written by `nat_ensure`: base chains are
/// declared, flushed and refilled, while the per-VM chains, sets and map
/// elements that `egress_apply` adds are left alone (running VMs keep
/// their rules).
pub fn base_script(subnet: &Subnet, bridge: &str) -> String {
    let gw = subnet.gateway();
    format!(
        "table ip {NFT_TABLE} {{
	map vms {{ type ipv4_addr : verdict; }}
	set open {{ type ipv4_addr; }}
	chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
	chain forward {{ type filter hook forward priority filter; policy accept; }}
	chain input {{ type filter hook input priority filter; policy accept; }}
}}
flush chain ip {NFT_TABLE} postrouting
flush chain ip {NFT_TABLE} forward
flush chain ip {NFT_TABLE} input
table ip {NFT_TABLE} {{
	chain postrouting {{
		ip saddr {subnet} oifname != \"{bridge}\" masquerade
	}}
	chain forward {{
		iifname \"{bridge}\" oifname \"{bridge}\" accept
		iifname \"{bridge}\" ct state established,related accept
		iifname \"{bridge}\" ip saddr vmap @vms
		iifname \"{bridge}\" drop
		oifname \"{bridge}\" ct state established,related accept
	}}
	chain input {{
		iifname \"{bridge}\" ct state established,related accept
		iifname \"{bridge}\" ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 accept
		iifname \"{bridge}\" ip saddr @open accept
		iifname \"{bridge}\" drop
	}}
}}
table bridge {NFT_TABLE} {{
	map taps {{ type ifname : verdict; }}
	set isolated {{ type ifname; }}
	chain prerouting {{ type filter hook prerouting priority filter; policy accept; }}
	chain forward {{ type filter hook forward priority filter; policy accept; }}
}}
flush chain bridge {NFT_TABLE} prerouting
flush chain bridge {NFT_TABLE} forward
table bridge {NFT_TABLE} {{
	chain prerouting {{
		iifname vmap @taps
		iifname \"bgtap*\" drop
	}}
	chain forward {{
		iifname @isolated drop
		oifname @isolated drop
	}}
}}
"
    )
}

/// Removes both of banger's tables whether or not they exist.
pub fn remove_script() -> String {
    format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n\
         table bridge {NFT_TABLE}\ndelete table bridge {NFT_TABLE}\n"
    )
}

/// `vm_10_77_0_3`: the chain of the VM at `addr`, and the stem of its sets.
fn vm_chain(addr: Ipv4Addr) -> String {
    let [a, b, c, d] = addr.octets();
    format!("vm_{a}_{b}_{c}_{d}")
}

/// Declarations of a VM's chain and sets (idempotent: `add` of what
/// exists with the same definition is a no-op).
fn declare_vm(out: &mut String, addr: Ipv4Addr, tap: &str) {
    let c = vm_chain(addr);
    let _ = write!(
        out,
        "table ip {NFT_TABLE} {{
	map vms {{ type ipv4_addr : verdict; }}
	set open {{ type ipv4_addr; }}
	chain {c} {{ }}
	set {c}_nets {{ type ipv4_addr; flags interval; }}
	set {c}_ports {{ type ipv4_addr . inet_service; }}
	set {c}_dns {{ type ipv4_addr; flags timeout; size {MAX_EGRESS_RESOLVED}; }}
	set {c}_dns_ports {{ type ipv4_addr . inet_service; flags timeout; size {MAX_EGRESS_RESOLVED}; }}
}}
table bridge {NFT_TABLE} {{
	map taps {{ type ifname : verdict; }}
	set isolated {{ type ifname; }}
	chain tap_{tap} {{ }}
}}
"
    );
}

/// `add` then `delete`: the element is gone afterwards whether or not it
/// was there.
fn remove_element(out: &mut String, family: &str, set: &str, element: &str) {
    let _ = writeln!(
        out,
        "add element {family} {NFT_TABLE} {set} {{ {element} }}"
    );
    let key = element.split(" : ").next().unwrap_or(element);
    let _ = writeln!(out, "delete element {family} {NFT_TABLE} {set} {{ {key} }}");
}

/// The script of `egress_apply`: replaces the VM's chain, its static sets,
/// its membership of `open` and `isolated`, and its TAP's anti-spoofing
/// chain. DNS-learned sets are kept (they expire on their own).
pub fn apply_script(tap: &str, addr: Ipv4Addr, rules: &EgressRules) -> String {
    let c = vm_chain(addr);
    let mut s = String::new();
    declare_vm(&mut s, addr, tap);
    let _ = writeln!(s, "flush chain ip {NFT_TABLE} {c}");
    let _ = writeln!(s, "flush set ip {NFT_TABLE} {c}_nets");
    let _ = writeln!(s, "flush set ip {NFT_TABLE} {c}_ports");
    let _ = writeln!(s, "flush chain bridge {NFT_TABLE} tap_{tap}");
    let _ = writeln!(s, "add element ip {NFT_TABLE} vms {{ {addr} : jump {c} }}");
    let _ = writeln!(
        s,
        "add element bridge {NFT_TABLE} taps {{ \"{tap}\" : jump tap_{tap} }}"
    );
    remove_element(&mut s, "ip", "open", &addr.to_string());
    remove_element(&mut s, "bridge", "isolated", &format!("\"{tap}\""));
    let rule = |s: &mut String, r: &str| {
        let _ = writeln!(s, "add rule ip {NFT_TABLE} {c} {r}");
    };
    match rules.mode {
        EgressRuleMode::Internet => {
            rule(
                &mut s,
                &format!("ip daddr {{ {} }} {REFUSE}", NON_PUBLIC.join(", ")),
            );
            rule(&mut s, "accept");
        }
        EgressRuleMode::None => rule(&mut s, REFUSE),
        EgressRuleMode::Allow => {
            if !rules.nets.is_empty() {
                let nets: Vec<String> = rules
                    .nets
                    .iter()
                    .map(|n| format!("{}/{}", n.addr, n.prefix))
                    .collect();
                let _ = writeln!(
                    s,
                    "add element ip {NFT_TABLE} {c}_nets {{ {} }}",
                    nets.join(", ")
                );
            }
            if !rules.ports.is_empty() {
                let ports: BTreeSet<String> = rules
                    .ports
                    .iter()
                    .map(|p| format!("{} . {}", p.addr, p.port))
                    .collect();
                let ports: Vec<String> = ports.into_iter().collect();
                let _ = writeln!(
                    s,
                    "add element ip {NFT_TABLE} {c}_ports {{ {} }}",
                    ports.join(", ")
                );
            }
            rule(&mut s, &format!("ip daddr @{c}_nets accept"));
            rule(&mut s, &format!("ip daddr @{c}_dns accept"));
            rule(
                &mut s,
                &format!("meta l4proto {{ tcp, udp }} ip daddr . th dport @{c}_ports accept"),
            );
            rule(
                &mut s,
                &format!("meta l4proto {{ tcp, udp }} ip daddr . th dport @{c}_dns_ports accept"),
            );
            rule(&mut s, REFUSE);
        }
        EgressRuleMode::Open => {
            let _ = writeln!(s, "add element ip {NFT_TABLE} open {{ {addr} }}");
            rule(&mut s, "accept");
        }
    }
    if matches!(rules.mode, EgressRuleMode::None | EgressRuleMode::Allow) {
        let _ = writeln!(s, "add element bridge {NFT_TABLE} isolated {{ \"{tap}\" }}");
    }
    let trule = |s: &mut String, r: &str| {
        let _ = writeln!(s, "add rule bridge {NFT_TABLE} tap_{tap} {r}");
    };
    trule(&mut s, &format!("ether type ip ip saddr {addr} accept"));
    trule(
        &mut s,
        &format!("ether type arp arp saddr ip {addr} accept"),
    );
    trule(&mut s, "drop");
    s
}

/// The script of `egress_resolved`: each entry (re)added with a fresh
/// timeout. Fails (nothing changes) when the VM has no sets, i.e. its
/// rules were never applied, or when a set is full.
pub fn resolved_script(addr: Ipv4Addr, entries: &[EgressEntry], ttl_secs: u32) -> String {
    let c = vm_chain(addr);
    let mut s = String::new();
    let unique: BTreeSet<&EgressEntry> = entries.iter().collect();
    for e in unique {
        let (set, element) = match e.port {
            None => (format!("{c}_dns"), e.addr.to_string()),
            Some(port) => (format!("{c}_dns_ports"), format!("{} . {port}", e.addr)),
        };
        let _ = writeln!(
            s,
            "add element ip {NFT_TABLE} {set} {{ {element} timeout {ttl_secs}s }}"
        );
        let _ = writeln!(s, "delete element ip {NFT_TABLE} {set} {{ {element} }}");
        let _ = writeln!(
            s,
            "add element ip {NFT_TABLE} {set} {{ {element} timeout {ttl_secs}s }}"
        );
    }
    s
}

/// The script of `egress_clear`: the VM's map elements, chain and sets,
/// and its TAP's element and chain, all gone, whether or not they existed.
pub fn clear_script(tap: &str, addr: Ipv4Addr) -> String {
    let c = vm_chain(addr);
    let mut s = String::new();
    declare_vm(&mut s, addr, tap);
    remove_element(&mut s, "ip", "vms", &format!("{addr} : jump {c}"));
    remove_element(&mut s, "ip", "open", &addr.to_string());
    let _ = writeln!(s, "flush chain ip {NFT_TABLE} {c}");
    let _ = writeln!(s, "delete chain ip {NFT_TABLE} {c}");
    for set in ["nets", "ports", "dns", "dns_ports"] {
        let _ = writeln!(s, "delete set ip {NFT_TABLE} {c}_{set}");
    }
    remove_element(
        &mut s,
        "bridge",
        "taps",
        &format!("\"{tap}\" : jump tap_{tap}"),
    );
    remove_element(&mut s, "bridge", "isolated", &format!("\"{tap}\""));
    let _ = writeln!(s, "flush chain bridge {NFT_TABLE} tap_{tap}");
    let _ = writeln!(s, "delete chain bridge {NFT_TABLE} tap_{tap}");
    s
}

/// A VM address: inside the configured subnet, neither its network, its
/// gateway nor its broadcast address.
pub fn vm_addr(addr: Ipv4Addr, subnet: &Subnet) -> Result<(), Error> {
    let mask = u32::MAX << (32 - u32::from(subnet.prefix()));
    let a = u32::from(addr);
    let net = u32::from(subnet.network());
    let ok = a & mask == net && a != net && a != (net | !mask) && addr != subnet.gateway();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "address {addr} is not a guest address of {subnet}"
        )))
    }
}

/// The rule set is well formed and bounded.
pub fn rules(rules: &EgressRules) -> Result<(), Error> {
    let count = rules.nets.len() + rules.ports.len();
    if rules.mode != EgressRuleMode::Allow && count > 0 {
        return Err(Error::InvalidArgument(
            "only mode allow takes networks and ports".to_owned(),
        ));
    }
    if count > MAX_EGRESS_RULES {
        return Err(Error::InvalidArgument(format!(
            "{count} egress rules: at most {MAX_EGRESS_RULES}"
        )));
    }
    for n in &rules.nets {
        let bad = n.prefix > 32 || {
            let mask = u32::MAX.checked_shl(32 - u32::from(n.prefix)).unwrap_or(0);
            u32::from(n.addr) & !mask != 0
        };
        if bad {
            return Err(Error::InvalidArgument(format!(
                "{}/{} is not a network (prefix 0-32, host bits zero)",
                n.addr, n.prefix
            )));
        }
    }
    if rules.ports.iter().any(|p| p.port == 0) {
        return Err(Error::InvalidArgument("port 0 is not a port".to_owned()));
    }
    Ok(())
}

/// The entries of one `egress_resolved` call: 1 to
/// [`MAX_EGRESS_RESOLVED_PER_CALL`], no port 0. Returns the TTL clamped
/// to [`EGRESS_TTL_SECS`].
pub fn resolved(entries: &[EgressEntry], ttl_secs: u32) -> Result<u32, Error> {
    if entries.is_empty() || entries.len() > MAX_EGRESS_RESOLVED_PER_CALL {
        return Err(Error::InvalidArgument(format!(
            "{} resolved entries: 1 to {MAX_EGRESS_RESOLVED_PER_CALL} per call",
            entries.len()
        )));
    }
    if entries.iter().any(|e| e.port == Some(0)) {
        return Err(Error::InvalidArgument("port 0 is not a port".to_owned()));
    }
    if let Some(e) = entries.iter().find(|e| !is_public(e.addr)) {
        return Err(Error::InvalidArgument(format!(
            "resolved address {} is not public (an allow list names such networks itself)",
            e.addr
        )));
    }
    Ok(ttl_secs.clamp(*EGRESS_TTL_SECS.start(), *EGRESS_TTL_SECS.end()))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use banger_proto::helper::{EgressNet, EgressPort};

    use super::*;

    fn rules(mode: EgressRuleMode) -> EgressRules {
        let allow = mode == EgressRuleMode::Allow;
        EgressRules {
            mode,
            nets: if allow {
                vec![EgressNet {
                    addr: "203.0.113.0".parse().unwrap(),
                    prefix: 24,
                }]
            } else {
                vec![]
            },
            ports: if allow {
                vec![EgressPort {
                    addr: "198.51.100.7".parse().unwrap(),
                    port: 443,
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn public_means_outside_every_listed_range() {
        for a in ["198.18.0.2", "1.1.1.1", "203.0.113.9", "100.63.255.255"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
        for a in [
            "10.77.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.31.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.251",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
    }

    /// Every script, in the order the daemon uses them, through the real
    /// `nft` in a throwaway network namespace (root only).
    #[test]
    fn scripts_are_accepted_by_nft_in_every_order() {
        if !rustix::process::geteuid().is_root() || Command::new("nft").arg("-v").output().is_err()
        {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let subnet = Subnet::parse("10.231.9.0/24").unwrap();
        let addr: Ipv4Addr = "10.231.9.7".parse().unwrap();
        let entries = [
            EgressEntry {
                addr: "198.51.100.9".parse().unwrap(),
                port: None,
            },
            EgressEntry {
                addr: "198.51.100.9".parse().unwrap(),
                port: Some(443),
            },
        ];
        let steps = [
            clear_script("bgtap1", addr),
            base_script(&subnet, "bgunit0"),
            base_script(&subnet, "bgunit0"),
            apply_script("bgtap1", addr, &rules(EgressRuleMode::Allow)),
            resolved_script(addr, &entries, 60),
            resolved_script(addr, &entries, 60),
            apply_script("bgtap1", addr, &rules(EgressRuleMode::Allow)),
            base_script(&subnet, "bgunit0"),
            apply_script("bgtap1", addr, &rules(EgressRuleMode::Open)),
            apply_script("bgtap1", addr, &rules(EgressRuleMode::None)),
            apply_script("bgtap1", addr, &rules(EgressRuleMode::Internet)),
            clear_script("bgtap1", addr),
            clear_script("bgtap1", addr),
            apply_script("bgtap2", addr, &rules(EgressRuleMode::Internet)),
            remove_script(),
            remove_script(),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut shell = String::from("set -e\n");
        for (i, step) in steps.iter().enumerate() {
            let path = dir.path().join(format!("{i}.nft"));
            std::fs::write(&path, step).unwrap();
            shell.push_str(&format!("echo step {i}; nft -f {}\n", path.display()));
        }
        shell.push_str("nft list ruleset\n");
        let mut child = Command::new("unshare")
            .args(["--net", "sh", "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(shell.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("table"), "tables left: {stdout}");
    }
}
