//! Forwarding to a live provider: one attempt per candidate in policy order,
//! failing over (when the policy allows it) on errors that happened before the
//! provider answered, on 429 and on 5xx. Each attempt strips the client's
//! credentials, injects the provider key the routing formula picks, and
//! requires the provider's TLS leaf fingerprint for the receipt.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::Full;
use hyper_util::client::legacy::connect::{CaptureConnection, capture_connection};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_evidence::{Decision, Lane};
use tollgate_wire::config::{CompiledPolicy, FailMode, ProviderApi};

use super::metered::{Framing, MeteredBody, Settle, Source, tap_for, ticket_finish};
use super::refusal::{Contact, Refusal, Refused};
use super::route::{Candidate, rewrite_gemini_body_models, unwrap_count_request_for_vertex};
use super::{Gateway, Runtime, Ticket};
use crate::api::ApiStyle;
use crate::aws_signing;
use crate::credentials::choose_key_index;
use crate::receipts::{UpstreamFacts, unix_millis};
use crate::upstream::{TlsFingerprint, connect_error};
use crate::workload_identity::Issued;

/// The request as it leaves for the provider: its JSON (which routing may have
/// rewritten), the bytes the client sent, and whether they must be re-encoded.
pub(super) struct Outgoing {
    pub json: Value,
    pub original: Bytes,
    pub rewrite: bool,
    /// The gateway asked for usage in the stream; the client did not, so the
    /// usage chunk is taken out again.
    pub strip_injected_usage: bool,
}

/// An attempt that failed before the provider answered.
struct Failure {
    refusal: Refusal,
    /// Whether the next candidate may be tried (the provider did not take it).
    may_fail_over: bool,
    /// Set when the request had been sent upstream.
    contact: Option<Box<Contact>>,
}

impl Failure {
    fn final_(refusal: Refusal) -> Self {
        Self {
            refusal,
            may_fail_over: false,
            contact: None,
        }
    }

    fn retryable(refusal: Refusal) -> Self {
        Self {
            refusal,
            may_fail_over: true,
            contact: None,
        }
    }

    fn after(mut self, contact: Contact) -> Self {
        self.contact = Some(Box::new(contact));
        self
    }
}

/// An attempt between its forward decision and its receipt, as the ticket
/// keeps it in case the request is dropped.
pub(super) struct Pending {
    pub decision_id: String,
    pub provider: String,
    /// The upstream facts without the fingerprint.
    pub upstream: UpstreamFacts,
    /// The connection the request went out on, once sent.
    pub connection: Option<CaptureConnection>,
}

/// `upstream` with the fingerprint of the connection `connection` captured,
/// if a TLS connection was made (else nothing left the gateway).
pub(super) fn with_fingerprint(
    connection: &CaptureConnection,
    upstream: UpstreamFacts,
) -> Option<UpstreamFacts> {
    let metadata = connection.connection_metadata();
    let connected = metadata.as_ref()?;
    let mut extensions = http::Extensions::new();
    connected.get_extras(&mut extensions);
    fingerprint_of(&extensions).map(|fingerprint| UpstreamFacts {
        tls_cert_sha256: Some(fingerprint),
        ..upstream
    })
}

/// What one attempt's provider answered, with what the receipt needs of it.
struct Answered {
    response: http::Response<hyper::body::Incoming>,
    /// The decision it went upstream under, and the upstream facts without
    /// the TLS fingerprint (read from the response).
    decision_id: Option<String>,
    upstream: UpstreamFacts,
}

impl Answered {
    /// The upstream facts with the fingerprint of the connection that answered.
    fn upstream(&self) -> UpstreamFacts {
        UpstreamFacts {
            tls_cert_sha256: fingerprint_of(self.response.extensions()),
            ..self.upstream.clone()
        }
    }

    fn contact(&self) -> Contact {
        Contact {
            decision_id: self.decision_id.clone(),
            upstream: Some(self.upstream()).filter(|u| u.tls_cert_sha256.is_some()),
        }
    }
}

fn fingerprint_of(extensions: &http::Extensions) -> Option<[u8; 32]> {
    extensions.get::<TlsFingerprint>().map(|f| f.0)
}

/// Tries `candidates` in order and streams back the first answer it keeps.
/// Every attempt that went upstream is receipted: the ones given up for the
/// next candidate as they end, the last one by the response's meter (or its
/// refusal).
pub(super) async fn forward(
    ticket: &Ticket,
    client_headers: &HeaderMap,
    mut outgoing: Outgoing,
    candidates: &[Candidate<'_>],
    policy: &CompiledPolicy,
    settle: Settle,
) -> Result<Response, Refused> {
    for (attempt, candidate) in candidates.iter().enumerate() {
        let provider = candidate.provider.name.as_str();
        let failover = policy.failover && attempt + 1 < candidates.len();
        let upstream_model = candidate.model.upstream_name();
        if ticket.endpoint.style() == ApiStyle::Gemini {
            // The path names the model; a body that names it too is made
            // to agree.
            let name = match &candidate.provider.vertex {
                Some(target) => format!(
                    "projects/{}/locations/{}/publishers/google/models/{upstream_model}",
                    target.project, target.location
                ),
                None => format!("models/{upstream_model}"),
            };
            outgoing.rewrite |= rewrite_gemini_body_models(&mut outgoing.json, &name);
        } else if ticket.endpoint.style() == ApiStyle::Bedrock {
            // The path names the model, and Bedrock refuses a body that
            // names one (an extraneous key). A count goes as the JSON the
            // shape check read: with duplicate keys, the bytes could carry
            // another `input` than the one checked.
            outgoing.rewrite |= ticket.endpoint == crate::api::Endpoint::BedrockCountTokens;
        } else if outgoing.json.get("model").and_then(Value::as_str) != Some(upstream_model) {
            outgoing.json["model"] = Value::from(upstream_model);
            outgoing.rewrite = true;
        }
        // Vertex AI counts without the Gemini API's wrapper: unwrapped in a
        // copy, so a failover to a Gemini API provider gets the body as sent.
        let unwrapped = (candidate.provider.api == ProviderApi::Vertex
            && ticket.endpoint == crate::api::Endpoint::GeminiCountTokens)
            .then(|| {
                let mut json = outgoing.json.clone();
                unwrap_count_request_for_vertex(&mut json).then_some(json)
            })
            .flatten();
        let body = if let Some(json) = &unwrapped {
            Bytes::from(serde_json::to_vec(json).unwrap_or_default())
        } else if outgoing.rewrite {
            Bytes::from(serde_json::to_vec(&outgoing.json).unwrap_or_default())
        } else {
            outgoing.original.clone()
        };
        let answered =
            match attempt_once(ticket, client_headers, policy, attempt, candidate, body).await {
                Ok(answered) => answered,
                Err(failure) if failure.may_fail_over && failover => {
                    if let Some(contact) = failure.contact {
                        let status = failure.refusal.status();
                        let reason = failure.refusal.row().reason;
                        record_given_up(ticket, candidate, status, reason, *contact);
                    }
                    continue;
                }
                Err(failure) => {
                    return Err(failure
                        .refusal
                        .at(provider, Lane::Live)
                        .after(failure.contact));
                }
            };
        let status = answered.response.status();
        if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) && failover {
            let contact = answered.contact();
            record_given_up(
                ticket,
                candidate,
                status.as_u16(),
                upstream_reason(status),
                contact,
            );
            continue;
        }
        return stream_back(
            ticket,
            answered,
            candidate,
            outgoing.strip_injected_usage,
            settle,
        )
        .map_err(|(refusal, contact)| refusal.at(provider, Lane::Live).after(Some(contact)));
    }
    Err(Refusal::NoProviderAvailable.into())
}

/// The reason code of an attempt given up for the next candidate:
/// `failed_over.` and why. Usage and reconciliation count requests, not these
/// attempts (the request's final receipt counts it).
fn failed_over(reason: &str) -> &'static str {
    match reason {
        "upstream_429" => "failed_over.upstream_429",
        "upstream_4xx" => "failed_over.upstream_4xx",
        "upstream_5xx" => "failed_over.upstream_5xx",
        "upstream_timeout" => "failed_over.upstream_timeout",
        "upstream_failed" => "failed_over.upstream_failed",
        "upstream_connect_failed" => "failed_over.upstream_connect_failed",
        "upstream_tls_refused" => "failed_over.upstream_tls_refused",
        "upstream_host_not_allowed" => "failed_over.upstream_host_not_allowed",
        _ => "failed_over",
    }
}

/// The receipt of an attempt given up for the next candidate: an error with
/// the provider's side as far as it is known, under its own id, linked to its
/// forward decision. The client saw nothing of it.
fn record_given_up(
    ticket: &Ticket,
    candidate: &Candidate<'_>,
    status: u16,
    reason: &'static str,
    contact: Contact,
) {
    let mut draft = ticket.draft(Decision::Error, failed_over(reason), status);
    draft.id = uuid::Uuid::now_v7().hyphenated().to_string();
    draft.provider = Some(candidate.provider.name.clone());
    draft.response_sha256 = Sha256::digest(b"").into();
    draft.decision_id = contact.decision_id;
    draft.upstream = contact.upstream;
    ticket.submit(draft);
    ticket.answered();
}

/// Sends the request to one candidate and waits for the answer's headers. The
/// forward decision is written first; nothing leaves without it.
async fn attempt_once(
    ticket: &Ticket,
    client_headers: &HeaderMap,
    policy: &CompiledPolicy,
    attempt: usize,
    candidate: &Candidate<'_>,
    body: Bytes,
) -> Result<Answered, Failure> {
    let provider = candidate.provider;
    let keys = ticket.runtime.credentials.keys(&provider.name);
    if provider.credentials.is_some() && keys.is_empty() {
        return Err(Failure::retryable(Refusal::CredentialsUnavailable {
            provider: provider.name.clone(),
        }));
    }
    // Route over the keys the provider has not refused; the receipt records
    // the index into that set and its size.
    let routable = ticket
        .runtime
        .key_health
        .routable(&provider.name, keys.len() as u32);
    let key_count = routable.len().max(1) as u32;
    let key_index = choose_key_index(
        &candidate.model.name,
        &ticket.request_sha256,
        &ticket.gateway.identity.node_id,
        key_count,
    );
    let key_used = routable.get(key_index as usize);
    let misconfigured = || {
        Failure::final_(Refusal::ProviderMisconfigured {
            provider: provider.name.clone(),
        })
    };
    let base = provider.base_url.as_deref().ok_or_else(misconfigured)?;
    let upstream_model = candidate.model.upstream_name();
    let path = match provider.api {
        ProviderApi::AzureOpenai => provider
            .azure_api_version
            .as_deref()
            .and_then(|version| ticket.endpoint.azure_path(upstream_model, version)),
        ProviderApi::Bedrock => ticket.endpoint.bedrock_path(upstream_model),
        ProviderApi::Gemini => ticket
            .endpoint
            .gemini_path(upstream_model, ticket.path_version.unwrap_or("v1beta")),
        ProviderApi::Vertex => provider.vertex.as_ref().and_then(|target| {
            ticket.endpoint.vertex_path(
                target,
                upstream_model,
                ticket.path_version.unwrap_or("v1beta1"),
            )
        }),
        ProviderApi::Openai | ProviderApi::Anthropic | ProviderApi::DryRun => {
            Some(ticket.endpoint.path().to_string())
        }
    }
    .ok_or_else(misconfigured)?;
    let uri = format!("{}{}", base.trim_end_matches('/'), path);
    let host = uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_default();
    let style = ticket.endpoint.style();
    let unavailable = || {
        Failure::retryable(Refusal::CredentialsUnavailable {
            provider: provider.name.clone(),
        })
    };
    // A bearer token from workload identity (Vertex AI, Azure OpenAI), if
    // the provider uses one; none yet fails closed.
    let bearer = match crate::workload_identity::sends_bearer(provider) {
        true => Some(
            ticket
                .gateway
                .workload_identity()
                .bearer(provider, unix_millis())
                .ok_or_else(unavailable)?,
        ),
        false => None,
    };
    // The workload identity credentials this request goes with, if any: a
    // refusal of them asks for new ones.
    let mut used = bearer.clone().map(Issued::Bearer);
    let mut request = http::Request::post(&uri);
    if let Some(headers) = request.headers_mut() {
        copy_forwarded_headers(client_headers, headers, style, &policy.header_allowlist);
        if let Some(token) = &bearer {
            set_bearer(headers, token).map_err(|()| unavailable())?;
        } else if provider.api == ProviderApi::Bedrock {
            // Bedrock takes no key header: the whole request is signed below.
        } else if let Some(key) = key_used.and_then(|i| keys.get(i as usize)) {
            set_key(headers, provider.api, key);
        }
    }
    if provider.api == ProviderApi::Bedrock {
        // Temporary credentials from web identity, or the routed static key.
        let credentials = if provider.web_identity.is_some() {
            ticket
                .gateway
                .workload_identity()
                .aws(provider, unix_millis())
                .inspect(|credentials| used = Some(Issued::Aws(credentials.clone())))
        } else {
            key_used
                .and_then(|i| keys.get(i as usize))
                .and_then(|key| aws_signing::AwsCredentials::from_key(key).ok())
        };
        let region = provider.aws_region.as_deref().unwrap_or_default();
        let signed = credentials
            .map(|credentials| aws_signing::sign(&mut request, &body, &credentials, region));
        if !matches!(signed, Some(Ok(()))) {
            return Err(unavailable());
        }
    }
    let mut request = request
        .body(Full::new(body))
        .map_err(|_| Failure::final_(Refusal::RequestBuildFailed))?;
    let client = ticket
        .runtime
        .clients
        .get(&provider.name)
        .ok_or(Failure::final_(Refusal::ProviderClientMissing))?;
    let upstream = UpstreamFacts {
        host: host.clone(),
        tls_cert_sha256: None,
        provider_request_id: None,
        key_index,
        key_count,
        key_route: Some((
            candidate.model.name.clone(),
            ticket.gateway.identity.node_id.clone(),
        )),
    };
    let pending = Pending {
        decision_id: uuid::Uuid::now_v7().hyphenated().to_string(),
        provider: provider.name.clone(),
        upstream: upstream.clone(),
        connection: None,
    };
    let decision_id = match ticket.decide(attempt, pending, &host, &candidate.model.name) {
        Some(id) => Some(id),
        // The policy chose availability over evidence: the request goes on
        // without a decision (its receipt still follows, if it can).
        None if policy.fail_mode == FailMode::Open => None,
        None => return Err(Failure::final_(Refusal::SpoolUnavailable)),
    };
    // The connection's TLS fingerprint, for receipts of attempts that fail
    // after the request was sent (a timeout, a reset, a dropped client).
    let connection = capture_connection(&mut request);
    if let Some(pending) = ticket.pending().as_mut() {
        pending.connection = Some(connection.clone());
    }
    let contact = |connection: &CaptureConnection| Contact {
        decision_id: decision_id.clone(),
        upstream: with_fingerprint(connection, upstream.clone()),
    };
    let first_byte = Duration::from_millis(u64::from(provider.first_byte_timeout_ms));
    let response = match tokio::time::timeout(first_byte, client.request(request)).await {
        Err(_) => {
            return Err(Failure::retryable(Refusal::UpstreamTimeout {
                provider: provider.name.clone(),
                first_byte_timeout_ms: provider.first_byte_timeout_ms,
            })
            .after(contact(&connection)));
        }
        Ok(Err(err)) => {
            let refusal = match connect_error(&err) {
                Some(e) => Refusal::UpstreamConnect(e.clone()),
                None => Refusal::UpstreamFailed {
                    provider: provider.name.clone(),
                },
            };
            return Err(Failure::retryable(refusal).after(contact(&connection)));
        }
        Ok(Ok(response)) => response,
    };
    if let Some(used) = &used
        && ticket.gateway.workload_identity().refused(
            provider,
            used,
            response.status(),
            unix_millis(),
        )
    {
        // The provider refused the temporary credentials (revoked session,
        // expired token): trade again rather than keep failing with them.
        tracing::warn!(provider = %provider.name, status = response.status().as_u16(), "the provider refused the workload identity credentials; trading again");
    }
    if let Some(index) = key_used
        && ticket
            .runtime
            .key_health
            .answered(&provider.name, index, response.status(), unix_millis())
            .is_some()
    {
        tracing::warn!(
            provider = %provider.name,
            key = index,
            status = response.status().as_u16(),
            "the provider refused a key; requests use its other keys until a probe succeeds"
        );
    }
    Ok(Answered {
        response,
        decision_id,
        upstream,
    })
}

/// Turns the provider's answer into the client's response, metered. A
/// redirect or a connection without a TLS fingerprint is refused instead,
/// with what the receipt keeps of the contact.
fn stream_back(
    ticket: &Ticket,
    answered: Answered,
    candidate: &Candidate<'_>,
    strip_injected_usage: bool,
    settle: Settle,
) -> Result<Response, (Refusal, Box<Contact>)> {
    let provider = candidate.provider;
    let status = answered.response.status();
    if status.is_redirection() {
        let refusal = Refusal::UpstreamRedirect {
            provider: provider.name.clone(),
        };
        return Err((refusal, Box::new(answered.contact())));
    }
    let upstream_facts = answered.upstream();
    if upstream_facts.tls_cert_sha256.is_none() {
        return Err((Refusal::TlsFingerprintMissing, Box::new(answered.contact())));
    }
    let upstream = answered.response;
    let framing = Framing::of(
        upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let (decision, reason) = if status.is_success() {
        (Decision::Allow, "allowed")
    } else {
        (Decision::Error, upstream_reason(status))
    };
    let mut draft = ticket.draft(decision, reason, status.as_u16());
    draft.provider = Some(provider.name.clone());
    draft.model_served = Some(candidate.model.name.clone());
    draft.first_byte_ms = Some(ticket.started.elapsed().as_millis() as u64);
    draft.decision_id = answered.decision_id;
    draft.upstream = Some(UpstreamFacts {
        // Bedrock names its request in a header only (and the model body's
        // id is the model's, not AWS's).
        provider_request_id: upstream
            .headers()
            .get("x-amzn-requestid")
            .filter(|_| provider.api == ProviderApi::Bedrock)
            .and_then(|v| v.to_str().ok())
            .filter(|id| tollgate_evidence::Identifier::new(*id).is_ok())
            .map(str::to_string),
        ..upstream_facts
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("request-id"),
        HeaderName::from_static("x-amzn-requestid"),
    ] {
        if let Some(v) = upstream.headers().get(&name) {
            response.headers_mut().insert(name, v.clone());
        }
    }
    ticket.tag(&mut response);
    let idle = Duration::from_millis(u64::from(provider.idle_timeout_ms));
    // A provider's error body can quote the key it refused: it reaches the
    // app scrubbed, never verbatim.
    let source = if status.is_success() {
        Source::Upstream(upstream.into_body())
    } else {
        Source::Scrubbed {
            body: upstream.into_body(),
            held: Vec::new(),
            done: false,
        }
    };
    let metered = MeteredBody::new(
        source,
        tap_for(
            ticket.endpoint,
            framing,
            strip_injected_usage && status.is_success(),
        ),
        draft,
        ticket_finish(ticket, candidate.model.pricing.clone(), settle),
        Some(idle),
    )
    .with_chunk_clock(ticket.chunk_clock(&provider.name, framing.streams() && status.is_success()));
    *response.body_mut() = Body::new(metered);
    // The meter writes the receipt now, however the response ends.
    ticket.answered();
    Ok(response)
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
        ApiStyle::Gemini => &["accept", "user-agent", "x-goog-api-client"],
        // Not the SDK's user agent: every forwarded header but it is signed.
        ApiStyle::Bedrock => &[
            "accept",
            "x-amzn-bedrock-trace",
            "x-amzn-bedrock-guardrailidentifier",
            "x-amzn-bedrock-guardrailversion",
            "x-amzn-bedrock-performanceconfig-latency",
        ],
    };
    for name in own
        .iter()
        .copied()
        .chain(allowlist.iter().map(String::as_str))
    {
        if matches!(
            name,
            "authorization"
                | "x-api-key"
                | "api-key"
                | "x-goog-api-key"
                // Names the Google project billed: the provider's choice.
                | "x-goog-user-project"
                | "x-amz-security-token"
                | "x-amz-date"
                | "x-amz-content-sha256"
                | "proxy-authorization"
                | "cookie"
                | "host"
                | crate::caller::CALLER_HEADER
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

/// Sets `key` as the credential header `api` expects (OpenAI: a bearer
/// token; Anthropic: `x-api-key`; Azure OpenAI: `api-key`; Gemini and
/// Vertex AI API keys: `x-goog-api-key`), marked sensitive
/// so no log or debug output shows it.
fn set_key(headers: &mut HeaderMap, api: ProviderApi, key: &crate::credentials::ApiKey) {
    let (name, value) = match api {
        ProviderApi::Anthropic => (
            HeaderName::from_static("x-api-key"),
            key.expose().to_string(),
        ),
        ProviderApi::AzureOpenai => (HeaderName::from_static("api-key"), key.expose().to_string()),
        ProviderApi::Gemini | ProviderApi::Vertex => (
            HeaderName::from_static("x-goog-api-key"),
            key.expose().to_string(),
        ),
        ProviderApi::Openai | ProviderApi::Bedrock | ProviderApi::DryRun => {
            (header::AUTHORIZATION, format!("Bearer {}", key.expose()))
        }
    };
    if let Ok(mut value) = HeaderValue::from_str(&value) {
        value.set_sensitive(true);
        headers.insert(name, value);
    }
}

/// Sets an OAuth access token from workload identity, marked sensitive;
/// `Err` if it cannot be a header (the request then fails closed).
fn set_bearer(headers: &mut HeaderMap, token: &crate::credentials::ApiKey) -> Result<(), ()> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| ())?;
    value.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, value);
    Ok(())
}

/// How long a key probe may take, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Probes every refused key whose probe is due: `GET /v1/models` with that
/// key, through the provider's pinned client. At most one probe per key is
/// in flight. The answer goes to the runtime in force when it arrives (a
/// config swap during the probe carries the key's state over).
pub async fn probe_due_keys(gateway: &Gateway) {
    probe_due_keys_at(gateway, unix_millis()).await;
}

/// [`probe_due_keys`] as of `now_ms`.
pub(super) async fn probe_due_keys_at(gateway: &Gateway, now_ms: u64) {
    let runtime = gateway.runtime();
    let due = runtime.key_health.due_probes(now_ms);
    let probes = due.into_iter().map(|(provider, index)| {
        let runtime = runtime.clone();
        async move {
            let started = std::time::Instant::now();
            let status = probe_key(&runtime, &provider, index).await;
            let answered_ms = now_ms.saturating_add(started.elapsed().as_millis() as u64);
            gateway
                .runtime()
                .key_health
                .probed(&provider, index, status, answered_ms);
            match status {
                Some(s) if s.is_success() => {
                    tracing::info!(provider = %provider, key = index, "a refused key works again; it is back in routing");
                }
                _ => tracing::debug!(provider = %provider, key = index, status = ?status.map(|s| s.as_u16()), "key probe: still out"),
            }
        }
    });
    futures::future::join_all(probes).await;
}

async fn probe_key(runtime: &Runtime, provider: &str, index: u32) -> Option<http::StatusCode> {
    let config = runtime
        .config
        .providers
        .iter()
        .find(|p| p.name == provider)?;
    let key = runtime.credentials.keys(provider).get(index as usize)?;
    let client = runtime.clients.get(provider)?;
    let base = config.base_url.as_deref()?;
    if config.api == ProviderApi::Bedrock {
        return probe_bedrock_key(client, config, base, key).await;
    }
    if config.api == ProviderApi::Vertex {
        return probe_vertex_key(client, config, base, key).await;
    }
    // A listing that costs no tokens: the models (Azure: of the resource).
    let path = match (config.api, config.azure_api_version.as_deref()) {
        (ProviderApi::AzureOpenai, Some("v1")) => "/openai/v1/models".to_string(),
        (ProviderApi::AzureOpenai, Some(version)) => {
            format!("/openai/models?api-version={version}")
        }
        (ProviderApi::Gemini, _) => "/v1beta/models".to_string(),
        _ => "/v1/models".to_string(),
    };
    let mut request = http::Request::get(format!("{}{path}", base.trim_end_matches('/')));
    if let Some(headers) = request.headers_mut() {
        set_key(headers, config.api, key);
        if config.api == ProviderApi::Anthropic {
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01"),
            );
        }
    }
    probe_status(client, request.body(Full::new(Bytes::new())).ok()?).await
}

/// Vertex AI lists no models for an API key, so its probe counts the tokens
/// of one word with the first model: it authenticates and costs nothing.
async fn probe_vertex_key(
    client: &crate::upstream::ProviderClient,
    config: &tollgate_wire::config::CompiledProvider,
    base: &str,
    key: &crate::credentials::ApiKey,
) -> Option<http::StatusCode> {
    let model = config.models.first()?;
    let target = config.vertex.as_ref()?;
    let path =
        crate::api::Endpoint::GeminiCountTokens.vertex_path(target, model.upstream_name(), "v1")?;
    let body = Bytes::from_static(br#"{"contents":[{"role":"user","parts":[{"text":"ping"}]}]}"#);
    let mut request = http::Request::post(format!("{}{path}", base.trim_end_matches('/')))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(headers) = request.headers_mut() {
        set_key(headers, config.api, key);
    }
    probe_status(client, request.body(Full::new(body)).ok()?).await
}

/// The status a probe got, or `None` without an answer in time.
async fn probe_status(
    client: &crate::upstream::ProviderClient,
    request: http::Request<Full<Bytes>>,
) -> Option<http::StatusCode> {
    match tokio::time::timeout(PROBE_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) => Some(response.status()),
        _ => None,
    }
}

/// The Bedrock runtime lists nothing, so its probe is a signed `Converse`
/// with no messages: Bedrock checks the signature before the body, so a
/// validation error (400) says the key authenticates and costs no tokens.
async fn probe_bedrock_key(
    client: &crate::upstream::ProviderClient,
    config: &tollgate_wire::config::CompiledProvider,
    base: &str,
    key: &crate::credentials::ApiKey,
) -> Option<http::StatusCode> {
    let model = config.models.first()?;
    let path = crate::api::Endpoint::Converse.bedrock_path(model.upstream_name())?;
    let body = Bytes::from_static(br#"{"messages":[]}"#);
    let mut request = http::Request::post(format!("{}{path}", base.trim_end_matches('/')))
        .header(header::CONTENT_TYPE, "application/json");
    let region = config.aws_region.as_deref().unwrap_or_default();
    let credentials = aws_signing::AwsCredentials::from_key(key).ok()?;
    aws_signing::sign(&mut request, &body, &credentials, region).ok()?;
    match probe_status(client, request.body(Full::new(body)).ok()?).await {
        Some(StatusCode::BAD_REQUEST) => Some(StatusCode::OK),
        status => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_drop_credentials_and_keep_api_headers() {
        let mut from = HeaderMap::new();
        from.insert(
            "authorization",
            HeaderValue::from_static("Bearer client-key"),
        );
        from.insert("x-api-key", HeaderValue::from_static("client-key"));
        from.insert("x-goog-api-key", HeaderValue::from_static("client-key"));
        from.insert("x-goog-user-project", HeaderValue::from_static("other"));
        from.insert("cookie", HeaderValue::from_static("a=b"));
        from.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        from.insert("x-request-id", HeaderValue::from_static("abc"));
        from.insert("x-internal", HeaderValue::from_static("secret"));
        let mut to = HeaderMap::new();
        copy_forwarded_headers(
            &from,
            &mut to,
            ApiStyle::Anthropic,
            &[
                "x-request-id".into(),
                "authorization".into(),
                "x-goog-api-key".into(),
                "x-goog-user-project".into(),
            ],
        );
        assert_eq!(to.get("anthropic-version").unwrap(), "2023-06-01");
        assert_eq!(to.get("x-request-id").unwrap(), "abc");
        for dropped in [
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "x-goog-user-project",
            "cookie",
            "x-internal",
        ] {
            assert!(to.get(dropped).is_none(), "{dropped} was forwarded");
        }
    }
}
