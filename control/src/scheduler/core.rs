//! The scheduling core: a pure function from a [`Snapshot`] and a pod to a [`Decision`].
//!
//! Filters run per node in kube-scheduler's order, and the first that fails gives the node's
//! reason: NodeUnschedulable, NodeName, NodeReady (rudder's: a node that is not Ready, unless
//! the pod tolerates `node.kubernetes.io/not-ready`), TaintToleration (NoSchedule, NoExecute),
//! NodeAffinity (`nodeSelector` and required node affinity, `matchExpressions` and
//! `matchFields`), NodePorts (host ports), NodeResourcesFit (every insufficient resource is
//! named), PodTopologySpread, InterPodAffinity. Feasible nodes are scored 0–100 per plugin and
//! summed with kube-scheduler's default weights: NodeResourcesFit least-allocated ×1,
//! NodeResourcesBalancedAllocation ×1, NodeAffinity preferred terms ×2, PodTopologySpread ×2,
//! InterPodAffinity ×2, TaintToleration (fewer untolerated `PreferNoSchedule` taints) ×3. Ties go
//! to the node with fewer pods, then to the first name, so the answer is deterministic (upstream
//! picks among ties at random).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration,
};

use crate::cached::{Pod, PodSpec};

use super::{
    relations::Relations,
    snapshot::{NO_LABELS, NodeInfo, Resources, Snapshot, host_ports, requests},
};
use crate::controllers::node_lifecycle;

/// The scheduler's answer for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this node.
    Bind(String),
    /// No node fits; the kube-scheduler style message says why.
    Unschedulable(String),
}

/// The best score a plugin gives a node.
const MAX: f64 = 100.0;

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

fn tolerates(pod: &Pod, taint: &Taint) -> bool {
    tolerations(pod)
        .iter()
        .any(|t| node_lifecycle::tolerates(t, taint))
}

/// The first `NoSchedule` or `NoExecute` taint of `node` that `pod` does not tolerate.
pub fn untolerated_taint<'a>(pod: &Pod, node: &'a Node) -> Option<&'a Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .find(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(pod, t))
}

/// Whether node labels satisfy every `matchExpressions` requirement (In, NotIn, Exists,
/// DoesNotExist, Gt, Lt).
pub(crate) fn selector_term_matches(
    labels: &BTreeMap<String, String>,
    exprs: &[NodeSelectorRequirement],
) -> bool {
    exprs.iter().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
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

fn field_matches(r: &NodeSelectorRequirement, node_name: &str) -> bool {
    if r.key != "metadata.name" {
        return false;
    }
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => values.iter().any(|v| v == node_name),
        "NotIn" => !values.iter().any(|v| v == node_name),
        _ => false,
    }
}

/// One node selector term: its `matchExpressions` on labels and its `matchFields` (only
/// `metadata.name` exists) must all hold; a term with neither matches nothing, as in
/// Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    selector_term_matches(labels, expressions) && fields.iter().all(|f| field_matches(f, name))
}

/// `nodeSelector` and required node affinity (any of its terms; an empty list matches nothing).
pub fn node_affinity_matches(spec: &PodSpec, node: &Node) -> bool {
    node_selection_matches(spec.node_selector.as_ref(), spec.affinity.as_deref(), node)
}

/// [`node_affinity_matches`] from the two fields themselves (for a template's k8s-openapi
/// `PodSpec`, as the DaemonSet controller has).
pub fn node_selection_matches(
    node_selector: Option<&BTreeMap<String, String>>,
    affinity: Option<&Affinity>,
    node: &Node,
) -> bool {
    let labels = node.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    let selector_ok = node_selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = affinity
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Why `info` cannot take the pod (the first failing filter's reasons), or nothing.
fn filter(
    pod: &Pod,
    spec: &PodSpec,
    want: Resources,
    ports: &[super::snapshot::HostPort],
    relations: &Relations,
    name: &str,
    info: &NodeInfo,
) -> Vec<String> {
    let node = &info.node;
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let taint = |key: &str| Taint {
        key: key.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if unschedulable && !tolerates(pod, &taint("node.kubernetes.io/unschedulable")) {
        return vec!["node(s) were unschedulable".into()];
    }
    if spec.node_name.as_deref().is_some_and(|n| n != name) {
        return vec!["node(s) didn't match the requested node name".into()];
    }
    if !node_ready(node) && !tolerates(pod, &taint(node_lifecycle::TAINT_NOT_READY)) {
        return vec!["node(s) were not ready".into()];
    }
    if let Some(t) = untolerated_taint(pod, node) {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or_default()
        )];
    }
    if !node_affinity_matches(spec, node) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    if ports
        .iter()
        .any(|p| info.host_ports.iter().any(|q| p.conflicts(q)))
    {
        return vec!["node(s) didn't have free ports for the requested pod ports".into()];
    }
    let alloc = info.allocatable;
    let mut why = Vec::new();
    if info.requested.pods + 1 > alloc.pods {
        why.push("Too many pods".into());
    }
    if want.cpu_m > 0 && info.requested.cpu_m + want.cpu_m > alloc.cpu_m {
        why.push("Insufficient cpu".into());
    }
    if want.memory > 0 && info.requested.memory + want.memory > alloc.memory {
        why.push("Insufficient memory".into());
    }
    if !why.is_empty() {
        return why;
    }
    if let Some(why) = relations.spread_filter(info) {
        return vec![why.into()];
    }
    if let Some(why) = relations.affinity_filter(info) {
        return vec![why.into()];
    }
    Vec::new()
}

/// The fraction of `total` that `used` leaves free (0 when there is no total).
fn free(used: i64, total: i64) -> f64 {
    if total <= 0 {
        0.0
    } else {
        1.0 - (used as f64 / total as f64).min(1.0)
    }
}

/// Scales raw scores to 0–100 between their minimum and maximum (all 0 when they are equal).
fn spread_out(raw: &[f64]) -> Vec<f64> {
    let min = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let max = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    raw.iter()
        .map(|&r| {
            if max > min {
                MAX * (r - min) / (max - min)
            } else {
                0.0
            }
        })
        .collect()
}

/// Picks a node for `pod` (pure: the same snapshot and pod give the same answer).
pub fn schedule(snapshot: &Snapshot, pod: &Pod) -> Decision {
    let spec = pod.spec.clone().unwrap_or_default();
    let want = requests(pod);
    let ports = host_ports(pod);
    let relations = Relations::new(snapshot, pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut fits: Vec<(&String, &NodeInfo)> = Vec::new();
    for (name, info) in &snapshot.nodes {
        let why = filter(pod, &spec, want, &ports, &relations, name, info);
        if why.is_empty() {
            fits.push((name, info));
        }
        for w in why {
            *reasons.entry(w).or_default() += 1;
        }
    }
    if fits.is_empty() {
        let mut parts: Vec<String> = reasons
            .into_iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        let mut message = format!("0/{} nodes are available", snapshot.nodes.len());
        if !parts.is_empty() {
            message.push_str(": ");
            message.push_str(&parts.join(", "));
        }
        message.push('.');
        return Decision::Unschedulable(message);
    }
    let scores = score(pod, &spec, want, &relations, &fits);
    let best = fits
        .iter()
        .zip(scores)
        .max_by(|((an, a), sa), ((bn, b), sb)| {
            sa.total_cmp(sb)
                .then(b.requested.pods.cmp(&a.requested.pods))
                .then(bn.cmp(an))
        });
    match best {
        Some(((name, _), _)) => Decision::Bind((*name).clone()),
        None => Decision::Unschedulable("0/0 nodes are available.".into()),
    }
}

/// The weighted sum of the scoring plugins for each feasible node, in the order of `fits`.
fn score(
    pod: &Pod,
    spec: &PodSpec,
    want: Resources,
    relations: &Relations,
    fits: &[(&String, &NodeInfo)],
) -> Vec<f64> {
    let n = fits.len();
    let mut total = vec![0.0; n];
    for (i, (_, info)) in fits.iter().enumerate() {
        let alloc = info.allocatable;
        let cpu = free(info.requested.cpu_m + want.cpu_m, alloc.cpu_m);
        let mem = free(info.requested.memory + want.memory, alloc.memory);
        // NodeResourcesFit, LeastAllocated.
        total[i] += MAX * (cpu + mem) / 2.0;
        // NodeResourcesBalancedAllocation: 1 - the standard deviation of the used fractions.
        total[i] += MAX * (1.0 - ((1.0 - cpu) - (1.0 - mem)).abs() / 2.0);
    }
    // NodeAffinity's preferred terms: the sum of the matching weights, scaled by the best.
    let preferred = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    if !preferred.is_empty() {
        let raw: Vec<f64> = fits
            .iter()
            .map(|(_, info)| {
                preferred
                    .iter()
                    .filter(|p| term_matches(&p.preference, &info.node))
                    .map(|p| f64::from(p.weight))
                    .sum()
            })
            .collect();
        let max = raw.iter().copied().fold(0.0, f64::max);
        for (t, r) in total.iter_mut().zip(raw) {
            *t += 2.0 * if max > 0.0 { MAX * r / max } else { 0.0 };
        }
    }
    // TaintToleration: fewer untolerated PreferNoSchedule taints is better.
    let soft: Vec<&Toleration> = tolerations(pod)
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .collect();
    let raw: Vec<f64> = fits
        .iter()
        .map(|(_, info)| {
            info.node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|t| !soft.iter().any(|s| node_lifecycle::tolerates(s, t)))
                .count() as f64
        })
        .collect();
    let max = raw.iter().copied().fold(0.0, f64::max);
    for (t, r) in total.iter_mut().zip(raw) {
        *t += 3.0 * if max > 0.0 { MAX - MAX * r / max } else { MAX };
    }
    // PodTopologySpread's ScheduleAnyway constraints (or the default spreading).
    if relations.has_spread_scores() {
        let raw: Vec<Option<f64>> = fits
            .iter()
            .map(|(_, info)| relations.spread_score(info))
            .collect();
        let known = raw.iter().flatten().copied();
        let max = known.clone().fold(0.0, f64::max);
        let min = known.fold(f64::INFINITY, f64::min);
        for (t, r) in total.iter_mut().zip(raw) {
            *t += 2.0
                * match r {
                    None => 0.0,
                    Some(_) if max <= 0.0 => MAX,
                    Some(r) => MAX * (max + min - r) / max,
                };
        }
    } else {
        for t in &mut total {
            *t += 2.0 * MAX;
        }
    }
    // InterPodAffinity's preferred terms, both ways.
    if relations.has_affinity_scores() {
        let raw: Vec<f64> = fits
            .iter()
            .map(|(_, info)| relations.affinity_score(info) as f64)
            .collect();
        for (t, s) in total.iter_mut().zip(spread_out(&raw)) {
            *t += 2.0 * s;
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::scheduler::snapshot::quantity;

    fn node(name: &str, cpu: &str, labels: serde_json::Value, extra: serde_json::Value) -> Node {
        let mut labels = labels;
        if labels.get("kubernetes.io/hostname").is_none() {
            labels["kubernetes.io/hostname"] = json!(name);
        }
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

    /// A pod with labels, bound to `node` when it is not empty.
    fn labelled(labels: serde_json::Value, node: &str, spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        if !node.is_empty() {
            spec["nodeName"] = json!(node);
        }
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "labels": labels},
            "spec": spec,
        }))
        .unwrap()
    }

    fn web(cpu: &str) -> serde_json::Value {
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]})
    }

    /// Three nodes in two zones: a and b in z1, c in z2.
    fn zoned() -> Vec<Node> {
        vec![
            node(
                "a",
                "4",
                json!({"topology.kubernetes.io/zone": "z1"}),
                json!(null),
            ),
            node(
                "b",
                "4",
                json!({"topology.kubernetes.io/zone": "z1"}),
                json!(null),
            ),
            node(
                "c",
                "4",
                json!({"topology.kubernetes.io/zone": "z2"}),
                json!(null),
            ),
        ]
    }

    fn unschedulable(d: Decision) -> String {
        match d {
            Decision::Unschedulable(m) => m,
            other => panic!("expected no fit, got {other:?}"),
        }
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
        let msg = unschedulable(schedule(&snap, &pod(web("2"))));
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
        let msg = unschedulable(schedule(&snap, &pod(affinity)));
        assert!(
            msg.contains("didn't match Pod's node affinity/selector"),
            "{msg}"
        );
        // An empty term matches no node; matchFields picks by name.
        let mut empty_term = web("100m");
        empty_term["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{}]}}});
        assert!(matches!(
            schedule(&snap, &pod(empty_term)),
            Decision::Unschedulable(_)
        ));
        let mut by_name = web("100m");
        by_name["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}});
        assert_eq!(schedule(&snap, &pod(by_name)), Decision::Bind("a".into()));
    }

    #[test]
    fn host_ports_conflict_per_protocol_and_address() {
        let nodes = vec![
            node("a", "4", json!({}), json!(null)),
            node("b", "4", json!({}), json!(null)),
        ];
        let port = |p: i32, proto: &str, ip: &str| {
            json!({"containers": [{"name": "c", "ports": [
                {"containerPort": 80, "hostPort": p, "protocol": proto, "hostIP": ip}]}]})
        };
        let on_a = labelled(json!({}), "a", port(8080, "TCP", ""));
        let on_b = labelled(json!({}), "b", port(8080, "TCP", "10.0.0.1"));
        let snap = Snapshot::new(nodes, [&on_a, &on_b]);
        let msg = unschedulable(schedule(&snap, &pod(port(8080, "TCP", ""))));
        expect_test::expect![
            "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
        ]
        .assert_eq(&msg);
        // Another address on b is free; on a, 0.0.0.0 holds every address.
        assert_eq!(
            schedule(&snap, &pod(port(8080, "TCP", "10.0.0.2"))),
            Decision::Bind("b".into())
        );
        // UDP is another port; a is emptier of ports only by name order, both fit.
        assert!(matches!(
            schedule(&snap, &pod(port(8080, "UDP", ""))),
            Decision::Bind(_)
        ));
    }

    #[test]
    fn pod_anti_affinity_keeps_replicas_apart_both_ways() {
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let on_a = labelled(json!({"app": "db"}), "a", anti.clone());
        let on_c = labelled(json!({"app": "db"}), "c", anti.clone());
        let snap = Snapshot::new(zoned(), [&on_a, &on_c]);
        assert_eq!(
            schedule(&snap, &labelled(json!({"app": "db"}), "", anti.clone())),
            Decision::Bind("b".into())
        );
        // A pod without terms of its own is kept off by the existing pods' terms.
        let plain = labelled(json!({"app": "db"}), "", json!({}));
        assert_eq!(schedule(&snap, &plain), Decision::Bind("b".into()));
        let full = Snapshot::new(
            zoned(),
            [
                &on_a,
                &on_c,
                &labelled(json!({"app": "db"}), "b", anti.clone()),
            ],
        );
        let msg = unschedulable(schedule(&full, &plain));
        expect_test::expect![
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
        ]
        .assert_eq(&msg);
        // Other namespaces are not affected unless the term names them.
        let mut elsewhere = labelled(json!({"app": "db"}), "", json!({}));
        elsewhere.metadata.namespace = Some("other".into());
        assert!(matches!(schedule(&full, &elsewhere), Decision::Bind(_)));
        // Zone anti-affinity: z1 holds a db pod, so only c (z2) is left, then nothing.
        let zone_anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        let only_a = Snapshot::new(zoned(), [&labelled(json!({"app": "db"}), "a", json!({}))]);
        assert_eq!(
            schedule(
                &only_a,
                &labelled(json!({"app": "db"}), "", zone_anti.clone())
            ),
            Decision::Bind("c".into())
        );
        let msg = unschedulable(schedule(
            &full,
            &labelled(json!({"app": "x"}), "", zone_anti),
        ));
        expect_test::expect![
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
        ]
        .assert_eq(&msg);
    }

    #[test]
    fn pod_affinity_follows_matching_pods_and_lets_the_first_one_in() {
        let with_cache = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        let cache = labelled(json!({"app": "cache"}), "c", json!({}));
        let snap = Snapshot::new(zoned(), [&cache]);
        assert_eq!(
            schedule(
                &snap,
                &labelled(json!({"app": "web"}), "", with_cache.clone())
            ),
            Decision::Bind("c".into())
        );
        // No cache pod anywhere: a web pod waits...
        let empty = Snapshot::new(zoned(), []);
        let msg = unschedulable(schedule(
            &empty,
            &labelled(json!({"app": "web"}), "", with_cache.clone()),
        ));
        expect_test::expect!["0/3 nodes are available: 3 node(s) didn't match pod affinity rules."]
            .assert_eq(&msg);
        // ...but the first cache pod with affinity to its own kind may start.
        assert!(matches!(
            schedule(&empty, &labelled(json!({"app": "cache"}), "", with_cache)),
            Decision::Bind(_)
        ));
    }

    #[test]
    fn preferred_pod_affinity_and_anti_affinity_score() {
        let near = json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}},
             "topologyKey": "kubernetes.io/hostname"}}]}}});
        let cache = labelled(json!({"app": "cache"}), "b", json!({}));
        let snap = Snapshot::new(zoned(), [&cache]);
        assert_eq!(
            schedule(&snap, &labelled(json!({}), "", near)),
            Decision::Bind("b".into())
        );
        let apart = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}},
             "topologyKey": "topology.kubernetes.io/zone"}}]}}});
        assert_eq!(
            schedule(&snap, &labelled(json!({}), "", apart)),
            Decision::Bind("c".into())
        );
    }

    #[test]
    fn topology_spread_limits_skew_and_names_the_reason() {
        let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}}]});
        let web_on = |n: &str| labelled(json!({"app": "web"}), n, json!({}));
        // z1 has 2 web pods, z2 has 0: only z2 keeps the skew at 1.
        let (a, b) = (web_on("a"), web_on("b"));
        let snap = Snapshot::new(zoned(), [&a, &b]);
        assert_eq!(
            schedule(&snap, &labelled(json!({"app": "web"}), "", spread.clone())),
            Decision::Bind("c".into())
        );
        // c cannot take it either when it is tainted.
        let mut nodes = zoned();
        nodes[2].spec = serde_json::from_value(
            json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}),
        )
        .unwrap();
        let snap = Snapshot::new(nodes, [&a, &b]);
        let msg = unschedulable(schedule(
            &snap,
            &labelled(json!({"app": "web"}), "", spread.clone()),
        ));
        expect_test::expect!["0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 node(s) didn't match pod topology spread constraints."]
            .assert_eq(&msg);
        // A node without the topology label is not a candidate.
        let bare = vec![node("x", "4", json!({}), json!(null))];
        let msg = unschedulable(schedule(
            &Snapshot::new(bare, []),
            &labelled(json!({"app": "web"}), "", spread),
        ));
        expect_test::expect!["0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."]
            .assert_eq(&msg);
    }

    #[test]
    fn pods_of_one_controller_spread_over_nodes_by_default() {
        let owned = |node: &str| {
            let mut p = labelled(json!({"app": "web"}), node, json!({}));
            p.metadata.owner_references = Some(vec![
                serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                "uid": "rs-uid", "controller": true}))
                .unwrap(),
            ]);
            p
        };
        // Equal resources everywhere; a and b hold one of the controller's pods each, c holds
        // two unrelated pods (so the tie-break by pod count alone would pick a).
        let (a, b) = (owned("a"), owned("b"));
        let other = labelled(json!({"app": "other"}), "c", json!({}));
        let snap = Snapshot::new(zoned(), [&a, &b, &other, &other]);
        assert_eq!(schedule(&snap, &owned("")), Decision::Bind("c".into()));
    }

    #[test]
    fn prefer_no_schedule_taints_and_preferred_node_affinity_score() {
        let nodes = vec![
            node(
                "a",
                "4",
                json!({}),
                json!({"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}),
            ),
            node("b", "2", json!({"disk": "ssd"}), json!(null)),
            node("c", "8", json!({}), json!(null)),
        ];
        let snap = Snapshot::new(nodes, []);
        // c is the least allocated.
        assert_eq!(
            schedule(&snap, &pod(web("100m"))),
            Decision::Bind("c".into())
        );
        let mut ssd = web("100m");
        ssd["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}});
        assert_eq!(schedule(&snap, &pod(ssd)), Decision::Bind("b".into()));
        // Without c, the tainted a loses to b although a is emptier.
        let two = Snapshot::new(
            vec![
                node(
                    "a",
                    "4",
                    json!({}),
                    json!({"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}),
                ),
                node("b", "2", json!({}), json!(null)),
            ],
            [],
        );
        assert_eq!(
            schedule(&two, &pod(web("100m"))),
            Decision::Bind("b".into())
        );
    }
}
