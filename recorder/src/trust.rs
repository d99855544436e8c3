//! Trust anchors: `TrustAnchor` manifests turned into evidence [`TrustRoots`], and
//! the recorder's own anchor (its checkpoint key, role `recorder`) written out for
//! auditors.

use std::path::Path;

use tollgate_crds::TrustAnchor;
use tollgate_crds::manifest::{Manifest, read_manifest_file};
use tollgate_crds::trust::{KeyRole as CrdRole, KeyState as CrdState, ReceiptKey};
use tollgate_evidence::{KeyId, KeyRole, KeyState, PublicKey, Timestamp, TrustRoots, TrustedKey};

/// Why trust anchors could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustLoadError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    Manifest(#[from] tollgate_crds::manifest::ManifestError),
    /// A key entry is malformed.
    #[error("trust anchor {anchor}: key {key_id}: {reason}")]
    Key {
        /// The anchor's name.
        anchor: String,
        /// The entry's keyId as written.
        key_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The keys conflict with each other.
    #[error(transparent)]
    Inconsistent(#[from] tollgate_evidence::TrustError),
}

/// Converts one `spec.receiptKeys[]` entry.
pub fn trusted_key(anchor: &str, key: &ReceiptKey) -> Result<TrustedKey, TrustLoadError> {
    let bad = |reason: String| TrustLoadError::Key {
        anchor: anchor.to_string(),
        key_id: key.key_id.clone(),
        reason,
    };
    let key_id = KeyId::parse(&key.key_id).map_err(|e| bad(format!("keyId: {e}")))?;
    let public_key =
        PublicKey::from_base64(&key.public_key).map_err(|e| bad(format!("publicKey: {e}")))?;
    if public_key.key_id() != key_id {
        return Err(bad("keyId is not the SHA-256 of publicKey".into()));
    }
    let not_before =
        Timestamp::parse_rfc3339(&key.not_before).map_err(|e| bad(format!("notBefore: {e}")))?;
    let not_after = key
        .not_after
        .as_deref()
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .map_err(|e| bad(format!("notAfter: {e}")))?;
    Ok(TrustedKey {
        key_id,
        public_key,
        role: match key.role {
            CrdRole::ReceiptCA => KeyRole::ReceiptCa,
            CrdRole::Recorder => KeyRole::Recorder,
        },
        not_before,
        not_after,
        state: match key.state {
            CrdState::Active => KeyState::Active,
            CrdState::Retired => KeyState::Retired,
            CrdState::Revoked => KeyState::Revoked,
        },
    })
}

/// The trust roots of a set of anchors, validated.
pub fn trust_roots<'a>(
    anchors: impl IntoIterator<Item = &'a TrustAnchor>,
) -> Result<TrustRoots, TrustLoadError> {
    let mut keys = Vec::new();
    for anchor in anchors {
        let name = anchor.metadata.name.as_deref().unwrap_or("(unnamed)");
        for key in &anchor.spec.receipt_keys {
            let key = trusted_key(name, key)?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let roots = TrustRoots { keys };
    roots.validate()?;
    Ok(roots)
}

/// Reads every `TrustAnchor` in the given files.
pub fn load_trust_roots(paths: &[impl AsRef<Path>]) -> Result<TrustRoots, TrustLoadError> {
    let mut anchors = Vec::new();
    for path in paths {
        for manifest in read_manifest_file(path.as_ref())? {
            if let Manifest::TrustAnchor(anchor) = manifest {
                anchors.push(*anchor);
            }
        }
    }
    trust_roots(anchors.iter())
}

/// A `TrustAnchor` manifest (YAML) naming one key, e.g. the recorder's checkpoint key.
pub fn anchor_yaml(name: &str, key: &PublicKey, role: KeyRole, not_before: Timestamp) -> String {
    let role = match role {
        KeyRole::ReceiptCa => "receiptCA",
        KeyRole::Recorder => "recorder",
    };
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: TrustAnchor\nmetadata:\n  name: {name}\nspec:\n  receiptKeys:\n  - keyId: \"{}\"\n    publicKey: \"{}\"\n    role: {role}\n    notBefore: \"{}\"\n    state: active\n",
        key.key_id(),
        key.to_base64(),
        not_before.to_canonical_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_crds::manifest::parse_manifests;
    use tollgate_evidence::SigningKey;

    #[test]
    fn anchor_yaml_round_trips_into_trust_roots() {
        let key = PublicKey::of_signing_key(&SigningKey::from_bytes(&[7; 32]));
        let at = Timestamp::parse_canonical("2025-01-01T00:00:00.000Z").unwrap();
        let yaml = anchor_yaml("recorder", &key, KeyRole::Recorder, at);
        let anchors: Vec<TrustAnchor> = parse_manifests("t", &yaml)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                Manifest::TrustAnchor(a) => Some(*a),
                _ => None,
            })
            .collect();
        let roots = trust_roots(anchors.iter()).unwrap();
        assert_eq!(roots.keys.len(), 1);
        let k = &roots.keys[0];
        assert_eq!(
            (k.public_key, k.role, k.state, k.not_before),
            (key, KeyRole::Recorder, KeyState::Active, at)
        );
    }

    #[test]
    fn a_key_id_that_is_not_the_keys_hash_is_refused() {
        let key = PublicKey::of_signing_key(&SigningKey::from_bytes(&[7; 32]));
        let entry = ReceiptKey {
            key_id: "0".repeat(64),
            public_key: key.to_base64(),
            role: CrdRole::ReceiptCA,
            not_before: "2025-01-01T00:00:00Z".into(),
            not_after: None,
            state: CrdState::Active,
        };
        assert!(matches!(
            trusted_key("a", &entry),
            Err(TrustLoadError::Key { .. })
        ));
    }
}
