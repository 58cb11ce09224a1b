//! `cargo xtask bench dns`: dnsperf against `rudder dns` and against Knot DNS (Debian's `knot`)
//! serving the same records, in the same run, at 1,000 and 10,000 Services.
//!
//! For each size N:
//! - A fresh `rudder server` (embedded store, no agent, DNS or ingress of its own) gets N
//!   Services through kube-rs, 64 requests in flight, 100 per namespace: 90% ClusterIP
//!   Services with named ports `http` (TCP 80) and `dns` (UDP 53) and a cluster IP chosen here
//!   (10.100.0.0/16); 10% headless Services, each with one EndpointSlice of three ready
//!   endpoints (10.244.0.0/16, hostnames `pod-0..2`, port `http` 8080). The cluster IPs are
//!   read back from the apiserver, so the Knot zone holds what rudder was given.
//! - Knot serves `cluster.local.` (and `10.in-addr.arpa.` with the PTR records rudder also
//!   keeps) from a zone file generated from the same objects, with the records of the
//!   Kubernetes DNS specification as `rudder dns` answers them ([`Model::zone`]): one UDP, one
//!   TCP and one background worker.
//! - `rudder dns` runs against the server's kubeconfig with forwarding off
//!   (`--dns-upstream none`) and the kube-dns address 10.96.0.10 for the NS record's glue, as
//!   in the Knot zone.
//! - Both servers are pinned to CPU 1 (`taskset -c 1`) and dnsperf to CPU 0. Before measuring,
//!   a sample of the queries is asked of both with dig and the answers compared.
//! - Queries, uniformly random over the objects with a fixed seed: 70% A of ClusterIP Service
//!   names, 10% SRV `_http._tcp.<svc>`, 10% A of headless Service names (three records), 10%
//!   names that do not exist (NXDOMAIN).
//!
//! Metrics per subject (`rudder`, `knot`), case `services`:
//! - `sync_s`: from starting the server until the last Service resolves (for rudder: its
//!   initial list and index; for Knot: loading the zone file);
//! - `rss_bytes` after that, and `peak_rss_bytes` (VmHWM) at the end;
//! - `qps`: dnsperf's queries per second at saturation (16 clients, 100 queries outstanding);
//!   `server_cpu_cores`: the server's CPU time over that run divided by its length;
//!   `qps_per_core`: completed queries per second of the server's CPU time;
//!   `saturated_latency_p50_ms`/`p99`, `lost`, `error_responses` (neither NOERROR nor
//!   NXDOMAIN);
//! - `latency_p50_ms`/`latency_p99_ms` (case `services`, `qps`): at a fixed offered load that
//!   both servers sustain, where latency is the server's and not dnsperf's queue.
//!
//! - `add_to_answer_p50_ms`/`_max_ms` and `delete_to_nxdomain_p50_ms`/`_max_ms` (rudder only;
//!   Knot serves a fixed zone): 20 times, a Service created through the API until it answers,
//!   then deleted until NXDOMAIN, from just before the API call (a hand-made UDP query every
//!   millisecond).
//!
//! With two sizes, `memory_bytes_per_object` (case `services: "<small>→<large>"`): the RSS
//! difference divided by the difference in Services plus endpoints (the issue's "per
//! service+pod").
//!
//! Latencies come from dnsperf's verbose mode (one line per response): Debian's dnsperf 2.10
//! has no latency histogram.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

use crate::{
    control::{self, rss_bytes, status_bytes},
    results::Results,
};

/// Knot's daemon, from Debian's `knot`.
const KNOTD: &str = "/usr/sbin/knotd";
/// The subjects, in the order they are measured.
const SUBJECTS: [&str; 2] = ["knot", "rudder"];
/// Services per namespace.
const PER_NAMESPACE: usize = 100;
/// Every `HEADLESS_EVERY`-th Service is headless.
const HEADLESS_EVERY: usize = 10;
/// Endpoints of each headless Service.
const ENDPOINTS: usize = 3;
/// Lines in dnsperf's query file (it goes round the file as often as needed).
const QUERIES: usize = 50_000;
/// Queries asked of both servers with dig and compared before measuring.
const CROSS_CHECK: usize = 100;
/// Seed of the query mix.
const SEED: u64 = 0x5eed_d45e;
/// dnsperf clients (sockets) and queries outstanding at saturation.
const CLIENTS: u32 = 16;
const OUTSTANDING: u32 = 100;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Service counts.
    pub services: Vec<usize>,
    /// Subjects: `rudder`, `knot`.
    pub subjects: Vec<String>,
    /// Untimed dnsperf run before each measurement.
    pub warmup: Duration,
    /// Length of the saturation run.
    pub duration: Duration,
    /// Length of the fixed-load run.
    pub latency_duration: Duration,
    /// Offered load of the fixed-load run (queries per second).
    pub latency_qps: u32,
}

impl Options {
    /// `--quick`: 1,000 Services, 5 s runs.
    pub fn quick() -> Self {
        Self {
            services: vec![1000],
            duration: Duration::from_secs(5),
            latency_duration: Duration::from_secs(5),
            ..Self::full()
        }
    }

    /// The issue's sizes, 20 s saturation runs.
    pub fn full() -> Self {
        Self {
            services: vec![1000, 10000],
            subjects: SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(20),
            latency_duration: Duration::from_secs(10),
            latency_qps: 10_000,
        }
    }
}

/// What a Service stands for in DNS.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// A ClusterIP Service with its cluster IP and named ports `http`/TCP 80, `dns`/UDP 53.
    ClusterIp(Ipv4Addr),
    /// A headless Service with its ready endpoints (hostname, address), port `http` 8080.
    Headless(Vec<(String, Ipv4Addr)>),
}

/// One benchmark Service.
#[derive(Clone, Debug, PartialEq)]
struct Svc {
    namespace: String,
    name: String,
    kind: Kind,
}

impl Svc {
    /// `<name>.<namespace>.svc.cluster.local.`
    fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local.", self.name, self.namespace)
    }
}

/// The objects of one size, and everything derived from them: the API objects, Knot's zone
/// files and dnsperf's queries.
#[derive(Clone, Debug)]
struct Model {
    namespaces: Vec<String>,
    services: Vec<Svc>,
}

/// A query: name (without the trailing dot) and type.
type Query = (String, &'static str);

/// SplitMix64: a fixed, dependency-free sequence for the query mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

impl Model {
    fn new(services: usize) -> Self {
        let namespaces = (0..services.div_ceil(PER_NAMESPACE))
            .map(|i| format!("bench-{i}"))
            .collect();
        let services = (0..services)
            .map(|i| {
                let namespace = format!("bench-{}", i / PER_NAMESPACE);
                if i % HEADLESS_EVERY == HEADLESS_EVERY - 1 {
                    let endpoints = (0..ENDPOINTS)
                        .map(|k| {
                            let offset = (i * ENDPOINTS + k + 1) as u32;
                            let ip =
                                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + offset);
                            (format!("pod-{k}"), ip)
                        })
                        .collect();
                    Svc {
                        namespace,
                        name: format!("headless-{i}"),
                        kind: Kind::Headless(endpoints),
                    }
                } else {
                    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32 + 1);
                    Svc {
                        namespace,
                        name: format!("svc-{i}"),
                        kind: Kind::ClusterIp(ip),
                    }
                }
            })
            .collect();
        Self {
            namespaces,
            services,
        }
    }

    /// Endpoints of all headless Services (the "pods").
    fn endpoints(&self) -> usize {
        self.services
            .iter()
            .map(|s| match &s.kind {
                Kind::Headless(e) => e.len(),
                Kind::ClusterIp(_) => 0,
            })
            .sum()
    }

    fn last(&self, headless: bool) -> Option<&Svc> {
        self.services
            .iter()
            .rev()
            .find(|s| matches!(s.kind, Kind::Headless(_)) == headless)
    }

    /// The `cluster.local.` zone as `rudder dns` serves it: SOA (negative TTL 5 s) and NS at
    /// the apex, `dns-version` TXT, and per Service the A and SRV records of the Kubernetes DNS
    /// specification (SRV weight `100 / records`, as CoreDNS), every other TTL 30 s.
    fn zone(&self) -> String {
        let mut z = String::from(
            "$ORIGIN cluster.local.\n$TTL 30\n\
             @ 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n\
             @ IN NS ns.dns.cluster.local.\n\
             ns.dns IN A 10.96.0.10\n\
             dns-version IN TXT \"1.1.0\"\n",
        );
        for svc in &self.services {
            let fqdn = svc.fqdn();
            match &svc.kind {
                Kind::ClusterIp(ip) => {
                    let _ = writeln!(z, "{fqdn} IN A {ip}");
                    let _ = writeln!(z, "_http._tcp.{fqdn} IN SRV 0 100 80 {fqdn}");
                    let _ = writeln!(z, "_dns._udp.{fqdn} IN SRV 0 100 53 {fqdn}");
                }
                Kind::Headless(endpoints) => {
                    let weight = (100 / endpoints.len().max(1)).max(1);
                    for (hostname, ip) in endpoints {
                        let _ = writeln!(z, "{fqdn} IN A {ip}");
                        let _ = writeln!(z, "{hostname}.{fqdn} IN A {ip}");
                        let _ = writeln!(
                            z,
                            "_http._tcp.{fqdn} IN SRV 0 {weight} 8080 {hostname}.{fqdn}"
                        );
                    }
                }
            }
        }
        z
    }

    /// `10.in-addr.arpa.`: the PTR records rudder keeps for cluster IPs and endpoints.
    fn reverse_zone(&self) -> String {
        let mut z = String::from(
            "$ORIGIN 10.in-addr.arpa.\n$TTL 30\n\
             @ 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n\
             @ IN NS ns.dns.cluster.local.\n",
        );
        let ptr = |ip: &Ipv4Addr| {
            let [_, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.10.in-addr.arpa.")
        };
        for svc in &self.services {
            let fqdn = svc.fqdn();
            match &svc.kind {
                Kind::ClusterIp(ip) => {
                    let _ = writeln!(z, "{} IN PTR {fqdn}", ptr(ip));
                }
                Kind::Headless(endpoints) => {
                    for (hostname, ip) in endpoints {
                        let _ = writeln!(z, "{} IN PTR {hostname}.{fqdn}", ptr(ip));
                    }
                }
            }
        }
        z
    }

    /// `count` queries: 70% A of ClusterIP Services, 10% SRV `_http._tcp` of any Service, 10% A
    /// of headless Services, 10% A of names that do not exist in an existing namespace.
    fn queries(&self, count: usize, seed: u64) -> Vec<Query> {
        let cluster_ip: Vec<&Svc> = self
            .services
            .iter()
            .filter(|s| matches!(s.kind, Kind::ClusterIp(_)))
            .collect();
        let headless: Vec<&Svc> = self
            .services
            .iter()
            .filter(|s| matches!(s.kind, Kind::Headless(_)))
            .collect();
        let mut rng = Rng(seed);
        let pick = |from: &[&Svc], rng: &mut Rng| -> String {
            let svc = from[rng.below(from.len())];
            format!("{}.{}.svc.cluster.local", svc.name, svc.namespace)
        };
        let all: Vec<&Svc> = self.services.iter().collect();
        (0..count)
            .map(|_| match rng.below(100) {
                0..70 if !cluster_ip.is_empty() => (pick(&cluster_ip, &mut rng), "A"),
                70..80 => (format!("_http._tcp.{}", pick(&all, &mut rng)), "SRV"),
                80..90 if !headless.is_empty() => (pick(&headless, &mut rng), "A"),
                _ => {
                    let ns = &self.namespaces[rng.below(self.namespaces.len())];
                    let i = rng.below(1_000_000);
                    (format!("nope-{i}.{ns}.svc.cluster.local"), "A")
                }
            })
            .collect()
    }

    fn service_object(svc: &Svc) -> Result<Service> {
        let ports = match &svc.kind {
            Kind::ClusterIp(_) => json!([
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53},
            ]),
            Kind::Headless(_) => json!([
                {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080},
            ]),
        };
        let cluster_ip = match &svc.kind {
            Kind::ClusterIp(ip) => ip.to_string(),
            Kind::Headless(_) => "None".to_owned(),
        };
        Ok(serde_json::from_value(json!({
            "metadata": {"name": svc.name, "namespace": svc.namespace, "labels": {"bench": "dns"}},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "ports": ports},
        }))?)
    }

    fn slice_object(svc: &Svc) -> Result<Option<EndpointSlice>> {
        let Kind::Headless(endpoints) = &svc.kind else {
            return Ok(None);
        };
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(hostname, ip)| {
                json!({
                    "addresses": [ip.to_string()],
                    "hostname": hostname,
                    "conditions": {"ready": true},
                })
            })
            .collect();
        Ok(Some(serde_json::from_value(json!({
            "metadata": {
                "name": format!("{}-bench", svc.name),
                "namespace": svc.namespace,
                "labels": {"bench": "dns", "kubernetes.io/service-name": svc.name},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        }))?))
    }
}

/// A process killed (and reaped) on drop.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) what: &'static str,
}

impl Daemon {
    pub(crate) fn spawn(what: &'static str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what} ({cmd:?})"))?;
        Ok(Self { child, what })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.what);
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both UDP and TCP (a DNS server binds both).
fn free_dns_port() -> Result<u16> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no loopback port free for both UDP and TCP")
}

/// How many Services [`follow_changes`] creates and deletes.
const CHANGES: usize = 20;

/// A query for `name` type A, by hand (id 0x5244, recursion desired).
fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x52, 0x44, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Asks `name` A of the server on `port` until `done(rcode, answers)` holds (a query every
/// millisecond at most); the time from `since` when it did.
fn poll_until(
    port: u16,
    name: &str,
    since: Instant,
    done: impl Fn(u8, u16) -> bool,
) -> Result<Duration> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let query = a_query(name);
    let mut buf = [0u8; 1500];
    loop {
        socket.send(&query)?;
        if let Ok(len) = socket.recv(&mut buf)
            && len >= 12
            && buf[..2] == query[..2]
            && done(buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]]))
        {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(10) {
            bail!("{name}: the answer did not change within 10 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Change-to-answer latency (the issue's "answers change within 100 ms"): [`CHANGES`] times,
/// a Service is created through the API and asked for until it answers, then deleted and asked
/// for until NXDOMAIN. Each sample runs from just before the API call, so it covers the write,
/// the watch event and the index update.
async fn follow_changes(client: &Client, port: u16, n: usize, results: &mut Results) -> Result<()> {
    let ns = "dns-changes";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(ns).await?.is_none() {
        let object: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        namespaces.create(&PostParams::default(), &object).await?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for i in 0..CHANGES {
        let name = format!("change-{i}");
        let fqdn = format!("{name}.{ns}.svc.cluster.local");
        let object: Service = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}),
        )?;
        let since = Instant::now();
        services.create(&PostParams::default(), &object).await?;
        let q = fqdn.clone();
        added.push(
            tokio::task::spawn_blocking(move || {
                poll_until(port, &q, since, |rcode, answers| rcode == 0 && answers > 0)
            })
            .await??,
        );
        let since = Instant::now();
        services.delete(&name, &DeleteParams::default()).await?;
        removed.push(
            tokio::task::spawn_blocking(move || {
                poll_until(port, &fqdn, since, |rcode, _| rcode == 3)
            })
            .await??,
        );
    }
    let case = [("services", json!(n))];
    for (metric, samples) in [
        ("add_to_answer", &mut added),
        ("delete_to_nxdomain", &mut removed),
    ] {
        let p50 = crate::stats::percentile_ms(samples, 50.0);
        let max = crate::stats::percentile_ms(samples, 100.0);
        results.push("rudder", &case, &format!("{metric}_p50_ms"), p50, "ms");
        results.push("rudder", &case, &format!("{metric}_max_ms"), max, "ms");
        eprintln!("   {metric}: p50 {p50:.1} ms, max {max:.1} ms over {CHANGES} Services");
    }
    Ok(())
}

/// Creates the model's namespaces, Services and EndpointSlices, 64 requests in flight, then
/// reads the cluster IPs back so the model holds what the apiserver stored.
async fn create_objects(client: &Client, model: &mut Model) -> Result<()> {
    const IN_FLIGHT: usize = 64;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    futures::stream::iter(model.namespaces.iter().map(|name| {
        let namespaces = namespaces.clone();
        async move {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            namespaces
                .create(&PostParams::default(), &ns)
                .await
                .with_context(|| format!("creating namespace {name}"))?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .try_collect::<Vec<()>>()
    .await?;

    futures::stream::iter(model.services.iter().map(|svc| {
        let client = client.clone();
        async move {
            let services: Api<Service> = Api::namespaced(client.clone(), &svc.namespace);
            services
                .create(&PostParams::default(), &Model::service_object(svc)?)
                .await
                .with_context(|| format!("creating Service {}/{}", svc.namespace, svc.name))?;
            if let Some(slice) = Model::slice_object(svc)? {
                let slices: Api<EndpointSlice> = Api::namespaced(client, &svc.namespace);
                slices
                    .create(&PostParams::default(), &slice)
                    .await
                    .with_context(|| {
                        format!(
                            "creating the EndpointSlice of {}/{}",
                            svc.namespace, svc.name
                        )
                    })?;
            }
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .try_collect::<Vec<()>>()
    .await?;

    let stored: BTreeMap<(String, String), String> = Api::<Service>::all(client.clone())
        .list(&ListParams::default().labels("bench=dns"))
        .await
        .context("listing the benchmark's Services")?
        .items
        .into_iter()
        .filter_map(|s| {
            let ip = s.spec?.cluster_ip?;
            Some(((s.metadata.namespace?, s.metadata.name?), ip))
        })
        .collect();
    let mut changed = 0;
    for svc in &mut model.services {
        let Kind::ClusterIp(ip) = &mut svc.kind else {
            continue;
        };
        let key = (svc.namespace.clone(), svc.name.clone());
        let stored: Ipv4Addr = stored
            .get(&key)
            .with_context(|| format!("Service {}/{} not listed", key.0, key.1))?
            .parse()
            .with_context(|| format!("cluster IP of {}/{}", key.0, key.1))?;
        if stored != *ip {
            changed += 1;
            *ip = stored;
        }
    }
    if changed > 0 {
        eprintln!(
            "   note: the apiserver assigned other cluster IPs to {changed} Services; using those"
        );
    }
    Ok(())
}

/// dig's short answer for `name`/`rtype` from 127.0.0.1:`port` (empty on no answer).
fn dig_short(port: u16, name: &str, rtype: &str) -> Result<Vec<String>> {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string()])
        .args(["+time=1", "+tries=1", "+short", name, rtype])
        .output()
        .context("running dig (Debian's dnsutils)")?;
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect();
    lines.sort();
    Ok(lines)
}

/// The response code and the sorted answer section for `name`/`rtype` (whitespace folded,
/// lowercased), as dig shows them.
fn dig_answer(port: u16, name: &str, rtype: &str) -> Result<(String, Vec<String>)> {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string()])
        .args(["+time=2", "+tries=2", "+noall", "+comments", "+answer"])
        .args([name, rtype])
        .output()
        .context("running dig (Debian's dnsutils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rcode = text
        .split_once("status: ")
        .and_then(|(_, rest)| rest.split(',').next())
        .unwrap_or("no answer")
        .to_owned();
    let mut answer: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        })
        .collect();
    answer.sort();
    Ok((rcode, answer))
}

/// Waits until the DNS server on `port` answers the model's last ClusterIP and last headless
/// Service as expected; returns the time since `started`.
async fn wait_synced(
    daemon: &mut Daemon,
    port: u16,
    model: &Model,
    started: Instant,
    limit: Duration,
) -> Result<Duration> {
    let mut expected = Vec::new();
    for headless in [false, true] {
        if let Some(svc) = model.last(headless) {
            let mut ips: Vec<String> = match &svc.kind {
                Kind::ClusterIp(ip) => vec![ip.to_string()],
                Kind::Headless(e) => e.iter().map(|(_, ip)| ip.to_string()).collect(),
            };
            ips.sort();
            expected.push((svc.fqdn(), ips));
        }
    }
    loop {
        daemon.check_alive()?;
        let mut done = true;
        for (name, ips) in &expected {
            let name = name.clone();
            let got = tokio::task::spawn_blocking(move || dig_short(port, &name, "A")).await??;
            if &got != ips {
                done = false;
                break;
            }
        }
        if done {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!(
                "{} did not answer the last Services within {limit:?}",
                daemon.what
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one dnsperf run reported.
#[derive(Clone, Debug, Default, PartialEq)]
struct Perf {
    sent: u64,
    completed: u64,
    lost: u64,
    qps: f64,
    avg_latency_ms: f64,
    /// Response code → count.
    rcodes: BTreeMap<String, u64>,
    /// Latency of every response, microseconds (from `-v`).
    latencies_us: Vec<u32>,
}

impl Perf {
    /// Parses dnsperf's standard output (with `-v`).
    fn parse(out: impl BufRead) -> Result<Self> {
        let mut perf = Perf::default();
        let first_number =
            |rest: &str| -> Option<f64> { rest.split_whitespace().next()?.parse().ok() };
        for line in out.lines() {
            let line = line.context("reading dnsperf's output")?;
            if let Some(rest) = line.strip_prefix("> ") {
                // `> NOERROR name type 0.000123`; timeouts are `> T name type`.
                let fields: Vec<&str> = rest.split_whitespace().collect();
                if let [_, _, _, latency] = fields[..]
                    && let Ok(s) = latency.parse::<f64>()
                {
                    perf.latencies_us.push((s * 1e6).round() as u32);
                }
                continue;
            }
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("Queries sent:") {
                perf.sent = first_number(rest).unwrap_or(0.0) as u64;
            } else if let Some(rest) = line.strip_prefix("Queries completed:") {
                perf.completed = first_number(rest).unwrap_or(0.0) as u64;
            } else if let Some(rest) = line.strip_prefix("Queries lost:") {
                perf.lost = first_number(rest).unwrap_or(0.0) as u64;
            } else if let Some(rest) = line.strip_prefix("Queries per second:") {
                perf.qps = first_number(rest).unwrap_or(0.0);
            } else if let Some(rest) = line.strip_prefix("Average Latency (s):") {
                perf.avg_latency_ms = first_number(rest).unwrap_or(0.0) * 1000.0;
            } else if let Some(rest) = line.strip_prefix("Response codes:") {
                // `NOERROR 74702 (66.67%), NXDOMAIN 37350 (33.33%)`
                for part in rest.split(',') {
                    let mut words = part.split_whitespace();
                    if let (Some(code), Some(count)) = (words.next(), words.next())
                        && let Ok(count) = count.parse()
                    {
                        perf.rcodes.insert(code.to_owned(), count);
                    }
                }
            }
        }
        if perf.sent == 0 {
            bail!("dnsperf reported no queries sent");
        }
        perf.latencies_us.sort_unstable();
        Ok(perf)
    }

    /// The `p`-th percentile (0–100) of the response latencies in milliseconds (0 if none).
    fn percentile_ms(&self, p: f64) -> f64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * (n - 1) as f64).round() as usize;
        f64::from(self.latencies_us[rank.min(n - 1)]) / 1000.0
    }

    /// Responses other than NOERROR and NXDOMAIN.
    fn error_responses(&self) -> u64 {
        self.rcodes
            .iter()
            .filter(|(code, _)| !matches!(code.as_str(), "NOERROR" | "NXDOMAIN"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Runs dnsperf on CPU 0 against 127.0.0.1:`port` for `length`, at most `qps` queries per
/// second when given; returns its report and the wall time it took.
fn dnsperf(
    port: u16,
    queries: &Path,
    length: Duration,
    qps: Option<u32>,
) -> Result<(Perf, Duration)> {
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "0",
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .arg("-d")
    .arg(queries)
    .args(["-l", &length.as_secs().max(1).to_string()])
    .args(["-c", &CLIENTS.to_string(), "-q", &OUTSTANDING.to_string()])
    .args(["-t", "2", "-v"])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if let Some(qps) = qps {
        cmd.args(["-Q", &qps.to_string()]);
    }
    let started = Instant::now();
    let mut child = Daemon::spawn("dnsperf", &mut cmd)?;
    let stdout = child
        .child
        .stdout
        .take()
        .context("dnsperf's standard output")?;
    let perf = Perf::parse(BufReader::with_capacity(1 << 20, stdout));
    let status = child.child.wait().context("waiting for dnsperf")?;
    let wall = started.elapsed();
    if !status.success() {
        bail!("dnsperf failed ({status})");
    }
    Ok((perf?, wall))
}

/// CPU time (user + system, all threads) of process `pid` so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("parsing /proc/{pid}/stat"))
    };
    let (utime, stime) = (ticks(11)?, ticks(12)?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok((utime + stime) as f64 / hz as f64)
}

/// Measures the DNS server `daemon` on `port` and records its numbers as `subject`.
async fn measure(
    subject: &str,
    daemon: &Daemon,
    port: u16,
    queries: &Path,
    n: usize,
    options: &Options,
    results: &mut Results,
) -> Result<()> {
    let pid = daemon.pid();
    let case = [("services", json!(n))];
    let owned = queries.to_owned();
    let warmup = options.warmup;
    tokio::task::spawn_blocking(move || dnsperf(port, &owned, warmup, None)).await??;

    let owned = queries.to_owned();
    let duration = options.duration;
    let cpu_before = cpu_seconds(pid)?;
    let (perf, wall) =
        tokio::task::spawn_blocking(move || dnsperf(port, &owned, duration, None)).await??;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let cores = cpu / wall.as_secs_f64();
    let per_core = if cpu > 0.0 {
        perf.completed as f64 / cpu
    } else {
        0.0
    };
    let (p50, p99) = (perf.percentile_ms(50.0), perf.percentile_ms(99.0));
    results.push(subject, &case, "qps", perf.qps, "1/s");
    results.push(subject, &case, "qps_per_core", per_core, "1/s");
    results.push(subject, &case, "server_cpu_cores", cores, "cores");
    results.push(
        subject,
        &case,
        "saturated_latency_avg_ms",
        perf.avg_latency_ms,
        "ms",
    );
    results.push(subject, &case, "saturated_latency_p50_ms", p50, "ms");
    results.push(subject, &case, "saturated_latency_p99_ms", p99, "ms");
    results.push(subject, &case, "lost", perf.lost as f64, "queries");
    results.push(
        subject,
        &case,
        "error_responses",
        perf.error_responses() as f64,
        "responses",
    );
    eprintln!(
        "   saturated: {:.0} qps ({:.0} per core, server at {cores:.2} cores), p50 {p50:.3} ms, \
         p99 {p99:.3} ms, lost {}, codes {:?}",
        perf.qps, per_core, perf.lost, perf.rcodes
    );

    let owned = queries.to_owned();
    let (length, rate) = (options.latency_duration, options.latency_qps);
    let (perf, _) =
        tokio::task::spawn_blocking(move || dnsperf(port, &owned, length, Some(rate))).await??;
    let case = [("services", json!(n)), ("qps", json!(rate))];
    let (p50, p99) = (perf.percentile_ms(50.0), perf.percentile_ms(99.0));
    results.push(subject, &case, "latency_p50_ms", p50, "ms");
    results.push(subject, &case, "latency_p99_ms", p99, "ms");
    eprintln!(
        "   at {rate} qps offered ({:.0} answered): p50 {p50:.3} ms, p99 {p99:.3} ms, lost {}",
        perf.qps, perf.lost
    );
    if perf.qps < 0.9 * f64::from(rate) {
        eprintln!(
            "   warning: {subject} did not sustain the offered load; its latency is queueing"
        );
    }
    let case = [("services", json!(n))];
    results.push(
        subject,
        &case,
        "peak_rss_bytes",
        status_bytes(pid, "VmHWM:"),
        "bytes",
    );
    Ok(())
}

/// Knot's configuration: one zone file per zone, loaded whole, no journal; one worker of each
/// kind.
fn knot_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\n    udp-workers: 1\n    \
         tcp-workers: 1\n    background-workers: 1\n\
         database:\n    storage: {d}\n\
         log:\n  - target: stderr\n    any: warning\n\
         template:\n  - id: default\n    storage: {d}\n    zonefile-load: whole\n    \
         zonefile-sync: -1\n    journal-content: none\n\
         zone:\n  - domain: cluster.local.\n    file: {d}/cluster.local.zone\n  \
         - domain: 10.in-addr.arpa.\n    file: {d}/10.in-addr.arpa.zone\n"
    )
}

/// Asks both servers `sample` and returns the differences (query, knot's, rudder's).
fn cross_check(knot: u16, rudder: u16, sample: &[Query]) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    for (name, rtype) in sample {
        let a = dig_answer(knot, name, rtype)?;
        let b = dig_answer(rudder, name, rtype)?;
        if a != b {
            diffs.push(format!("{name} {rtype}: knot {a:?}, rudder {b:?}"));
        }
    }
    Ok(diffs)
}

/// Checks that `rudder` has the `dns` subcommand.
fn check_rudder_dns(rudder: &Path) -> Result<()> {
    let out = Command::new(rudder)
        .args(["dns", "--help"])
        .output()
        .with_context(|| format!("running {}", rudder.display()))?;
    if !out.status.success() {
        bail!(
            "{} has no `dns` subcommand ({}); run with --subjects knot to measure Knot alone",
            rudder.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(())
}

/// Runs the benchmark and writes `out/results.json` and `out/report.md` (with a goals section
/// and plots).
pub async fn run(rudder: &Path, out: &Path, options: &Options) -> Result<Results> {
    if let Some(unknown) = options
        .subjects
        .iter()
        .find(|s| !SUBJECTS.contains(&s.as_str()))
    {
        bail!("unknown subject {unknown:?}: expected rudder or knot");
    }
    let measured = |s: &str| options.subjects.iter().any(|x| x == s);
    if measured("rudder") {
        check_rudder_dns(rudder)?;
    }
    if measured("knot") && !Path::new(KNOTD).exists() {
        bail!("{KNOTD} is missing (Debian package knot; `cargo xtask prereqs` installs it)");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before the run: {}", load.trim());

    let mut results = Results::new("dns");
    // RSS after sync and the object counts, per subject, for the per-object memory.
    let mut memory: BTreeMap<&str, Vec<(usize, usize, f64)>> = BTreeMap::new();
    for &n in &options.services {
        eprintln!("== {n} services: starting rudder server, creating the objects");
        let mut model = Model::new(n);
        let (server, client) = control::start_server(rudder, None).await?;
        let started = Instant::now();
        create_objects(&client, &mut model).await?;
        eprintln!(
            "   {} Services, {} EndpointSlices ({} endpoints) in {:.1} s",
            model.services.len(),
            model.services.len() / HEADLESS_EVERY,
            model.endpoints(),
            started.elapsed().as_secs_f64()
        );
        let objects = model.services.len() + model.endpoints();

        let dir = tempfile::Builder::new()
            .prefix("rudder-bench-dns-")
            .tempdir()?;
        let queries = model.queries(QUERIES, SEED);
        let query_file = dir.path().join("queries.txt");
        let text: String = queries.iter().map(|(n, t)| format!("{n} {t}\n")).collect();
        std::fs::write(&query_file, text)?;

        let mut knot_port = None;
        let mut idle_knot = None;
        for subject in SUBJECTS.iter().copied().filter(|s| measured(s)) {
            let port = free_dns_port()?;
            let (mut daemon, limit) = match subject {
                "knot" => {
                    std::fs::write(dir.path().join("cluster.local.zone"), model.zone())?;
                    std::fs::write(
                        dir.path().join("10.in-addr.arpa.zone"),
                        model.reverse_zone(),
                    )?;
                    let conf = dir.path().join("knot.conf");
                    std::fs::write(&conf, knot_conf(dir.path(), port))?;
                    eprintln!("== knot at {n} services");
                    let daemon = Daemon::spawn(
                        "knotd",
                        Command::new("taskset")
                            .args(["-c", "1", KNOTD, "-c"])
                            .arg(&conf)
                            .stdout(Stdio::null())
                            .stderr(Stdio::inherit()),
                    )?;
                    (daemon, Duration::from_secs(60))
                }
                _ => {
                    eprintln!("== rudder dns at {n} services");
                    let daemon = Daemon::spawn(
                        "rudder dns",
                        Command::new("taskset")
                            .args(["-c", "1"])
                            .arg(rudder)
                            .arg("dns")
                            .arg("--kubeconfig")
                            .arg(&server.kubeconfig)
                            .args(["--dns-addr", &format!("127.0.0.1:{port}")])
                            .args(["--service-ip", "10.96.0.10"])
                            .args(["--dns-upstream", "none"])
                            .env("RUST_LOG", "warn")
                            .stdout(Stdio::null())
                            .stderr(Stdio::inherit()),
                    )?;
                    (daemon, Duration::from_secs(120))
                }
            };
            let started = Instant::now();
            let sync = wait_synced(&mut daemon, port, &model, started, limit).await?;
            let rss = rss_bytes(daemon.pid());
            let case = [("services", json!(n))];
            results.push(subject, &case, "sync_s", sync.as_secs_f64(), "s");
            results.push(subject, &case, "rss_bytes", rss, "bytes");
            memory.entry(subject).or_default().push((n, objects, rss));
            eprintln!(
                "   answering after {:.2} s, RSS {:.1} MiB",
                sync.as_secs_f64(),
                rss / 1_048_576.0
            );
            if subject == "rudder"
                && let Some(knot) = knot_port
            {
                let sample = queries[..CROSS_CHECK.min(queries.len())].to_vec();
                let diffs =
                    tokio::task::spawn_blocking(move || cross_check(knot, port, &sample)).await??;
                results.push(
                    subject,
                    &case,
                    "answers_differing_from_knot",
                    diffs.len() as f64,
                    "queries",
                );
                if diffs.is_empty() {
                    eprintln!("   {CROSS_CHECK} sample queries: same answers as knot");
                } else {
                    eprintln!(
                        "   warning: {} of {CROSS_CHECK} sample queries differ from knot:",
                        diffs.len()
                    );
                    for d in diffs.iter().take(5) {
                        eprintln!("     {d}");
                    }
                }
            }
            measure(
                subject,
                &daemon,
                port,
                &query_file,
                n,
                options,
                &mut results,
            )
            .await?;
            daemon.check_alive()?;
            if subject == "rudder" {
                follow_changes(&client, port, n, &mut results).await?;
            }
            if subject == "knot" {
                // Kept (idle) for rudder's cross-check.
                knot_port = Some(port);
                idle_knot = Some(daemon);
            }
        }
        drop(idle_knot);
        drop(server);
    }

    for (subject, sizes) in &memory {
        if let (Some(small), Some(large)) = (sizes.first(), sizes.last())
            && large.1 > small.1
        {
            let per_object = (large.2 - small.2) / (large.1 - small.1) as f64;
            let case = [("services", json!(format!("{}→{}", small.0, large.0)))];
            results.push(
                subject,
                &case,
                "memory_bytes_per_object",
                per_object,
                "bytes",
            );
        }
    }

    results.write(out, "knot")?;
    let mut report = results.markdown("knot");
    let _ = writeln!(
        report,
        "\nLoad average when the run started: {} (anything else running shares CPU 1, \
         where the servers run, and CPU 0, where dnsperf runs).",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    report.push_str(&goals(&results, options));
    match crate::plots::write_plots(&results, "services", &out.join("plots")) {
        Ok(files) => report.push_str(&crate::plots::report_section(&files, "plots")),
        Err(e) => eprintln!("plots skipped: {:#}", anyhow::Error::from(e)),
    }
    std::fs::write(out.join("report.md"), report)?;
    Ok(results)
}

/// The issue's goals, checked against this run (markdown).
fn goals(results: &Results, options: &Options) -> String {
    let Some(&n) = options.services.iter().max() else {
        return String::new();
    };
    let case = |extra: Option<(&str, serde_json::Value)>| {
        let mut c: BTreeMap<String, serde_json::Value> =
            [("services".to_owned(), json!(n))].into_iter().collect();
        if let Some((k, v)) = extra {
            c.insert(k.to_owned(), v);
        }
        c
    };
    let plain = case(None);
    let rudder = |metric: &str| results.value("rudder", &plain, metric);
    let knot = |metric: &str| results.value("knot", &plain, metric);
    let fmt = |v: Option<f64>, digits: usize| {
        v.map_or_else(
            || "not measured in this run".to_owned(),
            |v| format!("**{v:.digits$}**"),
        )
    };
    let ratio = |metric: &str| rudder(metric).zip(knot(metric)).map(|(r, k)| r / k);
    let p99 = results.value(
        "rudder",
        &case(Some(("qps", json!(options.latency_qps)))),
        "latency_p99_ms",
    );
    let memory = options.services.iter().min().and_then(|small| {
        let c = [("services".to_owned(), json!(format!("{small}→{n}")))]
            .into_iter()
            .collect();
        results.value("rudder", &c, "memory_bytes_per_object")
    });
    let mut out = format!("\n## Goals (at {n} services, ratios within this run)\n\n");
    let _ = writeln!(
        out,
        "- rudder queries per second per CPU core ≥ 35,000: {}",
        fmt(rudder("qps_per_core"), 0)
    );
    let _ = writeln!(
        out,
        "- rudder / knot queries per CPU core ≥ 0.5: {} (raw qps ratio: {})",
        fmt(ratio("qps_per_core"), 2),
        fmt(ratio("qps"), 2)
    );
    let _ = writeln!(
        out,
        "- rudder p99 latency at {} qps ≤ 2 ms: {}",
        options.latency_qps,
        fmt(p99, 3)
    );
    let _ = writeln!(
        out,
        "- rudder memory per Service + endpoint ≤ 1,024 bytes: {}",
        fmt(memory, 0)
    );
    let _ = writeln!(
        out,
        "- rudder answers follow a Service's creation and deletion within 100 ms (slowest of {CHANGES} each): {} / {} ms (no peer: Knot serves a fixed zone)",
        fmt(rudder("add_to_answer_max_ms"), 1),
        fmt(rudder("delete_to_nxdomain_max_ms"), 1)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_has_the_mix_of_the_issue() {
        let m = Model::new(1000);
        assert_eq!(m.namespaces.len(), 10);
        assert_eq!(m.services.len(), 1000);
        let headless = m
            .services
            .iter()
            .filter(|s| matches!(s.kind, Kind::Headless(_)))
            .count();
        assert_eq!(headless, 100);
        assert_eq!(m.endpoints(), 300);
        assert_eq!(m.services[0].fqdn(), "svc-0.bench-0.svc.cluster.local.");
        assert_eq!(
            m.services[0].kind,
            Kind::ClusterIp(Ipv4Addr::new(10, 100, 0, 1))
        );
        // Cluster IPs stay inside the service CIDR 10.96.0.0/12 at 10k, endpoints inside 10.244/16.
        let big = Model::new(10000);
        for s in &big.services {
            match &s.kind {
                Kind::ClusterIp(ip) => assert_eq!(ip.octets()[..2], [10, 100]),
                Kind::Headless(e) => assert!(e.iter().all(|(_, ip)| ip.octets()[..2] == [10, 244])),
            }
        }
    }

    #[test]
    fn zone_holds_the_records_rudder_serves() {
        let m = Model::new(10);
        let zone = m.zone();
        for line in [
            "svc-0.bench-0.svc.cluster.local. IN A 10.100.0.1",
            "_http._tcp.svc-0.bench-0.svc.cluster.local. IN SRV 0 100 80 svc-0.bench-0.svc.cluster.local.",
            "_dns._udp.svc-0.bench-0.svc.cluster.local. IN SRV 0 100 53 svc-0.bench-0.svc.cluster.local.",
            "headless-9.bench-0.svc.cluster.local. IN A 10.244.0.28",
            "pod-2.headless-9.bench-0.svc.cluster.local. IN A 10.244.0.30",
            "_http._tcp.headless-9.bench-0.svc.cluster.local. IN SRV 0 33 8080 pod-1.headless-9.bench-0.svc.cluster.local.",
            "dns-version IN TXT \"1.1.0\"",
        ] {
            assert!(
                zone.lines().any(|l| l == line),
                "missing {line:?} in\n{zone}"
            );
        }
        assert_eq!(
            zone.lines().filter(|l| l.contains(" IN A 10.")).count(),
            9 + 6 + 1
        );
        let reverse = m.reverse_zone();
        assert!(
            reverse.contains("1.0.100.10.in-addr.arpa. IN PTR svc-0.bench-0.svc.cluster.local.\n")
        );
        assert!(reverse.contains(
            "30.0.244.10.in-addr.arpa. IN PTR pod-2.headless-9.bench-0.svc.cluster.local.\n"
        ));
    }

    #[test]
    fn queries_follow_the_mix_and_the_seed() {
        let m = Model::new(1000);
        let q = m.queries(10_000, SEED);
        assert_eq!(q, m.queries(10_000, SEED));
        let share = |f: &dyn Fn(&Query) -> bool| q.iter().filter(|x| f(x)).count() as f64 / 100.0;
        let cluster_ip = share(&|(n, t)| *t == "A" && n.starts_with("svc-"));
        let srv = share(&|(_, t)| *t == "SRV");
        let headless = share(&|(n, _)| n.starts_with("headless-"));
        let missing = share(&|(n, _)| n.starts_with("nope-"));
        for (got, want) in [
            (cluster_ip, 70.0),
            (srv, 10.0),
            (headless, 10.0),
            (missing, 10.0),
        ] {
            assert!((got - want).abs() < 2.0, "{got} vs {want}");
        }
    }

    #[test]
    fn parses_dnsperf_output() {
        let out = "\
[Status] Sending queries (to 127.0.0.1:15353)
> NXDOMAIN nope.b.svc.cluster.local A 0.000371
> NOERROR a.b.svc.cluster.local A 0.000200
> T a.b.svc.cluster.local A
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         112052
  Queries completed:    112050 (100.00%)
  Queries lost:         2 (0.00%)

  Response codes:       NOERROR 74702 (66.67%), NXDOMAIN 37346 (33.33%), SERVFAIL 2 (0.00%)
  Average packet size:  request 43, response 85
  Run time (s):         1.000340
  Queries per second:   112013.915269

  Average Latency (s):  0.000348 (min 0.000018, max 0.003873)
  Latency StdDev (s):   0.000236
";
        let perf = Perf::parse(out.as_bytes()).expect("parses");
        assert_eq!(perf.sent, 112052);
        assert_eq!(perf.completed, 112050);
        assert_eq!(perf.lost, 2);
        assert!((perf.qps - 112013.9).abs() < 0.1);
        assert!((perf.avg_latency_ms - 0.348).abs() < 1e-9);
        assert_eq!(perf.rcodes["NXDOMAIN"], 37346);
        assert_eq!(perf.error_responses(), 2);
        assert_eq!(perf.latencies_us, vec![200, 371]);
        assert_eq!(perf.percentile_ms(99.0), 0.371);
        assert_eq!(perf.percentile_ms(0.0), 0.2);
    }
}
