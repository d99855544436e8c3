#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Receipt CA rotation by the real `tollgate-operator` against the real API
//! server, sped up (`--receipt-ca-rotation-period 4s`,
//! `--receipt-ca-publish-lead 2s`): certificates issued before and after a
//! rotation are signed by different keys; the old key is retired with a
//! `notAfter` past every certificate it signed; the TrustAnchor carries both;
//! and both certificates verify, over their whole lives, against the trust
//! roots that anchor gives.
//!
//! Meanwhile a real `tollgate-gateway` (6 s key certificates from the control
//! endpoint) serves a steady trickle of requests and ships its receipts to a
//! real `tollgate-recorder` that follows the cluster's TrustAnchors (no anchor
//! file handed to it). The bundle exported afterwards spans renewals and
//! rotations, and `kubectl tollgate verify` passes it against the cluster's
//! anchor and the recorder's key.
//!
//! Its own test binary: the anchor is cluster-wide and this operator rewrites
//! it at every rotation step, which suites running beside it would see.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;
use tollgate_e2e::crds::install_crds;
use tollgate_e2e::namespace::unique_name;
use tollgate_e2e::operator::{
    OperatorArgs, OperatorProcess, Started, cli_binary, label_governed, pod_token,
    request_certificate, start_gateway,
};
use tollgate_e2e::{TestNamespace, client, eventually};
use tollgate_evidence::{
    Bundle, KeyId, KeyRole, KeyState, PublicKey, SignedKeyCertificate, SigningKey, Timestamp,
    TrustRoots, TrustedKey,
};
use tollgate_test_support::process::{Listening, recorder_binary};

/// The recorder, serving on loopback and authenticating callers by
/// TokenReview, so it follows the cluster's TrustAnchors (KUBECONFIG).
fn start_recorder(data_dir: &Path) -> Result<Started> {
    let mut command = Command::new(recorder_binary()?);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--auth", "token-review"])
        .env("RUST_LOG", "warn");
    let listening = Listening::start(command, "recorder", "tollgate-recorder: listening on ")
        .context("starting tollgate-recorder")?;
    Ok(Started::new(listening))
}

/// A request every 100 ms until `stop`; returns how many were served (200).
async fn trickle(api: String, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut served = 0;
    while !stop.load(Ordering::SeqCst) {
        let body =
            json!({"model": "dry-m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
        let mut stream = tokio::net::TcpStream::connect(&api).await?;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
        let mut response = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await?;
        let status = response.split_whitespace().nth(1).unwrap_or_default();
        ensure!(status == "200", "refused during a rotation: {response}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(served)
}

/// Runs `kubectl tollgate ARGS`; returns (exit code, stdout, stderr).
fn kubectl_tollgate(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(cli_binary()?).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Asks the control endpoint to certify a fresh key.
async fn certify(op: &OperatorProcess, ca: &str, token: &str) -> Result<SignedKeyCertificate> {
    let key = SigningKey::from_bytes(&rand_seed());
    let public_key = PublicKey::of_signing_key(&key).to_base64();
    let r = request_certificate(op, ca, token, &public_key).await?;
    ensure!(r.status == 200, "{r:?}");
    Ok(serde_json::from_value(r.json()?["certificate"].clone())?)
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_le_bytes();
    seed[..16].copy_from_slice(&nanos);
    seed
}

fn trusted(
    public_key: &str,
    not_before: &str,
    not_after: Option<&str>,
    state: KeyState,
) -> TrustedKey {
    let public_key = PublicKey::from_base64(public_key).unwrap();
    TrustedKey {
        key_id: public_key.key_id(),
        public_key,
        role: KeyRole::ReceiptCa,
        not_before: Timestamp::parse_rfc3339(not_before).unwrap(),
        not_after: not_after.map(|t| Timestamp::parse_rfc3339(t).unwrap()),
        state,
    }
}

#[tokio::test]
async fn e2e_receipt_ca_rotates_with_overlap() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let op_ns = TestNamespace::create(&client, "rot-op").await?;
    let app_ns = TestNamespace::create(&client, "rot-app").await?;
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gw", "annotations": {"tollgate.dev/injected": "1"}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))?;
    pod = Api::<Pod>::namespaced(client.clone(), app_ns.name())
        .create(&PostParams::default(), &pod)
        .await?;
    let provider = unique_name("dry");
    app_ns
        .accepts(&json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
            "metadata": {"name": provider},
            "spec": {"api": "dryRun", "models": [{"name": "dry-m", "pricing": {"inputPerMillionMicroUSD": 1}}]},
        }))
        .await?;
    app_ns
        .accepts(&json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "EgressPolicy",
            "metadata": {"name": "apps"},
            "spec": {"mode": "enforce", "allow": [{"providerRef": provider, "models": ["dry-m"]}]},
        }))
        .await?;
    label_governed(&client, app_ns.name()).await?;
    let mut args = OperatorArgs::new(op_ns.name());
    args.extra_args = [
        "--receipt-ca-rotation-period",
        "4s",
        "--receipt-ca-publish-lead",
        "2s",
    ]
    .map(str::to_owned)
    .to_vec();
    let op = OperatorProcess::start(&args).await?;
    let ca = op.ca_bundle(&client).await?;
    let token = pod_token(&client, &pod, "tollgate.dev/gateway").await?;

    let dir = std::env::temp_dir().join(unique_name("tg-rot"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ca.crt"), &ca)?;
    std::fs::write(dir.join("token"), &token)?;
    std::fs::write(
        dir.join("recorder-token"),
        pod_token(&client, &pod, "tollgate.dev/recorder").await?,
    )?;
    let recorder_data = dir.join("recorder");
    let recorder = start_recorder(&recorder_data)?;
    let recorder_url = format!("http://{}", recorder.address);
    let recorder_token = dir.join("recorder-token");
    let gateway = start_gateway(
        &dir,
        &op.control_url(),
        &[
            "--recorder-url",
            &recorder_url,
            "--recorder-token-file",
            recorder_token.to_str().context("path")?,
        ],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(trickle(gateway.address.clone(), stop.clone()));

    let first = certify(&op, &ca, &token).await?;
    let first_issuer = first.certificate.issuer_key_id;
    let second = eventually(Duration::from_secs(40), || async {
        let c = certify(&op, &ca, &token).await?;
        ensure!(
            c.certificate.issuer_key_id != first_issuer,
            "not rotated yet"
        );
        Ok(c)
    })
    .await?;
    let second_issuer = second.certificate.issuer_key_id;

    // The Secret: the first key retired, trusted until after the last
    // certificate it can have signed has expired.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), op_ns.name());
    // The certificate can come from the new key a tick before the leader
    // records the promotion: wait for it.
    let old_not_after = eventually(Duration::from_secs(30), || async {
        let data = secrets
            .get("tollgate-receipt-ca")
            .await?
            .data
            .unwrap_or_default();
        let retired: Vec<serde_json::Value> =
            serde_json::from_slice(&data.get("retired.json").context("retired.json")?.0)?;
        let old = retired
            .iter()
            .find(|r| {
                PublicKey::from_base64(r["publicKey"].as_str().unwrap_or_default())
                    .is_ok_and(|k| k.key_id() == first_issuer)
            })
            .context("the first key is not retired yet")?;
        old["notAfterMs"].as_u64().context("notAfterMs")
    })
    .await?;
    ensure!(
        old_not_after >= first.certificate.not_after.unix_millis(),
        "the first key retires before its certificate expires"
    );

    // The anchor publishes both, the first as retired (the leader writes it
    // right after the Secret, and repairs it every tick).
    let anchors: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::discovery::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("tollgate.dev", "v1alpha1", "TrustAnchor"),
            "trustanchors",
        ),
    );
    let keys = eventually(Duration::from_secs(30), || async {
        let anchor = anchors.get("tollgate-receipt-ca").await?;
        let keys = anchor.data["spec"]["receiptKeys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let find = |id: &KeyId| keys.iter().find(|k| k["keyId"] == id.to_string().as_str());
        // The anchor is written just after the Secret at each step: wait for
        // the one that shows the first key retired.
        let retired = find(&first_issuer)
            .is_some_and(|k| k["state"] == "retired" && k["notAfter"].is_string());
        ensure!(retired && find(&second_issuer).is_some(), "{keys:?}");
        Ok(keys)
    })
    .await?;
    let roots = TrustRoots {
        keys: keys
            .iter()
            .map(|k| {
                trusted(
                    k["publicKey"].as_str().unwrap(),
                    k["notBefore"].as_str().unwrap(),
                    k["notAfter"].as_str(),
                    match k["state"].as_str() {
                        Some("retired") => KeyState::Retired,
                        Some("revoked") => KeyState::Revoked,
                        _ => KeyState::Active,
                    },
                )
            })
            .collect(),
    };
    roots.validate()?;
    // Both certificates verify over their whole lives (records dated up to
    // their expiry are checked against the issuer's window too).
    for certificate in [&first, &second] {
        let issuer = roots
            .find(&certificate.certificate.issuer_key_id)
            .context("issuer not in the anchor")?;
        certificate.verify_issuer(&issuer.public_key)?;
        for at in [
            certificate.certificate.not_before,
            certificate.certificate.not_after,
        ] {
            issuer
                .check_use(KeyRole::ReceiptCa, at)
                .map_err(|e| anyhow::anyhow!("{} at {at}: {e}", issuer.key_id))?;
        }
    }
    let old_anchor = roots.find(&first_issuer).unwrap();
    ensure!(old_anchor.state == KeyState::Retired && old_anchor.not_after.is_some());
    // Published before it signed: its window starts no later than the first
    // certificate it issued, and the anchor had it then (the operator writes
    // the anchor before marking the key published).
    let new_anchor = roots.find(&second_issuer).unwrap();
    ensure!(new_anchor.not_before <= second.certificate.not_before);

    // The gateway renews under the new key for a while, then drains (its
    // close record shipped), and the recorder stops.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::SeqCst);
    let served = traffic.await??;
    let status = gateway.terminate()?;
    ensure!(status.success(), "gateway exited with {status}");
    let status = recorder.terminate()?;
    ensure!(status.success(), "recorder exited with {status}");

    // The bundle holds every request served, under certificates of both keys,
    // and verifies against the cluster's anchor and the recorder's key.
    let anchor_file = dir.join("receipt-ca-anchor.json");
    let anchor = anchors.get("tollgate-receipt-ca").await?;
    std::fs::write(&anchor_file, serde_json::to_vec(&anchor)?)?;
    let bundle_file = dir.join("bundle.json");
    let (code, out, err) = kubectl_tollgate(&[
        "bundle",
        "export",
        "--local",
        recorder_data.to_str().context("path")?,
        "-o",
        bundle_file.to_str().context("path")?,
    ])?;
    ensure!(code == 0, "bundle export: {out}{err}");
    let bundle: Bundle = serde_json::from_slice(&std::fs::read(&bundle_file)?)?;
    ensure!(
        bundle.manifest.counts.receipts.get() == served,
        "{} receipts for {served} requests served",
        bundle.manifest.counts.receipts
    );
    let issuers: std::collections::BTreeSet<KeyId> = bundle
        .certificates
        .iter()
        .map(|c| c.certificate.issuer_key_id)
        .collect();
    // Renewals every 4 s and rotations every 4 s: the streams span at least one.
    ensure!(
        issuers.len() >= 2,
        "the bundle's certificates come from one receipt CA key: {issuers:?}"
    );
    let recorder_anchor = recorder_data.join("recorder-trust-anchor.yaml");
    let (code, out, err) = kubectl_tollgate(&[
        "verify",
        bundle_file.to_str().context("path")?,
        "--trust-anchor",
        anchor_file.to_str().context("path")?,
        "--trust-anchor",
        recorder_anchor.to_str().context("path")?,
    ])?;
    eprintln!("{out}");
    ensure!(
        code == 0 && out.contains("Verdict: PASS"),
        "verify: {out}{err}"
    );

    drop(op);
    app_ns.delete().await?;
    op_ns.delete().await
}
