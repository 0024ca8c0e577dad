//! One [`HelperCall`] in, one [`Outcome`] out: every argument is checked
//! (see [`crate::validate`] and [`crate::safepath`]) before anything is
//! asked of the [`Host`]. Also [`teardown`], used by `banger system
//! uninstall` through `banger-helper teardown`.

use std::net::SocketAddrV4;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use banger_proto::helper::{DmSupport, HelperCall, HelperFeature, HelperReply, NFT_TABLE, TapInfo};
use rustix::fs::{FileType, OFlags};

use crate::Error;
use crate::config::{Settings, Subnet};
use crate::error::quote;
use crate::host::{Host, LinkKind};
use crate::{egress, features, safepath, validate};

/// Who is calling, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What a successful call produces.
#[derive(Debug)]
pub enum Outcome {
    Reply(HelperReply),
    /// Reply `{"kind":"socket"}` with this descriptor attached.
    Socket(OwnedFd),
}

impl Outcome {
    fn done() -> Self {
        Self::Reply(HelperReply::Done)
    }
}

/// Why device-mapper calls fail on a host without it: what is missing
/// and how to get it.
pub const DM_MISSING: &str = "device-mapper is not available on this host: no /dev/mapper/control (kernel module dm_mod not loaded or not built)";

/// The nftables script [`HelperCall::NatEnsure`] applies in one
/// transaction: masquerade, and the base chains of banger's `ip` and
/// `bridge` tables (see [`crate::egress::base_script`]). Applying it twice
/// leaves one set of rules, and per-VM egress rules survive it.
pub fn nat_script(subnet: &Subnet, bridge: &str) -> String {
    crate::egress::base_script(subnet, bridge)
}

/// Removes banger's tables (`ip` and `bridge`) whether or not they exist.
pub fn nat_remove_script() -> String {
    crate::egress::remove_script()
}

/// Checks calls and carries them out on a [`Host`].
#[derive(Debug)]
pub struct Dispatcher<H> {
    settings: Settings,
    host: H,
}

impl<H: Host> Dispatcher<H> {
    pub fn new(settings: Settings, host: H) -> Self {
        Self { settings, host }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// Validates `call` and performs it for `caller` (whose uid the server
    /// has already checked against the allowed uids). A call the config
    /// does not enable ([`features`]) is refused before anything else.
    pub fn call(&self, caller: Caller, call: &HelperCall) -> Result<Outcome, Error> {
        let s = &self.settings;
        features::check(s, call)?;
        match call {
            HelperCall::Ping => {
                let mut info = s.info();
                info.device_mapper = Some(self.dm_support());
                Ok(Outcome::Reply(HelperReply::Pong(info)))
            }
            HelperCall::BridgeEnsure { name } => {
                validate::bridge_arg(name, s)?;
                self.bridge_ensure()?;
                Ok(Outcome::done())
            }
            HelperCall::BridgeDelete { name } => {
                validate::bridge_arg(name, s)?;
                self.bridge_delete()?;
                Ok(Outcome::done())
            }
            HelperCall::TapCreate {
                name,
                owner_uid,
                bridge,
            } => {
                validate::tap_name(name)?;
                validate::owner_uid(*owner_uid, s)?;
                validate::bridge_arg(bridge, s)?;
                if *owner_uid != caller.uid {
                    return Err(Error::NotAllowed(format!(
                        "a tap for uid {owner_uid}: callers make taps only for themselves (uid {})",
                        caller.uid
                    )));
                }
                self.tap_create(name, *owner_uid)?;
                Ok(Outcome::done())
            }
            HelperCall::TapDelete { name } => {
                validate::tap_name(name)?;
                self.tap_delete(caller, name)?;
                Ok(Outcome::done())
            }
            HelperCall::TapList => Ok(Outcome::Reply(HelperReply::Taps {
                taps: self.tap_list(caller)?,
            })),
            HelperCall::NatEnsure { subnet } => {
                validate::subnet_arg(subnet, &s.subnet)?;
                self.nat_ensure()?;
                Ok(Outcome::done())
            }
            HelperCall::NatRemove { subnet } => {
                validate::subnet_arg(subnet, &s.subnet)?;
                self.nat_remove()?;
                Ok(Outcome::done())
            }
            HelperCall::LoopAttach { path, read_only } => {
                let device = self.loop_attach(caller, path, *read_only)?;
                Ok(Outcome::Reply(HelperReply::Device { path: device }))
            }
            HelperCall::LoopDetach { device } => {
                let name = validate::loop_device(device)?;
                self.check_banger_loop(caller, &name)?;
                self.host.loop_detach(device)?;
                Ok(Outcome::done())
            }
            HelperCall::DmSnapshotCreate { name, origin, cow } => {
                let device = self.dm_snapshot_create(caller, name, origin, cow)?;
                Ok(Outcome::Reply(HelperReply::Device { path: device }))
            }
            HelperCall::DmRemove { name } => {
                validate::dm_name(name)?;
                self.require_dm()?;
                if !self.host.dm_exists(name)? {
                    return Err(Error::NotFound(format!("no device-mapper device {name}")));
                }
                self.check_banger_dm(caller, name)?;
                self.host.dm_remove(name)?;
                Ok(Outcome::done())
            }
            HelperCall::SignalVmm { pid, signal } => {
                let signal = validate::signal(signal)?;
                let pid = validate::pid(*pid)?;
                self.host.signal_process(pid, signal, &|info| {
                    validate::vmm_process(pid, info, caller.uid)
                })?;
                Ok(Outcome::done())
            }
            HelperCall::ChownSocket { path } => {
                self.chown_socket(caller, path)?;
                Ok(Outcome::done())
            }
            HelperCall::DnsSocket => {
                let addr = SocketAddrV4::new(s.subnet.gateway(), 53);
                Ok(Outcome::Socket(self.host.bind_udp(addr)?))
            }
            HelperCall::EgressApply { tap, addr, rules } => {
                egress::vm_addr(*addr, &s.subnet)?;
                egress::rules(rules)?;
                self.check_own_tap(caller, tap, false)?;
                self.host
                    .nft_apply(&egress::apply_script(tap, *addr, rules))?;
                Ok(Outcome::done())
            }
            HelperCall::EgressResolved {
                tap,
                addr,
                entries,
                ttl_secs,
            } => {
                egress::vm_addr(*addr, &s.subnet)?;
                let ttl = egress::resolved(entries, *ttl_secs)?;
                self.check_own_tap(caller, tap, false)?;
                self.host
                    .nft_apply(&egress::resolved_script(*addr, entries, ttl))?;
                Ok(Outcome::done())
            }
            HelperCall::EgressClear { tap, addr } => {
                egress::vm_addr(*addr, &s.subnet)?;
                self.check_own_tap(caller, tap, true)?;
                self.host.nft_apply(&egress::clear_script(tap, *addr))?;
                Ok(Outcome::done())
            }
        }
    }

    /// `tap` is a banger TAP name and, if it exists, a TAP owned by the
    /// caller. A missing one is `not_found` unless `may_be_gone` (clearing
    /// the rules of a TAP already deleted).
    fn check_own_tap(&self, caller: Caller, tap: &str, may_be_gone: bool) -> Result<(), Error> {
        validate::tap_name(tap)?;
        match self.host.link(tap)? {
            None if may_be_gone => Ok(()),
            None => Err(Error::NotFound(format!("no tap device {tap}"))),
            Some(l) if l.kind == LinkKind::Tap && l.owner_uid == Some(caller.uid) => Ok(()),
            Some(l) if l.kind == LinkKind::Tap => Err(Error::NotAllowed(format!(
                "{tap} is not owned by the caller"
            ))),
            Some(_) => Err(Error::NotAllowed(format!("{tap} is not a tap device"))),
        }
    }

    fn bridge_ensure(&self) -> Result<(), Error> {
        let bridge = &self.settings.bridge;
        match self.host.link(bridge)? {
            None => self.host.bridge_add(bridge)?,
            Some(l) if l.kind == LinkKind::Bridge => {}
            Some(_) => {
                return Err(Error::OperationFailed(format!(
                    "{bridge} exists and is not a bridge"
                )));
            }
        }
        self.host
            .addr_replace(bridge, &self.settings.subnet.gateway_cidr())?;
        self.host.link_up(bridge)
    }

    fn bridge_delete(&self) -> Result<(), Error> {
        let bridge = &self.settings.bridge;
        match self.host.link(bridge)? {
            None => Ok(()),
            Some(l) if l.kind == LinkKind::Bridge => self.host.link_delete(bridge),
            Some(_) => Err(Error::OperationFailed(format!(
                "{bridge} exists and is not a bridge"
            ))),
        }
    }

    fn tap_create(&self, name: &str, owner_uid: u32) -> Result<(), Error> {
        let bridge = &self.settings.bridge;
        match self.host.link(bridge)? {
            Some(l) if l.kind == LinkKind::Bridge => {}
            _ => {
                return Err(Error::NotFound(format!(
                    "bridge {bridge} does not exist (call bridge_ensure first)"
                )));
            }
        }
        match self.host.link(name)? {
            None => {
                self.host.tap_add(name, owner_uid)?;
                if let Err(e) = self.host.link_attach_up(name, bridge) {
                    // Leave nothing half made; the attach error is the one
                    // worth reporting.
                    let _ = self.host.link_delete(name);
                    return Err(e);
                }
                Ok(())
            }
            Some(l) if l.kind == LinkKind::Tap && l.owner_uid == Some(owner_uid) => {
                self.host.link_attach_up(name, bridge)
            }
            Some(_) => Err(Error::OperationFailed(format!(
                "{name} already exists and is not a tap owned by uid {owner_uid}"
            ))),
        }
    }

    /// Deletes the caller's own TAP only.
    fn tap_delete(&self, caller: Caller, name: &str) -> Result<(), Error> {
        match self.host.link(name)? {
            None => Ok(()),
            Some(l) if l.kind == LinkKind::Tap && l.owner_uid == Some(caller.uid) => {
                self.host.link_delete(name)
            }
            Some(l) if l.kind == LinkKind::Tap => Err(Error::NotAllowed(match l.owner_uid {
                Some(uid) => format!("{name} belongs to uid {uid}, not the caller"),
                None => format!("{name} has no owner; only its owner's taps may be deleted"),
            })),
            Some(_) => Err(Error::OperationFailed(format!(
                "{name} exists and is not a tap"
            ))),
        }
    }

    /// The caller's own banger TAPs.
    fn tap_list(&self, caller: Caller) -> Result<Vec<TapInfo>, Error> {
        Ok(self
            .host
            .links()?
            .into_iter()
            .filter(|l| {
                l.kind == LinkKind::Tap
                    && validate::is_tap_name(&l.name)
                    && l.owner_uid == Some(caller.uid)
            })
            .map(|l| TapInfo {
                name: l.name,
                master: l.master,
                owner_uid: l.owner_uid,
            })
            .collect())
    }

    fn nat_ensure(&self) -> Result<(), Error> {
        let s = &self.settings;
        self.host.nft_apply(&nat_script(&s.subnet, &s.bridge))?;
        let marker = s.ip_forward_marker();
        let was_on = self.host.ip_forward_enable(&marker)?;
        if !was_on {
            tracing::info!(
                sysctl = "net.ipv4.ip_forward",
                marker = %marker.display(),
                "enabled ipv4 forwarding for banger's nat"
            );
        }
        if self.host.iptables_forward_drops()? {
            let subnet = s.subnet.to_string();
            self.host.iptables_accept_bridge(&s.bridge, &subnet)?;
            tracing::info!(
                bridge = %s.bridge,
                subnet = %subnet,
                chain = crate::host::system::IPTABLES_CHAIN,
                "iptables forward policy is drop: accepted the bridge's traffic in banger's chain, jumped to from the end of FORWARD"
            );
        }
        Ok(())
    }

    /// Undoes [`Self::nat_ensure`]: the table, the iptables chain, and
    /// forwarding when the helper turned it on.
    fn nat_remove(&self) -> Result<(), Error> {
        self.host.nft_apply(&nat_remove_script())?;
        self.host.iptables_remove()?;
        self.host
            .ip_forward_restore(&self.settings.ip_forward_marker())
            .map(drop)
    }

    fn loop_attach(&self, caller: Caller, path: &Path, read_only: bool) -> Result<String, Error> {
        validate::path_arg(path, &self.settings.data_dirs, "data dir")?;
        let opened = safepath::open_nofollow(path)?;
        let shown = quote(&path.to_string_lossy());
        if opened.file_type() != FileType::RegularFile {
            return Err(Error::InvalidPath(format!("{shown} is not a regular file")));
        }
        if opened.owner() != caller.uid {
            return Err(Error::NotAllowed(format!(
                "{shown} belongs to uid {}, not the caller",
                opened.owner()
            )));
        }
        let mode = if read_only {
            OFlags::RDONLY
        } else {
            OFlags::RDWR
        };
        let file = safepath::reopen(&opened, mode)?;
        self.host.loop_attach(file.as_fd(), read_only)
    }

    /// `loopN` must be attached to a file under a data dir that, if it
    /// still exists, belongs to the caller.
    fn check_banger_loop(&self, caller: Caller, loop_name: &str) -> Result<(), Error> {
        let backing = self
            .host
            .loop_backing_file(loop_name)?
            .ok_or_else(|| Error::NotFound(format!("/dev/{loop_name} is not attached")))?;
        let text = backing.to_string_lossy();
        let path = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text));
        if !validate::is_under(&path, &self.settings.data_dirs) {
            return Err(Error::NotAllowed(format!(
                "/dev/{loop_name} is not backed by a file under a data dir"
            )));
        }
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&path).map_err(|_| {
            Error::NotAllowed(format!(
                "/dev/{loop_name}'s backing file is gone, so its owner cannot be checked"
            ))
        })?;
        if meta.uid() != caller.uid {
            return Err(Error::NotAllowed(format!(
                "/dev/{loop_name} is backed by a file of uid {}, not the caller",
                meta.uid()
            )));
        }
        Ok(())
    }

    /// Every device under the device-mapper device `name` must be a loop
    /// device of the caller's (see [`Self::check_banger_loop`]).
    fn check_banger_dm(&self, caller: Caller, name: &str) -> Result<(), Error> {
        let table = self.host.dm_table(name)?;
        let mut loops = Vec::new();
        // `START LENGTH TARGET ARGS...` per line; devices in ARGS are
        // `MAJOR:MINOR` (or a path, as given at create).
        for arg in table.lines().flat_map(|l| l.split_whitespace().skip(3)) {
            if let Some(dev) = arg.strip_prefix("/dev/") {
                loops.push(dev.to_owned());
            } else if let Some((major, minor)) = arg.split_once(':') {
                if let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) {
                    loops.push(self.host.block_name(major, minor)?);
                }
            }
        }
        if loops.is_empty() {
            return Err(Error::NotAllowed(format!(
                "device-mapper device {name} has no loop device whose owner can be checked"
            )));
        }
        for dev in loops {
            let loop_name = validate::loop_device(&format!("/dev/{dev}")).map_err(|_| {
                Error::NotAllowed(format!(
                    "device-mapper device {name} uses /dev/{dev}, not a loop device"
                ))
            })?;
            self.check_banger_loop(caller, &loop_name)?;
        }
        Ok(())
    }

    /// What `ping` says about device-mapper snapshots.
    fn dm_support(&self) -> DmSupport {
        if !self.settings.enables(HelperFeature::Devices) {
            DmSupport::Disabled
        } else if self.host.dm_available() {
            DmSupport::Available
        } else {
            DmSupport::Missing
        }
    }

    fn require_dm(&self) -> Result<(), Error> {
        if self.host.dm_available() {
            Ok(())
        } else {
            Err(Error::Unsupported(DM_MISSING.to_owned()))
        }
    }

    fn dm_snapshot_create(
        &self,
        caller: Caller,
        name: &str,
        origin: &str,
        cow: &str,
    ) -> Result<String, Error> {
        validate::dm_name(name)?;
        let origin_name = validate::loop_device(origin)?;
        let cow_name = validate::loop_device(cow)?;
        if origin_name == cow_name {
            return Err(Error::InvalidArgument(
                "origin and cow must be different loop devices".to_owned(),
            ));
        }
        self.require_dm()?;
        self.check_banger_loop(caller, &origin_name)?;
        self.check_banger_loop(caller, &cow_name)?;
        if self.host.dm_exists(name)? {
            return Err(Error::OperationFailed(format!(
                "device-mapper device {name} already exists"
            )));
        }
        let sectors = self.host.block_sectors(&origin_name)?;
        let table = format!("0 {sectors} snapshot {origin} {cow} P 8");
        self.host.dm_create(name, &table)?;
        // The caller's VMM opens the device as the caller: it maps only
        // the caller's own files, so it may be the caller's.
        if let Err(e) = self.host.dm_chown(name, caller.uid, caller.gid) {
            if let Err(undo) = self.host.dm_remove(name) {
                tracing::warn!(name, error = %undo.message(), "remove the device-mapper device after a failed chown");
            }
            return Err(e);
        }
        Ok(format!("/dev/mapper/{name}"))
    }

    fn chown_socket(&self, caller: Caller, path: &Path) -> Result<(), Error> {
        validate::path_arg(path, &self.settings.runtime_dirs, "runtime dir")?;
        let opened = safepath::open_nofollow(path)?;
        let shown = quote(&path.to_string_lossy());
        if opened.file_type() != FileType::Socket {
            return Err(Error::InvalidPath(format!("{shown} is not a socket")));
        }
        let owner = opened.owner();
        if owner != caller.uid {
            return Err(Error::NotAllowed(format!(
                "{shown} belongs to uid {owner}, not the caller"
            )));
        }
        // A second name for the socket (a hard link elsewhere, perhaps
        // outside the runtime dirs) would be given away with it.
        let links = opened.stat.st_nlink;
        if links != 1 {
            return Err(Error::NotAllowed(format!(
                "{shown} has {links} hard links; only a socket with one is chowned"
            )));
        }
        self.host
            .chown_fd(opened.fd.as_fd(), caller.uid, caller.gid)
    }
}

/// Removes everything banger's helper makes on the network: every
/// `bgtapN` TAP, the bridge, the nftables table, the iptables chain, and
/// IPv4 forwarding when the helper turned it on.
/// Keeps going after a failure; returns what it removed, or every failure.
pub fn teardown<H: Host>(settings: &Settings, host: &H) -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    match host.links() {
        Ok(links) => {
            for link in links {
                let ours_tap = link.kind == LinkKind::Tap && validate::is_tap_name(&link.name);
                let ours_bridge = link.kind == LinkKind::Bridge && link.name == settings.bridge;
                if ours_tap || ours_bridge {
                    match host.link_delete(&link.name) {
                        Ok(()) => removed.push(link.name),
                        Err(e) => failures.push(e.message()),
                    }
                }
            }
        }
        Err(e) => failures.push(e.message()),
    }
    match host.nft_apply(&nat_remove_script()) {
        Ok(()) => removed.push(format!("nft table ip {NFT_TABLE}")),
        Err(e) => failures.push(e.message()),
    }
    if let Err(e) = host.iptables_remove() {
        failures.push(e.message());
    }
    match host.ip_forward_restore(&settings.ip_forward_marker()) {
        Ok(true) => removed.push("net.ipv4.ip_forward=1 (banger turned it on; now 0)".to_owned()),
        Ok(false) => {}
        Err(e) => failures.push(e.message()),
    }
    if failures.is_empty() {
        Ok(removed)
    } else {
        Err(Error::OperationFailed(failures.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;

    use banger_proto::helper::{HelperConfig, HelperErrorCode, HelperFeature};

    use super::*;
    use crate::host::fake::FakeHost;
    use crate::host::{Link, ProcInfo};

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        d: Dispatcher<FakeHost>,
        me: Caller,
    }

    fn my_ids() -> Caller {
        Caller {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    /// Every feature on, so each call's own checks are reached.
    fn fixture() -> Fixture {
        fixture_with(HelperFeature::ALL.to_vec())
    }

    fn fixture_with(features: Vec<HelperFeature>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for d in ["data", "run", "data-evil", "outside"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        let me = my_ids();
        let mut c = HelperConfig::for_uids(vec![me.uid, 4242]);
        c.bridge = "bgunit0".into();
        c.subnet = "10.231.9.0/24".into();
        c.data_dirs = vec![root.join("data")];
        c.runtime_dirs = vec![root.join("run")];
        c.features = features;
        c.socket = root.join("sock/helper.sock");
        let d = Dispatcher::new(Settings::from_config(c).unwrap(), FakeHost::new());
        Fixture {
            _dir: dir,
            root,
            d,
            me,
        }
    }

    fn code(r: Result<Outcome, Error>) -> HelperErrorCode {
        match r {
            Ok(o) => panic!("expected an error, got {o:?}"),
            Err(e) => e.code(),
        }
    }

    fn reply(r: Result<Outcome, Error>) -> HelperReply {
        match r.unwrap() {
            Outcome::Reply(r) => r,
            Outcome::Socket(_) => panic!("socket"),
        }
    }

    #[test]
    fn ping_reports_the_enforced_network() {
        let f = fixture();
        match reply(f.d.call(f.me, &HelperCall::Ping)) {
            HelperReply::Pong(info) => {
                assert_eq!(info.bridge, "bgunit0");
                assert_eq!(info.subnet, "10.231.9.0/24");
                assert_eq!(info.gateway, "10.231.9.1");
                assert_eq!(info.device_mapper, Some(DmSupport::Missing));
            }
            other => panic!("{other:?}"),
        }
        assert!(f.d.host().actions().is_empty());
    }

    #[test]
    fn ping_tells_whether_device_mapper_snapshots_can_be_made() {
        let dm = |f: &Fixture| match reply(f.d.call(f.me, &HelperCall::Ping)) {
            HelperReply::Pong(info) => info.device_mapper,
            other => panic!("{other:?}"),
        };
        let f = fixture();
        f.d.host().with(|s| s.dm_available = true);
        assert_eq!(dm(&f), Some(DmSupport::Available));
        let off = fixture_with(vec![HelperFeature::Signals]);
        off.d.host().with(|s| s.dm_available = true);
        assert_eq!(dm(&off), Some(DmSupport::Disabled));
    }

    #[test]
    fn bridge_ensure_creates_once_and_fixes_address_and_state() {
        let f = fixture();
        let call = HelperCall::BridgeEnsure {
            name: "bgunit0".into(),
        };
        assert_eq!(reply(f.d.call(f.me, &call)), HelperReply::Done);
        assert_eq!(reply(f.d.call(f.me, &call)), HelperReply::Done);
        assert_eq!(
            f.d.host().actions(),
            [
                "bridge_add bgunit0",
                "addr_replace bgunit0 10.231.9.1/24",
                "link_up bgunit0",
                "addr_replace bgunit0 10.231.9.1/24",
                "link_up bgunit0",
            ]
        );
        for bad in ["banger0", "eth0", "bgunit0\n", ""] {
            let r =
                f.d.call(f.me, &HelperCall::BridgeEnsure { name: bad.into() });
            assert_eq!(code(r), HelperErrorCode::InvalidName, "{bad:?}");
        }
    }

    #[test]
    fn bridge_name_taken_by_another_kind_is_refused() {
        let f = fixture();
        f.d.host().with(|s| {
            s.links.insert(
                "bgunit0".into(),
                Link {
                    name: "bgunit0".into(),
                    kind: LinkKind::Other,
                    master: None,
                    owner_uid: None,
                },
            )
        });
        let r = f.d.call(
            f.me,
            &HelperCall::BridgeEnsure {
                name: "bgunit0".into(),
            },
        );
        assert_eq!(code(r), HelperErrorCode::OperationFailed);
        let r = f.d.call(
            f.me,
            &HelperCall::BridgeDelete {
                name: "bgunit0".into(),
            },
        );
        assert_eq!(code(r), HelperErrorCode::OperationFailed);
        assert!(f.d.host().actions().is_empty());
    }

    #[test]
    fn taps_need_the_bridge_a_valid_name_and_the_caller_as_owner() {
        let f = fixture();
        let other = Caller {
            uid: 4242,
            gid: 4242,
        };
        let tap = |name: &str, uid: u32, bridge: &str| HelperCall::TapCreate {
            name: name.into(),
            owner_uid: uid,
            bridge: bridge.into(),
        };
        assert_eq!(
            code(f.d.call(other, &tap("bgtap1", 4242, "bgunit0"))),
            HelperErrorCode::NotFound
        );
        f.d.call(
            f.me,
            &HelperCall::BridgeEnsure {
                name: "bgunit0".into(),
            },
        )
        .unwrap();
        assert_eq!(
            code(f.d.call(other, &tap("eth0", 4242, "bgunit0"))),
            HelperErrorCode::InvalidName
        );
        assert_eq!(
            code(f.d.call(other, &tap("bgtap1", 77, "bgunit0"))),
            HelperErrorCode::InvalidArgument
        );
        assert_eq!(
            code(f.d.call(other, &tap("bgtap1", 4242, "docker0"))),
            HelperErrorCode::InvalidName
        );
        assert_eq!(
            code(f.d.call(f.me, &tap("bgtap1", 4242, "bgunit0"))),
            HelperErrorCode::NotAllowed,
            "a tap for another allowed uid"
        );
        reply(f.d.call(other, &tap("bgtap1", 4242, "bgunit0")));
        reply(f.d.call(other, &tap("bgtap1", 4242, "bgunit0")));
        assert_eq!(
            code(f.d.call(f.me, &tap("bgtap1", f.me.uid, "bgunit0"))),
            HelperErrorCode::OperationFailed,
            "same name, other owner"
        );
        reply(f.d.call(f.me, &tap("bgtap2", f.me.uid, "bgunit0")));
        let listed = |caller: Caller| match reply(f.d.call(caller, &HelperCall::TapList)) {
            HelperReply::Taps { taps } => taps,
            other => panic!("{other:?}"),
        };
        let theirs = listed(other);
        assert_eq!(theirs.len(), 1, "{theirs:?}");
        assert_eq!(theirs[0].name, "bgtap1");
        assert_eq!(theirs[0].master.as_deref(), Some("bgunit0"));
        assert_eq!(theirs[0].owner_uid, Some(4242));
        let mine = listed(f.me);
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].name, "bgtap2");

        let delete = HelperCall::TapDelete {
            name: "bgtap1".into(),
        };
        assert_eq!(
            code(f.d.call(f.me, &delete)),
            HelperErrorCode::NotAllowed,
            "another uid's tap"
        );
        assert!(f.d.host().with(|s| s.links.contains_key("bgtap1")));
        reply(f.d.call(other, &delete));
        reply(f.d.call(other, &delete));
        f.d.host().with(|s| {
            s.links.insert(
                "bgtap7".into(),
                Link {
                    name: "bgtap7".into(),
                    kind: LinkKind::Tap,
                    master: None,
                    owner_uid: None,
                },
            )
        });
        let r = f.d.call(
            f.me,
            &HelperCall::TapDelete {
                name: "bgtap7".into(),
            },
        );
        assert_eq!(code(r), HelperErrorCode::NotAllowed, "a tap without owner");
        let adds =
            f.d.host()
                .actions()
                .iter()
                .filter(|a| a.starts_with("tap_add"))
                .count();
        assert_eq!(adds, 2);
        let deletes =
            f.d.host()
                .actions()
                .iter()
                .filter(|a| a.starts_with("link_delete"))
                .count();
        assert_eq!(deletes, 1);
    }

    #[test]
    fn a_failed_attach_removes_the_new_tap() {
        let f = fixture();
        f.d.call(
            f.me,
            &HelperCall::BridgeEnsure {
                name: "bgunit0".into(),
            },
        )
        .unwrap();
        f.d.host().with(|s| s.fail_tap_attach = true);
        let r = f.d.call(
            f.me,
            &HelperCall::TapCreate {
                name: "bgtap5".into(),
                owner_uid: f.me.uid,
                bridge: "bgunit0".into(),
            },
        );
        assert_eq!(code(r), HelperErrorCode::OperationFailed);
        assert!(f.d.host().with(|s| !s.links.contains_key("bgtap5")));
    }

    #[test]
    fn nat_is_one_table_and_turns_forwarding_on() {
        let f = fixture();
        let call = HelperCall::NatEnsure {
            subnet: "10.231.9.0/24".into(),
        };
        reply(f.d.call(f.me, &call));
        reply(f.d.call(f.me, &call));
        let script = f.d.host().with(|s| s.nft.clone()).unwrap();
        // Base chains are flushed and refilled; the table itself (and the
        // per-VM egress chains in it) is never deleted.
        assert!(!script.contains("delete"), "{script}");
        assert!(script.contains("flush chain ip banger forward"));
        assert!(script.contains("flush chain bridge banger prerouting"));
        assert_eq!(script.matches("masquerade").count(), 1);
        assert!(script.contains("ip saddr 10.231.9.0/24 oifname != \"bgunit0\" masquerade"));
        assert!(f.d.host().with(|s| s.ip_forward));
        let marker = f.root.join("sock/ip_forward.was");
        assert_eq!(
            f.d.host().with(|s| s.ip_forward_marker.clone()),
            Some(marker.clone()),
            "recorded that the helper turned forwarding on"
        );
        assert!(f.d.host().with(|s| s.iptables_chain.is_none()));

        f.d.host().with(|s| s.iptables_drop = true);
        reply(f.d.call(f.me, &call));
        assert_eq!(
            f.d.host().with(|s| s.iptables_chain.clone()).as_deref(),
            Some("bgunit0")
        );
        assert!(
            f.d.host()
                .actions()
                .contains(&"iptables_accept_bridge bgunit0 10.231.9.0/24".to_owned())
        );
        for bad in [
            "10.231.8.0/24",
            "0.0.0.0/0",
            "10.231.9.1/24",
            "x",
            "fd00::/64",
        ] {
            let r =
                f.d.call(f.me, &HelperCall::NatEnsure { subnet: bad.into() });
            assert_eq!(code(r), HelperErrorCode::InvalidArgument, "{bad}");
        }
        reply(f.d.call(
            f.me,
            &HelperCall::NatRemove {
                subnet: "10.231.9.0/24".into(),
            },
        ));
        assert!(
            f.d.host()
                .with(|s| s.nft.is_none() && s.iptables_chain.is_none())
        );
        assert!(
            f.d.host()
                .with(|s| !s.ip_forward && s.ip_forward_marker.is_none()),
            "forwarding back off"
        );

        // Forwarding already on: left on by the removal.
        f.d.host().with(|s| s.ip_forward = true);
        reply(f.d.call(f.me, &call));
        assert!(f.d.host().with(|s| s.ip_forward_marker.is_none()));
        reply(f.d.call(
            f.me,
            &HelperCall::NatRemove {
                subnet: "10.231.9.0/24".into(),
            },
        ));
        assert!(f.d.host().with(|s| s.ip_forward));
    }

    #[test]
    fn loop_attach_checks_path_type_and_owner() {
        let f = fixture();
        let data = f.root.join("data");
        std::fs::create_dir(data.join("vm")).unwrap();
        std::fs::write(data.join("vm/root.img"), b"disk").unwrap();
        std::fs::write(f.root.join("outside/secret"), b"s").unwrap();
        std::fs::write(f.root.join("data-evil/x.img"), b"s").unwrap();
        symlink(f.root.join("outside/secret"), data.join("vm/link.img")).unwrap();
        symlink(f.root.join("outside"), data.join("linkdir")).unwrap();
        let attach = |p: PathBuf| HelperCall::LoopAttach {
            path: p,
            read_only: true,
        };
        match reply(f.d.call(f.me, &attach(data.join("vm/root.img")))) {
            HelperReply::Device { path } => assert_eq!(path, "/dev/loop0"),
            other => panic!("{other:?}"),
        }
        let cases: Vec<(PathBuf, HelperErrorCode)> = vec![
            (data.join("vm/link.img"), HelperErrorCode::InvalidPath),
            (data.join("linkdir/secret"), HelperErrorCode::InvalidPath),
            (data.join("vm"), HelperErrorCode::InvalidPath),
            (
                data.join("vm/../../outside/secret"),
                HelperErrorCode::InvalidPath,
            ),
            (f.root.join("data-evil/x.img"), HelperErrorCode::InvalidPath),
            (f.root.join("outside/secret"), HelperErrorCode::InvalidPath),
            (
                PathBuf::from("data/vm/root.img"),
                HelperErrorCode::InvalidPath,
            ),
            (data.join("vm/missing.img"), HelperErrorCode::NotFound),
            (data.clone(), HelperErrorCode::InvalidPath),
        ];
        for (path, want) in cases {
            assert_eq!(
                code(f.d.call(f.me, &attach(path.clone()))),
                want,
                "{path:?}"
            );
        }
        let stranger = Caller {
            uid: 4242,
            gid: 4242,
        };
        assert_eq!(
            code(f.d.call(stranger, &attach(data.join("vm/root.img")))),
            HelperErrorCode::NotAllowed
        );
        assert_eq!(
            f.d.host()
                .actions()
                .iter()
                .filter(|a| a.starts_with("loop_attach"))
                .count(),
            1
        );
    }

    #[test]
    fn loop_detach_and_dm_only_touch_banger_loops() {
        let f = fixture();
        let data = f.root.join("data");
        std::fs::write(data.join("a.img"), b"a").unwrap();
        std::fs::write(data.join("b.img"), b"b").unwrap();
        f.d.host().with(|s| {
            s.loops.insert("loop0".into(), Some(data.join("a.img")));
            s.loops.insert("loop1".into(), Some(data.join("b.img")));
            s.loops
                .insert("loop2".into(), Some(PathBuf::from("/var/lib/other.img")));
            s.loops.insert("loop3".into(), None);
            s.loops.insert("loop4".into(), Some(data.join("gone.img")));
        });
        let detach = |d: &str| HelperCall::LoopDetach { device: d.into() };
        assert_eq!(
            code(f.d.call(f.me, &detach("/dev/loop2"))),
            HelperErrorCode::NotAllowed
        );
        assert_eq!(
            code(f.d.call(f.me, &detach("/dev/loop3"))),
            HelperErrorCode::NotFound
        );
        assert_eq!(
            code(f.d.call(f.me, &detach("/dev/loop4"))),
            HelperErrorCode::NotAllowed,
            "a backing file whose owner cannot be checked"
        );
        let stranger = Caller {
            uid: 4242,
            gid: 4242,
        };
        assert_eq!(
            code(f.d.call(stranger, &detach("/dev/loop0"))),
            HelperErrorCode::NotAllowed,
            "another uid's file"
        );
        assert_eq!(
            code(f.d.call(f.me, &detach("/dev/loop9"))),
            HelperErrorCode::NotFound
        );
        assert_eq!(
            code(f.d.call(f.me, &detach("/dev/sda"))),
            HelperErrorCode::InvalidName
        );
        let snap = |name: &str, o: &str, c: &str| HelperCall::DmSnapshotCreate {
            name: name.into(),
            origin: o.into(),
            cow: c.into(),
        };
        let missing =
            f.d.call(f.me, &snap("banger-x", "/dev/loop0", "/dev/loop1"))
                .unwrap_err();
        assert_eq!(missing.code(), HelperErrorCode::Unsupported);
        let text = missing.message();
        for word in ["device-mapper", "/dev/mapper/control", "dm_mod"] {
            assert!(text.contains(word), "{text}");
        }
        f.d.host().with(|s| s.dm_available = true);
        match reply(f.d.call(f.me, &snap("banger-x", "/dev/loop0", "/dev/loop1"))) {
            HelperReply::Device { path } => assert_eq!(path, "/dev/mapper/banger-x"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            f.d.host().with(|s| s.dm.get("banger-x").cloned()).unwrap(),
            "0 2048 snapshot /dev/loop0 /dev/loop1 P 8"
        );
        let me = format!("dm_chown banger-x {}:{}", f.me.uid, f.me.gid);
        assert!(
            f.d.host().actions().contains(&me),
            "the device is the caller's: {:?}",
            f.d.host().actions()
        );
        assert_eq!(
            code(f.d.call(f.me, &snap("banger-y", "/dev/loop0", "/dev/loop2"))),
            HelperErrorCode::NotAllowed
        );
        assert_eq!(
            code(f.d.call(f.me, &snap("banger-y", "/dev/loop0", "/dev/loop0"))),
            HelperErrorCode::InvalidArgument
        );
        assert_eq!(
            code(f.d.call(f.me, &snap("root", "/dev/loop0", "/dev/loop1"))),
            HelperErrorCode::InvalidName
        );
        // Removal: only a device over the caller's loops (the kernel shows
        // them as MAJOR:MINOR).
        f.d.host().with(|s| {
            s.dm.insert("banger-z".into(), "0 2048 snapshot 7:0 7:2 P 8".into());
            s.dm.insert("banger-w".into(), "0 2048 linear 8:0 0".into());
            s.dm.insert("banger-e".into(), "0 2048 zero".into());
        });
        let remove = |n: &str| HelperCall::DmRemove { name: n.into() };
        for name in ["banger-z", "banger-w", "banger-e"] {
            assert_eq!(
                code(f.d.call(f.me, &remove(name))),
                HelperErrorCode::NotAllowed,
                "{name}"
            );
        }
        let stranger = Caller {
            uid: 4242,
            gid: 4242,
        };
        assert_eq!(
            code(f.d.call(stranger, &remove("banger-x"))),
            HelperErrorCode::NotAllowed
        );
        assert!(
            !f.d.host()
                .actions()
                .iter()
                .any(|a| a.starts_with("dm_remove"))
        );
        reply(f.d.call(
            f.me,
            &HelperCall::DmRemove {
                name: "banger-x".into(),
            },
        ));
        assert_eq!(
            code(f.d.call(
                f.me,
                &HelperCall::DmRemove {
                    name: "banger-x".into()
                }
            )),
            HelperErrorCode::NotFound
        );
        // A device that cannot be given to the caller is removed again.
        f.d.host().with(|s| s.fail_dm_chown = true);
        assert_eq!(
            code(f.d.call(f.me, &snap("banger-v", "/dev/loop0", "/dev/loop1"))),
            HelperErrorCode::OperationFailed
        );
        assert!(!f.d.host().with(|s| s.dm.contains_key("banger-v")));
        assert!(
            f.d.host()
                .actions()
                .contains(&"dm_remove banger-v".to_owned())
        );
        reply(f.d.call(f.me, &detach("/dev/loop0")));
        assert!(
            f.d.host()
                .actions()
                .contains(&"loop_detach /dev/loop0".to_owned())
        );
    }

    #[test]
    fn signals_only_reach_banger_vmms() {
        let f = fixture();
        let qemu = ProcInfo {
            exe: Some(PathBuf::from("/usr/bin/qemu-system-x86_64")),
            argv: vec![
                "qemu-system-x86_64".into(),
                "-name".into(),
                "guest=banger-a,process=banger-a".into(),
            ],
            ruid: f.me.uid,
        };
        f.d.host().with(|s| {
            s.procs.insert(100, qemu.clone());
            s.procs.insert(
                101,
                ProcInfo {
                    ruid: 4242,
                    ..qemu.clone()
                },
            );
            s.procs.insert(
                102,
                ProcInfo {
                    exe: Some(PathBuf::from("/usr/bin/sshd")),
                    ..qemu.clone()
                },
            );
        });
        let sig = |pid: u32, s: &str| HelperCall::SignalVmm {
            pid,
            signal: s.into(),
        };
        reply(f.d.call(f.me, &sig(100, "TERM")));
        assert_eq!(
            code(f.d.call(f.me, &sig(101, "TERM"))),
            HelperErrorCode::NotAllowed
        );
        assert_eq!(
            code(f.d.call(f.me, &sig(102, "KILL"))),
            HelperErrorCode::NotAllowed
        );
        assert_eq!(
            code(f.d.call(f.me, &sig(103, "KILL"))),
            HelperErrorCode::NotFound
        );
        assert_eq!(
            code(f.d.call(f.me, &sig(1, "KILL"))),
            HelperErrorCode::InvalidArgument
        );
        assert_eq!(
            code(f.d.call(f.me, &sig(0, "KILL"))),
            HelperErrorCode::InvalidArgument
        );
        assert_eq!(
            code(f.d.call(f.me, &sig(100, "STOP"))),
            HelperErrorCode::InvalidArgument
        );
        assert_eq!(f.d.host().actions(), ["signal 100 TERM"]);
    }

    #[test]
    fn chown_socket_only_under_runtime_dirs() {
        let f = fixture();
        let run = f.root.join("run");
        let _l = UnixListener::bind(run.join("vm.sock")).unwrap();
        let _o = UnixListener::bind(f.root.join("outside/vm.sock")).unwrap();
        std::fs::write(run.join("plain"), b"x").unwrap();
        symlink(run.join("vm.sock"), run.join("link.sock")).unwrap();
        let _t = UnixListener::bind(run.join("twice.sock")).unwrap();
        std::fs::hard_link(run.join("twice.sock"), run.join("twice2.sock")).unwrap();
        let chown = |p: PathBuf| HelperCall::ChownSocket { path: p };
        let stranger = Caller {
            uid: 4242,
            gid: 4242,
        };
        assert_eq!(
            code(f.d.call(stranger, &chown(run.join("vm.sock")))),
            HelperErrorCode::NotAllowed,
            "a socket of another uid"
        );
        reply(f.d.call(f.me, &chown(run.join("vm.sock"))));
        for (p, want) in [
            (run.join("twice.sock"), HelperErrorCode::NotAllowed),
            (run.join("plain"), HelperErrorCode::InvalidPath),
            (run.join("link.sock"), HelperErrorCode::InvalidPath),
            (f.root.join("outside/vm.sock"), HelperErrorCode::InvalidPath),
            (run.join("nope.sock"), HelperErrorCode::NotFound),
        ] {
            assert_eq!(code(f.d.call(f.me, &chown(p.clone()))), want, "{p:?}");
        }
        assert_eq!(f.d.host().actions().len(), 1);
        assert!(f.d.host().actions()[0].ends_with(&format!("{}:{}", f.me.uid, f.me.gid)));
    }

    #[test]
    fn dns_socket_binds_the_gateway() {
        let f = fixture();
        match f.d.call(f.me, &HelperCall::DnsSocket).unwrap() {
            Outcome::Socket(_) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(f.d.host().actions(), ["bind_udp 10.231.9.1:53"]);
    }

    fn egress_fixture() -> Fixture {
        let f = fixture();
        f.d.call(
            f.me,
            &HelperCall::BridgeEnsure {
                name: "bgunit0".into(),
            },
        )
        .unwrap();
        f.d.call(
            f.me,
            &HelperCall::TapCreate {
                name: "bgtap1".into(),
                owner_uid: f.me.uid,
                bridge: "bgunit0".into(),
            },
        )
        .unwrap();
        // Another allowed uid's TAP.
        f.d.host().with(|s| {
            s.links.insert(
                "bgtap2".into(),
                Link {
                    name: "bgtap2".into(),
                    kind: LinkKind::Tap,
                    master: Some("bgunit0".into()),
                    owner_uid: Some(4242),
                },
            )
        });
        f
    }

    fn allow_rules() -> banger_proto::helper::EgressRules {
        use banger_proto::helper::{EgressNet, EgressPort, EgressRuleMode, EgressRules};
        EgressRules {
            mode: EgressRuleMode::Allow,
            nets: vec![EgressNet {
                addr: "203.0.113.0".parse().unwrap(),
                prefix: 24,
            }],
            ports: vec![EgressPort {
                addr: "198.51.100.7".parse().unwrap(),
                port: 443,
            }],
        }
    }

    #[test]
    fn egress_apply_writes_the_vms_chain_and_its_taps_anti_spoofing() {
        use banger_proto::helper::{EgressRuleMode, EgressRules};
        let f = egress_fixture();
        let apply = |tap: &str, addr: &str, rules: EgressRules| HelperCall::EgressApply {
            tap: tap.into(),
            addr: addr.parse().unwrap(),
            rules,
        };
        reply(f.d.call(f.me, &apply("bgtap1", "10.231.9.7", allow_rules())));
        let script = f.d.host().with(|s| s.nft_last.clone()).unwrap();
        for want in [
            "add element ip banger vms { 10.231.9.7 : jump vm_10_231_9_7 }",
            "flush chain ip banger vm_10_231_9_7",
            "add element ip banger vm_10_231_9_7_nets { 203.0.113.0/24 }",
            "add element ip banger vm_10_231_9_7_ports { 198.51.100.7 . 443 }",
            "add rule ip banger vm_10_231_9_7 ip daddr @vm_10_231_9_7_dns accept",
            "add rule ip banger vm_10_231_9_7 reject with icmp type admin-prohibited",
            "add element bridge banger isolated { \"bgtap1\" }",
            "add rule bridge banger tap_bgtap1 ether type ip ip saddr 10.231.9.7 accept",
            "add rule bridge banger tap_bgtap1 ether type arp arp saddr ip 10.231.9.7 accept",
            "add rule bridge banger tap_bgtap1 drop",
        ] {
            assert!(script.contains(want), "{want}\n{script}");
        }
        // The DNS-learned sets are declared, never flushed by an apply.
        assert!(!script.contains("flush set ip banger vm_10_231_9_7_dns"));
        let internet = EgressRules {
            mode: EgressRuleMode::Internet,
            nets: vec![],
            ports: vec![],
        };
        reply(f.d.call(f.me, &apply("bgtap1", "10.231.9.7", internet.clone())));
        let script = f.d.host().with(|s| s.nft_last.clone()).unwrap();
        assert!(script.contains("169.254.0.0/16"), "{script}");
        assert!(script.contains("add rule ip banger vm_10_231_9_7 accept"));
        assert_eq!(
            script.matches("add element bridge banger isolated").count(),
            1,
            "only the add-then-delete: {script}"
        );

        let mut with_nets = internet.clone();
        with_nets.nets = allow_rules().nets;
        let mut too_many = allow_rules();
        too_many.ports = vec![too_many.ports[0]; 257];
        let mut host_bits = allow_rules();
        host_bits.nets[0].prefix = 16;
        let mut port0 = allow_rules();
        port0.ports[0].port = 0;
        let cases = [
            (
                apply("bgtap1", "10.231.9.1", internet.clone()),
                HelperErrorCode::InvalidArgument,
            ),
            (
                apply("bgtap1", "10.231.9.0", internet.clone()),
                HelperErrorCode::InvalidArgument,
            ),
            (
                apply("bgtap1", "10.231.9.255", internet.clone()),
                HelperErrorCode::InvalidArgument,
            ),
            (
                apply("bgtap1", "10.231.8.7", internet.clone()),
                HelperErrorCode::InvalidArgument,
            ),
            (
                apply("bgtap1", "10.231.9.7", with_nets),
                HelperErrorCode::InvalidArgument,
            ),
            (
                apply("bgtap1", "10.231.9.7", too_many),
                HelperErrorCode::InvalidArgument,
            ),
            (
                apply("bgtap1", "10.231.9.7", host_bits),
                HelperErrorCode::InvalidArgument,
            ),
            (
                apply("bgtap1", "10.231.9.7", port0),
                HelperErrorCode::InvalidArgument,
            ),
            (
                apply("bgtap2", "10.231.9.7", internet.clone()),
                HelperErrorCode::NotAllowed,
            ),
            (
                apply("bgtap3", "10.231.9.7", internet.clone()),
                HelperErrorCode::NotFound,
            ),
            (
                apply("eth0", "10.231.9.7", internet.clone()),
                HelperErrorCode::InvalidName,
            ),
            (
                apply("bgunit0", "10.231.9.7", internet),
                HelperErrorCode::InvalidName,
            ),
        ];
        let before = f.d.host().actions().len();
        for (call, want) in cases {
            assert_eq!(code(f.d.call(f.me, &call)), want, "{call:?}");
        }
        assert_eq!(
            f.d.host().actions().len(),
            before,
            "a refused call touched nft"
        );
    }

    #[test]
    fn egress_resolved_is_bounded_public_and_clamped() {
        use banger_proto::helper::EgressEntry;
        let f = egress_fixture();
        let entry = |a: &str, port: Option<u16>| EgressEntry {
            addr: a.parse().unwrap(),
            port,
        };
        let resolved = |entries: Vec<EgressEntry>, ttl: u32| HelperCall::EgressResolved {
            tap: "bgtap1".into(),
            addr: "10.231.9.7".parse().unwrap(),
            entries,
            ttl_secs: ttl,
        };
        reply(f.d.call(
            f.me,
            &resolved(
                vec![
                    entry("198.51.100.9", None),
                    entry("198.51.100.9", Some(443)),
                ],
                1,
            ),
        ));
        let script = f.d.host().with(|s| s.nft_last.clone()).unwrap();
        assert!(
            script.contains("add element ip banger vm_10_231_9_7_dns { 198.51.100.9 timeout 30s }"),
            "{script}"
        );
        assert!(script.contains(
            "add element ip banger vm_10_231_9_7_dns_ports { 198.51.100.9 . 443 timeout 30s }"
        ));
        reply(f.d.call(f.me, &resolved(vec![entry("198.51.100.9", None)], u32::MAX)));
        let script = f.d.host().with(|s| s.nft_last.clone()).unwrap();
        assert!(script.contains("timeout 86400s"), "{script}");
        let before = f.d.host().actions().len();
        for (call, want) in [
            (resolved(vec![], 60), HelperErrorCode::InvalidArgument),
            (
                resolved(vec![entry("198.51.100.9", None); 257], 60),
                HelperErrorCode::InvalidArgument,
            ),
            (
                resolved(vec![entry("198.51.100.9", Some(0))], 60),
                HelperErrorCode::InvalidArgument,
            ),
            (
                resolved(vec![entry("169.254.169.254", None)], 60),
                HelperErrorCode::InvalidArgument,
            ),
            (
                resolved(vec![entry("127.0.0.1", None)], 60),
                HelperErrorCode::InvalidArgument,
            ),
            (
                resolved(vec![entry("10.0.0.5", Some(22))], 60),
                HelperErrorCode::InvalidArgument,
            ),
        ] {
            assert_eq!(code(f.d.call(f.me, &call)), want, "{call:?}");
        }
        assert_eq!(f.d.host().actions().len(), before);
    }

    #[test]
    fn egress_clear_removes_everything_even_for_a_gone_tap() {
        let f = egress_fixture();
        let clear = |tap: &str| HelperCall::EgressClear {
            tap: tap.into(),
            addr: "10.231.9.7".parse().unwrap(),
        };
        reply(f.d.call(f.me, &clear("bgtap1")));
        let script = f.d.host().with(|s| s.nft_last.clone()).unwrap();
        for want in [
            "delete element ip banger vms { 10.231.9.7 }",
            "delete chain ip banger vm_10_231_9_7",
            "delete set ip banger vm_10_231_9_7_dns_ports",
            "delete element bridge banger taps { \"bgtap1\" }",
            "delete chain bridge banger tap_bgtap1",
        ] {
            assert!(script.contains(want), "{want}\n{script}");
        }
        reply(f.d.call(f.me, &clear("bgtap9")));
        assert_eq!(
            code(f.d.call(f.me, &clear("bgtap2"))),
            HelperErrorCode::NotAllowed
        );
        assert_eq!(
            code(f.d.call(f.me, &clear("tap0"))),
            HelperErrorCode::InvalidName
        );
    }

    #[test]
    fn calls_the_daemon_does_not_make_are_off_by_default() {
        let f = fixture_with(Vec::new());
        let run = f.root.join("run");
        let _l = UnixListener::bind(run.join("vm.sock")).unwrap();
        std::fs::write(f.root.join("data/a.img"), b"a").unwrap();
        let calls = [
            HelperCall::LoopAttach {
                path: f.root.join("data/a.img"),
                read_only: true,
            },
            HelperCall::LoopDetach {
                device: "/dev/loop0".into(),
            },
            HelperCall::DmSnapshotCreate {
                name: "banger-x".into(),
                origin: "/dev/loop0".into(),
                cow: "/dev/loop1".into(),
            },
            HelperCall::DmRemove {
                name: "banger-x".into(),
            },
            HelperCall::SignalVmm {
                pid: std::process::id(),
                signal: "TERM".into(),
            },
            HelperCall::ChownSocket {
                path: run.join("vm.sock"),
            },
            HelperCall::BridgeDelete {
                name: "bgunit0".into(),
            },
            HelperCall::NatRemove {
                subnet: "10.231.9.0/24".into(),
            },
        ];
        for call in &calls {
            let e = f.d.call(f.me, call).unwrap_err();
            assert_eq!(e.code(), HelperErrorCode::NotAllowed, "{call:?}");
            assert!(e.to_string().contains("is disabled"), "{e}");
        }
        assert!(f.d.host().actions().is_empty());
        // The daemon's calls work.
        reply(f.d.call(
            f.me,
            &HelperCall::BridgeEnsure {
                name: "bgunit0".into(),
            },
        ));
        reply(f.d.call(
            f.me,
            &HelperCall::NatEnsure {
                subnet: "10.231.9.0/24".into(),
            },
        ));
    }

    #[test]
    fn teardown_removes_taps_bridge_and_table_only() {
        let f = fixture();
        let host = f.d.host();
        for (name, kind) in [
            ("bgtap1", LinkKind::Tap),
            ("bgtap2", LinkKind::Tap),
            ("bgunit0", LinkKind::Bridge),
            ("eth0", LinkKind::Other),
            ("docker0", LinkKind::Bridge),
            ("tap0", LinkKind::Tap),
        ] {
            host.with(|s| {
                s.links.insert(
                    name.into(),
                    Link {
                        name: name.into(),
                        kind,
                        master: None,
                        owner_uid: None,
                    },
                )
            });
        }
        let removed = teardown(f.d.settings(), host).unwrap();
        assert_eq!(
            removed,
            ["bgtap1", "bgtap2", "bgunit0", "nft table ip banger"]
        );
        assert!(!host.actions().contains(&"ip_forward_restore".to_owned()));

        // Forwarding the helper turned on goes back off.
        reply(f.d.call(
            f.me,
            &HelperCall::NatEnsure {
                subnet: "10.231.9.0/24".into(),
            },
        ));
        let removed = teardown(f.d.settings(), host).unwrap();
        assert_eq!(
            removed.last().unwrap(),
            "net.ipv4.ip_forward=1 (banger turned it on; now 0)"
        );
        assert!(host.with(|s| !s.ip_forward && s.ip_forward_marker.is_none()));
        let left: Vec<String> = host.with(|s| s.links.keys().cloned().collect());
        assert_eq!(left, ["docker0", "eth0", "tap0"]);
    }
}
