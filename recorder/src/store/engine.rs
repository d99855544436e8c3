//! The store, written once over a [`Driver`]: every [`Store`], [`LogTx`] and
//! [`QuotaTx`] method is a statement from [`sql`](super::sql) and a row
//! mapping from [`rows`](super::rows). A driver only runs statements, reads
//! outside transactions, and begins and commits transactions with its own
//! locks.

use std::sync::Arc;

use tollgate_wire::quota_math::Amounts;

use super::rows::{self, Row, Statement, Value, params, with_key};
use super::sql::{Dialect, Stmt};
use super::{
    CellQuery, FaultRow, KeyHealthCell, LeaseRow, LimitKey, LogMetaRow, LogTx, LogWrite,
    PlacedEnvelope, QuotaTx, ReportedKey, SealedSegmentRow, SegmentBounds, SegmentRow, Store,
    StoreError, StoreFuture, StoredOpenSegment, StreamRow, StreamSummary, UsageCell,
};

/// Which lock a transaction starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxLock {
    /// The log: one appender at a time (across replicas on PostgreSQL).
    Log,
    /// A quota limit: the engine then locks the limit's row.
    Limit,
}

/// Runs statements on one database.
pub trait Driver: Send + Sync + std::fmt::Debug + 'static {
    type Tx: DriverTx + 'static;
    fn dialect(&self) -> Dialect;
    /// Begins a transaction holding `lock`.
    fn begin(&self, lock: TxLock) -> StoreFuture<'_, Self::Tx>;
    /// A read outside any transaction.
    fn read(&self, stmt: Stmt, params: Vec<Value>) -> StoreFuture<'_, Vec<Row>>;
}

/// An open transaction. Dropped without [`DriverTx::commit`], it rolls back.
pub trait DriverTx: Send {
    fn query(&mut self, stmt: Stmt, params: Vec<Value>) -> StoreFuture<'_, Vec<Row>>;
    /// Runs statements in order, in one round trip where the driver can.
    fn execute(&mut self, batch: Vec<Statement>) -> StoreFuture<'_, ()>;
    fn commit(self) -> StoreFuture<'static, ()>;
}

/// A [`Store`] over a driver.
#[derive(Debug)]
pub struct Engine<D> {
    pub(super) driver: Arc<D>,
}

impl<D> Clone for Engine<D> {
    fn clone(&self) -> Self {
        Self {
            driver: self.driver.clone(),
        }
    }
}

fn first<T>(
    rows: Vec<Row>,
    map: impl FnOnce(&Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    rows.first().map(map).transpose()
}

fn all<T>(rows: &[Row], map: impl Fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(map).collect()
}

impl<D: Driver> Engine<D> {
    async fn read_rows(&self, stmt: Stmt, params: Vec<Value>) -> Result<Vec<Row>, StoreError> {
        self.driver.read(stmt, params).await
    }
}

impl<D: Driver> Store for Engine<D> {
    fn backend(&self) -> &'static str {
        match self.driver.dialect() {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    fn begin_log(&self) -> StoreFuture<'_, Box<dyn LogTx>> {
        Box::pin(async move {
            let tx = self.driver.begin(TxLock::Log).await?;
            Ok(Box::new(EngineLogTx {
                tx,
                dialect: self.driver.dialect(),
            }) as Box<dyn LogTx>)
        })
    }

    fn begin_quota<'a>(&'a self, key: &'a LimitKey) -> StoreFuture<'a, Box<dyn QuotaTx>> {
        Box::pin(async move {
            let mut tx = self.driver.begin(TxLock::Limit).await?;
            tx.execute(vec![(Stmt::InsertLimit, rows::key_params(key))])
                .await?;
            tx.query(Stmt::LockLimit, rows::key_params(key)).await?;
            Ok(Box::new(EngineQuotaTx {
                tx,
                key: key.clone(),
            }) as Box<dyn QuotaTx>)
        })
    }

    fn lease_key<'a>(&'a self, lease_id: &'a str) -> StoreFuture<'a, Option<LimitKey>> {
        Box::pin(async move {
            let rows = self.read_rows(Stmt::LeaseKey, params![lease_id]).await?;
            first(rows, rows::limit_key)
        })
    }

    fn stream<'a>(&'a self, stream_id: &'a str) -> StoreFuture<'a, Option<StreamRow>> {
        Box::pin(async move {
            let rows = self.read_rows(Stmt::Stream, params![stream_id]).await?;
            first(rows, rows::stream)
        })
    }

    fn usage_cells<'a>(&'a self, q: &'a CellQuery) -> StoreFuture<'a, Vec<UsageCell>> {
        Box::pin(async move {
            let rows = self
                .read_rows(
                    Stmt::UsageCells,
                    params![
                        q.since_ms,
                        q.until_ms,
                        q.namespace.as_ref(),
                        u64::from(q.by_caller),
                        u64::from(q.by_reason),
                        q.before_log_index
                    ],
                )
                .await?;
            all(&rows, rows::usage_cell)
        })
    }

    fn faults<'a>(&'a self, q: &'a CellQuery, limit: usize) -> StoreFuture<'a, Vec<FaultRow>> {
        Box::pin(async move {
            let rows = self
                .read_rows(
                    Stmt::Faults,
                    params![q.since_ms, q.until_ms, q.namespace.as_ref(), limit as u64],
                )
                .await?;
            all(&rows, rows::fault)
        })
    }

    fn open_streams<'a>(
        &'a self,
        q: &'a CellQuery,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<StreamRow>, StreamSummary)> {
        Box::pin(async move {
            let summary = self
                .read_rows(
                    Stmt::StreamSummary,
                    params![q.since_ms, q.until_ms, q.namespace.as_ref()],
                )
                .await?;
            let summary = first(summary, |r| {
                Ok(StreamSummary {
                    open: r.u64(0)?,
                    newest_record_ms: r.opt_u64(1)?,
                    quietest_open_record_ms: r.opt_u64(2)?,
                })
            })?
            .unwrap_or_default();
            let rows = self
                .read_rows(
                    Stmt::OpenStreams,
                    params![q.since_ms, q.until_ms, q.namespace.as_ref(), limit as u64],
                )
                .await?;
            Ok((all(&rows, rows::stream)?, summary))
        })
    }

    fn sealed_segments(
        &self,
        first: u64,
        last: Option<u64>,
    ) -> StoreFuture<'_, Vec<SealedSegmentRow>> {
        Box::pin(async move {
            let last = last.unwrap_or(i64::MAX as u64);
            let rows = self
                .read_rows(Stmt::SealedSegments, params![first, last])
                .await?;
            all(&rows, rows::sealed_segment)
        })
    }

    fn segment(&self, index: u64) -> StoreFuture<'_, Option<SegmentRow>> {
        Box::pin(async move {
            let rows = self.read_rows(Stmt::Segment, params![index]).await?;
            first(rows, rows::segment)
        })
    }

    fn segment_bounds(&self) -> StoreFuture<'_, SegmentBounds> {
        Box::pin(async move {
            let rows = self.read_rows(Stmt::SegmentBounds, vec![]).await?;
            Ok(first(rows, |r| {
                Ok(SegmentBounds {
                    first_kept: r.opt_u64(0)?,
                    last_sealed: r.opt_u64(1)?,
                    last_pruned: r.opt_u64(2)?,
                })
            })?
            .unwrap_or_default())
        })
    }

    fn first_segment_started_since(
        &self,
        ms: u64,
        first_kept: u64,
    ) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::FirstSegmentStartedSince, params![ms, first_kept])
                .await?;
            Ok(first(rows, |r| r.opt_u64(0))?.flatten())
        })
    }

    fn pruned_hashes(&self, index: u64) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            let rows = self.read_rows(Stmt::PrunedHashes, params![index]).await?;
            Ok(first(rows, |r| r.opt_text(0))?.flatten())
        })
    }

    fn last_segment_sealed_before(&self, ms: u64) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::LastSegmentSealedBefore, params![ms])
                .await?;
            Ok(first(rows, |r| r.opt_u64(0))?.flatten())
        })
    }

    fn latest_state_upto(&self, index: u64) -> StoreFuture<'_, Option<(u64, String)>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::LatestStateUpto, params![index])
                .await?;
            first(rows, |r| Ok((r.u64(0)?, r.text(1)?)))
        })
    }

    fn leaf_hashes(&self, first_segment: u64, last_segment: u64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::LeafHashes, params![first_segment, last_segment])
                .await?;
            all(&rows, |r| r.text(0))
        })
    }

    fn set_log_state<'a>(&'a self, index: u64, json: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.driver.begin(TxLock::Log).await?;
            tx.execute(vec![(Stmt::SetLogState, params![index, json])])
                .await?;
            tx.commit().await
        })
    }

    fn prune_segment(&self, index: u64, now_ms: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.driver.begin(TxLock::Log).await?;
            let hashes = tx.query(Stmt::LeafHashes, params![index, index]).await?;
            let hashes: String = all(&hashes, |r| r.text(0))?.concat();
            tx.execute(vec![
                (Stmt::MarkPruned, params![index, now_ms, &hashes]),
                (Stmt::PruneEnvelopes, params![index]),
            ])
            .await?;
            tx.commit().await
        })
    }

    fn continued_streams(&self, first: u64, last: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::ContinuedStreams, params![first, last])
                .await?;
            all(&rows, |r| Ok((r.text(0)?, r.u64(1)?)))
        })
    }

    fn envelope_at<'a>(
        &'a self,
        stream_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<PlacedEnvelope>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::EnvelopeAt, params![stream_id, seq])
                .await?;
            first(rows, |r| {
                Ok(PlacedEnvelope {
                    log_index: r.u64(0)?,
                    segment_index: r.u64(1)?,
                    json: r.text(2)?,
                })
            })
        })
    }

    fn record_sink_delivery<'a>(
        &'a self,
        sink: &'a str,
        size: u64,
        at_ms: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.driver.begin(TxLock::Log).await?;
            tx.execute(vec![(Stmt::RecordSinkDelivery, params![sink, size, at_ms])])
                .await?;
            tx.commit().await
        })
    }

    fn sink_progress(&self) -> StoreFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let rows = self.read_rows(Stmt::SinkProgress, vec![]).await?;
            all(&rows, |r| Ok((r.text(0)?, r.u64(1)?)))
        })
    }

    fn put_key_report<'a>(
        &'a self,
        reporter: &'a str,
        keys: &'a [ReportedKey],
        now_ms: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut statements = vec![(Stmt::ForgetKeyReports, params![reporter])];
            statements.extend(keys.iter().map(|k| {
                (
                    Stmt::PutKeyReport,
                    params![
                        reporter,
                        &k.provider,
                        u64::from(k.index),
                        k.refused,
                        k.since_ms,
                        k.last_status.map(u64::from),
                        now_ms
                    ],
                )
            }));
            // Not the log lock: on PostgreSQL reports do not queue behind
            // ingest (SQLite has one writer for everything).
            let mut tx = self.driver.begin(TxLock::Limit).await?;
            tx.execute(statements).await?;
            tx.commit().await
        })
    }

    fn purge_key_reports(&self, before_ms: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.driver.begin(TxLock::Limit).await?;
            tx.execute(vec![(Stmt::PurgeKeyReports, params![before_ms])])
                .await?;
            tx.commit().await
        })
    }

    fn key_health(&self, since_ms: u64, limit: usize) -> StoreFuture<'_, Vec<KeyHealthCell>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::KeyHealth, params![since_ms, limit as u64])
                .await?;
            all(&rows, |r| {
                Ok(KeyHealthCell {
                    provider: r.text(0)?,
                    index: u32::try_from(r.u64(1)?).unwrap_or(u32::MAX),
                    reporters: r.u64(2)?,
                    refused_by: r.u64(3)?,
                    refused_since_ms: r.opt_u64(4)?,
                    last_status: r.opt_u64(5)?.and_then(|s| u16::try_from(s).ok()),
                })
            })
        })
    }

    fn segment_envelopes(&self, index: u64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let rows = self.read_rows(Stmt::SegmentBodies, params![index]).await?;
            all(&rows, |r| r.text(0))
        })
    }

    fn last_segment_before(&self, until_ms: u64) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::LastSegmentBefore, params![until_ms])
                .await?;
            Ok(first(rows, |r| r.opt_u64(0))?.flatten())
        })
    }

    fn certificates_between(&self, first: u64, last: u64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let rows = self
                .read_rows(Stmt::CertificatesBetween, params![first, last])
                .await?;
            all(&rows, |r| r.text(0))
        })
    }

    fn meta(&self) -> StoreFuture<'_, Option<LogMetaRow>> {
        Box::pin(async move {
            let rows = self.read_rows(Stmt::Meta, vec![]).await?;
            first(rows, rows::meta)
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.read_rows(Stmt::Ping, vec![]).await.map(drop) })
    }
}

struct EngineLogTx<T> {
    tx: T,
    dialect: Dialect,
}

impl<T: DriverTx + 'static> LogTx for EngineLogTx<T> {
    fn meta(&mut self) -> StoreFuture<'_, Option<LogMetaRow>> {
        Box::pin(async move { first(self.tx.query(Stmt::Meta, vec![]).await?, rows::meta) })
    }

    fn open_segment(&mut self) -> StoreFuture<'_, Option<StoredOpenSegment>> {
        Box::pin(async move {
            let open = self.tx.query(Stmt::OpenSegment, vec![]).await?;
            let Some((index, genesis)) = first(open, |r| Ok((r.u64(0)?, r.text(1)?)))? else {
                return Ok(None);
            };
            let bodies = self.tx.query(Stmt::SegmentBodies, params![index]).await?;
            Ok(Some((genesis, all(&bodies, |r| r.text(0))?)))
        })
    }

    fn stream<'a>(&'a mut self, stream_id: &'a str) -> StoreFuture<'a, Option<StreamRow>> {
        Box::pin(async move {
            first(
                self.tx.query(Stmt::Stream, params![stream_id]).await?,
                rows::stream,
            )
        })
    }

    fn envelope_json<'a>(
        &'a mut self,
        stream_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let rows = self
                .tx
                .query(Stmt::EnvelopeJson, params![stream_id, seq])
                .await?;
            first(rows, |r| r.text(0))
        })
    }

    fn hashes<'a>(
        &'a mut self,
        stream_id: &'a str,
        from: u64,
        to: u64,
    ) -> StoreFuture<'a, Vec<(u64, String)>> {
        Box::pin(async move {
            let rows = self
                .tx
                .query(Stmt::Hashes, params![stream_id, from, to])
                .await?;
            all(&rows, |r| Ok((r.u64(0)?, r.text(1)?)))
        })
    }

    fn known_receipt_ids<'a>(&'a mut self, ids: &'a [String]) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            // PostgreSQL takes every id in one statement; SQLite answers a
            // statement per id from its page cache without a round trip.
            let rows = match self.dialect {
                Dialect::Postgres => {
                    self.tx
                        .query(Stmt::ReceiptIdsKnown, vec![Value::TextArray(ids.to_vec())])
                        .await?
                }
                Dialect::Sqlite => {
                    let mut found = Vec::new();
                    for id in ids {
                        found.extend(self.tx.query(Stmt::ReceiptIdKnown, params![id]).await?);
                    }
                    found
                }
            };
            all(&rows, |r| r.text(0))
        })
    }

    fn write<'a>(&'a mut self, write: &'a LogWrite) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.tx.execute(rows::log_write(write)).await })
    }

    fn commit(self: Box<Self>) -> StoreFuture<'static, ()> {
        self.tx.commit()
    }
}

struct EngineQuotaTx<T> {
    tx: T,
    key: LimitKey,
}

impl<T: DriverTx + 'static> QuotaTx for EngineQuotaTx<T> {
    fn usage_sum(&mut self, from_bucket: u64, to_bucket: u64) -> StoreFuture<'_, Amounts> {
        Box::pin(async move {
            let rows = self
                .tx
                .query(
                    Stmt::UsageSum,
                    with_key(&self.key, params![from_bucket, to_bucket]),
                )
                .await?;
            Ok(first(rows, |r| r.amounts(0))?.unwrap_or_default())
        })
    }

    fn oldest_bucket(&mut self, from_bucket: u64) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let rows = self
                .tx
                .query(
                    Stmt::OldestBucket,
                    with_key(&self.key, params![from_bucket]),
                )
                .await?;
            Ok(first(rows, |r| r.opt_u64(0))?.flatten())
        })
    }

    fn outstanding<'a>(
        &'a mut self,
        window_start: u64,
        now_s: u64,
        exclude: Option<&'a str>,
    ) -> StoreFuture<'a, Amounts> {
        Box::pin(async move {
            let rows = self
                .tx
                .query(
                    Stmt::Outstanding,
                    with_key(&self.key, params![window_start, now_s, exclude]),
                )
                .await?;
            Ok(first(rows, |r| r.amounts(0))?.unwrap_or_default())
        })
    }

    fn lease<'a>(&'a mut self, lease_id: &'a str) -> StoreFuture<'a, Option<LeaseRow>> {
        Box::pin(async move {
            let rows = self
                .tx
                .query(Stmt::Lease, with_key(&self.key, params![lease_id]))
                .await?;
            first(rows, |r| rows::lease(r, lease_id, &self.key))
        })
    }

    fn put_lease<'a>(&'a mut self, lease: &'a LeaseRow) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.tx.execute(vec![rows::put_lease(lease)]).await })
    }

    fn add_usage(&mut self, bucket: u64, a: Amounts) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let params = with_key(
                &self.key,
                params![bucket, a.tokens, a.requests, a.cost_micro_usd],
            );
            self.tx.execute(vec![(Stmt::AddUsage, params)]).await
        })
    }

    fn purge(&mut self, before_s: u64, bucket_before: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let batch = vec![
                (Stmt::PurgeLeases, with_key(&self.key, params![before_s])),
                (
                    Stmt::PurgeUsage,
                    with_key(&self.key, params![bucket_before]),
                ),
            ];
            self.tx.execute(batch).await
        })
    }

    fn commit(self: Box<Self>) -> StoreFuture<'static, ()> {
        self.tx.commit()
    }
}
