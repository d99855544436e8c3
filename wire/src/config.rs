//! The compiled gateway configuration: the one wire type the operator produces
//! (and `kubectl tollgate local` produces the same way) and the gateway consumes,
//! with the small enums and prices it shares with the custom resources (the
//! `tollgate-crds` spec types use these very types, so the two cannot drift).
//!
//! It holds no secret material. Provider keys reach the gateway separately and
//! stay in its memory; the config only says which Secret keys exist, so the
//! gateway knows `key_count` and whether it has what it needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

pub use crate::pricing::{ModelPricing, PriceTable};

/// The format version of [`GatewayConfig`]. Bumped on incompatible change; a
/// gateway refuses a config with a version it does not know.
pub const GATEWAY_CONFIG_VERSION: u32 = 1;

/// How a policy treats requests.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
    Disabled,
}

/// What happens when a dependency needed for evidence or quota is unavailable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum FailMode {
    #[default]
    Closed,
    Open,
}

/// The wire API a provider speaks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum ProviderApi {
    // OpenAI-style: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/models.
    Openai,
    // Anthropic-style: /v1/messages and /v1/messages/count_tokens.
    Anthropic,
    // Azure OpenAI: the OpenAI endpoints at deployment paths
    // (/openai/deployments/{deployment}/chat/completions?api-version=...)
    // or at /openai/v1/..., with the `api-key` header.
    AzureOpenai,
    // The Gemini API: /v1beta/models/{model}:generateContent,
    // :streamGenerateContent, :countTokens, :embedContent and
    // :batchEmbedContents (v1 too), with the `x-goog-api-key` header.
    Gemini,
    // Amazon Bedrock runtime: /model/{modelId}/converse, /converse-stream,
    // /invoke, /invoke-with-response-stream and /count-tokens, re-signed
    // with SigV4.
    Bedrock,
    // Vertex AI: the Gemini endpoints at
    // /{v1|v1beta1}/projects/{project}/locations/{location}/publishers/google/models/{model}:{method},
    // with an OAuth bearer token from workload identity federation (or a
    // Vertex API key in `x-goog-api-key`).
    Vertex,
    // Offline, deterministic, no network.
    DryRun,
}

/// Whether a quota denies or only records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Enforcement {
    #[default]
    Enforce,
    Shadow,
}

/// A calendar window. Windows start at the top of the minute or hour, at
/// midnight, or on the first of the month: in UTC, or in the limit's time
/// zone.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum CalendarWindow {
    Minute,
    Hour,
    Day,
    Month,
}

impl CalendarWindow {
    /// The unit as the custom resources spell it: `minute`, `hour`, `day`,
    /// `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// Everything one namespace's gateways need, identified by `policy_hash`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// [`GATEWAY_CONFIG_VERSION`].
    pub version: u32,
    /// The namespace this config is for.
    pub namespace: String,
    /// Lowercase hex SHA-256 of the canonical JSON of this config with
    /// `policyHash` empty. Receipts record it.
    pub policy_hash: String,
    /// The namespace's enabled policies, ordered by name. A gateway applies the
    /// first whose pod selector matches its pod's labels.
    pub policies: Vec<CompiledPolicy>,
    /// Every provider some policy allows, ordered by name.
    pub providers: Vec<CompiledProvider>,
    /// Quotas that apply in this namespace, ordered by id.
    pub quotas: Vec<CompiledQuota>,
}

/// One `EgressPolicy`, compiled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledPolicy {
    pub name: String,
    pub pod_selector: Selector,
    /// `enforce` or `audit`; disabled policies are left out.
    pub mode: PolicyMode,
    /// Allowed routes, in the policy's order.
    pub routes: Vec<Route>,
    pub failover: bool,
    pub max_request_bytes: u32,
    pub block_secrets: bool,
    pub header_allowlist: Vec<String>,
    pub fail_mode: FailMode,
    pub allow_opt_out: bool,
    /// Non-LLM destinations, for `init-network`.
    pub egress: Vec<EgressDestination>,
}

/// Models of one provider a policy allows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub provider: String,
    pub model_globs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// A destination `init-network` leaves open.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressDestination {
    pub cidr: String,
    pub ports: Vec<u16>,
}

/// One `LLMProvider`, compiled, with its upstream trust resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledProvider {
    pub name: String,
    pub api: ProviderApi,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    pub hosts: Vec<String>,
    /// Where the keys come from, never the keys themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSource>,
    pub models: Vec<CompiledModel>,
    /// Per-host TLS trust from the provider's TrustAnchor; hosts not listed use
    /// the system roots without pins.
    pub upstream_trust: Vec<HostTrust>,
    /// Azure OpenAI's `api-version` (`2024-10-21`), or `v1` for the
    /// `/openai/v1/` paths. Only for `azureOpenai`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_api_version: Option<String>,
    /// The AWS region Bedrock requests are signed for (`us-east-1`). Only
    /// for `bedrock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
    /// Bedrock credentials from the pod's own identity instead of keys:
    /// the STS role the gateway assumes with its projected ServiceAccount
    /// token. Only for `bedrock`, never with `credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<WebIdentitySource>,
    /// The Google Cloud project and location Vertex AI requests go to. Only
    /// for `vertex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexTarget>,
    /// Vertex AI credentials from the pod's own identity instead of keys:
    /// the workload identity pool provider the gateway's projected
    /// ServiceAccount token is exchanged with, and the service account it
    /// then impersonates. Only for `vertex`, never with `credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_identity: Option<GoogleIdentitySource>,
    /// Azure OpenAI credentials from the pod's own identity instead of
    /// keys: the Entra ID token endpoint and application the gateway's
    /// projected ServiceAccount token is a client assertion for. Only for
    /// `azureOpenai`, never with `credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_identity: Option<EntraIdentitySource>,
    pub connect_timeout_ms: u32,
    pub first_byte_timeout_ms: u32,
    pub idle_timeout_ms: u32,
}

/// An AWS role assumed with web identity (`AssumeRoleWithWebIdentity`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebIdentitySource {
    pub role_arn: String,
    /// The STS endpoint (`https://sts.us-east-1.amazonaws.com`); its host is
    /// one of the provider's `hosts`.
    pub sts_url: String,
}

/// Where Vertex AI requests go: the project and location in every path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VertexTarget {
    pub project: String,
    pub location: String,
}

/// Google workload identity federation: the pool provider that accepts the
/// gateway's token (Security Token Service `token` exchange), and, when a
/// service account is impersonated, the IAM Credentials
/// `generateAccessToken` URL for it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GoogleIdentitySource {
    /// `//iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/providers/{provider}`.
    pub audience: String,
    /// The Security Token Service's token endpoint
    /// (`https://sts.googleapis.com/v1/token`); its host is one of the
    /// provider's `hosts`.
    pub sts_url: String,
    /// `https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{email}:generateAccessToken`,
    /// or `None` to use the federated token itself; its host is one of the
    /// provider's `hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonation_url: Option<String>,
}

/// Microsoft Entra workload identity: a client-credentials grant with the
/// gateway's token as a federated client assertion.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntraIdentitySource {
    /// `{authority}/{tenant}/oauth2/v2.0/token`; its host is one of the
    /// provider's `hosts`.
    pub token_url: String,
    pub client_id: String,
    /// The Azure OpenAI scope of the authority's cloud
    /// (`https://cognitiveservices.azure.com/.default`; `.azure.us` for
    /// Azure Government, `.azure.cn` for Azure operated by 21Vianet).
    pub scope: String,
}

/// The Secret and keys that hold a provider's API keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsSource {
    pub secret_name: String,
    pub keys: Vec<String>,
}

/// A model and its price.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledModel {
    pub name: String,
    pub aliases: Vec<String>,
    /// The Azure OpenAI deployment that serves the model, when its name is
    /// not the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The model's price table and its hash, which receipts record.
    pub pricing: PriceTable,
}

/// The longest Azure OpenAI deployment name.
pub const MAX_DEPLOYMENT_LEN: usize = 64;

/// Whether `name` is 1 to `max` bytes of `[A-Za-z0-9._-]` (and `:` when
/// `colon`), starting with a letter or digit: the names the gateway puts
/// into a path, the client's or the upstream's.
fn is_path_name(name: &str, max: usize, colon: bool) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || (colon && b == b':')
        })
}

/// Whether `name` can be an Azure OpenAI deployment: 1 to 64 of
/// `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn is_deployment_name(name: &str) -> bool {
    is_path_name(name, MAX_DEPLOYMENT_LEN, false)
}

/// Whether `name` can be a Gemini model in a path
/// (`/v1beta/models/{name}:generateContent`): 1 to 128 of `[A-Za-z0-9._-]`,
/// starting with a letter or digit.
pub fn is_gemini_model_name(name: &str) -> bool {
    is_path_name(name, 128, false)
}

/// Whether `id` can be a Bedrock model id in a path
/// (`/model/{id}/converse`): 1 to 128 of `[A-Za-z0-9._:-]` (what a receipt's
/// model name holds), starting with a letter or digit
/// (`anthropic.claude-3-5-haiku-20241022-v1:0`,
/// `us.anthropic.claude-sonnet-4-20250514-v1:0`). ARNs, which hold `/`, are
/// not served.
pub fn is_bedrock_model_id(id: &str) -> bool {
    is_path_name(id, 128, true)
}

/// Whether `name` can be a Google Cloud project id or location in a Vertex
/// AI path: 1 to 63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn is_vertex_path_name(name: &str) -> bool {
    is_path_name(name, 63, false)
}

impl CompiledModel {
    /// The name the upstream knows the model by: its Azure deployment, or
    /// its own name.
    pub fn upstream_name(&self) -> &str {
        self.deployment.as_deref().unwrap_or(&self.name)
    }
}

/// TLS trust for one upstream host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostTrust {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
    /// Base64 SHA-256 SPKI digests; when any is set, one must match the chain.
    pub spki_pins: Vec<String>,
}

/// One `EgressQuota` or `ClusterEgressQuota`, compiled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledQuota {
    /// `<namespace>/<name>` for an EgressQuota, `cluster/<name>` for a
    /// ClusterEgressQuota. The recorder keys counters by it.
    pub id: String,
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<Selector>,
    pub limits: Vec<CompiledLimit>,
    pub enforcement: Enforcement,
    pub fail_mode: FailMode,
}

/// One limit of a quota.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledLimit {
    pub name: String,
    pub window: LimitWindow,
    /// The IANA zone a calendar window counts in; absent means UTC. A name
    /// the bundled database lacks fails parsing, so config carrying it is
    /// refused whole rather than counted in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<crate::time_zone::TimeZoneName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(
        rename = "costMicroUSD",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cost_micro_usd: Option<u64>,
    pub model_globs: Vec<String>,
    pub providers: Vec<String>,
}

/// A quota window: a calendar window, or a rolling one in seconds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum LimitWindow {
    Calendar(CalendarWindow),
    RollingSeconds(u64),
}

/// A label selector in a form the gateway can evaluate without Kubernetes types.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: SelectorOperator,
    pub values: Vec<String>,
}

/// `matchExpressions` operators.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// Whether `labels` satisfy the selector. The empty selector matches all.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => value.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Whether `name` matches a model glob, where `*` matches any run of
/// characters (including none) and everything else matches itself.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return glob == name;
    };
    if parts.len() == 1 {
        return glob == name;
    }
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl GatewayConfig {
    /// The policy that governs a pod with these labels.
    pub fn policy_for(&self, pod_labels: &BTreeMap<String, String>) -> Option<&CompiledPolicy> {
        self.policies
            .iter()
            .find(|p| p.pod_selector.matches(pod_labels))
    }

    /// A provider by name.
    pub fn provider(&self, name: &str) -> Option<&CompiledProvider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// What `policy_hash` should be for this content.
    pub fn content_hash(&self) -> String {
        policy_hash(self)
    }
}

/// SHA-256 over the config's JSON with an empty `policyHash`. serde_json
/// writes struct fields in declaration order and maps sorted, so equal
/// configs hash equally.
pub fn policy_hash(config: &GatewayConfig) -> String {
    let mut unhashed = config.clone();
    unhashed.policy_hash.clear();
    let bytes = serde_json::to_vec(&unhashed).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*", "gpt-4o"));
        assert!(glob_matches("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_matches("gpt-4o*", "gpt-4o"));
        assert!(!glob_matches("gpt-4o*", "gpt-4"));
        assert!(glob_matches("*-mini", "gpt-4o-mini"));
        assert!(glob_matches("claude-*-haiku*", "claude-3-5-haiku-latest"));
        assert!(!glob_matches("claude-*-haiku", "claude-3-5-sonnet"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        assert!(!glob_matches("a*a", "a"), "the two ends may not overlap");
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "chat".to_string()),
            ("tier".to_string(), "web".to_string()),
        ]
        .into();
        assert!(Selector::default().matches(&labels));
        let req = |key: &str, operator, values: &[&str]| Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let sel = |reqs: Vec<Requirement>| Selector {
            match_labels: BTreeMap::new(),
            match_expressions: reqs,
        };
        assert!(sel(vec![req("app", SelectorOperator::In, &["chat", "x"])]).matches(&labels));
        assert!(!sel(vec![req("app", SelectorOperator::NotIn, &["chat"])]).matches(&labels));
        assert!(sel(vec![req("missing", SelectorOperator::NotIn, &["chat"])]).matches(&labels));
        assert!(sel(vec![req("tier", SelectorOperator::Exists, &[])]).matches(&labels));
        assert!(!sel(vec![req("tier", SelectorOperator::DoesNotExist, &[])]).matches(&labels));
        let by_label = Selector {
            match_labels: [("app".to_string(), "batch".to_string())].into(),
            match_expressions: vec![],
        };
        assert!(!by_label.matches(&labels));
    }
}
