//! The offline bundle verifier: deterministic, bounded and fail-closed.
//!
//! Phases run in order: 1 manifest structure, 2 content hashes, 3 stream chains,
//! 4 Merkle roots, 5 checkpoint chain, 6 signatures against trust roots, 7
//! cross-segment links. If phase 1 fails the rest are skipped (the input is not
//! something the later phases can reason about); otherwise every phase runs, so a
//! report shows everything that is wrong. Without trust roots phase 6 is a warning,
//! never a pass.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::bundle::{Bundle, Manifest, certificate_order};
use crate::bundle::{BundleBase, Continuation};
use crate::certificate::KeyCertificate;
use crate::chain::{Envelope, EnvelopeRecord, close_record_matches};
use crate::checkpoint::SignedCheckpoint;
use crate::fields::{Identifier, ReceiptId};
use crate::hash::{PrevHash, Sha256Hex};
use crate::jcs::CanonicalError;
use crate::keys::{KeyId, PublicKey};
use crate::merkle::{
    MerkleAccumulator, MerkleTree, merkle_root, verify_consistency, verify_inclusion,
};
use crate::receipt::GuardOutcome;
use crate::report::{
    BundleSummary, CheckpointRef, ErrorCode, Finding, GuardTally, Location, Phase, PhaseReport,
    Verdict, VerificationReport,
};
use crate::segment::envelope_leaf;
use crate::strict_json::{self, StrictJsonError};
use crate::timestamp::Timestamp;
use crate::trust::{KeyRole, KeyUseError, TrustRoots};

/// Bounds on the work one verification may do. Oversized input fails before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyLimits {
    /// Largest bundle accepted, in bytes. Default 256 MiB.
    pub max_bundle_bytes: u64,
    /// Most segments. Default 100 000.
    pub max_segments: u64,
    /// Most envelopes in one segment. Default 1 000 000.
    pub max_envelopes_per_segment: u64,
    /// Most envelopes in the bundle. Default 2 000 000.
    pub max_envelopes: u64,
    /// Most key certificates. Default 100 000.
    pub max_certificates: u64,
    /// Most inclusion plus consistency proofs. Default 200 000.
    pub max_proofs: u64,
    /// Most hashes in one proof. Default 128 (a proof over 2^53 leaves needs at most 106).
    pub max_proof_len: u64,
    /// Most checkpoints given to the verifier from outside. Default 1 000.
    pub max_known_checkpoints: u64,
    /// Most findings listed per phase; more are counted. Default 100.
    pub max_findings_per_phase: u64,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        Self {
            max_bundle_bytes: 256 * 1024 * 1024,
            max_segments: 100_000,
            max_envelopes_per_segment: 1_000_000,
            max_envelopes: 2_000_000,
            max_certificates: 100_000,
            max_proofs: 200_000,
            max_proof_len: 128,
            max_known_checkpoints: 1_000,
            max_findings_per_phase: 100,
        }
    }
}

/// What the verifier checks against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The trusted keys; `None` gives a `no_trust_root` warning in phase 6.
    pub trust: Option<TrustRoots>,
    /// Checkpoints obtained outside the bundle (from checkpoint sinks). The bundle
    /// must contain and agree with each, so a cut-off tail or a rewritten log shows.
    pub known_checkpoints: Vec<SignedCheckpoint>,
    /// Work bounds.
    pub limits: VerifyLimits,
}

/// Verifies a serialized bundle.
pub fn verify_bundle(bytes: &[u8], options: &VerifyOptions) -> VerificationReport {
    let mut run = Run::new(options, bytes.len() as u64);
    let Some(bundle) = run.manifest_phase(bytes) else {
        return run.finish(None);
    };
    let indexed = Indexed::new(&bundle);
    let mut indexed = indexed;
    run.content_hash_phase(&bundle, &mut indexed);
    let chains = run.stream_chain_phase(&bundle, &indexed);
    run.merkle_phase(&bundle, &indexed);
    run.checkpoint_chain_phase(&bundle, &indexed);
    run.signature_phase(&bundle, &indexed);
    run.segment_link_phase(&bundle);
    let summary = indexed.summary(&bundle, &chains);
    run.finish(Some(summary))
}

/// The report for an input that is over `limits.max_bundle_bytes`, without reading
/// it. `verify_bundle` gives the same report for the same input.
pub fn report_oversized_input(input_bytes: u64, options: &VerifyOptions) -> VerificationReport {
    let mut run = Run::new(options, input_bytes);
    run.enter(Phase::Manifest);
    run.report(
        ErrorCode::InputTooLarge,
        Location::document(),
        format!(
            "{input_bytes} bytes, limit {}",
            options.limits.max_bundle_bytes
        ),
    );
    run.finish(None)
}

/// An envelope with its place in the bundle.
struct Placed<'a> {
    pos: usize,
    segment: usize,
    index: usize,
    envelope: &'a Envelope,
}

impl Placed<'_> {
    fn location(&self) -> Location {
        Location::envelope(
            self.segment,
            self.index,
            &self.envelope.stream_id,
            self.envelope.seq.get(),
        )
    }

    fn seq(&self) -> u64 {
        self.envelope.seq.get()
    }
}

/// What the stream chain phase found, for the summary.
#[derive(Debug, Default)]
struct ChainOutcome {
    open_streams: u64,
    decisions: u64,
    /// Forward decisions no receipt names.
    outcome_unknown: u64,
    /// ... of them, in streams without a close record.
    outcome_unknown_in_open_streams: u64,
    /// Streams a range bundle holds from past their first record.
    streams_continued: u64,
    /// Receipts whose forward decision precedes a range bundle.
    decisions_before_range: u64,
}

/// Derived views of a parsed bundle shared by the phases.
struct Indexed<'a> {
    envelopes: Vec<Placed<'a>>,
    /// Positions in `envelopes` per stream, in log order.
    streams: BTreeMap<&'a Identifier, Vec<usize>>,
    /// Leaves are the recorded envelope hashes; phase 2 checks them separately.
    /// A range bundle's tree continues its base (phase 4 checks the base).
    tree: MerkleTree,
    /// Log size before the first segment: 0, or a range bundle's base size.
    first_leaf: u64,
    /// Log size after each segment.
    cumulative: Vec<u64>,
    /// Canonical bytes each record's signature covers, filled by phase 2 so phase 6
    /// does not encode bodies again.
    signed: Vec<Option<Vec<u8>>>,
}

impl<'a> Indexed<'a> {
    fn new(bundle: &'a Bundle) -> Self {
        let mut envelopes = Vec::new();
        let mut streams: BTreeMap<&Identifier, Vec<usize>> = BTreeMap::new();
        let mut cumulative = Vec::with_capacity(bundle.segments.len());
        let base = bundle
            .base
            .as_ref()
            .map_or_else(MerkleAccumulator::new, base_accumulator);
        let first_leaf = base.size();
        for (segment, s) in bundle.segments.iter().enumerate() {
            for (index, envelope) in s.envelopes.iter().enumerate() {
                streams
                    .entry(&envelope.stream_id)
                    .or_default()
                    .push(envelopes.len());
                envelopes.push(Placed {
                    pos: envelopes.len(),
                    segment,
                    index,
                    envelope,
                });
            }
            cumulative.push(first_leaf + envelopes.len() as u64);
        }
        let tree = MerkleTree::after(
            &base,
            envelopes
                .iter()
                .map(|p| envelope_leaf(&p.envelope.hash))
                .collect(),
        );
        let signed = vec![None; envelopes.len()];
        Self {
            envelopes,
            streams,
            tree,
            first_leaf,
            cumulative,
            signed,
        }
    }

    fn stream_entries(&self, positions: &[usize]) -> Vec<&Placed<'a>> {
        positions
            .iter()
            .filter_map(|&p| self.envelopes.get(p))
            .collect()
    }

    fn summary(&self, bundle: &Bundle, chains: &ChainOutcome) -> BundleSummary {
        let checkpoint_ref = |index: Option<u64>, c: &SignedCheckpoint| CheckpointRef {
            index,
            size: c.checkpoint.size.get(),
            root: c.checkpoint.root,
            issued_at: c.checkpoint.issued_at,
        };
        let receipts = self
            .envelopes
            .iter()
            .filter(|p| p.envelope.receipt().is_some())
            .count() as u64;
        let mut guard_checks = std::collections::BTreeMap::<String, GuardTally>::new();
        let mut receipts_without_checks = 0;
        for receipt in self.envelopes.iter().filter_map(|p| p.envelope.receipt()) {
            let Some(checks) = &receipt.body.verdict.checks else {
                receipts_without_checks += 1;
                continue;
            };
            for check in checks.as_slice() {
                let tally = guard_checks.entry(check.guard.to_string()).or_default();
                match check.outcome {
                    GuardOutcome::Passed => tally.passed += 1,
                    GuardOutcome::Denied => tally.denied += 1,
                    GuardOutcome::AuditOnly => tally.audit_only += 1,
                }
            }
        }
        BundleSummary {
            segments: bundle.segments.len() as u64,
            envelopes: self.envelopes.len() as u64,
            receipts,
            close_records: self.envelopes.len() as u64 - receipts - chains.decisions,
            streams: self.streams.len() as u64,
            open_streams: chains.open_streams,
            decisions: chains.decisions,
            forwarded_outcome_unknown: chains.outcome_unknown,
            forwarded_outcome_unknown_in_open_streams: chains.outcome_unknown_in_open_streams,
            certificates: bundle.certificates.len() as u64,
            checkpoints: bundle.checkpoints.len() as u64,
            last_checkpoint: bundle
                .checkpoints
                .last()
                .map(|c| checkpoint_ref(Some(bundle.checkpoints.len() as u64 - 1), c)),
            base_checkpoint: bundle
                .base
                .as_ref()
                .map(|b| checkpoint_ref(None, &b.checkpoint)),
            streams_continued: chains.streams_continued,
            decisions_before_range: chains.decisions_before_range,
            guard_checks,
            receipts_without_checks,
        }
    }
}

#[derive(Default)]
struct PhaseState {
    ran: bool,
    failed: bool,
    warned: bool,
    findings: Vec<Finding>,
    suppressed: u64,
}

/// One verification: the options and the findings so far.
struct Run<'o> {
    options: &'o VerifyOptions,
    input_bytes: u64,
    current: Phase,
    phases: BTreeMap<Phase, PhaseState>,
}

impl<'o> Run<'o> {
    fn new(options: &'o VerifyOptions, input_bytes: u64) -> Self {
        Self {
            options,
            input_bytes,
            current: Phase::Manifest,
            phases: BTreeMap::new(),
        }
    }

    fn limits(&self) -> &VerifyLimits {
        &self.options.limits
    }

    fn enter(&mut self, phase: Phase) {
        self.current = phase;
        self.phases.entry(phase).or_default().ran = true;
    }

    fn report(&mut self, code: ErrorCode, location: Location, detail: impl Into<String>) {
        let limit = self.options.limits.max_findings_per_phase;
        let state = self.phases.entry(code.phase()).or_default();
        if code.is_warning() {
            state.warned = true;
        } else {
            state.failed = true;
        }
        if (state.findings.len() as u64) < limit {
            state.findings.push(Finding::new(code, location, detail));
        } else {
            state.suppressed += 1;
        }
    }

    fn phase_failed(&self, phase: Phase) -> bool {
        self.phases.get(&phase).is_some_and(|s| s.failed)
    }

    fn finish(self, summary: Option<BundleSummary>) -> VerificationReport {
        let mut phases_out = Vec::new();
        let mut phases = self.phases;
        for phase in Phase::ALL {
            let state = phases.remove(&phase).unwrap_or_default();
            let verdict = match (state.ran, state.failed, state.warned) {
                (false, _, _) => Verdict::Skipped,
                (true, true, _) => Verdict::Fail,
                (true, false, true) => Verdict::Warn,
                (true, false, false) => Verdict::Pass,
            };
            phases_out.push(PhaseReport {
                phase,
                verdict,
                findings: state.findings,
                suppressed: state.suppressed,
            });
        }
        let verdict = if phases_out
            .iter()
            .any(|p| matches!(p.verdict, Verdict::Fail | Verdict::Skipped))
        {
            Verdict::Fail
        } else if phases_out.iter().any(|p| p.verdict == Verdict::Warn) {
            Verdict::Warn
        } else {
            Verdict::Pass
        };
        let mut report = VerificationReport {
            format: VerificationReport::FORMAT,
            format_version: 1,
            verdict,
            trust_root_given: self.options.trust.is_some(),
            input_bytes: self.input_bytes,
            phases: phases_out,
            summary,
            open_streams_only: false,
        };
        report.open_streams_only = report.passed_but_open_streams();
        report
    }

    // ---- phase 1 -------------------------------------------------------------

    fn manifest_phase(&mut self, bytes: &[u8]) -> Option<Bundle> {
        self.enter(Phase::Manifest);
        if self.input_bytes > self.limits().max_bundle_bytes {
            let detail = format!(
                "{} bytes, limit {}",
                self.input_bytes,
                self.limits().max_bundle_bytes
            );
            self.report(ErrorCode::InputTooLarge, Location::document(), detail);
            return None;
        }
        let bundle = match strict_json::from_slice::<Bundle>(bytes) {
            Ok(bundle) => bundle,
            Err(e) => {
                let code = match &e {
                    StrictJsonError::DuplicateKey { .. } => ErrorCode::DuplicateKey,
                    StrictJsonError::NonIntegerNumber => ErrorCode::NonIntegerNumber,
                    StrictJsonError::IntegerOutOfRange => ErrorCode::IntegerOutOfRange,
                    StrictJsonError::Syntax(_) => ErrorCode::InvalidJson,
                    StrictJsonError::Schema(_) => ErrorCode::SchemaViolation,
                };
                self.report(code, Location::document(), e.to_string());
                return None;
            }
        };
        self.check_limits(&bundle);
        if self.phase_failed(Phase::Manifest) {
            return None;
        }
        self.check_structure(&bundle);
        self.check_manifest(&bundle);
        if self.phase_failed(Phase::Manifest) {
            None
        } else {
            Some(bundle)
        }
    }

    fn check_limits(&mut self, bundle: &Bundle) {
        let limits = self.limits().clone();
        let over = |what: &str, count: usize, limit: u64| {
            (count as u64 > limit).then(|| format!("{what}: {count} > {limit}"))
        };
        let total: usize = bundle.segments.iter().map(|s| s.envelopes.len()).sum();
        let proofs = bundle.proofs.inclusion.len() + bundle.proofs.consistency.len();
        let (headers, continuations, base_path) = bundle.base.as_ref().map_or((0, 0, 0), |b| {
            let longest = b
                .continuations
                .iter()
                .map(|c| c.path.len())
                .chain([b.consistency.len(), b.frontier.len()])
                .max()
                .unwrap_or(0);
            (b.headers.len(), b.continuations.len(), longest)
        });
        let checks = [
            over("base segment headers", headers, limits.max_segments),
            over("base continuations", continuations, limits.max_envelopes),
            over("base proof length", base_path, limits.max_proof_len),
            over("segments", bundle.segments.len(), limits.max_segments),
            over("envelopes", total, limits.max_envelopes),
            over(
                "certificates",
                bundle.certificates.len(),
                limits.max_certificates,
            ),
            over("proofs", proofs, limits.max_proofs),
            over(
                "known checkpoints",
                self.options.known_checkpoints.len(),
                limits.max_known_checkpoints,
            ),
        ];
        for detail in checks.into_iter().flatten() {
            self.report(ErrorCode::LimitExceeded, Location::document(), detail);
        }
        for (i, segment) in bundle.segments.iter().enumerate() {
            if let Some(detail) = over(
                "envelopes in segment",
                segment.envelopes.len(),
                limits.max_envelopes_per_segment,
            ) {
                self.report(ErrorCode::LimitExceeded, Location::segment(i), detail);
            }
        }
        let paths = bundle
            .proofs
            .inclusion
            .iter()
            .map(|p| p.path.len())
            .chain(bundle.proofs.consistency.iter().map(|p| p.path.len()));
        for (i, len) in paths.enumerate() {
            if let Some(detail) = over("proof length", len, limits.max_proof_len) {
                self.report(ErrorCode::LimitExceeded, Location::proof(i), detail);
            }
        }
    }

    fn check_structure(&mut self, bundle: &Bundle) {
        let origin = &bundle.manifest.origin;
        if bundle.segments.is_empty() {
            self.report(ErrorCode::BundleEmpty, Location::document(), "no segments");
        }
        // A range bundle's first segment follows its base, whose index the base
        // checkpoint does not name; the seal link and the leaf index tie them.
        let (first_index, mut first_leaf) = match &bundle.base {
            None => (0, 0),
            Some(base) => {
                if base.checkpoint.checkpoint.origin != *origin {
                    let detail = format!(
                        "base checkpoint origin {}",
                        base.checkpoint.checkpoint.origin
                    );
                    self.report(ErrorCode::OriginMismatch, Location::base(), detail);
                }
                let first = bundle
                    .segments
                    .first()
                    .map_or(1, |s| s.genesis.segment_index.get());
                (first.max(1), base.checkpoint.checkpoint.size.get())
            }
        };
        for (i, segment) in bundle.segments.iter().enumerate() {
            let index = first_index + i as u64;
            if segment.genesis.segment_index.get() != index
                || segment.seal.segment_index.get() != index
            {
                let detail = format!(
                    "position {i} holds genesis index {} and seal index {}",
                    segment.genesis.segment_index, segment.seal.segment_index
                );
                self.report(
                    ErrorCode::SegmentIndexMismatch,
                    Location::segment(i),
                    detail,
                );
            }
            if segment.envelopes.is_empty() {
                self.report(
                    ErrorCode::SegmentEmpty,
                    Location::segment(i),
                    "no envelopes",
                );
            }
            if segment.genesis.first_leaf_index.get() != first_leaf {
                let detail = format!(
                    "first_leaf_index {}, expected {first_leaf}",
                    segment.genesis.first_leaf_index
                );
                self.report(ErrorCode::LeafIndexMismatch, Location::segment(i), detail);
            }
            if segment.genesis.origin != *origin {
                self.report(
                    ErrorCode::OriginMismatch,
                    Location::segment(i),
                    format!("genesis origin {}", segment.genesis.origin),
                );
            }
            first_leaf += segment.envelopes.len() as u64;
        }
        if bundle.checkpoints.len() != bundle.segments.len() {
            let detail = format!(
                "{} checkpoints for {} segments",
                bundle.checkpoints.len(),
                bundle.segments.len()
            );
            self.report(
                ErrorCode::CheckpointCountMismatch,
                Location::document(),
                detail,
            );
        }
        for (i, checkpoint) in bundle.checkpoints.iter().enumerate() {
            if checkpoint.checkpoint.origin != *origin {
                let detail = format!("checkpoint origin {}", checkpoint.checkpoint.origin);
                self.report(ErrorCode::OriginMismatch, Location::checkpoint(i), detail);
            }
        }
        for (i, pair) in bundle.certificates.windows(2).enumerate() {
            if let [a, b] = pair
                && certificate_order(a, b) != std::cmp::Ordering::Less
            {
                self.report(
                    ErrorCode::CertificatesNotSorted,
                    Location::certificate(i + 1),
                    "not after the previous certificate",
                );
            }
        }
        self.check_proof_references(bundle);
    }

    fn check_proof_references(&mut self, bundle: &Bundle) {
        let checkpoint_size = |i: u64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| bundle.checkpoints.get(i))
                .map(|c| c.checkpoint.size.get())
        };
        let mut previous = None;
        for (i, proof) in bundle.proofs.inclusion.iter().enumerate() {
            let key = (proof.checkpoint_index, proof.leaf_index);
            let ordered = previous.is_none_or(|p| p < key);
            previous = Some(key);
            let in_range = checkpoint_size(proof.checkpoint_index.get())
                .is_some_and(|size| proof.leaf_index.get() < size);
            if !(ordered && in_range) {
                let detail = format!(
                    "inclusion proof of leaf {} in checkpoint {}",
                    proof.leaf_index, proof.checkpoint_index
                );
                self.report(ErrorCode::ProofReferenceInvalid, Location::proof(i), detail);
            }
        }
        let mut previous = None;
        for (i, proof) in bundle.proofs.consistency.iter().enumerate() {
            let key = (proof.from_checkpoint, proof.to_checkpoint);
            let ordered = previous.is_none_or(|p| p < key);
            previous = Some(key);
            let in_range = proof.from_checkpoint < proof.to_checkpoint
                && checkpoint_size(proof.to_checkpoint.get()).is_some();
            if !(ordered && in_range) {
                let detail = format!(
                    "consistency proof {} -> {}",
                    proof.from_checkpoint, proof.to_checkpoint
                );
                self.report(ErrorCode::ProofReferenceInvalid, Location::proof(i), detail);
            }
        }
    }

    fn check_manifest(&mut self, bundle: &Bundle) {
        let manifest = &bundle.manifest;
        let expected = Manifest::summarize(
            &manifest.origin,
            manifest.created_at,
            bundle.base.as_ref(),
            &bundle.certificates,
            &bundle.segments,
            &bundle.checkpoints,
            &bundle.proofs,
        );
        let expected = match expected {
            Ok(expected) => expected,
            Err(e) => {
                self.report(
                    ErrorCode::ManifestMismatch,
                    Location::document(),
                    e.to_string(),
                );
                return;
            }
        };
        let mut differences = Vec::new();
        if expected.counts != manifest.counts {
            differences.push(format!(
                "counts {:?}, bundle holds {:?}",
                manifest.counts, expected.counts
            ));
        }
        if expected.ranges != manifest.ranges {
            differences.push(format!(
                "ranges {:?}, bundle holds {:?}",
                manifest.ranges, expected.ranges
            ));
        }
        if expected.latest_checkpoint_hash != manifest.latest_checkpoint_hash {
            differences.push("latest_checkpoint_hash is not the last checkpoint's hash".to_owned());
        }
        if expected.base_checkpoint_hash != manifest.base_checkpoint_hash {
            differences.push("base_checkpoint_hash is not the base checkpoint's hash".to_owned());
        }
        for detail in differences {
            self.report(ErrorCode::ManifestMismatch, Location::document(), detail);
        }
    }

    // ---- phase 2 -------------------------------------------------------------

    fn content_hash_phase(&mut self, bundle: &Bundle, indexed: &mut Indexed<'_>) {
        self.enter(Phase::ContentHashes);
        for placed in &indexed.envelopes {
            let digest = placed.envelope.digest();
            if let (Ok(digest), Some(slot)) = (&digest, indexed.signed.get_mut(placed.pos)) {
                *slot = Some(digest.signed_bytes.clone());
            }
            match digest.map(|d| d.hash) {
                Ok(hash) if hash == placed.envelope.hash => {}
                Ok(hash) => {
                    let detail = format!("recorded {}, computed {hash}", placed.envelope.hash);
                    self.report(ErrorCode::EnvelopeHashMismatch, placed.location(), detail);
                }
                Err(e) => self.report(
                    ErrorCode::EnvelopeHashMismatch,
                    placed.location(),
                    e.to_string(),
                ),
            }
        }
        for (i, cert) in bundle.certificates.iter().enumerate() {
            if cert.certificate.public_key.key_id() != cert.certificate.key_id {
                let location = Location::certificate(i).with_key(cert.certificate.key_id);
                self.report(
                    ErrorCode::CertificateKeyIdMismatch,
                    location,
                    "key_id is not sha256(public_key)",
                );
            }
        }
    }

    // ---- phase 3 -------------------------------------------------------------

    /// The link a continued stream's first envelope in the range (at `first_seq`)
    /// must carry: the hash of the stream's envelope before it, given as a
    /// continuation. `None` (reported) when the continuation is missing or is
    /// not that envelope.
    fn continuation_link(
        &mut self,
        stream_id: &Identifier,
        first_seq: u64,
        continuation: Option<&&Continuation>,
    ) -> Option<PrevHash> {
        let location = Location::base_continuation(stream_id, first_seq - 1);
        let Some(continuation) = continuation else {
            let detail = format!(
                "the range holds it from seq {first_seq}, with no proof of its envelope {} before the range",
                first_seq - 1
            );
            self.report(ErrorCode::ContinuationMissing, location, detail);
            return None;
        };
        let envelope = &continuation.envelope;
        let problem = if envelope.seq.get() != first_seq - 1 {
            Some(format!(
                "continuation is seq {}, the range starts at seq {first_seq}",
                envelope.seq
            ))
        } else {
            match envelope.compute_hash() {
                Ok(hash) if hash == envelope.hash => None,
                Ok(hash) => Some(format!(
                    "continuation hash {}, content hashes to {hash}",
                    envelope.hash
                )),
                Err(e) => Some(e.to_string()),
            }
        };
        match problem {
            Some(detail) => {
                self.report(ErrorCode::ContinuationMissing, location, detail);
                None
            }
            None => Some(PrevHash::Hash(envelope.hash)),
        }
    }

    fn stream_chain_phase(&mut self, bundle: &Bundle, indexed: &Indexed<'_>) -> ChainOutcome {
        self.enter(Phase::StreamChains);
        let mut ids = HashSet::new();
        let mut decisions: BTreeMap<&ReceiptId, &Placed<'_>> = BTreeMap::new();
        for placed in &indexed.envelopes {
            if let Some(receipt) = placed.envelope.receipt()
                && !ids.insert(&receipt.body.id)
            {
                self.report(
                    ErrorCode::ReceiptIdDuplicate,
                    placed.location(),
                    format!("receipt id {}", receipt.body.id),
                );
            }
            if let Some(decision) = placed.envelope.decision()
                && decisions.insert(&decision.decision.id, placed).is_some()
            {
                self.report(
                    ErrorCode::ReceiptIdDuplicate,
                    placed.location(),
                    format!("forward decision id {}", decision.decision.id),
                );
            }
        }
        let mut outcome = ChainOutcome {
            decisions: indexed
                .envelopes
                .iter()
                .filter(|p| p.envelope.decision().is_some())
                .count() as u64,
            ..ChainOutcome::default()
        };
        let mut open = BTreeSet::new();
        let mut continued = BTreeSet::new();
        let listed: Vec<&Continuation> =
            bundle.base.iter().flat_map(|b| &b.continuations).collect();
        for pair in listed.windows(2) {
            if let [a, b] = pair
                && a.envelope.stream_id >= b.envelope.stream_id
            {
                let location =
                    Location::base_continuation(&b.envelope.stream_id, b.envelope.seq.get());
                self.report(
                    ErrorCode::ContinuationMissing,
                    location,
                    "continuations are not one per stream in stream id order",
                );
            }
        }
        let continuations: BTreeMap<&Identifier, &Continuation> =
            listed.iter().map(|c| (&c.envelope.stream_id, *c)).collect();
        for (stream_id, positions) in &indexed.streams {
            let entries = indexed.stream_entries(positions);
            // A range bundle holds the part of a stream after its base; the
            // stream's last envelope before it is a continuation, proven in its
            // segment (phase 4), and the range's first envelope must link to it.
            let start = match entries.iter().map(|p| p.seq()).min() {
                Some(seq) if bundle.base.is_some() && seq > 1 => {
                    continued.insert(*stream_id);
                    let link = self.continuation_link(stream_id, seq, continuations.get(stream_id));
                    (seq, link)
                }
                _ => (1, Some(PrevHash::Genesis)),
            };
            if !self.check_stream(stream_id, &entries, start) {
                outcome.open_streams += 1;
                open.insert(*stream_id);
            }
        }
        for (stream_id, continuation) in &continuations {
            if !continued.contains(stream_id) {
                let location =
                    Location::base_continuation(stream_id, continuation.envelope.seq.get());
                self.report(
                    ErrorCode::ContinuationMissing,
                    location,
                    "a continuation for a stream the range does not continue",
                );
            }
        }
        outcome.streams_continued = continued.len() as u64;
        // Every receipt that names a forward decision must find it, for the
        // same request, earlier in the log, and be the only one naming it; a
        // decision no receipt names went upstream with an unknown outcome.
        let mut answered = BTreeSet::new();
        for placed in &indexed.envelopes {
            let Some(receipt) = placed.envelope.receipt() else {
                continue;
            };
            let Some(id) = receipt.body.decision_id.as_ref() else {
                continue;
            };
            let problem = match decisions.get(id) {
                None if continued.contains(&placed.envelope.stream_id) => {
                    if answered.insert(id) {
                        outcome.decisions_before_range += 1;
                        None
                    } else {
                        Some(format!(
                            "forward decision {id} is named by a second receipt"
                        ))
                    }
                }
                None => Some(format!(
                    "names forward decision {id}, which the bundle does not hold"
                )),
                Some(decided) => {
                    let decision = decided.envelope.decision().map(|d| &d.decision);
                    if !answered.insert(id) {
                        Some(format!(
                            "forward decision {id} is named by a second receipt"
                        ))
                    } else if decision.is_some_and(|d| {
                        d.request_id != receipt.body.request_id
                            || d.request_sha256 != receipt.body.request_sha256
                            || d.workload != receipt.body.workload
                    }) {
                        Some(format!("forward decision {id} is for another request"))
                    } else if decided.pos > placed.pos {
                        Some(format!(
                            "forward decision {id} comes after the receipt naming it"
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some(detail) = problem {
                self.report(ErrorCode::DecisionMissing, placed.location(), detail);
            }
        }
        decisions.retain(|id, _| !answered.contains(id));
        for (id, placed) in decisions {
            outcome.outcome_unknown += 1;
            if open.contains(&placed.envelope.stream_id) {
                outcome.outcome_unknown_in_open_streams += 1;
            }
            let detail = placed.envelope.decision().map_or_else(String::new, |d| {
                format!(
                    "forward decision {id} (attempt {} to {}, request {}): forwarded, outcome unknown",
                    d.decision.attempt, d.decision.provider, d.decision.request_id
                )
            });
            self.report(
                ErrorCode::ForwardedOutcomeUnknown,
                placed.location(),
                detail,
            );
        }
        outcome
    }

    /// Checks one stream; returns whether it is closed.
    /// Checks one stream, which must start at `start` (seq and the link of that
    /// envelope: 1 and `GENESIS`, or where a range continues it; no link to
    /// check when its continuation is missing, which is reported already);
    /// returns whether it is closed.
    fn check_stream(
        &mut self,
        stream_id: &Identifier,
        entries: &[&Placed<'_>],
        start: (u64, Option<PrevHash>),
    ) -> bool {
        let (first_seq, first_link) = start;
        // Log order must follow seq.
        let mut highest = 0;
        for placed in entries {
            if placed.seq() < highest {
                let detail = format!("seq {} after seq {highest}", placed.seq());
                self.report(ErrorCode::SeqOutOfOrder, placed.location(), detail);
                break;
            }
            highest = placed.seq();
        }
        let mut by_seq: Vec<&Placed<'_>> = entries.to_vec();
        by_seq.sort_by_key(|p| p.seq());
        for pair in by_seq.windows(2) {
            if let [a, b] = pair
                && a.seq() == b.seq()
            {
                self.report(
                    ErrorCode::SeqDuplicate,
                    b.location(),
                    format!("seq {} appears twice", b.seq()),
                );
            }
        }
        by_seq.dedup_by_key(|p| p.seq());

        let mut expected = first_seq;
        let mut previous: Option<&Placed<'_>> = None;
        for placed in &by_seq {
            if placed.seq() != expected {
                let detail = format!("expected seq {expected}, found {}", placed.seq());
                self.report(ErrorCode::SeqGap, placed.location(), detail);
                previous = None;
            }
            let expected_link = match previous {
                Some(p) => Some(PrevHash::Hash(p.envelope.hash)),
                None if placed.seq() == first_seq => first_link,
                None => None,
            };
            if let Some(link) = expected_link
                && placed.envelope.prev_hash != link
            {
                let detail = format!(
                    "prev_hash {}, previous envelope is {link}",
                    placed.envelope.prev_hash
                );
                self.report(ErrorCode::PrevHashMismatch, placed.location(), detail);
            }
            previous = Some(placed);
            expected = placed.seq().saturating_add(1);
        }

        let last_seq = by_seq.last().map_or(0, |p| p.seq());
        let mut closed = false;
        for placed in &by_seq {
            let EnvelopeRecord::Close(close) = &placed.envelope.record else {
                continue;
            };
            closed = true;
            if placed.seq() != last_seq {
                let detail = format!(
                    "close at seq {}, stream goes on to seq {last_seq}",
                    placed.seq()
                );
                self.report(ErrorCode::RecordAfterClose, placed.location(), detail);
            }
            if !close_record_matches(
                &close.close,
                stream_id,
                placed.envelope.seq,
                &placed.envelope.prev_hash,
            ) {
                let detail = format!(
                    "close says last_seq {}, receipt_count {}, last_hash {}",
                    close.close.last_seq, close.close.receipt_count, close.close.last_hash
                );
                self.report(ErrorCode::CloseRecordMismatch, placed.location(), detail);
            }
        }
        if !closed {
            let mut location = Location::stream(stream_id);
            location.seq = Some(last_seq);
            self.report(
                ErrorCode::StreamOpen,
                location,
                format!("no close record after seq {last_seq}"),
            );
        }
        closed
    }

    // ---- phase 4 -------------------------------------------------------------

    fn merkle_phase(&mut self, bundle: &Bundle, indexed: &Indexed<'_>) {
        self.enter(Phase::MerkleRoots);
        if let Some(base) = &bundle.base {
            self.check_base(base, bundle, indexed);
        }
        let leaves = indexed.tree.leaves();
        let mut start = 0usize;
        for (i, segment) in bundle.segments.iter().enumerate() {
            let end = start + segment.envelopes.len();
            if segment.seal.envelope_count.get() != segment.envelopes.len() as u64 {
                let detail = format!(
                    "seal says {}, segment holds {}",
                    segment.seal.envelope_count,
                    segment.envelopes.len()
                );
                self.report(ErrorCode::SealCountMismatch, Location::segment(i), detail);
            }
            let root = merkle_root(leaves.get(start..end).unwrap_or_default());
            if root != segment.seal.root {
                let detail = format!("seal root {}, computed {root}", segment.seal.root);
                self.report(ErrorCode::SealRootMismatch, Location::segment(i), detail);
            }
            start = end;
        }
        for (i, checkpoint) in bundle.checkpoints.iter().enumerate() {
            let Some(&size) = indexed.cumulative.get(i) else {
                continue;
            };
            let claimed = &checkpoint.checkpoint;
            if claimed.size.get() != size {
                let detail = format!(
                    "checkpoint size {}, log holds {size} up to segment {i}",
                    claimed.size
                );
                self.report(
                    ErrorCode::CheckpointSizeMismatch,
                    Location::checkpoint(i),
                    detail,
                );
            }
            match indexed.tree.root_at(size) {
                Ok(root) if root == claimed.root => {}
                Ok(root) => {
                    let detail = format!("checkpoint root {}, computed {root}", claimed.root);
                    self.report(
                        ErrorCode::CheckpointRootMismatch,
                        Location::checkpoint(i),
                        detail,
                    );
                }
                Err(e) => self.report(
                    ErrorCode::CheckpointRootMismatch,
                    Location::checkpoint(i),
                    e.to_string(),
                ),
            }
        }
        self.check_proofs(bundle, indexed);
    }

    /// A range bundle's base: its frontier must hash to the base checkpoint's
    /// root (or every root after it is computed from made-up subtrees), and the
    /// last checkpoint must extend it.
    fn check_base(&mut self, base: &BundleBase, bundle: &Bundle, indexed: &Indexed<'_>) {
        let claimed = &base.checkpoint.checkpoint;
        let fits = MerkleAccumulator::from_frontier(claimed.size.get(), base.frontier.clone());
        match fits {
            None => {
                let detail = format!(
                    "{} frontier hashes for size {}, which needs {}",
                    base.frontier.len(),
                    claimed.size,
                    claimed.size.get().count_ones()
                );
                self.report(ErrorCode::BaseInvalid, Location::base(), detail);
                return;
            }
            Some(accumulator) if accumulator.root() != claimed.root => {
                let detail = format!(
                    "frontier hashes to {}, base checkpoint root is {}",
                    accumulator.root(),
                    claimed.root
                );
                self.report(ErrorCode::BaseInvalid, Location::base(), detail);
                return;
            }
            Some(_) => {}
        }
        debug_assert_eq!(indexed.first_leaf, claimed.size.get());
        for continuation in &base.continuations {
            let envelope = &continuation.envelope;
            let header = base
                .headers
                .iter()
                .find(|h| h.seal.segment_index == continuation.segment_index);
            let outcome = match header {
                _ if envelope.compute_hash().ok() != Some(envelope.hash) => {
                    Err("the envelope does not hash to its hash".to_owned())
                }
                None => Err(format!(
                    "segment {} is not among the base's headers",
                    continuation.segment_index
                )),
                Some(header) => verify_inclusion(
                    &envelope_leaf(&envelope.hash),
                    continuation.index.get(),
                    header.seal.envelope_count.get(),
                    &continuation.path,
                    &header.seal.root,
                )
                .map_err(|e| e.to_string()),
            };
            if let Err(detail) = outcome {
                let location = Location::base_continuation(&envelope.stream_id, envelope.seq.get());
                self.report(ErrorCode::ContinuationProofInvalid, location, detail);
            }
        }
        let Some(last) = bundle.checkpoints.last() else {
            return;
        };
        let last = &last.checkpoint;
        if let Err(e) = verify_consistency(
            claimed.size.get(),
            last.size.get(),
            &claimed.root,
            &last.root,
            &base.consistency,
        ) {
            let detail = format!("from the base to checkpoint {}: {e}", last.size);
            self.report(ErrorCode::ConsistencyProofInvalid, Location::base(), detail);
        }
    }

    fn check_proofs(&mut self, bundle: &Bundle, indexed: &Indexed<'_>) {
        let checkpoint = |i: u64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| bundle.checkpoints.get(i))
                .map(|c| &c.checkpoint)
        };
        for (i, proof) in bundle.proofs.inclusion.iter().enumerate() {
            let leaf = indexed.tree.leaf(proof.leaf_index.get());
            let outcome = match (checkpoint(proof.checkpoint_index.get()), leaf) {
                (Some(cp), Some(leaf)) => verify_inclusion(
                    leaf,
                    proof.leaf_index.get(),
                    cp.size.get(),
                    &proof.path,
                    &cp.root,
                )
                .map_err(|e| e.to_string()),
                _ => Err("names a leaf or checkpoint that is not in the bundle".to_owned()),
            };
            if let Err(detail) = outcome {
                self.report(ErrorCode::InclusionProofInvalid, Location::proof(i), detail);
            }
        }
        for (i, proof) in bundle.proofs.consistency.iter().enumerate() {
            let outcome = match (
                checkpoint(proof.from_checkpoint.get()),
                checkpoint(proof.to_checkpoint.get()),
            ) {
                (Some(old), Some(new)) => verify_consistency(
                    old.size.get(),
                    new.size.get(),
                    &old.root,
                    &new.root,
                    &proof.path,
                )
                .map_err(|e| e.to_string()),
                _ => Err("names a checkpoint that is not in the bundle".to_owned()),
            };
            if let Err(detail) = outcome {
                self.report(
                    ErrorCode::ConsistencyProofInvalid,
                    Location::proof(i),
                    detail,
                );
            }
        }
    }

    // ---- phase 5 -------------------------------------------------------------

    fn checkpoint_chain_phase(&mut self, bundle: &Bundle, indexed: &Indexed<'_>) {
        self.enter(Phase::CheckpointChain);
        let mut expected = PrevHash::Genesis;
        let mut previous_time: Option<Timestamp> = None;
        if let Some(base) = &bundle.base {
            previous_time = Some(base.checkpoint.checkpoint.issued_at);
            match base.checkpoint.checkpoint.hash() {
                Ok(hash) => expected = PrevHash::Hash(hash),
                Err(e) => self.report(
                    ErrorCode::CheckpointLinkBroken,
                    Location::base(),
                    e.to_string(),
                ),
            }
        }
        for (i, signed) in bundle.checkpoints.iter().enumerate() {
            let checkpoint = &signed.checkpoint;
            if checkpoint.prev_checkpoint_hash != expected {
                let detail = format!(
                    "links to {}, previous checkpoint is {expected}",
                    checkpoint.prev_checkpoint_hash
                );
                self.report(
                    ErrorCode::CheckpointLinkBroken,
                    Location::checkpoint(i),
                    detail,
                );
            }
            if previous_time.is_some_and(|t| checkpoint.issued_at < t) {
                self.report(
                    ErrorCode::CheckpointTimeRegressed,
                    Location::checkpoint(i),
                    format!("issued_at {}", checkpoint.issued_at),
                );
            }
            previous_time = Some(checkpoint.issued_at);
            expected = match checkpoint.hash() {
                Ok(hash) => PrevHash::Hash(hash),
                Err(e) => {
                    self.report(
                        ErrorCode::CheckpointLinkBroken,
                        Location::checkpoint(i),
                        e.to_string(),
                    );
                    PrevHash::Genesis
                }
            };
        }
        let log_size = indexed.tree.size();
        // At a size the bundle has a checkpoint for (its base included), a held
        // checkpoint must be that very checkpoint: equal roots are not enough,
        // as the checkpoint also pins the seals (and a range's headers).
        let by_size: BTreeMap<u64, &SignedCheckpoint> = bundle
            .base
            .iter()
            .map(|b| &b.checkpoint)
            .chain(&bundle.checkpoints)
            .map(|c| (c.checkpoint.size.get(), c))
            .collect();
        for (i, known) in self.options.known_checkpoints.iter().enumerate() {
            if let Some(ours) = by_size.get(&known.checkpoint.size.get())
                && ours.checkpoint.hash().ok() != known.checkpoint.hash().ok()
            {
                let detail = format!(
                    "given checkpoint at size {} is not the bundle's checkpoint of that size",
                    known.checkpoint.size
                );
                self.report(
                    ErrorCode::KnownCheckpointConflict,
                    Location::known_checkpoint(i),
                    detail,
                );
                continue;
            }
            let known = &known.checkpoint;
            if known.origin != bundle.manifest.origin {
                self.report(
                    ErrorCode::KnownCheckpointOriginMismatch,
                    Location::known_checkpoint(i),
                    format!("origin {}", known.origin),
                );
                continue;
            }
            if known.size.get() < indexed.first_leaf {
                let detail = format!(
                    "given checkpoint covers {} envelopes, the bundle starts after {}: export the range after the given checkpoint",
                    known.size, indexed.first_leaf
                );
                self.report(
                    ErrorCode::KnownCheckpointBeforeBundle,
                    Location::known_checkpoint(i),
                    detail,
                );
                continue;
            }
            if known.size.get() > log_size {
                let detail = format!(
                    "given checkpoint covers {} envelopes, bundle holds {log_size}: the log was \
                     cut, or the bundle was exported before that checkpoint",
                    known.size
                );
                self.report(
                    ErrorCode::BundleTruncated,
                    Location::known_checkpoint(i),
                    detail,
                );
                continue;
            }
            match indexed.tree.root_at(known.size.get()) {
                Ok(root) if root == known.root => {}
                Ok(root) => {
                    let detail = format!(
                        "given root {} at size {}, bundle has {root}",
                        known.root, known.size
                    );
                    self.report(
                        ErrorCode::KnownCheckpointConflict,
                        Location::known_checkpoint(i),
                        detail,
                    );
                }
                Err(e) => self.report(
                    ErrorCode::KnownCheckpointConflict,
                    Location::known_checkpoint(i),
                    e.to_string(),
                ),
            }
        }
    }

    // ---- phase 6 -------------------------------------------------------------

    fn signature_phase(&mut self, bundle: &Bundle, indexed: &Indexed<'_>) {
        self.enter(Phase::Signatures);
        let trust = match &self.options.trust {
            None => {
                self.report(
                    ErrorCode::NoTrustRoot,
                    Location::document(),
                    "no trust root given: receipts were checked against the bundle's certificates only",
                );
                None
            }
            Some(trust) => match trust.validate() {
                Ok(()) => Some(trust),
                Err(e) => {
                    self.report(
                        ErrorCode::TrustRootInvalid,
                        Location::document(),
                        e.to_string(),
                    );
                    return;
                }
            },
        };
        let certified = self.usable_certificates(bundle, trust);
        for (stream_id, positions) in &indexed.streams {
            let entries = indexed.stream_entries(positions);
            self.check_stream_signatures(stream_id, &entries, &certified, &indexed.signed);
        }
        if let Some(trust) = trust {
            self.check_recorder_signatures(bundle, trust);
        }
    }

    /// Certificates whose key id matches their key and, with trust roots, whose CA
    /// signature and CA key validity hold. Keyed by gateway key id.
    fn usable_certificates<'b>(
        &mut self,
        bundle: &'b Bundle,
        trust: Option<&TrustRoots>,
    ) -> BTreeMap<KeyId, Vec<&'b KeyCertificate>> {
        let mut usable: BTreeMap<KeyId, Vec<&KeyCertificate>> = BTreeMap::new();
        for (i, signed) in bundle.certificates.iter().enumerate() {
            let cert = &signed.certificate;
            if cert.public_key.key_id() != cert.key_id {
                continue; // reported in phase 2
            }
            if let Some(trust) = trust {
                let location = Location::certificate(i).with_key(cert.issuer_key_id);
                let Some(ca) = trust.find(&cert.issuer_key_id) else {
                    self.report(
                        ErrorCode::KeyUnknown,
                        location,
                        "certificate issuer is not a trusted key",
                    );
                    continue;
                };
                if let Err(e) = ca.check_use(KeyRole::ReceiptCa, cert.not_before) {
                    self.report(
                        key_use_code(e),
                        location,
                        format!("issuing CA key: {e} (issued {})", cert.not_before),
                    );
                    continue;
                }
                if let Err(e) = signed.verify_issuer(&ca.public_key) {
                    self.report(
                        ErrorCode::CertificateSignatureInvalid,
                        location,
                        e.to_string(),
                    );
                    continue;
                }
            }
            usable.entry(cert.key_id).or_default().push(cert);
        }
        usable
    }

    fn check_stream_signatures(
        &mut self,
        stream_id: &Identifier,
        entries: &[&Placed<'_>],
        certified: &BTreeMap<KeyId, Vec<&KeyCertificate>>,
        signed: &[Option<Vec<u8>>],
    ) {
        let mut reported_keys = BTreeSet::new();
        let stream_key = entries.first().map(|p| *p.envelope.record.key_id());
        let mut key_change_reported = false;
        for placed in entries {
            let key_id = *placed.envelope.record.key_id();
            if Some(key_id) != stream_key && !key_change_reported {
                key_change_reported = true;
                let detail = format!(
                    "stream started with key {}",
                    stream_key.map(|k| k.to_string()).unwrap_or_default()
                );
                self.report(
                    ErrorCode::StreamKeyChanged,
                    placed.location().with_key(key_id),
                    detail,
                );
            }
            let Some(certs) = certified.get(&key_id).filter(|c| !c.is_empty()) else {
                if reported_keys.insert(key_id) {
                    let location = Location::stream(stream_id).with_key(key_id);
                    self.report(
                        ErrorCode::SigningKeyUncertified,
                        location,
                        "no valid certificate for this key",
                    );
                }
                continue;
            };
            let public_key = certs.first().map(|c| c.public_key);
            let signed_bytes = signed.get(placed.pos).and_then(Option::as_deref);
            self.check_record(placed, certs, public_key, signed_bytes);
        }
    }

    fn check_record(
        &mut self,
        placed: &Placed<'_>,
        certs: &[&KeyCertificate],
        public_key: Option<PublicKey>,
        signed_bytes: Option<&[u8]>,
    ) {
        let Some(public_key) = public_key else { return };
        // The certificate was picked by key id, so only the signature itself is left.
        let verify = |signature| match signed_bytes {
            Some(bytes) => public_key.verify_strict(bytes, signature),
            None => Err(crate::keys::SignatureError::Invalid),
        };
        let location = placed.location().with_key(public_key.key_id());
        match &placed.envelope.record {
            EnvelopeRecord::Receipt(receipt) => {
                if let Err(e) = verify(&receipt.signature) {
                    self.report(
                        ErrorCode::ReceiptSignatureInvalid,
                        location.clone(),
                        e.to_string(),
                    );
                }
                let body = &receipt.body;
                let covering: Vec<&&KeyCertificate> = certs
                    .iter()
                    .filter(|c| c.covers(body.started_at) && c.covers(body.completed_at))
                    .collect();
                if covering.is_empty() {
                    let detail = format!(
                        "receipt {} to {} is outside every certificate window",
                        body.started_at, body.completed_at
                    );
                    self.report(ErrorCode::OutsideCertificateWindow, location, detail);
                } else if !covering.iter().any(|c| c.binds(&body.workload)) {
                    let detail = format!(
                        "receipt names {}/{}/{}",
                        body.workload.namespace, body.workload.service_account, body.workload.pod
                    );
                    self.report(ErrorCode::WorkloadMismatch, location, detail);
                }
            }
            EnvelopeRecord::Decision(decision) => {
                if let Err(e) = verify(&decision.signature) {
                    self.report(
                        ErrorCode::DecisionSignatureInvalid,
                        location.clone(),
                        e.to_string(),
                    );
                }
                let body = &decision.decision;
                let covering: Vec<&&KeyCertificate> = certs
                    .iter()
                    .filter(|c| c.covers(body.started_at) && c.covers(body.decided_at))
                    .collect();
                if covering.is_empty() {
                    let detail = format!(
                        "forward decision {} to {} is outside every certificate window",
                        body.started_at, body.decided_at
                    );
                    self.report(ErrorCode::OutsideCertificateWindow, location, detail);
                } else if !covering.iter().any(|c| c.binds(&body.workload)) {
                    let detail = format!(
                        "forward decision names {}/{}/{}",
                        body.workload.namespace, body.workload.service_account, body.workload.pod
                    );
                    self.report(ErrorCode::WorkloadMismatch, location, detail);
                }
            }
            EnvelopeRecord::Close(close) => {
                if let Err(e) = verify(&close.signature) {
                    self.report(
                        ErrorCode::CloseSignatureInvalid,
                        location.clone(),
                        e.to_string(),
                    );
                }
                if !certs.iter().any(|c| c.covers(close.close.closed_at)) {
                    let detail = format!(
                        "closed at {}, outside every certificate window",
                        close.close.closed_at
                    );
                    self.report(ErrorCode::OutsideCertificateWindow, location, detail);
                }
            }
        }
    }

    fn check_recorder_signatures(&mut self, bundle: &Bundle, trust: &TrustRoots) {
        if let Some(base) = &bundle.base {
            self.check_checkpoint_signature(trust, &base.checkpoint, Location::base());
        }
        for (i, signed) in bundle.checkpoints.iter().enumerate() {
            self.check_checkpoint_signature(trust, signed, Location::checkpoint(i));
        }
        for (i, signed) in self.options.known_checkpoints.iter().enumerate() {
            self.check_checkpoint_signature(trust, signed, Location::known_checkpoint(i));
        }
        let manifest = &bundle.manifest;
        let signature = &bundle.manifest_signature;
        let location = Location::document().with_key(signature.key_id);
        let outcome = recorder_key(trust, &signature.key_id, manifest.created_at).and_then(|key| {
            manifest
                .verify_signature(signature, &key)
                .map_err(|e| (ErrorCode::ManifestSignatureInvalid, e.to_string()))
        });
        if let Err((code, detail)) = outcome {
            self.report(code, location, detail);
        }
    }

    /// A checkpoint (in the bundle, its base, or given) against the recorder
    /// key trusted when it was issued.
    fn check_checkpoint_signature(
        &mut self,
        trust: &TrustRoots,
        signed: &SignedCheckpoint,
        location: Location,
    ) {
        let location = location.with_key(signed.key_id);
        let outcome =
            recorder_key(trust, &signed.key_id, signed.checkpoint.issued_at).and_then(|key| {
                signed
                    .verify_signature(&key)
                    .map_err(|e| (ErrorCode::CheckpointSignatureInvalid, e.to_string()))
            });
        if let Err((code, detail)) = outcome {
            self.report(code, location, detail);
        }
    }

    // ---- phase 7 -------------------------------------------------------------

    fn check_base_headers(&mut self, base: &BundleBase, first_segment: u64, origin: &Identifier) {
        for detail in header_problems(base, first_segment, origin) {
            self.report(ErrorCode::BaseHeadersInvalid, Location::base(), detail);
        }
    }

    fn segment_link_phase(&mut self, bundle: &Bundle) {
        self.enter(Phase::SegmentLinks);
        if let Some(base) = &bundle.base {
            let first = bundle
                .segments
                .first()
                .map_or(0, |s| s.genesis.segment_index.get());
            self.check_base_headers(base, first, &bundle.manifest.origin);
        }
        let mut previous_seal = bundle.base.as_ref().map_or(PrevHash::Genesis, |base| {
            PrevHash::Hash(base.checkpoint.checkpoint.seal_hash)
        });
        for (i, segment) in bundle.segments.iter().enumerate() {
            match segment.genesis.hash() {
                Ok(hash) if hash == segment.seal.genesis_hash => {}
                outcome => self.report(
                    ErrorCode::GenesisHashMismatch,
                    Location::segment(i),
                    link_detail(outcome, &segment.seal.genesis_hash),
                ),
            }
            if segment.genesis.prev_seal_hash != previous_seal {
                let detail = format!(
                    "links to {}, previous seal is {previous_seal}",
                    segment.genesis.prev_seal_hash
                );
                self.report(ErrorCode::SegmentLinkBroken, Location::segment(i), detail);
            }
            let seal_hash = segment.seal.hash();
            if let Some(checkpoint) = bundle.checkpoints.get(i) {
                match &seal_hash {
                    Ok(hash) if *hash == checkpoint.checkpoint.seal_hash => {}
                    outcome => {
                        let detail = link_detail(outcome.clone(), &checkpoint.checkpoint.seal_hash);
                        self.report(
                            ErrorCode::CheckpointSealMismatch,
                            Location::checkpoint(i),
                            detail,
                        );
                    }
                }
            }
            previous_seal = seal_hash.map_or(PrevHash::Genesis, PrevHash::Hash);
        }
    }
}

/// Whether consecutive base headers link: each seal names its genesis, each
/// genesis the previous seal, and the last seal is the base checkpoint's.
fn header_problems(base: &BundleBase, first_segment: u64, origin: &Identifier) -> Vec<String> {
    let mut problems = Vec::new();
    let count = base.headers.len() as u64;
    let mut previous: Option<Sha256Hex> = None;
    for (i, header) in base.headers.iter().enumerate() {
        let index = header.genesis.segment_index.get();
        let expected = (first_segment + i as u64).checked_sub(count);
        if Some(index) != expected || header.seal.segment_index != header.genesis.segment_index {
            problems.push(format!(
                "header {i} is segment {index}, expected {expected:?}"
            ));
        }
        if header.genesis.origin != *origin {
            problems.push(format!("header {i} names origin {}", header.genesis.origin));
        }
        if header.genesis.hash().ok() != Some(header.seal.genesis_hash) {
            problems.push(format!(
                "segment {index}: the seal does not name its genesis"
            ));
        }
        if let Some(seal) = previous
            && header.genesis.prev_seal_hash != PrevHash::Hash(seal)
        {
            problems.push(format!(
                "segment {index} does not link to the previous seal"
            ));
        }
        previous = header.seal.hash().ok();
    }
    if !base.headers.is_empty() && previous != Some(base.checkpoint.checkpoint.seal_hash) {
        problems.push("the last header's seal is not the base checkpoint's".to_owned());
    }
    problems
}

/// The accumulator a range bundle's base describes. A frontier of the wrong
/// length is cut or padded to fit the base's size, so positions stay right and
/// every root computed from it fails (phase 4 reports the base itself).
fn base_accumulator(base: &BundleBase) -> MerkleAccumulator {
    let size = base.checkpoint.checkpoint.size.get();
    let mut frontier = base.frontier.clone();
    frontier.resize(size.count_ones() as usize, crate::merkle::empty_root());
    MerkleAccumulator::from_frontier(size, frontier).unwrap_or_default()
}

fn link_detail(computed: Result<Sha256Hex, CanonicalError>, recorded: &Sha256Hex) -> String {
    match computed {
        Ok(hash) => format!("names {recorded}, actual {hash}"),
        Err(e) => e.to_string(),
    }
}

fn key_use_code(error: KeyUseError) -> ErrorCode {
    match error {
        KeyUseError::Revoked => ErrorCode::KeyRevoked,
        KeyUseError::WrongRole => ErrorCode::KeyRoleMismatch,
        KeyUseError::OutsideWindow => ErrorCode::KeyOutsideWindow,
        KeyUseError::RetiredWithoutNotAfter => ErrorCode::RetiredKeyWithoutNotAfter,
    }
}

/// The trusted recorder key `key_id`, if it may vouch for something signed at `at`.
fn recorder_key(
    trust: &TrustRoots,
    key_id: &KeyId,
    at: Timestamp,
) -> Result<PublicKey, (ErrorCode, String)> {
    let key = trust.find(key_id).ok_or((
        ErrorCode::KeyUnknown,
        "signer is not a trusted key".to_owned(),
    ))?;
    key.check_use(KeyRole::Recorder, at)
        .map_err(|e| (key_use_code(e), format!("recorder key: {e} (signed {at})")))?;
    Ok(key.public_key)
}
