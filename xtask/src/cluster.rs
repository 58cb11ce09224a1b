//! `cargo xtask up` / `down`: a one-node cluster on this host (`rudder server` in the
//! background, its log and pid in the data dir), or with `--nodes N` a cluster of N nodes in
//! network namespaces (`rudder lab`, state in DATA_DIR/lab).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cargo, prereqs, step, target_dir};

fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("server.pid")
}

fn running_pid(data_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(data_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline.contains("rudder").then_some(pid)
}

/// Builds and starts the cluster.
pub fn up(nodes: u32, data_dir: &Path, port: u16) -> Result<()> {
    if nodes == 0 {
        bail!("--nodes 0: a cluster needs at least one node");
    }
    let tools = prereqs::ensure()?;
    if nodes > 1 {
        return up_lab(nodes, data_dir, &tools);
    }
    if let Some(pid) = running_pid(data_dir) {
        eprintln!("xtask: rudder server already running (pid {pid})");
    } else {
        step(
            "cargo build --release",
            cargo().args(["build", "--release", "-p", "rudder-control"]),
        )?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let log_path = data_dir.join("server.log");
        let log = std::fs::File::create(&log_path).context("creating the server log")?;
        let binary = target_dir().join("release/rudder");
        let child = Command::new("setsid")
            .arg(&binary)
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--secure-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        std::fs::write(pid_file(data_dir), child.id().to_string())?;
        let kubeconfig = data_dir.join("kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = kubeconfig.exists()
                && Command::new(&tools.kubectl)
                    .env("KUBECONFIG", &kubeconfig)
                    .args(["get", "--raw", "/readyz"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "rudder server did not become ready; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let kubeconfig = data_dir.join("kubeconfig");
    println!("rudder is up. Kubeconfig: {}", kubeconfig.display());
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  {} get all -A", tools.kubectl.display());
    Ok(())
}

/// Where the multi-node lab keeps its nodes' state.
fn lab_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("lab")
}

/// `--nodes N` (N > 1): `rudder lab up`, a namespace per node on one bridge, with routes from
/// this host so kubectl and `curl <pod IP>` work here.
fn up_lab(nodes: u32, data_dir: &Path, tools: &prereqs::Tools) -> Result<()> {
    step(
        "cargo build --release",
        cargo().args(["build", "--release", "-p", "rudder-control"]),
    )?;
    let binary = target_dir().join("release/rudder");
    let lab = lab_dir(data_dir);
    step(
        &format!("rudder lab up --nodes {nodes}"),
        Command::new(&binary)
            .args(["lab", "up", "--name", "lab", "--host-access"])
            .args(["--nodes", &nodes.to_string()])
            .arg("--data-dir")
            .arg(&lab),
    )?;
    let kubeconfig = lab.join("kubeconfig");
    println!(
        "rudder is up: {nodes} nodes (n1 runs the control plane). Kubeconfig: {}",
        kubeconfig.display()
    );
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  {} get nodes -o wide", tools.kubectl.display());
    println!("  node logs: {}/n*/rudder.log", lab.display());
    Ok(())
}

/// Stops the cluster (and deletes its data with `purge`).
pub fn down(data_dir: &Path, purge: bool) -> Result<()> {
    let lab = lab_dir(data_dir);
    if lab.exists() {
        let binary = target_dir().join("release/rudder");
        if !binary.exists() {
            // `up` ran with another target dir (or it was cleaned): the lab still needs removing.
            step(
                "cargo build --release",
                cargo().args(["build", "--release", "-p", "rudder-control"]),
            )?;
        }
        let mut command = Command::new(&binary);
        command
            .args(["lab", "down", "--name", "lab", "--data-dir"])
            .arg(&lab);
        if purge {
            command.arg("--purge");
        }
        step("rudder lab down", &mut command)?;
        if running_pid(data_dir).is_none() && !data_dir.join("agent").exists() {
            // Only the lab ran: nothing of a one-node cluster to stop.
            if purge && data_dir.exists() {
                std::fs::remove_dir_all(data_dir)
                    .with_context(|| format!("removing {}", data_dir.display()))?;
            }
            return Ok(());
        }
    }
    match running_pid(data_dir) {
        Some(pid) => {
            Command::new("kill")
                .arg(pid.to_string())
                .status()
                .context("kill")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .context("kill -9")?;
            }
            eprintln!("xtask: stopped rudder server (pid {pid})");
        }
        None => eprintln!("xtask: no rudder server running for {}", data_dir.display()),
    }
    let _ = std::fs::remove_file(pid_file(data_dir));
    remove_node(data_dir);
    if purge && data_dir.exists() {
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("removing {}", data_dir.display()))?;
        eprintln!("xtask: removed {}", data_dir.display());
    }
    Ok(())
}

/// Removes what the local node agent made: container processes (by the shims' pid files), pod
/// network namespaces, the bridge, the blackhole routes and the agent's state. Pod objects stay
/// in the store; the next `up` starts them again.
fn remove_node(data_dir: &Path) {
    fn pid_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                pid_files(&p, out);
            } else if matches!(p.file_name().and_then(|n| n.to_str()), Some("pid" | "shim")) {
                out.push(p);
            }
        }
    }
    let agent = data_dir.join("agent");
    let mut files = Vec::new();
    pid_files(&agent.join("pods"), &mut files);
    let mut killed = 0;
    for f in files {
        if let Ok(pid) = std::fs::read_to_string(&f)
            .unwrap_or_default()
            .trim()
            .parse::<u32>()
            && Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        {
            killed += 1;
        }
    }
    let mut sandboxes = 0;
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("rdrpod-")
            && Command::new("ip")
                .args(["netns", "del", &name])
                .status()
                .is_ok_and(|s| s.success())
        {
            sandboxes += 1;
        }
    }
    let quiet = |args: &[&str]| {
        let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
    };
    quiet(&["link", "del", "rudder0"]);
    for cidr in ["10.244.0.0/16", "10.96.0.0/12"] {
        quiet(&["route", "del", "blackhole", cidr]);
    }
    remove_pod_cgroups(&agent);
    let _ = std::fs::remove_dir_all(&agent);
    // Unpinning the datapath's links detaches its programs; its maps go with the last reference.
    let datapath = std::fs::remove_dir_all("/sys/fs/bpf/rudder").is_ok();
    eprintln!(
        "xtask: removed the node: {killed} container processes, {sandboxes} pod sandboxes, bridge rudder0{}",
        if datapath { ", eBPF datapath" } else { "" }
    );
}

/// Removes the cgroups (`rudder/<pod uid>/<container>` in every hierarchy) of the pods whose
/// state lies under `agent/pods`, waiting up to two seconds for killed processes to leave them.
fn remove_pod_cgroups(agent: &Path) {
    let uids: Vec<String> = std::fs::read_dir(agent.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let dirs: Vec<PathBuf> = ["", "memory", "cpu", "cpuacct", "cpu,cpuacct"]
        .iter()
        .flat_map(|h| {
            uids.iter()
                .map(move |u| Path::new("/sys/fs/cgroup").join(h).join("rudder").join(u))
        })
        .filter(|d| d.exists())
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        for dir in &dirs {
            for c in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        if dirs.iter().all(|d| !d.exists()) || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
