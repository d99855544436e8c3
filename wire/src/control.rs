//! The operator's control endpoint, as both ends see it: the document
//! `GET /v1/gateway/config` answers (a pod's identity, its namespace's compiled
//! config and the provider keys that config names) and the key certificate
//! exchange of `POST /v1/gateway/certificate`. See docs/operator.md for the
//! protocol (long-poll, ETag).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tollgate_evidence::SignedKeyCertificate;

use crate::config::{GATEWAY_CONFIG_VERSION, GatewayConfig};

/// The pod a config document is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `GET /v1/gateway/config`: what a gateway runs on.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDocument {
    pub pod: PodInfo,
    pub config: GatewayConfig,
    /// Secret name → key → value, for the config's providers only. Never
    /// logged: see the `Debug` impl.
    #[serde(default)]
    pub credentials: BTreeMap<String, BTreeMap<String, String>>,
    /// The cluster's caller key as 64 hex digits ([`crate::caller`]); absent
    /// from older operators, and then no caller is hashed. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_key: Option<String>,
}

impl fmt::Debug for ConfigDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigDocument")
            .field("pod", &self.pod)
            .field("policy_hash", &self.config.policy_hash)
            .field("secrets", &self.credentials.keys().collect::<Vec<_>>())
            .field(
                "caller_key",
                &self.caller_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a config document was refused.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("the control endpoint's answer is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("config version {0} is not supported (expected {GATEWAY_CONFIG_VERSION})")]
    UnsupportedVersion(u32),
    #[error("the config's policyHash does not match its content; refusing it")]
    PolicyHashMismatch,
    #[error("the document's caller key is malformed: {0}")]
    CallerKey(#[from] crate::caller::CallerKeyError),
}

impl ConfigDocument {
    /// The body and its ETag (hex SHA-256 of the body, unquoted).
    pub fn render(&self) -> Result<(Vec<u8>, String), serde_json::Error> {
        let body = serde_json::to_vec(self)?;
        let etag = hex::encode(Sha256::digest(&body));
        Ok((body, etag))
    }

    /// Parses an answer and checks what can be checked without the gateway's
    /// own state: a known config version and a policy hash that matches the
    /// content.
    pub fn parse(body: &[u8]) -> Result<Self, DocumentError> {
        let document: Self = serde_json::from_slice(body)?;
        if document.config.version != GATEWAY_CONFIG_VERSION {
            return Err(DocumentError::UnsupportedVersion(document.config.version));
        }
        if document.config.content_hash() != document.config.policy_hash {
            return Err(DocumentError::PolicyHashMismatch);
        }
        document.caller_key()?;
        Ok(document)
    }

    /// The caller key, if the document carries one.
    pub fn caller_key(&self) -> Result<Option<crate::caller::CallerKey>, DocumentError> {
        self.caller_key
            .as_deref()
            .map(crate::caller::CallerKey::from_hex)
            .transpose()
            .map_err(DocumentError::from)
    }
}

/// `POST /v1/gateway/certificate` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// Standard base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// The lifetime the gateway asks for, in seconds; the operator bounds it
    /// (and uses its default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<u64>,
}

/// `POST /v1/gateway/certificate` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateResponse {
    pub certificate: SignedKeyCertificate,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> ConfigDocument {
        let mut config = GatewayConfig {
            version: GATEWAY_CONFIG_VERSION,
            namespace: "team-a".into(),
            policy_hash: String::new(),
            policies: vec![],
            providers: vec![],
            quotas: vec![],
        };
        config.policy_hash = config.content_hash();
        ConfigDocument {
            pod: PodInfo {
                namespace: "team-a".into(),
                name: "p".into(),
                uid: "u".into(),
                service_account: "default".into(),
                labels: BTreeMap::new(),
            },
            config,
            credentials: BTreeMap::new(),
            caller_key: None,
        }
    }

    #[test]
    fn the_etag_follows_the_content() {
        let doc = document();
        let (body, etag) = doc.render().unwrap();
        assert_eq!(etag, hex::encode(Sha256::digest(&body)));
        assert_eq!(doc.render().unwrap().1, etag);
        let mut changed = doc.clone();
        changed
            .credentials
            .insert("s".into(), BTreeMap::from([("k".into(), "v".into())]));
        assert_ne!(changed.render().unwrap().1, etag);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["pod"]["serviceAccount"], "default");
        assert_eq!(json["config"]["namespace"], "team-a");
    }

    #[test]
    fn parse_checks_the_version_and_the_policy_hash() {
        let doc = document();
        let (body, _) = doc.render().unwrap();
        assert_eq!(ConfigDocument::parse(&body).unwrap(), doc);

        let mut newer = doc.clone();
        newer.config.version = GATEWAY_CONFIG_VERSION + 1;
        newer.config.policy_hash = newer.config.content_hash();
        let err = ConfigDocument::parse(&newer.render().unwrap().0).unwrap_err();
        assert!(matches!(err, DocumentError::UnsupportedVersion(_)), "{err}");

        let mut tampered = doc;
        tampered.config.namespace = "team-b".into();
        let err = ConfigDocument::parse(&tampered.render().unwrap().0).unwrap_err();
        assert!(matches!(err, DocumentError::PolicyHashMismatch), "{err}");

        assert!(matches!(
            ConfigDocument::parse(b"{").unwrap_err(),
            DocumentError::Malformed(_)
        ));

        let mut bad_key = document();
        bad_key.caller_key = Some("not hex".into());
        let err = ConfigDocument::parse(&bad_key.render().unwrap().0).unwrap_err();
        assert!(matches!(err, DocumentError::CallerKey(_)), "{err}");
    }

    #[test]
    fn debug_never_shows_credential_values() {
        let mut doc = document();
        doc.credentials.insert(
            "openai-keys".into(),
            BTreeMap::from([("key-a".into(), "sk-secret-value".into())]),
        );
        doc.caller_key = Some("7a".repeat(32));
        let shown = format!("{doc:?}");
        assert!(shown.contains("openai-keys"), "{shown}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(!shown.contains("7a7a"), "{shown}");
        assert_eq!(
            doc.caller_key().unwrap(),
            Some(crate::caller::CallerKey::from_bytes([0x7a; 32]))
        );
    }
}
