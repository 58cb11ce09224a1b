//! The node lifecycle controller (kube-controller-manager's node-lifecycle-controller with
//! taint-based eviction): notices nodes whose agent went silent, taints nodes by their
//! conditions, and evicts the pods that do not tolerate a node's `NoExecute` taints. The
//! decisions are [`plan_node`], a pure function of one Node, its Lease and its pods; this module
//! also holds the loop that applies them.
//!
//! Choices, following Kubernetes:
//! - **Health.** A node was last heard from at the latest of its Lease's `spec.renewTime`
//!   (`kube-node-lease/<node>`, renewed every 10 s by the agent), its Ready condition's
//!   `lastHeartbeatTime` (posted every minute), its `creationTimestamp`, and the moment this
//!   controller started watching (kube-controller-manager's probe timestamps start at its own
//!   start too, so a control plane that was down does not find every node silent). After
//!   [`NODE_MONITOR_GRACE`] of silence ([`NODE_STARTUP_GRACE`] for a node that never posted a
//!   Ready condition) Ready, MemoryPressure, DiskPressure and PIDPressure become `Unknown`
//!   (reason `NodeStatusUnknown`, "Kubelet stopped posting node status."; a condition never
//!   posted is added with `NodeStatusNeverUpdated`). Only conditions not already `Unknown`
//!   change, with a new `lastTransitionTime`; heartbeats are kept. NetworkUnavailable is left
//!   alone, as in Kubernetes. The controller never sets Ready back to `True`: the node comes
//!   back when its agent posts its status again. Unlike kube-controller-manager, which times
//!   silence by when it observed changes, the agent's timestamps are compared with this
//!   controller's clock: clock skew between machines shifts the grace by as much.
//! - **Taints** (TaintNodesByCondition plus the NoExecute taints of taint-based eviction), by
//!   key and effect: Ready=False → `node.kubernetes.io/not-ready`, Ready=Unknown →
//!   `node.kubernetes.io/unreachable`, both `NoSchedule` and `NoExecute` (the latter with
//!   `timeAdded`); MemoryPressure/DiskPressure/PIDPressure/NetworkUnavailable=True → the matching
//!   `NoSchedule` taint. Those taints go when their condition goes; every other taint is left
//!   as it is, `node.kubernetes.io/unschedulable` included (it belongs to cordon).
//! - **Eviction.** A pod bound to a node is deleted (an ordinary graceful DELETE, with its UID
//!   as precondition) once it does not tolerate one of the node's `NoExecute` taints: at once
//!   without a matching toleration, at the taint's `timeAdded` plus `tolerationSeconds` with
//!   one (the earliest over all taints; the node is looked at again then), never when every
//!   matching toleration lacks `tolerationSeconds`. Kubernetes' taint manager counts from when
//!   it first saw the taint; counting from `timeAdded` survives a controller restart. A
//!   `NoExecute` taint without `timeAdded` (`kubectl taint` always sets one) counts as added
//!   long ago. Toleration matching is [`tolerates`]. As the DefaultTolerationSeconds admission
//!   plugin (which our apiserver lacks) would, a pod that tolerates neither readiness taint is
//!   given a [`DEFAULT_TOLERATION_SECONDS`] toleration for each ([`effective_tolerations`]).
//!   DaemonSet pods (an ownerReference of kind DaemonSet) and mirror pods ignore the readiness
//!   taints, as the tolerations their controllers add make them do; other `NoExecute` taints
//!   apply to them. Pods already terminating are skipped. On an unreachable node an evicted pod
//!   stays `Terminating` until its agent returns, as in Kubernetes; its controller replaces it
//!   meanwhile.
//! - **Pods not ready** (kube's `MarkPodsNotReady`): when a node's Ready is not `True`, the Ready
//!   condition of each of its pods that became ready no later than the node stopped being ready
//!   is set to `False` through `pods/status`, so EndpointSlices drop them. Comparing the two
//!   transition times replaces kube's "on the transition" trigger without keeping state: an
//!   agent that is still alive may mark its pods ready again and is not fought.
//! - Not done: eviction rate limits and zone disruption modes (kube-controller-manager stops
//!   evicting when every node is not ready), Events, and removing pods of deleted nodes (the pod
//!   garbage collector's job).
//!
//! The loop: every node is queued every [`NODE_MONITOR_PERIOD`] (silence produces no watch
//! event), and whenever its Node, its Lease or one of its pods changes. A node's pods are found
//! by a linear scan of the pod cache (an index by `spec.nodeName` would avoid that once clusters
//! grow). Every write carries the resourceVersion it was planned from, so a write racing the
//! agent gets 409 Conflict and is retried after a back-off instead of overwriting fresh status;
//! and the node is not planned again until the caches show what was written.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, NodeCondition, Pod as ApiPod, PodCondition, Taint, Toleration},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde_json::json;

use crate::cached::Pod;

use super::informer::{Change, Expectations, Informer, Key, WorkQueue, version, work};

/// How long a node may stay silent before its conditions become `Unknown` (the agent renews its
/// Lease every 10 s, so four renewals may be missed).
pub const NODE_MONITOR_GRACE: Duration = Duration::from_secs(40);
/// How long a node that never posted a Ready condition may stay silent.
pub const NODE_STARTUP_GRACE: Duration = Duration::from_secs(60);
/// How often every node is looked at again (kube-controller-manager's `--node-monitor-period`).
pub const NODE_MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// `tolerationSeconds` of the readiness tolerations a pod gets when it has none of its own (the
/// DefaultTolerationSeconds admission plugin's default).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;
/// Namespace of the node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Taint of a node whose Ready condition is `False`.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint of a node whose Ready condition is `Unknown`.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node under memory pressure.
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
/// Taint of a node under disk pressure.
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
/// Taint of a node running out of process IDs.
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
/// Taint of a node whose network is not set up.
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
/// Annotation marking a mirror pod (the API copy of a static pod).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

const NO_EXECUTE: &str = "NoExecute";
const NO_SCHEDULE: &str = "NoSchedule";
const READY: &str = "Ready";
const UNKNOWN: &str = "Unknown";
/// The conditions that become `Unknown` when a node goes silent.
const MONITORED: [&str; 4] = [READY, "MemoryPressure", "DiskPressure", "PIDPressure"];
/// Condition type and status → taint key (kube's `nodeConditionToTaintKeyStatusMap`). Every one
/// is a `NoSchedule` taint; the readiness ones are `NoExecute` taints as well.
const CONDITION_TAINTS: [(&str, &str, &str); 6] = [
    (READY, "False", TAINT_NOT_READY),
    (READY, UNKNOWN, TAINT_UNREACHABLE),
    ("MemoryPressure", "True", TAINT_MEMORY_PRESSURE),
    ("DiskPressure", "True", TAINT_DISK_PRESSURE),
    ("PIDPressure", "True", TAINT_PID_PRESSURE),
    ("NetworkUnavailable", "True", TAINT_NETWORK_UNAVAILABLE),
];
/// Longest wait asked for in [`NodePlan::recheck_after`] (the periodic resync looks anyway; this
/// keeps timers representable whatever `tolerationSeconds` says).
const MAX_RECHECK: Duration = Duration::from_secs(3600);
/// Field manager of this controller's writes.
const MANAGER: &str = "node-lifecycle-controller";
/// How long written versions are waited for before the caches are trusted anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What to write for one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodePlan {
    /// The node's new `status.conditions`, if they change.
    pub conditions: Option<Vec<NodeCondition>>,
    /// The node's new `spec.taints`, if they change.
    pub taints: Option<Vec<Taint>>,
    /// Pods to delete now.
    pub evict: Vec<Key>,
    /// Pods whose Ready condition is to become `False`.
    pub mark_not_ready: Vec<Key>,
    /// When to look at the node again: the next pod eviction that a toleration delays.
    pub recheck_after: Option<Duration>,
}

impl NodePlan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_none()
            && self.taints.is_none()
            && self.evict.is_empty()
            && self.mark_not_ready.is_empty()
    }
}

/// `t` without its fraction of a second, as the API stores `Time`s.
fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn find_condition<'a>(conditions: &'a [NodeCondition], type_: &str) -> Option<&'a NodeCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn conditions_of(node: &Node) -> &[NodeCondition] {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

fn bound_to(pod: &Pod, node: &str) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
}

/// When the node's agent was last heard from: the later of its Lease's `renewTime` and its
/// Ready condition's `lastHeartbeatTime` (`None` when neither is known).
pub fn last_heard(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let beat = find_condition(conditions_of(node), READY)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    renewed.max(beat)
}

/// The node's conditions with its silence accounted for, if that changes them (kube's
/// `tryUpdateNodeHealth`). `now` is a whole second.
fn health_conditions(
    node: &Node,
    lease: Option<&Lease>,
    now: Timestamp,
    since: Timestamp,
) -> Option<Vec<NodeCondition>> {
    let mut conditions = conditions_of(node).to_vec();
    let created = node.metadata.creation_timestamp.clone();
    let grace = if find_condition(&conditions, READY).is_some() {
        NODE_MONITOR_GRACE
    } else {
        NODE_STARTUP_GRACE
    };
    let heard = last_heard(node, lease)
        .max(created.as_ref().map(|t| t.0))
        .unwrap_or(since)
        .max(since);
    if now.duration_since(heard) <= signed(grace) {
        return None;
    }
    let mut changed = false;
    for type_ in MONITORED {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) if c.status == UNKNOWN => {}
            Some(c) => {
                c.status = UNKNOWN.into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            None => {
                conditions.push(NodeCondition {
                    type_: type_.into(),
                    status: UNKNOWN.into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: created.clone(),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conditions)
}

fn is_readiness_taint_key(key: &str) -> bool {
    key == TAINT_NOT_READY || key == TAINT_UNREACHABLE
}

/// Whether `taint` is one this controller derives from node conditions.
fn is_condition_taint(taint: &Taint) -> bool {
    CONDITION_TAINTS.iter().any(|(_, _, key)| *key == taint.key)
        && (taint.effect == NO_SCHEDULE
            || (taint.effect == NO_EXECUTE && is_readiness_taint_key(&taint.key)))
}

/// The taints a node with `current` taints should carry given its `conditions` (pure core):
/// condition taints that no longer apply go, missing ones are appended (`NoExecute` ones with
/// `timeAdded = now`), and every other taint keeps its place and contents.
pub fn desired_taints(
    current: &[Taint],
    conditions: &[NodeCondition],
    now: Timestamp,
) -> Vec<Taint> {
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for (type_, status, key) in CONDITION_TAINTS {
        if find_condition(conditions, type_).is_some_and(|c| c.status == status) {
            wanted.push((key, NO_SCHEDULE));
            if is_readiness_taint_key(key) {
                wanted.push((key, NO_EXECUTE));
            }
        }
    }
    let mut taints: Vec<Taint> = Vec::new();
    for taint in current {
        if is_condition_taint(taint) {
            let same = |t: &Taint| t.key == taint.key && t.effect == taint.effect;
            let wanted_here = wanted
                .iter()
                .any(|(k, e)| *k == taint.key && *e == taint.effect);
            // A duplicate of one of ours keeps only its first copy.
            if !wanted_here || taints.iter().any(same) {
                continue;
            }
        }
        taints.push(taint.clone());
    }
    for (key, effect) in wanted {
        if !taints.iter().any(|t| t.key == key && t.effect == effect) {
            taints.push(Taint {
                key: key.into(),
                effect: effect.into(),
                value: None,
                time_added: (effect == NO_EXECUTE).then_some(Time(now)),
            });
        }
    }
    taints
}

/// Whether `toleration` tolerates `taint` (Kubernetes' `ToleratesTaint`): an empty effect
/// matches every effect; an empty key matches every key, with operator `Exists` (as API
/// validation requires); `Exists` ignores the value, `Equal` (the default) compares it;
/// other operators match nothing.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let operator = toleration.operator.as_deref().unwrap_or("");
    let key = toleration.key.as_deref().unwrap_or("");
    if key.is_empty() {
        return operator == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match operator {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// Whether `pod` is a mirror pod (the API copy of a static pod).
pub fn is_mirror_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Whether `pod` belongs to a DaemonSet.
pub fn is_daemonset_pod(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet")
}

/// The tolerations `pod` is judged by: its own, plus a [`DEFAULT_TOLERATION_SECONDS`]
/// `NoExecute` toleration for each readiness taint none of its own covers (the
/// DefaultTolerationSeconds admission plugin's rule: a toleration covers a taint key when its
/// key is that key or empty and its effect `NoExecute` or empty).
pub fn effective_tolerations(pod: &Pod) -> Vec<Toleration> {
    let mut tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    for key in [TAINT_NOT_READY, TAINT_UNREACHABLE] {
        let covered = tolerations.iter().any(|t| {
            let k = t.key.as_deref().unwrap_or("");
            let e = t.effect.as_deref().unwrap_or("");
            (k.is_empty() || k == key) && (e.is_empty() || e == NO_EXECUTE)
        });
        if !covered {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                value: None,
                effect: Some(NO_EXECUTE.into()),
                toleration_seconds: Some(DEFAULT_TOLERATION_SECONDS),
            });
        }
    }
    tolerations
}

/// When `pod` must leave a node carrying `taints` (only `NoExecute` ones count): `None` if it
/// may stay for good, [`Timestamp::MIN`] if a taint is not tolerated at all, otherwise the
/// earliest `timeAdded + tolerationSeconds` over the taints (per taint, the first matching
/// toleration decides, as in Kubernetes).
pub fn eviction_time(pod: &Pod, taints: &[Taint]) -> Option<Timestamp> {
    let exempt = is_mirror_pod(pod) || is_daemonset_pod(pod);
    let tolerations = effective_tolerations(pod);
    let mut due: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        if exempt && is_readiness_taint_key(&taint.key) {
            continue;
        }
        let Some(toleration) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Some(Timestamp::MIN);
        };
        let Some(seconds) = toleration.toleration_seconds else {
            continue;
        };
        let at = if seconds <= 0 {
            Timestamp::MIN
        } else {
            taint
                .time_added
                .as_ref()
                .map_or(Timestamp::MIN, |t| t.0)
                .checked_add(SignedDuration::from_secs(seconds))
                .unwrap_or(Timestamp::MAX)
        };
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    due
}

fn pod_ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == READY)
}

/// Whether `pod`'s Ready condition is to become `False` on a node whose Ready condition is
/// `node_ready`: the node is not ready, and the pod became ready no later than the node stopped
/// being ready (a pod marked ready since then was marked by a live agent).
fn should_mark_not_ready(pod: &Pod, node_ready: Option<&NodeCondition>) -> bool {
    let Some(node_ready) = node_ready.filter(|c| c.status != "True") else {
        return false;
    };
    let Some(ready) = pod_ready_condition(pod).filter(|c| c.status != "False") else {
        return false;
    };
    match (
        &ready.last_transition_time,
        &node_ready.last_transition_time,
    ) {
        (Some(pod_since), Some(node_since)) => pod_since.0 <= node_since.0,
        _ => true,
    }
}

/// The conditions of `pod` with Ready set to `False` at `now` (reason and message kept, as
/// kube's `MarkPodsNotReady` does), or `None` if it has no Ready condition or it is `False`.
pub fn not_ready_conditions(pod: &Pod, now: Timestamp) -> Option<Vec<PodCondition>> {
    let mut conditions = pod.status.as_ref()?.conditions.clone()?;
    let ready = conditions.iter_mut().find(|c| c.type_ == READY)?;
    if ready.status == "False" {
        return None;
    }
    ready.status = "False".into();
    ready.last_transition_time = Some(Time(whole_second(now)));
    Some(conditions)
}

/// Plans one node (pure core): its conditions after [`NODE_MONITOR_GRACE`] of silence, its
/// condition taints, and which of `pods` (those bound to it; others are ignored) to evict or to
/// mark not ready. `since` is when the caller began watching: silence is not counted from
/// before it.
pub fn plan_node(
    node: &Node,
    lease: Option<&Lease>,
    pods: &[&Pod],
    now: Timestamp,
    since: Timestamp,
) -> NodePlan {
    let now = whole_second(now);
    let new_conditions = health_conditions(node, lease, now, since);
    let conditions = new_conditions
        .as_deref()
        .unwrap_or_else(|| conditions_of(node));
    let current_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let taints = desired_taints(current_taints, conditions, now);
    let node_ready = find_condition(conditions, READY);
    let name = node.metadata.name.as_deref().unwrap_or("");
    let mut plan = NodePlan::default();
    for pod in pods.iter().filter(|p| bound_to(p, name)) {
        let key = Key::of(*pod);
        if should_mark_not_ready(pod, node_ready) {
            plan.mark_not_ready.push(key.clone());
        }
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // A timed eviction is not due before the controller has watched for one grace period:
        // a taint left from before a control-plane outage may be stale, and a live agent
        // reports within that time.
        let settle = since
            .checked_add(
                SignedDuration::try_from(NODE_MONITOR_GRACE).unwrap_or(SignedDuration::ZERO),
            )
            .unwrap_or(since);
        match eviction_time(pod, &taints).map(|at| {
            if at == Timestamp::MIN {
                at
            } else {
                at.max(settle)
            }
        }) {
            None => {}
            Some(at) if at <= now => plan.evict.push(key),
            Some(at) => {
                let wait = Duration::try_from(at.duration_since(now))
                    .unwrap_or(MAX_RECHECK)
                    .min(MAX_RECHECK);
                plan.recheck_after = Some(plan.recheck_after.map_or(wait, |r| r.min(wait)));
            }
        }
    }
    plan.taints = (taints.as_slice() != current_taints).then_some(taints);
    plan.conditions = new_conditions;
    plan
}

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// Nodes.
    pub nodes: Arc<Informer<Node>>,
    /// Leases of [`LEASE_NAMESPACE`] (Leases elsewhere are ignored).
    pub leases: Arc<Informer<Lease>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
}

/// What the controller wrote for a node and waits to see in its caches.
#[derive(Default)]
struct Expected {
    /// The Node's resourceVersion after the last write.
    node: Option<u64>,
    /// Pods written: `Some(version)` for a status write, `None` for a deletion.
    pods: BTreeMap<Key, Option<u64>>,
}

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut nodes = caches.nodes.subscribe();
    let mut leases = caches.leases.subscribe();
    let mut pods = caches.pods.subscribe();
    caches.nodes.synced().await;
    caches.leases.synced().await;
    caches.pods.synced().await;
    let since = Timestamp::now();
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for node in caches.nodes.store().state() {
                queue.add(Key::of(&*node));
            }
        }
    };
    let dispatch = {
        let queue = queue.clone();
        let caches = caches.clone();
        async move {
            // The first tick is immediate: every node is looked at on start.
            let mut resync = tokio::time::interval(NODE_MONITOR_PERIOD);
            resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = resync.tick() => enqueue_all(),
                    change = nodes.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|n| queue.add(Key::of(&**n))),
                        None => break,
                    },
                    change = leases.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().filter_map(|l| lease_node(l)).for_each(|k| queue.add(k)),
                        None => break,
                    },
                    change = pods.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => {
                            let nodes = caches.nodes.store();
                            c.objects()
                                .filter_map(|p| pod_node(p))
                                .filter(|k| nodes.get(&k.object_ref()).is_some_and(|n| pods_matter(&n)))
                                .for_each(|k| queue.add(k));
                        }
                        None => break,
                    },
                }
            }
        }
    };
    let expected = Expectations::new(EXPECTATION_TIMEOUT);
    let work = work(queue, "syncing node lifecycle", |key| {
        let (client, caches, expected) = (&client, &caches, &expected);
        async move {
            if !expected.caught_up(&key, |exp| seen(caches, &key, exp)) {
                return Ok(Some(Duration::from_millis(200)));
            }
            let mut exp = Expected::default();
            let result = reconcile(client, caches, &key, since, &mut exp).await;
            let nothing = exp.node.is_none() && exp.pods.is_empty();
            expected.record(key, (!nothing).then_some(exp));
            result
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

/// The node a Lease of [`LEASE_NAMESPACE`] belongs to (same name).
fn lease_node(lease: &Lease) -> Option<Key> {
    if lease.metadata.namespace.as_deref() != Some(LEASE_NAMESPACE) {
        return None;
    }
    let name = lease.metadata.name.clone().filter(|n| !n.is_empty())?;
    Some(Key {
        namespace: String::new(),
        name,
    })
}

/// Whether a node's pods can be affected by its pass: it is not Ready, or it has a `NoExecute`
/// taint. A healthy node's pass never touches its pods, so neither pod changes nor its periodic
/// pass look at them (at 30k pods a scan per pod event was the control plane's bottleneck).
fn pods_matter(node: &Node) -> bool {
    let ready = find_condition(conditions_of(node), "Ready").is_some_and(|c| c.status == "True");
    let no_execute = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.effect == NO_EXECUTE));
    !ready || no_execute
}

/// The node a pod is bound to.
fn pod_node(pod: &Pod) -> Option<Key> {
    let name = pod
        .spec
        .as_ref()?
        .node_name
        .clone()
        .filter(|n| !n.is_empty())?;
    Some(Key {
        namespace: String::new(),
        name,
    })
}

/// Whether the caches show everything last written for node `key`.
fn seen(caches: &Caches, key: &Key, exp: &Expected) -> bool {
    let node_seen = exp.node.is_none_or(|rv| {
        caches
            .nodes
            .store()
            .get(&key.object_ref())
            .is_none_or(|n| version(&n.metadata) >= rv)
    });
    let pods = caches.pods.store();
    let pods_seen = exp
        .pods
        .iter()
        .all(|(pod, rv)| match (rv, pods.get(&pod.object_ref())) {
            (_, None) => true,
            (Some(rv), Some(p)) => version(&p.metadata) >= *rv,
            (None, Some(p)) => p.metadata.deletion_timestamp.is_some(),
        });
    node_seen && pods_seen
}

fn taint_list(taints: &[Taint]) -> String {
    taints
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect::<Vec<_>>()
        .join(",")
}

/// One pass over one node: plans it and writes the plan, recording in `exp` what it wrote;
/// returns when to look again.
async fn reconcile(
    client: &Client,
    caches: &Caches,
    key: &Key,
    since: Timestamp,
    exp: &mut Expected,
) -> Result<Option<Duration>, kube::Error> {
    let Some(node) = caches.nodes.store().get(&key.object_ref()) else {
        return Ok(None);
    };
    let lease = caches.leases.store().get(
        &Key {
            namespace: LEASE_NAMESPACE.into(),
            name: key.name.clone(),
        }
        .object_ref(),
    );
    // A linear scan of every pod, only for a node whose pods may need marking or evicting.
    let all = if pods_matter(&node) {
        caches.pods.store().state()
    } else {
        Vec::new()
    };
    let pods: Vec<&Pod> = all
        .iter()
        .map(|p| &**p)
        .filter(|p| bound_to(p, &key.name))
        .collect();
    let now = Timestamp::now();
    let plan = plan_node(&node, lease.as_deref(), &pods, now, since);
    if plan.is_empty() {
        return Ok(plan.recheck_after);
    }
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let mut resource_version = node.metadata.resource_version.clone();
    // A conflict (the agent posted meanwhile, or the cache is behind) is an error: retried
    // after a back-off, from a cache that has caught up.
    if let Some(conditions) = &plan.conditions {
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "status": {"conditions": conditions},
        });
        match nodes
            .patch_status(&key.name, &pp, &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                exp.node = Some(version(&written.metadata));
                resource_version = written.metadata.resource_version;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
        tracing::warn!(node = %key.name, "node stopped posting status; its conditions are Unknown");
    }
    if let Some(taints) = &plan.taints {
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "spec": {"taints": taints},
        });
        match nodes.patch(&key.name, &pp, &Patch::Merge(&patch)).await {
            Ok(written) => exp.node = Some(version(&written.metadata)),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
        tracing::info!(node = %key.name, taints = taint_list(taints), "node taints updated");
    }
    let by_key: HashMap<Key, &Pod> = pods.iter().map(|p| (Key::of(*p), *p)).collect();
    let mut failure: Option<kube::Error> = None;
    for pod_key in &plan.mark_not_ready {
        let Some(pod) = by_key.get(pod_key) else {
            continue;
        };
        let Some(conditions) = not_ready_conditions(pod, now) else {
            continue;
        };
        let api: Api<ApiPod> = Api::namespaced(client.clone(), &pod_key.namespace);
        let patch = json!({
            "metadata": {"resourceVersion": pod.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        match api
            .patch_status(&pod_key.name, &pp, &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                exp.pods
                    .insert(pod_key.clone(), Some(version(&written.metadata)));
                tracing::info!(node = %key.name, pod = %pod_key, "marked pod not ready: its node is not ready");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    for pod_key in &plan.evict {
        let api: Api<ApiPod> = Api::namespaced(client.clone(), &pod_key.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: by_key.get(pod_key).and_then(|p| p.metadata.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod_key.name, &params).await {
            Ok(_) => {
                exp.pods.insert(pod_key.clone(), None);
                tracing::info!(node = %key.name, pod = %pod_key, "evicted pod: it does not tolerate the node's NoExecute taints");
            }
            // Gone, or replaced by a pod of the same name (whose own change queues the node).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(plan.recheck_after),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The moment every plan is made at.
    const NOW: i64 = 1000;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn ts(second: i64) -> String {
        at(second).to_string()
    }

    fn offset(t: &Timestamp) -> i64 {
        t.as_second() - at(0).as_second()
    }

    fn cond(kind: &str, status: &str, beat: i64, since: i64) -> Value {
        json!({"type": kind, "status": status, "reason": "Agent", "message": "from the agent",
               "lastHeartbeatTime": ts(beat), "lastTransitionTime": ts(since)})
    }

    fn node_with(conditions: Value, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "creationTimestamp": ts(0), "resourceVersion": "7"},
            "spec": {"taints": taints},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    /// A node whose agent posted Ready=`ready` (and no pressure) at `beat`, ready or not
    /// since 500.
    fn node(ready: &str, beat: i64, taints: Value) -> Node {
        node_with(
            json!([
                cond("MemoryPressure", "False", beat, 500),
                cond("DiskPressure", "False", beat, 500),
                cond("PIDPressure", "False", beat, 500),
                cond("Ready", ready, beat, 500),
            ]),
            taints,
        )
    }

    /// A node the controller already found silent at 640 (agent last heard at 600).
    fn unknown_node(taints: Value) -> Node {
        node_with(
            json!([
                cond("MemoryPressure", "Unknown", 600, 640),
                cond("DiskPressure", "Unknown", 600, 640),
                cond("PIDPressure", "Unknown", 600, 640),
                cond("Ready", "Unknown", 600, 640),
            ]),
            taints,
        )
    }

    fn taint(key: &str, effect: &str, added: Option<i64>) -> Value {
        let mut t = json!({"key": key, "effect": effect});
        if let Some(s) = added {
            t["timeAdded"] = json!(ts(s));
        }
        t
    }

    fn lease(renewed: i64) -> Option<Lease> {
        Some(
            serde_json::from_value(json!({
                "metadata": {"name": "n1", "namespace": LEASE_NAMESPACE},
                "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": ts(renewed)},
            }))
            .unwrap(),
        )
    }

    /// A running pod on n1, ready since 100.
    fn pod(name: &str, extra: Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "3"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "agnhost"}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ts(100)}]},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn tolerating(name: &str, tolerations: Value) -> Pod {
        pod(name, json!({"spec": {"tolerations": tolerations}}))
    }

    fn short(key: &str) -> &str {
        key.trim_start_matches("node.kubernetes.io/")
    }

    fn names(keys: &[Key]) -> String {
        keys.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line per plan: what changes, with times as seconds after `at(0)`.
    fn summary(plan: &NodePlan) -> String {
        let mut out = Vec::new();
        if let Some(cs) = &plan.conditions {
            let cs: Vec<String> = cs
                .iter()
                .map(|c| {
                    format!(
                        "{}={}/{}@{}",
                        c.type_,
                        c.status,
                        c.reason.as_deref().unwrap_or(""),
                        c.last_transition_time.as_ref().map_or(-1, |t| offset(&t.0))
                    )
                })
                .collect();
            out.push(format!("conditions: {}", cs.join(" ")));
        }
        if let Some(taints) = &plan.taints {
            let taints: Vec<String> = taints
                .iter()
                .map(|t| match &t.time_added {
                    Some(added) => format!("{}:{}@{}", short(&t.key), t.effect, offset(&added.0)),
                    None => format!("{}:{}", short(&t.key), t.effect),
                })
                .collect();
            out.push(format!("taints: {}", taints.join(" ")));
        }
        if !plan.evict.is_empty() {
            out.push(format!("evict: {}", names(&plan.evict)));
        }
        if !plan.mark_not_ready.is_empty() {
            out.push(format!("not ready: {}", names(&plan.mark_not_ready)));
        }
        if let Some(d) = plan.recheck_after {
            out.push(format!("recheck: {}s", d.as_secs()));
        }
        if out.is_empty() {
            "nothing".into()
        } else {
            out.join("; ")
        }
    }

    struct Case {
        name: &'static str,
        node: Node,
        lease: Option<Lease>,
        pods: Vec<Pod>,
        /// When the controller began watching.
        since: i64,
        want: &'static str,
    }

    fn check(cases: Vec<Case>) {
        for case in cases {
            let pods: Vec<&Pod> = case.pods.iter().collect();
            let plan = plan_node(
                &case.node,
                case.lease.as_ref(),
                &pods,
                at(NOW),
                at(case.since),
            );
            assert_eq!(summary(&plan), case.want, "{}", case.name);
        }
    }

    #[test]
    fn silence_turns_conditions_unknown_and_conditions_drive_taints() {
        check(vec![
            Case {
                name: "fresh lease: nothing to do",
                node: node("True", 950, json!([])),
                lease: lease(995),
                pods: vec![pod("a", json!({}))],
                since: 0,
                want: "nothing",
            },
            Case {
                name: "without a lease the Ready heartbeat counts",
                node: node("True", 990, json!([])),
                lease: None,
                pods: vec![],
                since: 0,
                want: "nothing",
            },
            Case {
                name: "stale lease: Unknown, unreachable taints, pods not ready, default toleration",
                node: node("True", 900, json!([taint("dedicated", "NoSchedule", None)])),
                lease: lease(950),
                pods: vec![pod("a", json!({}))],
                since: 0,
                want: "conditions: MemoryPressure=Unknown/NodeStatusUnknown@1000 \
                       DiskPressure=Unknown/NodeStatusUnknown@1000 \
                       PIDPressure=Unknown/NodeStatusUnknown@1000 \
                       Ready=Unknown/NodeStatusUnknown@1000; \
                       taints: dedicated:NoSchedule unreachable:NoSchedule unreachable:NoExecute@1000; \
                       not ready: default/a; recheck: 300s",
            },
            Case {
                name: "silence is not counted from before the controller started",
                node: node("True", 900, json!([])),
                lease: lease(950),
                pods: vec![],
                since: 980,
                want: "nothing",
            },
            Case {
                name: "a node that never posted status gets NodeStatusNeverUpdated",
                node: serde_json::from_value(
                    json!({"metadata": {"name": "n1", "creationTimestamp": ts(0)}}),
                )
                .unwrap(),
                lease: None,
                pods: vec![],
                since: 0,
                want: "conditions: Ready=Unknown/NodeStatusNeverUpdated@1000 \
                       MemoryPressure=Unknown/NodeStatusNeverUpdated@1000 \
                       DiskPressure=Unknown/NodeStatusNeverUpdated@1000 \
                       PIDPressure=Unknown/NodeStatusNeverUpdated@1000; \
                       taints: unreachable:NoSchedule unreachable:NoExecute@1000",
            },
            Case {
                name: "only conditions not yet Unknown change",
                node: node_with(
                    json!([
                        cond("MemoryPressure", "False", 900, 500),
                        cond("DiskPressure", "False", 900, 500),
                        cond("PIDPressure", "False", 900, 500),
                        cond("Ready", "Unknown", 900, 500),
                    ]),
                    json!([
                        taint(TAINT_UNREACHABLE, "NoSchedule", None),
                        taint(TAINT_UNREACHABLE, "NoExecute", Some(600)),
                    ]),
                ),
                lease: lease(900),
                pods: vec![],
                since: 0,
                want: "conditions: MemoryPressure=Unknown/NodeStatusUnknown@1000 \
                       DiskPressure=Unknown/NodeStatusUnknown@1000 \
                       PIDPressure=Unknown/NodeStatusUnknown@1000 Ready=Unknown/Agent@500",
            },
            Case {
                name: "already Unknown and tainted: nothing to write",
                node: unknown_node(json!([
                    taint(TAINT_UNREACHABLE, "NoSchedule", None),
                    taint(TAINT_UNREACHABLE, "NoExecute", Some(650)),
                ])),
                lease: lease(600),
                pods: vec![],
                since: 0,
                want: "nothing",
            },
            Case {
                name: "Ready=False from the agent: not-ready taints",
                node: node("False", 995, json!([])),
                lease: lease(995),
                pods: vec![pod("a", json!({}))],
                since: 0,
                want: "taints: not-ready:NoSchedule not-ready:NoExecute@1000; \
                       not ready: default/a; recheck: 300s",
            },
            Case {
                name: "Unknown to False swaps unreachable for not-ready",
                node: node(
                    "False",
                    995,
                    json!([
                        taint(TAINT_UNREACHABLE, "NoSchedule", None),
                        taint(TAINT_UNREACHABLE, "NoExecute", Some(600)),
                    ]),
                ),
                lease: lease(995),
                pods: vec![],
                since: 0,
                want: "taints: not-ready:NoSchedule not-ready:NoExecute@1000",
            },
            Case {
                name: "recovery removes only the condition taints",
                node: node(
                    "True",
                    995,
                    json!([
                        taint("dedicated", "NoSchedule", None),
                        taint(TAINT_UNREACHABLE, "NoSchedule", None),
                        taint(TAINT_UNREACHABLE, "NoExecute", Some(600)),
                        taint("node.kubernetes.io/unschedulable", "NoSchedule", None),
                        taint(TAINT_NOT_READY, "NoExecute", Some(700)),
                        taint(TAINT_MEMORY_PRESSURE, "NoSchedule", None),
                    ]),
                ),
                lease: lease(995),
                pods: vec![pod("a", json!({}))],
                since: 0,
                want: "taints: dedicated:NoSchedule unschedulable:NoSchedule",
            },
            Case {
                name: "pressure conditions taint NoSchedule only",
                node: node_with(
                    json!([
                        cond("MemoryPressure", "True", 995, 500),
                        cond("DiskPressure", "False", 995, 500),
                        cond("PIDPressure", "False", 995, 500),
                        cond("Ready", "True", 995, 500),
                    ]),
                    json!([]),
                ),
                lease: None,
                pods: vec![pod("a", json!({}))],
                since: 0,
                want: "taints: memory-pressure:NoSchedule",
            },
        ]);
    }

    #[test]
    fn pods_leave_when_their_tolerations_run_out() {
        let dedicated = json!([{"key": "dedicated", "value": "db", "effect": "NoExecute", "timeAdded": ts(900)}]);
        let seconds = |s: i64| json!([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": s}]);
        let daemon = json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "ds-uid", "controller": true}
        ]}});
        let mirror = json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "hash"}}});
        let unreachable = json!([
            taint(TAINT_UNREACHABLE, "NoSchedule", None),
            taint(TAINT_UNREACHABLE, "NoExecute", Some(800)),
        ]);
        check(vec![
            Case {
                name: "a user's NoExecute taint on a ready node",
                node: node("True", 995, dedicated.clone()),
                lease: lease(995),
                pods: vec![
                    tolerating(
                        "no-match",
                        json!([{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoExecute"}]),
                    ),
                    pod("plain", json!({})),
                    tolerating(
                        "forever",
                        json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoExecute"}]),
                    ),
                    tolerating(
                        "any-effect",
                        json!([{"key": "dedicated", "operator": "Exists"}]),
                    ),
                    tolerating("everything", json!([{"operator": "Exists"}])),
                    tolerating("soon", seconds(200)),
                    tolerating("later", seconds(250)),
                    tolerating("expired", seconds(60)),
                    pod(
                        "terminating",
                        json!({"metadata": {"deletionTimestamp": ts(990)}}),
                    ),
                    pod("daemon", daemon.clone()),
                    pod("elsewhere", json!({"spec": {"nodeName": "n2"}})),
                ],
                since: 0,
                want: "evict: default/no-match, default/plain, default/expired, default/daemon; \
                       recheck: 100s",
            },
            Case {
                name: "a timed eviction waits one grace period after the controller starts",
                node: node("True", 995, dedicated),
                lease: lease(995),
                pods: vec![tolerating("expired", seconds(60)), pod("plain", json!({}))],
                since: 990,
                want: "evict: default/plain; recheck: 30s",
            },
            Case {
                name: "a NoExecute taint without timeAdded counts as added long ago",
                node: node(
                    "True",
                    995,
                    json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]),
                ),
                lease: lease(995),
                pods: vec![tolerating("patient", seconds(3600))],
                since: 0,
                want: "evict: default/patient",
            },
            Case {
                name: "an unreachable node: default 300 s, own tolerations, exempt pods",
                node: unknown_node(unreachable),
                lease: lease(600),
                pods: vec![
                    pod("plain", json!({})),
                    tolerating(
                        "short",
                        json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]),
                    ),
                    tolerating(
                        "pinned",
                        json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]),
                    ),
                    pod("daemon", daemon),
                    pod("mirror", mirror),
                    pod(
                        "recent",
                        json!({"status": {"conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": ts(900)}
                        ]}}),
                    ),
                    pod(
                        "unready",
                        json!({"status": {"conditions": [
                            {"type": "Ready", "status": "False", "lastTransitionTime": ts(100)}
                        ]}}),
                    ),
                ],
                since: 0,
                want: "evict: default/short; \
                       not ready: default/plain, default/short, default/pinned, default/daemon, default/mirror; \
                       recheck: 100s",
            },
        ]);
    }

    #[test]
    fn toleration_matching_follows_kubernetes() {
        let kv_exec = json!({"key": "k", "value": "v", "effect": "NoExecute"});
        let cases = [
            (
                json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"}),
                kv_exec.clone(),
                true,
            ),
            (
                json!({"key": "k", "operator": "Equal", "value": "w", "effect": "NoExecute"}),
                kv_exec.clone(),
                false,
            ),
            // The operator defaults to Equal; an empty effect matches every effect.
            (
                json!({"key": "k", "value": "v"}),
                json!({"key": "k", "value": "v", "effect": "NoSchedule"}),
                true,
            ),
            (json!({"key": "k", "value": "v"}), kv_exec.clone(), true),
            (
                json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}),
                kv_exec.clone(),
                true,
            ),
            (
                json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"}),
                kv_exec.clone(),
                false,
            ),
            (
                json!({"key": "other", "operator": "Exists"}),
                kv_exec.clone(),
                false,
            ),
            // An empty key with Exists matches every taint (of its effect, if any).
            (json!({"operator": "Exists"}), kv_exec.clone(), true),
            (
                json!({"operator": "Exists", "effect": "NoSchedule"}),
                kv_exec.clone(),
                false,
            ),
            (json!({"value": "v"}), kv_exec.clone(), false),
            (
                json!({"key": "k", "operator": "Gt", "value": "1"}),
                kv_exec.clone(),
                false,
            ),
            (
                json!({"key": "k"}),
                json!({"key": "k", "effect": "NoExecute"}),
                true,
            ),
            (json!({"key": "k"}), kv_exec, false),
        ];
        for (i, (toleration, taint, want)) in cases.iter().enumerate() {
            let toleration: Toleration = serde_json::from_value(toleration.clone()).unwrap();
            let taint: Taint = serde_json::from_value(taint.clone()).unwrap();
            assert_eq!(
                tolerates(&toleration, &taint),
                *want,
                "case {i}: {toleration:?} vs {taint:?}"
            );
        }
    }

    #[test]
    fn default_tolerations_fill_only_what_is_missing() {
        let cases = [
            (Value::Null, "not-ready:300 unreachable:300"),
            (json!([{"operator": "Exists"}]), ":-"),
            (
                json!([{"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute"}]),
                "not-ready:- unreachable:300",
            ),
            (
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}]),
                "unreachable:- not-ready:300 unreachable:300",
            ),
            (
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 5}]),
                "unreachable:5 not-ready:300",
            ),
        ];
        for (tolerations, want) in cases {
            let got: Vec<String> = effective_tolerations(&tolerating("p", tolerations))
                .iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        short(t.key.as_deref().unwrap_or("")),
                        t.toleration_seconds
                            .map_or_else(|| "-".to_string(), |s| s.to_string())
                    )
                })
                .collect();
            assert_eq!(got.join(" "), want);
        }
    }

    #[test]
    fn not_ready_conditions_flip_only_ready() {
        let p = pod(
            "a",
            json!({"status": {"conditions": [
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": ts(100)},
                {"type": "Ready", "status": "True", "reason": "Running", "lastTransitionTime": ts(100)},
            ]}}),
        );
        let got = not_ready_conditions(&p, at(NOW)).unwrap();
        assert_eq!(
            got[0],
            p.status.as_ref().unwrap().conditions.as_ref().unwrap()[0]
        );
        assert_eq!(got[1].status, "False");
        assert_eq!(got[1].reason.as_deref(), Some("Running"));
        assert_eq!(got[1].last_transition_time, Some(Time(at(NOW))));
        let unready = pod(
            "b",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(not_ready_conditions(&unready, at(NOW)), None);
        let bare = pod("c", json!({"status": {"conditions": null}}));
        assert_eq!(not_ready_conditions(&bare, at(NOW)), None);
    }
}
