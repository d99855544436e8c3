//! The evidence bundle: one JSON document an auditor verifies offline. It holds a
//! manifest (signed by the recorder key), the gateway key certificates, the sealed
//! segments with their envelopes, one checkpoint per segment, and inclusion and
//! consistency proofs.
//!
//! A bundle holds either the whole log from segment 0, or a range of it: the
//! segments after a base checkpoint (one the auditor already holds, or can fetch
//! from a checkpoint sink), with the base's perfect-subtree roots so every later
//! root can be recomputed, and an RFC 6962 consistency proof from the base to the
//! bundle's last checkpoint. Certificates are sorted by `(key_id, not_before)` and
//! proofs by their indices, so one log state has one bundle layout.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::certificate::SignedKeyCertificate;
use crate::checkpoint::SignedCheckpoint;
use crate::fields::{FieldError, Identifier, SafeU64, SchemaVersion1, constant_string};
use crate::hash::Sha256Hex;
use crate::jcs::CanonicalError;
use crate::keys::{
    KeyId, PublicKey, SignatureError, SignatureHex, SigningKey, sign_canonical, verify_named,
};
use crate::merkle::{MerkleAccumulator, MerkleTree, ProofError};
use crate::segment::{Segment, envelope_leaf};
use crate::timestamp::Timestamp;

constant_string!(
    /// `"tollgate.dev/evidence-bundle"`.
    BundleFormat = "tollgate.dev/evidence-bundle"
);

/// The whole bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// What the bundle holds.
    pub manifest: Manifest,
    /// The recorder key's signature over `JCS(manifest)`.
    pub manifest_signature: ManifestSignature,
    /// Gateway key certificates, sorted by `(key_id, not_before)`.
    pub certificates: Vec<SignedKeyCertificate>,
    /// For a range bundle, the checkpoint it continues; absent when the bundle
    /// starts at segment 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BundleBase>,
    /// Sealed segments in order: from segment 0, or from the one after the base.
    pub segments: Vec<Segment>,
    /// One checkpoint per segment, in order.
    pub checkpoints: Vec<SignedCheckpoint>,
    /// Proofs over the checkpoints.
    pub proofs: Proofs,
}

/// Where a range bundle starts: the log as of the checkpoint before its first
/// segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleBase {
    /// The checkpoint issued with the segment before the bundle's first.
    pub checkpoint: SignedCheckpoint,
    /// Roots of the perfect subtrees of the log's first `checkpoint.size`
    /// envelopes, largest first (one per set bit of the size); they hash to the
    /// checkpoint's root.
    pub frontier: Vec<Sha256Hex>,
    /// RFC 6962 consistency proof from the base checkpoint to the bundle's last.
    pub consistency: Vec<Sha256Hex>,
    /// Genesis and seal of consecutive segments ending with the base's (whose
    /// seal the base checkpoint names), oldest first: they tie each
    /// continuation's segment to the base. Empty when no stream continues.
    pub headers: Vec<SegmentHeader>,
    /// For each stream the bundle holds from past its first record, that
    /// stream's last envelope before the range, proven in its segment.
    pub continuations: Vec<Continuation>,
}

/// A segment's genesis and seal, without its envelopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentHeader {
    /// The segment's genesis.
    pub genesis: crate::segment::Genesis,
    /// The segment's seal.
    pub seal: crate::segment::Seal,
}

/// The envelope a continued stream's first envelope in the range links to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Continuation {
    /// The stream's last envelope before the range.
    pub envelope: crate::chain::Envelope,
    /// The segment holding it (one of the base's headers).
    pub segment_index: SafeU64,
    /// Its position in that segment, from 0.
    pub index: SafeU64,
    /// RFC 6962 audit path to the segment's seal root, leaf level first.
    pub path: Vec<Sha256Hex>,
}

/// The bundle's table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `tollgate.dev/evidence-bundle`.
    pub format: BundleFormat,
    /// Always 1.
    pub format_version: SchemaVersion1,
    /// The log's name.
    pub origin: Identifier,
    /// When the bundle was built.
    pub created_at: Timestamp,
    /// How many of each thing the bundle holds.
    pub counts: ManifestCounts,
    /// Index and time ranges covered.
    pub ranges: ManifestRanges,
    /// Hash of the last checkpoint body.
    pub latest_checkpoint_hash: Sha256Hex,
    /// For a range bundle, the hash of the base checkpoint's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_checkpoint_hash: Option<Sha256Hex>,
}

/// Counts in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCounts {
    /// Segments.
    pub segments: SafeU64,
    /// Envelopes in all segments.
    pub envelopes: SafeU64,
    /// Envelopes carrying receipts.
    pub receipts: SafeU64,
    /// Envelopes carrying close records.
    pub close_records: SafeU64,
    /// Envelopes carrying forward decisions; absent (zero) in bundles without
    /// any, so older bundles keep their exact bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub decisions: SafeU64,
    /// Distinct stream ids.
    pub streams: SafeU64,
    /// Key certificates.
    pub certificates: SafeU64,
    /// Checkpoints.
    pub checkpoints: SafeU64,
    /// Inclusion proofs.
    pub inclusion_proofs: SafeU64,
    /// Consistency proofs.
    pub consistency_proofs: SafeU64,
}

fn is_zero(count: &SafeU64) -> bool {
    count.get() == 0
}

/// Ranges in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRanges {
    /// First and last segment index.
    pub segment_index: IndexRange,
    /// First and last log position (the first is the base's size in a range
    /// bundle).
    pub leaf_index: IndexRange,
    /// Earliest `started_at` and latest `completed_at` over all receipts; absent
    /// when there are none.
    pub receipt_time: Option<TimeRange>,
}

/// An inclusive integer range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRange {
    /// First.
    pub first: SafeU64,
    /// Last.
    pub last: SafeU64,
}

/// An inclusive time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// Earliest.
    pub first: Timestamp,
    /// Latest.
    pub last: Timestamp,
}

/// The recorder's signature over the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// The recorder key id.
    pub key_id: KeyId,
    /// Ed25519 over `JCS(manifest)`.
    pub signature: SignatureHex,
}

/// Proofs over the checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proofs {
    /// Inclusion proofs, sorted by `(checkpoint_index, leaf_index)`.
    pub inclusion: Vec<InclusionProof>,
    /// Consistency proofs, sorted by `(from_checkpoint, to_checkpoint)`.
    pub consistency: Vec<ConsistencyProof>,
}

/// Proof that the envelope at `leaf_index` is in checkpoint `checkpoint_index`'s tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// Index into `checkpoints`.
    pub checkpoint_index: SafeU64,
    /// Log position of the envelope.
    pub leaf_index: SafeU64,
    /// RFC 6962 audit path, leaf level first.
    pub path: Vec<Sha256Hex>,
}

/// Proof that checkpoint `to_checkpoint`'s tree extends `from_checkpoint`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// Index into `checkpoints` of the older tree.
    pub from_checkpoint: SafeU64,
    /// Index into `checkpoints` of the newer tree.
    pub to_checkpoint: SafeU64,
    /// RFC 6962 consistency proof.
    pub path: Vec<Sha256Hex>,
}

/// Why a bundle could not be built or serialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// No segments.
    #[error("a bundle needs at least one segment")]
    Empty,
    /// Segment `index` does not continue the previous one (index, first leaf or
    /// seal link).
    #[error("segment {index} does not continue the log")]
    SegmentOutOfOrder {
        /// Position in the input.
        index: usize,
    },
    /// The base checkpoint's frontier does not fit its size or root.
    #[error("the base frontier does not match the base checkpoint")]
    BaseMismatch,
    /// The checkpoint given with segment `index` is not for its seal, or its size is wrong.
    #[error("checkpoint {index} does not belong to its segment")]
    CheckpointMismatch {
        /// Position in the input.
        index: usize,
    },
    /// A number passed 2^53 − 1.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A proof could not be generated.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// No canonical encoding.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// JSON serialization failed.
    #[error("serializing the bundle: {0}")]
    Json(String),
}

impl Manifest {
    /// Describes bundle contents. The builder uses this to write the manifest and the
    /// verifier to check it.
    pub fn summarize(
        origin: &Identifier,
        created_at: Timestamp,
        base: Option<&BundleBase>,
        certificates: &[SignedKeyCertificate],
        segments: &[Segment],
        checkpoints: &[SignedCheckpoint],
        proofs: &Proofs,
    ) -> Result<Self, BundleError> {
        let mut receipts = 0usize;
        let mut decisions = 0usize;
        let mut closes = 0usize;
        let mut streams = BTreeSet::new();
        let mut time: Option<TimeRange> = None;
        for envelope in segments.iter().flat_map(|s| &s.envelopes) {
            streams.insert(&envelope.stream_id);
            match envelope.receipt() {
                Some(receipt) => {
                    receipts += 1;
                    let (start, end) = (receipt.body.started_at, receipt.body.completed_at);
                    time = Some(match time {
                        None => TimeRange {
                            first: start,
                            last: end,
                        },
                        Some(t) => TimeRange {
                            first: t.first.min(start),
                            last: t.last.max(end),
                        },
                    });
                }
                None if envelope.decision().is_some() => decisions += 1,
                None => closes += 1,
            }
        }
        let envelopes = receipts + decisions + closes;
        let first_segment = segments
            .first()
            .map_or(SafeU64::ZERO, |s| s.genesis.segment_index);
        let last_segment = segments
            .last()
            .map_or(SafeU64::ZERO, |s| s.genesis.segment_index);
        let latest_checkpoint_hash = match checkpoints.last() {
            Some(c) => c.checkpoint.hash()?,
            None => crate::merkle::empty_root(),
        };
        let base_checkpoint_hash = base.map(|b| b.checkpoint.checkpoint.hash()).transpose()?;
        let first_leaf = base.map_or(0, |b| b.checkpoint.checkpoint.size.get());
        Ok(Self {
            format: BundleFormat,
            format_version: SchemaVersion1,
            origin: origin.clone(),
            created_at,
            counts: ManifestCounts {
                segments: SafeU64::from_usize(segments.len())?,
                envelopes: SafeU64::from_usize(envelopes)?,
                receipts: SafeU64::from_usize(receipts)?,
                close_records: SafeU64::from_usize(closes)?,
                decisions: SafeU64::from_usize(decisions)?,
                streams: SafeU64::from_usize(streams.len())?,
                certificates: SafeU64::from_usize(certificates.len())?,
                checkpoints: SafeU64::from_usize(checkpoints.len())?,
                inclusion_proofs: SafeU64::from_usize(proofs.inclusion.len())?,
                consistency_proofs: SafeU64::from_usize(proofs.consistency.len())?,
            },
            ranges: ManifestRanges {
                segment_index: IndexRange {
                    first: first_segment,
                    last: last_segment,
                },
                leaf_index: IndexRange {
                    first: SafeU64::new(first_leaf)?,
                    last: SafeU64::new((first_leaf + envelopes as u64).saturating_sub(1))?,
                },
                receipt_time: time,
            },
            latest_checkpoint_hash,
            base_checkpoint_hash,
        })
    }

    /// Signs the manifest with the recorder key.
    pub fn sign(&self, recorder_key: &SigningKey) -> Result<ManifestSignature, CanonicalError> {
        Ok(ManifestSignature {
            key_id: KeyId::of_signing_key(recorder_key),
            signature: sign_canonical(self, recorder_key)?,
        })
    }

    /// Verifies `signature` with `recorder_key`, which must be the named key.
    pub fn verify_signature(
        &self,
        signature: &ManifestSignature,
        recorder_key: &PublicKey,
    ) -> Result<(), SignatureError> {
        verify_named(self, &signature.key_id, recorder_key, &signature.signature)
    }
}

/// The order certificates appear in a bundle.
pub fn certificate_order(a: &SignedKeyCertificate, b: &SignedKeyCertificate) -> std::cmp::Ordering {
    (a.certificate.key_id, a.certificate.not_before)
        .cmp(&(b.certificate.key_id, b.certificate.not_before))
}

impl Continuation {
    /// Proves `envelope`, at `index` in segment `segment_index` whose envelope
    /// hashes (in log order) are `segment_hashes`.
    pub fn prove(
        envelope: crate::chain::Envelope,
        segment_index: u64,
        index: u64,
        segment_hashes: &[Sha256Hex],
    ) -> Result<Self, BundleError> {
        let at = usize::try_from(index).unwrap_or(usize::MAX);
        if segment_hashes.get(at) != Some(&envelope.hash) {
            return Err(BundleError::Proof(ProofError::IndexOutOfRange {
                index,
                size: segment_hashes.len() as u64,
            }));
        }
        let leaves: Vec<Sha256Hex> = segment_hashes.iter().map(envelope_leaf).collect();
        let size = leaves.len() as u64;
        let path = MerkleTree::new(leaves).inclusion_proof(index, size)?;
        Ok(Self {
            envelope,
            segment_index: SafeU64::new(segment_index)?,
            index: SafeU64::new(index)?,
            path,
        })
    }
}

/// What a range bundle continues, as the recorder hands it to the builder.
#[derive(Debug, Clone)]
pub struct RangeBase {
    /// The checkpoint of the segment before the range.
    pub checkpoint: SignedCheckpoint,
    /// The log's frontier at the checkpoint's size.
    pub frontier: Vec<Sha256Hex>,
    /// Segment headers ending with the base's, oldest first.
    pub headers: Vec<SegmentHeader>,
    /// The continued streams' last envelopes before the range.
    pub continuations: Vec<Continuation>,
}

/// Assembles a bundle from sealed segments (with their envelopes), their
/// checkpoints and the gateway key certificates. Pure: the recorder reads the
/// inputs from storage and writes the output wherever it likes.
#[derive(Debug, Clone)]
pub struct BundleBuilder {
    origin: Identifier,
    created_at: Timestamp,
    base: Option<(RangeBase, MerkleAccumulator)>,
    certificates: Vec<SignedKeyCertificate>,
    segments: Vec<Segment>,
    checkpoints: Vec<SignedCheckpoint>,
}

impl BundleBuilder {
    /// Starts a bundle of the log `origin` from segment 0.
    pub fn new(origin: Identifier, created_at: Timestamp) -> Self {
        Self {
            origin,
            created_at,
            base: None,
            certificates: Vec::new(),
            segments: Vec::new(),
            checkpoints: Vec::new(),
        }
    }

    /// Starts a range bundle of the log `origin` after the base checkpoint, given
    /// with the log's frontier at its size (its perfect-subtree roots, largest
    /// first), which must hash to its root.
    pub fn after(
        origin: Identifier,
        created_at: Timestamp,
        base: RangeBase,
    ) -> Result<Self, BundleError> {
        let accumulator = MerkleAccumulator::from_frontier(
            base.checkpoint.checkpoint.size.get(),
            base.frontier.clone(),
        )
        .filter(|a| a.root() == base.checkpoint.checkpoint.root)
        .ok_or(BundleError::BaseMismatch)?;
        let mut builder = Self::new(origin, created_at);
        builder.base = Some((base, accumulator));
        Ok(builder)
    }

    /// Adds a gateway key certificate. Exact duplicates are dropped.
    pub fn add_certificate(&mut self, certificate: SignedKeyCertificate) -> &mut Self {
        if !self.certificates.contains(&certificate) {
            self.certificates.push(certificate);
        }
        self
    }

    /// Adds the next sealed segment and the checkpoint issued with it. Checks that it
    /// continues the log (or the base).
    pub fn add_segment(
        &mut self,
        segment: Segment,
        checkpoint: SignedCheckpoint,
    ) -> Result<&mut Self, BundleError> {
        let index = self.segments.len();
        let (expected_index, expected_first_leaf, previous_seal) =
            match (self.segments.last(), &self.base) {
                (Some(previous), _) => (
                    previous.genesis.segment_index.get() + 1,
                    previous.genesis.first_leaf_index.get() + previous.envelopes.len() as u64,
                    crate::hash::PrevHash::Hash(previous.seal.hash()?),
                ),
                // The base checkpoint names its seal, not its segment index: the
                // seal link and the leaf index tie the first segment to it.
                (None, Some((base, _))) => (
                    segment.genesis.segment_index.get().max(1),
                    base.checkpoint.checkpoint.size.get(),
                    crate::hash::PrevHash::Hash(base.checkpoint.checkpoint.seal_hash),
                ),
                (None, None) => (0, 0, crate::hash::PrevHash::Genesis),
            };
        let continues = segment.genesis.segment_index.get() == expected_index
            && segment.seal.segment_index == segment.genesis.segment_index
            && segment.genesis.first_leaf_index.get() == expected_first_leaf
            && segment.genesis.prev_seal_hash == previous_seal
            && !segment.envelopes.is_empty();
        if !continues {
            return Err(BundleError::SegmentOutOfOrder { index });
        }
        let size = expected_first_leaf + segment.envelopes.len() as u64;
        if checkpoint.checkpoint.seal_hash != segment.seal.hash()?
            || checkpoint.checkpoint.size.get() != size
        {
            return Err(BundleError::CheckpointMismatch { index });
        }
        self.segments.push(segment);
        self.checkpoints.push(checkpoint);
        Ok(self)
    }

    /// Builds the bundle: sorts certificates, generates a consistency proof between
    /// each pair of consecutive checkpoints (and from the base to the last) and an
    /// inclusion proof of each checkpoint's newest envelope, writes the manifest and
    /// signs it with the recorder key.
    pub fn build(self, recorder_key: &SigningKey) -> Result<Bundle, BundleError> {
        if self.segments.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut certificates = self.certificates;
        certificates.sort_by(certificate_order);
        let leaves = self
            .segments
            .iter()
            .flat_map(|s| &s.envelopes)
            .map(|e| envelope_leaf(&e.hash))
            .collect();
        let tree = match &self.base {
            Some((_, accumulator)) => MerkleTree::after(accumulator, leaves),
            None => MerkleTree::new(leaves),
        };
        let mut proofs = Proofs::default();
        let mut previous_size = None;
        for (i, checkpoint) in self.checkpoints.iter().enumerate() {
            let size = checkpoint.checkpoint.size.get();
            let last_leaf = size
                .checked_sub(1)
                .ok_or(BundleError::CheckpointMismatch { index: i })?;
            proofs.inclusion.push(InclusionProof {
                checkpoint_index: SafeU64::from_usize(i)?,
                leaf_index: SafeU64::new(last_leaf)?,
                path: tree.inclusion_proof(last_leaf, size)?,
            });
            if let Some(old) = previous_size {
                proofs.consistency.push(ConsistencyProof {
                    from_checkpoint: SafeU64::from_usize(i - 1)?,
                    to_checkpoint: SafeU64::from_usize(i)?,
                    path: tree.consistency_proof(old, size)?,
                });
            }
            previous_size = Some(size);
        }
        let base = match self.base {
            None => None,
            Some((base, accumulator)) => {
                let mut continuations = base.continuations;
                continuations.sort_by(|a, b| a.envelope.stream_id.cmp(&b.envelope.stream_id));
                Some(BundleBase {
                    consistency: tree
                        .consistency_proof(accumulator.size(), previous_size.unwrap_or_default())?,
                    frontier: base.frontier,
                    checkpoint: base.checkpoint,
                    headers: base.headers,
                    continuations,
                })
            }
        };
        let manifest = Manifest::summarize(
            &self.origin,
            self.created_at,
            base.as_ref(),
            &certificates,
            &self.segments,
            &self.checkpoints,
            &proofs,
        )?;
        let manifest_signature = manifest.sign(recorder_key)?;
        Ok(Bundle {
            manifest,
            manifest_signature,
            certificates,
            base,
            segments: self.segments,
            checkpoints: self.checkpoints,
            proofs,
        })
    }
}

impl Bundle {
    /// Compact JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, BundleError> {
        serde_json::to_vec(self).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Indented JSON, for people.
    pub fn to_json_pretty(&self) -> Result<Vec<u8>, BundleError> {
        serde_json::to_vec_pretty(self).map_err(|e| BundleError::Json(e.to_string()))
    }
}
