#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Real `tollgate-gateway` processes sharing one quota through a real
//! recorder's lease API: no over-grant across gateways, returned leases free
//! their rest, denials are 429 with Retry-After, and an unreachable authority
//! follows the quota's failMode.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{GatewayProcess, RecorderProcess, local_ca, quota_config};
use tollgate_wire::client::{HttpClient, public_roots};

const CA_SEED: &str = "gateway-leases-test-ca";

fn client() -> HttpClient {
    HttpClient::new(public_roots().unwrap(), Duration::from_secs(20))
}

fn manifests(dir: &Path, requests: u64, fail_mode: &str) -> PathBuf {
    quota_config(dir, "shared", requests, fail_mode)
}

/// Sends one chat request to `gateway`; returns (status, Retry-After, error message).
async fn chat(gateway: &GatewayProcess) -> (u16, Option<u64>, String) {
    let body = serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let r = client()
        .send(
            http::Method::POST,
            &format!("http://{}/v1/chat/completions", gateway.api),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_share_one_recorder_quota_without_over_granting() {
    let dir = common::temp_dir("gateway-leases");
    let (ca_key, anchor) = local_ca(&dir, CA_SEED);
    let config = manifests(&dir, 5, "closed");
    let data = dir.join("data");
    let rec = RecorderProcess::start(&data, &["--trust-anchor", anchor.to_str().unwrap()]);
    let token = data.join("local-token");

    let a = GatewayProcess::start(&dir, "gw-a", &config, &ca_key, &rec.url, &token);
    let b = GatewayProcess::start(&dir, "gw-b", &config, &ca_key, &rec.url, &token);
    let mut allowed = 0;
    for _ in 0..3 {
        let (status, _, _) = chat(&a).await;
        assert_eq!(status, 200);
        allowed += 1;
    }
    // A holds the whole remaining budget in its lease: B is denied, never over-granted.
    let (status, retry_after, message) = chat(&b).await;
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
        statuses.push(chat(&b).await.0);
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
    let (ca_key, _) = local_ca(&dir, CA_SEED);
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
    let (status, _, message) = chat(&closed).await;
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
        chat(&open).await.0,
        200,
        "failMode open lets requests through"
    );
    open.stop();
}

/// An authority that accepts connections and never answers (a recorder whose
/// packets are dropped): the one request whose lease call waits for it waits
/// out the call's timeout (5 s); the requests behind it get their failMode
/// after a second instead of queueing behind it. Stopping does not wait for
/// the shipper's call to it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_authority_costs_waiting_requests_a_second_not_the_call_timeout() {
    let dir = common::temp_dir("gateway-leases-silent");
    let (ca_key, _) = local_ca(&dir, CA_SEED);
    let token = dir.join("token");
    std::fs::write(&token, "unused").unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let closed = GatewayProcess::start(
        &dir,
        "gw-silent",
        &manifests(&dir, 100, "closed"),
        &ca_key,
        &url,
        &token,
    );
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let gateway = &closed;
            async move {
                let answer = chat(gateway).await;
                (answer, started.elapsed())
            }
        })
        .collect();
    let answers = futures::future::join_all(calls).await;
    for ((status, _, message), _) in &answers {
        assert_eq!(*status, 503, "{message}");
        assert!(
            message.contains("quota authority cannot be reached"),
            "{message}"
        );
    }
    let quick = answers
        .iter()
        .filter(|(_, took)| *took < Duration::from_secs(4))
        .count();
    assert!(
        quick >= 4,
        "the requests behind the waiting lease call must not wait for its 5 s timeout: {:?}",
        answers.iter().map(|(_, took)| took).collect::<Vec<_>>()
    );
    // Its shipper waits on the same silent recorder: stopping abandons that
    // call, so the pod stops inside Kubernetes' default 30 s grace period.
    let stopping = std::time::Instant::now();
    closed.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(25),
        "stopping took {:?}",
        stopping.elapsed()
    );
}
