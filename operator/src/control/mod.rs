//! The control endpoint gateways fetch their config, credentials and key
//! certificate from. Served over HTTPS by every replica.
//!
//! - `GET /v1/gateway/config[?wait=SECONDS]` (with `If-None-Match`): the
//!   compiled config for the caller's namespace, the credentials its
//!   providers name, and the pod it is for; long-polls up to 60 s for a
//!   change.
//! - `POST /v1/gateway/certificate` `{"publicKey": "<base64>"}`: a key
//!   certificate signed by the receipt CA.
//!
//! Every request carries a pod-bound ServiceAccount token for audience
//! `tollgate.dev/gateway`; [`auth`] holds the checks, [`document`] the
//! responses; the stores are the process's shared [`crate::cache`]. Refusals are `application/problem+json`
//! with a `reason`.

pub mod auth;
pub mod document;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::cache::ClusterCache;
use crate::receipt_ca::{CaState, RECEIPT_CA_NAME};
use auth::{GATEWAY_AUDIENCE, Refusal, TokenIdentity};
use tollgate_wire::control::{CertificateRequest, CertificateResponse, ConfigDocument, PodInfo};
use tollgate_wire::problem::{PROBLEM_JSON, Problem as ProblemBody};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Default cap on concurrent long-polls.
pub const DEFAULT_MAX_WAITERS: usize = 10_000;

/// Labels of the request counter: bounded sets only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub outcome: &'static str,
}

/// The control endpoint's metrics.
#[derive(Debug, Clone, Default)]
pub struct ControlMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub waiters: Gauge,
}

impl ControlMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tollgate_operator_control_requests",
            "Control endpoint requests by endpoint and outcome",
            self.requests.clone(),
        );
        registry.register(
            "tollgate_operator_control_waiters",
            "Long-polls waiting for a config change",
            self.waiters.clone(),
        );
    }
}

/// What the handlers share.
pub struct ControlState {
    pub client: kube::Client,
    pub cache: ClusterCache,
    /// The cluster's caller key, sent to every gateway (never logged).
    pub caller_key: tollgate_wire::caller::CallerKey,
    pub waiters: Arc<Semaphore>,
    pub metrics: ControlMetrics,
}

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The control endpoint's routes.
pub fn router(state: Arc<ControlState>) -> Router {
    Router::new()
        .route("/v1/gateway/config", get(get_config))
        .route("/v1/gateway/certificate", post(post_certificate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A refusal or failure as `application/problem+json`.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub reason: &'static str,
    pub detail: String,
}

impl From<Refusal> for Problem {
    fn from(r: Refusal) -> Self {
        Self {
            status: StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN),
            reason: r.reason(),
            detail: r.detail().to_owned(),
        }
    }
}

impl Problem {
    fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            detail: detail.into(),
        }
    }

    fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            type_: "about:blank".to_owned(),
            title: self.status.canonical_reason().unwrap_or("error").to_owned(),
            status: self.status.as_u16(),
            reason: Some(self.reason.to_owned()),
            detail: self.detail,
        };
        let mut response = (self.status, body.to_json()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A caller that passed every check.
#[derive(Debug, Clone)]
struct Caller {
    identity: TokenIdentity,
    labels: BTreeMap<String, String>,
    namespace_labels: BTreeMap<String, String>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl ControlState {
    /// TokenReview, then the pod and namespace checks (fresh reads, not the
    /// cache: a just-deleted pod must not pass).
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let token = bearer(headers).ok_or(Refusal::TokenInvalid)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![GATEWAY_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                Problem::unavailable("the token could not be reviewed; retry")
            })?;
        let status = reviewed.status.unwrap_or_default();
        let identity = auth::identity_from_review(&status, token)?;

        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &identity.namespace);
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let unavailable = |e: kube::Error| {
            tracing::warn!(error = %e, "reading the caller's pod or namespace");
            Problem::unavailable("the pod could not be read; retry")
        };
        let pod = pods
            .get_opt(&identity.pod_name)
            .await
            .map_err(unavailable)?;
        let namespace = namespaces
            .get_opt(&identity.namespace)
            .await
            .map_err(unavailable)?;
        auth::check_pod(&identity, pod.as_ref(), namespace.as_ref())?;
        Ok(Caller {
            labels: pod.and_then(|p| p.metadata.labels).unwrap_or_default(),
            namespace_labels: namespace
                .and_then(|n| n.metadata.labels)
                .unwrap_or_default(),
            identity,
        })
    }

    fn render(&self, caller: &Caller) -> Result<(Vec<u8>, String), Problem> {
        let compiled = self
            .cache
            .compile(&caller.identity.namespace, &caller.namespace_labels);
        let credentials = document::credentials_for(&compiled.config, &self.cache.secrets());
        let doc = ConfigDocument {
            pod: PodInfo {
                namespace: caller.identity.namespace.clone(),
                name: caller.identity.pod_name.clone(),
                uid: caller.identity.pod_uid.clone(),
                service_account: caller.identity.service_account.clone(),
                labels: caller.labels.clone(),
            },
            config: compiled.config,
            credentials,
            caller_key: Some(self.caller_key.expose_hex()),
        };
        doc.render().map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                format!("encoding the config: {e}"),
            )
        })
    }

    /// The receipt CA as the cache holds its Secret (rotation moves it on).
    fn receipt_ca(&self) -> Result<CaState, Problem> {
        let secret = self
            .cache
            .secrets()
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(RECEIPT_CA_NAME))
            .ok_or_else(|| Problem::unavailable("the receipt CA is not loaded yet; retry"))?;
        CaState::from_secret(&secret).map_err(|e| {
            tracing::error!(error = %e, "the receipt CA Secret is unusable");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                "the receipt CA Secret is unusable".to_owned(),
            )
        })
    }

    fn count(&self, endpoint: &'static str, outcome: &'static str) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels { endpoint, outcome })
            .inc();
    }
}

#[derive(Debug, Deserialize)]
struct ConfigQuery {
    wait: Option<u64>,
}

/// `If-None-Match: "<etag>"` (quotes and a weak prefix tolerated).
fn if_none_match(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    Some(value.trim_matches('"').to_owned())
}

async fn get_config(
    State(state): State<Arc<ControlState>>,
    Query(query): Query<ConfigQuery>,
    headers: HeaderMap,
) -> Response {
    match serve_config(&state, query, &headers).await {
        Ok((response, outcome)) => {
            state.count("config", outcome);
            response
        }
        Err(problem) => {
            state.count("config", problem.reason);
            problem.into_response()
        }
    }
}

async fn serve_config(
    state: &ControlState,
    query: ConfigQuery,
    headers: &HeaderMap,
) -> Result<(Response, &'static str), Problem> {
    if !state.cache.is_ready() {
        return Err(Problem::unavailable(
            "the operator's caches are not synced yet",
        ));
    }
    let wait = match query.wait {
        Some(w) if w > MAX_WAIT.as_secs() => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("wait must be at most {} seconds", MAX_WAIT.as_secs()),
            ));
        }
        Some(w) => Duration::from_secs(w),
        None => Duration::ZERO,
    };
    let caller = state.authenticate(headers).await?;
    let known = if_none_match(headers);
    let deadline = tokio::time::Instant::now() + wait;
    let _permit = match (&known, wait.is_zero()) {
        (Some(_), false) => Some(state.waiters.clone().try_acquire_owned().map_err(|_| {
            Problem::unavailable("too many gateways are long-polling; retry later")
        })?),
        _ => None,
    };
    let _waiting = _permit
        .as_ref()
        .map(|_| WaiterGuard::new(&state.metrics.waiters));
    loop {
        // Subscribe before rendering, so no change between the two is missed.
        let mut changes = state.cache.subscribe();
        let (body, etag) = state.render(&caller)?;
        if known.as_deref() != Some(etag.as_str()) {
            return Ok((config_response(StatusCode::OK, body, &etag), "ok"));
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Err(Problem::unavailable("the operator is shutting down"));
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Ok((config_response(StatusCode::NOT_MODIFIED, Vec::new(), &etag), "not_modified"));
            }
        }
    }
}

struct WaiterGuard(Gauge);

impl WaiterGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn config_response(status: StatusCode, body: Vec<u8>, etag: &str) -> Response {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CACHE_CONTROL, "no-store");
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        builder = builder.header(header::ETAG, v);
    }
    if status == StatusCode::OK {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    builder
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn post_certificate(
    State(state): State<Arc<ControlState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve_certificate(&state, &headers, &body).await {
        Ok(response) => {
            state.count("certificate", "ok");
            response
        }
        Err(problem) => {
            state.count("certificate", problem.reason);
            problem.into_response()
        }
    }
}

async fn serve_certificate(
    state: &ControlState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Problem> {
    let caller = state.authenticate(headers).await?;
    let request: CertificateRequest = serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the body must be {{\"publicKey\": \"<base64>\"}}: {e}"),
        )
    })?;
    let now_millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    let ca = state.receipt_ca()?;
    let certificate = document::issue_certificate(
        &request.public_key,
        &caller.identity,
        now_millis,
        document::validity_millis(request.lifetime_seconds),
        ca.signing_key(now_millis),
    )
    .map_err(|e| match e {
        document::IssueError::BadPublicKey => {
            Problem::new(StatusCode::BAD_REQUEST, "InvalidPublicKey", e.to_string())
        }
        other => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            other.to_string(),
        ),
    })?;
    let body = serde_json::to_vec(&CertificateResponse { certificate })
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_etag_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);

        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"ab12\""));
        assert_eq!(if_none_match(&h).as_deref(), Some("ab12"));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"ab12\""),
        );
        assert_eq!(if_none_match(&h).as_deref(), Some("ab12"));
    }

    #[tokio::test]
    async fn problems_are_problem_json_with_a_reason() {
        let response = Problem::from(Refusal::WrongAudience).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["reason"], "WrongAudience");
        assert_eq!(json["status"], 401);

        let response = Problem::from(Refusal::PodNotInjected).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}
