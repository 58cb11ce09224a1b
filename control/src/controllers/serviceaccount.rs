//! The ServiceAccount controller: every active Namespace has a ServiceAccount named `default`,
//! as kube-controller-manager's `serviceaccount` controller keeps it. Pods name it when they
//! name none (`spec.serviceAccountName` defaults to `default`), so a new namespace gets one
//! within moments, and one that is deleted comes back. A namespace being deleted gets none.
//!
//! It also publishes the cluster CA as the `kube-root-ca.crt` ConfigMap (key `ca.crt`) in every
//! active namespace, as kube-controller-manager's `root-ca-cert-publisher` does: pods' projected
//! token volumes read it to trust the apiserver. A copy that is deleted or changed is put back.
//!
//! Tokens are the apiserver's (`api::tokens`, the TokenRequest API).

use std::sync::Arc;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use super::informer::{Change, Informer, Key, WorkQueue, work};

/// The name of the account every namespace has.
pub const DEFAULT: &str = "default";

/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA: &str = "kube-root-ca.crt";

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// Namespaces.
    pub namespaces: Arc<Informer<Namespace>>,
    /// ServiceAccounts.
    pub accounts: Arc<Informer<ServiceAccount>>,
    /// ConfigMaps (for `kube-root-ca.crt`).
    pub config_maps: Arc<Informer<ConfigMap>>,
}

/// Whether `namespace` should get a `default` ServiceAccount it lacks: it is not being
/// deleted.
pub fn needs_default(namespace: &Namespace, has_default: bool) -> bool {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Terminating");
    !has_default && !terminating
}

/// The `kube-root-ca.crt` ConfigMap's data for the CA `ca_pem`.
fn root_ca_data(ca_pem: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("ca.crt".to_owned(), ca_pem.to_owned())])
}

/// Runs the controller until the informers end; `ca_pem` is the cluster CA to publish.
pub async fn run(client: Client, caches: Caches, ca_pem: String) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new();
    let mut namespaces = caches.namespaces.subscribe();
    let mut accounts = caches.accounts.subscribe();
    let mut config_maps = caches.config_maps.subscribe();
    caches.namespaces.synced().await;
    caches.accounts.synced().await;
    caches.config_maps.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for ns in caches.namespaces.store().state() {
                queue.add(ns.metadata.name.clone().unwrap_or_default());
            }
        }
    };
    enqueue_all();
    let dispatch = {
        let queue = queue.clone();
        async move {
            loop {
                tokio::select! {
                    change = namespaces.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c
                            .objects()
                            .for_each(|n| queue.add(n.metadata.name.clone().unwrap_or_default())),
                        None => break,
                    },
                    change = accounts.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        // Only a deleted `default` matters.
                        Some(Change::Object { old: Some(sa), new: None })
                            if sa.metadata.name.as_deref() == Some(DEFAULT) =>
                        {
                            queue.add(sa.metadata.namespace.clone().unwrap_or_default());
                        }
                        Some(_) => {}
                        None => break,
                    },
                    change = config_maps.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c
                            .objects()
                            .filter(|cm| cm.metadata.name.as_deref() == Some(ROOT_CA))
                            .for_each(|cm| {
                                queue.add(cm.metadata.namespace.clone().unwrap_or_default());
                            }),
                        None => break,
                    },
                }
            }
        }
    };
    let work = work(queue, "creating the default service account", |namespace| {
        let (client, caches, ca_pem) = (&client, &caches, &ca_pem);
        async move {
            let Some(ns) = caches.namespaces.store().get(
                &Key {
                    namespace: String::new(),
                    name: namespace.clone(),
                }
                .object_ref(),
            ) else {
                return Ok(None);
            };
            let has_default = caches
                .accounts
                .store()
                .get(
                    &Key {
                        namespace: namespace.clone(),
                        name: DEFAULT.to_owned(),
                    }
                    .object_ref(),
                )
                .is_some();
            publish_root_ca(client, caches, &ns, &namespace, ca_pem).await?;
            if !needs_default(&ns, has_default) {
                return Ok(None);
            }
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
            let account = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(DEFAULT.to_owned()),
                    namespace: Some(namespace.clone()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            let pp = PostParams {
                field_manager: Some("serviceaccount-controller".into()),
                ..PostParams::default()
            };
            match api.create(&pp, &account).await {
                Ok(_) => {
                    tracing::info!(namespace, "created the default service account");
                    Ok(None)
                }
                // Already there (the cache lags), or the namespace is going away.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

/// Puts `kube-root-ca.crt` with `ca_pem` in `namespace` unless it is there already or the
/// namespace is going away.
async fn publish_root_ca(
    client: &Client,
    caches: &Caches,
    ns: &Namespace,
    namespace: &str,
    ca_pem: &str,
) -> Result<(), kube::Error> {
    let want = root_ca_data(ca_pem);
    let existing = caches.config_maps.store().get(
        &Key {
            namespace: namespace.to_owned(),
            name: ROOT_CA.to_owned(),
        }
        .object_ref(),
    );
    if existing
        .as_ref()
        .is_some_and(|cm| cm.data.as_ref() == Some(&want))
        || !needs_default(ns, existing.is_some())
    {
        return Ok(());
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let pp = PostParams {
        field_manager: Some("root-ca-cert-publisher".into()),
        ..PostParams::default()
    };
    let result = match existing {
        Some(cm) => {
            let mut fixed = (*cm).clone();
            fixed.data = Some(want);
            fixed.binary_data = None;
            api.replace(ROOT_CA, &pp, &fixed).await
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    ..ObjectMeta::default()
                },
                data: Some(want),
                ..ConfigMap::default()
            };
            api.create(&pp, &cm).await
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_namespaces_without_one_get_a_default_account() {
        let active = Namespace::default();
        assert!(needs_default(&active, false));
        assert!(!needs_default(&active, true));
        let terminating = Namespace {
            status: Some(k8s_openapi::api::core::v1::NamespaceStatus {
                phase: Some("Terminating".into()),
                ..Default::default()
            }),
            ..Namespace::default()
        };
        assert!(!needs_default(&terminating, false));
        let mut deleted = Namespace::default();
        deleted.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert!(!needs_default(&deleted, false));
    }
}
