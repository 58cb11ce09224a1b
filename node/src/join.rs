//! Joining a cluster: `rudder agent --server URL --token-file FILE` turns a join token into an
//! apiserver client, the way k3s agents do.
//!
//! `rudder server` writes the join token to `DATA_DIR/token` as `K10<hash>::node:<secret>`:
//! - `<hash>` is the hex SHA-256 of the cluster CA certificate (PEM, as the apiserver serves it
//!   at `/cacerts`);
//! - `<secret>` is the bearer token of the `system:nodes` credential.
//!
//! The agent fetches `/cacerts` without trusting the connection, accepts the CA only if its hash
//! is the token's, and from then on talks TLS verified by that CA. A man in the middle can
//! neither substitute a CA (the hash would differ) nor learn the secret (it is sent only over the
//! verified connection). A bare secret (no `K10` prefix) is accepted together with an explicit
//! CA file.

use std::{path::Path, sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use sha2::Digest;

/// How long fetching the CA may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of joining.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token is not in a known format.
    #[error(
        "the join token is malformed: expected K10<ca-sha256>::node:<secret> (the content of the server's DATA_DIR/token) or a bare secret with --ca-file"
    )]
    Token,
    /// A bare secret came without a CA to trust.
    #[error("the join token carries no CA hash; pass --ca-file with the cluster CA")]
    NoCa,
    /// The server URL is not usable.
    #[error("--server {0}: {1}")]
    Url(String, String),
    /// Fetching the CA failed.
    #[error("fetching the cluster CA from {0}: {1}")]
    Fetch(String, String),
    /// The server's CA is not the one the token names.
    #[error(
        "the CA served by {server} has SHA-256 {got}, but the join token expects {want}: wrong server or token"
    )]
    CaMismatch {
        /// The server URL.
        server: String,
        /// Hash of what it served.
        got: String,
        /// Hash in the token.
        want: String,
    },
    /// Reading a file failed.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// The client could not be built.
    #[error("building the apiserver client: {0}")]
    Client(String),
}

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the CA PEM, when the token names it.
    pub ca_hash: Option<String>,
    /// The bearer secret.
    pub secret: String,
}

impl JoinToken {
    /// Parses a token file's content (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("K10") {
            let (hash, credential) = rest.split_once("::").ok_or(Error::Token)?;
            let secret = credential
                .split_once(':')
                .map_or(credential, |(_user, secret)| secret);
            let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex(hash) || secret.is_empty() {
                return Err(Error::Token);
            }
            return Ok(Self {
                ca_hash: Some(hash.to_ascii_lowercase()),
                secret: secret.to_owned(),
            });
        }
        if text.is_empty() || text.contains(char::is_whitespace) || text.contains(':') {
            return Err(Error::Token);
        }
        Ok(Self {
            ca_hash: None,
            secret: text.to_owned(),
        })
    }

    /// The token in the `K10<hash>::node:<secret>` form.
    pub fn format(ca_pem: &str, secret: &str) -> String {
        format!("K10{}::node:{secret}", ca_hash(ca_pem.as_bytes()))
    }
}

/// Hex SHA-256 of a CA bundle.
pub fn ca_hash(pem: &[u8]) -> String {
    sha2::Sha256::digest(pem)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Accepts any server certificate: used only to fetch `/cacerts`, whose content is then checked
/// against the token's hash. Handshake signatures are still verified.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Host and port of an `https://host[:port]` URL.
fn host_port(server: &str) -> Result<(String, u16), Error> {
    let bad = |why: &str| Error::Url(server.to_owned(), why.to_owned());
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| bad("expected https://HOST[:PORT]"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        None => 443,
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_owned(), port))
}

/// Fetches the CA bundle the apiserver at `server` serves at `/cacerts`.
pub async fn fetch_ca(server: &str) -> Result<String, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Fetch(server.to_owned(), format!("{what}: {e}"))
    };
    let (host, port) = host_port(server)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS", &e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.clone()).map_err(|e| fail("server name", &e))?;
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail("connecting", &e))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| fail("TLS handshake", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail("HTTP", &e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::get("/cacerts")
            .header(http::header::HOST, host.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail("request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail("request", &e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail("reading", &e))?
            .to_bytes();
        if status != http::StatusCode::OK {
            return Err(fail("answer", &status));
        }
        String::from_utf8(body.to_vec()).map_err(|e| fail("CA bundle", &e))
    };
    tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| fail("connecting", &"timed out"))?
}

/// An apiserver client for `server`, authenticated by the join token, trusting the CA the token
/// names (fetched and checked) or `ca_file`.
pub async fn client(
    server: &str,
    token: &JoinToken,
    ca_file: Option<&Path>,
) -> Result<kube::Client, Error> {
    let ca_pem = match (ca_file, &token.ca_hash) {
        (Some(path), _) => {
            std::fs::read_to_string(path).map_err(|e| Error::Read(path.display().to_string(), e))?
        }
        (None, None) => return Err(Error::NoCa),
        (None, Some(want)) => {
            // The server may still be starting (a node booting with it, or a restart): retry
            // for a minute, as a k3s agent keeps trying to join.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let pem = loop {
                match fetch_ca(server).await {
                    Ok(pem) => break pem,
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::info!("waiting for the server: {e}");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            let got = ca_hash(pem.as_bytes());
            if &got != want {
                return Err(Error::CaMismatch {
                    server: server.to_owned(),
                    got,
                    want: want.clone(),
                });
            }
            pem
        }
    };
    if let (Some(_), Some(want)) = (ca_file, &token.ca_hash)
        && &ca_hash(ca_pem.as_bytes()) != want
    {
        tracing::warn!("--ca-file differs from the CA the join token names; using --ca-file");
    }
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rudder", "cluster": {
            "server": server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&ca_pem),
        }}],
        "users": [{"name": "node", "user": {"token": token.secret}}],
        "contexts": [{"name": "rudder", "context": {"cluster": "rudder", "user": "node"}}],
        "current-context": "rudder",
    });
    let kubeconfig: kube::config::Kubeconfig =
        serde_json::from_value(kubeconfig).map_err(|e| Error::Client(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_in_both_forms() {
        let hash = "ab".repeat(32);
        let t = JoinToken::parse(&format!("K10{hash}::node:s3cret\n")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(t.secret, "s3cret");
        let bare = JoinToken::parse("s3cret").unwrap();
        assert_eq!(bare.ca_hash, None);
        for bad in [
            "",
            "K10abc::node:x",
            &format!("K10{hash}::node:"),
            &format!("K10{hash}"),
            "two words",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formatted_tokens_round_trip() {
        let pem = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";
        let t = JoinToken::parse(&JoinToken::format(pem, "xyz")).unwrap();
        assert_eq!(t.ca_hash, Some(ca_hash(pem.as_bytes())));
        assert_eq!(t.secret, "xyz");
    }

    #[test]
    fn server_urls_give_host_and_port() {
        assert_eq!(
            host_port("https://172.30.0.1:6443").unwrap(),
            ("172.30.0.1".into(), 6443)
        );
        assert_eq!(
            host_port("https://example").unwrap(),
            ("example".into(), 443)
        );
        assert_eq!(
            host_port("https://[::1]:6443/").unwrap(),
            ("::1".into(), 6443)
        );
        assert_eq!(host_port("https://[::1]").unwrap(), ("::1".into(), 443));
        assert!(host_port("http://x:1").is_err());
        assert!(host_port("https://x:port").is_err());
    }
}
