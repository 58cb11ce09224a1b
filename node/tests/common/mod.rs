//! Shared fixtures for the dataplane tests: the services every test programs, and addresses.
#![allow(dead_code, reason = "each test binary uses a subset")]
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures fail loudly on setup errors"
)]

use std::net::{Ipv4Addr, SocketAddr};

use rudder_node::{
    lab::{Lab, Pod},
    proxy::model::{DesiredState, Objects, build},
};

pub const NODE: &str = "n1";

/// Services: `web` (TCP 80 → 8080 and UDP 53 → 5353 on backends), `sticky` (ClientIP affinity),
/// `empty` (no endpoints), `own` (only backend 1, for hairpin).
pub fn services(backends: &[Ipv4Addr]) -> DesiredState {
    let eps = |ips: &[Ipv4Addr]| -> String {
        let list: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{addresses: [\"{ip}\"], nodeName: {NODE}}}"))
            .collect();
        format!("[{}]", list.join(", "))
    };
    let mut docs = Vec::new();
    for (name, ip, extra, ips) in [
        ("web", "10.96.0.20", "", backends),
        (
            "sticky",
            "10.96.0.21",
            "sessionAffinity: ClientIP",
            backends,
        ),
        ("empty", "10.96.0.22", "", &[][..]),
        ("own", "10.96.0.23", "", &backends[..1]),
    ] {
        docs.push(format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  {extra}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints: {}
"#,
            eps(ips)
        ));
    }
    let objects = Objects::from_yaml(&docs.join("---\n")).unwrap();
    build(&objects, NODE)
}

/// NodePort services for the uplink test: `web` (TCP 30080, UDP 30053 → the three backends),
/// `empty` (30081, no endpoints), `far` (30082 and UDP 30055, its one endpoint `far` on another
/// node).
pub fn nodeport_services(backends: &[Ipv4Addr], far: Ipv4Addr) -> DesiredState {
    let eps: Vec<String> = backends
        .iter()
        .map(|ip| format!("{{addresses: [\"{ip}\"], nodeName: {}}}", NODE))
        .collect();
    let far = format!("{{addresses: [\"{far}\"], nodeName: elsewhere}}");
    let mut docs = Vec::new();
    for (name, ip, http, dns, endpoints) in [
        (
            "web",
            "10.96.0.30",
            30080,
            30053,
            format!("[{}]", eps.join(", ")),
        ),
        ("empty", "10.96.0.31", 30081, 30054, "[]".to_owned()),
        ("far", "10.96.0.32", 30082, 30055, format!("[{far}]")),
    ] {
        docs.push(format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: NodePort
  clusterIP: {ip}
  ports:
  - {{name: http, port: 80, targetPort: 8080, nodePort: {http}}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP, nodePort: {dns}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints: {endpoints}
"#
        ));
    }
    let objects = Objects::from_yaml(&docs.join("---\n")).unwrap();
    build(&objects, NODE)
}

/// `10.96.0.<last>:<port>`.
pub fn vip(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 96, 0, last), port))
}

/// A lab with a client pod and three backend pods `b1`..`b3`, each serving TCP 8080 and UDP 5353
/// (answering with its name).
pub fn lab_with_backends() -> (Lab, Pod, Vec<Pod>) {
    let mut lab = Lab::new().unwrap();
    let client = lab.add_pod().unwrap();
    let mut backends = Vec::new();
    for i in 1..=3 {
        let pod = lab.add_pod().unwrap();
        lab.serve_tcp(&pod, 8080, &format!("b{i}")).unwrap();
        lab.serve_udp(&pod, 5353, &format!("b{i}")).unwrap();
        backends.push(pod);
    }
    (lab, client, backends)
}
