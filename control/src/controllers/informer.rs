//! Shared informers and work queues: the machinery every controller loop stands on.
//!
//! An [`Informer`] is one watch of one kind, kept in a kube-rs reflector [`Store`] and fanned
//! out to any number of subscribers as [`Change`]s that carry both the old and the new object
//! (kube-runtime's shared streams drop deletions and old objects, which a controller needs: a
//! pod whose labels change must leave the Services it no longer matches). Controllers share
//! informers, so the control plane holds each kind in memory once.
//!
//! A relist (a watch that expired) is turned into the changes it implies: objects that vanished
//! meanwhile are reported deleted, every other one as updated. A subscriber that falls more than
//! [`BUFFER`] (or [`SMALL_BUFFER`]) changes behind is told so ([`Change::Resync`]) and
//! reconciles everything.
//!
//! A [`WorkQueue`] holds keys to reconcile, deduplicated, with per-key retry back-off.
//! [`Expectations`] remember per key what a controller wrote until its caches show it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, broadcast};

/// Objects one pass created (by name) or deleted in one namespace, which a cache may not show
/// yet: the record of pod-owning controllers (ReplicaSet, DaemonSet, Job) for [`Expectations`].
#[derive(Default)]
pub struct Writes {
    /// Names created.
    pub created: BTreeSet<String>,
    /// Names deleted.
    pub deleted: BTreeSet<String>,
}

impl Writes {
    /// Whether the pass wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.deleted.is_empty()
    }

    /// Whether `store` shows every write: created objects are there, deleted ones are gone or
    /// being deleted.
    pub fn shown<K>(&self, store: &Store<K>, namespace: &str) -> bool
    where
        K: Resource<DynamicType = ()> + Clone,
    {
        let get = |name: &String| {
            store.get(
                &Key {
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                }
                .object_ref(),
            )
        };
        self.created.iter().all(|n| get(n).is_some())
            && self
                .deleted
                .iter()
                .all(|n| get(n).is_none_or(|o| o.meta().deletion_timestamp.is_some()))
    }
}

/// What a controller wrote for each key that its caches have not shown yet ("expectations"),
/// so that a lagging watch never makes it write the same thing twice. A key is reconciled only
/// once the caches caught up with its writes, or when they are older than the timeout (then the
/// cache is trusted again). Writes are recorded even when a later write of the same pass
/// failed. `E` is the controller's record of its writes (names, resourceVersions, ...).
pub struct Expectations<E> {
    timeout: Duration,
    entries: Mutex<HashMap<Key, (Instant, E)>>,
}

impl<E> Expectations<E> {
    /// No expectations yet; each is given up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may be reconciled: nothing is expected for it, `seen` says the caches show
    /// what was written, or that was longer ago than the timeout. The expectation is then
    /// forgotten.
    pub fn caught_up(&self, key: &Key, seen: impl FnOnce(&E) -> bool) -> bool {
        let mut all = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some((at, written)) = all.get(key) else {
            return true;
        };
        let done = at.elapsed() > self.timeout || seen(written);
        if done {
            all.remove(key);
        }
        done
    }

    /// Records what a pass over `key` wrote (`None`: nothing to wait for).
    pub fn record(&self, key: Key, written: Option<E>) {
        let mut all = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match written {
            Some(w) => {
                all.insert(key, (Instant::now(), w));
            }
            None => {
                all.remove(&key);
            }
        }
    }
}

/// An object's resourceVersion as a number (rudder's are store revisions), 0 when absent: what
/// expectations compare to tell whether a cache shows a write.
pub fn version(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How many changes a subscriber may fall behind before it must resync, for kinds written in
/// bursts of thousands (pods, Services and their EndpointSlices, ReplicaSets, Nodes, Leases).
pub const BUFFER: usize = 16384;
/// The same for kinds written a few at a time that no garbage-collected owner relation runs
/// through (namespaces, ServiceAccounts, ConfigMaps, HPAs): falling behind there costs a cheap
/// resync, while the collector's resync re-indexes every object. Every slot costs about 56
/// bytes whether used or not: 0.9 MB per informer at [`BUFFER`].
pub const SMALL_BUFFER: usize = 1024;

/// One change to a watched kind.
#[derive(Debug)]
pub enum Change<K> {
    /// Created (`old` is `None`), updated, or deleted (`new` is `None`).
    Object {
        /// The object before.
        old: Option<Arc<K>>,
        /// The object after.
        new: Option<Arc<K>>,
    },
    /// The subscriber missed changes; everything must be looked at again.
    Resync,
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Self::Object { old, new } => Self::Object {
                old: old.clone(),
                new: new.clone(),
            },
            Self::Resync => Self::Resync,
        }
    }
}

impl<K> Change<K> {
    /// The objects involved (old and new, either may be absent).
    pub fn objects(&self) -> impl Iterator<Item = &Arc<K>> {
        let (a, b) = match self {
            Self::Object { old, new } => (old.as_ref(), new.as_ref()),
            Self::Resync => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// One shared watch of kind `K`.
pub struct Informer<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    tx: broadcast::Sender<Change<K>>,
    /// Becomes true once the first list is in the store. (`Store::wait_until_ready` wakes only
    /// its last waiter, so it cannot be shared by several controllers.)
    synced: tokio::sync::watch::Receiver<bool>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching `api` in the background, with room for [`BUFFER`] changes per
    /// subscriber.
    pub fn start(api: Api<K>) -> Arc<Self> {
        Self::start_with(api, BUFFER)
    }

    /// [`Informer::start`] for a kind written a few at a time ([`SMALL_BUFFER`]).
    pub fn start_small(api: Api<K>) -> Arc<Self> {
        Self::start_with(api, SMALL_BUFFER)
    }

    /// Starts watching `api` in the background; a subscriber more than `buffer` changes behind
    /// resyncs.
    pub fn start_with(api: Api<K>, buffer: usize) -> Arc<Self> {
        let (store, mut writer) = reflector::store::<K>();
        let (tx, _) = broadcast::channel(buffer);
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let informer = Arc::new(Self {
            store: store.clone(),
            tx: tx.clone(),
            synced,
        });
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            // Objects the store held when a relist began.
            let mut before: Option<Vec<Arc<K>>> = None;
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        // The watcher retries with back-off; say why so a stuck cache is visible.
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                        continue;
                    }
                };
                let old = match &event {
                    watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                        store.get(&ObjectRef::from_obj(obj))
                    }
                    watcher::Event::Init => {
                        before = Some(store.state());
                        None
                    }
                    watcher::Event::InitApply(_) | watcher::Event::InitDone => None,
                };
                // The store's copy is kept: it goes to the heap of long-lived objects, away
                // from the pages of the watch's decoding (see `crate::alloc`).
                crate::alloc::long_lived(|| writer.apply_watcher_event(&event));
                // The change shares the store's copy of the new object: subscribers' buffers
                // hold references, not a second copy of every object they have not read yet.
                let changes = match &event {
                    watcher::Event::Apply(obj) => vec![Change::Object {
                        old,
                        new: store
                            .get(&ObjectRef::from_obj(obj))
                            .or_else(|| Some(Arc::new(obj.clone()))),
                    }],
                    watcher::Event::Delete(obj) => vec![Change::Object {
                        old: old.or_else(|| Some(Arc::new(obj.clone()))),
                        new: None,
                    }],
                    _ => Vec::new(),
                };
                if matches!(event, watcher::Event::InitDone) {
                    synced_tx.send_replace(true);
                    let old: HashMap<ObjectRef<K>, Arc<K>> = before
                        .take()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|o| (ObjectRef::from_obj(&*o), o))
                        .collect();
                    let now = store.state();
                    let present: std::collections::HashSet<ObjectRef<K>> =
                        now.iter().map(|o| ObjectRef::from_obj(&**o)).collect();
                    for (key, o) in &old {
                        if !present.contains(key) {
                            let _ = tx.send(Change::Object {
                                old: Some(o.clone()),
                                new: None,
                            });
                        }
                    }
                    for o in now {
                        let mut prev = old.get(&ObjectRef::from_obj(&*o)).cloned();
                        // Deleted and made again under the same name while unwatched: two
                        // changes, so the old object's dependents learn it is gone.
                        if prev.as_ref().is_some_and(|p| p.meta().uid != o.meta().uid) {
                            let _ = tx.send(Change::Object {
                                old: prev.take(),
                                new: None,
                            });
                        }
                        let _ = tx.send(Change::Object {
                            old: prev,
                            new: Some(o),
                        });
                    }
                }
                for change in changes {
                    // No subscriber yet is fine: they read the store when they start.
                    let sent = tx.send(change);
                    tracing::trace!(kind = %K::kind(&()), receivers = sent.unwrap_or(0), "change");
                }
            }
        });
        informer
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Informer<K> {
    /// The cache.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Waits until the first list has filled the cache.
    pub async fn synced(&self) {
        let mut synced = self.synced.clone();
        // Only fails if the informer task ended, and then nothing will come anyway.
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Future changes. Subscribe before reading the store so nothing falls between.
    pub fn subscribe(&self) -> Subscription<K> {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

/// A subscriber's view of an [`Informer`].
pub struct Subscription<K> {
    rx: broadcast::Receiver<Change<K>>,
}

impl<K: Clone> Subscription<K> {
    /// The next change; [`Change::Resync`] after falling behind. `None` once the informer ended.
    pub async fn next(&mut self) -> Option<Change<K>> {
        match self.rx.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Keys waiting to be reconciled. A key queued twice is reconciled once; a failed key comes
/// back after a back-off that doubles from [`WorkQueue::MIN_BACKOFF`] to [`WorkQueue::MAX_BACKOFF`].
pub struct WorkQueue<Q: Ord + Clone> {
    inner: Mutex<QueueState<Q>>,
    notify: Notify,
}

struct QueueState<Q> {
    ready: BTreeSet<Q>,
    failures: BTreeMap<Q, u32>,
    /// Keys waiting for a timer, with when it fires: one timer per key, the earliest.
    delayed: BTreeMap<Q, tokio::time::Instant>,
}

impl<Q: Ord + Clone + Hash + Send + 'static> WorkQueue<Q> {
    /// First retry delay.
    pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
    /// Longest retry delay.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(QueueState {
                ready: BTreeSet::new(),
                failures: BTreeMap::new(),
                delayed: BTreeMap::new(),
            }),
            notify: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState<Q>> {
        // A panic while holding the lock leaves plain sets behind, still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `key`.
    pub fn add(&self, key: Q) {
        self.state().ready.insert(key);
        self.notify.notify_one();
    }

    /// Takes every queued key, waiting for one if none is queued.
    pub async fn take(&self) -> Vec<Q> {
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.state();
                if !state.ready.is_empty() {
                    return std::mem::take(&mut state.ready).into_iter().collect();
                }
            }
            notified.await;
        }
    }

    /// Records that `key` reconciled fine (its back-off resets).
    pub fn forget(&self, key: &Q) {
        self.state().failures.remove(key);
    }

    /// Queues `key` again after its back-off.
    pub fn retry(self: &Arc<Self>, key: Q) {
        let delay = {
            let mut state = self.state();
            let n = state.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            Self::MIN_BACKOFF
                .saturating_mul(1u32 << (*n - 1).min(12))
                .min(Self::MAX_BACKOFF)
        };
        self.add_after(key, delay);
    }

    /// Queues `key` after `delay`, unless it is due sooner already.
    pub fn add_after(self: &Arc<Self>, key: Q, delay: Duration) {
        let at = tokio::time::Instant::now() + delay;
        {
            let mut state = self.state();
            if state.delayed.get(&key).is_some_and(|due| *due <= at) {
                return;
            }
            state.delayed.insert(key.clone(), at);
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut state = queue.state();
            // A sooner timer for the key replaced this one.
            if state.delayed.get(&key) == Some(&at) {
                state.delayed.remove(&key);
                state.ready.insert(key);
                drop(state);
                queue.notify.notify_one();
            }
        });
    }
}

/// A controller's worker: reconciles queued keys one at a time, forever. `Ok(Some(d))` looks at
/// the key again after `d` (a timer, a cache still catching up); an error is logged with `what`
/// and retried with back-off.
pub async fn work<Q, F, Fut>(queue: Arc<WorkQueue<Q>>, what: &'static str, mut reconcile: F)
where
    Q: Ord + Clone + Hash + Send + std::fmt::Display + 'static,
    F: FnMut(Q) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Duration>, kube::Error>>,
{
    loop {
        for key in queue.take().await {
            match reconcile(key.clone()).await {
                Ok(again) => {
                    queue.forget(&key);
                    if let Some(after) = again {
                        queue.add_after(key, after);
                    }
                }
                Err(e) => {
                    tracing::warn!(object = %key, error = %e, "{what}");
                    queue.retry(key);
                }
            }
        }
    }
}

/// `namespace/name` of an object, the key most controllers queue.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// The key of `obj`.
    pub fn of<K: Resource>(obj: &K) -> Self {
        Self {
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
        }
    }

    /// The reflector reference for kind `K`.
    pub fn object_ref<K: Resource<DynamicType = ()>>(&self) -> ObjectRef<K> {
        let r = ObjectRef::new(&self.name);
        if self.namespace.is_empty() {
            r
        } else {
            r.within(&self.namespace)
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_deduplicates_and_retries() {
        let q: Arc<WorkQueue<u32>> = WorkQueue::new();
        q.add(2);
        q.add(1);
        q.add(2);
        assert_eq!(q.take().await, vec![1, 2]);
        q.retry(7);
        let got = tokio::time::timeout(Duration::from_secs(5), q.take())
            .await
            .unwrap();
        assert_eq!(got, vec![7]);
        assert_eq!(q.state().failures.get(&7), Some(&1));
        q.forget(&7);
        assert!(q.state().failures.is_empty());
        // Several delays for one key make one timer, the soonest.
        q.add_after(9, Duration::from_secs(3600));
        q.add_after(9, Duration::from_millis(10));
        q.add_after(9, Duration::from_secs(60));
        assert_eq!(q.state().delayed.len(), 1);
        let got = tokio::time::timeout(Duration::from_secs(5), q.take())
            .await
            .unwrap();
        assert_eq!(got, vec![9]);
        assert!(q.state().delayed.is_empty());
    }
}
