//! DaemonSets on `rudder server`, end to end with unmodified kubectl.
//!
//! - With the real node agent: a DaemonSet gets exactly one Ready pod on the node and
//!   `kubectl rollout status` returns; a deleted pod is replaced; changing the template rolls
//!   the pod; a nodeSelector no node matches gives `desiredNumberScheduled` 0 and no pods;
//!   deleting the DaemonSet removes its pods (garbage collector). Needs root, BPF, iproute2 and
//!   kubectl; the node's private network is described in `common/node.rs` and is removed at the
//!   end, also when the test fails.
//! - With plain Node objects and no agent behind them (no root needed): pods follow node
//!   labels and taints, a cordoned node still gets its pod, a node that goes takes its pod with
//!   it. Nodes without an agent never run anything, so pods deleted gracefully stay
//!   `Terminating`; the test looks at `deletionTimestamp`. It finishes well inside the node
//!   lifecycle controller's 60 s startup grace, after which those nodes would be tainted.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeSet;

use common::{Rudder, node::Node};

const DAEMONSETS: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: agnhost
        image: registry.k8s.io/e2e-test-images/agnhost:2.47
        args: ["netexec", "--http-port=8080"]
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: nowhere
spec:
  selector:
    matchLabels: {app: nowhere}
  template:
    metadata:
      labels: {app: nowhere}
    spec:
      nodeSelector: {rudder.test/none: "true"}
      containers:
      - name: pause
        image: registry.k8s.io/pause:3.10
"#;

/// One pod as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PodView {
    name: String,
    node: String,
    ready: bool,
    deleting: bool,
}

/// The pods labelled `app=<app>`.
fn pods(server: &Rudder, app: &str) -> Vec<PodView> {
    let out = server.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name},{.spec.nodeName},{.status.conditions[?(@.type==\"Ready\")].status},{.metadata.deletionTimestamp} {end}",
    ]);
    out.split_whitespace()
        .map(|line| {
            let mut fields = line.split(',');
            let mut next = || fields.next().unwrap_or("").to_owned();
            let (name, node, ready, deleting) = (next(), next(), next(), next());
            PodView {
                name,
                node,
                ready: ready == "True",
                deleting: !deleting.is_empty(),
            }
        })
        .collect()
}

/// Nodes with a pod of `app` that is not being deleted.
fn live_nodes(server: &Rudder, app: &str) -> BTreeSet<String> {
    pods(server, app)
        .into_iter()
        .filter(|p| !p.deleting)
        .map(|p| p.node)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
#[ignore = "needs root, BPF, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn daemonset_runs_one_pod_per_node_rolls_and_cascades() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), 0, &[]);
    let server = &node.server;
    let out = server.kubectl_stdin(&["apply", "-f", "-"], DAEMONSETS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rollout = |ds: &str, what: &str| {
        let out = server.kubectl(&["rollout", "status", &format!("ds/{ds}"), "--timeout=90s"]);
        assert!(
            out.status.success(),
            "{what}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.ok(&["get", "ds,pods", "-o", "wide"]),
            server.log()
        );
    };
    let status = || {
        server.ok(&[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.status.desiredNumberScheduled}/{.status.currentNumberScheduled}/{.status.numberReady}/{.status.updatedNumberScheduled}/{.status.numberAvailable}/{.status.numberMisscheduled}",
        ])
    };
    let one_ready_pod = |what: &str| -> PodView {
        let now = pods(server, "agent");
        assert_eq!(now.len(), 1, "{what}: {now:?}");
        let pod = now[0].clone();
        assert!(
            pod.ready && !pod.deleting && pod.node == "n1",
            "{what}: {pod:?}"
        );
        pod
    };
    let hash = |pod: &str| {
        server.ok(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.metadata.labels.controller-revision-hash}",
        ])
    };

    rollout("agent", "first rollout");
    let first = one_ready_pod("first rollout");
    assert_eq!(status(), "1/1/1/1/1/0");
    let first_hash = hash(&first.name);
    assert!(!first_hash.is_empty());
    assert_eq!(
        server.ok(&[
            "get",
            "pod",
            &first.name,
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}",
        ]),
        "DaemonSet/agent/true"
    );

    // A deleted pod is replaced on its node.
    server.ok(&["delete", "pod", &first.name]);
    server.wait_for("a replacement pod", || {
        let now = pods(server, "agent");
        now.len() == 1 && now[0].name != first.name && now[0].ready
    });
    rollout("agent", "after a pod was deleted");
    let replaced = one_ready_pod("after a pod was deleted");
    assert_eq!(hash(&replaced.name), first_hash, "same template, same hash");

    // A template change rolls the pod.
    server.ok(&["set", "env", "ds/agent", "VERSION=2"]);
    rollout("agent", "rolling update");
    let rolled = one_ready_pod("rolling update");
    assert_ne!(rolled.name, replaced.name);
    assert_ne!(hash(&rolled.name), first_hash);
    assert_eq!(
        server.ok(&[
            "get",
            "pod",
            &rolled.name,
            "-o",
            "jsonpath={.spec.containers[0].env[0].value}",
        ]),
        "2"
    );
    assert_eq!(status(), "1/1/1/1/1/0");

    // A nodeSelector no node matches: nothing desired, no pods, and the rollout is complete.
    server.wait_for("the nowhere status", || {
        let out = server.ok(&[
            "get",
            "ds",
            "nowhere",
            "-o",
            "jsonpath={.metadata.generation} {.status.observedGeneration} {.status.desiredNumberScheduled}",
        ]);
        let fields: Vec<&str> = out.split(' ').collect();
        fields.len() == 3 && !fields[0].is_empty() && fields[0] == fields[1] && fields[2] == "0"
    });
    assert!(pods(server, "nowhere").is_empty());
    rollout("nowhere", "a DaemonSet for no node");

    // Deleting the DaemonSet takes its pods (the garbage collector).
    server.ok(&["delete", "ds", "agent"]);
    server.wait_for("the pods to go", || pods(server, "agent").is_empty());
}

const GHOSTS: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: edge-a
  labels: {role: edge}
---
apiVersion: v1
kind: Node
metadata:
  name: edge-b
  labels: {role: edge}
spec:
  taints:
  - {key: example.com/dedicated, value: batch, effect: NoSchedule}
---
apiVersion: v1
kind: Node
metadata:
  name: edge-c
  labels: {role: edge}
spec:
  unschedulable: true
---
apiVersion: v1
kind: Node
metadata:
  name: core
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: logs
spec:
  selector:
    matchLabels: {app: logs}
  template:
    metadata:
      labels: {app: logs}
    spec:
      nodeSelector: {role: edge}
      containers:
      - {name: c, image: registry.k8s.io/pause:3.10}
"#;

#[test]
#[ignore = "needs kubectl 1.37; run by cargo xtask ci"]
fn daemonset_pods_follow_node_labels_taints_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let server = Rudder::start(&dir.path().join("data"), &[]);
    let out = server.kubectl_stdin(&["apply", "-f", "-"], GHOSTS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expect_live = |what: &str, nodes: &[&str]| {
        let want = set(nodes);
        server.wait_for(what, || live_nodes(&server, "logs") == want);
    };

    // The tainted node and the unlabelled one get nothing; the cordoned one gets its pod.
    expect_live("pods on edge-a and edge-c", &["edge-a", "edge-c"]);
    assert_eq!(pods(&server, "logs").len(), 2, "one pod per node");
    server.wait_for("the status", || {
        server.ok(&[
            "get",
            "ds",
            "logs",
            "-o",
            "jsonpath={.status.desiredNumberScheduled}/{.status.currentNumberScheduled}/{.status.numberReady}/{.status.numberMisscheduled}",
        ]) == "2/2/0/0"
    });
    let on_a = |path: &str| {
        server.ok(&[
            "get",
            "pods",
            "-l",
            "app=logs",
            "--field-selector",
            "spec.nodeName=edge-a",
            "-o",
            &format!("jsonpath={{.items[0]{path}}}"),
        ])
    };
    assert_eq!(
        on_a(".metadata.ownerReferences[0].kind"),
        "DaemonSet",
        "owned by the DaemonSet"
    );
    assert!(!on_a(".metadata.labels.controller-revision-hash").is_empty());
    assert_eq!(on_a(".metadata.generateName"), "logs-");
    let tolerations = on_a(".spec.tolerations[*].key");
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/unschedulable",
        "node.kubernetes.io/disk-pressure",
    ] {
        assert!(tolerations.contains(key), "{key} in {tolerations}");
    }

    // A node gaining the label, and one losing its taint, get pods.
    server.ok(&["label", "node", "core", "role=edge"]);
    expect_live("a pod on core", &["core", "edge-a", "edge-c"]);
    server.ok(&[
        "patch",
        "node",
        "edge-b",
        "--type=merge",
        "-p",
        r#"{"spec":{"taints":null}}"#,
    ]);
    expect_live("a pod on edge-b", &["core", "edge-a", "edge-b", "edge-c"]);

    // A NoExecute taint the pod does not tolerate removes it (and no new one comes).
    server.ok(&[
        "patch",
        "node",
        "edge-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"taints":[{"key":"example.com/evict","effect":"NoExecute"}]}}"#,
    ]);
    expect_live("edge-a's pod to go", &["core", "edge-b", "edge-c"]);

    // A node that goes takes its pod at once (no agent would ever confirm a graceful deletion).
    server.ok(&["delete", "node", "edge-c"]);
    server.wait_for("edge-c's pod to be removed", || {
        pods(&server, "logs").iter().all(|p| p.node != "edge-c")
    });

    // A node losing the label loses its pod.
    server.ok(&["label", "node", "core", "role-"]);
    expect_live("only edge-b", &["edge-b"]);
    server.wait_for("one desired", || {
        server.ok(&[
            "get",
            "ds",
            "logs",
            "-o",
            "jsonpath={.status.desiredNumberScheduled}/{.status.currentNumberScheduled}",
        ]) == "1/1"
    });
}
