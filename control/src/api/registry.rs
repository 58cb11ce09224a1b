//! The resource registry: every resource type the apiserver serves (built-in and from
//! CustomResourceDefinitions), with what discovery advertises about it and where it is stored.

use std::sync::{Arc, RwLock};

use serde_json::Value;

/// The scale subresource's field paths (JSON paths without the leading `.`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleSpec {
    /// e.g. `spec.replicas`.
    pub spec_replicas: String,
    /// e.g. `status.replicas`.
    pub status_replicas: String,
    /// e.g. `status.selector` (a serialised label selector), if any.
    pub label_selector: Option<String>,
}

/// A printer column for a custom resource (`additionalPrinterColumns`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type (`string`, `integer`, `date`...).
    pub type_: String,
    /// JSON path, e.g. `.spec.replicas`.
    pub json_path: String,
    /// 0 shows in `get`, higher only in `get -o wide`.
    pub priority: i64,
}

/// Custom-resource specifics, taken from the CRD.
#[derive(Clone, Debug, Default)]
pub struct CustomInfo {
    /// The version's `openAPIV3Schema`, if any.
    pub schema: Option<Value>,
    /// Printer columns.
    pub columns: Vec<PrinterColumn>,
    /// The CRD's name (`<plural>.<group>`).
    pub crd_name: String,
}

/// One served resource type (one group/version/resource).
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource name, e.g. `deployments`.
    pub plural: String,
    /// Singular name, e.g. `deployment`.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Has a `/status` subresource (status only changes through it).
    pub status: bool,
    /// Has a `/scale` subresource.
    pub scale: Option<ScaleSpec>,
    /// Key prefix in the store, ending in `/`.
    pub storage_prefix: String,
    /// Present for custom resources.
    pub custom: Option<Arc<CustomInfo>>,
}

impl ResourceType {
    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key of an object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.storage_prefix),
            _ => format!("{}{name}", self.storage_prefix),
        }
    }

    /// The store prefix of a list (all namespaces when `namespace` is `None`).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.storage_prefix),
            _ => self.storage_prefix.clone(),
        }
    }

    /// The resource's group-qualified name for messages, e.g. `deployments.apps`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    all: bool,
    status: bool,
    scale: bool,
}

#[allow(clippy::too_many_arguments, reason = "a table row constructor")]
const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    all: bool,
    status: bool,
    scale: bool,
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short_names,
        all,
        status,
        scale,
    }
}

/// The built-in resource types, in discovery order.
const BUILTINS: &[Builtin] = &[
    b(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        false,
        true,
        false,
    ),
    b("", "v1", "Pod", "pods", true, &["po"], true, true, false),
    b(
        "",
        "v1",
        "Service",
        "services",
        true,
        &["svc"],
        true,
        true,
        false,
    ),
    b(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        true,
        &["ep"],
        false,
        false,
        false,
    ),
    b(
        "",
        "v1",
        "Node",
        "nodes",
        false,
        &["no"],
        false,
        true,
        false,
    ),
    b(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        &["cm"],
        false,
        false,
        false,
    ),
    b(
        "",
        "v1",
        "Secret",
        "secrets",
        true,
        &[],
        false,
        false,
        false,
    ),
    b(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        false,
        false,
        false,
    ),
    b(
        "",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        false,
        false,
        false,
    ),
    b(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        &[],
        false,
        false,
        false,
    ),
    b(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        true,
        true,
        true,
    ),
    b(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        true,
        &["rc"],
        true,
        true,
        true,
    ),
    b(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        true,
        true,
        true,
    ),
    b(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        &["sts"],
        true,
        true,
        true,
    ),
    b(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        true,
        &["ds"],
        true,
        true,
        false,
    ),
    b(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
        &[],
        false,
        false,
        false,
    ),
    b("batch", "v1", "Job", "jobs", true, &[], true, true, false),
    b(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        true,
        &["cj"],
        true,
        true,
        false,
    ),
    b(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        true,
        &["ing"],
        false,
        true,
        false,
    ),
    b(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        false,
        &[],
        false,
        false,
        false,
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        &[],
        false,
        false,
        false,
    ),
    b(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        &["hpa"],
        true,
        true,
        false,
    ),
    b(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
        false,
        true,
        false,
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        false,
        true,
        false,
    ),
];

fn builtin_type(def: &Builtin) -> ResourceType {
    ResourceType {
        group: def.group.to_owned(),
        version: def.version.to_owned(),
        kind: def.kind.to_owned(),
        plural: def.plural.to_owned(),
        singular: def.kind.to_lowercase(),
        namespaced: def.namespaced,
        short_names: def.short_names.iter().map(|s| (*s).to_owned()).collect(),
        categories: if def.all {
            vec!["all".to_owned()]
        } else {
            Vec::new()
        },
        status: def.status,
        scale: def.scale.then(|| ScaleSpec {
            spec_replicas: "spec.replicas".to_owned(),
            status_replicas: "status.replicas".to_owned(),
            label_selector: Some("status.selector".to_owned()),
        }),
        storage_prefix: format!("/registry/{}/", def.plural),
        custom: None,
    }
}

/// All served types. Built-ins are fixed; custom types follow the CRDs.
pub struct Registry {
    builtin: Vec<Arc<ResourceType>>,
    custom: RwLock<Vec<Arc<ResourceType>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with the built-in types.
    pub fn new() -> Self {
        Self {
            builtin: BUILTINS.iter().map(|d| Arc::new(builtin_type(d))).collect(),
            custom: RwLock::new(Vec::new()),
        }
    }

    /// Every served type (built-ins first).
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        let mut all = self.builtin.clone();
        if let Ok(custom) = self.custom.read() {
            all.extend(custom.iter().cloned());
        }
        all
    }

    /// The type served at `group`/`version`/`plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        let matches =
            |t: &&Arc<ResourceType>| t.group == group && t.version == version && t.plural == plural;
        if let Some(t) = self.builtin.iter().find(matches) {
            return Some(Arc::clone(t));
        }
        self.custom
            .read()
            .ok()
            .and_then(|c| c.iter().find(matches).cloned())
    }

    /// The type for an apiVersion + kind, e.g. (`apps/v1`, `Deployment`).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Whether a built-in type already owns `group`/`plural` (CRDs may not shadow them).
    pub fn is_builtin(&self, group: &str, plural: &str) -> bool {
        self.builtin
            .iter()
            .any(|t| t.group == group && t.plural == plural)
    }

    /// Replaces the custom types defined by the CRD named `crd_name` with `types`.
    pub fn set_custom(&self, crd_name: &str, types: Vec<ResourceType>) {
        if let Ok(mut custom) = self.custom.write() {
            custom.retain(|t| t.custom.as_ref().is_none_or(|c| c.crd_name != crd_name));
            custom.extend(types.into_iter().map(Arc::new));
        }
    }

    /// Groups and their versions, in discovery order (core group excluded).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.all() {
            if t.group.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        groups
    }

    /// Types served in `group`/`version`.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .filter(|t| t.group == group && t.version == version)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kube_apiserver_layout() {
        let reg = Registry::new();
        let pods = reg.lookup("", "v1", "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(pods.list_prefix(None), "/registry/pods/");
        let nodes = reg.lookup("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/nodes/n1");
        let deploy = reg.by_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(deploy.group_resource(), "deployments.apps");
        assert!(deploy.scale.is_some());
        assert!(reg.lookup("apps", "v1", "nothings").is_none());
    }
}
