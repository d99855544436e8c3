#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! The operator's controllers, with the real `tollgate-operator` binary
//! against the real API server: every example object reaches `Ready` with a
//! current `observedGeneration`; broken references give `Ready=False` with
//! the reason, an Event says so, and fixing the reference flips `Ready` back.
//!
//! One operator serves the whole suite: two operators with different
//! operator namespaces would both lead (their Leases differ) and overwrite
//! each other's view of cluster-scoped objects.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tollgate_e2e::crds::install_crds;
use tollgate_e2e::manifests::{load_documents, yaml_files};
use tollgate_e2e::namespace::unique_name;
use tollgate_e2e::objects::{condition, resolve};
use tollgate_e2e::operator::{OperatorArgs, OperatorProcess};
use tollgate_e2e::{TestNamespace, client, eventually, repo_root};

/// Generous: the first pass waits for every watch's initial list.
const STATUS_TIMEOUT: Duration = Duration::from_secs(60);

/// The object as stored now.
async fn fetch(client: &Client, manifest: &Value, namespace: &str) -> Result<DynamicObject> {
    let resolved = resolve(client, manifest, namespace).await?;
    resolved
        .api
        .get(&resolved.object.name)
        .await
        .with_context(|| format!("reading {}", resolved.object))
}

/// The `Ready` condition, if the status has one for the current generation.
fn ready_condition(obj: &DynamicObject) -> Result<(String, String, String)> {
    let generation = obj.metadata.generation.context("no metadata.generation")?;
    let status = obj.data.get("status").context("no status yet")?;
    let observed = status["observedGeneration"].as_i64();
    ensure!(
        observed == Some(generation),
        "status.observedGeneration {observed:?} != metadata.generation {generation}"
    );
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .context("no Ready condition")?;
    ensure!(
        ready["observedGeneration"].as_i64() == Some(generation),
        "Ready describes generation {:?}, not {generation}",
        ready["observedGeneration"]
    );
    let text = |k: &str| ready[k].as_str().unwrap_or_default().to_owned();
    Ok((text("status"), text("reason"), text("message")))
}

/// Waits until the object's `Ready` is `status` (and `reason`, if given).
async fn wait_ready(
    client: &Client,
    manifest: &Value,
    namespace: &str,
    status: &str,
    reason: Option<&str>,
) -> Result<DynamicObject> {
    let what = format!(
        "{} {}",
        manifest["kind"].as_str().unwrap_or_default(),
        manifest["metadata"]["name"].as_str().unwrap_or_default()
    );
    eventually(STATUS_TIMEOUT, || async {
        let obj = fetch(client, manifest, namespace).await?;
        let (s, r, m) = ready_condition(&obj)?;
        if s != status || reason.is_some_and(|want| want != r) {
            bail!("{what}: Ready is {s} {r} ({m}), want {status} {reason:?}");
        }
        Ok(obj)
    })
    .await
}

async fn label_governed(client: &Client, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tollgate.dev/inject": "enabled"}}})),
        )
        .await
        .with_context(|| format!("labelling namespace {ns}"))?;
    Ok(())
}

async fn put_secret(client: &Client, ns: &str, name: &str, keys: &[&str]) -> Result<()> {
    let data: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_owned(), json!("dGVzdA==")))
        .collect();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .patch(
            name,
            &PatchParams::apply("tollgate-e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name},
                "data": data,
            })),
        )
        .await
        .with_context(|| format!("writing Secret {ns}/{name}"))?;
    Ok(())
}

/// Waits for an Event from the operator about `name` with `reason`.
async fn wait_event(client: &Client, namespace: &str, name: &str, reason: &str) -> Result<()> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    eventually(STATUS_TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await?;
        let found = list.items.iter().any(|e| {
            e.reporting_controller.as_deref() == Some("tollgate-operator")
                && e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        });
        ensure!(found, "no Event {reason} for {name} in {namespace}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn e2e_status_of_every_kind() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let op_ns = TestNamespace::create(&client, "status-op").await?;
    let app_ns = TestNamespace::create(&client, "status-app").await?;
    label_governed(&client, app_ns.name()).await?;
    let op = OperatorProcess::start(&OperatorArgs::new(op_ns.name())).await?;

    // 1. Every example: the Secret goes to the operator namespace, namespaced
    //    kinds to the app namespace.
    let mut applied = Vec::new();
    for path in yaml_files(&repo_root().join("examples/kinds"))? {
        for doc in load_documents(&path)? {
            let namespace = if doc.kind() == "Secret" {
                op_ns.name()
            } else {
                app_ns.name()
            };
            let holder = if doc.kind() == "Secret" {
                &op_ns
            } else {
                &app_ns
            };
            holder
                .accepts(&doc.value)
                .await
                .with_context(|| doc.describe())?;
            if doc.kind() != "Secret" {
                applied.push((doc.value.clone(), namespace.to_owned()));
            }
        }
    }
    let kinds: Vec<&str> = applied
        .iter()
        .map(|(v, _)| v["kind"].as_str().unwrap_or_default())
        .collect();
    for kind in [
        "LLMProvider",
        "EgressPolicy",
        "EgressQuota",
        "ClusterEgressQuota",
        "TrustAnchor",
        "RecorderConfig",
    ] {
        ensure!(kinds.contains(&kind), "examples/kinds has no {kind}");
    }
    for (manifest, namespace) in &applied {
        let obj = wait_ready(&client, manifest, namespace, "True", Some("Ready"))
            .await
            .map_err(|e| anyhow!("{e:#}\noperator log:\n{}", op.log_tail(30)))?;
        match manifest["kind"].as_str() {
            Some("EgressPolicy") => {
                let hash = obj.data["status"]["policyHash"]
                    .as_str()
                    .unwrap_or_default();
                ensure!(
                    hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
                    "policyHash {hash:?}"
                );
            }
            Some("TrustAnchor") => {
                ensure!(
                    obj.data["status"]["activeKeys"].as_u64().is_some(),
                    "no activeKeys: {}",
                    obj.data["status"]
                );
            }
            Some("EgressQuota" | "ClusterEgressQuota") => {
                // No recorder in this suite: usage is unknown, Ready holds.
                eventually(STATUS_TIMEOUT, || async {
                    let obj = fetch(&client, manifest, namespace).await?;
                    let usage = condition(&obj.data, "UsageKnown");
                    ensure!(
                        usage["status"] == "False" && usage["reason"] == "RecorderUnavailable",
                        "UsageKnown: {usage}"
                    );
                    ensure!(ready_condition(&obj)?.0 == "True", "not Ready");
                    Ok(())
                })
                .await?;
            }
            _ => {}
        }
    }

    // A spec change bumps the generation; the status follows it.
    let policy = applied
        .iter()
        .find(|(v, _)| v["kind"] == "EgressPolicy")
        .map(|(v, ns)| (v.clone(), ns.clone()))
        .context("no policy")?;
    let before = fetch(&client, &policy.0, &policy.1).await?;
    let hash_before = before.data["status"]["policyHash"].clone();
    let mut changed = policy.0.clone();
    changed["spec"]["guards"]["maxRequestBytes"] = json!(1_048_576);
    app_ns.accepts(&changed).await?;
    let after = wait_ready(&client, &changed, &policy.1, "True", None).await?;
    ensure!(after.metadata.generation > before.metadata.generation);
    eventually(STATUS_TIMEOUT, || async {
        let now = fetch(&client, &changed, &policy.1).await?;
        ensure!(
            now.data["status"]["policyHash"] != hash_before,
            "policyHash did not change with the spec"
        );
        Ok(())
    })
    .await?;

    // 2. A provider whose Secret lacks a key: Ready=False SecretKeyMissing,
    //    with an Event; adding the key flips it to True.
    let provider = unique_name("status-prov");
    let secret = unique_name("status-keys");
    put_secret(&client, op_ns.name(), &secret, &["key-a"]).await?;
    let provider_manifest = json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "LLMProvider",
        "metadata": {"name": provider},
        "spec": {
            "api": "openai",
            "baseURL": "https://llm.invalid",
            "hosts": ["llm.invalid"],
            "credentialsRef": {"secretName": secret, "keys": ["key-a", "key-b"]},
            "models": [{"name": "m1"}],
        },
    });
    app_ns.accepts(&provider_manifest).await?;
    let broken = wait_ready(
        &client,
        &provider_manifest,
        app_ns.name(),
        "False",
        Some("SecretKeyMissing"),
    )
    .await?;
    let (_, _, message) = ready_condition(&broken)?;
    ensure!(
        message.contains("key-b"),
        "message names the key: {message}"
    );
    // Events about cluster-scoped objects go to the default namespace.
    wait_event(&client, "default", &provider, "SecretKeyMissing").await?;
    put_secret(&client, op_ns.name(), &secret, &["key-a", "key-b"]).await?;
    wait_ready(
        &client,
        &provider_manifest,
        app_ns.name(),
        "True",
        Some("Ready"),
    )
    .await?;

    // 3. A policy naming a provider that does not exist: Ready=False
    //    ProviderNotFound; creating the provider flips it to True.
    let missing = unique_name("status-missing");
    let policy_manifest = json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "EgressPolicy",
        "metadata": {"name": "needs-missing"},
        "spec": {"allow": [{"providerRef": missing, "models": ["*"]}]},
    });
    app_ns.accepts(&policy_manifest).await?;
    wait_ready(
        &client,
        &policy_manifest,
        app_ns.name(),
        "False",
        Some("ProviderNotFound"),
    )
    .await?;
    wait_event(&client, app_ns.name(), "needs-missing", "ProviderNotFound").await?;
    app_ns
        .accepts(&json!({
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "LLMProvider",
            "metadata": {"name": missing},
            "spec": {"api": "dryRun", "models": [{"name": "fake"}]},
        }))
        .await?;
    wait_ready(
        &client,
        &policy_manifest,
        app_ns.name(),
        "True",
        Some("Ready"),
    )
    .await?;

    drop(op);
    app_ns.delete().await?;
    op_ns.delete().await?;
    Ok(())
}

#[test]
fn every_kind_has_an_example() {
    // The suite above relies on examples/kinds covering the six kinds.
    let files = yaml_files(&repo_root().join("examples/kinds")).unwrap();
    let kinds: Vec<String> = files
        .iter()
        .flat_map(|f| load_documents(f).unwrap())
        .map(|d| d.kind().to_owned())
        .collect();
    assert!(kinds.iter().any(|k| k == "RecorderConfig"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "Secret"), "{kinds:?}");
}
