//! The Deployment controller: rolls each Deployment's pod template out through ReplicaSets
//! (RollingUpdate within maxSurge/maxUnavailable, or Recreate), keeps revision history, and
//! writes the status `kubectl rollout status` reads. The decisions are
//! [`workload::plan_deployment`]; this module is the loop around it.
//!
//! A Deployment is looked at again whenever one of its ReplicaSets changes (their status follows
//! the pods), and every few seconds while a rollout is under way, so that `minReadySeconds` and
//! `progressDeadlineSeconds` take effect without any other event.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{
    informer::{Change, Expectations, Informer, Key, WorkQueue, work},
    workload,
};

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// Deployments.
    pub deployments: Arc<Informer<Deployment>>,
    /// ReplicaSets.
    pub replicasets: Arc<Informer<ReplicaSet>>,
}

/// How often a Deployment in the middle of a rollout is looked at without an event.
const ROLLOUT_RESYNC: Duration = Duration::from_secs(5);
/// How long a created ReplicaSet is waited for in the cache.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut deployments = caches.deployments.subscribe();
    let mut replicasets = caches.replicasets.subscribe();
    caches.deployments.synced().await;
    caches.replicasets.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for d in caches.deployments.store().state() {
                queue.add(Key::of(&*d));
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
                    change = deployments.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|d| queue.add(Key::of(&**d))),
                        None => break,
                    },
                    change = replicasets.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => {
                            let all = caches.deployments.store().state();
                            for rs in c.objects() {
                                let Some(owner) = workload::controller_of(&rs.metadata) else { continue };
                                let uid = owner.uid.as_str();
                                for d in all.iter().filter(|d| d.metadata.uid.as_deref() == Some(uid)) {
                                    queue.add(Key::of(&**d));
                                }
                            }
                        }
                        None => break,
                    },
                }
            }
        }
    };
    // ReplicaSets created (by name) and not yet in the cache, per Deployment.
    let expected = Expectations::new(EXPECTATION_TIMEOUT);
    let work = work(queue, "syncing deployment", |key| {
        let (client, caches, expected) = (&client, &caches, &expected);
        async move {
            if !expected.caught_up(&key, |name: &String| seen(caches, &key, name)) {
                return Ok(Some(Duration::from_millis(200)));
            }
            let mut created = None;
            let result = reconcile(client, caches, &key, &mut created).await;
            expected.record(key, created);
            result
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

/// Whether the ReplicaSet cache shows `created` (a ReplicaSet name) for Deployment `key`.
fn seen(caches: &Caches, key: &Key, created: &str) -> bool {
    caches
        .replicasets
        .store()
        .get(
            &Key {
                namespace: key.namespace.clone(),
                name: created.to_owned(),
            }
            .object_ref(),
        )
        .is_some()
}

/// One pass over one Deployment: records the ReplicaSet it created in `created`, and returns when
/// to look
/// again without an event.
async fn reconcile(
    client: &Client,
    caches: &Caches,
    key: &Key,
    created: &mut Option<String>,
) -> Result<Option<Duration>, kube::Error> {
    let Some(d) = caches.deployments.store().get(&key.object_ref()) else {
        return Ok(None);
    };
    // A Deployment being deleted leaves its ReplicaSets to the garbage collector.
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let all = caches.replicasets.store().state();
    let owned: Vec<&ReplicaSet> = all
        .iter()
        .map(|rs| &**rs)
        .filter(|rs| {
            rs.metadata.namespace == d.metadata.namespace
                && workload::is_controlled_by(&rs.metadata, &uid)
        })
        .collect();
    let plan = workload::plan_deployment(&d, &owned, jiff::Timestamp::now());
    tracing::debug!(
        deployment = %key,
        owned = owned.len(),
        create = plan.create.is_some(),
        scale = plan.scale.len(),
        delete = plan.delete.len(),
        "planned"
    );
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &key.namespace);
    if let Some(rs) = &plan.create {
        let pp = PostParams {
            field_manager: Some("deployment-controller".into()),
            ..PostParams::default()
        };
        match rs_api.create(&pp, rs).await {
            Ok(made) => {
                tracing::info!(deployment = %key, replicaset = made.metadata.name.as_deref().unwrap_or(""), "created replica set");
                *created = made.metadata.name;
            }
            // The name is taken. If by this Deployment's own ReplicaSet (made by an earlier pass
            // whose write the cache has not shown yet), it is done; otherwise it is a hash
            // collision and, as in Kubernetes, status.collisionCount changes the next name.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let name = rs.metadata.name.clone().unwrap_or_default();
                if let Some(existing) = rs_api.get_opt(&name).await?
                    && workload::is_controlled_by(&existing.metadata, &uid)
                {
                    *created = Some(name);
                    return Ok(Some(Duration::ZERO));
                }
                let count = d
                    .status
                    .as_ref()
                    .and_then(|s| s.collision_count)
                    .unwrap_or(0)
                    .saturating_add(1);
                let api: Api<Deployment> = Api::namespaced(client.clone(), &key.namespace);
                let patch = json!({"status": {"collisionCount": count}});
                api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                return Ok(Some(Duration::ZERO));
            }
            Err(e) => return Err(e),
        }
    }
    for change in &plan.scale {
        let mut patch = json!({
            "metadata": {"annotations": change.annotations},
            "spec": {"replicas": change.replicas},
        });
        if let Some(n) = change.min_ready_seconds {
            patch["spec"]["minReadySeconds"] = json!(n);
        }
        match rs_api
            .patch(&change.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(deployment = %key, replicaset = change.name, replicas = change.replicas, "scaled")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    for name in &plan.delete {
        match rs_api.delete(name, &DeleteParams::background()).await {
            Ok(_) => tracing::debug!(deployment = %key, replicaset = name, "old revision pruned"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), &key.namespace);
    // The status is written at the version the revision patch (if any) returned.
    let mut next = (*d).clone();
    if let Some(revision) = &plan.revision {
        let patch = json!({"metadata": {"annotations": {workload::REVISION_ANNOTATION: revision}}});
        match api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(patched) => next = patched,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    if d.status.as_ref() != Some(&plan.status) {
        next.status = Some(plan.status.clone());
        super::replace_status(&api, &key.name, &next).await?;
    }
    let again = if !workload::rollout_complete(&d, &plan.status) {
        Some(
            plan.requeue_after
                .map_or(ROLLOUT_RESYNC, |t| t.min(ROLLOUT_RESYNC)),
        )
    } else {
        plan.requeue_after
    };
    Ok(again)
}
