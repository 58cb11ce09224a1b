//! StatefulSets on `rudder server` with its node agent, end to end with unmodified kubectl: a
//! headless Service and a StatefulSet of three agnhost netexec pods. The pods come up in order
//! (no pod exists before its predecessor is Ready), with stable names, hostnames and
//! subdomains, and `kubectl rollout status` returns; a deleted pod comes back under the same
//! name; a template change rolls the pods from the highest ordinal down, one at a time; scaling
//! to one removes web-2 before web-1; deleting the StatefulSet removes its pods (garbage
//! collector). Needs root, BPF, iproute2 and kubectl; the node's private network is described
//! in `common/node.rs` and is removed at the end, also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::{Rudder, node::Node};
use serde_json::Value;

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - {name: http, port: 8080}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: agnhost
        image: registry.k8s.io/e2e-test-images/agnhost:2.47
        args: ["netexec", "--http-port=8080"]
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
"#;

/// One pod of the StatefulSet as the test sees it.
#[derive(Debug, Clone)]
struct PodView {
    name: String,
    ordinal: u32,
    uid: String,
    revision: String,
    ready: bool,
    /// When the Ready condition last changed (empty if there is none).
    ready_since: String,
    created: String,
    deleting: bool,
}

/// The pods labelled `app=web`, by ordinal.
fn pods(server: &Rudder) -> Vec<PodView> {
    let list: Value =
        serde_json::from_str(&server.ok(&["get", "pods", "-l", "app=web", "-o", "json"])).unwrap();
    let mut out: Vec<PodView> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |path: &str| {
                p.pointer(path)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            let ready = p
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .cloned()
                .unwrap_or(Value::Null);
            let name = s("/metadata/name");
            PodView {
                ordinal: name
                    .strip_prefix("web-")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected pod {name}")),
                name,
                uid: s("/metadata/uid"),
                revision: s("/metadata/labels/controller-revision-hash"),
                ready: ready["status"] == "True",
                ready_since: ready["lastTransitionTime"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                created: s("/metadata/creationTimestamp"),
                deleting: p
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|v| !v.is_null()),
            }
        })
        .collect();
    out.sort_by_key(|p| p.ordinal);
    out
}

fn get(pods: &[PodView], ordinal: u32) -> Option<&PodView> {
    pods.iter().find(|p| p.ordinal == ordinal)
}

fn time(s: &str) -> jiff::Timestamp {
    s.parse()
        .unwrap_or_else(|e| panic!("bad timestamp {s:?}: {e}"))
}

/// The StatefulSet as JSON.
fn statefulset(server: &Rudder) -> Value {
    serde_json::from_str(&server.ok(&["get", "statefulset", "web", "-o", "json"])).unwrap()
}

/// Polls the pods every 100 ms until `step` (which asserts what must hold in every snapshot)
/// says done, failing after `timeout`.
fn watch_pods(
    server: &Rudder,
    what: &str,
    timeout: Duration,
    mut step: impl FnMut(&[PodView]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = pods(server);
        if step(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {now:#?}\n{}\n{}",
            server.ok(&["get", "statefulset,pods", "-o", "wide"]),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_ready(pods: &[PodView], count: usize) -> bool {
    pods.len() == count && pods.iter().all(|p| p.ready && !p.deleting)
}

#[test]
#[ignore = "needs root, BPF, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn statefulset_orders_pods_keeps_identities_rolls_and_cascades() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), 1, &[]);
    let server = &node.server;
    let out = server.kubectl_stdin(&["apply", "-f", "-"], WEB);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rollout = |what: &str| {
        let out = server.kubectl(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
        assert!(
            out.status.success(),
            "{what}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.ok(&["get", "statefulset,pods", "-o", "wide"]),
            server.log()
        );
    };

    // Ordered start: in every snapshot a pod exists only if its predecessor is there and Ready.
    watch_pods(server, "three ready pods", Duration::from_secs(60), |now| {
        for p in now.iter().filter(|p| p.ordinal > 0) {
            let before = get(now, p.ordinal - 1);
            assert!(
                before.is_some_and(|b| b.ready),
                "{} exists before web-{} is Ready: {now:#?}",
                p.name,
                p.ordinal - 1
            );
        }
        all_ready(now, 3)
    });
    let started = pods(server);
    for n in 1..3 {
        let (prev, this) = (get(&started, n - 1).unwrap(), get(&started, n).unwrap());
        assert!(
            // Whole seconds: creation timestamps have no fraction.
            time(&this.created).as_second() >= time(&prev.ready_since).as_second(),
            "{} created at {} before {} was Ready at {}",
            this.name,
            this.created,
            prev.name,
            prev.ready_since
        );
    }
    rollout("first rollout");

    // Stable identities: name, hostname, subdomain, labels, owner.
    for p in &started {
        let pod: Value =
            serde_json::from_str(&server.ok(&["get", "pod", &p.name, "-o", "json"])).unwrap();
        let labels = &pod["metadata"]["labels"];
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(pod["spec"]["hostname"], p.name.as_str(), "{pod}");
        assert_eq!(pod["spec"]["subdomain"], "web", "{pod}");
        assert_eq!(
            labels["statefulset.kubernetes.io/pod-name"],
            p.name.as_str(),
            "{pod}"
        );
        assert_eq!(
            labels["apps.kubernetes.io/pod-index"],
            p.ordinal.to_string().as_str(),
            "{pod}"
        );
        assert_eq!(
            (&owner["kind"], &owner["name"], &owner["controller"]),
            (
                &Value::from("StatefulSet"),
                &Value::from("web"),
                &Value::from(true)
            ),
            "{pod}"
        );
    }
    let sts = statefulset(server);
    let status = &sts["status"];
    let first_revision = status["updateRevision"].as_str().unwrap().to_owned();
    assert!(first_revision.starts_with("web-"), "{status}");
    assert_eq!(
        status["currentRevision"],
        first_revision.as_str(),
        "{status}"
    );
    assert_eq!(
        [
            &status["replicas"],
            &status["readyReplicas"],
            &status["currentReplicas"],
            &status["updatedReplicas"],
            &status["availableReplicas"],
        ],
        [&Value::from(3); 5],
        "{status}"
    );
    assert_eq!(status["observedGeneration"], sts["metadata"]["generation"]);
    assert!(started.iter().all(|p| p.revision == first_revision));

    // A deleted pod comes back under the same name.
    let old_uid = get(&started, 1).unwrap().uid.clone();
    server.ok(&["delete", "pod", "web-1"]);
    watch_pods(
        server,
        "web-1 to come back",
        Duration::from_secs(30),
        |now| all_ready(now, 3) && get(now, 1).is_some_and(|p| p.uid != old_uid),
    );
    rollout("after web-1 was deleted");

    // A template change rolls the pods from the highest ordinal down, one at a time.
    server.ok(&["set", "env", "statefulset/web", "VERSION=2"]);
    watch_pods(
        server,
        "the rolling update",
        Duration::from_secs(60),
        |now| {
            let updated = |p: &PodView| p.revision != first_revision && !p.deleting;
            // Updated pods are a top range of ordinals.
            for p in now.iter().filter(|p| updated(p)) {
                for above in now.iter().filter(|a| a.ordinal > p.ordinal) {
                    assert!(
                        updated(above),
                        "{} updated before {}: {now:#?}",
                        p.name,
                        above.name
                    );
                }
            }
            // At most one pod missing, starting or stopping.
            let serving = now.iter().filter(|p| p.ready && !p.deleting).count();
            assert!(serving >= 2, "more than one pod down: {now:#?}");
            all_ready(now, 3) && now.iter().all(updated)
        },
    );
    rollout("rolling update");
    let rolled = pods(server);
    for n in 1..3 {
        let (lower, higher) = (get(&rolled, n - 1).unwrap(), get(&rolled, n).unwrap());
        assert!(
            time(&higher.created) <= time(&lower.created),
            "{} recreated after {}: {rolled:#?}",
            higher.name,
            lower.name
        );
    }
    let status = statefulset(server)["status"].clone();
    let new_revision = status["updateRevision"].as_str().unwrap().to_owned();
    assert_ne!(new_revision, first_revision);
    assert_eq!(status["currentRevision"], new_revision.as_str(), "{status}");
    assert!(rolled.iter().all(|p| p.revision == new_revision));
    let env = server.ok(&[
        "get",
        "pod",
        "web-0",
        "-o",
        "jsonpath={.spec.containers[0].env[0].value}",
    ]);
    assert_eq!(env, "2");

    // Scaling down removes the highest ordinal first and waits for it to be gone.
    server.ok(&["scale", "statefulset/web", "--replicas=1"]);
    watch_pods(server, "the scale-down", Duration::from_secs(30), |now| {
        if get(now, 1).is_none_or(|p| p.deleting) {
            assert!(
                get(now, 2).is_none(),
                "web-1 going while web-2 is there: {now:#?}"
            );
        }
        all_ready(now, 1) && now[0].ordinal == 0
    });
    rollout("after scaling down");

    // Deleting the StatefulSet takes its pods (the garbage collector).
    server.ok(&["delete", "statefulset", "web"]);
    watch_pods(server, "the pods to go", Duration::from_secs(30), |now| {
        now.is_empty()
    });
}
