//! The seam for privileged actions. [`Host`] is everything the helper does
//! to the machine once a call has passed validation; [`SystemHost`] does it
//! for real (see [`system`] for why it runs `ip`, `nft`, `losetup` and
//! `dmsetup`), and the dispatch tests use a fake that records what it was
//! asked.

use std::net::SocketAddrV4;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::Error;

pub mod system;

#[cfg(test)]
pub(crate) mod fake;

pub use system::SystemHost;

/// What kind of network interface a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    /// A TUN or TAP device.
    Tap,
    Other,
}

/// One network interface as the helper needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    /// The bridge it is attached to.
    pub master: Option<String>,
    /// A TAP's owner uid, when it has one.
    pub owner_uid: Option<u32>,
}

/// The signals a VMM may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmSignal {
    Term,
    Kill,
    Int,
    Hup,
    Quit,
    Usr1,
    Usr2,
}

impl VmmSignal {
    pub const ALL: [Self; 7] = [
        Self::Term,
        Self::Kill,
        Self::Int,
        Self::Hup,
        Self::Quit,
        Self::Usr1,
        Self::Usr2,
    ];

    /// The name on the wire (`TERM`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "TERM",
            Self::Kill => "KILL",
            Self::Int => "INT",
            Self::Hup => "HUP",
            Self::Quit => "QUIT",
            Self::Usr1 => "USR1",
            Self::Usr2 => "USR2",
        }
    }
}

/// What the helper reads about a process before signalling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// `/proc/PID/exe`, unreadable for kernel threads and zombies.
    pub exe: Option<PathBuf>,
    /// `/proc/PID/cmdline`, split at NULs.
    pub argv: Vec<String>,
    /// The real uid (`/proc/PID/status`).
    pub ruid: u32,
}

/// A policy check run on a process between finding it and signalling it.
pub type ProcessCheck<'a> = &'a dyn Fn(&ProcInfo) -> Result<(), Error>;

/// Privileged actions. Arguments have been validated by the caller; an
/// implementation only reports what the host said. Failures are
/// [`Error::OperationFailed`] with the tool's message unless noted.
pub trait Host: Send + Sync {
    /// Every interface of the helper's network namespace.
    fn links(&self) -> Result<Vec<Link>, Error>;
    /// One interface, `None` when it does not exist.
    fn link(&self, name: &str) -> Result<Option<Link>, Error>;
    fn bridge_add(&self, name: &str) -> Result<(), Error>;
    /// Gives `dev` the address `cidr` (`10.77.0.1/24`), replacing it if set.
    fn addr_replace(&self, dev: &str, cidr: &str) -> Result<(), Error>;
    fn link_up(&self, name: &str) -> Result<(), Error>;
    /// A persistent TAP device owned by `owner_uid`.
    fn tap_add(&self, name: &str, owner_uid: u32) -> Result<(), Error>;
    /// Attaches `name` to the bridge `master` and brings it up.
    fn link_attach_up(&self, name: &str, master: &str) -> Result<(), Error>;
    fn link_delete(&self, name: &str) -> Result<(), Error>;
    /// Applies an nftables script atomically (`nft -f -`).
    fn nft_apply(&self, script: &str) -> Result<(), Error>;
    /// Turns IPv4 forwarding on; returns whether it was already on. When
    /// it was off, creates `marker` first (removed again if the switch
    /// fails), so [`Host::ip_forward_restore`] knows the helper did it.
    fn ip_forward_enable(&self, marker: &Path) -> Result<bool, Error>;
    /// When `marker` exists: turns IPv4 forwarding off and removes
    /// `marker`; returns whether it did. Without `marker` it leaves
    /// forwarding as it is (someone else turned it on).
    fn ip_forward_restore(&self, marker: &Path) -> Result<bool, Error>;
    /// Whether `iptables` is installed and its FORWARD policy is DROP.
    fn iptables_forward_drops(&self) -> Result<bool, Error>;
    /// Accepts forwarding from `bridge` with a source in `subnet`, and to
    /// `bridge` for established or related connections, in banger's own
    /// iptables chain, jumped to from the end of FORWARD (idempotent).
    fn iptables_accept_bridge(&self, bridge: &str, subnet: &str) -> Result<(), Error>;
    /// Removes banger's iptables chain and its jump, if present.
    fn iptables_remove(&self) -> Result<(), Error>;
    /// Attaches the open file to a free loop device; returns `/dev/loopN`.
    fn loop_attach(&self, file: BorrowedFd<'_>, read_only: bool) -> Result<String, Error>;
    /// The backing file of `loopN` as the kernel reports it; `None` when
    /// the device exists but is not attached; [`Error::NotFound`] when
    /// there is no such device.
    fn loop_backing_file(&self, loop_name: &str) -> Result<Option<PathBuf>, Error>;
    fn loop_detach(&self, device: &str) -> Result<(), Error>;
    /// Size of a block device in 512-byte sectors.
    fn block_sectors(&self, kernel_name: &str) -> Result<u64, Error>;
    /// Whether device-mapper can be used (`/dev/mapper/control`).
    fn dm_available(&self) -> bool;
    fn dm_exists(&self, name: &str) -> Result<bool, Error>;
    /// The device-mapper table of `name` (`dmsetup table NAME`), devices
    /// shown as `MAJOR:MINOR`.
    fn dm_table(&self, name: &str) -> Result<String, Error>;
    /// The kernel name of the block device `major:minor` (`loop3`),
    /// [`Error::NotFound`] when there is none.
    fn block_name(&self, major: u32, minor: u32) -> Result<String, Error>;
    /// `dmsetup create NAME --table TABLE`.
    fn dm_create(&self, name: &str, table: &str) -> Result<(), Error>;
    fn dm_remove(&self, name: &str) -> Result<(), Error>;
    /// Gives the device node of `name` (`/dev/mapper/NAME`) to `uid:gid`.
    fn dm_chown(&self, name: &str, uid: u32, gid: u32) -> Result<(), Error>;
    /// Finds `pid`, runs `check` on what it reads about it and sends
    /// `signal` only if the check passes, to that same process even if the
    /// pid is reused meanwhile. [`Error::NotFound`] when there is no such
    /// process.
    fn signal_process(
        &self,
        pid: i32,
        signal: VmmSignal,
        check: ProcessCheck<'_>,
    ) -> Result<(), Error>;
    /// Gives the file behind `fd` (an `O_PATH` descriptor) to `uid:gid`.
    fn chown_fd(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Error>;
    /// A UDP socket bound to `addr`.
    fn bind_udp(&self, addr: SocketAddrV4) -> Result<OwnedFd, Error>;
}
