//! The DNS index: the pure core of the cluster DNS. It holds what the Kubernetes DNS-Based
//! Service Discovery specification (schema 1.1.0) derives from Services, EndpointSlices and Pods,
//! and answers a name and a type with no I/O.
//!
//! Objects come in through [`Index::apply_service`], [`Index::apply_slice`],
//! [`Index::apply_pod`] and their `delete_*` twins. The index keeps only what answers are made
//! from, compactly: per Service its addresses and named ports (port and protocol labels and
//! namespaces interned), per headless Service its published endpoints, per address the names
//! its PTR records point to. Records are made when asked (a few hundred nanoseconds, next to
//! the microseconds hickory spends on a query): at 10,000 Services this is about 750 bytes per
//! Service and endpoint, against 3.5 KB when every record was kept ready-made
//! (`cargo xtask bench dns`, docs/benchmarks.md).
//!
//! Records (`<zone>` is `cluster.local.` by default, every TTL the configured one, 30 s as
//! kubeadm's CoreDNS):
//! - ClusterIP Services: `<svc>.<ns>.svc.<zone>` A/AAAA for each cluster IP; SRV
//!   `_<port>._<proto>.<svc>.<ns>.svc.<zone>` for each named port, target the Service name; PTR
//!   for each cluster IP.
//! - Headless Services (`clusterIP: None`): one A/AAAA per ready endpoint (and per not-ready one
//!   with `publishNotReadyAddresses`), NXDOMAIN when there is none; each endpoint is also
//!   `<hostname>.<svc>.<ns>.svc.<zone>`, its hostname being the EndpointSlice's (a pod's
//!   `hostname` under a matching `subdomain`) or else its dashed address (`10-244-1-5`), as
//!   CoreDNS does; SRV per named port has one record per endpoint (N×M), targets those names,
//!   port the endpoint's; PTR for each endpoint address to its name.
//! - ExternalName Services: a CNAME to the external name, for every type.
//! - SRV: priority 0, weight `100 / records` (at least 1), as CoreDNS; the targets' A/AAAA
//!   records go in the additional section. A SRV query for the Service name itself lists every
//!   named port.
//! - Pods: `<a-b-c-d>.<ns>.pod.<zone>` A (or the dashed IPv6 form, AAAA) when a pod of that
//!   namespace has that address and has not finished ("verified" pods, rather than CoreDNS's
//!   kubeadm default "insecure", which answers any address).
//! - `dns-version.<zone>` TXT `"1.1.0"`; the zone apex answers SOA and NS (`ns.dns.<zone>`, whose
//!   A record is the DNS Service address when configured).
//! - A name with records of other types, or a name that only has names below it
//!   (`svc.<zone>`, `<ns>.svc.<zone>` of a namespace with Services, `_tcp.<svc>...`), is NODATA;
//!   anything else in the zone is NXDOMAIN. The SOA's minimum, the negative TTL, is short (5 s
//!   by default) so negative caching does not hide a new Service for long.
//! - Reverse names (`in-addr.arpa.`, `ip6.arpa.`) of known addresses answer PTR; others are not
//!   ours ([`Answer::NotInZone`]), as are names outside the zone.
//!
//! Names are matched case-insensitively (queries come lowercased as [`LowerName`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use hickory_server::proto::rr::{
    LowerName, Name, RData, Record, RecordType,
    rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT},
};
use k8s_openapi::api::{core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice};

/// A record set of an answer (shared when the index keeps it, as the SOA).
pub type Rrset = Arc<[Record]>;

/// The version of the Kubernetes DNS specification served in `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// How the zone is served.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster domain, `cluster.local` by default.
    pub zone: Name,
    /// TTL of every positive answer (seconds).
    pub ttl: u32,
    /// TTL of negative answers: the SOA's TTL and minimum (seconds).
    pub negative_ttl: u32,
    /// The DNS Service's address (`kube-dns`, 10.96.0.10), the A record of `ns.dns.<zone>`.
    pub dns_ip: Option<IpAddr>,
}

impl Config {
    /// The defaults of kubeadm's CoreDNS: zone `cluster.local`, TTL 30 s, negative TTL 5 s.
    pub fn new(zone: &str) -> Result<Config, String> {
        let mut zone =
            Name::from_ascii(zone).map_err(|e| format!("cluster domain {zone:?}: {e}"))?;
        zone.set_fqdn(true);
        if zone.is_root() {
            return Err("the cluster domain cannot be the root".into());
        }
        Ok(Config {
            zone: zone.to_lowercase(),
            ttl: 30,
            negative_ttl: 5,
            dns_ip: None,
        })
    }
}

/// What the index answers for a name and a type.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Records of the type asked (or the CNAME of an ExternalName Service), and the addresses
    /// of SRV targets for the additional section.
    Records {
        answers: Rrset,
        additionals: Option<Rrset>,
    },
    /// The name exists, without records of that type (NOERROR, no answer).
    NoData,
    /// No such name in the zone.
    NxDomain,
    /// Not a name this index is the authority for.
    NotInZone,
}

fn rrset(records: Vec<Record>) -> Option<Rrset> {
    (!records.is_empty()).then(|| Rrset::from(records))
}

fn label(s: &str) -> Result<Name, String> {
    Name::from_ascii(s).map_err(|e| format!("{s:?} is not a DNS name: {e}"))
}

/// `a-b-c-d` (IPv4) or the IPv6 address with `:` as `-`, as CoreDNS names endpoints and pods.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address of a dashed name, when it is one.
fn undashed(s: &str) -> Option<IpAddr> {
    if s.matches('-').count() == 3
        && let Ok(v4) = s.replace('-', ".").parse::<Ipv4Addr>()
    {
        return Some(IpAddr::V4(v4));
    }
    s.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The reverse name of an address, under `in-addr.arpa.` or `ip6.arpa.`.
pub fn reverse_name(ip: IpAddr) -> Name {
    let mut name = Name::from(ip);
    name.set_fqdn(true);
    name
}

/// The address a reverse name stands for (`None` if it is not a whole one).
fn reverse_ip(labels: &[&[u8]]) -> Option<IpAddr> {
    // `labels` is in wire order, without the trailing `in-addr.arpa` / `ip6.arpa`.
    let text = |l: &&[u8]| std::str::from_utf8(l).ok().map(str::to_owned);
    match labels.len() {
        4 => {
            let octets: Vec<u8> = labels
                .iter()
                .rev()
                // Canonical decimal only (`010` or `+5` would name an address under another
                // owner name than the PTR record's).
                .map(|l| {
                    let t = text(l)?;
                    let octet: u8 = t.parse().ok()?;
                    (octet.to_string() == t).then_some(octet)
                })
                .collect::<Option<_>>()?;
            Some(IpAddr::V4(Ipv4Addr::new(
                octets[0], octets[1], octets[2], octets[3],
            )))
        }
        32 => {
            let mut value: u128 = 0;
            for l in labels.iter().rev() {
                let [nibble] = l else { return None };
                let digit = (*nibble as char).to_digit(16)?;
                value = value << 4 | u128::from(digit);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

fn address_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    Record::from_rdata(
        name.clone(),
        ttl,
        match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        },
    )
}
/// Strings many objects share (namespaces, `_<port>` and `_<proto>` labels), kept once. They
/// are never dropped: namespaces and port names are few and long-lived (a cluster that creates
/// and deletes millions of distinct namespaces would keep their names).
#[derive(Debug, Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    /// The shared string, if it is known (deletes look up without adding).
    fn find(&self, s: &str) -> Option<Arc<str>> {
        self.0.get(s).cloned()
    }

    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.0.insert(Arc::clone(&shared));
        shared
    }
}

/// An object's namespace (interned) and name, lowercased.
type ObjectKey = (Arc<str>, Box<str>);

/// A named port: `_<name>`, `_<protocol>` (lowercase, interned) and its number.
type Port = (Arc<str>, Arc<str>, u16);

/// The Service fields DNS reads.
#[derive(Clone, Debug, Default, PartialEq)]
struct ServiceInfo {
    /// Cluster IPs, sorted; empty for headless and ExternalName Services.
    cluster_ips: Box<[IpAddr]>,
    headless: bool,
    external_name: Option<Box<Name>>,
    /// Named ports, in the Service's order.
    ports: Box<[Port]>,
    publish_not_ready: bool,
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
struct EndpointInfo {
    addresses: Box<[IpAddr]>,
    hostname: Option<Box<str>>,
    ready: bool,
}

/// The EndpointSlice fields DNS reads.
#[derive(Clone, Debug, Default, PartialEq)]
struct SliceInfo {
    /// The Service it belongs to (`kubernetes.io/service-name`).
    service: Box<str>,
    ports: Box<[Port]>,
    endpoints: Box<[EndpointInfo]>,
}

/// A published endpoint of a headless Service: its name below the Service (hostname or dashed
/// address), its addresses (sorted) and the named ports of its slices.
#[derive(Clone, Debug, PartialEq)]
struct Host {
    name: Box<str>,
    ips: Box<[IpAddr]>,
    ports: Box<[Port]>,
}

/// What the index keeps of one Service name: the Service (once seen), its slices, and for a
/// headless Service the endpoints it publishes. Records are made from this when asked.
#[derive(Debug, Default)]
struct ServiceEntry {
    /// `None` while only slices of it are known.
    info: Option<ServiceInfo>,
    /// Slices by name (a Service has one or a few).
    slices: Vec<(Box<str>, SliceInfo)>,
    /// Headless: published endpoints sorted by name; and all their addresses, sorted.
    hosts: Box<[Host]>,
    host_ips: Box<[IpAddr]>,
}

impl ServiceEntry {
    /// The Service is known, and a headless one has a published endpoint.
    fn exists(&self) -> bool {
        self.info
            .as_ref()
            .is_some_and(|i| !i.headless || !self.hosts.is_empty())
    }

    /// The named ports of the Service's SRV records: the Service's own, or (headless) those
    /// of its published endpoints, in `(_name, _proto)` order, each once.
    fn srv_ports(&self) -> Vec<(&Arc<str>, &Arc<str>)> {
        let Some(info) = &self.info else {
            return Vec::new();
        };
        if !info.headless {
            return info.ports.iter().map(|(n, p, _)| (n, p)).collect();
        }
        let mut ports: Vec<(&Arc<str>, &Arc<str>)> = self
            .hosts
            .iter()
            .flat_map(|h| h.ports.iter().map(|(n, p, _)| (n, p)))
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    /// The published endpoints of a headless Service, from its slices.
    fn publish(&mut self) {
        let publish_not_ready = match &self.info {
            Some(info) if info.headless => info.publish_not_ready,
            _ => {
                self.hosts = Box::default();
                self.host_ips = Box::default();
                return;
            }
        };
        let mut hosts: BTreeMap<Box<str>, (BTreeSet<IpAddr>, Vec<Port>)> = BTreeMap::new();
        for (_, slice) in &self.slices {
            for ep in &slice.endpoints {
                if !(ep.ready || publish_not_ready) {
                    continue;
                }
                for ip in &ep.addresses {
                    let host: Box<str> = ep.hostname.clone().unwrap_or_else(|| dashed(*ip).into());
                    if label(&host).is_err() {
                        continue;
                    }
                    let entry = hosts.entry(host).or_default();
                    entry.0.insert(*ip);
                    for port in &slice.ports {
                        if !entry.1.contains(port) {
                            entry.1.push(port.clone());
                        }
                    }
                }
            }
        }
        let all: BTreeSet<IpAddr> = hosts
            .values()
            .flat_map(|(ips, _)| ips.iter().copied())
            .collect();
        self.host_ips = all.into_iter().collect();
        self.hosts = hosts
            .into_iter()
            .map(|(name, (ips, ports))| Host {
                name,
                ips: ips.into_iter().collect(),
                ports: ports.into(),
            })
            .collect();
    }

    /// The PTR targets this Service gives addresses, relative to `svc.<zone>`
    /// (`<svc>.<ns>` or `<host>.<svc>.<ns>`).
    fn ptrs(&self, ns: &str, svc: &str) -> Vec<(IpAddr, Box<str>)> {
        let Some(info) = &self.info else {
            return Vec::new();
        };
        if info.external_name.is_some() {
            return Vec::new();
        }
        if !info.headless {
            let target: Box<str> = format!("{svc}.{ns}").into();
            return info
                .cluster_ips
                .iter()
                .map(|ip| (*ip, target.clone()))
                .collect();
        }
        self.hosts
            .iter()
            .flat_map(|h| {
                let target: Box<str> = format!("{}.{svc}.{ns}", h.name).into();
                h.ips.iter().map(move |ip| (*ip, target.clone()))
            })
            .collect()
    }
}

/// The Services of one namespace.
#[derive(Debug, Default)]
struct Namespace {
    services: HashMap<Box<str>, ServiceEntry>,
    /// How many of them are Services (not only slices waiting for theirs).
    known: usize,
}

/// The cluster DNS index. See the module docs.
#[derive(Debug)]
pub struct Index {
    config: Config,
    soa: Rrset,
    ns: Rrset,
    ns_glue: Option<Rrset>,
    version: Rrset,
    strings: Interner,
    /// Namespace → its Services.
    namespaces: HashMap<Arc<str>, Namespace>,
    /// Slice (namespace, name) → the Service it was last filed under (a slice's label can
    /// change).
    slice_owner: HashMap<ObjectKey, Box<str>>,
    /// Address → the names pointing at it, relative to `svc.<zone>`, sorted.
    ptr: HashMap<IpAddr, Vec<Box<str>>>,
    /// Pod (namespace, name) → its addresses; address → the namespaces of the pods that have
    /// it; namespace → its pods with addresses.
    pods: HashMap<ObjectKey, Box<[IpAddr]>>,
    pod_ips: HashMap<IpAddr, Vec<Arc<str>>>,
    pod_namespaces: HashMap<Arc<str>, usize>,
}

fn port_label(strings: &mut Interner, s: &str) -> Arc<str> {
    strings.get(&format!("_{}", s.to_ascii_lowercase()))
}

fn named_ports<'a>(
    strings: &mut Interner,
    ports: impl Iterator<Item = (Option<&'a String>, Option<i32>, Option<&'a String>)>,
) -> Box<[Port]> {
    ports
        .filter_map(|(name, number, protocol)| {
            let name = name.filter(|n| !n.is_empty())?;
            let number = u16::try_from(number?).ok()?;
            let protocol = protocol.map_or("TCP", String::as_str);
            Some((
                port_label(strings, name),
                port_label(strings, protocol),
                number,
            ))
        })
        .collect()
}

impl ServiceInfo {
    fn from_service(svc: &Service, strings: &mut Interner) -> Result<ServiceInfo, String> {
        let spec = svc.spec.clone().unwrap_or_default();
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        let mut info = ServiceInfo {
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            ..ServiceInfo::default()
        };
        if kind == "ExternalName" {
            let external = spec.external_name.as_deref().unwrap_or("");
            if external.is_empty() {
                return Err("spec.externalName: Required value".into());
            }
            let mut name = label(external)?;
            name.set_fqdn(true);
            info.external_name = Some(Box::new(name));
            return Ok(info);
        }
        let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            (_, Some(ip)) => vec![ip.as_str()],
            _ => Vec::new(),
        };
        if ips.first() == Some(&"None") {
            info.headless = true;
        } else {
            let ips: BTreeSet<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
            info.cluster_ips = ips.into_iter().collect();
        }
        info.ports = named_ports(
            strings,
            spec.ports
                .iter()
                .flatten()
                .map(|p| (p.name.as_ref(), Some(p.port), p.protocol.as_ref())),
        );
        Ok(info)
    }
}

impl SliceInfo {
    fn from_slice(slice: &EndpointSlice, strings: &mut Interner) -> Option<SliceInfo> {
        let service = slice
            .metadata
            .labels
            .as_ref()?
            .get("kubernetes.io/service-name")?;
        let ports = named_ports(
            strings,
            slice
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.as_ref(), p.port, p.protocol.as_ref())),
        );
        let endpoints = slice
            .endpoints
            .iter()
            .flatten()
            .map(|ep| EndpointInfo {
                addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                hostname: ep
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(|h| h.to_ascii_lowercase().into()),
                // Kubernetes: a nil ready condition means ready.
                ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
            .collect();
        Some(SliceInfo {
            service: service.to_ascii_lowercase().into(),
            ports,
            endpoints,
        })
    }
}

/// Lowercased namespace (interned; `default` when absent) and name of an object.
fn key(
    strings: &mut Interner,
    namespace: Option<&String>,
    name: Option<&String>,
) -> Option<ObjectKey> {
    let ns = namespace
        .map_or("default", String::as_str)
        .to_ascii_lowercase();
    Some((strings.get(&ns), name?.to_ascii_lowercase().into()))
}

/// Address records of `owner` for the addresses of the type asked.
fn address_records(owner: &Name, ttl: u32, ips: &[IpAddr], rtype: RecordType) -> Option<Rrset> {
    let wanted = |ip: &&IpAddr| match rtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        _ => false,
    };
    rrset(
        ips.iter()
            .filter(wanted)
            .map(|ip| address_record(owner, ttl, *ip))
            .collect(),
    )
}

/// A and then AAAA records of `owner`, for the additional section.
fn glue(owner: &Name, ttl: u32, ips: &[IpAddr], out: &mut Vec<Record>) {
    out.extend(
        ips.iter()
            .filter(|ip| ip.is_ipv4())
            .map(|ip| address_record(owner, ttl, *ip)),
    );
    out.extend(
        ips.iter()
            .filter(|ip| ip.is_ipv6())
            .map(|ip| address_record(owner, ttl, *ip)),
    );
}

impl Index {
    /// An empty index for a zone.
    pub fn new(config: Config) -> Index {
        let zone = &config.zone;
        let ns_name = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(zone))
            .unwrap_or_else(|_| zone.clone());
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(zone))
            .unwrap_or_else(|_| zone.clone());
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let soa = Record::from_rdata(
            zone.clone(),
            config.negative_ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                hostmaster,
                serial,
                7200,
                1800,
                86400,
                config.negative_ttl,
            )),
        );
        let ns = Record::from_rdata(zone.clone(), config.ttl, RData::NS(NS(ns_name.clone())));
        let version = Name::from_ascii("dns-version")
            .and_then(|n| n.append_domain(zone))
            .unwrap_or_else(|_| zone.clone());
        let txt = Record::from_rdata(
            version,
            config.ttl,
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])),
        );
        let ns_glue = config
            .dns_ip
            .map(|ip| Rrset::from(vec![address_record(&ns_name, config.ttl, ip)]));
        Index {
            soa: Rrset::from(vec![soa]),
            ns: Rrset::from(vec![ns]),
            ns_glue,
            version: Rrset::from(vec![txt]),
            config,
            strings: Interner::default(),
            namespaces: HashMap::new(),
            slice_owner: HashMap::new(),
            ptr: HashMap::new(),
            pods: HashMap::new(),
            pod_ips: HashMap::new(),
            pod_namespaces: HashMap::new(),
        }
    }

    /// The zone's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The zone's SOA, for the authority section of negative answers.
    pub fn soa(&self) -> &Rrset {
        &self.soa
    }

    /// Number of Services indexed.
    pub fn service_count(&self) -> usize {
        self.namespaces.values().map(|n| n.known).sum()
    }

    /// The (namespace, name) of every Service indexed.
    pub fn service_keys(&self) -> Vec<(String, String)> {
        self.namespaces
            .iter()
            .flat_map(|(ns, n)| {
                n.services
                    .iter()
                    .filter(|(_, e)| e.info.is_some())
                    .map(move |(name, _)| (ns.to_string(), name.to_string()))
            })
            .collect()
    }

    /// The (namespace, name) of every EndpointSlice indexed.
    pub fn slice_keys(&self) -> Vec<(String, String)> {
        self.slice_owner
            .keys()
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
            .collect()
    }

    /// The (namespace, name) of every Pod with addresses indexed.
    pub fn pod_keys(&self) -> Vec<(String, String)> {
        self.pods
            .keys()
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
            .collect()
    }

    /// Changes one Service's entry with `f`, then brings its published endpoints, the
    /// namespace's count and the PTR index up to date.
    fn change(&mut self, ns: &Arc<str>, svc: &str, f: impl FnOnce(&mut ServiceEntry)) {
        let namespace = self.namespaces.entry(Arc::clone(ns)).or_default();
        let entry = namespace.services.entry(svc.into()).or_default();
        let had = entry.info.is_some();
        let old = entry.ptrs(ns, svc);
        f(entry);
        entry.publish();
        let new = entry.ptrs(ns, svc);
        match (had, entry.info.is_some()) {
            (false, true) => namespace.known += 1,
            (true, false) => namespace.known -= 1,
            _ => {}
        }
        if entry.info.is_none() && entry.slices.is_empty() {
            namespace.services.remove(svc);
            if namespace.services.is_empty() {
                self.namespaces.remove(ns);
            }
        }
        if old == new {
            return;
        }
        // Sets: a headless Service may have thousands of endpoints.
        let was: HashSet<&(IpAddr, Box<str>)> = old.iter().collect();
        let now: HashSet<&(IpAddr, Box<str>)> = new.iter().collect();
        for (ip, target) in old.iter().filter(|p| !now.contains(p)) {
            self.unpoint(*ip, target);
        }
        for (ip, target) in new.iter().filter(|p| !was.contains(p)) {
            self.point(*ip, target.clone());
        }
    }

    /// Adds `target` to the PTR names of `ip`.
    fn point(&mut self, ip: IpAddr, target: Box<str>) {
        let targets = self.ptr.entry(ip).or_default();
        if let Err(at) = targets.binary_search(&target) {
            targets.insert(at, target);
        }
    }

    /// Removes `target` from the PTR names of `ip`.
    fn unpoint(&mut self, ip: IpAddr, target: &str) {
        if let Some(targets) = self.ptr.get_mut(&ip) {
            targets.retain(|t| &**t != target);
            if targets.is_empty() {
                self.ptr.remove(&ip);
            }
        }
    }

    /// Adds or updates a Service. An invalid one (an ExternalName that is not a name) is
    /// dropped from the index with the reason.
    pub fn apply_service(&mut self, svc: &Service) -> Result<(), String> {
        let Some((ns, name)) = key(
            &mut self.strings,
            svc.metadata.namespace.as_ref(),
            svc.metadata.name.as_ref(),
        ) else {
            return Err("metadata.name: Required value".into());
        };
        let info = match ServiceInfo::from_service(svc, &mut self.strings) {
            Ok(info) => info,
            Err(e) => {
                self.delete_service(&ns, &name);
                return Err(e);
            }
        };
        let current = self
            .namespaces
            .get(&ns)
            .and_then(|n| n.services.get(&name))
            .and_then(|e| e.info.as_ref());
        if current == Some(&info) {
            return Ok(());
        }
        self.change(&ns, &name, |entry| entry.info = Some(info));
        Ok(())
    }

    /// Removes a Service (its slices stay until they are deleted).
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.strings.find(&namespace.to_ascii_lowercase()) else {
            return;
        };
        let name = name.to_ascii_lowercase();
        if self
            .namespaces
            .get(&ns)
            .is_some_and(|n| n.services.contains_key(name.as_str()))
        {
            self.change(&ns, &name, |entry| entry.info = None);
        }
    }

    /// Adds or updates an EndpointSlice (one without the `kubernetes.io/service-name` label is
    /// ignored).
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let Some((ns, name)) = key(
            &mut self.strings,
            slice.metadata.namespace.as_ref(),
            slice.metadata.name.as_ref(),
        ) else {
            return;
        };
        let Some(info) = SliceInfo::from_slice(slice, &mut self.strings) else {
            self.delete_slice(&ns, &name);
            return;
        };
        let slice_key = (Arc::clone(&ns), name.clone());
        if let Some(owner) = self.slice_owner.get(&slice_key)
            && *owner != info.service
        {
            self.delete_slice(&ns, &name);
        }
        let service = info.service.clone();
        let unchanged = self
            .namespaces
            .get(&ns)
            .and_then(|n| n.services.get(&service))
            .is_some_and(|e| e.slices.iter().any(|(n, s)| *n == name && *s == info));
        self.slice_owner.insert(slice_key, service.clone());
        if unchanged {
            return;
        }
        self.change(&ns, &service, |entry| {
            match entry.slices.iter_mut().find(|(n, _)| *n == name) {
                Some((_, s)) => *s = info,
                None => entry.slices.push((name, info)),
            }
        });
    }

    /// Removes an EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.strings.find(&namespace.to_ascii_lowercase()) else {
            return;
        };
        let name: Box<str> = name.to_ascii_lowercase().into();
        let Some(owner) = self.slice_owner.remove(&(Arc::clone(&ns), name.clone())) else {
            return;
        };
        if self
            .namespaces
            .get(&ns)
            .is_some_and(|n| n.services.contains_key(&owner))
        {
            self.change(&ns, &owner, |entry| {
                entry.slices.retain(|(n, _)| *n != name)
            });
        }
    }

    /// Adds or updates a Pod (its addresses, for pod records and for finding a client's
    /// namespace).
    pub fn apply_pod(&mut self, pod: &Pod) {
        let Some(k) = key(
            &mut self.strings,
            pod.metadata.namespace.as_ref(),
            pod.metadata.name.as_ref(),
        ) else {
            return;
        };
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect())
            .unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        // A host-network pod's address is the node's; a finished pod's may go to another pod.
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if host_network || finished {
            ips.clear();
        }
        if self
            .pods
            .get(&k)
            .map_or(ips.is_empty(), |old| **old == *ips)
        {
            return;
        }
        self.remove_pod(&k);
        if ips.is_empty() {
            return;
        }
        for ip in &ips {
            self.pod_ips.entry(*ip).or_default().push(Arc::clone(&k.0));
        }
        *self.pod_namespaces.entry(Arc::clone(&k.0)).or_default() += 1;
        self.pods.insert(k, ips.into());
    }

    /// Removes a Pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.strings.find(&namespace.to_ascii_lowercase()) else {
            return;
        };
        self.remove_pod(&(ns, name.to_ascii_lowercase().into()));
    }

    fn remove_pod(&mut self, k: &ObjectKey) {
        let Some(ips) = self.pods.remove(k) else {
            return;
        };
        for ip in ips {
            if let Some(namespaces) = self.pod_ips.get_mut(&ip) {
                if let Some(i) = namespaces.iter().position(|n| *n == k.0) {
                    namespaces.swap_remove(i);
                }
                if namespaces.is_empty() {
                    self.pod_ips.remove(&ip);
                }
            }
        }
        if let Some(count) = self.pod_namespaces.get_mut(&k.0) {
            *count -= 1;
            if *count == 0 {
                self.pod_namespaces.remove(&k.0);
            }
        }
    }

    /// The namespace of the pod that has this address (a client's, for search-path expansion).
    pub fn pod_namespace(&self, ip: IpAddr) -> Option<&str> {
        self.pod_ips.get(&ip)?.first().map(|n| &**n)
    }

    /// Answers a query. `name` is lowercased (as hickory's [`LowerName`]).
    pub fn lookup(&self, name: &LowerName, rtype: RecordType) -> Answer {
        let name: &Name = name;
        let zone = &self.config.zone;
        let labels: Vec<&[u8]> = name.iter().collect();
        if !zone.zone_of(name) {
            return self.lookup_reverse(name, &labels, rtype);
        }
        let relative = &labels[..labels.len() - zone.num_labels() as usize];
        // From the zone down: `svc`, the namespace, the Service, ... (no name of ours is
        // deeper than 5 labels below the zone).
        if relative.len() > 5 {
            return Answer::NxDomain;
        }
        let mut parts = [""; 5];
        for (part, label) in parts.iter_mut().zip(relative.iter().rev()) {
            *part = std::str::from_utf8(label).unwrap_or("\u{0}");
        }
        let ttl = self.config.ttl;
        match &parts[..relative.len()] {
            [] => match rtype {
                RecordType::SOA => found(&self.soa, None),
                RecordType::NS => found(&self.ns, self.ns_glue.clone()),
                _ => Answer::NoData,
            },
            ["dns-version"] => match rtype {
                RecordType::TXT => found(&self.version, None),
                _ => Answer::NoData,
            },
            ["dns"] => Answer::NoData,
            ["dns", "ns"] => match (&self.ns_glue, rtype) {
                (Some(glue), RecordType::A | RecordType::AAAA)
                    if glue[0].record_type() == rtype =>
                {
                    found(glue, None)
                }
                (Some(_), _) => Answer::NoData,
                (None, _) => Answer::NxDomain,
            },
            ["svc"] => Answer::NoData,
            ["svc", ns] => match self.namespaces.get(*ns).is_some_and(|n| n.known > 0) {
                true => Answer::NoData,
                false => Answer::NxDomain,
            },
            ["svc", ns, svc, rest @ ..] => {
                let Some(entry) = self
                    .namespaces
                    .get(*ns)
                    .and_then(|n| n.services.get(*svc))
                    .filter(|e| e.exists())
                else {
                    return Answer::NxDomain;
                };
                match rest {
                    [] => self.service_name(name, entry, rtype),
                    [host] if !host.starts_with('_') => {
                        match entry.hosts.binary_search_by(|h| (*h.name).cmp(host)) {
                            Ok(i) => typed(address_records(name, ttl, &entry.hosts[i].ips, rtype)),
                            Err(_) => Answer::NxDomain,
                        }
                    }
                    [proto] => match entry.srv_ports().iter().any(|(_, p)| &***p == *proto) {
                        true => Answer::NoData,
                        false => Answer::NxDomain,
                    },
                    [proto, port] => {
                        let known = entry
                            .srv_ports()
                            .iter()
                            .any(|(n, p)| &***n == *port && &***p == *proto);
                        match (known, rtype) {
                            (false, _) => Answer::NxDomain,
                            (true, RecordType::SRV) => {
                                let service = name.base_name().base_name();
                                self.srv(name, &service, entry, Some((port, proto)))
                            }
                            (true, _) => Answer::NoData,
                        }
                    }
                    _ => Answer::NxDomain,
                }
            }
            ["pod"] => Answer::NoData,
            ["pod", ns] => match self.pod_namespaces.contains_key(*ns) {
                true => Answer::NoData,
                false => Answer::NxDomain,
            },
            ["pod", ns, dashed] => {
                let Some(ip) = undashed(dashed).filter(|ip| {
                    self.pod_ips
                        .get(ip)
                        .is_some_and(|n| n.iter().any(|n| &**n == *ns))
                }) else {
                    return Answer::NxDomain;
                };
                typed(address_records(name, ttl, &[ip], rtype))
            }
            _ => Answer::NxDomain,
        }
    }

    /// A Service's own name (`name`): its CNAME, addresses, or SRV for every named port.
    fn service_name(&self, name: &Name, entry: &ServiceEntry, rtype: RecordType) -> Answer {
        let Some(info) = &entry.info else {
            return Answer::NxDomain;
        };
        if let Some(external) = &info.external_name {
            let cname = Record::from_rdata(
                name.clone(),
                self.config.ttl,
                RData::CNAME(CNAME((**external).clone())),
            );
            return found(&Rrset::from(vec![cname]), None);
        }
        match rtype {
            RecordType::SRV => self.srv(name, name, entry, None),
            _ => {
                let ips = if info.headless {
                    &entry.host_ips
                } else {
                    &info.cluster_ips
                };
                typed(address_records(name, self.config.ttl, ips, rtype))
            }
        }
    }

    /// SRV records at `owner` for the Service named `service`: of one named port (`_port`,
    /// `_proto`) or of all; the targets' addresses go in the additional section.
    fn srv(
        &self,
        owner: &Name,
        service: &Name,
        entry: &ServiceEntry,
        only: Option<(&str, &str)>,
    ) -> Answer {
        let Some(info) = &entry.info else {
            return Answer::NoData;
        };
        let ttl = self.config.ttl;
        let wanted =
            |(n, p, _): &Port| only.is_none_or(|(port, proto)| &**n == port && &**p == proto);
        // (target, port) pairs, and the additional records.
        let mut targets: Vec<(Name, u16)> = Vec::new();
        let mut additionals = Vec::new();
        if info.headless {
            let host_names: Vec<Option<Name>> = entry
                .hosts
                .iter()
                .map(|h| {
                    label(&h.name)
                        .ok()
                        .and_then(|l| l.append_name(service).ok())
                })
                .collect();
            let mut used = vec![false; entry.hosts.len()];
            for (port, proto) in entry.srv_ports() {
                for (i, host) in entry.hosts.iter().enumerate() {
                    let Some(number) = host
                        .ports
                        .iter()
                        .find(|(n, p, _)| n == port && p == proto)
                        .filter(|p| wanted(p))
                        .map(|(_, _, number)| *number)
                    else {
                        continue;
                    };
                    if let Some(target) = &host_names[i] {
                        targets.push((target.clone(), number));
                        used[i] = true;
                    }
                }
            }
            for (i, host) in entry.hosts.iter().enumerate() {
                if let (true, Some(target)) = (used[i], &host_names[i]) {
                    glue(target, ttl, &host.ips, &mut additionals);
                }
            }
        } else {
            targets.extend(
                info.ports
                    .iter()
                    .filter(|p| wanted(p))
                    .map(|(_, _, number)| (service.clone(), *number)),
            );
            if !targets.is_empty() {
                glue(service, ttl, &info.cluster_ips, &mut additionals);
            }
        }
        let weight = u16::try_from(100 / targets.len().max(1))
            .unwrap_or(1)
            .max(1);
        let records = targets
            .into_iter()
            .map(|(target, port)| {
                Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, weight, port, target)),
                )
            })
            .collect();
        match rrset(records) {
            Some(answers) => Answer::Records {
                answers,
                additionals: rrset(additionals),
            },
            None => Answer::NoData,
        }
    }

    fn lookup_reverse(&self, name: &Name, labels: &[&[u8]], rtype: RecordType) -> Answer {
        let n = labels.len();
        let is =
            |i: usize, want: &[u8]| labels.get(i).is_some_and(|l| l.eq_ignore_ascii_case(want));
        let ip = if n >= 2 && is(n - 1, b"arpa") && is(n - 2, b"in-addr") {
            reverse_ip(&labels[..n - 2]).filter(IpAddr::is_ipv4)
        } else if n >= 2 && is(n - 1, b"arpa") && is(n - 2, b"ip6") {
            reverse_ip(&labels[..n - 2]).filter(IpAddr::is_ipv6)
        } else {
            None
        };
        match ip.and_then(|ip| self.ptr.get(&ip)) {
            Some(targets) if rtype == RecordType::PTR => {
                let mut names: Vec<Name> = targets
                    .iter()
                    .filter_map(|t| label(&format!("{t}.svc")).ok())
                    .filter_map(|t| t.append_domain(&self.config.zone).ok())
                    .collect();
                names.sort();
                let records = names
                    .into_iter()
                    .map(|t| Record::from_rdata(name.clone(), self.config.ttl, RData::PTR(PTR(t))))
                    .collect();
                match rrset(records) {
                    Some(set) => found(&set, None),
                    None => Answer::NoData,
                }
            }
            Some(_) => Answer::NoData,
            None => Answer::NotInZone,
        }
    }
}

fn found(answers: &Rrset, additionals: Option<Rrset>) -> Answer {
    Answer::Records {
        answers: answers.clone(),
        additionals,
    }
}

/// The records of a type a name has, or NODATA.
fn typed(records: Option<Rrset>) -> Answer {
    match records {
        Some(set) => Answer::Records {
            answers: set,
            additionals: None,
        },
        None => Answer::NoData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> Index {
        let mut config = Config::new("cluster.local").expect("zone");
        config.dns_ip = Some("10.96.0.10".parse().expect("ip"));
        Index::new(config)
    }

    fn q(index: &Index, name: &str, rtype: RecordType) -> Answer {
        let name = Name::from_ascii(name).expect("name");
        index.lookup(&LowerName::new(&name), rtype)
    }

    /// The answer's records as `name type data` lines; NODATA, NXDOMAIN and NOTINZONE by name.
    fn text(answer: &Answer) -> Vec<String> {
        match answer {
            Answer::Records {
                answers,
                additionals,
            } => answers
                .iter()
                .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
                .chain(
                    additionals
                        .iter()
                        .flat_map(|a| a.iter())
                        .map(|r| format!("+ {} {} {}", r.name, r.record_type(), r.data)),
                )
                .collect(),
            Answer::NoData => vec!["NODATA".into()],
            Answer::NxDomain => vec!["NXDOMAIN".into()],
            Answer::NotInZone => vec!["NOTINZONE".into()],
        }
    }

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("slice")
    }

    fn web() -> Service {
        service(json!({
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"clusterIP": "10.96.3.4", "clusterIPs": ["10.96.3.4"], "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 9000},
            ]},
        }))
    }

    fn db_slice(ready: [bool; 3]) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "db-abc", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": ready[0]}},
                {"addresses": ["10.244.2.7"], "hostname": "db-1", "conditions": {"ready": ready[1]}},
                {"addresses": ["10.244.3.9"], "conditions": {"ready": ready[2]}},
            ],
        }))
    }

    fn db(publish_not_ready: bool) -> Service {
        service(json!({
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": publish_not_ready,
                     "ports": [{"name": "pg", "port": 5432}]},
        }))
    }

    #[test]
    fn cluster_ip_services_answer_a_srv_and_ptr() {
        let mut idx = index();
        idx.apply_service(&web()).expect("valid");
        assert_eq!(
            text(&q(&idx, "web.prod.svc.cluster.local.", RecordType::A)),
            ["web.prod.svc.cluster.local. A 10.96.3.4"]
        );
        // Any case.
        assert_eq!(
            text(&q(&idx, "WEB.Prod.SVC.cluster.LOCAL.", RecordType::A)).len(),
            1
        );
        assert_eq!(
            text(&q(
                &idx,
                "_http._tcp.web.prod.svc.cluster.local.",
                RecordType::SRV
            )),
            [
                "_http._tcp.web.prod.svc.cluster.local. SRV 0 100 80 web.prod.svc.cluster.local.",
                "+ web.prod.svc.cluster.local. A 10.96.3.4"
            ]
        );
        assert_eq!(
            text(&q(
                &idx,
                "_dns._udp.web.prod.svc.cluster.local.",
                RecordType::SRV
            ))[0],
            "_dns._udp.web.prod.svc.cluster.local. SRV 0 100 53 web.prod.svc.cluster.local."
        );
        // The Service name's SRV lists every named port (weights split).
        assert_eq!(
            text(&q(&idx, "web.prod.svc.cluster.local.", RecordType::SRV))[..2],
            [
                "web.prod.svc.cluster.local. SRV 0 50 80 web.prod.svc.cluster.local.",
                "web.prod.svc.cluster.local. SRV 0 50 53 web.prod.svc.cluster.local."
            ]
        );
        assert_eq!(
            text(&q(&idx, "4.3.96.10.in-addr.arpa.", RecordType::PTR)),
            ["4.3.96.10.in-addr.arpa. PTR web.prod.svc.cluster.local."]
        );
        // NODATA: the name exists without records of the type; empty non-terminals too.
        for (name, rtype) in [
            ("web.prod.svc.cluster.local.", RecordType::AAAA),
            ("web.prod.svc.cluster.local.", RecordType::TXT),
            ("_tcp.web.prod.svc.cluster.local.", RecordType::A),
            ("_http._tcp.web.prod.svc.cluster.local.", RecordType::A),
            ("prod.svc.cluster.local.", RecordType::A),
            ("svc.cluster.local.", RecordType::A),
            ("cluster.local.", RecordType::A),
            ("4.3.96.10.in-addr.arpa.", RecordType::A),
        ] {
            assert_eq!(text(&q(&idx, name, rtype)), ["NODATA"], "{name} {rtype}");
        }
        for name in [
            "nope.prod.svc.cluster.local.",
            "web.staging.svc.cluster.local.",
            "staging.svc.cluster.local.",
            "_https._tcp.web.prod.svc.cluster.local.",
            "_sctp.web.prod.svc.cluster.local.",
            "x.web.prod.svc.cluster.local.",
            "a.b.web.prod.svc.cluster.local.",
            "other.cluster.local.",
        ] {
            assert_eq!(text(&q(&idx, name, RecordType::A)), ["NXDOMAIN"], "{name}");
        }
        for name in [
            "example.com.",
            "5.3.96.10.in-addr.arpa.",
            "local.",
            "04.3.96.10.in-addr.arpa.",
        ] {
            assert_eq!(text(&q(&idx, name, RecordType::A)), ["NOTINZONE"], "{name}");
        }
        idx.delete_service("prod", "web");
        assert_eq!(
            text(&q(&idx, "web.prod.svc.cluster.local.", RecordType::A)),
            ["NXDOMAIN"]
        );
        assert_eq!(
            text(&q(&idx, "4.3.96.10.in-addr.arpa.", RecordType::PTR)),
            ["NOTINZONE"]
        );
        assert_eq!(
            text(&q(&idx, "prod.svc.cluster.local.", RecordType::A)),
            ["NXDOMAIN"]
        );
    }

    #[test]
    fn headless_services_answer_ready_endpoints_by_hostname_and_srv_n_by_m() {
        let mut idx = index();
        // Slices may come before their Service.
        idx.apply_slice(&db_slice([true, false, true]));
        assert_eq!(
            text(&q(&idx, "db.prod.svc.cluster.local.", RecordType::A)),
            ["NXDOMAIN"]
        );
        idx.apply_service(&db(false)).expect("valid");
        assert_eq!(
            text(&q(&idx, "db.prod.svc.cluster.local.", RecordType::A)),
            [
                "db.prod.svc.cluster.local. A 10.244.1.5",
                "db.prod.svc.cluster.local. A 10.244.3.9"
            ]
        );
        assert_eq!(
            text(&q(&idx, "db-0.db.prod.svc.cluster.local.", RecordType::A)),
            ["db-0.db.prod.svc.cluster.local. A 10.244.1.5"]
        );
        // Not ready: not published.
        assert_eq!(
            text(&q(&idx, "db-1.db.prod.svc.cluster.local.", RecordType::A)),
            ["NXDOMAIN"]
        );
        // No hostname: the dashed address.
        assert_eq!(
            text(&q(
                &idx,
                "10-244-3-9.db.prod.svc.cluster.local.",
                RecordType::A
            )),
            ["10-244-3-9.db.prod.svc.cluster.local. A 10.244.3.9"]
        );
        assert_eq!(
            text(&q(
                &idx,
                "_pg._tcp.db.prod.svc.cluster.local.",
                RecordType::SRV
            )),
            [
                "_pg._tcp.db.prod.svc.cluster.local. SRV 0 50 5432 10-244-3-9.db.prod.svc.cluster.local.",
                "_pg._tcp.db.prod.svc.cluster.local. SRV 0 50 5432 db-0.db.prod.svc.cluster.local.",
                "+ 10-244-3-9.db.prod.svc.cluster.local. A 10.244.3.9",
                "+ db-0.db.prod.svc.cluster.local. A 10.244.1.5",
            ]
        );
        assert_eq!(
            text(&q(&idx, "5.1.244.10.in-addr.arpa.", RecordType::PTR)),
            ["5.1.244.10.in-addr.arpa. PTR db-0.db.prod.svc.cluster.local."]
        );
        // publishNotReadyAddresses publishes every endpoint.
        idx.apply_service(&db(true)).expect("valid");
        assert_eq!(
            text(&q(&idx, "db-1.db.prod.svc.cluster.local.", RecordType::A)),
            ["db-1.db.prod.svc.cluster.local. A 10.244.2.7"]
        );
        // None ready: NXDOMAIN, and the PTRs go.
        idx.apply_service(&db(false)).expect("valid");
        idx.apply_slice(&db_slice([false, false, false]));
        assert_eq!(
            text(&q(&idx, "db.prod.svc.cluster.local.", RecordType::A)),
            ["NXDOMAIN"]
        );
        assert_eq!(
            text(&q(&idx, "5.1.244.10.in-addr.arpa.", RecordType::PTR)),
            ["NOTINZONE"]
        );
        idx.apply_slice(&db_slice([true, true, true]));
        idx.delete_slice("prod", "db-abc");
        assert_eq!(
            text(&q(&idx, "db.prod.svc.cluster.local.", RecordType::A)),
            ["NXDOMAIN"]
        );
    }

    #[test]
    fn external_names_txt_soa_ns_and_pods() {
        let mut idx = index();
        idx.apply_service(&service(json!({
            "metadata": {"name": "search", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "www.example.com"},
        })))
        .expect("valid");
        for rtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            assert_eq!(
                text(&q(&idx, "search.default.svc.cluster.local.", rtype)),
                ["search.default.svc.cluster.local. CNAME www.example.com."]
            );
        }
        let bad = service(json!({
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"type": "ExternalName"},
        }));
        assert_eq!(
            idx.apply_service(&bad),
            Err("spec.externalName: Required value".into())
        );
        assert_eq!(
            text(&q(&idx, "dns-version.cluster.local.", RecordType::TXT)),
            ["dns-version.cluster.local. TXT 1.1.0"]
        );
        let soa = text(&q(&idx, "cluster.local.", RecordType::SOA));
        assert!(
            soa[0]
                .starts_with("cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. ")
                && soa[0].ends_with(" 7200 1800 86400 5"),
            "{soa:?}"
        );
        assert_eq!(
            text(&q(&idx, "cluster.local.", RecordType::NS)),
            [
                "cluster.local. NS ns.dns.cluster.local.",
                "+ ns.dns.cluster.local. A 10.96.0.10"
            ]
        );
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]},
        }))
        .expect("pod");
        idx.apply_pod(&pod);
        assert_eq!(
            text(&q(
                &idx,
                "10-244-1-5.default.pod.cluster.local.",
                RecordType::A
            )),
            ["10-244-1-5.default.pod.cluster.local. A 10.244.1.5"]
        );
        assert_eq!(
            idx.pod_namespace("10.244.1.5".parse().expect("ip")),
            Some("default")
        );
        // Another namespace, or an address no pod has: NXDOMAIN.
        for name in [
            "10-244-1-5.other.pod.cluster.local.",
            "10-244-1-6.default.pod.cluster.local.",
        ] {
            assert_eq!(text(&q(&idx, name, RecordType::A)), ["NXDOMAIN"], "{name}");
        }
        // A finished pod's address is no longer its own.
        let mut done = pod.clone();
        if let Some(status) = done.status.as_mut() {
            status.phase = Some("Succeeded".into());
        }
        idx.apply_pod(&done);
        assert_eq!(idx.pod_namespace("10.244.1.5".parse().expect("ip")), None);
        idx.apply_pod(&pod);
        idx.delete_pod("default", "p");
        assert_eq!(idx.pod_namespace("10.244.1.5".parse().expect("ip")), None);
    }

    #[test]
    fn ipv6_services_and_reverse_names() {
        let mut idx = index();
        idx.apply_service(&service(json!({
            "metadata": {"name": "v6", "namespace": "default"},
            "spec": {"clusterIPs": ["fd00:96::a"], "ports": [{"name": "http", "port": 80}]},
        })))
        .expect("valid");
        assert_eq!(
            text(&q(&idx, "v6.default.svc.cluster.local.", RecordType::AAAA)),
            ["v6.default.svc.cluster.local. AAAA fd00:96::a"]
        );
        let reverse = reverse_name("fd00:96::a".parse().expect("ip")).to_string();
        assert_eq!(
            text(&q(&idx, &reverse, RecordType::PTR)),
            [format!("{reverse} PTR v6.default.svc.cluster.local.")]
        );
        // Dual-stack: A and AAAA, a PTR for each address, SRV additionals of both families.
        idx.apply_service(&service(json!({
            "metadata": {"name": "dual", "namespace": "default"},
            "spec": {"clusterIPs": ["10.96.0.20", "fd00:96::20"], "ipFamilies": ["IPv4", "IPv6"],
                     "ports": [{"name": "http", "port": 80}]},
        })))
        .expect("valid");
        assert_eq!(
            text(&q(&idx, "dual.default.svc.cluster.local.", RecordType::A)),
            ["dual.default.svc.cluster.local. A 10.96.0.20"]
        );
        assert_eq!(
            text(&q(
                &idx,
                "dual.default.svc.cluster.local.",
                RecordType::AAAA
            )),
            ["dual.default.svc.cluster.local. AAAA fd00:96::20"]
        );
        assert_eq!(
            text(&q(
                &idx,
                "_http._tcp.dual.default.svc.cluster.local.",
                RecordType::SRV
            ))[1..],
            [
                "+ dual.default.svc.cluster.local. A 10.96.0.20",
                "+ dual.default.svc.cluster.local. AAAA fd00:96::20"
            ]
        );
        for ip in ["10.96.0.20", "fd00:96::20"] {
            let reverse = reverse_name(ip.parse().expect("ip")).to_string();
            assert_eq!(
                text(&q(&idx, &reverse, RecordType::PTR)),
                [format!("{reverse} PTR dual.default.svc.cluster.local.")]
            );
        }
        assert_eq!(undashed("fd00-96--a"), "fd00:96::a".parse().ok());
        assert_eq!(undashed("10-1-2-3"), "10.1.2.3".parse().ok());
        assert_eq!(undashed("web"), None);
    }

    #[test]
    fn a_slice_moving_to_another_service_leaves_the_first() {
        let mut idx = index();
        idx.apply_service(&db(false)).expect("valid");
        idx.apply_service(&service(json!({
            "metadata": {"name": "db2", "namespace": "prod"},
            "spec": {"clusterIP": "None"},
        })))
        .expect("valid");
        idx.apply_slice(&db_slice([true, true, true]));
        let mut moved = db_slice([true, true, true]);
        moved
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("kubernetes.io/service-name".into(), "db2".into());
        idx.apply_slice(&moved);
        assert_eq!(
            text(&q(&idx, "db.prod.svc.cluster.local.", RecordType::A)),
            ["NXDOMAIN"]
        );
        assert_eq!(
            text(&q(&idx, "db2.prod.svc.cluster.local.", RecordType::A)).len(),
            3
        );
    }
}
