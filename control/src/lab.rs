//! `rudder lab`: a cluster of several nodes on one machine, each node a network namespace, as
//! DESIGN.md's test hosts describe (and `cargo xtask up --nodes N` uses).
//!
//! Layout of lab `<name>` with N nodes:
//! - `rdr-<name>-lab`: the switch, bridge `br0` with 172.30.0.250/24. Each node's uplink ends
//!   there (port `n<i>`). It has no route anywhere else.
//! - `rdr-<name>-n<i>` (node `n<i>`): uplink `eth0` with 172.30.0.<i>/24. `n1` runs `rudder
//!   server` (apiserver at https://172.30.0.1:6443, controllers, scheduler and its own node);
//!   the others run `rudder agent`, joined with the server's token. Every node runs the eBPF
//!   datapath with its own pins (`/sys/fs/bpf/rudder-<name>-n<i>`), XDP on `eth0`, and socket-LB
//!   limited to its own namespace (`--socket-lb-host-only`): all nodes share this machine's
//!   cgroup tree, so a node's connect-time translation must not touch the other nodes' sockets.
//!   Pods are translated per packet on their veths. Pod namespaces are `rdr-<name>-n<i>-p…`.
//! - The switch and the nodes' uplinks send complete checksums, as a wire would (see
//!   [`complete_checksums`]).
//! - The switch ports run a pass-through XDP program, so that a node's XDP NodePort program can
//!   forward packets to other nodes with `XDP_TX` (a native-mode veth only delivers such frames to
//!   a peer that runs XDP; see `Datapath::attach_veth_peer`).
//! - `--host-access`: a veth `rdr-<name>` from this host to the switch with 172.30.0.254/24, and
//!   a route to each node's PodCIDR via that node, so kubectl and `curl <pod IP>` work from the
//!   host. Without it, reach the cluster from inside the switch namespace
//!   (`ip netns exec rdr-<name>-lab kubectl ...`).
//!
//! State lives in the data dir: `n<i>/` per node (its log `rudder.log`, pid file `pid`, agent
//! state), and `kubeconfig` for the lab's apiserver address. Node processes are started with
//! `nsenter --net` (not `ip netns exec`, which would remount /sys and hide the host's cgroup and
//! bpf file systems) in their own session, so they outlive `rudder lab up`.
//!
//! `rudder lab stop-node --node n2` stops one node's process and leaves its pods running (a
//! stopped kubelet: the node turns NotReady, its pods are evicted after their toleration);
//! `start-node` runs the saved command line again and the agent adopts the running pods.
//!
//! `rudder lab down` stops the processes (SIGTERM, then SIGKILL after 10 s), kills container
//! processes left behind, removes the pods' cgroups, every `rdr-<name>-*` namespace (with their
//! links, bridges and routes), the host link and the eBPF pins. Nothing of the lab stays.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command as Process, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rudder_node::lab::{in_ns, ip};

/// Address of node `i` (1-based).
fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, i as u8)
}

/// The switch namespace's own address.
const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 250);
/// This host's address on the switch (`--host-access`).
const HOST_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);
/// Most nodes a lab may have (addresses below the switch's).
const MAX_NODES: u32 = 200;

/// `rudder lab` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Build the lab and start its nodes; returns when every node is Ready.
    Up(UpArgs),
    /// Stop the lab's processes and remove everything it made.
    Down(DownArgs),
    /// Stop one node's rudder process (its pods keep running, as with a stopped kubelet).
    StopNode(NodeArgs),
    /// Start a stopped node's rudder process again (it adopts the pods still running).
    StartNode(NodeArgs),
}

/// Flags naming one node of a lab.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// Lab name.
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// The lab's data dir.
    #[arg(long, default_value = "/var/lib/rudder-lab")]
    pub data_dir: PathBuf,
    /// The node, e.g. n2.
    #[arg(long)]
    pub node: String,
}

/// Flags of `rudder lab up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Lab name (lowercase letters and digits, at most 10): namespaces are `rdr-<name>-*`.
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Where the nodes keep their state and logs.
    #[arg(long, default_value = "/var/lib/rudder-lab")]
    pub data_dir: PathBuf,
    /// Give this host an address on the lab's switch and routes to the pods.
    #[arg(long)]
    pub host_access: bool,
    /// Service dataplane of every node: ebpf, iptables or none.
    #[arg(long, default_value = "ebpf", value_parser = ["ebpf", "iptables", "none"])]
    pub dataplane: String,
    /// Seconds to wait for every node to be Ready.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Flags of `rudder lab down`.
#[derive(clap::Args)]
pub struct DownArgs {
    /// Lab name.
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// The lab's data dir.
    #[arg(long, default_value = "/var/lib/rudder-lab")]
    pub data_dir: PathBuf,
    /// Also delete the data dir (the cluster's store, credentials and logs).
    #[arg(long)]
    pub purge: bool,
}

/// Runs a `rudder lab` command; the exit code is the process's.
pub fn main(command: Command) -> ! {
    let result = match command {
        Command::Up(args) => up(&args),
        Command::Down(args) => down(&args.name, &args.data_dir, args.purge),
        Command::StopNode(args) => stop_node(&args),
        Command::StartNode(args) => start_node(&args),
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("rudder lab: {e:#}");
            std::process::exit(1)
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 10
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        bail!("--name {name:?}: use 1 to 10 lowercase letters and digits");
    }
    Ok(())
}

fn switch_ns(name: &str) -> String {
    format!("rdr-{name}-lab")
}

fn node_ns(name: &str, i: u32) -> String {
    format!("rdr-{name}-n{i}")
}

fn node_dir(data_dir: &Path, i: u32) -> PathBuf {
    data_dir.join(format!("n{i}"))
}

/// The pid in `dir/pid` when that process still runs rudder.
fn running(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name in parentheses; a zombie has exited.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    // While a process execs, its command line may read empty: not a reason to call it gone.
    (state != "Z" && (cmdline.is_empty() || cmdline.contains("rudder"))).then_some(pid)
}

/// Node directories present in the data dir, by index.
fn node_indexes(data_dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(data_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix('n')?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

fn up(args: &UpArgs) -> Result<()> {
    check_name(&args.name)?;
    if args.nodes == 0 || args.nodes > MAX_NODES {
        bail!("--nodes {}: use 1 to {MAX_NODES}", args.nodes);
    }
    let name = &args.name;
    let kubeconfig = args.data_dir.join("kubeconfig");
    if let Some(pid) = running(&node_dir(&args.data_dir, 1)) {
        println!(
            "lab {name} is already running (server pid {pid}); kubeconfig: {}",
            kubeconfig.display()
        );
        return Ok(());
    }
    // Whatever a crashed run left (namespaces, pins) goes first.
    down(name, &args.data_dir, false).context("clearing an earlier run")?;
    let built = build(args).and_then(|()| start(args));
    if let Err(e) = built {
        eprintln!("rudder lab: {e:#}; removing the half-built lab (logs stay in the data dir)");
        let _ = down(name, &args.data_dir, false);
        return Err(e);
    }
    println!("lab {name} is up: {} node(s)", args.nodes);
    println!("  kubeconfig: {}", kubeconfig.display());
    if args.host_access {
        println!("  export KUBECONFIG={}", kubeconfig.display());
    } else {
        println!(
            "  ip netns exec {} kubectl --kubeconfig {} get nodes",
            switch_ns(name),
            kubeconfig.display()
        );
    }
    println!("  logs: {}/n*/rudder.log", args.data_dir.display());
    println!(
        "  remove: rudder lab down --name {name} --data-dir {}",
        args.data_dir.display()
    );
    Ok(())
}

/// Namespaces, links and addresses.
fn build(args: &UpArgs) -> Result<()> {
    let name = &args.name;
    let switch = switch_ns(name);
    ip(&["netns", "add", &switch])?;
    ip(&["-n", &switch, "link", "set", "lo", "up"])?;
    ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        &switch,
        "addr",
        "add",
        &format!("{SWITCH_IP}/24"),
        "dev",
        "br0",
    ])?;
    ip(&["-n", &switch, "link", "set", "br0", "up"])?;
    complete_checksums(&switch, "br0")?;
    for i in 1..=args.nodes {
        let ns = node_ns(name, i);
        let port = format!("n{i}");
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", node_ip(i)),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        complete_checksums(&ns, "eth0")?;
    }
    if args.host_access {
        let host_if = format!("rdr-{name}");
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "host", "netns", &switch,
        ])?;
        ip(&["-n", &switch, "link", "set", "host", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        rudder_node::command::run(None, "ethtool", &["-K", &host_if, "tx", "off"], None)?;
    }
    Ok(())
}

/// Makes `ifname` in `ns` send complete checksums, as frames on a wire have. A veth otherwise
/// leaves them to "hardware" (CHECKSUM_PARTIAL), and a frame that a node's XDP program
/// forwards to another node (`XDP_TX`) loses that state on the way, so the receiver would
/// see a bad checksum and drop it. Real uplinks never carry such frames.
fn complete_checksums(ns: &str, ifname: &str) -> Result<()> {
    rudder_node::lab::exec(ns, "ethtool", &["-K", ifname, "tx", "off"], None)?;
    Ok(())
}

/// Starts the server and the agents and waits for them.
fn start(args: &UpArgs) -> Result<()> {
    let name = &args.name;
    let exe = std::env::current_exe().context("finding the rudder binary")?;
    let server_dir = node_dir(&args.data_dir, 1);
    let port = 6443;
    let server_url = format!("https://{}:{port}", node_ip(1));
    for i in 1..=args.nodes {
        let dir = node_dir(&args.data_dir, i);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut command: Vec<String> = if i == 1 {
            vec![
                "server".into(),
                "--advertise-address".into(),
                node_ip(1).to_string(),
                "--secure-port".into(),
                port.to_string(),
                // The lab is closed: its DNS answers cluster names and refuses the rest, so no
                // query leaves the machine.
                "--dns-upstream".into(),
                "none".into(),
            ]
        } else {
            vec![
                "agent".into(),
                "--server".into(),
                server_url.clone(),
                "--token-file".into(),
                server_dir.join("token").display().to_string(),
                "--node-ip".into(),
                node_ip(i).to_string(),
            ]
        };
        command.extend([
            "--data-dir".into(),
            dir.display().to_string(),
            "--node-name".into(),
            format!("n{i}"),
            "--dataplane".into(),
            args.dataplane.clone(),
            "--nodeport-interfaces".into(),
            "eth0".into(),
            "--socket-lb-host-only".into(),
            "--bpf-pin-dir".into(),
            format!("/sys/fs/bpf/rudder-{name}-n{i}"),
            "--pod-netns-prefix".into(),
            format!("rdr-{name}-n{i}-p"),
        ]);
        if args.dataplane != "ebpf" {
            // XDP uplinks exist only with the eBPF datapath.
            let at = command.iter().position(|a| a == "--nodeport-interfaces");
            if let Some(at) = at {
                command.drain(at..at + 2);
            }
        }
        spawn(&exe, &node_ns(name, i), &dir, &command)?;
        if i == 1 {
            // The agents need the server's join token; the server writes it while starting.
            wait_for(Duration::from_secs(30), &server_dir, || {
                server_dir.join("token").exists() && server_dir.join("kubeconfig").exists()
            })?;
        }
    }
    // The admin kubeconfig names 127.0.0.1, which is the server's own namespace; outside it the
    // server is at node 1's address.
    let admin = std::fs::read_to_string(server_dir.join("kubeconfig"))
        .context("reading the server's kubeconfig")?;
    let kubeconfig = args.data_dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        admin.replace(&format!("https://127.0.0.1:{port}"), &server_url),
    )
    .with_context(|| format!("writing {}", kubeconfig.display()))?;
    if args.dataplane == "ebpf" {
        attach_switch_ports(name, args.nodes)?;
    }
    let pod_cidrs = in_ns(&switch_ns(name), || {
        wait_ready(&kubeconfig, args.nodes, Duration::from_secs(args.timeout))
    })??;
    if args.host_access {
        let host_if = format!("rdr-{name}");
        for (i, cidr) in pod_cidrs {
            ip(&[
                "route",
                "replace",
                &cidr,
                "via",
                &node_ip(i).to_string(),
                "dev",
                &host_if,
            ])?;
        }
    }
    Ok(())
}

/// Starts `rudder <command>` in namespace `ns`, in its own session, logging to `dir/rudder.log`.
fn spawn(exe: &Path, ns: &str, dir: &Path, command: &[String]) -> Result<()> {
    let log_path = dir.join("rudder.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let child = Process::new("setsid")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(exe)
        .args(command)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting setsid nsenter rudder")?;
    std::fs::write(dir.join("pid"), child.id().to_string())?;
    // What `start-node` runs again: the namespace, then the arguments, one per line.
    let mut saved = format!("{ns}\n");
    for arg in command {
        saved.push_str(arg);
        saved.push('\n');
    }
    std::fs::write(dir.join("command"), saved)?;
    Ok(())
}

/// The directory of node `node` (`n<i>`) of the lab.
fn named_node_dir(args: &NodeArgs) -> Result<PathBuf> {
    check_name(&args.name)?;
    let dir = args.data_dir.join(&args.node);
    let valid = args
        .node
        .strip_prefix('n')
        .is_some_and(|i| i.parse::<u32>().is_ok());
    if !valid || !dir.join("command").exists() {
        bail!(
            "--node {}: no such node in {} (nodes are n1, n2, ...)",
            args.node,
            args.data_dir.display()
        );
    }
    Ok(dir)
}

fn stop_node(args: &NodeArgs) -> Result<()> {
    let dir = named_node_dir(args)?;
    let Some(pid) = running(&dir) else {
        println!("node {} is not running", args.node);
        return Ok(());
    };
    signal(&[pid], "-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(&dir).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&[pid], "-KILL");
    println!(
        "stopped node {} (pid {pid}); its pods keep running",
        args.node
    );
    Ok(())
}

fn start_node(args: &NodeArgs) -> Result<()> {
    let dir = named_node_dir(args)?;
    if let Some(pid) = running(&dir) {
        println!("node {} is already running (pid {pid})", args.node);
        return Ok(());
    }
    let saved = std::fs::read_to_string(dir.join("command"))
        .with_context(|| format!("reading {}", dir.join("command").display()))?;
    let mut lines = saved.lines();
    let ns = lines.next().unwrap_or_default().to_owned();
    let command: Vec<String> = lines.map(str::to_owned).collect();
    let exe = std::env::current_exe().context("finding the rudder binary")?;
    spawn(&exe, &ns, &dir, &command)?;
    println!("started node {}", args.node);
    Ok(())
}

/// Polls `ready` until it holds, failing after `limit` (or when the node's process died).
fn wait_for(limit: Duration, dir: &Path, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if running(dir).is_none() {
            bail!(
                "the process of {} exited; see {}",
                dir.display(),
                dir.join("rudder.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not start within {limit:?}; see {}",
                dir.display(),
                dir.join("rudder.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The pass-through XDP program on every switch port (run inside the switch namespace).
fn attach_switch_ports(name: &str, nodes: u32) -> Result<()> {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/rudder-{name}-lab"));
    in_ns(&switch_ns(name), || -> Result<()> {
        let mut datapath = rudder_node::proxy::ebpf::Datapath::open(&pin_dir, Default::default())
            .context("loading the pass-through XDP program")?;
        for i in 1..=nodes {
            datapath
                .attach_veth_peer(&format!("n{i}"))
                .with_context(|| format!("attaching XDP to switch port n{i}"))?;
        }
        Ok(())
    })?
}

/// Waits until `nodes` Nodes are Ready and have PodCIDRs; returns (index, PodCIDR).
fn wait_ready(kubeconfig: &Path, nodes: u32, limit: Duration) -> Result<Vec<(u32, String)>> {
    use k8s_openapi::api::core::v1::Node;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime.block_on(async {
        let config = kube::config::Kubeconfig::read_from(kubeconfig)
            .context("reading the lab kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .context("loading the lab kubeconfig")?;
        let client = kube::Client::try_from(config).context("building a client")?;
        let api: kube::Api<Node> = kube::Api::all(client);
        let deadline = Instant::now() + limit;
        loop {
            let last = match api.list(&Default::default()).await {
                Ok(list) => {
                    let ready: Vec<(u32, String)> = list
                        .items
                        .iter()
                        .filter(|n| {
                            n.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| {
                                    c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                        })
                        .filter_map(|n| {
                            let i = n
                                .metadata
                                .name
                                .as_deref()?
                                .strip_prefix('n')?
                                .parse()
                                .ok()?;
                            Some((i, n.spec.as_ref()?.pod_cidr.clone()?))
                        })
                        .collect();
                    if ready.len() as u32 >= nodes {
                        return Ok(ready);
                    }
                    format!("{} of {nodes} nodes Ready", ready.len())
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "the lab's nodes did not become Ready within {limit:?} ({last}); see the logs"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Stops and removes lab `name`.
pub fn down(name: &str, data_dir: &Path, purge: bool) -> Result<()> {
    check_name(name)?;
    let indexes = node_indexes(data_dir);
    // Stop the node processes: TERM, then KILL.
    let pids: Vec<u32> = indexes
        .iter()
        .filter_map(|i| running(&node_dir(data_dir, *i)))
        .collect();
    signal(&pids, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&pids, "-KILL");
    // Container processes and their cgroups.
    let layout = rudder_node::runtime::cgroups::Layout::detect(Path::new(
        rudder_node::runtime::cgroups::ROOT,
    ));
    let mut containers = 0;
    let (mut killed, mut uids) = (Vec::new(), Vec::new());
    for i in &indexes {
        let pods = node_dir(data_dir, *i).join("agent").join("pods");
        for pod in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            let uid = pod.file_name().to_string_lossy().into_owned();
            let mut files = Vec::new();
            pid_files(&pod.path(), &mut files);
            // A pid file may outlive its process and the number be reused: only processes that
            // are still the pod's (a shim, the built-in image, or in the pod's cgroup) are killed.
            let pids: Vec<u32> = files
                .iter()
                .filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
                .filter(|pid| {
                    let read = |what: &str| {
                        std::fs::read_to_string(format!("/proc/{pid}/{what}")).unwrap_or_default()
                    };
                    read("cmdline").contains("rudder") || read("cgroup").contains(&uid)
                })
                .collect();
            containers += pids.len();
            signal(&pids, "-KILL");
            killed.extend(pids);
            uids.push(uid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for uid in &uids {
        rudder_node::runtime::cgroups::remove(&layout, uid);
    }
    // Namespaces: pods first, then nodes, then the switch.
    let prefix = format!("rdr-{name}-");
    let mut namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    namespaces.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for ns in &namespaces {
        let _ = ip(&["netns", "del", ns]);
    }
    let host_if = format!("rdr-{name}");
    let _ = Process::new("ip")
        .args(["link", "del", &host_if])
        .stderr(Stdio::null())
        .status();
    let mut pins = 0;
    for entry in std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("rudder-{name}-"))
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            pins += 1;
        }
    }
    if purge && data_dir.exists() {
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("removing {}", data_dir.display()))?;
    } else {
        // Pod state goes with the pods; the store and credentials stay for the next `up`.
        for i in &indexes {
            let _ = std::fs::remove_dir_all(node_dir(data_dir, *i).join("agent"));
            let _ = std::fs::remove_file(node_dir(data_dir, *i).join("pid"));
        }
    }
    if !pids.is_empty() || !namespaces.is_empty() || pins > 0 {
        eprintln!(
            "rudder lab: removed lab {name}: {} node process(es), {containers} container process(es), {} namespace(s), {pins} eBPF pin dir(s)",
            pids.len(),
            namespaces.len()
        );
    }
    Ok(())
}

fn signal(pids: &[u32], sig: &str) {
    for pid in pids {
        let _ = Process::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// The shims' and containers' pid files under a pods directory.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("lab").is_ok());
        assert!(check_name("t123x4").is_ok());
        for bad in ["", "Lab", "a-b", "elevenchars", "x y"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nodes_get_addresses_below_the_switch() {
        assert_eq!(node_ip(1), Ipv4Addr::new(172, 30, 0, 1));
        assert!(u32::from(node_ip(MAX_NODES)) < u32::from(SWITCH_IP));
    }
}
