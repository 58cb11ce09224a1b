//! Ingress for rudder: Ingress v1 and Gateway API HTTPRoutes served by a pingora proxy.
//!
//! - [`routes`]: the pure core, the routing table built from Ingresses, IngressClasses,
//!   Services, EndpointSlices and Secrets, answering where one request goes with no I/O;
//! - [`annotations`]: the ingress-nginx annotations beyond timeouts (canary, rewrite-target,
//!   limit-rps, upstream-hash-by);
//! - [`gateway`]: GatewayClasses, Gateways and HTTPRoutes into the same table, and their
//!   statuses;
//! - [`watch`]: kube-rs reflectors that rebuild the table on every change and swap it in;
//! - [`proxy`]: the pingora `ProxyHttp` that routes each request by the current table straight
//!   to a ready endpoint (round robin, passive health, pooled keep-alive upstream connections).
//!
//! - [`tls`]: HTTPS, the certificate of each handshake chosen by SNI from the table;
//! - [`metrics`]: Prometheus counters, served at `/metrics`.
//!
//! [`run`] puts them together; `rudder server` runs it for its cluster, `rudder ingress
//! --kubeconfig F` alone.

pub mod annotations;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod tls;
pub mod watch;

use std::{future::Future, net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use pingora::server::{
    RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, configuration::ServerConf,
};

/// How to serve.
#[derive(Clone, Debug)]
pub struct Options {
    /// Plain HTTP listener (`--ingress-http-addr`).
    pub http_addr: SocketAddr,
    /// HTTPS listener (`--ingress-https-addr`), if any.
    pub https_addr: Option<SocketAddr>,
    /// Where `/metrics` is served (`--ingress-metrics-addr`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Worker threads of the proxy (0: one per core).
    pub threads: usize,
    /// Addresses written to the status of Ingresses (`status.loadBalancer`) and Gateways
    /// (`status.addresses`); empty: the HTTP address, unless it is a wildcard (then no address
    /// is written).
    pub status_addresses: Vec<std::net::IpAddr>,
}

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening address is taken or not ours.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The proxy thread could not start.
    #[error("starting the proxy thread")]
    Start(#[source] std::io::Error),
    /// The default certificate could not be made.
    #[error("setting up TLS")]
    Certificate(#[source] tls::Error),
    /// pingora's TLS listener could not be set up.
    #[error("setting up TLS: {0}")]
    Tls(Box<pingora::Error>),
}

/// Tells pingora to stop when rudder does.
struct Stop(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// Serves ingress for the cluster `client` talks to until `shutdown` completes. The watches run
/// on the caller's runtime; the proxy on pingora's own threads.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    // Fail clearly (pingora would exit the process) when an address cannot be bound.
    for addr in std::iter::once(options.http_addr)
        .chain(options.https_addr)
        .chain(options.metrics_addr)
    {
        std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    }
    let shared = Arc::new(proxy::Shared::default());
    let status_addresses = if options.status_addresses.is_empty() {
        Some(options.http_addr.ip())
            .filter(|ip| !ip.is_unspecified())
            .into_iter()
            .collect()
    } else {
        options.status_addresses.clone()
    };
    let listen = routes::Listen {
        http_port: options.http_addr.port(),
        https_port: options.https_addr.map(|a| a.port()),
        addresses: status_addresses,
    };
    watch::start(client, Arc::clone(&shared), listen);
    let stop = Arc::new(tokio::sync::Notify::new());
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        options.threads
    };
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        // A current-thread runtime per thread: no work stealing between proxy threads (a
        // connection's tasks stay on one thread, as an nginx worker's do).
        work_stealing: false,
        // Idle upstream connections kept for reuse (pingora's default is 128: at 256 client
        // connections an eighth of the requests opened a new upstream connection).
        upstream_keepalive_pool_size: 4096,
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy::Proxy::new(Arc::clone(&shared), false),
        "rudder ingress (http)",
    );
    // Plain HTTP is read straight into pingora's header and body buffers: an L4 read buffer
    // (64 KiB by default, there for TLS's 16 KiB records) would only add a copy and 64 KiB per
    // client connection.
    service.add_listener(
        pingora::listeners::ListenerConfig::tcp(options.http_addr.to_string())
            .l4_buffer(pingora::listeners::L4BufferSettings::default().read(0)),
    );
    server.add_service(service);
    if let Some(addr) = options.https_addr {
        let sni = tls::Sni::new(Arc::clone(&shared)).map_err(Error::Certificate)?;
        let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(sni))
            .map_err(Error::Tls)?;
        settings.enable_h2();
        let mut secure = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            proxy::Proxy::new(Arc::clone(&shared), true),
            "rudder ingress (https)",
        );
        secure.add_tls_with_settings(&addr.to_string(), None, settings);
        server.add_service(secure);
    }
    if let Some(addr) = options.metrics_addr {
        let mut endpoint = pingora::services::listening::Service::new(
            "rudder ingress metrics".to_owned(),
            metrics::Endpoint(Arc::clone(&shared)),
        );
        endpoint.add_tcp(&addr.to_string());
        server.add_service(endpoint);
    }
    let signal = Stop(Arc::clone(&stop));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ingress".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            });
            let _ = done_tx.send(());
        })
        .map_err(Error::Start)?;
    tracing::info!(http = %options.http_addr, https = ?options.https_addr, threads, "ingress serving");
    shutdown.await;
    stop.notify_one();
    let _ = done_rx.await;
    Ok(())
}
