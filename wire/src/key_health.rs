//! Provider key health on the wire: what each gateway reports to the
//! recorder (`PUT /v1/key-health`, the same entries its admin `/keys` shows)
//! and what the recorder answers the operator (`GET /v1/key-health`), which
//! writes it into each `LLMProvider`'s status. Keys are named by their place
//! in the provider's `credentialsRef.keys`, never by value.

use serde::{Deserialize, Serialize};

/// Most keys in one report (64 providers of 32 keys); a gateway with more
/// reports the first this many.
pub const MAX_REPORTED_KEYS: usize = 2048;
/// Highest key index a report may name (`credentialsRef.keys` holds at most 32).
pub const MAX_KEY_INDEX: u32 = 31;
/// Largest report body: [`MAX_REPORTED_KEYS`] entries with the longest names.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// Whether a gateway routes over a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyHealthState {
    /// In routing.
    Healthy,
    /// Refused by the provider (401 or 403); out of routing until a probe
    /// succeeds.
    Unhealthy,
}

impl KeyHealthState {
    /// `healthy` or `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// One key as one gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStatus {
    /// The `LLMProvider`'s name.
    pub provider: String,
    /// The key's place in the provider's `credentialsRef.keys`.
    pub index: u32,
    pub state: KeyHealthState,
    /// When the key was first refused (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// When the gateway probes it next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_probe_ms: Option<u64>,
    /// The HTTP status of the last refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
}

/// A gateway's report: every key of its providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHealthReport {
    pub keys: Vec<KeyStatus>,
}

/// The recorder's sum of the recent reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHealthAnswer {
    /// Reports older than this many milliseconds are not counted.
    pub window_ms: u64,
    /// Per provider, in name order.
    pub providers: Vec<ProviderKeys>,
    /// More cells matched than the recorder answers with; the rest are left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One provider's keys, in index order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderKeys {
    pub provider: String,
    pub keys: Vec<KeySummary>,
}

/// What the gateways said of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySummary {
    pub index: u32,
    /// Gateways that reported the key.
    pub gateways: u64,
    /// Of them, those that route around it.
    pub refused_by: u64,
    /// The earliest refusal among them (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_since_ms: Option<u64>,
    /// The highest refusal status among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
}
