//! The pod runtime end to end, without a control plane: pod workers run real pods (network
//! namespaces on a test bridge, shims, the built-in agnhost, host commands) and the test checks
//! what a user would: status, an HTTP answer from the pod's address, restarts, logs, clean
//! removal. Needs root and iproute2; `cargo xtask ci` runs it.
//!
//! Each test gets its own bridge (`rdrb<pid>x<n>`), a /24 from 10.251.0.0/16 that no cluster uses,
//! and namespaces named `rdr-t<pid>x<n>-…` (swept by the lab if a run crashes). The ConfigMap
//! source is an in-memory map and the TokenRequest API a counter that issues short-lived fake
//! tokens: these tests exercise the runtime; the apiserver path is tested by control's kubectl
//! test. Volumes are mounted under the test's temporary directory.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::{
    collections::BTreeMap,
    io::Read,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{authentication::v1::TokenRequestSpec, core::v1::Pod};
use rudder_node::lab::http_get;
use rudder_node::runtime::{
    network::{Cidr, Network, NetworkConfig},
    pod::{self, BoxFuture, Context, IssuedToken, RuntimeConfig, Sources, Update},
    volumes::Allocatable,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// How long the fake tokens last: short, so a test sees one replaced.
const TOKEN_LIFETIME: Duration = Duration::from_secs(10);

/// ConfigMaps from a map; tokens numbered `fake-token-<n>` in the order requested.
struct Maps {
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Every token request: namespace, service account, spec.
    token_requests: Mutex<Vec<(String, String, TokenRequestSpec)>>,
}

impl Maps {
    fn token_calls(&self) -> usize {
        self.token_requests.lock().unwrap().len()
    }
}

impl Sources for Maps {
    fn config_map<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, String>> {
        Box::pin(async move { Ok(self.config_maps.get(name).cloned()) })
    }
    /// Refuses the audience `refused`, as an apiserver refuses a service account it does not
    /// know.
    fn service_account_token<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        spec: &'a TokenRequestSpec,
    ) -> BoxFuture<'a, Result<IssuedToken, String>> {
        Box::pin(async move {
            let mut requests = self.token_requests.lock().unwrap();
            requests.push((namespace.into(), service_account.into(), spec.clone()));
            if spec.audiences.iter().flatten().any(|a| a == "refused") {
                return Err(format!(
                    "serviceaccounts \"{service_account}\" is forbidden"
                ));
            }
            Ok(IssuedToken {
                token: format!("fake-token-{}", requests.len()),
                expires: jiff::Timestamp::now() + TOKEN_LIFETIME,
            })
        })
    }
    fn secret<'a>(
        &'a self,
        _namespace: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, String>> {
        Box::pin(async { Ok(None) })
    }
}

/// A node's pod runtime on a private bridge; removes the bridge and namespaces on drop.
struct Node {
    ctx: Arc<Context>,
    sources: Arc<Maps>,
    updates: mpsc::UnboundedReceiver<Update>,
    statuses: BTreeMap<String, Value>,
    finished: Vec<String>,
    root: tempfile::TempDir,
    cidr: Cidr,
}

impl Node {
    fn new() -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("t{}x{n}", std::process::id());
        let cidr = Cidr::parse(&format!(
            "10.251.{}.0/24",
            (std::process::id() % 200) as u32 + n
        ))
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        let network = Network::setup(NetworkConfig {
            bridge: format!("rdrb{}x{n}", std::process::id()),
            pod_cidr: cidr,
            netns_prefix: format!("rdr-{id}-"),
            state_dir: root.path().into(),
            blackholes: vec![],
            hooks: Default::default(),
        })
        .unwrap();
        let (tx, updates) = mpsc::unbounded_channel();
        let mut maps = BTreeMap::new();
        maps.insert(
            "settings".to_owned(),
            BTreeMap::from([("greeting".to_owned(), "hi there".to_owned())]),
        );
        let sources = Arc::new(Maps {
            config_maps: maps,
            token_requests: Mutex::new(Vec::new()),
        });
        let ctx = Arc::new(Context {
            config: RuntimeConfig {
                node_name: "n1".into(),
                host_ip: Ipv4Addr::new(172, 30, 0, 2),
                root: root.path().into(),
                shim_exe: PathBuf::from(env!("CARGO_BIN_EXE_rudder-pod")),
                cluster_dns: Ipv4Addr::new(10, 96, 0, 10),
                cluster_domain: "cluster.local".into(),
                api_service: (Ipv4Addr::new(10, 96, 0, 1), 443),
                allocatable: Allocatable {
                    cpu_millis: 2000,
                    memory_bytes: 4 << 30,
                },
                // Small, so the test sees its logs rotate.
                container_logs: rudder_node::runtime::shim::LogRotation {
                    max_size: 4096,
                    max_files: 3,
                },
            },
            network,
            sources: Arc::clone(&sources) as Arc<dyn Sources>,
            updates: tx,
        });
        Self {
            ctx,
            sources,
            updates,
            statuses: BTreeMap::new(),
            finished: Vec::new(),
            root,
            cidr,
        }
    }

    /// Takes the next update (panicking with `what` after 30 s without one).
    async fn next(&mut self, what: &str, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.updates.recv()).await {
            Ok(Some(Update::Status { name, status, .. })) => {
                self.statuses.insert(name, status);
            }
            Ok(Some(Update::Finished { name, .. })) => self.finished.push(name),
            Ok(Some(Update::Event { .. })) => {}
            Ok(None) | Err(_) => panic!(
                "timed out waiting for {what}; last statuses: {:#?}",
                self.statuses
            ),
        }
    }

    /// Waits until `pred` holds for the latest status of pod `name`.
    async fn wait_for(&mut self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.statuses.get(name)
                && pred(s)
            {
                return s.clone();
            }
            self.next(&format!("{what} of {name}"), deadline).await;
        }
    }

    async fn wait_finished(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.finished.iter().any(|n| n == name) {
            self.next(&format!("{name} to finish"), deadline).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let net = &self.ctx.network;
        for short in net.existing_sandboxes() {
            let _ = net.remove_by_short_uid(&short);
        }
        let _ = net.teardown();
        // Shims of a failed test: kill them by their pid files.
        rudder_node::runtime::process::kill_all_under(self.root.path());
        rudder_node::runtime::cgroups::remove_pods_under(self.root.path());
    }
}

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": uuid(),
                     "labels": {"app": name}},
        "spec": spec,
    }))
    .unwrap()
}

fn uuid() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn ready(s: &Value) -> bool {
    s["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn container(s: &Value) -> &Value {
    &s["containerStatuses"][0]
}

#[tokio::test]
async fn agnhost_pod_serves_on_its_address_restarts_and_goes_away() {
    let mut node = Node::new();
    let web = pod(
        "web-0",
        json!({"containers": [{
            "name": "netexec",
            "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
            "args": ["netexec", "--http-port=8080", "--udp-port=-1"],
            "ports": [{"containerPort": 8080, "name": "http"}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
        }], "terminationGracePeriodSeconds": 5}),
    );
    let uid = web.metadata.uid.clone().unwrap();
    let handle = pod::spawn(Arc::clone(&node.ctx), web.clone());
    let status = node.wait_for("web-0", "Ready", ready).await;
    assert_eq!(status["phase"], "Running");
    let ip = status["podIP"].as_str().unwrap().to_owned();
    assert!(
        node.cidr.network.octets()[..3] == ip.parse::<Ipv4Addr>().unwrap().octets()[..3],
        "{ip}"
    );
    // The pod answers on its own address with its own hostname, from its own network namespace.
    assert_eq!(http_get(&ip, 8080, "/hostname").unwrap(), "web-0");
    let client = http_get(&ip, 8080, "/clientip").unwrap();
    assert!(
        client.starts_with(&node.cidr.gateway().to_string()),
        "{client}"
    );
    // resolv.conf and hosts as the kubelet writes them, seen inside the container.
    let resolv = http_get(&ip, 8080, "/shell?shellCommand=cat%20/etc/resolv.conf").unwrap();
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    let pid1 = http_get(
        &ip,
        8080,
        "/shell?shellCommand=echo%20%24%24%20%24(cat%20/proc/1/comm)",
    )
    .unwrap();
    assert!(
        pid1.contains("rudder-pod"),
        "the container is PID 1 of its namespace: {pid1}"
    );

    // Killing the container's process restarts it.
    let pid_file = node
        .root
        .path()
        .join(format!("pods/{uid}/containers/netexec/0/pid"));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    rudder_node::runtime::process::kill(pid, libc::SIGKILL);
    let status = node
        .wait_for("web-0", "a restart", |s| {
            container(s)["restartCount"] == 1 && ready(s)
        })
        .await;
    assert_eq!(
        container(&status)["lastState"]["terminated"]["exitCode"],
        137
    );
    assert_eq!(http_get(&ip, 8080, "/hostname").unwrap(), "web-0");

    // Deletion: SIGTERM, the worker finishes, the sandbox is gone.
    let mut deleting = web;
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    deleting.metadata.deletion_grace_period_seconds = Some(5);
    let started = Instant::now();
    handle.pod.send(Arc::new(deleting)).unwrap();
    node.wait_finished("web-0").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "agnhost stops on SIGTERM"
    );
    let status = &node.statuses["web-0"];
    assert!(
        container(status)["state"]["terminated"].is_object(),
        "{status:#}"
    );
    assert!(node.ctx.network.existing_sandboxes().is_empty());
    assert!(http_get(&ip, 8080, "/hostname").is_err());
}

#[tokio::test]
async fn host_commands_run_isolated_with_env_logs_and_exit_codes() {
    let mut node = Node::new();
    // Each container has a /tmp of its own: the init container's file is neither in the main
    // container's /tmp nor on the host's.
    let marker = format!("/tmp/rudder-private-tmp-{}", uuid());
    let job = pod(
        "job-0",
        json!({
            "restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "busybox", "command": ["sh", "-c", format!("echo init done; touch {marker}")]}],
            "containers": [{
                "name": "main",
                "image": "debian:13",
                // A volume at /tmp, another inside it (read-only), the working directory there.
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/tmp"},
                    {"name": "conf", "mountPath": "/tmp/conf", "readOnly": true},
                ],
                "workingDir": "/tmp/conf",
                "command": ["sh", "-c", format!("test -e {marker} && echo tmp shared || echo tmp private; echo conf says $(cat greeting); touch x 2>/dev/null || echo conf read-only; echo $GREETING from $(hostname) as pid $$$$ in $POD_NS; echo oops >&2; exit 3")],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                ],
            }],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "conf", "configMap": {"name": "settings"}},
            ],
        }),
    );
    let uid = job.metadata.uid.clone().unwrap();
    let _handle = pod::spawn(Arc::clone(&node.ctx), job);
    let status = node
        .wait_for("job-0", "Failed", |s| s["phase"] == "Failed")
        .await;
    let terminated = &container(&status)["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 3, "{status:#}");
    assert_eq!(terminated["reason"], "Error");
    assert_eq!(
        status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    let log = std::fs::read_to_string(node.root.path().join(format!("pods/{uid}/logs/main/0.log")))
        .unwrap();
    assert!(
        log.contains(" stdout F hi there from job-0 as pid 1 in default\n"),
        "{log}"
    );
    assert!(log.contains(" stderr F oops\n"), "{log}");
    assert!(log.contains(" stdout F tmp private\n"), "{log}");
    assert!(log.contains(" stdout F conf says hi there\n"), "{log}");
    assert!(log.contains(" stdout F conf read-only\n"), "{log}");
    assert!(!Path::new(&marker).exists(), "{marker} reached the host");
    // No command, not a built-in image: a clear waiting reason, not a silent failure.
    let nocmd = pod(
        "nocmd",
        json!({"containers": [{"name": "c", "image": "nginx:1.27"}]}),
    );
    let _h = pod::spawn(Arc::clone(&node.ctx), nocmd);
    let status = node
        .wait_for("nocmd", "ErrImagePull", |s| {
            container(s)["state"]["waiting"]["reason"] == "ErrImagePull"
        })
        .await;
    assert_eq!(status["phase"], "Pending");
    assert!(
        container(&status)["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("no command")
    );
}

#[tokio::test]
async fn failing_liveness_restarts_and_failing_readiness_unreadies() {
    let mut node = Node::new();
    let flaky = pod(
        "flaky",
        json!({"containers": [
            {"name": "live", "image": "debian", "command": ["sleep", "600"],
             "livenessProbe": {"exec": {"command": ["test", "-e", "/nonexistent"]}, "periodSeconds": 1, "failureThreshold": 1}},
            {"name": "unready", "image": "debian", "command": ["sleep", "600"],
             "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1}},
            // Exec probes run with the container's environment, as the kubelet's do.
            {"name": "envready", "image": "debian", "command": ["sleep", "600"],
             "env": [{"name": "PROBE_DIR", "value": "/proc/self"}],
             "readinessProbe": {"exec": {"command": ["sh", "-c", "test -d \"$PROBE_DIR\""]}, "periodSeconds": 1}},
        ], "terminationGracePeriodSeconds": 1}),
    );
    let _handle = pod::spawn(Arc::clone(&node.ctx), flaky);
    let status = node
        .wait_for("flaky", "a liveness restart and env-aware readiness", |s| {
            s["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)
                && s["containerStatuses"][2]["ready"] == true
        })
        .await;
    assert_eq!(status["containerStatuses"][1]["ready"], false);
    assert_eq!(status["containerStatuses"][1]["restartCount"], 0);
    assert!(!ready(&status));
}

/// Runs `command` in the agnhost container at `ip` (its `/shell`) and returns the output.
fn shell(ip: &str, command: &str) -> String {
    let query: String = form_urlencoded::byte_serialize(command.as_bytes()).collect();
    let body = http_get(ip, 8080, &format!("/shell?shellCommand={query}")).unwrap();
    let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    answer["output"].as_str().unwrap_or_default().to_owned()
}

/// Polls `command` in the container until its output satisfies `pred` (30 s at most), letting
/// the pod worker run in between.
async fn shell_until(ip: &str, command: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = shell(ip, command);
        if pred(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on `{command}`, last output {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn downward_api_and_projected_volumes_show_the_pod_and_a_fresh_token() {
    let mut node = Node::new();
    let mnt = node.root.path().join("mnt");
    let (sa, info) = (mnt.join("sa"), mnt.join("podinfo"));
    let (sa, info) = (sa.to_str().unwrap(), info.to_str().unwrap());
    let mut vols = pod(
        "vols",
        json!({
            "serviceAccountName": "builder",
            "containers": [{
                "name": "netexec",
                "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
                "args": ["netexec", "--http-port=8080", "--udp-port=-1"],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
                "resources": {"requests": {"memory": "32Mi"}},
                "volumeMounts": [
                    {"name": "kube-api-access", "mountPath": sa, "readOnly": true},
                    {"name": "podinfo", "mountPath": info},
                ],
            }],
            "volumes": [
                {"name": "kube-api-access", "projected": {"defaultMode": 0o440, "sources": [
                    {"serviceAccountToken": {"path": "token", "audience": "rudder-test", "expirationSeconds": 3600}},
                    {"configMap": {"name": "settings", "items": [{"key": "greeting", "path": "greeting"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                ]}},
                {"name": "podinfo", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations['note']"}},
                    {"path": "cpu_limit", "resourceFieldRef": {"containerName": "netexec", "resource": "limits.cpu", "divisor": "1m"}},
                    {"path": "mem_request", "resourceFieldRef": {"containerName": "netexec", "resource": "requests.memory", "divisor": "1Mi"}, "mode": 0o600},
                ]}},
            ],
            "terminationGracePeriodSeconds": 1,
        }),
    );
    vols.metadata.annotations = Some(BTreeMap::from([("note".into(), "hello".into())]));
    let handle = pod::spawn(Arc::clone(&node.ctx), vols.clone());
    let status = node.wait_for("vols", "Ready", ready).await;
    let ip = status["podIP"].as_str().unwrap().to_owned();

    // The downwardAPI volume, seen inside the container.
    assert_eq!(shell(&ip, &format!("cat {info}/labels")), "app=\"vols\"");
    assert_eq!(shell(&ip, &format!("cat {info}/note")), "hello");
    // No CPU limit: the node's allocatable, in millicores.
    assert_eq!(shell(&ip, &format!("cat {info}/cpu_limit")), "2000");
    assert_eq!(shell(&ip, &format!("cat {info}/mem_request")), "32");
    assert_eq!(
        shell(&ip, &format!("stat -c %a {info}/labels {info}/mem_request")),
        "644\n600\n"
    );

    // The projected volume: a ConfigMap key, a downward API field and a token, in one directory.
    assert_eq!(shell(&ip, &format!("cat {sa}/greeting")), "hi there");
    assert_eq!(shell(&ip, &format!("cat {sa}/namespace")), "default");
    assert_eq!(
        shell(&ip, &format!("stat -c %a {sa}/token {sa}/greeting")),
        "440\n440\n"
    );
    let first = shell(&ip, &format!("cat {sa}/token"));
    assert!(first.starts_with("fake-token-"), "{first:?}");
    let (namespace, account, spec) = node.sources.token_requests.lock().unwrap()[0].clone();
    assert_eq!(
        (namespace.as_str(), account.as_str()),
        ("default", "builder")
    );
    assert_eq!(spec.audiences, Some(vec!["rudder-test".to_owned()]));
    assert_eq!(spec.expiration_seconds, Some(3600));
    let bound = spec.bound_object_ref.unwrap();
    assert_eq!(
        (bound.kind.as_deref(), bound.name.as_deref(), bound.uid),
        (Some("Pod"), Some("vols"), vols.metadata.uid.clone())
    );

    // The token lasts 10 s: the worker replaces it while the container runs, and the container
    // sees the new one in place.
    let second = shell_until(&ip, &format!("cat {sa}/token"), |t| {
        t.starts_with("fake-token-") && t != first
    })
    .await;
    assert!(node.sources.token_calls() >= 2, "{second}");
    assert_eq!(shell(&ip, &format!("cat {sa}/greeting")), "hi there");

    // New labels reach the running container's file.
    let mut relabelled = vols;
    relabelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("tier".into(), "front end".into());
    handle.pod.send(Arc::new(relabelled)).unwrap();
    shell_until(&ip, &format!("cat {info}/labels"), |l| {
        l == "app=\"vols\"\ntier=\"front end\""
    })
    .await;

    // Without a first token the container does not start, and says why.
    let refused = pod(
        "refused",
        json!({"containers": [{
            "name": "c", "image": "debian", "command": ["sleep", "600"],
            "volumeMounts": [{"name": "token", "mountPath": mnt.join("refused").to_str().unwrap()}],
        }], "volumes": [{"name": "token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "audience": "refused"}},
        ]}}]}),
    );
    let _refused = pod::spawn(Arc::clone(&node.ctx), refused);
    let status = node
        .wait_for("refused", "CreateContainerConfigError", |s| {
            container(s)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
        .await;
    let message = container(&status)["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("requesting a token for serviceaccount default/default")
            && message.contains("forbidden"),
        "{message}"
    );
}
