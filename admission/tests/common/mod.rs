//! Shared fixtures for the admission tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tollgate_admission::{InjectionSettings, NamespaceView, inject};

pub const NS: &str = "team-a";

pub fn settings() -> InjectionSettings {
    InjectionSettings {
        gateway_image: "tollgate/gateway:test".into(),
        operator_namespace: "tollgate-system".into(),
        control_url: "https://tollgate-operator.tollgate-system.svc:9443".into(),
        recorder_url: Some("https://tollgate-recorder.tollgate-system.svc:8443".into()),
        cluster_dns: vec![IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10))],
    }
}

pub fn governed() -> NamespaceView {
    NamespaceView {
        name: NS.into(),
        governed: true,
        policies: vec![],
    }
}

/// A plain app pod, as a user would write it.
pub fn plain_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": NS, "labels": {"app": "chat"}},
        "spec": {
            "containers": [{"name": "app", "image": "example/app:1",
                "env": [{"name": "LOG_LEVEL", "value": "info"}]}]
        }
    })
}

/// The plain pod after injection.
pub fn injected_pod() -> Value {
    injected(plain_pod())
}

pub fn injected(pod: Value) -> Value {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    serde_json::to_value(inject(&pod, &governed(), &settings()).unwrap().pod).unwrap()
}
