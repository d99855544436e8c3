//! Error responses in the wire style of the API the client called, so that the
//! official SDKs raise their usual typed exceptions for gateway refusals.
//!
//! Messages are written by the gateway, never copied from a request, so no
//! prompt or key can leak back through an error body.

use bytes::Bytes;
use serde::Serialize;

use crate::api::ApiStyle;

/// Why the gateway refuses or fails a request. Each kind has one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400: malformed JSON, missing fields, a refused secret in the body.
    InvalidRequest,
    /// 404: a path the gateway does not serve.
    NotFound,
    /// 403: a model the policy does not allow.
    PermissionDenied,
    /// 413: a body over the size limit.
    RequestTooLarge,
    /// 429: quota or rate limit reached.
    RateLimited,
    /// 503: the gateway cannot take the request now (e.g. receipt spool full).
    Overloaded,
    /// 502: the provider failed or could not be reached.
    UpstreamError,
    /// 504: the provider did not answer in time.
    UpstreamTimeout,
    /// 500: a gateway bug.
    Internal,
}

/// The HTTP status code for `kind`.
pub fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::NotFound => 404,
        ErrorKind::PermissionDenied => 403,
        ErrorKind::RequestTooLarge => 413,
        ErrorKind::RateLimited => 429,
        ErrorKind::Overloaded => 503,
        ErrorKind::UpstreamError => 502,
        ErrorKind::UpstreamTimeout => 504,
        ErrorKind::Internal => 500,
    }
}

/// The JSON error body for `kind` in `style`:
///
/// - OpenAI: `{"error":{"message":..,"type":..,"param":null,"code":..}}`;
/// - Anthropic: `{"type":"error","error":{"type":..,"message":..}}`;
/// - Gemini (Google's `google.rpc.Status`):
///   `{"error":{"code":..,"message":..,"status":..}}`;
/// - Bedrock (AWS restJson1): `{"__type":..,"message":..}`, the exception
///   name the AWS SDKs raise.
pub fn error_body(style: ApiStyle, kind: ErrorKind, message: &str) -> Bytes {
    let encoded = match style {
        ApiStyle::OpenAi => {
            let (kind_type, code) = openai_type_and_code(kind);
            serde_json::to_vec(&OpenAiEnvelope {
                error: OpenAiError {
                    message,
                    kind: kind_type,
                    param: None,
                    code,
                },
            })
        }
        ApiStyle::Anthropic => serde_json::to_vec(&AnthropicEnvelope {
            kind: "error",
            error: AnthropicError {
                kind: anthropic_type(kind),
                message,
            },
        }),
        ApiStyle::Bedrock => serde_json::to_vec(&AwsError {
            kind: aws_exception(kind),
            message,
        }),
        ApiStyle::Gemini => serde_json::to_vec(&GoogleEnvelope {
            error: GoogleError {
                code: status(kind),
                message,
                status: google_status(kind),
            },
        }),
    };
    // Serialising these plain structs cannot fail; the fallback only keeps the
    // gateway from ever answering with an empty error body.
    match encoded {
        Ok(body) => Bytes::from(body),
        Err(_) => Bytes::from_static(FALLBACK_BODY),
    }
}

const FALLBACK_BODY: &[u8] = br#"{"error":{"message":"internal gateway error","type":"server_error","param":null,"code":null}}"#;

/// `type` and `code` as the OpenAI API uses them. Where OpenAI has no stable
/// code for a condition, the code names the gateway condition so that
/// clients can still branch on it.
fn openai_type_and_code(kind: ErrorKind) -> (&'static str, Option<&'static str>) {
    match kind {
        ErrorKind::InvalidRequest => ("invalid_request_error", None),
        ErrorKind::NotFound => ("invalid_request_error", Some("not_found")),
        ErrorKind::PermissionDenied => ("permission_error", Some("permission_denied")),
        ErrorKind::RequestTooLarge => ("invalid_request_error", Some("request_too_large")),
        ErrorKind::RateLimited => ("rate_limit_exceeded", Some("rate_limit_exceeded")),
        ErrorKind::Overloaded => ("server_error", Some("overloaded")),
        ErrorKind::UpstreamError => ("server_error", Some("upstream_error")),
        ErrorKind::UpstreamTimeout => ("server_error", Some("upstream_timeout")),
        ErrorKind::Internal => ("server_error", None),
    }
}

/// Anthropic's documented error types. A timeout is `timeout_error`, which
/// Anthropic itself returns with 504.
fn anthropic_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest => "invalid_request_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::RequestTooLarge => "request_too_large",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Overloaded => "overloaded_error",
        ErrorKind::UpstreamTimeout => "timeout_error",
        ErrorKind::UpstreamError | ErrorKind::Internal => "api_error",
    }
}

/// The Bedrock runtime's exception for each kind.
fn aws_exception(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest | ErrorKind::RequestTooLarge => "ValidationException",
        ErrorKind::NotFound => "ResourceNotFoundException",
        ErrorKind::PermissionDenied => "AccessDeniedException",
        ErrorKind::RateLimited => "ThrottlingException",
        ErrorKind::Overloaded | ErrorKind::UpstreamError => "ServiceUnavailableException",
        ErrorKind::UpstreamTimeout => "ModelTimeoutException",
        ErrorKind::Internal => "InternalServerException",
    }
}

/// The `google.rpc.Code` name Google APIs pair with each status.
fn google_status(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest | ErrorKind::RequestTooLarge => "INVALID_ARGUMENT",
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::PermissionDenied => "PERMISSION_DENIED",
        ErrorKind::RateLimited => "RESOURCE_EXHAUSTED",
        ErrorKind::Overloaded | ErrorKind::UpstreamError => "UNAVAILABLE",
        ErrorKind::UpstreamTimeout => "DEADLINE_EXCEEDED",
        ErrorKind::Internal => "INTERNAL",
    }
}

// Structs rather than `json!` so that the field order matches the providers'
// bodies whatever serde_json features the build enables.
#[derive(Serialize)]
struct OpenAiEnvelope<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

#[derive(Serialize)]
struct AnthropicEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicError<'a>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct AwsError<'a> {
    #[serde(rename = "__type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct GoogleEnvelope<'a> {
    error: GoogleError<'a>,
}

#[derive(Serialize)]
struct GoogleError<'a> {
    code: u16,
    message: &'a str,
    status: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidRequest,
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::RequestTooLarge,
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::UpstreamError,
        ErrorKind::UpstreamTimeout,
        ErrorKind::Internal,
    ];

    fn text(body: Bytes) -> String {
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[test]
    fn status_codes() {
        let codes: Vec<u16> = ALL.iter().map(|k| status(*k)).collect();
        assert_eq!(codes, [400, 404, 403, 413, 429, 503, 502, 504, 500]);
    }

    #[test]
    fn openai_bodies_are_exact() {
        let cases = [
            (
                ErrorKind::InvalidRequest,
                r#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":null}}"#,
            ),
            (
                ErrorKind::NotFound,
                r#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"not_found"}}"#,
            ),
            (
                ErrorKind::PermissionDenied,
                r#"{"error":{"message":"m","type":"permission_error","param":null,"code":"permission_denied"}}"#,
            ),
            (
                ErrorKind::RequestTooLarge,
                r#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"request_too_large"}}"#,
            ),
            (
                ErrorKind::RateLimited,
                r#"{"error":{"message":"m","type":"rate_limit_exceeded","param":null,"code":"rate_limit_exceeded"}}"#,
            ),
            (
                ErrorKind::Overloaded,
                r#"{"error":{"message":"m","type":"server_error","param":null,"code":"overloaded"}}"#,
            ),
            (
                ErrorKind::UpstreamError,
                r#"{"error":{"message":"m","type":"server_error","param":null,"code":"upstream_error"}}"#,
            ),
            (
                ErrorKind::UpstreamTimeout,
                r#"{"error":{"message":"m","type":"server_error","param":null,"code":"upstream_timeout"}}"#,
            ),
            (
                ErrorKind::Internal,
                r#"{"error":{"message":"m","type":"server_error","param":null,"code":null}}"#,
            ),
        ];
        for (kind, expected) in cases {
            assert_eq!(
                text(error_body(ApiStyle::OpenAi, kind, "m")),
                expected,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn anthropic_bodies_are_exact() {
        let cases = [
            (ErrorKind::InvalidRequest, "invalid_request_error"),
            (ErrorKind::NotFound, "not_found_error"),
            (ErrorKind::PermissionDenied, "permission_error"),
            (ErrorKind::RequestTooLarge, "request_too_large"),
            (ErrorKind::RateLimited, "rate_limit_error"),
            (ErrorKind::Overloaded, "overloaded_error"),
            (ErrorKind::UpstreamError, "api_error"),
            (ErrorKind::UpstreamTimeout, "timeout_error"),
            (ErrorKind::Internal, "api_error"),
        ];
        for (kind, error_type) in cases {
            assert_eq!(
                text(error_body(ApiStyle::Anthropic, kind, "quota exhausted")),
                format!(
                    r#"{{"type":"error","error":{{"type":"{error_type}","message":"quota exhausted"}}}}"#
                ),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn messages_are_json_escaped() {
        let message = "model \"gpt-x\" is not allowed\n\\ by policy \u{1}";
        for style in [ApiStyle::OpenAi, ApiStyle::Anthropic, ApiStyle::Gemini] {
            let body = error_body(style, ErrorKind::PermissionDenied, message);
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed["error"]["message"], message);
        }
        {
            let body = error_body(ApiStyle::Bedrock, ErrorKind::PermissionDenied, message);
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed["message"], message);
        }
        assert_eq!(
            text(error_body(
                ApiStyle::Anthropic,
                ErrorKind::InvalidRequest,
                "a\"b\n"
            )),
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"a\"b\n"}}"#
        );
    }

    #[test]
    fn bedrock_bodies_name_the_aws_exception() {
        assert_eq!(
            text(error_body(
                ApiStyle::Bedrock,
                ErrorKind::PermissionDenied,
                "m"
            )),
            r#"{"__type":"AccessDeniedException","message":"m"}"#
        );
        for kind in ALL {
            let body = error_body(ApiStyle::Bedrock, kind, "m");
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(
                parsed["__type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("Exception")),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn gemini_bodies_are_google_rpc_statuses() {
        assert_eq!(
            text(error_body(ApiStyle::Gemini, ErrorKind::RateLimited, "m")),
            r#"{"error":{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED"}}"#
        );
        for kind in ALL {
            let body = error_body(ApiStyle::Gemini, kind, "m");
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed["error"]["code"], status(kind), "{kind:?}");
            assert!(
                parsed["error"]["status"]
                    .as_str()
                    .is_some_and(|s| s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn fallback_body_is_valid_openai_error() {
        let parsed: serde_json::Value = serde_json::from_slice(FALLBACK_BODY).unwrap();
        assert_eq!(parsed["error"]["type"], "server_error");
    }
}
