//! The EndpointSlice and Endpoints controller: keeps each Service's endpoints true to the pods
//! its selector matches.
//!
//! Choices, following kube-controller-manager:
//! - A pod counts once it has an IP and while it is not terminal (Succeeded/Failed).
//! - Conditions: `serving` = the pod's Ready condition; `terminating` = it has a
//!   `deletionTimestamp`; `ready` = serving and not terminating. `publishNotReadyAddresses`
//!   makes every endpoint ready. A Service with an empty selector gets no slices (as in
//!   Kubernetes, it does not select every pod); one being deleted gets no new ones.
//! - A named `targetPort` is looked up among the pod's container ports (name and protocol); pods
//!   that lack it get no endpoint for that port. Pods are grouped by the ports they resolve to:
//!   one group of slices per distinct port set, at most [`MAX_ENDPOINTS`] endpoints per slice.
//! - Slices are updated with minimal churn: an endpoint stays in the slice that holds it, new
//!   endpoints fill slices with room before a new slice is made, emptied slices go. A Service
//!   without endpoints keeps one empty slice (the placeholder).
//! - Managed slices carry `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`, the Service's
//!   labels, and a controller ownerReference to the Service. Slices of other managers are left
//!   alone; Services without a selector get none from here.
//! - The legacy `Endpoints` object (same name as the Service) holds ready addresses and, apart,
//!   not-ready ones; terminating pods are left out unless `publishNotReadyAddresses`. It is
//!   labelled `endpointslice.kubernetes.io/skip-mirror: "true"`.
//!
//! When a Service goes, its managed slices and Endpoints go with it (the garbage collector would
//! do it through the ownerReference; doing it here keeps the two independent).
//!
//! The informer may lag behind this controller's own writes; each Service remembers the
//! resourceVersions it wrote and is not reconciled again until the cache has caught up, so a
//! slice is never created twice.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::{
            EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference,
            Service,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};

use crate::cached::Pod;

use super::informer::{Change, Expectations, Informer, Key, WorkQueue, version, work};

/// Label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGER: &str = "endpointslice-controller.k8s.io";
/// Label telling a mirroring controller to skip an Endpoints object.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Most endpoints in one slice (kube-controller-manager's default).
pub const MAX_ENDPOINTS: usize = 100;

/// A pod's endpoint for one port set.
#[derive(Clone, Debug, PartialEq)]
struct PodEndpoint {
    ports: Vec<EndpointPort>,
    endpoint: Endpoint,
    /// For the legacy Endpoints object.
    address: EndpointAddress,
}

/// Whether the controller manages slices for `svc`.
pub fn managed(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        // An empty selector selects nothing here, as in Kubernetes (not every pod).
        s.selector.as_ref().is_some_and(|sel| !sel.is_empty())
            && s.type_.as_deref() != Some("ExternalName")
    })
}

/// Whether `svc` selects `pod` (same namespace, every selector label equal).
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if svc.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The container port `target` resolves to in `pod`, for `protocol`.
fn resolve_port(pod: &Pod, target: Option<&IntOrString>, port: i32, protocol: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => {
            if let Ok(n) = s.parse::<i32>() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(s.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

fn pod_endpoint(svc: &Service, pod: &Pod) -> Option<PodEndpoint> {
    let spec = svc.spec.as_ref()?;
    let ip = pod
        .status
        .as_ref()?
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())?;
    if terminal(pod) {
        return None;
    }
    let publish = spec.publish_not_ready_addresses == Some(true);
    let serving = pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = publish || (serving && !terminating);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port = resolve_port(pod, p.target_port.as_ref(), p.port, &protocol)?;
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    let pod_spec = pod.spec.as_ref();
    let node_name = pod_spec.and_then(|s| s.node_name.clone());
    let hostname = pod_spec
        .filter(|s| s.subdomain.is_some() && s.subdomain == svc.metadata.name)
        .and_then(|s| s.hostname.clone());
    let target_ref = ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    };
    Some(PodEndpoint {
        ports,
        endpoint: Endpoint {
            addresses: vec![ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: hostname.clone(),
            node_name: node_name.clone(),
            target_ref: Some(target_ref.clone()),
            ..Endpoint::default()
        },
        address: EndpointAddress {
            ip,
            hostname,
            node_name,
            target_ref: Some(target_ref),
        },
    })
}

/// Identity of a port set, to group pods and slices.
fn ports_key(ports: &[EndpointPort]) -> String {
    let mut parts: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}/{}",
                p.name.as_deref().unwrap_or(""),
                p.protocol.as_deref().unwrap_or("TCP"),
                p.port.unwrap_or(0),
                p.app_protocol.as_deref().unwrap_or("")
            )
        })
        .collect();
    parts.sort();
    parts.join(",")
}

fn endpoint_key(e: &Endpoint) -> String {
    let uid = e
        .target_ref
        .as_ref()
        .and_then(|r| r.uid.as_deref())
        .unwrap_or("");
    format!("{}|{uid}", e.addresses.join(","))
}

/// What to write so a Service's slices match its pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlicePlan {
    /// New slices (named by `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Changed slices (carrying the resourceVersion they were read at).
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

impl SlicePlan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.remove(SERVICE_NAME_LABEL);
    labels.remove(MANAGED_BY_LABEL);
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    labels
}

fn owner(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn new_slice(svc: &Service, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", svc.metadata.name.as_deref().unwrap_or(""))),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![owner(svc)]),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    }
}

/// Whether `slice` is one of this controller's slices for Service `key`.
pub fn is_managed_slice(slice: &EndpointSlice, key: &Key) -> bool {
    let labels = slice.metadata.labels.as_ref();
    slice.metadata.namespace.as_deref() == Some(key.namespace.as_str())
        && labels
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(MANAGER)
        && labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&key.name)
}

/// Plans the slices of `svc` given the pods it selects and its current managed slices (pure
/// core). `existing` slices other than IPv4 are deleted: this control plane is IPv4-only.
pub fn plan_slices(svc: &Service, pods: &[&Pod], existing: &[&EndpointSlice]) -> SlicePlan {
    let mut plan = SlicePlan::default();
    // Desired endpoints by port set, then by endpoint identity.
    let mut desired: BTreeMap<String, (Vec<EndpointPort>, BTreeMap<String, Endpoint>)> =
        BTreeMap::new();
    for pod in pods {
        if let Some(pe) = pod_endpoint(svc, pod) {
            let group = desired
                .entry(ports_key(&pe.ports))
                .or_insert_with(|| (pe.ports.clone(), BTreeMap::new()));
            group.1.insert(endpoint_key(&pe.endpoint), pe.endpoint);
        }
    }
    let labels = slice_labels(svc);
    let owners = vec![owner(svc)];
    let mut existing: Vec<&EndpointSlice> = existing.to_vec();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    // With no endpoints at all, the first IPv4 slice stays as the empty placeholder.
    let placeholder = desired
        .is_empty()
        .then(|| existing.iter().position(|s| s.address_type == "IPv4"))
        .flatten();
    // Slices kept: (stored, new contents, port set).
    let mut kept: Vec<(&EndpointSlice, EndpointSlice, String)> = Vec::new();
    for (i, slice) in existing.iter().enumerate() {
        if placeholder == Some(i) {
            let mut next = (*slice).clone();
            next.endpoints = Some(Vec::new());
            next.ports = Some(Vec::new());
            kept.push((slice, next, String::new()));
            continue;
        }
        let key = ports_key(slice.ports.as_deref().unwrap_or_default());
        let Some((_, wanted)) = desired
            .get_mut(&key)
            .filter(|_| slice.address_type == "IPv4")
        else {
            plan.delete.extend(slice.metadata.name.clone());
            continue;
        };
        let endpoints: Vec<Endpoint> = slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|e| wanted.remove(&endpoint_key(e)))
            .collect();
        let mut next = (*slice).clone();
        next.endpoints = Some(endpoints);
        kept.push((slice, next, key));
    }
    // New endpoints fill kept slices of their port set, then new slices.
    for (key, (ports, rest)) in desired {
        let mut rest: Vec<Endpoint> = rest.into_values().collect();
        for (_, next, _) in kept.iter_mut().filter(|(_, _, k)| *k == key) {
            let list = next.endpoints.get_or_insert_with(Vec::new);
            let room = MAX_ENDPOINTS.saturating_sub(list.len()).min(rest.len());
            list.extend(rest.drain(..room));
        }
        for chunk in rest.chunks(MAX_ENDPOINTS) {
            plan.create
                .push(new_slice(svc, ports.clone(), chunk.to_vec()));
        }
    }
    if placeholder.is_none() && kept.is_empty() && plan.create.is_empty() {
        plan.create.push(new_slice(svc, Vec::new(), Vec::new()));
    }
    for (i, (stored, mut next, _)) in kept.into_iter().enumerate() {
        let empty = next.endpoints.as_ref().is_none_or(Vec::is_empty);
        if empty && !(placeholder.is_some() && i == 0) {
            // Emptied: its endpoints went (the placeholder, if any, is always kept first).
            plan.delete.extend(stored.metadata.name.clone());
            continue;
        }
        next.metadata.labels = Some(labels.clone());
        next.metadata.owner_references = Some(owners.clone());
        if let Some(es) = next.endpoints.as_mut() {
            es.sort_by_key(endpoint_key);
        }
        if !same_contents(&next, stored) {
            plan.update.push(next);
        }
    }
    plan
}

/// Whether `next` differs from `stored` at most in endpoint order (which carries no meaning,
/// so is not worth a write).
fn same_contents(next: &EndpointSlice, stored: &EndpointSlice) -> bool {
    let sorted = |s: &EndpointSlice| {
        let mut e: Vec<Endpoint> = s.endpoints.clone().unwrap_or_default();
        e.sort_by_key(endpoint_key);
        e
    };
    next.metadata.labels == stored.metadata.labels
        && next.metadata.owner_references == stored.metadata.owner_references
        && next.ports.as_deref().unwrap_or_default() == stored.ports.as_deref().unwrap_or_default()
        && stored.endpoints.is_some()
        && sorted(next) == sorted(stored)
}

/// The legacy Endpoints object for `svc` (pure core).
pub fn desired_endpoints(svc: &Service, pods: &[&Pod]) -> Endpoints {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    // Subsets by port set: (ports, ready, not ready).
    type Subset = (
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    );
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    for pod in pods {
        let Some(pe) = pod_endpoint(svc, pod) else {
            continue;
        };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if terminating && !publish {
            continue;
        }
        let entry = subsets
            .entry(ports_key(&pe.ports))
            .or_insert_with(|| (pe.ports.clone(), Vec::new(), Vec::new()));
        if pe.endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
            entry.1.push(pe.address);
        } else {
            entry.2.push(pe.address);
        }
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|p| CorePort {
                            name: p.name.filter(|n| !n.is_empty()),
                            port: p.port.unwrap_or(0),
                            protocol: p.protocol,
                            app_protocol: p.app_protocol,
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SKIP_MIRROR_LABEL.into(), "true".into());
    Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// Services.
    pub services: Arc<Informer<Service>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
    /// EndpointSlices.
    pub slices: Arc<Informer<EndpointSlice>>,
    /// Endpoints.
    pub endpoints: Arc<Informer<Endpoints>>,
}

/// resourceVersions this controller wrote for a Service's slices, by slice name (None =
/// deleted).
type Written = BTreeMap<String, Option<u64>>;

/// How long written versions are waited for before the cache is trusted anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut services = caches.services.subscribe();
    let mut pods = caches.pods.subscribe();
    let mut slices = caches.slices.subscribe();
    let mut endpoints = caches.endpoints.subscribe();
    caches.services.synced().await;
    caches.pods.synced().await;
    caches.slices.synced().await;
    caches.endpoints.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for svc in caches.services.store().state() {
                queue.add(Key::of(&*svc));
            }
            for slice in caches.slices.store().state() {
                if let Some(key) = slice_owner(&slice) {
                    queue.add(key);
                }
            }
        }
    };
    enqueue_all();
    let dispatch = {
        let caches = caches.clone();
        let queue = queue.clone();
        async move {
            loop {
                tokio::select! {
                    change = services.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|s| queue.add(Key::of(&**s))),
                        None => break,
                    },
                    change = pods.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => {
                            let services = caches.services.store().state();
                            for pod in c.objects() {
                                for svc in services.iter().filter(|s| selects(s, pod)) {
                                    queue.add(Key::of(&**svc));
                                }
                            }
                        }
                        None => break,
                    },
                    change = slices.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().filter_map(|s| slice_owner(s)).for_each(|k| queue.add(k)),
                        None => break,
                    },
                    // Endpoints are named like their Service: a changed or deleted one is checked.
                    change = endpoints.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|e| queue.add(Key::of(&**e))),
                        None => break,
                    },
                }
            }
        }
    };
    let expected = Expectations::new(EXPECTATION_TIMEOUT);
    let work = work(queue, "syncing endpoints", |key| {
        let (client, caches, expected) = (&client, &caches, &expected);
        async move {
            if !expected.caught_up(&key, |written| seen(caches, &key, written)) {
                return Ok(Some(Duration::from_millis(200)));
            }
            let mut written = Written::new();
            let result = reconcile(client, caches, &key, &mut written).await;
            expected.record(key, (!written.is_empty()).then_some(written));
            result.map(|()| None)
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

fn slice_owner(slice: &EndpointSlice) -> Option<Key> {
    let labels = slice.metadata.labels.as_ref()?;
    (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGER)).then(|| Key {
        namespace: slice.metadata.namespace.clone().unwrap_or_default(),
        name: labels.get(SERVICE_NAME_LABEL).cloned().unwrap_or_default(),
    })
}

/// Whether the slice cache shows everything this controller last wrote for `key`.
fn seen(caches: &Caches, key: &Key, written: &Written) -> bool {
    let store = caches.slices.store();
    written.iter().all(|(name, rv)| {
        let cached = store.get(
            &Key {
                namespace: key.namespace.clone(),
                name: name.clone(),
            }
            .object_ref(),
        );
        match (rv, cached) {
            (Some(rv), Some(s)) => version(&s.metadata) >= *rv,
            (Some(_), None) => false,
            (None, cached) => cached.is_none(),
        }
    })
}

/// Brings one Service's slices and Endpoints up to date, recording the slice versions it writes
/// in `written` as it goes.
async fn reconcile(
    client: &Client,
    caches: &Caches,
    key: &Key,
    written: &mut BTreeMap<String, Option<u64>>,
) -> Result<(), kube::Error> {
    let svc = caches.services.store().get(&key.object_ref());
    let existing: Vec<Arc<EndpointSlice>> = caches
        .slices
        .store()
        .state()
        .into_iter()
        .filter(|s| is_managed_slice(s, key))
        .collect();
    let existing_refs: Vec<&EndpointSlice> = existing.iter().map(|s| &**s).collect();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &key.namespace);
    let endpoints_api: Api<Endpoints> = Api::namespaced(client.clone(), &key.namespace);
    // A Service being deleted gets no new slices: they would hold up its deletion.
    let live = svc
        .as_deref()
        .filter(|s| managed(s) && s.metadata.deletion_timestamp.is_none());
    let (plan, endpoints) = match live {
        Some(svc) => {
            let all = caches.pods.store().state();
            let pods: Vec<&Pod> = all
                .iter()
                .map(|p| &**p)
                .filter(|p| selects(svc, p))
                .collect();
            (
                plan_slices(svc, &pods, &existing_refs),
                Some(desired_endpoints(svc, &pods)),
            )
        }
        None => (
            SlicePlan {
                delete: existing_refs
                    .iter()
                    .filter_map(|s| s.metadata.name.clone())
                    .collect(),
                ..SlicePlan::default()
            },
            None,
        ),
    };
    let pp = PostParams {
        field_manager: Some("endpointslice-controller".into()),
        ..PostParams::default()
    };
    for slice in &plan.create {
        let made = slices.create(&pp, slice).await?;
        if let Some(name) = made.metadata.name.clone() {
            written.insert(name, Some(version(&made.metadata)));
        }
    }
    for slice in &plan.update {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let made = slices.replace(&name, &pp, slice).await?;
        written.insert(name, Some(version(&made.metadata)));
    }
    for name in &plan.delete {
        match slices.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
        written.insert(name.clone(), None);
    }
    if !plan.is_empty() {
        tracing::debug!(
            service = %key,
            created = plan.create.len(),
            updated = plan.update.len(),
            deleted = plan.delete.len(),
            "endpoint slices synced"
        );
    }
    sync_endpoints(&endpoints_api, caches, key, svc.as_deref(), endpoints, &pp).await
}

async fn sync_endpoints(
    api: &Api<Endpoints>,
    caches: &Caches,
    key: &Key,
    svc: Option<&Service>,
    desired: Option<Endpoints>,
    pp: &PostParams,
) -> Result<(), kube::Error> {
    let current = caches.endpoints.store().get(&key.object_ref());
    match (desired, current) {
        (Some(mut want), Some(have)) => {
            if want.subsets == have.subsets && want.metadata.labels == have.metadata.labels {
                return Ok(());
            }
            want.metadata.resource_version = have.metadata.resource_version.clone();
            // A conflict (stale cache) is an error: retried after a back-off.
            api.replace(&key.name, pp, &want).await.map(|_| ())
        }
        (Some(want), None) => match api.create(pp, &want).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        },
        (None, Some(have)) => {
            // A Service without a selector keeps the Endpoints its user writes.
            let ours = have
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(SKIP_MIRROR_LABEL));
            if svc.is_some() && !ours {
                return Ok(());
            }
            match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        }
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(extra: serde_json::Value) -> Service {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20",
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn summary(e: &Endpoint) -> String {
        let c = e.conditions.clone().unwrap_or_default();
        format!(
            "{} ready={} serving={} terminating={}",
            e.addresses.join(","),
            c.ready.unwrap_or(false),
            c.serving.unwrap_or(false),
            c.terminating.unwrap_or(false)
        )
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let s = svc(json!({}));
        let pods = [
            pod("a", "10.244.0.2", true, json!({})),
            pod("b", "10.244.0.3", false, json!({})),
            pod(
                "c",
                "10.244.0.4",
                true,
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
            pod(
                "d",
                "10.244.0.5",
                true,
                json!({"status": {"phase": "Succeeded"}}),
            ),
            pod("e", "", true, json!({})),
            pod(
                "f",
                "10.244.0.6",
                true,
                json!({"metadata": {"labels": {"app": "other"}}}),
            ),
        ];
        let selected: Vec<&Pod> = pods.iter().filter(|p| selects(&s, p)).collect();
        let plan = plan_slices(&s, &selected, &[]);
        assert_eq!(plan.create.len(), 1);
        let slice = &plan.create[0];
        let got: Vec<String> = slice.endpoints.iter().flatten().map(summary).collect();
        expect_test::expect![[r#"
            [
                "10.244.0.2 ready=true serving=true terminating=false",
                "10.244.0.3 ready=false serving=false terminating=false",
                "10.244.0.4 ready=false serving=true terminating=true",
            ]
        "#]]
        .assert_debug_eq(&got);
        let ports = slice.ports.clone().unwrap();
        assert_eq!(ports[0].port, Some(8080));
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGER);
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));

        let ep = desired_endpoints(&s, &selected);
        let subset = &ep.subsets.unwrap()[0];
        assert_eq!(subset.addresses.as_ref().unwrap().len(), 1);
        assert_eq!(
            subset.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.244.0.3"
        );
    }

    #[test]
    fn publish_not_ready_makes_every_endpoint_ready() {
        let s = svc(json!({"spec": {"publishNotReadyAddresses": true}}));
        let pods = [pod("b", "10.244.0.3", false, json!({}))];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_slices(&s, &refs, &[]);
        assert_eq!(
            summary(&plan.create[0].endpoints.clone().unwrap()[0]),
            "10.244.0.3 ready=true serving=false terminating=false"
        );
    }

    #[test]
    fn pods_group_by_resolved_ports_and_missing_named_ports_are_skipped() {
        let s = svc(json!({}));
        let pods = [
            pod("a", "10.244.0.2", true, json!({})),
            pod(
                "b",
                "10.244.0.3",
                true,
                json!({"spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 9090}]}]}}),
            ),
            pod(
                "c",
                "10.244.0.4",
                true,
                json!({"spec": {"containers": [{"name": "c"}]}}),
            ),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_slices(&s, &refs, &[]);
        let mut got: Vec<String> = plan
            .create
            .iter()
            .map(|sl| {
                format!(
                    "{} {:?}",
                    ports_key(sl.ports.as_deref().unwrap()),
                    sl.endpoints
                        .iter()
                        .flatten()
                        .map(|e| e.addresses[0].clone())
                        .collect::<Vec<_>>()
                )
            })
            .collect();
        got.sort();
        expect_test::expect![[r#"
            [
                " [\"10.244.0.4\"]",
                "http/TCP/8080/ [\"10.244.0.2\"]",
                "http/TCP/9090/ [\"10.244.0.3\"]",
            ]
        "#]]
        .assert_debug_eq(&got);
    }

    fn stored(mut s: EndpointSlice, name: &str) -> EndpointSlice {
        s.metadata.name = Some(name.into());
        s.metadata.generate_name = None;
        s.metadata.resource_version = Some("5".into());
        s
    }

    #[test]
    fn updates_keep_endpoints_in_place_and_nothing_changes_twice() {
        let s = svc(json!({}));
        let mut pods: Vec<Pod> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.244.{}.{}", i / 200, i % 200 + 2),
                    true,
                    json!({}),
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_slices(&s, &refs, &[]);
        assert_eq!(plan.create.len(), 2);
        assert_eq!(plan.create[0].endpoints.as_ref().unwrap().len(), 100);
        let a = stored(plan.create[0].clone(), "web-a");
        let b = stored(plan.create[1].clone(), "web-b");
        // Same pods: no writes.
        assert!(plan_slices(&s, &refs, &[&a, &b]).is_empty());
        // One pod turns unready: only the slice holding it is updated.
        pods[3] = pod("p3", "10.244.0.5", false, json!({}));
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_slices(&s, &refs, &[&a, &b]);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);
        let holder = [&a, &b]
            .into_iter()
            .find(|sl| {
                sl.endpoints
                    .iter()
                    .flatten()
                    .any(|e| e.addresses[0] == "10.244.0.5")
            })
            .unwrap();
        assert_eq!(plan.update[0].metadata.name, holder.metadata.name);
        assert_eq!(
            plan.update[0].metadata.resource_version.as_deref(),
            Some("5")
        );
        // New pods fill slice b (50 of room) before a new slice is made.
        pods.extend((150..220).map(|i| {
            pod(
                &format!("p{i}"),
                &format!("10.245.0.{}", i - 148),
                true,
                json!({}),
            )
        }));
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_slices(&s, &refs, &[&a, &b]);
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].endpoints.as_ref().unwrap().len(), 20);
        let b_next = plan
            .update
            .iter()
            .find(|u| u.metadata.name.as_deref() == Some("web-b"))
            .unwrap();
        assert_eq!(b_next.endpoints.as_ref().unwrap().len(), 100);
    }

    #[test]
    fn no_endpoints_keeps_one_placeholder_and_foreign_address_types_go() {
        let s = svc(json!({}));
        let plan = plan_slices(&s, &[], &[]);
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].endpoints.as_ref().map(Vec::len), Some(0));
        let placeholder = stored(plan.create[0].clone(), "web-p");
        assert!(plan_slices(&s, &[], &[&placeholder]).is_empty());
        let pods = [pod("a", "10.244.0.2", true, json!({}))];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan_slices(&s, &refs, &[&placeholder]);
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.delete, vec!["web-p".to_string()]);
        let mut v6 = stored(plan.create[0].clone(), "web-6");
        v6.address_type = "IPv6".into();
        let made = stored(plan.create[0].clone(), "web-4");
        let plan = plan_slices(&s, &refs, &[&made, &v6]);
        assert_eq!(plan.delete, vec!["web-6".to_string()]);
        assert!(plan.update.is_empty() && plan.create.is_empty());
    }

    #[test]
    fn services_without_selectors_are_not_managed() {
        assert!(managed(&svc(json!({}))));
        let mut s = svc(json!({}));
        s.spec.as_mut().unwrap().selector = None;
        assert!(!managed(&s));
        assert!(!managed(&svc(json!({"spec": {"type": "ExternalName"}}))));
        let mut empty = svc(json!({}));
        empty.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        assert!(!managed(&empty), "an empty selector selects nothing");
    }
}
