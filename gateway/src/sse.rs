//! What the gateway learns from a provider response (token usage, served
//! model, provider request id) without keeping any of its text, for whole JSON
//! bodies and for SSE streams tapped chunk by chunk; and the removal of the
//! usage event the gateway itself asked an OpenAI stream for.
//!
//! The tap parses only events that can carry a fact: the first few (for id and
//! model) and those whose data holds a `"usage"` object. Content deltas cost a
//! byte scan, never a JSON parse. Parsing is lenient: a field of an unexpected
//! type is treated as absent, and malformed JSON yields no facts, never an error.

use std::marker::PhantomData;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::api::{ApiStyle, Endpoint};

/// The largest single SSE event the tap holds back or parses. A provider event
/// is normally well under 100 KiB; the Responses API's final event repeats the
/// whole output and is the only large one. Past this bound the tap stops
/// holding events back and forwards the stream raw rather than buffer without
/// limit or cut the stream: the client may then see the injected usage event,
/// and that one oversized event yields no facts.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Longest model name or request id kept. Longer or non-printable values are
/// dropped: they end up in receipts and metrics, never as free text.
const MAX_FACT_CHARS: usize = 256;

/// How many leading events with data are parsed while id or model is still
/// unknown. Providers put both in their first event.
const ID_MODEL_ATTEMPTS: u8 = 3;

/// An `event:` name longer than this is no event the tap cares about.
const MAX_EVENT_NAME: usize = 64;

/// Token counts from a provider response, as the provider reports them.
/// For OpenAI and Gemini `input` includes `cached_input`; for Anthropic and
/// Bedrock `input` is
/// `input_tokens` plus cache writes, which excludes cache reads (`cached_input`).
/// Cache writes (Anthropic only; OpenAI reports none) are part of `input`,
/// reasoning (OpenAI `reasoning_tokens`, Gemini `thoughtsTokenCount`) part
/// of `output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub reasoning: u64,
}

/// What the gateway learns from a response without keeping its text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseFacts {
    pub usage: Option<TokenUsage>,
    pub served_model: Option<String>,
    pub provider_request_id: Option<String>,
    /// The service tier the provider says served the request (OpenAI's
    /// top-level `service_tier`, Anthropic's `usage.service_tier`).
    pub service_tier: Option<String>,
}

/// Facts from a complete JSON (non-streaming) response body of `endpoint`.
pub fn facts_from_json(endpoint: Endpoint, body: &[u8]) -> ResponseFacts {
    let Some(object) = parse_object(body) else {
        return ResponseFacts::default();
    };
    let usage = if endpoint.counts_tokens() {
        object
            .input_tokens
            .0
            .or(object.bedrock_input_tokens.0)
            .or(object.total_tokens.0)
            .map(|input| TokenUsage {
                input,
                ..TokenUsage::default()
            })
    } else {
        object.token_usage()
    };
    ResponseFacts {
        usage,
        service_tier: object.service_tier(),
        served_model: object.served_model(),
        provider_request_id: object.request_id(),
    }
}

/// Incremental SSE tap: sees each upstream chunk once, returns what to forward.
#[derive(Debug)]
pub struct SseTap {
    style: ApiStyle,
    /// Holding events back to drop the injected usage event. Turns off for
    /// good when an event exceeds [`MAX_EVENT_BYTES`].
    stripping: bool,
    facts: ResponseFacts,
    id_model_attempts: u8,
    /// The current line, when it spans chunks (without its terminator).
    partial_line: Vec<u8>,
    partial_line_oversized: bool,
    /// The previous chunk ended in CR; an LF opening this one completes it.
    after_cr: Option<LfOwner>,
    event: EventFields,
    /// Raw bytes of the current event seen so far.
    event_raw_len: usize,
    /// When stripping: the raw bytes of the current, incomplete event.
    held: Vec<u8>,
    /// Scratch list of event ends in the chunk being scanned, kept for reuse.
    event_ends: Vec<EventEnd>,
    /// Chunks dispatched so far (see [`Self::chunks`]).
    chunks: u64,
}

/// The fields of the event being assembled.
#[derive(Debug, Default)]
struct EventFields {
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    data_oversized: bool,
}

/// Whose byte an LF after a chunk-final CR is.
#[derive(Debug, Clone, Copy)]
enum LfOwner {
    /// The CR ended a field line; the LF belongs to the event in progress.
    CurrentEvent,
    /// The CR ended an event, which was forwarded or stripped; its LF goes the
    /// same way.
    EndedEvent { stripped: bool },
}

/// Where an event ended in the scanned chunk (exclusive), and its fate.
#[derive(Debug, Clone, Copy)]
struct EventEnd {
    end: usize,
    stripped: bool,
}

impl SseTap {
    /// `strip_injected_usage`: the gateway added OpenAI
    /// `stream_options.include_usage` although the client did not ask; the
    /// usage-only chunk (`"choices": []` with a non-null `usage`) is then
    /// removed from what the client sees. It has no effect on Anthropic
    /// streams, whose usage is part of events the client needs anyway.
    pub fn new(style: ApiStyle, strip_injected_usage: bool) -> Self {
        Self {
            style,
            stripping: strip_injected_usage && style == ApiStyle::OpenAi,
            facts: ResponseFacts::default(),
            id_model_attempts: ID_MODEL_ATTEMPTS,
            partial_line: Vec::new(),
            partial_line_oversized: false,
            after_cr: None,
            event: EventFields::default(),
            event_raw_len: 0,
            held: Vec::new(),
            event_ends: Vec::new(),
            chunks: 0,
        }
    }

    /// Feeds one upstream chunk, split anywhere, with LF, CRLF or CR line
    /// ends. Returns the bytes to forward now: the chunk itself (same buffer)
    /// when not stripping; otherwise every complete event, less the stripped
    /// one, with the current incomplete event held back.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        let mut event_ends = std::mem::take(&mut self.event_ends);
        event_ends.clear();
        if !self.stripping {
            self.scan(&chunk, &mut event_ends);
            self.event_ends = event_ends;
            return chunk;
        }
        self.scan(&chunk, &mut event_ends);
        let mut forward = Forward::default();
        let mut held = std::mem::take(&mut self.held);
        let mut start = 0;
        for event_end in &event_ends {
            if !event_end.stripped {
                forward.push_bytes(&chunk, &held);
                forward.push_range(&chunk, start..event_end.end);
            }
            held.clear();
            start = event_end.end;
        }
        held.extend_from_slice(&chunk[start..]);
        if !self.stripping || held.len() > MAX_EVENT_BYTES {
            self.stripping = false;
            forward.push_bytes(&chunk, &held);
            held = Vec::new();
        }
        self.held = held;
        self.event_ends = event_ends;
        forward.into_bytes(&chunk)
    }

    /// End of stream: the unterminated final event, if any, is dispatched and
    /// forwarded as is, unless it is the usage event to strip.
    pub fn finish(&mut self) -> Bytes {
        self.after_cr = None;
        if !self.partial_line.is_empty() || self.partial_line_oversized {
            self.complete_line(&[]);
        }
        let stripped = if self.event.has_data || !self.event.name.is_empty() {
            self.dispatch()
        } else {
            self.event_raw_len = 0;
            false
        };
        let held = std::mem::take(&mut self.held);
        if stripped {
            Bytes::new()
        } else {
            Bytes::from(held)
        }
    }

    pub fn facts(&self) -> &ResponseFacts {
        &self.facts
    }

    /// How many chunks the stream has delivered so far: events with data
    /// that reach the client, the closing `[DONE]`, Anthropic's `ping` and
    /// the stripped injected usage event excepted.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Runs the line and event state machine over `chunk`, recording where
    /// events end.
    fn scan(&mut self, chunk: &[u8], event_ends: &mut Vec<EventEnd>) {
        let mut pos = 0;
        if let Some(owner) = self.after_cr.take() {
            match (chunk.first(), owner) {
                (None, _) => {
                    self.after_cr = Some(owner);
                    return;
                }
                (Some(b'\n'), LfOwner::CurrentEvent) => {
                    self.event_raw_len += 1;
                    pos = 1;
                }
                (Some(b'\n'), LfOwner::EndedEvent { stripped }) => {
                    event_ends.push(EventEnd { end: 1, stripped });
                    pos = 1;
                }
                (Some(_), _) => {}
            }
        }
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            let Some(line_len) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                self.buffer_partial_line(rest);
                self.event_raw_len += rest.len();
                break;
            };
            let (terminator_len, cr_ends_chunk) = match (rest[line_len], rest.get(line_len + 1)) {
                (b'\r', Some(b'\n')) => (2, false),
                (b'\r', None) => (1, true),
                _ => (1, false),
            };
            self.event_raw_len += line_len + terminator_len;
            let ended = self.complete_line(&rest[..line_len]);
            pos += line_len + terminator_len;
            if let Some(stripped) = ended {
                event_ends.push(EventEnd { end: pos, stripped });
            }
            if cr_ends_chunk {
                self.after_cr = Some(match ended {
                    Some(stripped) => LfOwner::EndedEvent { stripped },
                    None => LfOwner::CurrentEvent,
                });
            }
        }
    }

    fn buffer_partial_line(&mut self, bytes: &[u8]) {
        if self.partial_line_oversized {
            return;
        }
        if self.partial_line.len() + bytes.len() > MAX_EVENT_BYTES {
            self.partial_line_oversized = true;
            // Keep the start, which names the field.
            let room = MAX_EVENT_BYTES
                .saturating_sub(self.partial_line.len())
                .min(bytes.len());
            self.partial_line.extend_from_slice(&bytes[..room]);
        } else {
            self.partial_line.extend_from_slice(bytes);
        }
    }

    /// Completes the current line with `tail`. Returns whether an event ended
    /// and, if so, whether it is stripped.
    fn complete_line(&mut self, tail: &[u8]) -> Option<bool> {
        if self.partial_line.is_empty() && !self.partial_line_oversized {
            return self.process_line(tail, tail.len() > MAX_EVENT_BYTES);
        }
        let mut line = std::mem::take(&mut self.partial_line);
        let oversized = self.partial_line_oversized || line.len() + tail.len() > MAX_EVENT_BYTES;
        if !oversized {
            line.extend_from_slice(tail);
        }
        let ended = self.process_line(&line, oversized);
        line.clear();
        self.partial_line = line;
        self.partial_line_oversized = false;
        ended
    }

    /// One SSE line (`oversized`: only its start is in `line`).
    fn process_line(&mut self, line: &[u8], oversized: bool) -> Option<bool> {
        if line.is_empty() && !oversized {
            return Some(self.dispatch());
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                let event = &mut self.event;
                let separator = usize::from(event.has_data);
                if oversized || event.data.len() + separator + value.len() > MAX_EVENT_BYTES {
                    event.data_oversized = true;
                } else if !event.data_oversized {
                    if event.has_data {
                        event.data.push(b'\n');
                    }
                    event.data.extend_from_slice(value);
                }
                event.has_data = true;
            }
            b"event" => {
                self.event.name.clear();
                if !oversized && value.len() <= MAX_EVENT_NAME {
                    self.event.name.extend_from_slice(value);
                }
            }
            _ => {}
        }
        None
    }

    /// The event is complete: learn from it and decide whether to strip it.
    fn dispatch(&mut self) -> bool {
        let mut event = std::mem::take(&mut self.event);
        // A chunk is an event with content the client gets: not the closing
        // `[DONE]`, not Anthropic's keep-alive `ping`.
        let chunk = event.has_data && event.data != b"[DONE]" && event.name != b"ping";
        let mut stripped = if event.has_data && !event.data_oversized {
            self.learn_from_event(&event.name, &event.data)
        } else {
            false
        };
        if self.event_raw_len > MAX_EVENT_BYTES {
            self.stripping = false;
            stripped = false;
        }
        if chunk && !stripped {
            self.chunks += 1;
        }
        self.event_raw_len = 0;
        event.name.clear();
        event.data.clear();
        self.event = EventFields {
            name: event.name,
            data: event.data,
            ..EventFields::default()
        };
        stripped
    }

    /// Records the facts in one event; returns whether it is the injected
    /// usage event to strip.
    fn learn_from_event(&mut self, name: &[u8], data: &[u8]) -> bool {
        if data == b"[DONE]" {
            return false;
        }
        let wants_id_or_model = self.id_model_attempts > 0
            && (self.facts.provider_request_id.is_none() || self.facts.served_model.is_none());
        if !wants_id_or_model && !has_usage_object(data, self.style) {
            return false;
        }
        if wants_id_or_model {
            self.id_model_attempts -= 1;
        }
        let Some(event) = parse_object(data) else {
            return false;
        };
        // Responses API lifecycle events and Anthropic's message_start wrap
        // the object that carries id, model and usage.
        let root: &WireObject = match (&event.response.0, &event.message.0) {
            (Some(inner), _) | (None, Some(inner)) => inner.as_ref(),
            (None, None) => &event,
        };
        if self.facts.provider_request_id.is_none() {
            self.facts.provider_request_id = root.request_id();
        }
        if self.facts.served_model.is_none() {
            self.facts.served_model = root.served_model();
        }
        let is_message_delta = event
            .kind
            .0
            .as_ref()
            .is_some_and(|k| k.0 == "message_delta")
            || name == b"message_delta";
        if self.style == ApiStyle::Anthropic && is_message_delta {
            // Output in message_delta is the final count; input and cache
            // reads come from message_start.
            if let Some(delta) = &event.usage.0 {
                match (&mut self.facts.usage, delta.output_tokens.0) {
                    (Some(usage), Some(output)) => usage.output = output,
                    (None, _) => self.facts.usage = delta.token_usage(),
                    (Some(_), None) => {}
                }
            }
            return false;
        }
        // Gemini repeats the running usage in every chunk; the last one counts.
        if let Some(usage) = root.token_usage() {
            self.facts.usage = Some(usage);
        }
        if let Some(tier) = root.service_tier() {
            self.facts.service_tier = Some(tier);
        }
        self.stripping && event.choices.0 == Some(ArrayLen(0)) && event.usage.0.is_some()
    }
}

/// The bytes one `push` forwards, in order. While they are one run of the
/// chunk they stay a slice of it, without copying.
#[derive(Debug, Default)]
struct Forward {
    slice: Option<std::ops::Range<usize>>,
    copied: Vec<u8>,
}

impl Forward {
    fn push_range(&mut self, chunk: &[u8], range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        match &mut self.slice {
            Some(slice) if self.copied.is_empty() && slice.end == range.start => {
                slice.end = range.end
            }
            None if self.copied.is_empty() => self.slice = Some(range),
            _ => {
                self.spill(chunk);
                self.copied.extend_from_slice(&chunk[range]);
            }
        }
    }

    fn push_bytes(&mut self, chunk: &[u8], bytes: &[u8]) {
        if !bytes.is_empty() {
            self.spill(chunk);
            self.copied.extend_from_slice(bytes);
        }
    }

    fn spill(&mut self, chunk: &[u8]) {
        if let Some(slice) = self.slice.take() {
            self.copied.extend_from_slice(&chunk[slice]);
        }
    }

    fn into_bytes(mut self, chunk: &Bytes) -> Bytes {
        if self.copied.is_empty() {
            return self
                .slice
                .map(|range| chunk.slice(range))
                .unwrap_or_default();
        }
        self.spill(chunk);
        Bytes::from(self.copied)
    }
}

/// Whether `data` holds `"usage"` (Gemini: `"usageMetadata"`) followed by
/// an object (not `null`, which every OpenAI chunk carries once usage is
/// requested). A quote inside JSON string content is escaped, so content
/// text cannot fake the key.
fn has_usage_object(data: &[u8], style: ApiStyle) -> bool {
    let key: &[u8] = match style {
        ApiStyle::Gemini => b"\"usageMetadata\"",
        ApiStyle::OpenAi | ApiStyle::Anthropic | ApiStyle::Bedrock => b"\"usage\"",
    };
    let mut from = 0;
    while let Some(found) = data
        .get(from..)
        .and_then(|rest| rest.windows(key.len()).position(|w| w == key))
    {
        let after = from + found + key.len();
        let mut rest = data[after..].iter().skip_while(|b| b.is_ascii_whitespace());
        if rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        from = after;
    }
    false
}

/// A JSON object body, or `None` for anything else (including arrays, which
/// serde would otherwise map onto struct fields by position).
fn parse_object(body: &[u8]) -> Option<WireObject> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// The fields the gateway reads from any provider object or stream event;
/// everything else is skipped unparsed.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireObject {
    #[serde(rename = "type")]
    kind: Lenient<FactText>,
    id: Lenient<FactText>,
    model: Lenient<FactText>,
    usage: Lenient<WireUsage>,
    choices: Lenient<ArrayLen>,
    /// Responses API stream events.
    response: Lenient<Box<WireObject>>,
    /// Anthropic `message_start`.
    message: Lenient<Box<WireObject>>,
    /// Anthropic `count_tokens`.
    input_tokens: Lenient<u64>,
    /// Bedrock `CountTokens` (a field of its own: an alias would refuse an
    /// object that carries both spellings).
    #[serde(rename = "inputTokens")]
    bedrock_input_tokens: Lenient<u64>,
    /// OpenAI chat and Responses.
    service_tier: Lenient<FactText>,
    /// Gemini: usage, served model and response id.
    #[serde(rename = "usageMetadata")]
    usage_metadata: Lenient<GeminiUsage>,
    #[serde(rename = "modelVersion")]
    model_version: Lenient<FactText>,
    #[serde(rename = "responseId")]
    response_id: Lenient<FactText>,
    /// Gemini `countTokens`.
    #[serde(rename = "totalTokens")]
    total_tokens: Lenient<u64>,
}

impl WireObject {
    fn token_usage(&self) -> Option<TokenUsage> {
        match (&self.usage.0, &self.usage_metadata.0) {
            (Some(usage), _) => usage.token_usage(),
            (None, Some(gemini)) => gemini.token_usage(),
            (None, None) => None,
        }
    }

    fn served_model(&self) -> Option<String> {
        let model = self.model.0.as_ref().or(self.model_version.0.as_ref())?;
        Some(model.0.clone())
    }

    fn request_id(&self) -> Option<String> {
        let id = self.id.0.as_ref().or(self.response_id.0.as_ref())?;
        Some(id.0.clone())
    }

    fn service_tier(&self) -> Option<String> {
        let tier = match (&self.service_tier.0, &self.usage.0) {
            (Some(tier), _) => tier,
            (None, Some(usage)) => usage.service_tier.0.as_ref()?,
            (None, None) => return None,
        };
        Some(tier.0.clone())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireUsage {
    /// OpenAI chat, completions, embeddings.
    prompt_tokens: Lenient<u64>,
    completion_tokens: Lenient<u64>,
    prompt_tokens_details: Lenient<WireTokenDetails>,
    /// OpenAI Responses and Anthropic.
    input_tokens: Lenient<u64>,
    output_tokens: Lenient<u64>,
    input_tokens_details: Lenient<WireTokenDetails>,
    cache_read_input_tokens: Lenient<u64>,
    /// Anthropic: input tokens written to the prompt cache, outside `input_tokens`.
    cache_creation_input_tokens: Lenient<u64>,
    /// Anthropic: those writes by cache lifetime.
    cache_creation: Lenient<WireCacheCreation>,
    /// OpenAI chat: `reasoning_tokens`.
    completion_tokens_details: Lenient<WireTokenDetails>,
    /// OpenAI Responses: `reasoning_tokens`.
    output_tokens_details: Lenient<WireTokenDetails>,
    /// Anthropic.
    service_tier: Lenient<FactText>,
    /// Bedrock Converse (camelCase; cache reads and writes apart from
    /// `inputTokens`, as Anthropic reports them).
    #[serde(rename = "inputTokens")]
    converse_input: Lenient<u64>,
    #[serde(rename = "outputTokens")]
    converse_output: Lenient<u64>,
    #[serde(rename = "cacheReadInputTokens")]
    converse_cache_read: Lenient<u64>,
    #[serde(rename = "cacheWriteInputTokens")]
    converse_cache_write: Lenient<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireTokenDetails {
    cached_tokens: Lenient<u64>,
    reasoning_tokens: Lenient<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireCacheCreation {
    ephemeral_5m_input_tokens: Lenient<u64>,
    ephemeral_1h_input_tokens: Lenient<u64>,
}

impl WireUsage {
    fn token_usage(&self) -> Option<TokenUsage> {
        let cached = |details: &Lenient<WireTokenDetails>| {
            details.0.as_ref().and_then(|d| d.cached_tokens.0)
        };
        let reasoning = |details: &Lenient<WireTokenDetails>| {
            details
                .0
                .as_ref()
                .and_then(|d| d.reasoning_tokens.0)
                .unwrap_or(0)
        };
        if self.prompt_tokens.0.is_some() || self.completion_tokens.0.is_some() {
            return Some(TokenUsage {
                input: self.prompt_tokens.0.unwrap_or(0),
                output: self.completion_tokens.0.unwrap_or(0),
                cached_input: cached(&self.prompt_tokens_details).unwrap_or(0),
                reasoning: reasoning(&self.completion_tokens_details),
                ..TokenUsage::default()
            });
        }
        if self.converse_input.0.is_some() || self.converse_output.0.is_some() {
            let written = self.converse_cache_write.0.unwrap_or(0);
            return Some(TokenUsage {
                input: self.converse_input.0.unwrap_or(0).saturating_add(written),
                output: self.converse_output.0.unwrap_or(0),
                cached_input: self.converse_cache_read.0.unwrap_or(0),
                // Converse does not say which cache; 5 minutes is the default.
                cache_write_5m: written,
                ..TokenUsage::default()
            });
        }
        if self.input_tokens.0.is_some() || self.output_tokens.0.is_some() {
            let written = self.cache_creation_input_tokens.0.unwrap_or(0);
            // Writes by lifetime when the provider breaks them down; else
            // all to the 5-minute cache, Anthropic's default.
            let (write_1h, write_5m) = match &self.cache_creation.0 {
                Some(c) => {
                    let hour = c.ephemeral_1h_input_tokens.0.unwrap_or(0).min(written);
                    let five = c.ephemeral_5m_input_tokens.0.unwrap_or(written - hour);
                    (hour, five.min(written - hour))
                }
                None => (0, written),
            };
            return Some(TokenUsage {
                input: self.input_tokens.0.unwrap_or(0).saturating_add(written),
                output: self.output_tokens.0.unwrap_or(0),
                cached_input: cached(&self.input_tokens_details)
                    .or(self.cache_read_input_tokens.0)
                    .unwrap_or(0),
                cache_write_5m: write_5m,
                cache_write_1h: write_1h,
                reasoning: reasoning(&self.output_tokens_details),
            });
        }
        None
    }
}

/// Gemini's `usageMetadata`. `promptTokenCount` includes cached content;
/// thoughts are billed as output but reported apart from
/// `candidatesTokenCount`; tool-use prompts are billed as input.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct GeminiUsage {
    prompt_token_count: Lenient<u64>,
    candidates_token_count: Lenient<u64>,
    cached_content_token_count: Lenient<u64>,
    thoughts_token_count: Lenient<u64>,
    tool_use_prompt_token_count: Lenient<u64>,
}

impl GeminiUsage {
    fn token_usage(&self) -> Option<TokenUsage> {
        let prompt = self.prompt_token_count.0?;
        let thoughts = self.thoughts_token_count.0.unwrap_or(0);
        Some(TokenUsage {
            input: prompt.saturating_add(self.tool_use_prompt_token_count.0.unwrap_or(0)),
            output: self
                .candidates_token_count
                .0
                .unwrap_or(0)
                .saturating_add(thoughts),
            cached_input: self.cached_content_token_count.0.unwrap_or(0),
            reasoning: thoughts,
            ..TokenUsage::default()
        })
    }
}

/// A short printable-ASCII string (model name, id, event type).
#[derive(Debug)]
struct FactText(String);

/// The length of a JSON array.
#[derive(Debug, PartialEq, Eq)]
struct ArrayLen(usize);

/// A field read only when its JSON value has the expected type; any other
/// value counts as absent instead of failing the whole parse.
#[derive(Debug)]
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

/// How a type is built from the JSON values it accepts; every other value
/// yields `None`.
trait FromLenientJson: Sized {
    fn from_json_str(_: &str) -> Option<Self> {
        None
    }
    fn from_json_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_json_array<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn from_json_object<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl FromLenientJson for FactText {
    fn from_json_str(value: &str) -> Option<Self> {
        let acceptable = !value.is_empty()
            && value.len() <= MAX_FACT_CHARS
            && value.bytes().all(|b| (b' '..=b'~').contains(&b));
        acceptable.then(|| Self(value.to_owned()))
    }
}

impl FromLenientJson for u64 {
    fn from_json_u64(value: u64) -> Option<Self> {
        Some(value)
    }
}

impl FromLenientJson for ArrayLen {
    fn from_json_array<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut len = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            len += 1;
        }
        Ok(Some(Self(len)))
    }
}

macro_rules! from_lenient_object {
    ($($object:ty => $wrap:expr),* $(,)?) => {$(
        impl FromLenientJson for $object {
            fn from_json_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                Deserialize::deserialize(de::value::MapAccessDeserializer::new(map)).map(|o| Some($wrap(o)))
            }
        }
    )*};
}

from_lenient_object! {
    WireUsage => std::convert::identity,
    WireTokenDetails => std::convert::identity,
    WireCacheCreation => std::convert::identity,
    GeminiUsage => std::convert::identity,
    Box<WireObject> => Box::<WireObject>::new,
}

impl<'de, T: FromLenientJson> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

struct LenientVisitor<T>(PhantomData<T>);

impl<'de, T: FromLenientJson> Visitor<'de> for LenientVisitor<T> {
    type Value = Lenient<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Lenient(
            u64::try_from(value).ok().and_then(T::from_json_u64),
        ))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Lenient(T::from_json_u64(value)))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Lenient(T::from_json_str(value)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::from_json_array(seq).map(Lenient)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::from_json_object(map).map(Lenient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CHAT_USAGE_EVENT: &str = "data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":4,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n";

    /// An OpenAI chat stream with `include_usage`, as the API sends it.
    fn chat_stream() -> String {
        let chunk = |choices: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[{choices}],\"usage\":null}}\n\n"
            )
        };
        let mut stream = String::new();
        stream += &chunk(
            r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#,
        );
        for piece in [
            "Hello",
            "!",
            " How",
            " can",
            " I",
            " assist",
            " you",
            " \\\"usage\\\":{ today",
            "?",
        ] {
            stream += &chunk(&format!(
                r#"{{"index":0,"delta":{{"content":"{piece}"}},"logprobs":null,"finish_reason":null}}"#
            ));
        }
        stream += &chunk(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#);
        stream += CHAT_USAGE_EVENT;
        stream += "data: [DONE]\n\n";
        stream
    }

    fn chat_facts() -> ResponseFacts {
        ResponseFacts {
            service_tier: None,
            usage: Some(TokenUsage {
                input: 19,
                output: 10,
                cached_input: 4,
                ..TokenUsage::default()
            }),
            served_model: Some("gpt-4o-mini-2024-07-18".into()),
            provider_request_id: Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG".into()),
        }
    }

    /// An OpenAI Responses API stream.
    fn responses_stream() -> String {
        let response = |status: &str, output: &str, usage: &str| {
            format!(
                r#"{{"id":"resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b","object":"response","created_at":1741476542,"status":"{status}","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[{output}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{{"effort":null,"summary":null}},"store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}}}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}}}}"#
            )
        };
        let item = r#"{"id":"msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I help?","annotations":[]}]}"#;
        let mut stream = String::new();
        let mut event =
            |name: &str, data: String| stream += &format!("event: {name}\ndata: {data}\n\n");
        event(
            "response.created",
            format!(
                r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
                response("in_progress", "", "null")
            ),
        );
        event(
            "response.in_progress",
            format!(
                r#"{{"type":"response.in_progress","sequence_number":1,"response":{}}}"#,
                response("in_progress", "", "null")
            ),
        );
        event("response.output_item.added", r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b","type":"message","status":"in_progress","role":"assistant","content":[]}}"#.into());
        for (n, delta) in ["Hi", " there!", " How can", " I help?"].iter().enumerate() {
            event(
                "response.output_text.delta",
                format!(
                    r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_67cc","output_index":0,"content_index":0,"delta":"{delta}"}}"#,
                    n + 3
                ),
            );
        }
        event(
            "response.output_item.done",
            format!(
                r#"{{"type":"response.output_item.done","sequence_number":7,"output_index":0,"item":{item}}}"#
            ),
        );
        event(
            "response.completed",
            format!(
                r#"{{"type":"response.completed","sequence_number":8,"response":{}}}"#,
                response(
                    "completed",
                    item,
                    r#"{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}"#
                )
            ),
        );
        stream
    }

    fn responses_facts() -> ResponseFacts {
        ResponseFacts {
            service_tier: None,
            usage: Some(TokenUsage {
                input: 37,
                output: 11,
                cached_input: 0,
                ..TokenUsage::default()
            }),
            served_model: Some("gpt-4.1-2025-04-14".into()),
            provider_request_id: Some(
                "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b".into(),
            ),
        }
    }

    /// An Anthropic messages stream.
    fn anthropic_stream() -> String {
        let mut stream = String::new();
        let mut event =
            |name: &str, data: &str| stream += &format!("event: {name}\ndata: {data}\n\n");
        event(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":1}}}"#,
        );
        event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        );
        event("ping", r#"{"type": "ping"}"#);
        for text in [
            "Hello",
            "! \"usage\": {\"output_tokens\": 99}",
            " How can I help?",
        ] {
            let text = serde_json::to_string(text).unwrap();
            event(
                "content_block_delta",
                &format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{text}}}}}"#
                ),
            );
        }
        event(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        );
        event(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        );
        event("message_stop", r#"{"type":"message_stop"}"#);
        stream
    }

    fn anthropic_facts() -> ResponseFacts {
        ResponseFacts {
            service_tier: None,
            usage: Some(TokenUsage {
                input: 25,
                output: 15,
                cached_input: 10,
                ..TokenUsage::default()
            }),
            served_model: Some("claude-sonnet-4-5-20250929".into()),
            provider_request_id: Some("msg_01XFDUDYJgAACzvnptvVoYEL".into()),
        }
    }

    fn with_line_ends(stream: &str, line_end: &str) -> String {
        stream.replace('\n', line_end)
    }

    /// Every fixture: (style, stream, the usage event to strip if any, facts).
    fn fixtures() -> Vec<(
        &'static str,
        ApiStyle,
        String,
        Option<String>,
        ResponseFacts,
    )> {
        let mut all = Vec::new();
        for (label, line_end) in [("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")] {
            all.push((
                label,
                ApiStyle::OpenAi,
                with_line_ends(&chat_stream(), line_end),
                Some(with_line_ends(CHAT_USAGE_EVENT, line_end)),
                chat_facts(),
            ));
            all.push((
                label,
                ApiStyle::OpenAi,
                with_line_ends(&responses_stream(), line_end),
                None,
                responses_facts(),
            ));
            all.push((
                label,
                ApiStyle::Anthropic,
                with_line_ends(&anthropic_stream(), line_end),
                None,
                anthropic_facts(),
            ));
        }
        all
    }

    /// Feeds `stream` cut at `cuts` (sorted offsets); returns what was
    /// forwarded, per push and finish, and the facts.
    fn run(
        style: ApiStyle,
        strip: bool,
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<u8>, ResponseFacts) {
        let mut tap = SseTap::new(style, strip);
        let mut forwarded = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            let chunk = Bytes::copy_from_slice(&stream[start..cut]);
            let out = tap.push(chunk.clone());
            if !strip || style == ApiStyle::Anthropic {
                // Zero copy: the very same buffer comes back.
                assert_eq!(out.as_ptr(), chunk.as_ptr());
                assert_eq!(out.len(), chunk.len());
            }
            forwarded.extend_from_slice(&out);
            start = cut;
        }
        forwarded.extend_from_slice(&tap.finish());
        (forwarded, tap.facts().clone())
    }

    fn expected_forward(stream: &str, strip: bool, usage_event: &Option<String>) -> String {
        match (strip, usage_event) {
            (true, Some(event)) => {
                assert_eq!(stream.matches(event.as_str()).count(), 1);
                stream.replacen(event.as_str(), "", 1)
            }
            _ => stream.to_string(),
        }
    }

    #[test]
    fn whole_streams_give_facts() {
        for (label, style, stream, _, facts) in fixtures() {
            for strip in [false, true] {
                let (_, got) = run(style, strip, stream.as_bytes(), &[]);
                assert_eq!(got, facts, "{label} strip={strip}");
            }
        }
    }

    #[test]
    fn every_single_split_forwards_the_same_and_learns_the_same() {
        for (label, style, stream, usage_event, facts) in fixtures() {
            for strip in [false, true] {
                let expected = expected_forward(&stream, strip, &usage_event);
                for cut in 0..=stream.len() {
                    let (forwarded, got) = run(style, strip, stream.as_bytes(), &[cut]);
                    assert_eq!(
                        String::from_utf8(forwarded).unwrap(),
                        expected,
                        "{label} strip={strip} cut={cut}"
                    );
                    assert_eq!(got, facts, "{label} strip={strip} cut={cut}");
                }
            }
        }
    }

    #[test]
    fn byte_by_byte_feeding() {
        for (label, style, stream, usage_event, facts) in fixtures() {
            for strip in [false, true] {
                let cuts: Vec<usize> = (1..stream.len()).collect();
                let (forwarded, got) = run(style, strip, stream.as_bytes(), &cuts);
                assert_eq!(
                    String::from_utf8(forwarded).unwrap(),
                    expected_forward(&stream, strip, &usage_event),
                    "{label}"
                );
                assert_eq!(got, facts, "{label}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_split_forwards_the_same_and_learns_the_same(
            which in 0usize..9,
            strip in any::<bool>(),
            raw_cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
        ) {
            let (label, style, stream, usage_event, facts) = fixtures().swap_remove(which);
            let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let (forwarded, got) = run(style, strip, stream.as_bytes(), &cuts);
            prop_assert_eq!(String::from_utf8(forwarded).unwrap(), expected_forward(&stream, strip, &usage_event), "{}", label);
            prop_assert_eq!(got, facts, "{}", label);
        }
    }

    #[test]
    fn stripping_forwards_complete_events_at_once() {
        let stream = chat_stream();
        let first_event_end = stream.find("\n\n").unwrap() + 2;
        let mut tap = SseTap::new(ApiStyle::OpenAi, true);
        // The first event plus half of the second: only the first goes out.
        let chunk = Bytes::copy_from_slice(&stream.as_bytes()[..first_event_end + 10]);
        let out = tap.push(chunk.clone());
        assert_eq!(&out[..], &stream.as_bytes()[..first_event_end]);
        assert_eq!(
            out.as_ptr(),
            chunk.as_ptr(),
            "a whole-event prefix is a slice, not a copy"
        );
        let rest = Bytes::copy_from_slice(&stream.as_bytes()[first_event_end + 10..]);
        let out = tap.push(rest);
        assert!(out.starts_with(&stream.as_bytes()[first_event_end..first_event_end + 10]));
        assert!(!String::from_utf8_lossy(&out).contains("\"choices\":[]"));
        assert!(out.ends_with(b"data: [DONE]\n\n"));
        assert!(tap.finish().is_empty());
    }

    #[test]
    fn unterminated_final_event_is_forwarded_or_stripped_at_finish() {
        let mut tap = SseTap::new(ApiStyle::OpenAi, true);
        assert!(tap.push(Bytes::from_static(b"data: [DONE]")).is_empty());
        assert_eq!(&tap.finish()[..], b"data: [DONE]");

        let usage_only = CHAT_USAGE_EVENT.trim_end();
        let mut tap = SseTap::new(ApiStyle::OpenAi, true);
        assert!(
            tap.push(Bytes::copy_from_slice(usage_only.as_bytes()))
                .is_empty()
        );
        assert!(tap.finish().is_empty());
        assert_eq!(tap.facts().usage, chat_facts().usage);

        let mut tap = SseTap::new(ApiStyle::OpenAi, false);
        tap.push(Bytes::copy_from_slice(usage_only.as_bytes()));
        assert!(tap.finish().is_empty());
        assert_eq!(tap.facts().usage, chat_facts().usage);
    }

    #[test]
    fn stream_without_usage_has_no_usage() {
        let stream = chat_stream()
            .replace(CHAT_USAGE_EVENT, "")
            .replace(",\"usage\":null", "");
        for strip in [false, true] {
            let (forwarded, facts) = run(ApiStyle::OpenAi, strip, stream.as_bytes(), &[]);
            assert_eq!(forwarded, stream.as_bytes());
            assert_eq!(facts.usage, None);
            assert_eq!(
                facts.served_model.as_deref(),
                Some("gpt-4o-mini-2024-07-18")
            );
        }
    }

    #[test]
    fn only_the_usage_only_chunk_is_stripped() {
        // A usage object next to non-empty choices is not the injected chunk.
        let event = "data: {\"id\":\"c\",\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        let (forwarded, facts) = run(ApiStyle::OpenAi, true, event.as_bytes(), &[]);
        assert_eq!(forwarded, event.as_bytes());
        assert_eq!(
            facts.usage,
            Some(TokenUsage {
                input: 1,
                output: 2,
                cached_input: 0,
                ..TokenUsage::default()
            })
        );
        // Nor is a usage-only chunk when stripping was not asked for.
        let (forwarded, _) = run(ApiStyle::OpenAi, false, CHAT_USAGE_EVENT.as_bytes(), &[]);
        assert_eq!(forwarded, CHAT_USAGE_EVENT.as_bytes());
        // Anthropic streams are never stripped.
        let stream = anthropic_stream();
        let (forwarded, _) = run(ApiStyle::Anthropic, true, stream.as_bytes(), &[7]);
        assert_eq!(forwarded, stream.as_bytes());
    }

    #[test]
    fn malformed_data_does_not_panic_and_yields_no_usage() {
        // A usage-only chunk is stripped when asked for, even when its counts
        // are unreadable: the client did not ask for it either way.
        let unreadable_usage_only = [
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"ten\"}}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-3,\"completion_tokens\":1.5}}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":123456789012345678901234567890}}\n\n",
        ];
        for text in unreadable_usage_only {
            for strip in [false, true] {
                let (forwarded, facts) = run(ApiStyle::OpenAi, strip, text.as_bytes(), &[3]);
                assert_eq!(forwarded.is_empty(), strip, "{text:?}");
                assert_eq!(facts.usage, None, "{text:?}");
            }
        }
        let bad = [
            "data: {\"id\":\"x\",\"usage\":{\n\n",
            "data: [{\"usage\":{\"prompt_tokens\":1}}]\n\n",
            "data: {\"usage\":{\"prompt_tokens\":1},\"usage\":{\"prompt_tokens\":2}}\n\n",
            "data: \"usage\": {\n\n",
            "data: {\"usage\":[1,2],\"choices\":{}}\n\n",
            "data: {\"type\":\"message_start\",\"message\":[\"usage\",{}]}\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":null}}\n\n",
            "data: \u{0}\u{1}{{{{\n\n",
            "data:\n\n",
            "\n\n\n",
            ": comment only\n\n",
            "event: message_delta\n\n",
        ];
        for text in bad {
            for style in [ApiStyle::OpenAi, ApiStyle::Anthropic] {
                for strip in [false, true] {
                    let (forwarded, facts) = run(style, strip, text.as_bytes(), &[3]);
                    assert_eq!(forwarded, text.as_bytes(), "{text:?}");
                    assert_eq!(facts.usage, None, "{text:?}");
                }
            }
            let facts = facts_from_json(
                Endpoint::ChatCompletions,
                text.trim_start_matches("data: ").as_bytes(),
            );
            assert_eq!(facts.usage, None, "{text:?}");
        }
    }

    #[test]
    fn wrong_typed_fields_are_absent_not_fatal() {
        let event = "data: {\"id\":42,\"model\":{\"name\":\"x\"},\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":true,\"prompt_tokens_details\":null}}\n\n";
        let (forwarded, facts) = run(ApiStyle::OpenAi, true, event.as_bytes(), &[]);
        assert!(forwarded.is_empty());
        assert_eq!(
            facts,
            ResponseFacts {
                service_tier: None,
                usage: Some(TokenUsage {
                    input: 7,
                    output: 0,
                    cached_input: 0,
                    ..TokenUsage::default()
                }),
                served_model: None,
                provider_request_id: None,
            }
        );
    }

    #[test]
    fn kept_strings_are_short_printable_ascii() {
        for (model, kept) in [
            ("gpt-4o", true),
            ("", false),
            ("mödel", false),
            ("tab\there", false),
            ("line\nbreak", false),
            (&"m".repeat(256), true),
            (&"m".repeat(257), false),
        ] {
            let body = serde_json::json!({"id": model, "model": model}).to_string();
            let facts = facts_from_json(Endpoint::ChatCompletions, body.as_bytes());
            assert_eq!(facts.served_model.is_some(), kept, "{model:?}");
            assert_eq!(facts.provider_request_id.is_some(), kept, "{model:?}");
        }
    }

    #[test]
    fn id_and_model_come_from_the_first_events_only() {
        // Three events without id or model, then one with: too late.
        let mut stream = "data: {\"choices\":[]}\n\n".repeat(3);
        stream += "data: {\"id\":\"late\",\"model\":\"late\",\"choices\":[]}\n\n";
        let (_, facts) = run(ApiStyle::OpenAi, false, stream.as_bytes(), &[]);
        assert_eq!(facts.served_model, None);
        // The first value wins over later ones.
        let stream = "data: {\"id\":\"a\",\"model\":\"m1\"}\n\ndata: {\"id\":\"b\",\"model\":\"m2\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let (_, facts) = run(ApiStyle::OpenAi, false, stream.as_bytes(), &[]);
        assert_eq!(facts.served_model.as_deref(), Some("m1"));
        assert_eq!(facts.provider_request_id.as_deref(), Some("a"));
    }

    #[test]
    fn chunks_are_events_with_data_counted_as_they_complete() {
        let mut tap = SseTap::new(ApiStyle::OpenAi, false);
        // A comment and an empty event are no chunks; an event split across
        // reads counts once, when it completes.
        tap.push(Bytes::from_static(b": keep-alive\n\n\n"));
        assert_eq!(tap.chunks(), 0);
        tap.push(Bytes::from_static(
            b"data: {\"choices\":[]}\n\ndata: {\"cho",
        ));
        assert_eq!(tap.chunks(), 1);
        tap.push(Bytes::from_static(
            b"ices\":[]}\r\n\r\nevent: ping\ndata: {}\n\n",
        ));
        assert_eq!(tap.chunks(), 2, "a ping is no chunk");
        // The closing `[DONE]` is no chunk; an unterminated last event is.
        tap.push(Bytes::from_static(b"data: [DONE]\n\ndata: {\"x\":1}"));
        assert_eq!(tap.chunks(), 2);
        tap.finish();
        assert_eq!(tap.chunks(), 3);
        // The usage event the gateway asked for and strips is no chunk either.
        let mut stripping = SseTap::new(ApiStyle::OpenAi, true);
        stripping.push(Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
        ));
        assert_eq!(stripping.chunks(), 1);
    }

    #[test]
    fn usage_key_detection() {
        assert!(has_usage_object(br#"{"usage":{"a":1}}"#, ApiStyle::OpenAi));
        assert!(has_usage_object(
            br#"{"usage" :  {"a":1}}"#,
            ApiStyle::OpenAi
        ));
        assert!(has_usage_object(
            br#"{"usage":null,"x":{"usage":{}}}"#,
            ApiStyle::OpenAi
        ));
        assert!(!has_usage_object(br#"{"usage":null}"#, ApiStyle::OpenAi));
        assert!(!has_usage_object(
            br#"{"text":"\"usage\":{"}"#,
            ApiStyle::OpenAi
        ));
        assert!(!has_usage_object(br#"{"usage""#, ApiStyle::OpenAi));
        assert!(!has_usage_object(b"", ApiStyle::OpenAi));
        assert!(has_usage_object(
            br#"{"usageMetadata": {"promptTokenCount":1}}"#,
            ApiStyle::Gemini
        ));
        assert!(!has_usage_object(br#"{"usage":{"a":1}}"#, ApiStyle::Gemini));
        assert!(!has_usage_object(
            br#"{"usageMetadata":{"a":1}}"#,
            ApiStyle::OpenAi
        ));
    }

    fn gemini_stream() -> String {
        let chunk = |text: &str, usage: &str, finish: &str| {
            format!(
                "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"{text}\"}}],\"role\": \"model\"}}{finish}}}],\"usageMetadata\": {usage},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"resp-gem-1\"}}\r\n\r\n"
            )
        };
        [
            chunk("Hello", r#"{"promptTokenCount": 12, "totalTokenCount": 12}"#, ""),
            chunk("\\\"usageMetadata\\\": {", r#"{"promptTokenCount": 12, "totalTokenCount": 12}"#, ""),
            chunk(
                " world",
                r#"{"promptTokenCount": 12, "candidatesTokenCount": 5, "cachedContentTokenCount": 8, "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 2, "totalTokenCount": 49}"#,
                r#","finishReason": "STOP""#,
            ),
        ]
        .concat()
    }

    #[test]
    fn gemini_usage_from_streams_and_bodies() {
        let expected = TokenUsage {
            input: 14,
            output: 35,
            cached_input: 8,
            reasoning: 30,
            ..TokenUsage::default()
        };
        let stream = gemini_stream();
        for cuts in [vec![], vec![1, 40, 200, 333], (1..stream.len()).collect()] {
            let (forwarded, facts) = run(ApiStyle::Gemini, false, stream.as_bytes(), &cuts);
            assert_eq!(forwarded, stream.as_bytes(), "the stream passes unchanged");
            assert_eq!(facts.usage, Some(expected));
            assert_eq!(facts.served_model.as_deref(), Some("gemini-2.5-flash"));
            assert_eq!(facts.provider_request_id.as_deref(), Some("resp-gem-1"));
        }
        let body = br#"{"candidates":[],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4},"modelVersion":"gemini-2.0-flash","responseId":"r-1"}"#;
        let facts = facts_from_json(Endpoint::GenerateContent, body);
        assert_eq!(
            facts.usage,
            Some(TokenUsage {
                input: 3,
                output: 4,
                ..TokenUsage::default()
            })
        );
        assert_eq!(facts.served_model.as_deref(), Some("gemini-2.0-flash"));
        let counted = facts_from_json(Endpoint::GeminiCountTokens, br#"{"totalTokens": 31}"#);
        assert_eq!(counted.usage.map(|u| u.input), Some(31));
        let counted = facts_from_json(Endpoint::BedrockCountTokens, br#"{"inputTokens": 42}"#);
        assert_eq!(counted.usage.map(|u| u.input), Some(42));
        // Both spellings in one object still parse (no duplicate field).
        let both = br#"{"input_tokens": 5, "inputTokens": 6, "id": "msg_1"}"#;
        let facts = facts_from_json(Endpoint::CountTokens, both);
        assert_eq!(facts.usage.map(|u| u.input), Some(5));
        assert_eq!(facts.provider_request_id.as_deref(), Some("msg_1"));
        // Usage without a prompt count, or of the wrong type, is no usage.
        for odd in [
            r#"{"usageMetadata":{"candidatesTokenCount":4}}"#,
            r#"{"usageMetadata":{"promptTokenCount":"3"}}"#,
            r#"{"usageMetadata":7}"#,
        ] {
            assert_eq!(
                facts_from_json(Endpoint::GenerateContent, odd.as_bytes()).usage,
                None,
                "{odd}"
            );
        }
    }

    #[test]
    fn multi_line_data_is_joined() {
        let event = "event: message_start\ndata: {\"type\":\"message_start\",\ndata: \"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n";
        let (_, facts) = run(ApiStyle::Anthropic, false, event.as_bytes(), &[]);
        assert_eq!(
            facts.usage,
            Some(TokenUsage {
                input: 3,
                output: 1,
                cached_input: 0,
                ..TokenUsage::default()
            })
        );
        assert_eq!(facts.provider_request_id.as_deref(), Some("msg_1"));
    }

    #[test]
    fn cache_writes_reasoning_and_the_service_tier_are_read() {
        // Anthropic: writes by lifetime inside cache_creation, tier in usage.
        let claude = br#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":40,"cache_creation_input_tokens":300,"cache_read_input_tokens":1000,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200},"output_tokens":7,"service_tier":"priority"}}"#;
        let facts = facts_from_json(Endpoint::Messages, claude);
        assert_eq!(
            facts.usage,
            Some(TokenUsage {
                input: 340,
                output: 7,
                cached_input: 1_000,
                cache_write_5m: 100,
                cache_write_1h: 200,
                reasoning: 0,
            })
        );
        assert_eq!(facts.service_tier.as_deref(), Some("priority"));
        // Without the breakdown every write is a 5-minute one.
        let older =
            br#"{"usage":{"input_tokens":4,"cache_creation_input_tokens":30,"output_tokens":1}}"#;
        let usage = facts_from_json(Endpoint::Messages, older).usage.unwrap();
        assert_eq!((usage.cache_write_5m, usage.cache_write_1h), (30, 0));
        // OpenAI chat: reasoning inside completion_tokens_details, tier on top.
        let chat = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-5","service_tier":"flex","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":900,"prompt_tokens_details":{"cached_tokens":10},"completion_tokens_details":{"reasoning_tokens":640}}}"#;
        let facts = facts_from_json(Endpoint::ChatCompletions, chat);
        assert_eq!(facts.usage.unwrap().reasoning, 640);
        assert_eq!(facts.service_tier.as_deref(), Some("flex"));
        // Responses: output_tokens_details.
        let responses = br#"{"id":"resp_1","object":"response","model":"o4-mini","service_tier":"default","usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":80,"output_tokens_details":{"reasoning_tokens":64}}}"#;
        let facts = facts_from_json(Endpoint::Responses, responses);
        assert_eq!(facts.usage.unwrap().reasoning, 64);
        assert_eq!(facts.service_tier.as_deref(), Some("default"));
        // A tier that is no short printable text is no fact.
        let odd =
            br#"{"service_tier":{"name":"x"},"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        assert_eq!(
            facts_from_json(Endpoint::ChatCompletions, odd).service_tier,
            None
        );
    }

    #[test]
    fn a_streamed_service_tier_is_read_from_the_usage_chunk() {
        let stream = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-5\",\"service_tier\":\"priority\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\ndata: [DONE]\n\n";
        let (_, facts) = run(ApiStyle::OpenAi, false, stream.as_bytes(), &[]);
        assert_eq!(facts.service_tier.as_deref(), Some("priority"));
        assert_eq!(facts.usage.map(|u| u.reasoning), Some(2));
    }

    #[test]
    fn anthropic_delta_without_start_still_counts() {
        let stream = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":5,\"output_tokens\":9}}\n\n";
        let (_, facts) = run(ApiStyle::Anthropic, false, stream.as_bytes(), &[]);
        assert_eq!(
            facts.usage,
            Some(TokenUsage {
                input: 5,
                output: 9,
                cached_input: 0,
                ..TokenUsage::default()
            })
        );
    }

    #[test]
    fn oversized_event_stops_stripping_and_is_forwarded_raw() {
        let huge = format!(
            "data: {{\"id\":\"c\",\"model\":\"m\",\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(MAX_EVENT_BYTES + 10)
        );
        let stream = format!("{huge}{CHAT_USAGE_EVENT}data: [DONE]\n\n");
        let expected_usage = chat_facts().usage;
        for cuts in [
            vec![],
            vec![100],
            vec![100, 600_000, 1_048_600, huge.len() + 5],
        ] {
            let (forwarded, facts) = run(ApiStyle::OpenAi, true, stream.as_bytes(), &cuts);
            assert!(
                forwarded == stream.as_bytes(),
                "everything forwarded raw, cuts {cuts:?}"
            );
            assert_eq!(facts.usage, expected_usage, "later events still parsed");
            assert_eq!(
                facts.served_model,
                Some("gpt-4o-mini-2024-07-18".into()),
                "the huge event is not parsed"
            );
        }
        let (forwarded, facts) = run(ApiStyle::OpenAi, false, stream.as_bytes(), &[100, 600_000]);
        assert!(forwarded == stream.as_bytes());
        assert_eq!(facts.usage, expected_usage);
    }

    #[test]
    fn held_back_bytes_are_bounded() {
        let mut tap = SseTap::new(ApiStyle::OpenAi, true);
        let piece = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut forwarded = tap.push(Bytes::from_static(b"data: ")).len();
        for _ in 0..40 {
            forwarded += tap.push(piece.clone()).len();
            assert!(tap.held.len() <= MAX_EVENT_BYTES);
            assert!(tap.partial_line.len() <= MAX_EVENT_BYTES);
        }
        forwarded += tap.finish().len();
        assert_eq!(forwarded, 6 + 40 * 64 * 1024);
    }

    #[test]
    fn json_bodies_give_facts() {
        let cases: [(Endpoint, &str, ResponseFacts); 6] = [
            (
                Endpoint::ChatCompletions,
                r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"secret text"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3}}}"#,
                ResponseFacts {
                    service_tier: None,
                    usage: Some(TokenUsage {
                        input: 19,
                        output: 10,
                        cached_input: 3,
                        ..TokenUsage::default()
                    }),
                    served_model: Some("gpt-4o-2024-08-06".into()),
                    provider_request_id: Some("chatcmpl-1".into()),
                },
            ),
            (
                Endpoint::Completions,
                r#"{"id":"cmpl-1","object":"text_completion","model":"gpt-3.5-turbo-instruct","choices":[{"text":"x","index":0}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
                ResponseFacts {
                    service_tier: None,
                    usage: Some(TokenUsage {
                        input: 5,
                        output: 7,
                        cached_input: 0,
                        ..TokenUsage::default()
                    }),
                    served_model: Some("gpt-3.5-turbo-instruct".into()),
                    provider_request_id: Some("cmpl-1".into()),
                },
            ),
            (
                Endpoint::Embeddings,
                r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
                ResponseFacts {
                    service_tier: None,
                    usage: Some(TokenUsage {
                        input: 8,
                        output: 0,
                        cached_input: 0,
                        ..TokenUsage::default()
                    }),
                    served_model: Some("text-embedding-3-small".into()),
                    provider_request_id: None,
                },
            ),
            (
                Endpoint::Responses,
                r#"{"id":"resp_1","object":"response","status":"completed","model":"gpt-4.1","output":[],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":6},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#,
                ResponseFacts {
                    service_tier: None,
                    usage: Some(TokenUsage {
                        input: 36,
                        output: 87,
                        cached_input: 6,
                        ..TokenUsage::default()
                    }),
                    served_model: Some("gpt-4.1".into()),
                    provider_request_id: Some("resp_1".into()),
                },
            ),
            (
                Endpoint::Messages,
                r#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"output_tokens":503,"cache_creation_input_tokens":0,"cache_read_input_tokens":1800}}"#,
                ResponseFacts {
                    service_tier: None,
                    usage: Some(TokenUsage {
                        input: 2095,
                        output: 503,
                        cached_input: 1800,
                        ..TokenUsage::default()
                    }),
                    served_model: Some("claude-sonnet-4-5".into()),
                    provider_request_id: Some("msg_013Zva2CMHLNnXjNJJKqJ2EF".into()),
                },
            ),
            (
                Endpoint::CountTokens,
                r#"{"input_tokens":2095}"#,
                ResponseFacts {
                    service_tier: None,
                    usage: Some(TokenUsage {
                        input: 2095,
                        output: 0,
                        cached_input: 0,
                        ..TokenUsage::default()
                    }),
                    served_model: None,
                    provider_request_id: None,
                },
            ),
        ];
        for (endpoint, body, expected) in cases {
            assert_eq!(
                facts_from_json(endpoint, body.as_bytes()),
                expected,
                "{endpoint:?}"
            );
        }
    }

    #[test]
    fn error_and_empty_bodies_give_no_facts() {
        for body in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"error":{"message":"x","type":"server_error"}}"#,
            "not json",
        ] {
            assert_eq!(
                facts_from_json(Endpoint::ChatCompletions, body.as_bytes()),
                ResponseFacts::default(),
                "{body}"
            );
        }
    }
}
