//! RFC 9457 problem details: the one place recorder errors become HTTP responses.
//! Internal and storage errors are logged and answered without their details.

use crate::error::RecorderError;
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use tollgate_wire::problem::{PROBLEM_JSON, Problem};

/// A problem response.
pub fn problem(status: StatusCode, code: &str, title: &str, detail: String) -> Response {
    let body = Problem {
        type_: format!("https://tollgate.dev/problems/{code}"),
        title: title.to_string(),
        status: status.as_u16(),
        reason: None,
        detail,
    };
    let bytes = body.to_json();
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for RecorderError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(d) => {
                problem(StatusCode::BAD_REQUEST, "bad-request", "Bad request", d)
            }
            Self::TooLarge { .. } => {
                let detail = self.to_string();
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    "Over a stated bound",
                    detail,
                )
            }
            Self::Unauthenticated(d) => {
                let mut r = problem(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Unauthenticated",
                    d,
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            Self::Forbidden(d) => problem(StatusCode::FORBIDDEN, "forbidden", "Forbidden", d),
            Self::NotFound(d) => problem(StatusCode::NOT_FOUND, "not-found", "Not found", d),
            Self::Conflict(d) => problem(StatusCode::CONFLICT, "conflict", "Conflict", d),
            Self::Unavailable(d) => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Unavailable",
                d,
            ),
            Self::Store(StoreError::Unavailable(d)) => {
                tracing::warn!(error = %d, "storage unavailable");
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-unavailable",
                    "Storage unavailable",
                    "storage is unavailable; retry later".into(),
                )
            }
            Self::Store(StoreError::Busy(d)) => {
                tracing::warn!(error = %d, "storage busy");
                let mut response = problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-busy",
                    "Storage busy",
                    "too much work is queued for storage; nothing from this request was stored; retry shortly".into(),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::Store(e) => {
                tracing::error!(error = %e, "storage error");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage-error",
                    "Storage error",
                    "storage failed; nothing from this request was stored; retry later".into(),
                )
            }
            Self::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "internal error".into(),
                )
            }
        }
    }
}
