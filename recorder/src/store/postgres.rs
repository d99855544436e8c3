//! PostgreSQL storage, for recorder replicas sharing one database.
//!
//! Log appends take a transaction-scoped advisory lock (one log, one writer at a
//! time across replicas); quota transactions lock their limit's `quota_limits`
//! row with `SELECT … FOR UPDATE`, so concurrent grants on one limit serialize
//! and never over-grant. Connections come from a small pool; a connection whose
//! transaction did not commit is closed, never reused, so the server rolls it back.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Row};
use tollgate_wire::quota_math::Amounts;

use super::{
    CellQuery, FaultRow, LeaseRow, LimitKey, LogMetaRow, LogTx, LogWrite, QuotaTx,
    SealedSegmentRow, Store, StoreError, StoreFuture, StoredOpenSegment, StreamRow, UsageCell,
    to_i64, to_u64,
};
use crate::ingest::{ChainFault, FaultKind};

/// Advisory lock key for log appends ("tgLOG").
const LOG_LOCK: i64 = 0x0074_674c_4f47;
/// Advisory lock key for schema creation.
const SCHEMA_LOCK: i64 = 0x0074_6753_4348;

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS log_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    origin TEXT NOT NULL,
    size BIGINT NOT NULL,
    state TEXT,
    last_issued_at_ms BIGINT
);
CREATE TABLE IF NOT EXISTS segments (
    segment_index BIGINT PRIMARY KEY,
    genesis TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    seal TEXT,
    checkpoint TEXT,
    sealed_at_ms BIGINT,
    envelope_count BIGINT
);
CREATE TABLE IF NOT EXISTS envelopes (
    log_index BIGINT PRIMARY KEY,
    segment_index BIGINT NOT NULL,
    stream_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    receipt_id TEXT UNIQUE,
    namespace TEXT,
    service_account TEXT,
    pod TEXT,
    provider TEXT,
    model TEXT,
    started_at_ms BIGINT,
    completed_at_ms BIGINT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cached_tokens BIGINT,
    cost_micro_usd BIGINT,
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
    next_seq BIGINT NOT NULL,
    closed BOOLEAN NOT NULL,
    first_record_ms BIGINT NOT NULL,
    last_record_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    cert_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    not_before_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_key ON certificates (key_id);
CREATE TABLE IF NOT EXISTS chain_faults (
    stream_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq BIGINT NOT NULL,
    namespace TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    detected_at_ms BIGINT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (stream_id, kind, seq)
);
CREATE TABLE IF NOT EXISTS quota_limits (
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window_key TEXT NOT NULL,
    PRIMARY KEY (quota_id, limit_name, window_key)
);
CREATE TABLE IF NOT EXISTS quota_usage (
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window_key TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    cost BIGINT NOT NULL,
    PRIMARY KEY (quota_id, limit_name, window_key, bucket)
);
CREATE TABLE IF NOT EXISTS quota_leases (
    lease_id TEXT PRIMARY KEY,
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window_key TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    granted_tokens BIGINT NOT NULL,
    granted_requests BIGINT NOT NULL,
    granted_cost BIGINT NOT NULL,
    consumed_tokens BIGINT NOT NULL,
    consumed_requests BIGINT NOT NULL,
    consumed_cost BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    holder TEXT NOT NULL,
    returned BOOLEAN NOT NULL,
    cap_tokens BIGINT,
    cap_requests BIGINT,
    cap_cost BIGINT,
    shadow BOOLEAN NOT NULL
);
CREATE INDEX IF NOT EXISTS quota_leases_key ON quota_leases (quota_id, limit_name, window_key, window_start);
";

#[derive(Debug)]
struct PoolInner {
    url: String,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A pooled connection. Returned to the pool on drop only if `clean`.
struct Conn {
    client: Option<Client>,
    pool: Arc<PoolInner>,
    clean: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn client(&self) -> Result<&Client, StoreError> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("connection already released".into()))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && self.clean
            && !client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(client);
        }
    }
}

async fn open_client(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// PostgreSQL storage.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Arc<PoolInner>,
}

impl PostgresStore {
    /// Connects (`postgres://user:password@host:port/db`), with at most
    /// `max_connections` connections, and creates the schema if needed.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let store = Self {
            pool: Arc::new(PoolInner {
                url: url.to_string(),
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(max_connections.max(2))),
            }),
        };
        let conn = store.conn().await?;
        let c = conn.client()?;
        c.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        let created = c.batch_execute(SCHEMA).await;
        c.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
            .await?;
        created?;
        Ok(store)
    }

    /// Drops every table (tests only: gives each test run a clean database).
    pub async fn reset_for_tests(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.client()?
            .batch_execute(
                "TRUNCATE log_meta, segments, envelopes, streams, certificates, chain_faults, quota_limits, quota_usage, quota_leases",
            )
            .await?;
        Ok(())
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        let permit = self
            .pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("connection pool closed".into()))?;
        let idle = self
            .pool
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => open_client(&self.pool.url).await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self.pool.clone(),
            clean: true,
            _permit: permit,
        })
    }

    async fn begin(&self) -> Result<Conn, StoreError> {
        let mut conn = self.conn().await?;
        conn.clean = false;
        conn.client()?.batch_execute("BEGIN").await?;
        Ok(conn)
    }
}

async fn commit(mut conn: Conn) -> Result<(), StoreError> {
    conn.client()?.batch_execute("COMMIT").await?;
    conn.clean = true;
    Ok(())
}

fn meta_from(r: &Row) -> LogMetaRow {
    LogMetaRow {
        origin: r.get(0),
        size: to_u64(r.get(1)),
        state_json: r.get(2),
        last_issued_at_ms: r.get::<_, Option<i64>>(3).map(to_u64),
    }
}

const STREAM_COLUMNS: &str = "stream_id, key_id, namespace, service_account, pod, next_seq, closed, first_record_ms, last_record_ms";

fn stream_from(r: &Row) -> StreamRow {
    StreamRow {
        stream_id: r.get(0),
        key_id: r.get(1),
        namespace: r.get(2),
        service_account: r.get(3),
        pod: r.get(4),
        next_seq: to_u64(r.get(5)),
        closed: r.get(6),
        first_record_ms: to_u64(r.get(7)),
        last_record_ms: to_u64(r.get(8)),
    }
}

fn amounts(r: &Row, first: usize) -> Amounts {
    Amounts {
        tokens: to_u64(r.get(first)),
        requests: to_u64(r.get(first + 1)),
        cost_micro_usd: to_u64(r.get(first + 2)),
    }
}

struct PgLogTx {
    conn: Conn,
}

async fn write_log(c: &Client, w: &LogWrite) -> Result<(), StoreError> {
    if let Some(cert) = &w.certificate {
        c.execute(
            "INSERT INTO certificates (cert_hash, key_id, not_before_ms, body) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&cert.cert_hash, &cert.key_id, &to_i64(cert.not_before_ms), &cert.json],
        )
        .await?;
    }
    for s in &w.opened {
        c.execute(
            "INSERT INTO segments (segment_index, genesis, created_at_ms) VALUES ($1, $2, $3)",
            &[&to_i64(s.index), &s.genesis_json, &to_i64(s.created_at_ms)],
        )
        .await?;
    }
    if !w.envelopes.is_empty() {
        let insert = c
            .prepare(
                "INSERT INTO envelopes (log_index, segment_index, stream_id, seq, hash, key_id, receipt_id, namespace, service_account, pod, provider, model, started_at_ms, completed_at_ms, input_tokens, output_tokens, cached_tokens, cost_micro_usd, decision, provider_request_id, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
            )
            .await?;
        for e in &w.envelopes {
            let r = e.receipt.as_ref();
            c.execute(
                &insert,
                &[
                    &to_i64(e.log_index),
                    &to_i64(e.segment_index),
                    &e.stream_id,
                    &to_i64(e.seq),
                    &e.hash,
                    &e.key_id,
                    &r.map(|r| r.receipt_id.clone()),
                    &r.map(|r| r.namespace.clone()),
                    &r.map(|r| r.service_account.clone()),
                    &r.map(|r| r.pod.clone()),
                    &r.and_then(|r| r.provider.clone()),
                    &r.and_then(|r| r.model.clone()),
                    &r.map(|r| to_i64(r.started_at_ms)),
                    &r.map(|r| to_i64(r.completed_at_ms)),
                    &r.map(|r| to_i64(r.input_tokens)),
                    &r.map(|r| to_i64(r.output_tokens)),
                    &r.map(|r| to_i64(r.cached_tokens)),
                    &r.map(|r| to_i64(r.cost_micro_usd)),
                    &r.map(|r| r.decision.to_string()),
                    &r.and_then(|r| r.provider_request_id.clone()),
                    &e.json,
                ],
            )
            .await?;
        }
    }
    for s in &w.sealed {
        c.execute(
            "UPDATE segments SET seal = $2, checkpoint = $3, sealed_at_ms = $4, envelope_count = $5 WHERE segment_index = $1",
            &[
                &to_i64(s.index),
                &s.seal_json,
                &s.checkpoint_json,
                &to_i64(s.sealed_at_ms),
                &to_i64(s.envelope_count),
            ],
        )
        .await?;
    }
    if let Some(s) = &w.stream {
        c.execute(
            "INSERT INTO streams (stream_id, key_id, namespace, service_account, pod, next_seq, closed, first_record_ms, last_record_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (stream_id) DO UPDATE SET next_seq = excluded.next_seq, closed = excluded.closed,
               first_record_ms = excluded.first_record_ms, last_record_ms = excluded.last_record_ms",
            &[
                &s.stream_id,
                &s.key_id,
                &s.namespace,
                &s.service_account,
                &s.pod,
                &to_i64(s.next_seq),
                &s.closed,
                &to_i64(s.first_record_ms),
                &to_i64(s.last_record_ms),
            ],
        )
        .await?;
    }
    for f in &w.faults {
        c.execute(
            "INSERT INTO chain_faults (stream_id, kind, seq, namespace, at_ms, detected_at_ms, message) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &f.fault.stream_id,
                &f.fault.kind.as_str(),
                &to_i64(f.fault.seq),
                &f.namespace,
                &to_i64(f.fault.at_ms),
                &to_i64(f.detected_at_ms),
                &f.fault.message,
            ],
        )
        .await?;
    }
    let m = &w.meta;
    c.execute(
        "INSERT INTO log_meta (id, origin, size, state, last_issued_at_ms) VALUES (1, $1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET size = excluded.size, state = excluded.state, last_issued_at_ms = excluded.last_issued_at_ms",
        &[&m.origin, &to_i64(m.size), &m.state_json, &m.last_issued_at_ms.map(to_i64)],
    )
    .await?;
    Ok(())
}

impl LogTx for PgLogTx {
    fn meta(&mut self) -> StoreFuture<'_, Option<LogMetaRow>> {
        Box::pin(async move {
            let row = self
                .conn
                .client()?
                .query_opt(
                    "SELECT origin, size, state, last_issued_at_ms FROM log_meta WHERE id = 1",
                    &[],
                )
                .await?;
            Ok(row.as_ref().map(meta_from))
        })
    }

    fn open_segment(&mut self) -> StoreFuture<'_, Option<StoredOpenSegment>> {
        Box::pin(async move {
            let c = self.conn.client()?;
            let Some(open) = c
                .query_opt(
                    "SELECT segment_index, genesis FROM segments WHERE seal IS NULL ORDER BY segment_index DESC LIMIT 1",
                    &[],
                )
                .await?
            else {
                return Ok(None);
            };
            let index: i64 = open.get(0);
            let rows = c
                .query(
                    "SELECT body FROM envelopes WHERE segment_index = $1 ORDER BY log_index",
                    &[&index],
                )
                .await?;
            Ok(Some((open.get(1), rows.iter().map(|r| r.get(0)).collect())))
        })
    }

    fn stream<'a>(&'a mut self, stream_id: &'a str) -> StoreFuture<'a, Option<StreamRow>> {
        Box::pin(async move {
            let row = self
                .conn
                .client()?
                .query_opt(
                    &format!("SELECT {STREAM_COLUMNS} FROM streams WHERE stream_id = $1"),
                    &[&stream_id],
                )
                .await?;
            Ok(row.as_ref().map(stream_from))
        })
    }

    fn envelope_json<'a>(
        &'a mut self,
        stream_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let row = self
                .conn
                .client()?
                .query_opt(
                    "SELECT body FROM envelopes WHERE stream_id = $1 AND seq = $2",
                    &[&stream_id, &to_i64(seq)],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
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
                .conn
                .client()?
                .query(
                    "SELECT seq, hash FROM envelopes WHERE stream_id = $1 AND seq >= $2 AND seq <= $3",
                    &[&stream_id, &to_i64(from), &to_i64(to)],
                )
                .await?;
            Ok(rows.iter().map(|r| (to_u64(r.get(0)), r.get(1))).collect())
        })
    }

    fn known_receipt_ids<'a>(&'a mut self, ids: &'a [String]) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let rows = self
                .conn
                .client()?
                .query(
                    "SELECT receipt_id FROM envelopes WHERE receipt_id = ANY($1)",
                    &[&ids],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn write<'a>(&'a mut self, write: &'a LogWrite) -> StoreFuture<'a, ()> {
        Box::pin(async move { write_log(self.conn.client()?, write).await })
    }

    fn commit(self: Box<Self>) -> StoreFuture<'static, ()> {
        Box::pin(async move { commit(self.conn).await })
    }
}

struct PgQuotaTx {
    conn: Conn,
    key: LimitKey,
}

impl QuotaTx for PgQuotaTx {
    fn usage_sum(&mut self, from_bucket: u64, to_bucket: u64) -> StoreFuture<'_, Amounts> {
        Box::pin(async move {
            let k = &self.key;
            let row = self.conn.client()?.query_one(
                "SELECT COALESCE(SUM(tokens), 0)::BIGINT, COALESCE(SUM(requests), 0)::BIGINT, COALESCE(SUM(cost), 0)::BIGINT FROM quota_usage
                 WHERE quota_id = $1 AND limit_name = $2 AND window_key = $3 AND bucket >= $4 AND bucket <= $5",
                &[&k.quota_id, &k.limit, &k.window, &to_i64(from_bucket), &to_i64(to_bucket)],
            ).await?;
            Ok(amounts(&row, 0))
        })
    }

    fn oldest_bucket(&mut self, from_bucket: u64) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let k = &self.key;
            let row = self.conn.client()?.query_one(
                "SELECT MIN(bucket) FROM quota_usage WHERE quota_id = $1 AND limit_name = $2 AND window_key = $3 AND bucket >= $4
                 AND (tokens > 0 OR requests > 0 OR cost > 0)",
                &[&k.quota_id, &k.limit, &k.window, &to_i64(from_bucket)],
            ).await?;
            Ok(row.get::<_, Option<i64>>(0).map(to_u64))
        })
    }

    fn outstanding<'a>(
        &'a mut self,
        window_start: u64,
        now_s: u64,
        exclude: Option<&'a str>,
    ) -> StoreFuture<'a, Amounts> {
        Box::pin(async move {
            let k = &self.key;
            let row = self.conn.client()?.query_one(
                "SELECT COALESCE(SUM(GREATEST(granted_tokens - consumed_tokens, 0)), 0)::BIGINT,
                        COALESCE(SUM(GREATEST(granted_requests - consumed_requests, 0)), 0)::BIGINT,
                        COALESCE(SUM(GREATEST(granted_cost - consumed_cost, 0)), 0)::BIGINT
                 FROM quota_leases
                 WHERE quota_id = $1 AND limit_name = $2 AND window_key = $3 AND window_start = $4
                   AND expires_at > $5 AND NOT returned AND lease_id IS DISTINCT FROM $6",
                &[&k.quota_id, &k.limit, &k.window, &to_i64(window_start), &to_i64(now_s), &exclude],
            ).await?;
            Ok(amounts(&row, 0))
        })
    }

    fn lease<'a>(&'a mut self, lease_id: &'a str) -> StoreFuture<'a, Option<LeaseRow>> {
        Box::pin(async move {
            let k = self.key.clone();
            let row = self.conn.client()?.query_opt(
                "SELECT window_start, granted_tokens, granted_requests, granted_cost, consumed_tokens, consumed_requests, consumed_cost, expires_at, holder, returned, cap_tokens, cap_requests, cap_cost, shadow
                 FROM quota_leases WHERE lease_id = $1 AND quota_id = $2 AND limit_name = $3 AND window_key = $4",
                &[&lease_id, &k.quota_id, &k.limit, &k.window],
            ).await?;
            Ok(row.map(|r| LeaseRow {
                lease_id: lease_id.to_string(),
                key: k.clone(),
                window_start: to_u64(r.get(0)),
                granted: amounts(&r, 1),
                consumed: amounts(&r, 4),
                expires_at: to_u64(r.get(7)),
                holder: r.get(8),
                returned: r.get(9),
                caps: super::Caps {
                    tokens: r.get::<_, Option<i64>>(10).map(to_u64),
                    requests: r.get::<_, Option<i64>>(11).map(to_u64),
                    cost_micro_usd: r.get::<_, Option<i64>>(12).map(to_u64),
                },
                shadow: r.get(13),
            }))
        })
    }

    fn put_lease<'a>(&'a mut self, l: &'a LeaseRow) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.conn.client()?.execute(
                "INSERT INTO quota_leases (lease_id, quota_id, limit_name, window_key, window_start, granted_tokens, granted_requests, granted_cost,
                    consumed_tokens, consumed_requests, consumed_cost, expires_at, holder, returned, cap_tokens, cap_requests, cap_cost, shadow)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
                 ON CONFLICT (lease_id) DO UPDATE SET window_start = excluded.window_start,
                    granted_tokens = excluded.granted_tokens, granted_requests = excluded.granted_requests, granted_cost = excluded.granted_cost,
                    consumed_tokens = excluded.consumed_tokens, consumed_requests = excluded.consumed_requests, consumed_cost = excluded.consumed_cost,
                    expires_at = excluded.expires_at, returned = excluded.returned",
                &[
                    &l.lease_id, &l.key.quota_id, &l.key.limit, &l.key.window, &to_i64(l.window_start),
                    &to_i64(l.granted.tokens), &to_i64(l.granted.requests), &to_i64(l.granted.cost_micro_usd),
                    &to_i64(l.consumed.tokens), &to_i64(l.consumed.requests), &to_i64(l.consumed.cost_micro_usd),
                    &to_i64(l.expires_at), &l.holder, &l.returned,
                    &l.caps.tokens.map(to_i64), &l.caps.requests.map(to_i64),
                    &l.caps.cost_micro_usd.map(to_i64), &l.shadow,
                ],
            ).await?;
            Ok(())
        })
    }

    fn add_usage(&mut self, bucket: u64, a: Amounts) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let k = &self.key;
            self.conn.client()?.execute(
                "INSERT INTO quota_usage (quota_id, limit_name, window_key, bucket, tokens, requests, cost) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (quota_id, limit_name, window_key, bucket) DO UPDATE SET tokens = quota_usage.tokens + excluded.tokens,
                    requests = quota_usage.requests + excluded.requests, cost = quota_usage.cost + excluded.cost",
                &[&k.quota_id, &k.limit, &k.window, &to_i64(bucket), &to_i64(a.tokens), &to_i64(a.requests), &to_i64(a.cost_micro_usd)],
            ).await?;
            Ok(())
        })
    }

    fn purge(&mut self, before_s: u64, bucket_before: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let k = &self.key;
            let c = self.conn.client()?;
            c.execute(
                "DELETE FROM quota_leases WHERE quota_id = $1 AND limit_name = $2 AND window_key = $3 AND expires_at < $4",
                &[&k.quota_id, &k.limit, &k.window, &to_i64(before_s)],
            )
            .await?;
            c.execute(
                "DELETE FROM quota_usage WHERE quota_id = $1 AND limit_name = $2 AND window_key = $3 AND bucket < $4",
                &[&k.quota_id, &k.limit, &k.window, &to_i64(bucket_before)],
            )
            .await?;
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> StoreFuture<'static, ()> {
        Box::pin(async move { commit(self.conn).await })
    }
}

fn fault_from(r: &Row) -> FaultRow {
    let kind: String = r.get(1);
    FaultRow {
        fault: ChainFault {
            stream_id: r.get(0),
            kind: FaultKind::parse(&kind).unwrap_or(FaultKind::BrokenChain),
            seq: to_u64(r.get(2)),
            at_ms: to_u64(r.get(4)),
            message: r.get(6),
        },
        namespace: r.get(3),
        detected_at_ms: to_u64(r.get(5)),
    }
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn begin_log(&self) -> StoreFuture<'_, Box<dyn LogTx>> {
        Box::pin(async move {
            let conn = self.begin().await?;
            conn.client()?
                .execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])
                .await?;
            Ok(Box::new(PgLogTx { conn }) as Box<dyn LogTx>)
        })
    }

    fn begin_quota<'a>(&'a self, key: &'a LimitKey) -> StoreFuture<'a, Box<dyn QuotaTx>> {
        Box::pin(async move {
            let conn = self.begin().await?;
            let c = conn.client()?;
            c.execute(
                "INSERT INTO quota_limits (quota_id, limit_name, window_key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&key.quota_id, &key.limit, &key.window],
            )
            .await?;
            c.query_one(
                "SELECT 1 FROM quota_limits WHERE quota_id = $1 AND limit_name = $2 AND window_key = $3 FOR UPDATE",
                &[&key.quota_id, &key.limit, &key.window],
            )
            .await?;
            Ok(Box::new(PgQuotaTx {
                conn,
                key: key.clone(),
            }) as Box<dyn QuotaTx>)
        })
    }

    fn lease_key<'a>(&'a self, lease_id: &'a str) -> StoreFuture<'a, Option<LimitKey>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let row = conn
                .client()?
                .query_opt(
                    "SELECT quota_id, limit_name, window_key FROM quota_leases WHERE lease_id = $1",
                    &[&lease_id],
                )
                .await?;
            Ok(row.map(|r| LimitKey {
                quota_id: r.get(0),
                limit: r.get(1),
                window: r.get(2),
            }))
        })
    }

    fn stream<'a>(&'a self, stream_id: &'a str) -> StoreFuture<'a, Option<StreamRow>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let row = conn
                .client()?
                .query_opt(
                    &format!("SELECT {STREAM_COLUMNS} FROM streams WHERE stream_id = $1"),
                    &[&stream_id],
                )
                .await?;
            Ok(row.as_ref().map(stream_from))
        })
    }

    fn usage_cells<'a>(&'a self, q: &'a CellQuery) -> StoreFuture<'a, Vec<UsageCell>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let rows = conn.client()?.query(
                "SELECT namespace, service_account, COALESCE(provider, ''), COALESCE(model, ''), started_at_ms / 3600000,
                        COUNT(*)::BIGINT, SUM(input_tokens)::BIGINT, SUM(output_tokens)::BIGINT, SUM(cost_micro_usd)::BIGINT
                 FROM envelopes
                 WHERE receipt_id IS NOT NULL AND started_at_ms >= $1 AND started_at_ms < $2 AND ($3::TEXT IS NULL OR namespace = $3)
                 GROUP BY 1, 2, 3, 4, 5",
                &[&to_i64(q.since_ms), &to_i64(q.until_ms), &q.namespace],
            ).await?;
            let mut cells: Vec<UsageCell> = rows
                .iter()
                .map(|r| UsageCell {
                    namespace: r.get(0),
                    service_account: r.get(1),
                    provider: r.get(2),
                    model: r.get(3),
                    hour: to_u64(r.get(4)),
                    requests: to_u64(r.get(5)),
                    input_tokens: to_u64(r.get(6)),
                    output_tokens: to_u64(r.get(7)),
                    cost_micro_usd: to_u64(r.get(8)),
                })
                .collect();
            cells.sort();
            Ok(cells)
        })
    }

    fn faults<'a>(&'a self, q: &'a CellQuery, limit: usize) -> StoreFuture<'a, Vec<FaultRow>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let rows = conn.client()?.query(
                "SELECT stream_id, kind, seq, namespace, at_ms, detected_at_ms, message FROM chain_faults
                 WHERE at_ms >= $1 AND at_ms < $2 AND ($3::TEXT IS NULL OR namespace = $3)
                 ORDER BY at_ms, stream_id COLLATE \"C\", kind COLLATE \"C\", seq LIMIT $4",
                &[&to_i64(q.since_ms), &to_i64(q.until_ms), &q.namespace, &to_i64(limit as u64)],
            ).await?;
            Ok(rows.iter().map(fault_from).collect())
        })
    }

    fn open_streams<'a>(
        &'a self,
        q: &'a CellQuery,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<StreamRow>, u64)> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let c = conn.client()?;
            let filter = "NOT closed AND first_record_ms < $2 AND last_record_ms >= $1 AND ($3::TEXT IS NULL OR namespace = $3)";
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&to_i64(q.since_ms), &to_i64(q.until_ms), &q.namespace];
            let count: i64 = c
                .query_one(
                    &format!("SELECT COUNT(*) FROM streams WHERE {filter}"),
                    &params,
                )
                .await?
                .get(0);
            let limit = to_i64(limit as u64);
            let rows = c
                .query(
                    &format!(
                        "SELECT {STREAM_COLUMNS} FROM streams WHERE {filter} ORDER BY stream_id COLLATE \"C\" LIMIT $4"
                    ),
                    &[params[0], params[1], params[2], &limit],
                )
                .await?;
            Ok((rows.iter().map(stream_from).collect(), to_u64(count)))
        })
    }

    fn sealed_segments(&self, upto: Option<u64>) -> StoreFuture<'_, Vec<SealedSegmentRow>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let rows = conn
                .client()?
                .query(
                    "SELECT segment_index, genesis, seal, checkpoint, envelope_count FROM segments
                     WHERE seal IS NOT NULL AND segment_index <= $1 ORDER BY segment_index",
                    &[&to_i64(upto.unwrap_or(u64::MAX))],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| SealedSegmentRow {
                    index: to_u64(r.get(0)),
                    genesis_json: r.get(1),
                    seal_json: r.get(2),
                    checkpoint_json: r.get(3),
                    envelope_count: to_u64(r.get(4)),
                })
                .collect())
        })
    }

    fn segment_envelopes(&self, index: u64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let rows = conn
                .client()?
                .query(
                    "SELECT body FROM envelopes WHERE segment_index = $1 ORDER BY log_index",
                    &[&to_i64(index)],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn last_segment_before(&self, until_ms: u64) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let row = conn
                .client()?
                .query_one(
                    "SELECT MAX(segment_index) FROM envelopes WHERE started_at_ms < $1",
                    &[&to_i64(until_ms)],
                )
                .await?;
            Ok(row.get::<_, Option<i64>>(0).map(to_u64))
        })
    }

    fn certificates_upto(&self, upto: u64) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let rows = conn
                .client()?
                .query(
                    "SELECT body FROM certificates WHERE key_id IN
                       (SELECT DISTINCT key_id FROM envelopes WHERE segment_index <= $1)
                     ORDER BY key_id COLLATE \"C\", not_before_ms, cert_hash COLLATE \"C\"",
                    &[&to_i64(upto)],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn meta(&self) -> StoreFuture<'_, Option<LogMetaRow>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let row = conn
                .client()?
                .query_opt(
                    "SELECT origin, size, state, last_issued_at_ms FROM log_meta WHERE id = 1",
                    &[],
                )
                .await?;
            Ok(row.as_ref().map(meta_from))
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let conn = self.conn().await?;
            conn.client()?.execute("SELECT 1", &[]).await?;
            Ok(())
        })
    }
}
