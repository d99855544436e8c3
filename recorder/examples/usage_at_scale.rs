//! Usage queries on a recorder holding many receipts: ingests `--receipts`
//! fixture receipts (signed, verified and stored as a real ingest does) into a
//! fresh SQLite file, or PostgreSQL with `--postgres URL`, then times the
//! queries the usage API and a dashboard ask, each three times (the median is
//! printed), and walks a paged answer.
//!
//! ```sh
//! cargo run --release -p tollgate-recorder --example usage_at_scale -- --receipts 1000000
//! ```
//!
//! Not part of CI; results go in `docs/recorder.md`.
#![allow(clippy::print_stderr)] // a benchmark's report

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tollgate_recorder::auth::{Caller, Policy};
use tollgate_recorder::clock::ManualClock;
use tollgate_recorder::metrics::Metrics;
use tollgate_recorder::recorder::{Recorder, RecorderOptions};
use tollgate_recorder::settings::Settings;
use tollgate_recorder::store::Store;
use tollgate_recorder::store::postgres::PostgresStore;
use tollgate_recorder::store::sqlite::SqliteStore;
use tollgate_recorder::usage::{Bucket, Cursor, GroupKey, Page, UsageQuery};
use tollgate_test_support::fixtures::{self, Gateway, HOUR_MS, T0_MS};

/// Receipts per ingest call (the recorder's default batch bound).
const BATCH: usize = 1000;
/// Fixture gateways the receipts are spread over (3 namespaces, 2
/// serviceAccounts, 2 models, 3 callers each).
const GATEWAYS: u64 = 10;

struct Args {
    receipts: u64,
    postgres: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        receipts: 1_000_000,
        postgres: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--receipts" => {
                out.receipts = it.next().context("--receipts N")?.parse()?;
            }
            "--postgres" => out.postgres = Some(it.next().context("--postgres URL")?),
            other => bail!("unknown argument {other:?}: --receipts N [--postgres URL]"),
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let per_gateway = args.receipts.div_ceil(GATEWAYS);
    let mut scratch = None;
    let store: Arc<dyn Store> = match &args.postgres {
        Some(url) => {
            let store = PostgresStore::connect(url, 8).await?;
            store.reset_for_tests().await?;
            Arc::new(store)
        }
        None => {
            let dir = std::env::temp_dir().join(format!("usage-at-scale-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let store = SqliteStore::open(&dir.join("recorder.db"))?;
            scratch = Some(ScratchDir(dir));
            Arc::new(store)
        }
    };
    let clock = Arc::new(ManualClock::new(T0_MS + per_gateway * 1000 + 24 * HOUR_MS));
    let key = fixtures::key_from("recorder");
    let recorder = Recorder::open(
        store.clone(),
        RecorderOptions {
            settings: Settings::default(),
            trust: fixtures::trust_for_ca(&fixtures::key_from("receipt-ca")),
            origin: tollgate_recorder::identity::default_origin(&key)?,
            key,
            clock: clock.clone(),
            metrics: Arc::new(Metrics::new()),
            policy: Policy::default(),
            verify_threads: 2,
        },
    )
    .await?;

    let started = Instant::now();
    for n in 1..=GATEWAYS {
        let gateway = Gateway::new(u32::try_from(n)?)?;
        let stream = gateway.stream(per_gateway, false)?;
        for batch in stream.chunks(BATCH) {
            let answer = recorder
                .ingest(&gateway.batch_json(batch)?, &Caller::Local)
                .await?;
            if !answer.rejected.is_empty() {
                bail!("ingest refused envelopes: {:?}", answer.rejected);
            }
        }
    }
    let took = started.elapsed();
    let stored = per_gateway * GATEWAYS;
    eprintln!(
        "ingested {stored} receipts in {:.1} s ({:.0} receipts/s, signatures verified)",
        took.as_secs_f64(),
        stored as f64 / took.as_secs_f64()
    );

    let range = (T0_MS - HOUR_MS, {
        use tollgate_recorder::clock::Clock as _;
        clock.now_ms()
    });
    let query = |group_by: &str, bucket: Option<Bucket>, namespace: Option<&str>| {
        Ok::<_, anyhow::Error>(UsageQuery {
            since_ms: range.0,
            until_ms: range.1,
            namespace: namespace.map(str::to_string),
            group_by: GroupKey::parse_list(group_by)?,
            bucket,
            page: Page::default(),
        })
    };
    let cases = [
        ("total (no grouping)", query("", None, None)?),
        (
            "by namespace, model, per hour",
            query("namespace,model", Some(Bucket::Hour), None)?,
        ),
        (
            "by namespace, serviceAccount (top consumers)",
            query("namespace,serviceAccount", None, None)?,
        ),
        ("by reason (refusals)", query("reason", None, None)?),
        ("by caller", query("caller", None, None)?),
        (
            "one namespace, by model, per day",
            query("model", Some(Bucket::Day), Some("team-1"))?,
        ),
        (
            "quota burn-down: one namespace by serviceAccount, provider, model",
            query(
                "namespace,serviceAccount,provider,model",
                None,
                Some("team-1"),
            )?,
        ),
    ];
    eprintln!("| query | rows | median of 3 |");
    eprintln!("|---|---|---|");
    for (name, q) in &cases {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let report = recorder.usage(q, &Caller::Local).await?;
            times.push(t.elapsed());
            rows = report.rows.len();
            if q.namespace.is_none() && report.total.requests != stored {
                bail!("{name}: {} requests, not {stored}", report.total.requests);
            }
        }
        eprintln!("| {name} | {rows} | {} |", ms(median(&mut times)));
    }

    // A paged walk: 100 rows a page.
    let mut paged = query("namespace,model,caller", Some(Bucket::Hour), None)?;
    paged.page.size = 100;
    let (mut pages, mut rows, mut times) = (0, 0, Vec::new());
    loop {
        let t = Instant::now();
        let report = recorder.usage(&paged, &Caller::Local).await?;
        times.push(t.elapsed());
        pages += 1;
        rows += report.rows.len();
        let Some(next) = report.next_cursor else {
            break;
        };
        let cursor = Cursor::decode(&next)?;
        paged.page.after = Some(cursor.after);
        paged.page.snapshot = Some(cursor.snapshot);
    }
    eprintln!(
        "| by namespace, model, caller, per hour: {rows} rows in {pages} pages of 100 | {rows} | {} a page |",
        ms(median(&mut times))
    );

    // The dashboard's checkpoint line: the newest checkpoint, its signature checked.
    recorder.seal_now().await?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let answer = recorder.latest_checkpoint().await?;
        times.push(t.elapsed());
        if answer.checkpoint.and_then(|c| c.signature_verified) != Some(true) {
            bail!("the newest checkpoint did not verify");
        }
    }
    eprintln!(
        "| newest checkpoint, verified | 1 | {} |",
        ms(median(&mut times))
    );
    drop(recorder);
    drop(store);
    drop(scratch);
    Ok(())
}

/// The SQLite database of a run (a million receipts take about 2 GB),
/// removed when the run ends, however it ends.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}
