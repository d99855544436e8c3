#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Faults under constant load, with real binaries: two gateways ship receipts
//! to one recorder and take their quota leases from it (one quota
//! `failMode: closed`, one `failMode: open`) while
//!
//! - the recorder is killed with SIGKILL every few seconds for a minute, and
//! - the recorder's PostgreSQL crashes and restarts under ingest (a server of
//!   the test's own, started with `e2e/postgres.sh`).
//!
//! What must hold: every request is answered (never a hang or a dropped
//! connection); every receipt id a response carried ends up in the recorder,
//! in a bundle the CLI verifies; the closed quota never grants past its cap and
//! refuses only with its cap's 429 or the authority's 503, the open one never
//! refuses; the spools drain once the recorder is back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::process::{GatewayProcess, RecorderProcess, kubectl_tollgate, local_ca, quota_config};
use tollgate_evidence::{Bundle, EnvelopeRecord};
use tollgate_wire::client::{HttpClient, public_roots};

/// One request per gateway this often.
const INTERVAL: Duration = Duration::from_millis(50);
/// The closed quota's cap: reached about halfway into the load, so its
/// denials (429) are rehearsed through the faults too.
const CLOSED_CAP: u64 = 400;
/// No request may take longer than this (the gateway's lease calls give up
/// after 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What one request got.
#[derive(Debug)]
struct Outcome {
    status: u16,
    receipt_id: Option<String>,
    message: String,
}

/// POSTs one chat completion to `api` over a fresh HTTP/1.1 connection.
fn chat(api: &str) -> Result<Outcome, String> {
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut tcp = std::net::TcpStream::connect(api).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no complete head")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let receipt_id = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("x-tollgate-receipt-id"))
        .map(|(_, v)| v.trim().to_string());
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok(Outcome {
        status,
        receipt_id,
        message,
    })
}

/// Sends a request to `api` every [`INTERVAL`] until `stop`, from its own
/// thread (a late request does not shift the schedule).
fn constant_load(api: String, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Result<Outcome, String>>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut outcomes = Vec::new();
        for tick in 1u32.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            outcomes.push(chat(&api));
            let next = start + INTERVAL * tick;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        outcomes
    })
}

/// A free port on loopback for a recorder that must come back where its
/// gateways point: below the kernel's ephemeral range, so no outgoing
/// connection takes it while the recorder is down.
fn free_loopback_address() -> String {
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let first = 20_000 + (std::process::id() % 5_000) as u16;
    (first..ephemeral_start)
        .chain(20_000..first)
        .map(|port| format!("127.0.0.1:{port}"))
        .find(|address| std::net::TcpListener::bind(address).is_ok())
        .expect("a free port below the ephemeral range")
}

fn client() -> HttpClient {
    HttpClient::new(public_roots().unwrap(), Duration::from_secs(10))
}

/// The recorder's next sequence number for `stream`, if it answers.
async fn next_seq(url: &str, token: &str, stream: &str) -> Option<u64> {
    let r = client()
        .send(
            http::Method::GET,
            &format!("{url}/v1/streams/{stream}"),
            Some(token),
            None,
            1 << 16,
        )
        .await
        .ok()?;
    if !r.status.is_success() {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&r.body).ok()?["next_seq"].as_u64()
}

/// The spool's stream files, with how many envelopes each holds (its other
/// lines carry key certificates).
fn spooled(spool: &Path) -> BTreeMap<String, u64> {
    let mut streams = BTreeMap::new();
    for entry in std::fs::read_dir(spool).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let lines = std::fs::read_to_string(&path)
                .unwrap()
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n') && l.starts_with(r#"{"envelope":"#))
                .count() as u64;
            let stream = path.file_stem().unwrap().to_string_lossy().into_owned();
            streams.insert(stream, lines);
        }
    }
    streams
}

/// Waits until the recorder holds every line of every spool file.
async fn wait_for_spools_to_drain(url: &str, token: &str, spools: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = Vec::new();
        for spool in spools {
            for (stream, lines) in spooled(spool) {
                let next = next_seq(url, token, &stream).await;
                if next != Some(lines + 1) {
                    behind.push(format!("{stream}: {lines} spooled, recorder at {next:?}"));
                }
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the spools did not drain within 60 s: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The two gateways under load and what they got.
struct Fleet {
    closed: GatewayProcess,
    open: GatewayProcess,
    stop: Arc<AtomicBool>,
    loads: Vec<JoinHandle<Vec<Result<Outcome, String>>>>,
}

impl Fleet {
    /// Starts a gateway per failMode against `recorder_url` and loads both.
    fn start(dir: &Path, ca_key: &Path, recorder_url: &str, token: &Path) -> Self {
        let closed_config = quota_config(dir, "closed-quota", CLOSED_CAP, "closed");
        let open_config = quota_config(dir, "open-quota", 1_000_000, "open");
        let closed = GatewayProcess::start(
            dir,
            "gw-closed",
            &closed_config,
            ca_key,
            recorder_url,
            token,
        );
        let open = GatewayProcess::start(dir, "gw-open", &open_config, ca_key, recorder_url, token);
        let stop = Arc::new(AtomicBool::new(false));
        let loads = vec![
            constant_load(closed.api.clone(), stop.clone()),
            constant_load(open.api.clone(), stop.clone()),
        ];
        Self {
            closed,
            open,
            stop,
            loads,
        }
    }

    /// Stops the load; returns the outcomes of the closed and the open gateway.
    fn stop_load(&mut self) -> (Vec<Outcome>, Vec<Outcome>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = self.loads.drain(..).map(|l| {
            let outcomes = l.join().unwrap();
            let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
            assert!(
                failed.is_empty(),
                "{} requests got no answer: {failed:?}",
                failed.len()
            );
            outcomes.into_iter().map(Result::unwrap).collect::<Vec<_>>()
        });
        (all.next().unwrap(), all.next().unwrap())
    }
}

/// Counts of each status, for the report.
fn statuses(outcomes: &[Outcome]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o.status).or_default() += 1;
    }
    counts
}

/// What each quota's failMode promises, checked on what the apps got.
fn check_fail_modes(closed: &[Outcome], open: &[Outcome]) {
    for o in closed {
        match o.status {
            200 => {}
            429 => assert!(o.message.contains("is exhausted"), "{o:?}"),
            503 => assert!(
                o.message.contains("quota authority cannot be reached"),
                "a 503 that is not the closed failMode: {o:?}"
            ),
            _ => panic!("unexpected answer from the failMode closed gateway: {o:?}"),
        }
    }
    let granted = closed.iter().filter(|o| o.status == 200).count() as u64;
    assert!(
        granted <= CLOSED_CAP,
        "the closed quota granted {granted} requests, past its cap of {CLOSED_CAP}"
    );
    assert!(
        closed.iter().any(|o| o.status == 429),
        "the load must reach the closed quota's cap (granted {granted} of {CLOSED_CAP})"
    );
    let refused: Vec<&Outcome> = open.iter().filter(|o| o.status != 200).collect();
    assert!(
        refused.is_empty(),
        "failMode open must never refuse for the quota: {refused:?}"
    );
}

/// Stops the gateways (they return their leases and close their streams),
/// exports everything the recorder holds, verifies it with the CLI, and
/// checks every receipt id a response carried is in it. Returns how many
/// receipts the bundle holds.
async fn check_nothing_acknowledged_was_lost(
    dir: &Path,
    fleet: Fleet,
    outcomes: &[&[Outcome]],
    recorder: &RecorderProcess,
    data: &Path,
    ca_anchor: &Path,
) -> usize {
    let spools = [fleet.closed.spool.clone(), fleet.open.spool.clone()];
    wait_for_spools_to_drain(
        &recorder.url,
        &recorder.token,
        &spools.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )
    .await;
    fleet.closed.stop();
    fleet.open.stop();
    for spool in &spools {
        assert!(
            spooled(spool).is_empty(),
            "a stopped gateway's closed stream must be shipped and deleted: {:?}",
            spooled(spool)
        );
    }

    let token_file = data.join("local-token");
    let bundle_file = dir.join("bundle.json");
    let (code, _, err) = kubectl_tollgate(&[
        "bundle",
        "export",
        "--recorder",
        &recorder.url,
        "--token-file",
        token_file.to_str().unwrap(),
        "-o",
        bundle_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = kubectl_tollgate(&[
        "verify",
        bundle_file.to_str().unwrap(),
        "--trust-anchor",
        data.join("recorder-trust-anchor.yaml").to_str().unwrap(),
        "--trust-anchor",
        ca_anchor.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "verify failed:\n{out}\n{err}");

    let bundle: Bundle = serde_json::from_slice(&std::fs::read(&bundle_file).unwrap()).unwrap();
    let stored: BTreeSet<String> = bundle
        .segments
        .iter()
        .flat_map(|s| &s.envelopes)
        .filter_map(|e| match &e.record {
            EnvelopeRecord::Receipt(r) => Some(r.body.id.as_str().to_string()),
            _ => None,
        })
        .collect();
    let answered: Vec<&Outcome> = outcomes.iter().flat_map(|o| o.iter()).collect();
    let unreceipted: Vec<&&Outcome> = answered.iter().filter(|o| o.receipt_id.is_none()).collect();
    assert!(
        unreceipted.is_empty(),
        "every answer names its receipt: {unreceipted:?}"
    );
    let lost: Vec<&String> = answered
        .iter()
        .filter_map(|o| o.receipt_id.as_ref())
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged receipts are not in the recorder: {:?}",
        lost.len(),
        answered.len(),
        &lost[..lost.len().min(5)]
    );
    stored.len()
}

/// Stops the load and checks both promises: each quota's failMode, and no
/// acknowledged receipt lost. Returns the two gateways' outcomes and how many
/// receipts the recorder holds.
async fn stop_and_check(
    dir: &Path,
    mut fleet: Fleet,
    recorder: &RecorderProcess,
    data: &Path,
    ca_anchor: &Path,
) -> (Vec<Outcome>, Vec<Outcome>, usize) {
    let (closed, open) = fleet.stop_load();
    check_fail_modes(&closed, &open);
    let receipts = check_nothing_acknowledged_was_lost(
        dir,
        fleet,
        &[&closed, &open],
        recorder,
        data,
        ca_anchor,
    )
    .await;
    (closed, open, receipts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_killed_every_few_seconds_under_load_loses_nothing() {
    const LOAD: Duration = Duration::from_secs(60);
    let dir = common::temp_dir("kill-loop");
    let (ca_key, ca_anchor) = local_ca(&dir, "kill-loop-ca");
    let data = dir.join("data");
    let address = free_loopback_address();
    let flags = ["--trust-anchor", ca_anchor.to_str().unwrap()];
    let mut recorder = RecorderProcess::start_on(&data, &address, &flags);
    let url = recorder.url.clone();
    let fleet = Fleet::start(&dir, &ca_key, &url, &data.join("local-token"));

    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < LOAD {
        std::thread::sleep(Duration::from_secs(3));
        recorder.kill_9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(1500));
        recorder = RecorderProcess::start_on(&data, &address, &flags);
        assert_eq!(recorder.url, url);
    }
    let (closed, open, receipts) = stop_and_check(&dir, fleet, &recorder, &data, &ca_anchor).await;
    eprintln!(
        "recorder killed {kills} times in {:.0?}: closed gateway {:?}, open gateway {:?}; {receipts} receipts stored, none lost",
        started.elapsed(),
        statuses(&closed),
        statuses(&open)
    );
    recorder.stop();
}

/// A PostgreSQL server of this test's own (the shared one serves other tests
/// while this one crashes it), run by `e2e/postgres.sh` in `state`.
struct OwnPostgres {
    state: PathBuf,
}

impl OwnPostgres {
    fn script(&self, command: &str) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/postgres.sh");
        let out = std::process::Command::new(script)
            .arg(command)
            .env("TOLLGATE_PG_STATE", &self.state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postgres.sh {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn start(state: PathBuf) -> Self {
        let pg = Self { state };
        pg.script("up");
        pg
    }

    /// Its URL, from `postgres.sh env`.
    fn url(&self) -> String {
        let out = String::from_utf8(self.script("env").stdout).unwrap();
        let quoted = out
            .trim()
            .strip_prefix("export TOLLGATE_TEST_POSTGRES_URL=")
            .unwrap();
        quoted.trim_matches('\'').to_string()
    }

    /// Stops it as a crash would and starts it again.
    fn crash_restart(&self) {
        self.script("crash-restart");
    }
}

impl Drop for OwnPostgres {
    /// Stops the server, without a second panic if the test already failed.
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/postgres.sh");
        let _ = std::process::Command::new(script)
            .arg("down")
            .env("TOLLGATE_PG_STATE", &self.state)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_under_ingest_loses_nothing_acknowledged() {
    const LOAD: Duration = Duration::from_secs(40);
    // PostgreSQL comes with the harness's: without it, as the backend tests do.
    if common::postgres_url().is_none() {
        return;
    }
    let dir = common::temp_dir("pg-crash");
    let pg = OwnPostgres::start(dir.join("postgres"));
    let url_file = dir.join("postgres-url");
    tollgate_test_support::process::write_private(&url_file, pg.url()).unwrap();
    let (ca_key, ca_anchor) = local_ca(&dir, "pg-crash-ca");
    let data = dir.join("data");
    let recorder = RecorderProcess::start(
        &data,
        &[
            "--trust-anchor",
            ca_anchor.to_str().unwrap(),
            "--storage",
            "postgres",
            "--postgres-url-file",
            url_file.to_str().unwrap(),
        ],
    );
    let fleet = Fleet::start(&dir, &ca_key, &recorder.url, &data.join("local-token"));

    let started = Instant::now();
    let mut crashes = 0;
    while started.elapsed() < LOAD {
        std::thread::sleep(Duration::from_secs(4));
        pg.crash_restart();
        crashes += 1;
    }
    let (closed, open, receipts) = stop_and_check(&dir, fleet, &recorder, &data, &ca_anchor).await;
    eprintln!(
        "PostgreSQL crashed and restarted {crashes} times in {:.0?}: closed gateway {:?}, open gateway {:?}; {receipts} receipts stored, none lost",
        started.elapsed(),
        statuses(&closed),
        statuses(&open)
    );
    recorder.stop();
}
