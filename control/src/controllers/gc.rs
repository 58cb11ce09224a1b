//! The garbage collector: follows `metadata.ownerReferences` so that deleting an owner removes
//! (or orphans) what it owns.
//!
//! - **Background** (the default): once every owner of an object is gone, the object is deleted;
//!   an owner that is gone is dropped from a list that still names a live one.
//! - **Orphan** (`kubectl delete --cascade=orphan`): the apiserver keeps the owner with the
//!   `orphan` finalizer; the collector removes the owner from its dependents' references, then
//!   the finalizer.
//! - **Foreground** (`--cascade=foreground`): the owner stays with `foregroundDeletion` while the
//!   collector deletes its dependents (in the foreground as well); the finalizer goes once none
//!   is left.
//!
//! The collector follows the kinds the built-in controllers create and own: Pods, ReplicaSets,
//! ReplicationControllers, Deployments, DaemonSets, StatefulSets, Jobs, CronJobs, Services and
//! EndpointSlices (a
//! reference to any other kind of owner is left alone). Before deleting for a missing owner it asks the apiserver, not just its cache, so an
//! owner created a moment ago is never taken for gone. The decisions are a pure function,
//! [`decide`].

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{ReplicationController, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy},
};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::cached::Pod;

use super::informer::{Change, Informer, Key, WorkQueue, work};

/// The finalizer that makes an owner wait for its dependents to be orphaned.
pub const ORPHAN: &str = "orphan";
/// The finalizer that makes an owner wait for its dependents to be deleted.
pub const FOREGROUND: &str = "foregroundDeletion";

/// A kind the collector follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 Pod.
    Pod,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// core/v1 ReplicationController.
    ReplicationController,
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob.
    CronJob,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
}

impl Kind {
    /// The kind an owner reference names, if followed.
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("v1", "Pod") => Some(Self::Pod),
            ("apps/v1", "ReplicaSet") => Some(Self::ReplicaSet),
            ("v1", "ReplicationController") => Some(Self::ReplicationController),
            ("apps/v1", "Deployment") => Some(Self::Deployment),
            ("apps/v1", "DaemonSet") => Some(Self::DaemonSet),
            ("apps/v1", "StatefulSet") => Some(Self::StatefulSet),
            ("batch/v1", "Job") => Some(Self::Job),
            ("batch/v1", "CronJob") => Some(Self::CronJob),
            ("v1", "Service") => Some(Self::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Self::EndpointSlice),
            _ => None,
        }
    }
}

/// One object the collector looks at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Item {
    /// Its kind.
    pub kind: Kind,
    /// Namespace and name.
    pub key: Key,
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}", self.kind, self.key)
    }
}

/// What became of an owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists with the referenced UID.
    Present,
    /// Gone (or replaced by an object with another UID).
    Absent,
    /// Of a kind the collector does not follow.
    Unknown,
}

/// One write the collector makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Delete `item` (if it still has `uid`) with `policy`.
    Delete {
        /// What.
        item: Item,
        /// Its UID (a precondition).
        uid: String,
        /// Foreground when an owner is deleted in the foreground, else Background.
        foreground: bool,
    },
    /// Set `item`'s owner references to `owners` (at resourceVersion `rv`).
    SetOwners {
        /// What.
        item: Item,
        /// The version read.
        rv: String,
        /// The new list.
        owners: Vec<OwnerReference>,
    },
    /// Remove `finalizer` from `item` (at resourceVersion `rv`).
    RemoveFinalizer {
        /// What.
        item: Item,
        /// The version read.
        rv: String,
        /// The finalizer.
        finalizer: &'static str,
        /// The finalizers left.
        rest: Vec<String>,
    },
}

/// Decides what to do about `item` (pure core): as a dependent, given the state of each of its
/// owners; as an owner being deleted, given its dependents.
pub fn decide(
    item: &Item,
    meta: &ObjectMeta,
    owners: &[OwnerState],
    dependents: &[(Item, ObjectMeta)],
) -> Vec<Action> {
    let mut actions = Vec::new();
    let uid = meta.uid.clone().unwrap_or_default();
    let rv = meta.resource_version.clone().unwrap_or_default();
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if !refs.is_empty() && refs.len() == owners.len() && meta.deletion_timestamp.is_none() {
        if owners.iter().all(|s| *s == OwnerState::Absent) {
            actions.push(Action::Delete {
                item: item.clone(),
                uid: uid.clone(),
                foreground: false,
            });
            return actions;
        }
        if owners.contains(&OwnerState::Absent) {
            let kept: Vec<OwnerReference> = refs
                .iter()
                .zip(owners)
                .filter(|(_, s)| **s != OwnerState::Absent)
                .map(|(r, _)| r.clone())
                .collect();
            actions.push(Action::SetOwners {
                item: item.clone(),
                rv: rv.clone(),
                owners: kept,
            });
        }
    }
    if meta.deletion_timestamp.is_none() {
        return actions;
    }
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    let without =
        |f: &str| -> Vec<String> { finalizers.iter().filter(|x| *x != f).cloned().collect() };
    let mine: Vec<&(Item, ObjectMeta)> = dependents
        .iter()
        .filter(|(_, m)| {
            m.owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid && !uid.is_empty())
        })
        .collect();
    if finalizers.iter().any(|f| f == ORPHAN) {
        // The finalizer goes only once no dependent names the owner any more (a later pass),
        // so a failed write can never leave a dependent pointing at an owner that is gone.
        if mine.is_empty() {
            actions.push(Action::RemoveFinalizer {
                item: item.clone(),
                rv,
                finalizer: ORPHAN,
                rest: without(ORPHAN),
            });
        }
        for (dep, m) in &mine {
            actions.push(Action::SetOwners {
                item: dep.clone(),
                rv: m.resource_version.clone().unwrap_or_default(),
                owners: m
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect(),
            });
        }
    } else if finalizers.iter().any(|f| f == FOREGROUND) {
        if mine.is_empty() {
            actions.push(Action::RemoveFinalizer {
                item: item.clone(),
                rv,
                finalizer: FOREGROUND,
                rest: without(FOREGROUND),
            });
        } else {
            for (dep, m) in mine {
                if m.deletion_timestamp.is_none() {
                    actions.push(Action::Delete {
                        item: dep.clone(),
                        uid: m.uid.clone().unwrap_or_default(),
                        foreground: true,
                    });
                }
            }
        }
    }
    actions
}

/// The caches the collector reads (shared with the other controllers).
#[derive(Clone)]
pub struct Caches {
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
    /// ReplicaSets.
    pub replicasets: Arc<Informer<ReplicaSet>>,
    /// ReplicationControllers.
    pub replicationcontrollers: Arc<Informer<ReplicationController>>,
    /// Deployments.
    pub deployments: Arc<Informer<Deployment>>,
    /// DaemonSets.
    pub daemonsets: Arc<Informer<DaemonSet>>,
    /// StatefulSets.
    pub statefulsets: Arc<Informer<StatefulSet>>,
    /// Jobs.
    pub jobs: Arc<Informer<Job>>,
    /// CronJobs.
    pub cronjobs: Arc<Informer<CronJob>>,
    /// Services.
    pub services: Arc<Informer<Service>>,
    /// EndpointSlices.
    pub slices: Arc<Informer<EndpointSlice>>,
}

/// Runs `$body` with `$k` bound to the Rust type of `$kind`.
macro_rules! with_kind {
    ($kind:expr, $k:ident => $body:expr) => {
        match $kind {
            Kind::Pod => {
                type $k = Pod;
                $body
            }
            Kind::ReplicaSet => {
                type $k = ReplicaSet;
                $body
            }
            Kind::ReplicationController => {
                type $k = ReplicationController;
                $body
            }
            Kind::Deployment => {
                type $k = Deployment;
                $body
            }
            Kind::DaemonSet => {
                type $k = DaemonSet;
                $body
            }
            Kind::StatefulSet => {
                type $k = StatefulSet;
                $body
            }
            Kind::Job => {
                type $k = Job;
                $body
            }
            Kind::CronJob => {
                type $k = CronJob;
                $body
            }
            Kind::Service => {
                type $k = Service;
                $body
            }
            Kind::EndpointSlice => {
                type $k = EndpointSlice;
                $body
            }
        }
    };
}

impl Caches {
    fn meta(&self, item: &Item) -> Option<ObjectMeta> {
        let r = &item.key;
        match item.kind {
            Kind::Pod => self
                .pods
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::ReplicaSet => self
                .replicasets
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::ReplicationController => self
                .replicationcontrollers
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::Deployment => self
                .deployments
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::DaemonSet => self
                .daemonsets
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::StatefulSet => self
                .statefulsets
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::Job => self
                .jobs
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::CronJob => self
                .cronjobs
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::Service => self
                .services
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
            Kind::EndpointSlice => self
                .slices
                .store()
                .get(&r.object_ref())
                .map(|o| o.metadata.clone()),
        }
    }
}

fn api<K>(client: &Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), ns)
}

async fn live_uid<K>(client: &Client, key: &Key) -> Result<Option<String>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Ok(api::<K>(client, &key.namespace)
        .get_opt(&key.name)
        .await?
        .and_then(|o| o.meta().uid.clone()))
}

/// Every dependent the caches hold, by owner UID.
type Index = HashMap<String, BTreeSet<Item>>;

fn index_change<K: Resource>(index: &mut Index, kind: Kind, change: &Change<K>) -> Vec<Item> {
    let mut touched = Vec::new();
    let Change::Object { old, new } = change else {
        return touched;
    };
    for (obj, add) in [(old, false), (new, true)] {
        let Some(obj) = obj else { continue };
        let item = Item {
            kind,
            key: Key::of(&**obj),
        };
        for r in obj.meta().owner_references.iter().flatten() {
            if add {
                index.entry(r.uid.clone()).or_default().insert(item.clone());
            } else if let Some(set) = index.get_mut(&r.uid) {
                set.remove(&item);
                if set.is_empty() {
                    index.remove(&r.uid);
                }
            }
            if let Some(kind) = Kind::of(&r.api_version, &r.kind) {
                touched.push(Item {
                    kind,
                    key: Key {
                        namespace: item.key.namespace.clone(),
                        name: r.name.clone(),
                    },
                });
            }
        }
        touched.push(item);
    }
    // A deleted object's dependents must look at their owners again.
    if new.is_none()
        && let Some(uid) = old.as_ref().and_then(|o| o.meta().uid.clone())
    {
        touched.extend(index.get(&uid).into_iter().flatten().cloned());
    }
    touched
}

/// Runs the collector until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Item>> = WorkQueue::new();
    let index: Arc<Mutex<Index>> = Arc::default();
    let mut pods = caches.pods.subscribe();
    let mut replicasets = caches.replicasets.subscribe();
    let mut replicationcontrollers = caches.replicationcontrollers.subscribe();
    let mut deployments = caches.deployments.subscribe();
    let mut daemonsets = caches.daemonsets.subscribe();
    let mut statefulsets = caches.statefulsets.subscribe();
    let mut jobs = caches.jobs.subscribe();
    let mut cronjobs = caches.cronjobs.subscribe();
    let mut services = caches.services.subscribe();
    let mut slices = caches.slices.subscribe();
    caches.pods.synced().await;
    caches.replicasets.synced().await;
    caches.replicationcontrollers.synced().await;
    caches.deployments.synced().await;
    caches.daemonsets.synced().await;
    caches.statefulsets.synced().await;
    caches.jobs.synced().await;
    caches.cronjobs.synced().await;
    caches.services.synced().await;
    caches.slices.synced().await;
    // Start from everything the caches hold.
    let resync = {
        let caches = caches.clone();
        let queue = queue.clone();
        let index = index.clone();
        move || {
            let mut idx = index.lock().unwrap_or_else(|e| e.into_inner());
            idx.clear();
            macro_rules! all {
                ($inf:expr, $kind:expr) => {
                    for o in $inf.store().state() {
                        let change = Change::Object {
                            old: None,
                            new: Some(o),
                        };
                        let items =
                            crate::alloc::long_lived(|| index_change(&mut idx, $kind, &change));
                        for item in items {
                            queue.add(item);
                        }
                    }
                };
            }
            all!(caches.pods, Kind::Pod);
            all!(caches.replicasets, Kind::ReplicaSet);
            all!(caches.replicationcontrollers, Kind::ReplicationController);
            all!(caches.deployments, Kind::Deployment);
            all!(caches.daemonsets, Kind::DaemonSet);
            all!(caches.statefulsets, Kind::StatefulSet);
            all!(caches.jobs, Kind::Job);
            all!(caches.cronjobs, Kind::CronJob);
            all!(caches.services, Kind::Service);
            all!(caches.slices, Kind::EndpointSlice);
        }
    };
    resync();
    let dispatch = {
        let queue = queue.clone();
        let index = index.clone();
        async move {
            macro_rules! on {
                ($change:expr, $kind:expr) => {
                    match $change {
                        None => break,
                        Some(Change::Resync) => resync(),
                        Some(c) => {
                            let items = {
                                let mut idx = index.lock().unwrap_or_else(|e| e.into_inner());
                                // The index is kept: the heap of long-lived objects.
                                crate::alloc::long_lived(|| index_change(&mut idx, $kind, &c))
                            };
                            items.into_iter().for_each(|i| queue.add(i));
                        }
                    }
                };
            }
            loop {
                tokio::select! {
                    c = pods.next() => on!(c, Kind::Pod),
                    c = replicasets.next() => on!(c, Kind::ReplicaSet),
                    c = replicationcontrollers.next() => on!(c, Kind::ReplicationController),
                    c = deployments.next() => on!(c, Kind::Deployment),
                    c = daemonsets.next() => on!(c, Kind::DaemonSet),
                    c = statefulsets.next() => on!(c, Kind::StatefulSet),
                    c = jobs.next() => on!(c, Kind::Job),
                    c = cronjobs.next() => on!(c, Kind::CronJob),
                    c = services.next() => on!(c, Kind::Service),
                    c = slices.next() => on!(c, Kind::EndpointSlice),
                }
            }
        }
    };
    let work = work(queue, "garbage collection", |item| {
        let (client, caches, index) = (&client, &caches, &index);
        async move {
            process(client, caches, index, &item).await?;
            Ok(None)
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

async fn owner_state(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    r: &OwnerReference,
) -> Result<OwnerState, kube::Error> {
    let Some(kind) = Kind::of(&r.api_version, &r.kind) else {
        return Ok(OwnerState::Unknown);
    };
    let item = Item {
        kind,
        key: Key {
            namespace: namespace.to_owned(),
            name: r.name.clone(),
        },
    };
    if caches.meta(&item).and_then(|m| m.uid) == Some(r.uid.clone()) {
        return Ok(OwnerState::Present);
    }
    // The cache may lag: only the apiserver can say an owner is gone.
    let live = with_kind!(kind, K => live_uid::<K>(client, &item.key).await?);
    Ok(if live == Some(r.uid.clone()) {
        OwnerState::Present
    } else {
        OwnerState::Absent
    })
}

async fn process(
    client: &Client,
    caches: &Caches,
    index: &Mutex<Index>,
    item: &Item,
) -> Result<(), kube::Error> {
    let Some(meta) = caches.meta(item) else {
        return Ok(());
    };
    let mut owners = Vec::new();
    if meta.deletion_timestamp.is_none() {
        for r in meta.owner_references.iter().flatten() {
            owners.push(owner_state(client, caches, &item.key.namespace, r).await?);
        }
    }
    let dependents: Vec<(Item, ObjectMeta)> = match &meta.uid {
        Some(uid) if meta.deletion_timestamp.is_some() => {
            let items: Vec<Item> = index
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(uid)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            items
                .into_iter()
                .filter_map(|i| caches.meta(&i).map(|m| (i, m)))
                .collect()
        }
        _ => Vec::new(),
    };
    for action in decide(item, &meta, &owners, &dependents) {
        apply(client, &action).await?;
    }
    Ok(())
}

async fn apply(client: &Client, action: &Action) -> Result<(), kube::Error> {
    let pp = PatchParams {
        field_manager: Some("garbage-collector".into()),
        ..PatchParams::default()
    };
    // Gone is done. A conflict on a delete means the name now holds another object (the UID
    // precondition); on a patch it means a stale read, which is retried.
    let ignore_gone = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    };
    let ignore_replaced = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        other => other,
    };
    match action {
        Action::Delete {
            item,
            uid,
            foreground,
        } => {
            tracing::info!(kind = ?item.kind, object = %item.key, "deleting: its owners are gone");
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                propagation_policy: Some(if *foreground {
                    PropagationPolicy::Foreground
                } else {
                    PropagationPolicy::Background
                }),
                ..DeleteParams::default()
            };
            ignore_replaced(ignore_gone(
                with_kind!(item.kind, K => api::<K>(client, &item.key.namespace)
                .delete(&item.key.name, &dp)
                .await
                .map(|_| ())),
            ))
        }
        Action::SetOwners { item, rv, owners } => {
            // An emptied list is removed, as Kubernetes (omitempty) shows it.
            let owners = if owners.is_empty() {
                serde_json::Value::Null
            } else {
                json!(owners)
            };
            let patch = json!({"metadata": {"resourceVersion": rv, "ownerReferences": owners}});
            ignore_gone(
                with_kind!(item.kind, K => api::<K>(client, &item.key.namespace)
                .patch(&item.key.name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ())),
            )
        }
        Action::RemoveFinalizer { item, rv, rest, .. } => {
            let rest = if rest.is_empty() {
                serde_json::Value::Null
            } else {
                json!(rest)
            };
            let patch = json!({"metadata": {"resourceVersion": rv, "finalizers": rest}});
            ignore_gone(
                with_kind!(item.kind, K => api::<K>(client, &item.key.namespace)
                .patch(&item.key.name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ())),
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    fn item(kind: Kind, name: &str) -> Item {
        Item {
            kind,
            key: Key {
                namespace: "default".into(),
                name: name.into(),
            },
        }
    }

    fn meta(v: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(v).unwrap()
    }

    fn owner(uid: &str) -> serde_json::Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("rs-{uid}"), "uid": uid})
    }

    #[test]
    fn dependents_of_gone_owners_are_deleted_or_trimmed() {
        let pod = item(Kind::Pod, "p");
        let m = meta(
            json!({"uid": "p1", "resourceVersion": "7", "ownerReferences": [owner("a"), owner("b")]}),
        );
        assert_eq!(
            decide(&pod, &m, &[OwnerState::Absent, OwnerState::Absent], &[]),
            vec![Action::Delete {
                item: pod.clone(),
                uid: "p1".into(),
                foreground: false
            }]
        );
        let trimmed = decide(&pod, &m, &[OwnerState::Absent, OwnerState::Present], &[]);
        let Action::SetOwners { owners, rv, .. } = &trimmed[0] else {
            panic!("{trimmed:?}")
        };
        assert_eq!(
            (owners.len(), owners[0].uid.as_str(), rv.as_str()),
            (1, "b", "7")
        );
        assert!(decide(&pod, &m, &[OwnerState::Present, OwnerState::Unknown], &[]).is_empty());
        assert!(decide(&pod, &m, &[OwnerState::Absent, OwnerState::Unknown], &[]).len() == 1);
    }

    #[test]
    fn orphan_and_foreground_owners() {
        let rs = item(Kind::ReplicaSet, "rs");
        let dep = |name: &str, deleting: bool| {
            let mut m = meta(json!({"uid": format!("u-{name}"), "resourceVersion": "3",
                "ownerReferences": [owner("rs1"), owner("other")]}));
            if deleting {
                m.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ));
            }
            (item(Kind::Pod, name), m)
        };
        let owner_meta = |finalizer: &str| {
            meta(
                json!({"uid": "rs1", "resourceVersion": "9", "deletionTimestamp": "2026-01-01T00:00:00Z",
                "finalizers": [finalizer, "example.com/keep"]}),
            )
        };
        let actions = decide(&rs, &owner_meta(ORPHAN), &[], &[dep("a", false)]);
        expect_test::expect![[r#"
            [
                "set owners of a: [\"other\"]",
            ]
        "#]]
        .assert_debug_eq(&render(&actions));
        let actions = decide(&rs, &owner_meta(ORPHAN), &[], &[]);
        expect_test::expect![[r#"
            [
                "remove orphan from rs, leaving [\"example.com/keep\"]",
            ]
        "#]]
        .assert_debug_eq(&render(&actions));
        let actions = decide(&rs, &owner_meta(FOREGROUND), &[], &[]);
        expect_test::expect![[r#"
            [
                "remove foregroundDeletion from rs, leaving [\"example.com/keep\"]",
            ]
        "#]]
        .assert_debug_eq(&render(&actions));
    }

    fn render(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Delete {
                    item, foreground, ..
                } => format!(
                    "delete {}{}",
                    item.key.name,
                    if *foreground { " (foreground)" } else { "" }
                ),
                Action::SetOwners { item, owners, .. } => format!(
                    "set owners of {}: {:?}",
                    item.key.name,
                    owners.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>()
                ),
                Action::RemoveFinalizer {
                    item,
                    finalizer,
                    rest,
                    ..
                } => {
                    format!(
                        "remove {finalizer} from {}, leaving {rest:?}",
                        item.key.name
                    )
                }
            })
            .collect()
    }

    #[test]
    fn followed_kinds() {
        assert_eq!(Kind::of("apps/v1", "ReplicaSet"), Some(Kind::ReplicaSet));
        assert_eq!(Kind::of("batch/v1", "Job"), Some(Kind::Job));
        assert_eq!(Kind::of("batch/v1", "CronJob"), Some(Kind::CronJob));
        assert_eq!(Kind::of("apps/v1", "DaemonSet"), Some(Kind::DaemonSet));
        assert_eq!(Kind::of("apps/v1", "StatefulSet"), Some(Kind::StatefulSet));
        assert_eq!(Kind::of("v1", "ConfigMap"), None);
        assert_eq!(Kind::of("apps/v1beta1", "ReplicaSet"), None);
    }
}
