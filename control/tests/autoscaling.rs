//! Resource metrics and the HorizontalPodAutoscaler on `rudder server`, end to end with
//! unmodified kubectl: a pod spinning a CPU shows its use in `kubectl top pods` (read by the
//! node agent from its cgroup, scraped by the apiserver), `kubectl top node` lists the node,
//! `kubectl autoscale` scales the busy Deployment up to its maximum, and an idle Deployment is
//! scaled down to its minimum.
//!
//! Needs root, cgroup v2 or v1, iproute2 and kubectl; `cargo xtask ci` runs it. Everything is
//! removed at the end, also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::node::Node;

/// A Deployment of `replicas` pods asking for 100m CPU each, spinning (`busy`) or sleeping.
fn deployment(name: &str, replicas: u32, busy: bool) -> String {
    let script = if busy {
        "while :; do :; done"
    } else {
        "exec sleep 3600"
    };
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: debian
        command: ["sh", "-c", "{script}"]
        resources:
          requests: {{cpu: 100m}}
          limits: {{cpu: 200m}}
"#
    )
}

/// Waits up to `secs` for `check`.
fn wait(what: &str, secs: u64, mut check: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Millicores from `kubectl top`'s CPU column (`123m`).
fn millicores(cell: &str) -> Option<u64> {
    cell.strip_suffix('m')?.parse().ok()
}

#[test]
#[ignore = "needs root, cgroups, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn metrics_and_autoscaling() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), 0, &[]);
    let server = &node.server;
    let apply = |yaml: &str| {
        let out = server.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(out.status.success(), "{out:?}");
    };
    apply(&deployment("burn", 1, true));
    apply(&deployment("idle", 3, false));
    let describe = || {
        format!(
            "{}\n{}\n{}\n{}",
            String::from_utf8_lossy(&{
                let o = server.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/pods"]);
                [o.stdout, o.stderr].concat()
            }),
            server
                .kubectl(&["get", "hpa,deploy,pods", "-o", "wide"])
                .stdout
                .escape_ascii(),
            server.kubectl(&["describe", "hpa"]).stdout.escape_ascii(),
            server.log()
        )
    };

    // `kubectl top` sees the spinning pod use about its 200m limit, the sleeping ones nothing.
    let mut busy = 0;
    wait(
        "kubectl top to show the busy pod",
        90,
        || {
            let out = server.kubectl(&["top", "pods", "-l", "app=burn", "--no-headers"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            busy = text
                .split_whitespace()
                .nth(1)
                .and_then(millicores)
                .unwrap_or(0);
            out.status.success() && busy >= 50
        },
        describe,
    );
    assert!(busy <= 300, "the CPU limit holds: {busy}m");
    wait(
        "the idle pods' metrics",
        60,
        || {
            let out = server.kubectl(&["top", "pods", "-l", "app=idle", "--no-headers"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let cpus: Vec<u64> = text
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1).and_then(millicores))
                .collect();
            cpus.len() == 3 && cpus.iter().all(|c| *c < 20)
        },
        describe,
    );
    let nodes = server.ok(&["top", "node", "--no-headers"]);
    assert!(nodes.starts_with("n1 "), "{nodes}");

    // The busy Deployment uses ~200% of its request against a 50% target: scaled to its max.
    server.ok(&[
        "autoscale",
        "deployment",
        "burn",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    // The idle one is scaled down to its min once the (shortened) stabilisation window allows.
    apply(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: idle}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: idle}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 0}
"#,
    );
    let replicas =
        |name: &str| server.ok(&["get", "deploy", name, "-o", "jsonpath={.spec.replicas}"]);
    wait("burn scaled to 3", 90, || replicas("burn") == "3", describe);
    wait("idle scaled to 1", 90, || replicas("idle") == "1", describe);

    let table = server.ok(&["get", "hpa", "burn", "--no-headers"]);
    // TARGETS reads `cpu: <utilisation>%/50%`, the utilisation well above the target.
    let used: u32 = table
        .split_once("cpu: ")
        .and_then(|(_, rest)| rest.split_once("%/50%"))
        .and_then(|(used, _)| used.parse().ok())
        .unwrap_or(0);
    assert!(table.contains("Deployment/burn") && used >= 100, "{table}");
    let limited = server.ok(&[
        "get",
        "hpa",
        "burn",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ScalingLimited\")].reason}",
    ]);
    assert_eq!(limited, "TooManyReplicas", "{}", describe());
    let events = server.ok(&["get", "events", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("New size: 3"), "{events}");
    assert!(events.contains("New size: 1"), "{events}");

    // A target that does not exist is reported, not acted on.
    apply(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: ghost}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: ghost}
  maxReplicas: 2
"#,
    );
    wait(
        "the missing target to be reported",
        40,
        || {
            server.ok(&[
                "get",
                "hpa",
                "ghost",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"AbleToScale\")].reason}",
            ]) == "FailedGetScale"
        },
        describe,
    );
}
