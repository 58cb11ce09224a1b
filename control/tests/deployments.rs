//! Deployments on `rudder server`, end to end with unmodified kubectl: a Deployment becomes a
//! ReplicaSet and Ready pods (`kubectl rollout status` returns), a deleted pod is replaced,
//! changing the template rolls the pods one at a time while a client hitting the Service sees no
//! failed request, `kubectl rollout undo` goes back to the first ReplicaSet, scaling works, and
//! deletion cascades (orphan, then background) through the garbage collector. A
//! ReplicationController then keeps, heals and scales its pods the same way.
//!
//! Needs root, BPF, iproute2 and kubectl; `cargo xtask ci` runs it. The node's private network
//! is described in `common/node.rs`; everything is removed at the end, also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use common::{fixture, node::Node};
use rudder_node::lab::http_get;

fn names(out: &str) -> BTreeSet<String> {
    out.split_whitespace().map(str::to_owned).collect()
}

#[test]
#[ignore = "needs root, BPF, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn deployments_roll_heal_and_cascade() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), 0, &[]);
    let server = &node.server;
    server.ok(&["apply", "-f", &fixture("web-deployment.yaml")]);
    let rollout = |what: &str| {
        let out = server.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
        assert!(
            out.status.success(),
            "{what}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.ok(&["get", "deploy,rs,pods", "-o", "wide"]),
            server.log()
        );
    };
    rollout("first rollout");
    let ready_pods = || {
        let out = server.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        ]);
        out.split_whitespace()
            .filter_map(|p| p.strip_suffix("=True").map(str::to_owned))
            .collect::<BTreeSet<String>>()
    };
    let pods = names(&server.ok(&["get", "pods", "-l", "app=web", "-o", "name"]));
    assert_eq!(pods.len(), 3, "{pods:?}");
    let rs = server.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let first_rs = rs.trim().to_owned();
    assert!(
        first_rs.starts_with("web-") && !first_rs.contains(' '),
        "{rs}"
    );
    assert_eq!(
        server.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.updatedReplicas}/{.status.availableReplicas}"
        ]),
        "3/3/3"
    );

    // A deleted pod is replaced.
    let victim = pods
        .iter()
        .next()
        .unwrap()
        .trim_start_matches("pod/")
        .to_owned();
    server.ok(&["delete", "pod", &victim, "--wait=false"]);
    server.wait_for("a replacement pod", || {
        let now = names(&server.ok(&["get", "pods", "-l", "app=web", "-o", "name"]));
        now.len() >= 3 && !now.contains(&format!("pod/{victim}"))
    });
    rollout("after a pod was deleted");

    // A template change rolls the pods while a client sees no failure.
    let vip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    server.wait_for("the Service to answer", || {
        http_get(&vip, 80, "/hostname").is_ok()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let client = {
        let (stop, ok, failed, vip) = (stop.clone(), ok.clone(), failed.clone(), vip.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http_get(&vip, 80, "/hostname") {
                    Ok(h) if h.starts_with("web-") => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(20));
            }
            errors
        })
    };
    server.ok(&["set", "env", "deployment/web", "VERSION=2"]);
    rollout("rolling update");
    // A fast rollout may be over within a few requests; the client keeps going on the new
    // pods until it has made enough to count.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) <= 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let errors = client.join().unwrap();
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "the client ran during the rollout"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {errors:?}"
    );
    let rs_now = names(&server.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]));
    assert_eq!(
        rs_now.len(),
        2,
        "old ReplicaSet kept as history: {rs_now:?}"
    );
    assert_eq!(
        server.ok(&["get", "rs", &first_rs, "-o", "jsonpath={.spec.replicas}"]),
        "0"
    );
    let env = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.containers[0].env[0].value}",
    ]);
    assert_eq!(
        env.split_whitespace().filter(|v| *v == "2").count(),
        3,
        "{env}"
    );

    // Undo goes back to the first ReplicaSet, as revision 3.
    server.ok(&["rollout", "undo", "deployment/web"]);
    rollout("undo");
    assert_eq!(
        server.ok(&["get", "rs", &first_rs, "-o", "jsonpath={.spec.replicas} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]),
        "3 3"
    );

    // Scaling.
    server.ok(&["scale", "deployment/web", "--replicas=1"]);
    server.wait_for("one pod", || {
        ready_pods().len() == 1
            && names(&server.ok(&["get", "pods", "-l", "app=web", "-o", "name"])).len() == 1
    });

    // Orphan keeps the ReplicaSet (without its owner); background deletion takes the pods.
    server.ok(&["delete", "deployment", "web", "--cascade=orphan"]);
    server.wait_for("the deployment to go", || {
        !server
            .kubectl(&["get", "deployment", "web"])
            .status
            .success()
    });
    assert_eq!(
        server.ok(&[
            "get",
            "rs",
            &first_rs,
            "-o",
            "jsonpath={.metadata.ownerReferences}"
        ]),
        ""
    );
    assert_eq!(ready_pods().len(), 1, "orphaned pods keep running");
    server.ok(&["delete", "rs", "--all"]);
    server.wait_for("the pods to go", || {
        server
            .ok(&["get", "pods", "-l", "app=web", "-o", "name"])
            .is_empty()
    });

    replication_controller(server);
}

/// A core/v1 ReplicationController: its selector defaults to the template's labels, it keeps
/// its replicas (replacing a deleted pod, following `kubectl scale`), `kubectl get rc` shows
/// its counts, a selector its template does not match is refused naming the field, and
/// deleting it takes its pods.
fn replication_controller(server: &common::Rudder) {
    const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: legacy}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: legacy}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: agnhost
        image: registry.k8s.io/e2e-test-images/agnhost:2.47
        args: ["netexec", "--http-port=8080"]
"#;
    let out = server.kubectl_stdin(&["apply", "-f", "-"], RC);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        server.ok(&["get", "rc", "legacy", "-o", "jsonpath={.spec.selector.app}"]),
        "legacy"
    );
    let ready = |n: &str| {
        server.wait_for(&format!("{n} ready replicas"), || {
            server.ok(&[
                "get",
                "rc",
                "legacy",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ]) == n
        });
    };
    ready("2");
    let owners = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=legacy",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owners, "ReplicationController ReplicationController");
    let table = server.ok(&["get", "rc", "legacy"]);
    assert!(
        table.starts_with("NAME") && table.contains("DESIRED") && table.contains("legacy   2 "),
        "{table}"
    );

    let pods = names(&server.ok(&["get", "pods", "-l", "app=legacy", "-o", "name"]));
    let victim = pods.iter().next().unwrap().clone();
    server.ok(&["delete", &victim, "--wait=false"]);
    server.wait_for("a replacement pod", || {
        let now = names(&server.ok(&["get", "pods", "-l", "app=legacy", "-o", "name"]));
        now.len() == 2 && !now.contains(&victim)
    });
    server.ok(&["scale", "rc", "legacy", "--replicas=3"]);
    ready("3");

    let bad = RC
        .replace("name: legacy", "name: crooked")
        .replace("replicas: 2", "replicas: 1\n  selector: {app: other}");
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.template.metadata.labels"),
        "{err}"
    );

    server.ok(&["delete", "rc", "legacy"]);
    server.wait_for("the controller's pods to go", || {
        server
            .ok(&["get", "pods", "-l", "app=legacy", "-o", "name"])
            .is_empty()
    });
}
