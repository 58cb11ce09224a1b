//! Prometheus metrics of the DNS server, in the text exposition format: queries by type,
//! responses by rcode, a latency histogram (CoreDNS's buckets), forwarded queries, hits and
//! misses of the forwarded-answer cache, and search-path expansions. Counters are atomics
//! bumped on the query path.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Instant,
};

use hickory_server::proto::{op::ResponseCode, rr::RecordType};

const TYPES: [RecordType; 9] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::PTR,
    RecordType::TXT,
    RecordType::CNAME,
    RecordType::SOA,
    RecordType::NS,
    RecordType::ANY,
];

const RCODES: [(ResponseCode, &str); 6] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::FormErr, "FORMERR"),
];

/// Upper bounds of the latency buckets, in seconds (CoreDNS's).
const BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    /// By [`TYPES`] index; the last slot counts other types.
    types: [AtomicU64; TYPES.len() + 1],
    /// By [`RCODES`] index; the last slot counts other rcodes.
    rcodes: [AtomicU64; RCODES.len() + 1],
    /// By [`BUCKETS`] index (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_ns: AtomicU64,
    forwarded: AtomicU64,
    expanded: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl Metrics {
    /// Counts one answered query.
    pub fn answered(&self, rtype: RecordType, rcode: ResponseCode, started: Instant) {
        let t = TYPES
            .iter()
            .position(|t| *t == rtype)
            .unwrap_or(TYPES.len());
        self.types[t].fetch_add(1, Relaxed);
        let r = RCODES
            .iter()
            .position(|(r, _)| *r == rcode)
            .unwrap_or(RCODES.len());
        self.rcodes[r].fetch_add(1, Relaxed);
        let elapsed = started.elapsed();
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

    /// Counts a query sent to the upstream resolvers.
    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Relaxed);
    }

    /// Counts a forwarded name answered from the cache.
    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    /// Counts a forwarded name the cache did not have.
    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Relaxed);
    }

    /// Counts a query answered by search-path expansion.
    pub fn expanded(&self) {
        self.expanded.fetch_add(1, Relaxed);
    }

    /// Queries answered so far.
    pub fn total(&self) -> u64 {
        self.types.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP rudder_dns_requests_total DNS queries answered, by type.\n");
        out.push_str("# TYPE rudder_dns_requests_total counter\n");
        for (i, count) in self.types.iter().enumerate() {
            let name = TYPES.get(i).map_or("other".to_string(), |t| t.to_string());
            let _ = writeln!(
                out,
                "rudder_dns_requests_total{{type=\"{name}\"}} {}",
                count.load(Relaxed)
            );
        }
        out.push_str("# HELP rudder_dns_responses_total DNS responses, by rcode.\n");
        out.push_str("# TYPE rudder_dns_responses_total counter\n");
        for (i, count) in self.rcodes.iter().enumerate() {
            let name = RCODES.get(i).map_or("OTHER", |(_, name)| name);
            let _ = writeln!(
                out,
                "rudder_dns_responses_total{{rcode=\"{name}\"}} {}",
                count.load(Relaxed)
            );
        }
        out.push_str("# HELP rudder_dns_request_duration_seconds Time to answer a query.\n");
        out.push_str("# TYPE rudder_dns_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "rudder_dns_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "rudder_dns_request_duration_seconds_sum {}",
            self.duration_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "rudder_dns_request_duration_seconds_count {cumulative}"
        );
        out.push_str("# HELP rudder_dns_forwarded_total Queries sent to the upstream resolvers.\n");
        out.push_str("# TYPE rudder_dns_forwarded_total counter\n");
        let _ = writeln!(
            out,
            "rudder_dns_forwarded_total {}",
            self.forwarded.load(Relaxed)
        );
        out.push_str(
            "# HELP rudder_dns_autopath_total Queries answered by server-side search-path expansion.\n",
        );
        out.push_str("# TYPE rudder_dns_autopath_total counter\n");
        let _ = writeln!(
            out,
            "rudder_dns_autopath_total {}",
            self.expanded.load(Relaxed)
        );
        for (name, help, counter) in [
            (
                "hits",
                "Names outside the zone answered from the cache.",
                &self.cache_hits,
            ),
            (
                "misses",
                "Names outside the zone the cache did not have.",
                &self.cache_misses,
            ),
        ] {
            let _ = writeln!(out, "# HELP rudder_dns_cache_{name}_total {help}");
            let _ = writeln!(out, "# TYPE rudder_dns_cache_{name}_total counter");
            let _ = writeln!(
                out,
                "rudder_dns_cache_{name}_total {}",
                counter.load(Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text() {
        let m = Metrics::default();
        m.answered(RecordType::A, ResponseCode::NoError, Instant::now());
        m.answered(RecordType::MX, ResponseCode::NXDomain, Instant::now());
        m.forwarded();
        m.cache_hit();
        let text = m.render();
        assert!(
            text.contains("rudder_dns_requests_total{type=\"A\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("rudder_dns_requests_total{type=\"other\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("rudder_dns_responses_total{rcode=\"NXDOMAIN\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("rudder_dns_request_duration_seconds_count 2\n"),
            "{text}"
        );
        assert!(text.contains("rudder_dns_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("rudder_dns_forwarded_total 1\n"));
        assert!(text.contains("rudder_dns_cache_hits_total 1\n"));
        assert!(text.contains("rudder_dns_cache_misses_total 0\n"));
        assert_eq!(m.total(), 2);
    }
}
