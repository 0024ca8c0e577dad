//! Egress policy of bridged VMs (docs/networking.md, "Egress"): what the
//! daemon asks the helper to enforce for each VM whose TAP is attached,
//! and what the DNS server needs to know about the VM asking.
//!
//! The helper holds the rules (nftables); this table remembers, for the
//! running bridged VMs, which TAP and policy go with which address: the
//! DNS server reads it on every query, and a TAP given back clears the
//! rules of the address it carried.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use banger_proto::helper::{
    EgressEntry, EgressNet, EgressPort, EgressRuleMode, EgressRules, HelperCall,
};
use banger_proto::{Egress, EgressHost, EgressTarget};

use crate::dns::{AllowedName, DnsPolicy, VmResolver};
use crate::helper_client::HelperClient;
use crate::op::OpId;

use super::NameTable;

/// A running bridged VM's TAP and address, from its handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldTap {
    pub vm_id: String,
    pub tap: String,
    pub ip: Ipv4Addr,
}

/// The helper's form of a policy: networks and `addr:port` pairs only;
/// names are left to the DNS server ([`dns_policy`]).
pub fn rules_for(egress: &Egress) -> EgressRules {
    let mode = match egress {
        Egress::Internet => EgressRuleMode::Internet,
        Egress::None => EgressRuleMode::None,
        Egress::Allow { .. } => EgressRuleMode::Allow,
        Egress::Open => EgressRuleMode::Open,
    };
    let mut rules = EgressRules {
        mode,
        nets: Vec::new(),
        ports: Vec::new(),
    };
    if let Egress::Allow { allow } = egress {
        for target in allow {
            match target {
                EgressTarget::Net { addr, prefix } => rules.nets.push(EgressNet {
                    addr: *addr,
                    prefix: *prefix,
                }),
                EgressTarget::HostPort {
                    host: EgressHost::Addr(addr),
                    port,
                } => rules.ports.push(EgressPort {
                    addr: *addr,
                    port: *port,
                }),
                EgressTarget::Domain(_)
                | EgressTarget::HostPort {
                    host: EgressHost::Domain(_),
                    ..
                } => {}
            }
        }
    }
    rules
}

/// What banger's DNS server does for a VM with this policy.
pub fn dns_policy(egress: &Egress) -> DnsPolicy {
    match egress {
        Egress::Internet | Egress::Open => DnsPolicy::Forward,
        Egress::None => DnsPolicy::LocalOnly,
        Egress::Allow { allow } => DnsPolicy::Allow(
            allow
                .iter()
                .filter_map(|t| match t {
                    EgressTarget::Domain(d) => Some(AllowedName {
                        pattern: d.clone(),
                        port: None,
                    }),
                    EgressTarget::HostPort {
                        host: EgressHost::Domain(d),
                        port,
                    } => Some(AllowedName {
                        pattern: d.clone(),
                        port: Some(*port),
                    }),
                    _ => None,
                })
                .collect(),
        ),
    }
}

#[derive(Debug, Clone)]
struct Applied {
    tap: String,
    egress: Egress,
}

/// Address → (TAP, policy) of the running bridged VMs whose rules the
/// helper holds.
#[derive(Debug, Default)]
pub struct EgressTable {
    vms: RwLock<HashMap<Ipv4Addr, Applied>>,
}

impl EgressTable {
    pub fn set(&self, ip: Ipv4Addr, tap: &str, egress: &Egress) {
        let mut vms = self.vms.write().unwrap_or_else(|p| p.into_inner());
        vms.retain(|_, a| a.tap != tap);
        vms.insert(
            ip,
            Applied {
                tap: tap.to_owned(),
                egress: egress.clone(),
            },
        );
    }

    /// Forgets the VM on `tap`; its address, if it had one.
    pub fn remove_tap(&self, tap: &str) -> Option<Ipv4Addr> {
        let mut vms = self.vms.write().unwrap_or_else(|p| p.into_inner());
        let ip = vms.iter().find(|(_, a)| a.tap == tap).map(|(ip, _)| *ip)?;
        vms.remove(&ip);
        Some(ip)
    }

    fn get(&self, ip: Ipv4Addr) -> Option<Applied> {
        self.vms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
    }
}

/// What the DNS server sees: VM names, and the egress policy of the VM
/// asking. Learned addresses go to the helper under the op id of the
/// network set-up that started the server.
#[derive(Debug)]
pub struct DnsView {
    pub names: Arc<NameTable>,
    pub egress: Arc<EgressTable>,
    pub helper: HelperClient,
    pub op: OpId,
}

impl VmResolver for DnsView {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.names.lookup(name)
    }

    fn policy(&self, client: IpAddr) -> DnsPolicy {
        let IpAddr::V4(ip) = client.to_canonical() else {
            return DnsPolicy::Forward;
        };
        // Not a running VM: the host itself (the gateway address).
        self.egress
            .get(ip)
            .map_or(DnsPolicy::Forward, |a| dns_policy(&a.egress))
    }

    fn learn(
        &self,
        client: IpAddr,
        entries: Vec<EgressEntry>,
        ttl_secs: u32,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let IpAddr::V4(ip) = client.to_canonical() else {
                return Err("not an IPv4 client".to_owned());
            };
            let applied = self
                .egress
                .get(ip)
                .ok_or_else(|| "the asking vm has no egress rules".to_owned())?;
            let call = HelperCall::EgressResolved {
                tap: applied.tap,
                addr: ip,
                entries,
                ttl_secs,
            };
            self.helper
                .call(&self.op, call)
                .await
                .map(|_| ())
                .map_err(|e| crate::error::chain(&e).to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_keep_addresses_and_leave_names_to_dns() {
        let e: Egress = "allow=a.example,1.2.3.0/24,5.6.7.8,b.example:443,9.9.9.9:53"
            .parse()
            .unwrap();
        let r = rules_for(&e);
        assert_eq!(r.mode, EgressRuleMode::Allow);
        assert_eq!(
            r.nets
                .iter()
                .map(|n| format!("{}/{}", n.addr, n.prefix))
                .collect::<Vec<_>>(),
            ["1.2.3.0/24", "5.6.7.8/32"]
        );
        assert_eq!(r.ports.len(), 1);
        assert_eq!(r.ports[0].port, 53);
        match dns_policy(&e) {
            DnsPolicy::Allow(names) => assert_eq!(
                names,
                [
                    AllowedName {
                        pattern: "a.example".into(),
                        port: None
                    },
                    AllowedName {
                        pattern: "b.example".into(),
                        port: Some(443)
                    }
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(rules_for(&Egress::Open).mode, EgressRuleMode::Open);
        assert_eq!(dns_policy(&Egress::None), DnsPolicy::LocalOnly);
        assert_eq!(dns_policy(&Egress::Internet), DnsPolicy::Forward);
    }

    #[test]
    fn a_tap_carries_one_address() {
        let t = EgressTable::default();
        let a: Ipv4Addr = "10.77.0.2".parse().unwrap();
        let b: Ipv4Addr = "10.77.0.3".parse().unwrap();
        t.set(a, "bgtap0", &Egress::None);
        t.set(b, "bgtap0", &Egress::Open);
        assert!(t.get(a).is_none());
        assert_eq!(t.remove_tap("bgtap0"), Some(b));
        assert_eq!(t.remove_tap("bgtap0"), None);
    }
}
