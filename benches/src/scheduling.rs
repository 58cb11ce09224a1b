//! The scheduling half of `cargo xtask bench control` (`--hollow-nodes N --pods M`): the real
//! `rudder server` (apiserver, scheduler, controllers; no node agent) with hollow nodes, as
//! kubemark/KWOK provide them: Node objects that only post status (Ready, allocatable 32 CPU,
//! 128 GiB, 110 pods) and renew their Leases every 10 s, so the node lifecycle controller keeps
//! them Ready. Nothing runs the pods; they stay bound and Pending, which is what the scheduler
//! and the controllers see of a real cluster under load. Hollow nodes have no addresses, so no
//! traffic can be sent to them.
//!
//! Measured per subject (store):
//! - `scheduling_pods_per_s`: M pods (100m CPU, 64 MiB each) created with 64 requests in
//!   flight; bound pods divided by the time from the first create to the last binding seen in a
//!   watch. `create_pods_per_s` is the rate the pods were created at, the ceiling of the first.
//! - `burst_bound_p50_ms` / `p99`: create-to-bound latency of those pods (queueing included).
//! - `churn_bound_p50_ms` / `p99`: create-to-bound latency of pods created at 20/s while as
//!   many old pods are deleted, with the M pods in place (the SLO case: ≤ 1 s at p99).
//! - `deployment_pods_created_s` / `deployment_pods_bound_s`: a Deployment of R replicas, from
//!   its create until the ReplicaSet controller has created every pod, and until every pod is
//!   bound; `replacement_s`: after 10% of its pods are deleted, until they are all replaced
//!   and bound (controller lag).
//! - `server_rss_bytes`: the RSS of `rudder server` at rest with M + R pods and N nodes stored,
//!   sampled 15 s after the last step while the hollow nodes go on renewing their Leases (a
//!   steady cluster, not the tail of the last burst);
//!   `server_peak_rss_bytes`: its VmHWM over the whole run. On etcd the etcd process is not
//!   included.
//!
//! `RUDDER_BENCH_DEBUG=1` also prints each churn pod bound more than 500 ms after its create,
//! with when it was created, to tell a stall from a steady lag.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Namespace, Node, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::json;

use crate::{control::status_bytes, results::Results, stats::percentile_ms};

/// The namespace the benchmark's pods live in.
const NS: &str = "bench-scheduling";

/// Sizes of the scheduling benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Hollow nodes.
    pub hollow_nodes: usize,
    /// Pods created in the throughput phase.
    pub pods: usize,
    /// Pods created per second in the churn phase.
    pub churn_per_s: u32,
    /// Length of the churn phase.
    pub churn: Duration,
    /// Replicas of the Deployment timed for controller lag.
    pub replicas: usize,
}

impl Scale {
    /// The scale: 1000 hollow nodes, 30,000 pods.
    pub fn full() -> Self {
        Self {
            hollow_nodes: 1000,
            pods: 30_000,
            churn_per_s: 20,
            churn: Duration::from_secs(30),
            replicas: 1000,
        }
    }

    /// `--quick`: 100 nodes, 3000 pods.
    pub fn quick() -> Self {
        Self {
            hollow_nodes: 100,
            pods: 3000,
            churn_per_s: 20,
            churn: Duration::from_secs(10),
            replicas: 200,
        }
    }
}

fn hollow_node(i: usize) -> Result<Node> {
    let name = format!("hollow-{i}");
    let now = Timestamp::now().to_string();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
            "rudder.dev/hollow": "true",
        }},
        "spec": {},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "hollow node", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "hollow", "operatingSystem": "linux",
                         "architecture": "amd64", "machineID": "", "systemUUID": "",
                         "bootID": "", "kernelVersion": "", "osImage": "hollow",
                         "containerRuntimeVersion": "hollow", "kubeProxyVersion": ""},
        },
    }))?)
}

fn lease(node: &str) -> Result<Lease> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                 "renewTime": format!("{:.6}", Timestamp::now())},
    }))?)
}

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"bench": "scheduling"}},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    }))?)
}

/// Registers the hollow nodes and renews their Leases every 10 s until dropped.
async fn hollow_nodes(client: &Client, count: usize) -> Result<tokio::task::JoinHandle<()>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    futures::stream::iter(0..count)
        .map(|i| {
            let (nodes, leases) = (nodes.clone(), leases.clone());
            async move {
                let node = hollow_node(i)?;
                let name = format!("hollow-{i}");
                nodes.create(&PostParams::default(), &node).await?;
                leases
                    .create(&PostParams::default(), &lease(&name)?)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .context("registering hollow nodes")?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let renewed = futures::stream::iter(0..count)
                .map(|i| {
                    let leases = leases.clone();
                    async move {
                        let name = format!("hollow-{i}");
                        let now = format!("{:.6}", Timestamp::now());
                        let patch = Patch::Merge(json!({"spec": {"renewTime": now}}));
                        leases.patch(&name, &PatchParams::default(), &patch).await
                    }
                })
                .buffer_unordered(16)
                .filter(|r| futures::future::ready(r.is_err()))
                .count()
                .await;
            if renewed > 0 {
                eprintln!("   warning: {renewed} hollow node leases not renewed");
            }
        }
    }))
}

/// When each pod (by name) was first seen bound, from a watch of the namespace.
#[derive(Default)]
struct Bound {
    at: HashMap<String, Instant>,
}

async fn watch_bindings(
    client: &Client,
) -> Result<(Arc<Mutex<Bound>>, tokio::task::JoinHandle<()>)> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let bound = Arc::new(Mutex::new(Bound::default()));
    let seen = bound.clone();
    let task = tokio::spawn(async move {
        let mut rv = rv;
        loop {
            let stream = match api.watch(&WatchParams::default().timeout(290), &rv).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("   watch: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut stream = stream.boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                let pod = match event {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
                    WatchEvent::Bookmark(b) => {
                        rv = b.metadata.resource_version;
                        continue;
                    }
                    _ => continue,
                };
                if let Some(v) = &pod.metadata.resource_version {
                    rv.clone_from(v);
                }
                let bound = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some();
                if bound
                    && let Some(name) = pod.metadata.name
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.at.entry(name).or_insert_with(Instant::now);
                }
            }
        }
    });
    Ok((bound, task))
}

fn bound_at(bound: &Mutex<Bound>, name: &str) -> Option<Instant> {
    bound.lock().ok()?.at.get(name).copied()
}

/// Waits until every name is bound, failing after `limit`.
async fn wait_bound(bound: &Mutex<Bound>, names: &[String], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let missing = names
            .iter()
            .filter(|n| bound_at(bound, n).is_none())
            .count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{missing} of {} pods not bound after {limit:?}",
                names.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn latencies(bound: &Mutex<Bound>, created: &[(String, Instant)]) -> Vec<Duration> {
    created
        .iter()
        .filter_map(|(name, at)| Some(bound_at(bound, name)?.saturating_duration_since(*at)))
        .collect()
}

/// Runs the scheduling benchmark against a started server.
pub async fn measure(
    subject: &str,
    client: &Client,
    server_pid: u32,
    scale: Scale,
    results: &mut Results,
) -> Result<()> {
    let case = [
        ("hollow_nodes", json!(scale.hollow_nodes)),
        ("pods", json!(scale.pods)),
    ];
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    eprintln!("   registering {} hollow nodes", scale.hollow_nodes);
    let renewer = hollow_nodes(client, scale.hollow_nodes).await?;
    let (bound, watcher) = watch_bindings(client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    // Throughput.
    eprintln!("   creating {} pods (64 in flight)", scale.pods);
    let started = Instant::now();
    let created: Vec<(String, Instant)> = futures::stream::iter(0..scale.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("pod-{i}");
                let at = Instant::now();
                pods.create(&PostParams::default(), &pod(&name)?).await?;
                anyhow::Ok((name, at))
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await
        .context("creating pods")?;
    let create_rate = scale.pods as f64 / started.elapsed().as_secs_f64();
    let names: Vec<String> = created.iter().map(|(n, _)| n.clone()).collect();
    wait_bound(&bound, &names, Duration::from_secs(600)).await?;
    let last = names
        .iter()
        .filter_map(|n| bound_at(&bound, n))
        .max()
        .unwrap_or(started);
    let rate = scale.pods as f64 / last.duration_since(started).as_secs_f64();
    let mut burst = latencies(&bound, &created);
    results.push(subject, &case, "create_pods_per_s", create_rate, "1/s");
    results.push(subject, &case, "scheduling_pods_per_s", rate, "1/s");
    let (b50, b99) = (
        percentile_ms(&mut burst, 50.0),
        percentile_ms(&mut burst, 99.0),
    );
    results.push(subject, &case, "burst_bound_p50_ms", b50, "ms");
    results.push(subject, &case, "burst_bound_p99_ms", b99, "ms");
    eprintln!(
        "   created {create_rate:.0} pods/s, bound {rate:.0} pods/s; create-to-bound p50 {b50:.0} ms, p99 {b99:.0} ms"
    );

    // Churn at a steady rate with the cluster full.
    eprintln!(
        "   churn: {} pods/s created and deleted for {:?}",
        scale.churn_per_s, scale.churn
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1) / scale.churn_per_s);
    let count = (scale.churn.as_secs_f64() * f64::from(scale.churn_per_s)) as usize;
    let mut churned = Vec::with_capacity(count);
    let mut inflight = futures::stream::FuturesUnordered::new();
    for i in 0..count {
        tick.tick().await;
        let (pods, name, old) = (
            pods.clone(),
            format!("churn-{i}"),
            names[i % names.len()].clone(),
        );
        // A task of its own: polled only from this loop, the request would wait for the next
        // tick to make progress, and that wait would count as latency.
        inflight.push(tokio::spawn(async move {
            let at = Instant::now();
            pods.create(&PostParams::default(), &pod(&name)?).await?;
            pods.delete(
                &old,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await?;
            anyhow::Ok((name, at))
        }));
        while let Some(Some(done)) = futures::FutureExt::now_or_never(inflight.next()) {
            churned.push(done??);
        }
    }
    while let Some(done) = inflight.next().await {
        churned.push(done??);
    }
    let churn_names: Vec<String> = churned.iter().map(|(n, _)| n.clone()).collect();
    wait_bound(&bound, &churn_names, Duration::from_secs(60)).await?;
    let mut churn = latencies(&bound, &churned);
    if std::env::var_os("RUDDER_BENCH_DEBUG").is_some() {
        let t0 = churned.first().map(|c| c.1);
        for ((name, at), l) in churned.iter().zip(&churn) {
            if *l > Duration::from_millis(500) {
                let off = t0
                    .map(|t| at.duration_since(t).as_secs_f64())
                    .unwrap_or(0.0);
                eprintln!("   slow: {name} created at +{off:.2}s bound after {l:?}");
            }
        }
    }
    let (c50, c99) = (
        percentile_ms(&mut churn, 50.0),
        percentile_ms(&mut churn, 99.0),
    );
    let churn_case = [
        ("hollow_nodes", json!(scale.hollow_nodes)),
        ("pods", json!(scale.pods)),
        ("churn_per_s", json!(scale.churn_per_s)),
    ];
    results.push(subject, &churn_case, "churn_bound_p50_ms", c50, "ms");
    results.push(subject, &churn_case, "churn_bound_p99_ms", c99, "ms");
    eprintln!("   churn create-to-bound p50 {c50:.1} ms, p99 {c99:.1} ms");

    // Controller lag: a Deployment's pods created and bound, then replaced.
    eprintln!("   deployment of {} replicas", scale.replicas);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "lag", "namespace": NS},
        "spec": {"replicas": scale.replicas, "selector": {"matchLabels": {"app": "lag"}},
            "template": {"metadata": {"labels": {"app": "lag"}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}},
    }))?;
    let started = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let lag_pods = || async {
        let list = pods.list(&ListParams::default().labels("app=lag")).await?;
        anyhow::Ok(
            list.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| {
                    let bound = p.spec.and_then(|s| s.node_name).is_some();
                    (p.metadata.name.unwrap_or_default(), bound)
                })
                .collect::<Vec<_>>(),
        )
    };
    let (mut all_created, mut all_bound) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while all_bound.is_none() {
        let now = lag_pods().await?;
        if now.len() >= scale.replicas {
            all_created.get_or_insert_with(|| started.elapsed());
            if now.iter().all(|(_, b)| *b) {
                all_bound = Some(started.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("the Deployment's pods were not all bound in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victims: Vec<String> = lag_pods()
        .await?
        .into_iter()
        .take(scale.replicas / 10)
        .map(|(n, _)| n)
        .collect();
    let started = Instant::now();
    futures::stream::iter(victims.iter().cloned())
        .map(|name| {
            let pods = pods.clone();
            async move {
                pods.delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let replaced = loop {
        let now = lag_pods().await?;
        if now.len() >= scale.replicas && now.iter().all(|(n, b)| *b && !victims.contains(n)) {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("deleted Deployment pods not replaced in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lag_case = [
        ("hollow_nodes", json!(scale.hollow_nodes)),
        ("replicas", json!(scale.replicas)),
    ];
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    results.push(
        subject,
        &lag_case,
        "deployment_pods_created_s",
        secs(all_created),
        "s",
    );
    results.push(
        subject,
        &lag_case,
        "deployment_pods_bound_s",
        secs(all_bound),
        "s",
    );
    results.push(
        subject,
        &lag_case,
        "replacement_s",
        replaced.as_secs_f64(),
        "s",
    );
    eprintln!(
        "   deployment: all pods created in {:.2} s, bound in {:.2} s; 10% replaced in {:.2} s",
        secs(all_created),
        secs(all_bound),
        replaced.as_secs_f64()
    );

    // At rest: the last replacements' tail settles, the hollow nodes keep renewing Leases.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (rss, peak) = (
        status_bytes(server_pid, "VmRSS:"),
        status_bytes(server_pid, "VmHWM:"),
    );
    let mem_case = [
        ("hollow_nodes", json!(scale.hollow_nodes)),
        ("pods", json!(scale.pods + scale.replicas)),
    ];
    results.push(subject, &mem_case, "server_rss_bytes", rss, "bytes");
    results.push(subject, &mem_case, "server_peak_rss_bytes", peak, "bytes");
    eprintln!(
        "   server RSS {:.0} MiB (peak {:.0} MiB)",
        rss / 1048576.0,
        peak / 1048576.0
    );
    renewer.abort();
    watcher.abort();
    Ok(())
}

/// The goals, recorded as the `goal` subject so the report sets them beside the
/// measurements.
pub fn goals(scale: Scale, results: &mut Results) {
    let case = [
        ("hollow_nodes", json!(scale.hollow_nodes)),
        ("pods", json!(scale.pods)),
    ];
    results.push("goal", &case, "scheduling_pods_per_s", 500.0, "1/s");
    let churn_case = [
        ("hollow_nodes", json!(scale.hollow_nodes)),
        ("pods", json!(scale.pods)),
        ("churn_per_s", json!(scale.churn_per_s)),
    ];
    results.push("goal", &churn_case, "churn_bound_p99_ms", 1000.0, "ms");
    let mem_case = [
        ("hollow_nodes", json!(scale.hollow_nodes)),
        ("pods", json!(scale.pods + scale.replicas)),
    ];
    results.push(
        "goal",
        &mem_case,
        "server_rss_bytes",
        300.0 * 1048576.0,
        "bytes",
    );
}
