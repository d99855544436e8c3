#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Real `tollgate-gateway` processes sharing one quota through a real
//! recorder's lease API: no over-grant across gateways, returned leases free
//! their rest, denials are 429 with Retry-After, and an unreachable authority
//! follows the quota's failMode.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::process::{RecorderProcess, kubectl_tollgate};
use tollgate_test_support::process::{Listening, gateway_binary};
use tollgate_wire::client::{HttpClient, public_roots};

const CA_SEED: &str = "gateway-leases-test-ca";

fn client() -> HttpClient {
    HttpClient::new(public_roots().unwrap(), Duration::from_secs(20))
}

/// Quickstart provider and policy, plus one quota of `requests` a day.
fn manifests(dir: &Path, requests: u64, fail_mode: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let m = dir.join(format!("manifests-{fail_mode}"));
    std::fs::create_dir_all(&m).unwrap();
    for f in ["provider.yaml", "policy.yaml"] {
        std::fs::copy(root.join("examples/quickstart").join(f), m.join(f)).unwrap();
    }
    std::fs::write(
        m.join("quota.yaml"),
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: EgressQuota\nmetadata:\n  name: shared\nspec:\n  limits:\n  - name: daily-requests\n    window: day\n    requests: {requests}\n  enforcement: enforce\n  failMode: {fail_mode}\n"
        ),
    )
    .unwrap();
    let config = dir.join(format!("config-{fail_mode}.json"));
    let (code, _, err) = kubectl_tollgate(&[
        "compile",
        "--manifests",
        m.to_str().unwrap(),
        "-n",
        "demo",
        "-o",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    config
}

fn write_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let ca = tollgate_test_support::fixtures::key_from(CA_SEED);
    let key = dir.join("ca.key");
    tollgate_test_support::process::write_private(&key, hex::encode(ca.to_bytes())).unwrap();
    let anchor = dir.join("ca-anchor.yaml");
    std::fs::write(
        &anchor,
        tollgate_recorder::trust::anchor_yaml(
            "gateway-ca",
            &tollgate_evidence::PublicKey::of_signing_key(&ca),
            tollgate_evidence::KeyRole::ReceiptCa,
            tollgate_evidence::Timestamp::UNIX_EPOCH,
        ),
    )
    .unwrap();
    (key, anchor)
}

struct GatewayProcess {
    child: Child,
    api: String,
}

impl GatewayProcess {
    fn start(
        dir: &Path,
        name: &str,
        config: &Path,
        ca_key: &Path,
        recorder_url: &str,
        token: &Path,
    ) -> Self {
        let mut command = Command::new(gateway_binary().unwrap());
        command
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args([
                "--spool-dir",
                dir.join(format!("spool-{name}")).to_str().unwrap(),
            ])
            .args(["--namespace", "demo", "--service-account", "app"])
            .args([
                "--pod-name",
                name,
                "--pod-uid",
                "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab",
            ])
            .args(["--ca-key-file", ca_key.to_str().unwrap()])
            .args(["--recorder-url", recorder_url])
            .args(["--recorder-token-file", token.to_str().unwrap()])
            .env("RUST_LOG", "warn");
        let started = Listening::start(command, name, "tollgate-gateway: listening api=")
            .expect("gateway did not start");
        let (child, api) = (started.child, started.address);
        Self { child, api }
    }

    /// Sends one chat request; returns (status, Retry-After, error message).
    async fn chat(&self) -> (u16, Option<u64>, String) {
        let body = serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
        let r = client()
            .send(
                http::Method::POST,
                &format!("http://{}/v1/chat/completions", self.api),
                None,
                Some(bytes::Bytes::from(serde_json::to_vec(&body).unwrap())),
                1 << 20,
            )
            .await
            .unwrap();
        let code = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        (r.status.as_u16(), r.retry_after, code)
    }

    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_share_one_recorder_quota_without_over_granting() {
    let dir = common::temp_dir("gateway-leases");
    let (ca_key, anchor) = write_ca(&dir);
    let config = manifests(&dir, 5, "closed");
    let data = dir.join("data");
    let rec = RecorderProcess::start(&data, &["--trust-anchor", anchor.to_str().unwrap()]);
    let token = data.join("local-token");

    let a = GatewayProcess::start(&dir, "gw-a", &config, &ca_key, &rec.url, &token);
    let b = GatewayProcess::start(&dir, "gw-b", &config, &ca_key, &rec.url, &token);
    let mut allowed = 0;
    for _ in 0..3 {
        let (status, _, _) = a.chat().await;
        assert_eq!(status, 200);
        allowed += 1;
    }
    // A holds the whole remaining budget in its lease: B is denied, never over-granted.
    let (status, retry_after, message) = b.chat().await;
    assert_eq!(status, 429, "{message}");
    assert!(
        message.contains("demo/shared limit daily-requests is exhausted"),
        "{message}"
    );
    assert!(retry_after.is_some_and(|s| s > 0), "429 needs Retry-After");

    // A stops and returns its lease with what it consumed: the rest is free again.
    a.stop();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(b.chat().await.0);
    }
    allowed += statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        statuses,
        vec![200, 200, 429, 429],
        "B gets exactly what A gave back"
    );
    assert_eq!(allowed, 5, "the cap, exactly");
    b.stop();
    rec.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_authority_follows_each_quotas_fail_mode() {
    let dir = common::temp_dir("gateway-leases-down");
    let (ca_key, _) = write_ca(&dir);
    let token = dir.join("token");
    std::fs::write(&token, "unused").unwrap();
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let closed = GatewayProcess::start(
        &dir,
        "gw-closed",
        &manifests(&dir, 100, "closed"),
        &ca_key,
        &nobody,
        &token,
    );
    let (status, _, message) = closed.chat().await;
    assert_eq!(status, 503, "{message}");
    assert!(
        message.contains("quota authority cannot be reached"),
        "{message}"
    );
    closed.stop();

    let open = GatewayProcess::start(
        &dir,
        "gw-open",
        &manifests(&dir, 100, "open"),
        &ca_key,
        &nobody,
        &token,
    );
    assert_eq!(
        open.chat().await.0,
        200,
        "failMode open lets requests through"
    );
    open.stop();
}
