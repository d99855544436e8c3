//! Accounting: the response streams back to the client chunk by chunk while it
//! is hashed and counted and its usage read on the side; when it ends (or the
//! client goes away) the quota reservation is settled and the receipt draft
//! handed to the spool writer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use sha2::{Digest, Sha256};
use tollgate_evidence::Decision;
use tollgate_wire::config::PriceTable;
use tollgate_wire::pricing::BilledTokens;

use super::{Gateway, Ticket};
use crate::api::{ApiStyle, Endpoint};
use crate::eventstream::{EventStreamTap, StreamFault};
use crate::genai_metrics::{ChunkClock, MetricCatalog};
use crate::quota::{Amounts, QuotaAuthority, Reservation};
use crate::receipts::{PricingDraft, ReceiptDraft, UsageDraft, unix_millis};
use crate::sse::{ResponseFacts, SseTap, facts_from_json};

/// Largest JSON response kept on the side to read usage from; bigger bodies
/// still pass through whole, but their usage is recorded as unknown.
const MAX_JSON_TAP_BYTES: usize = 16 * 1024 * 1024;

/// Quota settlement carried to the end of the response.
pub(super) struct Settle {
    quota: Arc<dyn QuotaAuthority>,
    reservation: Option<Reservation>,
    estimate: Amounts,
    now_secs: u64,
}

impl Settle {
    /// Settles `reservation` when the response ends; `estimate` is charged
    /// when usage is unknown or the response never ends.
    pub(super) fn new(
        quota: Arc<dyn QuotaAuthority>,
        reservation: Reservation,
        estimate: Amounts,
        now_secs: u64,
    ) -> Self {
        Self {
            quota,
            reservation: Some(reservation),
            estimate,
            now_secs,
        }
    }

    fn charge(&mut self, actual: Option<Amounts>) -> Option<(u64, u64, u64)> {
        let reservation = self.reservation.take()?;
        if reservation.is_empty() {
            return None;
        }
        // Usage unknown (a cut stream): charge the estimate, never nothing.
        let amount = actual.unwrap_or(self.estimate);
        self.quota
            .settle(reservation, amount, self.now_secs.max(unix_millis() / 1000));
        Some((amount.tokens, amount.requests, amount.cost_micro_usd))
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.quota
                .settle(reservation, self.estimate, unix_millis() / 1000);
        }
    }
}

pub(super) struct Finish {
    started: Instant,
    started_at_ms: u64,
    pricing: PriceTable,
    settle: Settle,
    gateway: Arc<Gateway>,
    /// The request was admitted under `failMode: open`.
    fails_open: bool,
    /// The label bounds of the runtime the request was admitted under (not
    /// the runtime itself: a long stream must not keep an old config's keys
    /// and connection pools alive).
    catalog: Arc<MetricCatalog>,
}

pub(super) fn ticket_finish(ticket: &Ticket, pricing: PriceTable, settle: Settle) -> Finish {
    Finish {
        started: ticket.started,
        started_at_ms: ticket.started_at_ms,
        pricing,
        settle,
        gateway: ticket.gateway.clone(),
        fails_open: ticket.runtime.fails_open(),
        catalog: ticket.runtime.metric_catalog.clone(),
    }
}

/// How a response body is framed, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Json,
    /// `text/event-stream`
    Sse,
    /// `application/vnd.amazon.eventstream` (Bedrock)
    EventStream,
}

impl Framing {
    pub(super) fn of(content_type: &str) -> Self {
        if content_type.starts_with("text/event-stream") {
            Self::Sse
        } else if content_type.starts_with("application/vnd.amazon.eventstream") {
            Self::EventStream
        } else {
            Self::Json
        }
    }

    /// Whether the answer arrives as a stream of chunks.
    pub(super) fn streams(self) -> bool {
        self != Self::Json
    }
}

pub(super) fn tap_for(endpoint: Endpoint, framing: Framing, strip_injected_usage: bool) -> Tap {
    match framing {
        Framing::Sse => Tap::Sse(Box::new(SseTap::new(
            endpoint.style(),
            strip_injected_usage,
        ))),
        Framing::EventStream => Tap::EventStream(Box::new(EventStreamTap::new(endpoint))),
        Framing::Json => Tap::Json(Vec::new()),
    }
}

pub(super) enum Source {
    Upstream(hyper::body::Incoming),
    Frames(VecDeque<Bytes>),
    /// A provider's error answer: held whole (up to [`MAX_ERROR_BODY`]), then
    /// passed on once with echoed credentials scrubbed.
    Scrubbed {
        body: hyper::body::Incoming,
        held: Vec<u8>,
        done: bool,
    },
}

/// Most of a provider error body passed on; the rest is dropped (error bodies
/// are a few hundred bytes).
pub(super) const MAX_ERROR_BODY: usize = 64 * 1024;

pub(super) enum Tap {
    Sse(Box<SseTap>),
    EventStream(Box<EventStreamTap>),
    Json(Vec<u8>),
}

/// How a response ended, for the receipt.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Complete,
    ClientGone,
    UpstreamBroke,
    IdleTimeout,
}

/// Streams the response to the client chunk by chunk, hashing and counting
/// what the client receives, reading usage on the side, and writing the
/// receipt when the stream ends or the client goes away.
pub(super) struct MeteredBody {
    source: Source,
    tap: Tap,
    hasher: Sha256,
    length: u64,
    tail: Option<Bytes>,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    draft: Option<ReceiptDraft>,
    finish: Option<Finish>,
    /// Times a streamed answer's chunks (SSE answers only).
    chunk_clock: Option<ChunkClock>,
}

impl MeteredBody {
    pub(super) fn new(
        source: Source,
        tap: Tap,
        draft: ReceiptDraft,
        finish: Finish,
        idle: Option<Duration>,
    ) -> Self {
        Self {
            source,
            tap,
            hasher: Sha256::new(),
            length: 0,
            tail: None,
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            draft: Some(draft),
            finish: Some(finish),
            chunk_clock: None,
        }
    }

    /// Times the chunks of this (streamed) answer with `clock`.
    pub(super) fn with_chunk_clock(mut self, clock: Option<ChunkClock>) -> Self {
        self.chunk_clock = clock;
        self
    }

    fn observe(&mut self, chunk: Bytes) -> Bytes {
        let out = match &mut self.tap {
            Tap::Sse(tap) => {
                let before = tap.chunks();
                let out = tap.push(chunk);
                if let Some(clock) = self.chunk_clock.as_mut() {
                    clock.chunks_read(tap.chunks() - before, Instant::now());
                }
                out
            }
            Tap::EventStream(tap) => {
                let before = tap.events();
                let out = tap.push(chunk);
                if let Some(clock) = self.chunk_clock.as_mut() {
                    clock.chunks_read(tap.events() - before, Instant::now());
                }
                out
            }
            Tap::Json(buf) => {
                if buf.len() + chunk.len() <= MAX_JSON_TAP_BYTES {
                    buf.extend_from_slice(&chunk);
                }
                chunk
            }
        };
        self.hasher.update(&out);
        self.length += out.len() as u64;
        out
    }

    fn end(&mut self, ending: Ending) {
        let (Some(mut draft), Some(mut finish)) = (self.draft.take(), self.finish.take()) else {
            return;
        };
        let facts: ResponseFacts = match &self.tap {
            Tap::Sse(tap) => tap.facts().clone(),
            Tap::EventStream(tap) => tap.facts(),
            Tap::Json(buf) => facts_from_json(draft.endpoint, buf),
        };
        let hasher = std::mem::take(&mut self.hasher);
        draft.response_sha256 = hasher.finalize().into();
        draft.response_length = self.length;
        let elapsed = finish.started.elapsed().as_millis() as u64;
        draft.total_ms = elapsed;
        draft.completed_at_ms = finish.started_at_ms + elapsed;
        if let Some(served) = facts.served_model {
            draft.model_served = Some(served);
        }
        // Bedrock's request id is its x-amzn-RequestId header (set when the
        // answer arrived), not the model body's message id.
        if let (Some(upstream), Some(id)) = (draft.upstream.as_mut(), facts.provider_request_id)
            && upstream.provider_request_id.is_none()
        {
            upstream.provider_request_id = Some(id);
        }
        // Anthropic and Bedrock report cache reads apart from input.
        let reads_apart = matches!(
            draft.endpoint.style(),
            ApiStyle::Anthropic | ApiStyle::Bedrock
        );
        let usage = facts.usage.filter(|_| !draft.endpoint.counts_tokens());
        let actual = usage.map(|u| {
            // Receipts count input including cache reads; Anthropic reports
            // cache reads apart from `input_tokens`, OpenAI inside
            // `prompt_tokens` and Gemini inside `promptTokenCount`.
            let input = if reads_apart {
                u.input.saturating_add(u.cached_input)
            } else {
                u.input
            };
            draft.usage = Some(UsageDraft {
                input,
                output: u.output,
                cached: u.cached_input,
                cache_write_5m: u.cache_write_5m,
                cache_write_1h: u.cache_write_1h,
                reasoning: u.reasoning,
            });
            let choice = finish
                .pricing
                .pricing()
                .choose(facts.service_tier.as_deref(), input);
            let cost = choice.prices.cost(&BilledTokens {
                input,
                output: u.output,
                cache_read: u.cached_input,
                cache_write_5m: u.cache_write_5m,
                cache_write_1h: u.cache_write_1h,
            });
            draft.pricing = Some(PricingDraft {
                table_sha256: *finish.pricing.sha256(),
                service_tier: facts.service_tier.clone(),
                long_context: choice.long_context,
            });
            draft.cost_micro_usd = cost;
            Amounts {
                tokens: input.saturating_add(u.output),
                requests: 1,
                cost_micro_usd: cost,
            }
        });
        let actual = if draft.endpoint.counts_tokens() {
            Some(Amounts {
                requests: 1,
                ..Amounts::default()
            })
        } else {
            actual
        };
        draft.quota = finish.settle.charge(actual);
        let fault = match &self.tap {
            Tap::EventStream(tap) => tap.fault(),
            _ => None,
        };
        match fault {
            Some(StreamFault::Malformed) => {
                draft.decision = Decision::Error;
                draft.reason = "upstream_stream_malformed";
            }
            Some(StreamFault::Exception) => {
                draft.decision = Decision::Error;
                draft.reason = "upstream_stream_exception";
            }
            None => {}
        }
        match ending {
            Ending::Complete => {}
            Ending::ClientGone => draft.reason = "client_disconnected",
            Ending::UpstreamBroke => {
                draft.decision = Decision::Error;
                draft.reason = "upstream_stream_broken";
            }
            Ending::IdleTimeout => {
                draft.decision = Decision::Error;
                draft.reason = "upstream_idle_timeout";
            }
        }
        finish.gateway.record(
            draft,
            finish.fails_open,
            &finish.catalog,
            finish.started.elapsed(),
        );
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away before the end: hyper drops the body, which
        // drops the upstream body and so cancels the upstream request.
        self.end(Ending::ClientGone);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(tail) = this.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        if this.draft.is_none() {
            return Poll::Ready(None);
        }
        loop {
            let next = match &mut this.source {
                Source::Frames(frames) => {
                    Poll::Ready(frames.pop_front().map(|b| Ok(Frame::data(b))))
                }
                Source::Upstream(body) => Pin::new(body)
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map_err(BoxError::from))),
                Source::Scrubbed { done: true, .. } => Poll::Ready(None),
                Source::Scrubbed { body, held, done } => match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            let room = MAX_ERROR_BODY.saturating_sub(held.len());
                            held.extend_from_slice(&data[..data.len().min(room)]);
                        }
                        if held.len() >= MAX_ERROR_BODY {
                            // Enough of an error: pass it on, read no more.
                            *done = true;
                            let scrubbed = crate::guards::scrub_credentials(held);
                            Poll::Ready(Some(Ok(Frame::data(Bytes::from(scrubbed)))))
                        } else {
                            // Nothing to pass on yet: the loop polls again.
                            Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
                        }
                    }
                    Poll::Ready(None) => {
                        *done = true;
                        let scrubbed = crate::guards::scrub_credentials(held);
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(scrubbed)))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
                    Poll::Pending => Poll::Pending,
                },
            };
            match next {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some((d, sleep)) = this.idle.as_mut() {
                        sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                    }
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let out = this.observe(data);
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.end(Ending::UpstreamBroke);
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    let rest = match &mut this.tap {
                        Tap::Sse(tap) => tap.finish(),
                        Tap::EventStream(tap) => {
                            tap.finish();
                            Bytes::new()
                        }
                        Tap::Json(_) => Bytes::new(),
                    };
                    if !rest.is_empty() {
                        this.hasher.update(&rest);
                        this.length += rest.len() as u64;
                    }
                    this.end(Ending::Complete);
                    return Poll::Ready(if rest.is_empty() {
                        None
                    } else {
                        Some(Ok(Frame::data(rest)))
                    });
                }
                Poll::Pending => {
                    if let Some((_, sleep)) = this.idle.as_mut()
                        && sleep.as_mut().poll(cx).is_ready()
                    {
                        this.end(Ending::IdleTimeout);
                        return Poll::Ready(Some(Err("upstream idle timeout".into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
