//! The node lifecycle controller, watched through unmodified kubectl: a node whose agent goes
//! silent turns `Unknown` after the 40 s grace, gets the `unreachable` taints, its pods are
//! marked not ready, a pod tolerating the taint for 1 s is evicted while one relying on the
//! default 300 s toleration stays; when the node reports again our taints go and a user's taint
//! stays.
//!
//! The node is a plain Node object with no agent behind it (its status is posted with kubectl),
//! so the test needs no root; it takes about a minute because the grace period is real.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::{Rudder, now};

const GHOST: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: ghost
spec:
  taints:
  - {key: example.com/dedicated, value: batch, effect: NoSchedule}
---
apiVersion: v1
kind: Pod
metadata:
  name: quick
spec:
  nodeName: ghost
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}
  containers:
  - {name: c, image: registry.k8s.io/pause:3.10}
---
apiVersion: v1
kind: Pod
metadata:
  name: patient
spec:
  nodeName: ghost
  containers:
  - {name: c, image: registry.k8s.io/pause:3.10}
"#;

fn wait(server: &Rudder, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}\n{}",
            server.ok(&["get", "node", "ghost", "-o", "yaml"]),
            server.ok(&["get", "pods", "-o", "yaml"])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn post_ready(server: &Rudder) {
    let t = now();
    let patch = format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready","lastHeartbeatTime":"{t}","lastTransitionTime":"{t}"}}]}}}}"#
    );
    server.ok(&[
        "patch",
        "node",
        "ghost",
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

#[test]
#[ignore = "needs kubectl 1.37 and about a minute; run by cargo xtask ci"]
fn a_silent_node_turns_unknown_is_tainted_and_its_pods_leave_by_their_tolerations() {
    let dir = tempfile::tempdir().unwrap();
    let server = Rudder::start(&dir.path().join("data"), &[]);
    server.kubectl_stdin(&["apply", "-f", "-"], GHOST);
    post_ready(&server);
    for pod in ["quick", "patient"] {
        common::set_pod_ready(&server, pod, true);
    }
    let ready = || {
        server.ok(&[
            "get",
            "node",
            "ghost",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
    };
    assert_eq!(ready(), "True");
    let started = Instant::now();

    // Silence: after the grace period the node is Unknown and tainted.
    wait(
        &server,
        "the node to turn Unknown",
        Duration::from_secs(75),
        || ready() == "Unknown",
    );
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "Unknown after only {:?}",
        started.elapsed()
    );
    let taints = || server.ok(&["get", "node", "ghost", "-o", "jsonpath={.spec.taints}"]);
    wait(
        &server,
        "the unreachable taints",
        Duration::from_secs(15),
        || {
            let t = taints();
            t.contains("node.kubernetes.io/unreachable")
                && t.contains("NoExecute")
                && t.contains("example.com/dedicated")
        },
    );
    let reason = server.ok(&[
        "get",
        "node",
        "ghost",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
    ]);
    assert_eq!(reason, "NodeStatusUnknown");

    // The pod tolerating the taint for 1 s is evicted; the other one keeps its 300 s and is
    // marked not ready.
    let deleting = |pod: &str| {
        server.ok(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
    };
    wait(
        &server,
        "quick to be evicted",
        Duration::from_secs(15),
        || !deleting("quick").is_empty(),
    );
    wait(
        &server,
        "patient to turn not ready",
        Duration::from_secs(15),
        || {
            server.ok(&[
                "get",
                "pod",
                "patient",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]) == "False"
        },
    );
    assert!(deleting("patient").is_empty(), "patient evicted early");

    // The node reports again: our taints go, the user's stays.
    post_ready(&server);
    wait(
        &server,
        "the unreachable taints to go",
        Duration::from_secs(15),
        || !taints().contains("node.kubernetes.io/unreachable"),
    );
    assert!(taints().contains("example.com/dedicated"), "{}", taints());
    assert!(deleting("patient").is_empty(), "patient evicted");
}
