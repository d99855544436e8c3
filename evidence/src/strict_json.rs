//! Strict JSON reading for signed objects and bundles.
//!
//! `serde_json` quietly keeps the last of two duplicate keys and turns large or
//! fractional numbers into floats. Evidence must not be read two ways, so before
//! any typed parse a strict pass rejects duplicate keys, non-integer numbers, and
//! integers beyond ±(2^53 − 1) (the range a JCS reader holds exactly).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::fields::MAX_SAFE_INTEGER;
use crate::jcs::CanonicalValue;

/// Why a document was rejected by the strict reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    /// An object holds the same key twice.
    #[error("duplicate object key {key:?}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// A number with a fraction or exponent (or `-0`).
    #[error("number is not an integer")]
    NonIntegerNumber,
    /// An integer beyond ±(2^53 − 1).
    #[error("integer is outside ±(2^53 − 1)")]
    IntegerOutOfRange,
    /// Not JSON at all, trailing data, or nesting deeper than the parser allows.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// Valid strict JSON that does not match the expected type or fails a field check.
    #[error("does not match the schema: {0}")]
    Schema(String),
}

/// Checks `bytes` for duplicate keys and numbers outside the integer model, without
/// building a value.
pub fn validate(bytes: &[u8]) -> Result<(), StrictJsonError> {
    let slot = RefCell::new(None);
    let result = deserialize_all(bytes, Checker { violation: &slot });
    finish(result, slot.into_inner())
}

/// Parses `bytes` into the restricted value model, applying the strict rules.
pub fn parse_value(bytes: &[u8]) -> Result<CanonicalValue, StrictJsonError> {
    let slot = RefCell::new(None);
    let result = deserialize_all(bytes, Builder { violation: &slot });
    finish(result, slot.into_inner())
}

/// Strictly validates `bytes`, then deserializes them as `T`.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StrictJsonError> {
    validate(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| StrictJsonError::Schema(e.to_string()))
}

fn deserialize_all<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// serde_json only carries error messages; the visitors leave the typed reason in a
/// slot, which wins over the message.
fn finish<T>(
    result: Result<T, serde_json::Error>,
    violation: Option<StrictJsonError>,
) -> Result<T, StrictJsonError> {
    match (result, violation) {
        (_, Some(violation)) => Err(violation),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(StrictJsonError::Syntax(e.to_string())),
    }
}

fn record<E: de::Error>(slot: &RefCell<Option<StrictJsonError>>, violation: StrictJsonError) -> E {
    let message = violation.to_string();
    let mut current = slot.borrow_mut();
    if current.is_none() {
        *current = Some(violation);
    }
    E::custom(message)
}

fn check_i64(value: i64) -> Result<(), StrictJsonError> {
    if value.unsigned_abs() > MAX_SAFE_INTEGER {
        Err(StrictJsonError::IntegerOutOfRange)
    } else {
        Ok(())
    }
}

fn check_u64(value: u64) -> Result<(), StrictJsonError> {
    if value > MAX_SAFE_INTEGER {
        Err(StrictJsonError::IntegerOutOfRange)
    } else {
        Ok(())
    }
}

/// serde_json reports integers beyond u64 and every fraction as `f64`; whole values
/// past 2^53 are range errors, the rest are not integers.
fn classify_float(value: f64) -> StrictJsonError {
    // 2^53 as a float; the cast is exact.
    let limit = 9_007_199_254_740_992.0_f64;
    if value.is_finite() && value.fract() == 0.0 && value.abs() >= limit {
        StrictJsonError::IntegerOutOfRange
    } else {
        StrictJsonError::NonIntegerNumber
    }
}

/// Reads a key, borrowing when the input has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Finds the first duplicate in a list of keys.
fn first_duplicate(mut keys: Vec<Cow<'_, str>>) -> Option<String> {
    keys.sort_unstable();
    keys.windows(2).find_map(|pair| match pair {
        [a, b] if a == b => Some(a.to_string()),
        _ => None,
    })
}

/// The validating visitor: walks the document and keeps nothing.
#[derive(Clone, Copy)]
struct Checker<'v> {
    violation: &'v RefCell<Option<StrictJsonError>>,
}

impl<'de> DeserializeSeed<'de> for Checker<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checker<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("strict JSON")
    }
    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        check_i64(v).map_err(|e| record(self.violation, e))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        check_u64(v).map_err(|e| record(self.violation, e))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        Err(record(self.violation, classify_float(v)))
    }
    fn visit_str<E: de::Error>(self, _v: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            keys.push(key);
            map.next_value_seed(self)?;
        }
        match first_duplicate(keys) {
            Some(key) => Err(record(
                self.violation,
                StrictJsonError::DuplicateKey { key },
            )),
            None => Ok(()),
        }
    }
}

/// The building visitor: same rules, produces a [`CanonicalValue`].
#[derive(Clone, Copy)]
struct Builder<'v> {
    violation: &'v RefCell<Option<StrictJsonError>>,
}

impl<'de> DeserializeSeed<'de> for Builder<'_> {
    type Value = CanonicalValue;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<CanonicalValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Builder<'_> {
    type Value = CanonicalValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("strict JSON")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<CanonicalValue, E> {
        Ok(CanonicalValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<CanonicalValue, E> {
        check_i64(v).map_err(|e| record(self.violation, e))?;
        Ok(CanonicalValue::Integer(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<CanonicalValue, E> {
        check_u64(v).map_err(|e| record(self.violation, e))?;
        let v = i64::try_from(v)
            .map_err(|_| record(self.violation, StrictJsonError::IntegerOutOfRange))?;
        Ok(CanonicalValue::Integer(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<CanonicalValue, E> {
        Err(record(self.violation, classify_float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<CanonicalValue, E> {
        Ok(CanonicalValue::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<CanonicalValue, E> {
        Ok(CanonicalValue::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<CanonicalValue, E> {
        Ok(CanonicalValue::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CanonicalValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(CanonicalValue::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CanonicalValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value_seed(self)?;
            entries.push((key.into_owned(), value));
        }
        let keys = entries
            .iter()
            .map(|(k, _)| Cow::Borrowed(k.as_str()))
            .collect();
        match first_duplicate(keys) {
            Some(key) => Err(record(
                self.violation,
                StrictJsonError::DuplicateKey { key },
            )),
            None => Ok(CanonicalValue::Object(entries)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_rejected_at_any_depth() {
        let top = validate(br#"{"a":1,"b":2,"a":3}"#);
        assert_eq!(top, Err(StrictJsonError::DuplicateKey { key: "a".into() }));
        let nested = validate(br#"{"x":[{"k":true,"k":false}]}"#);
        assert_eq!(
            nested,
            Err(StrictJsonError::DuplicateKey { key: "k".into() })
        );
        // An escaped spelling of the same key is the same key.
        let escaped = parse_value(br#"{"a":1,"\u0061":2}"#);
        assert_eq!(
            escaped,
            Err(StrictJsonError::DuplicateKey { key: "a".into() })
        );
    }

    #[test]
    fn non_integer_numbers_are_rejected() {
        for doc in ["1.0", "1e2", "-0", "0.5", "[1,2.25]", r#"{"n":-1E-3}"#] {
            assert_eq!(
                validate(doc.as_bytes()),
                Err(StrictJsonError::NonIntegerNumber),
                "{doc}"
            );
            assert_eq!(
                parse_value(doc.as_bytes()),
                Err(StrictJsonError::NonIntegerNumber),
                "{doc}"
            );
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_are_rejected() {
        assert!(validate(b"9007199254740991").is_ok());
        assert!(validate(b"-9007199254740991").is_ok());
        for doc in [
            "9007199254740992",
            "-9007199254740992",
            "18446744073709551616",
            "1e300",
        ] {
            assert_eq!(
                validate(doc.as_bytes()),
                Err(StrictJsonError::IntegerOutOfRange),
                "{doc}"
            );
        }
    }

    #[test]
    fn syntax_errors_and_trailing_data_are_rejected() {
        assert!(matches!(validate(b"{"), Err(StrictJsonError::Syntax(_))));
        assert!(matches!(
            validate(b"{} {}"),
            Err(StrictJsonError::Syntax(_))
        ));
        assert!(matches!(
            validate(b"\"\\ud800\""),
            Err(StrictJsonError::Syntax(_))
        ));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(
            validate(deep.as_bytes()),
            Err(StrictJsonError::Syntax(_))
        ));
    }

    #[test]
    fn parse_value_keeps_the_document() {
        let value = parse_value(br#"{"b":[null,true,-3],"a":"x"}"#).unwrap();
        assert_eq!(
            value,
            CanonicalValue::Object(vec![
                (
                    "b".into(),
                    CanonicalValue::Array(vec![
                        CanonicalValue::Null,
                        CanonicalValue::Bool(true),
                        CanonicalValue::Integer(-3)
                    ])
                ),
                ("a".into(), CanonicalValue::String("x".into())),
            ])
        );
    }

    #[test]
    fn from_slice_reports_schema_errors_separately() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Thing {
            n: u8,
        }
        assert!(from_slice::<Thing>(br#"{"n":1}"#).is_ok());
        assert!(matches!(
            from_slice::<Thing>(br#"{"m":1}"#),
            Err(StrictJsonError::Schema(_))
        ));
        assert_eq!(
            from_slice::<Thing>(br#"{"n":1,"n":2}"#).unwrap_err(),
            StrictJsonError::DuplicateKey { key: "n".into() }
        );
    }
}
