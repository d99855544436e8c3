//! The SQLite driver, the embedded default: one file in WAL mode, a writer
//! connection and a reader connection (WAL lets reads run beside writes), each
//! owned by its own thread. Async callers never block: they queue a job for
//! the connection's thread and await its answer. The queues are bounded, and
//! so is the number of callers waiting for the write lock; past either bound
//! the store answers [`StoreError::Busy`] (the API answers 503 with
//! `Retry-After`) instead of queueing without limit. The bundled SQLite needs
//! no system library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender, TrySendError};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, params_from_iter};
use tokio::sync::{OwnedMutexGuard, Semaphore};

use super::engine::{Driver, DriverTx, Engine, TxLock};
use super::rows::{Row, Statement, Value};
use super::sql::{Dialect, LATE_INDEXES, SCHEMA, SQLITE_MIGRATIONS, SQLITE_VERSION, Stmt};
use super::{StoreError, StoreFuture};

/// SQLite storage in one file.
pub type SqliteStore = Engine<SqliteDriver>;

/// Jobs queued for one connection's thread, at most.
pub const QUEUE_DEPTH: usize = 256;
/// Callers waiting for the write lock, at most.
pub const MAX_WRITE_WAITERS: usize = 1024;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A connection owned by a thread that runs the jobs sent to it, in order.
#[derive(Debug, Clone)]
struct Worker {
    jobs: SyncSender<Job>,
    role: &'static str,
}

impl Worker {
    fn spawn(role: &'static str, conn: Connection, depth: usize) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(depth);
        std::thread::Builder::new()
            .name(format!("sqlite-{role}"))
            .spawn(move || {
                let mut conn = conn;
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("starting the sqlite {role} thread: {e}"))
            })?;
        Ok(Self { jobs, role })
    }

    /// Runs `f` on the connection's thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = answer.send(f(conn));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(StoreError::Busy(format!(
                    "the sqlite {} queue is full",
                    self.role
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable(format!(
                    "the sqlite {} thread stopped",
                    self.role
                )));
            }
        }
        answered.await.map_err(|_| {
            StoreError::Unavailable(format!("the sqlite {} thread dropped a job", self.role))
        })?
    }

    /// Queues `f` without waiting for it (best effort: a full queue drops it).
    fn send(&self, f: impl FnOnce(&mut Connection) + Send + 'static) {
        let _ = self.jobs.try_send(Box::new(f));
    }
}

/// Runs the SQLite side of the engine.
#[derive(Debug)]
pub struct SqliteDriver {
    path: PathBuf,
    writer: Worker,
    reader: Worker,
    /// One transaction at a time on the writer connection.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Permits to wait for `write_lock`: bounds the waiters.
    write_waiters: Arc<Semaphore>,
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

/// Brings an existing file to [`SQLITE_VERSION`], then creates what is missing.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SQLITE_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {version}, newer than this recorder's {SQLITE_VERSION}; run a newer recorder"
        )));
    }
    // Each step and its new version commit together (user_version is
    // transactional), so a crash never leaves a half-migrated file.
    for (from, statements) in SQLITE_MIGRATIONS {
        if version != 0 && version <= *from {
            conn.execute_batch(&format!(
                "BEGIN; {statements} PRAGMA user_version = {}; COMMIT;",
                from + 1
            ))?;
        }
    }
    conn.execute_batch(&Dialect::Sqlite.render(SCHEMA))?;
    conn.execute_batch(&Dialect::Sqlite.render(LATE_INDEXES))?;
    conn.pragma_update(None, "user_version", SQLITE_VERSION)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating or migrating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_bounded(path, QUEUE_DEPTH, MAX_WRITE_WAITERS)
    }

    /// [`SqliteStore::open`] with other bounds (tests).
    pub fn open_bounded(
        path: &Path,
        queue_depth: usize,
        write_waiters: usize,
    ) -> Result<Self, StoreError> {
        let writer = connect(path)?;
        migrate(&writer)?;
        let reader = connect(path)?;
        Ok(Self {
            driver: Arc::new(SqliteDriver {
                path: path.to_path_buf(),
                writer: Worker::spawn("writer", writer, queue_depth.max(1))?,
                reader: Worker::spawn("reader", reader, queue_depth.max(1))?,
                write_lock: Arc::new(tokio::sync::Mutex::new(())),
                write_waiters: Arc::new(Semaphore::new(write_waiters.max(1))),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.driver.path
    }
}

fn to_sqlite(value: Value) -> Result<rusqlite::types::Value, StoreError> {
    use rusqlite::types::Value as V;
    Ok(match value {
        Value::Int(Some(v)) => V::Integer(v),
        Value::Text(Some(v)) => V::Text(v),
        Value::Bool(b) => V::Integer(i64::from(b)),
        Value::Int(None) | Value::Text(None) | Value::Null => V::Null,
        Value::TextArray(_) => {
            return Err(StoreError::Corrupt(
                "array parameters are PostgreSQL only".into(),
            ));
        }
    })
}

fn from_sqlite(value: ValueRef<'_>) -> Result<Value, StoreError> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(Some(v)),
        ValueRef::Text(t) => Value::Text(Some(
            std::str::from_utf8(t)
                .map_err(|e| StoreError::Corrupt(format!("text column: {e}")))?
                .to_owned(),
        )),
        ValueRef::Real(_) | ValueRef::Blob(_) => {
            return Err(StoreError::Corrupt(format!(
                "unexpected column type {:?}",
                value.data_type()
            )));
        }
    })
}

fn query(conn: &Connection, stmt: Stmt, params: Vec<Value>) -> Result<Vec<Row>, StoreError> {
    let params = params
        .into_iter()
        .map(to_sqlite)
        .collect::<Result<Vec<_>, _>>()?;
    let mut statement = conn.prepare_cached(Dialect::Sqlite.sql(stmt))?;
    let columns = statement.column_count();
    let mut rows = statement.query(params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..columns)
            .map(|i| from_sqlite(row.get_ref(i)?))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.push(Row(values));
    }
    Ok(out)
}

fn execute(conn: &Connection, batch: Vec<Statement>) -> Result<(), StoreError> {
    for (stmt, params) in batch {
        let params = params
            .into_iter()
            .map(to_sqlite)
            .collect::<Result<Vec<_>, _>>()?;
        conn.prepare_cached(Dialect::Sqlite.sql(stmt))?
            .execute(params_from_iter(params))?;
    }
    Ok(())
}

/// A transaction on the writer connection, holding the write lock.
#[derive(Debug)]
pub struct SqliteTx {
    writer: Worker,
    _lock: OwnedMutexGuard<()>,
    finished: bool,
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped without commit (an error or a cancelled request): undo.
            // Queued behind anything still running; the next BEGIN also rolls
            // back a transaction left open, should this job be dropped.
            self.writer.send(|conn| {
                let _ = conn.execute_batch("ROLLBACK");
            });
        }
    }
}

impl SqliteTx {
    /// Nothing to roll back any more.
    fn committed(&mut self) {
        self.finished = true;
    }
}

impl DriverTx for SqliteTx {
    fn query(&mut self, stmt: Stmt, params: Vec<Value>) -> StoreFuture<'_, Vec<Row>> {
        Box::pin(self.writer.run(move |conn| query(conn, stmt, params)))
    }

    fn execute(&mut self, batch: Vec<Statement>) -> StoreFuture<'_, ()> {
        Box::pin(self.writer.run(move |conn| execute(conn, batch)))
    }

    fn commit(mut self) -> StoreFuture<'static, ()> {
        Box::pin(async move {
            self.writer
                .run(|conn| Ok(conn.execute_batch("COMMIT")?))
                .await?;
            self.committed();
            Ok(())
        })
    }
}

impl Driver for SqliteDriver {
    type Tx = SqliteTx;

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// `BEGIN IMMEDIATE` takes SQLite's write lock for either kind of
    /// transaction: the one writer serializes log appends and quota grants.
    fn begin(&self, _lock: TxLock) -> StoreFuture<'_, SqliteTx> {
        Box::pin(async move {
            let waiting = self
                .write_waiters
                .clone()
                .try_acquire_owned()
                .map_err(|_| {
                    StoreError::Busy("too many writes are waiting for the database".into())
                })?;
            let lock = self.write_lock.clone().lock_owned().await;
            drop(waiting);
            self.writer
                .run(|conn| {
                    if !conn.is_autocommit() {
                        conn.execute_batch("ROLLBACK")?;
                    }
                    Ok(conn.execute_batch("BEGIN IMMEDIATE")?)
                })
                .await?;
            Ok(SqliteTx {
                writer: self.writer.clone(),
                _lock: lock,
                finished: false,
            })
        })
    }

    fn read(&self, stmt: Stmt, params: Vec<Value>) -> StoreFuture<'_, Vec<Row>> {
        Box::pin(self.reader.run(move |conn| query(conn, stmt, params)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CellQuery, LimitKey, Store};

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tollgate-sqlite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("recorder.db")
    }

    /// The version 1 schema's quota tables and envelopes, as recorders before
    /// version 2 created them.
    const V1_QUOTA_TABLES: &str = "
        CREATE TABLE quota_limits (quota_id TEXT NOT NULL, limit_name TEXT NOT NULL, window TEXT NOT NULL,
            PRIMARY KEY (quota_id, limit_name, window));
        CREATE TABLE quota_usage (quota_id TEXT NOT NULL, limit_name TEXT NOT NULL, window TEXT NOT NULL,
            bucket INTEGER NOT NULL, tokens INTEGER NOT NULL, requests INTEGER NOT NULL, cost INTEGER NOT NULL,
            PRIMARY KEY (quota_id, limit_name, window, bucket));
        CREATE TABLE quota_leases (lease_id TEXT PRIMARY KEY, quota_id TEXT NOT NULL, limit_name TEXT NOT NULL,
            window TEXT NOT NULL, window_start INTEGER NOT NULL, granted_tokens INTEGER NOT NULL,
            granted_requests INTEGER NOT NULL, granted_cost INTEGER NOT NULL, consumed_tokens INTEGER NOT NULL,
            consumed_requests INTEGER NOT NULL, consumed_cost INTEGER NOT NULL, expires_at INTEGER NOT NULL,
            holder TEXT NOT NULL, returned INTEGER NOT NULL, cap_tokens INTEGER, cap_requests INTEGER,
            cap_cost INTEGER, shadow INTEGER NOT NULL);
        CREATE INDEX quota_leases_key ON quota_leases (quota_id, limit_name, window, window_start);
        CREATE TABLE envelopes (log_index INTEGER PRIMARY KEY, segment_index INTEGER NOT NULL,
            stream_id TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, key_id TEXT NOT NULL,
            receipt_id TEXT UNIQUE, namespace TEXT, service_account TEXT, pod TEXT, provider TEXT,
            model TEXT, started_at_ms INTEGER, completed_at_ms INTEGER, input_tokens INTEGER,
            output_tokens INTEGER, cached_tokens INTEGER, cost_micro_usd INTEGER, decision TEXT,
            provider_request_id TEXT, body TEXT NOT NULL, UNIQUE (stream_id, seq));
        INSERT INTO envelopes VALUES (0, 0, 's', 1, 'h', 'k', 'r-1', 'ns', 'sa', 'p', 'openai',
            'gpt-4o', 5000, 5001, 3, 4, 0, 9, 'deny', NULL,
            '{\"record\":{\"receipt\":{\"body\":{\"verdict\":{\"decision\":\"deny\",\"reason\":\"model_not_allowed\"}}}}}');
        INSERT INTO quota_leases VALUES ('l-1', 'ns/q', 'daily', 'calendar:day', 0, 5, 1, 0, 0, 0, 0, 99, 'gw', 0, NULL, 10, NULL, 0);
        INSERT INTO quota_usage VALUES ('ns/q', 'daily', 'calendar:day', 3, 7, 1, 0);
        CREATE TABLE segments (segment_index INTEGER PRIMARY KEY, genesis TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL, seal TEXT, checkpoint TEXT, sealed_at_ms INTEGER,
            envelope_count INTEGER);
        INSERT INTO segments VALUES (0, '{}', 4000, '{}', '{}', 6000, 1);
        PRAGMA user_version = 1;";

    #[tokio::test]
    async fn a_version_1_database_is_migrated_and_keeps_its_quota_state() {
        let path = temp("migrate");
        Connection::open(&path)
            .unwrap()
            .execute_batch(V1_QUOTA_TABLES)
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        let key = store
            .lease_key("l-1")
            .await
            .unwrap()
            .expect("the lease survives");
        assert_eq!(key.window, "calendar:day");
        let mut tx = store.begin_quota(&key).await.unwrap();
        let lease = tx.lease("l-1").await.unwrap().unwrap();
        assert_eq!(lease.granted.tokens, 5);
        assert_eq!(lease.caps.requests, Some(10));
        assert_eq!(tx.usage_sum(0, 10).await.unwrap().tokens, 7);
        tx.commit().await.unwrap();
        // Segments sealed before version 4 have no stored log state and are kept.
        let segment = store.segment(0).await.unwrap().unwrap();
        assert_eq!(
            (segment.sealed_at_ms, segment.log_state_json, segment.pruned),
            (6000, None, false)
        );
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SQLITE_VERSION);
        // Receipts stored before callers were hashed group under no caller.
        let cells = store
            .usage_cells(&CellQuery {
                since_ms: 0,
                until_ms: 10_000,
                namespace: None,
                by_caller: true,
                by_reason: true,
                before_log_index: None,
            })
            .await
            .unwrap();
        assert_eq!(cells.len(), 1);
        assert_eq!((cells[0].requests, cells[0].caller.as_str()), (1, ""));
        // Receipts stored before reasons had a column get theirs from their body.
        assert_eq!(cells[0].reason, "model_not_allowed");
        drop(store);
        // Opening again is a no-op.
        SqliteStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn a_newer_database_is_refused_not_downgraded() {
        let path = temp("newer");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SQLITE_VERSION + 1)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn waiting_writers_are_bounded_and_the_excess_is_told_busy() {
        let path = temp("busy");
        let store = SqliteStore::open_bounded(&path, 4, 2).unwrap();
        let held = store.begin_log().await.unwrap();
        let key = LimitKey {
            quota_id: "ns/q".into(),
            limit: "l".into(),
            window: "calendar:day".into(),
        };
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move { store.begin_quota(&key).await.map(drop) })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let refused = store
            .begin_log()
            .await
            .err()
            .expect("a third waiter is refused");
        assert!(matches!(refused, StoreError::Busy(_)), "{refused}");
        drop(held);
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        // Once the queue drains, writes go through again.
        store.begin_log().await.unwrap().commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_transaction_dropped_without_commit_is_rolled_back() {
        let path = temp("rollback");
        let store = SqliteStore::open(&path).unwrap();
        let key = LimitKey {
            quota_id: "ns/q".into(),
            limit: "l".into(),
            window: "calendar:day".into(),
        };
        let mut tx = store.begin_quota(&key).await.unwrap();
        tx.add_usage(
            1,
            tollgate_wire::quota_math::Amounts {
                tokens: 9,
                requests: 1,
                cost_micro_usd: 0,
            },
        )
        .await
        .unwrap();
        drop(tx);
        let mut tx = store.begin_quota(&key).await.unwrap();
        assert_eq!(tx.usage_sum(0, 10).await.unwrap().tokens, 0);
        tx.commit().await.unwrap();
    }
}
