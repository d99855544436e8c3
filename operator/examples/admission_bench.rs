//! Server-side admission latency: 100 concurrent reviews against the webhook
//! router in process (no TLS, no API server), a mix of pod injection, pod
//! validation and Deployment validation. Prints p50/p99/max per webhook.
//!
//! `cargo run -p tollgate-operator --example admission_bench [--release]`

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use tollgate_admission::{InjectionSettings, StaticPolicyView};
use tollgate_operator::webhooks::{AdmissionMetrics, WebhookState, router};
use tower::ServiceExt as _;

const CONCURRENCY: usize = 100;
const REVIEWS_PER_TASK: usize = 50;

fn settings() -> InjectionSettings {
    InjectionSettings {
        gateway_image: "tollgate/gateway:bench".into(),
        operator_namespace: "tollgate-system".into(),
        control_url: "https://tollgate-operator.tollgate-system.svc:9443".into(),
        recorder_url: Some("https://tollgate-recorder.tollgate-system.svc:8443".into()),
        cluster_dns: vec![IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10))],
    }
}

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "team-a", "labels": {"app": "chat"}},
        "spec": {"containers": [
            {"name": "app", "image": "example/app:1", "env": [{"name": "LOG_LEVEL", "value": "info"}]},
            {"name": "worker", "image": "example/worker:1"}]}})
}

fn review(kind: (&str, &str), resource: &str, object: Value) -> Vec<u8> {
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "bench", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
        "resource": {"group": kind.0, "version": "v1", "resource": resource},
        "name": "app", "namespace": "team-a", "operation": "CREATE", "userInfo": {},
        "object": object, "dryRun": false}});
    serde_json::to_vec(&body).unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    let settings = settings();
    let view = StaticPolicyView {
        governed: vec!["team-a".into()],
        ..Default::default()
    };
    let injected = {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod())?;
        let ns = tollgate_admission::NamespaceView::from_view(&view, "team-a");
        serde_json::to_value(tollgate_admission::inject(&p, &ns, &settings)?.pod)?
    };
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app", "namespace": "team-a"},
        "spec": {"selector": {"matchLabels": {"app": "chat"}},
            "template": {"metadata": pod()["metadata"].clone(), "spec": pod()["spec"].clone()}}});
    let cases: Arc<Vec<(&'static str, Vec<u8>)>> = Arc::new(vec![
        ("/mutate/pods", review(("", "Pod"), "pods", pod())),
        ("/validate/pods", review(("", "Pod"), "pods", injected)),
        (
            "/validate/workloads",
            review(("apps", "Deployment"), "deployments", deployment),
        ),
    ]);
    let app = router(Arc::new(WebhookState {
        view: Box::new(view),
        settings,
        metrics: AdmissionMetrics::default(),
    }));

    // Warm up.
    for (path, body) in cases.iter() {
        let response = app
            .clone()
            .oneshot(Request::post(*path).body(Body::from(body.clone()))?)
            .await?;
        ensure!(response.status() == 200, "{path}: {}", response.status());
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY {
        let app = app.clone();
        let cases = cases.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples: Vec<(usize, Duration)> = Vec::with_capacity(REVIEWS_PER_TASK);
            for i in 0..REVIEWS_PER_TASK {
                let which = (task + i) % cases.len();
                let (path, body) = &cases[which];
                let t0 = Instant::now();
                let request = Request::post(*path).body(Body::from(body.clone()))?;
                let response = app.clone().oneshot(request).await?;
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
                samples.push((which, t0.elapsed()));
                ensure!(!bytes.is_empty(), "empty response");
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut per_case: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for task in tasks {
        for (which, d) in task.await.context("a bench task panicked")?? {
            per_case[which].push(d);
        }
    }
    let elapsed = started.elapsed();
    let mut out = std::io::stdout().lock();
    let total: usize = per_case.iter().map(Vec::len).sum();
    writeln!(
        out,
        "{total} reviews, {CONCURRENCY} concurrent, {:.0} reviews/s",
        total as f64 / elapsed.as_secs_f64()
    )?;
    let mut all = Vec::new();
    for ((path, _), samples) in cases.iter().zip(per_case.iter_mut()) {
        samples.sort();
        all.extend(samples.iter().copied());
        writeln!(
            out,
            "{path:<22} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
            percentile(samples, 0.50).as_secs_f64() * 1e3,
            percentile(samples, 0.99).as_secs_f64() * 1e3,
            samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        )?;
    }
    all.sort();
    writeln!(
        out,
        "{:<22} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        "all",
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    )?;
    Ok(())
}
