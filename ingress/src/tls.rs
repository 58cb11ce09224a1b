//! HTTPS: the certificate for each TLS handshake, chosen by SNI from the routing table.
//!
//! The certificates of `spec.tls` (from `kubernetes.io/tls` Secrets) are looked up by the
//! handshake's server name, exact then wildcard. A name without one (or a client without SNI)
//! gets the ingress's own self-signed certificate, as ingress-nginx serves its "Fake
//! Certificate": the handshake completes and the request is routed (the client decides whether
//! to trust it). Parsed certificates (and Secrets that failed to parse, which get the default)
//! are kept by Secret and content, so neither a table rebuild nor a handshake parses them again.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use pingora::{
    listeners::TlsAccept,
    protocols::tls::TlsRef,
    tls::{
        ext::{ssl_add_chain_cert, ssl_use_certificate, ssl_use_private_key},
        pkey::{PKey, Private},
        ssl::NameType,
        x509::X509,
    },
};

use crate::{proxy::Shared, routes::Certificate};

/// A parsed certificate chain and key.
struct Parsed {
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// Why a Secret's certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `tls.crt` or `tls.key` is not PEM the TLS library accepts.
    #[error("Secret {secret}: {what} is not a valid PEM {kind}: {source}")]
    Pem {
        secret: String,
        what: &'static str,
        kind: &'static str,
        #[source]
        source: pingora::tls::error::ErrorStack,
    },
    /// `tls.crt` holds no certificate.
    #[error("Secret {0}: tls.crt holds no certificate")]
    Empty(String),
    /// The default certificate could not be made.
    #[error("making the default certificate")]
    Default(#[source] rcgen::Error),
}

fn parse(cert: &Certificate) -> Result<Parsed, Error> {
    let chain = X509::stack_from_pem(&cert.cert).map_err(|source| Error::Pem {
        secret: cert.secret.clone(),
        what: "tls.crt",
        kind: "certificate chain",
        source,
    })?;
    if chain.is_empty() {
        return Err(Error::Empty(cert.secret.clone()));
    }
    let key = PKey::private_key_from_pem(&cert.key).map_err(|source| Error::Pem {
        secret: cert.secret.clone(),
        what: "tls.key",
        kind: "private key",
        source,
    })?;
    Ok(Parsed { chain, key })
}

fn fingerprint(cert: &Certificate) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cert.secret.hash(&mut h);
    cert.cert.hash(&mut h);
    cert.key.hash(&mut h);
    h.finish()
}

/// The SNI certificate chooser given to pingora's TLS listener.
pub struct Sni {
    shared: Arc<Shared>,
    default: Parsed,
    /// By fingerprint; `None` for a Secret that did not parse (reported once, not per
    /// handshake).
    parsed: RwLock<HashMap<u64, Option<Arc<Parsed>>>>,
}

impl Sni {
    /// A chooser over `shared`'s table, with a fresh self-signed default certificate.
    pub fn new(shared: Arc<Shared>) -> Result<Sni, Error> {
        let default = rcgen::generate_simple_self_signed(vec!["rudder-ingress.invalid".to_owned()])
            .map_err(Error::Default)?;
        let default = parse(&Certificate {
            cert: default.cert.pem().into_bytes(),
            key: default.signing_key.serialize_pem().into_bytes(),
            secret: "(default)".to_owned(),
        })?;
        Ok(Sni {
            shared,
            default,
            parsed: RwLock::new(HashMap::new()),
        })
    }

    /// The parsed form of `cert`, parsed once.
    fn parsed(&self, cert: &Certificate) -> Option<Arc<Parsed>> {
        let key = fingerprint(cert);
        if let Some(known) = self.parsed.read().ok().and_then(|m| m.get(&key).cloned()) {
            return known;
        }
        let parsed = match parse(cert) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!("ingress TLS: {e}; serving the default certificate instead");
                None
            }
        };
        if let Ok(mut m) = self.parsed.write() {
            // Certificates of Secrets that changed are dropped now and then.
            if m.len() > 4096 {
                m.clear();
            }
            m.insert(key, parsed.clone());
        }
        parsed
    }
}

fn install(ssl: &mut TlsRef, parsed: &Parsed) {
    let Some((leaf, rest)) = parsed.chain.split_first() else {
        return;
    };
    let result = ssl_use_certificate(ssl, leaf)
        .and_then(|()| rest.iter().try_for_each(|c| ssl_add_chain_cert(ssl, c)))
        .and_then(|()| ssl_use_private_key(ssl, &parsed.key));
    if let Err(e) = result {
        tracing::warn!("ingress TLS: installing a certificate: {e}");
    }
}

#[async_trait]
impl TlsAccept for Sni {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let table = self.shared.table();
        let chosen = ssl
            .servername(NameType::HOST_NAME)
            .and_then(|name| table.certificate(name))
            .and_then(|cert| self.parsed(cert));
        match chosen {
            Some(parsed) => install(ssl, &parsed),
            None => install(ssl, &self.default),
        }
    }
}
