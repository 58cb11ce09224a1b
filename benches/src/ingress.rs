//! `cargo xtask bench ingress`: wrk through rudder's ingress and through nginx (Debian's
//! nginx-light), configured for the same routes and backends, in the same run.
//!
//! Set-up, everything on loopback:
//! - backends: [`BACKENDS`] minimal HTTP/1.1 keep-alive servers in this process (one tokio
//!   thread), answering every request with a fixed 13-byte body and counting the connections
//!   they accept and the requests they answer;
//! - routes: `--routes` (1,000 by default) Services, each with an EndpointSlice of the backends,
//!   and an Ingress per Service with the host `route-<i>.bench.test`, created through a fresh
//!   `rudder server`;
//! - `rudder` is `rudder ingress --kubeconfig … --ingress-threads 1` following that server;
//!   `nginx` is nginx-light with one worker, a `server` block per route and an `upstream` per
//!   route with the same backends and `keepalive 64` (what ingress-nginx generates: HTTP/1.1 to
//!   the upstream, `Connection ""`, the forwarding headers); access logs off in both.
//!
//! Each proxy runs pinned to CPU 1 (`taskset -c 1`), wrk and the backends to CPU 0. Per subject
//! and connection count (16, 256): a 2 s warm-up, then `wrk -t2 -c<n> -d<secs>s --latency`
//! against `route-<routes/2>.bench.test`. Metrics:
//! - `rps`, `latency_p50_ms`, `latency_p99_ms` (wrk's);
//! - `server_cpu_cores` (the proxy's CPU time over the run / its length) and
//!   `cpu_us_per_request`;
//! - `upstream_reuse_ratio`: 1 − connections the backends accepted / requests they answered,
//!   over the run;
//! - `rss_bytes` of the proxy once it routes every host, and after the runs
//!   (`rss_after_bytes`), case `routes`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice, networking::v1::Ingress};
use kube::{Api, Client, api::PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    control::{self, rss_bytes},
    dns::{Daemon, cpu_seconds},
    results::Results,
};

/// How many backends every route has.
pub const BACKENDS: usize = 4;

/// The subjects.
pub const SUBJECTS: [&str; 2] = ["rudder", "nginx"];

/// Debian's nginx-light binary.
const NGINX: &str = "/usr/sbin/nginx";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Routes (Ingresses, Services) in the table.
    pub routes: usize,
    /// wrk connection counts.
    pub connections: Vec<usize>,
    /// Seconds per wrk run.
    pub seconds: u64,
    /// Subjects to measure.
    pub subjects: Vec<String>,
}

impl Options {
    /// 1,000 routes, 16 and 256 connections, 15 s runs.
    pub fn full() -> Options {
        Options {
            routes: 1000,
            connections: vec![16, 256],
            seconds: 15,
            subjects: SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// 100 routes, 16 connections, 5 s runs.
    pub fn quick() -> Options {
        Options {
            routes: 100,
            connections: vec![16],
            seconds: 5,
            ..Options::full()
        }
    }
}

/// What the backends have seen.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
}

impl Counters {
    fn read(&self) -> (u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

/// Serves one keep-alive connection: every request (a head ending in a blank line; bodies are
/// not expected) gets `hello, world\n`.
async fn backend_connection(mut stream: tokio::net::TcpStream, counters: Arc<Counters>) {
    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\ncontent-type: text/plain\r\n\r\nhello, world\n";
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16384];
    let mut filled = 0;
    loop {
        let n = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            start += end + 4;
            out.extend_from_slice(RESPONSE);
            counters.requests.fetch_add(1, Ordering::Relaxed);
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return;
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Starts the backends on a runtime thread of their own, pinned to CPU 0.
fn start_backends(counters: Arc<Counters>) -> Result<Vec<SocketAddr>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("backends".into())
        .spawn(move || {
            // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut addrs = Vec::new();
                for _ in 0..BACKENDS {
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    };
                    if let Ok(addr) = listener.local_addr() {
                        addrs.push(addr);
                    }
                    let counters = Arc::clone(&counters);
                    tokio::spawn(async move {
                        while let Ok((stream, _)) = listener.accept().await {
                            counters.connections.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(backend_connection(stream, Arc::clone(&counters)));
                        }
                    });
                }
                let _ = tx.send(Ok(addrs));
                std::future::pending::<()>().await;
            });
        })?;
    rx.recv().context("the backends did not start")?
}

fn host(i: usize) -> String {
    format!("route-{i}.bench.test")
}

/// The Services, EndpointSlices and Ingresses of `routes` routes, 64 requests in flight.
async fn create_routes(client: &Client, routes: usize, backends: &[SocketAddr]) -> Result<()> {
    futures::stream::iter((0..routes).map(|i| {
        let client = client.clone();
        async move {
            let name = format!("route-{i}");
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80}]},
            }))?;
            Api::<Service>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &svc)
                .await
                .with_context(|| format!("creating Service {name}"))?;
            // Every backend listens on its own port: a slice per backend (a slice has one set
            // of ports).
            for (b, addr) in backends.iter().enumerate() {
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-{b}"), "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": addr.port()}],
                    "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}],
                }))?;
                Api::<EndpointSlice>::namespaced(client.clone(), "default")
                    .create(&PostParams::default(), &slice)
                    .await
                    .with_context(|| format!("creating EndpointSlice {name}-{b}"))?;
            }
            let ingress: Ingress = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ingressClassName": "rudder", "rules": [{"host": host(i), "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": name, "port": {"name": "http"}}}}]}}]},
            }))?;
            Api::<Ingress>::namespaced(client, "default")
                .create(&PostParams::default(), &ingress)
                .await
                .with_context(|| format!("creating Ingress {name}"))?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(64)
    .try_collect::<Vec<()>>()
    .await?;
    // The class the Ingresses name.
    let class: k8s_openapi::api::networking::v1::IngressClass = serde_json::from_value(json!({
        "metadata": {"name": "rudder"}, "spec": {"controller": "rudder.dev/ingress"},
    }))?;
    match Api::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// nginx's configuration for the same routes: one worker, a server and an upstream per route.
fn nginx_conf(dir: &Path, port: u16, routes: usize, backends: &[SocketAddr]) -> String {
    let d = dir.display();
    let mut conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server_names_hash_bucket_size 128;\n  server_names_hash_max_size 8192;\n\
         keepalive_requests 100000;\n"
    );
    let servers: String = backends.iter().map(|b| format!("server {b}; ")).collect();
    for i in 0..routes {
        let _ = write!(
            conf,
            "  upstream route{i} {{ {servers}keepalive 64; keepalive_requests 100000; }}\n\
             server {{ listen 127.0.0.1:{port}; server_name {}; location / {{ proxy_pass http://route{i}; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Real-IP $remote_addr; \
             proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; }} }}\n",
            host(i)
        );
    }
    conf.push_str("}\n");
    conf
}

/// One GET through the proxy on `port` for `host`: the status.
async fn status_of(port: u16, host: &str) -> Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

/// Waits until the proxy routes the first and the last route.
async fn wait_routed(daemon: &mut Daemon, port: u16, routes: usize) -> Result<Duration> {
    let started = Instant::now();
    loop {
        daemon.check_alive()?;
        let first = status_of(port, &host(0)).await.unwrap_or(0);
        let last = status_of(port, &host(routes - 1)).await.unwrap_or(0);
        if first == 200 && last == 200 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "{} did not route every host within 120 s ({first}, {last})",
                daemon.what
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// wrk's numbers: requests/s, p50 and p99 in ms.
fn wrk(port: u16, host: &str, connections: usize, seconds: u64) -> Result<(f64, f64, f64, u64)> {
    let out = Command::new("taskset")
        .args(["-c", "0", "wrk", "-t2"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stderr(Stdio::inherit())
        .output()
        .context("running wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}");
    }
    let ms = |v: &str| -> Option<f64> {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = num.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => return None,
        })
    };
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let p50 = field("50%").and_then(ms).unwrap_or(0.0);
    let p99 = field("99%").and_then(ms).unwrap_or(0.0);
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((rps, p50, p99, errors))
}

/// Runs the benchmark and writes `results.json` and `report.md` to `out`.
pub async fn run(rudder: &Path, out: &Path, options: &Options) -> Result<Results> {
    if options.subjects.iter().any(|s| s == "nginx") && !Path::new(NGINX).exists() {
        bail!("{NGINX} is missing (Debian package nginx-light; `cargo xtask prereqs` installs it)");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before the run: {}", load.trim());
    let counters = Arc::new(Counters::default());
    let backends = start_backends(Arc::clone(&counters))?;
    let routes = options.routes.max(1);
    eprintln!(
        "== rudder server: {routes} routes over {} backends",
        backends.len()
    );
    let (server, client) = control::start_server(rudder, None).await?;
    let started = Instant::now();
    create_routes(&client, routes, &backends).await?;
    eprintln!("   created in {:.1} s", started.elapsed().as_secs_f64());
    let dir = tempfile::Builder::new()
        .prefix("rudder-bench-ingress-")
        .tempdir()?;
    let target = host(routes / 2);
    let mut results = Results::new("ingress");
    for subject in SUBJECTS
        .iter()
        .copied()
        .filter(|s| options.subjects.iter().any(|x| x == s))
    {
        let port = control::free_port()?;
        let mut daemon = match subject {
            "nginx" => {
                for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    std::fs::create_dir_all(dir.path().join(sub))?;
                }
                let conf = dir.path().join("nginx.conf");
                std::fs::write(&conf, nginx_conf(dir.path(), port, routes, &backends))?;
                Daemon::spawn(
                    "nginx",
                    Command::new("taskset")
                        .args(["-c", "1", NGINX, "-c"])
                        .arg(&conf)
                        .args(["-p", &dir.path().display().to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit()),
                )?
            }
            _ => Daemon::spawn(
                "rudder ingress",
                Command::new("taskset")
                    .args(["-c", "1"])
                    .arg(rudder)
                    .arg("ingress")
                    .arg("--kubeconfig")
                    .arg(&server.kubeconfig)
                    .args(["--ingress-http-addr", &format!("127.0.0.1:{port}")])
                    .args(["--ingress-https-addr", "none"])
                    .args(["--ingress-threads", "1"])
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit()),
            )?,
        };
        // nginx's worker outlives a killed master: stop the master gracefully first.
        let _graceful = (subject == "nginx").then(|| GracefulStop(daemon.pid()));
        eprintln!("== {subject}");
        let synced = wait_routed(&mut daemon, port, routes).await?;
        // nginx's master does nothing per request: its worker (the child) is what serves.
        let pid = match subject {
            "nginx" => nginx_worker(daemon.pid())?,
            _ => daemon.pid(),
        };
        let case_routes = [("routes", json!(routes))];
        let rss = rss_bytes(pid);
        results.push(subject, &case_routes, "sync_s", synced.as_secs_f64(), "s");
        results.push(subject, &case_routes, "rss_bytes", rss, "bytes");
        eprintln!(
            "   routing every host after {:.2} s, RSS {:.1} MiB",
            synced.as_secs_f64(),
            rss / 1_048_576.0
        );
        for &c in &options.connections {
            let warm = target.clone();
            tokio::task::spawn_blocking(move || wrk(port, &warm, c.min(16), 2)).await??;
            let cpu0 = cpu_seconds(pid)?;
            let (conn0, req0) = counters.read();
            let t0 = Instant::now();
            let host = target.clone();
            let seconds = options.seconds;
            let (rps, p50, p99, errors) =
                tokio::task::spawn_blocking(move || wrk(port, &host, c, seconds)).await??;
            let elapsed = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid)? - cpu0;
            let (conn1, req1) = counters.read();
            let requests = (req1 - req0).max(1);
            let reuse = 1.0 - (conn1 - conn0) as f64 / requests as f64;
            let case = [("routes", json!(routes)), ("connections", json!(c))];
            results.push(subject, &case, "rps", rps, "1/s");
            results.push(subject, &case, "latency_p50_ms", p50, "ms");
            results.push(subject, &case, "latency_p99_ms", p99, "ms");
            results.push(subject, &case, "server_cpu_cores", cpu / elapsed, "cores");
            results.push(
                subject,
                &case,
                "cpu_us_per_request",
                cpu * 1e6 / (rps * elapsed).max(1.0),
                "us",
            );
            results.push(subject, &case, "upstream_reuse_ratio", reuse, "ratio");
            results.push(subject, &case, "non_2xx", errors as f64, "responses");
            eprintln!(
                "   {c} connections: {rps:.0} req/s, p50 {p50:.3} ms, p99 {p99:.3} ms, {:.2} cores, upstream reuse {:.2}%, non-2xx {errors}",
                cpu / elapsed,
                reuse * 100.0
            );
            daemon.check_alive()?;
        }
        results.push(
            subject,
            &case_routes,
            "rss_after_bytes",
            rss_bytes(pid),
            "bytes",
        );
    }
    drop(server);
    results.write(out, "nginx")?;
    let mut report = results.markdown("nginx");
    let _ = writeln!(
        report,
        "\nLoad average when the run started: {} (the proxies run on CPU 1, wrk and the backends on CPU 0).",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    report.push_str(&goals(&results, options));
    std::fs::write(out.join("report.md"), report)?;
    Ok(results)
}

/// Asks nginx's master (a pid) to stop when dropped and waits (up to 5 s) until its workers
/// are gone; the [`Daemon`] then reaps the master.
struct GracefulStop(u32);

impl Drop for GracefulStop {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.0) else {
            return;
        };
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if children.trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The pid of nginx's worker: the master's only child.
fn nginx_worker(master: u32) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("nginx has no worker process");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The goals, checked against this run (markdown).
fn goals(results: &Results, options: &Options) -> String {
    let mut out = format!(
        "\n## Goals (ratios within this run, {} routes)\n\n",
        options.routes
    );
    let value = |subject: &str, c: usize, metric: &str| {
        let case: BTreeMap<String, serde_json::Value> = [
            ("routes".to_owned(), json!(options.routes)),
            ("connections".to_owned(), json!(c)),
        ]
        .into_iter()
        .collect();
        results.value(subject, &case, metric)
    };
    let show = |v: Option<f64>, digits: usize| {
        v.map_or_else(
            || "not measured".to_owned(),
            |v| format!("**{v:.digits$}**"),
        )
    };
    for &c in &options.connections {
        let ratio = |metric: &str| {
            value("rudder", c, metric)
                .zip(value("nginx", c, metric))
                .map(|(r, n)| r / n)
        };
        let _ = writeln!(
            out,
            "- {c} connections: rudder / nginx requests/s ≥ 1.5: {}; p99 lower ({} vs {} ms); CPU per request lower ({} vs {} µs); upstream reuse ≥ 0.99: {}",
            show(ratio("rps"), 2),
            show(value("rudder", c, "latency_p99_ms"), 3),
            show(value("nginx", c, "latency_p99_ms"), 3),
            show(value("rudder", c, "cpu_us_per_request"), 1),
            show(value("nginx", c, "cpu_us_per_request"), 1),
            show(value("rudder", c, "upstream_reuse_ratio"), 4),
        );
    }
    let routes: BTreeMap<String, serde_json::Value> =
        [("routes".to_owned(), json!(options.routes))]
            .into_iter()
            .collect();
    let _ = writeln!(
        out,
        "- rudder ingress RSS ≤ 50 MB with {} routes: {} MB",
        options.routes,
        show(
            results
                .value("rudder", &routes, "rss_after_bytes")
                .map(|b| b / 1e6),
            1
        )
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_gets_a_server_and_an_upstream_per_route() {
        let backends: Vec<SocketAddr> = vec!["127.0.0.1:1000".parse().expect("addr")];
        let conf = nginx_conf(Path::new("/tmp/x"), 8080, 2, &backends);
        assert_eq!(conf.matches("upstream route").count(), 2);
        assert!(conf.contains("server_name route-1.bench.test;"));
        assert!(conf.contains("server 127.0.0.1:1000; keepalive 64;"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }
}
