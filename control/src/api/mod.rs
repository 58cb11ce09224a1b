//! The Kubernetes-compatible apiserver.
//!
//! Requests arrive over HTTPS (HTTP/1.1 or HTTP/2), are authenticated by bearer token, parsed
//! into a [`request::RequestInfo`] (group, version, namespace, resource, name, subresource) and
//! handled generically over JSON by [`rest`] against the [`crate::store::Store`]. Per-kind
//! knowledge lives in small pure modules: [`defaults`], [`validation`], [`table`] (kubectl's
//! columns), [`allocator`] (ClusterIPs and NodePorts) and [`patch`].
//!
//! - [`registry`]: every served resource type; [`discovery`]: `/api`, `/apis`, `/version`,
//!   OpenAPI documents; [`watch`]: watch streams; [`selectors`]: label and field selectors;
//!   [`status`]: errors as `Status` objects; [`object`]: JSON metadata helpers.
//! - [`logs`]: `pods/log`, streamed from the pod's node agent.
//! - [`exec`]: `pods/exec`, a WebSocket spliced onto one to the pod's node agent.

pub mod allocator;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod eviction;
pub mod exec;
pub mod logs;
pub mod metrics;
pub mod object;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod rest;
pub mod selectors;
pub mod status;
pub mod table;
pub mod tokens;
pub mod validation;
pub mod watch;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::{auth::Credentials, store::Store};
use status::ApiError;

/// The response body type: a full buffer or a stream (watch).
pub type Body = BoxBody<Bytes, Infallible>;

/// Request bodies above this size get 413 (kube-apiserver's limit is 3 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Shared state of the apiserver.
pub struct State {
    /// Object storage.
    pub store: Arc<dyn Store>,
    /// Served resource types.
    pub registry: registry::Registry,
    /// ClusterIP / NodePort allocation.
    pub allocator: allocator::Allocator,
    /// Tokens and TLS material.
    pub credentials: Arc<Credentials>,
    /// Maximum request body size.
    pub max_body_bytes: usize,
    /// Interval between watch bookmarks.
    pub bookmark_interval: Duration,
    /// CPU and memory use scraped from the node agents (`metrics.k8s.io`).
    pub metrics: metrics::Samples,
    /// The key ServiceAccount tokens are signed with.
    pub service_account_keys: tokens::Keys,
}

/// A JSON response with `code`.
pub fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The `Status` response for an error.
pub fn error_response(err: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &err.to_status(),
    )
}

/// Serves HTTPS on `listener` until the task is dropped.
pub async fn serve(state: Arc<State>, listener: TcpListener) -> std::io::Result<()> {
    let tls = tls_config(&state.credentials)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            serve_connection(state, tls, peer).await;
        });
    }
}

async fn serve_connection(
    state: Arc<State>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
) {
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(1000)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

fn tls_config(credentials: &Credentials) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(credentials.tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| std::io::Error::other(format!("serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(credentials.tls.key_pem.as_bytes())
        .map_err(|e| std::io::Error::other(format!("serving key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Handles one request: authentication, routing, and errors as `Status`.
pub async fn handle(state: Arc<State>, req: http::Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let resp = match request::route(&state, req).await {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    };
    // Only the method, path and code: bodies (which may hold secrets) are never logged.
    tracing::debug!(%method, path, code = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}
