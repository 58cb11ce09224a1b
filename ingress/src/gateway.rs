//! Gateway API (`gateway.networking.k8s.io/v1`): GatewayClasses, Gateways and HTTPRoutes,
//! turned into routes of the same table the Ingresses fill, and the status conditions written
//! back. The kinds are those of the upstream CRDs (installed with `kubectl apply`, through the
//! apiserver's CRD support); the types here read only the fields rudder honours.
//!
//! What rudder does, following the Gateway API specification:
//! - **GatewayClass.** Ours when `spec.controllerName` is [`CONTROLLER_NAME`]; it gets
//!   `Accepted`.
//! - **Gateway.** Ours when its class is. Its listeners are served by the ingress's own
//!   listeners: an `HTTP` listener when its port is the port of `--ingress-http-addr`, an
//!   `HTTPS` listener (TLS mode `Terminate`, certificates from `kubernetes.io/tls` Secrets of
//!   the Gateway's namespace) when its port is that of `--ingress-https-addr`. Other ports get
//!   `Accepted: False, PortUnavailable`; other protocols `UnsupportedProtocol`. The Gateway's
//!   `status.addresses` are the ingress's status addresses; each listener reports its
//!   `attachedRoutes`.
//! - **HTTPRoute.** Attached through `parentRefs` (by `sectionName` and `port` when given) to
//!   the listeners that allow it (`allowedRoutes`: namespaces `Same`, `All` or a `Selector`,
//!   and the kinds) and share a hostname with it: a route's hostnames are intersected with the
//!   listener's (`*.example.com` matches any name with at least one more label, as the API
//!   says). A request goes to the rules of its most specific hostname (exact, then the longest
//!   wildcard, then the routes without one), and within them to the first rule whose match
//!   holds, in the API's precedence: an `Exact` path, then `RegularExpression` paths (longest
//!   first; their rank is the implementation's to choose, this is Envoy Gateway's), then the
//!   longest `PathPrefix` (element wise); then a rule with a method; then the most header
//!   matches; then the most query matches; then the oldest route; then the order of rules. A
//!   match that cannot be used (a bad regular expression or method) is left out and named in
//!   the route's `Accepted` message. A request no Gateway rule matches goes to the Ingress
//!   rules; a host an Ingress names exactly stays the Ingress's (see [`crate::routes`]).
//! - **Backends.** Services by name and port, in the route's namespace (a cross-namespace
//!   reference would need a ReferenceGrant, which rudder does not read: it gets
//!   `ResolvedRefs: False, RefNotPermitted`), weighted (`weight`, default 1) by a smooth
//!   weighted round robin. A reference that cannot be followed answers its share with 500, a
//!   Service without ready endpoints with 503.
//! - **Filters.** `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect` and
//!   `URLRewrite` (`ReplaceFullPath`, `ReplacePrefixMatch`); a rule with another filter answers
//!   500 (the API forbids skipping a filter). `timeouts.backendRequest` (else `request`) sets
//!   the upstream read timeout.
//! - **Status.** `Accepted` and `ResolvedRefs` per parent in `status.parents` (only the entries
//!   of [`CONTROLLER_NAME`] are touched), `Accepted` and `Programmed` on Gateways and their
//!   listeners. A condition keeps its `lastTransitionTime` while its status stays.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::routes::{
    Backend, BackendRef, Certificate, Endpoints, Filters, HeaderEdits, Limits, PathChange, PortRef,
    Redirect, Route, age, certificate_of, key, normalize_path,
};

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// The `controllerName` of GatewayClasses rudder serves.
pub const CONTROLLER_NAME: &str = "rudder.dev/gateway";

/// The GatewayClass the ingress publishes once the Gateway API CRDs are installed.
pub const DEFAULT_CLASS: &str = "rudder";

macro_rules! resource {
    ($ty:ident, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v1")
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// An object as listed, its spec not yet read.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Raw {
    metadata: ObjectMeta,
    spec: Value,
    status: Option<Value>,
}

impl Raw {
    /// The spec read as `S`, or the default and why it does not read.
    fn spec<S: serde::de::DeserializeOwned + Default>(&self) -> (S, Option<String>) {
        match serde_path_to_error::deserialize(&self.spec) {
            Ok(spec) => (spec, None),
            Err(e) => (
                S::default(),
                Some(format!("spec.{}: {}", e.path(), e.inner())),
            ),
        }
    }
}

/// A GatewayClass (the fields rudder reads).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, from = "Raw")]
pub struct GatewayClass {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec (default when it does not read: see `invalid`).
    pub spec: GatewayClassSpec,
    /// Status, as stored.
    pub status: Option<Value>,
    /// Why the spec does not read as the API's (the object is then left out and named in the
    /// log, instead of failing the watch of every object of the kind).
    #[serde(skip)]
    pub invalid: Option<String>,
}

impl From<Raw> for GatewayClass {
    fn from(raw: Raw) -> Self {
        let (spec, invalid) = raw.spec();
        GatewayClass {
            metadata: raw.metadata,
            spec,
            status: raw.status,
            invalid,
        }
    }
}
resource!(
    GatewayClass,
    "GatewayClass",
    "gatewayclasses",
    kube::core::ClusterResourceScope
);

/// `GatewayClass.spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// The controller that serves the class.
    pub controller_name: String,
}

/// A Gateway (the fields rudder reads).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, from = "Raw")]
pub struct Gateway {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec (default when it does not read: see `invalid`).
    pub spec: GatewaySpec,
    /// Status, as stored.
    pub status: Option<Value>,
    /// Why the spec does not read as the API's (the object is then left out and named in the
    /// log, instead of failing the watch of every object of the kind).
    #[serde(skip)]
    pub invalid: Option<String>,
}

impl From<Raw> for Gateway {
    fn from(raw: Raw) -> Self {
        let (spec, invalid) = raw.spec();
        Gateway {
            metadata: raw.metadata,
            spec,
            status: raw.status,
            invalid,
        }
    }
}
resource!(
    Gateway,
    "Gateway",
    "gateways",
    kube::core::NamespaceResourceScope
);

/// `Gateway.spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The class.
    pub gateway_class_name: String,
    /// Listeners.
    pub listeners: Vec<Listener>,
}

/// A Gateway listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Name, unique in the Gateway.
    pub name: String,
    /// Hostname (exact or `*.` wildcard); none: any.
    pub hostname: Option<String>,
    /// Port.
    pub port: i32,
    /// `HTTP`, `HTTPS`, ...
    pub protocol: String,
    /// TLS settings of an `HTTPS` listener.
    pub tls: Option<ListenerTls>,
    /// Which routes may attach.
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `listeners[].tls`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough`.
    pub mode: Option<String>,
    /// The certificates.
    pub certificate_refs: Vec<ObjectRef>,
}

/// A reference to an object by group, kind, name and namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Group (`""`: core).
    pub group: Option<String>,
    /// Kind.
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the referrer's).
    pub namespace: Option<String>,
}

/// `listeners[].allowedRoutes`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    /// From which namespaces.
    pub namespaces: Option<RouteNamespaces>,
    /// Which kinds (default: HTTPRoute for HTTP and HTTPS).
    pub kinds: Option<Vec<RouteGroupKind>>,
}

/// `allowedRoutes.namespaces`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    pub from: Option<String>,
    /// The namespaces' labels, for `Selector`.
    pub selector: Option<LabelSelector>,
}

/// A route kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteGroupKind {
    /// Group (default: gateway.networking.k8s.io).
    pub group: Option<String>,
    /// Kind.
    pub kind: String,
}

/// An HTTPRoute (the fields rudder reads).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, from = "Raw")]
pub struct HttpRoute {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec (default when it does not read: see `invalid`).
    pub spec: HttpRouteSpec,
    /// Status, as stored.
    pub status: Option<Value>,
    /// Why the spec does not read as the API's (the object is then left out and named in the
    /// log, instead of failing the watch of every object of the kind).
    #[serde(skip)]
    pub invalid: Option<String>,
}

impl From<Raw> for HttpRoute {
    fn from(raw: Raw) -> Self {
        let (spec, invalid) = raw.spec();
        HttpRoute {
            metadata: raw.metadata,
            spec,
            status: raw.status,
            invalid,
        }
    }
}
resource!(
    HttpRoute,
    "HTTPRoute",
    "httproutes",
    kube::core::NamespaceResourceScope
);

/// `HTTPRoute.spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Gateways (and listeners) it attaches to, kept as written (status echoes them).
    pub parent_refs: Vec<Value>,
    /// Hostnames; none: those of the listener.
    pub hostnames: Vec<String>,
    /// Rules.
    pub rules: Vec<HttpRouteRule>,
}

/// An HTTPRoute rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Matches, any of which selects the rule (none: every request, as `PathPrefix /`).
    pub matches: Vec<HttpRouteMatch>,
    /// Filters.
    pub filters: Vec<HttpRouteFilter>,
    /// Backends.
    pub backend_refs: Vec<HttpBackendRef>,
    /// Timeouts.
    pub timeouts: Option<HttpRouteTimeouts>,
}

/// A rule's match.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path (default `PathPrefix /`).
    pub path: Option<ValueMatch>,
    /// Headers, all of which must match.
    pub headers: Vec<NamedMatch>,
    /// Query parameters, all of which must match.
    pub query_params: Vec<NamedMatch>,
    /// The method.
    pub method: Option<String>,
}

/// A path match: `type` and `value`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ValueMatch {
    /// `Exact`, `PathPrefix` or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The value.
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct NamedMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A rule's filter.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Which filter.
    #[serde(rename = "type")]
    pub kind: String,
    /// `RequestHeaderModifier`.
    pub request_header_modifier: Option<HeaderModifier>,
    /// `ResponseHeaderModifier`.
    pub response_header_modifier: Option<HeaderModifier>,
    /// `RequestRedirect`.
    pub request_redirect: Option<RedirectFilter>,
    /// `URLRewrite`.
    pub url_rewrite: Option<RewriteFilter>,
}

/// A header modifier.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HeaderModifier {
    /// Replaced.
    pub set: Vec<HeaderValue>,
    /// Appended.
    pub add: Vec<HeaderValue>,
    /// Removed.
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HeaderValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `RequestRedirect`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct RedirectFilter {
    /// Scheme.
    pub scheme: Option<String>,
    /// Host.
    pub hostname: Option<String>,
    /// Path.
    pub path: Option<PathModifier>,
    /// Port.
    pub port: Option<i32>,
    /// 301 or 302 (default).
    pub status_code: Option<i32>,
}

/// `URLRewrite`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RewriteFilter {
    /// Host.
    pub hostname: Option<String>,
    /// Path.
    pub path: Option<PathModifier>,
}

/// A path modifier.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `ReplaceFullPath`.
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    pub replace_prefix_match: Option<String>,
}

/// A backend reference.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpBackendRef {
    /// Group (`""`: core).
    pub group: Option<String>,
    /// Kind (default Service).
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    pub namespace: Option<String>,
    /// Port (required for a Service).
    pub port: Option<i32>,
    /// Weight (default 1).
    pub weight: Option<i32>,
}

/// `rules[].timeouts`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// The whole request.
    pub request: Option<String>,
    /// One try upstream.
    pub backend_request: Option<String>,
}

/// A Gateway API duration (`1h`, `30s`, `500ms`, `1m30s`); `0s` or nonsense: `None`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest.get(..digits)?.parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit.checked_mul(u32::try_from(n).ok()?)?;
    }
    (!total.is_zero()).then_some(total)
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions).
pub fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// The hostnames a route serves on a listener: the intersection of the route's and the
/// listener's; `Some(vec![])` stands for any host; `None`: they share none.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let listener = listener
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase);
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    match (listener, route.is_empty()) {
        (None, true) => Some(Vec::new()),
        (None, false) => Some(route),
        (Some(l), true) => Some(vec![l]),
        (Some(l), false) => {
            let mut out = Vec::new();
            for r in &route {
                if wildcard_covers(&l, r) {
                    out.push(r.clone());
                } else if wildcard_covers(r, &l) {
                    out.push(l.clone());
                }
            }
            out.sort();
            out.dedup();
            (!out.is_empty()).then_some(out)
        }
    }
}

/// Whether the hostname pattern `pattern` covers `name` (equal, or a `*.` suffix with at least
/// one more label; a wildcard covers a longer wildcard).
fn wildcard_covers(pattern: &str, name: &str) -> bool {
    if pattern == name {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            let bare = name.strip_prefix('*').unwrap_or(name);
            bare.len() > suffix.len() && bare.ends_with(suffix)
        }
        None => false,
    }
}

/// How a rule's path matches.
#[derive(Clone, Debug)]
enum PathMatch {
    Exact(String),
    /// No trailing `/`; the root is empty.
    Prefix(String),
    Regex(regex::Regex),
}

/// How a header or query value matches.
#[derive(Clone, Debug)]
enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn new(kind: Option<&str>, value: &str) -> Result<Matcher, String> {
        match kind.unwrap_or("Exact") {
            "Exact" => Ok(Matcher::Exact(value.to_owned())),
            "RegularExpression" => anchored(value).map(Matcher::Regex),
            other => Err(format!("match type {other:?} is not supported")),
        }
    }

    fn holds(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(v) => v == value,
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

fn anchored(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("regular expression {pattern:?}: {e}"))
}

/// One match of one rule, with what it leads to (a clone shares the route).
#[derive(Clone, Debug)]
struct RuleMatch {
    path: PathMatch,
    method: Option<http::Method>,
    headers: Vec<(http::HeaderName, Matcher)>,
    query: Vec<(String, Matcher)>,
    /// Precedence: lower first.
    rank: (
        u8,
        std::cmp::Reverse<usize>,
        bool,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
    ),
    /// Ties: the route's age and name, the rule and match index.
    order: (Option<jiff::Timestamp>, String, usize, usize),
    route: Arc<Route>,
}

impl RuleMatch {
    fn holds(&self, req: &crate::routes::Request<'_>, path: &str) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                p.is_empty()
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.as_str() == req.method)
            && self.headers.iter().all(|(name, m)| {
                req.headers
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| m.holds(v))
            })
            && self.query.iter().all(|(name, m)| {
                req.query()
                    .find(|(k, _)| k == name)
                    .is_some_and(|(_, v)| m.holds(v))
            })
    }
}

/// The Gateway routes of one listener kind (plain HTTP or HTTPS), by hostname.
#[derive(Debug, Default)]
pub struct HostIndex {
    exact: HashMap<String, Vec<RuleMatch>>,
    /// `.example.com` for `*.example.com`, longest first.
    wildcard: Vec<(String, Vec<RuleMatch>)>,
    any: Vec<RuleMatch>,
    /// How many rule matches it holds (set by `finish`: `is_empty` is asked per request).
    len: usize,
}

impl HostIndex {
    fn bucket(&mut self, host: &str) -> &mut Vec<RuleMatch> {
        if host.is_empty() {
            return &mut self.any;
        }
        match host.strip_prefix('*') {
            Some(suffix) => {
                let i = match self.wildcard.iter().position(|(s, _)| s == suffix) {
                    Some(i) => i,
                    None => {
                        self.wildcard.push((suffix.to_owned(), Vec::new()));
                        self.wildcard.len() - 1
                    }
                };
                &mut self.wildcard[i].1
            }
            None => self.exact.entry(host.to_owned()).or_default(),
        }
    }

    fn finish(&mut self) {
        let sort = |rules: &mut Vec<RuleMatch>| {
            rules.sort_by(|a, b| (&a.rank, &a.order).cmp(&(&b.rank, &b.order)));
        };
        self.exact.values_mut().for_each(sort);
        self.wildcard.iter_mut().for_each(|(_, r)| sort(r));
        sort(&mut self.any);
        self.len = self.exact.values().map(Vec::len).sum::<usize>()
            + self.wildcard.iter().map(|(_, r)| r.len()).sum::<usize>()
            + self.any.len();
        self.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    /// The route of the first rule that matches, in the most specific hostname's rules.
    pub fn find(&self, host: &str, req: &crate::routes::Request<'_>) -> Option<&Arc<Route>> {
        let rules = self.exact.get(host).or_else(|| {
            self.wildcard
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .map(|(_, r)| r)
        });
        let rules = match rules {
            Some(r) => r,
            None if !self.any.is_empty() => &self.any,
            None => return None,
        };
        let path = normalize_path(req.path());
        rules.iter().find(|m| m.holds(req, &path)).map(|m| &m.route)
    }

    /// How many rule matches the index holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The kinds whose status the ingress writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    /// networking.k8s.io/v1 Ingress.
    Ingress,
    /// GatewayClass.
    GatewayClass,
    /// Gateway.
    Gateway,
    /// HTTPRoute.
    HttpRoute,
}

impl StatusKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Ingress => "Ingress",
            StatusKind::GatewayClass => "GatewayClass",
            StatusKind::Gateway => "Gateway",
            StatusKind::HttpRoute => "HTTPRoute",
        }
    }
}

/// Which objects' statuses to write, and what to write.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    /// The object's kind.
    pub kind: StatusKind,
    /// Namespace (cluster-scoped: none).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The `status` to merge in (only the fields rudder owns).
    pub status: Arc<Value>,
}

/// A status condition as rudder wants it.
struct Want<'a> {
    kind: &'a str,
    ok: bool,
    reason: &'a str,
    message: String,
}

/// The conditions `wanted`, keeping the `lastTransitionTime` of a current condition whose
/// status is unchanged.
fn conditions(current: Option<&Value>, wanted: &[Want<'_>], generation: i64, now: &str) -> Value {
    let current = current.and_then(Value::as_array);
    Value::Array(
        wanted
            .iter()
            .map(|w| {
                let status = if w.ok { "True" } else { "False" };
                let since = current
                    .into_iter()
                    .flatten()
                    .find(|c| {
                        c.get("type").and_then(Value::as_str) == Some(w.kind)
                            && c.get("status").and_then(Value::as_str) == Some(status)
                    })
                    .and_then(|c| c.get("lastTransitionTime").cloned())
                    .unwrap_or_else(|| Value::String(now.to_owned()));
                json!({
                    "type": w.kind,
                    "status": status,
                    "reason": w.reason,
                    "message": w.message,
                    "observedGeneration": generation,
                    "lastTransitionTime": since,
                })
            })
            .collect(),
    )
}

/// What [`build`] reads besides the objects.
pub struct Context<'a> {
    /// Services and their endpoints.
    pub endpoints: &'a Endpoints<'a>,
    /// `kubernetes.io/tls` Secrets by namespace and name.
    pub secrets: &'a HashMap<(&'a str, &'a str), &'a Secret>,
    /// Namespaces (for `allowedRoutes` selectors).
    pub namespaces: &'a [Arc<Namespace>],
    /// The port of the plain HTTP listener.
    pub http_port: u16,
    /// The port of the HTTPS listener, if there is one.
    pub https_port: Option<u16>,
    /// The addresses written to Gateways' status.
    pub addresses: &'a [std::net::IpAddr],
    /// The time written to new conditions.
    pub now: &'a str,
}

/// The Gateway API part of the table.
#[derive(Debug, Default)]
pub struct Built {
    /// Routes of HTTP listeners.
    pub http: HostIndex,
    /// Routes of HTTPS listeners.
    pub https: HostIndex,
    /// Certificates of HTTPS listeners, by hostname (`*.x` for wildcards, empty for any).
    pub certificates: Vec<(String, Arc<Certificate>)>,
    /// Statuses to write.
    pub statuses: Vec<StatusUpdate>,
    /// Why objects were left out, for the log.
    pub warnings: Vec<String>,
    /// How many routes (rule matches) were made.
    pub routes: usize,
}

/// A listener as the build sees it.
struct ListenerState<'a> {
    spec: &'a Listener,
    tls: bool,
    /// Why it is not served (condition reason, message), if so.
    refused: Option<(&'static str, String)>,
    /// Why its certificate is not resolved, if so.
    unresolved: Option<(&'static str, String)>,
    /// Routes attached (namespace/name).
    attached: BTreeSet<String>,
    /// Whether `allowedRoutes.kinds` lets HTTPRoutes in.
    kinds_ok: bool,
}

/// Why a route's parent reference did not attach.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    NoMatchingParent,
    NotAllowedByListeners,
    NoMatchingListenerHostname,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::NoMatchingParent => "NoMatchingParent",
            Refusal::NotAllowedByListeners => "NotAllowedByListeners",
            Refusal::NoMatchingListenerHostname => "NoMatchingListenerHostname",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::NoMatchingParent => {
                "no listener of the Gateway matches the sectionName and port"
            }
            Refusal::NotAllowedByListeners => {
                "the listeners do not allow routes of this kind from this namespace"
            }
            Refusal::NoMatchingListenerHostname => "no hostname is shared with the listeners",
        }
    }
}

/// The routes of one HTTPRoute's rules (one per match), and whether its references resolved.
struct RouteRules {
    matches: Vec<RuleMatch>,
    /// (reason, message) of the first reference that failed.
    unresolved: Option<(&'static str, String)>,
    /// Why some rule answers 500 (an unsupported filter or match), if so.
    invalid: Option<String>,
}

/// Turns one rule's backends, filters and matches into route entries.
fn rule_routes(route: &HttpRoute, ctx: &Context<'_>) -> RouteRules {
    let name = key(&route.metadata);
    let namespace = route.metadata.namespace.as_deref().unwrap_or_default();
    let (created, _) = age(&route.metadata);
    let mut out = RouteRules {
        matches: Vec::new(),
        unresolved: None,
        invalid: None,
    };
    for (rule_index, rule) in route.spec.rules.iter().enumerate() {
        // Backends.
        let mut backends = Vec::new();
        for b in &rule.backend_refs {
            let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
            let group = b.group.as_deref().unwrap_or("");
            let kind = b.kind.as_deref().unwrap_or("Service");
            let ns = b.namespace.as_deref().unwrap_or(namespace);
            let port = b.port.unwrap_or(0);
            let reference = BackendRef {
                namespace: ns.to_owned(),
                service: b.name.clone(),
                port: PortRef::Number(port),
            };
            let problem = if !(group.is_empty() || group == "core") || kind != "Service" {
                Some((
                    "InvalidKind",
                    format!("backend {group}/{kind} {} is not a Service", b.name),
                ))
            } else if ns != namespace {
                Some((
                    "RefNotPermitted",
                    format!(
                        "backend {reference}: references to other namespaces need a ReferenceGrant, which rudder does not support"
                    ),
                ))
            } else if b.port.is_none() {
                Some((
                    "BackendNotFound",
                    format!("backend {}: port is required", b.name),
                ))
            } else {
                None
            };
            let backend = match problem {
                Some((reason, message)) => {
                    out.unresolved.get_or_insert((reason, message.clone()));
                    Backend::new(reference, Vec::new(), Some(message))
                }
                None => match ctx.endpoints.resolve(&reference) {
                    Ok(endpoints) => Backend::new(reference, endpoints, None),
                    Err(why) => {
                        out.unresolved
                            .get_or_insert(("BackendNotFound", why.clone()));
                        Backend::new(reference, Vec::new(), Some(why))
                    }
                },
            };
            backends.push((backend, weight));
        }
        // Filters.
        let mut filters = Filters::default();
        let mut unsupported: Option<String> = None;
        let mut rewrite_path: Option<&PathModifier> = None;
        let mut redirect_path: Option<&PathModifier> = None;
        for f in &rule.filters {
            let edits = |m: &HeaderModifier| HeaderEdits {
                set: m
                    .set
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                add: m
                    .add
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                remove: m.remove.clone(),
            };
            for m in [&f.request_header_modifier, &f.response_header_modifier]
                .into_iter()
                .flatten()
            {
                if let Some(why) = bad_header(m) {
                    unsupported.get_or_insert(why);
                }
            }
            match (f.kind.as_str(), f) {
                (
                    "RequestHeaderModifier",
                    HttpRouteFilter {
                        request_header_modifier: Some(m),
                        ..
                    },
                ) => {
                    filters.request_headers = edits(m);
                }
                (
                    "ResponseHeaderModifier",
                    HttpRouteFilter {
                        response_header_modifier: Some(m),
                        ..
                    },
                ) => {
                    filters.response_headers = edits(m);
                }
                (
                    "RequestRedirect",
                    HttpRouteFilter {
                        request_redirect: Some(r),
                        ..
                    },
                ) => {
                    redirect_path = r.path.as_ref();
                    filters.redirect = Some(Redirect {
                        scheme: r.scheme.clone(),
                        hostname: r.hostname.clone(),
                        port: r.port.and_then(|p| u16::try_from(p).ok()),
                        path: None,
                        status: match r.status_code {
                            Some(301) => 301,
                            _ => 302,
                        },
                    });
                }
                (
                    "URLRewrite",
                    HttpRouteFilter {
                        url_rewrite: Some(r),
                        ..
                    },
                ) => {
                    filters.rewrite_host = r.hostname.clone();
                    rewrite_path = r.path.as_ref();
                }
                (kind, _) => {
                    unsupported.get_or_insert(format!("filter {kind} is not supported"));
                }
            }
        }
        let mut limits = Limits {
            max_body: None,
            ..Limits::default()
        };
        if let Some(t) = &rule.timeouts
            && let Some(d) = t
                .backend_request
                .as_deref()
                .or(t.request.as_deref())
                .and_then(parse_duration)
        {
            limits.read_timeout = d;
        }
        // Matches (none: everything).
        let default_match = [HttpRouteMatch::default()];
        let matches: &[HttpRouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        for (match_index, m) in matches.iter().enumerate() {
            let parsed = parse_match(m);
            let (path, method, headers, query) = match parsed {
                Ok(p) => p,
                Err(why) => {
                    out.invalid
                        .get_or_insert(format!("rule {rule_index}: {why}"));
                    continue;
                }
            };
            let prefix = match &path {
                PathMatch::Prefix(p) => Some(p.clone()),
                _ => None,
            };
            let change = |m: Option<&PathModifier>| -> Result<Option<PathChange>, String> {
                let Some(m) = m else { return Ok(None) };
                match m.kind.as_str() {
                    "ReplaceFullPath" => Ok(Some(PathChange::Full(
                        m.replace_full_path
                            .clone()
                            .unwrap_or_else(|| "/".to_owned()),
                    ))),
                    "ReplacePrefixMatch" => match &prefix {
                        Some(p) => Ok(Some(PathChange::Prefix {
                            matched: p.clone(),
                            with: m.replace_prefix_match.clone().unwrap_or_default(),
                        })),
                        None => Err("ReplacePrefixMatch needs a PathPrefix match".to_owned()),
                    },
                    other => Err(format!("path modifier {other:?} is not supported")),
                }
            };
            let mut filters = filters.clone();
            let mut problem = unsupported.clone();
            match (change(rewrite_path), change(redirect_path)) {
                (Ok(rewrite), Ok(redirect)) => {
                    filters.rewrite_path = rewrite;
                    if let Some(r) = filters.redirect.as_mut() {
                        r.path = redirect;
                    }
                }
                (Err(why), _) | (_, Err(why)) => {
                    problem.get_or_insert(why);
                }
            }
            let route_backends: Vec<(Backend, u32)> = match &problem {
                // The API: a rule that cannot be served as written answers 500 (no filter of it
                // applies, the redirect neither).
                Some(why) => {
                    out.invalid
                        .get_or_insert(format!("rule {rule_index}: {why}"));
                    filters = Filters::default();
                    vec![(invalid_backend(namespace, why), 1)]
                }
                // Each match gets its own round robin over the same endpoints.
                None => backends.iter().map(|(b, w)| (b.copy(), *w)).collect(),
            };
            let entry = Route::weighted(
                format!("HTTPRoute {name}"),
                route_backends,
                limits.clone(),
                filters,
            );
            let rank = (
                match &path {
                    PathMatch::Exact(_) => 0,
                    PathMatch::Regex(_) => 1,
                    PathMatch::Prefix(_) => 2,
                },
                std::cmp::Reverse(match &path {
                    PathMatch::Exact(p) | PathMatch::Prefix(p) => p.len(),
                    PathMatch::Regex(r) => r.as_str().len(),
                }),
                method.is_none(),
                std::cmp::Reverse(headers.len()),
                std::cmp::Reverse(query.len()),
            );
            out.matches.push(RuleMatch {
                path,
                method,
                headers,
                query,
                rank,
                order: (created, name.clone(), rule_index, match_index),
                route: Arc::new(entry),
            });
        }
    }
    out
}

/// Why a header modifier cannot be applied (a name or value HTTP does not allow), if so.
fn bad_header(m: &HeaderModifier) -> Option<String> {
    let names = m.set.iter().chain(&m.add).map(|h| &h.name).chain(&m.remove);
    for name in names {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Some(format!("header name {name:?} is not valid"));
        }
    }
    m.set
        .iter()
        .chain(&m.add)
        .find(|h| http::HeaderValue::from_str(&h.value).is_err())
        .map(|h| format!("header {}: value {:?} is not valid", h.name, h.value))
}

/// A backend that answers 500 with `why`.
fn invalid_backend(namespace: &str, why: &str) -> Backend {
    Backend::new(
        BackendRef {
            namespace: namespace.to_owned(),
            service: String::new(),
            port: PortRef::Number(0),
        },
        Vec::new(),
        Some(why.to_owned()),
    )
}

type ParsedMatch = (
    PathMatch,
    Option<http::Method>,
    Vec<(http::HeaderName, Matcher)>,
    Vec<(String, Matcher)>,
);

fn parse_match(m: &HttpRouteMatch) -> Result<ParsedMatch, String> {
    let (kind, value) = m.path.as_ref().map_or(("PathPrefix", "/"), |p| {
        (
            p.kind.as_deref().unwrap_or("PathPrefix"),
            p.value.as_deref().unwrap_or("/"),
        )
    });
    let path = match kind {
        "Exact" => PathMatch::Exact(value.to_owned()),
        "PathPrefix" => PathMatch::Prefix(value.trim_end_matches('/').to_owned()),
        "RegularExpression" => PathMatch::Regex(anchored(value)?),
        other => return Err(format!("path match type {other:?} is not supported")),
    };
    let method = m
        .method
        .as_deref()
        .map(|s| {
            http::Method::from_bytes(s.as_bytes()).map_err(|_| format!("method {s:?} is not valid"))
        })
        .transpose()?;
    let headers = m
        .headers
        .iter()
        .map(|h| {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?} is not valid", h.name))?;
            Ok((name, Matcher::new(h.kind.as_deref(), &h.value)?))
        })
        .collect::<Result<_, String>>()?;
    let query = m
        .query_params
        .iter()
        .map(|q| Ok((q.name.clone(), Matcher::new(q.kind.as_deref(), &q.value)?)))
        .collect::<Result<_, String>>()?;
    Ok((path, method, headers, query))
}

/// Reads a parent reference: (group, kind, namespace, name, sectionName, port).
fn parent_ref<'a>(
    v: &'a Value,
    route_ns: &'a str,
) -> (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<i64>,
) {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    (
        s("group").unwrap_or(GROUP),
        s("kind").unwrap_or("Gateway"),
        s("namespace").unwrap_or(route_ns),
        s("name").unwrap_or(""),
        s("sectionName"),
        v.get("port").and_then(Value::as_i64),
    )
}

/// The Gateway API part of the table, and the statuses to write.
pub fn build(
    classes: &[Arc<GatewayClass>],
    gateways: &[Arc<Gateway>],
    routes: &[Arc<HttpRoute>],
    ctx: &Context<'_>,
) -> Built {
    let mut built = Built::default();
    let unreadable = classes
        .iter()
        .map(|c| ("GatewayClass", &c.metadata, &c.invalid))
        .chain(
            gateways
                .iter()
                .map(|g| ("Gateway", &g.metadata, &g.invalid)),
        )
        .chain(
            routes
                .iter()
                .map(|r| ("HTTPRoute", &r.metadata, &r.invalid)),
        );
    for (kind, meta, invalid) in unreadable {
        if let Some(why) = invalid {
            built
                .warnings
                .push(format!("{kind} {} left out: {why}", key(meta)));
        }
    }
    let ours: BTreeSet<&str> = classes
        .iter()
        .filter(|c| c.invalid.is_none() && c.spec.controller_name == CONTROLLER_NAME)
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    for class in classes
        .iter()
        .filter(|c| c.invalid.is_none() && c.spec.controller_name == CONTROLLER_NAME)
    {
        let generation = class.metadata.generation.unwrap_or(0);
        let current = class.status.as_ref().and_then(|s| s.get("conditions"));
        let status = json!({"conditions": conditions(current, &[Want {
            kind: "Accepted", ok: true, reason: "Accepted",
            message: "Handled by rudder's ingress".to_owned(),
        }], generation, ctx.now)});
        push_status(
            &mut built,
            StatusKind::GatewayClass,
            &class.metadata,
            class.status.as_ref(),
            status,
        );
    }
    let mut gateways: Vec<&Gateway> = gateways
        .iter()
        .map(|g| &**g)
        .filter(|g| g.invalid.is_none() && ours.contains(g.spec.gateway_class_name.as_str()))
        .filter(|g| g.metadata.deletion_timestamp.is_none())
        .collect();
    gateways.sort_by_key(|g| age(&g.metadata));
    // Listeners per Gateway.
    let mut listeners: BTreeMap<String, Vec<ListenerState<'_>>> = BTreeMap::new();
    for gateway in &gateways {
        let gw_ns = gateway.metadata.namespace.as_deref().unwrap_or_default();
        let mut states = Vec::new();
        for l in &gateway.spec.listeners {
            let mut state = ListenerState {
                spec: l,
                tls: l.protocol == "HTTPS",
                refused: None,
                unresolved: None,
                attached: BTreeSet::new(),
                kinds_ok: true,
            };
            match l.protocol.as_str() {
                "HTTP" if l.port == i32::from(ctx.http_port) => {}
                "HTTPS" if ctx.https_port.is_some_and(|p| l.port == i32::from(p)) => {
                    let tls = l.tls.clone().unwrap_or_default();
                    if tls.mode.as_deref().unwrap_or("Terminate") != "Terminate" {
                        state.refused = Some((
                            "UnsupportedValue",
                            "only TLS mode Terminate is supported".to_owned(),
                        ));
                    }
                    for r in &tls.certificate_refs {
                        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
                        let kind = r.kind.as_deref().unwrap_or("Secret");
                        let group = r.group.as_deref().unwrap_or("");
                        let problem = if kind != "Secret" || !group.is_empty() {
                            Some((
                                "InvalidCertificateRef",
                                format!("{kind} {} is not a Secret", r.name),
                            ))
                        } else if ns != gw_ns {
                            Some((
                                "RefNotPermitted",
                                format!(
                                    "Secret {ns}/{}: references to other namespaces need a ReferenceGrant, which rudder does not support",
                                    r.name
                                ),
                            ))
                        } else {
                            match certificate_of(ctx.secrets, ns, &r.name) {
                                Some(cert) => {
                                    let host =
                                        l.hostname.clone().unwrap_or_default().to_ascii_lowercase();
                                    built.certificates.push((host, Arc::new(cert)));
                                    None
                                }
                                None => Some((
                                    "InvalidCertificateRef",
                                    format!(
                                        "Secret {ns}/{} not found or without tls.crt and tls.key",
                                        r.name
                                    ),
                                )),
                            }
                        };
                        if let Some(p) = problem {
                            state.unresolved.get_or_insert(p);
                        }
                    }
                    if tls.certificate_refs.is_empty() && state.refused.is_none() {
                        state.unresolved = Some((
                            "InvalidCertificateRef",
                            "an HTTPS listener needs tls.certificateRefs".to_owned(),
                        ));
                    }
                }
                "HTTP" | "HTTPS" => {
                    let served = if l.protocol == "HTTP" {
                        ctx.http_port.to_string()
                    } else {
                        ctx.https_port
                            .map_or_else(|| "none".to_owned(), |p| p.to_string())
                    };
                    state.refused = Some((
                        "PortUnavailable",
                        format!(
                            "rudder serves {} on port {served} (--ingress-{}-addr)",
                            l.protocol,
                            l.protocol.to_ascii_lowercase()
                        ),
                    ));
                }
                other => {
                    state.refused = Some((
                        "UnsupportedProtocol",
                        format!("protocol {other:?} is not supported (HTTP and HTTPS are)"),
                    ));
                }
            }
            if let Some(kinds) = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref())
                && !kinds.is_empty()
                && !kinds
                    .iter()
                    .any(|k| k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP)
                && state.refused.is_none()
            {
                state.kinds_ok = false;
                state.unresolved.get_or_insert((
                    "InvalidRouteKinds",
                    "only HTTPRoute is supported".to_owned(),
                ));
            }
            states.push(state);
        }
        listeners.insert(key(&gateway.metadata), states);
    }
    let namespace_labels: HashMap<&str, Option<&BTreeMap<String, String>>> = ctx
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref())))
        .collect();
    // Routes.
    let mut routes: Vec<&HttpRoute> = routes
        .iter()
        .map(|r| &**r)
        .filter(|r| r.invalid.is_none() && r.metadata.deletion_timestamp.is_none())
        .collect();
    routes.sort_by_key(|r| age(&r.metadata));
    for route in routes {
        let route_ns = route.metadata.namespace.as_deref().unwrap_or_default();
        let route_key = key(&route.metadata);
        let generation = route.metadata.generation.unwrap_or(0);
        let mut rules: Option<RouteRules> = None;
        let mut parents = Vec::new();
        for parent in &route.spec.parent_refs {
            let (group, kind, ns, name, section, port) = parent_ref(parent, route_ns);
            if group != GROUP || kind != "Gateway" {
                continue;
            }
            let gw_key = format!("{ns}/{name}");
            let Some(states) = listeners.get_mut(&gw_key) else {
                continue; // not one of ours: another controller's to report
            };
            let mut refusal = Refusal::NoMatchingParent;
            let mut attached_here = false;
            for state in states.iter_mut() {
                let l = state.spec;
                if section.is_some_and(|s| s != l.name)
                    || port.is_some_and(|p| p != i64::from(l.port))
                {
                    continue;
                }
                refusal = refusal.max(Refusal::NotAllowedByListeners);
                if state.refused.is_some() || !state.kinds_ok {
                    continue;
                }
                let from = l
                    .allowed_routes
                    .as_ref()
                    .and_then(|a| a.namespaces.as_ref());
                let allowed = match from.and_then(|f| f.from.as_deref()).unwrap_or("Same") {
                    "All" => true,
                    "Selector" => from.and_then(|f| f.selector.as_ref()).is_some_and(|sel| {
                        selects(sel, namespace_labels.get(route_ns).copied().flatten())
                    }),
                    _ => route_ns == ns,
                };
                if !allowed {
                    continue;
                }
                refusal = refusal.max(Refusal::NoMatchingListenerHostname);
                let Some(hosts) = intersect(l.hostname.as_deref(), &route.spec.hostnames) else {
                    continue;
                };
                attached_here = true;
                state.attached.insert(route_key.clone());
                let rules = rules.get_or_insert_with(|| rule_routes(route, ctx));
                let index = if state.tls {
                    &mut built.https
                } else {
                    &mut built.http
                };
                let hosts = if hosts.is_empty() {
                    vec![String::new()]
                } else {
                    hosts
                };
                for host in hosts {
                    let bucket = index.bucket(&host);
                    for m in &rules.matches {
                        bucket.push(m.clone());
                    }
                }
            }
            let mut wanted = vec![if attached_here {
                Want {
                    kind: "Accepted",
                    ok: true,
                    reason: "Accepted",
                    message: match rules.as_ref().and_then(|r| r.invalid.as_ref()) {
                        Some(why) => format!("Accepted; not served as written: {why}"),
                        None => "Accepted".to_owned(),
                    },
                }
            } else {
                Want {
                    kind: "Accepted",
                    ok: false,
                    reason: refusal.reason(),
                    message: refusal.message().to_owned(),
                }
            }];
            // Backends are checked even when the route is not attached.
            let resolved = rules
                .get_or_insert_with(|| rule_routes(route, ctx))
                .unresolved
                .clone();
            wanted.push(match resolved {
                Some((reason, message)) => Want {
                    kind: "ResolvedRefs",
                    ok: false,
                    reason,
                    message,
                },
                None => Want {
                    kind: "ResolvedRefs",
                    ok: true,
                    reason: "ResolvedRefs",
                    message: "All references resolved".to_owned(),
                },
            });
            parents.push((parent.clone(), wanted));
        }
        // status.parents: the other controllers' entries as they are, ours rewritten.
        let current: Vec<Value> = route
            .status
            .as_ref()
            .and_then(|s| s.get("parents"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let had_ours = current
            .iter()
            .any(|p| p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME));
        // No parent of ours (any more): our old entries go, the others' stay.
        if parents.is_empty() && !had_ours {
            continue;
        }
        if let Some(r) = &rules
            && let Some(why) = &r.invalid
        {
            built.warnings.push(format!("HTTPRoute {route_key}: {why}"));
        }
        let mut entries: Vec<Value> = current
            .iter()
            .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
            .cloned()
            .collect();
        for (parent, wanted) in parents {
            let before = current.iter().find(|p| {
                p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                    && p.get("parentRef") == Some(&parent)
            });
            entries.push(json!({
                "parentRef": parent,
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions(before.and_then(|b| b.get("conditions")), &wanted, generation, ctx.now),
            }));
        }
        push_status(
            &mut built,
            StatusKind::HttpRoute,
            &route.metadata,
            route.status.as_ref(),
            json!({"parents": entries}),
        );
    }
    // Gateway statuses, now that the attached routes are known.
    for gateway in &gateways {
        let generation = gateway.metadata.generation.unwrap_or(0);
        let states = listeners.get(&key(&gateway.metadata));
        let current = gateway.status.as_ref();
        let current_listeners = current
            .and_then(|s| s.get("listeners"))
            .and_then(Value::as_array);
        let mut programmed = 0;
        let listener_status: Vec<Value> = states
            .into_iter()
            .flatten()
            .map(|s| {
                let ok = s.refused.is_none();
                if ok && s.unresolved.is_none() {
                    programmed += 1;
                }
                let wanted = [
                    match &s.refused {
                        Some((reason, message)) => Want {
                            kind: "Accepted",
                            ok: false,
                            reason,
                            message: message.clone(),
                        },
                        None => Want {
                            kind: "Accepted",
                            ok: true,
                            reason: "Accepted",
                            message: "Accepted".to_owned(),
                        },
                    },
                    match (&s.refused, &s.unresolved) {
                        (Some(_), _) => Want {
                            kind: "Programmed",
                            ok: false,
                            reason: "Invalid",
                            message: "not accepted".to_owned(),
                        },
                        (None, Some(_)) => Want {
                            kind: "Programmed",
                            ok: false,
                            reason: "Invalid",
                            message: "references not resolved".to_owned(),
                        },
                        (None, None) => Want {
                            kind: "Programmed",
                            ok: true,
                            reason: "Programmed",
                            message: "Programmed".to_owned(),
                        },
                    },
                    match &s.unresolved {
                        Some((reason, message)) => Want {
                            kind: "ResolvedRefs",
                            ok: false,
                            reason,
                            message: message.clone(),
                        },
                        None => Want {
                            kind: "ResolvedRefs",
                            ok: true,
                            reason: "ResolvedRefs",
                            message: "All references resolved".to_owned(),
                        },
                    },
                ];
                let before = current_listeners
                    .into_iter()
                    .flatten()
                    .find(|c| c.get("name").and_then(Value::as_str) == Some(s.spec.name.as_str()))
                    .and_then(|c| c.get("conditions"));
                let kinds = if s.refused.is_some()
                    && !matches!(s.spec.protocol.as_str(), "HTTP" | "HTTPS")
                {
                    json!([])
                } else {
                    json!([{"group": GROUP, "kind": "HTTPRoute"}])
                };
                json!({
                    "name": s.spec.name,
                    "supportedKinds": kinds,
                    "attachedRoutes": s.attached.len(),
                    "conditions": conditions(before, &wanted, generation, ctx.now),
                })
            })
            .collect();
        let total = listener_status.len();
        let wanted = [
            if programmed == total || programmed > 0 {
                Want {
                    kind: "Accepted",
                    ok: true,
                    reason: if programmed == total {
                        "Accepted"
                    } else {
                        "ListenersNotValid"
                    },
                    message: format!("{programmed} of {total} listeners served"),
                }
            } else {
                Want {
                    kind: "Accepted",
                    ok: false,
                    reason: "ListenersNotValid",
                    message: "no listener can be served".to_owned(),
                }
            },
            if programmed > 0 {
                Want {
                    kind: "Programmed",
                    ok: true,
                    reason: "Programmed",
                    message: format!("{programmed} of {total} listeners served"),
                }
            } else {
                Want {
                    kind: "Programmed",
                    ok: false,
                    reason: "Invalid",
                    message: "no listener can be served".to_owned(),
                }
            },
        ];
        let addresses: Vec<Value> = ctx
            .addresses
            .iter()
            .map(|a| json!({"type": "IPAddress", "value": a.to_string()}))
            .collect();
        let status = json!({
            "addresses": addresses,
            "conditions": conditions(current.and_then(|s| s.get("conditions")), &wanted, generation, ctx.now),
            "listeners": listener_status,
        });
        push_status(
            &mut built,
            StatusKind::Gateway,
            &gateway.metadata,
            current,
            status,
        );
    }
    built.http.finish();
    built.https.finish();
    built.routes = built.http.len() + built.https.len();
    built
}

/// Queues `status` for the object unless its current status already says it.
fn push_status(
    built: &mut Built,
    kind: StatusKind,
    meta: &ObjectMeta,
    current: Option<&Value>,
    status: Value,
) {
    let unchanged = status.as_object().is_some_and(|fields| {
        fields
            .iter()
            .all(|(k, v)| current.and_then(|c| c.get(k)) == Some(v))
    });
    if unchanged {
        return;
    }
    built.statuses.push(StatusUpdate {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        status: Arc::new(status),
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::routes::{Decision, Inputs, Listen, Request, Table, schedule};

    fn inputs(gateway_api: Vec<Value>) -> Inputs {
        let mut inputs = Inputs {
            listen: Listen {
                http_port: 8080,
                https_port: Some(8443),
                addresses: vec!["192.0.2.10".parse().expect("ip")],
            },
            now: "2026-12-07T10:00:00Z".to_owned(),
            ..Inputs::default()
        };
        for (name, port) in [("v1", 9001), ("v2", 9002)] {
            inputs.services.push(Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("app-{name}"), "namespace": "default"},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]},
                }))
                .expect("service"),
            ));
            inputs.slices.push(Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("app-{name}-x"), "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": format!("app-{name}")}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": port}],
                    "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
                }))
                .expect("slice"),
            ));
        }
        inputs.namespaces.push(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "team", "labels": {"gateway": "yes"}}}),
            )
            .expect("namespace"),
        ));
        for v in gateway_api {
            match v["kind"].as_str() {
                Some("GatewayClass") => inputs
                    .gateway_classes
                    .push(Arc::new(serde_json::from_value(v).expect("class"))),
                Some("Gateway") => inputs
                    .gateways
                    .push(Arc::new(serde_json::from_value(v).expect("gateway"))),
                _ => inputs
                    .http_routes
                    .push(Arc::new(serde_json::from_value(v).expect("route"))),
            }
        }
        inputs
    }

    fn class() -> Value {
        json!({"kind": "GatewayClass", "metadata": {"name": "rudder", "generation": 1},
               "spec": {"controllerName": CONTROLLER_NAME}})
    }

    fn gateway() -> Value {
        json!({"kind": "Gateway", "metadata": {"name": "web", "namespace": "default", "generation": 2},
        "spec": {"gatewayClassName": "rudder", "listeners": [
            {"name": "http", "port": 8080, "protocol": "HTTP", "hostname": "*.example.test"},
            {"name": "wrong-port", "port": 9999, "protocol": "HTTP"},
            {"name": "tcp", "port": 8080, "protocol": "TCP"},
            {"name": "team", "port": 8080, "protocol": "HTTP", "hostname": "team.test",
             "allowedRoutes": {"namespaces": {"from": "Selector",
                 "selector": {"matchLabels": {"gateway": "yes"}}}}},
        ]}})
    }

    fn route(name: &str, spec: Value) -> Value {
        json!({"kind": "HTTPRoute", "metadata": {"name": name, "namespace": "default",
               "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec})
    }

    fn backend(name: &str, weight: i32) -> Value {
        json!({"name": name, "port": 80, "weight": weight})
    }

    /// The backend Service a request goes to, or what the route answers instead.
    fn to(table: &Table, host: &str, target: &str, headers: &[(&str, &str)]) -> String {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let req = Request {
            host,
            target,
            method: "GET",
            headers: Some(&map),
            tls: false,
        };
        match table.route_request(&req) {
            Decision::Proxy(r) if r.filters.redirect.is_some() => "redirect".to_owned(),
            Decision::Proxy(r) => match r.choose() {
                Some((_, b)) if b.invalid.is_some() => "500".to_owned(),
                Some((_, b)) => b.backend.service.clone(),
                None => "500".to_owned(),
            },
            Decision::RedirectHttps => "https".to_owned(),
            Decision::NotFound => "404".to_owned(),
        }
    }

    #[test]
    fn weights_split_requests_exactly() {
        let table = Table::build(&inputs(vec![
            class(),
            gateway(),
            route(
                "split",
                json!({"parentRefs": [{"name": "web"}], "hostnames": ["app.example.test"],
                       "rules": [{"backendRefs": [backend("app-v1", 80), backend("app-v2", 20)]}]}),
            ),
        ]));
        let mut counts = BTreeMap::new();
        for _ in 0..1000 {
            *counts
                .entry(to(&table, "app.example.test", "/", &[]))
                .or_insert(0) += 1;
        }
        assert_eq!(
            counts,
            BTreeMap::from([("app-v1".to_owned(), 800), ("app-v2".to_owned(), 200)])
        );
        assert_eq!(schedule(&[80, 20]), [0, 0, 1, 0, 0]);
        assert_eq!(schedule(&[0, 3]), [1]);
        assert_eq!(schedule(&[2, 1]), [0, 1, 0]);
        assert!(schedule(&[0, 0]).is_empty());
        // Large weights are scaled to a bounded schedule, keeping every non-zero backend.
        let big = schedule(&[1_000_000, 1]);
        assert!(big.len() <= 1001 && big.contains(&1), "{}", big.len());
    }

    #[test]
    fn matches_follow_the_api_precedence() {
        let table = Table::build(&inputs(vec![
            class(),
            gateway(),
            route(
                "r",
                json!({"parentRefs": [{"name": "web", "sectionName": "http"}],
                       "hostnames": ["app.example.test"],
                       "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                     "backendRefs": [backend("app-v1", 1)]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api/"}}],
                     "backendRefs": [backend("app-v2", 1)]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                                  "headers": [{"name": "x-canary", "value": "yes"}]}],
                     "backendRefs": [backend("app-v2", 1)]},
                    {"matches": [{"path": {"type": "Exact", "value": "/api/old"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301,
                        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/api/new"}}}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/q"},
                                  "queryParams": [{"name": "v", "value": "2"}]}],
                     "backendRefs": [backend("app-v2", 1)]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}],
                     "backendRefs": [backend("nothing", 1)]},
                ]}),
            ),
        ]));
        for (target, headers, want) in [
            ("/", &[][..], "app-v1"),
            ("/index.html", &[], "app-v1"),
            // Longest prefix, element-wise (a trailing `/` in the rule is ignored).
            ("/api", &[], "app-v2"),
            ("/api/users", &[], "app-v2"),
            ("/apis", &[], "app-v1"),
            // Equal paths: the rule with a header match wins.
            ("/", &[("x-canary", "yes")], "app-v2"),
            ("/", &[("x-canary", "no")], "app-v1"),
            // Exact beats any prefix.
            ("/api/old", &[], "redirect"),
            ("/q?a=1&v=2", &[], "app-v2"),
            ("/q?v=3", &[], "app-v1"),
            // An unknown Service: 500, as the API asks.
            ("/missing", &[], "500"),
        ] {
            assert_eq!(
                to(&table, "app.example.test", target, headers),
                want,
                "{target} {headers:?}"
            );
        }
        // Hostnames: only the route's; the Ingress table (empty) answers the rest.
        assert_eq!(to(&table, "other.example.test", "/", &[]), "404");
        let status = |kind: &str, name: &str| {
            table
                .statuses
                .iter()
                .find(|s| s.kind.as_str() == kind && s.name == name)
                .map(|s| (*s.status).clone())
                .expect("status")
        };
        let parents = status("HTTPRoute", "r");
        let conditions = &parents["parents"][0]["conditions"];
        assert_eq!(parents["parents"][0]["controllerName"], CONTROLLER_NAME);
        assert_eq!(conditions[0]["type"], "Accepted");
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(conditions[1]["reason"], "BackendNotFound");
        let gw = status("Gateway", "web");
        assert_eq!(
            gw["addresses"],
            json!([{"type": "IPAddress", "value": "192.0.2.10"}])
        );
        assert_eq!(gw["conditions"][0]["reason"], "ListenersNotValid");
        assert_eq!(gw["conditions"][1]["status"], "True");
        assert_eq!(gw["conditions"][1]["observedGeneration"], 2);
        let listeners = gw["listeners"].as_array().expect("listeners");
        assert_eq!(listeners[0]["attachedRoutes"], 1);
        assert_eq!(listeners[1]["conditions"][0]["reason"], "PortUnavailable");
        assert_eq!(
            listeners[2]["conditions"][0]["reason"],
            "UnsupportedProtocol"
        );
        assert_eq!(listeners[3]["attachedRoutes"], 0);
        assert_eq!(
            status("GatewayClass", "rudder")["conditions"][0]["status"],
            "True"
        );
    }

    #[test]
    fn listeners_decide_which_routes_attach() {
        let mut team = route(
            "team-route",
            json!({"parentRefs": [{"name": "web", "namespace": "default", "sectionName": "team"}],
                   "rules": [{"backendRefs": [backend("app-v1", 1)]}]}),
        );
        team["metadata"]["namespace"] = json!("team");
        let other_host = route(
            "elsewhere",
            json!({"parentRefs": [{"name": "web", "sectionName": "http"}], "hostnames": ["app.other.test"],
                   "rules": [{"backendRefs": [backend("app-v1", 1)]}]}),
        );
        let not_ours = route(
            "theirs",
            json!({"parentRefs": [{"name": "someone-elses"}], "rules": []}),
        );
        let built = Table::build(&inputs(vec![
            class(),
            gateway(),
            team,
            other_host,
            not_ours,
        ]));
        let status = |name: &str| {
            built
                .statuses
                .iter()
                .find(|s| s.kind == StatusKind::HttpRoute && s.name == name)
                .map(|s| s.status["parents"][0]["conditions"][0].clone())
        };
        // The team namespace's labels match the listener's selector; the route's backend is in
        // its own namespace, where no Service exists: attached, unresolved.
        assert_eq!(status("team-route").expect("team")["status"], "True");
        assert_eq!(
            status("elsewhere").expect("elsewhere")["reason"],
            "NoMatchingListenerHostname"
        );
        assert!(status("theirs").is_none(), "another controller's parent");
        let mut req = Request {
            host: "team.test",
            target: "/",
            method: "GET",
            headers: None,
            tls: false,
        };
        assert!(matches!(built.route_request(&req), Decision::Proxy(_)));
        req.host = "app.other.test";
        assert!(matches!(built.route_request(&req), Decision::NotFound));
    }

    #[test]
    fn statuses_are_written_only_when_they_change() {
        let objects = vec![
            class(),
            gateway(),
            route(
                "r",
                json!({"parentRefs": [{"name": "web"}], "hostnames": ["a.example.test"],
                              "rules": [{"backendRefs": [backend("app-v1", 1)]}]}),
            ),
        ];
        let first = Table::build(&inputs(objects.clone()));
        assert_eq!(first.statuses.len(), 3);
        // Store what was written; a later build (at another time) writes nothing.
        let mut stored = objects;
        for object in &mut stored {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let update = first
                .statuses
                .iter()
                .find(|s| s.name == name)
                .expect("update");
            object["status"] = (*update.status).clone();
        }
        let mut later = inputs(stored);
        later.now = "2026-12-07T11:00:00Z".to_owned();
        assert_eq!(Table::build(&later).statuses, []);
    }

    #[test]
    fn regex_paths_invalid_rules_and_ingress_hosts() {
        let mut objects = inputs(vec![
            class(),
            gateway(),
            route(
                "r",
                json!({"parentRefs": [{"name": "web"}], "hostnames": ["app.example.test", "www.example.test"],
                       "rules": [
                    {"backendRefs": [backend("app-v1", 1)]},
                    {"matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9]+/.*"}}],
                     "backendRefs": [backend("app-v2", 1)]},
                    // A redirect whose ReplacePrefixMatch has no prefix to replace: 500, no redirect.
                    {"matches": [{"path": {"type": "Exact", "value": "/bad-header"}}],
                     "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "x-ok", "value": "a\u{7}b"}]}}],
                     "backendRefs": [backend("app-v1", 1)]},
                    {"matches": [{"path": {"type": "Exact", "value": "/odd"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/x"}}}]},
                ]}),
            ),
        ]);
        // An Ingress that names www.example.test keeps it.
        objects.classes.push(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "rudder", "annotations": {crate::routes::DEFAULT_CLASS_ANNOTATION: "true"}},
                "spec": {"controller": crate::routes::CONTROLLER},
            }))
            .expect("class"),
        ));
        objects.ingresses.push(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "site", "namespace": "default"},
                "spec": {"rules": [{"host": "www.example.test", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "app-v2", "port": {"number": 80}}}}]}}]},
            }))
            .expect("ingress"),
        ));
        let table = Table::build(&objects);
        // A regular expression outranks a catch-all prefix.
        assert_eq!(to(&table, "app.example.test", "/v2/users", &[]), "app-v2");
        assert_eq!(to(&table, "app.example.test", "/users", &[]), "app-v1");
        assert_eq!(to(&table, "app.example.test", "/odd", &[]), "500");
        assert_eq!(to(&table, "app.example.test", "/bad-header", &[]), "500");
        assert_eq!(to(&table, "www.example.test", "/users", &[]), "app-v2");
    }

    #[test]
    fn an_unreadable_route_is_left_out_alone() {
        let broken = route(
            "broken",
            json!({"parentRefs": [{"name": "web"}], "hostnames": "app.example.test", "rules": []}),
        );
        let parsed: HttpRoute = serde_json::from_value(broken.clone()).expect("still read");
        assert_eq!(
            parsed.invalid.as_deref(),
            Some("spec.hostnames: invalid type: string \"app.example.test\", expected a sequence")
        );
        let good = route(
            "good",
            json!({"parentRefs": [{"name": "web"}], "hostnames": ["app.example.test"],
                   "rules": [{"backendRefs": [backend("app-v1", 1)]}]}),
        );
        let table = Table::build(&inputs(vec![class(), gateway(), broken, good]));
        assert_eq!(to(&table, "app.example.test", "/", &[]), "app-v1");
        assert!(
            table
                .warnings
                .iter()
                .any(|w| w.starts_with("HTTPRoute default/broken left out: spec.hostnames")),
            "{:?}",
            table.warnings
        );
    }

    #[test]
    fn our_old_parent_entries_are_removed() {
        let mut orphan = route(
            "orphan",
            json!({"parentRefs": [{"name": "gone"}], "rules": []}),
        );
        orphan["status"] = json!({"parents": [
            {"parentRef": {"name": "gone"}, "controllerName": CONTROLLER_NAME, "conditions": []},
            {"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []},
        ]});
        let table = Table::build(&inputs(vec![class(), gateway(), orphan]));
        let update = table
            .statuses
            .iter()
            .find(|s| s.name == "orphan")
            .expect("status");
        assert_eq!(
            update.status["parents"],
            json!([{"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []}])
        );
    }

    #[test]
    fn hostnames_intersect_and_durations_parse() {
        let s = |v: &[&str]| v.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        assert_eq!(intersect(None, &[]), Some(vec![]));
        assert_eq!(
            intersect(
                Some("*.example.test"),
                &s(&["a.example.test", "b.other.test"])
            ),
            Some(s(&["a.example.test"]))
        );
        assert_eq!(
            intersect(Some("a.example.test"), &s(&["*.example.test"])),
            Some(s(&["a.example.test"]))
        );
        assert_eq!(
            intersect(Some("*.example.test"), &s(&["*.b.example.test"])),
            Some(s(&["*.b.example.test"]))
        );
        assert_eq!(
            intersect(Some("*.example.test"), &s(&["example.test"])),
            None
        );
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5x"), None);
        let change = PathChange::Prefix {
            matched: "/api".to_owned(),
            with: "/v2".to_owned(),
        };
        assert_eq!(change.apply("/api/users"), "/v2/users");
        assert_eq!(change.apply("/api"), "/v2");
        let strip = PathChange::Prefix {
            matched: "/api".to_owned(),
            with: "/".to_owned(),
        };
        assert_eq!(strip.apply("/api/users"), "/users");
        assert_eq!(strip.apply("/api"), "/");
    }
}
