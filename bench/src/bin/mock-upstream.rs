//! An OpenAI-style upstream for benchmarks: answers chat completions after a
//! fixed delay (zero by default), or streams `--sse-events` deltas
//! `--sse-interval-ms` apart when the request asks for `"stream": true`.
//!
//! The request's model can ask for other shapes, so one upstream serves every
//! benchmark: `bench-json-N` answers a JSON completion of about N bytes, and
//! `bench-sse-E-I` streams E deltas I milliseconds apart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before a JSON answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Events in a streamed answer.
    #[arg(long, default_value_t = 64)]
    sse_events: u32,
    /// Gap between streamed events, in milliseconds.
    #[arg(long, default_value_t = 20)]
    sse_interval_ms: u64,
    /// Also serve TLS here, with `--tls-cert` and `--tls-key` (PEM).
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    #[arg(long)]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
}

const JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;

/// The part of the flags each answer needs.
#[derive(Debug, Clone, Copy)]
struct Timing {
    delay_ms: u64,
    sse_events: u32,
    sse_interval_ms: u64,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    args: Timing,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let streaming = body.windows(13).any(|w| w == b"\"stream\":true");
    let shape = Shape::of(model(&body));
    if !streaming {
        if args.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
        }
        let json = match shape {
            Shape::Json(bytes) => Bytes::from(json_of_size(bytes)),
            _ => Bytes::from_static(JSON.as_bytes()),
        };
        let mut response = Response::new(Full::new(json).boxed());
        response.headers_mut().insert(
            "content-type",
            "application/json"
                .parse()
                .unwrap_or(http::HeaderValue::from_static("application/json")),
        );
        return Ok(response);
    }
    let (events, interval_ms) = match shape {
        Shape::Sse {
            events,
            interval_ms,
        } => (events, interval_ms),
        _ => (args.sse_events, args.sse_interval_ms),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for i in 0..events {
            let event = format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i}\"}}}}]}}\n\n"
            );
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
            if interval_ms > 0 {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
        }
        let usage = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":64,\"total_tokens\":76}}\n\ndata: [DONE]\n\n";
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(usage.as_bytes()))))
            .await;
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/event-stream"),
    );
    Ok(response)
}

/// What a request's model asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The default answers.
    Default,
    /// A JSON completion of about this many bytes.
    Json(usize),
    /// A stream of `events` deltas `interval_ms` apart.
    Sse { events: u32, interval_ms: u64 },
}

impl Shape {
    fn of(model: &str) -> Self {
        if let Some(bytes) = model
            .strip_prefix("bench-json-")
            .and_then(|n| n.parse().ok())
        {
            return Self::Json(bytes);
        }
        if let Some((events, interval)) = model
            .strip_prefix("bench-sse-")
            .and_then(|r| r.split_once('-'))
            && let (Ok(events), Ok(interval_ms)) = (events.parse(), interval.parse())
        {
            return Self::Sse {
                events,
                interval_ms,
            };
        }
        Self::Default
    }
}

/// The request's `"model"` value (the first one in the body), or "".
fn model(body: &[u8]) -> &str {
    const KEY: &[u8] = b"\"model\":\"";
    let Some(start) = body.windows(KEY.len()).position(|w| w == KEY) else {
        return "";
    };
    let rest = &body[start + KEY.len()..];
    let end = rest.iter().position(|b| *b == b'"').unwrap_or(0);
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

/// A chat completion whose content pads it to about `bytes`.
fn json_of_size(bytes: usize) -> String {
    let filler = "x".repeat(bytes.saturating_sub(JSON.len()));
    JSON.replacen(
        "\"content\":\"ok\"",
        &format!("\"content\":\"ok{filler}\""),
        1,
    )
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

async fn serve_plain(listener: tokio::net::TcpListener, timing: Timing) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(timing, req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    timing: Timing,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |req| answer(timing, req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timing = Timing {
        delay_ms: args.delay_ms,
        sse_events: args.sse_events,
        sse_interval_ms: args.sse_interval_ms,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("mock-upstream: listening {}", listener.local_addr()?);
    let plain = tokio::spawn(serve_plain(listener, timing));
    if let (Some(addr), Some(cert), Some(key)) = (args.tls_listen, &args.tls_cert, &args.tls_key) {
        let acceptor = tls_acceptor(cert, key)?;
        let tls = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("mock-upstream: listening tls {}", tls.local_addr()?);
        tokio::spawn(serve_tls(tls, acceptor, timing));
    }
    plain.await?
}
