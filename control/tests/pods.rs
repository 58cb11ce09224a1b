//! `rudder server` runs pods on its own node, tried the way a new user would with unmodified
//! kubectl: the node registers and turns Ready, an upstream-style agnhost `netexec` pod is
//! scheduled, becomes Running/Ready and answers HTTP on its pod address from the host; killing
//! its process restarts it; a pod with no runnable image and an unschedulable pod say why;
//! `kubectl delete pod` terminates gracefully and removes the sandbox.
//!
//! Needs root, iproute2 and kubectl; `cargo xtask ci` runs it. The node's private network is
//! described in `common/node.rs`; everything is removed at the end, also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::{fixture, node::Node};
use rudder_node::{
    lab::http_get,
    runtime::cgroups::{self, Layout},
};
use std::path::Path;

#[test]
#[ignore = "needs root, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn pods_run_on_the_local_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data, 0, &[]);
    let (server, octet) = (&node.server, node.octet);
    assert_eq!(
        server.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDR}"]),
        format!("10.252.{octet}.0/24"),
        "node IPAM assigns the node's PodCIDR"
    );
    server.wait_for("the node's lease", || {
        server
            .kubectl(&["get", "lease", "-n", "kube-node-lease", "n1"])
            .status
            .success()
    });

    server.ok(&["apply", "-f", &fixture("netexec-pods.yaml")]);
    let waited = server.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/netexec",
        "--timeout=60s",
    ]);
    assert!(
        waited.status.success(),
        "netexec not Ready: {}\n{}\n{}",
        String::from_utf8_lossy(&waited.stderr),
        server.ok(&["describe", "pod", "netexec"]),
        server.log()
    );
    let wide = server.ok(&["get", "pod", "netexec", "-o", "wide"]);
    assert!(
        wide.contains("Running") && wide.contains("1/1") && wide.contains("n1"),
        "{wide}"
    );
    let ip = server.ok(&["get", "pod", "netexec", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        ip.starts_with(&format!("10.252.{octet}.")),
        "pod IP {ip} from the node's PodCIDR"
    );
    assert_eq!(http_get(&ip, 8080, "/hostname").unwrap(), "netexec");
    let env = http_get(&ip, 8080, "/shell?shellCommand=echo%20$POD_IP").unwrap();
    assert!(env.contains(&ip), "downward API env: {env}");

    // Killing the container's process restarts it.
    let uid = server.ok(&["get", "pod", "netexec", "-o", "jsonpath={.metadata.uid}"]);
    let pid_file = data.join(format!("agent/pods/{uid}/containers/agnhost/0/pid"));
    let container_pid: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: plain kill(2) of the container this test started.
    unsafe { libc::kill(container_pid, libc::SIGKILL) };
    server.wait_for("restartCount 1", || {
        server.ok(&[
            "get",
            "pod",
            "netexec",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ]) == "1"
    });
    server.wait_for("Ready again", || {
        server.ok(&[
            "get",
            "pod",
            "netexec",
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}",
        ]) == "true"
    });
    assert_eq!(http_get(&ip, 8080, "/hostname").unwrap(), "netexec");

    // kubectl logs: streamed from the node agent; the current run, the one before the restart,
    // the tail, a followed log cut at a byte limit, and a container that is not there.
    let logs = server.ok(&["logs", "netexec"]);
    assert!(logs.contains("Started HTTP server on port 8080"), "{logs}");
    let previous = server.ok(&["logs", "netexec", "--previous"]);
    assert!(previous.contains("Started HTTP server"), "{previous}");
    assert_eq!(
        server.ok(&["logs", "netexec", "--tail=1"]).lines().count(),
        1
    );
    assert!(
        !logs.contains(" stderr F "),
        "CRI framing is not shown: {logs}"
    );
    let stamped = server.ok(&["logs", "netexec", "--timestamps", "--since=1h"]);
    assert!(
        stamped.starts_with("20") && stamped.contains("Z Started HTTP server"),
        "{stamped}"
    );
    assert_eq!(
        server.ok(&["logs", "-f", "netexec", "--limit-bytes=7"]),
        logs[..7]
    );
    let bad = server.kubectl(&["logs", "netexec", "-c", "nope"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("container nope is not valid for pod netexec"),
        "{stderr}"
    );

    // Pods that cannot run say why.
    server.wait_for("ErrImagePull on no-command", || {
        server
            .ok(&["get", "pod", "no-command"])
            .contains("ErrImagePull")
    });
    server.wait_for("FailedScheduling for wants-ssd", || {
        server.ok(&["describe", "pod", "wants-ssd"]).contains(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
        )
    });

    // A repeated event is counted up on one Event instead of written again.
    server.wait_for("never-ready's Unhealthy event counted up", || {
        let counts = server.ok(&[
            "get",
            "events",
            "--field-selector=involvedObject.name=never-ready,reason=Unhealthy",
            "-o",
            "jsonpath={.items[*].count}",
        ]);
        let counts: Vec<u32> = counts
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        counts.len() == 1 && counts[0] >= 3
    });

    // Graceful deletion: SIGTERM, the agent removes the object and the sandbox.
    server.ok(&[
        "delete",
        "pod",
        "netexec",
        "no-command",
        "never-ready",
        "--timeout=30s",
    ]);
    let left = server.ok(&["get", "pods", "-o", "name"]);
    assert_eq!(left.trim(), "pod/wants-ssd");
    server.wait_for("the sandboxes to go", || node.sandboxes().is_empty());
    assert!(http_get(&ip, 8080, "/hostname").is_err());
}

#[test]
#[ignore = "needs root, iproute2 and kubectl 1.37; run by cargo xtask ci"]
fn volumes_and_limits_apply_to_containers() {
    let dir = tempfile::tempdir().unwrap();
    // Small logs, so that a chatty container's log rotates.
    let node = Node::start(
        &dir.path().join("data"),
        1,
        &[
            "--container-log-max-size",
            "4Ki",
            "--container-log-max-files",
            "2",
        ],
    );
    let server = &node.server;
    // Containers run on the node's file system: mount paths are node paths, made on demand.
    let base = format!("/run/rudder-test-volumes-{}", std::process::id());
    let manifest = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: app-config}}
data: {{greeting: hello, other: ignored}}
---
apiVersion: v1
kind: Secret
metadata: {{name: app-secret}}
stringData: {{token: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: volumes}}
spec:
  containers:
  - name: app
    image: registry.k8s.io/e2e-test-images/agnhost:2.47
    args: [netexec, --http-port=8080]
    resources:
      limits: {{memory: 64Mi, cpu: 500m}}
    volumeMounts:
    - {{name: cfg, mountPath: {base}/cfg, readOnly: true}}
    - {{name: sec, mountPath: {base}/sec}}
    - {{name: scratch, mountPath: {base}/scratch}}
    - {{name: scratch, mountPath: {base}/sub, subPath: inner}}
  volumes:
  - name: cfg
    configMap:
      name: app-config
      items: [{{key: greeting, path: conf/greeting.txt}}]
  - name: sec
    secret: {{secretName: app-secret, defaultMode: 0400}}
  - name: scratch
    emptyDir: {{}}
---
apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  restartPolicy: Never
  containers:
  - name: chatty
    image: debian
    command: [sh, -c, "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo line $i; done"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: debian
    # tail keeps the whole last line: 200 MB of zeros without a newline.
    command: [sh, -c, "head -c 200000000 /dev/zero | tail -n 1 > /dev/null"]
    resources:
      limits: {{memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: broken-volume}}
spec:
  containers:
  - name: app
    image: registry.k8s.io/e2e-test-images/agnhost:2.47
    args: [pause]
    volumeMounts: [{{name: cfg, mountPath: {base}/missing}}]
  volumes:
  - name: cfg
    configMap: {{name: missing}}
"#
    );
    let applied = server.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let waited = server.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/volumes",
        "--timeout=60s",
    ]);
    assert!(
        waited.status.success(),
        "{}\n{}",
        server.ok(&["describe", "pod", "volumes"]),
        server.log()
    );
    let ip = server.ok(&["get", "pod", "volumes", "-o", "jsonpath={.status.podIP}"]);
    let shell = |cmd: &str| {
        let query: String = form_urlencoded::byte_serialize(cmd.as_bytes()).collect();
        http_get(&ip, 8080, &format!("/shell?shellCommand={query}")).unwrap()
    };
    assert!(shell(&format!("cat {base}/cfg/conf/greeting.txt")).contains("hello"));
    assert!(
        !shell(&format!("ls {base}/cfg")).contains("other"),
        "only the listed item"
    );
    assert!(shell(&format!("cat {base}/sec/token")).contains("s3cret"));
    assert!(shell(&format!("stat -c %a {base}/sec/token")).contains("400"));
    // The configMap volume is read-only; the emptyDir is writable and its subPath is a part of it.
    assert!(shell(&format!("touch {base}/cfg/x 2>&1")).contains("Read-only"));
    shell(&format!("echo shared > {base}/sub/file"));
    assert!(shell(&format!("cat {base}/scratch/inner/file")).contains("shared"));
    // The node's own paths stay empty: the mounts live in the container's mount namespace.
    assert!(
        std::fs::read_dir(format!("{base}/scratch"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );

    // Limits: the container runs in its own cgroup with the kernel settings for them.
    let uid = server.ok(&["get", "pod", "volumes", "-o", "jsonpath={.metadata.uid}"]);
    let layout = Layout::detect(Path::new(cgroups::ROOT));
    let (memory_dir, memory_file) = match &layout {
        Layout::Unified(root) => (root.join("rudder").join(&uid).join("app"), "memory.max"),
        Layout::PerController {
            memory: Some(root), ..
        } => (
            root.join("rudder").join(&uid).join("app"),
            "memory.limit_in_bytes",
        ),
        other => panic!("no memory cgroup hierarchy on this host: {other:?}"),
    };
    assert_eq!(
        std::fs::read_to_string(memory_dir.join(memory_file))
            .unwrap()
            .trim(),
        (64u64 << 20).to_string()
    );
    let procs = std::fs::read_to_string(memory_dir.join("cgroup.procs")).unwrap();
    assert!(
        !procs.trim().is_empty(),
        "the container's processes are in it"
    );

    server.wait_for(
        "CreateContainerConfigError for the missing configmap",
        || {
            server
                .ok(&[
                    "get",
                    "pod",
                    "broken-volume",
                    "-o",
                    "jsonpath={.status.containerStatuses[0].state.waiting}",
                ])
                .contains("configmap \\\"missing\\\" not found")
        },
    );
    // The chatty container's log was rotated: `kubectl logs` shows the live file, the end of
    // the output.
    server.wait_for("the chatty pod to finish", || {
        server.ok(&["get", "pod", "chatty", "-o", "jsonpath={.status.phase}"]) == "Succeeded"
    });
    let logs = server.ok(&["logs", "chatty"]);
    assert!(
        logs.ends_with("line 400\n") && !logs.starts_with("line 1\n") && logs.len() < 4096,
        "{logs}"
    );
    // Going over the memory limit: the kernel kills it, and the pod says why.
    server.wait_for("the memory hog to be OOMKilled", || {
        server.ok(&[
            "get",
            "pod",
            "hog",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.terminated.reason}",
        ]) == "OOMKilled"
    });
    assert_eq!(
        server.ok(&["get", "pod", "hog", "-o", "jsonpath={.status.phase}"]),
        "Failed"
    );
    server.ok(&[
        "delete",
        "pod",
        "volumes",
        "broken-volume",
        "hog",
        "--timeout=30s",
    ]);
    let _ = std::fs::remove_dir_all(&base);
    server.wait_for("the pod's cgroup to go", || !memory_dir.exists());
}
