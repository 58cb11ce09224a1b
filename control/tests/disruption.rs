//! PodDisruptionBudgets and the eviction subresource on `rudder server`, end to end with
//! unmodified kubectl. The test plays the node: it posts a Ready node and the pods' status, so
//! which pods are healthy is under its control.
//!
//! - discovery lists `pods/eviction` (kubectl drain evicts only then) and `policy/v1`
//!   poddisruptionbudgets (`pdb`);
//! - a budget with both `minAvailable` and `maxUnavailable` is refused, naming the field;
//! - the disruption controller writes the status (`expectedPods`, `currentHealthy`,
//!   `desiredHealthy`, `disruptionsAllowed`, `DisruptionAllowed`), which `kubectl get pdb` shows;
//! - an eviction the budget allows deletes the pod (gracefully) and spends the budget; the next
//!   is refused with 429 and kubectl drain's message; an unready pod may go only under
//!   `unhealthyPodEvictionPolicy: AlwaysAllow`; the Eviction's `deleteOptions` are honoured;
//! - a pod two budgets select cannot be evicted.
//!
//! Needs kubectl (`cargo xtask ci`). The server and its data are removed at the end.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::{Rudder, set_pod_ready};

/// The node and the pods `a`, `b` and `c` (`app: db`) bound to it.
fn setup() -> String {
    let mut yaml = "apiVersion: v1\nkind: Node\nmetadata: {name: ghost}\n".to_owned();
    for pod in ["a", "b", "c"] {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, labels: {{app: db}}}}\nspec:\n  nodeName: ghost\n  containers: [{{name: c, image: registry.k8s.io/pause:3.10}}]\n"
        ));
    }
    yaml
}

const BUDGET: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: db}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: db}}
"#;

/// The budget's `expectedPods/currentHealthy/desiredHealthy/disruptionsAllowed`.
fn counts(server: &Rudder, name: &str) -> String {
    server.ok(&[
        "get",
        "pdb",
        name,
        "-o",
        "jsonpath={.status.expectedPods}/{.status.currentHealthy}/{.status.desiredHealthy}/{.status.disruptionsAllowed}",
    ])
}

/// POSTs an Eviction for `pod`; stderr on failure.
fn evict(server: &Rudder, pod: &str, delete_options: &str) -> Result<String, String> {
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"default"}},"deleteOptions":{delete_options}}}"#
    );
    let out = server.kubectl_stdin(
        &[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
            "-f",
            "-",
        ],
        &body,
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
#[ignore = "needs kubectl 1.37; run by cargo xtask ci"]
fn budgets_hold_evictions_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Rudder::start(&dir.path().join("data"), &[]);

    // Discovery: what kubectl drain looks for before it evicts.
    let core: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "--raw", "/api/v1"])).unwrap();
    let eviction = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/eviction")
        .unwrap_or_else(|| panic!("no pods/eviction in {core}"));
    assert_eq!(
        (
            &eviction["group"],
            &eviction["version"],
            &eviction["kind"],
            &eviction["verbs"]
        ),
        (
            &serde_json::json!("policy"),
            &serde_json::json!("v1"),
            &serde_json::json!("Eviction"),
            &serde_json::json!(["create"])
        )
    );
    let resources = server.ok(&["api-resources", "--api-group=policy"]);
    assert!(
        resources.contains("poddisruptionbudgets")
            && resources.contains("pdb")
            && resources.contains("policy/v1"),
        "{resources}"
    );

    let out = server.kubectl_stdin(&["apply", "-f", "-"], &setup());
    assert!(out.status.success(), "{out:?}");
    for pod in ["a", "b", "c"] {
        set_pod_ready(&server, pod, true);
    }

    // Both bounds at once: refused, naming the field.
    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        &BUDGET.replace("minAvailable: 2", "minAvailable: 2\n  maxUnavailable: 1"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("spec: Invalid value")
            && stderr.contains("minAvailable and maxUnavailable cannot be both set"),
        "{stderr}"
    );

    // The controller computes the status.
    let out = server.kubectl_stdin(&["apply", "-f", "-"], BUDGET);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("the budget's status", || counts(&server, "db") == "3/3/2/1");
    let condition = server.ok(&[
        "get",
        "pdb",
        "db",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="DisruptionAllowed")].status}/{.status.conditions[?(@.type=="DisruptionAllowed")].reason}"#,
    ]);
    assert_eq!(condition, "True/SufficientPods");
    let table = server.ok(&["get", "pdb"]);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["db", "2", "N/A", "1"], "{table}");

    // One eviction is allowed: the pod is deleted gracefully (the node has to stop it).
    let out = evict(&server, "a", "{}").unwrap();
    assert!(out.contains(r#""status":"Success""#), "{out}");
    let deleting = server.ok(&[
        "get",
        "pod",
        "a",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!deleting.is_empty(), "a must be terminating");
    // The next one would leave fewer than two healthy pods.
    let err = evict(&server, "b", "{}").unwrap_err();
    assert!(
        err.contains("TooManyRequests")
            && err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    server.wait_for("the controller to count a out", || {
        counts(&server, "db") == "3/2/2/0"
    });
    assert!(server.ok(&["get", "pods", "b"]).contains("b "));
    let condition = server.ok(&[
        "get",
        "pdb",
        "db",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="DisruptionAllowed")].reason}"#,
    ]);
    assert_eq!(condition, "InsufficientPods");

    // An unready pod while the budget is not met: held back, unless the budget says
    // AlwaysAllow. Its deleteOptions (no grace) are honoured.
    set_pod_ready(&server, "c", false);
    server.wait_for("c to count as unhealthy", || {
        counts(&server, "db") == "3/1/2/0"
    });
    let err = evict(&server, "c", r#"{"gracePeriodSeconds":0}"#).unwrap_err();
    assert!(err.contains("TooManyRequests"), "{err}");
    server.ok(&[
        "patch",
        "pdb",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"unhealthyPodEvictionPolicy":"AlwaysAllow"}}"#,
    ]);
    evict(&server, "c", r#"{"gracePeriodSeconds":0}"#).unwrap();
    let gone = server.kubectl(&["get", "pod", "c"]);
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "c must be gone at once: {gone:?}"
    );

    // Eviction is create-only.
    let out = server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/b/eviction"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("MethodNotAllowed"),
        "{out:?}"
    );

    // A pod two budgets select cannot be evicted.
    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        &BUDGET.replace("name: db}", "name: db2}"),
    );
    assert!(out.status.success(), "{out:?}");
    let err = evict(&server, "b", "{}").unwrap_err();
    assert!(err.contains("more than one PodDisruptionBudget"), "{err}");
    // Without budgets, eviction is a delete.
    server.ok(&["delete", "pdb", "db", "db2"]);
    evict(&server, "b", "{}").unwrap();
    let deleting = server.ok(&[
        "get",
        "pod",
        "b",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!deleting.is_empty(), "b must be terminating");
}
