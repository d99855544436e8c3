//! Streams `--requests` chat completions through `--url` and reports, in
//! microseconds, the time to the first body byte and the gaps between SSE
//! events, and the time to the last byte, as JSON on stdout. With
//! `--no-stream` the same request asks for a whole answer, so streaming's own
//! cost can be told from the request's.

use std::io::Write;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_bench::percentile;

#[derive(Parser, Debug)]
struct Args {
    /// Full URL of the chat completions endpoint.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 50)]
    requests: u32,
    #[arg(long, default_value_t = 5)]
    concurrency: u32,
    /// The model asked for (the mock upstream's `bench-sse-E-I` picks the
    /// stream's shape).
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Asks for a whole JSON answer instead of a stream (the same request
    /// otherwise), to tell streaming's cost from the request's.
    #[arg(long)]
    no_stream: bool,
    /// A pause after each request, in milliseconds: paced like a stream's
    /// gaps, an unstreamed request meets the same idle (cold) proxy.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let per_worker = args.requests.div_ceil(args.concurrency);
    let body = Bytes::from(
        serde_json::json!({"model": args.model, "stream": !args.no_stream, "messages": [{"role": "user", "content": "bench"}]})
            .to_string(),
    );
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let url = args.url.clone();
        let request_body = body.clone();
        let pause_ms = args.pause_ms;
        tasks.push(tokio::spawn(async move {
            let mut ttfb = Vec::new();
            let mut gaps = Vec::new();
            let mut totals = Vec::new();
            for _ in 0..per_worker {
                let request = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", "Bearer bench")
                    .body(Full::new(request_body.clone()))?;
                let start = Instant::now();
                let mut body = client.request(request).await?.into_body();
                let mut last: Option<Instant> = None;
                while let Some(frame) = body.frame().await {
                    let frame = frame?;
                    let Some(data) = frame.data_ref() else {
                        continue;
                    };
                    let now = Instant::now();
                    let events = data.windows(2).filter(|w| w == b"\n\n").count().max(1);
                    match last {
                        None => ttfb.push(now.duration_since(start).as_micros() as u64),
                        Some(prev) => {
                            gaps.push(now.duration_since(prev).as_micros() as u64 / events as u64)
                        }
                    }
                    last = Some(now);
                }
                totals.push(start.elapsed().as_micros() as u64);
                if pause_ms > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                }
            }
            anyhow::Ok((ttfb, gaps, totals))
        }));
    }
    let (mut ttfb, mut gaps, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for task in tasks {
        let (t, g, total) = task.await??;
        ttfb.extend(t);
        gaps.extend(g);
        totals.extend(total);
    }
    ttfb.sort_unstable();
    gaps.sort_unstable();
    totals.sort_unstable();
    let report = serde_json::json!({
        "requests": ttfb.len(),
        "ttfb_p50_us": percentile(&ttfb, 50.0),
        "ttfb_p99_us": percentile(&ttfb, 99.0),
        "gap_p50_us": percentile(&gaps, 50.0),
        "gap_p99_us": percentile(&gaps, 99.0),
        "total_p50_us": percentile(&totals, 50.0),
    });
    writeln!(std::io::stdout().lock(), "{report}")?;
    Ok(())
}
