//! The RPC methods: one list that names each method's wire name, params
//! type and result type.
//!
//! [`for_each_method!`](crate::for_each_method) holds the list. This module
//! turns it into one marker type per method (`methods::Ping`,
//! `methods::VmCreateBegin`...), each implementing [`Method`], and into
//! [`ALL`]; other crates hand the same list to their own macro to build
//! tables from it (the daemon's dispatch table, whose entries require a
//! handler for each method, so a method without a handler does not
//! compile). [`Method`] is sealed: a method exists only through the list.
//! `docs/rpc.md` documents the list (a daemon test pins the two together),
//! `docs/schemas/rpc.json` holds every method's params and result schema
//! (`tests/schemas.rs` regenerates it) and `tests/methods.rs` pins an
//! example of each.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One RPC method: its wire name and the types of its params and result.
///
/// Implemented only by the marker types the method list declares.
pub trait Method: __private::Sealed + Send + Sync + 'static {
    /// The wire name (`"vm.create.begin"`).
    const NAME: &'static str;
    /// What the request's `params` decode to.
    type Params: Serialize + DeserializeOwned + JsonSchema + fmt::Debug + Send + 'static;
    /// What the response's `result` encodes.
    type Result: Serialize + DeserializeOwned + JsonSchema + fmt::Debug + Send + 'static;
}

#[doc(hidden)]
pub mod __private {
    /// Seals [`Method`](super::Method): only `declare_methods!` implements it.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a method of the method list",
        label = "not in the list",
        note = "a method is added to `for_each_method!` in `crates/proto/src/methods.rs`"
    )]
    pub trait Sealed {}
}

/// Hands the method list to `$callback!`, a macro of the caller's, as
/// `$(#[doc] Type = "wire.name": ParamsType => ResultType,)*`, in the
/// order `docs/rpc.md` lists them. Types are full paths; `Type` is the
/// name of the method's marker type in [`methods`](crate::methods).
///
/// ```ignore
/// macro_rules! names {
///     ($($(#[$m:meta])* $ty:ident = $name:literal: $p:ty => $r:ty,)*) => {
///         &[$($name),*]
///     };
/// }
/// let all: &[&str] = banger_proto::for_each_method!(names);
/// ```
#[macro_export]
macro_rules! for_each_method {
    ($callback:ident) => {
        $callback! {
            /// Liveness and the build handshake: the CLI sends it first on
            /// every connection.
            Ping = "ping": $crate::methods::NoParams => $crate::daemon::PingResult,
            /// What the daemon is and where its files are.
            DaemonStatus = "daemon.status": $crate::methods::NoParams => $crate::daemon::DaemonStatus,
            /// Refuse new operations, stop accepting, let requests in flight finish
            /// and exit; with `if_idle`, only when no operation runs.
            DaemonShutdown = "daemon.shutdown": $crate::daemon::ShutdownParams => $crate::daemon::ShutdownResult,
            /// Validate, then create (and boot) a VM asynchronously; the
            /// operation's id is this request's op id.
            VmCreateBegin = "vm.create.begin": $crate::vm::VmCreateParams => $crate::vm::OpView,
            /// Boot a stopped VM.
            VmStart = "vm.start": $crate::vm::VmRef => $crate::vm::VmView,
            /// Boot a stopped VM asynchronously, with stages as it goes.
            VmStartBegin = "vm.start.begin": $crate::vm::VmRef => $crate::vm::OpView,
            /// ACPI powerdown, a bounded wait, then SIGKILL.
            VmStop = "vm.stop": $crate::vm::VmRef => $crate::vm::VmView,
            /// Send a signal to the VMM and wait for it.
            VmKill = "vm.kill": $crate::vm::VmKillParams => $crate::vm::VmView,
            /// Stop, then start.
            VmRestart = "vm.restart": $crate::vm::VmRef => $crate::vm::VmView,
            /// Stop, then start, asynchronously, with stages as it goes.
            VmRestartBegin = "vm.restart.begin": $crate::vm::VmRef => $crate::vm::OpView,
            /// Stop the vCPUs; memory and processes stay as they are.
            VmPause = "vm.pause": $crate::vm::VmRef => $crate::vm::VmView,
            /// Continue a paused VM; the agent steps the guest clock.
            VmResume = "vm.resume": $crate::vm::VmRef => $crate::vm::VmView,
            /// Snapshot a VM (memory, devices, disks) asynchronously; it
            /// keeps running.
            VmSnapshotBegin = "vm.snapshot.begin": $crate::snapshot::VmSnapshotParams => $crate::vm::OpView,
            /// Roll a VM back to one of its snapshots asynchronously.
            VmRestoreBegin = "vm.restore.begin": $crate::snapshot::VmRestoreParams => $crate::vm::OpView,
            /// New VMs continuing from a running VM's current state,
            /// asynchronously; the source keeps running.
            VmForkBegin = "vm.fork.begin": $crate::snapshot::VmForkParams => $crate::vm::OpView,
            /// Remove disks, record and host-key pin; a running VM only
            /// with `force` (killed first).
            VmDelete = "vm.delete": $crate::vm::VmDeleteParams => $crate::vm::VmDeleted,
            /// One VM.
            VmShow = "vm.show": $crate::vm::VmRef => $crate::vm::VmView,
            /// Every VM.
            VmList = "vm.list": $crate::methods::NoParams => ::std::vec::Vec<$crate::vm::VmView>,
            /// Change a stopped VM (shape, published ports); disks only grow.
            VmEdit = "vm.edit": $crate::vm::VmEditParams => $crate::vm::VmView,
            /// How the CLI reaches a running VM with `ssh`.
            VmSshInfo = "vm.ssh_info": $crate::vm::VmRef => $crate::vm::SshInfo,
            /// A fresh sample from the guest agent.
            VmStats = "vm.stats": $crate::vm::VmRef => $crate::vm::VmStats,
            /// Listening TCP and UDP sockets in the guest.
            VmPorts = "vm.ports": $crate::vm::VmRef => ::std::vec::Vec<$crate::agent::ListeningPort>,
            /// Run a command in the guest through the agent.
            VmExecBegin = "vm.exec.begin": $crate::vm::ExecBeginParams => $crate::vm::ExecBegun,
            /// Input in, output since the last call out, long-polled.
            VmExecIo = "vm.exec.io": $crate::vm::ExecIoParams => $crate::vm::ExecIoResult,
            /// Copy one file, or a directory tree, either way.
            VmCp = "vm.cp": $crate::vm::CpParams => $crate::vm::CpResult,
            /// Put a host project into a running VM that has no workspace.
            VmWorkspacePush = "vm.workspace.push": $crate::workspace::WorkspacePushParams => $crate::workspace::WorkspaceView,
            /// The guest's changes to its workspace as a git patch.
            VmWorkspaceDiff = "vm.workspace.diff": $crate::vm::VmRef => $crate::workspace::WorkspaceDiff,
            /// Apply the guest's changes to the host project, only over files unchanged there.
            VmWorkspaceApply = "vm.workspace.apply": $crate::vm::VmRef => $crate::workspace::WorkspaceApplied,
            /// Push the host's changes since the base into the guest, only over files unchanged there.
            VmWorkspaceSync = "vm.workspace.sync": $crate::vm::VmRef => $crate::workspace::WorkspaceSynced,
            /// Build a Debian image asynchronously.
            ImageBuildBegin = "image.build.begin": $crate::vm::ImageBuildParams => $crate::vm::OpView,
            /// Every image.
            ImageList = "image.list": $crate::methods::NoParams => ::std::vec::Vec<$crate::vm::ImageView>,
            /// One image.
            ImageShow = "image.show": $crate::vm::NameParams => $crate::vm::ImageView,
            /// Delete an image no VM uses.
            ImageDelete = "image.delete": $crate::vm::NameParams => $crate::vm::Deleted,
            /// Pull an OCI image from a registry and make it an image,
            /// asynchronously.
            ImagePullBegin = "image.pull.begin": $crate::vm::ImagePullParams => $crate::vm::OpView,
            /// Empty the blob cache of image pulls (or say what that frees).
            ImageCachePrune = "image.cache.prune": $crate::vm::ImageCachePruneParams => $crate::vm::ImageCachePruneResult,
            /// A stopped VM's disks become a new image.
            ImagePromote = "image.promote": $crate::vm::ImagePromoteParams => $crate::vm::ImageView,
            /// Make (or remake) an image's warm template asynchronously.
            ImageWarmBegin = "image.warm.begin": $crate::vm::NameParams => $crate::vm::OpView,
            /// Every snapshot, templates included.
            SnapshotList = "snapshot.list": $crate::methods::NoParams => ::std::vec::Vec<$crate::snapshot::SnapshotView>,
            /// One snapshot.
            SnapshotShow = "snapshot.show": $crate::vm::NameParams => $crate::snapshot::SnapshotView,
            /// Delete a snapshot no VM or snapshot needs.
            SnapshotDelete = "snapshot.delete": $crate::vm::NameParams => $crate::vm::Deleted,
            /// Pull a catalog kernel asynchronously.
            KernelPullBegin = "kernel.pull.begin": $crate::vm::KernelPullParams => $crate::vm::OpView,
            /// Register a kernel the user has: its files are checked, then
            /// copied into banger's kernel store.
            KernelImport = "kernel.import": $crate::vm::KernelImportParams => $crate::vm::KernelView,
            /// The catalog, what is pulled and what is imported.
            KernelList = "kernel.list": $crate::methods::NoParams => ::std::vec::Vec<$crate::vm::KernelView>,
            /// One kernel.
            KernelShow = "kernel.show": $crate::vm::NameParams => $crate::vm::KernelView,
            /// Delete a kernel no VM uses.
            KernelDelete = "kernel.delete": $crate::vm::NameParams => $crate::vm::Deleted,
            /// An asynchronous operation's state and stages.
            OpStatus = "op.status": $crate::vm::OpStatusParams => $crate::vm::OpView,
            /// Ask an operation to stop; it rolls back and ends cancelled.
            OpCancel = "op.cancel": $crate::vm::OpRef => $crate::vm::OpView,
            /// Operations of the last hour.
            OpList = "op.list": $crate::methods::NoParams => ::std::vec::Vec<$crate::vm::OpView>,
            /// State changes and operation stages as they happen: after
            /// this answer the connection carries only `EventFrame` lines
            /// (`crate::events`).
            EventsSubscribe = "events.subscribe": $crate::events::EventsSubscribeParams => $crate::events::EventsSubscribed,
            /// What works on this host.
            Doctor = "doctor": $crate::vm::DoctorParams => $crate::vm::DoctorReport,
            /// Bridged networking: helper, bridge, TAP pool, leases.
            NetworkStatus = "network.status": $crate::methods::NoParams => $crate::daemon::NetworkStatus,
        }
    };
}

/// Declares the marker types of a method list and its [`ALL`] names; what
/// this module does with [`for_each_method!`](crate::for_each_method).
/// Exported only for the daemon's compile-fail tests, which declare a
/// method the daemon has no handler for.
#[doc(hidden)]
#[macro_export]
macro_rules! declare_methods {
    ($($(#[$meta:meta])* $ty:ident = $name:literal: $params:ty => $result:ty,)*) => {
        $(
            $(#[$meta])*
            #[doc = concat!("\n\nWire name `", $name, "`.")]
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub enum $ty {}

            // Not offered as a candidate in "not a method" errors.
            #[diagnostic::do_not_recommend]
            impl $crate::methods::__private::Sealed for $ty {}

            impl $crate::methods::Method for $ty {
                const NAME: &'static str = $name;
                type Params = $params;
                type Result = $result;
            }
        )*

        /// Every method's wire name, in list order.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

for_each_method!(declare_methods);

/// The params of a method that takes none. On the wire: `null` (or no
/// `params` at all) or `{}`; anything else is refused. Sent as `null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoParams;

impl Serialize for NoParams {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for NoParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NoParamsVisitor;

        impl<'de> Visitor<'de> for NoParamsVisitor {
            type Value = NoParams;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("no params (null or {})")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<NoParams, E> {
                Ok(NoParams)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<NoParams, E> {
                Ok(NoParams)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoParams, A::Error> {
                match map.next_key::<IgnoredAny>()? {
                    None => Ok(NoParams),
                    Some(_) => Err(serde::de::Error::custom("takes no params")),
                }
            }
        }

        d.deserialize_any(NoParamsVisitor)
    }
}

impl JsonSchema for NoParams {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NoParams".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "No params: null, absent or an empty object.",
            "type": ["null", "object"],
            "maxProperties": 0,
        })
    }
}
