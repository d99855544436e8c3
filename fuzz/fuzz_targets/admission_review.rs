//! An AdmissionReview as the webhooks receive it: parsed the way the operator
//! parses it, then answered by each webhook. Never a panic; the answer names the
//! request's uid; the same review always gets the same answer. The first byte
//! picks the webhook.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use libfuzzer_sys::fuzz_target;
use tollgate_admission::{InjectionSettings, StaticPolicyView, Webhook, review};

static SETTINGS: LazyLock<InjectionSettings> = LazyLock::new(|| InjectionSettings {
    gateway_image: "tollgate/gateway:fuzz".into(),
    operator_namespace: "tollgate-system".into(),
    control_url: "https://tollgate-operator.tollgate-system.svc:9443".into(),
    recorder_url: Some("https://tollgate-recorder.tollgate-system.svc:8443".into()),
    cluster_dns: vec![IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10))],
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let webhook = Webhook::ALL[usize::from(pick) % Webhook::ALL.len()];
    let Ok(parsed) = serde_json::from_slice::<AdmissionReview<DynamicObject>>(body) else {
        return;
    };
    let uid = parsed.request.as_ref().map(|r| r.uid.clone());
    let view = StaticPolicyView::default();
    let answer = review(webhook, parsed.clone(), &view, &SETTINGS);
    let response = answer.response.as_ref().expect("every review is answered");
    if let Some(uid) = uid {
        assert_eq!(response.uid, uid, "the answer names another request");
    }
    let again = review(webhook, parsed, &view, &SETTINGS);
    assert_eq!(
        serde_json::to_value(&answer).unwrap(),
        serde_json::to_value(&again).unwrap(),
        "the same review got two answers"
    );
});
