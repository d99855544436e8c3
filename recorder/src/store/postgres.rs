//! The PostgreSQL driver, for recorder replicas sharing one database.
//!
//! Log appends take a transaction-scoped advisory lock (one log, one writer at a
//! time across replicas); quota transactions lock their limit's `quota_limits`
//! row with `SELECT … FOR UPDATE` (the engine's `LockLimit`), so concurrent
//! grants on one limit serialize and never over-grant. Connections come from a
//! small pool, each with its prepared statements; a connection whose
//! transaction did not commit is closed, never reused, so the server rolls it
//! back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::engine::{Driver, DriverTx, Engine, TxLock};
use super::rows::{Row, Statement, Value};
use super::sql::{Dialect, LATE_INDEXES, POSTGRES_UPGRADES, SCHEMA, Stmt};
use super::{StoreError, StoreFuture};

/// PostgreSQL storage.
pub type PostgresStore = Engine<PostgresDriver>;

/// Advisory lock key for log appends ("tgLOG").
const LOG_LOCK: i64 = 0x0074_674c_4f47;
/// Advisory lock key for schema creation.
const SCHEMA_LOCK: i64 = 0x0074_6753_4348;

/// A client with the statements prepared on it.
#[derive(Debug)]
struct Pooled {
    client: Client,
    prepared: HashMap<Stmt, tokio_postgres::Statement>,
}

#[derive(Debug)]
struct PoolInner {
    url: String,
    idle: Mutex<Vec<Pooled>>,
    permits: Arc<Semaphore>,
}

/// A pooled connection. Returned to the pool on drop only if `clean`.
struct Conn {
    client: Option<Pooled>,
    pool: Arc<PoolInner>,
    clean: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// The transaction is over: the connection may be reused.
    fn return_to_pool_when_dropped(&mut self) {
        self.clean = true;
    }

    fn pooled(&mut self) -> Result<&mut Pooled, StoreError> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("connection already released".into()))
    }

    fn client(&self) -> Result<&Client, StoreError> {
        self.client
            .as_ref()
            .map(|p| &p.client)
            .ok_or_else(|| StoreError::Unavailable("connection already released".into()))
    }

    async fn statement(&mut self, stmt: Stmt) -> Result<tokio_postgres::Statement, StoreError> {
        let pooled = self.pooled()?;
        if let Some(prepared) = pooled.prepared.get(&stmt) {
            return Ok(prepared.clone());
        }
        let prepared = pooled.client.prepare(Dialect::Postgres.sql(stmt)).await?;
        pooled.prepared.insert(stmt, prepared.clone());
        Ok(prepared)
    }

    async fn query(&mut self, stmt: Stmt, params: Vec<Value>) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(stmt).await?;
        let params = to_postgres(params);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
        let rows = self.client()?.query(&statement, &refs).await?;
        rows.iter().map(from_postgres).collect()
    }

    async fn execute(&mut self, batch: Vec<Statement>) -> Result<(), StoreError> {
        for (stmt, params) in batch {
            let statement = self.statement(stmt).await?;
            let params = to_postgres(params);
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
            self.client()?.execute(&statement, &refs).await?;
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && self.clean
            && !client.client.is_closed()
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

/// Runs the PostgreSQL side of the engine.
#[derive(Debug)]
pub struct PostgresDriver {
    pool: Arc<PoolInner>,
}

impl PostgresStore {
    /// Connects (`postgres://user:password@host:port/db`), with at most
    /// `max_connections` connections, and creates the schema if needed.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let store = Self {
            driver: Arc::new(PostgresDriver {
                pool: Arc::new(PoolInner {
                    url: url.to_string(),
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(max_connections.max(2))),
                }),
            }),
        };
        let conn = store.driver.conn().await?;
        let c = conn.client()?;
        c.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        let schema = format!("{SCHEMA}\n{POSTGRES_UPGRADES}\n{LATE_INDEXES}");
        let created = c.batch_execute(&Dialect::Postgres.render(&schema)).await;
        c.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
            .await?;
        created?;
        Ok(store)
    }

    /// Drops every table (tests only: gives each test run a clean database).
    pub async fn reset_for_tests(&self) -> Result<(), StoreError> {
        let conn = self.driver.conn().await?;
        conn.client()?
            .batch_execute(
                "TRUNCATE log_meta, segments, envelopes, streams, certificates, chain_faults, quota_limits, quota_usage, quota_leases",
            )
            .await?;
        Ok(())
    }
}

impl PostgresDriver {
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
            Some(c) if !c.client.is_closed() => c,
            _ => Pooled {
                client: open_client(&self.pool.url).await?,
                prepared: HashMap::new(),
            },
        };
        Ok(Conn {
            client: Some(client),
            pool: self.pool.clone(),
            clean: true,
            _permit: permit,
        })
    }
}

fn to_postgres(params: Vec<Value>) -> Vec<Box<dyn ToSql + Sync + Send>> {
    params
        .into_iter()
        .map(|v| -> Box<dyn ToSql + Sync + Send> {
            match v {
                Value::Int(v) => Box::new(v),
                Value::Text(v) => Box::new(v),
                Value::Bool(v) => Box::new(v),
                Value::TextArray(v) => Box::new(v),
                Value::Null => Box::new(None::<String>),
            }
        })
        .collect()
}

fn from_postgres(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let value = match *column.type_() {
            Type::INT8 => Value::Int(row.try_get::<_, Option<i64>>(i)?),
            Type::INT4 => Value::Int(row.try_get::<_, Option<i32>>(i)?.map(i64::from)),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                Value::Text(row.try_get::<_, Option<String>>(i)?)
            }
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)?
                .map_or(Value::Null, Value::Bool),
            ref other => {
                return Err(StoreError::Corrupt(format!(
                    "column {i} has unexpected type {other}"
                )));
            }
        };
        values.push(value);
    }
    Ok(Row(values))
}

/// A transaction on one pooled connection.
pub struct PostgresTx {
    conn: Conn,
}

impl std::fmt::Debug for PostgresTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTx").finish_non_exhaustive()
    }
}

impl DriverTx for PostgresTx {
    fn query(&mut self, stmt: Stmt, params: Vec<Value>) -> StoreFuture<'_, Vec<Row>> {
        Box::pin(self.conn.query(stmt, params))
    }

    fn execute(&mut self, batch: Vec<Statement>) -> StoreFuture<'_, ()> {
        Box::pin(self.conn.execute(batch))
    }

    fn commit(mut self) -> StoreFuture<'static, ()> {
        Box::pin(async move {
            self.conn.client()?.batch_execute("COMMIT").await?;
            self.conn.return_to_pool_when_dropped();
            Ok(())
        })
    }
}

impl Driver for PostgresDriver {
    type Tx = PostgresTx;

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn begin(&self, lock: TxLock) -> StoreFuture<'_, PostgresTx> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            conn.clean = false;
            let client = conn.client()?;
            client.batch_execute("BEGIN").await?;
            if lock == TxLock::Log {
                client
                    .execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])
                    .await?;
            }
            Ok(PostgresTx { conn })
        })
    }

    fn read(&self, stmt: Stmt, params: Vec<Value>) -> StoreFuture<'_, Vec<Row>> {
        Box::pin(async move { self.conn().await?.query(stmt, params).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_cannot_be_reached_is_unavailable_not_an_error() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://tollgate:secret@127.0.0.1:{port}/tollgate");
        match PostgresStore::connect(&url, 2).await {
            Err(StoreError::Unavailable(why)) => {
                assert!(why.contains("refused"), "{why}");
                assert!(!why.contains("secret"), "no password in errors: {why}");
            }
            other => panic!("expected Unavailable, got {:?}", other.err()),
        }
    }
}
