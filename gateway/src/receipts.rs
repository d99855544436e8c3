//! Receipts off the hot path: the proxy hands a [`ReceiptDraft`] to a channel;
//! the spool writer task builds the body, signs it with the gateway key,
//! chains it, and appends it to the local append-only spool.
//!
//! Spool layout, one file per gateway start (`<stream_id>.jsonl`): the first
//! line holds the signed key certificate, every later line one envelope, and
//! the last one the signed close record written on shutdown.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;
use tollgate_evidence::chain::CloseReason;
use tollgate_evidence::{
    Api, Code, Decision, DnsSubdomain, Envelope, GuardCodes, HostName, HttpMethod, HttpStatus,
    Identifier, Lane, Latency, ModelName, QuotaCharge, ReceiptBody, ReceiptId, RequestVerdict,
    Route, SafeU64, Sha256Hex, SignedKeyCertificate, SigningKey, StreamChainWriter, Timestamp,
    Upstream, Usage, Workload,
};

use crate::api::{ApiStyle, Endpoint};

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
    pub status: u16,
    pub request_sha256: [u8; 32],
    pub response_sha256: [u8; 32],
    pub response_length: u64,
    pub usage: Option<(u64, u64, u64)>,
    pub cost_micro_usd: u64,
    pub upstream: Option<UpstreamFacts>,
    pub quota: Option<(u64, u64, u64)>,
    pub lane: Lane,
    pub policy_hash: [u8; 32],
}

/// The upstream side of a request.
#[derive(Debug, Clone)]
pub struct UpstreamFacts {
    pub host: String,
    pub tls_cert_sha256: Option<[u8; 32]>,
    pub provider_request_id: Option<String>,
    pub key_index: u32,
    pub key_count: u32,
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
            caller_hash: None,
            api: match self.endpoint.style() {
                ApiStyle::OpenAi => Api::Openai,
                ApiStyle::Anthropic => Api::Anthropic,
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
                decision: self.decision,
                reason: field("verdict.reason", Code::new(self.reason))?,
                guards: field("verdict.guards", GuardCodes::new(guards))?,
            },
            response_status: field("response_status", HttpStatus::new(self.status))?,
            request_sha256: Sha256Hex::from_bytes(self.request_sha256),
            response_sha256: Sha256Hex::from_bytes(self.response_sha256),
            response_length: safe("response_length", self.response_length)?,
            usage: self
                .usage
                .map(|(input, output, cached)| -> Result<Usage, DraftError> {
                    Ok(Usage {
                        input_tokens: safe("usage", input)?,
                        output_tokens: safe("usage", output)?,
                        cached_tokens: safe("usage", cached.min(input))?,
                    })
                })
                .transpose()?,
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
}

impl SpoolStatus {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            used_bytes: AtomicU64::new(0),
            max_bytes,
            headroom_bytes: (max_bytes / 16).clamp(64 * 1024, 4 * 1024 * 1024),
            failed: AtomicBool::new(false),
        }
    }
    /// Whether new requests may be admitted: the spool has room for their
    /// receipts and the writer has not failed.
    pub fn accepting(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
            && self.used_bytes.load(Ordering::Relaxed) + self.headroom_bytes <= self.max_bytes
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
}

/// Why the spool could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    #[error(transparent)]
    Chain(#[from] tollgate_evidence::ChainError),
    #[error(transparent)]
    Draft(#[from] DraftError),
    #[error("cannot encode a spool line: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Canonical(#[from] tollgate_evidence::CanonicalError),
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum SpoolLine<'a> {
    Certificate(&'a SignedKeyCertificate),
    Envelope(&'a Envelope),
}

/// Appends signed, chained receipts to one stream file.
#[derive(Debug)]
pub struct SpoolWriter {
    path: PathBuf,
    file: BufWriter<File>,
    chain: StreamChainWriter,
    key: SigningKey,
    workload: Workload,
    status: Arc<SpoolStatus>,
}

impl SpoolWriter {
    /// Starts a new stream file in `dir` for `stream_id`, beginning with the
    /// key certificate. Existing files (earlier streams not yet shipped) count
    /// against the spool size.
    pub fn create(
        dir: &Path,
        stream_id: Identifier,
        key: SigningKey,
        certificate: &SignedKeyCertificate,
        workload: Workload,
        status: Arc<SpoolStatus>,
    ) -> Result<Self, SpoolError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let existing: u64 = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        status.used_bytes.store(existing, Ordering::Relaxed);
        let path = dir.join(format!("{stream_id}.jsonl"));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut writer = Self {
            path,
            file: BufWriter::new(file),
            chain: StreamChainWriter::new(stream_id),
            key,
            workload,
            status,
        };
        writer.write_line(&SpoolLine::Certificate(certificate))?;
        writer.sync()?;
        Ok(writer)
    }

    /// The stream file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_line(&mut self, line: &SpoolLine<'_>) -> Result<(), SpoolError> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        let used = self.status.used_bytes.load(Ordering::Relaxed);
        let len = bytes.len() as u64;
        if used + len > self.status.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.status.max_bytes,
            });
        }
        self.file
            .write_all(&bytes)
            .map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.status.used_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Signs, chains and appends one receipt. Buffered: call [`Self::sync`].
    pub fn append(&mut self, draft: ReceiptDraft) -> Result<Envelope, SpoolError> {
        let body = draft.into_body(&self.workload)?;
        let envelope = self.chain.sign_and_append(body, &self.key)?;
        self.write_line(&SpoolLine::Envelope(&envelope))?;
        Ok(envelope)
    }

    /// Flushes and fsyncs what was appended.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let err = |source| SpoolError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.flush().map_err(err)?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Ends the stream with a signed close record and syncs.
    pub fn close(&mut self, reason: CloseReason, now: Timestamp) -> Result<(), SpoolError> {
        let envelope = self.chain.close(reason, now, &self.key)?;
        self.write_line(&SpoolLine::Envelope(&envelope))?;
        self.sync()
    }
}

/// The hot path's handle: hands drafts to the writer task.
#[derive(Debug, Clone)]
pub struct ReceiptSink {
    tx: mpsc::UnboundedSender<ReceiptDraft>,
    pub status: Arc<SpoolStatus>,
    written: Arc<AtomicU64>,
}

impl ReceiptSink {
    /// Queues a draft. Fails only when the writer task is gone, which the
    /// status already reports as failed so no new request is admitted.
    pub fn submit(&self, draft: ReceiptDraft) {
        if self.tx.send(draft).is_err() {
            self.status.failed.store(true, Ordering::Relaxed);
            tracing::error!("receipt writer is gone; refusing new requests");
        }
    }
    /// Receipts written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// A sink whose drafts the test reads from the receiver, with no spool.
#[cfg(test)]
pub(crate) fn test_sink(max_bytes: u64) -> (ReceiptSink, mpsc::UnboundedReceiver<ReceiptDraft>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = ReceiptSink {
        tx,
        status: Arc::new(SpoolStatus::new(max_bytes)),
        written: Arc::new(AtomicU64::new(0)),
    };
    (sink, rx)
}

#[cfg(test)]
impl SpoolStatus {
    /// Marks the writer as failed, as a failed write would.
    pub(crate) fn fail_for_test(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// Starts the writer task. It drains the channel in batches, syncing once per
/// batch; when every sink is dropped it writes the close record and returns.
pub fn spawn_spool_writer(
    mut writer: SpoolWriter,
) -> (ReceiptSink, tokio::task::JoinHandle<Result<(), SpoolError>>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<ReceiptDraft>();
    let status = writer.status.clone();
    let written = Arc::new(AtomicU64::new(0));
    let sink = ReceiptSink {
        tx,
        status: status.clone(),
        written: written.clone(),
    };
    let handle = tokio::task::spawn_blocking(move || {
        let fail = |e: SpoolError| {
            status.failed.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, "receipt spool write failed; refusing new requests");
            e
        };
        while let Some(first) = rx.blocking_recv() {
            writer.append(first).map_err(fail)?;
            let mut batch = 1u64;
            while let Ok(next) = rx.try_recv() {
                writer.append(next).map_err(fail)?;
                batch += 1;
            }
            writer.sync().map_err(fail)?;
            written.fetch_add(batch, Ordering::Relaxed);
        }
        writer
            .close(CloseReason::Shutdown, now_timestamp())
            .map_err(fail)
    });
    (sink, handle)
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
