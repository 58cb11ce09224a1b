//! The scheduler: binds each unscheduled pod to a node.
//!
//! The core is a pure function, [`schedule`], over a [`Snapshot`] of nodes, the pods bound to
//! them and namespace labels; `core.rs` lists its filters and scores (kube-scheduler's default
//! plugins: NodeUnschedulable, NodeName, TaintToleration, NodeAffinity, NodePorts,
//! NodeResourcesFit, PodTopologySpread, InterPodAffinity, plus rudder's NodeReady), and
//! `relations.rs` the pod-to-pod ones. An unschedulable pod gets the kube-scheduler message
//! (`0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint ...`) as a
//! `PodScheduled=False` condition and a `FailedScheduling` event (again only when the message
//! changes).
//!
//! The loop around it watches nodes, pods and namespaces through kube-rs like kube-scheduler,
//! keeps the snapshot up to date event by event (as kube-scheduler's cache) and takes pods from
//! a scheduling queue (`queue.rs`: kube-scheduler's active, unschedulable and back-off queues,
//! by priority then arrival). A pod that fits nowhere waits until the cluster changes (a node
//! joining or changing, a pod bound, finished or deleted, a label edited) or its own spec or
//! labels do, then backs off 1 s doubling to 10 s before it is tried again; after 60 s it is
//! tried regardless. A scheduling step costs one [`schedule`] call, nothing in the number of
//! pods waiting or placed. It binds with `pods/binding`, up to 128 writes in flight while
//! it goes on scheduling, and counts a pod it chose a node for on that node until the watch
//! shows the binding ("assumed" pods), so a burst of pods spreads instead of piling on one
//! node; a failed binding returns the pod to the queue.

mod core;
mod queue;
mod relations;
mod snapshot;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde_json::json;
use tokio::{task::JoinSet, time::sleep_until};

use crate::cached::Pod;

pub use self::{
    core::{
        Decision, node_affinity_matches, node_selection_matches, schedule, term_matches,
        untolerated_taint,
    },
    snapshot::{NodeInfo, PodInfo, Resources, Snapshot, quantity},
};

fn unscheduled(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.is_none())
        && pod.metadata.deletion_timestamp.is_none()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n == "default-scheduler")
}

/// A relist in progress: the objects seen since `Init`.
type Relist<K> = Option<Vec<K>>;

/// What the loop keeps: the snapshot (updated per event), the pending pods, and the pods bound
/// here whose binding the watch has not shown yet ("assumed", counted on their node so a burst
/// spreads instead of piling on one node).
#[derive(Default)]
struct Cache {
    snapshot: Snapshot,
    /// Unscheduled pods by UID.
    pending: HashMap<String, Arc<Pod>>,
    /// UID → (the pod as it was when bound, its node).
    assumed: HashMap<String, (Arc<Pod>, String)>,
    /// The pending pods that are not assumed, in the order to try them.
    queue: queue::Queue,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl Cache {
    fn apply_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
        if unscheduled(&pod) {
            let pod = Arc::new(pod);
            if let Some((assumed, _)) = self.assumed.get_mut(&uid) {
                // Still being bound: keep counting it on the chosen node.
                *assumed = pod.clone();
            } else {
                self.snapshot.remove(&uid);
                // A new pod is queued; an unschedulable one only if what it asks for changed
                // (not for the PodScheduled condition this scheduler wrote itself).
                let changed = self.pending.get(&uid).is_none_or(|old| {
                    old.spec != pod.spec || old.metadata.labels != pod.metadata.labels
                });
                if changed || !self.queue.contains(&uid) {
                    self.queue.add(&uid, priority(&pod), Instant::now());
                }
            }
            self.pending.insert(uid, pod);
            return;
        }
        self.queue.remove(&uid);
        let was_pending = self.pending.remove(&uid).is_some();
        if bound || !self.assumed.contains_key(&uid) {
            self.assumed.remove(&uid);
            // A pod bound, finished or relabelled may let another pod fit (resources, pod
            // affinity, spreading).
            if self.snapshot.add(&pod) || was_pending {
                self.queue.cluster_changed(Instant::now());
            }
        }
    }

    fn delete_pod(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.pending.remove(uid);
            self.assumed.remove(uid);
            self.queue.remove(uid);
            if self.snapshot.remove(uid) {
                // Its resources, ports and anti-affinity are free again.
                self.queue.cluster_changed(Instant::now());
            }
        }
    }

    /// A binding failed: the pod is pending again.
    fn forget(&mut self, uid: &str) {
        if self.assumed.remove(uid).is_some() {
            self.snapshot.remove(uid);
            if let Some(pod) = self.pending.get(uid) {
                self.queue.add(uid, priority(pod), Instant::now());
            }
        }
    }
}

/// Runs the scheduler until the future is dropped.
pub async fn run(client: Client) {
    let config = watcher::Config::default;
    let mut namespace_stream = watcher::watcher(Api::<Namespace>::all(client.clone()), config())
        .default_backoff()
        .boxed();
    let mut node_stream = watcher::watcher(Api::<Node>::all(client.clone()), config())
        .default_backoff()
        .boxed();
    let mut pod_stream = watcher::watcher(Api::<Pod>::all(client.clone()), config())
        .default_backoff()
        .boxed();
    let mut cache = Cache::default();
    let (mut pod_relist, mut node_relist, mut ns_relist): (
        Relist<Pod>,
        Relist<Node>,
        Relist<Namespace>,
    ) = (None, None, None);
    // Last message reported per unschedulable pod.
    let mut reported: HashMap<String, String> = HashMap::new();
    // Bindings and reports in flight, as kube-scheduler's binding cycle: the next pods are
    // scheduled while earlier ones are being written. A failed binding yields its pod's UID.
    let mut writes: JoinSet<Option<String>> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // Wake when the first back-off ends (or, with none, never: the tick covers the rest).
        let due = cache.queue.next_due();
        let wake = tokio::time::Instant::from_std(
            due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
        );
        tokio::select! {
            // What the handlers keep (snapshot entries, pending pods) goes to the heap of
            // long-lived objects (see `crate::alloc`).
            Some(event) = node_stream.next() => {
                crate::alloc::long_lived(|| on_node(&mut cache, &mut node_relist, event));
            }
            Some(event) = pod_stream.next() => {
                crate::alloc::long_lived(|| on_pod(&mut cache, &mut pod_relist, event));
            }
            Some(event) = namespace_stream.next() => {
                on_namespace(&mut cache, &mut ns_relist, event);
            }
            Some(done) = writes.join_next(), if !writes.is_empty() => {
                if let Ok(Some(uid)) = done {
                    cache.forget(&uid);
                }
            }
            _ = tick.tick() => {
                reported.retain(|uid, _| cache.pending.contains_key(uid));
            }
            () = sleep_until(wake), if due.is_some() => {}
        }
        // Take in whatever else is ready so a burst is handled in one pass.
        while let Some(Some(event)) = futures::FutureExt::now_or_never(pod_stream.next()) {
            crate::alloc::long_lived(|| on_pod(&mut cache, &mut pod_relist, event));
        }
        while let Some(Some(done)) = futures::FutureExt::now_or_never(writes.join_next()) {
            if let Ok(Some(uid)) = done {
                cache.forget(&uid);
            }
        }
        if pod_relist.is_some() || node_relist.is_some() {
            continue;
        }
        let now = Instant::now();
        cache.queue.flush(now);
        while writes.len() < MAX_IN_FLIGHT {
            let Some((uid, attempts)) = cache.queue.pop() else {
                break;
            };
            let Some(pod) = cache.pending.get(&uid).cloned() else {
                continue;
            };
            if cache.assumed.contains_key(&uid) {
                continue;
            }
            match schedule(&cache.snapshot, &pod) {
                Decision::Bind(node) => {
                    reported.remove(&uid);
                    let mut assumed = (*pod).clone();
                    if let Some(s) = assumed.spec.as_mut() {
                        s.node_name = Some(node.clone());
                    }
                    // Counted on its node now; the pods it may let in are woken when the
                    // watch shows the binding.
                    crate::alloc::long_lived(|| {
                        cache.snapshot.add(&assumed);
                        cache
                            .assumed
                            .insert(uid.clone(), (pod.clone(), node.clone()));
                    });
                    let client = client.clone();
                    writes.spawn(async move { (!bind(client, &pod, &node).await).then_some(uid) });
                }
                Decision::Unschedulable(message) => {
                    cache
                        .queue
                        .park(&uid, priority(&pod), attempts.saturating_add(1), now);
                    if reported.get(&uid) == Some(&message) {
                        continue;
                    }
                    reported.insert(uid, message.clone());
                    let client = client.clone();
                    writes.spawn(async move {
                        report_unschedulable(&client, &pod, &message).await;
                        None
                    });
                }
            }
        }
    }
}

fn on_pod(cache: &mut Cache, relist: &mut Relist<Pod>, event: Result<Event<Pod>, watcher::Error>) {
    match event {
        Ok(Event::Apply(pod)) => cache.apply_pod(pod),
        Ok(Event::Delete(pod)) => cache.delete_pod(&pod),
        Ok(Event::Init) => *relist = Some(Vec::new()),
        Ok(Event::InitApply(pod)) => relist.get_or_insert_with(Vec::new).push(pod),
        Ok(Event::InitDone) => {
            let pods = relist.take().unwrap_or_default();
            let seen: HashSet<String> =
                pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            cache.snapshot.retain_pods(|uid| seen.contains(uid));
            cache.pending.retain(|uid, _| seen.contains(uid));
            cache.assumed.retain(|uid, _| seen.contains(uid));
            cache.queue.retain(|uid| seen.contains(uid));
            cache.queue.cluster_changed(Instant::now());
            for pod in pods {
                cache.apply_pod(pod);
            }
        }
        Err(e) => tracing::debug!(error = %e, "pod watch"),
    }
}

fn on_node(
    cache: &mut Cache,
    relist: &mut Relist<Node>,
    event: Result<Event<Node>, watcher::Error>,
) {
    // Any node change may let a pod fit (new capacity, labels, taints, readiness).
    if matches!(
        event,
        Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)
    ) {
        cache.queue.cluster_changed(Instant::now());
    }
    match event {
        Ok(Event::Apply(node)) => cache.snapshot.set_node(node),
        Ok(Event::Delete(node)) => cache.snapshot.remove_node(&node.name_any()),
        Ok(Event::Init) => *relist = Some(Vec::new()),
        Ok(Event::InitApply(node)) => relist.get_or_insert_with(Vec::new).push(node),
        Ok(Event::InitDone) => {
            let nodes = relist.take().unwrap_or_default();
            let seen: HashSet<String> = nodes.iter().map(ResourceExt::name_any).collect();
            let gone: Vec<String> = cache
                .snapshot
                .nodes
                .keys()
                .filter(|n| !seen.contains(*n))
                .cloned()
                .collect();
            for name in gone {
                cache.snapshot.remove_node(&name);
            }
            for node in nodes {
                cache.snapshot.set_node(node);
            }
        }
        Err(e) => tracing::debug!(error = %e, "node watch"),
    }
}

fn on_namespace(
    cache: &mut Cache,
    relist: &mut Relist<Namespace>,
    event: Result<Event<Namespace>, watcher::Error>,
) {
    let labels = |n: &Namespace| n.metadata.labels.clone().unwrap_or_default();
    if matches!(
        event,
        Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)
    ) {
        cache.queue.cluster_changed(Instant::now());
    }
    match event {
        Ok(Event::Apply(ns)) => {
            cache.snapshot.namespaces.insert(ns.name_any(), labels(&ns));
        }
        Ok(Event::Delete(ns)) => {
            cache.snapshot.namespaces.remove(&ns.name_any());
        }
        Ok(Event::Init) => *relist = Some(Vec::new()),
        Ok(Event::InitApply(ns)) => relist.get_or_insert_with(Vec::new).push(ns),
        Ok(Event::InitDone) => {
            cache.snapshot.namespaces = relist
                .take()
                .unwrap_or_default()
                .iter()
                .map(|n| (n.name_any(), labels(n)))
                .collect();
        }
        Err(e) => tracing::debug!(error = %e, "namespace watch"),
    }
}

/// Bindings and reports written at once.
const MAX_IN_FLIGHT: usize = 128;

/// Binds `pod` to `node` through `pods/binding`; false if that failed.
async fn bind(client: Client, pod: &Pod, node: &str) -> bool {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let result: Result<serde_json::Value, _> = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await;
    match result {
        Ok(_) => {
            tracing::debug!(pod = format!("{ns}/{name}"), node, "bound");
            true
        }
        Err(e) => {
            tracing::warn!(pod = format!("{ns}/{name}"), error = %e, "binding");
            false
        }
    }
}

async fn report_unschedulable(client: &Client, pod: &Pod, message: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let now = jiff::Timestamp::now();
    let now = format!("{now:.0}");
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null, "lastTransitionTime": now,
    }]}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, "posting PodScheduled=False");
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let event = json!({
        "metadata": {"generateName": format!("{name}.")},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": name,
                           "uid": pod.metadata.uid, "apiVersion": "v1"},
        "reason": "FailedScheduling", "message": message, "type": "Warning",
        "source": {"component": "default-scheduler"}, "reportingComponent": "default-scheduler",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    if let Ok(event) = serde_json::from_value(event) {
        let _ = events.create(&PostParams::default(), &event).await;
    }
}
