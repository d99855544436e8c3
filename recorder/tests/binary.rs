//! The real `tollgate-recorder` binary on loopback: a gateway spool shipped with
//! the shipper, exported and verified with the real `kubectl-tollgate`, usage read
//! back through the CLI; and `kill -9` during ingest loses nothing acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::process::{
    RecorderProcess, ca_anchor, kubectl_tollgate, local_ca, quickstart_config, start_demo_gateway,
};
use tollgate_gateway::shipper::Shipper;
use tollgate_recorder::ingest::IngestResponse;
use tollgate_test_support::fixtures::Gateway;
use tollgate_wire::client::StaticToken;
use tollgate_wire::client::{HttpClient, public_roots};

fn client() -> HttpClient {
    HttpClient::new(public_roots().unwrap(), Duration::from_secs(30))
}

fn shipper(spool: &std::path::Path, rec: &RecorderProcess, batch: usize) -> Shipper {
    Shipper::new(
        spool,
        rec.url.clone(),
        Arc::new(StaticToken(rec.token.clone())),
        public_roots().unwrap(),
    )
    .with_batch_envelopes(batch)
}

fn small_segments(dir: &std::path::Path, max_envelopes: u32) -> std::path::PathBuf {
    let path = dir.join("recorder-config.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: RecorderConfig\nmetadata:\n  name: default\nspec:\n  sealing:\n    maxEnvelopes: {max_envelopes}\n    maxAgeSeconds: 3600\n  checkpointSinks:\n  - name: file\n    type: file\n    path: {}\n",
            dir.join("checkpoints.jsonl").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_spool_exports_a_bundle_the_cli_verifies() {
    let dir = common::temp_dir("binary");
    let data = dir.join("data");
    let anchor = ca_anchor(&dir);
    let config = small_segments(&dir, 7);
    let rec = RecorderProcess::start(
        &data,
        &[
            "--trust-anchor",
            anchor.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );

    // Two gateways' spools: one closed, one still open (its close not written yet).
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let closed = Gateway::new(1).unwrap();
    let running = Gateway::new(2).unwrap();
    let closed_stream = closed.stream(12, true).unwrap();
    let running_stream = running.stream(5, true).unwrap();
    let closed_file = spool.join(format!("{}.jsonl", closed.stream_id));
    let running_file = spool.join(format!("{}.jsonl", running.stream_id));
    std::fs::write(&closed_file, closed.spool_text(&closed_stream).unwrap()).unwrap();
    // A half-written last line must not be sent.
    let mut partial = running.spool_text(&running_stream[..4]).unwrap();
    let tail = serde_json::to_string(&serde_json::json!({"envelope": running_stream[4]})).unwrap();
    partial.push_str(&tail[..tail.len() / 2]);
    std::fs::write(&running_file, &partial).unwrap();

    let ship = shipper(&spool, &rec, 5);
    let report = ship.ship_once().await.unwrap();
    assert!(report.stuck.is_empty(), "{report:?}");
    assert_eq!(report.accepted, 13 + 4);
    assert_eq!(
        report.deleted,
        vec![closed_file.clone()],
        "only the acknowledged closed stream is deleted"
    );
    assert!(running_file.exists());

    // The gateway finishes the line and closes the stream; the next pass ships the rest.
    let full = running.spool_text(&running_stream).unwrap();
    std::fs::write(&running_file, &full).unwrap();
    let report = ship.ship_once().await.unwrap();
    assert_eq!((report.accepted, report.duplicates), (2, 0), "{report:?}");
    assert_eq!(report.deleted, vec![running_file.clone()]);
    let report = ship.ship_once().await.unwrap();
    assert_eq!(report.files, 0);

    // Usage through the CLI, against the running recorder.
    let token_file = data.join("local-token");
    let (code, out, err) = kubectl_tollgate(&[
        "usage",
        "--recorder",
        &rec.url,
        "--token-file",
        token_file.to_str().unwrap(),
        "-A",
        "--since",
        "2025-02-28T00:00:00Z",
        "--until",
        "2025-03-02T00:00:00Z",
        "--by",
        "namespace,model",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let usage: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(usage["total"]["requests"], 17);
    assert_eq!(
        usage["total"]["input_tokens"],
        (0..12).map(|i| 100 + i).sum::<u64>() + (0..5).map(|i| 100 + i).sum::<u64>()
    );
    assert_eq!(usage["warnings"].as_array().unwrap().len(), 0);

    // Export through the CLI, then verify it with the CLI against both anchors.
    let bundle = dir.join("bundle.json");
    let (code, out, err) = kubectl_tollgate(&[
        "bundle",
        "export",
        "--recorder",
        &rec.url,
        "--token-file",
        token_file.to_str().unwrap(),
        "--until",
        "2025-03-02T00:00:00Z",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("19 envelopes"), "{out}");
    let recorder_anchor = data.join("recorder-trust-anchor.yaml");
    let (code, out, err) = kubectl_tollgate(&[
        "verify",
        bundle.to_str().unwrap(),
        "--trust-anchor",
        recorder_anchor.to_str().unwrap(),
        "--trust-anchor",
        anchor.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "verify failed:\n{out}\n{err}");

    // The checkpoint sink has a copy of every checkpoint; the newest one checks the
    // bundle against truncation.
    let sink = std::fs::read_to_string(dir.join("checkpoints.jsonl")).unwrap();
    let last = sink.lines().last().unwrap();
    let cp = dir.join("latest-checkpoint.json");
    std::fs::write(&cp, last).unwrap();
    let (code, out, _) = kubectl_tollgate(&[
        "verify",
        bundle.to_str().unwrap(),
        "--trust-anchor",
        recorder_anchor.to_str().unwrap(),
        "--trust-anchor",
        anchor.to_str().unwrap(),
        "--checkpoint",
        cp.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");

    // An auditor who kept the first checkpoint (last night's) exports only what
    // came after it, anchored to it, and checks it against what they hold.
    let held = dir.join("held-checkpoint.json");
    std::fs::write(&held, sink.lines().next().unwrap()).unwrap();
    let range = dir.join("range.json");
    let source = [
        "--recorder",
        rec.url.as_str(),
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let mut export_after = vec!["bundle", "export"];
    export_after.extend(source);
    export_after.extend([
        "--after",
        held.to_str().unwrap(),
        "-o",
        range.to_str().unwrap(),
    ]);
    let (code, out, err) = kubectl_tollgate(&export_after);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("a range bundle: it continues the checkpoint of log size 7"),
        "{out}"
    );
    let (code, out, _) = kubectl_tollgate(&[
        "verify",
        range.to_str().unwrap(),
        "--trust-anchor",
        recorder_anchor.to_str().unwrap(),
        "--trust-anchor",
        anchor.to_str().unwrap(),
        "--checkpoint",
        held.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Range:        continues the checkpoint of log size 7"),
        "{out}"
    );
    // The sink's file names its newest checkpoint, after which nothing is sealed yet.
    let mut export_newest = vec!["bundle", "export"];
    export_newest.extend(source);
    let sink_path = dir.join("checkpoints.jsonl");
    export_newest.extend(["--after", sink_path.to_str().unwrap()]);
    let (code, _, err) = kubectl_tollgate(&export_newest);
    assert_ne!(code, 0);
    assert!(
        err.contains("nothing after the checkpoint of size 19"),
        "{err}"
    );

    // The same export from the data directory (--local) verifies too.
    rec.stop();
    let local_bundle = dir.join("local-bundle.json");
    let (code, _, err) = kubectl_tollgate(&[
        "bundle",
        "export",
        "--local",
        data.to_str().unwrap(),
        "-o",
        local_bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = kubectl_tollgate(&[
        "verify",
        local_bundle.to_str().unwrap(),
        "--trust-anchor",
        recorder_anchor.to_str().unwrap(),
        "--trust-anchor",
        anchor.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = kubectl_tollgate(&[
        "usage",
        "--local",
        data.to_str().unwrap(),
        "-A",
        "--since",
        "2025-02-28T00:00:00Z",
        "--until",
        "2025-03-02T00:00:00Z",
        "--by",
        "namespace",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("TOTAL") && l.contains(" 17 ")),
        "{out}"
    );

    // Reconcile the bundle against an export made from the receipts: passes;
    // falsify one row: fails.
    let receipts: Vec<_> = closed_stream
        .iter()
        .chain(&running_stream)
        .filter_map(|e| e.receipt())
        .collect();
    let mut csv = String::from("provider_request_id,model,timestamp,input_tokens,output_tokens\n");
    for r in &receipts {
        let b = &r.body;
        let u = b.usage.unwrap();
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            b.upstream
                .as_ref()
                .unwrap()
                .provider_request_id
                .as_ref()
                .unwrap(),
            b.model_served.as_ref().unwrap(),
            b.started_at,
            u.input_tokens,
            u.output_tokens
        ));
    }
    let export = dir.join("export.csv");
    std::fs::write(&export, &csv).unwrap();
    let args = |bundle: &std::path::Path, export: &std::path::Path| {
        vec![
            "reconcile".to_string(),
            "--bundle".into(),
            bundle.display().to_string(),
            "--trust-anchor".into(),
            recorder_anchor.display().to_string(),
            "--trust-anchor".into(),
            anchor.display().to_string(),
            "--export".into(),
            export.display().to_string(),
            "--format".into(),
            "csv".into(),
            "--include-dry-run".into(),
        ]
    };
    let run_on = |bundle: &std::path::Path, export: &std::path::Path, extra: &[&str]| {
        let mut a = args(bundle, export);
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        kubectl_tollgate(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run = |export: &std::path::Path| run_on(&bundle, export, &[]);
    let (code, out, err) = run(&export);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"verdict\": \"pass\""), "{out}");
    // The bundle is verified first.
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["bundle"]
            .as_str()
            .is_some_and(|b| b.starts_with("verified")),
        "{out}"
    );

    // A window: the receipts that started in it against the export rows
    // dated in it; the same export over a window holding nothing else passes.
    let first = receipts[0].body.started_at;
    let second = receipts[1].body.started_at;
    let (code, out, err) = run_on(
        &bundle,
        &export,
        &[
            "--since",
            &first.to_string(),
            "--until",
            &second.to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let in_window = receipts
        .iter()
        .filter(|r| first <= r.body.started_at && r.body.started_at < second)
        .count();
    assert!(in_window >= 1 && in_window < receipts.len());
    assert_eq!(report["summary"]["receipts"], in_window, "{out}");
    assert_eq!(report["summary"]["matched"], in_window, "{out}");
    let (code, _, err) = run_on(&bundle, &export, &["--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");

    // A bundle that does not verify is not reconciled.
    let mut tampered: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    tampered["segments"][0]["envelopes"][0]["record"]["receipt"]["body"]["cost_micro_usd"] =
        serde_json::json!(1);
    let tampered_path = dir.join("tampered.json");
    std::fs::write(&tampered_path, tampered.to_string()).unwrap();
    let (code, out, _) = run_on(&tampered_path, &export, &[]);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["bundle"], "failed_verification", "{out}");
    let falsified = dir.join("falsified.csv");
    let mut lines: Vec<String> = csv.lines().map(String::from).collect();
    let fields: Vec<&str> = lines[3].split(',').collect();
    lines[3] = format!(
        "{},{},{},{},{}",
        fields[0],
        fields[1],
        fields[2],
        fields[3],
        fields[4].parse::<u64>().unwrap() + 7
    );
    std::fs::write(&falsified, lines.join("\n") + "\n").unwrap();
    let (code, out, _) = run(&falsified);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["summary"]["mismatched"], 1);
    assert!(
        report["mismatched"][0]["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("output_tokens")
    );
}

#[test]
fn kill_9_during_ingest_loses_nothing_acknowledged() {
    let dir = common::temp_dir("crash");
    let data = dir.join("data");
    let anchor = ca_anchor(&dir);
    let config = small_segments(&dir, 50);
    let extra = [
        "--trust-anchor",
        anchor.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let gw = Gateway::new(5).unwrap();
    let stream = gw.stream(400, true).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let rec = RecorderProcess::start(&data, &extra);
    // Stream batches of 8 from a thread, recording what was acknowledged, until
    // the recorder dies under it.
    let (url, token) = (rec.url.clone(), rec.token.clone());
    let batches: Vec<Vec<u8>> = stream
        .chunks(8)
        .map(|c| gw.batch_json(c).unwrap())
        .collect();
    let sender = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut acked = 0u64;
        for body in batches {
            let sent = rt.block_on(client().send(
                http::Method::POST,
                &format!("{url}/v1/receipts"),
                Some(&token),
                Some(bytes::Bytes::from(body)),
                1 << 20,
            ));
            match sent {
                Ok(r) if r.status.is_success() => {
                    let answer: IngestResponse = serde_json::from_slice(&r.body).unwrap();
                    assert!(answer.rejected.is_empty(), "{answer:?}");
                    acked = answer.next_seq - 1;
                }
                _ => break,
            }
        }
        acked
    });
    // Let some batches land, then kill -9 mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let next = rt.block_on(client().send(
            http::Method::GET,
            &format!("{}/v1/streams/{}", rec.url, gw.stream_id),
            Some(&rec.token),
            None,
            1 << 16,
        ));
        if let Ok(r) = next
            && r.status.is_success()
            && serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["next_seq"]
                .as_u64()
                .unwrap()
                > 120
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ingest did not progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rec.kill_9();
    let acked = sender.join().unwrap();
    assert!((120..401).contains(&acked), "acked {acked}");

    // Restart on the same data directory: everything acknowledged is there.
    let rec = RecorderProcess::start(&data, &extra);
    let status: serde_json::Value = rt.block_on(async {
        let r = client()
            .send(
                http::Method::GET,
                &format!("{}/v1/streams/{}", rec.url, gw.stream_id),
                Some(&rec.token),
                None,
                1 << 16,
            )
            .await
            .unwrap();
        serde_json::from_slice(&r.body).unwrap()
    });
    let next_seq = status["next_seq"].as_u64().unwrap();
    assert!(
        next_seq > acked,
        "acknowledged {acked}, recorder resumed at {next_seq}"
    );

    // The chain continues: ship the whole spool; the shipper resumes from next_seq.
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(
        spool.join(format!("{}.jsonl", gw.stream_id)),
        gw.spool_text(&stream).unwrap(),
    )
    .unwrap();
    let ship = shipper(&spool, &rec, 100);
    let report = rt.block_on(ship.ship_once()).unwrap();
    assert!(report.stuck.is_empty(), "{report:?}");
    assert_eq!(report.accepted, 401 - (next_seq - 1));
    assert_eq!(report.deleted.len(), 1);

    // One log, segments of 50 in order, the open segment resumed: the export verifies.
    let bundle = dir.join("bundle.json");
    let token_file = data.join("local-token");
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
    let parsed: tollgate_evidence::Bundle =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    assert_eq!(parsed.manifest.counts.envelopes.get(), 401);
    let sizes: Vec<usize> = parsed.segments.iter().map(|s| s.envelopes.len()).collect();
    assert!(
        sizes[..sizes.len() - 1].iter().all(|n| *n == 50),
        "{sizes:?}"
    );
    let trust = tollgate_recorder::trust::load_trust_roots(&[
        data.join("recorder-trust-anchor.yaml"),
        anchor.clone(),
    ])
    .unwrap();
    let report = tollgate_evidence::verify_bundle(
        &std::fs::read(&bundle).unwrap(),
        &tollgate_evidence::VerifyOptions {
            trust: Some(trust),
            ..Default::default()
        },
    );
    assert!(
        report.passed(),
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    rec.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_gateway_spool_ships_and_verifies() {
    let dir = common::temp_dir("gateway");
    let config = quickstart_config(&dir);
    let (ca_file, ca_anchor_file) = local_ca(&dir, "gateway-test-ca");
    let spool = dir.join("spool");
    let gateway = start_demo_gateway(&config, &spool, &ca_file, &[]);
    let api = gateway.address.clone();
    for i in 0..3 {
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("hello {i}")}]});
        let r = client()
            .send(
                http::Method::POST,
                &format!("http://{api}/v1/chat/completions"),
                None,
                Some(bytes::Bytes::from(serde_json::to_vec(&body).unwrap())),
                1 << 20,
            )
            .await
            .unwrap();
        assert!(
            r.status.is_success(),
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(gateway.terminate().unwrap().success());

    let data = dir.join("data");
    let rec = RecorderProcess::start(&data, &["--trust-anchor", ca_anchor_file.to_str().unwrap()]);
    let report = shipper(&spool, &rec, 100).ship_once().await.unwrap();
    assert!(report.stuck.is_empty(), "{report:?}");
    assert_eq!(
        (report.accepted, report.deleted.len()),
        (4, 1),
        "3 receipts and the close record"
    );

    let token_file = data.join("local-token");
    let (code, out, err) = kubectl_tollgate(&[
        "usage",
        "--recorder",
        &rec.url,
        "--token-file",
        token_file.to_str().unwrap(),
        "-n",
        "demo",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let usage: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(usage["total"]["requests"], 3, "{usage}");

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
    let (code, out, err) = kubectl_tollgate(&[
        "verify",
        bundle.to_str().unwrap(),
        "--trust-anchor",
        data.join("recorder-trust-anchor.yaml").to_str().unwrap(),
        "--trust-anchor",
        ca_anchor_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "verify failed:\n{out}\n{err}");
    rec.stop();
}

/// The bound flags reach the real server: with `--max-connections 2` a third
/// connection is answered 503 with `Retry-After` and closed, and with
/// `--header-read-timeout 1s` idle connections are cut, which frees the slots.
#[test]
fn bound_flags_set_the_recorders_limits() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let dir = common::temp_dir("bounds");
    let recorder = RecorderProcess::start(
        &dir.join("data"),
        &["--max-connections", "2", "--header-read-timeout", "1s"],
    );
    let address = recorder.url.trim_start_matches("http://").to_string();
    let answer = |stream: &mut TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    };
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&address).unwrap();
    let refused = answer(&mut third);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );

    // The idle pair is cut after the head timeout; then a request is served,
    // and the metrics count the refusal.
    for mut stream in idle {
        let started = std::time::Instant::now();
        assert_eq!(answer(&mut stream), "", "an idle connection gets no answer");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cut by the 1 s head timeout"
        );
    }
    let mut fourth = TcpStream::connect(&address).unwrap();
    fourth
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: r\r\nconnection: close\r\n\r\n")
        .unwrap();
    let served = answer(&mut fourth);
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert!(
        served.contains("tollgate_recorder_overload_refusals{kind=\"connections\"} 1\n"),
        "{served}"
    );
    recorder.stop();

    let (code, _, stderr) = {
        let out = std::process::Command::new(common::process::recorder_bin())
            .args(["serve", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--max-connections", "0"])
            .output()
            .unwrap();
        (
            out.status.code(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("must be a whole number from 1"), "{stderr}");
}
