//! The request path in process, without sockets: requests go through the
//! router with `tower::ServiceExt::oneshot`, live providers are answered by
//! HTTP servers on in-memory pipes (`upstream::fake`), and receipt drafts are
//! read from the sink. Every refusal reason is driven here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tollgate_evidence::{Decision, GuardOutcome, Lane};
use tollgate_wire::caller::CallerKey;
use tollgate_wire::config::{
    CompiledLimit, CompiledModel, CompiledPolicy, CompiledProvider, CompiledQuota,
    CredentialsSource, Enforcement, FailMode, GatewayConfig, LimitWindow, PolicyMode, PriceTable,
    ProviderApi, Route, Selector,
};

use super::{Gateway, Identity, Runtime, router};
use crate::api::Endpoint;
use crate::credentials::{ApiKey, Credentials};
use crate::quota::{
    Amounts, BoxFuture, LocalQuotaAuthority, QuotaAuthority, QuotaDecision, Reservation,
};
use crate::receipts::{CheckDraft, DecisionDraft, ReceiptDraft, test_sink};
use crate::upstream::fake::{self, FakeDial};
use crate::upstream::{ConnectError, TlsFingerprint};

const FINGERPRINT: [u8; 32] = [7; 32];
const PROVIDER_KEY: &str = "sk-provider-key-0123456789";
/// A second key, which `Upstream::RefusesRevokedKey` refuses while
/// [`REVOKED`] is set.
const REVOKED_KEY: &str = "sk-revoked-key-9876543210";
static REVOKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// How the in-memory provider behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    /// Answers 200 with a chat completion and its usage.
    Ok,
    /// Answers with this status and an error body.
    Status(u16),
    /// Redirects.
    Redirect,
    /// Accepts the request and never answers.
    Silent,
    /// Closes the connection without answering.
    Hangup,
    /// Refuses the TLS handshake.
    TlsRefused,
    /// Answers 200, over a connection with no certificate fingerprint.
    NoFingerprint,
    /// Answers 401 to requests made with [`REVOKED_KEY`] while [`REVOKED`]
    /// is set, and as `Ok` otherwise.
    RefusesRevokedKey,
}

/// What the in-memory providers saw, by host.
#[derive(Default, Debug)]
struct Seen {
    requests: Vec<(String, http::HeaderMap, Value)>,
    /// The path and query of each request, in the same order.
    paths: Vec<String>,
}

fn dial(behaviour: BTreeMap<String, Upstream>, seen: Arc<Mutex<Seen>>) -> FakeDial {
    FakeDial(Arc::new(move |host: &str| {
        let behaviour = behaviour.get(host).copied().unwrap_or(Upstream::Ok);
        let fingerprint = match behaviour {
            Upstream::TlsRefused => {
                return Err(ConnectError::Tls {
                    host: host.to_owned(),
                    reason: "certificate not trusted".into(),
                });
            }
            Upstream::NoFingerprint => None,
            _ => Some(TlsFingerprint(FINGERPRINT)),
        };
        let (client, server) = tokio::io::duplex(64 * 1024);
        let seen = seen.clone();
        let host = host.to_owned();
        tokio::spawn(async move {
            if behaviour == Upstream::Hangup {
                drop(server);
                return;
            }
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                let host = host.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let bytes = body.collect().await.unwrap().to_bytes();
                    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let revoked = behaviour == Upstream::RefusesRevokedKey
                        && REVOKED.load(std::sync::atomic::Ordering::SeqCst)
                        && parts.headers.get("authorization").is_some_and(|v| {
                            v.as_bytes() == format!("Bearer {REVOKED_KEY}").as_bytes()
                        });
                    {
                        let mut seen = seen.lock().unwrap();
                        seen.paths.push(parts.uri.to_string());
                        seen.requests.push((host, parts.headers, json.clone()));
                    }
                    let behaviour = if revoked {
                        Upstream::Status(401)
                    } else {
                        behaviour
                    };
                    Ok::<_, Infallible>(answer(behaviour, &json).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                .await;
        });
        Ok((client, fingerprint))
    }))
}

async fn answer(behaviour: Upstream, request: &Value) -> http::Response<String> {
    let builder = http::Response::builder().header("content-type", "application/json");
    match behaviour {
        Upstream::Silent => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            builder.status(200).body(String::new()).unwrap()
        }
        Upstream::Redirect => builder
            .status(302)
            .header("location", "https://elsewhere.test/")
            .body(String::new())
            .unwrap(),
        // As providers do, a refused key is quoted, masked.
        Upstream::Status(401) => builder
            .status(401)
            .body(json!({"error": {"message": "Incorrect API key provided: sk-proj-****************wxyz. Check your key.", "type": "invalid_request_error", "code": "invalid_api_key"}}).to_string())
            .unwrap(),
        Upstream::Status(status) => builder
            .status(status)
            .body(json!({"error": {"message": "busy", "type": "server_error"}}).to_string())
            .unwrap(),
        _ => builder
            .status(200)
            .body(
                json!({
                    "id": "chatcmpl-1", "object": "chat.completion",
                    "model": request["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
                })
                .to_string(),
            )
            .unwrap(),
    }
}

fn provider(name: &str, api: ProviderApi, host: &str) -> CompiledProvider {
    CompiledProvider {
        azure_api_version: None,
        aws_region: None,
        web_identity: None,
        vertex: None,
        google_identity: None,
        entra_identity: None,
        name: name.into(),
        api,
        base_url: (api != ProviderApi::DryRun).then(|| format!("https://{host}")),
        hosts: if api == ProviderApi::DryRun {
            vec![]
        } else {
            vec![host.into()]
        },
        credentials: (api != ProviderApi::DryRun).then(|| CredentialsSource {
            secret_name: format!("{name}-keys"),
            keys: vec!["key".into()],
        }),
        models: vec![CompiledModel {
            deployment: None,
            name: "gpt-4o-mini".into(),
            aliases: vec![],
            pricing: PriceTable::default(),
        }],
        upstream_trust: vec![],
        connect_timeout_ms: 1_000,
        first_byte_timeout_ms: 2_000,
        idle_timeout_ms: 2_000,
    }
}

fn route(provider: &str) -> Route {
    Route {
        provider: provider.into(),
        model_globs: vec!["gpt-4o*".into()],
        max_tokens: Some(100),
    }
}

/// One governed pod's gateway, in process.
struct Pod {
    config: GatewayConfig,
    upstream: BTreeMap<String, Upstream>,
    quota: Arc<dyn QuotaAuthority>,
    spool_failed: bool,
    pod_labels: BTreeMap<String, String>,
    keys: bool,
    caller_key: Option<CallerKey>,
    refuse_decisions: bool,
    /// Each provider's keys.
    provider_keys: Vec<&'static str>,
}

impl Pod {
    /// A pod whose policy routes `gpt-4o*` to `openai` (at `api.openai.test`)
    /// then `backup` (at `backup.test`), failover on, secrets blocked.
    fn new() -> Self {
        let policy = CompiledPolicy {
            name: "p".into(),
            pod_selector: Selector::default(),
            mode: PolicyMode::Enforce,
            routes: vec![route("openai"), route("backup")],
            failover: true,
            max_request_bytes: 4096,
            block_secrets: true,
            header_allowlist: vec![],
            fail_mode: FailMode::Closed,
            allow_opt_out: false,
            egress: vec![],
        };
        let config = GatewayConfig {
            version: 1,
            namespace: "team-a".into(),
            policy_hash: String::new(),
            policies: vec![policy],
            providers: vec![
                provider("openai", ProviderApi::Openai, "api.openai.test"),
                provider("backup", ProviderApi::Openai, "backup.test"),
            ],
            quotas: vec![],
        };
        Self {
            config,
            upstream: BTreeMap::new(),
            quota: Arc::new(LocalQuotaAuthority::new()),
            spool_failed: false,
            pod_labels: BTreeMap::new(),
            keys: true,
            caller_key: None,
            refuse_decisions: false,
            provider_keys: vec![PROVIDER_KEY],
        }
    }

    fn policy(&mut self) -> &mut CompiledPolicy {
        &mut self.config.policies[0]
    }

    fn upstream(mut self, host: &str, behaviour: Upstream) -> Self {
        self.upstream.insert(host.into(), behaviour);
        self
    }

    fn start(self) -> Running {
        let credentials =
            Credentials::from_keys(self.config.providers.iter().filter(|_| self.keys).map(|p| {
                let keys = self.provider_keys.iter().map(|k| ApiKey::new(k).unwrap());
                (p.name.clone(), keys.collect())
            }))
            .with_caller_key(self.caller_key);
        let mut runtime = Runtime::build(self.config, credentials, &self.pod_labels).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let dialer = dial(self.upstream, seen.clone());
        for provider in runtime.config.providers.clone() {
            if runtime.clients.contains_key(&provider.name) {
                runtime.clients.insert(
                    provider.name.clone(),
                    fake::provider_client(&provider, dialer.clone()).unwrap(),
                );
            }
        }
        let decisions = Arc::new(Mutex::new(Vec::new()));
        let (sink, drafts) = test_sink(64 * 1024 * 1024, decisions.clone(), self.refuse_decisions);
        if self.spool_failed {
            sink.status.fail_for_test();
        }
        let identity = Identity {
            namespace: "team-a".into(),
            service_account: "app".into(),
            pod: "app-0".into(),
            node_id: "node-1".into(),
            pod_labels: BTreeMap::new(),
        };
        let gateway = Arc::new(Gateway::new(
            runtime,
            self.quota,
            sink,
            identity,
            crate::admin::Metrics::default(),
        ));
        Running {
            gateway,
            drafts,
            seen,
            decisions,
        }
    }
}

struct Running {
    gateway: Arc<Gateway>,
    drafts: UnboundedReceiver<ReceiptDraft>,
    seen: Arc<Mutex<Seen>>,
    /// Forward decisions, in the order the writer took them.
    decisions: Arc<Mutex<Vec<DecisionDraft>>>,
}

/// What the client got.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

impl Running {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = tower::ServiceExt::oneshot(router(self.gateway.clone()), request)
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn chat(&self, body: Value) -> Answer {
        self.send(chat_request(body.to_string())).await
    }

    /// The next receipt draft; waits briefly, as a streamed body ends after
    /// the response is returned.
    async fn receipt(&mut self) -> ReceiptDraft {
        tokio::time::timeout(Duration::from_secs(5), self.drafts.recv())
            .await
            .expect("a receipt draft")
            .expect("the sink is open")
    }

    fn no_receipt(&mut self) {
        assert!(self.drafts.try_recv().is_err(), "no receipt expected");
    }
}

fn chat_request(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer the-apps-own-key")
        .body(body.into())
        .unwrap()
}

fn chat(extra: Value) -> Value {
    let mut body =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

/// Asserts a refusal: status, the OpenAI-style error, and its receipt.
async fn assert_refused(
    running: &mut Running,
    answer: &Answer,
    status: u16,
    reason: &str,
) -> ReceiptDraft {
    assert_eq!(answer.status.as_u16(), status, "{reason}: {answer:?}");
    assert!(
        answer.body["error"]["message"].is_string(),
        "{reason}: an OpenAI-style error body: {answer:?}"
    );
    assert!(
        answer.headers.contains_key("x-tollgate-receipt-id"),
        "{reason}: the receipt id is on the refusal"
    );
    let draft = running.receipt().await;
    assert_eq!(draft.reason, reason);
    assert_eq!(draft.status, status);
    let expected = if status >= 500 {
        Decision::Error
    } else {
        Decision::Deny
    };
    assert_eq!(draft.decision, expected, "{reason}");
    assert_ne!(
        draft.response_sha256, [0; 32],
        "{reason}: the body is hashed"
    );
    draft
}

#[tokio::test]
async fn an_allowed_request_reaches_the_provider_with_its_key_and_not_the_apps() {
    let mut running = Pod::new().start();
    let answer = running.chat(chat(json!({}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["usage"]["total_tokens"], 7);
    let draft = running.receipt().await;
    assert_eq!((draft.decision, draft.reason), (Decision::Allow, "allowed"));
    assert_eq!(draft.provider.as_deref(), Some("openai"));
    assert_eq!(
        draft.usage.map(|u| (u.input, u.output, u.cached)),
        Some((5, 2, 0))
    );
    let upstream = draft.upstream.expect("upstream facts");
    assert_eq!(upstream.tls_cert_sha256, Some(FINGERPRINT));
    assert_eq!((upstream.key_index, upstream.key_count), (0, 1));
    assert_eq!(
        upstream.key_route,
        Some(("gpt-4o-mini".to_string(), "node-1".to_string())),
        "the receipt says what the routing formula hashed"
    );
    let seen = running.seen.lock().unwrap();
    let (host, headers, json) = &seen.requests[0];
    assert_eq!(host, "api.openai.test");
    assert_eq!(
        headers["authorization"],
        format!("Bearer {PROVIDER_KEY}").as_str()
    );
    assert_eq!(json["max_tokens"], 100, "the policy's cap is filled in");
}

#[tokio::test]
async fn a_failing_provider_fails_over_to_the_next_one() {
    let mut running = Pod::new()
        .upstream("api.openai.test", Upstream::Status(503))
        .start();
    let answer = running.chat(chat(json!({}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    // The attempt given up has its own receipt, linked to its own decision.
    let given_up = running.receipt().await;
    assert_eq!(
        (
            given_up.provider.as_deref(),
            given_up.reason,
            given_up.status
        ),
        (Some("openai"), "failed_over.upstream_5xx", 503)
    );
    assert_eq!(given_up.decision, Decision::Error);
    assert!(
        given_up
            .upstream
            .as_ref()
            .unwrap()
            .tls_cert_sha256
            .is_some()
    );
    let draft = running.receipt().await;
    assert_eq!(draft.provider.as_deref(), Some("backup"));
    assert_ne!(given_up.id, draft.id);
    assert_eq!(given_up.request_id, draft.request_id);
    let decisions = running.decisions.lock().unwrap().clone();
    assert_eq!(
        decisions
            .iter()
            .map(|d| (d.attempt, d.provider.as_str(), d.host.as_str()))
            .collect::<Vec<_>>(),
        [
            (0, "openai", "api.openai.test"),
            (1, "backup", "backup.test")
        ]
    );
    assert_eq!(given_up.decision_id.as_ref(), Some(&decisions[0].id));
    assert_eq!(draft.decision_id.as_ref(), Some(&decisions[1].id));
    let hosts: Vec<String> = running
        .seen
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(hosts, ["api.openai.test", "backup.test"]);
}

#[tokio::test]
async fn without_failover_the_providers_error_is_the_answer() {
    let mut pod = Pod::new().upstream("api.openai.test", Upstream::Status(503));
    pod.policy().failover = false;
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    assert_eq!(answer.status.as_u16(), 503);
    let draft = running.receipt().await;
    assert_eq!(
        (draft.decision, draft.reason),
        (Decision::Error, "upstream_5xx")
    );
    assert!(
        draft.upstream.unwrap().tls_cert_sha256.is_some(),
        "a request that reached a provider records its certificate"
    );
}

#[tokio::test]
async fn paths_that_are_not_model_apis_are_refused_without_a_receipt() {
    let mut running = Pod::new().start();
    let answer = running
        .send(Request::get("/v1/files").body(Body::empty()).unwrap())
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["error"]["code"], "not_found");
    let answer = running
        .send(Request::get("/v1/messages").body(Body::empty()).unwrap())
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer.body["type"], "error",
        "Anthropic style for its paths"
    );
    running.no_receipt();
}

#[tokio::test]
async fn a_failed_spool_refuses_unless_the_policy_fails_open() {
    let mut pod = Pod::new();
    pod.spool_failed = true;
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["error"]["code"], "overloaded");
    running.no_receipt();

    let mut pod = Pod::new();
    pod.spool_failed = true;
    pod.policy().fail_mode = FailMode::Open;
    let running = pod.start();
    assert_eq!(running.chat(chat(json!({}))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_pod_no_policy_selects_is_refused() {
    let mut pod = Pod::new();
    pod.policy().pod_selector = Selector {
        match_labels: BTreeMap::from([("app".into(), "other".into())]),
        match_expressions: vec![],
    };
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    assert_refused(&mut running, &answer, 403, "no_policy").await;
}

#[tokio::test]
async fn bodies_are_bounded_read_and_must_be_json_objects() {
    let mut running = Pod::new().start();
    let big = chat(json!({"padding": "x".repeat(5000)}));
    let answer = running.chat(big).await;
    assert_refused(&mut running, &answer, 413, "request_too_large").await;

    let answer = running.send(chat_request("[1, 2]")).await;
    assert_refused(&mut running, &answer, 400, "malformed_json").await;

    let broken = futures::stream::iter([
        Ok(bytes::Bytes::from_static(b"{\"model\":")),
        Err(std::io::Error::other("client went away")),
    ]);
    let answer = running.send(chat_request(Body::from_stream(broken))).await;
    assert_refused(&mut running, &answer, 400, "request_body_unreadable").await;
}

#[tokio::test]
async fn a_secret_in_the_request_is_refused_or_only_recorded_in_audit_mode() {
    let secret =
        chat(json!({"messages": [{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE here"}]}));
    let mut running = Pod::new().start();
    let answer = running.chat(secret.clone()).await;
    let draft = assert_refused(&mut running, &answer, 403, "secret_in_request").await;
    assert_eq!(draft.guards, ["aws_access_key_id"]);
    assert!(
        running.seen.lock().unwrap().requests.is_empty(),
        "nothing went upstream"
    );

    let mut pod = Pod::new();
    pod.policy().mode = PolicyMode::Audit;
    let mut running = pod.start();
    assert_eq!(running.chat(secret).await.status, StatusCode::OK);
    let draft = running.receipt().await;
    assert_eq!(
        draft.guards,
        ["aws_access_key_id", "audit.secret_in_request"]
    );
}

#[tokio::test]
async fn models_must_be_named_allowed_and_within_the_token_cap() {
    let mut running = Pod::new().start();
    let answer = running.chat(json!({"messages": []})).await;
    assert_refused(&mut running, &answer, 400, "model_missing").await;

    let answer = running.chat(chat(json!({"model": "o1-preview"}))).await;
    assert_refused(&mut running, &answer, 403, "model_not_allowed").await;

    let answer = running.chat(chat(json!({"max_tokens": 101}))).await;
    let draft = assert_refused(&mut running, &answer, 400, "max_tokens_over_policy").await;
    assert_eq!(draft.provider.as_deref(), Some("openai"));
    assert_eq!(draft.lane, Lane::Live);
}

fn checks(draft: &ReceiptDraft) -> Vec<(&'static str, GuardOutcome, Option<&str>)> {
    draft
        .checks
        .iter()
        .map(|c: &CheckDraft| (c.guard, c.outcome, c.detail.as_deref()))
        .collect()
}

/// The draft becomes a valid receipt body (its checks agree with its decision).
fn assert_receipt_is_valid(draft: &ReceiptDraft) {
    let workload = tollgate_evidence::Workload {
        namespace: tollgate_evidence::DnsLabel::new("team-a").unwrap(),
        service_account: tollgate_evidence::DnsSubdomain::new("app").unwrap(),
        pod: tollgate_evidence::DnsSubdomain::new("app-0").unwrap(),
    };
    draft.clone().into_body(&workload).unwrap();
}

fn minute_quota(requests: u64, enforcement: Enforcement) -> CompiledQuota {
    CompiledQuota {
        id: "team-a/one-a-minute".into(),
        service_accounts: vec![],
        pod_selector: None,
        limits: vec![CompiledLimit {
            name: "minute".into(),
            window: LimitWindow::Calendar(tollgate_wire::config::CalendarWindow::Minute),
            time_zone: None,
            tokens: None,
            requests: Some(requests),
            cost_micro_usd: None,
            model_globs: vec![],
            providers: vec![],
        }],
        enforcement,
        fail_mode: FailMode::Closed,
    }
}

#[tokio::test]
async fn every_guard_that_ran_is_recorded_with_its_outcome() {
    use GuardOutcome::{AuditOnly, Denied, Passed};
    let mut pod = Pod::new();
    pod.config.quotas = vec![minute_quota(1, Enforcement::Enforce)];
    let mut running = pod.start();
    assert_eq!(running.chat(chat(json!({}))).await.status, StatusCode::OK);
    let clean = running.receipt().await;
    assert_eq!(
        checks(&clean),
        [
            ("secret_scan", Passed, None),
            ("model_allowlist", Passed, None),
            ("max_tokens", Passed, Some("max_tokens.100")),
            ("quota", Passed, None),
        ],
        "checked and clean, guard by guard"
    );
    assert_receipt_is_valid(&clean);

    let answer = running.chat(chat(json!({}))).await;
    let over = assert_refused(&mut running, &answer, 429, "quota_exceeded").await;
    assert_eq!(checks(&over)[3], ("quota", Denied, Some("minute")));
    assert_receipt_is_valid(&over);

    let secret =
        chat(json!({"messages": [{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE here"}]}));
    let answer = running.chat(secret.clone()).await;
    let denied = assert_refused(&mut running, &answer, 403, "secret_in_request").await;
    assert_eq!(
        checks(&denied),
        [("secret_scan", Denied, Some("aws_access_key_id"))],
        "guards after the refusing one did not run, and are not listed"
    );
    assert_receipt_is_valid(&denied);

    let answer = running.chat(chat(json!({"model": "o1-preview"}))).await;
    let draft = assert_refused(&mut running, &answer, 403, "model_not_allowed").await;
    assert_eq!(
        checks(&draft),
        [
            ("secret_scan", Passed, None),
            ("model_allowlist", Denied, None)
        ]
    );

    // Audit mode: every would-deny is audit-only and the request goes on;
    // a shadow quota's would-deny too.
    let mut pod = Pod::new();
    pod.policy().mode = PolicyMode::Audit;
    for route in &mut pod.policy().routes {
        route.model_globs = vec!["gpt-4o".into()];
    }
    pod.config.quotas = vec![minute_quota(0, Enforcement::Shadow)];
    let mut running = pod.start();
    let mut everything = secret;
    everything["max_tokens"] = json!(500);
    let answer = running.chat(everything).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let audited = running.receipt().await;
    assert_eq!(
        checks(&audited),
        [
            ("secret_scan", AuditOnly, Some("aws_access_key_id")),
            ("model_allowlist", AuditOnly, None),
            ("max_tokens", AuditOnly, Some("max_tokens.100")),
            ("quota", AuditOnly, Some("shadow")),
        ]
    );
    assert_eq!(audited.decision, Decision::Allow);
    assert_receipt_is_valid(&audited);

    // No secret scanning configured: the guard is not listed at all.
    let mut pod = Pod::new();
    pod.policy().block_secrets = false;
    let mut running = pod.start();
    assert_eq!(running.chat(chat(json!({}))).await.status, StatusCode::OK);
    let unscanned = running.receipt().await;
    assert!(
        !checks(&unscanned).iter().any(|c| c.0 == "secret_scan"),
        "{:?}",
        unscanned.checks
    );
}

#[tokio::test]
async fn the_end_user_is_hashed_under_the_caller_key_and_the_header_stays_here() {
    let key = CallerKey::from_bytes([5; 32]);
    let mut pod = Pod::new();
    pod.caller_key = Some(key.clone());
    let mut running = pod.start();
    let named = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-tollgate-caller", "alice@example.test")
        .body(Body::from(chat(json!({"user": "bob"})).to_string()))
        .unwrap();
    assert_eq!(running.send(named).await.status, StatusCode::OK);
    let draft = running.receipt().await;
    assert_eq!(draft.caller_hash, Some(key.hash(b"alice@example.test")));
    {
        let seen = running.seen.lock().unwrap();
        let (_, headers, json) = &seen.requests[0];
        assert!(
            !headers.contains_key("x-tollgate-caller"),
            "the caller header is Tollgate's, not the provider's"
        );
        assert_eq!(json["user"], "bob", "the app's own field is passed through");
    }

    assert_eq!(
        running.chat(chat(json!({"user": "bob"}))).await.status,
        StatusCode::OK
    );
    assert_eq!(running.receipt().await.caller_hash, Some(key.hash(b"bob")));
    assert_eq!(running.chat(chat(json!({}))).await.status, StatusCode::OK);
    assert_eq!(running.receipt().await.caller_hash, None, "nobody named");

    // A refused request still says who asked.
    let answer = running
        .chat(chat(json!({"user": "bob", "model": "o1-preview"})))
        .await;
    let refused = assert_refused(&mut running, &answer, 403, "model_not_allowed").await;
    assert_eq!(refused.caller_hash, Some(key.hash(b"bob")));

    // Without a key nothing is hashed: an unkeyed hash of a user id could be
    // reversed by guessing.
    let mut running = Pod::new().start();
    assert_eq!(
        running.chat(chat(json!({"user": "bob"}))).await.status,
        StatusCode::OK
    );
    assert_eq!(running.receipt().await.caller_hash, None);
}

#[tokio::test]
async fn the_apps_request_id_is_kept_as_the_correlation_id_or_refused() {
    let mut running = Pod::new().start();
    let with_id = |ids: &[&str]| {
        let mut request = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Body::from(chat(json!({})).to_string()))
            .unwrap();
        for id in ids {
            request
                .headers_mut()
                .append("x-request-id", HeaderValue::from_str(id).unwrap());
        }
        request
    };
    assert_eq!(
        running.send(with_id(&["app-42:retry/1"])).await.status,
        StatusCode::OK
    );
    let draft = running.receipt().await;
    assert_eq!(
        draft.correlation_id.as_ref().map(|id| id.as_str()),
        Some("app-42:retry/1")
    );
    {
        let seen = running.seen.lock().unwrap();
        let (_, headers, _) = &seen.requests[0];
        assert!(
            !headers.contains_key("x-request-id"),
            "forwarded only when the policy's headerAllowlist names it"
        );
    }
    assert_eq!(running.send(with_id(&[])).await.status, StatusCode::OK);
    assert_eq!(running.receipt().await.correlation_id, None);

    // Text, an over-long id, or two ids: refused (receipted), never dropped.
    for ids in [
        &["please summarise this"][..],
        &[&"x".repeat(129)],
        &["a", "b"],
    ] {
        let answer = running.send(with_id(ids)).await;
        let refused = assert_refused(&mut running, &answer, 400, "invalid_request_id").await;
        assert_eq!(refused.correlation_id, None, "{ids:?}");
    }
    assert_eq!(running.seen.lock().unwrap().requests.len(), 2);
}

/// An authority that always gives the same answer.
#[derive(Debug)]
struct Fixed(QuotaDecision);

impl QuotaAuthority for Fixed {
    fn reserve<'a>(
        &'a self,
        _: &'a [(&'a CompiledQuota, &'a CompiledLimit)],
        _: Amounts,
        _: u64,
    ) -> BoxFuture<'a, QuotaDecision> {
        Box::pin(std::future::ready(self.0.clone()))
    }
    fn settle(&self, _: Reservation, _: Amounts, _: u64) {}
}

#[tokio::test]
async fn an_exhausted_quota_says_when_to_retry_and_an_unreachable_one_fails_closed() {
    let mut pod = Pod::new();
    pod.config.quotas = vec![minute_quota(1, Enforcement::Enforce)];
    let mut running = pod.start();
    assert_eq!(running.chat(chat(json!({}))).await.status, StatusCode::OK);
    let allowed = running.receipt().await;
    assert_eq!(allowed.reason, "allowed");
    let answer = running.chat(chat(json!({}))).await;
    assert_refused(&mut running, &answer, 429, "quota_exceeded").await;
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    let mut pod = Pod::new();
    pod.quota = Arc::new(Fixed(QuotaDecision::Unavailable {
        quota_id: "cluster/budget".into(),
        limit: "daily".into(),
    }));
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    assert_refused(&mut running, &answer, 503, "quota_authority_unavailable").await;
    assert!(running.seen.lock().unwrap().requests.is_empty());
}

#[tokio::test]
async fn a_provider_without_keys_or_a_base_url_or_a_client_is_refused() {
    let mut pod = Pod::new();
    pod.keys = false;
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    let draft = assert_refused(&mut running, &answer, 502, "credentials_unavailable").await;
    assert_eq!(draft.provider.as_deref(), Some("backup"), "both were tried");

    let mut pod = Pod::new();
    pod.config.providers[0].base_url = None;
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    assert_refused(&mut running, &answer, 500, "provider_misconfigured").await;

    let mut pod = Pod::new();
    pod.config.providers[0].base_url = Some("https://api.openai.test/ a space".into());
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    assert_refused(&mut running, &answer, 500, "request_build_failed").await;

    let mut running = Pod::new().start();
    let mut runtime = Runtime::build(
        running.gateway.runtime().config.clone(),
        Credentials::from_keys([(
            "openai".to_string(),
            vec![ApiKey::new(PROVIDER_KEY).unwrap()],
        )]),
        &BTreeMap::new(),
    )
    .unwrap();
    runtime.clients.clear();
    running.gateway.swap_runtime(runtime);
    let answer = running.chat(chat(json!({}))).await;
    assert_refused(&mut running, &answer, 500, "provider_client_missing").await;
}

#[tokio::test]
async fn connection_failures_are_named_and_fail_over_when_allowed() {
    for (behaviour, status, reason) in [
        (Upstream::TlsRefused, 502, "upstream_tls_refused"),
        (Upstream::Hangup, 502, "upstream_failed"),
        (Upstream::Silent, 504, "upstream_timeout"),
    ] {
        let mut pod = Pod::new().upstream("api.openai.test", behaviour);
        pod.policy().failover = false;
        pod.config.providers[0].first_byte_timeout_ms = 200;
        let mut running = pod.start();
        let answer = running.chat(chat(json!({}))).await;
        let draft = assert_refused(&mut running, &answer, status, reason).await;
        assert_eq!(draft.provider.as_deref(), Some("openai"));
        assert_eq!(
            draft.decision_id.as_ref(),
            Some(&running.decisions.lock().unwrap()[0].id),
            "{reason}: the attempt was decided before it was sent"
        );
        // A request sent over a completed TLS handshake names the
        // certificate even without an answer; a refused handshake sent
        // nothing. (A hang-up right after the handshake may or may not have
        // taken the request; either record is honest.)
        let fingerprint = draft.upstream.as_ref().and_then(|u| u.tls_cert_sha256);
        match behaviour {
            Upstream::Silent => assert_eq!(fingerprint, Some(FINGERPRINT), "{reason}"),
            Upstream::TlsRefused => assert_eq!(fingerprint, None, "{reason}"),
            _ => {}
        }

        let mut pod = Pod::new().upstream("api.openai.test", behaviour);
        pod.config.providers[0].first_byte_timeout_ms = 200;
        let mut running = pod.start();
        assert_eq!(
            running.chat(chat(json!({}))).await.status,
            StatusCode::OK,
            "{reason} fails over"
        );
        let given_up = running.receipt().await;
        assert_eq!(given_up.provider.as_deref(), Some("openai"));
        assert_eq!(given_up.reason, format!("failed_over.{reason}"));
        assert!(given_up.decision_id.is_some());
        assert_eq!(running.receipt().await.provider.as_deref(), Some("backup"));
    }
}

#[tokio::test]
async fn hosts_outside_the_allowlist_and_plain_http_are_never_dialed() {
    let mut pod = Pod::new();
    pod.policy().failover = false;
    pod.config.providers[0].base_url = Some("https://evil.test".into());
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    assert_refused(&mut running, &answer, 502, "upstream_host_not_allowed").await;

    let mut pod = Pod::new();
    pod.policy().failover = false;
    pod.config.providers[0].base_url = Some("http://api.openai.test".into());
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    let draft = assert_refused(&mut running, &answer, 502, "upstream_connect_failed").await;
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("plain http")
    );
    assert!(draft.upstream.is_none());
    assert!(running.seen.lock().unwrap().requests.is_empty());
}

#[tokio::test]
async fn redirects_and_connections_without_a_fingerprint_are_refused() {
    let mut running = Pod::new()
        .upstream("api.openai.test", Upstream::Redirect)
        .start();
    let answer = running.chat(chat(json!({}))).await;
    let draft = assert_refused(&mut running, &answer, 502, "upstream_redirect_refused").await;
    assert_eq!(
        draft.provider.as_deref(),
        Some("openai"),
        "no failover after an answer"
    );
    let upstream = draft.upstream.expect("the provider was reached");
    assert_eq!(
        upstream.tls_cert_sha256,
        Some(FINGERPRINT),
        "a request refused after it reached the provider names its certificate"
    );
    assert!(draft.decision_id.is_some());

    let mut running = Pod::new()
        .upstream("api.openai.test", Upstream::NoFingerprint)
        .start();
    let answer = running.chat(chat(json!({}))).await;
    assert_refused(&mut running, &answer, 502, "tls_fingerprint_missing").await;
}

#[tokio::test]
async fn nothing_goes_upstream_without_a_written_forward_decision() {
    let mut running = Pod::new().start();
    assert_eq!(running.chat(chat(json!({}))).await.status, StatusCode::OK);
    let draft = running.receipt().await;
    let decisions = running.decisions.lock().unwrap().clone();
    assert_eq!(decisions.len(), 1);
    let decision = &decisions[0];
    assert_eq!(draft.decision_id.as_ref(), Some(&decision.id));
    assert_eq!(
        (decision.request_id.as_str(), decision.request_sha256),
        (draft.request_id.as_str(), draft.request_sha256)
    );
    assert_eq!(
        (decision.model.as_str(), decision.started_at_ms),
        ("gpt-4o-mini", draft.started_at_ms)
    );
    assert!(decision.decided_at_ms >= decision.started_at_ms);

    // The writer could not take the decision: refused, and nothing was sent.
    let mut pod = Pod::new();
    pod.refuse_decisions = true;
    let mut running = pod.start();
    let answer = running.chat(chat(json!({}))).await;
    let draft = assert_refused(&mut running, &answer, 503, "receipt_spool_unavailable").await;
    assert!(draft.decision_id.is_none() && draft.upstream.is_none());
    assert!(running.seen.lock().unwrap().requests.is_empty());

    // The dry-run lane never goes upstream and decides nothing.
    let mut pod = Pod::new();
    pod.config.providers[0] = provider("openai", ProviderApi::DryRun, "");
    let mut running = pod.start();
    assert_eq!(running.chat(chat(json!({}))).await.status, StatusCode::OK);
    assert!(running.receipt().await.decision_id.is_none());
    assert!(running.decisions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn with_no_candidates_left_no_provider_is_available() {
    // `serve` never forwards without a candidate; the loop's own answer for
    // that case is still a refusal, not a panic.
    let running = Pod::new().start();
    let runtime = running.gateway.runtime();
    let ticket = super::Ticket::new(
        running.gateway.clone(),
        runtime.clone(),
        crate::api::Endpoint::ChatCompletions,
        std::time::Instant::now(),
    );
    let settle = super::metered::Settle::new(
        running.gateway.quota.clone(),
        Reservation::default(),
        Amounts::default(),
        0,
    );
    let outgoing = super::forward::Outgoing {
        json: json!({}),
        original: bytes::Bytes::new(),
        rewrite: false,
        strip_injected_usage: false,
    };
    let refused = super::forward::forward(
        &ticket,
        &http::HeaderMap::new(),
        outgoing,
        &[],
        runtime.policy.as_ref().unwrap(),
        settle,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.refusal.row().reason, "no_provider_available");
    assert_eq!(refused.refusal.status(), 502);
}

#[tokio::test]
async fn a_provider_error_reaches_the_app_with_the_quoted_key_scrubbed() {
    let mut running = Pod::new()
        .upstream("api.openai.test", Upstream::Status(401))
        .start();
    let answer = running.chat(chat(json!({}))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    assert_eq!(
        answer.body["error"]["message"],
        "Incorrect API key provided: sk-[redacted]. Check your key."
    );
    assert_eq!(answer.body["error"]["code"], "invalid_api_key");
    let receipt = running.receipt().await;
    assert_eq!((receipt.status, receipt.reason), (401, "upstream_4xx"));
}

#[tokio::test]
async fn a_refused_key_leaves_routing_and_a_probe_brings_it_back() {
    let mut pod = Pod::new().upstream("api.openai.test", Upstream::RefusesRevokedKey);
    pod.provider_keys = vec![PROVIDER_KEY, REVOKED_KEY];
    pod.policy().failover = false;
    let mut running = pod.start();
    let with_key = |running: &Running, key: &str| {
        running
            .seen
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(_, h, _)| h["authorization"] == format!("Bearer {key}").as_str())
            .count()
    };
    // Distinct requests spread over both keys until one meets the revoked key.
    let mut refused = None;
    for n in 0..64 {
        let answer = running
            .chat(chat(
                json!({"messages": [{"role": "user", "content": format!("q{n}")}]}),
            ))
            .await;
        let draft = running.receipt().await;
        let upstream = draft.upstream.clone().unwrap();
        assert_eq!(upstream.key_count, 2);
        if answer.status == StatusCode::UNAUTHORIZED {
            refused = Some(upstream.key_index);
            break;
        }
    }
    assert_eq!(refused, Some(1), "the revoked key was never chosen");

    // Now every request routes over the one healthy key, and succeeds.
    let before = with_key(&running, REVOKED_KEY);
    for n in 100..116 {
        let answer = running
            .chat(chat(
                json!({"messages": [{"role": "user", "content": format!("q{n}")}]}),
            ))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        let upstream = running.receipt().await.upstream.unwrap();
        assert_eq!((upstream.key_index, upstream.key_count), (0, 1));
    }
    assert_eq!(
        with_key(&running, REVOKED_KEY),
        before,
        "the refused key is not used"
    );
    let runtime = running.gateway.runtime();
    let keys = runtime.key_health.snapshot(&runtime.key_counts());
    assert_eq!(
        keys.iter()
            .map(|k| (k.provider.as_str(), k.index, k.state.as_str()))
            .collect::<Vec<_>>(),
        [
            ("openai", 0, "healthy"),
            ("openai", 1, "unhealthy"),
            ("backup", 0, "healthy"),
            ("backup", 1, "healthy")
        ]
    );

    // A probe before the backoff ends is not made; after it, still refused,
    // then accepted once the key works again.
    let now = crate::receipts::unix_millis();
    super::forward::probe_due_keys_at(&running.gateway, now).await;
    assert_eq!(with_key(&running, REVOKED_KEY), before);
    super::forward::probe_due_keys_at(&running.gateway, now + 31_000).await;
    assert_eq!(with_key(&running, REVOKED_KEY), before + 1, "one probe");
    assert_eq!(runtime.key_health.routable("openai", 2).to_vec(), [0]);
    REVOKED.store(false, std::sync::atomic::Ordering::SeqCst);
    super::forward::probe_due_keys_at(&running.gateway, now + 31_000 + 60_000).await;
    assert_eq!(with_key(&running, REVOKED_KEY), before + 2);
    assert_eq!(
        runtime.key_health.routable("openai", 2).to_vec(),
        [0, 1],
        "back in routing"
    );
    let probe = running
        .seen
        .lock()
        .unwrap()
        .requests
        .last()
        .map(|(host, _, body)| (host.clone(), body.clone()))
        .unwrap();
    assert_eq!(
        probe,
        ("api.openai.test".to_string(), Value::Null),
        "a bodiless GET"
    );
}

#[tokio::test]
async fn an_azure_provider_is_called_at_its_deployment_with_its_api_key() {
    let azure = |version: &str| {
        let mut p = provider("azure", ProviderApi::AzureOpenai, "res.openai.azure.test");
        p.azure_api_version = Some(version.into());
        p.models[0].deployment = Some("mini-prod".into());
        p
    };
    for version in ["2024-10-21", "v1"] {
        let mut pod = Pod::new();
        pod.config.providers = vec![azure(version)];
        pod.policy().routes = vec![route("azure")];
        let mut running = pod.start();
        // As the Azure SDK sends it: the deployment in the path, its own
        // api-version and key.
        let request =
            Request::post("/openai/deployments/mini-prod/chat/completions?api-version=1999-01-01")
                .header("content-type", "application/json")
                .header("api-key", "the-apps-own-key")
                .body(Body::from(
                    json!({"messages": [{"role": "user", "content": "hello"}]}).to_string(),
                ))
                .unwrap();
        let answer = running.send(request).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        let draft = running.receipt().await;
        assert_eq!(draft.model_requested.as_deref(), Some("mini-prod"));
        assert_eq!(draft.provider.as_deref(), Some("azure"));
        // A plain OpenAI client asking for the model by its name.
        assert_eq!(running.chat(chat(json!({}))).await.status, StatusCode::OK);
        running.receipt().await;

        let seen = running.seen.lock().unwrap();
        let expected = match version {
            "v1" => "/openai/v1/chat/completions".to_string(),
            v => format!("/openai/deployments/mini-prod/chat/completions?api-version={v}"),
        };
        assert_eq!(seen.paths, [expected.clone(), expected], "{version}");
        for (host, headers, body) in &seen.requests {
            assert_eq!(host, "res.openai.azure.test");
            assert_eq!(headers["api-key"], PROVIDER_KEY);
            assert!(headers.get("authorization").is_none(), "{headers:?}");
            assert_eq!(
                body["model"], "mini-prod",
                "the deployment, for the v1 paths"
            );
        }
    }
}

fn gemini_request(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .header("x-goog-api-key", "the-apps-own-key")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_gemini_provider_gets_the_model_in_its_path_and_its_own_key() {
    let mut pod = Pod::new();
    pod.config.providers = vec![provider(
        "gemini",
        ProviderApi::Gemini,
        "generativelanguage.test",
    )];
    pod.policy().routes = vec![route("gemini")];
    let mut running = pod.start();
    let contents = json!([{"role": "user", "parts": [{"text": "hello"}]}]);
    // As the Google Gen AI SDK sends it; an API key in the query too.
    let answer = running
        .send(gemini_request(
            "/v1beta/models/gpt-4o-mini:generateContent?key=the-apps-own-key",
            json!({"contents": contents}),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let draft = running.receipt().await;
    assert_eq!(draft.model_requested.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(draft.endpoint, Endpoint::GenerateContent);
    assert_receipt_is_valid(&draft);
    // The v1 API stays v1; a batch's models are the path's.
    let batch = json!({"requests": [
        {"model": "models/gpt-4o-mini", "content": {"parts": [{"text": "a"}]}},
        {"content": {"parts": [{"text": "b"}]}},
    ]});
    let answer = running
        .send(gemini_request(
            "/v1/models/gemini:gpt-4o-mini:batchEmbedContents",
            batch,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    running.receipt().await;
    {
        let seen = running.seen.lock().unwrap();
        assert_eq!(
            seen.paths,
            [
                "/v1beta/models/gpt-4o-mini:generateContent",
                "/v1/models/gpt-4o-mini:batchEmbedContents"
            ],
            "no client query leaves"
        );
        for (host, headers, _) in &seen.requests {
            assert_eq!(host, "generativelanguage.test");
            assert_eq!(headers["x-goog-api-key"], PROVIDER_KEY);
            assert!(headers.get("authorization").is_none(), "{headers:?}");
        }
        let (_, _, generate) = &seen.requests[0];
        assert_eq!(generate["contents"], contents);
        assert_eq!(
            generate["generationConfig"]["maxOutputTokens"], 100,
            "the policy's cap, filled in"
        );
        assert!(generate.get("model").is_none());
        let (_, _, embed) = &seen.requests[1];
        assert_eq!(embed["requests"][0]["model"], "models/gpt-4o-mini");
        assert!(embed["requests"][1].get("model").is_none());
    }

    // A body naming another model than its path is refused, in Google's
    // error format, with a receipt.
    let smuggled = json!({"requests": [{"model": "models/gemini-ultra", "content": {}}]});
    let answer = running
        .send(gemini_request(
            "/v1beta/models/gpt-4o-mini:batchEmbedContents",
            smuggled,
        ))
        .await;
    assert_eq!(answer.body["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(answer.body["error"]["code"], 400);
    assert_refused(&mut running, &answer, 400, "model_mismatch").await;
    // Over the cap, and a model the policy does not allow.
    let answer = running
        .send(gemini_request(
            "/v1beta/models/gpt-4o-mini:streamGenerateContent?alt=sse",
            json!({"contents": contents, "generationConfig": {"maxOutputTokens": 101}}),
        ))
        .await;
    assert_refused(&mut running, &answer, 400, "max_tokens_over_policy").await;
    let answer = running
        .send(gemini_request(
            "/v1beta/models/gemini-2.5-pro:generateContent",
            json!({"contents": contents}),
        ))
        .await;
    assert_eq!(answer.body["error"]["status"], "PERMISSION_DENIED");
    assert_refused(&mut running, &answer, 403, "model_not_allowed").await;
    // A stream in any framing but SSE is no path the gateway serves.
    let answer = running
        .send(gemini_request(
            "/v1beta/models/gpt-4o-mini:streamGenerateContent",
            json!({"contents": contents}),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["error"]["status"], "NOT_FOUND");
    running.no_receipt();
    assert_eq!(running.seen.lock().unwrap().paths.len(), 2);
}

#[tokio::test]
async fn a_bedrock_request_is_re_signed_with_the_providers_credentials() {
    let model = "anthropic.claude-3-5-haiku-20241022-v1:0";
    let mut pod = Pod::new();
    let mut bedrock = provider(
        "bedrock",
        ProviderApi::Bedrock,
        "bedrock-runtime.us-east-1.test",
    );
    bedrock.aws_region = Some("us-east-1".into());
    bedrock.models[0].name = model.into();
    pod.config.providers = vec![bedrock];
    pod.policy().routes = vec![Route {
        provider: "bedrock".into(),
        model_globs: vec!["anthropic.*".into()],
        max_tokens: Some(100),
    }];
    pod.provider_keys = vec!["AKIAPROVIDER0000:provider-secret-key"];
    let mut running = pod.start();
    // As boto3 sends it: the id escaped, signed with the app's own keys.
    let converse = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": [{"text": "hello"}]}]});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        Request::post("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse")
            .header("content-type", "application/json")
            .header("authorization", "AWS4-HMAC-SHA256 Credential=AKIAAPPKEY/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00")
            .header("x-amz-date", "20260101T000000Z")
            .header("x-amz-security-token", "the-apps-session-token")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let answer = running.send(converse(json!({}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let draft = running.receipt().await;
    assert_eq!(draft.model_requested.as_deref(), Some(model));
    assert_eq!(draft.endpoint, Endpoint::Converse);
    assert_receipt_is_valid(&draft);
    {
        let seen = running.seen.lock().unwrap();
        assert_eq!(
            seen.paths,
            ["/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"]
        );
        let (host, headers, body) = &seen.requests[0];
        assert_eq!(host, "bedrock-runtime.us-east-1.test");
        let auth = headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAPROVIDER0000/"),
            "{auth}"
        );
        assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
        assert_ne!(headers["x-amz-date"], "20260101T000000Z");
        assert!(headers.get("x-amz-security-token").is_none());
        assert_eq!(
            body["inferenceConfig"]["maxTokens"], 100,
            "the policy's cap"
        );
        assert!(body.get("model").is_none(), "the path names the model");
    }
    // Over the cap: refused in Bedrock's error format.
    let answer = running
        .send(converse(json!({"inferenceConfig": {"maxTokens": 500}})))
        .await;
    assert_eq!(answer.body["__type"], "ValidationException");
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    running.receipt().await;
    // A key that is no ACCESS_KEY_ID:SECRET pair signs nothing.
    let mut pod = Pod::new();
    let mut bedrock = provider("bedrock", ProviderApi::Bedrock, "b.test");
    bedrock.aws_region = Some("us-east-1".into());
    bedrock.models[0].name = model.into();
    pod.config.providers = vec![bedrock];
    pod.policy().routes = vec![Route {
        provider: "bedrock".into(),
        model_globs: vec!["*".into()],
        max_tokens: None,
    }];
    let mut running = pod.start();
    let answer = running.send(converse(json!({}))).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    let draft = running.receipt().await;
    assert_eq!(draft.reason, "credentials_unavailable");
    assert!(running.seen.lock().unwrap().paths.is_empty());
}

fn vertex_provider() -> CompiledProvider {
    let mut vertex = provider("vertex", ProviderApi::Vertex, "aiplatform.test");
    vertex.vertex = Some(tollgate_wire::config::VertexTarget {
        project: "tollgate-prod".into(),
        location: "europe-west4".into(),
    });
    vertex
}

#[tokio::test]
async fn a_vertex_provider_gets_its_own_project_location_and_key() {
    let mut pod = Pod::new();
    pod.config.providers = vec![vertex_provider()];
    pod.policy().routes = vec![route("vertex")];
    let mut running = pod.start();
    let contents = json!([{"role": "user", "parts": [{"text": "hello"}]}]);
    // As the Google Gen AI SDK sends it in Vertex mode, with the app's own
    // bearer token and project.
    let answer = running
        .send(
            Request::post(
                "/v1beta1/projects/app-project/locations/us-central1/publishers/google/models/gpt-4o-mini:generateContent",
            )
            .header("content-type", "application/json")
            .header("authorization", "Bearer ya29.the-apps-own-token")
            .body(Body::from(json!({"contents": contents}).to_string()))
            .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let draft = running.receipt().await;
    assert_eq!(draft.endpoint, Endpoint::GenerateContent);
    assert_eq!(draft.model_requested.as_deref(), Some("gpt-4o-mini"));
    assert_receipt_is_valid(&draft);
    // A Gemini API client routed to Vertex AI: its beta is Vertex's, and its
    // count's wrapper is unwrapped (Vertex has none).
    let count =
        json!({"generateContentRequest": {"model": "models/gpt-4o-mini", "contents": contents}});
    let answer = running
        .send(gemini_request(
            "/v1beta/models/gpt-4o-mini:countTokens",
            count,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    running.receipt().await;
    let seen = running.seen.lock().unwrap();
    let prefix = "/v1beta1/projects/tollgate-prod/locations/europe-west4/publishers/google/models/gpt-4o-mini";
    assert_eq!(
        seen.paths,
        [
            format!("{prefix}:generateContent"),
            format!("{prefix}:countTokens")
        ]
    );
    for (host, headers, _) in &seen.requests {
        assert_eq!(host, "aiplatform.test");
        assert_eq!(headers["x-goog-api-key"], PROVIDER_KEY);
        assert!(headers.get("authorization").is_none(), "{headers:?}");
    }
    assert_eq!(seen.requests[1].2, json!({"contents": contents}));
}

#[tokio::test]
async fn a_vertex_provider_without_a_workload_identity_token_fails_closed() {
    let mut pod = Pod::new();
    let mut vertex = vertex_provider();
    vertex.credentials = None;
    vertex.google_identity = Some(tollgate_wire::config::GoogleIdentitySource {
        audience:
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q"
                .into(),
        sts_url: "https://aiplatform.test/v1/token".into(),
        impersonation_url: None,
    });
    pod.config.providers = vec![vertex];
    pod.policy().routes = vec![route("vertex")];
    let mut running = pod.start();
    let answer = running
        .send(gemini_request(
            "/v1/models/gpt-4o-mini:generateContent",
            json!({"contents": []}),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert_eq!(answer.body["error"]["status"], "UNAVAILABLE", "{answer:?}");
    let draft = running.receipt().await;
    assert_eq!(draft.reason, "credentials_unavailable");
    assert!(running.seen.lock().unwrap().paths.is_empty());
}
