//! The admin listener: `/live`, `/startup`, `/ready` and `/metrics`, on its own
//! port so probes never queue behind API traffic. It is bound before anything
//! else, so a gateway still waiting for its config or its key certificate says
//! what it waits for (`/startup` 503 with the phase) instead of refusing
//! connections. Metric labels are bounded: endpoint, provider (from config) and
//! decision, never pod, user or request text; the GenAI metrics
//! ([`crate::genai_metrics`]) add model names the config lists.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
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

use crate::genai_metrics::{Conventions, GenAiMetrics};
use crate::proxy::Gateway;
use crate::receipts::ReceiptDraft;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    endpoint: &'static str,
    provider: String,
    decision: &'static str,
}

/// `bound`: which server bound refused the work.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BoundLabel {
    bound: &'static str,
}

/// `provider`, `state`: provider keys by health.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyStateLabels {
    provider: String,
    state: &'static str,
}

/// The gateway's metrics, registered once in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    spool_used_bytes: Gauge,
    receipts_written: Gauge,
    receipts_set_aside: Gauge,
    receipts_dropped: Gauge,
    receipts_queued: Gauge,
    overload_refusals: Family<BoundLabel, Gauge>,
    provider_keys: Family<KeyStateLabels, Gauge>,
    /// The data port's refusals at its bounds (`tollgate_wire::server`).
    pub overload: Arc<tollgate_wire::server::OverloadCounters>,
    /// The OpenTelemetry GenAI client metrics.
    pub genai: GenAiMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Conventions::V1_41)
    }
}

impl Metrics {
    /// Tollgate's own metrics (prefixed `tollgate_gateway_`), and the GenAI
    /// client metrics as `conventions` name them.
    pub fn new(conventions: Conventions) -> Self {
        let mut root = Registry::default();
        let genai = GenAiMetrics::register(&mut root, conventions);
        let registry = root.sub_registry_with_prefix("tollgate_gateway");
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
        let receipts_dropped = Gauge::default();
        registry.register(
            "receipts_dropped",
            "Receipts dropped because the spool's filesystem refused writes while 16 MiB of them waited in memory (failMode: open only; should stay 0)",
            receipts_dropped.clone(),
        );
        let receipts_queued = Gauge::default();
        registry.register(
            "receipts_queued",
            format!(
                "Records waiting for the spool writer; at {} new requests are refused until it catches up (failMode: closed)",
                crate::receipts::MAX_QUEUED_RECORDS
            ),
            receipts_queued.clone(),
        );
        let overload_refusals = Family::<BoundLabel, Gauge>::default();
        registry.register(
            "overload_refusals",
            "Work the data port refused at its bounds since start (503 with Retry-After), by bound: connections, requests_in_flight, write_stalls (connections closed because the client stopped reading)",
            overload_refusals.clone(),
        );
        let provider_keys = Family::<KeyStateLabels, Gauge>::default();
        registry.register(
            "provider_keys",
            "Provider keys by provider and health: healthy, or unhealthy (refused with 401/403, out of routing until a probe succeeds)",
            provider_keys.clone(),
        );
        Self {
            registry: root,
            genai,
            requests,
            spool_used_bytes,
            receipts_written,
            receipts_set_aside,
            receipts_dropped,
            receipts_queued,
            overload_refusals,
            provider_keys,
            overload: Arc::default(),
        }
    }

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
        self.receipts_dropped
            .set(i64::try_from(gateway.receipts().status.dropped()).unwrap_or(i64::MAX));
        self.receipts_queued
            .set(i64::try_from(gateway.receipts().status.queued()).unwrap_or(i64::MAX));
        for (bound, count) in self.overload.by_kind() {
            self.overload_refusals
                .get_or_create(&BoundLabel { bound })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        // Counted first, then set: concurrent scrapes set the same values.
        let runtime = gateway.runtime();
        let mut by_state: std::collections::BTreeMap<(String, &'static str), i64> =
            std::collections::BTreeMap::new();
        for key in runtime.key_health.snapshot(&runtime.key_counts()) {
            *by_state
                .entry((key.provider, key.state.as_str()))
                .or_default() += 1;
        }
        self.provider_keys.clear();
        for ((provider, state), count) in by_state {
            self.provider_keys
                .get_or_create(&KeyStateLabels { provider, state })
                .set(count);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What the admin endpoints answer from: the start-up phase until the gateway
/// has started, then the gateway.
#[derive(Debug, Default)]
pub struct AdminState {
    phase: Mutex<String>,
    gateway: OnceLock<Arc<Gateway>>,
}

impl AdminState {
    fn phase(&self) -> String {
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The admin listener, serving from the moment it is bound.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    state: Arc<AdminState>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` and serves the probes (bounded like every control port).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AdminState::default());
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(tollgate_wire::server::serve(
            listener,
            router(state.clone()),
            tollgate_wire::server::ServerLimits::CONTROL,
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            },
        ));
        let server = Self {
            addr,
            state,
            stop,
            task: Some(task),
        };
        server.starting("starting");
        Ok(server)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Records what start-up is doing now; `/startup` answers it with 503.
    pub fn starting(&self, phase: impl Into<String>) {
        *self
            .state
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = phase.into();
    }

    /// The gateway has started: `/startup` answers 200 from now on, and
    /// `/ready` and `/metrics` answer from `gateway`.
    pub fn started(&self, gateway: Arc<Gateway>) {
        let _ = self.state.gateway.set(gateway);
    }

    /// Stops serving and waits for open probe connections to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for AdminServer {
    /// A start-up that failed drops the server: the port closes with it.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> axum::Router {
    axum::Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/startup", get(startup))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/keys", get(keys))
        .with_state(state)
}

fn unavailable(text: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

/// 200 once the gateway has its config, its receipt key certificate and its
/// spool (for good: readiness may come and go later, start-up does not);
/// 503 with the phase before.
async fn startup(State(state): State<Arc<AdminState>>) -> Response {
    match state.gateway.get() {
        Some(gateway) => (
            StatusCode::OK,
            format!("started: policy {}\n", gateway.runtime().config.policy_hash),
        )
            .into_response(),
        None => unavailable(format!("starting: {}\n", state.phase())),
    }
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let Some(gateway) = state.gateway.get() else {
        return unavailable(format!("not ready: starting: {}\n", state.phase()));
    };
    let runtime = gateway.runtime();
    let status = &gateway.receipts().status;
    let problem = if runtime.policy.is_none() {
        Some("no EgressPolicy governs this pod")
    } else if status.writer_failed() {
        Some("the receipt writer failed")
    } else if status.unwritable() {
        Some(
            "the receipt spool's filesystem refuses writes (full?); receipts are kept in memory and written once it takes them",
        )
    } else if status.certificate_expired() {
        Some("the receipt key certificate expired and could not be renewed")
    } else if status.queued() >= crate::receipts::MAX_QUEUED_RECORDS {
        Some("the receipt writer is behind: too many records wait for it")
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
        Some(why) => unavailable(format!("not ready: {why}\n")),
    }
}

/// Each provider key's health, by index (never the key): what
/// `kubectl tollgate doctor --gateway-admin` reads.
async fn keys(State(state): State<Arc<AdminState>>) -> Response {
    let Some(gateway) = state.gateway.get() else {
        return unavailable(format!("starting: {}\n", state.phase()));
    };
    let runtime = gateway.runtime();
    axum::Json(serde_json::json!({
        "keys": runtime.key_health.snapshot(&runtime.key_counts())
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let Some(gateway) = state.gateway.get() else {
        return unavailable(format!("starting: {}\n", state.phase()));
    };
    let body = gateway.metrics.encode(gateway);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
