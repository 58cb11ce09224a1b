//! The plugins that place a pod relative to other pods: InterPodAffinity (required and
//! preferred pod affinity and anti-affinity, both the incoming pod's terms and the existing
//! pods' terms that name it) and PodTopologySpread (hard and soft constraints, and the default
//! spreading of a controller's pods over nodes and zones when the pod has no constraints of its
//! own). Everything that depends only on the pod is computed once per pod in
//! [`Relations::new`]; the per-node checks are then lookups.
//!
//! Semantics follow kube-scheduler:
//! - An affinity term applies to the pods in the namespaces it lists plus those its
//!   `namespaceSelector` picks (`{}` is every namespace); with neither, the pod's own namespace.
//!   A term without `labelSelector` matches no pod. `matchLabelKeys` / `mismatchLabelKeys` add
//!   `In` / `NotIn` requirements with the pod's own values.
//! - Required affinity: the node's topology domain must hold a pod matching every term; the
//!   first pod of a group with affinity to itself may go anywhere that has the topology labels
//!   (no pod matches any term, and the pod matches all its own terms).
//! - Required anti-affinity, both ways: no matching pod in the node's domain, and no existing pod
//!   whose anti-affinity term matches the incoming pod in that domain. A node without the
//!   topology label is not in any domain, so anti-affinity never excludes it.
//! - Preferred terms add (affinity) or subtract (anti-affinity) their weight once per matching
//!   pod in the node's domain; existing pods' required affinity terms that match the incoming
//!   pod add 1 (`hardPodAffinityWeight`). Scores are normalised to 0–100 between the lowest and
//!   highest node.
//! - Topology spread counts matching, non-terminating pods in the pod's namespace on the nodes
//!   that are eligible for the constraint (they have the topology label; with
//!   `nodeAffinityPolicy: Honor`, the default, they match the pod's node selector and required
//!   affinity; with `nodeTaintsPolicy: Honor` the pod tolerates their taints). A node fails a
//!   `DoNotSchedule` constraint when placing the pod there would make its domain exceed the
//!   least populated domain by more than `maxSkew` (the least is 0 while there are fewer domains
//!   than `minDomains`). `ScheduleAnyway` constraints score fewer matching pods higher, weighted
//!   by the log of the number of domains.
//! - Default spreading (kube-scheduler's system defaults, `hostname` maxSkew 3 and `zone` maxSkew
//!   5, both `ScheduleAnyway`) counts the pods of the same controller, where upstream derives a
//!   selector from the Services and ReplicaSets that select the pod.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::{
    api::core::v1::{PodAffinity, PodAffinityTerm, PodAntiAffinity, TopologySpreadConstraint},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
};
use kube::ResourceExt;

use super::{
    node_affinity_matches,
    snapshot::{NO_LABELS, NodeInfo, PodInfo, Snapshot, controller_uid},
    untolerated_taint,
};
use crate::cached::Pod;
use crate::controllers::workload::{selector_is_empty, selector_matches};

/// The hostname topology label every node carries.
pub const HOSTNAME: &str = "kubernetes.io/hostname";
/// The zone topology label.
pub const ZONE: &str = "topology.kubernetes.io/zone";

/// A pod affinity term made concrete for the pod that carries it.
struct Term {
    selector: Option<LabelSelector>,
    /// `None`: every namespace.
    namespaces: Option<BTreeSet<String>>,
    topology_key: String,
    weight: i64,
}

impl Term {
    fn new(
        term: &PodAffinityTerm,
        weight: i64,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        snapshot: &Snapshot,
    ) -> Self {
        let mut selector = term.label_selector.clone();
        add_label_keys(
            &mut selector,
            term.match_label_keys.as_deref(),
            "In",
            labels,
        );
        add_label_keys(
            &mut selector,
            term.mismatch_label_keys.as_deref(),
            "NotIn",
            labels,
        );
        let listed = term.namespaces.as_deref().unwrap_or_default();
        let namespaces = match &term.namespace_selector {
            None if listed.is_empty() => Some(BTreeSet::from([namespace.to_owned()])),
            None => Some(listed.iter().cloned().collect()),
            Some(s) if selector_is_empty(s) => None,
            Some(s) => {
                let mut set: BTreeSet<String> = listed.iter().cloned().collect();
                set.extend(
                    snapshot
                        .namespaces
                        .iter()
                        .filter(|(_, l)| selector_matches(s, l))
                        .map(|(n, _)| n.clone()),
                );
                Some(set)
            }
        };
        Self {
            selector,
            namespaces,
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|s| s.contains(namespace))
            && self
                .selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, labels))
    }

    /// The existing pods this term matches.
    fn matching<'a>(
        &'a self,
        snapshot: &'a Snapshot,
    ) -> Box<dyn Iterator<Item = &'a PodInfo> + 'a> {
        let pods: Box<dyn Iterator<Item = &'a PodInfo> + 'a> = match &self.namespaces {
            None => Box::new(snapshot.pods()),
            Some(set) => Box::new(set.iter().flat_map(|ns| snapshot.pods_in(ns))),
        };
        Box::new(pods.filter(|p| self.matches(&p.namespace, &p.labels)))
    }
}

/// `matchLabelKeys` / `mismatchLabelKeys`: for each key the pod has, a requirement `key
/// <operator> [its value]` added to the selector (a missing selector stays missing).
fn add_label_keys(
    selector: &mut Option<LabelSelector>,
    keys: Option<&[String]>,
    operator: &str,
    labels: &BTreeMap<String, String>,
) {
    let Some(selector) = selector.as_mut() else {
        return;
    };
    for key in keys.unwrap_or_default() {
        if let Some(value) = labels.get(key) {
            selector
                .match_expressions
                .get_or_insert_with(Vec::new)
                .push(LabelSelectorRequirement {
                    key: key.clone(),
                    operator: operator.into(),
                    values: Some(vec![value.clone()]),
                });
        }
    }
}

/// The topology value of the node a pod runs on.
fn domain_of<'a>(snapshot: &'a Snapshot, pod: &PodInfo, key: &str) -> Option<&'a String> {
    snapshot.nodes.get(&*pod.node)?.labels().get(key)
}

fn terms<'a>(
    terms: Option<&'a Vec<PodAffinityTerm>>,
) -> impl Iterator<Item = (&'a PodAffinityTerm, i64)> + 'a {
    terms.into_iter().flatten().map(|t| (t, 1))
}

fn weighted<'a>(
    terms: Option<&'a Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>,
) -> impl Iterator<Item = (&'a PodAffinityTerm, i64)> + 'a {
    terms
        .into_iter()
        .flatten()
        .map(|t| (&t.pod_affinity_term, i64::from(t.weight)))
}

/// The preferred terms of an affinity (positive weights) and an anti-affinity (negative).
fn preferred<'a>(
    affinity: Option<&'a PodAffinity>,
    anti: Option<&'a PodAntiAffinity>,
) -> impl Iterator<Item = (&'a PodAffinityTerm, i64)> + 'a {
    weighted(affinity.and_then(|a| {
        a.preferred_during_scheduling_ignored_during_execution
            .as_ref()
    }))
    .chain(
        weighted(anti.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }))
        .map(|(t, w)| (t, -w)),
    )
}

/// Which pods a spread constraint counts.
enum Counted {
    Labels(Option<LabelSelector>),
    /// The pods of this controller (default spreading).
    Owner(String),
}

struct Spread {
    key: String,
    max_skew: i64,
    hard: bool,
    /// Matching pods per domain, over the eligible nodes (every eligible domain is present).
    counts: HashMap<String, i64>,
    /// The least populated domain's count.
    min: i64,
    /// 1 when the pod matches its own selector.
    self_match: i64,
    /// `ln(domains + 2)`, the constraint's weight in the score.
    weight: f64,
}

/// Everything the inter-pod plugins need for one pod.
pub struct Relations {
    /// Topology pairs where an existing pod's required anti-affinity excludes the pod.
    existing_anti: HashSet<(String, String)>,
    /// Per required affinity term: its key and the values of domains holding a matching pod.
    affinity: Vec<(String, HashSet<String>)>,
    /// No pod matches any required affinity term and the pod matches all of its own.
    affinity_first: bool,
    /// Per required anti-affinity term: its key and the domains holding a matching pod.
    anti: Vec<(String, HashSet<String>)>,
    /// Preferred (anti-)affinity: topology key → value → score.
    preferred: HashMap<String, HashMap<String, i64>>,
    spread: Vec<Spread>,
}

impl Relations {
    /// Works out the pod's relations to the pods in `snapshot`.
    pub fn new(snapshot: &Snapshot, pod: &Pod) -> Self {
        let namespace = pod.namespace().unwrap_or_default();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let mut out = Self {
            existing_anti: HashSet::new(),
            affinity: Vec::new(),
            affinity_first: false,
            anti: Vec::new(),
            preferred: HashMap::new(),
            spread: Vec::new(),
        };
        let mut add_preferred = |key: &str, value: &str, by: i64| {
            *out.preferred
                .entry(key.to_owned())
                .or_default()
                .entry(value.to_owned())
                .or_default() += by;
        };

        // Existing pods' terms that name this pod.
        for existing in snapshot.with_affinity() {
            let concrete = |t: &PodAffinityTerm, w: i64| {
                Term::new(t, w, &existing.namespace, &existing.labels, snapshot)
            };
            let anti = existing.anti_affinity.as_deref();
            let aff = existing.affinity.as_deref();
            for (t, w) in terms(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })) {
                let term = concrete(t, w);
                if term.matches(&namespace, labels)
                    && let Some(value) = domain_of(snapshot, existing, &term.topology_key)
                {
                    out.existing_anti
                        .insert((term.topology_key.clone(), value.clone()));
                }
            }
            let scored = terms(aff.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }))
            .chain(preferred(aff, anti));
            for (t, w) in scored {
                let term = concrete(t, w);
                if term.matches(&namespace, labels)
                    && let Some(value) = domain_of(snapshot, existing, &term.topology_key)
                {
                    add_preferred(&term.topology_key, value, term.weight);
                }
            }
        }

        // The pod's own terms.
        let concrete = |t: &PodAffinityTerm, w: i64| Term::new(t, w, &namespace, labels, snapshot);
        let required: Vec<Term> = terms(pod_affinity.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }))
        .map(|(t, w)| concrete(t, w))
        .collect();
        let mut any_match = false;
        for term in &required {
            let values: HashSet<String> = term
                .matching(snapshot)
                .filter_map(|p| domain_of(snapshot, p, &term.topology_key).cloned())
                .collect();
            any_match |= !values.is_empty();
            out.affinity.push((term.topology_key.clone(), values));
        }
        out.affinity_first = !any_match && required.iter().all(|t| t.matches(&namespace, labels));
        for (t, w) in terms(pod_anti.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })) {
            let term = concrete(t, w);
            let values = term
                .matching(snapshot)
                .filter_map(|p| domain_of(snapshot, p, &term.topology_key).cloned())
                .collect();
            out.anti.push((term.topology_key.clone(), values));
        }
        for (t, w) in preferred(pod_affinity, pod_anti) {
            let term = concrete(t, w);
            for p in term.matching(snapshot) {
                if let Some(value) = domain_of(snapshot, p, &term.topology_key) {
                    add_preferred(&term.topology_key, value, term.weight);
                }
            }
        }
        out.spread = spread_constraints(snapshot, pod, &namespace, labels);
        out
    }

    /// InterPodAffinity's filter: why the node cannot take the pod, if it cannot (checked in
    /// kube-scheduler's order: the pod's affinity, its anti-affinity, existing pods'
    /// anti-affinity).
    pub fn affinity_filter(&self, node: &NodeInfo) -> Option<&'static str> {
        let labels = node.labels();
        let in_domain = |key: &String, values: &HashSet<String>| {
            labels.get(key).is_some_and(|v| values.contains(v))
        };
        let has_keys = self.affinity.iter().all(|(k, _)| labels.contains_key(k));
        let satisfied = self.affinity.iter().all(|(k, vs)| in_domain(k, vs));
        if !has_keys || !(satisfied || self.affinity_first) {
            return Some("node(s) didn't match pod affinity rules");
        }
        if self.anti.iter().any(|(k, vs)| in_domain(k, vs)) {
            return Some("node(s) didn't match pod anti-affinity rules");
        }
        if self
            .existing_anti
            .iter()
            .any(|(k, v)| labels.get(k) == Some(v))
        {
            return Some("node(s) didn't satisfy existing pods anti-affinity rules");
        }
        None
    }

    /// PodTopologySpread's filter (its `DoNotSchedule` constraints).
    pub fn spread_filter(&self, node: &NodeInfo) -> Option<&'static str> {
        for c in self.spread.iter().filter(|c| c.hard) {
            let Some(value) = node.labels().get(&c.key) else {
                return Some(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                );
            };
            let here = c.counts.get(value).copied().unwrap_or(0);
            if here + c.self_match - c.min > c.max_skew {
                return Some("node(s) didn't match pod topology spread constraints");
            }
        }
        None
    }

    /// The raw preferred (anti-)affinity score of a node (normalise over the feasible nodes).
    pub fn affinity_score(&self, node: &NodeInfo) -> i64 {
        let labels = node.labels();
        self.preferred
            .iter()
            .filter_map(|(key, values)| values.get(labels.get(key)?))
            .sum()
    }

    /// Whether any preferred (anti-)affinity applies (otherwise every node scores the same).
    pub fn has_affinity_scores(&self) -> bool {
        !self.preferred.is_empty()
    }

    /// The raw spread score of a node from the `ScheduleAnyway` constraints: lower is better;
    /// `None` when the node lacks one of their topology labels.
    pub fn spread_score(&self, node: &NodeInfo) -> Option<f64> {
        let labels = node.labels();
        let mut score = 0.0;
        for c in self.spread.iter().filter(|c| !c.hard) {
            let value = labels.get(&c.key)?;
            let count = c.counts.get(value).copied().unwrap_or(0);
            score += count as f64 * c.weight + (c.max_skew - 1) as f64;
        }
        Some(score)
    }

    /// Whether any `ScheduleAnyway` constraint applies.
    pub fn has_spread_scores(&self) -> bool {
        self.spread.iter().any(|c| !c.hard)
    }
}

fn spread_constraints(
    snapshot: &Snapshot,
    pod: &Pod,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<Spread> {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default();
    let constraints: Vec<(TopologySpreadConstraint, Counted)> = if own.is_empty() {
        let Some(owner) = controller_uid(pod) else {
            return Vec::new();
        };
        [(HOSTNAME, 3), (ZONE, 5)]
            .into_iter()
            .map(|(key, skew)| {
                (
                    TopologySpreadConstraint {
                        topology_key: key.into(),
                        max_skew: skew,
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        ..Default::default()
                    },
                    Counted::Owner(owner.to_owned()),
                )
            })
            .collect()
    } else {
        own.iter()
            .map(|c| {
                let mut selector = c.label_selector.clone();
                add_label_keys(&mut selector, c.match_label_keys.as_deref(), "In", labels);
                (c.clone(), Counted::Labels(selector))
            })
            .collect()
    };
    let spec = pod.spec.clone().unwrap_or_default();
    constraints
        .into_iter()
        .map(|(c, counted)| {
            let honor_affinity = c.node_affinity_policy.as_deref() != Some("Ignore");
            let honor_taints = c.node_taints_policy.as_deref() == Some("Honor");
            // Eligible node → its domain.
            let eligible: HashMap<&str, &String> = snapshot
                .nodes
                .iter()
                .filter(|(_, info)| !honor_affinity || node_affinity_matches(&spec, &info.node))
                .filter(|(_, info)| !honor_taints || untolerated_taint(pod, &info.node).is_none())
                .filter_map(|(name, info)| {
                    Some((name.as_str(), info.labels().get(&c.topology_key)?))
                })
                .collect();
            let mut counts: HashMap<String, i64> =
                eligible.values().map(|d| ((*d).clone(), 0)).collect();
            let self_match = match &counted {
                Counted::Owner(_) => 1,
                Counted::Labels(s) => {
                    i64::from(s.as_ref().is_some_and(|s| selector_matches(s, labels)))
                }
            };
            match &counted {
                Counted::Owner(uid) => {
                    for (node, n) in snapshot.by_owner.get(uid.as_str()).into_iter().flatten() {
                        if let Some(domain) = eligible.get(&**node) {
                            *counts.entry((*domain).clone()).or_default() += i64::from(*n);
                        }
                    }
                }
                Counted::Labels(Some(selector)) => {
                    for p in snapshot.pods_in(namespace) {
                        if p.terminating || !selector_matches(selector, &p.labels) {
                            continue;
                        }
                        if let Some(domain) = eligible.get(&*p.node) {
                            *counts.entry((*domain).clone()).or_default() += 1;
                        }
                    }
                }
                Counted::Labels(None) => {}
            }
            let mut min = counts.values().copied().min().unwrap_or(0);
            if c.min_domains
                .is_some_and(|m| counts.len() < usize::try_from(m).unwrap_or(0))
            {
                min = 0;
            }
            let weight = ((counts.len() + 2) as f64).ln();
            Spread {
                key: c.topology_key,
                max_skew: i64::from(c.max_skew.max(1)),
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                counts,
                min,
                self_match,
                weight,
            }
        })
        .collect()
}
