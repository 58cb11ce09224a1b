//! Generic REST handlers: get, list, create, update, patch, delete and deletecollection for every
//! resource type, over JSON, with Kubernetes' metadata semantics:
//!
//! - `uid`, `creationTimestamp` and `generation` are set by the server; `generation` moves only when
//!   something other than metadata (and status, for types with a status subresource) changes;
//! - `resourceVersion` is the store's `mod_revision`; an update or patch that names a stale one
//!   gets 409 Conflict, one that names none is retried internally against the latest object;
//! - types with a `/status` subresource ignore status in main-resource writes and only take status
//!   from `/status` writes;
//! - delete of an object with finalizers (or of a bound Pod, or a Namespace) only sets
//!   `deletionTimestamp`; the object goes away when its last finalizer is removed.
//!
//! Per-kind behaviour lives in hooks here ([`before_write`], [`after_delete`]) and in the pure
//! modules [`super::defaults`], [`super::validation`], [`super::allocator`], [`super::crd`].

use std::{collections::HashMap, sync::Arc};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{Value, json};

use super::{
    Body, State, allocator, crd, defaults, json_response, object,
    patch::{self, PatchType},
    registry::ResourceType,
    request::{Request, decode_object},
    selectors::{FieldSelector, LabelSelector},
    status::{ApiError, ApiResult, Cause, success_status},
    table, validation,
};
use crate::store::{self, ListOptions};

/// How many times a write without a resourceVersion is retried on a conflicting change.
const MAX_RETRIES: usize = 16;

/// How unknown fields are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Silently dropped.
    Ignore,
    /// Dropped with a `Warning` header (the default).
    Warn,
    /// Rejected with 400.
    Strict,
}

impl FieldValidation {
    fn from_request(req: &Request) -> ApiResult<Self> {
        match req.param("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}; supported values: Ignore, Warn, Strict"
            ))),
        }
    }
}

/// The 409 after [`MAX_RETRIES`] conflicting writes in a row.
fn too_many_retries(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::conflict(
        &rt.group,
        &rt.plural,
        name,
        "too many concurrent changes; try again",
    )
}

/// Decodes a stored value and sets `metadata.resourceVersion`.
pub fn decode_stored(kv: &store::KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    object::meta_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(obj)
}

fn encode_for_store(obj: &Value) -> ApiResult<Bytes> {
    let mut obj = obj.clone();
    object::meta_mut(&mut obj).remove("resourceVersion");
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

/// Reads one object (404 if missing).
pub async fn read(
    state: &State,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<(Value, i64)> {
    let kv = state
        .store
        .get(&rt.key(ns, name))
        .await?
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
    Ok((decode_stored(&kv)?, kv.mod_revision))
}

/// A custom resource is served in the version it was asked for (CRD versions convert with
/// strategy `None`: only `apiVersion` differs), whichever version wrote it.
fn in_requested_version(rt: &ResourceType, obj: &mut Value) {
    if rt.custom.is_some() && obj.is_object() {
        obj["apiVersion"] = json!(rt.api_version());
    }
}

fn respond(
    rt: &ResourceType,
    code: StatusCode,
    obj: &Value,
    warnings: &[String],
) -> Response<Body> {
    let mut resp = if rt.custom.is_some() {
        let mut obj = obj.clone();
        in_requested_version(rt, &mut obj);
        json_response(code, &obj)
    } else {
        json_response(code, obj)
    };
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

/// GET of one object (or its `/status` or `/scale`).
pub async fn get(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    req: &Request,
) -> ApiResult<Response<Body>> {
    let (mut obj, _) = read(state, rt, ns, name).await?;
    in_requested_version(rt, &mut obj);
    if sub == Some("scale") {
        return Ok(json_response(StatusCode::OK, &scale_of(rt, &obj)));
    }
    if req.wants_table() {
        let rv = object::meta_str(&obj, "resourceVersion")
            .unwrap_or("")
            .to_owned();
        return Ok(json_response(
            StatusCode::OK,
            &table::table(rt, &[obj], &rv, req),
        ));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

/// Parsed list parameters shared by list, watch and deletecollection.
#[derive(Default)]
pub struct ListQuery {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl ListQuery {
    /// Parses the selectors of `req`.
    pub fn from_request(req: &Request) -> ApiResult<Self> {
        let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?;
        let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?;
        Ok(Self { labels, fields })
    }

    /// Whether `obj` passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Lists matching objects: `(items, revision, continue token)`.
pub async fn list_objects(
    state: &State,
    rt: &ResourceType,
    ns: Option<&str>,
    query: &ListQuery,
    limit: usize,
    continue_token: Option<&str>,
) -> ApiResult<(Vec<Value>, i64, Option<String>)> {
    let prefix = rt.list_prefix(ns);
    // A name selector is a point read.
    if let Some(name) = query.fields.equality("metadata.name")
        && continue_token.is_none()
    {
        let revision = state.store.revision().await?;
        let ns_ok = |obj: &Value| ns.is_none() || object::namespace(obj) == ns;
        let items = match ns.filter(|_| rt.namespaced) {
            Some(ns) => match state.store.get(&rt.key(Some(ns), name)).await? {
                Some(kv) => vec![decode_stored(&kv)?],
                None => Vec::new(),
            },
            None if !rt.namespaced => match state.store.get(&rt.key(None, name)).await? {
                Some(kv) => vec![decode_stored(&kv)?],
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        if !items.is_empty() || ns.is_some() || !rt.namespaced {
            let items = items
                .into_iter()
                .filter(|o| query.matches(o) && ns_ok(o))
                .collect();
            return Ok((items, revision, None));
        }
    }
    let mut start_after = match continue_token {
        Some(token) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.trim_end_matches('='))
                .map_err(|_| {
                    ApiError::bad_request("continue key is not valid: illegal base64 data")
                })?;
            let token: ContinueToken = serde_json::from_slice(&raw)
                .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
            if !token.start.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue key is not valid: it belongs to another list",
                ));
            }
            Some(token.start)
        }
        None => None,
    };
    let mut items = Vec::new();
    let mut revision = None;
    loop {
        let want = if limit == 0 {
            0
        } else {
            (limit - items.len()).max(64)
        };
        let page = state
            .store
            .list(
                &prefix,
                ListOptions {
                    start_after: start_after.clone(),
                    limit: want,
                },
            )
            .await?;
        revision.get_or_insert(page.revision);
        let mut last_key = None;
        for kv in &page.items {
            last_key = Some(kv.key.clone());
            let obj = decode_stored(kv)?;
            if query.matches(&obj) {
                items.push(obj);
                if limit > 0 && items.len() == limit {
                    break;
                }
            }
        }
        if limit > 0 && items.len() == limit {
            // More remain if the store has more, or if the page was cut short here.
            let more = page.more || last_key.as_ref() != page.items.last().map(|kv| &kv.key);
            let token = if more {
                last_key.map(|start| {
                    let token = ContinueToken {
                        v: "meta.k8s.io/v1".into(),
                        rv: revision.unwrap_or(0),
                        start,
                    };
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(serde_json::to_vec(&token).unwrap_or_default())
                })
            } else {
                None
            };
            return Ok((items, revision.unwrap_or(0), token));
        }
        if !page.more {
            return Ok((items, revision.unwrap_or(0), None));
        }
        start_after = last_key;
    }
}

/// LIST.
pub async fn list(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    req: &Request,
) -> ApiResult<Response<Body>> {
    let query = ListQuery::from_request(req)?;
    let limit = match req.param("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
            .max(0) as usize,
    };
    let (items, revision, token) = list_objects(
        state,
        rt,
        ns,
        &query,
        limit,
        req.param("continue").filter(|c| !c.is_empty()),
    )
    .await?;
    if req.wants_table() {
        let mut t = table::table(rt, &items, &revision.to_string(), req);
        if let Some(token) = &token {
            t["metadata"]["continue"] = json!(token);
        }
        return Ok(json_response(StatusCode::OK, &t));
    }
    let mut metadata = json!({ "resourceVersion": revision.to_string() });
    if let Some(token) = token {
        metadata["continue"] = json!(token);
    }
    let omit = req.omits_managed_fields();
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut o| {
            o["apiVersion"] = json!(rt.api_version());
            o["kind"] = json!(rt.kind);
            if omit {
                object::meta_mut(&mut o).remove("managedFields");
            }
            o
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

/// Checks (and fills in) `apiVersion`/`kind` of a request body.
fn check_type_meta(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
    let expected_api = rt.api_version();
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && kind != rt.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    if !api_version.is_empty() && api_version != expected_api {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({expected_api})"
        )));
    }
    obj["apiVersion"] = json!(expected_api);
    obj["kind"] = json!(rt.kind);
    Ok(())
}

/// Decodes through the typed struct (built-ins) or the CRD schema (custom resources), pruning
/// unknown fields. Returns the warnings to send.
fn normalize(rt: &ResourceType, obj: &mut Value, mode: FieldValidation) -> ApiResult<Vec<String>> {
    let unknown = if let Some(custom) = &rt.custom {
        match &custom.schema {
            Some(schema) => crd::prune(schema, obj),
            None => Vec::new(),
        }
    } else {
        match validation::normalize_builtin(&rt.group, &rt.kind, obj) {
            Some(Ok(decoded)) => {
                let unknown = validation::unknown_fields(obj, &decoded);
                *obj = decoded;
                unknown
            }
            Some(Err(e)) => {
                let at = if e.path.is_empty() || e.path == "." {
                    String::new()
                } else {
                    format!(" (field {})", e.path)
                };
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {}{at}",
                    rt.kind, rt.version, rt.kind, e.message
                )));
            }
            None => Vec::new(),
        }
    };
    if unknown.is_empty() || mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if mode == FieldValidation::Strict {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        )));
    }
    Ok(messages)
}

fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let mut causes = validation::validate(&rt.group, &rt.kind, obj);
    if let Some(custom) = &rt.custom
        && let Some(schema) = &custom.schema
    {
        causes.extend(crd::validate(schema, obj));
    }
    if let Some(old) = old {
        causes.extend(validation::validate_update(&rt.group, &rt.kind, old, obj));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &rt.group,
            &rt.kind,
            object::name(obj),
            causes,
        ))
    }
}

async fn ensure_namespace_active(state: &State, ns: &str) -> ApiResult<()> {
    let key = format!("/registry/namespaces/{ns}");
    let kv = state
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
    let obj = decode_stored(&kv)?;
    if object::meta_str(&obj, "deletionTimestamp").is_some() {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        )));
    }
    Ok(())
}

/// Kind-specific changes before a create or update is stored.
async fn before_write(
    state: &State,
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    dry_run: bool,
) -> ApiResult<Option<allocator::Held>> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Service") if !dry_run => {
            let owner = format!(
                "{}/{}",
                object::namespace(obj).unwrap_or(""),
                object::name(obj)
            );
            let old_held = old.map(allocator::held).unwrap_or_default();
            // Keep the allocated ClusterIP when an update leaves it out (kubectl apply does).
            if let Some(ip) = &old_held.ip
                && object::get_path(obj, "spec.clusterIP")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                && object::get_path(obj, "spec.type").and_then(Value::as_str)
                    != Some("ExternalName")
            {
                object::set_path(obj, "spec.clusterIP", json!(ip));
            }
            state
                .allocator
                .assign(obj, &old_held, &owner)
                .await
                .map(Some)
        }
        ("", "Pod") if old.is_none() => {
            obj["status"] = json!({ "phase": "Pending", "qosClass": qos_class(obj) });
            super::tokens::admit_pod(state, obj).await;
            Ok(None)
        }
        ("", "Namespace") => {
            if old.is_none() || object::get_path(obj, "status.phase").is_none() {
                object::set_path(obj, "status.phase", json!("Active"));
            }
            Ok(None)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if let Err(causes) = crd::check_names(&state.registry, obj) {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    object::name(obj),
                    causes,
                ));
            }
            crd::set_status(obj);
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn qos_class(pod: &Value) -> &'static str {
    let containers = object::get_path(pod, "spec.containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let limits = c.pointer("/resources/limits");
        let requests = c.pointer("/resources/requests");
        if limits.is_some() || requests.is_some() {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(r));
            let request = requests.and_then(|q| q.get(r)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// Kind-specific work after an object is stored.
fn after_write(state: &Arc<State>, rt: &ResourceType, obj: &Value) {
    if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
        crd::register(&state.registry, obj);
    }
}

/// Kind-specific cleanup after an object is gone.
async fn after_delete(state: &Arc<State>, rt: &ResourceType, obj: &Value) {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Service") => state.allocator.release_held(&allocator::held(obj)).await,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            // Boxed: unregistering deletes objects, which runs this hook again.
            Box::pin(crd::unregister(state, obj)).await;
        }
        _ => {}
    }
}

/// POST: create.
pub async fn create(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let mode = FieldValidation::from_request(req)?;
    let obj = req.object(state.max_body_bytes).await?;
    let manager = patch::update_manager(req);
    let (created, warnings) =
        create_object(state, rt, ns, obj, mode, req.dry_run(), Some(&manager)).await?;
    Ok(respond(rt, StatusCode::CREATED, &created, &warnings))
}

/// Creates an object (the body of POST, also used to bootstrap the cluster).
pub async fn create_object(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    mut obj: Value,
    mode: FieldValidation,
    dry_run: bool,
    manager: Option<&str>,
) -> ApiResult<(Value, Vec<String>)> {
    check_type_meta(rt, &mut obj)?;
    if rt.namespaced {
        let ns = ns.ok_or_else(|| {
            ApiError::bad_request("a namespace is required to create a namespaced object")
        })?;
        if let Some(body_ns) = object::namespace(&obj)
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        object::meta_mut(&mut obj).insert("namespace".into(), json!(ns));
    } else {
        object::meta_mut(&mut obj).remove("namespace");
    }
    let warnings = normalize(rt, &mut obj, mode)?;
    let generate = object::meta_str(&obj, "generateName")
        .unwrap_or("")
        .to_owned();
    let named = !object::name(&obj).is_empty();
    if !named && generate.is_empty() {
        return Err(ApiError::invalid(
            &rt.group,
            &rt.kind,
            "",
            vec![Cause::required(
                "metadata.name",
                "name or generateName is required",
            )],
        ));
    }
    if rt.namespaced
        && let Some(ns) = ns
    {
        ensure_namespace_active(state, ns).await?;
    }
    for _ in 0..8 {
        let mut candidate = obj.clone();
        if !named {
            object::meta_mut(&mut candidate).insert(
                "name".into(),
                json!(format!("{generate}{}", object::name_suffix())),
            );
        }
        prepare_create(rt, &mut candidate);
        if let Some(schema) = rt.custom.as_ref().and_then(|c| c.schema.as_ref()) {
            crd::default_top_level(schema, &mut candidate);
        }
        defaults::apply(&rt.group, &rt.kind, &mut candidate);
        validate(rt, &candidate, None)?;
        if let Some(manager) = manager {
            patch::record_update(None, &mut candidate, manager, &rt.api_version(), None);
        }
        let held = before_write(state, rt, &mut candidate, None, dry_run).await?;
        if dry_run {
            return Ok((candidate, warnings));
        }
        let key = rt.key(ns, object::name(&candidate));
        match state
            .store
            .create(&key, encode_for_store(&candidate)?)
            .await
        {
            Ok(kv) => {
                object::meta_mut(&mut candidate)
                    .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                after_write(state, rt, &candidate);
                return Ok((candidate, warnings));
            }
            Err(e) => {
                if let Some(held) = held {
                    state.allocator.release_held(&held).await;
                }
                match e {
                    // A generated name collided: try another suffix.
                    store::Error::AlreadyExists(_) if !named => continue,
                    store::Error::AlreadyExists(_) => {
                        return Err(ApiError::already_exists(
                            &rt.group,
                            &rt.plural,
                            object::name(&candidate),
                        ));
                    }
                    other => return Err(other.into()),
                }
            }
        }
    }
    Err(ApiError::already_exists(&rt.group, &rt.plural, &generate))
}

/// Server-set metadata of a new object.
fn prepare_create(rt: &ResourceType, obj: &mut Value) {
    let meta = object::meta_mut(obj);
    meta.insert("uid".into(), json!(object::new_uid()));
    meta.insert("creationTimestamp".into(), json!(object::now()));
    meta.insert("generation".into(), json!(1));
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(field);
    }
    if rt.status && rt.kind != "Namespace" && rt.custom.is_some() {
        // Custom resources with a status subresource start without status, as in Kubernetes.
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    if rt.status
        && matches!(
            rt.kind.as_str(),
            "Deployment"
                | "ReplicaSet"
                | "ReplicationController"
                | "StatefulSet"
                | "DaemonSet"
                | "Job"
                | "CronJob"
                | "HorizontalPodAutoscaler"
                | "Ingress"
                | "PodDisruptionBudget"
        )
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
}

/// Everything but metadata (and status for types with a status subresource): what `generation`
/// tracks.
fn generation_view(rt: &ResourceType, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if rt.status {
            m.remove("status");
        }
    }
    v
}

/// Builds the object to store from the stored `old` and the client's `new`, for a write to the
/// main resource (`sub` = None) or to `/status`.
fn merge_for_update(rt: &ResourceType, old: &Value, mut new: Value, sub: Option<&str>) -> Value {
    if sub == Some("status") {
        let mut merged = old.clone();
        merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if merged["status"].is_null()
            && let Some(m) = merged.as_object_mut()
        {
            m.remove("status");
        }
        return merged;
    }
    if rt.status {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    // Server-owned metadata comes from the stored object.
    let old_meta = old.get("metadata").cloned().unwrap_or_default();
    let meta = object::meta_mut(&mut new);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "name",
    ] {
        match old_meta.get(field) {
            Some(v) => {
                meta.insert(field.to_owned(), v.clone());
            }
            None => {
                meta.remove(field);
            }
        }
    }
    if old_meta.get("deletionTimestamp").is_some() {
        // Finalizers may only be removed once deletion started.
        if meta.get("finalizers").is_none() && old_meta.get("finalizers").is_some() {
            meta.insert("finalizers".into(), json!([]));
        }
    }
    new
}

/// Stores `new` over the object at `rev`; deletes it instead when deletion is pending, its grace
/// period is over and no finalizer is left. Returns the stored object and whether it was deleted.
async fn commit_update(
    state: &Arc<State>,
    rt: &ResourceType,
    ns: Option<&str>,
    mut new: Value,
    old: &Value,
    rev: i64,
) -> Result<Value, store::Error> {
    let key = rt.key(ns, object::name(&new));
    let finalizers_left = object::get_path(&new, "metadata.finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    // As kube-apiserver's ShouldDeleteDuringUpdate: only an object whose grace period is over
    // (0; a graceful pod still has its seconds) goes when its last finalizer is gone.
    let grace_left = object::get_path(&new, "metadata.deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if object::meta_str(&new, "deletionTimestamp").is_some() && !finalizers_left && grace_left == 0
    {
        let kv = state.store.delete(&key, Some(rev)).await?;
        after_delete(state, rt, old).await;
        object::meta_mut(&mut new)
            .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        return Ok(new);
    }
    let bytes = encode_for_store(&new).map_err(|e| store::Error::Embedded(e.message.into()))?;
    let kv = state.store.update(&key, bytes, rev).await?;
    object::meta_mut(&mut new).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    after_write(state, rt, &new);
    Ok(new)
}

/// The common update path for PUT and PATCH: `change` turns the current object into the
/// client's version of it. Retries on conflicting writes unless the client named a
/// resourceVersion.
#[allow(
    clippy::too_many_arguments,
    reason = "one internal entry point for PUT, PATCH and apply"
)]
async fn guaranteed_update<F>(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    dry_run: bool,
    mode: FieldValidation,
    manager: Option<&str>,
    mut change: F,
) -> ApiResult<(Value, Vec<String>)>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    for _ in 0..MAX_RETRIES {
        let (old, rev) = read(state, rt, ns, name).await?;
        let mut new = change(&old)?;
        if !new.is_object() {
            return Err(ApiError::bad_request("the result must be a JSON object"));
        }
        check_type_meta(rt, &mut new)?;
        let body_name = object::name(&new);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(body_ns) = object::namespace(&new)
            && rt.namespaced
            && Some(body_ns) != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let requested_rv = object::meta_str(&new, "resourceVersion")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        if let Some(rv) = &requested_rv
            && rv.parse::<i64>().ok() != Some(rev)
        {
            return Err(ApiError::stale(&rt.group, &rt.plural, name));
        }
        if let (Some(uid), Some(old_uid)) =
            (object::meta_str(&new, "uid"), object::meta_str(&old, "uid"))
            && !uid.is_empty()
            && uid != old_uid
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
                ),
            ));
        }
        let warnings = normalize(rt, &mut new, mode)?;
        let mut new = merge_for_update(rt, &old, new, sub);
        defaults::apply(&rt.group, &rt.kind, &mut new);
        // Stored objects get today's defaults when read (as kube-apiserver does on decode), so
        // a default added since they were written is not a change.
        let mut old_defaulted = old.clone();
        defaults::apply(&rt.group, &rt.kind, &mut old_defaulted);
        let old_gen = object::get_path(&old, "metadata.generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if generation_view(rt, &old_defaulted) == generation_view(rt, &new) {
            old_gen
        } else {
            old_gen + 1
        };
        object::meta_mut(&mut new).insert("generation".into(), json!(generation));
        validate(rt, &new, Some(&old_defaulted))?;
        if let Some(manager) = manager {
            patch::record_update(Some(&old), &mut new, manager, &rt.api_version(), sub);
        }
        let held = before_write(state, rt, &mut new, Some(&old), dry_run).await?;
        if dry_run {
            return Ok((new, warnings));
        }
        match commit_update(state, rt, ns, new, &old, rev).await {
            Ok(stored) => {
                if held.is_some() {
                    // Release what the old version held and the new one gave up.
                    state
                        .allocator
                        .release_dropped(&allocator::held(&old), &allocator::held(&stored))
                        .await;
                }
                return Ok((stored, warnings));
            }
            Err(store::Error::Conflict { .. } | store::Error::NotFound(_))
                if requested_rv.is_none() =>
            {
                if let Some(held) = held {
                    state.allocator.release_held(&held).await;
                }
                continue;
            }
            Err(store::Error::Conflict { .. }) => {
                return Err(ApiError::stale(&rt.group, &rt.plural, name));
            }
            Err(store::Error::NotFound(_)) => {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(too_many_retries(rt, name))
}

/// PUT: replace (main resource, `/status` or `/scale`).
pub async fn update(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let mode = FieldValidation::from_request(req)?;
    let body = req.object(state.max_body_bytes).await?;
    let dry_run = req.dry_run();
    let manager = patch::update_manager(req);
    let manager = Some(manager.as_str());
    if sub == Some("scale") {
        let (stored, _) =
            guaranteed_update(state, rt, ns, name, None, dry_run, mode, manager, |old| {
                apply_scale(rt, old, &body)
            })
            .await?;
        return Ok(json_response(StatusCode::OK, &scale_of(rt, &stored)));
    }
    let sub = if sub == Some("finalize") { None } else { sub };
    let (stored, warnings) =
        guaranteed_update(state, rt, ns, name, sub, dry_run, mode, manager, |_| {
            Ok(body.clone())
        })
        .await?;
    Ok(respond(rt, StatusCode::OK, &stored, &warnings))
}

/// PATCH: JSON patch, merge patch, strategic merge patch or server-side apply.
pub async fn patch(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let mode = FieldValidation::from_request(req)?;
    let content_type = req.content_type();
    let kind = PatchType::from_content_type(&content_type)
        .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
    let body = req.bytes(state.max_body_bytes).await?;
    let dry_run = req.dry_run();
    if kind == PatchType::Apply {
        return patch::server_side_apply(state, rt, ns, name, sub, req, &body).await;
    }
    if kind == PatchType::Strategic && rt.custom.is_some() {
        return Err(ApiError::unsupported_media_type(&content_type));
    }
    let manager = patch::update_manager(req);
    let manager = Some(manager.as_str());
    if sub == Some("scale") {
        let (stored, _) =
            guaranteed_update(state, rt, ns, name, None, dry_run, mode, manager, |old| {
                let scale = patch::apply_patch(kind, &scale_of(rt, old), &body, rt)?;
                apply_scale(rt, old, &scale)
            })
            .await?;
        return Ok(json_response(StatusCode::OK, &scale_of(rt, &stored)));
    }
    let (stored, warnings) =
        guaranteed_update(state, rt, ns, name, sub, dry_run, mode, manager, |old| {
            let mut patched = patch::apply_patch(kind, old, &body, rt)?;
            // A patch that does not mention resourceVersion applies to the latest object.
            if object::meta_str(&patched, "resourceVersion")
                == object::meta_str(old, "resourceVersion")
            {
                object::meta_mut(&mut patched).remove("resourceVersion");
            }
            Ok(patched)
        })
        .await?;
    Ok(respond(rt, StatusCode::OK, &stored, &warnings))
}

/// Create-or-update used by server-side apply: the object after `change`, created if missing.
pub async fn apply_object<F>(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    dry_run: bool,
    change: F,
) -> ApiResult<(Value, bool)>
where
    F: Fn(Option<&Value>) -> ApiResult<Value>,
{
    match read(state, rt, ns, name).await {
        Ok(_) => {
            let (stored, _) = guaranteed_update(
                state,
                rt,
                ns,
                name,
                sub,
                dry_run,
                FieldValidation::Strict,
                None,
                |old| change(Some(old)),
            )
            .await?;
            Ok((stored, false))
        }
        Err(e) if e.code == 404 && sub.is_none() => {
            let mut obj = change(None)?;
            check_type_meta(rt, &mut obj)?;
            if rt.namespaced {
                let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
                object::meta_mut(&mut obj).insert("namespace".into(), json!(ns));
                ensure_namespace_active(state, ns).await?;
            }
            object::meta_mut(&mut obj).insert("name".into(), json!(name));
            normalize(rt, &mut obj, FieldValidation::Strict)?;
            let managed = object::get_path(&obj, "metadata.managedFields").cloned();
            prepare_create(rt, &mut obj);
            if let Some(m) = managed {
                object::meta_mut(&mut obj).insert("managedFields".into(), m);
            }
            defaults::apply(&rt.group, &rt.kind, &mut obj);
            validate(rt, &obj, None)?;
            let held = before_write(state, rt, &mut obj, None, dry_run).await?;
            if dry_run {
                return Ok((obj, true));
            }
            match state
                .store
                .create(&rt.key(ns, name), encode_for_store(&obj)?)
                .await
            {
                Ok(kv) => {
                    object::meta_mut(&mut obj)
                        .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                    after_write(state, rt, &obj);
                    Ok((obj, true))
                }
                Err(e) => {
                    if let Some(held) = held {
                        state.allocator.release_held(&held).await;
                    }
                    Err(match e {
                        store::Error::AlreadyExists(_) => ApiError::conflict(
                            &rt.group,
                            &rt.plural,
                            name,
                            "the object was created concurrently; try again",
                        ),
                        other => other.into(),
                    })
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// The `Scale` view of an object.
pub fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let spec = rt
        .scale
        .clone()
        .unwrap_or_else(|| super::registry::ScaleSpec {
            spec_replicas: "spec.replicas".into(),
            status_replicas: "status.replicas".into(),
            label_selector: None,
        });
    let replicas = object::get_path(obj, &spec.spec_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status_replicas = object::get_path(obj, &spec.status_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = spec
        .label_selector
        .as_deref()
        .and_then(|p| object::get_path(obj, p))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            // A LabelSelector's matchLabels, or a ReplicationController's plain label map.
            object::get_path(obj, "spec.selector.matchLabels")
                .or_else(|| object::get_path(obj, "spec.selector"))
                .and_then(Value::as_object)
                .filter(|m| m.values().all(Value::is_string))
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
        })
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    let mut scale_meta = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(f) {
            scale_meta[f] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": { "replicas": replicas },
        "status": { "replicas": status_replicas, "selector": selector },
    })
}

fn apply_scale(rt: &ResourceType, old: &Value, scale: &Value) -> ApiResult<Value> {
    let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
    if replicas.as_i64().is_none_or(|r| r < 0) {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            object::name(old),
            vec![Cause::invalid(
                "spec.replicas",
                &replicas,
                "must be greater than or equal to 0",
            )],
        ));
    }
    let path = rt
        .scale
        .as_ref()
        .map_or("spec.replicas", |s| s.spec_replicas.as_str());
    let mut new = old.clone();
    object::set_path(&mut new, path, replicas);
    if let Some(rv) = object::meta_str(scale, "resourceVersion").filter(|v| !v.is_empty()) {
        object::meta_mut(&mut new).insert("resourceVersion".into(), json!(rv));
    } else {
        object::meta_mut(&mut new).remove("resourceVersion");
    }
    Ok(new)
}

/// The `DeleteOptions` rudder honours (from the body, the query, or an Eviction).
#[derive(Debug, Default)]
pub struct DeleteOptions {
    grace_period: Option<i64>,
    precondition_uid: Option<String>,
    precondition_rv: Option<String>,
    propagation: Option<String>,
    /// `dryRun: [All]` in the body (the query's `dryRun=All` is the request's).
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Options from a `DeleteOptions` object.
    pub fn from_object(v: &Value) -> Self {
        Self {
            grace_period: v.get("gracePeriodSeconds").and_then(Value::as_i64),
            precondition_uid: v
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            precondition_rv: v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            propagation: v
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_owned),
            dry_run: v
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x == "All")),
        }
    }

    /// Rejects a propagation policy Kubernetes does not know.
    pub fn check(&self) -> ApiResult<()> {
        if let Some(p) = &self.propagation
            && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy {p:?} is not supported; use Orphan, Background or Foreground"
            )));
        }
        Ok(())
    }
}

async fn delete_options(state: &State, req: &mut Request) -> ApiResult<DeleteOptions> {
    let body = req.bytes(state.max_body_bytes).await?;
    let mut opts = DeleteOptions::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        opts = DeleteOptions::from_object(&decode_object(&body, &req.content_type())?);
    }
    if let Some(g) = req.param("gracePeriodSeconds") {
        opts.grace_period = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = req.param("propagationPolicy") {
        opts.propagation = Some(p.to_owned());
    }
    opts.dry_run |= req.dry_run();
    opts.check()?;
    Ok(opts)
}

/// DELETE of one object.
pub async fn delete(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let opts = delete_options(state, req).await?;
    delete_with(state, rt, ns, name, &opts).await
}

/// Deletes one object with `opts` (a DELETE, or an eviction the budgets allowed).
pub async fn delete_with(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<Response<Body>> {
    let dry_run = opts.dry_run;
    for _ in 0..MAX_RETRIES {
        let (old, rev) = read(state, rt, ns, name).await?;
        if let Some(uid) = &opts.precondition_uid
            && object::meta_str(&old, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    object::meta_str(&old, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(prv) = &opts.precondition_rv
            && prv.parse::<i64>().ok() != Some(rev)
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rev}"
                ),
            ));
        }
        if dry_run {
            return Ok(json_response(StatusCode::OK, &old));
        }
        let pending = object::meta_str(&old, "deletionTimestamp").is_some();
        let finalizers = object::get_path(&old, "metadata.finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let is_namespace = rt.group.is_empty() && rt.kind == "Namespace";
        let is_pod = rt.group.is_empty() && rt.kind == "Pod";
        // A pod on a node that may still run gets a grace period for its agent to stop it;
        // gracePeriodSeconds=0 (the agent once it stopped it, or `--force`) removes it at once.
        let force_pod = is_pod && opts.grace_period == Some(0) && !finalizers;
        let graceful_pod = is_pod
            && !force_pod
            && object::get_path(&old, "spec.nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && object::get_path(&old, "status.phase")
                .and_then(Value::as_str)
                .is_none_or(|p| p != "Succeeded" && p != "Failed");
        if pending && !force_pod {
            // Deletion already under way: nothing more to do.
            return Ok(json_response(StatusCode::OK, &old));
        }
        // Orphan and Foreground deletion: a finalizer keeps the object until the garbage
        // collector has orphaned or deleted its dependents.
        // Only owner kinds the collector follows get them: any other object would wait forever.
        // (Pods own nothing; their deletion is the node agent's.)
        let api_version = if rt.group.is_empty() {
            rt.version.clone()
        } else {
            format!("{}/{}", rt.group, rt.version)
        };
        let collected = crate::controllers::gc::Kind::of(&api_version, &rt.kind)
            .is_some_and(|k| k != crate::controllers::gc::Kind::Pod);
        let gc_finalizer = match opts.propagation.as_deref() {
            _ if !collected => None,
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        if (finalizers || is_namespace || graceful_pod || gc_finalizer.is_some()) && !force_pod {
            let mut new = old.clone();
            if let Some(f) = gc_finalizer {
                let list = object::meta_mut(&mut new)
                    .entry("finalizers")
                    .or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut()
                    && !list.iter().any(|v| v == f)
                {
                    list.push(json!(f));
                }
            }
            let grace = if graceful_pod {
                opts.grace_period
                    .or_else(|| {
                        object::get_path(&old, "spec.terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30)
            } else {
                0
            };
            let meta = object::meta_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(object::now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            meta.remove("resourceVersion");
            if is_namespace {
                object::set_path(&mut new, "status.phase", json!("Terminating"));
            }
            let key = rt.key(ns, name);
            match state.store.update(&key, encode_for_store(&new)?, rev).await {
                Ok(kv) => {
                    object::meta_mut(&mut new)
                        .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                    if is_namespace {
                        crate::controllers::namespace::spawn_finalizer(
                            Arc::clone(state),
                            name.to_owned(),
                        );
                    }
                    return Ok(json_response(StatusCode::OK, &new));
                }
                Err(store::Error::Conflict { .. }) => continue,
                Err(store::Error::NotFound(_)) => {
                    return Err(ApiError::not_found(&rt.group, &rt.plural, name));
                }
                Err(e) => return Err(e.into()),
            }
        }
        match state.store.delete(&rt.key(ns, name), Some(rev)).await {
            Ok(kv) => {
                after_delete(state, rt, &old).await;
                let mut gone = old;
                object::meta_mut(&mut gone)
                    .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                if rt.group.is_empty() && matches!(rt.kind.as_str(), "Namespace") {
                    return Ok(json_response(
                        StatusCode::OK,
                        &success_status(
                            &rt.group,
                            &rt.plural,
                            name,
                            object::meta_str(&gone, "uid").unwrap_or(""),
                        ),
                    ));
                }
                return Ok(json_response(StatusCode::OK, &gone));
            }
            Err(store::Error::Conflict { .. }) => continue,
            Err(store::Error::NotFound(_)) => {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(too_many_retries(rt, name))
}

/// Deletes an object immediately (no grace, no finalizers): used by the namespace finalizer and
/// CRD cleanup.
pub async fn delete_now(state: &Arc<State>, rt: &ResourceType, key: &str) -> ApiResult<()> {
    let Some(kv) = state.store.get(key).await? else {
        return Ok(());
    };
    let obj = decode_stored(&kv)?;
    match state.store.delete(key, None).await {
        Ok(_) | Err(store::Error::NotFound(_)) => {
            after_delete(state, rt, &obj).await;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// DELETE of a collection (with selectors).
pub async fn delete_collection(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let query = ListQuery::from_request(req)?;
    let (items, revision, _) = list_objects(state, rt, ns, &query, 0, None).await?;
    let mut deleted = Vec::new();
    for obj in items {
        let name = object::name(&obj).to_owned();
        let obj_ns = object::namespace(&obj).map(str::to_owned);
        let mut sub_req = Request {
            method: http::Method::DELETE,
            query: HashMap::new(),
            headers: http::HeaderMap::new(),
            body: None,
            user: req.user.clone(),
        };
        if req.dry_run() {
            deleted.push(obj);
            continue;
        }
        match delete(state, rt, obj_ns.as_deref(), &name, &mut sub_req).await {
            Ok(_) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": { "resourceVersion": revision.to_string() },
            "items": deleted,
        }),
    ))
}

/// POST `pods/{name}/binding`: assigns a pod to a node (what the scheduler does).
pub async fn bind(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let binding = req.object(state.max_body_bytes).await?;
    if let Some(Err(e)) = validation::normalize_builtin("", "Binding", &binding) {
        return Err(ApiError::bad_request(format!(
            "Binding cannot be handled: {} (field {})",
            e.message, e.path
        )));
    }
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::invalid(
                "",
                "Binding",
                name,
                vec![Cause::required("target.name", "")],
            )
        })?;
    if let Some(body_name) = binding.pointer("/metadata/name").and_then(Value::as_str)
        && !body_name.is_empty()
        && body_name != name
    {
        return Err(ApiError::bad_request(
            "the name of the binding does not match the pod name on the URL",
        ));
    }
    let (_, _) = guaranteed_update(
        state,
        rt,
        ns,
        name,
        None,
        req.dry_run(),
        FieldValidation::Ignore,
        Some(&patch::update_manager(req)),
        |old| {
            let current = object::get_path(old, "spec.nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !current.is_empty() {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    name,
                    &format!("pod {name} is already assigned to node \"{current}\""),
                ));
            }
            if object::meta_str(old, "deletionTimestamp").is_some() {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            let mut new = old.clone();
            object::set_path(&mut new, "spec.nodeName", json!(node));
            object::meta_mut(&mut new).remove("resourceVersion");
            Ok(new)
        },
    )
    .await?;
    // PodScheduled=True goes into status through the status path.
    let _ = guaranteed_update(state, rt, ns, name, Some("status"), false, FieldValidation::Ignore, None, |old| {
        let mut new = old.clone();
        let mut conditions: Vec<Value> = object::get_path(old, "status.conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": object::now()}));
        object::set_path(&mut new, "status.conditions", json!(conditions));
        object::meta_mut(&mut new).remove("resourceVersion");
        Ok(new)
    })
    .await;
    Ok(json_response(
        StatusCode::CREATED,
        &success_status("", "pods", name, ""),
    ))
}
