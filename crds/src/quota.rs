//! `EgressQuota` (namespaced) and `ClusterEgressQuota` (cluster-scoped): budgets
//! of tokens, requests and cost per calendar window (UTC or a named time
//! zone) or rolling duration.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use tollgate_wire::config::{CalendarWindow, Enforcement};

use crate::policy::FailMode;

/// A budget for the LLM calls of one namespace, or of chosen workloads in it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "EgressQuota",
    plural = "egressquotas",
    shortname = "egq",
    category = "tollgate",
    namespaced,
    status = "QuotaStatus",
    derive = "PartialEq",
    doc = "A budget of tokens, requests and cost for the LLM calls of a namespace or of chosen workloads in it.",
    printcolumn(
        name = "Enforcement",
        type_ = "string",
        json_path = ".spec.enforcement"
    ),
    printcolumn(name = "Used", type_ = "string", json_path = ".status.summary"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EgressQuotaSpec {
    /// Whose calls count against this quota. Empty means every pod of the namespace.
    #[serde(default)]
    pub subjects: QuotaSubjects,

    /// The limits. A request is allowed only while every matching limit has room.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub limits: Vec<QuotaLimit>,

    /// `enforce` denies over-budget requests with 429; `shadow` records a
    /// would-deny in the receipt and lets them through.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// What gateways do when the quota authority (the recorder) cannot be
    /// reached and their local lease is spent: `closed` denies, `open` allows
    /// and settles later.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// A limit whose use reaches this percentage of a cap sets the
    /// `NearLimit` condition, with a Warning Event. Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub warning_percent: Option<u8>,
}

/// A budget shared by the namespaces a selector picks.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ClusterEgressQuota",
    plural = "clusteregressquotas",
    shortname = "cegq",
    category = "tollgate",
    status = "QuotaStatus",
    derive = "PartialEq",
    doc = "A budget of tokens, requests and cost shared by every namespace a selector picks.",
    printcolumn(
        name = "Enforcement",
        type_ = "string",
        json_path = ".spec.enforcement"
    ),
    printcolumn(name = "Used", type_ = "string", json_path = ".status.summary"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEgressQuotaSpec {
    /// The namespaces whose calls share this budget.
    pub namespace_selector: LabelSelector,

    /// Which workloads in those namespaces count. Empty means all of them.
    #[serde(default)]
    pub subjects: QuotaSubjects,

    /// The limits. A request is allowed only while every matching limit has room.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub limits: Vec<QuotaLimit>,

    /// `enforce` denies over-budget requests with 429; `shadow` records a
    /// would-deny in the receipt and lets them through.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// What gateways do when the quota authority cannot be reached and their
    /// local lease is spent.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// A limit whose use reaches this percentage of a cap sets the
    /// `NearLimit` condition, with a Warning Event. Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub warning_percent: Option<u8>,
}

/// Whose calls a quota counts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSubjects {
    /// ServiceAccount names. Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub service_accounts: Vec<String>,
    /// Pod label selector. Absent means any pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// One limit of a quota.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.window) != has(self.rolling)")
        .message("a limit needs exactly one of window (a calendar window: minute, hour, day or month) or rolling (a duration such as 90m)"),
    validation = Rule::new("has(self.tokens) || has(self.requests) || has(self.costMicroUSD)")
        .message("a limit must cap at least one of tokens, requests or costMicroUSD"),
    validation = Rule::new("!has(self.timeZone) || has(self.window)")
        .message("timeZone applies to a calendar window (window), not to a rolling one"),
)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimit {
    /// A name for the limit, unique within the quota. Status reports by it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// A calendar window: `minute`, `hour`, `day` or `month`, in UTC unless
    /// `timeZone` names another zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<CalendarWindow>,

    /// The IANA time zone the calendar window counts in, such as
    /// `Europe/Berlin` or `America/New_York`: a `day` then runs from local
    /// midnight to local midnight (23 or 25 hours across a daylight-saving
    /// change) and a `month` from the first at local midnight. Absent means
    /// UTC. Names resolve against the database built into Tollgate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")
    )]
    pub time_zone: Option<String>,

    /// A rolling window, as hours, minutes and seconds: `90m`, `24h`, `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 16),
        regex(pattern = r"^([1-9][0-9]*h)?([1-9][0-9]*m)?([1-9][0-9]*s)?$")
    )]
    pub rolling: Option<String>,

    /// Most tokens (input plus output) in a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<u64>,

    /// Most requests in a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests: Option<u64>,

    /// Most cost in a window, in micro-USD, priced from the provider's table.
    #[serde(
        rename = "costMicroUSD",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1))]
    pub cost_micro_usd: Option<u64>,

    /// Count only these models (names or globs). Empty means all models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub models: Vec<String>,

    /// Count only these providers (LLMProvider names). Empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub providers: Vec<String>,
}

/// Observed state of a quota.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    /// `Ready` and other conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Used and remaining budget per limit, as last aggregated from the recorder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub limits: Vec<LimitStatus>,
    /// The most constrained limit in words, for `kubectl get`: `tokens 1200/100000 (day)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// Usage against one limit in the current window.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LimitStatus {
    /// The limit's name.
    pub name: String,
    /// What was used in the current window.
    pub used: QuotaAmounts,
    /// What is left in the current window, for the quantities the limit caps.
    pub remaining: QuotaAmounts,
    /// When the current window ends (RFC 3339), for calendar windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<String>,
    /// The largest share of a cap used so far, in whole percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<u32>,
    /// When a cap runs out at the average rate of use since the window
    /// started (RFC 3339); absent when it would not before `resetAt`, and
    /// for rolling windows, whose old use drops out as new use comes in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exhausts_at: Option<String>,
}

/// The warning level when a quota names none, in percent of a cap.
pub const DEFAULT_WARNING_PERCENT: u8 = 80;

/// Amounts of the three quantities a limit can cap.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaAmounts {
    /// Tokens, input plus output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Cost in micro-USD.
    #[serde(
        rename = "costMicroUSD",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cost_micro_usd: Option<u64>,
}
