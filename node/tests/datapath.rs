//! End-to-end tests of the eBPF datapath with real TCP and UDP between network namespaces.
//!
//! Each test builds a [`Lab`]: a node namespace routing between pod namespaces, rudder's programs
//! attached to the pods' host-side veths, services programmed through the same planner the agent
//! uses. Traffic stays inside the lab's namespaces. Needs root and BPF: run by `cargo xtask ci`.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{Ipv4Addr, TcpStream},
    process::Command,
    time::Duration,
};

use rudder_ebpf_common::{Config, HAIRPIN_ADDR, Reason};
use rudder_node::{
    lab::{self, Client, Lab, in_ns, udp_ask},
    proxy::{
        ebpf::Datapath,
        plan::{Planner, Settings},
    },
};

mod common;

use common::{lab_with_backends, services, vip};

struct Setup {
    lab: Lab,
    datapath: Datapath,
    planner: Planner,
    client: lab::Pod,
    backends: Vec<lab::Pod>,
}

fn setup() -> Setup {
    let (lab, client, backends) = lab_with_backends();
    let mut datapath = open(&lab);
    let mut planner = datapath.planner(Settings::default());
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    datapath
        .apply(&planner.sync(&services(&ips)).unwrap())
        .unwrap();
    Setup {
        lab,
        datapath,
        planner,
        client,
        backends,
    }
}

fn open(lab: &Lab) -> Datapath {
    let config = Config {
        hairpin_addr: u32::from_ne_bytes(HAIRPIN_ADDR),
        ..Config::default()
    };
    let mut datapath = Datapath::open(&lab.pin_dir, config).unwrap();
    let pods = lab.pods.clone();
    let node = lab.node.clone();
    in_ns(&node, || {
        for pod in &pods {
            datapath.attach_pod(&pod.host_if).unwrap();
        }
    })
    .unwrap();
    datapath
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn tcp_and_udp_reach_every_backend_through_the_service() {
    let s = setup();
    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        let (_, name) = Client::connect(&s.client.ns, vip(20, 80)).unwrap();
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["b1", "b2", "b3"],
        "{seen:?}"
    );
    assert!(
        seen.values().all(|n| *n >= 8),
        "new connections spread unevenly: {seen:?}"
    );

    let mut udp = BTreeSet::new();
    for _ in 0..30 {
        let (name, from) = udp_ask(&s.client.ns, vip(20, 53)).unwrap();
        // The reply comes back from the service address, not the backend's.
        assert_eq!(from, vip(20, 53));
        udp.insert(name);
    }
    assert_eq!(udp.len(), 3, "{udp:?}");

    let forwarded = s.datapath.counter(Reason::Forward);
    let replies = s.datapath.counter(Reason::ReplyNat);
    assert!(
        forwarded.packets >= 90 && replies.packets >= 90,
        "{:?}",
        s.datapath.counters()
    );
    // Once the node knows the pods' neighbours, translated packets skip the node's stack and
    // go straight into the backend (and replies into the client).
    assert!(
        s.datapath.counter(Reason::PeerRedirect).packets >= 90,
        "{:?}",
        s.datapath.counters()
    );
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn session_affinity_sticks_to_one_backend() {
    let s = setup();
    let names: BTreeSet<String> = (0..20)
        .map(|_| Client::connect(&s.client.ns, vip(21, 80)).unwrap().1)
        .collect();
    assert_eq!(names.len(), 1, "ClientIP affinity broke: {names:?}");
    // The same client without affinity is spread.
    let names: BTreeSet<String> = (0..30)
        .map(|_| Client::connect(&s.client.ns, vip(20, 80)).unwrap().1)
        .collect();
    assert!(names.len() > 1);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn a_service_without_backends_refuses_at_once() {
    let s = setup();
    let err = in_ns(&s.client.ns, || {
        TcpStream::connect_timeout(&vip(22, 80), Duration::from_secs(5))
    })
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(s.datapath.counter(Reason::NoBackend).packets >= 1);
    // An address that is no service at all is dropped by the node's blackhole route, not refused
    // by rudder: it must not be forwarded anywhere.
    let err = in_ns(&s.client.ns, || {
        TcpStream::connect_timeout(&vip(99, 80), Duration::from_millis(300))
    })
    .unwrap()
    .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn a_pod_reaches_itself_through_its_service() {
    let s = setup();
    let own = &s.backends[0];
    let (mut conn, name) = Client::connect(&own.ns, vip(23, 80)).unwrap();
    assert_eq!(name, "b1");
    assert_eq!(conn.ask().unwrap(), "b1");
    let (name, from) = udp_ask(&own.ns, vip(23, 53)).unwrap();
    assert_eq!((name.as_str(), from), ("b1", vip(23, 53)));
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn removing_a_backend_moves_only_its_flows() {
    let mut s = setup();
    let mut conns: Vec<(Client, String)> = (0..30)
        .map(|_| Client::connect(&s.client.ns, vip(20, 80)).unwrap())
        .collect();
    let gone = "b3";
    assert!(conns.iter().any(|(_, n)| n == gone));

    let ips: Vec<Ipv4Addr> = s.backends[..2].iter().map(|p| p.ip).collect();
    let ops = s.planner.sync(&services(&ips)).unwrap();
    s.datapath.apply(&ops).unwrap();
    s.datapath.gc();

    for (conn, name) in &mut conns {
        if name == gone {
            continue;
        }
        // Flows on surviving backends stay where they are.
        assert_eq!(&conn.ask().unwrap(), name);
    }
    for _ in 0..30 {
        let (_, name) = Client::connect(&s.client.ns, vip(20, 80)).unwrap();
        assert_ne!(name, gone);
    }
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn connections_survive_an_agent_restart() {
    let s = setup();
    let mut conns: Vec<(Client, String)> = (0..10)
        .map(|_| Client::connect(&s.client.ns, vip(20, 80)).unwrap())
        .collect();
    let Setup {
        lab,
        datapath,
        planner,
        client,
        backends,
    } = s;
    // The agent goes away: its process state is gone, the pinned maps and links stay.
    drop(datapath);
    drop(planner);
    for (conn, name) in &mut conns {
        assert_eq!(
            &conn.ask().unwrap(),
            name,
            "a connection broke while the agent was down"
        );
    }
    // A new agent recovers, re-attaches (atomically replacing the programs) and resyncs.
    let mut datapath = open(&lab);
    let mut planner = datapath.planner(Settings::default());
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    let ops = planner.sync(&services(&ips)).unwrap();
    assert!(
        ops.iter().all(|op| matches!(
            op,
            rudder_node::proxy::plan::Op::Maglev(..)
                | rudder_node::proxy::plan::Op::MaglevSmall(..)
        )),
        "recovery rewrote more than the Maglev tables: {ops:?}"
    );
    datapath.apply(&ops).unwrap();
    for (conn, name) in &mut conns {
        assert_eq!(
            &conn.ask().unwrap(),
            name,
            "a connection moved after the restart"
        );
    }
    assert!(Client::connect(&client.ns, vip(20, 80)).is_ok());
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn socket_lb_translates_at_connect_time() {
    let s = setup();
    let cgroup = s.lab.make_cgroup().unwrap();
    let mut datapath = s.datapath;
    datapath.attach_cgroup(&cgroup).unwrap();
    // A process in the cgroup, in the client namespace, connects to the service with bash's
    // /dev/tcp: it lands on a backend although the pod program never translates its packets.
    // (The cgroup is joined before `ip netns exec`, which remounts /sys.)
    let in_cgroup = |inner: &str| {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} bash -c '{inner}'",
            cgroup.display(),
            s.client.ns
        );
        Command::new("bash").args(["-c", &script]).output().unwrap()
    };
    let before = datapath.counter(Reason::Forward).packets;
    let out = in_cgroup("exec 3<>/dev/tcp/10.96.0.20/80 && head -n1 <&3");
    let name = String::from_utf8_lossy(&out.stdout);
    assert!(["b1", "b2", "b3"].contains(&name.trim()), "{out:?}");
    assert_eq!(
        datapath.counter(Reason::Forward).packets,
        before,
        "packets were translated per packet"
    );
    assert!(datapath.counter(Reason::SocketLb).packets >= 1);
    // Refused at connect() when there is no backend.
    let out = in_cgroup("exec 3<>/dev/tcp/10.96.0.22/80");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn nodeport_from_outside_goes_through_xdp_on_the_uplink() {
    let (mut lab, client, backends) = lab_with_backends();
    let outside = lab.add_uplink().unwrap();
    let far = lab.add_remote_pod().unwrap();
    lab.serve_tcp(&far, 8080, "far").unwrap();
    lab.serve_udp(&far, 5353, "far").unwrap();
    let mut datapath = open(&lab);
    let node = lab.node.clone();
    in_ns(&node, || datapath.attach_uplink("up0"))
        .unwrap()
        .unwrap();
    let settings = Settings {
        node_ips: vec![lab::NODE_IP],
        ..Settings::default()
    };
    let mut planner = datapath.planner(settings);
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    datapath
        .apply(
            &planner
                .sync(&common::nodeport_services(&ips, far.ip))
                .unwrap(),
        )
        .unwrap();
    let node_port = |port: u16| std::net::SocketAddr::from((lab::NODE_IP, port));
    // The outside end of the veth uplink needs an XDP program for the node's XDP_TX to arrive.
    let ext = outside.ns.clone();
    in_ns(&ext, || datapath.attach_veth_peer("eth0"))
        .unwrap()
        .unwrap();

    // New TCP connections from outside spread over the backends; each conversation works.
    let mut seen = BTreeMap::new();
    for _ in 0..45 {
        let (mut conn, name) = Client::connect(&outside.ns, node_port(30080)).unwrap();
        assert_eq!(conn.ask().unwrap(), name);
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // UDP answers come back from the node address and the NodePort.
    for _ in 0..10 {
        let (_, from) = udp_ask(&outside.ns, node_port(30053)).unwrap();
        assert_eq!(from, node_port(30053));
    }
    assert!(
        datapath.counter(Reason::Forward).packets >= 45 + 10,
        "{:?}",
        datapath.counters()
    );
    // No endpoints: refused at once (the node has no socket on a NodePort).
    let refused = |port: u16| {
        let err = in_ns(&outside.ns, || {
            TcpStream::connect_timeout(&node_port(port), Duration::from_secs(5))
        })
        .unwrap()
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    };
    refused(30081);
    assert!(datapath.counter(Reason::NoBackend).packets >= 1);
    // A backend on another node: the node translates the source to itself, so the backend
    // answers through it. (Without that, the remote node would send the reply straight to the
    // client, which shares its segment, from the pod's address, and the client would reset it.)
    for _ in 0..5 {
        let (mut conn, name) = Client::connect(&outside.ns, node_port(30082)).unwrap();
        assert_eq!(name, "far");
        assert_eq!(conn.ask().unwrap(), "far");
    }
    for _ in 0..5 {
        let (name, from) = udp_ask(&outside.ns, node_port(30055)).unwrap();
        assert_eq!((name.as_str(), from), ("far", node_port(30055)));
    }
    assert!(
        datapath.counter(Reason::RemoteBackend).packets >= 6,
        "{:?}",
        datapath.counters()
    );
    // A pod on this node reaching the remote backend through the ClusterIP: the reply comes in
    // on the uplink, where XDP gives it the service address back.
    let (mut conn, name) = Client::connect(&client.ns, vip(32, 80)).unwrap();
    assert_eq!(name, "far");
    assert_eq!(conn.ask().unwrap(), "far");
    let (name, from) = udp_ask(&client.ns, vip(32, 53)).unwrap();
    assert_eq!((name.as_str(), from), ("far", vip(32, 53)));
    in_ns(&node, || datapath.detach_uplink("up0"))
        .unwrap()
        .unwrap();
    in_ns(&ext, || datapath.detach_veth_peer("eth0"))
        .unwrap()
        .unwrap();
}
