//! The ingress of `rudder server`, end to end: unmodified kubectl creates Services,
//! EndpointSlices and Ingresses; HTTP requests over loopback go through rudder's pingora proxy to
//! backends the test runs on loopback (each answers with its name and the headers it got).
//!
//! - the server publishes the IngressClass `rudder` (controller rudder.dev/ingress), marked
//!   default, so an Ingress without a class is served;
//! - hosts, Exact and Prefix paths and the defaultBackend (also for unknown hosts) route to the
//!   right backend;
//! - requests spread over the ready endpoints, and follow the EndpointSlice within a second
//!   (an endpoint removed gets no more requests; none ready: 503 saying so);
//! - an endpoint that refuses connections is skipped (the request is retried on another);
//! - `X-Forwarded-For` gets the client appended, `X-Forwarded-Proto` and `X-Forwarded-Host` are
//!   set;
//! - HTTPS: the `kubernetes.io/tls` Secret's certificate is served for its host (SNI, checked by
//!   curl against that certificate), plain HTTP to the host is redirected with 308, another name
//!   gets the ingress's own certificate;
//! - the `proxy-body-size` annotation limits request bodies (413);
//! - `/metrics` counts the requests by status code, the upstream connections refused and the
//!   routes;
//! - deleting the Ingress brings the 404 back.
//!
//! Needs kubectl (`cargo xtask ci`). Traffic stays on 127.0.0.1.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use common::Rudder;

/// A backend on loopback answering every request with `<name> <path> xff=<X-Forwarded-For>
/// proto=<X-Forwarded-Proto> host=<X-Forwarded-Host>`. Runs until the test process ends.
fn backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(name, stream));
        }
    });
    port
}

/// Serves requests on one connection (keep-alive) until the client closes it.
fn serve(name: &str, stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let get = |k: &str| headers.get(k).cloned().unwrap_or_default();
        let mut body = format!(
            "{name} {path} xff={} proto={} host={}",
            get("x-forwarded-for"),
            get("x-forwarded-proto"),
            get("x-forwarded-host")
        );
        if let Some(from) = headers.get("x-from") {
            body.push_str(&format!(" from={from}"));
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A free address on loopback.
fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

/// `rudder server` without agent and DNS, its ingress on a free loopback port (returned), HTTPS
/// and metrics where given.
fn start(
    dir: &std::path::Path,
    https: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> (Rudder, SocketAddr) {
    let ingress = loopback();
    let mut args: Vec<String> = vec![
        "--disable".into(),
        "agent,dns".into(),
        "--ingress-http-addr".into(),
        ingress.to_string(),
        "--ingress-https-addr".into(),
        https.map_or_else(|| "none".to_owned(), |a| a.to_string()),
    ];
    if let Some(metrics) = metrics {
        args.extend(["--ingress-metrics-addr".into(), metrics.to_string()]);
    }
    (Rudder::start(&dir.join("data"), &args), ingress)
}

/// Sends one request (`Connection: close`) through the ingress: the status and the body.
fn request(ingress: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(ingress).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{head}Connection: close\r\n\r\n{body}").unwrap();
    let mut response = String::new();
    // The proxy may answer (413) and close before reading the whole body.
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// GET `path` with `Host: host` (and extra headers) through the ingress: status and body.
fn get(ingress: SocketAddr, host: &str, path: &str, extra: &str) -> (u16, String) {
    request(
        ingress,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"),
        "",
    )
}

/// POST a body of `size` bytes to `path` through the ingress: the status.
fn post(ingress: SocketAddr, host: &str, path: &str, size: usize) -> u16 {
    let head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n");
    request(ingress, &head, &"x".repeat(size)).0
}

/// An EndpointSlice of `service` with one ready endpoint, 127.0.0.1:`port` (the backends all
/// listen on loopback, so each gets a slice of its own: a slice has one set of ports).
fn slice(name: &str, service: &str, port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n"
    )
}

#[test]
#[ignore = "needs kubectl 1.37; run by cargo xtask ci"]
fn ingresses_route_to_ready_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (https, metrics) = (loopback(), loopback());
    let (server, ingress) = start(dir.path(), Some(https), Some(metrics));
    server.wait_for("the rudder IngressClass", || {
        server
            .kubectl(&[
                "get",
                "ingressclass",
                "rudder",
                "-o",
                "jsonpath={.spec.controller} {.metadata.annotations.ingressclass\\.kubernetes\\.io/is-default-class}",
            ])
            .stdout
            == b"rudder.dev/ingress true"
    });

    let (web_a, web_b, api, fallback) = (
        backend("web-a"),
        backend("web-b"),
        backend("api"),
        backend("fallback"),
    );
    // A port nothing listens on: an endpoint that refuses connections.
    let dead = common::free_port();
    let objects = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: api}}
spec: {{ports: [{{name: http, port: 9000}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: fallback}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
{}---
{}---
{}---
{}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: site}}
spec:
  defaultBackend: {{service: {{name: fallback, port: {{number: 80}}}}}}
  rules:
  - host: www.example.test
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: http}}}}}}}}
      - {{path: /api, pathType: Prefix, backend: {{service: {{name: api, port: {{number: 9000}}}}}}}}
      - {{path: /api/exact, pathType: Exact, backend: {{service: {{name: fallback, port: {{number: 80}}}}}}}}
  - host: api.example.test
    http:
      paths:
      - {{path: /v1, pathType: Exact, backend: {{service: {{name: api, port: {{number: 9000}}}}}}}}
"#,
        slice("web-a", "web", web_a),
        slice("web-b", "web", web_b),
        slice("api", "api", api),
        slice("fallback", "fallback", fallback),
    );
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &objects);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("the Ingress to be served", || {
        get(ingress, "www.example.test", "/", "").0 == 200
    });
    // The address is published in the Ingress's status (kubectl's ADDRESS column).
    server.wait_for("the Ingress's load balancer address", || {
        server
            .kubectl(&[
                "get",
                "ingress",
                "site",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])
            .stdout
            == b"127.0.0.1"
    });

    // Hosts, paths, precedence, the default backend and the 404 page.
    let name = |host: &str, path: &str| {
        let (status, body) = get(ingress, host, path, "");
        format!(
            "{status} {}",
            body.split_whitespace().next().unwrap_or_default()
        )
    };
    assert_eq!(name("www.example.test", "/api/users"), "200 api");
    assert_eq!(name("WWW.example.test:80", "/api"), "200 api");
    assert!(name("www.example.test", "/apis").starts_with("200 web-"));
    assert_eq!(name("www.example.test", "/api/exact"), "200 fallback");
    assert_eq!(name("api.example.test", "/v1"), "200 api");
    assert_eq!(name("api.example.test", "/v2"), "200 fallback");
    // The default backend serves unknown hosts too.
    assert_eq!(name("nobody.example.test", "/"), "200 fallback");

    // Both web endpoints get requests.
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let (_, body) = get(ingress, "www.example.test", "/", "");
        *seen
            .entry(
                body.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["web-a", "web-b"],
        "{seen:?}"
    );

    // Forwarding headers.
    let (_, body) = get(
        ingress,
        "www.example.test",
        "/",
        "X-Forwarded-For: 192.0.2.7\r\n",
    );
    assert!(
        body.ends_with("xff=192.0.2.7, 127.0.0.1 proto=http host=www.example.test"),
        "{body}"
    );

    // An ingress-nginx annotation: request bodies over the limit get 413.
    server.ok(&[
        "annotate",
        "ingress",
        "site",
        "nginx.ingress.kubernetes.io/proxy-body-size=16",
    ]);
    server.wait_for("the body limit", || {
        post(ingress, "www.example.test", "/upload", 32) == 413
    });
    assert_eq!(post(ingress, "www.example.test", "/upload", 8), 200);

    // HTTPS: the Secret's certificate for its host (by SNI), HTTP redirected there with 308;
    // another name gets the ingress's own certificate.
    // Self-signed and marked a CA, so curl can take it as its own trust anchor.
    let mut params = rcgen::CertificateParams::new(vec!["secure.example.test".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let signing_key = rcgen::KeyPair::generate().unwrap();
    let certified = params.self_signed(&signing_key).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, certified.pem()).unwrap();
    std::fs::write(&key, signing_key.serialize_pem()).unwrap();
    server.ok(&[
        "create",
        "secret",
        "tls",
        "secure-tls",
        &format!("--cert={}", cert.display()),
        &format!("--key={}", key.display()),
    ]);
    let secure = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure}
spec:
  tls: [{hosts: [secure.example.test], secretName: secure-tls}]
  rules:
  - host: secure.example.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"#;
    let out = server.kubectl_stdin(&["apply", "-f", "-"], secure);
    assert!(out.status.success(), "{out:?}");
    let curl = |host: &str, extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("{host}:{}:127.0.0.1", https.port()))
            .args(extra)
            .arg(format!("https://{host}:{}/tls", https.port()))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cacert = cert.display().to_string();
    // Until the table has the Secret; curl's error says why when it never does.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, _, why) = curl("secure.example.test", &["--cacert", &cacert]);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTPS with the Secret's certificate: {why}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, body, _) = curl("secure.example.test", &["--cacert", &cacert]);
    assert!(
        body.starts_with("web-") && body.contains("proto=https host=secure.example.test"),
        "{body}"
    );
    let mut plain = TcpStream::connect(ingress).unwrap();
    write!(
        plain,
        "GET /a?b=c HTTP/1.1\r\nHost: secure.example.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    plain.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 308")
            && response
                .to_ascii_lowercase()
                .contains("location: https://secure.example.test/a?b=c"),
        "{response}"
    );
    let (verified, _, why) = curl("other.example.test", &["--cacert", &cacert]);
    assert!(
        !verified,
        "another name must not get secure.example.test's certificate"
    );
    assert!(why.contains("SSL") || why.contains("certificate"), "{why}");
    let (ok, body, why) = curl("other.example.test", &["-k"]);
    assert!(ok && body.starts_with("fallback"), "{body} {why}");
    server.ok(&["delete", "ingress", "secure"]);

    // An endpoint that refuses connections is skipped: every request still succeeds.
    let gauge = |name: &str| -> usize {
        get(metrics, "metrics", "/metrics", "")
            .1
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &slice("web-dead", "web", dead));
    assert!(out.status.success(), "{out:?}");
    // Requests keep succeeding while the refusing endpoint comes into the table, is tried and
    // skipped (the failure counter says it was tried).
    server.wait_for("the refusing endpoint to be tried", || {
        let (status, body) = get(ingress, "www.example.test", "/", "");
        assert_eq!(status, 200, "{body}");
        gauge("rudder_ingress_upstream_connect_failures_total ") > 0
    });
    for _ in 0..12 {
        let (status, body) = get(ingress, "www.example.test", "/", "");
        assert_eq!(status, 200, "{body}");
    }

    // The spread follows the slices within a second: web-a's slice goes, web-a gets nothing.
    server.ok(&["delete", "endpointslice", "web-a", "web-dead"]);
    let started = Instant::now();
    server.wait_for("web-a to leave", || {
        (0..6).all(|_| {
            get(ingress, "www.example.test", "/", "")
                .1
                .starts_with("web-b")
        })
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // None ready: 503 saying so.
    server.ok(&["delete", "endpointslice", "web-b"]);
    server.wait_for("503 without endpoints", || {
        get(ingress, "www.example.test", "/", "").0 == 503
    });
    let (_, body) = get(ingress, "www.example.test", "/", "");
    assert!(
        body.contains("no ready endpoint for default/web:http"),
        "{body}"
    );

    // The metrics counted all of it.
    let (status, text) = get(metrics, "metrics", "/metrics", "");
    assert_eq!(status, 200, "{text}");
    for wanted in [
        "rudder_ingress_requests_total{code=\"200\"}",
        "rudder_ingress_requests_total{code=\"308\"} 1\n",
        "rudder_ingress_requests_total{code=\"503\"}",
        "rudder_ingress_request_duration_seconds_bucket{le=\"+Inf\"}",
        "rudder_ingress_routes ",
    ] {
        assert!(text.contains(wanted), "{wanted} in\n{text}");
    }
    assert!(
        !text.contains("rudder_ingress_upstream_connect_failures_total 0\n"),
        "the refused endpoint was counted:\n{text}"
    );

    // Deleting the Ingress: 404.
    server.ok(&["delete", "ingress", "site"]);
    server.wait_for("404 once the Ingress is gone", || {
        get(ingress, "www.example.test", "/", "").0 == 404
    });
    let (_, body) = get(ingress, "www.example.test", "/", "");
    assert!(body.contains("no Ingress rule matches"), "{body}");
}

/// Gateway API: the GatewayClass `rudder` is published once the CRDs are installed; a Gateway
/// whose HTTP listener is on the ingress's port gets its routes served and its status written;
/// an HTTPRoute with weights 80/20 splits requests so, header matches win over the plain path,
/// redirects, rewrites and header filters apply, a missing backend answers 500 and is reported,
/// and deleting the route brings the 404 back.
#[test]
#[ignore = "needs kubectl 1.37; run by cargo xtask ci"]
fn gateway_api_routes_split_by_weight() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ingress) = start(dir.path(), None, None);
    let crds = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gateway-api-crds.yaml"
    );
    server.ok(&["apply", "-f", crds]);
    server.wait_for("the GatewayClass rudder", || {
        server
            .kubectl(&["get", "gatewayclass", "rudder", "-o", "jsonpath={.spec.controllerName} {.status.conditions[0].type}={.status.conditions[0].status}"])
            .stdout
            == b"rudder.dev/gateway Accepted=True"
    });
    let (v1, v2) = (backend("app-v1"), backend("app-v2"));
    let objects = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: app-v1}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: app-v2}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
{}---
{}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web}}
spec:
  gatewayClassName: rudder
  listeners:
  - {{name: http, protocol: HTTP, port: {port}, hostname: "*.example.test"}}
  - {{name: elsewhere, protocol: HTTP, port: 1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [app.example.test]
  rules:
  - backendRefs: [{{name: app-v1, port: 80, weight: 80}}, {{name: app-v2, port: 80, weight: 20}}]
  - matches: [{{headers: [{{name: x-canary, value: "yes"}}]}}]
    backendRefs: [{{name: app-v2, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /old}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /new}}, statusCode: 301}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    filters:
    - {{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}}}
    - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-from, value: gateway}}]}}}}
    backendRefs: [{{name: app-v1, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /broken}}}}]
    backendRefs: [{{name: nothing-here, port: 80}}]
"#,
        slice("app-v1", "app-v1", v1),
        slice("app-v2", "app-v2", v2),
        port = ingress.port(),
    );
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &objects);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("the HTTPRoute to be served", || {
        get(ingress, "app.example.test", "/", "").0 == 200
    });

    // 80/20 over 1,000 requests, within a few percent (the schedule makes it exact).
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..1000 {
        let (status, body) = get(ingress, "app.example.test", "/", "");
        assert_eq!(status, 200, "{body}");
        let name = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *seen.entry(name).or_insert(0) += 1;
    }
    let v1_share = seen.get("app-v1").copied().unwrap_or(0);
    assert!((770..=830).contains(&v1_share), "{seen:?}");
    assert_eq!(
        v1_share + seen.get("app-v2").copied().unwrap_or(0),
        1000,
        "{seen:?}"
    );

    // A header match outranks the plain path; a redirect; a rewrite with a header set.
    for _ in 0..5 {
        let (_, body) = get(ingress, "app.example.test", "/", "X-Canary: yes\r\n");
        assert!(body.starts_with("app-v2 "), "{body}");
    }
    let mut stream = TcpStream::connect(ingress).unwrap();
    write!(
        stream,
        "GET /old?x=1 HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let location = format!(
        "location: http://app.example.test:{}/new?x=1",
        ingress.port()
    );
    assert!(
        response.starts_with("HTTP/1.1 301") && response.to_ascii_lowercase().contains(&location),
        "{response}"
    );
    let (_, body) = get(ingress, "app.example.test", "/api/users?id=7", "");
    assert!(
        body.starts_with("app-v1 /v2/users?id=7 ") && body.ends_with(" from=gateway"),
        "{body}"
    );
    // Dot segments are resolved before the rewrite: `..` cannot walk out of it.
    let (_, body) = get(ingress, "app.example.test", "/api/../api/users", "");
    assert!(body.starts_with("app-v1 /v2/users "), "{body}");
    let (status, body) = get(ingress, "app.example.test", "/broken", "");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("default/nothing-here"), "{body}");
    // Other hosts are not the route's.
    assert_eq!(get(ingress, "www.example.test", "/", "").0, 404);

    // Statuses: the Gateway is programmed with its address, one listener refused (its port is
    // not the ingress's), one route attached; the route accepted with its missing backend
    // reported.
    let jsonpath = |kind: &str, name: &str, path: &str| {
        String::from_utf8_lossy(
            &server
                .kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")])
                .stdout,
        )
        .into_owned()
    };
    server.wait_for("the Gateway's status", || {
        jsonpath(
            "gateway",
            "web",
            r#"{.status.conditions[?(@.type=="Programmed")].status}"#,
        ) == "True"
    });
    assert_eq!(
        jsonpath("gateway", "web", "{.status.addresses[0].value}"),
        "127.0.0.1"
    );
    assert_eq!(
        jsonpath(
            "gateway",
            "web",
            "{.status.listeners[0].attachedRoutes} {.status.listeners[1].conditions[0].reason}"
        ),
        "1 PortUnavailable"
    );
    server.wait_for("the HTTPRoute's status", || {
        jsonpath(
            "httproute",
            "split",
            "{.status.parents[0].controllerName} {.status.parents[0].conditions[0].status} {.status.parents[0].conditions[1].reason}",
        ) == "rudder.dev/gateway True BackendNotFound"
    });
    let out = server.kubectl(&["get", "gateway", "web"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("rudder") && table.contains("127.0.0.1") && table.contains("True"),
        "{table}"
    );

    server.ok(&["delete", "httproute", "split"]);
    server.wait_for("the 404 to come back", || {
        get(ingress, "app.example.test", "/", "").0 == 404
    });
}

/// A backend that accepts a WebSocket upgrade (101) and then echoes whatever it gets.
fn websocket_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut upgrade = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.to_ascii_lowercase().starts_with("upgrade: websocket") {
                        upgrade = true;
                    }
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                if !upgrade {
                    let _ =
                        writer.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
                let _ = writer.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
                let mut buf = [0u8; 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if writer.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// ingress-nginx's canary, rewrite-target, limit-rps and upstream-hash-by annotations, and a
/// WebSocket upgrade through the ingress.
#[test]
#[ignore = "needs kubectl 1.37; run by cargo xtask ci"]
fn ingress_nginx_annotations_and_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ingress) = start(dir.path(), None, None);
    let (main, canary, api, hash_a, hash_b, ws) = (
        backend("main"),
        backend("canary"),
        backend("api"),
        backend("hash-a"),
        backend("hash-b"),
        websocket_backend(),
    );
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n"
        )
    };
    let ingress_of = |name: &str, host: &str, path: &str, svc: &str, annotations: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\nspec:\n  rules:\n  - host: {host}\n    http:\n      paths:\n      - {{path: \"{path}\", pathType: ImplementationSpecific, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n---\n"
        )
    };
    let mut objects = String::new();
    for name in ["main", "canary", "api", "hashed", "ws"] {
        objects.push_str(&service(name));
    }
    for (slice_name, svc, port) in [
        ("main", "main", main),
        ("canary", "canary", canary),
        ("api", "api", api),
        ("hash-a", "hashed", hash_a),
        ("hash-b", "hashed", hash_b),
        ("ws", "ws", ws),
    ] {
        objects.push_str(&slice(slice_name, svc, port));
        objects.push_str("---\n");
    }
    objects.push_str(&ingress_of("shop", "shop.test", "/", "main", ""));
    objects.push_str(&ingress_of(
        "shop-canary",
        "shop.test",
        "/",
        "canary",
        "nginx.ingress.kubernetes.io/canary: \"true\", nginx.ingress.kubernetes.io/canary-by-header: X-Canary, nginx.ingress.kubernetes.io/canary-weight: \"30\"",
    ));
    objects.push_str(&ingress_of(
        "rewrite",
        "rw.test",
        "/something(/|$)(.*)",
        "api",
        "nginx.ingress.kubernetes.io/rewrite-target: /$2",
    ));
    objects.push_str(&ingress_of(
        "limited",
        "slow.test",
        "/",
        "api",
        "nginx.ingress.kubernetes.io/limit-rps: \"1\", nginx.ingress.kubernetes.io/limit-burst-multiplier: \"2\"",
    ));
    objects.push_str(&ingress_of(
        "hashed",
        "hash.test",
        "/",
        "hashed",
        "nginx.ingress.kubernetes.io/upstream-hash-by: $http_x_user",
    ));
    objects.push_str(&ingress_of("ws", "ws.test", "/", "ws", ""));
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &objects);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("the Ingresses to be served", || {
        get(ingress, "hash.test", "/", "").0 == 200
            && get(ingress, "rw.test", "/something", "").0 == 200
            && get(ingress, "shop.test", "/", "").0 == 200
    });
    let name = |host: &str, path: &str, extra: &str| {
        get(ingress, host, path, extra)
            .1
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };

    // Canary: the header decides first, else 30 of every 100 requests.
    for _ in 0..5 {
        assert_eq!(name("shop.test", "/", "X-Canary: always\r\n"), "canary");
        assert_eq!(name("shop.test", "/", "X-Canary: never\r\n"), "main");
    }
    let to_canary = (0..100)
        .filter(|_| name("shop.test", "/", "") == "canary")
        .count();
    assert!(
        (25..=35).contains(&to_canary),
        "{to_canary} of 100 to the canary"
    );

    // rewrite-target: the captures make the upstream path; the query is kept.
    let (status, body) = get(ingress, "rw.test", "/Something/users?id=1", "");
    assert!(
        status == 200 && body.starts_with("api /users?id=1 "),
        "{status} {body}"
    );

    // upstream-hash-by: one user always on one endpoint; users spread over both.
    let alice = name("hash.test", "/", "X-User: alice\r\n");
    for _ in 0..10 {
        assert_eq!(name("hash.test", "/", "X-User: alice\r\n"), alice);
    }
    let spread: std::collections::BTreeSet<String> = (0..20)
        .map(|i| name("hash.test", "/", &format!("X-User: user{i}\r\n")))
        .collect();
    assert_eq!(spread.len(), 2, "{spread:?}");

    // limit-rps 1 with a burst of 2: the first two pass, the rest of a quick run get 503.
    let statuses: Vec<u16> = (0..20)
        .map(|_| get(ingress, "slow.test", "/", "").0)
        .collect();
    assert_eq!(&statuses[..2], [200, 200], "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");

    // WebSocket: the upgrade goes through, then bytes flow both ways.
    let mut stream = TcpStream::connect(ingress).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 101"), "{status_line}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
    }
    for message in ["hello", "over the upgrade"] {
        stream.write_all(message.as_bytes()).unwrap();
        let mut echoed = vec![0u8; message.len()];
        reader.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
}
