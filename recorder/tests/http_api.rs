//! The HTTP API in process: authentication and authorization, problem+json
//! errors, request bounds, leases over the wire, and TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tollgate_recorder::auth::{Caller, StaticTokens};
use tollgate_recorder::http::problem::{PROBLEM_JSON, Problem};
use tollgate_recorder::http::{AppState, router};
use tollgate_recorder::server::{ServeOptions, start};
use tollgate_recorder::settings::Settings;
use tollgate_test_support::fixtures::Gateway;
use tollgate_wire::client::{HttpClient, Response, public_roots, roots_from_pem_file};

struct Api {
    url: String,
    client: HttpClient,
}

impl Api {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Response {
        self.client
            .send(
                method,
                &format!("{}{path}", self.url),
                token,
                body.map(Bytes::from),
                64 << 20,
            )
            .await
            .unwrap()
    }
}

/// A recorder behind the real router, with three tokens: local, a gateway of
/// team-1/sa-1 (Gateway::new(1)'s pod), and a gateway of another namespace.
async fn api(settings: Settings) -> Api {
    let (rec, _clock) = common::recorder(common::sqlite("http"), settings.clone()).await;
    let auth = StaticTokens::local("local-token")
        .with(
            "gw-1",
            Caller::ServiceAccount {
                namespace: "team-1".into(),
                name: "sa-1".into(),
                pod: Some("app-1".into()),
            },
        )
        .with(
            "gw-other",
            Caller::ServiceAccount {
                namespace: "team-2".into(),
                name: "sa-0".into(),
                pod: None,
            },
        );
    let app = router(AppState {
        recorder: rec,
        auth: Arc::new(auth),
        max_body_bytes: settings.max_body_bytes,
        front_proxy: None,
        access: None,
        quotas: None,
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(tcp, app).await.unwrap() });
    Api {
        url: format!("http://{addr}"),
        client: HttpClient::new(public_roots().unwrap(), Duration::from_secs(30)),
    }
}

fn problem(r: &Response) -> Problem {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn callers_are_authenticated_and_scoped() {
    let api = api(common::settings(100)).await;
    let gw = Gateway::new(1).unwrap();
    let batch = gw.batch_json(&gw.stream(2, false).unwrap()).unwrap();

    let r = api
        .send(Method::POST, "/v1/receipts", None, Some(batch.clone()))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        problem(&r).type_,
        "https://tollgate.dev/problems/unauthenticated"
    );
    let r = api
        .send(
            Method::POST,
            "/v1/receipts",
            Some("wrong"),
            Some(batch.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A gateway ships only its own pod's receipts.
    let r = api
        .send(
            Method::POST,
            "/v1/receipts",
            Some("gw-other"),
            Some(batch.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .send(Method::POST, "/v1/receipts", Some("gw-1"), Some(batch))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // It may read its stream's position, but not usage for other namespaces.
    let r = api
        .send(
            Method::GET,
            &format!("/v1/streams/{}", gw.stream_id),
            Some("gw-1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .send(
            Method::GET,
            &format!("/v1/streams/{}", gw.stream_id),
            Some("gw-other"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .send(
            Method::GET,
            "/v1/usage?namespace=team-1&since=2025-02-28T00:00:00Z",
            Some("gw-1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api.send(Method::GET, "/v1/usage", Some("gw-1"), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .send(Method::GET, "/v1/bundle", Some("gw-1"), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .send(
            Method::GET,
            "/v1/streams/unknown",
            Some("local-token"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn errors_are_problem_json_and_bounds_hold() {
    let mut settings = common::settings(100);
    settings.max_batch_receipts = 3;
    settings.max_body_bytes = 64 * 1024;
    let api = api(settings).await;
    let gw = Gateway::new(1).unwrap();
    let t = Some("local-token");

    let r = api
        .send(Method::POST, "/v1/receipts", t, Some(b"{not json".to_vec()))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api
        .send(
            Method::POST,
            "/v1/receipts",
            t,
            Some(gw.batch_json(&gw.stream(4, false).unwrap()).unwrap()),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem(&r).status, 413);
    let r = api
        .send(Method::POST, "/v1/receipts", t, Some(vec![b' '; 65 * 1024]))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = api
        .send(Method::GET, "/v1/usage?bucket=week", t, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api.send(Method::GET, "/v1/nothing", t, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api.send(Method::GET, "/v1/bundle", t, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "nothing to export yet");

    // Check the media type on one of them.
    let raw = reqwest_like_get(&api.url, "/v1/nothing").await;
    assert!(raw.contains(PROBLEM_JSON), "{raw}");

    // Health and bounded metrics.
    assert_eq!(
        api.send(Method::GET, "/live", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.send(Method::GET, "/ready", None, None).await.status,
        StatusCode::OK
    );
    let metrics = String::from_utf8(
        api.send(Method::GET, "/metrics", None, None)
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains("tollgate_recorder_http_responses_total"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/v1/receipts\""), "{metrics}");
    assert!(
        !metrics.contains("team-1"),
        "no per-namespace or per-pod labels"
    );
}

#[tokio::test]
async fn key_health_goes_over_the_wire_within_its_bounds() {
    let api = api(common::settings(100)).await;
    let report = br#"{"keys":[{"provider":"openai","index":1,"state":"unhealthy","since_ms":1,"next_probe_ms":2,"last_status":403}]}"#;
    let r = api
        .send(
            Method::PUT,
            "/v1/key-health",
            Some("gw-1"),
            Some(report.to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .send(Method::PUT, "/v1/key-health", None, Some(report.to_vec()))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = api
        .send(
            Method::PUT,
            "/v1/key-health",
            Some("gw-1"),
            Some(b"{\"keys\":[1]}".to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        problem(&r).detail.contains("key health report"),
        "{:?}",
        problem(&r)
    );
    let r = api
        .send(
            Method::PUT,
            "/v1/key-health",
            Some("gw-1"),
            Some(vec![b' '; 1024 * 1024 + 1]),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // A gateway may not read it; the reader (here: local) may.
    let r = api
        .send(Method::GET, "/v1/key-health", Some("gw-1"), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .send(
            Method::GET,
            "/v1/key-health?provider=x",
            Some("local-token"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api
        .send(Method::GET, "/v1/key-health", Some("local-token"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        answer["providers"],
        serde_json::json!([{"provider": "openai", "keys": [
            {"index": 1, "gateways": 1, "refused_by": 1, "refused_since_ms": 1, "last_status": 403}]}])
    );
}

/// The raw response head of a GET, to check headers.
async fn reqwest_like_get(url: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn leases_over_the_wire() {
    let api = api(common::settings(100)).await;
    let grant = serde_json::json!({
        "quota_id": "team-1/budget",
        "limit": {"name": "burst", "window": {"calendar": "minute"}, "requests": 2, "modelGlobs": [], "providers": []},
        "enforcement": "enforce",
        "amount": {"requests": 1},
    });
    let body = serde_json::to_vec(&grant).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = api
            .send(
                Method::POST,
                "/v1/quota/leases",
                Some("gw-1"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["granted"], true);
        ids.push(v["lease_id"].as_str().unwrap().to_string());
    }
    let r = api
        .send(
            Method::POST,
            "/v1/quota/leases",
            Some("gw-1"),
            Some(body.clone()),
        )
        .await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["granted"], false);
    assert!(v["retry_after_seconds"].as_u64().unwrap() >= 1);
    // Another namespace's gateway cannot lease team-1's quota, nor touch its leases.
    let r = api
        .send(
            Method::POST,
            "/v1/quota/leases",
            Some("gw-other"),
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let ret = serde_json::to_vec(&serde_json::json!({"consumed": {"requests": 1}})).unwrap();
    let r = api
        .send(
            Method::POST,
            &format!("/v1/quota/leases/{}/return", ids[0]),
            Some("gw-other"),
            Some(ret.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .send(
            Method::POST,
            &format!("/v1/quota/leases/{}/return", ids[0]),
            Some("gw-1"),
            Some(ret),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let renew = serde_json::to_vec(
        &serde_json::json!({"consumed": {"requests": 0}, "amount": {"requests": 1}, "bogus": 1}),
    )
    .unwrap();
    let r = api
        .send(
            Method::POST,
            &format!("/v1/quota/leases/{}/renew", ids[1]),
            Some("gw-1"),
            Some(renew),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
}

#[tokio::test]
async fn tls_is_served_and_plain_http_needs_loopback() {
    let dir = common::temp_dir("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.cert.pem()).unwrap();
    tollgate_test_support::process::write_private(
        &dir.join("tls.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let mut options = ServeOptions::local(dir.join("data"), "127.0.0.1:0".parse().unwrap());
    options.tls = Some((dir.join("tls.crt"), dir.join("tls.key")));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = start(options, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let client = HttpClient::new(
        roots_from_pem_file(&dir.join("tls.crt")).unwrap(),
        Duration::from_secs(10),
    );
    let url = format!("https://localhost:{}/live", running.local_addr.port());
    let r = client
        .send(Method::GET, &url, None, None, 1024)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // A client that does not trust the certificate is refused.
    let untrusting = HttpClient::new(public_roots().unwrap(), Duration::from_secs(10));
    assert!(
        untrusting
            .send(Method::GET, &url, None, None, 1024)
            .await
            .is_err()
    );
    // The recorder's trust anchor is written for auditors.
    assert!(dir.join("data/recorder-trust-anchor.yaml").is_file());
    let _ = stop.send(());
    running.handle.await.unwrap();

    let refused = start(
        ServeOptions::local(dir.join("data2"), "0.0.0.0:0".parse().unwrap()),
        async {},
    )
    .await;
    assert!(refused.is_err(), "plain HTTP off loopback must be refused");
}

/// Usage answers are paged by cursor: walking the pages gives exactly the
/// unpaged answer, and bad paging input is a 400 that says what is wrong.
#[tokio::test]
async fn usage_pages_by_cursor_and_refuses_bad_paging() {
    let api = api(common::settings(100)).await;
    let gw = Gateway::new(1).unwrap();
    let stream = gw.stream(24, false).unwrap();
    let ingest = |envelopes: &[tollgate_evidence::Envelope]| {
        let batch = gw.batch_json(envelopes).unwrap();
        let api = &api;
        async move {
            let r = api
                .send(Method::POST, "/v1/receipts", Some("gw-1"), Some(batch))
                .await;
            assert_eq!(r.status, StatusCode::OK);
        }
    };
    ingest(&stream[..12]).await;
    let json = |r: &Response| -> serde_json::Value { serde_json::from_slice(&r.body).unwrap() };
    let query = "/v1/usage?since=2025-02-28T00:00:00Z&group_by=model,caller";
    let whole = json(
        &api.send(Method::GET, query, Some("local-token"), None)
            .await,
    );
    let all_rows = whole["rows"].as_array().unwrap().clone();
    assert_eq!(all_rows.len(), 4, "per model, its caller and none: {whole}");
    assert!(whole.get("next_cursor").is_none());

    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("{query}&page_size=3"),
            Some(c) => format!("{query}&page_size=3&cursor={c}"),
        };
        let r = api
            .send(Method::GET, &path, Some("local-token"), None)
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let page = json(&r);
        assert_eq!(
            page["total"], whole["total"],
            "every page carries the whole total"
        );
        paged.extend(page["rows"].as_array().unwrap().iter().cloned());
        pages += 1;
        if pages == 1 {
            // Receipts that arrive between pages do not shift them.
            ingest(&stream[12..]).await;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!((pages, paged), (2, all_rows));
    let now = json(
        &api.send(Method::GET, query, Some("local-token"), None)
            .await,
    );
    assert_eq!(now["total"]["requests"], 24, "a new query sees them");

    let first = json(
        &api.send(
            Method::GET,
            &format!("{query}&page_size=3"),
            Some("local-token"),
            None,
        )
        .await,
    );
    let cursor = first["next_cursor"].as_str().unwrap();
    for (path, says) in [
        (format!("{query}&page_size=0"), "page_size"),
        (format!("{query}&page_size=10001"), "page_size"),
        (format!("{query}&page_size=3&cursor=not-a-cursor"), "cursor"),
        // The cursor of another query (other grouping, other page size).
        (
            format!(
                "/v1/usage?since=2025-02-28T00:00:00Z&group_by=model&page_size=3&cursor={cursor}"
            ),
            "another query",
        ),
        (format!("{query}&cursor={cursor}"), "another query"),
        ("/v1/usage?group_by=pod".to_string(), "cannot group by"),
        (
            "/v1/usage?since=2020-01-01T00:00:00Z".to_string(),
            "at most 400 days",
        ),
        ("/v1/usage?bucket=week".to_string(), "bucket"),
    ] {
        let r = api
            .send(Method::GET, &path, Some("local-token"), None)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        let detail = problem(&r).detail;
        assert!(detail.contains(says), "{path}: {detail}");
    }
}

#[tokio::test]
async fn the_dashboard_page_is_public_and_its_data_is_not() {
    let api = api(common::settings(100)).await;
    // The page and its files: no token, served with a strict CSP.
    let head = reqwest_like_get(&api.url, "/dashboard/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{head}");
    assert!(
        lower.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(lower.contains("x-frame-options: deny"), "{head}");
    let redirect = reqwest_like_get(&api.url, "/dashboard").await;
    assert!(
        redirect.starts_with("HTTP/1.1 308") && redirect.contains("location: /dashboard/"),
        "{redirect}"
    );
    let chart = api
        .send(Method::GET, "/dashboard/uPlot.iife.min.js", None, None)
        .await;
    assert_eq!(chart.status, StatusCode::OK);
    assert!(chart.body.len() > 10_000);
    for missing in ["/dashboard/nope.js", "/dashboard/vendor/uplot/LICENSE"] {
        let r = api.send(Method::GET, missing, None, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
    }

    // Its data: the caller's token, as for the usage API.
    for path in [
        "/dashboard/api/usage",
        "/dashboard/api/quotas",
        "/dashboard/api/checkpoint",
        "/v1/quotas",
        "/v1/checkpoint",
    ] {
        let r = api.send(Method::GET, path, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let usage = api
        .send(
            Method::GET,
            "/dashboard/api/usage?since=24h&group_by=reason",
            Some("local-token"),
            None,
        )
        .await;
    assert_eq!(usage.status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_slice(&usage.body).unwrap();
    assert_eq!(report["total"]["requests"], 0, "a fresh recorder: {report}");

    // This recorder knows no quotas; it says so instead of failing.
    let quotas = api
        .send(
            Method::GET,
            "/dashboard/api/quotas",
            Some("local-token"),
            None,
        )
        .await;
    assert_eq!(quotas.status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&quotas.body).unwrap();
    assert_eq!(answer["quotas"], serde_json::json!([]));
    assert_eq!(
        answer["unavailable"],
        tollgate_recorder::dashboard::NO_CATALOG
    );
    let bad = api
        .send(
            Method::GET,
            "/v1/quotas?windw=day",
            Some("local-token"),
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        problem(&bad).detail.contains("windw"),
        "{:?}",
        problem(&bad)
    );

    let checkpoint = api
        .send(Method::GET, "/v1/checkpoint", Some("gw-other"), None)
        .await;
    assert_eq!(
        checkpoint.status,
        StatusCode::OK,
        "any authenticated caller"
    );
    let answer: serde_json::Value = serde_json::from_slice(&checkpoint.body).unwrap();
    assert_eq!(answer, serde_json::json!({"checkpoint": null}));
}
