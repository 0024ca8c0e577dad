//! The daemon's DNS server: `NAME.vm` resolves to a VM's bridged address,
//! from the host and from guests (docs/dns.md).
//!
//! One UDP socket, bound by `banger-helper` to port 53 on the bridge's
//! gateway address and handed to the unprivileged daemon with `SCM_RIGHTS`
//! (the helper's `dns_socket` call; see [`socket_from_fd`]). [`serve_with`]
//! reads datagrams from it until its shutdown token fires:
//!
//! - A question for `vm` or a name under it is answered here, with AA set:
//!   `NAME.vm` type A (or ANY) gets the address [`VmResolver::lookup`]
//!   returns, TTL [`VM_TTL`]; other types for a known VM, and every type
//!   for `vm` itself, get NOERROR with no answers; an unknown VM (or a
//!   deeper name such as `a.b.vm`) gets NXDOMAIN. Negative answers carry no
//!   SOA, so resolvers do not cache them (RFC 2308 §5): a VM that appears a
//!   moment after a failed lookup resolves at once.
//! - Any other name is forwarded, as the client's raw bytes, to the
//!   upstream servers in order (the first that answers within
//!   [`DnsConfig::upstream_timeout`] wins), each forward in its own task so
//!   a slow upstream never delays local answers. The answer is relayed
//!   untouched except for its id: upstreams see a fresh random id from a
//!   fresh ephemeral port, and the client gets its own id back. When every
//!   upstream fails, when there are none, or when
//!   [`DnsConfig::max_in_flight`] forwards are already waiting, the client
//!   gets SERVFAIL.
//! - A QUERY with a question count other than one gets FORMERR (RFC 9619),
//!   as does a question that does not parse; another opcode gets NOTIMP.
//!   Responses, and datagrams too short for a header, are dropped. No
//!   packet stops the loop.
//!
//! Only the header and the question are parsed (with `hickory-proto`, its
//! default features off), so an EDNS option or a record the parser does not
//! know never keeps a name from being forwarded. Local answers carry no OPT
//! record; clients treat that as "no EDNS", which is all a five-byte A
//! record needs. UDP only: an upstream answer with TC set is relayed as is,
//! and the client's retry over TCP finds nothing listening.
//!
//! `hickory-proto` is held at 0.25: 0.26 declares `rust-version = 1.88`,
//! above the workspace's 1.85.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use banger_proto::helper::{EgressEntry, MAX_EGRESS_RESOLVED_PER_CALL};
use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The port nameservers listen on; upstreams from resolv.conf use it.
pub const DNS_PORT: u16 = 53;

/// The pseudo top-level domain banger answers for.
pub const VM_DOMAIN: &str = "vm";

/// TTL of a `NAME.vm` A record, in seconds: short, because a VM's address
/// goes away with it.
pub const VM_TTL: u32 = 5;

/// A DNS header is always 12 bytes.
const HEADER_LEN: usize = 12;

/// The largest UDP payload; upstream answers with EDNS can come close.
const MAX_DATAGRAM: usize = 65_535;

/// How long to pause after a failing `recv_from`, so a persistent error
/// does not spin the loop.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Maps a VM name to its bridged address.
///
/// Called on the server's receive loop for every `.vm` question, so it
/// must be quick and must not block (a read of an in-memory map).
pub trait VmResolver: Send + Sync + Debug {
    /// `name` is the label before `.vm`, lowercased (`web` for `WEB.vm.`).
    fn lookup(&self, name: &str) -> Option<Ipv4Addr>;

    /// What the client at `client` may ask beyond `.vm` (its VM's egress
    /// policy; [`DnsPolicy::Forward`] for the host). Quick, non-blocking.
    fn policy(&self, client: IpAddr) -> DnsPolicy {
        let _ = client;
        DnsPolicy::Forward
    }

    /// Lets the VM at `client` reach `entries` for `ttl_secs` (through the
    /// helper's `egress_resolved`); called before an answer for an allowed
    /// name is relayed. An error keeps the answer from the client.
    fn learn(
        &self,
        client: IpAddr,
        entries: Vec<EgressEntry>,
        ttl_secs: u32,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let _ = (client, entries, ttl_secs);
        Box::pin(async { Ok(()) })
    }
}

/// What the server does with a name outside `.vm` for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsPolicy {
    /// Forward every name (egress `internet` or `open`, and the host).
    Forward,
    /// Refuse every name (egress `none`): only `NAME.vm` is answered.
    LocalOnly,
    /// Forward only the names these cover, refuse the rest; an answer's A
    /// records are learned ([`VmResolver::learn`]) before it is relayed.
    Allow(Vec<AllowedName>),
}

/// One name of an `allow=` list: `example.com`, or `*.example.com` for
/// every name under it; all ports, or only `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedName {
    pub pattern: String,
    pub port: Option<u16>,
}

impl AllowedName {
    /// `name` is lowercased, without its trailing dot.
    pub fn covers(&self, name: &str) -> bool {
        match self.pattern.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => name == self.pattern,
        }
    }
}

/// The ports `name` is allowed on under `allowed` (`None`: every port),
/// or nothing when no entry covers it.
fn allowed_ports(allowed: &[AllowedName], name: &str) -> Option<Vec<Option<u16>>> {
    let mut ports: Vec<Option<u16>> = allowed
        .iter()
        .filter(|a| a.covers(name))
        .map(|a| a.port)
        .collect();
    if ports.is_empty() {
        return None;
    }
    if ports.contains(&None) {
        return Some(vec![None]);
    }
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

/// The public A records of `answer` as entries for `ports`, and the
/// smallest TTL among them. `None` when the answer does not parse.
fn learned_entries(answer: &[u8], ports: &[Option<u16>]) -> Option<(Vec<EgressEntry>, u32)> {
    let message = Message::from_vec(answer).ok()?;
    let mut entries = Vec::new();
    let mut ttl = u32::MAX;
    for record in message.answers() {
        let RData::A(a) = record.data() else {
            continue;
        };
        if !banger_helper::egress::is_public(a.0) {
            continue;
        }
        ttl = ttl.min(record.ttl());
        for port in ports {
            if entries.len() < MAX_EGRESS_RESOLVED_PER_CALL {
                entries.push(EgressEntry {
                    addr: a.0,
                    port: *port,
                });
            }
        }
    }
    Some((entries, ttl))
}

/// What [`serve`] needs besides its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Only clients with a source address in this subnet (banger's own)
    /// are answered, and, with [`Self::admit_host`], the host itself;
    /// `None` answers everyone.
    pub clients: Option<crate::network::Subnet>,
    /// Also answer queries from the host's own addresses (its resolver may
    /// pick any of them as the source). The kernel drops packets that
    /// arrive from outside with a local source address, so these are the
    /// host's own.
    pub admit_host: bool,
    /// Servers that answer every name outside `.vm`, tried in order. Empty:
    /// such names get SERVFAIL.
    pub upstreams: Vec<SocketAddr>,
    /// How long to wait for one upstream before trying the next.
    pub upstream_timeout: Duration,
    /// Forwards waiting for an upstream at once; a query past this gets
    /// SERVFAIL straight away.
    pub max_in_flight: usize,
}

impl DnsConfig {
    /// The defaults with these upstreams.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            ..Self::default()
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            clients: None,
            admit_host: true,
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_secs(2),
            max_in_flight: 256,
        }
    }
}

/// Turns the descriptor from the helper's `dns_socket` call into a tokio
/// socket. Must be called within a tokio runtime.
pub fn socket_from_fd(fd: OwnedFd) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    // Fails (ENOTSOCK) if the descriptor is not a socket at all.
    socket.local_addr()?;
    UdpSocket::from_std(socket)
}

/// Answers DNS queries on `socket` until `shutdown` fires, forwarding
/// names outside `.vm` to `upstreams`; [`serve_with`] with the default
/// [`DnsConfig`].
pub async fn serve(
    socket: UdpSocket,
    resolver: Arc<dyn VmResolver>,
    upstreams: Vec<SocketAddr>,
    shutdown: CancellationToken,
) {
    serve_with(socket, resolver, DnsConfig::new(upstreams), shutdown).await;
}

/// Answers DNS queries on `socket` until `shutdown` fires, then waits for
/// the forwards in flight to stop (they watch the same token).
pub async fn serve_with(
    socket: UdpSocket,
    resolver: Arc<dyn VmResolver>,
    config: DnsConfig,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    let config = Arc::new(config);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let tracker = TaskTracker::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    if let Ok(addr) = socket.local_addr() {
        tracing::debug!(%addr, upstreams = ?config.upstreams, "DNS server listening");
    }
    loop {
        let (len, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS receive failed");
                    tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let packet = buf.get(..len).unwrap_or_default();
        let admitted = match (config.clients, peer.ip().to_canonical()) {
            (None, _) => true,
            (Some(subnet), IpAddr::V4(ip)) if subnet.contains(ip) => true,
            (Some(_), ip) => config.admit_host && is_host_address(ip),
        };
        if !admitted {
            tracing::debug!(%peer, "DNS query from outside banger's subnet; dropped");
            continue;
        }
        let has_upstreams = !config.upstreams.is_empty();
        let (header, query) = match classify(packet, resolver.as_ref(), has_upstreams) {
            Action::Ignore => continue,
            Action::Reply(reply) => {
                send(&socket, &reply, peer).await;
                continue;
            }
            Action::Forward { header, query } => (header, query),
        };
        let ports = match resolver.policy(peer.ip()) {
            DnsPolicy::Forward => None,
            DnsPolicy::LocalOnly => {
                reply_refused(&socket, &header, &query, peer, "egress none").await;
                continue;
            }
            DnsPolicy::Allow(allowed) => {
                let name = query.name().to_ascii();
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                match allowed_ports(&allowed, &name) {
                    Some(ports) => Some(ports),
                    None => {
                        reply_refused(&socket, &header, &query, peer, "not on the allow list")
                            .await;
                        continue;
                    }
                }
            }
        };
        if !has_upstreams {
            reply_servfail(&socket, &header, &query, peer, false, "no upstream").await;
            continue;
        }
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            reply_servfail(&socket, &header, &query, peer, true, "too many forwards").await;
            continue;
        };
        let packet = packet.to_vec();
        let socket = Arc::clone(&socket);
        let config = Arc::clone(&config);
        let shutdown = shutdown.clone();
        let resolver = Arc::clone(&resolver);
        tracker.spawn(async move {
            let _permit = permit;
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return,
                answer = forward(&packet, &config.upstreams, config.upstream_timeout) => answer,
            };
            let answer = match (answer, ports) {
                (Some(answer), Some(ports)) => {
                    learn(resolver.as_ref(), peer.ip(), &answer, &ports, &query)
                        .await
                        .then_some(answer)
                }
                (answer, _) => answer,
            };
            match answer {
                Some(answer) => {
                    tracing::debug!(
                        name = %query.name(),
                        qtype = %query.query_type(),
                        rcode = %rcode_of(&answer),
                        "DNS query forwarded"
                    );
                    send(&socket, &answer, peer).await;
                }
                None => {
                    reply_servfail(&socket, &header, &query, peer, true, "no upstream answered")
                        .await
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Whether `ip` is one of this host's own addresses: binding to it works
/// only then (no `IP_FREEBIND`).
fn is_host_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Nameservers named by resolv.conf `text`, on port 53, in order and
/// without duplicates, leaving out `exclude` (our own listening addresses,
/// so a host resolver that points at us does not make a forwarding loop).
///
/// Loopback stub resolvers (systemd-resolved's 127.0.0.53) are kept: the
/// daemon runs in the host's network namespace, where they answer.
/// Addresses with an IPv6 zone (`fe80::1%eth0`) are skipped.
pub fn upstreams_from_resolv_conf(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    let mut upstreams = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let ip = ip.to_canonical();
        if exclude.iter().any(|e| e.to_canonical() == ip) {
            continue;
        }
        let addr = SocketAddr::new(ip, DNS_PORT);
        if !upstreams.contains(&addr) {
            upstreams.push(addr);
        }
    }
    upstreams
}

/// What to do with one datagram.
#[derive(Debug)]
enum Action {
    Ignore,
    Reply(Vec<u8>),
    Forward { header: Header, query: Query },
}

/// Decides about one datagram without doing any I/O.
fn classify(packet: &[u8], resolver: &dyn VmResolver, has_upstreams: bool) -> Action {
    if packet.len() < HEADER_LEN {
        tracing::debug!(
            len = packet.len(),
            "DNS packet shorter than a header; dropped"
        );
        return Action::Ignore;
    }
    let mut decoder = BinDecoder::new(packet);
    let Ok(header) = Header::read(&mut decoder) else {
        return Action::Ignore;
    };
    if header.message_type() == MessageType::Response {
        tracing::debug!(
            id = header.id(),
            "DNS response received as a query; dropped"
        );
        return Action::Ignore;
    }
    if header.op_code() != OpCode::Query {
        tracing::debug!(op_code = %header.op_code(), rcode = %ResponseCode::NotImp, "DNS opcode not implemented");
        return reply_or_ignore(
            &header,
            None,
            ResponseCode::NotImp,
            None,
            false,
            has_upstreams,
        );
    }
    if header.query_count() != 1 {
        tracing::debug!(questions = header.query_count(), rcode = %ResponseCode::FormErr, "DNS query without exactly one question");
        return reply_or_ignore(
            &header,
            None,
            ResponseCode::FormErr,
            None,
            false,
            has_upstreams,
        );
    }
    let query = match Query::read(&mut decoder) {
        Ok(query) => query,
        Err(e) => {
            tracing::debug!(error = %e, rcode = %ResponseCode::FormErr, "DNS question does not parse");
            return reply_or_ignore(
                &header,
                None,
                ResponseCode::FormErr,
                None,
                false,
                has_upstreams,
            );
        }
    };
    let (rcode, address) = match vm_label(query.name()) {
        VmName::Outside => return Action::Forward { header, query },
        VmName::Apex => (ResponseCode::NoError, None),
        VmName::Unknown => (ResponseCode::NXDomain, None),
        VmName::Vm(label) => match resolver.lookup(&label) {
            None => (ResponseCode::NXDomain, None),
            Some(ip) => {
                let wants_a = matches!(query.query_type(), RecordType::A | RecordType::ANY)
                    && matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
                (ResponseCode::NoError, wants_a.then_some(ip))
            }
        },
    };
    tracing::debug!(
        name = %query.name(),
        qtype = %query.query_type(),
        rcode = %rcode,
        answer = ?address,
        "DNS query answered"
    );
    reply_or_ignore(&header, Some(&query), rcode, address, true, has_upstreams)
}

/// Where a question's name falls relative to `.vm`.
#[derive(Debug, PartialEq, Eq)]
enum VmName {
    /// Not `vm` nor under it: forward.
    Outside,
    /// `vm` itself.
    Apex,
    /// Under `vm` but not a VM name (`a.b.vm`, a label that is not UTF-8).
    Unknown,
    /// `NAME.vm`: the lowercased `NAME`.
    Vm(String),
}

fn vm_label(name: &Name) -> VmName {
    let mut labels = name.iter().rev();
    match labels.next() {
        Some(last) if last.eq_ignore_ascii_case(VM_DOMAIN.as_bytes()) => {}
        _ => return VmName::Outside,
    }
    let Some(label) = labels.next() else {
        return VmName::Apex;
    };
    if labels.next().is_some() {
        return VmName::Unknown;
    }
    match std::str::from_utf8(label) {
        Ok(label) => VmName::Vm(label.to_ascii_lowercase()),
        Err(_) => VmName::Unknown,
    }
}

/// Our own response to `header`: the question echoed as asked (0x20 case
/// included), at most one A record.
fn response(
    header: &Header,
    query: Option<&Query>,
    rcode: ResponseCode,
    address: Option<Ipv4Addr>,
    authoritative: bool,
    recursion_available: bool,
) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut reply_header = Header::response_from_request(header);
    reply_header
        .set_authoritative(authoritative)
        .set_recursion_available(recursion_available)
        .set_response_code(rcode);
    let mut message = Message::new();
    message.set_header(reply_header);
    if let Some(query) = query {
        message.add_query(query.clone());
        if let Some(ip) = address {
            message.add_answer(Record::from_rdata(
                query.name().clone(),
                VM_TTL,
                RData::A(A(ip)),
            ));
        }
    }
    message.to_vec()
}

fn reply_or_ignore(
    header: &Header,
    query: Option<&Query>,
    rcode: ResponseCode,
    address: Option<Ipv4Addr>,
    authoritative: bool,
    recursion_available: bool,
) -> Action {
    match response(
        header,
        query,
        rcode,
        address,
        authoritative,
        recursion_available,
    ) {
        Ok(bytes) => Action::Reply(bytes),
        Err(e) => {
            tracing::debug!(error = %e, "DNS response does not encode; dropped");
            Action::Ignore
        }
    }
}

async fn reply_servfail(
    socket: &UdpSocket,
    header: &Header,
    query: &Query,
    peer: SocketAddr,
    recursion_available: bool,
    why: &str,
) {
    tracing::debug!(
        name = %query.name(),
        qtype = %query.query_type(),
        rcode = %ResponseCode::ServFail,
        why,
        "DNS query not forwarded"
    );
    let Ok(reply) = response(
        header,
        Some(query),
        ResponseCode::ServFail,
        None,
        false,
        recursion_available,
    ) else {
        return;
    };
    send(socket, &reply, peer).await;
}

/// Adds the public A records of an answer for an allowed name to the
/// client's egress sets; false (the answer is withheld, the client gets
/// SERVFAIL) when that fails or the answer does not parse.
async fn learn(
    resolver: &dyn VmResolver,
    client: IpAddr,
    answer: &[u8],
    ports: &[Option<u16>],
    query: &Query,
) -> bool {
    let Some((entries, ttl)) = learned_entries(answer, ports) else {
        tracing::warn!(name = %query.name(), "DNS answer for an allowed name does not parse; withheld");
        return false;
    };
    if entries.is_empty() {
        return true;
    }
    let count = entries.len();
    match resolver.learn(client, entries, ttl).await {
        Ok(()) => {
            tracing::debug!(name = %query.name(), %client, count, ttl, "egress allowed for resolved addresses");
            true
        }
        Err(e) => {
            tracing::warn!(name = %query.name(), %client, error = %e, "could not allow resolved addresses; answer withheld");
            false
        }
    }
}

async fn reply_refused(
    socket: &UdpSocket,
    header: &Header,
    query: &Query,
    peer: SocketAddr,
    why: &str,
) {
    tracing::debug!(
        name = %query.name(),
        qtype = %query.query_type(),
        rcode = %ResponseCode::Refused,
        %peer,
        why,
        "DNS query refused by egress policy"
    );
    if let Ok(reply) = response(
        header,
        Some(query),
        ResponseCode::Refused,
        None,
        false,
        true,
    ) {
        send(socket, &reply, peer).await;
    }
}

async fn send(socket: &UdpSocket, packet: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(packet, peer).await {
        tracing::debug!(%peer, error = %e, "DNS reply not sent");
    }
}

/// The 4-bit RCODE of a response (the answer is at least a header long).
fn rcode_of(packet: &[u8]) -> ResponseCode {
    ResponseCode::from_low(packet.get(3).map_or(0, |b| b & 0x0f))
}

#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Asks each upstream in turn; the first answer, with the client's id.
async fn forward(query: &[u8], upstreams: &[SocketAddr], timeout: Duration) -> Option<Vec<u8>> {
    let [id_hi, id_lo, ..] = *query else {
        return None;
    };
    for &upstream in upstreams {
        match ask_upstream(query, upstream, timeout).await {
            Ok(mut answer) => {
                if let Some(id) = answer.get_mut(..2) {
                    id.copy_from_slice(&[id_hi, id_lo]);
                }
                return Some(answer);
            }
            Err(e) => tracing::warn!(%upstream, error = %e, "upstream DNS server failed"),
        }
    }
    None
}

/// One try at one upstream, from a fresh ephemeral port with a fresh id.
async fn ask_upstream(
    query: &[u8],
    upstream: SocketAddr,
    timeout: Duration,
) -> Result<Vec<u8>, UpstreamError> {
    let id: u16 = rand::random();
    let mut packet = query.to_vec();
    if let Some(old) = packet.get_mut(..2) {
        old.copy_from_slice(&id.to_be_bytes());
    }
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone but the upstream,
    // and a port-unreachable comes back as an error instead of a timeout.
    socket.connect(upstream).await?;
    socket.send(&packet).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))??;
        let answer = buf.get(..len).unwrap_or_default();
        let is_our_answer = answer.len() >= HEADER_LEN
            && answer.get(..2) == Some(&id.to_be_bytes()[..])
            && answer.get(2).is_some_and(|flags| flags & 0x80 != 0);
        if is_our_answer {
            buf.truncate(len);
            return Ok(buf);
        }
        // A stale or stray datagram: keep waiting for ours.
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use rand::{RngCore, SeedableRng};

    use super::*;

    #[derive(Debug, Default)]
    struct MapResolver(HashMap<String, Ipv4Addr>);

    impl VmResolver for MapResolver {
        fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
            self.0.get(name).copied()
        }
    }

    const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);

    fn resolver() -> Arc<dyn VmResolver> {
        let mut map = HashMap::new();
        map.insert("web".to_owned(), WEB_IP);
        map.insert("db-1".to_owned(), Ipv4Addr::new(10, 77, 0, 6));
        Arc::new(MapResolver(map))
    }

    struct Server {
        addr: SocketAddr,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(config: DnsConfig) -> Self {
            Self::start_with(config, resolver()).await
        }

        async fn start_with(config: DnsConfig, resolver: Arc<dyn VmResolver>) -> Self {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve_with(socket, resolver, config, shutdown.clone()));
            Self {
                addr,
                shutdown,
                task,
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("server stops on shutdown")
                .expect("server task does not panic");
        }
    }

    fn query_bytes(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(id)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        message.to_vec().unwrap()
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// Receives until a datagram with `id` arrives; `None` after `wait`.
    async fn recv_id(socket: &UdpSocket, id: u16, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
                .await
                .ok()?
                .unwrap();
            if len >= 2 && buf[..2] == id.to_be_bytes() {
                return Some(buf[..len].to_vec());
            }
        }
    }

    async fn ask(server: SocketAddr, id: u16, name: &str, qtype: RecordType) -> Message {
        let socket = client().await;
        socket
            .send_to(&query_bytes(id, name, qtype), server)
            .await
            .unwrap();
        let bytes = recv_id(&socket, id, Duration::from_secs(5))
            .await
            .expect("an answer");
        Message::from_vec(&bytes).unwrap()
    }

    fn a_records(message: &Message) -> Vec<Ipv4Addr> {
        message
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn dns_answers_a_for_a_known_vm() {
        let server = Server::start(DnsConfig::default()).await;
        let answer = ask(server.addr, 0x1234, "web.vm.", RecordType::A).await;
        assert_eq!(answer.id(), 0x1234);
        assert_eq!(answer.message_type(), MessageType::Response);
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(answer.authoritative());
        assert!(answer.recursion_desired());
        assert_eq!(a_records(&answer), vec![WEB_IP]);
        assert_eq!(answer.answers()[0].ttl(), VM_TTL);
        assert_eq!(answer.queries().len(), 1);
        // Without the trailing dot too.
        let answer = ask(server.addr, 7, "db-1.vm", RecordType::A).await;
        assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 77, 0, 6)]);
        // ANY gets the A record.
        let answer = ask(server.addr, 8, "web.vm.", RecordType::ANY).await;
        assert_eq!(a_records(&answer), vec![WEB_IP]);
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_names_are_case_insensitive_and_echoed_as_asked() {
        let server = Server::start(DnsConfig::default()).await;
        let answer = ask(server.addr, 2, "WeB.Vm.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert_eq!(a_records(&answer), vec![WEB_IP]);
        // 0x20-randomising resolvers want their own case back.
        assert_eq!(answer.queries()[0].name().to_ascii(), "WeB.Vm.");
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_unknown_vm_is_nxdomain() {
        let server = Server::start(DnsConfig::default()).await;
        for (id, name) in [(3, "nope.vm."), (4, "a.web.vm."), (5, "NOPE.VM")] {
            let answer = ask(server.addr, id, name, RecordType::A).await;
            assert_eq!(answer.response_code(), ResponseCode::NXDomain, "{name}");
            assert!(answer.authoritative());
            assert!(answer.answers().is_empty());
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_other_types_and_the_apex_are_empty_noerror() {
        let server = Server::start(DnsConfig::default()).await;
        for (id, name, qtype) in [
            (10, "web.vm.", RecordType::AAAA),
            (11, "web.vm.", RecordType::MX),
            (12, "vm.", RecordType::A),
            (13, "VM", RecordType::SOA),
        ] {
            let answer = ask(server.addr, id, name, qtype).await;
            assert_eq!(answer.response_code(), ResponseCode::NoError, "{name}");
            assert!(answer.authoritative());
            assert!(answer.answers().is_empty(), "{name} {qtype}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_multiple_questions_and_other_opcodes_are_refused_properly() {
        let server = Server::start(DnsConfig::default()).await;
        let socket = client().await;

        let mut two = Message::new();
        two.set_id(20)
            .add_query(Query::query(
                Name::from_ascii("web.vm.").unwrap(),
                RecordType::A,
            ))
            .add_query(Query::query(
                Name::from_ascii("db-1.vm.").unwrap(),
                RecordType::A,
            ));
        socket
            .send_to(&two.to_vec().unwrap(), server.addr)
            .await
            .unwrap();
        let reply = recv_id(&socket, 20, Duration::from_secs(5)).await.unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::FormErr);

        let mut notify = query_bytes(21, "web.vm.", RecordType::A);
        notify[2] = (notify[2] & 0x87) | (4 << 3); // opcode NOTIFY
        socket.send_to(&notify, server.addr).await.unwrap();
        let reply = recv_id(&socket, 21, Duration::from_secs(5)).await.unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NotImp);
        assert_eq!(reply.op_code(), OpCode::Notify);
        server.stop().await;
    }

    /// A fake upstream: answers every query with `answer_ip` for its
    /// question, or stays silent; returns its address and the ids it saw.
    async fn fake_upstream(
        answer_ip: Option<Ipv4Addr>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<u16>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let request = Message::from_vec(&buf[..len]).unwrap();
                let _ = seen_tx.send(request.id());
                let Some(ip) = answer_ip else { continue };
                let query = request.queries()[0].clone();
                let mut reply = Message::new();
                let mut header = Header::response_from_request(request.header());
                header.set_recursion_available(true);
                reply.set_header(header);
                reply.add_answer(Record::from_rdata(
                    query.name().clone(),
                    300,
                    RData::A(A(ip)),
                ));
                reply.add_query(query);
                socket
                    .send_to(&reply.to_vec().unwrap(), peer)
                    .await
                    .unwrap();
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn dns_forwards_other_names_and_keeps_the_client_id() {
        let upstream_ip = Ipv4Addr::new(192, 0, 2, 80);
        let (upstream, mut seen) = fake_upstream(Some(upstream_ip)).await;
        let server = Server::start(DnsConfig::new(vec![upstream])).await;
        let answer = ask(server.addr, 0xbeef, "example.com.", RecordType::A).await;
        assert_eq!(answer.id(), 0xbeef);
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(!answer.authoritative(), "relayed untouched");
        assert_eq!(answer.answers()[0].ttl(), 300, "relayed untouched");
        assert_eq!(a_records(&answer), vec![upstream_ip]);
        // The upstream saw the query once (under an id of our choosing).
        assert!(seen.recv().await.is_some());
        assert!(seen.try_recv().is_err());
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_falls_back_to_the_next_upstream_on_timeout() {
        let (silent, mut silent_seen) = fake_upstream(None).await;
        let upstream_ip = Ipv4Addr::new(192, 0, 2, 81);
        let (good, _) = fake_upstream(Some(upstream_ip)).await;
        let server = Server::start(DnsConfig {
            upstreams: vec![silent, good],
            upstream_timeout: Duration::from_millis(200),
            ..DnsConfig::default()
        })
        .await;
        let answer = ask(server.addr, 31, "example.org.", RecordType::A).await;
        assert_eq!(answer.id(), 31);
        assert_eq!(a_records(&answer), vec![upstream_ip]);
        assert!(silent_seen.recv().await.is_some());
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_upstream_timeout_is_servfail_within_bounds() {
        let (silent, _seen) = fake_upstream(None).await;
        let server = Server::start(DnsConfig {
            upstreams: vec![silent],
            upstream_timeout: Duration::from_millis(200),
            ..DnsConfig::default()
        })
        .await;
        let started = Instant::now();
        let answer = ask(server.addr, 32, "slow.example.", RecordType::A).await;
        let took = started.elapsed();
        assert_eq!(answer.id(), 32);
        assert_eq!(answer.response_code(), ResponseCode::ServFail);
        assert_eq!(answer.queries()[0].name().to_ascii(), "slow.example.");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_slow_forwards_do_not_block_local_answers() {
        let (silent, _seen) = fake_upstream(None).await;
        let server = Server::start(DnsConfig {
            upstreams: vec![silent],
            upstream_timeout: Duration::from_secs(3),
            ..DnsConfig::default()
        })
        .await;
        let socket = client().await;
        socket
            .send_to(
                &query_bytes(40, "slow.example.", RecordType::A),
                server.addr,
            )
            .await
            .unwrap();
        let started = Instant::now();
        let answer = ask(server.addr, 41, "web.vm.", RecordType::A).await;
        assert_eq!(a_records(&answer), vec![WEB_IP]);
        assert!(started.elapsed() < Duration::from_secs(1));
        // Shutdown does not wait out the slow forward either.
        let started = Instant::now();
        server.stop().await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn dns_forwards_over_the_cap_and_without_upstreams_are_servfail() {
        let (silent, _seen) = fake_upstream(None).await;
        let server = Server::start(DnsConfig {
            upstreams: vec![silent],
            upstream_timeout: Duration::from_secs(3),
            max_in_flight: 1,
            ..DnsConfig::default()
        })
        .await;
        let socket = client().await;
        socket
            .send_to(&query_bytes(50, "one.example.", RecordType::A), server.addr)
            .await
            .unwrap();
        let started = Instant::now();
        let answer = ask(server.addr, 51, "two.example.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::ServFail);
        assert!(started.elapsed() < Duration::from_secs(1));
        server.stop().await;

        let server = Server::start(DnsConfig::default()).await;
        let answer = ask(server.addr, 52, "example.com.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::ServFail);
        assert!(!answer.recursion_available());
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_survives_garbage() {
        let server = Server::start(DnsConfig::default()).await;
        let socket = client().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(53);
        let mut random = vec![0u8; 512];
        rng.fill_bytes(&mut random);
        // A header claiming one question, and a name that points at itself.
        let mut pointer_loop = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        pointer_loop.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
        // One question announced, none there.
        let no_question = vec![0xab, 0xce, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        // A label longer than the packet.
        let mut long_label = vec![0xab, 0xcf, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        long_label.extend_from_slice(&[63, b'a', b'b']);
        let mut garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x42],
            vec![0x12, 0x34, 0x01, 0x00, 0x00],
            random,
            pointer_loop,
            no_question,
            long_label,
        ];
        for _ in 0..50 {
            let len = (rng.next_u32() % 64) as usize;
            let mut packet = vec![0u8; len];
            rng.fill_bytes(&mut packet);
            garbage.push(packet);
        }
        for packet in &garbage {
            socket.send_to(packet, server.addr).await.unwrap();
        }
        for id in [0xabcd, 0xabce, 0xabcf] {
            let reply = recv_id(&socket, id, Duration::from_secs(5)).await.unwrap();
            let reply = Message::from_vec(&reply).unwrap();
            assert_eq!(reply.response_code(), ResponseCode::FormErr, "{id:x}");
        }
        let answer = ask(server.addr, 60, "web.vm.", RecordType::A).await;
        assert_eq!(a_records(&answer), vec![WEB_IP]);
        assert!(!server.task.is_finished());
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_ignores_responses() {
        let server = Server::start(DnsConfig::default()).await;
        let socket = client().await;
        let mut response = query_bytes(70, "web.vm.", RecordType::A);
        response[2] |= 0x80;
        socket.send_to(&response, server.addr).await.unwrap();
        assert!(
            recv_id(&socket, 70, Duration::from_millis(300))
                .await
                .is_none()
        );
        server.stop().await;
    }

    #[test]
    fn dns_vm_labels() {
        let name = |s: &str| Name::from_ascii(s).unwrap();
        assert_eq!(vm_label(&name("web.vm.")), VmName::Vm("web".into()));
        assert_eq!(vm_label(&name("WEB.VM")), VmName::Vm("web".into()));
        assert_eq!(vm_label(&name("vm.")), VmName::Apex);
        assert_eq!(vm_label(&name("a.web.vm.")), VmName::Unknown);
        assert_eq!(vm_label(&name("web.vmx.")), VmName::Outside);
        assert_eq!(vm_label(&name("vm.example.")), VmName::Outside);
        assert_eq!(vm_label(&name(".")), VmName::Outside);
    }

    #[test]
    fn dns_upstreams_from_resolv_conf() {
        let text = "\
# Generated by NetworkManager
; another comment
search example.com
nameserver 10.77.0.1
nameserver 1.1.1.1 # trailing comment
nameserver\t127.0.0.53
  nameserver 2001:db8::1
nameserver 1.1.1.1
nameserver fe80::1%eth0
nameserver not-an-address
nameserver
nameservers 9.9.9.9
#nameserver 8.8.8.8
options edns0 trust-ad
";
        let own: IpAddr = "10.77.0.1".parse().unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(text, &[own]),
            vec![
                "1.1.1.1:53".parse::<SocketAddr>().unwrap(),
                "127.0.0.53:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
            ]
        );
        assert_eq!(upstreams_from_resolv_conf(text, &[]).len(), 4);
        assert!(upstreams_from_resolv_conf("", &[]).is_empty());
        // An IPv4-mapped exclusion still matches.
        let mapped: IpAddr = "::ffff:1.1.1.1".parse().unwrap();
        assert_eq!(
            upstreams_from_resolv_conf("nameserver 1.1.1.1\n", &[mapped]),
            vec![]
        );
    }

    #[tokio::test]
    async fn dns_answers_dig() {
        let has_dig = std::process::Command::new("sh")
            .args(["-c", "command -v dig"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_dig {
            eprintln!("skipping dns_answers_dig: `dig` is not installed");
            return;
        }
        let server = Server::start(DnsConfig::default()).await;
        let port = server.addr.port().to_string();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port,
                    "+time=2",
                    "+tries=1",
                    "+short",
                    "Web.VM",
                    "A",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(stdout.trim(), WEB_IP.to_string());
        server.stop().await;
    }

    /// A resolver with one policy for every client, recording what it is
    /// asked to learn.
    #[derive(Debug)]
    struct PolicyResolver {
        policy: DnsPolicy,
        fail_learn: bool,
        learned: std::sync::Mutex<Vec<(Vec<EgressEntry>, u32)>>,
    }

    impl VmResolver for PolicyResolver {
        fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
            (name == "web").then_some(WEB_IP)
        }

        fn policy(&self, _client: IpAddr) -> DnsPolicy {
            self.policy.clone()
        }

        fn learn(
            &self,
            _client: IpAddr,
            entries: Vec<EgressEntry>,
            ttl_secs: u32,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            self.learned.lock().unwrap().push((entries, ttl_secs));
            let fail = self.fail_learn;
            Box::pin(async move {
                if fail {
                    Err("helper says no".to_owned())
                } else {
                    Ok(())
                }
            })
        }
    }

    fn policy_resolver(policy: DnsPolicy, fail_learn: bool) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver {
            policy,
            fail_learn,
            learned: std::sync::Mutex::new(Vec::new()),
        })
    }

    #[tokio::test]
    async fn dns_answers_only_clients_in_its_subnet() {
        let config = |subnet: &str| DnsConfig {
            clients: Some(subnet.parse().unwrap()),
            admit_host: false,
            ..DnsConfig::default()
        };
        let outside = Server::start(config("10.77.0.0/24")).await;
        let socket = client().await;
        socket
            .send_to(&query_bytes(40, "web.vm.", RecordType::A), outside.addr)
            .await
            .unwrap();
        // Nothing comes back to a client outside the subnet (no answer, no
        // error: the server is no reflector).
        assert!(
            recv_id(&socket, 40, Duration::from_millis(500))
                .await
                .is_none()
        );
        outside.stop().await;
        let inside = Server::start(config("127.0.0.0/16")).await;
        let answer = ask(inside.addr, 41, "web.vm.", RecordType::A).await;
        assert_eq!(a_records(&answer), vec![WEB_IP]);
        inside.stop().await;
        // The host's own addresses (127.0.0.1 here) are the host asking.
        let host = Server::start(DnsConfig {
            admit_host: true,
            ..config("10.77.0.0/24")
        })
        .await;
        let answer = ask(host.addr, 42, "web.vm.", RecordType::A).await;
        assert_eq!(a_records(&answer), vec![WEB_IP]);
        host.stop().await;
        assert!(!is_host_address("192.0.2.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn dns_egress_none_answers_only_vm_names() {
        let (upstream, mut seen) = fake_upstream(Some(Ipv4Addr::new(192, 0, 2, 80))).await;
        let resolver = policy_resolver(DnsPolicy::LocalOnly, false);
        let server = Server::start_with(DnsConfig::new(vec![upstream]), resolver).await;
        let answer = ask(server.addr, 50, "example.com.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::Refused);
        assert!(answer.answers().is_empty());
        let answer = ask(server.addr, 51, "web.vm.", RecordType::A).await;
        assert_eq!(a_records(&answer), vec![WEB_IP]);
        assert!(seen.try_recv().is_err(), "nothing was forwarded");
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_egress_allow_forwards_covered_names_and_learns_their_addresses() {
        let public = Ipv4Addr::new(198, 51, 100, 7);
        let (upstream, mut seen) = fake_upstream(Some(public)).await;
        let resolver = policy_resolver(
            DnsPolicy::Allow(vec![
                AllowedName {
                    pattern: "svc.example.com".into(),
                    port: None,
                },
                AllowedName {
                    pattern: "*.api.example".into(),
                    port: Some(443),
                },
            ]),
            false,
        );
        let server =
            Server::start_with(DnsConfig::new(vec![upstream]), Arc::clone(&resolver) as _).await;
        let answer = ask(server.addr, 60, "SVC.example.com.", RecordType::A).await;
        assert_eq!(a_records(&answer), vec![public]);
        let answer = ask(server.addr, 61, "v1.api.example.", RecordType::A).await;
        assert_eq!(a_records(&answer), vec![public]);
        for (id, name) in [
            (62, "api.example."),
            (63, "other.example.com."),
            (64, "svc.example.com.evil.test."),
            (65, "xapi.example."),
        ] {
            let answer = ask(server.addr, id, name, RecordType::A).await;
            assert_eq!(answer.response_code(), ResponseCode::Refused, "{name}");
        }
        assert_eq!(
            *resolver.learned.lock().unwrap(),
            [
                (
                    vec![EgressEntry {
                        addr: public,
                        port: None
                    }],
                    300
                ),
                (
                    vec![EgressEntry {
                        addr: public,
                        port: Some(443)
                    }],
                    300
                ),
            ]
        );
        assert!(seen.recv().await.is_some());
        assert!(seen.recv().await.is_some());
        assert!(seen.try_recv().is_err(), "refused names were not forwarded");
        server.stop().await;
    }

    #[tokio::test]
    async fn dns_egress_allow_withholds_what_it_could_not_allow_and_skips_private_answers() {
        let allow = DnsPolicy::Allow(vec![AllowedName {
            pattern: "svc.example.com".into(),
            port: None,
        }]);
        let (upstream, _seen) = fake_upstream(Some(Ipv4Addr::new(198, 51, 100, 7))).await;
        let failing = policy_resolver(allow.clone(), true);
        let server = Server::start_with(DnsConfig::new(vec![upstream]), failing).await;
        let answer = ask(server.addr, 70, "svc.example.com.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::ServFail);
        assert!(answer.answers().is_empty());
        server.stop().await;

        let (upstream, _seen) = fake_upstream(Some(Ipv4Addr::new(169, 254, 169, 254))).await;
        let resolver = policy_resolver(allow, false);
        let server =
            Server::start_with(DnsConfig::new(vec![upstream]), Arc::clone(&resolver) as _).await;
        let answer = ask(server.addr, 71, "svc.example.com.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(
            resolver.learned.lock().unwrap().is_empty(),
            "a link-local answer is never allowed"
        );
        server.stop().await;
    }
}
