//! Throughput of the secret guard, which scans every request body: a 1 MiB
//! prompt-like chat request, and a body dense in near-miss prefixes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_gateway::guards::find_secret;

const BODY_BYTES: usize = 1 << 20;

/// A chat request whose messages mix prose, code and pasted JSON, the way
/// coding assistants' prompts look, up to about `size` bytes.
fn prompt_like_body(size: usize) -> Vec<u8> {
    const PASSAGES: [&str; 4] = [
        "Please review the following pull request. The task-runner spawns workers per shard; \
         ask-me-anything sessions aside, the goal is to keep p99 latency under 250 ms. \
         Summarise the risks, suggest tests, and explain how the pagination logic handles gaps.",
        "fn process(items: &[Item]) -> Result<Vec<Output>, Error> {\n    let mut out = Vec::with_capacity(items.len());\n    \
         for item in items.iter().filter(|i| i.is_active()) {\n        out.push(transform(item)?);\n    }\n    Ok(out)\n}\n",
        "{\"type\": \"config\", \"settings\": {\"region\": \"eu-west-1\", \"replicas\": 3, \"strategy\": \"rolling-update\", \
         \"image\": \"ghcr.io/example/app:1.2.3\", \"args\": [\"--port=8080\", \"--log-level=info\"]}}",
        "Stack trace:\n  at com.example.service.PaymentProcessor.process(PaymentProcessor.java:142)\n  \
         at com.example.api.Gateway.handle(Gateway.java:88)\nExpected status 200, got 503 from upstream; retrying with backoff.",
    ];
    let mut messages = Vec::new();
    let mut total = 0;
    let mut n = 0;
    while total < size {
        let text = PASSAGES[n % PASSAGES.len()].repeat(8);
        total += text.len();
        let role = if n % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": text}));
        n += 1;
    }
    serde_json::to_vec(&serde_json::json!({"model": "gpt-4o", "messages": messages})).unwrap()
}

/// The slow path at every turn: prefixes of every pattern that never complete.
fn near_miss_body(size: usize) -> Vec<u8> {
    let unit =
        "sk-short ghp_x AKIA1 -----BEGIN CERT xoxb-1 \"service\" \"private\" github_pat ask-me ";
    unit.repeat(size / unit.len() + 1).into_bytes()
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("find_secret");
    for (name, body) in [
        ("prompt_like_1MiB", prompt_like_body(BODY_BYTES)),
        ("near_miss_1MiB", near_miss_body(BODY_BYTES)),
    ] {
        assert_eq!(find_secret(&body), None, "{name} must be clean");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| b.iter(|| find_secret(black_box(&body))));
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
