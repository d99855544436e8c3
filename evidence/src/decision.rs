//! The forward decision: the record a gateway signs and appends to its spool
//! before a request leaves for a provider, so that a prompt that reached a
//! provider leaves a trace even when the gateway dies before the answer. One
//! per upstream attempt; the attempt's receipt names it in `decision_id`. A
//! decision with no receipt naming it is a request whose outcome is unknown
//! (the gateway was killed mid-request, or its receipt could not be signed).
//!
//! Like a receipt body, it holds identifiers, hashes and timestamps only.

use serde::{Deserialize, Serialize};

use crate::fields::{
    DnsSubdomain, HostName, Identifier, ModelName, ReceiptId, SchemaVersion1, constant_string,
};
use crate::hash::Sha256Hex;
use crate::jcs::{CanonicalError, to_canonical_bytes};
use crate::keys::{
    KeyId, PublicKey, RecordSigner, SignatureError, SignatureHex, SigningKey, verify_named,
};
use crate::receipt::Workload;
use crate::timestamp::Timestamp;

constant_string!(
    /// `"tollgate.dev/forward-decision"`.
    DecisionSchema = "tollgate.dev/forward-decision"
);

/// What the gateway decided to send where, before sending it. Fields are in
/// RFC 8785 key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Which attempt of the request this is, from 0 (failover adds more).
    pub attempt: u32,
    /// When the gateway decided (wall clock), just before sending.
    pub decided_at: Timestamp,
    /// The host about to be dialed.
    pub host: HostName,
    /// A UUIDv7; the attempt's receipt carries it as `decision_id`.
    pub id: ReceiptId,
    /// The model name sent to the provider; absent when the receipt format
    /// cannot hold it (over 128 bytes or outside the identifier alphabet).
    pub model: Option<ModelName>,
    /// Hash of the compiled policy in force.
    pub policy_hash: Sha256Hex,
    /// The `LLMProvider` chosen.
    pub provider: DnsSubdomain,
    /// The gateway's request id, shared by every attempt's records.
    pub request_id: Identifier,
    /// SHA-256 of the request body as the client sent it.
    pub request_sha256: Sha256Hex,
    /// Always `tollgate.dev/forward-decision`.
    pub schema: DecisionSchema,
    /// Always 1.
    pub schema_version: SchemaVersion1,
    /// When the gateway accepted the request (wall clock).
    pub started_at: Timestamp,
    /// The pod that made the call.
    pub workload: Workload,
}

/// A decision signed by the stream's gateway key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDecision {
    /// The signed body.
    pub decision: DecisionBody,
    /// The gateway key id.
    pub key_id: KeyId,
    /// Ed25519 over `JCS(decision)`.
    pub signature: SignatureHex,
}

/// A decision body whose times contradict each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decided_at is before started_at")]
pub struct DecidedBeforeStarted;

impl DecisionBody {
    /// The cross-field rule: a decision comes after the request arrived.
    pub fn validate(&self) -> Result<(), DecidedBeforeStarted> {
        if self.decided_at < self.started_at {
            return Err(DecidedBeforeStarted);
        }
        Ok(())
    }

    /// The RFC 8785 bytes that get signed.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        to_canonical_bytes(self)
    }
}

impl SignedDecision {
    /// Signs `decision` with the gateway key.
    pub fn sign(decision: DecisionBody, gateway_key: &SigningKey) -> Result<Self, CanonicalError> {
        Self::sign_returning_bytes(decision, gateway_key).map(|(signed, _)| signed)
    }

    /// Like [`SignedDecision::sign`], also returning the canonical bytes signed.
    pub fn sign_returning_bytes(
        decision: DecisionBody,
        gateway_key: &impl RecordSigner,
    ) -> Result<(Self, Vec<u8>), CanonicalError> {
        let message = to_canonical_bytes(&decision)?;
        let signature = gateway_key.sign_message(&message);
        Ok((
            Self {
                decision,
                key_id: gateway_key.key_id(),
                signature,
            },
            message,
        ))
    }

    /// Verifies with `gateway_key`, which must be the named key.
    pub fn verify_signature(&self, gateway_key: &PublicKey) -> Result<(), SignatureError> {
        verify_named(&self.decision, &self.key_id, gateway_key, &self.signature)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fields::DnsLabel;

    pub(crate) fn sample_decision() -> DecisionBody {
        DecisionBody {
            attempt: 0,
            decided_at: Timestamp::parse_canonical("2025-01-01T00:00:00.010Z").unwrap(),
            host: HostName::new("api.openai.com").unwrap(),
            id: ReceiptId::new("0192f0c4-7a1b-7c3d-8e4f-0123456789ac").unwrap(),
            model: Some(ModelName::new("gpt-4o").unwrap()),
            policy_hash: crate::hash::sha256(b"policy"),
            provider: DnsSubdomain::new("openai").unwrap(),
            request_id: Identifier::new("req-1").unwrap(),
            request_sha256: crate::hash::sha256(b"request"),
            schema: DecisionSchema,
            schema_version: SchemaVersion1,
            started_at: Timestamp::parse_canonical("2025-01-01T00:00:00.000Z").unwrap(),
            workload: Workload {
                namespace: DnsLabel::new("team-a").unwrap(),
                service_account: DnsSubdomain::new("default").unwrap(),
                pod: DnsSubdomain::new("app-7f9c").unwrap(),
            },
        }
    }

    #[test]
    fn decisions_sign_verify_and_encode_canonically() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let signed = SignedDecision::sign(sample_decision(), &key).unwrap();
        signed
            .verify_signature(&PublicKey::of_signing_key(&key))
            .unwrap();
        assert_eq!(
            serde_json::to_vec(&signed).unwrap(),
            to_canonical_bytes(&signed).unwrap(),
            "fields are declared in canonical order"
        );
        let mut tampered = signed.clone();
        tampered.decision.attempt = 1;
        assert_eq!(
            tampered.verify_signature(&PublicKey::of_signing_key(&key)),
            Err(SignatureError::Invalid)
        );
        let mut json = serde_json::to_value(&signed).unwrap();
        json["decision"]["prompt"] = serde_json::json!("hello");
        assert!(serde_json::from_value::<SignedDecision>(json).is_err());

        let mut early = sample_decision();
        early.decided_at = Timestamp::parse_canonical("2024-12-31T23:59:59.000Z").unwrap();
        assert_eq!(early.validate(), Err(DecidedBeforeStarted));
        sample_decision().validate().unwrap();
    }
}
