//! RFC 9457 problem details (`application/problem+json`): the one error body the
//! recorder and the operator's control endpoint answer with, and the one their
//! clients read. Each server maps its own errors to a [`Problem`] in one place.

use serde::{Deserialize, Serialize};

/// The media type.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// How much of a problem a client puts into a log line or error message.
pub const MAX_SUMMARY_CHARS: usize = 300;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the problem type (`https://tollgate.dev/problems/<code>`), or
    /// `about:blank` when `reason` says it.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// A stable, machine-readable reason (an extension member), when the server
    /// has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened this time.
    #[serde(default)]
    pub detail: String,
}

impl Problem {
    /// The body as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `reason: title: detail`, bounded, for logs and error messages.
    pub fn summary(&self) -> String {
        let parts = [
            self.reason.as_deref(),
            Some(self.title.as_str()),
            Some(self.detail.as_str()),
        ];
        let text = parts
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        text.chars().take(MAX_SUMMARY_CHARS).collect()
    }

    /// The summary of a response body that should be a problem; a body that is
    /// not one is described by its size only (never echoed).
    pub fn summarize_body(body: &[u8]) -> String {
        match serde_json::from_slice::<Self>(body) {
            Ok(problem) => problem.summary(),
            Err(_) => format!("({} bytes, not problem+json)", body.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_summarised_and_bounded() {
        let body = br#"{"type":"about:blank","title":"Forbidden","status":403,"reason":"PodNotInjected","detail":"pod a/b"}"#;
        assert_eq!(
            Problem::summarize_body(body),
            "PodNotInjected: Forbidden: pod a/b"
        );
        assert!(Problem::summarize_body(&[b'x'; 5000]).contains("5000 bytes"));
        let long = Problem {
            type_: "about:blank".into(),
            title: "t".into(),
            status: 500,
            reason: None,
            detail: "d".repeat(10_000),
        };
        assert_eq!(long.summary().chars().count(), MAX_SUMMARY_CHARS);
    }

    #[test]
    fn reason_is_left_out_when_absent() {
        let problem = Problem {
            type_: "https://tollgate.dev/problems/bad-request".into(),
            title: "Bad request".into(),
            status: 400,
            reason: None,
            detail: "x".into(),
        };
        let json: serde_json::Value = serde_json::from_slice(&problem.to_json()).unwrap();
        assert!(json.get("reason").is_none());
        assert_eq!(serde_json::from_value::<Problem>(json).unwrap(), problem);
    }
}
