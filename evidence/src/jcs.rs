//! RFC 8785 JSON Canonicalization Scheme (JCS) over a restricted value model:
//! null, booleans, integers within ±(2^53 − 1), strings, arrays and objects. There are
//! no floats anywhere in evidence, so the encoder refuses them instead of
//! reimplementing ECMAScript number formatting.
//!
//! [`to_canonical_bytes`] encodes any `Serialize` value straight to JCS bytes; the
//! same bytes are what gets signed and hashed.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use serde::ser::{self, Impossible, Serialize};

use crate::fields::MAX_SAFE_INTEGER;

/// Why a value has no canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A floating-point number: evidence carries integers only.
    #[error("floating-point numbers have no canonical form in evidence")]
    Float,
    /// An integer a JCS reader (IEEE-754 double) cannot hold exactly.
    #[error("integer {0} is outside ±(2^53 − 1)")]
    IntegerOutOfRange(i128),
    /// A map key that is not a string.
    #[error("object keys must be strings")]
    NonStringKey,
    /// The same key twice in one object.
    #[error("duplicate object key {0:?}")]
    DuplicateKey(String),
    /// A serde data type with no JSON meaning here (byte strings).
    #[error("{0} cannot be encoded canonically")]
    Unsupported(&'static str),
    /// An error raised by a `Serialize` implementation.
    #[error("{0}")]
    Custom(String),
}

impl ser::Error for CanonicalError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }
}

/// The restricted JSON value model. Objects keep their entries in insertion order;
/// encoding sorts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanonicalValue {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer; encoding rejects values beyond ±(2^53 − 1).
    Integer(i64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<CanonicalValue>),
    /// An object as key/value pairs; encoding rejects duplicate keys.
    Object(Vec<(String, CanonicalValue)>),
}

impl Serialize for CanonicalValue {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use ser::{SerializeMap, SerializeSeq};
        match self {
            Self::Null => serializer.serialize_unit(),
            Self::Bool(b) => serializer.serialize_bool(*b),
            Self::Integer(i) => serializer.serialize_i64(*i),
            Self::String(s) => serializer.serialize_str(s),
            Self::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

/// Encodes `value` as RFC 8785 canonical JSON.
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(1024);
    write_canonical(value, &mut out)?;
    Ok(out)
}

/// Appends the canonical encoding of `value` to `out`.
pub fn write_canonical<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    value.serialize(CanonicalSerializer { out })
}

/// Orders object keys as RFC 8785 requires: by their UTF-16 code units.
pub fn compare_keys(a: &str, b: &str) -> Ordering {
    // UTF-8 byte order equals code point order, which differs from UTF-16 order
    // only once characters outside the Basic Multilingual Plane appear.
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// Writes a JSON string literal with exactly the escapes RFC 8785 prescribes.
pub fn write_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(run_start..i).unwrap_or_default());
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(short);
        }
        run_start = i + 1;
    }
    out.extend_from_slice(bytes.get(run_start..).unwrap_or_default());
    out.push(b'"');
}

fn write_integer(out: &mut Vec<u8>, value: i128) -> Result<(), CanonicalError> {
    let magnitude = value.unsigned_abs();
    if magnitude > u128::from(MAX_SAFE_INTEGER) {
        return Err(CanonicalError::IntegerOutOfRange(value));
    }
    if value < 0 {
        out.push(b'-');
    }
    // Formatting through u64 digits: i128 `Display` is an order of magnitude slower,
    // and receipts carry many integers.
    let mut n = u64::try_from(magnitude).map_err(|_| CanonicalError::IntegerOutOfRange(value))?;
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(slot) = digits.get_mut(start) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || start == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
    Ok(())
}

struct CanonicalSerializer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> ser::Serializer for CanonicalSerializer<'a> {
    type Ok = ();
    type Error = CanonicalError;
    type SerializeSeq = ArrayWriter<'a>;
    type SerializeTuple = ArrayWriter<'a>;
    type SerializeTupleStruct = ArrayWriter<'a>;
    type SerializeTupleVariant = ArrayWriter<'a>;
    type SerializeMap = ObjectWriter<'a>;
    type SerializeStruct = ObjectWriter<'a>;
    type SerializeStructVariant = ObjectWriter<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), CanonicalError> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), CanonicalError> {
        write_integer(self.out, i128::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), CanonicalError> {
        write_integer(self.out, i128::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), CanonicalError> {
        write_integer(self.out, i128::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), CanonicalError> {
        write_integer(self.out, i128::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<(), CanonicalError> {
        write_integer(self.out, v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), CanonicalError> {
        write_integer(self.out, i128::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), CanonicalError> {
        write_integer(self.out, i128::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), CanonicalError> {
        write_integer(self.out, i128::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), CanonicalError> {
        write_integer(self.out, i128::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<(), CanonicalError> {
        let v = i128::try_from(v).map_err(|_| CanonicalError::IntegerOutOfRange(i128::MAX))?;
        write_integer(self.out, v)
    }
    fn serialize_f32(self, _v: f32) -> Result<(), CanonicalError> {
        Err(CanonicalError::Float)
    }
    fn serialize_f64(self, _v: f64) -> Result<(), CanonicalError> {
        Err(CanonicalError::Float)
    }
    fn serialize_char(self, v: char) -> Result<(), CanonicalError> {
        write_string(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), CanonicalError> {
        write_string(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), CanonicalError> {
        Err(CanonicalError::Unsupported("byte strings"))
    }
    fn serialize_none(self) -> Result<(), CanonicalError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CanonicalError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), CanonicalError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), CanonicalError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        // A one-key object needs no sorting.
        self.out.push(b'{');
        write_string(self.out, variant);
        self.out.push(b':');
        value.serialize(CanonicalSerializer {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<ArrayWriter<'a>, CanonicalError> {
        self.out.push(b'[');
        Ok(ArrayWriter {
            out: self.out,
            first: true,
            in_variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<ArrayWriter<'a>, CanonicalError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<ArrayWriter<'a>, CanonicalError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<ArrayWriter<'a>, CanonicalError> {
        self.out.push(b'{');
        write_string(self.out, variant);
        self.out.extend_from_slice(b":[");
        Ok(ArrayWriter {
            out: self.out,
            first: true,
            in_variant: true,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<ObjectWriter<'a>, CanonicalError> {
        Ok(ObjectWriter::new(self.out, len.unwrap_or(8), false))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<ObjectWriter<'a>, CanonicalError> {
        Ok(ObjectWriter::new(self.out, len, false))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<ObjectWriter<'a>, CanonicalError> {
        self.out.push(b'{');
        write_string(self.out, variant);
        self.out.push(b':');
        Ok(ObjectWriter::new(self.out, len, true))
    }
}

struct ArrayWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    in_variant: bool,
}

impl ArrayWriter<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(CanonicalSerializer {
            out: &mut *self.out,
        })
    }

    fn finish(self) -> Result<(), CanonicalError> {
        self.out.push(b']');
        if self.in_variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeSeq for ArrayWriter<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_element<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), CanonicalError> {
        self.element(value)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish()
    }
}

impl ser::SerializeTuple for ArrayWriter<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_element<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), CanonicalError> {
        self.element(value)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for ArrayWriter<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        self.element(value)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for ArrayWriter<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        self.element(value)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish()
    }
}

struct Member {
    key: Cow<'static, str>,
    ascii: bool,
    start: usize,
    end: usize,
}

impl Member {
    fn order(&self, other: &Self) -> Ordering {
        if self.ascii && other.ascii {
            self.key.as_bytes().cmp(other.key.as_bytes())
        } else {
            compare_keys(&self.key, &other.key)
        }
    }
}

/// Buffers an object's members (encoded values in one scratch buffer), then writes
/// them sorted by key.
struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    scratch: Vec<u8>,
    /// Key, whether the key is ASCII (then byte order is UTF-16 order), and the
    /// value's range in `scratch`.
    members: Vec<Member>,
    pending_key: Option<String>,
    in_variant: bool,
}

impl<'a> ObjectWriter<'a> {
    fn new(out: &'a mut Vec<u8>, len: usize, in_variant: bool) -> Self {
        Self {
            out,
            scratch: Vec::with_capacity(len.saturating_mul(24)),
            members: Vec::with_capacity(len),
            pending_key: None,
            in_variant,
        }
    }

    fn member<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), CanonicalError> {
        let start = self.scratch.len();
        value.serialize(CanonicalSerializer {
            out: &mut self.scratch,
        })?;
        let ascii = key.is_ascii();
        self.members.push(Member {
            key,
            ascii,
            start,
            end: self.scratch.len(),
        });
        Ok(())
    }

    fn finish(mut self) -> Result<(), CanonicalError> {
        if !self
            .members
            .is_sorted_by(|a, b| a.order(b) == Ordering::Less)
        {
            self.members.sort_unstable_by(Member::order);
            if let Some(pair) = self
                .members
                .windows(2)
                .find(|pair| matches!(pair, [a, b] if a.key == b.key))
            {
                let key = pair.first().map(|m| m.key.to_string()).unwrap_or_default();
                return Err(CanonicalError::DuplicateKey(key));
            }
        }
        self.out.push(b'{');
        for (i, member) in self.members.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_string(self.out, &member.key);
            self.out.push(b':');
            self.out.extend_from_slice(
                self.scratch
                    .get(member.start..member.end)
                    .unwrap_or_default(),
            );
        }
        self.out.push(b'}');
        if self.in_variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeStruct for ObjectWriter<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        self.member(Cow::Borrowed(key), value)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for ObjectWriter<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        self.member(Cow::Borrowed(key), value)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish()
    }
}

impl ser::SerializeMap for ObjectWriter<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), CanonicalError> {
        self.pending_key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| CanonicalError::Custom("map value without a key".to_owned()))?;
        self.member(Cow::Owned(key), value)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish()
    }
}

/// Accepts only string-like map keys.
struct KeySerializer;

macro_rules! reject_key {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _v: $ty) -> Result<String, CanonicalError> {
            Err(CanonicalError::NonStringKey)
        })*
    };
}

impl ser::Serializer for KeySerializer {
    type Ok = String;
    type Error = CanonicalError;
    type SerializeSeq = Impossible<String, CanonicalError>;
    type SerializeTuple = Impossible<String, CanonicalError>;
    type SerializeTupleStruct = Impossible<String, CanonicalError>;
    type SerializeTupleVariant = Impossible<String, CanonicalError>;
    type SerializeMap = Impossible<String, CanonicalError>;
    type SerializeStruct = Impossible<String, CanonicalError>;
    type SerializeStructVariant = Impossible<String, CanonicalError>;

    reject_key!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_bytes(&[u8]),
    );

    fn serialize_char(self, v: char) -> Result<String, CanonicalError> {
        Ok(v.to_string())
    }
    fn serialize_str(self, v: &str) -> Result<String, CanonicalError> {
        Ok(v.to_owned())
    }
    fn serialize_none(self) -> Result<String, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_unit(self) -> Result<String, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, CanonicalError> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, CanonicalError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, CanonicalError> {
        Err(CanonicalError::NonStringKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strict_json;

    fn canonical_text(json: &str) -> String {
        let value = strict_json::parse_value(json.as_bytes()).unwrap();
        String::from_utf8(to_canonical_bytes(&value).unwrap()).unwrap()
    }

    /// RFC 8785 §3.2.2.2: string escaping.
    #[test]
    fn rfc8785_string_escaping() {
        let input = r#""\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/""#;
        assert_eq!(
            canonical_text(input),
            "\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\""
        );
    }

    /// RFC 8785 §3.2.4 without its `numbers` member (floats are outside the model).
    #[test]
    fn rfc8785_main_example_without_floats() {
        let input = r#"{
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        assert_eq!(
            canonical_text(input),
            r#"{"literals":[null,true,false],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    /// RFC 8785 §3.2.3: keys sort by UTF-16 code units, so the emoji (a surrogate
    /// pair, 0xD83D…) sorts before U+FB33 although its code point is larger.
    #[test]
    fn rfc8785_key_ordering() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let value = strict_json::parse_value(input.as_bytes()).unwrap();
        let text = String::from_utf8(to_canonical_bytes(&value).unwrap()).unwrap();
        let order: Vec<&str> = text
            .split("\":\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "Carriage Return",
                "One",
                "Control",
                "Latin Small Letter O With Diaeresis",
                "Euro Sign",
                "Emoji: Grinning Face",
                "Hebrew Letter Dalet With Dagesh"
            ]
        );
        assert!(
            text.starts_with("{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\"")
        );
    }

    #[test]
    fn control_characters_use_lowercase_unicode_escapes() {
        let mut out = Vec::new();
        write_string(&mut out, "\u{0}\u{1f}\u{7f}\u{8}\t\n\u{c}\r/");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"\\u0000\\u001f\u{7f}\\b\\t\\n\\f\\r/\""
        );
    }

    #[test]
    fn integers_are_plain_decimal_within_the_safe_range() {
        assert_eq!(to_canonical_bytes(&0u8).unwrap(), b"0");
        assert_eq!(to_canonical_bytes(&-42i64).unwrap(), b"-42");
        assert_eq!(
            to_canonical_bytes(&9_007_199_254_740_991u64).unwrap(),
            b"9007199254740991"
        );
        assert_eq!(
            to_canonical_bytes(&-9_007_199_254_740_991i64).unwrap(),
            b"-9007199254740991"
        );
        assert_eq!(
            to_canonical_bytes(&9_007_199_254_740_992u64),
            Err(CanonicalError::IntegerOutOfRange(9_007_199_254_740_992))
        );
        assert_eq!(to_canonical_bytes(&1.5f64), Err(CanonicalError::Float));
    }

    #[test]
    fn structs_are_sorted_and_nested_structs_too() {
        #[derive(serde::Serialize)]
        struct Inner {
            z: u8,
            a: Option<u8>,
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            Plain,
            Wrapped(u8),
        }
        #[derive(serde::Serialize)]
        struct Outer {
            zeta: Inner,
            alpha: Vec<Kind>,
            mid: &'static str,
        }
        let value = Outer {
            zeta: Inner { z: 1, a: None },
            alpha: vec![Kind::Plain, Kind::Wrapped(2)],
            mid: "m",
        };
        assert_eq!(
            String::from_utf8(to_canonical_bytes(&value).unwrap()).unwrap(),
            r#"{"alpha":["plain",{"wrapped":2}],"mid":"m","zeta":{"a":null,"z":1}}"#
        );
    }

    #[test]
    fn duplicate_and_non_string_keys_are_errors() {
        let dup = CanonicalValue::Object(vec![
            ("a".into(), CanonicalValue::Null),
            ("a".into(), CanonicalValue::Bool(true)),
        ]);
        assert_eq!(
            to_canonical_bytes(&dup),
            Err(CanonicalError::DuplicateKey("a".into()))
        );
        let mut map = std::collections::BTreeMap::new();
        map.insert(1u8, 2u8);
        assert_eq!(to_canonical_bytes(&map), Err(CanonicalError::NonStringKey));
    }

    #[test]
    fn empty_containers() {
        assert_eq!(canonical_text(" { } "), "{}");
        assert_eq!(canonical_text(" [ ] "), "[]");
        assert_eq!(canonical_text(r#"{"b":[],"a":{}}"#), r#"{"a":{},"b":[]}"#);
    }
}
