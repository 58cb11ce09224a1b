//! The resource metrics API, `metrics.k8s.io/v1beta1` (what metrics-server serves): the CPU and
//! memory in use by every pod and node, for `kubectl top` and the HorizontalPodAutoscaler.
//!
//! - Every [`RESOLUTION`] the apiserver scrapes each node agent's `/metrics/resource`
//!   (`rudder_node::metrics`), reached like `kubectl logs` reaches it (the Node's InternalIP and
//!   kubelet port, TLS pinned to the certificate the agent published, the node token). Nodes
//!   that publish no endpoint (hollow nodes) are skipped.
//! - CPU is a counter: the usage reported is its rate between the last two scrapes, in
//!   nanocores, over that `window`. A container (and so its pod) shows up from its second scrape;
//!   a counter that went backwards (a new cgroup) waits for the next one. Memory is the last
//!   working set, in `Ki` as metrics-server writes it.
//! - A pod is listed only when every container it reported has a rate, as in metrics-server.
//!   Its metrics carry the pod's labels (read from storage when asked), so `labelSelector`
//!   works on lists: `kubectl top pods -l app=web`, and the autoscaler's selector.
//! - Only `get` and `list` are served; the samples live in memory, per apiserver, and are gone
//!   after a restart until two scrapes have been made again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};

use super::{
    Body, State, json_response,
    logs::{Endpoint, connect},
    request::{Request, RequestInfo},
    selectors::LabelSelector,
    status::{ApiError, ApiResult},
};
use crate::store::ListOptions;

/// The API group.
pub const GROUP: &str = "metrics.k8s.io";
/// Its only version.
pub const VERSION: &str = "v1beta1";
/// How often nodes are scraped (metrics-server's `--metric-resolution`, at its low end).
pub const RESOLUTION: Duration = Duration::from_secs(10);
/// How long one node may take to answer a scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One reading of a CPU counter and a memory gauge.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    /// When it was read, milliseconds since the epoch.
    pub at_ms: i64,
    /// CPU seconds consumed so far.
    pub cpu_seconds: f64,
    /// Working set in bytes.
    pub memory: u64,
}

/// A usage over a window: what the API reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// When the window ended, milliseconds since the epoch.
    pub at_ms: i64,
    /// The window's length.
    pub window_ms: i64,
    /// CPU in use, nanocores.
    pub cpu_nanocores: u64,
    /// Working set in bytes.
    pub memory: u64,
}

/// The last two readings of one series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Series {
    previous: Option<Point>,
    last: Point,
}

impl Series {
    fn push(old: Option<&Series>, point: Point) -> Self {
        Self {
            previous: old.map(|s| s.last).filter(|p| p.at_ms < point.at_ms),
            last: point,
        }
    }

    fn usage(&self) -> Option<Usage> {
        let prev = self.previous?;
        let window_ms = self.last.at_ms - prev.at_ms;
        let cpu = self.last.cpu_seconds - prev.cpu_seconds;
        if window_ms <= 0 || cpu < 0.0 {
            return None;
        }
        Some(Usage {
            at_ms: self.last.at_ms,
            window_ms,
            cpu_nanocores: (cpu * 1e9 * 1000.0 / window_ms as f64).round() as u64,
            memory: self.last.memory,
        })
    }
}

/// One node's scrape, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    /// The node's own reading.
    pub node: Option<Point>,
    /// (namespace, pod) → container → reading.
    pub containers: BTreeMap<(String, String), BTreeMap<String, Point>>,
}

/// Parses `/metrics/resource` text (Prometheus exposition format, timestamps in ms); lines of
/// other metrics are ignored, a line that does not parse is skipped.
pub fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value, at_ms)) = sample(line) else {
            continue;
        };
        match name {
            "node_cpu_usage_seconds_total" => {
                let p = out.node.get_or_insert_with(Point::default);
                p.cpu_seconds = value;
                p.at_ms = at_ms;
            }
            "node_memory_working_set_bytes" => {
                let p = out.node.get_or_insert_with(Point::default);
                p.memory = value as u64;
                p.at_ms = p.at_ms.max(at_ms);
            }
            "container_cpu_usage_seconds_total" | "container_memory_working_set_bytes" => {
                let (Some(ns), Some(pod), Some(c)) = (
                    labels.get("namespace"),
                    labels.get("pod"),
                    labels.get("container"),
                ) else {
                    continue;
                };
                let p = out
                    .containers
                    .entry((ns.clone(), pod.clone()))
                    .or_default()
                    .entry(c.clone())
                    .or_default();
                if name == "container_cpu_usage_seconds_total" {
                    p.cpu_seconds = value;
                    p.at_ms = at_ms;
                } else {
                    p.memory = value as u64;
                    p.at_ms = p.at_ms.max(at_ms);
                }
            }
            _ => {}
        }
    }
    out
}

/// `name{labels} value timestamp` → its parts (a sample without a timestamp is skipped: a rate
/// needs to know when it was read).
fn sample(line: &str) -> Option<(&str, HashMap<String, String>, f64, i64)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = HashMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut end = None;
        // key="value" pairs separated by commas; values may hold escapes.
        loop {
            let mut key = String::new();
            for (i, ch) in chars.by_ref() {
                match ch {
                    '=' => break,
                    '}' if key.is_empty() => {
                        end = Some(i);
                        break;
                    }
                    ',' | ' ' => {}
                    _ => key.push(ch),
                }
            }
            if end.is_some() {
                break;
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    ch => value.push(ch),
                }
            }
            labels.insert(key, value);
            match chars.clone().next() {
                Some((i, '}')) => {
                    end = Some(i);
                    break;
                }
                Some(_) => {}
                None => return None,
            }
        }
        body.get(end? + 1..)?
    } else {
        rest
    };
    let mut fields = rest.split_whitespace();
    let value: f64 = fields.next()?.parse().ok()?;
    let at_ms: i64 = fields.next()?.parse().ok()?;
    Some((name, labels, value, at_ms))
}

/// What the apiserver knows of usage: the last two readings of every node and container.
#[derive(Debug, Default)]
pub struct Samples {
    inner: RwLock<Inner>,
}

/// (namespace, pod name).
type PodKey = (String, String);

/// The node a pod was reported by, and its containers' series.
type PodSeries = (String, BTreeMap<String, Series>);

/// A pod's containers' usages.
pub type PodUsage = (PodKey, Vec<(String, Usage)>);

#[derive(Debug, Default)]
struct Inner {
    nodes: BTreeMap<String, Series>,
    pods: BTreeMap<PodKey, PodSeries>,
}

impl Samples {
    /// Takes in node `node`'s scrape: its pods replace what the node reported before.
    pub fn record(&self, node: &str, scrape: Scrape) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match scrape.node {
            Some(p) => {
                let s = Series::push(inner.nodes.get(node), p);
                inner.nodes.insert(node.to_owned(), s);
            }
            None => {
                inner.nodes.remove(node);
            }
        }
        let mut fresh: Vec<(PodKey, PodSeries)> = Vec::new();
        for (pod, containers) in scrape.containers {
            let old = inner.pods.get(&pod).filter(|(n, _)| n == node);
            let series = containers
                .into_iter()
                .map(|(c, p)| {
                    let s = Series::push(old.and_then(|(_, o)| o.get(&c)), p);
                    (c, s)
                })
                .collect();
            fresh.push((pod, (node.to_owned(), series)));
        }
        inner.pods.retain(|_, (n, _)| n != node);
        inner.pods.extend(fresh);
    }

    /// Forgets the nodes not in `nodes` (deleted, or no longer publishing an endpoint).
    pub fn retain_nodes(&self, nodes: &[String]) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.nodes.retain(|n, _| nodes.contains(n));
        inner.pods.retain(|_, (n, _)| nodes.contains(n));
    }

    /// A node's usage, once it has two readings.
    pub fn node(&self, name: &str) -> Option<Usage> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.nodes.get(name)?.usage()
    }

    /// Every node with a usage.
    pub fn nodes(&self) -> Vec<(String, Usage)> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .nodes
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.usage()?)))
            .collect()
    }

    /// The pods of `namespace` (all with `None`) whose every container has a usage, with their
    /// containers' usages.
    pub fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .pods
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .filter_map(|(pod, (_, containers))| {
                let usages: Option<Vec<(String, Usage)>> = containers
                    .iter()
                    .map(|(c, s)| Some((c.clone(), s.usage()?)))
                    .collect();
                Some((pod.clone(), usages.filter(|u| !u.is_empty())?))
            })
            .collect()
    }
}

/// Scrapes every node each [`RESOLUTION`] until the apiserver's state is dropped.
pub fn spawn_scraper(state: &Arc<State>) {
    let weak: Weak<State> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RESOLUTION);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            scrape_all(&state).await;
        }
    });
}

async fn scrape_all(state: &Arc<State>) {
    let nodes = match state
        .store
        .list("/registry/nodes/", ListOptions::default())
        .await
    {
        Ok(page) => page.items,
        Err(e) => {
            tracing::debug!(error = %e, "metrics: listing nodes");
            return;
        }
    };
    let mut reachable = Vec::new();
    let mut scrapes = Vec::new();
    for kv in nodes {
        let Ok(node) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let Some(endpoint) = Endpoint::of(&node) else {
            continue;
        };
        let name = super::object::name(&node).to_owned();
        reachable.push(name.clone());
        let token = state.credentials.node_token.clone();
        scrapes.push(async move {
            let result =
                tokio::time::timeout(SCRAPE_TIMEOUT, fetch(&endpoint, &token, &name)).await;
            (name, result)
        });
    }
    for (name, result) in futures::future::join_all(scrapes).await {
        match result {
            Ok(Ok(text)) => state.metrics.record(&name, parse(&text)),
            Ok(Err(e)) => {
                tracing::debug!(node = name, error = %e.message, "metrics: scrape failed");
            }
            Err(_) => tracing::debug!(node = name, "metrics: scrape timed out"),
        }
    }
    state.metrics.retain_nodes(&reachable);
}

async fn fetch(endpoint: &Endpoint, token: &str, node_name: &str) -> ApiResult<String> {
    let doing = "scraping metrics from";
    let mut sender = connect(endpoint, node_name, doing).await?;
    let failed =
        |e: &dyn std::fmt::Display| ApiError::internal(format!("{doing} node {node_name}: {e}"));
    let request = http::Request::get("/metrics/resource")
        .header(header::HOST, endpoint.ip.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(&e))?;
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(&e))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(failed(&format!("{status}")));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `/apis/metrics.k8s.io/v1beta1`.
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics",
             "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics",
             "verbs": ["get", "list"]},
        ],
    })
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.0}"))
        .unwrap_or_default()
}

fn window(ms: i64) -> String {
    format!("{}s", (ms as f64 / 1000.0).round() as i64)
}

fn usage_json(u: &Usage) -> Value {
    json!({"cpu": format!("{}n", u.cpu_nanocores), "memory": format!("{}Ki", u.memory / 1024)})
}

/// A NodeMetrics object.
fn node_metrics(name: &str, u: &Usage, labels: Option<&Value>) -> Value {
    let mut meta = json!({"name": name, "creationTimestamp": rfc3339(u.at_ms)});
    if let Some(l) = labels {
        meta["labels"] = l.clone();
    }
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": meta,
        "timestamp": rfc3339(u.at_ms),
        "window": window(u.window_ms),
        "usage": usage_json(u),
    })
}

/// A PodMetrics object (its timestamp and window are its first container's).
fn pod_metrics(
    ns: &str,
    name: &str,
    containers: &[(String, Usage)],
    labels: Option<&Value>,
) -> Value {
    let first = containers.first().map(|(_, u)| *u);
    let at_ms = first.map_or(0, |u| u.at_ms);
    let mut meta = json!({"name": name, "namespace": ns, "creationTimestamp": rfc3339(at_ms)});
    if let Some(l) = labels {
        meta["labels"] = l.clone();
    }
    json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": meta,
        "timestamp": rfc3339(at_ms),
        "window": window(first.map_or(0, |u| u.window_ms)),
        "containers": containers
            .iter()
            .map(|(c, u)| json!({"name": c, "usage": usage_json(u)}))
            .collect::<Vec<_>>(),
    })
}

/// The labels of the stored objects under `prefix`, by (namespace, name); the namespace is
/// empty for cluster-scoped objects.
async fn labels_under(state: &State, prefix: &str) -> ApiResult<HashMap<PodKey, Value>> {
    let page = state
        .store
        .list(prefix, ListOptions::default())
        .await
        .map_err(|e| ApiError::internal(format!("reading {prefix}: {e}")))?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| {
            let obj: Value = serde_json::from_slice(&kv.value).ok()?;
            let key = (
                super::object::namespace(&obj)
                    .unwrap_or_default()
                    .to_owned(),
                super::object::name(&obj).to_owned(),
            );
            let labels = obj
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            Some((key, labels))
        })
        .collect())
}

/// Serves `GET` of `nodes` and `pods` in `metrics.k8s.io/v1beta1`.
pub async fn serve(
    state: &Arc<State>,
    info: &RequestInfo,
    req: &Request,
) -> ApiResult<Response<Body>> {
    let path = format!("/apis/{GROUP}/{}/{}", info.version, info.resource);
    if info.version != VERSION || info.subresource.is_some() {
        return Err(ApiError::no_route(&path));
    }
    if req.method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            req.method
        )));
    }
    if req.flag("watch") {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource (watch)",
        ));
    }
    let selector = match req.param("labelSelector") {
        Some(s) => LabelSelector::parse(s).map_err(ApiError::bad_request)?,
        None => LabelSelector(Vec::new()),
    };
    let with_labels = |name: &str, labels: Option<&Value>| json!({"metadata": {"name": name, "labels": labels.cloned().unwrap_or(json!({}))}});
    let list = |kind: &str, items: Vec<Value>| {
        json!({
            "kind": kind,
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {},
            "items": items,
        })
    };
    match (
        info.resource.as_str(),
        info.namespace.as_deref(),
        info.name.as_deref(),
    ) {
        ("nodes", None, name) => {
            let by_key = labels_under(state, "/registry/nodes/").await?;
            let labels: HashMap<&str, &Value> =
                by_key.iter().map(|((_, n), l)| (n.as_str(), l)).collect();
            match name {
                Some(name) => {
                    let u = state
                        .metrics
                        .node(name)
                        .ok_or_else(|| ApiError::not_found(GROUP, "nodemetrics", name))?;
                    Ok(json_response(
                        StatusCode::OK,
                        &node_metrics(name, &u, labels.get(name).copied()),
                    ))
                }
                None => {
                    let items = state
                        .metrics
                        .nodes()
                        .iter()
                        .filter(|(n, _)| {
                            selector.matches(&with_labels(n, labels.get(n.as_str()).copied()))
                        })
                        .map(|(n, u)| node_metrics(n, u, labels.get(n.as_str()).copied()))
                        .collect();
                    Ok(json_response(
                        StatusCode::OK,
                        &list("NodeMetricsList", items),
                    ))
                }
            }
        }
        ("pods", ns, name) => {
            let prefix = match ns {
                Some(ns) => format!("/registry/pods/{ns}/"),
                None => "/registry/pods/".to_owned(),
            };
            let labels = labels_under(state, &prefix).await?;
            let pods = state.metrics.pods(ns);
            match name {
                Some(name) => {
                    let ns = ns.unwrap_or_default();
                    let (_, containers) = pods
                        .iter()
                        .find(|((pns, pname), _)| pns == ns && pname == name)
                        .ok_or_else(|| ApiError::not_found(GROUP, "podmetrics", name))?;
                    let l = labels.get(&(ns.to_owned(), name.to_owned()));
                    Ok(json_response(
                        StatusCode::OK,
                        &pod_metrics(ns, name, containers, l),
                    ))
                }
                None => {
                    let items = pods
                        .iter()
                        // A pod gone from storage is not listed, though its node still reported it.
                        .filter_map(|(key, containers)| {
                            let l = labels.get(key)?;
                            selector
                                .matches(&with_labels(&key.1, Some(l)))
                                .then(|| pod_metrics(&key.0, &key.1, containers, Some(l)))
                        })
                        .collect();
                    Ok(json_response(
                        StatusCode::OK,
                        &list("PodMetricsList", items),
                    ))
                }
            }
        }
        _ => Err(ApiError::no_route(&path)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn text(at: i64, cpu: f64, node_cpu: f64) -> String {
        format!(
            "# HELP container_cpu_usage_seconds_total [STABLE] x\n\
             # TYPE container_cpu_usage_seconds_total counter\n\
             container_cpu_usage_seconds_total{{container=\"app\",namespace=\"default\",pod=\"web-1\"}} {cpu} {at}\n\
             container_memory_working_set_bytes{{container=\"app\",namespace=\"default\",pod=\"web-1\"}} 10485760 {at}\n\
             container_cpu_usage_seconds_total{{container=\"we\\\"ird\",namespace=\"default\",pod=\"odd\"}} 1 {at}\n\
             pod_cpu_usage_seconds_total{{namespace=\"default\",pod=\"web-1\"}} {cpu} {at}\n\
             node_cpu_usage_seconds_total {node_cpu} {at}\n\
             node_memory_working_set_bytes 2048 {at}\n\
             scrape_error 0\n\
             garbage{{\n"
        )
    }

    #[test]
    fn scrapes_parse_with_escapes_and_timestamps() {
        let s = parse(&text(T0, 2.5, 100.0));
        assert_eq!(
            s.node,
            Some(Point {
                at_ms: T0,
                cpu_seconds: 100.0,
                memory: 2048
            })
        );
        let web = &s.containers[&("default".to_owned(), "web-1".to_owned())]["app"];
        assert_eq!(web.cpu_seconds, 2.5);
        assert_eq!(web.memory, 10 * 1024 * 1024);
        assert!(s.containers[&("default".to_owned(), "odd".to_owned())].contains_key("we\"ird"));
    }

    #[test]
    fn cpu_is_the_rate_between_two_scrapes() {
        let samples = Samples::default();
        samples.record("n1", parse(&text(T0, 2.5, 100.0)));
        assert!(samples.pods(None).is_empty(), "one reading has no rate");
        assert!(samples.node("n1").is_none());
        // 10 s later the container used 2.5 more CPU seconds: a quarter core.
        samples.record("n1", parse(&text(T0 + 10_000, 5.0, 115.0)));
        let pods = samples.pods(Some("default"));
        let web = pods
            .iter()
            .find(|((_, n), _)| n == "web-1")
            .map(|(_, c)| c[0].1)
            .unwrap();
        assert_eq!(web.cpu_nanocores, 250_000_000);
        assert_eq!(web.window_ms, 10_000);
        assert_eq!(samples.node("n1").unwrap().cpu_nanocores, 1_500_000_000);
        let json = pod_metrics("default", "web-1", &[("app".into(), web)], None);
        assert_eq!(json["containers"][0]["usage"]["cpu"], "250000000n");
        assert_eq!(json["containers"][0]["usage"]["memory"], "10240Ki");
        assert_eq!(json["window"], "10s");
        // A counter that went backwards (a new cgroup) has no rate until the next scrape.
        samples.record("n1", parse(&text(T0 + 20_000, 0.5, 130.0)));
        assert!(
            samples
                .pods(Some("default"))
                .iter()
                .all(|((_, n), _)| n != "web-1")
        );
        // A node that is gone takes its pods along.
        samples.retain_nodes(&[]);
        assert!(samples.nodes().is_empty() && samples.pods(None).is_empty());
    }
}
