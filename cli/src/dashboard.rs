//! `kubectl tollgate dashboard`: the recorder's usage dashboard for a cluster,
//! reached with nothing but the kubeconfig. A local proxy on loopback serves
//! the page (the recorder's own files, compiled into this binary too) and
//! answers the page's three calls as the user:
//!
//! - `api/usage` through the API server's aggregation layer (the recorder
//!   authorizes the user with `SubjectAccessReview`, as for `usage`);
//! - `api/quotas` from the EgressQuota and ClusterEgressQuota objects, whose
//!   status the operator keeps (the user's own RBAC applies);
//! - `api/checkpoint` through the aggregation layer (public, as `keys`).
//!
//! Only the browser that holds the session secret printed in the URL's fragment
//! gets answers, and only on the proxy's own `Host` (no DNS rebinding).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use kube::api::{Api, ListParams};
use serde_json::json;
use tollgate_crds::quota::{DEFAULT_WARNING_PERCENT, LimitStatus, QuotaLimit, QuotaStatus};
use tollgate_crds::{ClusterEgressQuota, EgressQuota};
use tollgate_recorder::dashboard::{LimitView, QuotaView, QuotasAnswer};

use crate::usage::encode;

/// Flags of `dashboard`.
#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    /// All namespaces (needs `list usage` cluster-wide: the ClusterRole tollgate-auditor).
    #[arg(short = 'A', long = "all-namespaces", conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// One namespace (default: `default`, as kubectl).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Where the local proxy listens (loopback only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Which usage the dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One namespace.
    Namespace(String),
    /// Every namespace.
    All,
}

impl Scope {
    fn of(args: &DashboardArgs) -> Self {
        if args.all_namespaces {
            Self::All
        } else {
            Self::Namespace(args.namespace.clone().unwrap_or_else(|| "default".into()))
        }
    }
}

/// Why the proxy refuses a call of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    status: StatusCode,
    detail: String,
}

impl Refusal {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// The aggregated-API path answering the page's `api/usage?query`: the
/// namespace goes into the path, and a page asking for another namespace than
/// the proxy's is refused. Pure.
pub fn usage_path(scope: &Scope, query: &[(String, String)]) -> Result<String, Refusal> {
    let mut kept = Vec::new();
    for (name, value) in query {
        if name == "namespace" {
            let wanted = (!value.is_empty()).then_some(value.as_str());
            let ours = match scope {
                Scope::Namespace(ns) => Some(ns.as_str()),
                Scope::All => None,
            };
            if wanted.is_some() && wanted != ours {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this dashboard shows {}; start another with -n {value}",
                        ours.map_or("every namespace".into(), |n| format!("namespace {n}"))
                    ),
                ));
            }
            continue;
        }
        kept.push(format!("{}={}", encode(name), encode(value)));
    }
    let base = match scope {
        Scope::Namespace(ns) => format!(
            "{}/namespaces/{}/usage",
            crate::cluster::API_BASE,
            encode(ns)
        ),
        Scope::All => format!("{}/usage", crate::cluster::API_BASE),
    };
    Ok(format!("{base}?{}", kept.join("&")))
}

/// Whether a request's `Host` names the proxy itself (its address, or
/// `localhost` and its port): a page on another name that resolves to
/// loopback (DNS rebinding) gets nothing. Pure.
pub fn host_is_ours(host: Option<&str>, addr: SocketAddr) -> bool {
    host.is_some_and(|h| h == addr.to_string() || h == format!("localhost:{}", addr.port()))
}

/// Whether the `Authorization` header carries the session secret. Compared in
/// time independent of where the first difference is. Pure.
pub fn session_matches(authorization: Option<&str>, secret: &str) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return false;
    };
    given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// One quota object's burn-down as the page shows it: each limit of the spec
/// with the status the operator wrote (limits it has not counted yet are left
/// out). Pure.
pub fn quota_view(
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    limits: &[QuotaLimit],
    warning_percent: Option<u8>,
    status: Option<&QuotaStatus>,
) -> QuotaView {
    let statuses: &[LimitStatus] = status.map_or(&[], |s| &s.limits);
    QuotaView {
        kind,
        namespace,
        name,
        warning_percent: warning_percent.unwrap_or(DEFAULT_WARNING_PERCENT),
        limits: limits
            .iter()
            .filter_map(|spec| {
                let status = statuses.iter().find(|s| s.name == spec.name)?;
                Some(LimitView {
                    spec: spec.clone(),
                    status: status.clone(),
                })
            })
            .collect(),
    }
}

struct Proxy {
    client: kube::Client,
    scope: Scope,
    secret: String,
    addr: SocketAddr,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("scope", &self.scope)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Runs `dashboard` until Ctrl-C.
pub fn run(args: &DashboardArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {}: the dashboard proxy answers as you, so it listens on loopback only",
            args.listen
        );
    }
    crate::usage::runtime()?.block_on(serve(args, out))
}

async fn serve(args: &DashboardArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let client = crate::cluster::client().await?;
    let secret = hex_secret()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let scope = Scope::of(args);
    let proxy = Arc::new(Proxy {
        client,
        scope: scope.clone(),
        secret: secret.clone(),
        addr,
    });
    let mut url = format!("http://{addr}/dashboard/#token={secret}");
    if let Scope::Namespace(ns) = &scope {
        url.push_str("&namespace=");
        url.push_str(&encode(ns));
    }
    writeln!(out, "tollgate dashboard: {url}")?;
    out.flush()?;
    // Whoever reads the URL may close stdout after it: keep serving.
    let _ = writeln!(
        out,
        "tollgate dashboard: open it in a browser on this machine; Ctrl-C stops"
    )
    .and_then(|()| out.flush());
    axum::serve(listener, router(proxy))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the dashboard")?;
    Ok(ExitCode::SUCCESS)
}

fn hex_secret() -> anyhow::Result<String> {
    let bytes = tollgate_recorder::identity::random_bytes().context("making a session secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard/") }))
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route(
            "/dashboard/",
            get(|| async { tollgate_recorder::http::dashboard_file("") }),
        )
        .route(
            "/dashboard/{file}",
            get(|Path(file): Path<String>| async move {
                tollgate_recorder::http::dashboard_file(&file)
            }),
        )
        .route("/dashboard/api/usage", get(usage))
        .route("/dashboard/api/quotas", get(quotas))
        .route("/dashboard/api/checkpoint", get(checkpoint))
        .fallback(|| async { Refusal::new(StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::from_fn_with_state(proxy.clone(), guard))
        .with_state(proxy)
}

/// Every request names the proxy as its host; API calls carry the secret.
async fn guard(State(proxy): State<Arc<Proxy>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !host_is_ours(host, proxy.addr) {
        return Refusal::new(StatusCode::FORBIDDEN, "unexpected Host header").into_response();
    }
    if request.uri().path().starts_with("/dashboard/api/") {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        if !session_matches(authorization, &proxy.secret) {
            return Refusal::new(
                StatusCode::UNAUTHORIZED,
                "open the dashboard with the URL kubectl tollgate dashboard printed",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// `GET path` through the API server as the user, the answer passed on as it
/// came (the API server's status and message on a failure).
async fn through_api_server(client: &kube::Client, path: &str) -> Response {
    let request = match http::Request::get(path).body(Vec::new()) {
        Ok(r) => r,
        Err(e) => return Refusal::new(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match client.request_text(request).await {
        Ok(body) => json_response(body),
        Err(e) => api_refusal(e).into_response(),
    }
}

fn api_refusal(e: kube::Error) -> Refusal {
    match e {
        kube::Error::Api(status) => Refusal::new(
            StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY),
            status.message,
        ),
        other => Refusal::new(
            StatusCode::BAD_GATEWAY,
            format!("reaching the API server: {other}"),
        ),
    }
}

fn json_response(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn usage(
    State(proxy): State<Arc<Proxy>>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    match usage_path(&proxy.scope, &query) {
        Ok(path) => through_api_server(&proxy.client, &path).await,
        Err(refusal) => refusal.into_response(),
    }
}

async fn checkpoint(State(proxy): State<Arc<Proxy>>) -> Response {
    let path = format!("{}/checkpoints", crate::cluster::API_BASE);
    through_api_server(&proxy.client, &path).await
}

async fn quotas(State(proxy): State<Arc<Proxy>>, _headers: HeaderMap) -> Response {
    match quota_answer(&proxy).await {
        Ok(answer) => match serde_json::to_string(&answer) {
            Ok(body) => json_response(body),
            Err(e) => {
                Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
            }
        },
        Err(refusal) => refusal.into_response(),
    }
}

/// The quota objects of the scope with the status the operator wrote;
/// cluster quotas too when every namespace is shown and the user may list them.
async fn quota_answer(proxy: &Proxy) -> Result<QuotasAnswer, Refusal> {
    let params = ListParams::default();
    let namespaced: Api<EgressQuota> = match &proxy.scope {
        Scope::Namespace(ns) => Api::namespaced(proxy.client.clone(), ns),
        Scope::All => Api::all(proxy.client.clone()),
    };
    let mut out: Vec<QuotaView> = namespaced
        .list(&params)
        .await
        .map_err(api_refusal)?
        .items
        .into_iter()
        .map(|q| {
            quota_view(
                "EgressQuota",
                q.metadata.namespace.clone(),
                q.metadata.name.clone().unwrap_or_default(),
                &q.spec.limits,
                q.spec.warning_percent,
                q.status.as_ref(),
            )
        })
        .collect();
    let mut unavailable = None;
    if proxy.scope == Scope::All {
        let cluster: Api<ClusterEgressQuota> = Api::all(proxy.client.clone());
        match cluster.list(&params).await {
            Ok(list) => out.extend(list.items.into_iter().map(|q| {
                quota_view(
                    "ClusterEgressQuota",
                    None,
                    q.metadata.name.clone().unwrap_or_default(),
                    &q.spec.limits,
                    q.spec.warning_percent,
                    q.status.as_ref(),
                )
            })),
            Err(kube::Error::Api(status)) if status.code == 403 => {
                unavailable = Some(format!("cluster quotas are not shown: {}", status.message));
            }
            Err(e) => return Err(api_refusal(e)),
        }
    }
    out.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    Ok(QuotasAnswer {
        quotas: out,
        unavailable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect()
    }

    #[test]
    fn usage_goes_to_the_namespace_path_and_other_namespaces_are_refused() {
        let team = Scope::Namespace("team a".into());
        let path = usage_path(
            &team,
            &q(&[
                ("since", "24h"),
                ("namespace", "team a"),
                ("group_by", "namespace,model"),
            ]),
        )
        .unwrap();
        assert_eq!(
            path,
            "/apis/usage.tollgate.dev/v1alpha1/namespaces/team%20a/usage?since=24h&group_by=namespace%2Cmodel"
        );
        let other = usage_path(&team, &q(&[("namespace", "team-b")])).unwrap_err();
        assert_eq!(other.status, StatusCode::FORBIDDEN);
        assert!(other.detail.contains("-n team-b"), "{}", other.detail);

        let all = usage_path(&Scope::All, &q(&[("cursor", "abc=")])).unwrap();
        assert_eq!(all, "/apis/usage.tollgate.dev/v1alpha1/usage?cursor=abc%3D");
        assert_eq!(
            usage_path(&Scope::All, &q(&[("namespace", "x")]))
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn only_the_proxys_own_host_and_secret_are_let_in() {
        let v4: SocketAddr = "127.0.0.1:8123".parse().unwrap();
        assert!(host_is_ours(Some("127.0.0.1:8123"), v4));
        assert!(host_is_ours(Some("localhost:8123"), v4));
        assert!(!host_is_ours(Some("evil.example:8123"), v4));
        assert!(!host_is_ours(Some("127.0.0.1:8124"), v4));
        assert!(!host_is_ours(None, v4));
        let v6: SocketAddr = "[::1]:8123".parse().unwrap();
        assert!(host_is_ours(Some("[::1]:8123"), v6));
        assert!(!host_is_ours(Some("127.0.0.1:8123"), v6));

        assert!(session_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(!session_matches(Some("Bearer s3creT"), "s3cret"));
        assert!(!session_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!session_matches(Some("s3cret"), "s3cret"));
        assert!(!session_matches(None, "s3cret"));
    }

    #[test]
    fn a_quota_shows_the_limits_the_operator_has_counted() {
        let limit = |name: &str| QuotaLimit {
            time_zone: None,
            name: name.into(),
            window: Some(tollgate_crds::quota::CalendarWindow::Day),
            rolling: None,
            tokens: Some(100),
            requests: None,
            cost_micro_usd: None,
            models: vec![],
            providers: vec![],
        };
        let status = QuotaStatus {
            limits: vec![LimitStatus {
                name: "daily".into(),
                used_percent: Some(42),
                ..LimitStatus::default()
            }],
            ..QuotaStatus::default()
        };
        let view = quota_view(
            "EgressQuota",
            Some("team-a".into()),
            "budget".into(),
            &[limit("daily"), limit("not-counted-yet")],
            None,
            Some(&status),
        );
        assert_eq!(view.warning_percent, DEFAULT_WARNING_PERCENT);
        assert_eq!(view.limits.len(), 1);
        assert_eq!(view.limits[0].spec.name, "daily");
        assert_eq!(view.limits[0].status.used_percent, Some(42));
        let none = quota_view(
            "EgressQuota",
            None,
            "b".into(),
            &[limit("daily")],
            Some(90),
            None,
        );
        assert!(none.limits.is_empty());
        assert_eq!(none.warning_percent, 90);
    }
}
