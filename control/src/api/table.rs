//! `Table` output for `kubectl get`: the same columns kube-apiserver prints for each kind
//! (wide-only columns have priority 1), `additionalPrinterColumns` for custom resources, and
//! NAME/AGE for everything else.

use serde_json::{Value, json};

use super::{object, registry::ResourceType, request::Request};

struct Column {
    name: &'static str,
    type_: &'static str,
    priority: i64,
}

const fn col(name: &'static str, type_: &'static str, priority: i64) -> Column {
    Column {
        name,
        type_,
        priority,
    }
}

fn columns(rt: &ResourceType) -> Vec<Column> {
    let name = col("Name", "string", 0);
    let age = col("Age", "string", 0);
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => vec![
            name,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            age,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        ("", "Service") => vec![
            name,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            age,
            col("Selector", "string", 1),
        ],
        ("", "Namespace") => vec![name, col("Status", "string", 0), age],
        ("", "Node") => vec![
            name,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            age,
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
        ],
        ("", "ConfigMap") => vec![name, col("Data", "integer", 0), age],
        ("", "Secret") => vec![
            name,
            col("Type", "string", 0),
            col("Data", "integer", 0),
            age,
        ],
        ("", "ServiceAccount") => vec![name, col("Secrets", "integer", 0), age],
        ("", "Endpoints") => vec![name, col("Endpoints", "string", 0), age],
        ("", "Event") => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            name,
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            age,
        ],
        ("apps", "Deployment") => vec![
            name,
            col("Ready", "string", 0),
            col("Up-to-date", "string", 0),
            col("Available", "string", 0),
            age,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => vec![
            name,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            age,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "StatefulSet") => vec![name, col("Ready", "string", 0), age],
        ("apps", "DaemonSet") => vec![
            name,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            age,
        ],
        ("batch", "Job") => vec![
            name,
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            age,
        ],
        ("batch", "CronJob") => vec![
            name,
            col("Schedule", "string", 0),
            col("Timezone", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Last Schedule", "string", 0),
            age,
        ],
        ("networking.k8s.io", "Ingress") => vec![
            name,
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            age,
        ],
        ("networking.k8s.io", "IngressClass") => vec![
            name,
            col("Controller", "string", 0),
            col("Parameters", "string", 0),
            age,
        ],
        ("coordination.k8s.io", "Lease") => vec![name, col("Holder", "string", 0), age],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            name,
            col("Reference", "string", 0),
            col("Targets", "string", 0),
            col("MinPods", "string", 0),
            col("MaxPods", "string", 0),
            col("Replicas", "string", 0),
            age,
        ],
        ("policy", "PodDisruptionBudget") => vec![
            name,
            col("Min Available", "string", 0),
            col("Max Unavailable", "string", 0),
            col("Allowed Disruptions", "integer", 0),
            age,
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name, col("Created At", "date", 0)]
        }
        _ => vec![name, age],
    }
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn i(obj: &Value, path: &str) -> i64 {
    object::get_path(obj, path)
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".to_owned() } else { s }
}

fn age(obj: &Value) -> String {
    object::meta_str(obj, "creationTimestamp")
        .map_or_else(|| "<unknown>".to_owned(), object::human_age)
}

/// An HPA's TARGETS column as kubectl prints it: `cpu: 250%/50%`, `memory: 12Mi/100Mi`, or
/// `<unknown>` for a value not measured yet, one entry per metric.
fn hpa_targets(obj: &Value) -> String {
    let metrics = object::get_path(obj, "spec.metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let current = object::get_path(obj, "status.currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let entries: Vec<String> = metrics
        .iter()
        .map(|m| {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
            let Some(res) = m.get("resource").filter(|_| ty == "Resource") else {
                return format!("<{}>", ty.to_lowercase());
            };
            let name = s(res.get("name"));
            let now = current.iter().find_map(|c| {
                let r = c.get("resource")?;
                (r.get("name")?.as_str()? == name).then(|| r.get("current").cloned())?
            });
            let target = res.get("target");
            match target
                .and_then(|t| t.get("averageUtilization"))
                .and_then(Value::as_i64)
            {
                Some(want) => {
                    let got = now
                        .as_ref()
                        .and_then(|n| n.get("averageUtilization"))
                        .and_then(Value::as_i64)
                        .map_or_else(|| "<unknown>".to_owned(), |g| format!("{g}%"));
                    format!("{name}: {got}/{want}%")
                }
                None => {
                    let got = now
                        .as_ref()
                        .and_then(|n| n.get("averageValue"))
                        .and_then(Value::as_str)
                        .map_or_else(|| "<unknown>".to_owned(), str::to_owned);
                    let want = s(target.and_then(|t| t.get("averageValue")));
                    format!("{name}: {got}/{want}")
                }
            }
        })
        .collect();
    if entries.is_empty() {
        "<none>".to_owned()
    } else {
        entries.join(", ")
    }
}

fn selector_string(map: Option<&Value>) -> String {
    map.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn container_list(obj: &Value, path: &str, field: &str) -> String {
    object::get_path(obj, path)
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| s(c.get(field)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = object::get_path(pod, "status.containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = object::get_path(pod, "spec.containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
        .sum();
    let mut status = object::get_path(pod, "status.reason")
        .and_then(Value::as_str)
        .or_else(|| object::get_path(pod, "status.phase").and_then(Value::as_str))
        .unwrap_or("Pending")
        .to_owned();
    for c in &statuses {
        if let Some(reason) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            status = reason.to_owned();
        } else if let Some(reason) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            status = reason.to_owned();
        }
    }
    if object::meta_str(pod, "deletionTimestamp").is_some() {
        status = "Terminating".to_owned();
    }
    vec![
        json!(object::name(pod)),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(pod)),
        json!(none_if_empty(s(object::get_path(pod, "status.podIP")))),
        json!(none_if_empty(s(object::get_path(pod, "spec.nodeName")))),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn service_ports(svc: &Value) -> String {
    let ports = object::get_path(svc, "spec.ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() {
        return "<none>".to_owned();
    }
    ports
        .iter()
        .map(|p| {
            let port = s(p.get("port"));
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn cells(rt: &ResourceType, obj: &Value) -> Vec<Value> {
    let name = json!(object::name(obj));
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => pod_cells(obj),
        ("", "Service") => {
            let ty = s(object::get_path(obj, "spec.type"));
            let external = if ty == "ExternalName" {
                s(object::get_path(obj, "spec.externalName"))
            } else {
                object::get_path(obj, "status.loadBalancer.ingress")
                    .and_then(Value::as_array)
                    .map(|i| {
                        i.iter()
                            .map(|x| s(x.get("ip")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        if ty == "LoadBalancer" {
                            "<pending>".into()
                        } else {
                            "<none>".into()
                        }
                    })
            };
            vec![
                name,
                json!(ty),
                json!(none_if_empty(s(object::get_path(obj, "spec.clusterIP")))),
                json!(external),
                json!(service_ports(obj)),
                json!(age(obj)),
                json!(none_if_empty(selector_string(object::get_path(
                    obj,
                    "spec.selector"
                )))),
            ]
        }
        ("", "Namespace") => vec![
            name,
            json!(s(object::get_path(obj, "status.phase"))),
            json!(age(obj)),
        ],
        ("", "Node") => {
            let ready = object::get_path(obj, "status.conditions")
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                })
                .and_then(|c| c.get("status").and_then(Value::as_str))
                == Some("True");
            let mut status = if ready {
                "Ready".to_owned()
            } else {
                "NotReady".to_owned()
            };
            if object::get_path(obj, "spec.unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles = object::labels(obj)
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect::<Vec<_>>()
                .join(",");
            let ip = object::get_path(obj, "status.addresses")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
                })
                .map(|x| s(x.get("address")))
                .unwrap_or_default();
            vec![
                name,
                json!(status),
                json!(none_if_empty(roles)),
                json!(age(obj)),
                json!(s(object::get_path(obj, "status.nodeInfo.kubeletVersion"))),
                json!(none_if_empty(ip)),
            ]
        }
        ("", "ConfigMap") => {
            let n = ["data", "binaryData"]
                .iter()
                .filter_map(|f| obj.get(*f).and_then(Value::as_object).map(|m| m.len()))
                .sum::<usize>();
            vec![name, json!(n), json!(age(obj))]
        }
        ("", "Secret") => {
            let n = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, json!(s(obj.get("type"))), json!(n), json!(age(obj))]
        }
        ("", "ServiceAccount") => {
            let n = obj
                .get("secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![name, json!(n), json!(age(obj))]
        }
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for subset in obj
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<String> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|p| p.iter().map(|p| s(p.get("port"))).collect())
                    .unwrap_or_default();
                for addr in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ip = s(addr.get("ip"));
                    if ports.is_empty() {
                        eps.push(ip);
                    } else {
                        eps.extend(ports.iter().map(|p| format!("{ip}:{p}")));
                    }
                }
            }
            vec![name, json!(none_if_empty(eps.join(","))), json!(age(obj))]
        }
        ("", "Event") => {
            let last = object::get_path(obj, "lastTimestamp")
                .or_else(|| object::get_path(obj, "eventTime"))
                .and_then(Value::as_str)
                .map(object::human_age)
                .unwrap_or_else(|| age(obj));
            let kind = s(object::get_path(obj, "involvedObject.kind")).to_lowercase();
            vec![
                json!(last),
                json!(s(obj.get("type"))),
                json!(s(obj.get("reason"))),
                json!(format!(
                    "{kind}/{}",
                    s(object::get_path(obj, "involvedObject.name"))
                )),
                json!(s(obj.get("message"))),
            ]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports = obj
                .get("ports")
                .and_then(Value::as_array)
                .map(|p| {
                    p.iter()
                        .map(|p| s(p.get("port")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let eps = obj
                .get("endpoints")
                .and_then(Value::as_array)
                .map(|e| {
                    e.iter()
                        .flat_map(|e| {
                            e.get("addresses")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default()
                        })
                        .map(|a| s(Some(&a)))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(obj.get("addressType"))),
                json!(none_if_empty(ports)),
                json!(none_if_empty(eps)),
                json!(age(obj)),
            ]
        }
        ("apps", "Deployment") => vec![
            name,
            json!(format!(
                "{}/{}",
                i(obj, "status.readyReplicas"),
                i(obj, "spec.replicas")
            )),
            json!(i(obj, "status.updatedReplicas").to_string()),
            json!(i(obj, "status.availableReplicas").to_string()),
            json!(age(obj)),
            json!(container_list(obj, "spec.template.spec.containers", "name")),
            json!(container_list(
                obj,
                "spec.template.spec.containers",
                "image"
            )),
            json!(selector_string(object::get_path(
                obj,
                "spec.selector.matchLabels"
            ))),
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => vec![
            name,
            json!(i(obj, "spec.replicas")),
            json!(i(obj, "status.replicas")),
            json!(i(obj, "status.readyReplicas")),
            json!(age(obj)),
            json!(container_list(obj, "spec.template.spec.containers", "name")),
            json!(container_list(
                obj,
                "spec.template.spec.containers",
                "image"
            )),
            // A LabelSelector's matchLabels, or a ReplicationController's plain label map.
            json!(selector_string(object::get_path(
                obj,
                if rt.kind == "ReplicationController" {
                    "spec.selector"
                } else {
                    "spec.selector.matchLabels"
                }
            ))),
        ],
        ("apps", "StatefulSet") => vec![
            name,
            json!(format!(
                "{}/{}",
                i(obj, "status.readyReplicas"),
                i(obj, "spec.replicas")
            )),
            json!(age(obj)),
        ],
        ("apps", "DaemonSet") => vec![
            name,
            json!(i(obj, "status.desiredNumberScheduled")),
            json!(i(obj, "status.currentNumberScheduled")),
            json!(i(obj, "status.numberReady")),
            json!(i(obj, "status.updatedNumberScheduled")),
            json!(i(obj, "status.numberAvailable")),
            json!(none_if_empty(selector_string(object::get_path(
                obj,
                "spec.template.spec.nodeSelector"
            )))),
            json!(age(obj)),
        ],
        ("batch", "Job") => {
            let conditions = object::get_path(obj, "status.conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let has = |t: &str| {
                conditions.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some(t)
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let duration = match (
                object::get_path(obj, "status.startTime")
                    .and_then(Value::as_str)
                    .and_then(object::parse_time),
                object::get_path(obj, "status.completionTime")
                    .and_then(Value::as_str)
                    .and_then(object::parse_time),
            ) {
                (Some(start), Some(end)) => {
                    object::human_duration(end.as_second() - start.as_second())
                }
                (Some(start), None) => {
                    object::human_duration(jiff::Timestamp::now().as_second() - start.as_second())
                }
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(format!(
                    "{}/{}",
                    i(obj, "status.succeeded"),
                    object::get_path(obj, "spec.completions")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(duration),
                json!(age(obj)),
            ]
        }
        ("batch", "CronJob") => vec![
            name,
            json!(s(object::get_path(obj, "spec.schedule"))),
            json!(none_if_empty(s(object::get_path(obj, "spec.timeZone")))),
            json!(
                object::get_path(obj, "spec.suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            json!(
                object::get_path(obj, "status.active")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            json!(
                object::get_path(obj, "status.lastScheduleTime")
                    .and_then(Value::as_str)
                    .map_or_else(|| "<none>".to_owned(), object::human_age)
            ),
            json!(age(obj)),
        ],
        ("networking.k8s.io", "Ingress") => {
            let hosts = object::get_path(obj, "spec.rules")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .map(|r| {
                            r.get("host")
                                .and_then(Value::as_str)
                                .unwrap_or("*")
                                .to_owned()
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "*".into());
            let tls = object::get_path(obj, "spec.tls")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty());
            let address = object::get_path(obj, "status.loadBalancer.ingress")
                .and_then(Value::as_array)
                .map(|i| {
                    i.iter()
                        .map(|x| s(x.get("ip").or_else(|| x.get("hostname"))))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(none_if_empty(s(object::get_path(
                    obj,
                    "spec.ingressClassName"
                )))),
                json!(hosts),
                json!(address),
                json!(if tls { "80, 443" } else { "80" }),
                json!(age(obj)),
            ]
        }
        ("networking.k8s.io", "IngressClass") => vec![
            name,
            json!(s(object::get_path(obj, "spec.controller"))),
            json!(none_if_empty(s(object::get_path(
                obj,
                "spec.parameters.name"
            )))),
            json!(age(obj)),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name,
            json!(none_if_empty(s(object::get_path(
                obj,
                "spec.holderIdentity"
            )))),
            json!(age(obj)),
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            name,
            json!(format!(
                "{}/{}",
                s(object::get_path(obj, "spec.scaleTargetRef.kind")),
                s(object::get_path(obj, "spec.scaleTargetRef.name"))
            )),
            json!(hpa_targets(obj)),
            json!(i(obj, "spec.minReplicas").to_string()),
            json!(i(obj, "spec.maxReplicas").to_string()),
            json!(i(obj, "status.currentReplicas").to_string()),
            json!(age(obj)),
        ],
        ("policy", "PodDisruptionBudget") => {
            let bound = |path: &str| match object::get_path(obj, path) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => "N/A".to_owned(),
            };
            vec![
                name,
                json!(bound("spec.minAvailable")),
                json!(bound("spec.maxUnavailable")),
                json!(i(obj, "status.disruptionsAllowed")),
                json!(age(obj)),
            ]
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![
                name,
                json!(s(object::get_path(obj, "metadata.creationTimestamp"))),
            ]
        }
        _ => vec![name, json!(age(obj))],
    }
}

/// One step of a printer column's JSONPath.
enum Step<'p> {
    Field(&'p str),
    Index(usize),
    All,
    /// `[?(@.a.b=="v")]` (or `!=`): the array items whose field path equals (or not) `v`.
    Filter {
        path: Vec<&'p str>,
        equal: bool,
        value: &'p str,
    },
}

/// Parses the JSONPath subset printer columns use: `.field`, `[n]`, `[*]` and
/// `[?(@.field=="value")]` (or `!=`; quotes `"` or `'`). `None` when it is not that.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    rest = rest.strip_prefix('$').unwrap_or(rest);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                out.push(Step::Field(&r[..end]));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("[?(") {
            let end = r.find(")]")?;
            let expr = r[..end].trim();
            rest = &r[end + 2..];
            let (lhs, rhs, equal) = match expr.split_once("==") {
                Some((l, r)) => (l, r, true),
                None => {
                    let (l, r) = expr.split_once("!=")?;
                    (l, r, false)
                }
            };
            let path = lhs.trim().strip_prefix('@')?;
            let value = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
            out.push(Step::Filter {
                path: path.split('.').filter(|p| !p.is_empty()).collect(),
                equal,
                value,
            });
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            out.push(if inner == "*" {
                Step::All
            } else if let Some(name) = inner.strip_prefix('\'').and_then(|n| n.strip_suffix('\'')) {
                Step::Field(name)
            } else {
                Step::Index(inner.parse().ok()?)
            });
            rest = &r[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            out.push(Step::Field(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Some(out)
}

/// Evaluates a printer column's JSONPath (`.spec.replicas`, `.status.conditions[0].type`,
/// `.status.addresses[*].value`, `.status.conditions[?(@.type=="Ready")].status`): every
/// value it selects.
fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = steps(path) else {
        return Vec::new();
    };
    let mut current = vec![obj];
    for step in &steps {
        current = current
            .into_iter()
            .flat_map(|v| -> Vec<&'a Value> {
                match step {
                    Step::Field(f) => v.get(*f).into_iter().collect(),
                    Step::Index(i) => v.get(*i).into_iter().collect(),
                    Step::All => match v {
                        Value::Array(a) => a.iter().collect(),
                        Value::Object(m) => m.values().collect(),
                        _ => Vec::new(),
                    },
                    Step::Filter { path, equal, value } => v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|item| {
                            let got = path.iter().try_fold(*item, |cur, f| cur.get(*f));
                            let text = got.map(|g| match g {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            });
                            (text.as_deref() == Some(*value)) == *equal
                        })
                        .collect(),
                }
            })
            .collect();
    }
    current
}

/// A printer column's cell: nothing selected is null, one value is itself, several are
/// printed space-separated (as kube-apiserver prints them).
fn column_value(obj: &Value, path: &str) -> Value {
    let found = json_path(obj, path);
    match found.as_slice() {
        [] => Value::Null,
        [one] => (*one).clone(),
        many => Value::String(
            many.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

/// A Table of `items` (all columns; kubectl hides priority > 0 unless `-o wide`).
pub fn table(rt: &ResourceType, items: &[Value], resource_version: &str, req: &Request) -> Value {
    let mut t = table_with(rt, items, resource_version);
    if req.param("includeObject") == Some("Object")
        && let Some(rows) = t.get_mut("rows").and_then(Value::as_array_mut)
    {
        {
            for (row, item) in rows.iter_mut().zip(items) {
                let mut full = item.clone();
                full["apiVersion"] = json!(rt.api_version());
                full["kind"] = json!(rt.kind);
                row["object"] = full;
            }
        }
    }
    t
}

/// A Table of `items` with row objects as `PartialObjectMetadata`.
pub fn table_with(rt: &ResourceType, items: &[Value], resource_version: &str) -> Value {
    let custom_columns = rt
        .custom
        .as_ref()
        .map(|c| c.columns.clone())
        .unwrap_or_default();
    let (defs, rows): (Vec<Value>, Vec<Value>) = if custom_columns.is_empty() {
        let defs = columns(rt)
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.type_,
                    "format": if c.name == "Name" { "name" } else { "" },
                    "description": "",
                    "priority": c.priority,
                })
            })
            .collect();
        (defs, items.iter().map(|o| row(o, cells(rt, o))).collect())
    } else {
        let mut defs = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
        ];
        defs.extend(custom_columns.iter().map(|c| {
            json!({"name": c.name, "type": c.type_, "format": "", "description": "", "priority": c.priority})
        }));
        let rows = items
            .iter()
            .map(|o| {
                let mut cells = vec![json!(object::name(o))];
                for c in &custom_columns {
                    let v = column_value(o, &c.json_path);
                    cells.push(if c.type_ == "date" {
                        v.as_str()
                            .map_or(Value::Null, |t| json!(object::human_age(t)))
                    } else {
                        v
                    });
                }
                row(o, cells)
            })
            .collect();
        (defs, rows)
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version },
        "columnDefinitions": defs,
        "rows": rows,
    })
}

fn row(obj: &Value, cells: Vec<Value>) -> Value {
    json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::Registry;

    #[test]
    fn service_row_reads_like_kubectl() {
        let reg = Registry::new();
        let rt = reg.lookup("", "v1", "services").unwrap();
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": object::now()},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "selector": {"app": "web"},
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        let t = table_with(&rt, &[svc], "5");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[2], "10.96.0.20");
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[6], "app=web");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn pod_row_counts_ready_containers() {
        let reg = Registry::new();
        let rt = reg.lookup("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{}, {}]},
            "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let cells = cells(&rt, &pod);
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "3");
    }

    #[test]
    fn printer_column_paths() {
        let v = json!({"spec": {"replicas": 3}, "status": {"conditions": [{"type": "Ready"}]}});
        assert_eq!(column_value(&v, ".spec.replicas"), json!(3));
        assert_eq!(
            column_value(&v, ".status.conditions[0].type"),
            json!("Ready")
        );
        assert_eq!(column_value(&v, ".missing"), Value::Null);
        let gw = json!({"status": {
            "addresses": [{"value": "10.0.0.1"}, {"value": "10.0.0.2"}],
            "conditions": [{"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "False"}],
        }});
        assert_eq!(
            column_value(&gw, ".status.addresses[*].value"),
            json!("10.0.0.1 10.0.0.2")
        );
        assert_eq!(
            column_value(&gw, r#".status.conditions[?(@.type=="Programmed")].status"#),
            json!("False")
        );
        assert_eq!(
            column_value(&gw, ".status.conditions[?(@.type!='Programmed')].type"),
            json!("Accepted")
        );
        assert_eq!(
            column_value(&gw, ".status.conditions[?(@.type=='Ready')].status"),
            Value::Null
        );
        assert_eq!(
            column_value(&gw, ".status['addresses'][1].value"),
            json!("10.0.0.2")
        );
    }
}
