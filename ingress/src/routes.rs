//! The routing table: the pure core of the ingress. [`Table::build`] turns Ingresses,
//! IngressClasses, Services, EndpointSlices and Secrets into a table; [`Table::route`] answers
//! where one request goes, with no I/O. The proxy builds a new table when an object changes and
//! swaps it in whole, so a request sees one consistent table.
//!
//! Ingress v1 semantics, as the API documents them and ingress-nginx behaves:
//! - **Class.** An Ingress is ours when its `spec.ingressClassName` names an IngressClass whose
//!   controller is [`CONTROLLER`]; without a class name, when our class carries the
//!   `ingressclass.kubernetes.io/is-default-class: "true"` annotation, or when the legacy
//!   `kubernetes.io/ingress.class` annotation names our class.
//! - **Hosts.** A rule's host is exact (`foo.example.com`) or a single-label wildcard
//!   (`*.example.com` matches `bar.example.com`, not `example.com` nor `a.bar.example.com`);
//!   matching is case-insensitive and ignores the port. A request goes to the exact host's
//!   rules, else the wildcard's, else the rules without a host; the first group that has the
//!   host decides (as nginx picks a server block, a host's group does not fall through to the
//!   rules without a host).
//! - **Paths.** Matched after `.`/`..` segments are resolved and `//` merged (see
//!   [`normalize_path`]). `Exact` matches the path exactly (case-sensitive); `Prefix` matches element-wise
//!   by `/` (`/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`; a trailing `/` in
//!   the rule is ignored); `ImplementationSpecific` is treated as `Prefix`. The longest match
//!   wins, and `Exact` beats `Prefix` for the same path. When two Ingresses declare the same host,
//!   path and type, the older one (creation time, then namespace/name) wins.
//! - **Default backend.** When no path matches (or no rule has the host), the `defaultBackend`
//!   of an Ingress with rules for that host is used (the oldest such), else that of the oldest
//!   Ingress with one, else 404.
//! - **Backends.** A Service by name and port number or port name. Its endpoints are the ready
//!   addresses of its EndpointSlices, with the target port of the slice port named as the
//!   Service port: requests go straight to pods, not through the Service's virtual IP. A
//!   backend without ready endpoints (or an unknown Service) answers 503.
//! - **Annotations.** Of ingress-nginx's, those that map cleanly: `ssl-redirect`,
//!   `proxy-connect-timeout`, `proxy-read-timeout`, `proxy-send-timeout` and `proxy-body-size`
//!   (see [`Limits`]); canary, `rewrite-target`/`use-regex`, `limit-rps` and
//!   `upstream-hash-by` (see [`crate::annotations`]).
//! - **Gateway API.** HTTPRoutes of rudder's Gateways are consulted first (see
//!   [`crate::gateway`]), except for the hosts an Ingress names exactly, which stay the
//!   Ingress's (so a route in another namespace cannot take over an Ingress's host); a request no
//!   Gateway route matches is routed by the Ingress rules.
//! - **Status.** Our Ingresses get the listen addresses in `status.loadBalancer` (see
//!   [`Listen`]).
//! - **TLS.** `spec.tls` hosts get the certificate of their `kubernetes.io/tls` Secret, chosen
//!   by SNI; an HTTP request to such a host is redirected to HTTPS with 308, unless the Ingress
//!   says `nginx.ingress.kubernetes.io/ssl-redirect: "false"`.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::annotations::{Canary, CanarySpec, HashKey, Pattern, Rate, Rewrite};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressBackend, IngressClass},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// The controller name of rudder's IngressClass.
pub const CONTROLLER: &str = "rudder.dev/ingress";

/// The annotation that marks the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The legacy annotation naming an Ingress's class.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The annotation that turns the HTTPS redirect off.
pub const SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/ssl-redirect";

/// What the table is built from: every object of the kinds the ingress watches.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Ingresses, all namespaces.
    pub ingresses: Vec<Arc<Ingress>>,
    /// IngressClasses.
    pub classes: Vec<Arc<IngressClass>>,
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// EndpointSlices.
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Secrets of type `kubernetes.io/tls` (others are ignored).
    pub secrets: Vec<Arc<Secret>>,
    /// Gateway API GatewayClasses.
    pub gateway_classes: Vec<Arc<crate::gateway::GatewayClass>>,
    /// Gateway API Gateways.
    pub gateways: Vec<Arc<crate::gateway::Gateway>>,
    /// Gateway API HTTPRoutes.
    pub http_routes: Vec<Arc<crate::gateway::HttpRoute>>,
    /// Namespaces (their labels, for Gateway listeners' route selectors).
    pub namespaces: Vec<Arc<Namespace>>,
    /// Where the ingress listens and what it publishes in statuses.
    pub listen: Listen,
    /// The time new status conditions carry (RFC 3339).
    pub now: String,
}

/// Where the ingress listens, and the addresses it reports in Ingress and Gateway statuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Port of the plain HTTP listener.
    pub http_port: u16,
    /// Port of the HTTPS listener, if any.
    pub https_port: Option<u16>,
    /// Addresses clients reach the ingress at (`status.loadBalancer` of Ingresses,
    /// `status.addresses` of Gateways); none: statuses are not written.
    pub addresses: Vec<IpAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            http_port: 80,
            https_port: Some(443),
            addresses: Vec::new(),
        }
    }
}

/// A request as routing sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The Host header (or `:authority`).
    pub host: &'a str,
    /// The path and query.
    pub target: &'a str,
    /// The method.
    pub method: &'a str,
    /// The headers, if any.
    pub headers: Option<&'a http::HeaderMap>,
    /// Whether it came over HTTPS.
    pub tls: bool,
}

impl<'a> Request<'a> {
    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        self.target.split(['?', '#']).next().unwrap_or("/")
    }

    /// The query's `name=value` pairs, as sent (not decoded).
    pub fn query(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.target
            .split_once('?')
            .map_or("", |(_, q)| q.split('#').next().unwrap_or(""))
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }
}

/// A backend Service and port, as an Ingress names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendRef {
    /// The Ingress's namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Port number or name.
    pub port: PortRef,
}

/// A Service port by number or name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// `port.number`.
    Number(i32),
    /// `port.name`.
    Name(String),
}

impl std::fmt::Display for BackendRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.port {
            PortRef::Number(n) => write!(f, "{}/{}:{n}", self.namespace, self.service),
            PortRef::Name(n) => write!(f, "{}/{}:{n}", self.namespace, self.service),
        }
    }
}

/// The annotation setting the upstream connect timeout (seconds).
pub const CONNECT_TIMEOUT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-connect-timeout";
/// The annotation setting the upstream read timeout (seconds).
pub const READ_TIMEOUT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-read-timeout";
/// The annotation setting the upstream send timeout (seconds).
pub const SEND_TIMEOUT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-send-timeout";
/// The annotation limiting request bodies (`8m`, `512k`, `0` for no limit).
pub const BODY_SIZE_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-body-size";

/// An Ingress's proxy settings, from the ingress-nginx annotations that map onto them (with
/// ingress-nginx's defaults: connect 5 s, read and send 60 s, bodies up to 1 MiB). A value that
/// does not parse is ignored with a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connecting to an endpoint.
    pub connect_timeout: Duration,
    /// Between two reads from the endpoint.
    pub read_timeout: Duration,
    /// Between two writes to the endpoint.
    pub send_timeout: Duration,
    /// Largest request body, in bytes (`None`: no limit).
    pub max_body: Option<u64>,
    /// Requests per second per client (`limit-rps`).
    pub rate: Option<Rate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_body: Some(1 << 20),
            rate: None,
        }
    }
}

/// nginx's size syntax: bytes, or a number with `k`, `m` or `g` (either case).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, ' '),
    };
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit {
        ' ' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

impl Limits {
    fn from_annotations(
        ingress: &str,
        annotations: Option<&BTreeMap<String, String>>,
        warnings: &mut Vec<String>,
    ) -> Limits {
        let mut limits = Limits::default();
        let Some(annotations) = annotations else {
            return limits;
        };
        let mut seconds = |key: &str, field: &mut Duration| {
            if let Some(v) = annotations.get(key) {
                match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => *field = Duration::from_secs(n),
                    _ => warnings.push(format!(
                        "Ingress {ingress}: {key}: {v:?} is not a number of seconds"
                    )),
                }
            }
        };
        seconds(CONNECT_TIMEOUT_ANNOTATION, &mut limits.connect_timeout);
        seconds(READ_TIMEOUT_ANNOTATION, &mut limits.read_timeout);
        seconds(SEND_TIMEOUT_ANNOTATION, &mut limits.send_timeout);
        if let Some(v) = annotations.get(BODY_SIZE_ANNOTATION) {
            match parse_size(v) {
                Some(0) => limits.max_body = None,
                Some(n) => limits.max_body = Some(n),
                None => warnings.push(format!(
                    "Ingress {ingress}: {BODY_SIZE_ANNOTATION}: {v:?} is not a size (e.g. 8m)"
                )),
            }
        }
        limits.rate = crate::annotations::rate(ingress, Some(annotations), warnings);
        limits
    }
}

/// One backend of a route: a Service port and its ready endpoints, picked round robin.
#[derive(Debug)]
pub struct Backend {
    /// The Service and port.
    pub backend: BackendRef,
    /// Its ready endpoints (empty: 503).
    pub endpoints: Arc<[SocketAddr]>,
    /// Why requests for this backend get 500 instead (a reference the ingress cannot follow,
    /// as Gateway API asks), if so.
    pub invalid: Option<String>,
    next: AtomicUsize,
}

impl Backend {
    /// A backend with its endpoints (or, with `invalid`, a reference that answers 500).
    pub fn new(backend: BackendRef, endpoints: Vec<SocketAddr>, invalid: Option<String>) -> Self {
        Backend {
            backend,
            endpoints: endpoints.into(),
            invalid,
            // A table is rebuilt on any change in the cluster: starting every backend at its
            // first endpoint would send a quiet route's requests all there.
            next: AtomicUsize::new(random_start()),
        }
    }

    /// The same backend with a fresh round robin.
    pub fn copy(&self) -> Backend {
        Backend {
            backend: self.backend.clone(),
            endpoints: Arc::clone(&self.endpoints),
            invalid: self.invalid.clone(),
            next: AtomicUsize::new(random_start()),
        }
    }

    /// The next endpoint, round robin, skipping those `skip` rejects (failed recently); `None`
    /// when there is none left.
    pub fn pick(&self, skip: impl Fn(&SocketAddr) -> bool) -> Option<SocketAddr> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| self.endpoints[(start + i) % n])
            .find(|e| !skip(e))
    }
}

/// The longest weighted schedule a route keeps; larger weight sums are scaled down to it (so
/// shares are kept to about a thousandth: 1,000,000 to 1 becomes 1,000 to 1).
const MAX_SCHEDULE: u64 = 1000;

/// The order in which weighted backends take requests: nginx's smooth weighted round robin
/// (weights 80 and 20 give `0 0 1 0 0` repeated), over the weights divided by their greatest
/// common divisor (scaled to at most [`MAX_SCHEDULE`] slots, a non-zero weight keeping at
/// least one). Backends of weight 0 get no slot.
pub fn schedule(weights: &[u32]) -> Vec<u16> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let mut weights: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
    if divisor == 0 {
        return Vec::new();
    }
    weights.iter_mut().for_each(|w| *w /= divisor);
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(&weights) {
            *c += w as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .filter(|(i, _)| weights[*i] > 0)
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        out.push(best as u16);
    }
    out
}

/// Where matching requests go: one backend (an Ingress path) or several by weight (an
/// HTTPRoute rule, an Ingress with a canary), with the settings and filters that apply.
#[derive(Debug)]
pub struct Route {
    /// What declared it: `Ingress namespace/name` or `HTTPRoute namespace/name`.
    pub source: String,
    /// The backends.
    pub backends: Box<[Backend]>,
    /// Backend indexes in weighted order (see [`schedule`]); empty when no backend has weight.
    schedule: Box<[u16]>,
    /// Timeouts and body limit.
    pub limits: Limits,
    /// What the route changes on the way (Gateway API filters, `rewrite-target`).
    pub filters: Filters,
    /// Consistent hashing by this key instead of round robin (`upstream-hash-by`).
    pub hash: Option<HashKey>,
    /// A canary Ingress's backend beside the main one.
    pub canary: Option<Canary>,
    next: AtomicUsize,
}

/// The index [`Route::choose_for`] gives the canary backend.
pub const CANARY_BACKEND: usize = usize::MAX;

impl Route {
    /// A route to one backend.
    pub fn single(source: String, backend: Backend, limits: Limits) -> Route {
        Route::weighted(source, vec![(backend, 1)], limits, Filters::default())
    }

    /// A route to several backends, each taking its weight's share of the requests.
    pub fn weighted(
        source: String,
        backends: Vec<(Backend, u32)>,
        limits: Limits,
        filters: Filters,
    ) -> Route {
        let weights: Vec<u32> = backends.iter().map(|(_, w)| *w).collect();
        Route {
            source,
            schedule: schedule(&weights).into(),
            backends: backends.into_iter().map(|(b, _)| b).collect(),
            limits,
            filters,
            hash: None,
            canary: None,
            next: AtomicUsize::new(random_start()),
        }
    }

    /// The same route with a canary (fresh counters).
    pub fn with_canary(&self, canary: Canary) -> Route {
        Route {
            source: self.source.clone(),
            backends: self.backends.iter().map(Backend::copy).collect(),
            schedule: self.schedule.clone(),
            limits: self.limits.clone(),
            filters: self.filters.clone(),
            hash: self.hash.clone(),
            canary: Some(canary),
            next: AtomicUsize::new(random_start()),
        }
    }

    /// The backend for `req`: the canary's when it takes the request, else by weight.
    pub fn choose_for(&self, req: &Request<'_>) -> Option<(usize, &Backend)> {
        if let Some(canary) = &self.canary
            && canary.takes(req)
        {
            return Some((CANARY_BACKEND, &canary.backend));
        }
        self.choose()
    }

    /// Backend `i` of [`Route::choose_for`].
    pub fn backend(&self, i: usize) -> Option<&Backend> {
        if i == CANARY_BACKEND {
            return self.canary.as_ref().map(|c| &c.backend);
        }
        self.backends.get(i)
    }

    /// The backend of the next request, by weight; `None` when no backend has weight (or the
    /// route has none).
    pub fn choose(&self) -> Option<(usize, &Backend)> {
        if self.schedule.is_empty() {
            return None;
        }
        let i = if self.schedule.len() == 1 {
            self.schedule[0]
        } else {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            self.schedule[n % self.schedule.len()]
        };
        let i = usize::from(i);
        self.backends.get(i).map(|b| (i, b))
    }
}

/// A request header edit list (Gateway API's `RequestHeaderModifier` and
/// `ResponseHeaderModifier`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Replaced (or added when missing).
    pub set: Vec<(String, String)>,
    /// Appended.
    pub add: Vec<(String, String)>,
    /// Removed.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// How a filter changes the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathChange {
    /// The whole path is replaced.
    Full(String),
    /// The part `matched` by the rule's `PathPrefix` is replaced by `with`.
    Prefix {
        /// The rule's prefix (no trailing `/`).
        matched: String,
        /// Its replacement.
        with: String,
    },
    /// ingress-nginx's `rewrite-target`.
    Regex(Rewrite),
}

impl PathChange {
    /// `path` (without the query) changed.
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathChange::Full(p) => p.clone(),
            PathChange::Prefix { matched, with } => {
                let rest = path.strip_prefix(matched.as_str()).unwrap_or(path);
                let with = with.trim_end_matches('/');
                match (with.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{with}{rest}"),
                }
            }
            PathChange::Regex(rewrite) => rewrite.apply(path).unwrap_or_else(|| path.to_owned()),
        }
    }
}

/// An HTTP redirect (`RequestRedirect`): the parts of the request's URL it replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// The host.
    pub hostname: Option<String>,
    /// The port.
    pub port: Option<u16>,
    /// The path.
    pub path: Option<PathChange>,
    /// 301 or 302 (the default).
    pub status: u16,
}

/// What a route changes on the way (Gateway API filters; empty for Ingresses).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Request headers edited before the request goes upstream.
    pub request_headers: HeaderEdits,
    /// Response headers edited before the response goes back.
    pub response_headers: HeaderEdits,
    /// Answer with a redirect instead of proxying.
    pub redirect: Option<Redirect>,
    /// The Host header upstream.
    pub rewrite_host: Option<String>,
    /// The path upstream.
    pub rewrite_path: Option<PathChange>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Decision<'a> {
    /// Proxy it to the route's endpoints (503 when it has none).
    Proxy(&'a Arc<Route>),
    /// Redirect to `https://` + the host and path (308).
    RedirectHttps,
    /// No rule and no default backend: 404.
    NotFound,
}

/// What an Ingress's annotations set on its routes.
struct Settings {
    limits: Limits,
    hash: Option<HashKey>,
}

/// The path rules of one host (or of the rules without a host).
#[derive(Debug, Default)]
struct HostRules {
    exact: HashMap<String, Arc<Route>>,
    /// Normalised prefix (no trailing `/`; the root is empty) → route.
    prefix: HashMap<String, Arc<Route>>,
    /// `use-regex` paths, longest first (as ingress-nginx orders them).
    regex: Vec<(String, Pattern, Arc<Route>)>,
    /// The defaultBackend of the oldest Ingress with rules here, if it has one.
    default: Option<Arc<Route>>,
    /// HTTP requests go to HTTPS.
    redirect: bool,
}

impl HostRules {
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(path) {
            return Some(route);
        }
        if let Some((_, _, route)) = self.regex.iter().find(|(_, p, _)| p.0.is_match(path)) {
            return Some(route);
        }
        let mut candidate = path.trim_end_matches('/');
        loop {
            if let Some(route) = self.prefix.get(candidate) {
                return Some(route);
            }
            if candidate.is_empty() {
                return None;
            }
            candidate = &candidate[..candidate.rfind('/').unwrap_or(0)];
        }
    }
}

/// A TLS certificate and key (PEM), from a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// `tls.crt`.
    pub cert: Vec<u8>,
    /// `tls.key`.
    pub key: Vec<u8>,
    /// The Secret (`namespace/name`).
    pub secret: String,
}

/// The routing table. See the module docs.
#[derive(Debug, Default)]
pub struct Table {
    exact_hosts: HashMap<String, HostRules>,
    /// `*.example.com` kept as `example.com`.
    wildcard_hosts: HashMap<String, HostRules>,
    any_host: Option<HostRules>,
    default: Option<Arc<Route>>,
    certificates: HashMap<String, Arc<Certificate>>,
    wildcard_certificates: HashMap<String, Arc<Certificate>>,
    /// Certificate of an HTTPS Gateway listener without a hostname: served for any name no
    /// other certificate covers.
    any_certificate: Option<Arc<Certificate>>,
    gateway_http: crate::gateway::HostIndex,
    gateway_https: crate::gateway::HostIndex,
    routes: usize,
    endpoints: usize,
    /// Why objects were left out, for the log.
    pub warnings: Vec<String>,
    /// Statuses to write back (Ingress load balancer addresses, Gateway API conditions).
    pub statuses: Vec<crate::gateway::StatusUpdate>,
}

/// A random starting point for a route's round robin.
pub(crate) fn random_start() -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(0);
    hasher.finish() as usize
}

/// A request path as routing sees it: `.` and `..` segments resolved and empty segments
/// merged, as nginx normalises a URI before it matches a location (`/public/../admin` must not
/// match a rule for `/public`). Percent-encoded dots count as dots.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let suspicious =
        path.contains("//") || path.contains("/.") || path.contains("%2e") || path.contains("%2E");
    if !suspicious {
        return std::borrow::Cow::Borrowed(path);
    }
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut normal = format!("/{}", out.join("/"));
    if trailing && normal != "/" {
        normal.push('/');
    }
    std::borrow::Cow::Owned(normal)
}

/// A request's host, lowercased and without the port.
pub fn host_of(header: &str) -> String {
    let host = if let Some(rest) = header.strip_prefix('[') {
        // `[v6]:port`
        rest.split(']').next().unwrap_or(rest)
    } else {
        header.rsplit_once(':').map_or(header, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                header
            }
        })
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The wildcard key of a host (`bar.example.com` → `example.com`).
fn parent(host: &str) -> Option<&str> {
    host.split_once('.')
        .map(|(_, rest)| rest)
        .filter(|r| !r.is_empty())
}

/// `namespace/name`.
pub(crate) fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// What orders objects oldest first: creation time, then `namespace/name`.
pub(crate) fn age(meta: &ObjectMeta) -> (Option<jiff::Timestamp>, String) {
    (meta.creation_timestamp.as_ref().map(|t| t.0), key(meta))
}

/// The certificate of the `kubernetes.io/tls` Secret `namespace/name`, if it has both parts.
pub(crate) fn certificate_of(
    secrets: &HashMap<(&str, &str), &Secret>,
    namespace: &str,
    name: &str,
) -> Option<Certificate> {
    let data = secrets.get(&(namespace, name))?.data.as_ref()?;
    Some(Certificate {
        cert: data.get("tls.crt")?.0.clone(),
        key: data.get("tls.key")?.0.clone(),
        secret: format!("{namespace}/{name}"),
    })
}

/// Whether `ingress` is for rudder's class among `classes`.
pub fn is_ours(ingress: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let ours = |name: &str| {
        classes.iter().any(|c| {
            c.metadata.name.as_deref() == Some(name)
                && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
        })
    };
    if let Some(name) = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
    {
        return ours(name);
    }
    if let Some(name) = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
    {
        return ours(name);
    }
    classes.iter().any(|c| {
        c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
            && c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
    })
}

/// The ready endpoints of a Service port, from its EndpointSlices.
pub struct Endpoints<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> Endpoints<'a> {
    /// The Services and EndpointSlices of `inputs`, indexed.
    pub fn new(inputs: &'a Inputs) -> Self {
        let mut services = HashMap::new();
        for svc in inputs.services.iter().map(|s| &**s) {
            if let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) {
                services.insert((ns.as_str(), name.as_str()), svc);
            }
        }
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in inputs.slices.iter().map(|s| &**s) {
            let owner = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"));
            if let (Some(ns), Some(owner)) = (&slice.metadata.namespace, owner) {
                slices
                    .entry((ns.as_str(), owner.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        Endpoints { services, slices }
    }

    /// The ready endpoints of `backend`, sorted; `Err` says why there are none.
    pub fn resolve(&self, backend: &BackendRef) -> Result<Vec<SocketAddr>, String> {
        let svc = self
            .services
            .get(&(backend.namespace.as_str(), backend.service.as_str()))
            .ok_or_else(|| {
                format!(
                    "Service {}/{} not found",
                    backend.namespace, backend.service
                )
            })?;
        let port = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .find(|p| match &backend.port {
                PortRef::Number(n) => p.port == *n,
                PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
            })
            .ok_or_else(|| format!("Service {backend} has no such port"))?;
        let port_name = port.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        for slice in self
            .slices
            .get(&(backend.namespace.as_str(), backend.service.as_str()))
            .into_iter()
            .flatten()
        {
            let Some(number) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in slice.endpoints.iter().flatten() {
                let conditions = ep.conditions.as_ref();
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true)
                    && !conditions.and_then(|c| c.terminating).unwrap_or(false);
                if !ready {
                    continue;
                }
                out.extend(
                    ep.addresses
                        .iter()
                        .filter_map(|a| a.parse::<IpAddr>().ok())
                        .map(|ip| SocketAddr::new(ip, number)),
                );
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

fn backend_ref(namespace: &str, backend: &IngressBackend) -> Option<BackendRef> {
    let svc = backend.service.as_ref()?;
    let port = svc.port.as_ref()?;
    let port = match (&port.name, port.number) {
        (Some(name), _) if !name.is_empty() => PortRef::Name(name.clone()),
        (_, Some(n)) => PortRef::Number(n),
        _ => return None,
    };
    Some(BackendRef {
        namespace: namespace.to_owned(),
        service: svc.name.clone(),
        port,
    })
}

impl Table {
    /// The table of `inputs` (see the module docs for the rules).
    pub fn build(inputs: &Inputs) -> Table {
        let mut table = Table::default();
        let endpoints = Endpoints::new(inputs);
        let mut ingresses: Vec<&Ingress> = inputs
            .ingresses
            .iter()
            .map(|i| &**i)
            .filter(|i| is_ours(i, &inputs.classes))
            .filter(|i| i.metadata.deletion_timestamp.is_none())
            .collect();
        // Oldest first: on conflicts the first one in wins.
        ingresses.sort_by_key(|i| age(&i.metadata));
        let ours = ingresses.clone();
        // One Route per (Ingress, backend): paths of an Ingress to the same backend share the
        // round robin (a `rewrite-target` path has one of its own: its rewrite is its path's).
        let mut made: BTreeMap<(String, BackendRef, Option<String>), Arc<Route>> = BTreeMap::new();
        let mut route_for = |ingress: &str,
                             backend: BackendRef,
                             settings: &Settings,
                             rewrite: Option<Rewrite>,
                             warnings: &mut Vec<String>| {
            let path = rewrite.as_ref().map(|r| r.path.0.as_str().to_owned());
            Arc::clone(
                made.entry((ingress.to_owned(), backend.clone(), path))
                    .or_insert_with(|| {
                        let resolved = endpoints.resolve(&backend).unwrap_or_else(|why| {
                            warnings.push(format!("Ingress {ingress}: {why}"));
                            Vec::new()
                        });
                        let mut route = Route::single(
                            format!("Ingress {ingress}"),
                            Backend::new(backend, resolved, None),
                            settings.limits.clone(),
                        );
                        route.filters.rewrite_path = rewrite.map(PathChange::Regex);
                        route.hash = settings.hash.clone();
                        Arc::new(route)
                    }),
            )
        };
        let secrets: HashMap<(&str, &str), &Secret> = inputs
            .secrets
            .iter()
            .map(|s| &**s)
            .filter_map(|s| {
                Some((
                    (
                        s.metadata.namespace.as_deref()?,
                        s.metadata.name.as_deref()?,
                    ),
                    s,
                ))
            })
            .collect();
        let mut canaries: Vec<(&Ingress, CanarySpec)> = Vec::new();
        for ingress in ingresses {
            let name = key(&ingress.metadata);
            let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
            let Some(spec) = &ingress.spec else { continue };
            let annotations = ingress.metadata.annotations.as_ref();
            if let Some(canary) = CanarySpec::of(&name, annotations, &mut table.warnings) {
                canaries.push((ingress, canary));
                continue;
            }
            let (regex, target) = crate::annotations::regex_paths(annotations);
            let redirect_off = ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SSL_REDIRECT_ANNOTATION))
                .is_some_and(|v| v == "false");
            let settings = Settings {
                limits: Limits::from_annotations(&name, annotations, &mut table.warnings),
                hash: crate::annotations::hash_by(&name, annotations, &mut table.warnings),
            };
            let default = spec.default_backend.as_ref().and_then(|b| {
                let backend = backend_ref(&namespace, b);
                if backend.is_none() {
                    table.warnings.push(format!(
                        "Ingress {name}: defaultBackend is not a Service port (resource backends are not supported)"
                    ));
                }
                backend.map(|b| route_for(&name, b, &settings, None, &mut table.warnings))
            });
            if table.default.is_none() {
                table.default = default.clone();
            }
            // TLS hosts and their certificates.
            let mut tls_hosts: Vec<String> = Vec::new();
            for tls in spec.tls.iter().flatten() {
                let hosts: Vec<String> = tls
                    .hosts
                    .iter()
                    .flatten()
                    .map(|h| h.to_ascii_lowercase())
                    .collect();
                tls_hosts.extend(hosts.iter().cloned());
                let Some(secret_name) = &tls.secret_name else {
                    continue;
                };
                let certificate = certificate_of(&secrets, &namespace, secret_name);
                let Some(certificate) = certificate.map(Arc::new) else {
                    table.warnings.push(format!(
                        "Ingress {name}: TLS Secret {namespace}/{secret_name} not found or without tls.crt and tls.key"
                    ));
                    continue;
                };
                for host in hosts {
                    match host.strip_prefix("*.") {
                        Some(parent) => table.wildcard_certificates.entry(parent.to_owned()),
                        None => table.certificates.entry(host),
                    }
                    .or_insert_with(|| Arc::clone(&certificate));
                }
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule
                    .host
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase);
                let rules = match &host {
                    None => table.any_host.get_or_insert_with(HostRules::default),
                    Some(h) => match h.strip_prefix("*.") {
                        Some(parent) => table.wildcard_hosts.entry(parent.to_owned()).or_default(),
                        None => table.exact_hosts.entry(h.clone()).or_default(),
                    },
                };
                if rules.default.is_none() {
                    rules.default = default.clone();
                }
                if !redirect_off && host.as_ref().is_some_and(|h| tls_hosts.contains(h)) {
                    rules.redirect = true;
                }
                for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let Some(backend) = backend_ref(&namespace, &path.backend) else {
                        table.warnings.push(format!(
                            "Ingress {name}: a path's backend is not a Service port (resource backends are not supported)"
                        ));
                        continue;
                    };
                    let p = path.path.clone().unwrap_or_else(|| "/".to_owned());
                    if regex && path.path_type != "Exact" {
                        let pattern = match crate::annotations::path_regex(&p) {
                            Ok(pattern) => pattern,
                            Err(why) => {
                                table.warnings.push(format!("Ingress {name}: {why}"));
                                continue;
                            }
                        };
                        if rules.regex.iter().any(|(text, _, _)| *text == p) {
                            continue;
                        }
                        let rewrite = target.clone().map(|target| Rewrite {
                            path: pattern.clone(),
                            target,
                        });
                        let route =
                            route_for(&name, backend, &settings, rewrite, &mut table.warnings);
                        rules.regex.push((p, pattern, route));
                        // Longest first; the older Ingress first on equal lengths.
                        rules
                            .regex
                            .sort_by_key(|(text, _, _)| std::cmp::Reverse(text.len()));
                        continue;
                    }
                    let route = route_for(&name, backend, &settings, None, &mut table.warnings);
                    let map = if path.path_type == "Exact" {
                        rules.exact.entry(p)
                    } else {
                        rules.prefix.entry(p.trim_end_matches('/').to_owned())
                    };
                    map.or_insert(route);
                }
            }
        }
        for (ingress, canary) in canaries {
            table.add_canary(ingress, &canary, &endpoints);
        }
        table.routes += made.len();
        table.endpoints = made
            .values()
            .flat_map(|r| r.backends.iter())
            .map(|b| b.endpoints.len())
            .sum();
        table.ingress_statuses(inputs, &ours);
        let gateway = crate::gateway::build(
            &inputs.gateway_classes,
            &inputs.gateways,
            &inputs.http_routes,
            &crate::gateway::Context {
                endpoints: &endpoints,
                secrets: &secrets,
                namespaces: &inputs.namespaces,
                http_port: inputs.listen.http_port,
                https_port: inputs.listen.https_port,
                addresses: &inputs.listen.addresses,
                now: &inputs.now,
            },
        );
        for (host, certificate) in gateway.certificates {
            if host.is_empty() {
                table.any_certificate.get_or_insert(certificate);
            } else {
                match host.strip_prefix("*.") {
                    Some(parent) => table.wildcard_certificates.entry(parent.to_owned()),
                    None => table.certificates.entry(host),
                }
                .or_insert(certificate);
            }
        }
        table.gateway_http = gateway.http;
        table.gateway_https = gateway.https;
        table.routes += gateway.routes;
        table.warnings.extend(gateway.warnings);
        table.statuses.extend(gateway.statuses);
        table
    }

    /// Puts a canary Ingress's backends beside the routes of the same host and path.
    fn add_canary(&mut self, ingress: &Ingress, canary: &CanarySpec, endpoints: &Endpoints<'_>) {
        let name = key(&ingress.metadata);
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        for rule in ingress.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
            let host = rule
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .map(str::to_ascii_lowercase);
            let rules = match &host {
                None => self.any_host.as_mut(),
                Some(h) => match h.strip_prefix("*.") {
                    Some(parent) => self.wildcard_hosts.get_mut(parent),
                    None => self.exact_hosts.get_mut(h),
                },
            };
            let Some(rules) = rules else {
                self.warnings.push(format!(
                    "canary Ingress {name}: no main Ingress has host {}",
                    host.as_deref().unwrap_or("(any)")
                ));
                continue;
            };
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let Some(backend) = backend_ref(&namespace, &path.backend) else {
                    continue;
                };
                let p = path.path.clone().unwrap_or_else(|| "/".to_owned());
                let slot = if path.path_type == "Exact" {
                    rules.exact.get_mut(&p)
                } else {
                    match rules.prefix.get_mut(p.trim_end_matches('/')) {
                        Some(route) => Some(route),
                        None => rules
                            .regex
                            .iter_mut()
                            .find(|(text, _, _)| *text == p)
                            .map(|(_, _, route)| route),
                    }
                };
                let Some(route) = slot else {
                    self.warnings.push(format!(
                        "canary Ingress {name}: no main Ingress has path {p}"
                    ));
                    continue;
                };
                let resolved = endpoints.resolve(&backend).unwrap_or_else(|why| {
                    self.warnings.push(format!("canary Ingress {name}: {why}"));
                    Vec::new()
                });
                let canary = canary.canary(name.clone(), Backend::new(backend, resolved, None));
                *route = Arc::new(route.with_canary(canary));
                self.routes += 1;
            }
        }
    }

    /// `status.loadBalancer.ingress` of our Ingresses: the listen addresses (written only when
    /// there are some, and only when different).
    fn ingress_statuses(&mut self, inputs: &Inputs, ours: &[&Ingress]) {
        if inputs.listen.addresses.is_empty() {
            return;
        }
        let wanted: Vec<String> = inputs
            .listen
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        // One status for all (an Arc: a thousand Ingresses do not make a thousand copies).
        let status = Arc::new(serde_json::json!({"loadBalancer": {"ingress":
            wanted.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>()}}));
        for ingress in ours {
            let current = ingress
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            let same = current.is_some_and(|list| {
                list.len() == wanted.len()
                    && list.iter().zip(&wanted).all(|(have, want)| {
                        have.ip.as_deref() == Some(want.as_str())
                            && have.hostname.is_none()
                            && have.ports.is_none()
                    })
            });
            if same {
                continue;
            }
            self.statuses.push(crate::gateway::StatusUpdate {
                kind: crate::gateway::StatusKind::Ingress,
                namespace: ingress.metadata.namespace.clone(),
                name: ingress.metadata.name.clone().unwrap_or_default(),
                status: Arc::clone(&status),
            });
        }
    }

    /// Where a request for `host` (the Host header or `:authority`) and `path` goes; `tls` when
    /// it came over HTTPS. (A GET without headers: see [`Table::route_request`].)
    pub fn route(&self, host: &str, path: &str, tls: bool) -> Decision<'_> {
        self.route_request(&Request {
            host,
            target: path,
            method: "GET",
            headers: None,
            tls,
        })
    }

    /// Where a request goes: a Gateway route that matches it, else the Ingress rules.
    pub fn route_request(&self, req: &Request<'_>) -> Decision<'_> {
        let host = host_of(req.host);
        let gateway = if req.tls {
            &self.gateway_https
        } else {
            &self.gateway_http
        };
        // A host an Ingress names exactly stays the Ingress's: a Gateway route of another
        // namespace cannot take it over.
        if !gateway.is_empty()
            && !self.exact_hosts.contains_key(&host)
            && let Some(route) = gateway.find(&host, req)
        {
            return Decision::Proxy(route);
        }
        let path = normalize_path(req.path());
        let path: &str = &path;
        let rules = self
            .exact_hosts
            .get(&host)
            .or_else(|| parent(&host).and_then(|p| self.wildcard_hosts.get(p)))
            .or(self.any_host.as_ref());
        if let Some(rules) = rules {
            if rules.redirect && !req.tls {
                return Decision::RedirectHttps;
            }
            if let Some(route) = rules.find(path).or(rules.default.as_ref()) {
                return Decision::Proxy(route);
            }
        }
        match &self.default {
            Some(route) => Decision::Proxy(route),
            None => Decision::NotFound,
        }
    }

    /// The certificate for a TLS handshake's server name (exact, then wildcard).
    pub fn certificate(&self, server_name: &str) -> Option<&Arc<Certificate>> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        self.certificates
            .get(&name)
            .or_else(|| parent(&name).and_then(|p| self.wildcard_certificates.get(p)))
            .or(self.any_certificate.as_ref())
    }

    /// Whether any certificate is known (the HTTPS listener has something to serve).
    pub fn has_certificates(&self) -> bool {
        !self.certificates.is_empty()
            || !self.wildcard_certificates.is_empty()
            || self.any_certificate.is_some()
    }

    /// How many distinct routes (Ingress and backend) the table holds.
    pub fn route_count(&self) -> usize {
        self.routes
    }

    /// How many ready endpoints the routes have (an endpoint of two routes counts twice).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn inputs(ingresses: Vec<serde_json::Value>) -> Inputs {
        let svc = |name: &str, ports: serde_json::Value| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"ports": ports},
                }))
                .expect("service"),
            )
        };
        let slice = |svc: &str,
                     port_name: Option<&str>,
                     port: u16,
                     ips: &[(&str, bool)]|
         -> Arc<EndpointSlice> {
            Arc::new(serde_json::from_value(json!({
                "metadata": {"name": format!("{svc}-x"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "ports": [{"name": port_name, "port": port}],
                "endpoints": ips.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect::<Vec<_>>(),
            }))
            .expect("slice"))
        };
        Inputs {
            ingresses: ingresses
                .into_iter()
                .map(|v| Arc::new(serde_json::from_value(v).expect("ingress")))
                .collect(),
            classes: vec![
                Arc::new(serde_json::from_value(json!({
                    "metadata": {"name": "rudder", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
                    "spec": {"controller": CONTROLLER},
                }))
                .expect("class")),
                Arc::new(serde_json::from_value(json!({
                    "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"},
                }))
                .expect("class")),
            ],
            services: vec![
                svc("web", json!([{"name": "http", "port": 80, "targetPort": 8080}])),
                svc("api", json!([{"port": 9000, "targetPort": 9000}])),
                svc("fallback", json!([{"name": "http", "port": 80}])),
            ],
            slices: vec![
                slice("web", Some("http"), 8080, &[("10.244.1.5", true), ("10.244.2.6", true), ("10.244.3.7", false)]),
                slice("api", None, 9000, &[("10.244.1.9", true)]),
            ],
            secrets: vec![Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": "web-tls", "namespace": "default"},
                    "type": "kubernetes.io/tls",
                    "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
                }))
                .expect("secret"),
            )],
            ..Inputs::default()
        }
    }

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": created}, "spec": spec})
    }

    /// `service:port`, `redirect` or `404`.
    fn to(table: &Table, host: &str, path: &str, tls: bool) -> String {
        match table.route(host, path, tls) {
            Decision::Proxy(r) => match &r.backends[0].backend.port {
                PortRef::Number(n) => format!("{}:{n}", r.backends[0].backend.service),
                PortRef::Name(n) => format!("{}:{n}", r.backends[0].backend.service),
            },
            Decision::RedirectHttps => "redirect".into(),
            Decision::NotFound => "404".into(),
        }
    }

    fn main_ingress() -> serde_json::Value {
        ingress(
            "main",
            "2026-01-01T00:00:00Z",
            json!({
                "tls": [{"hosts": ["secure.example.com"], "secretName": "web-tls"}],
                "rules": [
                    {"host": "www.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
                        {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 9000}}}},
                        {"path": "/api/v1/exact", "pathType": "Exact", "backend": {"service": {"name": "fallback", "port": {"number": 80}}}},
                        {"path": "/api/v1/exact", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                    ]}},
                    {"host": "*.apps.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 9000}}}},
                    ]}},
                    {"host": "secure.example.com", "http": {"paths": [
                        {"path": "/only", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                    ]}},
                ],
            }),
        )
    }

    #[test]
    fn hosts_paths_and_precedence() {
        let table = Table::build(&inputs(vec![main_ingress()]));
        for (host, path, want) in [
            ("www.example.com", "/", "web:http"),
            ("WWW.Example.com:8080", "/index.html", "web:http"),
            // Element-wise prefixes.
            ("www.example.com", "/api", "api:9000"),
            ("www.example.com", "/api/", "api:9000"),
            ("www.example.com", "/api/users?x=1", "api:9000"),
            ("www.example.com", "/apix", "web:http"),
            // Exact beats Prefix for the same path; the longest match wins otherwise.
            ("www.example.com", "/api/v1/exact", "fallback:80"),
            ("www.example.com", "/api/v1/exact/more", "web:80"),
            // Single-label wildcard.
            ("shop.apps.example.com", "/", "api:9000"),
            ("a.shop.apps.example.com", "/", "404"),
            ("apps.example.com", "/", "404"),
            // Unknown host, no default backend.
            ("other.example.com", "/", "404"),
            // TLS host: HTTP is redirected; HTTPS routed; unmatched path 404.
            ("secure.example.com", "/only", "redirect"),
        ] {
            assert_eq!(to(&table, host, path, false), want, "{host}{path}");
        }
        assert_eq!(to(&table, "secure.example.com", "/only", true), "web:80");
        assert_eq!(to(&table, "secure.example.com", "/other", true), "404");
        let cert = table
            .certificate("Secure.Example.com")
            .expect("certificate");
        assert_eq!(
            (cert.cert.as_slice(), cert.key.as_slice()),
            (&b"cert"[..], &b"key"[..])
        );
        assert!(table.certificate("www.example.com").is_none());
        assert!(table.warnings.is_empty(), "{:?}", table.warnings);
    }

    #[test]
    fn endpoints_are_the_ready_target_ports_round_robin() {
        let table = Table::build(&inputs(vec![main_ingress()]));
        let Decision::Proxy(web) = table.route("www.example.com", "/", false) else {
            panic!("web is routed");
        };
        assert_eq!(
            web.backends[0]
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.244.1.5:8080", "10.244.2.6:8080"]
        );
        let picks: Vec<SocketAddr> = (0..4)
            .filter_map(|_| web.backends[0].pick(|_| false))
            .collect();
        assert_eq!(picks[0], picks[2]);
        assert_ne!(picks[0], picks[1]);
        // A failed endpoint is skipped; all failed: none.
        let bad: SocketAddr = "10.244.1.5:8080".parse().expect("addr");
        assert!((0..4).all(|_| web.backends[0].pick(|e| *e == bad) != Some(bad)));
        assert_eq!(web.backends[0].pick(|_| true), None);
        let Decision::Proxy(api) = table.route("www.example.com", "/api", false) else {
            panic!("api is routed");
        };
        assert_eq!(api.backends[0].endpoints.len(), 1);
    }

    #[test]
    fn classes_defaults_and_conflicts() {
        let other_class = ingress(
            "theirs",
            "2025-01-01T00:00:00Z",
            json!({"ingressClassName": "nginx", "rules": [{"host": "www.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 9000}}}}]}}]}),
        );
        let newer = ingress(
            "newer",
            "2026-06-01T00:00:00Z",
            json!({"ingressClassName": "rudder",
                   "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                   "rules": [{"host": "www.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 9000}}}},
                {"path": "/new", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"number": 9000}}}}]}},
                {"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "missing", "port": {"number": 80}}}}]}}]}),
        );
        let table = Table::build(&inputs(vec![newer, other_class, main_ingress()]));
        // Another class's Ingress is ignored; the older of two on the same path wins; a newer
        // Ingress still adds its own paths.
        assert_eq!(to(&table, "www.example.com", "/", false), "web:http");
        assert_eq!(to(&table, "www.example.com", "/new", false), "api:9000");
        // No host: the host-less rules (an unknown Service: no endpoints, and a warning).
        let Decision::Proxy(missing) = table.route("nobody.test", "/", false) else {
            panic!("host-less rule");
        };
        assert!(missing.backends[0].endpoints.is_empty());
        assert!(
            table
                .warnings
                .iter()
                .any(|w| w.contains("Service default/missing not found")),
            "{:?}",
            table.warnings
        );
        // The default backend serves what no path matches.
        assert_eq!(
            to(&table, "secure.example.com", "/elsewhere", true),
            "fallback:80"
        );
        // Without the default class, an Ingress without a class name is not ours.
        let mut plain = inputs(vec![main_ingress()]);
        Arc::make_mut(&mut plain.classes[0]).metadata.annotations = None;
        assert_eq!(
            to(&Table::build(&plain), "www.example.com", "/", false),
            "404"
        );
    }

    #[test]
    fn annotations_set_timeouts_and_the_body_limit() {
        let mut annotated = main_ingress();
        annotated["metadata"]["annotations"] = json!({
            READ_TIMEOUT_ANNOTATION: "5",
            BODY_SIZE_ANNOTATION: "8m",
            CONNECT_TIMEOUT_ANNOTATION: "soon",
        });
        let table = Table::build(&inputs(vec![annotated]));
        let Decision::Proxy(route) = table.route("www.example.com", "/", false) else {
            panic!("routed");
        };
        assert_eq!(route.limits.read_timeout, Duration::from_secs(5));
        assert_eq!(route.limits.max_body, Some(8 << 20));
        assert_eq!(route.limits.connect_timeout, Duration::from_secs(5));
        assert!(
            table
                .warnings
                .iter()
                .any(|w| w.contains("\"soon\" is not a number of seconds")),
            "{:?}",
            table.warnings
        );
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("1x"), None);
        let unlimited = {
            let mut i = main_ingress();
            i["metadata"]["annotations"] = json!({BODY_SIZE_ANNOTATION: "0"});
            Table::build(&inputs(vec![i]))
        };
        let Decision::Proxy(route) = unlimited.route("www.example.com", "/", false) else {
            panic!("routed");
        };
        assert_eq!(route.limits.max_body, None);
    }

    #[test]
    fn canaries_and_regex_paths() {
        let mut canary = ingress(
            "canary",
            "2026-02-01T00:00:00Z",
            json!({"rules": [{"host": "www.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 9000}}}}]}},
                {"host": "nowhere.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 9000}}}}]}}]}),
        );
        canary["metadata"]["annotations"] = json!({
            "nginx.ingress.kubernetes.io/canary": "true",
            "nginx.ingress.kubernetes.io/canary-weight": "50",
        });
        let mut regex = ingress(
            "regex",
            "2026-03-01T00:00:00Z",
            json!({"rules": [{"host": "re.example.com", "http": {"paths": [
                {"path": "/something(/|$)(.*)", "pathType": "ImplementationSpecific",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}),
        );
        regex["metadata"]["annotations"] =
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"});
        let table = Table::build(&inputs(vec![main_ingress(), canary, regex]));
        // Half of the main path's requests go to the canary's backend.
        let Decision::Proxy(route) = table.route("www.example.com", "/", false) else {
            panic!("routed");
        };
        let req = Request {
            host: "www.example.com",
            target: "/",
            method: "GET",
            headers: None,
            tls: false,
        };
        let to_api = (0..10)
            .filter_map(|_| route.choose_for(&req))
            .filter(|(_, b)| b.backend.service == "api")
            .count();
        assert_eq!(to_api, 5);
        // A canary without a main Ingress for its host routes nothing.
        assert_eq!(to(&table, "nowhere.example.com", "/", false), "404");
        assert!(
            table
                .warnings
                .iter()
                .any(|w| w.contains("no main Ingress has host nowhere.example.com")),
            "{:?}",
            table.warnings
        );
        // rewrite-target: the path is a case-insensitive regular expression; the upstream path
        // is the target with the captures.
        let Decision::Proxy(route) = table.route("re.example.com", "/SOMETHING/x", false) else {
            panic!("routed");
        };
        let rewritten = route
            .filters
            .rewrite_path
            .as_ref()
            .map(|c| c.apply("/something/a/b"));
        assert_eq!(rewritten.as_deref(), Some("/a/b"));
        assert_eq!(to(&table, "re.example.com", "/other", false), "404");
    }

    #[test]
    fn ingress_statuses_are_written_once() {
        let mut objects = inputs(vec![main_ingress()]);
        objects.listen.addresses = vec!["192.0.2.10".parse().expect("ip")];
        let first = Table::build(&objects);
        assert_eq!(first.statuses.len(), 1);
        let mut stored = main_ingress();
        stored["status"] = (*first.statuses[0].status).clone();
        objects.ingresses = vec![Arc::new(serde_json::from_value(stored).expect("ingress"))];
        assert_eq!(Table::build(&objects).statuses, []);
    }

    #[test]
    fn paths_are_normalised_before_matching() {
        let table = Table::build(&inputs(vec![main_ingress()]));
        assert_eq!(
            to(&table, "www.example.com", "/api/../index", false),
            "web:http"
        );
        assert_eq!(
            to(&table, "www.example.com", "/x/%2e%2e/api/v1", false),
            "api:9000"
        );
        assert_eq!(to(&table, "www.example.com", "//api", false), "api:9000");
        assert_eq!(normalize_path("/a/./b/../c/"), "/a/c/");
        assert_eq!(normalize_path("/../.."), "/");
        assert_eq!(normalize_path("/plain/path"), "/plain/path");
    }

    #[test]
    fn hosts_are_parsed_like_headers() {
        assert_eq!(host_of("Example.COM:8443"), "example.com");
        assert_eq!(host_of("example.com."), "example.com");
        assert_eq!(host_of("[fd00::1]:80"), "fd00::1");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
