//! Shared test support: stores for both backends, a recorder on a manual clock,
//! and bundle verification against the recorder's and the CA's keys.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

pub mod process;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate_evidence::{
    KeyRole, KeyState, PublicKey, SigningKey, Timestamp, TrustRoots, TrustedKey, VerifyOptions,
    verify_bundle,
};
use tollgate_recorder::auth::Policy;
use tollgate_recorder::clock::ManualClock;
use tollgate_recorder::metrics::Metrics;
use tollgate_recorder::recorder::{Recorder, RecorderOptions};
use tollgate_recorder::settings::Settings;
use tollgate_recorder::store::Store;
use tollgate_recorder::store::postgres::PostgresStore;
use tollgate_recorder::store::sqlite::SqliteStore;
use tollgate_test_support::fixtures::{self, T0_MS};

/// A fresh directory under the cargo target tmp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "recorder-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The recorder key every test uses.
pub fn recorder_key() -> SigningKey {
    fixtures::key_from("recorder")
}

/// Trust roots with the receipt CA and the recorder key.
pub fn auditor_trust() -> TrustRoots {
    let mut trust = fixtures::trust_for_ca(&fixtures::key_from("receipt-ca"));
    let public = PublicKey::of_signing_key(&recorder_key());
    trust.keys.push(TrustedKey {
        key_id: public.key_id(),
        public_key: public,
        role: KeyRole::Recorder,
        not_before: Timestamp::UNIX_EPOCH,
        not_after: None,
        state: KeyState::Active,
    });
    trust
}

/// A SQLite store in a fresh directory.
pub fn sqlite(name: &str) -> Arc<dyn Store> {
    let dir = temp_dir(name);
    Arc::new(SqliteStore::open(&dir.join("recorder.db")).unwrap())
}

/// The PostgreSQL URL from the e2e harness. In CI (`CI` set) its absence fails
/// the test; locally the test is skipped with a printed reason.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!(
            "TOLLGATE_TEST_POSTGRES_URL is not set in CI: run `e2e/postgres.sh up` and `eval \"$(e2e/postgres.sh env)\"`"
        ),
        _ => {
            eprintln!(
                "skipping the PostgreSQL backend: TOLLGATE_TEST_POSTGRES_URL is not set (run `e2e/postgres.sh up` and `eval \"$(e2e/postgres.sh env)\"`)"
            );
            None
        }
    }
}

/// A PostgreSQL store in a fresh schema of the harness database.
pub async fn postgres(name: &str) -> Option<Arc<dyn Store>> {
    let scoped = postgres_schema(name).await?;
    Some(Arc::new(PostgresStore::connect(&scoped, 8).await.unwrap()))
}

/// A fresh, empty schema of its own for `name` (what earlier runs left is
/// dropped): the URL that works in it, or `None` without PostgreSQL.
pub async fn postgres_schema(name: &str) -> Option<String> {
    let url = postgres_url()?;
    static N: AtomicU64 = AtomicU64::new(0);
    // PostgreSQL cuts identifiers at 63 bytes: keep the name short so the
    // unique suffix survives.
    let short: String = name.replace('-', "_").chars().take(32).collect();
    let schema = format!(
        "t_{}_{}_{}",
        short,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    // Drop what earlier runs of this test left, then start clean.
    let prefix = format!("t_{short}_");
    for row in client
        .query(
            "SELECT schema_name FROM information_schema.schemata WHERE starts_with(schema_name, $1)",
            &[&prefix],
        )
        .await
        .unwrap()
    {
        let old: String = row.get(0);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {old} CASCADE"))
            .await
            .unwrap();
    }
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
}

/// Settings for tests: small segments.
pub fn settings(seal_max_envelopes: u64) -> Settings {
    Settings {
        seal_max_envelopes,
        seal_max_age_ms: 60_000,
        ..Settings::default()
    }
}

/// A recorder on `store` with a manual clock starting a day after the receipts.
pub async fn recorder(
    store: Arc<dyn Store>,
    settings: Settings,
) -> (Arc<Recorder>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0_MS + 24 * 3_600_000));
    let key = recorder_key();
    let recorder = Recorder::open(
        store,
        RecorderOptions {
            settings,
            trust: fixtures::trust_for_ca(&fixtures::key_from("receipt-ca")),
            origin: tollgate_recorder::identity::default_origin(&key).unwrap(),
            key,
            clock: clock.clone(),
            metrics: Arc::new(Metrics::new()),
            policy: Policy::default(),
            verify_threads: 2,
        },
    )
    .await
    .unwrap();
    (Arc::new(recorder), clock)
}

/// Verifies a serialized bundle against the auditor's trust roots.
pub fn verify(bytes: &[u8]) -> tollgate_evidence::VerificationReport {
    verify_bundle(
        bytes,
        &VerifyOptions {
            trust: Some(auditor_trust()),
            ..Default::default()
        },
    )
}
