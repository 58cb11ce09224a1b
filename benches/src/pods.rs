//! `cargo xtask bench pods`: how fast a node agent starts pods and what it costs, on a
//! two-node `rudder lab` (n1 runs the control plane, n2 only the agent, so n2's process is the
//! agent alone).
//!
//! For each subject, a node dataplane (`ebpf`: the pod program attached to every pod's veth;
//! `iptables`: nothing per pod), in the same run:
//! - `start_p50_ms`/`start_p99_ms` (case `mode=sequential`): pods created one at a time on the
//!   idle node n2 (`registry.k8s.io/pause`, pinned with a nodeSelector so the scheduler binds
//!   them), each timed from the watch event that shows its binding to the one that shows it
//!   Ready, then deleted;
//! - the same for a burst (case `mode=burst`): `burst` pods created at once, 16 requests in
//!   flight, and `all_ready_s`, from the first create to the last Ready;
//! - `agent_rss_mb`: the resident memory of n2's agent with the burst's pods running.
//!
//! No kubelet runs on these machines, so the comparison column is `goal`: the targets
//! (p99 ≤ 1 s from binding to Ready on an idle node, ≥ 100 pods per node, agent RSS ≤ 50 MB
//! with 100 pods). Timing is by the client's watch, so it includes the apiserver's status write
//! and the watch delivery, as a user would see it.

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use serde_json::json;

use crate::{control::rss_bytes, results::Results, stats::percentile_ms};

/// Benchmark sizes.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Pods started one at a time.
    pub sequential: usize,
    /// Pods started at once (and then running together).
    pub burst: usize,
}

impl Sizes {
    /// Sizes for `--quick`.
    pub fn quick() -> Self {
        Self {
            sequential: 20,
            burst: 30,
        }
    }

    /// Full sizes (the 100 pods per node).
    pub fn full() -> Self {
        Self {
            sequential: 50,
            burst: 100,
        }
    }
}

/// A `rudder lab`, removed on drop.
struct Lab<'a> {
    rudder: &'a Path,
    name: String,
    dir: tempfile::TempDir,
}

impl<'a> Lab<'a> {
    fn up(rudder: &'a Path, name: String, dataplane: &str) -> Result<Self> {
        let lab = Self {
            rudder,
            name,
            dir: tempfile::Builder::new().prefix("rudder-bench-").tempdir()?,
        };
        let out = Command::new(rudder)
            .args(["lab", "up", "--nodes", "2", "--name", &lab.name])
            .args(["--dataplane", dataplane, "--timeout", "120", "--data-dir"])
            .arg(lab.dir.path())
            .output()
            .with_context(|| format!("running {}", rudder.display()))?;
        if !out.status.success() {
            bail!(
                "rudder lab up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(lab)
    }

    fn agent_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("n2/pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.rudder)
            .args(["lab", "down", "--purge", "--name", &self.name, "--data-dir"])
            .arg(self.dir.path())
            .output();
    }
}

/// When each pod was seen bound and Ready.
#[derive(Default)]
struct Seen {
    bound: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pause_pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "n2"},
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.9"}],
        },
    }))?)
}

/// Waits until every name in `names` was seen Ready.
async fn wait_ready(seen: &Mutex<Seen>, names: &[String], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let missing = {
            let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            names
                .iter()
                .filter(|n| !seen.ready.contains_key(*n))
                .count()
        };
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{missing} of {} pods not Ready within {limit:?}",
                names.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Binding-to-Ready durations of `names`.
fn start_times(seen: &Mutex<Seen>, names: &[String]) -> Result<Vec<Duration>> {
    let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    names
        .iter()
        .map(|n| {
            let bound = seen.bound.get(n).context("binding not seen")?;
            let ready = seen.ready.get(n).context("Ready not seen")?;
            Ok(ready.saturating_duration_since(*bound))
        })
        .collect()
}

async fn measure(
    kubeconfig: &Path,
    subject: &str,
    sizes: Sizes,
    results: &mut Results,
) -> Result<()> {
    let config = Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");

    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = {
        let seen = Arc::clone(&seen);
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                let now = Instant::now();
                let (watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
                    continue;
                };
                let Some(name) = pod.metadata.name.clone() else {
                    continue;
                };
                let Ok(mut seen) = seen.lock() else { return };
                if pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
                {
                    seen.bound.entry(name.clone()).or_insert(now);
                }
                if is_ready(&pod) {
                    seen.ready.entry(name).or_insert(now);
                }
            }
        })
    };

    // One at a time on an idle node.
    let mut names = Vec::new();
    for i in 0..sizes.sequential {
        let name = format!("seq-{i}");
        pods.create(&PostParams::default(), &pause_pod(&name)?)
            .await?;
        wait_ready(&seen, std::slice::from_ref(&name), Duration::from_secs(30)).await?;
        pods.delete(&name, &DeleteParams::default()).await?;
        names.push(name);
    }
    let mut times = start_times(&seen, &names)?;
    let (p50, p99) = (
        percentile_ms(&mut times, 50.0),
        percentile_ms(&mut times, 99.0),
    );
    let case = [
        ("mode", json!("sequential")),
        ("pods", json!(sizes.sequential)),
    ];
    results.push(subject, &case, "start_p50_ms", p50, "ms");
    results.push(subject, &case, "start_p99_ms", p99, "ms");
    eprintln!("   one at a time: binding to Ready p50 {p50:.0} ms, p99 {p99:.0} ms");
    // Let the sequential pods go before the burst.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pods.list(&Default::default()).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("the sequential pods were not deleted within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A burst.
    let names: Vec<String> = (0..sizes.burst).map(|i| format!("burst-{i}")).collect();
    let started = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pause_pod(name)?)
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<()>>()
    .await?;
    wait_ready(&seen, &names, Duration::from_secs(300)).await?;
    let all_ready = started.elapsed().as_secs_f64();
    let mut times = start_times(&seen, &names)?;
    let (p50, p99) = (
        percentile_ms(&mut times, 50.0),
        percentile_ms(&mut times, 99.0),
    );
    let case = [("mode", json!("burst")), ("pods", json!(sizes.burst))];
    results.push(subject, &case, "start_p50_ms", p50, "ms");
    results.push(subject, &case, "start_p99_ms", p99, "ms");
    results.push(subject, &case, "all_ready_s", all_ready, "s");
    eprintln!(
        "   burst of {}: binding to Ready p50 {p50:.0} ms, p99 {p99:.0} ms, all Ready in {all_ready:.1} s",
        sizes.burst
    );
    watch.abort();
    Ok(())
}

/// Runs the benchmark for both dataplanes and writes `out/results.json` and `out/report.md`.
pub fn run(rudder: &Path, out: &Path, sizes: Sizes) -> Result<Results> {
    let mut results = Results::new("pods");
    for (i, dataplane) in ["ebpf", "iptables"].into_iter().enumerate() {
        let subject = format!("rudder-{dataplane}");
        eprintln!("== {subject}: a two-node lab");
        let name = format!("bp{}{i}", std::process::id() % 100_000);
        let lab = Lab::up(rudder, name.clone(), dataplane)?;
        let kubeconfig = lab.dir.path().join("kubeconfig");
        let switch = format!("rdr-{name}-lab");
        let mut measured = Results::new("pods");
        rudder_node::lab::in_ns(&switch, || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(measure(&kubeconfig, &subject, sizes, &mut measured))
        })??;
        results.runs.extend(measured.runs);
        let rss = lab.agent_pid().map_or(0.0, rss_bytes) / 1_048_576.0;
        let case = [("mode", json!("burst")), ("pods", json!(sizes.burst))];
        results.push(&subject, &case, "agent_rss_mb", rss, "MB");
        eprintln!("   agent RSS with {} pods: {rss:.1} MB", sizes.burst);
        drop(lab);
    }
    let goal_case = |mode: &str, pods: usize| [("mode", json!(mode)), ("pods", json!(pods))];
    let sequential = goal_case("sequential", sizes.sequential);
    let burst = goal_case("burst", sizes.burst);
    results.push("goal", &sequential, "start_p99_ms", 1000.0, "ms");
    results.push("goal", &burst, "agent_rss_mb", 50.0, "MB");
    results.write(out, "goal")?;
    Ok(results)
}
