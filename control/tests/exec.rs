//! `kubectl exec` against `rudder server` with its node agent, with unmodified kubectl (which
//! speaks the WebSocket `v5.channel.k8s.io` protocol): output on stdout and stderr, the exit
//! code, stdin ended by the client, a terminal (`-t`, through `script`), and that the command
//! runs inside the container: its hostname (UTS namespace), its PID 1 (PID namespace), its pod
//! address (network namespace), its environment; for a plain image running a host command and
//! for the built-in agnhost image. Errors: a pod that does not exist, a container that does not,
//! a command that does not.
//!
//! Needs root, iproute2, util-linux (`nsenter`, `script`) and kubectl; `cargo xtask ci` runs it.
//! The node's private network is described in `common/node.rs`; everything is removed at the
//! end, also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Rudder, node::Node};

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: docker.io/library/debian:12
    command: [sleep, "3600"]
    env: [{name: GREETING, value: hello from the pod}]
---
apiVersion: v1
kind: Pod
metadata: {name: netexec}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: agnhost
    image: registry.k8s.io/e2e-test-images/agnhost:2.47
    args: [netexec, --http-port=8080]
"#;

/// Runs kubectl; returns its exit code, stdout and stderr.
fn run(server: &Rudder, args: &[&str]) -> (Option<i32>, String, String) {
    let out = server.kubectl(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs root, iproute2, util-linux and kubectl 1.37; run by cargo xtask ci"]
fn kubectl_exec_runs_commands_in_containers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), 0, &[]);
    let server = &node.server;
    let applied = server.kubectl_stdin(&["apply", "-f", "-"], PODS);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let waited = server.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/sleeper",
        "pod/netexec",
        "--timeout=60s",
    ]);
    assert!(
        waited.status.success(),
        "pods not Ready: {}\n{}\n{}",
        String::from_utf8_lossy(&waited.stderr),
        server.ok(&["describe", "pods"]),
        server.log()
    );

    // Output streams and the exit code.
    let (code, stdout, stderr) = run(
        server,
        &[
            "exec",
            "sleeper",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(code, Some(3), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "out\n");
    assert!(stderr.starts_with("err\n"), "{stderr}");
    assert_eq!(server.ok(&["exec", "sleeper", "--", "echo", "hi"]), "hi\n");

    // Stdin, ended when kubectl's input ends.
    let piped = server.kubectl_stdin(&["exec", "-i", "sleeper", "--", "cat"], "hello\n");
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "hello\n");

    // The container's namespaces and environment.
    assert_eq!(
        server.ok(&["exec", "sleeper", "--", "hostname"]),
        "sleeper\n",
        "UTS namespace"
    );
    assert_eq!(
        server.ok(&["exec", "sleeper", "--", "cat", "/proc/1/cmdline"]),
        "sleep\u{0}3600\u{0}",
        "PID namespace"
    );
    let ip = server.ok(&["get", "pod", "sleeper", "-o", "jsonpath={.status.podIP}"]);
    let addrs = server.ok(&["exec", "sleeper", "--", "ip", "-o", "-4", "addr", "show"]);
    assert!(
        addrs.contains(&format!("inet {ip}/")),
        "network namespace: {addrs}"
    );
    assert_eq!(
        server.ok(&["exec", "sleeper", "--", "sh", "-c", "echo $GREETING"]),
        "hello from the pod\n"
    );
    let agnhost = server.ok(&["exec", "netexec", "--", "cat", "/proc/1/cmdline"]);
    assert!(agnhost.contains("netexec"), "{agnhost:?}");

    // A background process that keeps stdout open does not hold the session for long.
    let started = Instant::now();
    assert_eq!(
        server.ok(&[
            "exec",
            "sleeper",
            "--",
            "sh",
            "-c",
            "sleep 30 & echo started"
        ]),
        "started\n"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // A terminal: kubectl -t needs one itself, which `script` gives it.
    let kubectl = std::env::var("RUDDER_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let line = format!(
        "'{kubectl}' --cache-dir '{}' exec -it sleeper -- tty",
        server.cache_dir.path().display()
    );
    let mut script = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("KUBECONFIG", server.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    // Kept open until the end: `script` would pass the end of its input on to the terminal.
    let _input = script.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = script.kill();
            let _ = script.wait();
            panic!("kubectl exec -it did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut terminal = String::new();
    script
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut terminal)
        .unwrap();
    let mut errors = String::new();
    script
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    assert!(status.success(), "{terminal}\n{errors}");
    assert!(terminal.contains("/dev/pts/"), "{terminal:?}\n{errors}");

    // Errors.
    let (code, _, stderr) = run(server, &["exec", "nope", "--", "true"]);
    assert!(
        code != Some(0) && stderr.contains("pods \"nope\" not found"),
        "{stderr}"
    );
    let (code, _, stderr) = run(server, &["exec", "sleeper", "-c", "nope", "--", "true"]);
    assert!(code != Some(0) && stderr.contains("nope"), "{stderr}");
    let (code, _, stderr) = run(server, &["exec", "sleeper", "--", "/no/such/command"]);
    assert_eq!(code, Some(127), "{stderr}");
    assert!(stderr.contains("/no/such/command"), "{stderr}");
}
