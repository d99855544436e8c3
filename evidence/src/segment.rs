//! Segments of the recorder's log, and [`LogWriter`], the pure state machine the
//! recorder uses to open, fill and seal them.
//!
//! A segment starts with a genesis that links to the previous segment's seal (or
//! `GENESIS` for the first), holds envelopes in arrival order, and ends with a seal
//! holding the RFC 6962 root over its envelope hashes. Sealing also issues a
//! checkpoint over the whole log so far, signed by the recorder key.

use serde::{Deserialize, Serialize};

use crate::chain::Envelope;
use crate::checkpoint::{Checkpoint, CheckpointSchema, SignedCheckpoint};
use crate::fields::{Identifier, SafeU64, SchemaVersion1, constant_string};
use crate::hash::{PrevHash, Sha256Hex, sha256_canonical};
use crate::jcs::CanonicalError;
use crate::keys::SigningKey;
use crate::merkle::{MerkleAccumulator, leaf_hash};
use crate::timestamp::Timestamp;

constant_string!(
    /// `"tollgate.dev/segment-genesis"`.
    GenesisSchema = "tollgate.dev/segment-genesis"
);
constant_string!(
    /// `"tollgate.dev/segment-seal"`.
    SealSchema = "tollgate.dev/segment-seal"
);

/// The start of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// Always `tollgate.dev/segment-genesis`.
    pub schema: GenesisSchema,
    /// Always 1.
    pub schema_version: SchemaVersion1,
    /// The log's name.
    pub origin: Identifier,
    /// 0 for the first segment of the log, then +1.
    pub segment_index: SafeU64,
    /// The log position of this segment's first envelope.
    pub first_leaf_index: SafeU64,
    /// Hash of the previous segment's seal, or `GENESIS` for segment 0.
    pub prev_seal_hash: PrevHash,
    /// When the segment was opened.
    pub created_at: Timestamp,
}

impl Genesis {
    /// SHA-256 of the canonical genesis; the seal links to it.
    pub fn hash(&self) -> Result<Sha256Hex, CanonicalError> {
        sha256_canonical(self)
    }
}

/// The end of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    /// Always `tollgate.dev/segment-seal`.
    pub schema: SealSchema,
    /// Always 1.
    pub schema_version: SchemaVersion1,
    /// Same as the genesis.
    pub segment_index: SafeU64,
    /// Hash of this segment's genesis.
    pub genesis_hash: Sha256Hex,
    /// Envelopes in the segment (at least one).
    pub envelope_count: SafeU64,
    /// RFC 6962 root over the segment's envelope hashes, in order.
    pub root: Sha256Hex,
    /// When the segment was sealed.
    pub sealed_at: Timestamp,
}

impl Seal {
    /// SHA-256 of the canonical seal; the next genesis and the checkpoint link to it.
    pub fn hash(&self) -> Result<Sha256Hex, CanonicalError> {
        sha256_canonical(self)
    }
}

/// A sealed segment with its envelopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// The start.
    pub genesis: Genesis,
    /// The envelopes, in log order.
    pub envelopes: Vec<Envelope>,
    /// The end.
    pub seal: Seal,
}

/// The Merkle leaf for an envelope: `SHA-256(0x00 ‖ envelope.hash)`.
pub fn envelope_leaf(envelope_hash: &Sha256Hex) -> Sha256Hex {
    leaf_hash(envelope_hash.as_bytes())
}

/// Why the log writer refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// `open_segment` while a segment is open.
    #[error("a segment is already open")]
    SegmentOpen,
    /// `append` or `seal` with no open segment.
    #[error("no segment is open")]
    NoSegmentOpen,
    /// Sealing an empty segment; empty segments are not allowed.
    #[error("cannot seal an empty segment")]
    EmptySegment,
    /// The envelope's `hash` does not match its content.
    #[error("envelope hash does not match its content")]
    EnvelopeHashMismatch,
    /// A counter would pass 2^53 − 1.
    #[error("log position overflow")]
    Overflow,
    /// A saved state does not fit together.
    #[error("inconsistent log state")]
    InconsistentState,
    /// No canonical encoding.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

/// What the recorder persists between segments to resume the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogState {
    /// The log's name.
    pub origin: Identifier,
    /// Index of the next segment.
    pub next_segment_index: SafeU64,
    /// Envelopes in the log.
    pub size: SafeU64,
    /// Perfect-subtree roots of the log tree, largest first.
    pub frontier: Vec<Sha256Hex>,
    /// Hash of the last seal, or `GENESIS`.
    pub prev_seal_hash: PrevHash,
    /// Hash of the last checkpoint body, or `GENESIS`.
    pub prev_checkpoint_hash: PrevHash,
}

#[derive(Debug, Clone)]
struct OpenSegment {
    genesis: Genesis,
    genesis_hash: Sha256Hex,
    leaves: MerkleAccumulator,
}

/// A segment's seal and the checkpoint issued with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealOutcome {
    /// The seal.
    pub seal: Seal,
    /// The checkpoint over the log up to this seal.
    pub checkpoint: SignedCheckpoint,
}

/// The recorder's log: open a segment, append envelopes, seal. It keeps only hashes
/// (the recorder stores envelopes itself), O(log n) of them.
#[derive(Debug, Clone)]
pub struct LogWriter {
    origin: Identifier,
    next_segment_index: SafeU64,
    log: MerkleAccumulator,
    prev_seal_hash: PrevHash,
    prev_checkpoint_hash: PrevHash,
    open: Option<OpenSegment>,
}

impl LogWriter {
    /// A new, empty log.
    pub fn new(origin: Identifier) -> Self {
        Self {
            origin,
            next_segment_index: SafeU64::ZERO,
            log: MerkleAccumulator::new(),
            prev_seal_hash: PrevHash::Genesis,
            prev_checkpoint_hash: PrevHash::Genesis,
            open: None,
        }
    }

    /// Resumes from a saved state (taken between segments).
    pub fn resume(state: LogState) -> Result<Self, LogError> {
        let log = MerkleAccumulator::from_frontier(state.size.get(), state.frontier)
            .ok_or(LogError::InconsistentState)?;
        Ok(Self {
            origin: state.origin,
            next_segment_index: state.next_segment_index,
            log,
            prev_seal_hash: state.prev_seal_hash,
            prev_checkpoint_hash: state.prev_checkpoint_hash,
            open: None,
        })
    }

    /// The state to persist; `None` while a segment is open.
    pub fn state(&self) -> Option<LogState> {
        self.open.is_none().then(|| LogState {
            origin: self.origin.clone(),
            next_segment_index: self.next_segment_index,
            size: SafeU64::new(self.log.size()).unwrap_or(SafeU64::MAX),
            frontier: self.log.frontier().to_vec(),
            prev_seal_hash: self.prev_seal_hash,
            prev_checkpoint_hash: self.prev_checkpoint_hash,
        })
    }

    /// Envelopes in the log, including the open segment.
    pub fn size(&self) -> u64 {
        self.log.size()
    }

    /// Opens the next segment.
    pub fn open_segment(&mut self, created_at: Timestamp) -> Result<Genesis, LogError> {
        if self.open.is_some() {
            return Err(LogError::SegmentOpen);
        }
        let genesis = Genesis {
            schema: GenesisSchema,
            schema_version: SchemaVersion1,
            origin: self.origin.clone(),
            segment_index: self.next_segment_index,
            first_leaf_index: SafeU64::new(self.log.size()).map_err(|_| LogError::Overflow)?,
            prev_seal_hash: self.prev_seal_hash,
            created_at,
        };
        let genesis_hash = genesis.hash()?;
        self.open = Some(OpenSegment {
            genesis: genesis.clone(),
            genesis_hash,
            leaves: MerkleAccumulator::new(),
        });
        Ok(genesis)
    }

    /// Appends an envelope (already checked by the recorder: chain, signature,
    /// certificate) and returns its log position.
    pub fn append(&mut self, envelope: &Envelope) -> Result<u64, LogError> {
        let open = self.open.as_mut().ok_or(LogError::NoSegmentOpen)?;
        if envelope.compute_hash()? != envelope.hash {
            return Err(LogError::EnvelopeHashMismatch);
        }
        let position = self.log.size();
        SafeU64::new(position + 1).map_err(|_| LogError::Overflow)?;
        let leaf = envelope_leaf(&envelope.hash);
        open.leaves.push(leaf);
        self.log.push(leaf);
        Ok(position)
    }

    /// Seals the open segment and signs a checkpoint over the log with the recorder key.
    pub fn seal(
        &mut self,
        sealed_at: Timestamp,
        recorder_key: &SigningKey,
    ) -> Result<SealOutcome, LogError> {
        let open = self.open.as_ref().ok_or(LogError::NoSegmentOpen)?;
        if open.leaves.size() == 0 {
            return Err(LogError::EmptySegment);
        }
        let seal = Seal {
            schema: SealSchema,
            schema_version: SchemaVersion1,
            segment_index: open.genesis.segment_index,
            genesis_hash: open.genesis_hash,
            envelope_count: SafeU64::new(open.leaves.size()).map_err(|_| LogError::Overflow)?,
            root: open.leaves.root(),
            sealed_at,
        };
        let seal_hash = seal.hash()?;
        let checkpoint = Checkpoint {
            schema: CheckpointSchema,
            schema_version: SchemaVersion1,
            origin: self.origin.clone(),
            size: SafeU64::new(self.log.size()).map_err(|_| LogError::Overflow)?,
            root: self.log.root(),
            prev_checkpoint_hash: self.prev_checkpoint_hash,
            seal_hash,
            issued_at: sealed_at,
        };
        let checkpoint_hash = checkpoint.hash()?;
        let checkpoint = SignedCheckpoint::sign(checkpoint, recorder_key)?;
        self.next_segment_index = self
            .next_segment_index
            .checked_increment()
            .ok_or(LogError::Overflow)?;
        self.prev_seal_hash = PrevHash::Hash(seal_hash);
        self.prev_checkpoint_hash = PrevHash::Hash(checkpoint_hash);
        self.open = None;
        Ok(SealOutcome { seal, checkpoint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::StreamChainWriter;
    use crate::merkle::merkle_root;
    use crate::receipt::SignedReceipt;
    use crate::receipt::tests::sample_body;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_canonical(s).unwrap()
    }

    #[test]
    fn segments_link_and_checkpoints_cover_the_whole_log() {
        let gateway = SigningKey::from_bytes(&[1; 32]);
        let recorder = SigningKey::from_bytes(&[2; 32]);
        let mut stream = StreamChainWriter::new(Identifier::new("s").unwrap());
        let envelopes: Vec<Envelope> = (0..5)
            .map(|_| {
                stream
                    .append(SignedReceipt::sign(sample_body(), &gateway).unwrap())
                    .unwrap()
            })
            .collect();

        let mut log = LogWriter::new(Identifier::new("origin").unwrap());
        assert_eq!(log.append(&envelopes[0]), Err(LogError::NoSegmentOpen));
        let g0 = log.open_segment(at("2025-01-01T00:00:00.000Z")).unwrap();
        assert_eq!(
            log.seal(at("2025-01-01T00:00:00.000Z"), &recorder)
                .unwrap_err(),
            LogError::EmptySegment
        );
        for e in &envelopes[..3] {
            log.append(e).unwrap();
        }
        let first = log.seal(at("2025-01-01T00:01:00.000Z"), &recorder).unwrap();
        let state = log.state().unwrap();
        let mut log = LogWriter::resume(state).unwrap();
        let g1 = log.open_segment(at("2025-01-01T00:01:00.000Z")).unwrap();
        for e in &envelopes[3..] {
            log.append(e).unwrap();
        }
        let second = log.seal(at("2025-01-01T00:02:00.000Z"), &recorder).unwrap();

        let leaves: Vec<Sha256Hex> = envelopes.iter().map(|e| envelope_leaf(&e.hash)).collect();
        assert_eq!(g0.prev_seal_hash, PrevHash::Genesis);
        assert_eq!(
            g1.prev_seal_hash,
            PrevHash::Hash(first.seal.hash().unwrap())
        );
        assert_eq!(g1.first_leaf_index.get(), 3);
        assert_eq!(first.seal.root, merkle_root(&leaves[..3]));
        assert_eq!(second.seal.root, merkle_root(&leaves[3..]));
        assert_eq!(second.checkpoint.checkpoint.size.get(), 5);
        assert_eq!(second.checkpoint.checkpoint.root, merkle_root(&leaves));
        assert_eq!(
            second.checkpoint.checkpoint.prev_checkpoint_hash,
            PrevHash::Hash(first.checkpoint.checkpoint.hash().unwrap())
        );
        assert_eq!(
            second.checkpoint.checkpoint.seal_hash,
            second.seal.hash().unwrap()
        );
    }

    #[test]
    fn tampered_envelopes_are_refused() {
        let gateway = SigningKey::from_bytes(&[1; 32]);
        let mut stream = StreamChainWriter::new(Identifier::new("s").unwrap());
        let mut envelope = stream
            .append(SignedReceipt::sign(sample_body(), &gateway).unwrap())
            .unwrap();
        envelope.seq = SafeU64::from(9u32);
        let mut log = LogWriter::new(Identifier::new("origin").unwrap());
        log.open_segment(at("2025-01-01T00:00:00.000Z")).unwrap();
        assert_eq!(log.append(&envelope), Err(LogError::EnvelopeHashMismatch));
        assert_eq!(
            log.open_segment(at("2025-01-01T00:00:00.000Z"))
                .unwrap_err(),
            LogError::SegmentOpen
        );
        assert!(log.state().is_none());
    }
}
