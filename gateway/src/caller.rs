//! The end user behind a request, as the app already names it, hashed under
//! the cluster's caller key ([`tollgate_wire::caller`]). The clear id is read
//! from the request and dropped; only the HMAC reaches the receipt.
//!
//! Where the id comes from, first match wins:
//! 1. the `x-tollgate-caller` header (any API; never forwarded upstream);
//! 2. OpenAI style: `safety_identifier`, then `user`;
//! 3. Anthropic style: `metadata.user_id`.
//!
//! An empty id counts as none.

use http::HeaderMap;
use serde_json::Value;
use tollgate_wire::caller::CallerKey;

use crate::api::ApiStyle;

/// The header an app can set to name its end user for any API.
pub const CALLER_HEADER: &str = "x-tollgate-caller";

/// The end-user id of a request, if it names one.
pub fn caller_id<'a>(headers: &'a HeaderMap, json: &'a Value, style: ApiStyle) -> Option<&'a [u8]> {
    if let Some(value) = headers.get(CALLER_HEADER) {
        return Some(value.as_bytes()).filter(|id| !id.is_empty());
    }
    let text = |pointer: &str| json.pointer(pointer).and_then(Value::as_str);
    let id = match style {
        ApiStyle::OpenAi => text("/safety_identifier").or_else(|| text("/user")),
        ApiStyle::Anthropic => text("/metadata/user_id"),
        // Neither the Gemini API nor Bedrock's Converse has an end-user
        // field: the header only. (A Claude body for InvokeModel is
        // Anthropic's and names its user like one.)
        ApiStyle::Gemini => None,
        ApiStyle::Bedrock => text("/metadata/user_id"),
    };
    id.filter(|id| !id.is_empty()).map(str::as_bytes)
}

/// `caller_hash` for a request: the HMAC of its end-user id, if it has one.
pub fn caller_hash(
    key: &CallerKey,
    headers: &HeaderMap,
    json: &Value,
    style: ApiStyle,
) -> Option<[u8; 32]> {
    caller_id(headers, json, style).map(|id| key.hash(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    #[test]
    fn the_header_wins_then_each_api_reads_its_own_field() {
        let none = HeaderMap::new();
        let mut named = HeaderMap::new();
        named.insert(CALLER_HEADER, HeaderValue::from_static("alice"));
        let openai = json!({"model": "m", "user": "bob", "safety_identifier": "carol"});
        let anthropic = json!({"model": "m", "metadata": {"user_id": "dave"}});

        assert_eq!(
            caller_id(&named, &openai, ApiStyle::OpenAi),
            Some(&b"alice"[..])
        );
        assert_eq!(
            caller_id(&none, &openai, ApiStyle::OpenAi),
            Some(&b"carol"[..])
        );
        assert_eq!(
            caller_id(&none, &json!({"user": "bob"}), ApiStyle::OpenAi),
            Some(&b"bob"[..])
        );
        assert_eq!(
            caller_id(&none, &anthropic, ApiStyle::Anthropic),
            Some(&b"dave"[..])
        );
        // Each API style reads only its own fields.
        assert_eq!(caller_id(&none, &anthropic, ApiStyle::OpenAi), None);
        assert_eq!(caller_id(&none, &openai, ApiStyle::Anthropic), None);
        // Empty or non-string ids name nobody.
        assert_eq!(
            caller_id(&none, &json!({"user": ""}), ApiStyle::OpenAi),
            None
        );
        assert_eq!(
            caller_id(&none, &json!({"user": 7}), ApiStyle::OpenAi),
            None
        );
        let mut empty = HeaderMap::new();
        empty.insert(CALLER_HEADER, HeaderValue::from_static(""));
        assert_eq!(caller_id(&empty, &openai, ApiStyle::OpenAi), None);
    }

    #[test]
    fn the_hash_is_the_keyed_hmac_of_the_id() {
        let key = CallerKey::from_bytes([9; 32]);
        let body = json!({"user": "bob"});
        assert_eq!(
            caller_hash(&key, &HeaderMap::new(), &body, ApiStyle::OpenAi),
            Some(key.hash(b"bob"))
        );
        assert_eq!(
            caller_hash(&key, &HeaderMap::new(), &json!({}), ApiStyle::OpenAi),
            None
        );
    }
}
