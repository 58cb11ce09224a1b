//! Node IPAM: gives every Node a PodCIDR, a /24 carved from the cluster CIDR (kube-controller-
//! manager's `--allocate-node-cidrs` with the range allocator). A node keeps its range for life;
//! a deleted node's range becomes free again.
//!
//! The controller talks to the apiserver through kube-rs, like kube-controller-manager does.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;

use crate::api::allocator::Cidr;

/// Size of each node's range.
pub const NODE_PREFIX: u8 = 24;

/// The first /24 of `cluster` that no node holds (pure core).
pub fn allocate(cluster: Cidr, used: &BTreeSet<Ipv4Addr>) -> Option<String> {
    if cluster.prefix > NODE_PREFIX {
        return None;
    }
    let count = 1u32 << (NODE_PREFIX - cluster.prefix);
    (0..count)
        .map(|i| cluster.nth(i << (32 - NODE_PREFIX)))
        .find(|net| !used.contains(net))
        .map(|net| format!("{net}/{NODE_PREFIX}"))
}

fn range_of(node: &Node) -> Option<Ipv4Addr> {
    let cidr = node.spec.as_ref()?.pod_cidr.as_deref()?;
    cidr.split('/').next()?.parse().ok()
}

/// Runs the controller until the watch ends.
pub async fn run(client: Client, cluster: Cidr) {
    let nodes: Api<Node> = Api::all(client);
    let (reader, writer) = reflector::store();
    let mut stream = watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .boxed();
    // Node UID → range this controller assigned.
    let mut assigned: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        let Ok(node) = event else { continue };
        if range_of(&node).is_some() {
            continue;
        }
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        let uid = node.metadata.uid.clone().unwrap_or_default();
        if assigned.contains_key(&uid) {
            // Assigned already; the cache has not seen it yet.
            continue;
        }
        // The cache may not show a range handed out a moment ago (two nodes registering
        // together), so this controller's own recent assignments count as used as well.
        // The ranges in use from the apiserver itself, not the cache: a node is assigned once,
        // and a cache a step behind once gave two nodes the same range.
        let listed: Vec<Node> = match nodes.list(&Default::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(node = name, error = %e, "listing Nodes for a PodCIDR");
                reader.state().iter().map(|n| (**n).clone()).collect()
            }
        };
        if listed
            .iter()
            .any(|n| n.metadata.uid.as_deref() == Some(uid.as_str()) && range_of(n).is_some())
        {
            continue;
        }
        assigned.retain(|uid, _| listed.iter().any(|n| n.metadata.uid.as_ref() == Some(uid)));
        let used: BTreeSet<Ipv4Addr> = listed
            .iter()
            .filter_map(range_of)
            .chain(assigned.values().copied())
            .collect();
        let Some(cidr) = allocate(cluster, &used) else {
            tracing::warn!(node = name, %cluster, "no PodCIDR left in the cluster CIDR");
            continue;
        };
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        match nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = name, pod_cidr = cidr, "assigned PodCIDR");
                if let Some(net) = cidr.split('/').next().and_then(|n| n.parse().ok()) {
                    assigned.insert(uid, net);
                }
            }
            Err(e) => tracing::warn!(node = name, error = %e, "assigning a PodCIDR"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_out_in_order_and_reused() {
        let cluster: Cidr = "10.244.0.0/16".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(allocate(cluster, &used).as_deref(), Some("10.244.0.0/24"));
        used.insert(Ipv4Addr::new(10, 244, 0, 0));
        used.insert(Ipv4Addr::new(10, 244, 2, 0));
        assert_eq!(allocate(cluster, &used).as_deref(), Some("10.244.1.0/24"));
        let tiny: Cidr = "10.244.0.0/24".parse().unwrap();
        assert_eq!(allocate(tiny, &used), None);
        let small: Cidr = "10.9.0.0/23".parse().unwrap();
        assert_eq!(
            allocate(small, &BTreeSet::new()).as_deref(),
            Some("10.9.0.0/24")
        );
    }
}
