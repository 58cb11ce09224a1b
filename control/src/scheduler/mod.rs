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
//! The loop around it watches nodes, pods and namespaces through kube-rs like kube-scheduler
//! and makes a scheduling pass over every pending pod whenever one of them changes (a node
//! joining, a pod going away, a label edited), and at least every second; a pass costs a
//! snapshot rebuild plus one [`schedule`] call per pending pod. It binds with `pods/binding`
//! and counts a pod it just bound on its node until the watch shows the binding ("assumed"
//! pods), so a burst of pods spreads instead of piling on one node.

mod core;
mod relations;
mod snapshot;

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;

pub use self::{
    core::{Decision, node_affinity_matches, schedule, term_matches, untolerated_taint},
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

/// Runs the scheduler until the future is dropped.
pub async fn run(client: Client) {
    let nodes_api: Api<Node> = Api::all(client.clone());
    let pods_api: Api<Pod> = Api::all(client.clone());
    let (nodes, node_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (namespaces, namespace_writer) = reflector::store::<Namespace>();
    let mut namespace_stream = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(namespace_writer)
    .touched_objects()
    .boxed();
    let mut node_stream = watcher(nodes_api, watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .touched_objects()
        .boxed();
    let mut pod_stream = watcher(pods_api, watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects()
        .boxed();
    // Pods bound here whose binding the watch has not shown yet: uid → node.
    let mut assumed: HashMap<String, (Pod, String)> = HashMap::new();
    // Last message reported per unschedulable pod.
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(_) = node_stream.next() => {}
            Some(_) = pod_stream.next() => {}
            Some(_) = namespace_stream.next() => {}
            _ = tick.tick() => {}
        }
        // Drain whatever else is ready so a burst is handled in one pass.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(pod_stream.next()) {}
        let all_pods = pods.state();
        // uid → still unscheduled, for every pod the cache holds.
        let waiting: HashMap<&str, bool> = all_pods
            .iter()
            .filter_map(|p| Some((p.metadata.uid.as_deref()?, unscheduled(p))))
            .collect();
        // An assumed pod is dropped once the watch shows it bound, or gone.
        assumed.retain(|uid, _| waiting.get(uid.as_str()) == Some(&true));
        let mut snapshot = Snapshot::new(
            nodes.state().iter().map(|n| (**n).clone()),
            all_pods.iter().map(|p| &**p),
        )
        .with_namespaces(
            namespaces
                .state()
                .iter()
                .map(|n| (n.name_any(), n.metadata.labels.clone().unwrap_or_default())),
        );
        for (pod, node) in assumed.values() {
            let mut p = pod.clone();
            if let Some(s) = p.spec.as_mut() {
                s.node_name = Some(node.clone());
            }
            snapshot.add(&p);
        }
        let mut pending: Vec<&Pod> = all_pods
            .iter()
            .map(|p| &**p)
            .filter(|p| unscheduled(p))
            .filter(|p| !assumed.contains_key(p.metadata.uid.as_deref().unwrap_or("")))
            .collect();
        pending.sort_by_key(|p| p.metadata.creation_timestamp.clone());
        for pod in pending {
            let (ns, name, uid) = (
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                pod.metadata.uid.clone().unwrap_or_default(),
            );
            match schedule(&snapshot, pod) {
                Decision::Bind(node) => {
                    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    let binding = json!({
                        "apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name, "namespace": ns, "uid": uid},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                    });
                    let result: Result<serde_json::Value, _> = api
                        .create_subresource("binding", &name, &PostParams::default(), &binding)
                        .await;
                    match result {
                        Ok(_) => {
                            tracing::debug!(pod = format!("{ns}/{name}"), node, "bound");
                            reported.remove(&uid);
                            let mut p = pod.clone();
                            if let Some(s) = p.spec.as_mut() {
                                s.node_name = Some(node.clone());
                            }
                            snapshot.add(&p);
                            assumed.insert(uid, (pod.clone(), node));
                        }
                        Err(e) => {
                            tracing::warn!(pod = format!("{ns}/{name}"), error = %e, "binding")
                        }
                    }
                }
                Decision::Unschedulable(message) => {
                    if reported.get(&uid) == Some(&message) {
                        continue;
                    }
                    report_unschedulable(&client, pod, &message).await;
                    reported.insert(uid, message);
                }
            }
        }
        reported.retain(|uid, _| waiting.contains_key(uid.as_str()));
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
