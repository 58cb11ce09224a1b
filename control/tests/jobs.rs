//! Jobs and CronJobs on `rudder server`, end to end with unmodified kubectl: a Job with
//! `completions: 3` and `parallelism: 2` never runs more than two pods and reaches `Complete`
//! (`kubectl wait --for=condition=complete`) with `succeeded: 3`; a Job whose pods fail, with
//! `backoffLimit: 1`, reaches `Failed` with reason `BackoffLimitExceeded` after its second
//! failure; a Job with `ttlSecondsAfterFinished: 0` is deleted once it finished, and its pods
//! with it; a CronJob scheduled every minute creates a Job within the next minute, and deleting
//! it or a Job cascades through the garbage collector.
//!
//! Slow: the CronJob waits for a minute boundary (up to 60 s) and the failing Job for its
//! 10 s replacement back-off, so the test takes about 1.5 minutes. Pods run `/bin/sh` from the
//! host (an image without a registry runs its command on the host's file system).
//!
//! Needs root, iproute2 and kubectl; `cargo xtask ci` runs it. The node's private network is
//! described in `common/node.rs`; everything is removed at the end, also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::{Rudder, node::Node};

const MANIFEST: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: three}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
        command: ["/bin/sh", "-c", "sleep 2"]
---
apiVersion: batch/v1
kind: Job
metadata: {name: fails}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
        command: ["/bin/sh", "-c", "exit 3"]
---
apiVersion: batch/v1
kind: Job
metadata: {name: ephemeral}
spec:
  ttlSecondsAfterFinished: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
        command: ["/bin/sh", "-c", "exit 0"]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  jobTemplate:
    metadata:
      labels: {app: tick}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: work
            image: busybox
            command: ["/bin/sh", "-c", "exit 0"]
"#;

/// The end of the server's log, for failure messages.
fn log_tail(server: &Rudder) -> String {
    let log = server.log();
    let start = log.char_indices().rev().nth(6000).map_or(0, |(i, _)| i);
    log[start..].to_owned()
}

/// Waits up to `timeout` for `check`, polling; fails with the cluster's state.
fn wait_until(server: &Rudder, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}:\n{}\n{}",
            server.ok(&["get", "cronjobs,jobs,pods", "-o", "wide"]),
            log_tail(server)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `name=phase` of the pods with `selector`.
fn pod_phases(server: &Rudder, selector: &str) -> Vec<String> {
    server
        .ok(&[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn job_field(server: &Rudder, job: &str, jsonpath: &str) -> String {
    server.ok(&["get", "job", job, "-o", &format!("jsonpath={jsonpath}")])
}

#[test]
#[ignore = "needs root, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn jobs_complete_fail_expire_and_run_on_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), 0, &[]);
    let server = &node.server;
    let applied = server.kubectl_stdin(&["apply", "-f", "-"], MANIFEST);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let applied_at = Instant::now();

    // completions 3, parallelism 2: never more than two pods at once, then Complete.
    let mut most_running = 0;
    wait_until(
        server,
        "job three to succeed three times",
        Duration::from_secs(90),
        || {
            let running = pod_phases(server, "job-name=three")
                .iter()
                .filter(|p| !p.ends_with("=Succeeded") && !p.ends_with("=Failed"))
                .count();
            most_running = most_running.max(running);
            job_field(server, "three", "{.status.succeeded}") == "3"
        },
    );
    assert!(
        (1..=2).contains(&most_running),
        "at most parallelism pods run at once, saw {most_running}"
    );
    let waited = server.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/three",
        "--timeout=60s",
    ]);
    assert!(
        waited.status.success(),
        "job three not Complete: {}\n{}\n{}",
        String::from_utf8_lossy(&waited.stderr),
        server.ok(&["describe", "job", "three"]),
        log_tail(server)
    );
    let phases = pod_phases(server, "job-name=three");
    assert_eq!(phases.len(), 3, "{phases:?}");
    assert!(
        phases.iter().all(|p| p.ends_with("=Succeeded")),
        "{phases:?}"
    );
    assert_eq!(
        job_field(
            server,
            "three",
            "{.status.succeeded}/{.status.active}/{.status.failed}"
        ),
        "3//"
    );
    assert!(
        !job_field(server, "three", "{.status.completionTime}").is_empty(),
        "completionTime is set"
    );

    // backoffLimit 1: the second failure fails the Job.
    let waited = server.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=90s",
    ]);
    assert!(
        waited.status.success(),
        "job fails not Failed: {}\n{}\n{}",
        String::from_utf8_lossy(&waited.stderr),
        server.ok(&["describe", "job", "fails"]),
        log_tail(server)
    );
    assert_eq!(
        job_field(
            server,
            "fails",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        ),
        "BackoffLimitExceeded"
    );
    assert_eq!(job_field(server, "fails", "{.status.failed}"), "2");
    let phases = pod_phases(server, "job-name=fails");
    assert_eq!(phases.len(), 2, "{phases:?}");
    assert!(phases.iter().all(|p| p.ends_with("=Failed")), "{phases:?}");

    // ttlSecondsAfterFinished 0: gone once finished, pods too (nothing else deletes it).
    wait_until(
        server,
        "job ephemeral to expire",
        Duration::from_secs(60),
        || {
            !server
                .kubectl(&["get", "job", "ephemeral"])
                .status
                .success()
                && pod_phases(server, "job-name=ephemeral").is_empty()
        },
    );

    // The CronJob makes a Job at the next minute (slow: up to a minute after apply).
    let left = Duration::from_secs(80).saturating_sub(applied_at.elapsed());
    let mut made = String::new();
    wait_until(
        server,
        "the cronjob's first job",
        left.max(Duration::from_secs(5)),
        || {
            let names = server.ok(&[
                "get",
                "jobs",
                "-l",
                "app=tick",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            made = names
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            !made.is_empty()
        },
    );
    let minutes = made.strip_prefix("tick-").unwrap_or_default();
    assert!(
        !minutes.is_empty() && minutes.bytes().all(|b| b.is_ascii_digit()),
        "job named after its scheduled minute: {made}"
    );
    let scheduled = job_field(
        server,
        &made,
        "{.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}",
    );
    assert!(
        scheduled.ends_with(":00Z"),
        "scheduled timestamp {scheduled:?}"
    );
    assert_eq!(
        job_field(server, &made, "{.metadata.ownerReferences[0].kind}"),
        "CronJob"
    );
    wait_until(
        server,
        "the cronjob's status",
        Duration::from_secs(60),
        || {
            let status = server.ok(&[
                "get",
                "cronjob",
                "tick",
                "-o",
                "jsonpath={.status.lastScheduleTime}|{.status.lastSuccessfulTime}",
            ]);
            status.split('|').all(|t| !t.is_empty())
        },
    );

    // Deleting owners cascades: the CronJob takes its Jobs and their pods, a Job its pods.
    server.ok(&["delete", "cronjob", "tick"]);
    wait_until(
        server,
        "the cronjob's jobs and pods to go",
        Duration::from_secs(30),
        || {
            server
                .ok(&["get", "jobs", "-l", "app=tick", "-o", "name"])
                .is_empty()
                && pod_phases(server, &format!("job-name={made}")).is_empty()
        },
    );
    server.ok(&["delete", "job", "three"]);
    wait_until(
        server,
        "job three's pods to go",
        Duration::from_secs(30),
        || pod_phases(server, "job-name=three").is_empty(),
    );
}
