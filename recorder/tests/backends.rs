//! The storage behaviour suite: every scenario runs against SQLite and against
//! PostgreSQL (from `e2e/postgres.sh`), and one test checks both backends give
//! byte-identical answers for the same script.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::Arc;

use tollgate_crds::quota::{CalendarWindow, Enforcement};
use tollgate_evidence::{EnvelopeRecord, PrevHash, SignatureHex};
use tollgate_recorder::RecorderError;
use tollgate_recorder::auth::Caller;
use tollgate_recorder::export::ExportRange;
use tollgate_recorder::ingest::{IngestResponse, RejectReason};
use tollgate_recorder::key_health;
use tollgate_recorder::quota::{AmountsWire, GrantRequest, RenewRequest, ReturnRequest};
use tollgate_recorder::recorder::Recorder;
use tollgate_recorder::settings::{SinkSettings, SinkTarget};
use tollgate_recorder::store::Store;
use tollgate_recorder::usage::{Bucket, GroupKey, Page, UsageQuery};
use tollgate_test_support::fixtures::{Gateway, HOUR_MS, T0_MS, caller_hash, key_from};
use tollgate_wire::config::{CompiledLimit, LimitWindow};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::common::sqlite(stringify!($name))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(store) = super::common::postgres(stringify!($name)).await {
                    super::$name(store).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    ingest_dedups_resumes_and_exports_a_verifiable_bundle,
    every_bad_batch_is_refused_with_its_reason_and_nothing_is_stored,
    concurrent_lessees_never_overgrant_a_request_cap,
    concurrent_partial_grants_sum_exactly_to_the_cap,
    leases_renew_return_and_expire,
    a_reopened_recorder_resumes_the_open_segment,
    range_exports_continue_a_held_checkpoint,
    retention_deletes_only_segments_a_sink_holds,
    key_reports_replace_each_other_and_expire,
);

const LOCAL: Caller = Caller::Local;

async fn ingest(
    rec: &Recorder,
    gw: &Gateway,
    envelopes: &[tollgate_evidence::Envelope],
) -> IngestResponse {
    rec.ingest(&gw.batch_json(envelopes).unwrap(), &LOCAL)
        .await
        .unwrap()
}

fn all_time() -> UsageQuery {
    UsageQuery {
        since_ms: T0_MS - HOUR_MS,
        until_ms: T0_MS + 48 * HOUR_MS,
        namespace: None,
        group_by: vec![],
        bucket: None,
        page: Page::default(),
    }
}

async fn ingest_dedups_resumes_and_exports_a_verifiable_bundle(store: Arc<dyn Store>) {
    let (rec, _clock) = common::recorder(store, common::settings(4)).await;
    let g1 = Gateway::new(1).unwrap();
    let g2 = Gateway::new(2).unwrap();
    let s1 = g1.stream(6, true).unwrap();
    let s2 = g2.stream(3, true).unwrap();

    let r = ingest(&rec, &g1, &s1[..3]).await;
    assert_eq!(
        (r.accepted, r.duplicates, r.next_seq, r.closed),
        (3, 0, 4, false)
    );
    // A resend overlapping what is stored: duplicates are counted, not stored again.
    let r = ingest(&rec, &g1, &s1[1..]).await;
    assert_eq!(
        (r.accepted, r.duplicates, r.next_seq, r.closed),
        (4, 2, 8, true)
    );
    assert!(r.rejected.is_empty());
    let r = ingest(&rec, &g2, &s2).await;
    assert_eq!((r.accepted, r.next_seq, r.closed), (4, 5, true));
    // After the close nothing more is accepted, but a resend is still a duplicate.
    let r = ingest(&rec, &g2, &s2).await;
    assert_eq!((r.accepted, r.duplicates), (0, 4));

    let status = rec
        .stream_status(g1.stream_id.as_str(), &LOCAL)
        .await
        .unwrap();
    assert_eq!((status.next_seq, status.closed), (8, true));

    let report = rec.usage(&all_time(), &LOCAL).await.unwrap();
    // 6 + 3 receipts; input 100+i, output 10+i, cost 1000+i.
    assert_eq!(report.total.requests, 9);
    assert_eq!(
        report.total.input_tokens,
        (0..6).map(|i| 100 + i).sum::<u64>() + (0..3).map(|i| 100 + i).sum::<u64>()
    );
    assert_eq!(
        report.total.cost_micro_usd,
        (0..6).map(|i| 1000 + i).sum::<u64>() + (0..3).map(|i| 1000 + i).sum::<u64>()
    );
    // The breakdowns: cache reads i % 3, two cache writes on odd receipts,
    // i reasoning tokens on even ones from 2 on.
    let (reads, writes, reasoning) = (0..6u64).chain(0..3).fold((0, 0, 0), |(r, w, z), i| {
        let even = i.is_multiple_of(2);
        (
            r + i % 3,
            w + if even { 0 } else { 2 },
            z + if even && i >= 2 { i } else { 0 },
        )
    });
    assert_eq!(
        (
            report.total.cached_tokens,
            report.total.cache_write_tokens,
            report.total.reasoning_tokens
        ),
        (reads, writes, reasoning)
    );
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // Both streams closed: the newest record (a receipt or a close) is the
    // freshness, and no stream is open.
    let newest = s1
        .iter()
        .chain(&s2)
        .map(|e| match &e.record {
            tollgate_evidence::EnvelopeRecord::Receipt(r) => r.body.started_at,
            tollgate_evidence::EnvelopeRecord::Decision(d) => d.decision.started_at,
            tollgate_evidence::EnvelopeRecord::Close(c) => c.close.closed_at,
        })
        .max()
        .unwrap();
    assert_eq!(
        report
            .freshness
            .as_ref()
            .unwrap()
            .newest_record_at
            .as_deref(),
        Some(newest.to_canonical_string().as_str())
    );
    assert_eq!(report.freshness.as_ref().unwrap().open_streams, 0);
    assert_eq!(
        report
            .freshness
            .as_ref()
            .unwrap()
            .quietest_open_stream_since,
        None
    );

    let mut q = all_time();
    q.group_by = vec![GroupKey::Namespace, GroupKey::Model];
    q.bucket = Some(Bucket::Hour);
    let grouped = rec.usage(&q, &LOCAL).await.unwrap();
    assert_eq!(
        grouped.rows.iter().map(|r| r.totals.requests).sum::<u64>(),
        9
    );
    assert_eq!(grouped.rows.len(), 4, "2 namespaces x 2 models in one hour");

    let bundle = rec.export(ExportRange::Everything, &LOCAL).await.unwrap();
    assert_eq!(bundle.manifest.counts.envelopes.get(), 11);
    assert_eq!(
        bundle.manifest.counts.segments.get(),
        3,
        "4 + 4 + 3 (the last sealed by the export)"
    );
    let report = common::verify(&bundle.to_json().unwrap());
    assert!(
        report.passed(),
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
}

/// `after` naming `checkpoint`.
fn after(checkpoint: &tollgate_evidence::SignedCheckpoint) -> ExportRange {
    ExportRange::After {
        size: checkpoint.checkpoint.size.get(),
        checkpoint_hash: checkpoint.checkpoint.hash().unwrap(),
        until_ms: None,
    }
}

/// Verifies with the auditor's trust roots and the checkpoints they hold.
fn verify_holding(
    bundle: &tollgate_evidence::Bundle,
    held: &[tollgate_evidence::SignedCheckpoint],
) -> tollgate_evidence::VerificationReport {
    tollgate_evidence::verify_bundle(
        &bundle.to_json().unwrap(),
        &tollgate_evidence::VerifyOptions {
            trust: Some(common::auditor_trust()),
            known_checkpoints: held.to_vec(),
            ..Default::default()
        },
    )
}

async fn range_exports_continue_a_held_checkpoint(store: Arc<dyn Store>) {
    let (rec, _clock) = common::recorder(store, common::settings(4)).await;
    let g1 = Gateway::new(1).unwrap();
    // 10 receipts and a close: segments of 4, 4 and 3.
    ingest(&rec, &g1, &g1.stream(10, true).unwrap()).await;
    let full = rec.export(ExportRange::Everything, &LOCAL).await.unwrap();
    assert!(full.base.is_none());
    assert_eq!(full.segments.len(), 3);
    let held = full.checkpoints[0].clone();

    // After the checkpoint an auditor kept: segments 1 and 2, based on it.
    let range = rec.export(after(&held), &LOCAL).await.unwrap();
    assert_eq!(range.base.as_ref().unwrap().checkpoint, held);
    assert_eq!(range.segments.len(), 2);
    assert_eq!(range.segments[0].genesis.segment_index.get(), 1);
    let report = verify_holding(&range, std::slice::from_ref(&held));
    assert!(report.passed(), "{report:#?}");
    let summary = report.summary.unwrap();
    assert_eq!((summary.streams_continued, summary.open_streams), (1, 0));

    // A checkpoint of another history at the same size is refused (409), as is
    // a size no checkpoint of this log has.
    let mut forged = held.clone();
    forged.checkpoint.root = tollgate_evidence::sha256(b"another history");
    let err = rec.export(after(&forged), &LOCAL).await.unwrap_err();
    assert!(matches!(err, RecorderError::Conflict(_)), "{err}");
    let mut odd = held.clone();
    odd.checkpoint.size = tollgate_evidence::SafeU64::from(5u32);
    let err = rec.export(after(&odd), &LOCAL).await.unwrap_err();
    assert!(matches!(err, RecorderError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("no checkpoint of size 5"), "{err}");
    // Nothing after the newest checkpoint yet.
    let newest = full.checkpoints[2].clone();
    let err = rec.export(after(&newest), &LOCAL).await.unwrap_err();
    assert!(err.to_string().contains("nothing after"), "{err}");

    // Exactly the segments asked for; the stream is closed in a later one.
    let middle = rec
        .export(ExportRange::Segments { first: 1, last: 1 }, &LOCAL)
        .await
        .unwrap();
    assert_eq!(middle.segments.len(), 1);
    assert!(verify_holding(&middle, &[]).passed_but_open_streams());

    // Another gateway's receipts land in segment 3. A range since receipt 8
    // of the first (by the receipts' own start times) begins with segment 2,
    // based on checkpoint 1; last night's checkpoint (the newest above) anchors
    // the range after it.
    let g2 = Gateway::new(2).unwrap();
    ingest(&rec, &g2, &g2.stream(2, true).unwrap()).await;
    let recent = rec
        .export(
            ExportRange::Time {
                since_ms: Some(T0_MS + 8_000),
                until_ms: u64::MAX >> 11,
            },
            &LOCAL,
        )
        .await
        .unwrap();
    assert_eq!(recent.segments.len(), 2);
    assert_eq!(recent.segments[0].genesis.segment_index.get(), 2);
    assert!(verify_holding(&recent, &full.checkpoints[1..2]).passed());
    let nightly = rec.export(after(&newest), &LOCAL).await.unwrap();
    assert_eq!(nightly.segments, recent.segments[1..]);
    assert!(verify_holding(&nightly, std::slice::from_ref(&newest)).passed());
    // A held checkpoint older than the range's base cannot be vouched for.
    let report = verify_holding(&nightly, std::slice::from_ref(&held));
    assert!(
        report
            .findings()
            .any(|f| f.code == tollgate_evidence::ErrorCode::KnownCheckpointBeforeBundle),
        "{report:#?}"
    );
    // A held checkpoint from past this log's end: the log is shorter than what
    // the auditor saw.
    let mut ahead = newest.clone();
    ahead.checkpoint.size = tollgate_evidence::SafeU64::from(1_000u32);
    let err = rec.export(after(&ahead), &LOCAL).await.unwrap_err();
    assert!(err.to_string().contains("shorter"), "{err}");
}

async fn retention_deletes_only_segments_a_sink_holds(store: Arc<dyn Store>) {
    const DAY_MS: u64 = 24 * HOUR_MS;
    let dir = common::temp_dir("retention");
    let sink_file = dir.join("sink").join("checkpoints.jsonl");
    let mut settings = common::settings(4);
    settings.retention_ms = Some(DAY_MS);
    // A recorder without a sink never deletes anything.
    let (unsunk, unsunk_clock) = common::recorder(store.clone(), settings.clone()).await;
    settings.sinks = vec![SinkSettings {
        name: "audit-file".into(),
        target: SinkTarget::File(sink_file.clone()),
    }];
    let (rec, clock) = common::recorder(store.clone(), settings).await;

    let g1 = Gateway::new(1).unwrap();
    let g2 = Gateway::new(2).unwrap();
    let g2_stream = g2.stream(4, false).unwrap();
    // Segments 0 and 1 (4 each), 2 (3: the close), 3 (g2's first two; g2 stays open).
    ingest(&rec, &g1, &g1.stream(10, true).unwrap()).await;
    rec.seal_now().await.unwrap();
    ingest(&rec, &g2, &g2_stream[..2]).await;
    rec.seal_now().await.unwrap();

    // Two days on every segment is past retention, but the sink's directory
    // does not exist, so it holds no checkpoint: nothing is deleted.
    clock.advance(2 * DAY_MS);
    unsunk_clock.advance(2 * DAY_MS);
    let report = unsunk.apply_retention().await.unwrap();
    assert!(report.pruned.is_empty());
    assert!(report.blocked.unwrap().contains("no checkpoint sink"));
    let report = rec.apply_retention().await.unwrap();
    assert!(report.pruned.is_empty(), "{report:?}");
    assert_eq!(report.awaiting_sink, 4);
    assert_eq!(
        rec.export(ExportRange::Everything, &LOCAL)
            .await
            .unwrap()
            .segments
            .len(),
        4
    );

    // The sink comes back: the next checkpoint (segment 4) reaches it and
    // covers segments 0 to 3, which are older than a day; 4 is not.
    std::fs::create_dir_all(sink_file.parent().unwrap()).unwrap();
    let g3 = Gateway::new(3).unwrap();
    ingest(&rec, &g3, &g3.stream(1, true).unwrap()).await;
    let newest = rec.seal_now().await.unwrap().unwrap();
    let size = newest.checkpoint.size.get();
    for _ in 0..100 {
        if store
            .sink_progress()
            .await
            .unwrap()
            .iter()
            .any(|(sink, held)| sink.starts_with("audit-file ") && *held >= size)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report = rec.apply_retention().await.unwrap();
    assert_eq!(report.pruned, [0, 1, 2, 3], "{report:?}");
    assert_eq!(report.awaiting_sink, 0);
    assert!(rec.apply_retention().await.unwrap().pruned.is_empty());

    // Deleted segments cannot be exported; everything kept is a range bundle
    // based on segment 3's checkpoint, and verifies against the checkpoint
    // the sink holds.
    let err = rec
        .export(ExportRange::Segments { first: 0, last: 4 }, &LOCAL)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("retention deleted the segments before 4"),
        "{err}"
    );
    let text = std::fs::read_to_string(&sink_file).unwrap();
    let held =
        tollgate_evidence::SignedCheckpoint::from_json(text.lines().last().unwrap().as_bytes())
            .unwrap();
    assert_eq!(held, newest);

    // g1 closed and was deleted whole: a resend is refused, stream closed.
    let r = ingest(&rec, &g1, &g1.stream(10, true).unwrap()[9..]).await;
    assert_eq!(r.accepted, 0, "{r:?}");
    assert!(
        r.rejected
            .iter()
            .all(|x| x.reason == RejectReason::StreamClosed),
        "{r:?}"
    );
    // Receipts since before the deletion cannot all be exported: said, not cut.
    let err = rec
        .export(
            ExportRange::Time {
                since_ms: Some(T0_MS),
                until_ms: u64::MAX >> 11,
            },
            &LOCAL,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("retention deleted receipts since then"),
        "{err}"
    );

    // g2 is still open: its newest envelope was kept, so it goes on.
    let r = ingest(&rec, &g2, &g2_stream[2..]).await;
    assert_eq!((r.accepted, r.next_seq), (2, 5), "{r:?}");
    let kept = rec.export(ExportRange::Everything, &LOCAL).await.unwrap();
    assert_eq!(kept.segments[0].genesis.segment_index.get(), 4);
    assert_eq!(
        kept.base.as_ref().unwrap().checkpoint.checkpoint.size.get(),
        13
    );
    let report = verify_holding(&kept, std::slice::from_ref(&held));
    assert!(report.passed_but_open_streams(), "{report:#?}");
    assert_eq!(report.summary.unwrap().streams_continued, 1);
    // Only what was kept is counted: g2's head (seq 2), its last two and g3's one.
    let usage = rec.usage(&all_time(), &LOCAL).await.unwrap();
    assert_eq!(usage.total.requests, 4);
}

async fn every_bad_batch_is_refused_with_its_reason_and_nothing_is_stored(store: Arc<dyn Store>) {
    let (rec, _clock) = common::recorder(store.clone(), common::settings(100)).await;
    let gw = Gateway::new(1).unwrap();
    let good = gw.stream(4, false).unwrap();
    let r = ingest(&rec, &gw, &good[..1]).await;
    assert_eq!(r.accepted, 1);
    let size_before = store.meta().await.unwrap().unwrap().size;

    let refused = |r: &IngestResponse| r.rejected.first().map(|x| x.reason);

    // Tampered: a signed field changed, hash left as it was.
    let mut tampered = good[1].clone();
    if let EnvelopeRecord::Receipt(r) = &mut tampered.record {
        r.body.cost_micro_usd = tollgate_evidence::SafeU64::from(0u32);
    }
    let r = ingest(&rec, &gw, std::slice::from_ref(&tampered)).await;
    assert_eq!(refused(&r), Some(RejectReason::HashMismatch));
    // Tampered and re-hashed: the signature no longer covers the body.
    tampered.hash = tampered.compute_hash().unwrap();
    let r = ingest(&rec, &gw, std::slice::from_ref(&tampered)).await;
    assert_eq!(refused(&r), Some(RejectReason::SignatureInvalid));

    // Unsigned: an all-zero signature.
    let mut unsigned = good[1].clone();
    if let EnvelopeRecord::Receipt(r) = &mut unsigned.record {
        r.signature = SignatureHex::from_bytes([0; 64]);
    }
    unsigned.hash = unsigned.compute_hash().unwrap();
    let r = ingest(&rec, &gw, std::slice::from_ref(&unsigned)).await;
    assert_eq!(refused(&r), Some(RejectReason::SignatureInvalid));

    // Wrong key: another gateway's envelopes under this gateway's certificate.
    let other = Gateway::new(2).unwrap();
    let foreign = other.stream(1, false).unwrap();
    let r = ingest(&rec, &gw, &foreign).await;
    assert_eq!(refused(&r), Some(RejectReason::KeyNotCertified));

    // A gap: seq 3 after seq 1.
    let r = ingest(&rec, &gw, &good[2..3]).await;
    assert_eq!(refused(&r), Some(RejectReason::SeqGap));
    assert_eq!(r.next_seq, 2);

    // A broken chain: seq 2 linking to the wrong predecessor (prev_hash is not
    // signed, so the receipt signature still verifies).
    let mut broken = good[1].clone();
    broken.prev_hash = PrevHash::Genesis;
    broken.hash = broken.compute_hash().unwrap();
    let r = ingest(&rec, &gw, std::slice::from_ref(&broken)).await;
    assert_eq!(refused(&r), Some(RejectReason::PrevHashMismatch));

    // A certificate from a CA the recorder does not trust.
    let rogue = Gateway::with_ca(3, key_from("rogue-ca")).unwrap();
    let r = ingest(&rec, &rogue, &rogue.stream(2, true).unwrap()).await;
    assert_eq!(refused(&r), Some(RejectReason::CertificateUntrusted));
    assert_eq!(r.rejected.len(), 3);

    // Nothing refused was stored.
    assert_eq!(store.meta().await.unwrap().unwrap().size, size_before);
    let report = rec.usage(&all_time(), &LOCAL).await.unwrap();
    assert_eq!(report.total.requests, 1);
    assert!(
        store
            .stream(rogue.stream_id.as_str())
            .await
            .unwrap()
            .is_none()
    );
    // The gap and the broken link are flagged as warnings; the stream is open.
    let codes: Vec<&str> = report.warnings.iter().map(|w| w.code.as_str()).collect();
    assert!(codes.contains(&"seq_gap"), "{codes:?}");
    assert!(codes.contains(&"broken_chain"), "{codes:?}");
    assert!(codes.contains(&"stream_open"), "{codes:?}");
    assert_eq!(report.freshness.as_ref().unwrap().open_streams, 1);
    assert!(
        report
            .freshness
            .as_ref()
            .unwrap()
            .quietest_open_stream_since
            .is_some()
    );

    // The good continuation is still accepted.
    let r = ingest(&rec, &gw, &good[1..]).await;
    assert_eq!((r.accepted, r.next_seq), (3, 5));
}

fn limit(window: LimitWindow, tokens: Option<u64>, requests: Option<u64>) -> CompiledLimit {
    CompiledLimit {
        time_zone: None,
        name: "daily".into(),
        window,
        tokens,
        requests,
        cost_micro_usd: None,
        model_globs: vec![],
        providers: vec![],
    }
}

fn amount(tokens: u64, requests: u64) -> AmountsWire {
    AmountsWire {
        tokens,
        requests,
        cost_micro_usd: 0,
    }
}

fn grant_request(
    limit: &CompiledLimit,
    want: AmountsWire,
    min: Option<AmountsWire>,
) -> GrantRequest {
    GrantRequest {
        quota_id: "team-a/q".into(),
        limit: limit.clone(),
        enforcement: Enforcement::Enforce,
        amount: want,
        min_amount: min,
        ttl_seconds: Some(60),
    }
}

async fn concurrent_lessees_never_overgrant_a_request_cap(store: Arc<dyn Store>) {
    let (rec, _clock) = common::recorder(store, common::settings(100)).await;
    let l = limit(LimitWindow::Calendar(CalendarWindow::Day), None, Some(100));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let rec = rec.clone();
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u64;
            for _ in 0..25 {
                let r = rec
                    .grant(&grant_request(&l, amount(0, 1), None), &LOCAL)
                    .await
                    .unwrap();
                if r.granted {
                    granted += r.amount.requests;
                } else {
                    assert!(r.retry_after_seconds.unwrap() >= 1);
                }
            }
            granted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(
        total, 100,
        "exactly the cap is granted across 16 lessees x 25 asks"
    );
    let r = rec
        .grant(&grant_request(&l, amount(0, 1), None), &LOCAL)
        .await
        .unwrap();
    assert!(!r.granted);
    assert_eq!(r.outstanding.requests, 100);
}

async fn concurrent_partial_grants_sum_exactly_to_the_cap(store: Arc<dyn Store>) {
    let (rec, _clock) = common::recorder(store, common::settings(100)).await;
    let l = limit(
        LimitWindow::Calendar(CalendarWindow::Hour),
        Some(1_000),
        None,
    );
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let rec = rec.clone();
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u64;
            loop {
                let r = rec
                    .grant(
                        &grant_request(&l, amount(64, 0), Some(amount(1, 0))),
                        &LOCAL,
                    )
                    .await
                    .unwrap();
                if !r.granted {
                    return granted;
                }
                assert!(r.amount.tokens >= 1 && r.amount.tokens <= 64);
                granted += r.amount.tokens;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1_000);
}

async fn leases_renew_return_and_expire(store: Arc<dyn Store>) {
    let (rec, clock) = common::recorder(store, common::settings(100)).await;
    let l = limit(LimitWindow::Calendar(CalendarWindow::Day), Some(100), None);
    let first = rec
        .grant(&grant_request(&l, amount(50, 0), None), &LOCAL)
        .await
        .unwrap();
    assert!(first.granted);
    let id = first.lease_id.clone().unwrap();
    let denied = rec
        .grant(&grant_request(&l, amount(60, 0), None), &LOCAL)
        .await
        .unwrap();
    assert!(!denied.granted);
    assert_eq!(denied.outstanding.tokens, 50);

    // Renew: 10 consumed so far, keep 20 unused.
    let renewed = rec
        .renew(
            &id,
            &RenewRequest {
                consumed: amount(10, 0),
                amount: amount(20, 0),
                min_amount: None,
                ttl_seconds: Some(60),
            },
            &LOCAL,
        )
        .await
        .unwrap();
    assert!(renewed.granted);
    assert_eq!(renewed.used.tokens, 10);
    let other = rec
        .grant(&grant_request(&l, amount(70, 0), None), &LOCAL)
        .await
        .unwrap();
    assert!(other.granted, "10 used + 20 leased + 70 = 100");
    let over = rec
        .grant(&grant_request(&l, amount(1, 0), None), &LOCAL)
        .await
        .unwrap();
    assert!(!over.granted);

    // Consumption never goes down.
    let err = rec
        .give_back(
            &id,
            &ReturnRequest {
                consumed: amount(5, 0),
            },
            &LOCAL,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, tollgate_recorder::RecorderError::Conflict(_)));
    // Return: 15 consumed in total; 5 more settle, the unused 15 are released.
    let back = rec
        .give_back(
            &id,
            &ReturnRequest {
                consumed: amount(15, 0),
            },
            &LOCAL,
        )
        .await
        .unwrap();
    assert_eq!(back.settled.tokens, 5);
    let again = rec
        .give_back(
            &id,
            &ReturnRequest {
                consumed: amount(15, 0),
            },
            &LOCAL,
        )
        .await
        .unwrap();
    assert_eq!(again.settled.tokens, 0, "returning twice settles once");
    let fits = rec
        .grant(&grant_request(&l, amount(15, 0), None), &LOCAL)
        .await
        .unwrap();
    assert!(fits.granted, "15 used + 70 + 15 = 100");
    assert_eq!(fits.used.tokens, 15);

    // Expiry: once the leases expire their unconsumed rest no longer counts.
    clock.advance(61_000);
    let after = rec
        .grant(&grant_request(&l, amount(85, 0), None), &LOCAL)
        .await
        .unwrap();
    assert!(after.granted, "{after:?}");
    assert_eq!((after.used.tokens, after.outstanding.tokens), (15, 0));

    // Shadow quotas grant and say they would have denied.
    let mut shadow = grant_request(&l, amount(50, 0), None);
    shadow.enforcement = Enforcement::Shadow;
    let s = rec.grant(&shadow, &LOCAL).await.unwrap();
    assert!(s.granted && s.shadow_denied);

    // A lease of one namespace cannot be taken by another namespace's gateway.
    let sa = Caller::ServiceAccount {
        namespace: "team-b".into(),
        name: "app".into(),
        pod: None,
    };
    assert!(
        rec.grant(&grant_request(&l, amount(1, 0), None), &sa)
            .await
            .is_err()
    );
}

async fn a_reopened_recorder_resumes_the_open_segment(store: Arc<dyn Store>) {
    let gw = Gateway::new(1).unwrap();
    let s = gw.stream(9, true).unwrap();
    {
        let (rec, _clock) = common::recorder(store.clone(), common::settings(4)).await;
        let r = ingest(&rec, &gw, &s[..6]).await;
        assert_eq!(r.accepted, 6);
    }
    let meta = store.meta().await.unwrap().unwrap();
    assert_eq!(
        meta.size, 6,
        "one sealed segment of 4, two envelopes in the open one"
    );
    let (rec, _clock) = common::recorder(store.clone(), common::settings(4)).await;
    let r = ingest(&rec, &gw, &s[4..]).await;
    assert_eq!((r.accepted, r.duplicates, r.closed), (4, 2, true));
    let bundle = rec.export(ExportRange::Everything, &LOCAL).await.unwrap();
    assert_eq!(bundle.manifest.counts.segments.get(), 3);
    assert_eq!(
        bundle.segments[1].envelopes.len(),
        4,
        "the resumed segment continued"
    );
    let report = common::verify(&bundle.to_json().unwrap());
    assert!(
        report.passed(),
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
}

/// The same script, answered by a backend, as JSON lines (lease ids masked).
async fn transcript(store: Arc<dyn Store>) -> Vec<String> {
    let (rec, clock) = common::recorder(store, common::settings(5)).await;
    let mut out = Vec::new();
    let g1 = Gateway::new(1).unwrap();
    let g2 = Gateway::new(2).unwrap();
    let g4 = Gateway::new(4).unwrap();
    let s1 = g1.stream(7, true).unwrap();
    let s2 = g2.stream(4, true).unwrap();
    let s4 = g4.stream(3, false).unwrap();
    for (gw, batch) in [
        (&g1, &s1[..3]),
        (&g2, &s2[..]),
        (&g1, &s1[1..]),
        (&g4, &s4[..1]),
        (&g4, &s4[2..]),
    ] {
        out.push(serde_json::to_string(&ingest(&rec, gw, batch).await).unwrap());
    }
    for (group_by, bucket) in [
        (vec![], None),
        (
            vec![GroupKey::Namespace, GroupKey::Model],
            Some(Bucket::Hour),
        ),
        (
            vec![GroupKey::ServiceAccount, GroupKey::Provider],
            Some(Bucket::Day),
        ),
        (vec![GroupKey::Caller], None),
    ] {
        let mut q = all_time();
        q.group_by = group_by;
        q.bucket = bucket;
        out.push(serde_json::to_string(&rec.usage(&q, &LOCAL).await.unwrap()).unwrap());
    }
    let l = limit(LimitWindow::RollingSeconds(3_600), Some(500), Some(10));
    let mut ids = Vec::new();
    for want in [200, 200, 200, 50] {
        let r = rec
            .grant(
                &grant_request(&l, amount(want, 1), Some(amount(10, 1))),
                &LOCAL,
            )
            .await
            .unwrap();
        ids.extend(r.lease_id.clone());
        let mut v = serde_json::to_value(&r).unwrap();
        v["lease_id"] = serde_json::Value::Null;
        out.push(v.to_string());
    }
    clock.advance(10_000);
    let r = rec
        .renew(
            &ids[0],
            &RenewRequest {
                consumed: amount(120, 1),
                amount: amount(100, 1),
                min_amount: None,
                ttl_seconds: None,
            },
            &LOCAL,
        )
        .await
        .unwrap();
    let mut v = serde_json::to_value(&r).unwrap();
    v["lease_id"] = serde_json::Value::Null;
    out.push(v.to_string());
    let back = rec
        .give_back(
            &ids[1],
            &ReturnRequest {
                consumed: amount(30, 1),
            },
            &LOCAL,
        )
        .await
        .unwrap();
    out.push(back.settled.tokens.to_string());
    let bundle = rec.export(ExportRange::Everything, &LOCAL).await.unwrap();
    out.push(String::from_utf8(bundle.to_json().unwrap()).unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_give_identical_answers() {
    let sqlite = transcript(common::sqlite("identical")).await;
    assert_eq!(sqlite.len(), 5 + 4 + 4 + 1 + 1 + 1);
    assert!(sqlite[3].contains("seq_gap") || sqlite[4].contains("seq_gap"));
    // Grouped by caller: no caller, and the two fixture callers.
    let by_caller: serde_json::Value = serde_json::from_str(&sqlite[8]).unwrap();
    let callers: Vec<&str> = by_caller["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["caller"].as_str().unwrap())
        .collect();
    let (zero, one) = (caller_hash(0).to_string(), caller_hash(1).to_string());
    let mut expected = vec!["", zero.as_str(), one.as_str()];
    expected.sort_unstable();
    assert_eq!(callers, expected);
    let Some(pg) = common::postgres("identical").await else {
        return;
    };
    let postgres = transcript(pg).await;
    for (i, (a, b)) in sqlite.iter().zip(&postgres).enumerate() {
        assert_eq!(a, b, "answer {i} differs between sqlite and postgres");
    }
}

/// Segments sealed before schema version 4 have no stored log state: a range
/// export rebuilds its base from the nearest stored state (or the start) and the
/// envelope hashes after it, and stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_after_a_segment_sealed_before_version_4_rebuilds_its_base() {
    let dir = common::temp_dir("pre-v4-state");
    let path = dir.join("recorder.db");
    let store: Arc<dyn Store> =
        Arc::new(tollgate_recorder::store::sqlite::SqliteStore::open(&path).unwrap());
    let (rec, _clock) = common::recorder(store.clone(), common::settings(3)).await;
    let g1 = Gateway::new(1).unwrap();
    ingest(&rec, &g1, &g1.stream(10, true).unwrap()).await;
    let full = rec.export(ExportRange::Everything, &LOCAL).await.unwrap();
    assert_eq!(full.segments.len(), 4);
    let expected = rec
        .export(ExportRange::Segments { first: 3, last: 3 }, &LOCAL)
        .await
        .unwrap();
    let forget = |sql: &str| {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    };
    // From segment 0's state and segment 1's and 2's hashes, then from nothing.
    for sql in [
        "UPDATE segments SET log_state = NULL WHERE segment_index > 0",
        "UPDATE segments SET log_state = NULL",
    ] {
        forget(sql);
        assert_eq!(
            store.segment(2).await.unwrap().unwrap().log_state_json,
            None
        );
        let rebuilt = rec
            .export(ExportRange::Segments { first: 3, last: 3 }, &LOCAL)
            .await
            .unwrap();
        assert_eq!(rebuilt.base, expected.base, "{sql}");
        assert!(verify_holding(&rebuilt, &full.checkpoints[2..3]).passed());
        assert!(
            store
                .segment(2)
                .await
                .unwrap()
                .unwrap()
                .log_state_json
                .is_some()
        );
    }
}

/// A PostgreSQL database from before receipts' reasons had a column is
/// upgraded at connect: the column is added and filled from each body.
#[tokio::test]
async fn postgres_upgrade_fills_reasons_from_stored_bodies() {
    let Some(url) = common::postgres_schema("upgrade-reason").await else {
        return;
    };
    raw_sql(
        &url,
        "CREATE TABLE envelopes (log_index BIGINT PRIMARY KEY, segment_index BIGINT NOT NULL,
                stream_id TEXT NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL, key_id TEXT NOT NULL,
                receipt_id TEXT UNIQUE, namespace TEXT, service_account TEXT, pod TEXT, provider TEXT,
                model TEXT, started_at_ms BIGINT, completed_at_ms BIGINT, input_tokens BIGINT,
                output_tokens BIGINT, cached_tokens BIGINT, cost_micro_usd BIGINT, decision TEXT,
                provider_request_id TEXT, body TEXT NOT NULL, caller_hash TEXT, UNIQUE (stream_id, seq));
             INSERT INTO envelopes VALUES (0, 0, 's', 1, 'h', 'k', 'r-1', 'ns', 'sa', 'p', 'openai',
                'gpt-4o', 5000, 5001, 3, 4, 0, 9, 'deny', NULL,
                '{\"record\":{\"receipt\":{\"body\":{\"verdict\":{\"decision\":\"deny\",\"reason\":\"quota_exceeded\"}}}}}', NULL);",
    )
    .await;
    let store = tollgate_recorder::store::postgres::PostgresStore::connect(&url, 2)
        .await
        .unwrap();
    let cells = cells_by_reason(&store).await;
    assert_eq!(cells.len(), 1, "{cells:?}");
    assert_eq!(
        (cells[0].requests, cells[0].reason.as_str()),
        (1, "quota_exceeded")
    );
    // A receipt an older recorder writes during a rolling upgrade (no reason
    // in its INSERT) gets its reason at the next start of a newer one.
    raw_sql(
        &url,
        "INSERT INTO envelopes (log_index, segment_index, stream_id, seq, hash, key_id, receipt_id,
                namespace, service_account, pod, provider, model, started_at_ms, completed_at_ms,
                input_tokens, output_tokens, cached_tokens, cost_micro_usd, decision, body)
             VALUES (1, 0, 's', 2, 'h2', 'k', 'r-2', 'ns', 'sa', 'p', 'openai', 'gpt-4o', 6000, 6001,
                1, 1, 0, 1, 'allow',
                '{\"record\":{\"receipt\":{\"body\":{\"verdict\":{\"decision\":\"allow\",\"reason\":\"allowed\"}}}}}');",
    )
    .await;
    drop(store);
    let store = tollgate_recorder::store::postgres::PostgresStore::connect(&url, 2)
        .await
        .unwrap();
    let mut reasons: Vec<String> = cells_by_reason(&store)
        .await
        .into_iter()
        .map(|c| c.reason)
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["allowed", "quota_exceeded"]);
    // Connecting again finds the column and changes nothing.
    drop(store);
    tollgate_recorder::store::postgres::PostgresStore::connect(&url, 2)
        .await
        .unwrap();
}

/// Runs `sql` on the database at `url` as a plain client would.
async fn raw_sql(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// Every receipt's usage cell by reason, over the fixture's first ten seconds.
async fn cells_by_reason(store: &dyn Store) -> Vec<tollgate_recorder::store::UsageCell> {
    store
        .usage_cells(&tollgate_recorder::store::CellQuery {
            since_ms: 0,
            until_ms: 10_000,
            namespace: None,
            by_caller: false,
            by_reason: true,
            before_log_index: None,
        })
        .await
        .unwrap()
}

fn gateway_pod(namespace: &str, pod: &str) -> Caller {
    Caller::ServiceAccount {
        namespace: namespace.into(),
        name: "default".into(),
        pod: Some(pod.into()),
    }
}

/// Each pod's report replaces its last; the answer counts, per provider key,
/// the pods that reported it within the window and those that refuse it.
async fn key_reports_replace_each_other_and_expire(store: Arc<dyn Store>) {
    let (rec, clock) = common::recorder(store.clone(), common::settings(4)).await;
    let healthy = br#"{"keys":[{"provider":"openai","index":0,"state":"healthy"},
        {"provider":"openai","index":1,"state":"healthy"}]}"#;
    let refused = |since: u64| {
        format!(
            r#"{{"keys":[{{"provider":"openai","index":0,"state":"healthy"}},
            {{"provider":"openai","index":1,"state":"unhealthy","since_ms":{since},"last_status":401}},
            {{"provider":"anthropic","index":0,"state":"healthy"}}]}}"#
        )
    };
    rec.report_key_health(healthy, &gateway_pod("team-1", "a"))
        .await
        .unwrap();
    rec.report_key_health(refused(5).as_bytes(), &gateway_pod("team-1", "b"))
        .await
        .unwrap();
    rec.report_key_health(refused(3).as_bytes(), &gateway_pod("team-2", "c"))
        .await
        .unwrap();
    let answer = rec.key_health(&LOCAL).await.unwrap();
    let names: Vec<_> = answer
        .providers
        .iter()
        .map(|p| p.provider.as_str())
        .collect();
    assert_eq!(names, ["anthropic", "openai"]);
    let openai = &answer.providers[1].keys;
    assert_eq!((openai[0].gateways, openai[0].refused_by), (3, 0));
    assert_eq!((openai[1].gateways, openai[1].refused_by), (3, 2));
    assert_eq!(openai[1].refused_since_ms, Some(3), "the earliest refusal");
    assert_eq!(openai[1].last_status, Some(401));

    // Pod b's key came back: its next report replaces the last.
    clock.advance(60_000);
    rec.report_key_health(healthy, &gateway_pod("team-1", "b"))
        .await
        .unwrap();
    let answer = rec.key_health(&LOCAL).await.unwrap();
    assert_eq!(answer.providers[1].keys[1].refused_by, 1);
    // Pods a and c stop reporting: two minutes on, only b counts.
    clock.advance(key_health::REPORT_TTL_MS - 30_000);
    let answer = rec.key_health(&LOCAL).await.unwrap();
    assert_eq!(
        answer.providers.len(),
        1,
        "anthropic was only c's: {answer:?}"
    );
    assert_eq!(
        (
            answer.providers[0].keys[1].gateways,
            answer.providers[0].keys[1].refused_by
        ),
        (1, 0)
    );

    // A report a minute after the last purge deletes the stale rows, read
    // or not: only b's are left in the table.
    rec.report_key_health(healthy, &gateway_pod("team-1", "b"))
        .await
        .unwrap();
    let all_rows = store.key_health(0, 100).await.unwrap();
    assert!(
        all_rows
            .iter()
            .all(|c| c.reporters == 1 && c.provider == "openai"),
        "{all_rows:?}"
    );

    // Only readers read it, and only gateways report.
    let pod = gateway_pod("team-1", "b");
    assert!(matches!(
        rec.key_health(&pod).await,
        Err(RecorderError::Forbidden(_))
    ));
    let user = Caller::User {
        name: "alice".into(),
        groups: vec![],
    };
    assert!(matches!(
        rec.report_key_health(healthy, &user).await,
        Err(RecorderError::Forbidden(_))
    ));
    assert!(matches!(
        rec.report_key_health(b"{\"keys\":{}}", &pod).await,
        Err(RecorderError::BadRequest(_))
    ));
}
