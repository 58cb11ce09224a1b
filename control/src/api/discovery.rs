//! Discovery and OpenAPI: `/version`, `/api`, `/apis`, per-group and per-group-version resource
//! lists, `/openapi/v3` and `/openapi/v2`.
//!
//! The OpenAPI v3 documents describe every resource path with its operations; each PATCH
//! operation carries `x-kubernetes-group-version-kind` and a `fieldValidation` query parameter,
//! which is how kubectl (default `--validate=strict`) learns that this server validates fields
//! itself and sends `fieldValidation=Strict` instead of validating on the client. Component
//! schemas (from k8s-openapi's schemars impls, and CRDs' own schemas) serve `kubectl explain`.
//! PATCH operations declare no request body, so kubectl builds strategic merge patches for
//! `apply` from its compiled-in types for built-in kinds and JSON merge patches for custom
//! resources, as it does against a server without patch schemas. `/openapi/v2` answers a minimal protobuf document (Swagger 2.0 header
//! only) for clients that still ask for it.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::{
    Body, State, json_response,
    registry::{Registry, ResourceType},
    request::Request,
    status::ApiError,
    validation,
};

/// The Kubernetes version rudder reports (the API level it implements).
pub const KUBE_VERSION: &str = "v1.37.0";

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "37",
        "gitVersion": format!("{KUBE_VERSION}+rudder-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
        "emulationMajor": "1",
        "emulationMinor": "37",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
    })
}

/// `/api`.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "apiVersion": "v1",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or_default(),
    })
}

/// Groups served by handlers of their own rather than from storage (not in the registry): the
/// resource metrics and the authentication reviews.
const COMPUTED: [(&str, &str); 2] = [
    (super::metrics::GROUP, super::metrics::VERSION),
    (super::tokens::REVIEW_GROUP, super::tokens::REVIEW_VERSION),
];

/// The resource list of a computed group-version.
fn computed_resources(group: &str, version: &str) -> Option<Value> {
    match (group, version) {
        (super::metrics::GROUP, super::metrics::VERSION) => Some(super::metrics::resource_list()),
        (super::tokens::REVIEW_GROUP, super::tokens::REVIEW_VERSION) => {
            Some(super::tokens::review_resources())
        }
        _ => None,
    }
}

/// Every served group with its versions: the registry's, then the computed ones.
fn all_groups(registry: &Registry) -> Vec<(String, Vec<String>)> {
    let mut groups = registry.groups();
    groups.extend(
        COMPUTED
            .iter()
            .map(|(g, v)| ((*g).to_owned(), vec![(*v).to_owned()])),
    );
    groups
}

/// `/apis`.
pub fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = all_groups(registry)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/{group}`.
pub fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    let groups = all_groups(registry);
    let (g, vs) = groups.iter().find(|(g, _)| g == group)?;
    let mut v = group_json(g, vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

fn resource_entries(t: &ResourceType) -> Vec<Value> {
    let mut main = json!({
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": VERBS,
    });
    if !t.short_names.is_empty() {
        main["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        main["categories"] = json!(t.categories);
    }
    let mut out = vec![main];
    if t.status {
        out.push(json!({
            "name": format!("{}/status", t.plural),
            "singularName": "",
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    if t.scale.is_some() {
        out.push(json!({
            "name": format!("{}/scale", t.plural),
            "singularName": "",
            "namespaced": t.namespaced,
            "group": "autoscaling",
            "version": "v1",
            "kind": "Scale",
            "verbs": ["get", "patch", "update"],
        }));
    }
    if t.group.is_empty() && t.plural == "serviceaccounts" {
        out.push(json!({
            "name": "serviceaccounts/token",
            "singularName": "",
            "namespaced": true,
            "group": "authentication.k8s.io",
            "version": "v1",
            "kind": "TokenRequest",
            "verbs": ["create"],
        }));
    }
    if t.group.is_empty() && t.plural == "pods" {
        out.push(json!({
            "name": "pods/binding",
            "singularName": "",
            "namespaced": true,
            "kind": "Binding",
            "verbs": ["create"],
        }));
        // `kubectl drain` evicts through this when discovery lists it (else it deletes).
        out.push(json!({
            "name": "pods/eviction",
            "singularName": "",
            "namespaced": true,
            "group": "policy",
            "version": "v1",
            "kind": "Eviction",
            "verbs": ["create"],
        }));
    }
    out
}

/// `/api/v1` or `/apis/{group}/{version}`.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.in_group_version(group, version);
    if types.is_empty() {
        return computed_resources(group, version);
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = types.iter().flat_map(|t| resource_entries(t)).collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(t: &ResourceType, action: &str, kind: &str, params: &[&str]) -> Value {
    json!({
        "operationId": format!("{action}{}", t.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": kind},
        "parameters": params.iter().map(|p| query_param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
    })
}

/// The OpenAPI v3 document of one group-version.
pub fn openapi_v3_group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let write_params = ["dryRun", "fieldManager", "fieldValidation"];
    let patch_params = ["dryRun", "fieldManager", "fieldValidation", "force"];
    let mut paths = serde_json::Map::new();
    for t in &types {
        let base = if t.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, version),
                t.plural
            )
        } else {
            format!("/{}/{}", gv_path(group, version), t.plural)
        };
        paths.insert(
            base.clone(),
            json!({
                "get": operation(t, "list", &t.kind, &["labelSelector", "fieldSelector", "limit", "continue", "watch", "resourceVersion"]),
                "post": operation(t, "post", &t.kind, &write_params),
                "delete": operation(t, "deletecollection", &t.kind, &["labelSelector", "fieldSelector"]),
            }),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": operation(t, "get", &t.kind, &[]),
                "put": operation(t, "put", &t.kind, &write_params),
                "patch": operation(t, "patch", &t.kind, &patch_params),
                "delete": operation(t, "delete", &t.kind, &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
            }),
        );
        if t.status {
            paths.insert(
                format!("{base}/{{name}}/status"),
                json!({
                    "get": operation(t, "get", &t.kind, &[]),
                    "put": operation(t, "put", &t.kind, &write_params),
                    "patch": operation(t, "patch", &t.kind, &patch_params),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_VERSION},
        "paths": paths,
        "components": {"schemas": schemas(&types)},
    }))
}

/// The component schemas of a group-version: every built-in kind's schema from k8s-openapi (and
/// every type it refers to, under Kubernetes' names such as `io.k8s.api.apps.v1.Deployment`),
/// and each custom resource's `openAPIV3Schema`; each kind's schema is marked with
/// `x-kubernetes-group-version-kind`, which is how `kubectl explain` finds it.
///
/// Patch operations list no request body, so kubectl still builds strategic merge patches for
/// `apply` from its compiled-in types, as it does without schemas (see the module docs).
fn schemas(types: &[Arc<ResourceType>]) -> serde_json::Map<String, Value> {
    let mut out = types
        .first()
        .map(|t| builtin_schemas(&t.group, &t.version, types))
        .unwrap_or_default();
    for t in types {
        if let Some(custom) = &t.custom {
            let reversed: Vec<&str> = t.group.split('.').rev().collect();
            let name = format!("{}.{}.{}", reversed.join("."), t.version, t.kind);
            let schema = custom.schema.clone().unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
            out.insert(name.clone(), schema);
            mark_kind(&mut out, &name, t);
        }
    }
    out
}

/// The built-in kinds' schemas of one group-version. They never change while the server runs,
/// and generating them is the costly part of every OpenAPI request (the `/openapi/v3` index
/// hashes each document), so each group-version's set is generated once.
fn builtin_schemas(
    group: &str,
    version: &str,
    types: &[Arc<ResourceType>],
) -> serde_json::Map<String, Value> {
    static CACHE: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, serde_json::Map<String, Value>>>,
    > = std::sync::LazyLock::new(Default::default);
    let key = format!("{group}/{version}");
    if let Ok(cache) = CACHE.lock()
        && let Some(cached) = cache.get(&key)
    {
        return cached.clone();
    }
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut kinds = Vec::new();
    for t in types.iter().filter(|t| t.custom.is_none()) {
        if let Some(name) = validation::builtin_schema(&t.group, &t.kind, &mut generator) {
            kinds.push((name, t));
        }
    }
    let mut out = generator.take_definitions(true);
    for (name, t) in kinds {
        if let Some(Value::Object(schema)) = out.get_mut(&name) {
            // k8s-openapi's Rust types make `metadata` required; Kubernetes' schemas do not.
            if let Some(Value::Array(required)) = schema.get_mut("required") {
                required.retain(|r| r != "metadata");
            }
        }
        mark_kind(&mut out, &name, t);
    }
    if let Ok(mut cache) = CACHE.lock() {
        cache.insert(key, out.clone());
    }
    out
}

/// Marks schema `name` as the schema of `t`'s kind (what `kubectl explain` looks for).
fn mark_kind(schemas: &mut serde_json::Map<String, Value>, name: &str, t: &ResourceType) {
    if let Some(Value::Object(schema)) = schemas.get_mut(name) {
        schema.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": t.group, "version": t.version, "kind": t.kind}]),
        );
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `/openapi/v3`: the index of group-version documents.
pub fn openapi_v3_root(registry: &Registry) -> Value {
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".to_owned())];
    for (g, vs) in registry.groups() {
        for v in vs {
            gvs.push((g.clone(), v));
        }
    }
    let mut paths = serde_json::Map::new();
    for (g, v) in gvs {
        let Some(doc) = openapi_v3_group_version(registry, &g, &v) else {
            continue;
        };
        let hash = fnv1a(doc.to_string().as_bytes());
        let path = gv_path(&g, &v);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash:016X}")}),
        );
    }
    json!({ "paths": paths })
}

/// A minimal OpenAPI v2 document as protobuf (`gnostic` `Document{swagger, info}`).
fn openapi_v2_protobuf() -> Vec<u8> {
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push((number << 3) | 2);
        let mut len = bytes.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes");
    field(&mut info, 2, KUBE_VERSION.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    doc
}

/// Serves `/openapi/v2`, `/openapi/v3` and `/openapi/v3/<group-version path>`.
pub fn openapi(state: &Arc<State>, path: &str, req: &Request) -> Result<Response<Body>, ApiError> {
    if path == "/openapi/v2" {
        let accept = req
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains("protobuf") || !accept.contains("json") {
            let mut resp = Response::new(Full::new(Bytes::from(openapi_v2_protobuf())).boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                // As kube-openapi answers: the `@` form is accepted in Accept, but Go's mime
                // parser (kubectl's validation) rejects it in a Content-Type.
                HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            return Ok(resp);
        }
        return Ok(json_response(
            StatusCode::OK,
            &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": KUBE_VERSION}, "paths": {}}),
        ));
    }
    let rest = path.trim_start_matches("/openapi/v3").trim_matches('/');
    if rest.is_empty() {
        return Ok(json_response(
            StatusCode::OK,
            &openapi_v3_root(&state.registry),
        ));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let doc = match parts.as_slice() {
        ["api", v] => openapi_v3_group_version(&state.registry, "", v),
        ["apis", g, v] => openapi_v3_group_version(&state.registry, g, v),
        _ => None,
    };
    doc.map(|d| json_response(StatusCode::OK, &d))
        .ok_or_else(|| ApiError::no_route(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_schemas_carry_group_version_kind() {
        let registry = Registry::new();
        let doc = openapi_v3_group_version(&registry, "apps", "v1").unwrap();
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(
            doc["components"]["schemas"]
                .get("io.k8s.api.core.v1.PodSpec")
                .is_some()
        );
        // Patch operations declare no request body (kubectl keeps its compiled-in SMP).
        let path = "/apis/apps/v1/namespaces/{namespace}/deployments/{name}";
        assert!(doc["paths"][path]["patch"].get("requestBody").is_none());
    }

    #[test]
    fn patch_operations_advertise_field_validation() {
        let reg = Registry::new();
        let doc = openapi_v3_group_version(&reg, "apps", "v1").unwrap();
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let root = openapi_v3_root(&reg);
        assert!(
            root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
        assert!(root["paths"]["apis/apps/v1"].is_object());
    }

    #[test]
    fn discovery_lists_subresources_and_categories() {
        let reg = Registry::new();
        let list = resource_list(&reg, "apps", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"deployments/scale"));
        assert!(names.contains(&"deployments/status"));
        let deploy = &list["resources"][0];
        assert_eq!(deploy["shortNames"][0], "deploy");
        assert_eq!(deploy["categories"][0], "all");
        assert!(
            api_group_list(&reg)["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "apps")
        );
    }

    #[test]
    fn openapi_v2_protobuf_is_well_formed() {
        let doc = openapi_v2_protobuf();
        assert_eq!(&doc[..5], b"\x0a\x032.0");
    }
}
