//! Receipt batch ingestion, pure: parsing a `POST /v1/receipts` body, verifying
//! every envelope before anything is stored, and planning which envelopes extend
//! their stream's chain.
//!
//! Two stages:
//! 1. [`verify_batch`] (stateless, CPU-bound, parallel): the key certificate against
//!    the trust roots (issuer an active `receiptCA` key, valid when the certificate
//!    was issued and at each receipt's time; CA signature; key id), then each
//!    envelope's stream, hash, signing key, signature, certificate window and
//!    workload binding.
//! 2. [`plan_chain`] (against the stored stream position): duplicates (same seq and
//!    same hash) are counted, not stored again; a gap, a broken link, a key change,
//!    a wrong close record, a reused receipt id or a conflicting envelope at an
//!    already stored seq is rejected and, where it threatens the chain, reported as
//!    a [`ChainFault`]. Everything after a rejected envelope in the same batch is
//!    rejected too (`preceded_by_rejection`), so nothing is stored out of order.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tollgate_evidence::{
    ChainError, Envelope, EnvelopeRecord, Identifier, KeyRole, Sha256Hex, SignedKeyCertificate,
    StreamChainChecker, Timestamp, TrustRoots, TrustedKey,
};

use crate::error::RecorderError;
pub use tollgate_wire::ingest::{IngestResponse, RejectReason, Rejection, StreamStatus};

/// The chain fault a rejection is flagged as, if it threatens the chain.
pub const fn fault_of(reason: RejectReason) -> Option<FaultKind> {
    match reason {
        RejectReason::SeqGap => Some(FaultKind::Gap),
        RejectReason::PrevHashMismatch | RejectReason::CloseMismatch => {
            Some(FaultKind::BrokenChain)
        }
        RejectReason::SeqConflict => Some(FaultKind::Conflict),
        RejectReason::KeyChanged => Some(FaultKind::KeyChanged),
        _ => None,
    }
}

/// A refusal before the chain stage: a reason and a bounded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RejectReason,
    /// Details for people (never receipt content beyond ids and numbers).
    pub message: String,
}

impl Refusal {
    fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        truncate(&mut message, 300);
        Self { reason, message }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// What a chain fault is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Envelopes are missing before this seq.
    Gap,
    /// A link or the close record does not fit the stored chain.
    BrokenChain,
    /// A different envelope was offered for an already stored seq.
    Conflict,
    /// A record signed by another key than the stream's.
    KeyChanged,
}

impl FaultKind {
    /// Every kind, for metrics.
    pub const ALL: [Self; 4] = [
        Self::Gap,
        Self::BrokenChain,
        Self::Conflict,
        Self::KeyChanged,
    ];

    /// The wire code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gap => "gap",
            Self::BrokenChain => "broken_chain",
            Self::Conflict => "conflict",
            Self::KeyChanged => "key_changed",
        }
    }

    /// Parses a wire code.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A flagged threat to a stream's chain, stored and shown as a usage warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFault {
    /// The stream.
    pub stream_id: String,
    /// What.
    pub kind: FaultKind,
    /// The offending envelope's seq.
    pub seq: u64,
    /// The offending record's time (unix milliseconds).
    pub at_ms: u64,
    /// Details.
    pub message: String,
}

/// A parsed batch: the certificate and each envelope (or why it could not be read).
#[derive(Debug)]
pub struct IngestBatch {
    /// The key certificate of the stream's gateway key.
    pub certificate: SignedKeyCertificate,
    /// The envelopes, in batch order.
    pub envelopes: Vec<Result<Envelope, Refusal>>,
    /// Each envelope's JSON as received (stored as is: no re-serialization).
    pub raw: Vec<Box<str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    certificate: Box<RawValue>,
    envelopes: Vec<Box<RawValue>>,
}

/// Parses a batch body: strict JSON (no duplicate keys, no floats), then the
/// certificate and each envelope. A batch over `max_envelopes` is refused whole.
pub fn parse_batch(body: &[u8], max_envelopes: usize) -> Result<IngestBatch, RecorderError> {
    tollgate_evidence::strict_json::validate(body)
        .map_err(|e| RecorderError::BadRequest(format!("batch is not strict JSON: {e}")))?;
    let raw: RawBatch = serde_json::from_slice(body).map_err(|e| {
        RecorderError::BadRequest(format!(
            "batch must be {{\"certificate\": ..., \"envelopes\": [...]}}: {e}"
        ))
    })?;
    if raw.envelopes.len() > max_envelopes {
        return Err(RecorderError::TooLarge {
            what: "envelopes in one batch",
            limit: max_envelopes as u64,
        });
    }
    let certificate: SignedKeyCertificate = serde_json::from_str(raw.certificate.get())
        .map_err(|e| RecorderError::BadRequest(format!("certificate: {e}")))?;
    let envelopes = raw
        .envelopes
        .iter()
        .map(|e| {
            serde_json::from_str::<Envelope>(e.get())
                .map_err(|err| Refusal::new(RejectReason::Malformed, err.to_string()))
        })
        .collect();
    Ok(IngestBatch {
        certificate,
        envelopes,
        raw: raw.envelopes.into_iter().map(Box::<str>::from).collect(),
    })
}

/// The trusted issuer of `certificate`, if the certificate is acceptable.
pub fn check_certificate<'t>(
    certificate: &SignedKeyCertificate,
    trust: &'t TrustRoots,
) -> Result<&'t TrustedKey, Refusal> {
    let body = &certificate.certificate;
    let issuer = trust.find(&body.issuer_key_id).ok_or_else(|| {
        Refusal::new(
            RejectReason::CertificateUntrusted,
            format!("issuer {} is not a trusted key", body.issuer_key_id),
        )
    })?;
    if issuer.role != KeyRole::ReceiptCa {
        return Err(Refusal::new(
            RejectReason::CertificateUntrusted,
            format!("issuer {} is not a receiptCA key", body.issuer_key_id),
        ));
    }
    // A retired issuer still vouches for what it certified inside its
    // window (a receipt CA rotation keeps it trusted until its last
    // certificate expires); `check_use` refuses revoked keys and retired
    // ones without a `notAfter`.
    issuer
        .check_use(KeyRole::ReceiptCa, body.not_before)
        .map_err(|e| {
            Refusal::new(
                RejectReason::CertificateUntrusted,
                format!("issuer at the certificate's issue time: {e}"),
            )
        })?;
    if body.public_key.key_id() != body.key_id {
        return Err(Refusal::new(
            RejectReason::CertificateInvalid,
            "certificate key_id is not the hash of its public key",
        ));
    }
    certificate.verify_issuer(&issuer.public_key).map_err(|e| {
        Refusal::new(
            RejectReason::CertificateInvalid,
            format!("CA signature: {e}"),
        )
    })?;
    Ok(issuer)
}

/// The times a record is dated at: a receipt's start and end, a forward
/// decision's request start and decision, a close record's close.
fn record_times(envelope: &Envelope) -> [Timestamp; 2] {
    match &envelope.record {
        EnvelopeRecord::Receipt(r) => [r.body.started_at, r.body.completed_at],
        EnvelopeRecord::Decision(d) => [d.decision.started_at, d.decision.decided_at],
        EnvelopeRecord::Close(c) => [c.close.closed_at, c.close.closed_at],
    }
}

/// Stateless checks of one envelope against the batch's (already checked) certificate.
pub fn check_envelope(
    envelope: &Envelope,
    stream_id: &Identifier,
    certificate: &SignedKeyCertificate,
    issuer: &TrustedKey,
) -> Result<(), Refusal> {
    let cert = &certificate.certificate;
    if &envelope.stream_id != stream_id {
        return Err(Refusal::new(
            RejectReason::WrongStream,
            format!(
                "envelope is for stream {}, batch is {stream_id}",
                envelope.stream_id
            ),
        ));
    }
    if envelope.record.key_id() != &cert.key_id {
        return Err(Refusal::new(
            RejectReason::KeyNotCertified,
            format!(
                "signed by {}, certificate is for {}",
                envelope.record.key_id(),
                cert.key_id
            ),
        ));
    }
    let digest = envelope
        .digest()
        .map_err(|e| Refusal::new(RejectReason::Malformed, e.to_string()))?;
    if digest.hash != envelope.hash {
        return Err(Refusal::new(
            RejectReason::HashMismatch,
            "hash is not the SHA-256 of the envelope content",
        ));
    }
    let signature = match &envelope.record {
        EnvelopeRecord::Receipt(r) => &r.signature,
        EnvelopeRecord::Decision(d) => {
            d.decision
                .validate()
                .map_err(|e| Refusal::new(RejectReason::Malformed, e.to_string()))?;
            &d.signature
        }
        EnvelopeRecord::Close(c) => &c.signature,
    };
    cert.public_key
        .verify_strict(&digest.signed_bytes, signature)
        .map_err(|_| Refusal::new(RejectReason::SignatureInvalid, "signature does not verify"))?;
    for at in record_times(envelope) {
        if !cert.covers(at) {
            return Err(Refusal::new(
                RejectReason::OutsideCertificateWindow,
                format!(
                    "dated {at}, certificate valid {} to {}",
                    cert.not_before, cert.not_after
                ),
            ));
        }
        issuer.check_use(KeyRole::ReceiptCa, at).map_err(|e| {
            Refusal::new(
                RejectReason::CertificateUntrusted,
                format!("issuer at the record's time {at}: {e}"),
            )
        })?;
    }
    let workload = match &envelope.record {
        EnvelopeRecord::Receipt(r) => Some(&r.body.workload),
        EnvelopeRecord::Decision(d) => Some(&d.decision.workload),
        EnvelopeRecord::Close(_) => None,
    };
    if workload.is_some_and(|w| !cert.binds(w)) {
        return Err(Refusal::new(
            RejectReason::WorkloadMismatch,
            "the record's workload is not the certified pod",
        ));
    }
    Ok(())
}

/// A batch after the stateless stage: the stream and each envelope's verdict.
#[derive(Debug)]
pub struct VerifiedBatch {
    /// The certificate (valid only if no envelope was refused for it).
    pub certificate: SignedKeyCertificate,
    /// The batch's stream (from the first readable envelope).
    pub stream_id: Option<Identifier>,
    /// Each envelope: verified, or refused (with its seq, if readable).
    pub envelopes: Vec<(Option<u64>, Result<Envelope, Refusal>)>,
    /// Each envelope's JSON as received.
    pub raw: Vec<Box<str>>,
}

impl VerifiedBatch {
    /// Whether any envelope passed the stateless checks.
    pub fn any_verified(&self) -> bool {
        self.envelopes.iter().any(|(_, e)| e.is_ok())
    }
}

/// Runs the stateless checks on every envelope, using up to `threads` threads.
pub fn verify_batch(batch: IngestBatch, trust: &TrustRoots, threads: usize) -> VerifiedBatch {
    let IngestBatch {
        certificate,
        envelopes,
        raw,
    } = batch;
    let stream_id = envelopes
        .iter()
        .find_map(|e| e.as_ref().ok().map(|e| e.stream_id.clone()));
    let seqs: Vec<Option<u64>> = envelopes
        .iter()
        .map(|e| e.as_ref().ok().map(|e| e.seq.get()))
        .collect();
    let verdicts: Vec<Result<Envelope, Refusal>> =
        match (check_certificate(&certificate, trust), &stream_id) {
            (Err(refusal), _) => envelopes
                .into_iter()
                .map(|e| e.and(Err(refusal.clone())))
                .collect(),
            (Ok(_), None) => envelopes,
            (Ok(issuer), Some(stream)) => {
                let check = |e: Result<Envelope, Refusal>| {
                    e.and_then(|env| {
                        check_envelope(&env, stream, &certificate, issuer).map(|()| env)
                    })
                };
                let threads = threads.max(1);
                if threads == 1 || envelopes.len() < 64 {
                    envelopes.into_iter().map(check).collect()
                } else {
                    let chunk = envelopes.len().div_ceil(threads);
                    let mut chunks: Vec<Vec<Result<Envelope, Refusal>>> = Vec::new();
                    let mut rest = envelopes;
                    while rest.len() > chunk {
                        let tail = rest.split_off(chunk);
                        chunks.push(rest);
                        rest = tail;
                    }
                    chunks.push(rest);
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = chunks
                            .into_iter()
                            .map(|c| {
                                scope.spawn(move || c.into_iter().map(check).collect::<Vec<_>>())
                            })
                            .collect();
                        handles
                            .into_iter()
                            .flat_map(|h| {
                                h.join().unwrap_or_else(|_| {
                                    vec![Err(Refusal::new(
                                        RejectReason::Malformed,
                                        "verification thread failed",
                                    ))]
                                })
                            })
                            .collect()
                    })
                }
            }
        };
    VerifiedBatch {
        certificate,
        stream_id,
        envelopes: seqs.into_iter().zip(verdicts).collect(),
        raw,
    }
}

/// What the chain stage decided for a batch.
#[derive(Debug, Default)]
pub struct ChainPlan {
    /// Envelopes to store, in chain order.
    pub accepted: Vec<Envelope>,
    /// Their positions in the batch.
    pub accepted_indices: Vec<usize>,
    /// Envelopes already stored.
    pub duplicates: u64,
    /// Envelopes refused.
    pub rejected: Vec<Rejection>,
    /// Faults to flag.
    pub faults: Vec<ChainFault>,
    /// The stream's next seq after the accepted envelopes.
    pub next_seq: u64,
    /// Whether the stream is closed after the accepted envelopes.
    pub closed: bool,
}

/// What the store knows about a batch's stream.
#[derive(Debug, Default)]
pub struct StoredStream<'a> {
    /// The stream's last stored envelope; `None` for a new stream.
    pub last: Option<&'a Envelope>,
    /// Hashes of stored envelopes at seqs the batch repeats (below next seq).
    pub stored_hashes: HashMap<u64, Sha256Hex>,
    /// Receipt ids of the batch's new envelopes that are already stored.
    pub known_receipt_ids: HashSet<String>,
}

fn chain_refusal(e: &ChainError) -> Refusal {
    let reason = match e {
        ChainError::Gap { .. } => RejectReason::SeqGap,
        ChainError::Regressed { .. } => RejectReason::SeqConflict,
        ChainError::PrevHashMismatch { .. } => RejectReason::PrevHashMismatch,
        ChainError::HashMismatch { .. } => RejectReason::HashMismatch,
        ChainError::KeyChanged { .. } => RejectReason::KeyChanged,
        ChainError::CloseMismatch { .. } => RejectReason::CloseMismatch,
        ChainError::Closed => RejectReason::StreamClosed,
        ChainError::WrongStream => RejectReason::WrongStream,
        ChainError::SeqOverflow
        | ChainError::Canonical(_)
        | ChainError::Receipt(_)
        | ChainError::InvalidDecision => RejectReason::Malformed,
    };
    Refusal::new(reason, e.to_string())
}

/// Decides, against the stored stream, which verified envelopes extend the chain.
pub fn plan_chain(
    stream_id: &Identifier,
    envelopes: Vec<(Option<u64>, Result<Envelope, Refusal>)>,
    stored: &StoredStream<'_>,
) -> Result<ChainPlan, ChainError> {
    let mut checker = match stored.last {
        Some(last) => StreamChainChecker::resume_after(last)?,
        None => StreamChainChecker::new(stream_id.clone()),
    };
    let mut plan = ChainPlan::default();
    let mut batch_hashes: HashMap<u64, Sha256Hex> = HashMap::new();
    let mut batch_ids: HashSet<String> = HashSet::new();
    let mut broken = false;
    for (index, (seq, verdict)) in envelopes.into_iter().enumerate() {
        let reject = |refusal: Refusal, at_ms: Option<u64>, plan: &mut ChainPlan| {
            if let (Some(kind), Some(seq), Some(at_ms)) = (fault_of(refusal.reason), seq, at_ms) {
                plan.faults.push(ChainFault {
                    stream_id: stream_id.to_string(),
                    kind,
                    seq,
                    at_ms,
                    message: refusal.message.clone(),
                });
            }
            plan.rejected.push(Rejection {
                index,
                seq,
                reason: refusal.reason,
                message: refusal.message,
            });
        };
        let next = checker.next_seq().get();
        let envelope = match verdict {
            Err(refusal) => {
                if seq.is_none_or(|s| s >= next) {
                    broken = true;
                }
                reject(refusal, None, &mut plan);
                continue;
            }
            Ok(envelope) => envelope,
        };
        let at_ms = Some(record_times(&envelope)[0].unix_millis());
        let seq_now = envelope.seq.get();
        if seq_now < next {
            let known = stored
                .stored_hashes
                .get(&seq_now)
                .or_else(|| batch_hashes.get(&seq_now));
            match known {
                Some(hash) if *hash == envelope.hash => plan.duplicates += 1,
                _ => reject(
                    Refusal::new(
                        RejectReason::SeqConflict,
                        format!("a different envelope is stored at seq {seq_now}"),
                    ),
                    at_ms,
                    &mut plan,
                ),
            }
            continue;
        }
        if broken {
            reject(
                Refusal::new(
                    RejectReason::PrecededByRejection,
                    "an earlier envelope of this batch was rejected",
                ),
                at_ms,
                &mut plan,
            );
            continue;
        }
        if let Some(receipt) = envelope.receipt() {
            let id = receipt.body.id.as_str();
            if stored.known_receipt_ids.contains(id) || batch_ids.contains(id) {
                broken = true;
                reject(
                    Refusal::new(
                        RejectReason::ReceiptIdDuplicate,
                        format!("receipt id {id} is already stored at another position"),
                    ),
                    at_ms,
                    &mut plan,
                );
                continue;
            }
        }
        match checker.check(&envelope) {
            Ok(()) => {
                if let Some(receipt) = envelope.receipt() {
                    batch_ids.insert(receipt.body.id.as_str().to_string());
                }
                batch_hashes.insert(seq_now, envelope.hash);
                plan.accepted.push(envelope);
                plan.accepted_indices.push(index);
            }
            Err(e) => {
                broken = true;
                reject(chain_refusal(&e), at_ms, &mut plan);
            }
        }
    }
    plan.next_seq = checker.next_seq().get();
    plan.closed = checker.is_closed();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_test_support::fixtures::{Gateway, trust_for};

    fn verified(batch_json: &[u8], trust: &TrustRoots) -> VerifiedBatch {
        verify_batch(parse_batch(batch_json, 1_000).unwrap(), trust, 2)
    }

    #[test]
    fn a_clean_batch_is_accepted_in_order() {
        let gw = Gateway::new(1).unwrap();
        let trust = trust_for(&gw);
        let envelopes = gw.stream(5, true).unwrap();
        let v = verified(&gw.batch_json(&envelopes).unwrap(), &trust);
        let stream = v.stream_id.clone().unwrap();
        let plan = plan_chain(&stream, v.envelopes, &StoredStream::default()).unwrap();
        assert_eq!(plan.accepted.len(), 6);
        assert!(plan.rejected.is_empty());
        assert_eq!((plan.next_seq, plan.closed), (7, true));
    }

    #[test]
    fn a_retired_issuer_vouches_inside_its_window_only() {
        let gw = Gateway::new(1).unwrap();
        let mut trust = trust_for(&gw);
        let certificate = &gw.certificate;
        let issued = certificate.certificate.not_before;
        let expires = certificate.certificate.not_after;
        // Retired after a rotation, trusted until its last certificate expires.
        trust.keys[0].state = tollgate_evidence::KeyState::Retired;
        trust.keys[0].not_after = Some(expires);
        assert!(check_certificate(certificate, &trust).is_ok());
        let envelopes = gw.stream(2, true).unwrap();
        let v = verified(&gw.batch_json(&envelopes).unwrap(), &trust);
        assert!(
            v.envelopes.iter().all(|(_, e)| e.is_ok()),
            "records dated up to the certificate's expiry are accepted"
        );
        // Retired before the certificate was issued: refused.
        let before = Timestamp::from_unix_millis(issued.unix_millis() - 1).unwrap();
        trust.keys[0].not_after = Some(before);
        assert!(check_certificate(certificate, &trust).is_err());
        // Retired with no end, or revoked: refused.
        trust.keys[0].not_after = None;
        assert!(check_certificate(certificate, &trust).is_err());
        trust.keys[0].state = tollgate_evidence::KeyState::Revoked;
        trust.keys[0].not_after = Some(expires);
        assert!(check_certificate(certificate, &trust).is_err());
    }

    #[test]
    fn duplicates_are_counted_and_conflicts_rejected() {
        let gw = Gateway::new(1).unwrap();
        let trust = trust_for(&gw);
        let envelopes = gw.stream(3, false).unwrap();
        let mut stored = StoredStream {
            last: Some(&envelopes[1]),
            ..Default::default()
        };
        stored.stored_hashes.insert(1, envelopes[0].hash);
        stored.stored_hashes.insert(2, Sha256Hex::digest(b"other"));
        let v = verified(&gw.batch_json(&envelopes).unwrap(), &trust);
        let plan = plan_chain(v.stream_id.as_ref().unwrap(), v.envelopes, &stored).unwrap();
        assert_eq!(plan.duplicates, 1);
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].reason, RejectReason::SeqConflict);
        assert_eq!(plan.faults[0].kind, FaultKind::Conflict);
        assert_eq!(plan.accepted.len(), 1);
        assert_eq!(plan.next_seq, 4);
    }

    #[test]
    fn a_gap_is_rejected_flagged_and_stops_the_batch() {
        let gw = Gateway::new(1).unwrap();
        let trust = trust_for(&gw);
        let envelopes = gw.stream(4, false).unwrap();
        let batch = vec![
            envelopes[0].clone(),
            envelopes[2].clone(),
            envelopes[3].clone(),
        ];
        let v = verified(&gw.batch_json(&batch).unwrap(), &trust);
        let plan = plan_chain(
            v.stream_id.as_ref().unwrap(),
            v.envelopes,
            &StoredStream::default(),
        )
        .unwrap();
        assert_eq!(plan.accepted.len(), 1);
        let reasons: Vec<_> = plan.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [RejectReason::SeqGap, RejectReason::PrecededByRejection]
        );
        assert_eq!(plan.faults.len(), 1);
        assert_eq!(plan.faults[0].kind, FaultKind::Gap);
        assert_eq!(plan.next_seq, 2);
    }

    #[test]
    fn stateless_refusals_name_their_reason() {
        let gw = Gateway::new(1).unwrap();
        let trust = trust_for(&gw);
        let mut envelopes = gw.stream(2, false).unwrap();
        // Tamper with a signed field and fix the hash: the signature no longer verifies.
        if let EnvelopeRecord::Receipt(r) = &mut envelopes[0].record {
            r.body.cost_micro_usd = tollgate_evidence::SafeU64::from(1u32);
        }
        envelopes[0].hash = envelopes[0].compute_hash().unwrap();
        let v = verified(&gw.batch_json(&envelopes).unwrap(), &trust);
        let plan = plan_chain(
            v.stream_id.as_ref().unwrap(),
            v.envelopes,
            &StoredStream::default(),
        )
        .unwrap();
        assert!(plan.accepted.is_empty());
        assert_eq!(plan.rejected[0].reason, RejectReason::SignatureInvalid);
        assert_eq!(plan.rejected[1].reason, RejectReason::PrecededByRejection);
    }

    #[test]
    fn an_untrusted_certificate_refuses_everything() {
        let gw = Gateway::new(1).unwrap();
        let other =
            Gateway::with_ca(2, tollgate_test_support::fixtures::key_from("other-ca")).unwrap();
        let trust = trust_for(&other);
        let envelopes = gw.stream(2, false).unwrap();
        let v = verified(&gw.batch_json(&envelopes).unwrap(), &trust);
        assert!(!v.any_verified());
        assert!(
            v.envelopes
                .iter()
                .all(|(_, e)| e.as_ref().unwrap_err().reason == RejectReason::CertificateUntrusted)
        );
    }

    #[test]
    fn parse_refuses_oversized_and_sloppy_batches() {
        let gw = Gateway::new(1).unwrap();
        let envelopes = gw.stream(3, false).unwrap();
        assert!(matches!(
            parse_batch(&gw.batch_json(&envelopes).unwrap(), 2),
            Err(RecorderError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_batch(
                br#"{"certificate": {}, "envelopes": [], "envelopes": []}"#,
                2
            ),
            Err(RecorderError::BadRequest(_))
        ));
        let parsed = parse_batch(
            format!(
                r#"{{"certificate": {}, "envelopes": [{{"seq": 1.5}}]}}"#,
                serde_json::to_string(&gw.certificate).unwrap()
            )
            .as_bytes(),
            2,
        );
        assert!(
            matches!(parsed, Err(RecorderError::BadRequest(_))),
            "floats are refused"
        );
    }
}
