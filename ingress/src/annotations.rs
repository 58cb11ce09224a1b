//! The ingress-nginx annotations beyond timeouts and body size that map cleanly onto rudder's
//! routes, with ingress-nginx's meaning:
//!
//! - **`rewrite-target`** (with `use-regex`): the Ingress's paths are regular expressions,
//!   matched case-insensitively from the start of the path, longest path first, after `Exact`
//!   paths and before prefixes; the upstream path becomes the target with `$1`… replaced by the
//!   path's captures (the query is kept). `use-regex: "true"` alone makes the paths regular
//!   expressions without rewriting.
//! - **`limit-rps`** (and `limit-burst-multiplier`, default 5): requests per second per client
//!   address, per Ingress; a client may go `rps × multiplier` requests ahead of the rate, and
//!   what goes beyond gets 503 (ingress-nginx's `limit-req-status-code`). Counted per ingress
//!   process.
//! - **`upstream-hash-by`**: consistent hashing instead of round robin: the key is made of
//!   nginx variables (`$remote_addr`, `$request_uri`, `$uri`, `$host`, `$http_<header>`,
//!   `$cookie_<name>`, `$arg_<name>`) and text; an endpoint is chosen by rendezvous hashing, so a
//!   change of endpoints moves only the keys of the endpoints that came or went.
//! - **Canary** (`canary: "true"` on a second Ingress with the same host and path): the
//!   canary's backend takes the requests that `canary-by-header` (`always`/`never`, or
//!   `canary-by-header-value` / `canary-by-header-pattern`), else `canary-by-cookie`
//!   (`always`/`never`), else `canary-weight` out of `canary-weight-total` (default 100) send
//!   it, in that order. A canary Ingress without a main Ingress for its path is ignored, as
//!   ingress-nginx does.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::routes::{Backend, Request};

const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// `rewrite-target`.
pub const REWRITE_TARGET: &str = "nginx.ingress.kubernetes.io/rewrite-target";
/// `use-regex`.
pub const USE_REGEX: &str = "nginx.ingress.kubernetes.io/use-regex";
/// `limit-rps`.
pub const LIMIT_RPS: &str = "nginx.ingress.kubernetes.io/limit-rps";
/// `limit-burst-multiplier`.
pub const LIMIT_BURST_MULTIPLIER: &str = "nginx.ingress.kubernetes.io/limit-burst-multiplier";
/// `upstream-hash-by`.
pub const UPSTREAM_HASH_BY: &str = "nginx.ingress.kubernetes.io/upstream-hash-by";
/// `canary`.
pub const CANARY: &str = "nginx.ingress.kubernetes.io/canary";

/// A compiled regular expression compared by its text.
#[derive(Clone, Debug)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

/// A `rewrite-target`: the path's regular expression and the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// The path, as nginx matches it (`(?i)^<path>`).
    pub path: Pattern,
    /// The target, `$n` written `${n}`.
    pub target: String,
}

impl Rewrite {
    /// The upstream path for `path` (the whole path is replaced, as nginx's `rewrite` does);
    /// `None` when the path does not match.
    pub fn apply(&self, path: &str) -> Option<String> {
        let captures = self.path.0.captures(path)?;
        let mut out = String::new();
        captures.expand(&self.target, &mut out);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Some(out)
    }
}

/// nginx's `$1` is `${1}` for the regex crate (which would read `$1abc` as a group named
/// `1abc`).
fn braced_groups(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    let mut chars = target.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push_str("${");
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                out.push(d);
                chars.next();
            }
            out.push('}');
        } else {
            out.push(c);
        }
    }
    out
}

/// The regular expression of an Ingress path under `use-regex` (case-insensitive, from the
/// start of the path).
pub fn path_regex(path: &str) -> Result<Pattern, String> {
    regex::Regex::new(&format!("(?i)^{path}"))
        .map(Pattern)
        .map_err(|e| format!("path {path:?} is not a regular expression: {e}"))
}

/// A rate limit (`limit-rps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second.
    pub rps: u32,
    /// How many requests a client may go ahead of the rate.
    pub burst: u32,
}

/// One part of an `upstream-hash-by` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// Literal text.
    Text(String),
    /// `$remote_addr`.
    RemoteAddr,
    /// `$request_uri` (path and query).
    RequestUri,
    /// `$uri` (the path).
    Uri,
    /// `$host`.
    Host,
    /// `$http_<name>` (`_` for `-`).
    Header(String),
    /// `$cookie_<name>`.
    Cookie(String),
    /// `$arg_<name>`.
    Arg(String),
}

/// An `upstream-hash-by` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashKey(pub Vec<KeyPart>);

impl HashKey {
    /// Parses nginx variables and text; an unknown variable is an error.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        let mut parts = Vec::new();
        let mut rest = s.trim();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('$') {
                let after = after.strip_prefix('{').unwrap_or(after);
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                let name = &after[..end];
                rest = after[end..].strip_prefix('}').unwrap_or(&after[end..]);
                parts.push(match name {
                    "remote_addr" | "binary_remote_addr" => KeyPart::RemoteAddr,
                    "request_uri" => KeyPart::RequestUri,
                    "uri" => KeyPart::Uri,
                    "host" => KeyPart::Host,
                    n if n.starts_with("http_") => {
                        KeyPart::Header(n["http_".len()..].replace('_', "-"))
                    }
                    n if n.starts_with("cookie_") => {
                        KeyPart::Cookie(n["cookie_".len()..].to_owned())
                    }
                    n if n.starts_with("arg_") => KeyPart::Arg(n["arg_".len()..].to_owned()),
                    n => return Err(format!("variable ${n} is not supported")),
                });
            } else {
                let end = rest.find('$').unwrap_or(rest.len());
                parts.push(KeyPart::Text(rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
        Ok(HashKey(parts))
    }

    /// The request's key, hashed.
    pub fn hash(&self, req: &Request<'_>, client: Option<IpAddr>) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        for part in &self.0 {
            match part {
                KeyPart::Text(t) => t.hash(&mut hasher),
                KeyPart::RemoteAddr => client.hash(&mut hasher),
                KeyPart::RequestUri => req.target.hash(&mut hasher),
                KeyPart::Uri => req.path().hash(&mut hasher),
                KeyPart::Host => crate::routes::host_of(req.host).hash(&mut hasher),
                KeyPart::Header(h) => header(req, h).hash(&mut hasher),
                KeyPart::Cookie(c) => cookie(req, c).hash(&mut hasher),
                KeyPart::Arg(a) => req
                    .query()
                    .find(|(k, _)| k == a)
                    .map(|(_, v)| v)
                    .hash(&mut hasher),
            }
        }
        hasher.finish()
    }
}

fn header<'a>(req: &Request<'a>, name: &str) -> Option<&'a str> {
    req.headers?.get(name)?.to_str().ok()
}

fn cookie<'a>(req: &Request<'a>, name: &str) -> Option<&'a str> {
    req.headers?
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The endpoint for `key` among those `skip` leaves (rendezvous hashing).
pub fn rendezvous(
    key: u64,
    endpoints: &[std::net::SocketAddr],
    skip: impl Fn(&std::net::SocketAddr) -> bool,
) -> Option<std::net::SocketAddr> {
    endpoints
        .iter()
        .filter(|e| !skip(e))
        .max_by_key(|e| {
            let mut h = std::hash::DefaultHasher::new();
            key.hash(&mut h);
            e.hash(&mut h);
            h.finish()
        })
        .copied()
}

/// How a canary's header decides.
#[derive(Clone, Debug)]
pub enum HeaderRule {
    /// `always` and `never`.
    AlwaysNever,
    /// `canary-by-header-value`.
    Value(String),
    /// `canary-by-header-pattern`.
    Pattern(Pattern),
}

/// A canary backend beside a route's main one (see the module docs).
#[derive(Debug)]
pub struct Canary {
    /// The canary Ingress (`namespace/name`).
    pub source: String,
    /// Its backend.
    pub backend: Backend,
    /// `canary-by-header`.
    pub header: Option<(String, HeaderRule)>,
    /// `canary-by-cookie`.
    pub cookie: Option<String>,
    /// 0 (main) and 1 (canary) in weighted order; empty: weight 0.
    schedule: Box<[u16]>,
    next: AtomicUsize,
}

/// The canary settings of an Ingress, parsed (without the backend, which is per path).
#[derive(Clone, Debug)]
pub struct CanarySpec {
    header: Option<(String, HeaderRule)>,
    cookie: Option<String>,
    weight: u32,
    total: u32,
}

impl CanarySpec {
    /// The canary settings of `annotations`, if the Ingress is a canary; problems are warnings.
    pub fn of(
        ingress: &str,
        annotations: Option<&BTreeMap<String, String>>,
        warnings: &mut Vec<String>,
    ) -> Option<CanarySpec> {
        let annotations = annotations?;
        if annotations.get(CANARY).map(String::as_str) != Some("true") {
            return None;
        }
        let get = |k: &str| {
            annotations
                .get(&format!("{PREFIX}{k}"))
                .filter(|v| !v.is_empty())
        };
        let number = |k: &str, default: u32, warnings: &mut Vec<String>| match get(k) {
            None => default,
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                warnings.push(format!(
                    "Ingress {ingress}: {PREFIX}{k}: {v:?} is not a number"
                ));
                default
            }),
        };
        let total = number("canary-weight-total", 100, warnings).max(1);
        let weight = number("canary-weight", 0, warnings).min(total);
        let header = get("canary-by-header").map(|name| {
            let rule = if let Some(v) = get("canary-by-header-value") {
                HeaderRule::Value(v.clone())
            } else if let Some(p) = get("canary-by-header-pattern") {
                match regex::Regex::new(p) {
                    Ok(r) => HeaderRule::Pattern(Pattern(r)),
                    Err(e) => {
                        warnings.push(format!("Ingress {ingress}: canary-by-header-pattern: {e}"));
                        HeaderRule::AlwaysNever
                    }
                }
            } else {
                HeaderRule::AlwaysNever
            };
            (name.to_ascii_lowercase(), rule)
        });
        Some(CanarySpec {
            header,
            cookie: get("canary-by-cookie").cloned(),
            weight,
            total,
        })
    }

    /// The canary for one path, sending to `backend`.
    pub fn canary(&self, source: String, backend: Backend) -> Canary {
        Canary {
            source,
            backend,
            header: self.header.clone(),
            cookie: self.cookie.clone(),
            schedule: crate::routes::schedule(&[self.total - self.weight, self.weight]).into(),
            // Tables are rebuilt on any change: starting at 0 each time would send a quiet
            // route's few requests all to the main backend.
            next: AtomicUsize::new(crate::routes::random_start()),
        }
    }
}

impl Canary {
    /// Whether `req` goes to the canary.
    pub fn takes(&self, req: &Request<'_>) -> bool {
        if let Some((name, rule)) = &self.header
            && let Some(value) = header(req, name)
        {
            match rule {
                HeaderRule::AlwaysNever if value == "always" => return true,
                HeaderRule::AlwaysNever if value == "never" => return false,
                HeaderRule::Value(v) if value == v => return true,
                HeaderRule::Pattern(p) if p.0.is_match(value) => return true,
                _ => {}
            }
        }
        if let Some(name) = &self.cookie
            && let Some(value) = cookie(req, name)
        {
            match value {
                "always" => return true,
                "never" => return false,
                _ => {}
            }
        }
        if self.schedule.is_empty() {
            return false;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.schedule[n % self.schedule.len()] == 1
    }
}

/// The rate limit of an Ingress, if it sets one.
pub fn rate(
    ingress: &str,
    annotations: Option<&BTreeMap<String, String>>,
    warnings: &mut Vec<String>,
) -> Option<Rate> {
    let annotations = annotations?;
    let rps = annotations.get(LIMIT_RPS)?;
    let Ok(rps) = rps.trim().parse::<u32>() else {
        warnings.push(format!(
            "Ingress {ingress}: {LIMIT_RPS}: {rps:?} is not a number"
        ));
        return None;
    };
    if rps == 0 {
        return None;
    }
    let multiplier = annotations
        .get(LIMIT_BURST_MULTIPLIER)
        .and_then(|m| m.trim().parse::<u32>().ok())
        .unwrap_or(5)
        .max(1);
    Some(Rate {
        rps,
        burst: rps.saturating_mul(multiplier),
    })
}

/// The `rewrite-target` and `use-regex` of an Ingress: (regex paths, target).
pub fn regex_paths(annotations: Option<&BTreeMap<String, String>>) -> (bool, Option<String>) {
    let Some(annotations) = annotations else {
        return (false, None);
    };
    let target = annotations.get(REWRITE_TARGET).map(|t| braced_groups(t));
    let regex = target.is_some() || annotations.get(USE_REGEX).is_some_and(|v| v == "true");
    (regex, target)
}

/// The `upstream-hash-by` key of an Ingress, if it sets one.
pub fn hash_by(
    ingress: &str,
    annotations: Option<&BTreeMap<String, String>>,
    warnings: &mut Vec<String>,
) -> Option<HashKey> {
    let v = annotations?.get(UPSTREAM_HASH_BY)?;
    HashKey::parse(v)
        .map_err(|e| warnings.push(format!("Ingress {ingress}: {UPSTREAM_HASH_BY}: {e}")))
        .ok()
}

/// Token buckets of rate-limited clients, per Ingress.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: std::sync::Mutex<std::collections::HashMap<(String, IpAddr), Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    rate: Rate,
}

impl Bucket {
    /// Whether the bucket is full again at `now` (its client has been quiet long enough to be
    /// forgotten).
    fn full(&self, now: std::time::Instant) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * f64::from(self.rate.rps)
            >= f64::from(self.rate.burst.max(1))
    }
}

/// How many buckets are kept: beyond it the full ones are dropped, and if that is not enough
/// all are (the limit fails open rather than grow without bound or scan on every request).
const MAX_BUCKETS: usize = 65_536;

impl Limiter {
    /// Whether a request of `client` to `ingress` is within `rate` (and counts it).
    pub fn allow(&self, ingress: &str, client: IpAddr, rate: Rate) -> bool {
        let now = std::time::Instant::now();
        let capacity = f64::from(rate.burst.max(1));
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| !b.full(now));
            if buckets.len() >= MAX_BUCKETS / 2 {
                buckets.clear();
            }
        }
        let bucket = buckets
            .entry((ingress.to_owned(), client))
            .or_insert(Bucket {
                tokens: capacity,
                at: now,
                rate,
            });
        bucket.rate = rate;
        let refill = now.duration_since(bucket.at).as_secs_f64() * f64::from(rate.rps);
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(target: &'a str, headers: &'a http::HeaderMap) -> Request<'a> {
        Request {
            host: "shop.test",
            target,
            method: "GET",
            headers: Some(headers),
            tls: false,
        }
    }

    #[test]
    fn rewrite_targets_use_the_captures() {
        let rewrite = Rewrite {
            path: path_regex("/something(/|$)(.*)").expect("regex"),
            target: braced_groups("/$2"),
        };
        assert_eq!(rewrite.apply("/something/new/x").as_deref(), Some("/new/x"));
        assert_eq!(rewrite.apply("/something").as_deref(), Some("/"));
        assert_eq!(rewrite.apply("/SOMETHING/a").as_deref(), Some("/a"));
        assert_eq!(rewrite.apply("/other"), None);
        assert_eq!(braced_groups("/v2/$1abc$"), "/v2/${1}abc$");
    }

    #[test]
    fn canaries_by_header_cookie_then_weight() {
        let annotations: BTreeMap<String, String> = [
            (CANARY, "true"),
            ("nginx.ingress.kubernetes.io/canary-by-header", "X-Canary"),
            ("nginx.ingress.kubernetes.io/canary-by-cookie", "canary"),
            ("nginx.ingress.kubernetes.io/canary-weight", "25"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut warnings = Vec::new();
        let spec = CanarySpec::of("default/c", Some(&annotations), &mut warnings).expect("canary");
        let backend = Backend::new(
            crate::routes::BackendRef {
                namespace: "default".into(),
                service: "v2".into(),
                port: crate::routes::PortRef::Number(80),
            },
            Vec::new(),
            None,
        );
        let canary = spec.canary("default/c".into(), backend);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-canary", "always".parse().expect("value"));
        headers.insert(http::header::COOKIE, "canary=never".parse().expect("value"));
        assert!(
            canary.takes(&request("/", &headers)),
            "the header comes first"
        );
        headers.insert("x-canary", "never".parse().expect("value"));
        assert!(!canary.takes(&request("/", &headers)));
        headers.remove("x-canary");
        headers.insert(
            http::header::COOKIE,
            "a=b; canary=always".parse().expect("value"),
        );
        assert!(canary.takes(&request("/", &headers)), "then the cookie");
        let empty = http::HeaderMap::new();
        let taken = (0..100)
            .filter(|_| canary.takes(&request("/", &empty)))
            .count();
        assert_eq!(taken, 25, "then the weight");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn hash_keys_are_stable_and_consistent() {
        let key = HashKey::parse("$http_x_user-$arg_id").expect("key");
        assert_eq!(key.0.len(), 3);
        assert!(HashKey::parse("$bogus").is_err());
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", "alice".parse().expect("value"));
        let a = key.hash(&request("/?id=1", &headers), None);
        assert_eq!(a, key.hash(&request("/other?id=1", &headers), None));
        assert_ne!(a, key.hash(&request("/?id=2", &headers), None));
        let endpoints: Vec<std::net::SocketAddr> = (1..=10)
            .map(|i| format!("10.0.0.{i}:80").parse().expect("addr"))
            .collect();
        // Removing one endpoint moves only the keys that were on it.
        let mut moved = 0;
        for k in 0..1000u64 {
            let before = rendezvous(k, &endpoints, |_| false).expect("endpoint");
            let after = rendezvous(k, &endpoints[1..], |_| false).expect("endpoint");
            if before != after {
                assert_eq!(before, endpoints[0]);
                moved += 1;
            }
        }
        assert!((50..=150).contains(&moved), "{moved}");
    }

    #[test]
    fn rate_limits_allow_the_burst_then_the_rate() {
        let limiter = Limiter::default();
        let rate = Rate { rps: 2, burst: 4 };
        let client: IpAddr = "192.0.2.1".parse().expect("ip");
        let allowed = (0..10)
            .filter(|_| limiter.allow("default/a", client, rate))
            .count();
        assert_eq!(allowed, 4);
        // Another client and another Ingress have their own buckets.
        assert!(limiter.allow("default/a", "192.0.2.2".parse().expect("ip"), rate));
        assert!(limiter.allow("default/b", client, rate));
    }
}
