//! What a forward decision costs the request that waits for it: the real
//! spool writer on a temporary directory, `ReceiptSink::decide` from request
//! tasks (sign, chain, `write` on the request's thread; no fsync),
//! sequentially and from 16 tasks at once, against signing alone (with the
//! gateway's signer, and with ed25519-dalek for comparison). Prints
//! p50/p99 per case.
//!
//! `cargo run --release -p tollgate-gateway --example decision_bench`

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tollgate_evidence::decision::{DecisionBody, SignedDecision};
use tollgate_evidence::{
    DnsLabel, DnsSubdomain, Identifier, KeyCertificate, KeyId, PodIdentity, PodUid, PublicKey,
    SignedKeyCertificate, SigningKey, Timestamp, Workload,
};
use tollgate_gateway::receipts::{
    DecisionDraft, ReceiptSink, SpoolStatus, SpoolWriter, StreamKey, spawn_spool_writer,
    unix_millis,
};
use tollgate_gateway::signer::StreamSigner;

const SEQUENTIAL: usize = 5_000;
const TASKS: usize = 16;
const PER_TASK: usize = 1_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn report(name: &str, mut samples: Vec<Duration>) -> Result<()> {
    samples.sort_unstable();
    writeln!(
        std::io::stdout().lock(),
        "{name:<24} p50 {:>7.1} us  p99 {:>7.1} us  ({} samples)",
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.len()
    )?;
    Ok(())
}

fn workload() -> Result<Workload> {
    Ok(Workload {
        namespace: DnsLabel::new("bench")?,
        service_account: DnsSubdomain::new("app")?,
        pod: DnsSubdomain::new("app-0")?,
    })
}

fn stream_key() -> Result<StreamKey> {
    let ca = SigningKey::from_bytes(&[1; 32]);
    let key = SigningKey::from_bytes(&[2; 32]);
    let now = unix_millis();
    let pod = PodIdentity {
        namespace: DnsLabel::new("bench")?,
        service_account: DnsSubdomain::new("app")?,
        pod_name: DnsSubdomain::new("app-0")?,
        pod_uid: PodUid::new("6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab")?,
    };
    let certificate = KeyCertificate::new(
        PublicKey::of_signing_key(&key),
        pod,
        Timestamp::from_unix_millis(now - 1_000)?,
        Timestamp::from_unix_millis(now + 3_600_000)?,
        KeyId::of_signing_key(&ca),
    )?;
    Ok(StreamKey {
        stream_id: Identifier::new(uuid::Uuid::now_v7().hyphenated().to_string())?,
        key,
        certificate: SignedKeyCertificate::issue(certificate, &ca)?,
    })
}

fn draft(attempt: u32) -> DecisionDraft {
    let now = unix_millis();
    DecisionDraft {
        id: uuid::Uuid::now_v7().hyphenated().to_string(),
        request_id: format!("req_{}", uuid::Uuid::now_v7().simple()),
        attempt,
        started_at_ms: now,
        decided_at_ms: now,
        provider: "openai".into(),
        host: "api.openai.com".into(),
        model: "gpt-4o-mini".into(),
        request_sha256: [7; 32],
        policy_hash: [9; 32],
    }
}

async fn timed_decide(sink: &ReceiptSink) -> Result<Duration> {
    let started = Instant::now();
    ensure!(sink.decide(draft(0)), "the writer refused a decision");
    let elapsed = started.elapsed();
    tokio::task::yield_now().await;
    Ok(elapsed)
}

async fn run() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tollgate-decision-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = Arc::new(SpoolStatus::new(1 << 30));
    let writer = SpoolWriter::create(&dir, stream_key()?, workload()?, status)
        .context("creating the spool")?;
    let (sink, task) = spawn_spool_writer(writer);

    // Signing alone (encoding included): the floor of what the writer does
    // per decision, with the gateway's signer and with ed25519-dalek's.
    let key = SigningKey::from_bytes(&[2; 32]);
    let signer = StreamSigner::new(key.clone())?;
    let workload = workload()?;
    let mut sign = Vec::with_capacity(SEQUENTIAL);
    let mut sign_dalek = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let body: DecisionBody = draft(0).into_body(&workload)?;
        // Cloned before the clock starts, so both timings are signing alone.
        let same_body = body.clone();
        let started = Instant::now();
        let signed = SignedDecision::sign_returning_bytes(same_body, &signer)?;
        sign.push(started.elapsed());
        std::hint::black_box(signed);
        let started = Instant::now();
        let signed = SignedDecision::sign_returning_bytes(body, &key)?;
        sign_dalek.push(started.elapsed());
        std::hint::black_box(signed);
    }
    report("sign only", sign)?;
    report("sign only, dalek", sign_dalek)?;

    let mut sequential = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        sequential.push(timed_decide(&sink).await?);
    }
    report("decide, 1 at a time", sequential)?;

    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let sink = sink.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(PER_TASK);
            for _ in 0..PER_TASK {
                out.push(timed_decide(&sink).await?);
            }
            anyhow::Ok(out)
        }));
    }
    let started = Instant::now();
    let mut concurrent = Vec::new();
    for handle in handles {
        concurrent.extend(handle.await??);
    }
    let elapsed = started.elapsed();
    let total = concurrent.len();
    report(&format!("decide, {TASKS} at a time"), concurrent)?;
    writeln!(
        std::io::stdout().lock(),
        "{TASKS} tasks: {} decisions/s",
        (total as f64 / elapsed.as_secs_f64()) as u64
    )?;
    drop(sink);
    task.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}
