//! What the scheduler sees: nodes, the pods bound to them (reduced to what the plugins read),
//! and namespace labels, with the indexes the plugins need to stay fast at 1000 nodes and 30k
//! pods (pods per namespace, pods per controller per node, pods with affinity terms).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinity, PodAntiAffinity};
use kube::ResourceExt;

pub use rudder_node::quantity::quantity;

/// CPU in millicores, memory in bytes, pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu_m: i64,
    /// Bytes.
    pub memory: i64,
    /// Pods.
    pub pods: i64,
}

/// What a pod asks for: the sum of its containers' requests (a limit stands in for a missing
/// request, as Kubernetes defaults it), or the largest init container's when that is more.
pub fn requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref();
        let get = |name: &str, scale: f64| {
            r.and_then(|r| {
                r.requests
                    .as_ref()
                    .and_then(|m| m.get(name))
                    .or_else(|| r.limits.as_ref().and_then(|m| m.get(name)))
            })
            .and_then(|q| quantity(&q.0, scale))
            .unwrap_or(0)
        };
        (get("cpu", 1000.0), get("memory", 1.0))
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in &spec.containers {
        let (a, b) = of(c);
        cpu += a;
        mem += b;
    }
    // Init containers run one at a time: the pod needs the largest of them.
    for c in spec.init_containers.iter().flatten() {
        let (a, b) = of(c);
        cpu = cpu.max(a);
        mem = mem.max(b);
    }
    Resources {
        cpu_m: cpu,
        memory: mem,
        pods: 1,
    }
}

/// A node's allocatable CPU, memory and pods (110 pods when it does not say).
pub fn allocatable(node: &Node) -> Resources {
    let get = |name: &str, scale: f64| {
        node.status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(name))
            .and_then(|q| quantity(&q.0, scale))
    };
    Resources {
        cpu_m: get("cpu", 1000.0).unwrap_or(0),
        memory: get("memory", 1.0).unwrap_or(0),
        pods: get("pods", 1.0).unwrap_or(110),
    }
}

/// A host port a pod holds: protocol, host IP (`0.0.0.0` for all) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The address, `0.0.0.0` meaning every address.
    pub ip: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether the two cannot be held on one node at once.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// The host ports `pod`'s containers ask for.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&h| h > 0)?;
            Some(HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty() && ip != "::")
                    .unwrap_or_else(|| "0.0.0.0".into()),
                port,
            })
        })
        .collect()
}

/// A pod bound to a node, as the plugins see it.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The node it is bound to.
    pub node: String,
    /// Deletion has started (topology spread does not count it).
    pub terminating: bool,
    /// Its pod affinity, when it has one.
    pub affinity: Option<Arc<PodAffinity>>,
    /// Its pod anti-affinity, when it has one.
    pub anti_affinity: Option<Arc<PodAntiAffinity>>,
}

/// A node and what is placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node.
    pub node: Node,
    /// Sum of the requests of its pods.
    pub requested: Resources,
    /// Host ports its pods hold.
    pub host_ports: Vec<HostPort>,
}

impl NodeInfo {
    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }
}

pub(crate) static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// What the scheduler sees.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Namespace labels by name (for affinity terms' `namespaceSelector`).
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Bound, unfinished pods on known nodes.
    pub pods: Vec<PodInfo>,
    /// Indexes into `pods` by namespace.
    pub by_namespace: HashMap<String, Vec<usize>>,
    /// Indexes into `pods` of those with pod affinity or anti-affinity terms.
    pub with_affinity: Vec<usize>,
    /// Controller UID → node → how many of its (non-terminating) pods run there.
    pub by_owner: HashMap<String, HashMap<String, u32>>,
}

/// The UID of the pod's controller (its ownerReference with `controller: true`).
pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

impl Snapshot {
    /// Builds a snapshot from nodes and pods (pods not bound, finished, or on unknown nodes are
    /// left out).
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut out = Self::default();
        for node in nodes {
            out.nodes.insert(
                node.name_any(),
                NodeInfo {
                    node,
                    requested: Resources::default(),
                    host_ports: Vec::new(),
                },
            );
        }
        for pod in pods {
            out.add(pod);
        }
        out
    }

    /// Sets the namespaces' labels.
    pub fn with_namespaces(
        mut self,
        namespaces: impl IntoIterator<Item = (String, BTreeMap<String, String>)>,
    ) -> Self {
        self.namespaces = namespaces.into_iter().collect();
        self
    }

    /// Counts `pod` on its node.
    pub fn add(&mut self, pod: &Pod) {
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
            return;
        };
        if finished {
            return;
        }
        let Some(info) = self.nodes.get_mut(node) else {
            return;
        };
        let r = requests(pod);
        info.requested.cpu_m += r.cpu_m;
        info.requested.memory += r.memory;
        info.requested.pods += 1;
        info.host_ports.extend(host_ports(pod));
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let info = PodInfo {
            namespace: pod.namespace().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node: node.clone(),
            terminating,
            affinity: affinity.and_then(|a| a.pod_affinity.clone()).map(Arc::new),
            anti_affinity: affinity
                .and_then(|a| a.pod_anti_affinity.clone())
                .map(Arc::new),
        };
        let index = self.pods.len();
        if info.affinity.is_some() || info.anti_affinity.is_some() {
            self.with_affinity.push(index);
        }
        if !terminating && let Some(owner) = controller_uid(pod) {
            *self
                .by_owner
                .entry(owner.to_owned())
                .or_default()
                .entry(node.clone())
                .or_default() += 1;
        }
        self.by_namespace
            .entry(info.namespace.clone())
            .or_default()
            .push(index);
        self.pods.push(info);
    }

    /// The pods in `namespace`.
    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.pods.get(i))
    }
}
