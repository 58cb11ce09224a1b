//! The pingora `ProxyHttp` in front of the routing table.
//!
//! Per request: the current [`Table`] decides (a 308 to HTTPS, a 404 page, or a route). A
//! route with a `RequestRedirect` answers the redirect; a rate-limited client gets 503; then the
//! backend is chosen (the canary's when it takes the request, else by weight; a reference that
//! could not be followed answers 500, a backend without ready endpoints 503), and its next
//! endpoint, round robin (or by the `upstream-hash-by` key's rendezvous hash), that has not
//! failed recently is the upstream. Gateway API filters and `rewrite-target` change the request
//! (path, Host, headers) and the response headers on the way. Upstream connections are pooled and kept alive by
//! pingora (idle for up to [`UPSTREAM_IDLE`]). A connection that cannot be made marks the
//! endpoint failed for [`FAILED_FOR`] (passive health) and the request is retried, on another
//! endpoint when the route has one, up to [`RETRIES`] times. WebSocket and other HTTP/1.1 upgrades pass through. The
//! Ingress's [`crate::routes::Limits`] set the upstream timeouts and the largest request body
//! (413 beyond it, from `Content-Length` or counted as a chunked body streams).
//!
//! Headers added upstream, as ingress-nginx does: `X-Forwarded-For` (the client appended),
//! `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Port`. The Host header is
//! passed unchanged. Every request is logged (target `rudder_ingress::access`, level info):
//! method, host, path, status, upstream, duration; and counted in the [`crate::metrics`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::{
    Error, ErrorType, Result,
    http::{RequestHeader, ResponseHeader},
    proxy::{ProxyHttp, Session},
    upstreams::peer::HttpPeer,
};

use crate::routes::{Decision, HeaderEdits, Redirect, Request, Route, Table};

/// How long an endpoint that refused a connection is skipped.
pub const FAILED_FOR: Duration = Duration::from_secs(10);

/// How many other endpoints a request tries after a failed connection.
pub const RETRIES: usize = 2;

/// How long an idle upstream connection is kept for reuse.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// What the proxy and the watches share.
#[derive(Default)]
pub struct Shared {
    /// Request counters.
    pub metrics: crate::metrics::Metrics,
    /// Rate limits' buckets.
    pub limiter: crate::annotations::Limiter,
    table: RwLock<Arc<Table>>,
    failed: RwLock<HashMap<SocketAddr, Instant>>,
    failed_count: AtomicUsize,
}

impl Shared {
    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => Arc::clone(&t),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Swaps in a new table; requests under way keep the one they started with.
    pub fn set_table(&self, table: Table) {
        let table = Arc::new(table);
        match self.table.write() {
            Ok(mut t) => *t = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }

    fn is_failed(&self, endpoint: &SocketAddr) -> bool {
        if self.failed_count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let failed = match self.failed.read() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        failed
            .get(endpoint)
            .is_some_and(|at| at.elapsed() < FAILED_FOR)
    }

    fn mark_failed(&self, endpoint: SocketAddr) {
        let mut failed = match self.failed.write() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        failed.retain(|_, at| at.elapsed() < FAILED_FOR);
        failed.insert(endpoint, Instant::now());
        self.failed_count.store(failed.len(), Ordering::Relaxed);
    }
}

/// The per-request state.
pub struct Ctx {
    started: Instant,
    body_bytes: u64,
    route: Option<Arc<Route>>,
    /// The route's backend chosen for this request.
    backend: usize,
    /// The request's `upstream-hash-by` key, hashed.
    hash: Option<u64>,
    upstream: Option<SocketAddr>,
    tries: usize,
    tls: bool,
}

/// The proxy (cheap to clone).
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    tls: bool,
}

impl Proxy {
    /// A proxy over `shared`'s table; `tls` for the HTTPS listener.
    pub fn new(shared: Arc<Shared>, tls: bool) -> Proxy {
        Proxy { shared, tls }
    }
}

/// The request's host: the Host header, else the `:authority` (HTTP/2), else empty.
fn request_host(req: &RequestHeader) -> String {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default()
}

/// The host of a redirect's `Location`: the request's host without its port, lowercased, an
/// IPv6 literal kept in brackets.
fn redirect_host(header: &str) -> String {
    let host = crate::routes::host_of(header);
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    }
}

/// Applies a header modifier to a request or response header (pingora's two types have the same
/// methods and no common trait).
macro_rules! edit_headers {
    ($header:expr, $edits:expr) => {{
        let edits: &HeaderEdits = $edits;
        for (name, value) in &edits.set {
            $header.insert_header(name.clone(), value.as_str())?;
        }
        for (name, value) in &edits.add {
            $header.append_header(name.clone(), value.as_str())?;
        }
        for name in &edits.remove {
            $header.remove_header(name.as_str());
        }
    }};
}

/// The `Location` of a `RequestRedirect`: the request's URL with the filter's parts replaced.
/// Without a port in the filter, a changed scheme takes its well-known port, else the listener's
/// port is kept; well-known ports are left out of the URL.
pub fn redirect_location(
    redirect: &Redirect,
    host: &str,
    target: &str,
    tls: bool,
    listener_port: Option<u16>,
) -> String {
    let scheme = redirect
        .scheme
        .clone()
        .unwrap_or_else(|| if tls { "https" } else { "http" }.to_owned());
    let hostname = redirect
        .hostname
        .clone()
        .unwrap_or_else(|| redirect_host(host));
    let port = redirect.port.or(if redirect.scheme.is_some() {
        None
    } else {
        listener_port
    });
    let well_known = matches!(
        (scheme.as_str(), port),
        ("http", Some(80)) | ("https", Some(443))
    );
    let port = match port {
        Some(p) if !well_known => format!(":{p}"),
        _ => String::new(),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = redirect
        .path
        .as_ref()
        .map_or_else(|| path.to_owned(), |c| c.apply(path));
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{hostname}{port}{path}{query}")
}

/// A short page for answers the proxy gives itself.
async fn respond(
    session: &mut Session,
    code: u16,
    text: &str,
    location: Option<&str>,
) -> Result<bool> {
    let body = Bytes::from(format!("{code} {text}\n"));
    let mut header = ResponseHeader::build(code, Some(4))?;
    header.insert_header("content-type", "text/plain; charset=utf-8")?;
    header.insert_header("content-length", body.len().to_string())?;
    if let Some(location) = location {
        header.insert_header("location", location)?;
    }
    session.set_keepalive(Some(60));
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            body_bytes: 0,
            route: None,
            backend: 0,
            hash: None,
            upstream: None,
            tries: 0,
            tls: self.tls,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let table = self.shared.table();
        let req = session.req_header();
        let host = request_host(req);
        let target = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path(), |p| p.as_str())
            .to_owned();
        let request = Request {
            host: &host,
            target: &target,
            method: req.method.as_str(),
            headers: Some(&req.headers),
            tls: ctx.tls,
        };
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        match table.route_request(&request) {
            Decision::Proxy(route) => {
                if let Some(redirect) = &route.filters.redirect {
                    let port = session
                        .server_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.port());
                    let location = redirect_location(redirect, &host, &target, ctx.tls, port);
                    let text = if redirect.status == 301 {
                        "Moved Permanently"
                    } else {
                        "Found"
                    };
                    return respond(session, redirect.status, text, Some(&location)).await;
                }
                if let (Some(rate), Some(client)) = (route.limits.rate, client)
                    && !self.shared.limiter.allow(&route.source, client, rate)
                {
                    let text = format!(
                        "Service Temporarily Unavailable: over {} requests per second",
                        rate.rps
                    );
                    return respond(session, 503, &text, None).await;
                }
                let Some((index, backend)) = route.choose_for(&request) else {
                    let text = format!(
                        "Internal Server Error: no backend of {} has weight",
                        route.source
                    );
                    return respond(session, 500, &text, None).await;
                };
                if let Some(why) = &backend.invalid {
                    let text = format!("Internal Server Error: {why}");
                    return respond(session, 500, &text, None).await;
                }
                if backend.endpoints.is_empty() {
                    let text = format!(
                        "Service Unavailable: no ready endpoint for {}",
                        backend.backend
                    );
                    return respond(session, 503, &text, None).await;
                }
                let length = req
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let (Some(max), Some(length)) = (route.limits.max_body, length)
                    && length > max
                {
                    let text = format!("Request Entity Too Large: bodies up to {max} bytes");
                    return respond(session, 413, &text, None).await;
                }
                ctx.hash = route.hash.as_ref().map(|key| key.hash(&request, client));
                ctx.route = Some(Arc::clone(route));
                ctx.backend = index;
                Ok(false)
            }
            Decision::RedirectHttps => {
                let target = format!("https://{}{target}", redirect_host(&host));
                respond(session, 308, "Permanent Redirect", Some(&target)).await
            }
            Decision::NotFound => {
                respond(session, 404, "Not Found: no Ingress rule matches", None).await
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = &ctx.route else {
            return Err(Error::explain(ErrorType::InternalError, "no route chosen").into_in());
        };
        let Some(backend) = route.backend(ctx.backend) else {
            return Err(Error::explain(ErrorType::InternalError, "no backend chosen").into_in());
        };
        let shared = &self.shared;
        let tried = ctx.upstream;
        let pick = |skip: &dyn Fn(&SocketAddr) -> bool| match ctx.hash {
            Some(key) => crate::annotations::rendezvous(key, &backend.endpoints, skip),
            None => backend.pick(skip),
        };
        let endpoint = pick(&|e| shared.is_failed(e) || Some(*e) == tried)
            .or_else(|| pick(&|_| false))
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::HTTPStatus(503),
                    format!("no ready endpoint for {}", backend.backend),
                )
                .into_up()
            })?;
        ctx.upstream = Some(endpoint);
        ctx.tries += 1;
        let limits = &route.limits;
        let mut peer = HttpPeer::new(endpoint, false, String::new());
        peer.options.connection_timeout = Some(limits.connect_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        peer.options.read_timeout = Some(limits.read_timeout);
        peer.options.write_timeout = Some(limits.send_timeout);
        Ok(Box::new(peer))
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A body without a length (chunked) is counted as it streams.
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        match ctx.route.as_ref().and_then(|r| r.limits.max_body) {
            Some(max) if ctx.body_bytes > max => Err(Error::explain(
                ErrorType::HTTPStatus(413),
                format!("request body larger than {max} bytes"),
            )
            .into_down()),
            _ => Ok(()),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(endpoint) = ctx.upstream {
            self.shared.mark_failed(endpoint);
        }
        self.shared.metrics.upstream_failed();
        if ctx.tries <= RETRIES {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        let host = request_host(upstream);
        if let Some(client) = &client {
            let forwarded = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(before) if !before.is_empty() => format!("{before}, {client}"),
                _ => client.clone(),
            };
            upstream.insert_header("x-forwarded-for", forwarded)?;
            upstream.insert_header("x-real-ip", client.as_str())?;
        }
        let port = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port());
        upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        if !host.is_empty() {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        if let Some(port) = port {
            upstream.insert_header("x-forwarded-port", port.to_string())?;
        }
        if let Some(route) = &ctx.route {
            let filters = &route.filters;
            if let Some(change) = &filters.rewrite_path {
                // The path routing matched (dot segments resolved): a rewrite of the raw path
                // could be walked out of with `..`.
                let path = change.apply(&crate::routes::normalize_path(upstream.uri.path()));
                let target = match upstream.uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                let uri = target.parse::<http::Uri>().map_err(|e| {
                    Error::explain(
                        ErrorType::InternalError,
                        format!("rewritten path {target:?}: {e}"),
                    )
                })?;
                upstream.set_uri(uri);
            }
            if let Some(host) = &filters.rewrite_host {
                upstream.insert_header(http::header::HOST, host.as_str())?;
            }
            edit_headers!(upstream, &filters.request_headers);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(route) = &ctx.route {
            edit_headers!(response, &route.filters.response_headers);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.shared.metrics.observe(status, ctx.started.elapsed());
        tracing::info!(
            target: "rudder_ingress::access",
            method = %req.method,
            host = %request_host(req),
            path = %req.uri.path(),
            status,
            upstream = ?ctx.upstream,
            ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
            error = e.map(ToString::to_string),
        );
    }
}
