//! The ServiceAccount controller: every active Namespace has a ServiceAccount named `default`,
//! as kube-controller-manager's `serviceaccount` controller keeps it. Pods name it when they
//! name none (`spec.serviceAccountName` defaults to `default`), so a new namespace gets one
//! within moments, and one that is deleted comes back. A namespace being deleted gets none.
//!
//! Not done here: tokens (the TokenRequest API and projected token volumes) and the
//! `kube-root-ca.crt` ConfigMap of kube-controller-manager's root CA publisher.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use super::informer::{Change, Informer, Key, WorkQueue, work};

/// The name of the account every namespace has.
pub const DEFAULT: &str = "default";

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// Namespaces.
    pub namespaces: Arc<Informer<Namespace>>,
    /// ServiceAccounts.
    pub accounts: Arc<Informer<ServiceAccount>>,
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

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new();
    let mut namespaces = caches.namespaces.subscribe();
    let mut accounts = caches.accounts.subscribe();
    caches.namespaces.synced().await;
    caches.accounts.synced().await;
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
                }
            }
        }
    };
    let work = work(queue, "creating the default service account", |namespace| {
        let (client, caches) = (&client, &caches);
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
