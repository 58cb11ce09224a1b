//! The proxy's desired state: Services and EndpointSlices turned into frontends (a service port
//! on a ClusterIP or NodePort) and the backends each frontend balances over. Both dataplanes
//! (eBPF and iptables) are driven from this one model.
//!
//! Endpoint choice follows kube-proxy: ready endpoints serve; when a service has none, serving
//! endpoints that are terminating take over (graceful drain, KEP-1669). With
//! `internalTrafficPolicy: Local` (ClusterIP) or `externalTrafficPolicy: Local` (NodePort) only
//! endpoints on this node count for that traffic.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;

/// L4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Lower-case name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

/// Identifies one service port: `namespace/name:port-name` plus protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Port name (may be empty for single-port services).
    pub port: String,
    /// Protocol.
    pub protocol: Protocol,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// One backend address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Target port.
    pub port: u16,
    /// Whether the endpoint runs on this node.
    pub local: bool,
    /// Terminating (only used when no ready endpoint exists).
    pub terminating: bool,
}

/// One frontend and what it balances over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// Which service port.
    pub name: ServicePortName,
    /// ClusterIP (None for headless services, which are not proxied).
    pub cluster_ip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// NodePort, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// Other addresses that reach the service on its port from outside, treated like the
    /// NodePort (external backends, `externalTrafficPolicy`): `spec.externalIPs` and, for
    /// LoadBalancer services, `status.loadBalancer.ingress[].ip`. Only the eBPF dataplane
    /// programs them; the iptables and nftables peers serve ClusterIPs and NodePorts.
    pub external_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// Backends for traffic to the ClusterIP, in a stable order.
    pub cluster_backends: Vec<Backend>,
    /// Backends for traffic to the NodePort, in a stable order.
    pub external_backends: Vec<Backend>,
    /// Every serving endpoint, ready or terminating. A dataplane keeps these reachable for flows
    /// it already tracks, so a terminating endpoint drains instead of cutting its connections.
    pub serving: Vec<Backend>,
}

/// The whole desired state, ordered by service port name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Frontends by name.
    pub frontends: BTreeMap<ServicePortName, Frontend>,
}

/// Kubernetes objects a standalone proxy reads from YAML (`rudder proxy --services FILE`).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
}

/// Errors reading the YAML state file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A document is not valid YAML or not a Service/EndpointSlice.
    #[error("document {index}: {message}")]
    Document {
        /// 0-based document index.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

impl Objects {
    /// Parses a multi-document YAML of Services and EndpointSlices (other kinds are an error).
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let mut objects = Self::default();
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| Error::Document {
                index,
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(serde_yaml::Value::as_str)
                .unwrap_or("");
            let bad = |e: serde_yaml::Error| Error::Document {
                index,
                message: e.to_string(),
            };
            match kind {
                "Service" => objects
                    .services
                    .push(serde_yaml::from_value(value).map_err(bad)?),
                "EndpointSlice" => objects
                    .slices
                    .push(serde_yaml::from_value(value).map_err(bad)?),
                other => {
                    return Err(Error::Document {
                        index,
                        message: format!("kind {other:?} is not a Service or EndpointSlice"),
                    });
                }
            }
        }
        Ok(objects)
    }
}

/// Builds the desired state of node `node` from Services and EndpointSlices.
pub fn build(objects: &Objects, node: &str) -> DesiredState {
    build_from(&objects.services, &objects.slices, node)
}

/// [`build`] over any collection of references (the apiserver-fed proxy passes its caches).
pub fn build_from<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> DesiredState {
    // IPv4 slices by (namespace, service name).
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let (Some(ns), Some(name)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name")),
        ) else {
            continue;
        };
        if s.address_type == "IPv4" {
            by_service.entry((ns, name)).or_default().push(s);
        }
    }
    let mut state = DesiredState::default();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless or not yet allocated
        };
        let mut external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if ty == "LoadBalancer" {
            external_ips.extend(
                svc.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
            );
        }
        external_ips.sort();
        external_ips.dedup();
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(10800)
        });
        let slices: &[&EndpointSlice] = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for sp in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let port_name = sp.name.clone().unwrap_or_default();
            let mut all = Vec::new();
            for slice in slices {
                // The slice's port with the same name and protocol gives the target port.
                let Some(target) = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
                }) else {
                    continue;
                };
                let Some(target_port) = target.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for ep in slice.endpoints.iter().flatten() {
                    let cond = ep.conditions.as_ref();
                    let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                    let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                    let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                    if !(ready || (serving && terminating)) {
                        continue;
                    }
                    for addr in &ep.addresses {
                        if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                            all.push(Backend {
                                ip,
                                port: target_port,
                                local: ep.node_name.as_deref() == Some(node),
                                terminating: !ready,
                            });
                        }
                    }
                }
            }
            all.sort();
            all.dedup();
            let usable = |local_only: bool| -> Vec<Backend> {
                let candidates: Vec<Backend> = all
                    .iter()
                    .filter(|b| !local_only || b.local)
                    .cloned()
                    .collect();
                let ready: Vec<Backend> = candidates
                    .iter()
                    .filter(|b| !b.terminating)
                    .cloned()
                    .collect();
                if ready.is_empty() { candidates } else { ready }
            };
            let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
            let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
            let node_port = if ty == "NodePort" || ty == "LoadBalancer" {
                sp.node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
            } else {
                None
            };
            let key = ServicePortName {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                port: port_name,
                protocol,
            };
            state.frontends.insert(
                key.clone(),
                Frontend {
                    name: key,
                    cluster_ip,
                    port,
                    node_port,
                    external_ips: external_ips.clone(),
                    affinity_timeout,
                    internal_local,
                    external_local,
                    cluster_backends: usable(internal_local),
                    external_backends: usable(external_local),
                    serving: all.clone(),
                },
            );
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  externalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.1.3]
  nodeName: n1
  conditions: {ready: true}
- addresses: [10.244.2.3]
  nodeName: n2
  conditions: {ready: true}
- addresses: [10.244.2.9]
  nodeName: n2
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.244.2.10]
  nodeName: n2
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: drain, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: drain-x
  namespace: shop
  labels: {kubernetes.io/service-name: drain}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.3.3]
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec:
  clusterIP: None
  ports: [{port: 80}]
"#;

    #[test]
    fn frontends_and_backends_follow_kube_proxy() {
        let objects = Objects::from_yaml(YAML).unwrap();
        let state = build(&objects, "n1");
        let names: Vec<String> = state.frontends.keys().map(ToString::to_string).collect();
        assert_eq!(names, ["shop/drain", "shop/web:dns", "shop/web:http"]);
        let http = state
            .frontends
            .values()
            .find(|f| f.name.port == "http")
            .unwrap();
        assert_eq!(http.cluster_ip, Ipv4Addr::new(10, 96, 0, 20));
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.affinity_timeout, Some(10800));
        let ips = |b: &[Backend]| {
            b.iter()
                .map(|b| (b.ip.to_string(), b.port))
                .collect::<Vec<_>>()
        };
        // Ready endpoints only; the terminating one waits in reserve.
        assert_eq!(
            ips(&http.cluster_backends),
            [("10.244.1.3".into(), 8080), ("10.244.2.3".into(), 8080)]
        );
        // externalTrafficPolicy: Local keeps only this node's endpoints.
        assert_eq!(ips(&http.external_backends), [("10.244.1.3".into(), 8080)]);
        let dns = state
            .frontends
            .values()
            .find(|f| f.name.port == "dns")
            .unwrap();
        assert_eq!(dns.name.protocol, Protocol::Udp);
        assert_eq!(dns.node_port, None);
        assert_eq!(dns.cluster_backends[0].port, 5353);
        // With no ready endpoint, serving-terminating ones drain the traffic.
        let drain = state
            .frontends
            .values()
            .find(|f| f.name.name == "drain")
            .unwrap();
        assert_eq!(ips(&drain.cluster_backends), [("10.244.3.3".into(), 8080)]);
    }

    #[test]
    fn external_and_load_balancer_ips_are_frontends_too() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  externalIPs: [192.0.2.10, not-an-ip]
  ports: [{port: 443, targetPort: 8443, nodePort: 30443}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.7}, {hostname: lb.example.com}, {ip: 192.0.2.10}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec:
  clusterIP: 10.96.0.41
  ports: [{port: 80}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.8}]
"#;
        let state = build(&Objects::from_yaml(yaml).unwrap(), "n1");
        let ips = |name: &str| {
            state
                .frontends
                .values()
                .find(|f| f.name.name == name)
                .unwrap()
                .external_ips
                .clone()
        };
        assert_eq!(
            ips("lb"),
            [Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(198, 51, 100, 7)]
        );
        // A load-balancer status on a ClusterIP service is not an address of the service.
        assert!(ips("plain").is_empty());
    }

    #[test]
    fn bad_documents_are_named() {
        let err = Objects::from_yaml("kind: Pod\nmetadata: {name: x}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "document 0: kind \"Pod\" is not a Service or EndpointSlice"
        );
        assert!(Objects::from_yaml("kind: Service\nspec: {ports: 3}\n").is_err());
    }
}
