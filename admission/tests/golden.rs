#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Golden AdmissionReviews: one case per rule (named after the rule id) plus
//! the compliant and mutation cases. Each file under `testdata/reviews/` holds
//! the webhook, the policy view, the review sent and the response expected.
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-admission --test golden` rewrites
//! them; otherwise any drift fails with a diff.

mod common;

use std::path::PathBuf;

use base64::Engine as _;
use common::*;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use serde_json::{Value, json};
use tollgate_admission::rules::RULES;
use tollgate_admission::{StaticPolicyView, Webhook, review};

struct Case {
    name: &'static str,
    webhook: Webhook,
    view: Value,
    operation: &'static str,
    kind: (&'static str, &'static str, &'static str),
    resource: &'static str,
    sub_resource: Option<&'static str>,
    name_of_object: &'static str,
    object: Value,
    old_object: Option<Value>,
}

fn view_default() -> Value {
    json!({"governed": [NS], "ungoverned": ["quiet"]})
}

fn pod_case(name: &'static str, webhook: Webhook, object: Value) -> Case {
    Case {
        name,
        webhook,
        view: view_default(),
        operation: "CREATE",
        kind: ("", "v1", "Pod"),
        resource: "pods",
        sub_resource: None,
        name_of_object: "app",
        object,
        old_object: None,
    }
}

fn validate(name: &'static str, object: Value) -> Case {
    pod_case(name, Webhook::ValidatePods, object)
}

fn edit(mut v: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let slot = v.pointer_mut(parent).unwrap();
    match slot {
        Value::Array(a) => {
            let i: usize = key.parse().unwrap();
            if i == a.len() {
                a.push(value);
            } else {
                a[i] = value;
            }
        }
        Value::Object(o) => {
            o.insert(key.to_string(), value);
        }
        _ => panic!("cannot edit {pointer}"),
    }
    v
}

fn deployment(template_spec_edit: impl Fn(Value) -> Value) -> Value {
    let pod = template_spec_edit(plain_pod());
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "chat"}},
            "template": {"metadata": pod["metadata"], "spec": pod["spec"]}
        }
    })
}

fn cases() -> Vec<Case> {
    let plain = plain_pod();
    let injected = injected_pod();
    let app_env = "/spec/containers/0/env";
    let mut cases = vec![
        pod_case("mutate-plain-pod", Webhook::MutatePods, plain.clone()),
        pod_case(
            "mutate-injected-pod-is-unchanged",
            Webhook::MutatePods,
            injected.clone(),
        ),
        Case {
            view: json!({"governed": ["tollgate-system"]}),
            ..pod_case(
                "mutate-operator-namespace",
                Webhook::MutatePods,
                edit(
                    plain.clone(),
                    "/metadata/namespace",
                    json!("tollgate-system"),
                ),
            )
        },
        Case {
            view: json!({"governed": [NS], "policies": {NS: [{"name": "relaxed", "mode": "enforce",
                "selector": {"matchLabels": {}, "matchExpressions": []}, "allowOptOut": true}]}}),
            ..pod_case(
                "mutate-opt-out-permitted",
                Webhook::MutatePods,
                edit(
                    plain.clone(),
                    "/metadata/annotations",
                    json!({"tollgate.dev/inject": "disabled"}),
                ),
            )
        },
        Case {
            view: json!({"ungoverned": [NS]}),
            ..pod_case(
                "mutate-ungoverned-namespace",
                Webhook::MutatePods,
                plain.clone(),
            )
        },
        validate("compliant-injected-pod", injected.clone()),
        validate("gateway-missing", plain.clone()),
        validate(
            "gateway-modified",
            edit(
                injected.clone(),
                "/spec/initContainers/1/image",
                json!("evil/gateway:1"),
            ),
        ),
        Case {
            operation: "UPDATE",
            old_object: Some(injected.clone()),
            ..validate(
                "gateway-modified-on-update",
                edit(
                    injected.clone(),
                    "/spec/initContainers/1/args",
                    json!(["run"]),
                ),
            )
        },
        Case {
            operation: "UPDATE",
            old_object: Some(edit(injected.clone(), "/spec/hostNetwork", json!(true))),
            ..validate(
                "update-tolerates-what-was-already-admitted",
                edit(
                    edit(injected.clone(), "/spec/hostNetwork", json!(true)),
                    "/metadata/labels/extra",
                    json!("x"),
                ),
            )
        },
        validate(
            "opt-out-not-permitted",
            edit(
                plain.clone(),
                "/metadata/annotations",
                json!({"tollgate.dev/inject": "disabled"}),
            ),
        ),
        validate(
            "host-network",
            edit(injected.clone(), "/spec/hostNetwork", json!(true)),
        ),
        validate(
            "host-pid",
            edit(injected.clone(), "/spec/hostPID", json!(true)),
        ),
        validate(
            "share-process-namespace",
            edit(injected.clone(), "/spec/shareProcessNamespace", json!(true)),
        ),
        validate(
            "privileged-container",
            edit(
                injected.clone(),
                "/spec/containers/0/securityContext/privileged",
                json!(true),
            ),
        ),
        validate(
            "dangerous-capability",
            edit(
                injected.clone(),
                "/spec/containers/0/securityContext/capabilities/add",
                json!(["cap_sys_ptrace"]),
            ),
        ),
        validate(
            "net-raw-not-dropped",
            edit(
                injected.clone(),
                "/spec/containers/0/securityContext/capabilities/drop",
                json!([]),
            ),
        ),
        validate(
            "gateway-uid",
            edit(
                injected.clone(),
                "/spec/securityContext",
                json!({"runAsUser": 15080}),
            ),
        ),
        validate(
            "base-url-override",
            injected_with_env(
                &plain,
                app_env,
                json!({"name": "OPENAI_BASE_URL", "value": "https://llm.example.com/v1"}),
            ),
        ),
        validate(
            "proxy-env",
            injected_with_env(
                &plain,
                app_env,
                json!({"name": "https_proxy", "value": "http://198.18.0.5:3128"}),
            ),
        ),
        validate(
            "gateway-volume-mount",
            edit(
                injected.clone(),
                "/spec/containers/0/volumeMounts",
                json!([{"name": "tollgate-tokens", "mountPath": "/tokens"}]),
            ),
        ),
        validate(
            "dns-outside-cluster",
            edit(
                edit(injected.clone(), "/spec/dnsPolicy", json!("None")),
                "/spec/dnsConfig",
                json!({"nameservers": ["198.19.0.10", "8.8.8.8"]}),
            ),
        ),
        Case {
            operation: "UPDATE",
            sub_resource: Some("ephemeralcontainers"),
            old_object: Some(injected.clone()),
            ..pod_case(
                "ephemeral-targets-gateway",
                Webhook::ValidatePodsEphemeral,
                edit(
                    injected.clone(),
                    "/spec/ephemeralContainers",
                    json!([{"name": "debugger", "image": "busybox", "targetContainerName": "tollgate-gateway",
                        "securityContext": {"capabilities": {"drop": ["ALL"]}}}]),
                ),
            )
        },
        Case {
            operation: "UPDATE",
            sub_resource: Some("ephemeralcontainers"),
            old_object: Some(injected.clone()),
            ..pod_case(
                "ephemeral-container-breaking-rules",
                Webhook::ValidatePodsEphemeral,
                edit(
                    injected.clone(),
                    "/spec/ephemeralContainers",
                    json!([{"name": "debugger", "image": "busybox",
                        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]),
                ),
            )
        },
        Case {
            operation: "CONNECT",
            kind: ("", "v1", "PodExecOptions"),
            sub_resource: Some("exec"),
            ..pod_case(
                "exec-into-gateway",
                Webhook::ValidatePodsConnect,
                json!({"apiVersion": "v1", "kind": "PodExecOptions", "container": "tollgate-gateway",
                    "command": ["sh"], "stdin": true, "tty": true}),
            )
        },
        Case {
            operation: "CONNECT",
            kind: ("", "v1", "PodAttachOptions"),
            sub_resource: Some("attach"),
            ..pod_case(
                "attach-to-app-container",
                Webhook::ValidatePodsConnect,
                json!({"apiVersion": "v1", "kind": "PodAttachOptions", "container": "app"}),
            )
        },
        Case {
            operation: "UPDATE",
            kind: ("", "v1", "Namespace"),
            resource: "namespaces",
            name_of_object: NS,
            view: json!({"governed": [NS], "policies": {NS: [{"name": "default", "mode": "enforce",
                "selector": {"matchLabels": {}, "matchExpressions": []}, "allowOptOut": false}]}}),
            old_object: Some(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": NS, "labels": {"tollgate.dev/inject": "enabled"}}})),
            ..pod_case(
                "namespace-unlabel",
                Webhook::ValidateNamespaces,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {}}}),
            )
        },
        Case {
            kind: ("apps", "v1", "Deployment"),
            resource: "deployments",
            ..pod_case(
                "workload-compliant-deployment",
                Webhook::ValidateWorkloads,
                deployment(|p| p),
            )
        },
        Case {
            kind: ("apps", "v1", "Deployment"),
            resource: "deployments",
            ..pod_case(
                "workload-deployment-breaking-rules",
                Webhook::ValidateWorkloads,
                deployment(|p| {
                    edit(
                        edit(p, "/spec/hostNetwork", json!(true)),
                        "/spec/containers/0/env/1",
                        json!({"name": "ANTHROPIC_BASE_URL", "value": "https://llm.example.com"}),
                    )
                }),
            )
        },
    ];
    let threads = |pod: &Value, value: &str| {
        let mut annotations = pod["metadata"]["annotations"].clone();
        if annotations.is_null() {
            annotations = json!({});
        }
        annotations[THREADS] = json!(value);
        edit(pod.clone(), "/metadata/annotations", annotations)
    };
    cases.extend([
        pod_case(
            "mutate-gateway-worker-threads",
            Webhook::MutatePods,
            threads(&plain, "2"),
        ),
        pod_case(
            "mutate-gateway-worker-threads-out-of-range",
            Webhook::MutatePods,
            threads(&plain, "0"),
        ),
        // Injected with the default thread count, then annotated: the
        // gateway no longer matches what the annotation asks for.
        validate(
            "gateway-threads-differ-from-annotation",
            threads(&injected, "2"),
        ),
        // The annotation added to a running pod: its gateway cannot change,
        // so the update is refused rather than left to drift.
        Case {
            operation: "UPDATE",
            old_object: Some(injected.clone()),
            ..validate(
                "gateway-threads-annotated-on-update",
                threads(&injected, "2"),
            )
        },
    ]);
    cases.sort_by_key(|c| c.name);
    cases
}

const THREADS: &str = "tollgate.dev/gateway-worker-threads";

/// The plain pod with an extra env entry, then injected: injection leaves
/// the author's value alone, so validation sees it.
fn injected_with_env(plain: &Value, env: &str, entry: Value) -> Value {
    let mut pod = plain.clone();
    pod.pointer_mut(env)
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(entry);
    injected(pod)
}

fn review_of(case: &Case) -> Value {
    let (group, version, kind) = case.kind;
    let mut request = json!({
        "uid": format!("00000000-0000-0000-0000-{:012}", case.name.len()),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": case.resource},
        "name": case.name_of_object,
        "operation": case.operation,
        "userInfo": {"username": "alice"},
        "object": case.object,
        "oldObject": case.old_object,
        "dryRun": false,
    });
    if let Some(sub) = case.sub_resource {
        request["subResource"] = json!(sub);
    }
    if case.webhook != Webhook::ValidateNamespaces {
        request["namespace"] = case
            .object
            .pointer("/metadata/namespace")
            .cloned()
            .unwrap_or(json!(NS));
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// The response, with the patch decoded so the golden file is readable.
fn readable(response: &AdmissionReview<DynamicObject>) -> Value {
    let mut value = serde_json::to_value(response).unwrap();
    let response = value.get_mut("response").unwrap();
    if let Some(patch) = response.get("patch").cloned() {
        let bytes: Vec<u8> = match patch {
            Value::String(s) => base64::engine::general_purpose::STANDARD.decode(s).unwrap(),
            other => serde_json::from_value(other).unwrap(),
        };
        response["patch"] = serde_json::from_slice(&bytes).unwrap();
    }
    value
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/reviews")
}

#[test]
fn golden_reviews_match() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let review_value = review_of(&case);
        let view: StaticPolicyView = serde_json::from_value(case.view.clone()).unwrap();
        let parsed: AdmissionReview<DynamicObject> =
            serde_json::from_value(review_value.clone()).unwrap();
        let response = review(case.webhook, parsed, &view, &settings());
        let golden = json!({
            "webhook": case.webhook,
            "view": case.view,
            "review": review_value,
            "response": readable(&response),
        });
        let text = serde_json::to_string_pretty(&golden).unwrap() + "\n";
        let path = golden_dir().join(format!("{}.json", case.name));
        if update {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let Ok(want) = std::fs::read_to_string(&path) else {
            failures.push(format!(
                "{} is missing; run with UPDATE_GOLDEN=1",
                path.display()
            ));
            continue;
        };
        if want != text {
            let diff = similar::TextDiff::from_lines(&want, &text)
                .unified_diff()
                .header("golden", "actual")
                .to_string();
            failures.push(format!("{} drifted:\n{diff}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn response_of(name: &str) -> Value {
    let case = cases().into_iter().find(|c| c.name == name).unwrap();
    let view: StaticPolicyView = serde_json::from_value(case.view.clone()).unwrap();
    let parsed = serde_json::from_value(review_of(&case)).unwrap();
    readable(&review(case.webhook, parsed, &view, &settings()))["response"].clone()
}

/// Every rule has a golden case named after it, which denies, quoting the
/// rule id; and no other rule fires in it.
#[test]
fn every_rule_has_a_denying_case_that_names_it() {
    let names: Vec<&str> = cases().iter().map(|c| c.name).collect();
    for rule in RULES {
        assert!(
            names.contains(&rule.id),
            "no golden case for rule {}",
            rule.id
        );
        let response = response_of(rule.id);
        assert_eq!(response["allowed"], json!(false), "{}: {response}", rule.id);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("[{}]", rule.id)),
            "{}: {message}",
            rule.id
        );
        let others: Vec<&str> = RULES
            .iter()
            .filter(|r| r.id != rule.id && message.contains(&format!("[{}]", r.id)))
            .map(|r| r.id)
            .collect();
        assert!(
            others.is_empty(),
            "{}: other rules fired too: {others:?}: {message}",
            rule.id
        );
        assert_eq!(response["status"]["code"], json!(403));
    }
}

#[test]
fn compliant_and_tolerated_cases_are_allowed() {
    for name in [
        "compliant-injected-pod",
        "update-tolerates-what-was-already-admitted",
        "attach-to-app-container",
        "workload-compliant-deployment",
        "mutate-injected-pod-is-unchanged",
        "mutate-operator-namespace",
        "mutate-opt-out-permitted",
        "mutate-ungoverned-namespace",
    ] {
        let response = response_of(name);
        assert_eq!(response["allowed"], json!(true), "{name}: {response}");
        assert!(response.get("patch").is_none(), "{name}: unexpected patch");
    }
}

#[test]
fn mutation_patch_turns_the_plain_pod_into_the_injected_pod() {
    let response = response_of("mutate-plain-pod");
    assert_eq!(response["allowed"], json!(true));
    let patch: json_patch::Patch = serde_json::from_value(response["patch"].clone()).unwrap();
    let mut pod = plain_pod();
    json_patch::patch(&mut pod, &patch).unwrap();
    assert_eq!(pod, injected_pod());
}

#[test]
fn a_pod_asks_its_gateway_for_threads_within_bounds() {
    let response = response_of("mutate-gateway-worker-threads");
    assert_eq!(response["allowed"], json!(true));
    let patch: json_patch::Patch = serde_json::from_value(response["patch"].clone()).unwrap();
    let mut pod = plain_pod();
    pod["metadata"]["annotations"] = json!({THREADS: "2"});
    json_patch::patch(&mut pod, &patch).unwrap();
    let args = pod["spec"]["initContainers"][1]["args"].as_array().unwrap();
    assert!(
        args.windows(2)
            .any(|w| w == [json!("--worker-threads"), json!("2")]),
        "{args:?}"
    );

    let refused = response_of("mutate-gateway-worker-threads-out-of-range");
    assert_eq!(refused["allowed"], json!(false));
    let message = refused["status"]["message"].as_str().unwrap();
    assert!(message.contains(THREADS), "{message}");

    for name in [
        "gateway-threads-differ-from-annotation",
        "gateway-threads-annotated-on-update",
    ] {
        let differ = response_of(name);
        assert_eq!(differ["allowed"], json!(false), "{name}");
        let message = differ["status"]["message"].as_str().unwrap();
        assert!(message.contains("[gateway-modified]"), "{name}: {message}");
    }
}

#[test]
fn a_deployment_breaking_rules_is_denied_with_each_rule() {
    let response = response_of("workload-deployment-breaking-rules");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("[host-network]"), "{message}");
    assert!(message.contains("[base-url-override]"), "{message}");
    assert_eq!(response["allowed"], json!(false));
}

#[test]
fn a_malformed_review_is_denied() {
    let empty: AdmissionReview<DynamicObject> = serde_json::from_value(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    )
    .unwrap();
    let out = serde_json::to_value(review(
        Webhook::ValidatePods,
        empty,
        &StaticPolicyView::default(),
        &settings(),
    ))
    .unwrap();
    assert_eq!(out["response"]["allowed"], json!(false));
}
