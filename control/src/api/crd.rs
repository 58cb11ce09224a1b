//! CustomResourceDefinitions: turning a CRD into served resource types, its status, and the
//! structural-schema work on custom objects (pruning of unknown fields, defaulting, validation).
//!
//! Validation covers the OpenAPI v3 subset Kubernetes calls a structural schema: `type`,
//! `properties`, `required`, `items`, `additionalProperties`, `enum`, `minimum`/`maximum` (and
//! exclusive), `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`, `maxProperties`,
//! `nullable`, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields` and
//! `default`. CEL rules (`x-kubernetes-validations`) are accepted in CRDs but not evaluated.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{
    State, object,
    registry::{CustomInfo, PrinterColumn, Registry, ResourceType, ScaleSpec},
    status::Cause,
};

/// The resource types a CRD defines (one per served version).
pub fn types_of(crd: &Value) -> Vec<ResourceType> {
    let spec = crd.get("spec").cloned().unwrap_or_default();
    let s = |p: &str| {
        object::get_path(&spec, p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let strings = |p: &str| {
        object::get_path(&spec, p)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let group = s("group");
    let plural = s("names.plural");
    let kind = s("names.kind");
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let singular = Some(s("names.singular"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| kind.to_lowercase());
    let crd_name = object::name(crd).to_owned();
    spec.get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
        .map(|v| {
            let version = v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let sub = v.get("subresources");
            let scale = sub.and_then(|s| s.get("scale")).map(|sc| ScaleSpec {
                spec_replicas: sc
                    .get("specReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or(".spec.replicas")
                    .trim_start_matches('.')
                    .to_owned(),
                status_replicas: sc
                    .get("statusReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or(".status.replicas")
                    .trim_start_matches('.')
                    .to_owned(),
                label_selector: sc
                    .get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .map(|p| p.trim_start_matches('.').to_owned()),
            });
            let columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: c
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    type_: c
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("string")
                        .to_owned(),
                    json_path: c
                        .get("jsonPath")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                })
                .collect();
            ResourceType {
                group: group.clone(),
                version,
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced: s("scope") != "Cluster",
                short_names: strings("names.shortNames"),
                categories: strings("names.categories"),
                status: sub.and_then(|s| s.get("status")).is_some(),
                scale,
                storage_prefix: format!("/registry/{group}/{plural}/"),
                custom: Some(Arc::new(CustomInfo {
                    schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                    columns,
                    crd_name: crd_name.clone(),
                })),
            }
        })
        .collect()
}

/// Rejects CRDs that would shadow a built-in resource.
pub fn check_names(registry: &Registry, crd: &Value) -> Result<(), Vec<Cause>> {
    let group = object::get_path(crd, "spec.group")
        .and_then(Value::as_str)
        .unwrap_or("");
    let plural = object::get_path(crd, "spec.names.plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    if registry.is_builtin(group, plural) {
        return Err(vec![Cause::invalid(
            "spec.names.plural",
            &json!(plural),
            "is already served by a built-in resource",
        )]);
    }
    Ok(())
}

/// Fills in the status a CRD gets once served: accepted names, `NamesAccepted` and `Established`.
pub fn set_status(crd: &mut Value) {
    let names = object::get_path(crd, "spec.names")
        .cloned()
        .unwrap_or_default();
    let storage: Vec<Value> = object::get_path(crd, "spec.versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let now = object::now();
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": storage,
    });
}

/// Serves the types of `crd`.
pub fn register(registry: &Registry, crd: &Value) {
    registry.set_custom(object::name(crd), types_of(crd));
}

/// Stops serving a deleted CRD and removes its objects.
pub async fn unregister(state: &Arc<State>, crd: &Value) {
    let types = types_of(crd);
    state.registry.set_custom(object::name(crd), Vec::new());
    if let Some(rt) = types.first() {
        let prefix = rt.storage_prefix.clone();
        match state
            .store
            .list(&prefix, crate::store::ListOptions::default())
            .await
        {
            Ok(page) => {
                for kv in page.items {
                    if let Err(e) = super::rest::delete_now(state, rt, &kv.key).await {
                        tracing::warn!(key = kv.key, error = %e.message, "removing custom object");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing custom objects of a deleted CRD"),
        }
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Prunes fields the schema does not declare and applies `default`s. Returns the pruned paths.
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    let Value::Object(map) = obj else {
        return pruned;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    for (key, value) in map.iter_mut() {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(sub) = props.and_then(|p| p.get(key)) {
            prune_value(sub, value, key, &mut pruned);
        }
    }
    if !preserves_unknown(schema) {
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .filter(|k| props.is_none_or(|p| !p.contains_key(k.as_str())))
            .cloned()
            .collect();
        for k in unknown {
            map.remove(&k);
            pruned.push(k);
        }
    }
    apply_defaults(props, map);
    pruned
}

/// Applies the schema's top-level `default`s to fields `obj` lacks (a custom resource's
/// `status` default, once create has dropped the status sent).
pub fn default_top_level(schema: &Value, obj: &mut Value) {
    if let Value::Object(map) = obj {
        apply_defaults(schema.get("properties").and_then(Value::as_object), map);
    }
}

fn apply_defaults(props: Option<&Map<String, Value>>, map: &mut Map<String, Value>) {
    for (key, sub) in props.into_iter().flatten() {
        if !map.contains_key(key)
            && let Some(default) = sub.get("default")
        {
            map.insert(key.clone(), default.clone());
        }
    }
}

fn prune_value(schema: &Value, value: &mut Value, path: &str, pruned: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map.iter_mut() {
                let sub = props.and_then(|p| p.get(key)).or(additional);
                if let Some(sub) = sub {
                    prune_value(sub, child, &join(path, key), pruned);
                }
            }
            let keeps_all = preserves_unknown(schema)
                || schema
                    .get("additionalProperties")
                    .is_some_and(|a| a.is_object() || a.as_bool() == Some(true))
                || schema
                    .get("x-kubernetes-embedded-resource")
                    .and_then(Value::as_bool)
                    == Some(true);
            if !keeps_all {
                let unknown: Vec<String> = map
                    .keys()
                    .filter(|k| props.is_none_or(|p| !p.contains_key(k.as_str())))
                    .cloned()
                    .collect();
                for k in unknown {
                    map.remove(&k);
                    pruned.push(join(path, &k));
                }
            }
            apply_defaults(props, map);
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item_schema, item, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// Validates a custom object against its schema (after pruning).
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Value::Object(map) = obj else {
        return causes;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    for req in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(req) {
            causes.push(Cause::required(req, ""));
        }
    }
    for (key, value) in map {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(sub) = props.and_then(|p| p.get(key)) {
            validate_value(sub, value, key, &mut causes);
        }
    }
    causes
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn validate_value(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            causes.push(Cause::invalid(path, value, "must not be null"));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected
            || (expected == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !ok {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""),
                field: path.to_owned(),
            });
            return;
        }
    } else if int_or_string && !matches!(type_name(value), "integer" | "string") {
        causes.push(Cause::invalid(
            path,
            value,
            "must be an integer or a string",
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let supported: Vec<String> = options
            .iter()
            .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned))
            .collect();
        let refs: Vec<&str> = supported.iter().map(String::as_str).collect();
        causes.push(Cause::not_supported(path, value, &refs));
    }
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let exclusive_min =
                schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
            let exclusive_max =
                schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && (x < min || (exclusive_min && x == min))
            {
                let op = if exclusive_min {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                causes.push(Cause::invalid(
                    path,
                    value,
                    &format!("{path} in body should be {op} {min}"),
                ));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && (x > max || (exclusive_max && x == max))
            {
                let op = if exclusive_max {
                    "less than"
                } else {
                    "less than or equal to"
                };
                causes.push(Cause::invalid(
                    path,
                    value,
                    &format!("{path} in body should be {op} {max}"),
                ));
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                causes.push(Cause::invalid(
                    path,
                    value,
                    &format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    message: format!("Too long: may not be more than {max} bytes"),
                    field: path.to_owned(),
                });
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && let Ok(re) = regex::Regex::new(pattern)
                && !re.is_match(s)
            {
                causes.push(Cause::invalid(
                    path,
                    value,
                    &format!("{path} in body should match '{pattern}'"),
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                causes.push(Cause::invalid(
                    path,
                    value,
                    &format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {n}: must have at most {max} items"),
                    field: path.to_owned(),
                });
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_value(item_schema, item, &format!("{path}[{i}]"), causes);
                }
            }
        }
        Value::Object(map) => {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(req) {
                    causes.push(Cause::required(join(path, req), ""));
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && map.len() as u64 > max
            {
                causes.push(Cause::invalid(
                    path,
                    value,
                    &format!("{path} in body should have at most {max} properties"),
                ));
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                if let Some(sub) = props.and_then(|p| p.get(k)).or(additional) {
                    validate_value(sub, v, &join(path, k), causes);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "port": {"x-kubernetes-int-or-string": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }})
    }

    #[test]
    fn prunes_unknown_fields_and_defaults() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
            "spec": {"size": 2, "bogus": 1, "free": {"any": {"thing": 1}}, "labels": {"a": "b"}}, "extra": true});
        let pruned = prune(&schema(), &mut obj);
        assert_eq!(pruned, vec!["spec.bogus".to_owned(), "extra".to_owned()]);
        assert_eq!(obj["spec"]["mode"], "fast");
        assert_eq!(obj["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(obj["spec"]["labels"]["a"], "b");
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn validates_types_ranges_enums_and_patterns() {
        let obj = json!({"spec": {"size": 11, "mode": "medium", "name": "ABCDEFG", "tags": ["a", "b", 3], "port": true}});
        let fields: Vec<String> = validate(&schema(), &obj)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.mode",
                "spec.name",
                "spec.name",
                "spec.port",
                "spec.size",
                "spec.tags",
                "spec.tags[2]"
            ]
        );
        assert_eq!(
            validate(&schema(), &json!({"spec": {}}))[0].field,
            "spec.size"
        );
        assert!(validate(&schema(), &json!({"spec": {"size": 3, "port": "http"}})).is_empty());
    }

    #[test]
    fn types_from_a_crd() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {
        "group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
             "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}]},
            {"name": "v1beta1", "served": false, "storage": false}
        ]}});
        let types = types_of(&crd);
        assert_eq!(types.len(), 1);
        let t = &types[0];
        assert_eq!(
            (
                t.group.as_str(),
                t.version.as_str(),
                t.plural.as_str(),
                t.singular.as_str()
            ),
            ("example.com", "v1", "widgets", "widget")
        );
        assert!(t.status && t.namespaced);
        assert_eq!(t.scale.as_ref().unwrap().spec_replicas, "spec.replicas");
        assert_eq!(
            t.custom.as_ref().unwrap().columns[0].json_path,
            ".spec.replicas"
        );
        assert_eq!(t.key(Some("ns"), "a"), "/registry/example.com/widgets/ns/a");
    }
}
