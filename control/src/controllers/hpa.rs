//! The HorizontalPodAutoscaler controller (`autoscaling/v2`): every [`SYNC_PERIOD`] it reads the
//! CPU or memory its target's pods use from the resource metrics API (`metrics.k8s.io`, served by
//! the apiserver from the nodes' reports, see `api::metrics`) and sets the target's scale,
//! as kube-controller-manager's `horizontal-pod-autoscaler` controller does. The arithmetic is
//! [`autoscaling`]'s; this module is the loop around it.
//!
//! - The target is anything with a `scale` subresource (Deployment, ReplicaSet, StatefulSet,
//!   ReplicationController, a custom resource): found through discovery from
//!   `scaleTargetRef`, read and written through `/scale`. Its pods are the ones the Scale's
//!   `status.selector` matches.
//! - Metrics: `Resource` (cpu, memory) with a `Utilization` or `AverageValue` target. Other
//!   types (`Pods`, `Object`, `External`, `ContainerResource`) need a custom or external metrics
//!   API that rudder does not serve: the HPA says so in its `ScalingActive` condition. With
//!   several metrics the largest recommendation wins; one that fails to compute is skipped if
//!   another succeeds.
//! - A target scaled to 0 by hand switches autoscaling off (`ScalingDisabled`), as in
//!   Kubernetes.
//! - Status: `currentReplicas`, `desiredReplicas`, `currentMetrics` (what `kubectl get hpa`
//!   prints as TARGETS), `lastScaleTime`, and the `AbleToScale`, `ScalingActive` and
//!   `ScalingLimited` conditions; each rescale is a `SuccessfulRescale` event.
//! - The recommendations and scale events the stabilisation windows and policies look back on
//!   are kept in memory: a new leader starts with an empty history, as kube-controller-manager
//!   does.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::autoscaling::v2::{
        HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
        MetricSpec, MetricStatus, MetricValueStatus, ResourceMetricStatus,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time},
};
use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use rudder_node::quantity::quantity;
use serde_json::{Value, json};

use crate::cached::Pod;

use super::{
    Note,
    autoscaling::{self, History, PodSample, Target},
    informer::{Change, Informer, Key, WorkQueue, work},
};
use crate::api::selectors::LabelSelector;

/// How often every autoscaler is evaluated (kube-controller-manager's
/// `--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);

/// The event source.
const COMPONENT: &str = "horizontal-pod-autoscaler";

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// HorizontalPodAutoscalers.
    pub autoscalers: Arc<Informer<HorizontalPodAutoscaler>>,
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
}

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut autoscalers = caches.autoscalers.subscribe();
    caches.autoscalers.synced().await;
    caches.pods.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for hpa in caches.autoscalers.store().state() {
                queue.add(Key::of(&*hpa));
            }
        }
    };
    enqueue_all();
    let dispatch = {
        let queue = queue.clone();
        async move {
            loop {
                match autoscalers.next().await {
                    Some(Change::Resync) => enqueue_all(),
                    // A status write of ours comes back here: it is evaluated again at once,
                    // which changes nothing (the history holds the recommendation).
                    Some(Change::Object {
                        old,
                        new: Some(hpa),
                    }) if old.as_ref().is_none_or(|o| o.spec != hpa.spec) => {
                        queue.add(Key::of(&*hpa));
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }
    };
    let histories: Mutex<HashMap<String, History>> = Mutex::new(HashMap::new());
    let work = work(queue, "autoscaling", |key| {
        let (client, caches, histories) = (&client, &caches, &histories);
        async move {
            let Some(hpa) = caches.autoscalers.store().get(&key.object_ref()) else {
                return Ok(None);
            };
            reconcile(client, caches, &hpa, histories).await?;
            Ok(Some(SYNC_PERIOD))
        }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

/// A condition of the HPA's status.
fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
) -> HorizontalPodAutoscalerCondition {
    HorizontalPodAutoscalerCondition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.into()),
        last_transition_time: None,
        observed_generation: None,
    }
}

/// What one pass found, written to the status.
struct Outcome {
    current: i32,
    desired: i32,
    metrics: Vec<MetricStatus>,
    conditions: Vec<HorizontalPodAutoscalerCondition>,
    scaled: bool,
}

async fn reconcile(
    client: &Client,
    caches: &Caches,
    hpa: &HorizontalPodAutoscaler,
    histories: &Mutex<HashMap<String, History>>,
) -> Result<(), kube::Error> {
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let uid = hpa.metadata.uid.clone().unwrap_or_default();
    {
        // Forget the histories of autoscalers that are gone.
        let live: Vec<String> = caches
            .autoscalers
            .store()
            .state()
            .iter()
            .filter_map(|h| h.metadata.uid.clone())
            .collect();
        let mut h = histories.lock().unwrap_or_else(|e| e.into_inner());
        h.retain(|k, _| live.contains(k));
    }
    let target = &hpa.spec.scale_target_ref;
    let reference = format!("{}/{}", target.kind, target.name);
    let hpa_api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let outcome = match scale_api(client, &ns, hpa).await {
        Err(message) => {
            let reason = "FailedGetScale";
            let msg = format!(
                "the HPA controller was unable to get the target's current scale: {message}"
            );
            super::record_event(client, hpa, COMPONENT, &Note::warning(reason, msg.clone())).await;
            Outcome {
                current: hpa
                    .status
                    .as_ref()
                    .and_then(|s| s.current_replicas)
                    .unwrap_or(0),
                desired: hpa.status.as_ref().map_or(0, |s| s.desired_replicas),
                metrics: Vec::new(),
                conditions: vec![condition("AbleToScale", false, reason, msg)],
                scaled: false,
            }
        }
        Ok((api, scale)) => {
            let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let selector = scale.status.as_ref().and_then(|s| s.selector.clone());
            evaluate(
                client,
                caches,
                hpa,
                &api,
                &target.name,
                current,
                selector,
                &uid,
                histories,
            )
            .await
        }
    };
    let now = jiff::Timestamp::now();
    let old = hpa.status.clone().unwrap_or_default();
    let mut conditions = outcome.conditions;
    for c in &mut conditions {
        // The transition time stays while the status does.
        let before = old
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|o| o.type_ == c.type_));
        c.last_transition_time = match before {
            Some(b) if b.status == c.status => b.last_transition_time.clone(),
            _ => Some(Time(now)),
        };
    }
    let status = HorizontalPodAutoscalerStatus {
        conditions: Some(conditions),
        current_metrics: (!outcome.metrics.is_empty()).then_some(outcome.metrics),
        current_replicas: Some(outcome.current),
        desired_replicas: outcome.desired,
        last_scale_time: if outcome.scaled {
            Some(Time(now))
        } else {
            old.last_scale_time.clone()
        },
        observed_generation: hpa.metadata.generation,
    };
    if hpa.status.as_ref() != Some(&status) {
        tracing::debug!(hpa = %name, target = reference, desired = status.desired_replicas, "autoscaler status");
        let mut next = hpa.clone();
        next.status = Some(status);
        super::replace_status(&hpa_api, &name, &next).await?;
    }
    Ok(())
}

/// The API of the HPA's target (found through discovery) and its current Scale.
async fn scale_api(
    client: &Client,
    ns: &str,
    hpa: &HorizontalPodAutoscaler,
) -> Result<(Api<DynamicObject>, k8s_openapi::api::autoscaling::v1::Scale), String> {
    let target = &hpa.spec.scale_target_ref;
    let api_version = target
        .api_version
        .clone()
        .unwrap_or_else(|| "v1".to_owned());
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), api_version.clone()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &target.kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("no kind {} in {api_version}: {e}", target.kind))?;
    if !caps.subresources.iter().any(|(r, _)| r.plural == "scale") {
        return Err(format!(
            "{} in {api_version} has no scale subresource",
            resource.plural
        ));
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let scale = api.get_scale(&target.name).await.map_err(|e| match e {
        kube::Error::Api(s) => s.message,
        other => other.to_string(),
    })?;
    Ok((api, scale))
}

/// Kubernetes' default metric when none is given: 80% of the pods' CPU requests.
fn default_metrics() -> Vec<MetricSpec> {
    serde_json::from_value(json!([{
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
    }]))
    .unwrap_or_default()
}

/// The unit samples of `resource` are counted in: millicores for cpu, bytes otherwise.
fn scale_of(resource: &str) -> f64 {
    if resource == "cpu" { 1000.0 } else { 1.0 }
}

/// A sample count back as a quantity (`250m`, `1048576`).
fn as_quantity(resource: &str, v: i64) -> Quantity {
    Quantity(if resource == "cpu" {
        format!("{v}m")
    } else {
        v.to_string()
    })
}

#[allow(clippy::too_many_arguments, reason = "one pass's inputs, named")]
async fn evaluate(
    client: &Client,
    caches: &Caches,
    hpa: &HorizontalPodAutoscaler,
    api: &Api<DynamicObject>,
    target_name: &str,
    current: i32,
    selector: Option<String>,
    uid: &str,
    histories: &Mutex<HashMap<String, History>>,
) -> Outcome {
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let min = hpa.spec.min_replicas.unwrap_or(1);
    let max = hpa.spec.max_replicas;
    let able = condition(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    );
    let fail = |reason: &str, message: String| Outcome {
        current,
        desired: current,
        metrics: Vec::new(),
        conditions: vec![
            able.clone(),
            condition("ScalingActive", false, reason, message),
        ],
        scaled: false,
    };
    if current == 0 && min != 0 {
        return Outcome {
            desired: 0,
            ..fail(
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".to_owned(),
            )
        };
    }
    let Some(selector_text) = selector.filter(|s| !s.is_empty()) else {
        return fail(
            "InvalidSelector",
            "the HPA target's scale is missing a selector".to_owned(),
        );
    };
    let selector = match LabelSelector::parse(&selector_text) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                "InvalidSelector",
                format!(
                    "couldn't convert selector into a corresponding internal selector object: {e}"
                ),
            );
        }
    };
    let pods: Vec<Arc<Pod>> = caches
        .pods
        .store()
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|p| selector.matches(&json!({"metadata": {"labels": p.metadata.labels}})))
        .collect();
    let usage = match pod_usage(client, &ns, &selector_text).await {
        Ok(u) => u,
        Err(e) => {
            return fail(
                "FailedGetResourceMetric",
                format!("unable to get metrics from resource metrics API: {e}"),
            );
        }
    };
    let specs = hpa
        .spec
        .metrics
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(default_metrics);
    let mut best: Option<(i32, String)> = None;
    let mut statuses = Vec::new();
    let mut errors = Vec::new();
    for spec in &specs {
        let Some(source) = spec.resource.as_ref().filter(|_| spec.type_ == "Resource") else {
            errors.push(("InvalidMetricSourceType", format!("metric type {:?} needs a custom or external metrics API, which this cluster does not serve", spec.type_)));
            continue;
        };
        let resource = source.name.as_str();
        let unit = scale_of(resource);
        let target = match (
            source.target.type_.as_str(),
            source.target.average_utilization,
            source.target.average_value.as_ref(),
        ) {
            ("Utilization", Some(u), _) => Target::Utilization(u),
            ("AverageValue", _, Some(q)) => match quantity(&q.0, unit) {
                Some(v) => Target::AverageValue(v),
                None => {
                    errors.push((
                        "InvalidMetricSourceType",
                        format!("invalid {resource} averageValue {:?}", q.0),
                    ));
                    continue;
                }
            },
            (other, _, _) => {
                errors.push(("InvalidMetricSourceType", format!("a {resource} resource metric needs a Utilization or AverageValue target, not {other:?}")));
                continue;
            }
        };
        let samples: Vec<PodSample> = pods
            .iter()
            .map(|p| sample(p, resource, unit, &usage))
            .collect();
        match autoscaling::replicas_for(
            resource,
            current,
            &samples,
            &target,
            autoscaling::DEFAULT_TOLERANCE,
        ) {
            Ok(rec) => {
                let what = match target {
                    Target::Utilization(_) => {
                        format!("{resource} resource utilization (percentage of request)")
                    }
                    Target::AverageValue(_) => format!("{resource} resource"),
                };
                if best.as_ref().is_none_or(|(r, _)| rec.replicas > *r) {
                    best = Some((rec.replicas, what));
                }
                statuses.push(MetricStatus {
                    type_: "Resource".to_owned(),
                    resource: Some(ResourceMetricStatus {
                        name: resource.to_owned(),
                        current: MetricValueStatus {
                            average_utilization: rec.utilization,
                            average_value: Some(as_quantity(resource, rec.average_value)),
                            value: None,
                        },
                    }),
                    ..MetricStatus::default()
                });
            }
            Err(e) => errors.push((
                "FailedGetResourceMetric",
                format!("failed to get {resource} utilization: {e}"),
            )),
        }
    }
    let Some((from_metrics, what)) = best else {
        let (reason, message) = errors
            .into_iter()
            .next()
            .unwrap_or(("FailedGetResourceMetric", "no metrics".to_owned()));
        super::record_event(
            client,
            hpa,
            COMPONENT,
            &Note::warning(reason, message.clone()),
        )
        .await;
        return fail(reason, message);
    };
    let (desired, limited) = {
        let mut all = histories.lock().unwrap_or_else(|e| e.into_inner());
        let history = all.entry(uid.to_owned()).or_default();
        autoscaling::normalize(
            jiff::Timestamp::now(),
            current,
            from_metrics,
            min,
            max,
            hpa.spec.behavior.as_ref(),
            history,
        )
    };
    let active = condition(
        "ScalingActive",
        true,
        "ValidMetricFound",
        format!("the HPA was able to successfully calculate a replica count from {what}"),
    );
    let limited = condition(
        "ScalingLimited",
        limited.reason != "DesiredWithinRange",
        limited.reason,
        limited.message,
    );
    let (able, scaled, written) = if desired == current {
        let able = condition(
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
        );
        (able, false, desired)
    } else {
        let patch = json!({"spec": {"replicas": desired}});
        match api
            .patch_scale(target_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                histories
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(uid.to_owned())
                    .or_default()
                    .record_scale(jiff::Timestamp::now(), current, desired);
                let direction = if desired > current { "above" } else { "below" };
                let message = format!("New size: {desired}; reason: {what} {direction} target");
                tracing::info!(hpa = ?hpa.metadata.name, from = current, to = desired, "rescaled");
                let note = Note::normal("SuccessfulRescale", message);
                super::record_event(client, hpa, COMPONENT, &note).await;
                let message =
                    format!("the HPA controller was able to update the target scale to {desired}");
                let able = condition("AbleToScale", true, "SucceededRescale", message);
                (able, true, desired)
            }
            Err(e) => {
                let message = format!("failed to rescale {target_name}: {e}");
                let note = Note::warning("FailedRescale", message.clone());
                super::record_event(client, hpa, COMPONENT, &note).await;
                let able = condition("AbleToScale", false, "FailedUpdateScale", message);
                (able, false, current)
            }
        }
    };
    Outcome {
        current,
        desired: written,
        metrics: statuses,
        conditions: vec![able, active, limited],
        scaled,
    }
}

/// One pod as the calculator sees it for `resource`, counted in `unit`s.
fn sample(
    pod: &Pod,
    resource: &str,
    unit: f64,
    usage: &HashMap<String, HashMap<String, i64>>,
) -> PodSample {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let requests: Option<Vec<i64>> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let q = c.resources.as_ref()?.requests.as_ref()?.get(resource)?;
            quantity(&q.0, unit)
        })
        .collect();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let gone = pod.metadata.deletion_timestamp.is_some()
        || status.and_then(|s| s.phase.as_deref()) == Some("Failed");
    // A pod not started yet is counted as an unready one using nothing (Kubernetes ignores
    // pending pods), never as one whose metrics are missing.
    let pending = status
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    let measured = usage.get(&name).and_then(|r| r.get(resource)).copied();
    PodSample {
        usage: if pending {
            Some(measured.unwrap_or(0))
        } else {
            measured
        },
        ready: ready && !pending,
        request: requests.filter(|r| !r.is_empty()).map(|r| r.iter().sum()),
        name,
        gone,
    }
}

/// The usage of the pods `selector` matches in `ns`, from the metrics API: pod → resource →
/// total over its containers (millicores of cpu, bytes of memory).
async fn pod_usage(
    client: &Client,
    ns: &str,
    selector: &str,
) -> Result<HashMap<String, HashMap<String, i64>>, kube::Error> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("labelSelector", selector)
        .finish();
    let uri = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?{query}");
    let request = http::Request::get(uri)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let list: Value = client.request(request).await?;
    let mut out: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for item in list
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else {
            continue;
        };
        let totals = out.entry(name.to_owned()).or_default();
        for c in item
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for (resource, q) in c
                .get("usage")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(v) = q.as_str().and_then(|q| quantity(q, scale_of(resource))) {
                    *totals.entry(resource.clone()).or_default() += v;
                }
            }
        }
    }
    Ok(out)
}
