//! The pod worker: one task per pod on this node that drives it to its spec and reports what
//! it sees, the kubelet's `podWorkers` + `syncPod` in small.
//!
//! The worker owns the pod's state; everything that happens (a container ended, a probe
//! answered, the spec changed, a back-off elapsed) arrives as an event in one loop, so there are
//! no locks. Each step it
//! 1. makes the sandbox (network namespace, veth, address; `/etc/hosts`, `/etc/resolv.conf` and
//!    `/etc/hostname` files bound over the host's in each container);
//! 2. runs init containers one at a time, each to success;
//! 3. starts the containers, restarting them as `restartPolicy` says, with the kubelet's back-off
//!    (immediately the first time, then 10 s doubling to 5 min, reset after 10 min of running;
//!    `CrashLoopBackOff` meanwhile);
//! 4. runs startup, liveness and readiness probes (a failed liveness or startup probe restarts the
//!    container; readiness decides `ready`);
//! 5. publishes the status ([`status`]) whenever it changed;
//! 6. rewrites projected ServiceAccount tokens that are due (see [`volumes`]): each token's
//!    refresh time is one of the worker's deadlines, and a failed refresh is retried (with a
//!    `FailedMount` event) while the running containers keep the old token. A change of the
//!    pod's labels or annotations rewrites its downward API files.
//!
//! When the pod gets a `deletionTimestamp` the worker runs `preStop` hooks, sends SIGTERM, waits
//! for the grace period, sends SIGKILL, removes the sandbox and reports [`Update::Finished`] so
//! the agent deletes the object for good. Containers are supervised by shims that survive an
//! agent restart; a new worker adopts them from the pod directory.
//!
//! Images: agnhost and pause images run rudder's built-in [`agnhost`](crate::agnhost); any other
//! image runs its `command` and `args` on the host file system. A container of another image
//! with no command waits with reason `ErrImagePull`, saying why.

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::TokenRequestSpec,
    core::v1::{Container, Pod, Probe, ServiceAccountTokenProjection},
};
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{
    cgroups,
    network::{Network, Sandbox},
    probe::{self, Target, Timing},
    process::{self, Running, Started},
    shim::{ExitRecord, Mount, ShimArgs, now_rfc3339},
    volumes,
};

/// A boxed future, for the [`Sources`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the worker reads ConfigMaps and Secrets for `env` and volumes, and gets ServiceAccount
/// tokens (the agent answers from the apiserver).
pub trait Sources: Send + Sync {
    /// The data of ConfigMap `namespace/name`, `Ok(None)` when it does not exist.
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, String>>;
    /// The decoded data of Secret `namespace/name`, `Ok(None)` when it does not exist.
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BTreeMap<String, String>>, String>>;
    /// A token for ServiceAccount `namespace/service_account` as `spec` asks (audiences,
    /// lifetime, the pod it is bound to): the TokenRequest API's
    /// `POST /api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token`.
    fn service_account_token<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        spec: &'a TokenRequestSpec,
    ) -> BoxFuture<'a, Result<IssuedToken, String>>;
}

/// A ServiceAccount token the TokenRequest API issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token (a JWT).
    pub token: String,
    /// When it expires (`status.expirationTimestamp`).
    pub expires: jiff::Timestamp,
}

/// Settings of the node's pod runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's address (`status.hostIP`).
    pub host_ip: Ipv4Addr,
    /// State directory (`/var/lib/rudder/agent`): pod directories, address files, logs.
    pub root: PathBuf,
    /// The binary with the `shim` and `agnhost` subcommands (`rudder` itself).
    pub shim_exe: PathBuf,
    /// Cluster DNS address written to pods' resolv.conf (dnsPolicy ClusterFirst).
    pub cluster_dns: Ipv4Addr,
    /// Cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The `kubernetes` Service address and port, for `KUBERNETES_SERVICE_HOST`/`_PORT`.
    pub api_service: (Ipv4Addr, u16),
    /// The node's allocatable CPU and memory, the downward API's limits of a container that
    /// sets none.
    pub allocatable: volumes::Allocatable,
    /// How containers' logs are rotated.
    pub container_logs: super::shim::LogRotation,
}

/// What a worker tells the agent.
#[derive(Clone, Debug)]
pub enum Update {
    /// The pod's status changed.
    Status {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// UID (the agent checks it still names the same pod).
        uid: String,
        /// The full `status`.
        status: Value,
    },
    /// Something worth an Event happened.
    Event {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// UID.
        uid: String,
        /// `Normal` or `Warning`.
        kind: &'static str,
        /// Reason (`Started`, `Killing`, `Unhealthy`, `BackOff`...).
        reason: &'static str,
        /// Message.
        message: String,
        /// The container it is about (`spec.containers{name}`), if any.
        field_path: Option<String>,
    },
    /// The pod was terminated and cleaned up: the agent removes the object.
    Finished {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// UID.
        uid: String,
    },
}

/// Shared by all workers.
pub struct Context {
    /// Settings.
    pub config: RuntimeConfig,
    /// The pod network.
    pub network: Network,
    /// ConfigMap/Secret lookups.
    pub sources: Arc<dyn Sources>,
    /// Where updates go.
    pub updates: mpsc::UnboundedSender<Update>,
}

/// A running worker: send it the pod's new versions; dropping the sender stops the pod at once.
pub struct Handle {
    /// Latest version of the pod.
    pub pod: watch::Sender<Arc<Pod>>,
    /// Told when the pod object is gone.
    removed: tokio::sync::oneshot::Sender<()>,
    /// The worker task.
    pub task: JoinHandle<()>,
}

impl Handle {
    /// The pod object is gone from the API: the worker kills its containers at once (no grace
    /// period: nobody can watch a graceful termination any more) and removes the sandbox.
    ///
    /// Only this stops the pod. A handle merely dropped, as when the agent itself stops, ends
    /// the worker and leaves the containers running for the next agent to adopt.
    pub fn remove(self) {
        let _ = self.removed.send(());
    }
}

/// Starts the worker for `pod`.
pub fn spawn(ctx: Arc<Context>, pod: Pod) -> Handle {
    let (tx, rx) = watch::channel(Arc::new(pod));
    let (removed, removed_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run(ctx, rx, removed_rx));
    Handle {
        pod: tx,
        removed,
        task,
    }
}

/// A failed token refresh is tried again after this long.
const TOKEN_RETRY: Duration = Duration::from_secs(10);

/// Restart back-off: immediate once, then 10 s doubling to 5 min.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug)]
enum Event {
    Exited {
        index: usize,
        attempt: u32,
        record: ExitRecord,
    },
    Started {
        index: usize,
        attempt: u32,
    },
    Ready {
        index: usize,
        attempt: u32,
        ready: bool,
    },
    /// A probe failed; `restart` when it was the liveness or startup probe's last allowed
    /// failure (the container is restarted).
    Unhealthy {
        index: usize,
        attempt: u32,
        probe: &'static str,
        message: String,
        restart: bool,
    },
}

/// One container (init or regular) and what the worker knows of it.
#[derive(Debug)]
struct Slot {
    spec: Container,
    init: bool,
    /// Next attempt number; also the restart count once it ran.
    attempt: u32,
    running: Option<Arc<Running>>,
    /// Finished successfully (init containers).
    done: bool,
    last: Option<ExitRecord>,
    waiting: Option<(String, String)>,
    ready: bool,
    started: bool,
    next_start: Option<Instant>,
    backoff: Duration,
    run_began: Option<Instant>,
    tasks: Vec<JoinHandle<()>>,
}

impl Slot {
    fn new(spec: Container, init: bool) -> Self {
        Self {
            spec,
            init,
            attempt: 0,
            running: None,
            done: false,
            last: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
            ready: false,
            started: false,
            next_start: None,
            backoff: Duration::ZERO,
            run_began: None,
            tasks: Vec::new(),
        }
    }

    fn restart_count(&self) -> u32 {
        self.attempt.saturating_sub(1)
    }

    fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// A projected ServiceAccount token the worker keeps fresh, keyed by volume name and path.
#[derive(Debug)]
struct HeldToken {
    /// The current token; `None` until the first one arrived (or after an agent restart).
    token: Option<IssuedToken>,
    /// When to ask for the next one.
    refresh_at: Instant,
    /// The last request failed (its event was sent; the next success ends the streak).
    failing: bool,
}

struct Worker {
    ctx: Arc<Context>,
    pod: Arc<Pod>,
    uid: String,
    namespace: String,
    name: String,
    dir: PathBuf,
    sandbox: Option<Sandbox>,
    sandbox_error: Option<String>,
    slots: Vec<Slot>,
    start_time: String,
    events_tx: mpsc::UnboundedSender<Event>,
    last_status: Option<Value>,
    /// Per condition type: its status and when it took it (`lastTransitionTime`).
    transitions: BTreeMap<String, (String, String)>,
    /// Projected ServiceAccount tokens by (volume, path).
    tokens: BTreeMap<(String, String), HeldToken>,
}

async fn run(
    ctx: Arc<Context>,
    mut rx: watch::Receiver<Arc<Pod>>,
    mut removed_rx: tokio::sync::oneshot::Receiver<()>,
) {
    let pod = rx.borrow_and_update().clone();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut w = Worker::new(ctx, pod, events_tx);
    let deleting = w.pod.metadata.deletion_timestamp.is_some();
    let has_sandbox =
        w.host_network() || w.ctx.network.find_sandbox(&w.uid).ok().flatten().is_some();
    // A pod being deleted gets no new sandbox, only the cleanup of an existing one.
    if (!deleting || has_sandbox) && w.ensure_sandbox().await {
        w.adopt();
    }
    let mut removed = false;
    loop {
        if w.pod.metadata.deletion_timestamp.is_some() || removed {
            break;
        }
        w.step().await;
        w.publish();
        let deadline = w.next_deadline();
        tokio::select! {
            // Removal first: `Handle::remove` also drops the pod sender.
            biased;
            gone = &mut removed_rx => match gone {
                Ok(()) => removed = true,
                // The agent is stopping: the containers keep running, to be adopted.
                Err(_) => return,
            },
            changed = rx.changed() => match changed {
                Ok(()) => {
                    let old = std::mem::replace(&mut w.pod, rx.borrow_and_update().clone());
                    w.resend_if_overwritten();
                    if old.metadata.labels != w.pod.metadata.labels
                        || old.metadata.annotations != w.pod.metadata.annotations
                    {
                        w.rewrite_downward();
                    }
                }
                Err(_) => return,
            },
            Some(event) = events.recv() => w.handle(event),
            () = sleep_until(deadline) => {}
        }
    }
    let grace = if removed { Some(0) } else { None };
    w.terminate(grace, &mut events).await;
    w.publish();
    w.cleanup().await;
    let _ = w.ctx.updates.send(Update::Finished {
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        uid: w.uid.clone(),
    });
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Worker {
    fn new(ctx: Arc<Context>, pod: Arc<Pod>, events_tx: mpsc::UnboundedSender<Event>) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = ctx.config.root.join("pods").join(&uid);
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots: Vec<Slot> = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| Slot::new(c, true))
            .collect();
        slots.extend(spec.containers.into_iter().map(|c| Slot::new(c, false)));
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| format!("{:.0}", t.0))
            .unwrap_or_else(now_rfc3339);
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid,
            dir,
            ctx,
            pod,
            sandbox: None,
            sandbox_error: None,
            slots,
            start_time,
            events_tx,
            last_status: None,
            transitions: BTreeMap::new(),
            tokens: BTreeMap::new(),
        }
    }

    fn event(
        &self,
        kind: &'static str,
        reason: &'static str,
        message: String,
        slot: Option<&Slot>,
    ) {
        let field_path = slot.map(|s| {
            format!(
                "spec.{}{{{}}}",
                if s.init {
                    "initContainers"
                } else {
                    "containers"
                },
                s.spec.name
            )
        });
        let _ = self.ctx.updates.send(Update::Event {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            kind,
            reason,
            message,
            field_path,
        });
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    fn pod_ip(&self) -> Option<Ipv4Addr> {
        if self.host_network() {
            Some(self.ctx.config.host_ip)
        } else {
            self.sandbox.as_ref().map(|s| s.ip)
        }
    }

    async fn ensure_sandbox(&mut self) -> bool {
        if self.sandbox.is_some() {
            return true;
        }
        if self.host_network() {
            let netns = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
            self.sandbox = Some(Sandbox {
                netns: netns.display().to_string(),
                ip: self.ctx.config.host_ip,
                host_if: String::new(),
            });
            return self.write_pod_files().is_ok();
        }
        let network = self.ctx.network.clone();
        let uid = self.uid.clone();
        match tokio::task::spawn_blocking(move || network.create_sandbox(&uid)).await {
            Ok(Ok(sandbox)) => {
                self.sandbox = Some(sandbox);
                self.sandbox_error = None;
                if let Err(e) = self.write_pod_files() {
                    self.sandbox_error = Some(format!("writing the pod's files: {e}"));
                    return false;
                }
                true
            }
            Ok(Err(e)) => {
                let text = error_chain(&e);
                if self.sandbox_error.as_deref() != Some(text.as_str()) {
                    self.event(
                        "Warning",
                        "FailedCreatePodSandBox",
                        format!("Failed to create pod sandbox: {text}"),
                        None,
                    );
                }
                self.sandbox_error = Some(text);
                false
            }
            Err(e) => {
                self.sandbox_error = Some(e.to_string());
                false
            }
        }
    }

    /// The pod's hostname: `spec.hostname` or the pod name, cut to 63 characters as the kubelet
    /// does (the kernel's limit is 64).
    fn hostname(&self) -> String {
        let name = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone());
        let cut: String = name.chars().take(63).collect();
        cut.trim_end_matches(['-', '.']).to_owned()
    }

    fn netns_path(&self) -> PathBuf {
        match &self.sandbox {
            Some(s) if self.host_network() => PathBuf::from(&s.netns),
            Some(s) => s.netns_path(),
            None => PathBuf::new(),
        }
    }

    /// `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` for the pod (kubelet's content).
    fn write_pod_files(&self) -> std::io::Result<()> {
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        // Who the pod is, for the resource metrics, which find pods by their cgroups (named by
        // UID).
        std::fs::write(
            self.dir.join(crate::metrics::NAME_FILE),
            format!("{}/{}\n", self.namespace, self.name),
        )?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let hostname = self.hostname();
        let ip = self.pod_ip().map(|i| i.to_string()).unwrap_or_default();
        let domain = &self.ctx.config.cluster_domain;
        let fqdn = match &spec.subdomain {
            Some(sub) => format!(
                "{hostname}.{sub}.{}.svc.{domain}\t{hostname}",
                self.namespace
            ),
            None => hostname.clone(),
        };
        let mut hosts = format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
             {ip}\t{fqdn}\n"
        );
        for alias in spec.host_aliases.iter().flatten() {
            hosts.push_str(&format!(
                "\n# Entries added by HostAliases.\n{}\t{}\n",
                alias.ip,
                alias.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
        std::fs::write(etc.join("hosts"), hosts)?;
        std::fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
        let resolv = resolv_conf(
            spec.dns_policy.as_deref(),
            self.host_network(),
            &self.namespace,
            domain,
            self.ctx.config.cluster_dns,
            spec.dns_config.as_ref(),
        );
        match resolv {
            Some(text) => std::fs::write(etc.join("resolv.conf"), text),
            None => std::fs::copy("/etc/resolv.conf", etc.join("resolv.conf")).map(drop),
        }
    }

    /// Starts what is due.
    async fn step(&mut self) {
        if !self.ensure_sandbox().await {
            return;
        }
        self.refresh_tokens().await;
        let now = Instant::now();
        let policy = self.restart_policy().to_owned();
        // Init containers run one at a time, in order, each to success.
        if let Some(index) = self.slots.iter().position(|s| s.init && !s.done) {
            let slot = &self.slots[index];
            if slot.running.is_none()
                && slot.next_start.is_none_or(|t| t <= now)
                && !(policy == "Never" && slot.last.is_some())
            {
                self.start(index).await;
            }
            return;
        }
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.init || slot.running.is_some() {
                continue;
            }
            let due = slot.next_start.is_none_or(|t| t <= now);
            let wanted = match &slot.last {
                None => true,
                Some(last) => restart_wanted(&policy, last.exit_code),
            };
            if due && wanted {
                self.start(index).await;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self
            .slots
            .iter()
            .filter(|s| s.running.is_none())
            .filter_map(|s| s.next_start)
            .min();
        if self.sandbox.is_none() {
            // Retry a failed sandbox.
            let retry = Instant::now() + Duration::from_secs(2);
            next = Some(next.map_or(retry, |n| n.min(retry)));
        }
        // Tokens are kept fresh while a container may read them.
        if self.slots.iter().any(|s| s.running.is_some())
            && let Some(refresh) = self.tokens.values().map(|t| t.refresh_at).min()
        {
            next = Some(next.map_or(refresh, |n| n.min(refresh)));
        }
        next
    }

    /// What the downward API tells this pod.
    fn downward(&self) -> volumes::Downward<'_> {
        volumes::Downward {
            pod: &self.pod,
            node_name: &self.ctx.config.node_name,
            host_ip: self.ctx.config.host_ip,
            pod_ip: self.pod_ip(),
            allocatable: self.ctx.config.allocatable,
        }
    }

    /// The token for the `serviceAccountToken` source `source` of projected volume `volume`: the
    /// one held until its refresh time, else a new one from the TokenRequest API. A failed
    /// request falls back to the held token while it has not expired.
    async fn token(
        &mut self,
        volume: &str,
        source: &ServiceAccountTokenProjection,
    ) -> Result<String, String> {
        let key = (volume.to_owned(), source.path.clone());
        let now = Instant::now();
        if let Some(held) = self.tokens.get(&key)
            && let Some(t) = &held.token
            && held.refresh_at > now
        {
            return Ok(t.token.clone());
        }
        let account = volumes::service_account(&self.pod).to_owned();
        let result = match volumes::token_request(source, &self.pod) {
            Ok(spec) => self
                .ctx
                .sources
                .service_account_token(&self.namespace, &account, &spec)
                .await
                .map_err(|e| {
                    format!(
                        "volume {volume:?}: requesting a token for serviceaccount {}/{account}: {e}",
                        self.namespace
                    )
                }),
            Err(e) => Err(format!("volume {volume:?}: {e}")),
        };
        let held = self.tokens.entry(key).or_insert(HeldToken {
            token: None,
            refresh_at: now,
            failing: false,
        });
        match result {
            Ok(issued) => {
                let lifetime = jiff::Timestamp::now()
                    .duration_until(issued.expires)
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                held.refresh_at = Instant::now() + volumes::token_refresh_after(lifetime);
                held.failing = false;
                let token = issued.token.clone();
                held.token = Some(issued);
                Ok(token)
            }
            Err(message) => {
                held.refresh_at = Instant::now() + TOKEN_RETRY;
                let first = !held.failing;
                held.failing = true;
                let usable = held
                    .token
                    .as_ref()
                    .filter(|t| t.expires > jiff::Timestamp::now())
                    .map(|t| t.token.clone());
                if first {
                    tracing::warn!(pod = %self.name, namespace = %self.namespace, error = %message, "token request failed");
                    self.event(
                        "Warning",
                        "FailedMount",
                        format!("MountVolume.SetUp failed for volume {volume:?}: {message}"),
                        None,
                    );
                }
                usable.ok_or(message)
            }
        }
    }

    /// Rewrites the tokens whose refresh time has come, while a container runs. A token whose
    /// source is gone from the spec is forgotten.
    async fn refresh_tokens(&mut self) {
        if !self.slots.iter().any(|s| s.running.is_some()) {
            return;
        }
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .tokens
            .iter()
            .filter(|(_, t)| t.refresh_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let pod = Arc::clone(&self.pod);
        for key in due {
            let (volume, path) = &key;
            let found = pod
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .filter(|v| v.name == *volume)
                .filter_map(|v| v.projected.as_ref())
                .find_map(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .filter_map(|s| s.service_account_token.as_ref())
                        .find(|t| t.path == *path)
                        .map(|t| (t, p.default_mode))
                });
            let Some((source, default_mode)) = found else {
                self.tokens.remove(&key);
                continue;
            };
            let Ok(token) = self.token(volume, source).await else {
                continue;
            };
            let dir = self.dir.join("volumes").join(volume);
            let written = volumes::file_mode(None, default_mode, path).and_then(|mode| {
                let file = volumes::File {
                    path: PathBuf::from(path),
                    content: token.into_bytes(),
                    mode,
                };
                volumes::write(&dir, &[file]).map_err(|e| e.to_string())
            });
            if let Err(e) = written {
                tracing::warn!(pod = %self.name, volume, error = %e, "writing a refreshed token");
            }
        }
    }

    /// Rewrites the downward API files of the volumes already set up (after the pod's labels or
    /// annotations changed).
    fn rewrite_downward(&self) {
        let downward = self.downward();
        for v in self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
        {
            let dir = self.dir.join("volumes").join(&v.name);
            if !dir.is_dir() {
                continue;
            }
            let files = if let Some(d) = &v.downward_api {
                downward.files(d.items.as_deref().unwrap_or_default(), d.default_mode)
            } else if let Some(p) = &v.projected {
                p.sources
                    .iter()
                    .flatten()
                    .filter_map(|s| s.downward_api.as_ref())
                    .map(|d| downward.files(d.items.as_deref().unwrap_or_default(), p.default_mode))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|parts| parts.concat())
            } else {
                continue;
            };
            if let Err(e) = files.and_then(|f| volumes::write(&dir, &f).map_err(|e| e.to_string()))
            {
                tracing::warn!(pod = %self.name, volume = %v.name, error = %e, "rewriting downward API files");
            }
        }
    }

    /// Prepares the volumes `c` mounts and returns their bind mounts (see [`volumes`]).
    async fn volume_mounts(&mut self, c: &Container) -> Result<Vec<Mount>, String> {
        let pod = Arc::clone(&self.pod);
        let declared = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default();
        let mut mounts = Vec::new();
        for vm in c.volume_mounts.iter().flatten() {
            let Some(v) = declared.iter().find(|v| v.name == vm.name) else {
                return Err(format!(
                    "volumeMount {:?} names no volume of the pod",
                    vm.name
                ));
            };
            let dir = self.dir.join("volumes").join(&v.name);
            let source = if let Some(hp) = &v.host_path {
                volumes::host_path(hp)?
            } else if v.empty_dir.is_some() {
                std::fs::create_dir_all(&dir).map_err(|e| format!("volume {:?}: {e}", v.name))?;
                dir
            } else if let Some(cm) = &v.config_map {
                let data = self
                    .ctx
                    .sources
                    .config_map(&self.namespace, &cm.name)
                    .await?;
                let files = volumes::project(
                    data.as_ref(),
                    cm.items.as_deref(),
                    cm.default_mode,
                    cm.optional.unwrap_or(false),
                    &format!("configmap {:?}", cm.name),
                )?;
                volumes::write(&dir, &files).map_err(|e| format!("volume {:?}: {e}", v.name))?;
                dir
            } else if let Some(secret) = &v.secret {
                let name = secret.secret_name.clone().unwrap_or_default();
                let data = self.ctx.sources.secret(&self.namespace, &name).await?;
                let files = volumes::project(
                    data.as_ref(),
                    secret.items.as_deref(),
                    secret.default_mode,
                    secret.optional.unwrap_or(false),
                    &format!("secret {name:?}"),
                )?;
                volumes::write(&dir, &files).map_err(|e| format!("volume {:?}: {e}", v.name))?;
                dir
            } else if let Some(d) = &v.downward_api {
                let files = self
                    .downward()
                    .files(d.items.as_deref().unwrap_or_default(), d.default_mode)
                    .map_err(|e| format!("volume {:?}: {e}", v.name))?;
                volumes::write(&dir, &files).map_err(|e| format!("volume {:?}: {e}", v.name))?;
                dir
            } else if let Some(p) = &v.projected {
                let mut fetched = volumes::Fetched::default();
                for s in p.sources.iter().flatten() {
                    if let Some(cm) = &s.config_map {
                        let data = self
                            .ctx
                            .sources
                            .config_map(&self.namespace, &cm.name)
                            .await?;
                        fetched.config_maps.insert(cm.name.clone(), data);
                    } else if let Some(secret) = &s.secret {
                        let data = self
                            .ctx
                            .sources
                            .secret(&self.namespace, &secret.name)
                            .await?;
                        fetched.secrets.insert(secret.name.clone(), data);
                    } else if let Some(t) = &s.service_account_token {
                        let token = self.token(&v.name, t).await?;
                        fetched.tokens.insert(t.path.clone(), token);
                    }
                }
                let files = volumes::projected(p, &fetched, &self.downward())
                    .map_err(|e| format!("volume {:?}: {e}", v.name))?;
                volumes::write(&dir, &files).map_err(|e| format!("volume {:?}: {e}", v.name))?;
                dir
            } else {
                return Err(format!(
                    "volume {:?}: only emptyDir, hostPath, configMap, secret, downwardAPI and \
                     projected volumes are supported",
                    v.name
                ));
            };
            mounts.push(volumes::bind(&source, vm)?);
        }
        Ok(mounts)
    }

    async fn resolve_env(&self, c: &Container) -> Result<Vec<(String, String)>, String> {
        let cfg = &self.ctx.config;
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOSTNAME".into(), self.name.clone()),
            (
                "KUBERNETES_SERVICE_HOST".into(),
                cfg.api_service.0.to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                cfg.api_service.1.to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                cfg.api_service.1.to_string(),
            ),
            (
                "KUBERNETES_PORT".into(),
                format!("tcp://{}:{}", cfg.api_service.0, cfg.api_service.1),
            ),
        ];
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        };
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let (data, what, optional) = if let Some(cm) = &from.config_map_ref {
                (
                    self.ctx
                        .sources
                        .config_map(&self.namespace, &cm.name)
                        .await?,
                    format!("configmap {:?}", cm.name),
                    cm.optional.unwrap_or(false),
                )
            } else if let Some(s) = &from.secret_ref {
                (
                    self.ctx.sources.secret(&self.namespace, &s.name).await?,
                    format!("secret {:?}", s.name),
                    s.optional.unwrap_or(false),
                )
            } else {
                continue;
            };
            match data {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if optional => {}
                None => return Err(format!("{what} not found")),
            }
        }
        for var in c.env.iter().flatten() {
            let value = if let Some(v) = &var.value {
                expand(v, &env)
            } else if let Some(from) = &var.value_from {
                if let Some(field) = &from.field_ref {
                    self.downward()
                        .field(&field.field_path)
                        .map_err(|e| format!("env {:?}: {e}", var.name))?
                } else if let Some(key) = &from.config_map_key_ref {
                    let data = self
                        .ctx
                        .sources
                        .config_map(&self.namespace, &key.name)
                        .await?;
                    match data.and_then(|d| d.get(&key.key).cloned()) {
                        Some(v) => v,
                        None if key.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                key.key, self.namespace, key.name
                            ));
                        }
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let data = self.ctx.sources.secret(&self.namespace, &key.name).await?;
                    match data.and_then(|d| d.get(&key.key).cloned()) {
                        Some(v) => v,
                        None if key.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                key.key, self.namespace, key.name
                            ));
                        }
                    }
                } else if let Some(r) = &from.resource_field_ref {
                    self.downward()
                        .resource(r, Some(c))
                        .map_err(|e| format!("env {:?}: {e}", var.name))?
                } else {
                    continue;
                }
            } else {
                String::new()
            };
            set(&mut env, var.name.clone(), value);
        }
        Ok(env)
    }

    /// Works out the container's argv, or why it cannot run.
    fn argv(
        &self,
        c: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<String>, (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        let command: Vec<String> = c.command.iter().flatten().map(|a| expand(a, env)).collect();
        let args: Vec<String> = c.args.iter().flatten().map(|a| expand(a, env)).collect();
        let exe = self.ctx.config.shim_exe.display().to_string();
        if crate::agnhost::is_agnhost_image(&image) {
            let mut argv = vec![exe, "agnhost".to_owned()];
            let builtin = command
                .first()
                .is_some_and(|c0| c0.ends_with("agnhost") || c0.ends_with("/pause"));
            let rest: Vec<String> = if builtin {
                command.into_iter().skip(1).chain(args).collect()
            } else if command.is_empty() {
                args
            } else {
                // Another program named in an agnhost image: run it from the host.
                return Ok(command.into_iter().chain(args).collect());
            };
            if rest.is_empty() {
                argv.extend(crate::agnhost::default_args(&image));
            } else {
                argv.extend(rest);
            }
            return Ok(argv);
        }
        if command.is_empty() {
            return Err((
                "ErrImagePull".into(),
                format!(
                    "image {image:?} is not available on this node: rudder has no image registry and runs \
                     other images' command and args on the host's file system, but this container has no command"
                ),
            ));
        }
        Ok(command.into_iter().chain(args).collect())
    }

    async fn start(&mut self, index: usize) {
        let c = self.slots[index].spec.clone();
        let env = match self.resolve_env(&c).await {
            Ok(env) => env,
            Err(message) => {
                let slot = &mut self.slots[index];
                slot.waiting = Some(("CreateContainerConfigError".into(), message));
                slot.next_start = Some(Instant::now() + Duration::from_secs(2));
                return;
            }
        };
        let volume_mounts = match self.volume_mounts(&c).await {
            Ok(mounts) => mounts,
            Err(message) => {
                let slot = &mut self.slots[index];
                slot.waiting = Some(("CreateContainerConfigError".into(), message));
                slot.next_start = Some(Instant::now() + Duration::from_secs(2));
                return;
            }
        };
        let argv = match self.argv(&c, &env) {
            Ok(argv) => argv,
            Err(waiting) => {
                let slot = &mut self.slots[index];
                if slot.waiting.as_ref().map(|w| &w.0) != Some(&waiting.0) {
                    let message = waiting.1.clone();
                    slot.waiting = Some(waiting);
                    let slot = &self.slots[index];
                    self.event("Warning", "Failed", message, Some(slot));
                }
                let slot = &mut self.slots[index];
                slot.next_start = Some(Instant::now() + Duration::from_secs(30));
                return;
            }
        };
        let attempt = self.slots[index].attempt;
        let state = self
            .dir
            .join("containers")
            .join(&c.name)
            .join(attempt.to_string());
        let log = self.log_path(&c.name, attempt);
        if let Some(parent) = log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::remove_dir_all(&state);
        let etc = self.dir.join("etc");
        let mut mounts = vec![
            Mount {
                source: etc.join("hosts"),
                target: "/etc/hosts".into(),
                read_only: false,
            },
            Mount {
                source: etc.join("hostname"),
                target: "/etc/hostname".into(),
                read_only: false,
            },
        ];
        if etc.join("resolv.conf").exists() {
            mounts.push(Mount {
                source: etc.join("resolv.conf"),
                target: "/etc/resolv.conf".into(),
                read_only: false,
            });
        }
        mounts.extend(volume_mounts);
        let limits = cgroups::Limits::of(c.resources.as_ref());
        // Every container gets a cgroup, limited or not: its CPU and memory use are read from it
        // for the resource metrics (`crate::metrics`).
        let cgroup_procs = {
            let layout = cgroups::Layout::detect(Path::new(cgroups::ROOT));
            match cgroups::create(&layout, &self.uid, &c.name, &limits) {
                Ok(procs) => procs,
                Err(e) if limits.is_empty() => {
                    tracing::debug!(container = %c.name, error = %e, "no cgroup for accounting");
                    Vec::new()
                }
                Err(e) => {
                    let slot = &self.slots[index];
                    self.event(
                        "Warning",
                        "LimitsNotEnforced",
                        format!(
                            "container {}: resource limits are not enforced: {e}",
                            c.name
                        ),
                        Some(slot),
                    );
                    Vec::new()
                }
            }
        };
        let args = ShimArgs {
            netns: self.netns_path(),
            hostname: self.hostname(),
            log,
            rotation: self.ctx.config.container_logs,
            state,
            mounts,
            cgroups: cgroup_procs,
            workdir: c.working_dir.as_ref().map(PathBuf::from),
            argv,
        };
        self.slots[index].attempt += 1;
        match process::start(&self.ctx.config.shim_exe, &args, &env).await {
            Ok(Started::Running(running)) => {
                let slot = &self.slots[index];
                self.event(
                    "Normal",
                    "Started",
                    format!("Started container {}", c.name),
                    Some(slot),
                );
                self.supervise(index, attempt, running);
            }
            Ok(Started::Exited(record)) => {
                let message = record.message.clone();
                self.exited(index, record);
                let slot = &self.slots[index];
                self.event("Warning", "Failed", format!("Error: {message}"), Some(slot));
            }
            Err(e) => {
                let slot = &mut self.slots[index];
                slot.waiting = Some(("RunContainerError".into(), e.to_string()));
                slot.next_start = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }

    /// Takes over the containers an earlier agent started for this pod.
    fn adopt(&mut self) {
        for index in 0..self.slots.len() {
            let dir = self
                .dir
                .join("containers")
                .join(&self.slots[index].spec.name);
            let Some(latest) = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .max()
            else {
                continue;
            };
            match process::adopt(&dir.join(latest.to_string())) {
                Some(Started::Running(running)) => self.supervise(index, latest, running),
                Some(Started::Exited(record)) => {
                    self.slots[index].attempt = latest + 1;
                    self.slots[index].run_began = None;
                    self.exited(index, record);
                }
                None => {}
            }
        }
        // The tokens an earlier agent wrote: their lifetimes are not known here, so they are
        // replaced at once (as after a kubelet restart).
        let pod = Arc::clone(&self.pod);
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if !self.dir.join("volumes").join(&v.name).is_dir() {
                continue;
            }
            for t in v
                .projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .filter_map(|s| s.service_account_token.as_ref())
            {
                self.tokens.insert(
                    (v.name.clone(), t.path.clone()),
                    HeldToken {
                        token: None,
                        refresh_at: Instant::now(),
                        failing: false,
                    },
                );
            }
        }
    }

    fn log_path(&self, container: &str, attempt: u32) -> PathBuf {
        log_dir(&self.ctx.config.root, &self.uid, container).join(format!("{attempt}.log"))
    }

    /// Watches a running container: its end, and its probes.
    fn supervise(&mut self, index: usize, attempt: u32, running: Running) {
        let running = Arc::new(running);
        let ip = self
            .pod_ip()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let slot = &mut self.slots[index];
        slot.stop_tasks();
        slot.running = Some(Arc::clone(&running));
        slot.waiting = None;
        slot.run_began = Some(Instant::now());
        slot.ready = false;
        slot.started = false;
        slot.attempt = attempt + 1;
        let tx = self.events_tx.clone();
        let r = Arc::clone(&running);
        slot.tasks.push(tokio::spawn(async move {
            let record = r.wait().await;
            let _ = tx.send(Event::Exited {
                index,
                attempt,
                record,
            });
        }));
        if slot.init {
            return;
        }
        let target = Target {
            ip,
            pid: running.pid,
        };
        let spec = slot.spec.clone();
        let tx = self.events_tx.clone();
        slot.tasks.push(tokio::spawn(probe_container(
            spec, target, index, attempt, tx,
        )));
    }

    fn exited(&mut self, index: usize, mut record: ExitRecord) {
        let policy = self.restart_policy().to_owned();
        let slot = &mut self.slots[index];
        slot.stop_tasks();
        if let Some(r) = slot.running.take()
            && record.started_at.is_empty()
        {
            record.started_at = r.started_at.clone();
        }
        slot.ready = false;
        let ran_long = slot
            .run_began
            .take()
            .is_some_and(|t| t.elapsed() >= 2 * BACKOFF_MAX);
        if ran_long {
            slot.backoff = Duration::ZERO;
        }
        if slot.init && record.exit_code == 0 {
            slot.done = true;
        }
        let restart = if slot.init {
            record.exit_code != 0 && policy != "Never"
        } else {
            restart_wanted(&policy, record.exit_code)
        };
        slot.last = Some(record);
        if restart {
            let delay = slot.backoff;
            slot.backoff = if delay.is_zero() {
                BACKOFF_START
            } else {
                (delay * 2).min(BACKOFF_MAX)
            };
            slot.next_start = Some(Instant::now() + delay);
            if !delay.is_zero() {
                slot.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        delay.as_secs(),
                        slot.spec.name,
                        self.name,
                        self.namespace,
                        self.uid
                    ),
                ));
            }
        } else {
            slot.next_start = None;
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Exited {
                index,
                attempt,
                record,
            } => {
                if self.slots[index].attempt == attempt + 1 && self.slots[index].running.is_some() {
                    self.exited(index, record);
                    let slot = &self.slots[index];
                    if let Some((reason, message)) = &slot.waiting
                        && reason == "CrashLoopBackOff"
                    {
                        self.event("Warning", "BackOff", message.clone(), Some(slot));
                    }
                }
            }
            Event::Started { index, attempt } => {
                if self.slots[index].attempt == attempt + 1 {
                    self.slots[index].started = true;
                }
            }
            Event::Ready {
                index,
                attempt,
                ready,
            } => {
                if self.slots[index].attempt == attempt + 1 {
                    self.slots[index].ready = ready;
                }
            }
            Event::Unhealthy {
                index,
                attempt,
                probe,
                message,
                restart,
            } => {
                let slot = &self.slots[index];
                if slot.attempt != attempt + 1 {
                    return;
                }
                self.event(
                    "Warning",
                    "Unhealthy",
                    format!("{probe} probe failed: {message}"),
                    Some(slot),
                );
                if restart && let Some(running) = &slot.running {
                    self.event(
                        "Normal",
                        "Killing",
                        format!(
                            "Container {} failed {} probe, will be restarted",
                            slot.spec.name,
                            probe.to_lowercase()
                        ),
                        Some(slot),
                    );
                    let grace = self.grace_seconds(None);
                    stop_container(Arc::clone(running), grace);
                }
            }
        }
    }

    fn grace_seconds(&self, requested: Option<i64>) -> u64 {
        let g = requested
            .or(self.pod.metadata.deletion_grace_period_seconds)
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        // Capped at a year: the API sets no bound and deadlines must stay representable.
        u64::try_from(g.clamp(0, 31_536_000)).unwrap_or(0)
    }

    /// Stops every container: preStop hooks, SIGTERM, the grace period, SIGKILL.
    async fn terminate(&mut self, grace: Option<i64>, events: &mut mpsc::UnboundedReceiver<Event>) {
        let grace = Duration::from_secs(self.grace_seconds(grace));
        let deadline = Instant::now() + grace;
        let mut waits = Vec::new();
        for slot in &mut self.slots {
            slot.next_start = None;
            for t in slot.tasks.drain(..) {
                t.abort();
            }
            if let Some(running) = slot.running.clone() {
                let pre_stop = slot
                    .spec
                    .lifecycle
                    .as_ref()
                    .and_then(|l| l.pre_stop.clone());
                let ip = self.sandbox.as_ref().map(|s| s.ip);
                let spec = slot.spec.clone();
                waits.push(tokio::spawn(async move {
                    if let Some(hook) = pre_stop
                        && !grace.is_zero()
                    {
                        let probe = Probe {
                            exec: hook.exec,
                            http_get: hook.http_get,
                            tcp_socket: hook.tcp_socket,
                            timeout_seconds: i32::try_from(grace.as_secs()).ok(),
                            ..Default::default()
                        };
                        let target = Target {
                            ip: IpAddr::V4(ip.unwrap_or(Ipv4Addr::LOCALHOST)),
                            pid: running.pid,
                        };
                        if let Some(sleep) = hook.sleep {
                            let s = u64::try_from(sleep.seconds.max(0)).unwrap_or(0);
                            let _ = tokio::time::timeout_at(
                                deadline,
                                tokio::time::sleep(Duration::from_secs(s)),
                            )
                            .await;
                        } else {
                            let _ = tokio::time::timeout_at(
                                deadline,
                                probe::run_once(&probe, &spec, &target),
                            )
                            .await;
                        }
                    }
                    if grace.is_zero() {
                        running.kill();
                    } else {
                        running.signal(libc::SIGTERM);
                    }
                    match tokio::time::timeout_at(deadline, running.wait()).await {
                        Ok(r) => r,
                        Err(_) => {
                            running.kill();
                            running.wait().await
                        }
                    }
                }));
            }
        }
        if !waits.is_empty() {
            let names: Vec<String> = self
                .slots
                .iter()
                .filter(|s| s.running.is_some())
                .map(|s| s.spec.name.clone())
                .collect();
            self.event(
                "Normal",
                "Killing",
                format!("Stopping container {}", names.join(", ")),
                None,
            );
        }
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].running.is_some())
            .collect();
        for (index, wait) in running.into_iter().zip(waits) {
            if let Ok(record) = wait.await {
                let slot = &mut self.slots[index];
                slot.running = None;
                slot.ready = false;
                slot.last = Some(record);
                slot.waiting = None;
            }
        }
        // Drain events from the aborted tasks.
        while events.try_recv().is_ok() {}
    }

    async fn cleanup(&mut self) {
        if !self.host_network() {
            let network = self.ctx.network.clone();
            let uid = self.uid.clone();
            let _ = tokio::task::spawn_blocking(move || network.remove_sandbox(&uid)).await;
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        cgroups::remove(
            &cgroups::Layout::detect(Path::new(cgroups::ROOT)),
            &self.uid,
        );
    }

    /// Forgets what was last sent when the API holds another readiness than this agent sent
    /// (the node lifecycle controller marks pods not ready while their node is unreachable), so
    /// the next [`Worker::publish`] puts the truth back, as the kubelet does after a partition.
    fn resend_if_overwritten(&mut self) {
        let Some(sent) = &self.last_status else {
            return;
        };
        let sent_ready = sent["conditions"].as_array().and_then(|c| {
            c.iter()
                .find(|c| c["type"] == "Ready")
                .and_then(|c| c["status"].as_str())
        });
        let api_ready = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        if api_ready.is_some() && sent_ready.is_some() && api_ready != sent_ready {
            // As the kubelet does, the readiness put back is a transition of its own (from what
            // the API held), which is how the node lifecycle controller tells it from the
            // readiness it overrode.
            self.last_status = None;
            self.transitions.remove("Ready");
            self.transitions.remove("ContainersReady");
        }
    }

    fn publish(&mut self) {
        let status = status(&StatusInput {
            pod: &self.pod,
            slots: &self.slots,
            pod_ip: self.pod_ip(),
            host_ip: self.ctx.config.host_ip,
            sandbox_ready: self.sandbox.is_some(),
            start_time: &self.start_time,
            uid: &self.uid,
        });
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        self.last_status = Some(status.clone());
        let mut status = status;
        if let Some(conditions) = status["conditions"].as_array_mut() {
            let now = now_rfc3339();
            for c in conditions {
                let kind = c["type"].as_str().unwrap_or_default().to_owned();
                let state = c["status"].as_str().unwrap_or_default().to_owned();
                let (_, since) = self
                    .transitions
                    .entry(kind)
                    .and_modify(|(old, since)| {
                        if *old != state {
                            old.clone_from(&state);
                            since.clone_from(&now);
                        }
                    })
                    .or_insert_with(|| (state.clone(), now.clone()));
                c["lastTransitionTime"] = json!(since);
            }
        }
        let _ = self.ctx.updates.send(Update::Status {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            status,
        });
    }
}

/// Kills a container the kubelet way: SIGTERM, then SIGKILL after `grace` seconds.
fn stop_container(running: Arc<Running>, grace: u64) {
    tokio::spawn(async move {
        running.signal(libc::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(grace), running.wait())
            .await
            .is_err()
        {
            running.kill();
        }
    });
}

fn restart_wanted(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Runs a container's startup, then liveness and readiness probes, reporting to the worker.
async fn probe_container(
    spec: Container,
    target: Target,
    index: usize,
    attempt: u32,
    tx: mpsc::UnboundedSender<Event>,
) {
    let report = |probe: &'static str, message: String, restart: bool| {
        let _ = tx.send(Event::Unhealthy {
            index,
            attempt,
            probe,
            message,
            restart,
        });
    };
    if let Some(startup) = &spec.startup_probe
        && !until_failed(startup, &spec, &target, true, |m, r| {
            report("Startup", m, r)
        })
        .await
    {
        return;
    }
    let _ = tx.send(Event::Started { index, attempt });
    let readiness = {
        let (spec, target, tx) = (spec.clone(), target.clone(), tx.clone());
        async move {
            let Some(probe) = spec.readiness_probe.clone() else {
                let _ = tx.send(Event::Ready {
                    index,
                    attempt,
                    ready: true,
                });
                return;
            };
            let timing = Timing::of(&probe);
            tokio::time::sleep(timing.initial_delay).await;
            let (mut ok, mut bad, mut ready) = (0, 0, false);
            loop {
                match probe::run_once(&probe, &spec, &target).await {
                    Ok(()) => {
                        ok += 1;
                        bad = 0;
                        if !ready && ok >= timing.success_threshold {
                            ready = true;
                            let _ = tx.send(Event::Ready {
                                index,
                                attempt,
                                ready,
                            });
                        }
                    }
                    Err(message) => {
                        bad += 1;
                        ok = 0;
                        // Every failure is an Unhealthy event, as the kubelet records them;
                        // repeats are counted up on one Event by the agent.
                        let _ = tx.send(Event::Unhealthy {
                            index,
                            attempt,
                            probe: "Readiness",
                            message,
                            restart: false,
                        });
                        if ready && bad >= timing.failure_threshold {
                            ready = false;
                            let _ = tx.send(Event::Ready {
                                index,
                                attempt,
                                ready,
                            });
                        }
                    }
                }
                tokio::time::sleep(timing.period).await;
            }
        }
    };
    let liveness = async {
        if let Some(probe) = &spec.liveness_probe {
            until_failed(probe, &spec, &target, false, |m, r| {
                report("Liveness", m, r)
            })
            .await;
        }
    };
    tokio::join!(readiness, liveness);
}

/// Runs `probe` every period (after its initial delay) until it has failed `failure_threshold`
/// times in a row, or, with `until_pass`, until it first passes; returns whether it passed.
/// Each failure goes to `failed` with its message and whether it was the last allowed one (the
/// container is then restarted).
async fn until_failed(
    probe: &Probe,
    spec: &Container,
    target: &Target,
    until_pass: bool,
    failed: impl Fn(String, bool),
) -> bool {
    let timing = Timing::of(probe);
    tokio::time::sleep(timing.initial_delay).await;
    let mut bad = 0;
    loop {
        match probe::run_once(probe, spec, target).await {
            Ok(()) if until_pass => return true,
            Ok(()) => bad = 0,
            Err(message) => {
                bad += 1;
                let last = bad >= timing.failure_threshold;
                failed(message, last);
                if last {
                    return false;
                }
            }
        }
        tokio::time::sleep(timing.period).await;
    }
}

/// Kubernetes' `$(VAR)` expansion in command, args and env values (`$$` escapes a `$`;
/// unknown variables stay as written).
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The pod's resolv.conf for its dnsPolicy, or `None` to copy the node's (`Default`).
pub fn resolv_conf(
    policy: Option<&str>,
    host_network: bool,
    namespace: &str,
    domain: &str,
    dns: Ipv4Addr,
    config: Option<&k8s_openapi::api::core::v1::PodDNSConfig>,
) -> Option<String> {
    let policy = policy.unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirst" => !host_network,
        "ClusterFirstWithHostNet" => true,
        "None" => false,
        _ => return None,
    };
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut options = Vec::new();
    if cluster {
        servers.push(dns.to_string());
        search.extend([
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.to_owned(),
        ]);
        options.push("ndots:5".to_owned());
    } else if policy != "None" {
        return None;
    }
    if let Some(cfg) = config {
        servers.extend(cfg.nameservers.iter().flatten().cloned());
        search.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            options.retain(|x: &String| x.split(':').next() != Some(name.as_str()));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    let mut out = String::new();
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    Some(out)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct StatusInput<'a> {
    pod: &'a Pod,
    slots: &'a [Slot],
    pod_ip: Option<Ipv4Addr>,
    host_ip: Ipv4Addr,
    sandbox_ready: bool,
    start_time: &'a str,
    uid: &'a str,
}

fn container_status(slot: &Slot, uid: &str) -> Value {
    let id = format!("rudder://{uid}/{}/{}", slot.spec.name, slot.restart_count());
    let terminated = |r: &ExitRecord| {
        let mut t = json!({
            "exitCode": r.exit_code,
            "reason": r.reason,
            "finishedAt": r.finished_at,
            "containerID": id,
        });
        if !r.started_at.is_empty() {
            t["startedAt"] = json!(r.started_at);
        }
        if let Some(s) = r.signal {
            t["signal"] = json!(s);
        }
        if !r.message.is_empty() {
            t["message"] = json!(r.message);
        }
        json!({"terminated": t})
    };
    let (state, last) = if let Some(r) = &slot.running {
        (
            json!({"running": {"startedAt": r.started_at}}),
            slot.last.as_ref().map(terminated),
        )
    } else if let Some((reason, message)) = &slot.waiting {
        let mut w = json!({"reason": reason});
        if !message.is_empty() {
            w["message"] = json!(message);
        }
        (json!({"waiting": w}), slot.last.as_ref().map(terminated))
    } else if let Some(last) = &slot.last {
        (terminated(last), None)
    } else {
        (json!({"waiting": {"reason": "ContainerCreating"}}), None)
    };
    let image = slot.spec.image.clone().unwrap_or_default();
    let mut s = json!({
        "name": slot.spec.name,
        "image": image,
        "imageID": format!("rudder://{image}"),
        "ready": slot.ready && slot.running.is_some(),
        "restartCount": slot.restart_count(),
        "started": slot.running.is_some() && slot.started,
        "state": state,
        "lastState": last.unwrap_or_else(|| json!({})),
    });
    if slot.running.is_some() || slot.last.is_some() {
        s["containerID"] = json!(id);
    }
    s
}

/// The pod status the kubelet would report (pure; `generate` in kubelet terms).
fn status(input: &StatusInput<'_>) -> Value {
    let policy = input
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let inits: Vec<&Slot> = input.slots.iter().filter(|s| s.init).collect();
    let mains: Vec<&Slot> = input.slots.iter().filter(|s| !s.init).collect();
    let initialized = inits.iter().all(|s| s.done);
    let init_failed = inits
        .iter()
        .any(|s| !s.done && s.running.is_none() && s.last.is_some() && policy == "Never");
    let running = mains.iter().filter(|s| s.running.is_some()).count();
    let finished: Vec<&ExitRecord> = mains
        .iter()
        .filter(|s| s.running.is_none() && s.next_start.is_none())
        .filter_map(|s| s.last.as_ref())
        .collect();
    let all_finished = !mains.is_empty() && finished.len() == mains.len();
    let phase = if init_failed {
        "Failed"
    } else if all_finished && policy != "Always" {
        if finished.iter().all(|r| r.exit_code == 0) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if running > 0 || mains.iter().any(|s| s.last.is_some()) {
        "Running"
    } else {
        "Pending"
    };
    let containers_ready =
        !mains.is_empty() && mains.iter().all(|s| s.ready && s.running.is_some());
    let cond = |kind: &str, ok: bool, reason: Option<&str>| {
        let mut c = json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "lastProbeTime": null,
        });
        if let Some(r) = reason.filter(|_| !ok) {
            c["reason"] = json!(r);
        }
        c
    };
    let not_ready: Vec<&str> = mains
        .iter()
        .filter(|s| !(s.ready && s.running.is_some()))
        .map(|s| s.spec.name.as_str())
        .collect();
    let done_reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let mut ready_cond = cond("Ready", containers_ready, Some(done_reason));
    let mut cready_cond = cond("ContainersReady", containers_ready, Some(done_reason));
    if !containers_ready && done_reason == "ContainersNotReady" {
        let msg = format!("containers with unready status: [{}]", not_ready.join(" "));
        ready_cond["message"] = json!(msg);
        cready_cond["message"] = json!(msg);
    }
    let mut init_cond = cond("Initialized", initialized, Some("ContainersNotInitialized"));
    if !initialized {
        let pending: Vec<&str> = inits
            .iter()
            .filter(|s| !s.done)
            .map(|s| s.spec.name.as_str())
            .collect();
        init_cond["message"] = json!(format!(
            "containers with incomplete status: [{}]",
            pending.join(" ")
        ));
    }
    let mut status = json!({
        "phase": phase,
        "conditions": [
            cond("PodReadyToStartContainers", input.sandbox_ready, None),
            init_cond,
            ready_cond,
            cready_cond,
            cond("PodScheduled", true, None),
        ],
        "hostIP": input.host_ip.to_string(),
        "hostIPs": [{"ip": input.host_ip.to_string()}],
        "startTime": input.start_time,
        "qosClass": qos_class(input.pod),
        "containerStatuses": mains.iter().map(|s| container_status(s, input.uid)).collect::<Vec<_>>(),
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(
            inits
                .iter()
                .map(|s| container_status(s, input.uid))
                .collect::<Vec<_>>()
        );
    }
    if let Some(ip) = input.pod_ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    status
}

/// Guaranteed when every container sets equal CPU and memory requests and limits, BestEffort when
/// none sets any, Burstable otherwise.
fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.clone().unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        if !limits.is_empty() || !requests.is_empty() {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let limit = limits.get(res);
            let request = requests.get(res).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Path of a container's current log under the runtime root, for `kubectl logs`.
pub fn log_dir(root: &Path, uid: &str, container: &str) -> PathBuf {
    root.join("pods").join(uid).join("logs").join(container)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_like_kubernetes() {
        let env = vec![("A".to_owned(), "1".to_owned()), ("B".into(), "two".into())];
        assert_eq!(expand("$(A)-$(B)", &env), "1-two");
        assert_eq!(expand("$$(A) $(C) $ x$", &env), "$(A) $(C) $ x$");
        assert_eq!(expand("$(A", &env), "$(A");
    }

    #[test]
    fn resolv_conf_follows_dns_policy() {
        let dns = Ipv4Addr::new(10, 96, 0, 10);
        let first = resolv_conf(None, false, "web", "cluster.local", dns, None).unwrap();
        expect_test::expect![[r#"
            nameserver 10.96.0.10
            search web.svc.cluster.local svc.cluster.local cluster.local
            options ndots:5
        "#]]
        .assert_eq(&first);
        assert_eq!(
            resolv_conf(Some("Default"), false, "web", "cluster.local", dns, None),
            None
        );
        assert_eq!(
            resolv_conf(None, true, "web", "cluster.local", dns, None),
            None
        );
        let cfg = k8s_openapi::api::core::v1::PodDNSConfig {
            nameservers: Some(vec!["1.2.3.4".into()]),
            options: Some(vec![k8s_openapi::api::core::v1::PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            }]),
            ..Default::default()
        };
        let none =
            resolv_conf(Some("None"), false, "web", "cluster.local", dns, Some(&cfg)).unwrap();
        assert_eq!(none, "nameserver 1.2.3.4\noptions ndots:2\n");
    }

    fn slot(name: &str, init: bool) -> Slot {
        Slot::new(
            Container {
                name: name.into(),
                image: Some("img".into()),
                ..Default::default()
            },
            init,
        )
    }

    fn exit(code: i32) -> ExitRecord {
        ExitRecord {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            finished_at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        }
    }

    fn phase_of(policy: &str, slots: &[Slot]) -> String {
        let pod = Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                restart_policy: Some(policy.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = status(&StatusInput {
            pod: &pod,
            slots,
            pod_ip: Some(Ipv4Addr::new(10, 244, 0, 2)),
            host_ip: Ipv4Addr::new(172, 30, 0, 2),
            sandbox_ready: true,
            start_time: "2026-01-01T00:00:00Z",
            uid: "u",
        });
        s["phase"].as_str().unwrap().to_owned()
    }

    #[test]
    fn phases_follow_containers_and_restart_policy() {
        assert_eq!(phase_of("Always", &[slot("a", false)]), "Pending");
        let mut done = slot("a", false);
        done.last = Some(exit(0));
        done.waiting = None;
        assert_eq!(phase_of("Never", &[done]), "Succeeded");
        let mut failed = slot("a", false);
        failed.last = Some(exit(1));
        failed.waiting = None;
        assert_eq!(phase_of("Never", &[failed]), "Failed");
        let mut backing_off = slot("a", false);
        backing_off.last = Some(exit(1));
        backing_off.next_start = Some(Instant::now());
        assert_eq!(phase_of("OnFailure", &[backing_off]), "Running");
        let mut init = slot("i", true);
        init.last = Some(exit(1));
        assert_eq!(phase_of("Never", &[init, slot("a", false)]), "Failed");
    }

    #[test]
    fn restart_policies() {
        assert!(restart_wanted("Always", 0));
        assert!(restart_wanted("OnFailure", 2));
        assert!(!restart_wanted("OnFailure", 0));
        assert!(!restart_wanted("Never", 1));
    }
}
