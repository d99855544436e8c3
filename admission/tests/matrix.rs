#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Namespace label × pod annotation, each {unset, disabled, enabled}, with
//! and without a policy that allows opt-out: what injection adds and what
//! validation says. Plus the property that injection is idempotent and
//! deterministic.

mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use proptest::prelude::*;
use serde_json::json;
use tollgate_admission::inject::Decision;
use tollgate_admission::view::PolicySummary;
use tollgate_admission::{NamespaceView, Subject, check_pod, inject};
use tollgate_crds::policy::PolicyMode;
use tollgate_wire::config::Selector;

fn namespace(label: Option<&str>, allow_opt_out: bool) -> NamespaceView {
    NamespaceView {
        name: NS.into(),
        governed: label == Some("enabled"),
        policies: vec![PolicySummary {
            name: "default".into(),
            mode: PolicyMode::Enforce,
            selector: Some(Selector::default()),
            allow_opt_out,
            egress: vec![],
        }],
    }
}

fn pod(annotation: Option<&str>) -> Pod {
    let mut value = plain_pod();
    if let Some(a) = annotation {
        value["metadata"]["annotations"] = json!({"tollgate.dev/inject": a});
    }
    serde_json::from_value(value).unwrap()
}

#[test]
fn label_annotation_matrix() {
    let values = [None, Some("disabled"), Some("enabled")];
    for allow_opt_out in [false, true] {
        for label in values {
            for annotation in values {
                let ns = namespace(label, allow_opt_out);
                let out = inject(&pod(annotation), &ns, &settings()).unwrap();
                let spec = out.pod.spec.clone().unwrap();
                let init = spec.init_containers.as_ref().map_or(0, Vec::len);
                let governed = label == Some("enabled");
                let opted_out = annotation == Some("disabled");
                let case = format!(
                    "label={label:?} annotation={annotation:?} allowOptOut={allow_opt_out}"
                );
                let expect_injected = governed && !opted_out;
                assert_eq!(init, if expect_injected { 2 } else { 0 }, "{case}");
                assert_eq!(spec.containers.len(), 1, "{case}");
                let expected_decision = match (governed, opted_out, allow_opt_out) {
                    (false, _, _) => Decision::NotGoverned,
                    (true, false, _) => Decision::Inject,
                    (true, true, true) => Decision::OptedOut,
                    (true, true, false) => Decision::OptOutNotPermitted,
                };
                assert_eq!(out.decision, expected_decision, "{case}");
                // Validation of what mutation produced.
                let violations =
                    check_pod(Subject::Pod, &out.pod.metadata, &spec, &ns, &settings()).unwrap();
                let ids: Vec<&str> = violations.iter().map(|v| v.rule).collect();
                if expected_decision == Decision::OptOutNotPermitted {
                    assert_eq!(ids, vec!["opt-out-not-permitted"], "{case}");
                } else {
                    assert!(ids.is_empty(), "{case}: {ids:?}");
                }
            }
        }
    }
}

fn arb_container() -> impl Strategy<Value = Container> {
    (
        "[a-z]{1,6}",
        prop::collection::vec(("[A-Z_]{1,8}", "[a-z0-9:/.]{0,12}"), 0..4),
        prop::collection::vec(
            prop::sample::select(vec!["NET_RAW", "ALL", "CHOWN", "cap_net_raw"]),
            0..3,
        ),
        prop::option::of(prop::sample::select(vec![
            "tollgate-gateway",
            "tollgate-init-network",
        ])),
    )
        .prop_map(|(name, env, drop, reserved)| Container {
            name: reserved.map_or(name, str::to_string),
            image: Some("example/app:1".into()),
            env: Some(
                env.into_iter()
                    .map(|(name, value)| EnvVar {
                        name,
                        value: Some(value),
                        value_from: None,
                    })
                    .collect(),
            ),
            security_context: (!drop.is_empty()).then(|| {
                k8s_openapi::api::core::v1::SecurityContext {
                    capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                        add: None,
                        drop: Some(drop.into_iter().map(str::to_string).collect()),
                    }),
                    ..Default::default()
                }
            }),
            ..Default::default()
        })
}

fn arb_pod() -> impl Strategy<Value = Pod> {
    (
        prop::collection::vec(arb_container(), 1..4),
        prop::collection::vec(arb_container(), 0..3),
        prop::collection::btree_map("[a-z]{1,4}", "[a-z]{1,4}", 0..3),
    )
        .prop_map(|(containers, init, labels)| Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("p".into()),
                labels: Some(labels.into_iter().collect::<BTreeMap<_, _>>()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers,
                init_containers: (!init.is_empty()).then_some(init),
                ..Default::default()
            }),
            status: None,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn injection_is_idempotent_and_deterministic(pod in arb_pod()) {
        let ns = governed();
        let once = inject(&pod, &ns, &settings()).unwrap();
        let again = inject(&pod, &ns, &settings()).unwrap();
        prop_assert_eq!(&once, &again);
        let twice = inject(&once.pod, &ns, &settings()).unwrap();
        prop_assert_eq!(&twice.pod, &once.pod);
        prop_assert!(twice.patch.0.is_empty());
        // Whatever the author wrote, the injected containers sit first.
        let init = once.pod.spec.as_ref().unwrap().init_containers.clone().unwrap();
        prop_assert_eq!(init[0].name.as_str(), "tollgate-init-network");
        prop_assert_eq!(init[1].name.as_str(), "tollgate-gateway");
    }
}
