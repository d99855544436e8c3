//! The receipt shipper, for the gateway side: tails a spool directory and POSTs
//! its envelopes to the recorder in batches.
//!
//! Spool files are `<stream_id>.jsonl`: a `{"certificate": …}` line, then
//! `{"envelope": …}` lines in seq order, the last being the signed close record on
//! a clean shutdown. Only complete (newline-terminated) lines are read, so a line
//! being written is never sent half.
//!
//! Guarantees: envelopes are sent in seq order starting from the recorder's
//! `next_seq` for the stream (asked with `GET /v1/streams/{id}` on first sight, then
//! taken from every ingest answer), so nothing is skipped and resending after a
//! lost answer is harmless (the recorder counts duplicates). Nothing is ever
//! dropped: a refused envelope, a gap in the spool or an unreachable recorder stops
//! that stream and is retried with exponential backoff. A spool file is deleted
//! only after the recorder acknowledged its close record.
//!
//! ```no_run
//! # async fn example(tls: std::sync::Arc<rustls::ClientConfig>) {
//! use std::sync::Arc;
//! use tollgate_gateway::shipper::Shipper;
//! use tollgate_wire::client::FileToken;
//! let shipper = Shipper::new(
//!     "/var/run/tollgate/spool",
//!     "https://tollgate-recorder.tollgate-system.svc:8443",
//!     Arc::new(FileToken::new("/var/run/secrets/tollgate/recorder-token")),
//!     tls,
//! );
//! shipper.run(async { /* shutdown signal */ }).await;
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rustls::ClientConfig;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tokio::sync::Mutex;

use tollgate_wire::client::{ClientError, HttpClient, TokenSource};
use tollgate_wire::ingest::{IngestResponse, StreamStatus};

/// Envelopes per batch by default (the recorder's default bound is 1000).
pub const DEFAULT_BATCH_ENVELOPES: usize = 500;
/// Bytes per batch body by default (the recorder's default bound is 16 MiB).
pub const DEFAULT_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// First retry delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a woken shipper waits for more records before it ships.
pub const WAKE_LINGER: Duration = Duration::from_millis(50);

/// Why shipping failed this time (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    /// Reading the spool.
    #[error("spool {path}: {message}")]
    Spool {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Talking to the recorder.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The recorder answered with an error status.
    #[error("recorder answered {status}: {detail}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The problem detail, if any.
        detail: String,
    },
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// Spool files seen.
    pub files: usize,
    /// Envelopes sent (including resends).
    pub sent: u64,
    /// Envelopes the recorder stored.
    pub accepted: u64,
    /// Envelopes the recorder already had.
    pub duplicates: u64,
    /// Spool files deleted (their close record is acknowledged).
    pub deleted: Vec<PathBuf>,
    /// Streams that cannot make progress, and why (retried next pass).
    pub stuck: Vec<(String, String)>,
    /// The recorder could not be reached partway through the pass (after
    /// some envelopes were sent), and why; retried next pass.
    pub interrupted: Option<String>,
}

#[derive(Debug, Clone)]
struct FileState {
    stream_id: String,
    /// The seq the recorder expects next.
    next_seq: u64,
    /// Byte offset of the first line not yet acknowledged.
    offset: u64,
    /// Envelopes per batch for this file (halved on 413).
    batch: usize,
}

#[derive(Deserialize)]
struct SpoolLine<'a> {
    #[serde(borrow, default)]
    certificate: Option<&'a RawValue>,
    #[serde(borrow, default)]
    envelope: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Peek {
    seq: u64,
    record: PeekRecord,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PeekRecord {
    Receipt(IgnoredAny),
    Decision(IgnoredAny),
    Close(IgnoredAny),
}

/// Ships one gateway's spool to the recorder.
#[derive(Debug)]
pub struct Shipper {
    spool_dir: PathBuf,
    recorder_url: String,
    tokens: Arc<dyn TokenSource>,
    client: HttpClient,
    batch_envelopes: usize,
    batch_bytes: usize,
    poll: Duration,
    /// Wakes an idle shipper when new records reach the spool.
    wake: Option<Arc<tokio::sync::Notify>>,
    files: Mutex<HashMap<PathBuf, FileState>>,
}

enum Outcome {
    /// Acknowledged through `next_seq`; `closed` if the close record is stored.
    Acked { closed: bool },
    /// Nothing new to send.
    Idle,
    /// Cannot progress.
    Stuck(String),
}

impl Shipper {
    /// A shipper for `spool_dir` to the recorder at `recorder_url` (base URL).
    pub fn new(
        spool_dir: impl Into<PathBuf>,
        recorder_url: impl Into<String>,
        tokens: Arc<dyn TokenSource>,
        client_tls: Arc<ClientConfig>,
    ) -> Self {
        Self {
            spool_dir: spool_dir.into(),
            recorder_url: recorder_url.into().trim_end_matches('/').to_string(),
            tokens,
            client: HttpClient::new(client_tls, Duration::from_secs(30)),
            batch_envelopes: DEFAULT_BATCH_ENVELOPES,
            batch_bytes: DEFAULT_BATCH_BYTES,
            poll: Duration::from_secs(1),
            wake: None,
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Envelopes per batch.
    pub fn with_batch_envelopes(mut self, n: usize) -> Self {
        self.batch_envelopes = n.max(1);
        self
    }

    /// How often the spool is scanned when idle.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Ships within [`WAKE_LINGER`] of `wake` being notified (the spool
    /// writer's [`crate::receipts::ReceiptSink::records_written`]) instead of
    /// at the next poll, while the recorder answers. Under steady load the
    /// shipper is never idle, so this changes nothing there; at a trickle it
    /// is what lets `usage` show a request a moment after it was answered.
    pub fn with_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Ships until `shutdown` completes, then makes a last bounded attempt (10 s)
    /// to drain what is left (e.g. the close record written on shutdown). A
    /// pass still waiting for the recorder when `shutdown` comes is abandoned
    /// (the recorder's `next_seq` tells the next shipper where to resume), so
    /// a recorder that does not answer cannot hold a stopping pod past its
    /// grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut delay = INITIAL_BACKOFF;
        loop {
            let pass = tokio::select! {
                pass = self.ship_once() => pass,
                () = &mut shutdown => break,
            };
            let mut idle = false;
            let wait = match pass {
                Ok(report) if report.stuck.is_empty() && report.interrupted.is_none() => {
                    delay = INITIAL_BACKOFF;
                    if report.sent > 0 {
                        Duration::ZERO
                    } else {
                        idle = true;
                        self.poll
                    }
                }
                Ok(report) => {
                    for (stream, why) in &report.stuck {
                        tracing::error!(stream_id = %stream, reason = %why, "receipt stream cannot be shipped; retrying");
                    }
                    if let Some(why) = &report.interrupted {
                        tracing::warn!(error = %why, sent = report.sent, "shipping receipts was interrupted; retrying");
                    }
                    backoff(&mut delay)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shipping receipts failed; retrying");
                    backoff(&mut delay)
                }
            };
            // Only an idle shipper wakes early: one backing off from a
            // failing recorder keeps its backoff.
            let woken = async {
                match &self.wake {
                    Some(wake) if idle => {
                        wake.notified().await;
                        // Let the records of a burst arrive: one batch.
                        tokio::time::sleep(WAKE_LINGER).await;
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
                () = woken => {}
            }
        }
        let drain = async {
            let mut delay = INITIAL_BACKOFF;
            loop {
                match self.ship_once().await {
                    Ok(r) if r.stuck.is_empty() && r.interrupted.is_none() && r.sent == 0 => return,
                    Ok(_) | Err(_) => tokio::time::sleep(backoff(&mut delay)).await,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }

    /// One pass over every spool file: sends everything complete and not yet
    /// acknowledged, deletes files whose close record is acknowledged.
    pub async fn ship_once(&self) -> Result<ShipReport, ShipperError> {
        let mut report = ShipReport::default();
        let mut paths = spool_files(&self.spool_dir)?;
        paths.sort();
        report.files = paths.len();
        let mut states = self.files.lock().await;
        states.retain(|p, _| paths.contains(p));
        let mut first_error = None;
        for path in paths {
            match self.ship_file(&path, &mut states, &mut report).await {
                Ok(()) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if report.sent == 0 => Err(e),
            Some(e) => {
                report.interrupted = Some(e.to_string());
                Ok(report)
            }
            None => Ok(report),
        }
    }

    async fn ship_file(
        &self,
        path: &Path,
        states: &mut HashMap<PathBuf, FileState>,
        report: &mut ShipReport,
    ) -> Result<(), ShipperError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| ShipperError::Spool {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let Some(first_end) = bytes.iter().position(|b| *b == b'\n') else {
            return Ok(()); // the certificate line is still being written
        };
        let certificate = parse_line(&bytes[..first_end])
            .and_then(|l| l.certificate.map(|c| c.get().to_string()))
            .ok_or_else(|| ShipperError::Spool {
                path: path.to_path_buf(),
                message: "first line is not {\"certificate\": …}".into(),
            })?;
        let stream_id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if !states.contains_key(path) {
            let status = self.stream_status(&stream_id).await?;
            if status.closed {
                remove(path, report)?;
                return Ok(());
            }
            states.insert(
                path.to_path_buf(),
                FileState {
                    stream_id: stream_id.clone(),
                    next_seq: status.next_seq.max(1),
                    offset: (first_end + 1) as u64,
                    batch: self.batch_envelopes,
                },
            );
        }
        loop {
            let state = states.get_mut(path).ok_or_else(|| ShipperError::Spool {
                path: path.to_path_buf(),
                message: "state lost".into(),
            })?;
            match self.send_next(&bytes, &certificate, state, report).await? {
                Outcome::Acked { closed: true } => {
                    states.remove(path);
                    remove(path, report)?;
                    return Ok(());
                }
                Outcome::Acked { closed: false } => {}
                Outcome::Idle => return Ok(()),
                Outcome::Stuck(why) => {
                    report.stuck.push((state.stream_id.clone(), why));
                    return Ok(());
                }
            }
        }
    }

    async fn stream_status(&self, stream_id: &str) -> Result<StreamStatus, ShipperError> {
        let url = format!("{}/v1/streams/{stream_id}", self.recorder_url);
        let token = self.tokens.token()?;
        let response = self
            .client
            .send(Method::GET, &url, Some(&token), None, 64 * 1024)
            .await?;
        match response.status {
            StatusCode::OK => {
                serde_json::from_slice(&response.body).map_err(|e| ShipperError::Status {
                    status: response.status,
                    detail: format!("unreadable stream status: {e}"),
                })
            }
            StatusCode::NOT_FOUND => Ok(StreamStatus {
                stream_id: stream_id.to_string(),
                next_seq: 1,
                closed: false,
            }),
            status => Err(status_error(status, &response.body)),
        }
    }

    /// Sends the next batch from `state.next_seq`.
    async fn send_next(
        &self,
        bytes: &[u8],
        certificate: &str,
        state: &mut FileState,
        report: &mut ShipReport,
    ) -> Result<Outcome, ShipperError> {
        let mut batch: Vec<&str> = Vec::new();
        let mut ends: Vec<(u64, u64)> = Vec::new(); // (seq, end offset)
        let mut size = certificate.len() + 64;
        let mut expected = state.next_seq;
        let mut pos = usize::try_from(state.offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        while let Some(len) = bytes[pos..].iter().position(|b| *b == b'\n') {
            let line = &bytes[pos..pos + len];
            let end = (pos + len + 1) as u64;
            pos += len + 1;
            let Some(raw) = parse_line(line).and_then(|l| l.envelope) else {
                return Ok(Outcome::Stuck(format!(
                    "unreadable spool line at byte {}",
                    end - len as u64 - 1
                )));
            };
            let Ok(peek) = serde_json::from_str::<Peek>(raw.get()) else {
                return Ok(Outcome::Stuck("spool line is not an envelope".into()));
            };
            if peek.seq < expected {
                // Acknowledged already; move past it.
                if batch.is_empty() {
                    state.offset = end;
                }
                continue;
            }
            if peek.seq > expected {
                return Ok(Outcome::Stuck(format!(
                    "spool is missing seq {expected} (next line has seq {})",
                    peek.seq
                )));
            }
            if !batch.is_empty()
                && (batch.len() >= state.batch || size + raw.get().len() > self.batch_bytes)
            {
                break;
            }
            size += raw.get().len() + 1;
            batch.push(raw.get());
            ends.push((peek.seq, end));
            expected += 1;
            if matches!(peek.record, PeekRecord::Close(_)) {
                break;
            }
        }
        if batch.is_empty() {
            return Ok(Outcome::Idle);
        }
        let mut body = String::with_capacity(size + batch.len());
        body.push_str("{\"certificate\":");
        body.push_str(certificate);
        body.push_str(",\"envelopes\":[");
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e);
        }
        body.push_str("]}");
        let url = format!("{}/v1/receipts", self.recorder_url);
        let token = self.tokens.token()?;
        report.sent += batch.len() as u64;
        let response = self
            .client
            .send(
                Method::POST,
                &url,
                Some(&token),
                Some(Bytes::from(body)),
                4 * 1024 * 1024,
            )
            .await?;
        if response.status == StatusCode::PAYLOAD_TOO_LARGE && state.batch > 1 {
            state.batch = (state.batch / 2).max(1);
            return Ok(Outcome::Acked { closed: false });
        }
        if !response.status.is_success() {
            return Err(status_error(response.status, &response.body));
        }
        let answer: IngestResponse =
            serde_json::from_slice(&response.body).map_err(|e| ShipperError::Status {
                status: response.status,
                detail: format!("unreadable ingest answer: {e}"),
            })?;
        report.accepted += answer.accepted;
        report.duplicates += answer.duplicates;
        if answer.next_seq < state.next_seq {
            // The recorder is behind what it acknowledged before: resend from there.
            tracing::warn!(stream_id = %state.stream_id, next_seq = answer.next_seq, "recorder asks to resend");
            state.offset = 0;
        } else if let Some((_, end)) = ends.iter().rev().find(|(seq, _)| *seq < answer.next_seq) {
            state.offset = *end;
        }
        state.next_seq = answer.next_seq.max(1);
        if answer.closed {
            return Ok(Outcome::Acked { closed: true });
        }
        if let Some(r) = answer.rejected.first() {
            return Ok(Outcome::Stuck(format!(
                "recorder refused seq {:?}: {} ({})",
                r.seq,
                r.reason.as_str(),
                r.message
            )));
        }
        Ok(Outcome::Acked { closed: false })
    }
}

fn backoff(delay: &mut Duration) -> Duration {
    let now = *delay;
    *delay = (*delay * 2).min(MAX_BACKOFF);
    now
}

fn parse_line(line: &[u8]) -> Option<SpoolLine<'_>> {
    serde_json::from_slice(line).ok()
}

fn status_error(status: StatusCode, body: &[u8]) -> ShipperError {
    let detail = serde_json::from_slice::<tollgate_wire::problem::Problem>(body)
        .map(|p| p.detail)
        .unwrap_or_default();
    ShipperError::Status { status, detail }
}

fn spool_files(dir: &Path) -> Result<Vec<PathBuf>, ShipperError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ShipperError::Spool {
                path: dir.to_path_buf(),
                message: e.to_string(),
            });
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && p.is_file())
        .collect())
}

fn remove(path: &Path, report: &mut ShipReport) -> Result<(), ShipperError> {
    std::fs::remove_file(path).map_err(|e| ShipperError::Spool {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    report.deleted.push(path.to_path_buf());
    Ok(())
}
