//! Credentials from the pod's own identity, with no stored key: the gateway
//! reads a projected ServiceAccount token whose audience only gateway
//! containers can be given (`tollgate.dev/aws`, `tollgate.dev/gcp`,
//! `tollgate.dev/azure`), trades
//! it with the cloud's token service for short-lived credentials, keeps
//! them in memory and trades again well before they expire. Nothing is
//! written anywhere; the app container never sees a token or a credential.
//!
//! The clouds differ only in the exchange: AWS `AssumeRoleWithWebIdentity`
//! ([`crate::web_identity`]) gives SigV4 credentials, Google workload
//! identity federation ([`crate::google_identity`]) and Microsoft Entra
//! workload identity ([`crate::entra_identity`]) a bearer token. The cache,
//! the refresh loop and the bounds are shared and live here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tollgate_wire::config::CompiledProvider;

use crate::aws_signing::AwsCredentials;
use crate::credentials::ApiKey;

/// Refresh this long before the credentials expire (the AWS SDKs use 5 to
/// 15 minutes, Google's auth libraries a few minutes).
pub const REFRESH_BEFORE_MS: u64 = 10 * 60 * 1000;
/// How long asked for: the services' default and usual maximum.
pub const LIFETIME_SECONDS: u32 = 3600;
/// The largest token service answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// How long one exchange may take, every step and answer body included.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The least time between a refresh and another that a refusal asks for:
/// a provider that refuses every token does not turn each request into an
/// exchange.
const MIN_REFUSED_REFRESH_MS: u64 = 30_000;
/// The largest token file read.
pub(crate) const MAX_TOKEN_BYTES: u64 = 16 * 1024;

/// What a token service issued. `Debug` shows no secret (an AWS key id at
/// most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    /// Temporary AWS credentials, to sign with.
    Aws(AwsCredentials),
    /// An OAuth access token, sent as `Authorization: Bearer`.
    Bearer(ApiKey),
}

/// Issued credentials and when they end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub issued: Issued,
    pub expires_at_ms: u64,
}

impl Held {
    /// Whether these are due a refresh at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms.saturating_add(REFRESH_BEFORE_MS) >= self.expires_at_ms
    }

    /// Whether these are still good at `now_ms`.
    pub fn valid(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// Why an exchange failed. Never holds the token or a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("the identity token file {0} cannot be read")]
    TokenUnreadable(String),
    #[error("the token service could not be reached: {0}")]
    Unreachable(String),
    #[error("the token service refused the exchange ({status}): {code}")]
    Refused { status: u16, code: String },
    #[error("the token service answered with no usable credentials")]
    Malformed,
}

/// The projected token files, one per cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFiles {
    /// Audience `tollgate.dev/aws`.
    pub aws: PathBuf,
    /// Audience `tollgate.dev/gcp`.
    pub gcp: PathBuf,
    /// Audience `tollgate.dev/azure`.
    pub azure: PathBuf,
}

/// The identity a provider's credentials come from, if not from keys.
enum Source<'p> {
    Aws(&'p tollgate_wire::config::WebIdentitySource),
    Google(&'p tollgate_wire::config::GoogleIdentitySource),
    Entra(&'p tollgate_wire::config::EntraIdentitySource),
}

impl Source<'_> {
    fn of(provider: &CompiledProvider) -> Option<Source<'_>> {
        if let Some(aws) = &provider.web_identity {
            return Some(Source::Aws(aws));
        }
        if let Some(google) = &provider.google_identity {
            return Some(Source::Google(google));
        }
        provider.entra_identity.as_ref().map(Source::Entra)
    }

    /// What the cache keys credentials by besides the provider: a change of
    /// role, pool or service account is a new entry.
    fn key(&self) -> String {
        match self {
            Source::Aws(s) => format!("aws {} {}", s.role_arn, s.sts_url),
            Source::Google(s) => format!(
                "gcp {} {} {}",
                s.audience,
                s.sts_url,
                s.impersonation_url.as_deref().unwrap_or("-")
            ),
            Source::Entra(s) => format!("azure {} {}", s.token_url, s.client_id),
        }
    }
}

/// Whether `provider` gets its credentials from workload identity.
pub fn uses_workload_identity(provider: &CompiledProvider) -> bool {
    Source::of(provider).is_some()
}

/// Whether `provider` is called with a bearer token from workload identity
/// (Google, Entra) rather than signed (AWS) or keyed.
pub fn sends_bearer(provider: &CompiledProvider) -> bool {
    matches!(
        Source::of(provider),
        Some(Source::Google(_) | Source::Entra(_))
    )
}

/// Credentials held for a provider, when they were stored, and whether the
/// provider has refused them since.
#[derive(Debug, Clone)]
struct Entry {
    held: Held,
    stored_at_ms: u64,
    refused: bool,
}

/// The credentials of every provider that uses workload identity, by
/// provider name and source.
#[derive(Debug, Default)]
pub struct WorkloadIdentityCache {
    entries: RwLock<HashMap<(String, String), Entry>>,
    /// Wakes the refresh loop early: a new config, or credentials refused.
    wake: tokio::sync::Notify,
}

impl WorkloadIdentityCache {
    /// Asks the refresh loop for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until [`Self::wake`] is called (or was, since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The AWS credentials to sign with for `provider` now, if valid ones
    /// exist.
    pub fn aws(&self, provider: &CompiledProvider, now_ms: u64) -> Option<AwsCredentials> {
        match self.current(provider, now_ms)? {
            Issued::Aws(credentials) => Some(credentials),
            Issued::Bearer(_) => None,
        }
    }

    /// The bearer token to send for `provider` now, if a valid one exists.
    pub fn bearer(&self, provider: &CompiledProvider, now_ms: u64) -> Option<ApiKey> {
        match self.current(provider, now_ms)? {
            Issued::Bearer(token) => Some(token),
            Issued::Aws(_) => None,
        }
    }

    fn current(&self, provider: &CompiledProvider, now_ms: u64) -> Option<Issued> {
        let source = Source::of(provider)?;
        self.entry(&provider.name, &source.key())
            .map(|entry| entry.held)
            .filter(|held| held.valid(now_ms))
            .map(|held| held.issued)
    }

    fn entry(&self, provider: &str, source: &str) -> Option<Entry> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(provider.to_owned(), source.to_owned()))
            .cloned()
    }

    /// Notes that `provider` answered `status` to a request sent with
    /// `used`. A refusal of the credentials themselves (401; for AWS, 403
    /// too: Bedrock answers an expired or revoked session with 403) asks the
    /// loop to trade again at once; the credentials stay in use meanwhile,
    /// as the refusal may be of one request (a Vertex 403 is often a
    /// resource the identity may not read). Only the credentials in the
    /// cache are marked (not newer ones a late answer did not see), at most
    /// once per [`MIN_REFUSED_REFRESH_MS`]. Returns whether a new exchange
    /// was asked for.
    pub fn refused(
        &self,
        provider: &CompiledProvider,
        used: &Issued,
        status: http::StatusCode,
        now_ms: u64,
    ) -> bool {
        let refusal = match used {
            Issued::Aws(_) => matches!(status.as_u16(), 401 | 403),
            Issued::Bearer(_) => status == http::StatusCode::UNAUTHORIZED,
        };
        let Some(source) = Source::of(provider).filter(|_| refusal) else {
            return false;
        };
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.get_mut(&(provider.name.clone(), source.key())) else {
            return false;
        };
        let marked = entry.held.issued == *used
            && !entry.refused
            && now_ms.saturating_sub(entry.stored_at_ms) >= MIN_REFUSED_REFRESH_MS;
        entry.refused |= marked;
        drop(entries);
        if marked {
            self.wake();
        }
        marked
    }

    /// Keeps only the entries of `live` (provider, source) pairs.
    fn prune(&self, live: &[(String, String)]) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|key, _| live.contains(key));
    }

    fn store(&self, provider: &str, source: String, held: Held, now_ms: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let entry = Entry {
            held,
            stored_at_ms: now_ms,
            refused: false,
        };
        entries.insert((provider.to_owned(), source), entry);
    }
}

/// An OAuth 2.0 token answer (RFC 6749 section 5.1: Google's token
/// exchange, Entra ID's client-credentials grant).
#[derive(serde::Deserialize)]
struct OAuthTokenAnswer {
    access_token: String,
    expires_in: u64,
}

/// The bearer token in an OAuth 2.0 token answer, held until `expires_in`
/// seconds after `now_ms`.
pub(crate) fn parse_oauth_answer(body: &[u8], now_ms: u64) -> Result<Held, ExchangeError> {
    let answer: OAuthTokenAnswer =
        serde_json::from_slice(body).map_err(|_| ExchangeError::Malformed)?;
    let token = ApiKey::new(&answer.access_token).ok_or(ExchangeError::Malformed)?;
    if answer.expires_in == 0 {
        return Err(ExchangeError::Malformed);
    }
    Ok(Held {
        issued: Issued::Bearer(token),
        expires_at_ms: now_ms.saturating_add(answer.expires_in.saturating_mul(1000)),
    })
}

/// Reads a projected token, bounded; trailing whitespace trimmed.
pub(crate) fn read_token(path: &Path) -> Result<String, ExchangeError> {
    let unreadable = || ExchangeError::TokenUnreadable(path.display().to_string());
    let meta = std::fs::metadata(path).map_err(|_| unreadable())?;
    if meta.len() > MAX_TOKEN_BYTES {
        return Err(unreadable());
    }
    let token = std::fs::read_to_string(path).map_err(|_| unreadable())?;
    let token = token.trim();
    if token.is_empty() {
        return Err(unreadable());
    }
    Ok(token.to_owned())
}

/// A form POST to a token service at `url`, asking for `accept`.
pub(crate) fn form_post(url: &str, accept: &'static str) -> http::request::Builder {
    http::Request::post(url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, accept)
}

/// Sends one request to a token service through `client` (the provider's
/// pinned client, so the service's host must be one of the provider's
/// `hosts`) and reads its answer, bounded in size: the body of a success,
/// or the refusal with the code `error_code` reads from its body.
pub(crate) async fn post(
    client: &crate::upstream::ProviderClient,
    request: http::request::Builder,
    body: String,
    error_code: fn(&[u8]) -> String,
) -> Result<Bytes, ExchangeError> {
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ExchangeError::Unreachable("the request could not be built".into()))?;
    let answer = client
        .request(request)
        .await
        .map_err(|e| ExchangeError::Unreachable(connect_reason(&e)))?;
    let status = answer.status();
    let body = Limited::new(answer.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|_| ExchangeError::Malformed)?
        .to_bytes();
    if !status.is_success() {
        return Err(ExchangeError::Refused {
            status: status.as_u16(),
            code: error_code(&body),
        });
    }
    Ok(body)
}

fn connect_reason(err: &hyper_util::client::legacy::Error) -> String {
    match crate::upstream::connect_error(err) {
        Some(e) => e.to_string(),
        None => "the connection failed".into(),
    }
}

/// One exchange for `provider`, bounded in time as a whole: a stalled token
/// service must not hold up the refresh of other providers.
async fn exchange(
    client: &crate::upstream::ProviderClient,
    source: &Source<'_>,
    files: &TokenFiles,
    session: &str,
    now_ms: u64,
) -> Result<Held, ExchangeError> {
    let work = async {
        match source {
            Source::Aws(s) => crate::web_identity::exchange(client, s, session, &files.aws).await,
            Source::Google(s) => {
                crate::google_identity::exchange(client, s, &files.gcp, now_ms).await
            }
            Source::Entra(s) => {
                crate::entra_identity::exchange(client, s, &files.azure, now_ms).await
            }
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .map_err(|_| ExchangeError::Unreachable("timed out".into()))?
}

/// Exchanges, for every provider of `runtime` that uses workload identity,
/// the credentials that are missing or due, and logs the outcome (never a
/// credential). Failures keep the old credentials while they last. Returns
/// whether some provider is left without valid credentials (the caller then
/// tries again sooner).
pub async fn refresh_due(gateway: &crate::proxy::Gateway, files: &TokenFiles, now_ms: u64) -> bool {
    let runtime = gateway.runtime();
    let mut lacking = false;
    // Only the providers this pod's policy routes to: no role is assumed and
    // no token issued that the pod cannot use.
    let routed: Vec<(&CompiledProvider, Source<'_>)> = runtime
        .config
        .providers
        .iter()
        .filter(|p| {
            runtime
                .policy
                .as_ref()
                .is_some_and(|policy| policy.routes.iter().any(|r| r.provider == p.name))
        })
        .filter_map(|p| Some((p, Source::of(p)?)))
        .collect();
    let cache = gateway.workload_identity();
    cache.prune(
        &routed
            .iter()
            .map(|(p, source)| (p.name.clone(), source.key()))
            .collect::<Vec<_>>(),
    );
    for (provider, source) in routed {
        let key = source.key();
        if cache
            .entry(&provider.name, &key)
            .is_some_and(|entry| !entry.refused && !entry.held.due(now_ms))
        {
            continue;
        }
        let Some(client) = runtime.client(&provider.name) else {
            lacking = true;
            continue;
        };
        let identity = gateway.identity();
        let session = crate::web_identity::session_name(&identity.namespace, &identity.pod);
        match exchange(client, &source, files, &session, now_ms).await {
            Ok(held) => {
                tracing::info!(
                    provider = %provider.name,
                    expires_at_ms = held.expires_at_ms,
                    "workload identity: temporary credentials obtained"
                );
                // Held from now, not from the pass's start: the refusal
                // guard counts from when the credentials arrived.
                cache.store(&provider.name, key, held, crate::receipts::unix_millis());
            }
            Err(err) => {
                tracing::warn!(provider = %provider.name, error = %err, "workload identity: exchange failed; requests to this provider fail closed once the current credentials expire");
                lacking |= cache.current(provider, now_ms).is_none();
            }
        }
    }
    lacking
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_credentials_are_due_before_they_end_and_never_shown() {
        let held = Held {
            issued: Issued::Bearer(ApiKey::new("ya29.secret-token").unwrap()),
            expires_at_ms: 1_000_000_000,
        };
        assert!(held.due(1_000_000_000 - REFRESH_BEFORE_MS));
        assert!(!held.due(1_000_000_000 - REFRESH_BEFORE_MS - 1));
        assert!(held.valid(999_999_999));
        assert!(!held.valid(1_000_000_000));
        let debug = format!("{held:?}");
        assert!(!debug.contains("ya29"), "{debug}");
    }

    #[test]
    fn tokens_are_read_bounded_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("tollgate-wi-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "eyJhbGciOi.payload.sig\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "eyJhbGciOi.payload.sig");
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_token(&path).is_err());
        std::fs::write(&path, "x".repeat(MAX_TOKEN_BYTES as usize + 1)).unwrap();
        assert!(read_token(&path).is_err());
        assert!(read_token(&dir.join("absent")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cache_hands_out_each_kind_only_where_it_belongs() {
        let mut provider: CompiledProvider = serde_json::from_value(serde_json::json!({
            "name": "vertex", "api": "vertex", "hosts": [], "models": [], "upstreamTrust": [],
            "googleIdentity": {"audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
                               "stsUrl": "https://sts.googleapis.com/v1/token"},
            "connectTimeoutMs": 1, "firstByteTimeoutMs": 1, "idleTimeoutMs": 1
        }))
        .unwrap();
        let cache = WorkloadIdentityCache::default();
        let key = Source::of(&provider).unwrap().key();
        let token = ApiKey::new("ya29.token").unwrap();
        let held = |token: &ApiKey| Held {
            issued: Issued::Bearer(token.clone()),
            expires_at_ms: 100_000,
        };
        cache.store("vertex", key.clone(), held(&token), 0);
        assert_eq!(cache.bearer(&provider, 99_999), Some(token.clone()));
        assert_eq!(cache.bearer(&provider, 100_000), None, "expired");
        assert_eq!(
            cache.aws(&provider, 99),
            None,
            "a bearer token signs nothing"
        );
        // Another pool or service account is another entry: the old token
        // is not used for it.
        let mut other = provider.clone();
        other.google_identity.as_mut().unwrap().audience.push('x');
        assert_eq!(cache.bearer(&other, 99), None);
        let mut other = provider.clone();
        other.google_identity.as_mut().unwrap().impersonation_url = Some("https://i/sa".into());
        assert_eq!(cache.bearer(&other, 99), None);

        // A 403 is not a refusal of a bearer token; a 401 is, once the
        // token has been held a while, and the token stays in use until a
        // new one arrives.
        let used = Issued::Bearer(token.clone());
        let forbidden = http::StatusCode::FORBIDDEN;
        let unauthorized = http::StatusCode::UNAUTHORIZED;
        assert!(!cache.refused(&provider, &used, forbidden, 60_000));
        assert!(
            !cache.refused(&provider, &used, unauthorized, 10_000),
            "too soon"
        );
        assert!(cache.refused(&provider, &used, unauthorized, 60_000));
        assert!(
            !cache.refused(&provider, &used, unauthorized, 61_000),
            "asked once"
        );
        assert!(cache.entry("vertex", &key).unwrap().refused);
        assert_eq!(cache.bearer(&provider, 61_000), Some(token));
        // A late refusal of an older token leaves a newer one alone.
        let newer = ApiKey::new("ya29.newer").unwrap();
        cache.store("vertex", key.clone(), held(&newer), 70_000);
        assert!(!cache.refused(&provider, &used, unauthorized, 200_000));
        assert!(!cache.entry("vertex", &key).unwrap().refused);
        // For AWS credentials a 403 is a refusal too.
        provider.google_identity = None;
        provider.web_identity = Some(tollgate_wire::config::WebIdentitySource {
            role_arn: "arn:aws:iam::1:role/r".into(),
            sts_url: "https://sts.test".into(),
        });
        let aws = AwsCredentials::new("ASIA1", "secret", Some("t")).unwrap();
        let stored = Held {
            issued: Issued::Aws(aws.clone()),
            expires_at_ms: 1_000_000,
        };
        cache.store("vertex", Source::of(&provider).unwrap().key(), stored, 0);
        assert!(cache.refused(&provider, &Issued::Aws(aws), forbidden, 60_000));
    }
}
