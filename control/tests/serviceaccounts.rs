//! ServiceAccounts and their tokens on `rudder server`, end to end with unmodified kubectl:
//! `kubectl create token` gives a JWT the API accepts as `system:serviceaccount:<ns>:<name>`
//! (but not for another audience, not for less than 10 minutes, and no longer once the account
//! is deleted), which `kubectl auth whoami` and a TokenReview confirm; every namespace has the `kube-root-ca.crt` ConfigMap; and a pod finds a bound
//! token, the CA and its namespace in `/var/run/secrets/kubernetes.io/serviceaccount`, and can
//! call the API with that token.
//!
//! Needs root, iproute2 and kubectl; `cargo xtask ci` runs it. Everything is removed at the end,
//! also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::node::Node;

#[test]
#[ignore = "needs root, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn service_account_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), 0, &[]);
    let server = &node.server;
    server.wait_for("the default service account", || {
        server.kubectl(&["get", "sa", "default"]).status.success()
    });

    // A token from the TokenRequest API authenticates as the account.
    let token = server.ok(&["create", "token", "default"]).trim().to_owned();
    assert!(
        token.starts_with("eyJ") && token.split('.').count() == 3,
        "{token}"
    );
    let as_token = |token: &str, path: &str| {
        server.kubectl(&["get", "--raw", path, &format!("--token={token}")])
    };
    let out = as_token(&token, "/api/v1/namespaces/default/pods");
    assert!(out.status.success(), "{out:?}");
    let whoami = server.ok(&["auth", "whoami", &format!("--token={token}")]);
    assert!(
        whoami.contains("system:serviceaccount:default:default"),
        "{whoami}"
    );
    assert!(server.ok(&["auth", "whoami"]).contains("admin"));
    // A TokenReview says the same to whoever asks.
    let review = |token: &str| {
        let out = server.kubectl_stdin(
            &[
                "create",
                "--validate=false",
                "-f",
                "-",
                "-o",
                "jsonpath={.status.authenticated} {.status.user.username}",
            ],
            &format!(
                "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {token}\n"
            ),
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(review(&token), "true system:serviceaccount:default:default");
    assert_eq!(review("bogus"), "false");
    // One for another audience does not.
    let vault = server
        .ok(&["create", "token", "default", "--audience=vault"])
        .trim()
        .to_owned();
    let out = as_token(&vault, "/api/v1/namespaces/default/pods");
    assert!(!out.status.success(), "another audience: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{out:?}"
    );
    // Too short a duration is refused, naming the field.
    let err = server.fails(&["create", "token", "default", "--duration=5m"]);
    assert!(err.contains("expirationSeconds"), "{err}");
    let err = server.fails(&["create", "token", "nobody"]);
    assert!(err.contains("not found"), "{err}");

    // Every namespace gets the cluster CA.
    let ca = server.ok(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // A pod gets a bound token, the CA and its namespace, and can use the token.
    let pod = server.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: caller}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: debian
    command: [sleep, "3600"]
"#,
    );
    assert!(pod.status.success(), "{pod:?}");
    let waited = server.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/caller",
        "--timeout=60s",
    ]);
    assert!(
        waited.status.success(),
        "{}",
        server.ok(&["describe", "pod", "caller"])
    );
    let read = |file: &str| {
        server.ok(&[
            "exec",
            "caller",
            "--",
            "cat",
            &format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}"),
        ])
    };
    assert_eq!(read("namespace"), "default");
    assert_eq!(read("ca.crt"), ca);
    let pod_token = read("token");
    let out = as_token(&pod_token, "/api/v1/namespaces/default/pods/caller");
    assert!(out.status.success(), "{out:?}");
    // Bound to the pod: once the pod is gone, so is the token's use.
    server.ok(&["delete", "pod", "caller", "--timeout=30s"]);
    assert!(
        !as_token(&pod_token, "/api/v1/namespaces/default/pods")
            .status
            .success()
    );

    // Deleting the account revokes its tokens, also once it is recreated (a new UID).
    server.ok(&["delete", "sa", "default"]);
    server.wait_for("the account to be recreated", || {
        server.kubectl(&["get", "sa", "default"]).status.success()
    });
    let out = as_token(&token, "/api/v1/namespaces/default/pods");
    assert!(!out.status.success(), "revoked: {out:?}");
}
