//! `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec` (`kubectl exec`): the apiserver checks
//! the request, then splices the client's WebSocket onto one to the pod's node agent, as
//! kube-apiserver proxies exec to the kubelet.
//!
//! - The options are kubectl's: `command` (repeated), `container`, `stdin`, `stdout`, `stderr`,
//!   `tty`. Pods that ended (`Succeeded`, `Failed`), unknown containers, pods without a node, a
//!   missing command or no stream at all are answered with `Status` errors before anything is
//!   upgraded. The container is `?container=` (kubectl always sends it) or the pod's only one.
//! - The agent is reached like for `pods/log` (`super::logs`): the node's InternalIP and kubelet
//!   port, TLS pinned to the certificate the agent published, the cluster's node token.
//! - Upgrade: the client's WebSocket handshake (`Sec-WebSocket-Key`, `-Version`, `-Protocol`)
//!   is sent on to the agent's `/exec/…`. When the agent answers `101`, the client gets a `101`
//!   with the agent's `Sec-WebSocket-Accept` (made from the same key) and chosen subprotocol
//!   (`v5.channel.k8s.io` or `v4.channel.k8s.io`), and from then on the bytes of both
//!   connections are copied both ways unchanged: the WebSocket frames are the agent's and the
//!   client's, so pings, pongs, channel messages and the closing handshake pass through (the
//!   protocol is described in `rudder_node::exec`). When the agent refuses, its message becomes
//!   the `Status` the client gets.
//! - Requests that do not ask for a WebSocket (client-go falls back to SPDY with a `POST` when
//!   the WebSocket upgrade fails) get the same checks, the agent's included, so they answer with
//!   the reason the WebSocket attempt failed, or say that only WebSocket is served.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, client::conn::http1::SendRequest, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use rudder_node::exec::{ExecOptions, wants_websocket};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{
    Body, State,
    logs::{self, Agent},
    registry::ResourceType,
    request::Request,
    rest,
    status::{ApiError, ApiResult},
};

/// What an exec request needs beyond [`Request`], kept aside by `request::route`: hyper's
/// pending upgrade of the client's connection, and the raw query (`command` repeats, which the
/// parsed query map cannot hold).
pub struct Upgrade {
    /// The client connection's upgrade (HTTP/1.1 requests with an `Upgrade` header).
    pub on_upgrade: Option<OnUpgrade>,
    /// The query string as sent.
    pub query: String,
}

/// Serves `pods/exec` for pod `ns/name`.
pub async fn serve(
    state: &Arc<State>,
    pods: &ResourceType,
    ns: &str,
    name: &str,
    req: &Request,
    upgrade: Option<Upgrade>,
) -> ApiResult<Response<Body>> {
    let Upgrade { on_upgrade, query } = upgrade.unwrap_or(Upgrade {
        on_upgrade: None,
        query: String::new(),
    });
    let mut options = ExecOptions::parse(&query).map_err(ApiError::bad_request)?;
    let (pod, _) = rest::read(state, pods, Some(ns), name).await?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let container = logs::pick_container(&pod, name, req.param("container"))?;
    options.validate().map_err(ApiError::bad_request)?;
    let agent = Agent::of(state, &pod, name, "exec").await?;
    options.pod_uid = agent.uid.clone();
    let websocket = on_upgrade.is_some() && wants_websocket(&req.headers);
    let request = agent_request(
        &format!("/exec/{ns}/{name}/{container}?{}", options.to_query()),
        &agent,
        &state.credentials.node_token,
        websocket.then_some(&req.headers),
    )?;
    let doing = "running a command on";
    let mut sender = logs::connect(&agent.endpoint, &agent.node_name, doing).await?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| ApiError::internal(format!("{doing} node {}: {e}", agent.node_name)))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refused(response, &agent.node_name).await);
    }
    let client = match on_upgrade {
        Some(client) if websocket => client,
        _ => {
            return Err(ApiError::internal(format!(
                "the agent of node {} switched protocols unasked",
                agent.node_name
            )));
        }
    };
    let to_agent = hyper::upgrade::on(&mut response);
    let mut answer = Response::new(Full::new(Bytes::new()).boxed());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for name in [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        if let Some(value) = response.headers().get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    tokio::spawn(splice(client, to_agent, sender));
    Ok(answer)
}

/// The request for the agent: `path` with the node token, and the client's WebSocket
/// handshake headers when it asked for one (`handshake`).
fn agent_request(
    path: &str,
    agent: &Agent,
    token: &str,
    handshake: Option<&http::HeaderMap>,
) -> ApiResult<http::Request<Empty<Bytes>>> {
    let bad = |e: &dyn std::fmt::Display| ApiError::internal(format!("exec request: {e}"));
    let mut request = http::Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = path.parse().map_err(|e| bad(&e))?;
    let headers = request.headers_mut();
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&agent.endpoint.ip.to_string()).map_err(|e| bad(&e))?,
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| bad(&e))?,
    );
    if let Some(client) = handshake {
        for name in [
            header::CONNECTION,
            header::UPGRADE,
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_PROTOCOL,
        ] {
            for value in client.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    Ok(request)
}

/// The error for an agent that did not switch protocols: its message, as a bad request when
/// the request or the container was at fault (no such running container, no WebSocket).
async fn refused(response: http::Response<Incoming>, node_name: &str) -> ApiError {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
        .unwrap_or_default();
    if status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND {
        ApiError::bad_request(body)
    } else {
        ApiError::internal(format!(
            "running a command on node {node_name}: the node agent answered {status}: {body}"
        ))
    }
}

/// Copies bytes both ways between the client's and the agent's upgraded connections until
/// both ended. `sender` keeps the agent connection's request side until the upgrade is done.
async fn splice(client: OnUpgrade, agent: OnUpgrade, sender: SendRequest<Empty<Bytes>>) {
    let (client, agent) = tokio::join!(client, agent);
    drop(sender);
    let (mut client, mut agent) = match (client, agent) {
        (Ok(client), Ok(agent)) => (TokioIo::new(client), TokioIo::new(agent)),
        (Err(e), _) | (_, Err(e)) => {
            // Dropping the other side ends it: the agent kills the command of a vanished client.
            tracing::debug!(error = %e, "exec: a connection was not upgraded");
            return;
        }
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
        tracing::debug!(error = %e, "exec: the stream ended with an error");
    }
    // Flushes what is still buffered and says goodbye on both TLS sessions.
    let _ = client.shutdown().await;
    let _ = agent.shutdown().await;
}
