//! `cargo xtask bench control`: the apiserver on the embedded store and on etcd, measured in the
//! same run through the real `rudder server` binary and the kube-rs client.
//!
//! For each subject (`embedded`, `etcd`): start a fresh server (and, for etcd, a private etcd on
//! loopback), then measure
//! - `creates_per_s`: ConfigMap creates with 64 in flight;
//! - `gets_per_s`: GETs of those objects with 64 in flight;
//! - `list_p99_ms` (and p50): full lists of the namespace;
//! - `watch_latency_p99_ms` (and p50): time from sending an update to receiving its watch event,
//!   one update at a time;
//! - `rss_bytes`: the server's resident memory at the end.
//!
//! Then the scheduler and controllers at scale with hollow nodes: see [`crate::scheduling`].
//! Every part starts a fresh server (and, for etcd, a fresh etcd).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use rudder_control::store::etcd::LocalEtcd;
use serde_json::json;

use crate::{
    results::Results,
    scheduling::{self, Scale},
    stats::percentile_ms,
};

/// Benchmark sizes.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Objects created (and then read and listed).
    pub objects: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Updates timed through a watch.
    pub watch_updates: usize,
    /// Full lists timed.
    pub lists: usize,
}

impl Sizes {
    /// Sizes for `--quick`.
    pub fn quick() -> Self {
        Self {
            objects: 2000,
            concurrency: 64,
            watch_updates: 200,
            lists: 10,
        }
    }

    /// Full sizes.
    pub fn full() -> Self {
        Self {
            objects: 10000,
            concurrency: 64,
            watch_updates: 1000,
            lists: 30,
        }
    }
}

/// A `rudder server` of a benchmark, killed on drop.
pub(crate) struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    pub(crate) kubeconfig: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `rudder server` (control plane only, on the embedded store or on `etcd`) on a free
/// loopback port and waits until it answers.
pub(crate) async fn start_server(rudder: &Path, etcd: Option<&str>) -> Result<(Server, Client)> {
    let dir = tempfile::Builder::new().prefix("rudder-bench-").tempdir()?;
    let port = free_port()?;
    let mut cmd = Command::new(rudder);
    cmd.arg("server")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .args(["--disable", "agent,dns,ingress"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(endpoint) = etcd {
        cmd.args(["--etcd-endpoints", endpoint]);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", rudder.display()))?;
    let mut server = Server {
        child,
        kubeconfig: dir.path().join("kubeconfig"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("rudder server exited ({status})");
        }
        if server.kubeconfig.exists() {
            let kubeconfig = Kubeconfig::read_from(&server.kubeconfig)?;
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await?;
            let client = Client::try_from(config)?;
            if client.apiserver_version().await.is_ok() {
                return Ok((server, client));
            }
        }
        if Instant::now() > deadline {
            bail!("rudder server did not become ready in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident memory of process `pid` in bytes (0 when it cannot be read).
pub(crate) fn rss_bytes(pid: u32) -> f64 {
    status_bytes(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`) in bytes; 0 when unreadable.
pub(crate) fn status_bytes(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0)
}

fn cm(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some([("bench".to_owned(), "control".to_owned())].into()),
            ..Default::default()
        },
        data: Some([("payload".to_owned(), "x".repeat(256))].into()),
        ..Default::default()
    }
}

async fn measure(
    subject: &str,
    rudder: &Path,
    etcd: Option<&str>,
    sizes: Sizes,
    results: &mut Results,
) -> Result<()> {
    eprintln!("== {subject}: starting rudder server");
    let (server, client) = start_server(rudder, etcd).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces.create(&PostParams::default(), &ns).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "bench");

    eprintln!(
        "   creating {} ConfigMaps ({} in flight)",
        sizes.objects, sizes.concurrency
    );
    let started = Instant::now();
    futures::stream::iter(0..sizes.objects)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &cm(format!("cm-{i}")))
                    .await
            }
        })
        .buffer_unordered(sizes.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let creates = sizes.objects as f64 / started.elapsed().as_secs_f64();
    results.push(subject, &[], "creates_per_s", creates, "1/s");
    eprintln!("   creates/s: {creates:.0}");

    let gets = sizes.objects * 3;
    let started = Instant::now();
    futures::stream::iter(0..gets)
        .map(|i| {
            let api = api.clone();
            let name = format!("cm-{}", (i * 7919) % sizes.objects);
            async move { api.get(&name).await }
        })
        .buffer_unordered(sizes.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let gets_per_s = gets as f64 / started.elapsed().as_secs_f64();
    results.push(subject, &[], "gets_per_s", gets_per_s, "1/s");
    eprintln!("   gets/s: {gets_per_s:.0}");

    let mut lists = Vec::new();
    for _ in 0..sizes.lists {
        let started = Instant::now();
        let list = api.list(&ListParams::default()).await?;
        lists.push(started.elapsed());
        if list.items.len() != sizes.objects {
            bail!(
                "listed {} objects, expected {}",
                list.items.len(),
                sizes.objects
            );
        }
    }
    let list_p50 = percentile_ms(&mut lists, 50.0);
    let list_p99 = percentile_ms(&mut lists, 99.0);
    results.push(
        subject,
        &[("objects", json!(sizes.objects))],
        "list_p50_ms",
        list_p50,
        "ms",
    );
    results.push(
        subject,
        &[("objects", json!(sizes.objects))],
        "list_p99_ms",
        list_p99,
        "ms",
    );
    eprintln!(
        "   list of {} objects: p50 {list_p50:.1} ms, p99 {list_p99:.1} ms",
        sizes.objects
    );

    let target = "cm-0";
    let rv = api
        .get(target)
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = api
        .watch(
            &WatchParams::default().fields(&format!("metadata.name={target}")),
            &rv,
        )
        .await?
        .boxed();
    let mut latencies = Vec::with_capacity(sizes.watch_updates);
    for i in 0..sizes.watch_updates {
        let value = format!("v{i}");
        let patch = Patch::Merge(json!({"data": {"seq": value}}));
        let sent = Instant::now();
        api.patch(target, &PatchParams::default(), &patch).await?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                .await
                .context("watch event within 10 s")??
                .context("watch ended")?;
            if let WatchEvent::Modified(obj) = event
                && obj.data.as_ref().and_then(|d| d.get("seq")) == Some(&value)
            {
                latencies.push(sent.elapsed());
                break;
            }
        }
    }
    let w50 = percentile_ms(&mut latencies, 50.0);
    let w99 = percentile_ms(&mut latencies, 99.0);
    results.push(subject, &[], "watch_latency_p50_ms", w50, "ms");
    results.push(subject, &[], "watch_latency_p99_ms", w99, "ms");
    eprintln!("   watch event latency: p50 {w50:.2} ms, p99 {w99:.2} ms");

    let rss = rss_bytes(server.child.id());
    results.push(
        subject,
        &[("objects", json!(sizes.objects))],
        "rss_bytes",
        rss,
        "bytes",
    );
    eprintln!("   server RSS: {:.1} MiB", rss / 1048576.0);
    Ok(())
}

/// Runs the benchmark for both subjects and writes `out/results.json` and `out/report.md`:
/// the apiserver part with `sizes`, the scheduling part ([`crate::scheduling`]) with `scale`;
/// either can be left out. `stores` names the subjects (`embedded`, `etcd`).
pub async fn run(
    rudder: &Path,
    out: &Path,
    stores: &[String],
    sizes: Option<Sizes>,
    scale: Option<Scale>,
) -> Result<Results> {
    let mut results = Results::new("control");
    if let Some(unknown) = stores
        .iter()
        .find(|s| !matches!(s.as_str(), "embedded" | "etcd"))
    {
        bail!("unknown store {unknown:?}: expected embedded or etcd");
    }
    for subject in ["embedded", "etcd"] {
        if !stores.iter().any(|s| s == subject) {
            continue;
        }
        // A fresh etcd for every server, so no run sees another's objects or leases.
        let etcd = || async {
            if subject != "etcd" {
                return anyhow::Ok(None);
            }
            eprintln!("== etcd: starting a private etcd on loopback");
            let etcd = LocalEtcd::start()
                .await
                .context("starting etcd (Debian's etcd-server)")?;
            Ok(Some(etcd))
        };
        if let Some(sizes) = sizes {
            let etcd = etcd().await?;
            let endpoint = etcd.as_ref().map(|e| e.endpoint.as_str());
            measure(subject, rudder, endpoint, sizes, &mut results).await?;
        }
        if let Some(scale) = scale {
            let etcd = etcd().await?;
            let endpoint = etcd.as_ref().map(|e| e.endpoint.as_str());
            eprintln!(
                "== {subject}: scheduling on {} hollow nodes",
                scale.hollow_nodes
            );
            let (server, client) = start_server(rudder, endpoint).await?;
            scheduling::measure(subject, &client, server.child.id(), scale, &mut results).await?;
        }
    }
    if let Some(scale) = scale {
        scheduling::goals(scale, &mut results);
    }
    results.write(out, "etcd")?;
    Ok(results)
}
