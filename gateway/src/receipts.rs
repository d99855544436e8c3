//! Receipts off the hot path: the proxy hands a [`ReceiptDraft`] to a channel;
//! the spool writer task builds the body, signs it with the gateway key,
//! chains it, and appends it to the local append-only spool.
//!
//! Forward decisions are the one record the hot path waits for: before a
//! request leaves for a provider, [`ReceiptSink::decide`] signs and chains a
//! [`DecisionDraft`] on the request's own thread (the spool writer is shared
//! behind a mutex the writer task takes per record) and hands its line to the
//! kernel (a `write`, no fsync: the page cache survives the gateway being
//! killed), so a prompt that reached a provider always leaves a signed trace,
//! with no thread hand-off on the way.
//!
//! Spool layout, one file per gateway start (`<stream_id>.jsonl`): the first
//! line holds the signed key certificate, every later line one envelope, and
//! the last one the signed close record written on shutdown.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;
use tollgate_evidence::chain::CloseReason;
use tollgate_evidence::decision::DecisionBody;
use tollgate_evidence::{
    Api, AppliedPricing, Code, Decision, DnsSubdomain, Envelope, GuardCheck, GuardChecks,
    GuardCodes, GuardOutcome, HostName, HttpMethod, HttpStatus, Identifier, KeyRoute, Lane,
    Latency, ModelName, QuotaCharge, ReceiptBody, ReceiptId, RequestVerdict, Route, SafeU64,
    Sha256Hex, SignedKeyCertificate, SignedRecord, SigningKey, StreamChainWriter, Timestamp,
    Upstream, Usage, Workload,
};

use crate::api::{ApiStyle, Endpoint};
use crate::signer::StreamSigner;
use tollgate_wire::pricing::BilledTokens;

/// Token counts of one response. Cache reads and writes are parts of
/// `input`, reasoning of `output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageDraft {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub reasoning: u64,
}

/// Which prices of which table made a cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingDraft {
    pub table_sha256: Sha256Hex,
    /// The tier the provider reported, as it reported it.
    pub service_tier: Option<String>,
    pub long_context: bool,
}

impl UsageDraft {
    /// The receipt's usage: reads and writes clamped into the input as they
    /// are priced ([`BilledTokens::clamped`]), reasoning into the output,
    /// and zero breakdowns left out.
    fn to_usage(self) -> Result<Usage, DraftError> {
        let safe = |n: u64| safe("usage", n);
        let nonzero = |n: u64| -> Result<Option<SafeU64>, DraftError> {
            if n == 0 { Ok(None) } else { safe(n).map(Some) }
        };
        let billed = BilledTokens {
            input: self.input,
            output: self.output,
            cache_read: self.cached,
            cache_write_5m: self.cache_write_5m,
            cache_write_1h: self.cache_write_1h,
        }
        .clamped();
        let (cached, write_5m, write_1h) = (
            billed.cache_read,
            billed.cache_write_5m,
            billed.cache_write_1h,
        );
        Ok(Usage {
            cache_write_1h_tokens: nonzero(write_1h)?,
            cache_write_5m_tokens: nonzero(write_5m)?,
            cached_tokens: safe(cached)?,
            input_tokens: safe(self.input)?,
            output_tokens: safe(self.output)?,
            reasoning_tokens: nonzero(self.reasoning.min(self.output))?,
        })
    }
}

/// What the gateway knows about one finished request. Plain data; validated
/// into a [`ReceiptBody`] by the spool writer.
#[derive(Debug, Clone)]
pub struct ReceiptDraft {
    pub id: String,
    pub request_id: String,
    pub started_at_ms: u64,
    pub completed_at_ms: u64,
    pub total_ms: u64,
    pub first_byte_ms: Option<u64>,
    pub endpoint: Endpoint,
    pub provider: Option<String>,
    pub model_requested: Option<String>,
    pub model_served: Option<String>,
    pub decision: Decision,
    pub reason: &'static str,
    pub guards: Vec<&'static str>,
    /// Every guard that ran, in order (see [`CheckDraft`]).
    pub checks: Vec<CheckDraft>,
    /// HMAC-SHA256 of the end-user id under the cluster's caller key.
    pub caller_hash: Option<[u8; 32]>,
    /// The client's `x-request-id`, validated when the request came in.
    pub correlation_id: Option<Identifier>,
    /// The forward decision this attempt went upstream under.
    pub decision_id: Option<String>,
    pub status: u16,
    pub request_sha256: [u8; 32],
    pub response_sha256: [u8; 32],
    pub response_length: u64,
    pub usage: Option<UsageDraft>,
    pub cost_micro_usd: u64,
    /// Which prices made `cost_micro_usd`.
    pub pricing: Option<PricingDraft>,
    pub upstream: Option<UpstreamFacts>,
    pub quota: Option<(u64, u64, u64)>,
    pub lane: Lane,
    pub policy_hash: [u8; 32],
}

/// What the gateway is about to send where: the forward decision, before it
/// is signed.
#[derive(Debug, Clone)]
pub struct DecisionDraft {
    pub id: String,
    pub request_id: String,
    pub attempt: u32,
    pub started_at_ms: u64,
    pub decided_at_ms: u64,
    pub provider: String,
    pub host: String,
    pub model: String,
    pub request_sha256: [u8; 32],
    pub policy_hash: [u8; 32],
}

impl DecisionDraft {
    /// The decision body for this draft, made by `workload`.
    pub fn into_body(self, workload: &Workload) -> Result<DecisionBody, DraftError> {
        Ok(DecisionBody {
            attempt: self.attempt,
            decided_at: field(
                "decided_at",
                Timestamp::from_unix_millis(self.decided_at_ms.max(self.started_at_ms)),
            )?,
            host: field("host", HostName::new(self.host))?,
            id: field("id", ReceiptId::new(self.id))?,
            model: ModelName::new(self.model).ok(),
            policy_hash: Sha256Hex::from_bytes(self.policy_hash),
            provider: field("provider", DnsSubdomain::new(self.provider))?,
            request_id: field("request_id", Identifier::new(self.request_id))?,
            request_sha256: Sha256Hex::from_bytes(self.request_sha256),
            schema: Default::default(),
            schema_version: Default::default(),
            started_at: field(
                "started_at",
                Timestamp::from_unix_millis(self.started_at_ms),
            )?,
            workload: workload.clone(),
        })
    }
}

/// One guard that ran on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDraft {
    pub guard: &'static str,
    pub outcome: GuardOutcome,
    /// Which rule or limit decided; content-free (a code, never request text).
    pub detail: Option<String>,
}

/// The upstream side of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFacts {
    pub host: String,
    pub tls_cert_sha256: Option<[u8; 32]>,
    pub provider_request_id: Option<String>,
    pub key_index: u32,
    pub key_count: u32,
    /// What the key routing formula hashed besides the body: the model name
    /// and the node.
    pub key_route: Option<(String, String)>,
}

/// Why a draft could not become a receipt (a gateway bug, reported loudly).
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    #[error("receipt field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error(transparent)]
    Receipt(#[from] tollgate_evidence::ReceiptError),
}

fn field<T, E: std::fmt::Display>(name: &'static str, r: Result<T, E>) -> Result<T, DraftError> {
    r.map_err(|e| DraftError::Field {
        field: name,
        reason: e.to_string(),
    })
}

fn safe(name: &'static str, v: u64) -> Result<SafeU64, DraftError> {
    field(name, SafeU64::new(v))
}

fn route_of(endpoint: Endpoint) -> Route {
    match endpoint {
        Endpoint::ChatCompletions => Route::ChatCompletions,
        Endpoint::Completions => Route::Completions,
        Endpoint::Embeddings => Route::Embeddings,
        Endpoint::Responses => Route::Responses,
        Endpoint::Models => Route::Models,
        Endpoint::Messages => Route::Messages,
        Endpoint::CountTokens => Route::MessagesCountTokens,
        Endpoint::GenerateContent => Route::GenerateContent,
        Endpoint::StreamGenerateContent => Route::StreamGenerateContent,
        Endpoint::GeminiCountTokens => Route::GeminiCountTokens,
        Endpoint::EmbedContent => Route::EmbedContent,
        Endpoint::BatchEmbedContents => Route::BatchEmbedContents,
        Endpoint::Converse => Route::Converse,
        Endpoint::ConverseStream => Route::ConverseStream,
        Endpoint::InvokeModel => Route::InvokeModel,
        Endpoint::InvokeModelStream => Route::InvokeModelStream,
        Endpoint::BedrockCountTokens => Route::BedrockCountTokens,
    }
}

/// A model name as a receipt can hold it; names outside the identifier
/// alphabet are recorded as absent rather than rejected, since the client
/// chose them.
fn model(name: Option<&String>) -> Option<ModelName> {
    name.and_then(|n| ModelName::new(n.clone()).ok())
}

impl ReceiptDraft {
    /// The receipt body for this draft, made by `workload`.
    pub fn into_body(self, workload: &Workload) -> Result<ReceiptBody, DraftError> {
        let guards = self
            .guards
            .iter()
            .map(|g| field("guards", Code::new(*g)))
            .collect::<Result<Vec<_>, _>>()?;
        let checks = self
            .checks
            .into_iter()
            .map(|c| {
                Ok(GuardCheck {
                    guard: field("verdict.checks", Code::new(c.guard))?,
                    outcome: c.outcome,
                    // A detail the code alphabet cannot hold (a limit named
                    // outside it) is left out, never the check.
                    detail: c.detail.and_then(|d| Code::new(d).ok()),
                })
            })
            .collect::<Result<Vec<_>, DraftError>>()?;
        let upstream = match self.upstream {
            None => None,
            Some(u) => Some(Upstream {
                host: field("upstream.host", HostName::new(u.host))?,
                tls_cert_sha256: u.tls_cert_sha256.map(Sha256Hex::from_bytes),
                provider_request_id: u
                    .provider_request_id
                    .and_then(|id| Identifier::new(id).ok()),
                key_index: u.key_index,
                key_count: u.key_count,
                // A model name the receipt format cannot hold leaves the route
                // out (the receipt stays valid; the choice is then not
                // recomputable), never the receipt.
                key_route: u.key_route.and_then(|(model, node)| {
                    Some(KeyRoute {
                        model: ModelName::new(model).ok()?,
                        node: DnsSubdomain::new(node).ok()?,
                    })
                }),
            }),
        };
        let body = ReceiptBody {
            schema: Default::default(),
            schema_version: Default::default(),
            id: field("id", ReceiptId::new(self.id))?,
            request_id: field("request_id", Identifier::new(self.request_id))?,
            started_at: field(
                "started_at",
                Timestamp::from_unix_millis(self.started_at_ms),
            )?,
            completed_at: field(
                "completed_at",
                Timestamp::from_unix_millis(self.completed_at_ms.max(self.started_at_ms)),
            )?,
            latency: Latency {
                total_ms: safe("latency.total_ms", self.total_ms)?,
                first_byte_ms: self
                    .first_byte_ms
                    .map(|ms| safe("latency.first_byte_ms", ms.min(self.total_ms)))
                    .transpose()?,
            },
            workload: workload.clone(),
            caller_hash: self.caller_hash.map(Sha256Hex::from_bytes),
            correlation_id: self.correlation_id,
            decision_id: self
                .decision_id
                .map(|id| field("decision_id", ReceiptId::new(id)))
                .transpose()?,
            api: match self.endpoint.style() {
                ApiStyle::OpenAi => Api::Openai,
                ApiStyle::Anthropic => Api::Anthropic,
                ApiStyle::Gemini => Api::Gemini,
                ApiStyle::Bedrock => Api::Bedrock,
            },
            provider: self
                .provider
                .map(|p| field("provider", DnsSubdomain::new(p)))
                .transpose()?,
            route: route_of(self.endpoint),
            method: if self.endpoint == Endpoint::Models {
                HttpMethod::Get
            } else {
                HttpMethod::Post
            },
            model_requested: model(self.model_requested.as_ref()),
            model_served: model(self.model_served.as_ref()),
            verdict: RequestVerdict {
                checks: Some(field("verdict.checks", GuardChecks::new(checks))?),
                decision: self.decision,
                reason: field("verdict.reason", Code::new(self.reason))?,
                guards: field("verdict.guards", GuardCodes::new(guards))?,
            },
            response_status: field("response_status", HttpStatus::new(self.status))?,
            request_sha256: Sha256Hex::from_bytes(self.request_sha256),
            response_sha256: Sha256Hex::from_bytes(self.response_sha256),
            response_length: safe("response_length", self.response_length)?,
            usage: self.usage.map(UsageDraft::to_usage).transpose()?,
            // A tier name the receipt format cannot hold is left out, never
            // the receipt.
            pricing: self.pricing.map(|p| AppliedPricing {
                long_context: p.long_context,
                service_tier: p.service_tier.and_then(|t| Code::new(t).ok()),
                table_sha256: p.table_sha256,
            }),
            cost_micro_usd: safe("cost_micro_usd", self.cost_micro_usd)?,
            upstream,
            policy_hash: Sha256Hex::from_bytes(self.policy_hash),
            quota: self
                .quota
                .map(
                    |(tokens, requests, cost)| -> Result<QuotaCharge, DraftError> {
                        Ok(QuotaCharge {
                            tokens: safe("quota", tokens)?,
                            requests: safe("quota", requests)?,
                            cost_micro_usd: safe("quota", cost)?,
                        })
                    },
                )
                .transpose()?,
            lane: self.lane,
        };
        body.validate()
            .map_err(tollgate_evidence::ReceiptError::from)?;
        Ok(body)
    }
}

/// Shared view of the spool's fill level, read on the hot path.
#[derive(Debug)]
pub struct SpoolStatus {
    used_bytes: AtomicU64,
    max_bytes: u64,
    /// Bytes kept free for receipts of requests already admitted.
    headroom_bytes: u64,
    failed: AtomicBool,
    /// The spool's filesystem refused a write (full): what could not be
    /// written is kept in memory and retried; requests are refused meanwhile.
    unwritable: AtomicBool,
    /// Requests are admitted until this time (unix ms): shortly before the
    /// current key certificate's `not_after`, so that a request admitted under
    /// it can still finish and be receipted inside its window. A renewal
    /// moves it on; a failing one lets it pass and requests are refused.
    certificate_not_after_ms: AtomicU64,
    /// Receipts set aside because no open stream could hold them.
    set_aside: AtomicU64,
    /// Receipts dropped because the filesystem refused writes for longer
    /// than [`MAX_UNWRITTEN_BYTES`] of them could wait (`failMode: open`).
    dropped: AtomicU64,
    /// Commands (mostly receipts) handed to the writer and not yet taken up
    /// by it: past [`MAX_QUEUED_RECORDS`] no new request is admitted.
    queued: AtomicU64,
}

/// The writer's queue bound: with this many records waiting for it (a disk
/// that stalls, a writer starved of CPU) new requests are refused, as with a
/// full spool, so memory stays bounded (about 2 KiB a record). Requests
/// already admitted still queue their receipts: at most
/// `--max-requests-in-flight` more arrive, and none is dropped.
pub const MAX_QUEUED_RECORDS: u64 = 4096;

/// A forward decision whose receipt never came is forgotten this long after
/// its stream closed.
const FORGET_DECISIONS_AFTER_MS: u64 = 3_600_000;

/// Under `failMode: open` requests go on while the writer is behind; past
/// this many waiting records their receipts are dropped and counted (as with
/// [`MAX_UNWRITTEN_BYTES`]) rather than growing memory without end. Receipts
/// of requests admitted under `failMode: closed` are never dropped: admission
/// stops at [`MAX_QUEUED_RECORDS`], so only requests already in flight add
/// to the queue.
pub const MAX_QUEUED_RECORDS_FAIL_OPEN: u64 = 4 * MAX_QUEUED_RECORDS;

impl SpoolStatus {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            used_bytes: AtomicU64::new(0),
            max_bytes,
            headroom_bytes: (max_bytes / 16).clamp(64 * 1024, 4 * 1024 * 1024),
            failed: AtomicBool::new(false),
            unwritable: AtomicBool::new(false),
            certificate_not_after_ms: AtomicU64::new(0),
            set_aside: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
    /// Whether new requests may be admitted: the spool has room for their
    /// receipts, the writer has not failed and keeps up, and the key
    /// certificate is valid.
    pub fn accepting(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
            && !self.unwritable.load(Ordering::Relaxed)
            && self.queued.load(Ordering::Relaxed) < MAX_QUEUED_RECORDS
            && self.used_bytes.load(Ordering::Relaxed) + self.headroom_bytes <= self.max_bytes
            && unix_millis() < self.certificate_not_after_ms.load(Ordering::Relaxed)
    }

    /// Whether requests are refused because the key certificate is (about
    /// to be) expired: its renewal failed.
    pub fn certificate_expired(&self) -> bool {
        unix_millis() >= self.certificate_not_after_ms.load(Ordering::Relaxed)
    }

    /// Receipts set aside (see [`SpoolWriter::append`]).
    pub fn set_aside(&self) -> u64 {
        self.set_aside.load(Ordering::Relaxed)
    }
    /// Receipts dropped while the filesystem refused writes (see
    /// [`MAX_UNWRITTEN_BYTES`]).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Records waiting for the writer (see [`MAX_QUEUED_RECORDS`]).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
    fn taken_up(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
    pub fn writer_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
    /// Whether the spool's filesystem refuses writes (see [`SpoolStatus`]).
    pub fn unwritable(&self) -> bool {
        self.unwritable.load(Ordering::Relaxed)
    }
}

/// Why the spool could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A write the filesystem refused (it is full): the file was cut back to
    /// its last whole line and the lines are kept to be written again.
    #[error("spool {path} cannot be written ({source}); kept in memory and retried")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Chain(#[from] tollgate_evidence::ChainError),
    #[error(transparent)]
    Draft(#[from] DraftError),
    #[error("cannot encode a spool line: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Canonical(#[from] tollgate_evidence::CanonicalError),
    #[error("an earlier spool write failed part-way; nothing more is appended")]
    Broken,
    #[error(transparent)]
    Signer(#[from] crate::signer::SignerError),
}

impl SpoolError {
    /// Whether the stream file may now hold a partial line, or a chain that
    /// moved past what was written (a write refused after the record was
    /// chained). Errors raised before chaining leave it intact.
    fn breaks_the_stream(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Encode(_) | Self::Broken)
    }

    /// Whether writing may succeed later, with nothing lost meanwhile.
    pub fn recoverable(&self) -> bool {
        matches!(self, Self::Unwritable { .. })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum SpoolLine<'a> {
    Certificate(&'a SignedKeyCertificate),
    Envelope(&'a Envelope),
}

/// A receipt ready to sign, and the stream it goes to.
struct ReceiptPlan {
    stream: Identifier,
    body: ReceiptBody,
    key: Arc<StreamSigner>,
}

/// A forward decision ready to sign, and the stream it goes to.
struct DecisionPlan {
    stream: Identifier,
    /// The decision's id, which its receipt names.
    id: String,
    body: DecisionBody,
    key: Arc<StreamSigner>,
}

/// A receipt stream's key: its id, the ephemeral signing key, and the
/// certificate for it.
#[derive(Clone)]
pub struct StreamKey {
    pub stream_id: Identifier,
    pub key: SigningKey,
    pub certificate: SignedKeyCertificate,
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("StreamKey")
            .field("stream_id", &self.stream_id)
            .field("not_after", &self.certificate.certificate.not_after)
            .finish_non_exhaustive()
    }
}

/// Spool room a forward decision needs before it is written: its own line
/// and its receipt's, generously.
const DECISION_ROOM_BYTES: u64 = 8 * 1024;

/// Most bytes of lines a stream keeps in memory while the filesystem refuses
/// writes. Under `failMode: closed` no new request is admitted meanwhile, so
/// only receipts of requests already running wait (well under this); under
/// `failMode: open` requests go on, and receipts past this are dropped
/// (counted and logged, never chained) rather than growing without bound.
pub const MAX_UNWRITTEN_BYTES: usize = 16 * 1024 * 1024;

/// Where receipts no open stream can hold are set aside, in the spool.
pub const UNPLACED_DIR: &str = "unplaced";

/// One stream file being written.
#[derive(Debug)]
struct StreamFile {
    path: PathBuf,
    /// Opened for appending: every write lands at the end.
    file: File,
    /// Whole lines appended since they were last handed to the kernel.
    unwritten: Vec<u8>,
    /// The file's length up to its last whole line.
    written_len: u64,
    /// The same file, for the syncer thread to fsync without holding the writer.
    sync_handle: Arc<File>,
    chain: StreamChainWriter,
    /// Shared, so a record can be signed outside the writer's lock.
    key: Arc<StreamSigner>,
    not_before_ms: u64,
    not_after_ms: u64,
}

/// Appends signed, chained receipts to stream files. Normally one stream is
/// open; after a key renewal the previous one stays open until its
/// certificate expires (or it is closed), so that requests that started under
/// the old certificate are signed by the old key: a receipt's times must lie
/// within its certificate's window.
#[derive(Debug)]
pub struct SpoolWriter {
    dir: PathBuf,
    current: StreamFile,
    previous: Option<StreamFile>,
    workload: Workload,
    status: Arc<SpoolStatus>,
    /// Forward decisions awaiting their receipt, and the stream each went
    /// to: the receipt goes to the same stream (or is set aside), so a
    /// decision and its receipt never straddle two streams.
    decided: HashMap<String, Identifier>,
    /// Streams closed by renewals, and when (unix ms), until their
    /// decisions are forgotten.
    closed_streams: Vec<(Identifier, u64)>,
    /// Streams closed (their close record appended) whose lines are not all
    /// written yet; they are written and fsynced with the next flush.
    closing: Vec<StreamFile>,
    /// Receipts to set aside (see [`Self::append`]), written by the next flush.
    unplaced: Vec<(PathBuf, Vec<u8>)>,
    /// Something the chain cannot recover from happened (a spool file could
    /// not be cut back to its last whole line, a record could not be
    /// encoded after it was chained): nothing more is appended.
    broken: bool,
}

/// Whether the filesystem refused a write for want of space (full, over a
/// quota): that passes when space returns. Any other error (EIO, a
/// read-only filesystem, a file past the filesystem's size limit) is the
/// writer's failure.
fn out_of_space(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::StorageFull | K::QuotaExceeded)
}

/// `Unwritable` when the filesystem is out of space, `Io` otherwise.
fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| {
        if out_of_space(&source) {
            SpoolError::Unwritable {
                path: path.to_path_buf(),
                source,
            }
        } else {
            SpoolError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SpoolWriter {
    /// Starts a new stream file in `dir`, beginning with the key certificate.
    /// Existing files (earlier streams not yet shipped) count against the
    /// spool size.
    pub fn create(
        dir: &Path,
        first: StreamKey,
        workload: Workload,
        status: Arc<SpoolStatus>,
    ) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let existing: u64 = std::fs::read_dir(dir)
            .map_err(io_error(dir))?
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        status.used_bytes.store(existing, Ordering::Relaxed);
        let current = open_stream(dir, &first, &status)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            current,
            previous: None,
            workload,
            status,
            decided: HashMap::new(),
            closed_streams: Vec::new(),
            closing: Vec::new(),
            unplaced: Vec::new(),
            broken: false,
        })
    }

    /// The current stream's file.
    pub fn path(&self) -> &Path {
        &self.current.path
    }

    /// Signs, chains and appends one receipt to the open stream whose
    /// certificate covers both its start and its end (the current one, or the
    /// previous one for a request that started before a renewal). A receipt
    /// that no open stream covers (a request that outlived the overlap, or
    /// one that ended after an expired certificate) would be refused by the
    /// recorder and stall its stream: it is set aside instead, unsigned, as
    /// `unplaced/<receipt id>.json` in the spool, and counted. Buffered: call
    /// [`Self::sync`].
    pub fn append(&mut self, draft: ReceiptDraft) -> Result<Option<Envelope>, SpoolError> {
        let Some(plan) = self.plan_receipt(draft)? else {
            return Ok(None);
        };
        let signed = SignedRecord::receipt(plan.body, &*plan.key)?;
        self.append_signed_receipt(&plan.stream, signed)
    }

    /// The first half of [`Self::append`]: picks the receipt's stream and
    /// hands back what to sign (`None`: it was set aside or dropped), so that
    /// the signing, the costly part, can run without the writer's lock,
    /// which forward decisions wait for.
    fn plan_receipt(&mut self, draft: ReceiptDraft) -> Result<Option<ReceiptPlan>, SpoolError> {
        if self.broken {
            return Err(SpoolError::Broken);
        }
        let planned = self.plan_receipt_unchecked(draft);
        self.broken |= planned.as_ref().is_err_and(SpoolError::breaks_the_stream);
        planned
    }

    /// The second half of [`Self::append`]: chains and buffers a receipt
    /// signed for `stream`. Only the writer task appends receipts and only
    /// it closes streams, so the stream its plan picked is still open.
    fn append_signed_receipt(
        &mut self,
        stream: &Identifier,
        signed: SignedRecord,
    ) -> Result<Option<Envelope>, SpoolError> {
        if self.broken {
            return Err(SpoolError::Broken);
        }
        let Some(file) = stream_with_id(&mut self.current, &mut self.previous, stream) else {
            return Err(tollgate_evidence::ChainError::Closed.into());
        };
        // A chain error leaves the stream as it was: nothing to mark broken.
        let encoded = file.chain.append_signed(signed)?;
        write_envelope_line(file, &self.status, &encoded.json);
        Ok(Some(encoded.envelope))
    }

    fn plan_receipt_unchecked(
        &mut self,
        draft: ReceiptDraft,
    ) -> Result<Option<ReceiptPlan>, SpoolError> {
        let window = (draft.started_at_ms, draft.completed_at_ms);
        let mut draft = draft;
        // The stream its forward decision went to; a decision that was never
        // written (refused while its client went away) is not named.
        let pinned = match draft.decision_id.as_ref() {
            Some(id) => {
                let stream = self.decided.remove(id);
                if stream.is_none() {
                    draft.decision_id = None;
                }
                stream
            }
            None => None,
        };
        let allowed = |stream: &StreamFile| {
            pinned
                .as_ref()
                .is_none_or(|id| stream.chain.stream_id() == id)
                && stream.covers(window)
        };
        let in_previous = self.previous.as_ref().is_some_and(allowed);
        let in_current = allowed(&self.current);
        let body = draft.into_body(&self.workload)?;
        let stream = match (&mut self.previous, in_current, in_previous) {
            (_, true, _) => &mut self.current,
            (Some(previous), false, true) => previous,
            _ => {
                self.set_aside(&body)?;
                return Ok(None);
            }
        };
        if stream.unwritten.len() > MAX_UNWRITTEN_BYTES {
            self.status.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                receipt_id = %body.id.as_str(),
                "the spool's filesystem has refused writes for too long; receipt dropped (failMode: open)"
            );
            return Ok(None);
        }
        Ok(Some(ReceiptPlan {
            stream: stream.chain.stream_id().clone(),
            body,
            key: stream.key.clone(),
        }))
    }

    /// Signs, chains and writes one forward decision to the open stream whose
    /// certificate covers the request so far (as [`Self::append`] picks), and
    /// hands the line to the kernel: no fsync, so it costs a `write` and
    /// survives the gateway being killed. `false` when this decision cannot
    /// be written (no open stream covers it, the spool is full, a field the
    /// format cannot hold): that request must not go upstream, and the writer
    /// carries on. An I/O error is the writer's failure.
    pub fn append_decision(&mut self, draft: DecisionDraft) -> Result<bool, SpoolError> {
        let Some(plan) = self.plan_decision(draft)? else {
            return Ok(false);
        };
        let signed = SignedRecord::decision(plan.body, &*plan.key)?;
        self.append_signed_decision(&plan.stream, plan.id, signed)
    }

    /// The first half of [`Self::append_decision`]: picks the decision's
    /// stream and hands back what to sign (`None`: this decision cannot be
    /// written), so that concurrent requests sign without the writer's lock.
    /// Changes nothing.
    fn plan_decision(&self, draft: DecisionDraft) -> Result<Option<DecisionPlan>, SpoolError> {
        if self.broken {
            return Err(SpoolError::Broken);
        }
        let window = (draft.started_at_ms, draft.decided_at_ms);
        let in_previous = self.previous.as_ref().is_some_and(|p| p.covers(window));
        let in_current = self.current.covers(window);
        let id = draft.id.clone();
        let body = match draft.into_body(&self.workload) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "a forward decision cannot be written; refusing its request");
                return Ok(None);
            }
        };
        let stream = match (&self.previous, in_current, in_previous) {
            (_, true, _) => &self.current,
            (Some(previous), false, true) => previous,
            _ => return Ok(None),
        };
        if !self.has_decision_room() {
            return Ok(None);
        }
        Ok(Some(DecisionPlan {
            stream: stream.chain.stream_id().clone(),
            id,
            body,
            key: stream.key.clone(),
        }))
    }

    /// Room for a decision and its receipt, checked before the chain moves
    /// on: a decision the spool cannot take refuses its request instead of
    /// breaking the stream.
    fn has_decision_room(&self) -> bool {
        let used = self.status.used_bytes.load(Ordering::Relaxed);
        used + DECISION_ROOM_BYTES <= self.status.max_bytes
    }

    /// The second half of [`Self::append_decision`]: chains a decision
    /// signed for `stream` and hands its line to the kernel. `false` when
    /// that stream was closed since the plan (a renewal's close, in the few
    /// microseconds of signing) or the spool has filled.
    fn append_signed_decision(
        &mut self,
        stream: &Identifier,
        id: String,
        signed: SignedRecord,
    ) -> Result<bool, SpoolError> {
        if self.broken {
            return Err(SpoolError::Broken);
        }
        let appended = self.append_signed_decision_unchecked(stream, id, signed);
        self.broken |= appended.as_ref().is_err_and(SpoolError::breaks_the_stream);
        appended
    }

    fn append_signed_decision_unchecked(
        &mut self,
        stream_id: &Identifier,
        id: String,
        signed: SignedRecord,
    ) -> Result<bool, SpoolError> {
        if !self.has_decision_room() {
            return Ok(false);
        }
        let status = &self.status;
        let Some(stream) = stream_with_id(&mut self.current, &mut self.previous, stream_id) else {
            return Ok(false);
        };
        if stream.chain.is_closed() {
            return Ok(false);
        }
        // A decision the filesystem will not take is taken back whole (line
        // and chain): its request is refused, and no decision is left that
        // the log would show as forwarded.
        let chain_before = stream.chain.clone();
        let unwritten_before = stream.unwritten.len();
        let encoded = stream.chain.append_signed(signed)?;
        write_envelope_line(stream, status, &encoded.json);
        if let Err(e) = stream.hand_over() {
            if e.recoverable() {
                let line = (stream.unwritten.len() - unwritten_before) as u64;
                stream.unwritten.truncate(unwritten_before);
                stream.chain = chain_before;
                status.used_bytes.fetch_sub(line, Ordering::Relaxed);
            }
            return Err(e);
        }
        self.decided.insert(id, stream_id.clone());
        Ok(true)
    }

    /// Queues `body` to be set aside (written by the next flush), within
    /// the same bound as a stream's unwritten lines.
    fn set_aside(&mut self, body: &ReceiptBody) -> Result<(), SpoolError> {
        let waiting: usize = self.unplaced.iter().map(|(_, bytes)| bytes.len()).sum();
        if waiting > MAX_UNWRITTEN_BYTES {
            self.status.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                receipt_id = %body.id.as_str(),
                "the spool's filesystem has refused writes for too long; receipt dropped (failMode: open)"
            );
            return Ok(());
        }
        let path = self
            .dir
            .join(UNPLACED_DIR)
            .join(format!("{}.json", body.id.as_str()));
        self.unplaced.push((path, serde_json::to_vec(body)?));
        Ok(())
    }

    /// Writes the receipts waiting to be set aside; a filesystem out of
    /// space keeps them (and leaves no partial file).
    fn write_unplaced(&mut self) -> Result<(), SpoolError> {
        while let Some((path, bytes)) = self.unplaced.first() {
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(path, bytes));
            if let Err(e) = written {
                let _ = std::fs::remove_file(path);
                return Err(write_error(path)(e));
            }
            self.status.set_aside.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                path = %path.display(),
                "a receipt falls outside every open key certificate's window; set aside unsigned"
            );
            self.unplaced.remove(0);
        }
        Ok(())
    }

    /// Every stream file, to fsync what the kernel took even when another
    /// write was refused.
    pub fn sync_handles(&self) -> Vec<(PathBuf, Arc<File>)> {
        self.closing
            .iter()
            .chain(self.previous.iter())
            .chain([&self.current])
            .map(|s| (s.path.clone(), s.sync_handle.clone()))
            .collect()
    }

    /// Hands what was appended to the kernel (no fsync), and returns the
    /// files to fsync for it. When the filesystem refuses (full), every file
    /// is left ending in a whole line, nothing appended is lost, and the next
    /// flush tries again.
    pub fn flush(&mut self) -> Result<Vec<(PathBuf, Arc<File>)>, SpoolError> {
        if self.broken {
            return Err(SpoolError::Broken);
        }
        let mut handles = Vec::with_capacity(2 + self.closing.len());
        // A failure the writer cannot recover from wins over "out of space".
        let mut error: Option<SpoolError> = None;
        let mut note = |e: SpoolError| {
            if error.as_ref().is_none_or(SpoolError::recoverable) {
                error = Some(e);
            }
        };
        let streams = self
            .closing
            .iter_mut()
            .chain(self.previous.iter_mut())
            .chain([&mut self.current]);
        for stream in streams {
            match stream.hand_over() {
                Ok(()) => handles.push((stream.path.clone(), stream.sync_handle.clone())),
                Err(e) => note(e),
            }
        }
        if let Err(e) = self.write_unplaced() {
            note(e);
        }
        match error {
            Some(e) => {
                self.broken |= e.breaks_the_stream();
                Err(e)
            }
            None => {
                // Closed streams are written whole: fsynced with the rest,
                // then forgotten.
                self.closing.clear();
                Ok(handles)
            }
        }
    }

    /// Flushes and fsyncs what was appended.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        sync_files(self.flush()?)
    }

    /// Renewal: `next` becomes the current stream; the current one stays open
    /// as the previous until [`Self::close_previous`]. A previous stream still
    /// open is closed first.
    pub fn renew(&mut self, next: &StreamKey, now: Timestamp) -> Result<(), SpoolError> {
        let opened = open_stream(&self.dir, next, &self.status)?;
        self.install(opened, now)?;
        self.sync()
    }

    /// [`Self::renew`] with the stream already opened (and its certificate
    /// line synced) outside any lock: the previous stream is closed and
    /// written with the next flush, so whoever holds the shared writer only
    /// appends.
    fn install(&mut self, opened: StreamFile, now: Timestamp) -> Result<(), SpoolError> {
        self.close_previous_unsynced(now)?;
        self.previous = Some(std::mem::replace(&mut self.current, opened));
        Ok(())
    }

    /// Ends the previous stream, if one is open, with its signed close record
    /// (`key_expiry`).
    pub fn close_previous(&mut self, now: Timestamp) -> Result<(), SpoolError> {
        self.close_previous_unsynced(now)?;
        self.sync()
    }

    fn close_previous_unsynced(&mut self, now: Timestamp) -> Result<(), SpoolError> {
        let Some(mut previous) = self.previous.take() else {
            return Ok(());
        };
        append_close(&mut previous, &self.status, CloseReason::KeyExpiry, now)?;
        // Decisions whose receipt never came (dropped under failMode open)
        // are forgotten an hour after their stream closed: no request runs
        // that long, and a receipt that comes while the stream is just closed
        // must still find its decision (to be set aside with it).
        let now_ms = now.unix_millis();
        self.closed_streams
            .push((previous.chain.stream_id().clone(), now_ms));
        let (long_closed, recent): (Vec<_>, Vec<_>) = std::mem::take(&mut self.closed_streams)
            .into_iter()
            .partition(|(_, at)| now_ms.saturating_sub(*at) >= FORGET_DECISIONS_AFTER_MS);
        self.closed_streams = recent;
        for (stream_id, _) in long_closed {
            self.decided.retain(|_, stream| *stream != stream_id);
        }
        self.closing.push(previous);
        Ok(())
    }

    /// Ends every open stream with a signed close record and syncs. Called
    /// again after the filesystem refused the sync, it only syncs: the close
    /// records are chained once.
    pub fn close(&mut self, reason: CloseReason, now: Timestamp) -> Result<(), SpoolError> {
        if let Some(mut previous) = self.previous.take() {
            append_close(&mut previous, &self.status, reason, now)?;
            self.closing.push(previous);
        }
        if !self.current.chain.is_closed() {
            append_close(&mut self.current, &self.status, reason, now)?;
        }
        self.sync()
    }
}

impl StreamFile {
    /// Hands the lines appended since the last call to the kernel. A write
    /// the filesystem refuses (full) is cut back to the last whole line, and
    /// the lines stay here to be handed over again: the file never holds a
    /// partial line, and nothing chained is lost. `Io` only when the file
    /// cannot even be cut back.
    fn hand_over(&mut self) -> Result<(), SpoolError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        match self.file.write_all(&self.unwritten) {
            Ok(()) => {
                self.written_len += self.unwritten.len() as u64;
                self.unwritten.clear();
                Ok(())
            }
            Err(source) => {
                self.file
                    .set_len(self.written_len)
                    .map_err(io_error(&self.path))?;
                Err(write_error(&self.path)(source))
            }
        }
    }

    /// Whether this stream's certificate covers `(started, completed)`.
    fn covers(&self, (started, completed): (u64, u64)) -> bool {
        self.not_before_ms <= started && completed <= self.not_after_ms
    }
}

/// Creates `next`'s stream file and writes its certificate line, synced. A
/// filesystem that refuses (full) leaves no file behind: the renewal can be
/// tried again with the same key.
fn open_stream(
    dir: &Path,
    next: &StreamKey,
    status: &SpoolStatus,
) -> Result<StreamFile, SpoolError> {
    let path = dir.join(format!("{}.jsonl", next.stream_id));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(write_error(&path))?;
    let opened = start_stream(file, path.clone(), next, status);
    if opened.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    opened
}

fn start_stream(
    file: File,
    path: PathBuf,
    next: &StreamKey,
    status: &SpoolStatus,
) -> Result<StreamFile, SpoolError> {
    let certificate = &next.certificate.certificate;
    let sync_handle = Arc::new(file.try_clone().map_err(io_error(&path))?);
    let mut stream = StreamFile {
        file,
        unwritten: Vec::new(),
        written_len: 0,
        sync_handle,
        chain: StreamChainWriter::new(next.stream_id.clone()),
        key: Arc::new(StreamSigner::new(next.key.clone())?),
        not_before_ms: certificate.not_before.unix_millis(),
        not_after_ms: certificate.not_after.unix_millis(),
        path,
    };
    write_line(
        &mut stream,
        status,
        &SpoolLine::Certificate(&next.certificate),
    )?;
    let line = stream.unwritten.len() as u64;
    let written = stream
        .hand_over()
        .and_then(|()| stream.file.sync_data().map_err(write_error(&stream.path)));
    if let Err(e) = written {
        // The file goes (open_stream removes it): so do its bytes.
        status.used_bytes.fetch_sub(line, Ordering::Relaxed);
        return Err(e);
    }
    status.certificate_not_after_ms.store(
        admit_until(stream.not_before_ms, stream.not_after_ms),
        Ordering::Relaxed,
    );
    Ok(stream)
}

fn write_line(
    stream: &mut StreamFile,
    status: &SpoolStatus,
    line: &SpoolLine<'_>,
) -> Result<(), SpoolError> {
    // Appended in memory only; [`StreamFile::hand_over`] writes it. No size
    // check here: the spool limit stops admission (with headroom for the
    // receipts of requests already admitted), never a record of one.
    let start = stream.unwritten.len();
    serde_json::to_writer(&mut stream.unwritten, line).inspect_err(|_| {
        stream.unwritten.truncate(start);
    })?;
    stream.unwritten.push(b'\n');
    let len = (stream.unwritten.len() - start) as u64;
    status.used_bytes.fetch_add(len, Ordering::Relaxed);
    Ok(())
}

/// [`write_line`] for an envelope already encoded (its RFC 8785 JSON, as
/// the chain writer returns it): `{"envelope":JSON}`, with no second encoding.
/// The open stream with this id: the current one or the one a renewal left
/// open. Takes the two fields rather than the writer, so the caller keeps
/// the writer's other fields.
fn stream_with_id<'a>(
    current: &'a mut StreamFile,
    previous: &'a mut Option<StreamFile>,
    id: &Identifier,
) -> Option<&'a mut StreamFile> {
    if current.chain.stream_id() == id {
        return Some(current);
    }
    previous.as_mut().filter(|p| p.chain.stream_id() == id)
}

fn write_envelope_line(stream: &mut StreamFile, status: &SpoolStatus, json: &[u8]) {
    let start = stream.unwritten.len();
    stream.unwritten.reserve(json.len() + 14);
    stream.unwritten.extend_from_slice(b"{\"envelope\":");
    stream.unwritten.extend_from_slice(json);
    stream.unwritten.extend_from_slice(b"}\n");
    let len = (stream.unwritten.len() - start) as u64;
    status.used_bytes.fetch_add(len, Ordering::Relaxed);
}

/// Until when requests are admitted under a certificate valid over
/// `[not_before, not_after]`: a tenth of its lifetime (at most 5 s) before
/// its end, the time the previous stream is closed after a renewal.
pub fn admit_until(not_before_ms: u64, not_after_ms: u64) -> u64 {
    let margin = (not_after_ms.saturating_sub(not_before_ms) / 10).min(5_000);
    not_after_ms.saturating_sub(margin)
}

/// Spool files to fsync, by path.
type SyncList = Vec<(PathBuf, Arc<File>)>;

fn sync_files(files: SyncList) -> Result<(), SpoolError> {
    for (path, file) in files {
        file.sync_data().map_err(io_error(&path))?;
    }
    Ok(())
}

/// Appends the signed close record (not flushed).
fn append_close(
    stream: &mut StreamFile,
    status: &SpoolStatus,
    reason: CloseReason,
    now: Timestamp,
) -> Result<(), SpoolError> {
    // The close record must lie inside the certificate's window, even when the
    // stream is closed late (a renewal that succeeded after expiry, a slow
    // shutdown): it is dated at the window's end then.
    let end = Timestamp::from_unix_millis(stream.not_after_ms).unwrap_or(now);
    let closed_at = if now > end { end } else { now };
    let envelope = stream
        .chain
        .close(reason, closed_at, stream.key.signing_key())?;
    write_line(stream, status, &SpoolLine::Envelope(&envelope))
}

/// What the writer task is asked to do, in order.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every command is a draft; boxing it would add an allocation per request"
)]
enum SpoolCommand {
    Write(ReceiptDraft),
    Renew(Box<StreamKey>),
    ClosePrevious,
}

/// Where forward decisions are written.
#[derive(Debug, Clone)]
enum Decisions {
    /// The spool, shared with the writer task.
    Spool(Arc<std::sync::Mutex<SpoolWriter>>),
    /// Kept for a test, accepted unless `refuse`.
    #[cfg(test)]
    Kept {
        kept: Arc<std::sync::Mutex<Vec<DecisionDraft>>>,
        refuse: bool,
    },
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The hot path's handle: hands drafts to the writer task.
#[derive(Debug, Clone)]
pub struct ReceiptSink {
    tx: mpsc::UnboundedSender<SpoolCommand>,
    pub status: Arc<SpoolStatus>,
    written: Arc<AtomicU64>,
    /// Notified each time the writer hands new records to the kernel.
    records_written: Arc<tokio::sync::Notify>,
    decisions: Decisions,
}

impl ReceiptSink {
    /// Queues a draft. Fails only when the writer task is gone, which the
    /// status already reports as failed so no new request is admitted.
    pub fn submit(&self, draft: ReceiptDraft) {
        self.send(SpoolCommand::Write(draft));
    }

    /// [`ReceiptSink::submit`] for a request admitted under `failMode: open`:
    /// past [`MAX_QUEUED_RECORDS_FAIL_OPEN`] waiting records the receipt is
    /// dropped and counted instead.
    pub fn submit_fail_open(&self, draft: ReceiptDraft) {
        if self.status.queued() >= MAX_QUEUED_RECORDS_FAIL_OPEN {
            self.status.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                receipt_id = %draft.id,
                "the receipt writer is too far behind; receipt dropped (failMode: open)"
            );
            return;
        }
        self.send(SpoolCommand::Write(draft));
    }

    /// Signs, chains and writes a forward decision here, on the calling
    /// thread (tens of microseconds: a signature and a `write`). `false` when
    /// it could not be (the spool failed or is full, or no key certificate
    /// covers it): the request must not go upstream.
    pub fn decide(&self, draft: DecisionDraft) -> bool {
        match &self.decisions {
            Decisions::Spool(writer) => {
                if self.status.failed.load(Ordering::Relaxed)
                    || self.status.unwritable.load(Ordering::Relaxed)
                {
                    return false;
                }
                let Some(decided) = decide_unlocked(writer, draft) else {
                    // A panic while writing: the chain is not to be trusted.
                    self.status.failed.store(true, Ordering::Relaxed);
                    return false;
                };
                match decided {
                    Ok(written) => written,
                    Err(e) if e.recoverable() => {
                        // The writer task retries and lifts this.
                        if !self.status.unwritable.swap(true, Ordering::Relaxed) {
                            tracing::error!(error = %e, "receipt spool cannot be written; refusing new requests until it can");
                        }
                        false
                    }
                    Err(e) => {
                        self.status.failed.store(true, Ordering::Relaxed);
                        tracing::error!(error = %e, "receipt spool write failed; refusing new requests");
                        false
                    }
                }
            }
            #[cfg(test)]
            Decisions::Kept { kept, refuse } => {
                lock(kept).push(draft);
                !refuse
            }
        }
    }

    /// Switches to a new stream under `next`'s key (see [`SpoolWriter::renew`]).
    pub fn renew(&self, next: StreamKey) {
        self.send(SpoolCommand::Renew(Box::new(next)));
    }

    /// Closes the stream the last renewal left open.
    pub fn close_previous(&self) {
        self.send(SpoolCommand::ClosePrevious);
    }

    fn send(&self, command: SpoolCommand) {
        self.status.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(command).is_err() {
            self.status.taken_up();
            self.status.failed.store(true, Ordering::Relaxed);
            tracing::error!("receipt writer is gone; refusing new requests");
        }
    }

    /// Receipts written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Notified (one permit kept) each time new records reach the spool
    /// files: the shipper waits on it instead of only polling.
    pub fn records_written(&self) -> Arc<tokio::sync::Notify> {
        self.records_written.clone()
    }
}

/// A sink whose drafts the test reads from the receiver, with no spool.
/// Forward decisions are accepted (unless `refuse_decisions`) and kept in
/// `decisions`, in order.
#[cfg(test)]
pub(crate) fn test_sink(
    max_bytes: u64,
    decisions: Arc<std::sync::Mutex<Vec<DecisionDraft>>>,
    refuse_decisions: bool,
) -> (ReceiptSink, mpsc::UnboundedReceiver<ReceiptDraft>) {
    let (tx, mut commands) = mpsc::unbounded_channel();
    let (drafts_tx, drafts) = mpsc::unbounded_channel();
    let status = Arc::new(SpoolStatus::new(max_bytes));
    let taken_up = status.clone();
    tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            taken_up.taken_up();
            if let SpoolCommand::Write(draft) = command {
                let _ = drafts_tx.send(draft);
            }
        }
    });
    status
        .certificate_not_after_ms
        .store(u64::MAX, Ordering::Relaxed);
    let sink = ReceiptSink {
        tx,
        status,
        written: Arc::new(AtomicU64::new(0)),
        records_written: Arc::default(),
        decisions: Decisions::Kept {
            kept: decisions,
            refuse: refuse_decisions,
        },
    };
    (sink, drafts)
}

#[cfg(test)]
impl SpoolStatus {
    /// Marks the writer as failed, as a failed write would.
    pub(crate) fn fail_for_test(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// [`SpoolWriter::append_decision`] with the signing outside the lock, so
/// that requests deciding at once, and the writer task, do not queue behind
/// one another's signatures. `None` when a panic poisoned the lock.
fn decide_unlocked(
    writer: &std::sync::Mutex<SpoolWriter>,
    draft: DecisionDraft,
) -> Option<Result<bool, SpoolError>> {
    let plan = match writer.lock().ok()?.plan_decision(draft) {
        Ok(Some(plan)) => plan,
        Ok(None) => return Some(Ok(false)),
        Err(e) => return Some(Err(e)),
    };
    let signed = match SignedRecord::decision(plan.body, &*plan.key) {
        Ok(signed) => signed,
        Err(e) => return Some(Err(e.into())),
    };
    Some(
        writer
            .lock()
            .ok()?
            .append_signed_decision(&plan.stream, plan.id, signed),
    )
}

/// [`SpoolWriter::append`] with the signing outside the lock (see
/// [`decide_unlocked`]).
fn append_unlocked(
    writer: &std::sync::Mutex<SpoolWriter>,
    draft: ReceiptDraft,
) -> Result<u64, SpoolError> {
    let Some(plan) = lock(writer).plan_receipt(draft)? else {
        return Ok(0);
    };
    let signed = SignedRecord::receipt(plan.body, &*plan.key)?;
    let appended = lock(writer).append_signed_receipt(&plan.stream, signed)?;
    Ok(u64::from(appended.is_some()))
}

/// Starts the writer task. It drains the channel in batches, taking the
/// shared writer per record only to chain it (records are signed outside
/// it), and hands each batch to the kernel; a syncer thread fsyncs behind
/// it. When every sink is dropped it writes the close records, fsyncs and
/// returns.
pub fn spawn_spool_writer(
    writer: SpoolWriter,
) -> (ReceiptSink, tokio::task::JoinHandle<Result<(), SpoolError>>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<SpoolCommand>();
    let status = writer.status.clone();
    let written = Arc::new(AtomicU64::new(0));
    let dir = writer.dir.clone();
    let writer = Arc::new(std::sync::Mutex::new(writer));
    let records_written = Arc::new(tokio::sync::Notify::new());
    let sink = ReceiptSink {
        tx,
        status: status.clone(),
        written: written.clone(),
        records_written: records_written.clone(),
        decisions: Decisions::Spool(writer.clone()),
    };
    let syncer = Syncer::start(status.clone());
    let handle = tokio::task::spawn_blocking(move || {
        let fail = |e: SpoolError| {
            status.failed.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, "receipt spool write failed; refusing new requests");
            e
        };
        let refused = |e: &SpoolError| {
            if !status.unwritable.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %e, "receipt spool cannot be written; refusing new requests until it can");
            }
        };
        let mut state = WriterState::default();
        // The shared writer is held to append only: creating a stream file
        // and fsyncing run outside it, so a forward decision never waits for
        // a disk flush.
        let run = |state: &mut WriterState, command: SpoolCommand| -> Result<u64, SpoolError> {
            status.taken_up();
            match command {
                SpoolCommand::Write(draft) => append_unlocked(&writer, draft),
                SpoolCommand::Renew(next) => {
                    // A renewal still waiting is replaced by the newer key.
                    state.renewal = Some(*next);
                    state.install_renewal(&dir, &status, &writer)?;
                    Ok(0)
                }
                SpoolCommand::ClosePrevious => {
                    if state.renewal.is_some() {
                        // Closes what the waiting renewal will replace.
                        state.close_after_renewal = true;
                    } else {
                        lock(&writer).close_previous_unsynced(now_timestamp())?;
                    }
                    Ok(0)
                }
            }
        };
        // Receipts appended but not yet handed to the kernel.
        let mut unflushed = 0;
        let mut last_attempt = std::time::Instant::now();
        let mut last_batch = std::time::Instant::now();
        loop {
            // While the filesystem refuses writes, take what comes (receipts
            // of requests already admitted) and try again once a second.
            let first = if status.unwritable() {
                match rx.try_recv() {
                    Ok(command) => Some(command),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(UNWRITABLE_RETRY / 10);
                        None
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                let Some(command) = rx.blocking_recv() else {
                    break;
                };
                // Busy (this record came soon after the last batch): wait out
                // the interval, and what arrives meanwhile queues without
                // waking this thread. Quiet: write it now, as a sleep would
                // cost a second wake-up for one record.
                let since = last_batch.elapsed();
                if since < BATCH_INTERVAL / 4 {
                    std::thread::sleep(BATCH_INTERVAL - since);
                }
                last_batch = std::time::Instant::now();
                Some(command)
            };
            if let Some(first) = first {
                unflushed += run(&mut state, first)
                    .or_else(|e| state.keep(e, &refused))
                    .map_err(fail)?;
                while let Ok(next) = rx.try_recv() {
                    unflushed += run(&mut state, next)
                        .or_else(|e| state.keep(e, &refused))
                        .map_err(fail)?;
                }
            }
            if status.unwritable() {
                if last_attempt.elapsed() < UNWRITABLE_RETRY {
                    continue;
                }
                last_attempt = std::time::Instant::now();
                if let Err(e) = state.install_renewal(&dir, &status, &writer) {
                    state.keep(e, &refused).map_err(fail)?;
                }
            }
            let mut guard = lock(&writer);
            let flushed = guard.flush();
            // Cleared under the lock a forward decision takes, so a decision
            // refused meanwhile is not forgotten.
            let recovered = flushed.is_ok()
                && state.renewal.is_none()
                && status.unwritable.swap(false, Ordering::Relaxed);
            drop(guard);
            match flushed {
                Ok(files) => {
                    syncer.sync(files).map_err(fail)?;
                    written.fetch_add(unflushed, Ordering::Relaxed);
                    if unflushed > 0 {
                        records_written.notify_one();
                    }
                    unflushed = 0;
                    if recovered {
                        tracing::info!(
                            "receipt spool writable again; everything kept meanwhile is written; accepting requests"
                        );
                    }
                }
                Err(e) if e.recoverable() => {
                    refused(&e);
                    // What the kernel did take is fsynced all the same.
                    syncer.sync(lock(&writer).sync_handles()).map_err(fail)?;
                }
                Err(e) => return Err(fail(e)),
            }
        }
        drop(syncer);
        // Stopping while the filesystem refuses: a few more tries, then what
        // is still in memory is lost, and said so.
        let deadline = std::time::Instant::now() + SHUTDOWN_RETRY;
        loop {
            match lock(&writer).close(CloseReason::Shutdown, now_timestamp()) {
                Err(e) if e.recoverable() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(UNWRITABLE_RETRY / 2);
                }
                Err(e) if e.recoverable() => {
                    tracing::error!(error = %e, receipts = unflushed, "stopping with the spool unwritable: receipts kept in memory are lost");
                    return Err(fail(e));
                }
                other => return other.map_err(fail),
            }
        }
    });
    (sink, handle)
}

/// The writer's batch interval under load: when a record comes within a
/// quarter of this after the last batch, the writer waits out the rest before
/// writing, so receipts reach the kernel at most this much later and a busy
/// gateway wakes its writer about 200 times a second instead of once per
/// request. Slower traffic is written as it comes.
pub const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// How often a spool the filesystem refuses is tried again.
pub const UNWRITABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a stopping gateway keeps trying a spool the filesystem refuses.
pub const SHUTDOWN_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// What the writer task carries between batches.
#[derive(Default)]
struct WriterState {
    /// A renewal whose stream file the filesystem refused, tried again with
    /// the same key once writes go through.
    renewal: Option<StreamKey>,
    /// A `ClosePrevious` that came while the renewal waited: applied to the
    /// stream the renewal replaces, once it does.
    close_after_renewal: bool,
}

impl WriterState {
    /// Opens the waiting renewal's stream file (outside the writer's lock)
    /// and makes it current.
    fn install_renewal(
        &mut self,
        dir: &Path,
        status: &SpoolStatus,
        writer: &std::sync::Mutex<SpoolWriter>,
    ) -> Result<(), SpoolError> {
        let Some(next) = self.renewal.as_ref() else {
            return Ok(());
        };
        let opened = open_stream(dir, next, status)?;
        let mut writer = lock(writer);
        writer.install(opened, now_timestamp())?;
        if std::mem::take(&mut self.close_after_renewal) {
            writer.close_previous_unsynced(now_timestamp())?;
        }
        drop(writer);
        tracing::info!(stream_id = %next.stream_id, "key certificate renewed; receipts go to a new stream");
        self.renewal = None;
        Ok(())
    }

    /// A command that failed for want of space is kept (nothing was lost):
    /// reported through `refused`, and the task goes on.
    fn keep(&self, e: SpoolError, refused: &impl Fn(&SpoolError)) -> Result<u64, SpoolError> {
        if e.recoverable() {
            refused(&e);
            Ok(0)
        } else {
            Err(e)
        }
    }
}

/// The longest a written receipt waits for its fsync (power-loss
/// durability; a killed gateway loses nothing the kernel has).
pub const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Fsyncs spool files on its own thread, at most once per
/// [`SYNC_INTERVAL`], coalescing what was written meanwhile: the writer
/// thread only hands it file handles.
struct Syncer {
    tx: std::sync::mpsc::Sender<Vec<(PathBuf, Arc<File>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn start(status: Arc<SpoolStatus>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<(PathBuf, Arc<File>)>>();
        let thread = std::thread::Builder::new()
            .name("spool-fsync".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                while let Ok(first) = rx.recv() {
                    // Group commit: at most one round of fsyncs per
                    // interval, whatever the request rate.
                    if let Some(wait) = SYNC_INTERVAL.checked_sub(last.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    last = std::time::Instant::now();
                    let mut files = first;
                    while let Ok(more) = rx.try_recv() {
                        files.extend(more);
                    }
                    files.sort_by(|a, b| a.0.cmp(&b.0));
                    files.dedup_by(|a, b| a.0 == b.0);
                    for (path, file) in files {
                        if let Err(e) = file.sync_data() {
                            status.failed.store(true, Ordering::Relaxed);
                            tracing::error!(path = %path.display(), error = %e, "receipt spool fsync failed; refusing new requests");
                        }
                    }
                }
            })
            .ok();
        Self { tx, thread }
    }

    /// Queues an fsync of `files`; without the thread, fsyncs them here.
    fn sync(&self, files: Vec<(PathBuf, Arc<File>)>) -> Result<(), SpoolError> {
        if self.thread.is_some() {
            let _ = self.tx.send(files);
            return Ok(());
        }
        for (path, file) in files {
            file.sync_data().map_err(io_error(&path))?;
        }
        Ok(())
    }
}

impl Drop for Syncer {
    /// Waits for the fsyncs already asked for.
    fn drop(&mut self) {
        let (tx, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Wall-clock now as a receipt timestamp.
pub fn now_timestamp() -> Timestamp {
    Timestamp::from_unix_millis(unix_millis()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Wall-clock now in unix milliseconds.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tollgate_evidence::{KeyCertificate, KeyId, PodIdentity, PublicKey};

    const T0: u64 = 1_750_000_000_000;

    fn workload() -> Workload {
        Workload {
            namespace: "team-a".parse().unwrap(),
            service_account: "app".parse().unwrap(),
            pod: "app-0".parse().unwrap(),
        }
    }

    fn stream_key(seed: u8, not_before: u64, not_after: u64) -> StreamKey {
        let ca = SigningKey::from_bytes(&[1; 32]);
        let key = SigningKey::from_bytes(&[seed; 32]);
        let pod = PodIdentity {
            namespace: "team-a".parse().unwrap(),
            service_account: "app".parse().unwrap(),
            pod_name: "app-0".parse().unwrap(),
            pod_uid: "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab".parse().unwrap(),
        };
        let certificate = KeyCertificate::new(
            PublicKey::of_signing_key(&key),
            pod,
            Timestamp::from_unix_millis(not_before).unwrap(),
            Timestamp::from_unix_millis(not_after).unwrap(),
            KeyId::of_signing_key(&ca),
        )
        .unwrap();
        StreamKey {
            stream_id: Identifier::new(format!("stream-{seed}")).unwrap(),
            key,
            certificate: SignedKeyCertificate::issue(certificate, &ca).unwrap(),
        }
    }

    fn draft(started: u64, completed: u64) -> ReceiptDraft {
        ReceiptDraft {
            pricing: None,
            id: format!(
                "0190c5a0-0000-7000-8000-{:012}",
                started % 1_000_000_000_000
            ),
            request_id: format!("req_{started}"),
            started_at_ms: started,
            completed_at_ms: completed,
            total_ms: completed - started,
            first_byte_ms: None,
            endpoint: Endpoint::ChatCompletions,
            provider: Some("dry".into()),
            model_requested: Some("m".into()),
            model_served: Some("m".into()),
            decision: Decision::Allow,
            reason: "allowed",
            guards: vec![],
            checks: vec![],
            caller_hash: None,
            correlation_id: None,
            decision_id: None,
            status: 200,
            request_sha256: [1; 32],
            response_sha256: [2; 32],
            response_length: 10,
            usage: None,
            cost_micro_usd: 0,
            upstream: None,
            quota: None,
            lane: Lane::DryRun,
            policy_hash: [3; 32],
        }
    }

    /// The spool file's lines, as JSON.
    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tollgate-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_renewal_keeps_requests_under_the_certificate_they_started_under() {
        let dir = temp_dir("renew");
        let status = Arc::new(SpoolStatus::new(1 << 20));
        let first = stream_key(10, T0, T0 + 60_000);
        let mut writer = SpoolWriter::create(&dir, first, workload(), status.clone()).unwrap();
        let first_path = writer.path().to_path_buf();
        writer.append(draft(T0 + 1_000, T0 + 2_000)).unwrap();

        writer
            .renew(
                &stream_key(11, T0 + 40_000, T0 + 100_000),
                Timestamp::from_unix_millis(T0 + 40_000).unwrap(),
            )
            .unwrap();
        let second_path = writer.path().to_path_buf();
        assert_ne!(first_path, second_path);
        // Started before the renewal, ended after it: the old key signs it.
        writer.append(draft(T0 + 39_000, T0 + 41_000)).unwrap();
        // Started after: the new key.
        writer.append(draft(T0 + 42_000, T0 + 43_000)).unwrap();
        writer.sync().unwrap();
        assert_eq!(
            status.certificate_not_after_ms.load(Ordering::Relaxed),
            admit_until(T0 + 40_000, T0 + 100_000),
            "admission follows the newest certificate, stopping before its end"
        );

        writer
            .close_previous(Timestamp::from_unix_millis(T0 + 55_000).unwrap())
            .unwrap();
        // Started under the old certificate, which is closed now: no open
        // stream covers it, so it is set aside instead of stalling a stream.
        assert!(
            writer
                .append(draft(T0 + 39_500, T0 + 56_000))
                .unwrap()
                .is_none()
        );
        writer.sync().unwrap();
        assert_eq!(status.set_aside(), 1);
        assert_eq!(
            std::fs::read_dir(dir.join(UNPLACED_DIR)).unwrap().count(),
            1
        );
        // A close after the certificate's end is dated at its end.
        writer
            .close(
                CloseReason::Shutdown,
                Timestamp::from_unix_millis(T0 + 150_000).unwrap(),
            )
            .unwrap();

        let old = lines(&first_path);
        assert!(old[0].get("certificate").is_some());
        assert_eq!(old.len(), 4, "certificate, two receipts, close: {old:?}");
        assert_eq!(
            old[3]["envelope"]["record"]["close"]["close"]["reason"],
            "key_expiry"
        );
        let new = lines(&second_path);
        assert_eq!(new.len(), 3, "certificate, one receipt, close: {new:?}");
        let close = &new[2]["envelope"]["record"]["close"]["close"];
        assert_eq!(close["reason"], "shutdown");
        assert_eq!(
            close["closed_at"],
            Timestamp::from_unix_millis(T0 + 100_000)
                .unwrap()
                .to_string(),
            "never after the certificate"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn decision(started: u64, decided: u64) -> DecisionDraft {
        DecisionDraft {
            id: format!(
                "0190c5a0-0000-7000-8000-{:012}",
                decided % 1_000_000_000_000
            ),
            request_id: format!("req_{started}"),
            attempt: 0,
            started_at_ms: started,
            decided_at_ms: decided,
            provider: "openai".into(),
            host: "api.openai.test".into(),
            model: "gpt-4o".into(),
            request_sha256: [1; 32],
            policy_hash: [2; 32],
        }
    }

    #[test]
    fn a_forward_decision_is_in_the_file_before_any_sync_and_chains_with_receipts() {
        let dir = temp_dir("decide");
        let status = Arc::new(SpoolStatus::new(1 << 20));
        let mut writer =
            SpoolWriter::create(&dir, stream_key(12, T0, T0 + 60_000), workload(), status).unwrap();
        let path = writer.path().to_path_buf();
        assert!(
            writer
                .append_decision(decision(T0 + 1_000, T0 + 1_002))
                .unwrap()
        );
        // No sync: what a killed process leaves is what the kernel was given.
        let written = lines(&path);
        assert_eq!(written.len(), 2, "certificate, decision: {written:?}");
        let record = &written[1]["envelope"]["record"]["decision"];
        assert_eq!(record["decision"]["attempt"], 0);
        assert_eq!(record["decision"]["host"], "api.openai.test");
        assert_eq!(written[1]["envelope"]["seq"], 1);

        let mut receipt = draft(T0 + 1_000, T0 + 2_000);
        receipt.decision_id = Some(decision(T0 + 1_000, T0 + 1_002).id);
        writer.append(receipt).unwrap();
        writer.sync().unwrap();
        let written = lines(&path);
        let body = &written[2]["envelope"]["record"]["receipt"]["body"];
        assert_eq!(body["decision_id"], record["decision"]["id"]);
        assert_eq!(written[2]["envelope"]["seq"], 2);

        // No open stream's certificate covers it: not written, and the caller
        // must not forward.
        assert!(
            !writer
                .append_decision(decision(T0 + 61_000, T0 + 61_001))
                .unwrap()
        );
        assert_eq!(lines(&path).len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_decision_whose_receipt_never_came_is_forgotten_an_hour_after_its_stream_closed() {
        const H: u64 = 3_600_000;
        let dir = temp_dir("forget-decisions");
        let status = Arc::new(SpoolStatus::new(1 << 20));
        let mut writer =
            SpoolWriter::create(&dir, stream_key(40, T0, T0 + 3 * H), workload(), status).unwrap();
        assert!(
            writer
                .append_decision(decision(T0 + 1_000, T0 + 1_001))
                .unwrap()
        );
        assert_eq!(writer.decided.len(), 1);
        let at = |ms| Timestamp::from_unix_millis(T0 + ms).unwrap();
        writer
            .renew(&stream_key(41, T0 + H, T0 + 5 * H), at(H))
            .unwrap();
        writer.close_previous_unsynced(at(H + 1_000)).unwrap();
        assert_eq!(
            writer.decided.len(),
            1,
            "its stream just closed: a late receipt still finds it"
        );
        writer
            .renew(&stream_key(42, T0 + 2 * H, T0 + 6 * H), at(2 * H))
            .unwrap();
        writer.close_previous_unsynced(at(2 * H + 500)).unwrap();
        assert_eq!(writer.decided.len(), 1, "not yet an hour");
        writer
            .renew(&stream_key(43, T0 + 3 * H, T0 + 7 * H), at(3 * H))
            .unwrap();
        writer.close_previous_unsynced(at(3 * H)).unwrap();
        assert!(
            writer.decided.is_empty(),
            "forgotten an hour after its stream closed"
        );
        writer.close(CloseReason::Shutdown, at(3 * H + 1)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_decision_whose_stream_closed_while_it_was_signed_is_refused() {
        let dir = temp_dir("decide-closed");
        let status = Arc::new(SpoolStatus::new(1 << 20));
        let mut writer =
            SpoolWriter::create(&dir, stream_key(23, T0, T0 + 30_000), workload(), status).unwrap();
        let first = writer.path().to_path_buf();
        writer
            .renew(
                &stream_key(24, T0 + 20_000, T0 + 50_000),
                Timestamp::from_unix_millis(T0 + 20_000).unwrap(),
            )
            .unwrap();
        // Started before the renewal: planned for the first stream, which
        // closes while the decision is signed outside the writer's lock.
        let plan = writer
            .plan_decision(decision(T0 + 10_000, T0 + 21_000))
            .unwrap()
            .expect("the first stream covers it");
        let signed = SignedRecord::decision(plan.body, &*plan.key).unwrap();
        writer
            .close_previous(Timestamp::from_unix_millis(T0 + 21_000).unwrap())
            .unwrap();
        assert!(
            !writer
                .append_signed_decision(&plan.stream, plan.id.clone(), signed)
                .unwrap()
        );
        assert!(!writer.decided.contains_key(&plan.id));
        let first = lines(&first);
        assert_eq!(first.len(), 2, "certificate and close only: {first:?}");
        // The writer carries on with the open stream.
        assert!(
            writer
                .append_decision(decision(T0 + 21_000, T0 + 21_001))
                .unwrap()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_decision_signed_across_a_renewal_stays_with_its_stream_and_receipt() {
        let dir = temp_dir("decide-renewed");
        let status = Arc::new(SpoolStatus::new(1 << 20));
        let mut writer =
            SpoolWriter::create(&dir, stream_key(25, T0, T0 + 30_000), workload(), status).unwrap();
        let first = writer.path().to_path_buf();
        let plan = writer
            .plan_decision(decision(T0 + 10_000, T0 + 10_001))
            .unwrap()
            .expect("the stream covers it");
        let signed = SignedRecord::decision(plan.body, &*plan.key).unwrap();
        // A renewal while it is signed: its stream is now the previous one.
        writer
            .renew(
                &stream_key(26, T0 + 5_000, T0 + 50_000),
                Timestamp::from_unix_millis(T0 + 10_000).unwrap(),
            )
            .unwrap();
        let second = writer.path().to_path_buf();
        assert!(
            writer
                .append_signed_decision(&plan.stream, plan.id.clone(), signed)
                .unwrap()
        );
        let mut receipt = draft(T0 + 10_000, T0 + 11_000);
        receipt.decision_id = Some(plan.id);
        writer.append(receipt).unwrap();
        writer.sync().unwrap();
        let first = lines(&first);
        assert_eq!(first.len(), 3, "certificate, decision, receipt: {first:?}");
        assert!(first[1]["envelope"]["record"]["decision"].is_object());
        assert!(first[2]["envelope"]["record"]["receipt"].is_object());
        assert_eq!(lines(&second).len(), 1, "the new stream's certificate only");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_renewal_closes_the_stream_the_first_one_left_open() {
        let dir = temp_dir("renew-twice");
        let status = Arc::new(SpoolStatus::new(1 << 20));
        let mut writer =
            SpoolWriter::create(&dir, stream_key(20, T0, T0 + 30_000), workload(), status).unwrap();
        let first = writer.path().to_path_buf();
        writer
            .renew(
                &stream_key(21, T0 + 20_000, T0 + 50_000),
                Timestamp::from_unix_millis(T0 + 20_000).unwrap(),
            )
            .unwrap();
        writer
            .renew(
                &stream_key(22, T0 + 29_000, T0 + 70_000),
                Timestamp::from_unix_millis(T0 + 29_000).unwrap(),
            )
            .unwrap();
        let first = lines(&first);
        assert_eq!(first.len(), 2, "certificate and close: {first:?}");
        assert_eq!(
            first[1]["envelope"]["record"]["close"]["close"]["reason"],
            "key_expiry"
        );
        writer
            .close(
                CloseReason::Shutdown,
                Timestamp::from_unix_millis(T0 + 29_500).unwrap(),
            )
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_writer_that_falls_behind_stops_admission_and_loses_nothing() {
        let dir = temp_dir("behind");
        let status = Arc::new(SpoolStatus::new(1 << 30));
        let writer = SpoolWriter::create(
            &dir,
            stream_key(30, T0, T0 + 60_000),
            workload(),
            status.clone(),
        )
        .unwrap();
        let path = writer.path().to_path_buf();
        status
            .certificate_not_after_ms
            .store(u64::MAX, Ordering::Relaxed);
        let (sink, task) = spawn_spool_writer(writer);
        let Decisions::Spool(shared) = &sink.decisions else {
            panic!("a spool sink")
        };
        // A writer stalled (here: on the lock a disk write would hold).
        let stalled = shared.lock().unwrap();
        let total = MAX_QUEUED_RECORDS + 1;
        sink.submit(draft(T0 + 1_000, T0 + 2_000));
        // The writer takes the first and waits on the lock with it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while status.queued() != 0 {
            assert!(std::time::Instant::now() < deadline, "{}", status.queued());
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 1..total {
            assert!(status.accepting(), "admitted while {} wait", i - 1);
            sink.submit(draft(T0 + 1_000 + i, T0 + 2_000 + i));
        }
        while status.queued() != MAX_QUEUED_RECORDS {
            assert!(std::time::Instant::now() < deadline, "{}", status.queued());
            // The writer is a blocking thread: no await needed (nor allowed
            // while the lock is held).
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !status.accepting(),
            "a writer this far behind stops admission"
        );
        drop(stalled);
        while sink.written() != total {
            assert!(std::time::Instant::now() < deadline, "{}", sink.written());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(status.queued(), 0);
        assert!(status.accepting(), "admission resumes once it caught up");
        drop(sink);
        task.await.unwrap().unwrap();
        let receipts = lines(&path)
            .iter()
            .filter(|l| !l["envelope"]["record"]["receipt"].is_null())
            .count() as u64;
        assert_eq!(receipts, total, "every receipt queued is written");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn under_fail_open_a_writer_behind_costs_bounded_memory() {
        // The test sink's reader never runs before this test awaits: every
        // record stays queued, as with a stalled writer.
        let (sink, _drafts) = test_sink(1 << 30, Arc::default(), false);
        for i in 0..MAX_QUEUED_RECORDS_FAIL_OPEN {
            sink.submit_fail_open(draft(T0 + i, T0 + i + 1));
        }
        assert!(!sink.status.accepting());
        assert_eq!(sink.status.dropped(), 0);
        sink.submit_fail_open(draft(T0, T0 + 1));
        assert_eq!(
            (sink.status.queued(), sink.status.dropped()),
            (MAX_QUEUED_RECORDS_FAIL_OPEN, 1),
            "past the bound a fail-open receipt is dropped, and counted"
        );
        sink.submit(draft(T0, T0 + 1));
        assert_eq!(
            (sink.status.queued(), sink.status.dropped()),
            (MAX_QUEUED_RECORDS_FAIL_OPEN + 1, 1),
            "a receipt of a request admitted under failMode closed is never dropped"
        );
    }

    #[test]
    fn an_expired_certificate_stops_admission() {
        let status = SpoolStatus::new(1 << 20);
        assert!(!status.accepting(), "no certificate yet");
        status
            .certificate_not_after_ms
            .store(unix_millis() + 60_000, Ordering::Relaxed);
        assert!(status.accepting());
        status
            .certificate_not_after_ms
            .store(unix_millis() - 1, Ordering::Relaxed);
        assert!(!status.accepting());
        assert!(status.certificate_expired());
    }
}
