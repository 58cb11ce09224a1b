//! Two `rudder server`s on one etcd: only one schedules and runs the controllers.
//!
//! The first server takes the `kube-scheduler` and `kube-controller-manager` Leases in
//! `kube-system`; the second stands by. When the first is killed, the second takes both leases
//! once they expire (15 s) and then acts: a Deployment gets its ReplicaSet and pod, and the
//! pod, with no node to run on, gets the scheduler's `Unschedulable` condition. Needs Debian's
//! etcd (`cargo xtask ci`).
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::Rudder;
use rudder_control::store::etcd::LocalEtcd;

fn holder(server: &Rudder, lease: &str) -> String {
    let out = server.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        lease,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs kubectl and Debian's etcd; run by cargo xtask ci"]
fn a_standby_server_takes_over_when_the_leader_dies() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let etcd = runtime.block_on(LocalEtcd::start()).expect("start etcd");
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--etcd-endpoints".to_owned(), etcd.endpoint.clone()];
    let mut first = Rudder::start(&dir.path().join("a"), &flags);
    let leases = ["kube-scheduler", "kube-controller-manager"];
    wait("the first server to lead", Duration::from_secs(20), || {
        leases.iter().all(|l| !holder(&first, l).is_empty())
    });
    let leader = holder(&first, "kube-scheduler");
    assert_eq!(holder(&first, "kube-controller-manager"), leader);

    let second = Rudder::start(&dir.path().join("b"), &flags);
    // Two of its retry periods: the second server reads the lease and stands by.
    std::thread::sleep(Duration::from_secs(5));
    for lease in leases {
        assert_eq!(
            holder(&second, lease),
            leader,
            "no takeover while the leader lives"
        );
    }

    first.stop();
    wait(
        "the second server to take over",
        Duration::from_secs(40),
        || {
            leases.iter().all(|l| {
                let h = holder(&second, l);
                !h.is_empty() && h != leader
            })
        },
    );
    let transitions = second.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-scheduler",
        "-o",
        "jsonpath={.spec.leaseTransitions}",
    ]);
    assert_eq!(transitions, "1");

    // The new leader's controllers and scheduler act.
    second.ok(&[
        "create",
        "deployment",
        "web",
        "--image=registry.k8s.io/pause:3.9",
    ]);
    wait("the Deployment's pod", Duration::from_secs(20), || {
        !second
            .ok(&["get", "pods", "-l", "app=web", "-o", "name"])
            .trim()
            .is_empty()
    });
    wait("the scheduler's verdict", Duration::from_secs(20), || {
        second
            .ok(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                r#"jsonpath={.items[0].status.conditions[?(@.type=="PodScheduled")].reason}"#,
            ])
            .contains("Unschedulable")
    });
    drop(second);
    drop(first);
    drop(etcd);
}
