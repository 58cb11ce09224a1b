//! `rudder`: one binary, k3s-style, with a subcommand per role. This file only parses flags and
//! starts things; the work lives in the libraries.

use std::{net::IpAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rudder_control::{api::allocator::Cidr, lab, server};

/// rudder: a compact Kubernetes-style cluster whose Service networking runs as eBPF programs.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (apiserver on the embedded store, or on etcd).
    ///
    /// Writes an admin kubeconfig to DATA_DIR/kubeconfig and a node join token to DATA_DIR/token.
    Server(Box<ServerArgs>),
    /// Join a node to a cluster: run pods bound to it and its Service dataplane.
    ///
    /// Reads the join token that `rudder server` wrote to DATA_DIR/token (it names the hash of
    /// the cluster CA, which is fetched from the server and checked), registers the Node and
    /// renews its Lease.
    Agent(AgentArgs),
    /// A multi-node cluster on this machine: a network namespace per node on one bridge.
    ///
    /// `rudder lab up --nodes 3` runs `rudder server` in the first node's namespace and `rudder
    /// agent` in the others, waits until every node is Ready and prints the kubeconfig;
    /// `rudder lab down` removes every trace (processes, namespaces, links, routes, cgroups,
    /// eBPF pins). `cargo xtask up --nodes N` calls it.
    Lab {
        #[command(subcommand)]
        command: lab::Command,
    },
    /// Run the Service proxy alone, from a YAML file of Services and EndpointSlices.
    ///
    /// Programs the eBPF datapath (or kube-proxy-style iptables rules) and keeps it in step with
    /// the file, re-reading it when it changes. Stopping leaves the dataplane in place so
    /// connections survive a restart; --cleanup removes it.
    Proxy(ProxyArgs),
    /// Run the cluster DNS alone (it also runs inside `rudder server`).
    ///
    /// Answers the Kubernetes DNS specification's records for the cluster's Services,
    /// EndpointSlices and Pods from watches (hickory-dns), on UDP and TCP, and forwards other
    /// names to /etc/resolv.conf's nameservers.
    Dns(DnsCommandArgs),
    /// Run the ingress proxy alone (it also runs inside `rudder server`).
    ///
    /// Routes HTTP requests by the cluster's Ingresses of class `rudder` (controller
    /// rudder.dev/ingress) and Gateway API HTTPRoutes of Gateways of class `rudder` (controller
    /// rudder.dev/gateway) straight to the ready endpoints of their backend Services, through a
    /// pingora proxy whose routing table follows the cluster from watches.
    Ingress(IngressCommandArgs),
    /// Print the version and exit.
    Version,
    /// Container shim (started by the node agent, one per container).
    #[command(hide = true)]
    Shim {
        /// Shim flags, then `--` and the container's command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The built-in agnhost test image: netexec, serve-hostname, pause.
    #[command(hide = true)]
    Agnhost {
        /// agnhost subcommand and its flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// YAML with Services and EndpointSlices (multi-document, as `kubectl get -o yaml` lists or
    /// manifests write them).
    #[arg(long, required_unless_present = "cleanup")]
    services: Option<PathBuf>,
    /// Which dataplane programs the services.
    #[arg(long, default_value = "ebpf")]
    dataplane: rudder_node::proxy::standalone::Dataplane,
    /// This node's name (decides which endpoints are local).
    #[arg(long, default_value = "localhost")]
    node_name: String,
    /// This node's addresses, on which NodePorts are served.
    #[arg(long, value_delimiter = ',')]
    node_ip: Vec<std::net::Ipv4Addr>,
    /// Pod host-side interfaces to attach the eBPF pod program to.
    #[arg(long, value_delimiter = ',')]
    interfaces: Vec<String>,
    /// The node's uplinks: XDP NodePort for clients outside the node (needs --node-ip).
    #[arg(long, value_delimiter = ',')]
    uplinks: Vec<String>,
    /// cgroup v2 directory whose processes get socket-LB (e.g. /sys/fs/cgroup/unified).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// bpffs directory for the datapath's pins.
    #[arg(long, default_value = rudder_node::proxy::ebpf::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Backend choice for new flows.
    #[arg(long, default_value = "maglev", value_parser = ["maglev", "random"])]
    lb_algorithm: String,
    /// Service CIDR, blackholed so unmatched service addresses never leave the node.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Program once and exit.
    #[arg(long)]
    once: bool,
    /// Remove the dataplane (pins and links, or iptables chains) and exit.
    #[arg(long)]
    cleanup: bool,
}

/// Settings of the cluster DNS, shared by `rudder server` and `rudder dns`.
#[derive(clap::Args, Clone)]
struct DnsArgs {
    /// The cluster domain: the DNS zone, and the search domains of pods' resolv.conf.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Addresses DNS answers on, UDP and TCP (default for `rudder server`: the advertise
    /// address, port 53, where the kube-dns Service 10.96.0.10 sends pods' queries).
    #[arg(long, value_delimiter = ',')]
    dns_addr: Vec<std::net::SocketAddr>,
    /// TTL of DNS answers, in seconds.
    #[arg(long, default_value_t = 30)]
    dns_ttl: u32,
    /// TTL of negative DNS answers (NXDOMAIN, NODATA: the SOA minimum), in seconds.
    #[arg(long, default_value_t = 5)]
    dns_negative_ttl: u32,
    /// Where DNS sends names outside the cluster domain: `system` (/etc/resolv.conf's
    /// nameservers), `none` (answered REFUSED), or servers `IP[:port],...`. Answers are cached
    /// for their TTL.
    #[arg(long, alias = "upstream", default_value = "system")]
    dns_upstream: rudder_dns::server::Upstream,
    /// Serve DNS metrics (Prometheus text) over HTTP at this address, path /metrics.
    #[arg(long)]
    dns_metrics_addr: Option<std::net::SocketAddr>,
}

impl DnsArgs {
    fn options(
        &self,
        addrs: Vec<std::net::SocketAddr>,
        service_ip: Option<IpAddr>,
    ) -> rudder_dns::Options {
        rudder_dns::Options {
            zone: self.cluster_domain.clone(),
            ttl: self.dns_ttl,
            negative_ttl: self.dns_negative_ttl,
            addrs,
            service_ip,
            upstream: self.dns_upstream.clone(),
            metrics_addr: self.dns_metrics_addr,
        }
    }
}

#[derive(clap::Args)]
struct DnsCommandArgs {
    /// Kubeconfig of the cluster to serve (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The DNS Service's address, named by the zone's NS record.
    #[arg(long)]
    service_ip: Option<IpAddr>,
    #[command(flatten)]
    dns: DnsArgs,
}

/// Settings of the ingress proxy, shared by `rudder server` and `rudder ingress`.
#[derive(clap::Args, Clone)]
struct IngressArgs {
    /// Address the ingress serves plain HTTP on.
    #[arg(long, default_value = "0.0.0.0:80")]
    ingress_http_addr: std::net::SocketAddr,
    /// Address the ingress serves HTTPS on (certificates from the Ingresses' TLS Secrets, by
    /// SNI); `none` turns HTTPS off.
    #[arg(long, default_value = "0.0.0.0:443")]
    ingress_https_addr: OptionalAddr,
    /// Serve the ingress's metrics (Prometheus text) over HTTP at this address, path /metrics.
    #[arg(long)]
    ingress_metrics_addr: Option<std::net::SocketAddr>,
    /// Worker threads of the ingress proxy (0: one per core).
    #[arg(long, default_value_t = 0)]
    ingress_threads: usize,
    /// Addresses the ingress reports to clients: written to Ingresses' status.loadBalancer
    /// (kubectl's ADDRESS column) and Gateways' status.addresses (default: the HTTP address's
    /// IP; for `rudder server` with a wildcard HTTP address, the advertise address).
    #[arg(long, value_delimiter = ',')]
    ingress_status_address: Vec<std::net::IpAddr>,
}

impl IngressArgs {
    fn options(&self) -> rudder_ingress::Options {
        rudder_ingress::Options {
            http_addr: self.ingress_http_addr,
            https_addr: self.ingress_https_addr.0,
            metrics_addr: self.ingress_metrics_addr,
            threads: self.ingress_threads,
            status_addresses: self.ingress_status_address.clone(),
        }
    }
}

/// An address, or `none`.
#[derive(Clone, Copy, Debug)]
struct OptionalAddr(Option<std::net::SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(OptionalAddr(None)),
            addr => addr
                .parse()
                .map(|a| OptionalAddr(Some(a)))
                .map_err(|e| format!("{addr:?}: {e} (expected IP:port or none)")),
        }
    }
}

#[derive(clap::Args)]
struct IngressCommandArgs {
    /// Kubeconfig of the cluster to serve (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    ingress: IngressArgs,
}

/// Settings of a node agent, shared by `rudder server` (its local node) and `rudder agent`.
#[derive(clap::Args, Clone)]
struct NodeArgs {
    /// Service dataplane of the node agent: ebpf, iptables (kube-proxy's rules, the comparison
    /// peer) or none.
    #[arg(long, default_value = "ebpf", value_parser = ["ebpf", "iptables", "none"])]
    dataplane: String,
    /// Interfaces where the eBPF NodePort program (XDP) serves clients outside the node (and
    /// forwards NodePort flows to backends on other nodes, source-translated). On a cluster of
    /// several nodes, list the interfaces that reach the other nodes: replies of backends there
    /// to this node's pods get their service address back on them. The node's own processes and
    /// pods reach NodePorts without it.
    #[arg(long, value_delimiter = ',')]
    nodeport_interfaces: Vec<String>,
    /// Port where the node agent serves container logs to the apiserver (`kubectl logs`), on
    /// the node address; 0 picks a free port (tests running several servers).
    #[arg(long, default_value_t = rudder_node::kubelet_api::PORT)]
    kubelet_port: u16,
    /// Socket-LB (connect-time translation) only for processes in the node's own network
    /// namespace; pods' service traffic is then translated per packet on their veths (for
    /// sidecar meshes that must see the ClusterIP, like Cilium's bpf-lb-sock-hostns-only, and
    /// for nodes sharing one machine, as in `rudder lab`).
    #[arg(long)]
    socket_lb_host_only: bool,
    /// bpffs directory for the eBPF datapath's pins (kept across restarts).
    #[arg(long, default_value = rudder_node::proxy::ebpf::DEFAULT_PIN_DIR, hide = true)]
    bpf_pin_dir: PathBuf,
    /// Name of the node (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// A container's log is rotated once it would grow past this size (the kubelet's
    /// `containerLogMaxSize`), e.g. `10Mi`.
    #[arg(long, default_value = "10Mi", value_parser = parse_bytes)]
    container_log_max_size: u64,
    /// Log files kept per container, the live one included (`containerLogMaxFiles`).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    container_log_max_files: u32,
    /// Bridge the node's pods attach to.
    #[arg(long, default_value = "rudder0", hide = true)]
    pod_bridge: String,
    /// Prefix of the node's pod network namespace names.
    #[arg(long, default_value = "rdrpod-", hide = true)]
    pod_netns_prefix: String,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The apiserver, e.g. https://172.30.0.1:6443.
    #[arg(long)]
    server: String,
    /// The join token file (the server's DATA_DIR/token).
    #[arg(long)]
    token_file: PathBuf,
    /// The cluster CA (PEM); only needed with a bare token that names no CA hash.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// This node's address (InternalIP); default: the local address that routes to the server.
    #[arg(long)]
    node_ip: Option<std::net::Ipv4Addr>,
    /// Where the agent keeps its state (pods, logs): DATA_DIR/agent.
    #[arg(long, default_value = "/var/lib/rudder")]
    data_dir: PathBuf,
    /// Pod network of the cluster (blackholed on the node; the node's PodCIDR comes from it).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Cidr,
    /// Service ClusterIP range of the cluster.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: Cidr,
    /// The cluster domain, for the search domains of pods' resolv.conf (the server's
    /// `--cluster-domain`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, credentials and kubeconfig live.
    #[arg(long, default_value = "/var/lib/rudder")]
    data_dir: PathBuf,
    /// etcd client URLs (comma-separated); without it the embedded store is used.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Address the apiserver listens on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port of the apiserver.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Pod network; each node gets a /24 from it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Cidr,
    /// Service ClusterIP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: Cidr,
    /// Address advertised to nodes and pods (default: the bind address, or the host's first
    /// global IPv4 address).
    #[arg(long)]
    advertise_address: Option<std::net::Ipv4Addr>,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    dns: DnsArgs,
    #[command(flatten)]
    ingress: IngressArgs,
    /// Parts not to start: any of agent, dns, ingress.
    #[arg(long, value_delimiter = ',', value_parser = ["agent", "dns", "ingress"])]
    disable: Vec<String>,
}

/// `rudder proxy`: program the file's services and follow the file.
async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    use rudder_node::proxy::{
        model::{Objects, build},
        plan::Algorithm,
        standalone::{Proxy, ProxyConfig},
    };
    let config = ProxyConfig {
        dataplane: args.dataplane,
        node_ips: args.node_ip,
        interfaces: args.interfaces,
        uplinks: args.uplinks,
        cgroup: args.cgroup,
        socket_lb_host_only: false,
        pin_dir: args.pin_dir,
        algorithm: if args.lb_algorithm == "random" {
            Algorithm::Random
        } else {
            Algorithm::Maglev
        },
        service_cidr: Some(args.service_cidr),
    };
    if args.cleanup {
        Proxy::cleanup(&config).context("cleaning up")?;
        tracing::info!("dataplane removed");
        return Ok(());
    }
    let Some(path) = args.services else {
        anyhow::bail!("--services FILE is required");
    };
    let mut proxy = Proxy::start(&config).context("starting the dataplane")?;
    let mut last_modified = None;
    let mut ticks = 0u64;
    loop {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified != last_modified || last_modified.is_none() {
            last_modified = modified;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()));
            match text.and_then(|t| Objects::from_yaml(&t).map_err(anyhow::Error::from)) {
                Ok(objects) => {
                    let state = build(&objects, &args.node_name);
                    let report = proxy.sync(&state).context("programming the dataplane")?;
                    tracing::info!(
                        frontends = state.frontends.len(),
                        writes = report.writes,
                        micros = report.elapsed.as_micros() as u64,
                        "synced"
                    );
                }
                // Keep the last good state: a half-written file must not empty the dataplane.
                Err(e) => {
                    tracing::error!(file = %path.display(), "{e:#}; keeping the last good state")
                }
            }
        }
        if args.once {
            return Ok(());
        }
        ticks += 1;
        if ticks.is_multiple_of(10) {
            let swept = proxy.gc();
            if swept > 0 {
                tracing::debug!(swept, "conntrack sweep");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("stopping; the dataplane stays in place (rudder proxy --cleanup removes it)");
                return Ok(());
            }
        }
    }
}

/// Resolves on SIGTERM.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // hickory-server logs every DNS response at info.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// mimalloc for `rudder server`, the system allocator for the rest (see
/// `rudder_control::alloc`).
#[global_allocator]
static ALLOCATOR: rudder_control::alloc::ByRole = rudder_control::alloc::ByRole;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The shim must create namespaces while single-threaded, so it runs before any runtime.
    match cli.command {
        Command::Shim { args } => std::process::exit(rudder_node::runtime::shim::main(&args)),
        Command::Agnhost { args } => std::process::exit(rudder_node::agnhost::main(&args)),
        // The lab enters network namespaces, which is simplest before any thread exists.
        Command::Lab { command } => lab::main(command),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .on_thread_park(rudder_control::alloc::collect_idle)
            .build()
            .context("starting the async runtime")?
            .block_on(run(command)),
    }
}

/// The node agent's settings from the shared node flags.
fn agent_config(
    node: &NodeArgs,
    node_ip: std::net::Ipv4Addr,
    data_dir: &std::path::Path,
    cluster_cidr: Cidr,
    service_cidr: Cidr,
    kubelet_token: String,
) -> anyhow::Result<rudder_node::agent::AgentConfig> {
    let node_name = node.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_else(|_| "localhost".into())
    });
    let shim = std::env::current_exe().context("finding the rudder binary")?;
    let mut agent = rudder_node::agent::AgentConfig::new(&node_name, node_ip, shim);
    agent.root = data_dir.join("agent");
    agent.cluster_cidr = cluster_cidr.to_string();
    agent.service_cidr = service_cidr.to_string();
    agent.cluster_dns = service_cidr.nth(10);
    agent.api_service = (service_cidr.nth(1), 443);
    agent.bridge = node.pod_bridge.clone();
    agent.netns_prefix = node.pod_netns_prefix.clone();
    agent.kubelet_port = node.kubelet_port;
    agent.kubelet_token = Some(kubelet_token);
    agent.container_logs = rudder_node::runtime::shim::LogRotation {
        max_size: node.container_log_max_size,
        max_files: node.container_log_max_files,
    };
    agent.proxy = match node.dataplane.as_str() {
        "none" => None,
        dataplane => Some(rudder_node::proxy::standalone::ProxyConfig {
            dataplane: dataplane.parse().map_err(anyhow::Error::msg)?,
            node_ips: vec![node_ip],
            interfaces: Vec::new(),
            uplinks: node.nodeport_interfaces.clone(),
            cgroup: rudder_node::proxy::ebpf::cgroup2_mount(),
            socket_lb_host_only: node.socket_lb_host_only,
            pin_dir: node.bpf_pin_dir.clone(),
            algorithm: rudder_node::proxy::plan::Algorithm::Maglev,
            service_cidr: Some(service_cidr.to_string()),
        }),
    };
    Ok(agent)
}

/// The in-cluster clients: scheduler, node IPAM and (unless disabled) the local node agent,
/// each talking to this apiserver through kube-rs with the admin kubeconfig.
async fn start_cluster_parts(
    server: &server::Server,
    args: &ServerArgs,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig)
        .context("reading the admin kubeconfig")?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("loading the admin kubeconfig")?;
    // None of these reads managedFields: spare both sides encoding and decoding them.
    config.headers.push((
        http::HeaderName::from_static(rudder_control::api::request::OMIT_MANAGED_FIELDS),
        http::HeaderValue::from_static("omit"),
    ));
    let client = kube::Client::try_from(config).context("building the client")?;
    // The scheduler and the controllers run only while this server holds their leases; a
    // server that loses one stops (see `rudder_control::leader`).
    let me = rudder_control::leader::identity(&args.data_dir);
    let elected = |lease: &'static str, start: Box<dyn FnOnce() -> Vec<_> + Send>| {
        let (client, me) = (client.clone(), me.clone());
        tokio::spawn(async move {
            rudder_control::leader::lead(client, lease, &me, start).await;
            tracing::error!(lease, "leaderelection lost; stopping");
            std::process::exit(1);
        })
    };
    let scheduler_client = client.clone();
    let controllers_client = client.clone();
    let cluster_cidr = args.cluster_cidr;
    let ca_pem = server.state.credentials.tls.ca_pem.clone();
    let mut tasks = vec![
        elected(
            "kube-scheduler",
            Box::new(move || {
                vec![tokio::spawn(rudder_control::scheduler::run(
                    scheduler_client,
                ))]
            }),
        ),
        elected(
            "kube-controller-manager",
            Box::new(move || {
                rudder_control::controllers::start(controllers_client, cluster_cidr, ca_pem.clone())
            }),
        ),
    ];
    if !args.disable.iter().any(|d| d == "dns") {
        let service_ip = IpAddr::V4(args.service_cidr.nth(10));
        let addrs = if args.dns.dns_addr.is_empty() {
            vec![std::net::SocketAddr::new(
                server.advertise_address.into(),
                53,
            )]
        } else {
            args.dns.dns_addr.clone()
        };
        let options = args.dns.options(addrs.clone(), Some(service_ip));
        let dns_client = client.clone();
        // Pods reach this server's DNS at the first address, or at the advertise address when
        // that one is a wildcard or loopback.
        let first = addrs[0];
        let endpoint = if first.ip().is_unspecified() || first.ip().is_loopback() {
            std::net::SocketAddr::new(server.advertise_address.into(), first.port())
        } else {
            first
        };
        let publish_client = client.clone();
        tasks.push(tokio::spawn(async move {
            while let Err(e) = publish_kube_dns(publish_client.clone(), service_ip, endpoint).await
            {
                tracing::warn!("kube-dns Service (retrying in 5 s): {e:#}");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = rudder_dns::run(dns_client, options, std::future::pending()).await {
                tracing::error!("cluster DNS stopped: {e}");
            }
        }));
    }
    if !args.disable.iter().any(|d| d == "ingress") {
        let class_client = client.clone();
        tasks.push(tokio::spawn(async move {
            while let Err(e) = publish_ingress_class(class_client.clone()).await {
                tracing::warn!("IngressClass rudder (retrying in 5 s): {e:#}");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }));
        let mut options = args.ingress.options();
        if options.status_addresses.is_empty() && options.http_addr.ip().is_unspecified() {
            options.status_addresses = vec![server.advertise_address.into()];
        }
        let ingress_client = client.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                rudder_ingress::run(ingress_client, options, std::future::pending()).await
            {
                tracing::error!("ingress stopped: {e}");
            }
        }));
    }
    if !args.disable.iter().any(|d| d == "agent") {
        let agent = agent_config(
            &args.node,
            server.advertise_address,
            &args.data_dir,
            args.cluster_cidr,
            args.service_cidr,
            server.state.credentials.node_token.clone(),
        )?;
        let mut agent = agent;
        agent.cluster_domain = args.dns.cluster_domain.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = rudder_node::agent::run(client, agent).await {
                tracing::error!("node agent stopped: {:#}", anyhow::Error::from(e));
            }
        }));
    }
    Ok(tasks)
}

/// A client for the kubeconfig at `path` (else $KUBECONFIG, then ~/.kube/config).
async fn client_for(path: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("loading {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig")?,
    };
    kube::Client::try_from(config).context("building the client")
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn stop_requested() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminated() => {},
    }
}

/// `rudder ingress`: serve the ingress of a kubeconfig's cluster until stopped.
async fn ingress(args: IngressCommandArgs) -> anyhow::Result<()> {
    let client = client_for(args.kubeconfig.as_ref()).await?;
    rudder_ingress::run(client, args.ingress.options(), async {
        stop_requested().await;
        tracing::info!("stopping the ingress");
    })
    .await
    .context("ingress")?;
    Ok(())
}

/// The IngressClass `rudder` (controller rudder.dev/ingress), marked the default class, created
/// when missing (an existing one is kept as it is, so a user may take the default away).
async fn publish_ingress_class(client: kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::networking::v1::IngressClass;
    use kube::api::{Api, PostParams};
    let class: IngressClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "rudder", "annotations": {
            rudder_ingress::routes::DEFAULT_CLASS_ANNOTATION: "true"}},
        "spec": {"controller": rudder_ingress::routes::CONTROLLER},
    }))?;
    let api: Api<IngressClass> = Api::all(client);
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `rudder dns`: serve the cluster DNS of a kubeconfig's cluster until stopped.
async fn dns(args: DnsCommandArgs) -> anyhow::Result<()> {
    let client = client_for(args.kubeconfig.as_ref()).await?;
    let addrs = if args.dns.dns_addr.is_empty() {
        vec!["127.0.0.1:53".parse().context("default address")?]
    } else {
        args.dns.dns_addr.clone()
    };
    let options = args.dns.options(addrs, args.service_ip);
    let stop = async {
        stop_requested().await;
        tracing::info!("stopping DNS");
    };
    rudder_dns::run(client, options, stop)
        .await
        .context("DNS")?;
    Ok(())
}

/// The `kube-dns` Service (kube-system, the service CIDR's 10th address, 53/UDP and 53/TCP)
/// and an EndpointSlice per server (`kube-dns-<address>`) pointing at its DNS, so pods'
/// resolv.conf nameserver works through the Service dataplane like any ClusterIP, balanced over
/// the servers. The Service is kept as it is when it exists. A server that is gone for good
/// leaves its slice behind (delete it with kubectl).
async fn publish_kube_dns(
    client: kube::Client,
    service_ip: IpAddr,
    endpoint: std::net::SocketAddr,
) -> anyhow::Result<()> {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let labels = serde_json::json!({"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"});
    let slice_name = format!(
        "kube-dns-{}",
        endpoint.ip().to_string().replace(['.', ':'], "-")
    );
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
        "spec": {"clusterIP": service_ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": endpoint.port()},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": endpoint.port()},
        ]},
    }))?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name, "namespace": "kube-system", "labels": {
            "kubernetes.io/service-name": "kube-dns",
            "endpointslice.kubernetes.io/managed-by": "rudder-dns",
        }},
        "addressType": if endpoint.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [endpoint.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [
            {"name": "dns", "port": endpoint.port(), "protocol": "UDP"},
            {"name": "dns-tcp", "port": endpoint.port(), "protocol": "TCP"},
        ],
    }))?;
    // Created when missing, else left as they are (a user may have changed the Service); the
    // slice follows this server's address.
    let create = PostParams::default();
    let services = Api::<Service>::namespaced(client.clone(), "kube-system");
    let existing = services
        .get_opt("kube-dns")
        .await
        .context("reading the kube-dns Service")?;
    if existing.is_none() {
        match services.create(&create, &service).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context("creating the kube-dns Service"),
        }
    }
    let slices = Api::<EndpointSlice>::namespaced(client, "kube-system");
    match slices.create(&create, &slice).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = serde_json::json!({"endpoints": slice.endpoints, "ports": slice.ports});
            slices
                .patch(
                    "kube-dns-rudder",
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .context("updating the kube-dns EndpointSlice")?;
        }
        Err(e) => return Err(e).context("creating the kube-dns EndpointSlice"),
    }
    Ok(())
}

/// The local address this host would use to reach `server` (a UDP socket's connect only picks
/// a route; nothing is sent).
fn local_address_towards(server: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    let authority = server
        .strip_prefix("https://")
        .unwrap_or(server)
        .split('/')
        .next()
        .unwrap_or_default();
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let ip: std::net::Ipv4Addr = host.parse().with_context(|| {
        format!("--server {server}: give --node-ip when the server is not an IPv4 address")
    })?;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("finding the node address")?;
    socket
        .connect((ip, 9))
        .with_context(|| format!("no route to {ip}; give --node-ip"))?;
    match socket
        .local_addr()
        .context("finding the node address")?
        .ip()
    {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => anyhow::bail!("no IPv4 address towards {ip}; give --node-ip"),
    }
}

/// `rudder agent`: join the cluster and run the node until stopped.
async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?;
    let token = rudder_node::join::JoinToken::parse(&text)?;
    let node_ip = match args.node_ip {
        Some(ip) => ip,
        None => local_address_towards(&args.server)?,
    };
    let client = rudder_node::join::client(&args.server, &token, args.ca_file.as_deref()).await?;
    let mut config = agent_config(
        &args.node,
        node_ip,
        &args.data_dir,
        args.cluster_cidr,
        args.service_cidr,
        token.secret.clone(),
    )?;
    config.cluster_domain = args.cluster_domain.clone();
    tracing::info!(server = args.server, node = config.node_name, %node_ip, "joining");
    tokio::select! {
        result = rudder_node::agent::run(client, config) => result.context("node agent")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("stopping; pods keep running and are adopted at the next start"),
        _ = terminated() => tracing::info!("stopping; pods keep running and are adopted at the next start"),
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Shim { .. } | Command::Agnhost { .. } | Command::Lab { .. } => {}
        Command::Version => println!("rudder {}", env!("CARGO_PKG_VERSION")),
        Command::Dns(args) => {
            init_logging();
            dns(args).await?;
        }
        Command::Ingress(args) => {
            init_logging();
            ingress(args).await?;
        }
        Command::Proxy(args) => {
            init_logging();
            proxy(args).await?;
        }
        Command::Agent(args) => {
            init_logging();
            agent(args).await?;
        }
        Command::Server(args) => {
            init_logging();
            let config = server::Config {
                data_dir: args.data_dir.clone(),
                etcd_endpoints: args.etcd_endpoints.clone(),
                bind_address: args.bind_address,
                secure_port: args.secure_port,
                service_cidr: args.service_cidr,
                cluster_cidr: args.cluster_cidr,
                advertise_address: args.advertise_address,
            };
            let started = std::time::Instant::now();
            let server = server::Server::start(config)
                .await
                .context("starting the server")?;
            tracing::info!(
                url = server.url,
                store = server.state.store.backend(),
                kubeconfig = %server.kubeconfig.display(),
                startup_ms = started.elapsed().as_millis() as u64,
                "rudder apiserver ready"
            );
            let parts = start_cluster_parts(&server, &args).await?;
            tokio::select! {
                result = server.serve() => result.context("serving")?,
                _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
                _ = terminated() => tracing::info!("shutting down"),
            }
            for part in parts {
                part.abort();
            }
        }
    }
    Ok(())
}

/// A byte quantity flag (`10Mi`, `512Ki`, `1048576`).
fn parse_bytes(text: &str) -> Result<u64, String> {
    rudder_node::quantity::quantity(text, 1.0)
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("{text:?} is not a byte quantity such as 10Mi"))
}
