//! The shipper against an in-process recorder: it resumes from the recorder's
//! `next_seq`, never skips or drops an envelope when the recorder refuses one or
//! cannot be reached, and deletes a spool file only after its close is acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::Arc;

use tollgate_evidence::EnvelopeRecord;
use tollgate_gateway::shipper::Shipper;
use tollgate_recorder::auth::{Caller, StaticTokens};
use tollgate_recorder::http::{AppState, router};
use tollgate_recorder::recorder::Recorder;
use tollgate_test_support::fixtures::Gateway;
use tollgate_wire::client::StaticToken;
use tollgate_wire::client::public_roots;

async fn serve() -> (Arc<Recorder>, String) {
    let (rec, _clock) = common::recorder(common::sqlite("shipper"), common::settings(100)).await;
    let app = router(AppState {
        recorder: rec.clone(),
        auth: Arc::new(StaticTokens::local("t")),
        max_body_bytes: 16 << 20,
        front_proxy: None,
        access: None,
        quotas: None,
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", tcp.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(tcp, app).await.unwrap() });
    (rec, url)
}

fn shipper(spool: &std::path::Path, url: &str) -> Shipper {
    Shipper::new(
        spool,
        url,
        Arc::new(StaticToken("t".into())),
        public_roots().unwrap(),
    )
    .with_batch_envelopes(4)
}

#[tokio::test]
async fn resumes_from_the_recorders_next_seq() {
    let (rec, url) = serve().await;
    let gw = Gateway::new(1).unwrap();
    let stream = gw.stream(10, true).unwrap();
    // The recorder already has the first 6 (an earlier shipper's answer was lost).
    rec.ingest(&gw.batch_json(&stream[..6]).unwrap(), &Caller::Local)
        .await
        .unwrap();
    let spool = common::temp_dir("resume");
    let file = spool.join(format!("{}.jsonl", gw.stream_id));
    std::fs::write(&file, gw.spool_text(&stream).unwrap()).unwrap();
    let report = shipper(&spool, &url).ship_once().await.unwrap();
    assert_eq!(
        (report.sent, report.accepted, report.duplicates),
        (5, 5, 0),
        "{report:?}"
    );
    assert!(!file.exists());
}

#[tokio::test]
async fn a_refused_envelope_stops_the_stream_and_nothing_is_dropped() {
    let (rec, url) = serve().await;
    let gw = Gateway::new(1).unwrap();
    let mut stream = gw.stream(6, true).unwrap();
    if let EnvelopeRecord::Receipt(r) = &mut stream[3].record {
        r.body.cost_micro_usd = tollgate_evidence::SafeU64::from(0u32);
    }
    stream[3].hash = stream[3].compute_hash().unwrap();
    let spool = common::temp_dir("refused");
    let file = spool.join(format!("{}.jsonl", gw.stream_id));
    std::fs::write(&file, gw.spool_text(&stream).unwrap()).unwrap();
    let ship = shipper(&spool, &url);
    for _ in 0..2 {
        let report = ship.ship_once().await.unwrap();
        assert_eq!(report.stuck.len(), 1, "{report:?}");
        assert!(
            report.stuck[0].1.contains("signature_invalid"),
            "{report:?}"
        );
        assert!(file.exists(), "the spool file is kept");
    }
    let status = rec
        .stream_status(gw.stream_id.as_str(), &Caller::Local)
        .await
        .unwrap();
    assert_eq!(
        status.next_seq, 4,
        "seq 1-3 stored, nothing after the refused one"
    );
}

#[tokio::test]
async fn an_unreachable_recorder_is_an_error_and_the_spool_is_kept() {
    let gw = Gateway::new(1).unwrap();
    let spool = common::temp_dir("unreachable");
    let file = spool.join(format!("{}.jsonl", gw.stream_id));
    std::fs::write(&file, gw.spool_text(&gw.stream(2, true).unwrap()).unwrap()).unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = shipper(&spool, &format!("http://127.0.0.1:{port}"))
        .ship_once()
        .await;
    assert!(result.is_err());
    assert!(file.exists());
    // The same spool ships once the recorder is there.
    let (_rec, url) = serve().await;
    let report = shipper(&spool, &url).ship_once().await.unwrap();
    assert_eq!(report.accepted, 3);
    assert!(!file.exists());
}

#[tokio::test]
async fn a_woken_shipper_ships_at_once_not_at_the_next_poll() {
    let (rec, url) = serve().await;
    let gw = Gateway::new(1).unwrap();
    let stream = gw.stream(8, false).unwrap();
    let spool = common::temp_dir("woken");
    let file = spool.join(format!("{}.jsonl", gw.stream_id));
    let first = gw.spool_text(&stream[..3]).unwrap();
    let all = gw.spool_text(&stream).unwrap();
    assert!(all.starts_with(&first));
    std::fs::write(&file, &first).unwrap();
    let wake = Arc::new(tokio::sync::Notify::new());
    // Polling alone would not look again for a minute.
    let ship = shipper(&spool, &url)
        .with_poll_interval(std::time::Duration::from_secs(60))
        .with_wake(wake.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ship.run(async move {
        let _ = stopped.await;
    }));
    let next_seq = || async {
        rec.stream_status(gw.stream_id.as_str(), &Caller::Local)
            .await
            .map(|s| s.next_seq)
            .unwrap_or(1)
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while next_seq().await < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first pass shipped nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Give the shipper time to go idle, then write more and wake it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    use std::io::Write as _;
    let mut append = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    append.write_all(&all.as_bytes()[first.len()..]).unwrap();
    drop(append);
    wake.notify_one();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while next_seq().await < 9 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "woken, the shipper did not ship (next_seq {})",
            next_seq().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
}
