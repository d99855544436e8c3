//! Serving HTTP/1.1 with bounds: the one accept loop every Tollgate server
//! (gateway data and admin ports, recorder, operator) runs, so that no client
//! can hold a server by being slow, big or many.
//!
//! | bound | what happens |
//! |---|---|
//! | request head not complete within `header_read_timeout` (also the keep-alive idle time) | connection closed |
//! | request head over `max_header_bytes` | 431, connection closed |
//! | more than `max_connections` open | the new one gets 503 with `Retry-After` and is closed |
//! | more than `max_in_flight` requests being handled | 503 with `Retry-After` |
//! | no request body bytes for `body_idle_timeout` | the body read fails (the handler answers 4xx) |
//! | no response head within `response_timeout` (when set) | 503 with `Retry-After` |
//! | a client that stops reading: a write pending for `write_stall_timeout` | connection closed (its request ends as a client disconnect) |
//! | `max_requests_per_connection` answered on one connection (when set) | that response says `connection: close`; the client reconnects (spreading keep-alive clients over replicas) |
//!
//! Each refusal is counted in the server's [`OverloadCounters`] (its metrics).
//!
//! A response body (a stream) is never cut by these: a request holds its
//! in-flight slot until its response body ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use hyper::body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::problem::{PROBLEM_JSON, Problem};

/// A server's bounds. Every field is a documented setting (docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time to receive a request's head, from the connection's first byte or
    /// the previous response: so also how long an idle keep-alive connection
    /// stays open.
    pub header_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body.
    pub body_idle_timeout: Duration,
    /// Longest wait for a response head; `None` leaves it to the handler (the
    /// gateway, whose providers have their own timeouts).
    pub response_timeout: Option<Duration>,
    /// Largest request head (request line and headers), in bytes; 431 above.
    pub max_header_bytes: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Requests being handled at once (until their response body ends).
    pub max_in_flight: usize,
    /// Longest a write to the client may wait (the client stopped reading,
    /// its window is full): then the connection is closed, which frees its
    /// slots. A stream the client keeps reading is never cut by this.
    pub write_stall_timeout: Duration,
    /// Requests answered on one connection before it is closed (`None`: no
    /// limit). Keep-alive clients then reconnect, and land on whichever
    /// replica the Service picks: without it, every gateway stays on the
    /// replica it first reached (after a rolling restart, the last one up).
    pub max_requests_per_connection: Option<u64>,
}

impl ServerLimits {
    /// The gateway's data port: every app request of the pod passes here.
    /// Only the pod's own app reaches it (loopback), so the idle keep-alive
    /// time outlasts common client pools (Go keeps idle connections 90 s).
    pub const GATEWAY: Self = Self {
        header_read_timeout: Duration::from_secs(120),
        body_idle_timeout: Duration::from_secs(30),
        response_timeout: None,
        max_header_bytes: 64 * 1024,
        max_connections: 4_096,
        max_in_flight: 1_024,
        write_stall_timeout: Duration::from_secs(60),
        // One pod's own app on loopback: nothing to spread.
        max_requests_per_connection: None,
    };

    /// Control-plane servers (recorder, operator, admin ports).
    pub const CONTROL: Self = Self {
        header_read_timeout: Duration::from_secs(10),
        body_idle_timeout: Duration::from_secs(30),
        response_timeout: Some(Duration::from_secs(120)),
        max_header_bytes: 64 * 1024,
        max_connections: 1_024,
        max_in_flight: 256,
        write_stall_timeout: Duration::from_secs(60),
        max_requests_per_connection: Some(1_000),
    };

    /// The recorder: every gateway in the cluster ships to it and asks it for
    /// quota leases, over keep-alive connections.
    /// Its handlers bound their own work (a bundle export may take minutes;
    /// the CLI waits 300 s), so no response timeout.
    pub const RECORDER: Self = Self {
        max_connections: 16_384,
        max_in_flight: 1_024,
        response_timeout: None,
        ..Self::CONTROL
    };

    /// Largest connection or in-flight count honoured (a semaphore's limit).
    pub const MAX_PERMITS: usize = 1 << 20;

    /// Longest timeout honoured.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);

    /// The smallest head limit hyper accepts.
    pub const MIN_HEADER_BYTES: usize = 8_192;
}

/// The flags every Tollgate server binary takes to change its bounds; unset
/// ones keep that server's default (docs/operations.md, "Server bounds").
#[cfg(feature = "flags")]
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct LimitFlags {
    /// Connections open at once; more get 503 with `Retry-After` and are
    /// closed. Default: the server's own (gateway 4096, recorder 16384,
    /// operator control endpoint --max-long-polls + 1024).
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", value_parser = parse_count)]
    pub max_connections: Option<usize>,
    /// Requests handled at once (a stream counts until it ends); more get 503
    /// with `Retry-After`. Default: the server's own (1024; operator control
    /// endpoint --max-long-polls + 256).
    #[arg(long, env = "TOLLGATE_MAX_REQUESTS_IN_FLIGHT", value_parser = parse_count)]
    pub max_requests_in_flight: Option<usize>,
    /// Time a client has to send a request's head, which is also how long an
    /// idle keep-alive connection stays open: `10s`, `2m`. Default: the
    /// server's own (gateway 120s, outlasting client pools; others 10s).
    #[arg(long, env = "TOLLGATE_HEADER_READ_TIMEOUT", value_parser = parse_timeout)]
    pub header_read_timeout: Option<Duration>,
    /// Longest pause inside a request body before the request fails.
    /// Default: 30s.
    #[arg(long, env = "TOLLGATE_BODY_IDLE_TIMEOUT", value_parser = parse_timeout)]
    pub body_idle_timeout: Option<Duration>,
}

#[cfg(feature = "flags")]
impl LimitFlags {
    /// `base` with the flags that were given.
    pub fn apply(&self, base: ServerLimits) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections.unwrap_or(base.max_connections),
            max_in_flight: self.max_requests_in_flight.unwrap_or(base.max_in_flight),
            header_read_timeout: self.header_read_timeout.unwrap_or(base.header_read_timeout),
            body_idle_timeout: self.body_idle_timeout.unwrap_or(base.body_idle_timeout),
            ..base
        }
    }
}

/// Parses a connection or request count: 1 to [`ServerLimits::MAX_PERMITS`].
pub fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=ServerLimits::MAX_PERMITS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} must be a whole number from 1 to {}",
            ServerLimits::MAX_PERMITS
        )),
    }
}

/// Parses a server timeout: a whole number of seconds or minutes (`10s`, `2m`),
/// from 1 s to [`ServerLimits::MAX_TIMEOUT`].
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} must start with a whole number"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        _ => return Err(format!("{text:?} needs a unit: s or m")),
    };
    if seconds == 0 || seconds > ServerLimits::MAX_TIMEOUT.as_secs() {
        return Err(format!("{text:?} must be between 1s and 60m"));
    }
    Ok(Duration::from_secs(seconds))
}

/// Raises this process's soft limit on open files to its hard limit, as Go's
/// runtime does for every Go server: a shell's default soft limit (often
/// 1 024) would otherwise cut `max_connections` short, and a server out of
/// descriptors stops accepting instead of answering 503. Returns the limit in
/// force (`None`: unlimited or unknown).
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            return getrlimit(Resource::Nofile).current;
        }
    }
    limit.current
}

/// Seconds a refused client is told to wait.
const RETRY_AFTER_SECONDS: &str = "1";
/// How long connections may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(30);

/// Where connections come from (TCP, or TLS after its handshake), and what
/// handlers learn about each (`ConnectInfo<Self::Info>`).
pub trait Accept: Send + 'static {
    /// The connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What handlers see of it.
    type Info: Clone + Send + Sync + 'static;
    /// The next connection.
    fn accept(&mut self) -> impl Future<Output = (Self::Io, Self::Info)> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Info = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Info) {
        loop {
            match tokio::net::TcpListener::accept(self).await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, peer);
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// How often a server refused work at its bounds, since it started.
#[derive(Debug, Default)]
pub struct OverloadCounters {
    connections: AtomicU64,
    requests: AtomicU64,
    response_timeouts: AtomicU64,
    write_stalls: AtomicU64,
}

impl OverloadCounters {
    /// Connections answered 503 and closed at `max_connections`.
    pub fn connections_refused(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests answered 503 at `max_in_flight`.
    pub fn requests_refused(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests answered 503 at `response_timeout`.
    pub fn response_timeouts(&self) -> u64 {
        self.response_timeouts.load(Ordering::Relaxed)
    }

    /// Connections closed because the client stopped reading.
    pub fn write_stalls(&self) -> u64 {
        self.write_stalls.load(Ordering::Relaxed)
    }

    /// The refusals a server's metrics show, by their label value.
    pub fn by_kind(&self) -> [(&'static str, u64); 3] {
        [
            ("connections", self.connections_refused()),
            ("requests_in_flight", self.requests_refused()),
            ("write_stalls", self.write_stalls()),
        ]
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves `router` on connections from `listener` within `limits`, until
/// `shutdown` completes; then lets open connections finish (30 s at most).
pub async fn serve<A: Accept>(
    listener: A,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_counted(listener, router, limits, Arc::default(), shutdown).await;
}

/// [`serve`], counting refusals in `counters`.
pub async fn serve_counted<A: Accept>(
    mut listener: A,
    router: Router,
    limits: ServerLimits,
    counters: Arc<OverloadCounters>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let permits = |n: usize| n.clamp(1, ServerLimits::MAX_PERMITS);
    let timeout = |d: Duration| d.clamp(Duration::from_millis(1), ServerLimits::MAX_TIMEOUT);
    let bounds = Arc::new(Bounds {
        in_flight: Arc::new(Semaphore::new(permits(limits.max_in_flight))),
        body_idle_timeout: timeout(limits.body_idle_timeout),
        response_timeout: limits.response_timeout.map(timeout),
        counters: counters.clone(),
    });
    let router = router.layer(axum::middleware::from_fn_with_state(bounds, bound_request));
    let connections = Arc::new(Semaphore::new(permits(limits.max_connections)));
    let mut open = tokio::task::JoinSet::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeout(limits.header_read_timeout))
        .max_buf_size(limits.max_header_bytes.max(ServerLimits::MIN_HEADER_BYTES));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, info) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            OverloadCounters::count(&counters.connections);
            tokio::spawn(refuse(io));
            continue;
        };
        // The service is cloned per request: the count is shared.
        let answered = Arc::new(AtomicU64::new(0));
        let per_connection = limits.max_requests_per_connection;
        let service = router
            .clone()
            .map_request(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(info.clone()));
                request.map(Body::new)
            })
            .map_response(move |mut response: Response| {
                let n = answered.fetch_add(1, Ordering::Relaxed) + 1;
                if per_connection.is_some_and(|max| n >= max) {
                    // hyper closes the connection after this response.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            });
        let io = StallGuard::new(io, timeout(limits.write_stall_timeout), counters.clone());
        let connection = http.serve_connection(
            TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let connection = graceful.watch(connection);
        open.spawn(async move {
            let _permit = permit;
            let _ = connection.await;
        });
        while open.try_join_next().is_some() {}
    }
    // New connections are refused from now on; open ones get the drain time,
    // then are cut (their requests end as client disconnects, receipted).
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    open.abort_all();
    while open.join_next().await.is_some() {}
}

/// Answers a connection over the limit with 503 and closes it, without reading
/// its request (the client retries after `Retry-After`).
async fn refuse<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io) {
    let body = overload_problem("too many connections").to_json();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {PROBLEM_JSON}\r\nretry-after: {RETRY_AFTER_SECONDS}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(&body).await?;
        io.shutdown().await?;
        // Read what the client sent until it closes: closing with unread data
        // would reset the connection before the client reads the 503.
        let mut sink = [0u8; 4096];
        while tokio::io::AsyncReadExt::read(&mut io, &mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

fn overload_problem(detail: &str) -> Problem {
    Problem {
        type_: "about:blank".into(),
        title: "Service Unavailable".into(),
        status: 503,
        reason: Some("Overloaded".into()),
        detail: detail.into(),
    }
}

fn overloaded(detail: &str) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        overload_problem(detail).to_json(),
    )
        .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

struct Bounds {
    in_flight: Arc<Semaphore>,
    body_idle_timeout: Duration,
    response_timeout: Option<Duration>,
    counters: Arc<OverloadCounters>,
}

/// Probes and metrics: answered even at the in-flight cap, so that load never
/// makes a liveness probe restart the server.
const UNBOUNDED_PATHS: [&str; 4] = ["/live", "/ready", "/startup", "/metrics"];

async fn bound_request(
    State(bounds): State<Arc<Bounds>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == http::Method::GET && UNBOUNDED_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(permit) = bounds.in_flight.clone().try_acquire_owned() else {
        OverloadCounters::count(&bounds.counters.requests);
        return overloaded("too many requests in flight");
    };
    let idle = bounds.body_idle_timeout;
    let request = request.map(|body| Body::new(IdleTimeoutBody::new(body, idle)));
    let response = match bounds.response_timeout {
        None => next.run(request).await,
        Some(limit) => match tokio::time::timeout(limit, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                OverloadCounters::count(&bounds.counters.response_timeouts);
                overloaded("no response in time")
            }
        },
    };
    response.map(|body| {
        Body::new(HoldingPermit {
            body,
            _permit: permit,
        })
    })
}

/// A request body that fails when its reader waits for bytes too long. The
/// clock runs only while the reader waits (from its first poll that finds
/// nothing), so a handler that authenticates before reading loses no time.
struct IdleTimeoutBody {
    inner: Body,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl IdleTimeoutBody {
    fn new(inner: Body, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            armed: false,
        }
    }
}

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes for {0:?}")]
pub struct BodyIdle(pub Duration);

impl hyper::body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(deadline);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(axum::Error::new(BodyIdle(this.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes fail once one has waited `timeout` for the
/// client to read: hyper then drops the connection. [`serve`] puts one around
/// every connection; [`TlsAccept`] one under TLS too, around the socket, so
/// rustls's own buffering and its close_notify are bounded as well.
#[derive(Debug)]
pub struct StallGuard<Io> {
    io: Io,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    counters: Arc<OverloadCounters>,
}

impl<Io> StallGuard<Io> {
    /// Guards `io`, counting stalls in `counters`.
    pub fn new(io: Io, timeout: Duration, counters: Arc<OverloadCounters>) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
            counters,
        }
    }

    /// A pending write: still pending until the timeout, then the error.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                OverloadCounters::count(&self.counters.write_stalls);
                Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for StallGuard<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for StallGuard<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A response body that holds its request's in-flight slot until it ends.
struct HoldingPermit {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl hyper::body::Body for HoldingPermit {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// TLS connections for [`serve`]: accepts TCP, runs rustls handshakes on their
/// own tasks (at most 256 at once, 10 s each, so slow clients cannot stall
/// accepting), and hands finished streams over with what `info` reads of each
/// (a verified client certificate, say).
pub struct TlsAccept<I> {
    ready: tokio::sync::mpsc::Receiver<(TlsStream, I)>,
}

impl<I> std::fmt::Debug for TlsAccept<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAccept").finish_non_exhaustive()
    }
}

/// A server-side TLS stream over TCP (whose writes are bounded, see
/// [`StallGuard`]).
pub type TlsStream = tokio_rustls::server::TlsStream<StallGuard<tokio::net::TcpStream>>;

/// Handshakes in flight at once.
const MAX_HANDSHAKES: usize = 256;
/// Longest handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl<I: Clone + Send + Sync + 'static> TlsAccept<I> {
    /// Starts accepting on `tcp` with `config`; a socket write waits
    /// `write_stall_timeout` at most, and stalls are counted in `counters`
    /// (the server's own, given to [`serve_counted`] too).
    pub fn new(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        info: fn(&TlsStream) -> I,
        write_stall_timeout: Duration,
        counters: Arc<OverloadCounters>,
    ) -> Self {
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            let mut tcp = tcp;
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                // The port closes with the server, not at the next connection.
                let (stream, _) = tokio::select! {
                    accepted = Accept::accept(&mut tcp) => accepted,
                    () = tx.closed() => return,
                };
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                let stream = StallGuard::new(stream, write_stall_timeout, counters.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let seen = info(&tls);
                            let _ = sender.send((tls, seen)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Self { ready }
    }
}

impl<I: Clone + Send + Sync + 'static> Accept for TlsAccept<I> {
    type Io = TlsStream;
    type Info = I;

    async fn accept(&mut self) -> (Self::Io, Self::Info) {
        match self.ready.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await,
        }
    }
}

/// Plain TCP connections whose handlers all see the same `info`.
#[derive(Debug)]
pub struct PlainAccept<I> {
    tcp: tokio::net::TcpListener,
    info: I,
}

impl<I> PlainAccept<I> {
    /// Accepts on `tcp`; every connection's info is `info`.
    pub fn new(tcp: tokio::net::TcpListener, info: I) -> Self {
        Self { tcp, info }
    }
}

impl<I: Clone + Send + Sync + 'static> Accept for PlainAccept<I> {
    type Io = tokio::net::TcpStream;
    type Info = I;

    async fn accept(&mut self) -> (Self::Io, Self::Info) {
        let (stream, _) = Accept::accept(&mut self.tcp).await;
        (stream, self.info.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_timeouts_parse_within_their_bounds() {
        assert_eq!(parse_count("1"), Ok(1));
        assert_eq!(parse_count(" 4096 "), Ok(4096));
        for bad in ["0", "-1", "1.5", "", "x", "1048577"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("60m"), Ok(ServerLimits::MAX_TIMEOUT));
        for bad in ["0s", "10", "1h", "61m", "s", "-1s", "99999999999999999999m"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[cfg(feature = "flags")]
    #[test]
    fn flags_override_only_what_they_name() {
        assert_eq!(
            LimitFlags::default().apply(ServerLimits::RECORDER),
            ServerLimits::RECORDER
        );
        let flags = LimitFlags {
            max_connections: Some(7),
            header_read_timeout: Some(Duration::from_secs(3)),
            ..LimitFlags::default()
        };
        assert_eq!(
            flags.apply(ServerLimits::RECORDER),
            ServerLimits {
                max_connections: 7,
                header_read_timeout: Duration::from_secs(3),
                ..ServerLimits::RECORDER
            }
        );
    }
}
