//! States and modes that travel on the wire as short strings, typed.
//!
//! Each enum keeps the wire value it had when it was a plain string
//! (`"running"`, `"bridged"`, `"dm-snapshot"`...), so older peers read it
//! unchanged; `as_str` and `FromStr` give the same spelling for stores and
//! command lines.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Declares a wire enum: its variants with their wire spellings, `as_str`,
/// `Display`, `FromStr` (refusing anything else with the list of choices),
/// serde as that string (through `FromStr`, so a bad value gets the
/// same message on the wire as on a command line) and a JSON schema that
/// is a string enum of the wire spellings.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl TryFrom<String> for $name {
            type Error = UnknownValue;
            fn try_from(value: String) -> Result<Self, UnknownValue> {
                value.parse()
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> Self {
                value.as_str()
            }
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire),+
                }
            }
        }

        /// Compares with a wire spelling (`state == "running"`).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "description": $what,
                    "type": "string",
                    "enum": [$($wire),+],
                })
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($wire => Ok(Self::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.chars().take(64).collect(),
                        choices: &[$($wire),+],
                    }),
                }
            }
        }
    };
}

/// A string that is none of an enum's wire values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub choices: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}: use {}",
            self.what,
            self.value,
            self.choices.join(" or ")
        )
    }
}

impl std::error::Error for UnknownValue {}

wire_enum! {
    /// Where a VM is in its life; durable (the store keeps it).
    VmState, "vm state" {
        Creating = "creating",
        Stopped = "stopped",
        Running = "running",
        /// The VMM runs with its vCPUs stopped (`vm pause`).
        Paused = "paused",
        Error = "error",
    }
}

wire_enum! {
    /// Where an asynchronous operation is.
    OpState, "operation state" {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl OpState {
    /// True once the operation has ended, whichever way.
    pub fn is_done(self) -> bool {
        self != Self::Running
    }
}

wire_enum! {
    /// What an asynchronous operation does.
    OpKind, "operation kind" {
        VmCreate = "vm.create",
        VmStart = "vm.start",
        VmRestart = "vm.restart",
        VmSnapshot = "vm.snapshot",
        VmRestore = "vm.restore",
        VmFork = "vm.fork",
        ImageBuild = "image.build",
        ImageWarm = "image.warm",
        ImagePull = "image.pull",
        KernelPull = "kernel.pull",
    }
}

wire_enum! {
    /// Why the daemon ended an event stream.
    EndReason, "stream end reason" {
        /// The subscriber fell further behind than the daemon holds
        /// events for; resume with `since`, and re-read the lists if the
        /// answer is not `complete`.
        Lagged = "lagged",
        /// The subscriber stopped reading; the daemon does not queue for it.
        Stalled = "stalled",
        /// The daemon is stopping.
        Shutdown = "shutdown",
    }
}

wire_enum! {
    /// Which kind of record changed.
    ObjectKind, "object kind" {
        Vm = "vm",
        Image = "image",
        Kernel = "kernel",
        Snapshot = "snapshot",
    }
}

wire_enum! {
    /// How a record changed.
    ObjectAction, "object action" {
        Created = "created",
        Updated = "updated",
        Deleted = "deleted",
    }
}

wire_enum! {
    /// Why a snapshot exists (docs/snapshots.md).
    SnapshotKind, "snapshot kind" {
        /// Taken by `vm snapshot`; kept until deleted.
        User = "user",
        /// Taken by `vm fork` as the forks' common base; deleted with the
        /// last VM that uses it.
        Fork = "fork",
        /// An image's warm template: a VM booted to agent-ready with the
        /// default shape; rebuilt when anything it was made from changes.
        Template = "template",
    }
}

wire_enum! {
    /// How a VM is networked (docs/networking.md).
    NetworkMode, "network" {
        /// A TAP on banger's bridge (needs banger-helper).
        Bridged = "bridged",
        /// The VMM's user-mode network, ports forwarded from loopback.
        User = "user",
    }
}

wire_enum! {
    /// How guest code runs.
    Accel, "accelerator" {
        Kvm = "kvm",
        Tcg = "tcg",
    }
}

wire_enum! {
    /// The accelerator `vm create` will use, as `doctor` reports it.
    PlannedAccel, "accelerator" {
        Kvm = "kvm",
        Tcg = "tcg",
        /// Not known until the first VM start probes KVM.
        Undecided = "undecided",
    }
}

wire_enum! {
    /// Which VMM runs a VM.
    Backend, "backend" {
        Qemu = "qemu",
        Firecracker = "firecracker",
    }
}

wire_enum! {
    /// How a VM's root disk was made from its image (docs/vms.md).
    DiskStrategy, "disk strategy" {
        /// A qcow2 overlay backed by the image (QEMU only).
        Qcow2 = "qcow2",
        /// A reflink clone (btrfs, XFS).
        Reflink = "reflink",
        /// A device-mapper snapshot over loop devices.
        DmSnapshot = "dm-snapshot",
        /// A sparse copy: the last resort.
        Copy = "copy",
    }
}

wire_enum! {
    /// What a VM's start waits for once its VMM runs (docs/vms.md,
    /// "What a start waits for"); recorded per VM, so every later start
    /// waits for the same.
    WaitFor, "wait" {
        /// Nothing: the start returns once the VMM process is up. For
        /// kernels and guests that run neither banger's agent nor sshd.
        None = "none",
        /// The guest agent's hello and health check.
        Agent = "agent",
        /// The guest agent (when the image has one), then sshd's banner.
        Ssh = "ssh",
    }
}

wire_enum! {
    /// The outcome of one `doctor` check.
    CheckStatus, "check status" {
        Ok = "ok",
        Warn = "warn",
        Fail = "fail",
    }
}

wire_enum! {
    /// A published port's transport.
    PortProto, "protocol" {
        Tcp = "tcp",
        Udp = "udp",
    }
}

/// A published port: `HOST:GUEST`, or `HOST:GUEST/udp` (`/tcp` is read
/// too). On the wire and in the store it is that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublishSpec {
    pub host: u16,
    pub guest: u16,
    pub proto: PortProto,
}

impl PublishSpec {
    pub fn is_udp(self) -> bool {
        self.proto == PortProto::Udp
    }
}

/// A publish spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPublish(pub String);

impl fmt::Display for BadPublish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid publish {:?}: use HOST:GUEST or HOST:GUEST/udp with ports 1-65535",
            self.0
        )
    }
}

impl std::error::Error for BadPublish {}

impl FromStr for PublishSpec {
    type Err = BadPublish;
    fn from_str(spec: &str) -> Result<Self, BadPublish> {
        let bad = || BadPublish(spec.chars().take(64).collect());
        let (ports, proto) = match spec.split_once('/') {
            Some((p, "tcp")) => (p, PortProto::Tcp),
            Some((p, "udp")) => (p, PortProto::Udp),
            Some(_) => return Err(bad()),
            None => (spec, PortProto::Tcp),
        };
        let (h, g) = ports.split_once(':').ok_or_else(bad)?;
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
        Ok(Self {
            host: port(h).ok_or_else(bad)?,
            guest: port(g).ok_or_else(bad)?,
            proto,
        })
    }
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.guest)?;
        if self.is_udp() {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for PublishSpec {
    type Error = BadPublish;
    fn try_from(value: String) -> Result<Self, BadPublish> {
        value.parse()
    }
}

impl From<PublishSpec> for String {
    fn from(value: PublishSpec) -> Self {
        value.to_string()
    }
}

impl JsonSchema for PublishSpec {
    fn schema_name() -> Cow<'static, str> {
        "PublishSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A published port: HOST:GUEST or HOST:GUEST/udp (/tcp is read too), ports 1-65535.",
            "type": "string",
            "pattern": "^[0-9]{1,5}:[0-9]{1,5}(/(tcp|udp))?$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip() {
        for s in VmState::ALL {
            assert_eq!(s.as_str().parse::<VmState>().unwrap(), *s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert_eq!(DiskStrategy::DmSnapshot.as_str(), "dm-snapshot");
        assert_eq!(OpKind::VmCreate.to_string(), "vm.create");
        let err = "wifi".parse::<NetworkMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown network \"wifi\": use bridged or user"
        );
    }

    #[test]
    fn publish_specs() {
        let p: PublishSpec = "8080:80".parse().unwrap();
        assert_eq!((p.host, p.guest, p.proto), (8080, 80, PortProto::Tcp));
        assert!("53:53/udp".parse::<PublishSpec>().unwrap().is_udp());
        assert_eq!(
            "53:53/tcp".parse::<PublishSpec>().unwrap().to_string(),
            "53:53"
        );
        for bad in ["80", "0:80", "a:b", "1:2/sctp", "70000:1", ""] {
            let e = bad.parse::<PublishSpec>().unwrap_err();
            assert!(e.to_string().starts_with("invalid publish"), "{bad}");
        }
        let json = serde_json::to_string(&vec![p]).unwrap();
        assert_eq!(json, r#"["8080:80"]"#);
        let back: Vec<PublishSpec> = serde_json::from_str(r#"["1:2/udp"]"#).unwrap();
        assert!(back[0].is_udp());
    }
}
