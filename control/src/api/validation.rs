//! Decoding and validation of objects.
//!
//! Built-in kinds are decoded into their k8s-openapi types and re-encoded: that rejects wrong
//! types with the path of the offending field (400), prunes unknown fields (reported as a
//! warning, or as an error under `fieldValidation=Strict`) and guarantees every stored object is
//! readable by typed clients. Then Kubernetes' semantic rules run over the JSON (422 with one cause
//! per field): names (DNS-1123), labels, required fields, value ranges and immutable fields.

use k8s_openapi::api;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};

use super::status::Cause;

/// A type error while decoding a built-in kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Path of the field that failed (`spec.replicas`).
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn roundtrip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, DecodeError> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|e| DecodeError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    serde_json::to_value(&typed).map_err(|e| DecodeError {
        path: String::new(),
        message: e.to_string(),
    })
}

/// Puts back the integers of `input` that a typed field held as a float (`minimum: 0` of a
/// CRD schema came back `0.0`: kube-apiserver keeps `0`, and kubectl's server-side apply then
/// saw a change in every CRD with a bound).
fn keep_integers(input: &Value, decoded: &mut Value) {
    match (input, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b.iter_mut() {
                if let Some(i) = a.get(k) {
                    keep_integers(i, v);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, v) in a.iter().zip(b.iter_mut()) {
                keep_integers(i, v);
            }
        }
        (Value::Number(i), d @ Value::Number(_))
            if !i.is_f64() && d.is_f64() && i.as_f64() == d.as_f64() =>
        {
            *d = Value::Number(i.clone());
        }
        _ => {}
    }
}

macro_rules! typed_kinds {
    ($($group:literal, $kind:literal => $ty:ty;)*) => {
        /// Decodes a built-in kind through its typed struct and returns the normalised JSON, or
        /// `None` if `group`/`kind` is not a built-in kind.
        pub fn normalize_builtin(group: &str, kind: &str, value: &Value) -> Option<Result<Value, DecodeError>> {
            let mut decoded = match (group, kind) {
                $(($group, $kind) => roundtrip::<$ty>(value),)*
                _ => return None,
            };
            // Only a CRD's schema holds floats (`minimum`, `maximum`, `multipleOf`).
            if group == "apiextensions.k8s.io" && let Ok(d) = decoded.as_mut() {
                keep_integers(value, d);
            }
            Some(decoded)
        }

        /// Adds the OpenAPI schema of a built-in kind (and of every type it uses) to
        /// `generator`'s definitions; returns the kind's definition name, or `None` if
        /// `group`/`kind` is not a built-in kind.
        pub fn builtin_schema(
            group: &str,
            kind: &str,
            generator: &mut schemars::SchemaGenerator,
        ) -> Option<String> {
            use schemars::JsonSchema as _;
            match (group, kind) {
                $(($group, $kind) => {
                    generator.subschema_for::<$ty>();
                    Some(<$ty>::schema_name().into_owned())
                })*
                _ => None,
            }
        }
    };
}

typed_kinds! {
    "", "Namespace" => api::core::v1::Namespace;
    "", "Pod" => api::core::v1::Pod;
    "", "Service" => api::core::v1::Service;
    "", "Endpoints" => api::core::v1::Endpoints;
    "", "Node" => api::core::v1::Node;
    "", "ConfigMap" => api::core::v1::ConfigMap;
    "", "Secret" => api::core::v1::Secret;
    "", "ServiceAccount" => api::core::v1::ServiceAccount;
    "", "Event" => api::core::v1::Event;
    "discovery.k8s.io", "EndpointSlice" => api::discovery::v1::EndpointSlice;
    "apps", "Deployment" => api::apps::v1::Deployment;
    "apps", "ReplicaSet" => api::apps::v1::ReplicaSet;
    "", "ReplicationController" => api::core::v1::ReplicationController;
    "apps", "StatefulSet" => api::apps::v1::StatefulSet;
    "apps", "DaemonSet" => api::apps::v1::DaemonSet;
    "apps", "ControllerRevision" => api::apps::v1::ControllerRevision;
    "batch", "Job" => api::batch::v1::Job;
    "batch", "CronJob" => api::batch::v1::CronJob;
    "networking.k8s.io", "Ingress" => api::networking::v1::Ingress;
    "networking.k8s.io", "IngressClass" => api::networking::v1::IngressClass;
    "coordination.k8s.io", "Lease" => api::coordination::v1::Lease;
    "autoscaling", "HorizontalPodAutoscaler" => api::autoscaling::v2::HorizontalPodAutoscaler;
    "policy", "PodDisruptionBudget" => api::policy::v1::PodDisruptionBudget;
    "apiextensions.k8s.io", "CustomResourceDefinition" => k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    "autoscaling", "Scale" => api::autoscaling::v1::Scale;
    "", "Binding" => api::core::v1::Binding;
    "policy", "Eviction" => api::policy::v1::Eviction;
}

/// Paths present in `input` but not in `decoded` (fields the typed struct does not know).
pub fn unknown_fields(input: &Value, decoded: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(input, decoded, "", &mut out);
    out
}

fn walk_unknown(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    None => {}
                    Some(bv) => walk_unknown(v, bv, &p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk_unknown(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A DNS-1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// How a kind's names are validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain (most kinds).
    Subdomain,
    /// DNS-1123 label (Namespace).
    Label,
    /// DNS-1035 label (Service).
    Dns1035,
    /// Any path segment (no `/`, `%`, not `.` or `..`): Event, Lease.
    PathSegment,
}

/// The name rule for a kind.
pub fn name_rule(group: &str, kind: &str) -> NameRule {
    match (group, kind) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("", "Event") | ("coordination.k8s.io", "Lease") => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// Validates `metadata.name` (and `metadata.generateName` prefixes).
pub fn validate_name(rule: NameRule, name: &str, field: &str) -> Option<Cause> {
    let value = json!(name);
    if name.is_empty() {
        return Some(Cause::required(field, "name or generateName is required"));
    }
    match rule {
        NameRule::Subdomain if !is_dns1123_subdomain(name) => {
            Some(Cause::invalid(field, &value, DNS1123_SUBDOMAIN_MSG))
        }
        NameRule::Label if !is_dns1123_label(name) => {
            Some(Cause::invalid(field, &value, DNS1123_LABEL_MSG))
        }
        NameRule::Dns1035 if !is_dns1035_label(name) => {
            Some(Cause::invalid(field, &value, DNS1035_LABEL_MSG))
        }
        NameRule::PathSegment
            if name == "." || name == ".." || name.contains('/') || name.contains('%') =>
        {
            Some(Cause::invalid(
                field,
                &value,
                "may not be '.' or '..' and may not contain '/' or '%'",
            ))
        }
        _ => None,
    }
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn validate_label_map(
    map: &Map<String, Value>,
    field: &str,
    values: bool,
    causes: &mut Vec<Cause>,
) {
    for (key, value) in map {
        let (prefix, name) = match key.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, key.as_str()),
        };
        if prefix.is_some_and(|p| !is_dns1123_subdomain(p)) || !is_label_name(name) {
            causes.push(Cause::invalid(
                field,
                &json!(key),
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ));
        }
        if values {
            match value.as_str() {
                Some(v) if v.is_empty() || is_label_name(v) => {}
                _ => causes.push(Cause::invalid(
                    field.to_string(),
                    value,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                )),
            }
        }
    }
}

/// Kubernetes' semantic validation of a (defaulted) object: metadata and per-kind rules.
pub fn validate(group: &str, kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    if let Some(c) = validate_name(name_rule(group, kind), name, "metadata.name") {
        causes.push(c);
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        validate_label_map(labels, "metadata.labels", true, &mut causes);
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        validate_label_map(annotations, "metadata.annotations", false, &mut causes);
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!("Too long: may not be more than 262144 bytes (got {size})"),
                field: "metadata.annotations".into(),
            });
        }
    }
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = obj.get("spec") {
                validate_pod_spec(spec, "spec", &mut causes);
            } else {
                causes.push(Cause::required("spec", ""));
            }
        }
        ("", "Service") => validate_service(obj, &mut causes),
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(map) = obj.get(field).and_then(Value::as_object) {
                    for key in map.keys() {
                        if key.is_empty()
                            || key.len() > 253
                            || !key.bytes().all(|c| {
                                c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
                            })
                        {
                            causes.push(Cause::invalid(
                                format!("{field}[{key}]"),
                                &json!(key),
                                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                            ));
                        }
                    }
                }
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            validate_workload(kind, obj, &mut causes);
        }
        ("", "ReplicationController") => validate_replication_controller(obj, &mut causes),
        ("batch", "Job") => validate_job_template(obj.get("spec"), "spec", &mut causes),
        ("batch", "CronJob") => {
            let spec = obj.get("spec");
            if spec
                .and_then(|s| s.get("schedule"))
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::required("spec.schedule", ""));
            }
            validate_job_template(
                spec.and_then(|s| s.get("jobTemplate"))
                    .and_then(|t| t.get("spec")),
                "spec.jobTemplate.spec",
                &mut causes,
            );
        }
        ("networking.k8s.io", "Ingress") => validate_ingress(obj, &mut causes),
        ("policy", "PodDisruptionBudget") => validate_pdb(obj, &mut causes),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => validate_crd(obj, &mut causes),
        _ => {}
    }
    causes
}

fn check_port(value: Option<&Value>, field: &str, required: bool, causes: &mut Vec<Cause>) {
    match value {
        None if required => causes.push(Cause::required(field, "")),
        None => {}
        Some(v) if !v.as_i64().is_some_and(|p| (1..=65535).contains(&p)) => {
            causes.push(Cause::invalid(
                field,
                v,
                "must be between 1 and 65535, inclusive",
            ));
        }
        Some(_) => {}
    }
}

fn check_protocol(value: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    if let Some(v) = value
        && !matches!(v.as_str(), Some("TCP" | "UDP" | "SCTP"))
    {
        causes.push(Cause::not_supported(field, v, &["SCTP", "TCP", "UDP"]));
    }
}

/// Validates a PodSpec at `path`.
pub fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut names: Vec<String> = Vec::new();
    for list in ["initContainers", "containers"] {
        let containers = spec.get(list).and_then(Value::as_array);
        if list == "containers" && containers.is_none_or(Vec::is_empty) {
            causes.push(Cause::required(format!("{path}.containers"), ""));
        }
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let field = format!("{path}.{list}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::required(format!("{field}.name"), ""));
            } else if !is_dns1123_label(name) {
                causes.push(Cause::invalid(
                    format!("{field}.name"),
                    &json!(name),
                    DNS1123_LABEL_MSG,
                ));
            } else if names.iter().any(|n| n == name) {
                causes.push(Cause::duplicate(format!("{field}.name"), &json!(name)));
            } else {
                names.push(name.to_owned());
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                causes.push(Cause::required(format!("{field}.image"), ""));
            }
            for (j, port) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let pf = format!("{field}.ports[{j}]");
                check_port(
                    port.get("containerPort"),
                    &format!("{pf}.containerPort"),
                    true,
                    causes,
                );
                check_port(
                    port.get("hostPort"),
                    &format!("{pf}.hostPort"),
                    false,
                    causes,
                );
                check_protocol(port.get("protocol"), &format!("{pf}.protocol"), causes);
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy")
        && !matches!(policy.as_str(), Some("Always" | "OnFailure" | "Never"))
    {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(policy) = spec.get("dnsPolicy")
        && !matches!(
            policy.as_str(),
            Some("ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None")
        )
    {
        causes.push(Cause::not_supported(
            format!("{path}.dnsPolicy"),
            policy,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ));
    }
    let mut volume_names: Vec<&str> = Vec::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        let field = format!("{path}.volumes[{i}].name");
        if !is_dns1123_label(name) {
            causes.push(Cause::invalid(field, &json!(name), DNS1123_LABEL_MSG));
        } else if volume_names.contains(&name) {
            causes.push(Cause::duplicate(field, &json!(name)));
        } else {
            volume_names.push(name);
        }
    }
}

fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec", ""));
        return;
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause::not_supported(
            "spec.type",
            &json!(ty),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get("ports").and_then(Value::as_array);
    if ty == "ExternalName" {
        if spec
            .get("externalName")
            .and_then(Value::as_str)
            .is_none_or(|n| !is_dns1123_subdomain(n.trim_end_matches('.')))
        {
            causes.push(Cause::required("spec.externalName", ""));
        }
    } else if ports.is_none_or(Vec::is_empty) && !headless {
        causes.push(Cause::required("spec.ports", ""));
    }
    let ports = ports.cloned().unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let name = port.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("{field}.name"), ""));
        } else if !name.is_empty() && !is_dns1123_label(name) {
            causes.push(Cause::invalid(
                format!("{field}.name"),
                &json!(name),
                DNS1123_LABEL_MSG,
            ));
        } else if !name.is_empty() && names.contains(&name) {
            causes.push(Cause::duplicate(format!("{field}.name"), &json!(name)));
        }
        names.push(name);
        check_port(port.get("port"), &format!("{field}.port"), true, causes);
        check_protocol(port.get("protocol"), &format!("{field}.protocol"), causes);
        if let Some(np) = port.get("nodePort") {
            if ty == "ClusterIP" || ty == "ExternalName" {
                if np.as_i64().is_some_and(|p| p != 0) {
                    causes.push(Cause::forbidden(
                        format!("{field}.nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                }
            } else if !np
                .as_i64()
                .is_some_and(|p| p == 0 || (1..=65535).contains(&p))
            {
                causes.push(Cause::invalid(
                    format!("{field}.nodePort"),
                    np,
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        if let Some(tp) = port.get("targetPort") {
            let ok = match tp {
                Value::Number(n) => n.as_i64().is_some_and(|p| (1..=65535).contains(&p)),
                Value::String(s) => is_dns1123_label(s) && s.len() <= 15,
                _ => false,
            };
            if !ok {
                causes.push(Cause::invalid(
                    format!("{field}.targetPort"),
                    tp,
                    "must be a port number between 1 and 65535 or an IANA_SVC_NAME",
                ));
            }
        }
    }
    if let Some(aff) = spec.get("sessionAffinity")
        && !matches!(aff.as_str(), Some("None" | "ClientIP"))
    {
        causes.push(Cause::not_supported(
            "spec.sessionAffinity",
            aff,
            &["ClientIP", "None"],
        ));
    }
    for field in ["externalTrafficPolicy", "internalTrafficPolicy"] {
        if let Some(p) = spec.get(field)
            && !matches!(p.as_str(), Some("Cluster" | "Local"))
        {
            causes.push(Cause::not_supported(
                format!("spec.{field}"),
                p,
                &["Cluster", "Local"],
            ));
        }
    }
    if let Some(ip) = spec.get("clusterIP").and_then(Value::as_str)
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<std::net::Ipv4Addr>().is_err()
    {
        causes.push(Cause::invalid(
            "spec.clusterIP",
            &json!(ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
}

fn validate_selector_matches_template(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    let selector = spec.and_then(|s| s.get("selector"));
    let match_labels = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    let has_expressions = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .is_some_and(|e| !e.is_empty());
    if selector.is_none() {
        causes.push(Cause::required("spec.selector", ""));
        return;
    }
    if match_labels.is_none_or(Map::is_empty) && !has_expressions {
        causes.push(Cause::invalid(
            "spec.selector",
            selector.unwrap_or(&Value::Null),
            "empty selector is invalid for deployment",
        ));
        return;
    }
    let template_labels = spec
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(ml) = match_labels
        && !ml.iter().all(|(k, v)| template_labels.get(k) == Some(v))
    {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &Value::Object(template_labels),
            "`selector` does not match template `labels`",
        ));
    }
}

fn validate_workload(kind: &str, obj: &Value, causes: &mut Vec<Cause>) {
    validate_selector_matches_template(obj, causes);
    let spec = obj.get("spec");
    validate_replicas_and_template(spec, causes);
    if kind == "StatefulSet"
        && let Some(policy) = spec.and_then(|s| s.get("podManagementPolicy"))
        && !matches!(policy.as_str(), Some("OrderedReady" | "Parallel"))
    {
        causes.push(Cause::not_supported(
            "spec.podManagementPolicy",
            policy,
            &["OrderedReady", "Parallel"],
        ));
    }
}

/// A ReplicationController: a non-empty selector (a plain label map) that its template's
/// labels match, replicas ≥ 0, and a template whose pods restart `Always`.
fn validate_replication_controller(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    let template_labels = spec
        .and_then(|s| s.pointer("/template/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    match spec
        .and_then(|s| s.get("selector"))
        .and_then(Value::as_object)
    {
        Some(selector) if !selector.is_empty() => {
            if !selector
                .iter()
                .all(|(k, v)| template_labels.get(k) == Some(v))
            {
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &Value::Object(template_labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        _ => causes.push(Cause::required("spec.selector", "")),
    }
    validate_replicas_and_template(spec, causes);
}

/// `spec.replicas` ≥ 0 and a pod template whose pods restart `Always` (the replicated kinds).
fn validate_replicas_and_template(spec: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(r) = spec.and_then(|s| s.get("replicas"))
        && r.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    match spec
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("spec"))
    {
        Some(pod) => {
            validate_pod_spec(pod, "spec.template.spec", causes);
            if let Some(p) = pod.get("restartPolicy")
                && p.as_str() != Some("Always")
            {
                causes.push(Cause::not_supported(
                    "spec.template.spec.restartPolicy",
                    p,
                    &["Always"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template.spec", "")),
    }
}

fn validate_job_template(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(pod) = spec
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("spec"))
    else {
        causes.push(Cause::required(format!("{path}.template.spec"), ""));
        return;
    };
    validate_pod_spec(pod, &format!("{path}.template.spec"), causes);
    match pod.get("restartPolicy").and_then(Value::as_str) {
        Some("OnFailure" | "Never") => {}
        Some(other) => causes.push(Cause::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            &json!(other),
            &["OnFailure", "Never"],
        )),
        None => causes.push(Cause::required(
            format!("{path}.template.spec.restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        )),
    }
    for field in ["parallelism", "completions", "backoffLimit"] {
        if let Some(v) = spec.and_then(|s| s.get(field))
            && v.as_i64().is_none_or(|n| n < 0)
        {
            causes.push(Cause::invalid(
                format!("{path}.{field}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn validate_ingress(obj: &Value, causes: &mut Vec<Cause>) {
    let rules = obj
        .get("spec")
        .and_then(|s| s.get("rules"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        if let Some(host) = rule.get("host").and_then(Value::as_str) {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if !is_dns1123_subdomain(bare) {
                causes.push(Cause::invalid(
                    format!("spec.rules[{i}].host"),
                    &json!(host),
                    DNS1123_SUBDOMAIN_MSG,
                ));
            }
        }
        let paths = rule
            .get("http")
            .and_then(|h| h.get("paths"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, p) in paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            match p.get("pathType").and_then(Value::as_str) {
                Some("Exact" | "Prefix" | "ImplementationSpecific") => {}
                Some(other) => causes.push(Cause::not_supported(
                    format!("{field}.pathType"),
                    &json!(other),
                    &["Exact", "Prefix", "ImplementationSpecific"],
                )),
                None => causes.push(Cause::required(
                    format!("{field}.pathType"),
                    "pathType must be specified",
                )),
            }
            if let Some(path) = p.get("path").and_then(Value::as_str)
                && !path.starts_with('/')
            {
                causes.push(Cause::invalid(
                    format!("{field}.path"),
                    &json!(path),
                    "must be an absolute path",
                ));
            }
            if p.get("backend").is_none() {
                causes.push(Cause::required(format!("{field}.backend"), ""));
            }
        }
    }
}

/// A PodDisruptionBudget's spec, as kube-apiserver checks it: at most one of `minAvailable` and
/// `maxUnavailable`, each a non-negative integer or a percentage up to 100%.
fn validate_pdb(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    let min = spec.and_then(|s| s.get("minAvailable"));
    let max = spec.and_then(|s| s.get("maxUnavailable"));
    if min.is_some() && max.is_some() {
        causes.push(Cause::invalid(
            "spec",
            spec.unwrap_or(&Value::Null),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for (field, value) in [("spec.minAvailable", min), ("spec.maxUnavailable", max)] {
        let Some(value) = value else { continue };
        match value {
            Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => causes.push(Cause::invalid(
                field,
                value,
                "must be greater than or equal to 0",
            )),
            Value::String(s) => match s
                .strip_suffix('%')
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                None => causes.push(Cause::invalid(
                    field,
                    value,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                )),
                Some(p) if p.parse::<u64>().is_ok_and(|p| p > 100) || p.len() > 18 => causes
                    .push(Cause::invalid(field, value, "must not be greater than 100%")),
                Some(_) => {}
            },
            _ => {}
        }
    }
    if let Some(policy) = spec.and_then(|s| s.get("unhealthyPodEvictionPolicy"))
        && !matches!(policy.as_str(), Some("IfHealthyBudget" | "AlwaysAllow"))
    {
        causes.push(Cause::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            policy,
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
    }
}

fn validate_crd(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
    let plural = spec
        .get("names")
        .and_then(|n| n.get("plural"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = super::object::name(obj);
    if group.is_empty() {
        causes.push(Cause::required("spec.group", ""));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural", ""));
    }
    if spec
        .get("names")
        .and_then(|n| n.get("kind"))
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !matches!(
        spec.get("scope").and_then(Value::as_str),
        Some("Namespaced" | "Cluster")
    ) {
        causes.push(Cause::not_supported(
            "spec.scope",
            spec.get("scope").unwrap_or(&Value::Null),
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required(
            "spec.versions",
            "must have at least one version",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(versions.iter().map(|v| v.get("name")).collect::<Vec<_>>()),
            "must have exactly one version marked as storage version",
        ));
    }
}

/// Fields that may not change on update, per kind. Returns one cause per changed field.
pub fn validate_update(group: &str, kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let same =
        |path: &str| super::object::get_path(old, path) == super::object::get_path(new, path);
    let immutable = |path: &str, causes: &mut Vec<Cause>| {
        if !same(path) {
            causes.push(Cause::immutable(
                path,
                super::object::get_path(new, path).unwrap_or(&Value::Null),
            ));
        }
    };
    match (group, kind) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            immutable("spec.selector", &mut causes);
        }
        ("batch", "Job") => {
            immutable("spec.selector", &mut causes);
            immutable("spec.completions", &mut causes);
        }
        ("", "Service") => {
            let old_ip = super::object::get_path(old, "spec.clusterIP");
            let new_ip = super::object::get_path(new, "spec.clusterIP");
            let new_ty = super::object::get_path(new, "spec.type").and_then(Value::as_str);
            if old_ip.is_some() && old_ip != new_ip && new_ty != Some("ExternalName") {
                causes.push(Cause::immutable(
                    "spec.clusterIP",
                    new_ip.unwrap_or(&Value::Null),
                ));
            }
        }
        ("", "Pod") => {
            // Only images, activeDeadlineSeconds, tolerations and scheduling gates may change.
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or_default();
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs {
                            if let Some(m) = c.as_object_mut() {
                                m.remove("image");
                            }
                        }
                    }
                }
                if let Some(m) = spec.as_object_mut() {
                    for f in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "schedulingGates",
                        "nodeName",
                    ] {
                        m.remove(f);
                    }
                }
                spec
            };
            if strip(old) != strip(new) {
                causes.push(Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
            let old_node = super::object::get_path(old, "spec.nodeName").and_then(Value::as_str);
            if old_node.is_some_and(|n| !n.is_empty()) && !same("spec.nodeName") {
                immutable("spec.nodeName", &mut causes);
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if old.get("immutable").and_then(Value::as_bool) == Some(true) {
                for f in ["data", "binaryData", "immutable"] {
                    if old.get(f) != new.get(f) {
                        causes.push(Cause::forbidden(
                            f,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
            }
            if kind == "Secret" {
                immutable("type", &mut causes);
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            immutable("spec.group", &mut causes);
            immutable("spec.names.plural", &mut causes);
            immutable("spec.scope", &mut causes);
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_decode_reports_the_path_and_prunes_unknown_fields() {
        let input = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replicas": "three", "selector": {}}});
        let err = normalize_builtin("apps", "Deployment", &input)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.path, "spec.replicas");

        let input = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "bogus": 1},
            "data": {"a": "b"}, "extra": {"deep": true}});
        let decoded = normalize_builtin("", "ConfigMap", &input).unwrap().unwrap();
        assert_eq!(
            unknown_fields(&input, &decoded),
            vec!["extra", "metadata.bogus"]
        );
        assert_eq!(decoded["data"]["a"], "b");
        assert!(decoded.get("extra").is_none());
        assert!(normalize_builtin("example.com", "Widget", &input).is_none());
    }

    #[test]
    fn integers_in_float_fields_stay_integers() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object", "properties": {"port": {"type": "integer", "minimum": 0, "maximum": 65535.5}}}}}]}});
        let decoded = normalize_builtin("apiextensions.k8s.io", "CustomResourceDefinition", &crd)
            .unwrap()
            .unwrap();
        let port =
            &decoded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["port"];
        assert_eq!(port["minimum"].to_string(), "0");
        assert_eq!(port["maximum"].to_string(), "65535.5");
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("Bad_Name"));
        assert!(is_dns1123_label("ns-1"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
        assert!(validate_name(NameRule::Subdomain, "UPPER", "metadata.name").is_some());
        assert!(validate_name(NameRule::PathSegment, "a:b", "metadata.name").is_none());
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn workload_rules() {
        let d = json!({"metadata": {"name": "web", "labels": {"bad key!": "x"}},
            "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "other"}},
                    "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "i", "ports": [{"containerPort": 70000}]}]}}}});
        let causes = validate("apps", "Deployment", &d);
        assert_eq!(
            fields(&causes),
            vec![
                "metadata.labels",
                "spec.template.metadata.labels",
                "spec.replicas",
                "spec.template.spec.containers[0].image",
                "spec.template.spec.containers[1].name",
                "spec.template.spec.containers[1].ports[0].containerPort",
            ]
        );
    }

    #[test]
    fn disruption_budget_rules() {
        let pdb = |spec: Value| {
            validate(
                "policy",
                "PodDisruptionBudget",
                &json!({"metadata": {"name": "db"}, "spec": spec}),
            )
        };
        assert!(pdb(json!({"minAvailable": 2})).is_empty());
        assert!(pdb(json!({"maxUnavailable": "100%"})).is_empty());
        assert_eq!(
            fields(&pdb(json!({"minAvailable": 1, "maxUnavailable": 1}))),
            vec!["spec"]
        );
        assert_eq!(
            fields(&pdb(json!({"minAvailable": -1}))),
            vec!["spec.minAvailable"]
        );
        let causes = pdb(json!({"maxUnavailable": "150%"}));
        assert_eq!(fields(&causes), vec!["spec.maxUnavailable"]);
        assert!(causes[0].message.contains("must not be greater than 100%"));
        assert_eq!(
            fields(&pdb(json!({"minAvailable": "half"}))),
            vec!["spec.minAvailable"]
        );
        assert_eq!(
            fields(&pdb(json!({"unhealthyPodEvictionPolicy": "Never"}))),
            vec!["spec.unhealthyPodEvictionPolicy"]
        );
    }

    #[test]
    fn service_rules() {
        let s = json!({"metadata": {"name": "1svc"}, "spec": {"type": "Bogus", "ports": [{"port": 0, "protocol": "ICMP"}, {"port": 80}]}});
        let causes = validate("", "Service", &s);
        assert_eq!(
            fields(&causes),
            vec![
                "metadata.name",
                "spec.type",
                "spec.ports[0].name",
                "spec.ports[0].port",
                "spec.ports[0].protocol",
                "spec.ports[1].name"
            ]
        );
    }

    #[test]
    fn immutable_fields() {
        let old = json!({"spec": {"selector": {"matchLabels": {"a": "1"}}}});
        let new = json!({"spec": {"selector": {"matchLabels": {"a": "2"}}}});
        assert_eq!(
            fields(&validate_update("apps", "Deployment", &old, &new)),
            vec!["spec.selector"]
        );
        assert!(validate_update("apps", "Deployment", &old, &old).is_empty());
    }
}
