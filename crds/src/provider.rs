//! `LLMProvider`: an upstream LLM API the gateway may dial, with its models,
//! prices, credentials and TLS trust.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use tollgate_wire::config::{ModelPricing, ProviderApi};

/// An upstream LLM API that gateways may call. Cluster-scoped: platform teams
/// define providers once, and namespaces opt into them through `EgressPolicy`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "LLMProvider",
    plural = "llmproviders",
    shortname = "llmp",
    category = "tollgate",
    status = "LLMProviderStatus",
    derive = "PartialEq",
    doc = "An upstream LLM API (OpenAI, Anthropic, Azure OpenAI, Gemini, Amazon Bedrock, Vertex AI, or the offline dry-run provider) with its models, prices, credentials and TLS trust.",
    printcolumn(name = "API", type_ = "string", json_path = ".spec.api"),
    printcolumn(name = "Base URL", type_ = "string", json_path = ".spec.baseURL"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Keys Healthy",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="KeysHealthy")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.api == 'dryRun' ? !has(self.baseURL) : has(self.baseURL)")
        .message("baseURL is required for every api but dryRun, and must be omitted for api dryRun (the dry-run provider never dials out)"),
    validation = Rule::new("(self.api == 'azureOpenai') == has(self.azure)")
        .message("azure (with apiVersion) is required for api azureOpenai and allowed for no other api"),
    validation = Rule::new("(self.api == 'bedrock') == has(self.aws)")
        .message("aws (with region) is required for api bedrock and allowed for no other api"),
    validation = Rule::new("(self.api == 'vertex') == has(self.gcp)")
        .message("gcp (with project and location) is required for api vertex and allowed for no other api"),
    validation = Rule::new("!has(self.baseURL) || self.baseURL.startsWith('https://')")
        .message("baseURL must use https: every receipt records the provider's TLS certificate"),
    validation = Rule::new("!has(self.baseURL) || (isURL(self.baseURL) && url(self.baseURL).getHostname() in self.hosts)")
        .message("the host of baseURL must be listed in hosts, the exact allowlist of hosts the gateway dials"),
    validation = Rule::new("self.api == 'azureOpenai' || self.models.all(m, !has(m.deployment))")
        .message("a model's deployment applies to api azureOpenai only"),
    validation = Rule::new("self.api == 'dryRun' || has(self.credentialsRef) || (has(self.aws) && has(self.aws.webIdentity)) || (has(self.gcp) && has(self.gcp.workloadIdentity)) || (has(self.azure) && has(self.azure.workloadIdentity))")
        .message("credentialsRef is required for every api but dryRun (for bedrock, or aws.webIdentity; for vertex, or gcp.workloadIdentity; for azureOpenai, or azure.workloadIdentity)"),
    validation = Rule::new("!has(self.credentialsRef) || !has(self.azure) || !has(self.azure.workloadIdentity)")
        .message("credentialsRef and azure.workloadIdentity are exclusive: a provider has one source of credentials"),
    validation = Rule::new("!has(self.azure) || !has(self.azure.workloadIdentity) || !has(self.azure.workloadIdentity.authorityHost) || (self.azure.workloadIdentity.authorityHost.startsWith('https://') && isURL(self.azure.workloadIdentity.authorityHost) && url(self.azure.workloadIdentity.authorityHost).getHostname() in self.hosts && url(self.azure.workloadIdentity.authorityHost).getEscapedPath() in ['', '/'] && size(url(self.azure.workloadIdentity.authorityHost).getQuery()) == 0)")
        .message("azure.workloadIdentity.authorityHost must be an https URL with no path or query, and its host must be listed in hosts"),
    validation = Rule::new("!has(self.aws) || !has(self.aws.webIdentity) || !has(self.aws.webIdentity.stsURL) || (self.aws.webIdentity.stsURL.startsWith('https://') && isURL(self.aws.webIdentity.stsURL) && url(self.aws.webIdentity.stsURL).getHostname() in self.hosts)")
        .message("aws.webIdentity.stsURL must use https and its host must be listed in hosts"),
    validation = Rule::new("!has(self.credentialsRef) || !has(self.aws) || !has(self.aws.webIdentity)")
        .message("credentialsRef and aws.webIdentity are exclusive: a provider has one source of credentials"),
    validation = Rule::new("!has(self.credentialsRef) || !has(self.gcp) || !has(self.gcp.workloadIdentity)")
        .message("credentialsRef and gcp.workloadIdentity are exclusive: a provider has one source of credentials"),
    validation = Rule::new("!has(self.gcp) || !has(self.gcp.workloadIdentity) || !has(self.gcp.workloadIdentity.stsURL) || (self.gcp.workloadIdentity.stsURL.startsWith('https://') && isURL(self.gcp.workloadIdentity.stsURL) && url(self.gcp.workloadIdentity.stsURL).getHostname() in self.hosts)")
        .message("gcp.workloadIdentity.stsURL must use https and its host must be listed in hosts"),
    validation = Rule::new("!has(self.gcp) || !has(self.gcp.workloadIdentity) || !has(self.gcp.workloadIdentity.iamCredentialsURL) || (self.gcp.workloadIdentity.iamCredentialsURL.startsWith('https://') && isURL(self.gcp.workloadIdentity.iamCredentialsURL) && url(self.gcp.workloadIdentity.iamCredentialsURL).getHostname() in self.hosts)")
        .message("gcp.workloadIdentity.iamCredentialsURL must use https and its host must be listed in hosts"),
)]
#[serde(rename_all = "camelCase")]
pub struct LLMProviderSpec {
    /// The wire API this provider speaks: `openai`, `anthropic`,
    /// `azureOpenai` (Azure OpenAI: the OpenAI API at deployment paths, with
    /// the `api-key` header), `gemini` (the Gemini API: `generateContent`,
    /// `streamGenerateContent`, `countTokens` and embeddings, with the
    /// `x-goog-api-key` header), `bedrock` (the Amazon Bedrock runtime:
    /// `Converse`, `ConverseStream`, `InvokeModel`,
    /// `InvokeModelWithResponseStream` and `CountTokens`, re-signed with
    /// SigV4; each key is
    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY`), `vertex` (Vertex AI: the Gemini
    /// endpoints at project and location paths, with an OAuth bearer token
    /// from `gcp.workloadIdentity` or a Vertex API key), or `dryRun`
    /// (deterministic synthetic answers, no network; receipts say lane
    /// dry_run).
    pub api: ProviderApi,

    /// Azure OpenAI settings; required for `azureOpenai`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,

    /// AWS settings; required for `bedrock`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSettings>,

    /// Google Cloud settings; required for `vertex`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpSettings>,

    /// Base URL of the API, for example `https://api.openai.com`; the gateway
    /// appends the API path (`/v1/...`). Must be https, so that every receipt
    /// can record the provider's TLS certificate. Omit it for `dryRun`.
    #[serde(rename = "baseURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub base_url: Option<String>,

    /// The exact hostnames the gateway may dial for this provider. The host of
    /// `baseURL` must be one of them. Redirects are never followed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub hosts: Vec<String>,

    /// The Secret, in the operator's namespace, that holds this provider's API
    /// keys. Gateways receive the keys in memory only; they never become Secrets
    /// in application namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<CredentialsRef>,

    /// The models this provider serves, with aliases and prices.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub models: Vec<ModelSpec>,

    /// Upstream TLS trust: a TrustAnchor with CA bundles and SPKI pins for the
    /// hosts. Without it the system roots are used and no pin is enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ProviderTls>,

    /// Timeouts the gateway applies to this provider's upstream calls.
    #[serde(default)]
    pub timeouts: ProviderTimeouts,
}

/// How to call an Azure OpenAI resource.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureSettings {
    /// The `api-version` sent with every call, such as `2024-10-21`; or `v1`
    /// for the version-less `/openai/v1/` paths (the deployment name then
    /// goes in the body's `model`).
    #[schemars(regex(pattern = r"^(v1|[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?)$"))]
    pub api_version: String,

    /// Credentials from the pod's own identity instead of stored keys: each
    /// gateway presents its projected ServiceAccount token (audience
    /// `tollgate.dev/azure`, which only gateway containers can be given) as
    /// a federated client assertion to Microsoft Entra ID for this
    /// application's access token to Azure OpenAI (scope
    /// `https://cognitiveservices.azure.com/.default`), held in memory and
    /// refreshed before it expires. Exclusive with `credentialsRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<AzureWorkloadIdentity>,
}

/// Microsoft Entra workload identity: an application (or user-assigned
/// managed identity) with a federated identity credential for the cluster's
/// OIDC issuer.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureWorkloadIdentity {
    /// The directory (tenant) ID.
    #[serde(rename = "tenantID")]
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub tenant_id: String,

    /// The application (client) ID of the app registration or managed
    /// identity. Its federated identity credential names the cluster's
    /// issuer, the ServiceAccount (`system:serviceaccount:NAMESPACE:NAME`)
    /// and the audience `tollgate.dev/azure`; the identity holds
    /// `Cognitive Services OpenAI User` on the resource.
    #[serde(rename = "clientID")]
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub client_id: String,

    /// The Entra ID authority; default `https://login.microsoftonline.com`
    /// (sovereign clouds have their own). Its host must be listed in
    /// `hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub authority_host: Option<String>,
}

/// How to call Amazon Bedrock.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsSettings {
    /// The region requests are signed for, such as `us-east-1`; it must be
    /// the region of `baseURL` (`https://bedrock-runtime.us-east-1.amazonaws.com`).
    #[schemars(regex(pattern = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$"))]
    pub region: String,

    /// Credentials from the pod's own identity instead of stored keys: each
    /// gateway trades its projected ServiceAccount token (audience
    /// `tollgate.dev/aws`, which only gateway containers can be given) for
    /// this role's temporary credentials, held in memory and refreshed
    /// before they expire. Exclusive with `credentialsRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<AwsWebIdentity>,
}

/// An IAM role assumed with `AssumeRoleWithWebIdentity`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsWebIdentity {
    /// The role's ARN. Its trust policy names the cluster's OIDC provider
    /// (with `tollgate.dev/aws` among its client IDs), requires that
    /// audience, and names the ServiceAccounts allowed to assume it.
    #[schemars(regex(
        pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"
    ))]
    pub role_arn: String,

    /// The STS endpoint; default `https://sts.<region>.amazonaws.com`
    /// (`.amazonaws.com.cn` in China). Its host must be listed in `hosts`.
    #[serde(rename = "stsURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub sts_url: Option<String>,
}

/// How to call Vertex AI.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcpSettings {
    /// The project every request goes to, whatever project the client's
    /// path names (`my-project`).
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"))]
    pub project: String,

    /// The location every request goes to (`us-central1`, `europe-west4`,
    /// or `global`); it must be the location of `baseURL`
    /// (`https://us-central1-aiplatform.googleapis.com`, or
    /// `https://aiplatform.googleapis.com` for `global`).
    #[schemars(
        regex(pattern = r"^(global|[a-z]+(-[a-z]+)*[0-9]*)$"),
        length(max = 63)
    )]
    pub location: String,

    /// Credentials from the pod's own identity instead of stored keys: each
    /// gateway exchanges its projected ServiceAccount token (audience
    /// `tollgate.dev/gcp`, which only gateway containers can be given) with
    /// Google's Security Token Service, then, with `serviceAccount`,
    /// impersonates that service account; the access token is held in
    /// memory and refreshed before it expires. Exclusive with
    /// `credentialsRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<GcpWorkloadIdentity>,
}

/// Google workload identity federation for a Kubernetes cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcpWorkloadIdentity {
    /// The workload identity pool provider, as the token exchange names it:
    /// `//iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/providers/{provider}`.
    /// The provider trusts the cluster's OIDC issuer and lists
    /// `tollgate.dev/gcp` among its allowed audiences.
    #[schemars(regex(
        pattern = r"^//iam\.googleapis\.com/projects/[0-9]{1,20}/locations/global/workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}$"
    ))]
    pub audience: String,

    /// The service account to impersonate with the federated token
    /// (`vertex-caller@my-project.iam.gserviceaccount.com`); the pool's
    /// principal needs `roles/iam.workloadIdentityUser` on it. Without it
    /// the federated token is used directly (the pool's principal is then
    /// granted Vertex AI access itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9-]{6,30}@[a-z0-9.-]{1,128}\.gserviceaccount\.com$"))]
    pub service_account: Option<String>,

    /// The Security Token Service's token endpoint; default
    /// `https://sts.googleapis.com/v1/token`. Its host must be listed in
    /// `hosts`.
    #[serde(rename = "stsURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub sts_url: Option<String>,

    /// The IAM Service Account Credentials API; default
    /// `https://iamcredentials.googleapis.com`. Its host must be listed in
    /// `hosts` when `serviceAccount` is set.
    #[serde(
        rename = "iamCredentialsURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 2048))]
    pub iam_credentials_url: Option<String>,
}

/// A reference to the Secret holding a provider's API keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// Name of the Secret in the operator's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,

    /// Keys of the Secret that each hold one API key. With several keys the
    /// gateway picks one deterministically per request:
    /// `sha256(model || sha256(body) || node id) mod len(keys)`.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub keys: Vec<String>,
}

/// A model a provider serves, and its price.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.aliases) || !self.aliases.exists(a, a == self.name)")
        .message("an alias must differ from the model name it stands for"),
)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// The model name as the provider knows it, for example `gpt-4o-mini`.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// Other names clients may use for this model. The gateway rewrites them to
    /// `name` before forwarding, and receipts record both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub aliases: Vec<String>,

    /// For `azureOpenai`: the deployment that serves the model, when it is
    /// not named like the model. Clients may also ask for the model by this
    /// name (the Azure SDKs put the deployment where the model goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub deployment: Option<String>,

    /// Prices in micro-USD per million tokens. Costs are integers end to end.
    #[serde(default)]
    pub pricing: ModelPricing,
}

/// Upstream TLS settings for a provider.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderTls {
    /// Name of the TrustAnchor whose `upstream` entries give the CA bundle and
    /// SPKI pins for this provider's hosts.
    #[schemars(length(min = 1, max = 253))]
    pub trust_anchor_ref: String,
}

/// Timeouts for upstream calls, in milliseconds.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderTimeouts {
    /// Time allowed to open the TCP and TLS connection.
    #[serde(default = "default_connect_millis")]
    #[schemars(range(min = 100, max = 60000))]
    pub connect_millis: u32,
    /// Time allowed until the first response byte.
    #[serde(default = "default_first_byte_millis")]
    #[schemars(range(min = 100, max = 600000))]
    pub first_byte_millis: u32,
    /// Longest silence allowed between response chunks.
    #[serde(default = "default_idle_millis")]
    #[schemars(range(min = 100, max = 600000))]
    pub idle_millis: u32,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        Self {
            connect_millis: default_connect_millis(),
            first_byte_millis: default_first_byte_millis(),
            idle_millis: default_idle_millis(),
        }
    }
}

fn default_connect_millis() -> u32 {
    5_000
}
fn default_first_byte_millis() -> u32 {
    120_000
}
fn default_idle_millis() -> u32 {
    60_000
}

/// Observed state of an `LLMProvider`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LLMProviderStatus {
    /// `Ready` and other conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Each of `credentialsRef.keys` as the gateways see it, never its
    /// value: from the reports every gateway sends the recorder every 30
    /// seconds, read with quota usage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub keys: Vec<ProviderKeyStatus>,
}

/// One provider key's health across the cluster's gateways.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderKeyStatus {
    /// The key's name in the Secret (`credentialsRef.keys[index]`).
    pub name: String,
    /// Its place in `credentialsRef.keys`.
    pub index: u32,
    /// `Healthy`: every gateway that reported the key routes over it.
    /// `Refused`: at least one routes around it, because the provider
    /// answered 401 or 403 with it. `Unknown`: no gateway reported it in the
    /// last two minutes (no pod uses the provider, or its gateways' reports
    /// do not reach the recorder).
    pub state: ProviderKeyState,
    /// Gateways that reported the key in the last two minutes.
    pub gateways: u64,
    /// Of them, those that route around it.
    pub refused_by: u64,
    /// The earliest refusal among them (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_since: Option<String>,
    /// The HTTP status of the refusals (the highest, if they differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
}

/// A provider key's state in the status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKeyState {
    Healthy,
    Refused,
    Unknown,
}

impl LLMProviderSpec {
    /// Finds a model by its name or one of its aliases.
    pub fn find_model(&self, name: &str) -> Option<&ModelSpec> {
        self.models
            .iter()
            .find(|m| m.name == name || m.aliases.iter().any(|a| a == name))
    }
}
