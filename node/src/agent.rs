//! The node agent (the kubelet's job): registers this Node, renews its Lease, sets up the pod
//! network from the PodCIDR the control plane assigns, and runs the pods bound here.
//!
//! It talks to the apiserver only through kube-rs, like any outside client:
//! - **Node**: created if absent with capacity/allocatable (CPU, memory, 110 pods), addresses,
//!   the four conditions and node info; its status is posted again every minute. The agent then
//!   waits for `spec.podCIDR` (the control plane's node IPAM controller assigns it).
//! - **Lease** `kube-node-lease/<node>`: renewed every 10 s.
//! - **Routes**: for every other Node with a PodCIDR and an InternalIP, a route to the PodCIDR via
//!   that address (flannel host-gw).
//! - **Pods**: a watch of `spec.nodeName=<node>`; each pod gets a [`pod`](crate::runtime::pod)
//!   worker. Status goes back through `pods/<name>/status` (merge patch), events as core/v1
//!   Events, and a pod whose termination finished is deleted with `gracePeriodSeconds=0` and its
//!   UID as precondition. Pods already `Succeeded` or `Failed` are not run again after a restart.
//! - **Adoption**: on start, sandboxes left by an earlier agent are kept for pods that still exist
//!   (their shims keep running and the worker adopts them) and removed for the others.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        coordination::v1::Lease,
        core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::watcher,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::proxy::{
    cluster::SharedProxy,
    standalone::{Dataplane, Proxy, ProxyConfig},
};

use crate::runtime::{
    network::{self, Cidr, LinkHooks, Network, NetworkConfig},
    pod::{self, BoxFuture, Context, Handle, IssuedToken, RuntimeConfig, Sources, Update},
    shim::now_rfc3339,
};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An apiserver call failed.
    #[error("{0}")]
    Api(String, #[source] kube::Error),
    /// The pod network could not be set up.
    #[error("setting up the pod network")]
    Network(#[from] network::Error),
    /// The control plane assigned no PodCIDR in time.
    #[error("node {0} got no spec.podCIDR within 60 s (is the control plane's node IPAM running?)")]
    NoPodCidr(String),
    /// The service proxy could not start.
    #[error("starting the service proxy")]
    Proxy(#[source] std::io::Error),
    /// The kubelet API (container logs) could not start.
    #[error("starting the kubelet API")]
    KubeletApi(#[source] std::io::Error),
}

/// Aborts a background task when dropped (the agent's helpers end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's address (InternalIP).
    pub node_ip: Ipv4Addr,
    /// State directory (`/var/lib/rudder/agent`).
    pub root: PathBuf,
    /// The binary with `shim` and `agnhost` subcommands.
    pub shim_exe: PathBuf,
    /// Cluster (pod) CIDR, blackholed on the node.
    pub cluster_cidr: String,
    /// Service CIDR, blackholed on the node.
    pub service_cidr: String,
    /// Cluster DNS address.
    pub cluster_dns: Ipv4Addr,
    /// Cluster domain.
    pub cluster_domain: String,
    /// The `kubernetes` Service address and port.
    pub api_service: (Ipv4Addr, u16),
    /// Bridge name.
    pub bridge: String,
    /// Prefix of pod network namespace names.
    pub netns_prefix: String,
    /// The service proxy to run (`None`: no service load balancing on this node).
    pub proxy: Option<ProxyConfig>,
    /// Port of the kubelet API that serves container logs to the apiserver (0: any free port;
    /// the port in use is reported in the Node's `daemonEndpoints`).
    pub kubelet_port: u16,
    /// The bearer token the kubelet API requires (the cluster's node token); `None`: the API
    /// is not served and `kubectl logs` cannot reach this node.
    pub kubelet_token: Option<String>,
    /// Set by [`run`]: the fingerprint of the kubelet API's certificate, published on the Node.
    pub kubelet_fingerprint: Option<String>,
    /// How containers' logs are rotated (the kubelet's `containerLogMaxSize`/`MaxFiles`).
    pub container_logs: crate::runtime::shim::LogRotation,
}

impl AgentConfig {
    /// Defaults for a node named `node_name` at `node_ip` (bridge `rudder0`, state under
    /// `/var/lib/rudder/agent`, DNS at 10.96.0.10, `cluster.local`).
    pub fn new(node_name: &str, node_ip: Ipv4Addr, shim_exe: PathBuf) -> Self {
        Self {
            node_name: node_name.to_owned(),
            node_ip,
            root: PathBuf::from("/var/lib/rudder/agent"),
            shim_exe,
            cluster_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/12".into(),
            cluster_dns: Ipv4Addr::new(10, 96, 0, 10),
            cluster_domain: "cluster.local".into(),
            api_service: (Ipv4Addr::new(10, 96, 0, 1), 443),
            bridge: "rudder0".into(),
            netns_prefix: "rdrpod-".into(),
            proxy: None,
            kubelet_port: crate::kubelet_api::PORT,
            kubelet_token: None,
            kubelet_fingerprint: None,
            container_logs: crate::runtime::shim::LogRotation::default(),
        }
    }
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |e| Error::Api(what, e)
}

/// ConfigMaps and Secrets read from the apiserver, ServiceAccount tokens from its TokenRequest
/// API.
struct ApiSources {
    client: Client,
}

async fn read_data<K>(client: &Client, namespace: &str, name: &str) -> Result<Option<K>, String>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading {namespace}/{name}: {e}"))
}

impl Sources for ApiSources {
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, String>> {
        Box::pin(async move {
            let cm: Option<ConfigMap> = read_data(&self.client, namespace, name).await?;
            Ok(cm.map(|cm| cm.data.unwrap_or_default()))
        })
    }

    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, String>> {
        Box::pin(async move {
            let s: Option<Secret> = read_data(&self.client, namespace, name).await?;
            Ok(s.map(|s| {
                let mut out: BTreeMap<String, String> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, ByteString(v))| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                out.extend(s.string_data.unwrap_or_default());
                out
            }))
        })
    }

    fn service_account_token<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        spec: &'a TokenRequestSpec,
    ) -> BoxFuture<'a, Result<IssuedToken, String>> {
        Box::pin(async move {
            let request = TokenRequest {
                spec: Some(spec.clone()),
                ..TokenRequest::default()
            };
            let answer = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
                .create_token_request(service_account, &PostParams::default(), &request)
                .await
                .map_err(|e| e.to_string())?;
            match answer.status {
                Some(status) => match (status.token, status.expiration_timestamp) {
                    (Some(token), Some(Time(expires))) if !token.is_empty() => {
                        Ok(IssuedToken { token, expires })
                    }
                    _ => Err("the answer has no token or no expirationTimestamp".into()),
                },
                None => Err("the answer has no status".into()),
            }
        })
    }
}

fn host_facts() -> (u64, u64, String, String, String) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".into());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_owned();
    (cpus, mem_kib, kernel, os, boot)
}

/// This machine's architecture as Kubernetes spells it (`amd64`, `arm64`).
fn arch() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// The Node's status as the agent reports it.
fn node_status(config: &AgentConfig) -> serde_json::Value {
    let (cpus, mem_kib, kernel, os, boot) = host_facts();
    let now = now_rfc3339();
    let cond = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{mem_kib}Ki"),
        "pods": "110",
        "ephemeral-storage": "10Gi",
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": config.node_ip.to_string()},
            {"type": "Hostname", "address": config.node_name},
        ],
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "rudder agent is posting ready status"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": config.kubelet_port}},
        "nodeInfo": {
            "machineID": boot.replace('-', ""),
            "systemUUID": boot,
            "bootID": boot,
            "kernelVersion": kernel,
            "osImage": os,
            "containerRuntimeVersion": format!("rudder://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.37.0-rudder",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

async fn register(client: &Client, config: &AgentConfig) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = &config.node_name;
    if nodes
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading node {name}")))?
        .is_none()
    {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch(),
            }},
        }))
        .map_err(|e| Error::Api("building the node".into(), kube::Error::SerdeError(e)))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = name, "registered"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::Api(format!("registering node {name}"), e)),
        }
    }
    if let Some(fingerprint) = &config.kubelet_fingerprint {
        let annotate = json!({"metadata": {"annotations": {
            crate::kubelet_api::CERT_ANNOTATION: fingerprint,
        }}});
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&annotate))
            .await
            .map_err(api_err(format!(
                "publishing node {name}'s serving certificate"
            )))?;
    }
    post_status(client, config).await?;
    // Wait for the PodCIDR.
    for _ in 0..600 {
        let node = nodes
            .get(name)
            .await
            .map_err(api_err(format!("reading node {name}")))?;
        if node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_ref())
            .is_some()
        {
            return Ok(node);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::NoPodCidr(name.clone()))
}

async fn post_status(client: &Client, config: &AgentConfig) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(config)})),
        )
        .await
        .map_err(api_err(format!("posting node {} status", config.node_name)))?;
    Ok(())
}

async fn renew_lease(client: &Client, config: &AgentConfig) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = jiff::Timestamp::now();
    let renew = json!({"spec": {
        "holderIdentity": config.node_name,
        "leaseDurationSeconds": 40,
        "renewTime": format!("{now:.6}"),
    }});
    match leases
        .patch(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&renew),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let mut lease = renew;
            lease["metadata"] = json!({"name": config.node_name, "namespace": "kube-node-lease"});
            let lease: Lease = serde_json::from_value(lease).map_err(kube::Error::SerdeError)?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(drop)
        }
        Err(e) => Err(e),
    }
}

/// Runs the agent until the client's connection fails for good or the future is dropped.
pub async fn run(client: Client, config: AgentConfig) -> Result<()> {
    let mut config = config;
    let kubelet_api = match config.kubelet_token.clone() {
        Some(token) => {
            let identity = crate::kubelet_api::Identity::new(&config.node_name, config.node_ip)
                .map_err(Error::KubeletApi)?;
            let (listener, port) = crate::kubelet_api::bind(config.node_ip, config.kubelet_port)
                .await
                .map_err(Error::KubeletApi)?;
            config.kubelet_port = port;
            config.kubelet_fingerprint = Some(identity.fingerprint.clone());
            tracing::info!(port, "kubelet API (container logs) listening");
            Some(tokio::spawn(crate::kubelet_api::serve(
                listener,
                identity,
                config.root.clone(),
                token,
            )))
        }
        None => None,
    };
    let _kubelet_api = kubelet_api.map(AbortOnDrop);
    let config = config;
    let node = register(&client, &config).await?;
    let pod_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .unwrap_or_default();
    let cidr = Cidr::parse(&pod_cidr)?;
    let proxy = match &config.proxy {
        Some(proxy_config) => {
            if proxy_config.dataplane == Dataplane::Iptables {
                bridge_netfilter();
            }
            let proxy = Proxy::start(proxy_config).map_err(Error::Proxy)?;
            tracing::info!(
                dataplane = ?proxy_config.dataplane,
                socket_lb = ?proxy_config.cgroup,
                "service proxy started"
            );
            Some(SharedProxy::new(proxy))
        }
        None => None,
    };
    let network = Network::setup(NetworkConfig {
        bridge: config.bridge.clone(),
        pod_cidr: cidr,
        netns_prefix: config.netns_prefix.clone(),
        state_dir: config.root.clone(),
        blackholes: vec![config.cluster_cidr.clone(), config.service_cidr.clone()],
        hooks: LinkHooks(
            proxy
                .clone()
                .map(|p| Arc::new(p) as Arc<dyn crate::runtime::network::LinkHook>),
        ),
    })?;
    let proxy_task = proxy.map(|p| {
        tokio::spawn(crate::proxy::cluster::run(
            client.clone(),
            p,
            config.node_name.clone(),
        ))
    });
    tracing::info!(
        node = config.node_name,
        pod_cidr,
        bridge = config.bridge,
        "pod network ready"
    );

    let heartbeat = {
        let (client, config) = (client.clone(), config.clone());
        tokio::spawn(async move {
            let mut tick = 0u64;
            let mut cut_off = false;
            loop {
                let renewed = match renew_lease(&client, &config).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the node lease");
                        false
                    }
                };
                // Status every minute, and at once when the apiserver is reachable again (the
                // node lifecycle controller may have marked the node Unknown meanwhile).
                let back = renewed && cut_off;
                cut_off = !renewed;
                if ((tick.is_multiple_of(6) && tick > 0) || back)
                    && let Err(e) = post_status(&client, &config).await
                {
                    tracing::warn!(error = %e, "posting node status");
                }
                tick += 1;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    };
    let routes = tokio::spawn(follow_routes(client.clone(), config.clone()));

    let (updates_tx, updates_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        config: RuntimeConfig {
            node_name: config.node_name.clone(),
            host_ip: config.node_ip,
            root: config.root.clone(),
            shim_exe: config.shim_exe.clone(),
            cluster_dns: config.cluster_dns,
            cluster_domain: config.cluster_domain.clone(),
            api_service: config.api_service,
            allocatable: {
                let (cpus, mem_kib, ..) = host_facts();
                crate::runtime::volumes::Allocatable {
                    cpu_millis: i64::try_from(cpus.saturating_mul(1000)).unwrap_or(i64::MAX),
                    memory_bytes: i64::try_from(mem_kib.saturating_mul(1024)).unwrap_or(i64::MAX),
                }
            },
            container_logs: config.container_logs,
        },
        network,
        sources: Arc::new(ApiSources {
            client: client.clone(),
        }),
        updates: updates_tx,
    });
    let reporter = tokio::spawn(report(client.clone(), updates_rx));
    let result = sync_pods(client, config, ctx).await;
    heartbeat.abort();
    routes.abort();
    if let Some(task) = proxy_task {
        task.abort();
    }
    reporter.abort();
    result
}

/// Makes bridged traffic pass iptables, as kube-proxy's iptables mode needs: a reply from a
/// backend to a client on the same bridge never reaches the IP layer otherwise, so its reverse
/// NAT would be skipped. (The eBPF datapath sits on each pod's veth and needs none of this.)
fn bridge_netfilter() {
    let _ = crate::command::run(None, "modprobe", &["br_netfilter"], None);
    let knob = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if let Err(e) = std::fs::write(knob, "1") {
        tracing::warn!(knob, error = %e, "bridged pod traffic will bypass iptables; services between pods on this node may fail");
    }
}

/// Keeps a route to every other node's PodCIDR via its InternalIP. With XDP on uplinks, also a
/// managed neighbour entry for each other node, which the kernel keeps resolved: XDP forwards
/// remote NodePort flows itself and can only use next hops whose link address is known.
async fn follow_routes(client: Client, config: AgentConfig) {
    let xdp = config.proxy.as_ref().is_some_and(|p| !p.uplinks.is_empty());
    let nodes: Api<Node> = Api::all(client);
    let mut routes: HashMap<String, (String, String)> = HashMap::new();
    let mut stream = watcher(nodes, watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let changed: Vec<Node> = match event {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => vec![n],
            Ok(watcher::Event::Delete(n)) => {
                if let Some(name) = &n.metadata.name
                    && let Some((cidr, ip)) = routes.remove(name)
                {
                    let _ = crate::command::run(None, "ip", &["route", "del", &cidr], None);
                    if xdp && let Some(dev) = route_device(&ip) {
                        let _ = crate::command::run(
                            None,
                            "ip",
                            &["neigh", "del", &ip, "dev", &dev],
                            None,
                        );
                    }
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "node watch");
                continue;
            }
        };
        for n in changed {
            let name = n.metadata.name.clone().unwrap_or_default();
            if name == config.node_name {
                continue;
            }
            let cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.clone());
            let ip = n.status.as_ref().and_then(|s| {
                s.addresses
                    .iter()
                    .flatten()
                    .find(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone())
            });
            if let (Some(cidr), Some(ip)) = (cidr, ip)
                && routes.get(&name) != Some(&(cidr.clone(), ip.clone()))
            {
                match crate::command::run(
                    None,
                    "ip",
                    &["route", "replace", &cidr, "via", &ip],
                    None,
                ) {
                    Ok(_) => {
                        tracing::info!(node = name, cidr, via = ip, "route to node's pods");
                        if xdp {
                            keep_neighbour(&ip);
                        }
                        routes.insert(name, (cidr, ip));
                    }
                    Err(e) => tracing::warn!(node = name, error = %e, "adding a route to its pods"),
                }
            }
        }
    }
}

/// The interface the node uses to reach `ip`.
fn route_device(ip: &str) -> Option<String> {
    let out = crate::command::run(None, "ip", &["-o", "route", "get", ip], None).ok()?;
    let mut words = out.split_whitespace();
    words.find(|w| *w == "dev")?;
    words.next().map(str::to_owned)
}

/// Asks the kernel to keep `ip`'s link address resolved (a managed neighbour entry).
fn keep_neighbour(ip: &str) {
    let Some(dev) = route_device(ip) else {
        return;
    };
    if let Err(e) = crate::command::run(
        None,
        "ip",
        &[
            "neigh",
            "replace",
            ip,
            "dev",
            &dev,
            "managed",
            "extern_learn",
        ],
        None,
    ) {
        tracing::warn!(ip, dev, error = %e, "managed neighbour entry; XDP may drop the first packets of remote NodePort flows");
    }
}

/// How many recent events the agent remembers to count up repeats (client-go's correlator
/// keeps 4096 too); when full, it starts over.
const RECENT_EVENTS: usize = 4096;

/// Events (new or counted up) an object may have written at once, then one more every
/// [`EVENT_REFILL`]: a pod failing its probe every second writes 25 events, then one every 10 s.
/// The kubelet's spam filter does the same (25, then one per 5 minutes per object); the rest are
/// dropped. Status updates share the agent's writer, so this also bounds how long they wait.
const EVENT_BURST: f64 = 25.0;
/// How often an object that used up [`EVENT_BURST`] may write one more event.
const EVENT_REFILL: Duration = Duration::from_secs(10);

/// Per-object token buckets for events (see [`EVENT_BURST`]).
#[derive(Default)]
struct EventBudget {
    buckets: HashMap<String, (f64, Instant)>,
}

impl EventBudget {
    /// Whether the object with `uid` may write an event at `now` (and takes a token if so).
    fn allow(&mut self, uid: &str, now: Instant) -> bool {
        // The tokens a bucket that had `tokens` at `at` has at `now`.
        let refilled = |tokens: f64, at: Instant| {
            (tokens + now.duration_since(at).as_secs_f64() / EVENT_REFILL.as_secs_f64())
                .min(EVENT_BURST)
        };
        if self.buckets.len() >= RECENT_EVENTS {
            // Full buckets carry no information: forget them.
            self.buckets
                .retain(|_, (tokens, at)| refilled(*tokens, *at) < EVENT_BURST);
        }
        let (tokens, at) = self
            .buckets
            .entry(uid.to_owned())
            .or_insert((EVENT_BURST, now));
        *tokens = refilled(*tokens, *at);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What makes two events the same one: the object (and container), reason and message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventKey {
    uid: String,
    field_path: Option<String>,
    reason: &'static str,
    message: String,
}

/// Sends worker updates to the apiserver.
async fn report(client: Client, mut updates: mpsc::UnboundedReceiver<Update>) {
    // Events written lately: their names and counts.
    let mut recent_events: HashMap<EventKey, (String, i32)> = HashMap::new();
    let mut budget = EventBudget::default();
    while let Some(update) = updates.recv().await {
        match update {
            Update::Status {
                namespace,
                name,
                uid,
                status,
            } => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                let patch = json!({"metadata": {"uid": uid}, "status": status});
                if let Err(e) = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(pod = format!("{namespace}/{name}"), error = %e, "posting pod status");
                }
            }
            Update::Event {
                namespace,
                name,
                uid,
                kind,
                reason,
                message,
                field_path,
            } => {
                if !budget.allow(&uid, Instant::now()) {
                    tracing::debug!(
                        pod = format!("{namespace}/{name}"),
                        reason,
                        "event dropped: over the pod's event budget"
                    );
                    continue;
                }
                let events: Api<k8s_openapi::api::core::v1::Event> =
                    Api::namespaced(client.clone(), &namespace);
                let now = now_rfc3339();
                let key = EventKey {
                    uid: uid.clone(),
                    field_path: field_path.clone(),
                    reason,
                    message: message.clone(),
                };
                // A repeat of a recent event counts up the event already written, as the
                // kubelet's event correlator does (kubectl shows "(x3 over 2m)").
                if let Some((event_name, count)) = recent_events.get_mut(&key) {
                    let patch = json!({"count": *count + 1, "lastTimestamp": now});
                    match events
                        .patch(event_name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {
                            *count += 1;
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "counting up an event; writing a new one");
                            recent_events.remove(&key);
                        }
                    }
                }
                let event = json!({
                    "metadata": {"generateName": format!("{name}.")},
                    "involvedObject": {"kind": "Pod", "namespace": namespace, "name": name, "uid": uid,
                                       "apiVersion": "v1", "fieldPath": field_path},
                    "reason": reason, "message": message, "type": kind,
                    "source": {"component": "kubelet"},
                    "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                    "reportingComponent": "kubelet",
                });
                let Ok(event) = serde_json::from_value(event) else {
                    continue;
                };
                match events.create(&PostParams::default(), &event).await {
                    Ok(created) => {
                        if let Some(event_name) = created.metadata.name {
                            if recent_events.len() >= RECENT_EVENTS {
                                recent_events.clear();
                            }
                            recent_events.insert(key, (event_name, 1));
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "recording an event"),
                }
            }
            Update::Finished {
                namespace,
                name,
                uid,
            } => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match pods.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => {
                        tracing::warn!(pod = format!("{namespace}/{name}"), error = %e, "removing a terminated pod")
                    }
                }
            }
        }
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Watches the pods bound to this node and keeps one worker per pod.
async fn sync_pods(client: Client, config: AgentConfig, ctx: Arc<Context>) -> Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = format!("spec.nodeName={}", config.node_name);
    // Sandboxes of pods that are gone (the agent was down when they were deleted).
    let existing = pods
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(api_err("listing this node's pods"))?;
    let known: Vec<String> = existing
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.as_deref().map(network::short_uid))
        .collect();
    for short in ctx.network.existing_sandboxes() {
        if !known.contains(&short) {
            tracing::info!(
                sandbox = short,
                "removing the sandbox of a pod that no longer exists"
            );
            let _ = ctx.network.remove_by_short_uid(&short);
        }
    }
    let mut workers: HashMap<String, Handle> = HashMap::new();
    // Pods whose worker finished (terminated and cleaned up): never started again.
    let mut finished: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut seen_in_init: Vec<String> = Vec::new();
    let mut stream = watcher(pods, watcher::Config::default().fields(&selector)).boxed();
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "pod watch; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        workers.retain(|uid, h| {
            let done = h.task.is_finished();
            if done {
                finished.insert(uid.clone());
            }
            !done
        });
        match event {
            watcher::Event::Init => seen_in_init.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                seen_in_init.push(uid.clone());
                match workers.get(&uid) {
                    Some(handle) => {
                        let _ = handle.pod.send(Arc::new(pod));
                    }
                    None if finished.contains(&uid) => {}
                    None if is_terminal(&pod) && pod.metadata.deletion_timestamp.is_none() => {}
                    None => {
                        workers.insert(uid, pod::spawn(Arc::clone(&ctx), pod));
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    // The object is gone: the worker stops the pod at once.
                    if let Some(handle) = workers.remove(uid) {
                        handle.remove();
                    }
                    finished.remove(uid);
                }
            }
            watcher::Event::InitDone => {
                let gone: Vec<String> = workers
                    .keys()
                    .filter(|uid| !seen_in_init.contains(uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some(handle) = workers.remove(&uid) {
                        handle.remove();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_writes_a_burst_of_events_then_one_per_refill() {
        let mut budget = EventBudget::default();
        let start = Instant::now();
        let allowed = (0..40).filter(|_| budget.allow("pod-a", start)).count();
        assert_eq!(allowed, 25);
        // Another object has a budget of its own.
        assert!(budget.allow("pod-b", start));
        assert!(!budget.allow("pod-a", start + EVENT_REFILL / 2));
        assert!(budget.allow("pod-a", start + EVENT_REFILL));
        assert!(!budget.allow("pod-a", start + EVENT_REFILL));
        // A long quiet spell refills the burst, no more.
        let later = start + EVENT_REFILL * 1000;
        assert_eq!((0..40).filter(|_| budget.allow("pod-a", later)).count(), 25);
    }
}
