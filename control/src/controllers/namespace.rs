//! Namespace deletion: once a Namespace has a `deletionTimestamp`, every namespaced object in it
//! is removed, then the Namespace itself (its `kubernetes` finalizer is what kept it).
//!
//! Like Kubernetes' namespace controller, it starts a moment after the delete (here
//! [`START_DELAY`]), so a client deleting a namespace and then its contents one by one (`kubectl
//! delete -f` of a manifest that begins with the Namespace) sees its own deletes succeed.
//!
//! Runs inside the apiserver process against the store, started when a Namespace is deleted and,
//! at start-up, for Namespaces left terminating by a previous run. Objects are removed without
//! grace periods or their own finalizers: the namespace controller of Kubernetes waits for those;
//! that refinement arrives with the garbage collector.

use std::{sync::Arc, time::Duration};

use crate::api::{State, rest};

/// How long after the delete the contents start to go.
pub const START_DELAY: Duration = Duration::from_secs(2);

/// Starts deleting the contents of namespace `name` in the background.
pub fn spawn_finalizer(state: Arc<State>, name: String) {
    tokio::spawn(async move {
        tokio::time::sleep(START_DELAY).await;
        if let Err(e) = finalize(&state, &name).await {
            tracing::warn!(namespace = name, error = %e.message, "namespace deletion failed; will retry at next start");
        }
    });
}

async fn finalize(state: &Arc<State>, name: &str) -> Result<(), crate::api::status::ApiError> {
    for rt in state.registry.all().iter().filter(|t| t.namespaced) {
        let page = state
            .store
            .list(
                &rt.list_prefix(Some(name)),
                crate::store::ListOptions::default(),
            )
            .await?;
        for kv in page.items {
            rest::delete_now(state, rt, &kv.key).await?;
        }
    }
    let rt = state
        .registry
        .lookup("", "v1", "namespaces")
        .ok_or_else(|| crate::api::status::ApiError::internal("namespaces are not registered"))?;
    rest::delete_now(state, &rt, &rt.key(None, name)).await?;
    tracing::info!(namespace = name, "namespace deleted");
    Ok(())
}
