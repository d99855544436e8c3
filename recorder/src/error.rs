//! The recorder's error type: variants a caller can act on. The HTTP layer maps
//! them to RFC 9457 problems in one place (`http::problem`).

use crate::store::StoreError;

/// Why a recorder operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The request is malformed: bad JSON, a bad field, an unknown parameter.
    #[error("{0}")]
    BadRequest(String),
    /// The request is over a stated bound (body bytes, batch size, export size).
    #[error("{what} is over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The bound.
        limit: u64,
    },
    /// No or an invalid bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with stored state (e.g. a lease's consumption went back).
    #[error("{0}")]
    Conflict(String),
    /// Storage failed; retry later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The recorder cannot serve right now (starting, shutting down, TokenReview down).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an impossible state; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<tollgate_evidence::LogError> for RecorderError {
    fn from(e: tollgate_evidence::LogError) -> Self {
        Self::Internal(format!("log writer: {e}"))
    }
}

impl From<tollgate_evidence::BundleError> for RecorderError {
    fn from(e: tollgate_evidence::BundleError) -> Self {
        Self::Internal(format!("bundle: {e}"))
    }
}

impl From<tollgate_evidence::CanonicalError> for RecorderError {
    fn from(e: tollgate_evidence::CanonicalError) -> Self {
        Self::Internal(format!("canonical encoding: {e}"))
    }
}
