//! Pure cores of the ReplicaSet and Deployment controllers: given an object and what it controls,
//! say what to create, scale and delete and which status to write. Nothing here does I/O; the
//! loops around these functions read caches and talk to the apiserver.
//!
//! [`plan_replicaset`] is kube-controller-manager's `syncReplicaSet`: it keeps `spec.replicas`
//! active pods, choosing which to delete by the `ActivePods` ranking, and counts ready, available
//! and terminating pods. [`plan_deployment`] is the Deployment controller's `syncDeployment`: it
//! finds the ReplicaSet whose template is the Deployment's (ignoring the `pod-template-hash`
//! label) or makes one named after [`pod_template_hash`], rolls pods over with the RollingUpdate
//! or Recreate strategy judged from the ReplicaSets' statuses, scales proportionally when
//! `spec.replicas` changes mid-rollout or while paused, keeps `revisionHistoryLimit` old
//! ReplicaSets, and writes the `Available` and `Progressing` conditions `kubectl rollout status`
//! reads. `kubectl rollout undo` (the client copies an old template back) makes that old
//! ReplicaSet the new one with the next revision; `kubectl rollout restart` is a template change.
//!
//! Like Kubernetes, one pass takes one step: the loop applies a plan, and the watch events its
//! writes cause bring the next pass. The loop must not plan again from a cache that has not yet
//! seen its own creations and deletions (kube-controller-manager's "expectations"), or it would
//! create or delete twice.
//!
//! Counts that Kubernetes declares `int32` with `omitempty` are written as `None` when zero, so
//! statuses look on the wire as they do from kube-controller-manager.

use std::{cmp::Ordering, collections::BTreeMap, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        apps::v1::{
            Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
            ReplicaSetStatus,
        },
        core::v1::{Pod as ApiPod, PodCondition, PodTemplateSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference, Time,
        },
        util::intstr::IntOrString,
    },
};
use serde_json::Value;

use crate::cached::Pod;

/// Label every pod and ReplicaSet of a Deployment carries: the hash of its pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotation on a Deployment and its ReplicaSets: the rollout revision, a decimal number.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Annotation on a ReplicaSet that became new again (rollback): its earlier revisions, comma-separated.
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// Annotation on a ReplicaSet: the Deployment's `spec.replicas` when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// Annotation on a ReplicaSet: the Deployment's `spec.replicas` plus max surge when it was last scaled.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Pod annotation ranking pods for deletion on scale-down: lower costs go first.
pub const POD_DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Most pods one ReplicaSet pass creates or deletes (kube-controller-manager's `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// Deployment annotations not copied onto its ReplicaSets.
const SKIPPED_ANNOTATIONS: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];
/// Longest `revision-history` annotation kept, in characters.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;
/// Default `progressDeadlineSeconds`.
const DEFAULT_PROGRESS_DEADLINE: i32 = 600;
/// Default `revisionHistoryLimit`.
const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
/// Hash collisions tried before giving up on a free ReplicaSet name in one pass.
const MAX_COLLISIONS: usize = 64;
/// Kubernetes' `rand.SafeEncodeString` alphabet: no vowels, no look-alikes.
const SAFE_ALPHABET: &[u8; 27] = b"bcdfghjklmnpqrstvwxz2456789";

// Deployment condition types and reasons, as in kubernetes pkg/controller/deployment/util.
const AVAILABLE: &str = "Available";
const PROGRESSING: &str = "Progressing";
const REPLICA_FAILURE: &str = "ReplicaFailure";
const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const RS_UPDATED: &str = "ReplicaSetUpdated";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

// ---------------------------------------------------------------------------------------------
// Pods

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// Is the pod active: neither terminal (Succeeded, Failed) nor being deleted?
pub fn is_active(pod: &Pod) -> bool {
    !is_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// Is the pod terminating: being deleted but not yet terminal?
pub fn is_terminating(pod: &Pod) -> bool {
    !is_terminal(pod) && pod.metadata.deletion_timestamp.is_some()
}

fn ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Is the pod ready: its `Ready` condition is `True`?
pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// When a ready pod became ready, if the kubelet recorded it.
fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let condition = ready_condition(pod).filter(|c| c.status == "True")?;
    condition.last_transition_time.as_ref().map(|t| t.0)
}

/// Is the pod available at `now`: ready for more than `min_ready_seconds` (any ready pod when
/// that is zero)?
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !is_pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod).is_some_and(|since| {
        now.duration_since(since) > SignedDuration::from_secs(i64::from(min_ready_seconds))
    })
}

/// How long until a ready but not yet available pod becomes available.
pub(crate) fn until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Option<Duration> {
    if min_ready_seconds <= 0 || !is_pod_ready(pod) || is_pod_available(pod, min_ready_seconds, now)
    {
        return None;
    }
    let since = ready_since(pod)?;
    let left = SignedDuration::from_secs(i64::from(min_ready_seconds))
        .checked_sub(now.duration_since(since))?;
    // Availability needs strictly more than minReadySeconds: wake just past the mark.
    Duration::try_from(left)
        .ok()
        .map(|d| d.saturating_add(Duration::from_millis(1)))
}

fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn created(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.creation_timestamp.as_ref().map(|t| t.0)
}

/// Kubernetes' `podPhaseToOrdinal`: Pending (and anything unknown) < Unknown < Running.
fn phase_rank(pod: &Pod) -> u8 {
    match phase(pod) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    annotation(&pod.metadata, POD_DELETION_COST_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Highest restart count among regular containers, then among sidecars (restartable init
/// containers).
fn max_restarts(pod: &Pod) -> (i32, i32) {
    let Some(status) = &pod.status else {
        return (0, 0);
    };
    let regular = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let sidecars: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| sidecars.contains(&c.name.as_str()))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    (regular, sidecar)
}

/// A pod with what the deletion ranking looks at.
struct Candidate<'a> {
    pod: &'a Pod,
    unassigned: bool,
    phase: u8,
    ready: bool,
    cost: i32,
    colocated: usize,
    ready_since: Option<Timestamp>,
    restarts: (i32, i32),
    created: Option<Timestamp>,
}

/// Kubernetes' `afterOrZero` as an ordering: a missing time first, then later times first.
fn zero_or_later_first(a: Option<Timestamp>, b: Option<Timestamp>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

/// Kubernetes' `ActivePodsWithRanks` order (without logarithmic time buckets): the pod to delete
/// first sorts first.
fn deletion_order(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    // 1. Unassigned before assigned.
    b.unassigned
        .cmp(&a.unassigned)
        // 2. Pending before Unknown before Running.
        .then(a.phase.cmp(&b.phase))
        // 3. Not ready before ready.
        .then(a.ready.cmp(&b.ready))
        // 4. Lower pod-deletion-cost first.
        .then(a.cost.cmp(&b.cost))
        // 5. Doubled up (more active pods of the set on its node) first.
        .then(b.colocated.cmp(&a.colocated))
        // 6. Ready for a shorter time first.
        .then_with(|| {
            if a.ready && b.ready {
                zero_or_later_first(a.ready_since, b.ready_since)
            } else {
                Ordering::Equal
            }
        })
        // 7. More restarts first.
        .then(b.restarts.cmp(&a.restarts))
        // 8. Newer first.
        .then_with(|| zero_or_later_first(a.created, b.created))
        .then_with(|| a.pod.metadata.name.cmp(&b.pod.metadata.name))
}

/// Active pods in the order a scale-down deletes them.
fn rank_for_deletion<'a>(active: &[&'a Pod]) -> Vec<&'a Pod> {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for pod in active {
        *per_node.entry(node_name(pod)).or_default() += 1;
    }
    let mut candidates: Vec<Candidate<'a>> = active
        .iter()
        .map(|&pod| Candidate {
            pod,
            unassigned: node_name(pod).is_empty(),
            phase: phase_rank(pod),
            ready: is_pod_ready(pod),
            cost: deletion_cost(pod),
            colocated: per_node.get(node_name(pod)).copied().unwrap_or(0),
            ready_since: ready_since(pod),
            restarts: max_restarts(pod),
            created: created(&pod.metadata),
        })
        .collect();
    candidates.sort_by(deletion_order);
    candidates.into_iter().map(|c| c.pod).collect()
}

// ---------------------------------------------------------------------------------------------
// Selectors and ownership

/// Does `selector` match `labels`? `matchLabels` and every `matchExpressions` requirement (In,
/// NotIn, Exists, DoesNotExist) must hold; an empty selector matches everything, and a requirement
/// Kubernetes would reject (unknown operator, In or NotIn without values) matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let value = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => !values.is_empty() && value.is_some_and(|v| values.contains(v)),
        "NotIn" => !values.is_empty() && value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Is the selector empty (it would select everything)?
pub fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// The controller owner reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Is the object controlled by the owner with `uid`?
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// Kubernetes' `DeploymentComplete`: with `status`, every replica of `d` runs the current
/// template and is available (the loop keeps looking at a Deployment until this holds).
pub fn rollout_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let replicas = d.spec.replicas.unwrap_or(1).max(0);
    status.updated_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas
        && status.available_replicas.unwrap_or(0) == replicas
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Should an owner with `selector` adopt the object (a pod, or a ReplicaSet for a Deployment)?
/// Yes when it has no controller, is not being deleted and its labels match a non-empty selector.
/// The caller adopts only while the owner itself is not being deleted, by adding
/// [`owner_reference`] to the object's `ownerReferences`.
pub fn should_adopt(selector: &LabelSelector, meta: &ObjectMeta) -> bool {
    controller_of(meta).is_none()
        && meta.deletion_timestamp.is_none()
        && !selector_is_empty(selector)
        && selector_matches(selector, meta.labels.as_ref().unwrap_or(&NO_LABELS))
}

/// Should an owner with `selector` release an object it controls (remove its owner reference)?
/// Yes when the object's labels no longer match.
pub fn should_release(selector: &LabelSelector, meta: &ObjectMeta) -> bool {
    !selector_matches(selector, meta.labels.as_ref().unwrap_or(&NO_LABELS))
}

/// A controller owner reference (`controller` and `blockOwnerDeletion` true) to `owner`.
pub fn owner_reference(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn annotation<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn int_annotation(meta: &ObjectMeta, key: &str) -> Option<i32> {
    annotation(meta, key)?.parse().ok()
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Zero as absent, like a Go `int32` field with `omitempty`.
fn non_zero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

// ---------------------------------------------------------------------------------------------
// ReplicaSet

/// What one ReplicaSet pass does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaSetPlan {
    /// How many pods to create from the template ([`new_pod`]), at most [`BURST_REPLICAS`].
    pub create: usize,
    /// Names of pods to delete, in deletion order (Kubernetes' `ActivePods` ranking: unscheduled
    /// before scheduled, pending before unknown before running, not ready before ready, lower
    /// `pod-deletion-cost` first, more pods of the set on the same node first, more recently
    /// ready first, more restarts first, newer first), at most [`BURST_REPLICAS`].
    pub delete: Vec<String>,
    /// The status to write: `replicas`, `fullyLabeledReplicas`, `readyReplicas`,
    /// `availableReplicas` and `terminatingReplicas` counted from the pods, `observedGeneration`
    /// from the ReplicaSet; existing conditions (ReplicaFailure is the caller's) are kept.
    pub status: ReplicaSetStatus,
    /// When to look again even if nothing changes: a ready pod becomes available once it has
    /// been ready for `minReadySeconds`, and no event says so.
    pub requeue_after: Option<Duration>,
}

/// Plans one pass of the ReplicaSet controller. `owned`: every pod the ReplicaSet controls
/// (controller owner reference with its uid), terminal and terminating ones included. A
/// ReplicaSet being deleted only gets its status.
pub fn plan_replicaset(rs: &ReplicaSet, owned: &[&Pod], now: Timestamp) -> ReplicaSetPlan {
    let active: Vec<&Pod> = owned.iter().copied().filter(|p| is_active(p)).collect();
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let mut plan = ReplicaSetPlan {
        status: replicaset_status(rs, &active, owned, now),
        requeue_after: active
            .iter()
            .filter_map(|p| until_available(p, min_ready, now))
            .min(),
        ..ReplicaSetPlan::default()
    };
    if rs.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let desired = usize::try_from(rs.spec.replicas.unwrap_or(1)).unwrap_or(0);
    if active.len() < desired {
        plan.create = (desired - active.len()).min(BURST_REPLICAS);
    } else if active.len() > desired {
        let excess = (active.len() - desired).min(BURST_REPLICAS);
        plan.delete = rank_for_deletion(&active)
            .into_iter()
            .take(excess)
            .filter_map(|p| p.metadata.name.clone())
            .collect();
    }
    plan
}

fn replicaset_status(
    rs: &ReplicaSet,
    active: &[&Pod],
    owned: &[&Pod],
    now: Timestamp,
) -> ReplicaSetStatus {
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let template_labels = rs
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            template_labels
                .iter()
                .flat_map(|m| m.iter())
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| is_pod_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| is_pod_available(p, min_ready, now))
        .count();
    let terminating = owned.iter().filter(|p| is_terminating(p)).count();
    let mut status = rs.status.clone().unwrap_or_default();
    status.replicas = count(active.len());
    status.fully_labeled_replicas = non_zero(count(fully_labeled));
    status.ready_replicas = non_zero(count(ready));
    status.available_replicas = non_zero(count(available));
    status.terminating_replicas = Some(count(terminating));
    status.observed_generation = rs.metadata.generation.filter(|g| *g != 0);
    status
}

/// A new pod for `rs` (Kubernetes' `GetPodFromTemplate`): `generateName` `<rs-name>-`, the
/// ReplicaSet's namespace, labels, annotations and finalizers from the template, a controller
/// owner reference to the ReplicaSet, and the template's spec.
pub fn new_pod(rs: &ReplicaSet) -> ApiPod {
    new_pod_owned_by(rs, "apps/v1", "ReplicaSet")
}

/// A new pod from `rs`'s template, controlled by the `api_version`/`kind` object whose
/// metadata `rs` carries (a ReplicationController seen as a ReplicaSet).
pub fn new_pod_owned_by(rs: &ReplicaSet, api_version: &str, kind: &str) -> ApiPod {
    let template = rs.spec.template.clone().unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    ApiPod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: template_meta.labels,
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![owner_reference(api_version, kind, &rs.metadata)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Pod template hash

/// The template without the `pod-template-hash` label, empty label and annotation maps as
/// absent, and empty metadata as absent.
fn normalized(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH);
        }
        if meta.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            meta.labels = None;
        }
        if meta.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
            meta.annotations = None;
        }
    }
    if t.metadata
        .as_ref()
        .is_some_and(|m| *m == ObjectMeta::default())
    {
        t.metadata = None;
    }
    t
}

/// Are two templates equal but for the `pod-template-hash` label (Kubernetes' `EqualIgnoreHash`)?
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    normalized(a) == normalized(b)
}

/// JSON with object keys sorted and no whitespace, whatever serde_json's map order.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn canonical_template(template: &PodTemplateSpec) -> String {
    let value = serde_json::to_value(normalized(template)).unwrap_or(Value::Null);
    let mut out = String::new();
    write_canonical(&value, &mut out);
    out
}

fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The `pod-template-hash` of a template: FNV-32a over its canonical JSON (keys sorted, the
/// `pod-template-hash` label left out), then over `collision_count` as 8 little-endian bytes when
/// there is one, printed in decimal and each digit mapped into Kubernetes' safe alphabet
/// (`bcdfghjklmnpqrstvwxz2456789`), as `rand.SafeEncodeString` does: at most 10 characters. Not
/// byte-identical with Kubernetes (which hashes Go's printed form), but as stable.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash = fnv1a(0x811c_9dc5, canonical_template(template).as_bytes());
    if let Some(collisions) = collision_count {
        let [a, b, c, d] = collisions.to_le_bytes();
        hash = fnv1a(hash, &[a, b, c, d, 0, 0, 0, 0]);
    }
    hash.to_string()
        .bytes()
        .map(|digit| char::from(SAFE_ALPHABET[usize::from(digit) % SAFE_ALPHABET.len()]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Deployment

/// A change to an existing ReplicaSet of a Deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaSetChange {
    /// The ReplicaSet's name.
    pub name: String,
    /// Its `spec.replicas` from now on (the current value when only annotations change).
    pub replicas: i32,
    /// Annotations to set (added or changed keys only; others stay as they are): the revision
    /// when an old ReplicaSet becomes new again, `revision-history`, desired/max-replicas, and
    /// the Deployment's own annotations copied onto its new ReplicaSet.
    pub annotations: BTreeMap<String, String>,
    /// `Some(n)` when `spec.minReadySeconds` must become `n` (the Deployment's changed).
    pub min_ready_seconds: Option<i32>,
}

/// What one Deployment pass does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeploymentPlan {
    /// A new ReplicaSet to create when none has the current template: name
    /// `<deployment>-<pod-template-hash>`, the template's labels plus `pod-template-hash` on the
    /// ReplicaSet, its selector and its template, a controller owner reference to the Deployment,
    /// replicas chosen by the strategy, the Deployment's annotations, the next revision and the
    /// desired/max-replicas annotations. If the apiserver answers AlreadyExists (a ReplicaSet the
    /// Deployment does not own has that name), write `status.collisionCount + 1` and plan again.
    pub create: Option<ReplicaSet>,
    /// Existing ReplicaSets to change, oldest first. Empty when nothing changes.
    pub scale: Vec<ReplicaSetChange>,
    /// Old ReplicaSets without replicas beyond `revisionHistoryLimit`, oldest revision first, to
    /// delete.
    pub delete: Vec<String>,
    /// The status to write: counts from the ReplicaSets' statuses, `collisionCount`, and the
    /// `Available`, `Progressing` and `ReplicaFailure` conditions. Equal to the current status
    /// when there is nothing to write.
    pub status: DeploymentStatus,
    /// `Some(rev)` when the Deployment's own [`REVISION_ANNOTATION`] must become `rev` (Kubernetes
    /// writes it together with the status; `kubectl describe` shows it).
    pub revision: Option<String>,
    /// When to look again even if no event comes: when the progress deadline would pass.
    pub requeue_after: Option<Duration>,
}

/// The Deployment's spec with Kubernetes' defaults applied.
struct Config {
    replicas: i32,
    recreate: bool,
    paused: bool,
    max_surge: i32,
    max_unavailable: i32,
    /// `None`: no deadline (`progressDeadlineSeconds` at `i32::MAX`).
    progress_deadline: Option<i32>,
    /// `None`: keep every old ReplicaSet (`revisionHistoryLimit` at `i32::MAX`).
    history_limit: Option<i32>,
}

/// `GetScaledValueFromIntOrPercent`; an absent value is 25%, an invalid one 0.
pub(crate) fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    let percent = match value {
        None => 25,
        Some(IntOrString::Int(n)) => return (*n).max(0),
        Some(IntOrString::String(s)) => {
            match s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                Some(p) => p.max(0),
                None => return 0,
            }
        }
    };
    let product = i64::from(percent) * i64::from(total);
    let scaled = if round_up {
        product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0)
    } else {
        product.div_euclid(100)
    };
    i32::try_from(scaled).unwrap_or(i32::MAX)
}

impl Config {
    fn of(d: &Deployment) -> Self {
        let spec = &d.spec;
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let strategy = spec.strategy.as_ref();
        let recreate = strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let (max_surge, max_unavailable) = if recreate {
            (0, 0)
        } else {
            let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
            let surge = scaled_value(rolling.and_then(|r| r.max_surge.as_ref()), replicas, true);
            let unavailable = scaled_value(
                rolling.and_then(|r| r.max_unavailable.as_ref()),
                replicas,
                false,
            );
            // Both zero would deadlock the rollout: allow one unavailable pod.
            let unavailable = if surge == 0 && unavailable == 0 {
                1
            } else {
                unavailable
            };
            (surge, unavailable.min(replicas))
        };
        Config {
            replicas,
            recreate,
            paused: spec.paused.unwrap_or(false),
            max_surge,
            max_unavailable,
            progress_deadline: match spec.progress_deadline_seconds {
                None => Some(DEFAULT_PROGRESS_DEADLINE),
                Some(i32::MAX) => None,
                Some(s) => Some(s),
            },
            history_limit: match spec.revision_history_limit {
                None => Some(DEFAULT_REVISION_HISTORY_LIMIT),
                Some(i32::MAX) => None,
                Some(n) => Some(n.max(0)),
            },
        }
    }
}

fn rs_name(rs: &ReplicaSet) -> &str {
    rs.metadata.name.as_deref().unwrap_or_default()
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn available_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn ready_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn terminating_replicas(rs: &ReplicaSet) -> Option<i32> {
    rs.status.as_ref()?.terminating_replicas
}

fn revision(rs: &ReplicaSet) -> Option<i64> {
    annotation(&rs.metadata, REVISION_ANNOTATION)?.parse().ok()
}

/// Kubernetes' `ReplicaSetsByCreationTimestamp`: older first, then by name.
fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    created(&a.metadata)
        .cmp(&created(&b.metadata))
        .then_with(|| rs_name(a).cmp(rs_name(b)))
}

fn condition_of<'s>(status: &'s DeploymentStatus, type_: &str) -> Option<&'s DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some(type_))
}

/// Kubernetes' `SetDeploymentCondition`: nothing changes when status and reason are the same;
/// the transition time is kept while the status stays.
fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == condition.type_)
    {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != condition.type_);
    conditions.push(condition);
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_.as_deref() != Some(type_));
        if conditions.is_empty() {
            status.conditions = None;
        }
    }
}

/// Kubernetes' `SetNewReplicaSetAnnotations`: copy the Deployment's annotations, raise the
/// revision to `new_revision` (remembering the old one in `revision-history`), and on creation
/// (`replicas` is `Some((desired, max))`) set the replica annotations.
fn set_new_replicaset_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    replicas: Option<(i32, i32)>,
) {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !SKIPPED_ANNOTATIONS.contains(&k.as_str()) && annotations.get(k) != Some(v) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let old = annotations.get(REVISION_ANNOTATION).cloned();
    let old_revision = match old.as_deref() {
        None | Some("") => 0,
        Some(text) => match text.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return,
        },
    };
    if old_revision < new_revision {
        annotations.insert(REVISION_ANNOTATION.to_owned(), new_revision.to_string());
        if let Some(old) = old {
            let history = annotations
                .get(REVISION_HISTORY_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            if history.is_empty() {
                annotations.insert(REVISION_HISTORY_ANNOTATION.to_owned(), old);
            } else {
                // Drop the oldest entries until the new one fits.
                let parts: Vec<&str> = history.split(',').collect();
                let mut total = history.len() + old.len() + 1;
                let mut start = 0;
                while total > MAX_REVISION_HISTORY_CHARS && start < parts.len() {
                    total = total.saturating_sub(parts.get(start).map_or(0, |p| p.len()) + 1);
                    start += 1;
                }
                if total <= MAX_REVISION_HISTORY_CHARS {
                    let mut kept: Vec<&str> = parts.into_iter().skip(start).collect();
                    kept.push(&old);
                    let joined = kept.join(",");
                    annotations.insert(REVISION_HISTORY_ANNOTATION.to_owned(), joined);
                }
            }
        }
    }
    if let Some((desired, max)) = replicas {
        set_replicas_annotations(rs, desired, max);
    }
}

fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(DESIRED_REPLICAS_ANNOTATION.to_owned(), desired.to_string());
    annotations.insert(MAX_REPLICAS_ANNOTATION.to_owned(), max.to_string());
}

/// A ReplicaSet as this pass sees it: a working copy, and the object it started from (`None` for
/// the one to create).
struct Entry<'a> {
    rs: ReplicaSet,
    original: Option<&'a ReplicaSet>,
}

/// One pass of the Deployment controller over working copies of the ReplicaSets.
struct Planner<'a> {
    d: &'a Deployment,
    cfg: Config,
    /// `now` to the second, as condition times are stored.
    now: Timestamp,
    /// Oldest first; a ReplicaSet to create comes last.
    rss: Vec<Entry<'a>>,
    /// Index of the new ReplicaSet (the one with the Deployment's template).
    new: Option<usize>,
    /// The Deployment's status as this pass updates it before computing the next one (the
    /// `d.Status` Kubernetes mutates in place).
    current: DeploymentStatus,
    revision: Option<String>,
    delete: Vec<String>,
}

/// Plans one pass of the Deployment controller. `owned`: the ReplicaSets the Deployment controls
/// (adopt and release with [`should_adopt`] and [`should_release`] first); their statuses, as
/// the ReplicaSet controller writes them, stand for the pods. `now` drives condition times and
/// the progress deadline.
pub fn plan_deployment(d: &Deployment, owned: &[&ReplicaSet], now: Timestamp) -> DeploymentPlan {
    let mut planner = Planner::new(d, owned, now);
    let status = planner.run();
    planner.finish(status)
}

impl<'a> Planner<'a> {
    fn new(d: &'a Deployment, owned: &[&'a ReplicaSet], now: Timestamp) -> Self {
        let mut rss: Vec<Entry<'a>> = owned
            .iter()
            .map(|&rs| Entry {
                rs: rs.clone(),
                original: Some(rs),
            })
            .collect();
        rss.sort_by(|a, b| by_creation(&a.rs, &b.rs));
        // Kubernetes' FindNewReplicaSet: the oldest one with the Deployment's template.
        let new = rss.iter().position(|e| {
            e.rs.spec
                .template
                .as_ref()
                .is_some_and(|t| equal_ignore_hash(t, &d.spec.template))
        });
        Planner {
            d,
            cfg: Config::of(d),
            now: Timestamp::from_second(now.as_second()).unwrap_or(now),
            rss,
            new,
            current: d.status.clone().unwrap_or_default(),
            revision: None,
            delete: Vec::new(),
        }
    }

    fn run(&mut self) -> DeploymentStatus {
        if selector_is_empty(&self.d.spec.selector) {
            // Kubernetes refuses to act on a Deployment selecting everything; it only records
            // that it saw this generation.
            let mut status = self.current.clone();
            let generation = self.d.metadata.generation;
            if status.observed_generation.unwrap_or(0) < generation.unwrap_or(0) {
                status.observed_generation = generation;
            }
            return status;
        }
        self.sync_existing_new();
        if self.d.metadata.deletion_timestamp.is_some() {
            return self.calculate_status();
        }
        self.check_paused_conditions();
        if self.cfg.paused || self.is_scaling_event() {
            self.scale();
            if self.cfg.paused {
                self.cleanup();
            }
            return self.calculate_status();
        }
        if self.cfg.recreate {
            self.rollout_recreate()
        } else {
            self.rollout_rolling()
        }
    }

    fn finish(self, status: DeploymentStatus) -> DeploymentPlan {
        let requeue_after = self.requeue_after(&status);
        let mut plan = DeploymentPlan {
            status,
            revision: self.revision,
            delete: self.delete,
            requeue_after,
            ..DeploymentPlan::default()
        };
        for entry in self.rss {
            match entry.original {
                None => plan.create = Some(entry.rs),
                Some(original) => plan.scale.extend(change_of(original, &entry.rs)),
            }
        }
        plan
    }

    fn rs(&self, i: usize) -> &ReplicaSet {
        &self.rss[i].rs
    }

    fn all(&self) -> Vec<usize> {
        (0..self.rss.len()).collect()
    }

    /// The old ReplicaSets, oldest first.
    fn olds(&self) -> Vec<usize> {
        (0..self.rss.len())
            .filter(|&i| Some(i) != self.new)
            .collect()
    }

    fn sum(&self, of: &[usize], field: fn(&ReplicaSet) -> i32) -> i32 {
        of.iter()
            .fold(0i32, |acc, &i| acc.saturating_add(field(self.rs(i))))
    }

    fn max_old_revision(&self) -> i64 {
        self.olds()
            .into_iter()
            .filter_map(|i| revision(self.rs(i)))
            .max()
            .unwrap_or(0)
    }

    /// `(desired, max)` for the replica annotations.
    fn replicas_annotations(&self) -> (i32, i32) {
        (
            self.cfg.replicas,
            self.cfg.replicas.saturating_add(self.cfg.max_surge),
        )
    }

    fn condition(
        &self,
        type_: &str,
        status: &str,
        reason: &str,
        message: String,
    ) -> DeploymentCondition {
        DeploymentCondition {
            type_: Some(type_.to_owned()),
            status: Some(status.to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message),
            last_update_time: Some(Time(self.now)),
            last_transition_time: Some(Time(self.now)),
        }
    }

    fn set_revision(&mut self, revision: String) {
        if annotation(&self.d.metadata, REVISION_ANNOTATION) != Some(revision.as_str()) {
            self.revision = Some(revision);
        }
    }

    /// The existing-ReplicaSet half of Kubernetes' `getNewReplicaSet`: bring the new
    /// ReplicaSet's annotations and minReadySeconds up to date, give it the next revision if an
    /// old one had a later one (a rollback), and record the revision on the Deployment.
    fn sync_existing_new(&mut self) {
        let Some(n) = self.new else {
            return;
        };
        let d = self.d;
        let new_revision = self.max_old_revision() + 1;
        let rs = &mut self.rss[n].rs;
        set_new_replicaset_annotations(d, rs, new_revision, None);
        if rs.spec.min_ready_seconds.unwrap_or(0) != d.spec.min_ready_seconds.unwrap_or(0) {
            rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
        }
        let name = rs_name(rs).to_owned();
        if let Some(revision) = annotation(&rs.metadata, REVISION_ANNOTATION).map(str::to_owned) {
            self.set_revision(revision);
        }
        if self.cfg.progress_deadline.is_some()
            && condition_of(&self.current, PROGRESSING).is_none()
        {
            let found = self.condition(
                PROGRESSING,
                "True",
                FOUND_NEW_RS,
                format!("Found new replica set {name:?}"),
            );
            set_condition(&mut self.current, found);
        }
    }

    /// The creating half of `getNewReplicaSet`: a ReplicaSet for the current template, sized by
    /// the strategy, with the next revision.
    fn create_new(&mut self) {
        if self.new.is_some() {
            return;
        }
        let d = self.d;
        let new_revision = self.max_old_revision() + 1;
        let base = d.metadata.name.as_deref().unwrap_or_default();
        let mut collisions = self.current.collision_count;
        let mut hash = pod_template_hash(&d.spec.template, collisions);
        // A ReplicaSet of ours with that name has another template (else it would be the new
        // one): a hash collision, so hash again with the next collision count.
        for _ in 0..MAX_COLLISIONS {
            let name = format!("{base}-{hash}");
            if !self.rss.iter().any(|e| rs_name(&e.rs) == name) {
                break;
            }
            collisions = Some(collisions.unwrap_or(0).saturating_add(1));
            hash = pod_template_hash(&d.spec.template, collisions);
        }
        self.current.collision_count = collisions;
        let name = format!("{base}-{hash}");

        let mut template = d.spec.template.clone();
        let template_meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        template_meta
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
        let labels = template_meta.labels.clone();
        let mut selector = d.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.to_owned(), hash);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.metadata.namespace.clone(),
                labels,
                owner_references: Some(vec![owner_reference("apps/v1", "Deployment", &d.metadata)]),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: d.spec.min_ready_seconds,
                selector,
                template: Some(template),
            },
            status: None,
        };
        self.rss.push(Entry { rs, original: None });
        let n = self.rss.len() - 1;
        self.new = Some(n);
        let replicas = self.new_rs_new_replicas(n);
        let annotations = self.replicas_annotations();
        let rs = &mut self.rss[n].rs;
        rs.spec.replicas = Some(replicas);
        set_new_replicaset_annotations(d, rs, new_revision, Some(annotations));
        self.set_revision(new_revision.to_string());
        if self.cfg.progress_deadline.is_some() {
            let created = self.condition(
                PROGRESSING,
                "True",
                NEW_RS_CREATED,
                format!("Created new replica set {name:?}"),
            );
            set_condition(&mut self.current, created);
        }
    }

    /// Kubernetes' `NewRSNewReplicas`: how far the new ReplicaSet may grow now.
    fn new_rs_new_replicas(&self, n: usize) -> i32 {
        if self.cfg.recreate {
            return self.cfg.replicas;
        }
        let new_replicas = spec_replicas(self.rs(n));
        let current = self.sum(&self.all(), spec_replicas);
        let max_total = self.cfg.replicas.saturating_add(self.cfg.max_surge);
        if current >= max_total {
            return new_replicas;
        }
        new_replicas + (max_total - current).min(self.cfg.replicas - new_replicas)
    }

    /// Kubernetes' `scaleReplicaSetAndRecordEvent`: scale unless already at `replicas`.
    fn scale_and_record(&mut self, i: usize, replicas: i32) -> bool {
        if spec_replicas(self.rs(i)) == replicas {
            return false;
        }
        self.scale_rs(i, replicas);
        true
    }

    /// Kubernetes' `scaleReplicaSet`: set the size and the replica annotations.
    fn scale_rs(&mut self, i: usize, replicas: i32) {
        let (desired, max) = self.replicas_annotations();
        let rs = &mut self.rss[i].rs;
        rs.spec.replicas = Some(replicas);
        set_replicas_annotations(rs, desired, max);
    }

    /// Kubernetes' `checkPausedConditions`.
    fn check_paused_conditions(&mut self) {
        if self.cfg.progress_deadline.is_none() {
            return;
        }
        let reason = condition_of(&self.current, PROGRESSING).and_then(|c| c.reason.clone());
        // A reported lack of progress is not overwritten.
        if reason.as_deref() == Some(TIMED_OUT) {
            return;
        }
        let paused_recorded = reason.as_deref() == Some(PAUSED);
        let condition = if self.cfg.paused && !paused_recorded {
            self.condition(
                PROGRESSING,
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
            )
        } else if !self.cfg.paused && paused_recorded {
            self.condition(
                PROGRESSING,
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
            )
        } else {
            return;
        };
        set_condition(&mut self.current, condition);
    }

    /// Kubernetes' `isScalingEvent`: an active ReplicaSet was sized for another `spec.replicas`.
    fn is_scaling_event(&self) -> bool {
        self.rss
            .iter()
            .filter(|e| spec_replicas(&e.rs) > 0)
            .filter_map(|e| int_annotation(&e.rs.metadata, DESIRED_REPLICAS_ANNOTATION))
            .any(|desired| desired != self.cfg.replicas)
    }

    /// Kubernetes' `FindActiveOrLatest`: the only active ReplicaSet, or the newest when none is.
    fn active_or_latest(&self) -> Option<usize> {
        let mut olds = self.olds();
        if self.new.is_none() && olds.is_empty() {
            return None;
        }
        olds.reverse();
        let active: Vec<usize> = olds
            .iter()
            .copied()
            .chain(self.new)
            .filter(|&i| spec_replicas(self.rs(i)) > 0)
            .collect();
        match active.as_slice() {
            [] => self.new.or(olds.first().copied()),
            [only] => Some(*only),
            _ => None,
        }
    }

    /// Kubernetes' `IsSaturated`: the new ReplicaSet is fully scaled and available.
    fn is_saturated(&self, n: usize) -> bool {
        let rs = self.rs(n);
        let replicas = self.cfg.replicas;
        int_annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION) == Some(replicas)
            && spec_replicas(rs) == replicas
            && available_replicas(rs) == replicas
    }

    /// Kubernetes' `scale` (sync.go): follow a change of `spec.replicas` without rolling out,
    /// proportionally over the active ReplicaSets during a rolling update.
    fn scale(&mut self) {
        let replicas = self.cfg.replicas;
        if let Some(i) = self.active_or_latest() {
            self.scale_and_record(i, replicas);
            return;
        }
        if let Some(n) = self.new
            && self.is_saturated(n)
        {
            for i in self.olds() {
                if spec_replicas(self.rs(i)) > 0 {
                    self.scale_and_record(i, 0);
                }
            }
            return;
        }
        if self.cfg.recreate {
            return;
        }
        let mut active: Vec<usize> = self
            .all()
            .into_iter()
            .filter(|&i| spec_replicas(self.rs(i)) > 0)
            .collect();
        let total = self.sum(&active, spec_replicas);
        let allowed = if replicas > 0 {
            replicas.saturating_add(self.cfg.max_surge)
        } else {
            0
        };
        let to_add = allowed - total;
        // Larger first; among equals, newer first when growing and older first when shrinking.
        match to_add.cmp(&0) {
            Ordering::Greater => active.sort_by(|&a, &b| {
                let (a, b) = (self.rs(a), self.rs(b));
                spec_replicas(b)
                    .cmp(&spec_replicas(a))
                    .then_with(|| by_creation(b, a))
            }),
            Ordering::Less => active.sort_by(|&a, &b| {
                let (a, b) = (self.rs(a), self.rs(b));
                spec_replicas(b)
                    .cmp(&spec_replicas(a))
                    .then_with(|| by_creation(a, b))
            }),
            Ordering::Equal => {}
        }
        let mut added = 0;
        let mut sizes = Vec::with_capacity(active.len());
        for &i in &active {
            let size = spec_replicas(self.rs(i));
            if to_add == 0 {
                sizes.push(size);
                continue;
            }
            let proportion = self.proportion(i, to_add, added);
            sizes.push(size + proportion);
            added += proportion;
        }
        for (k, (&i, size)) in active.iter().zip(sizes).enumerate() {
            // Leftovers go to the largest.
            let size = if k == 0 && to_add != 0 {
                (size + to_add - added).max(0)
            } else {
                size
            };
            self.scale_rs(i, size);
        }
    }

    /// Kubernetes' `GetProportion`.
    fn proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        if spec_replicas(self.rs(i)) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = self.fraction(i);
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// Kubernetes' `getReplicaSetFraction`: the ReplicaSet's share of the new size, minus its size.
    fn fraction(&self, i: usize) -> i32 {
        let rs = self.rs(i);
        let size = spec_replicas(rs);
        if self.cfg.replicas == 0 {
            return -size;
        }
        let max_now = self.cfg.replicas.saturating_add(self.cfg.max_surge);
        let before = match int_annotation(&rs.metadata, MAX_REPLICAS_ANNOTATION) {
            Some(max) if max != 0 => max,
            _ => self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        };
        if before == 0 {
            return 0;
        }
        let scaled = f64::from(size) * f64::from(max_now) / f64::from(before);
        (scaled.round() as i32).saturating_sub(size)
    }

    /// Kubernetes' `rolloutRolling`.
    fn rollout_rolling(&mut self) -> DeploymentStatus {
        self.create_new();
        if !self.reconcile_new() && !self.reconcile_old() && self.complete(&self.current) {
            self.cleanup();
        }
        self.sync_rollout_status()
    }

    /// Kubernetes' `reconcileNewReplicaSet`: grow the new ReplicaSet within max surge.
    fn reconcile_new(&mut self) -> bool {
        let Some(n) = self.new else {
            return false;
        };
        let size = spec_replicas(self.rs(n));
        if size == self.cfg.replicas {
            return false;
        }
        if size > self.cfg.replicas {
            return self.scale_and_record(n, self.cfg.replicas);
        }
        let replicas = self.new_rs_new_replicas(n);
        self.scale_and_record(n, replicas)
    }

    /// Kubernetes' `reconcileOldReplicaSets`: shrink old ReplicaSets within max unavailable,
    /// unhealthy replicas first.
    fn reconcile_old(&mut self) -> bool {
        let Some(n) = self.new else {
            return false;
        };
        let olds: Vec<usize> = self
            .olds()
            .into_iter()
            .filter(|&i| spec_replicas(self.rs(i)) > 0)
            .collect();
        if self.sum(&olds, spec_replicas) == 0 {
            return false;
        }
        let all_pods = self.sum(&self.all(), spec_replicas);
        let min_available = self.cfg.replicas - self.cfg.max_unavailable;
        let new_unavailable = spec_replicas(self.rs(n)) - available_replicas(self.rs(n));
        // Unavailable pods of the new ReplicaSet count against the budget, so that a crashing
        // new template never takes old pods down with it.
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let Some(cleaned) = self.cleanup_unhealthy(&olds, max_scaled_down) else {
            return false;
        };
        let scaled = self.scale_down_old(&olds);
        cleaned + scaled > 0
    }

    /// Kubernetes' `cleanupUnhealthyReplicas`: remove unavailable old replicas first; they cost
    /// no availability. `None` when a status is stale (more available than wanted).
    fn cleanup_unhealthy(&mut self, olds: &[usize], max: i32) -> Option<i32> {
        let mut total = 0;
        for &i in olds {
            if total >= max {
                break;
            }
            let size = spec_replicas(self.rs(i));
            let available = available_replicas(self.rs(i));
            if size == 0 || size == available {
                continue;
            }
            let down = (max - total).min(size - available);
            if down < 0 {
                return None;
            }
            self.scale_and_record(i, size - down);
            total += down;
        }
        Some(total)
    }

    /// Kubernetes' `scaleDownOldReplicaSetsForRollingUpdate`: shrink old ReplicaSets, oldest
    /// first, as far as available pods above the minimum allow.
    fn scale_down_old(&mut self, olds: &[usize]) -> i32 {
        let min_available = self.cfg.replicas - self.cfg.max_unavailable;
        let available = self.sum(&self.all(), available_replicas);
        if available <= min_available {
            return 0;
        }
        let budget = available - min_available;
        let mut total = 0;
        for &i in olds {
            if total >= budget {
                break;
            }
            let size = spec_replicas(self.rs(i));
            if size == 0 {
                continue;
            }
            let down = size.min(budget - total);
            self.scale_and_record(i, size - down);
            total += down;
        }
        total
    }

    /// Kubernetes' `rolloutRecreate`: old ReplicaSets to zero, and only once their pods are gone
    /// the new one to full size.
    fn rollout_recreate(&mut self) -> DeploymentStatus {
        let mut scaled_down = false;
        for i in self.olds() {
            if spec_replicas(self.rs(i)) > 0 && self.scale_and_record(i, 0) {
                scaled_down = true;
            }
        }
        if scaled_down || self.old_pods_running() {
            return self.sync_rollout_status();
        }
        self.create_new();
        if let Some(n) = self.new {
            self.scale_and_record(n, self.cfg.replicas);
        }
        if self.complete(&self.current) {
            self.cleanup();
        }
        self.sync_rollout_status()
    }

    /// Do old ReplicaSets still have pods, running or terminating?
    fn old_pods_running(&self) -> bool {
        self.olds().into_iter().any(|i| {
            let rs = self.rs(i);
            status_replicas(rs) > 0 || terminating_replicas(rs).unwrap_or(0) > 0
        })
    }

    /// Kubernetes' `cleanupDeployment`: delete the oldest revisions beyond
    /// `revisionHistoryLimit`, skipping any that still have (or may have) pods.
    fn cleanup(&mut self) {
        let Some(limit) = self.cfg.history_limit else {
            return;
        };
        let mut cleanable: Vec<&'a ReplicaSet> = self
            .olds()
            .into_iter()
            .filter_map(|i| self.rss[i].original)
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = count(cleanable.len()).saturating_sub(limit);
        if excess <= 0 {
            return;
        }
        cleanable.sort_by(|a, b| {
            revision(a)
                .unwrap_or(0)
                .cmp(&revision(b).unwrap_or(0))
                .then_with(|| by_creation(a, b))
        });
        for rs in cleanable
            .into_iter()
            .take(usize::try_from(excess).unwrap_or(0))
        {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            let busy = status_replicas(rs) != 0
                || spec_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed;
            if !busy && let Some(name) = &rs.metadata.name {
                self.delete.push(name.clone());
            }
        }
    }

    /// Kubernetes' `DeploymentComplete`.
    fn complete(&self, status: &DeploymentStatus) -> bool {
        rollout_complete(self.d, status)
    }

    /// Kubernetes' `DeploymentProgressing`: more updated, ready or available pods, or fewer old
    /// ones, than the status says.
    fn progressing(&self, new: &DeploymentStatus) -> bool {
        let old = &self.current;
        let get = |v: Option<i32>| v.unwrap_or(0);
        let old_old = get(old.replicas) - get(old.updated_replicas);
        let new_old = get(new.replicas) - get(new.updated_replicas);
        get(new.updated_replicas) > get(old.updated_replicas)
            || new_old < old_old
            || get(new.ready_replicas) > get(old.ready_replicas)
            || get(new.available_replicas) > get(old.available_replicas)
    }

    /// Kubernetes' `DeploymentTimedOut`.
    fn timed_out(&self, status: &DeploymentStatus) -> bool {
        let Some(deadline) = self.cfg.progress_deadline else {
            return false;
        };
        let Some(condition) = condition_of(status, PROGRESSING) else {
            return false;
        };
        match condition.reason.as_deref() {
            Some(NEW_RS_AVAILABLE) => return false,
            Some(TIMED_OUT) => return true,
            _ => {}
        }
        let Some(from) = &condition.last_update_time else {
            return true;
        };
        self.now.duration_since(from.0) > SignedDuration::from_secs(i64::from(deadline))
    }

    /// Kubernetes' `calculateStatus`: counts from the ReplicaSets and the `Available` condition.
    fn calculate_status(&self) -> DeploymentStatus {
        let all = self.all();
        let available = self.sum(&all, available_replicas);
        let unavailable = self
            .sum(&all, spec_replicas)
            .saturating_sub(available)
            .max(0);
        let updated = self.new.map_or(0, |n| status_replicas(self.rs(n)));
        let terminating = all.iter().try_fold(0i32, |acc, &i| {
            terminating_replicas(self.rs(i)).map(|t| acc.saturating_add(t))
        });
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: non_zero(self.sum(&all, status_replicas)),
            updated_replicas: non_zero(updated),
            ready_replicas: non_zero(self.sum(&all, ready_replicas)),
            available_replicas: non_zero(available),
            unavailable_replicas: non_zero(unavailable),
            terminating_replicas: terminating,
            collision_count: self.current.collision_count,
            conditions: self.current.conditions.clone(),
        };
        let condition = if available >= self.cfg.replicas - self.cfg.max_unavailable {
            self.condition(
                AVAILABLE,
                "True",
                MINIMUM_REPLICAS_AVAILABLE,
                "Deployment has minimum availability.".into(),
            )
        } else {
            self.condition(
                AVAILABLE,
                "False",
                MINIMUM_REPLICAS_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
            )
        };
        set_condition(&mut status, condition);
        status
    }

    /// Kubernetes' `syncRolloutStatus`: the status with the `Progressing` condition judged
    /// against the previous status and the progress deadline, and ReplicaSet failures surfaced.
    fn sync_rollout_status(&self) -> DeploymentStatus {
        let mut status = self.calculate_status();
        if self.cfg.progress_deadline.is_none() {
            remove_condition(&mut status, PROGRESSING);
        }
        let current = condition_of(&self.current, PROGRESSING);
        // A finished rollout with nothing new to roll: no progress to estimate.
        let finished = status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
            && current.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        if self.cfg.progress_deadline.is_some() && !finished {
            let subject = match self.new {
                Some(n) => format!("ReplicaSet {:?}", rs_name(self.rs(n))),
                None => format!(
                    "Deployment {:?}",
                    self.d.metadata.name.as_deref().unwrap_or_default()
                ),
            };
            if self.complete(&status) {
                let done = self.condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_AVAILABLE,
                    format!("{subject} has successfully progressed."),
                );
                set_condition(&mut status, done);
            } else if self.progressing(&status) {
                // Every sign of progress refreshes lastUpdateTime, even with the same reason.
                let mut updated = self.condition(
                    PROGRESSING,
                    "True",
                    RS_UPDATED,
                    format!("{subject} is progressing."),
                );
                if let Some(current) = current {
                    if current.status.as_deref() == Some("True") {
                        updated.last_transition_time = current.last_transition_time.clone();
                    }
                    remove_condition(&mut status, PROGRESSING);
                }
                set_condition(&mut status, updated);
            } else if self.timed_out(&status) {
                let timed_out = self.condition(
                    PROGRESSING,
                    "False",
                    TIMED_OUT,
                    format!("{subject} has timed out progressing."),
                );
                set_condition(&mut status, timed_out);
            }
        }
        match self.replica_failure() {
            Some(failure) => set_condition(&mut status, failure),
            None => remove_condition(&mut status, REPLICA_FAILURE),
        }
        status
    }

    /// A `ReplicaFailure` condition of the new ReplicaSet, else of any, as a Deployment condition.
    fn replica_failure(&self) -> Option<DeploymentCondition> {
        let of = |rs: &ReplicaSet| {
            rs.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_.as_deref() == Some(REPLICA_FAILURE))
                .map(|c| DeploymentCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: c.last_transition_time.clone(),
                    last_update_time: c.last_transition_time.clone(),
                })
        };
        self.new
            .and_then(|n| of(self.rs(n)))
            .or_else(|| self.rss.iter().find_map(|e| of(&e.rs)))
    }

    /// Kubernetes' `requeueStuckDeployment`: when the progress deadline of an unfinished rollout
    /// passes.
    fn requeue_after(&self, status: &DeploymentStatus) -> Option<Duration> {
        let deadline = self.cfg.progress_deadline?;
        if self.cfg.paused
            || self.d.metadata.deletion_timestamp.is_some()
            || selector_is_empty(&self.d.spec.selector)
            || self.complete(status)
        {
            return None;
        }
        let condition = condition_of(status, PROGRESSING)?;
        if matches!(
            condition.reason.as_deref(),
            Some(TIMED_OUT | NEW_RS_AVAILABLE)
        ) {
            return None;
        }
        let from = condition.last_update_time.as_ref()?.0;
        let left = SignedDuration::from_secs(i64::from(deadline))
            .checked_sub(self.now.duration_since(from))?;
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        Some(left.max(Duration::from_secs(1)))
    }
}

/// What changed between a ReplicaSet and its working copy.
fn change_of(original: &ReplicaSet, rs: &ReplicaSet) -> Option<ReplicaSetChange> {
    let annotations: BTreeMap<String, String> = rs
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, v)| annotation(&original.metadata, k) != Some(v.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let min_ready_seconds =
        (min_ready != original.spec.min_ready_seconds.unwrap_or(0)).then_some(min_ready);
    let replicas = spec_replicas(rs);
    let resized = replicas != spec_replicas(original);
    (resized || !annotations.is_empty() || min_ready_seconds.is_some()).then(|| ReplicaSetChange {
        name: rs_name(rs).to_owned(),
        replicas,
        annotations,
        min_ready_seconds,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetCondition, RollingUpdateDeployment,
    };
    use serde_json::json;

    use super::*;
    use k8s_openapi::api::core::v1::{Container as ApiContainer, PodSpec as ApiPodSpec};

    use crate::cached::{Container, ContainerStatus, PodSpec, PodStatus};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    // --- pods and ReplicaSets -----------------------------------------------------------------

    /// A pod of the test ReplicaSet; `ready_since` in seconds after the epoch of [`at`].
    fn pod(name: &str, node: &str, phase: &str, ready_since: Option<i64>, restarts: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels(&[("app", "web"), ("tier", "front")])),
                creation_timestamp: Some(Time(at(0))),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_owned()),
                containers: vec![Container {
                    name: "web".into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready_since.is_some() {
                        "True"
                    } else {
                        "False"
                    }
                    .into(),
                    last_transition_time: ready_since.map(|s| Time(at(s))),
                    ..PodCondition::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: "web".into(),
                    restart_count: restarts,
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn created_at(mut pod: Pod, second: i64) -> Pod {
        pod.metadata.creation_timestamp = Some(Time(at(second)));
        pod
    }

    fn replicaset(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("shop".into()),
                uid: Some("rs-uid".into()),
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: None,
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(&[("app", "web"), ("tier", "front")])),
                        annotations: Some(labels(&[("note", "x")])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(ApiPodSpec {
                        containers: vec![ApiContainer {
                            name: "web".into(),
                            image: Some("nginx".into()),
                            ..ApiContainer::default()
                        }],
                        ..ApiPodSpec::default()
                    }),
                }),
            },
            status: None,
        }
    }

    #[test]
    fn replicaset_scales_up_counting_only_active_pods() {
        let running = pod("a", "n1", "Running", Some(0), 0);
        let failed = pod("b", "n1", "Failed", None, 0);
        let mut terminating = pod("c", "n2", "Running", Some(0), 0);
        terminating.metadata.deletion_timestamp = Some(Time(at(5)));
        let cases: [(i32, usize); 4] = [(0, 0), (1, 0), (3, 2), (1000, BURST_REPLICAS)];
        for (replicas, create) in cases {
            let plan = plan_replicaset(
                &replicaset(replicas),
                &[&running, &failed, &terminating],
                at(10),
            );
            assert_eq!(plan.create, create, "replicas {replicas}");
            assert_eq!(plan.status.replicas, 1);
            assert_eq!(plan.status.terminating_replicas, Some(1));
            if replicas == 0 {
                assert_eq!(plan.delete, ["a"]);
            } else {
                assert!(plan.delete.is_empty());
            }
        }
    }

    #[test]
    fn replicaset_being_deleted_only_gets_status() {
        let mut rs = replicaset(3);
        rs.metadata.deletion_timestamp = Some(Time(at(0)));
        let a = pod("a", "n1", "Running", Some(0), 0);
        let plan = plan_replicaset(&rs, &[&a], at(10));
        assert_eq!((plan.create, plan.delete.len()), (0, 0));
        assert_eq!(plan.status.replicas, 1);
    }

    #[test]
    fn replicaset_deletes_in_active_pods_order() {
        let pods = [
            pod("ready-old", "n6", "Running", Some(50), 0),
            pod("ready-recent", "n4", "Running", Some(100), 0),
            pod("not-ready", "n3", "Running", None, 0),
            created_at(pod("ready-old-newer", "n7", "Running", Some(50), 0), 8),
            pod("unknown", "n2", "Unknown", None, 0),
            pod("ready-old-restarts", "n5", "Running", Some(50), 5),
            pod("pending", "n1", "Pending", None, 0),
            pod("unscheduled", "", "Pending", None, 0),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_replicaset(&replicaset(1), &refs, at(200));
        assert_eq!(
            plan.delete,
            [
                "unscheduled",
                "pending",
                "unknown",
                "not-ready",
                "ready-recent",
                "ready-old-restarts",
                "ready-old-newer",
            ]
        );
    }

    #[test]
    fn replicaset_deletion_cost_and_doubled_up_pods_go_first() {
        let mut cheap = pod("cheap", "n3", "Running", Some(10), 0);
        cheap
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_DELETION_COST_ANNOTATION.into(), "-5".into());
        let pods = [
            pod("alone", "n2", "Running", Some(90), 0),
            pod("double-1", "n1", "Running", Some(20), 0),
            pod("double-2", "n1", "Running", Some(30), 0),
            cheap,
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_replicaset(&replicaset(0), &refs, at(200));
        assert_eq!(plan.delete, ["cheap", "double-2", "double-1", "alone"]);
    }

    #[test]
    fn replicaset_status_counts() {
        let mut rs = replicaset(4);
        rs.spec.min_ready_seconds = Some(10);
        rs.status = Some(ReplicaSetStatus {
            conditions: Some(vec![ReplicaSetCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                ..ReplicaSetCondition::default()
            }]),
            ..ReplicaSetStatus::default()
        });
        let available = pod("available", "n1", "Running", Some(50), 0);
        let warming = pod("warming", "n1", "Running", Some(95), 0);
        let not_ready = pod("not-ready", "n1", "Running", None, 0);
        let mut unlabeled = pod("unlabeled", "n1", "Running", Some(0), 0);
        unlabeled.metadata.labels = Some(labels(&[("app", "web")]));
        let mut terminating = pod("terminating", "n1", "Running", Some(0), 0);
        terminating.metadata.deletion_timestamp = Some(Time(at(99)));
        let succeeded = pod("succeeded", "n1", "Succeeded", None, 0);
        let plan = plan_replicaset(
            &rs,
            &[
                &available,
                &warming,
                &not_ready,
                &unlabeled,
                &terminating,
                &succeeded,
            ],
            at(100),
        );
        assert_eq!((plan.create, plan.delete.len()), (0, 0));
        let status = &plan.status;
        assert_eq!(status.replicas, 4);
        assert_eq!(status.fully_labeled_replicas, Some(3));
        assert_eq!(status.ready_replicas, Some(3));
        assert_eq!(status.available_replicas, Some(2));
        assert_eq!(status.terminating_replicas, Some(1));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.conditions.as_ref().map(Vec::len), Some(1));
        // "warming" has been ready 5 of 10 seconds.
        assert_eq!(
            plan.requeue_after,
            Some(Duration::from_secs(5) + Duration::from_millis(1))
        );

        let empty = plan_replicaset(&replicaset(0), &[], at(0));
        assert_eq!(empty.status.replicas, 0);
        assert_eq!(empty.status.ready_replicas, None);
        assert_eq!(empty.status.available_replicas, None);
        assert_eq!(empty.status.terminating_replicas, Some(0));
        assert_eq!(empty.requeue_after, None);
    }

    #[test]
    fn pod_availability() {
        let p = pod("a", "n1", "Running", Some(100), 0);
        let cases = [
            (0, 100, true),
            (10, 105, false),
            (10, 110, false),
            (10, 111, true),
        ];
        for (min_ready, now, expected) in cases {
            assert_eq!(
                is_pod_available(&p, min_ready, at(now)),
                expected,
                "{min_ready} at {now}"
            );
        }
        assert!(!is_pod_available(
            &pod("b", "n1", "Running", None, 0),
            0,
            at(0)
        ));
        assert!(is_active(&p));
        assert!(!is_active(&pod("c", "n1", "Failed", None, 0)));
    }

    #[test]
    fn new_pod_from_template() {
        let rs = replicaset(1);
        let p = new_pod(&rs);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.name, None);
        assert_eq!(p.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            p.metadata.labels,
            Some(labels(&[("app", "web"), ("tier", "front")]))
        );
        assert_eq!(p.metadata.annotations, Some(labels(&[("note", "x")])));
        assert_eq!(
            p.metadata.owner_references,
            Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web-abc".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }])
        );
        assert!(is_controlled_by(&p.metadata, "rs-uid"));
        assert_eq!(
            p.spec.unwrap().containers[0].image.as_deref(),
            Some("nginx")
        );
    }

    #[test]
    fn selectors() {
        let web_front = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            (json!({}), true),
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (
                json!({"matchLabels": {"app": "web", "tier": "back"}}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["api", "web"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}),
                false,
            ),
            (
                json!({"matchLabels": {"app": "web"},
                       "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}),
                true,
            ),
        ];
        for (selector, expected) in cases {
            let parsed: LabelSelector = serde_json::from_value(selector.clone()).unwrap();
            assert_eq!(
                selector_matches(&parsed, &web_front),
                expected,
                "{selector}"
            );
        }
    }

    #[test]
    fn adoption() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            ..LabelSelector::default()
        };
        let orphan = pod("a", "n1", "Running", None, 0).metadata;
        assert!(should_adopt(&selector, &orphan));
        assert!(!should_adopt(&LabelSelector::default(), &orphan));
        let mut deleting = orphan.clone();
        deleting.deletion_timestamp = Some(Time(at(0)));
        assert!(!should_adopt(&selector, &deleting));
        let owned = new_pod(&replicaset(1)).metadata;
        assert!(!should_adopt(&selector, &owned));
        assert!(!should_release(&selector, &owned));
        let mut relabeled = owned;
        relabeled.labels = Some(labels(&[("app", "debug")]));
        assert!(should_release(&selector, &relabeled));
        assert!(!should_adopt(&selector, &relabeled));
    }

    // --- hash ---------------------------------------------------------------------------------

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(&[("app", "web")])),
                ..ObjectMeta::default()
            }),
            spec: Some(ApiPodSpec {
                containers: vec![ApiContainer {
                    name: "web".into(),
                    image: Some(image.to_owned()),
                    ..ApiContainer::default()
                }],
                ..ApiPodSpec::default()
            }),
        }
    }

    #[test]
    fn template_hash() {
        let t = template("nginx:1");
        assert_eq!(
            canonical_template(&t),
            r#"{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"image":"nginx:1","name":"web"}]}}"#
        );
        // Pinned: a change here renames every ReplicaSet of every Deployment on upgrade.
        assert_eq!(pod_template_hash(&t, None), PINNED_HASH);
        assert_eq!(pod_template_hash(&t, Some(1)), PINNED_HASH_COLLISION_1);

        let hashes = [
            pod_template_hash(&t, None),
            pod_template_hash(&t, Some(1)),
            pod_template_hash(&t, Some(2)),
            pod_template_hash(&template("nginx:2"), None),
        ];
        for hash in &hashes {
            assert!(!hash.is_empty() && hash.len() <= 10, "{hash}");
            assert!(hash.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{hash}");
        }
        for (i, a) in hashes.iter().enumerate() {
            for b in hashes.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }

        // The hash label itself, and empty maps, do not count.
        let mut labelled = t.clone();
        if let Some(meta) = labelled.metadata.as_mut() {
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(POD_TEMPLATE_HASH.into(), "whatever".into());
            meta.annotations = Some(BTreeMap::new());
        }
        assert_eq!(pod_template_hash(&labelled, None), PINNED_HASH);
        assert!(equal_ignore_hash(&t, &labelled));

        // `kubectl rollout restart` is a template annotation: a new hash.
        let mut restarted = t.clone();
        if let Some(meta) = restarted.metadata.as_mut() {
            meta.annotations = Some(labels(&[(
                "kubectl.kubernetes.io/restartedAt",
                "2025-01-01T00:00:00Z",
            )]));
        }
        assert_ne!(pod_template_hash(&restarted, None), PINNED_HASH);
        assert!(!equal_ignore_hash(&t, &restarted));
    }

    const PINNED_HASH: &str = "75f67448f4";
    const PINNED_HASH_COLLISION_1: &str = "67b677fdd7";

    #[test]
    fn surge_and_unavailable() {
        let cases = [
            (3, None, None, 1, 0),
            (4, None, None, 1, 1),
            (10, None, None, 3, 2),
            (
                3,
                Some(IntOrString::Int(0)),
                Some(IntOrString::Int(0)),
                0,
                1,
            ),
            (
                3,
                Some(IntOrString::Int(1)),
                Some(IntOrString::Int(5)),
                1,
                3,
            ),
            (0, None, None, 0, 0),
            (
                10,
                Some(IntOrString::String("50%".into())),
                Some(IntOrString::String("bogus".into())),
                5,
                0,
            ),
        ];
        for (replicas, surge, unavailable, want_surge, want_unavailable) in cases {
            let mut d = deployment(replicas, "v1");
            d.spec.strategy = Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: surge,
                    max_unavailable: unavailable,
                }),
            });
            let cfg = Config::of(&d);
            assert_eq!(
                (cfg.max_surge, cfg.max_unavailable),
                (want_surge, want_unavailable),
                "{replicas} replicas"
            );
        }
        let mut d = deployment(3, "v1");
        d.spec.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let cfg = Config::of(&d);
        assert!(cfg.recreate);
        assert_eq!((cfg.max_surge, cfg.max_unavailable), (0, 0));
    }

    // --- deployments --------------------------------------------------------------------------

    fn deployment(replicas: i32, image: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("d-uid".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..LabelSelector::default()
                },
                template: template(image),
                ..DeploymentSpec::default()
            },
            status: None,
        }
    }

    fn with_surge(mut d: Deployment, surge: i32, unavailable: i32) -> Deployment {
        d.spec.strategy = Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(surge)),
                max_unavailable: Some(IntOrString::Int(unavailable)),
            }),
        });
        d
    }

    fn image_of(rs: &ReplicaSet) -> String {
        rs.spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    }

    fn condition<'s>(d: &'s Deployment, type_: &str) -> &'s DeploymentCondition {
        condition_of(d.status.as_ref().unwrap(), type_).unwrap()
    }

    fn reason(d: &Deployment, type_: &str) -> String {
        let c = condition(d, type_);
        format!(
            "{}/{}",
            c.status.as_deref().unwrap(),
            c.reason.as_deref().unwrap()
        )
    }

    /// What `kubectl rollout status` waits for.
    fn rolled_out(d: &Deployment) -> bool {
        let s = d.status.clone().unwrap_or_default();
        let timed_out =
            condition_of(&s, PROGRESSING).is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT));
        let get = |v: Option<i32>| v.unwrap_or(0);
        !timed_out
            && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
            && get(s.updated_replicas) >= d.spec.replicas.unwrap_or(1)
            && get(s.replicas) <= get(s.updated_replicas)
            && get(s.available_replicas) >= get(s.updated_replicas)
    }

    /// A Deployment and its ReplicaSets, with the apiserver and ReplicaSet controller played by
    /// `apply` and `settle`.
    struct Cluster {
        d: Deployment,
        rss: Vec<ReplicaSet>,
        clock: i64,
    }

    impl Cluster {
        fn new(d: Deployment) -> Self {
            Cluster {
                d,
                rss: Vec::new(),
                clock: 0,
            }
        }

        fn sync(&mut self) -> DeploymentPlan {
            let owned: Vec<&ReplicaSet> = self.rss.iter().collect();
            let plan = plan_deployment(&self.d, &owned, at(self.clock));
            self.apply(&plan);
            plan
        }

        fn apply(&mut self, plan: &DeploymentPlan) {
            for change in &plan.scale {
                let rs = self
                    .rss
                    .iter_mut()
                    .find(|rs| rs.metadata.name.as_deref() == Some(change.name.as_str()))
                    .unwrap();
                if rs.spec.replicas != Some(change.replicas) {
                    rs.spec.replicas = Some(change.replicas);
                    *rs.metadata.generation.get_or_insert(1) += 1;
                }
                rs.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .extend(change.annotations.clone());
                if let Some(m) = change.min_ready_seconds {
                    rs.spec.min_ready_seconds = Some(m);
                }
            }
            if let Some(created) = &plan.create {
                let mut rs = created.clone();
                rs.metadata.uid = Some(format!("uid-{}", rs_name(&rs)));
                rs.metadata.creation_timestamp = Some(Time(at(self.clock)));
                rs.metadata.generation = Some(1);
                self.rss.push(rs);
            }
            self.rss
                .retain(|rs| !plan.delete.iter().any(|n| n.as_str() == rs_name(rs)));
            self.d.status = Some(plan.status.clone());
            if let Some(revision) = &plan.revision {
                self.d
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(REVISION_ANNOTATION.into(), revision.clone());
            }
            self.clock += 1;
        }

        /// The ReplicaSet controller catches up: every RS has its pods, available if `available`
        /// says so for its image.
        fn settle(&mut self, available: impl Fn(&str) -> bool) {
            for rs in &mut self.rss {
                let n = rs.spec.replicas.unwrap_or(1);
                let up = if available(&image_of(rs)) { n } else { 0 };
                rs.status = Some(ReplicaSetStatus {
                    replicas: n,
                    fully_labeled_replicas: Some(n),
                    ready_replicas: Some(up),
                    available_replicas: Some(up),
                    terminating_replicas: Some(0),
                    observed_generation: rs.metadata.generation,
                    conditions: None,
                });
            }
        }

        fn change(&mut self, edit: impl FnOnce(&mut Deployment)) {
            edit(&mut self.d);
            *self.d.metadata.generation.get_or_insert(1) += 1;
        }

        fn set_image(&mut self, image: &str) {
            self.change(|d| d.spec.template = template(image));
        }

        /// Syncs and settles with every pod available until rolled out and quiet: a pass that
        /// changes nothing, not even the status (whose write would bring another pass).
        fn converge(&mut self) {
            for _ in 0..50 {
                let before = self.d.status.clone();
                let plan = self.sync();
                self.settle(|_| true);
                let quiet = plan.create.is_none()
                    && plan.scale.is_empty()
                    && plan.delete.is_empty()
                    && before.as_ref() == Some(&plan.status);
                if quiet && rolled_out(&self.d) {
                    return;
                }
            }
            panic!("no convergence: {}", self.summary());
        }

        /// `image=replicas` of every ReplicaSet, oldest first.
        fn summary(&self) -> String {
            self.rss
                .iter()
                .map(|rs| format!("{}={}", image_of(rs), rs.spec.replicas.unwrap_or(1)))
                .collect::<Vec<_>>()
                .join(" ")
        }

        fn rs(&self, image: &str) -> &ReplicaSet {
            self.rss.iter().find(|rs| image_of(rs) == image).unwrap()
        }
    }

    #[test]
    fn first_rollout_creates_full_replicaset() {
        let mut c = Cluster::new(deployment(3, "v1"));
        let plan = c.sync();
        let created = plan.create.clone().unwrap();
        let hash = pod_template_hash(&template("v1"), None);
        assert_eq!(created.metadata.name, Some(format!("web-{hash}")));
        assert_eq!(created.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(created.spec.replicas, Some(3));
        let with_hash = labels(&[("app", "web"), (POD_TEMPLATE_HASH, &hash)]);
        assert_eq!(created.metadata.labels.as_ref(), Some(&with_hash));
        assert_eq!(
            created.spec.selector.match_labels.as_ref(),
            Some(&with_hash)
        );
        assert_eq!(
            created
                .spec
                .template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.as_ref()),
            Some(&with_hash)
        );
        assert_eq!(
            created.metadata.annotations,
            Some(labels(&[
                (DESIRED_REPLICAS_ANNOTATION, "3"),
                (MAX_REPLICAS_ANNOTATION, "4"),
                (REVISION_ANNOTATION, "1"),
            ]))
        );
        let owner = controller_of(&created.metadata).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Deployment", "web", "d-uid")
        );
        assert_eq!(plan.revision.as_deref(), Some("1"));
        assert!(plan.scale.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.status.observed_generation, Some(1));
        assert_eq!(plan.status.unavailable_replicas, Some(3));
        assert_eq!(plan.status.replicas, None);
        assert_eq!(reason(&c.d, PROGRESSING), "True/NewReplicaSetCreated");
        assert_eq!(reason(&c.d, AVAILABLE), "False/MinimumReplicasUnavailable");
        assert!(!rolled_out(&c.d));

        c.settle(|_| true);
        let plan = c.sync();
        assert!(plan.create.is_none() && plan.scale.is_empty() && plan.revision.is_none());
        assert_eq!(plan.status.replicas, Some(3));
        assert_eq!(plan.status.updated_replicas, Some(3));
        assert_eq!(plan.status.available_replicas, Some(3));
        assert_eq!(plan.status.unavailable_replicas, None);
        assert_eq!(plan.status.terminating_replicas, Some(0));
        assert_eq!(reason(&c.d, PROGRESSING), "True/NewReplicaSetAvailable");
        assert_eq!(reason(&c.d, AVAILABLE), "True/MinimumReplicasAvailable");
        // Progressing stayed True: its transition time is the first one.
        assert_eq!(
            condition(&c.d, PROGRESSING).last_transition_time,
            Some(Time(at(0)))
        );
        assert_eq!(
            condition(&c.d, PROGRESSING).last_update_time,
            Some(Time(at(1)))
        );
        assert!(rolled_out(&c.d));

        // Nothing left to do: the same status again (no write needed) and no requeue.
        let before = c.d.status.clone();
        let plan = c.sync();
        assert_eq!(Some(plan.status), before);
        assert!(plan.create.is_none() && plan.scale.is_empty() && plan.revision.is_none());
        assert_eq!(plan.requeue_after, None);
    }

    #[test]
    fn rolling_update_steps_with_surge_one_unavailable_zero() {
        let mut c = Cluster::new(with_surge(deployment(3, "v1"), 1, 0));
        c.converge();
        c.set_image("v2");
        let expected = [
            "v1=3 v2=1",
            "v1=2 v2=1",
            "v1=2 v2=2",
            "v1=1 v2=2",
            "v1=1 v2=3",
            "v1=0 v2=3",
            "v1=0 v2=3",
        ];
        for (step, want) in expected.iter().enumerate() {
            c.sync();
            assert_eq!(c.summary(), *want, "step {step}");
            let total: i32 = c.rss.iter().map(spec_replicas).sum();
            assert!(total <= 4, "surge exceeded at step {step}");
            c.settle(|_| true);
            let available: i32 = c.rss.iter().map(available_replicas).sum();
            assert!(available >= 3, "availability lost at step {step}");
        }
        assert!(rolled_out(&c.d));
        assert_eq!(reason(&c.d, PROGRESSING), "True/NewReplicaSetAvailable");
        assert_eq!(
            annotation(&c.rs("v2").metadata, REVISION_ANNOTATION),
            Some("2")
        );
        assert_eq!(annotation(&c.d.metadata, REVISION_ANNOTATION), Some("2"));
    }

    #[test]
    fn rolling_update_waits_for_new_pods_to_become_available() {
        let mut c = Cluster::new(with_surge(deployment(3, "v1"), 1, 0));
        c.converge();
        c.set_image("v2");
        c.sync();
        assert_eq!(c.summary(), "v1=3 v2=1");
        for _ in 0..3 {
            c.settle(|image| image == "v1");
            c.sync();
            assert_eq!(c.summary(), "v1=3 v2=1");
        }
        let status = c.d.status.clone().unwrap();
        assert_eq!(status.replicas, Some(4));
        assert_eq!(status.updated_replicas, Some(1));
        assert_eq!(status.available_replicas, Some(3));
        assert_eq!(status.unavailable_replicas, Some(1));
        assert_eq!(reason(&c.d, PROGRESSING), "True/ReplicaSetUpdated");
        assert_eq!(reason(&c.d, AVAILABLE), "True/MinimumReplicasAvailable");
        assert!(!rolled_out(&c.d));
    }

    #[test]
    fn rolling_update_with_default_strategy_surges_and_scales_down_in_one_pass() {
        let mut c = Cluster::new(deployment(4, "v1"));
        c.converge();
        c.set_image("v2");
        c.sync();
        // 25% of 4: one extra pod and one unavailable pod.
        assert_eq!(c.summary(), "v1=3 v2=1");
        c.converge();
        assert_eq!(c.summary(), "v1=0 v2=4");
    }

    #[test]
    fn unhealthy_old_replicas_are_removed_first() {
        let mut c = Cluster::new(with_surge(deployment(4, "v1"), 1, 1));
        c.converge();
        // Two old pods break.
        for rs in &mut c.rss {
            if let Some(status) = rs.status.as_mut() {
                status.available_replicas = Some(2);
                status.ready_replicas = Some(2);
            }
        }
        c.set_image("v2");
        let plan = c.sync();
        // New RS: 1 (surge). Old: 5 pods, min available 3, new unavailable 1 -> may remove 1,
        // taken from the unhealthy ones; no healthy one may go (2 available <= 3).
        assert_eq!(plan.create.unwrap().spec.replicas, Some(1));
        assert_eq!(c.summary(), "v1=3 v2=1");
    }

    #[test]
    fn recreate_waits_for_old_pods_to_go() {
        let mut d = deployment(2, "v1");
        d.spec.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let mut c = Cluster::new(d);
        c.converge();
        assert_eq!(c.summary(), "v1=2");
        c.set_image("v2");

        let plan = c.sync();
        assert!(plan.create.is_none());
        assert_eq!(c.summary(), "v1=0");
        // The old ReplicaSet still reports pods: wait.
        let plan = c.sync();
        assert!(plan.create.is_none());
        // Pods terminating: still wait.
        for rs in &mut c.rss {
            rs.status = Some(ReplicaSetStatus {
                replicas: 0,
                terminating_replicas: Some(2),
                ..ReplicaSetStatus::default()
            });
        }
        let plan = c.sync();
        assert!(plan.create.is_none());
        assert_eq!(plan.status.terminating_replicas, Some(2));
        // Gone: the new ReplicaSet comes at full size.
        c.settle(|_| true);
        let plan = c.sync();
        assert_eq!(plan.create.unwrap().spec.replicas, Some(2));
        assert_eq!(c.summary(), "v1=0 v2=2");
        c.converge();
        assert!(rolled_out(&c.d));
        let v2 = c.rs("v2");
        assert_eq!(annotation(&v2.metadata, MAX_REPLICAS_ANNOTATION), Some("2"));
    }

    #[test]
    fn rollback_reuses_the_old_replicaset() {
        let mut c = Cluster::new(deployment(3, "v1"));
        c.converge();
        c.set_image("v2");
        c.converge();
        assert_eq!(c.summary(), "v1=0 v2=3");
        let v1_name = rs_name(c.rs("v1")).to_owned();

        // kubectl rollout undo: the client copies v1's template (hash label removed) back.
        c.set_image("v1");
        let plan = c.sync();
        assert!(plan.create.is_none());
        let change = plan.scale.iter().find(|s| s.name == v1_name).unwrap();
        assert_eq!(change.replicas, 1);
        assert_eq!(
            change
                .annotations
                .get(REVISION_ANNOTATION)
                .map(String::as_str),
            Some("3")
        );
        assert_eq!(
            change
                .annotations
                .get(REVISION_HISTORY_ANNOTATION)
                .map(String::as_str),
            Some("1")
        );
        assert_eq!(plan.revision.as_deref(), Some("3"));
        c.settle(|_| true);
        c.converge();
        assert_eq!(c.summary(), "v1=3 v2=0");
        assert_eq!(c.rss.len(), 2);

        // And forward again: v2 gets revision 4, history "2".
        c.set_image("v2");
        c.converge();
        let v2 = c.rs("v2");
        assert_eq!(annotation(&v2.metadata, REVISION_ANNOTATION), Some("4"));
        assert_eq!(
            annotation(&v2.metadata, REVISION_HISTORY_ANNOTATION),
            Some("2")
        );
    }

    #[test]
    fn history_limit_deletes_oldest_revisions() {
        let mut d = deployment(2, "v1");
        d.spec.revision_history_limit = Some(2);
        let mut c = Cluster::new(d);
        c.converge();
        for image in ["v2", "v3", "v4", "v5"] {
            c.set_image(image);
            c.converge();
        }
        assert_eq!(c.summary(), "v3=0 v4=0 v5=2");
    }

    #[test]
    fn history_limit_skips_replicasets_with_pods() {
        let mut d = deployment(2, "v4");
        d.spec.revision_history_limit = Some(1);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(2),
            updated_replicas: Some(2),
            available_replicas: Some(2),
            ..DeploymentStatus::default()
        });
        let old = |image: &str, revision: &str, status_replicas: i32, second: i64| {
            let mut t = template(image);
            t.metadata
                .as_mut()
                .unwrap()
                .labels
                .as_mut()
                .unwrap()
                .insert(POD_TEMPLATE_HASH.into(), image.into());
            ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("web-{image}")),
                    creation_timestamp: Some(Time(at(second))),
                    annotations: Some(labels(&[(REVISION_ANNOTATION, revision)])),
                    generation: Some(3),
                    ..ObjectMeta::default()
                },
                spec: ReplicaSetSpec {
                    replicas: Some(if image == "v4" { 2 } else { 0 }),
                    template: Some(t),
                    ..ReplicaSetSpec::default()
                },
                status: Some(ReplicaSetStatus {
                    replicas: status_replicas,
                    available_replicas: Some(status_replicas),
                    observed_generation: Some(3),
                    ..ReplicaSetStatus::default()
                }),
            }
        };
        // Created out of revision order: revisions decide.
        let rss = [
            old("v2", "2", 0, 1),
            old("v1", "1", 0, 2),
            old("v3", "3", 1, 3),
            old("v4", "4", 2, 4),
        ];
        let owned: Vec<&ReplicaSet> = rss.iter().collect();
        let plan = plan_deployment(&d, &owned, at(10));
        // Three old, limit one: revisions 1 and 2 go; 3 still has a pod and would be skipped.
        assert_eq!(plan.delete, ["web-v1", "web-v2"]);
        assert!(plan.create.is_none());
    }

    #[test]
    fn paused_deployment_only_scales() {
        let mut c = Cluster::new(deployment(3, "v1"));
        c.converge();
        c.change(|d| d.spec.paused = Some(true));
        c.set_image("v2");
        let plan = c.sync();
        assert!(plan.create.is_none() && plan.scale.is_empty());
        assert_eq!(reason(&c.d, PROGRESSING), "Unknown/DeploymentPaused");
        assert_eq!(plan.requeue_after, None);

        c.change(|d| d.spec.replicas = Some(5));
        let plan = c.sync();
        assert!(plan.create.is_none());
        assert_eq!(c.summary(), "v1=5");
        assert_eq!(
            plan.scale[0]
                .annotations
                .get(DESIRED_REPLICAS_ANNOTATION)
                .map(String::as_str),
            Some("5")
        );
        c.settle(|_| true);
        c.sync();

        c.change(|d| d.spec.paused = Some(false));
        let plan = c.sync();
        assert_eq!(plan.create.unwrap().spec.replicas, Some(2));
        assert_eq!(reason(&c.d, PROGRESSING), "True/NewReplicaSetCreated");
        c.converge();
        assert_eq!(c.summary(), "v1=0 v2=5");
    }

    #[test]
    fn resumed_condition_replaces_paused() {
        let mut c = Cluster::new(deployment(1, "v1"));
        c.converge();
        c.change(|d| d.spec.paused = Some(true));
        c.sync();
        assert_eq!(reason(&c.d, PROGRESSING), "Unknown/DeploymentPaused");
        c.change(|d| d.spec.paused = Some(false));
        c.sync();
        // Nothing to roll out: the rollout is complete again.
        assert_eq!(reason(&c.d, PROGRESSING), "True/NewReplicaSetAvailable");
        assert!(rolled_out(&c.d));
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        let mut c = Cluster::new(with_surge(deployment(3, "v1"), 1, 0));
        c.converge();
        c.set_image("v2");
        c.sync();
        c.settle(|_| true);
        c.sync();
        assert_eq!(c.summary(), "v1=2 v2=1");
        c.settle(|_| true);
        // 3 -> 6 replicas: 7 pods allowed, shared out as 2:1 of the 4 allowed before.
        c.change(|d| d.spec.replicas = Some(6));
        let plan = c.sync();
        assert!(plan.create.is_none());
        assert_eq!(c.summary(), "v1=5 v2=2");
        for rs in &c.rss {
            assert_eq!(
                annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION),
                Some("6")
            );
            assert_eq!(annotation(&rs.metadata, MAX_REPLICAS_ANNOTATION), Some("7"));
        }
        c.settle(|_| true);
        c.converge();
        assert_eq!(c.summary(), "v1=0 v2=6");
    }

    #[test]
    fn scaling_a_finished_deployment_scales_its_only_replicaset() {
        let mut c = Cluster::new(deployment(2, "v1"));
        c.converge();
        c.change(|d| d.spec.replicas = Some(0));
        c.sync();
        assert_eq!(c.summary(), "v1=0");
        c.settle(|_| true);
        c.sync();
        c.change(|d| d.spec.replicas = Some(4));
        c.sync();
        assert_eq!(c.summary(), "v1=4");
        c.converge();
        assert!(rolled_out(&c.d));
    }

    #[test]
    fn progress_deadline() {
        let mut d = with_surge(deployment(3, "v1"), 1, 0);
        d.spec.progress_deadline_seconds = Some(60);
        let mut c = Cluster::new(d);
        c.converge();
        c.set_image("v2");
        c.clock = 100;
        c.sync();
        assert_eq!(reason(&c.d, PROGRESSING), "True/NewReplicaSetCreated");
        c.settle(|image| image == "v1");

        // A new pod appears: progress, lastUpdateTime moves, transition time stays.
        c.clock = 130;
        let plan = c.sync();
        assert_eq!(reason(&c.d, PROGRESSING), "True/ReplicaSetUpdated");
        let progressing = condition(&c.d, PROGRESSING).clone();
        assert_eq!(progressing.last_update_time, Some(Time(at(130))));
        assert_eq!(progressing.last_transition_time, Some(Time(at(0))));
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(60)));

        // Nothing happens.
        c.clock = 160;
        let plan = c.sync();
        assert_eq!(reason(&c.d, PROGRESSING), "True/ReplicaSetUpdated");
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));

        c.clock = 191;
        c.sync();
        assert_eq!(reason(&c.d, PROGRESSING), "False/ProgressDeadlineExceeded");
        assert_eq!(
            condition(&c.d, PROGRESSING).last_transition_time,
            Some(Time(at(191)))
        );
        assert!(!rolled_out(&c.d));

        // The template is fixed: a new rollout starts over.
        c.set_image("v3");
        c.sync();
        assert_eq!(reason(&c.d, PROGRESSING), "True/NewReplicaSetCreated");
        c.converge();
        assert!(rolled_out(&c.d));
        assert_eq!(c.summary(), "v1=0 v2=0 v3=3");
    }

    #[test]
    fn replica_failure_surfaces_on_the_deployment() {
        let mut c = Cluster::new(deployment(2, "v1"));
        c.sync();
        c.rss[0].status = Some(ReplicaSetStatus {
            conditions: Some(vec![ReplicaSetCondition {
                type_: Some(REPLICA_FAILURE.into()),
                status: Some("True".into()),
                reason: Some("FailedCreate".into()),
                message: Some("quota".into()),
                last_transition_time: Some(Time(at(0))),
            }]),
            ..ReplicaSetStatus::default()
        });
        c.sync();
        assert_eq!(reason(&c.d, REPLICA_FAILURE), "True/FailedCreate");
        c.settle(|_| true);
        c.sync();
        assert!(condition_of(c.d.status.as_ref().unwrap(), REPLICA_FAILURE).is_none());
    }

    #[test]
    fn hash_collision_bumps_collision_count() {
        let d = deployment(1, "v2");
        let hash = pod_template_hash(&template("v2"), None);
        // A ReplicaSet of ours already holds the name, with another template.
        let squatter = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("web-{hash}")),
                annotations: Some(labels(&[(REVISION_ANNOTATION, "1")])),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(0),
                template: Some(template("v1")),
                ..ReplicaSetSpec::default()
            },
            status: None,
        };
        let plan = plan_deployment(&d, &[&squatter], at(0));
        let created = plan.create.unwrap();
        let bumped = pod_template_hash(&template("v2"), Some(1));
        assert_eq!(created.metadata.name, Some(format!("web-{bumped}")));
        assert_eq!(plan.status.collision_count, Some(1));
        assert_eq!(plan.revision.as_deref(), Some("2"));
    }

    #[test]
    fn new_replicaset_follows_deployment_annotations_and_min_ready_seconds() {
        let mut c = Cluster::new(deployment(1, "v1"));
        c.converge();
        c.change(|d| {
            d.spec.min_ready_seconds = Some(5);
            d.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(labels(&[
                    ("team", "shop"),
                    ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
                ]));
        });
        let plan = c.sync();
        assert_eq!(plan.scale.len(), 1);
        assert_eq!(plan.scale[0].min_ready_seconds, Some(5));
        assert_eq!(plan.scale[0].annotations, labels(&[("team", "shop")]));
        assert_eq!(plan.scale[0].replicas, 1);
    }

    #[test]
    fn deleted_or_select_all_deployments_do_nothing() {
        let mut d = deployment(2, "v1");
        d.metadata.deletion_timestamp = Some(Time(at(0)));
        let plan = plan_deployment(&d, &[], at(0));
        assert!(plan.create.is_none());
        assert_eq!(plan.status.observed_generation, Some(1));

        let mut d = deployment(2, "v1");
        d.spec.selector = LabelSelector::default();
        let plan = plan_deployment(&d, &[], at(0));
        assert!(plan.create.is_none());
        assert_eq!(plan.status.observed_generation, Some(1));
        assert_eq!(plan.status.conditions, None);
    }
}
