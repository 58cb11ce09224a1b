//! The ReplicaSet controller: keeps `spec.replicas` pods of each ReplicaSet, replacing pods that
//! die or are deleted, and reports counts in its status. The decisions are
//! [`workload::plan_replicaset`]; this module is the loop around it.
//!
//! The same loop runs ReplicationControllers (core/v1, the ReplicaSet's predecessor with a
//! plain label map for a selector), as kube-controller-manager does: each is seen as the
//! ReplicaSet it converts to ([`Replicated`]), and its pods are owned by the
//! ReplicationController itself.
//!
//! Like kube-controller-manager it creates pods in batches that grow 1, 2, 4, … (a failing
//! template fails once, not `replicas` times), adopts orphan pods its selector matches, and
//! remembers the pods it created or deleted until its cache shows them, so a slow watch never
//! makes it create a pod twice.

use std::{borrow::Cow, fmt::Debug, sync::Arc, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetSpec, ReplicaSetStatus},
        core::v1::{
            Pod as ApiPod, ReplicationController, ReplicationControllerCondition,
            ReplicationControllerStatus,
        },
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::cached::Pod;

use super::{
    informer::{Change, Expectations, Informer, Key, WorkQueue, Writes, work},
    workload,
};

/// A kind this controller runs: a ReplicaSet, or an object that behaves as one.
pub trait Replicated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// What a pass over one is called in the logs.
    const WHAT: &'static str;

    /// The ReplicaSet this object behaves as: its metadata, replicas, selector, template,
    /// minReadySeconds and status.
    fn as_replica_set(&self) -> Cow<'_, ReplicaSet>;

    /// This object with `status` in place of its own, or `None` if that is what it has.
    fn with_status(&self, status: &ReplicaSetStatus) -> Option<Self>;
}

impl Replicated for ReplicaSet {
    const WHAT: &'static str = "syncing replica set";

    fn as_replica_set(&self) -> Cow<'_, ReplicaSet> {
        Cow::Borrowed(self)
    }

    fn with_status(&self, status: &ReplicaSetStatus) -> Option<Self> {
        (self.status.as_ref() != Some(status)).then(|| Self {
            status: Some(status.clone()),
            ..self.clone()
        })
    }
}

impl Replicated for ReplicationController {
    const WHAT: &'static str = "syncing replication controller";

    fn as_replica_set(&self) -> Cow<'_, ReplicaSet> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.as_ref().map(|s| ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            observed_generation: s.observed_generation,
            conditions: s.conditions.as_ref().map(|cs| {
                cs.iter()
                    .map(|c| ReplicaSetCondition {
                        type_: Some(c.type_.clone()),
                        status: Some(c.status.clone()),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: c.last_transition_time.clone(),
                    })
                    .collect()
            }),
            terminating_replicas: None,
        });
        Cow::Owned(ReplicaSet {
            metadata: self.metadata.clone(),
            spec: ReplicaSetSpec {
                replicas: spec.replicas,
                min_ready_seconds: spec.min_ready_seconds,
                // A missing selector stays empty, and an empty selector adopts nothing.
                selector: LabelSelector {
                    match_labels: spec.selector,
                    match_expressions: None,
                },
                template: spec.template,
            },
            status,
        })
    }

    fn with_status(&self, status: &ReplicaSetStatus) -> Option<Self> {
        let status = ReplicationControllerStatus {
            replicas: status.replicas,
            fully_labeled_replicas: status.fully_labeled_replicas,
            ready_replicas: status.ready_replicas,
            available_replicas: status.available_replicas,
            observed_generation: status.observed_generation,
            conditions: status.conditions.as_ref().map(|cs| {
                cs.iter()
                    .map(|c| ReplicationControllerCondition {
                        type_: c.type_.clone().unwrap_or_default(),
                        status: c.status.clone().unwrap_or_default(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: c.last_transition_time.clone(),
                    })
                    .collect()
            }),
        };
        (self.status.as_ref() != Some(&status)).then(|| Self {
            status: Some(status),
            ..self.clone()
        })
    }
}

/// The caches the controller reads.
pub struct Caches<R: Replicated> {
    /// The ReplicaSets (or ReplicationControllers).
    pub owners: Arc<Informer<R>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
}

impl<R: Replicated> Clone for Caches<R> {
    fn clone(&self) -> Self {
        Self {
            owners: self.owners.clone(),
            pods: self.pods.clone(),
        }
    }
}

/// How long creations and deletions are waited for before the cache is trusted anyway
/// (kube-controller-manager's expectations time out after 5 minutes; a watch is never that slow
/// here).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the controller for `R` until the informers end.
pub async fn run<R: Replicated>(client: Client, caches: Caches<R>) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut replicasets = caches.owners.subscribe();
    let mut pods = caches.pods.subscribe();
    caches.owners.synced().await;
    caches.pods.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for rs in caches.owners.store().state() {
                queue.add(Key::of(&*rs));
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
                    change = replicasets.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|r| queue.add(Key::of(&**r))),
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
    let work = work(queue, R::WHAT, |key| {
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

/// ReplicaSets to look at when `pod` changes: its controller, or for an orphan every
/// ReplicaSet of its namespace whose selector matches (to adopt it).
fn owners_of<R: Replicated>(caches: &Caches<R>, pod: &Pod) -> Vec<Key> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let rss = caches.owners.store().state();
    match workload::controller_of(&pod.metadata).map(|r| r.uid.as_str()) {
        Some(uid) => rss
            .iter()
            .filter(|rs| rs.meta().uid.as_deref() == Some(uid))
            .map(|rs| Key::of(&**rs))
            .collect(),
        None => {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            rss.iter()
                .filter(|rs| rs.meta().namespace.as_deref() == Some(ns.as_str()))
                .filter(|rs| {
                    workload::selector_matches(&rs.as_replica_set().spec.selector, &labels)
                })
                .map(|rs| Key::of(&**rs))
                .collect()
        }
    }
}

/// One pass over one ReplicaSet: records in `exp` what it expects to see, and returns when to
/// look again.
async fn reconcile<R: Replicated>(
    client: &Client,
    caches: &Caches<R>,
    key: &Key,
    exp: &mut Writes,
) -> Result<Option<Duration>, kube::Error> {
    let Some(owner) = caches.owners.store().get(&key.object_ref()) else {
        return Ok(None);
    };
    let (api_version, kind) = (R::api_version(&()), R::kind(&()));
    let rs = owner.as_replica_set();
    // A ReplicaSet being deleted keeps its pods for the garbage collector to handle.
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<ApiPod> = Api::namespaced(client.clone(), &key.namespace);
    let all = caches.pods.store().state();
    let selector = rs.spec.selector.clone();
    // Adopt orphans the selector matches (not ones being deleted).
    for pod in all.iter().filter(|p| {
        p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
            && workload::should_adopt(&selector, &p.metadata)
    }) {
        let mut owners = pod.metadata.owner_references.clone().unwrap_or_default();
        owners.push(workload::owner_reference(&api_version, &kind, &rs.metadata));
        let patch = json!({"metadata": {
            "ownerReferences": owners,
            "resourceVersion": pod.metadata.resource_version,
        }});
        let name = pod.metadata.name.clone().unwrap_or_default();
        match pods_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(owner = %key, %kind, pod = name, "adopted pod"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e),
        }
        // The adoption shows up as a pod change, which queues this ReplicaSet again.
        exp.created.insert(name);
    }
    if !exp.created.is_empty() {
        return Ok(None);
    }
    let owned: Vec<&Pod> = all
        .iter()
        .map(|p| &**p)
        .filter(|p| workload::is_controlled_by(&p.metadata, &uid))
        .collect();
    let now = jiff::Timestamp::now();
    let plan = workload::plan_replicaset(&rs, &owned, now);
    let pp = PostParams {
        field_manager: Some("replicaset-controller".into()),
        ..PostParams::default()
    };
    let mut failure = None;
    if plan.create > 0 {
        let template = workload::new_pod_owned_by(&rs, &api_version, &kind);
        let mut left = plan.create;
        let mut batch = 1;
        'batches: while left > 0 {
            let n = batch.min(left);
            let results =
                futures::future::join_all((0..n).map(|_| pods_api.create(&pp, &template))).await;
            // Every success of the batch is recorded before the first error stops the rest.
            for r in results {
                match r {
                    Ok(pod) => {
                        exp.created.extend(pod.metadata.name);
                    }
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            if failure.is_some() {
                break 'batches;
            }
            left -= n;
            batch *= 2;
        }
        tracing::debug!(owner = %key, %kind, created = exp.created.len(), "created pods");
    }
    for name in &plan.delete {
        match pods_api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                exp.deleted.insert(name.clone());
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let rs_api: Api<R> = Api::namespaced(client.clone(), &key.namespace);
    let mut status = plan.status.clone();
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_.as_deref() != Some("ReplicaFailure"));
    }
    if let Some(e) = &failure {
        // Kubernetes' ReplicaFailure condition says why pods could not be made.
        let reason = if plan.create > 0 {
            "FailedCreate"
        } else {
            "FailedDelete"
        };
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(ReplicaSetCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                reason: Some(reason.into()),
                message: Some(e.to_string()),
                // The transition time stays while the failure does: a status that changed on
                // every pass would requeue itself past the back-off.
                last_transition_time: rs
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c.type_.as_deref() == Some("ReplicaFailure")
                                && c.reason.as_deref() == Some(reason)
                        })
                    })
                    .and_then(|c| c.last_transition_time.clone())
                    .or(Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        now,
                    ))),
            });
    }
    if let Some(next) = owner.with_status(&status) {
        super::replace_status(&rs_api, &key.name, &next).await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Pods ready but not yet available for minReadySeconds: look again when they will be.
    let requeue = plan.requeue_after;
    Ok(requeue)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodTemplateSpec, ReplicationControllerSpec};

    use super::*;

    fn rc() -> ReplicationController {
        let labels = BTreeMap::from([("app".to_owned(), "legacy".to_owned())]);
        ReplicationController {
            metadata: kube::api::ObjectMeta {
                name: Some("legacy".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(ReplicationControllerSpec {
                replicas: Some(3),
                min_ready_seconds: Some(5),
                selector: Some(labels.clone()),
                template: Some(PodTemplateSpec {
                    metadata: Some(kube::api::ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: None,
                }),
            }),
            status: None,
        }
    }

    #[test]
    fn a_replication_controller_is_seen_as_a_replica_set() {
        let rc = rc();
        let rs = rc.as_replica_set();
        assert_eq!(rs.metadata, rc.metadata);
        assert_eq!(rs.spec.replicas, Some(3));
        assert_eq!(rs.spec.min_ready_seconds, Some(5));
        let labels = BTreeMap::from([("app".to_owned(), "legacy".to_owned())]);
        assert!(workload::selector_matches(&rs.spec.selector, &labels));
        assert!(!workload::selector_matches(
            &rs.spec.selector,
            &BTreeMap::from([("app".to_owned(), "web".to_owned())])
        ));
        let pod = workload::new_pod_owned_by(&rs, "v1", "ReplicationController");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.api_version.as_str(),
                owner.uid.as_str()
            ),
            ("ReplicationController", "v1", "u1")
        );
    }

    #[test]
    fn status_converts_both_ways_and_is_written_only_when_it_changes() {
        let rc = rc();
        let status = ReplicaSetStatus {
            replicas: 3,
            fully_labeled_replicas: Some(3),
            ready_replicas: Some(2),
            available_replicas: Some(1),
            observed_generation: Some(2),
            conditions: Some(vec![ReplicaSetCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                reason: Some("FailedCreate".into()),
                message: Some("quota".into()),
                last_transition_time: None,
            }]),
            // A ReplicationController has no such field: it is dropped, and not counted as a
            // change.
            terminating_replicas: Some(0),
        };
        let next = rc.with_status(&status).expect("a new status");
        let written = next.status.clone().unwrap();
        assert_eq!(written.ready_replicas, Some(2));
        assert_eq!(
            written.conditions.as_ref().unwrap()[0].type_,
            "ReplicaFailure"
        );
        assert!(next.with_status(&status).is_none(), "same status again");
        let seen = next.as_replica_set().status.clone().unwrap();
        assert_eq!(
            ReplicaSetStatus {
                terminating_replicas: Some(0),
                ..seen
            },
            status
        );
    }
}
