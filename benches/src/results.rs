//! Benchmark results in the schema of DESIGN.md ("Benchmark results"):
//! `{"bench", "machine", "runs": [{"subject", "case", "metric", "value", "unit"}]}`.
//!
//! Ratios are only ever computed between subjects measured in the same [`Results`].

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

/// Errors writing results.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output directory or a file in it could not be written.
    #[error("writing {path}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Serialising the results failed.
    #[error("encoding results")]
    Json(#[from] serde_json::Error),
}

/// One measured number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// What was measured, e.g. `etcd` or `ebpf-tc`.
    pub subject: String,
    /// The parameters, e.g. `{"services": 10000}`.
    pub case: BTreeMap<String, serde_json::Value>,
    /// The metric name, e.g. `creates_per_s`.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Its unit, e.g. `1/s` or `ms`.
    pub unit: String,
}

/// All runs of one benchmark invocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Benchmark name (`forwarding`, `control`, `dns`, `ingress`).
    pub bench: String,
    /// CPU model, core count and kernel of the machine it ran on.
    pub machine: String,
    /// Every measured number.
    pub runs: Vec<Run>,
}

impl Results {
    /// Starts an empty result set for `bench`, describing this machine.
    pub fn new(bench: &str) -> Self {
        Self {
            bench: bench.to_owned(),
            machine: machine_description(),
            runs: Vec::new(),
        }
    }

    /// Records one number.
    pub fn push(
        &mut self,
        subject: &str,
        case: &[(&str, serde_json::Value)],
        metric: &str,
        value: f64,
        unit: &str,
    ) {
        self.runs.push(Run {
            subject: subject.to_owned(),
            case: case
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }

    /// The value of `metric` for `subject` in the case whose parameters equal `case`.
    pub fn value(
        &self,
        subject: &str,
        case: &BTreeMap<String, serde_json::Value>,
        metric: &str,
    ) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.subject == subject && r.metric == metric && &r.case == case)
            .map(|r| r.value)
    }

    /// A markdown table: one row per (case, metric), one column per subject, and the ratio of every
    /// subject to `baseline` (measured in this same run) when it is present.
    pub fn markdown(&self, baseline: &str) -> String {
        let mut subjects: Vec<&str> = Vec::new();
        let mut rows: Vec<(&BTreeMap<String, serde_json::Value>, &str, &str)> = Vec::new();
        for run in &self.runs {
            if !subjects.contains(&run.subject.as_str()) {
                subjects.push(&run.subject);
            }
            if !rows
                .iter()
                .any(|(c, m, _)| *c == &run.case && *m == run.metric)
            {
                rows.push((&run.case, &run.metric, &run.unit));
            }
        }
        let mut out = format!(
            "# Benchmark `{}`\n\nMachine: {}\n\n",
            self.bench, self.machine
        );
        out.push_str("| case | metric | unit |");
        for s in &subjects {
            let _ = write!(out, " {s} |");
        }
        for s in subjects.iter().filter(|s| **s != baseline) {
            let _ = write!(out, " {s} / {baseline} |");
        }
        out.push_str("\n|---|---|---|");
        let ratio_columns = subjects.iter().filter(|s| **s != baseline).count();
        out.push_str(&"---|".repeat(subjects.len() + ratio_columns));
        out.push('\n');
        for (case, metric, unit) in rows {
            let case_text = case
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = write!(out, "| {case_text} | {metric} | {unit} |");
            for s in &subjects {
                match self.value(s, case, metric) {
                    Some(v) => {
                        let _ = write!(out, " {} |", format_value(v));
                    }
                    None => out.push_str(" – |"),
                }
            }
            let base = self.value(baseline, case, metric);
            for s in subjects.iter().filter(|s| **s != baseline) {
                match (self.value(s, case, metric), base) {
                    (Some(v), Some(b)) if b != 0.0 => {
                        let _ = write!(out, " {:.2}× |", v / b);
                    }
                    _ => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes `results.json` and `report.md` into `dir` (created if needed).
    pub fn write(&self, dir: &Path, baseline: &str) -> Result<(), Error> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let json = dir.join("results.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?).map_err(io(&json))?;
        let report = dir.join("report.md");
        std::fs::write(&report, self.markdown(baseline)).map_err(io(&report))?;
        Ok(())
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// "<cpu model>, <n> cores, Linux <release>", read from /proc.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn report_has_ratios_to_the_baseline_of_the_same_run() {
        let mut r = Results::new("control");
        r.machine = "test machine".into();
        r.push("etcd", &[], "creates_per_s", 1000.0, "1/s");
        r.push("embedded", &[], "creates_per_s", 3000.0, "1/s");
        let md = r.markdown("etcd");
        assert!(md.contains("| embedded / etcd |"), "{md}");
        assert!(md.contains("| 1000 | 3000 | 3.00× |"), "{md}");
    }

    #[test]
    fn json_matches_the_contract() {
        let mut r = Results::new("forwarding");
        r.push(
            "ebpf-tc",
            &[("services", json!(10000))],
            "udp_pps",
            1.5e6,
            "1/s",
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["bench"], "forwarding");
        assert_eq!(v["runs"][0]["case"]["services"], 10000);
        assert_eq!(v["runs"][0]["metric"], "udp_pps");
        assert!(v["machine"].as_str().unwrap().contains("cores"));
    }
}
