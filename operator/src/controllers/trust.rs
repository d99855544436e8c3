//! `TrustAnchor` status: every receipt key is well formed (its `keyId` is the
//! SHA-256 of its public key), no expired key is still `active`, and how many
//! keys are active and inside their validity window now.

use base64::Engine as _;
use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};
use tollgate_crds::TrustAnchor;
use tollgate_crds::trust::{KeyState, ReceiptKey};

use super::conditions::{Desired, with_ready};

pub const KEYS_VALID: &str = "KeysValid";
pub const KEYS_CURRENT: &str = "KeysCurrent";
/// The condition types this controller writes.
pub const CONDITION_TYPES: &[&str] = &[tollgate_crds::conditions::READY, KEYS_VALID, KEYS_CURRENT];

/// What this controller writes into a `TrustAnchor` status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorOutcome {
    pub conditions: Vec<Desired>,
    /// Keys that are `active` and inside `[notBefore, notAfter)` now.
    pub active_keys: u32,
}

/// The conditions and active key count of a `TrustAnchor` at `now`.
pub fn status_for(anchor: &TrustAnchor, now: Timestamp) -> AnchorOutcome {
    let mut invalid = Vec::new();
    let mut expired_active = Vec::new();
    let mut active_keys = 0u32;
    for key in &anchor.spec.receipt_keys {
        let short = key.key_id.get(..12).unwrap_or(&key.key_id);
        let window = match key_problem(key) {
            Err(problem) => {
                invalid.push(format!("key {short}: {problem}"));
                continue;
            }
            Ok(window) => window,
        };
        let (not_before, not_after) = window;
        if key.state != KeyState::Active {
            continue;
        }
        if not_after.is_some_and(|end| end <= now) {
            expired_active.push(format!(
                "key {short} ({:?}) expired at {} but is still active",
                key.role,
                key.not_after.as_deref().unwrap_or_default()
            ));
        } else if not_before <= now {
            active_keys += 1;
        }
    }
    let keys_valid = if invalid.is_empty() {
        Desired::gate(
            KEYS_VALID,
            true,
            "Valid",
            format!(
                "{} receipt key(s) well formed",
                anchor.spec.receipt_keys.len()
            ),
        )
    } else {
        Desired::gate(KEYS_VALID, false, "InvalidKey", invalid.join("; "))
    };
    let keys_current = if expired_active.is_empty() {
        Desired::gate(
            KEYS_CURRENT,
            true,
            "Current",
            "no active key is past its notAfter",
        )
    } else {
        Desired::gate(
            KEYS_CURRENT,
            false,
            "ActiveKeyExpired",
            format!(
                "{}; signatures after notAfter do not verify: set the key's state to retired and add a new one",
                expired_active.join("; ")
            ),
        )
    };
    AnchorOutcome {
        conditions: with_ready(
            vec![keys_valid, keys_current],
            "receipt keys are valid and current",
        ),
        active_keys,
    }
}

/// Checks a key's encoding and timestamps; returns its window.
fn key_problem(key: &ReceiptKey) -> Result<(Timestamp, Option<Timestamp>), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&key.public_key)
        .map_err(|_| "publicKey is not standard base64".to_string())?;
    if bytes.len() != 32 {
        return Err(format!(
            "publicKey has {} bytes, an Ed25519 public key has 32",
            bytes.len()
        ));
    }
    let expected = hex::encode(Sha256::digest(&bytes));
    if expected != key.key_id {
        return Err(format!(
            "keyId is not the SHA-256 of publicKey (expected {expected})"
        ));
    }
    let not_before: Timestamp = key
        .not_before
        .parse()
        .map_err(|_| format!("notBefore {:?} is not RFC 3339", key.not_before))?;
    let not_after = key
        .not_after
        .as_deref()
        .map(|t| {
            t.parse::<Timestamp>()
                .map_err(|_| format!("notAfter {t:?} is not RFC 3339"))
        })
        .transpose()?;
    Ok((not_before, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::conditions::Status;

    // The example's receipt CA key: keyId = sha256(publicKey).
    const ANCHOR: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: TrustAnchor
metadata: {name: anchors}
spec:
  receiptKeys:
  - keyId: 6fad17a436e44a54f62e9750f580014e2f2ce165ffe7c54f383ac8922c3b8fc8
    publicKey: RQ6daXZJubpQRIwD6lzQeRbGiA6ScJaNEfDiTE/IIt8=
    role: receiptCA
    notBefore: "2026-01-01T00:00:00Z"
    notAfter: "2027-01-01T00:00:00Z"
    state: active
"#;

    fn anchor() -> TrustAnchor {
        serde_saphyr::from_str(ANCHOR).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_key_inside_its_window_is_active_and_ready() {
        let out = status_for(&anchor(), at("2026-06-01T00:00:00Z"));
        assert_eq!(
            out.conditions[0].status,
            Status::True,
            "{:?}",
            out.conditions
        );
        assert_eq!(out.active_keys, 1);
    }

    #[test]
    fn a_key_not_yet_valid_is_fine_but_not_counted() {
        let out = status_for(&anchor(), at("2025-06-01T00:00:00Z"));
        assert_eq!(out.conditions[0].status, Status::True);
        assert_eq!(out.active_keys, 0);
    }

    #[test]
    fn an_expired_active_key_is_reported() {
        let out = status_for(&anchor(), at("2027-01-01T00:00:00Z"));
        assert_eq!(out.conditions[0].status, Status::False);
        assert_eq!(out.conditions[0].reason, "ActiveKeyExpired");
        assert_eq!(out.active_keys, 0);

        let mut retired = anchor();
        retired.spec.receipt_keys[0].state = KeyState::Retired;
        let out = status_for(&retired, at("2027-06-01T00:00:00Z"));
        assert_eq!(
            out.conditions[0].status,
            Status::True,
            "a retired key may expire"
        );
    }

    #[test]
    fn a_key_id_that_does_not_match_the_key_is_invalid() {
        let mut wrong = anchor();
        wrong.spec.receipt_keys[0].key_id = "00".repeat(32);
        let out = status_for(&wrong, at("2026-06-01T00:00:00Z"));
        assert_eq!(out.conditions[0].reason, "InvalidKey");
        assert!(out.conditions[0].message.contains("SHA-256"));
        assert_eq!(out.active_keys, 0);

        let mut short = anchor();
        short.spec.receipt_keys[0].public_key = "AAAA".into();
        let out = status_for(&short, at("2026-06-01T00:00:00Z"));
        assert!(
            out.conditions[0].message.contains("32"),
            "{:?}",
            out.conditions[0]
        );
    }
}
