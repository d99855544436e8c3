//! The admin listener: `/live`, `/ready` and `/metrics`, on its own port so
//! probes never queue behind API traffic. Metric labels are bounded: endpoint,
//! provider (from config) and decision, never pod, user or model text.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tollgate_evidence::Decision;

use crate::proxy::Gateway;
use crate::receipts::ReceiptDraft;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    endpoint: &'static str,
    provider: String,
    decision: &'static str,
}

/// The gateway's metrics, registered once in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    spool_used_bytes: Gauge,
    receipts_written: Gauge,
    receipts_set_aside: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let spool_used_bytes = Gauge::default();
        let receipts_written = Gauge::default();
        let receipts_set_aside = Gauge::default();
        registry.register(
            "requests",
            "Requests by endpoint, provider and decision",
            requests.clone(),
        );
        registry.register(
            "spool_used_bytes",
            "Bytes in the receipt spool",
            spool_used_bytes.clone(),
        );
        registry.register(
            "receipts_written",
            "Receipts signed and written to the spool",
            receipts_written.clone(),
        );
        registry.register(
            "receipts_set_aside",
            "Receipts no open key certificate covered, set aside unsigned in the spool's unplaced/ (should stay 0)",
            receipts_set_aside.clone(),
        );
        Self {
            registry,
            requests,
            spool_used_bytes,
            receipts_written,
            receipts_set_aside,
        }
    }
}

impl Metrics {
    /// Counts a finished request.
    pub fn count(&self, draft: &ReceiptDraft) {
        let decision = match draft.decision {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Error => "error",
        };
        let labels = RequestLabels {
            endpoint: draft.endpoint.name(),
            provider: draft.provider.clone().unwrap_or_default(),
            decision,
        };
        self.requests.get_or_create(&labels).inc();
    }

    fn encode(&self, gateway: &Gateway) -> String {
        self.spool_used_bytes
            .set(i64::try_from(gateway.receipts().status.used_bytes()).unwrap_or(i64::MAX));
        self.receipts_written
            .set(i64::try_from(gateway.receipts().written()).unwrap_or(i64::MAX));
        self.receipts_set_aside
            .set(i64::try_from(gateway.receipts().status.set_aside()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The admin router.
pub fn router(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    let runtime = gateway.runtime();
    let status = &gateway.receipts().status;
    let problem = if runtime.policy.is_none() {
        Some("no EgressPolicy governs this pod")
    } else if status.writer_failed() {
        Some("the receipt writer failed")
    } else if status.certificate_expired() {
        Some("the receipt key certificate expired and could not be renewed")
    } else if !status.accepting() {
        Some("the receipt spool is full")
    } else {
        None
    };
    match problem {
        None => (
            StatusCode::OK,
            format!("ready: policy {}\n", runtime.config.policy_hash),
        )
            .into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    let body = gateway.metrics.encode(&gateway);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
