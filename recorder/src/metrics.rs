//! The recorder's metrics, in one prometheus-client registry passed down
//! explicitly. Labels are bounded: rejection reasons and fault kinds are closed
//! enums, routes are the fixed API paths, sinks are at most 8 configured names;
//! nothing per user, pod or stream.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `result`: accepted, duplicate or rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: &'static str,
}

/// `reason`: a rejection reason code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: &'static str,
}

/// `kind`: a chain fault kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: &'static str,
}

/// `route` and `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route template.
    pub route: &'static str,
    /// The status class (`2xx`, `4xx`, `5xx`).
    pub status: &'static str,
}

/// `sink` and `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// The sink's configured name.
    pub sink: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// `decision`: granted, denied or shadow_denied.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// The decision.
    pub decision: &'static str,
}

/// Every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Envelopes by outcome.
    pub envelopes: Family<ResultLabel, Counter>,
    /// Rejections by reason.
    pub rejections: Family<ReasonLabel, Counter>,
    /// Chain faults flagged, by kind.
    pub chain_faults: Family<KindLabel, Counter>,
    /// Segments sealed.
    pub segments_sealed: Counter,
    /// Envelopes in the open segment.
    pub open_segment_envelopes: Gauge,
    /// Envelopes in the log.
    pub log_size: Gauge,
    /// HTTP responses.
    pub http: Family<RouteLabels, Counter>,
    /// Checkpoint sink deliveries.
    pub sinks: Family<SinkLabels, Counter>,
    /// Lease decisions.
    pub leases: Family<DecisionLabel, Counter>,
    /// Work the server refused at its bounds (`tollgate_wire::server`), read
    /// into `overload_refusals` at each scrape.
    pub overload: std::sync::Arc<tollgate_wire::server::OverloadCounters>,
    overload_refusals: Family<KindLabel, Gauge>,
    /// Sealed segments retention deleted.
    pub segments_pruned: Counter,
    /// Sealed segments past retention that wait for a sink to hold a checkpoint
    /// covering them.
    pub segments_awaiting_sink: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_recorder");
        let envelopes = Family::<ResultLabel, Counter>::default();
        let rejections = Family::<ReasonLabel, Counter>::default();
        let chain_faults = Family::<KindLabel, Counter>::default();
        let segments_sealed = Counter::default();
        let open_segment_envelopes = Gauge::default();
        let log_size = Gauge::default();
        let http = Family::<RouteLabels, Counter>::default();
        let sinks = Family::<SinkLabels, Counter>::default();
        let leases = Family::<DecisionLabel, Counter>::default();
        let segments_pruned = Counter::default();
        let segments_awaiting_sink = Gauge::default();
        registry.register(
            "envelopes",
            "Envelopes received, by result",
            envelopes.clone(),
        );
        registry.register(
            "rejections",
            "Envelopes rejected, by reason",
            rejections.clone(),
        );
        registry.register(
            "chain_faults",
            "Gaps and broken chains flagged, by kind",
            chain_faults.clone(),
        );
        registry.register(
            "segments_sealed",
            "Segments sealed",
            segments_sealed.clone(),
        );
        registry.register(
            "open_segment_envelopes",
            "Envelopes in the open segment",
            open_segment_envelopes.clone(),
        );
        registry.register("log_size", "Envelopes in the log", log_size.clone());
        registry.register("http_responses", "HTTP responses", http.clone());
        registry.register(
            "checkpoint_sink_deliveries",
            "Checkpoint deliveries to sinks",
            sinks.clone(),
        );
        registry.register("lease_decisions", "Quota lease decisions", leases.clone());
        registry.register(
            "segments_pruned",
            "Sealed segments whose envelopes retention deleted",
            segments_pruned.clone(),
        );
        registry.register(
            "segments_awaiting_sink",
            "Sealed segments past retention kept until a checkpoint sink holds a checkpoint covering them",
            segments_awaiting_sink.clone(),
        );
        let overload_refusals = Family::<KindLabel, Gauge>::default();
        registry.register(
            "overload_refusals",
            "Work the server refused at its bounds since start (503 with Retry-After), by kind: connections, requests_in_flight, write_stalls (connections closed because the client stopped reading)",
            overload_refusals.clone(),
        );
        Self {
            overload: std::sync::Arc::default(),
            overload_refusals,
            registry,
            envelopes,
            rejections,
            chain_faults,
            segments_sealed,
            open_segment_envelopes,
            log_size,
            http,
            sinks,
            leases,
            segments_pruned,
            segments_awaiting_sink,
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        for (kind, count) in self.overload.by_kind() {
            self.overload_refusals
                .get_or_create(&KindLabel { kind })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
