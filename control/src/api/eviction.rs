//! `POST pods/{name}/eviction` (`policy/v1` Eviction): a delete that PodDisruptionBudgets may
//! refuse, what `kubectl drain` uses once discovery lists `pods/eviction`.
//!
//! As kube-apiserver's eviction REST:
//! - a pod that is Pending, Succeeded, Failed or already being deleted is deleted without
//!   looking at budgets (it is not running, so evicting it disrupts nothing);
//! - a pod no budget selects is deleted;
//! - a pod selected by more than one budget is refused (500: the eviction subresource does not
//!   support several budgets per pod);
//! - a pod that is not Ready is deleted without spending the budget when the budget's
//!   `unhealthyPodEvictionPolicy` is `AlwaysAllow`, or (the default, `IfHealthyBudget`) when the
//!   budget is met (`currentHealthy >= desiredHealthy > 0`);
//! - otherwise the budget must have been computed for its current generation and allow a
//!   disruption: one is taken (`disruptionsAllowed - 1`, the pod recorded in `disruptedPods`)
//!   with a compare-and-swap on the budget, then the pod is deleted with the Eviction's
//!   `deleteOptions`. With none allowed the answer is 429 TooManyRequests, "Cannot evict pod as it
//!   would violate the pod's disruption budget.", with a `DisruptionBudget` cause saying how
//!   many healthy pods the budget needs and has; kubectl drain retries it every 5 s.
//!
//! Success is 201 with a `Success` Status. The disruption controller
//! (`controllers::disruption`) recomputes the budget from the pods as they go.

use std::sync::Arc;

use http::{Response, StatusCode};
use jiff::Timestamp;
use k8s_openapi::{api::policy::v1::PodDisruptionBudget, apimachinery::pkg::apis::meta::v1::Time};
use serde_json::{Value, json};

use super::{
    Body, State, json_response, object,
    registry::ResourceType,
    request::Request,
    rest::{self, DeleteOptions, ListQuery},
    status::{ApiError, ApiResult, success_status},
};
use crate::{
    cached::Pod,
    controllers::{
        disruption::{MAX_DISRUPTED_PODS, allowed_condition, selects},
        workload::is_pod_ready,
    },
    store,
};

/// The message kubectl drain shows while a budget holds a pod.
pub const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// How many times a budget changed underneath an eviction is read again.
const RETRIES: usize = 16;

/// What to do with an eviction.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Delete the pod; no budget is spent.
    Delete,
    /// Take one disruption from the budget at this index, then delete.
    Spend(usize),
    /// Refuse.
    Refuse(ApiError),
}

fn too_many_requests(budget: &str, why: String) -> ApiError {
    ApiError {
        code: 429,
        reason: "TooManyRequests",
        message: REFUSED.to_owned(),
        details: Some(json!({
            "causes": [{"reason": "DisruptionBudget", "message": why}],
            "retryAfterSeconds": 0,
            "name": budget,
        })),
    }
}

/// The verdict for evicting `pod` given the budgets that select it.
pub fn verdict(pod: &Pod, budgets: &[PodDisruptionBudget]) -> Verdict {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Pending" | "Succeeded" | "Failed"))
        || pod.metadata.deletion_timestamp.is_some()
    {
        return Verdict::Delete;
    }
    let pdb = match budgets {
        [] => return Verdict::Delete,
        [one] => one,
        _ => {
            return Verdict::Refuse(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let name = pdb.metadata.name.as_deref().unwrap_or_default();
    let status = pdb.status.clone().unwrap_or_default();
    let healthy = status.current_healthy.unwrap_or(0);
    let desired = status.desired_healthy.unwrap_or(0);
    if !is_pod_ready(pod) {
        let policy = pdb
            .spec
            .as_ref()
            .and_then(|s| s.unhealthy_pod_eviction_policy.as_deref());
        if policy == Some("AlwaysAllow") || (healthy >= desired && desired > 0) {
            return Verdict::Delete;
        }
    }
    if status.observed_generation.unwrap_or(0) < pdb.metadata.generation.unwrap_or(0) {
        return Verdict::Refuse(too_many_requests(
            name,
            format!("The disruption budget {name} is still being processed by the server."),
        ));
    }
    let allowed = status.disruptions_allowed.unwrap_or(0);
    if allowed < 0 {
        return Verdict::Refuse(ApiError::forbidden("pdb disruptions allowed is negative"));
    }
    if status.disrupted_pods.as_ref().map_or(0, |d| d.len()) > MAX_DISRUPTED_PODS {
        return Verdict::Refuse(ApiError::forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Verdict::Refuse(too_many_requests(
            name,
            format!(
                "The disruption budget {name} needs {desired} healthy pods and has {healthy} currently"
            ),
        ));
    }
    Verdict::Spend(0)
}

/// `pdb` with one disruption taken for `pod` at `now`.
pub fn spend(pdb: &PodDisruptionBudget, pod: &str, now: Timestamp) -> PodDisruptionBudget {
    let mut out = pdb.clone();
    let status = out.status.get_or_insert_with(Default::default);
    let allowed = status.disruptions_allowed.unwrap_or(0) - 1;
    status.disruptions_allowed = Some(allowed);
    status
        .disrupted_pods
        .get_or_insert_with(Default::default)
        .insert(pod.to_owned(), Time(now));
    if allowed == 0 {
        let condition = allowed_condition(
            0,
            pdb.metadata.generation,
            status.conditions.as_deref(),
            now,
        );
        status.conditions = Some(vec![condition]);
    }
    out
}

/// POST `pods/{name}/eviction`.
pub async fn serve(
    state: &Arc<State>,
    pods: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    req: &mut Request,
) -> ApiResult<Response<Body>> {
    let eviction = req.object(state.max_body_bytes).await?;
    if let Some(Err(e)) = super::validation::normalize_builtin("policy", "Eviction", &eviction) {
        return Err(ApiError::bad_request(format!(
            "Eviction cannot be handled: {} (field {})",
            e.message, e.path
        )));
    }
    if let Some(body_name) = eviction.pointer("/metadata/name").and_then(Value::as_str)
        && !body_name.is_empty()
        && body_name != name
    {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let mut opts = eviction
        .get("deleteOptions")
        .map(DeleteOptions::from_object)
        .unwrap_or_default();
    opts.dry_run |= req.dry_run();
    opts.check()?;
    let budgets_type = state
        .registry
        .lookup("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not served"))?;
    for _ in 0..RETRIES {
        let (pod_json, _) = rest::read(state, pods, Some(ns), name).await?;
        let pod: Pod = serde_json::from_value(pod_json)
            .map_err(|e| ApiError::internal(format!("decoding pod {name}: {e}")))?;
        let (listed, _, _) = rest::list_objects(
            state,
            &budgets_type,
            Some(ns),
            &ListQuery::default(),
            0,
            None,
        )
        .await?;
        let mut budgets = Vec::new();
        for item in listed {
            let pdb: PodDisruptionBudget = serde_json::from_value(item).map_err(|e| {
                ApiError::internal(format!("decoding a PodDisruptionBudget in {ns}: {e}"))
            })?;
            if selects(&pdb, &pod.metadata) {
                budgets.push(pdb);
            }
        }
        match verdict(&pod, &budgets) {
            Verdict::Refuse(e) => return Err(e),
            Verdict::Delete => {}
            Verdict::Spend(i) => {
                if !opts.dry_run {
                    let pdb = &budgets[i];
                    let spent = spend(pdb, name, Timestamp::now());
                    let rev = pdb
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0);
                    let mut stored = serde_json::to_value(&spent)
                        .map_err(|e| ApiError::internal(format!("encoding a budget: {e}")))?;
                    object::meta_mut(&mut stored).remove("resourceVersion");
                    let bytes = serde_json::to_vec(&stored)
                        .map_err(|e| ApiError::internal(format!("encoding a budget: {e}")))?;
                    let key = budgets_type.key(Some(ns), object::name(&stored));
                    match state.store.update(&key, bytes.into(), rev).await {
                        Ok(_) => {}
                        // Another eviction or the controller changed it: decide again.
                        Err(store::Error::Conflict { .. } | store::Error::NotFound(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        rest::delete_with(state, pods, Some(ns), name, &opts).await?;
        return Ok(json_response(
            StatusCode::CREATED,
            &success_status("policy", "Eviction", name, ""),
        ));
    }
    Err(ApiError::conflict(
        "",
        "pods",
        name,
        "the pod's disruption budget kept changing; try again",
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use k8s_openapi::{
        api::{
            core::v1::PodCondition,
            policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus},
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::cached::PodStatus;

    fn pod(phase: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn budget(allowed: i32, healthy: i32, desired: i32) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("db".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: Some(PodDisruptionBudgetSpec::default()),
            status: Some(PodDisruptionBudgetStatus {
                observed_generation: Some(1),
                disruptions_allowed: Some(allowed),
                current_healthy: Some(healthy),
                desired_healthy: Some(desired),
                ..PodDisruptionBudgetStatus::default()
            }),
        }
    }

    #[test]
    fn budgets_decide_evictions() {
        let running = pod("Running", true);
        assert_eq!(verdict(&running, &[]), Verdict::Delete);
        assert_eq!(verdict(&running, &[budget(1, 3, 2)]), Verdict::Spend(0));
        let Verdict::Refuse(e) = verdict(&running, &[budget(0, 2, 2)]) else {
            panic!("a spent budget must refuse");
        };
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (429, "TooManyRequests", REFUSED)
        );
        assert_eq!(
            e.details.unwrap()["causes"][0]["message"],
            "The disruption budget db needs 2 healthy pods and has 2 currently"
        );
        // Not yet computed for its generation.
        let mut stale = budget(1, 3, 2);
        stale.metadata.generation = Some(2);
        let Verdict::Refuse(e) = verdict(&running, &[stale]) else {
            panic!("a stale budget must refuse");
        };
        assert_eq!(e.code, 429);
        // Two budgets.
        let Verdict::Refuse(e) = verdict(&running, &[budget(1, 3, 2), budget(1, 3, 2)]) else {
            panic!("two budgets must refuse");
        };
        assert_eq!(e.code, 500);
        // Pods that are not running disrupt nothing.
        assert_eq!(
            verdict(&pod("Pending", false), &[budget(0, 0, 2)]),
            Verdict::Delete
        );
        assert_eq!(
            verdict(&pod("Succeeded", false), &[budget(0, 0, 2)]),
            Verdict::Delete
        );
        // An unready pod: deleted while the budget is met, else it must spend.
        let unready = pod("Running", false);
        assert_eq!(verdict(&unready, &[budget(0, 2, 2)]), Verdict::Delete);
        assert!(matches!(
            verdict(&unready, &[budget(0, 1, 2)]),
            Verdict::Refuse(_)
        ));
        let mut always = budget(0, 1, 2);
        always.spec.as_mut().unwrap().unhealthy_pod_eviction_policy = Some("AlwaysAllow".into());
        assert_eq!(verdict(&unready, &[always]), Verdict::Delete);
    }

    #[test]
    fn spending_records_the_pod_and_flips_the_condition_at_zero() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let spent = spend(&budget(1, 3, 2), "p", now);
        let status = spent.status.unwrap();
        assert_eq!(status.disruptions_allowed, Some(0));
        assert_eq!(status.disrupted_pods.unwrap()["p"], Time(now));
        assert_eq!(status.conditions.unwrap()[0].reason, "InsufficientPods");
        let spent = spend(&budget(2, 4, 2), "p", now).status.unwrap();
        assert_eq!(spent.disruptions_allowed, Some(1));
        assert_eq!(spent.conditions, None);
    }
}
