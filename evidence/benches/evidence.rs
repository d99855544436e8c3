//! Throughput of signing, chaining, verifying and Merkle roots, against raw Ed25519
//! baselines. Results and ratios are recorded in docs/evidence.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::Signer as _;
use tollgate_evidence::chain::StreamChainWriter;
use tollgate_evidence::fields::Identifier;
use tollgate_evidence::merkle::{leaf_hash, merkle_root};
use tollgate_evidence::receipt::SignedReceipt;
use tollgate_evidence::verify::verify_bundle;

fn raw_ed25519(c: &mut Criterion) {
    let spec = common::Spec::default();
    let keys = common::Keys::new(1, 1);
    let key = &keys.gateways[0];
    // The same message a receipt signature covers: the canonical body.
    let message = common::receipt_body(&spec, 0, 1).canonical_bytes().unwrap();
    let signature = key.sign(&message);
    let public = key.verifying_key();
    let mut group = c.benchmark_group("ed25519");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign_raw", |b| b.iter(|| key.sign(black_box(&message))));
    group.bench_function("verify_strict_raw", |b| {
        b.iter(|| {
            public
                .verify_strict(black_box(&message), black_box(&signature))
                .unwrap()
        })
    });
    group.finish();
}

fn sign_and_chain(c: &mut Criterion) {
    let spec = common::Spec::default();
    let keys = common::Keys::new(1, 1);
    let key = keys.gateways[0].clone();
    let body = common::receipt_body(&spec, 0, 1);
    let mut writer = StreamChainWriter::new(Identifier::new("bench-stream").unwrap());
    let mut group = c.benchmark_group("receipt");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign_and_chain", |b| {
        b.iter_batched(
            || body.clone(),
            |body| writer.sign_and_append(body, &key).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("sign_then_append", |b| {
        b.iter_batched(
            || body.clone(),
            |body| {
                writer
                    .append(SignedReceipt::sign(body, &key).unwrap())
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let signed = SignedReceipt::sign(body.clone(), &key).unwrap();
    group.bench_function("canonical_body", |b| {
        b.iter(|| black_box(&body).canonical_bytes().unwrap())
    });
    group.bench_function("chain_presigned", |b| {
        b.iter_batched(
            || signed.clone(),
            |signed| writer.append(signed).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn verify(c: &mut Criterion) {
    let spec = common::Spec {
        streams: 5,
        receipts_per_stream: 100,
        segment_size: 101,
        seed: 7,
    };
    let fixture = common::build(spec);
    let bytes = fixture.bytes();
    let options = fixture.options();
    let receipts = (spec.streams * spec.receipts_per_stream) as u64;
    assert!(verify_bundle(&bytes, &options).passed());
    let mut group = c.benchmark_group("bundle");
    group.throughput(Throughput::Elements(receipts));
    group.bench_function("verify_500_receipts", |b| {
        b.iter(|| verify_bundle(black_box(&bytes), &options))
    });
    group.finish();
}

fn merkle(c: &mut Criterion) {
    let leaves: Vec<_> = (0u64..100_000)
        .map(|i| leaf_hash(&i.to_le_bytes()))
        .collect();
    let mut group = c.benchmark_group("merkle");
    group.throughput(Throughput::Elements(leaves.len() as u64));
    group.bench_function("root_100k_leaves", |b| {
        b.iter(|| merkle_root(black_box(&leaves)))
    });
    group.finish();
}

criterion_group!(benches, raw_ed25519, sign_and_chain, verify, merkle);
criterion_main!(benches);
