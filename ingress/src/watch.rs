//! Keeps the routing table current: kube-rs reflectors of Ingresses, IngressClasses, Services,
//! EndpointSlices, `kubernetes.io/tls` Secrets, Namespaces and the Gateway API kinds
//! (GatewayClasses, Gateways, HTTPRoutes), cluster-wide. Any change but a status-only one (the
//! ingress's own status writes included) rebuilds the whole table from the stores and swaps it
//! in, at most every [`SETTLE`] (changes that arrive together, as a Deployment's rollout, make
//! one rebuild); a task of its own then writes the statuses the latest table asks for.
//! Errors are logged and retried with kube-rs's back-off; requests keep being routed by the
//! last table.
//!
//! The Gateway API kinds exist only once their CRDs are installed: until then their lists
//! answer 404, which is retried quietly (the back-off reaches about 30 s, so routes appear
//! within that time after `kubectl apply` of the CRDs), and the table is built without them.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::{
    gateway::{self, StatusKind, StatusUpdate},
    proxy::Shared,
    routes::{Inputs, Listen, Table},
};

/// How long changes are gathered before one rebuild.
pub const SETTLE: Duration = Duration::from_millis(10);

/// Hands the memory glibc keeps free in its heaps back to the kernel, at most once a second: a
/// rebuilt table or a batch of status writes frees megabytes that malloc would otherwise keep
/// (the RSS of an ingress with 1,000 routes stayed 15 MB above what it used).
fn trim_heap() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) == now {
        return;
    }
    // SAFETY: malloc_trim only walks and releases glibc's own free lists; it takes the arenas'
    // locks itself and touches no memory in use.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What routing reads of an object: all of it but its status and resource version (a status
/// write, the ingress's own included, changes no route).
fn fingerprint<K: serde::Serialize>(obj: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("resourceVersion");
        }
    }
    let mut hasher = std::hash::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

/// Follows one kind into a store, waking `changed` when an object comes, goes or changes other
/// than in its status.
fn follow<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // What the table never reads is dropped before the store keeps it: managedFields and
    // kubectl's copy of the last applied manifest are most of a small object.
    let events = watcher(api, config).modify(|obj: &mut K| {
        let meta = obj.meta_mut();
        meta.managed_fields = None;
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    });
    let stream = reflector::reflector(writer, events).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen: std::collections::HashMap<(Option<String>, Option<String>), u64> =
            std::collections::HashMap::new();
        let key = |obj: &K| (obj.meta().namespace.clone(), obj.meta().name.clone());
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(obj)) => {
                    let print = fingerprint(&obj);
                    if seen.insert(key(&obj), print) != Some(print) {
                        changed.notify_one();
                    }
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    seen.insert(key(&obj), fingerprint(&obj));
                }
                Ok(watcher::Event::Delete(obj)) => {
                    seen.remove(&key(&obj));
                    changed.notify_one();
                }
                Ok(watcher::Event::Init) => seen.clear(),
                Ok(watcher::Event::InitDone) => changed.notify_one(),
                // A kind whose CRD is not installed (yet).
                Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
                    tracing::debug!(kind = %K::kind(&()), "not served (its CRD is not installed)")
                }
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), "ingress watch failed (retrying): {e}")
                }
            }
        }
    });
    reader
}

/// Starts the watches and the rebuild loop; the table is first built once every built-in kind
/// has listed.
pub fn start(client: Client, shared: Arc<Shared>, listen: Listen) {
    let changed = Arc::new(Notify::new());
    let all = watcher::Config::default();
    let ingresses: Store<Ingress> = follow(Api::all(client.clone()), all.clone(), changed.clone());
    let classes: Store<IngressClass> =
        follow(Api::all(client.clone()), all.clone(), changed.clone());
    let services: Store<Service> = follow(Api::all(client.clone()), all.clone(), changed.clone());
    let slices: Store<EndpointSlice> =
        follow(Api::all(client.clone()), all.clone(), changed.clone());
    let secrets: Store<Secret> = follow(
        Api::all(client.clone()),
        all.clone().fields("type=kubernetes.io/tls"),
        changed.clone(),
    );
    let namespaces: Store<Namespace> =
        follow(Api::all(client.clone()), all.clone(), changed.clone());
    let gateway_classes: Store<gateway::GatewayClass> =
        follow(Api::all(client.clone()), all.clone(), changed.clone());
    let gateways: Store<gateway::Gateway> =
        follow(Api::all(client.clone()), all.clone(), changed.clone());
    let http_routes: Store<gateway::HttpRoute> =
        follow(Api::all(client.clone()), all, changed.clone());
    tokio::spawn(publish_gateway_class(
        client.clone(),
        gateway_classes.clone(),
    ));
    let (pending, to_write) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(write_statuses(
        client.clone(),
        to_write,
        Arc::clone(&changed),
    ));
    // Connections that came and went leave freed buffers in malloc's heaps: hand them back now
    // and then, as the rebuilds do.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            trim_heap();
        }
    });
    tokio::spawn(async move {
        for ready in [
            ingresses.wait_until_ready().await,
            classes.wait_until_ready().await,
            services.wait_until_ready().await,
            slices.wait_until_ready().await,
            secrets.wait_until_ready().await,
            namespaces.wait_until_ready().await,
        ] {
            if ready.is_err() {
                return;
            }
        }
        loop {
            let inputs = Inputs {
                ingresses: ingresses.state(),
                classes: classes.state(),
                services: services.state(),
                slices: slices.state(),
                secrets: secrets.state(),
                gateway_classes: gateway_classes.state(),
                gateways: gateways.state(),
                http_routes: http_routes.state(),
                namespaces: namespaces.state(),
                listen: listen.clone(),
                now: jiff::Timestamp::now()
                    .round(jiff::Unit::Second)
                    .unwrap_or_else(|_| jiff::Timestamp::now())
                    .to_string(),
            };
            let mut table = Table::build(&inputs);
            for warning in &table.warnings {
                tracing::debug!("ingress: {warning}");
            }
            tracing::debug!(routes = table.route_count(), "ingress table rebuilt");
            let statuses = std::mem::take(&mut table.statuses);
            shared.set_table(table);
            // The writer takes the latest set; routing never waits for it.
            let _ = pending.send(statuses);
            trim_heap();
            changed.notified().await;
            tokio::time::sleep(SETTLE).await;
        }
    });
}

/// Creates the GatewayClass [`gateway::DEFAULT_CLASS`] (controller
/// [`gateway::CONTROLLER_NAME`]) once the Gateway API CRDs are served, unless a class of that
/// name exists (as Cilium publishes `cilium`). A class deleted later is not made again until
/// the ingress restarts.
async fn publish_gateway_class(client: Client, classes: Store<gateway::GatewayClass>) {
    if classes.wait_until_ready().await.is_err() {
        return;
    }
    let exists = classes
        .state()
        .iter()
        .any(|c| c.metadata.name.as_deref() == Some(gateway::DEFAULT_CLASS));
    if exists {
        return;
    }
    let resource = kube::api::ApiResource::erase::<gateway::GatewayClass>(&());
    let class = kube::api::DynamicObject::new(gateway::DEFAULT_CLASS, &resource).data(
        serde_json::json!({"spec": {
            "controllerName": gateway::CONTROLLER_NAME,
            "description": "rudder's ingress (pingora)",
        }}),
    );
    let api: Api<kube::api::DynamicObject> = Api::all_with(client, &resource);
    match api.create(&Default::default(), &class).await {
        Ok(_) => tracing::info!("GatewayClass {} published", gateway::DEFAULT_CLASS),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => tracing::warn!("GatewayClass {}: {e}", gateway::DEFAULT_CLASS),
    }
}

/// Writes the statuses of the latest table, one by one; when one fails, asks for a rebuild (and
/// so a new set) after 5 s.
async fn write_statuses(
    client: Client,
    mut latest: tokio::sync::watch::Receiver<Vec<StatusUpdate>>,
    changed: Arc<Notify>,
) {
    while latest.changed().await.is_ok() {
        let statuses = latest.borrow_and_update().clone();
        let mut failed = false;
        for update in &statuses {
            match write_status(&client, update).await {
                Ok(()) => {}
                // Gone, or refused as invalid: a retry would fail the same way (the next
                // change of the object brings a new attempt).
                Err(kube::Error::Api(s)) if s.code < 500 && !matches!(s.code, 408 | 409 | 429) => {
                    tracing::warn!(
                        "status of {} {}/{} not written: {}",
                        update.kind.as_str(),
                        update.namespace.as_deref().unwrap_or_default(),
                        update.name,
                        s.message
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        "status of {} {}/{} (retrying in 5 s): {e}",
                        update.kind.as_str(),
                        update.namespace.as_deref().unwrap_or_default(),
                        update.name
                    );
                    failed = true;
                }
            }
            if latest.has_changed().unwrap_or(false) {
                break; // a newer table wants other statuses
            }
        }
        trim_heap();
        if failed {
            let changed = Arc::clone(&changed);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                changed.notify_one();
            });
        }
    }
}

/// Merges `update.status` into the object's status subresource.
async fn write_status(client: &Client, update: &StatusUpdate) -> Result<(), kube::Error> {
    let patch = Patch::Merge(serde_json::json!({"status": &*update.status}));
    let params = PatchParams::default();
    let ns = update.namespace.as_deref().unwrap_or_default();
    let name = update.name.as_str();
    match update.kind {
        StatusKind::Ingress => {
            Api::<Ingress>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &patch)
                .await?;
        }
        StatusKind::GatewayClass => {
            Api::<gateway::GatewayClass>::all(client.clone())
                .patch_status(name, &params, &patch)
                .await?;
        }
        StatusKind::Gateway => {
            Api::<gateway::Gateway>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &patch)
                .await?;
        }
        StatusKind::HttpRoute => {
            Api::<gateway::HttpRoute>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &patch)
                .await?;
        }
    }
    Ok(())
}
