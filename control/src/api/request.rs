//! Request parsing and routing: authentication, the Kubernetes URL layout
//! (`/api/v1/namespaces/{ns}/{resource}/{name}/{subresource}`, `/apis/{group}/{version}/...`),
//! query parameters and request bodies.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use super::{
    Body, State, discovery, json_response, registry::ResourceType, rest, status::ApiError, watch,
};
use crate::auth::User;

/// What a resource request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Resource (plural).
    pub resource: String,
    /// Object name.
    pub name: Option<String>,
    /// Subresource (`status`, `scale`, `binding`...).
    pub subresource: Option<String>,
}

/// A parsed path.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A resource request.
    Resource(RequestInfo),
    /// `/api/v1` or `/apis/{group}/{version}`.
    GroupVersion(String, String),
    /// `/apis/{group}`.
    Group(String),
    /// Anything else (handled by discovery or 404).
    Other,
}

/// Parses a URL path into a [`Route`].
pub fn parse_path(path: &str) -> Route {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] => return Route::Group((*group).to_owned()),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::Other,
    };
    // Legacy `/watch/` paths are not served; clients use `?watch=true`.
    let mut namespace = None;
    let mut rest: &[&str] = rest;
    if rest.is_empty() {
        return Route::GroupVersion(group.to_owned(), version.to_owned());
    }
    if rest[0] == "namespaces" && rest.len() > 1 {
        // `/namespaces/{name}/status|finalize` are subresources of the namespace itself.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            namespace = Some(rest[1].to_owned());
            rest = &rest[2..];
        }
    }
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return Route::Other,
    };
    Route::Resource(RequestInfo {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource: resource.to_owned(),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

/// Decoded query parameters (last value wins).
pub fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// A request after authentication, ready for a handler.
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Headers.
    pub headers: HeaderMap,
    /// The unread body.
    pub body: Option<Incoming>,
    /// The authenticated user.
    pub user: User,
}

/// A request header, `X-Rudder-Managed-Fields: omit`, with which a client asks for lists and
/// watch events without `metadata.managedFields`. rudder's own scheduler, controllers and node
/// agents send it: they never read managedFields (kube-scheduler and kube-controller-manager
/// strip them from their informers for the same reason), and at 30,000 pods decoding them was
/// a sixth of the control plane's CPU and most of its informers' memory. Other clients get
/// every field, as from kube-apiserver.
pub const OMIT_MANAGED_FIELDS: &str = "x-rudder-managed-fields";

impl Request {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// Whether a boolean query parameter is set (`true` or `1`).
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    /// Whether `dryRun=All` was asked for.
    pub fn dry_run(&self) -> bool {
        self.param("dryRun").is_some_and(|v| v == "All")
    }

    /// The request's `Content-Type` without parameters.
    pub fn content_type(&self) -> String {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default()
    }

    /// Whether the client asked to be sent objects without `metadata.managedFields`
    /// ([`OMIT_MANAGED_FIELDS`]).
    pub fn omits_managed_fields(&self) -> bool {
        self.headers
            .get(OMIT_MANAGED_FIELDS)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"omit"))
    }

    /// Whether the client asked for a Table (`kubectl get`).
    pub fn wants_table(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("as=Table"))
    }

    /// Reads the body, at most `limit` bytes (413 beyond).
    pub async fn bytes(&mut self, limit: usize) -> Result<Bytes, ApiError> {
        let Some(body) = self.body.take() else {
            return Ok(Bytes::new());
        };
        if let Some(len) = self
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            && len > limit
        {
            return Err(ApiError::too_large(limit));
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(limit)),
            Err(e) => Err(ApiError::bad_request(format!(
                "reading the request body: {e}"
            ))),
        }
    }

    /// Reads and decodes a JSON (or YAML) object body.
    pub async fn object(&mut self, limit: usize) -> Result<Value, ApiError> {
        let bytes = self.bytes(limit).await?;
        let content_type = self.content_type();
        decode_object(&bytes, &content_type)
    }
}

/// Decodes a JSON or YAML body into an object.
pub fn decode_object(bytes: &[u8], content_type: &str) -> Result<Value, ApiError> {
    if content_type.contains("protobuf") {
        // client-go's typed clients (e.g. `kubectl create deployment x`) send protobuf bodies.
        return super::protobuf::decode(bytes);
    }
    if content_type.contains("cbor") {
        // client-go falls back to JSON when a CBOR request is answered with 415.
        return Err(ApiError::unsupported_media_type_hint(
            content_type,
            "rudder accepts JSON, YAML and Kubernetes protobuf bodies",
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let value: Value = if content_type.contains("yaml") {
        serde_yaml::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Paths anyone may read, as with Kubernetes' `system:public-info-viewer`.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/cacerts"
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// The user of the request's bearer token: a static one, or a ServiceAccount token
/// ([`super::tokens`]).
async fn authenticate(state: &State, headers: &HeaderMap) -> Option<User> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    if super::tokens::looks_like_jwt(token) {
        return super::tokens::authenticate(state, token).await;
    }
    state.credentials.authenticate(token).cloned()
}

/// Routes one request.
pub async fn route(
    state: &Arc<State>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    // `pods/exec` keeps what its upgrade needs: the pending upgrade and the raw query.
    let upgrade = path.ends_with("/exec").then(|| super::exec::Upgrade {
        on_upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
    });
    let user = match authenticate(state, &parts.headers).await {
        Some(user) => user,
        None if is_public(&path) => User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        },
        None => return Err(ApiError::unauthorized()),
    };
    let mut request = Request {
        method: parts.method,
        query: parse_query(parts.uri.query()),
        headers: parts.headers,
        body: Some(body),
        user,
    };
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return health(state).await,
        "/version" => return Ok(json_response(StatusCode::OK, &discovery::version())),
        // The CA bundle, for agents joining with a token that names its hash (k3s does the same).
        "/cacerts" => {
            let pem = Bytes::from(state.credentials.tls.ca_pem.clone());
            let mut resp = Response::new(http_body_util::Full::new(pem).boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            return Ok(resp);
        }
        "/api" => return Ok(json_response(StatusCode::OK, &discovery::api_versions())),
        "/apis" => {
            return Ok(json_response(
                StatusCode::OK,
                &discovery::api_group_list(&state.registry),
            ));
        }
        _ => {}
    }
    if path == "/openapi/v2" || path.starts_with("/openapi/v3") {
        return discovery::openapi(state, &path, &request);
    }
    match parse_path(&path) {
        // Groups not in the registry (their discovery is `discovery`'s): computed answers.
        Route::Resource(info) if info.group == super::metrics::GROUP => {
            super::metrics::serve(state, &info, &request).await
        }
        Route::Resource(info)
            if info.group == super::tokens::REVIEW_GROUP
                && info.namespace.is_none()
                && info.name.is_none() =>
        {
            super::tokens::serve_review(state, &info.resource, &info.version, &mut request).await
        }
        Route::Group(group) => discovery::api_group(&state.registry, &group)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(|| ApiError::no_route(&path)),
        Route::GroupVersion(group, version) => {
            discovery::resource_list(&state.registry, &group, &version)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(|| ApiError::no_route(&path))
        }
        Route::Resource(info) => {
            let rt = state
                .registry
                .lookup(&info.group, &info.version, &info.resource)
                .ok_or_else(|| ApiError::no_route(&path))?;
            if !rt.namespaced && info.namespace.is_some() {
                return Err(ApiError::no_route(&path));
            }
            dispatch(state, &rt, &info, &mut request, upgrade).await
        }
        Route::Other => Err(ApiError::no_route(&path)),
    }
}

async fn dispatch(
    state: &Arc<State>,
    rt: &Arc<ResourceType>,
    info: &RequestInfo,
    req: &mut Request,
    upgrade: Option<super::exec::Upgrade>,
) -> Result<Response<Body>, ApiError> {
    let ns = info.namespace.as_deref();
    let sub = info.subresource.as_deref();
    if let Some(sub) = sub {
        let allowed = match sub {
            "status" => rt.status,
            "scale" => rt.scale.is_some(),
            "binding" | "log" | "exec" | "eviction" => rt.plural == "pods" && rt.group.is_empty(),
            "token" => rt.plural == "serviceaccounts" && rt.group.is_empty(),
            "finalize" => rt.plural == "namespaces",
            _ => false,
        };
        if !allowed {
            return Err(ApiError::no_route(&format!("{}/{sub}", rt.plural)));
        }
    }
    match (req.method.clone(), info.name.as_deref()) {
        (Method::GET, None) if req.flag("watch") => watch::serve(state, rt, ns, req).await,
        (Method::GET, None) => rest::list(state, rt, ns, req).await,
        // Eviction and binding are create-only, as in kube-apiserver.
        (method, Some(_))
            if method != Method::POST && matches!(sub, Some("eviction" | "binding")) =>
        {
            Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            )))
        }
        (Method::GET, Some(name)) if sub == Some("log") => {
            super::logs::serve(state, rt, ns.unwrap_or_default(), name, req).await
        }
        (Method::GET | Method::POST, Some(name)) if sub == Some("exec") => {
            super::exec::serve(state, rt, ns.unwrap_or_default(), name, req, upgrade).await
        }
        (Method::GET, Some(name)) => rest::get(state, rt, ns, name, sub, req).await,
        (Method::POST, None) => rest::create(state, rt, ns, req).await,
        (Method::POST, Some(name)) if sub == Some("token") => {
            super::tokens::serve(state, ns.unwrap_or_default(), name, req).await
        }
        (Method::POST, Some(name)) if sub == Some("eviction") => {
            super::eviction::serve(state, rt, ns.unwrap_or_default(), name, req).await
        }
        (Method::POST, Some(name)) if sub == Some("binding") => {
            rest::bind(state, rt, ns, name, req).await
        }
        (Method::PUT, Some(name)) => rest::update(state, rt, ns, name, sub, req).await,
        (Method::PATCH, Some(name)) => rest::patch(state, rt, ns, name, sub, req).await,
        (Method::DELETE, Some(name)) if sub.is_none() => {
            rest::delete(state, rt, ns, name, req).await
        }
        (Method::DELETE, None) => rest::delete_collection(state, rt, ns, req).await,
        (method, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

async fn health(state: &State) -> Result<Response<Body>, ApiError> {
    match state.store.revision().await {
        Ok(_) => {
            let mut resp =
                Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")).boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            Ok(resp)
        }
        Err(e) => Err(ApiError::unavailable(format!("storage is not ready: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        g: &str,
        v: &str,
        ns: Option<&str>,
        r: &str,
        n: Option<&str>,
        s: Option<&str>,
    ) -> Route {
        Route::Resource(RequestInfo {
            group: g.into(),
            version: v.into(),
            namespace: ns.map(Into::into),
            resource: r.into(),
            name: n.map(Into::into),
            subresource: s.map(Into::into),
        })
    }

    #[test]
    fn paths_parse_like_kube_apiserver() {
        assert_eq!(
            parse_path("/api/v1/pods"),
            info("", "v1", None, "pods", None, None)
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/default/pods/web/status"),
            info(
                "",
                "v1",
                Some("default"),
                "pods",
                Some("web"),
                Some("status")
            )
        );
        assert_eq!(
            parse_path("/api/v1/namespaces"),
            info("", "v1", None, "namespaces", None, None)
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/kube-system"),
            info("", "v1", None, "namespaces", Some("kube-system"), None)
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/x/finalize"),
            info("", "v1", None, "namespaces", Some("x"), Some("finalize"))
        );
        assert_eq!(
            parse_path("/apis/apps/v1/namespaces/a/deployments/d/scale"),
            info(
                "apps",
                "v1",
                Some("a"),
                "deployments",
                Some("d"),
                Some("scale")
            )
        );
        assert_eq!(
            parse_path("/apis/apps/v1"),
            Route::GroupVersion("apps".into(), "v1".into())
        );
        assert_eq!(
            parse_path("/api/v1"),
            Route::GroupVersion("".into(), "v1".into())
        );
        assert_eq!(parse_path("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(parse_path("/api/v1/a/b/c/d"), Route::Other);
        assert_eq!(parse_path("/nope"), Route::Other);
    }

    #[test]
    fn bodies_decode_or_explain() {
        assert!(decode_object(b"{\"a\":1}", "application/json").is_ok());
        assert!(decode_object(b"a: 1\n", "application/yaml").is_ok());
        let err = decode_object(b"{not json", "application/json").unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(
            decode_object(b"[1]", "application/json").unwrap_err().code,
            400
        );
        assert_eq!(
            decode_object(b"  ", "application/json").unwrap_err().code,
            400
        );
    }
}
