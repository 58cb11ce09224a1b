//! Keeps the [`Index`](crate::index::Index) current from kube-rs watches of Services,
//! EndpointSlices and Pods, cluster-wide. Each event takes the index's write lock for one
//! object; a re-list (after a watch expired) removes the objects it no longer lists. No copy of
//! the objects is kept: the index holds only what DNS answers from. Errors are
//! logged and retried with kube-rs's default back-off; answers keep coming from the last state.

use std::{collections::HashSet, fmt::Debug, sync::Arc};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::{index::Index, server::Shared};

/// A kind the index follows.
trait Indexed: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    const KIND: &'static str;
    fn apply(index: &mut Index, object: &Self);
    fn delete(index: &mut Index, namespace: &str, name: &str);
    /// The (namespace, name) of every object of the kind in the index.
    fn keys(index: &Index) -> Vec<(String, String)>;
}

impl Indexed for Service {
    const KIND: &'static str = "Service";
    fn apply(index: &mut Index, object: &Self) {
        if let Err(e) = index.apply_service(object) {
            tracing::warn!(
                service = %format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any()),
                "not served by DNS: {e}"
            );
        }
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_service(namespace, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.service_keys()
    }
}

impl Indexed for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn apply(index: &mut Index, object: &Self) {
        index.apply_slice(object);
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_slice(namespace, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.slice_keys()
    }
}

impl Indexed for Pod {
    const KIND: &'static str = "Pod";
    fn apply(index: &mut Index, object: &Self) {
        index.apply_pod(object);
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_pod(namespace, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.pod_keys()
    }
}

fn key<K: Resource>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

fn write(shared: &Shared) -> std::sync::RwLockWriteGuard<'_, Index> {
    match shared.index.write() {
        Ok(index) => index,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Follows one kind until the stream ends (never, with the back-off); `synced` gets the kind's
/// name once its first list is in the index.
async fn follow<K: Indexed>(client: Client, shared: Arc<Shared>, synced: mpsc::Sender<&'static str>)
where
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    // The keys of a re-list, to remove what it no longer lists (only while one runs: the
    // index itself knows what it holds).
    let mut listing: HashSet<(String, String)> = HashSet::new();
    let mut first = true;
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(object))) => {
                K::apply(&mut write(&shared), &object);
            }
            Ok(Some(watcher::Event::Delete(object))) => {
                let (ns, name) = key(&object);
                K::delete(&mut write(&shared), &ns, &name);
            }
            Ok(Some(watcher::Event::Init)) => listing.clear(),
            Ok(Some(watcher::Event::InitApply(object))) => {
                listing.insert(key(&object));
                K::apply(&mut write(&shared), &object);
            }
            Ok(Some(watcher::Event::InitDone)) => {
                {
                    let mut index = write(&shared);
                    for (ns, name) in K::keys(&index) {
                        if !listing.contains(&(ns.clone(), name.clone())) {
                            K::delete(&mut index, &ns, &name);
                        }
                    }
                }
                listing = HashSet::new();
                if first {
                    first = false;
                    let _ = synced.send(K::KIND).await;
                }
            }
            Ok(None) => return,
            Err(e) => tracing::warn!(kind = K::KIND, "DNS watch failed (retrying): {e}"),
        }
    }
}

/// Starts the three watches; the returned receiver yields each kind's name once it has synced.
pub fn start(client: Client, shared: Arc<Shared>) -> mpsc::Receiver<&'static str> {
    let (tx, rx) = mpsc::channel(3);
    tokio::spawn(follow::<Service>(
        client.clone(),
        Arc::clone(&shared),
        tx.clone(),
    ));
    tokio::spawn(follow::<EndpointSlice>(
        client.clone(),
        Arc::clone(&shared),
        tx.clone(),
    ));
    tokio::spawn(follow::<Pod>(client, shared, tx));
    rx
}
