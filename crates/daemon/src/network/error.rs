use std::path::PathBuf;

use banger_proto::PortProto;

use crate::helper_client::HelperClientError;

/// What can go wrong with a VM's network (bridged or user mode).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Bridged networking was asked for and banger-helper does not answer.
    #[error(
        "bridged networking needs banger-helper, which does not answer at {} \
         (install it with `sudo banger system install`, or use --network user)",
        socket.display()
    )]
    NoHelper { socket: PathBuf },
    /// A call to banger-helper failed; `what` says what it was for.
    #[error("{what}")]
    Helper {
        what: String,
        #[source]
        source: HelperClientError,
    },
    #[error("banger-helper answered {call} with {reply}")]
    UnexpectedReply { call: &'static str, reply: String },
    #[error("banger-helper reports a bad subnet")]
    BadSubnet(#[source] super::subnet::SubnetError),
    #[error("every address in {subnet} is leased; delete a vm first")]
    AddressesExhausted { subnet: String },
    #[error("stored lease {0:?} is not an address")]
    BadLease(String),
    #[error("no free tap device name")]
    NoTapName,
    /// A host port something else listens on.
    #[error("host port {port}/{proto} is already in use")]
    PortInUse { port: u16, proto: PortProto },
    /// A host port another VM publishes while it runs.
    #[error("host port {port}/{proto} is already published by vm {vm}")]
    PortPublished {
        port: u16,
        proto: PortProto,
        vm: String,
    },
    /// A host port a VM being created right now publishes.
    #[error("host port {port}/{proto} is taken by another vm being created")]
    PortReserved { port: u16, proto: PortProto },
    #[error("publishing {port}/udp needs user-mode networking: add --network user")]
    UdpNeedsUserMode { port: u16 },
    #[error("find a free loopback port")]
    NoFreePort(#[source] std::io::Error),
    #[error("serve host port {port}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] banger_store::StoreError),
}
