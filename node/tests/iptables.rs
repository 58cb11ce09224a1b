//! The iptables peer, applied with the real `iptables-restore` inside a lab's node namespace and
//! exercised with real TCP and UDP, like the eBPF datapath tests (`datapath.rs`). Needs root:
//! run by `cargo xtask ci`.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

mod common;

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use common::{lab_with_backends, services, vip};
use rudder_node::{
    lab::{Client, in_ns, udp_ask},
    proxy::iptables::Iptables,
};

#[test]
#[ignore = "needs root and iptables; run by cargo xtask ci"]
fn kube_proxy_rules_balance_refuse_and_hairpin() {
    let (lab, client, backends) = lab_with_backends();
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    lab.route_services_to_sink().unwrap();
    let iptables = Iptables::new(Some(&lab.node));
    iptables.sync(&services(&ips)).unwrap();

    let names: BTreeSet<String> = (0..40)
        .map(|_| Client::connect(&client.ns, vip(20, 80)).unwrap().1)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let (name, from) = udp_ask(&client.ns, vip(20, 53)).unwrap();
    assert!(
        name.starts_with('b') && from == vip(20, 53),
        "{name} from {from}"
    );
    let sticky: BTreeSet<String> = (0..15)
        .map(|_| Client::connect(&client.ns, vip(21, 80)).unwrap().1)
        .collect();
    assert_eq!(sticky.len(), 1, "{sticky:?}");
    let err = in_ns(&client.ns, || {
        TcpStream::connect_timeout(&vip(22, 80), Duration::from_secs(5))
    })
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let (mut own, name) = Client::connect(&backends[0].ns, vip(23, 80)).unwrap();
    assert_eq!((name.as_str(), own.ask().unwrap().as_str()), ("b1", "b1"));

    // A changed state replaces the chains; a removed service's chains are deleted.
    let before = iptables.existing_chains().unwrap();
    iptables.sync(&services(&ips[..1])).unwrap();
    let after = iptables.existing_chains().unwrap();
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    let names: BTreeSet<String> = (0..10)
        .map(|_| Client::connect(&client.ns, vip(20, 80)).unwrap().1)
        .collect();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["b1"]);

    iptables.cleanup().unwrap();
    assert!(iptables.existing_chains().unwrap().is_empty());
    let saved = rudder_node::lab::exec(&lab.node, "iptables-save", &[], None).unwrap();
    assert!(!saved.contains("KUBE-"), "{saved}");
}
