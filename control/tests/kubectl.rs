//! The apiserver as a new user meets it: the unmodified kubectl 1.37 against `rudder server`,
//! on the embedded store and on a real etcd. Needs kubectl (`RUDDER_KUBECTL`) and Debian's etcd;
//! run by `cargo xtask ci`.

#![allow(clippy::unwrap_used, reason = "test code: a failure is a panic")]

mod common;

use std::{io::BufRead, process::Stdio, time::Duration};

use common::{Rudder, fixture};
use rudder_control::store::etcd::LocalEtcd;

fn user_journey(server: &mut Rudder) {
    let app = fixture("app.yaml");
    // apply of a multi-document manifest with kubectl's default (strict) validation.
    let out = server.ok(&["apply", "-f", &app]);
    for line in [
        "namespace/shop created",
        "configmap/web-config created",
        "secret/web-secret created",
        "deployment.apps/web created",
        "service/web created",
        "ingress.networking.k8s.io/web created",
        "job.batch/migrate created",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let all = server.ok(&["get", "all", "-A"]);
    for name in [
        "service/web",
        "deployment.apps/web",
        "job.batch/migrate",
        "service/kubernetes",
    ] {
        assert!(all.contains(name), "get all -A lacks {name}:\n{all}");
    }
    let svc = server.ok(&[
        "get",
        "svc",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort}",
    ]);
    let (ip, node_port) = svc.split_once(' ').unwrap();
    assert!(ip.starts_with("10."), "{svc}");
    let node_port: u16 = node_port.parse().unwrap();
    assert!((30000..=32767).contains(&node_port));

    let yaml = server.ok(&["get", "deploy", "web", "-n", "shop", "-o", "yaml"]);
    assert!(
        yaml.contains("imagePullPolicy: IfNotPresent"),
        "defaults applied:\n{yaml}"
    );
    assert!(yaml.contains("generation: 1"));
    let secret = server.ok(&[
        "get",
        "secret",
        "web-secret",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(
        secret, "czNjcjN0LXZhbHVl",
        "stringData is stored base64-encoded in data"
    );

    // get -w sees changes made by another client.
    let mut watch = server
        .kubectl_cmd(&["get", "cm", "-n", "shop", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // Every namespace holds the cluster CA's ConfigMap too.
            .filter(|l| l != "configmap/kube-root-ca.crt")
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "configmap/web-config"
    );
    let _ = server.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n  namespace: shop\n",
    );
    let seen = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(seen, "configmap/watched");
    let _ = watch.kill();
    let _ = watch.wait();

    let describe = server.ok(&["describe", "deploy", "web", "-n", "shop"]);
    assert!(
        describe.contains("Name:")
            && describe.contains("web")
            && describe.contains("RollingUpdate"),
        "{describe}"
    );

    server.ok(&["label", "cm", "web-config", "-n", "shop", "tier=front"]);
    server.ok(&["annotate", "cm", "web-config", "-n", "shop", "note=hi"]);
    server.ok(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"x":"1"}}"#,
    ]);
    server.ok(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/data/y","value":"2"}]"#,
    ]);
    let cm = server.ok(&["get", "cm", "web-config", "-n", "shop", "-o", "jsonpath={.metadata.labels.tier} {.metadata.annotations.note} {.data.x} {.data.y} {.data.greeting}"]);
    assert_eq!(cm, "front hi 1 2 hello");

    // Strategic merge patch keeps the other fields of the container it merges into.
    server.ok(&["patch", "deploy", "web", "-n", "shop", "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"registry.k8s.io/e2e-test-images/agnhost:2.48"}]}}}}"#]);
    let d = server.ok(&["get", "deploy", "web", "-n", "shop", "-o",
        "jsonpath={.metadata.generation} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].name}"]);
    assert_eq!(d, "2 registry.k8s.io/e2e-test-images/agnhost:2.48 http");

    server.ok(&["scale", "deploy/web", "-n", "shop", "--replicas=5"]);
    assert_eq!(
        server.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5"
    );

    let edited = server
        .kubectl_cmd(&["edit", "cm", "web-config", "-n", "shop"])
        .env(
            "KUBE_EDITOR",
            "sed -i s/greeting:\\ hello/greeting:\\ edited/",
        )
        .output()
        .unwrap();
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    assert_eq!(
        server.ok(&[
            "get",
            "cm",
            "web-config",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.greeting}"
        ]),
        "edited"
    );

    // Re-apply of a changed manifest updates in place and bumps the generation.
    let changed = std::fs::read_to_string(&app)
        .unwrap()
        .replace("replicas: 2", "replicas: 3");
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &changed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web configured"));
    let d = server.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.generation} {.spec.replicas}",
    ]);
    assert_eq!(d, "4 3");

    // Server-side apply: create, re-apply, conflict with another manager, force.
    let ssa = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: shop\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    for _ in 0..2 {
        let out = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], ssa);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: shop\ndata:\n  a: \"1\"\n");
    assert!(out.status.success());
    assert_eq!(
        server.ok(&["get", "cm", "ssa", "-n", "shop", "-o", "jsonpath={.data}"]),
        r#"{"a":"1"}"#,
        "a field no longer applied is removed"
    );
    let conflict = server.kubectl_stdin(&["apply", "--server-side", "--field-manager", "other", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: shop\ndata:\n  a: \"9\"\n");
    assert!(!conflict.status.success());
    assert!(
        String::from_utf8_lossy(&conflict.stderr).contains("conflict"),
        "{}",
        String::from_utf8_lossy(&conflict.stderr)
    );
    let forced = server.kubectl_stdin(&["apply", "--server-side", "--force-conflicts", "--field-manager", "other", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: shop\ndata:\n  a: \"9\"\n");
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(
        server.ok(&["get", "cm", "ssa", "-n", "shop", "-o", "jsonpath={.data.a}"]),
        "9"
    );

    bad_input(server);

    // delete -f removes everything, the namespace last.
    server.ok(&["delete", "-f", &app]);
    server.wait_for("namespace shop to go", || {
        !server.kubectl(&["get", "ns", "shop"]).status.success()
    });
    assert!(
        server
            .ok(&["get", "cm", "-n", "shop", "-o", "name"])
            .trim()
            .is_empty()
    );
}

/// kubectl's imperative commands: client-go's typed clients send protobuf bodies.
fn imperative_commands(server: &Rudder) {
    server.ok(&["create", "namespace", "imp"]);
    // Every namespace gets a `default` ServiceAccount, and gets it back when it is deleted.
    let has_default = || {
        server
            .kubectl(&["get", "serviceaccount", "default", "-n", "imp"])
            .status
            .success()
    };
    server.wait_for("the default service account in imp", has_default);
    server.ok(&["delete", "serviceaccount", "default", "-n", "imp"]);
    server.wait_for("the default service account back in imp", has_default);
    let n = ["-n", "imp"];
    let run = |args: &[&str]| server.ok(&[args, &n[..]].concat());
    run(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=b",
        "--from-literal=c=d",
    ]);
    run(&[
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=hunter2",
    ]);
    run(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=0",
        "--port=80",
    ]);
    run(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    run(&[
        "expose",
        "deployment",
        "web",
        "--port=8080",
        "--target-port=80",
        "--name=web2",
    ]);
    run(&[
        "create",
        "job",
        "once",
        "--image=busybox",
        "--",
        "echo",
        "hi",
    ]);
    run(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/5 * * * *",
    ]);
    run(&[
        "create",
        "ingress",
        "ing",
        "--rule=shop.example/api*=web2:8080",
    ]);
    run(&[
        "run",
        "solo",
        "--image=nginx",
        "--labels=app=solo",
        "--env=A=1",
        "--port=80",
    ]);

    assert_eq!(
        run(&["get", "cm", "cfg", "-o", "jsonpath={.data.a}{.data.c}"]),
        "bd"
    );
    assert_eq!(
        run(&["get", "secret", "pw", "-o", "jsonpath={.data.password}"]),
        "aHVudGVyMg=="
    );
    // An explicit zero survives (replicas is a pointer in Go); the defaults are Kubernetes'.
    let deploy = run(&["get", "deploy", "web", "-o", "json"]);
    let deploy: serde_json::Value = serde_json::from_str(&deploy).unwrap();
    assert_eq!(deploy["spec"]["replicas"], 0);
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(container["ports"][0]["containerPort"], 80);
    assert_eq!(container["ports"][0]["protocol"], "TCP");
    assert!(container.get("stdin").is_none() && container["ports"][0].get("hostPort").is_none());
    assert_eq!(deploy["metadata"]["generation"], 1);
    // The Service targets the container port (an IntOrString) and got a NodePort.
    assert_eq!(
        run(&[
            "get",
            "svc",
            "web2",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ]),
        "80"
    );
    let node_port = run(&[
        "get",
        "svc",
        "np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    assert!(
        (30000..=32767).contains(&node_port.parse::<u16>().unwrap()),
        "{node_port}"
    );
    assert_eq!(
        run(&[
            "get",
            "ingress",
            "ing",
            "-o",
            "jsonpath={.spec.rules[0].http.paths[0].pathType}"
        ]),
        "Prefix"
    );
    assert_eq!(
        run(&[
            "get",
            "pod",
            "solo",
            "-o",
            "jsonpath={.spec.containers[0].env[0].value}"
        ]),
        "1"
    );
    assert_eq!(
        run(&["get", "cronjob", "tick", "-o", "jsonpath={.spec.schedule}"]),
        "*/5 * * * *"
    );
    // kubectl explain reads the OpenAPI v3 component schemas.
    let explain = server.ok(&["explain", "deployment.spec.strategy"]);
    assert!(
        explain.contains("KIND:       Deployment") && explain.contains("rollingUpdate"),
        "{explain}"
    );
    // Validation still names the field for a protobuf body.
    let err = server.fails(&["create", "deployment", "Bad_Name", "--image=x", "-n", "imp"]);
    assert!(err.contains("metadata.name"), "{err}");
    server.ok(&["delete", "namespace", "imp"]);
}

fn bad_input(server: &Rudder) {
    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  namespace: shop\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );

    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n  namespace: shop\nbogus: 1\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field \"bogus\""),
        "{err}"
    );

    let out = server.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  namespace: shop\nspec:\n  replicas: \"x\"\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("BadRequest") && err.contains("spec.replicas"),
        "{err}"
    );

    let out = server.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: shop\nspec:\n  ports:\n  - port: 99999\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.ports[0].port"),
        "{err}"
    );

    // A stale resourceVersion is a conflict.
    let current = server.ok(&["get", "cm", "web-config", "-n", "shop", "-o", "json"]);
    server.ok(&["label", "cm", "web-config", "-n", "shop", "bump=1"]);
    let out = server.kubectl_stdin(&["replace", "-f", "-"], &current);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("Conflict")
            && err.contains("the object has been modified"),
        "{err}"
    );

    // Bodies over the limit.
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big","namespace":"shop"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let out = server.kubectl_stdin(&["create", "-f", "-"], &big);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("RequestEntityTooLarge"),
        "{err}"
    );

    // No or wrong credentials.
    let err = server.fails(&["--token", "wrong", "get", "ns"]);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );

    // The server is still up.
    server.ok(&["get", "ns", "default"]);
}

fn restart_keeps_objects_and_watches_resume(server: &mut Rudder) {
    // `kubectl create namespace` sends a protobuf body.
    server.ok(&["create", "namespace", "keep"]);
    let out = server.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: before\n  namespace: keep\ndata:\n  k: v\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rv = server.ok(&[
        "get",
        "cm",
        "before",
        "-n",
        "keep",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after\n  namespace: keep\n",
    );
    assert!(out.status.success());

    server.restart();
    assert_eq!(
        server.ok(&[
            "get",
            "cm",
            "before",
            "-n",
            "keep",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "v"
    );
    // A watch from the old resourceVersion resumes: it sees `after`, created after that version.
    let events = server.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/keep/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"
        ),
    ]);
    assert!(
        events.contains("\"ADDED\"") && events.contains("\"name\":\"after\""),
        "{events}"
    );
    assert!(
        !events.contains("\"name\":\"before\""),
        "nothing at or before the resumed version: {events}"
    );
}

fn custom_resources(server: &Rudder) {
    server.ok(&["apply", "-f", &fixture("widgets-crd.yaml")]);
    server.ok(&[
        "wait",
        "--for",
        "condition=Established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ]);
    let out = server.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: default\nspec:\n  size: small\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Printer columns, and the schema default for replicas.
    let table = server.ok(&["get", "wd", "-n", "default"]);
    assert!(
        table.contains("SIZE") && table.contains("REPLICAS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["w1", "small", "1"]),
        "{table}"
    );
    server.ok(&["scale", "widget/w1", "-n", "default", "--replicas=4"]);
    let field = |resource: &str, path: &str| {
        server.ok(&[
            "get",
            resource,
            "w1",
            "-n",
            "default",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    assert_eq!(field("widget", "{.spec.replicas}"), "4");
    // The schema's status default is applied at create (the status sent is dropped).
    assert_eq!(field("widget", "{.status.phase}"), "Pending");
    // Through another served version the object says that version.
    assert_eq!(
        field("widgets.v1beta1.example.com", "{.apiVersion}"),
        "example.com/v1beta1"
    );
    assert_eq!(
        field("widgets.v1.example.com", "{.apiVersion}"),
        "example.com/v1"
    );
    // The `all` category includes the custom type.
    assert!(
        server
            .ok(&["get", "all", "-n", "default"])
            .contains("widget.example.com/w1")
    );
    // Schema validation names the field.
    let out = server.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w2\n  namespace: default\nspec:\n  size: huge\n  replicas: -1\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.size") && err.contains("spec.replicas"),
        "{err}"
    );
    // Deleting the CRD removes its objects and stops serving the type.
    server.ok(&["delete", "crd", "widgets.example.com"]);
    server.wait_for("widgets to stop being served", || {
        !server.kubectl(&["get", "widgets", "-A"]).status.success()
    });
}

#[test]
#[ignore = "needs kubectl 1.37 (RUDDER_KUBECTL); run by cargo xtask ci"]
fn kubectl_against_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Rudder::start(&dir.path().join("data"), &[]);
    user_journey(&mut server);
    imperative_commands(&server);
    custom_resources(&server);
    restart_keeps_objects_and_watches_resume(&mut server);
}

#[test]
#[ignore = "needs kubectl 1.37 and Debian's etcd; run by cargo xtask ci"]
fn kubectl_against_etcd() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let etcd = runtime.block_on(LocalEtcd::start()).expect("start etcd");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Rudder::start(
        &dir.path().join("data"),
        &["--etcd-endpoints".into(), etcd.endpoint.clone()],
    );
    user_journey(&mut server);
    restart_keeps_objects_and_watches_resume(&mut server);
    drop(server);
    drop(etcd);
}
