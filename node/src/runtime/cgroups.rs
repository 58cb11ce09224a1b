//! Container resource limits in cgroups.
//!
//! Each container gets its own cgroup, `rudder/<pod uid>/<container>`, with:
//! - `limits.memory` → `memory.max` (v2) or `memory.limit_in_bytes` (v1): the kernel's OOM
//!   killer ends the container when it goes over, as with the kubelet;
//! - `limits.cpu` → a CFS quota over a 100 ms period (`cpu.max`, or `cpu.cfs_quota_us`);
//! - `requests.cpu` (or the limit when no request is set) → the CPU share, as the kubelet
//!   computes it (`cpu.shares` = millicores × 1024 / 1000, at least 2; on v2 converted to
//!   `cpu.weight` with the formula runc uses).
//!
//! The shim joins the container's cgroups just before it runs the command (it writes to each
//! `cgroup.procs` it is given). Both layouts are handled: the unified hierarchy (cgroup v2, a
//! `cgroup.controllers` file at `/sys/fs/cgroup`), where the agent enables the memory, cpu and
//! pids controllers down to the container, and the per-controller v1 hierarchies of older and
//! hybrid hosts (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/cpu`, and `/sys/fs/cgroup/cpuacct`
//! when it is mounted apart from cpu). A host without either runs containers without limits
//! and says so in the agent's log once.
//!
//! Every container gets its cgroups, limited or not: [`usage`] reads what it used from them
//! (for the resource metrics). The pod's cgroups are removed with the pod;
//! [`remove_pods_under`] removes those of every pod of an agent that is gone.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::quantity::quantity;

/// Where cgroup file systems are mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The CFS period the quotas are expressed in (µs), the kubelet's default.
pub const CFS_PERIOD_US: i64 = 100_000;

/// The name of rudder's subtree in every hierarchy.
const SUBTREE: &str = "rudder";

/// Where the cgroup hierarchies are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 mounted at this directory.
    Unified(PathBuf),
    /// cgroup v1: the memory and cpu hierarchies, where mounted.
    PerController {
        /// The memory controller's mount.
        memory: Option<PathBuf>,
        /// The cpu controller's mount.
        cpu: Option<PathBuf>,
        /// The cpuacct controller's mount when it is not the cpu one's (CPU usage is read
        /// there).
        cpuacct: Option<PathBuf>,
    },
}

impl Layout {
    /// The layout of this host (`root` is normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path) -> Self {
        if root.join("cgroup.controllers").exists() {
            return Self::Unified(root.to_owned());
        }
        let mounted = |names: &[&str]| {
            names
                .iter()
                .map(|n| root.join(n))
                .find(|p| p.join("cgroup.procs").exists())
        };
        let cpu = mounted(&["cpu", "cpu,cpuacct"]);
        let same = |a: &Path, b: &Path| {
            fs::canonicalize(a)
                .ok()
                .is_some_and(|a| fs::canonicalize(b).ok() == Some(a))
        };
        let cpuacct = mounted(&["cpuacct"]).filter(|acct| {
            !cpu.as_ref()
                .is_some_and(|cpu| same(cpu, acct) || cpu.join("cpuacct.usage").exists())
        });
        Self::PerController {
            memory: mounted(&["memory"]),
            cpu,
            cpuacct,
        }
    }

    /// The directories of pod `uid`'s cgroups (one per hierarchy).
    fn pod_dirs(&self, uid: &str) -> Vec<PathBuf> {
        match self {
            Self::Unified(root) => vec![root.join(SUBTREE).join(uid)],
            Self::PerController {
                memory,
                cpu,
                cpuacct,
            } => memory
                .iter()
                .chain(cpu)
                .chain(cpuacct)
                .map(|r| r.join(SUBTREE).join(uid))
                .collect(),
        }
    }
}

/// What a container asked for, in the units the kernel takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit in millicores.
    pub cpu_limit_m: Option<i64>,
    /// CPU request in millicores (the limit when no request is set).
    pub cpu_request_m: Option<i64>,
}

impl Limits {
    /// The limits of a container's `resources`; unparsable quantities count as unset (the
    /// apiserver validates them).
    pub fn of(resources: Option<&ResourceRequirements>) -> Self {
        let get = |map: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
                   name: &str,
                   scale: f64| {
            map.and_then(|m| m.get(name))
                .and_then(|q| quantity(&q.0, scale))
        };
        let limits = resources.and_then(|r| r.limits.as_ref());
        let requests = resources.and_then(|r| r.requests.as_ref());
        let cpu_limit_m = get(limits, "cpu", 1000.0).filter(|m| *m > 0);
        Self {
            memory: get(limits, "memory", 1.0).filter(|b| *b > 0),
            cpu_limit_m,
            cpu_request_m: get(requests, "cpu", 1000.0).or(cpu_limit_m),
        }
    }

    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The kubelet's CPU shares for `millicores`.
pub fn shares(millicores: i64) -> i64 {
    (millicores * 1024 / 1000).max(2)
}

/// runc's conversion of v1 shares (2..=262144) to a v2 weight (1..=10000).
pub fn weight(shares: i64) -> i64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The files to write for `limits`: (path relative to a hierarchy's container directory,
/// which hierarchy, value). `memory` is `true` for the memory hierarchy on v1.
pub fn settings(unified: bool, limits: &Limits) -> Vec<(&'static str, bool, String)> {
    let mut out = Vec::new();
    if let Some(bytes) = limits.memory {
        let file = if unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        out.push((file, true, bytes.to_string()));
    }
    if let Some(m) = limits.cpu_limit_m {
        let quota = (m * CFS_PERIOD_US / 1000).max(1000);
        if unified {
            out.push(("cpu.max", false, format!("{quota} {CFS_PERIOD_US}")));
        } else {
            out.push(("cpu.cfs_period_us", false, CFS_PERIOD_US.to_string()));
            out.push(("cpu.cfs_quota_us", false, quota.to_string()));
        }
    }
    if let Some(m) = limits.cpu_request_m {
        let s = shares(m);
        if unified {
            out.push(("cpu.weight", false, weight(s).to_string()));
        } else {
            out.push(("cpu.shares", false, s.to_string()));
        }
    }
    out
}

/// Creates container `container` of pod `uid`'s cgroups with `limits`; returns the
/// `cgroup.procs` files the shim joins.
pub fn create(
    layout: &Layout,
    uid: &str,
    container: &str,
    limits: &Limits,
) -> io::Result<Vec<PathBuf>> {
    let write = |path: PathBuf, value: &str| {
        fs::write(&path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    match layout {
        Layout::Unified(root) => {
            let pod = root.join(SUBTREE).join(uid);
            let dir = pod.join(container);
            fs::create_dir_all(&dir)?;
            // Controllers must be enabled in every ancestor's subtree_control.
            for parent in [root.clone(), root.join(SUBTREE), pod] {
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids");
            }
            for (file, _, value) in settings(true, limits) {
                write(dir.join(file), &value)?;
            }
            Ok(vec![dir.join("cgroup.procs")])
        }
        Layout::PerController {
            memory,
            cpu,
            cpuacct,
        } => {
            let mut procs = Vec::new();
            let all = settings(false, limits);
            // The cpuacct hierarchy takes no settings; it counts the CPU time.
            for (root, takes) in [(memory, Some(true)), (cpu, Some(false)), (cpuacct, None)] {
                let Some(root) = root else { continue };
                let dir = root.join(SUBTREE).join(uid).join(container);
                fs::create_dir_all(&dir)?;
                for (file, _, value) in all.iter().filter(|(_, m, _)| Some(*m) == takes) {
                    write(dir.join(file), value)?;
                }
                procs.push(dir.join("cgroup.procs"));
            }
            Ok(procs)
        }
    }
}

/// What one container has used, read from its cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU time consumed since the cgroup was made, in seconds (`cpu.stat` `usage_usec` on
    /// v2, `cpuacct.usage` on v1).
    pub cpu_seconds: f64,
    /// The working set in bytes: memory in use less inactive file pages, as the kubelet and
    /// cAdvisor count it (`memory.current` − `inactive_file` on v2, `memory.usage_in_bytes` −
    /// `total_inactive_file` on v1).
    pub memory_working_set: u64,
}

/// The containers of pod `uid` that have a cgroup, with what each has used. A container
/// whose files cannot be read (it is being removed) is left out.
pub fn usage(layout: &Layout, uid: &str) -> Vec<(String, Usage)> {
    let stat_value = |text: &str, key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    let read = |path: PathBuf| fs::read_to_string(path).ok();
    let number = |path: PathBuf| read(path).and_then(|t| t.trim().parse::<u64>().ok());
    let mut out = Vec::new();
    match layout {
        Layout::Unified(root) => {
            let pod = root.join(SUBTREE).join(uid);
            for dir in subdirectories(&pod) {
                let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                    continue;
                };
                let Some(cpu_us) =
                    read(dir.join("cpu.stat")).and_then(|t| stat_value(&t, "usage_usec"))
                else {
                    continue;
                };
                let current = number(dir.join("memory.current")).unwrap_or(0);
                let inactive = read(dir.join("memory.stat"))
                    .and_then(|t| stat_value(&t, "inactive_file"))
                    .unwrap_or(0);
                out.push((
                    name,
                    Usage {
                        cpu_seconds: cpu_us as f64 / 1e6,
                        memory_working_set: current.saturating_sub(inactive),
                    },
                ));
            }
        }
        Layout::PerController {
            memory,
            cpu,
            cpuacct,
        } => {
            let Some(acct) = cpuacct.as_ref().or(cpu.as_ref()) else {
                return out;
            };
            for dir in subdirectories(&acct.join(SUBTREE).join(uid)) {
                let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                    continue;
                };
                let Some(cpu_ns) = number(dir.join("cpuacct.usage")) else {
                    continue;
                };
                let mem = memory
                    .as_ref()
                    .map(|m| m.join(SUBTREE).join(uid).join(&name));
                let current = mem
                    .as_ref()
                    .and_then(|m| number(m.join("memory.usage_in_bytes")))
                    .unwrap_or(0);
                let inactive = mem
                    .and_then(|m| read(m.join("memory.stat")))
                    .and_then(|t| stat_value(&t, "total_inactive_file"))
                    .unwrap_or(0);
                out.push((
                    name,
                    Usage {
                        cpu_seconds: cpu_ns as f64 / 1e9,
                        memory_working_set: current.saturating_sub(inactive),
                    },
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// How many times the kernel's OOM killer has killed a process in the cgroups whose
/// `cgroup.procs` files are `procs` (the container's: `oom_kill` in `memory.events` on v2, in
/// `memory.oom_control` on v1). Cgroups without the file count 0.
pub fn oom_kills(procs: &[PathBuf]) -> u64 {
    procs
        .iter()
        .filter_map(|p| p.parent())
        .flat_map(|dir| [dir.join("memory.events"), dir.join("memory.oom_control")])
        .filter_map(|f| fs::read_to_string(f).ok())
        .filter_map(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == "oom_kill").then(|| v.trim().parse::<u64>().ok())?
            })
        })
        .sum()
}

/// Removes the cgroups of every pod whose state directory lies under `agent_root/pods`: the
/// last-resort cleanup, after the containers were killed, when no agent will remove them. A
/// cgroup whose last processes are still exiting is retried for up to two seconds.
pub fn remove_pods_under(agent_root: &Path) {
    let layout = Layout::detect(Path::new(ROOT));
    let uids: Vec<String> = fs::read_dir(agent_root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        for uid in &uids {
            remove(&layout, uid);
        }
        let left = uids
            .iter()
            .any(|uid| layout.pod_dirs(uid).iter().any(|d| d.exists()));
        if !left || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

/// Removes pod `uid`'s cgroups (best effort: a cgroup with processes left stays).
pub fn remove(layout: &Layout, uid: &str) {
    for pod in layout.pod_dirs(uid) {
        for entry in fs::read_dir(&pod).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                let _ = fs::remove_dir(entry.path());
            }
        }
        let _ = fs::remove_dir(&pod);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    fn resources(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> ResourceRequirements {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        ResourceRequirements {
            limits: map(limits),
            requests: map(requests),
            ..ResourceRequirements::default()
        }
    }

    #[test]
    fn usage_is_read_from_v2_and_v1_files() {
        let root = tempfile::tempdir().unwrap();
        let c = root.path().join("rudder/u1/app");
        fs::create_dir_all(&c).unwrap();
        fs::write(
            c.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .unwrap();
        fs::write(c.join("memory.current"), "10485760\n").unwrap();
        fs::write(c.join("memory.stat"), "anon 1\ninactive_file 4194304\n").unwrap();
        let got = usage(&Layout::Unified(root.path().to_owned()), "u1");
        assert_eq!(
            got,
            vec![(
                "app".to_owned(),
                Usage {
                    cpu_seconds: 2.5,
                    memory_working_set: 6 * 1024 * 1024
                }
            )]
        );
        assert!(usage(&Layout::Unified(root.path().to_owned()), "u2").is_empty());

        let v1 = tempfile::tempdir().unwrap();
        let cpu = v1.path().join("cpu");
        let memory = v1.path().join("memory");
        fs::create_dir_all(cpu.join("rudder/u1/app")).unwrap();
        fs::create_dir_all(memory.join("rudder/u1/app")).unwrap();
        fs::write(cpu.join("rudder/u1/app/cpuacct.usage"), "1500000000\n").unwrap();
        fs::write(memory.join("rudder/u1/app/memory.usage_in_bytes"), "3000\n").unwrap();
        fs::write(
            memory.join("rudder/u1/app/memory.stat"),
            "total_inactive_file 1000\n",
        )
        .unwrap();
        let layout = Layout::PerController {
            memory: Some(memory),
            cpu: Some(cpu),
            cpuacct: None,
        };
        assert_eq!(
            usage(&layout, "u1"),
            vec![(
                "app".to_owned(),
                Usage {
                    cpu_seconds: 1.5,
                    memory_working_set: 2000
                }
            )]
        );
    }

    #[test]
    fn limits_become_kernel_settings() {
        let r = resources(&[("memory", "64Mi"), ("cpu", "500m")], &[("cpu", "250m")]);
        let l = Limits::of(Some(&r));
        assert_eq!(
            l,
            Limits {
                memory: Some(64 << 20),
                cpu_limit_m: Some(500),
                cpu_request_m: Some(250),
            }
        );
        assert_eq!(
            settings(false, &l),
            [
                ("memory.limit_in_bytes", true, "67108864".to_owned()),
                ("cpu.cfs_period_us", false, "100000".to_owned()),
                ("cpu.cfs_quota_us", false, "50000".to_owned()),
                ("cpu.shares", false, "256".to_owned()),
            ]
        );
        assert_eq!(
            settings(true, &l),
            [
                ("memory.max", true, "67108864".to_owned()),
                ("cpu.max", false, "50000 100000".to_owned()),
                ("cpu.weight", false, "10".to_owned()),
            ]
        );
        // A limit alone is also the request (the apiserver defaults it so).
        let only = Limits::of(Some(&resources(&[("cpu", "2")], &[])));
        assert_eq!(only.cpu_request_m, Some(2000));
        assert!(Limits::of(None).is_empty());
        assert_eq!((shares(1), weight(2), weight(262_144)), (2, 1, 10_000));
    }

    #[test]
    fn a_separate_cpuacct_hierarchy_is_joined_and_takes_no_settings() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "cpuacct"] {
            fs::create_dir_all(root.path().join(c)).unwrap();
            fs::write(root.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let layout = Layout::detect(root.path());
        let Layout::PerController { cpuacct, .. } = &layout else {
            panic!("{layout:?}")
        };
        assert_eq!(
            cpuacct.as_deref(),
            Some(root.path().join("cpuacct").as_path())
        );
        let l = Limits {
            memory: None,
            cpu_limit_m: Some(200),
            cpu_request_m: Some(100),
        };
        let procs = create(&layout, "u1", "app", &l).unwrap();
        assert_eq!(procs.len(), 3, "{procs:?}");
        let acct = root.path().join("cpuacct/rudder/u1/app");
        assert_eq!(fs::read_dir(&acct).unwrap().count(), 0, "no settings there");
        assert!(
            root.path()
                .join("cpu/rudder/u1/app/cpu.cfs_quota_us")
                .exists()
        );
        fs::write(acct.join("cpuacct.usage"), "2000000000\n").unwrap();
        let used = usage(&layout, "u1");
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1.cpu_seconds, 2.0);
    }

    #[test]
    fn oom_kills_are_counted_from_either_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("v2");
        let v1 = root.path().join("v1");
        fs::create_dir_all(&v2).unwrap();
        fs::create_dir_all(&v1).unwrap();
        fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&[v2.join("cgroup.procs")]), 1);
        assert_eq!(
            oom_kills(&[v1.join("cgroup.procs"), root.path().join("cgroup.procs")]),
            2
        );
        assert_eq!(oom_kills(&[]), 0);
    }

    #[test]
    fn v1_hierarchies_get_their_own_files() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu"] {
            fs::create_dir_all(root.path().join(c)).unwrap();
            fs::write(root.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let layout = Layout::detect(root.path());
        assert!(matches!(
            layout,
            Layout::PerController {
                memory: Some(_),
                cpu: Some(_),
                cpuacct: None,
            }
        ));
        let l = Limits {
            memory: Some(1 << 20),
            cpu_limit_m: None,
            cpu_request_m: Some(100),
        };
        let procs = create(&layout, "u1", "app", &l).unwrap();
        assert_eq!(procs.len(), 2);
        let mem = root.path().join("memory/rudder/u1/app");
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "1048576"
        );
        assert!(!mem.join("cpu.shares").exists());
        let cpu = root.path().join("cpu/rudder/u1/app");
        assert_eq!(fs::read_to_string(cpu.join("cpu.shares")).unwrap(), "102");
        // (A real cgroup directory's files disappear with it; here they must go first.)
        for d in [&mem, &cpu] {
            for f in fs::read_dir(d).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        remove(&layout, "u1");
        assert!(!root.path().join("memory/rudder/u1").exists());
    }
}
