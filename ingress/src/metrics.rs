//! Prometheus metrics of the ingress, in the text exposition format: requests by status code,
//! a latency histogram (ingress-nginx's buckets), upstream connections that failed, and the
//! routing table's size. Counters are atomics bumped once per request (in the proxy's logging
//! phase); `--ingress-metrics-addr` serves them at `/metrics` over pingora's own HTTP server.

use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use async_trait::async_trait;
use pingora::{apps::http_app::ServeHttp, protocols::http::ServerSession};

use crate::proxy::Shared;

/// Upper bounds of the latency buckets, in seconds (ingress-nginx's).
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The ingress's counters.
pub struct Metrics {
    /// By status code (100–599); slot 0 counts requests that got no response.
    codes: Box<[AtomicU64]>,
    /// By [`BUCKETS`] index (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_ns: AtomicU64,
    upstream_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            codes: (0..600).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            duration_ns: AtomicU64::new(0),
            upstream_failures: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one request answered with `status` (0: none) after `elapsed`.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let slot = usize::from(status).min(self.codes.len() - 1);
        self.codes[slot].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[b].fetch_add(1, Relaxed);
        self.duration_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// Counts an upstream connection that could not be made.
    pub fn upstream_failed(&self) {
        self.upstream_failures.fetch_add(1, Relaxed);
    }

    /// The Prometheus text, with the table's `routes` and `endpoints`.
    pub fn render(&self, routes: usize, endpoints: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP rudder_ingress_requests_total Requests, by response status code (0: none sent).\n");
        out.push_str("# TYPE rudder_ingress_requests_total counter\n");
        for (code, count) in self.codes.iter().enumerate() {
            let n = count.load(Relaxed);
            if n > 0 {
                let _ = writeln!(out, "rudder_ingress_requests_total{{code=\"{code}\"}} {n}");
            }
        }
        out.push_str("# HELP rudder_ingress_request_duration_seconds Time from the request to the end of its response.\n");
        out.push_str("# TYPE rudder_ingress_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "rudder_ingress_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "rudder_ingress_request_duration_seconds_sum {}\nrudder_ingress_request_duration_seconds_count {cumulative}",
            self.duration_ns.load(Relaxed) as f64 / 1e9
        );
        out.push_str("# HELP rudder_ingress_upstream_connect_failures_total Upstream connections that could not be made (the endpoint is then skipped for a while).\n");
        out.push_str("# TYPE rudder_ingress_upstream_connect_failures_total counter\n");
        let _ = writeln!(
            out,
            "rudder_ingress_upstream_connect_failures_total {}",
            self.upstream_failures.load(Relaxed)
        );
        out.push_str("# HELP rudder_ingress_routes Routes (Ingress and backend) in the table.\n");
        out.push_str("# TYPE rudder_ingress_routes gauge\n");
        let _ = writeln!(out, "rudder_ingress_routes {routes}");
        out.push_str("# HELP rudder_ingress_endpoints Ready endpoints behind the routes.\n");
        out.push_str("# TYPE rudder_ingress_endpoints gauge\n");
        let _ = writeln!(out, "rudder_ingress_endpoints {endpoints}");
        out
    }
}

/// The `/metrics` endpoint, a pingora HTTP app.
pub struct Endpoint(pub Arc<Shared>);

#[async_trait]
impl ServeHttp for Endpoint {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, body) = if session.req_header().uri.path() == "/metrics" {
            let table = self.0.table();
            (
                200,
                self.0
                    .metrics
                    .render(table.route_count(), table.endpoint_count()),
            )
        } else {
            (404, "not found: try /metrics\n".to_owned())
        };
        let mut response = http::Response::new(body.into_bytes());
        *response.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::NOT_FOUND);
        if let Ok(v) = http::HeaderValue::from_str("text/plain; version=0.0.4") {
            response.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_render_as_prometheus_text() {
        let m = Metrics::default();
        m.observe(200, Duration::from_millis(3));
        m.observe(200, Duration::from_millis(30));
        m.observe(503, Duration::from_secs(60));
        m.upstream_failed();
        let text = m.render(4, 9);
        for line in [
            "rudder_ingress_requests_total{code=\"200\"} 2\n",
            "rudder_ingress_requests_total{code=\"503\"} 1\n",
            "rudder_ingress_request_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "rudder_ingress_request_duration_seconds_bucket{le=\"0.05\"} 2\n",
            "rudder_ingress_request_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "rudder_ingress_request_duration_seconds_count 3\n",
            "rudder_ingress_upstream_connect_failures_total 1\n",
            "rudder_ingress_routes 4\n",
            "rudder_ingress_endpoints 9\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("code=\"404\""));
    }
}
