//! The dry-run provider: answers every model endpoint offline, in the exact
//! wire shapes of the OpenAI and Anthropic APIs (so the official SDKs accept
//! it), and the input-token estimate the gateway also reserves quota with.
//!
//! Answers are deterministic: ids derive from a SHA-256 of the endpoint, the
//! model and the canonical request, timestamps are 0, and the text is a fixed,
//! clearly synthetic sentence. The same request always gives the same bytes.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::Endpoint;
use crate::api_error::{ErrorKind, error_body, status};

/// The whole synthetic answer; one "token" per word.
pub const ANSWER: &str = "This is a dry-run response from Tollgate; no provider was called.";

/// Embedding size unless the request asks for `dimensions`.
const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;
/// The largest `dimensions` honoured; real models stop at 3072.
const MAX_EMBEDDING_DIMENSIONS: usize = 4096;

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";
const AMAZON_EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// A dry-run answer, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: DryRunBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRunBody {
    Json(Bytes),
    /// Each a complete SSE event, including its blank line.
    Events(Vec<Bytes>),
}

/// The answer to `request` on `endpoint` for `model`. `Models` is not served
/// here (404); a request that is not a JSON object gets a 400.
pub fn respond(endpoint: Endpoint, model: &str, request: &Value) -> DryRunResponse {
    if endpoint == Endpoint::Models {
        return refusal(
            endpoint,
            ErrorKind::NotFound,
            "the dry-run provider does not list models",
        );
    }
    if !request.is_object() {
        return refusal(
            endpoint,
            ErrorKind::InvalidRequest,
            "the request body must be a JSON object",
        );
    }
    let answer = Answer::new(endpoint, model, request);
    let streaming = endpoint.always_streams() || request.get("stream") == Some(&Value::Bool(true));
    match (endpoint, streaming) {
        (Endpoint::ChatCompletions, false) => json_response(&answer.chat_completion()),
        (Endpoint::ChatCompletions, true) => events_response(answer.chat_completion_events()),
        (Endpoint::Completions, false) => json_response(&answer.text_completion()),
        (Endpoint::Completions, true) => events_response(answer.text_completion_events()),
        (Endpoint::Responses, false) => json_response(&answer.response(ResponsePhase::Done)),
        (Endpoint::Responses, true) => events_response(answer.response_events()),
        (Endpoint::Messages, false) => json_response(&answer.message()),
        (Endpoint::Messages, true) => events_response(answer.message_events()),
        (Endpoint::Embeddings, _) => json_response(&answer.embeddings()),
        (Endpoint::CountTokens, _) => json_response(&json!({"input_tokens": answer.input_tokens})),
        (Endpoint::GenerateContent, _) => json_response(&answer.gemini_response()),
        (Endpoint::StreamGenerateContent, _) => events_response(answer.gemini_events()),
        (Endpoint::GeminiCountTokens, _) => {
            json_response(&json!({"totalTokens": answer.input_tokens}))
        }
        (Endpoint::EmbedContent | Endpoint::BatchEmbedContents, _) => {
            json_response(&answer.gemini_embeddings(endpoint))
        }
        (Endpoint::Converse, _) => json_response(&answer.converse()),
        (Endpoint::ConverseStream, _) => amazon_events_response(answer.converse_events()),
        (Endpoint::InvokeModel, _) => json_response(&answer.message()),
        (Endpoint::InvokeModelStream, _) => amazon_events_response(answer.invoke_events()),
        (Endpoint::BedrockCountTokens, _) => {
            json_response(&json!({"inputTokens": answer.input_tokens}))
        }
        (Endpoint::Models, _) => refusal(
            endpoint,
            ErrorKind::NotFound,
            "the dry-run provider does not list models",
        ),
    }
}

/// A deterministic estimate of the request's input tokens: the UTF-8 bytes
/// of its prompt text divided by four, rounded up, at least 1 (0 for
/// `Models`). Token-id arrays count one token per id. Roles, tool schemas and
/// images are not counted.
pub fn estimate_input_tokens(endpoint: Endpoint, request: &Value) -> u64 {
    let fields: &[&str] = match endpoint {
        Endpoint::ChatCompletions => &["messages"],
        Endpoint::Completions => &["prompt", "suffix"],
        Endpoint::Embeddings => &["input"],
        Endpoint::Responses => &["instructions", "input"],
        Endpoint::Messages | Endpoint::CountTokens => &["system", "messages"],
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent => {
            &["systemInstruction", "contents"]
        }
        // A count names its contents, or a whole generate request.
        Endpoint::GeminiCountTokens => &["contents", "generateContentRequest"],
        Endpoint::EmbedContent => &["content"],
        Endpoint::Converse
        | Endpoint::ConverseStream
        | Endpoint::InvokeModel
        | Endpoint::InvokeModelStream => &["system", "messages"],
        Endpoint::BatchEmbedContents => &["requests"],
        // A count of a Converse input counts as that Converse would.
        Endpoint::BedrockCountTokens => {
            let input = request.pointer("/input/converse").unwrap_or(&Value::Null);
            return estimate_input_tokens(Endpoint::Converse, input);
        }
        Endpoint::Models => return 0,
    };
    let bytes: u64 = fields
        .iter()
        .filter_map(|f| request.get(f))
        .map(|value| match value.get("contents") {
            // `generateContentRequest`: its instruction and contents.
            Some(contents) => {
                text_bytes(contents) + value.get("systemInstruction").map_or(0, text_bytes)
            }
            None => text_bytes(value),
        })
        .sum();
    bytes.div_ceil(4).max(1)
}

/// Bytes of prompt text in `value`: strings, and within objects only the
/// fields that hold text (`content`, `text`, Gemini's `parts`, ...), never
/// `role` or `type`.
fn text_bytes(value: &Value) -> u64 {
    const TEXT_FIELDS: [&str; 6] = ["content", "text", "input", "output", "arguments", "parts"];
    match value {
        Value::String(text) => text.len() as u64,
        // A token id, four bytes' worth.
        Value::Number(_) => 4,
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(fields) => TEXT_FIELDS
            .iter()
            .filter_map(|f| fields.get(*f))
            .map(text_bytes)
            .sum(),
        Value::Null | Value::Bool(_) => 0,
    }
}

fn refusal(endpoint: Endpoint, kind: ErrorKind, message: &str) -> DryRunResponse {
    DryRunResponse {
        status: status(kind),
        content_type: JSON,
        body: DryRunBody::Json(error_body(endpoint.style(), kind, message)),
    }
}

fn json_response(body: &Value) -> DryRunResponse {
    DryRunResponse {
        status: 200,
        content_type: JSON,
        body: DryRunBody::Json(Bytes::from(body.to_string())),
    }
}

/// Event-stream messages, each a complete frame.
fn amazon_events_response(frames: Vec<Vec<u8>>) -> DryRunResponse {
    DryRunResponse {
        status: 200,
        content_type: AMAZON_EVENT_STREAM,
        body: DryRunBody::Events(frames.into_iter().map(Bytes::from).collect()),
    }
}

fn events_response(events: Vec<Bytes>) -> DryRunResponse {
    DryRunResponse {
        status: 200,
        content_type: EVENT_STREAM,
        body: DryRunBody::Events(events),
    }
}

fn data_event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Everything one answer is built from.
struct Answer<'a> {
    model: &'a str,
    request: &'a Value,
    /// Hex SHA-256 of the endpoint, model and canonical request.
    digest: String,
    input_tokens: u64,
    /// The answer's words, cut to the request's output-token cap.
    pieces: Vec<&'static str>,
    truncated: bool,
    include_usage: bool,
}

impl<'a> Answer<'a> {
    fn new(endpoint: Endpoint, model: &'a str, request: &'a Value) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(endpoint.name().as_bytes());
        hasher.update([0]);
        hasher.update(model.as_bytes());
        hasher.update([0]);
        hash_canonical(request, &mut hasher);
        let all = answer_pieces();
        let nested_caps = [
            request.pointer("/generationConfig/maxOutputTokens"),
            request.pointer("/inferenceConfig/maxTokens"),
        ];
        let cap = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .filter_map(|f| request.get(f))
            .chain(nested_caps.into_iter().flatten())
            .filter_map(Value::as_u64)
            .min()
            .map_or(usize::MAX, |cap| usize::try_from(cap).unwrap_or(usize::MAX));
        let kept = all.len().min(cap);
        Self {
            model,
            request,
            digest: hex::encode(hasher.finalize()),
            input_tokens: estimate_input_tokens(endpoint, request),
            truncated: kept < all.len(),
            pieces: all[..kept].to_vec(),
            include_usage: request.pointer("/stream_options/include_usage")
                == Some(&Value::Bool(true)),
        }
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}{}", &self.digest[..24])
    }

    fn text(&self) -> String {
        self.pieces.concat()
    }

    fn output_tokens(&self) -> u64 {
        self.pieces.len() as u64
    }

    fn openai_finish_reason(&self) -> &'static str {
        if self.truncated { "length" } else { "stop" }
    }

    // --- OpenAI chat completions -------------------------------------------

    fn chat_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens(),
            "total_tokens": self.input_tokens + self.output_tokens(),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }

    fn chat_completion(&self) -> Value {
        json!({
            "id": self.id("chatcmpl-dry-"),
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text(), "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": self.openai_finish_reason(),
            }],
            "usage": self.chat_usage(),
            "system_fingerprint": null,
        })
    }

    fn chat_completion_events(&self) -> Vec<Bytes> {
        let chunk = |choices: Value, usage: Value| {
            let mut chunk = json!({
                "id": self.id("chatcmpl-dry-"),
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "system_fingerprint": null,
                "choices": choices,
            });
            // As the API does: once usage is asked for, every chunk has the
            // field, null until the final usage-only chunk.
            if self.include_usage {
                chunk["usage"] = usage;
            }
            data_event(&chunk)
        };
        let choice = |delta: Value, finish_reason: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]);
        let mut events = vec![chunk(
            choice(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ),
            Value::Null,
        )];
        for piece in &self.pieces {
            events.push(chunk(
                choice(json!({"content": piece}), Value::Null),
                Value::Null,
            ));
        }
        events.push(chunk(
            choice(json!({}), json!(self.openai_finish_reason())),
            Value::Null,
        ));
        if self.include_usage {
            events.push(chunk(json!([]), self.chat_usage()));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }

    // --- OpenAI legacy completions -----------------------------------------

    fn completion_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens(),
            "total_tokens": self.input_tokens + self.output_tokens(),
        })
    }

    fn text_completion(&self) -> Value {
        json!({
            "id": self.id("cmpl-dry-"),
            "object": "text_completion",
            "created": 0,
            "model": self.model,
            "choices": [{
                "text": self.text(),
                "index": 0,
                "logprobs": null,
                "finish_reason": self.openai_finish_reason(),
            }],
            "usage": self.completion_usage(),
        })
    }

    fn text_completion_events(&self) -> Vec<Bytes> {
        let chunk = |choices: Value, usage: Value| {
            let mut chunk = json!({
                "id": self.id("cmpl-dry-"),
                "object": "text_completion",
                "created": 0,
                "model": self.model,
                "choices": choices,
            });
            if self.include_usage {
                chunk["usage"] = usage;
            }
            data_event(&chunk)
        };
        let choice = |text: &str, finish_reason: Value| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason}]);
        let mut events: Vec<Bytes> = self
            .pieces
            .iter()
            .map(|piece| chunk(choice(piece, Value::Null), Value::Null))
            .collect();
        events.push(chunk(
            choice("", json!(self.openai_finish_reason())),
            Value::Null,
        ));
        if self.include_usage {
            events.push(chunk(json!([]), self.completion_usage()));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }

    // --- OpenAI embeddings -------------------------------------------------

    fn embeddings(&self) -> Value {
        let dimensions = self
            .request
            .get("dimensions")
            .and_then(Value::as_u64)
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (1..=MAX_EMBEDDING_DIMENSIONS).contains(d))
            .unwrap_or(DEFAULT_EMBEDDING_DIMENSIONS);
        let base64 = self.request.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let data: Vec<Value> = embedding_inputs(self.request.get("input"))
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let vector = embedding_vector(input, dimensions);
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    // Shortest decimal form of each f32, as the API prints them.
                    json!(
                        vector
                            .iter()
                            .map(|x| x.to_string().parse::<f64>().unwrap_or(0.0))
                            .collect::<Vec<_>>()
                    )
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        json!({
            "object": "list",
            "data": data,
            "model": self.model,
            "usage": {"prompt_tokens": self.input_tokens, "total_tokens": self.input_tokens},
        })
    }

    // --- OpenAI Responses --------------------------------------------------

    fn response_usage(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens(),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens(),
        })
    }

    fn output_text_part(&self, text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    }

    /// The `done` status of the response and its message: `incomplete` when
    /// the answer was cut by `max_output_tokens`, as the API reports it.
    fn response_done_status(&self) -> &'static str {
        if self.truncated {
            "incomplete"
        } else {
            "completed"
        }
    }

    fn response_message(&self, phase: ResponsePhase) -> Value {
        let (status, content) = match phase {
            ResponsePhase::Started => ("in_progress", json!([])),
            ResponsePhase::Done => (
                self.response_done_status(),
                json!([self.output_text_part(&self.text())]),
            ),
        };
        json!({
            "id": self.id("msg_dry_"),
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        })
    }

    fn response(&self, phase: ResponsePhase) -> Value {
        let (status, output, usage, incomplete_details) = match phase {
            ResponsePhase::Started => ("in_progress", json!([]), Value::Null, Value::Null),
            ResponsePhase::Done => (
                self.response_done_status(),
                json!([self.response_message(ResponsePhase::Done)]),
                self.response_usage(),
                if self.truncated {
                    json!({"reason": "max_output_tokens"})
                } else {
                    Value::Null
                },
            ),
        };
        json!({
            "id": self.id("resp_dry_"),
            "object": "response",
            "created_at": 0,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": incomplete_details,
            "instructions": null,
            "max_output_tokens": self.request.get("max_output_tokens").and_then(Value::as_u64),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    }

    fn response_events(&self) -> Vec<Bytes> {
        let item_id = self.id("msg_dry_");
        let text = self.text();
        let mut events = Vec::new();
        let mut emit = |kind: &str, mut data: Value| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(events.len());
            events.push(named_event(kind, &data));
        };
        emit(
            "response.created",
            json!({"response": self.response(ResponsePhase::Started)}),
        );
        emit(
            "response.in_progress",
            json!({"response": self.response(ResponsePhase::Started)}),
        );
        emit(
            "response.output_item.added",
            json!({"output_index": 0, "item": self.response_message(ResponsePhase::Started)}),
        );
        emit(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": self.output_text_part("")}),
        );
        for piece in &self.pieces {
            emit(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}),
            );
        }
        emit(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        );
        emit(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": self.output_text_part(&text)}),
        );
        emit(
            "response.output_item.done",
            json!({"output_index": 0, "item": self.response_message(ResponsePhase::Done)}),
        );
        let last = if self.truncated {
            "response.incomplete"
        } else {
            "response.completed"
        };
        emit(
            last,
            json!({"response": self.response(ResponsePhase::Done)}),
        );
        events
    }

    // --- Anthropic messages ------------------------------------------------

    fn anthropic_stop_reason(&self) -> &'static str {
        if self.truncated {
            "max_tokens"
        } else {
            "end_turn"
        }
    }

    fn anthropic_usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        })
    }

    fn message(&self) -> Value {
        json!({
            "id": self.id("msg_dry_"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.text()}],
            "stop_reason": self.anthropic_stop_reason(),
            "stop_sequence": null,
            "usage": self.anthropic_usage(self.output_tokens()),
        })
    }

    fn message_events(&self) -> Vec<Bytes> {
        self.message_event_values()
            .iter()
            .map(|(kind, data)| named_event(kind, data))
            .collect()
    }

    /// Anthropic's stream events as (name, data), `type` included.
    fn message_event_values(&self) -> Vec<(&'static str, Value)> {
        let mut events = Vec::new();
        let mut emit = |kind: &'static str, mut data: Value| {
            data["type"] = json!(kind);
            events.push((kind, data));
        };
        emit(
            "message_start",
            json!({"message": {
                "id": self.id("msg_dry_"),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                // The API reports a provisional output count here.
                "usage": self.anthropic_usage(self.output_tokens().min(1)),
            }}),
        );
        emit(
            "content_block_start",
            json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        emit("ping", json!({}));
        for piece in &self.pieces {
            emit(
                "content_block_delta",
                json!({"index": 0, "delta": {"type": "text_delta", "text": piece}}),
            );
        }
        emit("content_block_stop", json!({"index": 0}));
        emit(
            "message_delta",
            json!({
                "delta": {"stop_reason": self.anthropic_stop_reason(), "stop_sequence": null},
                "usage": {"output_tokens": self.output_tokens()},
            }),
        );
        emit("message_stop", json!({}));
        events
    }
}

impl Answer<'_> {
    // --- Bedrock -------------------------------------------------------------

    fn converse_usage(&self) -> Value {
        json!({
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens(),
            "totalTokens": self.input_tokens + self.output_tokens(),
        })
    }

    /// A `Converse` answer (Claude's stop reasons).
    fn converse(&self) -> Value {
        json!({
            "output": {"message": {"role": "assistant", "content": [{"text": self.text()}]}},
            "stopReason": self.anthropic_stop_reason(),
            "usage": self.converse_usage(),
            "metrics": {"latencyMs": 0},
        })
    }

    /// A `ConverseStream` answer: its events as event-stream frames.
    fn converse_events(&self) -> Vec<Vec<u8>> {
        use crate::eventstream::event;
        let mut frames = vec![event("messageStart", &json!({"role": "assistant"}))];
        for piece in &self.pieces {
            frames.push(event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
            ));
        }
        frames.push(event("contentBlockStop", &json!({"contentBlockIndex": 0})));
        frames.push(event(
            "messageStop",
            &json!({"stopReason": self.anthropic_stop_reason()}),
        ));
        frames.push(event(
            "metadata",
            &json!({"usage": self.converse_usage(), "metrics": {"latencyMs": 0}}),
        ));
        frames
    }

    /// An `InvokeModelWithResponseStream` answer for Claude: each Anthropic
    /// stream event, base64, in a `chunk` event.
    fn invoke_events(&self) -> Vec<Vec<u8>> {
        self.message_event_values()
            .into_iter()
            .filter(|(kind, _)| *kind != "ping")
            .map(|(_, data)| {
                let bytes = base64::engine::general_purpose::STANDARD.encode(data.to_string());
                crate::eventstream::event("chunk", &json!({ "bytes": bytes }))
            })
            .collect()
    }

    // --- Gemini --------------------------------------------------------------

    fn gemini_finish_reason(&self) -> &'static str {
        if self.truncated { "MAX_TOKENS" } else { "STOP" }
    }

    /// One `GenerateContentResponse`: `text` as the candidate's part, the
    /// usage so far (the output count once `finish` is set).
    fn gemini_chunk(&self, text: &str, output_tokens: Option<u64>, finish: bool) -> Value {
        let mut candidate = json!({
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        });
        if finish {
            candidate["finishReason"] = json!(self.gemini_finish_reason());
        }
        let mut usage = json!({
            "promptTokenCount": self.input_tokens,
            "totalTokenCount": self.input_tokens + output_tokens.unwrap_or(0),
        });
        if let Some(output) = output_tokens {
            usage["candidatesTokenCount"] = json!(output);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.id("dry_"),
        })
    }

    fn gemini_response(&self) -> Value {
        self.gemini_chunk(&self.text(), Some(self.output_tokens()), true)
    }

    fn gemini_events(&self) -> Vec<Bytes> {
        let last = self.pieces.len().saturating_sub(1);
        self.pieces
            .iter()
            .enumerate()
            .map(|(n, piece)| {
                let done = n == last;
                data_event(&self.gemini_chunk(piece, done.then(|| self.output_tokens()), done))
            })
            .collect()
    }

    /// `embedContent` (one `embedding`) or `batchEmbedContents` (one per
    /// request), each of `outputDimensionality` values. The Gemini API
    /// reports no usage for embeddings.
    fn gemini_embeddings(&self, endpoint: Endpoint) -> Value {
        let embedding = |request: &Value| {
            let dimensions = request
                .get("outputDimensionality")
                .and_then(Value::as_u64)
                .and_then(|d| usize::try_from(d).ok())
                .filter(|d| (1..=MAX_EMBEDDING_DIMENSIONS).contains(d))
                .unwrap_or(DEFAULT_EMBEDDING_DIMENSIONS);
            let content = request.get("content").unwrap_or(&Value::Null);
            let values: Vec<f64> = embedding_vector(content, dimensions)
                .iter()
                .map(|x| x.to_string().parse::<f64>().unwrap_or(0.0))
                .collect();
            json!({ "values": values })
        };
        if endpoint == Endpoint::EmbedContent {
            return json!({ "embedding": embedding(self.request) });
        }
        let requests = self.request.get("requests").and_then(Value::as_array);
        let embeddings: Vec<Value> = requests.into_iter().flatten().map(embedding).collect();
        json!({ "embeddings": embeddings })
    }
}

#[derive(Debug, Clone, Copy)]
enum ResponsePhase {
    Started,
    Done,
}

/// The answer split into word tokens, each word after the first with its
/// leading space, so that the pieces concatenate back to [`ANSWER`].
fn answer_pieces() -> Vec<&'static str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (space, _) in ANSWER.match_indices(' ') {
        pieces.push(&ANSWER[start..space]);
        start = space;
    }
    pieces.push(&ANSWER[start..]);
    pieces
}

/// The separate inputs of an embeddings request: a string, an array of
/// strings, one array of token ids, or an array of token-id arrays.
fn embedding_inputs(input: Option<&Value>) -> Vec<&Value> {
    match input {
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_number) => {
            input.into_iter().collect()
        }
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(single) => vec![single],
    }
}

/// A unit-length vector derived from the input's hash.
fn embedding_vector(input: &Value, dimensions: usize) -> Vec<f32> {
    let mut seed = Sha256::new();
    hash_canonical(input, &mut seed);
    let seed = seed.finalize();
    let mut values = Vec::with_capacity(dimensions);
    let mut block: u32 = 0;
    while values.len() < dimensions {
        let words = Sha256::new()
            .chain_update(seed)
            .chain_update(block.to_le_bytes())
            .finalize();
        for word in words.chunks_exact(4) {
            if values.len() == dimensions {
                break;
            }
            let raw = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            values.push(f64::from(raw) / f64::from(u32::MAX) * 2.0 - 1.0);
        }
        block += 1;
    }
    let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
    values
        .iter()
        .map(|v| if norm > 0.0 { (v / norm) as f32 } else { 0.0 })
        .collect()
}

/// Feeds `value` to `hasher` as canonical JSON: object keys sorted, no
/// whitespace, so key order and formatting do not change ids.
fn hash_canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for (n, key) in keys.into_iter().enumerate() {
                if n > 0 {
                    hasher.update(b",");
                }
                hasher.update(Value::from(key.as_str()).to_string().as_bytes());
                hasher.update(b":");
                if let Some(field) = fields.get(key) {
                    hash_canonical(field, hasher);
                }
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    hasher.update(b",");
                }
                hash_canonical(item, hasher);
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiStyle;
    use crate::sse::{ResponseFacts, SseTap, TokenUsage, facts_from_json};

    const ANSWER_TOKENS: u64 = 11;

    fn chat_request() -> Value {
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Say hello to the gateway."}]},
            ],
        })
    }

    fn anthropic_request() -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hello, Claude"}],
        })
    }

    fn responses_request() -> Value {
        json!({"model": "gpt-4.1", "instructions": "Be kind.", "input": "Tell me a joke."})
    }

    fn with(mut request: Value, field: &str, value: Value) -> Value {
        request[field] = value;
        request
    }

    fn json_body(response: &DryRunResponse) -> Value {
        assert_eq!(response.status, 200);
        assert_eq!(response.content_type, "application/json");
        match &response.body {
            DryRunBody::Json(body) => serde_json::from_slice(body).unwrap(),
            DryRunBody::Events(_) => panic!("expected JSON"),
        }
    }

    fn events(response: &DryRunResponse) -> Vec<Bytes> {
        assert_eq!(response.status, 200);
        assert_eq!(response.content_type, "text/event-stream");
        match &response.body {
            DryRunBody::Events(events) => events.clone(),
            DryRunBody::Json(_) => panic!("expected events"),
        }
    }

    /// Each event's name and parsed data (`None` for `[DONE]`).
    fn parse_events(events: &[Bytes]) -> Vec<(Option<String>, Option<Value>)> {
        events
            .iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                assert!(text.ends_with("\n\n"), "{text}");
                assert_eq!(text.matches("\n\n").count(), 1, "one event: {text}");
                let mut name = None;
                let mut data = None;
                for line in text.trim_end().lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = (d != "[DONE]").then(|| serde_json::from_str(d).unwrap());
                    } else {
                        panic!("unexpected line {line:?}");
                    }
                }
                (name, data)
            })
            .collect()
    }

    /// The facts the gateway's own tap takes from the stream, fed in one
    /// chunk per event and, separately, as one byte stream cut oddly.
    fn tapped(style: ApiStyle, events: &[Bytes]) -> ResponseFacts {
        let mut tap = SseTap::new(style, false);
        for event in events {
            tap.push(event.clone());
        }
        tap.finish();
        let whole: Vec<u8> = events.concat();
        let mut odd = SseTap::new(style, false);
        for piece in whole.chunks(7) {
            odd.push(Bytes::copy_from_slice(piece));
        }
        odd.finish();
        assert_eq!(tap.facts(), odd.facts());
        tap.facts().clone()
    }

    fn json_facts(endpoint: Endpoint, response: &DryRunResponse) -> ResponseFacts {
        match &response.body {
            DryRunBody::Json(body) => facts_from_json(endpoint, body),
            DryRunBody::Events(_) => panic!("expected JSON"),
        }
    }

    #[test]
    fn answers_are_deterministic_and_ids_follow_the_request() {
        let endpoints = [
            (Endpoint::ChatCompletions, chat_request()),
            (
                Endpoint::Completions,
                json!({"model": "m", "prompt": "Once"}),
            ),
            (
                Endpoint::Embeddings,
                json!({"model": "m", "input": ["a", "b"]}),
            ),
            (Endpoint::Responses, responses_request()),
            (Endpoint::Messages, anthropic_request()),
            (Endpoint::CountTokens, anthropic_request()),
        ];
        for (endpoint, request) in endpoints {
            for stream in [false, true] {
                let request = with(request.clone(), "stream", json!(stream));
                assert_eq!(
                    respond(endpoint, "m", &request),
                    respond(endpoint, "m", &request),
                    "{endpoint:?}"
                );
            }
        }
        let a = json_body(&respond(Endpoint::ChatCompletions, "m", &chat_request()));
        let b = json_body(&respond(
            Endpoint::ChatCompletions,
            "m",
            &with(chat_request(), "temperature", json!(0.5)),
        ));
        let c = json_body(&respond(
            Endpoint::ChatCompletions,
            "other",
            &chat_request(),
        ));
        assert_ne!(a["id"], b["id"]);
        assert_ne!(a["id"], c["id"]);
        assert_eq!(a["created"], 0);
        let id = a["id"].as_str().unwrap();
        assert!(
            id.starts_with("chatcmpl-dry-") && id.len() == "chatcmpl-dry-".len() + 24,
            "{id}"
        );
    }

    #[test]
    fn key_order_and_formatting_do_not_change_ids() {
        let one: Value =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
                .unwrap();
        let two: Value = serde_json::from_str(
            "{ \"messages\" : [ { \"content\":\"hi\", \"role\":\"user\" } ],\n \"model\":\"m\" }",
        )
        .unwrap();
        assert_eq!(
            respond(Endpoint::ChatCompletions, "m", &one),
            respond(Endpoint::ChatCompletions, "m", &two)
        );
    }

    #[test]
    fn chat_completion_shape() {
        let body = json_body(&respond(
            Endpoint::ChatCompletions,
            "gpt-4o-mini",
            &chat_request(),
        ));
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt-4o-mini");
        let choice = &body["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], ANSWER);
        assert_eq!(choice["finish_reason"], "stop");
        // "You are terse." (14) + "Say hello to the gateway." (25) = 39 bytes.
        assert_eq!(body["usage"]["prompt_tokens"], 10);
        assert_eq!(body["usage"]["completion_tokens"], ANSWER_TOKENS);
        assert_eq!(body["usage"]["total_tokens"], 10 + ANSWER_TOKENS);
    }

    #[test]
    fn chat_stream_shape_and_usage_only_when_asked() {
        let request = with(chat_request(), "stream", json!(true));
        let parsed = parse_events(&events(&respond(
            Endpoint::ChatCompletions,
            "gpt-4o-mini",
            &request,
        )));
        let (last, chunks) = parsed.split_last().unwrap();
        assert_eq!(last, &(None, None), "ends with [DONE]");
        assert_eq!(
            chunks[0].1.as_ref().unwrap()["choices"][0]["delta"]["role"],
            "assistant"
        );
        let mut text = String::new();
        for (name, data) in chunks {
            let data = data.as_ref().unwrap();
            assert_eq!(name, &None);
            assert_eq!(data["object"], "chat.completion.chunk");
            assert!(data.get("usage").is_none(), "no usage field unless asked");
            text += data["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("");
        }
        assert_eq!(text, ANSWER);
        assert_eq!(
            chunks.last().unwrap().1.as_ref().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );

        let request = with(request, "stream_options", json!({"include_usage": true}));
        let parsed = parse_events(&events(&respond(
            Endpoint::ChatCompletions,
            "gpt-4o-mini",
            &request,
        )));
        let usage_chunks: Vec<&Value> = parsed
            .iter()
            .filter_map(|(_, d)| d.as_ref())
            .filter(|d| d["usage"].is_object())
            .collect();
        assert_eq!(usage_chunks.len(), 1);
        assert_eq!(usage_chunks[0]["choices"], json!([]));
        assert_eq!(
            parsed[parsed.len() - 2].1.as_ref().unwrap()["choices"],
            json!([]),
            "usage chunk is last before [DONE]"
        );
        assert!(
            parsed
                .iter()
                .filter_map(|(_, d)| d.as_ref())
                .all(|d| d.get("usage").is_some())
        );
    }

    #[test]
    fn chat_stream_and_json_agree_through_the_tap() {
        let json_response = respond(Endpoint::ChatCompletions, "gpt-4o-mini", &chat_request());
        let from_json = json_facts(Endpoint::ChatCompletions, &json_response);
        let request = with(
            with(chat_request(), "stream", json!(true)),
            "stream_options",
            json!({"include_usage": true}),
        );
        let from_stream = tapped(
            ApiStyle::OpenAi,
            &events(&respond(Endpoint::ChatCompletions, "gpt-4o-mini", &request)),
        );
        assert_eq!(
            from_stream.usage,
            Some(TokenUsage {
                input: 10,
                output: ANSWER_TOKENS,
                cached_input: 0,
                ..TokenUsage::default()
            })
        );
        assert_eq!(from_stream.usage, from_json.usage);
        assert_eq!(from_stream.served_model.as_deref(), Some("gpt-4o-mini"));
        assert!(
            from_stream
                .provider_request_id
                .as_deref()
                .unwrap()
                .starts_with("chatcmpl-dry-")
        );
        // Without include_usage the stream carries no usage at all.
        let request = with(chat_request(), "stream", json!(true));
        let facts = tapped(
            ApiStyle::OpenAi,
            &events(&respond(Endpoint::ChatCompletions, "gpt-4o-mini", &request)),
        );
        assert_eq!(facts.usage, None);
    }

    #[test]
    fn injected_usage_chunk_is_stripped_by_the_tap() {
        let request = with(
            with(chat_request(), "stream", json!(true)),
            "stream_options",
            json!({"include_usage": true}),
        );
        let all = events(&respond(Endpoint::ChatCompletions, "m", &request));
        let mut tap = SseTap::new(ApiStyle::OpenAi, true);
        let mut forwarded = Vec::new();
        for event in &all {
            forwarded.extend_from_slice(&tap.push(event.clone()));
        }
        forwarded.extend_from_slice(&tap.finish());
        let usage_event = &all[all.len() - 2];
        let expected: Vec<u8> = all
            .iter()
            .filter(|e| *e != usage_event)
            .flat_map(|e| e.to_vec())
            .collect();
        assert_eq!(forwarded, expected);
        assert_eq!(tap.facts().usage.map(|u| u.output), Some(ANSWER_TOKENS));
    }

    #[test]
    fn max_tokens_truncate_the_answer() {
        for field in ["max_tokens", "max_completion_tokens"] {
            let body = json_body(&respond(
                Endpoint::ChatCompletions,
                "m",
                &with(chat_request(), field, json!(3)),
            ));
            assert_eq!(body["choices"][0]["message"]["content"], "This is a");
            assert_eq!(body["choices"][0]["finish_reason"], "length");
            assert_eq!(body["usage"]["completion_tokens"], 3);
        }
        let body = json_body(&respond(
            Endpoint::Messages,
            "m",
            &with(anthropic_request(), "max_tokens", json!(2)),
        ));
        assert_eq!(body["content"][0]["text"], "This is");
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["usage"]["output_tokens"], 2);
        let body = json_body(&respond(
            Endpoint::Responses,
            "m",
            &with(responses_request(), "max_output_tokens", json!(4)),
        ));
        assert_eq!(body["status"], "incomplete");
        assert_eq!(body["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(body["usage"]["output_tokens"], 4);
        // A cap above the answer's length changes nothing.
        let body = json_body(&respond(
            Endpoint::ChatCompletions,
            "m",
            &with(chat_request(), "max_tokens", json!(500)),
        ));
        assert_eq!(body["choices"][0]["message"]["content"], ANSWER);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn completions_shapes_and_stream() {
        let request = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"});
        let body = json_body(&respond(
            Endpoint::Completions,
            "gpt-3.5-turbo-instruct",
            &request,
        ));
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], ANSWER);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens"], 5);
        assert!(body["id"].as_str().unwrap().starts_with("cmpl-dry-"));

        let request = with(
            with(request, "stream", json!(true)),
            "stream_options",
            json!({"include_usage": true}),
        );
        let all = events(&respond(
            Endpoint::Completions,
            "gpt-3.5-turbo-instruct",
            &request,
        ));
        let parsed = parse_events(&all);
        let text: String = parsed
            .iter()
            .filter_map(|(_, d)| d.as_ref())
            .filter_map(|d| d["choices"][0]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(text, ANSWER);
        assert_eq!(
            tapped(ApiStyle::OpenAi, &all).usage,
            json_facts(
                Endpoint::Completions,
                &respond(
                    Endpoint::Completions,
                    "x",
                    &json!({"prompt": "Say this is a test"})
                )
            )
            .usage
        );
    }

    #[test]
    fn embeddings_as_floats_and_base64() {
        let request = json!({"model": "text-embedding-3-small", "input": ["hello", "world"], "encoding_format": "float"});
        let body = json_body(&respond(
            Endpoint::Embeddings,
            "text-embedding-3-small",
            &request,
        ));
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "text-embedding-3-small");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        let floats: Vec<Vec<f64>> = data
            .iter()
            .enumerate()
            .map(|(n, item)| {
                assert_eq!(item["object"], "embedding");
                assert_eq!(item["index"], n);
                item["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(floats[0].len(), 8);
        assert_ne!(floats[0], floats[1]);
        let norm: f64 = floats[0].iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        // "hello" + "world" = 10 bytes.
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 3, "total_tokens": 3})
        );

        // The openai SDK asks for base64 by default: little-endian f32s.
        let request = with(request, "encoding_format", json!("base64"));
        let body = json_body(&respond(
            Endpoint::Embeddings,
            "text-embedding-3-small",
            &request,
        ));
        let encoded = body["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let decoded: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect();
        assert_eq!(decoded.len(), 8);
        for (a, b) in decoded.iter().zip(&floats[0]) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn embedding_inputs_of_every_form() {
        let count = |input: Value| {
            let body = json_body(&respond(
                Endpoint::Embeddings,
                "m",
                &json!({"input": input}),
            ));
            body["data"].as_array().unwrap().len()
        };
        assert_eq!(count(json!("one string")), 1);
        assert_eq!(count(json!(["a", "b", "c"])), 3);
        assert_eq!(count(json!([1, 2, 3])), 1);
        assert_eq!(count(json!([[1, 2], [3]])), 2);
        let body = json_body(&respond(
            Endpoint::Embeddings,
            "m",
            &json!({"input": "x", "dimensions": 20}),
        ));
        assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 20);
        // The same text embeds the same whatever else is in the batch.
        let alone = json_body(&respond(
            Endpoint::Embeddings,
            "m",
            &json!({"input": ["a"]}),
        ));
        let batch = json_body(&respond(
            Endpoint::Embeddings,
            "m",
            &json!({"input": ["b", "a"]}),
        ));
        assert_eq!(alone["data"][0]["embedding"], batch["data"][1]["embedding"]);
    }

    #[test]
    fn responses_shape() {
        let response = respond(Endpoint::Responses, "gpt-4.1", &responses_request());
        let body = json_body(&response);
        assert_eq!(body["object"], "response");
        assert_eq!(body["status"], "completed");
        assert_eq!(body["model"], "gpt-4.1");
        assert!(body["id"].as_str().unwrap().starts_with("resp_dry_"));
        let message = &body["output"][0];
        assert_eq!(message["type"], "message");
        assert_eq!(message["role"], "assistant");
        assert_eq!(
            message["content"][0],
            json!({"type": "output_text", "text": ANSWER, "annotations": [], "logprobs": []})
        );
        // "Be kind." (8) + "Tell me a joke." (15) = 23 bytes.
        assert_eq!(
            body["usage"],
            json!({
                "input_tokens": 6,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": ANSWER_TOKENS,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 6 + ANSWER_TOKENS,
            })
        );
    }

    #[test]
    fn responses_stream_shape_and_tap() {
        let request = with(responses_request(), "stream", json!(true));
        let all = events(&respond(Endpoint::Responses, "gpt-4.1", &request));
        let parsed = parse_events(&all);
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(
            names[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(
            names[names.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let mut text = String::new();
        for (n, (name, data)) in parsed.iter().enumerate() {
            let data = data.as_ref().unwrap();
            assert_eq!(data["type"].as_str(), name.as_deref());
            assert_eq!(data["sequence_number"], n);
            if name.as_deref() == Some("response.output_text.delta") {
                text += data["delta"].as_str().unwrap();
            }
        }
        assert_eq!(text, ANSWER);
        let last = parsed.last().unwrap().1.as_ref().unwrap();
        assert_eq!(last["response"]["status"], "completed");
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], ANSWER);
        let from_stream = tapped(ApiStyle::OpenAi, &all);
        let from_json = json_facts(
            Endpoint::Responses,
            &respond(Endpoint::Responses, "gpt-4.1", &responses_request()),
        );
        assert_eq!(
            from_stream.usage,
            Some(TokenUsage {
                input: 6,
                output: ANSWER_TOKENS,
                cached_input: 0,
                ..TokenUsage::default()
            })
        );
        assert_eq!(from_stream.usage, from_json.usage);
        assert_eq!(from_stream.served_model, from_json.served_model);
        assert!(
            from_stream
                .provider_request_id
                .as_deref()
                .unwrap()
                .starts_with("resp_dry_")
        );
    }

    #[test]
    fn anthropic_message_shape() {
        let body = json_body(&respond(
            Endpoint::Messages,
            "claude-sonnet-4-5",
            &anthropic_request(),
        ));
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], "claude-sonnet-4-5");
        assert_eq!(body["content"], json!([{"type": "text", "text": ANSWER}]));
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["stop_sequence"], Value::Null);
        assert!(body["id"].as_str().unwrap().starts_with("msg_dry_"));
        // "Be brief." (9) + "Hello, Claude" (13) = 22 bytes.
        assert_eq!(
            body["usage"],
            json!({"input_tokens": 6, "output_tokens": ANSWER_TOKENS, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
        );
    }

    #[test]
    fn anthropic_stream_shape_and_tap() {
        let request = with(anthropic_request(), "stream", json!(true));
        let all = events(&respond(Endpoint::Messages, "claude-sonnet-4-5", &request));
        let parsed = parse_events(&all);
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
        assert_eq!(
            names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        let mut text = String::new();
        for (name, data) in &parsed {
            let data = data.as_ref().unwrap();
            assert_eq!(data["type"].as_str(), name.as_deref());
            if name.as_deref() == Some("content_block_delta") {
                assert_eq!(data["delta"]["type"], "text_delta");
                text += data["delta"]["text"].as_str().unwrap();
            }
        }
        assert_eq!(text, ANSWER);
        let delta = parsed[parsed.len() - 2].1.as_ref().unwrap();
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "end_turn", "stop_sequence": null})
        );
        let from_stream = tapped(ApiStyle::Anthropic, &all);
        let from_json = json_facts(
            Endpoint::Messages,
            &respond(
                Endpoint::Messages,
                "claude-sonnet-4-5",
                &anthropic_request(),
            ),
        );
        assert_eq!(
            from_stream.usage,
            Some(TokenUsage {
                input: 6,
                output: ANSWER_TOKENS,
                cached_input: 0,
                ..TokenUsage::default()
            })
        );
        assert_eq!(from_stream.usage, from_json.usage);
        assert_eq!(
            from_stream.served_model.as_deref(),
            Some("claude-sonnet-4-5")
        );
        assert!(
            from_stream
                .provider_request_id
                .as_deref()
                .unwrap()
                .starts_with("msg_dry_")
        );
    }

    fn gemini_request() -> Value {
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Hello, Gemini"}]}],
        })
    }

    #[test]
    fn gemini_shapes_streams_counts_and_embeddings() {
        let request = gemini_request();
        // "Be brief." (9) + "Hello, Gemini" (13) bytes: 6 tokens.
        assert_eq!(
            estimate_input_tokens(Endpoint::GenerateContent, &request),
            6
        );
        let whole = json_body(&respond(
            Endpoint::GenerateContent,
            "gemini-2.5-flash",
            &request,
        ));
        assert_eq!(
            whole["candidates"][0]["content"]["parts"][0]["text"],
            ANSWER
        );
        assert_eq!(whole["candidates"][0]["finishReason"], "STOP");
        assert_eq!(whole["modelVersion"], "gemini-2.5-flash");
        let usage = TokenUsage {
            input: 6,
            output: ANSWER_TOKENS,
            ..TokenUsage::default()
        };
        let from_json = json_facts(
            Endpoint::GenerateContent,
            &respond(Endpoint::GenerateContent, "gemini-2.5-flash", &request),
        );
        assert_eq!(from_json.usage, Some(usage));
        // The stream endpoint streams whatever the body says.
        let all = events(&respond(
            Endpoint::StreamGenerateContent,
            "gemini-2.5-flash",
            &request,
        ));
        assert_eq!(all.len() as u64, ANSWER_TOKENS);
        let text: String = parse_events(&all)
            .iter()
            .map(|(_, data)| {
                let data = data.as_ref().unwrap();
                data["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(text, ANSWER);
        let from_stream = tapped(ApiStyle::Gemini, &all);
        assert_eq!(from_stream.usage, Some(usage));
        assert!(
            from_stream
                .provider_request_id
                .as_deref()
                .is_some_and(|id| id.starts_with("dry_"))
        );
        // maxOutputTokens cuts the answer.
        let capped = with(
            request.clone(),
            "generationConfig",
            json!({"maxOutputTokens": 3}),
        );
        let capped = json_body(&respond(Endpoint::GenerateContent, "g", &capped));
        assert_eq!(capped["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(capped["usageMetadata"]["candidatesTokenCount"], 3);
        // Counts, alone or of a whole generate request.
        let counted = respond(Endpoint::GeminiCountTokens, "g", &request);
        // Only contents count: a bare count has no system instruction.
        assert_eq!(json_body(&counted), json!({"totalTokens": 4}));
        let wrapped = json!({"generateContentRequest": request});
        assert_eq!(
            json_body(&respond(Endpoint::GeminiCountTokens, "g", &wrapped)),
            json!({"totalTokens": 6})
        );
        // Embeddings: one, or one per request, at the asked dimensionality.
        let one = json!({"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 3});
        let embedded = json_body(&respond(Endpoint::EmbedContent, "e", &one));
        assert_eq!(embedded["embedding"]["values"].as_array().unwrap().len(), 3);
        let batch = json!({"requests": [one, {"content": {"parts": [{"text": "b"}]}}]});
        let embedded = json_body(&respond(Endpoint::BatchEmbedContents, "e", &batch));
        let vectors = embedded["embeddings"].as_array().unwrap();
        assert_eq!(vectors.len(), 2);
        assert_eq!(vectors[1]["values"].as_array().unwrap().len(), 8);
        assert_ne!(vectors[0]["values"], vectors[1]["values"]);
        // Refusals in Google's format.
        let refused = respond(Endpoint::GenerateContent, "g", &json!([1]));
        let DryRunBody::Json(body) = refused.body else {
            panic!("expected JSON")
        };
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    }

    #[test]
    fn count_tokens_and_refusals() {
        let response = respond(Endpoint::CountTokens, "claude", &anthropic_request());
        assert_eq!(json_body(&response), json!({"input_tokens": 6}));
        assert_eq!(
            json_facts(Endpoint::CountTokens, &response).usage,
            Some(TokenUsage {
                input: 6,
                output: 0,
                cached_input: 0,
                ..TokenUsage::default()
            })
        );

        // Bedrock counts a Converse input as that Converse would.
        let converse =
            json!({"messages": [{"role": "user", "content": [{"text": "Hello there, friend"}]}]});
        let counted = respond(
            Endpoint::BedrockCountTokens,
            "b",
            &json!({"input": {"converse": converse}}),
        );
        let expected = estimate_input_tokens(Endpoint::Converse, &converse);
        assert!(expected > 1);
        assert_eq!(json_body(&counted), json!({"inputTokens": expected}));
        assert_eq!(
            json_facts(Endpoint::BedrockCountTokens, &counted)
                .usage
                .map(|u| u.input),
            Some(expected)
        );

        let models = respond(Endpoint::Models, "m", &json!({}));
        assert_eq!(models.status, 404);
        let not_object = respond(Endpoint::Messages, "m", &json!([1, 2]));
        assert_eq!(not_object.status, 400);
        let DryRunBody::Json(body) = not_object.body else {
            panic!("expected JSON")
        };
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["type"], "error", "refused in the endpoint's own style");
    }

    #[test]
    fn input_estimates() {
        assert_eq!(
            estimate_input_tokens(Endpoint::ChatCompletions, &chat_request()),
            10
        );
        assert_eq!(
            estimate_input_tokens(Endpoint::ChatCompletions, &json!({"messages": []})),
            1
        );
        assert_eq!(
            estimate_input_tokens(Endpoint::ChatCompletions, &json!({})),
            1
        );
        assert_eq!(estimate_input_tokens(Endpoint::Models, &json!({})), 0);
        // Multi-byte text counts bytes: 4 × 3-byte characters = 12 bytes.
        assert_eq!(
            estimate_input_tokens(Endpoint::Embeddings, &json!({"input": "日本語の"})),
            3
        );
        // Token-id prompts count one per id.
        assert_eq!(
            estimate_input_tokens(Endpoint::Completions, &json!({"prompt": [1, 2, 3, 4, 5]})),
            5
        );
        // Anthropic system blocks and tool results count their text.
        let request = json!({
            "system": [{"type": "text", "text": "12345678"}],
            "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "abcd"}]}]},
                {"role": "assistant", "content": [{"type": "image", "source": {"type": "base64", "data": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}]},
            ],
        });
        assert_eq!(estimate_input_tokens(Endpoint::Messages, &request), 3);
        // Responses input items.
        let request = json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "12345678"}]}]});
        assert_eq!(estimate_input_tokens(Endpoint::Responses, &request), 2);
        // Fields of other endpoints are ignored.
        assert_eq!(
            estimate_input_tokens(
                Endpoint::ChatCompletions,
                &json!({"prompt": "x".repeat(400)})
            ),
            1
        );
    }

    #[test]
    fn answer_pieces_rebuild_the_answer() {
        let pieces = answer_pieces();
        assert_eq!(pieces.len() as u64, ANSWER_TOKENS);
        assert_eq!(pieces.concat(), ANSWER);
        assert_eq!(pieces[1], " is");
    }
}
