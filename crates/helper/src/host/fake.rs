//! A [`Host`] for unit tests: an in-memory set of links, loop devices,
//! device-mapper names and processes, and a log of every privileged action
//! it was asked to take.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Error;
use crate::host::{Host, Link, LinkKind, ProcInfo, ProcessCheck, VmmSignal};

#[derive(Debug, Default)]
pub struct State {
    pub links: BTreeMap<String, Link>,
    pub addrs: BTreeMap<String, Vec<String>>,
    pub up: Vec<String>,
    pub nft: Option<String>,
    /// The last script applied, whatever it was.
    pub nft_last: Option<String>,
    pub ip_forward: bool,
    /// The marker `ip_forward_enable` was given, while it "exists".
    pub ip_forward_marker: Option<PathBuf>,
    pub iptables_drop: bool,
    pub iptables_chain: Option<String>,
    /// loopN -> backing file
    pub loops: BTreeMap<String, Option<PathBuf>>,
    pub dm_available: bool,
    pub dm: BTreeMap<String, String>,
    pub procs: BTreeMap<i32, ProcInfo>,
    /// Every mutating action, in order.
    pub actions: Vec<String>,
    pub fail_tap_attach: bool,
    pub fail_dm_chown: bool,
}

#[derive(Debug, Default)]
pub struct FakeHost {
    pub state: Mutex<State>,
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn actions(&self) -> Vec<String> {
        self.with(|s| s.actions.clone())
    }

    fn act(&self, action: String) {
        self.with(|s| s.actions.push(action));
    }
}

impl Host for FakeHost {
    fn links(&self) -> Result<Vec<Link>, Error> {
        Ok(self.with(|s| s.links.values().cloned().collect()))
    }

    fn link(&self, name: &str) -> Result<Option<Link>, Error> {
        Ok(self.with(|s| s.links.get(name).cloned()))
    }

    fn bridge_add(&self, name: &str) -> Result<(), Error> {
        self.act(format!("bridge_add {name}"));
        self.with(|s| {
            s.links.insert(
                name.to_owned(),
                Link {
                    name: name.to_owned(),
                    kind: LinkKind::Bridge,
                    master: None,
                    owner_uid: None,
                },
            )
        });
        Ok(())
    }

    fn addr_replace(&self, dev: &str, cidr: &str) -> Result<(), Error> {
        self.act(format!("addr_replace {dev} {cidr}"));
        self.with(|s| s.addrs.insert(dev.to_owned(), vec![cidr.to_owned()]));
        Ok(())
    }

    fn link_up(&self, name: &str) -> Result<(), Error> {
        self.act(format!("link_up {name}"));
        self.with(|s| s.up.push(name.to_owned()));
        Ok(())
    }

    fn tap_add(&self, name: &str, owner_uid: u32) -> Result<(), Error> {
        self.act(format!("tap_add {name} {owner_uid}"));
        self.with(|s| {
            s.links.insert(
                name.to_owned(),
                Link {
                    name: name.to_owned(),
                    kind: LinkKind::Tap,
                    master: None,
                    owner_uid: Some(owner_uid),
                },
            )
        });
        Ok(())
    }

    fn link_attach_up(&self, name: &str, master: &str) -> Result<(), Error> {
        self.act(format!("link_attach_up {name} {master}"));
        self.with(|s| {
            if s.fail_tap_attach {
                return Err(Error::OperationFailed("ip: attach refused".to_owned()));
            }
            if let Some(l) = s.links.get_mut(name) {
                l.master = Some(master.to_owned());
            }
            Ok(())
        })
    }

    fn link_delete(&self, name: &str) -> Result<(), Error> {
        self.act(format!("link_delete {name}"));
        self.with(|s| {
            s.links.remove(name);
            for l in s.links.values_mut() {
                if l.master.as_deref() == Some(name) {
                    l.master = None;
                }
            }
        });
        Ok(())
    }

    fn nft_apply(&self, script: &str) -> Result<(), Error> {
        self.act("nft_apply".to_owned());
        self.with(|s| {
            s.nft_last = Some(script.to_owned());
            s.nft = if script.contains("table ip banger {") {
                Some(script.to_owned())
            } else {
                None
            }
        });
        Ok(())
    }

    fn ip_forward_enable(&self, marker: &Path) -> Result<bool, Error> {
        self.act("ip_forward_enable".to_owned());
        Ok(self.with(|s| {
            let was_on = std::mem::replace(&mut s.ip_forward, true);
            if !was_on {
                s.ip_forward_marker = Some(marker.to_owned());
            }
            was_on
        }))
    }

    fn ip_forward_restore(&self, marker: &Path) -> Result<bool, Error> {
        Ok(self.with(|s| {
            if s.ip_forward_marker.as_deref() != Some(marker) {
                return false;
            }
            s.ip_forward_marker = None;
            s.ip_forward = false;
            s.actions.push("ip_forward_restore".to_owned());
            true
        }))
    }

    fn iptables_forward_drops(&self) -> Result<bool, Error> {
        Ok(self.with(|s| s.iptables_drop))
    }

    fn iptables_accept_bridge(&self, bridge: &str, subnet: &str) -> Result<(), Error> {
        self.act(format!("iptables_accept_bridge {bridge} {subnet}"));
        self.with(|s| s.iptables_chain = Some(bridge.to_owned()));
        Ok(())
    }

    fn iptables_remove(&self) -> Result<(), Error> {
        self.act("iptables_remove".to_owned());
        self.with(|s| s.iptables_chain = None);
        Ok(())
    }

    fn loop_attach(&self, file: BorrowedFd<'_>, read_only: bool) -> Result<String, Error> {
        let target = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| Error::OperationFailed(e.to_string()))?;
        self.act(format!("loop_attach {} ro={read_only}", target.display()));
        self.with(|s| {
            let n = (0..).find(|n| !s.loops.contains_key(&format!("loop{n}")));
            let name = format!("loop{}", n.unwrap_or(0));
            s.loops.insert(name.clone(), Some(target));
            Ok(format!("/dev/{name}"))
        })
    }

    fn loop_backing_file(&self, loop_name: &str) -> Result<Option<PathBuf>, Error> {
        self.with(|s| {
            s.loops
                .get(loop_name)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("no loop device /dev/{loop_name}")))
        })
    }

    fn loop_detach(&self, device: &str) -> Result<(), Error> {
        self.act(format!("loop_detach {device}"));
        let name = device.trim_start_matches("/dev/").to_owned();
        self.with(|s| s.loops.insert(name, None));
        Ok(())
    }

    fn block_sectors(&self, _kernel_name: &str) -> Result<u64, Error> {
        Ok(2048)
    }

    fn dm_available(&self) -> bool {
        self.with(|s| s.dm_available)
    }

    fn dm_exists(&self, name: &str) -> Result<bool, Error> {
        Ok(self.with(|s| s.dm.contains_key(name)))
    }

    fn dm_table(&self, name: &str) -> Result<String, Error> {
        self.with(|s| s.dm.get(name).cloned())
            .ok_or_else(|| Error::NotFound(format!("no device-mapper device {name}")))
    }

    /// Loop devices are major 7, minor N; 8:0 is a disk.
    fn block_name(&self, major: u32, minor: u32) -> Result<String, Error> {
        match (major, minor) {
            (7, n) => Ok(format!("loop{n}")),
            (8, 0) => Ok("sda".to_owned()),
            _ => Err(Error::NotFound(format!("no block device {major}:{minor}"))),
        }
    }

    fn dm_create(&self, name: &str, table: &str) -> Result<(), Error> {
        self.act(format!("dm_create {name} {table}"));
        self.with(|s| s.dm.insert(name.to_owned(), table.to_owned()));
        Ok(())
    }

    fn dm_remove(&self, name: &str) -> Result<(), Error> {
        self.act(format!("dm_remove {name}"));
        self.with(|s| s.dm.remove(name));
        Ok(())
    }

    fn dm_chown(&self, name: &str, uid: u32, gid: u32) -> Result<(), Error> {
        if self.with(|s| s.fail_dm_chown) {
            return Err(Error::OperationFailed(format!(
                "chown /dev/mapper/{name}: failed"
            )));
        }
        self.act(format!("dm_chown {name} {uid}:{gid}"));
        Ok(())
    }

    fn signal_process(
        &self,
        pid: i32,
        signal: VmmSignal,
        check: ProcessCheck<'_>,
    ) -> Result<(), Error> {
        let info = self
            .with(|s| s.procs.get(&pid).cloned())
            .ok_or_else(|| Error::NotFound(format!("no process with pid {pid}")))?;
        check(&info)?;
        self.act(format!("signal {pid} {}", signal.name()));
        Ok(())
    }

    fn chown_fd(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Error> {
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| Error::OperationFailed(e.to_string()))?;
        self.act(format!("chown {} {uid}:{gid}", target.display()));
        Ok(())
    }

    fn bind_udp(&self, addr: SocketAddrV4) -> Result<OwnedFd, Error> {
        self.act(format!("bind_udp {addr}"));
        // Any descriptor will do for the dispatch tests.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::io("bind", e))?;
        Ok(OwnedFd::from(s))
    }
}
