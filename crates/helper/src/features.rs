//! Least privilege: the calls the daemon does not make are refused unless
//! the helper's config turns on the [`HelperFeature`] that needs them.
//!
//! The daemon (`crates/daemon/src/network/`) uses `ping`, `bridge_ensure`,
//! `tap_create`, `tap_delete`, `tap_list`, `nat_ensure`, `dns_socket` and
//! the egress calls (`egress_apply`, `egress_resolved`, `egress_clear`);
//! those need no feature. Loop and device-mapper calls wait for a VMM that
//! uses them (`devices`), and signals, socket chown and bridge/NAT removal
//! have no caller today. `banger-helper teardown` is a local command, not a
//! call, so it removes everything whatever the features.
//!
//! The match is exhaustive on purpose: a new call must be classified here
//! (needs no feature, or which one) before the helper compiles.

use banger_proto::helper::{HelperCall, HelperFeature};

use crate::{Error, Settings};

/// The feature `call` needs, `None` for the calls the daemon makes.
pub fn required(call: &HelperCall) -> Option<HelperFeature> {
    match call {
        HelperCall::Ping
        | HelperCall::BridgeEnsure { .. }
        | HelperCall::TapCreate { .. }
        | HelperCall::TapDelete { .. }
        | HelperCall::TapList
        | HelperCall::NatEnsure { .. }
        | HelperCall::DnsSocket
        | HelperCall::EgressApply { .. }
        | HelperCall::EgressResolved { .. }
        | HelperCall::EgressClear { .. } => None,
        HelperCall::LoopAttach { .. }
        | HelperCall::LoopDetach { .. }
        | HelperCall::DmSnapshotCreate { .. }
        | HelperCall::DmRemove { .. } => Some(HelperFeature::Devices),
        HelperCall::SignalVmm { .. } => Some(HelperFeature::Signals),
        HelperCall::ChownSocket { .. } => Some(HelperFeature::SocketChown),
        HelperCall::BridgeDelete { .. } | HelperCall::NatRemove { .. } => {
            Some(HelperFeature::NetworkRemove)
        }
    }
}

/// [`Error::NotAllowed`] when `call` needs a feature `settings` does not
/// turn on; checked before any argument is looked at.
pub fn check(settings: &Settings, call: &HelperCall) -> Result<(), Error> {
    match required(call) {
        Some(feature) if !settings.enables(feature) => Err(Error::NotAllowed(format!(
            "call {} is disabled; enable it with \"features\": [\"{feature}\"] in the helper's config",
            call.name()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use banger_proto::helper::{HelperConfig, HelperErrorCode};

    use super::*;

    #[test]
    fn daemon_calls_need_nothing_and_the_rest_a_feature() {
        let settings = Settings::from_config(HelperConfig::for_uids(vec![1000])).unwrap();
        let daemon_calls = [
            HelperCall::Ping,
            HelperCall::BridgeEnsure { name: "x".into() },
            HelperCall::TapList,
            HelperCall::DnsSocket,
        ];
        for call in &daemon_calls {
            assert!(check(&settings, call).is_ok(), "{call:?}");
        }
        let gated = [
            (
                HelperCall::LoopDetach {
                    device: "/dev/loop0".into(),
                },
                HelperFeature::Devices,
            ),
            (
                HelperCall::SignalVmm {
                    pid: 9,
                    signal: "TERM".into(),
                },
                HelperFeature::Signals,
            ),
            (
                HelperCall::ChownSocket { path: "/x".into() },
                HelperFeature::SocketChown,
            ),
            (
                HelperCall::NatRemove { subnet: "x".into() },
                HelperFeature::NetworkRemove,
            ),
        ];
        for (call, feature) in &gated {
            let e = check(&settings, call).unwrap_err();
            assert_eq!(e.code(), HelperErrorCode::NotAllowed);
            let text = e.to_string();
            assert!(text.contains(call.name()), "{text}");
            assert!(text.contains(&format!("[\"{feature}\"]")), "{text}");
        }
        let mut config = HelperConfig::for_uids(vec![1000]);
        config.features = HelperFeature::ALL.to_vec();
        let all = Settings::from_config(config).unwrap();
        for (call, _) in &gated {
            assert!(check(&all, call).is_ok(), "{call:?}");
        }
    }
}
