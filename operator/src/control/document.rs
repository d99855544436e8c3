//! What the control endpoint answers, built purely from what the caches hold:
//! the credentials a config document carries, and key certificates. The
//! documents themselves are the wire contract (`tollgate_wire::control`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use tollgate_evidence::fields::{DnsLabel, DnsSubdomain, PodUid};
use tollgate_evidence::{KeyCertificate, PodIdentity, PublicKey, SignedKeyCertificate, SigningKey};
use tollgate_evidence::{KeyId, Timestamp};
use tollgate_wire::config::GatewayConfig;

use super::auth::TokenIdentity;

/// The longest a key certificate is valid, and how long when the gateway
/// does not ask.
pub const CERTIFICATE_VALIDITY_MILLIS: u64 = 24 * 60 * 60 * 1000;
/// The shortest key certificate the operator issues: shorter ones would have
/// gateways renewing (and the operator signing) many times a minute.
pub const MIN_CERTIFICATE_VALIDITY_MILLIS: u64 = 5 * 1000;

/// The validity to issue for a request asking for `requested_seconds`.
pub fn validity_millis(requested_seconds: Option<u64>) -> u64 {
    requested_seconds.map_or(CERTIFICATE_VALIDITY_MILLIS, |s| {
        s.saturating_mul(1000)
            .clamp(MIN_CERTIFICATE_VALIDITY_MILLIS, CERTIFICATE_VALIDITY_MILLIS)
    })
}

/// The credentials `config`'s providers name: only their listed keys of
/// their Secrets (from the operator namespace). Missing Secrets and keys, and
/// values that are not UTF-8, are left out; the gateway reports what it lacks.
pub fn credentials_for(
    config: &GatewayConfig,
    secrets: &[impl AsRef<Secret>],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for source in config
        .providers
        .iter()
        .filter_map(|p| p.credentials.as_ref())
    {
        let Some(secret) = secrets
            .iter()
            .map(AsRef::as_ref)
            .find(|s| s.metadata.name.as_deref() == Some(source.secret_name.as_str()))
        else {
            continue;
        };
        let data = secret.data.as_ref();
        let string_data = secret.string_data.as_ref();
        for key in &source.keys {
            let value = data
                .and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .or_else(|| string_data.and_then(|d| d.get(key)).cloned());
            if let Some(value) = value {
                out.entry(source.secret_name.clone())
                    .or_default()
                    .insert(key.clone(), value);
            }
        }
    }
    out
}

/// Why a key certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("publicKey is not the standard base64 of a valid Ed25519 public key")]
    BadPublicKey,
    #[error("the pod identity cannot go into a certificate: {0}")]
    BadIdentity(String),
    #[error("signing: {0}")]
    Sign(String),
}

/// Signs a certificate binding `public_key` to `who`, valid for
/// `validity_millis` from `now_millis`.
pub fn issue_certificate(
    public_key_b64: &str,
    who: &TokenIdentity,
    now_millis: u64,
    validity_millis: u64,
    ca_key: &SigningKey,
) -> Result<SignedKeyCertificate, IssueError> {
    let public_key =
        PublicKey::from_base64(public_key_b64).map_err(|_| IssueError::BadPublicKey)?;
    let bad = |e: tollgate_evidence::fields::FieldError| IssueError::BadIdentity(e.to_string());
    let pod = PodIdentity {
        namespace: DnsLabel::new(who.namespace.clone()).map_err(bad)?,
        service_account: DnsSubdomain::new(who.service_account.clone()).map_err(bad)?,
        pod_name: DnsSubdomain::new(who.pod_name.clone()).map_err(bad)?,
        pod_uid: PodUid::new(who.pod_uid.clone()).map_err(bad)?,
    };
    let not_before = Timestamp::from_unix_millis(now_millis).map_err(bad)?;
    let not_after = not_before
        .checked_add_millis(validity_millis)
        .ok_or_else(|| IssueError::Sign("validity past year 9999".to_owned()))?;
    let certificate = KeyCertificate::new(
        public_key,
        pod,
        not_before,
        not_after,
        KeyId::of_signing_key(ca_key),
    )
    .map_err(|e| IssueError::Sign(e.to_string()))?;
    SignedKeyCertificate::issue(certificate, ca_key).map_err(|e| IssueError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn requested_lifetimes_are_bounded() {
        use super::*;
        assert_eq!(validity_millis(None), CERTIFICATE_VALIDITY_MILLIS);
        assert_eq!(validity_millis(Some(60)), 60_000);
        assert_eq!(validity_millis(Some(1)), MIN_CERTIFICATE_VALIDITY_MILLIS);
        assert_eq!(validity_millis(Some(u64::MAX)), CERTIFICATE_VALIDITY_MILLIS);
    }

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use tollgate_crds::provider::ProviderApi;
    use tollgate_wire::config::{CompiledProvider, CredentialsSource};

    use super::*;

    fn provider(name: &str, secret: Option<(&str, &[&str])>) -> CompiledProvider {
        CompiledProvider {
            azure_api_version: None,
            aws_region: None,
            web_identity: None,
            vertex: None,
            google_identity: None,
            entra_identity: None,
            name: name.into(),
            api: ProviderApi::Openai,
            base_url: None,
            hosts: vec![],
            credentials: secret.map(|(s, keys)| CredentialsSource {
                secret_name: s.into(),
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            }),
            models: vec![],
            upstream_trust: vec![],
            connect_timeout_ms: 1,
            first_byte_timeout_ms: 1,
            idle_timeout_ms: 1,
        }
    }

    fn config(providers: Vec<CompiledProvider>) -> GatewayConfig {
        GatewayConfig {
            version: 1,
            namespace: "team-a".into(),
            policy_hash: String::new(),
            policies: vec![],
            providers,
            quotas: vec![],
        }
    }

    fn secret(name: &str, data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn only_listed_keys_of_named_secrets() {
        let cfg = config(vec![
            provider("openai", Some(("openai-keys", &["a", "missing", "binary"]))),
            provider("dry", None),
        ]);
        let secrets = vec![
            std::sync::Arc::new(secret(
                "openai-keys",
                &[("a", b"sk-1"), ("other", b"no"), ("binary", &[0xff, 0xfe])],
            )),
            std::sync::Arc::new(secret("unrelated", &[("a", b"leak")])),
        ];
        let creds = credentials_for(&cfg, &secrets);
        assert_eq!(
            creds,
            BTreeMap::from([(
                "openai-keys".to_owned(),
                BTreeMap::from([("a".to_owned(), "sk-1".to_owned())])
            )])
        );
        assert!(credentials_for(&config(vec![]), &secrets).is_empty());
    }

    #[test]
    fn certificates_bind_the_token_identity_for_a_day() {
        let ca = SigningKey::from_bytes(&[3; 32]);
        let gateway = SigningKey::from_bytes(&[4; 32]);
        let who = TokenIdentity {
            namespace: "team-a".into(),
            service_account: "app".into(),
            pod_name: "app-1".into(),
            pod_uid: "0b5d7c1e-4a8a-4bb1-9a57-1f2f9d5e6c7a".into(),
        };
        let b64 = PublicKey::of_signing_key(&gateway).to_base64();
        let now = 1_750_000_000_000;
        let signed = issue_certificate(&b64, &who, now, CERTIFICATE_VALIDITY_MILLIS, &ca).unwrap();
        signed
            .verify_issuer(&PublicKey::of_signing_key(&ca))
            .unwrap();
        let c = &signed.certificate;
        assert_eq!(c.namespace.as_str(), "team-a");
        assert_eq!(c.service_account.as_str(), "app");
        assert_eq!(c.pod_name.as_str(), "app-1");
        assert_eq!(c.not_before.unix_millis(), now);
        assert_eq!(c.not_after.unix_millis() - now, CERTIFICATE_VALIDITY_MILLIS);
        assert_eq!(c.public_key, PublicKey::of_signing_key(&gateway));

        assert!(matches!(
            issue_certificate("not base64!", &who, now, CERTIFICATE_VALIDITY_MILLIS, &ca),
            Err(IssueError::BadPublicKey)
        ));
        assert!(matches!(
            issue_certificate("AAAA", &who, now, CERTIFICATE_VALIDITY_MILLIS, &ca),
            Err(IssueError::BadPublicKey)
        ));
    }
}
