//! The disruption controller (`policy/v1` PodDisruptionBudgets), as kube-controller-manager's
//! `disruption` controller: it keeps each budget's status true to the pods it selects, and the
//! apiserver's eviction subresource (`api::eviction`) spends that status one eviction at a time.
//!
//! For every budget, from the pods in its namespace its selector matches (`selector: {}` matches
//! them all, no selector none):
//! - `expectedPods` and `desiredHealthy`: with an integer `minAvailable`, the pods selected and
//!   that number. With `maxUnavailable` or a percentage, the replicas their controllers ask for
//!   (a Deployment's through its ReplicaSets, a ReplicaSet's, a StatefulSet's or a
//!   ReplicationController's, each counted once), percentages rounded up. A pod with no
//!   controller is reported (`UnmanagedPods`) and left out; a controller of another kind makes
//!   the budget fail safe: no disruption allowed, `DisruptionAllowed` False with reason
//!   `SyncFailed` and the error.
//! - `currentHealthy`: selected pods that are Ready, not being deleted and not recently evicted.
//! - `disruptedPods`: pods the apiserver evicted that have not started deleting yet. An entry
//!   lives [`DELETION_TIMEOUT`] (2 minutes): a pod still not deleting by then counts again, with a
//!   `NotDeleted` warning.
//! - `disruptionsAllowed` = currentHealthy − desiredHealthy (at least 0), the
//!   `DisruptionAllowed` condition (`SufficientPods` / `InsufficientPods`), and
//!   `observedGeneration`, which the apiserver checks before it lets an eviction spend anything.
//!
//! The pure core is [`assess`]; [`run`] is the loop around it. A budget is looked at again when
//! any pod it selects (before or after the change) changes, when a controller's replicas change
//! in its namespace, and when its oldest `disruptedPods` entry expires.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        core::v1::ReplicationController,
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus},
    },
    apimachinery::pkg::{
        apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time},
        util::intstr::IntOrString,
    },
};
use kube::{Api, Client};

use super::{
    Note,
    informer::{Change, Informer, Key, WorkQueue, work},
    workload::{controller_of, is_pod_ready, scaled_value, selector_matches},
};
use crate::cached::Pod;

/// How long an evicted pod may take to start deleting before the budget counts it again
/// (kube-controller-manager's `DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// The most `disruptedPods` entries a budget may hold before the apiserver refuses evictions
/// (`MaxDisruptedPodSize`).
pub const MAX_DISRUPTED_PODS: usize = 2000;

/// The condition type the status carries.
pub const CONDITION: &str = "DisruptionAllowed";

/// The event source.
const COMPONENT: &str = "controllermanager";

/// Does `pdb` select a pod with `meta` (same namespace, selector matches)? A budget without a
/// selector selects nothing; an empty one selects every pod of its namespace (`policy/v1`).
pub fn selects(pdb: &PodDisruptionBudget, meta: &ObjectMeta) -> bool {
    if pdb.metadata.namespace != meta.namespace {
        return false;
    }
    let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let empty = BTreeMap::new();
    selector_matches(selector, meta.labels.as_ref().unwrap_or(&empty))
}

/// The `DisruptionAllowed` condition for `allowed` disruptions (`SufficientPods` or
/// `InsufficientPods`), keeping the transition time of `previous` when its status is the same.
pub fn allowed_condition(
    allowed: i32,
    generation: Option<i64>,
    previous: Option<&[Condition]>,
    now: Timestamp,
) -> Condition {
    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    condition(status, reason, String::new(), generation, previous, now)
}

fn condition(
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&[Condition]>,
    now: Timestamp,
) -> Condition {
    let since = previous
        .into_iter()
        .flatten()
        .find(|c| c.type_ == CONDITION && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: CONDITION.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// A controller's identity and the replicas it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scale {
    /// The controller's uid: one controller is counted once, however many pods it has.
    pub uid: String,
    /// `spec.replicas`.
    pub replicas: i32,
}

/// What [`assess`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    /// The status to write.
    pub status: PodDisruptionBudgetStatus,
    /// Events to record about the budget.
    pub notes: Vec<Note>,
    /// When to look again (the soonest `disruptedPods` entry to expire).
    pub recheck: Option<Duration>,
}

/// `expectedPods` and `desiredHealthy`, or why they cannot be known.
fn expectation(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    scale_of: &dyn Fn(&OwnerReference) -> Option<Scale>,
    notes: &mut Vec<Note>,
) -> Result<(i32, i32), String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    let from_controllers = |notes: &mut Vec<Note>| -> Result<i32, String> {
        let mut scales: HashMap<String, i32> = HashMap::new();
        let mut unmanaged = Vec::new();
        for pod in pods {
            let Some(owner) = controller_of(&pod.metadata) else {
                unmanaged.push(pod.metadata.name.clone().unwrap_or_default());
                continue;
            };
            if scales.contains_key(&owner.uid) {
                continue;
            }
            let scale = scale_of(owner).ok_or_else(|| {
                format!(
                    "found no controllers for pod {:?}",
                    pod.metadata.name.as_deref().unwrap_or_default()
                )
            })?;
            scales.insert(scale.uid, scale.replicas.max(0));
        }
        if !unmanaged.is_empty() {
            notes.push(Note::warning(
                "UnmanagedPods",
                format!(
                    "Pods selected by this PodDisruptionBudget were found to be unmanaged: {}. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.",
                    unmanaged.join(", ")
                ),
            ));
        }
        Ok(scales.values().fold(0i32, |a, b| a.saturating_add(*b)))
    };
    let percent_ok = |v: &IntOrString| match v {
        IntOrString::Int(_) => Ok(()),
        IntOrString::String(s)
            if s.strip_suffix('%')
                .is_some_and(|p| p.parse::<u32>().is_ok()) =>
        {
            Ok(())
        }
        IntOrString::String(s) => Err(format!(
            "invalid value for IntOrString: invalid value {s:?}"
        )),
    };
    if let Some(max) = &spec.max_unavailable {
        percent_ok(max)?;
        let expected = from_controllers(notes)?;
        let unavailable = scaled_value(Some(max), expected, true);
        Ok((expected, (expected - unavailable).max(0)))
    } else if let Some(min) = &spec.min_available {
        match min {
            IntOrString::Int(n) => Ok((i32::try_from(pods.len()).unwrap_or(i32::MAX), *n)),
            IntOrString::String(_) => {
                percent_ok(min)?;
                let expected = from_controllers(notes)?;
                Ok((expected, scaled_value(Some(min), expected, true)))
            }
        }
    } else {
        Ok((0, 0))
    }
}

/// The status of `pdb` over the pods it selects (`pods`), at `now`. `scale_of` finds the
/// replicas a pod's controller asks for (see the module docs for when it is asked).
pub fn assess(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    scale_of: &dyn Fn(&OwnerReference) -> Option<Scale>,
    now: Timestamp,
) -> Assessment {
    let generation = pdb.metadata.generation;
    let old = pdb.status.clone().unwrap_or_default();
    let mut notes = Vec::new();
    let (expected, desired) = match expectation(pdb, pods, scale_of, &mut notes) {
        Ok(found) => found,
        Err(message) => {
            // Fail safe: nothing may be disrupted while the budget cannot be computed.
            let mut status = old.clone();
            status.disruptions_allowed = Some(0);
            status.conditions = Some(vec![condition(
                "False",
                "SyncFailed",
                message.clone(),
                generation,
                old.conditions.as_deref(),
                now,
            )]);
            notes.push(Note::warning(
                "CalculateExpectedPodCountFailed",
                format!("Failed to calculate the number of expected pods: {message}"),
            ));
            return Assessment {
                status,
                notes,
                recheck: None,
            };
        }
    };
    // Evictions not yet seen as deletions.
    let timeout = SignedDuration::try_from(DELETION_TIMEOUT).unwrap_or(SignedDuration::ZERO);
    let old_disrupted = old.disrupted_pods.clone().unwrap_or_default();
    let mut disrupted = BTreeMap::new();
    let mut recheck: Option<Duration> = None;
    for pod in pods {
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(at) = old_disrupted.get(name) else {
            continue;
        };
        let expires = at.0.saturating_add(timeout).unwrap_or(at.0);
        if expires < now {
            notes.push(Note::warning(
                "NotDeleted",
                format!("Pod {name} was expected by this PDB to be deleted but it wasn't"),
            ));
            continue;
        }
        let left = Duration::try_from(expires.duration_since(now)).unwrap_or_default();
        recheck = Some(recheck.map_or(left, |r| r.min(left)));
        disrupted.insert(name.to_owned(), at.clone());
    }
    let healthy = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_none_or(|n| !disrupted.contains_key(n))
        })
        .filter(|p| is_pod_ready(p))
        .count();
    let healthy = i32::try_from(healthy).unwrap_or(i32::MAX);
    let allowed = (healthy - desired).max(0);
    let status = PodDisruptionBudgetStatus {
        observed_generation: generation,
        current_healthy: Some(healthy),
        desired_healthy: Some(desired),
        expected_pods: Some(expected),
        disruptions_allowed: Some(allowed),
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        conditions: Some(vec![allowed_condition(
            allowed,
            generation,
            old.conditions.as_deref(),
            now,
        )]),
    };
    Assessment {
        status,
        notes,
        recheck,
    }
}

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// PodDisruptionBudgets.
    pub budgets: Arc<Informer<PodDisruptionBudget>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
    /// The controllers whose replicas count as expected pods.
    pub deployments: Arc<Informer<Deployment>>,
    /// ReplicaSets.
    pub replicasets: Arc<Informer<ReplicaSet>>,
    /// StatefulSets.
    pub statefulsets: Arc<Informer<StatefulSet>>,
    /// ReplicationControllers.
    pub replicationcontrollers: Arc<Informer<ReplicationController>>,
}

impl Caches {
    /// The replicas the controller `owner` (in `namespace`) asks for: a ReplicaSet that a
    /// Deployment controls answers with the Deployment's.
    fn scale_of(&self, namespace: &str, owner: &OwnerReference) -> Option<Scale> {
        let key = Key {
            namespace: namespace.to_owned(),
            name: owner.name.clone(),
        };
        let group = owner.api_version.split_once('/').map_or("", |(g, _)| g);
        let found = |meta: &ObjectMeta, replicas: Option<i32>| {
            (meta.uid.as_deref() == Some(owner.uid.as_str())).then(|| Scale {
                uid: owner.uid.clone(),
                replicas: replicas.unwrap_or(1),
            })
        };
        match (group, owner.kind.as_str()) {
            ("apps", "ReplicaSet") => {
                let rs = self.replicasets.store().get(&key.object_ref())?;
                if let Some(d) = controller_of(&rs.metadata).filter(|d| d.kind == "Deployment") {
                    let dkey = Key {
                        namespace: namespace.to_owned(),
                        name: d.name.clone(),
                    };
                    let deployment = self.deployments.store().get(&dkey.object_ref())?;
                    return (deployment.metadata.uid.as_deref() == Some(d.uid.as_str())).then(
                        || Scale {
                            uid: d.uid.clone(),
                            replicas: deployment.spec.replicas.unwrap_or(1),
                        },
                    );
                }
                found(&rs.metadata, rs.spec.replicas)
            }
            ("apps", "StatefulSet") => {
                let sts = self.statefulsets.store().get(&key.object_ref())?;
                found(&sts.metadata, sts.spec.replicas)
            }
            ("", "ReplicationController") => {
                let rc = self.replicationcontrollers.store().get(&key.object_ref())?;
                found(&rc.metadata, rc.spec.as_ref().and_then(|s| s.replicas))
            }
            _ => None,
        }
    }
}

/// Queues the budgets in `pod`'s namespace that select it.
fn enqueue_for(caches: &Caches, queue: &WorkQueue<Key>, meta: &ObjectMeta) {
    for pdb in caches.budgets.store().state() {
        if selects(&pdb, meta) {
            queue.add(Key::of(&*pdb));
        }
    }
}

/// Queues every budget in `namespace`.
fn enqueue_namespace(caches: &Caches, queue: &WorkQueue<Key>, namespace: Option<&str>) {
    for pdb in caches.budgets.store().state() {
        if pdb.metadata.namespace.as_deref() == namespace {
            queue.add(Key::of(&*pdb));
        }
    }
}

/// Queues the budgets of a namespace whose controller changed its replicas.
async fn follow_scale<K>(
    informer: Arc<Informer<K>>,
    caches: Caches,
    queue: Arc<WorkQueue<Key>>,
    replicas: fn(&K) -> Option<i32>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let mut changes = informer.subscribe();
    while let Some(change) = changes.next().await {
        match change {
            Change::Resync => enqueue_all(&caches, &queue),
            Change::Object { old, new } => {
                let before = old.as_deref().and_then(replicas);
                let after = new.as_deref().and_then(replicas);
                if before != after || old.is_none() || new.is_none() {
                    let obj = new.as_ref().or(old.as_ref());
                    enqueue_namespace(
                        &caches,
                        &queue,
                        obj.and_then(|o| o.meta().namespace.as_deref()),
                    );
                }
            }
        }
    }
}

fn enqueue_all(caches: &Caches, queue: &WorkQueue<Key>) {
    for pdb in caches.budgets.store().state() {
        queue.add(Key::of(&*pdb));
    }
}

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut budgets = caches.budgets.subscribe();
    let mut pods = caches.pods.subscribe();
    caches.budgets.synced().await;
    caches.pods.synced().await;
    caches.deployments.synced().await;
    caches.replicasets.synced().await;
    caches.statefulsets.synced().await;
    caches.replicationcontrollers.synced().await;
    enqueue_all(&caches, &queue);
    let on_budgets = {
        let (caches, queue) = (caches.clone(), queue.clone());
        async move {
            while let Some(change) = budgets.next().await {
                match change {
                    Change::Resync => enqueue_all(&caches, &queue),
                    Change::Object { new: Some(pdb), .. } => queue.add(Key::of(&*pdb)),
                    Change::Object { .. } => {}
                }
            }
        }
    };
    let on_pods = {
        let (caches, queue) = (caches.clone(), queue.clone());
        async move {
            while let Some(change) = pods.next().await {
                match change {
                    Change::Resync => enqueue_all(&caches, &queue),
                    Change::Object { old, new } => {
                        for pod in old.iter().chain(new.iter()) {
                            enqueue_for(&caches, &queue, &pod.metadata);
                        }
                    }
                }
            }
        }
    };
    let scales = futures::future::join4(
        follow_scale(
            caches.deployments.clone(),
            caches.clone(),
            queue.clone(),
            |d: &Deployment| d.spec.replicas,
        ),
        follow_scale(
            caches.replicasets.clone(),
            caches.clone(),
            queue.clone(),
            |r: &ReplicaSet| r.spec.replicas,
        ),
        follow_scale(
            caches.statefulsets.clone(),
            caches.clone(),
            queue.clone(),
            |s: &StatefulSet| s.spec.replicas,
        ),
        follow_scale(
            caches.replicationcontrollers.clone(),
            caches.clone(),
            queue.clone(),
            |r: &ReplicationController| r.spec.as_ref().and_then(|s| s.replicas),
        ),
    );
    let work = work(queue, "disruption budget", |key| {
        let (client, caches) = (&client, &caches);
        async move {
            let Some(pdb) = caches.budgets.store().get(&key.object_ref()) else {
                return Ok(None);
            };
            reconcile(client, caches, &pdb).await
        }
    });
    tokio::select! {
        () = on_budgets => {}
        () = on_pods => {}
        _ = scales => {}
        () = work => {}
    }
}

async fn reconcile(
    client: &Client,
    caches: &Caches,
    pdb: &PodDisruptionBudget,
) -> Result<Option<Duration>, kube::Error> {
    let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = caches
        .pods
        .store()
        .state()
        .into_iter()
        .filter(|p| selects(pdb, &p.metadata))
        .collect();
    let refs: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
    let scale_of = |owner: &OwnerReference| caches.scale_of(&namespace, owner);
    let assessed = assess(pdb, &refs, &scale_of, Timestamp::now());
    if pdb.status.as_ref() == Some(&assessed.status) {
        return Ok(assessed.recheck);
    }
    // Events only when the status moves, so a steady warning is not repeated every pass.
    for note in &assessed.notes {
        super::record_event(client, pdb, COMPONENT, note).await;
    }
    let mut updated = pdb.clone();
    updated.status = Some(assessed.status);
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    super::replace_status(&api, &name, &updated).await?;
    Ok(assessed.recheck)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use k8s_openapi::{
        api::{core::v1::PodCondition, policy::v1::PodDisruptionBudgetSpec},
        apimachinery::pkg::apis::meta::v1::LabelSelector,
    };

    use super::*;
    use crate::cached::PodStatus;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("default".into()),
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_owned(), "db".to_owned())].into()),
                    match_expressions: None,
                }),
                unhealthy_pod_eviction_policy: None,
            }),
            status: None,
        }
    }

    fn pod(name: &str, ready: bool, owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some([("app".to_owned(), "db".to_owned())].into()),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: "db-1".into(),
                        uid: uid.into(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]
                }),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn no_scale(_: &OwnerReference) -> Option<Scale> {
        None
    }

    #[test]
    fn selector_rules() {
        let budget = pdb(Some(IntOrString::Int(1)), None);
        let p = pod("a", true, None);
        assert!(selects(&budget, &p.metadata));
        let mut other_ns = p.clone();
        other_ns.metadata.namespace = Some("other".into());
        assert!(!selects(&budget, &other_ns.metadata));
        let mut none = budget.clone();
        none.spec.as_mut().unwrap().selector = None;
        assert!(!selects(&none, &p.metadata), "no selector selects nothing");
        let mut all = budget.clone();
        all.spec.as_mut().unwrap().selector = Some(LabelSelector::default());
        assert!(
            selects(&all, &p.metadata),
            "an empty selector selects everything"
        );
    }

    #[test]
    fn min_available_counts_ready_pods_and_disrupted_ones_do_not_count() {
        let now = at("2026-01-01T00:10:00Z");
        let (a, b, c) = (
            pod("a", true, None),
            pod("b", true, None),
            pod("c", false, None),
        );
        let mut budget = pdb(Some(IntOrString::Int(1)), None);
        let got = assess(&budget, &[&a, &b, &c], &no_scale, now);
        let s = &got.status;
        assert_eq!(
            (
                s.expected_pods,
                s.desired_healthy,
                s.current_healthy,
                s.disruptions_allowed
            ),
            (Some(3), Some(1), Some(2), Some(1))
        );
        assert_eq!(s.observed_generation, Some(2));
        let cond = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("True", "SufficientPods")
        );
        // `a` was just evicted: it no longer counts, and the budget looks again when the entry
        // would expire.
        budget.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some([("a".to_owned(), Time(at("2026-01-01T00:09:30Z")))].into()),
            ..got.status.clone()
        });
        let got = assess(&budget, &[&a, &b, &c], &no_scale, now);
        assert_eq!(got.status.current_healthy, Some(1));
        assert_eq!(got.status.disruptions_allowed, Some(0));
        assert_eq!(got.recheck, Some(Duration::from_secs(90)));
        let cond = &got.status.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("False", "InsufficientPods")
        );
        // Once it is deleting, the entry goes and the pod does not count either.
        let mut deleting = a.clone();
        deleting.metadata.deletion_timestamp = Some(Time(now));
        let after = assess(&budget, &[&deleting, &b, &c], &no_scale, now);
        assert_eq!(after.status.disrupted_pods, None);
        assert_eq!(after.status.current_healthy, Some(1));
        // An entry past the timeout is dropped with a warning and the pod counts again.
        let late = at("2026-01-01T00:12:00Z");
        let expired = assess(&budget, &[&a, &b, &c], &no_scale, late);
        assert_eq!(expired.status.current_healthy, Some(2));
        assert_eq!(expired.notes[0].reason, "NotDeleted");
    }

    #[test]
    fn max_unavailable_and_percentages_use_the_controllers_replicas() {
        let now = at("2026-01-01T00:00:00Z");
        let pods: Vec<Pod> = (0..4)
            .map(|i| pod(&format!("p{i}"), i != 3, Some("rs-uid")))
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let five = |o: &OwnerReference| {
            Some(Scale {
                uid: o.uid.clone(),
                replicas: 5,
            })
        };
        // maxUnavailable 1 of 5 wanted: 4 must be healthy, 3 are.
        let got = assess(&pdb(None, Some(IntOrString::Int(1))), &refs, &five, now);
        assert_eq!(
            (
                got.status.expected_pods,
                got.status.desired_healthy,
                got.status.disruptions_allowed
            ),
            (Some(5), Some(4), Some(0))
        );
        // minAvailable 50% of 5 rounds up to 3: one disruption allowed.
        let got = assess(
            &pdb(Some(IntOrString::String("50%".into())), None),
            &refs,
            &five,
            now,
        );
        assert_eq!(
            (got.status.desired_healthy, got.status.disruptions_allowed),
            (Some(3), Some(0))
        );
        assert_eq!(got.status.current_healthy, Some(3));
        // maxUnavailable 30% of 5 rounds up to 2 unavailable: 3 desired, 0 allowed with 3 healthy.
        let got = assess(
            &pdb(None, Some(IntOrString::String("30%".into()))),
            &refs,
            &five,
            now,
        );
        assert_eq!(got.status.desired_healthy, Some(3));
        // A controller that cannot be found fails safe.
        let mut budget = pdb(None, Some(IntOrString::Int(1)));
        budget.status = Some(PodDisruptionBudgetStatus {
            disruptions_allowed: Some(3),
            ..PodDisruptionBudgetStatus::default()
        });
        let got = assess(&budget, &refs, &no_scale, now);
        assert_eq!(got.status.disruptions_allowed, Some(0));
        let cond = &got.status.conditions.as_ref().unwrap()[0];
        assert_eq!(cond.reason, "SyncFailed");
        assert!(
            cond.message.contains("found no controllers for pod \"p0\""),
            "{}",
            cond.message
        );
        // Pods without a controller are reported and left out.
        let loose = pod("loose", true, None);
        let mut mixed = refs.clone();
        mixed.push(&loose);
        let got = assess(&pdb(None, Some(IntOrString::Int(1))), &mixed, &five, now);
        assert_eq!(got.status.expected_pods, Some(5));
        assert_eq!(got.notes[0].reason, "UnmanagedPods");
    }
}
