//! `banger-helper`, the only privileged process of banger: a small root
//! service that does, for the daemon, exactly the allow-listed operations
//! of [`banger_proto::helper::HelperCall`] — TAP devices, banger's bridge,
//! NAT in banger's own nftables table, loop devices and device-mapper
//! snapshots for files in banger's data dirs, signals to banger's VMM
//! processes, chown of sockets in banger's runtime dirs, and a DNS socket
//! on the bridge's gateway address.
//!
//! - [`config`] loads `/etc/banger/helper.json` into checked [`Settings`].
//! - [`validate`] holds the allow-list rules as pure functions, and
//!   [`safepath`] opens a caller's path without following symlinks.
//! - [`host`] is the seam for privileged actions: the [`host::Host`] trait
//!   and [`host::SystemHost`], which runs `ip`, `nft`, `losetup` and
//!   `dmsetup` (all command invocations live in [`host::system`]).
//! - [`features`] turns off the calls the daemon does not make unless the
//!   config enables them.
//! - [`dispatch`] checks one call and carries it out on a `Host`;
//!   [`teardown`] removes everything the helper made.
//! - [`server`] listens, checks each caller's uid with `SO_PEERCRED`,
//!   frames and parses requests and logs one line per call.
//! - [`client`] is the one client of the protocol, for the daemon, the
//!   CLI's `banger system` commands and the tests.
//!
//! Synchronous on purpose: a thread per connection, a handful of short
//! commands per call. See `docs/helper.md` for the protocol and rules.

pub mod client;
pub mod config;
pub mod dispatch;
pub mod egress;
mod error;
pub mod features;
pub mod host;
pub mod logging;
pub mod safepath;
pub mod server;
pub mod validate;

pub use banger_proto::helper::{DEFAULT_HELPER_CONFIG, DEFAULT_HELPER_SOCKET};
pub use config::{Settings, Subnet, load};
pub use dispatch::{Caller, Dispatcher, Outcome, teardown};
pub use error::Error;
pub use server::{ServeOptions, run_until_signalled};

/// Whether the effective uid is root (the helper refuses to serve otherwise).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}
