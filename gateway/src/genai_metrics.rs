//! The OpenTelemetry GenAI client metrics, in Prometheus exposition on the
//! admin port's `/metrics`, so the dashboards written for those conventions
//! read a Tollgate gateway as they read any instrumented client.
//!
//! Two versions of the conventions, picked once at start from
//! `OTEL_SEMCONV_STABILITY_OPT_IN` (see [`Conventions`]):
//!
//! - **v1.41** (the default): `gen_ai.client.token.usage` (histogram, by
//!   `gen_ai.token.type`), `gen_ai.client.operation.duration`,
//!   `gen_ai.client.operation.time_to_first_chunk` and
//!   `gen_ai.client.operation.time_per_output_chunk`;
//! - **latest experimental** (`gen_ai_latest_experimental`): the same timings
//!   renamed `gen_ai.client.inference.*`, token counters
//!   `gen_ai.client.inference.usage.{input,output,cache_read.input}_tokens`
//!   (by `gen_ai.token.modality`) and the token histograms
//!   `gen_ai.client.inference.operation.{input,output}_tokens`. The v1.41 names
//!   are then not emitted, as the opt-in asks.
//!
//! Every label value comes from a bounded set: the operation and provider
//! names are fixed strings, `gen_ai.request.model` is a model name or alias
//! the config lists (anything else is `_OTHER`), `server.address` and
//! `server.port` come from the provider's base URL, and `error.type` is the
//! receipt's reason code. Pods, callers, request ids and any text of a
//! request or response never become labels.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tollgate_evidence::Decision;
use tollgate_wire::config::{GatewayConfig, ProviderApi};

use crate::api::{ApiStyle, Endpoint};
use crate::receipts::ReceiptDraft;

/// The environment variable the OpenTelemetry conventions name for opting in
/// to newer, unstable versions.
pub const OPT_IN_ENV: &str = "OTEL_SEMCONV_STABILITY_OPT_IN";

/// The value in [`OPT_IN_ENV`] that selects the latest GenAI conventions.
pub const LATEST_EXPERIMENTAL: &str = "gen_ai_latest_experimental";

/// The label value for a model the config does not list.
pub const OTHER: &str = "_OTHER";

/// Bucket boundaries the conventions give for token counts.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Bucket boundaries the conventions give for durations, in seconds.
const SECONDS_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Which version of the GenAI conventions the metrics follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conventions {
    /// Semantic conventions v1.41 (the default).
    V1_41,
    /// The latest experimental GenAI conventions.
    LatestExperimental,
}

impl Conventions {
    /// From the value of [`OPT_IN_ENV`]: a comma-separated list that selects
    /// the latest conventions when it holds [`LATEST_EXPERIMENTAL`].
    pub fn from_opt_in(value: Option<&str>) -> Self {
        let latest = value.is_some_and(|v| v.split(',').any(|p| p.trim() == LATEST_EXPERIMENTAL));
        if latest {
            Self::LatestExperimental
        } else {
            Self::V1_41
        }
    }

    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_opt_in(std::env::var(OPT_IN_ENV).ok().as_deref())
    }
}

/// What the config says about label values: which model names may become
/// labels, and each provider's convention name and server address.
#[derive(Debug, Clone, Default)]
pub struct MetricCatalog {
    models: HashSet<String>,
    providers: HashMap<String, ProviderLabels>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProviderLabels {
    name: &'static str,
    server: Option<(String, u16)>,
}

impl MetricCatalog {
    /// The catalog for `config`: every model name and alias, bare and with
    /// its `provider:` prefix, and each provider's base URL host and port.
    pub fn new(config: &GatewayConfig) -> Self {
        let mut models = HashSet::new();
        let mut providers = HashMap::new();
        for provider in &config.providers {
            for model in &provider.models {
                for name in std::iter::once(&model.name).chain(&model.aliases) {
                    models.insert(name.clone());
                    models.insert(format!("{}:{name}", provider.name));
                }
            }
            let server = provider
                .base_url
                .as_deref()
                .and_then(|url| url.parse::<http::Uri>().ok())
                .and_then(|uri| {
                    let host = uri.host()?.to_string();
                    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                        Some("http") => 80,
                        _ => 443,
                    });
                    Some((host, port))
                });
            providers.insert(
                provider.name.clone(),
                ProviderLabels {
                    name: provider_name(provider.api),
                    server: server.filter(|_| provider.api != ProviderApi::DryRun),
                },
            );
        }
        Self { models, providers }
    }

    /// The requested model as a label value: itself when the config lists
    /// it, else [`OTHER`].
    fn model_label(&self, requested: Option<&str>) -> Option<String> {
        let requested = requested?;
        Some(if self.models.contains(requested) {
            requested.to_string()
        } else {
            OTHER.to_string()
        })
    }
}

/// The convention's name for a provider API. The dry-run provider is no
/// provider the conventions know; it gets a name of its own.
fn provider_name(api: ProviderApi) -> &'static str {
    match api {
        ProviderApi::Openai => "openai",
        ProviderApi::Anthropic => "anthropic",
        ProviderApi::AzureOpenai => "azure.ai.openai",
        ProviderApi::Gemini => "gcp.gemini",
        ProviderApi::Bedrock => "aws.bedrock",
        ProviderApi::Vertex => "gcp.vertex_ai",
        ProviderApi::DryRun => "tollgate.dry_run",
    }
}

/// The convention's operation name for an endpoint; `None` for endpoints
/// that are no inference (listing models, counting tokens).
fn operation_name(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Messages
        | Endpoint::Responses
        | Endpoint::GenerateContent
        | Endpoint::StreamGenerateContent
        | Endpoint::Converse
        | Endpoint::ConverseStream
        | Endpoint::InvokeModel
        | Endpoint::InvokeModelStream => Some("chat"),
        Endpoint::Completions => Some("text_completion"),
        Endpoint::Embeddings | Endpoint::EmbedContent | Endpoint::BatchEmbedContents => {
            Some("embeddings")
        }
        Endpoint::Models
        | Endpoint::CountTokens
        | Endpoint::GeminiCountTokens
        | Endpoint::BedrockCountTokens => None,
    }
}

/// The labels every GenAI metric carries.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct OperationLabels {
    operation: &'static str,
    provider: &'static str,
    model: Option<String>,
    server: Option<(String, u16)>,
}

impl OperationLabels {
    /// The labels for a request on `endpoint` to `provider` (a config name;
    /// `None` before one was picked) for `requested`. `None` for endpoints
    /// that are no inference.
    pub fn new(
        catalog: &MetricCatalog,
        endpoint: Endpoint,
        provider: Option<&str>,
        requested: Option<&str>,
    ) -> Option<Self> {
        let operation = operation_name(endpoint)?;
        let known = provider.and_then(|p| catalog.providers.get(p));
        let provider = match known {
            Some(p) => p.name,
            // Refused before a provider was picked: the API the client spoke.
            None => match endpoint.style() {
                ApiStyle::OpenAi => "openai",
                ApiStyle::Anthropic => "anthropic",
                ApiStyle::Gemini => "gcp.gemini",
                ApiStyle::Bedrock => "aws.bedrock",
            },
        };
        Some(Self {
            operation,
            provider,
            model: catalog.model_label(requested),
            server: known.and_then(|p| p.server.clone()),
        })
    }

    fn encode_into(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel as _;
        ("gen_ai_operation_name", self.operation).encode(encoder.encode_label())?;
        ("gen_ai_provider_name", self.provider).encode(encoder.encode_label())?;
        if let Some(model) = &self.model {
            ("gen_ai_request_model", model.as_str()).encode(encoder.encode_label())?;
        }
        if let Some((address, port)) = &self.server {
            ("server_address", address.as_str()).encode(encoder.encode_label())?;
            ("server_port", u64::from(*port)).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl EncodeLabelSet for OperationLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.encode_into(encoder)
    }
}

/// [`OperationLabels`] and `gen_ai.token.type`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct TokenTypeLabels {
    operation: OperationLabels,
    token_type: &'static str,
}

impl EncodeLabelSet for TokenTypeLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel as _;
        self.operation.encode_into(encoder)?;
        ("gen_ai_token_type", self.token_type).encode(encoder.encode_label())
    }
}

/// [`OperationLabels`] and `gen_ai.token.modality`. Tollgate does not split
/// counts by modality, so it is always `unknown`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct ModalityLabels {
    operation: OperationLabels,
}

impl EncodeLabelSet for ModalityLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel as _;
        self.operation.encode_into(encoder)?;
        ("gen_ai_token_modality", "unknown").encode(encoder.encode_label())
    }
}

/// [`OperationLabels`] and `error.type` when the operation failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct OutcomeLabels {
    operation: OperationLabels,
    error_type: Option<&'static str>,
}

impl EncodeLabelSet for OutcomeLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel as _;
        self.operation.encode_into(encoder)?;
        if let Some(error_type) = self.error_type {
            ("error_type", error_type).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Makes histograms with one fixed set of bucket boundaries.
#[derive(Debug, Clone, Copy)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Histograms<L> = Family<L, Histogram, Buckets>;

/// A finished operation, as the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    labels: OperationLabels,
    /// The receipt's reason code when the operation failed.
    error_type: Option<&'static str>,
    duration: Duration,
    usage: Option<BillableTokens>,
}

/// Token counts as billed: input including cache reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BillableTokens {
    input: u64,
    /// `None` where the operation has no output tokens (embeddings).
    output: Option<u64>,
    cache_read: u64,
}

impl Outcome {
    /// What the metrics record for a finished request: `None` for endpoints
    /// that are no inference, and for an attempt given up for the next
    /// provider (the call's own receipt follows it, and is what counts: one
    /// call, one operation, as usage counts it). `duration` is the time from
    /// the request's arrival to its last byte out (the draft keeps whole
    /// milliseconds).
    pub fn of(draft: &ReceiptDraft, catalog: &MetricCatalog, duration: Duration) -> Option<Self> {
        if draft
            .reason
            .starts_with(tollgate_evidence::FAILED_OVER_REASON_PREFIX)
        {
            return None;
        }
        let labels = OperationLabels::new(
            catalog,
            draft.endpoint,
            draft.provider.as_deref(),
            draft.model_requested.as_deref(),
        )?;
        let failed = draft.decision != Decision::Allow || draft.reason != "allowed";
        let usage = draft.usage.map(|u| BillableTokens {
            input: u.input,
            output: (!draft.endpoint.embeds()).then_some(u.output),
            cache_read: u.cached,
        });
        Some(Self {
            labels,
            error_type: failed.then_some(draft.reason),
            duration,
            usage,
        })
    }
}

/// The GenAI metric families, registered in the gateway's registry.
#[derive(Debug)]
pub struct GenAiMetrics {
    conventions: Conventions,
    duration: Histograms<OutcomeLabels>,
    time_to_first_chunk: Histograms<OperationLabels>,
    time_per_output_chunk: Histograms<OperationLabels>,
    /// v1.41: tokens per operation by type.
    token_usage: Histograms<TokenTypeLabels>,
    /// Latest: token counters and per-operation token histograms.
    input_tokens: Family<ModalityLabels, Counter>,
    output_tokens: Family<ModalityLabels, Counter>,
    cache_read_tokens: Family<ModalityLabels, Counter>,
    operation_input_tokens: Histograms<OutcomeLabels>,
    operation_output_tokens: Histograms<OutcomeLabels>,
}

impl GenAiMetrics {
    /// Registers the families `conventions` names in `registry` (which must
    /// have no prefix: these names are the conventions').
    pub fn register(registry: &mut Registry, conventions: Conventions) -> Self {
        fn seconds<L: Clone + Eq + std::hash::Hash>() -> Histograms<L> {
            Family::new_with_constructor(Buckets(&SECONDS_BUCKETS))
        }
        fn tokens<L: Clone + Eq + std::hash::Hash>() -> Histograms<L> {
            Family::new_with_constructor(Buckets(&TOKEN_BUCKETS))
        }
        let metrics = Self {
            conventions,
            duration: seconds(),
            time_to_first_chunk: seconds(),
            time_per_output_chunk: seconds(),
            token_usage: tokens(),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            cache_read_tokens: Family::default(),
            operation_input_tokens: tokens(),
            operation_output_tokens: tokens(),
        };
        let timings = match conventions {
            Conventions::V1_41 => "gen_ai_client_operation",
            Conventions::LatestExperimental => "gen_ai_client_inference",
        };
        let duration_name = match conventions {
            Conventions::V1_41 => "gen_ai_client_operation_duration",
            Conventions::LatestExperimental => "gen_ai_client_inference_duration",
        };
        registry.register_with_unit(
            duration_name,
            "GenAI operation duration, from the request's arrival at the gateway to its last byte out",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register_with_unit(
            format!("{timings}_time_to_first_chunk"),
            "Time from the request's arrival to the first chunk of a streamed answer",
            Unit::Seconds,
            metrics.time_to_first_chunk.clone(),
        );
        registry.register_with_unit(
            format!("{timings}_time_per_output_chunk"),
            "Time from one chunk of a streamed answer to the next (chunks read together count 0)",
            Unit::Seconds,
            metrics.time_per_output_chunk.clone(),
        );
        match conventions {
            Conventions::V1_41 => registry.register(
                "gen_ai_client_token_usage",
                "Input and output tokens per operation, as billed (input includes cache reads)",
                metrics.token_usage.clone(),
            ),
            Conventions::LatestExperimental => {
                registry.register(
                    "gen_ai_client_inference_usage_input_tokens",
                    "Input tokens, as billed (includes cache reads); 0 when the provider reported none",
                    metrics.input_tokens.clone(),
                );
                registry.register(
                    "gen_ai_client_inference_usage_output_tokens",
                    "Output tokens; 0 when the provider reported none",
                    metrics.output_tokens.clone(),
                );
                registry.register(
                    "gen_ai_client_inference_usage_cache_read_input_tokens",
                    "Input tokens read from the provider's prompt cache",
                    metrics.cache_read_tokens.clone(),
                );
                registry.register(
                    "gen_ai_client_inference_operation_input_tokens",
                    "Input tokens per operation, as billed",
                    metrics.operation_input_tokens.clone(),
                );
                registry.register(
                    "gen_ai_client_inference_operation_output_tokens",
                    "Output tokens per operation",
                    metrics.operation_output_tokens.clone(),
                );
            }
        }
        metrics
    }

    /// Records a finished operation.
    pub fn record(&self, outcome: &Outcome) {
        let outcome_labels = OutcomeLabels {
            operation: outcome.labels.clone(),
            error_type: outcome.error_type,
        };
        self.duration
            .get_or_create(&outcome_labels)
            .observe(outcome.duration.as_secs_f64());
        match self.conventions {
            Conventions::V1_41 => {
                // Only counts the provider reported: the conventions forbid
                // guessing.
                let Some(usage) = outcome.usage else { return };
                let by_type = |token_type| TokenTypeLabels {
                    operation: outcome.labels.clone(),
                    token_type,
                };
                self.token_usage
                    .get_or_create(&by_type("input"))
                    .observe(usage.input as f64);
                if let Some(output) = usage.output {
                    self.token_usage
                        .get_or_create(&by_type("output"))
                        .observe(output as f64);
                }
            }
            Conventions::LatestExperimental => {
                // Every operation counts, failed ones included: 0 when the
                // provider reported no usage.
                let labels = ModalityLabels {
                    operation: outcome.labels.clone(),
                };
                let usage = outcome.usage.unwrap_or(BillableTokens {
                    input: 0,
                    output: Some(0),
                    cache_read: 0,
                });
                self.input_tokens.get_or_create(&labels).inc_by(usage.input);
                self.cache_read_tokens
                    .get_or_create(&labels)
                    .inc_by(usage.cache_read);
                if let Some(output) = usage.output {
                    self.output_tokens.get_or_create(&labels).inc_by(output);
                }
                if let Some(usage) = outcome.usage {
                    self.operation_input_tokens
                        .get_or_create(&outcome_labels)
                        .observe(usage.input as f64);
                    if let Some(output) = usage.output {
                        self.operation_output_tokens
                            .get_or_create(&outcome_labels)
                            .observe(output as f64);
                    }
                }
            }
        }
    }

    /// A clock for one streamed answer's chunks, started when the request
    /// arrived.
    pub fn chunk_clock(&self, labels: &OperationLabels, started: Instant) -> ChunkClock {
        ChunkClock {
            started,
            last: None,
            first: self.time_to_first_chunk.get_or_create(labels).clone(),
            next: self.time_per_output_chunk.get_or_create(labels).clone(),
        }
    }
}

/// Times the chunks of one streamed answer (an SSE event with data is a
/// chunk). Holds its two histograms, so a chunk costs one observation, no
/// label lookup.
#[derive(Debug)]
pub struct ChunkClock {
    started: Instant,
    last: Option<Instant>,
    first: Histogram,
    next: Histogram,
}

impl ChunkClock {
    /// `chunks` chunks were read at `now`. The first chunk of the stream
    /// records the time to first chunk; every later one the time since the
    /// chunk before it (0 for chunks read together).
    pub fn chunks_read(&mut self, chunks: u64, now: Instant) {
        if chunks == 0 {
            return;
        }
        let mut together = chunks;
        match self.last {
            None => {
                self.first
                    .observe(now.saturating_duration_since(self.started).as_secs_f64());
                together -= 1;
            }
            Some(last) => {
                self.next
                    .observe(now.saturating_duration_since(last).as_secs_f64());
                together -= 1;
            }
        }
        for _ in 0..together {
            self.next.observe(0.0);
        }
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_wire::config::{CompiledModel, CompiledProvider, PriceTable};

    fn config() -> GatewayConfig {
        let model = |name: &str, aliases: &[&str]| CompiledModel {
            deployment: None,
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            pricing: PriceTable::default(),
        };
        let provider = |name: &str, api: ProviderApi, url: Option<&str>, models| CompiledProvider {
            azure_api_version: None,
            aws_region: None,
            web_identity: None,
            vertex: None,
            google_identity: None,
            entra_identity: None,
            name: name.into(),
            api,
            base_url: url.map(str::to_string),
            hosts: vec![],
            credentials: None,
            models,
            upstream_trust: vec![],
            connect_timeout_ms: 1,
            first_byte_timeout_ms: 1,
            idle_timeout_ms: 1,
        };
        GatewayConfig {
            version: tollgate_wire::config::GATEWAY_CONFIG_VERSION,
            namespace: "ns".into(),
            policy_hash: String::new(),
            policies: vec![],
            quotas: vec![],
            providers: vec![
                provider(
                    "openai-prod",
                    ProviderApi::Openai,
                    Some("https://api.openai.example/v1"),
                    vec![model("gpt-4o-mini", &["mini"])],
                ),
                provider(
                    "local",
                    ProviderApi::Openai,
                    Some("http://127.0.0.1:8080"),
                    vec![model("llama", &[])],
                ),
                provider("dry", ProviderApi::DryRun, None, vec![model("any", &[])]),
            ],
        }
    }

    fn encode(conventions: Conventions, record: impl FnOnce(&GenAiMetrics)) -> String {
        let mut registry = Registry::default();
        let metrics = GenAiMetrics::register(&mut registry, conventions);
        record(&metrics);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .unwrap_or_else(|e| panic!("encode: {e}"));
        out
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn opt_in_is_a_comma_list() {
        assert_eq!(Conventions::from_opt_in(None), Conventions::V1_41);
        assert_eq!(
            Conventions::from_opt_in(Some("http, gen_ai_latest_experimental")),
            Conventions::LatestExperimental
        );
        assert_eq!(
            Conventions::from_opt_in(Some("gen_ai_latest_experimental_x")),
            Conventions::V1_41
        );
    }

    #[test]
    fn only_listed_models_become_labels() {
        let catalog = MetricCatalog::new(&config());
        let label = |m: &str| {
            OperationLabels::new(
                &catalog,
                Endpoint::ChatCompletions,
                Some("openai-prod"),
                Some(m),
            )
            .and_then(|l| l.model)
        };
        assert_eq!(label("gpt-4o-mini").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(label("mini").as_deref(), Some("mini"));
        assert_eq!(
            label("openai-prod:gpt-4o-mini").as_deref(),
            Some("openai-prod:gpt-4o-mini")
        );
        assert_eq!(label("gpt-4o-mini-2024-07-18").as_deref(), Some(OTHER));
        assert_eq!(label("other:gpt-4o-mini").as_deref(), Some(OTHER));
    }

    #[test]
    fn servers_come_from_base_urls_and_no_inference_has_no_labels() {
        let catalog = MetricCatalog::new(&config());
        let server = |p: &str| {
            OperationLabels::new(&catalog, Endpoint::ChatCompletions, Some(p), None)
                .and_then(|l| l.server)
        };
        assert_eq!(
            server("openai-prod"),
            Some(("api.openai.example".into(), 443))
        );
        assert_eq!(server("local"), Some(("127.0.0.1".into(), 8080)));
        assert_eq!(server("dry"), None);
        // Refused before a provider was picked: the style's provider, no server.
        let refused = OperationLabels::new(&catalog, Endpoint::Messages, None, Some("x"))
            .unwrap_or_else(|| panic!("messages is an inference"));
        assert_eq!((refused.provider, refused.server), ("anthropic", None));
        assert!(OperationLabels::new(&catalog, Endpoint::Models, None, None).is_none());
        assert!(OperationLabels::new(&catalog, Endpoint::CountTokens, None, None).is_none());
    }

    fn outcome(usage: Option<BillableTokens>, error_type: Option<&'static str>) -> Outcome {
        let catalog = MetricCatalog::new(&config());
        Outcome {
            labels: OperationLabels::new(
                &catalog,
                Endpoint::ChatCompletions,
                Some("openai-prod"),
                Some("gpt-4o-mini"),
            )
            .unwrap_or_else(|| panic!("labels")),
            error_type,
            duration: Duration::from_millis(250),
            usage,
        }
    }

    const LABELS: &str = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",server_address="api.openai.example",server_port="443""#;

    #[test]
    fn v1_41_records_tokens_by_type_and_errors_on_the_duration_only() {
        let usage = BillableTokens {
            input: 100,
            output: Some(20),
            cache_read: 40,
        };
        let text = encode(Conventions::V1_41, |m| {
            m.record(&outcome(Some(usage), None));
            m.record(&outcome(None, Some("upstream_429")));
        });
        let input =
            format!(r#"gen_ai_client_token_usage_sum{{{LABELS},gen_ai_token_type="input"}}"#);
        let output =
            format!(r#"gen_ai_client_token_usage_sum{{{LABELS},gen_ai_token_type="output"}}"#);
        assert_eq!(sample(&text, &input), Some(100.0), "{text}");
        assert_eq!(sample(&text, &output), Some(20.0), "{text}");
        // The failed operation reported no usage: one input observation only.
        let count =
            format!(r#"gen_ai_client_token_usage_count{{{LABELS},gen_ai_token_type="input"}}"#);
        assert_eq!(sample(&text, &count), Some(1.0), "{text}");
        let ok = format!("gen_ai_client_operation_duration_seconds_sum{{{LABELS}}}");
        assert_eq!(sample(&text, &ok), Some(0.25), "{text}");
        let failed = format!(
            r#"gen_ai_client_operation_duration_seconds_count{{{LABELS},error_type="upstream_429"}}"#
        );
        assert_eq!(sample(&text, &failed), Some(1.0), "{text}");
        let bucket =
            format!(r#"gen_ai_client_operation_duration_seconds_bucket{{le="0.32",{LABELS}}}"#);
        assert_eq!(sample(&text, &bucket), Some(1.0), "{text}");
        assert!(!text.contains("gen_ai_client_inference"), "{text}");
    }

    #[test]
    fn latest_counts_every_operation_and_keeps_old_names_out() {
        let usage = BillableTokens {
            input: 100,
            output: Some(20),
            cache_read: 40,
        };
        let text = encode(Conventions::LatestExperimental, |m| {
            m.record(&outcome(Some(usage), None));
            m.record(&outcome(None, Some("upstream_429")));
        });
        let counter = |name: &str| {
            format!(
                r#"gen_ai_client_inference_usage_{name}_total{{{LABELS},gen_ai_token_modality="unknown"}}"#
            )
        };
        assert_eq!(
            sample(&text, &counter("input_tokens")),
            Some(100.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &counter("output_tokens")),
            Some(20.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &counter("cache_read_input_tokens")),
            Some(40.0),
            "{text}"
        );
        let ops = format!("gen_ai_client_inference_operation_input_tokens_count{{{LABELS}}}");
        assert_eq!(sample(&text, &ops), Some(1.0), "{text}");
        let failed = format!(
            r#"gen_ai_client_inference_duration_seconds_count{{{LABELS},error_type="upstream_429"}}"#
        );
        assert_eq!(sample(&text, &failed), Some(1.0), "{text}");
        assert!(!text.contains("gen_ai_client_operation_"), "{text}");
        assert!(!text.contains("gen_ai_client_token_usage"), "{text}");
    }

    fn draft(endpoint: Endpoint, decision: Decision, reason: &'static str) -> ReceiptDraft {
        ReceiptDraft {
            pricing: None,
            id: "0190c5a0-0000-7000-8000-000000000001".into(),
            request_id: "req".into(),
            started_at_ms: 0,
            completed_at_ms: 0,
            total_ms: 0,
            first_byte_ms: None,
            endpoint,
            provider: Some("openai-prod".into()),
            model_requested: Some("mini".into()),
            model_served: Some("gpt-4o-mini-2024-07-18".into()),
            decision,
            reason,
            guards: vec![],
            checks: vec![],
            caller_hash: None,
            correlation_id: None,
            decision_id: None,
            status: 200,
            request_sha256: [0; 32],
            response_sha256: [0; 32],
            response_length: 0,
            usage: Some(crate::receipts::UsageDraft {
                input: 120,
                output: 30,
                cached: 20,
                ..crate::receipts::UsageDraft::default()
            }),
            cost_micro_usd: 0,
            upstream: None,
            quota: None,
            lane: tollgate_evidence::Lane::Live,
            policy_hash: [0; 32],
        }
    }

    #[test]
    fn outcomes_come_from_receipt_drafts() {
        let catalog = MetricCatalog::new(&config());
        let of = |d: &ReceiptDraft| Outcome::of(d, &catalog, Duration::from_millis(7));
        let ok = of(&draft(
            Endpoint::ChatCompletions,
            Decision::Allow,
            "allowed",
        ))
        .unwrap_or_else(|| panic!("a chat call is an operation"));
        assert_eq!(ok.error_type, None);
        assert_eq!(
            ok.labels.model.as_deref(),
            Some("mini"),
            "the model as requested"
        );
        assert_eq!(
            ok.usage,
            Some(BillableTokens {
                input: 120,
                output: Some(30),
                cache_read: 20
            })
        );
        let gone = of(&draft(
            Endpoint::Messages,
            Decision::Allow,
            "client_disconnected",
        ))
        .unwrap_or_else(|| panic!("a cut call is an operation"));
        assert_eq!(gone.error_type, Some("client_disconnected"));
        let embedded = of(&draft(Endpoint::Embeddings, Decision::Allow, "allowed"))
            .unwrap_or_else(|| panic!("embeddings are an operation"));
        assert_eq!(embedded.usage.and_then(|u| u.output), None);
        // An attempt given up for the next provider is not a call of its own.
        let given_up = draft(
            Endpoint::ChatCompletions,
            Decision::Error,
            "failed_over.upstream_429",
        );
        assert_eq!(of(&given_up), None);
        assert_eq!(
            of(&draft(Endpoint::CountTokens, Decision::Allow, "allowed")),
            None
        );
    }

    #[test]
    fn the_first_chunk_is_timed_from_the_request_and_the_rest_from_each_other() {
        let catalog = MetricCatalog::new(&config());
        let labels = OperationLabels::new(
            &catalog,
            Endpoint::ChatCompletions,
            Some("openai-prod"),
            Some("gpt-4o-mini"),
        )
        .unwrap_or_else(|| panic!("labels"));
        let text = encode(Conventions::V1_41, |m| {
            let start = Instant::now();
            let mut clock = m.chunk_clock(&labels, start);
            clock.chunks_read(0, start + Duration::from_millis(5));
            clock.chunks_read(2, start + Duration::from_millis(100));
            clock.chunks_read(1, start + Duration::from_millis(130));
        });
        let first = format!("gen_ai_client_operation_time_to_first_chunk_seconds_sum{{{LABELS}}}");
        assert_eq!(sample(&text, &first), Some(0.1), "{text}");
        let per =
            format!("gen_ai_client_operation_time_per_output_chunk_seconds_count{{{LABELS}}}");
        assert_eq!(sample(&text, &per), Some(2.0), "{text}");
        let sum = format!("gen_ai_client_operation_time_per_output_chunk_seconds_sum{{{LABELS}}}");
        let sum = sample(&text, &sum).unwrap_or_default();
        assert!((sum - 0.03).abs() < 1e-9, "{text}");
    }
}
