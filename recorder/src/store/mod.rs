//! Storage: one [`Store`] trait, written once ([`engine`]: one schema and one
//! statement table in [`sql`], row mapping in [`rows`]) over two thin drivers:
//! [`sqlite::SqliteStore`], the embedded default, and
//! [`postgres::PostgresStore`], for replicas sharing one database. The same
//! behaviour suite runs against both.
//!
//! Writes go through short transactions that take a lock first: [`LogTx`] locks
//! the log (SQLite `BEGIN IMMEDIATE`; PostgreSQL `SELECT … FOR UPDATE` on the one
//! `log_meta` row), so appends from any replica are serialized and each sees the
//! stream and log state the previous one committed. [`QuotaTx`] locks one quota
//! limit (its `quota_limits` row), so grants on the same limit never interleave.
//! The decisions themselves are made by pure code ([`crate::ingest`],
//! [`crate::log`], [`crate::quota`]) between the reads and the writes.

pub mod engine;
pub mod postgres;
pub mod rows;
pub mod sql;
pub mod sqlite;

use futures::future::BoxFuture;
use tollgate_evidence::{Envelope, EnvelopeRecord, SafeU64, SignedKeyCertificate};
use tollgate_wire::quota_math::Amounts;

use crate::ingest::ChainFault;
use crate::log::Position;

/// A storage future.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL answered with an error (a connection problem is
    /// [`StoreError::Unavailable`] instead).
    #[error("postgres: {0}")]
    Postgres(tokio_postgres::Error),
    /// Stored data does not read back as what was written.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// The database cannot be used (connect, open, pool).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Too much work is already queued for the database: retry shortly.
    #[error("storage busy: {0}")]
    Busy(String),
}

impl From<tokio_postgres::Error> for StoreError {
    /// A lost or refused connection, or a server shutting down or starting
    /// up, is [`StoreError::Unavailable`] (503, retry later); anything else
    /// the server said stays an error.
    fn from(e: tokio_postgres::Error) -> Self {
        let server_going_or_coming = e.code().is_some_and(|code| {
            let code = code.code();
            // Class 08: connection exception; 57P01-57P03: admin shutdown,
            // crash shutdown, cannot connect now.
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        });
        let transport = e.as_db_error().is_none()
            && std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || transport || server_going_or_coming {
            let cause = std::error::Error::source(&e)
                .map(|s| format!("{e}: {s}"))
                .unwrap_or_else(|| e.to_string());
            Self::Unavailable(format!("postgres: {cause}"))
        } else {
            Self::Postgres(e)
        }
    }
}

/// Storage-side facts of a receipt, for usage queries and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptFacts {
    /// Receipt id (unique).
    pub receipt_id: String,
    /// Workload namespace.
    pub namespace: String,
    /// Workload serviceAccount.
    pub service_account: String,
    /// Workload pod.
    pub pod: String,
    /// Provider, if any.
    pub provider: Option<String>,
    /// Model served, else model requested.
    pub model: Option<String>,
    /// `started_at`.
    pub started_at_ms: u64,
    /// `completed_at`.
    pub completed_at_ms: u64,
    /// Input tokens (0 when unknown).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// Input tokens written to a prompt cache (5-minute and 1-hour).
    pub cache_write_tokens: u64,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: u64,
    /// Cost.
    pub cost_micro_usd: u64,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// The provider's request id, if any.
    pub provider_request_id: Option<String>,
    /// The keyed hash of the end user (hex), if the receipt has one.
    pub caller_hash: Option<String>,
    /// The verdict's reason code (`allowed`, `model_not_allowed`, …).
    pub reason: String,
}

/// One stored envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRow {
    /// Log position.
    pub log_index: u64,
    /// Segment.
    pub segment_index: u64,
    /// Stream.
    pub stream_id: String,
    /// Seq in the stream.
    pub seq: u64,
    /// Envelope hash (hex).
    pub hash: String,
    /// Signing key id (hex).
    pub key_id: String,
    /// Receipt facts; `None` for a close record.
    pub receipt: Option<ReceiptFacts>,
    /// The envelope as JSON.
    pub json: String,
}

impl EnvelopeRow {
    /// The row for `envelope` at `position`.
    pub fn new(envelope: &Envelope, position: Position) -> Result<Self, StoreError> {
        let json =
            serde_json::to_string(envelope).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Self::with_json(envelope, position, json))
    }

    /// The row for `envelope` at `position`, stored as `json` (the envelope's
    /// JSON as received, already parsed into `envelope`).
    pub fn with_json(envelope: &Envelope, position: Position, json: String) -> Self {
        let receipt = match &envelope.record {
            EnvelopeRecord::Close(_) | EnvelopeRecord::Decision(_) => None,
            EnvelopeRecord::Receipt(r) => {
                let b = &r.body;
                let usage = b.usage;
                Some(ReceiptFacts {
                    receipt_id: b.id.as_str().to_string(),
                    namespace: b.workload.namespace.as_str().to_string(),
                    service_account: b.workload.service_account.as_str().to_string(),
                    pod: b.workload.pod.as_str().to_string(),
                    provider: b.provider.as_ref().map(|p| p.as_str().to_string()),
                    model: b
                        .model_served
                        .as_ref()
                        .or(b.model_requested.as_ref())
                        .map(|m| m.as_str().to_string()),
                    started_at_ms: b.started_at.unix_millis(),
                    completed_at_ms: b.completed_at.unix_millis(),
                    input_tokens: usage.map_or(0, |u| u.input_tokens.get()),
                    output_tokens: usage.map_or(0, |u| u.output_tokens.get()),
                    cached_tokens: usage.map_or(0, |u| u.cached_tokens.get()),
                    cache_write_tokens: usage.map_or(0, |u| {
                        let part = |n: Option<SafeU64>| n.map_or(0, SafeU64::get);
                        part(u.cache_write_5m_tokens).saturating_add(part(u.cache_write_1h_tokens))
                    }),
                    reasoning_tokens: usage
                        .and_then(|u| u.reasoning_tokens)
                        .map_or(0, SafeU64::get),
                    cost_micro_usd: b.cost_micro_usd.get(),
                    // An attempt given up for another provider is not a
                    // request of its own: usage leaves it out.
                    decision: match b.verdict.decision {
                        _ if b.verdict.reason.as_str().starts_with(FAILED_OVER) => "failed_over",
                        tollgate_evidence::Decision::Allow => "allow",
                        tollgate_evidence::Decision::Deny => "deny",
                        tollgate_evidence::Decision::Error => "error",
                    },
                    provider_request_id: b
                        .upstream
                        .as_ref()
                        .and_then(|u| u.provider_request_id.as_ref())
                        .map(|id| id.as_str().to_string()),
                    caller_hash: b.caller_hash.as_ref().map(ToString::to_string),
                    reason: b.verdict.reason.as_str().to_string(),
                })
            }
        };
        Self {
            log_index: position.log_index,
            segment_index: position.segment_index,
            stream_id: envelope.stream_id.as_str().to_string(),
            seq: envelope.seq.get(),
            hash: envelope.hash.to_hex(),
            key_id: envelope.record.key_id().to_string(),
            receipt,
            json,
        }
    }
}

/// The reason prefix of a receipt for an attempt given up for the next
/// provider (the request's own receipt follows it).
pub const FAILED_OVER: &str = tollgate_evidence::FAILED_OVER_REASON_PREFIX;

/// A stream's stored position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    /// Stream id.
    pub stream_id: String,
    /// The gateway key.
    pub key_id: String,
    /// Certified namespace.
    pub namespace: String,
    /// Certified serviceAccount.
    pub service_account: String,
    /// Certified pod.
    pub pod: String,
    /// The next seq expected.
    pub next_seq: u64,
    /// Whether the close record is stored.
    pub closed: bool,
    /// Earliest record time stored (receipt `started_at`, close `closed_at`).
    pub first_record_ms: u64,
    /// Latest record time stored.
    pub last_record_ms: u64,
}

/// The streams active in a usage query's range, summed up: how fresh the
/// data behind the answer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Streams with no close record.
    pub open: u64,
    /// The newest record time stored (unix ms), over all streams.
    pub newest_record_ms: Option<u64>,
    /// Of the open streams, the one quiet longest: its newest record time.
    pub quietest_open_record_ms: Option<u64>,
}

/// A stored key certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRow {
    /// SHA-256 of the certificate's canonical JSON (hex): the primary key.
    pub cert_hash: String,
    /// The certified key.
    pub key_id: String,
    /// `not_before`.
    pub not_before_ms: u64,
    /// The signed certificate as JSON.
    pub json: String,
}

impl CertificateRow {
    /// The row for a certificate.
    pub fn new(certificate: &SignedKeyCertificate) -> Result<Self, StoreError> {
        let hash = tollgate_evidence::hash::sha256_canonical(certificate)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Self {
            cert_hash: hash.to_hex(),
            key_id: certificate.certificate.key_id.to_string(),
            not_before_ms: certificate.certificate.not_before.unix_millis(),
            json: serde_json::to_string(certificate)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }
}

/// A segment opened by this write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentOpenRow {
    /// Segment index.
    pub index: u64,
    /// Genesis JSON.
    pub genesis_json: String,
    /// `created_at`.
    pub created_at_ms: u64,
}

/// A segment sealed by this write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSealRow {
    /// Segment index.
    pub index: u64,
    /// Seal JSON.
    pub seal_json: String,
    /// Checkpoint JSON.
    pub checkpoint_json: String,
    /// `sealed_at`.
    pub sealed_at_ms: u64,
    /// Envelopes in the segment.
    pub envelope_count: u64,
    /// `LogState` JSON after this seal (a range export's base frontier).
    pub log_state_json: String,
}

/// The one row describing the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMetaRow {
    /// The log's origin.
    pub origin: String,
    /// Envelopes in the log, including the open segment.
    pub size: u64,
    /// `LogState` JSON after the last seal, if any.
    pub state_json: Option<String>,
    /// `issued_at` of the last checkpoint, if any.
    pub last_issued_at_ms: Option<u64>,
}

/// A flagged chain fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRow {
    /// The fault.
    pub fault: ChainFault,
    /// The stream's certified namespace.
    pub namespace: String,
    /// When it was detected.
    pub detected_at_ms: u64,
}

/// Everything one log transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWrite {
    /// A certificate to store if absent.
    pub certificate: Option<CertificateRow>,
    /// The stream's new position (insert or update).
    pub stream: Option<StreamRow>,
    /// Envelopes to insert.
    pub envelopes: Vec<EnvelopeRow>,
    /// Segments opened.
    pub opened: Vec<SegmentOpenRow>,
    /// Segments sealed.
    pub sealed: Vec<SegmentSealRow>,
    /// The log row after the write.
    pub meta: LogMetaRow,
    /// Faults to flag (one row per stream, kind and seq).
    pub faults: Vec<FaultRow>,
}

/// The open segment as stored: genesis JSON and envelope JSON in log order.
pub type StoredOpenSegment = (String, Vec<String>);

/// A transaction holding the log lock.
pub trait LogTx: Send {
    /// The log row (`None` before the first write).
    fn meta(&mut self) -> StoreFuture<'_, Option<LogMetaRow>>;
    /// The open segment, if any.
    fn open_segment(&mut self) -> StoreFuture<'_, Option<StoredOpenSegment>>;
    /// A stream's position.
    fn stream<'a>(&'a mut self, stream_id: &'a str) -> StoreFuture<'a, Option<StreamRow>>;
    /// The envelope at `(stream_id, seq)` as JSON.
    fn envelope_json<'a>(
        &'a mut self,
        stream_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<String>>;
    /// Hashes of the stream's envelopes with `from <= seq <= to`.
    fn hashes<'a>(
        &'a mut self,
        stream_id: &'a str,
        from: u64,
        to: u64,
    ) -> StoreFuture<'a, Vec<(u64, String)>>;
    /// Which of these receipt ids are stored.
    fn known_receipt_ids<'a>(&'a mut self, ids: &'a [String]) -> StoreFuture<'a, Vec<String>>;
    /// Writes the changes.
    fn write<'a>(&'a mut self, write: &'a LogWrite) -> StoreFuture<'a, ()>;
    /// Commits.
    fn commit(self: Box<Self>) -> StoreFuture<'static, ()>;
}

/// A quota limit's identity: quota id, limit name and window kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// `<namespace>/<name>` or `cluster/<name>`.
    pub quota_id: String,
    /// The limit's name.
    pub limit: String,
    /// `calendar:minute|hour|day|month` or `rolling:<seconds>`.
    pub window: String,
}

/// A stored lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// Lease id.
    pub lease_id: String,
    /// Its limit.
    pub key: LimitKey,
    /// Calendar windows: the window's start (unix seconds); rolling: 0.
    pub window_start: u64,
    /// Granted so far (cumulative).
    pub granted: Amounts,
    /// Consumption reported so far (cumulative).
    pub consumed: Amounts,
    /// Unix seconds after which the unconsumed rest no longer counts.
    pub expires_at: u64,
    /// Who holds it (the caller's name).
    pub holder: String,
    /// Whether it was returned.
    pub returned: bool,
    /// The caps it was granted under.
    pub caps: Caps,
    /// Whether the quota was in shadow mode when granted.
    pub shadow: bool,
}

/// A limit's caps (`None`: not capped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Tokens.
    pub tokens: Option<u64>,
    /// Requests.
    pub requests: Option<u64>,
    /// Cost in micro-USD.
    pub cost_micro_usd: Option<u64>,
}

/// A transaction holding one limit's lock.
pub trait QuotaTx: Send {
    /// Settled usage in buckets `from <= bucket <= to`.
    fn usage_sum(&mut self, from_bucket: u64, to_bucket: u64) -> StoreFuture<'_, Amounts>;
    /// The oldest bucket at or after `from` holding usage.
    fn oldest_bucket(&mut self, from_bucket: u64) -> StoreFuture<'_, Option<u64>>;
    /// The unconsumed rest of live leases in `window_start`, except `exclude`.
    fn outstanding<'a>(
        &'a mut self,
        window_start: u64,
        now_s: u64,
        exclude: Option<&'a str>,
    ) -> StoreFuture<'a, Amounts>;
    /// A lease of this limit.
    fn lease<'a>(&'a mut self, lease_id: &'a str) -> StoreFuture<'a, Option<LeaseRow>>;
    /// Inserts or updates a lease.
    fn put_lease<'a>(&'a mut self, lease: &'a LeaseRow) -> StoreFuture<'a, ()>;
    /// Adds settled usage to a bucket.
    fn add_usage(&mut self, bucket: u64, amount: Amounts) -> StoreFuture<'_, ()>;
    /// Deletes this limit's leases that expired before `before_s`, and usage
    /// buckets older than `bucket_before`.
    fn purge(&mut self, before_s: u64, bucket_before: u64) -> StoreFuture<'_, ()>;
    /// Commits.
    fn commit(self: Box<Self>) -> StoreFuture<'static, ()>;
}

/// A usage query over stored receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellQuery {
    /// `started_at >= since_ms`.
    pub since_ms: u64,
    /// `started_at < until_ms`.
    pub until_ms: u64,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Also group by `caller_hash` (else every cell's caller is "").
    pub by_caller: bool,
    /// Also group by the verdict's reason (else every cell's reason is "").
    pub by_reason: bool,
    /// Only envelopes logged before this log index (a snapshot of the log),
    /// if set.
    pub before_log_index: Option<u64>,
}

/// Receipts grouped by workload, provider, model and hour (and caller when asked): the finest grain usage
/// is aggregated from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageCell {
    /// Namespace.
    pub namespace: String,
    /// ServiceAccount.
    pub service_account: String,
    /// Provider ("" when none).
    pub provider: String,
    /// Model ("" when none).
    pub model: String,
    /// Hours since the epoch of `started_at`.
    pub hour: u64,
    /// Receipts.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost.
    pub cost_micro_usd: u64,
    /// Input tokens read from a prompt cache.
    pub cached_tokens: u64,
    /// Input tokens written to a prompt cache.
    pub cache_write_tokens: u64,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: u64,
    /// `caller_hash` (hex), "" when the receipt has none or the query did not
    /// group by caller.
    pub caller: String,
    /// The verdict's reason, "" when the query did not group by reason.
    pub reason: String,
}

/// A sealed segment's stored metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegmentRow {
    /// Segment index.
    pub index: u64,
    /// Genesis JSON.
    pub genesis_json: String,
    /// Seal JSON.
    pub seal_json: String,
    /// Checkpoint JSON.
    pub checkpoint_json: String,
    /// Envelopes.
    pub envelope_count: u64,
}

/// A sealed segment with what retention and range exports need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    /// The segment as exported.
    pub sealed: SealedSegmentRow,
    /// `sealed_at`.
    pub sealed_at_ms: u64,
    /// `LogState` JSON after its seal; absent for segments sealed before schema
    /// version 4 (the recorder computes it from the envelope hashes).
    pub log_state_json: Option<String>,
    /// Retention deleted its envelopes.
    pub pruned: bool,
}

/// An envelope's place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedEnvelope {
    /// Log position.
    pub log_index: u64,
    /// Its segment.
    pub segment_index: u64,
    /// The envelope JSON.
    pub json: String,
}

/// Where the sealed segments stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentBounds {
    /// The first sealed segment retention kept.
    pub first_kept: Option<u64>,
    /// The last sealed segment.
    pub last_sealed: Option<u64>,
    /// The last segment retention pruned.
    pub last_pruned: Option<u64>,
}

/// One key in a gateway's key health report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedKey {
    /// The `LLMProvider`'s name.
    pub provider: String,
    /// The key's place in the provider's `credentialsRef.keys`.
    pub index: u32,
    /// The gateway routes around it.
    pub refused: bool,
    /// When the gateway first saw it refused.
    pub since_ms: Option<u64>,
    /// The HTTP status of the last refusal.
    pub last_status: Option<u16>,
}

/// What the recent reports say of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHealthCell {
    pub provider: String,
    pub index: u32,
    /// Reporters that reported the key.
    pub reporters: u64,
    /// Of them, those that hold it refused.
    pub refused_by: u64,
    /// The earliest refusal among them.
    pub refused_since_ms: Option<u64>,
    /// The highest refusal status among them.
    pub last_status: Option<u16>,
}

/// The storage backend.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Begins a log transaction (waits for the log lock).
    fn begin_log(&self) -> StoreFuture<'_, Box<dyn LogTx>>;
    /// Begins a quota transaction on `key` (waits for its lock).
    fn begin_quota<'a>(&'a self, key: &'a LimitKey) -> StoreFuture<'a, Box<dyn QuotaTx>>;
    /// The limit a lease belongs to (no lock).
    fn lease_key<'a>(&'a self, lease_id: &'a str) -> StoreFuture<'a, Option<LimitKey>>;
    /// A stream's position (no lock).
    fn stream<'a>(&'a self, stream_id: &'a str) -> StoreFuture<'a, Option<StreamRow>>;
    /// Usage cells for a query.
    fn usage_cells<'a>(&'a self, query: &'a CellQuery) -> StoreFuture<'a, Vec<UsageCell>>;
    /// Faults whose record time is in the query's range (its namespace only, if set).
    fn faults<'a>(&'a self, query: &'a CellQuery, limit: usize) -> StoreFuture<'a, Vec<FaultRow>>;
    /// Open streams active in the query's time range (at most `limit`), and
    /// a summary of all streams active in it.
    fn open_streams<'a>(
        &'a self,
        query: &'a CellQuery,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<StreamRow>, StreamSummary)>;
    /// Sealed segments `first..=last` (to the end if `None`) retention kept, in order.
    fn sealed_segments(
        &self,
        first: u64,
        last: Option<u64>,
    ) -> StoreFuture<'_, Vec<SealedSegmentRow>>;
    /// Sealed segment `index`, kept or pruned.
    fn segment(&self, index: u64) -> StoreFuture<'_, Option<SegmentRow>>;
    /// First kept, last sealed and last pruned segment.
    fn segment_bounds(&self) -> StoreFuture<'_, SegmentBounds>;
    /// The first segment from `first_kept` on holding a receipt that started at
    /// or after `ms`.
    fn first_segment_started_since(&self, ms: u64, first_kept: u64)
    -> StoreFuture<'_, Option<u64>>;
    /// A pruned segment's envelope hashes in log order, as 64-character hex
    /// strings one after another (continuations are proven from them).
    fn pruned_hashes(&self, index: u64) -> StoreFuture<'_, Option<String>>;
    /// The last segment sealed before `ms`.
    fn last_segment_sealed_before(&self, ms: u64) -> StoreFuture<'_, Option<u64>>;
    /// The newest sealed segment at or before `index` with a stored log state.
    fn latest_state_upto(&self, index: u64) -> StoreFuture<'_, Option<(u64, String)>>;
    /// Envelope hashes of segments `first..=last`, in log order.
    fn leaf_hashes(&self, first: u64, last: u64) -> StoreFuture<'_, Vec<String>>;
    /// Stores segment `index`'s log state.
    fn set_log_state<'a>(&'a self, index: u64, json: &'a str) -> StoreFuture<'a, ()>;
    /// Deletes sealed segment `index`'s envelopes (keeping each stream's newest
    /// up to it when the stream goes on) and marks it pruned with its envelope
    /// hashes, in one transaction under the log lock.
    fn prune_segment(&self, index: u64, now_ms: u64) -> StoreFuture<'_, ()>;
    /// Streams whose first envelope in segments `first..=last` is not their
    /// first, with that envelope's seq.
    fn continued_streams(&self, first: u64, last: u64) -> StoreFuture<'_, Vec<(String, u64)>>;
    /// A stream's envelope at `seq`, with its place.
    fn envelope_at<'a>(
        &'a self,
        stream_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<PlacedEnvelope>>;
    /// Records that `sink` holds the checkpoint of log size `size`.
    fn record_sink_delivery<'a>(
        &'a self,
        sink: &'a str,
        size: u64,
        at_ms: u64,
    ) -> StoreFuture<'a, ()>;
    /// The largest checkpoint size each sink holds.
    fn sink_progress(&self) -> StoreFuture<'_, Vec<(String, u64)>>;
    /// Replaces `reporter`'s key health report with `keys`, stamped `now_ms`.
    fn put_key_report<'a>(
        &'a self,
        reporter: &'a str,
        keys: &'a [ReportedKey],
        now_ms: u64,
    ) -> StoreFuture<'a, ()>;
    /// Deletes the key health reports older than `before_ms`.
    fn purge_key_reports(&self, before_ms: u64) -> StoreFuture<'_, ()>;
    /// Sums the key health reports since `since_ms` per provider and key, in
    /// order, at most `limit` cells.
    fn key_health(&self, since_ms: u64, limit: usize) -> StoreFuture<'_, Vec<KeyHealthCell>>;
    /// The envelopes of a segment as JSON, in log order.
    fn segment_envelopes(&self, index: u64) -> StoreFuture<'_, Vec<String>>;
    /// The highest segment holding a receipt that started before `until_ms`.
    fn last_segment_before(&self, until_ms: u64) -> StoreFuture<'_, Option<u64>>;
    /// Certificates of every key that signed an envelope in segments `0..=upto`.
    fn certificates_between(&self, first: u64, last: u64) -> StoreFuture<'_, Vec<String>>;
    /// The log row.
    fn meta(&self) -> StoreFuture<'_, Option<LogMetaRow>>;
    /// Whether the database answers.
    fn ping(&self) -> StoreFuture<'_, ()>;
}

/// Converts an amount for a signed 64-bit column.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads a signed 64-bit column as an amount.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
