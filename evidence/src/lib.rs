//! Tollgate evidence: receipts, canonical encoding, signing, chains, Merkle segments,
//! checkpoints, bundles and the offline verifier. Pure: no I/O, no async, no
//! randomness (callers bring keys and ids).
//!
//! How the pieces link, producer to auditor:
//!
//! 1. A gateway fills a [`ReceiptBody`] (hashes, counts, codes; never prompt or
//!    completion text, never key material) and signs its RFC 8785 bytes with its
//!    ephemeral key: [`SignedReceipt::sign`].
//! 2. Its spool writer chains receipts per gateway start with a
//!    [`StreamChainWriter`] (`stream_id`, `seq`, `prev_hash`, `hash`) and ends the
//!    stream with a signed close record.
//! 3. The control plane certifies the gateway key for its pod:
//!    [`SignedKeyCertificate::issue`] with the receipt CA key.
//! 4. The recorder checks each stream with a [`StreamChainChecker`], appends the
//!    envelopes to segments with a [`LogWriter`], and on sealing gets a segment
//!    [`Seal`] (RFC 6962 root) and a [`SignedCheckpoint`] over the whole log.
//! 5. [`BundleBuilder`] packs segments, checkpoints, certificates and proofs into a
//!    [`Bundle`] with a signed manifest.
//! 6. [`verify_bundle`] checks a serialized bundle offline in seven phases against
//!    [`TrustRoots`] and returns a [`VerificationReport`].
//!
//! Formats and decisions are described in `docs/evidence.md`.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod certificate;
pub mod chain;
pub mod checkpoint;
pub mod decision;
pub mod fields;
pub mod hash;
pub mod jcs;
pub mod keys;
pub mod merkle;
pub mod receipt;
pub mod report;
pub mod segment;
pub mod strict_json;
pub mod timestamp;
pub mod trust;
pub mod verify;

pub use bundle::{
    Bundle, BundleBuilder, BundleError, Continuation, Manifest, RangeBase, SegmentHeader,
};
pub use certificate::{CertificateError, KeyCertificate, PodIdentity, SignedKeyCertificate};
pub use chain::{
    ChainError, CloseReason, CloseRecord, EncodedEnvelope, Envelope, EnvelopeRecord,
    SignedCloseRecord, SignedRecord, StreamChainChecker, StreamChainWriter,
};
pub use checkpoint::{Checkpoint, SignedCheckpoint};
pub use fields::{
    Code, DnsLabel, DnsSubdomain, FieldError, HostName, Identifier, ModelName, PodUid, ReceiptId,
    SafeU64,
};
pub use hash::{GENESIS, PrevHash, Sha256Hex, sha256, sha256_canonical};
pub use jcs::{CanonicalError, to_canonical_bytes};
pub use keys::{KeyId, PublicKey, RecordSigner, SignatureError, SignatureHex, SigningKey};
pub use merkle::{
    MerkleAccumulator, MerkleTree, ProofError, merkle_root, verify_consistency, verify_inclusion,
};
pub use receipt::{
    Api, AppliedPricing, Decision, FAILED_OVER_REASON_PREFIX, GuardCheck, GuardChecks, GuardCodes,
    GuardOutcome, HttpMethod, HttpStatus, KeyRoute, Lane, Latency, QuotaCharge, ReceiptBody,
    ReceiptError, ReceiptRule, RequestVerdict, Route, SignedReceipt, Upstream, Usage, Workload,
    key_index,
};
pub use report::{
    BundleSummary, CheckpointRef, ErrorCode, Finding, GuardTally, Location, Phase, Verdict,
    VerificationReport,
};
pub use segment::{Genesis, LogError, LogState, LogWriter, Seal, SealOutcome, Segment};
pub use strict_json::StrictJsonError;
pub use timestamp::Timestamp;
pub use trust::{KeyRole, KeyState, TrustError, TrustRoots, TrustedKey};
pub use verify::{VerifyLimits, VerifyOptions, report_oversized_input, verify_bundle};
