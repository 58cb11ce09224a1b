//! Controllers of the control plane (kube-controller-manager's role). Each owns one concern and
//! converges the cluster towards the declared state; all but [`namespace`] talk to the apiserver
//! through kube-rs like an outside controller, sharing one set of [`informer`]s.
//!
//! - [`informer`]: shared watches and work queues;
//! - [`replicaset`] and [`deployment`]: pods from templates, rollouts, history (their pure
//!   cores are in [`workload`]);
//! - [`endpointslice`]: EndpointSlices and Endpoints follow the pods each Service selects;
//! - [`gc`]: the garbage collector (ownerReferences, propagation policies);
//! - [`namespace`]: deletes everything in a Namespace being deleted, then the Namespace;
//! - [`node_ipam`]: gives each Node a PodCIDR;
//! - [`node_lifecycle`]: marks silent nodes `Unknown`, taints nodes by their conditions and
//!   evicts pods that do not tolerate a node's `NoExecute` taints.

pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod informer;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod workload;

use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::api::allocator::Cidr;

/// Starts the controllers that `rudder server` runs; they stop when their tasks are aborted.
pub fn start(client: Client, cluster_cidr: Cidr) -> Vec<JoinHandle<()>> {
    let services = informer::Informer::start(Api::all(client.clone()));
    let pods = informer::Informer::start(Api::all(client.clone()));
    let slices = informer::Informer::start(Api::all(client.clone()));
    let replicasets = informer::Informer::start(Api::all(client.clone()));
    let deployments = informer::Informer::start(Api::all(client.clone()));
    let endpoint_caches = endpointslice::Caches {
        services: services.clone(),
        pods: pods.clone(),
        slices: slices.clone(),
        endpoints: informer::Informer::start(Api::all(client.clone())),
    };
    let rs_caches = replicaset::Caches {
        replicasets: replicasets.clone(),
        pods: pods.clone(),
    };
    let deployment_caches = deployment::Caches {
        deployments: deployments.clone(),
        replicasets: replicasets.clone(),
    };
    let lifecycle_caches = node_lifecycle::Caches {
        nodes: informer::Informer::start(Api::all(client.clone())),
        leases: informer::Informer::start(Api::namespaced(
            client.clone(),
            node_lifecycle::LEASE_NAMESPACE,
        )),
        pods: pods.clone(),
    };
    let gc_caches = gc::Caches {
        pods,
        replicasets,
        deployments,
        services,
        slices,
    };
    vec![
        tokio::spawn(node_ipam::run(client.clone(), cluster_cidr)),
        tokio::spawn(replicaset::run(client.clone(), rs_caches)),
        tokio::spawn(deployment::run(client.clone(), deployment_caches)),
        tokio::spawn(endpointslice::run(client.clone(), endpoint_caches)),
        tokio::spawn(node_lifecycle::run(client.clone(), lifecycle_caches)),
        tokio::spawn(gc::run(client, gc_caches)),
    ]
}

/// Writes `obj`'s whole status (a merge patch could not clear a field that became empty), at
/// the resourceVersion `obj` carries. A
/// conflict or a vanished object is not an error: the watch event that caused it queues the
/// object again.
pub async fn replace_status<K>(api: &Api<K>, name: &str, obj: &K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .replace_status(name, &kube::api::PostParams::default(), obj)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
