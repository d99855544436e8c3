//! Every way the gateway refuses or fails a request, and the one table that
//! turns each into a status, a reason code (which receipts and metrics carry),
//! an error body in the client's API style and its headers.
//!
//! Messages are written here from numbers and names the gateway already
//! holds (providers, models, quota ids, limits), never from request bodies, so
//! no prompt or key can leak back through an error.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use tollgate_evidence::Lane;

use crate::api::ApiStyle;
use crate::api_error::{ErrorKind, error_body, status as error_status};
use crate::receipts::UpstreamFacts;
use crate::upstream::ConnectError;

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path or method is not one of the model APIs (no receipt: it is not
    /// a model call).
    PathNotServed,
    /// The receipt spool is full or failing under `failMode: closed` (no
    /// receipt: it could not be written).
    SpoolUnavailable,
    NoPolicy,
    RequestTooLarge {
        limit: usize,
    },
    BodyUnreadable,
    /// The `x-request-id` header is not an identifier (or is repeated).
    InvalidRequestId,
    MalformedJson,
    SecretInRequest {
        guard: &'static str,
    },
    ModelMissing,
    /// A body of a shape the gateway does not meter or check (Bedrock
    /// InvokeModel for a non-Claude model; Gemini's snake_case aliases of the
    /// fields it checks).
    UnsupportedBody {
        detail: &'static str,
    },
    /// A Gemini body names a model other than its path's.
    ModelMismatch {
        path_model: String,
    },
    ModelNotAllowed {
        model: String,
    },
    MaxTokensOverPolicy {
        asked: u64,
        cap: u32,
    },
    QuotaAuthorityUnavailable {
        quota_id: String,
        limit: String,
    },
    QuotaExceeded {
        quota_id: String,
        limit: String,
        retry_after_secs: u64,
    },
    CredentialsUnavailable {
        provider: String,
    },
    ProviderMisconfigured {
        provider: String,
    },
    RequestBuildFailed,
    ProviderClientMissing,
    UpstreamTimeout {
        provider: String,
        first_byte_timeout_ms: u32,
    },
    /// The connection to the provider failed: TLS, the host allowlist, or
    /// connecting at all (the connector's own message, which names hosts only).
    UpstreamConnect(ConnectError),
    UpstreamFailed {
        provider: String,
    },
    UpstreamRedirect {
        provider: String,
    },
    TlsFingerprintMissing,
    NoProviderAvailable,
}

/// One row of the table: what a refusal becomes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The error kind, which fixes the status and the API-style error type.
    pub kind: ErrorKind,
    /// The reason code receipts, logs and metrics carry.
    pub reason: &'static str,
}

impl Refusal {
    /// The table: each refusal's error kind and reason code.
    pub fn row(&self) -> Row {
        use ErrorKind as K;
        let (kind, reason) = match self {
            Self::PathNotServed => (K::NotFound, "path_not_served"),
            Self::SpoolUnavailable => (K::Overloaded, "receipt_spool_unavailable"),
            Self::NoPolicy => (K::PermissionDenied, "no_policy"),
            Self::RequestTooLarge { .. } => (K::RequestTooLarge, "request_too_large"),
            Self::BodyUnreadable => (K::InvalidRequest, "request_body_unreadable"),
            Self::InvalidRequestId => (K::InvalidRequest, "invalid_request_id"),
            Self::MalformedJson => (K::InvalidRequest, "malformed_json"),
            Self::SecretInRequest { .. } => (K::PermissionDenied, "secret_in_request"),
            Self::ModelMissing => (K::InvalidRequest, "model_missing"),
            Self::ModelMismatch { .. } => (K::InvalidRequest, "model_mismatch"),
            Self::UnsupportedBody { .. } => (K::InvalidRequest, "unsupported_body"),
            Self::ModelNotAllowed { .. } => (K::PermissionDenied, "model_not_allowed"),
            Self::MaxTokensOverPolicy { .. } => (K::InvalidRequest, "max_tokens_over_policy"),
            Self::QuotaAuthorityUnavailable { .. } => {
                (K::Overloaded, "quota_authority_unavailable")
            }
            Self::QuotaExceeded { .. } => (K::RateLimited, "quota_exceeded"),
            Self::CredentialsUnavailable { .. } => (K::UpstreamError, "credentials_unavailable"),
            Self::ProviderMisconfigured { .. } => (K::Internal, "provider_misconfigured"),
            Self::RequestBuildFailed => (K::Internal, "request_build_failed"),
            Self::ProviderClientMissing => (K::Internal, "provider_client_missing"),
            Self::UpstreamTimeout { .. } => (K::UpstreamTimeout, "upstream_timeout"),
            Self::UpstreamConnect(ConnectError::Tls { .. }) => {
                (K::UpstreamError, "upstream_tls_refused")
            }
            Self::UpstreamConnect(ConnectError::HostNotAllowed(_)) => {
                (K::UpstreamError, "upstream_host_not_allowed")
            }
            Self::UpstreamConnect(_) => (K::UpstreamError, "upstream_connect_failed"),
            Self::UpstreamFailed { .. } => (K::UpstreamError, "upstream_failed"),
            Self::UpstreamRedirect { .. } => (K::UpstreamError, "upstream_redirect_refused"),
            Self::TlsFingerprintMissing => (K::UpstreamError, "tls_fingerprint_missing"),
            Self::NoProviderAvailable => (K::UpstreamError, "no_provider_available"),
        };
        Row { kind, reason }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        error_status(self.row().kind)
    }

    /// The message the client reads.
    pub fn message(&self) -> String {
        match self {
            Self::PathNotServed => "Tollgate does not serve this path; only the OpenAI, Anthropic, Azure OpenAI, Gemini and Bedrock runtime model APIs are available (Gemini streams with alt=sse)".into(),
            Self::SpoolUnavailable => "the receipt spool is full or failing; requests are refused until receipts can be written (failMode: closed)".into(),
            Self::NoPolicy => "no EgressPolicy governs this pod".into(),
            Self::RequestTooLarge { limit } => {
                format!("the request body exceeds the policy limit of {limit} bytes")
            }
            Self::BodyUnreadable => "the request body could not be read".into(),
            Self::InvalidRequestId => "the x-request-id header must appear once, with 1 to 128 characters from A-Z a-z 0-9 . _ : / @ + = - (no spaces)".into(),
            Self::MalformedJson => "the request body must be a JSON object".into(),
            Self::SecretInRequest { guard } => format!(
                "the request carries a secret ({guard}); Tollgate refuses to send it to a provider"
            ),
            Self::ModelMissing => "the request must name a model".into(),
            Self::UnsupportedBody { detail } => (*detail).into(),
            Self::ModelMismatch { path_model } => format!(
                "the request body names a model other than the path's {path_model:?}"
            ),
            Self::ModelNotAllowed { model } => {
                format!("model {model:?} is not allowed by this namespace's EgressPolicy")
            }
            Self::MaxTokensOverPolicy { asked, cap } => {
                format!("max tokens {asked} exceeds the policy limit of {cap}")
            }
            Self::QuotaAuthorityUnavailable { quota_id, limit } => format!(
                "the quota authority cannot be reached and quota {quota_id} limit {limit} fails closed"
            ),
            Self::QuotaExceeded {
                quota_id,
                limit,
                retry_after_secs,
            } => format!(
                "quota {quota_id} limit {limit} is exhausted; retry after {retry_after_secs}s"
            ),
            Self::CredentialsUnavailable { provider } => {
                format!("provider {provider} has no credentials loaded")
            }
            Self::ProviderMisconfigured { provider } => {
                format!("provider {provider} has no baseURL")
            }
            Self::RequestBuildFailed => "the upstream request could not be built".into(),
            Self::ProviderClientMissing => "no client for the provider".into(),
            Self::UpstreamTimeout {
                provider,
                first_byte_timeout_ms,
            } => format!("provider {provider} did not answer within {first_byte_timeout_ms} ms"),
            Self::UpstreamConnect(e) => e.to_string(),
            Self::UpstreamFailed { provider } => format!("provider {provider} request failed"),
            Self::UpstreamRedirect { provider } => format!(
                "provider {provider} answered with a redirect; Tollgate never follows redirects"
            ),
            Self::TlsFingerprintMissing => "the upstream TLS certificate could not be fingerprinted; the request fails closed".into(),
            Self::NoProviderAvailable => "no allowed provider could take the request".into(),
        }
    }

    /// The error body in `style`.
    pub fn body(&self, style: ApiStyle) -> bytes::Bytes {
        error_body(style, self.row().kind, &self.message())
    }

    /// The whole response in `style`: status, JSON body and headers.
    pub fn response(&self, style: ApiStyle) -> Response {
        self.response_with_body(self.body(style))
    }

    /// The response around an already rendered [`Refusal::body`].
    pub fn response_with_body(&self, body: bytes::Bytes) -> Response {
        let mut response = Response::new(Body::from(body));
        *response.status_mut() =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::QuotaExceeded {
            retry_after_secs, ..
        } = self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

/// A refusal with what the receipt records about where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    /// The provider the request was headed for, once routing chose one.
    pub provider: Option<String>,
    pub lane: Lane,
    /// Set when the refusal came after the request was sent upstream.
    pub contact: Option<Box<Contact>>,
}

/// A request that was sent upstream: its forward decision, and the
/// provider's side as far as it is known (absent when no TLS connection was
/// made, so nothing left the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Absent only when the policy fails open and the decision could not be
    /// written.
    pub decision_id: Option<String>,
    pub upstream: Option<UpstreamFacts>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Self {
            refusal,
            provider: None,
            lane: Lane::Live,
            contact: None,
        }
    }
}

impl Refused {
    /// This refusal, after the request was sent upstream.
    pub fn after(mut self, contact: Option<Box<Contact>>) -> Self {
        self.contact = contact;
        self
    }
}

impl Refusal {
    /// This refusal on the way to `provider` in `lane`.
    pub fn at(self, provider: &str, lane: Lane) -> Refused {
        Refused {
            refusal: self,
            provider: Some(provider.to_owned()),
            lane,
            contact: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_refusal() -> Vec<Refusal> {
        let p = || "openai".to_string();
        vec![
            Refusal::PathNotServed,
            Refusal::SpoolUnavailable,
            Refusal::NoPolicy,
            Refusal::RequestTooLarge { limit: 10 },
            Refusal::BodyUnreadable,
            Refusal::InvalidRequestId,
            Refusal::MalformedJson,
            Refusal::SecretInRequest {
                guard: "secret.openai_key",
            },
            Refusal::ModelMissing,
            Refusal::ModelNotAllowed { model: "m".into() },
            Refusal::MaxTokensOverPolicy { asked: 9, cap: 8 },
            Refusal::QuotaAuthorityUnavailable {
                quota_id: "q".into(),
                limit: "l".into(),
            },
            Refusal::QuotaExceeded {
                quota_id: "q".into(),
                limit: "l".into(),
                retry_after_secs: 7,
            },
            Refusal::CredentialsUnavailable { provider: p() },
            Refusal::ProviderMisconfigured { provider: p() },
            Refusal::RequestBuildFailed,
            Refusal::ProviderClientMissing,
            Refusal::UpstreamTimeout {
                provider: p(),
                first_byte_timeout_ms: 5,
            },
            Refusal::UpstreamConnect(ConnectError::Tls {
                host: "h".into(),
                reason: "r".into(),
            }),
            Refusal::UpstreamConnect(ConnectError::HostNotAllowed("h".into())),
            Refusal::UpstreamConnect(ConnectError::PlainHttpRefused("h".into())),
            Refusal::UpstreamFailed { provider: p() },
            Refusal::UpstreamRedirect { provider: p() },
            Refusal::TlsFingerprintMissing,
            Refusal::NoProviderAvailable,
        ]
    }

    #[test]
    fn every_refusal_has_its_own_reason_code_and_an_error_status() {
        let all = every_refusal();
        let mut reasons: Vec<&str> = all.iter().map(|r| r.row().reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len(), "reason codes are unique");
        for refusal in &all {
            assert!(refusal.status() >= 400, "{refusal:?}");
            assert!(!refusal.message().is_empty(), "{refusal:?}");
        }
    }

    #[test]
    fn bodies_follow_the_clients_api_style_and_quota_refusals_say_when_to_retry() {
        let refusal = Refusal::QuotaExceeded {
            quota_id: "team-a/budget".into(),
            limit: "daily".into(),
            retry_after_secs: 42,
        };
        let response = refusal.response(ApiStyle::OpenAi);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
        let openai: serde_json::Value =
            serde_json::from_slice(&refusal.body(ApiStyle::OpenAi)).unwrap();
        assert_eq!(openai["error"]["code"], "rate_limit_exceeded");
        assert!(
            openai["error"]["message"]
                .as_str()
                .unwrap()
                .contains("retry after 42s")
        );
        let anthropic: serde_json::Value =
            serde_json::from_slice(&refusal.body(ApiStyle::Anthropic)).unwrap();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "rate_limit_error");
        let other = Refusal::NoPolicy.response(ApiStyle::Anthropic);
        assert!(other.headers().get(header::RETRY_AFTER).is_none());
    }
}
