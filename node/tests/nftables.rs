//! The nftables peer (kube-proxy's nftables mode), applied with the real `nft` inside a lab's
//! node namespace and exercised with real TCP and UDP, like `iptables.rs`. Needs root: run by
//! `cargo xtask ci`.
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
    lab::{Client, exec, in_ns, udp_ask},
    proxy::nftables::Nftables,
};

#[test]
#[ignore = "needs root and nftables; run by cargo xtask ci"]
fn kube_proxy_nftables_balance_refuse_hairpin_and_update_in_place() {
    let (lab, client, backends) = lab_with_backends();
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    lab.route_services_to_sink().unwrap();
    let mut nft = Nftables::new(Some(&lab.node));
    nft.sync(&services(&ips)).unwrap();

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

    // An incremental update: only b1 remains, the other endpoints' chains are gone.
    let chains = |nft_out: &str| nft_out.matches("chain endpoint-").count();
    let list = || {
        exec(
            &lab.node,
            "nft",
            &["list", "table", "ip", "kube-proxy"],
            None,
        )
        .unwrap()
    };
    let before = chains(&list());
    nft.sync(&services(&ips[..1])).unwrap();
    let after = chains(&list());
    assert!(after < before, "{before} -> {after} endpoint chains");
    let names: BTreeSet<String> = (0..10)
        .map(|_| Client::connect(&client.ns, vip(20, 80)).unwrap().1)
        .collect();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["b1"]);

    nft.cleanup().unwrap();
    let tables = exec(&lab.node, "nft", &["list", "tables"], None).unwrap();
    assert!(!tables.contains("kube-proxy"), "{tables}");
}
