//! rudder's cluster DNS: the Kubernetes DNS-Based Service Discovery specification (schema
//! 1.1.0) served by hickory-dns.
//!
//! - [`index`]: the pure core, the records the specification derives from Services,
//!   EndpointSlices and Pods, answering a name and a type with no I/O;
//! - [`watch`]: kube-rs watches keeping the index current (answers follow an object change as
//!   soon as its watch event arrives, never an apiserver call on the query path);
//! - [`server`]: hickory-server on UDP (a socket per core) and TCP, EDNS0, negative answers with
//!   the SOA, search-path expansion and forwarding of other names upstream;
//! - [`cache`]: forwarded answers kept for their TTL;
//! - [`metrics`]: Prometheus counters, served over HTTP at `/metrics`.
//!
//! [`run`] puts them together; `rudder server` runs it for its cluster (the `kube-dns` Service,
//! 10.96.0.10:53) and `rudder dns --kubeconfig F` alone.

pub mod cache;
pub mod index;
pub mod metrics;
pub mod server;
pub mod watch;

use std::{future::Future, net::IpAddr, net::SocketAddr, sync::Arc, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How to serve DNS.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cluster domain (`cluster.local`).
    pub zone: String,
    /// TTL of positive answers, seconds (30).
    pub ttl: u32,
    /// TTL of negative answers, seconds (5).
    pub negative_ttl: u32,
    /// Addresses to serve on, UDP and TCP each.
    pub addrs: Vec<SocketAddr>,
    /// The DNS Service's address, named by the zone's NS record (`ns.dns.<zone>`).
    pub service_ip: Option<IpAddr>,
    /// Where names outside the zone go.
    pub upstream: server::Upstream,
    /// Where to serve `/metrics` (HTTP), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

/// Why DNS could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Serves DNS for the cluster `client` talks to until `shutdown` completes. Queries are
/// answered once the first lists of Services, EndpointSlices and Pods are in (or after 10 s,
/// from what has arrived, so a slow apiserver does not keep DNS down).
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut config = index::Config::new(&options.zone).map_err(Error::Config)?;
    config.ttl = options.ttl;
    config.negative_ttl = options.negative_ttl;
    config.dns_ip = options.service_ip;
    let upstream = match server::upstream_resolver(&options.upstream) {
        Ok(resolver) => resolver,
        Err(e) => {
            tracing::warn!("DNS forwarding is off: {e}");
            None
        }
    };
    let shared = Arc::new(server::Shared::new(index::Index::new(config), upstream));
    let mut synced = watch::start(client, Arc::clone(&shared));
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..3 {
            if synced.recv().await.is_none() {
                break;
            }
        }
    })
    .await;
    if waited.is_err() {
        tracing::warn!("DNS is serving before its first lists arrived");
    }
    let services = shared
        .index
        .read()
        .map(|i| i.service_count())
        .unwrap_or_default();
    let mut servers = Vec::new();
    for addr in &options.addrs {
        let server = server::serve(server::Handler(Arc::clone(&shared)), *addr)
            .await
            .map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?;
        tracing::info!(%addr, services, zone = %options.zone, "DNS serving");
        servers.push(server);
    }
    if let Some(addr) = options.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        tokio::spawn(serve_metrics(listener, Arc::clone(&shared)));
    }
    shutdown.await;
    for mut server in servers {
        let _ = server.shutdown_gracefully().await;
    }
    Ok(())
}

/// A minimal HTTP/1.1 responder: `GET /metrics` gets the Prometheus text, anything else 404.
async fn serve_metrics(listener: tokio::net::TcpListener, shared: Arc<server::Shared>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // The request may come in several segments: read its head to the blank line (at most
            // 8 KiB, within 5 s), so a client is neither answered from half a line nor reset
            // by a close with its headers unread.
            let mut request = Vec::with_capacity(256);
            let read_line = async {
                let mut chunk = [0u8; 512];
                // The blank line ends the head (bare LF accepted, as HTTP allows).
                let complete = |r: &[u8]| {
                    r.windows(4).any(|w| w == b"\r\n\r\n") || r.windows(2).any(|w| w == b"\n\n")
                };
                while !complete(&request) {
                    if request.len() >= 8192 {
                        return false;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), read_line).await,
                Ok(true)
            ) {
                return;
            }
            let line = String::from_utf8_lossy(&request);
            let (status, body) = if line.starts_with("GET /metrics ") {
                ("200 OK", shared.metrics.render())
            } else {
                ("404 Not Found", "not found: try /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scraper whose request arrives in pieces still gets the metrics, not a 404 or a reset.
    #[tokio::test]
    async fn metrics_answer_a_request_sent_in_pieces() {
        let config = index::Config::new("cluster.local").expect("zone");
        let shared = Arc::new(server::Shared::new(index::Index::new(config), None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_metrics(listener, shared));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        for piece in ["GET ", "/metrics", " HTTP/1.1\r\n", "Host: x\r\n", "\r\n"] {
            stream.write_all(piece.as_bytes()).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(
            response.contains("rudder_dns_autopath_total 0"),
            "{response}"
        );

        // Bare line feeds (`printf 'GET /metrics HTTP/1.0\n\n' | nc`) end the head too.
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.0\n\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    }

    /// A UDP query for `name` type A, by hand; the response's rcode and answer count.
    async fn ask(addr: SocketAddr, name: &str) -> (u8, u16) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.trim_end_matches('.').split('.') {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        socket.send_to(&query, addr).await.expect("send");
        let mut buf = [0u8; 1500];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("recv");
        assert!(len >= 12 && buf[..2] == query[..2], "{:?}", &buf[..len]);
        (buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]]))
    }

    fn free_addr() -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    }

    /// Names outside the zone go to the upstream given (here another rudder DNS on loopback,
    /// authoritative for `upstream.test`), and a second ask is answered from the cache, which
    /// the metrics count as hits.
    #[tokio::test]
    async fn forwarded_answers_are_cached() {
        let upstream_config = index::Config::new("upstream.test").expect("zone");
        let mut upstream_index = index::Index::new(upstream_config);
        let service: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.96.3.4"},
            }))
            .expect("service");
        upstream_index.apply_service(&service).expect("valid");
        let upstream = Arc::new(server::Shared::new(upstream_index, None));
        let upstream_addr = free_addr();
        let mut upstream_server =
            server::serve(server::Handler(Arc::clone(&upstream)), upstream_addr)
                .await
                .expect("serve upstream");

        let resolver = server::upstream_resolver(&server::Upstream::Servers(vec![upstream_addr]))
            .expect("resolver");
        let config = index::Config::new("cluster.local").expect("zone");
        let front = Arc::new(server::Shared::new(index::Index::new(config), resolver));
        let front_addr = free_addr();
        let mut front_server = server::serve(server::Handler(Arc::clone(&front)), front_addr)
            .await
            .expect("serve");

        for _ in 0..2 {
            assert_eq!(
                ask(front_addr, "web.default.svc.upstream.test").await,
                (0, 1)
            );
            assert_eq!(ask(front_addr, "nope.default.svc.upstream.test").await.0, 3);
        }
        // (hickory's resolver keeps a small cache of its own, so the upstream's count cannot
        // tell the two caches apart: the hit counter does.)
        assert!(upstream.metrics.total() >= 2);
        let text = front.metrics.render();
        assert!(text.contains("rudder_dns_cache_hits_total 2\n"), "{text}");
        assert!(text.contains("rudder_dns_cache_misses_total 2\n"), "{text}");
        assert!(text.contains("rudder_dns_forwarded_total 2\n"), "{text}");
        let _ = front_server.shutdown_gracefully().await;
        let _ = upstream_server.shutdown_gracefully().await;
    }

    #[test]
    fn upstreams_parse() {
        use server::Upstream;
        assert_eq!("none".parse(), Ok(Upstream::None));
        assert_eq!("system".parse(), Ok(Upstream::System));
        assert_eq!(
            "127.0.0.1:5353, 10.0.0.1,[fd00::1]:54".parse(),
            Ok(Upstream::Servers(vec![
                "127.0.0.1:5353".parse().expect("addr"),
                "10.0.0.1:53".parse().expect("addr"),
                "[fd00::1]:54".parse().expect("addr"),
            ]))
        );
        assert!("resolv".parse::<Upstream>().is_err());
    }
}
