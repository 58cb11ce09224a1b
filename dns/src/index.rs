//! The DNS index: the pure core of the cluster DNS. It holds what the Kubernetes DNS-Based
//! Service Discovery specification (schema 1.1.0) derives from Services, EndpointSlices and Pods,
//! as ready-made record sets, and answers a name and a type with no I/O.
//!
//! Objects come in through [`Index::apply_service`], [`Index::apply_slice`],
//! [`Index::apply_pod`] and their `delete_*` twins; each change rebuilds only the records of the
//! one Service it touches. [`Index::lookup`] returns `Arc`-shared record sets, so a query copies
//! no record and holds no lock while the answer is sent.
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

/// A record set shared between the index and the answers being sent.
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

/// A Service's key: namespace and name.
type Key = (Box<str>, Box<str>);

/// A named port: `_<name>`, `_<protocol>` (lowercase) and its number.
type Port = (Box<str>, Box<str>, u16);

/// The labels of a port's SRV name: `_<name>`, `_<protocol>`.
type PortLabels = (Box<str>, Box<str>);

/// SRV records and the additional records of their targets' addresses.
type SrvSet = (Rrset, Option<Rrset>);

/// The Service fields DNS reads.
#[derive(Clone, Debug, Default, PartialEq)]
struct ServiceInfo {
    /// Cluster IPs; empty for headless and ExternalName Services.
    cluster_ips: Vec<IpAddr>,
    headless: bool,
    external_name: Option<Name>,
    /// Named ports: (name, protocol, port).
    ports: Vec<Port>,
    publish_not_ready: bool,
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
struct EndpointInfo {
    addresses: Vec<IpAddr>,
    hostname: Option<Box<str>>,
    ready: bool,
}

/// The EndpointSlice fields DNS reads.
#[derive(Clone, Debug, Default, PartialEq)]
struct SliceInfo {
    /// The Service it belongs to (`kubernetes.io/service-name`).
    service: Box<str>,
    /// Named ports: (name, protocol, port).
    ports: Vec<Port>,
    endpoints: Vec<EndpointInfo>,
}

/// The records of one Service's names, rebuilt when the Service or one of its slices changes.
#[derive(Debug, Default)]
struct Built {
    /// Whether `<svc>.<ns>.svc.<zone>` exists (false: a headless Service with no endpoint).
    exists: bool,
    a: Option<Rrset>,
    aaaa: Option<Rrset>,
    cname: Option<Rrset>,
    /// SRV of every named port, and the targets' addresses.
    srv: Option<SrvSet>,
    /// `_<port>._<proto>` → SRV and the targets' addresses (a few: a list).
    ports: Vec<(PortLabels, SrvSet)>,
    /// Endpoint hostnames → A and AAAA.
    hosts: HashMap<Box<str>, (Option<Rrset>, Option<Rrset>)>,
    /// The PTR names this Service gives its addresses.
    ptrs: Vec<(IpAddr, Name)>,
}

#[derive(Debug, Default)]
struct ServiceEntry {
    /// `None` while only slices of it are known.
    info: Option<ServiceInfo>,
    slices: HashMap<Box<str>, SliceInfo>,
    built: Built,
}

/// The cluster DNS index. See the module docs.
#[derive(Debug)]
pub struct Index {
    config: Config,
    soa: Rrset,
    ns: Rrset,
    ns_glue: Option<Rrset>,
    version: Rrset,
    services: HashMap<Key, ServiceEntry>,
    /// Namespace → number of Services, for the `<ns>.svc.<zone>` empty non-terminals.
    namespaces: HashMap<Box<str>, usize>,
    /// Slice key → the Service it was last filed under (a slice's label can change).
    slice_owner: HashMap<Key, Box<str>>,
    /// Address → the PTR records of the names pointing at it (sorted by name).
    ptr: HashMap<IpAddr, Rrset>,
    /// Pod key → its addresses; address → the namespaces of the pods that have it.
    pods: HashMap<Key, Vec<IpAddr>>,
    pod_ips: HashMap<IpAddr, Vec<Box<str>>>,
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

/// A and AAAA record sets of a name.
fn addresses(name: &Name, ttl: u32, ips: &BTreeSet<IpAddr>) -> (Option<Rrset>, Option<Rrset>) {
    let (v4, v6): (Vec<_>, Vec<_>) = ips.iter().partition(|ip| ip.is_ipv4());
    let set = |ips: Vec<&IpAddr>| {
        rrset(
            ips.iter()
                .map(|ip| address_record(name, ttl, **ip))
                .collect(),
        )
    };
    (set(v4), set(v6))
}

/// SRV records for targets `(name, port)` and the additional records of their addresses: the
/// `glue` set itself (shared, not copied) when all of it belongs to these targets.
fn srv(owner: &Name, ttl: u32, targets: &[(Name, u16)], glue: Option<&Rrset>) -> Option<SrvSet> {
    let weight = u16::try_from(100 / targets.len().max(1))
        .unwrap_or(1)
        .max(1);
    let records = targets
        .iter()
        .map(|(target, port)| {
            Record::from_rdata(
                owner.clone(),
                ttl,
                RData::SRV(SRV::new(0, weight, *port, target.clone())),
            )
        })
        .collect();
    let wanted = |r: &Record| targets.iter().any(|(t, _)| *t == r.name);
    let additionals = glue.and_then(|glue| {
        if glue.iter().all(wanted) {
            Some(Rrset::clone(glue))
        } else {
            rrset(glue.iter().filter(|r| wanted(r)).cloned().collect())
        }
    });
    rrset(records).map(|r| (r, additionals))
}

/// One set of the records of `sets` (the set itself when there is one).
fn joined<'a>(sets: impl IntoIterator<Item = &'a Rrset>) -> Option<Rrset> {
    let sets: Vec<&Rrset> = sets.into_iter().collect();
    match sets[..] {
        [] => None,
        [one] => Some(Rrset::clone(one)),
        _ => rrset(sets.iter().flat_map(|s| s.iter().cloned()).collect()),
    }
}

fn port_labels(name: &str, protocol: &str) -> PortLabels {
    (
        format!("_{}", name.to_ascii_lowercase()).into(),
        format!("_{}", protocol.to_ascii_lowercase()).into(),
    )
}

impl ServiceInfo {
    fn from_service(svc: &Service) -> Result<ServiceInfo, String> {
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
            info.external_name = Some(name);
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
            info.cluster_ips = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        }
        for port in spec.ports.iter().flatten() {
            if let (Some(name), Ok(number)) = (&port.name, u16::try_from(port.port))
                && !name.is_empty()
            {
                let protocol = port.protocol.as_deref().unwrap_or("TCP");
                let (n, p) = port_labels(name, protocol);
                info.ports.push((n, p, number));
            }
        }
        Ok(info)
    }
}

impl SliceInfo {
    fn from_slice(slice: &EndpointSlice) -> Option<SliceInfo> {
        let service = slice
            .metadata
            .labels
            .as_ref()?
            .get("kubernetes.io/service-name")?;
        let mut info = SliceInfo {
            service: service.to_ascii_lowercase().into(),
            ..SliceInfo::default()
        };
        for port in slice.ports.iter().flatten() {
            if let (Some(name), Some(number)) = (&port.name, port.port)
                && !name.is_empty()
                && let Ok(number) = u16::try_from(number)
            {
                let protocol = port.protocol.as_deref().unwrap_or("TCP");
                let (n, p) = port_labels(name, protocol);
                info.ports.push((n, p, number));
            }
        }
        for ep in slice.endpoints.iter().flatten() {
            let conditions = ep.conditions.clone().unwrap_or_default();
            info.endpoints.push(EndpointInfo {
                addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                hostname: ep
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(|h| h.to_ascii_lowercase().into()),
                // Kubernetes: a nil ready condition means ready.
                ready: conditions.ready.unwrap_or(true),
            });
        }
        Some(info)
    }
}

fn key(namespace: Option<&String>, name: Option<&String>) -> Option<Key> {
    let ns = namespace.map(String::as_str).unwrap_or("default");
    Some((
        ns.to_ascii_lowercase().into(),
        name?.to_ascii_lowercase().into(),
    ))
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
            services: HashMap::new(),
            namespaces: HashMap::new(),
            slice_owner: HashMap::new(),
            ptr: HashMap::new(),
            pods: HashMap::new(),
            pod_ips: HashMap::new(),
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
        self.services.values().filter(|s| s.info.is_some()).count()
    }

    /// Adds or updates a Service. An invalid one (an ExternalName that is not a name) is
    /// dropped from the index with the reason.
    pub fn apply_service(&mut self, svc: &Service) -> Result<(), String> {
        let Some(k) = key(svc.metadata.namespace.as_ref(), svc.metadata.name.as_ref()) else {
            return Err("metadata.name: Required value".into());
        };
        let info = match ServiceInfo::from_service(svc) {
            Ok(info) => info,
            Err(e) => {
                self.delete_service(&k.0, &k.1);
                return Err(e);
            }
        };
        let entry = self.services.entry(k.clone()).or_default();
        if entry.info.as_ref() == Some(&info) {
            return Ok(());
        }
        if entry.info.is_none() {
            *self.namespaces.entry(k.0.clone()).or_default() += 1;
        }
        entry.info = Some(info);
        self.rebuild(&k);
        Ok(())
    }

    /// Removes a Service (its slices stay until they are deleted).
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let k: Key = (
            namespace.to_ascii_lowercase().into(),
            name.to_ascii_lowercase().into(),
        );
        let Some(entry) = self.services.get_mut(&k) else {
            return;
        };
        if entry.info.take().is_some()
            && let Some(count) = self.namespaces.get_mut(&k.0)
        {
            *count -= 1;
            if *count == 0 {
                self.namespaces.remove(&k.0);
            }
        }
        self.rebuild(&k);
    }

    /// Adds or updates an EndpointSlice (one without the `kubernetes.io/service-name` label is
    /// ignored).
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let Some(k) = key(
            slice.metadata.namespace.as_ref(),
            slice.metadata.name.as_ref(),
        ) else {
            return;
        };
        let Some(info) = SliceInfo::from_slice(slice) else {
            self.delete_slice(&k.0, &k.1);
            return;
        };
        if let Some(owner) = self.slice_owner.get(&k)
            && *owner != info.service
        {
            self.delete_slice(&k.0, &k.1);
        }
        let svc: Key = (k.0.clone(), info.service.clone());
        self.slice_owner.insert(k.clone(), info.service.clone());
        let entry = self.services.entry(svc.clone()).or_default();
        if entry.slices.get(&k.1) == Some(&info) {
            return;
        }
        entry.slices.insert(k.1, info);
        self.rebuild(&svc);
    }

    /// Removes an EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let k: Key = (
            namespace.to_ascii_lowercase().into(),
            name.to_ascii_lowercase().into(),
        );
        let Some(owner) = self.slice_owner.remove(&k) else {
            return;
        };
        let svc: Key = (k.0.clone(), owner);
        if let Some(entry) = self.services.get_mut(&svc) {
            entry.slices.remove(&k.1);
            self.rebuild(&svc);
        }
    }

    /// Adds or updates a Pod (its addresses, for pod records and for finding a client's
    /// namespace).
    pub fn apply_pod(&mut self, pod: &Pod) {
        let Some(k) = key(pod.metadata.namespace.as_ref(), pod.metadata.name.as_ref()) else {
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
        if self.pods.get(&k) == Some(&ips) {
            return;
        }
        self.remove_pod(&k);
        for ip in &ips {
            self.pod_ips.entry(*ip).or_default().push(k.0.clone());
        }
        if !ips.is_empty() {
            self.pods.insert(k, ips);
        }
    }

    /// Removes a Pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.remove_pod(&(
            namespace.to_ascii_lowercase().into(),
            name.to_ascii_lowercase().into(),
        ));
    }

    fn remove_pod(&mut self, k: &Key) {
        for ip in self.pods.remove(k).unwrap_or_default() {
            if let Some(namespaces) = self.pod_ips.get_mut(&ip) {
                if let Some(i) = namespaces.iter().position(|n| *n == k.0) {
                    namespaces.swap_remove(i);
                }
                if namespaces.is_empty() {
                    self.pod_ips.remove(&ip);
                }
            }
        }
    }

    /// The namespace of the pod that has this address (a client's, for search-path expansion).
    pub fn pod_namespace(&self, ip: IpAddr) -> Option<&str> {
        self.pod_ips.get(&ip)?.first().map(|n| &**n)
    }

    /// Rebuilds one Service's records and its PTR contributions.
    fn rebuild(&mut self, k: &Key) {
        let Some(entry) = self.services.get_mut(k) else {
            return;
        };
        let old = std::mem::take(&mut entry.built.ptrs);
        let built = match &entry.info {
            Some(info) => build(&self.config, k, info, &entry.slices),
            None => Built::default(),
        };
        let new = built.ptrs.clone();
        entry.built = built;
        if entry.info.is_none() && entry.slices.is_empty() {
            self.services.remove(k);
        }
        let was: HashSet<&(IpAddr, Name)> = old.iter().collect();
        let now: HashSet<&(IpAddr, Name)> = new.iter().collect();
        for (ip, name) in old.iter().filter(|p| !now.contains(p)) {
            self.unpoint(*ip, name);
        }
        for (ip, name) in new.iter().filter(|p| !was.contains(p)) {
            self.point(*ip, name.clone());
        }
    }

    /// The PTR target of a record.
    fn target(record: &Record) -> Option<&Name> {
        match &record.data {
            RData::PTR(PTR(name)) => Some(name),
            _ => None,
        }
    }

    /// Adds `name` to the PTR records of `ip`.
    fn point(&mut self, ip: IpAddr, name: Name) {
        let mut records: Vec<Record> = self.ptr.get(&ip).map(|s| s.to_vec()).unwrap_or_default();
        if records.iter().any(|r| Self::target(r) == Some(&name)) {
            return;
        }
        records.push(Record::from_rdata(
            reverse_name(ip),
            self.config.ttl,
            RData::PTR(PTR(name)),
        ));
        records.sort_by(|a, b| Self::target(a).cmp(&Self::target(b)));
        self.ptr.insert(ip, Rrset::from(records));
    }

    /// Removes `name` from the PTR records of `ip`.
    fn unpoint(&mut self, ip: IpAddr, name: &Name) {
        let Some(set) = self.ptr.get(&ip) else {
            return;
        };
        let kept: Vec<Record> = set
            .iter()
            .filter(|r| Self::target(r) != Some(name))
            .cloned()
            .collect();
        match rrset(kept) {
            Some(set) => self.ptr.insert(ip, set),
            None => self.ptr.remove(&ip),
        };
    }

    /// Answers a query. `name` is lowercased (as hickory's [`LowerName`]).
    pub fn lookup(&self, name: &LowerName, rtype: RecordType) -> Answer {
        let name: &Name = name;
        let zone = &self.config.zone;
        let labels: Vec<&[u8]> = name.iter().collect();
        if !zone.zone_of(name) {
            return self.lookup_reverse(&labels, rtype);
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
        match &parts[..relative.len()] {
            [] => match rtype {
                RecordType::SOA => self.found(&self.soa, None),
                RecordType::NS => self.found(&self.ns, self.ns_glue.clone()),
                _ => Answer::NoData,
            },
            ["dns-version"] => match rtype {
                RecordType::TXT => self.found(&self.version, None),
                _ => Answer::NoData,
            },
            ["dns"] => Answer::NoData,
            ["dns", "ns"] => match (&self.ns_glue, rtype) {
                (Some(glue), RecordType::A | RecordType::AAAA)
                    if glue[0].record_type() == rtype =>
                {
                    self.found(glue, None)
                }
                (Some(_), _) => Answer::NoData,
                (None, _) => Answer::NxDomain,
            },
            ["svc"] => Answer::NoData,
            ["svc", ns] => match self.namespaces.contains_key(*ns) {
                true => Answer::NoData,
                false => Answer::NxDomain,
            },
            ["svc", ns, svc, rest @ ..] => {
                let Some(built) = self
                    .services
                    .get(&(Box::from(*ns), Box::from(*svc)))
                    .map(|e| &e.built)
                    .filter(|b| b.exists)
                else {
                    return Answer::NxDomain;
                };
                match rest {
                    [] => self.service_name(built, rtype),
                    [host] if !host.starts_with('_') => match built.hosts.get(*host) {
                        Some((a, aaaa)) => self.typed(rtype, a, aaaa),
                        None => Answer::NxDomain,
                    },
                    [proto] => match built.ports.iter().any(|((_, p), _)| &**p == *proto) {
                        true => Answer::NoData,
                        false => Answer::NxDomain,
                    },
                    [proto, port] => {
                        match built
                            .ports
                            .iter()
                            .find(|((n, p), _)| &**n == *port && &**p == *proto)
                            .map(|(_, set)| set)
                        {
                            Some((srv, glue)) if rtype == RecordType::SRV => {
                                self.found(srv, glue.clone())
                            }
                            Some(_) => Answer::NoData,
                            None => Answer::NxDomain,
                        }
                    }
                    _ => Answer::NxDomain,
                }
            }
            ["pod"] => Answer::NoData,
            ["pod", ns] => match self.pod_ips.values().any(|n| n.iter().any(|n| &**n == *ns)) {
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
                let owner: Name = name.clone();
                match (ip, rtype) {
                    (IpAddr::V4(_), RecordType::A) | (IpAddr::V6(_), RecordType::AAAA) => self
                        .found(
                            &Rrset::from(vec![address_record(&owner, self.config.ttl, ip)]),
                            None,
                        ),
                    _ => Answer::NoData,
                }
            }
            _ => Answer::NxDomain,
        }
    }

    fn found(&self, answers: &Rrset, additionals: Option<Rrset>) -> Answer {
        Answer::Records {
            answers: answers.clone(),
            additionals,
        }
    }

    /// A or AAAA of a name that has addresses.
    fn typed(&self, rtype: RecordType, a: &Option<Rrset>, aaaa: &Option<Rrset>) -> Answer {
        match (rtype, a, aaaa) {
            (RecordType::A, Some(a), _) => self.found(a, None),
            (RecordType::AAAA, _, Some(aaaa)) => self.found(aaaa, None),
            _ => Answer::NoData,
        }
    }

    fn service_name(&self, built: &Built, rtype: RecordType) -> Answer {
        if let Some(cname) = &built.cname {
            return self.found(cname, None);
        }
        match rtype {
            RecordType::SRV => match &built.srv {
                Some((srv, glue)) => self.found(srv, glue.clone()),
                None => Answer::NoData,
            },
            _ => self.typed(rtype, &built.a, &built.aaaa),
        }
    }

    fn lookup_reverse(&self, labels: &[&[u8]], rtype: RecordType) -> Answer {
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
            Some(set) if rtype == RecordType::PTR => self.found(set, None),
            Some(_) => Answer::NoData,
            None => Answer::NotInZone,
        }
    }
}

/// Builds a Service's records from its spec and slices.
fn build(
    config: &Config,
    (ns, svc): &Key,
    info: &ServiceInfo,
    slices: &HashMap<Box<str>, SliceInfo>,
) -> Built {
    let ttl = config.ttl;
    let Ok(name) = label(&format!("{svc}.{ns}.svc")).and_then(|n| {
        n.append_domain(&config.zone)
            .map_err(|e| format!("{svc}.{ns}: {e}"))
    }) else {
        return Built::default();
    };
    let mut built = Built {
        exists: true,
        ..Built::default()
    };
    if let Some(external) = &info.external_name {
        built.cname = Some(Rrset::from(vec![Record::from_rdata(
            name,
            ttl,
            RData::CNAME(CNAME(external.clone())),
        )]));
        return built;
    }
    let child = |l: &str| label(l).and_then(|l| l.append_name(&name).map_err(|e| e.to_string()));
    if !info.headless {
        let ips: BTreeSet<IpAddr> = info.cluster_ips.iter().copied().collect();
        (built.a, built.aaaa) = addresses(&name, ttl, &ips);
        built.ptrs = ips.iter().map(|ip| (*ip, name.clone())).collect();
        let glue = joined(built.a.iter().chain(built.aaaa.iter()));
        let mut all = Vec::new();
        for (port, proto, number) in &info.ports {
            let Ok(owner) = child(&format!("{port}.{proto}")) else {
                continue;
            };
            if let Some(set) = srv(&owner, ttl, &[(name.clone(), *number)], glue.as_ref()) {
                built.ports.push(((port.clone(), proto.clone()), set));
            }
            all.push((name.clone(), *number));
        }
        built.srv = srv(&name, ttl, &all, glue.as_ref());
        return built;
    }
    // Headless: the endpoints, by hostname (or dashed address), in a stable order.
    let mut hosts: BTreeMap<Box<str>, (BTreeSet<IpAddr>, Vec<&Port>)> = BTreeMap::new();
    for slice in slices.values() {
        for ep in &slice.endpoints {
            if !(ep.ready || info.publish_not_ready) {
                continue;
            }
            for ip in &ep.addresses {
                let host: Box<str> = ep.hostname.clone().unwrap_or_else(|| dashed(*ip).into());
                let entry = hosts.entry(host).or_default();
                entry.0.insert(*ip);
                for port in &slice.ports {
                    if !entry.1.contains(&port) {
                        entry.1.push(port);
                    }
                }
            }
        }
    }
    if hosts.is_empty() {
        // No ready endpoint: the name does not exist.
        built.exists = false;
        return built;
    }
    let all: BTreeSet<IpAddr> = hosts
        .values()
        .flat_map(|(ips, _)| ips.iter().copied())
        .collect();
    (built.a, built.aaaa) = addresses(&name, ttl, &all);
    let mut glue: Vec<Record> = Vec::new();
    let mut targets: BTreeMap<PortLabels, Vec<(Name, u16)>> = BTreeMap::new();
    for (host, (ips, ports)) in &hosts {
        let Ok(host_name) = child(host) else {
            continue;
        };
        let (a, aaaa) = addresses(&host_name, ttl, ips);
        glue.extend(a.iter().chain(aaaa.iter()).flat_map(|s| s.iter().cloned()));
        built
            .ptrs
            .extend(ips.iter().map(|ip| (*ip, host_name.clone())));
        built.hosts.insert(host.clone(), (a, aaaa));
        for (port, proto, number) in ports {
            targets
                .entry((port.clone(), proto.clone()))
                .or_default()
                .push((host_name.clone(), *number));
        }
    }
    let glue = rrset(glue);
    let mut all_targets = Vec::new();
    for ((port, proto), list) in targets {
        let Ok(owner) = child(&format!("{port}.{proto}")) else {
            continue;
        };
        if let Some(set) = srv(&owner, ttl, &list, glue.as_ref()) {
            built.ports.push(((port, proto), set));
        }
        all_targets.extend(list);
    }
    built.srv = srv(&name, ttl, &all_targets, glue.as_ref());
    built
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
