//! The control plane's own Pod type: what the scheduler's and the controllers' caches keep of
//! each pod.
//!
//! k8s-openapi's `Pod` is built for every field Kubernetes has: one `Pod` is 2.4 KB before any
//! field is set, one `Container` 2.3 KB, one `Volume` 3.3 KB, and a scheduled pod decodes to
//! about 10 KB of memory. At 30,000 pods the controllers' copy alone was a third of the control
//! plane's memory (`cargo xtask bench control --hollow-nodes 1000 --pods 30000`), and the
//! scheduler held a full copy of every pod waiting to be bound. This [`Pod`] has the same
//! shape and field names (so code reads `pod.spec`, `pod.status.conditions` as usual) but only
//! the fields the scheduler or some controller reads; watches decode straight into it and
//! serde skips the rest. A pod costs about 1 KB here.
//!
//! What is kept: all of `metadata` (without `managedFields`, which rudder's clients do not ask
//! for, and without the `last-applied-configuration` annotation); from the spec the node,
//! scheduler name, priority, node selector, affinity, tolerations, topology spread,
//! hostname and subdomain, restart policy, active deadline, PVC volumes and each container's
//! name, image, ports, resources and restart policy; from the status the phase, reason,
//! conditions, addresses, start time and each container's readiness, restarts and state. Code
//! that needs another field adds it here.
//!
//! Pods the controllers create are k8s-openapi's (`ApiPod` where both are in scope).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Affinity, ContainerPort, ContainerState, PersistentVolumeClaimVolumeSource, PodCondition,
        PodIP, Toleration, TopologySpreadConstraint,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, Time},
    },
};
use serde::{Deserialize, Deserializer, Serialize};

/// A pod as the controllers' cache keeps it (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Pod {
    #[serde(deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

/// Metadata without what no controller reads: `managedFields` and kubectl's copy of the last
/// applied manifest (often the biggest field of a pod).
fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let mut meta = ObjectMeta::deserialize(d)?;
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    Ok(meta)
}

/// The kept part of a pod's spec.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<Container>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Boxed: most pods have none, and the scheduler's and DaemonSets' code reads it in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Box<Affinity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,

    /// Only the volumes backed by claims (StatefulSets read them); others are dropped.
    #[serde(
        default,
        deserialize_with = "claim_volumes",
        skip_serializing_if = "Option::is_none"
    )]
    pub volumes: Option<Vec<Volume>>,
}

/// A volume the cache keeps: one backed by a PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
}

fn claim_volumes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Volume>>, D::Error> {
    let volumes = Option::<Vec<Volume>>::deserialize(d)?;
    Ok(volumes.map(|mut v| {
        v.retain(|v| v.persistent_volume_claim.is_some());
        v
    }))
}

/// The kept part of a container.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ContainerPort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
}

/// A container's requests and limits, as in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceList>,
}

/// A resource list (`{"cpu": "100m", "memory": "64Mi"}`) kept as a short vector: a `BTreeMap`
/// allocates a 540-byte node for even one entry, which at 30k pods was 17 MB of the cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceList(pub Vec<(String, Quantity)>);

impl ResourceList {
    /// The quantity of `resource`, if listed.
    pub fn get(&self, resource: &str) -> Option<&Quantity> {
        self.0.iter().find(|(k, _)| k == resource).map(|(_, q)| q)
    }
}

impl<'de> Deserialize<'de> for ResourceList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, Quantity>::deserialize(d)?;
        let mut list: Vec<(String, Quantity)> = map.into_iter().collect();
        list.shrink_to_fit();
        Ok(Self(list))
    }
}

impl Serialize for ResourceList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// The kept part of a pod's status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PodCondition>>,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", skip_serializing_if = "Option::is_none")]
    pub pod_ips: Option<Vec<PodIP>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
}

/// The kept part of a container's status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
}

impl k8s_openapi::Resource for Pod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for Pod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
impl From<k8s_openapi::api::core::v1::Pod> for Pod {
    /// The cached form of a full pod, for tests: a JSON round trip between the two shapes.
    #[allow(
        clippy::expect_used,
        reason = "a test helper; the shapes always convert"
    )]
    fn from(pod: k8s_openapi::api::core::v1::Pod) -> Pod {
        let value = serde_json::to_value(pod).expect("a k8s Pod serializes");
        serde_json::from_value(value).expect("a k8s Pod decodes as a cached Pod")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_controllers_read_and_drops_the_rest() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "labels": {"app": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"nodeName": "n1", "hostname": "h", "subdomain": "s",
                "containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}],
                    "ports": [{"name": "http", "containerPort": 80}],
                    "resources": {"requests": {"cpu": "100m"}}}],
                "volumes": [{"name": "token", "projected": {"sources": []}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-p"}}],
                "tolerations": [{"key": "k", "operator": "Exists"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2,
                    "image": "i", "imageID": "x", "state": {"running": {}}}]},
        }))
        .expect("decodes");
        assert_eq!(pod.metadata.annotations, None);
        assert_eq!(pod.metadata.managed_fields, None);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.containers[0].ports.as_ref().map(Vec::len), Some(1));
        let requests = spec.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .expect("requests");
        assert_eq!(requests.get("cpu"), Some(&Quantity("100m".into())));
        assert_eq!(requests.get("memory"), None);
        let volumes = spec.volumes.as_ref().expect("volumes");
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, "data");
        let status = pod.status.as_ref().expect("status");
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(
            status.container_statuses.as_ref().expect("statuses")[0].restart_count,
            2
        );
        assert_eq!(<Pod as kube::Resource>::kind(&()), "Pod");
        assert_eq!(<Pod as kube::Resource>::plural(&()), "pods");
    }

    #[test]
    fn cached_pods_keep_what_controllers_read() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"app": "x"}, "annotations": {
                "controller.kubernetes.io/pod-deletion-cost": "5",
                "kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
            "spec": {
                "nodeName": "n1", "hostname": "h", "subdomain": "s",
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "initContainers": [{"name": "side", "restartPolicy": "Always",
                                     "command": ["x"], "env": [{"name": "A", "value": "b"}]}],
                "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 80}],
                                "resources": {"requests": {"cpu": "100m"}},
                                "env": [{"name": "A", "value": "b"}], "args": ["a"],
                                "volumeMounts": [{"name": "tok", "mountPath": "/t"}],
                                "readinessProbe": {"exec": {"command": ["true"]}}}],
                "volumes": [{"name": "tok", "projected": {"sources": []}},
                            {"name": "data", "persistentVolumeClaim": {"claimName": "data-p"}}],
            },
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        }))
        .expect("decodes");
        let v = serde_json::to_value(&pod).expect("encodes");
        assert_eq!(
            v["metadata"]["annotations"],
            serde_json::json!({"controller.kubernetes.io/pod-deletion-cost": "5"})
        );
        assert_eq!(
            v["spec"]["containers"][0],
            serde_json::json!({"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 80}],
                "resources": {"requests": {"cpu": "100m"}}})
        );
        assert_eq!(
            v["spec"]["initContainers"][0],
            serde_json::json!({"name": "side", "restartPolicy": "Always"})
        );
        assert_eq!(
            v["spec"]["volumes"],
            serde_json::json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-p"}}])
        );
        for kept in ["nodeName", "hostname", "subdomain", "tolerations"] {
            assert!(v["spec"].get(kept).is_some(), "{kept}");
        }
        assert_eq!(v["status"]["podIP"], "10.0.0.1");
    }
}
