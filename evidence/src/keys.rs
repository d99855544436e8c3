//! Ed25519 public keys, key ids and signatures over canonical JSON.
//!
//! `key_id = lowercase hex(sha256(public key bytes))`. Signatures are always over
//! the RFC 8785 bytes of the signed object and are checked with `verify_strict`,
//! which refuses small-order keys and non-canonical encodings. The library never
//! makes keys: callers bring a [`SigningKey`] (tests derive them from fixed seeds).

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fields::{FieldError, FieldProblem};
use crate::hash::{ParseStrVisitor, Sha256Hex, decode_lower_hex, sha256};
use crate::jcs::{CanonicalError, to_canonical_bytes};

pub use ed25519_dalek::SigningKey;

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signed object has no canonical encoding.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// The object names a different key than the one offered.
    #[error("the object names key {named}, not {offered}")]
    KeyIdMismatch {
        /// The key id the object carries.
        named: KeyId,
        /// The key id of the key used to verify.
        offered: KeyId,
    },
    /// The signature is not valid for this key and message.
    #[error("signature does not verify")]
    Invalid,
}

/// The id of an Ed25519 key: SHA-256 of its 32 public key bytes, in lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(Sha256Hex);

impl KeyId {
    /// The id of `public_key`.
    pub fn of(public_key: &PublicKey) -> Self {
        Self(sha256(public_key.as_bytes()))
    }

    /// The id of the public half of `signing_key`.
    pub fn of_signing_key(signing_key: &SigningKey) -> Self {
        Self(sha256(signing_key.verifying_key().as_bytes()))
    }

    /// Parses 64 lowercase hex characters.
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        Sha256Hex::parse(value).map(Self)
    }

    /// The digest.
    pub const fn digest(&self) -> &Sha256Hex {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl std::str::FromStr for KeyId {
    type Err = FieldError;
    fn from_str(value: &str) -> Result<Self, FieldError> {
        Self::parse(value)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Sha256Hex::deserialize(deserializer).map(Self)
    }
}

/// An Ed25519 public key that is a valid curve point of large order. Written as 64
/// lowercase hex characters in evidence.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Checks and wraps 32 raw key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, FieldError> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| FieldError::new("public key", FieldProblem::InvalidPublicKey))?;
        if key.is_weak() {
            return Err(FieldError::new(
                "public key",
                FieldProblem::InvalidPublicKey,
            ));
        }
        Ok(Self(key))
    }

    /// Parses 64 lowercase hex characters.
    pub fn from_hex(value: &str) -> Result<Self, FieldError> {
        Self::from_bytes(&decode_lower_hex::<32>(value, "public key")?)
    }

    /// Parses standard base64 (with padding) of the 32 raw bytes, as TrustAnchor
    /// objects carry it.
    pub fn from_base64(value: &str) -> Result<Self, FieldError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| FieldError::new("public key", FieldProblem::Malformed))?;
        let found = bytes.len();
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
            FieldError::new(
                "public key",
                FieldProblem::WrongLength {
                    expected: 32,
                    found,
                },
            )
        })?;
        Self::from_bytes(&bytes)
    }

    /// Standard base64 (with padding) of the 32 raw bytes, as TrustAnchor objects carry it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.as_bytes())
    }

    /// The public half of `signing_key`.
    pub fn of_signing_key(signing_key: &SigningKey) -> Self {
        Self(signing_key.verifying_key())
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// This key's id.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(self)
    }

    /// Verifies `signature` over `message` with strict Ed25519 rules.
    pub fn verify_strict(
        &self,
        message: &[u8],
        signature: &SignatureHex,
    ) -> Result<(), SignatureError> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify_strict(message, &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.as_bytes()))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = FieldError;
    fn from_str(value: &str) -> Result<Self, FieldError> {
        Self::from_hex(value)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.as_bytes()))
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseStrVisitor(
            std::marker::PhantomData,
            "a hex Ed25519 public key",
        ))
    }
}

/// An Ed25519 signature, written as 128 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureHex([u8; 64]);

impl SignatureHex {
    /// Wraps raw signature bytes.
    pub const fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// Parses 128 lowercase hex characters.
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        decode_lower_hex::<64>(value, "signature").map(Self)
    }
}

impl fmt::Debug for SignatureHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureHex({})", hex::encode(self.0))
    }
}

impl std::str::FromStr for SignatureHex {
    type Err = FieldError;
    fn from_str(value: &str) -> Result<Self, FieldError> {
        Self::parse(value)
    }
}

impl Serialize for SignatureHex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 128];
        hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for SignatureHex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseStrVisitor(
            std::marker::PhantomData,
            "128 lowercase hex characters",
        ))
    }
}

/// What signs a gateway's records: its key's id and Ed25519 signatures over
/// the bytes it is given. A [`SigningKey`] is one; a gateway's hot path brings
/// a faster implementation of the same key (Ed25519 is deterministic, so every
/// implementation of one key signs a message with the same 64 bytes).
pub trait RecordSigner {
    /// The id of the key that signs.
    fn key_id(&self) -> KeyId;

    /// The Ed25519 signature of `message`.
    fn sign_message(&self, message: &[u8]) -> SignatureHex;
}

impl RecordSigner for SigningKey {
    fn key_id(&self) -> KeyId {
        KeyId::of_signing_key(self)
    }

    fn sign_message(&self, message: &[u8]) -> SignatureHex {
        SignatureHex(self.sign(message).to_bytes())
    }
}

/// Signs the RFC 8785 bytes of `value`.
pub fn sign_canonical<T: Serialize + ?Sized>(
    value: &T,
    key: &SigningKey,
) -> Result<SignatureHex, CanonicalError> {
    let message = to_canonical_bytes(value)?;
    Ok(SignatureHex(key.sign(&message).to_bytes()))
}

/// Verifies `signature` over the RFC 8785 bytes of `value` with strict rules.
pub fn verify_canonical<T: Serialize + ?Sized>(
    value: &T,
    key: &PublicKey,
    signature: &SignatureHex,
) -> Result<(), SignatureError> {
    let message = to_canonical_bytes(value)?;
    key.verify_strict(&message, signature)
}

/// Checks that `named` is the id of `key`, then verifies.
pub(crate) fn verify_named<T: Serialize + ?Sized>(
    value: &T,
    named: &KeyId,
    key: &PublicKey,
    signature: &SignatureHex,
) -> Result<(), SignatureError> {
    let offered = key.key_id();
    if offered != *named {
        return Err(SignatureError::KeyIdMismatch {
            named: *named,
            offered,
        });
    }
    verify_canonical(value, key, signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8032_test_1_verifies_strictly() {
        let public =
            PublicKey::from_hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let signature = SignatureHex::parse(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        )
        .unwrap();
        assert!(public.verify_strict(b"", &signature).is_ok());
        assert_eq!(
            public.verify_strict(b"x", &signature),
            Err(SignatureError::Invalid)
        );
        let secret = SigningKey::from_bytes(
            &decode_lower_hex::<32>(
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "k",
            )
            .unwrap(),
        );
        assert_eq!(PublicKey::of_signing_key(&secret), public);
    }

    #[test]
    fn key_id_is_sha256_of_the_raw_public_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = PublicKey::of_signing_key(&key);
        assert_eq!(KeyId::of(&public).digest(), &sha256(public.as_bytes()));
        assert_eq!(KeyId::of_signing_key(&key), public.key_id());
    }

    #[test]
    fn small_order_and_invalid_keys_are_rejected() {
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            PublicKey::from_bytes(&identity).unwrap_err().problem,
            FieldProblem::InvalidPublicKey
        );
        assert!(PublicKey::from_base64("AAAA").is_err());
    }

    #[test]
    fn base64_and_hex_forms_agree() {
        let public = PublicKey::of_signing_key(&SigningKey::from_bytes(&[9; 32]));
        let b64 = base64::engine::general_purpose::STANDARD.encode(public.as_bytes());
        assert_eq!(PublicKey::from_base64(&b64).unwrap(), public);
        assert_eq!(public.to_base64(), b64);
        let hex_text = serde_json::to_string(&public).unwrap();
        assert_eq!(
            serde_json::from_str::<PublicKey>(&hex_text).unwrap(),
            public
        );
    }

    #[test]
    fn canonical_signatures_ignore_key_order_but_not_content() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let public = PublicKey::of_signing_key(&key);
        let a = crate::strict_json::parse_value(br#"{"b":1,"a":2}"#).unwrap();
        let b = crate::strict_json::parse_value(br#"{"a":2,"b":1}"#).unwrap();
        let c = crate::strict_json::parse_value(br#"{"a":2,"b":2}"#).unwrap();
        let signature = sign_canonical(&a, &key).unwrap();
        assert!(verify_canonical(&b, &public, &signature).is_ok());
        assert_eq!(
            verify_canonical(&c, &public, &signature),
            Err(SignatureError::Invalid)
        );
        let other = PublicKey::of_signing_key(&SigningKey::from_bytes(&[4; 32]));
        assert!(matches!(
            verify_named(&a, &public.key_id(), &other, &signature),
            Err(SignatureError::KeyIdMismatch { .. })
        ));
    }
}
