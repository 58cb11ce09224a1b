//! Services on `rudder server`'s own node, end to end with unmodified kubectl: the EndpointSlice
//! controller follows the selected pods, the node's eBPF proxy (fed from the apiserver) balances
//! a ClusterIP over them for pods (the TC program on their veths) and for the node itself
//! (socket-LB), TCP and UDP, a NodePort answers on the node's address, a Service without pods
//! refuses at once, and a deleted pod leaves the slices and the rotation.
//!
//! Needs root, BPF, iproute2 and kubectl; `cargo xtask ci` runs it. The node's private network
//! is described in `common/node.rs`; everything is removed at the end, also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{fixture, node::Node};
use rudder_node::lab::http_get;

/// Hostnames answering `tries` requests to `host:port` made from the pod at `client` through
/// netexec's `/dial` (the way upstream e2e tests probe Services).
fn dial(client: &str, host: &str, port: u16, protocol: &str, tries: u32) -> Vec<String> {
    let path =
        format!("/dial?request=hostname&protocol={protocol}&host={host}&port={port}&tries={tries}");
    let body = http_get(client, 8080, &path).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["responses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

#[test]
#[ignore = "needs root, BPF, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn services_balance_over_ready_pods() {
    let dir = tempfile::tempdir().unwrap();
    // Socket-LB for the node's own processes only: pods' service traffic takes the per-packet
    // path of the pod program on their veths.
    let node = Node::start(
        &dir.path().join("data"),
        1,
        &["--dataplane", "ebpf", "--socket-lb-host-only"],
    );
    let server = &node.server;
    server.ok(&["apply", "-f", &fixture("web-service.yaml")]);
    let waited = server.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/web-1",
        "pod/web-2",
        "pod/client",
        "--timeout=60s",
    ]);
    assert!(
        waited.status.success(),
        "pods not Ready: {}\n{}",
        String::from_utf8_lossy(&waited.stderr),
        server.log()
    );
    let pod_links = || {
        std::fs::read_dir(node.pin_dir.join("links"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("tc-rv"))
            .count()
    };
    assert_eq!(pod_links(), 3, "the pod program is on every pod's veth");
    let ip_of = |pod: &str| server.ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    let (web1, web2, client) = (ip_of("web-1"), ip_of("web-2"), ip_of("client"));

    // The controller writes one slice with both pods, ready, and the legacy Endpoints.
    let slice_ips = || {
        let out = server.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {end}",
        ]);
        out.split_whitespace()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    };
    server.wait_for("both pods in the web slice", || {
        slice_ips() == BTreeSet::from([web1.clone(), web2.clone()])
    });
    let slice = server.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={.items[0].metadata.labels.endpointslice\\.kubernetes\\.io/managed-by} {.items[0].ports[?(@.name==\"http\")].port} {.items[0].metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(slice, "endpointslice-controller.k8s.io 8080 Service");
    let endpoints = server.ok(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[0].addresses[*].ip}",
    ]);
    assert_eq!(
        endpoints.split_whitespace().collect::<BTreeSet<_>>(),
        BTreeSet::from([web1.as_str(), web2.as_str()])
    );
    let nobody = server.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=nobody",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert_eq!(
        nobody.split_whitespace().count(),
        1,
        "one placeholder slice"
    );

    let vip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    // From a pod, over TCP and UDP, the ClusterIP reaches both backends.
    let want = BTreeSet::from(["web-1".to_string(), "web-2".to_string()]);
    server.wait_for("the ClusterIP to balance over both pods (TCP)", || {
        dial(&client, &vip, 80, "http", 20)
            .into_iter()
            .collect::<BTreeSet<_>>()
            == want
    });
    server.wait_for("the ClusterIP to balance over both pods (UDP)", || {
        dial(&client, &vip, 53, "udp", 20)
            .into_iter()
            .collect::<BTreeSet<_>>()
            == want
    });
    // From the node itself (socket-LB).
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(http_get(&vip, 80, "/hostname").unwrap());
    }
    assert_eq!(seen, want, "node → ClusterIP");

    // The NodePort answers on the node's address.
    let node_ip = server.ok(&[
        "get",
        "node",
        "n1",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    let node_port: u16 = server
        .ok(&[
            "get",
            "svc",
            "web-np",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .parse()
        .unwrap();
    let answer = http_get(&node_ip, node_port, "/hostname").unwrap();
    assert!(want.contains(&answer), "NodePort answered {answer:?}");

    // A Service with no pods refuses at once instead of timing out.
    let nobody_vip = server.ok(&["get", "svc", "nobody", "-o", "jsonpath={.spec.clusterIP}"]);
    let started = Instant::now();
    let refused = http_get(&nobody_vip, 80, "/hostname").unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let from_pod = dial(&client, &nobody_vip, 80, "http", 1);
    assert!(from_pod.is_empty(), "{from_pod:?}");

    // A deleted pod leaves the slice and the rotation.
    server.ok(&["delete", "pod", "web-1", "--timeout=30s"]);
    server.wait_for("web-1 to leave the slice", || {
        slice_ips() == BTreeSet::from([web2.clone()])
    });
    assert_eq!(pod_links(), 2, "a removed pod's link is unpinned");
    server.wait_for("only web-2 to answer", || {
        dial(&client, &vip, 80, "http", 10)
            .iter()
            .all(|h| h == "web-2")
    });
    let answers = dial(&client, &vip, 80, "http", 10);
    assert_eq!(answers.len(), 10, "{answers:?}");

    // Deleting the Service removes its slices and Endpoints.
    server.ok(&["delete", "svc", "web"]);
    server.wait_for("the web slices to go", || slice_ips().is_empty());
    server.wait_for("the web Endpoints to go", || {
        !server
            .kubectl(&["get", "endpoints", "web"])
            .status
            .success()
    });
}
