//! Verified ingest into SQLite (parse, certificate, hash, signature, chain, one
//! transaction per batch with synchronous=FULL), in receipts per second, beside the
//! raw Ed25519 `verify_strict` rate measured in the same run. Numbers are recorded
//! in docs/recorder.md. Run: `cargo bench -p tollgate-recorder --bench ingest`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_evidence::{EnvelopeRecord, PublicKey, StreamChainWriter};
use tollgate_recorder::auth::{Caller, Policy};
use tollgate_recorder::clock::SystemClock;
use tollgate_recorder::metrics::Metrics;
use tollgate_recorder::recorder::{Recorder, RecorderOptions};
use tollgate_recorder::settings::Settings;
use tollgate_recorder::store::sqlite::SqliteStore;
use tollgate_test_support::fixtures::{Gateway, key_from, trust_for};

const BATCH: usize = 1_000;

fn raw_verify(c: &mut Criterion) {
    let gw = Gateway::new(1).unwrap();
    let envelope = &gw.stream(1, false).unwrap()[0];
    let EnvelopeRecord::Receipt(receipt) = &envelope.record else {
        panic!()
    };
    let message = receipt.body.canonical_bytes().unwrap();
    let public = PublicKey::of_signing_key(&gw.key);
    let mut group = c.benchmark_group("recorder");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ed25519_verify_strict_raw", |b| {
        b.iter(|| {
            public
                .verify_strict(black_box(&message), black_box(&receipt.signature))
                .unwrap()
        })
    });
    group.finish();
}

fn verified_ingest_sqlite(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tollgate-bench-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let gw = Gateway::new(1).unwrap();
    let gw2 = Gateway::new(2).unwrap();
    let recorder = runtime.block_on(async {
        let store = Arc::new(SqliteStore::open(&dir.join("recorder.db")).unwrap());
        let key = key_from("recorder");
        Recorder::open(
            store,
            RecorderOptions {
                settings: Settings::default(),
                trust: trust_for(&gw),
                origin: tollgate_recorder::identity::default_origin(&key).unwrap(),
                key,
                clock: Arc::new(SystemClock),
                metrics: Arc::new(Metrics::new()),
                policy: Policy::default(),
                verify_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            },
        )
        .await
        .unwrap()
    });
    let recorder = Arc::new(recorder);
    let mut streams = [gw, gw2].map(|g| (StreamChainWriter::new(g.stream_id.clone()), g, 0u64));
    let mut batch = |s: usize| {
        let (writer, gw, next) = &mut streams[s];
        let envelopes: Vec<_> = (0..BATCH)
            .map(|_| {
                *next += 1;
                writer
                    .sign_and_append(gw.body(*next).unwrap(), &gw.key)
                    .unwrap()
            })
            .collect();
        gw.batch_json(&envelopes).unwrap()
    };
    let mut group = c.benchmark_group("recorder");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("verified_ingest_sqlite_batch_1000", |b| {
        b.iter_custom(|iters| {
            let bodies: Vec<Vec<u8>> = (0..iters).map(|_| batch(0)).collect();
            let start = Instant::now();
            for body in bodies {
                let r = runtime
                    .block_on(recorder.ingest(&body, &Caller::Local))
                    .unwrap();
                assert_eq!(r.accepted, BATCH as u64, "{:?}", r.rejected.first());
            }
            start.elapsed()
        })
    });
    // Two gateways shipping at once: one batch's verification overlaps the
    // other's transaction.
    group.throughput(Throughput::Elements(2 * BATCH as u64));
    group.bench_function("verified_ingest_sqlite_2_streams_batch_1000", |b| {
        b.iter_custom(|iters| {
            let bodies: Vec<(Vec<u8>, Vec<u8>)> =
                (0..iters).map(|_| (batch(0), batch(1))).collect();
            let start = Instant::now();
            for (a, b) in bodies {
                let (ra, rb) = runtime.block_on(async {
                    let (r1, r2) = (recorder.clone(), recorder.clone());
                    let one = tokio::spawn(async move { r1.ingest(&a, &Caller::Local).await });
                    let two = tokio::spawn(async move { r2.ingest(&b, &Caller::Local).await });
                    (one.await.unwrap().unwrap(), two.await.unwrap().unwrap())
                });
                assert_eq!(ra.accepted + rb.accepted, 2 * BATCH as u64);
            }
            start.elapsed()
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, raw_verify, verified_ingest_sqlite);
criterion_main!(benches);
