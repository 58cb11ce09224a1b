//! Controllers of the control plane (kube-controller-manager's role). Each owns one concern and
//! converges the cluster towards the declared state; all but [`namespace`] talk to the apiserver
//! through kube-rs like an outside controller, sharing one set of [`informer`]s.
//!
//! - [`informer`]: shared watches and work queues (pods are kept as [`crate::cached::Pod`]);
//! - [`replicaset`] and [`deployment`]: pods from templates, rollouts, history (their pure
//!   cores are in [`workload`]); the ReplicaSet loop runs ReplicationControllers too;
//! - [`job`]: runs each Job's pods to completion (completions, parallelism, Indexed mode,
//!   backoffLimit, activeDeadlineSeconds, suspend, ttlSecondsAfterFinished);
//! - [`cronjob`]: creates Jobs on cron schedules (concurrency policies, starting deadlines,
//!   history limits);
//! - [`daemonset`]: one pod of a template on every eligible node, rolled node by node;
//! - [`statefulset`]: pods with stable names and ordinals, started, stopped and rolled in
//!   order;
//! - [`endpointslice`]: EndpointSlices and Endpoints follow the pods each Service selects;
//! - [`gc`]: the garbage collector (ownerReferences, propagation policies);
//! - [`namespace`]: deletes everything in a Namespace being deleted, then the Namespace;
//! - [`node_ipam`]: gives each Node a PodCIDR;
//! - [`node_lifecycle`]: marks silent nodes `Unknown`, taints nodes by their conditions and
//!   evicts pods that do not tolerate a node's `NoExecute` taints;
//! - [`serviceaccount`]: a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in every
//!   namespace;
//! - [`disruption`]: PodDisruptionBudgets' status (what the apiserver's eviction subresource
//!   spends);
//! - [`hpa`]: HorizontalPodAutoscalers scale their targets by the CPU or memory their pods use
//!   (the arithmetic in [`autoscaling`]).

pub mod autoscaling;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
pub mod gc;
pub mod hpa;
pub mod informer;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod workload;

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::api::allocator::Cidr;

/// Starts the controllers that `rudder server` runs; they stop when their tasks are aborted.
pub fn start(client: Client, cluster_cidr: Cidr, ca_pem: String) -> Vec<JoinHandle<()>> {
    let services = informer::Informer::start(Api::all(client.clone()));
    // One pod cache for every controller, in the controllers' own slim pod type.
    let pods = informer::Informer::<crate::cached::Pod>::start(Api::all(client.clone()));
    let slices = informer::Informer::start(Api::all(client.clone()));
    let replicasets = informer::Informer::start(Api::all(client.clone()));
    let deployments = informer::Informer::start(Api::all(client.clone()));
    let jobs = informer::Informer::start(Api::all(client.clone()));
    let cronjobs = informer::Informer::start(Api::all(client.clone()));
    let nodes = informer::Informer::start(Api::all(client.clone()));
    let daemonsets = informer::Informer::start(Api::all(client.clone()));
    let statefulsets = informer::Informer::start(Api::all(client.clone()));
    let statefulset_caches = statefulset::Caches {
        statefulsets: statefulsets.clone(),
        pods: pods.clone(),
    };
    let daemonset_caches = daemonset::Caches {
        daemonsets: daemonsets.clone(),
        nodes: nodes.clone(),
        pods: pods.clone(),
    };
    let endpoint_caches = endpointslice::Caches {
        services: services.clone(),
        pods: pods.clone(),
        slices: slices.clone(),
        endpoints: informer::Informer::start(Api::all(client.clone())),
    };
    let rs_caches = replicaset::Caches {
        owners: replicasets.clone(),
        pods: pods.clone(),
    };
    let replicationcontrollers = informer::Informer::start(Api::all(client.clone()));
    let rc_caches = replicaset::Caches::<k8s_openapi::api::core::v1::ReplicationController> {
        owners: replicationcontrollers.clone(),
        pods: pods.clone(),
    };
    let deployment_caches = deployment::Caches {
        deployments: deployments.clone(),
        replicasets: replicasets.clone(),
    };
    let job_caches = job::Caches {
        jobs: jobs.clone(),
        pods: pods.clone(),
    };
    let cronjob_caches = cronjob::Caches {
        cronjobs: cronjobs.clone(),
        jobs: jobs.clone(),
    };
    let lifecycle_caches = node_lifecycle::Caches {
        nodes,
        leases: informer::Informer::start(Api::namespaced(
            client.clone(),
            node_lifecycle::LEASE_NAMESPACE,
        )),
        pods: pods.clone(),
    };
    let hpa_caches = hpa::Caches {
        autoscalers: informer::Informer::start_small(Api::all(client.clone())),
        pods: pods.clone(),
    };
    let disruption_caches = disruption::Caches {
        budgets: informer::Informer::start_small(Api::all(client.clone())),
        pods: pods.clone(),
        deployments: deployments.clone(),
        replicasets: replicasets.clone(),
        statefulsets: statefulsets.clone(),
        replicationcontrollers: replicationcontrollers.clone(),
    };
    let gc_caches = gc::Caches {
        pods,
        replicasets,
        replicationcontrollers,
        deployments,
        jobs,
        cronjobs,
        daemonsets,
        statefulsets,
        services,
        slices,
    };
    vec![
        tokio::spawn(node_ipam::run(client.clone(), cluster_cidr)),
        tokio::spawn(replicaset::run(client.clone(), rs_caches)),
        tokio::spawn(replicaset::run(client.clone(), rc_caches)),
        tokio::spawn(deployment::run(client.clone(), deployment_caches)),
        tokio::spawn(job::run(client.clone(), job_caches)),
        tokio::spawn(cronjob::run(client.clone(), cronjob_caches)),
        tokio::spawn(daemonset::run(client.clone(), daemonset_caches)),
        tokio::spawn(statefulset::run(client.clone(), statefulset_caches)),
        tokio::spawn(endpointslice::run(client.clone(), endpoint_caches)),
        tokio::spawn(node_lifecycle::run(client.clone(), lifecycle_caches)),
        tokio::spawn(hpa::run(client.clone(), hpa_caches)),
        tokio::spawn(disruption::run(client.clone(), disruption_caches)),
        tokio::spawn(serviceaccount::run(
            client.clone(),
            serviceaccount::Caches {
                namespaces: informer::Informer::start_small(Api::all(client.clone())),
                accounts: informer::Informer::start_small(Api::all(client.clone())),
                config_maps: informer::Informer::start_small(Api::all(client.clone())),
            },
            ca_pem,
        )),
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

/// An Event a controller records about an object, as `kubectl describe` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// The machine-readable reason (`SuccessfulCreate`, `BackoffLimitExceeded`, ...).
    pub reason: String,
    /// What happened, for people.
    pub message: String,
}

impl Note {
    /// A `Normal` event.
    pub fn normal(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A `Warning` event.
    pub fn warning(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Records `note` about `obj` as a core/v1 Event from `component` (kube-controller-manager's
/// event recorder, without its aggregation of repeats). An event is advisory: a failure to write
/// one is logged, never returned, so no controller retries its work because of it.
pub async fn record_event<K>(client: &Client, obj: &K, component: &str, note: &Note)
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = obj.meta();
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = meta.name.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name.clone()),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            field_path: None,
        },
        reason: Some(note.reason.clone()),
        message: Some(note.message.clone()),
        type_: Some(if note.warning { "Warning" } else { "Normal" }.to_owned()),
        source: Some(EventSource {
            component: Some(component.to_owned()),
            host: None,
        }),
        reporting_component: Some(component.to_owned()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(e) = api.create(&kube::api::PostParams::default(), &event).await {
        tracing::debug!(object = %name, reason = %note.reason, error = %e, "recording an event");
    }
}
