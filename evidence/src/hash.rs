//! SHA-256 digests as lowercase hex, and hash links that may point at the start of a
//! chain (`GENESIS`).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::fields::{FieldError, FieldProblem};
use crate::jcs::{CanonicalError, to_canonical_bytes};

/// Decodes exactly `N` bytes of lowercase hex.
pub(crate) fn decode_lower_hex<const N: usize>(
    value: &str,
    field: &'static str,
) -> Result<[u8; N], FieldError> {
    if value.len() != 2 * N {
        return Err(FieldError::new(
            field,
            FieldProblem::WrongLength {
                expected: 2 * N,
                found: value.len(),
            },
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(FieldError::new(field, FieldProblem::NotLowercaseHex));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| FieldError::new(field, FieldProblem::NotLowercaseHex))?;
    Ok(out)
}

/// A SHA-256 digest, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Hex([u8; 32]);

impl Sha256Hex {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// SHA-256 of `data`.
    pub fn digest(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses 64 lowercase hex characters.
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        decode_lower_hex::<32>(value, "sha256").map(Self)
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hex({})", self.to_hex())
    }
}

impl std::str::FromStr for Sha256Hex {
    type Err = FieldError;
    fn from_str(value: &str) -> Result<Self, FieldError> {
        Self::parse(value)
    }
}

impl Serialize for Sha256Hex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

/// Deserializes any `FromStr` type from a string without allocating when possible.
pub(crate) struct ParseStrVisitor<T>(
    pub(crate) std::marker::PhantomData<T>,
    pub(crate) &'static str,
);

impl<T> Visitor<'_> for ParseStrVisitor<T>
where
    T: std::str::FromStr<Err = FieldError>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseStrVisitor(
            std::marker::PhantomData,
            "64 lowercase hex characters",
        ))
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Sha256Hex {
    Sha256Hex::digest(data)
}

/// SHA-256 of the RFC 8785 encoding of `value`.
pub fn sha256_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Sha256Hex, CanonicalError> {
    to_canonical_bytes(value).map(|bytes| sha256(&bytes))
}

/// The marker a first link carries instead of a predecessor's hash.
pub const GENESIS: &str = "GENESIS";

/// A link to the previous element of a chain: its hash, or `GENESIS` for the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrevHash {
    /// This is the first element.
    Genesis,
    /// The hash of the previous element.
    Hash(Sha256Hex),
}

impl PrevHash {
    /// The hash, if this is not a first link.
    pub const fn hash(&self) -> Option<&Sha256Hex> {
        match self {
            Self::Genesis => None,
            Self::Hash(h) => Some(h),
        }
    }
}

impl fmt::Display for PrevHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Genesis => f.write_str(GENESIS),
            Self::Hash(h) => h.fmt(f),
        }
    }
}

impl std::str::FromStr for PrevHash {
    type Err = FieldError;
    fn from_str(value: &str) -> Result<Self, FieldError> {
        if value == GENESIS {
            Ok(Self::Genesis)
        } else {
            Sha256Hex::parse(value).map(Self::Hash)
        }
    }
}

impl Serialize for PrevHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Genesis => serializer.serialize_str(GENESIS),
            Self::Hash(h) => h.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for PrevHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseStrVisitor(
            std::marker::PhantomData,
            "GENESIS or 64 lowercase hex characters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_must_be_lowercase_and_exact_length() {
        let lower = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(Sha256Hex::parse(lower).is_ok());
        assert_eq!(
            Sha256Hex::parse(&lower.to_uppercase()).unwrap_err().problem,
            FieldProblem::NotLowercaseHex
        );
        assert!(matches!(
            Sha256Hex::parse(&lower[1..]).unwrap_err().problem,
            FieldProblem::WrongLength { .. }
        ));
        assert!(serde_json::from_str::<Sha256Hex>(&format!("\"{lower}0\"")).is_err());
        let back: Sha256Hex = serde_json::from_str(&format!("\"{lower}\"")).unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            format!("\"{lower}\"")
        );
    }

    #[test]
    fn prev_hash_round_trips() {
        let genesis: PrevHash = serde_json::from_str("\"GENESIS\"").unwrap();
        assert_eq!(genesis, PrevHash::Genesis);
        assert!(serde_json::from_str::<PrevHash>("\"genesis\"").is_err());
        let linked = PrevHash::Hash(sha256(b"x"));
        let text = serde_json::to_string(&linked).unwrap();
        assert_eq!(serde_json::from_str::<PrevHash>(&text).unwrap(), linked);
    }
}
