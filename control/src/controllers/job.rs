//! The Job controller: runs each Job's pods until enough of them succeed, or until the Job
//! fails, and writes the status `kubectl wait --for=condition=complete` reads. The decisions are
//! [`plan_job`]; the loop around it is [`run`].
//!
//! What it follows, as kube-controller-manager's Job controller does:
//! - `completions` (unset: a work queue, done once any pod succeeded and none is left running)
//!   and `parallelism` (at most that many pods run, and never more than the completions left);
//! - `completionMode: Indexed`: one pod per index in `0..completions`, each with the
//!   `batch.kubernetes.io/job-completion-index` annotation and label, the hostname
//!   `<job>-<index>` and the `JOB_COMPLETION_INDEX` variable, and `status.completedIndexes`;
//! - `backoffLimit` (default 6): more failed pods than that fail the Job with reason
//!   `BackoffLimitExceeded` (with `restartPolicy: OnFailure`, container restarts count); a
//!   failed pod is replaced after a delay that doubles from 10 s to 10 min per failure since
//!   the last success;
//! - `activeDeadlineSeconds`: the Job fails with reason `DeadlineExceeded` that long after it
//!   started (or was last resumed);
//! - `suspend`: running pods are deleted, the `Suspended` condition is set, and the deadline
//!   clock stops (`startTime` is cleared and set again on resume);
//! - `podReplacementPolicy: Failed`: pods being deleted are waited for before replacements come;
//! - the interim conditions of Kubernetes 1.31 and later: a failing Job first gets
//!   `FailureTarget` (and a succeeding one `SuccessCriteriaMet`), its running pods are deleted,
//!   and `Failed` (or `Complete`, with `completionTime`) follows once no pod is terminating;
//! - `ttlSecondsAfterFinished` (the TTL-after-finished controller's job): a finished Job is
//!   deleted, propagation Background, that long after it finished;
//! - `spec.managedBy` other than `kubernetes.io/job-controller`: the Job is left alone.
//!
//! Pods are found by their controller owner reference (the Job's uid), not by `spec.selector`:
//! the apiserver does not generate the selector, and the reference is right either way. The
//! controller puts the labels Kubernetes' generated selector uses
//! (`batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name` and the older
//! `controller-uid`, `job-name`) on every pod it creates; orphans are not adopted.
//!
//! Counting differs from Kubernetes in one way: there is no `batch.kubernetes.io/job-tracking`
//! finalizer, so `status.succeeded` and `status.failed` are counted from the pods present, never
//! decreasing below what the status already says, and `uncountedTerminatedPods` stays unset. A
//! pod being deleted counts neither as a success nor as a failure (Kubernetes counts a pod
//! deleted while running as failed), so suspending a Job or lowering its parallelism never
//! spends its backoff limit. `podFailurePolicy`, `successPolicy` and `backoffLimitPerIndex`
//! are not followed.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, JobSpec, JobStatus},
        core::v1::{Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod as ApiPod},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams, Preconditions, PropagationPolicy},
};

use crate::cached::Pod;

use super::{
    Note,
    informer::{Change, Expectations, Informer, Key, WorkQueue, Writes, work},
    record_event, workload,
};

/// Label and annotation of an Indexed Job's pod: its completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The variable an Indexed Job's containers find their completion index in.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// Pod label: the uid of the Job that made the pod.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Pod label: the name of the Job that made the pod.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The older spelling of [`CONTROLLER_UID_LABEL`], which Kubernetes still sets.
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
/// The older spelling of [`JOB_NAME_LABEL`], which Kubernetes still sets.
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
/// Default `backoffLimit`.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 6;
/// Most completions an Indexed Job may ask for (Kubernetes' validation limit without
/// `backoffLimitPerIndex`); the controller holds the completed indexes in memory.
pub const MAX_INDEXED_COMPLETIONS: usize = 100_000;
/// The `spec.managedBy` value that means this controller.
pub const MANAGED_BY: &str = "kubernetes.io/job-controller";

/// Delay before a failed pod is replaced, doubled for each further failure since the last
/// success (Kubernetes' `DefaultJobPodFailureBackOff`).
const POD_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// Longest replacement delay (`MaxJobPodFailureBackOff`).
const MAX_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

// Condition types and reasons, as in k8s.io/api/batch/v1.
const COMPLETE: &str = "Complete";
const FAILED: &str = "Failed";
const SUSPENDED: &str = "Suspended";
const FAILURE_TARGET: &str = "FailureTarget";
const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
/// Reason of `Failed`: more failed pods than `backoffLimit`.
pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
/// Reason of `Failed`: running longer than `activeDeadlineSeconds`.
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
/// Reason of `Complete`.
pub const COMPLETIONS_REACHED: &str = "CompletionsReached";
/// Reason of `Failed` for a spec the apiserver should have refused (Indexed without
/// completions, an unknown completion mode); rudder's own, Kubernetes rejects these on create.
pub const INVALID_SPEC: &str = "InvalidSpec";

// ---------------------------------------------------------------------------------------------
// Pods

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// Does the pod count as a success (`"Succeeded"`) or failure (`"Failed"`): in that phase and
/// not being deleted?
fn counts_as(pod: &Pod, wanted: &str) -> bool {
    pod.metadata.deletion_timestamp.is_none() && phase(pod) == Some(wanted)
}

fn pod_name(pod: &Pod) -> Option<String> {
    pod.metadata.name.clone()
}

/// An Indexed Job pod's completion index (annotation, else label).
fn completion_index(pod: &Pod) -> Option<usize> {
    let meta = &pod.metadata;
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(COMPLETION_INDEX)))
        .and_then(|v| v.parse().ok())
}

/// When a pod finished: its containers' last termination, else its creation.
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The order in which surplus running pods are deleted: unscheduled first, then not ready,
/// then the newest (the least work lost), then by name. Reversed, it ranks the pod to keep
/// first.
fn removal_order(a: &&Pod, b: &&Pod) -> Ordering {
    let scheduled = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then(workload::is_pod_ready(a).cmp(&workload::is_pod_ready(b)))
        .then_with(|| created(b).cmp(&created(a)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Adds `JOB_COMPLETION_INDEX` (from the pod's annotation, as Kubernetes does) to a container
/// that does not set it.
fn add_index_env(container: &mut Container) {
    let env = container.env.get_or_insert_with(Vec::new);
    if env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
        return;
    }
    env.push(EnvVar {
        name: COMPLETION_INDEX_ENV.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
            }),
            ..EnvVarSource::default()
        }),
    });
}

/// A new pod for `job` (Kubernetes' `GetPodFromTemplate` plus the Job controller's additions):
/// `generateName` `<job>-` (`<job>-<index>-` for an Indexed Job), the Job's namespace, the
/// template's labels, annotations and finalizers, the Job labels ([`CONTROLLER_UID_LABEL`],
/// [`JOB_NAME_LABEL`] and their older spellings, unless the template sets them), a controller
/// owner reference to the Job, and the template's spec. With an `index`, the
/// [`COMPLETION_INDEX`] annotation and label, the hostname `<job>-<index>` unless the template
/// names one, and [`COMPLETION_INDEX_ENV`] in every container.
pub fn new_pod(job: &Job, index: Option<usize>) -> ApiPod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    for (key, value) in [
        (CONTROLLER_UID_LABEL, &uid),
        (LEGACY_CONTROLLER_UID_LABEL, &uid),
        (JOB_NAME_LABEL, &name),
        (LEGACY_JOB_NAME_LABEL, &name),
    ] {
        labels
            .entry(key.to_owned())
            .or_insert_with(|| value.clone());
    }
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            labels.insert(COMPLETION_INDEX.to_owned(), i.to_string());
            annotations.insert(COMPLETION_INDEX.to_owned(), i.to_string());
            if spec.hostname.is_none() {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            spec.containers.iter_mut().for_each(add_index_env);
            spec.init_containers
                .iter_mut()
                .flatten()
                .for_each(add_index_env);
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    ApiPod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: meta.finalizers,
            owner_references: Some(vec![workload::owner_reference(
                "batch/v1",
                "Job",
                &job.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Completed indexes

/// Indexes as Kubernetes writes `status.completedIndexes`: ascending, comma-separated, runs of
/// three or more as `first-last` (`1,3-5,7`).
pub fn format_indexes(indexes: &BTreeSet<usize>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(match last - first {
            0 => first.to_string(),
            1 => format!("{first},{last}"),
            _ => format!("{first}-{last}"),
        });
    }
    parts.join(",")
}

/// Parses `status.completedIndexes`, keeping indexes below `completions`; malformed parts are
/// skipped (the status is only ever written by this controller).
pub fn parse_indexes(text: &str, completions: usize) -> BTreeSet<usize> {
    let mut set = BTreeSet::new();
    let Some(highest) = completions.checked_sub(1) else {
        return set;
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) else {
            continue;
        };
        set.extend(a..=b.min(highest));
    }
    set
}

// ---------------------------------------------------------------------------------------------
// The plan

/// What one Job pass does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPlan {
    /// Pods to create ([`new_pod`]), at most [`workload::BURST_REPLICAS`].
    pub create: Vec<ApiPod>,
    /// Names of running pods to delete (surplus, suspended or finishing Job).
    pub delete: Vec<String>,
    /// The status to write: counts, `startTime`, `completionTime`, `completedIndexes` and the
    /// conditions. `active` counts the pods of [`JobPlan::create`] as created; the caller
    /// subtracts those it could not create. Equal to the current status when nothing changes.
    pub status: JobStatus,
    /// Events to record on the Job.
    pub events: Vec<Note>,
    /// The Job finished longer ago than `ttlSecondsAfterFinished`: delete it.
    pub delete_job: bool,
    /// When to look again without an event: the active deadline, the end of a replacement
    /// back-off, or the end of the TTL.
    pub requeue_after: Option<Duration>,
}

/// The Job's spec with defaults applied.
struct Config {
    parallelism: usize,
    completions: Option<usize>,
    indexed: bool,
    backoff_limit: usize,
    active_deadline: Option<i64>,
    suspend: bool,
    only_replace_failed: bool,
    restart_on_failure: bool,
}

impl Config {
    fn of(spec: &JobSpec) -> Self {
        Self {
            parallelism: usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(0),
            completions: spec.completions.map(|c| usize::try_from(c).unwrap_or(0)),
            indexed: spec.completion_mode.as_deref() == Some("Indexed"),
            backoff_limit: usize::try_from(spec.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT))
                .unwrap_or(0),
            active_deadline: spec.active_deadline_seconds,
            suspend: spec.suspend == Some(true),
            only_replace_failed: spec.pod_replacement_policy.as_deref() == Some("Failed"),
            restart_on_failure: spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.as_deref())
                == Some("OnFailure"),
        }
    }

    /// Why the spec cannot run (specs Kubernetes' validation refuses, which rudder's apiserver
    /// lets through).
    fn invalid(&self, spec: &JobSpec) -> Option<String> {
        if let Some(mode) = spec.completion_mode.as_deref()
            && mode != "Indexed"
            && mode != "NonIndexed"
        {
            return Some(format!(
                "spec.completionMode {mode:?} is not supported: use NonIndexed or Indexed"
            ));
        }
        match self.completions {
            None if self.indexed => {
                Some("spec.completions is required when spec.completionMode is Indexed".to_owned())
            }
            Some(c) if self.indexed && c > MAX_INDEXED_COMPLETIONS => Some(format!(
                "spec.completions must be at most {MAX_INDEXED_COMPLETIONS} when spec.completionMode is Indexed"
            )),
            _ => None,
        }
    }

    /// Kubernetes' `pastBackoffLimitOnFailure`: with `restartPolicy: OnFailure` failures are
    /// container restarts in pending and running pods.
    fn past_backoff_limit_on_failure(&self, active: &[&Pod]) -> bool {
        if !self.restart_on_failure {
            return false;
        }
        let mut restarts = 0usize;
        for pod in active
            .iter()
            .filter(|p| matches!(phase(p), Some("Running" | "Pending")))
        {
            if let Some(s) = &pod.status {
                for c in s
                    .init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
                {
                    restarts =
                        restarts.saturating_add(usize::try_from(c.restart_count).unwrap_or(0));
                }
            }
        }
        if self.backoff_limit == 0 {
            restarts > 0
        } else {
            restarts >= self.backoff_limit
        }
    }
}

/// How a Job ends.
enum Finish {
    Complete,
    Failed { reason: String, message: String },
}

impl Finish {
    fn failed(reason: &str, message: impl Into<String>) -> Self {
        Self::Failed {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

fn condition<'s>(status: &'s JobStatus, type_: &str) -> Option<&'s JobCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn is_true(status: &JobStatus, type_: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True")
}

/// When the Job finished (`Complete` or `Failed` True), if it has: `Some(None)` when no time
/// was recorded.
fn finished(status: &JobStatus) -> Option<Option<Timestamp>> {
    let c = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == COMPLETE || c.type_ == FAILED) && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .or(status.completion_time.as_ref())
            .map(|t| t.0),
    )
}

/// Kubernetes' `ensureJobConditionStatus`: gives the condition of `type_` this status, reason
/// and message, with `now` as its transition time when anything changed; a condition that is
/// not there yet is not added as False. Returns whether it changed.
fn ensure_condition(
    status: &mut JobStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: &Time,
) -> bool {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let fresh = JobCondition {
        type_: type_.to_owned(),
        status: value.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    let changed = match conditions.iter().position(|c| c.type_ == type_) {
        Some(i) => {
            let c = &mut conditions[i];
            let same = c.status == value
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message);
            if !same {
                *c = fresh;
            }
            !same
        }
        None if value == "False" => false,
        None => {
            conditions.push(fresh);
            true
        }
    };
    if conditions.is_empty() {
        status.conditions = None;
    }
    changed
}

/// How long a replacement for a failed pod must still wait: 10 s after the last failure,
/// doubled for each failure since the last success, at most 10 min (Kubernetes'
/// `backoffRecord`, rebuilt from the pods' finish times).
fn replacement_backoff(succeeded: &[&Pod], failed: &[&Pod], now: Timestamp) -> Option<Duration> {
    let last_success = succeeded.iter().filter_map(|p| finished_at(p)).max();
    let failures: Vec<Timestamp> = failed
        .iter()
        .filter_map(|p| finished_at(p))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let last = *failures.iter().max()?;
    let doublings = u32::try_from(failures.len() - 1)
        .unwrap_or(u32::MAX)
        .min(16);
    let delay = POD_FAILURE_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_POD_FAILURE_BACKOFF);
    let ready = last
        .checked_add(SignedDuration::try_from(delay).ok()?)
        .ok()?;
    Duration::try_from(ready.duration_since(now))
        .ok()
        .filter(|d| !d.is_zero())
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Zero as absent, like a Go `int32` field with `omitempty`.
fn non_zero(n: usize) -> Option<i32> {
    (n != 0).then(|| count(n))
}

/// The sooner of two wake-ups.
fn sooner(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The counts a pass plans from.
struct Counts<'a> {
    active: Vec<&'a Pod>,
    succeeded_pods: Vec<&'a Pod>,
    failed_pods: Vec<&'a Pod>,
    /// Pods being deleted that have not finished.
    terminating: usize,
    /// Their completion indexes (Indexed Jobs).
    terminating_indexes: BTreeSet<usize>,
    /// Completed indexes (Indexed Jobs only).
    completed: BTreeSet<usize>,
    succeeded: usize,
    failed: usize,
}

impl<'a> Counts<'a> {
    fn of(cfg: &Config, old: &JobStatus, pods: &[&'a Pod]) -> Self {
        let active: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| workload::is_active(p))
            .collect();
        let succeeded_pods: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| counts_as(p, "Succeeded"))
            .collect();
        let failed_pods: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| counts_as(p, "Failed"))
            .collect();
        let previous = |n: Option<i32>| usize::try_from(n.unwrap_or(0)).unwrap_or(0);
        let mut completed = BTreeSet::new();
        if cfg.indexed {
            let bound = cfg.completions.unwrap_or(0).min(MAX_INDEXED_COMPLETIONS);
            completed = parse_indexes(old.completed_indexes.as_deref().unwrap_or_default(), bound);
            completed.extend(
                succeeded_pods
                    .iter()
                    .filter_map(|p| completion_index(p))
                    .filter(|i| *i < bound),
            );
        }
        let succeeded = if cfg.indexed {
            completed.len()
        } else {
            succeeded_pods.len().max(previous(old.succeeded))
        };
        let terminating: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| workload::is_terminating(p))
            .collect();
        Self {
            terminating: terminating.len(),
            terminating_indexes: terminating
                .iter()
                .filter_map(|p| completion_index(p))
                .collect(),
            failed: failed_pods.len().max(previous(old.failed)),
            active,
            succeeded_pods,
            failed_pods,
            completed,
            succeeded,
        }
    }
}

/// Plans one pass of the Job controller (Kubernetes' `syncJob` with `manageJob`, and the
/// TTL-after-finished controller). `pods`: every pod the Job controls (controller owner
/// reference with its uid), finished and terminating ones included. A finished Job only has its
/// TTL looked at.
pub fn plan_job(job: &Job, pods: &[&Pod], now: Timestamp) -> JobPlan {
    let old = job.status.clone().unwrap_or_default();
    let mut plan = JobPlan {
        status: old.clone(),
        ..JobPlan::default()
    };
    let Some(spec) = job.spec.as_ref() else {
        return plan;
    };
    if let Some(ended) = finished(&old) {
        if let Some(ttl) = spec.ttl_seconds_after_finished.filter(|t| *t >= 0) {
            let since = ended
                .or_else(|| job.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or(now);
            let expires = since
                .checked_add(SignedDuration::from_secs(i64::from(ttl)))
                .unwrap_or(since);
            match Duration::try_from(expires.duration_since(now)) {
                Ok(left) if !left.is_zero() => plan.requeue_after = Some(left),
                _ => plan.delete_job = true,
            }
        }
        return plan;
    }
    // Times are written in whole seconds, as they come back from the apiserver.
    let stamp = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let cfg = Config::of(spec);
    let counts = Counts::of(&cfg, &old, pods);
    let mut status = old.clone();
    let mut terminating = counts.terminating;
    if cfg.suspend {
        // The deadline measures continuous activity: its clock restarts on resume.
        status.start_time = None;
    } else if status.start_time.is_none() {
        status.start_time = Some(stamp.clone());
    }

    // A failure or success decided earlier stands; otherwise look for one.
    let mut finish = None;
    if let Some(c) = condition(&old, FAILURE_TARGET).filter(|c| c.status == "True") {
        finish = Some(Finish::Failed {
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        });
    } else if is_true(&old, SUCCESS_CRITERIA_MET) {
        finish = Some(Finish::Complete);
    } else if let Some(message) = cfg.invalid(spec) {
        finish = Some(Finish::failed(INVALID_SPEC, message));
    } else if counts.failed > cfg.backoff_limit || cfg.past_backoff_limit_on_failure(&counts.active)
    {
        finish = Some(Finish::failed(
            BACKOFF_LIMIT_EXCEEDED,
            "Job has reached the specified backoff limit",
        ));
    } else if let Some(deadline) = cfg.active_deadline
        && let Some(start) = status.start_time.as_ref().map(|t| t.0)
    {
        let ends = start
            .checked_add(SignedDuration::from_secs(deadline))
            .unwrap_or(start);
        match Duration::try_from(ends.duration_since(now)) {
            Ok(left) if !left.is_zero() => plan.requeue_after = Some(left),
            _ => {
                finish = Some(Finish::failed(
                    DEADLINE_EXCEEDED,
                    "Job was active longer than specified deadline",
                ));
            }
        }
    }

    if finish.is_none() {
        if cfg.suspend {
            plan.delete = counts
                .active
                .iter()
                .take(workload::BURST_REPLICAS)
                .filter_map(|p| pod_name(p))
                .collect();
        } else if cfg.indexed {
            manage_indexed(job, &cfg, &counts, now, &mut plan);
        } else {
            manage(job, &cfg, &counts, now, &mut plan);
        }
        terminating += plan.delete.len();
        let running = counts.active.len().saturating_sub(plan.delete.len()) + plan.create.len();
        let complete = running == 0
            && match cfg.completions {
                None => counts.succeeded > 0,
                Some(c) => counts.succeeded >= c,
            };
        if complete {
            finish = Some(Finish::Complete);
        } else if cfg.suspend {
            if ensure_condition(
                &mut status,
                SUSPENDED,
                "True",
                "JobSuspended",
                "Job suspended",
                &stamp,
            ) {
                plan.events.push(Note::normal("Suspended", "Job suspended"));
            }
        } else if ensure_condition(
            &mut status,
            SUSPENDED,
            "False",
            "JobResumed",
            "Job resumed",
            &stamp,
        ) {
            plan.events.push(Note::normal("Resumed", "Job resumed"));
            status.start_time = Some(stamp.clone());
        }
    }

    let mut running = counts.active.len().saturating_sub(plan.delete.len()) + plan.create.len();
    if let Some(finish) = &finish {
        let (interim, last, reason, message) = match finish {
            Finish::Complete => (
                SUCCESS_CRITERIA_MET,
                COMPLETE,
                COMPLETIONS_REACHED,
                "Reached expected number of succeeded pods",
            ),
            Finish::Failed { reason, message } => {
                (FAILURE_TARGET, FAILED, reason.as_str(), message.as_str())
            }
        };
        ensure_condition(&mut status, interim, "True", reason, message, &stamp);
        // Whatever still runs goes; the end is written once nothing is left terminating.
        plan.create.clear();
        for pod in &counts.active {
            if let Some(name) = pod_name(pod)
                && !plan.delete.contains(&name)
            {
                plan.delete.push(name);
                terminating += 1;
            }
        }
        running = 0;
        plan.requeue_after = None;
        if terminating == 0 && ensure_condition(&mut status, last, "True", reason, message, &stamp)
        {
            match finish {
                Finish::Complete => {
                    status.completion_time = Some(stamp.clone());
                    plan.events.push(Note::normal("Completed", "Job completed"));
                }
                Finish::Failed { .. } => plan.events.push(Note::warning(reason, message)),
            }
            // The TTL, if any, counts from now.
            if let Some(ttl) = spec.ttl_seconds_after_finished.filter(|t| *t >= 0) {
                plan.requeue_after = Some(Duration::from_secs(u64::from(ttl.unsigned_abs())));
            }
        }
    }

    status.active = non_zero(running);
    status.succeeded = non_zero(counts.succeeded);
    status.failed = non_zero(counts.failed);
    status.ready = Some(count(
        counts
            .active
            .iter()
            .filter(|p| workload::is_pod_ready(p))
            .count(),
    ));
    status.terminating = Some(count(terminating));
    status.completed_indexes =
        (cfg.indexed && !counts.completed.is_empty()).then(|| format_indexes(&counts.completed));
    plan.status = status;
    plan
}

/// Kubernetes' `manageJob` for a NonIndexed Job: as many running pods as `parallelism` allows
/// and the completions left need (a work queue keeps what runs once one pod succeeded).
fn manage(job: &Job, cfg: &Config, counts: &Counts<'_>, now: Timestamp, plan: &mut JobPlan) {
    let running = counts.active.len();
    let want = match cfg.completions {
        None if counts.succeeded > 0 => running,
        None => cfg.parallelism,
        Some(c) => c.saturating_sub(counts.succeeded).min(cfg.parallelism),
    };
    if running > want {
        let mut ranked = counts.active.clone();
        ranked.sort_by(removal_order);
        plan.delete = ranked
            .iter()
            .take((running - want).min(workload::BURST_REPLICAS))
            .filter_map(|p| pod_name(p))
            .collect();
        return;
    }
    let mut missing = want - running;
    if cfg.only_replace_failed {
        missing = missing.saturating_sub(counts.terminating);
    }
    if missing == 0 {
        return;
    }
    match replacement_backoff(&counts.succeeded_pods, &counts.failed_pods, now) {
        Some(wait) => plan.requeue_after = sooner(plan.requeue_after, wait),
        None => {
            plan.create = (0..missing.min(workload::BURST_REPLICAS))
                .map(|_| new_pod(job, None))
                .collect();
        }
    }
}

/// Kubernetes' `manageJob` for an Indexed Job: one running pod for each of the lowest pending
/// indexes, up to `parallelism`. Pods without a valid index, for a completed index, or a second
/// one for an index are deleted first (the one kept is ready and older).
fn manage_indexed(
    job: &Job,
    cfg: &Config,
    counts: &Counts<'_>,
    now: Timestamp,
    plan: &mut JobPlan,
) {
    let completions = cfg.completions.unwrap_or(0);
    let mut doomed: Vec<&Pod> = Vec::new();
    let mut by_index: BTreeMap<usize, Vec<&Pod>> = BTreeMap::new();
    for pod in counts.active.iter().copied() {
        match completion_index(pod) {
            Some(i) if i < completions && !counts.completed.contains(&i) => {
                by_index.entry(i).or_default().push(pod)
            }
            _ => doomed.push(pod),
        }
    }
    let mut kept: Vec<&Pod> = Vec::new();
    for mut pods in by_index.into_values() {
        pods.sort_by(|a, b| removal_order(b, a));
        let mut pods = pods.into_iter();
        kept.extend(pods.next());
        doomed.extend(pods);
    }
    let want = completions
        .saturating_sub(counts.completed.len())
        .min(cfg.parallelism);
    if kept.len() > want {
        kept.sort_by(removal_order);
        let excess = kept.len() - want;
        doomed.extend(kept.drain(..excess));
    }
    if !doomed.is_empty() {
        plan.delete = doomed
            .iter()
            .take(workload::BURST_REPLICAS)
            .filter_map(|p| pod_name(p))
            .collect();
        return;
    }
    let mut missing = want - kept.len();
    let mut taken: BTreeSet<usize> = kept.iter().filter_map(|p| completion_index(p)).collect();
    if cfg.only_replace_failed {
        missing = missing.saturating_sub(counts.terminating);
    }
    if missing == 0 {
        return;
    }
    if cfg.only_replace_failed {
        // A terminating pod's index is not free until that pod is gone.
        taken.extend(counts.terminating_indexes.iter().copied());
    }
    match replacement_backoff(&counts.succeeded_pods, &counts.failed_pods, now) {
        Some(wait) => plan.requeue_after = sooner(plan.requeue_after, wait),
        None => {
            plan.create = (0..completions)
                .filter(|i| !counts.completed.contains(i) && !taken.contains(i))
                .take(missing.min(workload::BURST_REPLICAS))
                .map(|i| new_pod(job, Some(i)))
                .collect();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The loop

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// Jobs.
    pub jobs: Arc<Informer<Job>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
}

/// How long pod creations and deletions are waited for before the cache is trusted anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The component named in events and as field manager.
const COMPONENT: &str = "job-controller";

/// The Job that controls `pod`, if any.
fn owner_key(pod: &Pod) -> Option<Key> {
    let owner = workload::controller_of(&pod.metadata)?;
    (owner.kind == "Job" && owner.api_version == "batch/v1").then(|| Key {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: owner.name.clone(),
    })
}

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut jobs = caches.jobs.subscribe();
    let mut pods = caches.pods.subscribe();
    caches.jobs.synced().await;
    caches.pods.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for job in caches.jobs.store().state() {
                queue.add(Key::of(&*job));
            }
        }
    };
    enqueue_all();
    let dispatch = {
        let queue = queue.clone();
        async move {
            loop {
                tokio::select! {
                    change = jobs.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|j| queue.add(Key::of(&**j))),
                        None => break,
                    },
                    change = pods.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().filter_map(|p| owner_key(p)).for_each(|k| queue.add(k)),
                        None => break,
                    },
                }
            }
        }
    };
    let expected: Expectations<Writes> = Expectations::new(EXPECTATION_TIMEOUT);
    let work = work(queue, "syncing job", |key| {
        let (client, caches, expected) = (&client, &caches, &expected);
        async move {
            if !expected.caught_up(&key, |w| w.shown(caches.pods.store(), &key.namespace)) {
                return Ok(Some(Duration::from_millis(500)));
            }
            let mut written = Writes::default();
            let result = reconcile(client, caches, &key, &mut written).await;
            expected.record(key, (!written.is_empty()).then_some(written));
            result
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

/// One pass over one Job: records in `written` the pods it created and deleted, and returns
/// when to look again.
async fn reconcile(
    client: &Client,
    caches: &Caches,
    key: &Key,
    written: &mut Writes,
) -> Result<Option<Duration>, kube::Error> {
    let Some(job) = caches.jobs.store().get(&key.object_ref()) else {
        return Ok(None);
    };
    // A Job being deleted leaves its pods to the garbage collector; another controller's Job
    // is its own.
    if job.metadata.deletion_timestamp.is_some()
        || job
            .spec
            .as_ref()
            .and_then(|s| s.managed_by.as_deref())
            .is_some_and(|m| m != MANAGED_BY)
    {
        return Ok(None);
    }
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let all = caches.pods.store().state();
    let owned: Vec<&Pod> = all
        .iter()
        .map(|p| &**p)
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && workload::is_controlled_by(&p.metadata, &uid)
        })
        .collect();
    let plan = plan_job(&job, &owned, Timestamp::now());
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &key.namespace);
    if plan.delete_job {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match jobs_api.delete(&key.name, &dp).await {
            Ok(_) => {
                tracing::info!(job = %key, "deleted finished job: ttlSecondsAfterFinished passed")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e),
        }
        return Ok(None);
    }
    let pods_api: Api<ApiPod> = Api::namespaced(client.clone(), &key.namespace);
    let pp = PostParams {
        field_manager: Some(COMPONENT.into()),
        ..PostParams::default()
    };
    // Batches of 1, 2, 4, ...: a template that cannot be created fails once, not n times.
    let mut failure = None;
    let mut created = 0usize;
    let (mut start, mut batch) = (0, 1);
    while start < plan.create.len() {
        let end = (start + batch).min(plan.create.len());
        let results = futures::future::join_all(
            plan.create[start..end]
                .iter()
                .map(|pod| pods_api.create(&pp, pod)),
        )
        .await;
        // Every success of the batch is recorded before the first error stops the rest.
        for r in results {
            match r {
                Ok(pod) => {
                    created += 1;
                    written.created.extend(pod.metadata.name);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if failure.is_some() {
            break;
        }
        start = end;
        batch *= 2;
    }
    if created > 0 {
        tracing::debug!(job = %key, created, "created pods");
    }
    let mut delete_failure = None;
    for name in &plan.delete {
        match pods_api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                written.deleted.insert(name.clone());
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                delete_failure = Some(e);
                break;
            }
        }
    }
    let mut events = plan.events.clone();
    let mut status = plan.status.clone();
    if let Some(e) = &failure {
        // `active` counted every planned pod as created.
        let uncreated = plan.create.len() - created;
        let active = usize::try_from(status.active.unwrap_or(0)).unwrap_or(0);
        status.active = non_zero(active.saturating_sub(uncreated));
        events.push(Note::warning(
            "FailedCreate",
            format!("Error creating: {e}"),
        ));
    }
    if let Some(e) = &delete_failure {
        events.push(Note::warning(
            "FailedDelete",
            format!("Error deleting: {e}"),
        ));
    }
    for note in &events {
        record_event(client, &*job, COMPONENT, note).await;
    }
    if job.status.clone().unwrap_or_default() != status {
        let mut next = (*job).clone();
        next.status = Some(status);
        super::replace_status(&jobs_api, &key.name, &next).await?;
    }
    match failure.or(delete_failure) {
        Some(e) => Err(e),
        None => Ok(plan.requeue_after),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, PodCondition, PodSpec, PodTemplateSpec,
    };

    use super::*;
    use crate::cached::{ContainerStatus, PodStatus};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn job(completions: Option<i32>, parallelism: i32) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("batch".into()),
                uid: Some("job-uid".into()),
                creation_timestamp: Some(Time(at(0))),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                backoff_limit: Some(6),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_owned(), "pi".to_owned())].into()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "pi".into(),
                            image: Some("busybox".into()),
                            ..Container::default()
                        }],
                        restart_policy: Some("Never".into()),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }

    /// One Job and its pods: passes are planned and applied as the loop and the node would.
    struct Sim {
        job: Job,
        pods: Vec<Pod>,
        clock: i64,
        made: usize,
    }

    impl Sim {
        fn new(job: Job) -> Self {
            Self {
                job,
                pods: Vec::new(),
                clock: 0,
                made: 0,
            }
        }

        fn spec(&mut self) -> &mut JobSpec {
            self.job.spec.as_mut().unwrap()
        }

        fn sync(&mut self) -> JobPlan {
            let pods: Vec<&Pod> = self.pods.iter().collect();
            let plan = plan_job(&self.job, &pods, at(self.clock));
            for pod in &plan.create {
                let mut pod = Pod::from(pod.clone());
                self.made += 1;
                let prefix = pod.metadata.generate_name.clone().unwrap();
                pod.metadata.name = Some(format!("{prefix}{}", self.made));
                pod.metadata.creation_timestamp = Some(Time(at(self.clock)));
                pod.status = Some(PodStatus {
                    phase: Some("Running".into()),
                    ..PodStatus::default()
                });
                self.pods.push(pod);
            }
            for name in &plan.delete {
                let pod = self.pod(name);
                pod.metadata.deletion_timestamp = Some(Time(at(0)));
            }
            self.job.status = Some(plan.status.clone());
            plan
        }

        fn pod(&mut self, name: &str) -> &mut Pod {
            self.pods
                .iter_mut()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .unwrap()
        }

        /// The node ends pod `name` in `phase` now.
        fn finish(&mut self, name: &str, phase: &str) {
            let clock = self.clock;
            self.pod(name).status = Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "pi".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: i32::from(phase == "Failed"),
                            finished_at: Some(Time(at(clock))),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            });
        }

        /// Pods being deleted are gone.
        fn reap(&mut self) {
            self.pods
                .retain(|p| p.metadata.deletion_timestamp.is_none());
        }

        fn status(&self) -> &JobStatus {
            self.job.status.as_ref().unwrap()
        }

        /// `status/reason` of a condition.
        fn condition(&self, type_: &str) -> Option<String> {
            condition(self.status(), type_)
                .map(|c| format!("{}/{}", c.status, c.reason.as_deref().unwrap_or_default()))
        }
    }

    fn reasons(plan: &JobPlan) -> Vec<&str> {
        plan.events.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn completions_with_parallelism() {
        let mut sim = Sim::new(job(Some(3), 2));
        let plan = sim.sync();
        assert_eq!(plan.create.len(), 2);
        assert_eq!(sim.status().active, Some(2));
        assert_eq!(sim.status().start_time, Some(Time(at(0))));
        assert_eq!(sim.status().ready, Some(0));
        // Nothing changes: nothing to do.
        let plan = sim.sync();
        assert!(plan.create.is_empty() && plan.delete.is_empty() && plan.events.is_empty());

        sim.clock = 5;
        sim.finish("pi-1", "Succeeded");
        let plan = sim.sync();
        // Two completions left, one pod runs: one more.
        assert_eq!(plan.create.len(), 1);
        assert_eq!(
            (sim.status().succeeded, sim.status().active),
            (Some(1), Some(2))
        );

        sim.clock = 8;
        sim.finish("pi-2", "Succeeded");
        sim.finish("pi-3", "Succeeded");
        let plan = sim.sync();
        assert!(plan.create.is_empty());
        assert_eq!(
            sim.condition(COMPLETE).as_deref(),
            Some("True/CompletionsReached")
        );
        assert_eq!(
            sim.condition(SUCCESS_CRITERIA_MET).as_deref(),
            Some("True/CompletionsReached")
        );
        assert_eq!(sim.status().completion_time, Some(Time(at(8))));
        assert_eq!(
            (sim.status().succeeded, sim.status().active),
            (Some(3), None)
        );
        assert_eq!(reasons(&plan), ["Completed"]);
        // Finished: left alone.
        let before = sim.status().clone();
        let plan = sim.sync();
        assert_eq!(plan.status, before);
        assert!(plan.create.is_empty() && plan.events.is_empty());
    }

    #[test]
    fn work_queue_ends_when_one_succeeded_and_none_runs() {
        let mut sim = Sim::new(job(None, 3));
        assert_eq!(sim.sync().create.len(), 3);
        sim.finish("pi-1", "Succeeded");
        let plan = sim.sync();
        // The others keep running; no replacement.
        assert!(plan.create.is_empty());
        assert_eq!(sim.condition(COMPLETE), None);
        sim.finish("pi-2", "Succeeded");
        sim.finish("pi-3", "Failed");
        sim.sync();
        assert_eq!(
            sim.condition(COMPLETE).as_deref(),
            Some("True/CompletionsReached")
        );
        assert_eq!(
            (sim.status().succeeded, sim.status().failed),
            (Some(2), Some(1))
        );
    }

    #[test]
    fn backoff_limit_with_replacement_delay() {
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().backoff_limit = Some(1);
        let mut sim = Sim::new(j);
        sim.sync();
        sim.clock = 10;
        sim.finish("pi-1", "Failed");
        sim.clock = 12;
        let plan = sim.sync();
        // One failure is allowed; its replacement waits 10 s after it.
        assert!(plan.create.is_empty());
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(8)));
        assert_eq!(sim.status().failed, Some(1));
        assert_eq!(sim.condition(FAILED), None);
        sim.clock = 20;
        assert_eq!(sim.sync().create.len(), 1);
        sim.clock = 25;
        sim.finish("pi-2", "Failed");
        let plan = sim.sync();
        assert_eq!(
            sim.condition(FAILED).as_deref(),
            Some("True/BackoffLimitExceeded")
        );
        assert_eq!(
            sim.condition(FAILURE_TARGET).as_deref(),
            Some("True/BackoffLimitExceeded")
        );
        assert_eq!(sim.status().failed, Some(2));
        assert_eq!(
            plan.events,
            [Note::warning(
                BACKOFF_LIMIT_EXCEEDED,
                "Job has reached the specified backoff limit"
            )]
        );
    }

    #[test]
    fn replacement_delay_doubles_and_resets_on_success() {
        let pod = |name: &str, phase: &str, second: i64| {
            let mut sim = Sim::new(job(Some(1), 1));
            sim.sync();
            sim.clock = second;
            sim.finish("pi-1", phase);
            let mut p = sim.pods.remove(0);
            p.metadata.name = Some(name.into());
            p
        };
        let (f1, f2, f3) = (
            pod("f1", "Failed", 0),
            pod("f2", "Failed", 5),
            pod("f3", "Failed", 6),
        );
        let ok = pod("ok", "Succeeded", 4);
        // Three failures: 40 s after the last.
        assert_eq!(
            replacement_backoff(&[], &[&f1, &f2, &f3], at(6)),
            Some(Duration::from_secs(40))
        );
        // A success in between: only the two after it count.
        assert_eq!(
            replacement_backoff(&[&ok], &[&f1, &f2, &f3], at(6)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(replacement_backoff(&[&ok], &[&f1], at(6)), None);
    }

    #[test]
    fn restarts_count_against_the_backoff_limit_with_on_failure() {
        let mut j = job(Some(1), 1);
        let spec = j.spec.as_mut().unwrap();
        spec.backoff_limit = Some(2);
        spec.template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        let mut sim = Sim::new(j);
        sim.sync();
        sim.pod("pi-1").status = Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "pi".into(),
                restart_count: 2,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        let plan = sim.sync();
        // The running pod goes first; Failed follows once it is gone.
        assert_eq!(plan.delete, ["pi-1"]);
        assert_eq!(
            sim.condition(FAILURE_TARGET).as_deref(),
            Some("True/BackoffLimitExceeded")
        );
        assert_eq!(sim.condition(FAILED), None);
        sim.reap();
        sim.sync();
        assert_eq!(
            sim.condition(FAILED).as_deref(),
            Some("True/BackoffLimitExceeded")
        );
    }

    #[test]
    fn active_deadline_fails_after_pods_are_gone() {
        let mut j = job(Some(4), 2);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
        let mut sim = Sim::new(j);
        let plan = sim.sync();
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
        sim.clock = 31;
        let plan = sim.sync();
        assert_eq!(plan.delete, ["pi-1", "pi-2"]);
        assert_eq!(
            sim.condition(FAILURE_TARGET).as_deref(),
            Some("True/DeadlineExceeded")
        );
        assert_eq!(sim.condition(FAILED), None);
        assert_eq!(sim.status().terminating, Some(2));
        assert_eq!(sim.status().active, None);
        // Still terminating: nothing more.
        let plan = sim.sync();
        assert!(plan.delete.is_empty() && plan.create.is_empty());
        assert_eq!(sim.condition(FAILED), None);
        sim.reap();
        let plan = sim.sync();
        assert_eq!(
            sim.condition(FAILED).as_deref(),
            Some("True/DeadlineExceeded")
        );
        assert_eq!(reasons(&plan), [DEADLINE_EXCEEDED]);
        assert_eq!(sim.status().terminating, Some(0));
        assert_eq!(sim.status().completion_time, None);
    }

    #[test]
    fn suspend_and_resume() {
        let mut sim = Sim::new(job(Some(4), 2));
        sim.sync();
        sim.spec().suspend = Some(true);
        sim.clock = 10;
        let plan = sim.sync();
        assert_eq!(plan.delete, ["pi-1", "pi-2"]);
        assert_eq!(
            sim.condition(SUSPENDED).as_deref(),
            Some("True/JobSuspended")
        );
        assert_eq!(reasons(&plan), ["Suspended"]);
        assert_eq!(sim.status().start_time, None);
        sim.reap();
        let plan = sim.sync();
        assert!(plan.create.is_empty() && plan.events.is_empty());
        // Deleted pods were not failures.
        assert_eq!(sim.status().failed, None);

        sim.spec().suspend = Some(false);
        sim.clock = 50;
        let plan = sim.sync();
        assert_eq!(plan.create.len(), 2);
        assert_eq!(
            sim.condition(SUSPENDED).as_deref(),
            Some("False/JobResumed")
        );
        assert_eq!(reasons(&plan), ["Resumed"]);
        assert_eq!(sim.status().start_time, Some(Time(at(50))));
    }

    #[test]
    fn lower_parallelism_deletes_not_ready_pods_first() {
        let mut sim = Sim::new(job(Some(10), 3));
        sim.sync();
        sim.pod("pi-2").status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        sim.spec().parallelism = Some(1);
        let plan = sim.sync();
        assert_eq!(plan.delete, ["pi-1", "pi-3"]);
        assert_eq!(sim.status().active, Some(1));
        assert_eq!(sim.status().ready, Some(1));
    }

    #[test]
    fn pod_replacement_policy_failed_waits_for_terminating_pods() {
        let mut j = job(Some(2), 2);
        j.spec.as_mut().unwrap().pod_replacement_policy = Some("Failed".into());
        let mut sim = Sim::new(j);
        sim.sync();
        sim.pod("pi-1").metadata.deletion_timestamp = Some(Time(at(1)));
        assert!(sim.sync().create.is_empty());
        sim.spec().pod_replacement_policy = Some("TerminatingOrFailed".into());
        assert_eq!(sim.sync().create.len(), 1);
    }

    #[test]
    fn indexed_jobs_run_one_pod_per_index() {
        let mut j = job(Some(3), 2);
        j.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
        let mut sim = Sim::new(j);
        let plan = sim.sync();
        let first = &plan.create[0];
        assert_eq!(first.metadata.generate_name.as_deref(), Some("pi-0-"));
        assert_eq!(
            first
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(COMPLETION_INDEX)
                .map(String::as_str),
            Some("0")
        );
        assert_eq!(
            first
                .metadata
                .labels
                .as_ref()
                .unwrap()
                .get(COMPLETION_INDEX)
                .map(String::as_str),
            Some("0")
        );
        let spec = first.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-0"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, COMPLETION_INDEX_ENV);
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        assert_eq!(
            plan.create[1].metadata.generate_name.as_deref(),
            Some("pi-1-")
        );

        sim.clock = 3;
        sim.finish("pi-0-1", "Succeeded");
        let plan = sim.sync();
        assert_eq!(plan.create.len(), 1);
        assert_eq!(
            plan.create[0].metadata.generate_name.as_deref(),
            Some("pi-2-")
        );
        assert_eq!(sim.status().completed_indexes.as_deref(), Some("0"));
        assert_eq!(sim.status().succeeded, Some(1));

        // A second pod for index 1 (newer) goes.
        let mut dup = sim.pod("pi-1-2").clone();
        dup.metadata.name = Some("pi-1-dup".into());
        dup.metadata.creation_timestamp = Some(Time(at(4)));
        sim.pods.push(dup);
        sim.clock = 4;
        let plan = sim.sync();
        assert_eq!(plan.delete, ["pi-1-dup"]);
        assert!(plan.create.is_empty());
        sim.reap();

        sim.clock = 9;
        sim.finish("pi-1-2", "Succeeded");
        sim.finish("pi-2-3", "Succeeded");
        sim.sync();
        assert_eq!(sim.status().completed_indexes.as_deref(), Some("0-2"));
        assert_eq!(sim.status().succeeded, Some(3));
        assert_eq!(
            sim.condition(COMPLETE).as_deref(),
            Some("True/CompletionsReached")
        );
    }

    #[test]
    fn a_failed_index_runs_again() {
        let mut j = job(Some(2), 2);
        j.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
        j.spec.as_mut().unwrap().backoff_limit = Some(3);
        let mut sim = Sim::new(j);
        sim.sync();
        sim.finish("pi-1-2", "Failed");
        sim.clock = 30;
        let plan = sim.sync();
        assert_eq!(plan.create.len(), 1);
        assert_eq!(
            plan.create[0].metadata.generate_name.as_deref(),
            Some("pi-1-")
        );
    }

    #[test]
    fn invalid_specs_fail_clearly() {
        let mut j = job(None, 2);
        j.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
        let mut sim = Sim::new(j);
        let plan = sim.sync();
        assert!(plan.create.is_empty());
        assert_eq!(sim.condition(FAILED).as_deref(), Some("True/InvalidSpec"));
        assert_eq!(
            plan.events[0].message,
            "spec.completions is required when spec.completionMode is Indexed"
        );
    }

    #[test]
    fn finished_jobs_are_deleted_after_their_ttl() {
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(50);
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: COMPLETE.into(),
                status: "True".into(),
                last_transition_time: Some(Time(at(100))),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        let plan = plan_job(&j, &[], at(120));
        assert!(!plan.delete_job);
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
        assert!(plan_job(&j, &[], at(150)).delete_job);
        // Without a TTL a finished Job stays.
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
        assert_eq!(
            plan_job(&j, &[], at(1000)),
            JobPlan {
                status: j.status.clone().unwrap(),
                ..JobPlan::default()
            }
        );
    }

    #[test]
    fn the_last_pass_of_a_job_with_a_ttl_wakes_up_when_it_expires() {
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(5);
        let mut sim = Sim::new(j);
        sim.sync();
        sim.finish("pi-1", "Succeeded");
        let plan = sim.sync();
        assert_eq!(
            sim.condition(COMPLETE).as_deref(),
            Some("True/CompletionsReached")
        );
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(5)));
    }

    #[test]
    fn new_pods_carry_the_job_labels_and_owner() {
        let j = job(Some(1), 1);
        let pod = new_pod(&j, None);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("batch"));
        let labels = pod.metadata.labels.unwrap();
        let label = |k: &str| labels.get(k).map(String::as_str);
        assert_eq!(label("app"), Some("pi"));
        assert_eq!(label(CONTROLLER_UID_LABEL), Some("job-uid"));
        assert_eq!(label(LEGACY_CONTROLLER_UID_LABEL), Some("job-uid"));
        assert_eq!(label(JOB_NAME_LABEL), Some("pi"));
        assert_eq!(label(LEGACY_JOB_NAME_LABEL), Some("pi"));
        assert_eq!(pod.metadata.annotations, None);
        let owners = pod.metadata.owner_references.unwrap();
        let owner = &owners[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.uid.as_str()
            ),
            ("batch/v1", "Job", "job-uid")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(pod.spec.unwrap().hostname, None);
    }

    #[test]
    fn completed_indexes_text() {
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<usize>>();
        assert_eq!(format_indexes(&set(&[1, 3, 4, 5, 7])), "1,3-5,7");
        assert_eq!(format_indexes(&set(&[0, 1, 4])), "0,1,4");
        assert_eq!(format_indexes(&set(&[])), "");
        assert_eq!(parse_indexes("1,3-5,7", 10), set(&[1, 3, 4, 5, 7]));
        assert_eq!(parse_indexes("0-1000000000", 3), set(&[0, 1, 2]));
        assert_eq!(parse_indexes("x,2,5-4", 10), set(&[2]));
        assert_eq!(parse_indexes("0-3", 0), set(&[]));
    }
}
