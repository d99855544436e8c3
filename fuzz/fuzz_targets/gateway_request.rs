//! A client's request body, as the gateway reads it before anything leaves the
//! pod: the secret scan over the raw bytes, then (for a JSON object) the caller
//! id, the input-token estimate and the dry-run answer. None may panic; each is
//! deterministic; a dry-run answer is well-formed JSON or complete SSE events.
//! The first byte picks the endpoint.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_gateway::api::{ApiStyle, Endpoint};
use tollgate_gateway::dry_run::{DryRunBody, estimate_input_tokens, respond};
use tollgate_gateway::eventstream::EventStreamTap;
use tollgate_gateway::sse::SseTap;
use tollgate_gateway::{caller, guards};
use tollgate_wire::caller::CallerKey;

const ENDPOINTS: [Endpoint; 16] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::Responses,
    Endpoint::Messages,
    Endpoint::CountTokens,
    Endpoint::GenerateContent,
    Endpoint::StreamGenerateContent,
    Endpoint::GeminiCountTokens,
    Endpoint::EmbedContent,
    Endpoint::BatchEmbedContents,
    Endpoint::Converse,
    Endpoint::ConverseStream,
    Endpoint::InvokeModel,
    Endpoint::InvokeModelStream,
    Endpoint::BedrockCountTokens,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    let found = guards::find_secret(body);
    assert_eq!(
        found,
        guards::find_secret(body),
        "secret scan is not deterministic"
    );
    let scrubbed = guards::scrub_credentials(body);
    assert!(
        guards::find_secret(&scrubbed).is_none() || found.is_some(),
        "scrubbing made a secret appear"
    );
    let Ok(json @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let key = CallerKey::from_bytes([9; 32]);
    let headers = http::HeaderMap::new();
    let hash = caller::caller_hash(&key, &headers, &json, endpoint.style());
    assert_eq!(
        hash,
        caller::caller_hash(&key, &headers, &json, endpoint.style())
    );
    let estimate = estimate_input_tokens(endpoint, &json);
    assert_eq!(estimate, estimate_input_tokens(endpoint, &json));
    let model = json.get("model").and_then(Value::as_str).unwrap_or("m");
    let answer = respond(endpoint, model, &json);
    match answer.body {
        DryRunBody::Json(bytes) => {
            serde_json::from_slice::<Value>(&bytes).expect("a dry-run answer is JSON");
        }
        DryRunBody::Events(events) => {
            // Complete events: the tap reads them whole and cut anywhere alike.
            let stream: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
            if endpoint.style() == ApiStyle::Bedrock {
                // Bedrock's frames: well-formed, with usage.
                let mut tap = EventStreamTap::new(endpoint);
                tap.push(Bytes::from(stream));
                tap.finish();
                assert_eq!(tap.fault(), None, "a dry-run frame is malformed");
                assert!(tap.facts().usage.is_some(), "a dry-run stream has no usage");
                return;
            }
            let whole = tap(endpoint, &stream, &[]);
            let cuts: Vec<usize> = (1..stream.len()).step_by(7).collect();
            assert_eq!(
                whole,
                tap(endpoint, &stream, &cuts),
                "facts depend on chunking"
            );
        }
    }
});

fn tap(
    endpoint: Endpoint,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, tollgate_gateway::sse::ResponseFacts) {
    let mut tap = SseTap::new(endpoint.style(), true);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        out.extend_from_slice(&tap.push(Bytes::copy_from_slice(&stream[start..cut])));
        start = cut;
    }
    out.extend_from_slice(&tap.finish());
    (out, tap.facts().clone())
}
