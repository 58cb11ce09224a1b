//! The ReplicaSet controller: keeps `spec.replicas` pods of each ReplicaSet, replacing pods that
//! die or are deleted, and reports counts in its status. The decisions are
//! [`workload::plan_replicaset`]; this module is the loop around it.
//!
//! Like kube-controller-manager it creates pods in batches that grow 1, 2, 4, … (a failing
//! template fails once, not `replicas` times), adopts orphan pods its selector matches, and
//! remembers the pods it created or deleted until its cache shows them, so a slow watch never
//! makes it create a pod twice.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{
    informer::{Change, Expectations, Informer, Key, WorkQueue, Writes, work},
    workload,
};

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// ReplicaSets.
    pub replicasets: Arc<Informer<ReplicaSet>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
}

/// How long creations and deletions are waited for before the cache is trusted anyway
/// (kube-controller-manager's expectations time out after 5 minutes; a watch is never that slow
/// here).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut replicasets = caches.replicasets.subscribe();
    let mut pods = caches.pods.subscribe();
    caches.replicasets.synced().await;
    caches.pods.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for rs in caches.replicasets.store().state() {
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
    let work = work(queue, "syncing replica set", |key| {
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
fn owners_of(caches: &Caches, pod: &Pod) -> Vec<Key> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let rss = caches.replicasets.store().state();
    match workload::controller_of(&pod.metadata).map(|r| r.uid.as_str()) {
        Some(uid) => rss
            .iter()
            .filter(|rs| rs.metadata.uid.as_deref() == Some(uid))
            .map(|rs| Key::of(&**rs))
            .collect(),
        None => {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            rss.iter()
                .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|rs| workload::selector_matches(&rs.spec.selector, &labels))
                .map(|rs| Key::of(&**rs))
                .collect()
        }
    }
}

/// One pass over one ReplicaSet: records in `exp` what it expects to see, and returns when to
/// look again.
async fn reconcile(
    client: &Client,
    caches: &Caches,
    key: &Key,
    exp: &mut Writes,
) -> Result<Option<Duration>, kube::Error> {
    let Some(rs) = caches.replicasets.store().get(&key.object_ref()) else {
        return Ok(None);
    };
    // A ReplicaSet being deleted keeps its pods for the garbage collector to handle.
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let all = caches.pods.store().state();
    let selector = rs.spec.selector.clone();
    // Adopt orphans the selector matches (not ones being deleted).
    for pod in all.iter().filter(|p| {
        p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
            && workload::should_adopt(&selector, &p.metadata)
    }) {
        let mut owners = pod.metadata.owner_references.clone().unwrap_or_default();
        owners.push(workload::owner_reference(
            "apps/v1",
            "ReplicaSet",
            &rs.metadata,
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
            Ok(_) => tracing::info!(replicaset = %key, pod = name, "adopted pod"),
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
        let template = workload::new_pod(&rs);
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
        tracing::debug!(replicaset = %key, created = exp.created.len(), "created pods");
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
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &key.namespace);
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
        status.conditions.get_or_insert_with(Vec::new).push(
            k8s_openapi::api::apps::v1::ReplicaSetCondition {
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
            },
        );
    }
    if rs.status.as_ref() != Some(&status) {
        let mut next = (*rs).clone();
        next.status = Some(status.clone());
        super::replace_status(&rs_api, &key.name, &next).await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Pods ready but not yet available for minReadySeconds: look again when they will be.
    let requeue = plan.requeue_after;
    Ok(requeue)
}
