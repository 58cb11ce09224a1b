//! The proxy fed from the apiserver: what the node agent runs (kube-proxy's role, in-process).
//!
//! Services and EndpointSlices are watched through kube-rs reflectors. Once both caches are
//! filled, every change leads to one rebuild of the [`DesiredState`](super::model::DesiredState)
//! and one sync of the dataplane; changes that arrive together are handled in one sync. Nothing
//! is programmed before both caches are complete, so a restarted agent never empties maps that
//! established connections still use.
//!
//! [`SharedProxy`] is also the network's [`LinkHook`]: each pod's host-side veth gets the pod
//! program as the sandbox is made, before any container runs.

use std::{
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};

use super::{model::build_from, standalone::Proxy};
use crate::runtime::network::LinkHook;

/// How often stale conntrack entries are swept.
pub const GC_INTERVAL: Duration = Duration::from_secs(30);

/// How soon a failed sync is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

fn log_error<T>(what: &str, event: Result<T, watcher::Error>) {
    if let Err(e) = event {
        tracing::warn!(watch = what, error = %e, "watch failed; retrying");
    }
}

/// A [`Proxy`] shared by the sync loop and the pod network.
#[derive(Clone)]
pub struct SharedProxy(Arc<Mutex<Proxy>>);

impl SharedProxy {
    /// Shares `proxy`.
    pub fn new(proxy: Proxy) -> Self {
        Self(Arc::new(Mutex::new(proxy)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Proxy> {
        // A panic mid-sync leaves the proxy usable: the next sync rewrites what differs.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl LinkHook for SharedProxy {
    fn added(&self, ifname: &str) -> io::Result<()> {
        self.lock().attach_pod(ifname)
    }

    fn removed(&self, ifname: &str) {
        if let Err(e) = self.lock().detach_pod(ifname) {
            tracing::debug!(ifname, error = %e, "detaching the pod program");
        }
    }
}

/// Follows Services and EndpointSlices and keeps `proxy` programmed for node `node`, until the
/// future is dropped.
pub async fn run(client: Client, proxy: SharedProxy, node: String) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .map(|e| log_error("services", e));
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(slice_writer)
    .map(|e| log_error("endpointslices", e));
    let mut events = stream::select(svc_events, slice_events).boxed();
    let mut gc = tokio::time::interval(GC_INTERVAL);
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    let mut ready = false;
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            event = events.next() => if event.is_none() { return },
            _ = gc.tick() => {
                let swept = proxy.lock().gc();
                if swept > 0 {
                    tracing::debug!(swept, "conntrack entries swept");
                }
                continue;
            }
            // A failed sync is retried; otherwise nothing changed.
            _ = retry.tick() => if last_error.is_none() { continue },
        }
        // Take whatever else already arrived: one sync for a burst.
        while let Some(Some(())) = events.next().now_or_never() {}
        if !ready {
            ready = filled(&services) && filled(&slices);
            if !ready {
                continue;
            }
        }
        let svcs = services.state();
        let sls = slices.state();
        let state = build_from(svcs.iter().map(|s| &**s), sls.iter().map(|s| &**s), &node);
        let result = proxy.lock().sync(&state);
        match result {
            Ok(report) => {
                last_error = None;
                tracing::debug!(
                    frontends = state.frontends.len(),
                    writes = report.writes,
                    micros = report.elapsed.as_micros() as u64,
                    "services synced"
                );
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!(error = message, "programming services");
                }
                last_error = Some(message);
            }
        }
    }
}

/// Whether a reflector's first list is complete.
fn filled<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}
