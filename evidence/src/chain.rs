//! Stream chains: the store layer (the gateway's spool writer) wraps each signed
//! receipt (and each forward decision, [`crate::decision`]) in an envelope with `stream_id`, `seq`, `prev_hash` and `hash`, and ends
//! the stream with a signed close record.
//!
//! One stream per gateway start, one key per stream. `seq` starts at 1; the first
//! envelope's `prev_hash` is `GENESIS`; `hash` is SHA-256 of the RFC 8785 bytes of
//! the envelope without its `hash` member. The close record names the last receipt's
//! seq and hash, and is signed by the gateway key, so a truncated tail can be told
//! apart from a clean stop.

use serde::{Deserialize, Serialize};

use crate::decision::{DecisionBody, SignedDecision};
use crate::fields::{Identifier, SafeU64, SchemaVersion1, constant_string};
use crate::hash::{PrevHash, Sha256Hex, sha256};
use crate::jcs::{CanonicalError, to_canonical_bytes, write_canonical, write_string};
use crate::keys::{
    KeyId, PublicKey, RecordSigner, SignatureError, SignatureHex, SigningKey, sign_canonical,
    verify_named,
};
use crate::receipt::{ReceiptBody, ReceiptError, SignedReceipt};
use crate::timestamp::Timestamp;

constant_string!(
    /// `"tollgate.dev/stream-close"`.
    CloseRecordSchema = "tollgate.dev/stream-close"
);

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The gateway shut down cleanly.
    Shutdown,
    /// The gateway key's certificate expired and the gateway started a new stream.
    KeyExpiry,
    /// The gateway stopped after an unrecoverable error, having flushed the spool.
    Fatal,
}

/// The last record of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseRecord {
    /// When.
    pub closed_at: Timestamp,
    /// The hash of the last receipt's envelope, or `GENESIS` when there was none.
    pub last_hash: PrevHash,
    /// The seq of the last receipt (0 when the stream carried none).
    pub last_seq: SafeU64,
    /// Why the stream ended.
    pub reason: CloseReason,
    /// How many records (receipts and forward decisions) the stream carried
    /// before this one: equal to `last_seq`, since seq starts at 1.
    pub receipt_count: SafeU64,
    /// Always `tollgate.dev/stream-close`.
    pub schema: CloseRecordSchema,
    /// Always 1.
    pub schema_version: SchemaVersion1,
    /// The stream being closed.
    pub stream_id: Identifier,
}

/// A close record signed by the stream's gateway key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCloseRecord {
    /// The signed body.
    pub close: CloseRecord,
    /// The gateway key id.
    pub key_id: KeyId,
    /// Ed25519 over `JCS(close)`.
    pub signature: SignatureHex,
}

impl SignedCloseRecord {
    /// Signs `close` with the gateway key.
    pub fn sign(close: CloseRecord, gateway_key: &SigningKey) -> Result<Self, CanonicalError> {
        let signature = sign_canonical(&close, gateway_key)?;
        Ok(Self {
            close,
            key_id: KeyId::of_signing_key(gateway_key),
            signature,
        })
    }

    /// Verifies with `gateway_key`, which must be the named key.
    pub fn verify_signature(&self, gateway_key: &PublicKey) -> Result<(), SignatureError> {
        verify_named(&self.close, &self.key_id, gateway_key, &self.signature)
    }
}

/// What an envelope carries.
#[allow(
    clippy::large_enum_variant,
    reason = "almost every envelope carries a receipt; boxing it would add an allocation per receipt"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeRecord {
    /// A signed receipt.
    Receipt(SignedReceipt),
    /// A signed forward decision, written before the request left.
    Decision(SignedDecision),
    /// The signed end of the stream.
    Close(SignedCloseRecord),
}

impl EnvelopeRecord {
    /// The id of the key that signed the record.
    pub fn key_id(&self) -> &KeyId {
        match self {
            Self::Receipt(r) => &r.key_id,
            Self::Decision(d) => &d.key_id,
            Self::Close(c) => &c.key_id,
        }
    }
}

/// A chain link: a record plus the stream fields the store layer adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The gateway start this envelope belongs to.
    pub stream_id: Identifier,
    /// Position in the stream, from 1.
    pub seq: SafeU64,
    /// The previous envelope's hash in this stream, or `GENESIS` for seq 1.
    pub prev_hash: PrevHash,
    /// The record.
    pub record: EnvelopeRecord,
    /// SHA-256 of `JCS({stream_id, seq, prev_hash, record})`.
    pub hash: Sha256Hex,
}

/// An envelope's hash together with the canonical bytes its record's signature
/// covers (the receipt body or the close record), so callers that check both encode
/// the body once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeDigest {
    /// SHA-256 of the envelope's canonical content.
    pub hash: Sha256Hex,
    /// RFC 8785 bytes of the signed part of the record.
    pub signed_bytes: Vec<u8>,
}

impl EnvelopeRecord {
    /// The RFC 8785 bytes the record's signature covers.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        match self {
            Self::Receipt(r) => to_canonical_bytes(&r.body),
            Self::Decision(d) => to_canonical_bytes(&d.decision),
            Self::Close(c) => to_canonical_bytes(&c.close),
        }
    }
}

impl Envelope {
    /// Builds an envelope and computes its hash.
    pub fn seal(
        stream_id: Identifier,
        seq: SafeU64,
        prev_hash: PrevHash,
        record: EnvelopeRecord,
    ) -> Result<Self, CanonicalError> {
        let signed = record.signed_bytes()?;
        let hash = content_hash(&stream_id, seq, &prev_hash, &record, &signed)?;
        Ok(Self {
            stream_id,
            seq,
            prev_hash,
            record,
            hash,
        })
    }

    /// Recomputes the hash from the other fields.
    pub fn compute_hash(&self) -> Result<Sha256Hex, CanonicalError> {
        self.digest().map(|d| d.hash)
    }

    /// Recomputes the hash and returns the signed bytes with it.
    pub fn digest(&self) -> Result<EnvelopeDigest, CanonicalError> {
        let signed_bytes = self.record.signed_bytes()?;
        let hash = content_hash(
            &self.stream_id,
            self.seq,
            &self.prev_hash,
            &self.record,
            &signed_bytes,
        )?;
        Ok(EnvelopeDigest { hash, signed_bytes })
    }

    /// The signed receipt, if this envelope carries one.
    pub fn receipt(&self) -> Option<&SignedReceipt> {
        match &self.record {
            EnvelopeRecord::Receipt(r) => Some(r),
            _ => None,
        }
    }

    /// The forward decision, if this envelope carries one.
    pub fn decision(&self) -> Option<&SignedDecision> {
        match &self.record {
            EnvelopeRecord::Decision(d) => Some(d),
            _ => None,
        }
    }

    /// The close record, if this envelope carries one.
    pub fn close(&self) -> Option<&SignedCloseRecord> {
        match &self.record {
            EnvelopeRecord::Close(c) => Some(c),
            _ => None,
        }
    }
}

/// SHA-256 of `JCS({stream_id, seq, prev_hash, record})`, assembled around the
/// already-encoded signed part so the body is encoded once. Members are written in
/// JCS order (`prev_hash` < `record` < `seq` < `stream_id`; `body`/`close` <
/// `key_id` < `signature`); a test checks this equals the generic encoder.
fn content_hash(
    stream_id: &Identifier,
    seq: SafeU64,
    prev_hash: &PrevHash,
    record: &EnvelopeRecord,
    signed: &[u8],
) -> Result<Sha256Hex, CanonicalError> {
    Ok(sha256(&content_bytes(
        stream_id, seq, prev_hash, record, signed,
    )?))
}

/// The RFC 8785 bytes of an envelope's content (every field but `hash`),
/// built around `signed`, the record's already encoded signed part.
fn content_bytes(
    stream_id: &Identifier,
    seq: SafeU64,
    prev_hash: &PrevHash,
    record: &EnvelopeRecord,
    signed: &[u8],
) -> Result<Vec<u8>, CanonicalError> {
    let (tag, inner, key_id, signature) = match record {
        EnvelopeRecord::Receipt(r) => ("receipt", "body", &r.key_id, &r.signature),
        EnvelopeRecord::Decision(d) => ("decision", "decision", &d.key_id, &d.signature),
        EnvelopeRecord::Close(c) => ("close", "close", &c.key_id, &c.signature),
    };
    let mut out = Vec::with_capacity(signed.len() + 512);
    out.extend_from_slice(b"{\"prev_hash\":");
    write_canonical(prev_hash, &mut out)?;
    out.extend_from_slice(b",\"record\":{");
    write_string(&mut out, tag);
    out.extend_from_slice(b":{");
    write_string(&mut out, inner);
    out.push(b':');
    out.extend_from_slice(signed);
    out.extend_from_slice(b",\"key_id\":");
    write_canonical(key_id, &mut out)?;
    out.extend_from_slice(b",\"signature\":");
    write_canonical(signature, &mut out)?;
    out.extend_from_slice(b"}},\"seq\":");
    write_canonical(&seq, &mut out)?;
    out.extend_from_slice(b",\"stream_id\":");
    write_canonical(stream_id, &mut out)?;
    out.push(b'}');
    Ok(out)
}

/// An envelope with its RFC 8785 JSON, for writers that store it: the JSON
/// is the hashed content with `hash` put first (its place in key order), so
/// writing an envelope costs no second encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEnvelope {
    pub envelope: Envelope,
    /// `to_canonical_bytes(&envelope)`, byte for byte.
    pub json: Vec<u8>,
}

impl EncodedEnvelope {
    fn seal(
        stream_id: Identifier,
        seq: SafeU64,
        prev_hash: PrevHash,
        record: EnvelopeRecord,
        signed: &[u8],
    ) -> Result<Self, CanonicalError> {
        let content = content_bytes(&stream_id, seq, &prev_hash, &record, signed)?;
        let hash = sha256(&content);
        let mut json = Vec::with_capacity(content.len() + 80);
        json.extend_from_slice(b"{\"hash\":");
        write_canonical(&hash, &mut json)?;
        json.push(b',');
        json.extend_from_slice(content.get(1..).unwrap_or_default());
        Ok(Self {
            envelope: Envelope {
                stream_id,
                seq,
                prev_hash,
                record,
                hash,
            },
            json,
        })
    }
}

/// Why an envelope could not be written or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The stream already has its close record.
    #[error("stream is closed")]
    Closed,
    /// seq would pass 2^53 − 1.
    #[error("sequence number overflow")]
    SeqOverflow,
    /// A record signed by a different key than the stream's first record.
    #[error("record signed by {found}, the stream is signed by {expected}")]
    KeyChanged {
        /// The stream's key.
        expected: KeyId,
        /// The record's key.
        found: KeyId,
    },
    /// The envelope belongs to another stream.
    #[error("envelope belongs to another stream")]
    WrongStream,
    /// seq skipped ahead: envelopes are missing.
    #[error("gap: expected seq {expected}, found {found}")]
    Gap {
        /// The next seq the checker expected.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// seq went backwards: a duplicate or a reordering.
    #[error("seq went back: expected {expected}, found {found}")]
    Regressed {
        /// The next seq the checker expected.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// `prev_hash` does not name the previous envelope.
    #[error("prev_hash of seq {seq} does not link to the previous envelope")]
    PrevHashMismatch {
        /// The envelope's seq.
        seq: u64,
    },
    /// `hash` is not the hash of the envelope.
    #[error("hash of seq {seq} does not match its content")]
    HashMismatch {
        /// The envelope's seq.
        seq: u64,
    },
    /// The close record disagrees with the chain it closes.
    #[error("close record at seq {seq} does not match the chain")]
    CloseMismatch {
        /// The close envelope's seq.
        seq: u64,
    },
    /// No canonical encoding.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// The receipt body could not be signed.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// A forward decision is dated before its request started.
    #[error("a forward decision is dated before its request started")]
    InvalidDecision,
}

/// Where a stream stands after its last envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamPosition {
    stream_id: Identifier,
    next_seq: SafeU64,
    prev_hash: PrevHash,
    key_id: Option<KeyId>,
    closed: bool,
}

impl StreamPosition {
    fn new(stream_id: Identifier) -> Self {
        Self {
            stream_id,
            next_seq: SafeU64::from(1u32),
            prev_hash: PrevHash::Genesis,
            key_id: None,
            closed: false,
        }
    }

    fn after(envelope: &Envelope) -> Result<Self, ChainError> {
        Ok(Self {
            stream_id: envelope.stream_id.clone(),
            next_seq: envelope
                .seq
                .checked_increment()
                .ok_or(ChainError::SeqOverflow)?,
            prev_hash: PrevHash::Hash(envelope.hash),
            key_id: Some(*envelope.record.key_id()),
            closed: envelope.close().is_some(),
        })
    }

    fn check_key(&self, key_id: &KeyId) -> Result<(), ChainError> {
        match &self.key_id {
            Some(expected) if expected != key_id => Err(ChainError::KeyChanged {
                expected: *expected,
                found: *key_id,
            }),
            _ => Ok(()),
        }
    }

    fn receipt_count(&self) -> SafeU64 {
        SafeU64::new(self.next_seq.get().saturating_sub(1)).unwrap_or(SafeU64::ZERO)
    }

    fn advance(&mut self, envelope: &Envelope) -> Result<(), ChainError> {
        *self = Self::after(envelope)?;
        Ok(())
    }
}

/// A receipt or forward decision signed before its place in a stream is
/// known, with the bytes its signature covers. A signature covers the record
/// alone, not its chain position, so a writer can sign outside whatever
/// orders its chain (a lock, say) and hold that only to chain the record
/// with [`StreamChainWriter::append_signed`]. Built only here, by signing, so
/// the bytes are always the record's own.
#[derive(Debug, Clone)]
pub struct SignedRecord {
    record: EnvelopeRecord,
    signed: Vec<u8>,
}

impl SignedRecord {
    /// Validates and signs a receipt body.
    pub fn receipt(body: ReceiptBody, gateway_key: &impl RecordSigner) -> Result<Self, ChainError> {
        let (receipt, signed) = SignedReceipt::sign_returning_bytes(body, gateway_key)?;
        Ok(Self {
            record: EnvelopeRecord::Receipt(receipt),
            signed,
        })
    }

    /// Validates and signs a forward decision.
    pub fn decision(
        decision: DecisionBody,
        gateway_key: &impl RecordSigner,
    ) -> Result<Self, ChainError> {
        decision
            .validate()
            .map_err(|_| ChainError::InvalidDecision)?;
        let (decision, signed) = SignedDecision::sign_returning_bytes(decision, gateway_key)?;
        Ok(Self {
            record: EnvelopeRecord::Decision(decision),
            signed,
        })
    }

    /// The id of the key that signed it.
    pub fn key_id(&self) -> &KeyId {
        self.record.key_id()
    }
}

/// The spool writer's state machine: give it signed receipts, get envelopes back.
/// Pure: it neither stores nor verifies signatures (the producer in the same process
/// just made them).
#[derive(Debug, Clone)]
pub struct StreamChainWriter {
    position: StreamPosition,
}

impl StreamChainWriter {
    /// Starts a new stream. Use one fresh id per gateway start (a UUIDv7 works).
    pub fn new(stream_id: Identifier) -> Self {
        Self {
            position: StreamPosition::new(stream_id),
        }
    }

    /// Continues a stream after its last written envelope (e.g. after reopening the
    /// spool).
    pub fn resume_after(last: &Envelope) -> Result<Self, ChainError> {
        Ok(Self {
            position: StreamPosition::after(last)?,
        })
    }

    /// The stream id.
    pub fn stream_id(&self) -> &Identifier {
        &self.position.stream_id
    }

    /// The seq the next envelope will get.
    pub fn next_seq(&self) -> SafeU64 {
        self.position.next_seq
    }

    /// Whether the close record has been written.
    pub fn is_closed(&self) -> bool {
        self.position.closed
    }

    /// Chains a signed receipt.
    pub fn append(&mut self, receipt: SignedReceipt) -> Result<Envelope, ChainError> {
        self.accepts_key(&receipt.key_id)?;
        self.position
            .next_seq
            .checked_increment()
            .ok_or(ChainError::SeqOverflow)?;
        self.seal_next(EnvelopeRecord::Receipt(receipt))
    }

    /// Refuses a record for a closed stream or signed by another key.
    fn accepts_key(&self, key_id: &KeyId) -> Result<(), ChainError> {
        if self.position.closed {
            return Err(ChainError::Closed);
        }
        self.position.check_key(key_id)
    }

    /// Seals `record` as the next envelope and moves the position past it.
    fn seal_next(&mut self, record: EnvelopeRecord) -> Result<Envelope, ChainError> {
        let envelope = Envelope::seal(
            self.position.stream_id.clone(),
            self.position.next_seq,
            self.position.prev_hash,
            record,
        )?;
        self.position.advance(&envelope)?;
        Ok(envelope)
    }

    /// Signs `body` with the gateway key and chains it, encoding the body once (the
    /// bytes signed are the bytes hashed into the envelope). Same result as
    /// `append(SignedReceipt::sign(body, key)?)`, faster.
    pub fn sign_and_append(
        &mut self,
        body: ReceiptBody,
        gateway_key: &SigningKey,
    ) -> Result<Envelope, ChainError> {
        self.sign_and_append_encoded(body, gateway_key)
            .map(|e| e.envelope)
    }

    /// [`Self::sign_and_append`], also returning the envelope's JSON.
    pub fn sign_and_append_encoded(
        &mut self,
        body: ReceiptBody,
        gateway_key: &SigningKey,
    ) -> Result<EncodedEnvelope, ChainError> {
        self.accepts_key(&KeyId::of_signing_key(gateway_key))?;
        self.append_signed(SignedRecord::receipt(body, gateway_key)?)
    }

    /// Chains a record signed ahead of its place (see [`SignedRecord`]).
    /// The same checks and result as signing here.
    pub fn append_signed(&mut self, signed: SignedRecord) -> Result<EncodedEnvelope, ChainError> {
        self.accepts_key(signed.key_id())?;
        self.position
            .next_seq
            .checked_increment()
            .ok_or(ChainError::SeqOverflow)?;
        self.seal_encoded(signed.record, &signed.signed)
    }

    /// Signs a forward decision with the gateway key and chains it.
    pub fn sign_and_append_decision(
        &mut self,
        decision: DecisionBody,
        gateway_key: &SigningKey,
    ) -> Result<Envelope, ChainError> {
        self.sign_and_append_decision_encoded(decision, gateway_key)
            .map(|e| e.envelope)
    }

    /// [`Self::sign_and_append_decision`], also returning the envelope's
    /// JSON; the decision is encoded once.
    pub fn sign_and_append_decision_encoded(
        &mut self,
        decision: DecisionBody,
        gateway_key: &SigningKey,
    ) -> Result<EncodedEnvelope, ChainError> {
        self.accepts_key(&KeyId::of_signing_key(gateway_key))?;
        self.append_signed(SignedRecord::decision(decision, gateway_key)?)
    }

    /// Seals `record`, whose signed part encodes to `signed`, as the next
    /// envelope and moves the position past it.
    fn seal_encoded(
        &mut self,
        record: EnvelopeRecord,
        signed: &[u8],
    ) -> Result<EncodedEnvelope, ChainError> {
        let encoded = EncodedEnvelope::seal(
            self.position.stream_id.clone(),
            self.position.next_seq,
            self.position.prev_hash,
            record,
            signed,
        )?;
        self.position.advance(&encoded.envelope)?;
        Ok(encoded)
    }

    /// Ends the stream with a close record signed by `gateway_key` (the stream's key).
    pub fn close(
        &mut self,
        reason: CloseReason,
        closed_at: Timestamp,
        gateway_key: &SigningKey,
    ) -> Result<Envelope, ChainError> {
        self.accepts_key(&KeyId::of_signing_key(gateway_key))?;
        let receipts = self.position.receipt_count();
        let close = CloseRecord {
            schema: CloseRecordSchema,
            schema_version: SchemaVersion1,
            stream_id: self.position.stream_id.clone(),
            last_seq: receipts,
            receipt_count: receipts,
            last_hash: self.position.prev_hash,
            reason,
            closed_at,
        };
        let signed = SignedCloseRecord::sign(close, gateway_key)?;
        self.seal_next(EnvelopeRecord::Close(signed))
    }
}

/// The recorder's incremental checker for one stream: accepts envelopes in order
/// and says exactly what is wrong with one that does not fit. Signatures are checked
/// separately, against the key certificate.
#[derive(Debug, Clone)]
pub struct StreamChainChecker {
    position: StreamPosition,
}

impl StreamChainChecker {
    /// Expects the stream to start at seq 1.
    pub fn new(stream_id: Identifier) -> Self {
        Self {
            position: StreamPosition::new(stream_id),
        }
    }

    /// Expects the envelope after `last`, already accepted.
    pub fn resume_after(last: &Envelope) -> Result<Self, ChainError> {
        Ok(Self {
            position: StreamPosition::after(last)?,
        })
    }

    /// The seq the next envelope must have.
    pub fn next_seq(&self) -> SafeU64 {
        self.position.next_seq
    }

    /// Whether the close record has been accepted.
    pub fn is_closed(&self) -> bool {
        self.position.closed
    }

    /// Accepts `envelope` if it is the next link of this stream.
    pub fn check(&mut self, envelope: &Envelope) -> Result<(), ChainError> {
        let position = &self.position;
        if envelope.stream_id != position.stream_id {
            return Err(ChainError::WrongStream);
        }
        let (expected, found) = (position.next_seq.get(), envelope.seq.get());
        if position.closed {
            return Err(ChainError::Closed);
        }
        if found > expected {
            return Err(ChainError::Gap { expected, found });
        }
        if found < expected {
            return Err(ChainError::Regressed { expected, found });
        }
        if envelope.compute_hash()? != envelope.hash {
            return Err(ChainError::HashMismatch { seq: found });
        }
        if envelope.prev_hash != position.prev_hash {
            return Err(ChainError::PrevHashMismatch { seq: found });
        }
        position.check_key(envelope.record.key_id())?;
        if let Some(close) = envelope.close()
            && !close_matches(&close.close, position)
        {
            return Err(ChainError::CloseMismatch { seq: found });
        }
        self.position.advance(envelope)
    }
}

fn close_matches(close: &CloseRecord, position: &StreamPosition) -> bool {
    let receipts = position.receipt_count();
    close.stream_id == position.stream_id
        && close.last_seq == receipts
        && close.receipt_count == receipts
        && close.last_hash == position.prev_hash
}

/// Whether `close` correctly closes a stream whose envelope at `close_seq` carries it
/// and whose previous envelope hash is `prev_hash`.
pub fn close_record_matches(
    close: &CloseRecord,
    stream_id: &Identifier,
    close_seq: SafeU64,
    prev_hash: &PrevHash,
) -> bool {
    let receipts = close_seq.get().saturating_sub(1);
    close.stream_id == *stream_id
        && close.last_seq.get() == receipts
        && close.receipt_count.get() == receipts
        && close.last_hash == *prev_hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipt::tests::sample_body;

    fn signed(key: &SigningKey, n: u32) -> SignedReceipt {
        let mut body = sample_body();
        body.response_length = SafeU64::from(n);
        SignedReceipt::sign(body, key).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_canonical(s).unwrap()
    }

    fn stream(key: &SigningKey, receipts: u32) -> Vec<Envelope> {
        let mut writer = StreamChainWriter::new(Identifier::new("stream-1").unwrap());
        let mut out: Vec<Envelope> = (0..receipts)
            .map(|n| writer.append(signed(key, n)).unwrap())
            .collect();
        out.push(
            writer
                .close(CloseReason::Shutdown, at("2025-01-01T01:00:00.000Z"), key)
                .unwrap(),
        );
        out
    }

    /// The reference: the generic encoder over the whole hashed content.
    fn generic_hash(e: &Envelope) -> Sha256Hex {
        #[derive(Serialize)]
        struct ChainedContent<'a> {
            stream_id: &'a Identifier,
            seq: SafeU64,
            prev_hash: &'a PrevHash,
            record: &'a EnvelopeRecord,
        }
        let content = ChainedContent {
            stream_id: &e.stream_id,
            seq: e.seq,
            prev_hash: &e.prev_hash,
            record: &e.record,
        };
        crate::hash::sha256_canonical(&content).unwrap()
    }

    #[test]
    fn composed_hash_equals_the_generic_encoding() {
        let key = SigningKey::from_bytes(&[1; 32]);
        for envelope in stream(&key, 3).iter().chain(stream(&key, 0).iter()) {
            assert_eq!(envelope.hash, generic_hash(envelope));
            assert_eq!(envelope.compute_hash().unwrap(), envelope.hash);
        }
    }

    #[test]
    fn decisions_chain_between_receipts_and_count_toward_the_close() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut writer = StreamChainWriter::new(Identifier::new("s").unwrap());
        let decision = crate::decision::tests::sample_decision();
        let mut envelopes = vec![
            writer
                .sign_and_append_decision(decision.clone(), &key)
                .unwrap(),
        ];
        envelopes.push(writer.append(signed(&key, 1)).unwrap());
        envelopes.push(
            writer
                .close(CloseReason::Shutdown, at("2025-01-01T01:00:00.000Z"), &key)
                .unwrap(),
        );
        assert_eq!(envelopes[0].decision().unwrap().decision, decision);
        assert!(envelopes[0].receipt().is_none() && envelopes[0].close().is_none());
        assert_eq!(envelopes[2].close().unwrap().close.receipt_count.get(), 2);
        let mut checker = StreamChainChecker::new(Identifier::new("s").unwrap());
        for envelope in &envelopes {
            assert_eq!(envelope.hash, generic_hash(envelope));
            checker.check(envelope).unwrap();
        }
        let json = serde_json::to_string(&envelopes[0]).unwrap();
        assert!(
            json.contains(r#""record":{"decision":{"decision":{"attempt":0"#),
            "{json}"
        );

        let mut early = decision;
        early.decided_at = at("2024-01-01T00:00:00.000Z");
        assert_eq!(
            writer.sign_and_append_decision(early.clone(), &key),
            Err(ChainError::Closed)
        );
        let mut open = StreamChainWriter::new(Identifier::new("t").unwrap());
        assert_eq!(
            open.sign_and_append_decision(early, &key),
            Err(ChainError::InvalidDecision)
        );
    }

    #[test]
    fn sign_and_append_equals_sign_then_append() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut a = StreamChainWriter::new(Identifier::new("s").unwrap());
        let mut b = StreamChainWriter::new(Identifier::new("s").unwrap());
        for n in 0..3 {
            let mut body = sample_body();
            body.response_length = SafeU64::from(n);
            let one = a.sign_and_append(body.clone(), &key).unwrap();
            let two = b.append(SignedReceipt::sign(body, &key).unwrap()).unwrap();
            assert_eq!(one, two);
            assert_eq!(one.hash, generic_hash(&one));
        }
    }

    #[test]
    fn records_signed_ahead_chain_as_if_signed_in_place() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut ahead = StreamChainWriter::new(Identifier::new("s").unwrap());
        let decision = crate::decision::tests::sample_decision();
        let receipt = sample_body();
        // Signed before the writer has chained anything, then chained in
        // another order than they were signed.
        let signed_receipt = SignedRecord::receipt(receipt.clone(), &key).unwrap();
        let signed_decision = SignedRecord::decision(decision.clone(), &key).unwrap();
        let chained = [
            ahead.append_signed(signed_decision).unwrap(),
            ahead.append_signed(signed_receipt.clone()).unwrap(),
        ];
        // The same records as the generic signers make (Ed25519 signatures
        // are deterministic), chained and hashed as the checker and the
        // generic encoder expect.
        assert_eq!(
            chained[0].envelope.record,
            EnvelopeRecord::Decision(SignedDecision::sign(decision, &key).unwrap())
        );
        assert_eq!(
            chained[1].envelope.record,
            EnvelopeRecord::Receipt(SignedReceipt::sign(receipt, &key).unwrap())
        );
        let mut checker = StreamChainChecker::new(Identifier::new("s").unwrap());
        for encoded in &chained {
            checker.check(&encoded.envelope).unwrap();
            assert_eq!(encoded.envelope.hash, generic_hash(&encoded.envelope));
            assert_eq!(encoded.json, to_canonical_bytes(&encoded.envelope).unwrap());
        }
        let public = PublicKey::of_signing_key(&key);
        let decision = chained[0].envelope.decision().unwrap();
        decision.verify_signature(&public).unwrap();
        chained[1]
            .envelope
            .receipt()
            .unwrap()
            .verify_signature(&public)
            .unwrap();

        let other = SigningKey::from_bytes(&[2; 32]);
        let foreign = SignedRecord::receipt(sample_body(), &other).unwrap();
        assert!(matches!(
            ahead.append_signed(foreign),
            Err(ChainError::KeyChanged { .. })
        ));
        ahead
            .close(CloseReason::Shutdown, at("2025-01-01T01:00:00.000Z"), &key)
            .unwrap();
        assert_eq!(
            ahead.append_signed(signed_receipt).unwrap_err(),
            ChainError::Closed
        );
        let mut invalid = crate::decision::tests::sample_decision();
        invalid.started_at = at("2030-01-01T00:00:00.000Z");
        assert!(SignedRecord::decision(invalid, &key).is_err());
    }

    #[test]
    fn writer_links_envelopes_and_checker_accepts_them() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let envelopes = stream(&key, 3);
        assert_eq!(
            envelopes.iter().map(|e| e.seq.get()).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(envelopes[0].prev_hash, PrevHash::Genesis);
        assert_eq!(envelopes[1].prev_hash, PrevHash::Hash(envelopes[0].hash));
        let close = envelopes[3].close().unwrap();
        assert_eq!(close.close.last_seq.get(), 3);
        assert_eq!(close.close.last_hash, PrevHash::Hash(envelopes[2].hash));
        assert!(
            close
                .verify_signature(&PublicKey::of_signing_key(&key))
                .is_ok()
        );

        let mut checker = StreamChainChecker::new(Identifier::new("stream-1").unwrap());
        for envelope in &envelopes {
            checker.check(envelope).unwrap();
        }
        assert!(checker.is_closed());
    }

    #[test]
    fn checker_names_gaps_regressions_and_broken_links() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let envelopes = stream(&key, 3);
        let id = Identifier::new("stream-1").unwrap();

        let mut checker = StreamChainChecker::new(id.clone());
        checker.check(&envelopes[0]).unwrap();
        assert_eq!(
            checker.check(&envelopes[2]),
            Err(ChainError::Gap {
                expected: 2,
                found: 3
            })
        );
        assert_eq!(
            checker.check(&envelopes[0]),
            Err(ChainError::Regressed {
                expected: 2,
                found: 1
            })
        );

        let mut tampered = envelopes[1].clone();
        tampered.prev_hash = PrevHash::Genesis;
        assert_eq!(
            checker.check(&tampered),
            Err(ChainError::HashMismatch { seq: 2 })
        );
        tampered.hash = tampered.compute_hash().unwrap();
        assert_eq!(
            checker.check(&tampered),
            Err(ChainError::PrevHashMismatch { seq: 2 })
        );

        let mut other = StreamChainChecker::new(Identifier::new("stream-2").unwrap());
        assert_eq!(other.check(&envelopes[0]), Err(ChainError::WrongStream));
    }

    #[test]
    fn writer_refuses_after_close_and_key_changes() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let mut writer = StreamChainWriter::new(Identifier::new("s").unwrap());
        writer.append(signed(&key, 0)).unwrap();
        assert!(matches!(
            writer.append(signed(&other, 1)),
            Err(ChainError::KeyChanged { .. })
        ));
        assert!(matches!(
            writer.close(
                CloseReason::Shutdown,
                at("2025-01-01T01:00:00.000Z"),
                &other
            ),
            Err(ChainError::KeyChanged { .. })
        ));
        writer
            .close(CloseReason::Shutdown, at("2025-01-01T01:00:00.000Z"), &key)
            .unwrap();
        assert_eq!(
            writer.append(signed(&key, 2)).unwrap_err(),
            ChainError::Closed
        );
    }

    #[test]
    fn resume_continues_the_same_chain() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut writer = StreamChainWriter::new(Identifier::new("s").unwrap());
        let first = writer.append(signed(&key, 0)).unwrap();
        let mut resumed = StreamChainWriter::resume_after(&first).unwrap();
        let second = resumed.append(signed(&key, 1)).unwrap();
        assert_eq!(second.seq.get(), 2);
        assert_eq!(second.prev_hash, PrevHash::Hash(first.hash));
        let mut checker = StreamChainChecker::resume_after(&first).unwrap();
        checker.check(&second).unwrap();
    }

    #[test]
    fn empty_stream_close_names_genesis() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let envelopes = stream(&key, 0);
        let close = &envelopes[0].close().unwrap().close;
        assert_eq!((close.last_seq.get(), close.receipt_count.get()), (0, 0));
        assert_eq!(close.last_hash, PrevHash::Genesis);
        assert!(close_record_matches(
            close,
            &envelopes[0].stream_id,
            envelopes[0].seq,
            &PrevHash::Genesis
        ));
    }
}
