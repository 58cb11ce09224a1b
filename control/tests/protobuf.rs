//! Protobuf request bodies, checked against an independent encoder: messages built with the
//! k8s-pb crate's prost types, encoded by prost, wrapped in Kubernetes' `k8s\0` + `Unknown`
//! envelope, decoded by rudder and compared with the JSON Kubernetes would accept (and parsed
//! into k8s-openapi's types, so every name and shape is the real one).

#![allow(clippy::unwrap_used, reason = "test code: a failure is a panic")]

use std::collections::BTreeMap;

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use rudder_control::api::protobuf::{MAGIC, decode};
use serde_json::{Value, json};

fn envelope(api_version: &str, kind: &str, object: &impl Message) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [MAGIC, &unknown.encode_to_vec()].concat()
}

fn meta(name: &str) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        // gogo-protobuf writes Go's zero values; they must not become JSON values.
        generate_name: Some(String::new()),
        generation: Some(0),
        creation_timestamp: Some(meta::Time {
            seconds: Some(0),
            nanos: Some(0),
        }),
        ..Default::default()
    })
}

fn int(v: i32) -> Option<IntOrString> {
    Some(IntOrString {
        r#type: Some(0),
        int_val: Some(v),
        str_val: Some(String::new()),
    })
}

fn string(v: &str) -> Option<IntOrString> {
    Some(IntOrString {
        r#type: Some(1),
        int_val: Some(0),
        str_val: Some(v.into()),
    })
}

fn quantity(v: &str) -> Quantity {
    Quantity {
        string: Some(v.into()),
    }
}

#[test]
fn deployment_with_every_special_form() {
    let container = core::Container {
        name: Some("web".into()),
        image: Some("nginx:1.27".into()),
        args: vec!["-g".into(), "daemon off;".into()],
        ports: vec![core::ContainerPort {
            container_port: Some(80),
            host_port: Some(0),
            protocol: Some("TCP".into()),
            name: Some("http".into()),
            host_ip: Some(String::new()),
        }],
        env: vec![core::EnvVar {
            name: Some("A".into()),
            value: Some("1".into()),
            value_from: None,
        }],
        resources: Some(core::ResourceRequirements {
            limits: BTreeMap::from([("memory".into(), quantity("128Mi"))]),
            requests: BTreeMap::from([("cpu".into(), quantity("100m"))]),
            ..Default::default()
        }),
        // Probe embeds ProbeHandler in Go: its fields are the probe's own in JSON.
        readiness_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                http_get: Some(core::HttpGetAction {
                    path: Some("/healthz".into()),
                    port: string("http"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(0),
            ..Default::default()
        }),
        stdin: Some(false),
        volume_mounts: vec![core::VolumeMount {
            name: Some("cfg".into()),
            mount_path: Some("/etc/cfg".into()),
            read_only: Some(true),
            ..Default::default()
        }],
        ..Default::default()
    };
    let deployment = apps::Deployment {
        metadata: meta("web"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "web".into())]),
                match_expressions: vec![],
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_surge: string("25%"),
                    max_unavailable: int(1),
                }),
            }),
            template: Some(core::PodTemplateSpec {
                metadata: meta(""),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    host_network: Some(false),
                    automount_service_account_token: Some(false),
                    // Volume embeds VolumeSource in Go.
                    volumes: vec![core::Volume {
                        name: Some("cfg".into()),
                        volume_source: Some(core::VolumeSource {
                            config_map: Some(core::ConfigMapVolumeSource {
                                local_object_reference: Some(core::LocalObjectReference {
                                    name: Some("web-config".into()),
                                }),
                                default_mode: Some(0o644),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let got = decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
    let want = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {
                "metadata": {"namespace": "default", "labels": {"app": "web"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "web",
                        "image": "nginx:1.27",
                        "args": ["-g", "daemon off;"],
                        "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}],
                        "env": [{"name": "A", "value": "1"}],
                        "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "100m"}},
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true}],
                    }],
                    "volumes": [{"name": "cfg", "configMap": {"name": "web-config", "defaultMode": 420}}],
                },
            },
        },
    });
    assert_eq!(got, want, "\n got: {got:#}\nwant: {want:#}");
    let typed: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(got).unwrap();
    assert_eq!(typed.spec.replicas, Some(0));
}

#[test]
fn secret_bytes_and_times() {
    let secret = core::Secret {
        metadata: Some(meta::ObjectMeta {
            name: Some("pw".into()),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        data: BTreeMap::from([("password".into(), b"hunter2\0\xff".to_vec())]),
        string_data: BTreeMap::new(),
        r#type: Some("Opaque".into()),
        immutable: Some(false),
    };
    let got = decode(&envelope("v1", "Secret", &secret)).unwrap();
    assert_eq!(got["data"]["password"], "aHVudGVyMgD/");
    assert_eq!(got["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
    // A pointer bool's explicit false is kept.
    assert_eq!(got["immutable"], false);

    let lease = k8s_pb::api::coordination::v1::Lease {
        metadata: meta("l"),
        spec: Some(k8s_pb::api::coordination::v1::LeaseSpec {
            renew_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_000),
                nanos: Some(123_456_789),
            }),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let got = decode(&envelope("coordination.k8s.io/v1", "Lease", &lease)).unwrap();
    assert_eq!(got["spec"]["renewTime"], "2023-11-14T22:13:20.123456Z");
}

#[test]
fn delete_options_and_scale_without_a_resource_entry() {
    let options = meta::DeleteOptions {
        propagation_policy: Some("Foreground".into()),
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let got = decode(&envelope("v1", "DeleteOptions", &options)).unwrap();
    assert_eq!(got["propagationPolicy"], "Foreground");
    assert_eq!(got["gracePeriodSeconds"], 0);

    let scale = k8s_pb::api::autoscaling::v1::Scale {
        metadata: meta("web"),
        spec: Some(k8s_pb::api::autoscaling::v1::ScaleSpec { replicas: Some(5) }),
        status: None,
    };
    let got = decode(&envelope("autoscaling/v1", "Scale", &scale)).unwrap();
    assert_eq!(got["spec"]["replicas"], 5);
}

#[test]
fn crd_schema_unions() {
    let props = |ty: &str| apiext::JsonSchemaProps {
        r#type: Some(ty.into()),
        ..Default::default()
    };
    let schema = apiext::JsonSchemaProps {
        r#type: Some("object".into()),
        properties: BTreeMap::from([
            (
                "tags".into(),
                apiext::JsonSchemaProps {
                    r#type: Some("array".into()),
                    items: Some(Box::new(apiext::JsonSchemaPropsOrArray {
                        schema: Some(Box::new(props("string"))),
                        j_son_schemas: vec![],
                    })),
                    ..Default::default()
                },
            ),
            (
                "size".into(),
                apiext::JsonSchemaProps {
                    r#type: Some("string".into()),
                    r#enum: vec![
                        apiext::Json {
                            raw: Some(b"\"small\"".to_vec()),
                        },
                        apiext::Json {
                            raw: Some(b"\"large\"".to_vec()),
                        },
                    ],
                    default: Some(apiext::Json {
                        raw: Some(b"\"small\"".to_vec()),
                    }),
                    ..Default::default()
                },
            ),
        ]),
        additional_properties: Some(Box::new(apiext::JsonSchemaPropsOrBool {
            allows: Some(false),
            schema: None,
        })),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..Default::default()
    };
    let crd = apiext::CustomResourceDefinition {
        metadata: meta("widgets.example.com"),
        spec: Some(apiext::CustomResourceDefinitionSpec {
            group: Some("example.com".into()),
            names: Some(apiext::CustomResourceDefinitionNames {
                plural: Some("widgets".into()),
                kind: Some("Widget".into()),
                ..Default::default()
            }),
            scope: Some("Namespaced".into()),
            versions: vec![apiext::CustomResourceDefinitionVersion {
                name: Some("v1".into()),
                served: Some(true),
                storage: Some(true),
                schema: Some(apiext::CustomResourceValidation {
                    open_apiv3_schema: Some(schema),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let got = decode(&envelope(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        &crd,
    ))
    .unwrap();
    let schema = &got["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let want: Value = json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "additionalProperties": false,
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "size": {"type": "string", "enum": ["small", "large"], "default": "small"},
        },
    });
    assert_eq!(schema, &want, "{schema:#}");
    let _: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(got).unwrap();
}

#[test]
fn malformed_protobuf_is_a_400_naming_the_message() {
    let mut body = envelope("v1", "ConfigMap", &core::ConfigMap::default());
    // A raw object claiming a 100-byte string that is not there.
    let bad = [0x0a, 0x64, b'x'];
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
        }),
        raw: Some(bad.to_vec()),
        ..Default::default()
    };
    body.truncate(MAGIC.len());
    body.extend(unknown.encode_to_vec());
    let err = decode(&body).unwrap_err();
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("api.core.v1.ConfigMap"),
        "{}",
        err.message
    );
}
