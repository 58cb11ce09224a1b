//! Keeps the routing table current: kube-rs reflectors of Ingresses, IngressClasses, Services,
//! EndpointSlices and `kubernetes.io/tls` Secrets, cluster-wide. Any change (re)builds the whole
//! table from the stores and swaps it in, at most every [`SETTLE`] (changes that arrive together,
//! as a Deployment's rollout, make one rebuild). Errors are logged and retried with kube-rs's
//! back-off; requests keep being routed by the last table.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::{
    proxy::Shared,
    routes::{Inputs, Table},
};

/// How long changes are gathered before one rebuild.
pub const SETTLE: Duration = Duration::from_millis(10);

/// Follows one kind into a store, waking `changed` on every event.
fn follow<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
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
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), "ingress watch failed (retrying): {e}")
                }
            }
        }
    });
    reader
}

/// Starts the watches and the rebuild loop; the table is first built once every kind has
/// listed.
pub fn start(client: Client, shared: Arc<Shared>) {
    let changed = Arc::new(Notify::new());
    let all = watcher::Config::default();
    let ingresses: Store<Ingress> = follow(Api::all(client.clone()), all.clone(), changed.clone());
    let classes: Store<IngressClass> =
        follow(Api::all(client.clone()), all.clone(), changed.clone());
    let services: Store<Service> = follow(Api::all(client.clone()), all.clone(), changed.clone());
    let slices: Store<EndpointSlice> =
        follow(Api::all(client.clone()), all.clone(), changed.clone());
    let secrets: Store<Secret> = follow(
        Api::all(client),
        all.fields("type=kubernetes.io/tls"),
        changed.clone(),
    );
    tokio::spawn(async move {
        for ready in [
            ingresses.wait_until_ready().await,
            classes.wait_until_ready().await,
            services.wait_until_ready().await,
            slices.wait_until_ready().await,
            secrets.wait_until_ready().await,
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
            };
            let table = Table::build(&inputs);
            for warning in &table.warnings {
                tracing::debug!("ingress: {warning}");
            }
            tracing::debug!(routes = table.route_count(), "ingress table rebuilt");
            shared.set_table(table);
            changed.notified().await;
            tokio::time::sleep(SETTLE).await;
        }
    });
}
