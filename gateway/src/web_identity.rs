//! AWS web identity: short-lived Bedrock credentials for the pod's own
//! ServiceAccount, with no stored key. The gateway reads its projected
//! ServiceAccount token (audience `tollgate.dev/aws`, which only the gateway
//! container can be given), trades it with STS `AssumeRoleWithWebIdentity`
//! for the provider's role, keeps the temporary credentials in memory and
//! trades again well before they expire. Nothing is written anywhere; the app
//! container never sees the token or the credentials.
//!
//! The exchange is one unsigned form POST (the token is the proof); the
//! answer is STS's XML. The pure parts (the form, the answer, when to
//! refresh) are here; the loop that calls STS is [`refresh_due`].

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::RwLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tollgate_wire::config::{CompiledProvider, WebIdentitySource};

use crate::aws_signing::AwsCredentials;

/// Refresh this long before the credentials expire (the AWS SDKs use 5 to
/// 15 minutes).
pub const REFRESH_BEFORE_MS: u64 = 10 * 60 * 1000;
/// How long asked for: STS's default and the role's usual maximum.
pub const DURATION_SECONDS: u32 = 3600;
/// The largest STS answer read.
const MAX_STS_ANSWER: usize = 64 * 1024;
/// How long one exchange may take, the answer's body included.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The largest token file read.
const MAX_TOKEN_BYTES: u64 = 16 * 1024;

/// Temporary credentials from STS. `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct TemporaryCredentials {
    pub credentials: AwsCredentials,
    pub expires_at_ms: u64,
}

impl fmt::Debug for TemporaryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemporaryCredentials")
            .field("access_key_id", &self.credentials.access_key_id())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl TemporaryCredentials {
    /// Whether these are due a refresh at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms.saturating_add(REFRESH_BEFORE_MS) >= self.expires_at_ms
    }

    /// Whether these still sign at `now_ms`.
    pub fn valid(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// Why an exchange failed. Never holds the token or a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("the web identity token file {0} cannot be read")]
    TokenUnreadable(String),
    #[error("STS could not be reached: {0}")]
    Unreachable(String),
    #[error("STS refused the exchange ({status}): {code}")]
    Refused { status: u16, code: String },
    #[error("STS answered with no usable credentials")]
    Malformed,
}

/// The role session name for a pod: `tollgate-<namespace>-<pod>`, in the
/// characters STS allows, at most 64 (CloudTrail shows it with every call).
/// A longer name keeps its first 55 characters and a hash of the whole, so
/// pods stay apart.
pub fn session_name(namespace: &str, pod: &str) -> String {
    let name: String = format!("tollgate-{namespace}-{pod}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.len() <= 64 {
        return name;
    }
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    format!("{}-{}", &name[..55], &digest[..8])
}

/// The form body of `AssumeRoleWithWebIdentity`.
pub fn assume_role_form(source: &WebIdentitySource, session_name: &str, token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", &source.role_arn)
        .append_pair("RoleSessionName", session_name)
        .append_pair("DurationSeconds", &DURATION_SECONDS.to_string())
        .append_pair("WebIdentityToken", token)
        .finish()
}

/// The text of the first `<tag>` element in `xml`, if any (STS answers are
/// flat enough that no general XML parser is needed; entities are not
/// expanded, and no credential STS issues contains one).
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim())
}

/// The credentials in a successful `AssumeRoleWithWebIdentity` answer.
pub fn parse_credentials(xml: &str) -> Result<TemporaryCredentials, ExchangeError> {
    let credentials = element(xml, "Credentials").ok_or(ExchangeError::Malformed)?;
    let field = |tag| element(credentials, tag).ok_or(ExchangeError::Malformed);
    let expiration = field("Expiration")?;
    let expires_at_ms = expiration
        .parse::<jiff::Timestamp>()
        .map_err(|_| ExchangeError::Malformed)?
        .as_millisecond();
    let credentials = AwsCredentials::new(
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        Some(field("SessionToken")?),
    )
    .ok_or(ExchangeError::Malformed)?;
    Ok(TemporaryCredentials {
        credentials,
        expires_at_ms: u64::try_from(expires_at_ms).map_err(|_| ExchangeError::Malformed)?,
    })
}

/// The error code of a refused exchange (`InvalidIdentityToken`, ...), as
/// far as it is a plain code.
pub fn error_code(xml: &str) -> String {
    element(xml, "Code")
        .filter(|c| (1..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or("Unknown")
        .to_string()
}

/// The temporary credentials of every provider that uses web identity, by
/// provider name and role (a config change of role is a new entry).
#[derive(Debug, Default)]
pub struct WebIdentityCache {
    entries: RwLock<HashMap<(String, String), TemporaryCredentials>>,
    /// Wakes the refresh loop early: a new config, or credentials refused.
    wake: tokio::sync::Notify,
}

impl WebIdentityCache {
    /// Asks the refresh loop for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until [`Self::wake`] is called (or was, since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The credentials to sign with for `provider` now, if valid ones exist.
    pub fn current(&self, provider: &CompiledProvider, now_ms: u64) -> Option<AwsCredentials> {
        let source = provider.web_identity.as_ref()?;
        self.entry(&provider.name, source)
            .filter(|c| c.valid(now_ms))
            .map(|c| c.credentials)
    }

    fn due(&self, provider: &CompiledProvider, source: &WebIdentitySource, now_ms: u64) -> bool {
        self.entry(&provider.name, source)
            .is_none_or(|c| c.due(now_ms))
    }

    fn entry(&self, provider: &str, source: &WebIdentitySource) -> Option<TemporaryCredentials> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(provider.to_owned(), source.role_arn.clone()))
            .cloned()
    }

    /// Forgets `provider`'s credentials (Bedrock refused them) and wakes the
    /// loop to trade again.
    pub fn evict(&self, provider: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(name, _), _| name != provider);
        drop(entries);
        self.wake();
    }

    /// Keeps only the entries of `live` (provider, role) pairs.
    fn prune(&self, live: &[(String, String)]) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|key, _| live.contains(key));
    }

    fn store(&self, provider: &str, source: &WebIdentitySource, credentials: TemporaryCredentials) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert((provider.to_owned(), source.role_arn.clone()), credentials);
    }
}

/// Reads the projected token, bounded; trailing whitespace trimmed.
fn read_token(path: &Path) -> Result<String, ExchangeError> {
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

/// One exchange with STS through `client` (the provider's pinned client, so
/// the STS host must be one of the provider's `hosts`).
pub async fn exchange(
    client: &crate::upstream::ProviderClient,
    source: &WebIdentitySource,
    session_name: &str,
    token_file: &Path,
) -> Result<TemporaryCredentials, ExchangeError> {
    // The whole exchange, answer body included, is bounded in time: a
    // stalled STS must not hold up the refresh of other providers.
    tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        exchange_once(client, source, session_name, token_file),
    )
    .await
    .map_err(|_| ExchangeError::Unreachable("timed out".into()))?
}

async fn exchange_once(
    client: &crate::upstream::ProviderClient,
    source: &WebIdentitySource,
    session_name: &str,
    token_file: &Path,
) -> Result<TemporaryCredentials, ExchangeError> {
    let token = read_token(token_file)?;
    let form = assume_role_form(source, session_name, &token);
    let request = http::Request::post(&source.sts_url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "text/xml")
        .body(Full::new(Bytes::from(form)))
        .map_err(|_| ExchangeError::Unreachable("the request could not be built".into()))?;
    let answer = client
        .request(request)
        .await
        .map_err(|e| ExchangeError::Unreachable(connect_reason(&e)))?;
    let status = answer.status();
    let body = Limited::new(answer.into_body(), MAX_STS_ANSWER)
        .collect()
        .await
        .map_err(|_| ExchangeError::Malformed)?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(ExchangeError::Refused {
            status: status.as_u16(),
            code: error_code(&text),
        });
    }
    parse_credentials(&text)
}

fn connect_reason(err: &hyper_util::client::legacy::Error) -> String {
    match crate::upstream::connect_error(err) {
        Some(e) => e.to_string(),
        None => "the connection failed".into(),
    }
}

/// Exchanges, for every provider of `runtime` that uses web identity, the
/// credentials that are missing or due, and logs the outcome (never a
/// credential). Failures keep the old credentials while they last. Returns
/// whether some provider is left without valid credentials (the caller then
/// tries again sooner).
pub async fn refresh_due(gateway: &crate::proxy::Gateway, token_file: &Path, now_ms: u64) -> bool {
    let runtime = gateway.runtime();
    let mut lacking = false;
    // Only the providers this pod's policy routes to: no role is assumed
    // that the pod cannot use.
    let routed: Vec<&CompiledProvider> = runtime
        .config
        .providers
        .iter()
        .filter(|p| p.web_identity.is_some())
        .filter(|p| {
            runtime
                .policy
                .as_ref()
                .is_some_and(|policy| policy.routes.iter().any(|r| r.provider == p.name))
        })
        .collect();
    let cache = gateway.web_identity();
    cache.prune(
        &routed
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.web_identity.as_ref()?.role_arn.clone())))
            .collect::<Vec<_>>(),
    );
    for provider in routed {
        let Some(source) = provider.web_identity.as_ref() else {
            continue;
        };
        if !cache.due(provider, source, now_ms) {
            continue;
        }
        let Some(client) = runtime.client(&provider.name) else {
            lacking = true;
            continue;
        };
        let identity = gateway.identity();
        let session = session_name(&identity.namespace, &identity.pod);
        match exchange(client, source, &session, token_file).await {
            Ok(credentials) => {
                tracing::info!(
                    provider = %provider.name,
                    expires_at_ms = credentials.expires_at_ms,
                    "web identity: temporary credentials obtained"
                );
                cache.store(&provider.name, source, credentials);
            }
            Err(err) => {
                tracing::warn!(provider = %provider.name, error = %err, "web identity: exchange failed; requests to this provider fail closed once the current credentials expire");
                lacking |= cache.current(provider, now_ms).is_none();
            }
        }
    }
    lacking
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> WebIdentitySource {
        WebIdentitySource {
            role_arn: "arn:aws:iam::123456789012:role/bedrock-invoke".into(),
            sts_url: "https://sts.us-east-1.amazonaws.com".into(),
        }
    }

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ns:app</SubjectFromWebIdentityToken>
    <Credentials>
      <SessionToken>IQoJb3JpZ2luX2VjEXAMPLE</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-12-07T05:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE123</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn the_form_names_the_role_and_carries_the_token() {
        assert_eq!(session_name("ns", "pod"), "tollgate-ns-pod");
        let long = session_name("a b", &"p".repeat(80));
        assert_eq!(long.len(), 64);
        assert_ne!(
            long,
            session_name("a b", &"p".repeat(81)),
            "pods stay apart"
        );
        assert!(session_name("a b", "c").starts_with("tollgate-a-b-c"));
        let form = assume_role_form(&source(), "tollgate-ns-pod", "eyJ.token+/=");
        assert_eq!(
            form,
            "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fbedrock-invoke&RoleSessionName=tollgate-ns-pod&DurationSeconds=3600&WebIdentityToken=eyJ.token%2B%2F%3D"
        );
    }

    #[test]
    fn answers_give_credentials_and_refusals_a_code() {
        let credentials = parse_credentials(ANSWER).unwrap();
        assert_eq!(credentials.credentials.access_key_id(), "ASIAEXAMPLE123");
        assert_eq!(credentials.expires_at_ms, 1_796_619_600_000);
        let debug = format!("{credentials:?}");
        assert!(
            !debug.contains("wJalr") && !debug.contains("IQoJ"),
            "{debug}"
        );
        assert!(credentials.due(1_796_619_600_000 - REFRESH_BEFORE_MS));
        assert!(!credentials.due(1_796_619_600_000 - REFRESH_BEFORE_MS - 1));
        assert!(credentials.valid(1_796_619_599_999));
        assert!(!credentials.valid(1_796_619_600_000));
        for broken in [
            "",
            "<Credentials></Credentials>",
            &ANSWER.replace("<SessionToken>IQoJb3JpZ2luX2VjEXAMPLE</SessionToken>", ""),
            &ANSWER.replace("2026-12-07T05:00:00Z", "tomorrow"),
        ] {
            assert_eq!(parse_credentials(broken), Err(ExchangeError::Malformed));
        }
        let refused = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found</Message></Error></ErrorResponse>";
        assert_eq!(error_code(refused), "InvalidIdentityToken");
        assert_eq!(error_code("<Code>a b <script></Code>"), "Unknown");
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
}
