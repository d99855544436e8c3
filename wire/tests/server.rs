//! The bounded server on loopback, driven with raw sockets so each bound is hit
//! exactly: slow heads are cut, big heads get 431, connections and requests over
//! their limits get 503 with Retry-After, stalled bodies and slow handlers end,
//! and a long response stream is never cut.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tollgate_wire::server::{OverloadCounters, ServerLimits, serve, serve_counted};

const LIMITS: ServerLimits = ServerLimits {
    header_read_timeout: Duration::from_millis(400),
    body_idle_timeout: Duration::from_millis(400),
    response_timeout: Some(Duration::from_millis(600)),
    max_header_bytes: 8_192,
    max_connections: 8,
    max_in_flight: 2,
    write_stall_timeout: Duration::from_millis(500),
    max_requests_per_connection: Some(3),
};

struct Fixture {
    address: SocketAddr,
    release: Arc<Notify>,
    counters: Arc<OverloadCounters>,
}

async fn start(limits: ServerLimits) -> Fixture {
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/live", get(|| async { "live" }))
        .route(
            "/late-read",
            post(|request: axum::extract::Request| async move {
                // Work before reading (authentication, say) longer than the
                // body idle timeout.
                tokio::time::sleep(Duration::from_millis(700)).await;
                let body = axum::body::to_bytes(request.into_body(), 1024).await;
                body.map_or_else(|e| format!("failed: {e}"), |b| b.len().to_string())
            }),
        )
        .route(
            "/hold",
            get(move || {
                let held = held.clone();
                async move {
                    held.notified().await;
                    "released"
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/stream",
            get(|| async {
                // Ten chunks over 1.5 s: longer than the response timeout.
                Body::new(Ticks {
                    sent: 0,
                    next: Box::pin(tokio::time::sleep(Duration::from_millis(150))),
                })
            }),
        )
        .route(
            "/big",
            get(|| async {
                // 256 MiB in 64 KiB chunks, made as they are read: far more
                // than the socket buffers hold.
                let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
                Body::from_stream(futures::stream::iter(
                    (0..4096).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                ))
            }),
        )
        .route(
            "/echo",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let counters = Arc::new(OverloadCounters::default());
    tokio::spawn(serve_counted(
        listener,
        router,
        limits,
        counters.clone(),
        std::future::pending(),
    ));
    Fixture {
        address,
        release,
        counters,
    }
}

/// Ten chunks, 150 ms apart.
struct Ticks {
    sent: u32,
    next: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Ticks {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.sent == 10 {
            return std::task::Poll::Ready(None);
        }
        match this.next.as_mut().poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(()) => {
                let chunk = format!("chunk {}\n", this.sent);
                this.sent += 1;
                let at = tokio::time::Instant::now() + Duration::from_millis(150);
                this.next.as_mut().reset(at);
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk.into()))))
            }
        }
    }
}

/// Sends `request` and reads until the server closes or `within` passes.
async fn exchange(address: SocketAddr, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_all(&mut stream, within).await
}

async fn read_all(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Requests `/hold` until every in-flight slot is taken; each task ends with
/// its answer once `release` is notified.
async fn hold_every_slot(f: &Fixture) -> Vec<tokio::task::JoinHandle<String>> {
    let holders = (0..LIMITS.max_in_flight)
        .map(|_| {
            let address = f.address;
            tokio::spawn(async move {
                exchange(address, &get_request("/hold"), Duration::from_secs(10)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    holders
}

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn an_ordinary_request_is_served() {
    let f = start(LIMITS).await;
    let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
}

#[tokio::test]
async fn a_head_that_never_ends_is_cut() {
    let f = start(LIMITS).await;
    let started = Instant::now();
    let answer = exchange(
        f.address,
        b"GET / HTTP/1.1\r\nHost: t\r\n",
        Duration::from_secs(5),
    )
    .await;
    let waited = started.elapsed();
    assert!(!answer.contains("200"), "{answer}");
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
}

#[tokio::test]
async fn an_oversized_head_gets_431() {
    let f = start(LIMITS).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = exchange(f.address, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn connections_over_the_limit_get_503_with_retry_after() {
    let f = start(LIMITS).await;
    let mut held = Vec::new();
    for _ in 0..LIMITS.max_connections {
        held.push(TcpStream::connect(f.address).await.unwrap());
    }
    // The server counts a connection once it accepted it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert_eq!(f.counters.connections_refused(), 1);
    assert_eq!(f.counters.requests_refused(), 0);
    // Idle connections are cut by the head timeout, and service resumes.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_get_503_and_slots_come_back() {
    let f = start(LIMITS).await;
    let holders = hold_every_slot(&f).await;
    let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("too many requests in flight"), "{answer}");
    assert_eq!(f.counters.requests_refused(), 1);
    assert_eq!(f.counters.connections_refused(), 0);
    f.release.notify_waiters();
    for holder in holders {
        assert!(holder.await.unwrap().ends_with("released"));
    }
    let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_stalled_body_ends_the_request() {
    let f = start(LIMITS).await;
    let started = Instant::now();
    let answer = exchange(
        f.address,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A body that keeps coming is read whole.
    let answer = exchange(
        f.address,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with('3'),
        "{answer}"
    );
}

#[tokio::test]
async fn a_handler_past_the_response_timeout_gets_503() {
    let f = start(LIMITS).await;
    let answer = exchange(f.address, &get_request("/slow"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("no response in time"), "{answer}");
    assert_eq!(f.counters.response_timeouts(), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_frees_its_slot() {
    let f = start(ServerLimits {
        max_in_flight: 1,
        response_timeout: None,
        ..LIMITS
    })
    .await;
    // Asks for a huge body and never reads it: the server's writes stall.
    let mut stalled = TcpStream::connect(f.address).await.unwrap();
    stalled.write_all(&get_request("/big")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the one slot is held: {answer}"
    );
    // After the stall timeout the connection is dropped and the slot is free.
    let started = Instant::now();
    loop {
        let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still held: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f.counters.write_stalls(), 1);
    // A stream the client reads, slowly but steadily, is not cut.
    let answer = exchange(f.address, &get_request("/stream"), Duration::from_secs(5)).await;
    assert!(answer.contains("chunk 9"), "{answer}");
    assert_eq!(f.counters.write_stalls(), 1);
    drop(stalled);
}

#[tokio::test]
async fn a_connection_closes_after_its_request_limit() {
    let f = start(LIMITS).await;
    // Three keep-alive requests, pipelined: the third answer says
    // `connection: close` and the server closes (well before the 400 ms
    // keep-alive timeout would).
    let request = get_request("/");
    let request = String::from_utf8(request)
        .unwrap()
        .replace("Connection: close\r\n", "");
    let started = Instant::now();
    let answer = exchange(
        f.address,
        request.repeat(3).as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "closed by the limit"
    );
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    assert_eq!(answer.matches("connection: close").count(), 1, "{answer}");
    assert!(answer.trim_end().ends_with("ok"), "{answer}");
    // Without a limit, the same connection answers all four.
    let f = start(ServerLimits {
        max_requests_per_connection: None,
        ..LIMITS
    })
    .await;
    let answer = exchange(
        f.address,
        request.repeat(4).as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 4, "{answer}");
}

#[tokio::test]
async fn a_response_stream_outlasting_every_timeout_is_not_cut() {
    let f = start(LIMITS).await;
    let answer = exchange(f.address, &get_request("/stream"), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("chunk 9"), "{answer}");
}

#[tokio::test]
async fn slow_clients_do_not_hold_up_others() {
    let f = start(ServerLimits {
        max_connections: 256,
        ..LIMITS
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(f.address).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        slow.push(stream);
    }
    let started = Instant::now();
    let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // And the slow ones are gone after the head timeout.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut buf = [0u8; 16];
    for stream in &mut slow {
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
}

#[tokio::test]
async fn probes_are_answered_at_the_in_flight_cap() {
    let f = start(LIMITS).await;
    let holders = hold_every_slot(&f).await;
    let answer = exchange(f.address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let answer = exchange(f.address, &get_request("/live"), Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("live"),
        "{answer}"
    );
    f.release.notify_waiters();
    for holder in holders {
        holder.await.unwrap();
    }
}

#[tokio::test]
async fn a_handler_that_works_before_reading_the_body_still_gets_it() {
    let f = start(ServerLimits {
        response_timeout: None,
        ..LIMITS
    })
    .await;
    // The body comes only once the handler reads (at 700 ms), later than the
    // idle timeout after the request arrived: the clock starts when it waits.
    let mut stream = TcpStream::connect(f.address).await.unwrap();
    let head =
        b"POST /late-read HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\n";
    stream.write_all(head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    stream.write_all(b"abc").await.unwrap();
    let answer = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with('3'),
        "{answer}"
    );
}

#[tokio::test]
async fn serving_ends_when_shutdown_comes_and_the_port_closes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Router::new().route("/", get(|| async { "ok" })),
        LIMITS,
        async {
            let _ = stopped.await;
        },
    ));
    let answer = exchange(address, &get_request("/"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once idle after shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(address).await.is_err(),
        "the port is closed"
    );
}
