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
//! hybrid hosts (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/cpu`). A host without either runs
//! containers without limits and says so in the agent's log once.
//!
//! The pod's cgroups are removed with the pod.

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
        Self::PerController {
            memory: mounted(&["memory"]),
            cpu: mounted(&["cpu", "cpu,cpuacct"]),
        }
    }

    /// The directories of pod `uid`'s cgroups (one per hierarchy).
    fn pod_dirs(&self, uid: &str) -> Vec<PathBuf> {
        match self {
            Self::Unified(root) => vec![root.join(SUBTREE).join(uid)],
            Self::PerController { memory, cpu } => memory
                .iter()
                .chain(cpu)
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
        Layout::PerController { memory, cpu } => {
            let mut procs = Vec::new();
            let all = settings(false, limits);
            for (root, is_memory) in [(memory, true), (cpu, false)] {
                let Some(root) = root else { continue };
                let dir = root.join(SUBTREE).join(uid).join(container);
                fs::create_dir_all(&dir)?;
                for (file, _, value) in all.iter().filter(|(_, m, _)| *m == is_memory) {
                    write(dir.join(file), value)?;
                }
                procs.push(dir.join("cgroup.procs"));
            }
            Ok(procs)
        }
    }
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
                cpu: Some(_)
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
