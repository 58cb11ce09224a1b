//! The StatefulSet controller: keeps pods with stable identities (`<set>-<ordinal>`), starts
//! and stops them in order, replaces them when they fail, rolls them over from the highest
//! ordinal down when the template changes, and writes the status `kubectl rollout status
//! statefulset/<name>` reads. The decisions are [`plan_statefulset`], a pure function of one
//! StatefulSet and its pods; this module also holds the loop that applies them.
//!
//! Choices, following kube-controller-manager's `statefulset` package (`stateful_set_control.go`):
//! - **Identity.** Ordinals run from `spec.ordinals.start` (0 when absent) for `spec.replicas`
//!   pods. Pod `<set>-<ordinal>` ([`new_pod`]) carries the template's labels, annotations and
//!   finalizers plus [`POD_NAME_LABEL`], [`POD_INDEX_LABEL`] and [`CONTROLLER_REVISION_HASH`],
//!   `spec.hostname` its own name and `spec.subdomain` the set's `serviceName` (so a headless
//!   Service gives it a stable DNS name), and a controller owner reference (with
//!   `blockOwnerDeletion`). A pod whose name is not `<set>-<ordinal>` is ignored; one with an
//!   ordinal outside the range is *condemned* (deleted). A pod missing the two identity labels
//!   (an adopted one) gets them patched on.
//! - **OrderedReady** (the default `podManagementPolicy`): ordinals are walked upwards and the
//!   walk stops at the first pod that is missing (it is created), terminating, not Running and
//!   Ready, or not yet available for `minReadySeconds`. So web-1 is only created once web-0 is
//!   Running and Ready, and nothing else happens while a pod is starting or stopping. Condemned
//!   pods then go one at a time from the highest ordinal, each waited for until it is gone; one
//!   that is not healthy blocks the scale-down unless it is the lowest unhealthy one (upstream's
//!   `firstUnhealthyPod`). **Parallel**: every missing pod is created and every condemned pod
//!   deleted in one pass, nothing waits.
//! - **Failed or Succeeded pods** are deleted (events `RecreatingFailedPod`, a warning, and
//!   `RecreatingTerminatedPod`) and created again under the same name once they are gone (the
//!   apiserver removes a terminal pod at once), in a later pass rather than the same one.
//! - **Revisions.** The update revision is `<set>-<hash>`, the hash being
//!   [`workload::pod_template_hash`] of the template with `status.collisionCount` (0 when
//!   absent, always counted, as upstream hashes with it); the pods' [`CONTROLLER_REVISION_HASH`]
//!   label holds it. The current revision is `status.currentRevision` (the update revision the
//!   first time) and becomes the update revision once every pod is updated and ready
//!   (`completeRollingUpdate`; never with `OnDelete`).
//! - **RollingUpdate** (the default): after the scaling steps found nothing to wait for, pods
//!   of another revision are deleted from the highest ordinal down to `rollingUpdate.partition`
//!   (an index from the start ordinal, as upstream) while fewer than `maxUnavailable` (int or
//!   percent of `replicas`, rounded up, at least 1, default 1) of the ordinals in range are
//!   unavailable; the replacement is created by the next passes at the update revision. This is
//!   upstream's `MaxUnavailableStatefulSet` path; with the default of 1 it is the classic
//!   one-at-a-time rollout that waits for each updated pod to be Running and Ready. **OnDelete**:
//!   nothing is deleted; a pod someone deletes comes back with the new template.
//! - **Status** (upstream's `updateStatus` over the pods with a valid ordinal, in range or
//!   condemned): `replicas` (pods that exist, terminating ones too), `readyReplicas` (Running
//!   and Ready), `availableReplicas` (and ready for longer than `minReadySeconds`),
//!   `currentReplicas` and `updatedReplicas` (not terminating, at the current / update revision),
//!   `currentRevision`, `updateRevision`, `collisionCount`, `observedGeneration`. `kubectl
//!   rollout status` is done when `observedGeneration` caught up, `readyReplicas` reached
//!   `replicas` and `updatedReplicas` reached `replicas - partition`.
//! - **Claims.** For each `volumeClaimTemplates` entry a pod gets a `persistentVolumeClaim`
//!   volume of that name naming claim `<template>-<set>-<ordinal>` (replacing a template volume of
//!   the same name), as upstream's `updateStorage`. Before creating a pod the loop creates its
//!   claims ([`volume_claims`], labelled with the selector's `matchLabels`; an existing one is
//!   kept). rudder's apiserver does not serve PersistentVolumeClaims yet, and the node runs no
//!   volume of that kind: the claim creation then answers 404, which is logged and skipped (the
//!   pod is still created). `persistentVolumeClaimRetentionPolicy` is not followed (claims are
//!   always retained; no owner references on claims).
//! - **Ownership** as the ReplicaSet controller: orphans the selector matches are adopted, but
//!   only those named `<set>-<ordinal>` (upstream's `isMemberOf`); pods whose labels stopped
//!   matching are released (our owner reference removed). A StatefulSet being deleted only gets
//!   its status; its pods are the garbage collector's.
//! - **Events** as upstream's pod control: `SuccessfulCreate` (`create Pod web-0 in StatefulSet
//!   web successful`, and `create Claim ...`), `SuccessfulDelete`, `SuccessfulUpdate`,
//!   `FailedCreate`, `FailedDelete`, `FailedUpdate`.
//! - Not done: ControllerRevisions (as for DaemonSets: no `kubectl rollout history/undo
//!   statefulset`, and the old template is not kept, so a pod below the partition that is deleted
//!   comes back at the *update* revision where upstream restores the current one), the
//!   `Available`-style status conditions (none upstream either, but other controllers' are kept),
//!   `persistentVolumeClaimRetentionPolicy`, and updating a claim-backed pod's volumes.
//!
//! The loop watches StatefulSets and pods (a pod's change queues its StatefulSet, or for an
//! orphan the StatefulSets that could adopt it). Like the DaemonSet controller it remembers the
//! pods it created and deleted until its cache shows them ([`Writes`]), so a slow watch never
//! makes it create a pod twice or skip a step of the ordered walk.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetStatus},
        core::v1::{
            PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod as ApiPod, Volume,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::cached::Pod;

pub use super::daemonset::CONTROLLER_REVISION_HASH;
use super::{
    Note,
    informer::{Change, Expectations, Informer, Key, WorkQueue, Writes, work},
    record_event, workload,
};

/// Label on every pod of a StatefulSet: the pod's own name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label on every pod of a StatefulSet: its ordinal, in decimal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// How long creations and deletions are waited for before the cache is trusted anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Field manager and event source of this controller.
const MANAGER: &str = "statefulset-controller";

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

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

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Upstream's `isRunningAndReady`.
fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && workload::is_pod_ready(pod)
}

/// Upstream's `isRunningAndAvailable`.
fn running_and_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    phase(pod) == "Running" && workload::is_pod_available(pod, min_ready_seconds, now)
}

/// Upstream's `isHealthy`: Running, Ready and not terminating.
fn is_healthy(pod: &Pod) -> bool {
    running_and_ready(pod) && !is_deleting(pod)
}

/// The revision a pod was made from (its [`CONTROLLER_REVISION_HASH`] label).
fn revision_of(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONTROLLER_REVISION_HASH))
        .map_or("", String::as_str)
}

/// Whether the pod carries the identity labels of `ordinal` (upstream's `identityMatches`,
/// the name being right already).
fn identity_matches(pod: &Pod, name: &str, ordinal: i32) -> bool {
    let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    labels.get(POD_NAME_LABEL).map(String::as_str) == Some(name)
        && labels.get(POD_INDEX_LABEL) == Some(&ordinal.to_string())
}

// ---------------------------------------------------------------------------------------------
// The StatefulSet

fn set_name(set: &StatefulSet) -> &str {
    set.metadata.name.as_deref().unwrap_or_default()
}

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

/// The ordinal of the pod named `name` if it is a pod of the StatefulSet named `set`:
/// `<set>-<ordinal>`, the ordinal in decimal without leading zeros (upstream's `getParentName`
/// and `getOrdinal`, which must give the name back).
pub fn ordinal_of(set: &str, name: &str) -> Option<i32> {
    let digits = name.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ordinal: i32 = digits.parse().ok()?;
    (ordinal.to_string() == digits).then_some(ordinal)
}

/// The name of the StatefulSet's pod with `ordinal`.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set_name(set))
}

/// `spec.ordinals.start`, 0 when absent.
fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0)
}

/// `spec.replicas`, 1 when absent (the API default).
fn replicas(set: &StatefulSet) -> i32 {
    set.spec.replicas.unwrap_or(1).max(0)
}

fn is_parallel(set: &StatefulSet) -> bool {
    set.spec.pod_management_policy.as_deref() == Some("Parallel")
}

fn is_on_delete(set: &StatefulSet) -> bool {
    set.spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete")
}

/// `rollingUpdate.partition`, 0 when absent.
fn partition(set: &StatefulSet) -> i32 {
    set.spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0)
}

/// `rollingUpdate.maxUnavailable` out of `replicas` (rounded up, at least 1; 1 when absent), as
/// upstream's `getStatefulSetMaxUnavailable`.
fn max_unavailable(set: &StatefulSet, replicas: i32) -> usize {
    let value = set
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    let n = match value {
        None => 1,
        Some(v) => workload::scaled_value(Some(v), replicas, true),
    };
    size(n.max(1))
}

fn collision_count(set: &StatefulSet) -> i32 {
    set.status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0)
}

/// The StatefulSet's update revision: `<set>-<hash>`, the hash being
/// [`workload::pod_template_hash`] of the template with the collision count (0 when absent).
/// It is the [`CONTROLLER_REVISION_HASH`] label of the pods made from the current template.
pub fn update_revision(set: &StatefulSet) -> String {
    let hash = workload::pod_template_hash(&set.spec.template, Some(collision_count(set)));
    format!("{}-{hash}", set_name(set))
}

/// The PersistentVolumeClaims the pod with `ordinal` mounts, one per `volumeClaimTemplates`
/// entry: named `<template>-<set>-<ordinal>`, in the set's namespace, with the template's labels
/// and the selector's `matchLabels` (upstream's `getPersistentVolumeClaims`).
pub fn volume_claims(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let name = set_name(set);
    let selector_labels = set.spec.selector.match_labels.clone().unwrap_or_default();
    set.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|template| {
            let template_name = template.metadata.name.as_deref().unwrap_or_default();
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(format!("{template_name}-{name}-{ordinal}")),
                    namespace: set.metadata.namespace.clone(),
                    labels: (!labels.is_empty()).then_some(labels),
                    annotations: template.metadata.annotations.clone(),
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The StatefulSet's pod with `ordinal`, made from the current template and labelled with
/// `revision` (upstream's `newStatefulSetPod`): see the module docs.
pub fn new_pod(set: &StatefulSet, ordinal: i32, revision: &str) -> ApiPod {
    let name = pod_name(set, ordinal);
    let template = &set.spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.to_owned(), name.clone());
    labels.insert(POD_INDEX_LABEL.to_owned(), ordinal.to_string());
    labels.insert(CONTROLLER_REVISION_HASH.to_owned(), revision.to_owned());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set.spec.service_name.clone().filter(|s| !s.is_empty());
    let claims = volume_claims(set, ordinal);
    if !claims.is_empty() {
        let templates: Vec<&str> = set
            .spec
            .volume_claim_templates
            .iter()
            .flatten()
            .map(|t| t.metadata.name.as_deref().unwrap_or_default())
            .collect();
        let mut volumes: Vec<Volume> = templates
            .iter()
            .zip(&claims)
            .map(|(template, claim)| Volume {
                name: (*template).to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.metadata.name.clone().unwrap_or_default(),
                    read_only: None,
                }),
                ..Volume::default()
            })
            .collect();
        volumes.extend(
            spec.volumes
                .take()
                .into_iter()
                .flatten()
                .filter(|v| !templates.contains(&v.name.as_str())),
        );
        spec.volumes = Some(volumes);
    }
    ApiPod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![workload::owner_reference(
                "apps/v1",
                "StatefulSet",
                &set.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The plan

/// A pod to create, with the claims to create before it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Creation {
    /// The pod ([`new_pod`]).
    pub pod: ApiPod,
    /// Its claims ([`volume_claims`]).
    pub claims: Vec<PersistentVolumeClaim>,
}

/// What one StatefulSet pass does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatefulSetPlan {
    /// The revision new pods get ([`update_revision`]).
    pub update_revision: String,
    /// The current revision (`status.currentRevision`, or the update revision).
    pub current_revision: String,
    /// Pods to create, in ordinal order.
    pub create: Vec<Creation>,
    /// Pods to delete (gracefully), in this order.
    pub delete: Vec<String>,
    /// Pods whose identity labels must be set: (name, ordinal).
    pub relabel: Vec<(String, i32)>,
    /// Events decided by the plan (recreating failed pods); the loop adds those of its writes.
    pub events: Vec<Note>,
    /// The status to write (equal to the current one when nothing changes).
    pub status: StatefulSetStatus,
    /// When to look again even if no event comes: when a ready pod becomes available.
    pub requeue_after: Option<Duration>,
}

/// Plans one pass of the StatefulSet controller (upstream's `updateStatefulSet`). `pods`: every
/// pod the StatefulSet controls (controller owner reference with its uid), terminal and
/// terminating ones included. A StatefulSet being deleted only gets its status.
pub fn plan_statefulset(set: &StatefulSet, pods: &[&Pod], now: Timestamp) -> StatefulSetPlan {
    let name = set_name(set);
    let update_revision = update_revision(set);
    let current_revision = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_revision.clone());
    let start = start_ordinal(set);
    let replicas = replicas(set);
    let min_ready = set.spec.min_ready_seconds.unwrap_or(0);
    let monotonic = !is_parallel(set);
    let available = |p: &Pod| running_and_available(p, min_ready, now);

    // Pods by ordinal: in range, or condemned (highest ordinal first). Others are ignored.
    let mut slots: Vec<Option<&Pod>> = vec![None; size(replicas)];
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for &pod in pods {
        let Some(ordinal) = pod
            .metadata
            .name
            .as_deref()
            .and_then(|n| ordinal_of(name, n))
        else {
            continue;
        };
        match ordinal
            .checked_sub(start)
            .and_then(|i| usize::try_from(i).ok())
        {
            Some(i) if i < slots.len() => slots[i] = Some(pod),
            _ => condemned.push((ordinal, pod)),
        }
    }
    condemned.sort_by_key(|c| std::cmp::Reverse(c.0));
    let existing: Vec<&Pod> = slots
        .iter()
        .flatten()
        .copied()
        .chain(condemned.iter().map(|(_, p)| *p))
        .collect();
    let status = statefulset_status(set, &existing, &current_revision, &update_revision, now);
    let mut plan = StatefulSetPlan {
        requeue_after: existing
            .iter()
            .filter(|p| !is_deleting(p))
            .filter_map(|p| workload::until_available(p, min_ready, now))
            .min(),
        status,
        update_revision,
        current_revision,
        ..StatefulSetPlan::default()
    };
    if set.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let namespace = set.metadata.namespace.as_deref().unwrap_or_default();

    // Upstream's `processReplica`, ordinal by ordinal; in OrderedReady mode the first pod that
    // is not there, or not healthy and available, ends the pass.
    for (i, slot) in slots.iter().enumerate() {
        let ordinal = start.saturating_add(count(i));
        let Some(pod) = *slot else {
            plan.create.push(Creation {
                pod: new_pod(set, ordinal, &plan.update_revision),
                claims: volume_claims(set, ordinal),
            });
            if monotonic {
                return plan;
            }
            continue;
        };
        let pod_name = name_of(pod);
        if is_terminal(pod) {
            if !is_deleting(pod) {
                let note = if phase(pod) == "Failed" {
                    Note::warning(
                        "RecreatingFailedPod",
                        format!(
                            "StatefulSet {namespace}/{name} is recreating failed Pod {pod_name}"
                        ),
                    )
                } else {
                    Note::normal(
                        "RecreatingTerminatedPod",
                        format!(
                            "StatefulSet {namespace}/{name} is recreating terminated Pod {pod_name}"
                        ),
                    )
                };
                plan.events.push(note);
                plan.delete.push(pod_name);
            }
            if monotonic {
                return plan;
            }
            continue;
        }
        if monotonic && (is_deleting(pod) || !running_and_ready(pod) || !available(pod)) {
            return plan;
        }
        if !is_deleting(pod) && !identity_matches(pod, &pod_name, ordinal) {
            plan.relabel.push((pod_name, ordinal));
        }
    }

    // Upstream's `processCondemned`, highest ordinal first. In OrderedReady mode every pod in
    // range is healthy here; one condemned pod is handled per pass, and an unhealthy one only
    // goes if it is the lowest unhealthy pod.
    let first_unhealthy = condemned
        .iter()
        .rev()
        .find(|(_, p)| !is_healthy(p))
        .map(|(o, _)| *o);
    for &(ordinal, pod) in &condemned {
        if is_deleting(pod) {
            if monotonic {
                return plan;
            }
            continue;
        }
        let first = first_unhealthy == Some(ordinal);
        if monotonic && !first && (!running_and_ready(pod) || !available(pod)) {
            return plan;
        }
        plan.delete.push(name_of(pod));
        if monotonic {
            return plan;
        }
    }

    // The rolling update: with OnDelete, pods are replaced only when someone deletes them.
    if is_on_delete(set) {
        return plan;
    }
    let budget = max_unavailable(set, replicas);
    let unavailable = slots
        .iter()
        .filter(|s| s.is_none_or(|p| is_deleting(p) || !available(p)))
        .count();
    if unavailable >= budget {
        return plan;
    }
    let mut room = budget - unavailable;
    let partition = size(partition(set));
    for (i, slot) in slots.iter().enumerate().rev() {
        if i < partition || room == 0 {
            break;
        }
        let Some(pod) = *slot else { continue };
        if revision_of(pod) != plan.update_revision && !is_deleting(pod) {
            let pod_name = name_of(pod);
            if !plan.delete.contains(&pod_name) {
                plan.delete.push(pod_name);
                room -= 1;
            }
        }
    }
    plan
}

/// Upstream's `updateStatus` over `pods` (those with a valid ordinal) and
/// `completeRollingUpdate` (see the module docs).
fn statefulset_status(
    set: &StatefulSet,
    pods: &[&Pod],
    current_revision: &str,
    update_revision: &str,
    now: Timestamp,
) -> StatefulSetStatus {
    let min_ready = set.spec.min_ready_seconds.unwrap_or(0);
    let (mut ready, mut available, mut current, mut updated) = (0usize, 0usize, 0usize, 0usize);
    for &pod in pods {
        if running_and_ready(pod) {
            ready += 1;
            if running_and_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if !is_deleting(pod) {
            let revision = revision_of(pod);
            if revision == current_revision {
                current += 1;
            }
            if revision == update_revision {
                updated += 1;
            }
        }
    }
    let mut status = set.status.clone().unwrap_or_default();
    status.observed_generation = set.metadata.generation.filter(|g| *g != 0);
    status.replicas = count(pods.len());
    status.ready_replicas = non_zero(count(ready));
    status.available_replicas = Some(count(available));
    status.current_replicas = non_zero(count(current));
    status.updated_replicas = non_zero(count(updated));
    status.current_revision = Some(current_revision.to_owned());
    status.update_revision = Some(update_revision.to_owned());
    status.collision_count = Some(collision_count(set));
    if !is_on_delete(set) && updated == pods.len() && ready == pods.len() {
        status.current_replicas = status.updated_replicas;
        status.current_revision = status.update_revision.clone();
    }
    status
}

// ---------------------------------------------------------------------------------------------
// The loop

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// StatefulSets.
    pub statefulsets: Arc<Informer<StatefulSet>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
}

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut statefulsets = caches.statefulsets.subscribe();
    let mut pods = caches.pods.subscribe();
    caches.statefulsets.synced().await;
    caches.pods.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for set in caches.statefulsets.store().state() {
                queue.add(Key::of(&*set));
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
                    change = statefulsets.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|s| queue.add(Key::of(&**s))),
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
    let work = work(queue, "syncing stateful set", |key| {
        let (client, caches, expected) = (&client, &caches, &expected);
        async move {
            if !expected.caught_up(&key, |exp: &Writes| {
                exp.shown(caches.pods.store(), &key.namespace)
            }) {
                return Ok(Some(Duration::from_millis(500)));
            }
            let mut exp = Writes::default();
            let result = reconcile(client, caches, &key, &mut exp).await;
            expected.record(key, (!exp.is_empty()).then_some(exp));
            result
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

/// StatefulSets to look at when `pod` changes: its controller if that is a StatefulSet, or for
/// an orphan every StatefulSet of its namespace that could adopt it (its name is
/// `<set>-<ordinal>` and the selector matches).
fn owners_of(caches: &Caches, pod: &Pod) -> Vec<Key> {
    let all = caches.statefulsets.store().state();
    match workload::controller_of(&pod.metadata) {
        Some(owner) if owner.kind == "StatefulSet" => all
            .iter()
            .filter(|s| s.metadata.uid.as_deref() == Some(owner.uid.as_str()))
            .map(|s| Key::of(&**s))
            .collect(),
        Some(_) => Vec::new(),
        None => {
            let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            all.iter()
                .filter(|s| s.metadata.namespace == pod.metadata.namespace)
                .filter(|s| {
                    ordinal_of(s.metadata.name.as_deref().unwrap_or_default(), name).is_some()
                })
                .filter(|s| workload::selector_matches(&s.spec.selector, labels))
                .map(|s| Key::of(&**s))
                .collect()
        }
    }
}

/// Creates one pod after its claims; returns the pod's name or the error, with the events.
async fn create_pod(
    client: &Client,
    set: &StatefulSet,
    creation: &Creation,
    pp: &PostParams,
) -> (Result<String, kube::Error>, Vec<Note>) {
    let namespace = set.metadata.namespace.clone().unwrap_or_default();
    let set_name = set_name(set);
    let pod_name = creation.pod.metadata.name.clone().unwrap_or_default();
    let mut notes = Vec::new();
    if !creation.claims.is_empty() {
        let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
        for claim in &creation.claims {
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            match claims_api.create(pp, claim).await {
                Ok(_) => notes.push(Note::normal(
                    "SuccessfulCreate",
                    format!(
                        "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                    ),
                )),
                // Already there: claims outlive their pods.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                // PersistentVolumeClaims are not served: the pod goes without them.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    tracing::debug!(
                        pod = %pod_name,
                        claim = %claim_name,
                        "persistentvolumeclaims are not served; not creating the claim"
                    );
                    break;
                }
                Err(e) => {
                    notes.push(Note::warning(
                        "FailedCreate",
                        format!(
                            "create Claim {claim_name} for Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
                        ),
                    ));
                    return (Err(e), notes);
                }
            }
        }
    }
    let pods_api: Api<ApiPod> = Api::namespaced(client.clone(), &namespace);
    match pods_api.create(pp, &creation.pod).await {
        Ok(_) => {
            notes.push(Note::normal(
                "SuccessfulCreate",
                format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
            ));
            (Ok(pod_name), notes)
        }
        Err(e) => {
            notes.push(Note::warning(
                "FailedCreate",
                format!("create Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
            ));
            (Err(e), notes)
        }
    }
}

/// Adopts the orphans `set` should own and releases the pods it should not; returns how many
/// pods it changed (their watch events queue the set again).
async fn claim_pods(
    pods_api: &Api<ApiPod>,
    set: &StatefulSet,
    key: &Key,
    all: &[Arc<Pod>],
) -> Result<usize, kube::Error> {
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let selector = &set.spec.selector;
    let mut changed = 0;
    for pod in all
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
    {
        let name = name_of(pod);
        let owners: Vec<OwnerReference> = if workload::should_adopt(selector, &pod.metadata)
            && ordinal_of(&key.name, &name).is_some()
        {
            let mut owners = pod.metadata.owner_references.clone().unwrap_or_default();
            owners.push(workload::owner_reference(
                "apps/v1",
                "StatefulSet",
                &set.metadata,
            ));
            owners
        } else if workload::is_controlled_by(&pod.metadata, &uid)
            && pod.metadata.deletion_timestamp.is_none()
            && workload::should_release(selector, &pod.metadata)
        {
            pod.metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != uid)
                .cloned()
                .collect()
        } else {
            continue;
        };
        // An emptied list is removed, as Kubernetes (omitempty) shows it.
        let owners = if owners.is_empty() {
            serde_json::Value::Null
        } else {
            json!(owners)
        };
        let patch = json!({"metadata": {
            "ownerReferences": owners,
            "resourceVersion": pod.metadata.resource_version,
        }});
        match pods_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(statefulset = %key, pod = %name, "adopted or released pod"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e),
        }
        changed += 1;
    }
    Ok(changed)
}

/// One pass over one StatefulSet: records in `exp` what it expects to see, and returns when to
/// look again.
async fn reconcile(
    client: &Client,
    caches: &Caches,
    key: &Key,
    exp: &mut Writes,
) -> Result<Option<Duration>, kube::Error> {
    let Some(set) = caches.statefulsets.store().get(&key.object_ref()) else {
        return Ok(None);
    };
    // Upstream refuses a selector that selects everything (validation should have, too).
    if workload::selector_is_empty(&set.spec.selector) {
        tracing::warn!(statefulset = %key, "empty selector selects every pod; not syncing");
        return Ok(None);
    }
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<ApiPod> = Api::namespaced(client.clone(), &key.namespace);
    let all = caches.pods.store().state();
    if set.metadata.deletion_timestamp.is_none()
        && claim_pods(&pods_api, &set, key, &all).await? > 0
    {
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
    let plan = plan_statefulset(&set, &owned, Timestamp::now());
    tracing::debug!(
        statefulset = %key,
        create = plan.create.len(),
        delete = plan.delete.len(),
        relabel = plan.relabel.len(),
        "planned"
    );
    let mut failure: Option<kube::Error> = None;
    let mut notes: Vec<Note> = plan.events.clone();
    // Creations in batches of 1, 2, 4, ... (upstream's slowStartBatch): a template the
    // apiserver rejects fails once. OrderedReady plans at most one.
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let mut left: &[Creation] = &plan.create;
    let mut batch = 1usize;
    while !left.is_empty() && failure.is_none() {
        let (these, rest) = left.split_at(batch.min(left.len()));
        let results =
            futures::future::join_all(these.iter().map(|c| create_pod(client, &set, c, &pp))).await;
        // Every success of the batch is recorded before the first error stops the rest.
        for (result, made) in results {
            notes.extend(made);
            match result {
                Ok(name) => {
                    tracing::debug!(statefulset = %key, pod = %name, "created pod");
                    exp.created.insert(name);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        left = rest;
        batch = batch.saturating_mul(2);
    }
    for name in &plan.delete {
        if failure.is_some() {
            break;
        }
        match pods_api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::debug!(statefulset = %key, pod = %name, "deleted pod");
                notes.push(Note::normal(
                    "SuccessfulDelete",
                    format!("delete Pod {name} in StatefulSet {} successful", key.name),
                ));
                exp.deleted.insert(name.clone());
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                notes.push(Note::warning(
                    "FailedDelete",
                    format!(
                        "delete Pod {name} in StatefulSet {} failed error: {e}",
                        key.name
                    ),
                ));
                failure = Some(e);
            }
        }
    }
    let mp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    for (name, ordinal) in &plan.relabel {
        if failure.is_some() {
            break;
        }
        let labels = BTreeMap::from([
            (POD_NAME_LABEL.to_owned(), name.clone()),
            (POD_INDEX_LABEL.to_owned(), ordinal.to_string()),
        ]);
        let patch = json!({"metadata": {"labels": labels}});
        match pods_api.patch(name, &mp, &Patch::Merge(&patch)).await {
            Ok(_) => notes.push(Note::normal(
                "SuccessfulUpdate",
                format!("update Pod {name} in StatefulSet {} successful", key.name),
            )),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                notes.push(Note::warning(
                    "FailedUpdate",
                    format!(
                        "update Pod {name} in StatefulSet {} failed error: {e}",
                        key.name
                    ),
                ));
                failure = Some(e);
            }
        }
    }
    futures::future::join_all(
        notes
            .iter()
            .map(|note| record_event(client, &*set, MANAGER, note)),
    )
    .await;
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &key.namespace);
    if set.status.as_ref() != Some(&plan.status) {
        let mut next = (*set).clone();
        next.status = Some(plan.status.clone());
        super::replace_status(&api, &key.name, &next).await?;
    }
    match failure {
        Some(e) => Err(e),
        // Look again when a ready pod becomes available.
        None => Ok(plan.requeue_after),
    }
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

    /// StatefulSet `ns/web` (3 replicas, serviceName `web`, OrderedReady, RollingUpdate) with
    /// the keys of `spec` replacing its spec's.
    fn statefulset(spec: Value) -> StatefulSet {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "set-uid", "generation": 2},
            "spec": {
                "replicas": 3,
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "agnhost"}]},
                },
            },
        });
        if let (Some(base), Value::Object(extra)) = (v["spec"].as_object_mut(), spec) {
            for (k, value) in extra {
                base.insert(k, value);
            }
        }
        serde_json::from_value(v).unwrap()
    }

    /// `set` whose status says the pods of `web-old` are the current revision.
    fn rolled(mut set: StatefulSet) -> StatefulSet {
        set.status = Some(StatefulSetStatus {
            current_revision: Some("web-old".into()),
            ..StatefulSetStatus::default()
        });
        set
    }

    /// Pod `name` of the test set at `revision`; `ready_since` in seconds after the epoch of
    /// [`at`] (None: not ready).
    fn pod(name: &str, revision: &str, phase: &str, ready_since: Option<i64>) -> Pod {
        let ready = if ready_since.is_some() {
            "True"
        } else {
            "False"
        };
        let index = name.rsplit('-').next().unwrap();
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "namespace": "ns",
                "labels": {
                    "app": "web",
                    "controller-revision-hash": revision,
                    "statefulset.kubernetes.io/pod-name": name,
                    "apps.kubernetes.io/pod-index": index,
                },
                "creationTimestamp": ts(0),
            },
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase, "conditions": [{
                "type": "Ready",
                "status": ready,
                "lastTransitionTime": ready_since.map(ts),
            }]},
        }))
        .unwrap()
    }

    fn deleting(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(Time(at(50)));
        pod
    }

    fn plan(set: &StatefulSet, pods: &[Pod]) -> StatefulSetPlan {
        let pods: Vec<&Pod> = pods.iter().collect();
        plan_statefulset(set, &pods, at(100))
    }

    fn created(plan: &StatefulSetPlan) -> Vec<String> {
        plan.create
            .iter()
            .map(|c| c.pod.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    fn idle(plan: &StatefulSetPlan) -> bool {
        plan.create.is_empty() && plan.delete.is_empty() && plan.relabel.is_empty()
    }

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web-1", "web-1-0"), Some(0));
        for other in [
            "web-01", "web-1-0", "webx-0", "web-", "web-x", "web", "db-0",
        ] {
            assert_eq!(ordinal_of("web", other), None, "{other}");
        }
    }

    #[test]
    fn ordered_ready_creates_one_pod_after_another() {
        let set = statefulset(json!({}));
        let rev = update_revision(&set);
        let p = plan(&set, &[]);
        assert_eq!(created(&p), ["web-0"]);
        assert!(p.delete.is_empty());
        // web-0 pending, running but not ready, or terminating: web-1 waits.
        for waiting in [
            pod("web-0", &rev, "Pending", None),
            pod("web-0", &rev, "Running", None),
            deleting(pod("web-0", &rev, "Running", Some(0))),
        ] {
            let p = plan(&set, &[waiting]);
            assert!(idle(&p), "{p:?}");
        }
        let p = plan(&set, &[pod("web-0", &rev, "Running", Some(0))]);
        assert_eq!(created(&p), ["web-1"]);
        let p = plan(
            &set,
            &[
                pod("web-0", &rev, "Running", Some(0)),
                pod("web-1", &rev, "Running", Some(0)),
            ],
        );
        assert_eq!(created(&p), ["web-2"]);
        // A missing lower ordinal comes first.
        let p = plan(&set, &[pod("web-1", &rev, "Running", Some(0))]);
        assert_eq!(created(&p), ["web-0"]);
    }

    #[test]
    fn ordered_ready_waits_for_min_ready_seconds() {
        let set = statefulset(json!({"minReadySeconds": 30}));
        let rev = update_revision(&set);
        // Ready since 90, now is 100: available at 120.
        let p = plan(&set, &[pod("web-0", &rev, "Running", Some(90))]);
        assert!(idle(&p), "{p:?}");
        let wait = p.requeue_after.unwrap();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(21),
            "{wait:?}"
        );
        let p = plan(&set, &[pod("web-0", &rev, "Running", Some(50))]);
        assert_eq!(created(&p), ["web-1"]);
    }

    #[test]
    fn parallel_creates_and_deletes_at_once() {
        let set = statefulset(json!({"podManagementPolicy": "Parallel"}));
        let rev = update_revision(&set);
        assert_eq!(created(&plan(&set, &[])), ["web-0", "web-1", "web-2"]);
        let p = plan(&set, &[pod("web-1", &rev, "Pending", None)]);
        assert_eq!(created(&p), ["web-0", "web-2"]);
        let one = statefulset(json!({"podManagementPolicy": "Parallel", "replicas": 1}));
        let pods = ["web-0", "web-1", "web-2"].map(|n| pod(n, &rev, "Running", None));
        let p = plan(&one, &pods);
        assert!(p.create.is_empty());
        assert_eq!(p.delete, ["web-2", "web-1"]);
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal_one_at_a_time() {
        let set = statefulset(json!({"replicas": 1}));
        let rev = update_revision(&set);
        let ready = |n: &str| pod(n, &rev, "Running", Some(0));
        let p = plan(&set, &[ready("web-0"), ready("web-1"), ready("web-2")]);
        assert_eq!(p.delete, ["web-2"]);
        assert!(p.create.is_empty());
        // web-2 still terminating: web-1 waits.
        let p = plan(
            &set,
            &[ready("web-0"), ready("web-1"), deleting(ready("web-2"))],
        );
        assert!(idle(&p), "{p:?}");
        assert_eq!(p.status.replicas, 3);
        let p = plan(&set, &[ready("web-0"), ready("web-1")]);
        assert_eq!(p.delete, ["web-1"]);
        // A survivor that is not ready holds the scale-down.
        let p = plan(&set, &[pod("web-0", &rev, "Running", None), ready("web-1")]);
        assert!(idle(&p), "{p:?}");
        // An unhealthy condemned pod goes if it is the lowest unhealthy one; a healthy one
        // above it goes first anyway.
        let p = plan(
            &set,
            &[
                ready("web-0"),
                pod("web-1", &rev, "Pending", None),
                ready("web-2"),
            ],
        );
        assert_eq!(p.delete, ["web-2"]);
        let p = plan(&set, &[ready("web-0"), pod("web-1", &rev, "Pending", None)]);
        assert_eq!(p.delete, ["web-1"]);
    }

    #[test]
    fn terminal_pods_are_recreated_with_the_same_name() {
        let set = statefulset(json!({}));
        let rev = update_revision(&set);
        let p = plan(&set, &[pod("web-0", &rev, "Failed", None)]);
        assert_eq!(p.delete, ["web-0"]);
        assert!(p.create.is_empty());
        assert_eq!(
            p.events,
            [Note::warning(
                "RecreatingFailedPod",
                "StatefulSet ns/web is recreating failed Pod web-0"
            )]
        );
        // Once it is gone, the same name comes back.
        assert_eq!(created(&plan(&set, &[])), ["web-0"]);
        let p = plan(
            &set,
            &[
                pod("web-0", &rev, "Running", Some(0)),
                pod("web-1", &rev, "Succeeded", None),
            ],
        );
        assert_eq!(p.delete, ["web-1"]);
        assert_eq!(
            p.events,
            [Note::normal(
                "RecreatingTerminatedPod",
                "StatefulSet ns/web is recreating terminated Pod web-1"
            )]
        );
        // In Parallel mode the others are not held up.
        let parallel = statefulset(json!({"podManagementPolicy": "Parallel"}));
        let p = plan(&parallel, &[pod("web-0", &rev, "Failed", None)]);
        assert_eq!(p.delete, ["web-0"]);
        assert_eq!(created(&p), ["web-1", "web-2"]);
    }

    #[test]
    fn rolling_update_goes_from_the_highest_ordinal_down() {
        let set = rolled(statefulset(json!({})));
        let new = update_revision(&set);
        let at_rev = |n: &str, r: &str| pod(n, r, "Running", Some(0));
        let p = plan(
            &set,
            &[
                at_rev("web-0", "web-old"),
                at_rev("web-1", "web-old"),
                at_rev("web-2", "web-old"),
            ],
        );
        assert_eq!(p.delete, ["web-2"]);
        assert!(p.create.is_empty());
        assert_eq!(
            (
                p.status.current_replicas,
                p.status.updated_replicas,
                p.status.current_revision.as_deref()
            ),
            (Some(3), None, Some("web-old"))
        );
        // The deleted pod comes back at the update revision before anything else goes.
        let p = plan(
            &set,
            &[at_rev("web-0", "web-old"), at_rev("web-1", "web-old")],
        );
        assert_eq!(created(&p), ["web-2"]);
        assert!(p.delete.is_empty());
        let labels = p.create[0].pod.metadata.labels.clone().unwrap();
        assert_eq!(labels.get(CONTROLLER_REVISION_HASH), Some(&new));
        // Not ready yet: the rollout waits.
        let p = plan(
            &set,
            &[
                at_rev("web-0", "web-old"),
                at_rev("web-1", "web-old"),
                pod("web-2", &new, "Running", None),
            ],
        );
        assert!(idle(&p), "{p:?}");
        // Ready: the next one down.
        let p = plan(
            &set,
            &[
                at_rev("web-0", "web-old"),
                at_rev("web-1", "web-old"),
                at_rev("web-2", &new),
            ],
        );
        assert_eq!(p.delete, ["web-1"]);
        assert_eq!(
            (p.status.current_replicas, p.status.updated_replicas),
            (Some(2), Some(1))
        );
        // All updated and ready: the update revision becomes current.
        let p = plan(
            &set,
            &[
                at_rev("web-0", &new),
                at_rev("web-1", &new),
                at_rev("web-2", &new),
            ],
        );
        assert!(idle(&p), "{p:?}");
        assert_eq!(p.status.current_revision.as_deref(), Some(new.as_str()));
        assert_eq!(p.status.update_revision.as_deref(), Some(new.as_str()));
        assert_eq!(
            (p.status.current_replicas, p.status.updated_replicas),
            (Some(3), Some(3))
        );
    }

    #[test]
    fn rolling_update_honours_the_partition() {
        let set = rolled(statefulset(json!({
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        })));
        let new = update_revision(&set);
        let at_rev = |n: &str, r: &str| pod(n, r, "Running", Some(0));
        let p = plan(
            &set,
            &[
                at_rev("web-0", "web-old"),
                at_rev("web-1", "web-old"),
                at_rev("web-2", "web-old"),
            ],
        );
        assert_eq!(p.delete, ["web-2"]);
        let p = plan(
            &set,
            &[
                at_rev("web-0", "web-old"),
                at_rev("web-1", "web-old"),
                at_rev("web-2", &new),
            ],
        );
        assert!(idle(&p), "{p:?}");
        // Partly rolled: the old revision stays current.
        assert_eq!(p.status.updated_replicas, Some(1));
        assert_eq!(p.status.current_revision.as_deref(), Some("web-old"));
    }

    #[test]
    fn max_unavailable_deletes_several() {
        let set = rolled(statefulset(json!({
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}},
        })));
        let new = update_revision(&set);
        let old = |n: &str| pod(n, "web-old", "Running", Some(0));
        let p = plan(&set, &[old("web-0"), old("web-1"), old("web-2")]);
        assert_eq!(p.delete, ["web-2", "web-1"]);
        // A new pod not ready yet takes one of the two.
        let p = plan(
            &set,
            &[
                old("web-0"),
                old("web-1"),
                pod("web-2", &new, "Running", None),
            ],
        );
        assert_eq!(p.delete, ["web-1"]);
    }

    #[test]
    fn on_delete_only_gives_new_pods_the_new_template() {
        let set = rolled(statefulset(json!({"updateStrategy": {"type": "OnDelete"}})));
        let new = update_revision(&set);
        let old = |n: &str| pod(n, "web-old", "Running", Some(0));
        let p = plan(&set, &[old("web-0"), old("web-1")]);
        assert!(p.delete.is_empty());
        assert_eq!(created(&p), ["web-2"]);
        let labels = p.create[0].pod.metadata.labels.clone().unwrap();
        assert_eq!(labels.get(CONTROLLER_REVISION_HASH), Some(&new));
        // Every pod updated, but OnDelete never moves the current revision.
        let fresh = |n: &str| pod(n, &new, "Running", Some(0));
        let p = plan(&set, &[fresh("web-0"), fresh("web-1"), fresh("web-2")]);
        assert_eq!(p.status.current_revision.as_deref(), Some("web-old"));
    }

    #[test]
    fn status_counts_pods_with_valid_ordinals() {
        let set = rolled(statefulset(json!({"minReadySeconds": 30})));
        let new = update_revision(&set);
        let pods = [
            // Ready and available, old revision.
            pod("web-0", "web-old", "Running", Some(0)),
            // Ready, not yet available.
            pod("web-1", &new, "Running", Some(90)),
            // Ready and available, but terminating: neither current nor updated.
            deleting(pod("web-2", &new, "Running", Some(0))),
            // Condemned, pending.
            pod("web-7", "web-old", "Pending", None),
            // Not a pod of this set by its name.
            pod("other-0", &new, "Running", Some(0)),
        ];
        let s = plan(&set, &pods).status;
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.available_replicas,
                s.current_replicas,
                s.updated_replicas
            ),
            (4, Some(3), Some(2), Some(2), Some(1))
        );
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.current_revision.as_deref(), Some("web-old"));
        assert_eq!(s.update_revision.as_deref(), Some(new.as_str()));
        assert_eq!(s.collision_count, Some(0));
        // The hash counts the collision count, and only the template.
        assert!(new.starts_with("web-"));
        let mut bumped = set.clone();
        bumped.status.as_mut().unwrap().collision_count = Some(1);
        assert_ne!(update_revision(&bumped), new);
        let mut scaled = set.clone();
        scaled.spec.replicas = Some(9);
        assert_eq!(update_revision(&scaled), new);
    }

    #[test]
    fn new_pods_have_stable_identities_and_claims() {
        let set = statefulset(json!({
            "replicas": 2,
            "ordinals": {"start": 5},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
                "spec": {
                    "containers": [{"name": "c", "image": "agnhost"}],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": {"tier": "db"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
        }));
        let rev = update_revision(&set);
        let p = plan(&set, &[]);
        assert_eq!(created(&p), ["web-5"]);
        let Creation { pod: made, claims } = p.create[0].clone();
        assert_eq!(made.metadata.namespace.as_deref(), Some("ns"));
        let labels = made.metadata.labels.clone().unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            labels.get(POD_NAME_LABEL).map(String::as_str),
            Some("web-5")
        );
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("5"));
        assert_eq!(labels.get(CONTROLLER_REVISION_HASH), Some(&rev));
        assert_eq!(
            made.metadata
                .annotations
                .clone()
                .unwrap()
                .get("a")
                .map(String::as_str),
            Some("b")
        );
        let owner = workload::controller_of(&made.metadata).unwrap();
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.block_owner_deletion
            ),
            ("StatefulSet", "web", "set-uid", Some(true))
        );
        let spec = made.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-5"));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let volumes: Vec<(String, Option<String>)> = spec
            .volumes
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.persistent_volume_claim.map(|c| c.claim_name)))
            .collect();
        assert_eq!(
            volumes,
            [
                ("data".to_owned(), Some("data-web-5".to_owned())),
                ("cache".to_owned(), None),
            ]
        );
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-5"));
        assert_eq!(claims[0].metadata.namespace.as_deref(), Some("ns"));
        let claim_labels = claims[0].metadata.labels.clone().unwrap();
        assert_eq!(claim_labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(claim_labels.get("tier").map(String::as_str), Some("db"));
        // Below the start ordinal is out of range: condemned once the others are healthy.
        let ready = |n: &str| pod(n, &rev, "Running", Some(0));
        let p = plan(&set, &[ready("web-0"), ready("web-5"), ready("web-6")]);
        assert_eq!(p.delete, ["web-0"]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn adopted_pods_get_their_identity_labels() {
        let set = statefulset(json!({"replicas": 1}));
        let rev = update_revision(&set);
        let mut bare = pod("web-0", &rev, "Running", Some(0));
        let labels = bare.metadata.labels.as_mut().unwrap();
        labels.remove(POD_NAME_LABEL);
        labels.remove(POD_INDEX_LABEL);
        let p = plan(&set, &[bare]);
        assert_eq!(p.relabel, [("web-0".to_owned(), 0)]);
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn deleted_statefulset_only_gets_status() {
        let mut set = statefulset(json!({"replicas": 1}));
        set.metadata.deletion_timestamp = Some(Time(at(0)));
        let rev = update_revision(&set);
        let p = plan(
            &set,
            &[
                pod("web-1", &rev, "Running", Some(0)),
                pod("web-2", &rev, "Failed", None),
            ],
        );
        assert!(idle(&p), "{p:?}");
        assert_eq!(p.status.replicas, 2);
    }
}
