//! The webhook shell: serves `tollgate_admission` over HTTPS and registers the
//! webhook configurations.
//!
//! - [`cache`]: reflectors of Namespaces and EgressPolicies, answering
//!   `tollgate_admission::PolicyView`.
//! - [`router`]: one POST route per [`Webhook`] path; bodies over
//!   [`MAX_REVIEW_BYTES`] get 413, unparsable ones 400, and a review arriving
//!   before the caches have listed gets 503 (the API server then fails closed).
//! - [`audit`]: the continuous audit sweep.
//! - [`configuration`]: the Mutating and Validating webhook configurations.

pub mod audit;
pub mod cache;
pub mod configuration;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tollgate_admission::{InjectionSettings, PolicyView, Webhook};

use crate::cache::ClusterCache;
use cache::AdmissionCache;

/// The largest AdmissionReview accepted (the API server's own request limit
/// is 3 MiB; the review wraps the object twice on UPDATE).
pub const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// How long [`start`] waits for the caches before serving anyway (reviews
/// get 503 until they have listed).
pub const CACHE_WAIT: Duration = Duration::from_secs(30);

/// Settings of the webhook server.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub injection: InjectionSettings,
}

/// Label set with only the namespace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    pub namespace: String,
}

/// Labels of the review counter: bounded sets only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub webhook: &'static str,
    pub outcome: &'static str,
}

/// The webhooks' metrics. Register them with [`AdmissionMetrics::register`]
/// and pass them to [`start_with_metrics`].
#[derive(Debug, Clone)]
pub struct AdmissionMetrics {
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_seconds: Histogram,
    pub noncompliant_pods: Family<NamespaceLabel, Gauge>,
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        Self {
            reviews: Family::default(),
            review_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            noncompliant_pods: Family::default(),
        }
    }
}

impl AdmissionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tollgate_admission_reviews",
            "Admission reviews by webhook and outcome (allowed, patched, denied, error)",
            self.reviews.clone(),
        );
        registry.register(
            "tollgate_admission_review_seconds",
            "Time to answer one admission review, in the operator",
            self.review_seconds.clone(),
        );
        registry.register(
            "tollgate_admission_noncompliant_pods",
            "Pods the last audit sweep found breaking admission rules, by namespace",
            self.noncompliant_pods.clone(),
        );
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct WebhookState {
    pub view: Box<dyn SharedView>,
    pub settings: InjectionSettings,
    pub metrics: AdmissionMetrics,
}

/// A [`PolicyView`] that also says whether it can answer yet.
pub trait SharedView: PolicyView + Send + Sync + std::fmt::Debug {
    fn is_ready(&self) -> bool;
}

impl SharedView for AdmissionCache {
    fn is_ready(&self) -> bool {
        AdmissionCache::is_ready(self)
    }
}

impl SharedView for tollgate_admission::StaticPolicyView {
    fn is_ready(&self) -> bool {
        true
    }
}

/// Starts what the webhooks need beyond the shared cache (the audit sweep,
/// which runs while `leading` says this replica holds the Lease) and returns
/// the router serving the webhook paths, recording into `metrics`
/// (registered by the caller).
pub async fn start(
    client: kube::Client,
    cache: &ClusterCache,
    settings: WebhookSettings,
    metrics: AdmissionMetrics,
    leading: tokio::sync::watch::Receiver<bool>,
) -> Router {
    let view = AdmissionCache::of(cache);
    if !view.wait_ready(CACHE_WAIT).await {
        tracing::warn!("the caches have not listed yet; reviews get 503 until they do");
    }
    tokio::spawn(audit::run(
        client,
        view.clone(),
        settings.injection.clone(),
        metrics.clone(),
        audit::interval_from_env(),
        leading,
    ));
    router(Arc::new(WebhookState {
        view: Box::new(view),
        settings: settings.injection,
        metrics,
    }))
}

/// The webhook routes over any view (tests drive it with `oneshot`).
pub fn router(state: Arc<WebhookState>) -> Router {
    let mut router = Router::new();
    for webhook in Webhook::ALL {
        router = router.route(
            webhook.path(),
            post(move |State(state): State<Arc<WebhookState>>, body: Body| {
                handle(webhook, state, body)
            }),
        );
    }
    router.with_state(state)
}

fn webhook_label(webhook: Webhook) -> &'static str {
    match webhook {
        Webhook::MutatePods => "mutate-pods",
        Webhook::ValidatePods => "validate-pods",
        Webhook::ValidatePodsEphemeral => "validate-pods-ephemeral",
        Webhook::ValidatePodsConnect => "validate-pods-connect",
        Webhook::ValidateNamespaces => "validate-namespaces",
        Webhook::ValidateWorkloads => "validate-workloads",
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

async fn handle(webhook: Webhook, state: Arc<WebhookState>, body: Body) -> Response {
    let started = Instant::now();
    let count = |outcome: &'static str| {
        state
            .metrics
            .reviews
            .get_or_create(&ReviewLabels {
                webhook: webhook_label(webhook),
                outcome,
            })
            .inc();
    };
    let bytes = match axum::body::to_bytes(body, MAX_REVIEW_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            count("error");
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("AdmissionReview body is over the {MAX_REVIEW_BYTES}-byte limit"),
            );
        }
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&bytes) {
        Ok(review) => review,
        Err(e) => {
            count("error");
            return plain(
                StatusCode::BAD_REQUEST,
                format!("body is not an admission.k8s.io/v1 AdmissionReview: {e}"),
            );
        }
    };
    if !state.view.is_ready() {
        count("error");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the operator's namespace and policy caches have not synced yet".into(),
        );
    }
    let out = tollgate_admission::review(webhook, review, state.view.as_ref(), &state.settings);
    let outcome = match &out.response {
        Some(r) if !r.allowed => "denied",
        Some(r) if r.patch.is_some() => "patched",
        Some(_) => "allowed",
        None => "error",
    };
    if outcome == "denied" {
        let message = out.response.as_ref().map(|r| r.result.message.as_str());
        tracing::info!(
            webhook = webhook_label(webhook),
            message,
            "admission denied"
        );
    }
    count(outcome);
    state
        .metrics
        .review_seconds
        .observe(started.elapsed().as_secs_f64());
    axum::Json(out).into_response()
}

/// The Mutating and Validating webhook configurations for webhooks served at
/// `base_url` (paths appended), trusting `ca_bundle_pem`.
pub fn configurations(
    base_url: &str,
    ca_bundle_pem: &[u8],
    operator_namespace: &str,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    configuration::configurations(base_url, ca_bundle_pem, operator_namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use serde_json::{Value, json};
    use std::net::{IpAddr, Ipv4Addr};
    use tower::ServiceExt as _;

    fn state() -> Arc<WebhookState> {
        Arc::new(WebhookState {
            view: Box::new(tollgate_admission::StaticPolicyView {
                governed: vec!["team-a".into()],
                ..Default::default()
            }),
            settings: InjectionSettings {
                gateway_image: "tollgate/gateway:test".into(),
                operator_namespace: "tollgate-system".into(),
                control_url: "https://tollgate-operator.tollgate-system.svc:9443".into(),
                recorder_url: None,
                cluster_dns: vec![IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10))],
            },
            metrics: AdmissionMetrics::default(),
        })
    }

    fn review(operation: &str, object: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p", "namespace": "team-a", "operation": operation,
            "userInfo": {}, "object": object, "dryRun": false}})
    }

    async fn post(path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let response = router(state())
            .oneshot(
                Request::post(path)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    }

    #[tokio::test]
    async fn mutate_returns_a_patch_and_validate_denies_an_uninjected_pod() {
        let body = serde_json::to_vec(&review("CREATE", pod())).unwrap();
        let (status, out) = post("/mutate/pods", body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["response"]["uid"], json!("u1"));
        assert_eq!(out["response"]["allowed"], json!(true));
        assert_eq!(out["response"]["patchType"], json!("JSONPatch"));

        let (status, out) = post("/validate/pods", body).await;
        assert_eq!(status, StatusCode::OK);
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["response"]["allowed"], json!(false));
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("[gateway-missing]"), "{message}");
    }

    #[tokio::test]
    async fn oversized_and_malformed_bodies_get_clear_errors() {
        let (status, out) = post("/validate/pods", vec![b' '; MAX_REVIEW_BYTES + 1]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(String::from_utf8_lossy(&out).contains("limit"));
        let (status, out) = post("/validate/pods", b"{not json".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&out).contains("AdmissionReview"));
        let (status, _) = post("/validate/nothing", b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
