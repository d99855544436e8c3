//! Amazon's event-stream framing (`application/vnd.amazon.eventstream`), in
//! which Bedrock streams `ConverseStream` and `InvokeModelWithResponseStream`
//! answers, and the tap that reads usage from it without changing a byte.
//!
//! A message is `total length (u32) | headers length (u32) | prelude CRC32 |
//! headers | payload | message CRC32`, big-endian, CRC32 (IEEE) over the
//! bytes before each checksum. A header is `name length (u8) | name | type
//! (u8) | value`; the tap reads the string headers `:message-type`,
//! `:event-type` and `:exception-type`, and skips the others by their type's
//! size.
//!
//! What the tap learns:
//! - `ConverseStream`: the `metadata` event's `usage` (camelCase, cache reads
//!   and writes apart from `inputTokens`);
//! - `InvokeModelWithResponseStream`: each `chunk` event's `bytes` is a
//!   base64 model event (for Claude, Anthropic's stream events), read as the
//!   Anthropic SSE tap reads them;
//! - an `exception` message (a throttle or a model error mid-stream), or a
//!   frame that fails its checksum, is a stream fault the receipt records.
//!
//! Frames are copied into a buffer only to be parsed; what the client gets
//! is the upstream's chunks, untouched. A frame over [`MAX_FRAME_BYTES`]
//! stops the parsing (the stream still passes; usage is then unknown).

use base64::Engine as _;
use bytes::Bytes;

use crate::api::{ApiStyle, Endpoint};
use crate::sse::{ResponseFacts, SseTap, facts_from_json};

/// The largest message the tap parses. Bedrock's events are a few hundred
/// bytes; the format allows 16 MiB.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// The fixed bytes around a message: the prelude (12) and the message CRC (4).
const OVERHEAD: usize = 16;

/// How a stream went wrong, as far as the tap can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    /// A frame failed its checksum or its header layout.
    Malformed,
    /// The provider sent an exception message mid-stream.
    Exception,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    Malformed,
    TooLarge,
}

/// One decoded message: the headers the tap reads, and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub message_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub exception_type: Option<&'a str>,
    pub payload: &'a [u8],
}

/// Decodes the message at the start of `buf`: the message and its length,
/// `Ok(None)` when `buf` does not hold all of it yet.
pub fn decode(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, FrameError> {
    let Some(prelude) = buf.get(..12) else {
        return Ok(None);
    };
    let total = be32(&prelude[0..4]) as usize;
    let headers_len = be32(&prelude[4..8]) as usize;
    if crc32fast::hash(&prelude[..8]) != be32(&prelude[8..12]) {
        return Err(FrameError::Malformed);
    }
    if total > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge);
    }
    if total < OVERHEAD || headers_len > total - OVERHEAD {
        return Err(FrameError::Malformed);
    }
    let Some(message) = buf.get(..total) else {
        return Ok(None);
    };
    if crc32fast::hash(&message[..total - 4]) != be32(&message[total - 4..]) {
        return Err(FrameError::Malformed);
    }
    let headers = &message[12..12 + headers_len];
    let payload = &message[12 + headers_len..total - 4];
    let mut decoded = Message {
        message_type: None,
        event_type: None,
        exception_type: None,
        payload,
    };
    let mut rest = headers;
    while let Some((&name_len, after)) = rest.split_first() {
        let name = after
            .get(..usize::from(name_len))
            .ok_or(FrameError::Malformed)?;
        let after = &after[usize::from(name_len)..];
        let (&kind, after) = after.split_first().ok_or(FrameError::Malformed)?;
        let (value, after) = header_value(kind, after)?;
        if let Some(text) = value {
            let slot = match name {
                b":message-type" => Some(&mut decoded.message_type),
                b":event-type" => Some(&mut decoded.event_type),
                b":exception-type" => Some(&mut decoded.exception_type),
                _ => None,
            };
            if let Some(slot) = slot {
                *slot = Some(std::str::from_utf8(text).map_err(|_| FrameError::Malformed)?);
            }
        }
        rest = after;
    }
    Ok(Some((decoded, total)))
}

/// A header value of type `kind` at the start of `bytes`: its bytes when it
/// is a string (type 7), and what follows it.
fn header_value(kind: u8, bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), FrameError> {
    let fixed = match kind {
        0 | 1 => 0,
        2 => 1,
        3 => 2,
        4 => 4,
        5 | 8 => 8,
        9 => 16,
        6 | 7 => {
            let len = bytes.get(..2).ok_or(FrameError::Malformed)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let value = bytes.get(2..2 + len).ok_or(FrameError::Malformed)?;
            let text = (kind == 7).then_some(value);
            return Ok((text, &bytes[2 + len..]));
        }
        _ => return Err(FrameError::Malformed),
    };
    let after = bytes.get(fixed..).ok_or(FrameError::Malformed)?;
    Ok((None, after))
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Encodes a message with string headers, as Bedrock frames its events
/// (the dry-run provider and the tests use it).
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        encoded_headers.push(name.len() as u8);
        encoded_headers.extend_from_slice(name.as_bytes());
        encoded_headers.push(7);
        encoded_headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded_headers.extend_from_slice(value.as_bytes());
    }
    let total = OVERHEAD + encoded_headers.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(encoded_headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&encoded_headers);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// An event message as Bedrock sends it: `:event-type`, JSON content.
pub fn event(event_type: &str, payload: &serde_json::Value) -> Vec<u8> {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// Reads usage from a Bedrock event stream as it passes (see the module
/// docs); sees each chunk once and hands it back unchanged.
#[derive(Debug)]
pub struct EventStreamTap {
    endpoint: Endpoint,
    /// The bytes of the message in progress (and any after it).
    buffer: Vec<u8>,
    /// Model events inside `chunk` messages, read as Anthropic's SSE.
    inner: SseTap,
    /// What `metadata` events said.
    facts: ResponseFacts,
    fault: Option<StreamFault>,
    /// Parsing stopped (a fault, or a frame too large).
    stopped: bool,
    events: u64,
}

impl EventStreamTap {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            buffer: Vec::new(),
            inner: SseTap::new(ApiStyle::Anthropic, false),
            facts: ResponseFacts::default(),
            fault: None,
            stopped: false,
            events: 0,
        }
    }

    /// Feeds one upstream chunk, split anywhere; returns it unchanged.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.stopped {
            return chunk;
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.extend_from_slice(&chunk);
        let mut used = 0;
        loop {
            match decode(&buffer[used..]) {
                Ok(Some((message, len))) => {
                    self.learn(&message);
                    used += len;
                }
                Ok(None) => break,
                Err(FrameError::TooLarge) => {
                    self.stop(None);
                    return chunk;
                }
                Err(FrameError::Malformed) => {
                    self.stop(Some(StreamFault::Malformed));
                    return chunk;
                }
            }
        }
        buffer.drain(..used);
        self.buffer = buffer;
        chunk
    }

    /// End of stream: a partial message left over is a cut stream.
    pub fn finish(&mut self) {
        if !self.stopped && !self.buffer.is_empty() {
            self.stop(Some(StreamFault::Malformed));
        }
    }

    fn stop(&mut self, fault: Option<StreamFault>) {
        self.stopped = true;
        self.buffer = Vec::new();
        if self.fault.is_none() {
            self.fault = fault;
        }
    }

    fn learn(&mut self, message: &Message<'_>) {
        match message.message_type {
            Some("exception") | Some("error") => {
                self.fault.get_or_insert(StreamFault::Exception);
                return;
            }
            Some("event") | None => {}
            Some(_) => return,
        }
        self.events += 1;
        match message.event_type {
            Some("metadata") => {
                let facts = facts_from_json(self.endpoint, message.payload);
                if facts.usage.is_some() {
                    self.facts.usage = facts.usage;
                }
            }
            Some("chunk") => {
                let Ok(chunk) = serde_json::from_slice::<ChunkPayload>(message.payload) else {
                    return;
                };
                let Ok(model_event) = base64::engine::general_purpose::STANDARD.decode(chunk.bytes)
                else {
                    return;
                };
                if model_event.contains(&b'\n') || model_event.contains(&b'\r') {
                    // A JSON event holds no raw line breaks; one that does
                    // is no event the SSE reader could frame.
                    return;
                }
                let mut framed = Vec::with_capacity(model_event.len() + 8);
                framed.extend_from_slice(b"data: ");
                framed.extend_from_slice(&model_event);
                framed.extend_from_slice(b"\n\n");
                self.inner.push(Bytes::from(framed));
            }
            _ => {}
        }
    }

    /// What the stream said so far: `metadata` usage, else the model
    /// events' (with their served model and id).
    pub fn facts(&self) -> ResponseFacts {
        let inner = self.inner.facts();
        ResponseFacts {
            usage: self.facts.usage.or(inner.usage),
            served_model: inner.served_model.clone(),
            provider_request_id: inner.provider_request_id.clone(),
            service_tier: inner.service_tier.clone(),
        }
    }

    /// A fault seen in the stream, if any.
    pub fn fault(&self) -> Option<StreamFault> {
        self.fault
    }

    /// Event messages read so far.
    pub fn events(&self) -> u64 {
        self.events
    }
}

#[derive(serde::Deserialize)]
struct ChunkPayload {
    bytes: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::TokenUsage;
    use proptest::prelude::*;
    use serde_json::json;

    fn converse_stream() -> Vec<u8> {
        [
            event("messageStart", &json!({"role": "assistant"})),
            event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
            ),
            event("contentBlockStop", &json!({"contentBlockIndex": 0})),
            event("messageStop", &json!({"stopReason": "end_turn"})),
            event(
                "metadata",
                &json!({"usage": {"inputTokens": 30, "outputTokens": 7, "totalTokens": 1037,
                                  "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 0},
                        "metrics": {"latencyMs": 120}}),
            ),
        ]
        .concat()
    }

    fn invoke_stream() -> Vec<u8> {
        let chunk = |inner: serde_json::Value| {
            let bytes = base64::engine::general_purpose::STANDARD.encode(inner.to_string());
            event("chunk", &json!({ "bytes": bytes }))
        };
        [
            chunk(
                json!({"type": "message_start", "message": {"id": "msg_bdrk_1", "model": "claude-3-5-haiku-20241022", "usage": {"input_tokens": 25, "output_tokens": 1}}}),
            ),
            chunk(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi\nthere"}}),
            ),
            chunk(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}})),
            chunk(
                json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 25, "outputTokenCount": 9}}),
            ),
        ]
        .concat()
    }

    fn tap(endpoint: Endpoint, stream: &[u8], cuts: &[usize]) -> (Vec<u8>, EventStreamTap) {
        let mut tap = EventStreamTap::new(endpoint);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            out.extend_from_slice(&tap.push(Bytes::copy_from_slice(&stream[start..cut])));
            start = cut;
        }
        tap.finish();
        (out, tap)
    }

    #[test]
    fn frames_round_trip_and_checksums_hold() {
        let frame = encode(&[(":event-type", "chunk"), ("x", "y")], b"{}");
        let (message, len) = decode(&frame).unwrap().unwrap();
        assert_eq!(len, frame.len());
        assert_eq!(message.event_type, Some("chunk"));
        assert_eq!(message.message_type, None);
        assert_eq!(message.payload, b"{}");
        for short in 0..frame.len() {
            assert_eq!(decode(&frame[..short]), Ok(None), "{short} bytes");
        }
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x20;
            assert!(
                !matches!(decode(&bad), Ok(Some(_))),
                "a flipped byte at {at} still decodes"
            );
        }
        let mut huge = frame.clone();
        huge[..4].copy_from_slice(&((MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
        let crc = crc32fast::hash(&huge[..8]);
        huge[8..12].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode(&huge), Err(FrameError::TooLarge));
    }

    #[test]
    fn converse_stream_usage_comes_from_the_metadata_event() {
        let stream = converse_stream();
        let (out, tap) = tap(Endpoint::ConverseStream, &stream, &[5, 17, 100, 101]);
        assert_eq!(out, stream, "the stream passes unchanged");
        assert_eq!(tap.fault(), None);
        assert_eq!(tap.events(), 5);
        assert_eq!(
            tap.facts().usage,
            Some(TokenUsage {
                input: 30,
                output: 7,
                cached_input: 1000,
                ..TokenUsage::default()
            })
        );
    }

    #[test]
    fn invoke_stream_usage_comes_from_the_model_events() {
        let stream = invoke_stream();
        let (_, tap) = tap(Endpoint::InvokeModelStream, &stream, &[]);
        let facts = tap.facts();
        assert_eq!(
            facts.usage,
            Some(TokenUsage {
                input: 25,
                output: 9,
                ..TokenUsage::default()
            })
        );
        assert_eq!(facts.provider_request_id.as_deref(), Some("msg_bdrk_1"));
        assert_eq!(
            facts.served_model.as_deref(),
            Some("claude-3-5-haiku-20241022")
        );
    }

    #[test]
    fn faults_are_recorded_and_the_stream_still_passes() {
        let mut stream = converse_stream();
        let at = stream.len() - 3;
        stream[at] ^= 1;
        let (out, tap) = tap(Endpoint::ConverseStream, &stream, &[]);
        assert_eq!(out, stream);
        assert_eq!(tap.fault(), Some(StreamFault::Malformed));
        assert_eq!(tap.facts().usage, None, "the corrupt metadata is not read");

        let cut = converse_stream();
        let (_, tap_cut) = tap_stream(&cut[..cut.len() - 2]);
        assert_eq!(tap_cut.fault(), Some(StreamFault::Malformed));

        let throttled = [
            event("messageStart", &json!({"role": "assistant"})),
            encode(
                &[
                    (":exception-type", "throttlingException"),
                    (":message-type", "exception"),
                ],
                br#"{"message":"slow down"}"#,
            ),
        ]
        .concat();
        let (_, tap) = tap_stream(&throttled);
        assert_eq!(tap.fault(), Some(StreamFault::Exception));
    }

    fn tap_stream(stream: &[u8]) -> (Vec<u8>, EventStreamTap) {
        tap(Endpoint::ConverseStream, stream, &[])
    }

    proptest! {
        #[test]
        fn any_split_reads_the_same(cuts in proptest::collection::btree_set(1usize..700, 0..12)) {
            let stream = [converse_stream(), invoke_stream()].concat();
            let cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < stream.len()).collect();
            let (whole_out, whole) = tap(Endpoint::ConverseStream, &stream, &[]);
            let (out, split) = tap(Endpoint::ConverseStream, &stream, &cuts);
            prop_assert_eq!(&out, &stream);
            prop_assert_eq!(whole_out, out);
            prop_assert_eq!(whole.facts(), split.facts());
            prop_assert_eq!(whole.events(), split.events());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let cuts: Vec<usize> = [7].into_iter().filter(|c| *c < bytes.len()).collect();
            let (out, _) = tap(Endpoint::ConverseStream, &bytes, &cuts);
            prop_assert_eq!(out, bytes);
        }
    }
}
