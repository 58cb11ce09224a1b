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
//! - Other names go to the upstream resolvers (`/etc/resolv.conf`'s nameservers, or the
//!   servers given) when forwarding is on, else REFUSED. Forwarded answers are not
//!   authoritative, and are kept for their TTL in the [`ForwardCache`] (hits and misses are
//!   counted in the metrics).
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
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
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
    cache::ForwardCache,
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
    /// Forwarded answers, kept for their TTL.
    pub cache: ForwardCache,
}

impl Shared {
    /// A server state around an index.
    pub fn new(index: Index, upstream: Option<TokioResolver>) -> Shared {
        let negative_ttl = index.config().negative_ttl;
        Shared {
            index: RwLock::new(index),
            upstream,
            metrics: Metrics::default(),
            cache: ForwardCache::new(negative_ttl),
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

/// Where names outside the zone go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Nowhere: answered REFUSED.
    None,
    /// `/etc/resolv.conf`'s nameservers.
    System,
    /// These servers (UDP, and TCP for truncated answers).
    Servers(Vec<SocketAddr>),
}

impl std::str::FromStr for Upstream {
    type Err = String;

    /// `none`, `system`, or a comma-separated list of `IP` or `IP:port` (port 53 by default;
    /// an IPv6 address with a port in brackets, `[fd00::1]:53`).
    fn from_str(s: &str) -> Result<Upstream, String> {
        match s {
            "none" => Ok(Upstream::None),
            "system" => Ok(Upstream::System),
            list => list
                .split(',')
                .map(|a| {
                    let a = a.trim();
                    a.parse::<SocketAddr>()
                        .or_else(|_| a.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        .map_err(|_| {
                            format!(
                                "{a:?} is not an address (expected none, system, or IP[:port],...)"
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Upstream::Servers),
        }
    }
}

/// The resolver for `upstream` (`None` when forwarding is off). Its own cache is small: the
/// server keeps forwarded answers in its [`ForwardCache`], which counts hits.
pub fn upstream_resolver(upstream: &Upstream) -> Result<Option<TokioResolver>, String> {
    let (servers, mut options) = match upstream {
        Upstream::None => return Ok(None),
        Upstream::System => {
            let (config, options) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?;
            (config.name_servers().to_vec(), options)
        }
        Upstream::Servers(addrs) => (
            addrs
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect(),
            ResolverOpts::default(),
        ),
    };
    options.use_hosts_file = ResolveHosts::Never;
    options.cache_size = 64;
    // The names forwarded are absolute: no search list.
    let config = ResolverConfig::from_parts(None, Vec::new(), servers);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map(Some)
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
        if let Some(kept) = self.0.cache.get(&name, rtype, Instant::now()) {
            self.0.metrics.cache_hit();
            return Ok(kept);
        }
        self.0.metrics.cache_miss();
        self.0.metrics.forwarded();
        let outcome = match resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => Some(lookup.answers().to_vec()),
            Err(e) if e.is_nx_domain() => None,
            Err(e) if e.is_no_records_found() => Some(Vec::new()),
            Err(e) => {
                tracing::debug!(error = %e, "upstream lookup failed");
                return Err(ResponseCode::ServFail);
            }
        };
        self.0.cache.put(&name, rtype, &outcome, Instant::now());
        Ok(outcome)
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
