//! The cluster DNS of `rudder server`, queried with the real `dig` on loopback: the records of
//! the Kubernetes DNS specification for ClusterIP, headless and ExternalName Services made with
//! unmodified kubectl, negative answers with the SOA, TCP and truncation, and answers following
//! object changes. Forwarding is off (`--dns-upstream none`): no query leaves the machine.
//!
//! Needs dig (dnsutils) and kubectl; `cargo xtask ci` runs it.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    net::UdpSocket,
    process::Command,
    time::{Duration, Instant},
};

use common::Rudder;

struct Dns {
    port: u16,
}

impl Dns {
    /// `dig` with `args`, its whole output, runs of blanks made one space.
    fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+time=2",
                "+tries=1",
            ])
            .args(args)
            .output()
            .expect("run dig (dnsutils)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The answer section's records as `name type data` (TTL and class left out), sorted.
    fn answer(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = self.dig(&["+noall", "+answer", name, rtype]);
        let mut lines: Vec<String> = out
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // name ttl class type data...
                format!("{} {} {}", f[0], f[3], f[4..].join(" "))
            })
            .collect();
        lines.sort();
        lines
    }

    fn status(&self, name: &str, rtype: &str) -> String {
        let out = self.dig(&["+noall", "+comments", name, rtype]);
        out.lines()
            .find_map(|l| l.split("status: ").nth(1))
            .map(|s| s.split(',').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no status from dig:\n{out}"))
    }
}

fn free_udp_port() -> u16 {
    loop {
        let port = common::free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: metrics, port: 9090, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: default
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: [10.244.7.10], hostname: db-0, conditions: {ready: true}}
- {addresses: [10.244.7.11], hostname: db-1, conditions: {ready: true}}
- {addresses: [10.244.7.12], hostname: db-2, conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: search, namespace: default}
spec: {type: ExternalName, externalName: www.example.com}
"#;

#[test]
#[ignore = "needs dig and kubectl 1.37; run by cargo xtask ci"]
fn cluster_dns_answers_the_specification_records_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let addr = format!("127.0.0.1:{port}");
    let server = Rudder::start(
        dir.path(),
        &[
            "--disable".into(),
            "agent,ingress".into(),
            "--dns-addr".into(),
            addr.clone(),
            "--dns-upstream".into(),
            "none".into(),
        ],
    );
    let dns = Dns { port };
    server.wait_for("DNS to answer", || {
        dns.answer("kubernetes.default.svc.cluster.local", "A")
            .len()
            == 1
    });
    server.kubectl_stdin(&["apply", "-f", "-"], OBJECTS);
    let web_ip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    server.wait_for("the objects in DNS", || {
        dns.answer("db.default.svc.cluster.local", "A").len() == 2
            && dns.answer("web.default.svc.cluster.local", "A").len() == 1
    });

    // ClusterIP: A (any case), SRV per named port with the target's address, PTR.
    assert_eq!(
        dns.answer("WEB.Default.svc.cluster.local", "A"),
        [format!("web.default.svc.cluster.local. A {web_ip}")]
    );
    let srv = dns.dig(&[
        "+noall",
        "+answer",
        "+additional",
        "_http._tcp.web.default.svc.cluster.local",
        "SRV",
    ]);
    assert!(
        srv.contains("SRV 0 100 80 web.default.svc.cluster.local.")
            && srv.contains(&format!("web.default.svc.cluster.local. 30 IN A {web_ip}")),
        "{srv}"
    );
    assert_eq!(
        dns.answer("_metrics._udp.web.default.svc.cluster.local", "SRV"),
        [
            "_metrics._udp.web.default.svc.cluster.local. SRV 0 100 9090 web.default.svc.cluster.local."
        ]
    );
    let octets: Vec<&str> = web_ip.split('.').rev().collect();
    assert_eq!(
        dns.answer(&format!("{}.in-addr.arpa", octets.join(".")), "PTR"),
        [format!(
            "{}.in-addr.arpa. PTR web.default.svc.cluster.local.",
            octets.join(".")
        )]
    );

    // Headless: ready endpoints only, by hostname, SRV N×M.
    assert_eq!(
        dns.answer("db.default.svc.cluster.local", "A"),
        [
            "db.default.svc.cluster.local. A 10.244.7.10",
            "db.default.svc.cluster.local. A 10.244.7.11"
        ]
    );
    assert_eq!(
        dns.answer("db-1.db.default.svc.cluster.local", "A"),
        ["db-1.db.default.svc.cluster.local. A 10.244.7.11"]
    );
    assert_eq!(
        dns.status("db-2.db.default.svc.cluster.local", "A"),
        "NXDOMAIN"
    );
    assert_eq!(
        dns.answer("_pg._tcp.db.default.svc.cluster.local", "SRV"),
        [
            "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 db-0.db.default.svc.cluster.local.",
            "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 db-1.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        dns.answer("11.7.244.10.in-addr.arpa", "PTR"),
        ["11.7.244.10.in-addr.arpa. PTR db-1.db.default.svc.cluster.local."]
    );

    // ExternalName, the version record.
    assert_eq!(
        dns.answer("search.default.svc.cluster.local", "A"),
        ["search.default.svc.cluster.local. CNAME www.example.com."]
    );
    assert_eq!(
        dns.answer("dns-version.cluster.local", "TXT"),
        ["dns-version.cluster.local. TXT \"1.1.0\""]
    );

    // Negative answers carry the SOA (TTL 5 s, the negative TTL), authoritative.
    let nx = dns.dig(&[
        "+noall",
        "+comments",
        "+authority",
        "nope.default.svc.cluster.local",
        "A",
    ]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("flags: qr aa"),
        "{nx}"
    );
    assert!(
        nx.contains("cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local."),
        "{nx}"
    );
    let nodata = dns.dig(&[
        "+noall",
        "+comments",
        "+authority",
        "web.default.svc.cluster.local",
        "AAAA",
    ]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    assert!(nodata.contains("IN SOA ns.dns.cluster.local."), "{nodata}");
    assert_eq!(dns.status("default.svc.cluster.local", "A"), "NOERROR");
    assert_eq!(dns.status("nosuchns.svc.cluster.local", "A"), "NXDOMAIN");
    // Not ours, and forwarding is off.
    assert_eq!(dns.status("example.com", "A"), "REFUSED");

    // TCP, and truncation: 40 endpoints do not fit a 512-byte UDP answer.
    let endpoints: Vec<String> = (1..=40)
        .map(|i| format!("- {{addresses: [10.244.8.{i}], conditions: {{ready: true}}}}"))
        .collect();
    server.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: default}}\nspec: {{clusterIP: None}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-1, namespace: default, labels: {{kubernetes.io/service-name: big}}}}\naddressType: IPv4\nendpoints:\n{}\n",
            endpoints.join("\n")
        ),
    );
    server.wait_for("the big Service", || {
        dns.dig(&[
            "+tcp",
            "+noall",
            "+answer",
            "big.default.svc.cluster.local",
            "A",
        ])
        .lines()
        .count()
            == 40
    });
    let udp = dns.dig(&[
        "+noedns",
        "+ignore",
        "+noall",
        "+comments",
        "big.default.svc.cluster.local",
        "A",
    ]);
    assert!(udp.contains("flags: qr aa tc"), "{udp}");

    // One port number over UDP and TCP (as kube-dns), applied server-side twice: two ports.
    let twin = "apiVersion: v1\nkind: Service\nmetadata: {name: twin, namespace: default}\nspec:\n  ports:\n  - {name: dns, port: 53, protocol: UDP}\n  - {name: dns-tcp, port: 53, protocol: TCP}\n";
    for _ in 0..2 {
        let out = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], twin);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.wait_for("twin's SRV records", || {
        dns.answer("_dns._udp.twin.default.svc.cluster.local", "SRV")
            .len()
            == 1
            && dns
                .answer("_dns-tcp._tcp.twin.default.svc.cluster.local", "SRV")
                .len()
                == 1
    });

    // Changes show within a watch event: a new Service, then its deletion.
    let started = Instant::now();
    server.ok(&["create", "service", "clusterip", "late", "--tcp=80:8080"]);
    while dns.answer("late.default.svc.cluster.local", "A").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "late never resolved"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "a new Service resolved {:?} after kubectl create",
        started.elapsed()
    );
    server.ok(&["delete", "service", "web"]);
    server.wait_for("web to go", || {
        dns.status("web.default.svc.cluster.local", "A") == "NXDOMAIN"
    });
    server.ok(&["delete", "endpointslice", "db-1"]);
    server.wait_for("db's endpoints to go", || {
        dns.status("db.default.svc.cluster.local", "A") == "NXDOMAIN"
    });
}

#[test]
#[ignore = "needs root, BPF, iproute2, dig and kubectl 1.37; run by cargo xtask ci"]
fn pods_resolve_short_names_through_the_kube_dns_service() {
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    // Node slot 1's ranges (see common/node.rs): DNS listens on the pod bridge's address, the
    // kube-dns Service (the 10th service address) sends pods' queries there.
    let octet = ((pid % 60) * 4 + 2) % 240;
    let dns_addr = format!("10.252.{octet}.1:53");
    let metrics_port = common::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let node = common::node::Node::start(
        dir.path(),
        1,
        &[
            "--dns-addr",
            &dns_addr,
            "--dns-upstream",
            "none",
            "--dns-metrics-addr",
            &metrics,
        ],
    );
    let server = &node.server;
    let kube_dns = server.ok(&[
        "-n",
        "kube-system",
        "get",
        "svc",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(kube_dns, format!("10.253.{octet}.10"));
    server.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let web_ip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    server.ok(&[
        "run",
        "client",
        "--image=registry.k8s.io/e2e-test-images/agnhost:2.47",
        "--",
        "netexec",
        "--http-port=8080",
    ]);
    server.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=60s",
    ]);
    let resolv = server.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {kube_dns}")),
        "{resolv}"
    );

    // Short names through the search list (ndots:5), via the Service address.
    for name in [
        "web",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
    ] {
        let out = server.ok(&["exec", "client", "--", "getent", "hosts", name]);
        assert!(out.starts_with(&format!("{web_ip} ")), "{name}: {out}");
    }
    // Another namespace's Service by `<svc>.<ns>`: the server expands the search path, so the
    // pod's first query already gets the answer (a CNAME to the real name).
    let dig = server.ok(&[
        "exec",
        "client",
        "--",
        "dig",
        "+noall",
        "+answer",
        "kubernetes.default.default.svc.cluster.local",
    ]);
    assert!(
        dig.contains("CNAME") && dig.contains("kubernetes.default.svc.cluster.local."),
        "{dig}"
    );
    let text = rudder_node::lab::http_get("127.0.0.1", metrics_port, "/metrics").unwrap();
    let expanded: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("rudder_dns_autopath_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(expanded >= 1, "{text}");

    // From the node itself, through the Service address too.
    let out = Command::new("dig")
        .args([
            &format!("@{kube_dns}"),
            "+short",
            "+time=2",
            "+tries=2",
            "web.default.svc.cluster.local",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), web_ip);
}
