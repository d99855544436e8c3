//! Caller identity, hashed: the end-user id an app sends with a request
//! becomes `caller_hash` = HMAC-SHA256(caller key, id) in its receipt, so usage
//! can be grouped per end user while the id itself is never stored.
//!
//! The key is per cluster (the operator generates it once and hands it to
//! every gateway in its config document) or per local-mode state directory, so
//! one user has one hash across namespaces and restarts, and nobody without the
//! key can test a guessed id against a hash. It is 32 random bytes, written as
//! 64 lowercase hex digits.

use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a caller key in bytes.
pub const CALLER_KEY_BYTES: usize = 32;

/// The key caller ids are hashed under. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct CallerKey([u8; CALLER_KEY_BYTES]);

/// Why a caller key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a caller key is {CALLER_KEY_BYTES} bytes written as 64 hex digits")]
pub struct CallerKeyError;

impl CallerKey {
    /// Wraps key bytes.
    pub const fn from_bytes(bytes: [u8; CALLER_KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hex digits (surrounding whitespace, such as a file's
    /// trailing newline, is ignored).
    pub fn from_hex(text: &str) -> Result<Self, CallerKeyError> {
        let mut bytes = [0u8; CALLER_KEY_BYTES];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| CallerKeyError)?;
        Ok(Self(bytes))
    }

    /// The 64 hex digits, for the one place that stores or sends the key.
    pub fn expose_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// HMAC-SHA256 of `caller_id` under this key.
    pub fn hash(&self, caller_id: &[u8]) -> [u8; 32] {
        // HMAC pads a key shorter than the hash's 64-byte block with zeros
        // (RFC 2104), so padding it here gives the same MAC with no fallible
        // constructor.
        let mut block = [0u8; 64];
        block[..CALLER_KEY_BYTES].copy_from_slice(&self.0);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        mac.update(caller_id);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for CallerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallerKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_hmac_sha256_of_the_id_under_the_key() {
        // Computed independently: `printf 'Hi There' | openssl dgst -sha256
        // -mac HMAC -macopt hexkey:0b0b…0b` (32 bytes of 0x0b).
        let key = CallerKey::from_bytes([0x0b; 32]);
        assert_eq!(
            hex::encode(key.hash(b"Hi There")),
            "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
        assert_ne!(key.hash(b"alice"), key.hash(b"bob"));
        let other = CallerKey::from_bytes([0x0c; 32]);
        assert_ne!(key.hash(b"alice"), other.hash(b"alice"));
    }

    #[test]
    fn keys_round_trip_as_hex_and_never_show_in_debug() {
        let key = CallerKey::from_bytes([0xab; 32]);
        let text = key.expose_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(CallerKey::from_hex(&format!("{text}\n")).unwrap(), key);
        assert!(!format!("{key:?}").contains("ab"));
        assert_eq!(CallerKey::from_hex("abcd"), Err(CallerKeyError));
        assert_eq!(CallerKey::from_hex(&"zz".repeat(32)), Err(CallerKeyError));
    }
}
