//! Deterministic evidence for tests and benches: a gateway key
//! certified by a receipt CA (both from fixed seeds), receipt bodies with usage,
//! chained streams, batch bodies and matching trust roots.
//!
//! Every function returns a `Result`; nothing here panics.

use tollgate_evidence::{
    Api, CloseReason, Code, Decision, DnsLabel, DnsSubdomain, Envelope, FieldError, GuardCodes,
    HostName, HttpMethod, HttpStatus, Identifier, KeyCertificate, KeyId, KeyRole, KeyState, Lane,
    Latency, ModelName, PodIdentity, PodUid, PublicKey, ReceiptBody, ReceiptId, RequestVerdict,
    Route, SafeU64, SignedKeyCertificate, SigningKey, StreamChainWriter, Timestamp, TrustRoots,
    TrustedKey, Upstream, Usage, Workload, sha256,
};

/// 2025-03-01T00:00:00.000Z: receipts are dated from here.
pub const T0_MS: u64 = 1_740_787_200_000;
/// One hour in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// Why a fixture could not be built (a bug in the fixture).
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A field rule.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// Chaining.
    #[error(transparent)]
    Chain(#[from] tollgate_evidence::ChainError),
    /// Certificates.
    #[error(transparent)]
    Certificate(#[from] tollgate_evidence::CertificateError),
    /// JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// A key from a fixed label.
/// The `caller_hash` of fixture caller `n`.
pub fn caller_hash(n: u64) -> tollgate_evidence::Sha256Hex {
    tollgate_evidence::hash::sha256(format!("caller-{n}").as_bytes())
}

pub fn key_from(label: &str) -> SigningKey {
    SigningKey::from_bytes(sha256(label.as_bytes()).as_bytes())
}

/// One gateway start: its key, certificate, workload and stream.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Which gateway (varies names and keys).
    pub n: u32,
    /// The receipt CA that certifies it.
    pub ca: SigningKey,
    /// The gateway's key.
    pub key: SigningKey,
    /// Its certificate.
    pub certificate: SignedKeyCertificate,
    /// Its pod.
    pub workload: Workload,
    /// Its stream.
    pub stream_id: Identifier,
}

/// A pod for gateway `n`: namespace `team-{n % 3}`, serviceAccount `sa-{n % 2}`.
pub fn pod(n: u32) -> Result<PodIdentity, TestkitError> {
    Ok(PodIdentity {
        namespace: DnsLabel::new(format!("team-{}", n % 3))?,
        service_account: DnsSubdomain::new(format!("sa-{}", n % 2))?,
        pod_name: DnsSubdomain::new(format!("app-{n}"))?,
        pod_uid: PodUid::new(format!("6f1c2d3e-4a5b-4c6d-8e7f-{n:012x}"))?,
    })
}

impl Gateway {
    /// Gateway `n`, certified by the CA from label `receipt-ca`, valid from an
    /// hour before [`T0_MS`] for 30 days.
    pub fn new(n: u32) -> Result<Self, TestkitError> {
        Self::with_ca(n, key_from("receipt-ca"))
    }

    /// Gateway `n` certified by `ca`.
    pub fn with_ca(n: u32, ca: SigningKey) -> Result<Self, TestkitError> {
        let key = key_from(&format!("gateway-{n}"));
        let pod = pod(n)?;
        let workload = Workload {
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            pod: pod.pod_name.clone(),
        };
        let certificate = SignedKeyCertificate::issue(
            KeyCertificate::new(
                PublicKey::of_signing_key(&key),
                pod,
                Timestamp::from_unix_millis(T0_MS - HOUR_MS)?,
                Timestamp::from_unix_millis(T0_MS + 30 * 24 * HOUR_MS)?,
                KeyId::of_signing_key(&ca),
            )?,
            &ca,
        )?;
        Ok(Self {
            n,
            ca,
            key,
            certificate,
            workload,
            stream_id: Identifier::new(format!("0195f000-0000-7000-8000-{n:012x}"))?,
        })
    }

    /// Receipt body `i` of this gateway: dated [`T0_MS`] + `i` seconds, with usage
    /// `100 + i` input and `10 + i` output tokens and cost `1000 + i` micro-USD.
    /// Every third receipt names no caller; the others name one of two callers
    /// ([`caller_hash`]`(i % 2)`).
    pub fn body(&self, i: u64) -> Result<ReceiptBody, TestkitError> {
        let started = T0_MS + i * 1_000;
        let provider = if self.n.is_multiple_of(2) {
            "openai"
        } else {
            "anthropic"
        };
        let model = if i.is_multiple_of(2) {
            "gpt-4o"
        } else {
            "gpt-4o-mini"
        };
        Ok(ReceiptBody {
            schema: Default::default(),
            schema_version: Default::default(),
            id: ReceiptId::new(format!(
                "0195{:04x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
                self.n & 0xffff,
                (i >> 24) & 0xffff,
                (i >> 12) & 0xfff,
                i & 0xfff,
                u64::from(self.n)
            ))?,
            request_id: Identifier::new(format!("req-{}-{i}", self.n))?,
            started_at: Timestamp::from_unix_millis(started)?,
            completed_at: Timestamp::from_unix_millis(started + 250)?,
            latency: Latency {
                total_ms: SafeU64::from(250u32),
                first_byte_ms: Some(SafeU64::from(40u32)),
            },
            workload: self.workload.clone(),
            caller_hash: (!i.is_multiple_of(3)).then(|| caller_hash(i % 2)),
            correlation_id: None,
            decision_id: None,
            api: Api::Openai,
            provider: Some(DnsSubdomain::new(provider)?),
            route: Route::ChatCompletions,
            method: HttpMethod::Post,
            model_requested: Some(ModelName::new(model)?),
            model_served: Some(ModelName::new(model)?),
            verdict: RequestVerdict {
                checks: None,
                decision: Decision::Allow,
                reason: Code::new("allowed")?,
                guards: GuardCodes::default(),
            },
            response_status: HttpStatus::new(200)?,
            request_sha256: sha256(format!("request-{}-{i}", self.n).as_bytes()),
            response_sha256: sha256(format!("response-{}-{i}", self.n).as_bytes()),
            response_length: SafeU64::new(1_000 + i)?,
            // Cache reads i % 3, two 5-minute cache writes on odd receipts,
            // i reasoning tokens on even ones from 2 on.
            usage: Some(Usage {
                cache_write_5m_tokens: (i % 2 == 1).then_some(SafeU64::new(2)?),
                cached_tokens: SafeU64::new(i % 3)?,
                reasoning_tokens: (i >= 2 && i.is_multiple_of(2)).then_some(SafeU64::new(i)?),
                ..Usage::new(SafeU64::new(100 + i)?, SafeU64::new(10 + i)?, SafeU64::ZERO)
            }),
            cost_micro_usd: SafeU64::new(1_000 + i)?,
            upstream: Some(Upstream {
                host: HostName::new("api.openai.com")?,
                tls_cert_sha256: None,
                provider_request_id: Some(Identifier::new(format!("chatcmpl-{}-{i}", self.n))?),
                key_index: 0,
                key_count: 1,
                key_route: None,
            }),
            policy_hash: sha256(b"policy"),
            pricing: None,
            quota: None,
            lane: Lane::DryRun,
        })
    }

    /// The stream's first `receipts` envelopes (seq 1..), plus the close record if
    /// `close`. Deterministic: the same call gives the same envelopes.
    pub fn stream(&self, receipts: u64, close: bool) -> Result<Vec<Envelope>, TestkitError> {
        let mut writer = StreamChainWriter::new(self.stream_id.clone());
        let mut out = Vec::new();
        for i in 0..receipts {
            out.push(writer.sign_and_append(self.body(i)?, &self.key)?);
        }
        if close {
            let at = Timestamp::from_unix_millis(T0_MS + receipts * 1_000 + 500)?;
            out.push(writer.close(CloseReason::Shutdown, at, &self.key)?);
        }
        Ok(out)
    }

    /// A `POST /v1/receipts` body for `envelopes`.
    pub fn batch_json(&self, envelopes: &[Envelope]) -> Result<Vec<u8>, TestkitError> {
        Ok(serde_json::to_vec(&serde_json::json!({
            "certificate": self.certificate,
            "envelopes": envelopes,
        }))?)
    }

    /// The spool file content a gateway would have written for `envelopes`.
    pub fn spool_text(&self, envelopes: &[Envelope]) -> Result<String, TestkitError> {
        let mut text =
            serde_json::to_string(&serde_json::json!({"certificate": self.certificate}))?;
        text.push('\n');
        for e in envelopes {
            text.push_str(&serde_json::to_string(&serde_json::json!({"envelope": e}))?);
            text.push('\n');
        }
        Ok(text)
    }
}

/// Trust roots holding `ca` as an active receipt CA since the epoch.
pub fn trust_for_ca(ca: &SigningKey) -> TrustRoots {
    let public = PublicKey::of_signing_key(ca);
    TrustRoots {
        keys: vec![TrustedKey {
            key_id: public.key_id(),
            public_key: public,
            role: KeyRole::ReceiptCa,
            not_before: Timestamp::UNIX_EPOCH,
            not_after: None,
            state: KeyState::Active,
        }],
    }
}

/// Trust roots for `gateway`'s CA.
pub fn trust_for(gateway: &Gateway) -> TrustRoots {
    trust_for_ca(&gateway.ca)
}
