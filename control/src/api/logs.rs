//! `GET /api/v1/namespaces/{ns}/pods/{name}/log` (`kubectl logs`): the apiserver finds the pod's
//! node and streams the container's log from that node agent's kubelet API
//! (`rudder_node::kubelet_api`), as kube-apiserver does with the kubelet.
//!
//! - The container is `?container=`, or the pod's only container; with several, the error lists
//!   them, as kube-apiserver's does.
//! - `follow`, `previous`, `tailLines`, `limitBytes`, `timestamps`, `sinceSeconds` and
//!   `sinceTime` are passed on; the agent checks their values.
//! - The agent is reached at the node's InternalIP and `daemonEndpoints.kubeletEndpoint.Port`
//!   with the cluster's node token. Its TLS certificate must be the one whose SHA-256 the agent
//!   published on its Node (`rudder.dev/kubelet-serving-cert-sha256`), so the token only ever
//!   goes to the agent that registered the node.
//! - Finding and reaching the agent (`Agent`, `connect`) and choosing the container are shared
//!   with `pods/exec` ([`super::exec`]).

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::TokioIo;
use rudder_node::kubelet_api::{CERT_ANNOTATION, fingerprint};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde_json::Value;

use super::{
    Body, State,
    registry::ResourceType,
    request::Request,
    rest,
    status::{ApiError, ApiResult},
};

/// How long connecting to a node agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the log of a container of pod `ns/name`.
pub async fn serve(
    state: &Arc<State>,
    pods: &ResourceType,
    ns: &str,
    name: &str,
    req: &Request,
) -> ApiResult<Response<Body>> {
    let (pod, _) = rest::read(state, pods, Some(ns), name).await?;
    let container = pick_container(&pod, name, req.param("container"))?;
    let agent = Agent::of(state, &pod, name, "container logs").await?;
    let path = log_path(ns, name, &container, &agent.uid, req)?;
    let token = state.credentials.node_token.clone();
    fetch(&agent.endpoint, &path, &token, &agent.node_name).await
}

/// The node agent that runs a pod (shared with `pods/exec`).
pub(super) struct Agent {
    /// The pod's node.
    pub node_name: String,
    /// The pod's UID (the agent keeps the pod's state under it).
    pub uid: String,
    /// Where and how to reach the node's agent.
    pub endpoint: Endpoint,
}

impl Agent {
    /// Finds the agent of the node `pod` (named `name`) is bound to; `serves` names the service
    /// in the error for a node that does not publish its endpoint.
    pub async fn of(state: &Arc<State>, pod: &Value, name: &str, serves: &str) -> ApiResult<Self> {
        let node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(format!("pod {name} does not have a host assigned"))
            })?;
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let nodes = state
            .registry
            .lookup("", "v1", "nodes")
            .ok_or_else(|| ApiError::internal("nodes are not served"))?;
        let (node, _) = rest::read(state, &nodes, None, node_name).await?;
        let endpoint = Endpoint::of(&node).ok_or_else(|| {
            ApiError::internal(format!(
                "node {node_name} does not serve {serves} (no InternalIP, kubelet port or serving certificate fingerprint)"
            ))
        })?;
        Ok(Self {
            node_name: node_name.to_owned(),
            uid: uid.to_owned(),
            endpoint,
        })
    }
}

/// The agent's URL path for a log request (kept out of async code: the query builder is not
/// `Send`).
fn log_path(ns: &str, name: &str, container: &str, uid: &str, req: &Request) -> ApiResult<String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("podUID", uid);
    for key in ["follow", "previous", "timestamps"] {
        if req.flag(key) {
            query.append_pair(key, "true");
        }
    }
    if let Some(v) = req.param("sinceTime") {
        query.append_pair("sinceTime", v);
    }
    for key in ["tailLines", "limitBytes", "sinceSeconds"] {
        if let Some(v) = req.param(key) {
            if v.parse::<i64>().is_err() {
                return Err(ApiError::bad_request(format!(
                    "{key}: {v:?} is not a number"
                )));
            }
            query.append_pair(key, v);
        }
    }
    Ok(format!(
        "/containerLogs/{ns}/{name}/{container}?{}",
        query.finish()
    ))
}

/// The container a log (or exec) request means: the named one (any container, init container
/// or ephemeral container of the pod), or the only container.
pub(super) fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name")?.as_str().map(str::to_owned))
            .collect()
    };
    let containers = names("containers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            let known = containers
                .iter()
                .chain(&names("initContainers"))
                .chain(&names("ephemeralContainers"))
                .any(|n| n == c);
            if known {
                Ok(c.to_owned())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            ))),
        },
    }
}

/// Where and how to reach a node's agent.
pub(super) struct Endpoint {
    /// The node's InternalIP.
    pub ip: std::net::IpAddr,
    /// The kubelet port.
    pub port: u16,
    /// Hex SHA-256 of the agent's serving certificate.
    pub fingerprint: String,
}

impl Endpoint {
    /// The endpoint a Node object publishes, if it publishes one.
    pub fn of(node: &Value) -> Option<Self> {
        let ip = node
            .pointer("/status/addresses")?
            .as_array()?
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))?
            .get("address")?
            .as_str()?
            .parse()
            .ok()?;
        let port = node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)?;
        let fingerprint = node
            .pointer("/metadata/annotations")?
            .get(CERT_ANNOTATION)?
            .as_str()?
            .to_owned();
        Some(Self {
            ip,
            port,
            fingerprint,
        })
    }
}

/// An HTTP/1.1 connection to a node's agent over TLS pinned to its published certificate
/// (upgrades enabled, for exec). `doing` starts error messages ("reading logs from").
pub(super) async fn connect(
    endpoint: &Endpoint,
    node_name: &str,
    doing: &str,
) -> ApiResult<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let unreachable = |what: &str, e: &dyn std::fmt::Display| -> ApiError {
        ApiError::internal(format!(
            "{doing} node {node_name} ({}:{}): {what}: {e}",
            endpoint.ip, endpoint.port
        ))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable("TLS", &e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: endpoint.fingerprint.clone(),
            provider,
        }))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let dial = async {
        let tcp = tokio::net::TcpStream::connect((endpoint.ip, endpoint.port))
            .await
            .map_err(|e| unreachable("connecting", &e))?;
        let server_name = ServerName::IpAddress(endpoint.ip.into());
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable("TLS handshake", &e))
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .map_err(|_| unreachable("connecting", &"timed out"))??;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unreachable("HTTP", &e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

async fn fetch(
    endpoint: &Endpoint,
    path: &str,
    token: &str,
    node_name: &str,
) -> ApiResult<Response<Body>> {
    let unreachable = |what: &str, e: &dyn std::fmt::Display| -> ApiError {
        ApiError::internal(format!(
            "reading logs from node {node_name} ({}:{}): {what}: {e}",
            endpoint.ip, endpoint.port
        ))
    };
    let mut sender = connect(endpoint, node_name, "reading logs from").await?;
    let request = http::Request::get(path)
        .header(header::HOST, endpoint.ip.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable("request", &e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable("request", &e))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(
            if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST {
                ApiError::bad_request(body)
            } else {
                unreachable("node agent answered", &format!("{status}: {body}"))
            },
        );
    }
    // Stream the agent's answer through; a broken connection simply ends the log.
    let stream = futures::stream::unfold(response.into_body(), |mut body| async move {
        loop {
            match body.frame().await {
                Some(Ok(frame)) if frame.is_data() => {
                    return Some((Ok::<_, Infallible>(frame), body));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

/// Accepts exactly the certificate whose SHA-256 the node published; signatures are still
/// checked with the provider's algorithms.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity.as_ref()) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the node's certificate is not the one it published".into(),
            ))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "app");
        assert_eq!(pick_container(&one, "p", Some("init")).unwrap(), "init");
        let err = pick_container(&one, "p", Some("nope")).unwrap_err();
        assert!(
            err.message
                .contains("container nope is not valid for pod p"),
            "{}",
            err.message
        );
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let err = pick_container(&two, "p", None).unwrap_err();
        assert!(
            err.message.contains("choose one of: [a b]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn endpoints_need_address_port_and_fingerprint() {
        let node = json!({
            "metadata": {"annotations": {CERT_ANNOTATION: "ab12"}},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}
        });
        let e = Endpoint::of(&node).unwrap();
        assert_eq!(
            (e.ip.to_string(), e.port, e.fingerprint.as_str()),
            ("10.0.0.5".into(), 10250, "ab12")
        );
        let mut unpinned = node.clone();
        unpinned["metadata"] = json!({});
        assert!(Endpoint::of(&unpinned).is_none());
    }
}
