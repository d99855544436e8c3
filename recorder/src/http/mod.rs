//! The recorder's HTTP API (axum). Handlers authenticate, parse, call the
//! [`Recorder`], and serialize; errors become RFC 9457 problems in
//! [`problem`]. Paths:
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/receipts` | batch ingest (`{"certificate", "envelopes"}`) |
//! | GET | `/v1/streams/{stream_id}` | a stream's `next_seq` and `closed` |
//! | POST | `/v1/quota/leases` | grant a lease |
//! | POST | `/v1/quota/leases/{lease_id}/renew` | renew |
//! | POST | `/v1/quota/leases/{lease_id}/return` | return |
//! | GET | `/v1/usage` | usage (`since`, `until`, `namespace`, `group_by`, `bucket`) |
//! | GET | `/v1/bundle` | evidence bundle (`since`/`until`, `segments=A..B`, or `after=SIZE:HASH` [`until`]) |
//! | GET | `/v1/trust-anchor` | the recorder's TrustAnchor (YAML) |
//! | GET | `/v1/quotas` | each quota's burn-down (`namespace`), when the recorder knows the quotas (local mode) |
//! | GET | `/v1/checkpoint` | the newest checkpoint, its signature checked |
//! | PUT | `/v1/key-health` | a gateway's report of its provider keys' health (replaces its last) |
//! | GET | `/v1/key-health` | per provider key: gateways that reported it lately, and how many route around it (readers) |
//! | GET | `/dashboard/` | the usage dashboard (public files; the page reads `/dashboard/api/{usage,quotas,checkpoint}`, the three calls above, with the caller's token) |
//! | GET | `/live`, `/ready`, `/metrics` | health and Prometheus metrics |
//!
//! Through the API server's aggregation layer (`APIService v1alpha1.usage.tollgate.dev`),
//! as the caller's own Kubernetes identity, authorized by `SubjectAccessReview`:
//!
//! | method | path under `/apis/usage.tollgate.dev/v1alpha1` | what |
//! |---|---|---|
//! | GET | `` | API discovery (`APIResourceList`) |
//! | GET | `/usage` | usage of every namespace (`list usage` cluster-wide) |
//! | GET | `/namespaces/{namespace}/usage` | one namespace's usage (`list usage` there) |
//! | GET | `/bundles` | evidence bundle (`list bundles` cluster-wide) |
//! | GET | `/recorderkeys` | the recorder's TrustAnchor (YAML; public: the recorder asks for no user, the chart's RBAC lets every authenticated user through) |
//! | GET | `/checkpoints` | the newest checkpoint (JSON; public as `recorderkeys` is) |

pub mod problem;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::{BodyExt, Limited};
use tollgate_evidence::Timestamp;

use self::tls::Peer;
use crate::auth::{Authenticator, Caller};
use crate::cluster::{AccessReviewer, FrontProxy};
use crate::dashboard::{QuotaCatalog, SECURITY_HEADERS};
use crate::error::RecorderError;
use crate::export::{ExportRange, parse_segment_range};
use crate::metrics::RouteLabels;
use crate::quota::{GrantRequest, RenewRequest, ReturnRequest};
use crate::recorder::Recorder;
use crate::settings::{MAX_EXPORT_BYTES, MAX_LEASE_BODY_BYTES, MAX_USAGE_ROWS};
use crate::usage::{Bucket, Cursor, GroupKey, Page, UsageQuery, query_fingerprint};

/// Default usage range: the last 24 hours.
const DEFAULT_USAGE_RANGE_MS: u64 = 24 * 3_600_000;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The recorder.
    pub recorder: Arc<Recorder>,
    /// Who is calling.
    pub auth: Arc<dyn Authenticator>,
    /// Largest ingest body.
    pub max_body_bytes: usize,
    /// The API server's front proxy, when the recorder serves the aggregated API.
    pub front_proxy: Option<Arc<FrontProxy>>,
    /// Decides what a user the front proxy vouches for may read.
    pub access: Option<Arc<dyn AccessReviewer>>,
    /// The quotas the dashboard shows burn-downs of (local mode).
    pub quotas: Option<Arc<dyn QuotaCatalog>>,
}

/// The aggregated API's base path.
pub const API_BASE: &str = "/apis/usage.tollgate.dev/v1alpha1";

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/receipts", post(ingest))
        .route("/v1/streams/{stream_id}", get(stream))
        .route("/v1/quota/leases", post(grant))
        .route("/v1/quota/leases/{lease_id}/renew", post(renew))
        .route("/v1/quota/leases/{lease_id}/return", post(give_back))
        .route("/v1/usage", get(usage))
        .route("/v1/bundle", get(bundle))
        .route("/v1/trust-anchor", get(trust_anchor))
        .route("/v1/quotas", get(quotas))
        .route("/v1/checkpoint", get(checkpoint))
        .route("/v1/key-health", put(report_key_health).get(key_health))
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(|| async { dashboard_file("") }))
        .route(
            "/dashboard/{file}",
            get(|Path(file): Path<String>| async move { dashboard_file(&file) }),
        )
        .route("/dashboard/api/usage", get(usage))
        .route("/dashboard/api/quotas", get(quotas))
        .route("/dashboard/api/checkpoint", get(checkpoint))
        .route("/apis/usage.tollgate.dev/v1alpha1", get(api_resources))
        .route("/apis/usage.tollgate.dev/v1alpha1/usage", get(api_usage))
        .route(
            "/apis/usage.tollgate.dev/v1alpha1/namespaces/{namespace}/usage",
            get(api_namespace_usage),
        )
        .route("/apis/usage.tollgate.dev/v1alpha1/bundles", get(api_bundle))
        .route(
            "/apis/usage.tollgate.dev/v1alpha1/recorderkeys",
            get(trust_anchor),
        )
        .route(
            "/apis/usage.tollgate.dev/v1alpha1/checkpoints",
            get(api_checkpoint),
        )
        .route("/live", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { RecorderError::NotFound("no such endpoint".into()).into_response() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

const ROUTES: [&str; 26] = [
    "/v1/receipts",
    "/v1/key-health",
    "/v1/streams/{stream_id}",
    "/v1/quota/leases",
    "/v1/quota/leases/{lease_id}/renew",
    "/v1/quota/leases/{lease_id}/return",
    "/v1/usage",
    "/v1/bundle",
    "/v1/trust-anchor",
    "/apis/usage.tollgate.dev/v1alpha1",
    "/apis/usage.tollgate.dev/v1alpha1/usage",
    "/apis/usage.tollgate.dev/v1alpha1/namespaces/{namespace}/usage",
    "/apis/usage.tollgate.dev/v1alpha1/bundles",
    "/apis/usage.tollgate.dev/v1alpha1/recorderkeys",
    "/apis/usage.tollgate.dev/v1alpha1/checkpoints",
    "/v1/quotas",
    "/v1/checkpoint",
    "/dashboard",
    "/dashboard/",
    "/dashboard/{file}",
    "/dashboard/api/usage",
    "/dashboard/api/quotas",
    "/dashboard/api/checkpoint",
    "/live",
    "/ready",
    "/metrics",
];

async fn count_responses(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()).copied())
        .unwrap_or("other");
    let response = next.run(request).await;
    let status = match response.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state
        .recorder
        .metrics()
        .http
        .get_or_create(&RouteLabels { route, status })
        .inc();
    response
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, RecorderError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| RecorderError::Unauthenticated("a bearer token is required".into()))?;
    Ok(state.auth.authenticate(token).await?)
}

async fn read_body(body: Body, max: usize) -> Result<bytes::Bytes, RecorderError> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(RecorderError::TooLarge {
                what: "request body (bytes)",
                limit: max as u64,
            })
        }
        Err(e) => Err(RecorderError::BadRequest(format!("reading the body: {e}"))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RecorderError> {
    tollgate_evidence::strict_json::validate(bytes)
        .map_err(|e| RecorderError::BadRequest(format!("not strict JSON: {e}")))?;
    serde_json::from_slice(bytes).map_err(|e| RecorderError::BadRequest(e.to_string()))
}

async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    let bytes = read_body(body, state.max_body_bytes).await?;
    let response = state.recorder.ingest(&bytes, &caller).await?;
    Ok(Json(response).into_response())
}

async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(stream_id): Path<String>,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    let status = state.recorder.stream_status(&stream_id, &caller).await?;
    Ok(Json(status).into_response())
}

async fn grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    let request: GrantRequest = parse_json(&read_body(body, MAX_LEASE_BODY_BYTES).await?)?;
    Ok(Json(state.recorder.grant(&request, &caller).await?).into_response())
}

async fn renew(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(lease_id): Path<String>,
    body: Body,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    let request: RenewRequest = parse_json(&read_body(body, MAX_LEASE_BODY_BYTES).await?)?;
    Ok(Json(state.recorder.renew(&lease_id, &request, &caller).await?).into_response())
}

async fn give_back(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(lease_id): Path<String>,
    body: Body,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    let request: ReturnRequest = parse_json(&read_body(body, MAX_LEASE_BODY_BYTES).await?)?;
    Ok(Json(
        state
            .recorder
            .give_back(&lease_id, &request, &caller)
            .await?,
    )
    .into_response())
}

/// Parses a time parameter: RFC 3339, or a duration before `now` (`90s`, `15m`,
/// `24h`, `7d`).
pub fn parse_time(value: &str, now_ms: u64) -> Result<u64, RecorderError> {
    let bad = || {
        RecorderError::BadRequest(format!(
            "time {value:?}: use RFC 3339 (2025-03-01T00:00:00Z) or a duration ago (30m, 24h, 7d)"
        ))
    };
    let unit = match value.chars().last() {
        Some('s') => Some(1_000u64),
        Some('m') => Some(60_000),
        Some('h') => Some(3_600_000),
        Some('d') => Some(86_400_000),
        _ => None,
    };
    if let Some(unit) = unit
        && let Ok(n) = value[..value.len() - 1].parse::<u64>()
    {
        return Ok(now_ms.saturating_sub(n.saturating_mul(unit)));
    }
    Timestamp::parse_rfc3339(value)
        .map(Timestamp::unix_millis)
        .map_err(|_| bad())
}

fn only_known(params: &HashMap<String, String>, known: &[&str]) -> Result<(), RecorderError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(RecorderError::BadRequest(format!(
            "unknown parameter {k:?}; known: {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Builds a usage query from URL parameters. With `cursor`, the range is the
/// one the first page resolved, and the other parameters must be the first
/// page's (a cursor from another query is refused).
pub fn usage_query(
    params: &HashMap<String, String>,
    now_ms: u64,
) -> Result<UsageQuery, RecorderError> {
    const QUERY_PARAMS: [&str; 6] = [
        "since",
        "until",
        "namespace",
        "group_by",
        "bucket",
        "page_size",
    ];
    let known: Vec<&str> = QUERY_PARAMS.into_iter().chain(["cursor"]).collect();
    only_known(params, &known)?;
    let mut until_ms = params
        .get("until")
        .map(|u| parse_time(u, now_ms))
        .transpose()?
        .unwrap_or(now_ms);
    let mut since_ms = params
        .get("since")
        .map(|s| parse_time(s, now_ms))
        .transpose()?
        .unwrap_or(until_ms.saturating_sub(DEFAULT_USAGE_RANGE_MS));
    let size = match params.get("page_size") {
        None => MAX_USAGE_ROWS,
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=MAX_USAGE_ROWS) => n,
            _ => {
                return Err(RecorderError::BadRequest(format!(
                    "page_size {v:?}: use 1 to {MAX_USAGE_ROWS}"
                )));
            }
        },
    };
    let query_id =
        query_fingerprint(&QUERY_PARAMS.map(|name| (name, params.get(name).map(String::as_str))));
    let after = match params.get("cursor") {
        None => None,
        Some(text) => {
            let cursor = Cursor::decode(text)?;
            if cursor.query != query_id {
                return Err(RecorderError::BadRequest(
                    "cursor: it belongs to another query; send the first page's parameters with it"
                        .into(),
                ));
            }
            (since_ms, until_ms) = (cursor.since_ms, cursor.until_ms);
            Some((cursor.after, cursor.snapshot))
        }
    };
    let (after, snapshot) = after.unzip();
    Ok(UsageQuery {
        since_ms,
        until_ms,
        namespace: params.get("namespace").filter(|n| !n.is_empty()).cloned(),
        group_by: params
            .get("group_by")
            .map(|g| GroupKey::parse_list(g))
            .transpose()?
            .unwrap_or_default(),
        bucket: params.get("bucket").map(|b| Bucket::parse(b)).transpose()?,
        page: Page {
            size,
            after,
            query_id,
            snapshot,
        },
    })
}

async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    let now = recorder_now(&state);
    let query = usage_query(&params, now)?;
    Ok(Json(state.recorder.usage(&query, &caller).await?).into_response())
}

/// `GET /v1/quotas`: each quota's burn-down, for the quotas of `namespace`
/// (else every namespace) whose usage the caller may read.
async fn quotas(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    only_known(&params, &["namespace"])?;
    let namespace = params
        .get("namespace")
        .map(String::as_str)
        .filter(|n| !n.is_empty());
    let answer = crate::dashboard::quota_burn_down(
        &state.recorder,
        state.quotas.clone(),
        namespace,
        &caller,
    )
    .await?;
    Ok(Json(answer).into_response())
}

/// `PUT /v1/key-health`: a gateway's key health report.
async fn report_key_health(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    let bytes = read_body(body, crate::key_health::MAX_REPORT_BYTES).await?;
    state.recorder.report_key_health(&bytes, &caller).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/key-health`: what the gateways' recent reports say of each key.
async fn key_health(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    only_known(&params, &[])?;
    Ok(Json(state.recorder.key_health(&caller).await?).into_response())
}

/// `GET /v1/checkpoint`: the newest checkpoint, for any authenticated caller.
async fn checkpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, RecorderError> {
    caller(&state, &headers).await?;
    // The dashboard sends its namespace with every call; a checkpoint spans them all.
    only_known(&params, &["namespace"])?;
    Ok(Json(state.recorder.latest_checkpoint().await?).into_response())
}

/// The newest checkpoint through the API server: public, as `recorderkeys` is.
async fn api_checkpoint(State(state): State<AppState>) -> Result<Response, RecorderError> {
    Ok(Json(state.recorder.latest_checkpoint().await?).into_response())
}

/// A file of the dashboard page, with its security headers.
pub fn dashboard_file(name: &str) -> Response {
    let Some(file) = crate::dashboard::asset(name) else {
        return RecorderError::NotFound("no such dashboard file".into()).into_response();
    };
    let mut response = (StatusCode::OK, file.bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type),
    );
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn recorder_now(state: &AppState) -> u64 {
    state.recorder.now_ms()
}

/// Builds an export range from URL parameters.
pub fn export_range(
    params: &HashMap<String, String>,
    now_ms: u64,
) -> Result<ExportRange, RecorderError> {
    only_known(params, &["since", "until", "segments", "after"])?;
    let time = |k: &str| params.get(k).map(|v| parse_time(v, now_ms)).transpose();
    if let Some(after) = params.get("after") {
        if params.contains_key("segments") || params.contains_key("since") {
            return Err(RecorderError::BadRequest(
                "after starts the range at a checkpoint: give it without segments or since".into(),
            ));
        }
        let (size, checkpoint_hash) = crate::export::parse_after(after)?;
        return Ok(ExportRange::After {
            size,
            checkpoint_hash,
            until_ms: time("until")?,
        });
    }
    match (params.get("segments"), time("since")?, time("until")?) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(RecorderError::BadRequest(
            "give either segments or since/until, not both".into(),
        )),
        (Some(s), None, None) => {
            let (first, last) = parse_segment_range(s)?;
            Ok(ExportRange::Segments { first, last })
        }
        (None, None, None) => Ok(ExportRange::Everything),
        (None, since_ms, until) => Ok(ExportRange::Time {
            since_ms,
            until_ms: until.unwrap_or(u64::MAX >> 11),
        }),
    }
}

async fn bundle(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, RecorderError> {
    let caller = caller(&state, &headers).await?;
    export_response(&state, &params, &caller).await
}

async fn export_response(
    state: &AppState,
    params: &HashMap<String, String>,
    caller: &Caller,
) -> Result<Response, RecorderError> {
    let range = export_range(params, recorder_now(state))?;
    let bundle = state.recorder.export(range, caller).await?;
    let bytes = bundle.to_json()?;
    if bytes.len() as u64 > MAX_EXPORT_BYTES {
        return Err(RecorderError::TooLarge {
            what: "bundle (bytes); export a smaller range",
            limit: MAX_EXPORT_BYTES,
        });
    }
    let mut response = (StatusCode::OK, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn peer(extensions: &axum::http::Extensions) -> Option<&Peer> {
    extensions.get::<ConnectInfo<Peer>>().map(|c| &c.0)
}

/// A user the API server's front proxy vouched for, and who decides what it may read.
struct Vouched {
    user: String,
    groups: Vec<String>,
    access: Arc<dyn AccessReviewer>,
}

impl Vouched {
    /// Whether the user may `list` `resource` in `namespace` (cluster-wide: `None`).
    async fn may_list(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<bool, RecorderError> {
        self.access
            .allowed(&self.user, &self.groups, resource, namespace)
            .await
    }
}

/// The user and groups the API server's front proxy vouches for on this request.
/// Only a connection whose client certificate the front-proxy CA verified, with
/// an allowed common name, may name a user in headers.
fn vouched_user(
    state: &AppState,
    peer: Option<&Peer>,
    headers: &HeaderMap,
) -> Result<Vouched, RecorderError> {
    let not_through_api_server = || {
        RecorderError::Unauthenticated(
            "this API is served through the Kubernetes API server only \
             (kubectl tollgate usage, or kubectl get --raw /apis/usage.tollgate.dev/v1alpha1/...)"
                .into(),
        )
    };
    let (Some(front_proxy), Some(access)) = (&state.front_proxy, &state.access) else {
        return Err(not_through_api_server());
    };
    let peer = peer.ok_or_else(not_through_api_server)?;
    if !peer.client_cert || !front_proxy.accepts_name(peer.client_cn.as_deref()) {
        return Err(not_through_api_server());
    }
    let (user, groups) = front_proxy.user(headers).ok_or_else(|| {
        RecorderError::Unauthenticated("the API server's front proxy named no user".into())
    })?;
    Ok(Vouched {
        user,
        groups,
        access: access.clone(),
    })
}

async fn api_resources() -> Response {
    Json(serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "usage.tollgate.dev/v1alpha1",
        "resources": [
            {"name": "usage", "singularName": "usage", "namespaced": true, "kind": "Usage", "verbs": ["list"]},
            {"name": "bundles", "singularName": "bundle", "namespaced": false, "kind": "Bundle", "verbs": ["list"]},
            {"name": "recorderkeys", "singularName": "recorderkey", "namespaced": false, "kind": "RecorderKey", "verbs": ["list"]},
            {"name": "checkpoints", "singularName": "checkpoint", "namespaced": false, "kind": "Checkpoint", "verbs": ["list"]},
        ],
    }))
    .into_response()
}

async fn api_usage(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, RecorderError> {
    let vouched = vouched_user(&state, peer(&extensions), &headers)?;
    let query = usage_query(&params, recorder_now(&state))?;
    let namespace = query.namespace.as_deref();
    let user = vouched.user.clone();
    if !vouched.may_list("usage", namespace).await? {
        return Err(RecorderError::Forbidden(match namespace {
            Some(ns) => format!("{user} may not read usage in namespace {ns:?}"),
            None => format!("{user} may not read usage of every namespace"),
        }));
    }
    let caller = Caller::Reader {
        name: user,
        namespaces: namespace.map(|ns| [ns.to_string()].into()),
    };
    Ok(Json(state.recorder.usage(&query, &caller).await?).into_response())
}

async fn api_namespace_usage(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, RecorderError> {
    if params.contains_key("namespace") {
        return Err(RecorderError::BadRequest(
            "the namespace is in the path; drop the namespace parameter".into(),
        ));
    }
    params.insert("namespace".into(), namespace);
    api_usage(State(state), extensions, headers, Query(params)).await
}

async fn api_bundle(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, RecorderError> {
    let vouched = vouched_user(&state, peer(&extensions), &headers)?;
    let user = vouched.user.clone();
    if !vouched.may_list("bundles", None).await? {
        return Err(RecorderError::Forbidden(format!(
            "{user} may not export evidence bundles (needs list bundles.usage.tollgate.dev cluster-wide)"
        )));
    }
    let caller = Caller::Reader {
        name: user,
        namespaces: None,
    };
    export_response(&state, &params, &caller).await
}

async fn trust_anchor(State(state): State<AppState>) -> Response {
    let mut response = (StatusCode::OK, state.recorder.trust_anchor_yaml()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    response
}

async fn ready(State(state): State<AppState>) -> Result<&'static str, RecorderError> {
    state.recorder.ready().await?;
    Ok("ok")
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = (StatusCode::OK, state.recorder.metrics().encode()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_durations_ago() {
        let now = 1_740_787_200_000;
        assert_eq!(parse_time("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_time("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(parse_time("2025-03-01T00:00:00Z", 0).unwrap(), now);
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn unknown_parameters_are_refused() {
        let mut p = HashMap::new();
        p.insert("sinse".to_string(), "1h".to_string());
        assert!(usage_query(&p, 0).is_err());
        let mut p = HashMap::new();
        p.insert("segments".to_string(), "0..3".to_string());
        assert_eq!(
            export_range(&p, 0).unwrap(),
            ExportRange::Segments { first: 0, last: 3 }
        );
    }

    #[test]
    fn an_export_after_a_checkpoint_takes_until_but_not_since_or_segments() {
        let hash = "cd".repeat(32);
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect()
        };
        let after = format!("7:{hash}");
        let range = export_range(&params(&[("after", &after), ("until", "1h")]), 7_200_000);
        assert_eq!(
            range.unwrap(),
            ExportRange::After {
                size: 7,
                checkpoint_hash: tollgate_evidence::Sha256Hex::parse(&hash).unwrap(),
                until_ms: Some(3_600_000),
            }
        );
        for other in [("since", "1h"), ("segments", "0..1")] {
            let err = export_range(&params(&[("after", &after), other]), 0).unwrap_err();
            assert!(err.to_string().contains("after starts the range"), "{err}");
        }
        assert!(export_range(&params(&[("after", "7")]), 0).is_err());
    }
}
