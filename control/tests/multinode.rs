//! A three-node cluster on one machine (`rudder lab`), end to end with unmodified kubectl.
//!
//! `rudder lab up` builds a network namespace per node on one switch namespace, runs `rudder
//! server` on node n1 and `rudder agent` (joined with the server's token) on n2 and n3. Then:
//! - every node is Ready with a PodCIDR of its own;
//! - a Deployment's pods spread over the three nodes, each with an address from its node's
//!   PodCIDR, and `kubectl rollout status` returns;
//! - a pod reaches pods on the other nodes directly (host-gw routes) and through the Service's
//!   ClusterIP (backends on several nodes answer);
//! - a client outside the nodes (in the switch namespace) reaches the NodePort on every node,
//!   also when the chosen backend runs on another node (XDP forwards it source-translated);
//! - `kubectl logs` reaches the agent of another node;
//! - the scheduler obeys required pod anti-affinity (the pod that fits nowhere says why), zone
//!   topology spread, and binds a pod that fitted nowhere once a node is labelled for it;
//! - `kubectl drain` evicts through the eviction subresource, and a PodDisruptionBudget holds the
//!   second eviction back until the first pod's replacement is ready elsewhere;
//! - an agent stopped and started again (`rudder lab stop-node/start-node`) leaves its pods
//!   running meanwhile and adopts them (same container start time, no restart);
//! - `rudder lab down` leaves no namespace, eBPF pin, process or pod cgroup behind.
//!
//! Needs root, BPF, iproute2, ethtool and kubectl (`cargo xtask ci`). The lab's addresses live
//! only inside its namespaces; nothing is routed from the host. The lab is removed at the end,
//! also when the test fails.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: agnhost
        image: registry.k8s.io/e2e-test-images/agnhost:2.47
        args: ["netexec", "--http-port=8080"]
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// A running lab; `rudder lab down` on drop.
struct Lab {
    name: String,
    data: tempfile::TempDir,
    cache: tempfile::TempDir,
}

fn rudder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(args)
        .output()
        .expect("run rudder")
}

impl Lab {
    fn up(nodes: u32) -> Self {
        let lab = Self {
            name: format!("t{}x9", std::process::id()),
            data: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        };
        let out = rudder(&[
            "lab",
            "up",
            "--name",
            &lab.name,
            "--nodes",
            &nodes.to_string(),
            "--data-dir",
            &lab.dir(),
            "--timeout",
            "60",
        ]);
        assert!(
            out.status.success(),
            "rudder lab up failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        );
        lab
    }

    fn dir(&self) -> String {
        self.data.path().display().to_string()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=3 {
            let path = self.data.path().join(format!("n{i}/rudder.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- n{i} ---\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Runs `cmd` inside namespace `ns`.
    fn exec(&self, ns: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .output()
            .expect("ip netns exec")
    }

    fn switch(&self) -> String {
        format!("rdr-{}-lab", self.name)
    }

    fn node(&self, i: u32) -> String {
        format!("rdr-{}-n{i}", self.name)
    }

    /// kubectl, from the switch namespace (the apiserver is at node n1's address).
    fn kubectl(&self, args: &[&str]) -> Output {
        let kubectl = std::env::var("RUDDER_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let kubeconfig = self.data.path().join("kubeconfig");
        let cache = self.cache.path().display().to_string();
        let mut cmd = vec![
            kubectl.as_str(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--cache-dir",
            &cache,
        ];
        cmd.extend_from_slice(args);
        self.exec(&self.switch(), &cmd)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `curl -s URL` from namespace `ns`; the body, or None when it failed.
    fn curl(&self, ns: &str, url: &str) -> Option<String> {
        let out = self.exec(ns, &["curl", "-s", "-m", "5", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `rudder lab stop-node|start-node --node NODE`, asserting success.
    fn node_command(&self, what: &str, node: &str) {
        let out = rudder(&[
            "lab",
            what,
            "--name",
            &self.name,
            "--data-dir",
            &self.dir(),
            "--node",
            node,
        ]);
        assert!(
            out.status.success(),
            "rudder lab {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn down(&self) -> Output {
        rudder(&[
            "lab",
            "down",
            "--name",
            &self.name,
            "--data-dir",
            &self.dir(),
            "--purge",
        ])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // RUDDER_KEEP_LAB=1 keeps a failed lab for a look (`rudder lab down` removes it).
        if std::thread::panicking() && std::env::var_os("RUDDER_KEEP_LAB").is_some() {
            let data = std::mem::replace(&mut self.data, tempfile::tempdir().unwrap());
            eprintln!("keeping lab {} in {:?}", self.name, data.keep());
            return;
        }
        let _ = self.down();
    }
}

/// Whether `ip` is inside `cidr` (a.b.c.d/24).
fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, _) = cidr.split_once('/').unwrap();
    let prefix = |s: &str| s.rsplit_once('.').map(|(p, _)| p.to_owned());
    prefix(ip) == prefix(net)
}

#[test]
fn a_three_node_lab_runs_and_connects_pods_across_nodes() {
    let lab = Lab::up(3);

    // Nodes: Ready, each with its own PodCIDR.
    let nodes = lab.ok(&[
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
    ]);
    let cidrs: BTreeMap<String, String> = nodes
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "{nodes}");
            assert_eq!(f[2], "True", "{nodes}");
            (f[0].to_owned(), f[1].to_owned())
        })
        .collect();
    assert_eq!(
        cidrs.keys().cloned().collect::<Vec<_>>(),
        ["n1", "n2", "n3"],
        "{nodes}"
    );
    assert_eq!(
        cidrs.values().collect::<BTreeSet<_>>().len(),
        3,
        "PodCIDRs must differ: {nodes}"
    );

    // A Deployment spreads over the nodes.
    let manifest = lab.data.path().join("app.yaml");
    std::fs::write(&manifest, APP).unwrap();
    lab.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    lab.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let listing = lab.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}"#,
    ]);
    // node -> [(pod, ip)]
    let mut pods: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{listing}");
        assert!(
            in_cidr(f[2], &cidrs[f[1]]),
            "pod {} on {} has {} outside {}",
            f[0],
            f[1],
            f[2],
            cidrs[f[1]]
        );
        pods.entry(f[1].to_owned())
            .or_default()
            .push((f[0].to_owned(), f[2].to_owned()));
    }
    assert_eq!(pods.len(), 3, "pods on every node: {listing}");
    let name_of: BTreeMap<String, String> = pods
        .iter()
        .flat_map(|(node, list)| list.iter().map(move |(pod, _)| (pod.clone(), node.clone())))
        .collect();
    let first = |node: &str| pods[node][0].clone();

    // Pod to pod across nodes: the n1 pod asks the n2 and n3 pods their names (agnhost /dial).
    let (_, client_ip) = first("n1");
    for node in ["n2", "n3"] {
        let (pod, ip) = first(node);
        let url = format!(
            "http://{client_ip}:8080/dial?request=hostname&protocol=http&host={ip}&port=8080&tries=1"
        );
        let answer = lab.curl(&lab.node(1), &url).unwrap_or_default();
        assert!(
            answer.contains(&pod),
            "pod on n1 reaching {pod} on {node}: {answer}\n{}",
            lab.logs()
        );
    }

    // Pod to ClusterIP: backends on more than one node answer.
    let cluster_ip = lab.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let url = format!(
        "http://{client_ip}:8080/dial?request=hostname&protocol=http&host={cluster_ip}&port=80&tries=30"
    );
    let answer = lab.curl(&lab.node(1), &url).unwrap_or_default();
    let reached: BTreeSet<&String> = name_of
        .iter()
        .filter(|(pod, _)| answer.contains(pod.as_str()))
        .map(|(_, node)| node)
        .collect();
    assert!(
        reached.len() >= 2,
        "ClusterIP from a pod reached backends on {reached:?} only: {answer}"
    );

    // NodePort from outside the nodes, on every node: all requests answered, and backends on
    // other nodes among the answers (forwarded by XDP, source-translated).
    let node_port = lab.ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    for i in 1..=3u32 {
        let mut answered = BTreeSet::new();
        for _ in 0..12 {
            let body = lab
                .curl(
                    &lab.switch(),
                    &format!("http://172.30.0.{i}:{node_port}/hostname"),
                )
                .unwrap_or_else(|| panic!("NodePort on n{i} did not answer\n{}", lab.logs()));
            let node = name_of
                .get(body.trim())
                .unwrap_or_else(|| panic!("unexpected answer {body:?}"));
            answered.insert(node.clone());
        }
        assert!(
            answered.iter().any(|n| *n != format!("n{i}")),
            "NodePort on n{i} only ever answered from {answered:?}"
        );
    }

    // kubectl logs reaches another node's agent.
    let (pod_on_n3, _) = first("n3");
    let logs = lab.ok(&["logs", &pod_on_n3]);
    assert!(logs.contains("GET /"), "logs of {pod_on_n3}: {logs}");

    // A stopped agent leaves its pods running; started again, it adopts them (same container,
    // no restart).
    let (pod_on_n2, ip_on_n2) = first("n2");
    let started = |lab: &Lab| {
        lab.ok(&[
            "get",
            "pod",
            &pod_on_n2,
            "-o",
            "jsonpath={.status.containerStatuses[0].state.running.startedAt} {.status.containerStatuses[0].restartCount}",
        ])
    };
    let before = started(&lab);
    lab.node_command("stop-node", "n2");
    let answer = lab.curl(&lab.node(1), &format!("http://{ip_on_n2}:8080/hostname"));
    assert_eq!(
        answer.as_deref(),
        Some(pod_on_n2.as_str()),
        "pod on n2 while its agent is stopped"
    );
    lab.node_command("start-node", "n2");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = lab.ok(&[
            "get",
            "pod",
            &pod_on_n2,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ]);
        let log = std::fs::read_to_string(lab.data.path().join("n2/rudder.log")).unwrap();
        if ready == "True" && log.matches("joining").count() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod on n2 not Ready after the agent restart\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        started(&lab),
        before,
        "the restarted agent must adopt, not restart"
    );

    scheduling(&lab);
    drain(&lab);

    // Down removes everything.
    let pids: Vec<u32> = (1..=3)
        .filter_map(|i| {
            std::fs::read_to_string(lab.data.path().join(format!("n{i}/pid")))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(pids.len(), 3);
    let uids = lab.ok(&[
        "get",
        "pods",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.uid}{"\n"}{end}"#,
    ]);
    let out = lab.down();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids
        .iter()
        .any(|p| PathBuf::from(format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < deadline, "lab processes still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let prefix = format!("rdr-{}-", lab.name);
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(namespaces.is_empty(), "left behind: {namespaces:?}");
    let pins: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("rudder-{}-", lab.name)))
        .collect();
    assert!(pins.is_empty(), "left behind: {pins:?}");
    let cgroups = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for uid in uids.lines().filter(|u| !u.is_empty()) {
        for line in cgroups.lines().filter(|l| l.contains(" - cgroup")) {
            let mount = line.split_whitespace().nth(4).unwrap();
            let dir = PathBuf::from(mount).join("rudder").join(uid);
            assert!(!dir.exists(), "left behind: {}", dir.display());
        }
    }
}

const SCHEDULING: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: solo}
spec:
  replicas: 4
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: solo}}
            topologyKey: kubernetes.io/hostname
      containers:
      - {name: pause, image: registry.k8s.io/e2e-test-images/agnhost:2.47, args: [pause]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: zonal}
spec:
  replicas: 4
  selector: {matchLabels: {app: zonal}}
  template:
    metadata: {labels: {app: zonal}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: zonal}}
      containers:
      - {name: pause, image: registry.k8s.io/e2e-test-images/agnhost:2.47, args: [pause]}
---
apiVersion: v1
kind: Pod
metadata: {name: needs-ssd}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {disk: ssd}
  containers:
  - {name: pause, image: registry.k8s.io/e2e-test-images/agnhost:2.47, args: [pause]}
"#;

/// Scheduler plugins on three real nodes: required pod anti-affinity (one pod per node, the
/// fourth Pending with the reason), topology spread over zones (n1 and n2 in z1, n3 in z2: the
/// four pods split 2/2, so n3 gets two), and a pod that no node fits until a node is labelled
/// (retried when the cluster changes).
fn scheduling(lab: &Lab) {
    lab.ok(&[
        "label",
        "node",
        "n1",
        "n2",
        "topology.kubernetes.io/zone=z1",
    ]);
    lab.ok(&["label", "node", "n3", "topology.kubernetes.io/zone=z2"]);
    let manifest = lab.data.path().join("scheduling.yaml");
    std::fs::write(&manifest, SCHEDULING).unwrap();
    lab.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    // app -> [(node, PodScheduled message)]
    let placed = |app: &str| -> Vec<(String, String)> {
        lab.ok(&[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            r#"jsonpath={range .items[*]}{.spec.nodeName}|{.status.conditions[?(@.type=="PodScheduled")].message}{"\n"}{end}"#,
        ])
        .lines()
        .map(|l| {
            let (node, message) = l.split_once('|').unwrap_or((l, ""));
            (node.to_owned(), message.to_owned())
        })
        .collect()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}\n{}\n{}",
                lab.ok(&["get", "pods", "-o", "wide"]),
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait(
        "solo: three bound on distinct nodes, one Pending with the reason",
        &|| {
            let now = placed("solo");
            let bound: BTreeSet<&String> = now
                .iter()
                .map(|(n, _)| n)
                .filter(|n| !n.is_empty())
                .collect();
            let pending: Vec<&String> = now
                .iter()
                .filter(|(n, _)| n.is_empty())
                .map(|(_, m)| m)
                .collect();
            now.len() == 4
                && bound.len() == 3
                && pending
                    == [
                        &"0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
                            .to_owned(),
                    ]
        },
    );
    wait("zonal: two pods in each zone", &|| {
        let now = placed("zonal");
        now.len() == 4
            && now.iter().all(|(n, _)| !n.is_empty())
            && now.iter().filter(|(n, _)| n == "n3").count() == 2
    });
    let ssd = |lab: &Lab| {
        lab.ok(&[
            "get",
            "pod",
            "needs-ssd",
            "-o",
            r#"jsonpath={.spec.nodeName}|{.status.conditions[?(@.type=="PodScheduled")].message}"#,
        ])
    };
    wait("needs-ssd Pending with the reason", &|| {
        ssd(lab) == "|0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    });
    lab.ok(&["label", "node", "n2", "disk=ssd"]);
    wait("needs-ssd bound to n2 once it is labelled", &|| {
        ssd(lab).starts_with("n2|")
    });
    lab.ok(&["delete", "deployment", "solo", "zonal"]);
    lab.ok(&["delete", "pod", "needs-ssd"]);
}

const BUDGET: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
"#;

/// `kubectl drain` of the node with the most `web` pods (of six: at least two) under a budget
/// of one unavailable pod: kubectl evicts them at once, the budget lets one go and refuses the
/// others (kubectl retries every 5 s) until each replacement is Ready on another node; then the
/// node is empty, cordoned, and six pods are Ready again.
fn drain(lab: &Lab) {
    let manifest = lab.data.path().join("budget.yaml");
    std::fs::write(&manifest, BUDGET).unwrap();
    lab.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let counts = || {
        lab.ok(&[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.expectedPods}/{.status.currentHealthy}/{.status.desiredHealthy}/{.status.disruptionsAllowed}",
        ])
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts() != "6/6/5/1" {
        assert!(
            Instant::now() < deadline,
            "budget status {}\n{}",
            counts(),
            lab.ok(&["get", "pods", "-o", "wide"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let web_pods_on = |node: &str| {
        lab.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            &format!("--field-selector=spec.nodeName={node}"),
            "-o",
            "name",
        ])
        .lines()
        .count()
    };
    // Six pods on three nodes: the fullest node has at least two, so the budget must hold one
    // of its evictions back.
    let node = ["n1", "n2", "n3"]
        .into_iter()
        .max_by_key(|n| web_pods_on(n))
        .unwrap();
    assert!(
        web_pods_on(node) >= 2,
        "{}",
        lab.ok(&["get", "pods", "-o", "wide"])
    );
    let out = lab.kubectl(&["drain", node, "--ignore-daemonsets", "--timeout=180s"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains(&format!("node/{node} drained")),
        "{stdout}\n{stderr}\n{}",
        lab.logs()
    );
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "the budget must have held one eviction back:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("evicted"), "{stdout}");
    assert_eq!(web_pods_on(node), 0);
    assert_eq!(
        lab.ok(&["get", "node", node, "-o", "jsonpath={.spec.unschedulable}"]),
        "true"
    );
    lab.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    lab.ok(&["uncordon", node]);
    lab.ok(&["delete", "pdb", "web"]);
}
