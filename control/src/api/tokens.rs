//! ServiceAccount tokens: the TokenRequest API (`POST .../serviceaccounts/{name}/token`, what
//! `kubectl create token` and the node agents' projected token volumes call) and their
//! authentication, as kube-apiserver does with its `--service-account-*` flags.
//!
//! - Tokens are JWTs signed with ES256 by a P-256 key the apiserver keeps in storage
//!   ([`KEY_PATH`], made by the first server to start and shared by every server on the same
//!   store, so a token from one is good on all). The key is not a resource: no API path reads it.
//! - Claims as Kubernetes writes them: `iss` ([`ISSUER`]), `sub`
//!   (`system:serviceaccount:<ns>:<name>`), `aud` (the request's audiences, or the API's own,
//!   [`ISSUER`]), `iat`/`nbf`/`exp`, and `kubernetes.io` with the namespace, the ServiceAccount's
//!   name and UID and, for a token bound to a pod, the pod's name and UID.
//! - `expirationSeconds` defaults to one hour and must be at least 10 minutes; at most 48 hours
//!   are granted.
//! - A token authenticates to this API only if its signature holds, it has not expired, its
//!   audiences include the API's, and the ServiceAccount (and the bound pod) still exist with the
//!   UIDs it names: deleting either revokes it. The user is `system:serviceaccount:<ns>:<name>`
//!   in the groups `system:serviceaccounts` and `system:serviceaccounts:<ns>`. rudder has no
//!   authorisation layer yet: any authenticated user may do anything.
//! - `authentication.k8s.io/v1` reviews ([`serve_review`]): `selfsubjectreviews` tell the
//!   caller who it is (`kubectl auth whoami`); `tokenreviews` tell whether a token (static or
//!   ServiceAccount, for this API's audience) authenticates, and as whom.
//! - Admission ([`admit_pod`]), as the ServiceAccount admission plugin: a new pod gets the
//!   projected volume `kube-api-access-<suffix>` (a bound token refreshed by the node, the
//!   `kube-root-ca.crt` ConfigMap's `ca.crt`, the namespace) mounted read-only at
//!   [`TOKEN_DIR`] in every container, unless the pod or its ServiceAccount sets
//!   `automountServiceAccountToken: false` or a container already mounts something there. A
//!   ServiceAccount that does not exist yet is not an error here (the namespace's `default`
//!   comes moments after the namespace): the node retries the token until it does.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Response, StatusCode};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair as _},
};
use serde_json::{Value, json};

use super::{
    Body, State, json_response,
    request::Request,
    status::{ApiError, ApiResult, Cause},
};
use crate::{auth::User, store::Store};

/// Where the signing key (PKCS#8) is stored.
pub const KEY_PATH: &str = "/registry/rudder/serviceaccount-signing-key";

/// The issuer, and the audience of tokens meant for this API.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Where pods find their token, CA and namespace.
pub const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Default and bounds of `expirationSeconds`.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 48 * 3600;

/// The signing key.
pub struct Keys {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("kid", &self.kid).finish()
    }
}

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Storage failed.
    #[error("reading or writing the service account signing key")]
    Store(#[from] crate::store::Error),
    /// The stored key is not a P-256 PKCS#8 key, or one could not be made.
    #[error("the service account signing key is unusable: {0}")]
    Key(String),
}

impl Keys {
    /// The stored key, made and stored first if there is none (the first server wins a race).
    pub async fn load_or_create(store: &Arc<dyn Store>) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match store.get(KEY_PATH).await? {
            Some(kv) => kv.value.to_vec(),
            None => {
                let made =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|e| KeyError::Key(e.to_string()))?;
                match store
                    .create(KEY_PATH, Bytes::copy_from_slice(made.as_ref()))
                    .await
                {
                    Ok(_) => made.as_ref().to_vec(),
                    Err(crate::store::Error::AlreadyExists(_)) => store
                        .get(KEY_PATH)
                        .await?
                        .map(|kv| kv.value.to_vec())
                        .ok_or_else(|| KeyError::Key("vanished while being made".into()))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Self::from_pkcs8(&pkcs8, rng)
    }

    fn from_pkcs8(pkcs8: &[u8], rng: SystemRandom) -> Result<Self, KeyError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|e| KeyError::Key(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        Ok(Self { pair, kid, rng })
    }

    /// A JWT of `claims`.
    fn sign(&self, claims: &Value) -> ApiResult<String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let encode = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", encode(&header), encode(claims));
        let sig = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| ApiError::internal(format!("signing a token: {e}")))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }

    /// The claims of `token` if its signature is this key's (nothing else is checked here).
    fn verified_claims(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
        let key = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.pair.public_key().as_ref(),
        );
        key.verify(format!("{h}.{c}").as_bytes(), &sig).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()
    }
}

/// Whether `token` looks like a JWT (three base64url parts), not a static token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

/// What a verified token says about who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// Namespace.
    pub namespace: String,
    /// ServiceAccount name and UID.
    pub account: (String, String),
    /// Bound pod name and UID, if any.
    pub pod: Option<(String, String)>,
}

impl Subject {
    /// The user the apiserver sees.
    pub fn user(&self) -> User {
        User {
            name: format!(
                "system:serviceaccount:{}:{}",
                self.namespace, self.account.0
            ),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", self.namespace),
                "system:authenticated".into(),
            ],
        }
    }
}

/// Checks `claims` at `now` (seconds): the issuer, the audience, the validity window; returns
/// the subject they name.
pub fn check_claims(claims: &Value, now: i64) -> Result<Subject, &'static str> {
    if claims.get("iss").and_then(Value::as_str) != Some(ISSUER) {
        return Err("token issued by someone else");
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&ISSUER) {
        return Err("token audiences do not include this API");
    }
    let time = |k: &str| claims.get(k).and_then(Value::as_i64);
    // A minute of clock skew is allowed, as in Kubernetes.
    if time("exp").is_none_or(|exp| exp + 60 < now) {
        return Err("token has expired");
    }
    if time("nbf").is_some_and(|nbf| nbf - 60 > now) {
        return Err("token is not valid yet");
    }
    let k8s = claims
        .get("kubernetes.io")
        .ok_or("no kubernetes.io claim")?;
    let s = |p: &str| k8s.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let namespace = s("/namespace").ok_or("no namespace claim")?;
    let account = (
        s("/serviceaccount/name").ok_or("no service account claim")?,
        s("/serviceaccount/uid").ok_or("no service account claim")?,
    );
    if claims.get("sub").and_then(Value::as_str)
        != Some(&format!("system:serviceaccount:{namespace}:{}", account.0))
    {
        return Err("subject does not match the service account");
    }
    let pod = match (s("/pod/name"), s("/pod/uid")) {
        (Some(n), Some(u)) => Some((n, u)),
        _ => None,
    };
    Ok(Subject {
        namespace,
        account,
        pod,
    })
}

/// The UID of the stored object at `key`, if it exists and is not being deleted.
async fn live_uid(state: &State, key: &str) -> Option<String> {
    let kv = state.store.get(key).await.ok()??;
    let obj: Value = serde_json::from_slice(&kv.value).ok()?;
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The user of a ServiceAccount token, or `None` if it does not authenticate (bad signature,
/// expired, another audience, or its account or pod gone).
pub async fn authenticate(state: &State, token: &str) -> Option<User> {
    let claims = state.service_account_keys.verified_claims(token)?;
    let subject = match check_claims(&claims, jiff::Timestamp::now().as_second()) {
        Ok(s) => s,
        Err(why) => {
            tracing::debug!(why, "service account token refused");
            return None;
        }
    };
    let sa_key = format!(
        "/registry/serviceaccounts/{}/{}",
        subject.namespace, subject.account.0
    );
    if live_uid(state, &sa_key).await.as_deref() != Some(subject.account.1.as_str()) {
        return None;
    }
    if let Some((pod, uid)) = &subject.pod {
        let pod_key = format!("/registry/pods/{}/{pod}", subject.namespace);
        if live_uid(state, &pod_key).await.as_deref() != Some(uid.as_str()) {
            return None;
        }
    }
    Some(subject.user())
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: a TokenRequest answered with
/// its `status.token`.
pub async fn serve(
    state: &Arc<State>,
    ns: &str,
    name: &str,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let body = req.object(state.max_body_bytes).await?;
    let invalid = |causes: Vec<Cause>| {
        ApiError::invalid("authentication.k8s.io", "TokenRequest", name, causes)
    };
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION,
        Some(v) => match v.as_i64() {
            Some(s) if s >= MIN_EXPIRATION => s.min(MAX_EXPIRATION),
            _ => {
                return Err(invalid(vec![Cause::invalid(
                    "spec.expirationSeconds",
                    v,
                    "may not specify a duration less than 10 minutes",
                )]));
            }
        },
    };
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(ISSUER.to_owned());
    }
    let sa_uid = live_uid(state, &format!("/registry/serviceaccounts/{ns}/{name}"))
        .await
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let mut k8s = json!({"namespace": ns, "serviceaccount": {"name": name, "uid": sa_uid}});
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        let kind = bound
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let bound_name = bound
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind != "Pod" {
            return Err(invalid(vec![Cause::not_supported(
                "spec.boundObjectRef.kind",
                &json!(kind),
                &["Pod"],
            )]));
        }
        let uid = live_uid(state, &format!("/registry/pods/{ns}/{bound_name}"))
            .await
            .ok_or_else(|| ApiError::not_found("", "pods", bound_name))?;
        if let Some(want) = bound.get("uid").and_then(Value::as_str)
            && !want.is_empty()
            && want != uid
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                bound_name,
                &format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
                ),
            ));
        }
        k8s["pod"] = json!({"name": bound_name, "uid": uid});
    }
    let now = jiff::Timestamp::now().as_second();
    let exp = now + expiration;
    let claims = json!({
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": exp,
        "kubernetes.io": k8s,
    });
    let token = state.service_account_keys.sign(&claims)?;
    let expires = jiff::Timestamp::from_second(exp)
        .map(|t| format!("{t:.0}"))
        .unwrap_or_default();
    let mut out = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": {"audiences": audiences, "expirationSeconds": expiration},
        "status": {"token": token, "expirationTimestamp": expires},
    });
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        out["spec"]["boundObjectRef"] = bound.clone();
    }
    Ok(json_response(StatusCode::CREATED, &out))
}

/// The authentication group's name.
pub const REVIEW_GROUP: &str = "authentication.k8s.io";
/// Its version.
pub const REVIEW_VERSION: &str = "v1";

/// `/apis/authentication.k8s.io/v1`.
pub fn review_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{REVIEW_GROUP}/v1"),
        "resources": [
            {"name": "selfsubjectreviews", "singularName": "selfsubjectreview",
             "namespaced": false, "kind": "SelfSubjectReview", "verbs": ["create"]},
            {"name": "tokenreviews", "singularName": "tokenreview",
             "namespaced": false, "kind": "TokenReview", "verbs": ["create"]},
        ],
    })
}

fn user_info(user: &User) -> Value {
    json!({"username": user.name, "groups": user.groups})
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` and `.../tokenreviews`.
pub async fn serve_review(
    state: &Arc<State>,
    resource: &str,
    version: &str,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let path = format!("/apis/{REVIEW_GROUP}/{version}/{resource}");
    if version != "v1" {
        return Err(ApiError::no_route(&path));
    }
    if req.method != http::Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            req.method
        )));
    }
    let body = req.object(state.max_body_bytes).await?;
    let api_version = format!("{REVIEW_GROUP}/v1");
    match resource {
        "selfsubjectreviews" => Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "kind": "SelfSubjectReview",
                "apiVersion": api_version,
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": user_info(&req.user)},
            }),
        )),
        "tokenreviews" => {
            let token = body
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::invalid(
                        REVIEW_GROUP,
                        "TokenReview",
                        "",
                        vec![Cause::required("spec.token", "")],
                    )
                })?
                .trim()
                .to_owned();
            let user = if looks_like_jwt(&token) {
                authenticate(state, &token).await
            } else {
                state.credentials.authenticate(&token).cloned()
            };
            let status = match user {
                Some(u) => {
                    json!({"authenticated": true, "user": user_info(&u), "audiences": [ISSUER]})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            Ok(json_response(
                StatusCode::CREATED,
                &json!({
                    "kind": "TokenReview",
                    "apiVersion": api_version,
                    "metadata": {"creationTimestamp": null},
                    "spec": body.get("spec").cloned().unwrap_or(json!({})),
                    "status": status,
                }),
            ))
        }
        _ => Err(ApiError::no_route(&path)),
    }
}

/// Adds the ServiceAccount token volume to a pod being created (see the module docs).
pub async fn admit_pod(state: &State, pod: &mut Value) {
    if pod.pointer("/spec/automountServiceAccountToken") == Some(&Value::Bool(false)) {
        return;
    }
    let ns = super::object::namespace(pod).unwrap_or_default().to_owned();
    let account = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let sa_says_no = match state
        .store
        .get(&format!("/registry/serviceaccounts/{ns}/{account}"))
        .await
    {
        Ok(Some(kv)) => {
            serde_json::from_slice::<Value>(&kv.value)
                .ok()
                .and_then(|sa| sa.get("automountServiceAccountToken").cloned())
                == Some(Value::Bool(false))
        }
        _ => false,
    };
    if !sa_says_no {
        add_token_volume(pod, &super::object::name_suffix());
    }
}

/// The projected token volume, `kube-api-access-<suffix>`, and its mount in every container
/// that mounts nothing at [`TOKEN_DIR`] (none if a volume of that name exists already).
pub fn add_token_volume(pod: &mut Value, suffix: &str) {
    let name = format!("kube-api-access-{suffix}");
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    let Some(volumes) = volumes.as_array_mut() else {
        return;
    };
    if volumes
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(name.as_str()))
    {
        return;
    }
    volumes.push(json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }));
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            if mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_DIR))
            {
                continue;
            }
            mounts.push(json!({"name": name, "readOnly": true, "mountPath": TOKEN_DIR}));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        Keys::from_pkcs8(pkcs8.as_ref(), rng).unwrap()
    }

    fn claims(aud: Value, exp: i64) -> Value {
        json!({
            "iss": ISSUER,
            "sub": "system:serviceaccount:default:robot",
            "aud": aud,
            "iat": 1000, "nbf": 1000, "exp": exp,
            "kubernetes.io": {"namespace": "default",
                              "serviceaccount": {"name": "robot", "uid": "u1"},
                              "pod": {"name": "web", "uid": "p1"}},
        })
    }

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let k = keys();
        let token = k.sign(&claims(json!([ISSUER]), 5000)).unwrap();
        assert!(looks_like_jwt(&token));
        let got = k.verified_claims(&token).unwrap();
        let subject = check_claims(&got, 2000).unwrap();
        assert_eq!(subject.account, ("robot".into(), "u1".into()));
        assert_eq!(subject.pod, Some(("web".into(), "p1".into())));
        assert_eq!(subject.user().name, "system:serviceaccount:default:robot");
        // Another key's signature, or a changed payload, is refused.
        assert!(keys().verified_claims(&token).is_none());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(claims(json!([ISSUER]), 99_999).to_string());
        assert!(
            k.verified_claims(&format!("{}.{forged}.{}", parts[0], parts[2]))
                .is_none()
        );
        assert!(k.verified_claims("a.b").is_none());
        assert!(!looks_like_jwt("static-token"));
    }

    #[test]
    fn pods_get_the_token_volume_in_every_container_that_has_none_there() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": TOKEN_DIR}]},
            ],
        }});
        add_token_volume(&mut pod, "x1y2z");
        assert_eq!(pod["spec"]["volumes"][0]["name"], "kube-api-access-x1y2z");
        let sources = &pod["spec"]["volumes"][0]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            pod["spec"]["initContainers"][0]["volumeMounts"][0],
            json!({"name": "kube-api-access-x1y2z", "readOnly": true, "mountPath": TOKEN_DIR})
        );
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-x1y2z"
        );
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"],
            json!([{"name": "mine", "mountPath": TOKEN_DIR}]),
            "a container's own mount there stays"
        );
        let before = pod.clone();
        add_token_volume(&mut pod, "x1y2z");
        assert_eq!(pod, before, "added once");
    }

    #[test]
    fn claims_are_checked_for_audience_time_and_subject() {
        assert_eq!(
            check_claims(&claims(json!(["vault"]), 5000), 2000),
            Err("token audiences do not include this API")
        );
        assert_eq!(
            check_claims(&claims(json!(ISSUER), 5000), 6000),
            Err("token has expired")
        );
        assert!(
            check_claims(&claims(json!(ISSUER), 5000), 5030).is_ok(),
            "skew"
        );
        let mut c = claims(json!([ISSUER]), 5000);
        c["sub"] = json!("system:serviceaccount:default:other");
        assert!(check_claims(&c, 2000).is_err());
        let mut c = claims(json!([ISSUER]), 5000);
        c["iss"] = json!("https://elsewhere");
        assert!(check_claims(&c, 2000).is_err());
    }
}
