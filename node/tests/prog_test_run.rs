//! The pod program on crafted packets with `BPF_PROG_TEST_RUN`: the real program in the kernel,
//! against real maps, with packets no network would deliver in a controlled way (truncated
//! headers, IP options, fragments, every TCP flag mix, ICMP errors, non-IP). Checksums of every
//! rewritten packet are verified from scratch. Needs root and BPF: run by `cargo xtask ci`.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

mod common;

use std::{net::Ipv4Addr, path::PathBuf};

use rudder_ebpf_common::{Config, HAIRPIN_ADDR, Reason};
use rudder_node::proxy::{ebpf::Datapath, plan::Settings};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);

/// A datapath with `common::services` programmed for one backend; pins removed on drop.
struct Bed {
    datapath: Datapath,
    dir: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = Datapath::remove(&self.dir);
    }
}

fn bed(tag: &str) -> Bed {
    let dir = PathBuf::from(format!("/sys/fs/bpf/rudder-t{}x{tag}", std::process::id()));
    let config = Config {
        hairpin_addr: u32::from_ne_bytes(HAIRPIN_ADDR),
        ..Config::default()
    };
    let mut datapath = Datapath::open(&dir, config).unwrap();
    let mut planner = datapath.planner(Settings::default());
    datapath
        .apply(&planner.sync(&common::services(&[BACKEND])).unwrap())
        .unwrap();
    Bed { datapath, dir }
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Builds Ethernet + IPv4 (with `options` bytes of IP options) + TCP/UDP with valid checksums.
struct Packet {
    proto: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    tcp_flags: u8,
    options: usize,
    frag: u16,
    payload: Vec<u8>,
    udp_zero_checksum: bool,
}

impl Packet {
    fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self {
            proto: 6,
            src,
            dst,
            tcp_flags: flags,
            options: 0,
            frag: 0,
            payload: b"hello".to_vec(),
            udp_zero_checksum: false,
        }
    }

    fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self {
            proto: 17,
            ..Self::tcp(src, dst, 0)
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let l4_len = if self.proto == 6 { 20 } else { 8 } + self.payload.len();
        let ihl = 20 + self.options;
        let mut p = vec![0u8; 14 + ihl + l4_len];
        p[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        p[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut p[14..14 + ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.0.octets());
        ip[16..20].copy_from_slice(&self.dst.0.octets());
        for b in &mut ip[20..] {
            *b = 1; // NOP options
        }
        let csum = !fold(sum16(ip));
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        let l4 = 14 + ihl;
        p[l4..l4 + 2].copy_from_slice(&self.src.1.to_be_bytes());
        p[l4 + 2..l4 + 4].copy_from_slice(&self.dst.1.to_be_bytes());
        if self.proto == 6 {
            p[l4 + 12] = 5 << 4;
            p[l4 + 13] = self.tcp_flags;
            p[l4 + 14..l4 + 16].copy_from_slice(&1024u16.to_be_bytes());
            p[l4 + 20..].copy_from_slice(&self.payload);
        } else {
            p[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            p[l4 + 8..].copy_from_slice(&self.payload);
        }
        if !(self.proto == 17 && self.udp_zero_checksum) {
            let csum = l4_checksum(&p, l4);
            let at = if self.proto == 6 { l4 + 16 } else { l4 + 6 };
            p[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        }
        p
    }
}

/// The L4 checksum a packet should carry (computed with its checksum field zeroed).
fn l4_checksum(p: &[u8], l4: usize) -> u16 {
    let proto = p[14 + 9];
    let at = if proto == 6 { l4 + 16 } else { l4 + 6 };
    let mut seg = p[l4..].to_vec();
    seg[at - l4] = 0;
    seg[at - l4 + 1] = 0;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[14 + 12..14 + 20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let c = !fold(sum16(&pseudo) + sum16(&seg));
    if proto == 17 && c == 0 { 0xffff } else { c }
}

/// Asserts the IP and L4 checksums of `p` are right, and returns (src, dst) as seen now.
fn check(p: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let ihl = usize::from(p[14] & 0x0f) * 4;
    assert_eq!(
        fold(sum16(&p[14..14 + ihl])),
        0xffff,
        "bad IP header checksum"
    );
    let l4 = 14 + ihl;
    let at = if p[14 + 9] == 6 { l4 + 16 } else { l4 + 6 };
    let carried = u16::from_be_bytes([p[at], p[at + 1]]);
    if !(p[14 + 9] == 17 && carried == 0) {
        assert_eq!(carried, l4_checksum(p, l4), "bad L4 checksum");
    }
    let addr = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    ((addr(26), port(l4)), (addr(30), port(l4 + 2)))
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn service_packets_are_translated_with_valid_checksums() {
    let b = bed("xlate");
    // Every TCP flag combination of the low six bits.
    for flags in 0u8..64 {
        let sport = 40000 + u16::from(flags);
        let (verdict, out) = b
            .datapath
            .test_run(&Packet::tcp((CLIENT, sport), (VIP, 80), flags).bytes())
            .unwrap();
        assert_eq!(verdict, TC_ACT_OK, "flags {flags:#x}");
        assert_eq!(
            check(&out),
            ((CLIENT, sport), (BACKEND, 8080)),
            "flags {flags:#x}"
        );
    }
    // UDP, with and without a checksum (zero must stay zero: "no checksum").
    let (_, out) = b
        .datapath
        .test_run(&Packet::udp((CLIENT, 5000), (VIP, 53)).bytes())
        .unwrap();
    assert_eq!(check(&out), ((CLIENT, 5000), (BACKEND, 5353)));
    let zero = Packet {
        udp_zero_checksum: true,
        ..Packet::udp((CLIENT, 5001), (VIP, 53))
    };
    let (_, out) = b.datapath.test_run(&zero.bytes()).unwrap();
    let l4 = 34;
    assert_eq!(&out[l4 + 6..l4 + 8], &[0, 0]);
    assert_eq!(check(&out).1, (BACKEND, 5353));
    // IP options move the L4 header; it is still found and fixed.
    let with_options = Packet {
        options: 8,
        ..Packet::tcp((CLIENT, 41000), (VIP, 80), 0x02)
    };
    let (verdict, out) = b.datapath.test_run(&with_options.bytes()).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(check(&out), ((CLIENT, 41000), (BACKEND, 8080)));
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn replies_get_the_service_address_back() {
    let b = bed("reply");
    let (_, out) = b
        .datapath
        .test_run(&Packet::tcp((CLIENT, 42000), (VIP, 80), 0x02).bytes())
        .unwrap();
    assert_eq!(check(&out).1, (BACKEND, 8080));
    let reply = Packet::tcp((BACKEND, 8080), (CLIENT, 42000), 0x12);
    let (verdict, out) = b.datapath.test_run(&reply.bytes()).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(check(&out), ((VIP, 80), (CLIENT, 42000)));
    assert!(b.datapath.counter(Reason::ReplyNat).packets >= 1);
    // A packet from the backend that belongs to no tracked flow is left alone.
    let stray = Packet::tcp((BACKEND, 8080), (CLIENT, 42999), 0x12).bytes();
    assert_eq!(b.datapath.test_run(&stray).unwrap(), (TC_ACT_OK, stray));
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn everything_else_passes_untouched() {
    let b = bed("pass");
    let unknown = Packet::tcp((CLIENT, 43000), (Ipv4Addr::new(10, 96, 0, 99), 80), 0x02).bytes();
    assert_eq!(
        b.datapath.test_run(&unknown).unwrap(),
        (TC_ACT_OK, unknown.clone())
    );
    let other_port = Packet::tcp((CLIENT, 43001), (VIP, 8443), 0x02).bytes();
    assert_eq!(
        b.datapath.test_run(&other_port).unwrap(),
        (TC_ACT_OK, other_port)
    );
    // ARP (non-IP).
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(b.datapath.test_run(&arp).unwrap(), (TC_ACT_OK, arp.clone()));
    // An ICMP error from a backend (e.g. port unreachable) is not a service packet: untouched.
    let mut icmp = unknown.clone();
    icmp[14 + 9] = 1;
    assert_eq!(b.datapath.test_run(&icmp).unwrap(), (TC_ACT_OK, icmp));
    let before = b.datapath.counter(Reason::Malformed).packets;
    // Truncated: a full IP header to the VIP with no, half a, or most of a TCP header. All
    // pass untouched (the kernel drops what is broken) and are counted. (BPF_PROG_TEST_RUN
    // refuses IPv4 frames shorter than an IP header, so shorter cuts cannot be fed.)
    let full = Packet::tcp((CLIENT, 43002), (VIP, 80), 0x02).bytes();
    for len in [34, 40, 47] {
        let cut = full[..len].to_vec();
        assert_eq!(
            b.datapath.test_run(&cut).unwrap(),
            (TC_ACT_OK, cut),
            "cut at {len}"
        );
    }
    // A header that claims IPv4 but says version 6, and one with IHL < 5.
    let mut bad = full.clone();
    bad[14] = 0x65;
    assert_eq!(b.datapath.test_run(&bad).unwrap().0, TC_ACT_OK);
    bad[14] = 0x44;
    assert_eq!(b.datapath.test_run(&bad).unwrap().0, TC_ACT_OK);
    assert!(b.datapath.counter(Reason::Malformed).packets >= before + 4);
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn fragments_to_a_service_are_dropped() {
    let b = bed("frag");
    // First fragment (MF set): ports are there, but the rest could not follow the translation.
    let first = Packet {
        frag: 0x2000,
        ..Packet::tcp((CLIENT, 44000), (VIP, 80), 0x18)
    };
    assert_eq!(b.datapath.test_run(&first.bytes()).unwrap().0, TC_ACT_SHOT);
    assert!(b.datapath.counter(Reason::Fragment).packets >= 1);
    // A later fragment has no ports: it is not recognised and passes (to the node's blackhole
    // route).
    let later = Packet {
        frag: 0x0010,
        ..Packet::tcp((CLIENT, 44000), (VIP, 80), 0x18)
    }
    .bytes();
    assert_eq!(b.datapath.test_run(&later).unwrap(), (TC_ACT_OK, later));
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn a_service_without_endpoints_answers_icmp_port_unreachable() {
    let b = bed("reject");
    for packet in [
        Packet::tcp((CLIENT, 45000), (EMPTY, 80), 0x02),
        Packet::udp((CLIENT, 45001), (EMPTY, 53)),
    ] {
        let sent = packet.bytes();
        let (verdict, out) = b.datapath.test_run(&sent).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out.len(), 14 + 20 + 8 + 28);
        // Back to the sender's MAC, from the service address, ICMP type 3 code 3.
        assert_eq!(&out[0..6], &sent[6..12]);
        assert_eq!(out[14 + 9], 1);
        assert_eq!(fold(sum16(&out[14..34])), 0xffff, "IP checksum");
        assert_eq!(&out[26..30], &EMPTY.octets());
        assert_eq!(&out[30..34], &CLIENT.octets());
        assert_eq!((out[34], out[35]), (3, 3));
        assert_eq!(fold(sum16(&out[34..])), 0xffff, "ICMP checksum");
        // It quotes the original IP header and the first 8 bytes of L4.
        assert_eq!(&out[42..70], &sent[14..42]);
    }
    assert!(b.datapath.counter(Reason::NoBackend).packets >= 2);
}

const XDP_PASS: u32 = 2;
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// The NodePort service `far`'s one backend, on another node.
const FAR: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 9);
const XDP_DROP: u32 = 1;
const XDP_REDIRECT: u32 = 4;

/// A datapath with `common::nodeport_services` (NodePorts 30080/30053 → one backend) on
/// `NODE_IP`.
fn nodeport_bed(tag: &str) -> Bed {
    let dir = PathBuf::from(format!("/sys/fs/bpf/rudder-t{}x{tag}", std::process::id()));
    let mut datapath = Datapath::open(&dir, Config::default()).unwrap();
    let settings = Settings {
        node_ips: vec![NODE_IP],
        ..Settings::default()
    };
    let mut planner = datapath.planner(settings);
    datapath
        .apply(
            &planner
                .sync(&common::nodeport_services(&[BACKEND], FAR))
                .unwrap(),
        )
        .unwrap();
    Bed { datapath, dir }
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn xdp_translates_nodeport_packets_with_valid_checksums() {
    let b = nodeport_bed("xdp");
    for flags in 0u8..64 {
        let sport = 40000 + u16::from(flags);
        let packet = Packet::tcp((OUTSIDE, sport), (NODE_IP, 30080), flags).bytes();
        let (action, out) = b.datapath.test_run_uplink(&packet).unwrap();
        assert_eq!(action, XDP_PASS, "flags {flags:#x}");
        assert_eq!(
            check(&out),
            ((OUTSIDE, sport), (BACKEND, 8080)),
            "flags {flags:#x}"
        );
    }
    let (_, out) = b
        .datapath
        .test_run_uplink(&Packet::udp((OUTSIDE, 5000), (NODE_IP, 30053)).bytes())
        .unwrap();
    assert_eq!(check(&out), ((OUTSIDE, 5000), (BACKEND, 5353)));
    let zero = Packet {
        udp_zero_checksum: true,
        ..Packet::udp((OUTSIDE, 5001), (NODE_IP, 30053))
    };
    let (_, out) = b.datapath.test_run_uplink(&zero.bytes()).unwrap();
    assert_eq!(&out[34 + 6..34 + 8], &[0, 0]);
    assert_eq!(check(&out).1, (BACKEND, 5353));
    let with_options = Packet {
        options: 12,
        ..Packet::tcp((OUTSIDE, 41000), (NODE_IP, 30080), 0x02)
    };
    let (_, out) = b.datapath.test_run_uplink(&with_options.bytes()).unwrap();
    assert_eq!(check(&out), ((OUTSIDE, 41000), (BACKEND, 8080)));
    // The backend's reply, at the pod program, leaves as the node's NodePort.
    let reply = Packet::tcp((BACKEND, 8080), (OUTSIDE, 41000), 0x12);
    let (verdict, out) = b.datapath.test_run(&reply.bytes()).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(check(&out), ((NODE_IP, 30080), (OUTSIDE, 41000)));
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn xdp_leaves_everything_else_alone() {
    let b = nodeport_bed("xdp-other");
    let untouched = |packet: Vec<u8>| {
        let (action, out) = b.datapath.test_run_uplink(&packet).unwrap();
        assert_eq!((action, &out), (XDP_PASS, &packet));
    };
    // Another port of the node, a ClusterIP, a first and a later fragment, ARP, ICMP.
    untouched(Packet::tcp((OUTSIDE, 1), (NODE_IP, 22), 0x02).bytes());
    untouched(Packet::tcp((OUTSIDE, 1), (Ipv4Addr::new(10, 96, 0, 30), 80), 0x02).bytes());
    for frag in [0x2000, 0x0004] {
        untouched(
            Packet {
                frag,
                ..Packet::udp((OUTSIDE, 2), (NODE_IP, 30053))
            }
            .bytes(),
        );
    }
    let mut arp = Packet::udp((OUTSIDE, 3), (NODE_IP, 30053)).bytes();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    untouched(arp);
    let mut icmp = Packet::udp((OUTSIDE, 4), (NODE_IP, 30053)).bytes();
    icmp[14 + 9] = 1;
    untouched(icmp);
    // Cut short anywhere: passed on unchanged for the kernel to judge.
    let full = Packet::tcp((OUTSIDE, 5), (NODE_IP, 30080), 0x02).bytes();
    // (The kernel does not test-run frames shorter than an Ethernet header.)
    for len in [14, 20, 33, 36, 40, 50] {
        untouched(full[..len].to_vec());
    }
    // No endpoints: untranslated, so the node itself refuses.
    untouched(Packet::tcp((OUTSIDE, 6), (NODE_IP, 30081), 0x02).bytes());
    assert!(b.datapath.counter(Reason::NoBackend).packets >= 1);
}

/// Runs the uplink program on `packet` inside namespace `ns` (the test run's ingress interface
/// is that namespace's loopback, and its FIB is the one looked up).
fn run_uplink_in(b: &Bed, ns: &str, packet: &[u8]) -> (u32, Vec<u8>) {
    rudder_node::lab::in_ns(ns, || b.datapath.test_run_uplink(packet))
        .unwrap()
        .unwrap()
}

#[test]
#[ignore = "needs root and BPF; run by cargo xtask ci"]
fn xdp_forwards_remote_nodeport_flows_source_translated() {
    let b = nodeport_bed("xdp-remote");
    let mut lab = rudder_node::lab::Lab::new().unwrap();
    let node = lab.node.clone();
    // Without a route to the backend's node (the lab blackholes the cluster CIDR) the packet
    // is dropped untouched and counted.
    let syn = Packet::tcp((OUTSIDE, 7), (NODE_IP, 30082), 0x02).bytes();
    let (action, out) = run_uplink_in(&b, &node, &syn);
    assert_eq!((action, &out), (XDP_DROP, &syn));
    assert!(b.datapath.counter(Reason::NoRoute).packets >= 1);
    assert!(b.datapath.counter(Reason::RemoteBackend).packets >= 1);

    // With a route and a resolved next hop: translated both ways and sent on by XDP itself.
    lab.add_uplink().unwrap();
    let gateway = "172.30.0.9";
    let mac = [0x02, 0, 0, 0, 0x09, 0x09];
    for args in [
        vec!["route", "add", "10.244.9.0/24", "via", gateway],
        vec!["route", "add", "192.0.2.0/24", "via", gateway],
        vec![
            "neigh",
            "replace",
            gateway,
            "dev",
            "up0",
            "lladdr",
            "02:00:00:00:09:09",
            "nud",
            "permanent",
        ],
    ] {
        let mut full = vec!["-n", node.as_str()];
        full.extend(args);
        rudder_node::lab::ip(&full).unwrap();
    }
    let client = Ipv4Addr::new(192, 0, 2, 7);
    for (proto, sport) in [(6u8, 40_001u16), (17, 40_002)] {
        let (packet, frontend, target) = if proto == 6 {
            (
                Packet::tcp((client, sport), (NODE_IP, 30082), 0x02),
                30082,
                8080,
            )
        } else {
            (Packet::udp((client, sport), (NODE_IP, 30055)), 30055, 5353)
        };
        let (action, out) = run_uplink_in(&b, &node, &packet.bytes());
        // The lab's loopback received it, the FIB names up0: a redirect.
        assert_eq!(action, XDP_REDIRECT, "proto {proto}");
        let ((src, snat_port), dst) = check(&out);
        assert_eq!((src, dst), (NODE_IP, (FAR, target)), "proto {proto}");
        assert!(
            (61_000..=65_535).contains(&snat_port),
            "SNAT port {snat_port}"
        );
        assert_eq!(&out[0..6], &mac, "next hop's MAC");
        assert_eq!(out[14 + 8], 63, "TTL decremented");
        // Same flow again: same translation.
        let (_, again) = run_uplink_in(&b, &node, &packet.bytes());
        assert_eq!(check(&again), ((NODE_IP, snat_port), (FAR, target)));
        // The backend's reply to the node's SNAT port goes back to the client from the NodePort.
        let reply = if proto == 6 {
            Packet::tcp((FAR, target), (NODE_IP, snat_port), 0x12)
        } else {
            Packet::udp((FAR, target), (NODE_IP, snat_port))
        };
        let (action, out) = run_uplink_in(&b, &node, &reply.bytes());
        assert_eq!(action, XDP_REDIRECT, "proto {proto}");
        assert_eq!(check(&out), ((NODE_IP, frontend), (client, sport)));
        assert_eq!(out[14 + 8], 63, "TTL decremented");
    }
    // A reply to a flow a pod on this node started through a ClusterIP: the service address
    // comes back and the stack delivers it (the pod program made the conntrack entries).
    let (verdict, _) = b
        .datapath
        .test_run(&Packet::tcp((CLIENT, 43_000), (Ipv4Addr::new(10, 96, 0, 32), 80), 0x02).bytes())
        .unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    let reply = Packet::tcp((FAR, 8080), (CLIENT, 43_000), 0x12).bytes();
    let (action, out) = run_uplink_in(&b, &node, &reply);
    assert_eq!(action, XDP_PASS);
    assert_eq!(
        check(&out),
        ((Ipv4Addr::new(10, 96, 0, 32), 80), (CLIENT, 43_000))
    );
    drop(lab);
}
