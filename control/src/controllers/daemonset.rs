//! The DaemonSet controller: keeps one pod of each DaemonSet's template on every node that
//! should run it, rolls pods over when the template changes, and writes the status
//! `kubectl rollout status ds/<name>` reads. The decisions are [`plan_daemonset`], a pure
//! function of one DaemonSet, the nodes and the DaemonSet's pods; this module also holds the
//! loop that applies them.
//!
//! Choices, following kube-controller-manager's `daemon` package:
//! - **Which nodes.** [`node_fit`] is upstream's `NodeShouldRunDaemonPod`: the template's
//!   `nodeName` (if any), `nodeSelector` and required node affinity (`matchExpressions` on
//!   labels, `matchFields` on `metadata.name`) must match; then every `NoSchedule` and
//!   `NoExecute` taint must be tolerated for the node to get a pod, and every `NoExecute` taint
//!   for a pod already there to stay. Tolerations are the template's plus the ones every daemon
//!   pod gets ([`daemon_tolerations`]): `not-ready` and `unreachable` (`NoExecute`), `disk-`,
//!   `memory-` and `pid-pressure` and `unschedulable` (`NoSchedule`), and `network-unavailable`
//!   for `hostNetwork` pods, all `Exists` without `tolerationSeconds`. `spec.unschedulable` is
//!   not looked at: a cordoned node still runs its daemons, as upstream. Node readiness only
//!   counts through its taints (the node lifecycle controller's `not-ready:NoSchedule` keeps new
//!   daemon pods off a node that is not ready).
//! - **Placement.** A created pod carries `spec.nodeName` directly, so it bypasses the
//!   scheduler (as DaemonSets did before Kubernetes 1.12). Upstream instead writes a required
//!   node affinity `matchFields metadata.name In [node]` and lets the scheduler bind it, but our
//!   scheduler ignores `matchFields` and would bind such a pod anywhere. Consequence: a daemon
//!   pod is not checked against the node's free CPU, memory or pod count. Pods made upstream's
//!   way (adopted from elsewhere) are still found on their node through that `matchFields` term.
//! - **Pods.** From the template ([`new_pod`]): `generateName` `<ds>-`, the template's labels
//!   plus [`CONTROLLER_REVISION_HASH`] (the template's [`workload::pod_template_hash`]), its
//!   annotations and finalizers, a controller owner reference (with `blockOwnerDeletion`), the
//!   daemon tolerations added. Orphans the selector matches are adopted, as ReplicaSets do.
//! - **One per node.** A node that should run the pod and has none gets one. A node with a pod
//!   that may not stay (or that vanished from the cache) loses it. Of several live pods on one
//!   node the oldest stays. A `Failed` pod is deleted and replaced, at most once per back-off
//!   (1 s doubling to 15 min per DaemonSet and node, upstream's `failedPodsBackoff`), so a pod
//!   the node keeps rejecting does not spin. A pod being deleted still occupies its node: its
//!   replacement comes once it is gone (a `hostPort` could not be taken twice).
//! - **Nodes that are gone.** Their pods are deleted with `gracePeriodSeconds=0`: no agent will
//!   ever confirm a graceful deletion (upstream leaves them to the pod garbage collector, which
//!   we lack).
//! - **Updates.** `RollingUpdate` (the default), as upstream with `maxSurge` 0: delete old-revision
//!   pods while fewer than `maxUnavailable` (int or percent of the desired count, rounded up;
//!   1 when absent, and 1 when both it and `maxSurge` are 0) nodes are unavailable, an old pod
//!   that is itself unavailable always; the next pass creates the new pods. With `maxSurge` > 0
//!   a new pod is started beside the old one on up to `maxSurge` nodes, and the old one goes
//!   once the new one is available. `OnDelete`: a pod of the old template is only replaced
//!   when someone deletes it. Like upstream, one pass takes one step: the update step runs only
//!   when the per-node step has nothing to do. Availability is `Ready` for longer than
//!   `minReadySeconds`; the loop looks again when a pod will become available.
//! - **Status.** Upstream's `updateDaemonSetStatus`: over nodes that should run the pod,
//!   `desiredNumberScheduled`; those with a pod, `currentNumberScheduled`; of their oldest pod,
//!   ready (`numberReady`), available (`numberAvailable`), of the current template
//!   (`updatedNumberScheduled`); `numberUnavailable` is desired minus available;
//!   `numberMisscheduled` counts nodes with a pod that should not run one; `observedGeneration`.
//!   `kubectl rollout status` is done when updated and available both equal desired at the
//!   observed generation.
//! - **Events** as upstream's: `SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate`,
//!   `FailedDelete` and `FailedDaemonPod` (`kubectl describe ds` lists them).
//! - Not done: ControllerRevisions (so no `kubectl rollout history/undo ds`, and the hash is
//!   not byte-identical with upstream's), the deprecated `pod-template-generation` label, and
//!   releasing pods whose labels stopped matching.
//!
//! The loop watches DaemonSets, pods (a pod's change queues its DaemonSet, or for an orphan the
//! DaemonSets that could adopt it) and nodes (a node added, removed, or whose labels or taints
//! changed queues every DaemonSet). Like the ReplicaSet controller it remembers the pods it
//! created and deleted until its cache shows them, so a slow watch never makes it create twice.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetStatus, RollingUpdateDaemonSet},
        core::v1::{Node, Pod as ApiPod, PodSpec, Taint, Toleration},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::cached::Pod;

use super::{
    Note,
    informer::{Change, Expectations, Informer, Key, WorkQueue, Writes, work},
    node_lifecycle, workload,
};

/// Label on every pod of a DaemonSet: the hash of the template it was made from.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
/// Taint of a cordoned node (every daemon pod tolerates it).
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Most pods one pass creates, and most it deletes (kube-controller-manager's DaemonSet
/// `BurstReplicas`).
pub const BURST_PODS: usize = 250;

const NO_EXECUTE: &str = "NoExecute";
const NO_SCHEDULE: &str = "NoSchedule";
/// First wait before Failed pods on a node are replaced again.
const FAILED_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait before Failed pods on a node are replaced again.
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// How long creations and deletions are waited for before the cache is trusted anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Field manager of this controller's writes.
const MANAGER: &str = "daemonset-controller";

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

// ---------------------------------------------------------------------------------------------
// Which nodes

/// The tolerations every daemon pod gets (upstream's `AddOrUpdateDaemonPodTolerations`), all
/// `Exists` and without `tolerationSeconds`: a daemon keeps running through node problems,
/// lands on cordoned nodes and, when it is the node's network (`host_network`), on nodes whose
/// network is not up yet.
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut taints = vec![
        (node_lifecycle::TAINT_NOT_READY, NO_EXECUTE),
        (node_lifecycle::TAINT_UNREACHABLE, NO_EXECUTE),
        (node_lifecycle::TAINT_DISK_PRESSURE, NO_SCHEDULE),
        (node_lifecycle::TAINT_MEMORY_PRESSURE, NO_SCHEDULE),
        (node_lifecycle::TAINT_PID_PRESSURE, NO_SCHEDULE),
        (TAINT_UNSCHEDULABLE, NO_SCHEDULE),
    ];
    if host_network {
        taints.push((node_lifecycle::TAINT_NETWORK_UNAVAILABLE, NO_SCHEDULE));
    }
    taints
        .into_iter()
        .map(|(key, effect)| Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            value: None,
            effect: Some(effect.to_owned()),
            toleration_seconds: None,
        })
        .collect()
}

/// Whether two tolerations are the same but for `tolerationSeconds` (upstream's
/// `MatchToleration`; an absent string is the empty one, as in Go).
fn same_toleration(a: &Toleration, b: &Toleration) -> bool {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    s(&a.key) == s(&b.key)
        && s(&a.operator) == s(&b.operator)
        && s(&a.value) == s(&b.value)
        && s(&a.effect) == s(&b.effect)
}

/// The pod spec of the DaemonSet's pods (before a node is chosen): the template's, with
/// [`daemon_tolerations`] added. A template toleration equal to one of them but for
/// `tolerationSeconds` is replaced by it, as upstream's `AddOrUpdateTolerationInPodSpec` does.
pub fn daemon_pod_spec(ds: &DaemonSet) -> PodSpec {
    let mut spec = ds.spec.template.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for toleration in daemon_tolerations(host_network) {
        match tolerations
            .iter_mut()
            .find(|t| same_toleration(t, &toleration))
        {
            Some(existing) => *existing = toleration,
            None => tolerations.push(toleration),
        }
    }
    spec
}

/// What a node means for a DaemonSet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// The node should run the DaemonSet's pod (a pod is created if it has none).
    pub should_run: bool,
    /// A pod already on the node may stay (false: it is deleted). True whenever `should_run`
    /// is; also when only `NoSchedule` taints are not tolerated.
    pub may_stay: bool,
}

fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations
        .iter()
        .any(|t| node_lifecycle::tolerates(t, taint))
}

/// Upstream's `NodeShouldRunDaemonPod` for a pod with `spec` (from [`daemon_pod_spec`]): the
/// template's `nodeName`, `nodeSelector` and required node affinity must match the node; then
/// untolerated `NoSchedule` or `NoExecute` taints keep a new pod off it, and untolerated
/// `NoExecute` taints remove a pod already there.
pub fn node_fit(spec: &PodSpec, node: &Node) -> Fit {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let pinned_elsewhere = spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name);
    if pinned_elsewhere
        || !crate::scheduler::node_selection_matches(
            spec.node_selector.as_ref(),
            spec.affinity.as_ref(),
            node,
        )
    {
        return Fit::default();
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let blocked_by = |effect: &str| {
        taints
            .iter()
            .any(|t| t.effect == effect && !tolerated(tolerations, t))
    };
    let evicted = blocked_by(NO_EXECUTE);
    Fit {
        should_run: !evicted && !blocked_by(NO_SCHEDULE),
        may_stay: !evicted,
    }
}

// ---------------------------------------------------------------------------------------------
// Pods

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn name_of(pod: &Pod) -> Option<String> {
    pod.metadata.name.clone()
}

fn created(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.creation_timestamp.as_ref().map(|t| t.0)
}

fn assigned(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// Upstream's `podByCreationTimestampAndPhase`: pods bound to a node first, then older first,
/// then by name.
fn oldest_first(a: &Pod, b: &Pod) -> Ordering {
    assigned(b)
        .cmp(&assigned(a))
        .then_with(|| created(&a.metadata).cmp(&created(&b.metadata)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The node a daemon pod is meant for (upstream's `GetTargetNodeName`): its `spec.nodeName`, or
/// before binding the single `metadata.name In [node]` field of its required node affinity.
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    let required = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    required
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| match f.values.as_deref() {
            Some([one]) => Some(one.as_str()),
            _ => None,
        })
}

/// Whether `pod` was made from the template with `hash`.
fn is_updated(pod: &Pod, hash: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONTROLLER_REVISION_HASH))
        .is_some_and(|h| h == hash)
}

/// The [`CONTROLLER_REVISION_HASH`] of the DaemonSet's current template.
pub fn template_hash(ds: &DaemonSet) -> String {
    workload::pod_template_hash(
        &ds.spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    )
}

/// A new pod of `ds` for `node` (upstream's `NewPod` plus `CreatePodTemplate`): see the module
/// docs. `hash` is [`template_hash`] (the plan carries it).
pub fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> ApiPod {
    let meta = ds.spec.template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(CONTROLLER_REVISION_HASH.to_owned(), hash.to_owned());
    let mut spec = daemon_pod_spec(ds);
    spec.node_name = Some(node.to_owned());
    let name = ds.metadata.name.as_deref().unwrap_or_default();
    ApiPod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![workload::owner_reference(
                "apps/v1",
                "DaemonSet",
                &ds.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Strategy

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn size(n: i32) -> usize {
    usize::try_from(n).unwrap_or(0)
}

/// Zero as absent, like a Go `int32` field with `omitempty`.
fn non_zero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

fn is_rolling(ds: &DaemonSet) -> bool {
    ds.spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete")
}

fn rolling_params(ds: &DaemonSet) -> Option<&RollingUpdateDaemonSet> {
    ds.spec.update_strategy.as_ref()?.rolling_update.as_ref()
}

/// `maxSurge` out of `total` nodes (rounded up; 0 when absent or not rolling).
fn surge_count(ds: &DaemonSet, total: i32) -> i32 {
    if !is_rolling(ds) {
        return 0;
    }
    match rolling_params(ds).and_then(|r| r.max_surge.as_ref()) {
        None => 0,
        Some(v) => workload::scaled_value(Some(v), total, true),
    }
}

/// `maxUnavailable` out of `total` nodes (rounded up; 1 when absent, the API default; 0 when
/// not rolling).
fn unavailable_count(ds: &DaemonSet, total: i32) -> i32 {
    if !is_rolling(ds) {
        return 0;
    }
    match rolling_params(ds).and_then(|r| r.max_unavailable.as_ref()) {
        None => 1,
        Some(v) => workload::scaled_value(Some(v), total, true),
    }
}

/// Upstream's `AllowsSurge`: a rolling update whose `maxSurge` is positive.
fn allows_surge(ds: &DaemonSet) -> bool {
    surge_count(ds, 1) > 0
}

// ---------------------------------------------------------------------------------------------
// The plan

/// What one DaemonSet pass does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DaemonSetPlan {
    /// The current template's [`CONTROLLER_REVISION_HASH`], for [`new_pod`].
    pub hash: String,
    /// Nodes to create a pod on ([`new_pod`]), by name, at most [`BURST_PODS`].
    pub create: Vec<String>,
    /// Pods to delete (gracefully), at most [`BURST_PODS`].
    pub delete: Vec<String>,
    /// Pods of nodes that no longer exist, to delete with `gracePeriodSeconds=0`, at most
    /// [`BURST_PODS`].
    pub force_delete: Vec<String>,
    /// Nodes whose `Failed` pods are in `delete`: the loop starts or lengthens their back-off.
    pub failed_deleted: Vec<String>,
    /// Nodes with a `Failed` pod kept because their back-off has not passed: the loop looks
    /// again when it does.
    pub failed_held: Vec<String>,
    /// The status to write (equal to the current one when nothing changes).
    pub status: DaemonSetStatus,
    /// When to look again even if no event comes: when a ready pod becomes available.
    pub requeue_after: Option<Duration>,
}

/// The DaemonSet's pods by the node they are meant for, each list oldest first. Terminal pods
/// already being deleted are left out (nothing more to do with them), as are pods with no
/// target node.
fn pods_by_node<'p>(pods: &[&'p Pod]) -> BTreeMap<&'p str, Vec<&'p Pod>> {
    let mut by_node: BTreeMap<&'p str, Vec<&'p Pod>> = BTreeMap::new();
    for &pod in pods {
        if is_terminal(pod) && is_deleting(pod) {
            continue;
        }
        if let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    for list in by_node.values_mut() {
        list.sort_by(|a, b| oldest_first(a, b));
    }
    by_node
}

/// Plans one pass of the DaemonSet controller. `nodes`: every node; `pods`: every pod the
/// DaemonSet controls (controller owner reference with its uid), terminal and terminating ones
/// included; `backoff`: nodes whose `Failed` pods must not be replaced yet. A DaemonSet being
/// deleted only gets its status.
pub fn plan_daemonset(
    ds: &DaemonSet,
    nodes: &[&Node],
    pods: &[&Pod],
    now: Timestamp,
    backoff: &BTreeSet<String>,
) -> DaemonSetPlan {
    let hash = template_hash(ds);
    let spec = daemon_pod_spec(ds);
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
    let fits: BTreeMap<&str, Fit> = nodes
        .iter()
        .filter_map(|n| {
            n.metadata
                .name
                .as_deref()
                .map(|name| (name, node_fit(&spec, n)))
        })
        .collect();
    let by_node = pods_by_node(pods);
    let mut plan = DaemonSetPlan {
        status: daemonset_status(ds, &fits, &by_node, &hash, now),
        requeue_after: by_node
            .values()
            .flatten()
            .filter(|p| !is_deleting(p))
            .filter_map(|p| workload::until_available(p, min_ready, now))
            .min(),
        hash,
        ..DaemonSetPlan::default()
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let surge = allows_surge(ds);
    // Failed pods deleted, with their node.
    let mut failed: Vec<(String, String)> = Vec::new();
    let empty: &[&Pod] = &[];
    // Upstream's `podsShouldBeOnNode`, node by node.
    for (&node, fit) in &fits {
        let on_node = by_node.get(node).map_or(empty, Vec::as_slice);
        if fit.should_run && on_node.is_empty() {
            plan.create.push(node.to_owned());
        } else if fit.may_stay {
            let mut running: Vec<&Pod> = Vec::new();
            for &pod in on_node.iter().filter(|p| !is_deleting(p)) {
                match phase(pod) {
                    "Failed" if backoff.contains(node) => plan.failed_held.push(node.to_owned()),
                    "Failed" => {
                        if let Some(name) = name_of(pod) {
                            failed.push((name.clone(), node.to_owned()));
                            plan.delete.push(name);
                        }
                    }
                    "Succeeded" => plan.delete.extend(name_of(pod)),
                    _ => running.push(pod),
                }
            }
            plan.delete
                .extend(excess_on_node(&running, surge, &plan.hash, min_ready, now));
        } else {
            plan.delete.extend(
                on_node
                    .iter()
                    .filter(|p| !is_deleting(p))
                    .filter_map(|p| name_of(p)),
            );
        }
    }
    plan.failed_held.dedup();
    // Pods of nodes that are gone, also those already being deleted (no agent will finish).
    for (node, on_node) in &by_node {
        if !fits.contains_key(node) {
            plan.force_delete
                .extend(on_node.iter().filter_map(|p| name_of(p)));
        }
    }
    plan.create.truncate(BURST_PODS);
    plan.delete.truncate(BURST_PODS);
    plan.force_delete.truncate(BURST_PODS);
    plan.failed_deleted = failed
        .into_iter()
        .filter(|(pod, _)| plan.delete.contains(pod))
        .map(|(_, node)| node)
        .collect();
    plan.failed_deleted.dedup();
    let idle = plan.create.is_empty() && plan.delete.is_empty() && plan.force_delete.is_empty();
    if idle && is_rolling(ds) {
        let (create, delete) = rolling_update(ds, &fits, &by_node, &plan.hash, now);
        plan.create = create;
        plan.delete = delete;
        plan.create.truncate(BURST_PODS);
        plan.delete.truncate(BURST_PODS);
    }
    plan
}

/// The live pods (oldest first) to delete on a node that keeps its daemon: without surge all but
/// the oldest; with surge, all but the oldest of the current template and the oldest of an older
/// one, and that old one too once it is not ready or the new one is available.
fn excess_on_node(
    running: &[&Pod],
    surge: bool,
    hash: &str,
    min_ready: i32,
    now: Timestamp,
) -> Vec<String> {
    if !surge {
        return running.iter().skip(1).filter_map(|p| name_of(p)).collect();
    }
    let mut out = Vec::new();
    let (mut oldest_new, mut oldest_old): (Option<&Pod>, Option<&Pod>) = (None, None);
    for &pod in running {
        let slot = if is_updated(pod, hash) {
            &mut oldest_new
        } else {
            &mut oldest_old
        };
        if slot.is_none() {
            *slot = Some(pod);
        } else {
            out.extend(name_of(pod));
        }
    }
    if let (Some(new), Some(old)) = (oldest_new, oldest_old)
        && (!workload::is_pod_ready(old) || workload::is_pod_available(new, min_ready, now))
    {
        out.extend(name_of(old));
    }
    out
}

/// Upstream's `findUpdatedPodsOnNode`: the live pod of the current template and the live pod of
/// an older one on a node; `None` when there are several of either (the per-node step removes
/// the extra ones first).
fn new_and_old<'p>(pods: &[&'p Pod], hash: &str) -> Option<(Option<&'p Pod>, Option<&'p Pod>)> {
    let (mut new, mut old): (Option<&'p Pod>, Option<&'p Pod>) = (None, None);
    for &pod in pods {
        if is_deleting(pod) {
            continue;
        }
        let slot = if is_updated(pod, hash) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(pod);
    }
    Some((new, old))
}

/// Upstream's `rollingUpdate`, taken when the per-node step has nothing to do: returns nodes to
/// create a pod on (surge only) and pods to delete. Nodes are looked at in name order.
fn rolling_update(
    ds: &DaemonSet,
    fits: &BTreeMap<&str, Fit>,
    by_node: &BTreeMap<&str, Vec<&Pod>>,
    hash: &str,
    now: Timestamp,
) -> (Vec<String>, Vec<String>) {
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
    let available = |p: &Pod| workload::is_pod_available(p, min_ready, now);
    let desired = fits.values().filter(|f| f.should_run).count();
    let max_surge = size(surge_count(ds, count(desired)));
    let mut max_unavailable = size(unavailable_count(ds, count(desired)));
    // An impossible configuration (both 0) is read as upstream does: one may be unavailable.
    if desired > 0 && max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    // Every node that should run the pod, with or without pods, and every node with pods.
    let empty: &[&Pod] = &[];
    let mut nodes: BTreeMap<&str, &[&Pod]> = fits
        .iter()
        .filter(|(_, f)| f.should_run)
        .map(|(&n, _)| (n, empty))
        .collect();
    for (&n, pods) in by_node {
        nodes.insert(n, pods.as_slice());
    }
    let mut create = Vec::new();
    let mut delete = Vec::new();
    if max_surge == 0 {
        // Delete old pods while fewer than maxUnavailable nodes are unavailable; the per-node
        // step creates their replacements.
        let mut unavailable = 0usize;
        let mut candidates = Vec::new();
        for pods in nodes.values() {
            match new_and_old(pods, hash) {
                Some((Some(new), None)) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if available(old) {
                        candidates.extend(name_of(old));
                    } else {
                        // Not serving anyway: replace it at once.
                        delete.extend(name_of(old));
                    }
                }
                // No pod, both kinds, or several: the per-node step acts; unavailable meanwhile.
                _ => unavailable += 1,
            }
        }
        let room = max_unavailable
            .saturating_sub(unavailable)
            .min(candidates.len());
        delete.extend(candidates.into_iter().take(room));
        return (create, delete);
    }
    // Surge: start a new pod beside an old one on up to maxSurge nodes; the old one goes when the
    // new one is available (the per-node step deletes it).
    let mut surging = 0usize;
    let mut serving = 0usize;
    let mut candidates = Vec::new();
    let mut leaving = Vec::new();
    for (&node, pods) in &nodes {
        let Some((new, old)) = new_and_old(pods, hash) else {
            surging += 1;
            continue;
        };
        if old.or(new).is_some_and(&available) {
            serving += 1;
        }
        let should_run = fits.get(node).is_some_and(|f| f.should_run);
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) => {
                if !available(old) {
                    if should_run {
                        create.push(node.to_owned());
                    } else {
                        delete.extend(name_of(old));
                    }
                } else if !should_run {
                    leaving.extend(name_of(old));
                } else {
                    candidates.push(node.to_owned());
                }
            }
            (Some(new), Some(old)) => {
                if available(new) {
                    delete.extend(name_of(old));
                } else {
                    surging += 1;
                }
            }
        }
    }
    // A pod on a node that should no longer run it goes only while more pods serve than are
    // desired: with surge, the owner expects no loss of availability.
    let deletable = serving.saturating_sub(desired).min(leaving.len());
    delete.extend(leaving.into_iter().take(deletable));
    let room = max_surge.saturating_sub(surging).min(candidates.len());
    create.extend(candidates.into_iter().take(room));
    (create, delete)
}

/// Upstream's `updateDaemonSetStatus` counts (see the module docs).
fn daemonset_status(
    ds: &DaemonSet,
    fits: &BTreeMap<&str, Fit>,
    by_node: &BTreeMap<&str, Vec<&Pod>>,
    hash: &str,
    now: Timestamp,
) -> DaemonSetStatus {
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
    let (mut desired, mut current, mut misscheduled) = (0usize, 0usize, 0usize);
    let (mut ready, mut available, mut updated) = (0usize, 0usize, 0usize);
    for (node, fit) in fits {
        let oldest = by_node.get(node).and_then(|pods| pods.first());
        if !fit.should_run {
            if oldest.is_some() {
                misscheduled += 1;
            }
            continue;
        }
        desired += 1;
        let Some(pod) = oldest else { continue };
        current += 1;
        if workload::is_pod_ready(pod) {
            ready += 1;
            if workload::is_pod_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if is_updated(pod, hash) {
            updated += 1;
        }
    }
    let mut status = ds.status.clone().unwrap_or_default();
    status.desired_number_scheduled = count(desired);
    status.current_number_scheduled = count(current);
    status.number_misscheduled = count(misscheduled);
    status.number_ready = count(ready);
    status.updated_number_scheduled = non_zero(count(updated));
    status.number_available = non_zero(count(available));
    status.number_unavailable = non_zero(count(desired.saturating_sub(available)));
    status.observed_generation = ds.metadata.generation.filter(|g| *g != 0);
    status
}

// ---------------------------------------------------------------------------------------------
// The loop

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// DaemonSets.
    pub daemonsets: Arc<Informer<DaemonSet>>,
    /// Nodes.
    pub nodes: Arc<Informer<Node>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
}

/// Per DaemonSet and node, when `Failed` pods were last replaced and how long to wait before
/// the next time (upstream's `failedPodsBackoff`: 1 s doubling to 15 min, forgotten after
/// 30 min without a failure).
#[derive(Default)]
struct FailedBackoff {
    entries: Mutex<BackoffEntries>,
}

/// (DaemonSet, node) → (when Failed pods were last replaced, the wait before the next time).
type BackoffEntries = HashMap<(Key, String), (Instant, Duration)>;

impl FailedBackoff {
    fn lock(&self) -> MutexGuard<'_, BackoffEntries> {
        // A panic while holding the lock leaves a plain map behind, still usable.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Nodes of DaemonSet `key` still in back-off at `now`, with the time left.
    fn holding(&self, key: &Key, now: Instant) -> BTreeMap<String, Duration> {
        let mut out = BTreeMap::new();
        for ((k, node), (at, delay)) in self.lock().iter() {
            if k != key {
                continue;
            }
            let left = (*at + *delay).saturating_duration_since(now);
            if !left.is_zero() {
                out.insert(node.clone(), left);
            }
        }
        out
    }

    /// Records that `Failed` pods of DaemonSet `key` on `node` were replaced at `now`.
    fn step(&self, key: &Key, node: &str, now: Instant) {
        let mut all = self.lock();
        all.retain(|_, (at, _)| now.saturating_duration_since(*at) <= FAILED_BACKOFF_MAX * 2);
        let entry = all
            .entry((key.clone(), node.to_owned()))
            .or_insert((now, Duration::ZERO));
        entry.1 = if entry.1.is_zero() {
            FAILED_BACKOFF_INITIAL
        } else {
            entry.1.saturating_mul(2).min(FAILED_BACKOFF_MAX)
        };
        entry.0 = now;
    }
}

/// Whether a node change can change where DaemonSets run: added, removed, or new labels or
/// taints (status heartbeats cannot).
fn node_changed(old: Option<&Node>, new: Option<&Node>) -> bool {
    let taints = |n: &Node| n.spec.as_ref().and_then(|s| s.taints.clone());
    match (old, new) {
        (Some(a), Some(b)) => a.metadata.labels != b.metadata.labels || taints(a) != taints(b),
        _ => true,
    }
}

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut daemonsets = caches.daemonsets.subscribe();
    let mut nodes = caches.nodes.subscribe();
    let mut pods = caches.pods.subscribe();
    caches.daemonsets.synced().await;
    caches.nodes.synced().await;
    caches.pods.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for ds in caches.daemonsets.store().state() {
                queue.add(Key::of(&*ds));
            }
        }
    };
    enqueue_all();
    let dispatch = {
        let caches = caches.clone();
        let queue = queue.clone();
        async move {
            loop {
                tokio::select! {
                    change = daemonsets.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|d| queue.add(Key::of(&**d))),
                        None => break,
                    },
                    change = nodes.next() => match change {
                        Some(Change::Object { old, new }) => {
                            if node_changed(old.as_deref(), new.as_deref()) {
                                enqueue_all();
                            }
                        }
                        Some(Change::Resync) => enqueue_all(),
                        None => break,
                    },
                    change = pods.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => {
                            for pod in c.objects() {
                                for key in owners_of(&caches, pod) {
                                    queue.add(key);
                                }
                            }
                        }
                        None => break,
                    },
                }
            }
        }
    };
    let expected = Expectations::new(EXPECTATION_TIMEOUT);
    let backoff = FailedBackoff::default();
    let work = work(queue, "syncing daemon set", |key| {
        let (client, caches, expected, backoff) = (&client, &caches, &expected, &backoff);
        async move {
            if !expected.caught_up(&key, |exp: &Writes| {
                exp.shown(caches.pods.store(), &key.namespace)
            }) {
                return Ok(Some(Duration::from_millis(500)));
            }
            let mut exp = Writes::default();
            let result = reconcile(client, caches, backoff, &key, &mut exp).await;
            expected.record(key, (!exp.is_empty()).then_some(exp));
            result
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

/// DaemonSets to look at when `pod` changes: its controller if that is a DaemonSet, or for an
/// orphan every DaemonSet of its namespace whose selector matches (to adopt it).
fn owners_of(caches: &Caches, pod: &Pod) -> Vec<Key> {
    let all = caches.daemonsets.store().state();
    match workload::controller_of(&pod.metadata) {
        Some(owner) if owner.kind == "DaemonSet" => all
            .iter()
            .filter(|ds| ds.metadata.uid.as_deref() == Some(owner.uid.as_str()))
            .map(|ds| Key::of(&**ds))
            .collect(),
        Some(_) => Vec::new(),
        None => {
            let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
            all.iter()
                .filter(|ds| ds.metadata.namespace == pod.metadata.namespace)
                .filter(|ds| workload::selector_matches(&ds.spec.selector, labels))
                .map(|ds| Key::of(&**ds))
                .collect()
        }
    }
}

/// One pass over one DaemonSet: records in `exp` what it expects to see, and returns when to
/// look again.
async fn reconcile(
    client: &Client,
    caches: &Caches,
    backoff: &FailedBackoff,
    key: &Key,
    exp: &mut Writes,
) -> Result<Option<Duration>, kube::Error> {
    let Some(ds) = caches.daemonsets.store().get(&key.object_ref()) else {
        return Ok(None);
    };
    // A DaemonSet being deleted leaves its pods to the garbage collector.
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    // Upstream refuses a selector that selects everything (validation should have, too).
    if workload::selector_is_empty(&ds.spec.selector) {
        tracing::warn!(daemonset = %key, "empty selector selects every pod; not syncing");
        return Ok(None);
    }
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<ApiPod> = Api::namespaced(client.clone(), &key.namespace);
    let all = caches.pods.store().state();
    // Adopt orphans the selector matches (not ones being deleted).
    for pod in all.iter().filter(|p| {
        p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
            && workload::should_adopt(&ds.spec.selector, &p.metadata)
    }) {
        let mut owners = pod.metadata.owner_references.clone().unwrap_or_default();
        owners.push(workload::owner_reference(
            "apps/v1",
            "DaemonSet",
            &ds.metadata,
        ));
        let patch = json!({"metadata": {
            "ownerReferences": owners,
            "resourceVersion": pod.metadata.resource_version,
        }});
        let name = pod.metadata.name.clone().unwrap_or_default();
        match pods_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(daemonset = %key, pod = name, "adopted pod"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e),
        }
        // The adoption shows up as a pod change, which queues this DaemonSet again.
        exp.created.insert(name);
    }
    if !exp.created.is_empty() {
        return Ok(None);
    }
    let owned: Vec<&Pod> = all
        .iter()
        .map(|p| &**p)
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && workload::is_controlled_by(&p.metadata, &uid)
        })
        .collect();
    let node_list = caches.nodes.store().state();
    let nodes: Vec<&Node> = node_list.iter().map(|n| &**n).collect();
    let holding = backoff.holding(key, Instant::now());
    let held: BTreeSet<String> = holding.keys().cloned().collect();
    let plan = plan_daemonset(&ds, &nodes, &owned, Timestamp::now(), &held);
    tracing::debug!(
        daemonset = %key,
        create = plan.create.len(),
        delete = plan.delete.len(),
        force_delete = plan.force_delete.len(),
        "planned"
    );
    let mut failure: Option<kube::Error> = None;
    // Events for `kubectl describe ds`, with upstream's reasons and messages.
    let mut notes: Vec<Note> = Vec::new();
    // Creations in batches of 1, 2, 4, ...: a template the apiserver rejects fails once.
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let mut left: &[String] = &plan.create;
    let mut batch = 1usize;
    while !left.is_empty() && failure.is_none() {
        let (these, rest) = left.split_at(batch.min(left.len()));
        let made: Vec<ApiPod> = these
            .iter()
            .map(|node| new_pod(&ds, node, &plan.hash))
            .collect();
        let results = futures::future::join_all(made.iter().map(|p| pods_api.create(&pp, p))).await;
        // Every success of the batch is recorded before the first error stops the rest.
        for (node, result) in these.iter().zip(results) {
            match result {
                Ok(pod) => {
                    tracing::debug!(
                        daemonset = %key,
                        node = %node,
                        pod = pod.metadata.name.as_deref().unwrap_or(""),
                        "created pod"
                    );
                    if let Some(name) = pod.metadata.name {
                        notes.push(Note::normal(
                            "SuccessfulCreate",
                            format!("Created pod: {name}"),
                        ));
                        exp.created.insert(name);
                    }
                }
                Err(e) => {
                    notes.push(Note::warning(
                        "FailedCreate",
                        format!("Error creating: {e}"),
                    ));
                    failure = failure.or(Some(e));
                }
            }
        }
        left = rest;
        batch = batch.saturating_mul(2);
    }
    let graceful = &DeleteParams::default();
    let force = &DeleteParams::default().grace_period(0);
    let deletions = plan
        .delete
        .iter()
        .map(|n| (n, graceful))
        .chain(plan.force_delete.iter().map(|n| (n, force)));
    for (name, params) in deletions {
        if failure.is_some() {
            break;
        }
        match pods_api.delete(name, params).await {
            Ok(_) => {
                tracing::debug!(daemonset = %key, pod = %name, "deleted pod");
                notes.push(Note::normal(
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                ));
                exp.deleted.insert(name.clone());
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                notes.push(Note::warning(
                    "FailedDelete",
                    format!("Error deleting: {e}"),
                ));
                failure = Some(e);
            }
        }
    }
    let now = Instant::now();
    for node in &plan.failed_deleted {
        tracing::info!(daemonset = %key, node = %node, "replacing failed pod");
        notes.push(Note::warning(
            "FailedDaemonPod",
            format!("Found failed daemon pod on node {node}, will try to kill it"),
        ));
        backoff.step(key, node, now);
    }
    futures::future::join_all(
        notes
            .iter()
            .map(|note| super::record_event(client, &*ds, MANAGER, note)),
    )
    .await;
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), &key.namespace);
    if ds.status.as_ref() != Some(&plan.status) {
        let mut next = (*ds).clone();
        next.status = Some(plan.status.clone());
        super::replace_status(&ds_api, &key.name, &next).await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Look again when a held Failed pod may be replaced, or a ready pod becomes available.
    let held_until = plan
        .failed_held
        .iter()
        .filter_map(|n| holding.get(n))
        .min()
        .copied();
    Ok([plan.requeue_after, held_until].into_iter().flatten().min())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::Value;

    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn ts(second: i64) -> String {
        at(second).to_string()
    }

    fn node(name: &str, labels: Value, spec: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }))
        .unwrap()
    }

    /// Edge nodes `n1`..`n<count>` (the test DaemonSet's nodeSelector is `role: edge`).
    fn edge_nodes(count: usize) -> Vec<Node> {
        (1..=count)
            .map(|i| node(&format!("n{i}"), json!({"role": "edge"}), json!({})))
            .collect()
    }

    /// The test DaemonSet (nodeSelector `role: edge`) with `strategy` as `updateStrategy`.
    fn daemonset(strategy: Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "sys", "uid": "ds-uid", "generation": 3},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": strategy,
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {
                        "nodeSelector": {"role": "edge"},
                        "containers": [{"name": "a", "image": "agnhost"}],
                    },
                },
            },
        }))
        .unwrap()
    }

    fn rolling(max_unavailable: Value) -> DaemonSet {
        daemonset(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable}}),
        )
    }

    /// A pod of the test DaemonSet on `node` with template `hash`; `ready_since` in seconds
    /// after the epoch of [`at`] (None: not ready).
    fn pod(name: &str, node: &str, hash: &str, phase: &str, ready_since: Option<i64>) -> Pod {
        let ready = if ready_since.is_some() {
            "True"
        } else {
            "False"
        };
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "namespace": "sys",
                "labels": {"app": "agent", "controller-revision-hash": hash},
                "creationTimestamp": ts(0),
            },
            "spec": {"nodeName": node, "containers": [{"name": "a"}]},
            "status": {"phase": phase, "conditions": [{
                "type": "Ready",
                "status": ready,
                "lastTransitionTime": ready_since.map(ts),
            }]},
        }))
        .unwrap()
    }

    fn created_at(mut pod: Pod, second: i64) -> Pod {
        pod.metadata.creation_timestamp = Some(Time(at(second)));
        pod
    }

    fn deleting(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(Time(at(50)));
        pod
    }

    fn plan(ds: &DaemonSet, nodes: &[Node], pods: &[Pod]) -> DaemonSetPlan {
        plan_with(ds, nodes, pods, &BTreeSet::new())
    }

    fn plan_with(
        ds: &DaemonSet,
        nodes: &[Node],
        pods: &[Pod],
        backoff: &BTreeSet<String>,
    ) -> DaemonSetPlan {
        let nodes: Vec<&Node> = nodes.iter().collect();
        let pods: Vec<&Pod> = pods.iter().collect();
        plan_daemonset(ds, &nodes, &pods, at(100), backoff)
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn node_fit_follows_selectors_and_taints() {
        let ds = daemonset(json!({}));
        let taint = |key: &str, effect: &str| json!({"taints": [{"key": key, "effect": effect}]});
        let edge = json!({"role": "edge"});
        let run = Fit {
            should_run: true,
            may_stay: true,
        };
        let stay = Fit {
            should_run: false,
            may_stay: true,
        };
        let none = Fit::default();
        let cases = [
            ("plain edge node", node("a", edge.clone(), json!({})), run),
            (
                "label missing",
                node("a", json!({"role": "core"}), json!({})),
                none,
            ),
            (
                "cordoned",
                node("a", edge.clone(), json!({"unschedulable": true})),
                run,
            ),
            (
                "cordon taint",
                node("a", edge.clone(), taint(TAINT_UNSCHEDULABLE, "NoSchedule")),
                run,
            ),
            (
                "not ready, NoExecute",
                node(
                    "a",
                    edge.clone(),
                    taint("node.kubernetes.io/not-ready", "NoExecute"),
                ),
                run,
            ),
            (
                "not ready, NoSchedule",
                node(
                    "a",
                    edge.clone(),
                    taint("node.kubernetes.io/not-ready", "NoSchedule"),
                ),
                stay,
            ),
            (
                "unreachable, NoExecute",
                node(
                    "a",
                    edge.clone(),
                    taint("node.kubernetes.io/unreachable", "NoExecute"),
                ),
                run,
            ),
            (
                "memory pressure",
                node(
                    "a",
                    edge.clone(),
                    taint("node.kubernetes.io/memory-pressure", "NoSchedule"),
                ),
                run,
            ),
            (
                "network unavailable",
                node(
                    "a",
                    edge.clone(),
                    taint("node.kubernetes.io/network-unavailable", "NoSchedule"),
                ),
                stay,
            ),
            (
                "user NoSchedule",
                node("a", edge.clone(), taint("dedicated", "NoSchedule")),
                stay,
            ),
            (
                "user NoExecute",
                node("a", edge.clone(), taint("dedicated", "NoExecute")),
                none,
            ),
            (
                "PreferNoSchedule ignored",
                node("a", edge.clone(), taint("dedicated", "PreferNoSchedule")),
                run,
            ),
        ];
        let spec = daemon_pod_spec(&ds);
        for (what, n, want) in &cases {
            assert_eq!(node_fit(&spec, n), *want, "{what}");
        }
        // hostNetwork pods tolerate network-unavailable; the template's own tolerations count.
        let mut host = ds.clone();
        let template = host.spec.template.spec.as_mut().unwrap();
        template.host_network = Some(true);
        template.tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }]);
        let spec = daemon_pod_spec(&host);
        for (what, n, want) in [
            (
                "network unavailable",
                node(
                    "a",
                    edge.clone(),
                    taint("node.kubernetes.io/network-unavailable", "NoSchedule"),
                ),
                run,
            ),
            (
                "user NoExecute, tolerated",
                node("a", edge.clone(), taint("dedicated", "NoExecute")),
                run,
            ),
        ] {
            assert_eq!(node_fit(&spec, &n), want, "{what}");
        }
    }

    #[test]
    fn node_fit_follows_affinity_and_node_name() {
        let mut ds = daemonset(json!({}));
        let template = ds.spec.template.spec.as_mut().unwrap();
        template.node_selector = None;
        template.affinity = Some(serde_json::from_value(json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]},
                {},
            ]},
        }})).unwrap());
        let spec = daemon_pod_spec(&ds);
        let fits = |n: &Node| node_fit(&spec, n).should_run;
        assert!(fits(&node("x", json!({"zone": "b"}), json!({}))));
        assert!(
            !fits(&node("x", json!({"zone": "c"}), json!({}))),
            "an empty term matches nothing"
        );
        assert!(fits(&node("special", json!({}), json!({}))));
        let mut pinned = spec.clone();
        pinned.node_name = Some("special".into());
        assert!(node_fit(&pinned, &node("special", json!({}), json!({}))).should_run);
        assert_eq!(
            node_fit(&pinned, &node("x", json!({"zone": "a"}), json!({}))),
            Fit::default()
        );
    }

    #[test]
    fn daemon_tolerations_are_added_once() {
        let mut ds = daemonset(json!({}));
        ds.spec.template.spec.as_mut().unwrap().tolerations = Some(vec![
            Toleration {
                key: Some("node.kubernetes.io/not-ready".into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(30),
                value: None,
            },
            Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("x".into()),
                ..Toleration::default()
            },
        ]);
        let tolerations = daemon_pod_spec(&ds).tolerations.unwrap();
        let keys: Vec<(&str, &str, Option<i64>)> = tolerations
            .iter()
            .map(|t| {
                (
                    t.key.as_deref().unwrap(),
                    t.effect.as_deref().unwrap_or(""),
                    t.toleration_seconds,
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("node.kubernetes.io/not-ready", "NoExecute", None),
                ("dedicated", "", None),
                ("node.kubernetes.io/unreachable", "NoExecute", None),
                ("node.kubernetes.io/disk-pressure", "NoSchedule", None),
                ("node.kubernetes.io/memory-pressure", "NoSchedule", None),
                ("node.kubernetes.io/pid-pressure", "NoSchedule", None),
                ("node.kubernetes.io/unschedulable", "NoSchedule", None),
            ]
        );
    }

    #[test]
    fn new_pod_is_bound_labelled_and_owned() {
        let ds = daemonset(json!({}));
        let hash = template_hash(&ds);
        let pod = new_pod(&ds, "n2", &hash);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("sys"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
        assert_eq!(labels.get(CONTROLLER_REVISION_HASH), Some(&hash));
        let owner = workload::controller_of(&pod.metadata).unwrap();
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.block_owner_deletion
            ),
            ("DaemonSet", "agent", "ds-uid", Some(true))
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n2"));
        assert_eq!(spec.tolerations.map(|t| t.len()), Some(6));
        assert_eq!(
            target_node(&Pod::from(new_pod(&ds, "n7", &hash))),
            Some("n7")
        );
        // The hash follows the template only.
        let mut changed = ds.clone();
        changed.spec.template.spec.as_mut().unwrap().containers[0].image = Some("other".into());
        assert_ne!(template_hash(&changed), hash);
        let mut relabelled = ds.clone();
        relabelled.metadata.labels = Some(BTreeMap::from([("x".to_owned(), "y".to_owned())]));
        assert_eq!(template_hash(&relabelled), hash);
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let ds = rolling(json!(1));
        let hash = template_hash(&ds);
        let mut nodes = edge_nodes(3);
        nodes.push(node("core", json!({"role": "core"}), json!({})));
        let pods = [
            pod("on-n2", "n2", &hash, "Running", Some(0)),
            created_at(pod("n3-old", "n3", &hash, "Running", Some(0)), 1),
            created_at(pod("n3-new", "n3", &hash, "Running", Some(0)), 5),
            pod("on-core", "core", &hash, "Running", Some(0)),
            pod("on-gone", "gone", &hash, "Running", Some(0)),
            deleting(pod(
                "on-gone-terminating",
                "gone",
                &hash,
                "Running",
                Some(0),
            )),
        ];
        let p = plan(&ds, &nodes, &pods);
        assert_eq!(p.create, ["n1"]);
        assert_eq!(p.delete, ["on-core", "n3-new"]);
        assert_eq!(p.force_delete, ["on-gone", "on-gone-terminating"]);
        let s = &p.status;
        assert_eq!(
            (
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_misscheduled,
                s.number_ready
            ),
            (3, 2, 1, 2)
        );
        assert_eq!(
            (
                s.updated_number_scheduled,
                s.number_available,
                s.number_unavailable,
                s.observed_generation
            ),
            (Some(2), Some(2), Some(1), Some(3))
        );
    }

    #[test]
    fn terminating_pod_holds_its_node_and_failed_pods_are_replaced_with_backoff() {
        let ds = rolling(json!(1));
        let hash = template_hash(&ds);
        let nodes = edge_nodes(4);
        let pods = [
            deleting(pod("going", "n1", &hash, "Running", Some(0))),
            pod("failed", "n2", &hash, "Failed", None),
            pod("done", "n3", &hash, "Succeeded", None),
            pod("failed-held", "n4", &hash, "Failed", None),
            // A failed pod already being deleted no longer counts: n4 is not empty anyway.
            deleting(pod("failed-gone", "n4", &hash, "Failed", None)),
        ];
        let p = plan_with(&ds, &nodes, &pods, &set(&["n4"]));
        assert!(p.create.is_empty(), "{:?}", p.create);
        assert_eq!(p.delete, ["failed", "done"]);
        assert_eq!(p.failed_deleted, ["n2"]);
        assert_eq!(p.failed_held, ["n4"]);
        assert!(p.force_delete.is_empty());
        // Once they are gone, the next pass creates their replacements.
        let p = plan(&ds, &nodes, &[]);
        assert_eq!(p.create, ["n1", "n2", "n3", "n4"]);
    }

    #[test]
    fn nodes_that_only_tolerate_running_pods_keep_them() {
        let ds = rolling(json!(1));
        let hash = template_hash(&ds);
        let nodes = [
            node(
                "n1",
                json!({"role": "edge"}),
                json!({"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}),
            ),
            node(
                "n2",
                json!({"role": "edge"}),
                json!({"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}),
            ),
            node(
                "n3",
                json!({"role": "edge"}),
                json!({"taints": [{"key": "dedicated", "effect": "NoExecute"}]}),
            ),
        ];
        let pods = [
            pod("stays", "n1", &hash, "Running", Some(0)),
            pod("evicted", "n3", &hash, "Running", Some(0)),
        ];
        let p = plan(&ds, &nodes, &pods);
        assert!(p.create.is_empty());
        assert_eq!(p.delete, ["evicted"]);
        assert_eq!(p.status.desired_number_scheduled, 0);
        assert_eq!(p.status.number_misscheduled, 2);
    }

    /// A rolling update case: name, maxUnavailable, pods as (node, of the current template,
    /// ready since), the pods deleted.
    type Case<'a> = (
        &'a str,
        Value,
        &'a [(&'a str, bool, Option<i64>)],
        &'a [&'a str],
    );

    #[test]
    fn rolling_update_stays_within_max_unavailable() {
        let nodes = edge_nodes(4);
        let cases: [Case<'_>; 6] = [
            (
                "one at a time",
                json!(1),
                &[
                    ("n1", false, Some(0)),
                    ("n2", false, Some(0)),
                    ("n3", false, Some(0)),
                    ("n4", false, Some(0)),
                ],
                &["p-n1"],
            ),
            (
                "percent rounds up",
                json!("30%"),
                &[
                    ("n1", false, Some(0)),
                    ("n2", false, Some(0)),
                    ("n3", false, Some(0)),
                    ("n4", false, Some(0)),
                ],
                &["p-n1", "p-n2"],
            ),
            (
                "a new pod not yet ready uses the budget",
                json!(1),
                &[
                    ("n1", true, None),
                    ("n2", false, Some(0)),
                    ("n3", false, Some(0)),
                    ("n4", false, Some(0)),
                ],
                &[],
            ),
            (
                "an old pod not ready is replaced anyway",
                json!(1),
                &[
                    ("n1", true, None),
                    ("n2", false, None),
                    ("n3", false, Some(0)),
                    ("n4", false, Some(0)),
                ],
                &["p-n2"],
            ),
            (
                "done nodes free the budget",
                json!(2),
                &[
                    ("n1", true, Some(0)),
                    ("n2", true, Some(0)),
                    ("n3", false, Some(0)),
                    ("n4", false, Some(0)),
                ],
                &["p-n3", "p-n4"],
            ),
            (
                "zero is read as one",
                json!(0),
                &[
                    ("n1", false, Some(0)),
                    ("n2", false, Some(0)),
                    ("n3", false, Some(0)),
                    ("n4", false, Some(0)),
                ],
                &["p-n1"],
            ),
        ];
        for (what, max, pods, want) in cases {
            let ds = rolling(max);
            let hash = template_hash(&ds);
            let pods: Vec<Pod> = pods
                .iter()
                .map(|(n, current, ready)| {
                    pod(
                        &format!("p-{n}"),
                        n,
                        if *current { hash.as_str() } else { "old" },
                        "Running",
                        *ready,
                    )
                })
                .collect();
            let p = plan(&ds, &nodes, &pods);
            assert!(p.create.is_empty(), "{what}");
            assert_eq!(p.delete, want, "{what}");
        }
    }

    #[test]
    fn rolling_update_waits_for_a_deleted_pod() {
        let ds = rolling(json!(1));
        let nodes = edge_nodes(2);
        // n1's old pod is going: n1 is unavailable, so n2 waits. (The status still counts the
        // going pod, as upstream's does.)
        let pods = [
            deleting(pod("p-n1", "n1", "old", "Running", Some(0))),
            pod("p-n2", "n2", "old", "Running", Some(0)),
        ];
        let p = plan(&ds, &nodes, &pods);
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        assert_eq!(p.status.updated_number_scheduled, None);
        assert_eq!(p.status.number_available, Some(2));
    }

    #[test]
    fn on_delete_replaces_only_deleted_pods() {
        let ds = daemonset(json!({"type": "OnDelete"}));
        let nodes = edge_nodes(2);
        let pods = [pod("p-n1", "n1", "old", "Running", Some(0))];
        let p = plan(&ds, &nodes, &pods);
        assert_eq!(p.create, ["n2"]);
        assert!(p.delete.is_empty());
        let p = plan(
            &ds,
            &nodes,
            &[
                pod("p-n1", "n1", "old", "Running", Some(0)),
                pod("p-n2", "n2", "x", "Running", Some(0)),
            ],
        );
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        assert_eq!(p.status.updated_number_scheduled, None);
    }

    #[test]
    fn surge_starts_new_pods_beside_old_ones() {
        let ds = daemonset(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
        );
        let hash = template_hash(&ds);
        let nodes = edge_nodes(3);
        let old = |n: &str| pod(&format!("old-{n}"), n, "old", "Running", Some(0));
        // Nothing surged yet: one new pod, on n1.
        let p = plan(&ds, &nodes, &[old("n1"), old("n2"), old("n3")]);
        assert_eq!(p.create, ["n1"]);
        assert!(p.delete.is_empty());
        // n1's new pod is not ready: both stay, no further surge.
        let new_n1 = created_at(pod("new-n1", "n1", &hash, "Running", None), 10);
        let p = plan(&ds, &nodes, &[old("n1"), new_n1, old("n2"), old("n3")]);
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        // Ready and available: the old one goes.
        let new_n1 = created_at(pod("new-n1", "n1", &hash, "Running", Some(20)), 10);
        let p = plan(&ds, &nodes, &[old("n1"), new_n1, old("n2"), old("n3")]);
        assert_eq!(p.delete, ["old-n1"]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut ds = rolling(json!(1));
        ds.spec.min_ready_seconds = Some(30);
        let hash = template_hash(&ds);
        let nodes = edge_nodes(2);
        // Ready at 90 and at 50; now is 100.
        let pods = [
            pod("p-n1", "n1", &hash, "Running", Some(90)),
            pod("p-n2", "n2", &hash, "Running", Some(50)),
        ];
        let p = plan(&ds, &nodes, &pods);
        assert_eq!(
            (p.status.number_ready, p.status.number_available),
            (2, Some(1))
        );
        assert_eq!(p.status.number_unavailable, Some(1));
        let wait = p.requeue_after.unwrap();
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(21),
            "{wait:?}"
        );
    }

    #[test]
    fn deleted_daemonset_only_gets_status() {
        let mut ds = rolling(json!(1));
        ds.metadata.deletion_timestamp = Some(Time(at(0)));
        let p = plan(
            &ds,
            &edge_nodes(2),
            &[pod("x", "gone", "old", "Running", None)],
        );
        assert!(p.create.is_empty() && p.delete.is_empty() && p.force_delete.is_empty());
        assert_eq!(p.status.desired_number_scheduled, 2);
    }

    #[test]
    fn failed_backoff_doubles_and_expires() {
        let b = FailedBackoff::default();
        let key = Key {
            namespace: "sys".into(),
            name: "agent".into(),
        };
        let t0 = Instant::now();
        assert!(b.holding(&key, t0).is_empty());
        b.step(&key, "n1", t0);
        assert_eq!(b.holding(&key, t0).get("n1"), Some(&FAILED_BACKOFF_INITIAL));
        b.step(&key, "n1", t0);
        assert_eq!(
            b.holding(&key, t0).get("n1"),
            Some(&(FAILED_BACKOFF_INITIAL * 2))
        );
        assert!(b.holding(&key, t0 + Duration::from_secs(3)).is_empty());
        let other = Key {
            namespace: "sys".into(),
            name: "other".into(),
        };
        assert!(b.holding(&other, t0).is_empty());
    }
}
