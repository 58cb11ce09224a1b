//! rudder's cluster DNS: the Kubernetes DNS-Based Service Discovery specification (schema
//! 1.1.0) served by hickory-dns.
//!
//! - [`index`]: the pure core, the records the specification derives from Services,
//!   EndpointSlices and Pods, answering a name and a type with no I/O;
//! - [`watch`]: kube-rs watches keeping the index current (answers follow an object change as
//!   soon as its watch event arrives, never an apiserver call on the query path);
//! - [`server`]: hickory-server on UDP (a socket per core) and TCP, EDNS0, negative answers with
//!   the SOA, search-path expansion and forwarding of other names upstream;
//! - [`metrics`]: Prometheus counters, served over HTTP at `/metrics`.
//!
//! [`run`] puts them together; `rudder server` runs it for its cluster (the `kube-dns` Service,
//! 10.96.0.10:53) and `rudder dns --kubeconfig F` alone.

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
    /// Forward names outside the zone to `/etc/resolv.conf`'s nameservers.
    pub forward: bool,
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
    let upstream = if options.forward {
        match server::system_upstream() {
            Ok(resolver) => Some(resolver),
            Err(e) => {
                tracing::warn!("DNS forwarding is off: {e}");
                None
            }
        }
    } else {
        None
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
}
