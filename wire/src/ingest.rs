//! The receipt ingest API's wire types: what `POST /v1/receipts` and
//! `GET /v1/streams/{stream_id}` answer. The recorder serves them; a gateway's
//! shipper reads them. See docs/recorder.md.

use serde::{Deserialize, Serialize};

/// Why an envelope was refused. Stable snake_case codes; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not a valid envelope (JSON shape or a field rule).
    Malformed,
    /// The certificate's issuer is not an active `receiptCA` key of the trust roots
    /// valid at the certificate's issue time and the receipt's time.
    CertificateUntrusted,
    /// The certificate itself is wrong: CA signature, or key id not its key's hash.
    CertificateInvalid,
    /// The envelope belongs to another stream than the batch's.
    WrongStream,
    /// The envelope's hash is not the hash of its content.
    HashMismatch,
    /// The record is signed by a key other than the certificate's.
    KeyNotCertified,
    /// The record's signature does not verify with the certified key.
    SignatureInvalid,
    /// The record is dated outside the certificate's validity window.
    OutsideCertificateWindow,
    /// The receipt names a namespace, serviceAccount or pod the key is not certified for.
    WorkloadMismatch,
    /// The envelope's seq skips ahead of the stream's next seq: envelopes are missing.
    SeqGap,
    /// A different envelope is already stored at this seq of the stream.
    SeqConflict,
    /// `prev_hash` does not name the stream's previous envelope.
    PrevHashMismatch,
    /// The stream's records were signed by another key.
    KeyChanged,
    /// The stream already has its close record.
    StreamClosed,
    /// The close record disagrees with the chain it closes.
    CloseMismatch,
    /// The receipt id is already stored (or repeated in the batch) at another position.
    ReceiptIdDuplicate,
    /// An earlier envelope of this batch was rejected, so this one cannot follow it.
    PrecededByRejection,
}

impl RejectReason {
    /// Every reason, for metrics and docs.
    pub const ALL: [Self; 17] = [
        Self::Malformed,
        Self::CertificateUntrusted,
        Self::CertificateInvalid,
        Self::WrongStream,
        Self::HashMismatch,
        Self::KeyNotCertified,
        Self::SignatureInvalid,
        Self::OutsideCertificateWindow,
        Self::WorkloadMismatch,
        Self::SeqGap,
        Self::SeqConflict,
        Self::PrevHashMismatch,
        Self::KeyChanged,
        Self::StreamClosed,
        Self::CloseMismatch,
        Self::ReceiptIdDuplicate,
        Self::PrecededByRejection,
    ];

    /// The wire code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::CertificateUntrusted => "certificate_untrusted",
            Self::CertificateInvalid => "certificate_invalid",
            Self::WrongStream => "wrong_stream",
            Self::HashMismatch => "hash_mismatch",
            Self::KeyNotCertified => "key_not_certified",
            Self::SignatureInvalid => "signature_invalid",
            Self::OutsideCertificateWindow => "outside_certificate_window",
            Self::WorkloadMismatch => "workload_mismatch",
            Self::SeqGap => "seq_gap",
            Self::SeqConflict => "seq_conflict",
            Self::PrevHashMismatch => "prev_hash_mismatch",
            Self::KeyChanged => "key_changed",
            Self::StreamClosed => "stream_closed",
            Self::CloseMismatch => "close_mismatch",
            Self::ReceiptIdDuplicate => "receipt_id_duplicate",
            Self::PrecededByRejection => "preceded_by_rejection",
        }
    }
}

/// One refused envelope in the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Position in the batch's `envelopes`.
    pub index: usize,
    /// The envelope's seq, when it could be read.
    pub seq: Option<u64>,
    /// Why.
    pub reason: RejectReason,
    /// Details for people.
    pub message: String,
}

/// `POST /v1/receipts` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    /// The batch's stream, when it could be read.
    pub stream_id: Option<String>,
    /// Envelopes stored by this request.
    pub accepted: u64,
    /// Envelopes already stored before (same stream, seq and hash): not stored again.
    pub duplicates: u64,
    /// Envelopes refused, with reasons. Nothing refused is stored.
    pub rejected: Vec<Rejection>,
    /// The seq the recorder expects next for this stream: resume shipping from here.
    pub next_seq: u64,
    /// Whether the stream's close record is stored.
    pub closed: bool,
}

/// `GET /v1/streams/{stream_id}` response: a stream's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The stream.
    pub stream_id: String,
    /// The seq the recorder expects next.
    pub next_seq: u64,
    /// Whether its close record is stored.
    pub closed: bool,
}
