//! The SSE usage tap on arbitrary provider streams cut at arbitrary places: it
//! must never panic, must forward the same bytes and read the same facts (usage,
//! served model, provider request id) however the stream is chunked, and must
//! pass a stream through untouched when it strips nothing.
//!
//! With bit 3 of the flags byte the stream is read as a Bedrock event stream
//! instead (`EventStreamTap`), under the same rules, plus: the fault it
//! reports does not depend on the chunking either.
//!
//! Input: one flags byte (bit 0: Anthropic style, bit 2: Gemini style, bit 1:
//! strip the injected usage event), one byte per cut (a chunk length, 0 ends the list), then the
//! stream.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate_gateway::api::{ApiStyle, Endpoint};
use tollgate_gateway::eventstream::{EventStreamTap, StreamFault};
use tollgate_gateway::sse::{ResponseFacts, SseTap};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let style = match (flags & 4 != 0, flags & 1 != 0) {
        (true, _) => ApiStyle::Gemini,
        (false, false) => ApiStyle::OpenAi,
        (false, true) => ApiStyle::Anthropic,
    };
    let strip = flags & 2 != 0;
    let lengths_end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (lengths, stream) = rest.split_at(lengths_end);
    let stream = stream.get(1..).unwrap_or_default();
    let mut cuts = Vec::new();
    let mut at = 0;
    for &len in lengths {
        at += usize::from(len);
        if at >= stream.len() {
            break;
        }
        cuts.push(at);
    }
    if flags & 8 != 0 {
        let whole = run_eventstream(stream, &[]);
        assert_eq!(
            whole,
            run_eventstream(stream, &cuts),
            "chunking changed the event-stream tap"
        );
        assert_eq!(whole.0, stream, "the event-stream tap changed the stream");
        return;
    }
    let whole = run(style, strip, stream, &[]);
    let chunked = run(style, strip, stream, &cuts);
    assert_eq!(
        whole, chunked,
        "chunking changed what was forwarded or read"
    );
    let bytewise: Vec<usize> = (1..stream.len().min(4096)).collect();
    if stream.len() <= 4096 {
        assert_eq!(
            whole,
            run(style, strip, stream, &bytewise),
            "byte-at-a-time differs"
        );
    }
    if !strip || style != ApiStyle::OpenAi {
        assert_eq!(
            whole.0, stream,
            "a tap that strips nothing changed the stream"
        );
    }
});

fn run_eventstream(
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, ResponseFacts, Option<StreamFault>, u64) {
    let mut tap = EventStreamTap::new(Endpoint::ConverseStream);
    let mut forwarded = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        forwarded.extend_from_slice(&tap.push(Bytes::copy_from_slice(&stream[start..cut])));
        start = cut;
    }
    tap.finish();
    (forwarded, tap.facts(), tap.fault(), tap.events())
}

fn run(style: ApiStyle, strip: bool, stream: &[u8], cuts: &[usize]) -> (Vec<u8>, ResponseFacts) {
    let mut tap = SseTap::new(style, strip);
    let mut forwarded = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        forwarded.extend_from_slice(&tap.push(Bytes::copy_from_slice(&stream[start..cut])));
        start = cut;
    }
    forwarded.extend_from_slice(&tap.finish());
    (forwarded, tap.facts().clone())
}
