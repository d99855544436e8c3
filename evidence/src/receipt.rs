//! The receipt body a gateway writes for every request, and the signed receipt.
//!
//! A body is made only of bounded identifiers, hashes, enums, timestamps and
//! integer counts. There is no free-form text field, so a prompt, a completion or a
//! provider key has nowhere to go. The producer fills the body and signs the RFC 8785
//! bytes of it with the gateway key ([`SignedReceipt::sign`]); the chain fields are
//! added later by [`crate::chain::StreamChainWriter`].

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::fields::{
    Code, DnsLabel, DnsSubdomain, FieldError, FieldProblem, HostName, Identifier, ModelName,
    ReceiptId, SafeU64, SchemaVersion1, constant_string,
};
use crate::hash::Sha256Hex;
use crate::jcs::{CanonicalError, to_canonical_bytes};
use crate::keys::{
    KeyId, PublicKey, RecordSigner, SignatureError, SignatureHex, SigningKey, verify_named,
};
use crate::timestamp::Timestamp;

constant_string!(
    /// `"tollgate.dev/receipt"`: the schema id of a receipt body.
    ReceiptSchema = "tollgate.dev/receipt"
);

/// A receipt body: what happened to one request, in hashes and counts.
///
/// Fields (here and in the nested structs) are declared in RFC 8785 key order, so
/// the canonical encoding finds them sorted and `serde_json` output is canonical too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// The API style the client spoke.
    pub api: Api,
    /// Hex of a keyed HMAC-SHA256 of the end-user id header, computed by the producer;
    /// absent when the header was absent.
    pub caller_hash: Option<Sha256Hex>,
    /// When the gateway finished the response (wall clock).
    pub completed_at: Timestamp,
    /// The client's correlation id (its `x-request-id` header), so a receipt
    /// can be joined with the app's own logs; absent when the client sent none,
    /// and in receipts of older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Identifier>,
    /// Cost in micro-USD from the provider's price list.
    pub cost_micro_usd: SafeU64,
    /// The forward decision this attempt was sent under
    /// ([`crate::decision`]); absent when nothing was sent upstream, and in
    /// receipts of older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<ReceiptId>,
    /// A UUIDv7 the producer generates.
    pub id: ReceiptId,
    /// `live` or `dry_run`.
    pub lane: Lane,
    /// Monotonic durations.
    pub latency: Latency,
    /// The HTTP method.
    pub method: HttpMethod,
    /// The model the client asked for, if any.
    pub model_requested: Option<ModelName>,
    /// The model the provider reported serving, if any.
    pub model_served: Option<ModelName>,
    /// Hash of the compiled policy in force.
    pub policy_hash: Sha256Hex,
    /// Which prices made `cost_micro_usd`; absent in receipts of older
    /// gateways and when no usage was priced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<AppliedPricing>,
    /// The `LLMProvider` the request was routed to; absent when the gateway
    /// refused the request before choosing one (bad JSON, a disallowed model).
    pub provider: Option<DnsSubdomain>,
    /// What was charged against quotas; absent when no quota applied.
    pub quota: Option<QuotaCharge>,
    /// The gateway's request id (gateway-generated, not a client header).
    pub request_id: Identifier,
    /// SHA-256 of the request body as received.
    pub request_sha256: Sha256Hex,
    /// Length of the response body in bytes.
    pub response_length: SafeU64,
    /// SHA-256 of the response body bytes sent to the client.
    pub response_sha256: Sha256Hex,
    /// The HTTP status returned to the client.
    pub response_status: HttpStatus,
    /// The API route.
    pub route: Route,
    /// Always `tollgate.dev/receipt`.
    pub schema: ReceiptSchema,
    /// Always 1.
    pub schema_version: SchemaVersion1,
    /// When the gateway accepted the request (wall clock).
    pub started_at: Timestamp,
    /// The upstream call; absent when the request never left the gateway.
    pub upstream: Option<Upstream>,
    /// Token usage as the provider reported it; absent when unknown.
    pub usage: Option<Usage>,
    /// Allow, deny or error, with codes.
    pub verdict: RequestVerdict,
    /// The pod that made the call.
    pub workload: Workload,
}

/// Monotonic request durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// From accepting the request to the first response byte from upstream.
    pub first_byte_ms: Option<SafeU64>,
    /// From accepting the request to the last response byte.
    pub total_ms: SafeU64,
}

/// The calling pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Namespace.
    pub namespace: DnsLabel,
    /// Pod name.
    pub pod: DnsSubdomain,
    /// ServiceAccount name.
    pub service_account: DnsSubdomain,
}

/// The API style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI-style API.
    Openai,
    /// Anthropic-style API.
    Anthropic,
    /// The Gemini API.
    Gemini,
    /// The Amazon Bedrock runtime.
    Bedrock,
}

/// The routes a gateway serves; any other path is refused and never reaches a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Route {
    /// `/v1/chat/completions`
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
    /// `/v1/completions`
    #[serde(rename = "/v1/completions")]
    Completions,
    /// `/v1/embeddings`
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
    /// `/v1/responses`
    #[serde(rename = "/v1/responses")]
    Responses,
    /// `/v1/models`
    #[serde(rename = "/v1/models")]
    Models,
    /// `/v1/messages`
    #[serde(rename = "/v1/messages")]
    Messages,
    /// `/v1/messages/count_tokens`
    #[serde(rename = "/v1/messages/count_tokens")]
    MessagesCountTokens,
    /// Gemini `/{version}/models/{model}:generateContent`
    #[serde(rename = "/{version}/models/{model}:generateContent")]
    GenerateContent,
    /// Gemini `/{version}/models/{model}:streamGenerateContent`
    #[serde(rename = "/{version}/models/{model}:streamGenerateContent")]
    StreamGenerateContent,
    /// Gemini `/{version}/models/{model}:countTokens`
    #[serde(rename = "/{version}/models/{model}:countTokens")]
    GeminiCountTokens,
    /// Gemini `/{version}/models/{model}:embedContent`
    #[serde(rename = "/{version}/models/{model}:embedContent")]
    EmbedContent,
    /// Gemini `/{version}/models/{model}:batchEmbedContents`
    #[serde(rename = "/{version}/models/{model}:batchEmbedContents")]
    BatchEmbedContents,
    /// Bedrock `/model/{modelId}/converse`
    #[serde(rename = "/model/{modelId}/converse")]
    Converse,
    /// Bedrock `/model/{modelId}/converse-stream`
    #[serde(rename = "/model/{modelId}/converse-stream")]
    ConverseStream,
    /// Bedrock `/model/{modelId}/invoke`
    #[serde(rename = "/model/{modelId}/invoke")]
    InvokeModel,
    /// Bedrock `/model/{modelId}/invoke-with-response-stream`
    #[serde(rename = "/model/{modelId}/invoke-with-response-stream")]
    InvokeModelStream,
    /// Bedrock `/model/{modelId}/count-tokens`
    #[serde(rename = "/model/{modelId}/count-tokens")]
    BedrockCountTokens,
}

/// HTTP methods that reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET
    Get,
    /// POST
    Post,
    /// DELETE
    Delete,
}

/// The gateway's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Forwarded (or answered by the dry-run lane).
    Allow,
    /// Refused by policy, guard or quota.
    Deny,
    /// Failed (upstream error, TLS capture failure, ...).
    Error,
}

/// Which lane served the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// A real provider.
    Live,
    /// The offline dry-run provider.
    DryRun,
}

/// The reason prefix of a receipt for an attempt given up for the next
/// provider (`failed_over.upstream_429`, …; the request's own receipt follows
/// it): not a request of its own in usage or metrics.
pub const FAILED_OVER_REASON_PREFIX: &str = "failed_over";

/// The verdict with a bounded reason code and guard evidence as codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestVerdict {
    /// Every guard that ran, with its outcome, in the order they ran; absent in
    /// receipts of older gateways. A guard not listed did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<GuardChecks>,
    /// Allow, deny or error.
    pub decision: Decision,
    /// The guards that fired, e.g. `secret.private_key`.
    pub guards: GuardCodes,
    /// Why, e.g. `allowed`, `model_not_allowed`, `quota_exceeded`, `upstream_5xx`.
    pub reason: Code,
}

/// Up to [`GuardCodes::MAX`] distinct guard codes, in the order they fired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuardCodes(Vec<Code>);

impl GuardCodes {
    /// The most guard codes one receipt may carry.
    pub const MAX: usize = 16;

    /// Checks the bound and uniqueness.
    pub fn new(codes: Vec<Code>) -> Result<Self, FieldError> {
        if codes.len() > Self::MAX {
            return Err(FieldError::new(
                "guards",
                FieldProblem::TooMany { max: Self::MAX },
            ));
        }
        if codes
            .iter()
            .enumerate()
            .any(|(i, c)| codes.iter().skip(i + 1).any(|d| d == c))
        {
            return Err(FieldError::new("guards", FieldProblem::Duplicate));
        }
        Ok(Self(codes))
    }

    /// The codes.
    pub fn as_slice(&self) -> &[Code] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for GuardCodes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let codes = Vec::<Code>::deserialize(deserializer)?;
        Self::new(codes).map_err(serde::de::Error::custom)
    }
}

/// What one guard concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardOutcome {
    /// The guard ran and found nothing.
    Passed,
    /// The guard refused the request.
    Denied,
    /// The guard would have refused it, but the policy is in audit mode (or
    /// the limit is a shadow limit), so the request went on.
    AuditOnly,
}

/// One guard that ran: which, its outcome, and a content-free detail (which
/// rule or limit, e.g. `aws_access_key_id` or `max_tokens.4096`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardCheck {
    /// Which rule or limit decided, when there is one to name.
    pub detail: Option<Code>,
    /// The guard, e.g. `secret_scan`, `model_allowlist`, `max_tokens`, `quota`.
    pub guard: Code,
    /// What it concluded.
    pub outcome: GuardOutcome,
}

/// Up to [`GuardChecks::MAX`] guard checks, one per guard, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuardChecks(Vec<GuardCheck>);

impl GuardChecks {
    /// The most checks one receipt may carry.
    pub const MAX: usize = 16;

    /// Checks the bound and that no guard is listed twice.
    pub fn new(checks: Vec<GuardCheck>) -> Result<Self, FieldError> {
        if checks.len() > Self::MAX {
            return Err(FieldError::new(
                "checks",
                FieldProblem::TooMany { max: Self::MAX },
            ));
        }
        if checks
            .iter()
            .enumerate()
            .any(|(i, c)| checks.iter().skip(i + 1).any(|d| d.guard == c.guard))
        {
            return Err(FieldError::new("checks", FieldProblem::Duplicate));
        }
        Ok(Self(checks))
    }

    /// The checks.
    pub fn as_slice(&self) -> &[GuardCheck] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for GuardChecks {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let checks = Vec::<GuardCheck>::deserialize(deserializer)?;
        Self::new(checks).map_err(serde::de::Error::custom)
    }
}

/// An HTTP status code, 100 to 599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct HttpStatus(u16);

impl HttpStatus {
    /// Checks the range.
    pub fn new(status: u16) -> Result<Self, FieldError> {
        if (100..=599).contains(&status) {
            Ok(Self(status))
        } else {
            Err(FieldError::new("http status", FieldProblem::OutOfRange))
        }
    }

    /// The code.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl<'de> Deserialize<'de> for HttpStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(u16::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// Token usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Prompt tokens written to a 1-hour prompt cache (part of
    /// `input_tokens`); absent when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h_tokens: Option<SafeU64>,
    /// Prompt tokens written to a 5-minute prompt cache (part of
    /// `input_tokens`); absent when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m_tokens: Option<SafeU64>,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: SafeU64,
    /// Prompt tokens, including cached ones and cache writes.
    pub input_tokens: SafeU64,
    /// Completion tokens, including reasoning tokens.
    pub output_tokens: SafeU64,
    /// Completion tokens spent on reasoning (part of `output_tokens`);
    /// absent when the provider reported none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<SafeU64>,
}

impl Usage {
    /// Counts without the optional breakdowns.
    pub fn new(input_tokens: SafeU64, output_tokens: SafeU64, cached_tokens: SafeU64) -> Self {
        Self {
            cache_write_1h_tokens: None,
            cache_write_5m_tokens: None,
            cached_tokens,
            input_tokens,
            output_tokens,
            reasoning_tokens: None,
        }
    }
}

/// Which prices made a receipt's cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedPricing {
    /// Whether the table's long-context prices applied.
    pub long_context: bool,
    /// The service tier the provider reported, if any (the table's prices
    /// for it applied if the table lists it, its base prices if not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<Code>,
    /// SHA-256 of the canonical JSON (RFC 8785) of the model's price table,
    /// the `pricing` of its `LLMProvider` model entry.
    pub table_sha256: Sha256Hex,
}

/// The upstream call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The host dialed.
    pub host: HostName,
    /// How many keys the provider has.
    pub key_count: u32,
    /// Which of the provider's keys was used (never the key or its hash).
    pub key_index: u32,
    /// What the key routing formula hashed to pick `key_index`, so anyone can
    /// recompute it ([`key_index`]); absent in receipts of older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_route: Option<KeyRoute>,
    /// The provider's request id, if it sent one.
    pub provider_request_id: Option<Identifier>,
    /// SHA-256 of the peer's leaf certificate (DER). Required on the live lane.
    pub tls_cert_sha256: Option<Sha256Hex>,
}

/// The inputs of the key routing formula besides the request body's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRoute {
    /// The exact model string hashed: the provider's name for the model the
    /// request was routed to (before the provider reports what it served).
    pub model: ModelName,
    /// The gateway's node.
    pub node: DnsSubdomain,
}

/// Picks one of `key_count` provider keys: `sha256(model ‖ request_sha256 ‖
/// node)`, the first 8 bytes big-endian, mod `key_count`. The same request
/// from the same node always uses the same key, which keeps provider-side
/// caches warm, and different requests spread across keys. The gateway routes
/// with it and the verifier recomputes it.
pub fn key_index(model: &str, request_sha256: &[u8; 32], node: &str, key_count: u32) -> u32 {
    if key_count <= 1 {
        return 0;
    }
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    hasher.update(request_sha256);
    hasher.update(node.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(key_count)) as u32
}

/// What quotas were charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaCharge {
    /// Cost charged, micro-USD.
    pub cost_micro_usd: SafeU64,
    /// Requests charged.
    pub requests: SafeU64,
    /// Tokens charged.
    pub tokens: SafeU64,
}

/// A cross-field rule a receipt body broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptRule {
    /// `completed_at` is before `started_at`.
    #[error("completed_at is before started_at")]
    CompletedBeforeStarted,
    /// The time to first byte exceeds the total latency.
    #[error("latency.first_byte_ms exceeds latency.total_ms")]
    FirstByteAfterTotal,
    /// `upstream.key_count` is zero.
    #[error("upstream.key_count is zero")]
    NoProviderKeys,
    /// `upstream.key_index` is not below `upstream.key_count`.
    #[error("upstream.key_index is not below upstream.key_count")]
    KeyIndexOutOfRange,
    /// `upstream.key_index` is not what the key routing formula gives for
    /// `upstream.key_route` and `request_sha256`.
    #[error("upstream.key_index is not what upstream.key_route and request_sha256 route to")]
    KeyIndexNotRouted,
    /// A live-lane request went upstream without a TLS certificate hash.
    #[error("a live request that went upstream needs upstream.tls_cert_sha256")]
    LiveWithoutTlsHash,
    /// Cache reads and writes together exceed input tokens.
    #[error("usage.cached_tokens and the cache writes exceed usage.input_tokens")]
    CachedAboveInput,
    /// Reasoning tokens exceed output tokens.
    #[error("usage.reasoning_tokens exceeds usage.output_tokens")]
    ReasoningAboveOutput,
    /// A guard check says `denied` but the request was allowed.
    #[error("verdict.checks has a denied guard but verdict.decision is allow")]
    DeniedCheckOnAllow,
}

/// Why a receipt could not be made or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The body breaks a cross-field rule.
    #[error("invalid receipt body: {0}")]
    Rule(#[from] ReceiptRule),
    /// The body has no canonical encoding.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// The signature does not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

impl ReceiptBody {
    /// The schema id written into every body.
    pub const SCHEMA: &'static str = ReceiptSchema::VALUE;

    /// Checks the cross-field rules. Per-field rules are enforced by the field types.
    pub fn validate(&self) -> Result<(), ReceiptRule> {
        if self.completed_at < self.started_at {
            return Err(ReceiptRule::CompletedBeforeStarted);
        }
        if self
            .latency
            .first_byte_ms
            .is_some_and(|first| first > self.latency.total_ms)
        {
            return Err(ReceiptRule::FirstByteAfterTotal);
        }
        if let Some(usage) = &self.usage {
            let part = |n: Option<SafeU64>| u128::from(n.map_or(0, SafeU64::get));
            let cache = u128::from(usage.cached_tokens.get())
                + part(usage.cache_write_5m_tokens)
                + part(usage.cache_write_1h_tokens);
            if cache > u128::from(usage.input_tokens.get()) {
                return Err(ReceiptRule::CachedAboveInput);
            }
            if part(usage.reasoning_tokens) > u128::from(usage.output_tokens.get()) {
                return Err(ReceiptRule::ReasoningAboveOutput);
            }
        }
        if self.verdict.decision == Decision::Allow
            && self.verdict.checks.as_ref().is_some_and(|checks| {
                checks
                    .as_slice()
                    .iter()
                    .any(|c| c.outcome == GuardOutcome::Denied)
            })
        {
            return Err(ReceiptRule::DeniedCheckOnAllow);
        }
        if let Some(upstream) = &self.upstream {
            if upstream.key_count == 0 {
                return Err(ReceiptRule::NoProviderKeys);
            }
            if upstream.key_index >= upstream.key_count {
                return Err(ReceiptRule::KeyIndexOutOfRange);
            }
            if let Some(route) = &upstream.key_route {
                let routed = key_index(
                    route.model.as_str(),
                    self.request_sha256.as_bytes(),
                    route.node.as_str(),
                    upstream.key_count,
                );
                if routed != upstream.key_index {
                    return Err(ReceiptRule::KeyIndexNotRouted);
                }
            }
            // Dry-run never dials out; a live request that did must prove which peer it reached.
            if self.lane == Lane::Live && upstream.tls_cert_sha256.is_none() {
                return Err(ReceiptRule::LiveWithoutTlsHash);
            }
        }
        Ok(())
    }

    /// The RFC 8785 bytes that get signed.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        to_canonical_bytes(self)
    }
}

/// A receipt body with the gateway key's signature over its canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "SignedReceiptWire")]
pub struct SignedReceipt {
    /// The signed body.
    pub body: ReceiptBody,
    /// The id of the gateway key that signed.
    pub key_id: KeyId,
    /// Ed25519 over `JCS(body)`.
    pub signature: SignatureHex,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedReceiptWire {
    body: ReceiptBody,
    key_id: KeyId,
    signature: SignatureHex,
}

impl TryFrom<SignedReceiptWire> for SignedReceipt {
    type Error = ReceiptRule;
    fn try_from(wire: SignedReceiptWire) -> Result<Self, ReceiptRule> {
        wire.body.validate()?;
        Ok(Self {
            body: wire.body,
            key_id: wire.key_id,
            signature: wire.signature,
        })
    }
}

impl SignedReceipt {
    /// Validates `body` and signs its canonical bytes with the gateway key.
    pub fn sign(body: ReceiptBody, gateway_key: &SigningKey) -> Result<Self, ReceiptError> {
        Self::sign_returning_bytes(body, gateway_key).map(|(signed, _)| signed)
    }

    /// Like [`SignedReceipt::sign`], also returning the canonical body bytes that were
    /// signed.
    pub fn sign_returning_bytes(
        body: ReceiptBody,
        gateway_key: &impl RecordSigner,
    ) -> Result<(Self, Vec<u8>), ReceiptError> {
        body.validate()?;
        let message = to_canonical_bytes(&body)?;
        let signature = gateway_key.sign_message(&message);
        Ok((
            Self {
                body,
                key_id: gateway_key.key_id(),
                signature,
            },
            message,
        ))
    }

    /// Verifies the signature with `gateway_key`, which must be the key named by `key_id`.
    pub fn verify_signature(&self, gateway_key: &PublicKey) -> Result<(), SignatureError> {
        verify_named(&self.body, &self.key_id, gateway_key, &self.signature)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_body() -> ReceiptBody {
        ReceiptBody {
            schema: ReceiptSchema,
            schema_version: SchemaVersion1,
            id: ReceiptId::new("0192f0c4-7a1b-7c3d-8e4f-0123456789ab").unwrap(),
            request_id: Identifier::new("req-1").unwrap(),
            started_at: Timestamp::parse_canonical("2025-01-01T00:00:00.000Z").unwrap(),
            completed_at: Timestamp::parse_canonical("2025-01-01T00:00:01.250Z").unwrap(),
            latency: Latency {
                total_ms: SafeU64::new(1250).unwrap(),
                first_byte_ms: Some(SafeU64::new(300).unwrap()),
            },
            workload: Workload {
                namespace: DnsLabel::new("team-a").unwrap(),
                service_account: DnsSubdomain::new("default").unwrap(),
                pod: DnsSubdomain::new("app-7f9c").unwrap(),
            },
            caller_hash: None,
            correlation_id: None,
            decision_id: None,
            api: Api::Openai,
            provider: Some(DnsSubdomain::new("openai").unwrap()),
            route: Route::ChatCompletions,
            method: HttpMethod::Post,
            model_requested: Some(ModelName::new("gpt-4o").unwrap()),
            model_served: Some(ModelName::new("gpt-4o-2024-08-06").unwrap()),
            verdict: RequestVerdict {
                checks: None,
                decision: Decision::Allow,
                reason: Code::new("allowed").unwrap(),
                guards: GuardCodes::default(),
            },
            response_status: HttpStatus::new(200).unwrap(),
            request_sha256: crate::hash::sha256(b"request"),
            response_sha256: crate::hash::sha256(b"response"),
            response_length: SafeU64::new(8).unwrap(),
            usage: Some(Usage::new(
                SafeU64::new(10).unwrap(),
                SafeU64::new(20).unwrap(),
                SafeU64::ZERO,
            )),
            cost_micro_usd: SafeU64::new(125).unwrap(),
            upstream: Some(Upstream {
                host: HostName::new("api.openai.com").unwrap(),
                tls_cert_sha256: Some(crate::hash::sha256(b"cert")),
                provider_request_id: Some(Identifier::new("chatcmpl-123").unwrap()),
                key_index: 0,
                key_count: 2,
                key_route: None,
            }),
            policy_hash: crate::hash::sha256(b"policy"),
            pricing: None,
            quota: None,
            lane: Lane::Live,
        }
    }

    #[test]
    fn key_routing_is_recomputed_from_what_the_receipt_says_was_hashed() {
        let mut body = sample_body();
        let request = *body.request_sha256.as_bytes();
        let routed = key_index("gpt-4o", &request, "node-a", 5);
        assert_eq!(
            routed,
            key_index("gpt-4o", &request, "node-a", 5),
            "deterministic"
        );
        let upstream = body.upstream.as_mut().unwrap();
        upstream.key_count = 5;
        upstream.key_index = routed;
        upstream.key_route = Some(KeyRoute {
            model: ModelName::new("gpt-4o").unwrap(),
            node: DnsSubdomain::new("node-a").unwrap(),
        });
        body.validate().unwrap();
        let json = serde_json::to_string(&body).unwrap();
        assert!(
            json.contains(r#""key_route":{"model":"gpt-4o","node":"node-a"}"#),
            "{json}"
        );

        body.upstream.as_mut().unwrap().key_index = (routed + 1) % 5;
        assert_eq!(body.validate(), Err(ReceiptRule::KeyIndexNotRouted));

        // Receipts of older gateways carry no route and are not recomputed.
        let mut old = sample_body();
        old.upstream.as_mut().unwrap().key_index = 1;
        old.validate().unwrap();
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("key_route"), "{json}");
        assert_eq!(
            key_index("m", &request, "n", 1),
            0,
            "one key needs no hashing"
        );
    }

    fn check(guard: &str, outcome: GuardOutcome, detail: Option<&str>) -> GuardCheck {
        GuardCheck {
            guard: Code::new(guard).unwrap(),
            outcome,
            detail: detail.map(|d| Code::new(d).unwrap()),
        }
    }

    #[test]
    fn guard_checks_tell_clean_from_unchecked_and_agree_with_the_decision() {
        let mut body = sample_body();
        body.verdict.checks = Some(
            GuardChecks::new(vec![
                check("secret_scan", GuardOutcome::Passed, None),
                check(
                    "max_tokens",
                    GuardOutcome::AuditOnly,
                    Some("max_tokens.4096"),
                ),
            ])
            .unwrap(),
        );
        body.validate().unwrap();
        let json = serde_json::to_string(&body.verdict).unwrap();
        assert_eq!(
            json,
            r#"{"checks":[{"detail":null,"guard":"secret_scan","outcome":"passed"},{"detail":"max_tokens.4096","guard":"max_tokens","outcome":"audit_only"}],"decision":"allow","guards":[],"reason":"allowed"}"#
        );
        let back: RequestVerdict = serde_json::from_str(&json).unwrap();
        assert_eq!(back, body.verdict);

        // A denied check on an allowed request is a contradiction.
        body.verdict.checks = Some(
            GuardChecks::new(vec![check(
                "secret_scan",
                GuardOutcome::Denied,
                Some("pem_private_key"),
            )])
            .unwrap(),
        );
        assert_eq!(body.validate(), Err(ReceiptRule::DeniedCheckOnAllow));
        body.verdict.decision = Decision::Deny;
        body.validate().unwrap();

        // One entry per guard, and bounded.
        let twice = vec![
            check("quota", GuardOutcome::Passed, None),
            check("quota", GuardOutcome::Passed, None),
        ];
        assert!(GuardChecks::new(twice).is_err());
        let many = (0..=GuardChecks::MAX)
            .map(|i| check(&format!("g{i}"), GuardOutcome::Passed, None))
            .collect();
        assert!(GuardChecks::new(many).is_err());
        let bad = r#"[{"detail":null,"guard":"a","outcome":"maybe"}]"#;
        assert!(serde_json::from_str::<GuardChecks>(bad).is_err());

        // Receipts of older gateways have no checks at all, and say so by omission.
        let old = serde_json::to_string(&sample_body()).unwrap();
        assert!(!old.contains("checks"), "{old}");
    }

    #[test]
    fn sign_then_verify() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let receipt = SignedReceipt::sign(sample_body(), &key).unwrap();
        assert_eq!(receipt.key_id, KeyId::of_signing_key(&key));
        assert!(
            receipt
                .verify_signature(&PublicKey::of_signing_key(&key))
                .is_ok()
        );
        let mut tampered = receipt.clone();
        tampered.body.cost_micro_usd = SafeU64::new(1).unwrap();
        assert_eq!(
            tampered.verify_signature(&PublicKey::of_signing_key(&key)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn canonical_body_has_sorted_keys_and_no_floats() {
        let text = String::from_utf8(sample_body().canonical_bytes().unwrap()).unwrap();
        assert!(text.starts_with(
            r#"{"api":"openai","caller_hash":null,"completed_at":"2025-01-01T00:00:01.250Z""#
        ));
        assert!(text.contains(r#""route":"/v1/chat/completions""#));
        assert!(text.contains(r#""lane":"live""#));
        // The strict reader rejects any float, so this proves the body carries none.
        assert!(crate::strict_json::validate(text.as_bytes()).is_ok());
    }

    #[test]
    fn fields_are_declared_in_canonical_order() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut body = sample_body();
        body.caller_hash = Some(crate::hash::sha256(b"caller"));
        body.quota = Some(QuotaCharge {
            tokens: SafeU64::ZERO,
            requests: SafeU64::ZERO,
            cost_micro_usd: SafeU64::ZERO,
        });
        body.verdict.guards =
            GuardCodes::new(vec![Code::new("b").unwrap(), Code::new("a").unwrap()]).unwrap();
        body.pricing = Some(AppliedPricing {
            long_context: true,
            service_tier: Some(Code::new("priority").unwrap()),
            table_sha256: crate::hash::sha256(b"prices"),
        });
        if let Some(usage) = body.usage.as_mut() {
            usage.cache_write_1h_tokens = Some(SafeU64::new(1).unwrap());
            usage.cache_write_5m_tokens = Some(SafeU64::new(2).unwrap());
            usage.reasoning_tokens = Some(SafeU64::new(3).unwrap());
        }
        let receipt = SignedReceipt::sign(body, &key).unwrap();
        assert_eq!(
            serde_json::to_vec(&receipt).unwrap(),
            to_canonical_bytes(&receipt).unwrap()
        );
    }

    #[test]
    fn cross_field_rules_are_enforced_on_sign_and_parse() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut body = sample_body();
        if let Some(upstream) = body.upstream.as_mut() {
            upstream.tls_cert_sha256 = None;
        }
        assert_eq!(
            SignedReceipt::sign(body.clone(), &key).unwrap_err(),
            ReceiptError::Rule(ReceiptRule::LiveWithoutTlsHash)
        );
        body.lane = Lane::DryRun;
        assert!(SignedReceipt::sign(body.clone(), &key).is_ok());

        // Cache reads and writes are parts of the input; reasoning of the output.
        let usage = body.usage.as_mut().unwrap();
        usage.cache_write_5m_tokens = Some(SafeU64::new(6).unwrap());
        usage.cache_write_1h_tokens = Some(SafeU64::new(4).unwrap());
        assert!(SignedReceipt::sign(body.clone(), &key).is_ok(), "10 of 10");
        let usage = body.usage.as_mut().unwrap();
        usage.cache_write_1h_tokens = Some(SafeU64::new(5).unwrap());
        assert_eq!(
            SignedReceipt::sign(body.clone(), &key).unwrap_err(),
            ReceiptError::Rule(ReceiptRule::CachedAboveInput)
        );
        let usage = body.usage.as_mut().unwrap();
        usage.cache_write_1h_tokens = None;
        usage.reasoning_tokens = Some(SafeU64::new(21).unwrap());
        assert_eq!(
            SignedReceipt::sign(body, &key).unwrap_err(),
            ReceiptError::Rule(ReceiptRule::ReasoningAboveOutput)
        );

        let good = SignedReceipt::sign(sample_body(), &key).unwrap();
        let mut json: serde_json::Value = serde_json::to_value(&good).unwrap();
        json["body"]["upstream"]["key_index"] = serde_json::json!(2);
        let parsed: Result<SignedReceipt, _> = serde_json::from_value(json);
        assert!(parsed.unwrap_err().to_string().contains("key_index"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let good = SignedReceipt::sign(sample_body(), &key).unwrap();
        let mut json: serde_json::Value = serde_json::to_value(&good).unwrap();
        json["body"]["prompt"] = serde_json::json!("hello");
        assert!(serde_json::from_value::<SignedReceipt>(json).is_err());
        let mut json: serde_json::Value = serde_json::to_value(&good).unwrap();
        json["body"]["route"] = serde_json::json!("/v1/other");
        assert!(serde_json::from_value::<SignedReceipt>(json).is_err());
        let mut json: serde_json::Value = serde_json::to_value(&good).unwrap();
        json["body"]["schema"] = serde_json::json!("tollgate.dev/receipt2");
        assert!(serde_json::from_value::<SignedReceipt>(json).is_err());
        assert!(GuardCodes::new(vec![Code::new("a").unwrap(), Code::new("a").unwrap()]).is_err());
        assert!(HttpStatus::new(99).is_err());
    }
}
