#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! The data plane's cluster path end to end: a real `tollgate-gateway` run
//! with `--control-url` against a real `tollgate-operator` on the real API
//! server. The gateway authenticates with a pod-bound projected token, gets
//! its config, identity and key certificate from the control endpoint, serves
//! a request, and picks up a policy change through the long-poll without a
//! restart.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_e2e::crds::install_crds;
use tollgate_e2e::namespace::unique_name;
use tollgate_e2e::operator::{
    OperatorArgs, OperatorProcess, label_governed, pod_token, start_gateway,
};
use tollgate_e2e::{TestNamespace, client, eventually};
use tollgate_wire::caller::CallerKey;

/// The end-user id every request names.
const END_USER: &str = "e2e-end-user-7";

/// POSTs a chat completion over plain HTTP/1.1; returns the status code.
async fn chat(api: &str, model: &str) -> Result<u16> {
    let body =
        json!({"model": model, "user": END_USER, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let mut stream = tokio::net::TcpStream::connect(api).await?;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    Ok(status)
}

/// The EgressPolicy `apps`, allowing `models` of `provider`.
fn policy(provider: &str, models: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": "apps"},
        "spec": {"mode": "enforce", "allow": [{"providerRef": provider, "models": models}]},
    })
}

/// An operator namespace, and an app namespace that is governed, with a
/// dry-run provider, a policy allowing its model `dry-m`, and an injected pod.
struct Governed {
    client: kube::Client,
    op_ns: TestNamespace,
    app_ns: TestNamespace,
    provider: String,
    pod: Pod,
}

impl Governed {
    async fn set_up(prefix: &str) -> Result<Self> {
        let client = client().await?;
        install_crds(&client).await?;
        let op_ns = TestNamespace::create(&client, &format!("{prefix}-op")).await?;
        let app_ns = TestNamespace::create(&client, &format!("{prefix}-app")).await?;
        let provider = unique_name("dry");
        app_ns
            .accepts(&json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                "metadata": {"name": provider},
                "spec": {"api": "dryRun", "models": [{"name": "dry-m", "pricing": {"inputPerMillionMicroUSD": 1}}]},
            }))
            .await?;
        app_ns.accepts(&policy(&provider, &["dry-m"])).await?;
        // An injected pod (created before labelling, so no parallel suite's webhook sees it).
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app-0", "labels": {"app": "chat"},
                         "annotations": {"tollgate.dev/injected": "v1"}},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        }))?;
        let pod = Api::<Pod>::namespaced(client.clone(), app_ns.name())
            .create(&PostParams::default(), &pod)
            .await?;
        label_governed(&client, app_ns.name()).await?;
        Ok(Self {
            client,
            op_ns,
            app_ns,
            provider,
            pod,
        })
    }
}

/// A fresh directory holding what `start_gateway` reads: the operator's CA
/// and `pod`'s projected gateway token.
async fn gateway_dir(
    client: &kube::Client,
    op: &OperatorProcess,
    pod: &Pod,
    prefix: &str,
) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ca.crt"), op.ca_bundle(client).await?)?;
    std::fs::write(
        dir.join("token"),
        pod_token(client, pod, "tollgate.dev/gateway").await?,
    )?;
    Ok(dir)
}

#[tokio::test]
async fn e2e_gateway_runs_from_the_control_endpoint_and_follows_policy_changes() -> Result<()> {
    let Governed {
        client,
        op_ns,
        app_ns,
        provider,
        pod,
    } = Governed::set_up("gwc").await?;
    let op = OperatorProcess::start(&OperatorArgs::new(op_ns.name())).await?;
    let dir = gateway_dir(&client, &op, &pod, "tg-gwc").await?;
    let gateway = start_gateway(&dir, &op.control_url(), &[])?;

    ensure!(
        chat(&gateway.address, "dry-m").await? == 200,
        "an allowed model is served"
    );
    ensure!(
        chat(&gateway.address, "other").await? == 403,
        "an unknown model is refused"
    );

    // The spool's key certificate names this pod, issued by the control endpoint.
    // The receipt is written off the request path and the key may already
    // have been renewed into a second stream file: wait for the file that
    // holds it, each file read whole once per look.
    let spool_dir = dir.join("spool");
    let (spool_text, first, receipt) = eventually(Duration::from_secs(10), || {
        let spool_dir = spool_dir.clone();
        async move {
            for entry in std::fs::read_dir(&spool_dir)?.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|x| x != "jsonl") {
                    continue;
                }
                let text = std::fs::read_to_string(&path)?;
                let Some(line) = text.lines().nth(1) else {
                    continue;
                };
                let Ok(receipt) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let first: serde_json::Value =
                    serde_json::from_str(text.lines().next().unwrap_or_default())?;
                return Ok((text, first, receipt));
            }
            anyhow::bail!("no receipt")
        }
    })
    .await?;
    let cert = &first["certificate"]["certificate"];
    ensure!(cert["pod_name"] == "app-0", "{first}");
    ensure!(cert["namespace"] == app_ns.name(), "{first}");
    ensure!(
        cert["pod_uid"] == pod.uid().unwrap_or_default().as_str(),
        "{first}"
    );
    // The end user is hashed under the cluster's caller key, which the
    // gateway got from the control endpoint.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), op_ns.name());
    let key = secrets
        .get("tollgate-caller-key")
        .await?
        .data
        .unwrap_or_default();
    let key = CallerKey::from_hex(std::str::from_utf8(
        &key.get("hmac-sha256.key").context("caller key")?.0,
    )?)?;
    let expected = tollgate_evidence::Sha256Hex::from_bytes(key.hash(END_USER.as_bytes())).to_hex();
    ensure!(
        receipt["envelope"]["record"]["receipt"]["body"]["caller_hash"] == expected.as_str(),
        "{receipt}"
    );
    ensure!(
        !spool_text.contains(END_USER),
        "the end-user id is in the spool"
    );

    // The key is renewed through the control endpoint (which honoured the
    // 6 s lifetime asked for), while requests keep being served.
    let spool_dir = dir.join("spool");
    eventually(Duration::from_secs(30), || {
        let spool_dir = spool_dir.clone();
        let api = gateway.address.clone();
        async move {
            let streams = std::fs::read_dir(&spool_dir)?
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                .count();
            ensure!(chat(&api, "dry-m").await? == 200, "refused during renewal");
            ensure!(streams >= 2, "{streams} stream file(s) so far");
            Ok(())
        }
    })
    .await?;

    // A policy change reaches the running gateway through the long-poll.
    app_ns.accepts(&policy(&provider, &["other-*"])).await?;
    let api = gateway.address.clone();
    eventually(Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            let status = chat(&api, "dry-m").await?;
            ensure!(status == 403, "still {status}");
            Ok(())
        }
    })
    .await?;

    ensure!(gateway.terminate()?.success(), "gateway exit status");
    drop(op);
    app_ns.delete().await?;
    op_ns.delete().await
}

/// How long the operator stays away in the outage test: minutes, as the
/// fault it stands for (an operator rollout stuck, its node lost).
const OUTAGE: Duration = Duration::from_secs(120);

/// Fault: the operator is unreachable for minutes. A running gateway keeps
/// the config and the key it has and serves every request meanwhile (its key
/// certificate outlasts the outage, as the 24 h default does any real one);
/// once an operator answers on the control endpoint again, the gateway's
/// long-poll finds it and a policy change reaches it.
#[tokio::test]
async fn e2e_gateway_keeps_serving_while_the_operator_is_away() -> Result<()> {
    let Governed {
        client,
        op_ns,
        app_ns,
        provider,
        pod,
    } = Governed::set_up("gwo").await?;
    let args = OperatorArgs {
        identity: Some(unique_name("outage")),
        ..OperatorArgs::new(op_ns.name())
    };
    let mut op = OperatorProcess::start(&args).await?;
    let dir = gateway_dir(&client, &op, &pod, "tg-gwo").await?;
    let gateway = start_gateway(
        &dir,
        &op.control_url(),
        &["--key-certificate-lifetime", "30m"],
    )?;
    ensure!(chat(&gateway.address, "dry-m").await? == 200, "served");

    // The operator goes away: every request meanwhile is still served.
    let control_port: u16 = op
        .control_url()
        .rsplit(':')
        .next()
        .context("control port")?
        .parse()?;
    op.kill()?;
    let started = std::time::Instant::now();
    let mut served = 0;
    while started.elapsed() < OUTAGE {
        let status = chat(&gateway.address, "dry-m").await?;
        ensure!(
            status == 200,
            "request {served} refused with {status} {:?} into the outage",
            started.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(served >= 100, "only {served} requests during the outage");

    // An operator is back on the same endpoint; a policy change made
    // meanwhile reaches the gateway through its long-poll.
    app_ns.accepts(&policy(&provider, &["other-*"])).await?;
    let op = OperatorProcess::start(&OperatorArgs {
        control_port: Some(control_port),
        ..args
    })
    .await?;
    let api = gateway.address.clone();
    eventually(Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let status = chat(&api, "dry-m").await?;
            ensure!(status == 403, "still {status}");
            Ok(())
        }
    })
    .await?;

    ensure!(gateway.terminate()?.success(), "gateway exit status");
    drop(op);
    app_ns.delete().await?;
    op_ns.delete().await
}
