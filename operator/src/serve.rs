//! Listeners: HTTPS (rustls, certificates from the resolver at every
//! handshake) for the webhooks and the control endpoint, and plain HTTP for
//! `/live`, `/ready` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_wire::server::{PlainAccept, ServerLimits, TlsAccept};

/// Serves `router` over TLS on `listener` within `limits` until `shutdown`
/// fires (handshakes and bounds: `tollgate_wire::server`).
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ServerLimits,
    shutdown: watch::Receiver<bool>,
) {
    let accept = TlsAccept::new(
        listener,
        tls,
        |_| (),
        limits.write_stall_timeout,
        std::sync::Arc::default(),
    );
    tollgate_wire::server::serve(accept, router, limits, changed(shutdown)).await;
}

async fn changed(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.changed().await;
}

/// `/live`, `/ready` (200 once `ready` is set) and `/metrics`.
pub fn probes_router(ready: Arc<AtomicBool>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok" }))
        .route(
            "/ready",
            get(move || {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
}

/// Serves plain HTTP within the control-plane bounds until `shutdown` fires.
pub async fn serve_http(listener: TcpListener, router: Router, shutdown: watch::Receiver<bool>) {
    let accept = PlainAccept::new(listener, ());
    tollgate_wire::server::serve(accept, router, ServerLimits::CONTROL, changed(shutdown)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_follows_the_flag() {
        use tower::ServiceExt as _;
        let ready = Arc::new(AtomicBool::new(false));
        let router = probes_router(ready.clone(), Arc::new(Registry::default()));
        let get = |path: &str| {
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let r = router.clone().oneshot(get("/ready")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        ready.store(true, Ordering::Release);
        let r = router.clone().oneshot(get("/ready")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = router.clone().oneshot(get("/live")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = router.oneshot(get("/metrics")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}
