//! Kubernetes defaulting for built-in kinds, applied before validation on create and update, so
//! stored objects look like the ones a real cluster returns (`kubectl get -o yaml` shows the
//! same defaults).

use serde_json::{Value, json};

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if let Value::Object(map) = obj
        && map.get(field).is_none_or(Value::is_null)
    {
        map.insert(field.to_owned(), value);
    }
}

fn child<'a>(obj: &'a mut Value, field: &str) -> &'a mut Value {
    set_default(obj, field, json!({}));
    match obj {
        Value::Object(map) => map.entry(field.to_owned()).or_insert_with(|| json!({})),
        other => other,
    }
}

/// Applies defaults for `group`/`kind` in place.
pub fn apply(group: &str, kind: &str, obj: &mut Value) {
    match (group, kind) {
        ("", "Pod") => pod_spec(child(obj, "spec")),
        ("", "Service") => service(obj),
        ("", "Secret") => {
            set_default(obj, "type", json!("Opaque"));
            merge_string_data(obj);
        }
        ("", "Namespace") => {
            let name = super::object::name(obj).to_owned();
            let labels = child(child(obj, "metadata"), "labels");
            set_default(labels, "kubernetes.io/metadata.name", json!(name));
            let spec = child(obj, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
        }
        ("apps", "Deployment") => {
            let spec = child(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = child(strategy, "rollingUpdate");
                set_default(ru, "maxUnavailable", json!("25%"));
                set_default(ru, "maxSurge", json!("25%"));
            }
            pod_template(spec);
        }
        ("", "ReplicationController") => replication_controller(obj),
        ("apps", "ReplicaSet") => {
            let spec = child(obj, "spec");
            set_default(spec, "replicas", json!(1));
            pod_template(spec);
        }
        ("apps", "StatefulSet") => {
            let spec = child(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                set_default(child(strategy, "rollingUpdate"), "partition", json!(0));
            }
            let retention = child(spec, "persistentVolumeClaimRetentionPolicy");
            set_default(retention, "whenDeleted", json!("Retain"));
            set_default(retention, "whenScaled", json!("Retain"));
            pod_template(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = child(obj, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = child(strategy, "rollingUpdate");
                set_default(ru, "maxUnavailable", json!(1));
                set_default(ru, "maxSurge", json!(0));
            }
            pod_template(spec);
        }
        ("batch", "Job") => job_spec(child(obj, "spec")),
        ("batch", "CronJob") => {
            let spec = child(obj, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            let template = child(spec, "jobTemplate");
            job_spec(child(template, "spec"));
        }
        ("", "ServiceAccount") | ("", "ConfigMap") => {}
        ("networking.k8s.io", "Ingress") => {}
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let spec = child(obj, "spec");
            set_default(spec, "minReplicas", json!(1));
            // No metrics: 80% of the pods' CPU requests, as in Kubernetes.
            if spec
                .get("metrics")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                spec["metrics"] = json!([{
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }]);
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let names = child(child(obj, "spec"), "names");
            let kind = names
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            set_default(names, "singular", json!(kind.to_lowercase()));
            set_default(names, "listKind", json!(format!("{kind}List")));
        }
        _ => {}
    }
}

/// `stringData` is write-only: merged into `data` (base64) as Kubernetes does.
fn merge_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    let data = child(obj, "data");
    if let Value::Object(map) = data {
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            map.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

fn job_spec(spec: &mut Value) {
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if spec.get("completions").is_none() && spec.get("parallelism") == Some(&json!(1)) {
        set_default(spec, "completions", json!(1));
    }
    pod_template(spec);
}

/// A ReplicationController's selector defaults to its template's labels, and its own labels
/// to them too (Kubernetes' `SetDefaults_ReplicationController`).
fn replication_controller(obj: &mut Value) {
    let template_labels = obj
        .pointer("/spec/template/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        .cloned();
    if let Some(labels) = template_labels {
        let spec = child(obj, "spec");
        if spec
            .get("selector")
            .and_then(Value::as_object)
            .is_none_or(serde_json::Map::is_empty)
        {
            spec["selector"] = labels.clone();
        }
        let meta = child(obj, "metadata");
        if meta
            .get("labels")
            .and_then(Value::as_object)
            .is_none_or(serde_json::Map::is_empty)
        {
            meta["labels"] = labels;
        }
    }
    let spec = child(obj, "spec");
    set_default(spec, "replicas", json!(1));
    set_default(spec, "minReadySeconds", json!(0));
    pod_template(spec);
}

fn pod_template(spec: &mut Value) {
    let template = child(spec, "template");
    pod_spec(child(template, "spec"));
}

/// Defaults of a PodSpec (and its containers).
pub fn pod_spec(spec: &mut Value) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "serviceAccountName", json!("default"));
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers {
                container(c);
            }
        }
    }
}

fn container(c: &mut Value) {
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    // `:latest` or no tag means the image may change, so Kubernetes pulls it every time.
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = last.split_once(':').map(|(_, t)| t);
    let policy = if image.contains('@') || tag.is_some_and(|t| t != "latest") {
        "IfNotPresent"
    } else {
        "Always"
    };
    set_default(c, "imagePullPolicy", json!(policy));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(kind).filter(|p| p.is_object()) {
            set_default(probe, "timeoutSeconds", json!(1));
            set_default(probe, "periodSeconds", json!(10));
            set_default(probe, "successThreshold", json!(1));
            set_default(probe, "failureThreshold", json!(3));
            if let Some(http) = probe.get_mut("httpGet").filter(|h| h.is_object()) {
                set_default(http, "path", json!("/"));
                set_default(http, "scheme", json!("HTTP"));
            }
        }
    }
}

fn service(obj: &mut Value) {
    let spec = child(obj, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if ty == "ExternalName" {
        return;
    }
    set_default(spec, "sessionAffinity", json!("None"));
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    set_default(spec, "ipFamilies", json!(["IPv4"]));
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let cfg = child(spec, "sessionAffinityConfig");
        let client_ip = child(cfg, "clientIP");
        set_default(client_ip, "timeoutSeconds", json!(10800));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            // 0 and "" are Go's zero IntOrString (client-go sends them): unset, as upstream.
            if matches!(p.get("targetPort"), Some(t) if *t == json!(0) || *t == json!(""))
                && let Some(map) = p.as_object_mut()
            {
                map.remove("targetPort");
            }
            set_default(p, "targetPort", port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults_match_kubernetes() {
        let mut d = json!({"metadata": {"name": "web"}, "spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "registry.k8s.io/pause:3.9"}]}}}});
        apply("apps", "Deployment", &mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn service_and_secret_defaults() {
        let mut s = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        apply("", "Service", &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
        let mut secret = json!({"stringData": {"password": "hunter2"}});
        apply("", "Secret", &mut secret);
        assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
        assert!(secret.get("stringData").is_none());
        assert_eq!(secret["type"], "Opaque");
    }

    #[test]
    fn a_zero_target_port_defaults_to_the_port() {
        let mut svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 0}, {"port": 81, "targetPort": ""}, {"port": 82, "targetPort": "http"}]}});
        apply("", "Service", &mut svc);
        let targets: Vec<&Value> = (0..3)
            .map(|i| &svc["spec"]["ports"][i]["targetPort"])
            .collect();
        assert_eq!(targets, [&json!(80), &json!(81), &json!("http")]);
    }
}
