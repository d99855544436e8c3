//! The client half of the operator's control endpoint: in a cluster the
//! gateway fetches its compiled config, its provider keys and its key
//! certificate from there, authenticating with its pod-bound projected token
//! (audience `tollgate.dev/gateway`). Config and keys are long-polled and held
//! in memory only; see docs/operator.md for the protocol.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use tollgate_evidence::{PublicKey, SignedKeyCertificate};
use tollgate_wire::client::HttpClient;
use tollgate_wire::client::TokenSource;
use tollgate_wire::config::GatewayConfig;
use tollgate_wire::control::{CertificateRequest, CertificateResponse, ConfigDocument};
use tollgate_wire::problem::Problem;

use crate::credentials::Credentials;
use crate::run::ConfigLoader;

/// Largest control endpoint answer read, in bytes.
pub const MAX_BOOTSTRAP_BYTES: usize = 16 * 1024 * 1024;
/// The key certificate lifetime the operator gives when not asked for one.
pub const DEFAULT_KEY_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long one long-poll asks the operator to hold the request.
pub const LONG_POLL_SECONDS: u64 = 30;

/// Parses and checks an answer: known config version, policy hash that
/// matches the content, and keys for every provider that needs them.
pub fn parse_document(body: &[u8]) -> anyhow::Result<(ConfigDocument, Credentials)> {
    let bootstrap = ConfigDocument::parse(body)?;
    let credentials = Credentials::from_secrets(&bootstrap.credentials, &bootstrap.config)?
        .with_caller_key(bootstrap.caller_key()?);
    Ok((bootstrap, credentials))
}

/// What one fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// New content with its ETag.
    Changed(Box<ConfigDocument>, Credentials, String),
    /// Nothing changed while we waited.
    NotModified,
}

/// Talks to the control endpoint.
#[derive(Debug)]
pub struct ControlClient {
    base_url: String,
    token: Arc<dyn TokenSource>,
    http: HttpClient,
    current: RwLock<Option<(ConfigDocument, Credentials, String)>>,
}

impl ControlClient {
    /// A client for `base_url` (https), trusting `tls`.
    pub fn new(
        base_url: &str,
        token: Arc<dyn TokenSource>,
        tls: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        if !base_url.starts_with("https://") {
            bail!("--control-url {base_url}: the control endpoint is reached over https only");
        }
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
            // Long enough for a long-poll plus slack.
            http: HttpClient::new(tls, Duration::from_secs(LONG_POLL_SECONDS + 15)),
            current: RwLock::new(None),
        })
    }

    fn bearer(&self) -> anyhow::Result<String> {
        self.token
            .token()
            .map_err(|e| anyhow::anyhow!("reading the gateway token: {e}"))
    }

    /// One `GET /v1/gateway/config`; with `wait`, a long-poll against the
    /// current ETag.
    pub async fn fetch(&self, wait: Option<u64>) -> anyhow::Result<Fetched> {
        let etag = self.etag();
        let url = match wait {
            Some(s) => format!("{}/v1/gateway/config?wait={s}", self.base_url),
            None => format!("{}/v1/gateway/config", self.base_url),
        };
        let headers: Vec<(http::header::HeaderName, String)> = etag
            .iter()
            .map(|e| (http::header::IF_NONE_MATCH, format!("\"{e}\"")))
            .collect();
        let token = self.bearer()?;
        let response = self
            .http
            .send_with_headers(
                Method::GET,
                &url,
                Some(&token),
                &headers,
                None,
                MAX_BOOTSTRAP_BYTES,
            )
            .await
            .map_err(|e| anyhow::anyhow!("control endpoint: {e}"))?;
        match response.status {
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
            StatusCode::OK => {
                let (bootstrap, credentials) = parse_document(&response.body)?;
                let etag = response
                    .etag
                    .map(|e| e.trim_matches('"').to_string())
                    .unwrap_or_else(|| bootstrap.config.policy_hash.clone());
                Ok(Fetched::Changed(Box::new(bootstrap), credentials, etag))
            }
            status => bail!(
                "control endpoint answered {status}: {}",
                Problem::summarize_body(&response.body)
            ),
        }
    }

    /// Fetches until the first answer arrives (a new pod waits, not started,
    /// while the operator is unreachable), and remembers it. Each failed
    /// attempt is logged and passed to `problem` (the `/startup` answer).
    pub async fn first_fetch(&self, problem: impl Fn(String)) -> ConfigDocument {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.fetch(None).await {
                Ok(Fetched::Changed(bootstrap, credentials, etag)) => {
                    let out = (*bootstrap).clone();
                    self.store(*bootstrap, credentials, etag);
                    return out;
                }
                Ok(Fetched::NotModified) => {}
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(error = %e, "waiting for the control endpoint");
                    problem(e);
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    fn etag(&self) -> Option<String> {
        self.current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|(_, _, e)| e.clone()))
    }

    fn store(&self, bootstrap: ConfigDocument, credentials: Credentials, etag: String) {
        if let Ok(mut current) = self.current.write() {
            *current = Some((bootstrap, credentials, etag));
        }
    }

    /// Long-polls for changes forever; a failure keeps the last config and
    /// keys (the operator being away never stops a running gateway).
    pub async fn watch(self: Arc<Self>) {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.fetch(Some(LONG_POLL_SECONDS)).await {
                Ok(Fetched::Changed(bootstrap, credentials, etag)) => {
                    delay = Duration::from_millis(500);
                    self.store(*bootstrap, credentials, etag);
                }
                Ok(Fetched::NotModified) => delay = Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "control endpoint unreachable; keeping the last config");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// `POST /v1/gateway/certificate`: the operator certifies `key` for the
    /// pod the token belongs to, for `lifetime` or the most it allows.
    pub async fn certify(
        &self,
        key: &PublicKey,
        lifetime: Duration,
    ) -> anyhow::Result<SignedKeyCertificate> {
        // The default lifetime is not sent, so that an operator of the
        // previous release (which refuses unknown fields) still certifies
        // gateways of this one during a rolling upgrade.
        let request = CertificateRequest {
            public_key: key.to_base64(),
            lifetime_seconds: (lifetime != DEFAULT_KEY_CERTIFICATE_LIFETIME)
                .then_some(lifetime.as_secs()),
        };
        let body = serde_json::to_vec(&request).context("encoding the certificate request")?;
        let token = self.bearer()?;
        let response = self
            .http
            .send(
                Method::POST,
                &format!("{}/v1/gateway/certificate", self.base_url),
                Some(&token),
                Some(Bytes::from(body)),
                64 * 1024,
            )
            .await
            .map_err(|e| anyhow::anyhow!("control endpoint: {e}"))?;
        if response.status != StatusCode::OK {
            bail!(
                "control endpoint refused the key certificate ({}): {}",
                response.status,
                Problem::summarize_body(&response.body)
            );
        }
        let answer: CertificateResponse = serde_json::from_slice(&response.body)
            .context("the control endpoint's certificate is not valid")?;
        if answer.certificate.certificate.public_key != *key {
            bail!("the control endpoint certified a different key");
        }
        Ok(answer.certificate)
    }
}

impl ConfigLoader for ControlClient {
    fn load(&self) -> anyhow::Result<(GatewayConfig, Credentials)> {
        let current = self
            .current
            .read()
            .map_err(|_| anyhow::anyhow!("control state poisoned"))?;
        match current.as_ref() {
            Some((bootstrap, credentials, _)) => {
                Ok((bootstrap.config.clone(), credentials.clone()))
            }
            None => bail!("no config from the control endpoint yet"),
        }
    }

    fn fingerprint(&self) -> Vec<u8> {
        self.etag().unwrap_or_default().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> serde_json::Value {
        serde_json::from_str(include_str!("../../crds/testdata/golden/kinds.json")).unwrap()
    }

    fn answer(credentials: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "pod": {"namespace": "team-a", "name": "app-0", "uid": "u-1",
                    "serviceAccount": "app", "labels": {"app": "chat"}},
            "config": golden(),
            "credentials": credentials,
        }))
        .unwrap()
    }

    #[test]
    fn an_answer_with_every_key_parses_and_debug_hides_the_keys() {
        let body = answer(serde_json::json!({
            "openai-keys": {"key-a": "sk-aaaa-secret", "key-b": "sk-bbbb-secret"}
        }));
        let (bootstrap, credentials) = parse_document(&body).unwrap();
        assert_eq!(bootstrap.pod.labels["app"], "chat");
        assert_eq!(credentials.keys("openai").len(), 2);
        let shown = format!("{bootstrap:?} {credentials:?}");
        assert!(!shown.contains("sk-aaaa"), "{shown}");
        assert!(shown.contains("openai-keys"), "{shown}");
    }

    #[test]
    fn a_missing_key_or_a_tampered_config_is_refused() {
        let body = answer(serde_json::json!({"openai-keys": {"key-a": "sk-a"}}));
        let err = parse_document(&body).unwrap_err();
        assert!(format!("{err:#}").contains("key-b"), "{err:#}");

        let mut value: serde_json::Value = serde_json::from_slice(&answer(serde_json::json!({
            "openai-keys": {"key-a": "sk-a", "key-b": "sk-b"}
        })))
        .unwrap();
        value["config"]["providers"][0]["hosts"] = serde_json::json!(["evil.example"]);
        let err = parse_document(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("policyHash"), "{err:#}");
    }

    #[test]
    fn only_https_control_urls_are_accepted() {
        let tls = tollgate_wire::client::public_roots().unwrap();
        let token = Arc::new(tollgate_wire::client::StaticToken("t".into()));
        assert!(ControlClient::new("http://op:9443", token.clone(), tls.clone()).is_err());
        assert!(ControlClient::new("https://op:9443/", token, tls).is_ok());
    }
}
