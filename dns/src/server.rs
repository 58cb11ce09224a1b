//! The DNS server: hickory-server's UDP and TCP loops around a [`RequestHandler`] that answers
//! from the [`Index`] (never calling the apiserver), expands search paths on the server, and
//! forwards other names to the node's upstream resolvers.
//!
//! Answers:
//! - In the zone, the index's: authoritative (AA), NOERROR with the records, or NODATA and
//!   NXDOMAIN with the zone's SOA in the authority section (its TTL the short negative TTL) so
//!   negative caching works. An ExternalName's CNAME is followed through the upstream resolvers
//!   when forwarding is on, the target's records following the CNAME as CoreDNS does.
//! - Search-path expansion (CoreDNS's `autopath`): a pod asking `<name>.<its ns>.svc.<zone>`
//!   that does not exist is really walking its resolv.conf search list (`ndots:5` makes an
//!   external name cost five queries). The server walks the rest of that list itself
//!   (`<name>.svc.<zone>`, `<name>.<zone>`, then `<name>` upstream) and answers the first that
//!   exists as a CNAME from the asked name plus the target's records, in one round trip. The
//!   client's namespace comes from its source address (the pod index); other clients are not
//!   expanded.
//! - Other names go to the upstream resolvers (`/etc/resolv.conf`'s nameservers, with a cache)
//!   when forwarding is on, else REFUSED. Forwarded answers are not authoritative.
//! - EDNS0: a client's OPT is answered with one of ours, advertising at most 1232 bytes (the
//!   DNS flag day 2020 size); UDP answers larger than the client's size are truncated (TC) and
//!   the client retries over TCP. EDNS versions above 0 get BADVERS; opcodes other than QUERY
//!   get NOTIMP; classes other than IN get REFUSED.
//!
//! UDP is served by one socket per core (`SO_REUSEPORT`), so the kernel spreads queries over
//! them; TCP by one listener.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{ResolveHosts, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};
use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode},
        rr::{DNSClass, LowerName, Name, RData, Record, RecordType, rdata::CNAME},
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

use crate::{
    index::{Answer, Index},
    metrics::Metrics,
};

/// The largest UDP payload we advertise (RFC 9715 / DNS flag day 2020).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// What the handler shares with the watches.
pub struct Shared {
    /// The records; writers (the watches) hold the lock only to apply one object.
    pub index: RwLock<Index>,
    /// Upstream resolvers for names outside the zone; `None` when forwarding is off.
    pub upstream: Option<TokioResolver>,
    /// Query counters and the latency histogram.
    pub metrics: Metrics,
}

impl Shared {
    /// A server state around an index.
    pub fn new(index: Index, upstream: Option<TokioResolver>) -> Shared {
        Shared {
            index: RwLock::new(index),
            upstream,
            metrics: Metrics::default(),
        }
    }

    fn lookup(&self, name: &LowerName, rtype: RecordType) -> Answer {
        self.with_index(|index| index.lookup(name, rtype))
    }

    fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        match self.index.read() {
            Ok(index) => f(&index),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }
}

/// Upstream resolvers from `/etc/resolv.conf`'s nameservers (its search list is not used: the
/// names we forward are absolute), with hickory's cache.
pub fn system_upstream() -> Result<TokioResolver, String> {
    let (config, mut options) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?;
    options.use_hosts_file = ResolveHosts::Never;
    options.cache_size = 10_000;
    let config = ResolverConfig::from_parts(None, Vec::new(), config.name_servers().to_vec());
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| format!("building the upstream resolver: {e}"))
}

/// The response being assembled.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    shared: Option<Arc<[Record]>>,
    additionals: Option<Arc<[Record]>>,
    soa: bool,
}

impl Reply {
    fn code(code: ResponseCode) -> Reply {
        Reply {
            code,
            authoritative: false,
            answers: Vec::new(),
            shared: None,
            additionals: None,
            soa: false,
        }
    }
}

/// The [`RequestHandler`]: cheap to clone, shared by every socket.
#[derive(Clone)]
pub struct Handler(pub Arc<Shared>);

impl Handler {
    async fn answer(
        &self,
        name: &LowerName,
        original: &Name,
        rtype: RecordType,
        src: IpAddr,
    ) -> Reply {
        let shared = &self.0;
        match shared.lookup(name, rtype) {
            Answer::Records {
                answers,
                additionals,
            } => {
                let mut reply = Reply {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers: Vec::new(),
                    shared: Some(answers.clone()),
                    additionals,
                    soa: false,
                };
                // An ExternalName: follow the CNAME upstream.
                if rtype != RecordType::CNAME
                    && let [record] = &answers[..]
                    && let RData::CNAME(CNAME(target)) = &record.data
                    && let Some(records) = self.forward(target, rtype).await.ok().flatten()
                {
                    reply.answers = records;
                }
                reply
            }
            Answer::NoData => Reply {
                authoritative: true,
                soa: true,
                ..Reply::code(ResponseCode::NoError)
            },
            Answer::NxDomain => match self.expand(name, original, rtype, src).await {
                Some(reply) => reply,
                None => Reply {
                    authoritative: true,
                    soa: true,
                    ..Reply::code(ResponseCode::NXDomain)
                },
            },
            Answer::NotInZone => match self.forward(name, rtype).await {
                Ok(Some(records)) => Reply {
                    answers: records,
                    ..Reply::code(ResponseCode::NoError)
                },
                Ok(None) => Reply::code(ResponseCode::NXDomain),
                Err(code) => Reply::code(code),
            },
        }
    }

    /// Resolves a name outside the zone upstream: `Ok(None)` when it does not exist.
    async fn forward(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Option<Vec<Record>>, ResponseCode> {
        let Some(resolver) = &self.0.upstream else {
            return Err(ResponseCode::Refused);
        };
        let mut name = name.clone();
        name.set_fqdn(true);
        self.0.metrics.forwarded();
        match resolver.lookup(name, rtype).await {
            Ok(lookup) => Ok(Some(lookup.answers().to_vec())),
            Err(e) if e.is_nx_domain() => Ok(None),
            Err(e) if e.is_no_records_found() => Ok(Some(Vec::new())),
            Err(e) => {
                tracing::debug!(error = %e, "upstream lookup failed");
                Err(ResponseCode::ServFail)
            }
        }
    }

    /// Search-path expansion for a pod's query that fell through its first search domain.
    async fn expand(
        &self,
        name: &LowerName,
        original: &Name,
        rtype: RecordType,
        src: IpAddr,
    ) -> Option<Reply> {
        let (zone, first) = self.0.with_index(|index| {
            let ns = index.pod_namespace(src)?.to_owned();
            let zone = index.config().zone.clone();
            let first = Name::from_ascii(format!("{ns}.svc"))
                .ok()?
                .append_domain(&zone)
                .ok()?;
            Some((zone, first))
        })?;
        if !first.zone_of(name) || name.num_labels() <= first.num_labels() {
            return None;
        }
        // The labels before `<ns>.svc.<zone>`: what the client asked before its search list.
        let keep = (name.num_labels() - first.num_labels()) as usize;
        let base = Name::from_labels(name.iter().take(keep)).ok()?;
        let svc = Name::from_ascii("svc").ok()?.append_domain(&zone).ok()?;
        for domain in [svc, zone.clone()] {
            let Ok(candidate) = base.clone().append_domain(&domain) else {
                continue;
            };
            match self.0.lookup(&LowerName::new(&candidate), rtype) {
                Answer::Records {
                    answers,
                    additionals,
                } => {
                    self.0.metrics.expanded();
                    let mut records = vec![cname(original, &candidate, self.ttl())];
                    records.extend(answers.iter().cloned());
                    return Some(Reply {
                        code: ResponseCode::NoError,
                        authoritative: true,
                        answers: records,
                        shared: None,
                        additionals,
                        soa: false,
                    });
                }
                // The name exists without this type: the search ends here, as with CoreDNS.
                Answer::NoData => {
                    self.0.metrics.expanded();
                    return Some(Reply {
                        code: ResponseCode::NoError,
                        authoritative: true,
                        answers: vec![cname(original, &candidate, self.ttl())],
                        shared: None,
                        additionals: None,
                        soa: true,
                    });
                }
                Answer::NxDomain | Answer::NotInZone => {}
            }
        }
        let mut external = base;
        external.set_fqdn(true);
        // A name in the zone was answered above (or does not exist): never ask upstream.
        if zone.zone_of(&external) {
            return None;
        }
        match self.forward(&external, rtype).await {
            Ok(Some(found)) if !found.is_empty() => {
                self.0.metrics.expanded();
                let mut records = vec![cname(original, &external, self.ttl())];
                records.extend(found);
                Some(Reply {
                    answers: records,
                    ..Reply::code(ResponseCode::NoError)
                })
            }
            _ => None,
        }
    }

    fn ttl(&self) -> u32 {
        self.0.with_index(|index| index.config().ttl)
    }
}

fn cname(owner: &Name, target: &Name, ttl: u32) -> Record {
    let mut owner = owner.clone();
    owner.set_fqdn(true);
    Record::from_rdata(owner, ttl, RData::CNAME(CNAME(target.clone())))
}

fn failed(metadata: Metadata) -> ResponseInfo {
    let mut header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    header.metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(header)
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = self.0.upstream.is_some();
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().min(MAX_UDP_PAYLOAD));
            ours.set_version(0);
            ours
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let early = if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else {
            None
        };
        let info = match (early, request.request_info()) {
            (None, Ok(info)) => info,
            (early, _) => {
                metadata.response_code = early.unwrap_or(ResponseCode::FormErr);
                self.0
                    .metrics
                    .answered(RecordType::Unknown(0), metadata.response_code, started);
                return match response_handle
                    .send_response(builder.build_no_records(metadata))
                    .await
                {
                    Ok(info) => info,
                    Err(_) => failed(metadata),
                };
            }
        };
        let rtype = info.query.query_type();
        let reply = if info.query.query_class() != DNSClass::IN {
            Reply::code(ResponseCode::Refused)
        } else {
            self.answer(
                info.query.name(),
                info.query.original().name(),
                rtype,
                info.src.ip(),
            )
            .await
        };
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        let soa = if reply.soa {
            Some(self.0.with_index(|index| index.soa().clone()))
        } else {
            None
        };
        self.0.metrics.answered(rtype, reply.code, started);
        // The index's records first: an ExternalName's CNAME precedes the target's records
        // (resolvers read the chain in order).
        let answers = reply
            .shared
            .iter()
            .flat_map(|s| s.iter())
            .chain(reply.answers.iter());
        let response = builder.build(
            metadata,
            answers,
            std::iter::empty(),
            soa.iter().flat_map(|s| s.iter()),
            reply.additionals.iter().flat_map(|s| s.iter()),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS response failed");
                failed(metadata)
            }
        }
    }
}

/// A socket for `addr` that may bind before the address exists (`IP_FREEBIND`: the node's
/// bridge address appears when the agent creates the bridge).
fn socket(addr: SocketAddr, kind: socket2::Type) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Binds the UDP sockets (one per core, `SO_REUSEPORT`) and the TCP listener on `addr`, and
/// serves until the returned server is shut down.
pub async fn serve(handler: Handler, addr: SocketAddr) -> std::io::Result<Server<Handler>> {
    let mut server = Server::new(handler);
    let sockets = std::thread::available_parallelism().map_or(1, usize::from);
    let mut addr = addr;
    for _ in 0..sockets {
        let socket = socket(addr, socket2::Type::DGRAM)?;
        socket.set_reuse_port(true)?;
        // Room for bursts: 4 MiB of queued queries (capped by net.core.rmem_max).
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        // Port 0: the others join the port the first one got.
        if let Some(bound) = socket.local_addr()?.as_socket() {
            addr = bound;
        }
        server.register_socket(tokio::net::UdpSocket::from_std(socket.into())?);
    }
    let listener = socket(addr, socket2::Type::STREAM)?;
    listener.bind(&addr.into())?;
    listener.listen(1024)?;
    let listener = tokio::net::TcpListener::from_std(listener.into())?;
    server.register_listener(listener, Duration::from_secs(5), 32);
    Ok(server)
}
