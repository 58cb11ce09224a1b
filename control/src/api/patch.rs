//! PATCH: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge patch and
//! server-side apply.
//!
//! Strategic merge patch follows Kubernetes' rules for built-in types: lists with a merge key
//! (`containers` by `name`, container `ports` by `containerPort` and `protocol`, Service `ports` by
//! `port` and `protocol` (see [`merge_keys`]), `env`,
//! `volumes`, `volumeMounts`, `conditions`...) merge element-wise; other lists are replaced; the
//! directives `$patch` (`replace`/`delete`/`merge`), `$setElementOrder/<list>`,
//! `$deleteFromPrimitiveList/<list>` and `$retainKeys` are honoured; `metadata.finalizers` merges as
//! a set.
//!
//! Server-side apply keeps `metadata.managedFields` with one `Apply` entry per field manager
//! (FieldsV1 sets). Re-applying removes the fields a manager applied before and no longer
//! applies (unless another manager also owns them); applying a different value to a field owned
//! by another applier is a 409 conflict listing the fields and their owners, unless `force=true`
//! moves ownership. Creates, PUTs and non-apply PATCHes are recorded as `operation: Update`
//! entries of their manager (`?fieldManager=` or the User-Agent's program name), so an apply that
//! changes a field another client wrote (`kubectl label`, `kubectl scale`) conflicts with it.

use std::{collections::BTreeSet, sync::Arc};

use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::{
    Body, State, json_response, object,
    registry::ResourceType,
    request::Request,
    rest,
    status::{ApiError, ApiResult},
};

/// The four patch flavours, by Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type for a Content-Type.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Applies a JSON, merge or strategic patch to `original`.
pub fn apply_patch(
    kind: PatchType,
    original: &Value,
    body: &[u8],
    rt: &ResourceType,
) -> ApiResult<Value> {
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    object::name(original),
                    vec![super::status::Cause {
                        reason: "FieldValueInvalid",
                        message: format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                        field: String::new(),
                    }],
                )
            })?;
            Ok(doc)
        }
        PatchType::Merge => {
            let patch = parse_json(body)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut doc = original.clone();
            merge_patch(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            let patch = parse_json(body)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(original, &patch, &[]).map_err(ApiError::bad_request)
        }
        PatchType::Apply => Err(ApiError::internal("apply is not a plain patch")),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target_map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                target_map.remove(k);
            } else {
                merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The merge key of the list at `path` (field names from the root), if it merges element-wise.
fn merge_key(path: &[&str]) -> Option<&'static str> {
    let field = *path.last()?;
    let parent = path.iter().rev().nth(1).copied().unwrap_or("");
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            Some("containerPort")
        }
        "ports" if parent == "spec" => Some("port"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "addresses" if parent == "status" => Some("type"),
        _ => None,
    }
}

/// The keys that identify an element of the list at `path`: the merge key, and for ports the
/// protocol too (the list-map keys `[port, protocol]` / `[containerPort, protocol]` server-side
/// apply uses upstream, so 53/UDP and 53/TCP are two elements; upstream's strategic merge patch
/// keys ports by number alone, which makes them collide).
fn merge_keys(path: &[&str]) -> Option<&'static [&'static str]> {
    match merge_key(path)? {
        "port" => Some(&["port", "protocol"]),
        "containerPort" => Some(&["containerPort", "protocol"]),
        "name" => Some(&["name"]),
        "mountPath" => Some(&["mountPath"]),
        "devicePath" => Some(&["devicePath"]),
        "type" => Some(&["type"]),
        "uid" => Some(&["uid"]),
        "ip" => Some(&["ip"]),
        "topologyKey" => Some(&["topologyKey"]),
        _ => None,
    }
}

/// An element's identity under `keys` (`None` without the first key); a missing `protocol`
/// counts as `TCP`, its default.
fn item_key(item: &Value, keys: &[&str]) -> Option<Map<String, Value>> {
    let mut id = Map::new();
    for (i, k) in keys.iter().enumerate() {
        match (item.get(*k), *k) {
            (Some(v), _) => {
                id.insert((*k).to_owned(), v.clone());
            }
            (None, "protocol") => {
                id.insert("protocol".to_owned(), Value::String("TCP".into()));
            }
            (None, _) if i == 0 => return None,
            (None, _) => {}
        }
    }
    Some(id)
}

/// Whether a list element has the identity `key` (a `k:` FieldsV1 entry).
fn has_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| match item.get(k) {
        Some(have) => have == v,
        None => k == "protocol" && v == "TCP",
    })
}

/// Primitive lists that merge as sets.
fn is_set_list(path: &[&str]) -> bool {
    path == ["metadata", "finalizers"]
}

/// Strategic merge of `patch` into `original`; `path` is the field path of `original`.
pub fn strategic_merge(original: &Value, patch: &Value, path: &[&str]) -> Result<Value, String> {
    let Value::Object(patch_map) = patch else {
        return Ok(patch.clone());
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch_map.clone();
            replaced.remove("$patch");
            return Ok(Value::Object(replaced));
        }
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
    }
    let mut result: Map<String, Value> = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    if let Some(keys) = patch_map.get("$retainKeys").and_then(Value::as_array) {
        let keep: BTreeSet<&str> = keys.iter().filter_map(Value::as_str).collect();
        result.retain(|k, _| keep.contains(k.as_str()));
    }
    for (key, value) in patch_map {
        if key.starts_with('$')
            && !key.starts_with("$deleteFromPrimitiveList/")
            && !key.starts_with("$setElementOrder/")
        {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (result.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with("$setElementOrder/") {
            continue;
        }
        let mut child_path = path.to_vec();
        child_path.push(key);
        if value.is_null() {
            result.remove(key);
            continue;
        }
        let merged = match (result.get(key), value) {
            (Some(orig @ Value::Object(_)), Value::Object(_)) => {
                strategic_merge(orig, value, &child_path)?
            }
            (orig, Value::Array(items)) => merge_list(orig, items, &child_path)?,
            (_, Value::Object(_)) => strategic_merge(&Value::Null, value, &child_path)?,
            _ => value.clone(),
        };
        if merged.is_null() {
            result.remove(key);
        } else {
            result.insert(key.clone(), merged);
        }
    }
    for (key, order) in patch_map {
        if let (Some(field), Some(order)) =
            (key.strip_prefix("$setElementOrder/"), order.as_array())
        {
            let mut child_path = path.to_vec();
            child_path.push(field);
            if let Some(Value::Array(list)) = result.get_mut(field) {
                reorder(list, order, merge_key(&child_path));
            }
        }
    }
    Ok(Value::Object(result))
}

fn merge_list(original: Option<&Value>, items: &[Value], path: &[&str]) -> Result<Value, String> {
    let orig: Vec<Value> = original
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        ));
    }
    if is_set_list(path) {
        let mut out = orig;
        for v in items {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    let Some(keys) = merge_keys(path) else {
        return Ok(Value::Array(items.to_vec()));
    };
    let mut out = orig;
    for item in items {
        let Some(id) = item_key(item, keys) else {
            return Err(format!(
                "map: {item} does not contain declared merge key: {}",
                keys[0]
            ));
        };
        // A patch element without `protocol` is found by its first key alone, as upstream's
        // strategic merge patch does (kubectl sends `{"port": 53, ...}` for a 53/UDP port).
        let pos = if keys.contains(&"protocol") && item.get("protocol").is_none() {
            out.iter().position(|o| o.get(keys[0]) == item.get(keys[0]))
        } else {
            out.iter().position(|o| has_key(o, &id))
        };
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                out.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => out[p] = strategic_merge(&out[p], item, path)?,
            None => out.push(strategic_merge(&Value::Null, item, path)?),
        }
    }
    Ok(Value::Array(out))
}

fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let index = |v: &Value| {
        order.iter().position(|o| match key {
            Some(k) => o.get(k).is_some() && o.get(k) == v.get(k),
            None => o == v,
        })
    };
    list.sort_by_key(|v| index(v).unwrap_or(usize::MAX));
}

// ---------------------------------------------------------------------------------------------
// Server-side apply

/// The set of leaf field paths an applied configuration sets, in FieldsV1 notation
/// (`f:spec`, `k:{"name":"c"}`, `v:"x"`).
pub fn field_set(value: &Value) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    collect_fields(value, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

fn collect_fields(
    value: &Value,
    names: &mut Vec<String>,
    path: &mut Vec<String>,
    out: &mut BTreeSet<Vec<String>>,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                if path.is_empty() && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if path.len() == 1
                    && path[0] == "f:metadata"
                    && matches!(
                        k.as_str(),
                        "managedFields"
                            | "resourceVersion"
                            | "uid"
                            | "creationTimestamp"
                            | "generation"
                    )
                {
                    continue;
                }
                names.push(k.clone());
                path.push(format!("f:{k}"));
                collect_fields(v, names, path, out);
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) => {
            let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
            if let Some(keys) = merge_keys(&name_refs) {
                for item in items {
                    let Some(id) = item_key(item, keys) else {
                        continue;
                    };
                    path.push(format!("k:{}", Value::Object(id)));
                    out.insert(path.clone());
                    collect_fields(item, names, path, out);
                    path.pop();
                }
            } else if is_set_list(&name_refs) {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            } else {
                out.insert(path.clone());
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// FieldsV1 JSON for a field set: a leaf is `{}`; a field that is owned itself and also has
/// owned children (a list item with its fields) carries `".": {}`.
pub fn fields_v1(set: &BTreeSet<Vec<String>>) -> Value {
    let mut root = json!({});
    for path in set {
        let mut cur = &mut root;
        for part in path {
            if !cur.is_object() {
                *cur = json!({});
            }
            let Value::Object(map) = cur else { break };
            cur = map.entry(part.clone()).or_insert_with(|| json!({}));
        }
    }
    for path in set {
        let pointer: String = path
            .iter()
            .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
            .collect();
        if let Some(Value::Object(map)) = root.pointer_mut(&pointer)
            && map.keys().any(|k| k != ".")
        {
            map.insert(".".to_owned(), json!({}));
        }
    }
    root
}

/// Parses FieldsV1 JSON back into a set of leaf paths.
pub fn parse_fields_v1(v: &Value) -> BTreeSet<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
        let Value::Object(map) = v else { return };
        if map.contains_key(".") || map.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in map {
            if k == "." {
                continue;
            }
            path.push(k.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out.remove(&Vec::new());
    out
}

/// The value at a field path in an object, if present.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path {
        if let Some(f) = part.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = part.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur.as_array()?.iter().find(|item| has_key(item, &key))?;
        } else if let Some(v) = part.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            cur = cur.as_array()?.iter().find(|item| **item == want)?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Removes the field at `path` from `obj`.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for part in parents {
        let next = if let Some(f) = part.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = part.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|item| has_key(item, &key)))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(key), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|item| !has_key(item, &key));
        }
    } else if let Some(v) = last.strip_prefix("v:")
        && let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut())
    {
        a.retain(|item| *item != want);
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug)]
struct Managed {
    manager: String,
    operation: String,
    subresource: String,
    fields: BTreeSet<Vec<String>>,
    raw: Value,
}

fn managed_entries(obj: &Value) -> Vec<Managed> {
    object::get_path(obj, "metadata.managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| Managed {
            manager: m
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            operation: m
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            subresource: m
                .get("subresource")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            fields: m.get("fieldsV1").map(parse_fields_v1).unwrap_or_default(),
            raw: m.clone(),
        })
        .collect()
}

/// Computes the result of an apply of `config` by `manager` over `live` (None: create).
pub fn apply_config(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    subresource: Option<&str>,
) -> ApiResult<Value> {
    let new_set = field_set(config);
    let Some(live) = live else {
        let mut obj = config.clone();
        object::meta_mut(&mut obj).insert(
            "managedFields".into(),
            json!([managed_entry(manager, api_version, subresource, &new_set)]),
        );
        return Ok(obj);
    };
    let entries = managed_entries(live);
    let sub = subresource.unwrap_or("");
    let mine_before: BTreeSet<Vec<String>> = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub)
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    // Conflicts: a field another manager owns, set here to a different value.
    let mut conflicts = Vec::new();
    for e in entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
    {
        for path in &new_set {
            // A list item's own entry (`k:{"name":"c"}`, `v:"x"`) stands for its existence, not
            // its value: only its fields can conflict.
            let item = path
                .last()
                .is_some_and(|p| p.starts_with("k:") || p.starts_with("v:"));
            if !item
                && e.fields.iter().any(|f| f == path)
                && value_at(live, path) != value_at(config, path)
            {
                conflicts.push((e.manager.clone(), path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let list = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": .{}", dotted(p)))
            .collect::<Vec<_>>();
        let mut err = ApiError::conflict(
            "",
            "",
            object::name(live),
            &format!(
                "Apply failed with {} conflict{}: {}",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                list.join(", ")
            ),
        );
        err.message = format!(
            "Apply failed with {} conflict{}: {}",
            list.len(),
            if list.len() == 1 { "" } else { "s" },
            list.join("\n")
        );
        err.details = Some(json!({
            "causes": conflicts.iter().map(|(m, p)| json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{m}\""),
                "field": format!(".{}", dotted(p)),
            })).collect::<Vec<_>>()
        }));
        return Err(err);
    }
    // Fields this manager applied before and no longer applies go, unless someone else owns them.
    let mut result = live.clone();
    for path in mine_before.difference(&new_set) {
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
            .any(|e| e.fields.iter().any(|f| f.starts_with(path)));
        if !owned_elsewhere {
            remove_at(&mut result, path);
        }
    }
    let mut patch = config.clone();
    if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let mut merged = strategic_merge(&result, &patch, &[]).map_err(ApiError::bad_request)?;
    // Ownership: this manager owns `new_set`; forced fields leave their previous owners.
    let mut managed: Vec<Value> = Vec::new();
    for e in &entries {
        if e.manager == manager && e.operation == "Apply" && e.subresource == sub {
            continue;
        }
        let remaining: BTreeSet<Vec<String>> = if force {
            e.fields
                .iter()
                .filter(|f| !new_set.contains(*f))
                .cloned()
                .collect()
        } else {
            e.fields.clone()
        };
        if remaining.is_empty() {
            continue;
        }
        let mut raw = e.raw.clone();
        raw["fieldsV1"] = fields_v1(&remaining);
        managed.push(raw);
    }
    managed.push(managed_entry(manager, api_version, subresource, &new_set));
    object::meta_mut(&mut merged).insert("managedFields".into(), json!(managed));
    Ok(merged)
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|p| {
            if let Some(f) = p.strip_prefix("f:") {
                f.to_owned()
            } else {
                format!("[{}]", &p[2..])
            }
        })
        .collect::<Vec<_>>()
        .join(".")
        .replace(".[", "[")
}

fn managed_entry(
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
    set: &BTreeSet<Vec<String>>,
) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": object::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(set),
    });
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    entry
}

/// Records a non-apply write (create, PUT, PATCH) by `manager` in `new`'s managedFields, as
/// Kubernetes does with `operation: Update` entries: the manager takes ownership of every field
/// the write set or changed (from whichever manager owned it, appliers included, so a later
/// apply of a different value conflicts with it), and removed fields leave every manager.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
) {
    let before = old.map(field_set).unwrap_or_default();
    let after = field_set(new);
    let changed: BTreeSet<Vec<String>> = after
        .iter()
        .filter(|p| {
            // A list item's own entry changes hands only when the item appears; edits inside
            // it move the edited fields, not the item.
            let item = p
                .last()
                .is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"));
            !before.contains(*p)
                || (!item && old.is_some_and(|o| value_at(o, p) != value_at(new, p)))
        })
        .cloned()
        .collect();
    let removed: BTreeSet<Vec<String>> = before.difference(&after).cloned().collect();
    let sub = subresource.unwrap_or("");
    let entries = old.map(managed_entries).unwrap_or_default();
    let mut managed: Vec<Value> = Vec::new();
    let mut mine: BTreeSet<Vec<String>> = BTreeSet::new();
    for e in entries {
        let keep = |f: &Vec<String>| !changed.contains(f) && !removed.contains(f);
        if e.manager == manager && e.operation == "Update" && e.subresource == sub {
            mine = e
                .fields
                .into_iter()
                .filter(|f| !removed.contains(f))
                .collect();
            continue;
        }
        let remaining: BTreeSet<Vec<String>> =
            e.fields.iter().filter(|f| keep(f)).cloned().collect();
        if remaining.is_empty() {
            continue;
        }
        let mut raw = e.raw.clone();
        raw["fieldsV1"] = fields_v1(&remaining);
        managed.push(raw);
    }
    mine.extend(changed);
    if !mine.is_empty() {
        let mut entry = managed_entry(manager, api_version, subresource, &mine);
        entry["operation"] = json!("Update");
        managed.push(entry);
    }
    let meta = object::meta_mut(new);
    if managed.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), json!(managed));
    }
}

/// The field manager of a non-apply write: `?fieldManager=`, else the client's User-Agent up to
/// its first `/` (`kubectl-edit`, `kube-controller-manager`), as Kubernetes derives it.
pub fn update_manager(req: &Request) -> String {
    if let Some(m) = req.param("fieldManager").filter(|m| !m.is_empty()) {
        return m.to_owned();
    }
    req.headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

/// PATCH with `application/apply-patch+yaml`.
pub async fn server_side_apply(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    req: &Request,
    body: &[u8],
) -> ApiResult<Response<Body>> {
    let manager = req
        .param("fieldManager")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requires fieldManager to be set",
            )
        })?
        .to_owned();
    let force = req.flag("force");
    let mut config: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if sub.is_none()
        && rt.status
        && let Some(map) = config.as_object_mut()
    {
        // The main resource ignores status when it has a status subresource: the applier
        // neither writes nor owns it, and cannot conflict with the controllers that do.
        map.remove("status");
    }
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    let api_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = config.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return Err(ApiError::bad_request(
            "apiVersion and kind must be set in an applied configuration",
        ));
    }
    let config_name = object::name(&config);
    if !config_name.is_empty() && config_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({config_name}) does not match the name on the URL ({name})"
        )));
    }
    let api_version = rt.api_version();
    let (obj, created) = rest::apply_object(state, rt, ns, name, sub, req.dry_run(), |live| {
        let mut result = apply_config(live, &config, &manager, force, &api_version, sub)?;
        if let Some(live) = live {
            // Optimistic concurrency against the object the merge was computed from.
            if let Some(rv) = object::meta_str(live, "resourceVersion") {
                object::meta_mut(&mut result).insert("resourceVersion".into(), json!(rv));
            }
        }
        Ok(result)
    })
    .await?;
    Ok(json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &obj,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        merge_patch(&mut doc, &json!({"a": null, "b": {"c": 5}, "e": [3]}));
        assert_eq!(doc, json!({"b": {"c": 5, "d": 3}, "e": [3]}));
    }

    #[test]
    fn strategic_merge_by_keys_and_directives() {
        let original = json!({"metadata": {"finalizers": ["a"]}, "spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80, "name": "http"}], "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "busybox"}
        ]}}}});
        let patch = json!({"metadata": {"finalizers": ["b"]}, "spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
        "containers": [
            {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}, {"name": "A", "$patch": "delete"}]},
            {"name": "side", "$patch": "delete"},
            {"name": "new", "image": "x"}
        ]}}}});
        let out = strategic_merge(&original, &patch, &[]).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["name"], "web");
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(
            cs[0]["ports"][0]["containerPort"], 80,
            "untouched fields stay"
        );
        assert_eq!(cs[0]["env"], json!([{"name": "B", "value": "2"}]));
        assert_eq!(cs[1]["name"], "new");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));

        let replaced = strategic_merge(
            &json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}}),
            &json!({"spec": {"ports": [{"port": 82}, {"$patch": "replace"}]}}),
            &[],
        )
        .unwrap();
        assert_eq!(replaced["spec"]["ports"], json!([{"port": 82}]));
        let deleted = strategic_merge(
            &json!({"metadata": {"finalizers": ["a", "b"]}}),
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            &[],
        )
        .unwrap();
        assert_eq!(deleted["metadata"]["finalizers"], json!(["b"]));
        assert!(
            strategic_merge(
                &json!({}),
                &json!({"spec": {"containers": [{"image": "x"}]}}),
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": "1"}},
            "data": {"k": "v"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let set = field_set(&cfg);
        assert!(set.contains(&vec!["f:data".to_string(), "f:k".to_string()]));
        assert!(set.contains(&vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into()
        ]));
        assert_eq!(parse_fields_v1(&fields_v1(&set)), set);
    }

    #[test]
    fn apply_removes_dropped_fields_and_detects_conflicts() {
        let v1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1", "b": "2"}});
        let live = apply_config(None, &v1, "alice", false, "v1", None).unwrap();
        let v2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let live = apply_config(Some(&live), &v2, "alice", false, "v1", None).unwrap();
        assert_eq!(live["data"], json!({"a": "1"}));
        let bob = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "9"}});
        let err = apply_config(Some(&live), &bob, "bob", false, "v1", None).unwrap_err();
        assert_eq!(err.code, 409);
        assert!(
            err.message.contains("conflict with \"alice\": .data.a"),
            "{}",
            err.message
        );
        let forced = apply_config(Some(&live), &bob, "bob", true, "v1", None).unwrap();
        assert_eq!(forced["data"]["a"], "9");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, vec!["bob"], "alice lost her only field");
        // Same value: shared ownership, no conflict.
        let same = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        assert!(apply_config(Some(&live), &same, "carol", false, "v1", None).is_ok());
    }

    #[test]
    fn ports_are_keyed_by_port_and_protocol() {
        let svc = |ports: Value| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"},
                   "spec": {"ports": ports}})
        };
        let both = svc(json!([
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ]));
        let live = apply_config(None, &both, "alice", false, "v1", None).unwrap();
        // Re-applying keeps two ports (keyed by port alone they were one, a duplicate name).
        let live = apply_config(Some(&live), &both, "alice", false, "v1", None).unwrap();
        assert_eq!(live["spec"]["ports"].as_array().unwrap().len(), 2, "{live}");
        assert!(field_set(&both).contains(&vec![
            "f:spec".to_string(),
            "f:ports".into(),
            "k:{\"port\":53,\"protocol\":\"UDP\"}".into(),
            "f:name".into(),
        ]));
        // Dropping the UDP port removes only it: a port without protocol is the TCP one (whose
        // protocol field alice no longer applies; the server's defaults put it back).
        let tcp = svc(json!([{"name": "dns-tcp", "port": 53}]));
        let live = apply_config(Some(&live), &tcp, "alice", false, "v1", None).unwrap();
        assert_eq!(
            live["spec"]["ports"],
            json!([{"name": "dns-tcp", "port": 53}])
        );
    }

    #[test]
    fn a_patch_without_protocol_edits_a_udp_port() {
        let live = json!({"spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}});
        let edited = strategic_merge(
            &live,
            &json!({"spec": {"ports": [{"port": 53, "targetPort": 5353}]}}),
            &[],
        )
        .unwrap();
        assert_eq!(
            edited["spec"]["ports"],
            json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}])
        );
        let deleted = strategic_merge(
            &live,
            &json!({"spec": {"ports": [{"port": 53, "$patch": "delete"}]}}),
            &[],
        )
        .unwrap();
        assert_eq!(deleted["spec"]["ports"], json!([]));
    }

    fn pod(env: bool, image: &str) -> Value {
        let mut c = json!({"name": "c", "image": image});
        if env {
            c["env"] = json!([{"name": "A", "value": "1"}]);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [c]}})
    }

    fn owners(obj: &Value) -> Vec<(String, BTreeSet<Vec<String>>)> {
        managed_entries(obj)
            .into_iter()
            .map(|e| (e.manager, e.fields))
            .collect()
    }

    #[test]
    fn a_shared_list_item_still_loses_the_fields_its_applier_drops() {
        let live = apply_config(None, &pod(true, "x"), "alice", false, "v1", None).unwrap();
        let live = apply_config(Some(&live), &pod(false, "x"), "bob", false, "v1", None).unwrap();
        let live = apply_config(Some(&live), &pod(false, "x"), "alice", false, "v1", None).unwrap();
        let container = &live["spec"]["containers"][0];
        let env = container.get("env").and_then(Value::as_array);
        assert!(env.is_none_or(Vec::is_empty), "{container}");
        assert_eq!(container["name"], "c");
    }

    #[test]
    fn an_update_inside_a_list_item_moves_only_the_edited_field() {
        let live = apply_config(None, &pod(false, "x"), "alice", false, "v1", None).unwrap();
        let mut new = live.clone();
        new["spec"]["containers"][0]["image"] = json!("y");
        record_update(Some(&live), &mut new, "kubectl-set", "v1", None);
        let item = vec![
            "f:spec".to_string(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
        ];
        let mut image = item.clone();
        image.push("f:image".into());
        let owners = owners(&new);
        let alice = &owners.iter().find(|(m, _)| m == "alice").unwrap().1;
        let setter = &owners.iter().find(|(m, _)| m == "kubectl-set").unwrap().1;
        assert!(
            alice.contains(&item) && !alice.contains(&image),
            "{alice:?}"
        );
        assert_eq!(setter, &BTreeSet::from([image]));
    }
}
