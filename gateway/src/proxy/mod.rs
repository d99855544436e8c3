//! The request path, as named phases:
//!
//! 1. **admit**: a served path, and a spool that can take the receipt;
//! 2. **read body**: bounded by the policy, hashed, a JSON object;
//! 3. **guards**: secrets in the request; the caller's id, hashed;
//! 4. **route**: the candidates the policy allows ([`route`]), and the policy's
//!    token cap applied to the request;
//! 5. **reserve quota**: an estimate, before anything goes upstream;
//! 6. **dry-run or forward** ([`forward`]): one attempt per candidate;
//! 7. **account** ([`metered`]): stream back while hashing and counting, then
//!    settle the quota and hand the receipt draft to the spool writer.
//!
//! A phase that refuses returns a [`Refused`]; [`refusal`] holds the one table
//! that maps each refusal to status, reason code, body and headers, and
//! [`Ticket::refuse`] writes its receipt.
//!
//! Nothing here logs or keeps request or response text; receipts get hashes
//! and counts only.

mod forward;
mod metered;
pub mod refusal;
mod route;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_evidence::{Decision, GuardOutcome, Identifier, Lane};
use tollgate_wire::config::{CompiledPolicy, FailMode, GatewayConfig, PolicyMode, ProviderApi};

use crate::admin::Metrics;
use crate::api::{ApiStyle, Endpoint};
use crate::credentials::Credentials;
use crate::genai_metrics::{MetricCatalog, OperationLabels, Outcome};
use crate::key_health::KeyHealth;
use crate::quota::{Amounts, Caller, QuotaAuthority, QuotaDecision, matching_limits};
use crate::receipts::{CheckDraft, DecisionDraft, ReceiptDraft, ReceiptSink, unix_millis};
use crate::upstream::{ProviderClient, TrustError, provider_client};
use crate::{caller, dry_run, guards};
use forward::Outgoing;
pub use forward::probe_due_keys;
use metered::{Framing, MeteredBody, Settle, Source, tap_for, ticket_finish};
use refusal::{Contact, Refusal, Refused};
use route::{Candidate, DEFAULT_OUTPUT_ESTIMATE, requested_max_tokens};
use tollgate_wire::pricing::BilledTokens;

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
    /// Which provider keys the providers refuse (see [`KeyHealth`]).
    pub key_health: KeyHealth,
    clients: HashMap<String, ProviderClient>,
    policy_hash: [u8; 32],
    /// Which config values may become metric labels.
    metric_catalog: Arc<MetricCatalog>,
}

impl Runtime {
    /// Whether this pod's policy says `failMode: open`: requests go on while
    /// receipts cannot be written.
    pub fn fails_open(&self) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|p| p.fail_mode == FailMode::Open)
    }

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
        let metric_catalog = Arc::new(MetricCatalog::new(&config));
        Ok(Self {
            metric_catalog,
            config,
            policy,
            credentials,
            key_health: KeyHealth::new(),
            clients,
            policy_hash,
        })
    }

    /// The pooled, pinned client of a live provider.
    pub fn client(&self, provider: &str) -> Option<&ProviderClient> {
        self.clients.get(provider)
    }

    /// Every provider with keys and how many, for key status.
    pub fn key_counts(&self) -> Vec<(String, u32)> {
        self.config
            .providers
            .iter()
            .map(|p| {
                let count = self.credentials.keys(&p.name).len() as u32;
                (p.name.clone(), count)
            })
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// The gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    runtime: RwLock<Arc<Runtime>>,
    quota: Arc<dyn QuotaAuthority>,
    receipts: ReceiptSink,
    identity: Identity,
    /// Temporary credentials of providers that use workload identity.
    workload_identity: crate::workload_identity::WorkloadIdentityCache,
    pub metrics: Metrics,
}

impl Gateway {
    pub fn new(
        runtime: Runtime,
        quota: Arc<dyn QuotaAuthority>,
        receipts: ReceiptSink,
        identity: Identity,
        metrics: Metrics,
    ) -> Self {
        Self {
            runtime: RwLock::new(Arc::new(runtime)),
            quota,
            receipts,
            identity,
            workload_identity: Default::default(),
            metrics,
        }
    }

    /// Temporary credentials of providers that use workload identity.
    pub fn workload_identity(&self) -> &crate::workload_identity::WorkloadIdentityCache {
        &self.workload_identity
    }

    /// The runtime in force; requests keep the one they started with.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps in a new runtime. In-flight requests finish on the old one.
    /// Refused keys stay out of routing if the new runtime holds the same key.
    pub fn swap_runtime(&self, runtime: Runtime) {
        let mut current = self.runtime.write().unwrap_or_else(|e| e.into_inner());
        let old = &current.credentials;
        runtime
            .key_health
            .carry_over(&current.key_health, |provider, index| {
                let key = |c: &Credentials| c.keys(provider).get(index as usize).cloned();
                key(old).is_some_and(|k| Some(k) == key(&runtime.credentials))
            });
        *current = Arc::new(runtime);
        drop(current);
        // A new provider or role needs credentials now, not at the next tick.
        self.workload_identity.wake();
    }

    /// Counts a finished request (which took `elapsed` from its arrival;
    /// `catalog` bounds its labels) and hands its receipt to the spool writer
    /// (see [`ReceiptSink::submit_fail_open`] for a policy that fails open).
    fn record(
        &self,
        draft: ReceiptDraft,
        fails_open: bool,
        catalog: &MetricCatalog,
        elapsed: Duration,
    ) {
        self.metrics.count(&draft);
        if let Some(outcome) = Outcome::of(&draft, catalog, elapsed) {
            self.metrics.genai.record(&outcome);
        }
        if fails_open {
            self.receipts.submit_fail_open(draft);
        } else {
            self.receipts.submit(draft);
        }
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
    } else if path.starts_with("/model/") {
        ApiStyle::Bedrock
    } else if path.starts_with("/v1beta/")
        || path.starts_with("/v1beta1/")
        || path.starts_with("/v1/projects/")
        || (path.starts_with("/v1/models/") && path.contains(':'))
    {
        ApiStyle::Gemini
    } else {
        ApiStyle::OpenAi
    }
}

/// The endpoint a request's method, path and query name, with the model and
/// API version the path names (Azure deployments, Gemini, Vertex AI and
/// Bedrock models).
fn endpoint_of(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Option<(Endpoint, Option<String>, Option<&'static str>)> {
    if let Some(endpoint) = Endpoint::from_request(method, path) {
        return Some((endpoint, None, None));
    }
    if let Some((endpoint, deployment)) = Endpoint::from_azure_path(method, path) {
        return Some((endpoint, deployment.map(str::to_string), None));
    }
    if let Some((endpoint, model)) = Endpoint::from_bedrock_path(method, path) {
        return Some((endpoint, Some(model), None));
    }
    let (endpoint, target) = Endpoint::from_gemini_path(method, path, query)
        .or_else(|| Endpoint::from_vertex_path(method, path, query))?;
    Some((
        endpoint,
        Some(target.model.to_string()),
        Some(target.version),
    ))
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
    /// The model an Azure deployment path or a Gemini path names: the model
    /// asked for, whatever the body says.
    path_model: Option<String>,
    /// The API version a Gemini or Vertex AI path names, kept upstream.
    path_version: Option<&'static str>,
    guards: Vec<&'static str>,
    checks: Vec<CheckDraft>,
    caller_hash: Option<[u8; 32]>,
    /// The client's `x-request-id` (see [`correlation_id`]).
    correlation_id: Option<Identifier>,
    /// The attempt whose forward decision is (being) written and whose
    /// receipt is not yet handed over: if the request is dropped (its
    /// client went away) the ticket's `Drop` receipts it.
    pending: std::sync::Mutex<Option<forward::Pending>>,
}

impl Ticket {
    fn new(
        gateway: Arc<Gateway>,
        runtime: Arc<Runtime>,
        endpoint: Endpoint,
        started: Instant,
    ) -> Self {
        Self {
            gateway,
            runtime,
            endpoint,
            started,
            started_at_ms: unix_millis(),
            receipt_id: uuid::Uuid::now_v7().hyphenated().to_string(),
            request_id: format!("req_{}", uuid::Uuid::now_v7().simple()),
            request_sha256: [0; 32],
            model_requested: None,
            path_model: None,
            path_version: None,
            guards: Vec::new(),
            checks: Vec::new(),
            caller_hash: None,
            correlation_id: None,
            pending: std::sync::Mutex::new(None),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<forward::Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `guard` ran and what it concluded.
    fn checked(&mut self, guard: &'static str, outcome: GuardOutcome, detail: Option<String>) {
        self.checks.push(CheckDraft {
            guard,
            outcome,
            detail,
        });
    }

    /// Records `guard` as denied, or as audit-only when the policy only
    /// audits; true when the request must be refused.
    fn guard_refuses(&mut self, guard: &'static str, audit: bool, detail: Option<String>) -> bool {
        let outcome = if audit {
            GuardOutcome::AuditOnly
        } else {
            GuardOutcome::Denied
        };
        self.checked(guard, outcome, detail);
        !audit
    }

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
            checks: self.checks.clone(),
            caller_hash: self.caller_hash,
            correlation_id: self.correlation_id.clone(),
            decision_id: None,
            status,
            request_sha256: self.request_sha256,
            response_sha256: [0; 32],
            response_length: 0,
            usage: None,
            cost_micro_usd: 0,
            pricing: None,
            upstream: None,
            quota: None,
            lane: Lane::Live,
            policy_hash: self.runtime.policy_hash,
        }
    }

    /// Refuses the request in the client's API style and records why.
    fn refuse(&self, refused: Refused) -> Response {
        let Refused {
            refusal,
            provider,
            lane,
            contact,
        } = refused;
        let body = refusal.body(self.endpoint.style());
        let status = refusal.status();
        let decision = if status >= 500 {
            Decision::Error
        } else {
            Decision::Deny
        };
        let mut draft = self.draft(decision, refusal.row().reason, status);
        if status >= 500 {
            // Failures on the gateway's or the provider's side are logged with
            // the ids that find their receipt; a client's own mistakes (4xx) are
            // in receipts and metrics only. Ids and codes only, never content.
            tracing::warn!(
                receipt_id = %self.receipt_id,
                request_id = %self.request_id,
                correlation_id = self.correlation_id.as_ref().map(Identifier::as_str),
                provider = provider.as_deref(),
                reason = refusal.row().reason,
                status,
                "request failed"
            );
        }
        draft.provider = provider;
        draft.lane = lane;
        if let Some(contact) = contact {
            let Contact {
                decision_id,
                upstream,
            } = *contact;
            draft.decision_id = decision_id;
            draft.upstream = upstream;
        }
        draft.response_sha256 = Sha256::digest(&body).into();
        draft.response_length = body.len() as u64;
        self.submit(draft);
        let mut response = refusal.response_with_body(body);
        self.tag(&mut response);
        response
    }

    /// Writes the forward decision for attempt `attempt` (to `provider` at
    /// `host`, asking for `model`) and waits until it is in the spool; its id,
    /// or `None` when it could not be written. From here until its receipt
    /// is handed over the attempt is pending (see [`Ticket::drop`]).
    fn decide(
        &self,
        attempt: usize,
        pending: forward::Pending,
        host: &str,
        model: &str,
    ) -> Option<String> {
        let id = pending.decision_id.clone();
        let provider = pending.provider.clone();
        *self.pending() = Some(pending);
        let draft = DecisionDraft {
            id: id.clone(),
            request_id: self.request_id.clone(),
            attempt: attempt as u32,
            started_at_ms: self.started_at_ms,
            decided_at_ms: unix_millis(),
            provider,
            host: host.to_owned(),
            model: model.to_owned(),
            request_sha256: self.request_sha256,
            policy_hash: self.runtime.policy_hash,
        };
        let written = self.gateway.receipts.decide(draft);
        if !written {
            *self.pending() = None;
        }
        written.then_some(id)
    }

    /// The pending attempt's receipt was handed over (submitted, or to the
    /// response's meter).
    fn answered(&self) {
        *self.pending() = None;
    }

    fn submit(&self, draft: ReceiptDraft) {
        let mut pending = self.pending();
        if pending.is_some()
            && pending.as_ref().map(|p| Some(&p.decision_id)) == Some(draft.decision_id.as_ref())
        {
            *pending = None;
        }
        drop(pending);
        self.gateway.record(
            draft,
            self.runtime.fails_open(),
            &self.runtime.metric_catalog,
            self.started.elapsed(),
        );
    }

    /// A clock for the chunks of a streamed answer from `provider`; `None`
    /// when the answer is not streamed or the endpoint is no inference.
    fn chunk_clock(
        &self,
        provider: &str,
        streamed: bool,
    ) -> Option<crate::genai_metrics::ChunkClock> {
        if !streamed {
            return None;
        }
        let labels = OperationLabels::new(
            &self.runtime.metric_catalog,
            self.endpoint,
            Some(provider),
            self.model_requested.as_deref(),
        )?;
        Some(
            self.gateway
                .metrics
                .genai
                .chunk_clock(&labels, self.started),
        )
    }

    fn tag(&self, response: &mut Response) {
        if let Ok(v) = HeaderValue::from_str(&self.receipt_id) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-tollgate-receipt-id"), v);
        }
    }

    /// Lists the models the policy allows, and records the listing.
    fn answer_models(mut self, headers: &HeaderMap) -> Response {
        self.request_sha256 = Sha256::digest(b"").into();
        let body = route::list_models(&self.runtime, headers);
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

impl Drop for Ticket {
    /// A request dropped between its forward decision and its receipt (the
    /// client went away while the provider was being asked): receipted as
    /// `client_disconnected`, so no decision is left unanswered.
    fn drop(&mut self) {
        let Some(pending) = self.pending().take() else {
            return;
        };
        let mut draft = self.draft(Decision::Error, "client_disconnected", 499);
        let forward::Pending {
            decision_id,
            provider,
            upstream,
            connection,
        } = pending;
        draft.provider = Some(provider);
        draft.decision_id = Some(decision_id);
        draft.upstream = connection.and_then(|c| forward::with_fingerprint(&c, upstream));
        draft.response_sha256 = Sha256::digest(b"").into();
        self.gateway.record(
            draft,
            self.runtime.fails_open(),
            &self.runtime.metric_catalog,
            self.started.elapsed(),
        );
    }
}

/// Phase 1, admit: refusals here write no receipt (the path is not a model
/// call, or the receipt could not be written).
async fn handle(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let started = Instant::now();
    let path = request.uri().path();
    let Some((endpoint, path_model, path_version)) =
        endpoint_of(request.method(), path, request.uri().query())
    else {
        return Refusal::PathNotServed.response(style_for_path(path));
    };
    let runtime = gateway.runtime();
    if !gateway.receipts.status.accepting() && !runtime.fails_open() {
        return Refusal::SpoolUnavailable.response(endpoint.style());
    }
    let (parts, body) = request.into_parts();
    let mut ticket = Ticket::new(gateway, runtime, endpoint, started);
    ticket.path_model = path_model;
    ticket.path_version = path_version;
    match correlation_id(&parts.headers) {
        Ok(id) => ticket.correlation_id = id,
        Err(refusal) => return ticket.refuse(refusal.into()),
    }
    if endpoint == Endpoint::Models {
        return ticket.answer_models(&parts.headers);
    }
    match serve(&mut ticket, &parts.headers, body).await {
        Ok(response) => response,
        Err(refused) => ticket.refuse(refused),
    }
}

/// The header a client names its request with, for its own logs.
pub const CORRELATION_HEADER: &str = "x-request-id";

/// The client's correlation id: its `x-request-id` header, which the receipt
/// keeps so receipts can be joined with the app's logs. Absent is fine; one
/// that is not an identifier (1 to 128 of `A-Za-z0-9._:/@+=-`), or sent
/// twice, is refused rather than dropped, so a receipt never silently loses
/// the id the app will look it up by.
fn correlation_id(headers: &HeaderMap) -> Result<Option<Identifier>, Refusal> {
    let mut values = headers.get_all(CORRELATION_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::InvalidRequestId);
    }
    let text = value.to_str().map_err(|_| Refusal::InvalidRequestId)?;
    Identifier::new(text)
        .map(Some)
        .map_err(|_| Refusal::InvalidRequestId)
}

/// Phases 2 to 7 for a model call under the pod's policy.
async fn serve(ticket: &mut Ticket, headers: &HeaderMap, body: Body) -> Result<Response, Refused> {
    let runtime = ticket.runtime.clone();
    let policy = runtime.policy.as_ref().ok_or(Refusal::NoPolicy)?;
    let bytes = read_body(policy, body).await?;
    ticket.request_sha256 = Sha256::digest(&bytes).into();
    let json = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Err(Refusal::MalformedJson.into()),
    };
    // In audit mode every policy refusal becomes a guard code on a forwarded
    // request: the receipt records the would-deny, the client sees no change.
    let audit = policy.mode == PolicyMode::Audit;
    check_guards(ticket, policy, &bytes, audit)?;
    ticket.caller_hash = runtime
        .credentials
        .caller_key()
        .and_then(|key| caller::caller_hash(key, headers, &json, ticket.endpoint.style()));
    // An Azure-style path names the deployment, which is what Azure serves
    // whatever the body says; the body's `model` is made to agree. A Gemini
    // path names the model, and the body must not name another.
    route::check_body_shape(ticket.endpoint, &json)?;
    if ticket.endpoint.style() == ApiStyle::Gemini {
        let path_model = ticket.path_model.as_deref().unwrap_or_default();
        route::check_gemini_body_models(ticket.endpoint, path_model, &json)?;
    }
    let requested = match &ticket.path_model {
        Some(model) => model.clone(),
        None => json
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(Refusal::ModelMissing)?,
    };
    ticket.model_requested = Some(requested.clone());
    let routed = route_request(ticket, &runtime.config, policy, &requested, (bytes, json))?;
    let first = &routed.candidates[0];
    let settle = reserve_quota(
        ticket,
        first,
        &routed.outgoing.json,
        routed.asked,
        routed.lane,
    )
    .await?;
    if routed.lane == Lane::DryRun {
        return Ok(answer_dry_run(ticket, first, routed.outgoing, settle));
    }
    forward::forward(
        ticket,
        headers,
        routed.outgoing,
        &routed.candidates,
        policy,
        settle,
    )
    .await
}

/// Phase 2: the body, bounded by the policy.
async fn read_body(policy: &CompiledPolicy, body: Body) -> Result<Bytes, Refusal> {
    let limit = policy.max_request_bytes as usize;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Refusal::RequestTooLarge { limit })
        }
        Err(_) => Err(Refusal::BodyUnreadable),
    }
}

/// Phase 3: a secret in the request is refused, or only recorded in audit mode.
fn check_guards(
    ticket: &mut Ticket,
    policy: &CompiledPolicy,
    bytes: &[u8],
    audit: bool,
) -> Result<(), Refusal> {
    if !policy.block_secrets {
        return Ok(());
    }
    let Some(secret) = guards::find_secret(bytes) else {
        ticket.checked("secret_scan", GuardOutcome::Passed, None);
        return Ok(());
    };
    let guard = secret.code();
    ticket.guards.push(guard);
    if ticket.guard_refuses("secret_scan", audit, Some(guard.to_owned())) {
        return Err(Refusal::SecretInRequest { guard });
    }
    ticket.guards.push("audit.secret_in_request");
    Ok(())
}

/// Where a request goes and what it asks for, after routing.
struct Routed<'a> {
    /// Never empty.
    candidates: Vec<Candidate<'a>>,
    lane: Lane,
    /// The output tokens the client asked for, if it said.
    asked: Option<u64>,
    outgoing: Outgoing,
}

/// Phase 4: the candidates the policy allows, and the policy's token cap
/// applied to the request (refused when over it, filled in when missing).
fn route_request<'a>(
    ticket: &mut Ticket,
    config: &'a GatewayConfig,
    policy: &'a CompiledPolicy,
    requested: &str,
    (original, mut json): (Bytes, Value),
) -> Result<Routed<'a>, Refused> {
    let endpoint = ticket.endpoint;
    let audit = policy.mode == PolicyMode::Audit;
    let mut candidates = route::candidates(config, policy, endpoint, requested, true);
    if candidates.is_empty() && audit {
        candidates = route::candidates(config, policy, endpoint, requested, false);
        if !candidates.is_empty() {
            ticket.guards.push("audit.model_not_allowed");
            ticket.guard_refuses("model_allowlist", true, None);
        }
    } else if !candidates.is_empty() {
        ticket.checked("model_allowlist", GuardOutcome::Passed, None);
    }
    let Some(first) = candidates.first() else {
        ticket.guard_refuses("model_allowlist", false, None);
        return Err(Refusal::ModelNotAllowed {
            model: requested.to_owned(),
        }
        .into());
    };
    let lane = if first.provider.api == ProviderApi::DryRun {
        Lane::DryRun
    } else {
        Lane::Live
    };
    let asked = requested_max_tokens(endpoint, &json);
    if let Some(cap) = first.max_tokens {
        let detail = Some(format!("max_tokens.{cap}"));
        if asked.is_some_and(|asked| asked > u64::from(cap)) {
            if ticket.guard_refuses("max_tokens", audit, detail) {
                let asked = asked.unwrap_or_default();
                return Err(
                    Refusal::MaxTokensOverPolicy { asked, cap }.at(&first.provider.name, lane)
                );
            }
            ticket.guards.push("audit.max_tokens_over_policy");
        } else {
            ticket.checked("max_tokens", GuardOutcome::Passed, detail);
        }
    }
    let mut rewrite = false;
    if asked.is_none()
        && let Some(cap) = first.max_tokens
    {
        rewrite = route::set_max_tokens(endpoint, &mut json, cap);
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
    Ok(Routed {
        candidates,
        lane,
        asked,
        outgoing: Outgoing {
            json,
            original,
            rewrite,
            strip_injected_usage,
        },
    })
}

/// Phase 5: reserves an estimate against every quota that applies, before
/// anything goes upstream. Counting tokens is free: one request, no tokens.
async fn reserve_quota(
    ticket: &mut Ticket,
    first: &Candidate<'_>,
    json: &Value,
    asked: Option<u64>,
    lane: Lane,
) -> Result<Settle, Refused> {
    let gateway = ticket.gateway.clone();
    let provider = first.provider.name.as_str();
    let estimate = if ticket.endpoint.counts_tokens() {
        Amounts {
            requests: 1,
            ..Amounts::default()
        }
    } else {
        let input = dry_run::estimate_input_tokens(ticket.endpoint, json);
        let output = if ticket.endpoint.embeds() {
            0
        } else {
            asked
                .or(first.max_tokens.map(u64::from))
                .unwrap_or(DEFAULT_OUTPUT_ESTIMATE)
        };
        Amounts {
            tokens: input + output,
            requests: 1,
            cost_micro_usd: first
                .model
                .pricing
                .pricing()
                .choose(None, input)
                .prices
                .cost(&BilledTokens {
                    input,
                    output,
                    ..BilledTokens::default()
                }),
        }
    };
    let caller = Caller {
        service_account: gateway.identity.service_account.clone(),
        pod_labels: gateway.identity.pod_labels.clone(),
    };
    let limits = matching_limits(&ticket.runtime.config, &caller, provider, &first.model.name);
    let now_secs = ticket.started_at_ms / 1000;
    let reservation = match gateway.quota.reserve(&limits, estimate, now_secs).await {
        QuotaDecision::Allow(reservation) => reservation,
        QuotaDecision::Unavailable { quota_id, limit } => {
            ticket.guard_refuses("quota", false, Some("authority_unavailable".into()));
            return Err(Refusal::QuotaAuthorityUnavailable { quota_id, limit }.at(provider, lane));
        }
        QuotaDecision::Deny {
            quota_id,
            limit,
            retry_after_secs,
        } => {
            ticket.guard_refuses("quota", false, Some(limit.clone()));
            return Err(Refusal::QuotaExceeded {
                quota_id,
                limit,
                retry_after_secs,
            }
            .at(provider, lane));
        }
    };
    if reservation.shadow_denied {
        ticket.guards.push("quota.shadow_exceeded");
        ticket.guard_refuses("quota", true, Some("shadow".into()));
    } else if !limits.is_empty() {
        ticket.checked("quota", GuardOutcome::Passed, None);
    }
    Ok(Settle::new(
        gateway.quota.clone(),
        reservation,
        estimate,
        now_secs,
    ))
}

/// Phase 6, dry-run lane: the deterministic answer, metered like a live one.
fn answer_dry_run(
    ticket: &Ticket,
    first: &Candidate<'_>,
    mut outgoing: Outgoing,
    settle: Settle,
) -> Response {
    let endpoint = ticket.endpoint;
    outgoing.json["model"] = Value::from(first.model.name.clone());
    let answer = dry_run::respond(endpoint, &first.model.name, &outgoing.json);
    let frames: VecDeque<Bytes> = match answer.body {
        dry_run::DryRunBody::Json(b) => VecDeque::from([b]),
        dry_run::DryRunBody::Events(events) => events.into(),
    };
    let mut draft = ticket.draft(Decision::Allow, "allowed", answer.status);
    draft.provider = Some(first.provider.name.clone());
    draft.model_served = Some(first.model.name.clone());
    draft.lane = Lane::DryRun;
    let framing = Framing::of(answer.content_type);
    let metered = MeteredBody::new(
        Source::Frames(frames),
        tap_for(endpoint, framing, outgoing.strip_injected_usage),
        draft,
        ticket_finish(ticket, first.model.pricing.clone(), settle),
        None,
    )
    .with_chunk_clock(ticket.chunk_clock(&first.provider.name, framing.streams()));
    let mut response = Response::new(Body::new(metered));
    *response.status_mut() =
        http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    ticket.tag(&mut response);
    response
}
