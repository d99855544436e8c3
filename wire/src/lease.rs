//! The quota lease API's wire types, shared by the recorder (which serves it)
//! and gateways (which call it). See docs/recorder.md, "Quota leases".

use crate::config::{CompiledLimit, Enforcement};
use crate::quota_math::Amounts;
use serde::{Deserialize, Serialize};

/// Tokens, requests and cost on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountsWire {
    /// Tokens.
    #[serde(default)]
    pub tokens: u64,
    /// Requests.
    #[serde(default)]
    pub requests: u64,
    /// Cost in micro-USD.
    #[serde(default)]
    pub cost_micro_usd: u64,
}

impl From<Amounts> for AmountsWire {
    fn from(a: Amounts) -> Self {
        Self {
            tokens: a.tokens,
            requests: a.requests,
            cost_micro_usd: a.cost_micro_usd,
        }
    }
}

impl From<AmountsWire> for Amounts {
    fn from(a: AmountsWire) -> Self {
        Self {
            tokens: a.tokens,
            requests: a.requests,
            cost_micro_usd: a.cost_micro_usd,
        }
    }
}

/// `POST /v1/quota/leases`: ask for a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// `<namespace>/<name>` or `cluster/<name>` (the compiled quota's id).
    pub quota_id: String,
    /// The compiled limit (name, window, caps) from the gateway's config.
    pub limit: CompiledLimit,
    /// `enforce` or `shadow`.
    pub enforcement: Enforcement,
    /// The amount wanted.
    pub amount: AmountsWire,
    /// The least amount worth having (per quantity); defaults to `amount`. A grant
    /// is the largest amount between the two that fits.
    #[serde(default)]
    pub min_amount: Option<AmountsWire>,
    /// Lease length; default 60, at most 300.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/quota/leases/{id}/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The lease's total consumption so far.
    pub consumed: AmountsWire,
    /// The unused rest wanted after renewing.
    pub amount: AmountsWire,
    /// The least rest worth having; defaults to `amount`.
    #[serde(default)]
    pub min_amount: Option<AmountsWire>,
    /// New lease length from now; default 60, at most 300.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/quota/leases/{id}/return`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// The lease's total consumption.
    pub consumed: AmountsWire,
}

/// The answer to a grant or renew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// Whether an amount was granted.
    pub granted: bool,
    /// The lease (absent when a new lease was denied).
    pub lease_id: Option<String>,
    /// The quota.
    pub quota_id: String,
    /// The limit.
    pub limit: String,
    /// Granted by this call (zero when denied).
    pub amount: AmountsWire,
    /// When the unconsumed rest stops counting (RFC 3339).
    pub expires_at: Option<String>,
    /// Settled usage in the current window, before this grant.
    pub used: AmountsWire,
    /// Unconsumed rest of other live leases, before this grant.
    pub outstanding: AmountsWire,
    /// A shadow quota granted what an enforced one would have denied.
    pub shadow_denied: bool,
    /// When denied: seconds until the window frees up (calendar end or rolling horizon).
    pub retry_after_seconds: Option<u64>,
}

/// The answer to a return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnResponse {
    /// The lease.
    pub lease_id: String,
    /// Consumption settled by this call.
    pub settled: AmountsWire,
    /// The lease's total consumption.
    pub consumed: AmountsWire,
}
