//! Controllers of the control plane (kube-controller-manager's role). Each owns one concern and
//! converges the cluster towards the declared state; all but [`namespace`] talk to the apiserver
//! through kube-rs like an outside controller, sharing one set of [`informer`]s.
//!
//! - [`informer`]: shared watches and work queues;
//! - [`endpointslice`]: EndpointSlices and Endpoints follow the pods each Service selects;
//! - [`namespace`]: deletes everything in a Namespace being deleted, then the Namespace;
//! - [`node_ipam`]: gives each Node a PodCIDR.

pub mod endpointslice;
pub mod informer;
pub mod namespace;
pub mod node_ipam;

use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::api::allocator::Cidr;

/// Starts the controllers that `rudder server` runs; they stop when their tasks are aborted.
pub fn start(client: Client, cluster_cidr: Cidr) -> Vec<JoinHandle<()>> {
    let caches = endpointslice::Caches {
        services: informer::Informer::start(Api::all(client.clone())),
        pods: informer::Informer::start(Api::all(client.clone())),
        slices: informer::Informer::start(Api::all(client.clone())),
        endpoints: informer::Informer::start(Api::all(client.clone())),
    };
    vec![
        tokio::spawn(node_ipam::run(client.clone(), cluster_cidr)),
        tokio::spawn(endpointslice::run(client, caches)),
    ]
}
