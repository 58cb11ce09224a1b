//! What the scheduler sees: nodes, the pods bound to them (reduced to what the plugins read),
//! and namespace labels, with the indexes the plugins need to stay fast at 1000 nodes and 30k
//! pods (pods per namespace, pods per controller per node, pods with affinity terms).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Node, PodAffinity, PodAntiAffinity};
use kube::ResourceExt;

use crate::cached::Pod;

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
    let of = |c: &crate::cached::Container| {
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

/// A pod bound to a node, as the plugins see it. Its strings and labels are shared with the
/// other pods that have the same ones (see [`Interner`]): pods of one ReplicaSet have equal
/// labels, namespace and owner, so at 30k pods this is about a fifth of a copy per pod.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// The node it is bound to.
    pub node: Arc<str>,
    /// Deletion has started (topology spread does not count it).
    pub terminating: bool,
    /// Its pod affinity, when it has one.
    pub affinity: Option<Arc<PodAffinity>>,
    /// Its pod anti-affinity, when it has one.
    pub anti_affinity: Option<Arc<PodAntiAffinity>>,
    /// Its controller's UID.
    pub owner: Option<Arc<str>>,
    /// What it requests.
    pub requests: Resources,
    /// The host ports it holds.
    pub host_ports: Vec<HostPort>,
}

/// One shared copy of each string or label set the snapshot's pods hold. Values no pod holds
/// any more are dropped when the table has doubled since the last sweep, so churn (new
/// ReplicaSets, new pod-template hashes) does not make it grow without bound.
#[derive(Clone, Debug, Default)]
struct Interner {
    strings: HashSet<Arc<str>>,
    labels: HashSet<Arc<BTreeMap<String, String>>>,
    /// Sizes after the last sweep.
    swept: (usize, usize),
}

impl Interner {
    fn string(&mut self, s: &str) -> Arc<str> {
        share(&mut self.strings, &mut self.swept.0, s, |s: &str| {
            Arc::from(s)
        })
    }

    fn labels(
        &mut self,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Arc<BTreeMap<String, String>> {
        let labels = labels.unwrap_or(&NO_LABELS);
        share(&mut self.labels, &mut self.swept.1, labels, |l| {
            Arc::new(l.clone())
        })
    }
}

/// The shared copy of `value` in `set`, added if missing; values nothing else holds are swept
/// first when the set has doubled since the last sweep (`swept` is its size then).
fn share<T: ?Sized + Eq + std::hash::Hash>(
    set: &mut HashSet<Arc<T>>,
    swept: &mut usize,
    value: &T,
    make: impl FnOnce(&T) -> Arc<T>,
) -> Arc<T> {
    if let Some(shared) = set.get(value) {
        return Arc::clone(shared);
    }
    if set.len() >= 2 * (*swept).max(512) {
        set.retain(|v| Arc::strong_count(v) > 1);
        *swept = set.len();
    }
    let shared = make(value);
    set.insert(Arc::clone(&shared));
    shared
}

/// A node and what is placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node.
    pub node: Node,
    /// Sum of the requests of its pods.
    pub requested: Resources,
    /// Its allocatable resources (parsed once per node update).
    pub allocatable: Resources,
    /// Host ports its pods hold.
    pub host_ports: Vec<HostPort>,
}

impl NodeInfo {
    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    fn count(&mut self, pod: &PodInfo, sign: i64) {
        self.requested.cpu_m += sign * pod.requests.cpu_m;
        self.requested.memory += sign * pod.requests.memory;
        self.requested.pods += sign;
        if sign > 0 {
            self.host_ports.extend(pod.host_ports.iter().cloned());
        } else {
            for port in &pod.host_ports {
                if let Some(i) = self.host_ports.iter().position(|p| p == port) {
                    self.host_ports.swap_remove(i);
                }
            }
        }
    }
}

pub(crate) static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// What the scheduler sees, kept up to date event by event ([`Snapshot::add`],
/// [`Snapshot::remove`], [`Snapshot::set_node`], [`Snapshot::remove_node`]) as kube-scheduler's
/// cache is, so a scheduling pass costs nothing in the number of pods already placed.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Namespace labels by name (for affinity terms' `namespaceSelector`).
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Bound, unfinished pods by key (their UID). Boxed: a hash table has about twice as many
    /// slots as entries, and a 130-byte `PodInfo` in each slot was 9 MB at 31k pods.
    pods: HashMap<Arc<str>, Box<PodInfo>>,
    /// Pod keys by namespace.
    by_namespace: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// Keys of the pods with pod affinity or anti-affinity terms.
    with_affinity: HashSet<Arc<str>>,
    /// Controller UID → node → how many of its (non-terminating) pods run there.
    pub by_owner: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    /// Numbers keys for pods without a UID (tests).
    anonymous: u64,
    /// The shared strings and label sets of the pods.
    interned: Interner,
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
    /// Builds a snapshot from nodes and pods (pods not bound, or finished, are left out).
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut out = Self::default();
        for node in nodes {
            out.set_node(node);
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

    /// Adds or replaces a node; a new node counts the pods already bound to it.
    pub fn set_node(&mut self, node: Node) {
        let name = node.name_any();
        if let Some(info) = self.nodes.get_mut(&name) {
            info.allocatable = allocatable(&node);
            info.node = node;
            return;
        }
        let mut info = NodeInfo {
            allocatable: allocatable(&node),
            node,
            requested: Resources::default(),
            host_ports: Vec::new(),
        };
        for pod in self.pods.values().filter(|p| *p.node == *name) {
            info.count(pod, 1);
        }
        self.nodes.insert(name, info);
    }

    /// Forgets a node (its pods stay known, and count again if it comes back).
    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Adds `pod`, or replaces what was known of it (by UID); a pod that is not bound, or has
    /// finished, is only removed. Returns whether other pods may now see it differently: it
    /// appeared, went away or changed its labels.
    pub fn add(&mut self, pod: &Pod) -> bool {
        let mut before = None;
        let key: Arc<str> = match pod.metadata.uid.as_deref() {
            Some(uid) => {
                before = self.take(uid);
                Arc::from(uid)
            }
            None => {
                self.anonymous += 1;
                Arc::from(format!("anonymous-{}", self.anonymous))
            }
        };
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
            return before.is_some();
        };
        if finished {
            return before.is_some();
        }
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let info = PodInfo {
            namespace: self
                .interned
                .string(pod.metadata.namespace.as_deref().unwrap_or_default()),
            labels: self.interned.labels(pod.metadata.labels.as_ref()),
            node: self.interned.string(node),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            affinity: affinity.and_then(|a| a.pod_affinity.clone()).map(Arc::new),
            anti_affinity: affinity
                .and_then(|a| a.pod_anti_affinity.clone())
                .map(Arc::new),
            owner: controller_uid(pod).map(|o| self.interned.string(o)),
            requests: requests(pod),
            host_ports: host_ports(pod),
        };
        if let Some(node) = self.nodes.get_mut(&*info.node) {
            node.count(&info, 1);
        }
        if info.affinity.is_some() || info.anti_affinity.is_some() {
            self.with_affinity.insert(Arc::clone(&key));
        }
        if !info.terminating
            && let Some(owner) = &info.owner
        {
            *self
                .by_owner
                .entry(Arc::clone(owner))
                .or_default()
                .entry(Arc::clone(&info.node))
                .or_default() += 1;
        }
        self.by_namespace
            .entry(Arc::clone(&info.namespace))
            .or_default()
            .insert(Arc::clone(&key));
        let seen_differently = before.is_none_or(|b| b.labels != info.labels);
        self.pods.insert(key, Box::new(info));
        seen_differently
    }

    /// Forgets the pod with this UID; false if it was not known.
    pub fn remove(&mut self, uid: &str) -> bool {
        self.take(uid).is_some()
    }

    /// Forgets the pod with this UID and returns what was known of it.
    fn take(&mut self, uid: &str) -> Option<PodInfo> {
        let info = *self.pods.remove(uid)?;
        if let Some(node) = self.nodes.get_mut(&*info.node) {
            node.count(&info, -1);
        }
        self.with_affinity.remove(uid);
        if !info.terminating
            && let Some(owner) = &info.owner
            && let Some(per_node) = self.by_owner.get_mut(&**owner)
        {
            if let Some(n) = per_node.get_mut(&*info.node) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_node.remove(&*info.node);
                }
            }
            if per_node.is_empty() {
                self.by_owner.remove(&**owner);
            }
        }
        if let Some(keys) = self.by_namespace.get_mut(&*info.namespace) {
            keys.remove(uid);
            if keys.is_empty() {
                self.by_namespace.remove(&*info.namespace);
            }
        }
        Some(info)
    }

    /// Keeps only the pods whose UID `keep` accepts (after a relist).
    pub fn retain_pods(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<Arc<str>> = self.pods.keys().filter(|k| !keep(k)).cloned().collect();
        for uid in gone {
            self.remove(&uid);
        }
    }

    /// Every known bound pod.
    pub fn pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values().map(|p| &**p)
    }

    /// The pods in `namespace`.
    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k).map(|p| &**p))
    }

    /// The pods with pod affinity or anti-affinity terms.
    pub fn with_affinity(&self) -> impl Iterator<Item = &PodInfo> {
        self.with_affinity
            .iter()
            .filter_map(|k| self.pods.get(k).map(|p| &**p))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"}}}))
        .unwrap()
    }

    fn pod(uid: &str, node: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "d", "uid": uid,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                     "uid": "rs", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn updates_move_and_remove_what_a_pod_counts() {
        let mut s = Snapshot::new([node("a"), node("b")], []);
        s.add(&pod("p", Some("a"), "Running"));
        assert_eq!(s.nodes["a"].requested.cpu_m, 1000);
        assert_eq!(s.nodes["a"].host_ports.len(), 1);
        assert_eq!(s.by_owner["rs"]["a"], 1);
        // The same pod seen on b (an assumed binding replaced by another): counted once, on b.
        s.add(&pod("p", Some("b"), "Running"));
        assert_eq!(s.nodes["a"].requested, Resources::default());
        assert!(s.nodes["a"].host_ports.is_empty());
        assert_eq!(s.nodes["b"].requested.pods, 1);
        assert_eq!(s.by_owner["rs"].get("a"), None);
        // Finished pods free their node.
        s.add(&pod("p", Some("b"), "Succeeded"));
        assert_eq!(s.nodes["b"].requested, Resources::default());
        assert!(s.by_owner.is_empty());
        assert_eq!(s.pods().count(), 0);
        // A node that joins later counts the pods already bound to it.
        s.add(&pod("q", Some("c"), "Running"));
        s.set_node(node("c"));
        assert_eq!(s.nodes["c"].requested.cpu_m, 1000);
        s.remove("q");
        assert_eq!(s.nodes["c"].requested, Resources::default());
        assert_eq!(s.pods_in("d").count(), 0);
    }

    #[test]
    fn pods_share_equal_labels_and_strings_and_unused_ones_are_swept() {
        let mut s = Snapshot::new([node("a")], []);
        let labelled = |uid: &str, app: &str| {
            let mut p = pod(uid, Some("a"), "Running");
            p.metadata.labels = Some(BTreeMap::from([("app".to_owned(), app.to_owned())]));
            p
        };
        s.add(&labelled("p1", "web"));
        s.add(&labelled("p2", "web"));
        let (p1, p2) = (&s.pods["p1"], &s.pods["p2"]);
        assert!(Arc::ptr_eq(&p1.labels, &p2.labels));
        assert!(Arc::ptr_eq(&p1.node, &p2.node));
        assert!(Arc::ptr_eq(&p1.namespace, &p2.namespace));
        assert_eq!(p1.labels["app"], "web");
        // Label sets no pod holds any more go at a sweep, once the table has doubled.
        for i in 0..2000 {
            s.add(&labelled(&format!("q{i}"), &format!("app{i}")));
            s.remove(&format!("q{i}"));
        }
        assert!(
            s.interned.labels.len() <= 1024,
            "{}",
            s.interned.labels.len()
        );
        assert!(
            s.interned
                .labels
                .contains(&BTreeMap::from([("app".to_owned(), "web".to_owned())]))
        );
    }
}
