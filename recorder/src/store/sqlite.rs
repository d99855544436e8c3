//! SQLite storage, the embedded default: one file in WAL mode, one writer
//! connection (writes serialize on it; `BEGIN IMMEDIATE` takes the write lock) and
//! one reader connection for queries and exports, which WAL lets run beside writes.
//! The bundled SQLite needs no system library.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::OwnedMutexGuard;
use tollgate_wire::quota_math::Amounts;

use super::{
    CellQuery, FaultRow, LeaseRow, LimitKey, LogMetaRow, LogTx, LogWrite, QuotaTx,
    SealedSegmentRow, Store, StoreError, StoreFuture, StoredOpenSegment, StreamRow, UsageCell,
    to_i64, to_u64,
};
use crate::ingest::{ChainFault, FaultKind};

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS log_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT,
    last_issued_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS segments (
    segment_index INTEGER PRIMARY KEY,
    genesis TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    seal TEXT,
    checkpoint TEXT,
    sealed_at_ms INTEGER,
    envelope_count INTEGER
);
CREATE TABLE IF NOT EXISTS envelopes (
    log_index INTEGER PRIMARY KEY,
    segment_index INTEGER NOT NULL,
    stream_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    receipt_id TEXT UNIQUE,
    namespace TEXT,
    service_account TEXT,
    pod TEXT,
    provider TEXT,
    model TEXT,
    started_at_ms INTEGER,
    completed_at_ms INTEGER,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    cost_micro_usd INTEGER,
    decision TEXT,
    provider_request_id TEXT,
    body TEXT NOT NULL,
    UNIQUE (stream_id, seq)
);
CREATE INDEX IF NOT EXISTS envelopes_started ON envelopes (started_at_ms);
CREATE INDEX IF NOT EXISTS envelopes_segment ON envelopes (segment_index);
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    service_account TEXT NOT NULL,
    pod TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    closed INTEGER NOT NULL,
    first_record_ms INTEGER NOT NULL,
    last_record_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    cert_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    not_before_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_key ON certificates (key_id);
CREATE TABLE IF NOT EXISTS chain_faults (
    stream_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    detected_at_ms INTEGER NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (stream_id, kind, seq)
);
CREATE TABLE IF NOT EXISTS quota_limits (
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window TEXT NOT NULL,
    PRIMARY KEY (quota_id, limit_name, window)
);
CREATE TABLE IF NOT EXISTS quota_usage (
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    PRIMARY KEY (quota_id, limit_name, window, bucket)
);
CREATE TABLE IF NOT EXISTS quota_leases (
    lease_id TEXT PRIMARY KEY,
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    granted_tokens INTEGER NOT NULL,
    granted_requests INTEGER NOT NULL,
    granted_cost INTEGER NOT NULL,
    consumed_tokens INTEGER NOT NULL,
    consumed_requests INTEGER NOT NULL,
    consumed_cost INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    holder TEXT NOT NULL,
    returned INTEGER NOT NULL,
    cap_tokens INTEGER,
    cap_requests INTEGER,
    cap_cost INTEGER,
    shadow INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS quota_leases_key ON quota_leases (quota_id, limit_name, window, window_start);
PRAGMA user_version = 1;
";

/// SQLite storage in one file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL: readers run beside the writer. synchronous=FULL: a committed batch
    // survives power loss too, since an acknowledged receipt must never be lost.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let writer = connect(path)?;
        writer.execute_batch(SCHEMA)?;
        let reader = connect(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&conn)?)
    }
}

fn window_key_params(key: &LimitKey) -> (&str, &str, &str) {
    (&key.quota_id, &key.limit, &key.window)
}

struct Tx {
    conn: OwnedMutexGuard<Connection>,
    finished: bool,
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped without commit (an error or a cancelled request): undo.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Tx {
    async fn begin(writer: &Arc<tokio::sync::Mutex<Connection>>) -> Result<Self, StoreError> {
        let conn = writer.clone().lock_owned().await;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Self {
            conn,
            finished: false,
        })
    }

    fn commit(mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        self.finished = true;
        Ok(())
    }
}

fn meta_row(conn: &Connection) -> Result<Option<LogMetaRow>, rusqlite::Error> {
    conn.query_row(
        "SELECT origin, size, state, last_issued_at_ms FROM log_meta WHERE id = 1",
        [],
        |r| {
            Ok(LogMetaRow {
                origin: r.get(0)?,
                size: to_u64(r.get(1)?),
                state_json: r.get(2)?,
                last_issued_at_ms: r.get::<_, Option<i64>>(3)?.map(to_u64),
            })
        },
    )
    .optional()
}

const STREAM_COLUMNS: &str = "stream_id, key_id, namespace, service_account, pod, next_seq, closed, first_record_ms, last_record_ms";

fn stream_from(r: &rusqlite::Row<'_>) -> Result<StreamRow, rusqlite::Error> {
    Ok(StreamRow {
        stream_id: r.get(0)?,
        key_id: r.get(1)?,
        namespace: r.get(2)?,
        service_account: r.get(3)?,
        pod: r.get(4)?,
        next_seq: to_u64(r.get(5)?),
        closed: r.get::<_, i64>(6)? != 0,
        first_record_ms: to_u64(r.get(7)?),
        last_record_ms: to_u64(r.get(8)?),
    })
}

fn stream_row(conn: &Connection, stream_id: &str) -> Result<Option<StreamRow>, rusqlite::Error> {
    conn.query_row(
        &format!("SELECT {STREAM_COLUMNS} FROM streams WHERE stream_id = ?1"),
        [stream_id],
        stream_from,
    )
    .optional()
}

fn write_log(conn: &Connection, w: &LogWrite) -> Result<(), rusqlite::Error> {
    if let Some(c) = &w.certificate {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO certificates (cert_hash, key_id, not_before_ms, body) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![c.cert_hash, c.key_id, to_i64(c.not_before_ms), c.json])?;
    }
    for s in &w.opened {
        conn.prepare_cached(
            "INSERT INTO segments (segment_index, genesis, created_at_ms) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            to_i64(s.index),
            s.genesis_json,
            to_i64(s.created_at_ms)
        ])?;
    }
    {
        let mut insert = conn.prepare_cached(
            "INSERT INTO envelopes (log_index, segment_index, stream_id, seq, hash, key_id, receipt_id, namespace, service_account, pod, provider, model, started_at_ms, completed_at_ms, input_tokens, output_tokens, cached_tokens, cost_micro_usd, decision, provider_request_id, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )?;
        for e in &w.envelopes {
            let r = e.receipt.as_ref();
            insert.execute(params![
                to_i64(e.log_index),
                to_i64(e.segment_index),
                e.stream_id,
                to_i64(e.seq),
                e.hash,
                e.key_id,
                r.map(|r| &r.receipt_id),
                r.map(|r| &r.namespace),
                r.map(|r| &r.service_account),
                r.map(|r| &r.pod),
                r.and_then(|r| r.provider.as_ref()),
                r.and_then(|r| r.model.as_ref()),
                r.map(|r| to_i64(r.started_at_ms)),
                r.map(|r| to_i64(r.completed_at_ms)),
                r.map(|r| to_i64(r.input_tokens)),
                r.map(|r| to_i64(r.output_tokens)),
                r.map(|r| to_i64(r.cached_tokens)),
                r.map(|r| to_i64(r.cost_micro_usd)),
                r.map(|r| r.decision),
                r.and_then(|r| r.provider_request_id.as_ref()),
                e.json,
            ])?;
        }
    }
    for s in &w.sealed {
        conn.prepare_cached(
            "UPDATE segments SET seal = ?2, checkpoint = ?3, sealed_at_ms = ?4, envelope_count = ?5 WHERE segment_index = ?1",
        )?
        .execute(params![
            to_i64(s.index),
            s.seal_json,
            s.checkpoint_json,
            to_i64(s.sealed_at_ms),
            to_i64(s.envelope_count)
        ])?;
    }
    if let Some(s) = &w.stream {
        conn.prepare_cached(
            "INSERT INTO streams (stream_id, key_id, namespace, service_account, pod, next_seq, closed, first_record_ms, last_record_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (stream_id) DO UPDATE SET next_seq = excluded.next_seq, closed = excluded.closed,
               first_record_ms = excluded.first_record_ms, last_record_ms = excluded.last_record_ms",
        )?
        .execute(params![
            s.stream_id,
            s.key_id,
            s.namespace,
            s.service_account,
            s.pod,
            to_i64(s.next_seq),
            i64::from(s.closed),
            to_i64(s.first_record_ms),
            to_i64(s.last_record_ms)
        ])?;
    }
    for f in &w.faults {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO chain_faults (stream_id, kind, seq, namespace, at_ms, detected_at_ms, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            f.fault.stream_id,
            f.fault.kind.as_str(),
            to_i64(f.fault.seq),
            f.namespace,
            to_i64(f.fault.at_ms),
            to_i64(f.detected_at_ms),
            f.fault.message
        ])?;
    }
    let m = &w.meta;
    conn.prepare_cached(
        "INSERT INTO log_meta (id, origin, size, state, last_issued_at_ms) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET size = excluded.size, state = excluded.state, last_issued_at_ms = excluded.last_issued_at_ms",
    )?
    .execute(params![
        m.origin,
        to_i64(m.size),
        m.state_json,
        m.last_issued_at_ms.map(to_i64)
    ])?;
    Ok(())
}

impl LogTx for Tx {
    fn meta(&mut self) -> StoreFuture<'_, Option<LogMetaRow>> {
        Box::pin(async move { Ok(meta_row(&self.conn)?) })
    }

    fn open_segment(&mut self) -> StoreFuture<'_, Option<StoredOpenSegment>> {
        Box::pin(async move {
            let open: Option<(i64, String)> = self
                .conn
                .query_row(
                    "SELECT segment_index, genesis FROM segments WHERE seal IS NULL ORDER BY segment_index DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((index, genesis)) = open else {
                return Ok(None);
            };
            let mut stmt = self.conn.prepare(
                "SELECT body FROM envelopes WHERE segment_index = ?1 ORDER BY log_index",
            )?;
            let bodies = stmt
                .query_map([index], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((genesis, bodies)))
        })
    }

    fn stream<'a>(&'a mut self, stream_id: &'a str) -> StoreFuture<'a, Option<StreamRow>> {
        Box::pin(async move { Ok(stream_row(&self.conn, stream_id)?) })
    }

    fn envelope_json<'a>(
        &'a mut self,
        stream_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            Ok(self
                .conn
                .prepare_cached("SELECT body FROM envelopes WHERE stream_id = ?1 AND seq = ?2")?
                .query_row(params![stream_id, to_i64(seq)], |r| r.get(0))
                .optional()?)
        })
    }

    fn hashes<'a>(
        &'a mut self,
        stream_id: &'a str,
        from: u64,
        to: u64,
    ) -> StoreFuture<'a, Vec<(u64, String)>> {
        Box::pin(async move {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, hash FROM envelopes WHERE stream_id = ?1 AND seq >= ?2 AND seq <= ?3",
            )?;
            let rows = stmt
                .query_map(params![stream_id, to_i64(from), to_i64(to)], |r| {
                    Ok((to_u64(r.get(0)?), r.get(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn known_receipt_ids<'a>(&'a mut self, ids: &'a [String]) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT 1 FROM envelopes WHERE receipt_id = ?1")?;
            let mut known = Vec::new();
            for id in ids {
                if stmt.exists([id])? {
                    known.push(id.clone());
                }
            }
            Ok(known)
        })
    }

    fn write<'a>(&'a mut self, write: &'a LogWrite) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(write_log(&self.conn, write)?) })
    }

    fn commit(self: Box<Self>) -> StoreFuture<'static, ()> {
        Box::pin(async move { (*self).commit() })
    }
}

struct QTx {
    tx: Tx,
    key: LimitKey,
}

fn amounts(r: &rusqlite::Row<'_>, first: usize) -> Result<Amounts, rusqlite::Error> {
    Ok(Amounts {
        tokens: to_u64(r.get(first)?),
        requests: to_u64(r.get(first + 1)?),
        cost_micro_usd: to_u64(r.get(first + 2)?),
    })
}

impl QuotaTx for QTx {
    fn usage_sum(&mut self, from_bucket: u64, to_bucket: u64) -> StoreFuture<'_, Amounts> {
        Box::pin(async move {
            let (q, l, w) = window_key_params(&self.key);
            Ok(self.tx.conn.prepare_cached(
                "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(requests), 0), COALESCE(SUM(cost), 0) FROM quota_usage
                 WHERE quota_id = ?1 AND limit_name = ?2 AND window = ?3 AND bucket >= ?4 AND bucket <= ?5",
            )?
            .query_row(params![q, l, w, to_i64(from_bucket), to_i64(to_bucket)], |r| amounts(r, 0))?)
        })
    }

    fn oldest_bucket(&mut self, from_bucket: u64) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let (q, l, w) = window_key_params(&self.key);
            let v: Option<i64> = self.tx.conn.prepare_cached(
                "SELECT MIN(bucket) FROM quota_usage WHERE quota_id = ?1 AND limit_name = ?2 AND window = ?3 AND bucket >= ?4
                 AND (tokens > 0 OR requests > 0 OR cost > 0)",
            )?
            .query_row(params![q, l, w, to_i64(from_bucket)], |r| r.get(0))?;
            Ok(v.map(to_u64))
        })
    }

    fn outstanding<'a>(
        &'a mut self,
        window_start: u64,
        now_s: u64,
        exclude: Option<&'a str>,
    ) -> StoreFuture<'a, Amounts> {
        Box::pin(async move {
            let (q, l, w) = window_key_params(&self.key);
            Ok(self
                .tx
                .conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(MAX(granted_tokens - consumed_tokens, 0)), 0),
                        COALESCE(SUM(MAX(granted_requests - consumed_requests, 0)), 0),
                        COALESCE(SUM(MAX(granted_cost - consumed_cost, 0)), 0)
                 FROM quota_leases
                 WHERE quota_id = ?1 AND limit_name = ?2 AND window = ?3 AND window_start = ?4
                   AND expires_at > ?5 AND returned = 0 AND lease_id IS NOT ?6",
                )?
                .query_row(
                    params![q, l, w, to_i64(window_start), to_i64(now_s), exclude],
                    |r| amounts(r, 0),
                )?)
        })
    }

    fn lease<'a>(&'a mut self, lease_id: &'a str) -> StoreFuture<'a, Option<LeaseRow>> {
        Box::pin(async move {
            let key = self.key.clone();
            Ok(self.tx.conn.prepare_cached(
                "SELECT window_start, granted_tokens, granted_requests, granted_cost, consumed_tokens, consumed_requests, consumed_cost, expires_at, holder, returned, cap_tokens, cap_requests, cap_cost, shadow
                 FROM quota_leases WHERE lease_id = ?1 AND quota_id = ?2 AND limit_name = ?3 AND window = ?4",
            )?
            .query_row(params![lease_id, key.quota_id, key.limit, key.window], |r| {
                Ok(LeaseRow {
                    lease_id: lease_id.to_string(),
                    key: key.clone(),
                    window_start: to_u64(r.get(0)?),
                    granted: amounts(r, 1)?,
                    consumed: amounts(r, 4)?,
                    expires_at: to_u64(r.get(7)?),
                    holder: r.get(8)?,
                    returned: r.get::<_, i64>(9)? != 0,
                    caps: super::Caps {
                        tokens: r.get::<_, Option<i64>>(10)?.map(to_u64),
                        requests: r.get::<_, Option<i64>>(11)?.map(to_u64),
                        cost_micro_usd: r.get::<_, Option<i64>>(12)?.map(to_u64),
                    },
                    shadow: r.get::<_, i64>(13)? != 0,
                })
            })
            .optional()?)
        })
    }

    fn put_lease<'a>(&'a mut self, l: &'a LeaseRow) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.tx.conn.prepare_cached(
                "INSERT INTO quota_leases (lease_id, quota_id, limit_name, window, window_start, granted_tokens, granted_requests, granted_cost,
                    consumed_tokens, consumed_requests, consumed_cost, expires_at, holder, returned, cap_tokens, cap_requests, cap_cost, shadow)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
                 ON CONFLICT (lease_id) DO UPDATE SET window_start = excluded.window_start,
                    granted_tokens = excluded.granted_tokens, granted_requests = excluded.granted_requests, granted_cost = excluded.granted_cost,
                    consumed_tokens = excluded.consumed_tokens, consumed_requests = excluded.consumed_requests, consumed_cost = excluded.consumed_cost,
                    expires_at = excluded.expires_at, returned = excluded.returned",
            )?
            .execute(params![
                l.lease_id,
                l.key.quota_id,
                l.key.limit,
                l.key.window,
                to_i64(l.window_start),
                to_i64(l.granted.tokens),
                to_i64(l.granted.requests),
                to_i64(l.granted.cost_micro_usd),
                to_i64(l.consumed.tokens),
                to_i64(l.consumed.requests),
                to_i64(l.consumed.cost_micro_usd),
                to_i64(l.expires_at),
                l.holder,
                i64::from(l.returned),
                l.caps.tokens.map(to_i64),
                l.caps.requests.map(to_i64),
                l.caps.cost_micro_usd.map(to_i64),
                i64::from(l.shadow),
            ])?;
            Ok(())
        })
    }

    fn add_usage(&mut self, bucket: u64, a: Amounts) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (q, l, w) = window_key_params(&self.key);
            self.tx.conn.prepare_cached(
                "INSERT INTO quota_usage (quota_id, limit_name, window, bucket, tokens, requests, cost) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (quota_id, limit_name, window, bucket) DO UPDATE SET tokens = tokens + excluded.tokens,
                    requests = requests + excluded.requests, cost = cost + excluded.cost",
            )?
            .execute(params![
                q,
                l,
                w,
                to_i64(bucket),
                to_i64(a.tokens),
                to_i64(a.requests),
                to_i64(a.cost_micro_usd)
            ])?;
            Ok(())
        })
    }

    fn purge(&mut self, before_s: u64, bucket_before: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (q, l, w) = window_key_params(&self.key);
            self.tx.conn.prepare_cached(
                "DELETE FROM quota_leases WHERE quota_id = ?1 AND limit_name = ?2 AND window = ?3 AND expires_at < ?4",
            )?
            .execute(params![q, l, w, to_i64(before_s)])?;
            self.tx.conn.prepare_cached(
                "DELETE FROM quota_usage WHERE quota_id = ?1 AND limit_name = ?2 AND window = ?3 AND bucket < ?4",
            )?
            .execute(params![q, l, w, to_i64(bucket_before)])?;
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> StoreFuture<'static, ()> {
        Box::pin(async move { self.tx.commit() })
    }
}

fn fault_from(r: &rusqlite::Row<'_>) -> Result<FaultRow, rusqlite::Error> {
    let kind: String = r.get(1)?;
    Ok(FaultRow {
        fault: ChainFault {
            stream_id: r.get(0)?,
            kind: FaultKind::parse(&kind).unwrap_or(FaultKind::BrokenChain),
            seq: to_u64(r.get(2)?),
            at_ms: to_u64(r.get(4)?),
            message: r.get(6)?,
        },
        namespace: r.get(3)?,
        detected_at_ms: to_u64(r.get(5)?),
    })
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn begin_log(&self) -> StoreFuture<'_, Box<dyn LogTx>> {
        Box::pin(async move {
            let tx = Tx::begin(&self.writer).await?;
            Ok(Box::new(tx) as Box<dyn LogTx>)
        })
    }

    fn begin_quota<'a>(&'a self, key: &'a LimitKey) -> StoreFuture<'a, Box<dyn QuotaTx>> {
        Box::pin(async move {
            let tx = Tx::begin(&self.writer).await?;
            tx.conn.execute(
                "INSERT OR IGNORE INTO quota_limits (quota_id, limit_name, window) VALUES (?1, ?2, ?3)",
                params![key.quota_id, key.limit, key.window],
            )?;
            Ok(Box::new(QTx {
                tx,
                key: key.clone(),
            }) as Box<dyn QuotaTx>)
        })
    }

    fn lease_key<'a>(&'a self, lease_id: &'a str) -> StoreFuture<'a, Option<LimitKey>> {
        Box::pin(async move {
            self.read(|c| {
                c.query_row(
                    "SELECT quota_id, limit_name, window FROM quota_leases WHERE lease_id = ?1",
                    [lease_id],
                    |r| {
                        Ok(LimitKey {
                            quota_id: r.get(0)?,
                            limit: r.get(1)?,
                            window: r.get(2)?,
                        })
                    },
                )
                .optional()
            })
        })
    }

    fn stream<'a>(&'a self, stream_id: &'a str) -> StoreFuture<'a, Option<StreamRow>> {
        Box::pin(async move { self.read(|c| stream_row(c, stream_id)) })
    }

    fn usage_cells<'a>(&'a self, q: &'a CellQuery) -> StoreFuture<'a, Vec<UsageCell>> {
        Box::pin(async move {
            self.read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT namespace, service_account, COALESCE(provider, ''), COALESCE(model, ''), started_at_ms / 3600000,
                            COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_micro_usd)
                     FROM envelopes
                     WHERE receipt_id IS NOT NULL AND started_at_ms >= ?1 AND started_at_ms < ?2 AND (?3 IS NULL OR namespace = ?3)
                     GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
                )?;
                stmt.query_map(
                    params![to_i64(q.since_ms), to_i64(q.until_ms), q.namespace],
                    |r| {
                        Ok(UsageCell {
                            namespace: r.get(0)?,
                            service_account: r.get(1)?,
                            provider: r.get(2)?,
                            model: r.get(3)?,
                            hour: to_u64(r.get(4)?),
                            requests: to_u64(r.get(5)?),
                            input_tokens: to_u64(r.get(6)?),
                            output_tokens: to_u64(r.get(7)?),
                            cost_micro_usd: to_u64(r.get(8)?),
                        })
                    },
                )?
                .collect()
            })
        })
    }

    fn faults<'a>(&'a self, q: &'a CellQuery, limit: usize) -> StoreFuture<'a, Vec<FaultRow>> {
        Box::pin(async move {
            self.read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT stream_id, kind, seq, namespace, at_ms, detected_at_ms, message FROM chain_faults
                     WHERE at_ms >= ?1 AND at_ms < ?2 AND (?3 IS NULL OR namespace = ?3)
                     ORDER BY at_ms, stream_id, kind, seq LIMIT ?4",
                )?;
                stmt.query_map(
                    params![
                        to_i64(q.since_ms),
                        to_i64(q.until_ms),
                        q.namespace,
                        to_i64(limit as u64)
                    ],
                    fault_from,
                )?
                .collect()
            })
        })
    }

    fn open_streams<'a>(
        &'a self,
        q: &'a CellQuery,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<StreamRow>, u64)> {
        Box::pin(async move {
            self.read(|c| {
                let filter = "closed = 0 AND first_record_ms < ?2 AND last_record_ms >= ?1 AND (?3 IS NULL OR namespace = ?3)";
                let count: i64 = c.query_row(
                    &format!("SELECT COUNT(*) FROM streams WHERE {filter}"),
                    params![to_i64(q.since_ms), to_i64(q.until_ms), q.namespace],
                    |r| r.get(0),
                )?;
                let mut stmt = c.prepare(&format!(
                    "SELECT {STREAM_COLUMNS} FROM streams WHERE {filter} ORDER BY stream_id LIMIT ?4"
                ))?;
                let rows = stmt
                    .query_map(
                        params![
                            to_i64(q.since_ms),
                            to_i64(q.until_ms),
                            q.namespace,
                            to_i64(limit as u64)
                        ],
                        stream_from,
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((rows, to_u64(count)))
            })
        })
    }

    fn sealed_segments(&self, upto: Option<u64>) -> StoreFuture<'_, Vec<SealedSegmentRow>> {
        Box::pin(async move {
            self.read(|c| {
                let mut stmt = c.prepare(
                    "SELECT segment_index, genesis, seal, checkpoint, envelope_count FROM segments
                     WHERE seal IS NOT NULL AND segment_index <= ?1 ORDER BY segment_index",
                )?;
                stmt.query_map([to_i64(upto.unwrap_or(u64::MAX))], |r| {
                    Ok(SealedSegmentRow {
                        index: to_u64(r.get(0)?),
                        genesis_json: r.get(1)?,
                        seal_json: r.get(2)?,
                        checkpoint_json: r.get(3)?,
                        envelope_count: to_u64(r.get(4)?),
                    })
                })?
                .collect()
            })
        })
    }

    fn segment_envelopes(&self, index: u64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            self.read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT body FROM envelopes WHERE segment_index = ?1 ORDER BY log_index",
                )?;
                stmt.query_map([to_i64(index)], |r| r.get(0))?.collect()
            })
        })
    }

    fn last_segment_before(&self, until_ms: u64) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            self.read(|c| {
                let v: Option<i64> = c.query_row(
                    "SELECT MAX(segment_index) FROM envelopes WHERE started_at_ms < ?1",
                    [to_i64(until_ms)],
                    |r| r.get(0),
                )?;
                Ok(v.map(to_u64))
            })
        })
    }

    fn certificates_upto(&self, upto: u64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            self.read(|c| {
                let mut stmt = c.prepare(
                    "SELECT body FROM certificates WHERE key_id IN
                       (SELECT DISTINCT key_id FROM envelopes WHERE segment_index <= ?1)
                     ORDER BY key_id, not_before_ms, cert_hash",
                )?;
                stmt.query_map([to_i64(upto)], |r| r.get(0))?.collect()
            })
        })
    }

    fn meta(&self) -> StoreFuture<'_, Option<LogMetaRow>> {
        Box::pin(async move { self.read(meta_row) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))) })
    }
}
