//! `rudder server`: opens the store, prepares credentials, bootstraps the cluster's built-in
//! objects and serves the apiserver.
//!
//! Bootstrap objects (created once, like kube-apiserver's): namespaces `default`, `kube-system`,
//! `kube-public`, `kube-node-lease`, and the `kubernetes` Service at the first address of the
//! service CIDR (10.96.0.1:443) with an EndpointSlice pointing at this apiserver.
//!
//! History is compacted every 5 minutes to the revision seen 5 minutes earlier (kube-apiserver's
//! schedule), so watches can resume across short disconnects while the store stays small.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde_json::json;

use crate::{
    api::{self, State, allocator::Cidr, rest},
    auth::Credentials,
    store::{Store, embedded::EmbeddedStore, etcd::EtcdStore},
};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error("opening the store")]
    Store(#[from] crate::store::Error),
    /// Credentials could not be prepared.
    #[error("preparing credentials")]
    Auth(#[from] crate::auth::Error),
    /// Binding the listener or another I/O step failed.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// The ServiceAccount token signing key could not be loaded or made.
    #[error("preparing the service account signing key")]
    Keys(#[from] api::tokens::KeyError),
    /// Creating a bootstrap object failed.
    #[error("bootstrapping {0}: {1}")]
    Bootstrap(String, String),
}

/// Settings of `rudder server`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Data directory (store, credentials, kubeconfig).
    pub data_dir: PathBuf,
    /// etcd endpoints; empty means the embedded store.
    pub etcd_endpoints: Vec<String>,
    /// Address to listen on.
    pub bind_address: IpAddr,
    /// HTTPS port.
    pub secure_port: u16,
    /// Service CIDR (ClusterIPs).
    pub service_cidr: Cidr,
    /// Cluster (pod) CIDR.
    pub cluster_cidr: Cidr,
    /// Address other nodes and pods use to reach this apiserver.
    pub advertise_address: Option<Ipv4Addr>,
}

/// A running apiserver.
pub struct Server {
    /// Shared state (store, registry...).
    pub state: Arc<State>,
    /// Where the admin kubeconfig was written.
    pub kubeconfig: PathBuf,
    /// The HTTPS URL.
    pub url: String,
    /// The bound address.
    pub local_addr: std::net::SocketAddr,
    /// The address nodes and pods reach this apiserver at (also the local node's address).
    pub advertise_address: Ipv4Addr,
    listener: Option<tokio::net::TcpListener>,
}

impl Server {
    /// Opens everything and bootstraps; call [`Server::serve`] to answer requests.
    pub async fn start(config: Config) -> Result<Self, Error> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::Io(format!("creating {}", config.data_dir.display()), e))?;
        let store: Arc<dyn Store> = if config.etcd_endpoints.is_empty() {
            Arc::new(EmbeddedStore::open(&config.data_dir.join("db"))?)
        } else {
            Arc::new(EtcdStore::connect(&config.etcd_endpoints).await?)
        };
        let advertise = config
            .advertise_address
            .unwrap_or_else(|| match config.bind_address {
                IpAddr::V4(ip) if !ip.is_unspecified() => ip,
                _ => host_address().unwrap_or(Ipv4Addr::LOCALHOST),
            });
        let mut sans = vec![advertise.to_string()];
        if !config.bind_address.is_unspecified() {
            sans.push(config.bind_address.to_string());
        }
        let credentials = Arc::new(Credentials::load_or_create(&config.data_dir, &sans)?);
        let listener = tokio::net::TcpListener::bind((config.bind_address, config.secure_port))
            .await
            .map_err(|e| {
                Error::Io(
                    format!(
                        "listening on {}:{}",
                        config.bind_address, config.secure_port
                    ),
                    e,
                )
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::Io("reading the listen address".into(), e))?;
        let url_host = if config.bind_address.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            config.bind_address.to_string()
        };
        let url = format!("https://{url_host}:{}", local_addr.port());
        let kubeconfig = credentials.write_client_files(&config.data_dir, &url)?;
        let service_account_keys = api::tokens::Keys::load_or_create(&store).await?;
        let state = Arc::new(State {
            allocator: api::allocator::Allocator::new(Arc::clone(&store), config.service_cidr),
            store,
            registry: api::registry::Registry::new(),
            credentials,
            max_body_bytes: api::DEFAULT_MAX_BODY_BYTES,
            bookmark_interval: Duration::from_secs(60),
            metrics: api::metrics::Samples::default(),
            service_account_keys,
        });
        load_crds(&state).await?;
        bootstrap(&state, advertise, local_addr.port()).await?;
        resume_namespace_deletions(&state).await?;
        spawn_compactor(Arc::clone(&state.store));
        api::metrics::spawn_scraper(&state);
        Ok(Self {
            state,
            kubeconfig,
            url,
            local_addr,
            advertise_address: advertise,
            listener: Some(listener),
        })
    }

    /// Serves HTTPS until the future is dropped.
    pub async fn serve(mut self) -> std::io::Result<()> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| std::io::Error::other("already serving"))?;
        api::serve(self.state, listener).await
    }
}

/// The first global IPv4 address of this host (for the `kubernetes` endpoints).
fn host_address() -> Option<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let cidr = line
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)?;
            cidr.split('/').next()?.parse().ok()
        })
}

async fn load_crds(state: &Arc<State>) -> Result<(), Error> {
    let page = state
        .store
        .list(
            "/registry/customresourcedefinitions/",
            crate::store::ListOptions::default(),
        )
        .await?;
    for kv in page.items {
        match rest::decode_stored(&kv) {
            Ok(crd) => api::crd::register(&state.registry, &crd),
            Err(e) => tracing::warn!(key = kv.key, error = %e.message, "skipping unreadable CRD"),
        }
    }
    Ok(())
}

async fn ensure(
    state: &Arc<State>,
    plural: &str,
    group: &str,
    ns: Option<&str>,
    obj: serde_json::Value,
) -> Result<(), Error> {
    let rt = state
        .registry
        .lookup(group, "v1", plural)
        .ok_or_else(|| Error::Bootstrap(plural.into(), "type not registered".into()))?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    if state.store.get(&rt.key(ns, name)).await?.is_some() {
        return Ok(());
    }
    match rest::create_object(
        state,
        &rt,
        ns,
        obj,
        rest::FieldValidation::Strict,
        false,
        Some("rudder"),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::Bootstrap(plural.into(), e.message)),
    }
}

async fn bootstrap(state: &Arc<State>, advertise: Ipv4Addr, port: u16) -> Result<(), Error> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(
            state,
            "namespaces",
            "",
            None,
            json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    let ip = state.allocator.service_cidr().nth(1).to_string();
    ensure(
        state,
        "services",
        "",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        }),
    )
    .await?;
    ensure(
        state,
        "endpoints",
        "",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": advertise.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        }),
    )
    .await?;
    ensure(
        state,
        "endpointslices",
        "discovery.k8s.io",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [advertise.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }),
    )
    .await
}

async fn resume_namespace_deletions(state: &Arc<State>) -> Result<(), Error> {
    let page = state
        .store
        .list(
            "/registry/namespaces/",
            crate::store::ListOptions::default(),
        )
        .await?;
    for kv in page.items {
        if let Ok(ns) = rest::decode_stored(&kv)
            && api::object::meta_str(&ns, "deletionTimestamp").is_some()
        {
            crate::controllers::namespace::spawn_finalizer(
                Arc::clone(state),
                api::object::name(&ns).to_owned(),
            );
        }
    }
    Ok(())
}

fn spawn_compactor(store: Arc<dyn Store>) {
    tokio::spawn(async move {
        let interval = Duration::from_secs(300);
        let mut previous: Option<i64> = None;
        loop {
            tokio::time::sleep(interval).await;
            if let Some(rev) = previous
                && let Err(e) = store.compact(rev).await
                && !matches!(e, crate::store::Error::Compacted { .. })
            {
                tracing::warn!(error = %e, "compaction failed");
            }
            previous = store.revision().await.ok();
        }
    });
}
