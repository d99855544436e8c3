//! Trust roots: the keys an auditor trusts, as plain data. The CLI converts
//! Kubernetes `TrustAnchor` objects into this.
//!
//! Key states: `active` and `retired` keys verify objects signed within the key's
//! window `[not_before, not_after]` (a retired key must have `not_after`, its
//! retirement time, or it verifies nothing); `revoked` keys verify nothing, whatever
//! the time.

use crate::keys::{KeyId, PublicKey};
use crate::timestamp::Timestamp;

/// What a trusted key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// Signs gateway key certificates.
    ReceiptCa,
    /// Signs checkpoints and bundle manifests.
    Recorder,
}

/// A trusted key's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// In use.
    Active,
    /// No longer signs; still verifies what it signed before `not_after`.
    Retired,
    /// Compromised or withdrawn: verifies nothing.
    Revoked,
}

/// One trusted public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Must equal `public_key.key_id()`.
    pub key_id: KeyId,
    /// The key.
    pub public_key: PublicKey,
    /// What it may sign.
    pub role: KeyRole,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity (inclusive); `None` means open-ended.
    pub not_after: Option<Timestamp>,
    /// Lifecycle state.
    pub state: KeyState,
}

/// Why a trusted key cannot vouch for an object signed at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyUseError {
    /// The key is revoked.
    #[error("key is revoked")]
    Revoked,
    /// The key has a different role.
    #[error("key has the wrong role")]
    WrongRole,
    /// The signing instant is outside the key's window.
    #[error("signing time is outside the key's validity window")]
    OutsideWindow,
    /// A retired key without `not_after`: when it stopped signing is unknown.
    #[error("retired key has no not_after, so its retirement time is unknown")]
    RetiredWithoutNotAfter,
}

impl TrustedKey {
    /// Whether this key vouches for an object of `role` signed at `signed_at`.
    pub fn check_use(&self, role: KeyRole, signed_at: Timestamp) -> Result<(), KeyUseError> {
        if self.state == KeyState::Revoked {
            return Err(KeyUseError::Revoked);
        }
        if self.role != role {
            return Err(KeyUseError::WrongRole);
        }
        if self.state == KeyState::Retired && self.not_after.is_none() {
            return Err(KeyUseError::RetiredWithoutNotAfter);
        }
        let after_start = self.not_before <= signed_at;
        let before_end = self.not_after.is_none_or(|end| signed_at <= end);
        if after_start && before_end {
            Ok(())
        } else {
            Err(KeyUseError::OutsideWindow)
        }
    }
}

/// A trust root problem that makes the whole set unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// `key_id` is not the id of `public_key`.
    #[error("trusted key {0}: key_id does not match the public key")]
    KeyIdMismatch(KeyId),
    /// `not_after` before `not_before`.
    #[error("trusted key {0}: not_after is before not_before")]
    EmptyWindow(KeyId),
    /// The same key id twice with different settings.
    #[error("trusted key {0} appears twice with different settings")]
    Conflict(KeyId),
}

/// The keys an auditor trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustRoots {
    /// The keys.
    pub keys: Vec<TrustedKey>,
}

impl TrustRoots {
    /// Checks every key id and window, and that no key id appears twice with
    /// different settings (exact duplicates, e.g. from two anchor files, are fine).
    pub fn validate(&self) -> Result<(), TrustError> {
        for (i, key) in self.keys.iter().enumerate() {
            if key.public_key.key_id() != key.key_id {
                return Err(TrustError::KeyIdMismatch(key.key_id));
            }
            if key.not_after.is_some_and(|end| end < key.not_before) {
                return Err(TrustError::EmptyWindow(key.key_id));
            }
            if self
                .keys
                .iter()
                .skip(i + 1)
                .any(|other| other.key_id == key.key_id && other != key)
            {
                return Err(TrustError::Conflict(key.key_id));
            }
        }
        Ok(())
    }

    /// The key with this id.
    pub fn find(&self, key_id: &KeyId) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.key_id == *key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_canonical(s).unwrap()
    }

    fn key(state: KeyState, not_after: Option<&str>) -> TrustedKey {
        let public = PublicKey::of_signing_key(&SigningKey::from_bytes(&[1; 32]));
        TrustedKey {
            key_id: public.key_id(),
            public_key: public,
            role: KeyRole::ReceiptCa,
            not_before: ts("2025-01-01T00:00:00.000Z"),
            not_after: not_after.map(ts),
            state,
        }
    }

    #[test]
    fn window_state_and_role_decide_use() {
        let inside = ts("2025-06-01T00:00:00.000Z");
        let after = ts("2026-06-01T00:00:00.000Z");
        let active = key(KeyState::Active, None);
        assert_eq!(active.check_use(KeyRole::ReceiptCa, inside), Ok(()));
        assert_eq!(
            active.check_use(KeyRole::Recorder, inside),
            Err(KeyUseError::WrongRole)
        );
        assert_eq!(
            active.check_use(KeyRole::ReceiptCa, ts("2024-01-01T00:00:00.000Z")),
            Err(KeyUseError::OutsideWindow)
        );
        let retired = key(KeyState::Retired, Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(retired.check_use(KeyRole::ReceiptCa, inside), Ok(()));
        assert_eq!(
            retired.check_use(KeyRole::ReceiptCa, after),
            Err(KeyUseError::OutsideWindow)
        );
        assert_eq!(
            key(KeyState::Retired, None).check_use(KeyRole::ReceiptCa, inside),
            Err(KeyUseError::RetiredWithoutNotAfter)
        );
        assert_eq!(
            key(KeyState::Revoked, None).check_use(KeyRole::ReceiptCa, inside),
            Err(KeyUseError::Revoked)
        );
    }

    #[test]
    fn validate_catches_bad_roots() {
        let good = key(KeyState::Active, None);
        assert!(
            TrustRoots {
                keys: vec![good.clone(), good.clone()]
            }
            .validate()
            .is_ok()
        );
        let mut conflicting = good.clone();
        conflicting.state = KeyState::Revoked;
        assert!(matches!(
            TrustRoots {
                keys: vec![good.clone(), conflicting]
            }
            .validate(),
            Err(TrustError::Conflict(_))
        ));
        let mut wrong_id = good.clone();
        wrong_id.key_id = KeyId::of_signing_key(&SigningKey::from_bytes(&[2; 32]));
        assert!(matches!(
            TrustRoots {
                keys: vec![wrong_id]
            }
            .validate(),
            Err(TrustError::KeyIdMismatch(_))
        ));
        let mut empty = good;
        empty.not_after = Some(ts("2024-01-01T00:00:00.000Z"));
        assert!(matches!(
            TrustRoots { keys: vec![empty] }.validate(),
            Err(TrustError::EmptyWindow(_))
        ));
    }
}
