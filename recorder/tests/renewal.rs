#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Key certificate renewal end to end: the real gateway binary with a 6 s key
//! certificate lifetime serves a steady trickle of requests across several
//! renewals without refusing one, its streams ship to the real recorder, and
//! the exported bundle verifies with the CLI.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{
    RecorderProcess, kubectl_tollgate, local_ca, quickstart_config, start_demo_gateway,
};
use tollgate_gateway::shipper::Shipper;
use tollgate_wire::client::{HttpClient, StaticToken, public_roots};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_refuse_nothing_and_the_bundle_spanning_them_verifies() {
    let dir = common::temp_dir("renewal");
    let config = quickstart_config(&dir);
    let (ca_file, ca_anchor_file) = local_ca(&dir, "renewal-test-ca");
    let spool = dir.join("spool");
    let gateway = start_demo_gateway(
        &config,
        &spool,
        &ca_file,
        &["--key-certificate-lifetime", "6s"],
    );

    // A request every 150 ms for 15 s: renewals fall at about 4, 8 and 12 s.
    let client = HttpClient::new(public_roots().unwrap(), Duration::from_secs(10));
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(15) {
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("hello {sent}")}]});
        let r = client
            .send(
                http::Method::POST,
                &format!("http://{}/v1/chat/completions", gateway.address),
                None,
                Some(bytes::Bytes::from(serde_json::to_vec(&body).unwrap())),
                1 << 20,
            )
            .await
            .unwrap();
        assert!(
            r.status.is_success(),
            "request {sent} at {:?} was refused: {} {}",
            started.elapsed(),
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        sent += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(gateway.terminate().unwrap().success());

    let streams = std::fs::read_dir(&spool).unwrap().count() as u64;
    assert!(
        streams >= 4,
        "at least three renewals: {streams} stream files"
    );

    let data = dir.join("data");
    let rec = RecorderProcess::start(&data, &["--trust-anchor", ca_anchor_file.to_str().unwrap()]);
    let shipper = Shipper::new(
        &spool,
        rec.url.clone(),
        Arc::new(StaticToken(rec.token.clone())),
        public_roots().unwrap(),
    );
    let report = shipper.ship_once().await.unwrap();
    assert!(report.stuck.is_empty(), "{report:?}");
    assert_eq!(
        (report.accepted, report.deleted.len() as u64),
        (sent + streams, streams),
        "every receipt and every stream's close record, every stream closed"
    );

    let token_file = data.join("local-token");
    let bundle = dir.join("bundle.json");
    let (code, _, err) = kubectl_tollgate(&[
        "bundle",
        "export",
        "--recorder",
        &rec.url,
        "--token-file",
        token_file.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    assert_eq!(
        exported["certificates"].as_array().unwrap().len() as u64,
        streams,
        "one key certificate per stream"
    );
    let (code, out, err) = kubectl_tollgate(&[
        "verify",
        bundle.to_str().unwrap(),
        "--require-closed",
        "--trust-anchor",
        data.join("recorder-trust-anchor.yaml").to_str().unwrap(),
        "--trust-anchor",
        ca_anchor_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "verify failed:\n{out}\n{err}");
    rec.stop();
}
