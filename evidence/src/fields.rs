//! Bounded, validated field types: identifiers, Kubernetes names, codes, UUIDs and
//! JSON-safe integers.
//!
//! Every string that goes into signed evidence is one of these newtypes. Each has a
//! small character set with no whitespace and no control characters, and a length
//! bound, so a prompt, a completion or a key cannot be pasted into a receipt by
//! accident. Constructors and `Deserialize` run the same checks.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest integer an IEEE-754 double holds exactly (2^53 − 1). JCS numbers are
/// doubles, so evidence never carries a larger one.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A field value that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct FieldError {
    /// The type or field that rejected the value, e.g. `"sha256"`.
    pub field: &'static str,
    /// What was wrong with it.
    pub problem: FieldProblem,
}

impl FieldError {
    pub(crate) const fn new(field: &'static str, problem: FieldProblem) -> Self {
        Self { field, problem }
    }
}

/// Why a field value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    /// The value is empty.
    #[error("is empty")]
    Empty,
    /// The value is longer than allowed.
    #[error("is longer than {max} bytes")]
    TooLong {
        /// The bound.
        max: usize,
    },
    /// The value holds a character outside the type's set (this includes every
    /// control character and all whitespace).
    #[error("contains a character outside its allowed set")]
    BadCharacter,
    /// The value is not lowercase hexadecimal.
    #[error("is not lowercase hex")]
    NotLowercaseHex,
    /// The value has the wrong length.
    #[error("has length {found}, expected {expected}")]
    WrongLength {
        /// The required length.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// The number or instant is outside the allowed range.
    #[error("is out of range")]
    OutOfRange,
    /// The value does not have the required shape.
    #[error("is malformed")]
    Malformed,
    /// The bytes are not a usable Ed25519 public key (not a curve point, or of small order).
    #[error("is not a usable Ed25519 public key")]
    InvalidPublicKey,
    /// A list holds more entries than allowed.
    #[error("has more than {max} entries")]
    TooMany {
        /// The bound.
        max: usize,
    },
    /// A list holds the same entry twice.
    #[error("has a duplicate entry")]
    Duplicate,
    /// A constant field holds a value other than the one this version supports.
    #[error("is not a supported value")]
    Unsupported,
}

/// Checks length bounds and that every byte passes `allowed`.
fn check_chars(
    value: &str,
    field: &'static str,
    max: usize,
    allowed: fn(u8) -> bool,
) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, FieldProblem::Empty));
    }
    if value.len() > max {
        return Err(FieldError::new(field, FieldProblem::TooLong { max }));
    }
    if !value.bytes().all(allowed) {
        return Err(FieldError::new(field, FieldProblem::BadCharacter));
    }
    Ok(())
}

fn is_identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'@' | b'+' | b'=' | b'-')
}

fn is_dns_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
}

fn starts_and_ends_alphanumeric(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    alnum(bytes.first()) && alnum(bytes.last())
}

/// Defines a `String` newtype whose constructor and `Deserialize` run `$check`.
macro_rules! bounded_string {
    ($(#[$doc:meta])* $name:ident, $label:literal, $max:expr, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps a value.
            pub fn new(value: impl Into<String>) -> Result<Self, FieldError> {
                let value = value.into();
                let check: fn(&str) -> Result<(), FieldError> = $check;
                check(&value)?;
                Ok(Self(value))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = FieldError;
            fn from_str(value: &str) -> Result<Self, FieldError> {
                Self::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::new(value).map_err(D::Error::custom)
            }
        }
    };
}

bounded_string!(
    /// An opaque identifier: request ids, provider request ids, stream ids and log
    /// origins. 1 to 128 bytes of `[A-Za-z0-9._:/@+=-]`; no spaces, so free text
    /// does not fit.
    Identifier,
    "identifier",
    128,
    |v| check_chars(v, "identifier", 128, is_identifier_byte)
);

bounded_string!(
    /// A model name as requested or served (`gpt-4o`, `claude-sonnet-4-5`,
    /// `meta-llama/Llama-3-8b`). Same character set as [`Identifier`].
    ModelName,
    "model name",
    128,
    |v| check_chars(v, "model name", 128, is_identifier_byte)
);

bounded_string!(
    /// A stable machine code such as a verdict reason or guard id: a lowercase letter
    /// then up to 63 of `[a-z0-9_.-]`.
    Code,
    "code",
    64,
    |v| {
        check_chars(v, "code", 64, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })?;
        if v.as_bytes().first().is_some_and(u8::is_ascii_lowercase) {
            Ok(())
        } else {
            Err(FieldError::new("code", FieldProblem::Malformed))
        }
    }
);

bounded_string!(
    /// A Kubernetes DNS-1123 label (namespace names): 1 to 63 of `[a-z0-9-]`,
    /// starting and ending with an alphanumeric.
    DnsLabel,
    "dns label",
    63,
    |v| {
        check_chars(v, "dns label", 63, |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')?;
        if starts_and_ends_alphanumeric(v) {
            Ok(())
        } else {
            Err(FieldError::new("dns label", FieldProblem::Malformed))
        }
    }
);

bounded_string!(
    /// A Kubernetes DNS-1123 subdomain (pod, serviceAccount and provider names): 1 to
    /// 253 of `[a-z0-9.-]`, starting and ending with an alphanumeric.
    DnsSubdomain,
    "dns subdomain",
    253,
    |v| {
        check_chars(v, "dns subdomain", 253, is_dns_byte)?;
        if starts_and_ends_alphanumeric(v) && !v.contains("..") {
            Ok(())
        } else {
            Err(FieldError::new("dns subdomain", FieldProblem::Malformed))
        }
    }
);

bounded_string!(
    /// An upstream host as dialed: a lowercase DNS name or IP literal, with an optional
    /// port (`api.openai.com`, `10.0.0.1:8443`, `[::1]:443`).
    HostName,
    "host name",
    253,
    |v| check_chars(v, "host name", 253, |b| is_dns_byte(b) || matches!(b, b':' | b'[' | b']'))
);

/// Checks the 8-4-4-4-12 lowercase-hex UUID layout.
fn check_uuid_layout(value: &str, field: &'static str) -> Result<(), FieldError> {
    if value.len() != 36 {
        return Err(FieldError::new(
            field,
            FieldProblem::WrongLength {
                expected: 36,
                found: value.len(),
            },
        ));
    }
    let layout_ok = value.bytes().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
    });
    if layout_ok {
        Ok(())
    } else {
        Err(FieldError::new(field, FieldProblem::Malformed))
    }
}

bounded_string!(
    /// A receipt id: a UUIDv7 in lowercase hyphenated form (version nibble 7, RFC 9562
    /// variant). The producer generates it; the library only checks it.
    ReceiptId,
    "receipt id",
    36,
    |v| {
        check_uuid_layout(v, "receipt id")?;
        let bytes = v.as_bytes();
        let version_ok = bytes.get(14) == Some(&b'7');
        let variant_ok = bytes.get(19).is_some_and(|b| matches!(b, b'8' | b'9' | b'a' | b'b'));
        if version_ok && variant_ok {
            Ok(())
        } else {
            Err(FieldError::new("receipt id", FieldProblem::Malformed))
        }
    }
);

bounded_string!(
    /// A Kubernetes object UID (a UUID of any version) in lowercase hyphenated form.
    PodUid,
    "pod uid",
    36,
    |v| check_uuid_layout(v, "pod uid")
);

/// A non-negative integer no larger than 2^53 − 1, so that every JCS reader sees it
/// exactly. Used for counts, sizes, sequence numbers, token counts, money and
/// durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafeU64(u64);

impl SafeU64 {
    /// Zero.
    pub const ZERO: Self = Self(0);
    /// 2^53 − 1.
    pub const MAX: Self = Self(MAX_SAFE_INTEGER);

    /// Wraps `value`, rejecting anything above 2^53 − 1.
    pub const fn new(value: u64) -> Result<Self, FieldError> {
        if value > MAX_SAFE_INTEGER {
            Err(FieldError::new("integer", FieldProblem::OutOfRange))
        } else {
            Ok(Self(value))
        }
    }

    /// Converts a `usize` (a length or an index).
    pub fn from_usize(value: usize) -> Result<Self, FieldError> {
        u64::try_from(value)
            .map_err(|_| FieldError::new("integer", FieldProblem::OutOfRange))
            .and_then(Self::new)
    }

    /// The value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self + other`, or `None` past 2^53 − 1.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).and_then(|v| Self::new(v).ok())
    }

    /// `self + 1`, or `None` past 2^53 − 1.
    pub fn checked_increment(self) -> Option<Self> {
        self.checked_add(Self(1))
    }
}

impl From<u32> for SafeU64 {
    fn from(value: u32) -> Self {
        Self(u64::from(value))
    }
}

impl fmt::Display for SafeU64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SafeU64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for SafeU64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        Self::new(value).map_err(D::Error::custom)
    }
}

/// Defines a unit struct that (de)serializes as one fixed string: schema and format
/// identifiers. Anything else fails to deserialize.
macro_rules! constant_string {
    ($(#[$doc:meta])* $name:ident = $value:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name;

        impl $name {
            /// The fixed value.
            pub const VALUE: &'static str = $value;
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(Self::VALUE)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(deserializer)?;
                if value == Self::VALUE {
                    Ok(Self)
                } else {
                    Err(<D::Error as ::serde::de::Error>::custom($crate::fields::FieldError::new(
                        concat!("schema ", $value),
                        $crate::fields::FieldProblem::Unsupported,
                    )))
                }
            }
        }
    };
}
pub(crate) use constant_string;

/// The only schema version this library reads and writes. A new version is a new
/// type, so old verifiers fail closed on new evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SchemaVersion1;

impl Serialize for SchemaVersion1 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(1)
    }
}

impl<'de> Deserialize<'de> for SchemaVersion1 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u64::deserialize(deserializer)? {
            1 => Ok(Self),
            _ => Err(D::Error::custom(FieldError::new(
                "schema version",
                FieldProblem::Unsupported,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_accepts_typical_ids_and_rejects_free_text() {
        assert!(Identifier::new("chatcmpl-AbC123_x.y:z/1@2+3=").is_ok());
        assert_eq!(
            Identifier::new("").unwrap_err().problem,
            FieldProblem::Empty
        );
        assert_eq!(
            Identifier::new("please summarise this")
                .unwrap_err()
                .problem,
            FieldProblem::BadCharacter
        );
        assert_eq!(
            Identifier::new("a\u{7}b").unwrap_err().problem,
            FieldProblem::BadCharacter
        );
        assert_eq!(
            Identifier::new("é").unwrap_err().problem,
            FieldProblem::BadCharacter
        );
        assert_eq!(
            Identifier::new("x".repeat(129)).unwrap_err().problem,
            FieldProblem::TooLong { max: 128 }
        );
        assert!(Identifier::new("x".repeat(128)).is_ok());
    }

    #[test]
    fn code_must_start_with_a_lowercase_letter() {
        assert!(Code::new("quota.exceeded_1").is_ok());
        assert_eq!(
            Code::new("1abc").unwrap_err().problem,
            FieldProblem::Malformed
        );
        assert_eq!(
            Code::new("Abc").unwrap_err().problem,
            FieldProblem::BadCharacter
        );
    }

    #[test]
    fn dns_names_follow_rfc_1123() {
        assert!(DnsLabel::new("team-a").is_ok());
        assert!(DnsLabel::new("-team").is_err());
        assert!(DnsLabel::new("team.a").is_err());
        assert!(DnsLabel::new("x".repeat(64)).is_err());
        assert!(DnsSubdomain::new("app-7f9c.default").is_ok());
        assert!(DnsSubdomain::new("app..x").is_err());
        assert!(DnsSubdomain::new("App").is_err());
    }

    #[test]
    fn receipt_id_requires_uuid_v7() {
        assert!(ReceiptId::new("0192f0c4-7a1b-7c3d-8e4f-0123456789ab").is_ok());
        // version 4
        assert!(ReceiptId::new("0192f0c4-7a1b-4c3d-8e4f-0123456789ab").is_err());
        // variant bits
        assert!(ReceiptId::new("0192f0c4-7a1b-7c3d-ce4f-0123456789ab").is_err());
        // uppercase
        assert!(ReceiptId::new("0192F0C4-7A1B-7C3D-8E4F-0123456789AB").is_err());
        assert!(PodUid::new("6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab").is_ok());
        assert!(PodUid::new("6f1c2d3e4a5b4c6d8e7f0123456789ab").is_err());
    }

    #[test]
    fn safe_u64_stops_at_2_pow_53_minus_1() {
        assert_eq!(
            SafeU64::new(MAX_SAFE_INTEGER).unwrap().get(),
            9_007_199_254_740_991
        );
        assert!(SafeU64::new(MAX_SAFE_INTEGER + 1).is_err());
        assert_eq!(SafeU64::MAX.checked_increment(), None);
        let parsed: Result<SafeU64, _> = serde_json::from_str("9007199254740992");
        assert!(parsed.is_err());
    }

    #[test]
    fn deserialize_runs_the_same_checks() {
        let bad: Result<Identifier, _> = serde_json::from_str("\"has space\"");
        assert!(bad.is_err());
        let good: Identifier = serde_json::from_str("\"req-1\"").unwrap();
        assert_eq!(good.as_str(), "req-1");
        let version: Result<SchemaVersion1, _> = serde_json::from_str("2");
        assert!(version.is_err());
    }
}
