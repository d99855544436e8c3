//! The request path: parse, guard, route, reserve quota, forward (or answer
//! from the dry-run lane), stream the response back while hashing and
//! counting it, and hand a receipt draft to the spool writer when it ends.
//!
//! Nothing here logs or keeps request or response text; receipts get hashes
//! and counts only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_evidence::{Decision, Lane};
use tollgate_wire::config::PolicyMode;
use tollgate_wire::config::{
    CompiledModel, CompiledPolicy, CompiledProvider, GatewayConfig, glob_matches,
};
use tollgate_wire::config::{ModelPricing, ProviderApi};

use crate::admin::Metrics;
use crate::api::{ApiStyle, Endpoint};
use crate::api_error::{ErrorKind, error_body, status as error_status};
use crate::credentials::{Credentials, choose_key_index};
use crate::quota::{
    Amounts, Caller, QuotaAuthority, QuotaDecision, Reservation, matching_limits, price,
};
use crate::receipts::{ReceiptDraft, ReceiptSink, UpstreamFacts, unix_millis};
use crate::sse::{ResponseFacts, SseTap, facts_from_json};
use crate::upstream::{ProviderClient, TlsFingerprint, TrustError, connect_error, provider_client};
use crate::{dry_run, guards};

/// Who this gateway speaks for.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub node_id: String,
    pub pod_labels: BTreeMap<String, String>,
}

/// Everything that changes on a config reload, swapped as one.
#[derive(Debug)]
pub struct Runtime {
    pub config: GatewayConfig,
    /// The policy that governs this pod; `None` refuses every request.
    pub policy: Option<CompiledPolicy>,
    pub credentials: Credentials,
    clients: HashMap<String, ProviderClient>,
    policy_hash: [u8; 32],
}

impl Runtime {
    /// Builds the runtime for `config`: picks this pod's policy and makes one
    /// pooled, pinned client per live provider.
    pub fn build(
        config: GatewayConfig,
        credentials: Credentials,
        pod_labels: &BTreeMap<String, String>,
    ) -> Result<Self, TrustError> {
        let policy = config.policy_for(pod_labels).cloned();
        let mut clients = HashMap::new();
        for provider in config
            .providers
            .iter()
            .filter(|p| p.api != ProviderApi::DryRun)
        {
            clients.insert(provider.name.clone(), provider_client(provider)?);
        }
        let mut policy_hash = [0u8; 32];
        hex::decode_to_slice(&config.policy_hash, &mut policy_hash).unwrap_or_default();
        Ok(Self {
            config,
            policy,
            credentials,
            clients,
            policy_hash,
        })
    }
}

/// The gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    runtime: RwLock<Arc<Runtime>>,
    quota: Arc<dyn QuotaAuthority>,
    receipts: ReceiptSink,
    identity: Identity,
    pub metrics: Metrics,
}

/// Largest JSON response kept on the side to read usage from; bigger bodies
/// still pass through whole, but their usage is recorded as unknown.
const MAX_JSON_TAP_BYTES: usize = 16 * 1024 * 1024;

impl Gateway {
    pub fn new(
        runtime: Runtime,
        quota: Arc<dyn QuotaAuthority>,
        receipts: ReceiptSink,
        identity: Identity,
    ) -> Self {
        Self {
            runtime: RwLock::new(Arc::new(runtime)),
            quota,
            receipts,
            identity,
            metrics: Metrics::default(),
        }
    }

    /// The runtime in force; requests keep the one they started with.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps in a new runtime. In-flight requests finish on the old one.
    pub fn swap_runtime(&self, runtime: Runtime) {
        *self.runtime.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(runtime);
    }

    /// Counts a finished request and hands its receipt to the spool writer.
    fn record(&self, draft: ReceiptDraft) {
        self.metrics.count(&draft);
        self.receipts.submit(draft);
    }

    pub fn receipts(&self) -> &ReceiptSink {
        &self.receipts
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// The API router: every path goes to one handler, which refuses what it
/// does not serve.
pub fn router(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(gateway)
}

fn style_for_path(path: &str) -> ApiStyle {
    if path.starts_with("/v1/messages") {
        ApiStyle::Anthropic
    } else {
        ApiStyle::OpenAi
    }
}

fn error_response(style: ApiStyle, kind: ErrorKind, message: &str) -> Response {
    let mut response = Response::new(Body::from(error_body(style, kind, message)));
    *response.status_mut() =
        StatusCode::from_u16(error_status(kind)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Per-request facts accumulated on the way, turned into a draft at the end.
struct Ticket {
    gateway: Arc<Gateway>,
    runtime: Arc<Runtime>,
    endpoint: Endpoint,
    started: Instant,
    started_at_ms: u64,
    receipt_id: String,
    request_id: String,
    request_sha256: [u8; 32],
    model_requested: Option<String>,
    guards: Vec<&'static str>,
}

impl Ticket {
    fn draft(&self, decision: Decision, reason: &'static str, status: u16) -> ReceiptDraft {
        let elapsed = self.started.elapsed().as_millis() as u64;
        ReceiptDraft {
            id: self.receipt_id.clone(),
            request_id: self.request_id.clone(),
            started_at_ms: self.started_at_ms,
            completed_at_ms: self.started_at_ms + elapsed,
            total_ms: elapsed,
            first_byte_ms: None,
            endpoint: self.endpoint,
            provider: None,
            model_requested: self.model_requested.clone(),
            model_served: None,
            decision,
            reason,
            guards: self.guards.clone(),
            status,
            request_sha256: self.request_sha256,
            response_sha256: [0; 32],
            response_length: 0,
            usage: None,
            cost_micro_usd: 0,
            upstream: None,
            quota: None,
            lane: Lane::Live,
            policy_hash: self.runtime.policy_hash,
        }
    }

    /// Refuses the request in the client's API style and records why.
    fn refuse(
        &self,
        kind: ErrorKind,
        reason: &'static str,
        message: &str,
        provider: Option<&str>,
        lane: Lane,
    ) -> Response {
        let body = error_body(self.endpoint.style(), kind, message);
        let status = error_status(kind);
        let mut draft = self.draft(
            if status >= 500 {
                Decision::Error
            } else {
                Decision::Deny
            },
            reason,
            status,
        );
        draft.provider = provider.map(str::to_string);
        draft.lane = lane;
        draft.response_sha256 = Sha256::digest(&body).into();
        draft.response_length = body.len() as u64;
        self.submit(draft);
        let mut response = error_response(self.endpoint.style(), kind, message);
        *response.body_mut() = Body::from(body);
        self.tag(&mut response);
        response
    }

    fn submit(&self, draft: ReceiptDraft) {
        self.gateway.record(draft);
    }

    fn tag(&self, response: &mut Response) {
        if let Ok(v) = HeaderValue::from_str(&self.receipt_id) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-tollgate-receipt-id"), v);
        }
    }
}

/// A provider and model a request may go to.
#[derive(Debug, Clone)]
struct Candidate<'a> {
    provider: &'a CompiledProvider,
    model: &'a CompiledModel,
    max_tokens: Option<u32>,
}

/// The candidates for `requested` under `policy`, in policy order. A
/// `provider:model` prefix forces one provider. Only providers that serve the
/// endpoint's style, and models the provider lists, qualify.
fn candidates<'a>(
    config: &'a GatewayConfig,
    policy: &'a CompiledPolicy,
    endpoint: Endpoint,
    requested: &str,
    check_globs: bool,
) -> Vec<Candidate<'a>> {
    let (forced, model_name) = match requested.split_once(':') {
        Some((p, m)) if config.provider(p).is_some() => (Some(p), m),
        _ => (None, requested),
    };
    let mut out: Vec<Candidate<'a>> = Vec::new();
    for route in &policy.routes {
        if forced.is_some_and(|p| p != route.provider) {
            continue;
        }
        let Some(provider) = config.provider(&route.provider) else {
            continue;
        };
        if !endpoint.served_by(provider.api) || out.iter().any(|c| c.provider.name == provider.name)
        {
            continue;
        }
        let Some(model) = provider
            .models
            .iter()
            .find(|m| m.name == model_name || m.aliases.iter().any(|a| a == model_name))
        else {
            continue;
        };
        let allowed = !check_globs
            || route
                .model_globs
                .iter()
                .any(|g| glob_matches(g, &model.name) || glob_matches(g, model_name));
        if allowed {
            out.push(Candidate {
                provider,
                model,
                max_tokens: route.max_tokens,
            });
        }
    }
    // A live route never falls back to dry-run, nor the reverse.
    if let Some(first_lane) = out.first().map(|c| c.provider.api == ProviderApi::DryRun) {
        out.retain(|c| (c.provider.api == ProviderApi::DryRun) == first_lane);
    }
    out
}

/// The field that caps output tokens for an endpoint.
fn max_tokens_field(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Messages => {
            Some("max_tokens")
        }
        Endpoint::Responses => Some("max_output_tokens"),
        _ => None,
    }
}

fn requested_max_tokens(endpoint: Endpoint, body: &Value) -> Option<u64> {
    let field = max_tokens_field(endpoint)?;
    body.get(field)
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_completion_tokens").and_then(Value::as_u64))
}

/// Output tokens assumed for a quota estimate when neither the request nor
/// the policy bounds them.
const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

async fn handle(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_string();
    let Some(endpoint) = Endpoint::from_request(request.method(), &path) else {
        return error_response(
            style_for_path(&path),
            ErrorKind::NotFound,
            "Tollgate does not serve this path; only the OpenAI and Anthropic model APIs are available",
        );
    };
    let runtime = gateway.runtime();
    let style = endpoint.style();
    if !gateway.receipts.status.accepting() {
        let fail_open = runtime
            .policy
            .as_ref()
            .is_some_and(|p| p.fail_mode == tollgate_wire::config::FailMode::Open);
        if !fail_open {
            return error_response(
                style,
                ErrorKind::Overloaded,
                "the receipt spool is full or failing; requests are refused until receipts can be written (failMode: closed)",
            );
        }
    }
    let (parts, body) = request.into_parts();
    let mut ticket = Ticket {
        gateway: gateway.clone(),
        runtime: runtime.clone(),
        endpoint,
        started,
        started_at_ms: unix_millis(),
        receipt_id: uuid::Uuid::now_v7().hyphenated().to_string(),
        request_id: format!("req_{}", uuid::Uuid::now_v7().simple()),
        request_sha256: [0; 32],
        model_requested: None,
        guards: Vec::new(),
    };
    if endpoint == Endpoint::Models {
        return ticket.answer_models(&parts.headers);
    }
    let Some(policy) = runtime.policy.as_ref() else {
        return ticket.refuse(
            ErrorKind::PermissionDenied,
            "no_policy",
            "no EgressPolicy governs this pod",
            None,
            Lane::Live,
        );
    };
    let limit = policy.max_request_bytes as usize;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return ticket.refuse(
                ErrorKind::RequestTooLarge,
                "request_too_large",
                &format!("the request body exceeds the policy limit of {limit} bytes"),
                None,
                Lane::Live,
            );
        }
        Err(_) => {
            return ticket.refuse(
                ErrorKind::InvalidRequest,
                "request_body_unreadable",
                "the request body could not be read",
                None,
                Lane::Live,
            );
        }
    };
    ticket.request_sha256 = Sha256::digest(&bytes).into();
    let mut json: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return ticket.refuse(
                ErrorKind::InvalidRequest,
                "malformed_json",
                "the request body must be a JSON object",
                None,
                Lane::Live,
            );
        }
    };
    // In audit mode every policy refusal becomes a guard code on a forwarded
    // request: the receipt records the would-deny, the client sees no change.
    let audit = policy.mode == PolicyMode::Audit;
    if policy.block_secrets
        && let Some(secret) = guards::find_secret(&bytes)
    {
        ticket.guards.push(secret.code());
    }
    if let Some(code) = ticket.guards.first().copied().filter(|_| !audit) {
        return ticket.refuse(
            ErrorKind::PermissionDenied,
            "secret_in_request",
            &format!(
                "the request carries a secret ({code}); Tollgate refuses to send it to a provider"
            ),
            None,
            Lane::Live,
        );
    }
    if audit && !ticket.guards.is_empty() {
        ticket.guards.push("audit.secret_in_request");
    }
    let Some(requested) = json
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return ticket.refuse(
            ErrorKind::InvalidRequest,
            "model_missing",
            "the request must name a model",
            None,
            Lane::Live,
        );
    };
    ticket.model_requested = Some(requested.clone());
    let config = &runtime.config;
    let mut candidates = candidates(config, policy, endpoint, &requested, true);
    if candidates.is_empty() && audit {
        candidates = self::candidates(config, policy, endpoint, &requested, false);
        if !candidates.is_empty() {
            ticket.guards.push("audit.model_not_allowed");
        }
    }
    let Some(first) = candidates.first() else {
        return ticket.refuse(
            ErrorKind::PermissionDenied,
            "model_not_allowed",
            &format!("model {requested:?} is not allowed by this namespace's EgressPolicy"),
            None,
            Lane::Live,
        );
    };
    let lane = if first.provider.api == ProviderApi::DryRun {
        Lane::DryRun
    } else {
        Lane::Live
    };
    let asked = requested_max_tokens(endpoint, &json);
    if let (Some(asked), Some(cap)) = (asked, first.max_tokens)
        && asked > u64::from(cap)
        && !audit
    {
        return ticket.refuse(
            ErrorKind::InvalidRequest,
            "max_tokens_over_policy",
            &format!("max tokens {asked} exceeds the policy limit of {cap}"),
            Some(&first.provider.name),
            lane,
        );
    }
    if audit
        && let (Some(asked), Some(cap)) = (asked, first.max_tokens)
        && asked > u64::from(cap)
    {
        ticket.guards.push("audit.max_tokens_over_policy");
    }
    let mut rewrite = false;
    if asked.is_none()
        && let (Some(cap), Some(field)) = (first.max_tokens, max_tokens_field(endpoint))
    {
        json[field] = Value::from(cap);
        rewrite = true;
    }
    let streaming = json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut strip_injected_usage = false;
    if streaming && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions) {
        let asked_usage = json
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !asked_usage {
            json["stream_options"] = serde_json::json!({"include_usage": true});
            strip_injected_usage = true;
            rewrite = true;
        }
    }

    // Quota: reserve an estimate before anything goes upstream.
    let input_estimate = dry_run::estimate_input_tokens(endpoint, &json);
    let output_estimate = asked
        .or(first.max_tokens.map(u64::from))
        .unwrap_or(DEFAULT_OUTPUT_ESTIMATE);
    let caller = Caller {
        service_account: gateway.identity.service_account.clone(),
        pod_labels: gateway.identity.pod_labels.clone(),
    };
    let limits = matching_limits(config, &caller, &first.provider.name, &first.model.name);
    // Counting tokens is free: it is one request and no tokens.
    let estimate = if endpoint == Endpoint::CountTokens {
        Amounts {
            requests: 1,
            ..Amounts::default()
        }
    } else {
        Amounts {
            tokens: input_estimate + output_estimate,
            requests: 1,
            cost_micro_usd: price(input_estimate, output_estimate, 0, &first.model.pricing),
        }
    };
    let now_secs = ticket.started_at_ms / 1000;
    let reservation = match gateway.quota.reserve(&limits, estimate, now_secs).await {
        QuotaDecision::Allow(r) => r,
        QuotaDecision::Unavailable { quota_id, limit } => {
            return ticket.refuse(
                ErrorKind::Overloaded,
                "quota_authority_unavailable",
                &format!(
                    "the quota authority cannot be reached and quota {quota_id} limit {limit} fails closed"
                ),
                Some(&first.provider.name),
                lane,
            );
        }
        QuotaDecision::Deny {
            quota_id,
            limit,
            retry_after_secs,
        } => {
            let mut response = ticket.refuse(
                ErrorKind::RateLimited,
                "quota_exceeded",
                &format!(
                    "quota {quota_id} limit {limit} is exhausted; retry after {retry_after_secs}s"
                ),
                Some(&first.provider.name),
                lane,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return response;
        }
    };
    if reservation.shadow_denied {
        ticket.guards.push("quota.shadow_exceeded");
    }
    let settle = Settle {
        quota: gateway.quota.clone(),
        reservation: Some(reservation),
        estimate,
        now_secs,
    };

    if lane == Lane::DryRun {
        json["model"] = Value::from(first.model.name.clone());
        let answer = dry_run::respond(endpoint, &first.model.name, &json);
        let frames: VecDeque<Bytes> = match answer.body {
            dry_run::DryRunBody::Json(b) => VecDeque::from([b]),
            dry_run::DryRunBody::Events(events) => events.into(),
        };
        let mut draft = ticket.draft(Decision::Allow, "allowed", answer.status);
        draft.provider = Some(first.provider.name.clone());
        draft.model_served = Some(first.model.name.clone());
        draft.lane = Lane::DryRun;
        let sse = answer.content_type.starts_with("text/event-stream");
        let metered = MeteredBody::new(
            Source::Frames(frames),
            tap_for(endpoint, sse, strip_injected_usage),
            draft,
            ticket_finish(&ticket, first.model.pricing.clone(), settle),
            None,
        );
        let mut response = Response::new(Body::new(metered));
        *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(answer.content_type),
        );
        ticket.tag(&mut response);
        return response;
    }

    forward_live(
        ticket,
        &parts.headers,
        json,
        bytes,
        rewrite,
        candidates,
        policy,
        strip_injected_usage,
        settle,
    )
    .await
}

/// Quota settlement carried to the end of the response.
struct Settle {
    quota: Arc<dyn QuotaAuthority>,
    reservation: Option<Reservation>,
    estimate: Amounts,
    now_secs: u64,
}

impl Settle {
    fn charge(&mut self, actual: Option<Amounts>) -> Option<(u64, u64, u64)> {
        let reservation = self.reservation.take()?;
        if reservation.is_empty() {
            return None;
        }
        // Usage unknown (a cut stream): charge the estimate, never nothing.
        let amount = actual.unwrap_or(self.estimate);
        self.quota
            .settle(reservation, amount, self.now_secs.max(unix_millis() / 1000));
        Some((amount.tokens, amount.requests, amount.cost_micro_usd))
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.quota
                .settle(reservation, self.estimate, unix_millis() / 1000);
        }
    }
}

struct Finish {
    started: Instant,
    started_at_ms: u64,
    pricing: ModelPricing,
    settle: Settle,
    gateway: Arc<Gateway>,
}

fn ticket_finish(ticket: &Ticket, pricing: ModelPricing, settle: Settle) -> Finish {
    Finish {
        started: ticket.started,
        started_at_ms: ticket.started_at_ms,
        pricing,
        settle,
        gateway: ticket.gateway.clone(),
    }
}

fn tap_for(endpoint: Endpoint, sse: bool, strip_injected_usage: bool) -> Tap {
    if sse {
        Tap::Sse(Box::new(SseTap::new(
            endpoint.style(),
            strip_injected_usage,
        )))
    } else {
        Tap::Json(Vec::new())
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward_live(
    ticket: Ticket,
    client_headers: &HeaderMap,
    mut json: Value,
    original: Bytes,
    mut rewrite: bool,
    candidates: Vec<Candidate<'_>>,
    policy: &CompiledPolicy,
    strip_injected_usage: bool,
    settle: Settle,
) -> Response {
    let runtime = ticket.runtime.clone();
    let total = candidates.len();
    for (attempt, candidate) in candidates.iter().enumerate() {
        let provider = candidate.provider;
        let more = policy.failover && attempt + 1 < total;
        if json.get("model").and_then(Value::as_str) != Some(candidate.model.name.as_str()) {
            json["model"] = Value::from(candidate.model.name.clone());
            rewrite = true;
        }
        let body = if rewrite {
            Bytes::from(serde_json::to_vec(&json).unwrap_or_default())
        } else {
            original.clone()
        };
        let keys = runtime.credentials.keys(&provider.name);
        let needs_keys = provider.credentials.is_some();
        if needs_keys && keys.is_empty() {
            if more {
                continue;
            }
            return ticket.refuse(
                ErrorKind::UpstreamError,
                "credentials_unavailable",
                &format!("provider {} has no credentials loaded", provider.name),
                Some(&provider.name),
                Lane::Live,
            );
        }
        let key_count = keys.len().max(1) as u32;
        let key_index = choose_key_index(
            &candidate.model.name,
            &ticket.request_sha256,
            &ticket.gateway.identity.node_id,
            key_count,
        );
        let Some(base) = provider.base_url.as_deref() else {
            return ticket.refuse(
                ErrorKind::Internal,
                "provider_misconfigured",
                &format!("provider {} has no baseURL", provider.name),
                Some(&provider.name),
                Lane::Live,
            );
        };
        let uri = format!("{}{}", base.trim_end_matches('/'), ticket.endpoint.path());
        let host = uri
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        let mut request = http::Request::post(&uri);
        if let Some(h) = request.headers_mut() {
            copy_forwarded_headers(
                client_headers,
                h,
                ticket.endpoint.style(),
                &policy.header_allowlist,
            );
            if let Some(key) = keys.get(key_index as usize) {
                let (name, value) = match ticket.endpoint.style() {
                    ApiStyle::OpenAi => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
                    ApiStyle::Anthropic => (
                        HeaderName::from_static("x-api-key"),
                        key.expose().to_string(),
                    ),
                };
                if let Ok(mut v) = HeaderValue::from_str(&value) {
                    v.set_sensitive(true);
                    h.insert(name, v);
                }
            }
        }
        let Ok(request) = request.body(Full::new(body)) else {
            return ticket.refuse(
                ErrorKind::Internal,
                "request_build_failed",
                "the upstream request could not be built",
                Some(&provider.name),
                Lane::Live,
            );
        };
        let Some(client) = runtime.clients.get(&provider.name) else {
            return ticket.refuse(
                ErrorKind::Internal,
                "provider_client_missing",
                "no client for the provider",
                Some(&provider.name),
                Lane::Live,
            );
        };
        let first_byte = Duration::from_millis(u64::from(provider.first_byte_timeout_ms));
        let upstream = match tokio::time::timeout(first_byte, client.request(request)).await {
            Err(_) => {
                if more {
                    continue;
                }
                return ticket.refuse(
                    ErrorKind::UpstreamTimeout,
                    "upstream_timeout",
                    &format!(
                        "provider {} did not answer within {} ms",
                        provider.name, provider.first_byte_timeout_ms
                    ),
                    Some(&provider.name),
                    Lane::Live,
                );
            }
            Ok(Err(err)) => {
                if more {
                    continue;
                }
                let (reason, message) = match connect_error(&err) {
                    Some(e @ crate::upstream::ConnectError::Tls { .. }) => {
                        ("upstream_tls_refused", e.to_string())
                    }
                    Some(e @ crate::upstream::ConnectError::HostNotAllowed(_)) => {
                        ("upstream_host_not_allowed", e.to_string())
                    }
                    Some(e) => ("upstream_connect_failed", e.to_string()),
                    None => (
                        "upstream_failed",
                        format!("provider {} request failed", provider.name),
                    ),
                };
                return ticket.refuse(
                    ErrorKind::UpstreamError,
                    reason,
                    &message,
                    Some(&provider.name),
                    Lane::Live,
                );
            }
            Ok(Ok(response)) => response,
        };
        let status = upstream.status();
        if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) && more {
            continue;
        }
        if status.is_redirection() {
            return ticket.refuse(
                ErrorKind::UpstreamError,
                "upstream_redirect_refused",
                &format!(
                    "provider {} answered with a redirect; Tollgate never follows redirects",
                    provider.name
                ),
                Some(&provider.name),
                Lane::Live,
            );
        }
        let fingerprint = upstream.extensions().get::<TlsFingerprint>().map(|f| f.0);
        if fingerprint.is_none() {
            return ticket.refuse(
                ErrorKind::UpstreamError,
                "tls_fingerprint_missing",
                "the upstream TLS certificate could not be fingerprinted; the request fails closed",
                Some(&provider.name),
                Lane::Live,
            );
        }
        let sse = upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let mut draft = ticket.draft(
            if status.is_success() {
                Decision::Allow
            } else {
                Decision::Error
            },
            if status.is_success() {
                "allowed"
            } else {
                upstream_reason(status)
            },
            status.as_u16(),
        );
        draft.provider = Some(provider.name.clone());
        draft.model_served = Some(candidate.model.name.clone());
        draft.first_byte_ms = Some(ticket.started.elapsed().as_millis() as u64);
        draft.upstream = Some(UpstreamFacts {
            host,
            tls_cert_sha256: fingerprint,
            provider_request_id: None,
            key_index,
            key_count,
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        for name in [
            header::CONTENT_TYPE,
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("request-id"),
        ] {
            if let Some(v) = upstream.headers().get(&name) {
                response.headers_mut().insert(name, v.clone());
            }
        }
        ticket.tag(&mut response);
        let idle = Duration::from_millis(u64::from(provider.idle_timeout_ms));
        let metered = MeteredBody::new(
            Source::Upstream(upstream.into_body()),
            tap_for(
                ticket.endpoint,
                sse,
                strip_injected_usage && status.is_success(),
            ),
            draft,
            ticket_finish(&ticket, candidate.model.pricing.clone(), settle),
            Some(idle),
        );
        *response.body_mut() = Body::new(metered);
        return response;
    }
    ticket.refuse(
        ErrorKind::UpstreamError,
        "no_provider_available",
        "no allowed provider could take the request",
        None,
        Lane::Live,
    )
}

fn upstream_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "upstream_429",
        400..=499 => "upstream_4xx",
        _ => "upstream_5xx",
    }
}

/// Headers the API itself needs, plus the policy's allowlist. Credentials,
/// cookies and anything else the client sent stay behind.
fn copy_forwarded_headers(
    from: &HeaderMap,
    to: &mut HeaderMap,
    style: ApiStyle,
    allowlist: &[String],
) {
    to.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let own: &[&str] = match style {
        ApiStyle::OpenAi => &["accept", "user-agent", "openai-beta", "idempotency-key"],
        ApiStyle::Anthropic => &[
            "accept",
            "user-agent",
            "anthropic-version",
            "anthropic-beta",
        ],
    };
    for name in own
        .iter()
        .copied()
        .chain(allowlist.iter().map(String::as_str))
    {
        if matches!(
            name,
            "authorization" | "x-api-key" | "proxy-authorization" | "cookie" | "host"
        ) {
            continue;
        }
        if let (Ok(header_name), Some(value)) =
            (HeaderName::from_bytes(name.as_bytes()), from.get(name))
        {
            to.insert(header_name, value.clone());
        }
    }
}

impl Ticket {
    /// Lists the models the policy allows, and records the listing.
    fn answer_models(mut self, headers: &HeaderMap) -> Response {
        self.request_sha256 = Sha256::digest(b"").into();
        let body = list_models(&self.runtime, headers);
        let mut draft = self.draft(Decision::Allow, "models_listed", 200);
        draft.response_sha256 = Sha256::digest(&body).into();
        draft.response_length = body.len() as u64;
        self.submit(draft);
        let mut response = Response::new(Body::from(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.tag(&mut response);
        response
    }
}

fn list_models(runtime: &Runtime, headers: &HeaderMap) -> Bytes {
    let mut names: Vec<(String, &str)> = Vec::new();
    if let Some(policy) = &runtime.policy {
        for route in &policy.routes {
            let Some(provider) = runtime.config.provider(&route.provider) else {
                continue;
            };
            for model in &provider.models {
                let allowed = route
                    .model_globs
                    .iter()
                    .any(|g| glob_matches(g, &model.name));
                if allowed && !names.iter().any(|(n, _)| n == &model.name) {
                    names.push((model.name.clone(), provider.name.as_str()));
                }
            }
        }
    }
    let body = if headers.contains_key("anthropic-version") {
        let data: Vec<Value> = names.iter().map(|(n, _)| serde_json::json!({"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"})).collect();
        serde_json::json!({"data": data, "has_more": false, "first_id": names.first().map(|n| &n.0), "last_id": names.last().map(|n| &n.0)})
    } else {
        let data: Vec<Value> = names.iter().map(|(n, p)| serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": p})).collect();
        serde_json::json!({"object": "list", "data": data})
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

enum Source {
    Upstream(hyper::body::Incoming),
    Frames(VecDeque<Bytes>),
}

enum Tap {
    Sse(Box<SseTap>),
    Json(Vec<u8>),
}

/// How a response ended, for the receipt.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Complete,
    ClientGone,
    UpstreamBroke,
    IdleTimeout,
}

/// Streams the response to the client chunk by chunk, hashing and counting
/// what the client receives, reading usage on the side, and writing the
/// receipt when the stream ends or the client goes away.
struct MeteredBody {
    source: Source,
    tap: Tap,
    hasher: Sha256,
    length: u64,
    tail: Option<Bytes>,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    draft: Option<ReceiptDraft>,
    finish: Option<Finish>,
}

impl MeteredBody {
    fn new(
        source: Source,
        tap: Tap,
        draft: ReceiptDraft,
        finish: Finish,
        idle: Option<Duration>,
    ) -> Self {
        Self {
            source,
            tap,
            hasher: Sha256::new(),
            length: 0,
            tail: None,
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            draft: Some(draft),
            finish: Some(finish),
        }
    }

    fn observe(&mut self, chunk: Bytes) -> Bytes {
        let out = match &mut self.tap {
            Tap::Sse(tap) => tap.push(chunk),
            Tap::Json(buf) => {
                if buf.len() + chunk.len() <= MAX_JSON_TAP_BYTES {
                    buf.extend_from_slice(&chunk);
                }
                chunk
            }
        };
        self.hasher.update(&out);
        self.length += out.len() as u64;
        out
    }

    fn end(&mut self, ending: Ending) {
        let (Some(mut draft), Some(mut finish)) = (self.draft.take(), self.finish.take()) else {
            return;
        };
        let facts: ResponseFacts = match &self.tap {
            Tap::Sse(tap) => tap.facts().clone(),
            Tap::Json(buf) => facts_from_json(draft.endpoint, buf),
        };
        let hasher = std::mem::take(&mut self.hasher);
        draft.response_sha256 = hasher.finalize().into();
        draft.response_length = self.length;
        let elapsed = finish.started.elapsed().as_millis() as u64;
        draft.total_ms = elapsed;
        draft.completed_at_ms = finish.started_at_ms + elapsed;
        if let Some(served) = facts.served_model {
            draft.model_served = Some(served);
        }
        if let (Some(upstream), Some(id)) = (draft.upstream.as_mut(), facts.provider_request_id) {
            upstream.provider_request_id = Some(id);
        }
        let anthropic = draft.endpoint.style() == ApiStyle::Anthropic;
        let usage = facts
            .usage
            .filter(|_| draft.endpoint != Endpoint::CountTokens);
        let actual = usage.map(|u| {
            // Receipts count input including cache reads; Anthropic reports
            // cache reads apart from `input_tokens`, OpenAI inside `prompt_tokens`.
            let input = if anthropic {
                u.input.saturating_add(u.cached_input)
            } else {
                u.input
            };
            draft.usage = Some((input, u.output, u.cached_input));
            let cost = price(input, u.output, u.cached_input, &finish.pricing);
            draft.cost_micro_usd = cost;
            Amounts {
                tokens: input.saturating_add(u.output),
                requests: 1,
                cost_micro_usd: cost,
            }
        });
        let actual = if draft.endpoint == Endpoint::CountTokens {
            Some(Amounts {
                requests: 1,
                ..Amounts::default()
            })
        } else {
            actual
        };
        draft.quota = finish.settle.charge(actual);
        match ending {
            Ending::Complete => {}
            Ending::ClientGone => draft.reason = "client_disconnected",
            Ending::UpstreamBroke => {
                draft.decision = Decision::Error;
                draft.reason = "upstream_stream_broken";
            }
            Ending::IdleTimeout => {
                draft.decision = Decision::Error;
                draft.reason = "upstream_idle_timeout";
            }
        }
        finish.gateway.record(draft);
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away before the end: hyper drops the body, which
        // drops the upstream body and so cancels the upstream request.
        self.end(Ending::ClientGone);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(tail) = this.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        if this.draft.is_none() {
            return Poll::Ready(None);
        }
        loop {
            let next = match &mut this.source {
                Source::Frames(frames) => {
                    Poll::Ready(frames.pop_front().map(|b| Ok(Frame::data(b))))
                }
                Source::Upstream(body) => Pin::new(body)
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map_err(BoxError::from))),
            };
            match next {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some((d, sleep)) = this.idle.as_mut() {
                        sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                    }
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let out = this.observe(data);
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.end(Ending::UpstreamBroke);
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    let rest = match &mut this.tap {
                        Tap::Sse(tap) => tap.finish(),
                        Tap::Json(_) => Bytes::new(),
                    };
                    if !rest.is_empty() {
                        this.hasher.update(&rest);
                        this.length += rest.len() as u64;
                    }
                    this.end(Ending::Complete);
                    return Poll::Ready(if rest.is_empty() {
                        None
                    } else {
                        Some(Ok(Frame::data(rest)))
                    });
                }
                Poll::Pending => {
                    if let Some((_, sleep)) = this.idle.as_mut()
                        && sleep.as_mut().poll(cx).is_ready()
                    {
                        this.end(Ending::IdleTimeout);
                        return Poll::Ready(Some(Err("upstream idle timeout".into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_wire::config::Route;

    fn model(name: &str, aliases: &[&str]) -> CompiledModel {
        CompiledModel {
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            pricing: ModelPricing::default(),
        }
    }

    fn provider(name: &str, api: ProviderApi, models: Vec<CompiledModel>) -> CompiledProvider {
        CompiledProvider {
            name: name.into(),
            api,
            base_url: None,
            hosts: vec![],
            credentials: None,
            models,
            upstream_trust: vec![],
            connect_timeout_ms: 1,
            first_byte_timeout_ms: 1,
            idle_timeout_ms: 1,
        }
    }

    fn config() -> (GatewayConfig, CompiledPolicy) {
        let policy = CompiledPolicy {
            name: "p".into(),
            pod_selector: Default::default(),
            mode: tollgate_wire::config::PolicyMode::Enforce,
            routes: vec![
                Route {
                    provider: "openai".into(),
                    model_globs: vec!["gpt-4o*".into()],
                    max_tokens: Some(100),
                },
                Route {
                    provider: "backup".into(),
                    model_globs: vec!["*".into()],
                    max_tokens: None,
                },
                Route {
                    provider: "dry".into(),
                    model_globs: vec!["*".into()],
                    max_tokens: None,
                },
                Route {
                    provider: "claude".into(),
                    model_globs: vec!["claude-*".into()],
                    max_tokens: None,
                },
            ],
            failover: true,
            max_request_bytes: 1024,
            block_secrets: true,
            header_allowlist: vec![],
            fail_mode: tollgate_wire::config::FailMode::Closed,
            allow_opt_out: false,
            egress: vec![],
        };
        let config = GatewayConfig {
            version: 1,
            namespace: "ns".into(),
            policy_hash: String::new(),
            policies: vec![policy.clone()],
            providers: vec![
                provider(
                    "openai",
                    ProviderApi::Openai,
                    vec![model("gpt-4o-mini", &["mini"])],
                ),
                provider(
                    "backup",
                    ProviderApi::Openai,
                    vec![model("gpt-4o-mini", &[])],
                ),
                provider(
                    "dry",
                    ProviderApi::DryRun,
                    vec![model("gpt-4o-mini", &[]), model("dry-only", &[])],
                ),
                provider(
                    "claude",
                    ProviderApi::Anthropic,
                    vec![model("claude-3-5-haiku", &[])],
                ),
            ],
            quotas: vec![],
        };
        (config, policy)
    }

    fn names(c: &[Candidate<'_>]) -> Vec<String> {
        c.iter()
            .map(|c| format!("{}:{}", c.provider.name, c.model.name))
            .collect()
    }

    #[test]
    fn routes_follow_policy_order_and_never_mix_lanes() {
        let (config, policy) = config();
        let c = candidates(
            &config,
            &policy,
            Endpoint::ChatCompletions,
            "gpt-4o-mini",
            true,
        );
        assert_eq!(
            names(&c),
            ["openai:gpt-4o-mini", "backup:gpt-4o-mini"],
            "dry-run is never a fallback for a live route"
        );
        let c = candidates(&config, &policy, Endpoint::ChatCompletions, "mini", true);
        assert_eq!(
            names(&c),
            ["openai:gpt-4o-mini"],
            "aliases resolve to the provider's name"
        );
        let c = candidates(
            &config,
            &policy,
            Endpoint::ChatCompletions,
            "dry-only",
            true,
        );
        assert_eq!(names(&c), ["dry:dry-only"]);
    }

    #[test]
    fn provider_prefix_forces_a_provider() {
        let (config, policy) = config();
        assert_eq!(
            names(&candidates(
                &config,
                &policy,
                Endpoint::ChatCompletions,
                "backup:gpt-4o-mini",
                true
            )),
            ["backup:gpt-4o-mini"]
        );
        assert_eq!(
            names(&candidates(
                &config,
                &policy,
                Endpoint::ChatCompletions,
                "dry:gpt-4o-mini",
                true
            )),
            ["dry:gpt-4o-mini"]
        );
        assert!(
            candidates(
                &config,
                &policy,
                Endpoint::ChatCompletions,
                "nobody:gpt-4o-mini",
                true
            )
            .is_empty()
        );
    }

    #[test]
    fn styles_and_unknown_models_are_enforced() {
        let (config, policy) = config();
        assert!(
            candidates(
                &config,
                &policy,
                Endpoint::ChatCompletions,
                "claude-3-5-haiku",
                true
            )
            .is_empty(),
            "an Anthropic model over the OpenAI API"
        );
        assert_eq!(
            names(&candidates(
                &config,
                &policy,
                Endpoint::Messages,
                "claude-3-5-haiku",
                true
            )),
            ["claude:claude-3-5-haiku"]
        );
        assert!(
            candidates(&config, &policy, Endpoint::ChatCompletions, "gpt-5", true).is_empty(),
            "not listed by any provider"
        );
    }

    #[test]
    fn forwarded_headers_drop_credentials_and_keep_api_headers() {
        let mut from = HeaderMap::new();
        from.insert(
            "authorization",
            HeaderValue::from_static("Bearer client-key"),
        );
        from.insert("x-api-key", HeaderValue::from_static("client-key"));
        from.insert("cookie", HeaderValue::from_static("a=b"));
        from.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        from.insert("x-request-id", HeaderValue::from_static("abc"));
        from.insert("x-internal", HeaderValue::from_static("secret"));
        let mut to = HeaderMap::new();
        copy_forwarded_headers(
            &from,
            &mut to,
            ApiStyle::Anthropic,
            &["x-request-id".into(), "authorization".into()],
        );
        assert_eq!(to.get("anthropic-version").unwrap(), "2023-06-01");
        assert_eq!(to.get("x-request-id").unwrap(), "abc");
        for dropped in ["authorization", "x-api-key", "cookie", "x-internal"] {
            assert!(to.get(dropped).is_none(), "{dropped} was forwarded");
        }
    }
}
