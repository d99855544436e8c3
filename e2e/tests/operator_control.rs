#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! The operator's control endpoint and certificates, with the real
//! `tollgate-operator` binary against the real API server: config and key
//! certificates for a pod-bound token, each refusal, a provider Secret
//! rotation reaching a long-poll, and webhook CA rotation without a gap.
//!
//! Pods stay Pending (no kubelet); a TokenRequest bound to a Pod object works
//! all the same. Pods are created before their namespace is labelled
//! `tollgate.dev/inject=enabled`, so no webhook of a parallel suite sees them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tollgate_e2e::crds::install_crds;
use tollgate_e2e::namespace::unique_name;
use tollgate_e2e::operator::{
    HttpResponse, OperatorArgs, OperatorProcess, https_request, label_governed, peer_certificate,
    pod_token, request_certificate,
};
use tollgate_e2e::{TestNamespace, client, eventually};
use tollgate_evidence::{PublicKey, SignedKeyCertificate, SigningKey};

const AUDIENCE: &str = "tollgate.dev/gateway";

fn pod(name: &str, injected: bool) -> Pod {
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .unwrap();
    if injected {
        pod.metadata.annotations =
            Some([("tollgate.dev/injected".to_owned(), "1".to_owned())].into());
    }
    pod
}

async fn create_pod(client: &Client, ns: &str, name: &str, injected: bool) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod(name, injected))
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))
}

/// An LLMProvider reading `secret`/`key-a` and a policy in `ns` allowing it.
async fn provider_and_policy(ns: &TestNamespace, provider: &str, secret: &str) -> Result<()> {
    ns.accepts(&json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "LLMProvider",
        "metadata": {"name": provider},
        "spec": {
            "api": "openai",
            "baseURL": "https://llm.invalid",
            "hosts": ["llm.invalid"],
            "credentialsRef": {"secretName": secret, "keys": ["key-a"]},
            "models": [{"name": "m1", "pricing": {"inputPerMillionMicroUSD": 1, "outputPerMillionMicroUSD": 2}}],
        },
    }))
    .await?;
    ns.accepts(&json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "EgressPolicy",
        "metadata": {"name": "apps"},
        "spec": {"podSelector": {}, "mode": "enforce", "allow": [{"providerRef": provider, "models": ["m1"]}]},
    }))
    .await?;
    Ok(())
}

async fn put_secret(client: &Client, ns: &str, name: &str, value: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            [
                ("key-a".to_owned(), ByteString(value.as_bytes().to_vec())),
                ("unlisted".to_owned(), ByteString(b"must-not-leak".to_vec())),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    secrets
        .patch(
            name,
            &PatchParams::apply("tollgate-e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name},
                "data": serde_json::to_value(&secret.data)?,
            })),
        )
        .await
        .with_context(|| format!("writing Secret {ns}/{name}"))?;
    Ok(())
}

async fn get_config(
    op: &OperatorProcess,
    ca: &str,
    token: &str,
    query: &str,
    etag: Option<&str>,
) -> Result<HttpResponse> {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(etag) = etag {
        headers.push(("If-None-Match", etag));
    }
    https_request(
        &op.control_url(),
        ca,
        "GET",
        &format!("/v1/gateway/config{query}"),
        &headers,
        b"",
    )
    .await
}

fn refused(response: &HttpResponse, status: u16, reasons: &[&str]) -> Result<()> {
    let body = String::from_utf8_lossy(&response.body);
    ensure!(
        response.status == status,
        "expected {status} {reasons:?}, got {}: {body}",
        response.status
    );
    ensure!(
        response.header("content-type") == Some("application/problem+json"),
        "{:?}",
        response.headers
    );
    let reason = response.json()?["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        reasons.contains(&reason.as_str()),
        "expected reason {reasons:?}, got {reason}: {body}"
    );
    Ok(())
}

/// Everything a control endpoint test needs.
struct Setup {
    client: Client,
    op_ns: TestNamespace,
    app_ns: TestNamespace,
    provider: String,
    secret: String,
    op: OperatorProcess,
    ca: String,
    injected: Pod,
}

async fn setup(prefix: &str, extra_pods: &[(&str, bool)]) -> Result<(Setup, Vec<Pod>)> {
    let client = client().await?;
    install_crds(&client).await?;
    let op_ns = TestNamespace::create(&client, &format!("{prefix}-op")).await?;
    let app_ns = TestNamespace::create(&client, &format!("{prefix}-app")).await?;
    let provider = unique_name("prov");
    let secret = unique_name("keys");
    put_secret(&client, op_ns.name(), &secret, "sk-one").await?;
    provider_and_policy(&app_ns, &provider, &secret).await?;
    let injected = create_pod(&client, app_ns.name(), "gw", true).await?;
    let mut pods = Vec::new();
    for (name, inj) in extra_pods {
        pods.push(create_pod(&client, app_ns.name(), name, *inj).await?);
    }
    label_governed(&client, app_ns.name()).await?;
    let op = OperatorProcess::start(&OperatorArgs::new(op_ns.name())).await?;
    let ca = op.ca_bundle(&client).await?;
    Ok((
        Setup {
            client,
            op_ns,
            app_ns,
            provider,
            secret,
            op,
            ca,
            injected,
        },
        pods,
    ))
}

impl Setup {
    async fn finish(self) -> Result<()> {
        drop(self.op);
        self.app_ns.delete().await?;
        self.op_ns.delete().await
    }
}

#[tokio::test]
async fn e2e_control_issues_config_and_key_certificate() -> Result<()> {
    let (s, _) = setup("ctl", &[]).await?;
    let token = pod_token(&s.client, &s.injected, AUDIENCE).await?;

    let r = get_config(&s.op, &s.ca, &token, "", None).await?;
    ensure!(r.status == 200, "{r:?}\n{}", s.op.log_tail(20));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let etag = r.header("etag").context("no ETag")?.to_owned();
    assert!(
        etag.starts_with('"') && etag.len() == 66,
        "ETag is a quoted sha256: {etag}"
    );
    let doc = r.json()?;
    assert_eq!(doc["pod"]["namespace"], s.app_ns.name());
    assert_eq!(doc["pod"]["name"], "gw");
    assert_eq!(doc["pod"]["uid"], s.injected.uid().unwrap().as_str());
    assert_eq!(doc["pod"]["serviceAccount"], "default");
    assert_eq!(doc["pod"]["labels"]["app"], "gw");
    assert_eq!(doc["config"]["namespace"], s.app_ns.name());
    assert_eq!(doc["config"]["providers"][0]["name"], s.provider.as_str());
    assert_eq!(doc["config"]["policies"][0]["name"], "apps");
    // Only the listed key of the named Secret.
    assert_eq!(
        doc["credentials"],
        json!({ s.secret.as_str(): {"key-a": "sk-one"} })
    );
    // The cluster's caller key, created once in the operator namespace and
    // brokered to every gateway; never copied into the app namespace.
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), s.op_ns.name());
    let caller_key = secrets.get("tollgate-caller-key").await?.data.unwrap()["hmac-sha256.key"]
        .0
        .clone();
    let caller_key = String::from_utf8(caller_key)?;
    assert_eq!(caller_key.len(), 64, "32 bytes as hex");
    assert_eq!(doc["caller_key"], caller_key.as_str());
    let app_secrets: Api<Secret> = Api::namespaced(s.client.clone(), s.app_ns.name());
    assert!(app_secrets.get_opt("tollgate-caller-key").await?.is_none());

    // Unchanged content: 304 with the same ETag.
    let again = get_config(&s.op, &s.ca, &token, "", Some(&etag)).await?;
    assert_eq!(again.status, 304, "{again:?}");
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    // wait is bounded.
    let too_long = get_config(&s.op, &s.ca, &token, "?wait=61", Some(&etag)).await?;
    assert_eq!(too_long.status, 400);

    // A key certificate for an ephemeral key, bound to the pod.
    let gateway_key = SigningKey::from_bytes(&[9; 32]);
    let public = PublicKey::of_signing_key(&gateway_key);
    let r = request_certificate(&s.op, &s.ca, &token, &public.to_base64()).await?;
    ensure!(r.status == 200, "{r:?}");
    let signed: SignedKeyCertificate = serde_json::from_value(r.json()?["certificate"].clone())?;
    let c = &signed.certificate;
    assert_eq!(c.public_key, public);
    assert_eq!(c.namespace.as_str(), s.app_ns.name());
    assert_eq!(c.service_account.as_str(), "default");
    assert_eq!(c.pod_name.as_str(), "gw");
    assert_eq!(c.pod_uid.as_str(), s.injected.uid().unwrap());
    assert_eq!(
        c.not_after.unix_millis() - c.not_before.unix_millis(),
        24 * 3600 * 1000
    );
    // Signed by the receipt CA key in the operator namespace...
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), s.op_ns.name());
    let seed = secrets.get("tollgate-receipt-ca").await?.data.unwrap()["ed25519.seed"]
        .0
        .clone();
    let seed: [u8; 32] = decode_hex(std::str::from_utf8(&seed)?)?;
    let ca_public = PublicKey::of_signing_key(&SigningKey::from_bytes(&seed));
    signed.verify_issuer(&ca_public)?;
    // ...whose public half a TrustAnchor publishes. (Suites running in
    // parallel each run an operator that writes this one cluster-wide
    // object, so only its shape is checked here; the unit tests check that
    // it carries the key.)
    let anchors: Api<DynamicObject> = Api::all_with(
        s.client.clone(),
        &kube::discovery::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("tollgate.dev", "v1alpha1", "TrustAnchor"),
            "trustanchors",
        ),
    );
    let anchor = eventually(Duration::from_secs(20), || async {
        anchors
            .get("tollgate-receipt-ca")
            .await
            .context("TrustAnchor tollgate-receipt-ca")
    })
    .await?;
    let key = &anchor.data["spec"]["receiptKeys"][0];
    assert_eq!(key["role"], "receiptCA");
    assert_eq!(key["state"], "active");
    PublicKey::from_base64(key["publicKey"].as_str().unwrap())?;

    // A bad public key is a 400 with a reason.
    let auth = format!("Bearer {token}");
    let r = https_request(
        &s.op.control_url(),
        &s.ca,
        "POST",
        "/v1/gateway/certificate",
        &[("Authorization", auth.as_str())],
        br#"{"publicKey": "AAAA"}"#,
    )
    .await?;
    refused_any(&r, 400, "InvalidPublicKey")?;
    // Bodies past 64 KiB are refused before parsing.
    let big = vec![b' '; 65 * 1024];
    let r = https_request(
        &s.op.control_url(),
        &s.ca,
        "POST",
        "/v1/gateway/certificate",
        &[("Authorization", auth.as_str())],
        &big,
    )
    .await?;
    assert_eq!(r.status, 413, "{r:?}");

    // The control CA bundle reaches the governed namespace. Every operator
    // of the parallel suites publishes into every governed namespace, so the
    // content may be another operator's; one per cluster is the real setup.
    let configmaps: Api<ConfigMap> = Api::namespaced(s.client.clone(), s.app_ns.name());
    eventually(Duration::from_secs(20), || async {
        let cm = configmaps.get("tollgate-control-ca").await?;
        let published = cm.data.unwrap_or_default()["ca.crt"].clone();
        ensure!(
            published.contains("BEGIN CERTIFICATE"),
            "ConfigMap holds no certificate"
        );
        Ok(())
    })
    .await?;
    s.finish().await
}

fn refused_any(response: &HttpResponse, status: u16, reason: &str) -> Result<()> {
    ensure!(response.status == status, "{response:?}");
    assert_eq!(response.json()?["reason"], reason);
    Ok(())
}

fn decode_hex<const N: usize>(text: &str) -> Result<[u8; N]> {
    let text = text.trim();
    ensure!(text.len() == 2 * N, "hex of the wrong length");
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

#[tokio::test]
async fn e2e_control_refuses_bad_tokens_and_pods() -> Result<()> {
    let (s, pods) = setup("refuse", &[("plain", false), ("doomed", true)]).await?;
    let (plain, doomed) = (&pods[0], &pods[1]);

    // No token.
    let r = https_request(
        &s.op.control_url(),
        &s.ca,
        "GET",
        "/v1/gateway/config",
        &[],
        b"",
    )
    .await?;
    refused(&r, 401, &["TokenInvalid"])?;
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    // A token for another audience.
    let token = pod_token(&s.client, &s.injected, "someone-else").await?;
    refused(
        &get_config(&s.op, &s.ca, &token, "", None).await?,
        401,
        &["WrongAudience"],
    )?;

    // A pod that was not injected.
    let token = pod_token(&s.client, plain, AUDIENCE).await?;
    refused(
        &get_config(&s.op, &s.ca, &token, "", None).await?,
        403,
        &["PodNotInjected"],
    )?;

    // A deleted pod: the API server no longer accepts its bound token.
    let token = pod_token(&s.client, doomed, AUDIENCE).await?;
    assert_eq!(
        get_config(&s.op, &s.ca, &token, "", None).await?.status,
        200
    );
    let pods_api: Api<Pod> = Api::namespaced(s.client.clone(), s.app_ns.name());
    pods_api
        .delete("doomed", &DeleteParams::default().grace_period(0))
        .await?;
    eventually(Duration::from_secs(10), || async {
        ensure!(
            pods_api.get_opt("doomed").await?.is_none(),
            "pod still there"
        );
        Ok(())
    })
    .await?;
    // The API server may still accept the token for a moment (it then
    // fails the operator's own pod check), or already refuse it.
    let r = get_config(&s.op, &s.ca, &token, "", None).await?;
    match r.status {
        401 => refused(&r, 401, &["TokenInvalid"])?,
        _ => refused(&r, 403, &["PodNotFound"])?,
    }

    // An injected pod in a namespace that is not governed.
    let ungoverned = TestNamespace::create(&s.client, "ungoverned").await?;
    let stray = create_pod(&s.client, ungoverned.name(), "gw", true).await?;
    let token = pod_token(&s.client, &stray, AUDIENCE).await?;
    refused(
        &get_config(&s.op, &s.ca, &token, "", None).await?,
        403,
        &["NamespaceNotGoverned"],
    )?;
    // Certificates are refused the same way.
    let auth = format!("Bearer {token}");
    let r = https_request(
        &s.op.control_url(),
        &s.ca,
        "POST",
        "/v1/gateway/certificate",
        &[("Authorization", auth.as_str())],
        json!({"publicKey": PublicKey::of_signing_key(&SigningKey::from_bytes(&[5; 32])).to_base64()})
            .to_string()
            .as_bytes(),
    )
    .await?;
    refused(&r, 403, &["NamespaceNotGoverned"])?;
    ungoverned.delete().await?;
    s.finish().await
}

#[tokio::test]
async fn e2e_control_secret_rotation_reaches_a_long_poll() -> Result<()> {
    let (s, _) = setup("rotate", &[]).await?;
    let token = pod_token(&s.client, &s.injected, AUDIENCE).await?;
    let first = get_config(&s.op, &s.ca, &token, "", None).await?;
    ensure!(first.status == 200, "{first:?}");
    let etag = first.header("etag").context("no ETag")?.to_owned();

    // Nothing changes: the long-poll ends with 304 after `wait`.
    let started = Instant::now();
    let idle = get_config(&s.op, &s.ca, &token, "?wait=2", Some(&etag)).await?;
    assert_eq!(idle.status, 304, "{idle:?}");
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // A connected gateway waits; the provider Secret rotates meanwhile.
    let poll = {
        let (url, ca, token, etag) = (s.op.control_url(), s.ca.clone(), token.clone(), etag);
        tokio::spawn(async move {
            let auth = format!("Bearer {token}");
            let started = Instant::now();
            let r = https_request(
                &url,
                &ca,
                "GET",
                "/v1/gateway/config?wait=30",
                &[("Authorization", auth.as_str()), ("If-None-Match", &etag)],
                b"",
            )
            .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    put_secret(&s.client, s.op_ns.name(), &s.secret, "sk-two").await?;
    let (r, took) = poll.await?;
    let r = r?;
    ensure!(r.status == 200, "{r:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(
        r.json()?["credentials"][s.secret.as_str()]["key-a"],
        "sk-two"
    );
    assert_ne!(r.header("etag"), first.header("etag"));
    s.finish().await
}

/// The CA bundle the operator's webhook configurations carry. While they hold
/// no webhooks (the webhook builder may still be a stub), the bundle from the
/// operator's CA Secret, which is what it publishes. (Not the
/// `tollgate-control-ca` ConfigMap: operators of parallel suites overwrite
/// it in every governed namespace.)
async fn published_bundle(client: &Client, op: &OperatorProcess) -> Result<String> {
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let m = mutating
        .get(&format!("tollgate-injector{}", op.webhook_suffix()))
        .await?;
    if let Some(hook) = m.webhooks.as_ref().and_then(|w| w.first()) {
        let bundle = hook
            .client_config
            .ca_bundle
            .as_ref()
            .context("webhook without caBundle")?;
        return Ok(String::from_utf8(bundle.0.clone())?);
    }
    op.ca_bundle(client).await
}

#[tokio::test]
async fn e2e_webhook_certificate_rotation_keeps_serving() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let op_ns = TestNamespace::create(&client, "certs-op").await?;
    let mut args = OperatorArgs::new(op_ns.name());
    args.register_webhooks = true;
    args.extra_args = ["--ca-validity", "45s", "--cert-validity", "12s"]
        .into_iter()
        .chain(["--ca-propagation-delay", "3s"])
        .map(str::to_owned)
        .collect();
    let op = OperatorProcess::start(&args).await?;
    let suffix = op.webhook_suffix().to_owned();
    let cleanup = WebhookCleanup {
        client: client.clone(),
        suffix: suffix.clone(),
    };

    // The operator writes its configurations shortly after it listens.
    eventually(Duration::from_secs(30), || published_bundle(&client, &op)).await?;

    // Poll like a client would: take the bundle the configuration carries
    // now, and complete a TLS handshake against it. Through at least one CA
    // rotation, no handshake may fail.
    let mut bundles = BTreeSet::new();
    let mut leaves = BTreeSet::new();
    let mut overlap_seen = false;
    let mut handshakes = 0;
    let deadline = Instant::now() + Duration::from_secs(50);
    while Instant::now() < deadline {
        let bundle = published_bundle(&client, &op).await?;
        let count = bundle.matches("BEGIN CERTIFICATE").count();
        ensure!((1..=2).contains(&count), "bundle with {count} certificates");
        overlap_seen |= count == 2;
        for url in [op.webhook_url(), op.control_url()] {
            let leaf = peer_certificate(&url, &bundle).await.with_context(|| {
                format!(
                    "handshake {handshakes} with {url} failed against the published bundle\n{}",
                    op.log_tail(20)
                )
            })?;
            leaves.insert(leaf);
            handshakes += 1;
        }
        bundles.insert(bundle);
        if overlap_seen && bundles.len() >= 3 && leaves.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        overlap_seen,
        "the old and new CA never appeared together in the bundle"
    );
    assert!(bundles.len() >= 2, "the CA never rotated: {bundles:?}");
    assert!(
        leaves.len() >= 2,
        "the serving certificate was never re-issued"
    );

    // The configurations carry the URL the operator was given.
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    validating
        .get(&format!("tollgate-validator{suffix}"))
        .await
        .context("the operator did not write its ValidatingWebhookConfiguration")?;

    drop(op);
    cleanup.delete().await?;
    op_ns.delete().await
}

/// Deletes the operator's webhook configurations, so that no configuration
/// pointing at a dead port (failurePolicy Fail) outlives the test, even when
/// the test fails first.
struct WebhookCleanup {
    client: Client,
    suffix: String,
}

async fn delete_webhook_configurations(client: &Client, suffix: &str) -> Result<()> {
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let results = [
        m.delete(
            &format!("tollgate-injector{suffix}"),
            &DeleteParams::default(),
        )
        .await
        .map(|_| ()),
        v.delete(
            &format!("tollgate-validator{suffix}"),
            &DeleteParams::default(),
        )
        .await
        .map(|_| ()),
    ];
    for r in results {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => bail!("deleting webhook configurations: {e}"),
        }
    }
    Ok(())
}

impl WebhookCleanup {
    async fn delete(self) -> Result<()> {
        delete_webhook_configurations(&self.client, &self.suffix).await
    }
}

impl Drop for WebhookCleanup {
    fn drop(&mut self) {
        let suffix = self.suffix.clone();
        let _ = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = client().await?;
                delete_webhook_configurations(&client, &suffix).await
            })
        })
        .join();
    }
}
