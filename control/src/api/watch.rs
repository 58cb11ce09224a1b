//! Watch streams: newline-delimited JSON `{"type", "object"}` events over a chunked response.
//!
//! - `resourceVersion` empty or `0`: ADDED events for the current objects first, then changes;
//!   any other value resumes after that revision (410 Expired as an ERROR event if compacted).
//! - `sendInitialEvents=true` (client-go's watch-list, on by default in kubectl 1.37): the initial
//!   ADDED events end with a BOOKMARK annotated `k8s.io/initial-events-end: "true"`.
//! - `allowWatchBookmarks=true`: periodic BOOKMARKs carrying the revision of the last event this
//!   watcher was sent (never a later one, so resuming from a bookmark cannot skip an event).
//! - Label and field selectors are applied to both the old and the new object, so an object that
//!   stops matching is reported DELETED and one that starts matching ADDED, as in Kubernetes.
//! - `Accept: ...as=Table` streams Table rows (column definitions in the first event only).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use super::{
    Body, State, object,
    registry::ResourceType,
    request::Request,
    rest::{self, ListQuery},
    status::{ApiError, ApiResult},
    table,
};
use crate::store::{self, EventKind};

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The watch line for a store event, built from the stored JSON without decoding it into a
/// tree: only the top-level fields and `metadata`'s are split (as borrowed raw values), the
/// `resourceVersion`, `apiVersion` and `kind` are set, everything else is copied as it is.
/// This is the path of every watch without selectors (informers) and costs a scan and a copy
/// per event instead of a parse, an allocation per field and a serialisation. `None` when the
/// stored value is not a plain JSON object (the caller then takes the decoding path).
fn raw_line(
    kind: &str,
    (api_version, type_kind): (&str, &str),
    raw: &[u8],
    revision: i64,
    omit_managed_fields: bool,
) -> Option<Bytes> {
    use std::collections::BTreeMap;

    use serde_json::value::RawValue;
    // One event per line: a stored value is compact JSON, but never trust that blindly.
    if raw.contains(&b'\n') {
        return None;
    }
    let top: BTreeMap<&str, &RawValue> = serde_json::from_slice(raw).ok()?;
    let meta: BTreeMap<&str, &RawValue> = match top.get("metadata") {
        Some(m) => serde_json::from_str(m.get()).ok()?,
        None => BTreeMap::new(),
    };
    let mut out = Vec::with_capacity(raw.len() + 128);
    out.extend_from_slice(b"{\"type\":");
    push_str(&mut out, kind);
    out.extend_from_slice(b",\"object\":{\"apiVersion\":");
    push_str(&mut out, api_version);
    out.extend_from_slice(b",\"kind\":");
    push_str(&mut out, type_kind);
    for (key, value) in &top {
        if matches!(*key, "apiVersion" | "kind" | "metadata") {
            continue;
        }
        out.push(b',');
        push_str(&mut out, key);
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.extend_from_slice(b",\"metadata\":{");
    let skip =
        |key: &str| key == "resourceVersion" || (omit_managed_fields && key == "managedFields");
    for (key, value) in meta.iter().filter(|(k, _)| !skip(k)) {
        push_str(&mut out, key);
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(format!("\"resourceVersion\":\"{revision}\"}}}}}}\n").as_bytes());
    Some(Bytes::from(out))
}

struct Encoder {
    rt: Arc<ResourceType>,
    table: bool,
    columns_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, mut obj: Value) -> Value {
        obj["apiVersion"] = json!(self.rt.api_version());
        obj["kind"] = json!(self.rt.kind);
        if self.table {
            let rv = object::meta_str(&obj, "resourceVersion")
                .unwrap_or("")
                .to_owned();
            let mut t = table::table_with(&self.rt, std::slice::from_ref(&obj), &rv);
            if self.columns_sent
                && let Some(m) = t.as_object_mut()
            {
                m.remove("columnDefinitions");
            }
            self.columns_sent = true;
            obj = t;
        }
        json!({ "type": kind, "object": obj })
    }

    fn bookmark(&self, revision: i64, initial_end: bool) -> Value {
        let mut meta = json!({ "resourceVersion": revision.to_string() });
        if initial_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let (api_version, kind) = if self.table {
            ("meta.k8s.io/v1".to_owned(), "Table".to_owned())
        } else {
            (self.rt.api_version(), self.rt.kind.clone())
        };
        json!({ "type": "BOOKMARK", "object": { "kind": kind, "apiVersion": api_version, "metadata": meta } })
    }
}

fn error_event(err: &ApiError) -> Value {
    json!({ "type": "ERROR", "object": err.to_status() })
}

/// Serves a watch request.
pub async fn serve(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    req: &Request,
) -> ApiResult<Response<Body>> {
    let query = ListQuery::from_request(req)?;
    let rv = req.param("resourceVersion").unwrap_or("");
    let send_initial = req.param("sendInitialEvents").map(|v| v == "true");
    let bookmarks = req.flag("allowWatchBookmarks");
    if send_initial == Some(true) && req.param("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![super::status::Cause::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let initial = send_initial.unwrap_or(rv.is_empty() || rv == "0");
    let (initial_items, from) = if initial {
        let (items, revision, _) = rest::list_objects(state, rt, ns, &query, 0, None).await?;
        (items, revision)
    } else {
        let from = rv
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
        (Vec::new(), from)
    };
    let mut encoder = Encoder {
        rt: Arc::clone(rt),
        table: req.wants_table(),
        columns_sent: false,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    // Informers watch without selectors: their events skip the decoding path.
    let raw = !encoder.table && query.labels.0.is_empty() && query.fields.0.is_empty();
    let omit = req.omits_managed_fields();
    // Open the store watch before answering, so an expired revision can still be a plain 410.
    let stream = match state.store.watch(&rt.list_prefix(ns), from).await {
        Ok(s) => Some(s),
        Err(store::Error::Compacted { .. }) if !initial => None,
        Err(e) => return Err(e.into()),
    };
    let interval = state.bookmark_interval;
    let api_version = rt.api_version();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let Some(mut stream) = stream else {
            let err = ApiError::gone(format!("too old resource version: {from}"));
            let _ = tx.send(line(&error_event(&err))).await;
            return;
        };
        for mut obj in initial_items {
            if omit {
                object::meta_mut(&mut obj).remove("managedFields");
            }
            if tx.send(line(&encoder.event("ADDED", obj))).await.is_err() {
                return;
            }
        }
        let mut last = from;
        if send_initial == Some(true)
            && bookmarks
            && tx.send(line(&encoder.bookmark(from, true))).await.is_err()
        {
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = &mut deadline => return,
                () = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(line(&encoder.bookmark(last, false))).await.is_err() {
                        return;
                    }
                }
                next = stream.next() => {
                    let event = match next {
                        None => return,
                        Some(Err(e)) => {
                            let _ = tx.send(line(&error_event(&ApiError::from(e)))).await;
                            return;
                        }
                        Some(Ok(event)) => event,
                    };
                    last = event.revision;
                    let fast = raw.then(|| {
                        let kind = match event.kind {
                            EventKind::Created => "ADDED",
                            EventKind::Updated => "MODIFIED",
                            EventKind::Deleted => "DELETED",
                        };
                        let types = (api_version.as_str(), encoder.rt.kind.as_str());
                        raw_line(kind, types, &event.value, event.revision, omit)
                    });
                    let next = match fast.flatten() {
                        Some(next) => next,
                        None => {
                            let Some((kind, mut obj)) = translate(&event, &query) else { continue };
                            if omit {
                                object::meta_mut(&mut obj).remove("managedFields");
                            }
                            line(&encoder.event(kind, obj))
                        }
                    };
                    if tx.send(next).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|line| Ok::<_, std::convert::Infallible>(Frame::data(line)));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

/// Turns a store event into a watch event for a watcher with `query`, or `None` if the watcher
/// must not see it.
fn translate(event: &store::Event, query: &ListQuery) -> Option<(&'static str, Value)> {
    let decode = |bytes: &[u8]| -> Option<Value> {
        let mut obj: Value = serde_json::from_slice(bytes).ok()?;
        object::meta_mut(&mut obj)
            .insert("resourceVersion".into(), json!(event.revision.to_string()));
        Some(obj)
    };
    let obj = decode(&event.value)?;
    let now = query.matches(&obj);
    match event.kind {
        EventKind::Created => now.then_some(("ADDED", obj)),
        EventKind::Deleted => now.then_some(("DELETED", obj)),
        EventKind::Updated => {
            let before = event
                .prev_value
                .as_ref()
                .and_then(|p| decode(p))
                .is_some_and(|p| query.matches(&p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", obj)),
                (false, true) => Some(("ADDED", obj)),
                (true, false) => Some(("DELETED", obj)),
                (false, false) => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::selectors::{FieldSelector, LabelSelector};

    fn ev(kind: EventKind, value: Value, prev: Option<Value>) -> store::Event {
        store::Event {
            kind,
            key: "/registry/pods/ns/p".into(),
            value: Bytes::from(serde_json::to_vec(&value).unwrap()),
            revision: 7,
            prev_value: prev.map(|p| Bytes::from(serde_json::to_vec(&p).unwrap())),
        }
    }

    #[test]
    fn selector_transitions() {
        let query = ListQuery {
            labels: LabelSelector::parse("app=web").unwrap(),
            fields: FieldSelector::default(),
        };
        let web = json!({"metadata": {"name": "p", "labels": {"app": "web"}}});
        let db = json!({"metadata": {"name": "p", "labels": {"app": "db"}}});
        let t =
            |e| translate(&e, &query).map(|(k, o)| (k, o["metadata"]["resourceVersion"].clone()));
        assert_eq!(
            t(ev(EventKind::Created, web.clone(), None)),
            Some(("ADDED", json!("7")))
        );
        assert_eq!(t(ev(EventKind::Created, db.clone(), None)), None);
        assert_eq!(
            t(ev(EventKind::Updated, db.clone(), Some(web.clone()))).map(|x| x.0),
            Some("DELETED")
        );
        assert_eq!(
            t(ev(EventKind::Updated, web.clone(), Some(db.clone()))).map(|x| x.0),
            Some("ADDED")
        );
        assert_eq!(
            t(ev(EventKind::Updated, web.clone(), Some(web.clone()))).map(|x| x.0),
            Some("MODIFIED")
        );
        assert_eq!(
            t(ev(EventKind::Deleted, web, None)).map(|x| x.0),
            Some("DELETED")
        );
    }

    #[test]
    fn raw_lines_match_the_decoded_path() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "3",
                         "labels": {"app": "w\u{e9}b \"quoted\""}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "args": ["a\\b", "{}"]}]},
            "status": {}});
        let event = ev(EventKind::Updated, pod.clone(), Some(pod));
        let fast = raw_line(
            "MODIFIED",
            ("v1", "Pod"),
            &event.value,
            event.revision,
            false,
        )
        .unwrap();
        assert_eq!(fast.last(), Some(&b'\n'));
        assert_eq!(fast.iter().filter(|b| **b == b'\n').count(), 1);
        let fast: Value = serde_json::from_slice(&fast).unwrap();
        let (kind, mut obj) = translate(&event, &ListQuery::default()).unwrap();
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Pod");
        assert_eq!(fast, json!({"type": kind, "object": obj}));
        assert_eq!(fast["object"]["metadata"]["resourceVersion"], json!("7"));
        // Not an object, or not one line: the decoding path decides.
        assert!(raw_line("ADDED", ("v1", "Pod"), b"[1]", 1, false).is_none());
        assert!(raw_line("ADDED", ("v1", "Pod"), b"{\n}", 1, false).is_none());
        // No metadata at all still gets a resourceVersion.
        let bare = raw_line("ADDED", ("v1", "Pod"), b"{}", 9, false).unwrap();
        let bare: Value = serde_json::from_slice(&bare).unwrap();
        assert_eq!(bare["object"]["metadata"], json!({"resourceVersion": "9"}));
        // managedFields are left out when asked.
        let managed = br#"{"metadata":{"name":"p","managedFields":[{"manager":"m"}]}}"#;
        let kept = raw_line("ADDED", ("v1", "Pod"), managed, 9, false).unwrap();
        let left = raw_line("ADDED", ("v1", "Pod"), managed, 9, true).unwrap();
        let (kept, left): (Value, Value) = (
            serde_json::from_slice(&kept).unwrap(),
            serde_json::from_slice(&left).unwrap(),
        );
        assert_eq!(
            kept["object"]["metadata"]["managedFields"][0]["manager"],
            "m"
        );
        assert_eq!(
            left["object"]["metadata"],
            json!({"name": "p", "resourceVersion": "9"})
        );
    }
}
