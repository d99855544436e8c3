//! `EgressPolicy`: which providers and models a namespace's pods may call, the
//! guards on each request, and the non-LLM egress that stays open.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use tollgate_wire::config::{FailMode, PolicyMode};

/// The LLM egress policy for the pods of one namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "EgressPolicy",
    plural = "egresspolicies",
    shortname = "egp",
    category = "tollgate",
    namespaced,
    status = "EgressPolicyStatus",
    derive = "PartialEq",
    doc = "The LLM egress policy for a namespace: allowed providers and models, request guards, non-LLM egress and the receipt failure mode.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Non-Compliant",
        type_ = "integer",
        json_path = ".status.nonCompliantPods"
    ),
    printcolumn(
        name = "Policy Hash",
        type_ = "string",
        json_path = ".status.policyHash",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.allow.all(a, self.allow.exists_one(b, b.providerRef == a.providerRef))")
        .message("each provider may appear in allow only once; merge its model globs into one entry"),
)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicySpec {
    /// Which pods of the namespace this policy governs. Empty selects every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// `enforce` blocks what the policy does not allow; `audit` forwards it but
    /// records a would-deny verdict in the receipt; `disabled` turns the policy
    /// off (the gateway then refuses all LLM traffic, it never passes it through).
    #[serde(default)]
    pub mode: PolicyMode,

    /// Providers and the models of each that may be called.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub allow: Vec<AllowRule>,

    /// Whether a request may fall over to the next allowed provider of the same
    /// API style on 429, 5xx or a connect error.
    #[serde(default)]
    pub failover: bool,

    /// Checks applied to every request before it leaves the pod.
    #[serde(default)]
    pub guards: Guards,

    /// Non-LLM destinations that app containers may still reach directly, such
    /// as the cluster's pod and service ranges. Everything else is blocked by
    /// the init-network rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub egress: Vec<EgressRule>,

    /// What the gateway does when it cannot write receipts (spool full):
    /// `closed` refuses new requests with 503; `open` serves and counts the loss.
    #[serde(default)]
    pub fail_mode: FailMode,

    /// Sidecar injection settings for the governed pods.
    #[serde(default)]
    pub injection: InjectionSettings,
}

/// Models of one provider that may be called.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.models.all(m, size(m) > 0)")
        .message("model globs must be non-empty; use '*' to allow every model of the provider"),
)]
#[serde(rename_all = "camelCase")]
pub struct AllowRule {
    /// Name of the `LLMProvider`.
    #[schemars(length(min = 1, max = 253))]
    pub provider_ref: String,

    /// Model names or globs (`*` matches any run of characters), matched
    /// against the model's name and aliases, for example `gpt-4o*`.
    #[schemars(length(min = 1, max = 64), inner(length(max = 256)))]
    pub models: Vec<String>,

    /// Upper bound on `max_tokens` (or `max_output_tokens`) per request. A
    /// request asking for more is refused; one that omits it gets this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_tokens: Option<u32>,
}

/// Per-request checks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Guards {
    /// Largest request body accepted, in bytes. Larger requests get 413.
    #[serde(default = "default_max_request_bytes")]
    #[schemars(range(min = 1024, max = 67108864))]
    pub max_request_bytes: u32,

    /// Refuse requests whose body carries secrets: PEM private keys, cloud
    /// access keys, or provider API keys.
    #[serde(default = "default_true")]
    pub block_secrets: bool,

    /// Extra request headers (lowercase) forwarded upstream besides the API's
    /// own. Credential headers are always stripped and cannot be listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("self.all(h, h.matches('^[a-z0-9-]+$'))")
            .message("header names must be lowercase tokens such as x-request-id"),
        validation = Rule::new("!self.exists(h, h in ['authorization', 'x-api-key', 'api-key', 'x-goog-api-key', 'x-goog-user-project', 'x-amz-security-token', 'proxy-authorization', 'cookie'])")
            .message("credential headers (authorization, x-api-key, api-key, x-goog-api-key, x-goog-user-project, x-amz-security-token, proxy-authorization, cookie) cannot be allowlisted: the gateway always strips them"),
    )]
    pub header_allowlist: Vec<String>,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            max_request_bytes: default_max_request_bytes(),
            block_secrets: true,
            header_allowlist: Vec::new(),
        }
    }
}

fn default_max_request_bytes() -> u32 {
    4 * 1024 * 1024
}
fn default_true() -> bool {
    true
}

/// A non-LLM destination that stays reachable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination network, IPv4 or IPv6, for example `10.96.0.0/12`.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("isCIDR(self)")
            .message("cidr must be a valid IPv4 or IPv6 CIDR such as 10.96.0.0/12 or fd00::/8"),
    )]
    pub cidr: String,

    /// Destination ports. Empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<u16>,
}

/// Injection settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InjectionSettings {
    /// Whether pods may opt out of injection with the annotation
    /// `tollgate.dev/inject: disabled`. Off by default: without it, the
    /// validating webhook rejects opted-out pods.
    #[serde(default)]
    pub allow_opt_out: bool,
}

/// Observed state of an `EgressPolicy`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicyStatus {
    /// `Ready` and other conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hash of the compiled gateway configuration for this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Pods found by the last audit sweep that do not comply with injection and
    /// bypass rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_compliant_pods: Option<u32>,
    /// When the last audit sweep finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_audit_time: Option<String>,
}
