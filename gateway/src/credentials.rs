//! Provider API keys: loaded once into memory, never logged, persisted or
//! echoed, and chosen deterministically per request.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use tollgate_wire::caller::CallerKey;
use tollgate_wire::config::{GatewayConfig, ProviderApi};

/// Largest key file read, in bytes.
pub const MAX_KEY_BYTES: u64 = 4096;

/// One provider API key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key, trimming the trailing newline editors and `echo` leave.
    pub fn new(raw: &str) -> Option<Self> {
        let key = raw.trim_end_matches(['\r', '\n']);
        let usable = !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| Self(key.to_string()))
    }

    /// The key itself, for the one place that sets the upstream header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Keys per provider name, in the order the provider's `credentialsRef.keys`
/// lists them (that order is what `key_index` in receipts refers to).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_provider: HashMap<String, Vec<ApiKey>>,
    /// The key end-user ids are hashed under; without one no caller is hashed.
    caller_key: Option<CallerKey>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: HashMap<&str, usize> = self
            .by_provider
            .iter()
            .map(|(p, k)| (p.as_str(), k.len()))
            .collect();
        f.debug_struct("Credentials")
            .field("key_counts", &counts)
            .field("caller_key", &self.caller_key)
            .finish()
    }
}

/// What looking up one key found.
enum Lookup {
    Found(String),
    /// Present but too large or unreadable.
    Unusable,
    /// Absent; where it was looked for.
    Missing(String),
}

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("provider {provider}: key {key:?} of Secret {secret:?} is missing at {path}")]
    Missing {
        provider: String,
        secret: String,
        key: String,
        path: String,
    },
    #[error(
        "provider {provider}: key {key:?} of Secret {secret:?} is not ACCESS_KEY_ID:SECRET_ACCESS_KEY (a Bedrock key pair)"
    )]
    NotAwsKeyPair {
        provider: String,
        secret: String,
        key: String,
    },
    #[error(
        "provider {provider}: key {key:?} of Secret {secret:?} is empty, too large or not printable ASCII"
    )]
    Unusable {
        provider: String,
        secret: String,
        key: String,
    },
}

impl Credentials {
    /// Keys from `dir/<secretName>/<key>` files, the layout of a mounted
    /// Secret, for every provider in `config` that needs keys. Every key must be
    /// present: a provider with a missing key is an error, not a smaller pool.
    pub fn load_dir(dir: &Path, config: &GatewayConfig) -> Result<Self, CredentialsError> {
        Self::resolve(config, |secret, key| {
            let path = dir.join(secret).join(key);
            match std::fs::metadata(&path) {
                Err(_) => Lookup::Missing(path.display().to_string()),
                Ok(meta) if meta.len() > MAX_KEY_BYTES => Lookup::Unusable,
                Ok(_) => match std::fs::read_to_string(&path) {
                    Ok(raw) => Lookup::Found(raw),
                    Err(_) => Lookup::Unusable,
                },
            }
        })
    }

    /// Keys from Secrets already in memory, `secret name → key → value`: the
    /// control endpoint's answer, or Secret manifests in local mode.
    pub fn from_secrets(
        secrets: &BTreeMap<String, BTreeMap<String, String>>,
        config: &GatewayConfig,
    ) -> Result<Self, CredentialsError> {
        Self::resolve(config, |secret, key| {
            match secrets.get(secret).and_then(|keys| keys.get(key)) {
                None => Lookup::Missing(format!("Secret {secret}")),
                Some(value) if value.len() as u64 > MAX_KEY_BYTES => Lookup::Unusable,
                Some(value) => Lookup::Found(value.clone()),
            }
        })
    }

    /// Looks up every key every provider in `config` names. A provider with a
    /// missing or unusable key is an error, never a smaller pool.
    fn resolve(
        config: &GatewayConfig,
        lookup: impl Fn(&str, &str) -> Lookup,
    ) -> Result<Self, CredentialsError> {
        let mut by_provider = HashMap::new();
        for provider in &config.providers {
            let Some(source) = &provider.credentials else {
                continue;
            };
            let mut keys = Vec::new();
            for key in &source.keys {
                let unusable = || CredentialsError::Unusable {
                    provider: provider.name.clone(),
                    secret: source.secret_name.clone(),
                    key: key.clone(),
                };
                match lookup(&source.secret_name, key) {
                    Lookup::Found(raw) => {
                        let key_value = ApiKey::new(&raw).ok_or_else(unusable)?;
                        // A Bedrock key that cannot sign would fail every
                        // request routed to it: refused here, loudly.
                        if provider.api == ProviderApi::Bedrock
                            && crate::aws_signing::AwsCredentials::from_key(&key_value).is_err()
                        {
                            return Err(CredentialsError::NotAwsKeyPair {
                                provider: provider.name.clone(),
                                secret: source.secret_name.clone(),
                                key: key.clone(),
                            });
                        }
                        keys.push(key_value);
                    }
                    Lookup::Unusable => return Err(unusable()),
                    Lookup::Missing(path) => {
                        return Err(CredentialsError::Missing {
                            provider: provider.name.clone(),
                            secret: source.secret_name.clone(),
                            key: key.clone(),
                            path,
                        });
                    }
                }
            }
            by_provider.insert(provider.name.clone(), keys);
        }
        Ok(Self {
            by_provider,
            caller_key: None,
        })
    }

    /// Builds credentials from keys already in memory (tests, local mode).
    pub fn from_keys(keys: impl IntoIterator<Item = (String, Vec<ApiKey>)>) -> Self {
        Self {
            by_provider: keys.into_iter().collect(),
            caller_key: None,
        }
    }

    /// These credentials with the caller key set.
    pub fn with_caller_key(mut self, key: Option<CallerKey>) -> Self {
        self.caller_key = key;
        self
    }

    /// The caller key, if there is one.
    pub fn caller_key(&self) -> Option<&CallerKey> {
        self.caller_key.as_ref()
    }

    /// The keys of a provider.
    pub fn keys(&self, provider: &str) -> &[ApiKey] {
        self.by_provider
            .get(provider)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Picks one of `key_count` keys with the formula receipts record and the
/// verifier recomputes ([`tollgate_evidence::key_index`]).
pub fn choose_key_index(model: &str, body_sha256: &[u8; 32], node_id: &str, key_count: u32) -> u32 {
    tollgate_evidence::key_index(model, body_sha256, node_id, key_count)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bedrock_keys_must_be_aws_key_pairs() {
        let config: GatewayConfig = serde_json::from_value(serde_json::json!({
            "version": 1, "namespace": "ns", "policyHash": "", "policies": [], "quotas": [],
            "providers": [{
                "name": "bedrock", "api": "bedrock", "hosts": [], "models": [],
                "upstreamTrust": [], "connectTimeoutMs": 1, "firstByteTimeoutMs": 1, "idleTimeoutMs": 1,
                "credentials": {"secretName": "aws", "keys": ["k"]}
            }]
        }))
        .unwrap();
        let secrets = |value: &str| {
            BTreeMap::from([(
                "aws".to_string(),
                BTreeMap::from([("k".to_string(), value.to_string())]),
            )])
        };
        assert!(Credentials::from_secrets(&secrets("AKIAEXAMPLE:secret"), &config).is_ok());
        let err = Credentials::from_secrets(&secrets("sk-not-a-pair"), &config).unwrap_err();
        assert!(
            matches!(err, CredentialsError::NotAwsKeyPair { .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("sk-not"), "{err}");
    }

    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn keys_never_show_in_debug() {
        let key = ApiKey::new("sk-test-very-secret\n").unwrap();
        assert_eq!(key.expose(), "sk-test-very-secret");
        assert!(!format!("{key:?}").contains("secret"));
        let creds = Credentials::from_keys([("openai".to_string(), vec![key])]);
        let shown = format!("{creds:?}");
        assert!(!shown.contains("sk-test"), "{shown}");
        assert!(shown.contains("openai"));
    }

    fn golden_config() -> GatewayConfig {
        let text = include_str!("../../crds/testdata/golden/kinds.json");
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn secrets_in_memory_resolve_in_the_listed_order_and_every_key_is_required() {
        let config = golden_config();
        let provider = config
            .providers
            .iter()
            .find(|p| p.credentials.is_some())
            .unwrap();
        let source = provider.credentials.as_ref().unwrap();
        let mut keys = BTreeMap::new();
        for (i, key) in source.keys.iter().enumerate() {
            keys.insert(key.clone(), format!("sk-{i}\n"));
        }
        let mut secrets = BTreeMap::from([(source.secret_name.clone(), keys)]);
        let creds = Credentials::from_secrets(&secrets, &config).unwrap();
        let got: Vec<&str> = creds
            .keys(&provider.name)
            .iter()
            .map(ApiKey::expose)
            .collect();
        let want: Vec<String> = (0..source.keys.len()).map(|i| format!("sk-{i}")).collect();
        assert_eq!(got, want);

        let first = source.keys[0].clone();
        secrets.get_mut(&source.secret_name).unwrap().remove(&first);
        let err = Credentials::from_secrets(&secrets, &config).unwrap_err();
        assert!(
            matches!(err, CredentialsError::Missing { ref key, .. } if *key == first),
            "{err}"
        );

        secrets
            .get_mut(&source.secret_name)
            .unwrap()
            .insert(first, "not a key".into());
        let err = Credentials::from_secrets(&secrets, &config).unwrap_err();
        assert!(matches!(err, CredentialsError::Unusable { .. }), "{err}");
        assert!(!err.to_string().contains("not a key"), "{err}");
    }

    #[test]
    fn unusable_keys_are_refused() {
        assert!(ApiKey::new("").is_none());
        assert!(ApiKey::new("\n").is_none());
        assert!(ApiKey::new("has space").is_none());
        assert!(ApiKey::new("line\nbreak").is_none());
    }

    #[test]
    fn key_choice_is_deterministic_and_spreads() {
        let body = [7u8; 32];
        let a = choose_key_index("gpt-4o-mini", &body, "node-a", 4);
        assert_eq!(a, choose_key_index("gpt-4o-mini", &body, "node-a", 4));
        assert_eq!(choose_key_index("m", &body, "n", 1), 0);
        let mut seen = [0u32; 4];
        for i in 0..400u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            seen[choose_key_index("m", &b, "n", 4) as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 60),
            "keys are not spread: {seen:?}"
        );
    }

    #[test]
    fn key_choice_matches_the_documented_formula() {
        let body: [u8; 32] = Sha256::digest(b"{}").into();
        let mut h = Sha256::new();
        h.update(b"gpt-4o");
        h.update(body);
        h.update(b"node-1");
        let d = h.finalize();
        let expected = (u64::from_be_bytes(d[..8].try_into().unwrap()) % 3) as u32;
        assert_eq!(choose_key_index("gpt-4o", &body, "node-1", 3), expected);
    }
}
