//! The recorder service: ties storage, the log, the recorder key, the trust roots,
//! policy, metrics and checkpoint sinks together. Every operation here is a thin
//! sequence of storage reads, a pure decision, and one transactional write.
//!
//! Ingest holds an in-process lock and the storage log lock for the stateful part
//! only; CPU-heavy signature checks run before, on blocking threads. The cached
//! [`LogCore`] is checked against the stored log row inside each transaction and
//! rebuilt if another replica (or a crash) changed the log, so a restart resumes
//! the open segment exactly.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore, mpsc};
use tollgate_evidence::{
    Bundle, Continuation, Envelope, Genesis, Identifier, KeyRole, LogState, MerkleAccumulator,
    PrevHash, PublicKey, RangeBase, SegmentHeader, Sha256Hex, SignedCheckpoint, SigningKey,
    Timestamp, TrustRoots,
};

use crate::auth::{Caller, Policy};
use crate::clock::Clock;
use crate::dashboard::{CheckpointAnswer, CheckpointView, SinkProgress};
use crate::error::RecorderError;
use crate::export::{ExportRange, assemble, check_bounds};
use crate::settings::MAX_EXPORT_SEGMENTS;

/// Most segments one retention pass deletes.
const MAX_PRUNED_PER_PASS: u64 = 64;
use crate::ingest::{IngestResponse, StoredStream, parse_batch, plan_chain, verify_batch};
use crate::log::{LogCore, SealPolicy, SealedSegment};
use crate::metrics::{DecisionLabel, KindLabel, Metrics, ReasonLabel, ResultLabel};
use crate::quota::{GrantRequest, LeaseResponse, RenewRequest, ReturnRequest, ReturnResponse};
use crate::retention::{RetentionReport, covered_size};
use crate::settings::Settings;
use crate::store::{
    CertificateRow, EnvelopeRow, FaultRow, LogMetaRow, LogTx, LogWrite, SegmentOpenRow, SegmentRow,
    SegmentSealRow, Store, StreamRow,
};
use crate::usage::{UsageQuery, UsageReport};

/// What a recorder is built from.
#[derive(Debug)]
pub struct RecorderOptions {
    /// Sealing, ingest bounds, sinks.
    pub settings: Settings,
    /// Trusted receipt CA keys.
    pub trust: TrustRoots,
    /// The checkpoint and manifest signing key.
    pub key: SigningKey,
    /// The log origin for a new log (a stored log keeps its own).
    pub origin: Identifier,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Who may do what.
    pub policy: Policy,
    /// Threads for signature checks per batch.
    pub verify_threads: usize,
}

pub use crate::ingest::StreamStatus;

type CachedLog = Option<(LogCore, Option<LogMetaRow>)>;

/// The recorder.
pub struct Recorder {
    store: Arc<dyn Store>,
    key: SigningKey,
    trust: std::sync::RwLock<Arc<TrustRoots>>,
    settings: Settings,
    origin: Identifier,
    policy: Policy,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    log: Mutex<CachedLog>,
    sinks: Option<mpsc::UnboundedSender<SignedCheckpoint>>,
    verify: Semaphore,
    verify_threads: usize,
    /// Exports read, retention writes: a pass never deletes a segment an export
    /// of this process is reading.
    retention: tokio::sync::RwLock<()>,
    /// When this process last deleted stale key health reports.
    key_reports_purged_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("store", &self.store.backend())
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn ts(ms: u64) -> Result<Timestamp, RecorderError> {
    Timestamp::from_unix_millis(ms).map_err(|e| RecorderError::Internal(format!("clock: {e}")))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, RecorderError> {
    serde_json::to_string(v).map_err(|e| RecorderError::Internal(e.to_string()))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> RecorderError {
    RecorderError::Store(crate::store::StoreError::Corrupt(format!("{what}: {e}")))
}

impl Recorder {
    /// Builds the recorder on `store`. Must run inside a tokio runtime (sinks get a task).
    pub async fn open(
        store: Arc<dyn Store>,
        options: RecorderOptions,
    ) -> Result<Self, RecorderError> {
        let origin = match store.meta().await? {
            Some(meta) => Identifier::new(meta.origin).map_err(|e| corrupt("origin", e))?,
            None => options.origin,
        };
        let sinks = (!options.settings.sinks.is_empty()).then(|| {
            let client = tollgate_wire::client::public_roots().map(|tls| {
                tollgate_wire::client::HttpClient::new(tls, std::time::Duration::from_secs(10))
            });
            client.map(|client| {
                crate::sinks::spawn_sinks(
                    options.settings.sinks.clone(),
                    client,
                    options.metrics.clone(),
                    store.clone(),
                )
            })
        });
        let sinks = match sinks {
            Some(Ok(tx)) => Some(tx),
            Some(Err(e)) => return Err(RecorderError::Internal(format!("sink client: {e}"))),
            None => None,
        };
        let recorder = Self {
            store,
            key: options.key,
            trust: std::sync::RwLock::new(Arc::new(options.trust)),
            settings: options.settings,
            origin,
            policy: options.policy,
            clock: options.clock,
            metrics: options.metrics,
            log: Mutex::new(None),
            sinks,
            verify: Semaphore::new(options.verify_threads.max(1)),
            verify_threads: options.verify_threads.max(1),
            retention: tokio::sync::RwLock::new(()),
            key_reports_purged_ms: std::sync::atomic::AtomicU64::new(0),
        };
        // Resume the log now, so a broken store fails at start, not at first ingest.
        {
            let mut guard = recorder.log.lock().await;
            let mut tx = recorder.store.begin_log().await?;
            let (core, meta) = recorder.sync_log(tx.as_mut(), &guard).await?;
            drop(tx);
            recorder.metrics.log_size.set(core.size() as i64);
            *guard = Some((core, meta));
        }
        Ok(recorder)
    }

    /// The log origin.
    pub fn origin(&self) -> &Identifier {
        &self.origin
    }

    /// The storage backend.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Now, by the recorder's clock (unix ms).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The recorder's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::of_signing_key(&self.key)
    }

    /// The trust roots receipts are verified against now.
    pub fn trust_roots(&self) -> Arc<TrustRoots> {
        self.trust.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the trust roots (the cluster's TrustAnchors changed). Batches
    /// already being verified finish against the roots they started with.
    pub fn set_trust_roots(&self, roots: TrustRoots) {
        *self.trust.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(roots);
    }

    /// The recorder's own trust anchor (role `recorder`), for auditors.
    pub fn trust_anchor_yaml(&self) -> String {
        crate::trust::anchor_yaml(
            "tollgate-recorder",
            &self.public_key(),
            KeyRole::Recorder,
            Timestamp::UNIX_EPOCH,
        )
    }

    fn seal_policy(&self) -> SealPolicy {
        SealPolicy {
            max_envelopes: self.settings.seal_max_envelopes,
            max_age_ms: self.settings.seal_max_age_ms,
        }
    }

    /// The log as stored, from the cache if nothing changed it.
    async fn sync_log(
        &self,
        tx: &mut dyn LogTx,
        cached: &CachedLog,
    ) -> Result<(LogCore, Option<LogMetaRow>), RecorderError> {
        let meta = tx.meta().await?;
        if let Some((core, cached_meta)) = cached
            && *cached_meta == meta
        {
            return Ok((core.clone(), meta));
        }
        let Some(m) = &meta else {
            return Ok((LogCore::new(self.origin.clone()), None));
        };
        let state: Option<LogState> = m
            .state_json
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("log state", e))?;
        let last_issued = m.last_issued_at_ms.map(ts).transpose()?;
        let open = match tx.open_segment().await? {
            None => None,
            Some((genesis, envelopes)) => {
                let genesis: Genesis =
                    serde_json::from_str(&genesis).map_err(|e| corrupt("genesis", e))?;
                let envelopes = envelopes
                    .iter()
                    .map(|e| serde_json::from_str::<Envelope>(e))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| corrupt("envelope", e))?;
                Some((genesis, envelopes))
            }
        };
        let origin = Identifier::new(m.origin.clone()).map_err(|e| corrupt("origin", e))?;
        let core = LogCore::restore(origin, state, last_issued, open)
            .map_err(|e| corrupt("log resume", e))?;
        if core.size() != m.size {
            return Err(corrupt(
                "log size",
                format!("stored {} but resumed {}", m.size, core.size()),
            ));
        }
        tracing::info!(size = core.size(), "log resumed from storage");
        Ok((core, meta))
    }

    fn meta_after(
        &self,
        previous: Option<&LogMetaRow>,
        core: &LogCore,
        sealed: &[SealedSegment],
    ) -> Result<LogMetaRow, RecorderError> {
        let (state_json, last_issued_at_ms) = match sealed.last() {
            Some(s) => (
                Some(json(&s.state)?),
                Some(s.checkpoint.checkpoint.issued_at.unix_millis()),
            ),
            None => (
                previous.and_then(|p| p.state_json.clone()),
                previous.and_then(|p| p.last_issued_at_ms),
            ),
        };
        Ok(LogMetaRow {
            origin: previous.map_or_else(|| self.origin.to_string(), |p| p.origin.clone()),
            size: core.size(),
            state_json,
            last_issued_at_ms,
        })
    }

    fn seal_rows(sealed: &[SealedSegment]) -> Result<Vec<SegmentSealRow>, RecorderError> {
        sealed
            .iter()
            .map(|s| {
                Ok(SegmentSealRow {
                    index: s.seal.segment_index.get(),
                    seal_json: json(&s.seal)?,
                    checkpoint_json: json(&s.checkpoint)?,
                    sealed_at_ms: s.seal.sealed_at.unix_millis(),
                    envelope_count: s.seal.envelope_count.get(),
                    log_state_json: json(&s.state)?,
                })
            })
            .collect()
    }

    fn after_commit(&self, core: &LogCore, sealed: Vec<SealedSegment>) {
        self.metrics.log_size.set(core.size() as i64);
        self.metrics
            .open_segment_envelopes
            .set(core.open_segment().map_or(0, |o| o.count as i64));
        for s in sealed {
            self.metrics.segments_sealed.inc();
            tracing::info!(
                segment = s.seal.segment_index.get(),
                size = s.checkpoint.checkpoint.size.get(),
                "segment sealed"
            );
            if let Some(tx) = &self.sinks {
                let _ = tx.send(s.checkpoint);
            }
        }
    }

    /// Verifies and stores a `POST /v1/receipts` body.
    pub async fn ingest(
        &self,
        body: &[u8],
        caller: &Caller,
    ) -> Result<IngestResponse, RecorderError> {
        let batch = parse_batch(body, self.settings.max_batch_receipts)?;
        self.policy
            .check_ship(caller, &batch.certificate.certificate)?;
        let certificate = batch.certificate.clone();
        let verified = {
            let _permit = self
                .verify
                .acquire()
                .await
                .map_err(|_| RecorderError::Unavailable("shutting down".into()))?;
            let trust = self.trust_roots();
            let threads = self.verify_threads;
            tokio::task::spawn_blocking(move || verify_batch(batch, &trust, threads))
                .await
                .map_err(|e| RecorderError::Internal(format!("verification task: {e}")))?
        };
        let Some(stream_id) = verified.stream_id.clone() else {
            // Nothing readable: every envelope is refused, nothing is stored.
            let rejected: Vec<_> = verified
                .envelopes
                .into_iter()
                .enumerate()
                .filter_map(|(index, (seq, v))| {
                    v.err().map(|r| crate::ingest::Rejection {
                        index,
                        seq,
                        reason: r.reason,
                        message: r.message,
                    })
                })
                .collect();
            self.count_outcome(0, 0, &rejected);
            return Ok(IngestResponse {
                stream_id: None,
                accepted: 0,
                duplicates: 0,
                rejected,
                next_seq: 0,
                closed: false,
            });
        };
        let now = self.clock.now_ms();
        let mut guard = self.log.lock().await;
        let mut tx = self.store.begin_log().await?;
        let (core, meta) = self.sync_log(tx.as_mut(), &guard).await?;
        let sid = stream_id.as_str();
        let stream = tx.stream(sid).await?;
        let next_seq = stream.as_ref().map_or(1, |s| s.next_seq);
        let last = match next_seq {
            0 | 1 => None,
            n => match tx.envelope_json(sid, n - 1).await? {
                Some(text) => Some(
                    serde_json::from_str::<Envelope>(&text).map_err(|e| corrupt("envelope", e))?,
                ),
                // Retention deleted a closed stream whole: nothing more can be
                // appended, and what is resent cannot be compared any more.
                None if stream.as_ref().is_some_and(|s| s.closed) => {
                    drop(tx);
                    let rejected: Vec<_> = verified
                        .envelopes
                        .into_iter()
                        .enumerate()
                        .map(|(index, (seq, _))| crate::ingest::Rejection {
                            index,
                            seq,
                            reason: crate::ingest::RejectReason::StreamClosed,
                            message: format!(
                                "stream {sid} is closed and retention deleted its records"
                            ),
                        })
                        .collect();
                    self.count_outcome(0, 0, &rejected);
                    return Ok(IngestResponse {
                        stream_id: Some(sid.to_string()),
                        accepted: 0,
                        duplicates: 0,
                        rejected,
                        next_seq,
                        closed: true,
                    });
                }
                None => {
                    return Err(corrupt(
                        "stream",
                        format!("{sid} has no envelope at seq {}", n - 1),
                    ));
                }
            },
        };
        let ok = || {
            verified
                .envelopes
                .iter()
                .filter_map(|(_, v)| v.as_ref().ok())
        };
        let mut stored = StoredStream {
            last: last.as_ref(),
            ..Default::default()
        };
        if let Some(min) = ok().map(|e| e.seq.get()).filter(|s| *s < next_seq).min() {
            for (seq, hash) in tx.hashes(sid, min, next_seq - 1).await? {
                let hash =
                    tollgate_evidence::Sha256Hex::parse(&hash).map_err(|e| corrupt("hash", e))?;
                stored.stored_hashes.insert(seq, hash);
            }
        }
        let new_ids: Vec<String> = ok()
            .filter(|e| e.seq.get() >= next_seq)
            .filter_map(|e| e.receipt().map(|r| r.body.id.as_str().to_string()))
            .collect();
        if !new_ids.is_empty() {
            stored.known_receipt_ids = tx
                .known_receipt_ids(&new_ids)
                .await?
                .into_iter()
                .collect::<HashSet<_>>();
        }
        let mut raw = verified.raw;
        let plan = plan_chain(&stream_id, verified.envelopes, &stored)
            .map_err(|e| RecorderError::Internal(format!("chain: {e}")))?;
        let cert = &certificate.certificate;
        let faults: Vec<FaultRow> = plan
            .faults
            .iter()
            .map(|f| FaultRow {
                fault: f.clone(),
                namespace: cert.namespace.as_str().to_string(),
                detected_at_ms: now,
            })
            .collect();
        let response = IngestResponse {
            stream_id: Some(stream_id.to_string()),
            accepted: plan.accepted.len() as u64,
            duplicates: plan.duplicates,
            rejected: plan.rejected.clone(),
            next_seq: plan.next_seq,
            closed: plan.closed,
        };
        if plan.accepted.is_empty() && faults.is_empty() {
            drop(tx);
            *guard = Some((core, meta));
            self.count_outcome(0, plan.duplicates, &plan.rejected);
            return Ok(response);
        }
        let mut new_core = core.clone();
        let outcome = new_core.append(&plan.accepted, self.seal_policy(), ts(now)?, &self.key)?;
        let envelopes: Vec<EnvelopeRow> = plan
            .accepted
            .iter()
            .zip(&plan.accepted_indices)
            .zip(&outcome.positions)
            .map(|((e, i), p)| match raw.get_mut(*i) {
                Some(json) => Ok(EnvelopeRow::with_json(
                    e,
                    *p,
                    std::mem::take(json).into_string(),
                )),
                None => EnvelopeRow::new(e, *p),
            })
            .collect::<Result<_, _>>()?;
        let stream_row = if plan.accepted.is_empty() {
            None
        } else {
            let times = plan.accepted.iter().map(record_time);
            let (lo, hi) = times.fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
            Some(StreamRow {
                stream_id: sid.to_string(),
                key_id: cert.key_id.to_string(),
                namespace: cert.namespace.as_str().to_string(),
                service_account: cert.service_account.as_str().to_string(),
                pod: cert.pod_name.as_str().to_string(),
                next_seq: plan.next_seq,
                closed: plan.closed,
                first_record_ms: stream.as_ref().map_or(lo, |s| s.first_record_ms.min(lo)),
                last_record_ms: stream.as_ref().map_or(hi, |s| s.last_record_ms.max(hi)),
            })
        };
        let new_meta = self.meta_after(meta.as_ref(), &new_core, &outcome.sealed)?;
        let write = LogWrite {
            certificate: if plan.accepted.is_empty() {
                None
            } else {
                Some(CertificateRow::new(&certificate)?)
            },
            stream: stream_row,
            envelopes,
            opened: outcome
                .opened
                .iter()
                .map(|g| {
                    Ok(SegmentOpenRow {
                        index: g.segment_index.get(),
                        genesis_json: json(g)?,
                        created_at_ms: g.created_at.unix_millis(),
                    })
                })
                .collect::<Result<_, RecorderError>>()?,
            sealed: Self::seal_rows(&outcome.sealed)?,
            meta: new_meta.clone(),
            faults,
        };
        tx.write(&write).await?;
        tx.commit().await?;
        self.after_commit(&new_core, outcome.sealed);
        *guard = Some((new_core, Some(new_meta)));
        drop(guard);
        for f in &plan.faults {
            self.metrics
                .chain_faults
                .get_or_create(&KindLabel {
                    kind: f.kind.as_str(),
                })
                .inc();
            tracing::warn!(stream_id = %f.stream_id, seq = f.seq, kind = f.kind.as_str(), "chain fault flagged");
        }
        self.count_outcome(plan.accepted.len() as u64, plan.duplicates, &plan.rejected);
        Ok(response)
    }

    fn count_outcome(&self, accepted: u64, duplicates: u64, rejected: &[crate::ingest::Rejection]) {
        let m = &self.metrics;
        m.envelopes
            .get_or_create(&ResultLabel { result: "accepted" })
            .inc_by(accepted);
        m.envelopes
            .get_or_create(&ResultLabel {
                result: "duplicate",
            })
            .inc_by(duplicates);
        m.envelopes
            .get_or_create(&ResultLabel { result: "rejected" })
            .inc_by(rejected.len() as u64);
        for r in rejected {
            m.rejections
                .get_or_create(&ReasonLabel {
                    reason: r.reason.as_str(),
                })
                .inc();
        }
    }

    async fn seal_with(&self, due_only: bool) -> Result<Option<SignedCheckpoint>, RecorderError> {
        let now = ts(self.clock.now_ms())?;
        let mut guard = self.log.lock().await;
        if due_only
            && let Some((core, _)) = guard.as_ref()
            && core
                .clone()
                .seal_if_due(self.seal_policy(), now, &self.key)?
                .is_none()
        {
            // Nothing due as far as this process knows; a replica's changes are
            // seen on its own timer.
            return Ok(None);
        }
        let mut tx = self.store.begin_log().await?;
        let (core, meta) = self.sync_log(tx.as_mut(), &guard).await?;
        let mut new_core = core.clone();
        let sealed = if due_only {
            new_core.seal_if_due(self.seal_policy(), now, &self.key)?
        } else {
            new_core.seal_now(now, &self.key)?
        };
        let Some(sealed) = sealed else {
            drop(tx);
            *guard = Some((core, meta));
            return Ok(None);
        };
        let sealed = vec![sealed];
        let new_meta = self.meta_after(meta.as_ref(), &new_core, &sealed)?;
        let write = LogWrite {
            certificate: None,
            stream: None,
            envelopes: Vec::new(),
            opened: Vec::new(),
            sealed: Self::seal_rows(&sealed)?,
            meta: new_meta.clone(),
            faults: Vec::new(),
        };
        tx.write(&write).await?;
        tx.commit().await?;
        let checkpoint = sealed[0].checkpoint.clone();
        self.after_commit(&new_core, sealed);
        *guard = Some((new_core, Some(new_meta)));
        Ok(Some(checkpoint))
    }

    /// Seals the open segment if it is older than the sealing age.
    pub async fn seal_if_due(&self) -> Result<Option<SignedCheckpoint>, RecorderError> {
        self.seal_with(true).await
    }

    /// Seals the open segment now, if it holds anything.
    pub async fn seal_now(&self) -> Result<Option<SignedCheckpoint>, RecorderError> {
        self.seal_with(false).await
    }

    /// The newest signed checkpoint, its signature checked with this
    /// recorder's key, and how far each checkpoint sink has got. Any
    /// authenticated caller may read it: it holds sizes and hashes only.
    pub async fn latest_checkpoint(&self) -> Result<CheckpointAnswer, RecorderError> {
        let Some(index) = self.store.segment_bounds().await?.last_sealed else {
            return Ok(CheckpointAnswer { checkpoint: None });
        };
        let row = self.sealed_segment(index).await?;
        let signed: SignedCheckpoint =
            crate::export::parse("checkpoint", &row.sealed.checkpoint_json)?;
        // A checkpoint signed before a key rotation is not this key's to judge.
        let signature_verified = (signed.key_id == self.public_key().key_id())
            .then(|| signed.verify_signature(&self.public_key()).is_ok());
        let sinks = self
            .store
            .sink_progress()
            .await?
            .into_iter()
            .map(|(name, size)| SinkProgress { name, size })
            .collect();
        let c = &signed.checkpoint;
        Ok(CheckpointAnswer {
            checkpoint: Some(CheckpointView {
                origin: c.origin.to_string(),
                segment: index,
                size: c.size.get(),
                root: c.root.to_string(),
                issued_at: c.issued_at.to_canonical_string(),
                key_id: signed.key_id.to_string(),
                signature_verified,
                sinks,
            }),
        })
    }

    /// A stream's position.
    pub async fn stream_status(
        &self,
        stream_id: &str,
        caller: &Caller,
    ) -> Result<StreamStatus, RecorderError> {
        let row = self.store.stream(stream_id).await?;
        match row {
            Some(row) => {
                self.policy.check_stream(caller, &row.namespace)?;
                Ok(StreamStatus {
                    stream_id: row.stream_id,
                    next_seq: row.next_seq,
                    closed: row.closed,
                })
            }
            None => Err(RecorderError::NotFound(format!(
                "stream {stream_id} is unknown"
            ))),
        }
    }

    /// Answers a usage query.
    pub async fn usage(
        &self,
        query: &UsageQuery,
        caller: &Caller,
    ) -> Result<UsageReport, RecorderError> {
        self.check_usage_read(caller, query.namespace.as_deref())?;
        crate::usage::report(self.store.as_ref(), query, self.clock.now_ms()).await
    }

    /// Stores a gateway's key health report (`body`), replacing its last.
    pub async fn report_key_health(
        &self,
        body: &[u8],
        caller: &Caller,
    ) -> Result<(), RecorderError> {
        use std::sync::atomic::Ordering;
        let reporter = self.policy.key_reporter(caller)?;
        let keys = crate::key_health::parse_report(body)?;
        let now = self.clock.now_ms();
        self.store.put_key_report(&reporter, &keys, now).await?;
        // Reports of pods that are gone are deleted at most once a minute,
        // whether or not anyone reads them.
        let last = self.key_reports_purged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000
            && self
                .key_reports_purged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let before = now.saturating_sub(crate::key_health::REPORT_TTL_MS);
            if let Err(e) = self.store.purge_key_reports(before).await {
                tracing::warn!(error = %e, "stale key health reports not deleted; trying again in a minute");
            }
        }
        Ok(())
    }

    /// What the gateways' recent reports say of each provider key (readers only).
    pub async fn key_health(
        &self,
        caller: &Caller,
    ) -> Result<crate::key_health::KeyHealthAnswer, RecorderError> {
        use crate::key_health::{MAX_CELLS, REPORT_TTL_MS, answer};
        self.policy.check_read(caller)?;
        let oldest = self.clock.now_ms().saturating_sub(REPORT_TTL_MS);
        let cells = self.store.key_health(oldest, MAX_CELLS + 1).await?;
        Ok(answer(cells, MAX_CELLS))
    }

    /// Whether `caller` may read the usage of `namespace` (every namespace:
    /// `None`): readers may read anything, a ServiceAccount its own
    /// namespace, a user the API server vouched for the namespaces it was
    /// allowed.
    pub fn check_usage_read(
        &self,
        caller: &Caller,
        namespace: Option<&str>,
    ) -> Result<(), RecorderError> {
        if let Caller::Reader {
            namespaces: Some(_),
            name,
        } = caller
        {
            let ns = namespace.ok_or_else(|| {
                RecorderError::Forbidden(format!(
                    "{name} may read usage of single namespaces only; ask with -n NAMESPACE"
                ))
            })?;
            return self.policy.check_read_namespace(caller, ns);
        }
        let own_namespace = matches!(caller, Caller::ServiceAccount { namespace: own, .. } if Some(own.as_str()) == namespace);
        if own_namespace {
            return Ok(());
        }
        self.policy.check_read(caller)
    }

    /// Builds an evidence bundle for `range` (sealing the open segment if the range
    /// reaches into it): a whole-log bundle when it starts at segment 0, else a
    /// range bundle based on the checkpoint before its first segment.
    pub async fn export(
        &self,
        range: ExportRange,
        caller: &Caller,
    ) -> Result<Bundle, RecorderError> {
        self.policy.check_read(caller)?;
        // This process's retention waits for the export; another replica's may
        // not, and then the export fails in a way worth retrying.
        let _retention = self.retention.read().await;
        let (first, last) = self.segments_of(range).await?;
        let pruned_before = self.store.segment_bounds().await?.last_pruned;
        match self.build_bundle(first, last).await {
            Err(e)
                if self.store.segment_bounds().await.is_ok_and(|b| {
                    b.first_kept.is_none_or(|k| k > first) || b.last_pruned != pruned_before
                }) =>
            {
                Err(RecorderError::Unavailable(format!(
                    "retention deleted segments of this range while it was exported ({e}); retry"
                )))
            }
            outcome => outcome,
        }
    }

    /// The segments `range` covers, `first..=last`; seals the open segment first
    /// if the range reaches into it.
    async fn segments_of(&self, range: ExportRange) -> Result<(u64, u64), RecorderError> {
        let until_ms = match range {
            ExportRange::Time { since_ms, until_ms } => {
                if since_ms.is_some_and(|s| s >= until_ms) {
                    return Err(RecorderError::BadRequest(
                        "since must be before until".into(),
                    ));
                }
                Some(until_ms)
            }
            ExportRange::After { until_ms, .. } => until_ms,
            ExportRange::Everything | ExportRange::Segments { .. } => None,
        };
        let last = match (range, until_ms) {
            (ExportRange::Segments { last, .. }, _) => Some(last),
            (_, Some(until_ms)) => Some(
                self.store
                    .last_segment_before(until_ms)
                    .await?
                    .ok_or_else(|| RecorderError::NotFound("no receipts before until".into()))?,
            ),
            (_, None) => None,
        };
        let bounds = self.store.segment_bounds().await?;
        if last.is_none_or(|l| bounds.last_sealed.is_none_or(|s| s < l)) {
            self.seal_now().await?;
        }
        let bounds = self.store.segment_bounds().await?;
        let (Some(last_sealed), Some(first_kept)) = (bounds.last_sealed, bounds.first_kept) else {
            return Err(RecorderError::NotFound("no segment to export".into()));
        };
        let last = last.unwrap_or(last_sealed);
        if last > last_sealed {
            return Err(RecorderError::NotFound(format!(
                "segment {last} does not exist"
            )));
        }
        let first = match range {
            ExportRange::Everything | ExportRange::Time { since_ms: None, .. } => first_kept,
            // The first segment holding a receipt that started since then, by
            // the receipts' own times (as `until`), so clocks need not agree.
            ExportRange::Time {
                since_ms: Some(since_ms),
                ..
            } => {
                // Receipts since then may have been in segments retention
                // deleted (sealed after `since`): say so rather than export part.
                if let Some(pruned) = bounds.last_pruned {
                    let row = self.store.segment(pruned).await?;
                    if row.is_some_and(|r| r.sealed_at_ms >= since_ms) {
                        return Err(RecorderError::NotFound(format!(
                            "retention deleted receipts since then (segments up to {pruned}); \
                             the oldest kept segment is {first_kept}"
                        )));
                    }
                }
                self.store
                    .first_segment_started_since(since_ms, first_kept)
                    .await?
                    .unwrap_or(last_sealed + 1)
            }
            ExportRange::Segments { first, .. } => first,
            ExportRange::After {
                size,
                checkpoint_hash,
                ..
            } => {
                self.segment_after_checkpoint(size, &checkpoint_hash, last_sealed)
                    .await?
            }
        };
        if first < first_kept {
            return Err(RecorderError::NotFound(format!(
                "the range starts at segment {first}, but retention deleted the segments before \
                 {first_kept}"
            )));
        }
        if first > last {
            return Err(RecorderError::NotFound(match range {
                ExportRange::After { size, until_ms, .. } => match until_ms {
                    None => {
                        format!("the log holds nothing after the checkpoint of size {size} yet")
                    }
                    Some(_) => format!(
                        "no receipt after the checkpoint of size {size} started before until"
                    ),
                },
                _ => format!("no sealed segment in the range (segments {first}..{last})"),
            }));
        }
        Ok((first, last))
    }

    /// The bundle of sealed segments `first..=last`.
    async fn build_bundle(&self, first: u64, last: u64) -> Result<Bundle, RecorderError> {
        let rows = self.store.sealed_segments(first, Some(last)).await?;
        if rows.len() as u64 != last - first + 1 {
            return Err(corrupt(
                "segments",
                format!("{} stored for {first}..={last}", rows.len()),
            ));
        }
        check_bounds(&rows)?;
        let base = match first {
            0 => None,
            first => Some(self.range_base(first, last).await?),
        };
        let mut segments = Vec::with_capacity(rows.len());
        for row in rows {
            let envelopes = self.store.segment_envelopes(row.index).await?;
            segments.push((row, envelopes));
        }
        let certificates = self.store.certificates_between(first, last).await?;
        let created_at = ts(self.clock.now_ms())?;
        let origin = self.origin.clone();
        let key = self.key.clone();
        tokio::task::spawn_blocking(move || {
            assemble(origin, created_at, base, segments, &certificates, &key)
        })
        .await
        .map_err(|e| RecorderError::Internal(format!("bundle task: {e}")))?
    }

    /// One retention pass: deletes the envelopes of sealed segments older than the
    /// retention period that every checkpoint sink holds a checkpoint covering,
    /// oldest first (see [`crate::retention`]).
    pub async fn apply_retention(&self) -> Result<RetentionReport, RecorderError> {
        let mut report = RetentionReport::default();
        let Some(keep_ms) = self.settings.retention_ms else {
            return Ok(report);
        };
        let _exports_wait = self.retention.write().await;
        let now_ms = self.clock.now_ms();
        let bounds = self.store.segment_bounds().await?;
        let aged = self
            .store
            .last_segment_sealed_before(now_ms.saturating_sub(keep_ms))
            .await?;
        let (Some(aged), Some(first_kept)) = (aged, bounds.first_kept) else {
            self.metrics.segments_awaiting_sink.set(0);
            return Ok(report);
        };
        if aged < first_kept {
            self.metrics.segments_awaiting_sink.set(0);
            return Ok(report);
        }
        let delivered = self.store.sink_progress().await?;
        let through = match covered_size(&self.settings.sinks, &delivered) {
            None => {
                report.blocked = Some(
                    "no checkpoint sink is configured: retention deletes only segments a sink \
                     holds a checkpoint for"
                        .into(),
                );
                None
            }
            Some(covered) => self
                .last_segment_within(covered, aged)
                .await?
                .map(|(index, _)| index),
        };
        let through = through.filter(|t| *t >= first_kept);
        report.awaiting_sink = match through {
            Some(through) => aged - through,
            None => aged - first_kept + 1,
        };
        if through.is_none() && report.blocked.is_none() {
            report.blocked = Some("no sink holds a checkpoint covering them yet".into());
        }
        self.metrics
            .segments_awaiting_sink
            .set(i64::try_from(report.awaiting_sink).unwrap_or(i64::MAX));
        let Some(through) = through else {
            tracing::warn!(
                segments = report.awaiting_sink,
                reason = report.blocked.as_deref().unwrap_or_default(),
                "sealed segments past retention are kept"
            );
            return Ok(report);
        };
        // A bounded pass, so a first pass over a long history does not hold
        // exports back; the next pass goes on.
        let through = through.min(first_kept + MAX_PRUNED_PER_PASS - 1);
        // Later range exports start after `through`: make sure its frontier is
        // stored while its envelopes can still rebuild it.
        self.checkpoint_and_frontier(through).await?;
        for index in first_kept..=through {
            self.store.prune_segment(index, now_ms).await?;
            self.metrics.segments_pruned.inc();
            report.pruned.push(index);
        }
        tracing::info!(
            first = first_kept,
            last = through,
            awaiting_sink = report.awaiting_sink,
            "retention deleted sealed segments"
        );
        Ok(report)
    }

    /// Sealed segment `index`, which must exist (kept or pruned).
    async fn sealed_segment(&self, index: u64) -> Result<SegmentRow, RecorderError> {
        self.store
            .segment(index)
            .await?
            .ok_or_else(|| corrupt("segments", format!("sealed segment {index} is missing")))
    }

    /// The first segment after the caller's checkpoint, which must be this log's.
    async fn segment_after_checkpoint(
        &self,
        size: u64,
        checkpoint_hash: &Sha256Hex,
        last_sealed: u64,
    ) -> Result<u64, RecorderError> {
        let found = self.last_segment_within(size, last_sealed).await?;
        // A checkpoint of this log always has its exact size here; anything else
        // is another log's, or this log lost what the auditor saw.
        let (index, checkpoint) = match found {
            Some((index, checkpoint)) if checkpoint.checkpoint.size.get() == size => {
                (index, checkpoint)
            }
            Some((index, checkpoint)) if index == last_sealed => {
                return Err(RecorderError::Conflict(format!(
                    "the checkpoint you hold covers {size} envelopes, this log's newest covers {}: \
                     the log is shorter than what you saw (cut, or restored from a backup)",
                    checkpoint.checkpoint.size
                )));
            }
            _ => {
                return Err(RecorderError::Conflict(format!(
                    "this log has no checkpoint of size {size}: the checkpoint you hold is \
                     another log's, or this log was rewritten"
                )));
            }
        };
        let hash = checkpoint
            .checkpoint
            .hash()
            .map_err(|e| corrupt("checkpoint", e))?;
        if hash != *checkpoint_hash {
            return Err(RecorderError::Conflict(format!(
                "the checkpoint of size {size} you hold has hash {checkpoint_hash}, this log's has \
                 {hash}: it is another log's, or this log was rewritten"
            )));
        }
        Ok(index + 1)
    }

    /// The last sealed segment at or before `last` whose checkpoint covers at most
    /// `size` envelopes, with that checkpoint (binary search: sizes grow with the
    /// index, and pruned segments keep their checkpoints).
    async fn last_segment_within(
        &self,
        size: u64,
        last: u64,
    ) -> Result<Option<(u64, SignedCheckpoint)>, RecorderError> {
        let mut found = None;
        let (mut low, mut high) = (0u64, last.saturating_add(1));
        while low < high {
            let middle = low + (high - low) / 2;
            let row = self.sealed_segment(middle).await?;
            let checkpoint: SignedCheckpoint =
                crate::export::parse("checkpoint", &row.sealed.checkpoint_json)?;
            if checkpoint.checkpoint.size.get() <= size {
                found = Some((middle, checkpoint));
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(found)
    }

    /// What a range of segments `first..=last` continues: the checkpoint before
    /// it, the log's frontier there, and for each stream that began before it the
    /// stream's envelope just before the range, proven in its segment, with the
    /// headers that chain that segment to the base.
    async fn range_base(&self, first: u64, last: u64) -> Result<RangeBase, RecorderError> {
        let (checkpoint, frontier) = self.checkpoint_and_frontier(first - 1).await?;
        let mut segments: std::collections::HashMap<u64, (Vec<Sha256Hex>, u64)> =
            std::collections::HashMap::new();
        let mut continuations = Vec::new();
        for (stream_id, seq) in self.store.continued_streams(first, last).await? {
            let missing = || {
                corrupt(
                    "envelopes",
                    format!(
                        "stream {stream_id} has no envelope {} before segment {first}, so the range \
                         cannot show it continues",
                        seq - 1
                    ),
                )
            };
            let placed = self
                .store
                .envelope_at(&stream_id, seq - 1)
                .await?
                .filter(|p| p.segment_index < first)
                .ok_or_else(missing)?;
            let envelope: Envelope = crate::export::parse("envelope", &placed.json)?;
            if let std::collections::hash_map::Entry::Vacant(slot) =
                segments.entry(placed.segment_index)
            {
                slot.insert(self.segment_hashes(placed.segment_index).await?);
            }
            let (hashes, first_leaf) = segments.get(&placed.segment_index).ok_or_else(missing)?;
            let index = placed
                .log_index
                .checked_sub(*first_leaf)
                .ok_or_else(missing)?;
            continuations.push(Continuation::prove(
                envelope,
                placed.segment_index,
                index,
                hashes,
            )?);
        }
        let oldest = segments.keys().copied().min().unwrap_or(first);
        if first - oldest > MAX_EXPORT_SEGMENTS {
            return Err(RecorderError::TooLarge {
                what: "segment headers before the range (a stream reaches far back)",
                limit: MAX_EXPORT_SEGMENTS,
            });
        }
        let mut headers = Vec::new();
        for index in oldest..first {
            let row = self.sealed_segment(index).await?;
            headers.push(SegmentHeader {
                genesis: crate::export::parse("genesis", &row.sealed.genesis_json)?,
                seal: crate::export::parse("seal", &row.sealed.seal_json)?,
            });
        }
        Ok(RangeBase {
            checkpoint,
            frontier,
            headers,
            continuations,
        })
    }

    /// Segment `index`'s envelope hashes in log order (kept in its row once
    /// retention pruned it), and its first log position.
    async fn segment_hashes(&self, index: u64) -> Result<(Vec<Sha256Hex>, u64), RecorderError> {
        let row = self.sealed_segment(index).await?;
        let genesis: Genesis = crate::export::parse("genesis", &row.sealed.genesis_json)?;
        let texts: Vec<String> = if row.pruned {
            let joined = self.store.pruned_hashes(index).await?.ok_or_else(|| {
                corrupt(
                    "segments",
                    format!("segment {index} was pruned without its envelope hashes"),
                )
            })?;
            joined
                .as_bytes()
                .chunks(64)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()
        } else {
            self.store.leaf_hashes(index, index).await?
        };
        let hashes = texts
            .iter()
            .map(|h| Sha256Hex::parse(h).map_err(|e| corrupt("hash", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if hashes.len() as u64 != row.sealed.envelope_count {
            return Err(corrupt(
                "segments",
                format!(
                    "segment {index} has {} envelope hashes for {} envelopes",
                    hashes.len(),
                    row.sealed.envelope_count
                ),
            ));
        }
        Ok((hashes, genesis.first_leaf_index.get()))
    }

    /// The checkpoint of sealed segment `index` and the log's frontier after it,
    /// from the state stored with its seal. Segments sealed before schema version
    /// 4 have none: it is rebuilt from the nearest stored state and the envelope
    /// hashes after it, checked against the checkpoint, and stored.
    async fn checkpoint_and_frontier(
        &self,
        index: u64,
    ) -> Result<(SignedCheckpoint, Vec<Sha256Hex>), RecorderError> {
        let row = self.sealed_segment(index).await?;
        let checkpoint: SignedCheckpoint =
            crate::export::parse("checkpoint", &row.sealed.checkpoint_json)?;
        if let Some(json) = &row.log_state_json {
            let state: LogState = crate::export::parse("log state", json)?;
            return Ok((checkpoint, state.frontier));
        }
        let (mut accumulator, from) = match self.store.latest_state_upto(index).await? {
            Some((at, json)) => {
                let state: LogState = crate::export::parse("log state", &json)?;
                let accumulator =
                    MerkleAccumulator::from_frontier(state.size.get(), state.frontier)
                        .ok_or_else(|| corrupt("log state", format!("segment {at}")))?;
                (accumulator, at + 1)
            }
            None => (MerkleAccumulator::new(), 0),
        };
        for hash in self.store.leaf_hashes(from, index).await? {
            let hash = Sha256Hex::parse(&hash).map_err(|e| corrupt("hash", e))?;
            accumulator.push(tollgate_evidence::segment::envelope_leaf(&hash));
        }
        if accumulator.size() != checkpoint.checkpoint.size.get()
            || accumulator.root() != checkpoint.checkpoint.root
        {
            return Err(corrupt(
                "log state",
                format!(
                    "the envelopes up to segment {index} do not rebuild its checkpoint \
                     (retention may have deleted them)"
                ),
            ));
        }
        let seal: tollgate_evidence::Seal = crate::export::parse("seal", &row.sealed.seal_json)?;
        let state = LogState {
            origin: self.origin.clone(),
            next_segment_index: tollgate_evidence::SafeU64::new(index + 1)
                .map_err(|e| corrupt("segment index", e))?,
            size: checkpoint.checkpoint.size,
            frontier: accumulator.frontier().to_vec(),
            prev_seal_hash: PrevHash::Hash(seal.hash().map_err(|e| corrupt("seal", e))?),
            prev_checkpoint_hash: PrevHash::Hash(
                checkpoint
                    .checkpoint
                    .hash()
                    .map_err(|e| corrupt("checkpoint", e))?,
            ),
        };
        self.store.set_log_state(index, &json(&state)?).await?;
        Ok((checkpoint, state.frontier))
    }

    fn lease_metric(&self, response: &LeaseResponse) {
        let decision = match (response.granted, response.shadow_denied) {
            (true, false) => "granted",
            (true, true) => "shadow_denied",
            (false, _) => "denied",
        };
        self.metrics
            .leases
            .get_or_create(&DecisionLabel { decision })
            .inc();
    }

    /// Grants a new lease.
    pub async fn grant(
        &self,
        request: &GrantRequest,
        caller: &Caller,
    ) -> Result<LeaseResponse, RecorderError> {
        self.policy.check_lease(caller, &request.quota_id)?;
        let lease_id = uuid::Uuid::now_v7().hyphenated().to_string();
        let response = crate::quota::grant(
            self.store.as_ref(),
            request,
            &caller.name(),
            lease_id,
            self.clock.now_ms(),
        )
        .await?;
        self.lease_metric(&response);
        Ok(response)
    }

    /// Renews a lease.
    pub async fn renew(
        &self,
        lease_id: &str,
        request: &RenewRequest,
        caller: &Caller,
    ) -> Result<LeaseResponse, RecorderError> {
        let response = crate::quota::renew(
            self.store.as_ref(),
            lease_id,
            request,
            &caller.name(),
            self.clock.now_ms(),
        )
        .await?;
        self.lease_metric(&response);
        Ok(response)
    }

    /// Returns a lease.
    pub async fn give_back(
        &self,
        lease_id: &str,
        request: &ReturnRequest,
        caller: &Caller,
    ) -> Result<ReturnResponse, RecorderError> {
        crate::quota::give_back(
            self.store.as_ref(),
            lease_id,
            request,
            &caller.name(),
            self.clock.now_ms(),
        )
        .await
    }

    /// Whether storage answers.
    pub async fn ready(&self) -> Result<(), RecorderError> {
        Ok(self.store.ping().await?)
    }
}

fn record_time(e: &Envelope) -> u64 {
    match &e.record {
        tollgate_evidence::EnvelopeRecord::Receipt(r) => r.body.started_at.unix_millis(),
        tollgate_evidence::EnvelopeRecord::Decision(d) => d.decision.started_at.unix_millis(),
        tollgate_evidence::EnvelopeRecord::Close(c) => c.close.closed_at.unix_millis(),
    }
}
