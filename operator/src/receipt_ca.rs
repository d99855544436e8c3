//! The cluster receipt CA: the Ed25519 key that signs gateway key
//! certificates, and the `TrustAnchor` that publishes its public half.
//!
//! The key lives in the Secret `tollgate-receipt-ca` of the operator
//! namespace (key `ed25519.seed`, 64 hex characters), created if absent like
//! every random secret of the operator ([`crate::cluster_secrets`]). The `TrustAnchor` `tollgate-receipt-ca` is
//! written with server-side apply; its `notBefore` is the Secret's creation
//! time, so every replica writes the same object.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use tollgate_crds::trust::{KeyRole, KeyState, ReceiptKey, TrustAnchor, TrustAnchorSpec};
use tollgate_evidence::{KeyId, PublicKey, SigningKey};

/// The Secret and the TrustAnchor share this name.
pub const RECEIPT_CA_NAME: &str = "tollgate-receipt-ca";
/// The Secret key holding the hex seed.
pub const SEED_KEY: &str = "ed25519.seed";
/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "tollgate-operator";

/// Why the receipt CA could not be loaded or published.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptCaError {
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {RECEIPT_CA_NAME} key {SEED_KEY} must be 64 lowercase hex characters")]
    BadSeed,
    #[error(transparent)]
    Secret(#[from] crate::cluster_secrets::ClusterSecretError),
}

/// The loaded receipt CA key and when it came into use.
#[derive(Clone)]
pub struct ReceiptCa {
    pub key: SigningKey,
    /// RFC 3339: the Secret's creation time.
    pub not_before: String,
}

impl std::fmt::Debug for ReceiptCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptCa")
            .field("key_id", &self.key_id().to_string())
            .field("not_before", &self.not_before)
            .finish_non_exhaustive()
    }
}

impl ReceiptCa {
    pub fn key_id(&self) -> KeyId {
        KeyId::of_signing_key(&self.key)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::of_signing_key(&self.key)
    }
}

/// Parses the hex seed.
pub fn parse_seed(value: &[u8]) -> Result<SigningKey, ReceiptCaError> {
    let text = std::str::from_utf8(value).map_err(|_| ReceiptCaError::BadSeed)?;
    let text = text.trim();
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReceiptCaError::BadSeed);
    }
    let bytes: [u8; 32] = hex::decode(text)
        .map_err(|_| ReceiptCaError::BadSeed)?
        .try_into()
        .map_err(|_| ReceiptCaError::BadSeed)?;
    Ok(SigningKey::from_bytes(&bytes))
}

fn from_secret(secret: &Secret) -> Result<ReceiptCa, ReceiptCaError> {
    let seed = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SEED_KEY))
        .ok_or(ReceiptCaError::BadSeed)?;
    let key = parse_seed(&seed.0)?;
    let not_before = secret
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
    Ok(ReceiptCa { key, not_before })
}

/// Loads the receipt CA key, creating it if absent.
pub async fn load_or_create(secrets: &Api<Secret>) -> Result<ReceiptCa, ReceiptCaError> {
    let secret = crate::cluster_secrets::load_or_create(secrets, RECEIPT_CA_NAME, SEED_KEY).await?;
    from_secret(&secret)
}

/// The TrustAnchor publishing `ca`'s public key.
pub fn trust_anchor(ca: &ReceiptCa) -> TrustAnchor {
    let mut anchor = TrustAnchor::new(
        RECEIPT_CA_NAME,
        TrustAnchorSpec {
            receipt_keys: vec![ReceiptKey {
                key_id: ca.key_id().to_string(),
                public_key: ca.public_key().to_base64(),
                role: KeyRole::ReceiptCA,
                not_before: ca.not_before.clone(),
                not_after: None,
                state: KeyState::Active,
            }],
            upstream: Vec::new(),
        },
    );
    anchor.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        )]
        .into(),
    );
    anchor
}

/// Writes the TrustAnchor with server-side apply.
pub async fn publish_trust_anchor(
    client: &kube::Client,
    ca: &ReceiptCa,
) -> Result<(), ReceiptCaError> {
    let anchors: Api<TrustAnchor> = Api::all(client.clone());
    let mut anchor = trust_anchor(ca);
    anchor.metadata.managed_fields = None;
    let value = serde_json::json!({
        "apiVersion": tollgate_crds::API_VERSION,
        "kind": "TrustAnchor",
        "metadata": {"name": RECEIPT_CA_NAME, "labels": anchor.metadata.labels},
        "spec": anchor.spec,
    });
    anchors
        .patch(
            RECEIPT_CA_NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(value),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    #[test]
    fn seeds_are_64_lowercase_hex() {
        let seed = "11".repeat(32);
        let key = parse_seed(seed.as_bytes()).unwrap();
        assert_eq!(key.to_bytes(), [0x11; 32]);
        assert!(parse_seed(format!("{seed}\n").as_bytes()).is_ok());
        for bad in [
            "",
            "11",
            &"AB".repeat(32),
            &"zz".repeat(32),
            &"11".repeat(33),
        ] {
            assert!(parse_seed(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_anchor_carries_the_key_id_and_public_key() {
        let ca = ReceiptCa {
            key: SigningKey::from_bytes(&[7; 32]),
            not_before: "2025-01-01T00:00:00Z".to_owned(),
        };
        let anchor = trust_anchor(&ca);
        let key = &anchor.spec.receipt_keys[0];
        let public = PublicKey::from_base64(&key.public_key).unwrap();
        assert_eq!(public, ca.public_key());
        assert_eq!(
            key.key_id,
            hex::encode(sha2::Sha256::digest(public.as_bytes()))
        );
        assert_eq!(key.role, KeyRole::ReceiptCA);
        assert_eq!(key.state, KeyState::Active);
        assert_eq!(key.not_before, "2025-01-01T00:00:00Z");
        assert_eq!(anchor.metadata.name.as_deref(), Some(RECEIPT_CA_NAME));
    }
}
