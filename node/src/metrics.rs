//! Resource metrics: what the kubelet serves at `/metrics/resource`, the endpoint
//! metrics-server scrapes (and rudder's apiserver, which serves `metrics.k8s.io` from it).
//!
//! The answer is Prometheus text with the kubelet's metric names, each sample stamped with the
//! time it was read (milliseconds since the epoch):
//!
//! - `container_cpu_usage_seconds_total{container,namespace,pod}`: CPU time since the
//!   container's cgroup was made, a counter;
//! - `container_memory_working_set_bytes{container,namespace,pod}`;
//! - `pod_cpu_usage_seconds_total{namespace,pod}` and `pod_memory_working_set_bytes{...}`:
//!   their sums over the pod's containers;
//! - `node_cpu_usage_seconds_total` and `node_memory_working_set_bytes`: the host's, from
//!   `/proc/stat` (time not idle or waiting for I/O) and `/proc/meminfo` (`MemTotal` −
//!   `MemAvailable`). The nodes of a lab share one kernel, so each reports the whole host;
//! - `scrape_error` 0.
//!
//! Containers are found by their cgroups (`rudder/<pod uid>/<container>`, see
//! [`cgroups`](crate::runtime::cgroups)); the pod worker writes each pod's
//! `<namespace>/<name>` to [`NAME_FILE`] in its state directory so that the UID can be named.
//! A rate (the CPU cores in use) is the consumer's job: two scrapes, difference over time.

use std::{fmt::Write as _, fs, path::Path};

use crate::runtime::cgroups::{self, Layout, Usage};

/// The file in a pod's state directory (`<root>/pods/<uid>/`) holding `<namespace>/<name>`.
pub const NAME_FILE: &str = "name";

/// One container's usage, named.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSample {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name.
    pub container: String,
    /// What it used.
    pub usage: Usage,
}

/// Reads every running container's usage: the pods under `state_root/pods` whose cgroups
/// exist in `layout`.
pub fn containers(state_root: &Path, layout: &Layout) -> Vec<ContainerSample> {
    let mut out = Vec::new();
    for entry in fs::read_dir(state_root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(uid) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(name) = fs::read_to_string(entry.path().join(NAME_FILE)) else {
            continue;
        };
        let Some((namespace, pod)) = name.trim().split_once('/') else {
            continue;
        };
        for (container, usage) in cgroups::usage(layout, &uid) {
            out.push(ContainerSample {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                container,
                usage,
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
    });
    out
}

/// The host's usage from `/proc/stat` and `/proc/meminfo` (zero where unreadable).
pub fn host() -> Usage {
    let cpu_seconds = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| busy_seconds(&s))
        .unwrap_or(0.0);
    let memory_working_set = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| memory_in_use(&s))
        .unwrap_or(0);
    Usage {
        cpu_seconds,
        memory_working_set,
    }
}

/// CPU seconds not idle nor waiting for I/O, from `/proc/stat`'s `cpu` line (in USER_HZ
/// ticks, 100 per second on Linux).
fn busy_seconds(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle) as f64 / 100.0)
}

/// `MemTotal` − `MemAvailable` in bytes, from `/proc/meminfo` (in kB).
fn memory_in_use(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(field("MemTotal")?.saturating_sub(field("MemAvailable")?) * 1024)
}

/// A label value with Prometheus' escapes.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics/resource` text for `node` and `containers`, read at `now_ms`.
pub fn render(node: &Usage, containers: &[ContainerSample], now_ms: i64) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {now_ms}");
        }
    };
    let container_labels = |c: &ContainerSample| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape(&c.container),
            escape(&c.namespace),
            escape(&c.pod)
        )
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        containers
            .iter()
            .map(|c| (container_labels(c), c.usage.cpu_seconds.to_string()))
            .collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        containers
            .iter()
            .map(|c| (container_labels(c), c.usage.memory_working_set.to_string()))
            .collect(),
    );
    let mut pods: Vec<(String, Usage)> = Vec::new();
    for c in containers {
        let labels = format!(
            "{{namespace=\"{}\",pod=\"{}\"}}",
            escape(&c.namespace),
            escape(&c.pod)
        );
        match pods.last_mut() {
            Some((l, u)) if *l == labels => {
                u.cpu_seconds += c.usage.cpu_seconds;
                u.memory_working_set += c.usage.memory_working_set;
            }
            _ => pods.push((labels, c.usage)),
        }
    }
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        pods.iter()
            .map(|(l, u)| (l.clone(), u.cpu_seconds.to_string()))
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        pods.iter()
            .map(|(l, u)| (l.clone(), u.memory_working_set.to_string()))
            .collect(),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        vec![(String::new(), node.cpu_seconds.to_string())],
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        vec![(String::new(), node.memory_working_set.to_string())],
    );
    let _ = writeln!(
        out,
        "# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE scrape_error gauge");
    let _ = writeln!(out, "scrape_error 0");
    out
}

/// Reads everything now and renders it.
pub fn scrape(state_root: &Path) -> String {
    let layout = Layout::detect(Path::new(cgroups::ROOT));
    let containers = containers(state_root, &layout);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    render(&host(), &containers, now_ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    #[test]
    fn host_usage_parses_proc_files() {
        let stat = "cpu  100 20 30 400 50 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(busy_seconds(stat), Some(1.71));
        let meminfo = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n";
        assert_eq!(memory_in_use(meminfo), Some(600 * 1024));
        assert_eq!(memory_in_use("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn pods_are_named_from_their_state_directory() {
        let state = tempfile::tempdir().unwrap();
        let cg = tempfile::tempdir().unwrap();
        for (uid, name, containers) in [
            ("u1", "default/web-1", &["app", "side"][..]),
            ("u2", "kube-system/dns", &["dns"][..]),
        ] {
            fs::create_dir_all(state.path().join("pods").join(uid)).unwrap();
            fs::write(state.path().join("pods").join(uid).join(NAME_FILE), name).unwrap();
            for c in containers {
                let dir = cg.path().join("rudder").join(uid).join(c);
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("cpu.stat"), "usage_usec 1000000\n").unwrap();
                fs::write(dir.join("memory.current"), "2048\n").unwrap();
            }
        }
        // A pod directory without a cgroup (not started yet) is left out.
        fs::create_dir_all(state.path().join("pods/u3")).unwrap();
        fs::write(state.path().join("pods/u3").join(NAME_FILE), "default/new").unwrap();
        let got = containers(state.path(), &Layout::Unified(cg.path().to_owned()));
        let names: Vec<String> = got
            .iter()
            .map(|c| format!("{}/{}/{}", c.namespace, c.pod, c.container))
            .collect();
        assert_eq!(
            names,
            [
                "default/web-1/app",
                "default/web-1/side",
                "kube-system/dns/dns"
            ]
        );
        let text = render(
            &Usage {
                cpu_seconds: 7.5,
                memory_working_set: 99,
            },
            &got,
            1_700_000_000_000,
        );
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"side\",namespace=\"default\",pod=\"web-1\"} 1 1700000000000\n"
        ));
        assert!(text.contains(
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"web-1\"} 4096 1700000000000\n"
        ));
        assert!(text.contains(
            "pod_cpu_usage_seconds_total{namespace=\"kube-system\",pod=\"dns\"} 1 1700000000000\n"
        ));
        assert!(text.contains("node_cpu_usage_seconds_total 7.5 1700000000000\n"));
        assert!(text.contains("# TYPE container_memory_working_set_bytes gauge\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
