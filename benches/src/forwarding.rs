//! `cargo xtask bench forwarding`: Service forwarding through each dataplane, side by side.
//!
//! One topology for every subject (a [`Lab`]): a client pod namespace → the node namespace with
//! the dataplane under test → two backend pod namespaces. Subjects:
//! - `none`: the client talks to a backend's own address; nothing to translate. The physical
//!   limit of this machine.
//! - `iptables`: kube-proxy's chains written with `iptables-restore` (the peer every ratio is
//!   taken against).
//! - `nftables`: kube-proxy's nftables mode (verdict maps, one lookup per packet whatever the
//!   number of services), loaded with `nft -f`.
//! - `ipvs`: reported as skipped when the kernel has no IP_VS (this machine's has none).
//! - `ebpf-tc`: rudder's TC program on the pods' host-side veths.
//! - `ebpf-xdp`: rudder's XDP program on the node's uplink; the client is outside the node (the
//!   lab's uplink namespace) and talks to the node address and the service's NodePorts; replies
//!   are restored by the TC program on the backends' veths. Its ratios are taken against the
//!   iptables subject's ClusterIP path, which does less work than kube-proxy's NodePort path
//!   (that adds the KUBE-NODEPORTS chain and masquerading), so they understate the difference.
//! - `socket-lb`: rudder's cgroup programs; the client process's sockets connect straight to a
//!   backend (the benchmark moves itself into the lab's cgroup for these runs).
//!
//! The service under test is one of `services` services; the others are realistic filler
//! (a ClusterIP with two backends each), which is what makes iptables' first packet slower as
//! the count grows. Metrics (names from DESIGN.md): `new_conns_per_s` (connect, one 1-byte
//! request/response, close; 32 in flight on one event loop), `first_packet_p99_us` (connect() time, one at a time),
//! `rr_p50_us`/`rr_p99_us` (1-byte ping-pong on one connection), `throughput_gbps` (one TCP
//! stream), `udp_pps` (18-byte datagrams from one socket, 64 per
//! `sendmmsg`, counted at the backend),
//! `cpu_ns_per_packet` (all CPU time on the machine during the UDP run / datagrams delivered),
//! `update_one_service_us` (one service's backends change at N services until the dataplane
//! holds it), `state_memory_bytes` (kernel memory of rudder's maps as bpftool reports it; for
//! iptables the size of the nat and filter rule text, the closest comparable number).
//!
//! Everything runs inside the lab's namespaces; nothing is sent anywhere else.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rudder_ebpf_common::{Config, HAIRPIN_ADDR};
use rudder_node::{
    lab::{Lab, NODE_IP, Pod, exec, in_ns},
    proxy::{
        ebpf::Datapath,
        iptables::Iptables,
        model::{Backend, DesiredState, Frontend, Protocol, ServicePortName},
        nftables::Nftables,
        plan::{Planner, Settings},
    },
};

use crate::{
    loadgen::{self, Servers},
    results::Results,
};

/// Every subject the contract names; those not built yet are reported as skipped.
pub const ALL_SUBJECTS: [&str; 7] = [
    "none",
    "iptables",
    "ipvs",
    "nftables",
    "ebpf-tc",
    "ebpf-xdp",
    "socket-lb",
];

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Service counts.
    pub services: Vec<usize>,
    /// Subjects.
    pub dataplanes: Vec<String>,
    /// Seconds per throughput-style measurement.
    pub seconds: f64,
    /// Sequential connects for the first-packet latency.
    pub connects: usize,
    /// Round trips for the request/response latency.
    pub round_trips: usize,
    /// Repetitions of the one-service update.
    pub updates: usize,
}

impl Options {
    /// The full run.
    pub fn full() -> Self {
        Self {
            services: vec![1, 1000, 10000],
            dataplanes: [
                "none",
                "iptables",
                "nftables",
                "ebpf-tc",
                "ebpf-xdp",
                "socket-lb",
            ]
            .map(String::from)
            .to_vec(),
            seconds: 3.0,
            connects: 2000,
            round_trips: 20000,
            updates: 20,
        }
    }

    /// A few minutes.
    pub fn quick() -> Self {
        Self {
            services: vec![1, 1000],
            seconds: 1.0,
            connects: 400,
            round_trips: 4000,
            updates: 5,
            ..Self::full()
        }
    }
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const RR_PORT: u16 = 8080;
const SINK_PORT: u16 = 8081;
const UDP_PORT: u16 = 5353;
/// Short connections kept in flight by the load generator.
const CRR_IN_FLIGHT: usize = 32;
/// NodePorts of the service under test (rr, sink, udp).
const NODE_PORTS: (u16, u16, u16) = (30080, 30081, 30053);

fn frontend(
    name: &str,
    ip: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    backends: Vec<Backend>,
) -> Frontend {
    Frontend {
        name: ServicePortName {
            namespace: "bench".into(),
            name: name.into(),
            port: format!("p{port}"),
            protocol,
        },
        cluster_ip: ip,
        port,
        node_port: None,
        external_ips: Vec::new(),
        affinity_timeout: None,
        internal_local: false,
        external_local: false,
        cluster_backends: backends.clone(),
        external_backends: backends.clone(),
        serving: backends,
    }
}

fn backend(ip: Ipv4Addr, port: u16) -> Backend {
    Backend {
        ip,
        port,
        local: true,
        terminating: false,
    }
}

/// The service under test (three ports) plus `n - 1` filler services.
pub fn state(n: usize, backends: &[Ipv4Addr], generation: u32) -> DesiredState {
    let mut state = DesiredState::default();
    for (port, target, proto, node_port) in [
        (80, RR_PORT, Protocol::Tcp, NODE_PORTS.0),
        (81, SINK_PORT, Protocol::Tcp, NODE_PORTS.1),
        (53, UDP_PORT, Protocol::Udp, NODE_PORTS.2),
    ] {
        let mut f = frontend(
            "target",
            VIP,
            port,
            proto,
            backends.iter().map(|ip| backend(*ip, target)).collect(),
        );
        f.node_port = Some(node_port);
        state.frontends.insert(f.name.clone(), f);
    }
    for i in 1..n {
        state
            .frontends
            .insert(filler(i, generation).name.clone(), filler(i, generation));
    }
    state
}

/// Filler service `i`: 10.97.x.y:80 with two made-up backends in 10.244.128.0/17 (never
/// contacted). `generation` changes one backend of filler 1, for the update measurement.
pub fn filler(i: usize, generation: u32) -> Frontend {
    let n = u32::try_from(i).unwrap_or(u32::MAX);
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + n);
    let b = u32::from(Ipv4Addr::new(10, 244, 128, 0)) + (n * 2) % 32000;
    let extra = if i == 1 { generation } else { 0 };
    frontend(
        &format!("filler-{i}"),
        ip,
        80,
        Protocol::Tcp,
        vec![
            backend(Ipv4Addr::from(b), 8080),
            backend(Ipv4Addr::from(b + 1 + extra), 8080),
        ],
    )
}

/// The dataplane under test, kept alive while measuring.
enum Dataplane {
    None,
    Iptables(Iptables),
    Nftables(Nftables),
    Ebpf {
        datapath: Box<Datapath>,
        planner: Planner,
    },
}

struct Bed {
    lab: Lab,
    client: Pod,
    servers: Vec<Servers>,
    backends: Vec<Ipv4Addr>,
    dataplane: Dataplane,
    /// Address the client talks to: the VIP, or a backend for `none`.
    target: Ipv4Addr,
    /// (rr port, sink port, udp port) at the target.
    ports: (u16, u16, u16),
}

fn build_bed(subject: &str, n: usize) -> Result<Bed> {
    let mut lab = Lab::new().context("creating the lab (needs root)")?;
    let pod_client = lab.add_pod()?;
    let client = if subject == "ebpf-xdp" {
        lab.add_uplink()?
    } else {
        pod_client
    };
    for key in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65535",
    ] {
        exec(&client.ns, "sysctl", &["-qw", key], None)?;
    }
    let mut servers = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..2 {
        let pod = lab.add_pod()?;
        servers.push(Servers::start(&pod.ns, RR_PORT, SINK_PORT, UDP_PORT)?);
        backends.push(pod.ip);
    }
    let desired = state(n, &backends, 0);
    let (dataplane, target, ports) = match subject {
        "none" => (Dataplane::None, backends[0], (RR_PORT, SINK_PORT, UDP_PORT)),
        "iptables" => {
            lab.route_services_to_sink()?;
            let iptables = Iptables::new(Some(&lab.node));
            iptables.sync(&desired)?;
            (Dataplane::Iptables(iptables), VIP, (80, 81, 53))
        }
        "nftables" => {
            lab.route_services_to_sink()?;
            let mut nftables = Nftables::new(Some(&lab.node));
            nftables.sync(&desired)?;
            (Dataplane::Nftables(nftables), VIP, (80, 81, 53))
        }
        "ebpf-tc" | "socket-lb" | "ebpf-xdp" => {
            let config = Config {
                hairpin_addr: u32::from_ne_bytes(HAIRPIN_ADDR),
                ..Config::default()
            };
            let mut datapath = Datapath::open(&lab.pin_dir, config)?;
            let pods: Vec<String> = lab.pods.iter().map(|p| p.host_if.clone()).collect();
            in_ns(&lab.node, || {
                pods.iter().try_for_each(|p| datapath.attach_pod(p))
            })??;
            if subject == "socket-lb" {
                let cgroup = lab.make_cgroup()?;
                datapath.attach_cgroup(&cgroup)?;
            }
            let mut settings = Settings::default();
            let (target, ports) = if subject == "ebpf-xdp" {
                in_ns(&lab.node, || datapath.attach_uplink("up0"))??;
                settings.node_ips = vec![NODE_IP];
                (NODE_IP, NODE_PORTS)
            } else {
                (VIP, (80, 81, 53))
            };
            let mut planner = datapath.planner(settings);
            datapath.apply(&planner.sync(&desired)?)?;
            (
                Dataplane::Ebpf {
                    datapath: Box::new(datapath),
                    planner,
                },
                target,
                ports,
            )
        }
        other => bail!("subject {other} is not built yet"),
    };
    Ok(Bed {
        lab,
        client,
        servers,
        backends,
        dataplane,
        target,
        ports,
    })
}

/// Moves this process into `cgroup` until dropped (socket-LB acts on sockets made by its
/// processes), then back.
struct InCgroup {
    original: PathBuf,
}

impl InCgroup {
    fn enter(cgroup: &Path) -> Result<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 membership in /proc/self/cgroup")?;
        let root = cgroup.parent().context("cgroup has no parent")?;
        let original = root.join(rel.trim_start_matches('/'));
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())?;
        Ok(Self { original })
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.original.join("cgroup.procs"),
            std::process::id().to_string(),
        );
    }
}

fn percentile_us(samples: &mut [Duration], p: f64) -> f64 {
    crate::stats::percentile_ms(samples, p) * 1000.0
}

/// Total busy CPU time of the machine so far, in nanoseconds (from /proc/stat).
fn busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    busy * 1_000_000_000 / hz
}

fn measure(
    bed: &mut Bed,
    subject: &str,
    n: usize,
    o: &Options,
    results: &mut Results,
) -> Result<()> {
    let case = [("services", serde_json::json!(n))];
    let rr = SocketAddr::from((bed.target, bed.ports.0));
    let sink = SocketAddr::from((bed.target, bed.ports.1));
    let udp = SocketAddr::from((bed.target, bed.ports.2));
    let ns = bed.client.ns.clone();
    let secs = o.seconds;

    // First-packet latency: one connect at a time.
    let mut samples = in_ns(&ns, || -> Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(o.connects);
        for _ in 0..o.connects {
            let started = Instant::now();
            let conn = TcpStream::connect_timeout(&rr, Duration::from_secs(3))?;
            samples.push(started.elapsed());
            drop(conn);
        }
        Ok(samples)
    })??;
    let p99 = percentile_us(&mut samples, 99.0);
    results.push(subject, &case, "first_packet_p99_us", p99, "µs");
    eprintln!("  {subject:9} services={n:<6} first_packet_p99_us {p99:.1}");

    // New connections per second: many in flight on one event loop, each connect + 1-byte
    // round trip + close.
    let outcome = loadgen::crr(&ns, rr, Duration::from_secs_f64(secs), CRR_IN_FLIGHT)?;
    let rate = outcome.completed as f64 / secs;
    results.push(subject, &case, "new_conns_per_s", rate, "1/s");
    eprintln!(
        "  {subject:9} services={n:<6} new_conns_per_s {rate:.0} ({} failed)",
        outcome.failed
    );

    // Request/response on one connection.
    let mut samples = in_ns(&ns, || -> Result<Vec<Duration>> {
        let mut c = TcpStream::connect_timeout(&rr, Duration::from_secs(3))?;
        c.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        let mut samples = Vec::with_capacity(o.round_trips);
        for _ in 0..o.round_trips {
            let started = Instant::now();
            c.write_all(b"x")?;
            c.read_exact(&mut byte)?;
            samples.push(started.elapsed());
        }
        Ok(samples)
    })??;
    let (p50, p99) = (
        percentile_us(&mut samples, 50.0),
        percentile_us(&mut samples, 99.0),
    );
    results.push(subject, &case, "rr_p50_us", p50, "µs");
    results.push(subject, &case, "rr_p99_us", p99, "µs");
    eprintln!("  {subject:9} services={n:<6} rr_p50_us {p50:.1} rr_p99_us {p99:.1}");

    // One TCP stream.
    let bytes = in_ns(&ns, || -> Result<u64> {
        let mut c = TcpStream::connect_timeout(&sink, Duration::from_secs(3))?;
        let buf = vec![0u8; 256 * 1024];
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < deadline {
            c.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        Ok(sent)
    })??;
    let gbps = bytes as f64 * 8.0 / secs / 1e9;
    results.push(subject, &case, "throughput_gbps", gbps, "Gbit/s");
    eprintln!("  {subject:9} services={n:<6} throughput_gbps {gbps:.2}");

    // Small UDP datagrams from one socket, counted where they arrive.
    let before: u64 = bed
        .servers
        .iter()
        .map(|s| s.udp_received.load(Ordering::Relaxed))
        .sum();
    let cpu_before = busy_ns();
    let sent = loadgen::udp_blast(&ns, udp, Duration::from_secs_f64(secs))?;
    thread::sleep(Duration::from_millis(200));
    let cpu = busy_ns().saturating_sub(cpu_before);
    let after: u64 = bed
        .servers
        .iter()
        .map(|s| s.udp_received.load(Ordering::Relaxed))
        .sum();
    let delivered = after.saturating_sub(before);
    let pps = delivered as f64 / secs;
    results.push(subject, &case, "udp_pps", pps, "1/s");
    if delivered > 0 {
        results.push(
            subject,
            &case,
            "cpu_ns_per_packet",
            cpu as f64 / delivered as f64,
            "ns",
        );
    }
    eprintln!(
        "  {subject:9} services={n:<6} udp_pps {pps:.0} ({:.0}% of {sent} sent)",
        100.0 * delivered as f64 / sent.max(1) as f64
    );

    // One service change at n services, and the state's memory.
    match &mut bed.dataplane {
        Dataplane::None => {}
        Dataplane::Iptables(iptables) => {
            let p99 = rule_updates(
                n,
                &bed.backends,
                o.updates.min(5),
                |d| Ok(iptables.sync(d)?),
            )?;
            let rules = exec(&bed.lab.node, "iptables-save", &[], None)?;
            push_rules(results, subject, n, p99, &rules);
        }
        Dataplane::Nftables(nftables) => {
            let p99 = rule_updates(n, &bed.backends, o.updates.min(10), |d| {
                Ok(nftables.sync(d)?)
            })?;
            let rules = exec(
                &bed.lab.node,
                "nft",
                &["list", "table", "ip", "kube-proxy"],
                None,
            )?;
            push_rules(results, subject, n, p99, &rules);
        }
        Dataplane::Ebpf { datapath, planner } => {
            if subject == "ebpf-tc" {
                // Filler 1 exists only with n ≥ 2; at n = 1 a target port change is measured.
                let mut samples = Vec::new();
                for g in 1..=o.updates {
                    let g = u32::try_from(g).unwrap_or(1);
                    let started = Instant::now();
                    let ops = if n >= 2 {
                        let f = filler(1, g);
                        planner.update(&f.name.clone(), Some(&f))?
                    } else {
                        let mut ips = bed.backends.clone();
                        if g % 2 == 1 {
                            ips.pop();
                        }
                        planner.sync(&state(1, &ips, 0))?
                    };
                    datapath.apply(&ops)?;
                    samples.push(started.elapsed());
                }
                let p99 = percentile_us(&mut samples, 99.0);
                results.push(subject, &case, "update_one_service_us", p99, "µs");
                eprintln!("  {subject:9} services={n:<6} update_one_service_us {p99:.0}");
            }
            let memory = map_memory(&bed.lab.pin_dir);
            results.push(subject, &case, "state_memory_bytes", memory as f64, "bytes");
        }
    }
    Ok(())
}

/// p99 of `rounds` one-service changes at `n` services, written by a rule-based peer's `sync`.
fn rule_updates(
    n: usize,
    backends: &[Ipv4Addr],
    rounds: usize,
    mut sync: impl FnMut(&DesiredState) -> Result<()>,
) -> Result<f64> {
    let mut samples = Vec::new();
    for g in 1..=rounds {
        let desired = state(n.max(2), backends, u32::try_from(g).unwrap_or(1));
        let started = Instant::now();
        sync(&desired)?;
        samples.push(started.elapsed());
    }
    Ok(percentile_us(&mut samples, 99.0))
}

/// Records a rule-based peer's update time and, as its state size, the length of its rules.
fn push_rules(results: &mut Results, subject: &str, n: usize, p99: f64, rules: &str) {
    let case = [("services", serde_json::json!(n))];
    results.push(subject, &case, "update_one_service_us", p99, "µs");
    results.push(
        subject,
        &case,
        "state_memory_bytes",
        rules.len() as f64,
        "bytes",
    );
    eprintln!("  {subject:9} services={n:<6} update_one_service_us {p99:.0}");
}

/// Kernel memory of the maps pinned under `dir`, as bpftool reports it.
fn map_memory(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("RUDDER_") {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(entry.path())
            .output();
        if let Ok(out) = out
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        {
            total += v["bytes_memlock"].as_u64().unwrap_or(0);
        }
    }
    total
}

/// Runs the benchmark and writes `results.json` and `report.md` into `out`.
pub fn run(out: &Path, o: &Options) -> Result<Results> {
    let mut results = Results::new("forwarding");
    let started = Instant::now();
    for subject in &o.dataplanes {
        if !ALL_SUBJECTS.contains(&subject.as_str()) {
            bail!(
                "unknown dataplane {subject}; known: {}",
                ALL_SUBJECTS.join(",")
            );
        }
    }
    for &n in &o.services {
        for subject in &o.dataplanes {
            if subject == "ipvs" {
                // kube-proxy's ipvs mode needs the kernel's IP_VS, which not every kernel has
                // (this machine's does not); it is reported as skipped rather than faked.
                if !Path::new("/proc/net/ip_vs").exists() {
                    eprintln!("  ipvs      skipped: this kernel has no IP_VS (no /proc/net/ip_vs)");
                } else {
                    eprintln!("  ipvs      skipped: not built yet");
                }
                continue;
            }
            eprintln!(
                "[{:>5.0}s] {subject} at {n} services: programming",
                started.elapsed().as_secs_f64()
            );
            let mut bed = build_bed(subject, n)?;
            let _cgroup = if subject == "socket-lb" {
                Some(InCgroup::enter(&bed.lab.cgroup)?)
            } else {
                None
            };
            measure(&mut bed, subject, n, o, &mut results)?;
        }
    }
    results.write(out, "iptables")?;
    let mut report = results.markdown("iptables");
    report.push_str("\n## Goals (ratios within this run)\n\n");
    for (goal, value) in goals(&results) {
        match value {
            Some(v) => report.push_str(&format!("- {goal}: **{v:.2}**\n")),
            None => report.push_str(&format!("- {goal}: not measured in this run\n")),
        }
    }
    match crate::plots::write_plots(&results, "services", &out.join("plots")) {
        Ok(files) => report.push_str(&crate::plots::report_section(&files, "plots")),
        Err(e) => eprintln!("plots skipped: {:#}", anyhow::Error::from(e)),
    }
    std::fs::write(out.join("report.md"), report)?;
    Ok(results)
}

/// Ratios used by the report's goal section, keyed by a description.
pub fn goals(results: &Results) -> BTreeMap<String, Option<f64>> {
    let case = |n: usize| -> BTreeMap<String, serde_json::Value> {
        [("services".to_owned(), serde_json::json!(n))]
            .into_iter()
            .collect()
    };
    let ratio = |a: &str, b: &str, n: usize, metric: &str| -> Option<f64> {
        Some(results.value(a, &case(n), metric)? / results.value(b, &case(n), metric)?)
    };
    let mut g = BTreeMap::new();
    g.insert(
        "10k services: ebpf-tc / iptables new_conns_per_s (goal ≥ 3)".into(),
        ratio("ebpf-tc", "iptables", 10000, "new_conns_per_s"),
    );
    g.insert(
        "ebpf-tc first_packet_p99 at 10k / at 1 (goal ≤ 1.1)".into(),
        results
            .value("ebpf-tc", &case(10000), "first_packet_p99_us")
            .zip(results.value("ebpf-tc", &case(1), "first_packet_p99_us"))
            .map(|(a, b)| a / b),
    );
    g.insert(
        "1 service: ebpf-tc / iptables udp_pps (goal ≥ 1.7)".into(),
        ratio("ebpf-tc", "iptables", 1, "udp_pps"),
    );
    g.insert(
        "1 service: ebpf-xdp (NodePort) / iptables udp_pps (goal ≥ 3)".into(),
        ratio("ebpf-xdp", "iptables", 1, "udp_pps"),
    );
    g.insert(
        "1 service: ebpf-tc / none throughput (goal ≥ 0.9)".into(),
        ratio("ebpf-tc", "none", 1, "throughput_gbps"),
    );
    g
}
