//! The scheduler: binds each unscheduled pod to a node.
//!
//! The core is a pure function, [`schedule`], over a [`Snapshot`] of nodes and the pods on them.
//! Filters, in kube-scheduler's terms: NodeName, NodeUnschedulable, NodeReady, NodeSelector
//! (`nodeSelector` and required node affinity's `matchExpressions` on labels), TaintToleration
//! (NoSchedule and NoExecute), NodeResourcesFit (CPU, memory and pod count requested against
//! allocatable). Score: least allocated (mean of the CPU and memory fractions left), ties broken
//! by fewer pods, then by name. An unschedulable pod gets the kube-scheduler message
//! (`0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint ...`) as a
//! `PodScheduled=False` condition and a `FailedScheduling` event, and is retried every second.
//!
//! The loop around it watches through kube-rs like kube-scheduler, binds with `pods/binding`,
//! and counts a pod it just bound on its node until the watch shows the binding ("assumed"
//! pods), so a burst of pods spreads instead of piling on one node.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;

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

pub use rudder_node::quantity::quantity;

fn requests(pod: &Pod) -> Resources {
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

/// A node and what is placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node.
    pub node: Node,
    /// Sum of the requests of its pods.
    pub requested: Resources,
}

/// What the scheduler sees.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeInfo>,
}

impl Snapshot {
    /// Builds a snapshot from nodes and (bound, not finished) pods.
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
                },
            );
        }
        for pod in pods {
            out.add(pod);
        }
        out
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
        if let Some(info) = self.nodes.get_mut(node) {
            let r = requests(pod);
            info.requested.cpu_m += r.cpu_m;
            info.requested.memory += r.memory;
            info.requested.pods += 1;
        }
    }
}

/// The scheduler's answer for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this node.
    Bind(String),
    /// No node fits; the kube-scheduler style message says why.
    Unschedulable(String),
}

fn allocatable(node: &Node) -> Resources {
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

fn tolerates(pod: &Pod, taint: &k8s_openapi::api::core::v1::Taint) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .into_iter()
        .flatten()
        .any(|t| {
            let key_ok = match t.key.as_deref() {
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(k) => k == taint.key,
            };
            let value_ok = t.operator.as_deref() == Some("Exists")
                || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == taint.effect);
            key_ok && value_ok && effect_ok
        })
}

pub(crate) fn selector_term_matches(
    labels: &BTreeMap<String, String>,
    exprs: &[k8s_openapi::api::core::v1::NodeSelectorRequirement],
) -> bool {
    exprs.iter().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" | "Lt" => {
                let (Some(v), Some(bound)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    values.first().and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if e.operator == "Gt" {
                    v > bound
                } else {
                    v < bound
                }
            }
            _ => false,
        }
    })
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Picks a node for `pod` (pure: the same snapshot and pod give the same answer).
pub fn schedule(snapshot: &Snapshot, pod: &Pod) -> Decision {
    let spec = pod.spec.clone().unwrap_or_default();
    let want = requests(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut fits: Vec<(&String, &NodeInfo)> = Vec::new();
    for (name, info) in &snapshot.nodes {
        let node = &info.node;
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let node_spec = node.spec.clone().unwrap_or_default();
        let mut why: Vec<String> = Vec::new();
        if spec.node_name.as_deref().is_some_and(|n| n != name) {
            why.push("node(s) didn't match the requested node name".into());
        } else if node_spec.unschedulable == Some(true)
            && !tolerates(
                pod,
                &k8s_openapi::api::core::v1::Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                },
            )
        {
            why.push("node(s) were unschedulable".into());
        } else if !node_ready(node) {
            why.push("node(s) were not ready".into());
        } else {
            let selector_ok = spec
                .node_selector
                .iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v));
            let affinity_ok = spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_none_or(|req| {
                    req.node_selector_terms.iter().any(|t| {
                        selector_term_matches(
                            &labels,
                            t.match_expressions.as_deref().unwrap_or_default(),
                        )
                    })
                });
            if !(selector_ok && affinity_ok) {
                why.push("node(s) didn't match Pod's node affinity/selector".into());
            }
            if let Some(taint) = node_spec.taints.iter().flatten().find(|t| {
                (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(pod, t)
            }) {
                why.push(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.clone().unwrap_or_default()
                ));
            }
            let alloc = allocatable(node);
            if info.requested.pods + 1 > alloc.pods {
                why.push("Too many pods".into());
            }
            if want.cpu_m > 0 && info.requested.cpu_m + want.cpu_m > alloc.cpu_m {
                why.push("Insufficient cpu".into());
            }
            if want.memory > 0 && info.requested.memory + want.memory > alloc.memory {
                why.push("Insufficient memory".into());
            }
        }
        if why.is_empty() {
            fits.push((name, info));
        } else {
            for w in why {
                *reasons.entry(w).or_default() += 1;
            }
        }
    }
    let score = |info: &NodeInfo| {
        let alloc = allocatable(&info.node);
        let free = |used: i64, total: i64| {
            if total <= 0 {
                0.0
            } else {
                1.0 - (used as f64 / total as f64).min(1.0)
            }
        };
        (free(info.requested.cpu_m + want.cpu_m, alloc.cpu_m)
            + free(info.requested.memory + want.memory, alloc.memory))
            / 2.0
    };
    let best = fits.into_iter().max_by(|(an, a), (bn, b)| {
        score(a)
            .total_cmp(&score(b))
            .then(b.requested.pods.cmp(&a.requested.pods))
            .then(bn.cmp(an))
    });
    match best {
        Some((name, _)) => Decision::Bind(name.clone()),
        None => {
            let total = snapshot.nodes.len();
            let mut parts: Vec<String> = reasons
                .into_iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            parts.sort();
            let mut message = format!("0/{total} nodes are available");
            if !parts.is_empty() {
                message.push_str(": ");
                message.push_str(&parts.join(", "));
            }
            message.push('.');
            Decision::Unschedulable(message)
        }
    }
}

fn unscheduled(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.is_none())
        && pod.metadata.deletion_timestamp.is_none()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n == "default-scheduler")
}

/// Runs the scheduler until the future is dropped.
pub async fn run(client: Client) {
    let nodes_api: Api<Node> = Api::all(client.clone());
    let pods_api: Api<Pod> = Api::all(client.clone());
    let (nodes, node_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let mut node_stream = watcher(nodes_api, watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .touched_objects()
        .boxed();
    let mut pod_stream = watcher(pods_api, watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects()
        .boxed();
    // Pods bound here whose binding the watch has not shown yet: uid → node.
    let mut assumed: HashMap<String, (Pod, String)> = HashMap::new();
    // Last message reported per unschedulable pod.
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(_) = node_stream.next() => {}
            Some(_) = pod_stream.next() => {}
            _ = tick.tick() => {}
        }
        // Drain whatever else is ready so a burst is handled in one pass.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(pod_stream.next()) {}
        let all_pods = pods.state();
        // uid → still unscheduled, for every pod the cache holds.
        let waiting: HashMap<&str, bool> = all_pods
            .iter()
            .filter_map(|p| Some((p.metadata.uid.as_deref()?, unscheduled(p))))
            .collect();
        // An assumed pod is dropped once the watch shows it bound, or gone.
        assumed.retain(|uid, _| waiting.get(uid.as_str()) == Some(&true));
        let mut snapshot = Snapshot::new(
            nodes.state().iter().map(|n| (**n).clone()),
            all_pods.iter().map(|p| &**p),
        );
        for (pod, node) in assumed.values() {
            let mut p = pod.clone();
            if let Some(s) = p.spec.as_mut() {
                s.node_name = Some(node.clone());
            }
            snapshot.add(&p);
        }
        let mut pending: Vec<&Pod> = all_pods
            .iter()
            .map(|p| &**p)
            .filter(|p| unscheduled(p))
            .filter(|p| !assumed.contains_key(p.metadata.uid.as_deref().unwrap_or("")))
            .collect();
        pending.sort_by_key(|p| p.metadata.creation_timestamp.clone());
        for pod in pending {
            let (ns, name, uid) = (
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                pod.metadata.uid.clone().unwrap_or_default(),
            );
            match schedule(&snapshot, pod) {
                Decision::Bind(node) => {
                    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    let binding = json!({
                        "apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name, "namespace": ns, "uid": uid},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                    });
                    let result: Result<serde_json::Value, _> = api
                        .create_subresource("binding", &name, &PostParams::default(), &binding)
                        .await;
                    match result {
                        Ok(_) => {
                            tracing::debug!(pod = format!("{ns}/{name}"), node, "bound");
                            reported.remove(&uid);
                            let mut p = pod.clone();
                            if let Some(s) = p.spec.as_mut() {
                                s.node_name = Some(node.clone());
                            }
                            snapshot.add(&p);
                            assumed.insert(uid, (pod.clone(), node));
                        }
                        Err(e) => {
                            tracing::warn!(pod = format!("{ns}/{name}"), error = %e, "binding")
                        }
                    }
                }
                Decision::Unschedulable(message) => {
                    if reported.get(&uid) == Some(&message) {
                        continue;
                    }
                    report_unschedulable(&client, pod, &message).await;
                    reported.insert(uid, message);
                }
            }
        }
        reported.retain(|uid, _| waiting.contains_key(uid.as_str()));
    }
}

async fn report_unschedulable(client: &Client, pod: &Pod, message: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let now = jiff::Timestamp::now();
    let now = format!("{now:.0}");
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null, "lastTransitionTime": now,
    }]}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, "posting PodScheduled=False");
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let event = json!({
        "metadata": {"generateName": format!("{name}.")},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": name,
                           "uid": pod.metadata.uid, "apiVersion": "v1"},
        "reason": "FailedScheduling", "message": message, "type": "Warning",
        "source": {"component": "default-scheduler"}, "reportingComponent": "default-scheduler",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    if let Ok(event) = serde_json::from_value(event) {
        let _ = events.create(&PostParams::default(), &event).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, labels: serde_json::Value, extra: serde_json::Value) -> Node {
        let mut n = json!({
            "metadata": {"name": name, "labels": labels},
            "spec": extra,
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        if n["spec"].is_null() {
            n["spec"] = json!({});
        }
        serde_json::from_value(n).unwrap()
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": spec}))
            .unwrap()
    }

    fn web(cpu: &str) -> serde_json::Value {
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]})
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("100m", 1000.0), Some(100));
        assert_eq!(quantity("2", 1000.0), Some(2000));
        assert_eq!(quantity("0.5", 1000.0), Some(500));
        assert_eq!(quantity("128Mi", 1.0), Some(128 << 20));
        assert_eq!(quantity("1G", 1.0), Some(1_000_000_000));
        assert_eq!(quantity("x", 1.0), None);
        assert_eq!(quantity("-1", 1.0), None);
    }

    #[test]
    fn least_allocated_node_wins_and_requests_count() {
        let nodes = vec![
            node("a", "2", json!({}), json!(null)),
            node("b", "4", json!({}), json!(null)),
        ];
        let mut busy = pod(web("1"));
        busy.spec.as_mut().unwrap().node_name = Some("b".into());
        let snap = Snapshot::new(nodes.clone(), [&busy, &busy, &busy]);
        assert_eq!(
            schedule(&snap, &pod(web("500m"))),
            Decision::Bind("a".into())
        );
        let empty = Snapshot::new(nodes, []);
        assert_eq!(
            schedule(&empty, &pod(web("500m"))),
            Decision::Bind("b".into())
        );
    }

    #[test]
    fn unschedulable_pods_say_why_per_node() {
        let nodes = vec![
            node("a", "1", json!({"disk": "ssd"}), json!(null)),
            node(
                "b",
                "8",
                json!({}),
                json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}),
            ),
            node("c", "8", json!({}), json!({"unschedulable": true})),
        ];
        let snap = Snapshot::new(nodes, []);
        let Decision::Unschedulable(msg) = schedule(&snap, &pod(web("2"))) else {
            panic!("expected no fit");
        };
        expect_test::expect!["0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}, 1 node(s) were unschedulable."]
            .assert_eq(&msg);
        let mut tolerant = web("2");
        tolerant["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]);
        assert_eq!(schedule(&snap, &pod(tolerant)), Decision::Bind("b".into()));
        let mut picky = web("100m");
        picky["nodeSelector"] = json!({"disk": "ssd"});
        assert_eq!(schedule(&snap, &pod(picky)), Decision::Bind("a".into()));
        let mut affinity = web("100m");
        affinity["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}});
        let Decision::Unschedulable(msg) = schedule(&snap, &pod(affinity)) else {
            panic!("expected no fit");
        };
        assert!(
            msg.contains("didn't match Pod's node affinity/selector"),
            "{msg}"
        );
    }
}
