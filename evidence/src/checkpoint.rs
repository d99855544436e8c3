//! Checkpoints: the recorder's signed statement of the whole log so far.
//!
//! A checkpoint holds the log origin, the cumulative envelope count (`size`), the
//! RFC 6962 root over every envelope hash from the start of the log, the hash of
//! the previous checkpoint (or `GENESIS`) and the hash of the seal it was issued
//! for. It can be pushed to sinks outside the recorder, so deleting the newest
//! segments is detectable by anyone who kept a later checkpoint.

use serde::{Deserialize, Serialize};

use crate::fields::{Identifier, SafeU64, SchemaVersion1, constant_string};
use crate::hash::{PrevHash, Sha256Hex, sha256_canonical};
use crate::jcs::CanonicalError;
use crate::keys::{
    KeyId, PublicKey, SignatureError, SignatureHex, SigningKey, sign_canonical, verify_named,
};
use crate::timestamp::Timestamp;

constant_string!(
    /// `"tollgate.dev/checkpoint"`.
    CheckpointSchema = "tollgate.dev/checkpoint"
);

/// The checkpoint body the recorder signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always `tollgate.dev/checkpoint`.
    pub schema: CheckpointSchema,
    /// Always 1.
    pub schema_version: SchemaVersion1,
    /// The log's name (one per recorder installation).
    pub origin: Identifier,
    /// Envelopes in the log up to and including the sealed segment.
    pub size: SafeU64,
    /// RFC 6962 root over the first `size` envelope hashes of the log.
    pub root: Sha256Hex,
    /// Hash of the previous checkpoint body, or `GENESIS` for the first.
    pub prev_checkpoint_hash: PrevHash,
    /// Hash of the seal of the segment this checkpoint was issued for.
    pub seal_hash: Sha256Hex,
    /// When it was signed.
    pub issued_at: Timestamp,
}

impl Checkpoint {
    /// SHA-256 of the canonical body; the next checkpoint links to it.
    pub fn hash(&self) -> Result<Sha256Hex, CanonicalError> {
        sha256_canonical(self)
    }
}

/// A checkpoint with the recorder key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    /// The signed body.
    pub checkpoint: Checkpoint,
    /// The recorder key id.
    pub key_id: KeyId,
    /// Ed25519 over `JCS(checkpoint)`.
    pub signature: SignatureHex,
}

impl SignedCheckpoint {
    /// Signs `checkpoint` with the recorder key.
    pub fn sign(checkpoint: Checkpoint, recorder_key: &SigningKey) -> Result<Self, CanonicalError> {
        let signature = sign_canonical(&checkpoint, recorder_key)?;
        Ok(Self {
            checkpoint,
            key_id: KeyId::of_signing_key(recorder_key),
            signature,
        })
    }

    /// Verifies with `recorder_key`, which must be the named key.
    pub fn verify_signature(&self, recorder_key: &PublicKey) -> Result<(), SignatureError> {
        verify_named(
            &self.checkpoint,
            &self.key_id,
            recorder_key,
            &self.signature,
        )
    }

    /// Parses a checkpoint as pushed to a sink, with the strict JSON rules.
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::strict_json::StrictJsonError> {
        crate::strict_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_chain_hash() {
        let key = SigningKey::from_bytes(&[2; 32]);
        let body = Checkpoint {
            schema: CheckpointSchema,
            schema_version: SchemaVersion1,
            origin: Identifier::new("tollgate.dev/recorder/test").unwrap(),
            size: SafeU64::from(3u32),
            root: crate::hash::sha256(b"root"),
            prev_checkpoint_hash: PrevHash::Genesis,
            seal_hash: crate::hash::sha256(b"seal"),
            issued_at: Timestamp::parse_canonical("2025-01-01T00:00:00.000Z").unwrap(),
        };
        let signed = SignedCheckpoint::sign(body.clone(), &key).unwrap();
        assert!(
            signed
                .verify_signature(&PublicKey::of_signing_key(&key))
                .is_ok()
        );
        let text = serde_json::to_vec(&signed).unwrap();
        assert_eq!(SignedCheckpoint::from_json(&text).unwrap(), signed);
        let mut other = body.clone();
        other.size = SafeU64::from(4u32);
        assert_ne!(other.hash().unwrap(), body.hash().unwrap());
    }
}
