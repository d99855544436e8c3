//! The verification report: a verdict per phase, and typed findings, each with a
//! phase, a stable code string and a location.

use std::fmt;

use serde::Serialize;

use crate::fields::Identifier;
use crate::keys::KeyId;

/// The verifier's phases, run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// 1: size limits, strict JSON, schema, manifest and structure.
    Manifest,
    /// 2: envelope hashes and certificate key ids.
    ContentHashes,
    /// 3: per-stream sequence, links and close records.
    StreamChains,
    /// 4: segment roots, checkpoint roots and proofs.
    MerkleRoots,
    /// 5: checkpoint links, times, and externally known checkpoints.
    CheckpointChain,
    /// 6: signatures and key validity against the trust roots.
    Signatures,
    /// 7: genesis, seal and checkpoint links between segments.
    SegmentLinks,
}

impl Phase {
    /// All phases in order.
    pub const ALL: [Self; 7] = [
        Self::Manifest,
        Self::ContentHashes,
        Self::StreamChains,
        Self::MerkleRoots,
        Self::CheckpointChain,
        Self::Signatures,
        Self::SegmentLinks,
    ];

    /// 1 to 7.
    pub const fn number(self) -> u8 {
        match self {
            Self::Manifest => 1,
            Self::ContentHashes => 2,
            Self::StreamChains => 3,
            Self::MerkleRoots => 4,
            Self::CheckpointChain => 5,
            Self::Signatures => 6,
            Self::SegmentLinks => 7,
        }
    }

    /// A short title for people.
    pub const fn title(self) -> &'static str {
        match self {
            Self::Manifest => "manifest structure",
            Self::ContentHashes => "content hashes",
            Self::StreamChains => "stream chains and gaps",
            Self::MerkleRoots => "Merkle roots",
            Self::CheckpointChain => "checkpoint chain",
            Self::Signatures => "signatures and key validity",
            Self::SegmentLinks => "cross-segment links",
        }
    }
}

/// The outcome of a phase or of the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Everything checked and held.
    Pass,
    /// Nothing failed, but something could not be established (no trust root, an
    /// open stream). Never a pass.
    Warn,
    /// Something failed.
    Fail,
    /// Not run, because an earlier phase made the input unusable.
    Skipped,
}

impl Verdict {
    /// The lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
            Self::Skipped => "skipped",
        }
    }
}

macro_rules! error_codes {
    ($($variant:ident => $code:literal, $phase:ident, $severity:ident, $doc:literal;)*) => {
        /// Every finding the verifier can report. The code strings are stable.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in phase order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The stable code string.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)* }
            }

            /// The phase that reports it.
            pub const fn phase(self) -> Phase {
                match self { $(Self::$variant => Phase::$phase,)* }
            }

            /// Whether it is a warning (the phase is `warn`) rather than a failure.
            pub const fn is_warning(self) -> bool {
                match self { $(Self::$variant => matches!(Severity::$severity, Severity::Warn),)* }
            }

            /// What it means.
            pub const fn description(self) -> &'static str {
                match self { $(Self::$variant => $doc,)* }
            }
        }
    };
}

enum Severity {
    Fail,
    Warn,
}

error_codes! {
    InputTooLarge => "input_too_large", Manifest, Fail, "The input is larger than the byte limit; it was not parsed.";
    InvalidJson => "invalid_json", Manifest, Fail, "The input is not JSON, has trailing data, or nests too deep.";
    DuplicateKey => "duplicate_key", Manifest, Fail, "An object holds the same key twice.";
    NonIntegerNumber => "non_integer_number", Manifest, Fail, "A number has a fraction or an exponent.";
    IntegerOutOfRange => "integer_out_of_range", Manifest, Fail, "An integer is beyond ±(2^53 − 1).";
    SchemaViolation => "schema_violation", Manifest, Fail, "The document does not match the bundle schema or a field check failed.";
    LimitExceeded => "limit_exceeded", Manifest, Fail, "A count or proof length is above its verification limit.";
    BundleEmpty => "bundle_empty", Manifest, Fail, "The bundle holds no segment.";
    SegmentEmpty => "segment_empty", Manifest, Fail, "A segment holds no envelope.";
    SegmentIndexMismatch => "segment_index_mismatch", Manifest, Fail, "Segments are not numbered 0, 1, 2, … in order (in a range bundle, consecutively from the one after the base).";
    LeafIndexMismatch => "leaf_index_mismatch", Manifest, Fail, "A genesis gives the wrong log position for its first envelope.";
    CheckpointCountMismatch => "checkpoint_count_mismatch", Manifest, Fail, "There is not exactly one checkpoint per segment.";
    OriginMismatch => "origin_mismatch", Manifest, Fail, "A genesis or checkpoint names a different log origin than the manifest.";
    CertificatesNotSorted => "certificates_not_sorted", Manifest, Fail, "Certificates are not strictly sorted by key id and not_before.";
    ProofReferenceInvalid => "proof_reference_invalid", Manifest, Fail, "A proof names a checkpoint or leaf that does not exist, or proofs are out of order.";
    ManifestMismatch => "manifest_mismatch", Manifest, Fail, "The manifest's counts, ranges or latest checkpoint do not describe the bundle.";
    EnvelopeHashMismatch => "envelope_hash_mismatch", ContentHashes, Fail, "An envelope's hash is not the hash of its content.";
    CertificateKeyIdMismatch => "certificate_key_id_mismatch", ContentHashes, Fail, "A certificate's key_id is not the hash of its public key.";
    SeqDuplicate => "seq_duplicate", StreamChains, Fail, "A stream has two envelopes with the same seq.";
    SeqGap => "seq_gap", StreamChains, Fail, "A stream is missing envelopes (seq skips, or does not start at 1 in a bundle from segment 0).";
    SeqOutOfOrder => "seq_out_of_order", StreamChains, Fail, "A stream's envelopes appear in the log out of seq order.";
    PrevHashMismatch => "prev_hash_mismatch", StreamChains, Fail, "An envelope's prev_hash does not name the previous envelope of its stream.";
    RecordAfterClose => "record_after_close", StreamChains, Fail, "A stream continues after its close record.";
    CloseRecordMismatch => "close_record_mismatch", StreamChains, Fail, "A close record's stream, counts or last hash disagree with the chain.";
    ReceiptIdDuplicate => "receipt_id_duplicate", StreamChains, Fail, "Two receipts carry the same id.";
    StreamOpen => "stream_open", StreamChains, Warn, "A stream has no close record: the gateway is still running, crashed, or the tail was cut off.";
    ContinuationMissing => "continuation_missing", StreamChains, Fail, "A range bundle holds a stream from past its first record without that stream's envelope before the range (or with one that is not it), so nothing shows the range continues it without a gap.";
    DecisionMissing => "decision_missing", StreamChains, Fail, "A receipt names a forward decision the bundle does not hold, one for another request, one logged after it, or one another receipt already names.";
    ForwardedOutcomeUnknown => "forwarded_outcome_unknown", StreamChains, Warn, "A request was forwarded (its forward decision is signed) but no receipt says how it ended: the gateway is still serving it, was killed, or could not sign the receipt.";
    SealCountMismatch => "seal_count_mismatch", MerkleRoots, Fail, "A seal's envelope count differs from the segment's.";
    SealRootMismatch => "seal_root_mismatch", MerkleRoots, Fail, "A seal's root is not the Merkle root of its segment's envelopes.";
    CheckpointSizeMismatch => "checkpoint_size_mismatch", MerkleRoots, Fail, "A checkpoint's size is not the number of envelopes up to its segment.";
    CheckpointRootMismatch => "checkpoint_root_mismatch", MerkleRoots, Fail, "A checkpoint's root is not the Merkle root of the log up to its segment.";
    InclusionProofInvalid => "inclusion_proof_invalid", MerkleRoots, Fail, "An inclusion proof does not verify.";
    ConsistencyProofInvalid => "consistency_proof_invalid", MerkleRoots, Fail, "A consistency proof does not verify.";
    ContinuationProofInvalid => "continuation_proof_invalid", MerkleRoots, Fail, "A continued stream's envelope before the range is not proven in its segment (no header for it, or the audit path does not reach the seal root).";
    BaseInvalid => "base_invalid", MerkleRoots, Fail, "A range bundle's base frontier does not fit the base checkpoint's size or does not hash to its root.";
    CheckpointLinkBroken => "checkpoint_link_broken", CheckpointChain, Fail, "A checkpoint does not link to the previous one (a fork or a rewrite).";
    CheckpointTimeRegressed => "checkpoint_time_regressed", CheckpointChain, Fail, "A checkpoint is dated before the previous one.";
    KnownCheckpointOriginMismatch => "known_checkpoint_origin_mismatch", CheckpointChain, Fail, "A checkpoint given to the verifier is for a different log.";
    KnownCheckpointBeforeBundle => "known_checkpoint_before_bundle", CheckpointChain, Fail, "A checkpoint given to the verifier is older than the range bundle's base, so the bundle cannot show the log still extends it: export the range after that checkpoint.";
    BundleTruncated => "bundle_truncated", CheckpointChain, Fail, "A checkpoint given to the verifier covers more envelopes than the bundle: the log was cut.";
    KnownCheckpointConflict => "known_checkpoint_conflict", CheckpointChain, Fail, "A checkpoint given to the verifier has a different root than the bundle at that size: the log was rewritten.";
    NoTrustRoot => "no_trust_root", Signatures, Warn, "No trust root was given: certificates, checkpoints and the manifest were not checked against trusted keys.";
    TrustRootInvalid => "trust_root_invalid", Signatures, Fail, "The trust roots are inconsistent (key id mismatch, empty window, conflicting duplicates).";
    KeyUnknown => "key_unknown", Signatures, Fail, "An object is signed by a key the trust roots do not hold.";
    KeyRoleMismatch => "key_role_mismatch", Signatures, Fail, "A trusted key signed something its role does not allow.";
    KeyRevoked => "key_revoked", Signatures, Fail, "An object is signed by a revoked key.";
    KeyOutsideWindow => "key_outside_window", Signatures, Fail, "An object was signed outside the trusted key's validity window.";
    RetiredKeyWithoutNotAfter => "retired_key_without_not_after", Signatures, Fail, "A retired trusted key has no not_after, so what it signed cannot be dated against its retirement.";
    CertificateSignatureInvalid => "certificate_signature_invalid", Signatures, Fail, "A key certificate's CA signature does not verify.";
    SigningKeyUncertified => "signing_key_uncertified", Signatures, Fail, "Records are signed by a key with no valid certificate in the bundle.";
    ReceiptSignatureInvalid => "receipt_signature_invalid", Signatures, Fail, "A receipt's signature does not verify.";
    DecisionSignatureInvalid => "decision_signature_invalid", Signatures, Fail, "A forward decision's signature does not verify.";
    CloseSignatureInvalid => "close_signature_invalid", Signatures, Fail, "A close record's signature does not verify.";
    OutsideCertificateWindow => "outside_certificate_window", Signatures, Fail, "A record is dated outside every certificate window of its key.";
    WorkloadMismatch => "workload_mismatch", Signatures, Fail, "A receipt names a namespace, serviceAccount or pod its key is not certified for.";
    StreamKeyChanged => "stream_key_changed", Signatures, Fail, "A stream's records are signed by more than one key.";
    CheckpointSignatureInvalid => "checkpoint_signature_invalid", Signatures, Fail, "A checkpoint's signature does not verify.";
    ManifestSignatureInvalid => "manifest_signature_invalid", Signatures, Fail, "The manifest's signature does not verify.";
    GenesisHashMismatch => "genesis_hash_mismatch", SegmentLinks, Fail, "A seal does not name its segment's genesis.";
    SegmentLinkBroken => "segment_link_broken", SegmentLinks, Fail, "A genesis does not link to the previous segment's seal.";
    CheckpointSealMismatch => "checkpoint_seal_mismatch", SegmentLinks, Fail, "A checkpoint does not name its segment's seal.";
    BaseHeadersInvalid => "base_headers_invalid", SegmentLinks, Fail, "A range bundle's segment headers are not consecutive, do not link seal to genesis to seal, or do not end with the base checkpoint's seal.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Where in the bundle a finding is. Only the fields that apply are set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Segment index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<u64>,
    /// Envelope position within the segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<u64>,
    /// Stream id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<Identifier>,
    /// Envelope seq within its stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Certificate index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<u64>,
    /// Checkpoint index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// Index among the checkpoints given to the verifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_checkpoint: Option<u64>,
    /// Proof index (inclusion or consistency, per the code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<u64>,
    /// The range bundle's base checkpoint.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub base_checkpoint: bool,
    /// The key involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
}

impl Location {
    /// Nowhere in particular (the whole document).
    pub fn document() -> Self {
        Self::default()
    }

    /// An envelope.
    pub fn envelope(segment: usize, envelope: usize, stream_id: &Identifier, seq: u64) -> Self {
        Self {
            segment: Some(segment as u64),
            envelope: Some(envelope as u64),
            stream_id: Some(stream_id.clone()),
            seq: Some(seq),
            ..Self::default()
        }
    }

    /// A segment.
    pub fn segment(segment: usize) -> Self {
        Self {
            segment: Some(segment as u64),
            ..Self::default()
        }
    }

    /// A stream.
    pub fn stream(stream_id: &Identifier) -> Self {
        Self {
            stream_id: Some(stream_id.clone()),
            ..Self::default()
        }
    }

    /// A certificate.
    pub fn certificate(index: usize) -> Self {
        Self {
            certificate: Some(index as u64),
            ..Self::default()
        }
    }

    /// A checkpoint.
    pub fn checkpoint(index: usize) -> Self {
        Self {
            checkpoint: Some(index as u64),
            ..Self::default()
        }
    }

    /// A range bundle's base checkpoint.
    pub fn base() -> Self {
        Self {
            base_checkpoint: true,
            ..Self::default()
        }
    }

    /// A continued stream's envelope before a range bundle's base.
    pub fn base_continuation(stream_id: &Identifier, seq: u64) -> Self {
        Self {
            base_checkpoint: true,
            stream_id: Some(stream_id.clone()),
            seq: Some(seq),
            ..Self::default()
        }
    }

    /// A checkpoint given to the verifier.
    pub fn known_checkpoint(index: usize) -> Self {
        Self {
            known_checkpoint: Some(index as u64),
            ..Self::default()
        }
    }

    /// A proof.
    pub fn proof(index: usize) -> Self {
        Self {
            proof: Some(index as u64),
            ..Self::default()
        }
    }

    /// Adds the key involved.
    pub fn with_key(mut self, key_id: KeyId) -> Self {
        self.key_id = Some(key_id);
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = self.segment {
            parts.push(format!("segment {v}"));
        }
        if let Some(v) = self.envelope {
            parts.push(format!("envelope {v}"));
        }
        if let Some(v) = &self.stream_id {
            parts.push(format!("stream {v}"));
        }
        if let Some(v) = self.seq {
            parts.push(format!("seq {v}"));
        }
        if let Some(v) = self.certificate {
            parts.push(format!("certificate {v}"));
        }
        if let Some(v) = self.checkpoint {
            parts.push(format!("checkpoint {v}"));
        }
        if let Some(v) = self.known_checkpoint {
            parts.push(format!("given checkpoint {v}"));
        }
        if let Some(v) = self.proof {
            parts.push(format!("proof {v}"));
        }
        if let Some(v) = &self.key_id {
            parts.push(format!("key {v}"));
        }
        if parts.is_empty() {
            f.write_str("document")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// One problem the verifier found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The phase that found it.
    pub phase: Phase,
    /// What it is.
    pub code: ErrorCode,
    /// Where.
    pub location: Location,
    /// Specifics for people (bounded, control characters removed).
    pub detail: String,
}

const MAX_DETAIL_CHARS: usize = 300;

impl Finding {
    /// A finding; the phase follows from the code.
    pub fn new(code: ErrorCode, location: Location, detail: impl Into<String>) -> Self {
        let detail: String = detail
            .into()
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_DETAIL_CHARS)
            .collect();
        Self {
            phase: code.phase(),
            code,
            location,
            detail,
        }
    }
}

/// One phase's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseReport {
    /// The phase.
    pub phase: Phase,
    /// Its verdict.
    pub verdict: Verdict,
    /// What it found (at most the per-phase limit).
    pub findings: Vec<Finding>,
    /// Findings beyond the limit, counted but not listed.
    pub suppressed: u64,
}

/// Totals of what the bundle holds, when it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BundleSummary {
    /// Segments.
    pub segments: u64,
    /// Envelopes.
    pub envelopes: u64,
    /// Receipts.
    pub receipts: u64,
    /// Close records.
    pub close_records: u64,
    /// Distinct streams.
    pub streams: u64,
    /// Streams without a close record.
    pub open_streams: u64,
    /// Forward decisions (one per upstream attempt).
    pub decisions: u64,
    /// Forward decisions no receipt names: forwarded, outcome unknown.
    pub forwarded_outcome_unknown: u64,
    /// ... of them, in streams without a close record (requests the gateway
    /// may still be serving).
    pub forwarded_outcome_unknown_in_open_streams: u64,
    /// Certificates.
    pub certificates: u64,
    /// Checkpoints.
    pub checkpoints: u64,
    /// The last checkpoint: it covers every envelope in the bundle, those of
    /// open streams included.
    pub last_checkpoint: Option<CheckpointRef>,
    /// A range bundle's base: the checkpoint it continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_checkpoint: Option<CheckpointRef>,
    /// Streams a range bundle holds from past their first record (their start
    /// is under the base checkpoint).
    pub streams_continued: u64,
    /// Receipts in such streams whose forward decision precedes the range.
    pub decisions_before_range: u64,
    /// Per guard, how its checks came out across the bundle's receipts.
    pub guard_checks: std::collections::BTreeMap<String, GuardTally>,
    /// Receipts that list no guard checks at all (written by gateways that
    /// predate them): for these, "not denied" does not mean "checked".
    pub receipts_without_checks: u64,
}

/// How often one guard passed, denied or only audited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GuardTally {
    pub passed: u64,
    pub denied: u64,
    pub audit_only: u64,
}

/// Which checkpoint, by position and content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckpointRef {
    /// Its position in the bundle's checkpoints, from 0; absent for a range
    /// bundle's base, which is not among them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// The log size it commits to.
    pub size: u64,
    /// The tree root it commits to.
    pub root: crate::Sha256Hex,
    /// When the recorder signed it.
    pub issued_at: crate::Timestamp,
}

/// The verifier's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerificationReport {
    /// `tollgate.dev/verification-report`.
    pub format: &'static str,
    /// 1.
    pub format_version: u32,
    /// `pass` only when every phase passed against a trust root.
    pub verdict: Verdict,
    /// Whether trust roots were given.
    pub trust_root_given: bool,
    /// Bytes examined.
    pub input_bytes: u64,
    /// One entry per phase, in order.
    pub phases: Vec<PhaseReport>,
    /// What the bundle holds, when it parsed.
    pub summary: Option<BundleSummary>,
    /// Whether the only findings short of a pass are open streams (a live
    /// system), checked against trust roots: see
    /// [`VerificationReport::passed_but_open_streams`].
    pub open_streams_only: bool,
}

impl VerificationReport {
    /// The report format id.
    pub const FORMAT: &'static str = "tollgate.dev/verification-report";

    /// Whether the verdict is `pass`.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// Whether the only thing short of a pass is streams without a close record
    /// (the streams of gateways still running), checked against trust roots:
    /// every phase passed except stream chains, whose findings, listed and
    /// suppressed, are exactly the open streams.
    pub fn passed_but_open_streams(&self) -> bool {
        if self.verdict != Verdict::Warn || !self.trust_root_given {
            return false;
        }
        let Some(summary) = &self.summary else {
            return false;
        };
        self.phases.iter().all(|p| match p.verdict {
            Verdict::Pass => true,
            Verdict::Warn if p.phase == Phase::StreamChains => {
                // Open streams, and requests in flight in them.
                p.findings.iter().all(|f| {
                    matches!(
                        f.code,
                        ErrorCode::StreamOpen | ErrorCode::ForwardedOutcomeUnknown
                    )
                }) && summary.forwarded_outcome_unknown
                    == summary.forwarded_outcome_unknown_in_open_streams
                    && p.findings.len() as u64 + p.suppressed
                        == summary.open_streams + summary.forwarded_outcome_unknown
            }
            _ => false,
        })
    }

    /// The result of `phase`.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| p.phase == phase)
    }

    /// The first phase that failed.
    pub fn first_failure(&self) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| p.verdict == Verdict::Fail)
    }

    /// Every finding, in phase order.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.phases.iter().flat_map(|p| &p.findings)
    }

    /// Whether any finding has `code`.
    pub fn has(&self, code: ErrorCode) -> bool {
        self.findings().any(|f| f.code == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_lowercase_and_in_phase_order() {
        let mut seen = std::collections::BTreeSet::new();
        let mut last_phase = Phase::Manifest;
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!(code.phase() >= last_phase, "{code} out of phase order");
            last_phase = code.phase();
        }
        assert!(ErrorCode::StreamOpen.is_warning());
        assert!(ErrorCode::NoTrustRoot.is_warning());
        assert!(!ErrorCode::SeqGap.is_warning());
    }

    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../docs/evidence.md");
        for code in ErrorCode::ALL {
            assert!(
                doc.contains(&format!("`{}`", code.as_str())),
                "{code} is missing from docs/evidence.md"
            );
        }
    }

    #[test]
    fn details_are_bounded_and_clean() {
        let finding = Finding::new(
            ErrorCode::InvalidJson,
            Location::document(),
            format!("a\nb{}", "x".repeat(1000)),
        );
        assert_eq!(finding.detail.chars().count(), 300);
        assert!(finding.detail.starts_with("ab"));
        assert_eq!(finding.phase, Phase::Manifest);
    }
}
