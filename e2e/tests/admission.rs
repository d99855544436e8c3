#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Admission against the real API server, with the real `tollgate-operator`
//! serving its webhooks: every rule refuses a pod and a Deployment naming the
//! rule id, compliant pods are stored fully injected, ephemeral containers,
//! exec into the gateway and unlabelling are refused, the audit sweep reports
//! a pod created before its namespace was labelled, and with the webhook
//! process gone, pods in governed namespaces are refused.
//!
//! The operator registers cluster-wide webhook configurations (with a unique
//! suffix, deleted at the end), so the tests here run one at a time.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tollgate_admission::rules::{Subject, check_pod};
use tollgate_admission::view::PolicySummary;
use tollgate_admission::{InjectionSettings, NamespaceView};
use tollgate_e2e::crds::install_crds;
use tollgate_e2e::operator::{OperatorArgs, OperatorProcess};
use tollgate_e2e::{Kubectl, TestNamespace, client, eventually};

const GATEWAY_IMAGE: &str = "tollgate/gateway:e2e";
const CONTROL_URL: &str = "https://tollgate-operator.tollgate-system.svc:9443";
const WEBHOOK_WAIT: Duration = Duration::from_secs(60);

/// The tests here register cluster-wide webhooks: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn settings(operator_namespace: &str) -> InjectionSettings {
    InjectionSettings {
        gateway_image: GATEWAY_IMAGE.into(),
        operator_namespace: operator_namespace.into(),
        control_url: CONTROL_URL.into(),
        recorder_url: None,
        cluster_dns: vec![IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10))],
    }
}

async fn start_operator(operator_namespace: &str) -> Result<OperatorProcess> {
    let mut args = OperatorArgs::new(operator_namespace);
    args.register_webhooks = true;
    args.extra_args = [
        "--gateway-image",
        GATEWAY_IMAGE,
        "--control-url",
        CONTROL_URL,
        "--cluster-dns",
        "198.19.0.10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    OperatorProcess::start(&args).await
}

async fn delete_webhook_configurations(client: &Client, suffix: &str) {
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let _ = mutating
        .delete(
            &format!("tollgate-injector{suffix}"),
            &DeleteParams::default(),
        )
        .await;
    let _ = validating
        .delete(
            &format!("tollgate-validator{suffix}"),
            &DeleteParams::default(),
        )
        .await;
}

async fn set_inject_label(client: &Client, ns: &str, value: Option<&str>) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tollgate.dev/inject": value}}})),
        )
        .await
        .with_context(|| format!("setting tollgate.dev/inject={value:?} on {ns}"))?;
    Ok(())
}

fn policy(name: &str) -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "EgressPolicy",
        "metadata": {"name": name},
        "spec": {"mode": "enforce", "injection": {"allowOptOut": false}}
    })
}

fn policies_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tollgate.dev", "v1alpha1", "EgressPolicy"),
        "egresspolicies",
    );
    Api::namespaced_with(client.clone(), ns, &resource)
}

fn plain_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "chat"}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    })
}

fn deployment(name: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": "chat"}},
            "template": {"metadata": pod["metadata"].clone(), "spec": pod["spec"].clone()}
        }
    })
}

/// One way around the gateway, as an edit of a plain pod.
struct Breach {
    rule: &'static str,
    edit: fn(&mut Value),
}

fn breaches() -> Vec<Breach> {
    vec![
        Breach {
            rule: "host-network",
            edit: |p| p["spec"]["hostNetwork"] = json!(true),
        },
        Breach {
            rule: "host-pid",
            edit: |p| p["spec"]["hostPID"] = json!(true),
        },
        Breach {
            rule: "share-process-namespace",
            edit: |p| p["spec"]["shareProcessNamespace"] = json!(true),
        },
        Breach {
            rule: "privileged-container",
            edit: |p| p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true}),
        },
        Breach {
            rule: "dangerous-capability",
            edit: |p| {
                p["spec"]["containers"][0]["securityContext"] =
                    json!({"capabilities": {"add": ["NET_ADMIN"]}})
            },
        },
        Breach {
            rule: "gateway-uid",
            edit: |p| p["spec"]["securityContext"] = json!({"runAsUser": 15080}),
        },
        Breach {
            rule: "base-url-override",
            edit: |p| {
                p["spec"]["containers"][0]["env"] =
                    json!([{"name": "OPENAI_BASE_URL", "value": "https://llm.example.com/v1"}])
            },
        },
        Breach {
            rule: "proxy-env",
            edit: |p| {
                p["spec"]["containers"][0]["env"] =
                    json!([{"name": "HTTPS_PROXY", "value": "http://198.18.0.5:3128"}])
            },
        },
        Breach {
            rule: "gateway-volume-mount",
            edit: |p| {
                p["spec"]["volumes"] = json!([{"name": "stolen", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "tollgate.dev/gateway", "path": "t"}}]}}]);
                p["spec"]["containers"][0]["volumeMounts"] =
                    json!([{"name": "stolen", "mountPath": "/stolen"}]);
            },
        },
        Breach {
            rule: "dns-outside-cluster",
            edit: |p| {
                p["spec"]["dnsPolicy"] = json!("None");
                p["spec"]["dnsConfig"] = json!({"nameservers": ["192.0.2.53"]});
            },
        },
        Breach {
            rule: "opt-out-not-permitted",
            edit: |p| p["metadata"]["annotations"] = json!({"tollgate.dev/inject": "disabled"}),
        },
    ]
}

/// A server-side dry-run create: what the API server would store.
async fn dry_run_create(client: &Client, ns: &str, pod: &Value) -> kube::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod.clone()).expect("a pod");
    pods.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &pod,
    )
    .await
}

fn init_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

fn expect_denied(result: kube::Result<impl std::fmt::Debug>, rule: &str) -> Result<String> {
    match result {
        Ok(o) => bail!("expected a denial naming [{rule}], but the request was admitted: {o:?}"),
        Err(kube::Error::Api(status)) => {
            ensure!(
                status.message.contains(&format!("[{rule}]")),
                "denied, but not by [{rule}]: {}",
                status.message
            );
            Ok(status.message.clone())
        }
        Err(e) => bail!("expected a denial naming [{rule}], got {e}"),
    }
}

async fn rules_scenario(client: &Client, op: &OperatorProcess, app: &TestNamespace) -> Result<()> {
    let ns = app.name();
    app.accepts(&policy("default")).await?;
    set_inject_label(client, ns, Some("enabled")).await?;

    // Wait until the API server calls the operator's webhooks.
    eventually(WEBHOOK_WAIT, || async {
        let pod = dry_run_create(client, ns, &plain_pod("probe")).await?;
        ensure!(
            init_names(&pod).len() == 2,
            "not injected yet: {:?}",
            init_names(&pod)
        );
        Ok(())
    })
    .await
    .context("the injector never answered")?;

    // A compliant pod is admitted and stored fully injected.
    let stored: Pod =
        serde_json::from_value(serde_json::to_value(app.accepts(&plain_pod("ok")).await?)?)?;
    assert_eq!(
        init_names(&stored),
        vec!["tollgate-init-network", "tollgate-gateway"]
    );
    let spec = stored.spec.clone().unwrap();
    let gateway = &spec.init_containers.as_ref().unwrap()[1];
    assert_eq!(gateway.image.as_deref(), Some(GATEWAY_IMAGE));
    assert_eq!(gateway.restart_policy.as_deref(), Some("Always"));
    let annotations = stored.annotations();
    assert_eq!(
        annotations.get("tollgate.dev/injected").map(String::as_str),
        Some("v1")
    );
    let env: Vec<String> = spec.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| format!("{}={}", e.name, e.value.clone().unwrap_or_default()))
        .collect();
    assert!(
        env.contains(&"OPENAI_BASE_URL=http://127.0.0.1:15080/v1".to_string()),
        "{env:?}"
    );
    assert!(
        env.contains(&"ANTHROPIC_BASE_URL=http://127.0.0.1:15080".to_string()),
        "{env:?}"
    );
    // The stored object, after the API server's defaulting, passes every
    // rule as the audit sweep would check it.
    let view = NamespaceView {
        name: ns.into(),
        governed: true,
        policies: vec![serde_json::from_value::<PolicySummary>(json!({
            "name": "default", "mode": "enforce",
            "selector": {"matchLabels": {}, "matchExpressions": []}, "allowOptOut": false}))?],
    };
    let violations = check_pod(
        Subject::Pod,
        &stored.metadata,
        &spec,
        &view,
        &settings(op.namespace()),
    )?;
    assert!(
        violations.is_empty(),
        "stored pod breaks rules: {violations:?}"
    );

    // Every rule, through a pod and through a Deployment.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apps", "v1", "Deployment"),
            "deployments",
        ),
    );
    for (i, breach) in breaches().into_iter().enumerate() {
        let mut pod = plain_pod(&format!("bad-{i}"));
        (breach.edit)(&mut pod);
        let typed: Pod = serde_json::from_value(pod.clone())?;
        expect_denied(
            pods.create(&PostParams::default(), &typed).await,
            breach.rule,
        )
        .with_context(|| format!("pod breaking {}", breach.rule))?;
        let workload: DynamicObject =
            serde_json::from_value(deployment(&format!("bad-{i}"), &pod))?;
        expect_denied(
            deployments.create(&PostParams::default(), &workload).await,
            breach.rule,
        )
        .with_context(|| format!("Deployment breaking {}", breach.rule))?;
    }

    // gateway-modified: a Deployment with an impostor, and a pod update
    // swapping the gateway image.
    let mut impostor = plain_pod("impostor");
    impostor["spec"]["containers"][0]["name"] = json!("tollgate-gateway");
    let workload: DynamicObject = serde_json::from_value(deployment("impostor", &impostor))?;
    expect_denied(
        deployments.create(&PostParams::default(), &workload).await,
        "gateway-modified",
    )?;
    let swap = json!({"spec": {"initContainers": [{"name": "tollgate-gateway", "image": "evil/gateway:1"}]}});
    expect_denied(
        pods.patch("ok", &PatchParams::default(), &Patch::Strategic(swap))
            .await,
        "gateway-modified",
    )?;

    // Ephemeral containers: targeting the gateway, or keeping NET_RAW.
    let target = json!({"spec": {"ephemeralContainers": [{"name": "dbg", "image": "registry.invalid/busybox:1",
        "targetContainerName": "tollgate-gateway", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}});
    expect_denied(
        pods.patch_subresource(
            "ephemeralcontainers",
            "ok",
            &PatchParams::default(),
            &Patch::Strategic(target),
        )
        .await,
        "ephemeral-targets-gateway",
    )?;
    let raw = json!({"spec": {"ephemeralContainers": [{"name": "dbg2", "image": "registry.invalid/busybox:1"}]}});
    expect_denied(
        pods.patch_subresource(
            "ephemeralcontainers",
            "ok",
            &PatchParams::default(),
            &Patch::Strategic(raw),
        )
        .await,
        "net-raw-not-dropped",
    )?;

    // exec into the gateway.
    let kubectl = Kubectl::from_env()?;
    let out = kubectl
        .output(
            &[
                "exec",
                "-n",
                ns,
                "ok",
                "-c",
                "tollgate-gateway",
                "--",
                "true",
            ],
            None,
        )
        .await?;
    ensure!(!out.status.success(), "exec into the gateway succeeded");
    ensure!(
        out.stderr.contains("[exec-into-gateway]"),
        "exec refused, but not by [exec-into-gateway]: {}",
        out.stderr
    );

    // gateway-missing: with the injector configuration gone (deleted by
    // someone, or not yet registered), the validator still refuses.
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    mutating
        .delete(
            &format!("tollgate-injector{}", op.webhook_suffix()),
            &DeleteParams::default(),
        )
        .await?;
    eventually(WEBHOOK_WAIT, || async {
        expect_denied(
            dry_run_create(client, ns, &plain_pod("uninjected")).await,
            "gateway-missing",
        )
        .map(|_| ())
    })
    .await?;

    // Unlabelling while an enforcing policy exists. The webhook answers from
    // the operator's watch of EgressPolicies, which may not have seen the
    // policy yet on a loaded machine: tried as a dry run until it has, then
    // for real.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let unlabel = Patch::Merge(json!({"metadata": {"labels": {"tollgate.dev/inject": null}}}));
    eventually(WEBHOOK_WAIT, || async {
        let dry_run = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        expect_denied(
            namespaces.patch(ns, &dry_run, &unlabel).await,
            "namespace-unlabel",
        )
        .map(|_| ())
    })
    .await?;
    expect_denied(
        namespaces
            .patch(ns, &PatchParams::default(), &unlabel)
            .await,
        "namespace-unlabel",
    )?;
    // Without enforcing policies, it may leave.
    policies_api(client, ns)
        .delete("default", &DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(20), || {
        set_inject_label(client, ns, None)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn e2e_admission_rules_exec_ephemeral_unlabel_and_webhook_down() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let client = client().await?;
    install_crds(&client).await?;
    let op_ns = TestNamespace::create(&client, "adm-op").await?;
    let app = TestNamespace::create(&client, "adm-app").await?;
    let mut op = start_operator(op_ns.name()).await?;
    let suffix = op.webhook_suffix().to_string();

    let outcome = async {
        rules_scenario(&client, &op, &app)
            .await
            .context(op.log_tail(30))?;

        // With the webhook process gone, governed namespaces admit no pod.
        let down = TestNamespace::create(&client, "adm-down").await?;
        set_inject_label(&client, down.name(), Some("enabled")).await?;
        let mut host_network = plain_pod("probe");
        host_network["spec"]["hostNetwork"] = json!(true);
        eventually(WEBHOOK_WAIT, || async {
            expect_denied(
                dry_run_create(&client, down.name(), &host_network).await,
                "host-network",
            )
            .map(|_| ())
        })
        .await?;
        op.kill()?;
        let message = down
            .rejects(&plain_pod("orphan"), "failed calling webhook")
            .await?;
        ensure!(message.contains("tollgate.dev"), "{message}");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    op.kill()?;
    delete_webhook_configurations(&client, &suffix).await;
    outcome
}

#[tokio::test]
async fn e2e_audit_finds_a_pod_created_before_the_namespace_was_labelled() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let client = client().await?;
    install_crds(&client).await?;
    let op_ns = TestNamespace::create(&client, "aud-op").await?;
    let app = TestNamespace::create(&client, "aud-app").await?;
    // Before the label, no webhook sees it.
    app.accepts(&plain_pod("legacy")).await?;
    app.accepts(&policy("default")).await?;
    set_inject_label(&client, app.name(), Some("enabled")).await?;

    let mut op = start_operator(op_ns.name()).await?;
    let suffix = op.webhook_suffix().to_string();
    let outcome = async {
        let policies = policies_api(&client, app.name());
        eventually(Duration::from_secs(60), || async {
            let p = policies.get("default").await?;
            let status = p.data.get("status").cloned().unwrap_or(Value::Null);
            ensure!(status["nonCompliantPods"] == json!(1), "status: {status}");
            let audited = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Audited")
                .cloned()
                .unwrap_or(Value::Null);
            ensure!(audited["status"] == "False", "Audited: {audited}");
            ensure!(
                audited["message"].as_str().unwrap_or("").contains("legacy"),
                "{audited}"
            );
            ensure!(status["lastAuditTime"].is_string(), "status: {status}");
            Ok(())
        })
        .await
        .context(op.log_tail(30))?;
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), app.name());
        eventually(Duration::from_secs(30), || async {
            let list = events.list(&Default::default()).await?;
            let found = list.items.iter().any(|e| {
                e.reason.as_deref() == Some("TollgateNonCompliant")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("legacy")
                    && e.note
                        .as_deref()
                        .unwrap_or("")
                        .contains("[gateway-missing]")
            });
            ensure!(found, "no TollgateNonCompliant Event for pod legacy yet");
            Ok(())
        })
        .await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    op.kill()?;
    delete_webhook_configurations(&client, &suffix).await;
    outcome
}
