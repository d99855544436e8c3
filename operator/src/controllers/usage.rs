//! Quota usage from the recorder: the shell that asks `GET /v1/usage` every
//! `--quota-refresh` and folds the answers into each limit's status with the
//! pure arithmetic of [`tollgate_crds::quota_status`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use tollgate_crds::quota::{LimitStatus, QuotaLimit};
pub use tollgate_crds::quota_status::{
    MIN_FORECAST_ELAPSED_SECS, QuotaScope, UsageRow, WindowNow, limit_status, summary,
    used_by_limit, window_of,
};
use tollgate_wire::key_health::KeyHealthAnswer;

/// Most bytes read from one usage answer.
const MAX_USAGE_BODY: usize = 16 * 1024 * 1024;
/// Time allowed for one usage query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Why usage is unknown when no recorder URL is set.
pub const NO_RECORDER: &str = "no recorder is configured (--recorder-url)";
/// The audience the recorder checks on callers' tokens.
pub const RECORDER_AUDIENCE: &str = "tollgate.dev/recorder";

/// What the last refresh learnt about one quota.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageObservation {
    /// The last values read successfully (none before the first success).
    pub limits: Option<Vec<LimitStatus>>,
    /// Why the last refresh failed; none if it succeeded.
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UsageReport {
    rows: Vec<UsageRow>,
    /// Where the next page starts (recorders page answers over 10 000 rows).
    #[serde(default)]
    next_cursor: Option<String>,
}

/// Most pages read for one window's usage.
const MAX_USAGE_PAGES: usize = 100;

/// Where the usage of a refresh comes from.
#[derive(Debug)]
pub struct RecorderSource {
    pub base_url: String,
    client: tollgate_wire::client::HttpClient,
    token: TokenSource,
}

/// How the operator authenticates to the recorder.
#[derive(Debug)]
pub enum TokenSource {
    /// A token file (out of cluster, or a projected token volume); re-read
    /// every refresh, since projected tokens rotate.
    File(PathBuf),
    /// A TokenRequest for the operator's own ServiceAccount, audience
    /// `tollgate.dev/recorder`, renewed at 80 % of its life.
    TokenRequest {
        api: Box<kube::Api<k8s_openapi::api::core::v1::ServiceAccount>>,
        service_account: String,
        cached: Option<(String, tokio::time::Instant)>,
    },
}

/// The in-cluster ServiceAccount token, read only to learn our own
/// ServiceAccount's namespace and name (its `sub` claim).
const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `system:serviceaccount:NS:NAME` from a JWT's payload, unverified: used only
/// to name ourselves.
pub fn service_account_of_jwt(jwt: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    Some((ns.to_string(), name.to_string()))
}

impl RecorderSource {
    /// A source for `base_url`; `token_file` wins over the in-cluster
    /// TokenRequest; `ca_file` is the CA of the recorder's serving
    /// certificate (else the public roots).
    pub fn new(
        client: &kube::Client,
        base_url: &str,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let token = match token_file {
            Some(path) => TokenSource::File(path),
            None => {
                let jwt = std::fs::read_to_string(IN_CLUSTER_TOKEN).map_err(|e| {
                    format!(
                        "no --recorder-token-file and no in-cluster token ({IN_CLUSTER_TOKEN}: {e})"
                    )
                })?;
                let (ns, name) = service_account_of_jwt(jwt.trim()).ok_or_else(|| {
                    "the in-cluster token does not name a ServiceAccount".to_string()
                })?;
                TokenSource::TokenRequest {
                    api: Box::new(kube::Api::namespaced(client.clone(), &ns)),
                    service_account: name,
                    cached: None,
                }
            }
        };
        Self::with_token(base_url, token, ca_file)
    }

    /// A source for `base_url` authenticating with `token`.
    pub fn with_token(
        base_url: &str,
        token: TokenSource,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let tls = match &ca_file {
            Some(path) => tollgate_wire::client::roots_from_pem_file(path),
            None => tollgate_wire::client::public_roots(),
        }
        .map_err(|e| e.to_string())?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            client: tollgate_wire::client::HttpClient::new(tls, QUERY_TIMEOUT),
            token,
        })
    }

    async fn token(&mut self) -> Result<String, String> {
        match &mut self.token {
            TokenSource::File(path) => std::fs::read_to_string(&*path)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("reading the recorder token {}: {e}", path.display())),
            TokenSource::TokenRequest {
                api,
                service_account,
                cached,
            } => {
                if let Some((token, renew_at)) = cached.as_ref()
                    && tokio::time::Instant::now() < *renew_at
                {
                    return Ok(token.clone());
                }
                use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
                let lifetime: i64 = 3600;
                let request = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![RECORDER_AUDIENCE.to_string()],
                        expiration_seconds: Some(lifetime),
                        bound_object_ref: None,
                    },
                    ..TokenRequest::default()
                };
                let answer: TokenRequest = api
                    .create_subresource(
                        "token",
                        service_account,
                        &kube::api::PostParams::default(),
                        &request,
                    )
                    .await
                    .map_err(|e| format!("TokenRequest for the recorder failed: {e}"))?;
                let token = answer
                    .status
                    .map(|s| s.token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| "TokenRequest returned no token".to_string())?;
                let renew_at =
                    tokio::time::Instant::now() + Duration::from_secs(lifetime as u64 * 4 / 5);
                *cached = Some((token.clone(), renew_at));
                Ok(token)
            }
        }
    }

    /// `GET /v1/usage` from `since` (unix seconds) grouped by every dimension,
    /// for one namespace or (none) all.
    pub async fn query(
        &mut self,
        since: u64,
        namespace: Option<&str>,
    ) -> Result<Vec<UsageRow>, String> {
        let since = i64::try_from(since)
            .ok()
            .and_then(|s| Timestamp::from_second(s).ok())
            .ok_or_else(|| "window start out of range".to_string())?;
        let mut first = format!(
            "{}/v1/usage?since={since}&group_by=namespace,serviceAccount,provider,model",
            self.base_url
        );
        if let Some(ns) = namespace {
            first.push_str("&namespace=");
            first.push_str(ns);
        }
        let mut rows = Vec::new();
        let mut url = first.clone();
        for _ in 0..MAX_USAGE_PAGES {
            let page = self.page(&url).await?;
            rows.extend(page.rows);
            match page.next_cursor {
                None => return Ok(rows),
                Some(cursor) => url = format!("{first}&cursor={cursor}"),
            }
        }
        Err(format!(
            "recorder {}: more than {} usage rows in one window",
            self.base_url,
            rows.len()
        ))
    }

    /// One page of a usage answer.
    async fn page(&mut self, url: &str) -> Result<UsageReport, String> {
        self.get_json(url, "usage").await
    }

    /// What the gateways' recent reports say of each provider key.
    pub async fn key_health(&mut self) -> Result<KeyHealthAnswer, String> {
        let url = format!("{}/v1/key-health", self.base_url);
        self.get_json(&url, "key health").await
    }

    /// `GET url` as the operator, its answer parsed (`what` names it in errors).
    async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        url: &str,
        what: &str,
    ) -> Result<T, String> {
        let token = self.token().await?;
        let response = self
            .client
            .send(http::Method::GET, url, Some(&token), None, MAX_USAGE_BODY)
            .await
            .map_err(|e| format!("recorder {}: {e}", self.base_url))?;
        if !response.status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&response.body)
                .ok()
                .and_then(|v| {
                    v.get("detail")
                        .or_else(|| v.get("title"))
                        .and_then(|d| d.as_str().map(str::to_string))
                })
                .unwrap_or_default();
            return Err(format!(
                "recorder {} answered {}: {detail}",
                self.base_url, response.status
            ));
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| format!("recorder {}: unreadable {what} answer: {e}", self.base_url))
    }
}

/// A quota as the refresh sees it.
#[derive(Debug, Clone)]
pub struct QuotaToRefresh {
    /// [`super::world::quota_key`].
    pub key: String,
    /// The namespace filter for the query: the quota's own, or none (all) for
    /// cluster quotas.
    pub query_namespace: Option<String>,
    pub scope: QuotaScope,
    pub limits: Vec<QuotaLimit>,
}

/// One refresh: asks the recorder once per distinct (namespace filter,
/// window start) and folds each quota's limits. Failures keep the previous
/// values and record why; `Err(why)` for the source means there is no usable
/// recorder at all.
pub async fn refresh(
    source: Result<&mut RecorderSource, &str>,
    quotas: &[QuotaToRefresh],
    previous: &BTreeMap<String, UsageObservation>,
    now: u64,
) -> BTreeMap<String, UsageObservation> {
    let mut out = BTreeMap::new();
    let source = match source {
        Ok(source) => source,
        Err(why) => {
            for q in quotas {
                out.insert(
                    q.key.clone(),
                    UsageObservation {
                        limits: previous.get(&q.key).and_then(|p| p.limits.clone()),
                        error: Some(why.to_string()),
                    },
                );
            }
            return out;
        }
    };
    let mut answers: HashMap<(Option<String>, u64), Result<Vec<UsageRow>, String>> = HashMap::new();
    for q in quotas {
        let mut statuses = Vec::new();
        let mut error = None;
        for limit in &q.limits {
            let Some((since, reset_at)) = window_of(limit, now) else {
                continue;
            };
            let key = (q.query_namespace.clone(), since);
            if !answers.contains_key(&key) {
                let answer = source.query(since, q.query_namespace.as_deref()).await;
                answers.insert(key.clone(), answer);
            }
            match answers.get(&key) {
                Some(Ok(rows)) => statuses.push(limit_status(
                    limit,
                    used_by_limit(limit, &q.scope, rows),
                    WindowNow {
                        start: since,
                        reset_at,
                        now,
                    },
                )),
                Some(Err(e)) => {
                    error = Some(e.clone());
                    break;
                }
                None => {}
            }
        }
        let observation = match error {
            None => UsageObservation {
                limits: Some(statuses),
                error: None,
            },
            Some(e) => UsageObservation {
                limits: previous.get(&q.key).and_then(|p| p.limits.clone()),
                error: Some(e),
            },
        };
        out.insert(q.key.clone(), observation);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_crds::quota::CalendarWindow;
    use tollgate_wire::quota_math::Amounts;

    /// A window whose times do not matter to the test.
    const UNTIMED: WindowNow = WindowNow {
        start: 0,
        reset_at: None,
        now: 0,
    };

    fn limit(name: &str) -> QuotaLimit {
        QuotaLimit {
            time_zone: None,
            name: name.into(),
            window: Some(CalendarWindow::Day),
            rolling: None,
            tokens: Some(1_000),
            requests: None,
            cost_micro_usd: Some(500),
            models: vec![],
            providers: vec![],
        }
    }

    fn scope(namespaces: &[&str], sas: &[&str]) -> QuotaScope {
        QuotaScope {
            namespaces: namespaces.iter().map(|s| (*s).to_string()).collect(),
            service_accounts: sas.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    #[test]
    fn the_service_account_is_read_from_the_token_subject() {
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"system:serviceaccount:tollgate-system:tollgate-operator"}"#);
        let jwt = format!("e30.{payload}.sig");
        assert_eq!(
            service_account_of_jwt(&jwt),
            Some(("tollgate-system".into(), "tollgate-operator".into()))
        );
        assert_eq!(service_account_of_jwt("not-a-jwt"), None);
    }

    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

    /// A fake recorder on loopback: answers `GET /v1/usage` with `rows` and
    /// records the query strings and Authorization headers it saw.
    async fn fake_recorder(rows: serde_json::Value, status: u16) -> (String, Seen) {
        use axum::extract::State;
        use axum::http::HeaderMap;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route(
                "/v1/usage",
                axum::routing::get(
                    move |State(seen): State<Seen>, uri: axum::http::Uri, headers: HeaderMap| {
                        let rows = rows.clone();
                        async move {
                            let auth = headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let query = uri.query().unwrap_or_default().to_string();
                            seen.lock().unwrap().push((query.clone(), auth));
                            // One row per page, as a recorder pages big answers.
                            let page: usize = query
                                .split("&cursor=p")
                                .nth(1)
                                .and_then(|p| p.parse().ok())
                                .unwrap_or(0);
                            let all = rows.as_array().cloned().unwrap_or_default();
                            let mut answer = serde_json::json!({
                                "rows": all.get(page).into_iter().collect::<Vec<_>>(),
                                "detail": "nope",
                            });
                            if page + 1 < all.len() {
                                answer["next_cursor"] = format!("p{}", page + 1).into();
                            }
                            (
                                axum::http::StatusCode::from_u16(status).unwrap(),
                                axum::Json(answer),
                            )
                        }
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn token_file(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("tollgate-usage-test-{}-{name}", std::process::id()));
        std::fs::write(&path, "secret-token\n").unwrap();
        path
    }

    #[tokio::test]
    async fn a_refresh_queries_the_recorder_once_per_window_and_folds_the_rows() {
        let (url, seen) = fake_recorder(
            // The row that counts comes on the second page.
            serde_json::json!([
                {"namespace": "a", "service_account": "web", "provider": "openai",
                 "model": "gpt-4o-mini", "requests": 1, "input_tokens": 1000,
                 "output_tokens": 0, "cost_micro_usd": 9},
                {"namespace": "a", "service_account": "batch", "provider": "openai",
                 "model": "gpt-4o-mini", "requests": 2, "input_tokens": 30,
                 "output_tokens": 12, "cost_micro_usd": 40},
            ]),
            200,
        )
        .await;
        let mut source =
            RecorderSource::with_token(&url, TokenSource::File(token_file("ok")), None).unwrap();
        let mut second = limit("also-daily");
        second.tokens = None;
        let quotas = vec![QuotaToRefresh {
            key: "EgressQuota/a/q".into(),
            query_namespace: Some("a".into()),
            scope: scope(&["a"], &["batch"]),
            limits: vec![limit("daily"), second],
        }];
        let now = 1_763_700_000; // 2025-11-21T04:40:00Z
        let out = refresh(Ok(&mut source), &quotas, &BTreeMap::new(), now).await;
        let obs = &out["EgressQuota/a/q"];
        assert_eq!(obs.error, None);
        let limits = obs.limits.as_ref().unwrap();
        assert_eq!(limits[0].used.tokens, Some(42));
        assert_eq!(limits[0].remaining.tokens, Some(958));
        assert_eq!(limits[0].used.cost_micro_usd, Some(40));
        assert_eq!(limits[0].reset_at.as_deref(), Some("2025-11-22T00:00:00Z"));
        assert_eq!(limits[1].used.tokens, None);

        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.len(),
            2,
            "two limits with one window share a query, read in two pages: {seen:?}"
        );
        let first = "since=2025-11-21T00:00:00Z&group_by=namespace,serviceAccount,provider,model&namespace=a";
        assert_eq!(seen[0].0, first);
        assert_eq!(
            seen[1].0,
            format!("{first}&cursor=p1"),
            "the same query, paged"
        );
        assert_eq!(seen[0].1, "Bearer secret-token");
    }

    #[tokio::test]
    async fn a_failing_recorder_keeps_the_last_values_and_reports_its_answer() {
        let (url, _) = fake_recorder(serde_json::json!([]), 503).await;
        let mut source =
            RecorderSource::with_token(&url, TokenSource::File(token_file("down")), None).unwrap();
        let quotas = vec![QuotaToRefresh {
            key: "ClusterEgressQuota/c".into(),
            query_namespace: None,
            scope: scope(&["a"], &[]),
            limits: vec![limit("daily")],
        }];
        let kept = vec![limit_status(&limit("daily"), Amounts::default(), UNTIMED)];
        let previous = BTreeMap::from([(
            "ClusterEgressQuota/c".to_string(),
            UsageObservation {
                limits: Some(kept.clone()),
                error: None,
            },
        )]);
        let out = refresh(Ok(&mut source), &quotas, &previous, 1_000).await;
        let obs = &out["ClusterEgressQuota/c"];
        assert_eq!(obs.limits.as_ref(), Some(&kept));
        let error = obs.error.as_deref().unwrap();
        assert!(error.contains("503") && error.contains("nope"), "{error}");
    }

    #[tokio::test]
    async fn without_a_recorder_every_quota_keeps_its_last_values_and_says_why() {
        let quotas = vec![QuotaToRefresh {
            key: "EgressQuota/a/q".into(),
            query_namespace: Some("a".into()),
            scope: scope(&["a"], &[]),
            limits: vec![limit("daily")],
        }];
        let kept = vec![limit_status(&limit("daily"), Amounts::default(), UNTIMED)];
        let previous = BTreeMap::from([(
            "EgressQuota/a/q".to_string(),
            UsageObservation {
                limits: Some(kept.clone()),
                error: None,
            },
        )]);
        let out = refresh(Err(NO_RECORDER), &quotas, &previous, 1_000).await;
        let obs = &out["EgressQuota/a/q"];
        assert_eq!(obs.limits.as_ref(), Some(&kept));
        assert!(obs.error.as_deref().unwrap().contains("--recorder-url"));
    }
}
